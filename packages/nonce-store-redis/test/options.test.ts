import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ConfigError, createRuntime, silentLogger } from '@jwtproxy/core';
import { afterAll, describe, expect, it } from 'vitest';
import { parseRedisNonceStoreOptions, RedisNonceStore, redisNonceStore } from '../src/index.js';

const dir = mkdtempSync(path.join(tmpdir(), 'jwtproxy-redis-options-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const context = { logger: silentLogger, clock: Date.now, baseDir: dir };

function configErrorFor(options: Record<string, unknown>): ConfigError {
  try {
    parseRedisNonceStoreOptions(options, context);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error(`options were accepted: ${JSON.stringify(options)}`);
}

describe('nonce_storage redis options', () => {
  it.each([
    [{ keyprefix: 'x:' }, 'keyprefix', /unknown option/],
    [{ url: 'http://127.0.0.1:6379' }, 'url', /scheme must be redis: or rediss:/],
    [{ url: 'not a url' }, 'url', /is not a URL/],
    [{ url: 'redis://127.0.0.1:6379/zero' }, 'url', /database number/],
    [{ url: 'redis://127.0.0.1:6379?db=2' }, 'url', /query/],
    [{ url: 'redis://127.0.0.1', host: '127.0.0.1' }, 'host', /cannot be combined with url/],
    [{ url: 'redis://:secret@127.0.0.1', password: 'other' }, 'password', /both in url and as password/],
    [{ url: 'rediss://127.0.0.1', tls: false }, 'tls', /rediss/],
    [{ port: 70000 }, 'port', /port number/],
    [{ port: 'six' }, 'port', /port number/],
    [{ host: '' }, 'host', /must not be empty/],
    [{ db: -1 }, 'db', /database number/],
    [{ password: 1234 }, 'password', /must be a string/],
    [{ command_timeout: 'fast' }, 'command_timeout', /duration/],
    [{ command_timeout: 250 }, 'command_timeout', /duration/],
    [{ command_timeout: '0s' }, 'command_timeout', /greater than 0/],
    [{ connect_timeout: '-1s' }, 'connect_timeout', /greater than 0/],
    [{ tls: 'yes' }, 'tls', /must be true, false or/],
    [{ tls: { ca: 'x' } }, 'tls.ca', /unknown option/],
    [{ tls: { ca_file: 'missing.pem' } }, 'tls.ca_file', /cannot read/],
    [{ tls: { insecure_skip_verify: 'true' } }, 'tls.insecure_skip_verify', /true or false/],
    [{ sentinels: [{ host: '127.0.0.1', port: 26379 }] }, 'name', /required with sentinels/],
    [{ name: 'mymaster' }, 'name', /needs sentinels/],
    [{ sentinels: [], name: 'mymaster' }, 'sentinels', /non-empty list/],
    [{ sentinels: [{ port: 26379 }], name: 'mymaster' }, 'sentinels[0].host', /is required/],
    [{ sentinels: [{ host: 'a', port: 0 }], name: 'mymaster' }, 'sentinels[0].port', /port number/],
    [{ cluster: [{ host: '127.0.0.1', port: 7000, weight: 1 }] }, 'cluster[0].weight', /unknown option/],
    [{ cluster: [{ host: '127.0.0.1' }], db: 2 }, 'db', /must be 0 with a cluster/],
    [{ cluster: [{ host: '127.0.0.1' }], host: '127.0.0.1' }, 'host', /cannot be combined with cluster/],
    [{ cluster: [{ host: '127.0.0.1' }], sentinels: [{ host: '127.0.0.1' }], name: 'm' }, 'cluster', /cannot be combined with sentinels/],
    [{ sentinel_password: 'x' }, 'sentinel_password', /needs sentinels/],
  ])('%j is a ConfigError naming %s', (options, name, problem) => {
    const error = configErrorFor(options);
    expect(error.path).toBe(name);
    expect(error.message).toMatch(problem);
    expect(error.message.startsWith(`${name}: `)).toBe(true);
  });

  it('never repeats a password from a bad url in the error', () => {
    const error = configErrorFor({ url: 'redis://user:hunter2@[bad' });
    expect(error.message).not.toContain('hunter2');
  });

  it('the registry refuses bad options with the ConfigError before connecting', async () => {
    const { nonceStores } = createRuntime();
    nonceStores.register(redisNonceStore);
    await expect(nonceStores.create({ type: 'redis', options: { command_timeout: 'soon' } }, context)).rejects.toMatchObject({
      code: 'ERR_CONFIG',
      path: 'command_timeout',
    });
  });

  it('programmatic options are validated too (property names)', () => {
    expect(() => new RedisNonceStore({ commandTimeoutMs: 0 })).toThrow(ConfigError);
    expect(() => new RedisNonceStore({ commandTimeoutMs: 0 })).toThrow(/^commandTimeoutMs: /);
    expect(() => new RedisNonceStore({ url: 'redis://127.0.0.1', port: 1 })).toThrow(/^port: cannot be combined with url/);
  });

  it('accepts the documented forms', () => {
    writeFileSync(path.join(dir, 'ca.pem'), '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
    expect(parseRedisNonceStoreOptions({}, context)).toEqual({});
    expect(
      parseRedisNonceStoreOptions(
        { url: 'rediss://user:p%40ss@redis.internal:6380/2', tls: { ca_file: 'ca.pem', server_name: 'redis.internal' }, key_prefix: 'svc:', command_timeout: '100ms', connect_timeout: '1s', reconnect_max_delay: '2s' },
        context,
      ),
    ).toEqual({
      url: 'rediss://user:p%40ss@redis.internal:6380/2',
      tls: { ca: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n', serverName: 'redis.internal' },
      keyPrefix: 'svc:',
      commandTimeoutMs: 100,
      connectTimeoutMs: 1000,
      reconnectMaxDelayMs: 2000,
    });
    expect(parseRedisNonceStoreOptions({ host: 'r', port: '6380', db: 1, username: 'u', password: 'p', tls: true }, context)).toEqual({ host: 'r', port: 6380, db: 1, username: 'u', password: 'p', tls: true });
    expect(parseRedisNonceStoreOptions({ sentinels: [{ host: 's1' }, { host: 's2', port: 26380 }], name: 'mymaster', sentinel_password: 'x' }, context)).toEqual({
      sentinels: [
        { host: 's1', port: 26379 },
        { host: 's2', port: 26380 },
      ],
      name: 'mymaster',
      sentinelPassword: 'x',
    });
    expect(parseRedisNonceStoreOptions({ cluster: [{ host: 'n1', port: 7000 }], password: 'p' }, context)).toEqual({ cluster: [{ host: 'n1', port: 7000 }], password: 'p' });
  });
});

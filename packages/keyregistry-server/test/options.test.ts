import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ConfigError } from '@jwtproxy/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { keyRegistryOptionsFrom } from '../src/index.js';

let directory: string;
beforeAll(async () => {
  directory = await mkdtemp(path.join(os.tmpdir(), 'keyregistry-options-'));
  await writeFile(path.join(directory, 'admin.token'), 'token-from-a-file-0123456789\n');
});
afterAll(() => rm(directory, { recursive: true, force: true }));

function configError(raw: Record<string, unknown>, env: NodeJS.ProcessEnv = {}): ConfigError {
  try {
    keyRegistryOptionsFrom(raw, directory, env);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('keyRegistryOptionsFrom (jwtproxy.keyregistry in the YAML)', () => {
  it('reads every option, resolving paths against the configuration directory', () => {
    const options = keyRegistryOptionsFrom(
      {
        listen_addr: '127.0.0.1:8081', public_url: 'https://keys.example.com', storage: { type: 'file', options: { path: 'data/keys.json' } },
        admin_token_file: 'admin.token', auto_approve: ['dev-*'], max_skew: '30s', max_ttl: '10m', pending_ttl: '1h', expired_retention: 0,
        max_body_bytes: 4096, shutdown_timeout: '2s', enabled: true, max_pending_keys: 500, max_pending_keys_per_service: 20,
        read_header_timeout: '5s', request_timeout: '20s', body_idle_timeout: '3s', idle_timeout: '1m', max_connections: 300,
      },
      directory,
      {},
    );
    expect(options).toEqual({
      enabled: true, listenAddr: '127.0.0.1:8081', publicUrl: 'https://keys.example.com', storage: { type: 'file', path: path.join(directory, 'data/keys.json') },
      adminToken: 'token-from-a-file-0123456789', autoApprove: ['dev-*'], maxSkewMs: 30_000, maxTtlMs: 600_000, pendingTtlMs: 3_600_000, expiredRetentionMs: 0,
      maxBodyBytes: 4096, shutdownTimeoutMs: 2000, maxPendingKeys: 500, maxPendingKeysPerService: 20,
      readHeaderTimeoutMs: 5000, requestTimeoutMs: 20_000, bodyIdleTimeoutMs: 3000, idleTimeoutMs: 60_000, maxConnections: 300,
    });
  });

  it('defaults: enabled, file storage under $XDG_CONFIG_HOME/jwtproxy, admin token from $JWTPROXY_REGISTRY_TOKEN', () => {
    const options = keyRegistryOptionsFrom({}, directory, { XDG_CONFIG_HOME: '/cfg', JWTPROXY_REGISTRY_TOKEN: 'token-from-the-environment' });
    expect(options).toEqual({ enabled: true, storage: { type: 'file', path: '/cfg/jwtproxy/keyregistry.json' }, adminToken: 'token-from-the-environment' });
  });

  it('reads Redis storage options', () => {
    expect(keyRegistryOptionsFrom({ storage: { type: 'redis', options: { url: 'redis://127.0.0.1:6379/2', key_prefix: 'kr:', command_timeout: '500ms' } } }, directory, {}).storage).toEqual({
      type: 'redis', url: 'redis://127.0.0.1:6379/2', keyPrefix: 'kr:', commandTimeoutMs: 500,
    });
  });

  it('names the option at fault, relative to the block', () => {
    expect(configError({ listen_adr: ':1' }).path).toBe('listen_adr');
    expect(configError({ listen_addr: 'nowhere' }).path).toBe('listen_addr');
    expect(configError({ public_url: 'keys.example.com' }).path).toBe('public_url');
    expect(configError({ storage: { type: 'sql' } }).path).toBe('storage.type');
    expect(configError({ storage: { type: 'redis', options: { url: 'http://x' } } }).path).toBe('storage.options.url');
    expect(configError({ storage: { type: 'file', options: { file: 'x' } } }).path).toBe('storage.options.file');
    expect(configError({ admin_token: 'short' }).path).toBe('admin_token');
    expect(configError({}, { JWTPROXY_REGISTRY_TOKEN: 'short' }).path).toBe('$JWTPROXY_REGISTRY_TOKEN');
    expect(configError({ admin_token: 'a'.repeat(20), admin_token_file: 'admin.token' }).path).toBe('admin_token_file');
    expect(configError({ admin_token_file: 'missing.token' }).message).toMatch(/admin_token_file: cannot read missing.token/);
    expect(configError({ max_skew: 5 }).path).toBe('max_skew');
    expect(configError({ pending_ttl: '-1h' }).path).toBe('pending_ttl');
    expect(configError({ auto_approve: ['ok', 'bad/name'] }).path).toBe('auto_approve[1]');
    expect(configError({ max_body_bytes: 10 }).path).toBe('max_body_bytes');
    expect(configError({ key_file: 'k.pem' }).path).toBe('crt_file');
    expect(configError({ enabled: 'yes' }).path).toBe('enabled');
    expect(configError({ max_pending_keys: 0 }).path).toBe('max_pending_keys');
    expect(configError({ max_pending_keys_per_service: 2.5 }).path).toBe('max_pending_keys_per_service');
    expect(configError({ max_connections: '100' }).path).toBe('max_connections');
    expect(configError({ body_idle_timeout: 0 }).path).toBe('body_idle_timeout');
    expect(configError({ read_header_timeout: '1m' }).message).toMatch(/read_header_timeout: request_timeout must be at least read_header_timeout/);
    expect(configError({ read_header_timeout: '5s', request_timeout: '2s' }).path).toBe('request_timeout');
  });
});

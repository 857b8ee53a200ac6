import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  ConfigError,
  InvalidSignatureError,
  KeyExpiredError,
  KeyNotFoundError,
  KeyServerUnavailableError,
  httpAnswerFor,
  createRuntime,
  silentLogger,
} from '@jwtproxy/core';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { KeyRegistryClient, cacheLifetime, keyRegistryKeyServer, verificationKeyFromJwk } from '../src/index.js';
import { manualClock, recordingLogger, rsaKey, signAndVerify, type TestKey } from './helpers.js';
import { startQuayLikeRegistry, type QuayLikeRegistry } from '@jwtproxy/testkit';

/** The key server as the CLI registers it. */
const { keyServers } = createRuntime();
keyServers.register(keyRegistryKeyServer);

const ISSUER = 'billing';
let key: TestKey;
let other: TestKey;
let registry: QuayLikeRegistry;
const clients: KeyRegistryClient[] = [];

function client(options: Partial<ConstructorParameters<typeof KeyRegistryClient>[0]> = {}): KeyRegistryClient {
  const made = new KeyRegistryClient({ registry: registry.url, ...options });
  clients.push(made);
  return made;
}

beforeAll(() => {
  key = rsaKey('key-1');
  other = rsaKey('key-2');
});

beforeEach(async () => {
  registry = await startQuayLikeRegistry();
  registry.addApproved(ISSUER, key.kid, key.jwk);
});

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.stop()));
  await registry.stop();
});

describe('KeyRegistryClient against a registry that answers as Quay does', () => {
  it('resolves an approved key with which a token signed by that key verifies', async () => {
    const reader = client();
    const verified = await signAndVerify(reader, ISSUER, key.signing);
    expect(verified.claims.iss).toBe(ISSUER);
    expect(verified.header.kid).toBe(key.kid);
    expect(registry.seen.map((r) => `${r.method} ${r.path}`)).toEqual([`GET /services/${ISSUER}/keys/${key.kid}`]);
  });

  it('refuses a token with that kid but signed by another key', async () => {
    const reader = client();
    const forged = { ...other.signing, kid: key.kid };
    await expect(signAndVerify(reader, ISSUER, forged)).rejects.toBeInstanceOf(InvalidSignatureError);
  });

  it('escapes issuer and kid as path segments and keeps the registry base path', async () => {
    const issuer = 'team/a b?';
    const kid = 'k%1/..';
    registry.addApproved(issuer, kid, key.jwk);
    const reader = client({ registry: registry.url.replace(/\/$/, '') }); // no trailing slash
    await reader.resolve(issuer, kid);
    expect(registry.seen.at(-1)!.path).toBe('/services/team%2Fa%20b%3F/keys/k%251%2F..');
  });

  it('answers KeyNotFoundError ("Could not find any matching public key") for 404', async () => {
    const reader = client();
    const error = await reader.resolve(ISSUER, 'unknown').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KeyNotFoundError);
    expect(httpAnswerFor(error)).toEqual({ status: 403, body: 'jwtproxy: unable to verify request: Could not find any matching public key' });
  });

  it('answers KeyExpiredError for 403 (an expired key)', async () => {
    registry.addApproved(ISSUER, 'old', key.jwk, Math.floor(Date.now() / 1000) - 10);
    await expect(client().resolve(ISSUER, 'old')).rejects.toBeInstanceOf(KeyExpiredError);
  });

  it('fails closed with KeyServerUnavailableError for 409 (awaiting approval)', async () => {
    registry.keys.get(JSON.stringify([ISSUER, key.kid]))!.approved = false;
    await expect(client().resolve(ISSUER, key.kid)).rejects.toBeInstanceOf(KeyServerUnavailableError);
  });

  it('fails closed with KeyServerUnavailableError for 500, logging one warning per key per interval', async () => {
    registry.failWith = 500;
    const logger = recordingLogger();
    const clock = manualClock();
    const reader = client({ logger, clock: clock.now, failureLogInterval: 60_000 });
    for (let i = 0; i < 5; i++) await expect(reader.resolve(ISSUER, key.kid)).rejects.toBeInstanceOf(KeyServerUnavailableError);
    expect(registry.lookupsOf(ISSUER, key.kid)).toBe(5); // failures are not cached
    const warnings = logger.lines.filter((l) => l.level === 'warn');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]!.fields).toMatchObject({ issuer: ISSUER, kid: key.kid, status: 500 });
    expect(JSON.stringify(warnings)).not.toContain(String(key.jwk.n));
    clock.advance(61_000);
    await expect(reader.resolve(ISSUER, key.kid)).rejects.toBeInstanceOf(KeyServerUnavailableError);
    expect(logger.lines.filter((l) => l.level === 'warn')).toHaveLength(2);
  });

  it('fails closed with KeyServerUnavailableError when the connection is refused', async () => {
    const reader = client();
    await registry.stop();
    const error = await reader.resolve(ISSUER, key.kid).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KeyServerUnavailableError);
    expect(httpAnswerFor(error)).toEqual({ status: 403, body: 'jwtproxy: unable to verify request: Unexpected key server error' });
  });

  it('fails closed within the timeout when the registry does not answer', async () => {
    registry.delay = 2_000;
    const reader = client({ timeout: 200 });
    const started = Date.now();
    const error = await reader.resolve(ISSUER, key.kid).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KeyServerUnavailableError);
    expect(String((error as Error).cause)).toContain('no answer within 200 ms');
    expect(Date.now() - started).toBeLessThan(1_500);
  });

  it('fails closed on answers that are not a usable public key', async () => {
    const server = http.createServer((req, res) => {
      const answers: Record<string, string> = {
        '/services/s/keys/notjson': '{nope',
        '/services/s/keys/array': '[]',
        '/services/s/keys/oct': JSON.stringify({ kty: 'oct', k: 'c2VjcmV0' }),
        '/services/s/keys/enc': JSON.stringify({ ...key.jwk, use: 'enc' }),
        '/services/s/keys/badalg': JSON.stringify({ ...key.jwk, alg: 'ES256' }),
        '/services/s/keys/huge': JSON.stringify({ ...key.jwk, pad: 'x'.repeat(100_000) }),
      };
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'max-age=60' });
      res.end(answers[req.url ?? ''] ?? '');
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    try {
      const reader = client({ registry: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });
      for (const kid of ['notjson', 'array', 'oct', 'enc', 'badalg', 'huge']) {
        await expect(reader.resolve('s', kid), kid).rejects.toBeInstanceOf(KeyServerUnavailableError);
      }
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });
});

describe('the key cache', () => {
  it('honours max-age: a second lookup makes no request, after max-age it asks again', async () => {
    registry.cacheControl = 'max-age=30';
    const clock = manualClock();
    const reader = client({ clock: clock.now });
    const first = await reader.resolve(ISSUER, key.kid);
    expect(await reader.resolve(ISSUER, key.kid)).toBe(first); // imported once, same KeyObject
    expect(registry.lookupsOf(ISSUER, key.kid)).toBe(1);
    clock.advance(29_000);
    await reader.resolve(ISSUER, key.kid);
    expect(registry.lookupsOf(ISSUER, key.kid)).toBe(1);
    clock.advance(2_000);
    await reader.resolve(ISSUER, key.kid);
    expect(registry.lookupsOf(ISSUER, key.kid)).toBe(2);
  });

  it('caps max-age by cache.duration (Quay sends up to a day)', async () => {
    const clock = manualClock();
    const reader = client({ clock: clock.now, cacheDuration: 10_000 });
    await reader.resolve(ISSUER, key.kid);
    clock.advance(9_000);
    await reader.resolve(ISSUER, key.kid);
    expect(registry.lookupsOf(ISSUER, key.kid)).toBe(1);
    clock.advance(2_000);
    await reader.resolve(ISSUER, key.kid);
    expect(registry.lookupsOf(ISSUER, key.kid)).toBe(2);
  });

  it('does not keep answers marked no-store or no-cache, or with max-age=0', async () => {
    for (const cacheControl of ['no-store', 'no-cache', 'max-age=0', 'private, max-age=0']) {
      registry.cacheControl = cacheControl;
      const reader = client();
      await reader.resolve(ISSUER, key.kid);
      await reader.resolve(ISSUER, key.kid);
    }
    expect(registry.lookupsOf(ISSUER, key.kid)).toBe(8);
  });

  it('shares one request among 100 concurrent lookups of one key', async () => {
    registry.delay = 50;
    const reader = client();
    const keys = await Promise.all(Array.from({ length: 100 }, () => reader.resolve(ISSUER, key.kid)));
    expect(registry.lookupsOf(ISSUER, key.kid)).toBe(1);
    expect(new Set(keys).size).toBe(1);
  });

  it('keeps verifying with a cached key while the registry is down, until its cache time ends, and recovers', async () => {
    registry.cacheControl = 'max-age=60';
    const clock = manualClock();
    const reader = client({ clock: clock.now });
    await signAndVerify(reader, ISSUER, key.signing, clock.now);
    await registry.stop();
    clock.advance(50_000);
    await expect(signAndVerify(reader, ISSUER, key.signing, clock.now)).resolves.toBeDefined();
    clock.advance(11_000);
    await expect(signAndVerify(reader, ISSUER, key.signing, clock.now)).rejects.toBeInstanceOf(KeyServerUnavailableError);
    await registry.start(); // same port
    await expect(signAndVerify(reader, ISSUER, key.signing, clock.now)).resolves.toBeDefined();
  });

  it('remembers a 404 for not_found_cache_duration only, so a key published later is found', async () => {
    const clock = manualClock();
    const reader = client({ clock: clock.now, notFoundCacheDuration: 2_000 });
    await expect(reader.resolve(ISSUER, 'later')).rejects.toBeInstanceOf(KeyNotFoundError);
    await expect(reader.resolve(ISSUER, 'later')).rejects.toBeInstanceOf(KeyNotFoundError);
    expect(registry.lookupsOf(ISSUER, 'later')).toBe(1);
    registry.addApproved(ISSUER, 'later', key.jwk);
    clock.advance(2_001);
    await expect(reader.resolve(ISSUER, 'later')).resolves.toBeDefined();
    expect(registry.lookupsOf(ISSUER, 'later')).toBe(2);
  });

  it('holds at most max_cached_keys keys, dropping the least recently used', async () => {
    for (const kid of ['a', 'b', 'c']) registry.addApproved(ISSUER, kid, key.jwk);
    const reader = client({ maxCachedKeys: 2 });
    await reader.resolve(ISSUER, 'a');
    await reader.resolve(ISSUER, 'b');
    await reader.resolve(ISSUER, 'a');
    await reader.resolve(ISSUER, 'c'); // pushes out b
    await reader.resolve(ISSUER, 'a');
    await reader.resolve(ISSUER, 'b');
    expect([registry.lookupsOf(ISSUER, 'a'), registry.lookupsOf(ISSUER, 'b'), registry.lookupsOf(ISSUER, 'c')]).toEqual([1, 2, 1]);
  });

  it('refuses empty or oversized issuer and kid without asking the registry', async () => {
    const reader = client();
    await expect(reader.resolve('', key.kid)).rejects.toBeInstanceOf(KeyNotFoundError);
    await expect(reader.resolve(ISSUER, 'k'.repeat(2_000))).rejects.toBeInstanceOf(KeyNotFoundError);
    expect(registry.seen).toHaveLength(0);
  });
});

describe('configuration (key_server type keyregistry)', () => {
  const context = () => ({ logger: silentLogger, clock: Date.now, baseDir: process.cwd() });

  it('is the key server type keyregistry and reads the Go options', async () => {
    const clock = manualClock();
    const made = await keyServers.create(
      { type: 'keyregistry', options: { registry: registry.url, cache: { duration: '5s', purge_interval: '1s' }, timeout: '2s', max_cached_keys: 100 } },
      { ...context(), clock: clock.now },
    );
    expect(made).toBeInstanceOf(KeyRegistryClient);
    clients.push(made as KeyRegistryClient);
    await signAndVerify(made, ISSUER, key.signing, clock.now);
    clock.advance(6_000);
    await made.resolve(ISSUER, key.kid);
    expect(registry.lookupsOf(ISSUER, key.kid)).toBe(2); // cache.duration 5s capped Quay's max-age
  });

  it('also reads the Go code form cache: {type: memory, options: {duration}}', async () => {
    const clock = manualClock();
    const made = (await keyServers.create(
      { type: 'keyregistry', options: { registry: registry.url, cache: { type: 'memory', options: { duration: '3s' } } } },
      { ...context(), clock: clock.now },
    )) as KeyRegistryClient;
    clients.push(made);
    await made.resolve(ISSUER, key.kid);
    clock.advance(4_000);
    await made.resolve(ISSUER, key.kid);
    expect(registry.lookupsOf(ISSUER, key.kid)).toBe(2);
  });

  it('names the option in a ConfigError for a missing registry, a bad URL, a bad duration or count', async () => {
    const cases: [Record<string, unknown>, string][] = [
      [{}, 'registry'],
      [{ registry: 'ftp://127.0.0.1/' }, 'registry'],
      [{ registry: 'not a url' }, 'registry'],
      [{ registry: registry.url, cache: { duration: '10 minutes' } }, 'cache.duration'],
      [{ registry: registry.url, cache: { purge_interval: -5 } }, 'cache.purge_interval'],
      [{ registry: registry.url, timeout: '0' }, 'timeout'],
      [{ registry: registry.url, max_cached_keys: 0 }, 'max_cached_keys'],
      [{ registry: registry.url, cache: 'big' }, 'cache'],
    ];
    for (const [options, path] of cases) {
      const error = await keyServers.create({ type: 'keyregistry', options }, context()).catch((e: unknown) => e);
      expect(error, JSON.stringify(options)).toBeInstanceOf(ConfigError);
      expect((error as ConfigError).path).toBe(path);
    }
  });

  it('refuses option names it does not know, as every component does (it used to only warn)', async () => {
    const logger = recordingLogger();
    const error = await keyServers
      .create({ type: 'keyregistry', options: { registry: registry.url, cache: { duration: '1m', purge_intervall: '1m' } } }, { ...context(), logger })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect(error).toMatchObject({ path: 'cache.purge_intervall', problem: expect.stringContaining('did you mean purge_interval?') });
    const misplaced = await keyServers
      .create({ type: 'keyregistry', options: { registry: registry.url, cache: { type: 'memory', duration: '1m' } } }, context())
      .catch((e: unknown) => e);
    expect(misplaced).toMatchObject({ path: 'cache.duration', problem: 'goes under cache.options when cache.type is given' });
    const nested = await keyServers
      .create({ type: 'keyregistry', options: { registry: registry.url, cache: { type: 'memory', options: { duration: 'long' } } } }, context())
      .catch((e: unknown) => e);
    expect(nested).toMatchObject({ path: 'cache.options.duration', problem: '"long" is not a duration' });
  });

});

describe('helpers', () => {
  it('cacheLifetime reads max-age, no-store and no-cache, capped', () => {
    expect(cacheLifetime('max-age=30', 600_000)).toBe(30_000);
    expect(cacheLifetime('public, MAX-AGE="86400"', 600_000)).toBe(600_000);
    expect(cacheLifetime('max-age=86399.5', 100_000_000)).toBe(86_399_000);
    expect(cacheLifetime(undefined, 600_000)).toBe(600_000);
    expect(cacheLifetime('no-store', 600_000)).toBe(0);
    expect(cacheLifetime('max-age=60, no-cache', 600_000)).toBe(0);
    expect(cacheLifetime('max-age=soon', 600_000)).toBe(0);
  });

  it('verificationKeyFromJwk imports the public half only and honours the JWK alg', () => {
    const withPrivate = key.privateKey.export({ format: 'jwk' });
    const imported = verificationKeyFromJwk({ ...withPrivate, alg: 'RS256' });
    expect(imported.key.type).toBe('public');
    expect(imported.algorithms).toEqual(['RS256']);
    expect(verificationKeyFromJwk(key.jwk).algorithms).toContain('PS256');
  });
});


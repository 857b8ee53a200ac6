/**
 * The key cache under tokens that name made-up keys (issue 12, item 4), and the Go publisher's
 * padded keys as a registry serves them (issue 13). Against a Quay-like registry on 127.0.0.1.
 */
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  ConfigError,
  KeyExpiredError,
  KeyNotFoundError,
  KeyServerUnavailableError,
  httpAnswerFor,
  createRuntime,
  signingKeyFromKeyObject,
  silentLogger,
} from '@jwtproxy/core';
import { startQuayLikeRegistry, type QuayLikeRegistry } from '@jwtproxy/testkit';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  KeyRegistryClient,
  RegistryAnswerTooLargeError,
  keyRegistryKeyServer,
  UnknownKeyLookupsLimitedError,
  verificationKeyFromJwk,
  type KeyRegistryClientOptions,
} from '../src/index.js';
import { manualClock, recordingLogger, rsaKey, signAndVerify, type TestKey } from './helpers.js';

/** The key server as the CLI registers it. */
const { keyServers } = createRuntime();
keyServers.register(keyRegistryKeyServer);

const ISSUER = 'billing';
const notFoundAnswer = { status: 403, body: 'jwtproxy: unable to verify request: Could not find any matching public key' };
let key: TestKey;
let registry: QuayLikeRegistry;
const clients: KeyRegistryClient[] = [];
const servers: http.Server[] = [];

function client(options: Partial<KeyRegistryClientOptions> = {}): KeyRegistryClient {
  const made = new KeyRegistryClient({ registry: registry.url, ...options });
  clients.push(made);
  return made;
}

/** A raw HTTP server on 127.0.0.1, for answers no registry would give. */
async function rawServer(handler: http.RequestListener): Promise<string> {
  const server = http.createServer(handler);
  servers.push(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
}

const madeUpKid = (): string => randomBytes(9).toString('base64url');
const registryGets = (): number => registry.seen.filter((r) => r.method === 'GET').length;

/** Resolves many made-up kids one after another; counts how each ended. */
async function lookUpMadeUpKids(reader: KeyRegistryClient, count: number, issuer: () => string = () => ISSUER): Promise<unknown[]> {
  const outcomes: unknown[] = [];
  for (let i = 0; i < count; i++) outcomes.push(await reader.resolve(issuer(), madeUpKid()).catch((e: unknown) => e));
  return outcomes;
}

beforeAll(() => {
  key = rsaKey('key-1');
});

beforeEach(async () => {
  registry = await startQuayLikeRegistry();
  registry.addApproved(ISSUER, key.kid, key.jwk);
});

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.stop()));
  for (const server of servers.splice(0)) {
    server.closeAllConnections();
    server.close();
  }
  await registry.stop();
});

describe('made-up kids and the key cache', () => {
  it('never push a cached key out: after 500 made-up kids (10 times the cache size) the key verifies with the registry down', async () => {
    registry.cacheControl = 'max-age=3600';
    // A limit high enough that every made-up kid reaches the registry: this is about eviction.
    const reader = client({ maxCachedKeys: 50, maxCachedNotFound: 50, unknownKidBurst: 10_000, unknownKidRate: 10_000 });
    await signAndVerify(reader, ISSUER, key.signing);
    const outcomes = await lookUpMadeUpKids(reader, 500);
    expect(outcomes.every((e) => e instanceof KeyNotFoundError)).toBe(true);
    expect(registryGets()).toBe(501);
    await registry.stop();
    await expect(signAndVerify(reader, ISSUER, key.signing)).resolves.toBeDefined();
    expect(registry.lookupsOf(ISSUER, key.kid)).toBe(1);
  });

  it('remembers at most max_cached_not_found answers, the least recently used forgotten first', async () => {
    const reader = client({ maxCachedNotFound: 3 });
    for (const kid of ['a', 'b', 'c', 'a', 'd', 'a', 'b']) await expect(reader.resolve(ISSUER, kid)).rejects.toBeInstanceOf(KeyNotFoundError);
    // a stays (used again), b was pushed out by d.
    expect(['a', 'b', 'c', 'd'].map((kid) => registry.lookupsOf(ISSUER, kid))).toEqual([1, 2, 1, 1]);
  });

  it('remembers 409 (awaiting approval) and 403 (expired) for not_found_cache_duration, then asks again', async () => {
    const clock = manualClock();
    registry.addApproved(ISSUER, 'pending', key.jwk);
    registry.keys.get(JSON.stringify([ISSUER, 'pending']))!.approved = false;
    registry.addApproved(ISSUER, 'old', key.jwk, Math.floor(Date.now() / 1000) - 10);
    const reader = client({ clock: clock.now, notFoundCacheDuration: 2_000 });
    for (let i = 0; i < 3; i++) {
      await expect(reader.resolve(ISSUER, 'pending')).rejects.toBeInstanceOf(KeyServerUnavailableError);
      await expect(reader.resolve(ISSUER, 'old')).rejects.toBeInstanceOf(KeyExpiredError);
    }
    expect([registry.lookupsOf(ISSUER, 'pending'), registry.lookupsOf(ISSUER, 'old')]).toEqual([1, 1]);
    registry.approve(ISSUER, 'pending');
    clock.advance(2_001);
    await expect(reader.resolve(ISSUER, 'pending')).resolves.toBeDefined();
    await expect(reader.resolve(ISSUER, 'old')).rejects.toBeInstanceOf(KeyExpiredError);
    expect([registry.lookupsOf(ISSUER, 'pending'), registry.lookupsOf(ISSUER, 'old')]).toEqual([2, 2]);
  });

  it('shares one request, and one lookup of the limit, among 100 concurrent lookups of one made-up kid', async () => {
    registry.delay = 50;
    const reader = client({ unknownKidBurst: 2, unknownKidRate: 0.001 });
    const outcomes = await Promise.all(Array.from({ length: 100 }, () => reader.resolve(ISSUER, 'nope').catch((e: unknown) => e)));
    expect(outcomes.every((e) => e instanceof KeyNotFoundError && e.cause === undefined)).toBe(true);
    expect(registry.lookupsOf(ISSUER, 'nope')).toBe(1);
    // One lookup of the two is left: the next made-up kid is asked for, the one after is not.
    await expect(reader.resolve(ISSUER, 'second')).rejects.toBeInstanceOf(KeyNotFoundError);
    await expect(reader.resolve(ISSUER, 'third')).rejects.toBeInstanceOf(KeyNotFoundError);
    expect([registry.lookupsOf(ISSUER, 'second'), registry.lookupsOf(ISSUER, 'third')]).toEqual([1, 0]);
  });
});

describe('the limit on lookups of unknown kids', () => {
  it('refuses, beyond the burst, with "Could not find any matching public key" without a GET, logs once, and refills at the rate', async () => {
    const clock = manualClock();
    const logger = recordingLogger();
    const reader = client({ clock: clock.now, logger, unknownKidBurst: 5, unknownKidRate: 2 });
    await signAndVerify(reader, ISSUER, key.signing, clock.now);
    const before = registryGets();
    const outcomes = await lookUpMadeUpKids(reader, 50);
    expect(registryGets() - before).toBe(5);
    const refused = outcomes.filter((e) => (e as Error).cause instanceof UnknownKeyLookupsLimitedError);
    expect(refused).toHaveLength(45);
    expect(outcomes.every((e) => e instanceof KeyNotFoundError)).toBe(true);
    expect(httpAnswerFor(refused[0])).toEqual(notFoundAnswer);
    expect(((refused[0] as Error).cause as UnknownKeyLookupsLimitedError)).toMatchObject({ code: 'ERR_UNKNOWN_KEY_LOOKUPS_LIMITED', issuer: ISSUER, sharedLimit: false });
    const warnings = logger.lines.filter((l) => l.level === 'warn');
    expect(warnings).toEqual([expect.objectContaining({ message: expect.stringContaining('too many lookups of unknown keys'), fields: expect.objectContaining({ issuer: ISSUER }) })]);

    clock.advance(1_000); // two more lookups earned
    await lookUpMadeUpKids(reader, 10);
    expect(registryGets() - before).toBe(7);
  });

  it('a made-up kid under one issuer does not use up another issuer’s limit; made-up issuers share one limit', async () => {
    const clock = manualClock();
    const other = rsaKey('other-1');
    registry.addApproved('shipping', other.kid, other.jwk);
    const reader = client({ clock: clock.now, unknownKidBurst: 3, unknownKidRate: 0.001 });
    await reader.resolve(ISSUER, key.kid);
    await reader.resolve('shipping', other.kid);
    await lookUpMadeUpKids(reader, 20); // billing's limit used up
    let issuerNumber = 0;
    const madeUpIssuers = await lookUpMadeUpKids(reader, 20, () => `made-up-${issuerNumber++}`);
    expect(registry.seen.filter((r) => r.path.startsWith('/services/made-up-')).length).toBe(3);
    expect(((madeUpIssuers.at(-1) as Error).cause as UnknownKeyLookupsLimitedError).sharedLimit).toBe(true);

    // shipping publishes a second key: found at once, its limit untouched by the floods.
    const next = rsaKey('other-2');
    registry.addApproved('shipping', next.kid, next.jwk);
    await expect(signAndVerify(reader, 'shipping', next.signing, clock.now)).resolves.toBeDefined();
  });

  it('does not limit the refresh of a key the registry served before, nor count keys it serves', async () => {
    const clock = manualClock();
    registry.cacheControl = 'max-age=10';
    for (const kid of ['k2', 'k3', 'k4']) registry.addApproved(ISSUER, kid, key.jwk);
    const reader = client({ clock: clock.now, unknownKidBurst: 2, unknownKidRate: 0.001 });
    // Three real keys with a burst of two: a served key gives its lookup back.
    for (const kid of [key.kid, 'k2', 'k3', 'k4']) await reader.resolve(ISSUER, kid);
    const before = registryGets();
    await lookUpMadeUpKids(reader, 10);
    expect(registryGets() - before).toBe(2); // the limit is used up
    clock.advance(11_000); // the cached key is past its max-age; the limit earned 0.011
    await expect(signAndVerify(reader, ISSUER, key.signing, clock.now)).resolves.toBeDefined();
    expect(registry.lookupsOf(ISSUER, key.kid)).toBe(2);
  });
});

describe('bounded answers', () => {
  it('refuses a JWK answer over 16 KiB, with or without Content-Length, and an RSA key over 16384 bits', async () => {
    const huge = JSON.stringify({ ...key.jwk, x5c: ['A'.repeat(20_000)] });
    const url = await rawServer((req, res) => {
      if (req.url?.endsWith('/declared')) res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(huge) });
      else res.writeHead(200, { 'content-type': 'application/json' }); // chunked
      res.end(huge);
    });
    const reader = client({ registry: url });
    for (const kid of ['declared', 'chunked']) {
      const error = await reader.resolve('s', kid).catch((e: unknown) => e);
      expect(error, kid).toBeInstanceOf(KeyServerUnavailableError);
      expect((error as Error).cause, kid).toBeInstanceOf(RegistryAnswerTooLargeError);
    }
    // A 16392-bit modulus (not a real key; the size alone is refused).
    const n = randomBytes(2049);
    n[0] = 0xff;
    expect(() => verificationKeyFromJwk({ kty: 'RSA', e: 'AQAB', n: n.toString('base64url') })).toThrow(/16392 bits, more than 16384/);
  });

});

describe("the Go publisher's keys (issue 13)", () => {
  /** base64url with `=` padding, as Go's base64.URLEncoding writes it. */
  const padded = (unpadded: string): string => unpadded + '='.repeat((4 - (unpadded.length % 4)) % 4);

  it('verifies with a padded JWK served under a padded kid, asked for as %3D in the path', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwk = publicKey.export({ format: 'jwk' }) as { kty: string; n: string; e: string };
    // The kid the Go tool makes: the RFC 7638 thumbprint, base64url with padding.
    const thumbprint = createHash('sha256').update(JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n })).digest('base64url');
    const kid = padded(thumbprint);
    expect(kid).toMatch(/=$/);
    const goJwk = { kid, kty: 'RSA', alg: 'RS256', use: 'sig', e: padded(jwk.e), n: padded(jwk.n) };
    expect(goJwk.n).toMatch(/==$/);
    registry.addApproved(ISSUER, kid, goJwk);

    const reader = client();
    await expect(signAndVerify(reader, ISSUER, signingKeyFromKeyObject(kid, privateKey))).resolves.toBeDefined();
    expect(registry.seen.map((r) => r.path)).toEqual([`/services/${ISSUER}/keys/${thumbprint}%3D`]);
  });

  it('verifies with a padded EC JWK', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const jwk = publicKey.export({ format: 'jwk' }) as Record<string, string>;
    registry.addApproved(ISSUER, 'ec-key', { ...jwk, x: padded(jwk.x!), y: padded(jwk.y!) });
    await expect(signAndVerify(client(), ISSUER, signingKeyFromKeyObject('ec-key', privateKey))).resolves.toBeDefined();
  });

  it('refuses an issuer or kid "." or ".." without asking (servers resolve them, escaped or not, as another route)', async () => {
    const reader = client();
    for (const [issuer, kid] of [[ISSUER, '.'], [ISSUER, '..'], ['..', key.kid], ['.', 'x']] as const) {
      await expect(reader.resolve(issuer, kid)).rejects.toBeInstanceOf(KeyNotFoundError);
    }
    expect(registry.seen).toEqual([]);
  });
});

describe('configuration of the limits', () => {
  const context = () => ({ logger: silentLogger, clock: Date.now, baseDir: process.cwd() });

  it('reads unknown_kid_burst, unknown_kid_rate, max_tracked_issuers, max_cached_not_found without warnings', async () => {
    const logger = recordingLogger();
    const reader = (await keyServers.create(
      {
        type: 'keyregistry',
        options: { registry: registry.url, unknown_kid_burst: 2, unknown_kid_rate: 0.5, max_tracked_issuers: 10, max_cached_not_found: 100 },
      },
      { ...context(), logger },
    )) as KeyRegistryClient;
    clients.push(reader);
    expect(logger.lines).toEqual([]);
    const outcomes = await lookUpMadeUpKids(reader, 5);
    expect(registryGets()).toBe(2);
    expect(outcomes.filter((e) => (e as Error).cause instanceof UnknownKeyLookupsLimitedError)).toHaveLength(3);
  });

  it('names the option in a ConfigError for a bad limit', async () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ unknown_kid_rate: 0 }, 'unknown_kid_rate'],
      [{ unknown_kid_rate: 'fast' }, 'unknown_kid_rate'],
      [{ unknown_kid_burst: 0 }, 'unknown_kid_burst'],
      [{ unknown_kid_burst: 2.5 }, 'unknown_kid_burst'],
      [{ max_tracked_issuers: -1 }, 'max_tracked_issuers'],
      [{ max_cached_not_found: 0 }, 'max_cached_not_found'],
    ];
    for (const [options, path] of cases) {
      const error = await keyServers.create({ type: 'keyregistry', options: { registry: registry.url, ...options } }, context()).catch((e: unknown) => e);
      expect(error, JSON.stringify(options)).toBeInstanceOf(ConfigError);
      expect((error as ConfigError).path).toBe(path);
    }
  });
});

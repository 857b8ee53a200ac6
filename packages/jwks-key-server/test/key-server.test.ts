/**
 * The jwks key server against a JWKS publisher on 127.0.0.1: caching by the answer's max-age,
 * background refresh, one read for many concurrent misses, a limited refetch for unknown kids,
 * stale keys while the source is down (bounded), issuers and algorithms, OIDC discovery.
 */
import { randomBytes } from 'node:crypto';
import { writeFile, mkdtemp, rm } from 'node:fs/promises';
import https from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { listenOnLoopback, makeCa, makeServerCertificate } from '@jwtproxy/testkit';
import { ConfigError, KeyNotFoundError, KeyServerUnavailableError, createRuntime, silentLogger } from '@jwtproxy/core';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { JwksKeyServer, jwksKeyServer, type JwksKeyServerOptions } from '../src/index.js';
import { AUDIENCE, makeKey, recordingLogger, signerFor, sleep, startJwksServer, verifierFor, type JwksServer, type TestKey } from './helpers.js';

const ISSUER = 'billing';
let a: TestKey;
let b: TestKey;
const cleanups: Array<() => Promise<unknown>> = [];

beforeAll(() => {
  a = makeKey('a');
  b = makeKey('b', 'ec');
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function publisher(keys: Record<string, unknown>[], cacheControl?: string): Promise<JwksServer> {
  const server = await startJwksServer(keys, cacheControl);
  cleanups.push(() => server.close());
  return server;
}

function keyServer(source: JwksServer, options: Partial<JwksKeyServerOptions> = {}): JwksKeyServer {
  const made = new JwksKeyServer({ url: source.url, issuers: [ISSUER], ...options });
  cleanups.push(() => made.stop());
  return made;
}

const failureOf = (promise: Promise<unknown>): Promise<unknown> => promise.then(
  () => {
    throw new Error('resolved');
  },
  (error: unknown) => error,
);

/** Polls `condition` every 50 ms until it holds, at most `ms`. */
async function eventually(condition: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(50);
  }
}

describe('reading and keeping the set', () => {
  it('reads the set once and keeps it for its max-age: 500 lookups, 1 GET', async () => {
    const source = await publisher([a.jwk, b.jwk], 'public, max-age=300');
    const server = keyServer(source);
    for (let i = 0; i < 500; i++) await server.resolve(ISSUER, i % 2 ? 'a' : 'b');
    expect(source.setGets).toBe(1);
    const { fetchedAt, expiresAt, kids } = server.status();
    expect(expiresAt! - fetchedAt!).toBe(300_000);
    expect(kids).toEqual(['a', 'b']);
  });

  it('a token signed by a key of the set verifies, with the algorithm of the key', async () => {
    const source = await publisher([a.jwk, b.jwk]);
    const server = keyServer(source);
    for (const key of [a, b]) {
      const token = await signerFor(ISSUER, () => key.signing).authorizationFor(AUDIENCE);
      const verified = await verifierFor(server).verifyRequest(token);
      expect(verified.header.kid).toBe(key.kid);
    }
  });

  it('reads it again in the background before it expires: requests never wait for a read', async () => {
    const source = await publisher([a.jwk], 'max-age=1');
    const server = keyServer(source, { minCacheDuration: 1_000 });
    await server.resolve(ISSUER, 'a');
    // Refreshed at 3/4 of its second, with no request asking.
    await source.waitForSetGets(3, 5_000);
    const before = server.status();
    expect(Date.now()).toBeLessThan(before.expiresAt!);
    for (let i = 0; i < 100; i++) await server.resolve(ISSUER, 'a');
    expect(source.setGets).toBeLessThanOrEqual(4);
  });

  it('1,000 concurrent lookups before any set was read cause one read', async () => {
    const source = await publisher([a.jwk]);
    const server = keyServer(source);
    const keys = await Promise.all(Array.from({ length: 1_000 }, () => server.resolve(ISSUER, 'a')));
    expect(new Set(keys).size).toBe(1);
    expect(source.setGets).toBe(1);
  });

  it('1,000 concurrent lookups of one unknown kid cause one read, and the next 1,000 none', async () => {
    const source = await publisher([a.jwk]);
    const server = keyServer(source);
    await server.resolve(ISSUER, 'a');
    const errors = await Promise.all(Array.from({ length: 1_000 }, () => failureOf(server.resolve(ISSUER, 'unknown'))));
    expect(errors.every((error) => error instanceof KeyNotFoundError)).toBe(true);
    expect(source.setGets).toBe(2);
    const again = await Promise.all(Array.from({ length: 1_000 }, () => failureOf(server.resolve(ISSUER, randomBytes(8).toString('hex')))));
    expect(again.every((error) => error instanceof KeyNotFoundError)).toBe(true);
    expect(source.setGets).toBe(2);
    const facts = (again[0] as KeyNotFoundError).facts!;
    expect(facts.problem).toBe('kid not in the JWK set');
    expect(facts.refetch).toMatch(/^not read again: at most one read for unknown kids every 10 s, next in \d+ s$/);
    expect(facts.jwks).toBe(source.url);
    expect(facts.keys).toBe(1);
  });

  it('made-up kids cause at most one read per unknown_kid_refetch_interval (2.5 s of them at 1 s: at most 4 reads)', async () => {
    const source = await publisher([a.jwk]);
    const server = keyServer(source, { unknownKidRefetchInterval: 1_000 });
    await server.resolve(ISSUER, 'a');
    const end = Date.now() + 2_500;
    let lookups = 0;
    while (Date.now() < end) {
      await Promise.all(Array.from({ length: 50 }, () => server.resolve(ISSUER, randomBytes(8).toString('hex')).catch(() => {})));
      lookups += 50;
      await sleep(5);
    }
    expect(lookups).toBeGreaterThan(1_000);
    expect(source.setGets - 1).toBeLessThanOrEqual(4);
    expect(source.setGets - 1).toBeGreaterThanOrEqual(2);
    // The real key was never pushed out by them.
    await server.resolve(ISSUER, 'a');
  });

  it('a key published after the set was read is found by the read its first token causes', async () => {
    const source = await publisher([a.jwk]);
    const server = keyServer(source);
    await server.resolve(ISSUER, 'a');
    source.keys = [a.jwk, b.jwk];
    await server.resolve(ISSUER, 'b');
    expect(source.setGets).toBe(2);
  });

  it('a read under way that started before a key was published does not hide it: a read of its own follows', async () => {
    const source = await publisher([a.jwk], 'max-age=1');
    const server = keyServer(source, { minCacheDuration: 1_000 });
    await server.resolve(ISSUER, 'a');
    source.delayMs = 800;
    // The background read (at 3/4 of the second) is asked for the set without b ...
    await source.waitForSetGets(2, 5_000);
    // ... then b is published, and its first token comes while that read is under way.
    source.keys = [a.jwk, b.jwk];
    expect((await server.resolve(ISSUER, 'b')).algorithms).toEqual(['ES256']);
    expect(source.setGets).toBe(3);
  });
});

describe('observed (metrics)', () => {
  it('tells its observer of hits, limited lookups and how each read ended', async () => {
    const source = await publisher([a.jwk]);
    const server = keyServer(source);
    const seen = { hits: 0, limited: 0, reads: [] as string[] };
    server.observe({ cacheHit: () => seen.hits++, limited: () => seen.limited++, fetched: (outcome) => seen.reads.push(outcome) });
    for (let i = 0; i < 10; i++) await server.resolve(ISSUER, 'a');
    await failureOf(server.resolve(ISSUER, 'x'));
    await failureOf(server.resolve(ISSUER, 'y'));
    source.mode = { kind: 'raw', body: 'not json' };
    await failureOf(server.refresh());
    source.mode = { kind: 'down' };
    await failureOf(server.refresh());
    expect(seen).toEqual({ hits: 9, limited: 1, reads: ['key', 'key', 'unusable', 'unavailable'] });
  });
});

describe('while the source is down', () => {
  it('keys held keep verifying past expiry until max_stale, unknown kids are refused with why; then it fails closed; then recovers', async () => {
    const source = await publisher([a.jwk], 'max-age=1');
    const logger = recordingLogger();
    const server = keyServer(source, { minCacheDuration: 1_000, maxStale: 2_500, unknownKidRefetchInterval: 1_000, logger });
    await server.resolve(ISSUER, 'a');
    source.mode = { kind: 'down' };
    // Past its expiry (1 s) but within max_stale: the key held verifies.
    await sleep(1_500);
    expect(Date.now()).toBeGreaterThan(server.status().expiresAt!);
    const token = await signerFor(ISSUER, () => a.signing).authorizationFor(AUDIENCE);
    await verifierFor(server).verifyRequest(token);
    const unknown = (await failureOf(server.resolve(ISSUER, 'rotated-in'))) as KeyNotFoundError;
    expect(unknown).toBeInstanceOf(KeyNotFoundError);
    expect(unknown.facts).toMatchObject({ problem: 'kid not in the JWK set', kid: 'rotated-in', last_error: 'ERR_JWKS_UNAVAILABLE: HTTP 503' });
    expect(logger.lines.some((line) => line.level === 'warn' && line.message.startsWith('JWK set could not be read again') && line.fields.stale_until)).toBe(true);

    // Past expiry + max_stale (1 s + 2.5 s): fail closed.
    await eventually(() => Date.now() > server.status().expiresAt! + 2_500);
    const closed = (await failureOf(server.resolve(ISSUER, 'a'))) as KeyServerUnavailableError;
    expect(closed).toBeInstanceOf(KeyServerUnavailableError);
    expect(closed.facts!.problem).toBe('the JWK set held expired more than max_stale ago and cannot be read again');

    source.mode = { kind: 'serve' };
    await eventually(async () => (await server.resolve(ISSUER, 'a').then(() => true, () => false)));
    expect(logger.lines.some((line) => line.message === 'JWK set read again after failed reads')).toBe(true);
    // A failing source is logged once, then at most once a minute: not once per read.
    const failureLines = logger.lines.filter((line) => line.message.startsWith('JWK set could not be read'));
    expect(failureLines.length).toBe(1);
    expect(server.status().failures).toBe(0);
  });

  it('max_stale 0: an expired set verifies nothing while the source is down', async () => {
    const source = await publisher([a.jwk], 'max-age=1');
    const server = keyServer(source, { minCacheDuration: 1_000, maxStale: 0 });
    await server.resolve(ISSUER, 'a');
    source.mode = { kind: 'down' };
    await sleep(1_200);
    expect(await failureOf(server.resolve(ISSUER, 'a'))).toBeInstanceOf(KeyServerUnavailableError);
  });

  it('before any set was read, every token is refused (fail closed), and a failing source is asked with backoff, not per request', async () => {
    const source = await publisher([a.jwk]);
    source.mode = { kind: 'down' };
    const server = keyServer(source);
    const errors = await Promise.all(Array.from({ length: 200 }, () => failureOf(server.resolve(ISSUER, 'a'))));
    expect(errors.every((error) => error instanceof KeyServerUnavailableError)).toBe(true);
    for (let i = 0; i < 200; i++) await failureOf(server.resolve(ISSUER, 'a'));
    expect(source.setGets).toBe(1);
    expect((errors[0] as KeyServerUnavailableError).facts).toMatchObject({ problem: 'no JWK set could be read yet', last_error: 'ERR_JWKS_UNAVAILABLE: HTTP 503' });
  });
});

describe('issuers and algorithms', () => {
  it('answers only for its issuers, without a read for another', async () => {
    const source = await publisher([a.jwk]);
    const server = keyServer(source, { issuers: ['billing', 'https://idp.example.com/'] });
    await server.resolve('https://idp.example.com/', 'a');
    const gets = source.setGets;
    for (const iss of ['Billing', 'https://idp.example.com', 'admin']) {
      const error = (await failureOf(server.resolve(iss, 'a'))) as KeyNotFoundError;
      expect(error).toBeInstanceOf(KeyNotFoundError);
      expect(error.facts).toMatchObject({ problem: 'iss is not one of the issuers of this key server', iss });
    }
    expect(source.setGets).toBe(gets);
    // Through the verifier: a token of the set's key with another iss gets the key server's refusal.
    const token = await signerFor('admin', () => a.signing).authorizationFor(AUDIENCE);
    await expect(verifierFor(server).verifyRequest(token)).rejects.toThrow('Could not find any matching public key');
  });

  it('algorithms: keys fit for none are refused, with the reason in the facts; the alg of the JWK binds', async () => {
    const source = await publisher([a.jwk, b.jwk, { ...makeKey('ps').jwk, alg: 'PS256' }]);
    const server = keyServer(source, { algorithms: ['ES256', 'PS256'] });
    // b (EC) verifies ES256
    await verifierFor(server).verifyRequest(await signerFor(ISSUER, () => b.signing).authorizationFor(AUDIENCE));
    // a (RSA) may verify PS256 here, but core's signer signs RSA with RS256: refused as a bad signature.
    await expect(verifierFor(server).verifyRequest(await signerFor(ISSUER, () => a.signing).authorizationFor(AUDIENCE))).rejects.toThrow('Invalid JWT signature');
    expect(server.status().kids).toEqual(['a', 'b', 'ps']);
    const rsOnly = keyServer(source, { algorithms: ['RS256'] });
    const refused = (await failureOf(rsOnly.resolve(ISSUER, 'ps'))) as KeyNotFoundError;
    expect(refused).toBeInstanceOf(KeyNotFoundError);
    expect(refused.facts!.problem).toBe("the set's key with this kid is refused: fit for PS256, none of them in this key server's algorithms");
  });
});

describe('OIDC discovery', () => {
  it('reads the jwks_uri of {issuer}/.well-known/openid-configuration and answers for that issuer only', async () => {
    const source = await publisher([a.jwk]);
    const logger = recordingLogger();
    const server = new JwksKeyServer({ discoveryIssuer: source.origin, issuers: [source.origin], logger });
    cleanups.push(() => server.stop());
    const token = await signerFor(source.origin, () => a.signing).authorizationFor(AUDIENCE);
    await verifierFor(server).verifyRequest(token);
    expect([source.discoveryGets, source.setGets]).toEqual([1, 1]);
    expect(logger.lines.find((line) => line.message.startsWith('OIDC discovery'))?.fields.jwks).toBe(source.url);
  });

  it('refuses a discovery document naming another issuer, or no usable jwks_uri (fail closed)', async () => {
    const source = await publisher([a.jwk]);
    for (const [discovery, problem] of [
      [{ issuer: 'https://evil.example.com' }, /names issuer "https:\/\/evil.example.com", not/],
      [{ jwks_uri: 'ftp://x/jwks' }, /no jwks_uri that is an http\(s\) URL/],
      [{ jwks_uri: undefined }, /no jwks_uri/],
    ] as const) {
      source.discovery = discovery;
      const server = new JwksKeyServer({ discoveryIssuer: source.origin, issuers: [source.origin] });
      cleanups.push(() => server.stop());
      const error = (await failureOf(server.resolve(source.origin, 'a'))) as KeyServerUnavailableError;
      expect(error).toBeInstanceOf(KeyServerUnavailableError);
      expect(String(error.facts!.last_error)).toMatch(problem);
      expect(String(error.facts!.last_error)).toMatch(/^ERR_JWKS_DISCOVERY/);
    }
    expect(source.setGets).toBe(0);
  });
});

describe('https sources', () => {
  it('reads a set over https from a CA of ca_file; without it the unknown CA fails closed', async () => {
    const ca = makeCa();
    const certificate = makeServerCertificate(['127.0.0.1'], ca);
    const server = https.createServer(certificate, (_req, res) => res.writeHead(200, { 'cache-control': 'max-age=300' }).end(JSON.stringify({ keys: [a.jwk] })));
    const running = await listenOnLoopback(server, 'https');
    cleanups.push(() => running.close());
    const dir = await mkdtemp(path.join(tmpdir(), 'jwks-ca-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    await writeFile(path.join(dir, 'ca.pem'), ca.cert);

    const runtime = createRuntime();
    runtime.keyServers.register(jwksKeyServer);
    const context = { logger: silentLogger, clock: Date.now, baseDir: dir };
    const trusted = (await runtime.keyServers.create({ type: 'jwks', options: { url: `${running.url}/jwks.json`, issuer: ISSUER, ca_file: 'ca.pem' } }, context)) as JwksKeyServer;
    cleanups.push(() => trusted.stop());
    expect((await trusted.resolve(ISSUER, 'a')).algorithms).toContain('RS256');

    const untrusted = new JwksKeyServer({ url: `${running.url}/jwks.json`, issuers: [ISSUER] });
    cleanups.push(() => untrusted.stop());
    const error = (await failureOf(untrusted.resolve(ISSUER, 'a'))) as KeyServerUnavailableError;
    expect(error).toBeInstanceOf(KeyServerUnavailableError);
    expect(String(error.facts!.last_error)).toMatch(/^ERR_JWKS_UNAVAILABLE: no answer: (UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_GET_ISSUER_CERT_LOCALLY)$/);
  });

  it('warns at start that a set read over plain http from another host can be swapped', () => {
    const logger = recordingLogger();
    const server = new JwksKeyServer({ url: 'http://keys.example.invalid/jwks.json?token=secret', issuers: [ISSUER], logger });
    cleanups.push(() => server.stop());
    const warning = logger.lines.find((line) => line.level === 'warn');
    expect(warning?.message).toMatch(/^the JWK set is read over plain http: anyone on the path can swap its keys/);
    // Its address without the query, which may carry a secret.
    expect(warning?.fields.jwks).toBe('http://keys.example.invalid/jwks.json');
    const quiet = recordingLogger();
    cleanups.push(() => new JwksKeyServer({ url: 'http://127.0.0.1:1/jwks.json', issuers: [ISSUER], logger: quiet }).stop());
    expect(quiet.lines).toEqual([]);
  });
});

describe('as a component', () => {
  const runtime = createRuntime();
  runtime.keyServers.register(jwksKeyServer);
  const build = (options: Record<string, unknown>) => runtime.keyServers.create({ type: 'jwks', options }, { logger: silentLogger, clock: Date.now, baseDir: process.cwd() });
  const problem = async (options: Record<string, unknown>): Promise<string> => {
    const error = await build(options).then(
      async (made) => {
        await made.stop?.();
        throw new Error('built');
      },
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ConfigError);
    return `${(error as ConfigError).path}: ${(error as ConfigError).problem}`;
  };

  it('reads its options and starts reading the set at once', async () => {
    const source = await publisher([a.jwk]);
    const made = (await build({ url: source.url, issuer: ISSUER, algorithms: ['RS256'], max_stale: '30m', unknown_kid_refetch_interval: '5s' })) as JwksKeyServer;
    cleanups.push(() => made.stop());
    await source.waitForSetGets(1);
    expect((await made.resolve(ISSUER, 'a')).algorithms).toEqual(['RS256']);
  });

  it('says what is wrong with its options', async () => {
    expect(await problem({ url: 'http://127.0.0.1:1/jwks.json' })).toMatch(/^issuers: name the issuers whose tokens this JWK set verifies/);
    expect(await problem({ issuers: ['a'] })).toMatch(/^url: is required/);
    expect(await problem({ issuer: 'billing' })).toMatch(/^issuer: without url, must be an OIDC issuer URL/);
    expect(await problem({ url: 'http://x/j', issuer: 'a', issuers: ['b'] })).toBe('issuers: give issuer or issuers, not both');
    expect(await problem({ url: 'file:///etc/passwd', issuer: 'a' })).toMatch(/^url: must be an absolute http or https URL/);
    expect(await problem({ url: 'https://user:pw@x/j', issuer: 'a' })).toMatch(/^url: must be an absolute http or https URL without credentials/);
    expect(await problem({ urll: 'http://x/j', issuer: 'a' })).toMatch(/^urll: unknown option: did you mean url\?/);
    expect(await problem({ url: 'http://x/j', issuer: 'a', algorithms: ['HS256'] })).toMatch(/^algorithms\[0\]: must be one of RS256/);
    expect(await problem({ url: 'http://x/j', issuer: 'a', unknown_kid_refetch_interval: '100ms' })).toBe('unknown_kid_refetch_interval: must be 1s or more');
    expect(await problem({ url: 'http://x/j', issuer: 'a', min_cache_duration: '2h', max_cache_duration: '1h' })).toBe('min_cache_duration: must not be longer than max_cache_duration');
    expect(await problem({ url: 'http://x/j', issuer: 'a', max_answer_bytes: 100 })).toMatch(/^max_answer_bytes: must be 1024 or more/);
    expect(await problem({ url: 'http://x/j', issuer: 'a', ca_file: '/nonexistent/ca.pem' })).toMatch(/^ca_file: cannot read \/nonexistent\/ca.pem: ENOENT/);
  });
});

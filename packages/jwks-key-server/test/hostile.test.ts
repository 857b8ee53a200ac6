/**
 * Hostile and broken answers of a JWK set's source: huge, endless, slow, silent, cut, not JSON,
 * not a set, bad keys, too many keys, redirects. None may crash, stall or fill the verifier:
 * before a set was read, tokens are refused (fail closed); with a good set held, its keys keep
 * verifying and the bad answer never replaces it.
 */
import { KeyNotFoundError, KeyServerUnavailableError } from '@jwtproxy/core';
import { generateKeyPairSync } from 'node:crypto';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { JwksKeyServer } from '../src/index.js';
import { makeKey, recordingLogger, sleep, startJwksServer, type JwksMode, type JwksServer, type TestKey } from './helpers.js';

const ISSUER = 'billing';
const TIMEOUT = 1_000;
let good: TestKey;
const cleanups: Array<() => Promise<unknown>> = [];

beforeAll(() => {
  good = makeKey('good');
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const weak = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'jwk' });

/** Each hostile answer, and the code of the error it must end in. */
const hostile: Array<[string, () => JwksMode, RegExp]> = [
  ['a 5 MB answer with its Content-Length', () => ({ kind: 'raw', body: Buffer.alloc(5 * 1024 * 1024, 0x20) }), /^ERR_JWKS_ANSWER_TOO_LARGE: answer larger than 262144 bytes$/],
  ['an endless chunked answer (64 KiB every ms)', () => ({ kind: 'drip', chunk: ' '.repeat(64 * 1024), everyMs: 1 }), /^ERR_JWKS_ANSWER_TOO_LARGE/],
  ['an answer dripping a byte every 100 ms', () => ({ kind: 'drip', chunk: ' ', everyMs: 100 }), /^ERR_JWKS_UNAVAILABLE: no complete answer within 1000 ms$/],
  ['no answer at all', () => ({ kind: 'silent' }), /^ERR_JWKS_UNAVAILABLE: no complete answer within 1000 ms$/],
  ['a connection closed without an answer', () => ({ kind: 'reset' }), /^ERR_JWKS_UNAVAILABLE: no answer: /],
  ['HTTP 500', () => ({ kind: 'status', status: 500 }), /^ERR_JWKS_UNAVAILABLE: HTTP 500$/],
  ['a redirect elsewhere', () => ({ kind: 'status', status: 302, location: 'http://127.0.0.2/evil.json' }), /^ERR_JWKS_UNAVAILABLE: HTTP 302 \(redirects are not followed/],
  ['HTML instead of JSON', () => ({ kind: 'raw', body: '<html>Sign in</html>' }), /^ERR_JWKS_INVALID: the answer is not JSON$/],
  ['truncated JSON', () => ({ kind: 'raw', body: JSON.stringify({ keys: [good.jwk] }).slice(0, 100) }), /^ERR_JWKS_INVALID: the answer is not JSON$/],
  ['gzip bytes', () => ({ kind: 'raw', body: Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]), headers: { 'content-encoding': 'gzip' } }), /^ERR_JWKS_INVALID: the answer is not JSON$/],
  ['JSON nested 100,000 deep', () => ({ kind: 'raw', body: '['.repeat(100_000) + ']'.repeat(100_000) }), /^ERR_JWKS_INVALID: the answer is not (JSON|a JWK set)/],
  ['JSON that is not a set', () => ({ kind: 'raw', body: '{"keys": "all of them"}' }), /^ERR_JWKS_INVALID: the answer is not a JWK set/],
  ['null', () => ({ kind: 'raw', body: 'null' }), /^ERR_JWKS_INVALID: the answer is not a JWK set/],
  ['10,000 keys', () => ({ kind: 'raw', body: JSON.stringify({ keys: Array.from({ length: 10_000 }, () => ({})) }) }), /^ERR_JWKS_INVALID: the set lists 10000 keys, more than max_keys \(100\)$/],
  [
    'only unusable keys (HMAC, RSA 1024, e = 1, alg none)',
    () => ({
      kind: 'raw',
      body: JSON.stringify({
        keys: [
          { kty: 'oct', kid: 'good', k: 'c2VjcmV0' },
          { ...weak, kid: 'good' },
          { ...good.jwk, e: 'AQ' },
          { ...good.jwk, alg: 'none' },
        ],
      }),
    }),
    /^ERR_JWKS_INVALID: none of the 4 keys is usable/,
  ],
];

async function publisher(cacheControl: string): Promise<JwksServer> {
  const server = await startJwksServer([good.jwk], cacheControl);
  cleanups.push(() => server.close());
  return server;
}

function keyServer(source: JwksServer, logger = recordingLogger()): JwksKeyServer {
  const made = new JwksKeyServer({ url: source.url, issuers: [ISSUER], timeout: TIMEOUT, minCacheDuration: 1_000, logger });
  cleanups.push(() => made.stop());
  return made;
}

const failureOf = (promise: Promise<unknown>): Promise<unknown> => promise.then(
  () => {
    throw new Error('resolved');
  },
  (error: unknown) => error,
);

describe('before any set was read, a hostile answer fails closed, within the timeout', () => {
  it.each(hostile)('%s', async (_name, mode, code) => {
    const source = await publisher('max-age=300');
    source.mode = mode();
    const server = keyServer(source);
    const started = performance.now();
    const error = (await failureOf(server.resolve(ISSUER, 'good'))) as KeyServerUnavailableError;
    const took = performance.now() - started;
    expect(error).toBeInstanceOf(KeyServerUnavailableError);
    expect(String(error.facts?.last_error)).toMatch(code);
    expect(took).toBeLessThan(TIMEOUT + 1_500);
    // Asked again by requests only after the backoff: not once per request.
    for (let i = 0; i < 50; i++) expect(await failureOf(server.resolve(ISSUER, 'good'))).toBeInstanceOf(KeyServerUnavailableError);
    expect(source.setGets).toBe(1);
  });
});

describe('with a good set held, a hostile answer never replaces it: its keys keep verifying', () => {
  it.each(hostile)('%s', async (_name, mode, code) => {
    const source = await publisher('max-age=1');
    const logger = recordingLogger();
    const server = keyServer(source, logger);
    const key = await server.resolve(ISSUER, 'good');
    source.mode = mode();
    // The background read at 3/4 of the second meets the hostile answer; then the set expires.
    await source.waitForSetGets(2);
    while (Date.now() <= server.status().expiresAt! + 50 || server.status().failures === 0) await sleep(50);
    expect(await server.resolve(ISSUER, 'good')).toBe(key);
    const unknown = (await failureOf(server.resolve(ISSUER, 'other'))) as KeyNotFoundError;
    expect(unknown).toBeInstanceOf(KeyNotFoundError);
    expect(String(unknown.facts?.last_error)).toMatch(code);
    expect(logger.lines.filter((line) => line.level === 'warn').map((line) => line.message)).toContain('JWK set could not be read again; its keys held keep verifying until stale_until');
    // No private or token material in what was logged.
    expect(JSON.stringify(logger.lines)).not.toMatch(/eyJ/);
  });
});

describe('odd but valid sets', () => {
  it('kids named __proto__ and constructor are kids like others', async () => {
    const proto = makeKey('__proto__', 'ec');
    const ctor = makeKey('constructor', 'ed25519');
    const source = await publisher('max-age=300');
    source.keys = [proto.jwk, ctor.jwk];
    const server = keyServer(source);
    expect((await server.resolve(ISSUER, '__proto__')).algorithms).toEqual(['ES256']);
    expect((await server.resolve(ISSUER, 'constructor')).algorithms).toEqual(['EdDSA']);
    expect(await failureOf(server.resolve(ISSUER, 'toString'))).toBeInstanceOf(KeyNotFoundError);
  });

  it('an empty set is the publisher word: every token refused as an unknown key, with a warning', async () => {
    const source = await publisher('max-age=300');
    source.keys = [];
    const logger = recordingLogger();
    const server = keyServer(source, logger);
    const error = (await failureOf(server.resolve(ISSUER, 'good'))) as KeyNotFoundError;
    expect(error).toBeInstanceOf(KeyNotFoundError);
    expect(error.facts).toMatchObject({ problem: 'kid not in the JWK set', keys: 0 });
    expect(logger.lines.map((line) => line.message)).toContain('the JWK set lists no keys: every token is refused until it does');
  });

  it('a set publishing private members: the public half is used and the leak is logged', async () => {
    const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const source = await publisher('max-age=300');
    source.keys = [{ ...pair.privateKey.export({ format: 'jwk' }), kid: 'leaky' }];
    const logger = recordingLogger();
    const server = keyServer(source, logger);
    expect((await server.resolve(ISSUER, 'leaky')).key.type).toBe('public');
    expect(logger.lines.some((line) => line.message.startsWith('the JWK set publishes private key members'))).toBe(true);
    expect(JSON.stringify(logger.lines)).not.toContain(String((source.keys[0] as { d: string }).d));
  });
});

import { generateKeyPairSync, verify } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { NoActiveKeyError, SigningError, audienceOf, generateNonce, httpAnswerFor, signingKeyFromKeyObject } from '../src/index.js';
import { makeSigner, makeVerifier, publicKey } from './helpers.js';

const decode = (segment: string) => JSON.parse(Buffer.from(segment, 'base64url').toString('utf8')) as Record<string, unknown>;

describe('RequestSigner', () => {
  const now = Date.UTC(2026, 10, 28, 12, 0, 0, 750);
  const clock = () => now;

  it('produces exactly the Go header and claim set, in Go key order', async () => {
    const token = await makeSigner(clock).sign('http://127.0.0.1:8199');
    const [header, claims, signature] = token.split('.') as [string, string, string];
    expect(Buffer.from(header, 'base64url').toString()).toBe('{"alg":"RS256","kid":"mykey","typ":"JWT"}');
    const decoded = decode(claims);
    expect(Object.keys(decoded)).toEqual(['aud', 'exp', 'iat', 'iss', 'jti', 'nbf']);
    const iat = Math.floor(now / 1000);
    expect(decoded).toMatchObject({ aud: 'http://127.0.0.1:8199', iss: 'jwtproxy', iat, nbf: iat - 60, exp: iat + 300 });
    expect(decoded.jti).toMatch(/^[A-Za-z0-9+/]{32}$/);
    expect(signature).toMatch(/^[A-Za-z0-9_-]+$/); // base64url, no padding
    expect(verify('sha256', Buffer.from(`${header}.${claims}`), publicKey, Buffer.from(signature, 'base64url'))).toBe(true);
  });

  it('signs tokens that this project verifies with the same key', async () => {
    const signer = makeSigner(clock);
    const { verifier } = makeVerifier({ clock });
    const verified = await verifier.verifyRequest(await signer.authorizationFor('http://127.0.0.1:8199'));
    expect(verified.claims.iss).toBe('jwtproxy');
  });

  it('honours issuer, expiration_time, max_skew and nonce_length', async () => {
    const token = await makeSigner(clock, { issuer: 'billing', expirationTime: 30_000, maxSkew: 5_000, nonceLength: 12 }).sign('https://a.example');
    const claims = decode(token.split('.')[1]!);
    const iat = Math.floor(now / 1000);
    expect(claims).toMatchObject({ iss: 'billing', exp: iat + 30, nbf: iat - 5 });
    expect(claims.jti).toHaveLength(12);
  });

  it('signs ES256 with an EC P-256 key', async () => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const token = await makeSigner(clock, { keySource: { activeKey: () => signingKeyFromKeyObject('ec1', privateKey) } }).sign('http://x');
    expect(decode(token.split('.')[0]!)).toEqual({ alg: 'ES256', kid: 'ec1', typ: 'JWT' });
    expect(Buffer.from(token.split('.')[2]!, 'base64url')).toHaveLength(64); // JWS (r||s), not DER
  });

  it('turns a key source failure into a SigningError', async () => {
    const signer = makeSigner(clock, {
      keySource: {
        activeKey: () => {
          throw new NoActiveKeyError();
        },
      },
    });
    await expect(signer.sign('http://x')).rejects.toThrow(NoActiveKeyError);
    await expect(signer.sign('http://x')).rejects.toBeInstanceOf(SigningError);
  });

  it('a key source plugin that throws anything, or returns no key: 502 unable to sign request: <message>', async () => {
    const cases: Array<[() => never, string]> = [
      [() => { throw new Error('vault sealed'); }, 'jwtproxy: unable to sign request: vault sealed'],
      [() => { throw 'hsm offline'; }, 'jwtproxy: unable to sign request: hsm offline'], // eslint-disable-line no-throw-literal
      [() => { throw null; }, 'jwtproxy: unable to sign request: null'], // eslint-disable-line no-throw-literal
      [() => undefined as never, 'jwtproxy: unable to sign request: the private key source returned no key'],
    ];
    for (const [activeKey, body] of cases) {
      const error = await makeSigner(clock, { keySource: { activeKey } }).sign('http://x').catch((e: unknown) => e);
      expect(error).toBeInstanceOf(SigningError);
      expect(httpAnswerFor(error)).toEqual({ status: 502, body });
    }
  });
});

describe('nonces', () => {
  it('are drawn from [A-Za-z0-9+/] and do not repeat', () => {
    const seen = new Set<string>();
    const counts = new Map<string, number>();
    for (let i = 0; i < 2000; i++) {
      const nonce = generateNonce(32);
      expect(nonce).toMatch(/^[A-Za-z0-9+/]{32}$/);
      seen.add(nonce);
      for (const c of nonce) counts.set(c, (counts.get(c) ?? 0) + 1);
    }
    expect(seen.size).toBe(2000);
    expect(counts.size).toBe(64); // every symbol of the alphabet appears
  });
});

describe('audienceOf', () => {
  it.each([
    ['http://127.0.0.1:8199/a/b?x=1', 'http://127.0.0.1:8199'],
    ['https://example.com/', 'https://example.com'],
    ['http://example.com:80/x', 'http://example.com:80'],
    ['HTTP://user:pw@example.com/x', 'http://example.com'],
    ['http://[::1]:8080/', 'http://[::1]:8080'],
  ])('%s → %s', (url, aud) => {
    expect(audienceOf(url)).toBe(aud);
  });
  it('rejects a relative URL', () => {
    expect(() => audienceOf('/just/a/path')).toThrow(SigningError);
  });
});

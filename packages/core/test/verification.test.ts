import { createHmac, generateKeyPairSync, sign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { interop } from '@jwtproxy/testkit';
import { describe, expect, it } from 'vitest';
import {
  ClaimsVerificationError,
  KeyServerUnavailableError,
  NonceStoreUnavailableError,
  StaticClaimsVerifier,
  VerificationError,
  createRuntime,
  extractToken,
  httpAnswerFor,
  silentLogger,
  staticClaimsVerifier,
  type PublicKeyResolver,
} from '../src/index.js';
import { RequestVerifier } from '../src/index.js';
import { RecordingNonceStore, encodeParts, makeSigner, makeVerifier, privateKey } from './helpers.js';

const vectors = interop.vectors();
const first = vectors[0]!;
const insideValidity = () => (first.claims.iat + 10) * 1000;

/** What the verifier answers for `authorization`: the status and body a client sees. */
async function answerFor(verifier: RequestVerifier, authorization: string | string[] | undefined) {
  try {
    await verifier.verifyRequest(authorization);
    return { status: 200, body: 'ok' };
  } catch (error) {
    expect(error).toBeInstanceOf(VerificationError);
    return httpAnswerFor(error);
  }
}
const refused = (reason: string) => ({ status: 403, body: `jwtproxy: unable to verify request: ${reason}` });

/** Signs arbitrary header/claims with the interop key, for crafted tokens. */
function signed(header: object, claims: object): string {
  const input = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
  return `${input}.${sign('sha256', Buffer.from(input), privateKey).toString('base64url')}`;
}
const nowSeconds = Math.floor(insideValidity() / 1000);
const goodClaims = () => ({ aud: 'http://127.0.0.1:8199', exp: nowSeconds + 240, iat: nowSeconds, iss: 'jwtproxy', jti: `n${Math.random()}`, nbf: nowSeconds - 60 });
const goodHeader = { alg: 'RS256', kid: 'mykey', typ: 'JWT' };

describe('requests signed by the Go jwtproxy', () => {
  it.each(vectors.map((v) => [v.request.url, v] as const))('%s verifies inside its validity', async (_url, vector) => {
    const audience = new URL(vector.request.url).origin;
    const { verifier, nonceStore } = makeVerifier({ clock: () => (vector.claims.nbf + 1) * 1000, audience });
    const verified = await verifier.verifyRequest(vector.authorization);
    expect(verified.claims).toEqual(vector.claims);
    expect(verified.header).toEqual(vector.header);
    expect((nonceStore as RecordingNonceStore).claimed.has(vector.claims.jti)).toBe(true);
  });

  it('verifies at exactly exp and fails with the Go body one second after exp', async () => {
    const atExp = makeVerifier({ clock: () => first.claims.exp * 1000 }).verifier;
    await expect(answerFor(atExp, first.authorization)).resolves.toEqual({ status: 200, body: 'ok' });
    const late = makeVerifier({ clock: () => (first.claims.exp + 1) * 1000 }).verifier;
    await expect(answerFor(late, first.authorization)).resolves.toEqual(refused("Missing or invalid 'exp' claim"));
  });

  it('refuses before nbf', async () => {
    const early = makeVerifier({ clock: () => (first.claims.nbf - 1) * 1000 }).verifier;
    await expect(answerFor(early, first.authorization)).resolves.toEqual(refused("Missing or invalid 'nbf' claim"));
  });
});

describe('the Go response table', () => {
  const verifier = () => makeVerifier({ clock: insideValidity }).verifier;

  it.each([
    ['no token', undefined],
    ['an empty header', ''],
    ['a non-Bearer scheme', 'Token abc'],
    ['garbage', 'Bearer not-a-jwt'],
    ['two segments', 'Bearer a.b'],
    ['bad base64 in the header', 'Bearer @@@.e30.c2ln'],
    ['a header that is not JSON', `Bearer ${Buffer.from('nope').toString('base64url')}.e30.c2ln`],
    ['claims that are not an object', `Bearer ${encodeParts(goodHeader, [1, 2])}`],
    ['missing alg', `Bearer ${encodeParts({ kid: 'mykey' }, goodClaims())}`],
    ['a non-string kid', `Bearer ${encodeParts({ alg: 'RS256', kid: 7 }, goodClaims())}`],
  ])('%s → Could not parse JWT', async (_case, authorization) => {
    await expect(answerFor(verifier(), authorization)).resolves.toEqual(refused('Could not parse JWT'));
  });

  it("no kid → Missing 'kid' claim", async () => {
    await expect(answerFor(verifier(), `Bearer ${signed({ alg: 'RS256', typ: 'JWT' }, goodClaims())}`)).resolves.toEqual(refused("Missing 'kid' claim"));
  });

  it.each([
    ['iss', { iss: undefined }],
    ['iss', { iss: 42 }],
    ['aud', { aud: undefined }],
    ['aud', { aud: 'http://127.0.0.1:9999' }],
    ['aud', { aud: 'https://127.0.0.1:8199' }],
    ['aud', { aud: ['http://127.0.0.1:8199'] }],
    ['exp', { exp: undefined }],
    ['exp', { exp: 'soon' }],
    ['exp', { exp: nowSeconds - 1 }],
    ['nbf', { nbf: undefined }],
    ['nbf', { nbf: nowSeconds + 1 }],
    ['iat', { iat: undefined }],
    ['iat', { iat: nowSeconds + 5 * 60 + 1 }],
    ['jti', { jti: undefined }],
    ['jti', { jti: 5 }],
    ['jti', { jti: '' }],
  ])("%s problem %j → Missing or invalid '%s' claim", async (claim, change) => {
    const claims: Record<string, unknown> = { ...goodClaims(), ...change };
    for (const [k, v] of Object.entries(change)) if (v === undefined) delete claims[k];
    await expect(answerFor(verifier(), `Bearer ${signed(goodHeader, claims)}`)).resolves.toEqual(refused(`Missing or invalid '${claim}' claim`));
  });

  it('compares the audience scheme and host case-insensitively and ignores its path', async () => {
    const claims = { ...goodClaims(), aud: 'HTTP://127.0.0.1:8199/some/path' };
    await expect(answerFor(verifier(), `Bearer ${signed(goodHeader, claims)}`)).resolves.toEqual({ status: 200, body: 'ok' });
  });

  it("exp - iat > max_ttl → Invalid 'exp' claim (too long)", async () => {
    const claims = { ...goodClaims(), exp: nowSeconds + 301, iat: nowSeconds };
    await expect(answerFor(verifier(), `Bearer ${signed(goodHeader, claims)}`)).resolves.toEqual(refused("Invalid 'exp' claim (too long)"));
  });

  it('unknown key → Could not find any matching public key', async () => {
    await expect(answerFor(verifier(), `Bearer ${signed({ ...goodHeader, kid: 'other' }, goodClaims())}`)).resolves.toEqual(
      refused('Could not find any matching public key'),
    );
  });

  it('other key server failure → Unexpected key server error', async () => {
    const failing: PublicKeyResolver = { resolve: () => Promise.reject(new KeyServerUnavailableError()) };
    const v = new RequestVerifier({ audience: 'http://127.0.0.1:8199', maxSkew: 300_000, maxTtl: 300_000, keyResolver: failing, nonceStore: new RecordingNonceStore(), clock: insideValidity });
    await expect(answerFor(v, `Bearer ${signed(goodHeader, goodClaims())}`)).resolves.toEqual(refused('Unexpected key server error'));
  });

  it('bad signature → Invalid JWT signature', async () => {
    const token = signed(goodHeader, goodClaims());
    const tampered = token.slice(0, -4) + (token.endsWith('AAAA') ? 'BBBB' : 'AAAA');
    await expect(answerFor(verifier(), `Bearer ${tampered}`)).resolves.toEqual(refused('Invalid JWT signature'));
  });

  it('a token signed by another key → Invalid JWT signature', async () => {
    const other = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    const input = `${Buffer.from(JSON.stringify(goodHeader)).toString('base64url')}.${Buffer.from(JSON.stringify(goodClaims())).toString('base64url')}`;
    const token = `${input}.${sign('sha256', Buffer.from(input), other).toString('base64url')}`;
    await expect(answerFor(verifier(), `Bearer ${token}`)).resolves.toEqual(refused('Invalid JWT signature'));
  });

  it('static claims verifier → Error verifying claims: …', async () => {
    const { claimsVerifiers } = createRuntime();
    claimsVerifiers.register(staticClaimsVerifier);
    const required = await claimsVerifiers.create({ type: 'static', options: { iss: 'jwtproxy', sub: 'billing' } }, { logger: silentLogger, clock: Date.now, baseDir: '.' });
    const v = makeVerifier({ clock: insideValidity, claimsVerifiers: [required] }).verifier;
    const missing = await answerFor(v, `Bearer ${signed(goodHeader, goodClaims())}`);
    expect(missing).toEqual({ status: 403, body: 'Error verifying claims: Required claim not found: sub' });
    const wrong = await answerFor(v, `Bearer ${signed(goodHeader, { ...goodClaims(), sub: 'payroll' })}`);
    expect(wrong).toEqual({ status: 403, body: 'Error verifying claims: Claim did not have the required value: sub' });
    await expect(answerFor(v, `Bearer ${signed(goodHeader, { ...goodClaims(), sub: 'billing' })}`)).resolves.toEqual({ status: 200, body: 'ok' });
  });

  it('a replayed token → Missing or invalid jti on the second use', async () => {
    const v = verifier();
    const token = `Bearer ${signed(goodHeader, goodClaims())}`;
    await expect(answerFor(v, token)).resolves.toEqual({ status: 200, body: 'ok' });
    await expect(answerFor(v, token)).resolves.toEqual(refused("Missing or invalid 'jti' claim"));
  });

  it('a nonce store that cannot answer fails closed with 503', async () => {
    const v = makeVerifier({ clock: insideValidity, nonceStore: { claim: () => Promise.reject(new NonceStoreUnavailableError()) } }).verifier;
    await expect(answerFor(v, `Bearer ${signed(goodHeader, goodClaims())}`)).resolves.toEqual({
      status: 503,
      body: 'jwtproxy: unable to verify request: Nonce storage unavailable',
    });
  });
});

describe('the fixes over the Go verifier', () => {
  it('refuses alg none even with a valid RS256 signature', async () => {
    const { verifier } = makeVerifier({ clock: insideValidity });
    const token = signed({ alg: 'none', kid: 'mykey', typ: 'JWT' }, goodClaims());
    await expect(answerFor(verifier, `Bearer ${token}`)).resolves.toEqual(refused('Invalid JWT signature'));
    const unsigned = `${token.split('.').slice(0, 2).join('.')}.`;
    await expect(answerFor(verifier, `Bearer ${unsigned}`)).resolves.toEqual(refused('Invalid JWT signature'));
  });

  it('refuses an HMAC token made with the public key as the secret', async () => {
    const { verifier } = makeVerifier({ clock: insideValidity });
    const pem = readFileSync(interop.publicKeyPath);
    const input = `${Buffer.from(JSON.stringify({ ...goodHeader, alg: 'HS256' })).toString('base64url')}.${Buffer.from(JSON.stringify(goodClaims())).toString('base64url')}`;
    const token = `${input}.${createHmac('sha256', pem).update(input).digest('base64url')}`;
    await expect(answerFor(verifier, `Bearer ${token}`)).resolves.toEqual(refused('Invalid JWT signature'));
  });

  it('a forged token does not burn its jti: the genuine token with that jti still passes', async () => {
    const { verifier, nonceStore } = makeVerifier({ clock: insideValidity });
    const claims = goodClaims();
    const genuine = signed(goodHeader, claims);
    const forged = `${genuine.split('.').slice(0, 2).join('.')}.${Buffer.alloc(256, 1).toString('base64url')}`;
    await expect(answerFor(verifier, `Bearer ${forged}`)).resolves.toEqual(refused('Invalid JWT signature'));
    expect((nonceStore as RecordingNonceStore).claimed.has(claims.jti)).toBe(false);
    await expect(answerFor(verifier, `Bearer ${genuine}`)).resolves.toEqual({ status: 200, body: 'ok' });
  });

  it('a token refused by a claims verifier does not burn its jti', async () => {
    const strict = new StaticClaimsVerifier({ sub: 'billing' });
    const { verifier, nonceStore } = makeVerifier({ clock: insideValidity, claimsVerifiers: [strict] });
    const claims = goodClaims();
    await expect(verifier.verifyRequest(`Bearer ${signed(goodHeader, claims)}`)).rejects.toBeInstanceOf(ClaimsVerificationError);
    expect((nonceStore as RecordingNonceStore).claimed.size).toBe(0);
  });
});

describe('a header segment seen before', () => {
  it('is not trusted for a token whose own header differs: each token is checked with its own alg and kid', async () => {
    const { verifier } = makeVerifier({ clock: insideValidity });
    await expect(answerFor(verifier, `Bearer ${signed(goodHeader, goodClaims())}`)).resolves.toEqual({ status: 200, body: 'ok' });
    // Same claims shape, a header without kid: refused as before, not read from the last header.
    const { kid: _kid, ...noKid } = goodHeader;
    const answer = await answerFor(verifier, `Bearer ${signed(noKid, goodClaims())}`);
    expect(answer.status).toBe(403);
    // A header naming another kid: looked up as that kid (unknown here), not as mykey.
    const other = await answerFor(verifier, `Bearer ${signed({ ...goodHeader, kid: 'otherkey' }, goodClaims())}`);
    expect(other.status).toBe(403);
    await expect(answerFor(verifier, `Bearer ${signed(goodHeader, goodClaims())}`)).resolves.toEqual({ status: 200, body: 'ok' });
  });

  it('still refuses bad claims or a bad signature behind a header it knows', async () => {
    const { verifier } = makeVerifier({ clock: insideValidity });
    const good = signed(goodHeader, goodClaims());
    await expect(answerFor(verifier, `Bearer ${good}`)).resolves.toEqual({ status: 200, body: 'ok' });
    const [head] = good.split('.');
    expect((await answerFor(verifier, `Bearer ${head}.bm90LWpzb24.c2ln`)).status).toBe(403);
    const other = signed(goodHeader, goodClaims()).split('.');
    expect(await answerFor(verifier, `Bearer ${other[0]}.${other[1]}.${good.split('.')[2]}`)).toEqual(refused('Invalid JWT signature'));
  });
});

describe('token extraction', () => {
  it('reads Bearer case-insensitively', () => {
    expect(extractToken('bEaReR abc.def.ghi')).toBe('abc.def.ghi');
  });
  it('reads the password of Basic, any user', () => {
    expect(extractToken(`Basic ${Buffer.from('anyone:abc.def.ghi').toString('base64')}`)).toBe('abc.def.ghi');
  });
  it("finds the signer's Bearer after a client's own Authorization header", () => {
    expect(extractToken(['Basic dXNlcjpwYXNz', 'Bearer the.signer.token'])).toBe('the.signer.token');
  });
  it('reads every spacing and case of one header as the Bearer rule does (the fast path and the regex agree)', () => {
    for (const value of ['Bearer a.b.c', 'bearer a.b.c', 'BEARER a.b.c  ', '  Bearer a.b.c', 'Bearer   a.b.c', 'Bearer\ta.b.c', 'Bearer \u00a0a.b.c', 'Bearer a b']) {
      const expected = /^bearer\s+(.+)$/i.exec(value.trim())![1]!.trim();
      expect(extractToken(value)).toBe(expected);
    }
    expect(() => extractToken('Bearer ')).toThrow();
    expect(() => extractToken('Bearerx a.b.c')).toThrow();
  });
  it('verifies a token the signer appended after a client header', async () => {
    const { verifier } = makeVerifier({ clock: insideValidity });
    const bearer = await makeSigner(insideValidity).authorizationFor('http://127.0.0.1:8199');
    await expect(answerFor(verifier, ['Basic dXNlcjpwYXNz', bearer])).resolves.toEqual({ status: 200, body: 'ok' });
  });
});

describe('errors from plugins: each seam gives its documented answer (as Go), never a 500', () => {
  const token = () => `Bearer ${signed(goodHeader, goodClaims())}`;
  const withKeyServer = (resolve: PublicKeyResolver['resolve']) =>
    new RequestVerifier({ audience: 'http://127.0.0.1:8199', maxSkew: 300_000, maxTtl: 300_000, keyResolver: { resolve }, nonceStore: new RecordingNonceStore(), clock: insideValidity });

  it('a claims verifier that throws or rejects a plain Error refuses: 403 Error verifying claims: <message>', async () => {
    const throwing = { verify: () => { throw new Error('issuer not allowed: billing'); } };
    const rejecting = { verify: async () => Promise.reject(new TypeError('policy says no')) };
    const stringly = { verify: () => { throw 'plain string'; } }; // eslint-disable-line no-throw-literal
    for (const [plugin, body] of [
      [throwing, 'Error verifying claims: issuer not allowed: billing'],
      [rejecting, 'Error verifying claims: policy says no'],
      [stringly, 'Error verifying claims: plain string'],
    ] as const) {
      const nonceStore = new RecordingNonceStore();
      const v = makeVerifier({ clock: insideValidity, claimsVerifiers: [plugin], nonceStore }).verifier;
      await expect(answerFor(v, token())).resolves.toEqual({ status: 403, body });
      expect(nonceStore.claimed.size).toBe(0); // refused before the jti is claimed
    }
  });

  it('a claims verifier error keeps its cause and is not a dependency failure', async () => {
    const cause = new Error('issuer not allowed: billing');
    const v = makeVerifier({ clock: insideValidity, claimsVerifiers: [{ verify: () => Promise.reject(cause) }] }).verifier;
    const error = await v.verifyRequest(token()).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ClaimsVerificationError);
    expect((error as VerificationError).cause).toBe(cause);
    expect((error as VerificationError).dependencyFailure).toBe(false);
  });

  it('a key server that throws anything but a VerificationError: 403 Unexpected key server error, a dependency failure', async () => {
    for (const resolve of [
      () => Promise.reject(new Error('connect ECONNREFUSED 10.0.0.1:443')),
      () => {
        throw new Error('sync failure');
      },
      () => Promise.reject(null), // eslint-disable-line prefer-promise-reject-errors
      () => Promise.resolve(undefined as never), // answered without a key
    ]) {
      const v = withKeyServer(resolve);
      await expect(answerFor(v, token())).resolves.toEqual(refused('Unexpected key server error'));
      const error = await v.verifyRequest(token()).catch((e: unknown) => e);
      expect((error as VerificationError).dependencyFailure).toBe(true);
    }
  });

  it("a key server's typed errors keep their answers, also from another copy of core (by code)", async () => {
    const { KeyNotFoundError } = await import('../src/index.js');
    await expect(answerFor(withKeyServer(() => Promise.reject(new KeyNotFoundError())), token())).resolves.toEqual(refused('Could not find any matching public key'));
    const foreign = Object.assign(new Error('Could not find any matching public key'), { code: 'ERR_KEY_NOT_FOUND' });
    await expect(answerFor(withKeyServer(() => Promise.reject(foreign)), token())).resolves.toEqual(refused('Could not find any matching public key'));
    await expect(answerFor(withKeyServer(() => Promise.reject(new NonceStoreUnavailableError())), token())).resolves.toEqual({
      status: 503,
      body: 'jwtproxy: unable to verify request: Nonce storage unavailable',
    });
  });

  it('a nonce store that throws anything: 503 Nonce storage unavailable (fail closed); a non-boolean answer is a refusal', async () => {
    for (const claim of [() => Promise.reject(new Error('READONLY You can not write against a read only replica')), () => { throw new Error('sync'); }]) {
      const v = makeVerifier({ clock: insideValidity, nonceStore: { claim } }).verifier;
      await expect(answerFor(v, token())).resolves.toEqual({ status: 503, body: 'jwtproxy: unable to verify request: Nonce storage unavailable' });
    }
    const v = makeVerifier({ clock: insideValidity, nonceStore: { claim: () => Promise.resolve('OK' as unknown as boolean) } }).verifier;
    await expect(answerFor(v, token())).resolves.toEqual(refused("Missing or invalid 'jti' claim"));
  });

  it('a synchronous claims verifier costs no promise: verification of a token takes the same turns with or without it', async () => {
    // Counts the microtask turns until verifyRequest settles: a static verifier adds none.
    const turns = async (claimsVerifiers: { verify(): void }[]) => {
      const v = makeVerifier({ clock: insideValidity, claimsVerifiers }).verifier;
      let settled = false;
      void v.verifyRequest(token()).then(() => (settled = true));
      let count = 0;
      while (!settled && count < 100) {
        await Promise.resolve();
        count++;
      }
      return count;
    };
    const none = await turns([]);
    expect(await turns([{ verify: () => undefined }, { verify: () => undefined }])).toBe(none);
  });
});

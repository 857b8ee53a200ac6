/**
 * The key registry protocol, as a test suite that runs against any registry: the Go tool's
 * jwt/keyserver/keyregistry/README.md, with Quay's answers where it is loose. Approval is
 * outside the protocol, so the caller supplies it. Every test uses its own service name, so
 * the suite can run against a shared registry.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { call, deleteKey, ecKey, goStyle, keyUrl, putKey, rawCall, registryToken, rsaKey, sleep, uniqueName, withPadding, type PublisherKey } from './support.js';

export interface ConformanceTarget {
  /** e.g. `http://127.0.0.1:8081` (no trailing slash). */
  baseUrl: string;
  /** The `aud` publishers must sign; default the origin of baseUrl. */
  audience?: string;
  approve(service: string, kid: string): Promise<void>;
}

const nowSeconds = () => Math.floor(Date.now() / 1000);

export function keyRegistryConformanceSuite(getTarget: () => ConformanceTarget): void {
  let base = '';
  let aud = '';
  let approve: ConformanceTarget['approve'];
  // RSA key generation is slow: make a pool once, take a fresh key per use.
  const pool: PublisherKey[] = [];
  const fresh = (): PublisherKey => {
    const key = pool.pop();
    if (!key) throw new Error('key pool exhausted; raise its size');
    return { ...key, kid: uniqueName('kid') };
  };

  beforeAll(async () => {
    const target = getTarget();
    base = target.baseUrl.replace(/\/+$/, '');
    aud = target.audience ?? new URL(base).origin;
    approve = target.approve.bind(target);
    pool.push(...(await Promise.all(Array.from({ length: 48 }, () => rsaKey()))));
  }, 120_000);

  /** Publishes a self-signed key and approves it. */
  async function approvedKey(service: string, query?: Record<string, string | number>): Promise<PublisherKey> {
    const key = fresh();
    const answer = await putKey(base, aud, service, key, query ? { query } : {});
    expect(answer.status, answer.text).toBe(202);
    await approve(service, key.kid);
    return key;
  }

  describe('key registry protocol conformance', () => {
    it('lists no keys (200) for a service it has never seen', async () => {
      const answer = await call(`${base}/services/${uniqueName('svc')}/keys`);
      expect(answer.status).toBe(200);
      expect(answer.json()).toEqual({ keys: [] });
    });

    it('answers 404 for an unknown key', async () => {
      expect((await call(keyUrl(base, uniqueName('svc'), 'nosuchkey'))).status).toBe(404);
    });

    it('accepts a self-signed new key with 202, answers 409 until it is approved, then 200 with the JWK', async () => {
      const service = uniqueName('svc');
      const key = fresh();
      const published = await putKey(base, aud, service, key, { query: { expiration: nowSeconds() + 7200, rotation: 3600 } });
      expect(published.status, published.text).toBe(202);
      expect((await call(keyUrl(base, service, key.kid))).status).toBe(409);
      expect((await call(`${base}/services/${service}/keys`)).json()).toEqual({ keys: [] });

      await approve(service, key.kid);
      const fetched = await call(keyUrl(base, service, key.kid));
      expect(fetched.status).toBe(200);
      expect(fetched.json()).toMatchObject({ kty: 'RSA', n: key.jwk.n, e: key.jwk.e });
      const maxAge = Number(/max-age=(\d+)/.exec(fetched.headers.get('cache-control') ?? '')?.[1]);
      expect(maxAge).toBeGreaterThan(7200 - 30);
      expect(maxAge).toBeLessThanOrEqual(7200);

      const listed = (await call(`${base}/services/${service}/keys`)).json() as { keys: Array<Record<string, string>> };
      expect(listed.keys).toHaveLength(1);
      expect(listed.keys[0]).toMatchObject({ kid: key.kid, n: key.jwk.n });
    });

    it('caps Cache-Control max-age at one day', async () => {
      const service = uniqueName('svc');
      const far = await approvedKey(service, { expiration: nowSeconds() + 3 * 86_400 });
      expect((await call(keyUrl(base, service, far.kid))).headers.get('cache-control')).toBe('max-age=86400');
      const never = await approvedKey(service, {});
      expect((await call(keyUrl(base, service, never.kid))).headers.get('cache-control')).toBe('max-age=86400');
    });

    // The Go tool (go-jose/go-oidc) writes JWK members base64url WITH `=` padding, and its kid is a
    // padded thumbprint, percent-encoded in the path (%3D). The served JWK may be padded or not
    // (RFC 7515 says not); whatever it is must decode to the same key.
    describe('padded JWKs, as the Go tool publishes them', () => {
      const decoded = (value: string) => Buffer.from(value.replace(/=+$/, ''), 'base64url');

      it('accepts padded members and a padded kid sent as %3D: 202, 409 until approved, then 200 with the same key', async () => {
        const service = uniqueName('svc');
        const key = goStyle(fresh());
        expect(key.kid).toMatch(/^[\w-]{43}=$/);
        expect(key.jwk.n).toMatch(/=$/);
        const published = await putKey(base, aud, service, key);
        expect(published.status, published.text).toBe(202);
        expect(keyUrl(base, service, key.kid)).toMatch(/%3D$/);
        expect((await call(keyUrl(base, service, key.kid))).status).toBe(409);
        await approve(service, key.kid);
        const fetched = await call(keyUrl(base, service, key.kid));
        expect(fetched.status).toBe(200);
        expect(fetched.headers.get('cache-control')).toMatch(/^max-age=\d+$/);
        const served = fetched.json() as Record<string, string>;
        expect(served).toMatchObject({ kty: 'RSA', kid: key.kid });
        expect(decoded(served.n!)).toEqual(decoded(key.jwk.n!));
        expect(decoded(served.e!)).toEqual(decoded(key.jwk.e!));
        const listed = (await call(`${base}/services/${service}/keys`)).json() as { keys: Array<Record<string, string>> };
        expect(listed.keys.map((jwk) => jwk.kid)).toEqual([key.kid]);
      });

      it('treats the same key sent padded and unpadded as one key (a refresh, not a conflict)', async () => {
        const service = uniqueName('svc');
        const plain = fresh();
        const padded = goStyle(plain);
        expect((await putKey(base, aud, service, padded)).status).toBe(202);
        const unpadded = { ...padded, jwk: { ...padded.jwk, n: plain.jwk.n!, e: plain.jwk.e! } };
        expect((await putKey(base, aud, service, unpadded)).status).toBe(202);
        await approve(service, padded.kid);
        expect((await putKey(base, aud, service, padded)).status).toBe(200);
      });

      it('rotates from a padded key to a padded key (200, signed by the approved key) and deletes by the %3D kid (204)', async () => {
        const service = uniqueName('svc');
        const old = goStyle(fresh());
        expect((await putKey(base, aud, service, old)).status).toBe(202);
        await approve(service, old.kid);
        const next = goStyle(fresh());
        const rotated = await putKey(base, aud, service, next, { signer: old });
        expect(rotated.status, rotated.text).toBe(200);
        expect((await call(keyUrl(base, service, next.kid))).status).toBe(200);
        expect((await call(keyUrl(base, service, old.kid))).status).toBe(404);
        expect((await deleteKey(base, aud, service, next.kid, next)).status).toBe(204);
        expect((await call(keyUrl(base, service, next.kid))).status).toBe(404);
      });

      it('accepts padded EC members (x, y)', async () => {
        const service = uniqueName('svc');
        const key = await ecKey('P-256');
        const padded = { ...key, jwk: { ...key.jwk, x: withPadding(key.jwk.x!), y: withPadding(key.jwk.y!) } };
        expect(padded.jwk.x).toMatch(/=$/);
        expect((await putKey(base, aud, service, padded)).status).toBe(202);
        await approve(service, key.kid);
        const served = (await call(keyUrl(base, service, key.kid))).json() as Record<string, string>;
        expect(decoded(served.x!)).toEqual(decoded(key.jwk.x!));
      });
    });

    it('serves EC P-256 keys (ES256)', async () => {
      const service = uniqueName('svc');
      const key = await ecKey('P-256');
      expect((await putKey(base, aud, service, key)).status).toBe(202);
      await approve(service, key.kid);
      const fetched = await call(keyUrl(base, service, key.kid));
      expect(fetched.status).toBe(200);
      expect(fetched.json()).toMatchObject({ kty: 'EC', crv: 'P-256', x: key.jwk.x, y: key.jwk.y });
    });

    it('rotates: a key signed by an approved key answers 200, takes over at once, and the signing key is dropped', async () => {
      const service = uniqueName('svc');
      const old = await approvedKey(service);
      const next = fresh();
      const rotated = await putKey(base, aud, service, next, { signer: old });
      expect(rotated.status, rotated.text).toBe(200);
      expect((await call(keyUrl(base, service, next.kid))).status).toBe(200);
      expect((await call(keyUrl(base, service, old.kid))).status).toBe(404);
      const listed = (await call(`${base}/services/${service}/keys`)).json() as { keys: Array<{ kid: string }> };
      expect(listed.keys.map((k) => k.kid)).toEqual([next.kid]);
      // The dropped key can no longer sign a rotation.
      expect((await putKey(base, aud, service, fresh(), { signer: old })).status).toBe(403);
    });

    it('refuses with 403 a rotation signed by a pending key, an unknown key, or a key of another service', async () => {
      const service = uniqueName('svc');
      const pending = fresh();
      expect((await putKey(base, aud, service, pending)).status).toBe(202);
      expect((await putKey(base, aud, service, fresh(), { signer: pending })).status).toBe(403);
      expect((await putKey(base, aud, service, fresh(), { signer: fresh() })).status).toBe(403);
      const otherService = uniqueName('svc');
      const foreign = await approvedKey(otherService);
      const token = await registryToken(foreign, { iss: service, aud });
      expect((await putKey(base, aud, service, fresh(), { token })).status).toBe(403);
    });

    it('refuses with 403 a "self-signed" key whose token was signed by a different key', async () => {
      const service = uniqueName('svc');
      const key = fresh();
      const impostor = fresh();
      const token = await registryToken(impostor, { iss: service, aud, kid: key.kid });
      expect((await putKey(base, aud, service, key, { token })).status).toBe(403);
      expect((await call(keyUrl(base, service, key.kid))).status).toBe(404);
    });

    it('refuses with 403 a token whose alg is not the one the key is for', async () => {
      const service = uniqueName('svc');
      const key = fresh();
      const token = await registryToken(key, { iss: service, aud, alg: 'PS256' });
      expect((await putKey(base, aud, service, key, { token })).status).toBe(403);
    });

    it('refuses with 400 tokens with a bad iss, aud, exp, nbf, iat or jti', async () => {
      const service = uniqueName('svc');
      const now = nowSeconds();
      const cases: Array<[string, Parameters<typeof registryToken>[1]]> = [
        ['wrong iss', { iss: uniqueName('other'), aud }],
        ['wrong aud', { iss: service, aud: 'https://not-this-registry.example' }],
        ['expired', { iss: service, aud, iat: now - 3600, nbf: now - 3600, exp: now - 1200 }],
        ['not yet valid', { iss: service, aud, nbf: now + 1200 }],
        ['issued in the future', { iss: service, aud, iat: now + 1200, exp: now + 1500 }],
        ['no exp', { iss: service, aud, exp: null }],
        ['no jti', { iss: service, aud, jti: null }],
        ['lives for days', { iss: service, aud, exp: now + 5 * 86_400 }],
      ];
      for (const [name, options] of cases) {
        const key = fresh();
        const answer = await putKey(base, aud, service, key, { token: await registryToken(key, options) });
        expect(answer.status, name).toBe(400);
        expect((await call(keyUrl(base, service, key.kid))).status, name).toBe(404);
      }
    });

    it('refuses a replayed publishing token (jti used twice) with 400', async () => {
      const service = uniqueName('svc');
      const key = fresh();
      const token = await registryToken(key, { iss: service, aud });
      expect((await putKey(base, aud, service, key, { token })).status).toBe(202);
      const again = await putKey(base, aud, service, key, { token });
      expect(again.status).toBe(400);
      expect(again.text).toMatch(/jti/);
    });

    it('refuses malformed and unacceptable JWKs with 400', async () => {
      const service = uniqueName('svc');
      const weak = await rsaKey(1024);
      const p384 = await ecKey('P-384');
      expect((await putKey(base, aud, service, weak)).status, 'RSA 1024').toBe(400);
      expect((await putKey(base, aud, service, p384)).status, 'EC P-384').toBe(400);
      const key = fresh();
      const bodies: Array<[string, string]> = [
        ['not JSON', '{"kty":'],
        ['an array', '[]'],
        ['no n', JSON.stringify({ kty: 'RSA', e: key.jwk.e })],
        ['kty oct', JSON.stringify({ kty: 'oct', k: 'c2VjcmV0' })],
        ['private key', JSON.stringify((key.privateKey.export({ format: 'jwk' }) as object))],
        ['n not base64url', JSON.stringify({ kty: 'RSA', n: '!!!', e: 'AQAB' })],
        ['other kid', JSON.stringify({ ...key.jwk, kid: 'another' })],
      ];
      for (const [name, body] of bodies) {
        const answer = await putKey(base, aud, service, key, { body });
        expect(answer.status, name).toBe(400);
        expect(answer.text.length, name).toBeGreaterThan(0);
      }
    });

    it('refuses with 400 a PUT without a Bearer token or with a garbage one, and bad query values', async () => {
      const service = uniqueName('svc');
      const key = fresh();
      const noToken = await call(keyUrl(base, service, key.kid), { method: 'PUT', body: JSON.stringify(key.jwk), headers: { 'content-type': 'application/json' } });
      expect(noToken.status).toBe(400);
      expect((await putKey(base, aud, service, key, { token: 'not.a.jwt' })).status).toBe(400);
      expect((await putKey(base, aud, service, key, { query: { expiration: 'tomorrow' } })).status).toBe(400);
      expect((await putKey(base, aud, service, key, { query: { expiration: nowSeconds() - 10 } })).status).toBe(400);
      expect((await putKey(base, aud, service, key, { query: { rotation: '-5' } })).status).toBe(400);
    });

    it('refuses with 4xx an oversize body', async () => {
      const service = uniqueName('svc');
      const key = fresh();
      const body = JSON.stringify({ ...key.jwk, padding: 'x'.repeat(2 * 1024 * 1024) });
      const answer = await putKey(base, aud, service, key, { body }).catch((error: unknown) => ({ status: 0, error }));
      // Some clients see the connection closed while still sending; either way never a 2xx or 5xx.
      if (answer.status !== 0) expect(answer.status).toBe(413);
      expect((await call(`${base}/services/${service}/keys`)).status).toBe(200);
    });

    it('refuses odd characters and ".." in service or kid with 400', async () => {
      const key = fresh();
      const cases = [['..', 'k'], ['svc', '..'], ['%2E%2E', 'k'], ['svc', '%2e%2E'], ['a%2Fb', 'k'], ['svc', 'a%00b'], ['sp%20ace', 'k'], ['svc', '..%2F..%2Fetc'], ['%E2%98%83', 'k'], ['svc', '%zz'], ['.hidden', 'k']];
      for (const [service, kid] of cases) {
        const where = `/services/${service}/keys/${kid}`;
        let iss = service!;
        try {
          iss = decodeURIComponent(service!);
        } catch {}
        const token = await registryToken(key, { iss, aud });
        const answer = await rawCall(base, 'PUT', where, { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, JSON.stringify(key.jwk));
        expect(answer.status, `PUT ${where}`).toBe(400);
        expect(answer.text, `PUT ${where}`).not.toBe('');
        expect((await rawCall(base, 'GET', where)).status, `GET ${where}`).toBe(400);
        expect((await rawCall(base, 'DELETE', where, { authorization: `Bearer ${token}` })).status, `DELETE ${where}`).toBe(400);
      }
      expect((await rawCall(base, 'GET', '/services/../keys')).status).toBe(400);
    });

    it('deletes a key signed by itself (204), even while pending; then answers 404', async () => {
      const service = uniqueName('svc');
      const pending = fresh();
      expect((await putKey(base, aud, service, pending)).status).toBe(202);
      expect((await deleteKey(base, aud, service, pending.kid, pending)).status).toBe(204);
      expect((await call(keyUrl(base, service, pending.kid))).status).toBe(404);

      const approved = await approvedKey(service);
      expect((await deleteKey(base, aud, service, approved.kid, approved)).status).toBe(204);
      expect((await call(keyUrl(base, service, approved.kid))).status).toBe(404);
    });

    it('deletes a key signed by another approved key of the service (204)', async () => {
      const service = uniqueName('svc');
      const admin = await approvedKey(service);
      const other = fresh();
      expect((await putKey(base, aud, service, other)).status).toBe(202);
      expect((await deleteKey(base, aud, service, other.kid, admin)).status).toBe(204);
      expect((await call(keyUrl(base, service, other.kid))).status).toBe(404);
      expect((await call(keyUrl(base, service, admin.kid))).status).toBe(200);
    });

    it('refuses with 403 a delete signed by a pending key or by a key of another service', async () => {
      const service = uniqueName('svc');
      const target = await approvedKey(service);
      const pending = fresh();
      expect((await putKey(base, aud, service, pending)).status).toBe(202);
      expect((await deleteKey(base, aud, service, target.kid, pending)).status).toBe(403);
      const foreign = await approvedKey(uniqueName('svc'));
      expect((await deleteKey(base, aud, service, target.kid, foreign, await registryToken(foreign, { iss: service, aud }))).status).toBe(403);
      expect((await call(keyUrl(base, service, target.kid))).status).toBe(200);
    });

    it('refuses with 400 a delete without a token, and answers 404 for a self-signed delete of an unknown key', async () => {
      const service = uniqueName('svc');
      const key = fresh();
      expect((await call(keyUrl(base, service, key.kid), { method: 'DELETE' })).status).toBe(400);
      expect((await deleteKey(base, aud, service, key.kid, key)).status).toBe(404);
    });

    it('answers 403 for an expired key, leaves it out of the list, and shrinks max-age toward expiry', async () => {
      const service = uniqueName('svc');
      const expiration = nowSeconds() + 3;
      const key = await approvedKey(service, { expiration });
      const fresh200 = await call(keyUrl(base, service, key.kid));
      expect(fresh200.status).toBe(200);
      const maxAge = Number(/max-age=(\d+)/.exec(fresh200.headers.get('cache-control') ?? '')?.[1]);
      expect(maxAge).toBeLessThanOrEqual(3);
      expect(maxAge).toBeGreaterThanOrEqual(0);
      await sleep(expiration * 1000 - Date.now() + 250);
      expect((await call(keyUrl(base, service, key.kid))).status).toBe(403);
      expect((await call(`${base}/services/${service}/keys`)).json()).toEqual({ keys: [] });
      // An expired key cannot sign a rotation either.
      expect((await putKey(base, aud, service, fresh(), { signer: key })).status).toBe(403);
    });
  });
}

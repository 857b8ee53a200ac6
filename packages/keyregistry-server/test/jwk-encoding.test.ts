/**
 * Issue 13: JWK members arrive base64url with or without `=` padding and are stored and served
 * without it (RFC 7515 §2), the one form every verifier reads: go-jose (Go's RawURLEncoding)
 * refuses padding; go-oidc (the Go jwtproxy verifier) and Node accept either. Anything that is
 * not base64url, or padded wrongly, is still refused.
 */
import { createPublicKey } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyRegistryAdminClient, MemoryKeyStore, startKeyRegistryServer, type RunningKeyRegistry } from '../src/index.js';
import { call, goJoseDecode, goStyle, keyUrl, putKey, rsaKey, uniqueName, withPadding, type PublisherKey } from './support.js';

const aud = 'http://registry.test';
const adminToken = 'jwk-encoding-admin-token-0123456789';
let running: RunningKeyRegistry;
let admin: KeyRegistryAdminClient;
let rsa: PublisherKey;

beforeAll(async () => {
  running = await startKeyRegistryServer({ listenAddr: '127.0.0.1:0', publicUrl: aud, store: new MemoryKeyStore(), adminToken });
  admin = new KeyRegistryAdminClient({ url: running.address, token: adminToken });
  rsa = await rsaKey();
});
afterAll(() => running?.stop());

describe('JWK member encoding', () => {
  it('serves a key published padded without padding: go-jose, go-oidc and Node all read it as the published key', async () => {
    const service = uniqueName('svc');
    const key = goStyle(rsa);
    expect((await putKey(running.address, aud, service, key)).status).toBe(202);
    await admin.approve(service, key.kid);
    const served = (await call(keyUrl(running.address, service, key.kid))).json() as Record<string, string>;
    expect(served).toEqual({ kty: 'RSA', n: rsa.jwk.n, e: rsa.jwk.e, kid: key.kid, alg: 'RS256', use: 'sig' });
    expect(goJoseDecode(served.n!)).toEqual(Buffer.from(rsa.jwk.n!, 'base64url'));
    expect(() => goJoseDecode(key.jwk.n!)).toThrow(/go-jose refuses/);
    const node = createPublicKey({ key: { kty: 'RSA', n: served.n!, e: served.e! }, format: 'jwk' });
    expect(node.export({ format: 'jwk' })).toMatchObject({ n: rsa.jwk.n, e: rsa.jwk.e });
    // The admin listing shows the padded kid and the stored (unpadded) JWK.
    expect(await admin.get(service, key.kid)).toMatchObject({ kid: key.kid, state: 'approved', jwk: { n: rsa.jwk.n } });
  });

  it('refuses members that are not base64url or whose padding is wrong (400 invalid_jwk)', async () => {
    const service = uniqueName('svc');
    const n = rsa.jwk.n!;
    const bad: Array<[string, Record<string, string>]> = [
      ['padding where none is due', { e: 'AQAB=' }],
      // A 2048-bit modulus is 256 bytes: 342 characters, which take "==".
      ['one "=" where two are due', { n: `${n}=` }],
      ['three "="', { n: `${n}===` }],
      ['"=" inside', { n: `${n.slice(0, 10)}=${n.slice(10)}` }],
      ['standard base64 alphabet', { n: `+${n.slice(1)}` }],
      ['white space', { n: ` ${n}` }],
      ['a length no encoding has', { e: 'AQABA' }],
    ];
    expect(withPadding(n)).toBe(`${n}==`);
    for (const [name, members] of bad) {
      const answer = await putKey(running.address, aud, service, { ...rsa, jwk: { ...rsa.jwk, ...members } });
      expect(answer.status, name).toBe(400);
      expect(answer.json(), name).toMatchObject({ error: 'invalid_jwk' });
    }
  });
});

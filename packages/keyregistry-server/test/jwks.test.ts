import { afterEach, describe, expect, it } from 'vitest';
import { KeyRegistryAdminClient, MemoryKeyStore, keyRegistryOptionsFrom, startKeyRegistryServer, type KeyRegistryServerOptions, type RunningKeyRegistry } from '../src/index.js';
import { call, ecKey, putKey, rawCall, rsaKey, uniqueName } from './support.js';

const aud = 'http://registry.test';
const adminToken = 'admin-test-token-0123456789abcdef';
const running: RunningKeyRegistry[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((server) => server.stop()));
});

let offsetMs = 0;
afterEach(() => void (offsetMs = 0));

async function start(options: KeyRegistryServerOptions = {}): Promise<{ server: RunningKeyRegistry; admin: KeyRegistryAdminClient }> {
  const server = await startKeyRegistryServer({
    listenAddr: '127.0.0.1:0', publicUrl: aud, store: new MemoryKeyStore({ clock: () => Date.now() + offsetMs }), adminToken,
    clock: () => Date.now() + offsetMs, ...options,
  });
  running.push(server);
  return { server, admin: new KeyRegistryAdminClient({ url: server.address, token: adminToken }) };
}

interface JwkSet {
  keys: Array<Record<string, string>>;
}
const kidsOf = (answer: { json(): unknown }) => (answer.json() as JwkSet).keys.map((key) => key.kid).sort();
const inFuture = (seconds: number) => ({ expiration: Math.floor(Date.now() / 1000) + seconds, rotation: 60 });

describe('JWKS out', () => {
  it('lists approved, unexpired keys only: never pending, revoked or expired ones; ?service filters; the per-service route', async () => {
    const { server, admin } = await start();
    const [svcA, svcB] = [uniqueName('svca'), uniqueName('svcb')];
    const [approvedRsa, approvedEc, pending, revoked, expiring, otherService] = await Promise.all([rsaKey(), ecKey(), ecKey(), ecKey(), ecKey(), ecKey()]);
    for (const key of [approvedRsa, approvedEc, pending, revoked]) expect((await putKey(server.address, aud, svcA, key)).status).toBe(202);
    expect((await putKey(server.address, aud, svcA, expiring, { query: inFuture(60) })).status).toBe(202);
    expect((await putKey(server.address, aud, svcB, otherService)).status).toBe(202);
    for (const kid of [approvedRsa.kid, approvedEc.kid, revoked.kid, expiring.kid]) await admin.approve(svcA, kid);
    await admin.approve(svcB, otherService.kid);
    await admin.revoke(svcA, revoked.kid);

    const all = await call(`${server.address}/.well-known/jwks.json`);
    expect(all.status).toBe(200);
    expect(all.headers.get('content-type')).toBe('application/jwk-set+json');
    expect(kidsOf(all)).toEqual([approvedRsa.kid, approvedEc.kid, expiring.kid, otherService.kid].sort());
    const rsa = (all.json() as JwkSet).keys.find((key) => key.kid === approvedRsa.kid)!;
    expect(rsa).toEqual({ kty: 'RSA', kid: approvedRsa.kid, use: 'sig', alg: 'RS256', n: approvedRsa.jwk.n, e: approvedRsa.jwk.e });
    const ec = (all.json() as JwkSet).keys.find((key) => key.kid === approvedEc.kid)!;
    expect(ec).toEqual({ kty: 'EC', kid: approvedEc.kid, use: 'sig', alg: 'ES256', crv: 'P-256', x: approvedEc.jwk.x, y: approvedEc.jwk.y });
    for (const key of (all.json() as JwkSet).keys) for (const value of Object.values(key)) expect(value).not.toMatch(/[=+/]/);

    const onlyA = await call(`${server.address}/.well-known/jwks.json?service=${svcA}`);
    expect(kidsOf(onlyA)).toEqual([approvedRsa.kid, approvedEc.kid, expiring.kid].sort());
    const perService = await call(`${server.address}/services/${svcB}/jwks.json`);
    expect(perService.status).toBe(200);
    expect(kidsOf(perService)).toEqual([otherService.kid]);
    expect(kidsOf(await call(`${server.address}/services/${uniqueName('unknown')}/jwks.json`))).toEqual([]);

    // The key with an expiration leaves the set once it expires.
    offsetMs = 61_000;
    expect(kidsOf(await call(`${server.address}/services/${svcA}/jwks.json`))).toEqual([approvedRsa.kid, approvedEc.kid].sort());
    // Existing routes are unchanged.
    expect((await call(`${server.address}/services/${svcA}/keys`)).status).toBe(200);
  });

  it('Cache-Control max-age: the configured value, never past the soonest expiry listed; ETag answers 304', async () => {
    const { server, admin } = await start({ jwksMaxAgeMs: 120_000 });
    const service = uniqueName('svc');
    const [lasting, shortLived] = await Promise.all([ecKey(), ecKey()]);
    await putKey(server.address, aud, service, lasting, { query: inFuture(3600) });
    await admin.approve(service, lasting.kid);
    const first = await call(`${server.address}/services/${service}/jwks.json`);
    expect(first.headers.get('cache-control')).toBe('max-age=120');
    const etag = first.headers.get('etag')!;
    expect(etag).toMatch(/^"[A-Za-z0-9_-]+"$/);

    const again = await call(`${server.address}/services/${service}/jwks.json`, { headers: { 'if-none-match': `"other", ${etag}` } });
    expect(again.status).toBe(304);
    expect(again.text).toBe('');
    expect(again.headers.get('cache-control')).toBe('max-age=120');

    await putKey(server.address, aud, service, shortLived, { query: inFuture(45) });
    await admin.approve(service, shortLived.kid);
    const changed = await call(`${server.address}/services/${service}/jwks.json`, { headers: { 'if-none-match': etag } });
    expect(changed.status).toBe(200);
    expect(changed.headers.get('etag')).not.toBe(etag);
    const maxAge = Number(/^max-age=(\d+)$/.exec(changed.headers.get('cache-control')!)![1]);
    expect(maxAge).toBeGreaterThanOrEqual(40);
    expect(maxAge).toBeLessThanOrEqual(45);

    const defaults = await start();
    expect((await call(`${defaults.server.address}/.well-known/jwks.json`)).headers.get('cache-control')).toBe('max-age=300');
  });

  it('caps the keys listed (jwks_max_keys): the newest are kept', async () => {
    const { server } = await start({ jwksMaxKeys: 2, autoApprove: ['auto-*'] });
    const service = uniqueName('auto');
    const keys = [await ecKey(), await ecKey(), await ecKey()];
    for (const key of keys) {
      expect((await putKey(server.address, aud, service, key)).status).toBe(202);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    expect(kidsOf(await call(`${server.address}/.well-known/jwks.json`))).toEqual([keys[1]!.kid, keys[2]!.kid].sort());
  });

  it('refuses what is not a JWK set request: bad service names 400, other methods 405', async () => {
    const { server } = await start();
    expect((await call(`${server.address}/.well-known/jwks.json?service=..`)).status).toBe(400);
    expect((await rawCall(server.address, 'GET', '/services/%2E%2E/jwks.json')).status).toBe(400);
    const post = await call(`${server.address}/.well-known/jwks.json`, { method: 'POST', body: '{}' });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET');
    expect((await rawCall(server.address, 'HEAD', '/.well-known/jwks.json')).status).toBe(200);
  });

  it('reads jwks_max_age and jwks_max_keys from the YAML block', () => {
    const options = keyRegistryOptionsFrom({ storage: { type: 'memory' }, jwks_max_age: '90s', jwks_max_keys: 50 }, '/');
    expect(options).toMatchObject({ jwksMaxAgeMs: 90_000, jwksMaxKeys: 50 });
    expect(() => keyRegistryOptionsFrom({ jwks_max_keys: 0 }, '/')).toThrow(/jwks_max_keys/);
  });
});

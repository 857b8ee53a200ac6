import { afterEach, describe, expect, it } from 'vitest';
import { KeyRegistryAdminClient, KeyRegistryAdminError, MemoryKeyStore, startKeyRegistryServer, type KeyRegistryServerOptions, type RunningKeyRegistry } from '../src/index.js';
import { call, ecKey, keyUrl, putKey, rawCall, sleep, uniqueName } from './support.js';

const aud = 'http://registry.test';
const adminToken = 'admin-test-token-0123456789abcdef';
const running: RunningKeyRegistry[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((server) => server.stop()));
});

async function start(options: KeyRegistryServerOptions = {}): Promise<RunningKeyRegistry> {
  const server = await startKeyRegistryServer({ listenAddr: '127.0.0.1:0', publicUrl: aud, store: new MemoryKeyStore(), adminToken, ...options });
  running.push(server);
  return server;
}

describe('admin API', () => {
  it('needs the admin token: 401 without or with a wrong one, 403 when no token is configured', async () => {
    const server = await start();
    expect((await call(`${server.address}/admin/keys`)).status).toBe(401);
    expect((await call(`${server.address}/admin/keys`, { headers: { authorization: 'Bearer wrong-token-wrong-token' } })).status).toBe(401);
    expect((await call(`${server.address}/admin/keys`, { headers: { authorization: `Bearer ${adminToken}` } })).status).toBe(200);
    const locked = await start({ adminToken: undefined });
    const answer = await call(`${locked.address}/admin/keys`, { headers: { authorization: `Bearer ${adminToken}` } });
    expect(answer.status).toBe(403);
    expect(answer.json()).toMatchObject({ error: 'admin_disabled' });
    await expect(new KeyRegistryAdminClient({ url: server.address, token: 'nope-nope-nope-nope' }).list()).rejects.toMatchObject({ status: 401, code: 'unauthorized' });
  });

  it('lists keys by service and state, approves (idempotently) and revokes', async () => {
    const server = await start();
    const admin = new KeyRegistryAdminClient({ url: server.address, token: adminToken });
    const service = uniqueName('svc');
    const [a, b] = await Promise.all([ecKey(), ecKey()]);
    await putKey(server.address, aud, service, a);
    await putKey(server.address, aud, service, b, { query: { expiration: Math.floor(Date.now() / 1000) + 600, rotation: 300 } });
    await putKey(server.address, aud, uniqueName('other'), await ecKey());
    const pending = await admin.list({ service, state: 'pending' });
    expect(pending.map((info) => info.kid).sort()).toEqual([a.kid, b.kid].sort());
    expect(pending.find((info) => info.kid === b.kid)).toMatchObject({ service, state: 'pending', kty: 'EC', alg: 'ES256', rotationSeconds: 300, approvedAt: null });
    expect((await admin.list()).length).toBe(3);

    const approved = await admin.approve(service, a.kid);
    expect(approved).toMatchObject({ state: 'approved', approvedBy: 'admin' });
    expect((await admin.approve(service, a.kid)).approvedAt).toBe(approved.approvedAt);
    expect((await admin.list({ service, state: 'approved' })).map((info) => info.kid)).toEqual([a.kid]);
    expect((await call(keyUrl(server.address, service, a.kid))).status).toBe(200);

    await admin.revoke(service, a.kid);
    expect((await call(keyUrl(server.address, service, a.kid))).status).toBe(404);
    await expect(admin.approve(service, a.kid)).rejects.toMatchObject({ status: 404, code: 'key_not_found' });
    await expect(admin.revoke(service, 'nosuchkey')).rejects.toBeInstanceOf(KeyRegistryAdminError);
    await expect(admin.approve('..', 'k')).rejects.toMatchObject({ code: 'invalid_name' });
    const raw = await rawCall(server.address, 'POST', '/admin/services/%2E%2E/keys/k/approve', { authorization: `Bearer ${adminToken}` });
    expect(raw.status).toBe(400);
  });

  it('auto-approves new keys of services matching auto_approve, and only those', async () => {
    const server = await start({ autoApprove: ['dev-*', 'exact'] });
    const dev = await ecKey();
    expect((await putKey(server.address, aud, 'dev-api', dev)).status).toBe(202);
    expect((await call(keyUrl(server.address, 'dev-api', dev.kid))).status).toBe(200);
    const exact = await ecKey();
    await putKey(server.address, aud, 'exact', exact);
    expect((await call(keyUrl(server.address, 'exact', exact.kid))).status).toBe(200);
    const prod = await ecKey();
    await putKey(server.address, aud, 'prod-api', prod);
    expect((await call(keyUrl(server.address, 'prod-api', prod.kid))).status).toBe(409);
    const notQuite = await ecKey();
    await putKey(server.address, aud, 'exactly', notQuite);
    expect((await call(keyUrl(server.address, 'exactly', notQuite.kid))).status).toBe(409);
  });

  it('purges keys never approved after pending_ttl, and forgets expired keys after expired_retention', async () => {
    const store = new MemoryKeyStore();
    const server = await start({ store, pendingTtlMs: 800, expiredRetentionMs: 1000, sweepIntervalMs: 100 });
    const admin = new KeyRegistryAdminClient({ url: server.address, token: adminToken });
    const service = uniqueName('svc');
    const [pending, expiring] = await Promise.all([ecKey(), ecKey()]);
    const expiration = Math.floor(Date.now() / 1000) + 3;
    await putKey(server.address, aud, service, pending);
    await putKey(server.address, aud, service, expiring, { query: { expiration } });
    await admin.approve(service, expiring.kid);
    expect((await call(keyUrl(server.address, service, pending.kid))).status).toBe(409);
    // The sweeper runs on a timer: on a loaded machine it may run late, so the purges are
    // awaited (within a few seconds), while what must still be there is checked at once.
    const statusOf = async (kid: string) => (await call(keyUrl(server.address, service, kid))).status;
    const storedKids = async () => (await store.listService(service)).map((key) => key.kid);
    await expect.poll(storedKids, { timeout: 5_000, interval: 50 }).toEqual([expiring.kid]);
    expect(await statusOf(pending.kid)).toBe(404);
    await sleep(expiration * 1000 + 200 - Date.now());
    expect(await statusOf(expiring.kid)).toBe(403);
    await expect.poll(storedKids, { timeout: 5_000, interval: 50 }).toEqual([]);
    expect(Date.now()).toBeGreaterThanOrEqual(expiration * 1000 + 1000);
    expect(await statusOf(expiring.kid)).toBe(404);
  });

  it('re-publishing a key it already has refreshes its expiration and keeps its approval', async () => {
    const server = await start();
    const service = uniqueName('svc');
    const key = await ecKey();
    await putKey(server.address, aud, service, key, { query: { expiration: Math.floor(Date.now() / 1000) + 100 } });
    expect((await putKey(server.address, aud, service, key, { query: { expiration: Math.floor(Date.now() / 1000) + 200 } })).status).toBe(202);
    await new KeyRegistryAdminClient({ url: server.address, token: adminToken }).approve(service, key.kid);
    expect((await putKey(server.address, aud, service, key, { query: { expiration: Math.floor(Date.now() / 1000) + 7200 } })).status).toBe(200);
    const maxAge = Number(/max-age=(\d+)/.exec((await call(keyUrl(server.address, service, key.kid))).headers.get('cache-control') ?? '')?.[1]);
    expect(maxAge).toBeGreaterThan(7000);
    const other = await ecKey(undefined, key.kid);
    const conflict = await putKey(server.address, aud, service, other);
    expect(conflict.status).toBe(400);
    expect(conflict.json()).toMatchObject({ error: 'key_conflict' });
  });

  it('answers /healthz, 405 with Allow for a wrong method, and 404 for unknown paths', async () => {
    const server = await start();
    expect((await call(`${server.address}/healthz`)).json()).toEqual({ status: 'ok' });
    const wrong = await call(`${server.address}/services/s/keys`, { method: 'POST' });
    expect(wrong.status).toBe(405);
    expect(wrong.headers.get('allow')).toBe('GET');
    expect((await call(`${server.address}/nothing/here`)).status).toBe(404);
  });

  it('answers 503 and logs when the store fails, then recovers', async () => {
    const store = new MemoryKeyStore();
    const errors: string[] = [];
    const server = await start({ store, logger: { debug() {}, info() {}, warn() {}, error: (message) => errors.push(message) } });
    const { StorageUnavailableError } = await import('../src/index.js');
    const original = store.get.bind(store);
    store.get = async () => {
      throw new StorageUnavailableError('key storage unavailable: injected fault');
    };
    const answer = await call(keyUrl(server.address, 's', 'k'));
    expect(answer.status).toBe(503);
    expect(answer.json()).toMatchObject({ error: 'storage_unavailable' });
    expect(errors).toContain('key registry: storage unavailable');
    store.get = original;
    expect((await call(keyUrl(server.address, 's', 'k'))).status).toBe(404);
  });
});

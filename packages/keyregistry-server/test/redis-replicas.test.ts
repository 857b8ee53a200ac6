/** Two registry processes on one Redis share keys and approvals; replicas never lose a concurrent write. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyRegistryAdminClient, RedisKeyStore } from '../src/index.js';
import { deletePrefix, redisUrl, testPrefix } from './redis-support.js';
import { call, ecKey, keyUrl, putKey, rsaKey, spawnRegistry, uniqueName, type RegistryProcess } from './support.js';

const adminToken = 'replica-admin-token-0123456789';
const aud = 'http://registry.test';
const keyPrefix = testPrefix();
let a: RegistryProcess;
let b: RegistryProcess;

beforeAll(async () => {
  const options = { listenAddr: '127.0.0.1:0', publicUrl: aud, storage: { type: 'redis', url: redisUrl, keyPrefix }, adminToken };
  [a, b] = await Promise.all([spawnRegistry(options), spawnRegistry(options)]);
});

afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
  await deletePrefix(keyPrefix);
});

describe('two registry processes on one Redis', () => {
  it('see each other\'s keys and approvals, rotations and deletions', async () => {
    const service = uniqueName('svc');
    const key = await rsaKey();
    expect((await putKey(a.address, aud, service, key)).status).toBe(202);
    expect((await call(keyUrl(b.address, service, key.kid))).status).toBe(409);

    const adminB = new KeyRegistryAdminClient({ url: b.address, token: adminToken });
    const pendingOnB = await adminB.list({ service, state: 'pending' });
    expect(pendingOnB.map((info) => info.kid)).toEqual([key.kid]);
    await adminB.approve(service, key.kid);
    const onA = await call(keyUrl(a.address, service, key.kid));
    expect(onA.status).toBe(200);
    expect(onA.json()).toMatchObject({ n: key.jwk.n });

    const next = await ecKey();
    expect((await putKey(b.address, aud, service, next, { signer: key })).status).toBe(200);
    expect((await call(keyUrl(a.address, service, key.kid))).status).toBe(404);
    expect((await call(keyUrl(a.address, service, next.kid))).status).toBe(200);

    await new KeyRegistryAdminClient({ url: a.address, token: adminToken }).revoke(service, next.kid);
    expect((await call(keyUrl(b.address, service, next.kid))).status).toBe(404);
  });

  it('refuses on one replica a token already used on the other', async () => {
    const service = uniqueName('svc');
    const key = await ecKey();
    const { registryToken } = await import('./support.js');
    const token = await registryToken(key, { iss: service, aud });
    expect((await putKey(a.address, aud, service, key, { token })).status).toBe(202);
    expect((await putKey(b.address, aud, service, key, { token })).status).toBe(400);
  });

  it('lets exactly one of many concurrent rotations signed by the same key win, across both replicas', async () => {
    const service = uniqueName('svc');
    const signer = await ecKey();
    expect((await putKey(a.address, aud, service, signer)).status).toBe(202);
    await new KeyRegistryAdminClient({ url: a.address, token: adminToken }).approve(service, signer.kid);
    const candidates = await Promise.all(Array.from({ length: 40 }, () => ecKey()));
    const answers = await Promise.all(candidates.map((key, i) => putKey(i % 2 ? a.address : b.address, aud, service, key, { signer })));
    const statuses = answers.map((answer) => answer.status);
    expect(statuses.filter((status) => status === 200)).toHaveLength(1);
    expect(statuses.filter((status) => status !== 200).every((status) => status === 403)).toBe(true);
    const listed = (await call(`${a.address}/services/${service}/keys`)).json() as { keys: Array<{ kid: string }> };
    expect(listed.keys).toHaveLength(1);
    expect(listed.keys[0]!.kid).toBe(candidates[statuses.indexOf(200)]!.kid);
  });

  it('stores one hash per service and cleans up the service set when its last key goes', async () => {
    const store = await RedisKeyStore.connect({ url: redisUrl, keyPrefix });
    try {
      const service = uniqueName('svc');
      const key = await ecKey();
      expect((await putKey(b.address, aud, service, key)).status).toBe(202);
      expect((await store.listAll()).some((stored) => stored.service === service && stored.kid === key.kid)).toBe(true);
      await new KeyRegistryAdminClient({ url: b.address, token: adminToken }).revoke(service, key.kid);
      expect((await store.listAll()).some((stored) => stored.service === service)).toBe(false);
    } finally {
      await store.close();
    }
  });
});

/**
 * Issue 12, items 6 and 7: keys awaiting approval are capped per service and in all (429 beyond,
 * logged without flooding the log), exactly also across Redis replicas; and concurrent changes
 * of one key wait for each other instead of failing with 503.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import {
  KeyRegistry,
  KeyRegistryAdminClient,
  MemoryKeyStore,
  startKeyRegistryServer,
  type KeyChange,
  type KeyRegistryServerOptions,
  type RunningKeyRegistry,
  type StoredKey,
} from '../src/index.js';
import { deletePrefix, redisUrl, testPrefix } from './redis-support.js';
import { call, ecKey, keyUrl, putKey, registryToken, rsaKey, uniqueName, type PublisherKey } from './support.js';

const aud = 'http://registry.test';
const adminToken = 'pending-limits-admin-token-0123456789';
const cleanups: Array<() => Promise<unknown>> = [];
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

interface Logged {
  message: string;
  fields: Record<string, unknown> | undefined;
}

async function start(options: KeyRegistryServerOptions, logged: Logged[] = []): Promise<RunningKeyRegistry> {
  const running = await startKeyRegistryServer({
    listenAddr: '127.0.0.1:0', publicUrl: aud, adminToken,
    logger: { debug() {}, info() {}, warn: (message, fields) => logged.push({ message, fields }), error: (message, fields) => logged.push({ message, fields }) },
    ...options,
  });
  cleanups.push(() => running.stop());
  return running;
}

async function fileStorage(): Promise<KeyRegistryServerOptions['storage']> {
  const directory = await mkdtemp(path.join(os.tmpdir(), 'keyregistry-limits-'));
  cleanups.push(() => rm(directory, { recursive: true, force: true }));
  return { type: 'file', path: path.join(directory, 'keys.json') };
}

/** One key pair published under many kids: the registry ties a kid to a key, not to a thumbprint. */
function underKid(key: PublisherKey, kid: string): PublisherKey {
  return { ...key, kid };
}

const statusCounts = (statuses: number[]): Record<number, number> => {
  const counts: Record<number, number> = {};
  for (const status of statuses) counts[status] = (counts[status] ?? 0) + 1;
  return counts;
};

describe('caps on keys awaiting approval', () => {
  for (const storage of ['memory', 'file'] as const) {
    it(`${storage}: 429 with a JSON error past the per-service and the total cap, one log line for many refusals; approval frees a place`, async () => {
      const logged: Logged[] = [];
      const running = await start(
        { maxPendingKeysPerService: 3, maxPendingKeys: 5, storage: storage === 'memory' ? { type: 'memory' } : await fileStorage() },
        logged,
      );
      const admin = new KeyRegistryAdminClient({ url: running.address, token: adminToken });
      const key = await ecKey();
      const [first, second] = [uniqueName('svc'), uniqueName('svc')];
      for (let i = 0; i < 3; i++) expect((await putKey(running.address, aud, first, underKid(key, `a${i}`))).status).toBe(202);
      const refused = await putKey(running.address, aud, first, underKid(key, 'a3'));
      expect(refused.status).toBe(429);
      expect(refused.headers.get('content-type')).toBe('application/json');
      expect(refused.json()).toEqual({
        error: 'too_many_pending_keys',
        message: `service ${JSON.stringify(first)} already has 3 keys awaiting approval (max_pending_keys_per_service); approve or revoke some, or wait until unapproved keys are purged`,
      });
      expect((await call(keyUrl(running.address, first, 'a3'))).status).toBe(404);
      // Refreshing a key that is already pending takes no new place.
      expect((await putKey(running.address, aud, first, underKid(key, 'a0'))).status).toBe(202);

      for (let i = 0; i < 2; i++) expect((await putKey(running.address, aud, second, underKid(key, `b${i}`))).status).toBe(202);
      const full = await putKey(running.address, aud, second, underKid(key, 'b2'));
      expect(full.status).toBe(429);
      expect(full.json()).toMatchObject({ error: 'too_many_pending_keys', message: expect.stringMatching(/^the registry already holds 5 keys awaiting approval \(max_pending_keys\)/) });
      for (let i = 0; i < 20; i++) expect((await putKey(running.address, aud, second, underKid(key, `c${i}`))).status).toBe(429);
      const lines = logged.filter((line) => line.message.startsWith('key registry: too many keys awaiting approval'));
      expect(lines).toEqual([{ message: 'key registry: too many keys awaiting approval; refusing new ones (429)', fields: { scope: 'service', service: first, limit: 3, refused: 1 } }]);

      // An approved key awaits nothing: its place is free again.
      await admin.approve(first, 'a0');
      expect((await putKey(running.address, aud, second, underKid(key, 'b2'))).status).toBe(202);
      expect((await putKey(running.address, aud, second, underKid(key, 'b3'))).status).toBe(429);
      // A rotation brings in an approved key: not capped.
      const next = await ecKey();
      expect((await putKey(running.address, aud, first, underKid(next, 'a0-next'), { signer: underKid(key, 'a0') })).status).toBe(200);
    });
  }

  it('the file store keeps its counts across a restart', async () => {
    const storage = await fileStorage();
    const first = await startKeyRegistryServer({ listenAddr: '127.0.0.1:0', publicUrl: aud, storage, maxPendingKeysPerService: 2 });
    const key = await ecKey();
    const service = uniqueName('svc');
    for (const kid of ['k0', 'k1']) expect((await putKey(first.address, aud, service, underKid(key, kid))).status).toBe(202);
    await first.stop();
    const second = await start({ storage, maxPendingKeysPerService: 2 });
    expect((await putKey(second.address, aud, service, underKid(key, 'k2'))).status).toBe(429);
  });

  it('Redis: 40 concurrent publications through two replicas against a cap of 7 land exactly 7; counts are made for data written before them', async () => {
    const keyPrefix = testPrefix();
    cleanups.push(() => deletePrefix(keyPrefix));
    const storage = { type: 'redis' as const, url: redisUrl, keyPrefix };
    const replicas = [await start({ storage, maxPendingKeysPerService: 7 }), await start({ storage, maxPendingKeysPerService: 7 })];
    const key = await ecKey();
    const service = uniqueName('svc');
    const answers = await Promise.all(Array.from({ length: 40 }, (_, i) => putKey(replicas[i % 2]!.address, aud, service, underKid(key, `k${i}`))));
    expect(statusCounts(answers.map((answer) => answer.status))).toEqual({ 202: 7, 429: 33 });

    // Data from before the counts: the same records, without the count keys.
    const redis = new Redis(redisUrl);
    try {
      await redis.del(`${keyPrefix}pending`, `${keyPrefix}pending-total`, `${keyPrefix}pending-counted`);
    } finally {
      redis.disconnect();
    }
    const upgraded = await start({ storage, maxPendingKeysPerService: 8 });
    expect((await putKey(upgraded.address, aud, service, underKid(key, 'late-0'))).status).toBe(202);
    expect((await putKey(upgraded.address, aud, service, underKid(key, 'late-1'))).status).toBe(429);
  });
});

describe('concurrent changes of one key', () => {
  const refreshAll = async (running: RunningKeyRegistry, service: string, key: PublisherKey, count: number): Promise<Record<number, number>> => {
    const tokens = await Promise.all(Array.from({ length: count }, () => registryToken(key, { iss: service, aud })));
    const expiration = Math.floor(Date.now() / 1000) + 7200;
    const answers = await Promise.all(tokens.map((token, i) => putKey(running.address, aud, service, key, { token, query: { expiration: expiration + i, rotation: 3600 } })));
    return statusCounts(answers.map((answer) => answer.status));
  };

  for (const kind of ['file', 'redis'] as const) {
    it(`${kind}: 200 concurrent refreshes of one approved key all succeed (200), none is refused busy`, async () => {
      let storage: KeyRegistryServerOptions['storage'];
      if (kind === 'file') storage = await fileStorage();
      else {
        const keyPrefix = testPrefix();
        cleanups.push(() => deletePrefix(keyPrefix));
        storage = { type: 'redis', url: redisUrl, keyPrefix };
      }
      const running = await start({ storage });
      const service = uniqueName('svc');
      const key = await rsaKey();
      expect((await putKey(running.address, aud, service, key)).status).toBe(202);
      await new KeyRegistryAdminClient({ url: running.address, token: adminToken }).approve(service, key.kid);
      expect(await refreshAll(running, service, key, 200)).toEqual({ 200: 200 });
      expect((await call(keyUrl(running.address, service, key.kid))).status).toBe(200);
    });
  }

  it('beyond the bound of waiting changes per key, answers 503 busy at once (the rest succeed)', async () => {
    // Fault: a store whose writes take 20 ms, so that changes pile up behind each other.
    class SlowStore extends MemoryKeyStore {
      override async commit(service: string, changes: readonly KeyChange[]): Promise<boolean> {
        await new Promise((resolve) => setTimeout(resolve, 20));
        return super.commit(service, changes);
      }
    }
    const store = new SlowStore();
    const registry = new KeyRegistry(
      store,
      {
        audience: aud, maxSkewMs: 60_000, maxTtlMs: 3_600_000, pendingTtlMs: 0, expiredRetentionMs: 0, autoApprove: () => true,
        pendingLimits: { perService: 100, total: 100 }, maxQueuedChangesPerKey: 4,
      },
      { debug() {}, info() {}, warn() {}, error() {} },
      Date.now,
    );
    const key = await ecKey();
    const service = uniqueName('svc');
    const publish = async (token: string): Promise<number | string> => {
      try {
        return (await registry.publish({ service, kid: key.kid, body: key.jwk, authorization: `Bearer ${token}` })).status;
      } catch (error) {
        return (error as { code: string }).code;
      }
    };
    expect(await publish(await registryToken(key, { iss: service, aud }))).toBe(202);
    // The tokens are signed first, so that all twelve changes arrive together (signed one by one
    // on a loaded machine, the first could finish before the last arrives, and fewer would wait).
    const tokens = await Promise.all(Array.from({ length: 12 }, () => registryToken(key, { iss: service, aud })));
    const outcomes = await Promise.all(tokens.map(publish));
    const counts: Record<string, number> = {};
    for (const outcome of outcomes) counts[String(outcome)] = (counts[String(outcome)] ?? 0) + 1;
    // One in progress and four waiting are served; the other seven are told to retry.
    expect(counts).toEqual({ 200: 5, busy: 7 });
    const stored: StoredKey | undefined = await store.get(service, key.kid);
    expect(stored?.state).toBe('approved');
  });
});

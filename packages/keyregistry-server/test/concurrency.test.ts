/** 1,000 concurrent publishes of distinct keys all land (the per-service cap raised to 1,000), on the file store and across two replicas on Redis. */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { KeyRegistryAdminClient, startKeyRegistryServer, type RunningKeyRegistry } from '../src/index.js';
import { deletePrefix, redisUrl, testPrefix } from './redis-support.js';
import { call, ecKey, putKey, registryToken, uniqueName, type PublisherKey } from './support.js';

const adminToken = 'concurrency-admin-token-0123456789';
const aud = 'http://registry.test';
const cleanups: Array<() => Promise<unknown>> = [];
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

async function prepare(count: number, service: string): Promise<Array<{ key: PublisherKey; token: string }>> {
  const keys = await Promise.all(Array.from({ length: count }, () => ecKey()));
  return Promise.all(keys.map(async (key) => ({ key, token: await registryToken(key, { iss: service, aud }) })));
}

async function publishAll(servers: RunningKeyRegistry[], service: string, prepared: Array<{ key: PublisherKey; token: string }>): Promise<number> {
  const started = performance.now();
  const answers = await Promise.all(prepared.map(({ key, token }, i) => putKey(servers[i % servers.length]!.address, aud, service, key, { token })));
  const elapsed = performance.now() - started;
  const statuses = new Map<number, number>();
  for (const answer of answers) statuses.set(answer.status, (statuses.get(answer.status) ?? 0) + 1);
  expect(Object.fromEntries(statuses)).toEqual({ 202: prepared.length });
  return elapsed;
}

async function approveAllAndCheck(servers: RunningKeyRegistry[], service: string, prepared: Array<{ key: PublisherKey }>): Promise<number> {
  const admins = servers.map((server) => new KeyRegistryAdminClient({ url: server.address, token: adminToken }));
  const pending = await admins[0]!.list({ service, state: 'pending' });
  expect(new Set(pending.map((info) => info.kid))).toEqual(new Set(prepared.map(({ key }) => key.kid)));
  const started = performance.now();
  await Promise.all(prepared.map(({ key }, i) => admins[i % admins.length]!.approve(service, key.kid)));
  const elapsed = performance.now() - started;
  for (const server of servers) {
    const listed = (await call(`${server.address}/services/${service}/keys`)).json() as { keys: Array<{ kid: string; x: string }> };
    expect(listed.keys).toHaveLength(prepared.length);
    const byKid = new Map(listed.keys.map((jwk) => [jwk.kid, jwk.x]));
    for (const { key } of prepared) expect(byKid.get(key.kid)).toBe(key.jwk.x);
  }
  return elapsed;
}

describe('1,000 concurrent publishes of distinct keys', () => {
  it('all land on the file store, and all are in the file', async () => {
    const directory = await mkdtemp(path.join(os.tmpdir(), 'keyregistry-concurrency-'));
    cleanups.push(() => rm(directory, { recursive: true, force: true }));
    const file = path.join(directory, 'keys.json');
    const server = await startKeyRegistryServer({ listenAddr: '127.0.0.1:0', publicUrl: aud, storage: { type: 'file', path: file }, adminToken, maxPendingKeysPerService: 1000 });
    cleanups.push(() => server.stop());
    const service = uniqueName('svc');
    const prepared = await prepare(1000, service);
    const publishMs = await publishAll([server], service, prepared);
    const approveMs = await approveAllAndCheck([server], service, prepared);
    await server.stop();
    const saved = JSON.parse(await readFile(file, 'utf8')) as { keys: Record<string, Record<string, { state: string }>> };
    expect(Object.values(saved.keys[service]!).filter((key) => key.state === 'approved')).toHaveLength(1000);
    console.log(`file store: 1000 concurrent publishes in ${publishMs.toFixed(0)} ms, 1000 concurrent approvals in ${approveMs.toFixed(0)} ms`);
  }, 120_000);

  it('all land on Redis through two replicas taking turns', async () => {
    const keyPrefix = testPrefix();
    cleanups.push(() => deletePrefix(keyPrefix));
    const servers = await Promise.all(
      [0, 1].map(() => startKeyRegistryServer({ listenAddr: '127.0.0.1:0', publicUrl: aud, storage: { type: 'redis', url: redisUrl, keyPrefix }, adminToken, maxPendingKeysPerService: 1000 })),
    );
    for (const server of servers) cleanups.push(() => server.stop());
    const service = uniqueName('svc');
    const prepared = await prepare(1000, service);
    const publishMs = await publishAll(servers, service, prepared);
    const approveMs = await approveAllAndCheck(servers, service, prepared);
    console.log(`redis store (2 replicas): 1000 concurrent publishes in ${publishMs.toFixed(0)} ms, 1000 concurrent approvals in ${approveMs.toFixed(0)} ms`);
  }, 120_000);
});

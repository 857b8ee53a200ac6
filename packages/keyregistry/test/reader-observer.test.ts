import { KeyNotFoundError, KeyServerUnavailableError } from '@jwtproxy/core';
import { startQuayLikeRegistry, type QuayLikeRegistry } from '@jwtproxy/testkit';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { KeyRegistryClient, type KeyRegistryObserver } from '../src/index.js';
import { rsaKey, type TestKey } from './helpers.js';

const ISSUER = 'billing';
let key: TestKey;
let registry: QuayLikeRegistry;
const clients: KeyRegistryClient[] = [];

beforeAll(() => {
  key = rsaKey('observed-key');
});
afterEach(async () => {
  await Promise.all(clients.splice(0).map((client) => client.stop()));
  await registry?.stop();
});

/** Every event the client reports, in order, as `cacheHit:key`, `fetched:not_found`, `limited`. */
function recorder(): KeyRegistryObserver & { events: string[]; durations: number[] } {
  const events: string[] = [];
  const durations: number[] = [];
  return {
    events,
    durations,
    cacheHit: (kind) => events.push(`cacheHit:${kind}`),
    limited: () => events.push('limited'),
    fetched: (outcome, ms) => {
      events.push(`fetched:${outcome}`);
      durations.push(ms);
    },
  };
}

describe('KeyRegistryClient observer (metrics)', () => {
  it('reports each registry GET with its outcome and time, and each lookup answered from memory', async () => {
    registry = await startQuayLikeRegistry();
    registry.addApproved(ISSUER, key.kid, key.jwk);
    registry.addApproved(ISSUER, 'awaiting', key.jwk);
    registry.get(ISSUER, 'awaiting')!.approved = false;
    const client = new KeyRegistryClient({ registry: registry.url });
    clients.push(client);
    const seen = recorder();
    client.observe(seen);

    await client.resolve(ISSUER, key.kid);
    await client.resolve(ISSUER, key.kid);
    await expect(client.resolve(ISSUER, 'nobody')).rejects.toBeInstanceOf(KeyNotFoundError);
    await expect(client.resolve(ISSUER, 'nobody')).rejects.toBeInstanceOf(KeyNotFoundError);
    await expect(client.resolve(ISSUER, 'awaiting')).rejects.toBeInstanceOf(KeyServerUnavailableError);
    registry.failWith = 500;
    await expect(client.resolve(ISSUER, 'other')).rejects.toBeInstanceOf(KeyServerUnavailableError);
    registry.failWith = undefined;
    await registry.stop();
    await expect(client.resolve(ISSUER, 'gone')).rejects.toBeInstanceOf(KeyServerUnavailableError);
    // The cached key still verifies with the registry down: a cache hit.
    await client.resolve(ISSUER, key.kid);

    expect(seen.events).toEqual([
      'fetched:key',
      'cacheHit:key',
      'fetched:not_found',
      'cacheHit:negative',
      'fetched:pending',
      'fetched:unavailable',
      'fetched:error',
      'cacheHit:key',
    ]);
    for (const ms of seen.durations) expect(ms).toBeGreaterThan(0);

    // observe(undefined) stops the reports.
    client.observe(undefined);
    await client.resolve(ISSUER, key.kid);
    expect(seen.events).toHaveLength(8);
  });

  it('reports lookups refused by the per-issuer limit, which never reach the registry', async () => {
    registry = await startQuayLikeRegistry();
    const seen = recorder();
    const client = new KeyRegistryClient({ registry: registry.url, unknownKidBurst: 2, unknownKidRate: 0.001, observer: seen });
    clients.push(client);
    for (let i = 0; i < 5; i++) await expect(client.resolve(ISSUER, `made-up-${i}`)).rejects.toBeInstanceOf(KeyNotFoundError);
    expect(seen.events).toEqual(['fetched:not_found', 'fetched:not_found', 'limited', 'limited', 'limited']);
    expect(registry.seen).toHaveLength(2);
  });
});

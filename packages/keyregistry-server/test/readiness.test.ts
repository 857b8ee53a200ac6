import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { RedisKeyStore, StorageUnavailableError, keyRegistryStorageAnswers, startKeyRegistryServer } from '../src/index.js';
import { deletePrefix, redisUrl, testPrefix } from './redis-support.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A TCP relay to the test Redis that the test can cut, as a network failure would. */
async function startRelay(target: URL): Promise<{ port: number; cut(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port || 6379), target.hostname);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('error', () => {});
      socket.once('close', () => sockets.delete(socket));
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  let closed: Promise<void> | undefined;
  const cut = () => {
    closed ??= new Promise<void>((resolve) => {
      server.close(() => resolve());
      for (const socket of sockets) socket.destroy();
    });
    return closed;
  };
  cleanups.push(cut);
  return { port, cut };
}

describe('keyRegistryStorageAnswers (the registry’s readiness)', () => {
  it('resolves while the storage answers (memory), and a key that does not exist is still an answer', async () => {
    const registry = await startKeyRegistryServer({ listenAddr: '127.0.0.1:0', storage: { type: 'memory' } });
    cleanups.push(() => registry.stop());
    await expect(keyRegistryStorageAnswers(registry.registry)).resolves.toBeUndefined();
  });

  it('Redis storage: resolves while Redis answers; once the connection to Redis is cut, rejects with StorageUnavailableError within the command timeout', async () => {
    const relay = await startRelay(new URL(redisUrl));
    const keyPrefix = testPrefix();
    cleanups.push(() => deletePrefix(keyPrefix));
    const store = await RedisKeyStore.connect({ url: `redis://127.0.0.1:${relay.port}`, keyPrefix, commandTimeoutMs: 300 });
    cleanups.push(() => store.close());
    const registry = await startKeyRegistryServer({ listenAddr: '127.0.0.1:0', store });
    cleanups.push(() => registry.stop());
    await expect(keyRegistryStorageAnswers(registry.registry)).resolves.toBeUndefined();

    await relay.cut();
    const started = performance.now();
    const error = await keyRegistryStorageAnswers(registry.registry).then(
      () => undefined,
      (reason: unknown) => reason,
    );
    expect(error).toBeInstanceOf(StorageUnavailableError);
    expect(performance.now() - started).toBeLessThan(1_500);
  });
});

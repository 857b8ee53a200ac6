/**
 * Sentinel, Cluster and TLS, each against real redis-server processes of the test's own.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createRuntime, NonceStoreUnavailableError, type Logger } from '@jwtproxy/core';
import { freeLoopbackPort, makeCa, makeServerCertificate, startOwnRedis, type OwnRedis } from '@jwtproxy/testkit';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { RedisNonceStore, redisNonceStore } from '../src/index.js';

/** The registry as the CLI fills it. */
const { nonceStores } = createRuntime();
nonceStores.register(redisNonceStore);

const nowSeconds = (): number => Math.floor(Date.now() / 1000);
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function own(options: Parameters<typeof startOwnRedis>[0] = {}): Promise<OwnRedis> {
  const redis = await startOwnRedis(options);
  cleanups.push(() => redis.close());
  return redis;
}

function keep<T extends RedisNonceStore>(store: T): T {
  cleanups.push(() => store.stop());
  return store;
}

function recordingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const record = (level: string) => (message: string, fields?: Record<string, unknown>) => lines.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`);
  return { lines, debug: record('debug'), info: record('info'), warn: record('warn'), error: record('error') };
}

describe('Redis topologies', () => {
  it('Sentinel: finds the master through the Sentinel and claims there', async () => {
    const master = await own();
    const sentinel = await own({ sentinelConfig: `sentinel monitor mymaster 127.0.0.1 ${master.port} 1` });
    const options = { sentinels: [{ host: '127.0.0.1', port: sentinel.port }], name: 'mymaster', key_prefix: 'sentinel:', connect_timeout: '5s' };
    const logger = recordingLogger();
    const store = keep((await nonceStores.create({ type: 'redis', options }, { logger, clock: Date.now, baseDir: '.' })) as RedisNonceStore);
    expect(store.available).toBe(true);
    expect(await store.claim('via-sentinel', nowSeconds() + 60)).toBe(true);
    expect(await store.claim('via-sentinel', nowSeconds() + 60)).toBe(false);
    const direct = new Redis(master.port, '127.0.0.1');
    try {
      expect(await direct.get('sentinel:via-sentinel')).toBe('1');
    } finally {
      await direct.quit();
    }
    expect(logger.lines[0]).toContain(`sentinel master mymaster (sentinels 127.0.0.1:${sentinel.port})`);
  });

  it('Cluster: claims on a (one-node) Redis Cluster; two stores agree on one winner', async () => {
    const busPort = await freeLoopbackPort();
    const node = await own({ args: ['--cluster-enabled', 'yes', '--cluster-port', String(busPort), '--cluster-config-file', 'nodes.conf', '--cluster-announce-ip', '127.0.0.1'] });
    const admin = new Redis(node.port, '127.0.0.1');
    try {
      await admin.call('CLUSTER', 'ADDSLOTSRANGE', '0', '16383');
      for (let i = 0; !String(await admin.call('CLUSTER', 'INFO')).includes('cluster_state:ok'); i++) {
        if (i > 200) throw new Error('cluster did not become ok');
        await sleep(25);
      }
    } finally {
      await admin.quit();
    }
    const options = { cluster: [{ host: '127.0.0.1', port: node.port }], key_prefix: 'cluster:', connect_timeout: '5s' };
    const context = { logger: recordingLogger(), clock: Date.now, baseDir: '.' };
    const storeA = keep((await nonceStores.create({ type: 'redis', options }, context)) as RedisNonceStore);
    const storeB = keep((await nonceStores.create({ type: 'redis', options }, context)) as RedisNonceStore);
    expect(storeA.available && storeB.available).toBe(true);
    const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => (i % 2 ? storeA : storeB).claim('cluster-jti', nowSeconds() + 60)));
    expect(answers.filter(Boolean)).toHaveLength(1);
    expect(await storeA.claim('other', nowSeconds() + 60)).toBe(true);

    // The cluster node dies: fail closed within the command timeout, no unhandled error.
    await node.kill();
    const started = performance.now();
    await expect(storeA.claim('cluster-down', nowSeconds() + 60)).rejects.toBeInstanceOf(NonceStoreUnavailableError);
    const failMs = performance.now() - started;
    console.log(`cluster node down: claim refused in ${failMs.toFixed(1)} ms`);
    expect(failMs).toBeLessThan(250 + 250);
  });

  it('ACL user and password from the url; a wrong password fails closed with one log line naming the cause', async () => {
    const secured = await own({ args: ['--requirepass', 'default-secret'] });
    const admin = new Redis({ port: secured.port, host: '127.0.0.1', password: 'default-secret' });
    try {
      await admin.call('ACL', 'SETUSER', 'verifier', 'on', '>p@ss word', '~jwtproxy:nonce:*', '+set');
    } finally {
      await admin.quit();
    }
    const context = { logger: recordingLogger(), clock: Date.now, baseDir: '.' };
    const url = `redis://verifier:${encodeURIComponent('p@ss word')}@127.0.0.1:${secured.port}`;
    const store = keep((await nonceStores.create({ type: 'redis', options: { url, connect_timeout: '5s' } }, context)) as RedisNonceStore);
    expect(await store.claim('acl-jti', nowSeconds() + 60)).toBe(true);
    expect(await store.claim('acl-jti', nowSeconds() + 60)).toBe(false);
    expect(context.logger.lines.join('\n')).not.toContain('p@ss');

    const logger = recordingLogger();
    const wrong = keep((await nonceStores.create({ type: 'redis', options: { host: '127.0.0.1', port: secured.port, username: 'verifier', password: 'wrong' } }, { ...context, logger })) as RedisNonceStore);
    await expect(wrong.claim('wrong-password', nowSeconds() + 60)).rejects.toBeInstanceOf(NonceStoreUnavailableError);
    await sleep(300);
    await expect(wrong.claim('wrong-password', nowSeconds() + 60)).rejects.toBeInstanceOf(NonceStoreUnavailableError);
    expect(logger.lines).toHaveLength(1);
    expect(logger.lines[0]).toMatch(/unavailable.*WRONGPASS/);
  });

  it('TLS: rediss:// with tls.ca_file verifies the server certificate; without the CA the store fails closed', async () => {
    const ca = makeCa();
    const server = makeServerCertificate(['127.0.0.1'], ca);
    const { dir } = await own(); // only for a scratch directory
    const files = { caFile: path.join(dir, 'ca.pem'), certFile: path.join(dir, 'server.pem'), keyFile: path.join(dir, 'server.key') };
    writeFileSync(files.caFile, ca.cert);
    writeFileSync(files.certFile, server.cert);
    writeFileSync(files.keyFile, server.key);
    const tlsRedis = await own({ tls: files });
    const url = `rediss://127.0.0.1:${tlsRedis.port}`;

    const trusted = keep(
      (await nonceStores.create({ type: 'redis', options: { url, tls: { ca_file: 'ca.pem' }, key_prefix: 'tls:', connect_timeout: '5s' } }, { logger: recordingLogger(), clock: Date.now, baseDir: dir })) as RedisNonceStore,
    );
    expect(await trusted.claim('over-tls', nowSeconds() + 60)).toBe(true);
    expect(await trusted.claim('over-tls', nowSeconds() + 60)).toBe(false);

    // System roots do not know the test CA: the connection is refused and so is every claim.
    const logger = recordingLogger();
    const untrusted = keep((await nonceStores.create({ type: 'redis', options: { url, key_prefix: 'tls:' } }, { logger, clock: Date.now, baseDir: dir })) as RedisNonceStore);
    expect(untrusted.available).toBe(false);
    await expect(untrusted.claim('untrusted', nowSeconds() + 60)).rejects.toBeInstanceOf(NonceStoreUnavailableError);
    expect(logger.lines).toHaveLength(1);
    expect(logger.lines[0]).toMatch(/unavailable.*certificate/);
  });
});

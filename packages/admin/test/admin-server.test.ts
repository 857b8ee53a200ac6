import { randomUUID } from 'node:crypto';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { RedisNonceStore } from '@jwtproxy/nonce-store-redis';
import { startOwnRedis, type OwnRedis } from '@jwtproxy/testkit';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { JwtProxyMetrics, Readiness, instrumentNonceStore, startAdminServer, type RunningAdminServer } from '../src/index.js';
import { sumOf } from './prometheus-text.js';
import { request, scrape } from './support.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function startAdmin(options: Partial<Parameters<typeof startAdminServer>[0]> = {}): Promise<RunningAdminServer> {
  const admin = await startAdminServer({ listenAddr: '127.0.0.1:0', ...options });
  cleanups.push(() => admin.stop());
  return admin;
}

interface ReadyzBody {
  status: string;
  checks: Array<{ name: string; ready: boolean; problem?: string }>;
}

async function readyz(admin: RunningAdminServer): Promise<{ status: number; body: ReadyzBody }> {
  const answer = await request(`${admin.address}/readyz`);
  expect(answer.headers['content-type']).toBe('application/json');
  return { status: answer.status, body: JSON.parse(answer.body) as ReadyzBody };
}

describe('/healthz and /readyz', () => {
  let redis: OwnRedis;
  beforeAll(async () => {
    redis = await startOwnRedis();
  });
  afterAll(async () => {
    await redis.close();
  });

  it('/readyz is 503 naming each check not ready and why, 200 once all pass; /healthz is 200 throughout', async () => {
    const readiness = new Readiness({ timeoutMs: 500 });
    const metrics = new JwtProxyMetrics({ processMetrics: false });
    const store = new RedisNonceStore({ url: redis.url, keyPrefix: `readyz:${randomUUID()}:`, commandTimeoutMs: 300, reconnectMaxDelayMs: 200 });
    cleanups.push(() => store.stop());
    expect(await store.ready()).toBe(true);
    const nonceStore = instrumentNonceStore(metrics, store, { proxy: 'verifier_proxies[0]', type: 'redis' });
    let listening = false;
    readiness.register('verifier_proxies[0]: nonce store', () => nonceStore.ping!());
    readiness.register('signer_proxy: listening', () => {
      if (!listening) throw new Error('not listening yet');
    });
    const admin = await startAdmin({ readiness, metrics });

    let answer = await readyz(admin);
    expect(answer.status).toBe(503);
    expect(answer.body).toEqual({
      status: 'not ready',
      checks: [
        { name: 'verifier_proxies[0]: nonce store', ready: true },
        { name: 'signer_proxy: listening', ready: false, problem: 'not listening yet' },
      ],
    });
    expect((await request(`${admin.address}/healthz`)).status).toBe(200);

    listening = true;
    answer = await readyz(admin);
    expect(answer.status).toBe(200);
    expect(answer.body.status).toBe('ready');

    // Redis goes away: not ready, within the check's timeout, saying the nonce store cannot answer.
    await redis.kill();
    const started = performance.now();
    answer = await readyz(admin);
    expect(performance.now() - started).toBeLessThan(1_500);
    expect(answer.status).toBe(503);
    expect(answer.body.checks[0]).toEqual({ name: 'verifier_proxies[0]: nonce store', ready: false, problem: 'Nonce storage unavailable' });
    expect((await request(`${admin.address}/healthz`)).status).toBe(200);

    // Redis back: ready again once the store has reconnected (bounded wait).
    await redis.start();
    let status = 0;
    for (let i = 0; i < 40 && status !== 200; i++) {
      await sleep(100);
      status = (await readyz(admin)).status;
    }
    expect(status).toBe(200);
    const scraped = await scrape(admin.address);
    expect(sumOf(scraped, 'jwtproxy_nonce_store_pings_total', { outcome: 'failed' })).toBeGreaterThanOrEqual(1);
    expect(sumOf(scraped, 'jwtproxy_nonce_store_pings_total', { outcome: 'ok' })).toBeGreaterThanOrEqual(2);
  });

  it('a check that hangs is not ready after the timeout, and is not called again while it still hangs', async () => {
    const readiness = new Readiness({ timeoutMs: 300 });
    let calls = 0;
    let release: () => void = () => {};
    let hang = true;
    readiness.register('key registry storage', () => {
      calls++;
      return hang ? new Promise<void>((resolve) => (release = resolve)) : undefined;
    });
    const admin = await startAdmin({ readiness });
    const started = performance.now();
    const answers = await Promise.all(Array.from({ length: 10 }, () => readyz(admin)));
    expect(performance.now() - started).toBeLessThan(1_500);
    for (const answer of answers) expect(answer.body.checks).toEqual([{ name: 'key registry storage', ready: false, problem: 'no answer within 300 ms' }]);
    expect((await readyz(admin)).status).toBe(503);
    // Ten concurrent probes and one more: the hung check was called once.
    expect(calls).toBe(1);
    hang = false;
    release();
    await sleep(10);
    expect((await readyz(admin)).status).toBe(200);
    expect(calls).toBe(2);
  });

  it('a stop makes /readyz 503 "stopping" at once, while answers in flight finish', async () => {
    const readiness = new Readiness();
    readiness.register('always', () => undefined);
    const admin = await startAdmin({ readiness });
    expect((await readyz(admin)).status).toBe(200);
    readiness.markStopping();
    const answer = await readyz(admin);
    expect(answer.status).toBe(503);
    expect(answer.body.status).toBe('stopping');
  });
});

describe('the admin listener is bounded', () => {
  it('only GET and HEAD of /metrics, /healthz, /readyz: 405 with Allow, 404, a body refused and its connection closed, 431 for too many header lines', async () => {
    const admin = await startAdmin({ metrics: new JwtProxyMetrics({ processMetrics: false }) });
    const post = await request(`${admin.address}/metrics`, { method: 'POST', body: 'x' });
    expect(post.status).toBe(405);
    expect(post.headers.allow).toBe('GET, HEAD');
    expect((await request(`${admin.address}/admin`)).status).toBe(404);
    const head = await request(`${admin.address}/healthz`, { method: 'HEAD' });
    expect([head.status, head.body]).toEqual([200, '']);
    expect((await request(`${admin.address}/healthz?x=1`)).status).toBe(200);
    const withBody = await request(`${admin.address}/healthz`, { headers: { 'content-type': 'text/plain', 'content-length': '5' }, body: 'hello' });
    expect(withBody.status).toBe(400);
    expect(withBody.headers.connection).toBe('close');
    const manyHeaders = Object.fromEntries(Array.from({ length: 150 }, (_, i) => [`x-h${i}`, 'v']));
    expect((await request(`${admin.address}/healthz`, { headers: manyHeaders })).status).toBe(431);
    // Without a metrics collector there is nothing at /metrics.
    const bare = await startAdmin();
    expect((await request(`${bare.address}/metrics`)).status).toBe(404);
  });

  it('a silent connection is closed after read_header_timeout; past max_connections new connections are closed; probes still answer', async () => {
    const admin = await startAdmin({ limits: { readHeaderTimeoutMs: 1_000, maxConnections: 4 } });
    const { port } = new URL(admin.address);
    const connect = async (): Promise<net.Socket & { closedAfter?: number }> => {
      const socket = net.connect(Number(port), '127.0.0.1');
      await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
      const opened = performance.now();
      socket.on('error', () => {});
      // Read, so that a close the server makes with a FIN (not a reset) is seen.
      socket.resume();
      socket.once('close', () => ((socket as { closedAfter?: number }).closedAfter = performance.now() - opened));
      return socket;
    };
    const silent = await Promise.all(Array.from({ length: 10 }, connect));
    // Bounded wait (6 s) until the server has closed every one of them.
    for (let i = 0; i < 60 && silent.some((socket) => socket.closedAfter === undefined); i++) await sleep(100);
    const times = silent.map((socket) => socket.closedAfter);
    for (const time of times) expect(time).toBeDefined();
    // The 6 over the cap at once; the 4 within it when they had been silent for read_header_timeout.
    const sorted = times.map((time) => time!).sort((a, b) => a - b);
    for (const time of sorted.slice(0, 6)) expect(time).toBeLessThan(800);
    for (const time of sorted.slice(6)) {
      expect(time).toBeGreaterThanOrEqual(900);
      expect(time).toBeLessThan(4_000);
    }
    expect((await request(`${admin.address}/healthz`)).status).toBe(200);
  });
});

describe('/.well-known/jwks.json', () => {
  it("serves the signer's public keys as a JWK set with Cache-Control, 404 without them", async () => {
    const keys = [{ kty: 'EC', crv: 'P-256', x: 'f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU', y: 'x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0', kid: 'k1', alg: 'ES256', use: 'sig' }];
    let current: typeof keys | undefined = keys;
    const admin = await startAdmin({ publicJwks: () => current, jwksMaxAgeSeconds: 60 });
    const answer = await request(`${admin.address}/.well-known/jwks.json`);
    expect(answer.status).toBe(200);
    expect(answer.headers['content-type']).toBe('application/jwk-set+json');
    expect(answer.headers['cache-control']).toBe('max-age=60');
    expect(JSON.parse(answer.body)).toEqual({ keys });
    current = undefined;
    expect((await request(`${admin.address}/.well-known/jwks.json`)).status).toBe(404);
    const without = await startAdmin();
    expect((await request(`${without.address}/.well-known/jwks.json`)).status).toBe(404);
  });
});

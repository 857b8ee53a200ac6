import { createPrivateKey, createPublicKey, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { RequestSigner, RequestVerifier, signingKeyFromKeyObject, silentLogger, type RunningProxy } from '@jwtproxy/core';
import { KeyRegistryClient } from '@jwtproxy/keyregistry';
import { RedisNonceStore } from '@jwtproxy/nonce-store-redis';
import { startVerifierProxy } from '@jwtproxy/reverse-proxy';
import { freeLoopbackPort, interop, startEchoService, startQuayLikeRegistry, type QuayLikeRegistry, type RunningServer } from '@jwtproxy/testkit';
import { register as promClientGlobalRegistry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JwtProxyMetrics, instrumentKeyServer, instrumentNonceStore, startAdminServer, type RunningAdminServer } from '../src/index.js';
import { samplesOf, sumOf, type Exposition } from './prometheus-text.js';
import { eventually, request, scrape } from './support.js';

const AUDIENCE = 'http://verifier.test:8082';
const VERIFIER = 'verifier_proxies[0]';
const BROKEN = 'verifier_proxies[1]';
const privateKey = createPrivateKey(readFileSync(interop.privateKeyPath));
const signerWith = (kid: string): RequestSigner =>
  new RequestSigner({
    issuer: interop.issuer,
    expirationTime: 5 * 60_000,
    maxSkew: 60_000,
    nonceLength: 32,
    keySource: { activeKey: () => signingKeyFromKeyObject(kid, privateKey) },
  });

const cleanups: Array<() => Promise<unknown>> = [];
let metrics: JwtProxyMetrics;
let admin: RunningAdminServer;
let echo: RunningServer;
let registry: QuayLikeRegistry;
let verifier: RunningProxy;
let broken: RunningProxy;

beforeAll(async () => {
  metrics = new JwtProxyMetrics();
  echo = await startEchoService();
  cleanups.push(() => echo.close());
  registry = await startQuayLikeRegistry();
  cleanups.push(() => registry.stop());
  registry.addApproved(interop.issuer, interop.keyId, createPublicKey(readFileSync(interop.publicKeyPath)).export({ format: 'jwk' }) as Record<string, unknown>);

  const redis = new RedisNonceStore({ url: 'redis://127.0.0.1:6379', keyPrefix: `admin-metrics-test:${randomUUID()}:` });
  cleanups.push(() => redis.stop());
  const verifierOf = (proxy: string) =>
    new RequestVerifier({
      audience: AUDIENCE,
      maxSkew: 60_000,
      maxTtl: 10 * 60_000,
      // Each verifier builds its own key server, as the CLI does.
      keyResolver: instrumentKeyServer(metrics, new KeyRegistryClient({ registry: registry.url }), { proxy, type: 'keyregistry' }),
      nonceStore: instrumentNonceStore(metrics, redis, { proxy, type: 'redis' }),
    });
  verifier = await startVerifierProxy({
    listenAddr: '127.0.0.1:0',
    upstream: echo.url,
    verifier: verifierOf(VERIFIER),
    shutdownTimeout: 1_000,
    logger: silentLogger,
    onAccess: metrics.onAccess(VERIFIER),
  });
  cleanups.push(() => verifier.stop());
  // Its upstream is a port nothing listens on.
  broken = await startVerifierProxy({
    listenAddr: '127.0.0.1:0',
    upstream: `http://127.0.0.1:${await freeLoopbackPort()}`,
    verifier: verifierOf(BROKEN),
    shutdownTimeout: 1_000,
    logger: silentLogger,
    onAccess: metrics.onAccess(BROKEN),
  });
  cleanups.push(() => broken.stop());
  metrics.watchConnections(VERIFIER, verifier);
  metrics.watchConnections(BROKEN, broken);
  admin = await startAdminServer({ listenAddr: '127.0.0.1:0', metrics });
  cleanups.push(() => admin.stop());
});

afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

const requests = (scraped: Exposition, labels: Record<string, string>) => sumOf(scraped, 'jwtproxy_requests_total', { proxy: VERIFIER, kind: 'request', ...labels });

describe('GET /metrics with a verifier behind it', () => {
  it('counters move with traffic: passes, refusals by reason code, upstream answers and failures, latency histograms, nonce store and key server', async () => {
    const signer = signerWith(interop.keyId);
    const before = await scrape(admin.address);
    expect(requests(before, {})).toBe(0);

    for (let i = 0; i < 4; i++) {
      expect((await request(`${verifier.address}/invoices?customer=42`, { headers: { authorization: await signer.authorizationFor(AUDIENCE) } })).status).toBe(200);
    }
    // The upstream's own 503 is a pass: the proxy did its work.
    expect((await request(`${verifier.address}/status/503`, { headers: { authorization: await signer.authorizationFor(AUDIENCE) } })).status).toBe(503);
    // No token at all, twice.
    for (let i = 0; i < 2; i++) expect((await request(`${verifier.address}/invoices`)).status).toBe(403);
    // A replayed token.
    const once = await signer.authorizationFor(AUDIENCE);
    expect((await request(`${verifier.address}/a`, { headers: { authorization: once } })).status).toBe(200);
    expect((await request(`${verifier.address}/a`, { headers: { authorization: once } })).status).toBe(403);
    // A key the registry does not know.
    const unknownKid = `kid-${randomUUID()}`;
    expect((await request(`${verifier.address}/b`, { headers: { authorization: await signerWith(unknownKid).authorizationFor(AUDIENCE) } })).status).toBe(403);
    // An upstream that cannot be reached.
    expect((await request(`${broken.address}/c`, { headers: { authorization: await signer.authorizationFor(AUDIENCE) } })).status).toBe(502);

    const after = await scrape(admin.address);
    expect(after.types.get('jwtproxy_requests_total')).toBe('counter');
    expect(after.types.get('jwtproxy_proxy_duration_seconds')).toBe('histogram');
    expect(requests(after, { verdict: 'passed', reason: 'none', status_class: '2xx' })).toBe(5);
    expect(requests(after, { verdict: 'passed', reason: 'none', status_class: '5xx' })).toBe(1);
    expect(requests(after, { verdict: 'refused', reason: 'ERR_TOKEN_PARSE', status_class: '4xx' })).toBe(2);
    expect(requests(after, { verdict: 'refused', reason: 'ERR_INVALID_CLAIM', status_class: '4xx' })).toBe(1);
    expect(requests(after, { verdict: 'refused', reason: 'ERR_KEY_NOT_FOUND', status_class: '4xx' })).toBe(1);
    expect(requests(after, {})).toBe(10);
    expect(sumOf(after, 'jwtproxy_requests_total', { proxy: BROKEN, verdict: 'failed', reason: 'ERR_UPSTREAM', status_class: '5xx' })).toBe(1);
    expect(sumOf(after, 'jwtproxy_upstream_errors_total', { proxy: BROKEN, kind: 'request' })).toBe(1);
    expect(sumOf(after, 'jwtproxy_upstream_errors_total', { proxy: VERIFIER })).toBe(0);

    // One observation per request: the proxy's own time by verdict, the upstream's for each answered one.
    expect(sumOf(after, 'jwtproxy_proxy_duration_seconds_count', { proxy: VERIFIER, verdict: 'passed' })).toBe(6);
    expect(sumOf(after, 'jwtproxy_proxy_duration_seconds_count', { proxy: VERIFIER, verdict: 'refused' })).toBe(4);
    expect(sumOf(after, 'jwtproxy_upstream_duration_seconds_count', { proxy: VERIFIER })).toBe(6);
    const ownSum = sumOf(after, 'jwtproxy_proxy_duration_seconds_sum', { proxy: VERIFIER });
    expect(ownSum).toBeGreaterThan(0);
    expect(ownSum).toBeLessThan(10);
    const inf = sumOf(after, 'jwtproxy_upstream_duration_seconds_bucket', { proxy: VERIFIER, le: '+Inf' });
    expect(inf).toBe(6);

    // The nonce store: 6 fresh jtis, 1 replay, each timed; the key server: 7 found, 1 unknown.
    const nonce = (outcome: string) => sumOf(after, 'jwtproxy_nonce_store_claims_total', { proxy: VERIFIER, type: 'redis', outcome });
    expect([nonce('claimed'), nonce('replayed'), nonce('unavailable'), nonce('full'), nonce('error')]).toEqual([6, 1, 0, 0, 0]);
    expect(sumOf(after, 'jwtproxy_nonce_store_claim_duration_seconds_count', { proxy: VERIFIER })).toBe(7);
    const lookups = (outcome: string) => sumOf(after, 'jwtproxy_key_server_lookups_total', { proxy: VERIFIER, type: 'keyregistry', outcome });
    expect([lookups('found'), lookups('not_found'), lookups('unavailable')]).toEqual([7, 1, 0]);
    // The key registry reader: one GET for the known key, the rest from its cache; one GET for the unknown kid.
    expect(sumOf(after, 'jwtproxy_key_registry_fetches_total', { proxy: VERIFIER, outcome: 'key' })).toBe(1);
    expect(sumOf(after, 'jwtproxy_key_registry_fetches_total', { proxy: VERIFIER, outcome: 'not_found' })).toBe(1);
    expect(sumOf(after, 'jwtproxy_key_registry_cache_hits_total', { proxy: VERIFIER, cache: 'key' })).toBe(6);
    expect(sumOf(after, 'jwtproxy_key_registry_fetch_duration_seconds_count', { proxy: VERIFIER })).toBe(2);
    // Each verifier's reader asked once.
    expect(registry.lookupsOf(interop.issuer, interop.keyId)).toBe(2);

    // A second token of the unknown kid is answered from the negative cache, without a GET.
    expect((await request(`${verifier.address}/b`, { headers: { authorization: await signerWith(unknownKid).authorizationFor(AUDIENCE) } })).status).toBe(403);
    const later = await scrape(admin.address);
    expect(sumOf(later, 'jwtproxy_key_registry_cache_hits_total', { proxy: VERIFIER, cache: 'negative' })).toBe(1);
    expect(sumOf(later, 'jwtproxy_key_registry_fetches_total', { proxy: VERIFIER, outcome: 'not_found' })).toBe(1);

    // No label carries a path, a query, a kid or a client: only bounded values.
    const labelValues = new Set(after.samples.flatMap((sample) => Object.values(sample.labels)));
    for (const value of labelValues) expect(value).not.toMatch(/invoices|customer|status\/|kid-|127\.0\.0\.1/);
    for (const value of labelValues) expect(value.length).toBeLessThan(40);
    // Every metric of ours is prefixed; the process metrics are there under their standard names.
    const families = new Set(after.samples.map((sample) => sample.name.replace(/_(bucket|sum|count)$/, '')));
    for (const family of families) expect(family).toMatch(/^(jwtproxy_|process_|nodejs_)/);
    expect(samplesOf(after, 'process_cpu_user_seconds_total')).toHaveLength(1);
    expect(samplesOf(after, 'nodejs_eventloop_lag_seconds')).toHaveLength(1);
  });

  it('jwtproxy_open_connections follows the connections open to each proxy', async () => {
    const open = async (): Promise<number> => sumOf(await scrape(admin.address), 'jwtproxy_open_connections', { proxy: VERIFIER });
    expect(await eventually(open, 0)).toBe(0);
    const sockets = await Promise.all(
      Array.from({ length: 3 }, async () => {
        const socket = net.connect(Number(new URL(verifier.address).port), '127.0.0.1');
        await new Promise((resolve) => socket.once('connect', resolve));
        return socket;
      }),
    );
    expect(await eventually(open, 3)).toBe(3);
    expect(sumOf(await scrape(admin.address), 'jwtproxy_open_connections', { proxy: BROKEN })).toBe(0);
    for (const socket of sockets) socket.destroy();
    expect(await eventually(open, 0)).toBe(0);
    expect(sumOf(await scrape(admin.address), 'jwtproxy_open_tunnels', { proxy: VERIFIER })).toBe(0);
  });
});

describe('two runtimes in one process', () => {
  it('each has its own registry: no clash, counts apart, and prom-client’s global registry stays empty', async () => {
    const first = new JwtProxyMetrics();
    const second = new JwtProxyMetrics();
    const record = {
      kind: 'request',
      method: 'GET',
      host: 'x',
      path: '/',
      client: undefined,
      status: 200,
      upstreamStatus: 200,
      bytesIn: 0,
      bytesOut: 0,
      durationMs: 2,
      upstreamMs: 1,
      verdict: 'passed',
      reason: undefined,
      facts: undefined,
      token: undefined,
    } as const;
    first.onAccess('signer_proxy')(record);
    first.onAccess('signer_proxy')(record);
    second.onAccess('signer_proxy')(record);
    const { parsePrometheusText } = await import('./prometheus-text.js');
    const one = parsePrometheusText(await first.render());
    const two = parsePrometheusText(await second.render());
    expect(sumOf(one, 'jwtproxy_requests_total')).toBe(2);
    expect(sumOf(two, 'jwtproxy_requests_total')).toBe(1);
    expect(samplesOf(two, 'process_cpu_user_seconds_total')).toHaveLength(1);
    expect(await promClientGlobalRegistry.metrics()).not.toMatch(/jwtproxy_|process_cpu/);
  });
});

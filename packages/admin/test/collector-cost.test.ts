import type { AccessRecord } from '@jwtproxy/proxy-engine';
import { describe, expect, it } from 'vitest';
import { JwtProxyMetrics } from '../src/index.js';

/**
 * What the collector costs per request: onAccess calls per second for a realistic mix (mostly
 * passes, some refusals by a few reasons, an upstream failure now and then). The lead's `pnpm bench`
 * measures the verifier with it on and off; this is the collector alone.
 */
function mix(): AccessRecord[] {
  const base: AccessRecord = {
    kind: 'request',
    method: 'GET',
    host: 'service:8080',
    path: '/invoices',
    client: '10.0.0.1',
    status: 200,
    upstreamStatus: 200,
    bytesIn: 120,
    bytesOut: 2048,
    durationMs: 1.4,
    upstreamMs: 1.1,
    verdict: 'passed',
    reason: undefined,
    facts: undefined,
    token: { iss: 'svc', kid: 'k1', sub: undefined },
  };
  const records: AccessRecord[] = [];
  for (let i = 0; i < 1000; i++) {
    if (i % 50 === 1) records.push({ ...base, status: 403, upstreamStatus: undefined, upstreamMs: undefined, verdict: 'refused', reason: 'ERR_INVALID_CLAIM', durationMs: 0.2 });
    else if (i % 50 === 2) records.push({ ...base, status: 403, upstreamStatus: undefined, upstreamMs: undefined, verdict: 'refused', reason: 'ERR_TOKEN_PARSE', durationMs: 0.1 });
    else if (i % 200 === 3) records.push({ ...base, status: 502, upstreamStatus: undefined, upstreamMs: undefined, verdict: 'failed', reason: 'ERR_UPSTREAM', durationMs: 3 });
    else records.push({ ...base, durationMs: 1 + (i % 7) / 10, upstreamMs: 0.8 + (i % 5) / 10 });
  }
  return records;
}

describe('the collector on the hot path', () => {
  it('counts over a million access records a second (under 1 µs each)', () => {
    const metrics = new JwtProxyMetrics({ processMetrics: false });
    const onAccess = metrics.onAccess('verifier_proxies[0]');
    const records = mix();
    for (let i = 0; i < 100; i++) for (const record of records) onAccess(record); // warm-up
    const rounds = 1_000;
    const started = performance.now();
    for (let i = 0; i < rounds; i++) for (const record of records) onAccess(record);
    const seconds = (performance.now() - started) / 1000;
    const perSecond = (rounds * records.length) / seconds;
    console.log(`onAccess: ${(perSecond / 1e6).toFixed(2)} M records/s, ${((seconds * 1e9) / (rounds * records.length)).toFixed(0)} ns each`);
    expect(perSecond).toBeGreaterThan(1_000_000);
  });
});

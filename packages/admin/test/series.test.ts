import { Counter, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { BatchedCounter, BucketHistogram } from '../src/series.js';

const BUCKETS = [0.001, 0.01, 0.1, 1];
const VALUES = [0.0005, 0.001, 0.002, 0.05, 0.5, 0.7, 3, 12];

describe('the per-request series render as prom-client’s own metrics do', () => {
  it('BucketHistogram: the same text as a prom-client Histogram fed the same observations (bucket edges inclusive, +Inf, sum, count)', async () => {
    const ours = new Registry();
    const theirs = new Registry();
    const histogram = new BucketHistogram({ name: 'x_seconds', help: 'x', labelNames: ['proxy', 'verdict'], buckets: BUCKETS, registers: [ours] });
    const reference = new Histogram({ name: 'x_seconds', help: 'x', labelNames: ['proxy', 'verdict'], buckets: BUCKETS, registers: [theirs] });
    const a = histogram.series({ proxy: 'signer_proxy', verdict: 'passed' });
    const b = histogram.series({ proxy: 'verifier_proxies[0]', verdict: 'refused' });
    for (const value of VALUES) {
      a.observe(value);
      reference.observe({ proxy: 'signer_proxy', verdict: 'passed' }, value);
    }
    b.observe(0.01);
    reference.observe({ proxy: 'verifier_proxies[0]', verdict: 'refused' }, 0.01);
    expect(await ours.metrics()).toBe(await theirs.metrics());
    histogram.reset();
    reference.reset();
    // After a reset prom-client forgets its label sets; ours keeps them at zero.
    expect(await ours.metrics()).toMatch(/x_seconds_count\{proxy="signer_proxy",verdict="passed"\} 0/);
  });

  it('BatchedCounter: increments show at the next scrape, exactly, and series exist at 0 from their creation', async () => {
    const ours = new Registry();
    const theirs = new Registry();
    const counter = new BatchedCounter({ name: 'y_total', help: 'y', labelNames: ['proxy', 'outcome'], registers: [ours] });
    const reference = new Counter({ name: 'y_total', help: 'y', labelNames: ['proxy', 'outcome'], registers: [theirs] });
    const ok = counter.series({ proxy: 'p', outcome: 'ok' });
    const failed = counter.series({ proxy: 'p', outcome: 'failed' });
    reference.inc({ proxy: 'p', outcome: 'ok' }, 0);
    reference.inc({ proxy: 'p', outcome: 'failed' }, 0);
    expect(await ours.metrics()).toBe(await theirs.metrics());
    for (let i = 0; i < 1000; i++) ok.inc();
    failed.inc(2.5);
    reference.inc({ proxy: 'p', outcome: 'ok' }, 1000);
    reference.inc({ proxy: 'p', outcome: 'failed' }, 2.5);
    expect(await ours.metrics()).toBe(await theirs.metrics());
    // The same label set asked again is the same series; a second scrape adds nothing twice.
    counter.series({ proxy: 'p', outcome: 'ok' }).inc();
    reference.inc({ proxy: 'p', outcome: 'ok' });
    await ours.metrics();
    await theirs.metrics();
    expect(await ours.metrics()).toBe(await theirs.metrics());
  });
});

import type { AccessRecord } from '@jwtproxy/proxy-engine';
import { AggregatorRegistry, Gauge, Registry, collectDefaultMetrics, type MetricObjectWithValues, type MetricValue } from 'prom-client';
import { reasonLabel, statusClassLabel, statusIndex } from './labels.js';
import { BatchedCounter, BucketHistogram, type CounterSeries, type HistogramSeries } from './series.js';

/** Every metric of ours starts with this. */
export const METRIC_PREFIX = 'jwtproxy_';

/** Seconds: the proxy's own work is sub-millisecond for most requests; body relay can take longer. */
const OWN_TIME_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5];
/** Seconds: services answer in milliseconds to seconds. */
const UPSTREAM_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
/** Seconds: one Redis round trip, one key registry GET. */
const DEPENDENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
/** Seconds: forging one certificate (an ASN.1 build and an RSA signature). */
const FORGING_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];

const KIND_INDEX: Readonly<Record<AccessRecord['kind'], number>> = { request: 0, upgrade: 1, tunnel: 2 };
const VERDICT_INDEX: Readonly<Record<AccessRecord['verdict'], number>> = { passed: 0, refused: 1, failed: 2 };

export interface JwtProxyMetricsOptions {
  /**
   * Node.js process metrics (CPU, memory, event loop lag, GC, handles) with their standard names
   * (`process_cpu_seconds_total`, `nodejs_eventloop_lag_seconds`, …); default true.
   */
  processMetrics?: boolean;
  /**
   * The metrics of the other runtimes of this process (worker threads: each one's `snapshot()`),
   * read at each scrape and summed with these (prom-client's AggregatorRegistry): `render()`
   * then shows the process as a whole.
   */
  others?: () => Promise<MetricSnapshot[]>;
}

/** One runtime's metrics as plain data (prom-client's getMetricsAsJSON), to send between threads. */
export type MetricSnapshot = Array<MetricObjectWithValues<MetricValue<string>>>;

/** Where open connection counts are read at each scrape: a RunningProxy of the signer or a verifier. */
export interface ConnectionCounts {
  readonly openConnections?: number | undefined;
  readonly openTunnels?: number | undefined;
}


/**
 * The metrics of one jwtproxy runtime, in a Prometheus registry of its own (never prom-client's
 * global one, so that two runtimes in one process, or a host application's own metrics, do not
 * clash). The proxies feed it through `onAccess`; the components through the instrumentation
 * helpers (see instrument.ts); the admin server renders `registry`.
 */
export class JwtProxyMetrics {
  readonly registry = new Registry();
  readonly requests: BatchedCounter<'proxy' | 'kind' | 'verdict' | 'reason' | 'status_class'>;
  readonly ownTime: BucketHistogram<'proxy' | 'verdict'>;
  readonly upstreamTime: BucketHistogram<'proxy'>;
  readonly upstreamErrors: BatchedCounter<'proxy' | 'kind'>;
  readonly openConnections: Gauge<'proxy'>;
  readonly openTunnels: Gauge<'proxy'>;
  readonly nonceClaims: BatchedCounter<'proxy' | 'type' | 'outcome'>;
  readonly nonceClaimTime: BucketHistogram<'proxy' | 'type'>;
  readonly noncePings: BatchedCounter<'proxy' | 'type' | 'outcome'>;
  readonly keyLookups: BatchedCounter<'proxy' | 'type' | 'outcome'>;
  readonly keyLookupTime: BucketHistogram<'proxy' | 'type'>;
  readonly keyCacheHits: BatchedCounter<'proxy' | 'cache'>;
  readonly keyFetches: BatchedCounter<'proxy' | 'outcome'>;
  readonly keyFetchTime: BucketHistogram<'proxy'>;
  readonly keyLookupsLimited: BatchedCounter<'proxy'>;
  readonly signerActiveKey: Gauge<'proxy'>;
  readonly signerKeyRotations: BatchedCounter<'proxy'>;
  readonly certificateCacheSize: Gauge<'proxy'>;
  readonly certificateForgingTime: BucketHistogram<'proxy' | 'outcome'>;
  readonly #connectionSources = new Map<string, ConnectionCounts>();
  readonly #keyProbes = new Map<string, () => void>();
  readonly #others: (() => Promise<MetricSnapshot[]>) | undefined;

  constructor(options: JwtProxyMetricsOptions = {}) {
    this.#others = options.others;
    const registers = [this.registry];
    const sources = this.#connectionSources;
    const keyProbes = this.#keyProbes;
    this.requests = new BatchedCounter({
      name: 'jwtproxy_requests_total',
      help: 'Requests, upgrades and CONNECT tunnels that ended, by proxy, kind, verdict, reason (error code) and the status class the client got.',
      labelNames: ['proxy', 'kind', 'verdict', 'reason', 'status_class'],
      registers,
    });
    this.ownTime = new BucketHistogram({
      name: 'jwtproxy_proxy_duration_seconds',
      help: "The proxy's own time per request: its whole duration less the upstream's time to its answer head (verification or signing, and relaying the bodies).",
      labelNames: ['proxy', 'verdict'],
      buckets: OWN_TIME_BUCKETS,
      registers,
    });
    this.upstreamTime = new BucketHistogram({
      name: 'jwtproxy_upstream_duration_seconds',
      help: "From sending a request upstream to the upstream's answer head.",
      labelNames: ['proxy'],
      buckets: UPSTREAM_BUCKETS,
      registers,
    });
    this.upstreamErrors = new BatchedCounter({
      name: 'jwtproxy_upstream_errors_total',
      help: 'Requests and upgrades whose upstream could not be reached or failed before answering (answered 502).',
      labelNames: ['proxy', 'kind'],
      registers,
    });
    this.openConnections = new Gauge({
      name: 'jwtproxy_open_connections',
      help: 'HTTP connections open now (for the signer, also those inside CONNECT tunnels).',
      labelNames: ['proxy'],
      registers,
      collect() {
        for (const [proxy, source] of sources) if (source.openConnections !== undefined) this.set({ proxy }, source.openConnections);
      },
    });
    this.openTunnels = new Gauge({
      name: 'jwtproxy_open_tunnels',
      help: 'WebSocket upgrades and CONNECT tunnels open now.',
      labelNames: ['proxy'],
      registers,
      collect() {
        for (const [proxy, source] of sources) if (source.openTunnels !== undefined) this.set({ proxy }, source.openTunnels);
      },
    });
    this.nonceClaims = new BatchedCounter({
      name: 'jwtproxy_nonce_store_claims_total',
      help: 'Nonce store claims by outcome: claimed (a fresh jti), replayed, or a failure (unavailable, full, error).',
      labelNames: ['proxy', 'type', 'outcome'],
      registers,
    });
    this.nonceClaimTime = new BucketHistogram({
      name: 'jwtproxy_nonce_store_claim_duration_seconds',
      help: 'Time of one nonce store claim, whatever its outcome.',
      labelNames: ['proxy', 'type'],
      buckets: DEPENDENCY_BUCKETS,
      registers,
    });
    this.noncePings = new BatchedCounter({
      name: 'jwtproxy_nonce_store_pings_total',
      help: 'Readiness pings of the nonce store by outcome (ok, failed).',
      labelNames: ['proxy', 'type', 'outcome'],
      registers,
    });
    this.keyLookups = new BatchedCounter({
      name: 'jwtproxy_key_server_lookups_total',
      help: 'Public key lookups of a verifier by outcome: found, not_found, expired, unavailable, error.',
      labelNames: ['proxy', 'type', 'outcome'],
      registers,
    });
    this.keyLookupTime = new BucketHistogram({
      name: 'jwtproxy_key_server_lookup_duration_seconds',
      help: 'Time of one public key lookup (a cache hit or a fetch), whatever its outcome.',
      labelNames: ['proxy', 'type'],
      buckets: DEPENDENCY_BUCKETS,
      registers,
    });
    this.keyCacheHits = new BatchedCounter({
      name: 'jwtproxy_key_registry_cache_hits_total',
      help: 'keyregistry lookups answered from memory: a cached key (cache="key") or a remembered 404/409/403 (cache="negative").',
      labelNames: ['proxy', 'cache'],
      registers,
    });
    this.keyFetches = new BatchedCounter({
      name: 'jwtproxy_key_registry_fetches_total',
      help: 'keyregistry GETs by outcome: key, not_found, expired, pending, unusable, unavailable (5xx or other status), error (no answer).',
      labelNames: ['proxy', 'outcome'],
      registers,
    });
    this.keyFetchTime = new BucketHistogram({
      name: 'jwtproxy_key_registry_fetch_duration_seconds',
      help: 'Time of one keyregistry GET, whatever its outcome.',
      labelNames: ['proxy'],
      buckets: DEPENDENCY_BUCKETS,
      registers,
    });
    this.keyLookupsLimited = new BatchedCounter({
      name: 'jwtproxy_key_registry_lookups_limited_total',
      help: 'Lookups of keys not in the cache refused by the per-issuer limit (unknown_kid_rate) without asking the registry.',
      labelNames: ['proxy'],
      registers,
    });
    this.signerActiveKey = new Gauge({
      name: 'jwtproxy_signer_active_key',
      help: '1 when the signer has a key to sign with, 0 when not (an autogenerated key awaiting approval).',
      labelNames: ['proxy'],
      registers,
      // Summed over worker threads it would count workers; every one of them has a key or not.
      aggregator: 'min',
      collect() {
        for (const probe of keyProbes.values()) probe();
      },
    });
    this.signerKeyRotations = new BatchedCounter({
      name: 'jwtproxy_signer_key_rotations_total',
      help: "Times the signer's active key changed to another key (seen while signing or at a scrape).",
      labelNames: ['proxy'],
      registers,
      // Every worker sees the one rotation of the process.
      aggregator: 'max',
    });
    this.certificateCacheSize = new Gauge({
      name: 'jwtproxy_signer_certificate_cache_size',
      help: 'Hosts with a forged certificate cached (TLS interception).',
      labelNames: ['proxy'],
      registers,
    });
    this.certificateForgingTime = new BucketHistogram({
      name: 'jwtproxy_signer_certificate_forging_seconds',
      help: 'Time to forge one certificate for an intercepted host, by outcome (ok, failed).',
      labelNames: ['proxy', 'outcome'],
      buckets: FORGING_BUCKETS,
      registers,
    });
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
  }

  /** `text/plain; version=0.0.4; charset=utf-8`. */
  get contentType(): string {
    return this.registry.contentType;
  }

  /** Every metric in the Prometheus text format. */
  async render(): Promise<string> {
    if (!this.#others) return this.registry.metrics();
    const [own, others] = await Promise.all([this.snapshot(), this.#others()]);
    return AggregatorRegistry.aggregate([own, ...others]).metrics();
  }

  /** These metrics as plain data, for a primary thread to sum with its own (`others`). */
  snapshot(): Promise<MetricSnapshot> {
    return this.registry.getMetricsAsJSON() as Promise<MetricSnapshot>;
  }

  /**
   * The AccessRecord consumer of one proxy (`signer_proxy`, `verifier_proxies[0]`): give it to the
   * proxy's `onAccess`. Per record: one map lookup and a few additions; label values come from fixed
   * sets (kind, verdict, error code, status class), never from the request.
   */
  onAccess(proxy: string): (record: AccessRecord) => void {
    const ownTime: Record<AccessRecord['verdict'], HistogramSeries> = {
      passed: this.ownTime.series({ proxy, verdict: 'passed' }),
      refused: this.ownTime.series({ proxy, verdict: 'refused' }),
      failed: this.ownTime.series({ proxy, verdict: 'failed' }),
    };
    const upstreamTime = this.upstreamTime.series({ proxy });
    const upstreamErrors: Record<AccessRecord['kind'], CounterSeries> = {
      request: this.upstreamErrors.series({ proxy, kind: 'request' }),
      upgrade: this.upstreamErrors.series({ proxy, kind: 'upgrade' }),
      tunnel: this.upstreamErrors.series({ proxy, kind: 'tunnel' }),
    };
    const requests = this.requests;
    // One slot per (kind, verdict, status class), each a map from error code to its series: a pass
    // costs two small array lookups, no string built. Only codes of the fixed set are kept as keys.
    const slots: Array<Map<string | undefined, CounterSeries> | undefined> = Array.from({ length: 3 * 3 * 6 }, () => undefined);
    const seriesFor = (record: AccessRecord, slot: number): CounterSeries => {
      const reason = reasonLabel(record.reason);
      const series = requests.series({ proxy, kind: record.kind, verdict: record.verdict, reason, status_class: statusClassLabel(record.status) });
      if (reason === (record.reason ?? 'none')) (slots[slot] ??= new Map()).set(record.reason, series);
      return series;
    };
    return (record) => {
      const slot = (KIND_INDEX[record.kind] * 3 + VERDICT_INDEX[record.verdict]) * 6 + statusIndex(record.status);
      const counter = slots[slot]?.get(record.reason) ?? seriesFor(record, slot);
      counter.inc();
      const reason = record.reason;
      if (reason === 'ERR_UPSTREAM') upstreamErrors[record.kind].inc();
      // Upgrades and tunnels last as long as their connection: their time says nothing of ours.
      if (record.kind !== 'request') return;
      const upstreamMs = record.upstreamMs;
      if (upstreamMs !== undefined) upstreamTime.observe(upstreamMs / 1000);
      ownTime[record.verdict].observe(Math.max(0, record.durationMs - (upstreamMs ?? 0)) / 1000);
    };
  }

  /** Reads `openConnections` and `openTunnels` of `source` at each scrape (a proxy started later may replace it). */
  watchConnections(proxy: string, source: ConnectionCounts): void {
    this.#connectionSources.set(proxy, source);
  }

  /** Runs `probe` at each scrape, before the signer's key gauge is read (instrument.ts sets it). */
  addKeyProbe(proxy: string, probe: () => void): void {
    this.#keyProbes.set(proxy, probe);
  }
}

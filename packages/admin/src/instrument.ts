/**
 * Decorators for the seams: the CLI wraps what it builds, and the proxies use the wrapped one.
 * Each wrapper keeps the seam's contract (same answers, same errors) and adds only counting.
 */
import type { NonceStore, PrivateKeySource, PublicKeyResolver, SigningKey, UnixSeconds, VerificationKey } from '@jwtproxy/core';
import type { JwtProxyMetrics } from './metrics.js';
import type { CounterSeries, HistogramSeries } from './series.js';

/** Names a component in labels: the proxy it serves and its configured type (`redis`, `keyregistry`). */
export interface ComponentLabels {
  proxy: string;
  type: string;
}

function codeOf(error: unknown): unknown {
  return typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined;
}

const NONCE_OUTCOMES = ['claimed', 'replayed', 'unavailable', 'full', 'error'] as const;
type NonceOutcome = (typeof NONCE_OUTCOMES)[number];

function nonceFailure(error: unknown): NonceOutcome {
  switch (codeOf(error)) {
    case 'ERR_NONCE_STORE_UNAVAILABLE':
      return 'unavailable';
    case 'ERR_NONCE_STORE_FULL':
      return 'full';
    default:
      return 'error';
  }
}

const LOOKUP_OUTCOMES = ['found', 'not_found', 'expired', 'unavailable', 'error'] as const;
type LookupOutcome = (typeof LOOKUP_OUTCOMES)[number];

function keyFailure(error: unknown): LookupOutcome {
  switch (codeOf(error)) {
    case 'ERR_KEY_NOT_FOUND':
      return 'not_found';
    case 'ERR_KEY_EXPIRED':
      return 'expired';
    case 'ERR_KEY_SERVER_UNAVAILABLE':
      return 'unavailable';
    default:
      return 'error';
  }
}

/**
 * Counts and times `pending` on a branch of its own: the caller gets the seam's own promise, so a
 * wrapper adds no promise and no turn of the microtask queue to the request's path (an async
 * wrapper added two of each per seam, on every request).
 */
function countBeside<T>(pending: Promise<T>, time: HistogramSeries, onValue: (value: T) => void, onError: (error: unknown) => void): void {
  const started = performance.now();
  // Also a thenable that is not a native promise: Promise.resolve adopts it.
  Promise.resolve(pending).then(
    (value) => {
      time.observe((performance.now() - started) / 1000);
      onValue(value);
    },
    (error: unknown) => {
      time.observe((performance.now() - started) / 1000);
      onError(error);
    },
  );
}

/** A NonceStore that counts its claims by outcome, times them, and counts readiness pings. */
export function instrumentNonceStore(metrics: JwtProxyMetrics, store: NonceStore, labels: ComponentLabels): NonceStore {
  const { proxy, type } = labels;
  // Every outcome is exported from the start (at 0), so that rate() sees the first failure.
  const outcomes = Object.fromEntries(NONCE_OUTCOMES.map((outcome) => [outcome, metrics.nonceClaims.series({ proxy, type, outcome })])) as Record<NonceOutcome, CounterSeries>;
  const time = metrics.nonceClaimTime.series({ proxy, type });
  const claimed = (fresh: boolean): void => (fresh ? outcomes.claimed : outcomes.replayed).inc();
  const failed = (error: unknown): void => outcomes[nonceFailure(error)].inc();
  const wrapped: NonceStore = {
    claim(jti: string, expiresAt: UnixSeconds): Promise<boolean> {
      let pending: Promise<boolean>;
      try {
        pending = store.claim(jti, expiresAt);
      } catch (error) {
        failed(error);
        return Promise.reject(error);
      }
      countBeside(pending, time, claimed, failed);
      return pending;
    },
  };
  if (store.ping) {
    const ping = store.ping.bind(store);
    const pingOk = metrics.noncePings.series({ proxy, type, outcome: 'ok' });
    const pingFailed = metrics.noncePings.series({ proxy, type, outcome: 'failed' });
    wrapped.ping = async () => {
      try {
        await ping();
        pingOk.inc();
      } catch (error) {
        pingFailed.inc();
        throw error;
      }
    };
  }
  if (store.stop) wrapped.stop = store.stop.bind(store);
  return wrapped;
}

/** What `KeyRegistryClient.observe` takes (@jwtproxy/keyregistry), by shape: admin does not depend on it. */
export interface KeyServerObserver {
  cacheHit(kind: 'key' | 'negative'): void;
  limited(): void;
  fetched(outcome: string, durationMs: number): void;
}

const FETCH_OUTCOMES = ['key', 'not_found', 'expired', 'pending', 'unusable', 'unavailable', 'error'];

function isObservable(resolver: PublicKeyResolver): resolver is PublicKeyResolver & { observe(observer: KeyServerObserver): void } {
  return typeof (resolver as { observe?: unknown }).observe === 'function';
}

/**
 * A PublicKeyResolver that counts lookups by outcome and times them. When the resolver reports
 * its cache and fetches (`observe`, as the keyregistry key server does), those are counted too.
 */
export function instrumentKeyServer(metrics: JwtProxyMetrics, resolver: PublicKeyResolver, labels: ComponentLabels): PublicKeyResolver {
  const { proxy, type } = labels;
  const outcomes = Object.fromEntries(LOOKUP_OUTCOMES.map((outcome) => [outcome, metrics.keyLookups.series({ proxy, type, outcome })])) as Record<LookupOutcome, CounterSeries>;
  const time = metrics.keyLookupTime.series({ proxy, type });
  if (isObservable(resolver)) {
    const keyHits = metrics.keyCacheHits.series({ proxy, cache: 'key' });
    const negativeHits = metrics.keyCacheHits.series({ proxy, cache: 'negative' });
    const limited = metrics.keyLookupsLimited.series({ proxy });
    const fetches = new Map(FETCH_OUTCOMES.map((outcome) => [outcome, metrics.keyFetches.series({ proxy, outcome })]));
    const fetchTime = metrics.keyFetchTime.series({ proxy });
    resolver.observe({
      cacheHit: (kind) => (kind === 'key' ? keyHits : negativeHits).inc(),
      limited: () => limited.inc(),
      fetched: (outcome, durationMs) => {
        (fetches.get(outcome) ?? fetches.get('error')!).inc();
        fetchTime.observe(durationMs / 1000);
      },
    });
  }
  const found = (): void => outcomes.found.inc();
  const failed = (error: unknown): void => outcomes[keyFailure(error)].inc();
  const wrapped: PublicKeyResolver = {
    resolve(issuer: string, kid: string): Promise<VerificationKey> {
      let pending: Promise<VerificationKey>;
      try {
        pending = resolver.resolve(issuer, kid);
      } catch (error) {
        failed(error);
        return Promise.reject(error);
      }
      countBeside(pending, time, found, failed);
      return pending;
    },
  };
  if (resolver.stop) wrapped.stop = resolver.stop.bind(resolver);
  return wrapped;
}

/**
 * A PrivateKeySource that reports whether the signer has a key (`jwtproxy_signer_active_key`, read
 * at each scrape) and counts rotations: each change of the active kid, seen while signing or at
 * a scrape. The first key (say, once an autogenerated key is approved) is not a rotation.
 */
export function instrumentPrivateKeySource(metrics: JwtProxyMetrics, source: PrivateKeySource, labels: { proxy: string }): PrivateKeySource {
  const { proxy } = labels;
  const rotations = metrics.signerKeyRotations.series({ proxy });
  let lastKid: string | undefined;
  const seen = (kid: string): void => {
    if (lastKid !== undefined) rotations.inc();
    lastKid = kid;
  };
  metrics.addKeyProbe(proxy, () => {
    let active = 0;
    try {
      const { kid } = source.activeKey();
      if (kid !== lastKid) seen(kid);
      active = 1;
    } catch {
      // No key yet (NoActiveKeyError) or a failing source: not active.
    }
    metrics.signerActiveKey.set({ proxy }, active);
  });
  const wrapped: PrivateKeySource = {
    activeKey(): SigningKey {
      const key = source.activeKey();
      if (key.kid !== lastKid) seen(key.kid);
      return key;
    },
  };
  if (source.stop) wrapped.stop = source.stop.bind(source);
  return wrapped;
}

/** What the signer's CertificateForger tells its observer (@jwtproxy/forward-proxy), by shape. */
export interface CertificateObserver {
  forged(event: { durationMs: number; failed: boolean; cachedHosts: number }): void;
}

/** The signer's certificate observer: cache size and forging time (`signerProxyOptions.certificateObserver`). */
export function certificateObserver(metrics: JwtProxyMetrics, labels: { proxy: string }): CertificateObserver {
  const { proxy } = labels;
  const ok = metrics.certificateForgingTime.series({ proxy, outcome: 'ok' });
  const failed = metrics.certificateForgingTime.series({ proxy, outcome: 'failed' });
  const size = metrics.certificateCacheSize.labels(proxy);
  size.set(0);
  return {
    forged(event) {
      (event.failed ? failed : ok).observe(event.durationMs / 1000);
      size.set(event.cachedHosts);
    },
  };
}

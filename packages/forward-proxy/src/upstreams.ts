import { LRUCache } from 'lru-cache';
import { Pool } from 'undici';

/** How the signer checks the certificates of HTTPS upstreams. */
export interface UpstreamTlsPolicy {
  /** PEM certificates that replace the system roots (Go `trusted_certificates`); undefined: system roots. */
  trustedCertificates: string[] | undefined;
  /** Go `insecure_skip_verify`: accept any certificate. */
  insecureSkipVerify: boolean;
}

/** TLS options for a connection to an HTTPS upstream under `policy`. */
export function upstreamTlsOptions({ trustedCertificates, insecureSkipVerify }: UpstreamTlsPolicy): { rejectUnauthorized: boolean; ca?: string[] } {
  return { rejectUnauthorized: !insecureSkipVerify, ...(trustedCertificates ? { ca: trustedCertificates } : {}) };
}

/**
 * Keep-alive connection pools to upstreams, one per origin, in a bounded LRU so a signer that
 * talks to many hosts does not keep a pool for each forever. An evicted pool closes gracefully:
 * requests in flight on it finish.
 */
export class UpstreamPools {
  readonly #pools: LRUCache<string, Pool>;
  readonly #tls: UpstreamTlsPolicy;
  readonly #closing = new Set<Promise<void>>();

  constructor(tls: UpstreamTlsPolicy, maxOrigins = 512) {
    this.#tls = tls;
    this.#pools = new LRUCache<string, Pool>({
      max: maxOrigins,
      dispose: (pool) => this.#track(pool.close()),
    });
  }

  #track(closing: Promise<void>): void {
    const settled = closing.catch(() => undefined).finally(() => this.#closing.delete(settled));
    this.#closing.add(settled);
  }

  /** The pool for `origin` (`http://host:port` or `https://host:port`). Throws on an origin undici cannot parse. */
  poolFor(origin: string): Pool {
    let pool = this.#pools.get(origin);
    if (!pool) {
      pool = new Pool(origin, { connect: origin.startsWith('https:') ? upstreamTlsOptions(this.#tls) : {} });
      this.#pools.set(origin, pool);
    }
    return pool;
  }

  /** Closes every pool: in-flight requests may finish until `deadline`, then connections are cut. */
  async close(deadline: number): Promise<void> {
    const pools = [...this.#pools.values()];
    this.#pools.clear(); // disposes: each pool starts closing gracefully
    const graceful = Promise.all([...this.#closing]);
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), Math.max(0, deadline - Date.now()))));
    const outcome = await Promise.race([graceful.then(() => 'done' as const), late]);
    clearTimeout(timer);
    if (outcome === 'late') await Promise.all(pools.map((pool) => pool.destroy().catch(() => undefined)));
  }
}

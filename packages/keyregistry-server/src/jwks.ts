import { createHash } from 'node:crypto';
import type { Clock, Logger } from '@jwtproxy/core';
import type { PublicJwk } from './jwk.js';
import type { KeyRegistry } from './registry.js';

/** One key of a JWK set as served: public members base64url without padding, kid, alg, use. */
export type JwkSetMember =
  | { kty: 'RSA'; kid: string; use: 'sig'; alg: 'RS256'; n: string; e: string }
  | { kty: 'EC'; kid: string; use: 'sig'; alg: 'ES256' | 'ES384' | 'ES512'; crv: 'P-256' | 'P-384' | 'P-521'; x: string; y: string };

export interface JwkSetAnswer {
  /** The serialised `{"keys":[…]}`. */
  body: string;
  /** Strong validator of `body`. */
  etag: string;
  /** Seconds a cache may keep the set: the configured maximum, never past the soonest expiry listed. */
  maxAgeSeconds: number;
  /** How many approved keys were left out by the cap. */
  omitted: number;
}

export interface JwkSetOptions {
  /** Longest `Cache-Control: max-age` in seconds. */
  maxAgeSeconds: number;
  /** Most keys in one set; beyond it the newest are listed. */
  maxKeys: number;
}

const curveAlgorithms = { 'P-256': 'ES256', 'P-384': 'ES384', 'P-521': 'ES512' } as const;

/** The set member for a stored key; alg from the key's type and curve, never from anything a client sent. */
export function jwkSetMember(jwk: PublicJwk): JwkSetMember {
  if (jwk.kty === 'RSA') return { kty: 'RSA', kid: jwk.kid, use: 'sig', alg: 'RS256', n: jwk.n, e: jwk.e };
  return { kty: 'EC', kid: jwk.kid, use: 'sig', alg: curveAlgorithms[jwk.crv], crv: jwk.crv, x: jwk.x, y: jwk.y };
}

/** The cap is logged at most once per this long, with the number of answers cut meanwhile. */
const capLogIntervalMs = 60_000;

/**
 * Builds JWK sets (RFC 7517 §5) of the approved, unexpired keys, for verifiers that speak JWKS
 * (Envoy jwt_authn, Istio RequestAuthentication, jose, PyJWT). Concurrent requests for the same
 * set share one store read, so a flood of public requests costs one scan at a time per set.
 */
export class JwkSetPublisher {
  readonly #registry: KeyRegistry;
  readonly #options: JwkSetOptions;
  readonly #logger: Logger;
  readonly #clock: Clock;
  readonly #inFlight = new Map<string, Promise<JwkSetAnswer>>();
  #capLoggedAt = Number.NEGATIVE_INFINITY;
  #cutSinceLog = 0;

  constructor(registry: KeyRegistry, options: JwkSetOptions, logger: Logger, clock: Clock) {
    this.#registry = registry;
    this.#options = options;
    this.#logger = logger;
    this.#clock = clock;
  }

  /** The set of one service, or of every service when `service` is undefined. */
  keySet(service: string | undefined): Promise<JwkSetAnswer> {
    const flightKey = service === undefined ? '*' : `=${service}`;
    let answer = this.#inFlight.get(flightKey);
    if (!answer) {
      answer = this.#build(service).finally(() => this.#inFlight.delete(flightKey));
      this.#inFlight.set(flightKey, answer);
    }
    return answer;
  }

  async #build(service: string | undefined): Promise<JwkSetAnswer> {
    const keys = await this.#registry.approvedKeys(service);
    const now = this.#clock();
    const { maxKeys, maxAgeSeconds } = this.#options;
    // Over the cap, the newest keys are kept: those are the ones signers are using.
    const listed = keys.length > maxKeys ? [...keys].sort((a, b) => b.createdAt - a.createdAt).slice(0, maxKeys) : keys;
    const omitted = keys.length - listed.length;
    if (omitted > 0) this.#logCap(service, keys.length);
    listed.sort((a, b) => a.service.localeCompare(b.service) || a.createdAt - b.createdAt || a.jwk.kid.localeCompare(b.jwk.kid));
    let maxAge = maxAgeSeconds;
    for (const key of listed) {
      if (key.expiresAt !== null) maxAge = Math.min(maxAge, Math.max(0, Math.floor((key.expiresAt - now) / 1000)));
    }
    const body = JSON.stringify({ keys: listed.map((key) => jwkSetMember(key.jwk)) });
    const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`;
    return { body, etag, maxAgeSeconds: maxAge, omitted };
  }

  #logCap(service: string | undefined, approved: number): void {
    this.#cutSinceLog++;
    const now = this.#clock();
    if (now - this.#capLoggedAt < capLogIntervalMs) return;
    this.#logger.warn('key registry: JWK set larger than jwks_max_keys; only the newest keys are listed', {
      service: service ?? '*', approved, max_keys: this.#options.maxKeys, answers_cut: this.#cutSinceLog,
    });
    this.#capLoggedAt = now;
    this.#cutSinceLog = 0;
  }
}

/** True when an If-None-Match header names this ETag (or `*`); weak comparison (RFC 9110 §13.1.2). */
export function matchesEtag(ifNoneMatch: string | undefined, etag: string): boolean {
  if (!ifNoneMatch) return false;
  const bare = etag.replace(/^W\//, '');
  return ifNoneMatch.split(',').some((tag) => {
    const candidate = tag.trim();
    return candidate === '*' || candidate.replace(/^W\//, '') === bare;
  });
}

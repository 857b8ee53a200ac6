import type { KeyObject } from 'node:crypto';

/** Seconds since the epoch, as in JWT NumericDate claims. */
export type UnixSeconds = number;

/** Milliseconds since the epoch; injectable so tests can move time. */
export type Clock = () => number;
export const systemClock: Clock = () => Date.now();

/** The claims a jwtproxy token carries (others may be present and are passed to claims verifiers). */
export interface JwtClaims {
  iss: string;
  aud: string;
  iat: UnixSeconds;
  nbf: UnixSeconds;
  exp: UnixSeconds;
  jti: string;
  [claim: string]: unknown;
}

export interface JwtHeader {
  alg: string;
  kid: string;
  typ?: string;
  [field: string]: unknown;
}

/** A JWS algorithm this project signs or verifies. `none` and HMAC never appear here. */
export type AsymmetricAlgorithm = 'RS256' | 'RS384' | 'RS512' | 'PS256' | 'PS384' | 'PS512' | 'ES256' | 'ES384' | 'ES512' | 'EdDSA';

/** A private key ready to sign on the hot path. */
export interface SigningKey {
  readonly kid: string;
  readonly alg: AsymmetricAlgorithm;
  readonly privateKey: KeyObject;
}

/** A public key and the algorithms it may verify (derived from the key, never from the token). */
export interface VerificationKey {
  readonly key: KeyObject;
  readonly algorithms: readonly AsymmetricAlgorithm[];
}

/**
 * Something that can be stopped. `deadline` is a Date.now() value after which the
 * component should give up waiting for work in flight.
 */
export interface Stoppable {
  stop(deadline?: number): Promise<void>;
}

/** Where the signer gets the key it signs with. */
export interface PrivateKeySource extends Partial<Stoppable> {
  /**
   * The key to sign with now. Synchronous because it sits on every request; a source
   * that has no approved key yet throws NoActiveKeyError.
   */
  activeKey(): SigningKey;
}

/**
 * Where the verifier gets public keys ("key server" in the Go configuration).
 * Rejects with KeyNotFoundError, KeyExpiredError or KeyServerUnavailableError.
 */
export interface PublicKeyResolver extends Partial<Stoppable> {
  resolve(issuer: string, kid: string): Promise<VerificationKey>;
}

/** Replay protection. */
export interface NonceStore extends Partial<Stoppable> {
  /**
   * Atomically claim `jti` until `expiresAt` (unix seconds). Resolves true exactly once
   * per jti while it is unexpired, false when it was already claimed. Rejects with
   * NonceStoreUnavailableError or NonceStoreFullError when it cannot answer: fail closed.
   */
  claim(jti: string, expiresAt: UnixSeconds): Promise<boolean>;
  /**
   * Resolves when the store answers now (a Redis PING within its command timeout), rejects when
   * it cannot: the readiness probe's question. A store without it is taken to always answer.
   */
  ping?(): Promise<void>;
}

/** Extra checks on verified claims; throws ClaimsVerificationError to refuse. */
export interface ClaimsVerifier extends Partial<Stoppable> {
  verify(claims: Readonly<JwtClaims>): void | Promise<void>;
}

/** Levelled logger; fields never carry tokens or keys. */
export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
  /** A logger whose every line carries `bindings` (`component=verifier_proxies[1]`); see core's childLogger. */
  child?(bindings: Record<string, unknown>): Logger;
  /** Whether lines of `level` are written now; absent: assume they are. Lets a caller skip building a line no one will see. */
  enabled?(level: 'debug' | 'info' | 'warn' | 'error'): boolean;
}

/** A proxy (or server) that is listening. */
export interface RunningProxy {
  /** Where it listens: `http://127.0.0.1:8080`, `https://…` or `unix:/path`. */
  readonly address: string;
  /** HTTP connections open now, for metrics; absent when the server does not count them. */
  readonly openConnections?: number;
  /** Upgraded (WebSocket) and CONNECT-tunnelled connections open now, for metrics. */
  readonly openTunnels?: number;
  /**
   * Stops accepting connections at once, lets requests in flight finish until `deadline`
   * (Date.now() value; default now + its shutdown_timeout), then closes what is left.
   */
  stop(deadline?: number): Promise<void>;
}

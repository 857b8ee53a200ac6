/**
 * Errors of reading a JWK set. None of them reaches a client: the key server answers with core's
 * KeyNotFoundError or KeyServerUnavailableError, with one of these as `cause` and the facts an
 * operator needs on the error itself.
 */

export type JwksErrorCode =
  | 'ERR_JWKS'
  | 'ERR_JWKS_UNAVAILABLE'
  | 'ERR_JWKS_ANSWER_TOO_LARGE'
  | 'ERR_JWKS_INVALID'
  | 'ERR_JWKS_DISCOVERY'
  | 'ERR_JWK_UNUSABLE';

export class JwksError extends Error {
  static code: JwksErrorCode = 'ERR_JWKS';
  code: JwksErrorCode = 'ERR_JWKS';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
  }
}

/** The source could not be reached, timed out, or answered something other than 200. */
export class JwksUnavailableError extends JwksError {
  static override code: JwksErrorCode = 'ERR_JWKS_UNAVAILABLE';
  override code: JwksErrorCode = 'ERR_JWKS_UNAVAILABLE';
  /** The HTTP status, when the source answered. */
  readonly status: number | undefined;
  constructor(message: string, options?: { status?: number; cause?: unknown }) {
    super(message, options);
    this.status = options?.status;
  }
}

/** The answer was larger than `max_answer_bytes`: refused, by its Content-Length or while reading. */
export class JwksAnswerTooLargeError extends JwksError {
  static override code: JwksErrorCode = 'ERR_JWKS_ANSWER_TOO_LARGE';
  override code: JwksErrorCode = 'ERR_JWKS_ANSWER_TOO_LARGE';
  readonly limit: number;
  constructor(limit: number) {
    super(`answer larger than ${limit} bytes`);
    this.limit = limit;
  }
}

/** The answer is not a usable JWK set: not JSON, no `keys` list, too many keys, no usable key. */
export class JwksInvalidError extends JwksError {
  static override code: JwksErrorCode = 'ERR_JWKS_INVALID';
  override code: JwksErrorCode = 'ERR_JWKS_INVALID';
}

/** The OIDC discovery document could not be read, or names another issuer or no usable `jwks_uri`. */
export class JwksDiscoveryError extends JwksError {
  static override code: JwksErrorCode = 'ERR_JWKS_DISCOVERY';
  override code: JwksErrorCode = 'ERR_JWKS_DISCOVERY';
}

/** One key of a set that cannot verify tokens here; the set's other keys are used. */
export class UnusableJwkError extends JwksError {
  static override code: JwksErrorCode = 'ERR_JWK_UNUSABLE';
  override code: JwksErrorCode = 'ERR_JWK_UNUSABLE';
  /** The key's `kid`, when it has a usable one. */
  readonly kid: string | undefined;
  /** What is wrong with it, in words. */
  readonly problem: string;
  constructor(kid: string | undefined, problem: string) {
    super(kid === undefined ? `key without kid: ${problem}` : `key ${JSON.stringify(kid)}: ${problem}`);
    this.kid = kid;
    this.problem = problem;
  }
}

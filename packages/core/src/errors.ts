/**
 * Typed errors with stable codes, in the manner of jose's error classes.
 * Every error a request can meet carries the HTTP answer it deserves; the proxies
 * turn an error into a response in one place (`httpAnswerFor`).
 */

export type ErrorCode =
  | 'ERR_JWTPROXY'
  | 'ERR_TOKEN_PARSE'
  | 'ERR_MISSING_KID'
  | 'ERR_INVALID_CLAIM'
  | 'ERR_TOKEN_TOO_LONG'
  | 'ERR_KEY_NOT_FOUND'
  | 'ERR_KEY_EXPIRED'
  | 'ERR_KEY_SERVER_UNAVAILABLE'
  | 'ERR_INVALID_SIGNATURE'
  | 'ERR_CLAIMS_VERIFICATION'
  | 'ERR_NONCE_STORE_UNAVAILABLE'
  | 'ERR_NONCE_STORE_FULL'
  | 'ERR_SIGNING'
  | 'ERR_NO_ACTIVE_KEY'
  | 'ERR_UPSTREAM'
  | 'ERR_CONFIG'
  | 'ERR_LISTEN'
  | 'ERR_BAD_REQUEST'
  | 'ERR_WRONG_PROXY_KIND'
  | 'ERR_MULTIPLE_CREDENTIALS'
  | 'ERR_UNKNOWN_COMPONENT'
  | 'ERR_ANSWERED_BY_PROXY';

export class JwtProxyError extends Error {
  static code: ErrorCode = 'ERR_JWTPROXY';
  code: ErrorCode = 'ERR_JWTPROXY';
  /**
   * What an operator needs to act on the error, for logs (expected and received audience, how far
   * outside the allowed skew): never a token, a key or a secret. Not part of the client's answer.
   */
  facts: Readonly<Record<string, string | number>> | undefined;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }

  /** Attaches `facts` and returns the error, for `throw new InvalidClaimError('aud').with({ … })`. */
  with(facts: Readonly<Record<string, string | number>>): this {
    this.facts = facts;
    return this;
  }
}

/** Any reason to refuse a request at the verifier. Bodies are the Go tool's. */
export class VerificationError extends JwtProxyError {
  /** HTTP status the verifier answers with. */
  readonly status: number = 403;
  /** The text after "jwtproxy: unable to verify request: ". */
  get reason(): string {
    return this.message;
  }
  /**
   * True when a dependency of the verifier (key server, nonce store) failed, rather than the
   * token being refused: worth a warning (limited) in the log, where a refusal is debug.
   */
  get dependencyFailure(): boolean {
    return false;
  }
}

export class TokenParseError extends VerificationError {
  static override code: ErrorCode = 'ERR_TOKEN_PARSE';
  override code: ErrorCode = 'ERR_TOKEN_PARSE';
  constructor(options?: { cause?: unknown }) {
    super('Could not parse JWT', options);
  }
}

export class MissingKidError extends VerificationError {
  static override code: ErrorCode = 'ERR_MISSING_KID';
  override code: ErrorCode = 'ERR_MISSING_KID';
  constructor() {
    super("Missing 'kid' claim");
  }
}

export type CheckedClaim = 'iss' | 'aud' | 'exp' | 'nbf' | 'iat' | 'jti';

export class InvalidClaimError extends VerificationError {
  static override code: ErrorCode = 'ERR_INVALID_CLAIM';
  override code: ErrorCode = 'ERR_INVALID_CLAIM';
  readonly claim: CheckedClaim;
  constructor(claim: CheckedClaim) {
    super(`Missing or invalid '${claim}' claim`);
    this.claim = claim;
  }
}

export class TokenTooLongError extends VerificationError {
  static override code: ErrorCode = 'ERR_TOKEN_TOO_LONG';
  override code: ErrorCode = 'ERR_TOKEN_TOO_LONG';
  constructor() {
    super("Invalid 'exp' claim (too long)");
  }
}

/** The key server does not know (iss, kid). */
export class KeyNotFoundError extends VerificationError {
  static override code: ErrorCode = 'ERR_KEY_NOT_FOUND';
  override code: ErrorCode = 'ERR_KEY_NOT_FOUND';
  constructor(options?: { cause?: unknown }) {
    super('Could not find any matching public key', options);
  }
}

/** The key server knows the key but it has expired; the Go verifier answers as for any key server failure. */
export class KeyExpiredError extends VerificationError {
  static override code: ErrorCode = 'ERR_KEY_EXPIRED';
  override code: ErrorCode = 'ERR_KEY_EXPIRED';
  constructor(options?: { cause?: unknown }) {
    super('Unexpected key server error', options);
  }
}

/** The key server could not be asked or gave an answer we cannot use: fail closed. */
export class KeyServerUnavailableError extends VerificationError {
  static override code: ErrorCode = 'ERR_KEY_SERVER_UNAVAILABLE';
  override code: ErrorCode = 'ERR_KEY_SERVER_UNAVAILABLE';
  constructor(options?: { cause?: unknown }) {
    super('Unexpected key server error', options);
  }
  override get dependencyFailure(): boolean {
    return true;
  }
}

export class InvalidSignatureError extends VerificationError {
  static override code: ErrorCode = 'ERR_INVALID_SIGNATURE';
  override code: ErrorCode = 'ERR_INVALID_SIGNATURE';
  constructor() {
    super('Invalid JWT signature');
  }
}

/** Thrown by claims verifiers; answered as `Error verifying claims: <message>`. */
export class ClaimsVerificationError extends VerificationError {
  static override code: ErrorCode = 'ERR_CLAIMS_VERIFICATION';
  override code: ErrorCode = 'ERR_CLAIMS_VERIFICATION';
}

/**
 * More than one Authorization header (or Bearer credential): the service behind the verifier might
 * read another one than the one verified, so none is trusted (400, RFC 9110 §11.6.2 allows one).
 */
export class MultipleCredentialsError extends VerificationError {
  static override code: ErrorCode = 'ERR_MULTIPLE_CREDENTIALS';
  override code: ErrorCode = 'ERR_MULTIPLE_CREDENTIALS';
  override readonly status = 400;
  constructor() {
    super('more than one Authorization header');
  }
}

/** The nonce store could not be asked (Redis down, timeout): fail closed with 503. */
export class NonceStoreUnavailableError extends VerificationError {
  static override code: ErrorCode = 'ERR_NONCE_STORE_UNAVAILABLE';
  override code: ErrorCode = 'ERR_NONCE_STORE_UNAVAILABLE';
  override readonly status = 503;
  constructor(options?: { cause?: unknown }) {
    super('Nonce storage unavailable', options);
  }
  override get dependencyFailure(): boolean {
    return true;
  }
}

/** The in-memory nonce store is full of unexpired nonces: refuse rather than forget one. */
export class NonceStoreFullError extends VerificationError {
  static override code: ErrorCode = 'ERR_NONCE_STORE_FULL';
  override code: ErrorCode = 'ERR_NONCE_STORE_FULL';
  override readonly status = 503;
  constructor() {
    super('Nonce storage is full');
  }
  override get dependencyFailure(): boolean {
    return true;
  }
}

/** Any reason the signer could not sign; answered 502 `jwtproxy: unable to sign request: <message>`. */
export class SigningError extends JwtProxyError {
  static override code: ErrorCode = 'ERR_SIGNING';
  override code: ErrorCode = 'ERR_SIGNING';
}

export class NoActiveKeyError extends SigningError {
  static override code: ErrorCode = 'ERR_NO_ACTIVE_KEY';
  override code: ErrorCode = 'ERR_NO_ACTIVE_KEY';
  constructor() {
    super('No key is yet active');
  }
}

/** The upstream could not be reached or failed mid-request; answered 502. */
export class UpstreamError extends JwtProxyError {
  static override code: ErrorCode = 'ERR_UPSTREAM';
  override code: ErrorCode = 'ERR_UPSTREAM';
}

/** A request refused for its form before anything else is read: a malformed head or one over a limit. */
export class BadRequestError extends JwtProxyError {
  static override code: ErrorCode = 'ERR_BAD_REQUEST';
  override code: ErrorCode = 'ERR_BAD_REQUEST';
  /** 400, or 431 for a head over the header limit. */
  readonly status: 400 | 431;
  constructor(problem: string, status: 400 | 431 = 400) {
    super(problem);
    this.status = status;
  }
}

/**
 * A request meant for the other kind of proxy: an absolute-form (proxy) request at the verifier,
 * an origin-form one at the signer. Answered 500 with the Go tool's text, which is the message.
 */
export class WrongProxyKindError extends JwtProxyError {
  static override code: ErrorCode = 'ERR_WRONG_PROXY_KIND';
  override code: ErrorCode = 'ERR_WRONG_PROXY_KIND';
}

/** Where in the configuration a mistake is: the file and, when known, the line. */
export interface ConfigLocation {
  file: string;
  line?: number;
}

/**
 * A configuration mistake, with its facts as fields: the key path (`verifier_proxies[0].max_ttl`,
 * relative to a component's options when a component throws it), the problem in words, and where
 * it is. The message is `<path>: <problem> (<file>:<line>)`, for people; code reads the fields.
 */
export class ConfigError extends JwtProxyError {
  static override code: ErrorCode = 'ERR_CONFIG';
  override code: ErrorCode = 'ERR_CONFIG';
  readonly path: string;
  readonly problem: string;
  readonly location: ConfigLocation | undefined;
  constructor(path: string, problem: string, where?: { file?: string; line?: number }, options?: { cause?: unknown }) {
    const location = where?.file ? ` (${where.file}${where.line ? `:${where.line}` : ''})` : '';
    super(`${path ? `${path}: ` : ''}${problem}${location}`, options);
    this.path = path;
    this.problem = problem;
    this.location = where?.file ? { file: where.file, ...(where.line ? { line: where.line } : {}) } : undefined;
  }
  get file(): string | undefined {
    return this.location?.file;
  }
  get line(): number | undefined {
    return this.location?.line;
  }
}

export class UnknownComponentError extends JwtProxyError {
  static override code: ErrorCode = 'ERR_UNKNOWN_COMPONENT';
  override code: ErrorCode = 'ERR_UNKNOWN_COMPONENT';
  readonly kind: string;
  readonly type: string;
  constructor(kind: string, type: string, known: readonly string[]) {
    super(`unknown ${kind} type "${type}" (registered: ${known.length ? known.join(', ') : 'none'})`);
    this.kind = kind;
    this.type = type;
  }
}

export interface HttpAnswer {
  status: number;
  body: string;
  /** Extra response headers (a redirect's Location, a Set-Cookie): only on answers the proxy chose to give. */
  headers?: Readonly<Record<string, string>>;
}

/**
 * Not a failure to forward but a request the proxy answers itself: the verifier's redirect to log in
 * (with the verification error's code as `code`, for the access log) or its `/jwt/auth` endpoint.
 * Thrown from a route hook like any refusal, so the one place that writes answers writes it.
 */
export class ProxyAnswerError extends JwtProxyError {
  static override code: ErrorCode = 'ERR_ANSWERED_BY_PROXY';
  override code: ErrorCode = 'ERR_ANSWERED_BY_PROXY';
  readonly answer: HttpAnswer;
  constructor(answer: HttpAnswer, code?: ErrorCode) {
    super(`answered ${answer.status} by the proxy`);
    this.answer = answer;
    if (code) this.code = code;
  }
}

/**
 * The one place that turns an error into what a client sees.
 * Bodies match the Go tool byte for byte (text/plain, no trailing newline).
 */
export function httpAnswerFor(error: unknown): HttpAnswer {
  if (error instanceof ProxyAnswerError) return error.answer;
  if (error instanceof ClaimsVerificationError) {
    return { status: error.status, body: `Error verifying claims: ${error.message}` };
  }
  if (error instanceof VerificationError) {
    return { status: error.status, body: `jwtproxy: unable to verify request: ${error.reason}` };
  }
  if (error instanceof SigningError) {
    return { status: 502, body: `jwtproxy: unable to sign request: ${error.message}` };
  }
  if (error instanceof WrongProxyKindError) {
    return { status: 500, body: error.message };
  }
  if (error instanceof BadRequestError) {
    return { status: error.status, body: `jwtproxy: bad request: ${error.message}` };
  }
  if (error instanceof UpstreamError) {
    return { status: 502, body: `jwtproxy: upstream error: ${error.message}` };
  }
  return { status: 500, body: 'jwtproxy: internal error' };
}

/**
 * Errors of the key publisher (the signer's side of the key registry protocol). The verifier's
 * side answers with core's KeyNotFoundError, KeyExpiredError and KeyServerUnavailableError,
 * because those reach the verifier's HTTP answer; these never do: a key source that meets one
 * decides what to do (retry, generate a new key, stop).
 */

export type KeyRegistryErrorCode =
  | 'ERR_KEY_REGISTRY'
  | 'ERR_KEY_REGISTRY_UNAVAILABLE'
  | 'ERR_KEY_REGISTRY_REJECTED'
  | 'ERR_PUBLISHED_KEY_NOT_FOUND'
  | 'ERR_PUBLISHED_KEY_EXPIRED'
  | 'ERR_KEY_REGISTRY_ANSWER_TOO_LARGE'
  | 'ERR_UNKNOWN_KEY_LOOKUPS_LIMITED';

/** What the publisher was doing when the registry answered. */
export type RegistryOperation = 'publish' | 'status' | 'delete';

export class KeyRegistryError extends Error {
  static code: KeyRegistryErrorCode = 'ERR_KEY_REGISTRY';
  code: KeyRegistryErrorCode = 'ERR_KEY_REGISTRY';
  /** The HTTP status the registry answered with, when it answered. */
  readonly status: number | undefined;
  constructor(message: string, options?: { status?: number; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.status = options?.status;
  }
}

/** The registry could not be reached, timed out, or answered 5xx or something unusable. Worth retrying. */
export class KeyRegistryUnavailableError extends KeyRegistryError {
  static override code: KeyRegistryErrorCode = 'ERR_KEY_REGISTRY_UNAVAILABLE';
  override code: KeyRegistryErrorCode = 'ERR_KEY_REGISTRY_UNAVAILABLE';
}

/**
 * The registry refused the request: 400 (bad JWK or publishing token) or 403 (signed with a key
 * it does not accept, e.g. a rotation signed by a key that is not approved). Retrying the same
 * request will not help.
 */
export class KeyPublishRejectedError extends KeyRegistryError {
  static override code: KeyRegistryErrorCode = 'ERR_KEY_REGISTRY_REJECTED';
  override code: KeyRegistryErrorCode = 'ERR_KEY_REGISTRY_REJECTED';
  readonly operation: RegistryOperation;
  constructor(operation: RegistryOperation, status: number) {
    super(`key registry refused to ${operation === 'status' ? 'answer for' : operation} the key: HTTP ${status}`, { status });
    this.operation = operation;
  }
}

/** The registry does not know the key (404): it was never published, was rejected, or was deleted. */
export class PublishedKeyNotFoundError extends KeyRegistryError {
  static override code: KeyRegistryErrorCode = 'ERR_PUBLISHED_KEY_NOT_FOUND';
  override code: KeyRegistryErrorCode = 'ERR_PUBLISHED_KEY_NOT_FOUND';
  readonly kid: string;
  constructor(kid: string) {
    super(`the key registry does not know key ${JSON.stringify(kid)}`, { status: 404 });
    this.kid = kid;
  }
}

/** The registry knows the key but it has expired (403 on GET): delete or renew it. */
export class PublishedKeyExpiredError extends KeyRegistryError {
  static override code: KeyRegistryErrorCode = 'ERR_PUBLISHED_KEY_EXPIRED';
  override code: KeyRegistryErrorCode = 'ERR_PUBLISHED_KEY_EXPIRED';
  readonly kid: string;
  constructor(kid: string) {
    super('Public key has expired; delete or renew it', { status: 403 });
    this.kid = kid;
  }
}

/** The registry's answer was larger than we read (a JWK is a few hundred bytes): refused unread. */
export class RegistryAnswerTooLargeError extends KeyRegistryError {
  static override code: KeyRegistryErrorCode = 'ERR_KEY_REGISTRY_ANSWER_TOO_LARGE';
  override code: KeyRegistryErrorCode = 'ERR_KEY_REGISTRY_ANSWER_TOO_LARGE';
  /** The most bytes that were allowed. */
  readonly limit: number;
  constructor(limit: number) {
    super(`answer larger than ${limit} bytes`);
    this.limit = limit;
  }
}

/**
 * The verifier did not ask the registry for a key it does not know, because lookups of unknown
 * keys for this issuer (or for issuers without a known key) are over their limit. The cause of
 * the KeyNotFoundError the verifier answers with.
 */
export class UnknownKeyLookupsLimitedError extends KeyRegistryError {
  static override code: KeyRegistryErrorCode = 'ERR_UNKNOWN_KEY_LOOKUPS_LIMITED';
  override code: KeyRegistryErrorCode = 'ERR_UNKNOWN_KEY_LOOKUPS_LIMITED';
  readonly issuer: string;
  /** Whether the issuer has a limit of its own (a key of it was served) or shares the one of issuers without a known key. */
  readonly sharedLimit: boolean;
  constructor(issuer: string, sharedLimit: boolean) {
    super(sharedLimit ? 'too many lookups of unknown keys for issuers without a known key' : 'too many lookups of unknown keys for this issuer');
    this.issuer = issuer;
    this.sharedLimit = sharedLimit;
  }
}

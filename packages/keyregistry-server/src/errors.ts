/**
 * Errors of the key registry. Each carries the HTTP status the protocol gives it and a
 * stable code; the HTTP layer turns them into responses in one place (`registryAnswerFor`).
 */

export type RegistryErrorCode =
  | 'bad_request'
  | 'invalid_name'
  | 'invalid_jwk'
  | 'invalid_token'
  | 'token_replayed'
  | 'forbidden'
  | 'key_not_found'
  | 'key_pending'
  | 'key_expired'
  | 'key_conflict'
  | 'not_found'
  | 'method_not_allowed'
  | 'body_too_large'
  | 'request_timeout'
  | 'too_many_pending_keys'
  | 'unauthorized'
  | 'admin_disabled'
  | 'storage_unavailable'
  | 'busy'
  | 'internal';

export class KeyRegistryError extends Error {
  readonly code: RegistryErrorCode;
  readonly status: number;
  constructor(status: number, code: RegistryErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.status = status;
    this.code = code;
  }
}

/** Anything wrong with the request itself (protocol: "all other failures" are 400). */
export class BadRequestError extends KeyRegistryError {
  constructor(message: string, code: RegistryErrorCode = 'bad_request', options?: { cause?: unknown }) {
    super(400, code, message, options);
  }
}

/** The publishing or deleting JWT was not signed by a key allowed to do this (protocol: 403). */
export class ForbiddenError extends KeyRegistryError {
  constructor(message: string) {
    super(403, 'forbidden', message);
  }
}

export class KeyNotFoundError extends KeyRegistryError {
  constructor(service: string, kid: string) {
    super(404, 'key_not_found', `no key ${JSON.stringify(kid)} for service ${JSON.stringify(service)}`);
  }
}

export class KeyPendingError extends KeyRegistryError {
  constructor(service: string, kid: string) {
    super(409, 'key_pending', `key ${JSON.stringify(kid)} of service ${JSON.stringify(service)} is awaiting approval`);
  }
}

export class KeyExpiredError extends KeyRegistryError {
  constructor(service: string, kid: string) {
    super(403, 'key_expired', `key ${JSON.stringify(kid)} of service ${JSON.stringify(service)} has expired`);
  }
}

/**
 * Publishing one more key awaiting approval would exceed a cap (`max_pending_keys_per_service`
 * or `max_pending_keys`): 429 until keys are approved, revoked or purged after pending_ttl.
 */
export class PendingKeyLimitError extends KeyRegistryError {
  /** Which cap was reached. */
  readonly scope: 'service' | 'total';
  readonly service: string;
  readonly limit: number;
  constructor(scope: 'service' | 'total', service: string, limit: number) {
    super(
      429,
      'too_many_pending_keys',
      scope === 'service'
        ? `service ${JSON.stringify(service)} already has ${limit} keys awaiting approval (max_pending_keys_per_service); approve or revoke some, or wait until unapproved keys are purged`
        : `the registry already holds ${limit} keys awaiting approval (max_pending_keys); approve or revoke some, or wait until unapproved keys are purged`,
    );
    this.scope = scope;
    this.service = service;
    this.limit = limit;
  }
}

/** The key store could not be reached or failed: fail closed with 503. */
export class StorageUnavailableError extends KeyRegistryError {
  constructor(message = 'key storage unavailable', options?: { cause?: unknown }) {
    super(503, 'storage_unavailable', message, options);
  }
}

export interface RegistryAnswer {
  status: number;
  /** JSON text: `{"error":"<code>","message":"<text>"}`. */
  body: string;
}

/** The one place that turns an error into what a registry client sees. Unknown errors are 500 without detail. */
export function registryAnswerFor(error: unknown): RegistryAnswer {
  if (error instanceof KeyRegistryError) {
    return { status: error.status, body: JSON.stringify({ error: error.code, message: error.message }) };
  }
  return { status: 500, body: JSON.stringify({ error: 'internal', message: 'internal error' }) };
}

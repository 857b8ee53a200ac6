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

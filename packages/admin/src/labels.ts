import type { ErrorCode } from '@jwtproxy/core';

/**
 * Label values are bounded by construction: every value below comes from a fixed set, so that a
 * client can never make the process grow a new time series (no paths, hosts, jtis, kids).
 */

/** Every code of core's ErrorCode: the `reason` label of a refusal or failure. */
const ERROR_CODES: Readonly<Record<ErrorCode, true>> = {
  ERR_JWTPROXY: true,
  ERR_TOKEN_PARSE: true,
  ERR_MISSING_KID: true,
  ERR_INVALID_CLAIM: true,
  ERR_TOKEN_TOO_LONG: true,
  ERR_KEY_NOT_FOUND: true,
  ERR_KEY_EXPIRED: true,
  ERR_KEY_SERVER_UNAVAILABLE: true,
  ERR_INVALID_SIGNATURE: true,
  ERR_CLAIMS_VERIFICATION: true,
  ERR_NONCE_STORE_UNAVAILABLE: true,
  ERR_NONCE_STORE_FULL: true,
  ERR_SIGNING: true,
  ERR_NO_ACTIVE_KEY: true,
  ERR_UPSTREAM: true,
  ERR_CONFIG: true,
  ERR_LISTEN: true,
  ERR_BAD_REQUEST: true,
  ERR_WRONG_PROXY_KIND: true,
  ERR_MULTIPLE_CREDENTIALS: true,
  ERR_UNKNOWN_COMPONENT: true,
  ERR_ANSWERED_BY_PROXY: true,
};

/** The engine's reason for an error that is not one of ours (a bug). */
const INTERNAL = 'ERR_INTERNAL';

/** `reason` label: the error code; `none` for a pass; `other` for a code outside the fixed set (a plugin's own). */
export function reasonLabel(reason: string | undefined): string {
  if (reason === undefined) return 'none';
  return reason === INTERNAL || Object.hasOwn(ERROR_CODES, reason) ? reason : 'other';
}

const STATUS_CLASSES = ['none', '1xx', '2xx', '3xx', '4xx', '5xx'] as const;

/** 1 to 5 for a status of 1xx to 5xx, 0 for anything else (no answer). */
export function statusIndex(status: number): number {
  const hundreds = (status / 100) | 0;
  return hundreds >= 1 && hundreds <= 5 ? hundreds : 0;
}

/** `status_class` label: `2xx` … `5xx`; `none` when the connection ended before an answer. */
export function statusClassLabel(status: number): string {
  return STATUS_CLASSES[statusIndex(status)]!;
}

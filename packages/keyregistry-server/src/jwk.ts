import { createPublicKey, type KeyObject } from 'node:crypto';
import { BadRequestError } from './errors.js';

/** The public JWK the registry stores and serves: only public members, plus kid, alg and use. */
export type PublicJwk =
  | { kty: 'RSA'; n: string; e: string; kid: string; alg: 'RS256'; use: 'sig' }
  | { kty: 'EC'; crv: 'P-256'; x: string; y: string; kid: string; alg: 'ES256'; use: 'sig' };

/** Signature algorithm a key may verify; derived from the key, never from a token. */
export type PublishingAlgorithm = 'RS256' | 'ES256';

export const minRsaBits = 2048;
const maxRsaBits = 16384;
/** base64url, optionally with the `=` padding the Go tool (go-jose/go-oidc) writes; split into data and padding. */
const base64url = /^([A-Za-z0-9_-]+)(={0,2})$/;
const privateMembers = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];

function invalid(message: string, cause?: unknown): never {
  throw new BadRequestError(`invalid JWK: ${message}`, 'invalid_jwk', cause === undefined ? undefined : { cause });
}

/**
 * A base64url member, with or without `=` padding, returned without padding (RFC 7515 §2): the
 * one form every verifier reads. go-jose decodes JWK members with Go's RawURLEncoding and
 * refuses padding; go-oidc (the Go jwtproxy verifier) and Node accept both. Padding must be
 * exactly what the length calls for; anything else is refused.
 */
function member(jwk: Record<string, unknown>, name: string, maxLength: number): string {
  const value = jwk[name];
  if (typeof value !== 'string' || value.length === 0) invalid(`"${name}" must be a non-empty base64url string`);
  const match = base64url.exec(value);
  const data = match?.[1] ?? '';
  const padding = match?.[2] ?? '';
  const remainder = data.length % 4;
  // Unpadded lengths ≡ 1 (mod 4) encode no whole byte; padded values fill a last group of 4.
  const wellFormed = match !== null && remainder !== 1 && (padding === '' || padding.length === 4 - remainder);
  if (!wellFormed || data.length > maxLength) invalid(`"${name}" is not base64url (with or without padding)`);
  return data;
}

/**
 * Checks a JWK sent for publication and returns its stored form: only the public members,
 * base64url without padding, plus kid (the URL's), alg and use. Accepted: RSA of at least 2048
 * bits (verified with RS256) and EC P-256 (ES256). Private key material is refused.
 */
export function parsePublicJwk(body: unknown, kid: string): PublicJwk {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) invalid('the body must be a JSON object');
  const jwk = body as Record<string, unknown>;
  for (const name of privateMembers) if (name in jwk) invalid(`it holds private key material ("${name}"); send the public key only`);
  if (jwk.kid !== undefined && jwk.kid !== kid) invalid(`its "kid" differs from the key id in the URL`);
  if (jwk.use !== undefined && jwk.use !== 'sig') invalid(`"use" must be "sig"`);
  let result: PublicJwk;
  if (jwk.kty === 'RSA') {
    if (jwk.alg !== undefined && jwk.alg !== 'RS256') invalid('an RSA key is accepted for RS256 only');
    const n = member(jwk, 'n', Math.ceil((maxRsaBits / 8) * (4 / 3)) + 4);
    const e = member(jwk, 'e', 12);
    result = { kty: 'RSA', n, e, kid, alg: 'RS256', use: 'sig' };
  } else if (jwk.kty === 'EC') {
    if (jwk.crv !== 'P-256') invalid('only the EC curve P-256 is accepted');
    if (jwk.alg !== undefined && jwk.alg !== 'ES256') invalid('a P-256 key is accepted for ES256 only');
    const x = member(jwk, 'x', 43);
    const y = member(jwk, 'y', 43);
    result = { kty: 'EC', crv: 'P-256', x, y, kid, alg: 'ES256', use: 'sig' };
  } else {
    invalid(`"kty" must be "RSA" or "EC"`);
  }
  const key = keyObjectFor(result);
  if (result.kty === 'RSA') {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < minRsaBits) invalid(`the RSA key has ${bits} bits; at least ${minRsaBits} are required`);
    if (bits > maxRsaBits) invalid(`the RSA key has ${bits} bits; at most ${maxRsaBits} are accepted`);
    const exponent = key.asymmetricKeyDetails?.publicExponent ?? 0n;
    if (exponent < 3n || exponent % 2n === 0n) invalid('the RSA public exponent is not valid');
  }
  return result;
}

/** A KeyObject for a stored JWK (the JWK was checked when it was published). */
export function keyObjectFor(jwk: PublicJwk): KeyObject {
  try {
    const material = jwk.kty === 'RSA' ? { kty: jwk.kty, n: jwk.n, e: jwk.e } : { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y };
    return createPublicKey({ key: material, format: 'jwk' });
  } catch (error) {
    invalid('not a valid public key', error);
  }
}

/** True when two JWKs hold the same public key. */
export function sameKey(a: PublicJwk, b: PublicJwk): boolean {
  if (a.kty === 'RSA' && b.kty === 'RSA') return a.n === b.n && a.e === b.e;
  if (a.kty === 'EC' && b.kty === 'EC') return a.x === b.x && a.y === b.y;
  return false;
}

import { compactVerify, decodeProtectedHeader, errors as joseErrors } from 'jose';
import { BadRequestError, ForbiddenError } from './errors.js';
import { keyObjectFor, type PublicJwk } from './jwk.js';

/** What the registry requires of a publishing (PUT) or deleting (DELETE) JWT besides its signature. */
export interface TokenPolicy {
  /** The registry's own `scheme://host[:port]`; the token's `aud` must name it (path ignored). */
  audience: string;
  /** Allowed clock difference for exp, nbf and iat. */
  maxSkewMs: number;
  /** Longest accepted exp − iat. */
  maxTtlMs: number;
}

export interface VerifiedToken {
  jti: string;
  /** Unix milliseconds after which the token is dead (exp + skew): how long its jti must be remembered. */
  deadAt: number;
}

const maxTokenLength = 16 * 1024;

function invalidToken(message: string): never {
  throw new BadRequestError(`invalid token: ${message}`, 'invalid_token');
}

/** Takes the JWT out of `Authorization: Bearer <jwt>`; 400 when there is none. */
export function bearerToken(authorization: string | undefined): string {
  const match = /^bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
  if (!match?.[1]) throw new BadRequestError('missing "Authorization: Bearer <JWT>" header', 'invalid_token');
  if (match[1].length > maxTokenLength) invalidToken('too long');
  return match[1];
}

/** The `kid` of the token's header (undefined when absent), without trusting anything else. */
export function signerKid(token: string): string | undefined {
  let header: Record<string, unknown>;
  try {
    header = decodeProtectedHeader(token) as Record<string, unknown>;
  } catch {
    invalidToken('not a compact JWS');
  }
  if (token.split('.').length !== 3) invalidToken('not a compact JWS');
  if (header.kid === undefined) return undefined;
  if (typeof header.kid !== 'string' || header.kid === '') invalidToken('header "kid" must be a non-empty string');
  return header.kid;
}

function originOf(value: string): string | undefined {
  try {
    const url = new URL(value);
    return url.origin === 'null' ? undefined : url.origin.toLowerCase();
  } catch {
    return undefined;
  }
}

export function audienceOrigin(publicUrl: string): string {
  const origin = originOf(publicUrl);
  if (!origin) throw new Error(`${JSON.stringify(publicUrl)} is not an absolute http(s) URL`);
  return origin;
}

/**
 * Verifies the signature with `signer` (the algorithm comes from the key: RS256 for RSA,
 * ES256 for P-256) and then every claim. A signature that does not verify is 403 (signed with
 * an inappropriate key); a malformed token or a bad claim is 400.
 */
export async function verifyRegistryToken(token: string, signer: PublicJwk, service: string, policy: TokenPolicy, now: number): Promise<VerifiedToken> {
  let payload: Uint8Array;
  try {
    ({ payload } = await compactVerify(token, keyObjectFor(signer), { algorithms: [signer.alg] }));
  } catch (error) {
    if (error instanceof joseErrors.JWSSignatureVerificationFailed) throw new ForbiddenError(`token signature does not verify with key ${JSON.stringify(signer.kid)}`);
    if (error instanceof joseErrors.JOSEAlgNotAllowed) throw new ForbiddenError(`token algorithm is not ${signer.alg}, the only one allowed for key ${JSON.stringify(signer.kid)}`);
    invalidToken('not a valid compact JWS');
  }
  let claims: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(payload));
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not an object');
    claims = parsed as Record<string, unknown>;
  } catch {
    invalidToken('the payload is not a JSON object');
  }
  const skew = policy.maxSkewMs;
  if (claims.iss !== service) invalidToken(`"iss" must be the service name ${JSON.stringify(service)}`);
  const audiences = typeof claims.aud === 'string' ? [claims.aud] : Array.isArray(claims.aud) ? claims.aud : [];
  if (!audiences.some((aud) => typeof aud === 'string' && originOf(aud) === policy.audience)) {
    invalidToken(`"aud" must be this registry, ${policy.audience}`);
  }
  const seconds = (name: string, required: boolean): number | undefined => {
    const value = claims[name];
    if (value === undefined && !required) return undefined;
    if (typeof value !== 'number' || !Number.isFinite(value)) invalidToken(`"${name}" must be a NumericDate`);
    return value * 1000;
  };
  const exp = seconds('exp', true)!;
  const iat = seconds('iat', true)!;
  const nbf = seconds('nbf', false);
  if (exp <= now - skew) invalidToken('"exp" has passed');
  if (nbf !== undefined && nbf > now + skew) invalidToken('"nbf" is in the future');
  if (iat > now + skew) invalidToken('"iat" is in the future');
  if (exp - iat > policy.maxTtlMs) invalidToken('"exp" is too far after "iat"');
  if (typeof claims.jti !== 'string' || claims.jti.length === 0 || claims.jti.length > 256) invalidToken('"jti" must be a string of 1 to 256 characters');
  return { jti: claims.jti, deadAt: exp + skew };
}

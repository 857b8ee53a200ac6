import {
  ClaimsVerificationError,
  InvalidClaimError,
  InvalidSignatureError,
  KeyExpiredError,
  KeyNotFoundError,
  KeyServerUnavailableError,
  MissingKidError,
  NonceStoreUnavailableError,
  TokenParseError,
  TokenTooLongError,
  VerificationError,
} from './errors.js';
import { isAsymmetricAlgorithm, verifySignature } from './jws.js';
import { messageOf } from './signing.js';
import {
  systemClock,
  type ClaimsVerifier,
  type Clock,
  type JwtClaims,
  type JwtHeader,
  type NonceStore,
  type PublicKeyResolver,
  type VerificationKey,
} from './types.js';

const BEARER = /^bearer\s+(.+)$/i;
const BASIC = /^basic\s+(.+)$/i;
const BASE64URL = /^[A-Za-z0-9_-]*$/;

/**
 * The token of a request: `Authorization: Bearer <jwt>` (prefix case-insensitive), or the
 * password of `Authorization: Basic` (any user name), as the Go verifier reads it.
 * With several Authorization headers (a Go or Node signer appends its own after the client's),
 * the last Bearer one is the signer's; otherwise the first header is read, as Go does.
 */
export function extractToken(authorization: string | readonly string[] | undefined): string {
  if (typeof authorization === 'string') {
    // The usual case, one header `Bearer <token>` (any case): read without a regex. What the
    // regex below would take is the same: the rest after one space, trimmed.
    if (authorization.length > 7 && authorization.charCodeAt(6) === 32 && isPrintableAscii(authorization.charCodeAt(7)) && authorization.slice(0, 6).toLowerCase() === 'bearer') {
      return authorization.slice(7).trim();
    }
    const bearer = BEARER.exec(authorization.trim());
    if (bearer) return bearer[1]!.trim();
  }
  const values = typeof authorization === 'string' ? [authorization] : (authorization ?? []);
  for (let i = values.length - 1; i >= 0; i--) {
    const bearer = BEARER.exec(values[i]!.trim());
    if (bearer) return bearer[1]!.trim();
  }
  const first = values[0];
  const basic = first === undefined ? null : BASIC.exec(first.trim());
  if (basic) {
    const decoded = Buffer.from(basic[1]!.trim(), 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon >= 0) return decoded.slice(colon + 1);
  }
  // The Go body says "Could not parse JWT" for all of these; the log says which.
  throw new TokenParseError().with({ problem: values.length === 0 ? 'no Authorization header' : 'no Bearer token or Basic password in Authorization' });
}

/** `!` to `~`: not whitespace for the regex's `\s`. */
function isPrintableAscii(c: number): boolean {
  return c > 32 && c < 127;
}

export interface ParsedJwt {
  header: JwtHeader;
  claims: Record<string, unknown>;
  signingInput: string;
  signature: Buffer;
}

function decodeJsonSegment(segment: string): Record<string, unknown> {
  if (!BASE64URL.test(segment)) throw new TokenParseError();
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(segment, 'base64url').toString('utf8'));
  } catch (cause) {
    throw new TokenParseError({ cause });
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new TokenParseError();
  return value as Record<string, unknown>;
}

/**
 * Splits and decodes a compact JWS without trusting anything in it yet. With `lastHeader`, a header
 * segment equal to the last one is not decoded again.
 */
export function parseJwt(token: string, lastHeader?: LastHeader): ParsedJwt {
  const firstDot = token.indexOf('.');
  const secondDot = firstDot < 0 ? -1 : token.indexOf('.', firstDot + 1);
  if (secondDot < 0 || token.indexOf('.', secondDot + 1) >= 0) throw new TokenParseError();
  const encodedHeader = token.slice(0, firstDot);
  const encodedClaims = token.slice(firstDot + 1, secondDot);
  const encodedSignature = token.slice(secondDot + 1);
  // Checked in the order Go's parse does: header and claims decoded, signature decoded, then the header's fields.
  const known = lastHeader?.segment === encodedHeader ? lastHeader.header : undefined;
  const decodedHeader = known ?? decodeJsonSegment(encodedHeader);
  const claims = decodeJsonSegment(encodedClaims);
  if (!BASE64URL.test(encodedSignature)) throw new TokenParseError();
  const header = known ?? checkedHeader(decodedHeader);
  if (lastHeader !== undefined && known === undefined) {
    lastHeader.segment = encodedHeader;
    lastHeader.header = header;
  }
  return {
    header,
    claims,
    // A slice of the token, not a concatenation that would be flattened (copied) again to be hashed.
    signingInput: token.slice(0, secondDot),
    signature: Buffer.from(encodedSignature, 'base64url'),
  };
}

/**
 * The header segment parseJwt read last, and what it read: every token of one signer has the same
 * header (alg, kid, typ), so a verifier decodes it once, not once per request. Frozen: the object is
 * handed to every request that carries it.
 */
export interface LastHeader {
  segment: string;
  header: JwtHeader | undefined;
}

/**
 * As in Go: a missing or non-string `alg`, or a non-string `kid`, is a parse error; an absent
 * `kid` is MissingKidError.
 */
function checkedHeader(header: Record<string, unknown>): JwtHeader {
  if (typeof header.alg !== 'string') throw new TokenParseError();
  if (header.kid !== undefined && typeof header.kid !== 'string') throw new TokenParseError();
  if (header.kid === undefined) throw new MissingKidError();
  return Object.freeze(header) as JwtHeader;
}

/** scheme and host of a URL as written (Go's url.Parse keeps an explicit port), or undefined. */
function schemeAndHost(url: string): { scheme: string; host: string } | undefined {
  const match = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\/(?:[^/?#@]*@)?([^/?#]*)/.exec(url);
  return match ? { scheme: match[1]!.toLowerCase(), host: match[2]!.toLowerCase() } : undefined;
}

/** Go's NumericDate reading: a JSON number, truncated to whole seconds. */
function seconds(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? Math.trunc(value) : undefined;
}

/** The stable `code` of an error, also of one made by another copy of this package (a plugin's). */
function codeOf(thrown: unknown): unknown {
  return typeof thrown === 'object' && thrown !== null ? (thrown as { code?: unknown }).code : undefined;
}

/*
 * Each seam a plugin can fill turns what it throws into that seam's documented answer, as the Go
 * verifier does: a VerificationError keeps its own answer; anything else is the plugin refusing
 * (claims verifier: 403 `Error verifying claims: <message>`) or failing (key server: 403
 * `Unexpected key server error`; nonce store: 503, fail closed). Only a bug of ours is left to
 * become a 500. The original error is kept as `cause` for the log.
 */

function keyServerFailure(thrown: unknown): VerificationError {
  if (thrown instanceof VerificationError) return thrown;
  // core's own key errors, thrown by a plugin that imported another copy of this package
  const code = codeOf(thrown);
  if (code === KeyNotFoundError.code) return new KeyNotFoundError({ cause: thrown });
  if (code === KeyExpiredError.code) return new KeyExpiredError({ cause: thrown });
  return new KeyServerUnavailableError({ cause: thrown });
}

function claimsRefusal(thrown: unknown): VerificationError {
  if (thrown instanceof VerificationError) return thrown;
  return new ClaimsVerificationError(messageOf(thrown), { cause: thrown });
}

function nonceStoreFailure(thrown: unknown): VerificationError {
  if (thrown instanceof VerificationError) return thrown;
  return new NonceStoreUnavailableError({ cause: thrown });
}

export interface RequestVerifierOptions {
  /** The audience this verifier accepts: its advertised `scheme://host[:port]` (path ignored). */
  audience: string;
  /** Allowed clock skew for `iat`, in ms (Go default 5m). */
  maxSkew: number;
  /** Longest allowed `exp - iat`, in ms (Go default 5m). */
  maxTtl: number;
  keyResolver: PublicKeyResolver;
  nonceStore: NonceStore;
  claimsVerifiers?: readonly ClaimsVerifier[];
  clock?: Clock;
}

export interface VerifiedToken {
  header: JwtHeader;
  claims: JwtClaims;
}

/**
 * Decides whether a request may pass. The checks run in the Go tool's order (so the same
 * token gets the same answer), with three fixes: the algorithm must be one the key allows,
 * the nonce is claimed only after the signature and claims verifiers passed (a forged token
 * cannot burn a jti), and the claim is one atomic insert-if-absent.
 */
export class RequestVerifier {
  readonly #options: RequestVerifierOptions & { clock: Clock };
  readonly #audience: { scheme: string; host: string };
  /** The last `aud` string that matched: every token of one signer carries the same, parsed once. */
  #acceptedAud: string | undefined;
  /** Likewise the last header segment (parseJwt). */
  readonly #lastHeader: LastHeader = { segment: '', header: undefined };

  constructor(options: RequestVerifierOptions) {
    this.#options = { clock: systemClock, ...options };
    const audience = schemeAndHost(options.audience);
    if (!audience) throw new TypeError(`audience must be an absolute URL: ${options.audience}`);
    this.#audience = audience;
  }

  /** Verifies a request's Authorization header value(s); rejects with a VerificationError. */
  verifyRequest(authorization: string | readonly string[] | undefined): Promise<VerifiedToken> {
    // Not async: verifyToken's own promise is returned as it is (an async function would wrap it
    // in one more promise and two more turns of the microtask queue).
    let token: string;
    try {
      token = extractToken(authorization);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.verifyToken(token);
  }

  /** Throws InvalidClaimError('aud') unless `aud` names this verifier's scheme and host; remembers one that does. */
  #checkAudience(aud: unknown): void {
    const parsed = typeof aud === 'string' ? schemeAndHost(aud) : undefined;
    if (!parsed || parsed.scheme !== this.#audience.scheme || parsed.host !== this.#audience.host) {
      throw new InvalidClaimError('aud').with({ expected_aud: `${this.#audience.scheme}://${this.#audience.host}`, received_aud: typeof aud === 'string' ? aud.slice(0, 200) : typeof aud });
    }
    this.#acceptedAud = aud as string;
  }

  async verifyToken(token: string): Promise<VerifiedToken> {
    const { keyResolver, nonceStore, claimsVerifiers, maxSkew, maxTtl, clock } = this.#options;
    const { header, claims, signingInput, signature } = parseJwt(token, this.#lastHeader);
    const now = clock();

    const iss = claims.iss;
    if (typeof iss !== 'string') throw new InvalidClaimError('iss');
    if (claims.aud !== this.#acceptedAud || claims.aud === undefined) this.#checkAudience(claims.aud);
    const exp = seconds(claims.exp);
    if (exp === undefined || exp * 1000 < now) throw new InvalidClaimError('exp').with(exp === undefined ? { problem: 'missing or not a number' } : { expired_s_ago: Math.round(now / 1000 - exp) });
    const nbf = seconds(claims.nbf);
    if (nbf === undefined || nbf * 1000 > now) throw new InvalidClaimError('nbf').with(nbf === undefined ? { problem: 'missing or not a number' } : { valid_in_s: Math.round(nbf - now / 1000) });
    const iat = seconds(claims.iat);
    if (iat === undefined || iat * 1000 > now + maxSkew) {
      throw new InvalidClaimError('iat').with(iat === undefined ? { problem: 'missing or not a number' } : { issued_in_future_s: Math.round(iat - now / 1000), max_skew_s: maxSkew / 1000 });
    }
    if ((exp - iat) * 1000 > maxTtl) throw new TokenTooLongError().with({ ttl_s: exp - iat, max_ttl_s: maxTtl / 1000 });
    const jti = claims.jti;
    if (typeof jti !== 'string' || jti === '') throw new InvalidClaimError('jti');

    // Each call into a plugin is wrapped where it is awaited: no extra promise on the way.
    let publicKey: VerificationKey;
    try {
      publicKey = await keyResolver.resolve(iss, header.kid);
    } catch (error) {
      throw keyServerFailure(error);
    }
    if (!Array.isArray(publicKey?.algorithms)) throw new KeyServerUnavailableError({ cause: new TypeError('the key server answered without a key') });
    const alg = header.alg;
    if (!isAsymmetricAlgorithm(alg) || !publicKey.algorithms.includes(alg)) throw new InvalidSignatureError();
    if (!verifySignature(alg, signingInput, signature, publicKey.key)) throw new InvalidSignatureError();

    const verified = claims as JwtClaims;
    if (claimsVerifiers) {
      for (const verifier of claimsVerifiers) {
        try {
          // Most claims verifiers (static) answer synchronously: await only a promise.
          const pending = verifier.verify(verified);
          if (pending !== undefined) await pending;
        } catch (error) {
          throw claimsRefusal(error);
        }
      }
    }

    let claimed: boolean;
    try {
      claimed = await nonceStore.claim(jti, exp);
    } catch (error) {
      throw nonceStoreFailure(error);
    }
    // Fail closed: only an explicit true lets the token pass.
    if (claimed !== true) throw new InvalidClaimError('jti');
    return { header, claims: verified };
  }
}

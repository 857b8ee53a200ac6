import { randomFillSync } from 'node:crypto';
import { SigningError } from './errors.js';
import { signAsync } from './jws.js';
import { systemClock, type Clock, type PrivateKeySource, type SigningKey } from './types.js';

const NONCE_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

/**
 * A nonce of `length` characters from [A-Za-z0-9+/], drawn from the CSPRNG.
 * 64 symbols: the low six bits of each random byte pick one without bias.
 */
export function generateNonce(length: number): string {
  const bytes = randomFillSync(Buffer.allocUnsafe(length));
  let nonce = '';
  for (let i = 0; i < length; i++) nonce += NONCE_ALPHABET[bytes[i]! & 63];
  return nonce;
}

/**
 * The audience for a request target: `scheme://host[:port]` exactly as written in the absolute
 * URL (Go uses req.URL.Scheme + "://" + req.URL.Host, so an explicit default port stays).
 */
export function audienceOf(absoluteUrl: string): string {
  const match = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\/(?:[^/?#@]*@)?([^/?#]*)/.exec(absoluteUrl);
  if (!match) throw new SigningError(`not an absolute URL: ${absoluteUrl}`);
  return `${match[1]!.toLowerCase()}://${match[2]}`;
}

export interface RequestSignerOptions {
  issuer: string;
  /** Token lifetime in ms (Go `expiration_time`, default 5m). */
  expirationTime: number;
  /** How far nbf is set back, in ms (Go `max_skew`, default 1m). */
  maxSkew: number;
  nonceLength: number;
  keySource: PrivateKeySource;
  clock?: Clock;
}

/** The message of whatever a plugin threw (an Error, a string, anything). */
export function messageOf(thrown: unknown): string {
  if (thrown instanceof Error) return thrown.message;
  if (typeof thrown === 'string') return thrown;
  return String((thrown as { message?: unknown } | null | undefined)?.message ?? thrown);
}

const encodeSegment = (json: string): string => Buffer.from(json).toString('base64url');

/** Signs outgoing requests: one fresh single-use JWT per request, in the Go tool's exact format. */
export class RequestSigner {
  readonly #options: Required<RequestSignerOptions>;
  // The encoded header only changes with the key; cache it per key.
  #headerFor: { key: SigningKey; encoded: string } | undefined;

  constructor(options: RequestSignerOptions) {
    this.#options = { clock: systemClock, ...options };
  }

  #encodedHeader(key: SigningKey): string {
    if (this.#headerFor?.key !== key) {
      // Key order matters for byte-equality with Go, which marshals a sorted map.
      this.#headerFor = { key, encoded: encodeSegment(JSON.stringify({ alg: key.alg, kid: key.kid, typ: 'JWT' })) };
    }
    return this.#headerFor.encoded;
  }

  /** A signed JWT for `audience` (see audienceOf). Rejects with SigningError (NoActiveKeyError when no key is approved). */
  async sign(audience: string): Promise<string> {
    const { issuer, expirationTime, maxSkew, nonceLength, keySource, clock } = this.#options;
    let key: SigningKey;
    try {
      key = keySource.activeKey();
    } catch (error) {
      // A private key source (a plugin) that throws: 502 `unable to sign request: <its message>`.
      throw error instanceof SigningError ? error : new SigningError(messageOf(error), { cause: error });
    }
    if (key?.privateKey === undefined || typeof key.alg !== 'string') throw new SigningError('the private key source returned no key');
    const now = Math.floor(clock() / 1000);
    // Claims in sorted key order, as Go's JSON encoding of a map produces them.
    const claims = {
      aud: audience,
      exp: now + Math.floor(expirationTime / 1000),
      iat: now,
      iss: issuer,
      jti: generateNonce(nonceLength),
      nbf: now - Math.floor(maxSkew / 1000),
    };
    const signingInput = `${this.#encodedHeader(key)}.${encodeSegment(JSON.stringify(claims))}`;
    let signature: Buffer;
    try {
      signature = await signAsync(key.alg, signingInput, key.privateKey);
    } catch (error) {
      throw new SigningError(`signature failed: ${(error as Error).message}`, { cause: error });
    }
    return `${signingInput}.${signature.toString('base64url')}`;
  }

  /** The `Authorization` header value for a request to `audience`: `Bearer <jwt>`. */
  async authorizationFor(audience: string): Promise<string> {
    return `Bearer ${await this.sign(audience)}`;
  }
}

import { createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import { algorithmsFor, type AsymmetricAlgorithm, type VerificationKey } from '@jwtproxy/core';
import { JwksInvalidError, UnusableJwkError } from './errors.js';

/** Every algorithm a key of a set may verify here; `none` and HMAC are never among them. */
export const supportedAlgorithms = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const satisfies readonly AsymmetricAlgorithm[];

/** Smallest RSA modulus accepted, in bits (NIST SP 800-131A; jose refuses smaller ones too). */
export const MIN_RSA_BITS = 2048;
/** Largest RSA modulus accepted, in bits: a bigger key makes every verification slow. */
export const MAX_RSA_BITS = 8192;
/** Longest `kid` kept; a token naming a longer one is refused without a lookup. */
export const MAX_KID_LENGTH = 1024;

/** The public members of each key type: the only ones imported (a private `d` published by mistake is never read). */
const PUBLIC_MEMBERS = { RSA: ['n', 'e'], EC: ['crv', 'x', 'y'], OKP: ['crv', 'x'] } as const;
type KeyType = keyof typeof PUBLIC_MEMBERS;

/** Longest base64url text of each member: RSA n for MAX_RSA_BITS (plus a leading zero byte), the rest small. */
const MAX_MEMBER_LENGTH: Record<string, number> = { n: Math.ceil(((MAX_RSA_BITS / 8 + 1) * 4) / 3), e: 16, crv: 16, x: 100, y: 100 };

/** The curves a set's EC and OKP keys may be on: those core can verify. */
const CURVES: Record<'EC' | 'OKP', readonly string[]> = { EC: ['P-256', 'P-384', 'P-521'], OKP: ['Ed25519'] };

const BASE64URL = /^[A-Za-z0-9_-]+$/;

const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];

/** The rules a set's keys are read under (the verifier's `algorithms` allowlist). */
export interface JwkRules {
  /** Algorithms this key server accepts; a key fit for none of them is refused. */
  readonly algorithms: ReadonlySet<AsymmetricAlgorithm>;
}

/** A key ready for `resolve`: the same settled promise handed to every request, so a hit allocates nothing. */
export interface UsableKey {
  readonly key: VerificationKey;
  readonly resolved: Promise<VerificationKey>;
}

/** What one read of a JWK set gave. */
export interface KeySetContents {
  /** Usable keys by kid. */
  readonly keys: ReadonlyMap<string, UsableKey>;
  /** Kids whose keys were refused (a token naming one is told why); kids on two different keys are here too. */
  readonly refused: ReadonlyMap<string, UnusableJwkError>;
  /** Keys refused that have no usable kid (no token can name them). */
  readonly refusedWithoutKid: readonly UnusableJwkError[];
  /** How many keys the set listed. */
  readonly listed: number;
  /** Whether a key carried private members, which were ignored (the publisher leaks its private key). */
  readonly privateMembersIgnored: boolean;
}

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);
const isSupportedAlgorithm = (alg: string): alg is AsymmetricAlgorithm => (supportedAlgorithms as readonly string[]).includes(alg);

/**
 * One JWK of a set as a verification key. Refuses (UnusableJwkError): symmetric and unknown key
 * types, `use` other than `sig`, `key_ops` without `verify`, curves core cannot verify, RSA
 * moduli outside 2048-8192 bits or an exponent below 3 or even (e = 1 makes any signature
 * "verify"), an `alg` that does not fit the key, and keys no algorithm of `rules` fits. The
 * algorithms are the JWK's `alg` when it names one, else those of the key type; never the token's.
 */
export function verificationKeyFromJwk(jwk: unknown, rules: JwkRules): { kid: string; key: VerificationKey; hadPrivateMembers: boolean } {
  if (!isRecord(jwk)) throw new UnusableJwkError(undefined, 'not a JSON object');
  const kid = typeof jwk.kid === 'string' && jwk.kid !== '' && jwk.kid.length <= MAX_KID_LENGTH ? jwk.kid : undefined;
  const refuse = (problem: string): never => {
    throw new UnusableJwkError(kid, problem);
  };
  if (kid === undefined) refuse(jwk.kid === undefined ? 'no "kid" (a token cannot name it)' : '"kid" is not a string of 1 to 1024 characters');
  const kty = jwk.kty;
  if (kty === 'oct') refuse('a symmetric key (kty "oct"): it would let anyone who can read the set sign');
  if (kty !== 'RSA' && kty !== 'EC' && kty !== 'OKP') refuse(`unsupported "kty" ${describe(kty)}`);
  const type = kty as KeyType;
  if (jwk.use !== undefined && jwk.use !== 'sig') refuse(`"use" is ${describe(jwk.use)}, not "sig"`);
  if (jwk.key_ops !== undefined && !(Array.isArray(jwk.key_ops) && jwk.key_ops.includes('verify'))) refuse('"key_ops" does not include "verify"');
  if (jwk.alg !== undefined && (typeof jwk.alg !== 'string' || !isSupportedAlgorithm(jwk.alg))) refuse(`"alg" ${describe(jwk.alg)} is not one of ${supportedAlgorithms.join(', ')}`);
  if (type !== 'RSA' && !CURVES[type].includes(jwk.crv as string)) refuse(`curve ${describe(jwk.crv)} is not one of ${CURVES[type].join(', ')}`);

  const members: Record<string, string> = { kty: type };
  for (const name of PUBLIC_MEMBERS[type]) {
    const value = jwk[name];
    if (typeof value !== 'string' || value === '') refuse(`"${name}" is missing or not a string`);
    if ((value as string).length > MAX_MEMBER_LENGTH[name]!) refuse(`"${name}" is longer than a supported key's`);
    // Node decodes base64 leniently (it skips what it cannot read): the text must be base64url to the letter.
    if (name !== 'crv' && !BASE64URL.test(value as string)) refuse(`"${name}" is not base64url`);
    members[name] = value as string;
  }
  let key: KeyObject;
  try {
    key = createPublicKey({ key: members as JsonWebKey, format: 'jwk' });
  } catch {
    return refuse(`not a valid ${type} public key`);
  }

  if (type === 'RSA') {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < MIN_RSA_BITS || bits > MAX_RSA_BITS) refuse(`an RSA key of ${bits} bits (accepted: ${MIN_RSA_BITS} to ${MAX_RSA_BITS})`);
    const exponent = key.asymmetricKeyDetails?.publicExponent ?? 0n;
    if (exponent < 3n || exponent % 2n === 0n) refuse(`RSA public exponent ${exponent} (it must be odd and at least 3)`);
  }
  const fitting = algorithmsFor(key);
  if (typeof jwk.alg === 'string' && !fitting.includes(jwk.alg as AsymmetricAlgorithm)) refuse(`"alg" ${jwk.alg} does not fit a ${type} key${type === 'RSA' ? '' : ` on ${String(jwk.crv)}`}`);
  const own = typeof jwk.alg === 'string' ? [jwk.alg as AsymmetricAlgorithm] : fitting;
  const algorithms = own.filter((alg) => rules.algorithms.has(alg));
  if (algorithms.length === 0) refuse(`fit for ${own.join(', ')}, none of them in this key server's algorithms`);
  const hadPrivateMembers = PRIVATE_MEMBERS.some((name) => jwk[name] !== undefined);
  return { kid: kid!, key: Object.freeze({ key, algorithms: Object.freeze(algorithms) }), hadPrivateMembers };
}

/**
 * Reads a JWK set's text. The set as a whole is refused (JwksInvalidError) when it is not JSON,
 * has no `keys` list, lists more than `maxKeys` keys, or lists keys of which none is usable (a
 * broken publisher: the keys read before are kept instead). An empty list is the publisher's word
 * and is taken. Single unusable keys are set aside with their reason; two different usable keys
 * under one kid make that kid refused (which one signed is unknowable).
 */
export function readKeySet(text: string, rules: JwkRules, maxKeys: number): KeySetContents {
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch {
    throw new JwksInvalidError('the answer is not JSON');
  }
  if (!isRecord(document) || !Array.isArray(document.keys)) throw new JwksInvalidError('the answer is not a JWK set (no "keys" list)');
  const listed = document.keys.length;
  if (listed > maxKeys) throw new JwksInvalidError(`the set lists ${listed} keys, more than max_keys (${maxKeys})`);

  const keys = new Map<string, UsableKey>();
  const refused = new Map<string, UnusableJwkError>();
  const refusedWithoutKid: UnusableJwkError[] = [];
  let privateMembersIgnored = false;
  for (const jwk of document.keys) {
    let read;
    try {
      read = verificationKeyFromJwk(jwk, rules);
    } catch (error) {
      const unusable = error as UnusableJwkError;
      // A kid with a usable key elsewhere in the set keeps it (a set may list one kid for "sig" and for "enc").
      if (unusable.kid === undefined) refusedWithoutKid.push(unusable);
      else if (!keys.has(unusable.kid)) refused.set(unusable.kid, unusable);
      continue;
    }
    privateMembersIgnored ||= read.hadPrivateMembers;
    const { kid, key } = read;
    if (refused.get(kid)?.problem === DUPLICATE) continue;
    const earlier = keys.get(kid);
    if (earlier === undefined) {
      refused.delete(kid);
      keys.set(kid, { key, resolved: Promise.resolve(key) });
    } else if (earlier.key.key.equals(key.key)) {
      // The same key listed twice (once per alg): it verifies what either entry allows.
      const algorithms = Object.freeze([...new Set([...earlier.key.algorithms, ...key.algorithms])]);
      const merged = Object.freeze({ key: earlier.key.key, algorithms });
      keys.set(kid, { key: merged, resolved: Promise.resolve(merged) });
    } else {
      keys.delete(kid);
      refused.set(kid, new UnusableJwkError(kid, DUPLICATE));
    }
  }
  if (listed > 0 && keys.size === 0) {
    const first = refused.values().next().value ?? refusedWithoutKid[0];
    throw new JwksInvalidError(`none of the ${listed} keys is usable${first ? ` (${first.message})` : ''}`);
  }
  return { keys, refused, refusedWithoutKid, listed, privateMembersIgnored };
}

const DUPLICATE = 'two different keys have this kid';

/** A value for a message: strings quoted and cut short (they come from the source). */
function describe(value: unknown): string {
  if (value === undefined) return 'missing';
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 37)}...` : value);
  return Array.isArray(value) ? 'a list' : typeof value;
}

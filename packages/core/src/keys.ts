import type { KeyObject } from 'node:crypto';
import type { AsymmetricAlgorithm, SigningKey, VerificationKey } from './types.js';

const rsaAlgorithms: readonly AsymmetricAlgorithm[] = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'];

/**
 * The algorithms a key may verify, derived from the key itself and never from the token:
 * this is what refuses `alg: none` and HMAC tokens made with a public key as the secret.
 */
export function algorithmsFor(key: KeyObject): readonly AsymmetricAlgorithm[] {
  switch (key.asymmetricKeyType) {
    case 'rsa':
      return rsaAlgorithms;
    case 'rsa-pss':
      return ['PS256', 'PS384', 'PS512'];
    case 'ec':
      switch (key.asymmetricKeyDetails?.namedCurve) {
        case 'prime256v1':
          return ['ES256'];
        case 'secp384r1':
          return ['ES384'];
        case 'secp521r1':
          return ['ES512'];
        default:
          return [];
      }
    case 'ed25519':
      return ['EdDSA'];
    default:
      return [];
  }
}

/** A public (or private, from which the public half is used) key ready for verification. */
export function verificationKeyFrom(key: KeyObject): VerificationKey {
  return { key, algorithms: algorithmsFor(key) };
}

/** A signing key: RS256 for RSA keys (as the Go tool), ES256/384/512 for EC keys, EdDSA for Ed25519. */
export function signingKeyFromKeyObject(kid: string, privateKey: KeyObject): SigningKey {
  if (privateKey.type !== 'private') throw new TypeError('a signing key must be a private key');
  const alg = algorithmsFor(privateKey)[0];
  if (!alg) throw new TypeError(`unsupported key type ${privateKey.asymmetricKeyType ?? 'unknown'}`);
  return { kid, alg, privateKey };
}

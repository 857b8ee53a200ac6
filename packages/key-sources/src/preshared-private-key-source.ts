import { createPublicKey, type KeyObject } from 'node:crypto';
import path from 'node:path';
import { ConfigError, defineComponent, schema as s, signingKeyFromKeyObject, type PrivateKeySource, type SigningKey } from '@jwtproxy/core';
import type { ActiveKeyEvents } from './active-key-events.js';
import { readPrivateKeyFile } from './pem.js';

export interface PresharedPrivateKeySourceOptions {
  /** The `kid` put in every token's header. */
  keyId: string;
  /** RSA (signs RS256, as the Go tool) or EC P-256 (signs ES256). */
  privateKey: KeyObject;
}

/**
 * `private_key: {type: preshared}`: one key, read once, signing every token. The SigningKey is
 * built at construction so the hot path only returns a reference.
 */
/** A public JWK as a JWK set lists it: the key's public members, plus kid, alg and use. */
export interface PublicSigningJwk {
  readonly kty: string;
  readonly kid: string;
  readonly alg: string;
  readonly use: 'sig';
  readonly [member: string]: string;
}

export class PresharedPrivateKeySource implements PrivateKeySource, ActiveKeyEvents {
  readonly #signingKey: SigningKey;
  readonly #publicJwk: PublicSigningJwk;

  /** Throws TypeError for a public key or a key type no JWS algorithm fits. */
  constructor(options: PresharedPrivateKeySourceOptions) {
    if (options.keyId === '') throw new TypeError('keyId must not be empty');
    this.#signingKey = Object.freeze(signingKeyFromKeyObject(options.keyId, options.privateKey));
    // Node exports only the public members of a public key (base64url, no padding).
    const members = createPublicKey(options.privateKey).export({ format: 'jwk' }) as Record<string, string>;
    const { kty = '' } = members;
    this.#publicJwk = Object.freeze({ ...members, kty, kid: options.keyId, alg: this.#signingKey.alg, use: 'sig' as const });
  }

  /** The public half of the key, for a JWK set (e.g. the admin listener's `/.well-known/jwks.json`). */
  publicJwks(): readonly PublicSigningJwk[] {
    return [this.#publicJwk];
  }

  /**
   * Reads a PEM private key file (`RSA PRIVATE KEY`, `PRIVATE KEY` or `EC PRIVATE KEY`).
   * Failures are ConfigErrors naming `private_key_path`.
   */
  static fromFile(keyId: string, privateKeyPath: string): PresharedPrivateKeySource {
    const privateKey = readPrivateKeyFile('private_key_path', privateKeyPath);
    try {
      return new PresharedPrivateKeySource({ keyId, privateKey });
    } catch (error) {
      throw new ConfigError('private_key_path', `${privateKeyPath}: ${(error as Error).message}`);
    }
  }

  /** Its key never changes: the listener is never called. */
  onActiveKeyChange(_listener: () => void): () => void {
    return () => {};
  }

  /** The same object on every call. */
  activeKey(): SigningKey {
    return this.#signingKey;
  }
}

/** `private_key: {type: preshared, options: {key_id, private_key_path}}`. */
export const presharedPrivateKeySource = defineComponent({
  type: 'preshared',
  description: 'One private key, read once at start, signs every token.',
  options: s.strictObject({
    key_id: s.pipe(s.string(), s.minLength(1), s.description("The `kid` put in every token's header.")),
    private_key_path: s.pipe(
      s.string(),
      s.minLength(1),
      s.description('PEM private key (`RSA PRIVATE KEY`, `PRIVATE KEY` or `EC PRIVATE KEY`; RSA signs RS256, EC P-256 ES256), relative to the configuration file.'),
    ),
  }),
  create(options, context): PresharedPrivateKeySource {
    const file = path.resolve(context.baseDir, options.private_key_path);
    const source = PresharedPrivateKeySource.fromFile(options.key_id, file);
    // The path and key id only; never anything read from the file.
    context.logger.info('preshared private key loaded', { key_id: options.key_id, alg: source.activeKey().alg, path: file });
    return source;
  },
  /** -check: the file is read and must hold a private key the signer can sign with. */
  check(options, context): void {
    PresharedPrivateKeySource.fromFile(options.key_id, path.resolve(context.baseDir, options.private_key_path));
  },
});

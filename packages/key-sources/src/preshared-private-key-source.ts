import type { KeyObject } from 'node:crypto';
import {
  ConfigError,
  signingKeyFromKeyObject,
  type ComponentContext,
  type PrivateKeySource,
  type SigningKey,
} from '@jwtproxy/core';
import { readPrivateKeyFile } from './pem.js';
import { rejectUnknownOptions, requiredString, resolvePath } from './options.js';

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
export class PresharedPrivateKeySource implements PrivateKeySource {
  readonly #signingKey: SigningKey;

  /** Throws TypeError for a public key or a key type no JWS algorithm fits. */
  constructor(options: PresharedPrivateKeySourceOptions) {
    if (options.keyId === '') throw new TypeError('keyId must not be empty');
    this.#signingKey = Object.freeze(signingKeyFromKeyObject(options.keyId, options.privateKey));
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

  /** The same object on every call. */
  activeKey(): SigningKey {
    return this.#signingKey;
  }
}

/** The registry factory: options `key_id` and `private_key_path` (relative to the configuration file). */
export function createPresharedPrivateKeySource(options: Record<string, unknown>, context: ComponentContext): PresharedPrivateKeySource {
  rejectUnknownOptions(options, ['key_id', 'private_key_path']);
  const keyId = requiredString(options, 'key_id');
  const file = resolvePath(context.baseDir, requiredString(options, 'private_key_path'));
  const source = PresharedPrivateKeySource.fromFile(keyId, file);
  // The path and key id only; never anything read from the file.
  context.logger.info('preshared private key loaded', { key_id: keyId, alg: source.activeKey().alg, path: file });
  return source;
}

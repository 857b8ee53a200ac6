import type { KeyObject } from 'node:crypto';
import {
  ConfigError,
  KeyNotFoundError,
  verificationKeyFrom,
  type ComponentContext,
  type PublicKeyResolver,
  type VerificationKey,
} from '@jwtproxy/core';
import { readPublicKeyFile } from './pem.js';
import { rejectUnknownOptions, requiredString, resolvePath } from './options.js';

export interface PresharedKeyServerOptions {
  /** The only issuer accepted (compared case-insensitively, as the Go tool). */
  issuer: string;
  /** The only key id accepted (compared case-insensitively, as the Go tool). */
  keyId: string;
  publicKey: KeyObject;
}

/**
 * `key_server: {type: preshared}`: one issuer, one key id, one public key. The KeyObject and the
 * algorithms it allows are fixed at construction; `resolve` only compares two strings.
 */
export class PresharedKeyServer implements PublicKeyResolver {
  readonly #issuer: string;
  readonly #keyId: string;
  readonly #key: VerificationKey;
  readonly #resolved: Promise<VerificationKey>;

  /** Throws TypeError for a key no JWS algorithm fits. */
  constructor(options: PresharedKeyServerOptions) {
    const key = verificationKeyFrom(options.publicKey);
    if (key.algorithms.length === 0) {
      throw new TypeError(`unsupported key type ${options.publicKey.asymmetricKeyType ?? 'unknown'}`);
    }
    this.#issuer = options.issuer.toLowerCase();
    this.#keyId = options.keyId.toLowerCase();
    this.#key = Object.freeze({ key: key.key, algorithms: Object.freeze([...key.algorithms]) });
    this.#resolved = Promise.resolve(this.#key);
  }

  /** Reads a PEM `PUBLIC KEY`, `RSA PUBLIC KEY` or certificate; failures are ConfigErrors naming `public_key_path`. */
  static fromFile(issuer: string, keyId: string, publicKeyPath: string): PresharedKeyServer {
    const publicKey = readPublicKeyFile('public_key_path', publicKeyPath);
    try {
      return new PresharedKeyServer({ issuer, keyId, publicKey });
    } catch (error) {
      throw new ConfigError('public_key_path', `${publicKeyPath}: ${(error as Error).message}`);
    }
  }

  /** The one key for (issuer, kid), compared case-insensitively; anything else is KeyNotFoundError. */
  resolve(issuer: string, kid: string): Promise<VerificationKey> {
    if (issuer.toLowerCase() !== this.#issuer || kid.toLowerCase() !== this.#keyId) {
      return Promise.reject(new KeyNotFoundError());
    }
    return this.#resolved;
  }
}

/** The registry factory: options `issuer`, `key_id` and `public_key_path` (relative to the configuration file). */
export function createPresharedKeyServer(options: Record<string, unknown>, context: ComponentContext): PresharedKeyServer {
  rejectUnknownOptions(options, ['issuer', 'key_id', 'public_key_path']);
  const issuer = requiredString(options, 'issuer');
  const keyId = requiredString(options, 'key_id');
  const file = resolvePath(context.baseDir, requiredString(options, 'public_key_path'));
  const server = PresharedKeyServer.fromFile(issuer, keyId, file);
  context.logger.info('preshared public key loaded', { issuer, key_id: keyId, path: file });
  return server;
}

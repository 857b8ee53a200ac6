import type { KeyObject } from 'node:crypto';
import path from 'node:path';
import {
  ConfigError,
  KeyNotFoundError,
  defineComponent,
  schema as s,
  verificationKeyFrom,
  type PublicKeyResolver,
  type VerificationKey,
} from '@jwtproxy/core';
import { readPublicKeyFile } from './pem.js';

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

/** `key_server: {type: preshared, options: {issuer, key_id, public_key_path}}`. */
export const presharedKeyServer = defineComponent({
  type: 'preshared',
  description: 'One issuer, one key id, one public key (issuer and key id compared case-insensitively, as the Go tool).',
  options: s.strictObject({
    issuer: s.pipe(s.string(), s.minLength(1), s.description('The only issuer accepted.')),
    key_id: s.pipe(s.string(), s.minLength(1), s.description('The only key id accepted.')),
    public_key_path: s.pipe(
      s.string(),
      s.minLength(1),
      s.description('PEM `PUBLIC KEY`, `RSA PUBLIC KEY` or `CERTIFICATE`, relative to the configuration file.'),
    ),
  }),
  create(options, context): PresharedKeyServer {
    const file = path.resolve(context.baseDir, options.public_key_path);
    const server = PresharedKeyServer.fromFile(options.issuer, options.key_id, file);
    context.logger.info('preshared public key loaded', { issuer: options.issuer, key_id: options.key_id, path: file });
    return server;
  },
  /** -check: the file is read and must hold a public key of a kind the verifier accepts. */
  check(options, context): void {
    PresharedKeyServer.fromFile(options.issuer, options.key_id, path.resolve(context.baseDir, options.public_key_path));
  },
});

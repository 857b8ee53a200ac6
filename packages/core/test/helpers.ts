import { createPrivateKey, createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { interop } from '@jwtproxy/testkit';
import {
  KeyNotFoundError,
  RequestSigner,
  RequestVerifier,
  signingKeyFromKeyObject,
  verificationKeyFrom,
  type ClaimsVerifier,
  type Clock,
  type NonceStore,
  type PublicKeyResolver,
} from '../src/index.js';

export const privateKey = createPrivateKey(readFileSync(interop.privateKeyPath));
export const publicKey = createPublicKey(readFileSync(interop.publicKeyPath));
export const signingKey = signingKeyFromKeyObject('mykey', privateKey);

/** The interface a key server implements, answering for the interop key only. */
export const interopResolver: PublicKeyResolver = {
  async resolve(issuer, kid) {
    if (issuer.toLowerCase() !== 'jwtproxy' || kid.toLowerCase() !== 'mykey') throw new KeyNotFoundError();
    return verificationKeyFrom(publicKey);
  },
};

/** A nonce store that records what it was asked; the real ones live in @jwtproxy/nonce-stores. */
export class RecordingNonceStore implements NonceStore {
  readonly claimed = new Set<string>();
  async claim(jti: string): Promise<boolean> {
    if (this.claimed.has(jti)) return false;
    this.claimed.add(jti);
    return true;
  }
}

export function makeVerifier(options: { clock: Clock; audience?: string; nonceStore?: NonceStore; claimsVerifiers?: ClaimsVerifier[]; maxTtl?: number }) {
  const nonceStore = options.nonceStore ?? new RecordingNonceStore();
  const verifier = new RequestVerifier({
    audience: options.audience ?? 'http://127.0.0.1:8199/',
    maxSkew: 5 * 60_000,
    maxTtl: options.maxTtl ?? 5 * 60_000,
    keyResolver: interopResolver,
    nonceStore,
    claimsVerifiers: options.claimsVerifiers ?? [],
    clock: options.clock,
  });
  return { verifier, nonceStore };
}

export function makeSigner(clock: Clock, overrides: Partial<ConstructorParameters<typeof RequestSigner>[0]> = {}) {
  return new RequestSigner({
    issuer: 'jwtproxy',
    expirationTime: 5 * 60_000,
    maxSkew: 60_000,
    nonceLength: 32,
    keySource: { activeKey: () => signingKey },
    clock,
    ...overrides,
  });
}

/** Encodes a JWT from parts without signing it properly (for crafted bad tokens). */
export function encodeParts(header: unknown, claims: unknown, signature = 'c2ln'): string {
  const enc = (v: unknown) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
  return `${enc(header)}.${enc(claims)}.${signature}`;
}

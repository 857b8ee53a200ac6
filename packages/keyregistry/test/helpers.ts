import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import {
  RequestSigner,
  RequestVerifier,
  signingKeyFromKeyObject,
  type Logger,
  type NonceStore,
  type PublicKeyResolver,
  type SigningKey,
} from '@jwtproxy/core';

export interface TestKey {
  kid: string;
  privateKey: KeyObject;
  publicKey: KeyObject;
  jwk: Record<string, unknown>;
  signing: SigningKey;
}

export function rsaKey(kid: string): TestKey {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { kid, privateKey, publicKey, jwk: publicKey.export({ format: 'jwk' }) as Record<string, unknown>, signing: signingKeyFromKeyObject(kid, privateKey) };
}

/** A clock the test moves by hand. */
export function manualClock(start = Date.now()): { now: () => number; advance: (ms: number) => void } {
  let current = start;
  return { now: () => current, advance: (ms) => (current += ms) };
}

export interface LogLine {
  level: string;
  message: string;
  fields: Record<string, unknown> | undefined;
}

export function recordingLogger(): Logger & { lines: LogLine[] } {
  const lines: LogLine[] = [];
  const write = (level: string) => (message: string, fields?: Record<string, unknown>) => void lines.push({ level, message, fields });
  return { lines, debug: write('debug'), info: write('info'), warn: write('warn'), error: write('error') };
}

/** Replay protection as small as it gets: every jti once. */
export function setNonceStore(): NonceStore {
  const seen = new Set<string>();
  return { claim: async (jti) => (seen.has(jti) ? false : (seen.add(jti), true)) };
}

export const AUDIENCE = 'http://127.0.0.1:8081';

/** Signs a token as the forward proxy does and verifies it as the reverse proxy does, keys from `resolver`. */
export async function signAndVerify(resolver: PublicKeyResolver, issuer: string, key: SigningKey, clock: () => number = Date.now) {
  const signer = new RequestSigner({ issuer, expirationTime: 300_000, maxSkew: 60_000, nonceLength: 32, keySource: { activeKey: () => key }, clock });
  const verifier = new RequestVerifier({ audience: AUDIENCE, maxSkew: 300_000, maxTtl: 300_000, keyResolver: resolver, nonceStore: setNonceStore(), clock });
  return verifier.verifyRequest(await signer.authorizationFor(AUDIENCE));
}

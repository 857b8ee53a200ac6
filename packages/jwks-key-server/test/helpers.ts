import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { RequestSigner, RequestVerifier, signingKeyFromKeyObject, type Logger, type NonceStore, type PublicKeyResolver, type SigningKey } from '@jwtproxy/core';

/** A key pair made in the test, its public JWK (with kid) and its signing key. */
export interface TestKey {
  kid: string;
  publicKey: KeyObject;
  jwk: Record<string, unknown>;
  signing: SigningKey;
}

export function makeKey(kid: string, type: 'rsa' | 'ec' | 'ed25519' = 'rsa', extra: Record<string, unknown> = {}): TestKey {
  const pair =
    type === 'rsa'
      ? generateKeyPairSync('rsa', { modulusLength: 2048 })
      : type === 'ec'
        ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
        : generateKeyPairSync('ed25519');
  const jwk = { ...(pair.publicKey.export({ format: 'jwk' }) as Record<string, unknown>), kid, use: 'sig', ...extra };
  return { kid, publicKey: pair.publicKey, jwk, signing: signingKeyFromKeyObject(kid, pair.privateKey) };
}

/** How the test JWKS server answers the next GETs. */
export type JwksMode =
  | { kind: 'serve' }
  /** 503 at once. */
  | { kind: 'down' }
  /** Accepts, then never answers. */
  | { kind: 'silent' }
  /** Closes the connection without an answer. */
  | { kind: 'reset' }
  /** Answers 200 with this body and headers. */
  | { kind: 'raw'; body: string | Buffer; headers?: Record<string, string> }
  /** Answers 200, then sends `chunk` every `everyMs` for ever (a slow drip, or an endless body). */
  | { kind: 'drip'; chunk: string; everyMs: number }
  /** Answers with this status (and Location). */
  | { kind: 'status'; status: number; location?: string };

/**
 * A JWKS publisher on 127.0.0.1: serves `keys` at /jwks.json with `cacheControl`, an OIDC
 * discovery document at /.well-known/openid-configuration, counts every GET by path, and can be
 * made to misbehave (`mode`).
 */
export interface JwksServer {
  url: string;
  origin: string;
  keys: Record<string, unknown>[];
  cacheControl: string | undefined;
  mode: JwksMode;
  /** Wait this long before serving the set (a slow but good source). */
  delayMs: number;
  /** The discovery document's `issuer` and `jwks_uri` (defaults: origin and url). */
  discovery: Record<string, unknown> | undefined;
  /** GETs of the set so far. */
  readonly setGets: number;
  readonly discoveryGets: number;
  /** Resolves once `n` GETs of the set have come (or at once). */
  waitForSetGets(n: number, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export async function startJwksServer(keys: Record<string, unknown>[], cacheControl: string | undefined = 'max-age=300'): Promise<JwksServer> {
  let setGets = 0;
  let discoveryGets = 0;
  const waiters: Array<() => void> = [];
  const timers = new Set<NodeJS.Timeout>();
  const server = http.createServer((req, res) => {
    const isSet = req.url === '/jwks.json';
    if (isSet) {
      setGets++;
      for (const wake of waiters.splice(0)) wake();
    } else if (req.url === '/.well-known/openid-configuration') discoveryGets++;
    else {
      res.writeHead(404).end();
      return;
    }
    const mode = state.mode;
    switch (mode.kind) {
      case 'down':
        res.writeHead(503, { 'content-type': 'text/plain' }).end('down');
        return;
      case 'silent':
        return;
      case 'reset':
        req.socket.destroy();
        return;
      case 'status':
        res.writeHead(mode.status, mode.location ? { location: mode.location } : {}).end();
        return;
      case 'raw':
        res.writeHead(200, { 'content-type': 'application/json', ...mode.headers }).end(mode.body);
        return;
      case 'drip': {
        res.writeHead(200, { 'content-type': 'application/json' });
        const timer = setInterval(() => {
          if (res.destroyed) {
            clearInterval(timer);
            timers.delete(timer);
          } else res.write(mode.chunk);
        }, mode.everyMs);
        timers.add(timer);
        res.on('close', () => {
          clearInterval(timer);
          timers.delete(timer);
        });
        return;
      }
      case 'serve': {
        if (state.delayMs > 0 && isSet) {
          // The set as it is when asked, sent later: a read under way misses keys published meanwhile.
          const body = JSON.stringify({ keys: state.keys });
          const headers = { 'content-type': 'application/jwk-set+json', ...(state.cacheControl ? { 'cache-control': state.cacheControl } : {}) };
          const timer = setTimeout(() => {
            timers.delete(timer);
            if (!res.destroyed) res.writeHead(200, headers).end(body);
          }, state.delayMs);
          timers.add(timer);
          return;
        }
        const headers: Record<string, string> = { 'content-type': isSet ? 'application/jwk-set+json' : 'application/json' };
        if (state.cacheControl !== undefined) headers['cache-control'] = state.cacheControl;
        const body = isSet ? { keys: state.keys } : { issuer: origin, jwks_uri: `${origin}/jwks.json`, ...state.discovery };
        res.writeHead(200, headers).end(JSON.stringify(body));
      }
    }
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const state: JwksServer = {
    url: `${origin}/jwks.json`,
    origin,
    keys,
    cacheControl,
    mode: { kind: 'serve' },
    delayMs: 0,
    discovery: undefined,
    get setGets() {
      return setGets;
    },
    get discoveryGets() {
      return discoveryGets;
    },
    waitForSetGets(n, timeoutMs = 10_000) {
      if (setGets >= n) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`only ${setGets} GETs of the set, not ${n}, within ${timeoutMs} ms`)), timeoutMs);
        const check = (): void => {
          if (setGets >= n) {
            clearTimeout(timer);
            resolve();
          } else waiters.push(check);
        };
        waiters.push(check);
      });
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const timer of timers) clearTimeout(timer);
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  return state;
}

export const AUDIENCE = 'http://verifier.test:8082';

/** Each jti once, in memory. */
export function memoryNonceStore(): NonceStore {
  const seen = new Set<string>();
  return { claim: async (jti) => (seen.has(jti) ? false : (seen.add(jti), true)) };
}

/** A signer signing with whatever `current()` is when a request is signed (to rotate under load). */
export function signerFor(issuer: string, current: () => SigningKey): RequestSigner {
  return new RequestSigner({ issuer, expirationTime: 5 * 60_000, maxSkew: 60_000, nonceLength: 32, keySource: { activeKey: current } });
}

export function verifierFor(keyResolver: PublicKeyResolver): RequestVerifier {
  return new RequestVerifier({ audience: AUDIENCE, maxSkew: 5 * 60_000, maxTtl: 5 * 60_000, keyResolver, nonceStore: memoryNonceStore() });
}

export interface LogLine {
  level: string;
  message: string;
  fields: Record<string, unknown>;
}

export function recordingLogger(): Logger & { lines: LogLine[] } {
  const lines: LogLine[] = [];
  const write = (level: string) => (message: string, fields?: Record<string, unknown>) => void lines.push({ level, message, fields: fields ?? {} });
  return { lines, debug: write('debug'), info: write('info'), warn: write('warn'), error: write('error') };
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

import { createPrivateKey, createPublicKey } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { interop, readBody } from '@jwtproxy/testkit';
import {
  KeyNotFoundError,
  RequestSigner,
  RequestVerifier,
  signingKeyFromKeyObject,
  verificationKeyFrom,
  type Logger,
  type NonceStore,
  type PublicKeyResolver,
  type RunningProxy,
} from '@jwtproxy/core';
import { startVerifierProxy, type VerifierProxyOptions } from '../src/index.js';

/** The audience the test verifier accepts and the test signer signs for. */
export const AUDIENCE = 'http://verifier.test:8082';

const publicKey = createPublicKey(readFileSync(interop.publicKeyPath));
const signingKey = signingKeyFromKeyObject(interop.keyId, createPrivateKey(readFileSync(interop.privateKeyPath)));

/** Knows the interop key only, as a preshared key server would. */
export const interopKeyResolver: PublicKeyResolver = {
  async resolve(issuer, kid) {
    if (issuer !== interop.issuer || kid !== interop.keyId) throw new KeyNotFoundError();
    return verificationKeyFrom(publicKey);
  },
};

/** Each jti once, in memory. */
export class MemoryNonceStore implements NonceStore {
  readonly claimed = new Set<string>();
  async claim(jti: string): Promise<boolean> {
    if (this.claimed.has(jti)) return false;
    this.claimed.add(jti);
    return true;
  }
}

export function makeVerifier(nonceStore: NonceStore = new MemoryNonceStore()): RequestVerifier {
  return new RequestVerifier({ audience: AUDIENCE, maxSkew: 5 * 60_000, maxTtl: 5 * 60_000, keyResolver: interopKeyResolver, nonceStore });
}

export const signer = new RequestSigner({
  issuer: interop.issuer,
  expirationTime: 5 * 60_000,
  maxSkew: 60_000,
  nonceLength: 32,
  keySource: { activeKey: () => signingKey },
});

/** A fresh `Authorization: Bearer …` value for the test audience. */
export const bearer = (audience = AUDIENCE): Promise<string> => signer.authorizationFor(audience);

/** A logger that keeps its lines, to assert a failure was logged. */
export function recordingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const record = (level: string) => (message: string, fields?: Record<string, unknown>) => {
    lines.push(`${level} ${message} ${fields ? JSON.stringify(fields) : ''}`);
  };
  return { lines, debug: record('debug'), info: record('info'), warn: record('warn'), error: record('error') };
}

/** Starts a verifier proxy on 127.0.0.1 (port 0) and remembers to stop it. */
export async function startProxy(
  overrides: Partial<VerifierProxyOptions> & Pick<VerifierProxyOptions, 'upstream'>,
  cleanups: Array<() => Promise<unknown>>,
): Promise<RunningProxy & { logger: ReturnType<typeof recordingLogger> }> {
  const logger = recordingLogger();
  const proxy = await startVerifierProxy({
    listenAddr: '127.0.0.1:0',
    verifier: makeVerifier(),
    shutdownTimeout: 2_000,
    logger,
    ...overrides,
  });
  cleanups.push(() => proxy.stop());
  return Object.assign(proxy, { logger: (overrides.logger as ReturnType<typeof recordingLogger>) ?? logger });
}

export interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One request to the proxy; `target` is an address from RunningProxy (`http://…`, `https://…` or `unix:/…`). */
export async function send(
  target: string,
  options: {
    path?: string;
    method?: string;
    headers?: http.OutgoingHttpHeaders | string[];
    body?: string | Buffer;
    agent?: http.Agent | false;
    ca?: string;
  } = {},
): Promise<Answer> {
  const unix = target.startsWith('unix:');
  const url = unix ? undefined : new URL(target);
  const requestOptions: https.RequestOptions = {
    method: options.method ?? 'GET',
    path: options.path ?? '/',
    headers: options.headers ?? {},
    agent: options.agent ?? false,
    ...(unix ? { socketPath: target.slice('unix:'.length) } : { host: url!.hostname, port: url!.port }),
    ...(options.ca ? { ca: options.ca } : {}),
  };
  const request = url?.protocol === 'https:' ? https.request(requestOptions) : http.request(requestOptions);
  const answer = new Promise<Answer>((resolve, reject) => {
    request.once('response', (res) => {
      readBody(res).then((body) => resolve({ status: res.statusCode!, headers: res.headers, body }), reject);
    });
    request.once('error', reject);
  });
  request.end(options.body);
  return answer;
}

/** A temporary directory removed after the test. */
export function temporaryDirectory(cleanups: Array<() => Promise<unknown>>): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'jwtproxy-rp-'));
  cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Runs and empties the cleanups, newest first. */
export async function runCleanups(cleanups: Array<() => Promise<unknown>>): Promise<void> {
  while (cleanups.length > 0) await cleanups.pop()!().catch(() => undefined);
}

/** The Go verifier's refusal body for a reason. */
export const refusal = (reason: string): string => `jwtproxy: unable to verify request: ${reason}`;

import { createPrivateKey, createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import {
  KeyNotFoundError,
  NoActiveKeyError,
  RequestSigner,
  RequestVerifier,
  signingKeyFromKeyObject,
  verificationKeyFrom,
  type Logger,
  type PrivateKeySource,
  type VerifiedToken,
} from '@jwtproxy/core';
import { interop, makeCa, makeServerCertificate, startEchoService, writePemFiles, type Pem } from '@jwtproxy/testkit';
import { afterAll, beforeAll } from 'vitest';
import { startSignerProxy, type SignerProxyOptions } from '../src/index.js';

const signingKey = signingKeyFromKeyObject(interop.keyId, createPrivateKey(readFileSync(interop.privateKeyPath, 'utf8')));
const publicKey = createPublicKey(readFileSync(interop.publicKeyPath, 'utf8'));

/** A key source with the interop key, or none approved yet (`active = false`). */
export function interopKeySource(active = true): PrivateKeySource {
  return {
    activeKey() {
      if (!active) throw new NoActiveKeyError();
      return signingKey;
    },
  };
}

export function makeSigner(keySource: PrivateKeySource = interopKeySource()): RequestSigner {
  return new RequestSigner({ issuer: interop.issuer, expirationTime: 5 * 60_000, maxSkew: 60_000, nonceLength: 32, keySource });
}

/** Checks a token the upstream received the way a verifier would (signature, claims, audience, nonce). */
export async function verifyAsVerifier(authorization: string | string[] | undefined, audience: string): Promise<VerifiedToken> {
  const seen = new Set<string>();
  const verifier = new RequestVerifier({
    audience,
    maxSkew: 5 * 60_000,
    maxTtl: 5 * 60_000,
    keyResolver: {
      async resolve(issuer, kid) {
        if (issuer !== interop.issuer || kid !== interop.keyId) throw new KeyNotFoundError();
        return verificationKeyFrom(publicKey);
      },
    },
    nonceStore: {
      async claim(jti) {
        if (seen.has(jti)) return false;
        seen.add(jti);
        return true;
      },
    },
  });
  return verifier.verifyRequest(authorization);
}

export interface LogLine {
  level: 'debug' | 'info' | 'warn' | 'error';
  message: string;
  fields: Record<string, unknown> | undefined;
}

export function recordingLogger(): Logger & { lines: LogLine[] } {
  const lines: LogLine[] = [];
  const record = (level: LogLine['level']) => (message: string, fields?: Record<string, unknown>) => void lines.push({ level, message, fields });
  return { lines, debug: record('debug'), info: record('info'), warn: record('warn'), error: record('error') };
}

export interface ProxiedResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** Sends `GET <absolute url>` (or another method) to the proxy, as a proxy client does. */
export function requestThroughProxy(
  proxy: { host?: string; port?: number; socketPath?: string },
  target: string,
  options: { method?: string; headers?: http.OutgoingHttpHeaders | string[]; body?: string; agent?: http.Agent } = {},
): Promise<ProxiedResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { ...proxy, method: options.method ?? 'GET', path: target, headers: options.headers, agent: options.agent ?? false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

/** host and port of an `http://host:port` address. */
export function hostAndPort(address: string): { host: string; port: number } {
  const url = new URL(address);
  return { host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port) };
}

/** What the interception tests run on, made in the file's beforeAll and removed in its afterAll. */
export interface InterceptionPki {
  /** A temporary folder for PEM files. */
  dir: string;
  /** The signer's CA, which forges the certificates it shows its clients. */
  mitmCa: Pem;
  mitmCaFiles: { keyFile: string; certFile: string };
  /** The web service's own CA, trusted by the signer only through trusted_certificates. */
  upstreamCa: Pem;
  upstreamCaFile: string;
  /** The web service's certificate (localhost and 127.0.0.1), from upstreamCa. */
  upstreamCert: Pem;
}

/** Registers the hooks that make and remove the interception PKI; its fields are set once beforeAll ran. */
export function useInterceptionPki(): InterceptionPki {
  const pki = {} as InterceptionPki;
  beforeAll(async () => {
    pki.dir = await mkdtemp(path.join(os.tmpdir(), 'signer-pki-'));
    pki.mitmCa = makeCa('jwtproxy signer test CA');
    pki.mitmCaFiles = await writePemFiles(pki.mitmCa, pki.dir, 'ca');
    pki.upstreamCa = makeCa('upstream test CA');
    pki.upstreamCaFile = (await writePemFiles(pki.upstreamCa, pki.dir, 'upstream-ca')).certFile;
    pki.upstreamCert = makeServerCertificate(['localhost', '127.0.0.1'], pki.upstreamCa);
  });
  afterAll(async () => {
    await rm(pki.dir, { recursive: true, force: true });
  });
  return pki;
}

/** Starts a signer on loopback that intercepts CONNECT with `pki`'s CA; `cleanups` stops it. */
export async function startInterceptingSigner(pki: InterceptionPki, cleanups: Array<() => Promise<unknown>>, overrides: Partial<SignerProxyOptions> = {}) {
  const logger = recordingLogger();
  const proxy = await startSignerProxy({
    listenAddr: '127.0.0.1:0',
    shutdownTimeout: 2000,
    signer: makeSigner(),
    logger,
    caKeyFile: pki.mitmCaFiles.keyFile,
    caCertFile: pki.mitmCaFiles.certFile,
    trustedCertificates: [pki.upstreamCaFile],
    ...overrides,
  });
  cleanups.push(() => proxy.stop());
  return { proxy, logger, url: proxy.address, ...hostAndPort(proxy.address) };
}

/** A signer on 127.0.0.1 with the interop key and a recording logger, stopped by `cleanups`. */
export async function startTestSigner(cleanups: Array<() => Promise<unknown>>, overrides: Partial<SignerProxyOptions> = {}) {
  const logger = recordingLogger();
  const proxy = await startSignerProxy({ listenAddr: '127.0.0.1:0', shutdownTimeout: 2000, signer: makeSigner(), logger, ...overrides });
  cleanups.push(() => proxy.stop());
  return { proxy, logger, ...hostAndPort(proxy.address) };
}

/** testkit's echo service, closed by `cleanups`. */
export async function startTestEcho(cleanups: Array<() => Promise<unknown>>) {
  const service = await startEchoService();
  cleanups.push(() => service.close());
  return service;
}

import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import forge from 'node-forge';

export { startOwnRedis, type OwnRedis, type OwnRedisOptions } from './own-redis.js';
export { freeLoopbackPort, isProcessAlive } from './ports.js';
export { QuayLikeRegistry, startQuayLikeRegistry, type StoredKey, type SeenRegistryRequest } from './quay-like-registry.js';

/** Repository root (this file lives in packages/testkit/dist). */
export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

/** The requests signed by the Go jwtproxy and the key pair they were signed with. */
export const interop = {
  dir: path.join(repoRoot, 'fixtures/interop'),
  privateKeyPath: path.join(repoRoot, 'fixtures/interop/mykey.key'),
  publicKeyPath: path.join(repoRoot, 'fixtures/interop/mykey.pub'),
  keyId: 'mykey',
  issuer: 'jwtproxy',
  vectors(): InteropVector[] {
    const data = JSON.parse(readFileSync(path.join(repoRoot, 'fixtures/interop/go-signed-requests.json'), 'utf8')) as { vectors: InteropVector[] };
    return data.vectors;
  },
};

export interface InteropVector {
  request: { method: string; url: string };
  authorization: string;
  header: Record<string, unknown>;
  claims: { aud: string; exp: number; iat: number; iss: string; jti: string; nbf: number };
}

export interface RunningServer {
  server: http.Server | https.Server;
  port: number;
  url: string;
  close(): Promise<void>;
}

/** Starts a server on 127.0.0.1 with an OS-chosen port. */
export async function listenOnLoopback(server: http.Server | https.Server, scheme: 'http' | 'https' = 'http'): Promise<RunningServer> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    server,
    port,
    url: `${scheme}://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}

/** Starts a server on a unix socket at `socketPath`; `url` is `unix:<socketPath>` and `port` is 0. */
export async function listenOnUnixSocket(server: http.Server | https.Server, socketPath: string): Promise<RunningServer> {
  server.listen(socketPath);
  await once(server, 'listening');
  return {
    server,
    port: 0,
    url: `unix:${socketPath}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}

/** Counts the TCP (or unix) connections a server accepts, e.g. to see that a proxy reuses them. */
export function countConnections(server: http.Server | https.Server): { readonly accepted: number } {
  const counter = { accepted: 0 };
  server.on(server instanceof https.Server ? 'secureConnection' : 'connection', () => counter.accepted++);
  return counter;
}

/** What a test web service saw of one request. */
export interface SeenRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
}

/**
 * A small web service: answers 200 with a JSON echo of what it saw and records each request.
 * `/status/NNN` answers that status.
 */
export async function startEchoService(
  options: { tls?: { key: string; cert: string }; /** listen on this unix socket instead of 127.0.0.1 */ socketPath?: string } = {},
): Promise<RunningServer & { seen: SeenRequest[] }> {
  const seen: SeenRequest[] = [];
  const handler: http.RequestListener = (req, res) => {
    const record: SeenRequest = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders };
    seen.push(record);
    req.resume();
    req.on('end', () => {
      const status = /^\/status\/(\d{3})/.exec(req.url ?? '')?.[1];
      res.writeHead(status ? Number(status) : 200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(record));
    });
  };
  const server = options.tls ? https.createServer(options.tls, handler) : http.createServer(handler);
  const running = options.socketPath
    ? await listenOnUnixSocket(server, options.socketPath)
    : await listenOnLoopback(server, options.tls ? 'https' : 'http');
  return { ...running, seen };
}

export interface Pem {
  key: string;
  cert: string;
}

function randomSerial(): string {
  return '01' + forge.util.bytesToHex(forge.random.getBytesSync(15));
}

/** A CA certificate made in the test (RSA 2048). */
export function makeCa(commonName = 'jwtproxy test CA'): Pem {
  const keys = forge.pki.rsa.generateKeyPair(2048);
  const cert = forge.pki.createCertificate();
  cert.publicKey = keys.publicKey;
  cert.serialNumber = randomSerial();
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + 24 * 3600_000);
  const attrs = [{ name: 'commonName', value: commonName }];
  cert.setSubject(attrs);
  cert.setIssuer(attrs);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  cert.sign(keys.privateKey, forge.md.sha256.create());
  return { key: forge.pki.privateKeyToPem(keys.privateKey), cert: forge.pki.certificateToPem(cert) };
}

/** A server certificate for `hosts` (DNS names or IP addresses) signed by `ca`, or self-signed without one. */
export function makeServerCertificate(hosts: string[], ca?: Pem): Pem {
  const keys = forge.pki.rsa.generateKeyPair(2048);
  const cert = forge.pki.createCertificate();
  cert.publicKey = keys.publicKey;
  cert.serialNumber = randomSerial();
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + 24 * 3600_000);
  cert.setSubject([{ name: 'commonName', value: hosts[0] ?? 'localhost' }]);
  const issuerCert = ca ? forge.pki.certificateFromPem(ca.cert) : undefined;
  cert.setIssuer(issuerCert ? issuerCert.subject.attributes : [{ name: 'commonName', value: hosts[0] ?? 'localhost' }]);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
    { name: 'extKeyUsage', serverAuth: true },
    { name: 'subjectAltName', altNames: hosts.map((h) => (/^[\d.]+$|:/.test(h) ? { type: 7, ip: h } : { type: 2, value: h })) },
  ]);
  const signingKey = ca ? forge.pki.privateKeyFromPem(ca.key) : keys.privateKey;
  cert.sign(signingKey, forge.md.sha256.create());
  return { key: forge.pki.privateKeyToPem(keys.privateKey), cert: forge.pki.certificateToPem(cert) };
}

/** Collects a response body as text. */
export async function readBody(res: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of res) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * Writes a key pair made in the test to `<dir>/<name>.key` and `<dir>/<name>.crt`
 * (as `openssl req -x509 -keyout … -out …` would), for components configured with file paths.
 */
export async function writePemFiles(pem: Pem, dir: string, name: string): Promise<{ keyFile: string; certFile: string }> {
  const { writeFile } = await import('node:fs/promises');
  const keyFile = path.join(dir, `${name}.key`);
  const certFile = path.join(dir, `${name}.crt`);
  await writeFile(keyFile, pem.key, { mode: 0o600 });
  await writeFile(certFile, pem.cert);
  return { keyFile, certFile };
}

/**
 * Samples a process's resident memory (VmRSS in /proc/<pid>/status, Linux) every `everyMs` until
 * `stop()`, which hands back the first, the highest and the last sample in bytes: to see that a
 * proxy streams a large body instead of buffering it.
 */
export function sampleRss(pid: number, everyMs = 50): { stop(): { first: number; peak: number; last: number; samples: number } } {
  const read = (): number | undefined => {
    try {
      const kib = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
      return kib === undefined ? undefined : Number(kib) * 1024;
    } catch {
      return undefined; // the process has exited
    }
  };
  const first = read() ?? 0;
  let peak = first;
  let last = first;
  let samples = 1;
  const timer = setInterval(() => {
    const rss = read();
    if (rss === undefined) return;
    samples++;
    last = rss;
    if (rss > peak) peak = rss;
  }, everyMs);
  timer.unref();
  return {
    stop() {
      clearInterval(timer);
      const rss = read();
      if (rss !== undefined) {
        samples++;
        last = rss;
        if (rss > peak) peak = rss;
      }
      return { first, peak, last, samples };
    },
  };
}
export { rawExchange, responseStatuses, type RawExchangeOptions } from './raw-http.js';

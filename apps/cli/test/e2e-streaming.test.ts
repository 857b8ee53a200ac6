/**
 * Issue 3, end to end with real `jwtproxy` processes (a signer and a verifier, each its own
 * process as users run them): a 200 MiB upload and a 200 MiB download through both, byte for byte,
 * while the resident memory of each proxy stays flat (bodies are streamed, never buffered).
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freeLoopbackPort, listenOnLoopback, type RunningServer, sampleRss } from '@jwtproxy/testkit';
import { e2eConfig, jwtproxyConfig, startCli, tempDir, type RunningCli } from './helpers.js';

const MiB = 1024 * 1024;
const TOTAL = 200 * MiB;
const CHUNK = 64 * 1024;
/** Growth of a proxy's RSS during a transfer that would mean the body is being held in memory. */
const MAX_RSS_GROWTH = 100 * 1000 * 1000;

/** 200 MiB made of 64 KiB chunks, each stamped with its index so that a lost or reordered chunk changes the hash. */
function* chunks(): Generator<Buffer> {
  const pattern = Buffer.alloc(CHUNK, 'jwtproxy streaming test ');
  for (let index = 0; index < TOTAL / CHUNK; index++) {
    const chunk = Buffer.from(pattern);
    chunk.writeUInt32BE(index, 0);
    yield chunk;
  }
}

let files: Awaited<ReturnType<typeof tempDir>>;
let service: RunningServer;
let signer: RunningCli;
let verifier: RunningCli;
let verifierUrl: string;
/** What the service received on its last upload. */
let uploaded: { bytes: number; sha256: string } | undefined;
/** What the service sent on its last download. */
let downloaded: { bytes: number; sha256: string } | undefined;

beforeAll(async () => {
  files = await tempDir();
  service = await listenOnLoopback(
    http.createServer((req, res) => {
      if (req.url === '/upload') {
        const hash = createHash('sha256');
        let bytes = 0;
        req.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          hash.update(chunk);
        });
        req.on('end', () => {
          uploaded = { bytes, sha256: hash.digest('hex') };
          res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(uploaded));
        });
        return;
      }
      if (req.url === '/download') {
        req.resume();
        const hash = createHash('sha256');
        let bytes = 0;
        res.writeHead(200, { 'content-type': 'application/octet-stream' }); // no length: chunked
        const body = Readable.from(chunks()).on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          hash.update(chunk);
        });
        void pipeline(body, res).then(
          () => (downloaded = { bytes, sha256: hash.digest('hex') }),
          () => undefined,
        );
        return;
      }
      req.resume();
      res.writeHead(200).end('ok');
    }),
  );
  const port = await freeLoopbackPort();
  verifierUrl = `http://127.0.0.1:${port}`;
  const verifierConfig = await files.write(
    'verifier.yaml',
    jwtproxyConfig({ verifiers: [e2eConfig.verifier({ listenAddr: `127.0.0.1:${port}`, upstream: service.url, audience: verifierUrl })] }),
  );
  const signerConfig = await files.write('signer.yaml', jwtproxyConfig({ signer: e2eConfig.signer() }));
  [signer, verifier] = await Promise.all([startCli(['-config', signerConfig]), startCli(['-config', verifierConfig])]);
});

afterAll(async () => {
  const stopped = await Promise.all([signer?.stop(), verifier?.stop()]);
  await service?.close();
  await files?.cleanup();
  expect(stopped.map((s) => s?.code)).toEqual([0, 0]);
});

/** Samples both proxies' RSS while `transfer` runs; returns each one's growth over its level before. */
async function measuring<T>(transfer: () => Promise<T>): Promise<{ result: T; signerGrowth: number; verifierGrowth: number; seconds: number }> {
  const signerRss = sampleRss(signer.child.pid!);
  const verifierRss = sampleRss(verifier.child.pid!);
  const started = Date.now();
  const result = await transfer();
  const seconds = (Date.now() - started) / 1000;
  const s = signerRss.stop();
  const v = verifierRss.stop();
  return { result, signerGrowth: s.peak - s.first, verifierGrowth: v.peak - v.first, seconds };
}

const mb = (bytes: number): string => `${(bytes / 1e6).toFixed(1)} MB`;

describe('200 MiB through the signer and the verifier', () => {
  beforeAll(async () => {
    // Warm up both proxies (first signature, first upstream connection) so that what is measured is the transfer.
    const answer = await new Promise<number>((resolve, reject) =>
      http.get({ host: new URL(signer.servers.signer_proxy!).hostname, port: new URL(signer.servers.signer_proxy!).port, path: `${verifierUrl}/warm-up`, agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      }).on('error', reject),
    );
    expect(answer).toBe(200);
  });

  it('an upload arrives byte for byte, and neither proxy grows by 100 MB', async () => {
    const signerAddress = new URL(signer.servers.signer_proxy!);
    const hash = createHash('sha256');
    const body = Readable.from(chunks()).on('data', (chunk: Buffer) => hash.update(chunk));
    const measured = await measuring(
      () =>
        new Promise<{ status: number; body: string }>((resolve, reject) => {
          const request = http.request(
            {
              method: 'POST',
              host: signerAddress.hostname,
              port: signerAddress.port,
              path: `${verifierUrl}/upload`,
              headers: { 'content-length': TOTAL, 'content-type': 'application/octet-stream' },
              agent: false,
            },
            (res) => {
              let text = '';
              res.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
              res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
            },
          );
          request.on('error', reject);
          body.pipe(request);
        }),
    );
    console.log(
      `upload ${TOTAL / MiB} MiB in ${measured.seconds.toFixed(1)} s; RSS growth: signer ${mb(measured.signerGrowth)}, verifier ${mb(measured.verifierGrowth)}`,
    );
    expect(measured.result.status).toBe(200);
    expect(JSON.parse(measured.result.body)).toEqual({ bytes: TOTAL, sha256: hash.digest('hex') });
    expect(uploaded?.bytes).toBe(TOTAL);
    expect(measured.signerGrowth).toBeLessThan(MAX_RSS_GROWTH);
    expect(measured.verifierGrowth).toBeLessThan(MAX_RSS_GROWTH);
  }, 180_000);

  it('a download arrives byte for byte, and neither proxy grows by 100 MB', async () => {
    const signerAddress = new URL(signer.servers.signer_proxy!);
    const measured = await measuring(
      () =>
        new Promise<{ status: number; bytes: number; sha256: string }>((resolve, reject) => {
          http
            .get({ host: signerAddress.hostname, port: signerAddress.port, path: `${verifierUrl}/download`, agent: false }, (res) => {
              const hash = createHash('sha256');
              let bytes = 0;
              res.on('data', (chunk: Buffer) => {
                bytes += chunk.length;
                hash.update(chunk);
              });
              res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes, sha256: hash.digest('hex') }));
              res.on('error', reject);
            })
            .on('error', reject);
        }),
    );
    console.log(
      `download ${TOTAL / MiB} MiB in ${measured.seconds.toFixed(1)} s; RSS growth: signer ${mb(measured.signerGrowth)}, verifier ${mb(measured.verifierGrowth)}`,
    );
    expect(measured.result.status).toBe(200);
    expect(measured.result.bytes).toBe(TOTAL);
    expect(downloaded).toEqual({ bytes: TOTAL, sha256: measured.result.sha256 });
    expect(measured.signerGrowth).toBeLessThan(MAX_RSS_GROWTH);
    expect(measured.verifierGrowth).toBeLessThan(MAX_RSS_GROWTH);
  }, 180_000);
});

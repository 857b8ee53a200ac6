import { once } from 'node:events';
import http from 'node:http';
import { listenOnLoopback } from '@jwtproxy/testkit';
import { afterEach, describe, expect, it } from 'vitest';
import { bearer, runCleanups, startProxy } from './helpers.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(() => runCleanups(cleanups));

const MiB = 1024 * 1024;
const TOTAL = 200 * MiB;
/**
 * RSS growth allowed while 200 MiB pass. Client, proxy and upstream share this process, so RSS
 * also holds their socket buffers and garbage not yet collected (64 MiB was exceeded once, by
 * 0.9 MiB; on Node 24, whose young generation grows larger, 120.5 MiB was seen); a proxy that
 * buffered the body would grow by about 200 MiB.
 */
const MEMORY_BUDGET = 150 * MiB;
/** Long enough for loopback to move all 200 MiB into a proxy that ignored backpressure. */
const SLOW_START_MS = 1_500;
// One chunk, written again and again: the test itself allocates nothing per MiB moved.
const chunk = Buffer.alloc(MiB, 'j');

/** Samples RSS while `work` runs; resolves with the work's result and the largest growth seen. */
async function measuringMemory<T>(work: () => Promise<T>): Promise<{ result: T; growth: number }> {
  const baseline = process.memoryUsage().rss;
  let peak = baseline;
  const sampler = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss);
  }, 20);
  try {
    const result = await work();
    peak = Math.max(peak, process.memoryUsage().rss);
    return { result, growth: peak - baseline };
  } finally {
    clearInterval(sampler);
  }
}

/** Writes `total` bytes to `stream` honouring backpressure. */
async function pump(stream: NodeJS.WritableStream & { destroyed?: boolean }, total: number): Promise<void> {
  for (let sent = 0; sent < total && !stream.destroyed; sent += chunk.length) {
    if (!stream.write(chunk)) await once(stream, 'drain');
  }
}

describe('streaming', () => {
  it('moves a 200 MiB upload to the upstream without buffering it', async () => {
    let received = 0;
    const upstream = await listenOnLoopback(
      http.createServer((req, res) => {
        // A slow start: the proxy must hold the client back instead of buffering for us.
        setTimeout(() => {
          req.on('data', (data: Buffer) => (received += data.length));
          req.on('end', () => res.end(String(received)));
        }, SLOW_START_MS);
      }),
    );
    cleanups.push(() => upstream.close());
    const proxy = await startProxy({ upstream: upstream.url }, cleanups);
    const { hostname, port } = new URL(proxy.address);

    const { result, growth } = await measuringMemory(async () => {
      const request = http.request({ host: hostname, port, method: 'POST', path: '/upload', agent: false, headers: { authorization: await bearer(), 'content-length': TOTAL } });
      const response = once(request, 'response') as Promise<[http.IncomingMessage]>;
      await pump(request, TOTAL);
      request.end();
      const [res] = await response;
      let body = '';
      for await (const part of res) body += String(part);
      return { status: res.statusCode, body };
    });
    expect(result).toEqual({ status: 200, body: String(TOTAL) });
    expect(growth).toBeLessThan(MEMORY_BUDGET);
  });

  it('moves a 200 MiB download to a client without buffering it', async () => {
    const upstream = await listenOnLoopback(
      http.createServer((req, res) => {
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        void pump(res, TOTAL).then(() => res.end());
      }),
    );
    cleanups.push(() => upstream.close());
    const proxy = await startProxy({ upstream: upstream.url }, cleanups);
    const { hostname, port } = new URL(proxy.address);

    const { result: received, growth } = await measuringMemory(async () => {
      const request = http.request({ host: hostname, port, path: '/download', agent: false, headers: { authorization: await bearer() } });
      request.end();
      const [res] = (await once(request, 'response')) as [http.IncomingMessage];
      // A slow start: the proxy must hold the upstream back instead of buffering for us.
      await new Promise((resolve) => setTimeout(resolve, SLOW_START_MS));
      let bytes = 0;
      for await (const part of res) bytes += (part as Buffer).length;
      return bytes;
    });
    expect(received).toBe(TOTAL);
    expect(growth).toBeLessThan(MEMORY_BUDGET);
  });

  it('aborts the upstream request when the client aborts mid-upload, and keeps serving', async () => {
    let upstreamSawAbort: () => void;
    const aborted = new Promise<void>((resolve) => (upstreamSawAbort = resolve));
    const upstream = await listenOnLoopback(
      http.createServer((req, res) => {
        if (req.url === '/upload') {
          req.on('data', () => undefined);
          req.on('aborted', () => upstreamSawAbort());
          req.on('error', () => undefined);
          return;
        }
        res.end('still here');
      }),
    );
    cleanups.push(() => upstream.close());
    const proxy = await startProxy({ upstream: upstream.url }, cleanups);
    const { hostname, port } = new URL(proxy.address);
    const request = http.request({ host: hostname, port, method: 'PUT', path: '/upload', agent: false, headers: { authorization: await bearer(), 'content-length': 10 * MiB } });
    request.on('error', () => undefined);
    request.write(chunk);
    request.write(chunk);
    await new Promise((resolve) => setTimeout(resolve, 100));
    request.destroy();
    await aborted;

    const next = http.get({ host: hostname, port, path: '/after', agent: false, headers: { authorization: await bearer() } });
    const [res] = (await once(next, 'response')) as [http.IncomingMessage];
    expect(res.statusCode).toBe(200);
    res.resume();
  });

  it('cuts the client response when the upstream dies mid-response', async () => {
    const upstream = await listenOnLoopback(
      http.createServer((req, res) => {
        res.writeHead(200, { 'content-length': 10 * MiB });
        res.write(chunk, () => setTimeout(() => res.socket?.destroy(), 50));
      }),
    );
    cleanups.push(() => upstream.close());
    const proxy = await startProxy({ upstream: upstream.url }, cleanups);
    const { hostname, port } = new URL(proxy.address);
    const request = http.get({ host: hostname, port, path: '/', agent: false, headers: { authorization: await bearer() } });
    const [res] = (await once(request, 'response')) as [http.IncomingMessage];
    expect(res.statusCode).toBe(200);
    let bytes = 0;
    res.on('data', (data: Buffer) => (bytes += data.length));
    const [error] = (await once(res, 'error')) as [NodeJS.ErrnoException];
    expect(error.code).toBe('ECONNRESET');
    expect(bytes).toBeLessThan(10 * MiB);
    expect(proxy.logger.lines.some((line) => line.startsWith('warn upstream request failed'))).toBe(true);
  });
});

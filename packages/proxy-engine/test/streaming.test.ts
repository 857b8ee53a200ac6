import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { RawClient, eventually, runCleanups, send, sleep, startEngine, startRawUpstream, startUpstream, statuses, type Cleanups } from './helpers.js';

const cleanups: Cleanups = [];
afterEach(() => runCleanups(cleanups));

const MiB = 1024 * 1024;
/** One chunk, reused: the test itself holds no copy of the bodies it sends. */
const CHUNK = Buffer.alloc(64 * 1024, 0x61);

/** `total` bytes of CHUNK, as a stream that reads at its consumer's pace. */
function body(total: number): Readable {
  let sent = 0;
  return new Readable({
    read() {
      if (sent >= total) return void this.push(null);
      const size = Math.min(CHUNK.length, total - sent);
      sent += size;
      this.push(size === CHUNK.length ? CHUNK : CHUNK.subarray(0, size));
    },
  });
}

/** Highest resident memory of this process (client, proxy and upstream alike) above the level at start. */
/**
 * Client, proxy and upstream share this process, so RSS also holds chunks already relayed and not
 * yet collected: Node 24 left up to ~100 MiB of them during a 192 MiB upload (Node 20: under 80).
 * The bound stays well under the body's size, so a relay that held the body fails.
 */
const MEMORY_GROWTH_BOUND = 128 * MiB;

function watchMemory(): { stop(): number } {
  globalThis.gc?.();
  const start = process.memoryUsage.rss();
  let peak = start;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 20);
  return {
    stop() {
      clearInterval(timer);
      return peak - start;
    },
  };
}

/** Writes `total` bytes of CHUNK to `out` as fast as it drains; `written()` counts what `out` has taken off our hands. */
function pump(out: NodeJS.WritableStream & { writableLength: number }, total: number, onDone: () => void): { written(): number } {
  let queued = 0;
  const next = (): void => {
    while (queued < total) {
      queued += CHUNK.length;
      if (!out.write(CHUNK)) {
        out.once('drain', next);
        return;
      }
    }
    onDone();
  };
  next();
  return { written: () => queued - out.writableLength };
}

describe('streaming relay', () => {
  it('a 192 MiB upload reaches the upstream while the client is still sending, with memory growth under 128 MiB', async () => {
    const TOTAL = 192 * MiB;
    let firstByteAt = 0;
    let received = 0;
    const upstream = await startUpstream((req, res) => {
      req.on('data', (chunk: Buffer) => {
        firstByteAt ||= Date.now();
        received += chunk.length;
      });
      req.on('end', () => res.end(String(received)));
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const memory = watchMemory();
    const request = http.request({ host: '127.0.0.1', port: proxy.port, method: 'PUT', path: '/upload', headers: { 'content-length': String(TOTAL) }, agent: false });
    let sentAllAt = 0;
    request.once('finish', () => (sentAllAt = Date.now()));
    body(TOTAL).pipe(request);
    const [res] = (await once(request, 'response')) as [http.IncomingMessage];
    let answer = '';
    for await (const chunk of res) answer += String(chunk);
    const grown = memory.stop();
    expect(res.statusCode).toBe(200);
    expect(Number(answer)).toBe(TOTAL);
    expect(firstByteAt).toBeGreaterThan(0);
    expect(firstByteAt).toBeLessThan(sentAllAt);
    expect(grown, `rss grew by ${(grown / MiB).toFixed(1)} MiB`).toBeLessThan(MEMORY_GROWTH_BOUND);
  });

  it('a 192 MiB download reaches the client while the upstream is still sending, with memory growth under 128 MiB', async () => {
    const TOTAL = 192 * MiB;
    let upstreamDoneAt = 0;
    const upstream = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-length': String(TOTAL) });
      pump(res, TOTAL, () => res.end(() => (upstreamDoneAt = Date.now())));
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const memory = watchMemory();
    const request = http.get({ host: '127.0.0.1', port: proxy.port, path: '/download', agent: false });
    const [res] = (await once(request, 'response')) as [http.IncomingMessage];
    let received = 0;
    let firstByteAt = 0;
    for await (const chunk of res) {
      firstByteAt ||= Date.now();
      received += (chunk as Buffer).length;
    }
    const grown = memory.stop();
    expect(received).toBe(TOTAL);
    expect(firstByteAt).toBeLessThan(upstreamDoneAt || Infinity);
    expect(grown, `rss grew by ${(grown / MiB).toFixed(1)} MiB`).toBeLessThan(MEMORY_GROWTH_BOUND);
  });

  it('a client that stops reading pauses the upstream (bounded bytes in between); when it reads again everything arrives', async () => {
    const TOTAL = 96 * MiB;
    let progress: { written(): number } | undefined;
    let finished = false;
    const upstream = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-length': String(TOTAL) });
      progress = pump(res, TOTAL, () => res.end(() => (finished = true)));
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const client = net.connect({ host: '127.0.0.1', port: proxy.port });
    cleanups.push(async () => client.destroy());
    await once(client, 'connect');
    client.write('GET /download HTTP/1.1\r\nHost: svc\r\n\r\n');
    // The client reads nothing: what the upstream gets rid of is what sits in socket buffers and the proxy.
    client.pause();
    expect(await eventually(() => progress !== undefined && progress.written() > 0, 3_000)).toBe(true);
    await sleep(1_000);
    const stalledAt = progress!.written();
    await sleep(500);
    const stillStalled = progress!.written();
    expect(stalledAt, `${(stalledAt / MiB).toFixed(1)} MiB left the upstream`).toBeLessThan(32 * MiB);
    expect(stillStalled - stalledAt).toBeLessThan(MiB);
    let received = 0;
    client.on('data', (chunk: Buffer) => (received += chunk.length));
    client.resume();
    expect(await eventually(() => finished && received > TOTAL, 30_000)).toBe(true);
    expect(received - TOTAL).toBeLessThan(1_024); // the head
  });

  it('an upstream that stops reading the body stalls the client upload (bounded bytes in between); when it reads again everything arrives', async () => {
    const TOTAL = 96 * MiB;
    let upstreamReq: http.IncomingMessage | undefined;
    let received = 0;
    const upstream = await startUpstream((req, res) => {
      upstreamReq = req;
      req.pause();
      req.on('end', () => res.end(String(received)));
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const request = http.request({ host: '127.0.0.1', port: proxy.port, method: 'PUT', path: '/upload', headers: { 'content-length': String(TOTAL) }, agent: false });
    request.on('error', () => undefined);
    cleanups.push(async () => request.destroy());
    let done = false;
    const progress = pump(request, TOTAL, () => request.end(() => (done = true)));
    expect(await eventually(() => upstreamReq !== undefined, 3_000)).toBe(true);
    await sleep(1_000);
    const stalledAt = progress.written();
    await sleep(500);
    expect(stalledAt, `${(stalledAt / MiB).toFixed(1)} MiB left the client`).toBeLessThan(32 * MiB);
    expect(progress.written() - stalledAt).toBeLessThan(MiB);
    const answered = once(request, 'response');
    upstreamReq!.on('data', (chunk: Buffer) => (received += chunk.length));
    upstreamReq!.resume();
    const [res] = (await answered) as [http.IncomingMessage];
    let answer = '';
    for await (const chunk of res) answer += String(chunk);
    expect(done).toBe(true);
    expect(Number(answer)).toBe(TOTAL);
  });

  it('relays the status text as the upstream wrote it', async () => {
    const upstream = await startRawUpstream((head, socket) => {
      const line = head.startsWith('GET /missing') ? 'HTTP/1.1 404 Nicht Gefunden' : 'HTTP/1.1 299 Everything Is Fine';
      socket.write(`${line}\r\nContent-Length: 2\r\n\r\nok`);
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const client = await RawClient.connect(proxy.port);
    cleanups.push(async () => client.destroy());
    client.write('GET /fine HTTP/1.1\r\nHost: svc\r\n\r\nGET /missing HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await client.waitFor(/Gefunden[\s\S]*\r\n\r\nok$/)).toBe(true);
    expect(client.text).toMatch(/^HTTP\/1\.1 299 Everything Is Fine\r\n/);
    expect(client.text).toContain('\r\n\r\nokHTTP/1.1 404 Nicht Gefunden\r\n');
  });

  it.each([
    ['a non-ASCII one', Buffer.from('HTTP/1.1 200 Tr\xe8s Bien', 'latin1')],
    ['a UTF-8 one', Buffer.from('HTTP/1.1 200 Très Bien', 'utf8')],
    ['a control character', Buffer.from('HTTP/1.1 201 O\x01K', 'latin1')],
  ])('relays the answer with the standard status text when the upstream status text is one Node cannot write (%s)', async (_kind, statusLine) => {
    const upstream = await startRawUpstream((_head, socket) => {
      socket.write(Buffer.concat([statusLine, Buffer.from('\r\nContent-Length: 2\r\nX-From: upstream\r\n\r\nok')]));
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const client = await RawClient.connect(proxy.port);
    cleanups.push(async () => client.destroy());
    client.write('GET / HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await client.waitFor(/\r\n\r\nok$/)).toBe(true);
    expect(client.text).toMatch(/^HTTP\/1\.1 20[01] (OK|Created)\r\n/);
    expect(client.text).toMatch(/\r\nx-from: upstream\r\n/i);
    expect(proxy.logger.lines).toEqual([]);
  });

  it('does not relay 1xx answers (102 Processing, 103 Early Hints): the client sees the final answer only', async () => {
    const upstream = await startUpstream((_req, res) => {
      res.writeProcessing();
      res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
      setTimeout(() => res.end('final'), 50);
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const client = await RawClient.connect(proxy.port);
    cleanups.push(async () => client.destroy());
    client.write('GET / HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await client.waitFor(/final$/)).toBe(true);
    expect(statuses(client.text)).toEqual([200]);
    expect(client.text).not.toMatch(/preload/);
  });
});

describe('either side leaving', () => {
  it('a client that goes away mid-response cancels the upstream request (its connection is closed), with no warning or error logged', async () => {
    let upstreamClosed = false;
    const upstream = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const timer = setInterval(() => res.write('data: tick\n\n'), 20);
      res.once('close', () => {
        clearInterval(timer);
        upstreamClosed = true;
      });
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const client = await RawClient.connect(proxy.port);
    client.write('GET /events HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await client.waitFor('data: tick')).toBe(true);
    client.destroy();
    expect(await eventually(() => upstreamClosed, 2_000)).toBe(true);
    await sleep(100);
    expect(proxy.logger.lines.filter((line) => line.level === 'warn' || line.level === 'error')).toEqual([]);
  });

  it('a client that goes away before the upstream answered cancels the upstream request', async () => {
    let upstreamClosed = false;
    let arrived = false;
    const upstream = await startUpstream((req) => {
      arrived = true;
      // Never answers: only the proxy cancelling closes this.
      req.socket.once('close', () => (upstreamClosed = true));
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const client = await RawClient.connect(proxy.port);
    client.write('GET /slow HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await eventually(() => arrived, 2_000)).toBe(true);
    client.destroy();
    expect(await eventually(() => upstreamClosed, 2_000)).toBe(true);
    expect(proxy.logger.lines.filter((line) => line.level === 'warn' || line.level === 'error')).toEqual([]);
  });

  it('a client that goes away mid-upload cancels the upstream request: the upstream sees its body cut short', async () => {
    let received = 0;
    let upstreamAborted = false;
    const upstream = await startUpstream((req) => {
      req.on('data', (chunk: Buffer) => (received += chunk.length));
      req.once('close', () => (upstreamAborted = !req.complete));
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const client = await RawClient.connect(proxy.port);
    client.write(`PUT /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: ${10 * MiB}\r\n\r\n`);
    client.write(Buffer.alloc(256 * 1024, 0x62));
    expect(await eventually(() => received >= 256 * 1024, 2_000)).toBe(true);
    client.destroy();
    expect(await eventually(() => upstreamAborted, 2_000)).toBe(true);
    expect(received).toBeLessThan(10 * MiB);
    expect(proxy.logger.lines.filter((line) => line.level === 'warn' || line.level === 'error')).toEqual([]);
  });

  it('an upstream that dies mid-response (Content-Length) cuts the client response: the client sees it incomplete, never a clean end', async () => {
    const upstream = await startRawUpstream((_head, socket) => {
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n' + 'x'.repeat(100));
      setTimeout(() => socket.destroy(), 50);
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const request = http.get({ host: '127.0.0.1', port: proxy.port, path: '/', agent: false });
    const [res] = (await once(request, 'response')) as [http.IncomingMessage];
    let received = 0;
    res.on('data', (chunk: Buffer) => (received += chunk.length));
    const outcome = await new Promise<string>((resolve) => {
      res.once('end', () => resolve('end'));
      res.once('aborted', () => resolve('aborted'));
      res.once('error', () => resolve('error'));
    });
    expect(res.statusCode).toBe(200);
    expect(outcome).not.toBe('end');
    expect(received).toBe(100);
    expect(proxy.logger.at('warn').map((line) => line.message)).toContain('upstream request failed');
  });

  it('an upstream that dies mid-response (chunked) cuts the client connection without the last chunk', async () => {
    const upstream = await startRawUpstream((_head, socket) => {
      socket.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n');
      setTimeout(() => socket.destroy(), 50);
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const client = await RawClient.connect(proxy.port);
    cleanups.push(async () => client.destroy());
    client.write('GET / HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await client.waitClosed(3_000)).toBe(true);
    expect(client.text).toContain('first');
    expect(client.text.endsWith('0\r\n\r\n')).toBe(false);
  });

  it('a request sent in parts with a slow body still streams (chunks arrive upstream as they are sent)', async () => {
    const arrivals: number[] = [];
    const upstream = await startUpstream((req, res) => {
      req.on('data', () => arrivals.push(Date.now()));
      req.on('end', () => res.end('done'));
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const request = http.request({ host: '127.0.0.1', port: proxy.port, method: 'POST', path: '/', agent: false });
    const response = once(request, 'response');
    request.write('part one');
    expect(await eventually(() => arrivals.length === 1, 2_000)).toBe(true);
    await sleep(200);
    request.end('part two');
    const [res] = (await response) as [http.IncomingMessage];
    res.resume();
    expect(res.statusCode).toBe(200);
    expect(arrivals.length).toBeGreaterThanOrEqual(2);
    expect(arrivals.at(-1)! - arrivals[0]!).toBeGreaterThanOrEqual(150);
    expect((await send(proxy.port)).status).toBe(200);
  });
});

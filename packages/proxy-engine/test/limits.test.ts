import type http from 'node:http';
import type net from 'node:net';
import { freeLoopbackPort } from '@jwtproxy/testkit';
import { afterEach, describe, expect, it } from 'vitest';
import { RawClient, eventually, rawExchange, runCleanups, send, sleep, startEchoUpstream, startEngine, startUpstream, statuses, type Cleanups } from './helpers.js';

const cleanups: Cleanups = [];
afterEach(() => runCleanups(cleanups));

async function client(port: number): Promise<RawClient> {
  const connected = await RawClient.connect(port);
  cleanups.push(async () => connected.destroy());
  return connected;
}

describe('read header timeout', () => {
  it('closes a slowloris client (a header byte every 100 ms) and a silent one at readHeaderTimeoutMs; route and upstream never see them', async () => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine({ upstream: upstream.origin, limits: { readHeaderTimeoutMs: 600 } }, cleanups);
    const started = Date.now();
    const silent = await client(proxy.port);
    const slow = await client(proxy.port);
    slow.write('GET /slowloris HTTP/1.1\r\nHost: svc\r\n');
    const drip = setInterval(() => slow.isClosed || slow.write('X'), 100);
    cleanups.push(async () => clearInterval(drip));
    expect(await silent.waitClosed(3_000)).toBe(true);
    expect(await slow.waitClosed(3_000)).toBe(true);
    clearInterval(drip);
    for (const closedAt of [silent.closedAt!, slow.closedAt!]) {
      expect(closedAt - started).toBeGreaterThanOrEqual(500);
      expect(closedAt - started).toBeLessThan(1_600);
    }
    // Whatever they got before the close is a 408, never a forwarded answer.
    for (const text of [slow.text, silent.text]) expect(text === '' || /^HTTP\/1\.1 408 [^]*\r\n\r\n$/.test(text), text).toBe(true);
    expect(proxy.routed).toEqual([]);
    expect(upstream.seen).toEqual([]);
    // The proxy goes on serving.
    expect((await send(proxy.port, { headers: { host: 'svc' } })).status).toBe(200);
  });

  it('closes a kept-alive connection idle for idleTimeoutMs', async () => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine({ upstream: upstream.origin, limits: { idleTimeoutMs: 400 } }, cleanups);
    const kept = await client(proxy.port);
    kept.write('GET / HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await kept.waitFor(/\r\n0\r\n\r\n$/)).toBe(true);
    const answeredAt = Date.now();
    expect(await kept.waitClosed(3_000)).toBe(true);
    expect(kept.closedAt! - answeredAt).toBeGreaterThanOrEqual(300);
    expect(kept.closedAt! - answeredAt).toBeLessThan(1_500);
  });
});

describe('body idle timeout', () => {
  it('cuts a request body that stops sending for bodyIdleTimeoutMs, and the upstream sees its request aborted', async () => {
    let upstreamReq: http.IncomingMessage | undefined;
    let upstreamAborted = false;
    const upstream = await startUpstream((req, res) => {
      upstreamReq = req;
      req.resume();
      req.once('close', () => (upstreamAborted = !req.complete));
      req.once('end', () => res.end('whole body'));
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin, limits: { bodyIdleTimeoutMs: 400 } }, cleanups);
    const stalled = await client(proxy.port);
    stalled.write('POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 100\r\n\r\n0123456789');
    expect(await eventually(() => upstreamReq !== undefined, 2_000)).toBe(true);
    const stalledAt = Date.now();
    expect(await stalled.waitClosed(3_000)).toBe(true);
    expect(stalled.closedAt! - stalledAt).toBeGreaterThanOrEqual(250);
    expect(stalled.closedAt! - stalledAt).toBeLessThan(1_500);
    expect(stalled.text).not.toContain('whole body');
    expect(await eventually(() => upstreamAborted, 2_000)).toBe(true);
  });

  it('lets a body that keeps trickling (a byte every 150 ms, 1.2 s in all) through: the timeout is for silence, not for the whole body', async () => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine({ upstream: upstream.origin, limits: { bodyIdleTimeoutMs: 400 } }, cleanups);
    const trickle = await client(proxy.port);
    trickle.write('POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 8\r\n\r\n');
    for (const byte of 'abcdefgh') {
      await sleep(150);
      trickle.write(byte);
    }
    expect(await trickle.waitFor(/\r\n0\r\n\r\n$/)).toBe(true);
    expect(statuses(trickle.text)).toEqual([200]);
    expect(upstream.seen[0]!.body).toBe('abcdefgh');
    // After the body, the connection is not on the body timer any more.
    await sleep(600);
    expect(trickle.isClosed).toBe(false);
  });

  it('a kept-alive connection carrying 40 request bodies keeps one body timer (no listener per request, no MaxListenersExceededWarning), and it still cuts the 41st body when it stalls', async () => {
    const warnings: Error[] = [];
    const onWarning = (warning: Error): void => void warnings.push(warning);
    process.on('warning', onWarning);
    cleanups.push(async () => process.off('warning', onWarning));
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine({ upstream: upstream.origin, limits: { bodyIdleTimeoutMs: 400 } }, cleanups);
    let serverSide: net.Socket | undefined;
    proxy.server.once('connection', (socket: net.Socket) => (serverSide = socket));
    const kept = await client(proxy.port);
    for (let i = 0; i < 40; i++) {
      kept.write(`POST /${i} HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello`);
      expect(await kept.waitFor(new RegExp(`"url":"/${i}"[^]*\\r\\n0\\r\\n\\r\\n$`))).toBe(true);
    }
    await sleep(50);
    expect(warnings.filter((warning) => warning.name === 'MaxListenersExceededWarning')).toEqual([]);
    expect(serverSide!.listenerCount('timeout')).toBeLessThanOrEqual(2);
    kept.write('POST /stalled HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\nab');
    expect(await kept.waitClosed(2_000)).toBe(true);
    expect(upstream.seen).toHaveLength(40);
  });
});

describe('max connections', () => {
  it('closes connections over maxConnections as they arrive, and takes new ones once some have closed', async () => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine({ upstream: upstream.origin, limits: { maxConnections: 3 } }, cleanups);
    const open: RawClient[] = [];
    for (let i = 0; i < 3; i++) {
      const kept = await client(proxy.port);
      kept.write(`GET /${i} HTTP/1.1\r\nHost: svc\r\n\r\n`);
      expect(await kept.waitFor(/\r\n0\r\n\r\n$/)).toBe(true);
      open.push(kept);
    }
    const extra = await client(proxy.port);
    extra.write('GET /extra HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await extra.waitClosed(2_000)).toBe(true);
    expect(extra.text).toBe('');
    expect(open.every((kept) => !kept.isClosed)).toBe(true);
    open[0]!.destroy();
    const connections = (): Promise<number> => new Promise((resolve) => proxy.server.getConnections((_error, count) => resolve(count)));
    for (let i = 0; i < 100 && (await connections()) >= 3; i++) await sleep(20);
    expect(await connections()).toBe(2);
    const later = await client(proxy.port);
    later.write('GET /later HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await later.waitFor(/\r\n0\r\n\r\n$/)).toBe(true);
    expect(upstream.seen.map((seen) => seen.url)).toEqual(['/0', '/1', '/2', '/later']);
  });
});

describe('the request head', () => {
  const headWithLines = (lines: number): string => {
    let head = 'GET /lines HTTP/1.1\r\nHost: svc\r\n';
    for (let i = 1; i < lines; i++) head += `X-Line-${i}: ${i}\r\n`;
    return head + '\r\n';
  };

  it('answers 431 for more header lines than maxHeaderLines (and closes), 200 for exactly that many', async () => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine({ upstream: upstream.origin, limits: { maxHeaderLines: 20 } }, cleanups);
    const over = await rawExchange(proxy.port, headWithLines(21));
    expect(over.closed).toBe(true);
    expect(statuses(over.text)).toEqual([431]);
    expect(over.text).toMatch(/\r\nconnection: close\r\n/i);
    expect(over.text.endsWith('\r\n\r\njwtproxy: bad request: too many header lines')).toBe(true);
    expect(proxy.routed).toEqual([]);
    const far = await rawExchange(proxy.port, headWithLines(1_100));
    expect(statuses(far.text)).toEqual([431]);
    expect(upstream.seen).toEqual([]);
    const exact = await rawExchange(proxy.port, headWithLines(20).replace('Host: svc\r\n', 'Host: svc\r\nConnection: close\r\n').replace('X-Line-19: 19\r\n', ''));
    expect(statuses(exact.text)).toEqual([200]);
  });

  it.each([
    ['a Host with a space', 'Host: a b\r\n', 'invalid Host header'],
    ['a Host with a path', 'Host: evil.test/x\r\n', 'invalid Host header'],
    ['a Host with userinfo', 'Host: user@evil.test\r\n', 'invalid Host header'],
    ['two Host headers', 'Host: svc\r\nHost: other\r\n', 'more than one Host header'],
    ['no Host header', '', 'no Host header'],
  ])('answers 400 to %s (and closes) without calling route', async (_name, hostLines, problem) => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const answer = await rawExchange(proxy.port, `GET /host HTTP/1.1\r\n${hostLines}\r\n`);
    expect(answer.closed).toBe(true);
    expect(statuses(answer.text)).toEqual([400]);
    expect(answer.text.endsWith(`\r\n\r\njwtproxy: bad request: ${problem}`)).toBe(true);
    expect(proxy.routed).toEqual([]);
    expect(upstream.seen).toEqual([]);
  });

  it('serves an HTTP/1.0 request without Host, and an IPv6 literal Host with a port', async () => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    expect(statuses((await rawExchange(proxy.port, 'GET /old HTTP/1.0\r\n\r\n')).text)).toEqual([200]);
    expect(statuses((await rawExchange(proxy.port, 'GET /v6 HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n')).text)).toEqual([200]);
  });
});

describe('requests of one connection', () => {
  it('are answered in order: a fast request pipelined behind a slow one waits for it', async () => {
    const upstream = await startUpstream((req, res) => {
      const delay = req.url === '/slow' ? 300 : 0;
      setTimeout(() => res.end(`answer ${req.url}`), delay);
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const pipelined = await client(proxy.port);
    pipelined.write('GET /slow HTTP/1.1\r\nHost: svc\r\n\r\nGET /fast HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await pipelined.waitFor('answer /fast')).toBe(true);
    expect(pipelined.text.indexOf('answer /slow')).toBeGreaterThan(0);
    expect(pipelined.text.indexOf('answer /slow')).toBeLessThan(pipelined.text.indexOf('answer /fast'));
  });
});

/** The two settings of the two proxies: the verifier keeps a connection after a refusal, the signer does not. */
describe.each([
  ['kept (as the verifier)', true],
  ['closed (as the signer)', false],
])('connection after a refusal %s', (_name, keep) => {
  const validRequest = 'POST /transfer?amount=100 HTTP/1.1\r\nHost: svc\r\nContent-Length: 0\r\n\r\n';

  it.each([
    ['a chunked body', `POST /refused HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n${(70_000).toString(16)}\r\n${'x'.repeat(70_000)}\r\n0\r\n\r\n`],
    ['a 70 KB body', `POST /refused HTTP/1.1\r\nHost: svc\r\nContent-Length: 70000\r\n\r\n${'x'.repeat(70_000)}`],
    ['Expect: 100-continue', 'POST /refused HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello'],
    ['a bad Host', 'GET /refused HTTP/1.1\r\nHost: a b\r\n\r\n'],
    ['too many header lines', `GET /refused HTTP/1.1\r\nHost: svc\r\n${'X-A: 1\r\n'.repeat(30)}\r\n`],
  ])('a request pipelined behind a refusal with %s is never run', async (_kind, refused) => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine({ upstream: upstream.origin, keepConnectionAfterRefusal: keep, limits: { maxHeaderLines: 20 } }, cleanups);
    // Warm the pool so that the upstream would be reached at once.
    expect((await send(proxy.port, { headers: { host: 'svc' } })).status).toBe(200);
    for (let i = 0; i < 5; i++) {
      const answer = await rawExchange(proxy.port, refused + validRequest);
      expect(answer.closed).toBe(true);
      expect(statuses(answer.text)).toHaveLength(1);
      expect(statuses(answer.text)[0]).toBeGreaterThanOrEqual(400);
      expect(answer.text).toMatch(/\r\nconnection: close\r\n/i);
    }
    await sleep(200);
    expect(upstream.seen.map((seen) => seen.url)).toEqual(['/']);
  });

  it(`a refusal with a small body ${keep ? 'keeps the connection: the next request runs' : 'closes the connection: the next request never runs'}`, async () => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine({ upstream: upstream.origin, keepConnectionAfterRefusal: keep }, cleanups);
    const answer = await rawExchange(proxy.port, 'POST /refused HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello' + validRequest + 'GET /third HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n');
    expect(answer.closed).toBe(true);
    if (keep) {
      expect(statuses(answer.text)).toEqual([403, 200, 200]);
      expect(answer.text).not.toMatch(/^HTTP\/1\.1 403[^]*?connection: close[^]*?HTTP\/1\.1 200/i);
      expect(upstream.seen.map((seen) => seen.url)).toEqual(['/transfer?amount=100', '/third']);
    } else {
      expect(statuses(answer.text)).toEqual([403]);
      expect(answer.text).toMatch(/\r\nconnection: close\r\n/i);
      await sleep(200);
      expect(upstream.seen).toEqual([]);
    }
    expect(answer.text).toContain('jwtproxy: unable to verify request: Invalid JWT signature');
  });

  it(`an upstream that cannot be reached is answered 502 and the connection ${keep ? 'kept' : 'closed'}`, async () => {
    const proxy = await startEngine({ upstream: `http://127.0.0.1:${await freeLoopbackPort()}`, keepConnectionAfterRefusal: keep, upstreamName: 'http://upstream.test' }, cleanups);
    const kept = await client(proxy.port);
    kept.write('GET / HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await kept.waitFor(/ECONNREFUSED/)).toBe(true);
    expect(statuses(kept.text)).toEqual([502]);
    expect(kept.text).toMatch(/\r\n\r\njwtproxy: upstream error: http:\/\/upstream\.test: .*ECONNREFUSED/);
    await sleep(200);
    expect(kept.isClosed).toBe(!keep);
    expect(/\r\nconnection: close\r\n/i.test(kept.text)).toBe(!keep);
  });

  it('any refusal closes the connection while the engine is stopping', async () => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine({ upstream: upstream.origin, keepConnectionAfterRefusal: keep }, cleanups);
    const kept = await client(proxy.port);
    kept.write('GET / HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await kept.waitFor(/\r\n0\r\n\r\n$/)).toBe(true);
    const stopped = proxy.stop(Date.now() + 2_000);
    kept.write('GET /refused HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await kept.waitClosed(2_000)).toBe(true);
    expect(statuses(kept.text)).toEqual([200, 403]);
    expect(kept.text.slice(kept.text.lastIndexOf('HTTP/1.1 403'))).toMatch(/\r\nconnection: close\r\n/i);
    await stopped;
  });
});

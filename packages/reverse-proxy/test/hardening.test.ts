import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { listenOnLoopback, startEchoService, rawExchange, responseStatuses } from '@jwtproxy/testkit';
import { afterEach, describe, expect, it } from 'vitest';
import { bearer, runCleanups, send, startProxy } from './helpers.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(() => runCleanups(cleanups));

/** An upstream that records every request it was asked to run. */
async function recordingUpstream() {
  const echo = await startEchoService();
  cleanups.push(() => echo.close());
  return echo;
}


describe('the upstream sees only the verified token', () => {
  it('refuses two Authorization headers with 400, whichever comes first, and the upstream never sees them', async () => {
    const echo = await recordingUpstream();
    const proxy = await startProxy({ upstream: echo.url }, cleanups);
    const forged = 'Bearer eyJhbGciOiJub25lIiwia2lkIjoieCJ9.eyJpc3MiOiJhZG1pbiJ9.';
    for (const order of [[forged, await bearer()], [await bearer(), forged]]) {
      const answer = await send(proxy.address, { headers: ['Host', 'svc', 'Authorization', order[0]!, 'Authorization', order[1]!] });
      expect(answer.status).toBe(400);
      expect(answer.body).toBe('jwtproxy: unable to verify request: more than one Authorization header');
    }
    expect(echo.seen).toHaveLength(0);
    // One valid token alone still passes.
    expect((await send(proxy.address, { headers: { authorization: await bearer() } })).status).toBe(200);
  });
});

describe('a request pipelined behind a refused one', () => {
  const validRequest = async (path: string): Promise<string> =>
    `POST ${path} HTTP/1.1\r\nHost: svc\r\nAuthorization: ${await bearer()}\r\nContent-Length: 0\r\n\r\n`;

  it.each([
    ['a chunked body', () => `POST /refused HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n${(70_000).toString(16)}\r\n${'x'.repeat(70_000)}\r\n0\r\n\r\n`],
    ['a 70 KB body', () => `POST /refused HTTP/1.1\r\nHost: svc\r\nContent-Length: 70000\r\n\r\n${'x'.repeat(70_000)}`],
    ['Expect: 100-continue', () => `POST /refused HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello`],
    ['a bad Host', () => `GET /refused HTTP/1.1\r\nHost: a b\r\n\r\n`],
  ])('is never run after a refusal that closes the connection (%s)', async (_name, refused) => {
    const echo = await recordingUpstream();
    const proxy = await startProxy({ upstream: echo.url }, cleanups);
    // Warm the pool so that the upstream would be reached at once.
    expect((await send(proxy.address, { headers: { authorization: await bearer() } })).status).toBe(200);
    for (let i = 0; i < 5; i++) {
      const answer = await rawExchange(proxy.address, refused() + (await validRequest('/transfer?amount=100')));
      expect(responseStatuses(answer)).toHaveLength(1);
      expect(responseStatuses(answer)[0]).toBeGreaterThanOrEqual(400);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(echo.seen.map((r) => r.url)).toEqual(['/']);
  });

  it('is run, in order, behind a refusal that keeps the connection (small body, no token)', async () => {
    const echo = await recordingUpstream();
    const proxy = await startProxy({ upstream: echo.url }, cleanups);
    const answer = await rawExchange(
      proxy.address,
      `POST /refused HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello` + (await validRequest('/second')) + 'GET /third HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n',
    );
    expect(responseStatuses(answer)).toEqual([403, 200, 403]);
    expect(echo.seen.map((r) => r.url)).toEqual(['/second']);
  });
});

describe('malformed request heads', () => {
  it.each([
    ['two Host headers', 'Host: a\r\nHost: b\r\n', 'more than one Host header'],
    ['an empty Host', 'Host:\r\n', 'invalid Host header'],
    ['a Host with a space', 'Host: a b\r\n', 'invalid Host header'],
    ['no Host', '', 'no Host header'],
  ])('answers 400 to %s before reading the token', async (_name, hostLines, problem) => {
    const echo = await recordingUpstream();
    const proxy = await startProxy({ upstream: echo.url }, cleanups);
    const answer = await rawExchange(proxy.address, `GET / HTTP/1.1\r\n${hostLines}Authorization: ${await bearer()}\r\n\r\n`);
    expect(responseStatuses(answer)).toEqual([400]);
    expect(answer).toContain(`jwtproxy: bad request: ${problem}`);
    expect(echo.seen).toHaveLength(0);
  });

  it('answers 431 to more header lines than allowed instead of dropping some of them', async () => {
    const echo = await recordingUpstream();
    const proxy = await startProxy({ upstream: echo.url, limits: { maxHeaderLines: 100 } }, cleanups);
    const filler = Array.from({ length: 120 }, (_, i) => `X-Filler-${i}: ${i}\r\n`).join('');
    const answer = await rawExchange(proxy.address, `GET / HTTP/1.1\r\nHost: svc\r\n${filler}Authorization: ${await bearer()}\r\n\r\n`);
    expect(responseStatuses(answer)).toEqual([431]);
    expect(echo.seen).toHaveLength(0);
    const fewer = Array.from({ length: 90 }, (_, i) => `X-Filler-${i}: ${i}\r\n`).join('');
    const passed = await rawExchange(proxy.address, `GET / HTTP/1.1\r\nHost: svc\r\n${fewer}Authorization: ${await bearer()}\r\nConnection: close\r\n\r\n`);
    expect(responseStatuses(passed)).toEqual([200]);
  });
});

describe('slow clients', () => {
  it('closes connections that do not finish their headers, or send nothing, within read_header_timeout', async () => {
    const echo = await recordingUpstream();
    const proxy = await startProxy({ upstream: echo.url, limits: { readHeaderTimeoutMs: 1_000 } }, cleanups);
    const { hostname, port } = new URL(proxy.address);
    const sockets = Array.from({ length: 40 }, (_, i) => {
      const socket = net.connect({ host: hostname, port: Number(port) });
      socket.on('error', () => undefined);
      // Half send a head that never ends (slowloris), half send nothing.
      if (i % 2 === 0) socket.write('GET / HTTP/1.1\r\nHost: svc\r\nX-Slow: ');
      // Read, so that the proxy's 408 and close are seen.
      socket.resume();
      return socket;
    });
    const started = Date.now();
    await Promise.all(sockets.map((socket) => once(socket, 'close')));
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(900);
    expect(took).toBeLessThan(5_000);
    // The proxy still serves.
    expect((await send(proxy.address, { headers: { authorization: await bearer() } })).status).toBe(200);
  });

  it('cuts a verified request whose body stops arriving, after body_idle_timeout', async () => {
    const upstream = await listenOnLoopback(
      http.createServer((req, res) => {
        req.resume();
        req.on('end', () => res.end('done'));
      }),
    );
    cleanups.push(() => upstream.close());
    const proxy = await startProxy({ upstream: upstream.url, limits: { bodyIdleTimeoutMs: 500 } }, cleanups);
    const { hostname, port } = new URL(proxy.address);
    const socket = net.connect({ host: hostname, port: Number(port) });
    socket.on('error', () => undefined);
    socket.write(`POST / HTTP/1.1\r\nHost: svc\r\nAuthorization: ${await bearer()}\r\nContent-Length: 100\r\n\r\nfirst bytes`);
    const started = Date.now();
    await once(socket, 'close');
    expect(Date.now() - started).toBeGreaterThanOrEqual(400);
    expect(Date.now() - started).toBeLessThan(3_000);
  });

  it('refuses connections beyond max_connections and serves again once they are gone', async () => {
    const echo = await recordingUpstream();
    const proxy = await startProxy({ upstream: echo.url, limits: { maxConnections: 5 } }, cleanups);
    const { hostname, port } = new URL(proxy.address);
    const held = await Promise.all(
      Array.from({ length: 5 }, async () => {
        const socket = net.connect({ host: hostname, port: Number(port) });
        socket.on('error', () => undefined);
        await once(socket, 'connect');
        return socket;
      }),
    );
    await new Promise((resolve) => setTimeout(resolve, 100));
    await expect(send(proxy.address, { headers: { authorization: await bearer() } })).rejects.toThrow();
    for (const socket of held) socket.destroy();
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect((await send(proxy.address, { headers: { authorization: await bearer() } })).status).toBe(200);
  });
});

describe('graceful stop', () => {
  it('answers the requests in flight with Connection: close', async () => {
    let release: () => void = () => undefined;
    const released = new Promise<void>((resolve) => (release = resolve));
    const upstream = await listenOnLoopback(
      http.createServer((req, res) => {
        req.resume();
        void released.then(() => res.end('late'));
      }),
    );
    cleanups.push(() => upstream.close());
    const proxy = await startProxy({ upstream: upstream.url }, cleanups);
    const agent = new http.Agent({ keepAlive: true });
    cleanups.push(async () => agent.destroy());
    const answers = Promise.all(Array.from({ length: 4 }, async () => send(proxy.address, { headers: { authorization: await bearer() }, agent })));
    await new Promise((resolve) => setTimeout(resolve, 200));
    const stopped = proxy.stop(Date.now() + 5_000);
    await new Promise((resolve) => setTimeout(resolve, 50));
    release();
    for (const answer of await answers) {
      expect(answer.status).toBe(200);
      expect(answer.headers.connection).toBe('close');
    }
    await stopped;
  });
});

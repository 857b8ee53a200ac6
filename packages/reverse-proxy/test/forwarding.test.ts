import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { countConnections, freeLoopbackPort, listenOnLoopback, readBody, startEchoService, type SeenRequest } from '@jwtproxy/testkit';
import { afterEach, describe, expect, it } from 'vitest';
import { NonceStoreUnavailableError, type NonceStore } from '@jwtproxy/core';
import { bearer, makeVerifier, refusal, runCleanups, send, startProxy } from './helpers.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(() => runCleanups(cleanups));

async function echoUpstream() {
  const echo = await startEchoService();
  cleanups.push(() => echo.close());
  return echo;
}

/**
 * Sends raw bytes on a new connection and collects everything until the proxy closes it. With
 * `more`, sends those bytes too once the answer starts, then closes its side.
 */
async function rawExchange(address: string, bytes: string, more?: string): Promise<string> {
  const { hostname, port } = new URL(address);
  const socket = net.connect({ host: hostname, port: Number(port) });
  socket.write(bytes);
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  if (more !== undefined) socket.once('data', () => socket.end(more));
  await once(socket, 'close');
  return Buffer.concat(chunks).toString('latin1');
}

const AFTER_THE_ANSWER = 'bytes sent after the answer';

describe('a request with a valid token', () => {
  it('reaches the upstream with the path and query joined, Host and Authorization kept, no hop-by-hop or X-Forwarded headers', async () => {
    const echo = await echoUpstream();
    const proxy = await startProxy({ upstream: `${echo.url}/base?tenant=7` }, cleanups);
    const token = await bearer();
    const answer = await send(proxy.address, {
      path: '/items/42?q=a%20b',
      headers: [
        'Host', 'service.internal:9000',
        'Authorization', token,
        'Connection', 'keep-alive, X-Per-Hop',
        'X-Per-Hop', 'secret',
        'Keep-Alive', 'timeout=5',
        'Proxy-Connection', 'keep-alive',
        'Proxy-Authorization', 'Basic cHJveHk6cGFzcw==',
        'TE', 'trailers',
        'X-Kept', 'yes',
      ],
    });
    expect(answer.status).toBe(200);
    const seen = JSON.parse(answer.body) as SeenRequest;
    expect(seen.url).toBe('/base/items/42?tenant=7&q=a%20b');
    expect(seen.headers.host).toBe('service.internal:9000');
    const authorizations = seen.rawHeaders.filter((_, i) => i % 2 === 1 && seen.rawHeaders[i - 1]!.toLowerCase() === 'authorization');
    expect(authorizations).toEqual([token]);
    expect(seen.headers['x-kept']).toBe('yes');
    for (const hopByHop of ['x-per-hop', 'proxy-connection', 'proxy-authorization', 'te', 'upgrade', 'transfer-encoding']) {
      expect(seen.headers[hopByHop], hopByHop).toBeUndefined();
    }
    // undici's own keep-alive, not the client's "keep-alive, X-Per-Hop".
    expect(seen.headers.connection ?? 'keep-alive').toBe('keep-alive');
    expect(Object.keys(seen.headers).filter((name) => name.startsWith('x-forwarded'))).toEqual([]);
  });

  it('relays the upstream status, headers and body without its hop-by-hop headers', async () => {
    const upstream = await listenOnLoopback(
      http.createServer((req, res) => {
        req.resume();
        res.writeHead(201, { 'content-type': 'text/csv', 'set-cookie': ['a=1', 'b=2'], connection: 'keep-alive, X-Upstream-Hop', 'x-upstream-hop': 'no' });
        res.end('id,name\n1,x\n');
      }),
    );
    cleanups.push(() => upstream.close());
    const proxy = await startProxy({ upstream: upstream.url }, cleanups);
    const answer = await send(proxy.address, { method: 'POST', path: '/upload', headers: { authorization: await bearer() }, body: 'a,b\n' });
    expect(answer).toMatchObject({ status: 201, body: 'id,name\n1,x\n' });
    expect(answer.headers['content-type']).toBe('text/csv');
    expect(answer.headers['set-cookie']).toEqual(['a=1', 'b=2']);
    expect(answer.headers['x-upstream-hop']).toBeUndefined();
  });

  it('sends the request body to the upstream', async () => {
    const upstream = await listenOnLoopback(
      http.createServer((req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (chunk: Buffer) => chunks.push(chunk));
        req.on('end', () => res.end(`${req.method} ${req.headers['content-length'] ?? 'chunked'} ${Buffer.concat(chunks).toString()}`));
      }),
    );
    cleanups.push(() => upstream.close());
    const proxy = await startProxy({ upstream: upstream.url }, cleanups);
    const fixed = await send(proxy.address, { method: 'PUT', headers: { authorization: await bearer() }, body: 'hello upstream' });
    expect(fixed.body).toBe('PUT 14 hello upstream');
    // A body of unknown length still arriving is streamed on as chunks.
    const { hostname, port } = new URL(proxy.address);
    const request = http.request({ host: hostname, port, method: 'POST', agent: false, headers: { authorization: await bearer(), 'transfer-encoding': 'chunked' } });
    request.write('in ');
    setTimeout(() => request.end('chunks'), 100);
    const [res] = (await once(request, 'response')) as [http.IncomingMessage];
    expect(await readBody(res)).toBe('POST chunked in chunks');
  });

  it('reuses a few upstream connections for many keep-alive requests', async () => {
    const echo = await echoUpstream();
    const connections = countConnections(echo.server);
    const proxy = await startProxy({ upstream: echo.url }, cleanups);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
    cleanups.push(async () => agent.destroy());
    let ok = 0;
    for (let round = 0; round < 25; round++) {
      const answers = await Promise.all(
        Array.from({ length: 8 }, async () => send(proxy.address, { path: `/r${round}`, headers: { authorization: await bearer() }, agent })),
      );
      ok += answers.filter((answer) => answer.status === 200).length;
    }
    expect(ok).toBe(200);
    expect(echo.seen).toHaveLength(200);
    expect(connections.accepted).toBeLessThanOrEqual(8);
  });
});

describe('refusals', () => {
  it('answers 403 with the Go body when there is no token, and the upstream sees nothing', async () => {
    const echo = await echoUpstream();
    const proxy = await startProxy({ upstream: echo.url }, cleanups);
    const answer = await send(proxy.address, { path: '/secret' });
    expect(answer).toMatchObject({ status: 403, body: refusal('Could not parse JWT') });
    expect(answer.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(echo.seen).toHaveLength(0);
  });

  it('answers 403 to a replayed token', async () => {
    const echo = await echoUpstream();
    const proxy = await startProxy({ upstream: echo.url }, cleanups);
    const token = await bearer();
    expect((await send(proxy.address, { headers: { authorization: token } })).status).toBe(200);
    const replay = await send(proxy.address, { headers: { authorization: token } });
    expect(replay).toMatchObject({ status: 403, body: refusal("Missing or invalid 'jti' claim") });
    expect(echo.seen).toHaveLength(1);
  });

  it('answers 403 to a token for another audience', async () => {
    const echo = await echoUpstream();
    const proxy = await startProxy({ upstream: echo.url }, cleanups);
    const answer = await send(proxy.address, { headers: { authorization: await bearer('http://other-service.test') } });
    expect(answer).toMatchObject({ status: 403, body: refusal("Missing or invalid 'aud' claim") });
  });

  it('answers 500 to a forward-proxy (absolute-form) request, and to CONNECT', async () => {
    const echo = await echoUpstream();
    const proxy = await startProxy({ upstream: echo.url }, cleanups);
    const answer = await send(proxy.address, { path: 'http://example.com/x', headers: { authorization: await bearer() } });
    expect(answer).toMatchObject({ status: 500, body: 'This is a reverse proxy server. Does not respond to proxy requests.' });
    const connect = await rawExchange(proxy.address, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n');
    expect(connect).toMatch(/^HTTP\/1\.1 500 /);
    expect(connect.endsWith('\r\n\r\nThis is a reverse proxy server. Does not respond to proxy requests.')).toBe(true);
    expect(echo.seen).toHaveLength(0);
  });

  it('closes refused CONNECT and upgrade connections when the client sends more and closes: a stop does not wait for them', async () => {
    const echo = await echoUpstream();
    const proxy = await startProxy({ upstream: echo.url, shutdownTimeout: 10_000 }, cleanups);
    for (let i = 0; i < 5; i++) {
      expect(await rawExchange(proxy.address, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n', AFTER_THE_ANSWER)).toMatch(/^HTTP\/1\.1 500 /);
      expect(await rawExchange(proxy.address, 'GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n', AFTER_THE_ANSWER)).toMatch(/^HTTP\/1\.1 403 /);
    }
    const started = Date.now();
    await proxy.stop();
    // Bytes sent to a socket the proxy no longer read hid the client's close from it: each such
    // connection stayed half-open and held the stop until shutdown_timeout.
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it('answers 503 and logs when the nonce store cannot answer (fails closed)', async () => {
    const echo = await echoUpstream();
    const downStore: NonceStore = { claim: () => Promise.reject(new NonceStoreUnavailableError()) };
    const proxy = await startProxy({ upstream: echo.url, verifier: makeVerifier(downStore) }, cleanups);
    const answers = await Promise.all(Array.from({ length: 20 }, async () => send(proxy.address, { headers: { authorization: await bearer() } })));
    for (const answer of answers) expect(answer).toMatchObject({ status: 503, body: refusal('Nonce storage unavailable') });
    expect(echo.seen).toHaveLength(0);
    // One line for the outage, not one per refused request.
    expect(proxy.logger.lines.filter((line) => line.startsWith('warn request refused'))).toHaveLength(1);
  });

  it('answers 502 and logs when the upstream cannot be reached', async () => {
    const vacant = { port: await freeLoopbackPort() }; // nothing listens there
    const proxy = await startProxy({ upstream: `http://127.0.0.1:${vacant.port}` }, cleanups);
    const answer = await send(proxy.address, { headers: { authorization: await bearer() } });
    expect(answer).toMatchObject({ status: 502, body: `jwtproxy: upstream error: connect ECONNREFUSED 127.0.0.1:${vacant.port}` });
    expect(answer.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(proxy.logger.lines.some((line) => line.startsWith('warn upstream request failed') && line.includes('ECONNREFUSED'))).toBe(true);
  });

  it('logs a lasting upstream outage once per interval, with the count of refusals held back', async () => {
    const vacant = { port: await freeLoopbackPort() }; // nothing listens there
    const proxy = await startProxy({ upstream: `http://127.0.0.1:${vacant.port}`, repeatedLogIntervalMs: 300 }, cleanups);
    const sendSome = () => Promise.all(Array.from({ length: 10 }, async () => send(proxy.address, { headers: { authorization: await bearer() } })));
    for (const answer of await sendSome()) expect(answer.status).toBe(502);
    const failures = () => proxy.logger.lines.filter((line) => line.startsWith('warn upstream request failed'));
    expect(failures()).toHaveLength(1);
    await new Promise((resolve) => setTimeout(resolve, 350));
    await sendSome();
    expect(failures()).toHaveLength(2);
    expect(failures()[1]).toContain('"repeated":9');
  });

  it('does not stall on the body of a refused upload: the answer comes and the connection is closed', async () => {
    const echo = await echoUpstream();
    const proxy = await startProxy({ upstream: echo.url }, cleanups);
    const { hostname, port } = new URL(proxy.address);
    const request = http.request({ host: hostname, port, method: 'POST', path: '/upload', agent: false, headers: { 'content-length': 50 * 1024 * 1024 } });
    request.on('error', () => undefined); // the proxy closes the connection while we still send
    request.write(Buffer.alloc(1024 * 1024));
    const [res] = (await once(request, 'response')) as [http.IncomingMessage];
    expect(res.statusCode).toBe(403);
    expect(res.headers.connection).toBe('close');
    res.resume();
    await once(request.socket!, 'close');
    request.destroy();
  });

  it('keeps the connection of a refused request with a small body', async () => {
    const echo = await echoUpstream();
    const proxy = await startProxy({ upstream: echo.url }, cleanups);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    cleanups.push(async () => agent.destroy());
    const refused = await send(proxy.address, { method: 'POST', body: 'x'.repeat(1000), agent });
    expect(refused.status).toBe(403);
    expect(refused.headers.connection).toBe('keep-alive');
    const next = await send(proxy.address, { headers: { authorization: await bearer() }, agent });
    expect(next.status).toBe(200);
  });

  it('refuses an "Expect: 100-continue" upload without inviting its body, and invites it once verified', async () => {
    const echo = await echoUpstream();
    const proxy = await startProxy({ upstream: echo.url }, cleanups);
    const refused = await rawExchange(proxy.address, 'POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n');
    expect(refused).toMatch(/^HTTP\/1\.1 403 /);
    expect(refused).not.toContain('100 Continue');

    const { hostname, port } = new URL(proxy.address);
    const request = http.request({ host: hostname, port, method: 'POST', path: '/x', agent: false, headers: { authorization: await bearer(), expect: '100-continue', 'content-length': 5 } });
    request.once('continue', () => request.end('hello'));
    const [res] = (await once(request, 'response')) as [http.IncomingMessage];
    expect(res.statusCode).toBe(200);
    res.resume();
    expect(echo.seen[0]?.headers.expect).toBeUndefined();
  });

  it('survives garbage and half-sent requests', async () => {
    const echo = await echoUpstream();
    const proxy = await startProxy({ upstream: echo.url }, cleanups);
    const garbage = await rawExchange(proxy.address, 'NOT HTTP AT ALL\r\n\r\n');
    expect(garbage).toMatch(/^HTTP\/1\.1 400 /);
    const { hostname, port } = new URL(proxy.address);
    const half = net.connect({ host: hostname, port: Number(port) });
    half.write(`POST /x HTTP/1.1\r\nHost: a\r\nAuthorization: ${await bearer()}\r\nContent-Length: 100\r\n\r\nabc`);
    await new Promise((resolve) => setTimeout(resolve, 100));
    half.destroy();
    expect((await send(proxy.address, { headers: { authorization: await bearer() } })).status).toBe(200);
  });
});

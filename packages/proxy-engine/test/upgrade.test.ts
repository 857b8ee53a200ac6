import http from 'node:http';
import type net from 'node:net';
import { InvalidSignatureError } from '@jwtproxy/core';
import { freeLoopbackPort } from '@jwtproxy/testkit';
import { afterEach, describe, expect, it } from 'vitest';
import { RawClient, eventually, listenLoopback, runCleanups, send, sleep, startEngine, startUpstream, statuses, type Cleanups } from './helpers.js';

const cleanups: Cleanups = [];
afterEach(() => runCleanups(cleanups));

const upgradeRequest = (path: string, extra = ''): string => `GET ${path} HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: echo\r\n${extra}\r\n`;

/** An upstream that switches to an echo protocol on `101`, and keeps what it saw. */
async function startEchoProtocolUpstream() {
  const seen: Array<{ url: string; headers: http.IncomingHttpHeaders }> = [];
  const sockets = new Set<net.Socket>();
  const server = http.createServer((_req, res) => res.writeHead(426).end());
  server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    seen.push({ url: req.url ?? '', headers: req.headers });
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\nX-Switched: yes\r\n\r\n');
    if (head.length > 0) socket.write(head);
    socket.pipe(socket);
  });
  cleanups.push(async () => {
    for (const socket of sockets) socket.destroy();
  });
  const listening = await listenLoopback(server, cleanups);
  return Object.assign(listening, { seen, sockets });
}

describe('upgrades', () => {
  it('on 101 the client and upstream connections are joined: early bytes and later ones are echoed over the upgraded connection', async () => {
    const upstream = await startEchoProtocolUpstream();
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const client = await RawClient.connect(proxy.port);
    cleanups.push(async () => client.destroy());
    // Bytes right behind the head (the upgraded protocol's first frame) must not be lost.
    client.write(upgradeRequest('/echo', 'X-Kept: 1\r\nProxy-Authorization: Basic c2VjcmV0\r\n') + 'early|');
    expect(await client.waitFor('early|')).toBe(true);
    expect(client.text).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
    expect(client.text).toMatch(/\r\nconnection: Upgrade\r\n/i);
    expect(client.text).toMatch(/\r\nupgrade: echo\r\n/i);
    expect(client.text).toMatch(/\r\nx-switched: yes\r\n/i);
    client.write('ping|');
    expect(await client.waitFor('early|ping|')).toBe(true);
    client.write('x'.repeat(100_000));
    expect(await client.waitFor(/ping\|x{100000}$/)).toBe(true);
    expect(upstream.seen).toHaveLength(1);
    expect(upstream.seen[0]!.headers['x-kept']).toBe('1');
    expect(upstream.seen[0]!.headers.upgrade).toBe('echo');
    expect(upstream.seen[0]!.headers['proxy-authorization']).toBeUndefined();
    // Either side closing closes the other.
    client.destroy();
    expect(await eventually(() => upstream.sockets.size === 0, 2_000)).toBe(true);
  });

  it('the upstream closing an upgraded connection closes the client connection', async () => {
    const upstream = await startEchoProtocolUpstream();
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const client = await RawClient.connect(proxy.port);
    cleanups.push(async () => client.destroy());
    client.write(upgradeRequest('/echo'));
    expect(await client.waitFor('x-switched')).toBe(true);
    for (const socket of upstream.sockets) socket.destroy();
    expect(await client.waitClosed(2_000)).toBe(true);
  });

  it('a non-101 answer is relayed with its body and the connection closed: nothing the client sends after it reaches the upstream', async () => {
    const seen: string[] = [];
    // No 'upgrade' listener: Node serves the upgrade request as a plain one, which refuses to switch.
    const upstream = await startUpstream((req, res) => {
      seen.push(req.url ?? '');
      res.writeHead(403, 'No Switch', { 'x-why': 'not allowed', 'content-length': '15' });
      res.end('no switch today');
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const client = await RawClient.connect(proxy.port);
    cleanups.push(async () => client.destroy());
    client.write(upgradeRequest('/echo') + 'GET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await client.waitClosed(3_000)).toBe(true);
    expect(client.text).toMatch(/^HTTP\/1\.1 403 No Switch\r\n/);
    expect(client.text).toMatch(/\r\nx-why: not allowed\r\n/i);
    expect(client.text).toMatch(/\r\nconnection: close\r\n/i);
    expect(client.text.endsWith('\r\n\r\nno switch today')).toBe(true);
    await sleep(100);
    expect(seen).toEqual(['/echo']);
  });

  it('a refusal in route is answered on the raw socket (status, exact body, Connection: close) and the upstream is never asked', async () => {
    const upstream = await startEchoProtocolUpstream();
    const proxy = await startEngine(
      {
        upstream: upstream.origin,
        route: () => {
          throw new InvalidSignatureError();
        },
      },
      cleanups,
    );
    const client = await RawClient.connect(proxy.port);
    cleanups.push(async () => client.destroy());
    client.write(upgradeRequest('/echo') + 'frame bytes');
    expect(await client.waitClosed(3_000)).toBe(true);
    const body = 'jwtproxy: unable to verify request: Invalid JWT signature';
    expect(client.text).toBe(
      `HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
    );
    expect(upstream.seen).toEqual([]);
    expect(proxy.logger.at('debug').map((line) => line.fields)).toContainEqual(expect.objectContaining({ status: 403, upgrade: true }));
  });

  it('a bad Host on an upgrade is answered 400 on the raw socket, before route', async () => {
    const upstream = await startEchoProtocolUpstream();
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const client = await RawClient.connect(proxy.port);
    cleanups.push(async () => client.destroy());
    client.write('GET /echo HTTP/1.1\r\nHost: a b\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n');
    expect(await client.waitClosed(3_000)).toBe(true);
    expect(statuses(client.text)).toEqual([400]);
    expect(client.text.endsWith('jwtproxy: bad request: invalid Host header')).toBe(true);
    expect(proxy.routed).toEqual([]);
    expect(upstream.seen).toEqual([]);
  });

  it('an upstream that cannot be reached is answered 502 on the raw socket', async () => {
    // A port reserved for this test that nothing listens on.
    const proxy = await startEngine({ upstream: `http://127.0.0.1:${await freeLoopbackPort()}` }, cleanups);
    const client = await RawClient.connect(proxy.port);
    cleanups.push(async () => client.destroy());
    client.write(upgradeRequest('/echo'));
    expect(await client.waitClosed(3_000)).toBe(true);
    expect(statuses(client.text)).toEqual([502]);
    expect(client.text).toMatch(/\r\n\r\njwtproxy: upstream error: .*ECONNREFUSED/);
    expect(proxy.logger.at('warn').map((line) => line.message)).toContain('upstream upgrade failed');
  });

  it('an upgrade that arrives while the engine is stopping is answered 503 and closed', async () => {
    const upstream = await startEchoProtocolUpstream();
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const client = await RawClient.connect(proxy.port);
    cleanups.push(async () => client.destroy());
    // A kept-alive connection, just used: a stop leaves it a moment before closing it.
    client.write('GET /plain HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await client.waitFor('\r\n\r\n')).toBe(true);
    await sleep(50);
    const before = client.text.length;
    const stopped = proxy.stop(Date.now() + 2_000);
    client.write(upgradeRequest('/echo'));
    expect(await client.waitClosed(2_000)).toBe(true);
    const answer = client.text.slice(before);
    expect(statuses(answer)).toEqual([503]);
    expect(answer.endsWith('\r\n\r\njwtproxy: shutting down')).toBe(true);
    expect(upstream.seen).toEqual([]);
    await stopped;
  });

  it('plain requests still pass on an engine that has upgraded connections open', async () => {
    const upstream = await startEchoProtocolUpstream();
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const client = await RawClient.connect(proxy.port);
    cleanups.push(async () => client.destroy());
    client.write(upgradeRequest('/echo'));
    expect(await client.waitFor('x-switched')).toBe(true);
    // Served by the upstream's request handler (426): relayed as any answer.
    expect((await send(proxy.port, { headers: { host: 'svc' } })).status).toBe(426);
    client.write('still here');
    expect(await client.waitFor('still here')).toBe(true);
  });
});

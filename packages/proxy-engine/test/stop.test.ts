import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { RawClient, eventually, listenLoopback, openFds, runCleanups, sleep, startEngine, statuses, type Cleanups } from './helpers.js';

const cleanups: Cleanups = [];
afterEach(() => runCleanups(cleanups));

/**
 * One upstream for every kind of connection a stop meets: `/slow/<ms>` answers after that long,
 * `/events` streams until the connection goes, an upgrade switches to an echo protocol.
 */
async function startMixedUpstream() {
  const arrived: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    arrived.push(req.url ?? '');
    const delay = Number(/^\/slow\/(\d+)/.exec(req.url ?? '')?.[1] ?? 0);
    if (req.url === '/events') {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const timer = setInterval(() => res.write('data: tick\n\n'), 50);
      res.once('close', () => clearInterval(timer));
      return;
    }
    setTimeout(() => res.end(`done ${req.url}`), delay);
  });
  server.on('connection', (socket: net.Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.on('upgrade', (_req: http.IncomingMessage, socket: net.Socket) => {
    socket.on('error', () => undefined);
    socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n');
    socket.pipe(socket);
  });
  cleanups.push(async () => {
    for (const socket of sockets) socket.destroy();
  });
  const listening = await listenLoopback(server, cleanups);
  return Object.assign(listening, { arrived, sockets });
}

async function client(port: number): Promise<RawClient> {
  const connected = await RawClient.connect(port);
  cleanups.push(async () => connected.destroy());
  return connected;
}

async function refusesConnections(port: number): Promise<boolean> {
  const socket = net.connect({ host: '127.0.0.1', port });
  try {
    await once(socket, 'connect');
    return false;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ECONNREFUSED';
  } finally {
    socket.destroy();
  }
}

const upgradeRequest = 'GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n';

describe('graceful stop', () => {
  it('answers a request in flight with Connection: close, refuses new connections, and resolves when it is done, long before the deadline', async () => {
    const upstream = await startMixedUpstream();
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const inFlight = await client(proxy.port);
    inFlight.write('GET /slow/400 HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await eventually(() => upstream.arrived.includes('/slow/400'), 2_000)).toBe(true);
    const started = Date.now();
    const stopped = proxy.stop(started + 10_000);
    expect(await refusesConnections(proxy.port)).toBe(true);
    expect(await inFlight.waitFor('done /slow/400')).toBe(true);
    expect(statuses(inFlight.text)).toEqual([200]);
    expect(inFlight.text).toMatch(/\r\nconnection: close\r\n/i);
    expect(await inFlight.waitClosed(1_000)).toBe(true);
    await stopped;
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(proxy.pool.closed).toBe(true);
  });

  it('closes a long-idle connection at once, but serves (with Connection: close) a request sent on a just-used connection instead of resetting it', async () => {
    const upstream = await startMixedUpstream();
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const longIdle = await client(proxy.port);
    longIdle.write('GET /first HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await longIdle.waitFor('done /first')).toBe(true);
    await sleep(600);
    const justUsed = await client(proxy.port);
    justUsed.write('GET /second HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await justUsed.waitFor('done /second')).toBe(true);

    const started = Date.now();
    const stopped = proxy.stop(started + 5_000);
    // A client reusing its kept-alive connection at this moment: it must get an answer, not a reset.
    await sleep(100);
    justUsed.write('GET /third HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await longIdle.waitClosed(1_000)).toBe(true);
    expect(longIdle.closedAt! - started).toBeLessThan(300);
    expect(await justUsed.waitFor('done /third')).toBe(true);
    expect(justUsed.text.slice(justUsed.text.indexOf('done /second'))).toMatch(/\r\nconnection: close\r\n/i);
    expect(await justUsed.waitClosed(1_000)).toBe(true);
    await stopped;
    expect(Date.now() - started).toBeLessThan(1_500);
    expect(upstream.arrived).toEqual(['/first', '/second', '/third']);
  });

  it('keeps upgraded connections working until the deadline, then cuts them and long requests, and resolves by the deadline', async () => {
    const upstream = await startMixedUpstream();
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const streaming = await client(proxy.port);
    streaming.write('GET /events HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await streaming.waitFor('data: tick')).toBe(true);
    const upgraded = await client(proxy.port);
    upgraded.write(upgradeRequest);
    expect(await upgraded.waitFor('\r\n\r\n')).toBe(true);

    const started = Date.now();
    const stopped = proxy.stop(started + 700);
    await sleep(300);
    upgraded.write('still open');
    expect(await upgraded.waitFor('still open', 1_000)).toBe(true);
    expect(streaming.isClosed).toBe(false);
    await stopped;
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(650);
    expect(took).toBeLessThan(1_200);
    expect(await streaming.waitClosed(500)).toBe(true);
    expect(await upgraded.waitClosed(500)).toBe(true);
    // The streamed answer was cut, not ended.
    expect(streaming.text.endsWith('0\r\n\r\n')).toBe(false);
    expect(proxy.logger.at('warn').map((line) => line.message)).toContain('shutdown deadline reached: closing the connections left');
  });

  it('resolves by the deadline with requests in flight whose upstream never answers', async () => {
    const upstream = await startMixedUpstream();
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const waiting = await client(proxy.port);
    waiting.write('GET /slow/60000 HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await eventually(() => upstream.arrived.includes('/slow/60000'), 2_000)).toBe(true);
    const started = Date.now();
    await proxy.stop(started + 500);
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(await waiting.waitClosed(500)).toBe(true);
    expect(await eventually(() => upstream.sockets.size === 0, 1_000)).toBe(true);
  });

  it('gives back every file descriptor: kept-alive, in-flight, upgraded, streaming, silent and slowloris connections, 60 in all', async () => {
    const upstream = await startMixedUpstream();
    const baseline = openFds();
    const proxy = await startEngine({ upstream: upstream.origin, limits: { readHeaderTimeoutMs: 5_000 } }, cleanups);
    const clients: RawClient[] = [];
    const open = async (bytes: string): Promise<RawClient> => {
      const opened = await client(proxy.port);
      if (bytes) opened.write(bytes);
      clients.push(opened);
      return opened;
    };
    const kept = await Promise.all(Array.from({ length: 20 }, (_, i) => open(`GET /kept/${i} HTTP/1.1\r\nHost: svc\r\n\r\n`)));
    for (const each of kept) expect(await each.waitFor(/done \/kept\/\d+$/)).toBe(true);
    const slow = await Promise.all(Array.from({ length: 10 }, (_, i) => open(`GET /slow/${700 + i} HTTP/1.1\r\nHost: svc\r\n\r\n`)));
    const upgraded = await Promise.all(Array.from({ length: 10 }, () => open(upgradeRequest)));
    for (const each of upgraded) expect(await each.waitFor('\r\n\r\n')).toBe(true);
    const streams = await Promise.all(Array.from({ length: 5 }, () => open('GET /events HTTP/1.1\r\nHost: svc\r\n\r\n')));
    for (const each of streams) expect(await each.waitFor('data: tick')).toBe(true);
    await Promise.all(Array.from({ length: 10 }, () => open('')));
    await Promise.all(Array.from({ length: 5 }, () => open('GET /slowloris HTTP/1.1\r\nHost: svc\r\nX-A')));
    const during = openFds();
    expect(during - baseline).toBeGreaterThanOrEqual(60);
    expect(slow.filter((each) => each.text !== '')).toEqual([]);

    const started = Date.now();
    await proxy.stop(started + 1_500);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(await eventually(() => clients.every((each) => each.isClosed), 2_000)).toBe(true);
    expect(await eventually(() => openFds() <= baseline, 3_000), `${openFds()} fds open, ${baseline} before`).toBe(true);
    // The in-flight requests were answered, with Connection: close.
    for (const each of slow) {
      expect(each.text).toMatch(/done \/slow\/7\d\d$/);
      expect(each.text).toMatch(/\r\nconnection: close\r\n/i);
    }
  });
});

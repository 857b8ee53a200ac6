import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { listenOnLoopback } from '@jwtproxy/testkit';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { bearer, runCleanups, send, startProxy } from './helpers.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(() => runCleanups(cleanups));

/** An upstream whose `/slow/<ms>` answers after that many ms; resolves `arrived` when a slow request comes in. */
async function slowUpstream() {
  let arrived!: () => void;
  const slowArrived = new Promise<void>((resolve) => (arrived = resolve));
  const upstream = await listenOnLoopback(
    http.createServer((req, res) => {
      const delay = Number(/^\/slow\/(\d+)/.exec(req.url ?? '')?.[1] ?? 0);
      if (delay > 0) arrived();
      setTimeout(() => res.end(`done after ${delay}`), delay);
    }),
  );
  cleanups.push(() => upstream.close());
  return { upstream, slowArrived };
}

async function connectionRefused(address: string): Promise<boolean> {
  const { hostname, port } = new URL(address);
  const socket = net.connect({ host: hostname, port: Number(port) });
  try {
    await once(socket, 'connect');
    return false;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ECONNREFUSED';
  } finally {
    socket.destroy();
  }
}

describe('stop(deadline)', () => {
  it('refuses new connections at once, closes idle keep-alive connections, and lets a slow request finish', async () => {
    const { upstream, slowArrived } = await slowUpstream();
    const proxy = await startProxy({ upstream: upstream.url, shutdownTimeout: 10_000 }, cleanups);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
    cleanups.push(async () => agent.destroy());
    // An idle keep-alive connection that must not hold the shutdown up.
    expect((await send(proxy.address, { headers: { authorization: await bearer() }, agent })).status).toBe(200);

    const slow = send(proxy.address, { path: '/slow/700', headers: { authorization: await bearer() } });
    await slowArrived;
    const started = Date.now();
    const stopped = proxy.stop(started + 10_000);
    expect(await connectionRefused(proxy.address)).toBe(true);
    await expect(slow).resolves.toMatchObject({ status: 200, body: 'done after 700' });
    await stopped;
    // Done when the slow request was, not at the 10 s deadline.
    expect(Date.now() - started).toBeLessThan(3_000);
  });

  it('cuts what is still running at the deadline and resolves then', async () => {
    const { upstream, slowArrived } = await slowUpstream();
    const proxy = await startProxy({ upstream: upstream.url, shutdownTimeout: 10_000 }, cleanups);
    const tooSlow = send(proxy.address, { path: '/slow/20000', headers: { authorization: await bearer() } });
    tooSlow.catch(() => undefined);
    await slowArrived;

    const wsUpstream = http.createServer();
    const wss = new WebSocketServer({ server: wsUpstream });
    const running = await listenOnLoopback(wsUpstream);
    cleanups.push(async () => {
      wss.close();
      await running.close();
    });
    const wsProxy = await startProxy({ upstream: running.url, shutdownTimeout: 10_000 }, cleanups);
    const socket = new WebSocket(wsProxy.address.replace(/^http/, 'ws') + '/', { headers: { authorization: await bearer() } });
    await once(socket, 'open');

    const started = Date.now();
    await Promise.all([proxy.stop(started + 400), wsProxy.stop(started + 400)]);
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(350);
    expect(elapsed).toBeLessThan(2_000);
    await expect(tooSlow).rejects.toThrow(/socket hang up|ECONNRESET/);
    if (socket.readyState !== WebSocket.CLOSED) await once(socket, 'close');
  });

  it('uses shutdownTimeout when no deadline is given, and stop is idempotent', async () => {
    const { upstream, slowArrived } = await slowUpstream();
    const proxy = await startProxy({ upstream: upstream.url, shutdownTimeout: 300 }, cleanups);
    const tooSlow = send(proxy.address, { path: '/slow/20000', headers: { authorization: await bearer() } });
    tooSlow.catch(() => undefined);
    await slowArrived;
    const started = Date.now();
    const first = proxy.stop();
    expect(proxy.stop()).toBe(first);
    await first;
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(Date.now() - started).toBeLessThan(2_000);
  });
});

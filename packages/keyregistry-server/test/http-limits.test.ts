/**
 * Issue 12, item 2: bodies and connections a client controls. An oversize chunked body is
 * answered 413 and its connection closed cleanly (it used to end the process), a request
 * pipelined behind it never runs, a body or head that stops arriving is cut, and connections
 * beyond max_connections are closed at once.
 */
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryKeyStore, startKeyRegistryServer, type KeyRegistryServerOptions, type RunningKeyRegistry } from '../src/index.js';
import { call, ecKey, keyUrl, registryToken, sleep, spawnRegistry, uniqueName } from './support.js';

const aud = 'http://registry.test';
const started: RunningKeyRegistry[] = [];
const sockets: Socket[] = [];
let warnings: string[] = [];

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.destroy();
  await Promise.all(started.splice(0).map((running) => running.stop()));
  warnings = [];
});

async function start(options: KeyRegistryServerOptions = {}): Promise<RunningKeyRegistry> {
  const running = await startKeyRegistryServer({
    listenAddr: '127.0.0.1:0', publicUrl: aud, store: new MemoryKeyStore(),
    logger: { debug() {}, info() {}, warn: (message, fields) => warnings.push(`${message} ${JSON.stringify(fields)}`), error: (message) => warnings.push(message) },
    ...options,
  });
  started.push(running);
  return running;
}

interface RawExchange {
  /** Everything the server sent. */
  received: string;
  /** How the connection ended: the server's FIN, a reset, or our own timeout. */
  ending: 'end' | 'reset' | 'timeout';
  /** ms from connecting to the end. */
  elapsedMs: number;
}

/** Opens a connection, lets `talk` write to it, and collects the answer until the server ends the connection. */
function exchange(address: string, talk: (socket: Socket) => void, timeoutMs = 8000): Promise<RawExchange> {
  const { port } = new URL(address);
  return new Promise((resolve) => {
    const began = performance.now();
    const socket = connect(Number(port), '127.0.0.1', () => talk(socket));
    sockets.push(socket);
    let received = '';
    let ending: RawExchange['ending'] | undefined;
    const done = (how: RawExchange['ending']): void => {
      ending ??= how;
      clearTimeout(timer);
      resolve({ received, ending, elapsedMs: performance.now() - began });
    };
    const timer = setTimeout(() => {
      done('timeout');
      socket.destroy();
    }, timeoutMs);
    socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
    socket.on('end', () => done('end'));
    socket.on('error', () => done('reset'));
  });
}

function statusOf(received: string): number[] {
  return [...received.matchAll(/^HTTP\/1\.1 (\d{3})/gm)].map((match) => Number(match[1]));
}

const chunkedHead = (path: string, extra = ''): string =>
  `PUT ${path} HTTP/1.1\r\nHost: registry.test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n${extra}\r\n`;
const chunk = (text: string): string => `${Buffer.byteLength(text).toString(16)}\r\n${text}\r\n`;

describe('request bodies and connections', () => {
  it('answers a 70 KB chunked body 413 with a JSON body, closes the connection cleanly, and the process stays up', async () => {
    // In a process of its own, as the CLI runs it: this request used to end the process.
    const child = await spawnRegistry({ listenAddr: '127.0.0.1:0', publicUrl: aud, storage: { type: 'memory' } });
    try {
      const body = chunk('x'.repeat(7000)).repeat(10) + '0\r\n\r\n';
      const answer = await exchange(child.address, (socket) => socket.write(chunkedHead('/services/a/keys/b') + body));
      expect(answer.ending).toBe('end');
      expect(statusOf(answer.received)).toEqual([413]);
      expect(answer.received).toMatch(/\r\nconnection: close\r\n/i);
      expect(answer.received).toMatch(/\{"error":"body_too_large","message":"the body is larger than 65536 bytes"\}$/);
      await sleep(200);
      expect(child.child.exitCode).toBeNull();
      expect((await call(`${child.address}/healthz`)).status).toBe(200);
      expect(child.stderr()).not.toMatch(/TypeError/);
    } finally {
      await child.stop();
    }
  });

  it('a client that sends its whole body before reading gets the 413, then the end of the connection, not a reset', async () => {
    const running = await start({ maxBodyBytes: 4096 });
    let writer: NodeJS.Timeout | undefined;
    const answer = await exchange(running.address, (socket) => {
      // Like a client that writes the request in full before it reads (curl, Go's net/http):
      // nothing is read until the last chunk has been sent, well after the refusal.
      socket.pause();
      socket.write(chunkedHead('/services/a/keys/b'));
      let sent = 0;
      writer = setInterval(() => {
        if (socket.destroyed) return clearInterval(writer);
        if (sent++ < 25) return void socket.write(chunk('y'.repeat(40_000)));
        clearInterval(writer);
        socket.write('0\r\n\r\n');
        socket.resume();
      }, 20);
    });
    clearInterval(writer);
    expect(statusOf(answer.received)).toEqual([413]);
    expect(answer.received).toMatch(/"error":"body_too_large"/);
    expect(answer.ending).toBe('end');
    expect((await call(`${running.address}/healthz`)).status).toBe(200);
  });

  it('never runs a request pipelined behind a refused body', async () => {
    const running = await start({ maxBodyBytes: 4096 });
    const service = uniqueName('svc');
    const key = await ecKey();
    const token = await registryToken(key, { iss: service, aud });
    const json = JSON.stringify(key.jwk);
    const publish = `PUT /services/${service}/keys/${key.kid} HTTP/1.1\r\nHost: registry.test\r\nContent-Type: application/json\r\nAuthorization: Bearer ${token}\r\nContent-Length: ${Buffer.byteLength(json)}\r\n\r\n${json}`;
    const oversize = chunkedHead('/services/a/keys/b') + chunk('z'.repeat(6000)) + '0\r\n\r\n';
    const declaredOversize = `PUT /services/a/keys/b HTTP/1.1\r\nHost: registry.test\r\nContent-Length: 5000\r\n\r\n${'z'.repeat(5000)}`;
    for (const refused of [oversize, declaredOversize]) {
      const answer = await exchange(running.address, (socket) => socket.end(refused + publish));
      expect(statusOf(answer.received)).toEqual([413]);
      expect(answer.ending).toBe('end');
    }
    expect((await call(keyUrl(running.address, service, key.kid))).status).toBe(404);
  });

  it('refuses an oversize body announced with Expect: 100-continue before the client sends it', async () => {
    const running = await start({ maxBodyBytes: 4096 });
    const answer = await exchange(running.address, (socket) =>
      socket.write('PUT /services/a/keys/b HTTP/1.1\r\nHost: registry.test\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n'),
    );
    expect(statusOf(answer.received)).toEqual([413]);
    expect(answer.received).not.toMatch(/100 Continue/);
    // A body within the limit is invited.
    const invited = await exchange(running.address, (socket) => {
      socket.write('PUT /services/a/keys/b HTTP/1.1\r\nHost: registry.test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n');
      socket.once('data', () => socket.end('{}'));
    });
    expect(statusOf(invited.received)).toEqual([100, 400]);
  });

  it('answers 408 and closes a connection whose body stops arriving (body_idle_timeout)', async () => {
    const running = await start({ bodyIdleTimeoutMs: 400 });
    const answer = await exchange(running.address, (socket) =>
      socket.write('PUT /services/a/keys/b HTTP/1.1\r\nHost: registry.test\r\nContent-Length: 1000\r\n\r\n{"kty":'),
    );
    expect(statusOf(answer.received)).toEqual([408]);
    expect(answer.received).toMatch(/"error":"request_timeout"/);
    expect(answer.ending).toBe('end');
    expect(answer.elapsedMs).toBeGreaterThanOrEqual(350);
    // The lingering close gives a silent client 2 s at most.
    expect(answer.elapsedMs).toBeLessThan(4000);
    // A slow but steady body is not cut: the limit is on each pause, not on the whole body
    // (4 pieces 300 ms apart, 1.2 s in all, with an 800 ms idle limit; the margin leaves room
    // for a loaded machine's late timers).
    const steady = await start({ bodyIdleTimeoutMs: 800 });
    const slow = await exchange(steady.address, (socket) => {
      socket.write('PUT /services/a/keys/b HTTP/1.1\r\nHost: registry.test\r\nContent-Length: 4\r\n\r\n');
      let sent = 0;
      const timer = setInterval(() => {
        socket.write(['[', '1', ',', ']'][sent]!);
        if (++sent === 4) {
          clearInterval(timer);
          socket.end();
        }
      }, 300);
    });
    expect(statusOf(slow.received)).toEqual([400]);
    expect(slow.received).toMatch(/invalid_jwk/);
  });

  it('closes connections that send nothing, or an unfinished head, within read_header_timeout', async () => {
    // In a process of its own. Node's own head timer does not reliably cover a connection that
    // has sent nothing (seen: silent connections open for seconds past a 500 ms limit); the
    // registry arms its own timer until the first request starts.
    const child = await spawnRegistry({ listenAddr: '127.0.0.1:0', publicUrl: aud, storage: { type: 'memory' }, readHeaderTimeoutMs: 500 });
    try {
      const silent = await Promise.all(Array.from({ length: 3 }, () => exchange(child.address, () => undefined, 4000)));
      for (const connection of silent) {
        expect(connection.ending).toBe('end');
        expect(connection.elapsedMs).toBeGreaterThanOrEqual(450);
        expect(connection.elapsedMs).toBeLessThan(2500);
      }
    } finally {
      await child.stop();
    }
    const running = await start({ readHeaderTimeoutMs: 500 });
    const answer = await exchange(running.address, (socket) => socket.write('GET /healthz HTTP/1.1\r\nHost: registry.test\r\nX-Slow: '));
    expect(['end', 'reset']).toContain(answer.ending);
    expect(answer.elapsedMs).toBeLessThan(2500);
    // A kept-alive connection is not cut by that timer once it has sent a request.
    const kept = await exchange(running.address, (socket) => socket.write('GET /healthz HTTP/1.1\r\nHost: registry.test\r\n\r\n'), 1500);
    expect(statusOf(kept.received)).toEqual([200]);
    expect(kept.ending).toBe('timeout');
  });

  it('closes connections beyond max_connections at once, logs it once, and serves again when they are gone', async () => {
    const running = await start({ maxConnections: 5 });
    const { port } = new URL(running.address);
    const opened = await Promise.all(
      Array.from({ length: 12 }, () =>
        new Promise<{ socket: Socket; isClosed: () => boolean }>((resolve) => {
          const socket = connect(Number(port), '127.0.0.1');
          sockets.push(socket);
          let closed = false;
          socket.on('close', () => (closed = true));
          socket.on('error', () => undefined);
          socket.on('connect', () => resolve({ socket, isClosed: () => closed }));
        }),
      ),
    );
    // Those beyond the limit are closed at once; the five within it stay open.
    await expect.poll(() => opened.filter((entry) => entry.isClosed()).length, { timeout: 3_000, interval: 20 }).toBe(7);
    await sleep(300);
    expect(opened.filter((entry) => entry.isClosed())).toHaveLength(7);
    expect(warnings.filter((line) => line.startsWith('key registry: connection limit reached'))).toHaveLength(1);
    for (const { socket } of opened) socket.destroy();
    await sleep(100);
    expect((await call(`${running.address}/healthz`)).status).toBe(200);
  });
});

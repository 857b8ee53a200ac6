/**
 * Issue 12 for the signer: a client can neither confuse the upstream about the request it sends
 * (header limits, Host), nor get a request run behind a refusal, nor hold connections open; a stop
 * answers what it accepted.
 */
import { once } from 'node:events';
import { readdirSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { listenOnLoopback, type SeenRequest } from '@jwtproxy/testkit';
import { afterEach, describe, expect, it } from 'vitest';
import { type SignerProxyOptions } from '../src/index.js';
import { interopKeySource, makeSigner, verifyAsVerifier, startTestEcho, startTestSigner } from './helpers.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

const startSigner = (overrides: Partial<SignerProxyOptions> = {}) => startTestSigner(cleanups, overrides);
const echo = () => startTestEcho(cleanups);

/** Writes `request` as raw bytes on a new connection and reads everything until the signer closes it. */
async function rawExchange(port: number, request: string | Buffer, timeoutMs = 5_000): Promise<string> {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => undefined);
  await once(socket, 'connect');
  socket.write(request);
  let text = '';
  socket.setEncoding('latin1').on('data', (d: string) => (text += d));
  const timer = setTimeout(() => socket.destroy(), timeoutMs);
  await once(socket, 'close');
  clearTimeout(timer);
  return text;
}

function allValues(seen: SeenRequest, name: string): string[] {
  const values: string[] = [];
  for (let i = 0; i < seen.rawHeaders.length; i += 2) if (seen.rawHeaders[i]!.toLowerCase() === name) values.push(seen.rawHeaders[i + 1]!);
  return values;
}

const statusLines = (text: string): string[] => text.match(/HTTP\/1\.1 \d{3}/g) ?? [];

/** Open file descriptors of this process (Linux). */
const openFds = (): number => readdirSync('/proc/self/fd').length;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('request heads', () => {
  it('more header lines than max_header_lines: 431 and nothing forwarded; at the limit the token arrives', async () => {
    const service = await echo();
    const signer = await startSigner();
    const head = (lines: number) => {
      let text = `GET ${service.url}/many HTTP/1.1\r\nHost: 127.0.0.1:${service.port}\r\nConnection: close\r\n`;
      // Short lines, so that the head stays under Node's 16 KiB limit on its size.
      for (let i = 0; i < lines - 2; i++) text += `x${i}:1\r\n`;
      return `${text}\r\n`;
    };
    // ~1,100 lines: Node kept the first 2,000 raw values and dropped the rest, the signer's token with them.
    const tooMany = await rawExchange(signer.port, head(1_100));
    expect(tooMany).toMatch(/^HTTP\/1\.1 431 /);
    expect(tooMany).toMatch(/\r\n\r\njwtproxy: bad request: too many header lines$/);
    expect(service.seen).toHaveLength(0);
    // 500 lines (the default maximum): signed, with exactly one token.
    expect(await rawExchange(signer.port, head(500))).toMatch(/^HTTP\/1\.1 200 /);
    const values = allValues(service.seen[0]!, 'authorization');
    expect(values).toHaveLength(1);
    await verifyAsVerifier(values, service.url);
    // A lower configured maximum applies.
    const strict = await startSigner({ limits: { maxHeaderLines: 20 } });
    expect(await rawExchange(strict.port, head(21))).toMatch(/^HTTP\/1\.1 431 /);
    expect(await rawExchange(strict.port, head(20))).toMatch(/^HTTP\/1\.1 200 /);
  });

  it('a duplicate, empty or invalid Host: 400, nothing forwarded', async () => {
    const service = await echo();
    const signer = await startSigner();
    const target = `${service.url}/host`;
    const cases: Array<[string, string]> = [
      [`Host: 127.0.0.1:${service.port}\r\nHost: evil.test\r\n`, 'jwtproxy: bad request: more than one Host header'],
      ['Host: \r\n', 'jwtproxy: bad request: invalid Host header'],
      ['Host: a b\r\n', 'jwtproxy: bad request: invalid Host header'],
      ['', 'jwtproxy: bad request: no Host header'],
    ];
    for (const [host, body] of cases) {
      const answer = await rawExchange(signer.port, `GET ${target} HTTP/1.1\r\n${host}X-Case: 1\r\n\r\n`);
      expect(answer).toMatch(/^HTTP\/1\.1 400 /);
      expect(answer.endsWith(`\r\n\r\n${body}`)).toBe(true);
    }
    // Inside a CONNECT tunnel too, and a CONNECT with two Host headers is refused before any tunnel.
    const inTunnel = await rawExchange(
      signer.port,
      `CONNECT 127.0.0.1:${service.port} HTTP/1.1\r\nHost: 127.0.0.1:${service.port}\r\n\r\nGET /t HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n`,
    );
    expect(statusLines(inTunnel)).toEqual(['HTTP/1.1 200', 'HTTP/1.1 400']);
    const connect = await rawExchange(signer.port, `CONNECT 127.0.0.1:${service.port} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n`);
    expect(statusLines(connect)).toEqual(['HTTP/1.1 400']);
    expect(service.seen).toHaveLength(0);
    // A CONNECT needs no Host (RFC 9112 §3.2.3).
    expect(statusLines(await rawExchange(signer.port, `CONNECT 127.0.0.1:${service.port} HTTP/1.1\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`))).toEqual([
      'HTTP/1.1 200',
      'HTTP/1.1 200',
    ]);
  });

  it('an absolute-form request whose Host differs from the target: the upstream gets the target authority (as Go)', async () => {
    const service = await echo();
    const signer = await startSigner();
    const answer = await rawExchange(signer.port, `GET ${service.url}/abs HTTP/1.1\r\nHost: other.test:1234\r\nConnection: close\r\n\r\n`);
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    expect(service.seen[0]!.headers.host).toBe(`127.0.0.1:${service.port}`);
    expect(allValues(service.seen[0]!, 'host')).toHaveLength(1);
  });
});

describe('pipelining', () => {
  it('a request pipelined behind a refused one is never run: one answer, then the connection closes', async () => {
    const service = await echo();
    const signer = await startSigner();
    const valid = `GET ${service.url}/second HTTP/1.1\r\nHost: 127.0.0.1:${service.port}\r\n\r\n`;
    const refused: Array<[string, string]> = [
      ['GET /origin-form HTTP/1.1\r\nHost: x\r\n\r\n', 'HTTP/1.1 500'],
      ['GET ftp://127.0.0.1/file HTTP/1.1\r\nHost: x\r\n\r\n', 'HTTP/1.1 400'],
      [`GET ${service.url}/first HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n`, 'HTTP/1.1 400'],
      [`POST ${service.url}/first HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: b\r\nContent-Length: 5\r\n\r\nhello`, 'HTTP/1.1 400'],
    ];
    for (const [first, status] of refused) {
      const answer = await rawExchange(signer.port, first + valid);
      expect(statusLines(answer)).toEqual([status]);
      expect(answer).toMatch(/\r\nConnection: close\r\n/i);
    }
    expect(service.seen).toHaveLength(0);
  });

  it('behind a 502 (no key to sign with, upstream unreachable) nothing pipelined runs either', async () => {
    const service = await echo();
    const valid = `GET ${service.url}/second HTTP/1.1\r\nHost: 127.0.0.1:${service.port}\r\n\r\n`;
    const keyless = await startSigner({ signer: makeSigner(interopKeySource(false)) });
    expect(statusLines(await rawExchange(keyless.port, valid + valid))).toEqual(['HTTP/1.1 502']);
    const dead = await listenOnLoopback(http.createServer());
    await dead.close(); // nothing listens on its port any more
    const signer = await startSigner();
    expect(statusLines(await rawExchange(signer.port, `GET ${dead.url}/first HTTP/1.1\r\nHost: 127.0.0.1:${dead.port}\r\n\r\n${valid}`))).toEqual(['HTTP/1.1 502']);
    expect(service.seen).toHaveLength(0);
  });

  it('valid pipelined requests all run, one after the other, inside a tunnel too', async () => {
    const service = await echo();
    const signer = await startSigner();
    const request = (path: string, last = false) => `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${service.port}\r\n${last ? 'Connection: close\r\n' : ''}\r\n`;
    const plain = await rawExchange(signer.port, request(`${service.url}/1`) + request(`${service.url}/2`) + request(`${service.url}/3`, true));
    expect(statusLines(plain)).toEqual(['HTTP/1.1 200', 'HTTP/1.1 200', 'HTTP/1.1 200']);
    const tunnelled = await rawExchange(
      signer.port,
      `CONNECT 127.0.0.1:${service.port} HTTP/1.1\r\n\r\n${request('/4')}GET /refused HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n${request('/5')}`,
    );
    expect(statusLines(tunnelled)).toEqual(['HTTP/1.1 200', 'HTTP/1.1 200', 'HTTP/1.1 400']);
    expect(service.seen.map((seen) => seen.url)).toEqual(['/1', '/2', '/3', '/4']);
  });
});

describe('graceful stop', () => {
  it('kept-alive clients at a stop: each request the signer took is answered (with connection: close during the stop), none is cut', async () => {
    const forwarded = new Set<string>();
    const upstream = await listenOnLoopback(
      http.createServer((req, res) => {
        forwarded.add(req.url!);
        setTimeout(() => res.end('done'), 30);
      }),
    );
    cleanups.push(() => upstream.close());
    const signer = await startSigner({ shutdownTimeout: 5_000 });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
    cleanups.push(async () => agent.destroy());
    const outcomes = new Map<string, string>();
    let stopAsked = false;
    const client = async (c: number): Promise<void> => {
      for (let i = 0; i < 200; i++) {
        const path = `/${c}/${i}`;
        const outcome = await new Promise<string>((resolve) => {
          http
            .get({ host: signer.host, port: signer.port, path: `${upstream.url}${path}`, agent }, (res) => {
              res.resume();
              res.on('end', () => resolve(`${res.statusCode} ${res.headers.connection}`));
              res.on('error', (error: NodeJS.ErrnoException) => resolve(`cut: ${error.code ?? error.message}`));
            })
            .on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
        });
        outcomes.set(path, outcome);
        if (stopAsked && !outcome.startsWith('200')) return;
      }
    };
    const clients = Array.from({ length: 16 }, (_, c) => client(c));
    await sleep(300);
    stopAsked = true;
    await signer.proxy.stop();
    await Promise.all(clients);
    const counts: Record<string, number> = {};
    for (const outcome of outcomes.values()) counts[outcome] = (counts[outcome] ?? 0) + 1;
    console.log('graceful stop outcomes', counts);
    // Served with keep-alive before the stop; the requests in flight at the stop, and those sent
    // on a kept-alive connection during it, with `Connection: close`; new connections refused.
    expect(counts['200 close']).toBeGreaterThanOrEqual(1);
    // Each request that reached the upstream got its answer: none the signer took was cut.
    for (const path of forwarded) expect(outcomes.get(path)).toMatch(/^200 (keep-alive|close)$/);
    // What was not answered never reached the upstream: a refused new connection, or (on a loaded
    // machine) a request sent on a connection the stop closed after it had stayed idle 250 ms.
    for (const [path, outcome] of outcomes) if (!outcome.startsWith('200')) expect(forwarded.has(path), `${path}: ${outcome}`).toBe(false);
    expect(Object.keys(counts).filter((outcome) => !['200 keep-alive', '200 close', 'ECONNREFUSED', 'ECONNRESET'].includes(outcome))).toEqual([]);
  });
});

describe('slow and silent clients', () => {
  it('500 slowloris and 300 silent connections are closed after read_header_timeout and the fds return to baseline', async () => {
    const service = await echo();
    const signer = await startSigner({ limits: { readHeaderTimeoutMs: 1_000 } });
    const baseline = openFds();
    let peak = baseline;
    const sampler = setInterval(() => (peak = Math.max(peak, openFds())), 50);
    const sockets: net.Socket[] = [];
    /** How long each connection lived, from its connect to its close, ms. */
    const lifetimes: Array<Promise<number>> = [];
    const open = (first: string): void => {
      const socket = net.connect(signer.port, '127.0.0.1');
      socket.on('error', () => undefined);
      socket.resume();
      sockets.push(socket);
      lifetimes.push(
        once(socket, 'connect').then(async () => {
          if (first) socket.write(first);
          const connected = Date.now();
          if (!socket.destroyed) await once(socket, 'close');
          return Date.now() - connected;
        }),
      );
    };
    for (let i = 0; i < 500; i++) open(`GET ${service.url}/slow HTTP/1.1\r\nHost: 127.0.0.1:${service.port}\r\n`);
    for (let i = 0; i < 300; i++) open('');
    // Tunnels too: silent after the 200, and a slow request head inside one.
    for (let i = 0; i < 50; i++) open(`CONNECT 127.0.0.1:${service.port} HTTP/1.1\r\n\r\n`);
    for (let i = 0; i < 50; i++) open(`CONNECT 127.0.0.1:${service.port} HTTP/1.1\r\n\r\nGET /slow HTTP/1.1\r\n`);
    // Slowloris: one more header line every 200 ms, for as long as the connection lives.
    const drip = setInterval(() => {
      for (const socket of sockets.slice(0, 500)) if (!socket.destroyed && !socket.connecting) socket.write(`X-Drip: ${Date.now()}\r\n`);
    }, 200);
    cleanups.push(async () => {
      clearInterval(drip);
      clearInterval(sampler);
      for (const socket of sockets) socket.destroy();
    });
    const timeout = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 15_000));
    const lived = await Promise.race([Promise.all(lifetimes), timeout]);
    clearInterval(drip);
    clearInterval(sampler);
    expect(lived).not.toBe('timeout');
    await sleep(200);
    const after = openFds();
    const times = (lived as number[]).sort((a, b) => a - b);
    console.log(`slow clients: fds baseline ${baseline}, peak ${peak}, after ${after}; connections lived ${times[0]}-${times.at(-1)} ms`);
    expect(peak - baseline).toBeGreaterThanOrEqual(900); // the clients' ends alone are 900
    // Closed by the read-header timeout (1 s, checked every 250 ms), not before, and not much later.
    expect(times[0]).toBeGreaterThanOrEqual(900);
    expect(times.at(-1)).toBeLessThan(3_000);
    expect(after - baseline).toBeLessThanOrEqual(2);
    // And the signer still serves.
    expect(statusLines(await rawExchange(signer.port, `GET ${service.url}/after HTTP/1.1\r\nHost: 127.0.0.1:${service.port}\r\nConnection: close\r\n\r\n`))).toEqual([
      'HTTP/1.1 200',
    ]);
  });

  it('connections beyond max_connections are closed as they arrive; the others are served', async () => {
    const service = await echo();
    const signer = await startSigner({ limits: { maxConnections: 10 } });
    const held = await Promise.all(
      Array.from({ length: 10 }, async () => {
        const socket = net.connect(signer.port, '127.0.0.1');
        socket.on('error', () => undefined);
        await once(socket, 'connect');
        return socket;
      }),
    );
    cleanups.push(async () => held.forEach((socket) => socket.destroy()));
    await sleep(50);
    expect(await rawExchange(signer.port, `GET ${service.url}/over HTTP/1.1\r\nHost: 127.0.0.1:${service.port}\r\n\r\n`)).toBe('');
    held[0]!.write(`GET ${service.url}/held HTTP/1.1\r\nHost: 127.0.0.1:${service.port}\r\n\r\n`);
    const [answer] = (await once(held[0]!, 'data')) as [Buffer];
    expect(answer.toString()).toMatch(/^HTTP\/1\.1 200 /);
    held.forEach((socket) => socket.destroy());
    await sleep(50);
    expect(statusLines(await rawExchange(signer.port, `GET ${service.url}/later HTTP/1.1\r\nHost: 127.0.0.1:${service.port}\r\nConnection: close\r\n\r\n`))).toEqual([
      'HTTP/1.1 200',
    ]);
    expect(service.seen.map((seen) => seen.url)).toEqual(['/held', '/later']);
  });

  it('a request body that stops sending is cut after body_idle_timeout', async () => {
    let aborted = false;
    const upstream = await listenOnLoopback(
      http.createServer((req, res) => {
        req.on('error', () => undefined);
        req.on('aborted', () => (aborted = true));
        req.resume();
        req.on('end', () => res.end('complete'));
      }),
    );
    cleanups.push(() => upstream.close());
    const signer = await startSigner({ limits: { bodyIdleTimeoutMs: 300 } });
    const started = Date.now();
    const answer = await rawExchange(signer.port, `POST ${upstream.url}/upload HTTP/1.1\r\nHost: 127.0.0.1:${upstream.port}\r\nContent-Length: 1000\r\n\r\n0123456789`);
    expect(answer).toBe('');
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(Date.now() - started).toBeLessThan(2_000);
    await sleep(100);
    expect(aborted).toBe(true);
  });

  it('a kept-alive connection with no new request is closed after idle_timeout', async () => {
    const service = await echo();
    const signer = await startSigner({ limits: { idleTimeoutMs: 300 } });
    const socket = net.connect(signer.port, '127.0.0.1');
    socket.resume();
    socket.write(`GET ${service.url}/once HTTP/1.1\r\nHost: 127.0.0.1:${service.port}\r\n\r\n`);
    await once(socket, 'data');
    const started = Date.now();
    await once(socket, 'close');
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(Date.now() - started).toBeLessThan(2_000);
  });
});

import { once } from 'node:events';
import { readdirSync } from 'node:fs';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { InvalidSignatureError, parseListenAddress, writeRawAnswer, type Logger, type ServerLimits } from '@jwtproxy/core';
import { Pool } from 'undici';
import { ProxyEngine, type Outbound, type ProxyHooks, type RequestHead } from '../src/index.js';

/** What a test must undo, newest first. */
export type Cleanups = Array<() => Promise<unknown>>;

/** Runs and empties the cleanups, newest first. */
export async function runCleanups(cleanups: Cleanups): Promise<void> {
  while (cleanups.length > 0) await cleanups.pop()!().catch(() => undefined);
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Open file descriptors of this process (Linux): sockets included. */
export const openFds = (): number => readdirSync('/proc/self/fd').length;

/** Waits until `check()` holds, polling every 20 ms; false when it still does not after `timeoutMs`. */
export async function eventually(check: () => boolean, timeoutMs: number): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) return false;
    await sleep(20);
  }
  return true;
}

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export interface LogLine {
  level: LogLevel;
  message: string;
  fields: Record<string, unknown>;
}

/** A logger that keeps its lines, to assert what the engine logged and at which level. */
export function recordingLogger(): Logger & { lines: LogLine[]; at(level: LogLevel): LogLine[] } {
  const lines: LogLine[] = [];
  const record = (level: LogLevel) => (message: string, fields?: Record<string, unknown>) => void lines.push({ level, message, fields: fields ?? {} });
  return {
    lines,
    at: (level) => lines.filter((line) => line.level === level),
    debug: record('debug'),
    info: record('info'),
    warn: record('warn'),
    error: record('error'),
  };
}

/** A server on 127.0.0.1 (OS-chosen port), closed after the test with every connection it has. */
export async function listenLoopback<S extends net.Server>(server: S, cleanups: Cleanups): Promise<S & { port: number; origin: string }> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        (server as unknown as http.Server).closeAllConnections?.();
        server.close(() => resolve());
      }),
  );
  return Object.assign(server, { port, origin: `http://127.0.0.1:${port}` });
}

/** An HTTP upstream with the test's handler. */
export function startUpstream(handler: http.RequestListener, cleanups: Cleanups): Promise<http.Server & { port: number; origin: string }> {
  return listenLoopback(http.createServer(handler), cleanups);
}

/**
 * An upstream written byte by byte: each connection gets `answer(head)` once its request head
 * (no body) has arrived, to send headers and status lines an HTTP server library would not.
 */
export function startRawUpstream(answer: (head: string, socket: net.Socket) => void, cleanups: Cleanups): Promise<net.Server & { port: number; origin: string }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let received = '';
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('latin1');
      const end = received.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = received.slice(0, end);
      received = received.slice(end + 4);
      answer(head, socket);
    });
  });
  cleanups.push(async () => {
    for (const socket of sockets) socket.destroy();
  });
  return listenLoopback(server, cleanups);
}

/** The request path that the default route refuses with a typed client error (403). */
export const REFUSED_PATH = '/refused';

export interface EngineOptions {
  /** Origin of the upstream (`http://127.0.0.1:port`). */
  upstream: string;
  /**
   * The test's route; `pass` is the minimal hooks' own answer (the upstream pool, the client's path
   * and headers). Default: `pass`, or a 403 (InvalidSignatureError) for paths under /refused.
   */
  route?: (req: http.IncomingMessage, head: RequestHead, pass: () => Outbound) => Outbound | Promise<Outbound>;
  keepConnectionAfterRefusal?: boolean;
  droppedRequestHeaders?: ReadonlySet<string>;
  limits?: Partial<ServerLimits>;
  repeatedLogIntervalMs?: number;
  upstreamName?: string;
  connect?: ProxyHooks['connect'];
}

export interface EngineUnderTest {
  engine: ProxyEngine;
  server: http.Server;
  /** `http://127.0.0.1:port`. */
  address: string;
  port: number;
  logger: ReturnType<typeof recordingLogger>;
  pool: Pool;
  /** Each routed request's head, as `route` saw it. */
  routed: Array<{ url: string; head: RequestHead }>;
  /** engine.stop(deadline), once. */
  stop(deadline?: number): Promise<void>;
}

/**
 * An engine with minimal hooks: no signing, no verifying, a route to one real loopback upstream
 * through an undici Pool, so that the tests are about the engine alone.
 */
export async function startEngine(options: EngineOptions, cleanups: Cleanups): Promise<EngineUnderTest> {
  const logger = recordingLogger();
  const pool = new Pool(options.upstream, { connections: 64 });
  const routed: EngineUnderTest['routed'] = [];
  const hooks: ProxyHooks = {
    keepConnectionAfterRefusal: options.keepConnectionAfterRefusal ?? true,
    ...(options.droppedRequestHeaders ? { droppedRequestHeaders: options.droppedRequestHeaders } : {}),
    route(req, head) {
      routed.push({ url: req.url ?? '', head });
      const pass = (): Outbound => ({ dispatcher: pool, path: req.url ?? '/', headers: head.headers, upstreamName: options.upstreamName });
      if (options.route) return options.route(req, head, pass);
      if ((req.url ?? '').startsWith(REFUSED_PATH)) throw new InvalidSignatureError();
      return pass();
    },
    connect:
      options.connect ??
      ((_req, socket) => {
        writeRawAnswer(socket, { status: 405, body: 'no CONNECT here' });
        return 405;
      }),
    async closeUpstreams(deadline) {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<true>((resolve) => (timer = setTimeout(() => resolve(true), Math.max(0, deadline - Date.now()))));
      if (await Promise.race([pool.close().then(() => false as const), late])) await pool.destroy();
      clearTimeout(timer);
    },
  };
  const engine = new ProxyEngine({ hooks, limits: options.limits, logger, repeatedLogIntervalMs: options.repeatedLogIntervalMs });
  const server = engine.createServer();
  const address = await engine.listen(server, parseListenAddress('127.0.0.1:0'));
  let stopped: Promise<void> | undefined;
  const stop = (deadline = Date.now() + 1_000): Promise<void> => (stopped ??= engine.stop(deadline));
  cleanups.push(() => stop(Date.now() + 500));
  return { engine, server, address, port: Number(new URL(address).port), logger, pool, routed, stop };
}

/** A raw TCP client on 127.0.0.1 that keeps what it receives, for bytes an HTTP client would not send. */
export class RawClient {
  readonly socket: net.Socket;
  #received = Buffer.alloc(0);
  readonly closed: Promise<void>;
  closedAt: number | undefined;
  #waiters = new Set<() => void>();

  constructor(port: number) {
    this.socket = net.connect({ host: '127.0.0.1', port });
    this.socket.on('error', () => undefined);
    this.socket.on('data', (chunk: Buffer) => {
      this.#received = Buffer.concat([this.#received, chunk]);
      for (const waiter of this.#waiters) waiter();
    });
    this.closed = new Promise((resolve) =>
      this.socket.once('close', () => {
        this.closedAt = Date.now();
        for (const waiter of this.#waiters) waiter();
        resolve();
      }),
    );
  }

  static async connect(port: number): Promise<RawClient> {
    const client = new RawClient(port);
    await once(client.socket, 'connect');
    return client;
  }

  get text(): string {
    return this.#received.toString('latin1');
  }

  get isClosed(): boolean {
    return this.closedAt !== undefined;
  }

  write(bytes: string | Buffer): void {
    this.socket.write(bytes);
  }

  /** Resolves when what was received matches (true), or at `timeoutMs` or the close without it (false). */
  waitFor(pattern: RegExp | string, timeoutMs = 3_000): Promise<boolean> {
    const matches = (): boolean => (typeof pattern === 'string' ? this.text.includes(pattern) : pattern.test(this.text));
    if (matches()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const settle = (result: boolean): void => {
        clearTimeout(timer);
        this.#waiters.delete(check);
        resolve(result);
      };
      const check = (): void => {
        if (matches()) settle(true);
        else if (this.isClosed) settle(false);
      };
      const timer = setTimeout(() => settle(false), timeoutMs);
      this.#waiters.add(check);
    });
  }

  /** Resolves true when the server closed the connection within `timeoutMs`. */
  async waitClosed(timeoutMs = 3_000): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const result = await Promise.race([this.closed.then(() => true), new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)))]);
    clearTimeout(timer);
    return result;
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** Writes `bytes` on a new connection and returns what came back once the proxy closed it (or after `waitMs`). */
export async function rawExchange(port: number, bytes: string | Buffer, waitMs = 3_000): Promise<{ text: string; closed: boolean }> {
  const client = await RawClient.connect(port);
  client.write(bytes);
  const closed = await client.waitClosed(waitMs);
  client.destroy();
  return { text: client.text, closed };
}

/** Status codes of every response in a raw answer, in order. */
export const statuses = (answer: string): number[] => [...answer.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));

export interface Answer {
  status: number;
  statusMessage: string;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: string;
}

/** One request through Node's HTTP client (no agent unless given). */
export function send(
  port: number,
  options: { path?: string; method?: string; headers?: http.OutgoingHttpHeaders | string[]; body?: string | Buffer; agent?: http.Agent | false } = {},
): Promise<Answer> {
  const request = http.request({
    host: '127.0.0.1',
    port,
    method: options.method ?? 'GET',
    path: options.path ?? '/',
    headers: options.headers ?? {},
    agent: options.agent ?? false,
  });
  const answer = new Promise<Answer>((resolve, reject) => {
    request.once('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.once('end', () =>
        resolve({ status: res.statusCode!, statusMessage: res.statusMessage ?? '', headers: res.headers, rawHeaders: res.rawHeaders, body: Buffer.concat(chunks).toString('utf8') }),
      );
      res.once('error', reject);
    });
    request.once('error', reject);
  });
  request.end(options.body);
  return answer;
}

/** An upstream that answers 200 with a JSON echo of the request it got (method, url, raw headers, body). */
export interface Echoed {
  method: string;
  url: string;
  rawHeaders: string[];
  body: string;
}

export async function startEchoUpstream(cleanups: Cleanups): Promise<http.Server & { port: number; origin: string; seen: Echoed[] }> {
  const seen: Echoed[] = [];
  const server = await startUpstream((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const echoed: Echoed = { method: req.method ?? '', url: req.url ?? '', rawHeaders: req.rawHeaders, body: Buffer.concat(chunks).toString('utf8') };
      seen.push(echoed);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(echoed));
    });
  }, cleanups);
  return Object.assign(server, { seen });
}

/** Header names of `[name, value, …]` in lower case. */
export const headerNames = (raw: readonly string[]): string[] => raw.filter((_, i) => i % 2 === 0).map((name) => name.toLowerCase());

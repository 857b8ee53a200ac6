/**
 * A redis-server of the test's own, on a free loopback port, that the test may kill, pause and
 * restart on the same port (the shared Redis at 6379 must never be disturbed).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freeLoopbackPort } from './ports.js';

/** Resolves once redis-server answers PING on the port (PONG, or NOAUTH when it wants a password; plain TCP only). */
async function waitForPing(port: number, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const answered = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.setTimeout(500);
      socket.once('connect', () => socket.write('PING\r\n'));
      socket.once('data', (data) => {
        socket.destroy();
        resolve(/^(\+PONG|-NOAUTH)/.test(data.toString()));
      });
      socket.once('error', () => resolve(false));
      socket.once('timeout', () => {
        socket.destroy();
        resolve(false);
      });
    });
    if (answered) return;
    if (Date.now() > deadline) throw new Error(`redis-server on port ${port} did not answer within ${timeoutMs} ms`);
    await sleep(25);
  }
}

export interface OwnRedis {
  port: number;
  url: string;
  dir: string;
  process: ChildProcess | undefined;
  /** (Re)starts redis-server on the same port. */
  start(): Promise<void>;
  /** SIGKILL: the connection breaks at once, as when a Redis host dies. */
  kill(): Promise<void>;
  /** SIGSTOP / SIGCONT: Redis hangs with its connections open. */
  pause(): void;
  resume(): void;
  /** Kills it and removes its directory. */
  close(): Promise<void>;
}

export interface OwnRedisOptions {
  /** Extra redis-server arguments (`--name value`). */
  args?: string[];
  /** Listen with TLS on the port instead of plain TCP; readiness is then awaited by the caller. */
  tls?: { certFile: string; keyFile: string; caFile: string };
  /** Start as a Sentinel with this configuration text (written to a file Sentinel may rewrite). */
  sentinelConfig?: string;
}

export async function startOwnRedis(options: OwnRedisOptions = {}): Promise<OwnRedis> {
  const port = await freeLoopbackPort();
  const dir = mkdtempSync(path.join(tmpdir(), 'jwtproxy-redis-'));
  const own: OwnRedis = {
    port,
    url: `redis://127.0.0.1:${port}`,
    dir,
    process: undefined,
    async start() {
      let args: string[];
      if (options.sentinelConfig !== undefined) {
        const file = path.join(dir, 'sentinel.conf');
        writeFileSync(file, `port ${port}\nbind 127.0.0.1\ndir ${dir}\n${options.sentinelConfig}\n`);
        args = [file, '--sentinel'];
      } else {
        const listen = options.tls
          ? ['--port', '0', '--tls-port', String(port), '--tls-cert-file', options.tls.certFile, '--tls-key-file', options.tls.keyFile, '--tls-ca-cert-file', options.tls.caFile, '--tls-auth-clients', 'no']
          : ['--port', String(port)];
        args = [...listen, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, ...(options.args ?? [])];
      }
      const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
      child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
      own.process = child;
      if (options.tls) {
        // Wait until the TLS port accepts connections.
        const deadline = Date.now() + 5000;
        while (!output.includes('Ready to accept connections')) {
          if (child.exitCode !== null || Date.now() > deadline) throw new Error(`redis-server (TLS) did not start: ${output}`);
          await sleep(25);
        }
        return;
      }
      try {
        await waitForPing(port);
      } catch (error) {
        throw new Error(`${(error as Error).message}\n${output}`);
      }
    },
    async kill() {
      const child = own.process;
      own.process = undefined;
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      // SIGKILL ends a stopped process too, without letting it run (and answer) first.
      child.kill('SIGKILL');
      await once(child, 'exit');
    },
    pause() {
      own.process?.kill('SIGSTOP');
    },
    resume() {
      own.process?.kill('SIGCONT');
    },
    async close() {
      await own.kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await own.start();
  return own;
}

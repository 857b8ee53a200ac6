import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { lstat, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { listenOnLoopback, listenOnUnixSocket, makeCa, makeServerCertificate, readBody } from '@jwtproxy/testkit';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError, ListenError, formatListenAddress, listenOn, parseListenAddress, removeSocketFile } from '../src/index.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function temporaryDirectory(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'core-listen-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function serverAnswering(body: string, server: http.Server = http.createServer()): http.Server {
  server.on('request', (_req: http.IncomingMessage, res: http.ServerResponse) => res.end(body));
  cleanups.push(() => new Promise((resolve) => (server.closeAllConnections(), server.close(resolve))));
  return server;
}

function get(options: http.RequestOptions & { ca?: string }, secure = false): Promise<string> {
  return new Promise((resolve, reject) => {
    const request = (secure ? https : http).get({ path: '/', agent: false, ...options }, (res) => void readBody(res).then(resolve, reject));
    request.on('error', reject);
  });
}

/** A socket file left behind by a process that was killed while listening on it. */
async function staleSocketAt(socketPath: string): Promise<void> {
  const owner = spawn(process.execPath, ['-e', `require('node:net').createServer().listen(${JSON.stringify(socketPath)}, () => console.log('up'))`]);
  await once(owner.stdout, 'data');
  owner.kill('SIGKILL');
  await once(owner, 'exit');
  expect((await lstat(socketPath)).isSocket()).toBe(true);
}

describe('parseListenAddress', () => {
  it('reads host:port, :port, [v6]:port and unix:/path as the Go configuration writes them', () => {
    expect(parseListenAddress('127.0.0.1:8082')).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 8082 });
    expect(parseListenAddress('localhost:0')).toEqual({ kind: 'tcp', host: 'localhost', port: 0 });
    expect(parseListenAddress(':8082')).toEqual({ kind: 'tcp', host: undefined, port: 8082 });
    expect(parseListenAddress('[::1]:8082')).toEqual({ kind: 'tcp', host: '::1', port: 8082 });
    expect(parseListenAddress('unix:/run/jwtproxy.sock')).toEqual({ kind: 'unix', path: '/run/jwtproxy.sock' });
    for (const text of ['127.0.0.1:8082', ':8082', '[::1]:8082', 'unix:/run/jwtproxy.sock']) expect(formatListenAddress(parseListenAddress(text))).toBe(text);
  });

  it('refuses a bad address with a ConfigError naming the value, and the key when given', () => {
    const problems: Array<[string, string]> = [
      ['localhost', 'listen address "localhost" is not host:port, :port or unix:/path'],
      ['8082', 'listen address "8082" is not host:port, :port or unix:/path'],
      ['host:', 'listen address "host:" has no valid port (0 to 65535)'],
      ['host:99999', 'listen address "host:99999" has no valid port (0 to 65535)'],
      ['host:80a', 'listen address "host:80a" has no valid port (0 to 65535)'],
      ['::1:8080', 'listen address "::1:8080" has an IPv6 address without brackets (write it as [::1]:8080)'],
      ['unix:', 'listen address "unix:" names no socket path (write unix:/path/to.sock)'],
    ];
    for (const [text, message] of problems) expect(() => parseListenAddress(text), text).toThrow(message);
    let thrown: unknown;
    try {
      parseListenAddress('nowhere', 'signer_proxy.listen_addr');
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(ConfigError);
    expect((thrown as ConfigError).path).toBe('signer_proxy.listen_addr');
    expect((thrown as ConfigError).message).toBe('signer_proxy.listen_addr: "nowhere" is not host:port, :port or unix:/path');
  });
});

describe('listenOn over TCP', () => {
  it('binds host:port 0 and answers with the bound port; https for a TLS server', async () => {
    const plain = serverAnswering('plain');
    const address = await listenOn(plain, parseListenAddress('127.0.0.1:0'));
    expect(address).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const port = Number(new URL(address).port);
    expect(port).toBe((plain.address() as net.AddressInfo).port);
    expect(await get({ host: '127.0.0.1', port })).toBe('plain');

    const ca = makeCa('core listen test CA');
    const secure = serverAnswering('secure', https.createServer(makeServerCertificate(['127.0.0.1'], ca)));
    const secureAddress = await listenOn(secure, parseListenAddress('127.0.0.1:0'));
    expect(secureAddress).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(await get({ host: '127.0.0.1', port: Number(new URL(secureAddress).port), ca: ca.cert }, true)).toBe('secure');
  });

  it(':port listens on every interface, reachable on 127.0.0.1', async () => {
    const server = serverAnswering('everywhere');
    const address = await listenOn(server, parseListenAddress(':0'));
    const port = Number(address.slice(address.lastIndexOf(':') + 1));
    expect(port).toBeGreaterThan(0);
    expect(await get({ host: '127.0.0.1', port })).toBe('everywhere');
  });

  it('names the address in use, keeping the system error as the cause', async () => {
    const taken = await listenOnLoopback(http.createServer());
    cleanups.push(() => taken.close());
    const second = http.createServer();
    let thrown: unknown;
    try {
      await listenOn(second, parseListenAddress(`127.0.0.1:${taken.port}`));
    } catch (error) {
      thrown = error;
    }
    expect((thrown as Error).message).toBe(`cannot listen on 127.0.0.1:${taken.port}: address already in use`);
    expect(((thrown as Error).cause as NodeJS.ErrnoException).code).toBe('EADDRINUSE');
    // The facts are fields: nothing needs to read the message.
    expect(thrown).toBeInstanceOf(ListenError);
    expect(thrown).toMatchObject({ code: 'ERR_LISTEN', address: `127.0.0.1:${taken.port}`, systemCode: 'EADDRINUSE', problem: 'address already in use' });
    expect(second.listening).toBe(false);
  });
});

describe('listenOn over a unix socket', () => {
  it('replaces a stale socket file, applies socket_permission, and removeSocketFile removes it after close', async () => {
    const dir = await temporaryDirectory();
    const socketPath = path.join(dir, 'server.sock');
    await staleSocketAt(socketPath);
    const server = serverAnswering('over unix');
    const address = parseListenAddress(`unix:${socketPath}`);
    expect(await listenOn(server, address, { socketPermission: 0o600 })).toBe(`unix:${socketPath}`);
    expect((await stat(socketPath)).mode & 0o777).toBe(0o600);
    expect(await get({ socketPath })).toBe('over unix');

    await new Promise((resolve) => server.close(resolve));
    await removeSocketFile(address);
    await expect(lstat(socketPath)).rejects.toThrow(/ENOENT/);
    await removeSocketFile(address); // already gone: nothing to do
  });

  it('applies each permission it is given', async () => {
    const dir = await temporaryDirectory();
    for (const mode of [0o700, 0o660, 0o755]) {
      const socketPath = path.join(dir, `mode-${mode.toString(8)}.sock`);
      await listenOn(serverAnswering('x'), parseListenAddress(`unix:${socketPath}`), { socketPermission: mode });
      expect((await stat(socketPath)).mode & 0o777, mode.toString(8)).toBe(mode);
    }
  });

  it('never replaces a file that is not a socket', async () => {
    const dir = await temporaryDirectory();
    const regularFile = path.join(dir, 'not-a-socket');
    await writeFile(regularFile, 'keep me');
    const server = http.createServer();
    await expect(listenOn(server, parseListenAddress(`unix:${regularFile}`))).rejects.toThrow(
      `cannot listen on unix:${regularFile}: the path exists and is not a socket`,
    );
    expect(await readFile(regularFile, 'utf8')).toBe('keep me');
    expect(server.listening).toBe(false);
  });

  it('never takes over a socket another server listens on', async () => {
    const dir = await temporaryDirectory();
    const live = await listenOnUnixSocket(serverAnswering('first'), path.join(dir, 'live.sock'));
    await expect(listenOn(http.createServer(), parseListenAddress(live.url))).rejects.toThrow(
      `cannot listen on ${live.url}: another process is listening on it`,
    );
    expect(await get({ socketPath: path.join(dir, 'live.sock') })).toBe('first');
  });

  it('names a socket path it cannot bind', async () => {
    const dir = await temporaryDirectory();
    const socketPath = path.join(dir, 'missing-directory', 'server.sock');
    await expect(listenOn(http.createServer(), parseListenAddress(`unix:${socketPath}`))).rejects.toThrow(`cannot listen on unix:${socketPath}: `);
  });

  it('removeSocketFile leaves alone a path that another server took over, or that is no longer a socket', async () => {
    const dir = await temporaryDirectory();
    const socketPath = path.join(dir, 'shared.sock');
    const address = parseListenAddress(`unix:${socketPath}`);
    const ours = http.createServer();
    await listenOn(ours, address);
    await new Promise((resolve) => ours.close(resolve));
    const successor = await listenOnUnixSocket(serverAnswering('successor'), socketPath);
    await removeSocketFile(address);
    expect(await get({ socketPath })).toBe('successor');
    await successor.close();

    await writeFile(socketPath, 'now a regular file');
    await removeSocketFile(address);
    expect(await readFile(socketPath, 'utf8')).toBe('now a regular file');
  });
});

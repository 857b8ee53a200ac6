import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { listenOnLoopback, listenOnUnixSocket, makeCa, makeServerCertificate, startEchoService, type SeenRequest } from '@jwtproxy/testkit';
import { silentLogger } from '@jwtproxy/core';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startVerifierProxy } from '../src/index.js';
import { bearer, makeVerifier, runCleanups, send, startProxy, temporaryDirectory } from './helpers.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(() => runCleanups(cleanups));

let ca: ReturnType<typeof makeCa>;
let loopbackCertificate: ReturnType<typeof makeServerCertificate>;
beforeAll(() => {
  ca = makeCa('reverse-proxy test CA');
  loopbackCertificate = makeServerCertificate(['127.0.0.1', 'localhost'], ca);
});

async function echoUpstream(options: Parameters<typeof startEchoService>[0] = {}) {
  const echo = await startEchoService(options);
  cleanups.push(() => echo.close());
  return echo;
}

describe('unix sockets', () => {
  it('listens on a unix socket with the configured mode, replacing a stale socket file, and removes it at stop', async () => {
    const dir = temporaryDirectory(cleanups);
    const socketPath = path.join(dir, 'verifier.sock');
    // A socket file left behind by a process that was killed.
    const owner = spawn(process.execPath, ['-e', `require('node:net').createServer().listen(${JSON.stringify(socketPath)}, () => console.log('up'))`]);
    await once(owner.stdout, 'data');
    owner.kill('SIGKILL');
    await once(owner, 'exit');
    expect(statSync(socketPath).isSocket()).toBe(true);

    const echo = await echoUpstream();
    const proxy = await startProxy({ upstream: echo.url, listenAddr: `unix:${socketPath}`, socketPermission: 0o660 }, cleanups);
    expect(proxy.address).toBe(`unix:${socketPath}`);
    expect(statSync(socketPath).mode & 0o777).toBe(0o660);
    const answer = await send(proxy.address, { path: '/over-unix', headers: { host: 'verifier.test', authorization: await bearer() } });
    expect(answer.status).toBe(200);
    expect((JSON.parse(answer.body) as SeenRequest).url).toBe('/over-unix');

    await proxy.stop();
    expect(existsSync(socketPath)).toBe(false);
  });

  it('refuses to start on a unix path that is not a socket, or that another process listens on', async () => {
    const dir = temporaryDirectory(cleanups);
    const regularFile = path.join(dir, 'not-a-socket');
    writeFileSync(regularFile, 'keep me');
    const options = { upstream: 'http://127.0.0.1:1', verifier: makeVerifier(), shutdownTimeout: 1000, logger: silentLogger };
    await expect(startVerifierProxy({ ...options, listenAddr: `unix:${regularFile}` })).rejects.toThrow(`cannot listen on unix:${regularFile}: the path exists and is not a socket`);
    const live = await listenOnUnixSocket(http.createServer(), path.join(dir, 'live.sock'));
    cleanups.push(() => live.close());
    await expect(startVerifierProxy({ ...options, listenAddr: live.url })).rejects.toThrow('another process is listening on it');
  });

  it('forwards to a unix socket upstream', async () => {
    const dir = temporaryDirectory(cleanups);
    const echo = await echoUpstream({ socketPath: path.join(dir, 'upstream.sock') });
    const proxy = await startProxy({ upstream: echo.url }, cleanups);
    const answer = await send(proxy.address, { path: '/via/unix?x=1', headers: { host: 'service.internal', authorization: await bearer() } });
    expect(answer.status).toBe(200);
    const seen = JSON.parse(answer.body) as SeenRequest;
    expect(seen.url).toBe('/via/unix?x=1');
    expect(seen.headers.host).toBe('service.internal');
  });
});

describe('TLS', () => {
  it('terminates TLS with the configured key and certificate', async () => {
    const dir = temporaryDirectory(cleanups);
    writeFileSync(path.join(dir, 'tls.key'), loopbackCertificate.key);
    writeFileSync(path.join(dir, 'tls.crt'), loopbackCertificate.cert);
    const echo = await echoUpstream();
    const proxy = await startProxy({ upstream: echo.url, tls: { keyFile: path.join(dir, 'tls.key'), certFile: path.join(dir, 'tls.crt') } }, cleanups);
    expect(proxy.address).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const answer = await send(proxy.address, { path: '/tls', headers: { authorization: await bearer() }, ca: ca.cert });
    expect(answer.status).toBe(200);
    const refused = await send(proxy.address, { path: '/tls', ca: ca.cert });
    expect(refused.status).toBe(403);
  });

  it('trusts an https upstream through upstreamCaFile and checks it against the upstream host, not the client Host', async () => {
    const dir = temporaryDirectory(cleanups);
    writeFileSync(path.join(dir, 'ca.pem'), ca.cert);
    const echo = await echoUpstream({ tls: loopbackCertificate });
    const proxy = await startProxy({ upstream: `${echo.url}/api`, upstreamCaFile: path.join(dir, 'ca.pem') }, cleanups);
    for (const host of ['127.0.0.1', 'somewhere-else.test:8443']) {
      const answer = await send(proxy.address, { path: '/x', headers: { host, authorization: await bearer() } });
      expect(answer.status).toBe(200);
      const seen = JSON.parse(answer.body) as SeenRequest;
      expect(seen.url).toBe('/api/x');
      expect(seen.headers.host).toBe(host);
    }

    const byName = await echoUpstream({ tls: makeServerCertificate(['localhost'], ca) });
    const byNameProxy = await startProxy({ upstream: `https://localhost:${byName.port}`, upstreamCaFile: path.join(dir, 'ca.pem') }, cleanups);
    expect((await send(byNameProxy.address, { headers: { host: 'client.test', authorization: await bearer() } })).status).toBe(200);
  });

  it('answers 502 with the reason when the upstream certificate does not verify', async () => {
    const echo = await echoUpstream({ tls: makeServerCertificate(['127.0.0.1']) });
    const proxy = await startProxy({ upstream: echo.url }, cleanups);
    const answer = await send(proxy.address, { headers: { authorization: await bearer() } });
    expect(answer.status).toBe(502);
    // Node 24 appends its own hint to the reason ("; if the root CA is installed locally, try running Node.js with --use-system-ca").
    expect(answer.body).toMatch(/^jwtproxy: upstream error: self-signed certificate(;|$)/);
    expect(echo.seen).toHaveLength(0);

    const dir = temporaryDirectory(cleanups);
    writeFileSync(path.join(dir, 'ca.pem'), ca.cert);
    const wrongName = await echoUpstream({ tls: makeServerCertificate(['10.1.2.3'], ca) });
    const wrongNameProxy = await startProxy({ upstream: wrongName.url, upstreamCaFile: path.join(dir, 'ca.pem') }, cleanups);
    const mismatch = await send(wrongNameProxy.address, { headers: { authorization: await bearer() } });
    expect(mismatch.status).toBe(502);
    expect(mismatch.body).toMatch(/^jwtproxy: upstream error: .*IP: 127\.0\.0\.1 is not in the cert's list/);
  });
});

describe('start-up errors', () => {
  const base = { upstream: 'http://127.0.0.1:1', verifier: makeVerifier(), shutdownTimeout: 1000, logger: silentLogger };

  it('names the address that is in use', async () => {
    const taken = await listenOnLoopback(http.createServer());
    cleanups.push(() => taken.close());
    await expect(startVerifierProxy({ ...base, listenAddr: `127.0.0.1:${taken.port}` })).rejects.toThrow(
      `cannot listen on 127.0.0.1:${taken.port}: address already in use`,
    );
  });

  it('names an unreadable TLS file, an invalid key pair, and refuses TLS on a unix socket', async () => {
    const dir = temporaryDirectory(cleanups);
    const keyFile = path.join(dir, 'tls.key');
    const certFile = path.join(dir, 'tls.crt');
    writeFileSync(keyFile, loopbackCertificate.key);
    writeFileSync(certFile, loopbackCertificate.cert);
    await expect(startVerifierProxy({ ...base, listenAddr: '127.0.0.1:0', tls: { keyFile: path.join(dir, 'missing.key'), certFile } })).rejects.toThrow(
      `cannot read TLS key file ${path.join(dir, 'missing.key')}: ENOENT`,
    );
    writeFileSync(certFile, makeServerCertificate(['127.0.0.1']).cert);
    await expect(startVerifierProxy({ ...base, listenAddr: '127.0.0.1:0', tls: { keyFile, certFile } })).rejects.toThrow(
      `cannot use TLS key ${keyFile} with certificate ${certFile}`,
    );
    await expect(startVerifierProxy({ ...base, listenAddr: `unix:${path.join(dir, 'v.sock')}`, tls: { keyFile, certFile } })).rejects.toThrow(
      `TLS (key_file/crt_file) cannot be used on the unix socket listener unix:${path.join(dir, 'v.sock')}`,
    );
  });

  it('names a bad listen address, upstream or CA file', async () => {
    await expect(startVerifierProxy({ ...base, listenAddr: 'localhost' })).rejects.toThrow('listen address "localhost" is not host:port, :port or unix:/path');
    await expect(startVerifierProxy({ ...base, listenAddr: '127.0.0.1:0', upstream: 'ftp://files' })).rejects.toThrow(
      'upstream "ftp://files" is not an http://, https:// or unix:/path address',
    );
    const dir = temporaryDirectory(cleanups);
    await expect(startVerifierProxy({ ...base, listenAddr: '127.0.0.1:0', upstream: 'https://127.0.0.1:1', upstreamCaFile: path.join(dir, 'nope.pem') })).rejects.toThrow(
      `cannot read upstream CA file ${path.join(dir, 'nope.pem')}`,
    );
    writeFileSync(path.join(dir, 'junk.pem'), 'not a certificate');
    await expect(startVerifierProxy({ ...base, listenAddr: '127.0.0.1:0', upstream: 'https://127.0.0.1:1', upstreamCaFile: path.join(dir, 'junk.pem') })).rejects.toThrow(
      `upstream CA file ${path.join(dir, 'junk.pem')} holds no PEM certificate`,
    );
  });
});

/** The CLI running proxies as a real process: assembly, unix sockets, the key registry block, shutdown. */
import { spawn } from 'node:child_process';
import { statSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RequestSigner } from '@jwtproxy/core';
import { PresharedPrivateKeySource } from '@jwtproxy/key-sources';
import { interop, listenOnLoopback, readBody, startEchoService } from '@jwtproxy/testkit';
import { cliMain, runCli, startCli, tempDir, type RunningCli } from './helpers.js';

let files: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  files = await tempDir();
});
afterAll(() => files.cleanup());

const presharedKeyServer = [
  '      key_server:',
  '        type: preshared',
  `        options: {issuer: ${interop.issuer}, key_id: ${interop.keyId}, public_key_path: ${interop.publicKeyPath}}`,
];

/** A port the OS just handed out and that is free again (the verifier's audience must name its port). */
async function freePort(): Promise<number> {
  const probe = await listenOnLoopback(http.createServer());
  await probe.close();
  return probe.port;
}

function get(options: http.RequestOptions): Promise<{ status: number | undefined; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(options, (res) => {
        readBody(res).then((body) => resolve({ status: res.statusCode, body }), reject);
      })
      .on('error', reject);
  });
}

function tokenFor(audience: string): Promise<string> {
  const signer = new RequestSigner({
    issuer: interop.issuer,
    expirationTime: 60_000,
    maxSkew: 10_000,
    nonceLength: 32,
    keySource: PresharedPrivateKeySource.fromFile(interop.keyId, interop.privateKeyPath),
  });
  return signer.sign(audience);
}

describe('signer and verifier from one configuration', () => {
  it('a request through the signer reaches the upstream behind the verifier, signed', async () => {
    const upstream = await startEchoService();
    const verifierPort = await freePort();
    let cli: RunningCli | undefined;
    try {
      const config = await files.write(
        'chain.yaml',
        [
          'jwtproxy:',
          '  signer_proxy:',
          '    listen_addr: 127.0.0.1:0',
          '    signer:',
          `      issuer: ${interop.issuer}`,
          '      private_key:',
          '        type: preshared',
          `        options: {key_id: ${interop.keyId}, private_key_path: ${interop.privateKeyPath}}`,
          '  verifier_proxies:',
          `  - listen_addr: 127.0.0.1:${verifierPort}`,
          '    verifier:',
          `      upstream: ${upstream.url}/base`,
          `      audience: http://127.0.0.1:${verifierPort}`,
          ...presharedKeyServer,
          '      claims_verifiers:',
          '      - type: static',
          `        options: {iss: ${interop.issuer}}`,
          '',
        ].join('\n'),
      );
      cli = await startCli(['-config', config, '-log-level', 'debug']);
      expect(cli.servers['verifier_proxies[0]']).toBe(`http://127.0.0.1:${verifierPort}`);
      const signer = new URL(cli.servers.signer_proxy!);

      const answer = await get({ host: signer.hostname, port: signer.port, path: `http://127.0.0.1:${verifierPort}/items?x=1` });
      expect(answer.status).toBe(200);
      const seen = JSON.parse(answer.body) as { url: string; headers: Record<string, string> };
      expect(seen.url).toBe('/base/items?x=1');
      expect(seen.headers.authorization).toMatch(/^Bearer [\w-]+\.[\w-]+\.[\w-]+$/);

      // Straight to the verifier, without the signer: refused.
      const unsigned = await get({ host: '127.0.0.1', port: verifierPort, path: '/items' });
      expect(unsigned).toEqual({ status: 403, body: 'jwtproxy: unable to verify request: Could not parse JWT' });
    } finally {
      const stopped = await cli?.stop();
      await upstream.close();
      expect(stopped?.code).toBe(0);
    }
  });
});

describe('listeners', () => {
  it('a verifier on a unix socket gets the configured socket_permission', async () => {
    const upstream = await startEchoService();
    const socket = path.join(files.dir, 'verifier.sock');
    let cli: RunningCli | undefined;
    try {
      const config = await files.write(
        'unix.yaml',
        [
          'jwtproxy:',
          '  verifier_proxies:',
          `  - listen_addr: unix:${socket}`,
          '    socket_permission: 0700',
          '    verifier:',
          `      upstream: ${upstream.url}`,
          '      audience: http://billing.internal',
          ...presharedKeyServer,
          '',
        ].join('\n'),
      );
      cli = await startCli(['-config', config]);
      expect(cli.servers['verifier_proxies[0]']).toBe(`unix:${socket}`);
      expect(statSync(socket).mode & 0o777).toBe(0o700);
      const token = await tokenFor('http://billing.internal');
      const answer = await get({ socketPath: socket, path: '/over-unix', headers: { authorization: `Bearer ${token}` } });
      expect(answer.status).toBe(200);
      expect((JSON.parse(answer.body) as { url: string }).url).toBe('/over-unix');
    } finally {
      await cli?.stop();
      await upstream.close();
    }
  });

  it('a key registry block starts the registry; its own mistakes name keyregistry.<key> and the line', async () => {
    const bad = await files.write('registry-bad.yaml', 'jwtproxy:\n  keyregistry:\n    listen_addr: 127.0.0.1:0\n    storage: {type: memory}\n    bogus: 1\n');
    const result = await runCli(['-config', bad]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^jwtproxy: keyregistry\.bogus: unknown option \(known: [\w, ]+\) \(.*registry-bad\.yaml:5\)\n$/);

    const good = await files.write('registry.yaml', `jwtproxy:\n  keyregistry:\n    listen_addr: 127.0.0.1:0\n    storage: {type: file, options: {path: ${path.join(files.dir, 'keys.json')}}}\n`);
    const cli = await startCli(['-config', good]);
    try {
      const registry = cli.servers.keyregistry!;
      expect((await fetch(`${registry}/services/billing/keys`)).status).toBe(200);
    } finally {
      expect((await cli.stop()).code).toBe(0);
    }
  });
});

describe('shutdown', () => {
  /** An upstream that holds each request until told to answer. */
  async function slowUpstream() {
    const held: http.ServerResponse[] = [];
    let arrived: () => void = () => {};
    const firstArrival = new Promise<void>((resolve) => (arrived = resolve));
    const server = await listenOnLoopback(
      http.createServer((_req, res) => {
        held.push(res);
        arrived();
      }),
    );
    return { server, firstArrival, answerAll: () => held.forEach((res) => res.end('done')) };
  }

  async function startVerifierBefore(upstreamUrl: string, shutdownTimeout: string): Promise<RunningCli> {
    const config = await files.write(
      `slow-${shutdownTimeout}.yaml`,
      [
        'jwtproxy:',
        '  verifier_proxies:',
        '  - listen_addr: 127.0.0.1:0',
        `    shutdown_timeout: ${shutdownTimeout}`,
        '    verifier:',
        `      upstream: ${upstreamUrl}`,
        '      audience: http://billing.internal',
        ...presharedKeyServer,
        '',
      ].join('\n'),
    );
    return startCli(['-config', config]);
  }

  it('SIGTERM lets a request in flight finish, then exits 0', async () => {
    const upstream = await slowUpstream();
    const cli = await startVerifierBefore(upstream.server.url, '30s');
    try {
      const verifier = new URL(cli.servers['verifier_proxies[0]']!);
      const token = await tokenFor('http://billing.internal');
      const inFlight = get({ host: verifier.hostname, port: verifier.port, path: '/slow', headers: { authorization: `Bearer ${token}` } });
      await upstream.firstArrival;
      const exit = cli.stop('SIGTERM');
      await cli.waitForLog(/msg="shutting down" signal=SIGTERM/);
      upstream.answerAll();
      expect(await inFlight).toEqual({ status: 200, body: 'done' });
      const result = await exit;
      expect(result.code).toBe(0);
      expect(result.stderr).toMatch(/msg="stopped"\n$/);
    } finally {
      await cli.stop('SIGKILL');
      upstream.answerAll();
      await upstream.server.close();
    }
  });

  it('a second signal exits at once, without waiting for requests in flight', async () => {
    const upstream = await slowUpstream();
    const cli = await startVerifierBefore(upstream.server.url, '1m');
    try {
      const verifier = new URL(cli.servers['verifier_proxies[0]']!);
      const token = await tokenFor('http://billing.internal');
      const inFlight = get({ host: verifier.hostname, port: verifier.port, path: '/slow', headers: { authorization: `Bearer ${token}` } }).catch(
        (error: Error) => error,
      );
      await upstream.firstArrival;
      cli.child.kill('SIGTERM');
      await cli.waitForLog(/msg="shutting down"/);
      const started = Date.now();
      const result = await cli.stop('SIGINT');
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/msg="second signal: exiting at once" signal=SIGINT/);
      expect(result.stderr).not.toMatch(/msg="stopped"/);
      expect(await inFlight).toBeInstanceOf(Error);
    } finally {
      await cli.stop('SIGKILL');
      upstream.answerAll();
      await upstream.server.close();
    }
  });

  it('a signal during the start stops what was built, starts no proxy, and exits 0', async () => {
    const config = await files.write(
      'slow-start.yaml',
      [
        'jwtproxy:',
        '  verifier_proxies:',
        '  - listen_addr: 127.0.0.1:0',
        '    verifier:',
        '      upstream: http://127.0.0.1:9',
        '      audience: http://billing.internal',
        '      key_server:',
        '        type: slow-start',
        '        options: {delay_ms: 1500}',
        '',
      ].join('\n'),
    );
    const plugin = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures/slow-start-plugin.mjs');
    const child = spawn(process.execPath, [cliMain, '-config', config, '--plugin', plugin]);
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    await expect.poll(() => stderr, { timeout: 10_000 }).toMatch(/msg="slow-start plugin: building"/);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(stderr).toMatch(/msg="shutting down" signal=SIGTERM[\s\S]*msg="slow-start plugin: stopped"[\s\S]*msg="stopped"\n$/);
    // Nothing started listening after the signal.
    expect(stderr).not.toMatch(/verifier proxy listening|msg="ready"/);
  });
});

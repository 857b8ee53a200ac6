/**
 * Issue 12 (items 2, 6 and 7) through the `jwtproxy` command, with a key registry (and, for the
 * crash case, a verifier) in one real process, as a user runs them:
 *  - one chunked PUT of 70 KB used to end the whole process (`TypeError … destroySoon`);
 *  - slow and silent clients, and more connections than allowed, are cut; descriptors come back;
 *  - anyone could fill the registry with keys awaiting approval, each change rewriting the file;
 *  - 200 concurrent refreshes of one key got 147 × 503 `busy`.
 */
import { generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { freeLoopbackPort, startEchoService } from '@jwtproxy/testkit';
import { httpRequest, runCli, startCli, tempDir, type RunningCli } from './helpers.js';

const adminToken = 'hardening-admin-token-7d2e1f0a9b8c';

let files: Awaited<ReturnType<typeof tempDir>>;
const running: RunningCli[] = [];
const sockets: Socket[] = [];

beforeEach(async () => {
  files = await tempDir();
});
afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.destroy();
  const stopped = await Promise.all(running.splice(0).map((cli) => cli.stop()));
  await files.cleanup();
  for (const result of stopped) expect(result.code, result.stderr).toBe(0);
});

/** Starts `jwtproxy -config` with a keyregistry block (plus `extra` lines in it, and `more(registry)` YAML after it). */
async function startRegistry(extra: string[] = [], more: (registry: string) => string[] = () => []): Promise<{ cli: RunningCli; registry: string }> {
  const port = await freeLoopbackPort();
  const registry = `http://127.0.0.1:${port}`;
  const config = await files.write(
    'registry.yaml',
    [
      'jwtproxy:',
      '  keyregistry:',
      `    listen_addr: 127.0.0.1:${port}`,
      `    public_url: ${registry}`,
      '    storage: {type: file, options: {path: state/keys.json}}',
      `    admin_token: ${adminToken}`,
      ...extra.map((line) => `    ${line}`),
      ...more(registry),
      '',
    ].join('\n'),
  );
  const cli = await startCli(['-config', config]);
  running.push(cli);
  return { cli, registry };
}

/** A publisher's P-256 key; one key may be published under many kids (the registry ties a kid to a key). */
interface Publisher {
  privateKey: KeyObject;
  body: string;
}

function publisher(): Publisher {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { privateKey, body: JSON.stringify(publicKey.export({ format: 'jwk' })) };
}

function publishingToken(key: Publisher, kid: string, service: string, aud: string): string {
  const now = Math.floor(Date.now() / 1000);
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const input = `${part({ alg: 'ES256', kid, typ: 'JWT' })}.${part({ iss: service, aud, iat: now, nbf: now - 60, exp: now + 300, jti: randomBytes(16).toString('hex') })}`;
  return `${input}.${sign('sha256', Buffer.from(input), { key: key.privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

function publish(registry: string, key: Publisher, service: string, kid: string, expiration = Math.floor(Date.now() / 1000) + 3600): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  return httpRequest(`${registry}/services/${service}/keys/${kid}?expiration=${expiration}&rotation=1800`, {
    method: 'PUT', agent,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${publishingToken(key, kid, service, registry)}` },
    body: key.body,
  });
}

/** Sends raw bytes on a new connection; resolves what came back and how the connection ended. */
function rawExchange(registry: string, talk: (socket: Socket) => void, timeoutMs = 8000): Promise<{ received: string; ending: 'end' | 'reset' | 'timeout'; ms: number }> {
  const { port } = new URL(registry);
  return new Promise((resolve) => {
    const began = performance.now();
    const socket = connect(Number(port), '127.0.0.1', () => talk(socket));
    sockets.push(socket);
    let received = '';
    let settled = false;
    const done = (ending: 'end' | 'reset' | 'timeout'): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ received, ending, ms: performance.now() - began });
    };
    const timer = setTimeout(() => done('timeout'), timeoutMs);
    socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
    socket.on('end', () => done('end'));
    socket.on('error', () => done('reset'));
  });
}

const statuses = (received: string): number[] => [...received.matchAll(/^HTTP\/1\.1 (\d{3})/gm)].map((match) => Number(match[1]));
const openFds = (pid: number): number => readdirSync(`/proc/${pid}/fd`).length;
/** Bytes the process has written with write(2) and friends: files, sockets, its log. */
const bytesWritten = (pid: number): number => Number(/^wchar: (\d+)$/m.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))?.[1]);

describe('jwtproxy keyregistry under hostile clients', () => {
  it('a 70 KB chunked PUT is answered 413 and the connection closed cleanly; the process, its registry and its verifier keep running', async () => {
    const echo = await startEchoService();
    try {
      const verifierPort = await freeLoopbackPort();
      const { cli, registry } = await startRegistry([], (registry) => [
        '  verifier_proxies:',
        `  - listen_addr: 127.0.0.1:${verifierPort}`,
        '    verifier:',
        `      upstream: ${echo.url}`,
        `      audience: http://127.0.0.1:${verifierPort}`,
        `      key_server: {type: keyregistry, options: {registry: ${registry}/}}`,
      ]);
      const body = `${'1b58\r\n' + 'x'.repeat(7000) + '\r\n'}`.repeat(10) + '0\r\n\r\n';
      const answer = await rawExchange(registry, (socket) =>
        socket.write(`PUT /services/a/keys/b HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${body}`),
      );
      expect(statuses(answer.received)).toEqual([413]);
      expect(answer.received).toMatch(/\r\nconnection: close\r\n/i);
      expect(answer.received.endsWith('{"error":"body_too_large","message":"the body is larger than 65536 bytes"}')).toBe(true);
      expect(answer.ending).toBe('end');

      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(cli.child.exitCode).toBeNull();
      expect(cli.stderr()).not.toMatch(/TypeError/);
      expect((await httpRequest(`${registry}/healthz`)).status).toBe(200);
      const unsigned = await httpRequest(`http://127.0.0.1:${verifierPort}/`);
      expect(unsigned).toMatchObject({ status: 403, body: 'jwtproxy: unable to verify request: Could not parse JWT' });
    } finally {
      await echo.close();
    }
  });

  it('cuts a stalled body (408), an unfinished head, and connections past max_connections; descriptors return to where they were', async () => {
    const { cli, registry } = await startRegistry(['read_header_timeout: 1s', 'body_idle_timeout: 1s', 'max_connections: 20']);
    const pid = cli.child.pid!;
    const baseline = openFds(pid);

    const stalled = await rawExchange(registry, (socket) => socket.write('PUT /services/a/keys/b HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{"kty":"EC",'));
    expect(statuses(stalled.received)).toEqual([408]);
    expect(stalled.received).toMatch(/"error":"request_timeout"/);
    expect(stalled.ms).toBeGreaterThanOrEqual(900);
    expect(stalled.ms).toBeLessThan(5000);

    const slowHead = await rawExchange(registry, (socket) => socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\nX-Drip: '));
    expect(slowHead.ending).not.toBe('timeout');
    expect(slowHead.ms).toBeLessThan(3000);

    // 40 silent connections: 20 are taken, 20 closed at once.
    const { port } = new URL(registry);
    const flood = await Promise.all(
      Array.from({ length: 40 }, () =>
        new Promise<boolean>((resolve) => {
          const socket = connect(Number(port), '127.0.0.1');
          sockets.push(socket);
          let closed = false;
          socket.on('close', () => (closed = true));
          socket.on('error', () => undefined);
          socket.on('connect', () => setTimeout(() => resolve(closed), 400));
        }),
      ),
    );
    expect(flood.filter(Boolean)).toHaveLength(20);
    expect(openFds(pid)).toBeGreaterThanOrEqual(baseline + 15);
    await cli.waitForLog(/msg="key registry: connection limit reached; closing new connections" max_connections=20/);
    // The silent ones are cut by read_header_timeout, without the client doing anything.
    const deadline = performance.now() + 5000;
    while (openFds(pid) > baseline && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
    expect(openFds(pid)).toBeLessThanOrEqual(baseline);
    expect((await httpRequest(`${registry}/healthz`)).status).toBe(200);
  });

  it('caps keys awaiting approval per service (100 by default): 429 with a JSON error, one log line for many refusals; an approval frees a place', async () => {
    const { cli, registry } = await startRegistry();
    const key = publisher();
    const answers = await Promise.all(Array.from({ length: 100 }, (_, i) => publish(registry, key, 'crowded', `k${i}`)));
    expect(answers.map((answer) => answer.status)).toEqual(answers.map(() => 202));
    for (let i = 100; i < 112; i++) {
      const refused = await publish(registry, key, 'crowded', `k${i}`);
      expect(refused.status).toBe(429);
      expect(refused.headers['content-type']).toBe('application/json');
      expect(JSON.parse(refused.body)).toEqual({
        error: 'too_many_pending_keys',
        message: 'service "crowded" already has 100 keys awaiting approval (max_pending_keys_per_service); approve or revoke some, or wait until unapproved keys are purged',
      });
    }
    const logLines = cli.stderr().split('\n').filter((line) => line.includes('too many keys awaiting approval'));
    expect(logLines).toHaveLength(1);
    expect(logLines[0]).toMatch(/level=warn msg="key registry: too many keys awaiting approval; refusing new ones \(429\)" scope=service service=crowded limit=100 refused=1/);
    // Another service still publishes.
    expect((await publish(registry, key, 'quiet', 'q0')).status).toBe(202);

    const approved = await runCli(['keyregistry', 'approve', 'crowded', 'k7', '--url', registry, '--token', adminToken]);
    expect(approved.code, approved.stderr).toBe(0);
    expect((await publish(registry, key, 'crowded', 'k200')).status).toBe(202);
    expect((await publish(registry, key, 'crowded', 'k201')).status).toBe(429);
  });

  it('a publication writes about as much with 1,500 keys waiting as with none (the key file is no longer rewritten whole)', async () => {
    const { cli, registry } = await startRegistry();
    const pid = cli.child.pid!;
    const key = publisher();
    const measure = async (prefix: string, count: number): Promise<number> => {
      const before = bytesWritten(pid);
      for (let i = 0; i < count; i += 25) {
        const answers = await Promise.all(Array.from({ length: 25 }, (_, j) => publish(registry, key, `m-${prefix}`, `k${i + j}`)));
        for (const answer of answers) expect(answer.status).toBe(202);
      }
      return (bytesWritten(pid) - before) / count;
    };
    const early = await measure('early', 50);
    // 1,500 keys waiting, 50 in each of 30 services (under the default caps).
    const started = performance.now();
    for (let service = 0; service < 30; service++) {
      const answers = await Promise.all(Array.from({ length: 50 }, (_, i) => publish(registry, key, `fill-${service}`, `k${i}`)));
      for (const answer of answers) expect(answer.status).toBe(202);
    }
    const fillRate = 1500 / ((performance.now() - started) / 1000);
    const late = await measure('late', 50);
    console.info(`bytes written per publication: ${early.toFixed(0)} with none waiting, ${late.toFixed(0)} with 1,550 waiting; filling at ${fillRate.toFixed(0)}/s`);
    // Before, each publication rewrote the whole file twice (its token id, then its key): ~1.3 MB here.
    expect(late).toBeLessThan(20_000);
    expect(late).toBeLessThan(early * 4);
  });

  it('200 concurrent refreshes of one approved key all succeed (none refused busy)', async () => {
    const { registry } = await startRegistry();
    const key = publisher();
    expect((await publish(registry, key, 'refreshing', 'the-key')).status).toBe(202);
    const approved = await runCli(['keyregistry', 'approve', 'refreshing', 'the-key', '--url', registry, '--token', adminToken]);
    expect(approved.code, approved.stderr).toBe(0);
    const expiration = Math.floor(Date.now() / 1000) + 7200;
    const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => publish(registry, key, 'refreshing', 'the-key', expiration + i)));
    const counts: Record<number, number> = {};
    for (const answer of answers) counts[answer.status] = (counts[answer.status] ?? 0) + 1;
    expect(counts).toEqual({ 200: 200 });
    expect((await httpRequest(`${registry}/services/refreshing/keys/the-key`)).status).toBe(200);
  });
});

/**
 * Malformed requests, generated from a fixed seed: the registry answers every one with a
 * 2xx/4xx (never a 5xx), stays up, and still serves a well-formed publication afterwards.
 */
import { connect } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startKeyRegistryServer, type RunningKeyRegistry } from '../src/index.js';
import { call, ecKey, putKey, rawCall, registryToken, rsaKey, uniqueName, type Answer, type PublisherKey } from './support.js';

const aud = 'http://registry.test';
const adminToken = 'fuzz-admin-token-0123456789abcdef';
let server: RunningKeyRegistry;
let directory: string;
let good: PublisherKey;
const errorLines: string[] = [];

beforeAll(async () => {
  directory = await mkdtemp(path.join(os.tmpdir(), 'keyregistry-fuzz-'));
  server = await startKeyRegistryServer({
    listenAddr: '127.0.0.1:0', publicUrl: aud, storage: { type: 'file', path: path.join(directory, 'keys.json') }, adminToken, maxBodyBytes: 8192,
    logger: { debug() {}, info() {}, warn() {}, error: (message, fields) => errorLines.push(`${message} ${JSON.stringify(fields)}`) },
  });
  good = await rsaKey();
});

afterAll(async () => {
  await server?.stop();
  await rm(directory, { recursive: true, force: true });
});

/** mulberry32: a small seeded generator, so that a failure can be replayed. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const seed = Number(process.env.FUZZ_SEED ?? 20261128);

describe('fuzzing the registry with malformed requests', () => {
  it(`answers 3,000 malformed requests (seed ${seed}) without a 5xx and keeps serving`, async () => {
    const next = random(seed);
    const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)]!;
    const junk = (length: number) => Buffer.from(Array.from({ length }, () => Math.floor(next() * 256)));
    const goodToken = await registryToken(good, { iss: 'svc', aud });
    const tokenParts = goodToken.split('.');
    const names = ['svc', '..', '.', '%2e%2e', '%2F', 'a%00b', '%zz', '%', 'x'.repeat(300), '%E2%98%83', 'a%20b', '~', '=', 'svc%20', '__proto__', 'constructor', '%C0%AE%C0%AE', ''];
    const tokens = [
      goodToken, '', 'Bearer', 'Bearer ', `Bearer ${goodToken}`, `Bearer ${tokenParts[0]}`, `Bearer ${tokenParts[0]}.${tokenParts[1]}.`, `Bearer ${'A'.repeat(20_000)}`,
      `Bearer ${Buffer.from('{"alg":"none","kid":"k"}').toString('base64url')}.${tokenParts[1]}.`, `Bearer ${Buffer.from('{"kid":5}').toString('base64url')}.e30.sig`,
      `Bearer ${Buffer.from('[]').toString('base64url')}.e30.sig`, `Basic ${Buffer.from('a:b').toString('base64')}`, `Bearer ${junk(60).toString('base64url')}`,
      `Bearer ${tokenParts[0]}.${Buffer.from('not json').toString('base64url')}.${tokenParts[2]}`,
    ];
    const bodies: Array<() => string | Buffer> = [
      () => JSON.stringify(good.jwk), () => '', () => 'null', () => '[]', () => '"text"', () => '{', () => junk(200), () => 'x'.repeat(9000),
      () => JSON.stringify({ ...good.jwk, n: 5 }), () => JSON.stringify({ ...good.jwk, kty: 'EC' }), () => JSON.stringify({ kty: 'EC', crv: 'P-256', x: 'AA', y: 'AA' }),
      () => JSON.stringify({ kty: 'RSA', n: 'AQAB', e: 'AQAB' }), () => JSON.stringify({ kty: 'RSA', n: good.jwk.n, e: 'Ag' }), () => JSON.stringify({ __proto__: { kty: 'RSA' } }),
      () => '{"kty":"RSA","n":' + '['.repeat(5000) + ']'.repeat(5000) + '}', () => JSON.stringify({ ...good.jwk, d: 'AAAA' }), () => Buffer.from([0xff, 0xfe, 0x7b, 0x7d]),
    ];
    const queries = ['', '?expiration=', '?expiration=abc', '?expiration=-1', '?expiration=1e400', '?expiration=99999999999999999', '?rotation=1.5', '?rotation=-3', '?expiration=1&expiration=2', '?%zz', '?rotation=99999999999'];
    const methods = ['GET', 'PUT', 'DELETE', 'POST', 'PATCH', 'HEAD', 'OPTIONS', 'TRACE'];
    const paths = [
      () => `/services/${pick(names)}/keys/${pick(names)}${pick(queries)}`, () => `/services/${pick(names)}/keys${pick(queries)}`, () => `/services/${pick(names)}`,
      () => `/admin/services/${pick(names)}/keys/${pick(names)}/approve`, () => `/admin/keys?state=${pick(names)}&service=${pick(names)}`, () => '/', () => '//services//keys//',
      () => `/services/svc/keys/${pick(names)}/${pick(names)}`, () => `/${junk(8).toString('hex')}`, () => '/healthz?x', () => '/services/svc/keys/k#frag',
    ];

    const statuses = new Map<number, number>();
    const failures: string[] = [];
    const one = async (): Promise<void> => {
      const method = pick(methods);
      const where = pick(paths)();
      const headers: Record<string, string> = {};
      const token = pick(tokens);
      if (token) headers.authorization = token.startsWith('Bearer') || token.startsWith('Basic') ? token : `Bearer ${token}`;
      if (next() < 0.5) headers['content-type'] = pick(['application/json', 'text/plain', 'application/json; charset=utf-16', 'multipart/form-data']);
      const body = method === 'GET' || method === 'HEAD' ? undefined : pick(bodies)();
      let answer: Answer;
      try {
        answer = await rawCall(server.address, method, where, headers, body);
      } catch (error) {
        // The registry may close a connection after refusing an oversize body; that is not a crash.
        if (body && body.length > 8192) return;
        failures.push(`${method} ${where}: ${(error as Error).message}`);
        return;
      }
      statuses.set(answer.status, (statuses.get(answer.status) ?? 0) + 1);
      if (answer.status >= 500) failures.push(`${method} ${where} → ${answer.status} ${answer.text}`);
      if (answer.status >= 400 && method !== 'HEAD' && answer.text === '') failures.push(`${method} ${where} → ${answer.status} with an empty body`);
    };
    for (let round = 0; round < 60; round++) await Promise.all(Array.from({ length: 50 }, one));

    expect(failures).toEqual([]);
    expect(errorLines).toEqual([]);
    expect([...statuses.keys()].every((status) => status < 500)).toBe(true);
    expect(statuses.get(400)).toBeGreaterThan(100);
    console.log(`fuzz statuses (seed ${seed}):`, JSON.stringify(Object.fromEntries([...statuses].sort((a, b) => a[0] - b[0]))));

    // Still up and working.
    const service = uniqueName('svc');
    const key = await ecKey();
    expect((await putKey(server.address, aud, service, key)).status).toBe(202);
    expect((await call(`${server.address}/healthz`)).status).toBe(200);
  }, 120_000);

  it('answers raw protocol garbage with 400 or a closed connection, and keeps serving', async () => {
    const next = random(seed + 1);
    const samples = [
      'GARBAGE\r\n\r\n', 'GET / HTTP/9.9\r\n\r\n', 'GET /services/a/keys HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n',
      'PUT /services/a/keys/b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', `GET /${'a'.repeat(100_000)} HTTP/1.1\r\nHost: x\r\n\r\n`,
      'GET / HTTP/1.1\r\nHost: x\r\nX: \u0000\r\n\r\n', '\u0016\u0003\u0001\u0000\u00a5\u0001\u0000\u0000\u00a1\u0003\u0003',
    ];
    for (let i = 0; i < 40; i++) samples.push(Buffer.from(Array.from({ length: 1 + Math.floor(next() * 300) }, () => Math.floor(next() * 256))).toString('latin1') + '\r\n\r\n');
    const answers = await Promise.all(
      samples.map(
        (sample) =>
          new Promise<string>((resolve) => {
            const { port } = new URL(server.address);
            const socket = connect(Number(port), '127.0.0.1', () => socket.end(Buffer.from(sample, 'latin1')));
            let received = '';
            socket.on('data', (chunk) => (received += chunk.toString('latin1')));
            socket.on('close', () => resolve(received));
            socket.on('error', () => resolve(received));
            socket.setTimeout(5000, () => socket.destroy());
          }),
      ),
    );
    for (const answer of answers) {
      if (answer === '') continue;
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1]);
      expect(status, answer.slice(0, 80)).toBeGreaterThanOrEqual(400);
      expect(status, answer.slice(0, 80)).toBeLessThan(500);
    }
    expect((await call(`${server.address}/services/svc/keys`)).status).toBe(200);
  });
});

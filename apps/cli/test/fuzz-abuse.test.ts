/**
 * The standing abuse suite (issue 12), against one real `jwtproxy` process running a signer, a
 * verifier and a key registry, with inputs generated from a fixed seed (FUZZ_SEED replays one):
 *   - hostile tokens at the verifier: none is accepted, none is answered 5xx;
 *   - malformed HTTP framing at both proxies: answered or closed, never a crash or a stall;
 *   - slow and silent clients: closed within read_header_timeout;
 *   - valid requests pipelined behind refusals: never run after a refusal that closes;
 *   - hostile bodies at the key registry (chunked, oversize, junk): 4xx, never a 5xx or a crash.
 * It ends by checking the process is alive and a signed request still passes. Bounded: about
 * 20 s on a 2-core machine.
 */
import { createHmac, createPrivateKey, generateKeyPairSync, sign as rsaSign } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freeLoopbackPort, interop, startEchoService, type RunningServer, type SeenRequest, rawExchange, responseStatuses } from '@jwtproxy/testkit';
import { e2eConfig, httpRequest, mintToken, startCli, tempDir, type RunningCli } from './helpers.js';

const seed = Number(process.env.FUZZ_SEED ?? 20261129);

/** mulberry32: small and seeded, so that a failure can be replayed with FUZZ_SEED. */
function random(start: number): () => number {
  let state = start >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

let files: Awaited<ReturnType<typeof tempDir>>;
let service: RunningServer & { seen: SeenRequest[] };
let cli: RunningCli;
let signer: string;
let verifier: string;
let registry: string;
/** Every status seen, by suite part, for the note. */
const tally = new Map<string, Map<string, number>>();
let inputs = 0;

function count(part: string, outcome: string): void {
  inputs++;
  const counts = tally.get(part) ?? new Map<string, number>();
  counts.set(outcome, (counts.get(outcome) ?? 0) + 1);
  tally.set(part, counts);
}

beforeAll(async () => {
  files = await tempDir();
  service = await startEchoService();
  const [verifierPort, registryPort] = [await freeLoopbackPort(), await freeLoopbackPort()];
  verifier = `http://127.0.0.1:${verifierPort}`;
  registry = `http://127.0.0.1:${registryPort}`;
  const verifierEntry = e2eConfig.verifier({ listenAddr: `127.0.0.1:${verifierPort}`, upstream: service.url, audience: verifier });
  verifierEntry.splice(1, 0, '    read_header_timeout: 1s', '    body_idle_timeout: 2s');
  const config = await files.write(
    'fuzz.yaml',
    [
      'jwtproxy:',
      ...e2eConfig.signer({ extra: ['read_header_timeout: 1s', 'body_idle_timeout: 2s'] }),
      '  verifier_proxies:',
      ...verifierEntry,
      '  keyregistry:',
      `    listen_addr: 127.0.0.1:${registryPort}`,
      `    public_url: ${registry}`,
      `    storage: {type: file, options: {path: ${JSON.stringify(`${files.dir}/keys.json`)}}}`,
      '',
    ].join('\n'),
  );
  cli = await startCli(['-config', config]);
  signer = cli.servers.signer_proxy!;
});

afterAll(async () => {
  const result = await cli?.stop();
  await service?.close();
  await files?.cleanup();
  const summary = Object.fromEntries([...tally].map(([part, counts]) => [part, Object.fromEntries([...counts].sort())]));
  console.log(`abuse suite (seed ${seed}): ${inputs} inputs; outcomes ${JSON.stringify(summary)}`);
  expect(result?.code).toBe(0);
  expect(result?.stderr ?? '').not.toMatch(/level=error/);
});

const b64 = (value: unknown): string => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

describe('hostile tokens at the verifier', () => {
  it('accepts none of 3,000 forged, mangled and replayed tokens, and answers none with a 5xx', async () => {
    const next = random(seed);
    const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)]!;
    const now = Math.floor(Date.now() / 1000);
    const claims = () => ({ iss: interop.issuer, aud: verifier, iat: now, nbf: now - 10, exp: now + 60, jti: `fuzz-${next()}` });
    const publicPem = readFileSync(interop.publicKeyPath, 'utf8');
    const otherKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    const interopKey = createPrivateKey(readFileSync(interop.privateKeyPath));
    const rs256 = (header: unknown, payload: unknown, key = otherKey): string => {
      const input = `${b64(header)}.${b64(payload)}`;
      return `${input}.${rsaSign('sha256', Buffer.from(input), key).toString('base64url')}`;
    };
    const valid = (await mintToken(verifier)).split('.');
    const replayed = await mintToken(verifier);
    expect((await httpRequest(verifier, { headers: { authorization: `Bearer ${replayed}` } })).status).toBe(200);
    const seenBefore = service.seen.length;

    const header = { alg: 'RS256', kid: interop.keyId, typ: 'JWT' };
    const forgers: Array<() => string> = [
      () => `${b64({ alg: 'none', kid: interop.keyId })}.${b64(claims())}.`,
      () => `${b64({ alg: 'None', kid: interop.keyId })}.${b64(claims())}.${valid[2]}`,
      () => {
        const input = `${b64({ alg: 'HS256', kid: interop.keyId })}.${b64(claims())}`;
        return `${input}.${createHmac('sha256', publicPem).update(input).digest('base64url')}`;
      },
      () => rs256(header, claims()),
      () => rs256({ ...header, kid: pick(['../../etc/passwd', '', 'x'.repeat(5_000), '%00', '__proto__', 'constructor']) }, claims(), interopKey),
      () => rs256({ ...header, kid: pick([5, null, {}, [], true]) }, claims(), interopKey),
      () => rs256({ ...header, alg: pick(['ES256', 'PS256', 'RS512', 'EdDSA', 'rs256', '']) }, claims(), interopKey),
      () => rs256({ ...header, jku: 'http://127.0.0.1:9/keys', x5u: 'http://127.0.0.1:9/x' }, claims()),
      () => rs256({ ...header, jwk: { kty: 'RSA', n: 'AQAB', e: 'AQAB' } }, claims()),
      () => rs256(header, { ...claims(), aud: pick([[verifier], 'http://evil.test', `${verifier}0`, `https://${new URL(verifier).host}`, null, 5]) }, interopKey),
      () => rs256(header, { ...claims(), exp: pick([now - 3600, String(now + 60), null, 1e300, -1]) }, interopKey),
      () => rs256(header, { ...claims(), iat: now + 3600 }, interopKey),
      () => rs256(header, { ...claims(), exp: now + 86_400 }, interopKey),
      () => rs256(header, { ...claims(), jti: pick([undefined, 5, {}, '']) }, interopKey),
      () => `${valid[0]}.${b64({ ...claims(), iss: 'admin' })}.${valid[2]}`,
      () => {
        const bytes = Buffer.from(valid.join('.'));
        const at = Math.floor(next() * bytes.length);
        bytes[at] = bytes[at]! ^ (1 + Math.floor(next() * 254));
        return bytes.toString('latin1');
      },
      () => valid.slice(0, Math.floor(next() * 3)).join('.'),
      () => `${valid.join('.')}.${valid[2]}`,
      () => `${b64('not json')}.${b64(claims())}.${valid[2]}`,
      () => `${b64([1, 2])}.${b64('[]')}.${valid[2]}`,
      () => `${'A'.repeat(Math.floor(next() * 12_000))}.${valid[1]}.${valid[2]}`,
      () => replayed,
    ];
    const schemes = [(t: string) => `Bearer ${t}`, (t: string) => `bearer ${t}`, (t: string) => `Basic ${Buffer.from(`user:${t}`).toString('base64')}`, (t: string) => `Bearer  ${t}`, (t: string) => t];
    const failures: string[] = [];
    const one = async (): Promise<void> => {
      const authorization = pick(schemes)(pick(forgers)());
      try {
        const answer = await httpRequest(verifier, { headers: { authorization } });
        count('tokens', String(answer.status));
        if (answer.status === 200 || answer.status >= 500) failures.push(`${answer.status} for ${authorization.slice(0, 120)}`);
      } catch (error) {
        // A mangled byte that Node's client refuses to send (ERR_INVALID_CHAR) never left this process.
        const code = (error as NodeJS.ErrnoException).code;
        count('tokens', `not sent (${code})`);
        if (code !== 'ERR_INVALID_CHAR') failures.push(`${(error as Error).message} for ${authorization.slice(0, 120)}`);
      }
    };
    for (let round = 0; round < 100; round++) await Promise.all(Array.from({ length: 30 }, one));
    expect(failures).toEqual([]);
    expect(service.seen.length).toBe(seenBefore);
  });
});

describe('malformed HTTP framing at both proxies', () => {
  it('answers or closes 1,200 malformed requests without a crash or a stall, and the upstream sees none of those sent to the verifier', async () => {
    const next = random(seed + 1);
    const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)]!;
    const junk = (length: number): string => Array.from({ length }, () => String.fromCharCode(Math.floor(next() * 256))).join('');
    const target = (proxy: string): string => (proxy === signer ? `${verifier}/x` : '/x');
    const samples: Array<(proxy: string) => string> = [
      () => junk(1 + Math.floor(next() * 200)) + '\r\n\r\n',
      (p) => `GET ${target(p)} HTTP/9.9\r\nHost: svc\r\n\r\n`,
      (p) => `POST ${target(p)} HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n`,
      (p) => `POST ${target(p)} HTTP/1.1\r\nHost: svc\r\nContent-Length: -1\r\n\r\n`,
      (p) => `POST ${target(p)} HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd`,
      (p) => `POST ${target(p)} HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n`,
      (p) => `POST ${target(p)} HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n`,
      (p) => `GET ${target(p)} HTTP/1.1\r\nHost: svc\r\nX-Folded: a\r\n  b\r\n\r\n`,
      (p) => `GET ${target(p)} HTTP/1.1\r\nHost: svc\r\nNoColon\r\n\r\n`,
      (p) => `GET ${target(p)} HTTP/1.1\r\nHost: svc\r\nX: \u0000\r\n\r\n`,
      (p) => `GET ${target(p)}${'a'.repeat(20_000)} HTTP/1.1\r\nHost: svc\r\n\r\n`,
      (p) => `GET ${target(p)} HTTP/1.1\r\nHost: svc\r\n${'X-Big: ' + 'b'.repeat(20_000)}\r\n\r\n`,
      (p) => `GET ${target(p)} HTTP/1.1\r\nHost: svc\r\n${Array.from({ length: 600 }, (_, i) => `X-${i}: ${i}\r\n`).join('')}\r\n`,
      (p) => `${pick(['BREW', 'G ET', 'get', 'PRI', 'CONNECT'])} ${target(p)} HTTP/1.1\r\nHost: svc\r\n\r\n`,
      () => 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n',
      (p) => `GET ${target(p)} HTTP/1.1\r\nHost: ${pick(['', 'a b', 'a\tb', '[::1', 'a:99999x'])}\r\n\r\n`,
      (p) => `GET ${target(p)} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n`,
      (p) => `GET ${target(p)}\r\n\r\n`,
      () => `CONNECT ${pick(['', ':443', 'a b:1', '127.0.0.1:99999', '[::1]:'])} HTTP/1.1\r\n\r\n`,
      (p) => `GET ${target(p)} HTTP/1.1\r\nHost: svc\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n${junk(100)}`,
    ];
    const failures: string[] = [];
    const one = async (): Promise<void> => {
      const proxy = pick([signer, verifier]);
      const request = pick(samples)(proxy);
      const started = Date.now();
      const answer = await rawExchange(proxy, request, { waitMs: 4_000, halfClose: true });
      const took = Date.now() - started;
      const status = responseStatuses(answer)[0];
      count(proxy === signer ? 'framing (signer)' : 'framing (verifier)', status === undefined ? 'closed' : String(status));
      if (took >= 3_900) failures.push(`stalled: ${JSON.stringify(request.slice(0, 100))}`);
      if (proxy === verifier && status !== undefined && status >= 500 && status !== 500) failures.push(`${status} at the verifier for ${JSON.stringify(request.slice(0, 100))}`);
    };
    const seenBefore = service.seen.length;
    for (let round = 0; round < 40; round++) await Promise.all(Array.from({ length: 30 }, one));
    expect(failures).toEqual([]);
    // Requests through the signer are signed and may pass; the ones sent straight to the verifier carry no token.
    const unsignedSeen = service.seen.slice(seenBefore).filter((seen) => !seen.headers.authorization);
    expect(unsignedSeen).toEqual([]);
  });
});

describe('slow and silent clients at both proxies', () => {
  it('closes 200 slowloris and 200 silent connections within read_header_timeout (1 s)', async () => {
    const started = Date.now();
    const sockets: net.Socket[] = [];
    for (const proxy of [signer, verifier]) {
      const { port } = new URL(proxy);
      for (let i = 0; i < 200; i++) {
        const socket = net.connect({ host: '127.0.0.1', port: Number(port) });
        socket.on('error', () => undefined);
        socket.resume();
        if (i % 2 === 0) socket.write(`GET / HTTP/1.1\r\nHost: svc\r\nX-Slow: `);
        sockets.push(socket);
      }
    }
    await Promise.all(sockets.map((socket) => once(socket, 'close')));
    const took = Date.now() - started;
    for (let i = 0; i < sockets.length; i++) count('slow clients', 'closed');
    expect(took).toBeLessThan(5_000);
  });
});

describe('pipelining behind refusals', () => {
  it('never runs a valid request pipelined behind a refusal that closes the connection (100 tries)', async () => {
    const next = random(seed + 2);
    const before = service.seen.length;
    const refusals = [
      () => `POST /r HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n${'x'.repeat(4096)}\r\n0\r\n\r\n`,
      () => `POST /r HTTP/1.1\r\nHost: svc\r\nContent-Length: 70000\r\n\r\n${'x'.repeat(70_000)}`,
      () => `POST /r HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody`,
      () => `GET /r HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n`,
      () => `GET http://absolute.test/r HTTP/1.1\r\nHost: svc\r\nContent-Length: 70000\r\n\r\n${'x'.repeat(70_000)}`,
    ];
    for (let i = 0; i < 100; i++) {
      const refused = refusals[Math.floor(next() * refusals.length)]!();
      const valid = `POST /transfer HTTP/1.1\r\nHost: svc\r\nAuthorization: Bearer ${await mintToken(verifier)}\r\nContent-Length: 0\r\n\r\n`;
      const answer = await rawExchange(verifier, refused + valid);
      const statuses = responseStatuses(answer);
      count('pipelining', statuses.join('+') || 'closed');
      expect(statuses.length).toBeLessThanOrEqual(1);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(service.seen.slice(before).filter((seen) => seen.url === '/transfer')).toEqual([]);
  });
});

describe('hostile bodies at the key registry', () => {
  it('answers 600 junk, oversize and chunked publications with a 4xx, never a 5xx or a crash', async () => {
    const next = random(seed + 3);
    const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)]!;
    const size = () => pick([0, 10, 1_000, 9_000, 70_000, 300_000]);
    const bodies: Array<() => string> = [
      () => 'x'.repeat(size()),
      () => JSON.stringify({ kty: 'RSA', n: 'A'.repeat(size()), e: 'AQAB' }),
      () => '['.repeat(size()),
      () => JSON.stringify({ kty: 'EC', crv: 'P-256', x: '=', y: '==' }),
      () => '{"__proto__":{"kty":"RSA"}}',
    ];
    const failures: string[] = [];
    const one = async (): Promise<void> => {
      const body = pick(bodies)();
      const chunked = next() < 0.5;
      const path = `/services/${pick(['a', 'svc', '..', '%2e', 'x'.repeat(300)])}/keys/${pick(['b', 'k%3D', '='])}?expiration=${pick(['1', 'x', ''])}`;
      const head = `PUT ${path} HTTP/1.1\r\nHost: registry\r\nContent-Type: application/json\r\nAuthorization: Bearer ${b64({ alg: 'RS256', kid: 'b' })}.${b64({ iss: 'a' })}.sig\r\nConnection: close\r\n`;
      const request = chunked ? `${head}Transfer-Encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n` : `${head}Content-Length: ${body.length}\r\n\r\n${body}`;
      const answer = await rawExchange(registry, request, { waitMs: 5_000 });
      const status = responseStatuses(answer)[0];
      count('registry bodies', status === undefined ? 'closed' : String(status));
      if (status !== undefined && status >= 500) failures.push(`${status} for ${request.slice(0, 150)}`);
    };
    for (let round = 0; round < 30; round++) await Promise.all(Array.from({ length: 20 }, one));
    expect(failures).toEqual([]);
    expect((await httpRequest(`${registry}/healthz`)).status).toBe(200);
  });
});

describe('after the abuse', () => {
  it('the process is alive and a request through signer → verifier → service passes', async () => {
    expect(cli.child.exitCode).toBeNull();
    const answer = await httpRequest(`${verifier}/after`, { proxy: signer });
    expect(answer.status).toBe(200);
  });
});

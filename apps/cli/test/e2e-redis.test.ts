/**
 * Issue 7, end to end with real `jwtproxy` processes: verifier replicas sharing one Redis for
 * replay protection (Redis at 127.0.0.1:6379, or REDIS_URL; a random key_prefix per test), a Redis
 * of the test's own that goes away and comes back, and `nonce_storage: {type: none}`.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { freeLoopbackPort, isProcessAlive, type OwnRedis, repoRoot, type RunningServer, type SeenRequest, startEchoService, startOwnRedis } from '@jwtproxy/testkit';
import { claimsOf, e2eConfig, httpRequest, jwtproxyConfig, mintToken, startCli, tempDir, type RunningCli } from './helpers.js';

const redisUrl = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const audience = 'http://api.internal';
const JTI_REFUSED = "jwtproxy: unable to verify request: Missing or invalid 'jti' claim";
const STORE_UNAVAILABLE = 'jwtproxy: unable to verify request: Nonce storage unavailable';

let files: Awaited<ReturnType<typeof tempDir>>;
let service: RunningServer & { seen: SeenRequest[] };
let redis: Redis;
const running: RunningCli[] = [];

beforeAll(async () => {
  files = await tempDir();
  service = await startEchoService();
  redis = new Redis(redisUrl, { lazyConnect: true });
  await redis.connect();
});

afterEach(async () => {
  const stopped = await Promise.all(running.splice(0).map((cli) => cli.stop()));
  expect(stopped.map((s) => s.code)).toEqual(stopped.map(() => 0));
});

afterAll(async () => {
  redis?.disconnect();
  await service?.close();
  await files?.cleanup();
});

/** Starts a verifier process in front of the echo service with this `nonce_storage` (a YAML flow mapping). */
async function startVerifier(nonceStorage: string, name: string): Promise<{ cli: RunningCli; url: string }> {
  const config = await files.write(`${name}.yaml`, jwtproxyConfig({ verifiers: [e2eConfig.verifier({ upstream: service.url, audience, nonceStorage })] }));
  const cli = await startCli(['-config', config]);
  running.push(cli);
  return { cli, url: cli.servers['verifier_proxies[0]']! };
}

function redisStorage(url: string, keyPrefix: string): string {
  return `{type: redis, options: {url: "${url}", key_prefix: "${keyPrefix}"}}`;
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

describe('two verifier processes on one Redis', () => {
  it('a token accepted by one replica is refused by the other', async () => {
    const prefix = `jwtproxy:e2e:${randomUUID()}:`;
    const [a, b] = await Promise.all([startVerifier(redisStorage(redisUrl, prefix), 'replica-a'), startVerifier(redisStorage(redisUrl, prefix), 'replica-b')]);
    const token = await mintToken(audience);
    expect((await httpRequest(`${a.url}/x`, { headers: bearer(token) })).status).toBe(200);
    expect(await httpRequest(`${b.url}/x`, { headers: bearer(token) })).toMatchObject({ status: 403, body: JTI_REFUSED });
    expect(await httpRequest(`${a.url}/x`, { headers: bearer(token) })).toMatchObject({ status: 403, body: JTI_REFUSED });
    // And the other way round with a second token.
    const second = await mintToken(audience);
    expect((await httpRequest(`${b.url}/x`, { headers: bearer(second) })).status).toBe(200);
    expect(await httpRequest(`${a.url}/x`, { headers: bearer(second) })).toMatchObject({ status: 403, body: JTI_REFUSED });
  });

  it('1,000 concurrent replays of one token spread over both: exactly one 200', async () => {
    const prefix = `jwtproxy:e2e:${randomUUID()}:`;
    const [a, b] = await Promise.all([startVerifier(redisStorage(redisUrl, prefix), 'race-a'), startVerifier(redisStorage(redisUrl, prefix), 'race-b')]);
    const token = await mintToken(audience);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 500 });
    try {
      const answers = await Promise.all(
        Array.from({ length: 1000 }, (_, i) => httpRequest(`${i % 2 === 0 ? a.url : b.url}/race`, { headers: bearer(token), agent })),
      );
      const statuses = new Map<number, number>();
      for (const answer of answers) statuses.set(answer.status, (statuses.get(answer.status) ?? 0) + 1);
      expect(Object.fromEntries(statuses)).toEqual({ 200: 1, 403: 999 });
      expect(answers.filter((x) => x.status === 403).every((x) => x.body === JTI_REFUSED)).toBe(true);
      expect(await redis.keys(`${prefix}*`)).toHaveLength(1);
    } finally {
      agent.destroy();
    }
  });

  it('the nonce key expires with its token', async () => {
    const prefix = `jwtproxy:e2e:${randomUUID()}:`;
    const verifier = await startVerifier(redisStorage(redisUrl, prefix), 'ttl');
    const token = await mintToken(audience, { expirationMs: 30_000 }); // not the default 5m, so the TTL must come from exp
    expect((await httpRequest(`${verifier.url}/x`, { headers: bearer(token) })).status).toBe(200);
    const { jti, exp } = claimsOf(`Bearer ${token}`) as { jti: string; exp: number };
    const untilExpMs = exp * 1000 - Date.now(); // taken before the PTTL, which then can only be smaller
    const pttl = await redis.pttl(`${prefix}${jti}`);
    console.log(`nonce key PTTL ${pttl} ms; token expires in ${untilExpMs} ms`);
    // exp − now + 1 s (exp is in whole seconds), plus a few ms for the trip from the verifier to Redis.
    expect(pttl).toBeLessThanOrEqual(untilExpMs + 1000 + 50);
    expect(pttl).toBeGreaterThan(untilExpMs - 2000);
  });
});

describe('a Redis that goes away and comes back', () => {
  let own: OwnRedis | undefined;
  afterEach(async () => {
    await own?.close();
    own = undefined;
  });

  it('the verifier fails closed with 503 while it is gone, logs a warning, stays up, and serves again when it returns', async () => {
    own = await startOwnRedis();
    const verifier = await startVerifier(redisStorage(own.url, `jwtproxy:e2e:${randomUUID()}:`), 'own-redis');
    expect((await httpRequest(`${verifier.url}/x`, { headers: bearer(await mintToken(audience)) })).status).toBe(200);

    await own.kill();
    const seenBefore = service.seen.length;
    const startedAt = Date.now();
    const refused = await httpRequest(`${verifier.url}/x`, { headers: bearer(await mintToken(audience)) });
    const refusedInMs = Date.now() - startedAt;
    expect(refused).toMatchObject({ status: 503, body: STORE_UNAVAILABLE });
    expect(refused.headers['content-type']).toMatch(/^text\/plain/);
    await verifier.cli.waitForLog(/level=warn msg="redis nonce store unavailable/);
    // More requests while it is down: all refused, fast, nothing reaches the service, the process stays up.
    const more = await Promise.all(Array.from({ length: 20 }, async () => httpRequest(`${verifier.url}/x`, { headers: bearer(await mintToken(audience)) })));
    expect(more.every((x) => x.status === 503 && x.body === STORE_UNAVAILABLE)).toBe(true);
    expect(service.seen.length).toBe(seenBefore);
    expect(isProcessAlive(verifier.cli.child.pid)).toBe(true);
    expect(verifier.cli.child.exitCode).toBeNull();

    await own.start(); // same port
    const backAt = Date.now();
    let status = 0;
    while (status !== 200 && Date.now() - backAt < 15_000) {
      status = (await httpRequest(`${verifier.url}/x`, { headers: bearer(await mintToken(audience)) })).status;
      if (status !== 200) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const recoveredInMs = Date.now() - backAt;
    console.log(`Redis down: first refusal (503) in ${refusedInMs} ms; back: 200 again after ${recoveredInMs} ms`);
    expect(status).toBe(200);
    await verifier.cli.waitForLog(/level=info msg="redis nonce store reconnected"/);
    // One warning for the outage, not one per request.
    expect(verifier.cli.stderr().match(/redis nonce store unavailable/g)).toHaveLength(1);
  });
});

describe('nonce_storage: {type: none}', () => {
  it('warns at start that replay protection is off, and lets the same token through twice', async () => {
    const verifier = await startVerifier('{type: none}', 'none');
    expect(verifier.cli.stderr()).toMatch(/level=warn msg="nonce_storage type none: replay protection is OFF/);
    const token = await mintToken(audience);
    expect((await httpRequest(`${verifier.url}/x`, { headers: bearer(token) })).status).toBe(200);
    expect((await httpRequest(`${verifier.url}/x`, { headers: bearer(token) })).status).toBe(200);
  });
});

describe('examples/redis-replicas', () => {
  /** The example file with its fixed ports, paths, Redis and prefix replaced; each replacement must apply. */
  function exampleConfig(name: string, replacements: Array<[string, string]>): string {
    let text = readFileSync(path.join(repoRoot, 'examples/redis-replicas', name), 'utf8');
    for (const [from, to] of replacements) {
      expect(text, `${name} should contain ${from}`).toContain(from);
      text = text.replaceAll(from, to);
    }
    return text;
  }

  it('as shipped: a token the signer made for replica A passes once, then B and A refuse it; its nonce expires with it', async () => {
    const prefix = `jwtproxy:e2e:${randomUUID()}:`;
    const portA = await freeLoopbackPort();
    const keys = path.join(repoRoot, 'examples/httpserver') + '/';
    const verifierReplacements = (listen: string, port: number): Array<[string, string]> => [
      [`listen_addr: 127.0.0.1:${listen}`, `listen_addr: 127.0.0.1:${port}`],
      ['audience: http://localhost:8081', `audience: http://localhost:${portA}`],
      ['upstream: http://127.0.0.1:8080/', `upstream: ${service.url}/`],
      ['../httpserver/', keys],
      ['url: redis://127.0.0.1:6379', `url: ${redisUrl}`],
      ['key_prefix: "jwtproxy:nonce:example:"', `key_prefix: "${prefix}"`],
    ];
    const configs = await Promise.all([
      files.write('example-signer.yaml', exampleConfig('signer.yaml', [['listen_addr: 127.0.0.1:3128', 'listen_addr: 127.0.0.1:0'], ['../httpserver/', keys]])),
      files.write('example-a.yaml', exampleConfig('verifier-a.yaml', verifierReplacements('8081', portA))),
      files.write('example-b.yaml', exampleConfig('verifier-b.yaml', verifierReplacements('8083', await freeLoopbackPort()))),
    ]);
    const [signer, a, b] = await Promise.all(configs.map((file) => startCli(['-config', file])));
    running.push(signer!, a!, b!);
    const replicaA = a!.servers['verifier_proxies[0]']!;
    const replicaB = b!.servers['verifier_proxies[0]']!;

    const first = await httpRequest(`http://localhost:${portA}/`, { proxy: signer!.servers.signer_proxy });
    expect(first.status).toBe(200);
    const token = (JSON.parse(first.body) as SeenRequest).headers.authorization!;
    expect(await httpRequest(`${replicaB}/`, { headers: { authorization: token } })).toMatchObject({ status: 403, body: JTI_REFUSED });
    expect(await httpRequest(`${replicaA}/`, { headers: { authorization: token } })).toMatchObject({ status: 403, body: JTI_REFUSED });

    const { jti, exp } = claimsOf(token) as { jti: string; exp: number };
    const untilExpMs = exp * 1000 - Date.now();
    const pttl = await redis.pttl(`${prefix}${jti}`);
    expect(pttl).toBeGreaterThan(untilExpMs - 2000);
    expect(pttl).toBeLessThanOrEqual(untilExpMs + 1000 + 50);
  });
});

/**
 * Issue 6 end to end: key rotation every 2 s under continuous traffic, with the registry, the
 * signer and the verifier each a `jwtproxy -config` process. No request may fail across rotations.
 */
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freeLoopbackPort, startEchoService } from '@jwtproxy/testkit';
import { httpGet, keyRegistryConfig, kidOf, tempDir, startCli, type RunningCli } from './helpers.js';

const issuer = 'rotating';
const rotateEverySeconds = 3;
const concurrency = 24;
const wantedRotations = 3;

let files: Awaited<ReturnType<typeof tempDir>>;
let echo: Awaited<ReturnType<typeof startEchoService>>;
const running: RunningCli[] = [];

beforeAll(async () => {
  files = await tempDir();
  echo = await startEchoService();
});
afterAll(async () => {
  const stopped = await Promise.all(running.map((cli) => cli.stop()));
  await echo.close();
  await files.cleanup();
  for (const result of stopped) expect(result.code).toBe(0);
});

async function start(name: string, yaml: string): Promise<RunningCli> {
  const cli = await startCli(['-config', await files.write(name, yaml)]);
  running.push(cli);
  return cli;
}

describe('key rotation under load', () => {
  it(`rotates every ${rotateEverySeconds} s while ${concurrency} clients send requests through signer → verifier → service, and no request fails`, async () => {
    const [registryPort, verifierPort] = [await freeLoopbackPort(), await freeLoopbackPort()];
    const registry = `http://127.0.0.1:${registryPort}/`;
    await start('registry.yaml', keyRegistryConfig.registry({ port: registryPort, storagePath: 'keys.json', autoApprove: [issuer] }));
    const signer = await start('signer.yaml', keyRegistryConfig.signer({ issuer, registry, keyFolder: 'keys', rotateEvery: `${rotateEverySeconds}s` }));
    await start('verifier.yaml', keyRegistryConfig.verifier({ port: verifierPort, upstream: echo.url, registry }));
    await signer.waitForLog(/msg="the key registry approved the key; signing with it"/);

    const proxy = signer.servers.signer_proxy!;
    const target = `http://127.0.0.1:${verifierPort}/work`;
    const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
    const failures: string[] = [];
    let sent = 0;
    let stopping = false;
    const distinctKids = (): Set<string | undefined> => new Set(echo.seen.map((seen) => kidOf(seen.headers.authorization)));
    const client = async (): Promise<void> => {
      while (!stopping) {
        sent++;
        try {
          const answer = await httpGet(target, { proxy, agent });
          if (answer.status !== 200) failures.push(`${answer.status} ${answer.body}`);
        } catch (error) {
          failures.push(String(error));
        }
      }
    };

    const started = performance.now();
    const clients = Array.from({ length: concurrency }, client);
    // Until the service has seen the first key and three more, then one more second of traffic.
    while (distinctKids().size < wantedRotations + 1 && performance.now() - started < 30_000) await new Promise((resolve) => setTimeout(resolve, 100));
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    stopping = true;
    await Promise.all(clients);
    agent.destroy();
    const seconds = (performance.now() - started) / 1000;

    const kids = distinctKids();
    const rotationsLogged = signer.logLines().filter((line) => line.msg === 'rotated to the newly approved key').length;
    // How close each switch came to the replaced key's expiry at the registry: the key is published
    // right after it is generated, with expiration = floor(now + 2 × rotate_every) in unix seconds.
    const generatedAt = new Map(signer.logLines().filter((line) => line.msg === 'generated a new key').map((line) => [line.kid, Date.parse(line.time!)]));
    const marginsMs = signer
      .logLines()
      .filter((line) => line.msg === 'rotated to the newly approved key')
      .map((line) => Math.floor((generatedAt.get(line.previousKid)! + 2 * rotateEverySeconds * 1000) / 1000) * 1000 - Date.parse(line.time!));
    const perKid = [...kids].map((kid) => echo.seen.filter((seen) => kidOf(seen.headers.authorization) === kid).length);
    console.info(
      `${sent} requests in ${seconds.toFixed(1)} s (${(sent / seconds).toFixed(0)}/s, ${concurrency} concurrent), ` +
        `${kids.size} keys seen at the service (${kids.size - 1} rotations; requests per key ${perKid.join(', ')}), ` +
        `${rotationsLogged} rotations logged by the signer (switched ${marginsMs.join(', ')} ms before the old key's expiry), ${failures.length} failed`,
    );
    if (failures.length) console.info(running.map((cli) => cli.stderr()).join("\n----\n"));
    expect(failures.slice(0, 5)).toEqual([]);
    expect(echo.seen).toHaveLength(sent);
    expect(kids.size - 1).toBeGreaterThanOrEqual(wantedRotations);
    expect(kids.has(undefined)).toBe(false);
    expect(rotationsLogged).toBeGreaterThanOrEqual(kids.size - 1);

    // Each rotation was signed by the key it replaced, so the registry approved it at once and
    // dropped the old key: it now serves the signer's current key only.
    // (A rotation may fall between the two reads: then read again.)
    let listed: string[] = [];
    let signing: string | undefined;
    for (let attempt = 0; attempt < 5 && !(listed.length === 1 && listed[0] === signing); attempt++) {
      listed = ((await (await fetch(`${registry}services/${issuer}/keys`)).json()) as { keys: Array<{ kid: string }> }).keys.map((key) => key.kid);
      expect((await httpGet(target, { proxy })).status).toBe(200);
      signing = kidOf(echo.seen.at(-1)!.headers.authorization);
    }
    expect(listed).toEqual([signing]);
  });
});

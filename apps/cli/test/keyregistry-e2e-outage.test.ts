/**
 * Issue 6 end to end: the key registry process goes down and comes back. Verifiers that cached
 * the signer's key keep working; those that never saw it fail closed; both recover once the
 * registry (file store, same file) is back.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { freeLoopbackPort, startEchoService } from '@jwtproxy/testkit';
import { httpGet, keyRegistryConfig, kidOf, startCli, tempDir, type RunningCli } from './helpers.js';

const issuer = 'checkout';
const keyServerError = { status: 403, body: 'jwtproxy: unable to verify request: Unexpected key server error' };

let files: Awaited<ReturnType<typeof tempDir>>;
let echo: Awaited<ReturnType<typeof startEchoService>>;
let running: RunningCli[];

beforeEach(async () => {
  files = await tempDir();
  echo = await startEchoService();
  running = [];
});
afterEach(async () => {
  await Promise.all(running.map((cli) => cli.stop()));
  await echo.close();
  await files.cleanup();
});

async function start(name: string, yaml: string): Promise<RunningCli> {
  const cli = await startCli(['-config', await files.write(name, yaml)]);
  running.push(cli);
  return cli;
}

describe('key registry down', () => {
  it('a verifier with the key cached keeps passing requests, one without it answers 403, and both recover when the registry is back', async () => {
    const [registryPort, cachedPort, coldPort] = [await freeLoopbackPort(), await freeLoopbackPort(), await freeLoopbackPort()];
    const registry = `http://127.0.0.1:${registryPort}/`;
    const registryYaml = keyRegistryConfig.registry({ port: registryPort, storagePath: 'state/keys.json', autoApprove: [issuer] });
    let registryProcess = await start('registry.yaml', registryYaml);
    const signer = await start('signer.yaml', keyRegistryConfig.signer({ issuer, registry, keyFolder: 'keys' }));
    await start('cached.yaml', keyRegistryConfig.verifier({ port: cachedPort, upstream: echo.url, registry }));
    const cold = await start('cold.yaml', keyRegistryConfig.verifier({ port: coldPort, upstream: echo.url, registry }));
    await signer.waitForLog(/msg="the key registry approved the key; signing with it"/);
    const proxy = signer.servers.signer_proxy!;
    const throughCached = (): ReturnType<typeof httpGet> => httpGet(`http://127.0.0.1:${cachedPort}/orders`, { proxy });
    const throughCold = (): ReturnType<typeof httpGet> => httpGet(`http://127.0.0.1:${coldPort}/orders`, { proxy });

    // The first verifier fetches the key and keeps it.
    expect((await throughCached()).status).toBe(200);
    const kid = kidOf(echo.seen[0]!.headers.authorization);

    // The registry stops (cleanly: its port refuses connections).
    const stopped = await registryProcess.stop();
    expect(stopped.code).toBe(0);
    running.splice(running.indexOf(registryProcess), 1);
    await expect(fetch(`${registry}healthz`)).rejects.toThrow();

    // Cached: still 200, every time. Never seen: fails closed, with a warning in its log.
    for (let i = 0; i < 20; i++) expect(await throughCached()).toMatchObject({ status: 200 });
    for (let i = 0; i < 5; i++) expect(await throughCold()).toEqual(keyServerError);
    expect(cold.logLines()).toContainEqual(expect.objectContaining({ level: 'warn' }));
    expect(echo.seen).toHaveLength(21);

    // Back on the same port and file: the approved key survived, and both verifiers pass requests.
    registryProcess = await start('registry.yaml', registryYaml);
    const listed = (await (await fetch(`${registry}services/${issuer}/keys`)).json()) as { keys: Array<{ kid: string }> };
    expect(listed.keys.map((key) => key.kid)).toEqual([kid]);
    const backAt = performance.now();
    expect(await throughCold()).toMatchObject({ status: 200 });
    const recoveryMs = performance.now() - backAt;
    expect(await throughCached()).toMatchObject({ status: 200 });
    expect(echo.seen.map((seen) => kidOf(seen.headers.authorization))).toEqual(Array(23).fill(kid));
    // No new key was published while the registry was away or after it came back.
    expect(registryProcess.logLines().filter((line) => /key (published|rotated)/.test(line.msg ?? ''))).toEqual([]);
    console.info(`registry back: the first request through the verifier that never had the key (its first verified request) took ${recoveryMs.toFixed(0)} ms`);
  });
});

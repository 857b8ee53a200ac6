/**
 * examples/keyregistry as its README walks through it: the commands are read from the README and
 * run (the example's fixed ports swapped for free ones), and the outputs the README shows are
 * compared with the real ones, key ids and times aside.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freeLoopbackPort, repoRoot } from '@jwtproxy/testkit';
import { httpGet, parseLogfmt, runCli, startCli, tempDir, type RunningCli } from './helpers.js';

const exampleDir = path.join(repoRoot, 'examples/keyregistry');
const exampleCommands = {
  startService: 'node examples/keyregistry/service.mjs &',
  startJwtProxy: 'pnpm jwtproxy -config examples/keyregistry/config.yaml',
  exportAdmin: 'export JWTPROXY_REGISTRY_TOKEN=… JWTPROXY_REGISTRY_URL=http://127.0.0.1:8081',
  signedRequest: 'curl --proxy http://127.0.0.1:3128 http://127.0.0.1:8082/',
  unsignedRequest: 'curl http://127.0.0.1:8082/',
  listPending: 'pnpm -s jwtproxy keyregistry list --state pending',
};
const approveCommand = /^pnpm -s jwtproxy keyregistry approve frontend ([\w-]{43}=)$/m;

/** Key ids and times differ from run to run. */
const normalise = (text: string): string => text.replace(/[\w-]{43}=/g, '<kid>').replace(/\d{4}-\d\d-\d\dT[\d:.]+Z/g, '<time>').trimEnd();

let readme: string;
let files: Awaited<ReturnType<typeof tempDir>>;
let service: ChildProcess | undefined;
let jwtproxy: RunningCli | undefined;

beforeAll(async () => {
  readme = await readFile(path.join(exampleDir, 'README.md'), 'utf8');
  files = await tempDir();
});
afterAll(async () => {
  await jwtproxy?.stop();
  service?.kill();
  await files.cleanup();
});

/** The example's ports (web service, registry, verifier, signer) mapped to free ones. */
async function portMap(): Promise<(text: string) => string> {
  const ports = new Map<string, number>();
  for (const port of ['8080', '8081', '8082', '3128']) ports.set(port, await freeLoopbackPort());
  return (text) => text.replace(/\b(8080|8081|8082|3128)\b/g, (port) => String(ports.get(port)));
}

/** `pnpm [-s] jwtproxy ARGS` as the CLI's own arguments. */
const cliArgs = (command: string): string[] => command.replace(/^pnpm (-s )?jwtproxy /, '').split(' ');

describe('examples/keyregistry', () => {
  it('the README steps work as written: pending key, 502, list, approve, 200, 403 without the signer, restart without approval', async () => {
    for (const command of Object.values(exampleCommands)) expect(readme).toContain(command);
    const readmeKid = approveCommand.exec(readme)?.[1];
    expect(readmeKid).toBeDefined();

    const local = await portMap();
    const adminEnv = { JWTPROXY_REGISTRY_TOKEN: 'example-admin-token-0a1b2c3d4e5f', JWTPROXY_REGISTRY_URL: local('http://127.0.0.1:8081') };

    // 1. Start it: the web service and jwtproxy (the configuration copied with free ports; its
    //    relative state/ paths then land in the temporary directory).
    service = spawn(process.execPath, [exampleCommands.startService.split(' ')[1]!], { cwd: repoRoot, env: { ...process.env, PORT: local('8080') }, stdio: ['ignore', 'pipe', 'inherit'] });
    const [firstLine] = (await once(service.stdout!, 'data')) as [Buffer];
    expect(firstLine.toString()).toBe(`web service listening on ${local('http://127.0.0.1:8080')}\n`);
    const [, config] = cliArgs(exampleCommands.startJwtProxy);
    const configCopy = await files.write('config.yaml', local(await readFile(path.join(repoRoot, config!), 'utf8')));
    jwtproxy = await startCli(['-config', configCopy], { env: { JWTPROXY_REGISTRY_TOKEN: adminEnv.JWTPROXY_REGISTRY_TOKEN } });
    expect(jwtproxy.servers).toEqual({
      keyregistry: local('http://127.0.0.1:8081'),
      signer_proxy: local('http://127.0.0.1:3128'),
      'verifier_proxies[0]': local('http://127.0.0.1:8082'),
    });
    const published = parseLogfmt(await jwtproxy.waitForLog(/msg="published a new key; waiting for its approval in the key registry"/));
    const kid = published.kid!;
    expect(readme).toContain(`msg="published a new key; waiting for its approval in the key registry" issuer=frontend kid="${readmeKid}"`);

    // 2. Before approval the signer refuses to sign.
    const [, proxy, target] = exampleCommands.signedRequest.split(' ').slice(1);
    const beforeApproval = await httpGet(local(target!), { proxy: local(proxy!) });
    expect(beforeApproval.status).toBe(502);
    expect(readme).toContain(`answers 502:\n\n\`\`\`\n${beforeApproval.body}\n\`\`\``);

    // 3. The pending key, listed as the README shows it.
    const listed = await runCli(cliArgs(exampleCommands.listPending), { env: adminEnv });
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.stdout).toContain(`frontend  ${kid}  pending  RS256`);
    expect(normalise(readme)).toContain(normalise(listed.stdout));

    // 4. Approve it.
    const approved = await runCli(cliArgs(approveCommand.exec(readme)![0].replace(readmeKid!, kid)), { env: adminEnv });
    expect(approved.code, approved.stderr).toBe(0);
    expect(normalise(readme)).toContain(normalise(approved.stdout));
    await jwtproxy.waitForLog(/msg="the key registry approved the key; signing with it"/);
    expect(readme).toContain('msg="the key registry approved the key; signing with it"');

    // 5. A signed request passes; without the signer, 403.
    const signed = await httpGet(local(target!), { proxy: local(proxy!) });
    expect(signed).toEqual({ status: 200, body: `Hello from the web service. You are frontend, your token was signed with key ${kid}\n` });
    expect(normalise(readme)).toContain(normalise(signed.body));
    const unsigned = await httpGet(local(exampleCommands.unsignedRequest.split(' ')[1]!));
    expect(unsigned.status).toBe(403);
    expect(readme).toContain(`${exampleCommands.unsignedRequest}\n\`\`\`\n\n\`\`\`\n${unsigned.body}\n\`\`\``);

    // And then: a restart reuses the saved key with no new approval.
    expect((await jwtproxy.stop('SIGINT')).code).toBe(0);
    jwtproxy = await startCli(['-config', configCopy], { env: { JWTPROXY_REGISTRY_TOKEN: adminEnv.JWTPROXY_REGISTRY_TOKEN } });
    expect(await httpGet(local(target!), { proxy: local(proxy!) })).toEqual(signed);
    expect(jwtproxy.logLines()).toContainEqual(expect.objectContaining({ msg: 'reusing the saved key, which the key registry approves', kid }));
    expect(readme).toContain('msg="reusing the saved key, which the key registry approves"');
  });
});

/**
 * Issue 14: a plugin declares its component once (type, options schema, create) and registers it
 * in the runtime the CLI hands it, as the built-ins are registered. The sample plugin of
 * examples/plugin-nonce-store/ (a nonce store that keeps nonces in a file), through the real
 * jwtproxy command with --plugin: its typed options are used, and its option mistakes follow the
 * rules of every component.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freeLoopbackPort, interop, repoRoot, startEchoService, type RunningServer, type SeenRequest } from '@jwtproxy/testkit';
import { httpRequest, mintToken, runCli, startCli, tempDir, type RunningCli } from './helpers.js';

const plugin = path.join(repoRoot, 'examples/plugin-nonce-store/file-nonce-store.mjs');

let files: Awaited<ReturnType<typeof tempDir>>;
let service: RunningServer & { seen: SeenRequest[] };
const running: RunningCli[] = [];

beforeAll(async () => {
  files = await tempDir();
  service = await startEchoService();
});

afterAll(async () => {
  await Promise.all(running.map((cli) => cli.stop('SIGKILL')));
  await service?.close();
  await files?.cleanup();
});

/** A verifier whose nonce storage is the plugin's, with `options` (YAML lines under `options:`, from line 11). */
function config(port: number, options: string[]): string {
  return [
    'jwtproxy:', // 1
    '  verifier_proxies:', // 2
    `  - listen_addr: 127.0.0.1:${port}`, // 3
    '    verifier:', // 4
    `      upstream: ${service.url}`, // 5
    `      audience: http://127.0.0.1:${port}`, // 6
    `      key_server: {type: preshared, options: {issuer: ${interop.issuer}, key_id: ${interop.keyId}, public_key_path: ${interop.publicKeyPath}}}`, // 7
    '      nonce_storage:', // 8
    '        type: file', // 9
    '        options:', // 10
    ...options.map((line) => `          ${line}`), // 11…
    '',
  ].join('\n');
}

/** The one error line of a start that failed. */
async function startError(options: string[]): Promise<string[]> {
  await files.write('bad.yaml', config(await freeLoopbackPort(), options));
  const result = await runCli(['-config', 'bad.yaml', '--plugin', plugin], { cwd: files.dir });
  expect(result.code).toBe(1);
  return result.stderr.split('\n').filter((line) => line.startsWith('jwtproxy: '));
}

describe('a nonce store plugin registered through the runtime (examples/plugin-nonce-store)', () => {
  it('is used with its typed options: a replay is refused, also after a restart of the verifier', async () => {
    const port = await freeLoopbackPort();
    const file = await files.write('verifier.yaml', config(port, ['path: nonces.jsonl', 'sync_interval: 0s']));
    const url = `http://127.0.0.1:${port}/hello`;
    const token = `Bearer ${await mintToken(`http://127.0.0.1:${port}`)}`;

    const first = await startCli(['-config', file, '--plugin', plugin]);
    running.push(first);
    await first.waitForLog(/msg="file nonce store opened" path=\S+nonces\.jsonl nonces=0/);
    expect(first.stderr()).not.toMatch(/deprecated/);
    expect((await httpRequest(url, { headers: { authorization: token } })).status).toBe(200);
    expect(await httpRequest(url, { headers: { authorization: token } })).toMatchObject({
      status: 403,
      body: "jwtproxy: unable to verify request: Missing or invalid 'jti' claim",
    });
    expect((await first.stop('SIGTERM')).code).toBe(0);
    // `path` was read relative to the configuration file; the jti is in it.
    const jti = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()).jti as string;
    expect(await readFile(path.join(files.dir, 'nonces.jsonl'), 'utf8')).toContain(JSON.stringify(jti));

    // A new process: the built-in `local` store would have forgotten the token; this one has not.
    const second = await startCli(['-config', file, '--plugin', plugin]);
    running.push(second);
    await second.waitForLog(/msg="file nonce store opened" path=\S+nonces\.jsonl nonces=1/);
    expect((await httpRequest(url, { headers: { authorization: token } })).status).toBe(403);
    const fresh = `Bearer ${await mintToken(`http://127.0.0.1:${port}`)}`;
    expect((await httpRequest(url, { headers: { authorization: fresh } })).status).toBe(200);
    expect((await second.stop('SIGTERM')).code).toBe(0);
  });

  it("its option mistakes stop the start like a built-in's: key path, file:line, did you mean", async () => {
    const at = 'verifier_proxies[0].verifier.nonce_storage.options';
    expect(await startError(['path: n.jsonl', 'max_entrys: 10'])).toEqual([
      `jwtproxy: ${at}.max_entrys: unknown option: did you mean max_entries? (known: path, max_entries, sync_interval) (bad.yaml:12)`,
    ]);
    expect(await startError(['path: n.jsonl', 'sync_interval: -1s'])).toEqual([`jwtproxy: ${at}.sync_interval: must be 0 or more, got "-1s" (bad.yaml:12)`]);
    expect(await startError(['path: n.jsonl', 'sync_interval: 5'])).toEqual([`jwtproxy: ${at}.sync_interval: 5 is not a duration (give a unit, as in "5s") (bad.yaml:12)`]);
    expect(await startError(['path: n.jsonl', 'max_entries: 0'])).toEqual([`jwtproxy: ${at}.max_entries: must be 1 or more, got 0 (bad.yaml:12)`]);
    expect(await startError(['max_entries: 10'])).toEqual([`jwtproxy: ${at}.path: is required (bad.yaml:10)`]);
  });
});

/**
 * Start-up loads only what the configuration uses (issue 19): a signer without a CA and a
 * verifier on local nonces never load node-forge, ioredis, prom-client or jose; a CA loads
 * node-forge; the cold path (--help, -check) loads neither proxy. The real CLI runs with an
 * `--import` hook that writes every module URL it resolves to a file, and a `--require` hook the
 * files in require.cache at exit. The command is a bundle (bundle/build.mjs): a file of it stands
 * for the packages dist/bundle-contents.json lists for it; a module from node_modules or a
 * package's dist (@jwtproxy/core, a plugin's imports) for its own.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeCa, writePemFiles } from '@jwtproxy/testkit';
import { e2eConfig, jwtproxyConfig, runCli, startCli, tempDir } from './helpers.js';

let files: Awaited<ReturnType<typeof tempDir>>;
let hook: string;
let requireHook: string;

beforeAll(async () => {
  files = await tempDir();
  // The resolve hook runs on the loader thread: it appends each module URL it resolves.
  const resolver = await files.write(
    'record-resolve.mjs',
    `import { appendFileSync } from 'node:fs';
let file;
export function initialize(data) { file = data.file; }
export async function resolve(specifier, context, next) {
  const resolved = await next(specifier, context);
  if (resolved.url.startsWith('file:')) appendFileSync(file, resolved.url + '\\n');
  return resolved;
}
`,
  );
  hook = await files.write(
    'record.mjs',
    `import { register } from 'node:module';
register(${JSON.stringify(pathToFileURL(resolver).href)}, { data: { file: process.env.JWTPROXY_TEST_LOADED } });
`,
  );
  // The command's bundle is CommonJS (bundle/build.mjs), which resolve hooks do not see on Node 20:
  // the files in require.cache when the process exits are recorded too.
  requireHook = await files.write(
    'record-required.cjs',
    `const { appendFileSync } = require('node:fs');
const { pathToFileURL } = require('node:url');
process.on('exit', () => {
  const urls = Object.keys(require.cache).map((file) => pathToFileURL(file).href);
  appendFileSync(process.env.JWTPROXY_TEST_LOADED, urls.join('\\n') + '\\n');
});
`,
  );
});

afterAll(async () => {
  await files?.cleanup();
});

const cliDist = new URL('../dist/', import.meta.url).href;
/** dist/bundle-contents.json: for each file of the bundle, the packages whose code it holds. */
const bundleContents = JSON.parse(readFileSync(new URL('../dist/bundle-contents.json', import.meta.url), 'utf8')) as Record<string, string[]>;

/** The packages a module URL holds code of. */
function packagesOf(url: string): string[] {
  if (url.startsWith(cliDist)) return bundleContents[url.slice(cliDist.length)] ?? ['@jwtproxy/cli'];
  const inModules = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\/(?!.*\/node_modules\/)/.exec(url);
  const inWorkspace = /\/packages\/([^/]+)\/dist\//.exec(url);
  return inModules ? [inModules[1]!] : inWorkspace ? [`@jwtproxy/${inWorkspace[1]}`] : [];
}

/** The packages a run of the CLI loaded, by name. */
async function loadedBy(args: string[], name: string, { start }: { start: boolean }): Promise<Set<string>> {
  const record = `${files.dir}/loaded-${name}.txt`;
  const env = { NODE_OPTIONS: `--import ${pathToFileURL(hook).href} --require ${requireHook}`, JWTPROXY_TEST_LOADED: record };
  if (start) {
    // One thread: the hook records what the main thread loads (worker threads record their own).
    const cli = await startCli([...args, '-workers', '1'], { env });
    await cli.stop();
  } else {
    const result = await runCli(args, { env });
    expect(result.code, result.stderr).toBe(0);
  }
  return new Set(readFileSync(record, 'utf8').split('\n').filter(Boolean).flatMap(packagesOf));
}

const signerAndVerifier = (extraSigner: string[] = []): string =>
  jwtproxyConfig({
    signer: e2eConfig.signer({ extra: extraSigner }),
    verifiers: [e2eConfig.verifier({ upstream: 'http://127.0.0.1:9', audience: 'http://127.0.0.1:9', nonceStorage: '{type: local, options: {max_entries: 1000}}' })],
  });

describe('start-up loads only what the configuration uses', () => {
  it('a signer without a CA and a verifier on local nonces load neither node-forge, ioredis, prom-client nor jose', async () => {
    const config = await files.write('plain.yaml', signerAndVerifier());
    const loaded = await loadedBy(['-config', config], 'plain', { start: true });
    // The hook works: the proxies it started are in the record.
    expect(loaded).toContain('@jwtproxy/forward-proxy');
    expect(loaded).toContain('@jwtproxy/reverse-proxy');
    for (const absent of ['node-forge', 'ioredis', 'prom-client', 'jose', '@jwtproxy/admin', '@jwtproxy/keyregistry-server']) {
      expect(loaded, absent).not.toContain(absent);
    }
    // undici's WebAssembly HTTP parser (2 x 72 KB of base64 source) waits for the first upstream
    // response in files of its own (bundle/build.mjs), which is why the file names are checked here.
    const urls = readFileSync(`${files.dir}/loaded-plain.txt`, 'utf8').split('\n');
    expect(urls.some((url) => url.includes('/dist/chunk-')), 'the record lists bundle files').toBe(true);
    expect(urls.filter((url) => /\/undici-llhttp[^/]*\.cjs$/.test(url))).toEqual([]);
  }, 30_000);

  it("the bundle's files hold no character above U+00FF (V8 would keep such a file's source at two bytes a character)", () => {
    for (const file of Object.keys(bundleContents)) {
      const text = readFileSync(new URL(`../dist/${file}`, import.meta.url), 'utf8');
      expect(/[^\x00-\xff]/.exec(text)?.[0], file).toBeUndefined();
    }
    expect(Object.keys(bundleContents)).toContain('undici-llhttp-simd-wasm.cjs');
  });

  it('a signer with a CA loads node-forge (and still not ioredis)', async () => {
    const ca = await writePemFiles(makeCa('jwtproxy lazy-loading CA'), files.dir, 'ca');
    const config = await files.write('ca.yaml', signerAndVerifier([`ca_key_file: ${JSON.stringify(ca.keyFile)}`, `ca_crt_file: ${JSON.stringify(ca.certFile)}`]));
    const loaded = await loadedBy(['-config', config], 'ca', { start: true });
    expect(loaded).toContain('node-forge');
    expect(loaded).not.toContain('ioredis');
  }, 30_000);

  it('a signer and a verifier on preshared keys, started as users run the command, never load node:fs/promises', async () => {
    // ~0.7 MB of a sidecar's idle RSS (issue 19): the configuration and key files are read with
    // node:fs, and fs/promises loads when a unix socket or a saved key needs it. Through
    // bin/jwtproxy.js (CommonJS), as Node's ES module loader loads internal/fs/promises itself.
    const config = await files.write('builtins.yaml', signerAndVerifier());
    const record = `${files.dir}/builtins.txt`;
    const builtinsHook = await files.write(
      'record-builtins.cjs',
      `process.on('exit', () => require('node:fs').writeFileSync(process.env.JWTPROXY_TEST_LOADED, process.moduleLoadList.join('\\n')));`,
    );
    const cli = await startCli(['-config', config, '-workers', '1'], {
      command: [process.execPath, fileURLToPath(new URL('../bin/jwtproxy.js', import.meta.url))],
      env: { NODE_OPTIONS: `--require ${builtinsHook}`, JWTPROXY_TEST_LOADED: record },
    });
    await cli.stop();
    const builtins = new Set(readFileSync(record, 'utf8').split('\n').filter((line) => line.startsWith('NativeModule ')).map((line) => line.slice('NativeModule '.length)));
    // The record works: the proxies' own built-ins are in it.
    expect(builtins).toContain('http');
    expect(builtins).toContain('fs');
    expect(builtins).not.toContain('fs/promises');
    expect(builtins).not.toContain('internal/fs/promises');
  }, 30_000);

  it('-check and --help load no proxy, node-forge nor ioredis', async () => {
    const config = await files.write('check.yaml', signerAndVerifier());
    for (const [name, args] of [
      ['check', ['-check', '-config', config]],
      ['help', ['--help']],
    ] as const) {
      const loaded = await loadedBy([...args], name, { start: false });
      for (const absent of ['node-forge', 'ioredis', 'prom-client', '@jwtproxy/forward-proxy', '@jwtproxy/reverse-proxy']) {
        expect(loaded, `${name}: ${absent}`).not.toContain(absent);
      }
    }
  }, 30_000);
});

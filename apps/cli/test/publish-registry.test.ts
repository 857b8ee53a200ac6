/**
 * A release as users get it, through a real npm registry on loopback:
 *
 * 1. The workspace is copied to a temporary folder (with its builds), where `changeset version`
 *    versions the packages from the pending changesets and `pnpm release` (`pnpm publish -r`, as
 *    pnpm's guide to changesets has it) publishes every package that is not private to a
 *    Verdaccio started here. (`changeset publish` does the same with an `npm info` and a pnpm
 *    process per package: this file took 103 s of CPU and 198 s on a busy machine with it,
 *    48 s and 86 s with `pnpm publish -r`.)
 * 2. In an empty folder whose only registry is that one, `npx @jwtproxy/cli -config config.yaml`
 *    runs a signer and a verifier: a request through the signer passes (200), one without a
 *    token is refused (403). SIGTERM to npx alone stops jwtproxy too.
 * 3. In another empty folder, a program that installs only `@jwtproxy/reverse-proxy`,
 *    `@jwtproxy/nonce-store-redis` and `@jwtproxy/core` (the embedding program of
 *    docs/install.md, as written there) serves as a verifier with its nonces in Redis.
 *
 * Verdaccio 6.8.0 (the newest that runs on Node 20) is installed by this test, not by the
 * workspace: users who clone the repository never download it. `npm ci` from
 * test/fixtures/verdaccio/package-lock.json pins it, into a folder in the OS temp dir kept for
 * later runs (about 30 s once per machine). Its storage is a new temp folder each run; packages
 * other than @jwtproxy/* come through it from the npm registry.
 * Needs every package built (turbo's test task builds them first) and Redis at 127.0.0.1:6379.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freeLoopbackPort, interop, repoRoot, startEchoService, type RunningServer, type SeenRequest } from '@jwtproxy/testkit';
import { claimsOf, httpRequest, mintToken, startCli, tempDir } from './helpers.js';

const run = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
const NPM_REGISTRY = 'https://registry.npmjs.org/';
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

/** The npm/pnpm settings a pnpm or turbo parent passes down, each set to undefined (spawn drops those). */
const parentNpmSettings: NodeJS.ProcessEnv = Object.fromEntries(
  Object.keys(process.env)
    .filter((key) => /^npm_config_/i.test(key))
    .map((key) => [key, undefined]),
);
const cleanEnv: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^npm_config_/i.test(key)));

interface Manifest {
  name: string;
  version: string;
  private?: boolean;
  dependencies?: Record<string, string>;
}

function readManifest(dir: string): Manifest {
  return JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as Manifest;
}

/** The workspace's packages (pnpm-workspace.yaml: packages/*, apps/*, examples/*, bench), relative to `root`. */
function workspacePackageDirs(root: string): string[] {
  const dirs = ['bench'];
  for (const group of ['packages', 'apps', 'examples']) for (const name of readdirSync(path.join(root, group))) dirs.push(`${group}/${name}`);
  return dirs.filter((dir) => existsSync(path.join(root, dir, 'package.json')));
}

/** Installs the pinned Verdaccio once per machine into the OS temp dir; returns its start script. */
async function installVerdaccio(): Promise<string> {
  const fixture = path.join(here, 'fixtures/verdaccio');
  const key = createHash('sha256')
    .update(readFileSync(path.join(fixture, 'package.json')))
    .update(readFileSync(path.join(fixture, 'package-lock.json')))
    .digest('hex')
    .slice(0, 12);
  const dir = path.join(tmpdir(), `jwtproxy-test-verdaccio-${key}`);
  const start = path.join(dir, 'node_modules/verdaccio/bin/verdaccio');
  if (existsSync(path.join(dir, '.installed'))) return start;
  const partial = `${dir}.partial-${process.pid}`;
  rmSync(partial, { recursive: true, force: true });
  mkdirSync(partial, { recursive: true });
  for (const file of ['package.json', 'package-lock.json']) copyFileSync(path.join(fixture, file), path.join(partial, file));
  await run('npm', ['ci', '--no-audit', '--no-fund', '--ignore-scripts', '--no-update-notifier', '--loglevel=error', `--registry=${NPM_REGISTRY}`], {
    cwd: partial,
    env: cleanEnv,
    timeout: 240_000,
  });
  writeFileSync(path.join(partial, '.installed'), '');
  try {
    renameSync(partial, dir);
  } catch (error) {
    // Another test process installed it meanwhile.
    rmSync(partial, { recursive: true, force: true });
    if (!existsSync(path.join(dir, '.installed'))) throw error;
  }
  return start;
}

interface Registry {
  url: string;
  storage: string;
  /** A .npmrc for publishing: the registry and a token of a user made for this run. */
  publishNpmrc: string;
  process: ChildProcess;
  log(): string;
}

/**
 * The CA file npm itself is configured with (`npm config get cafile`), for Verdaccio's uplink: on
 * a machine whose way to the npm registry needs an extra CA, npm has it in its config, but a Node
 * process started by the test suite may not have NODE_EXTRA_CA_CERTS (turbo passes tasks only the
 * variables it is told to), and the uplink would then fail every fetch (404 to the client).
 */
function uplinkTlsEnv(): NodeJS.ProcessEnv {
  if (process.env.NODE_EXTRA_CA_CERTS) return {};
  try {
    const cafile = execFileSync('npm', ['config', 'get', 'cafile'], { encoding: 'utf8', env: cleanEnv }).trim();
    return cafile && cafile !== 'null' && cafile !== 'undefined' && existsSync(cafile) ? { NODE_EXTRA_CA_CERTS: cafile } : {};
  } catch {
    return {};
  }
}

async function startRegistry(work: string): Promise<Registry> {
  const start = await installVerdaccio();
  const port = await freeLoopbackPort();
  const url = `http://127.0.0.1:${port}/`;
  const storage = path.join(work, 'registry-storage');
  const config = path.join(work, 'verdaccio.yaml');
  writeFileSync(
    config,
    [
      `storage: ${JSON.stringify(storage)}`,
      'auth:',
      `  htpasswd: {file: ${JSON.stringify(path.join(work, 'htpasswd'))}, max_users: 5}`,
      'uplinks:',
      `  npmjs: {url: ${NPM_REGISTRY}, timeout: 60s}`,
      'packages:',
      "  '@jwtproxy/*': {access: $all, publish: $authenticated}", // never from the npm registry
      "  '**': {access: $all, publish: $authenticated, proxy: npmjs}",
      'web: {enable: false}',
      'log: {type: stdout, format: pretty, level: warn}',
      '',
    ].join('\n'),
  );
  const child = spawn(process.execPath, [start, '--config', config, '--listen', `127.0.0.1:${port}`], { cwd: work, env: { ...cleanEnv, ...uplinkTlsEnv() }, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (log += chunk));
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (log += chunk));
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`Verdaccio exited (${child.exitCode}):\n${log}`);
    const ping = await fetch(`${url}-/ping`).catch(() => undefined);
    if (ping?.ok) break;
    if (Date.now() > deadline) throw new Error(`Verdaccio did not answer within 60 s:\n${log}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const user = await fetch(`${url}-/user/org.couchdb.user:release`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'release', password: `release-${process.pid}-${Date.now()}` }),
  });
  const { token } = (await user.json()) as { token?: string };
  if (!user.ok || !token) throw new Error(`Verdaccio refused to make a user (${user.status})`);
  const publishNpmrc = path.join(work, 'publish.npmrc');
  writeFileSync(publishNpmrc, `registry=${url}\n//127.0.0.1:${port}/:_authToken=${token}\n`);
  return { url, storage, publishNpmrc, process: child, log: () => log };
}

async function stopProcess(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
}

/** A folder as a user starts with: nothing in it but a .npmrc naming the test registry. */
/** Installs `packages` from the test registry in a scratch folder, up to 3 times: the registry then holds their dependencies. */
async function throughUplink(registryUrl: string, work: string, packages: string[]): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const scratch = userFolder(work, `uplink-${attempt}`, registryUrl);
    try {
      await run('npm', ['install', '--no-save', '--ignore-scripts', ...packages], { cwd: scratch.dir, env: scratch.env, timeout: 120_000 });
      return;
    } catch (error) {
      if (attempt >= 3) throw error;
      await new Promise((resolve) => setTimeout(resolve, 2_000 * attempt));
    }
  }
}

function userFolder(work: string, name: string, registryUrl: string): { dir: string; env: NodeJS.ProcessEnv } {
  const dir = path.join(work, name);
  mkdirSync(dir);
  writeFileSync(path.join(dir, '.npmrc'), `registry=${registryUrl}\n`);
  const emptyUserConfig = path.join(work, 'empty.npmrc');
  writeFileSync(emptyUserConfig, '');
  return {
    dir,
    env: {
      ...parentNpmSettings,
      npm_config_userconfig: emptyUserConfig, // nothing from the machine's ~/.npmrc
      npm_config_cache: path.join(work, `npm-cache-${name}`),
      npm_config_update_notifier: 'false',
      npm_config_audit: 'false',
      npm_config_fund: 'false',
    },
  };
}

let work: Awaited<ReturnType<typeof tempDir>>;
let registry: Registry | undefined;
let service: RunningServer & { seen: SeenRequest[] };
/** Version of each public package after `changeset version`. */
const released = new Map<string, string>();

beforeAll(async () => {
  work = await tempDir();
  service = await startEchoService();
  registry = await startRegistry(work.dir);
}, 300_000);

afterAll(async () => {
  await stopProcess(registry?.process);
  await service?.close();
  await work?.cleanup();
});

describe('a release through an npm registry', () => {
  it('changeset version, then pnpm release (pnpm publish -r) puts every public package on the registry, and nothing private', async () => {
    const copy = path.join(work.dir, 'repo');
    cpSync(repoRoot, copy, {
      recursive: true,
      filter: (source) => {
        const relative = path.relative(repoRoot, source);
        return !/(^|\/)(node_modules|\.git|\.turbo|coverage)(\/|$)|^tmp(\/|$)|\.vitest-results\.json$|\.tgz$/.test(relative);
      },
    });
    const pending = readdirSync(path.join(copy, '.changeset')).filter((name) => name.endsWith('.md') && name !== 'README.md');
    const bumped = new Set<string>();
    for (const name of pending) {
      const front = /^---\n([\s\S]*?)\n---/.exec(readFileSync(path.join(copy, '.changeset', name), 'utf8'))?.[1] ?? '';
      for (const match of front.matchAll(/^["']?(@jwtproxy\/[\w-]+)["']?\s*:/gm)) bumped.add(match[1]!);
    }
    const dirs = workspacePackageDirs(copy);
    const before = new Map(dirs.map((dir) => [dir, readManifest(path.join(copy, dir))]));
    const publicDirs = dirs.filter((dir) => !before.get(dir)!.private);

    const env = { ...cleanEnv, CI: 'true', npm_config_update_notifier: 'false' };
    // Links between the workspace packages, which `pnpm publish` reads the versions from.
    await run('pnpm', ['install', '--prefer-offline', '--ignore-scripts', '--no-frozen-lockfile', '--config.confirmModulesPurge=false'], { cwd: copy, env, timeout: 120_000 });
    await run(path.join(copy, 'node_modules/.bin/changeset'), ['version'], { cwd: copy, env, timeout: 60_000 });

    expect(readdirSync(path.join(copy, '.changeset')).filter((name) => name.endsWith('.md') && name !== 'README.md'), 'every changeset is used up').toEqual([]);
    for (const dir of publicDirs) {
      const { name, version } = readManifest(path.join(copy, dir));
      released.set(name, version);
      if (bumped.has(name)) {
        expect(version, `${name} has a pending changeset`).not.toBe(before.get(dir)!.version);
        expect(readFileSync(path.join(copy, dir, 'CHANGELOG.md'), 'utf8'), name).toContain(`## ${version}`);
      }
    }

    // `pnpm release` (pnpm publish -r): every package that is not private, whose version the
    // registry does not have yet. No git here, so without pnpm's branch and clean-tree checks.
    const published = await run('pnpm', ['run', 'release', '--no-git-checks'], {
      cwd: copy,
      env: { ...env, npm_config_registry: registry!.url, npm_config_userconfig: registry!.publishNpmrc, npm_config_cache: path.join(work.dir, 'npm-cache-publish') },
      timeout: 240_000,
    });
    for (const name of released.keys()) expect(published.stdout, name).toContain(`+ ${name}@${released.get(name)}`);

    // What the registry holds: exactly the public packages, at their new versions, with real ranges.
    expect(readdirSync(path.join(registry!.storage, '@jwtproxy')).sort()).toEqual([...released.keys()].map((name) => name.slice('@jwtproxy/'.length)).sort());
    for (const [name, version] of released) {
      const answer = await fetch(`${registry!.url}${name.replace('/', '%2f')}`);
      expect(answer.status, name).toBe(200);
      const packument = (await answer.json()) as { 'dist-tags': Record<string, string>; versions: Record<string, Manifest> };
      expect(packument['dist-tags'].latest, name).toBe(version);
      for (const [dependency, range] of Object.entries(packument.versions[version]?.dependencies ?? {})) {
        expect(range, `${name} → ${dependency}`).not.toMatch(/^workspace:/);
        if (dependency.startsWith('@jwtproxy/')) expect(range, `${name} → ${dependency}`).toBe(`^${released.get(dependency)}`);
      }
    }
    for (const dir of dirs.filter((d) => before.get(d)!.private)) expect(released.has(before.get(dir)!.name), dir).toBe(false);
  }, 300_000);

  it('in an empty folder with only that registry: `npx @jwtproxy/cli -config config.yaml` runs a signer and a verifier (signed 200, unsigned 403)', async () => {
    expect(released.get('@jwtproxy/cli'), 'published by the test before').toBeDefined();
    const user = userFolder(work.dir, 'npx-user', registry!.url);
    copyFileSync(interop.privateKeyPath, path.join(user.dir, 'mykey.key'));
    copyFileSync(interop.publicKeyPath, path.join(user.dir, 'mykey.pub'));
    const verifierPort = await freeLoopbackPort();
    const audience = `http://127.0.0.1:${verifierPort}`;
    writeFileSync(
      path.join(user.dir, 'config.yaml'),
      [
        'jwtproxy:',
        '  signer_proxy:',
        '    listen_addr: 127.0.0.1:0',
        '    signer:',
        `      issuer: ${interop.issuer}`,
        `      private_key: {type: preshared, options: {key_id: ${interop.keyId}, private_key_path: mykey.key}}`,
        '  verifier_proxies:',
        `  - listen_addr: 127.0.0.1:${verifierPort}`,
        '    verifier:',
        `      upstream: ${service.url}`,
        `      audience: ${audience}`,
        `      key_server: {type: preshared, options: {issuer: ${interop.issuer}, key_id: ${interop.keyId}, public_key_path: mykey.pub}}`,
        '',
      ].join('\n'),
    );

    // The registry fetches everything but @jwtproxy/* from the npm registry (its uplink), which can
    // fail for a moment: fetch it all once first, with a retry, so that a passing network hiccup is
    // not taken for a broken release. The user's own folder and npm cache stay untouched.
    await throughUplink(registry!.url, work.dir, ['@jwtproxy/cli', '@jwtproxy/reverse-proxy', '@jwtproxy/nonce-store-redis']);

    // As the README says it, in a process group of its own: SIGTERM to the group stops it (npx dies
    // of it without passing it on; jwtproxy gets it once).
    const cli = await startCli(['-config', 'config.yaml'], { cwd: user.dir, env: user.env, command: ['npx', '@jwtproxy/cli'], processGroup: true, timeoutMs: 120_000 });
    try {
      const signer = cli.servers.signer_proxy!;
      const signed = await httpRequest(`${audience}/hello`, { proxy: signer });
      expect(signed.status).toBe(200);
      const seen = JSON.parse(signed.body) as SeenRequest;
      expect(seen.url).toBe('/hello');
      expect(claimsOf(seen.headers.authorization as string)).toMatchObject({ iss: interop.issuer, aud: audience });
      expect(await httpRequest(`${audience}/hello`)).toMatchObject({ status: 403, body: 'jwtproxy: unable to verify request: Could not parse JWT' });
    } finally {
      const stopped = await cli.stop('SIGTERM');
      expect(stopped.stderr).toMatch(/msg="shutting down" signal=SIGTERM[\s\S]*msg="stopped"/);
    }
    // npx installed the released version from this registry, nothing from anywhere else.
    const npxRoot = path.join(user.env.npm_config_cache!, '_npx');
    const installs = readdirSync(npxRoot).map((hash) => path.join(npxRoot, hash, 'node_modules/@jwtproxy/cli'));
    expect(installs.filter(existsSync).map((dir) => readManifest(dir).version)).toEqual([released.get('@jwtproxy/cli')]);
    for (const hash of readdirSync(npxRoot)) {
      const lockFile = path.join(npxRoot, hash, 'node_modules/.package-lock.json');
      expect(existsSync(lockFile), lockFile).toBe(true);
      const lock = JSON.parse(readFileSync(lockFile, 'utf8')) as { packages: Record<string, { resolved?: string }> };
      for (const [where, entry] of Object.entries(lock.packages)) {
        if (entry.resolved !== undefined) expect(entry.resolved.startsWith(registry!.url), `${where} from ${entry.resolved}`).toBe(true);
      }
    }

    // SIGTERM to npx alone, as `kill <pid>` or a process manager sends it: npx dies without passing
    // it on, and jwtproxy notices that npx is gone and stops as if it had been signalled.
    const second = await startCli(['-config', 'config.yaml'], { cwd: user.dir, env: user.env, command: ['npx', '@jwtproxy/cli'], timeoutMs: 60_000 });
    const stopped = await second.stop('SIGTERM');
    expect(stopped.stderr).toMatch(/msg="shutting down" signal=SIGTERM reason="npx, which started jwtproxy, has exited"[\s\S]*msg="stopped"/);
    await expect(httpRequest(`${audience}/hello`)).rejects.toThrow(/ECONNREFUSED/);
  }, 240_000);

  it('a program that installs only @jwtproxy/reverse-proxy, @jwtproxy/nonce-store-redis and @jwtproxy/core serves as a verifier (docs/install.md)', async () => {
    expect(released.get('@jwtproxy/reverse-proxy'), 'published by the test before').toBeDefined();
    const user = userFolder(work.dir, 'embedding-user', registry!.url);
    writeFileSync(path.join(user.dir, 'package.json'), JSON.stringify({ name: 'my-verifier', private: true, type: 'module' }, null, 2));
    await run('npm', ['install', '@jwtproxy/reverse-proxy', '@jwtproxy/nonce-store-redis', '@jwtproxy/core'], {
      cwd: user.dir,
      env: { ...process.env, ...user.env },
      timeout: 180_000,
    });
    const manifest = readManifest(user.dir);
    expect(Object.keys(manifest.dependencies ?? {}).sort()).toEqual(['@jwtproxy/core', '@jwtproxy/nonce-store-redis', '@jwtproxy/reverse-proxy']);
    const installed = readdirSync(path.join(user.dir, 'node_modules/@jwtproxy'));
    for (const unwanted of ['cli', 'config', 'forward-proxy', 'key-sources', 'keyregistry', 'keyregistry-server', 'nonce-stores']) expect(installed).not.toContain(unwanted);

    // The program exactly as docs/install.md shows it.
    const docs = readFileSync(path.join(repoRoot, 'docs/install.md'), 'utf8');
    const program = /<!-- embedding-program[^>]*-->\s*```js\n([\s\S]*?)```/.exec(docs)?.[1];
    expect(program, 'docs/install.md has the embedding program').toBeDefined();
    writeFileSync(path.join(user.dir, 'verifier.mjs'), program!);
    copyFileSync(interop.publicKeyPath, path.join(user.dir, 'mykey.pub'));

    const port = await freeLoopbackPort();
    const audience = `http://127.0.0.1:${port}`;
    const prefix = `jwtproxy:nonce:publish-test:${process.pid}:${Date.now()}:`;
    const verifier = spawn(process.execPath, ['verifier.mjs'], {
      cwd: user.dir,
      env: { ...cleanEnv, LISTEN_ADDR: `127.0.0.1:${port}`, UPSTREAM: service.url, AUDIENCE: audience, REDIS_URL, NONCE_PREFIX: prefix, ISSUER: interop.issuer, KEY_ID: interop.keyId },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    verifier.stdout.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
    verifier.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
    const exited = new Promise<number | null>((resolve) => verifier.on('exit', (code) => resolve(code)));
    const redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
    try {
      const deadline = Date.now() + 30_000;
      while (!output.includes('verifier listening on')) {
        if (verifier.exitCode !== null) throw new Error(`the program exited (${verifier.exitCode}):\n${output}`);
        if (Date.now() > deadline) throw new Error(`the program did not listen within 30 s:\n${output}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const token = await mintToken(audience);
      const signed = await httpRequest(`${audience}/orders?id=7`, { headers: { authorization: `Bearer ${token}` } });
      expect(signed.status).toBe(200);
      expect((JSON.parse(signed.body) as SeenRequest).url).toBe('/orders?id=7');
      await redis.connect();
      expect(await redis.exists(`${prefix}${String(claimsOf(`Bearer ${token}`).jti)}`), 'the nonce is in Redis').toBe(1);
      expect(await httpRequest(`${audience}/orders`, { headers: { authorization: `Bearer ${token}` } })).toMatchObject({
        status: 403,
        body: "jwtproxy: unable to verify request: Missing or invalid 'jti' claim",
      });
      expect(await httpRequest(`${audience}/orders`)).toMatchObject({ status: 403, body: 'jwtproxy: unable to verify request: Could not parse JWT' });
    } finally {
      verifier.kill('SIGTERM');
      const timer = setTimeout(() => verifier.kill('SIGKILL'), 10_000);
      expect(await exited, output).toBe(0);
      clearTimeout(timer);
      redis.disconnect();
    }
  }, 240_000);
});

/**
 * The packages are publishable: each publishable package is packed with `pnpm pack` (which turns
 * `workspace:^` ranges into versions), the tarballs are installed with npm into an empty folder
 * (their third-party dependencies from the npm registry, nothing else), and `npx jwtproxy -config
 * FILE` there runs a verifier that refuses an unsigned request and passes a signed one.
 * Needs every package built (turbo's test task builds them first). Takes a minute or two.
 */
import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { interop, repoRoot, startEchoService, type RunningServer, type SeenRequest } from '@jwtproxy/testkit';
import { e2eConfig, httpRequest, jwtproxyConfig, mintToken, startCli, tempDir, type RunningCli } from './helpers.js';

const run = promisify(execFile);
const NPM_REGISTRY = 'https://registry.npmjs.org/';

/** The environment for npm and pnpm: without the npm_config_* settings that a pnpm/turbo parent passes down. */
const cleanEnv: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^npm_config_/i.test(key)));

interface PackageJson {
  name: string;
  version: string;
  private?: boolean;
  bin?: Record<string, string>;
  dependencies?: Record<string, string>;
}

function readPackageJson(dir: string): PackageJson {
  return JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as PackageJson;
}

/** Every package under packages/* that is not private, and apps/cli. */
function publishablePackages(): Array<{ dir: string; manifest: PackageJson }> {
  const dirs = readdirSync(path.join(repoRoot, 'packages'))
    .map((name) => path.join(repoRoot, 'packages', name))
    .filter((dir) => existsSync(path.join(dir, 'package.json')));
  dirs.push(path.join(repoRoot, 'apps/cli'));
  return dirs.map((dir) => ({ dir, manifest: readPackageJson(dir) })).filter(({ manifest }) => !manifest.private);
}

let packDir: Awaited<ReturnType<typeof tempDir>>;
let installDir: Awaited<ReturnType<typeof tempDir>>;
let tarballs: string[];
let service: RunningServer & { seen: SeenRequest[] };

let packages: Array<{ dir: string; manifest: PackageJson }>;

beforeAll(async () => {
  packDir = await tempDir();
  installDir = await tempDir();
  service = await startEchoService();
  packages = publishablePackages();
  for (const { dir, manifest } of packages) {
    if (!existsSync(path.join(dir, 'dist/index.js'))) throw new Error(`${manifest.name} is not built (no dist/index.js): run pnpm build first`);
    await run('pnpm', ['pack', '--pack-destination', packDir.dir], { cwd: dir, env: cleanEnv });
  }
  tarballs = readdirSync(packDir.dir)
    .filter((name) => name.endsWith('.tgz'))
    .map((name) => path.join(packDir.dir, name));
}, 120_000);

afterAll(async () => {
  await service?.close();
  await packDir?.cleanup();
  await installDir?.cleanup();
});

describe('the packages as published', () => {
  it('pnpm pack: every publishable package packs, with versions instead of workspace ranges, its dist and README, no tests', async () => {
    expect(packages.map((p) => p.manifest.name).sort()).toEqual(
      expect.arrayContaining([
        '@jwtproxy/cli',
        '@jwtproxy/config',
        '@jwtproxy/core',
        '@jwtproxy/forward-proxy',
        '@jwtproxy/key-sources',
        '@jwtproxy/keyregistry',
        '@jwtproxy/keyregistry-server',
        '@jwtproxy/nonce-store-redis',
        '@jwtproxy/nonce-stores',
        '@jwtproxy/reverse-proxy',
      ]),
    );
    expect(packages.map((p) => p.manifest.name)).not.toContain('@jwtproxy/testkit');
    expect(tarballs).toHaveLength(packages.length);

    for (const tarball of tarballs) {
      const { stdout: listing } = await run('tar', ['-tzf', tarball]);
      const files = listing.split('\n').filter(Boolean);
      expect(files, tarball).toContain('package/dist/index.js');
      expect(files, tarball).toContain('package/dist/index.d.ts');
      expect(files, tarball).toContain('package/README.md');
      expect(files.filter((f) => /\.test\.|\/src\/|\/test\//.test(f)), tarball).toEqual([]);
      const { stdout: manifestText } = await run('tar', ['-xzOf', tarball, 'package/package.json']);
      const manifest = JSON.parse(manifestText) as PackageJson;
      for (const [dependency, range] of Object.entries(manifest.dependencies ?? {})) {
        expect(range, `${manifest.name} → ${dependency}`).not.toMatch(/^workspace:/);
      }
    }
  });

  it('npm install of the tarballs into an empty folder, then `npx jwtproxy -config FILE` runs a verifier: 403 without a token, 200 with one', async () => {
    writeFileSync(path.join(installDir.dir, 'package.json'), JSON.stringify({ name: 'jwtproxy-pack-check', private: true }));
    await run('npm', ['install', '--no-audit', '--no-fund', '--no-update-notifier', `--registry=${NPM_REGISTRY}`, ...tarballs], {
      cwd: installDir.dir,
      env: cleanEnv,
      timeout: 180_000,
    });

    // Our packages come from the tarballs, never from a registry; the rest only from the npm registry.
    const lock = JSON.parse(readFileSync(path.join(installDir.dir, 'package-lock.json'), 'utf8')) as {
      packages: Record<string, { resolved?: string }>;
    };
    for (const [where, entry] of Object.entries(lock.packages)) {
      if (where === '') continue;
      if (/node_modules\/@jwtproxy\//.test(where)) {
        expect(where, 'one copy of each @jwtproxy package, at the top').toMatch(/^node_modules\/@jwtproxy\/[^/]+$/);
        expect(entry.resolved, where).toMatch(/^file:/);
      } else if (entry.resolved !== undefined) {
        expect(entry.resolved.startsWith(NPM_REGISTRY), `${where} from ${entry.resolved}`).toBe(true);
      }
    }

    // A verifier configured as a user would: files beside the configuration.
    copyFileSync(interop.publicKeyPath, path.join(installDir.dir, 'mykey.pub'));
    const config = path.join(installDir.dir, 'config.yaml');
    writeFileSync(
      config,
      jwtproxyConfig({ verifiers: [e2eConfig.verifier({ upstream: service.url, audience: 'http://api.internal' })] }).replace(
        JSON.stringify(interop.publicKeyPath),
        'mykey.pub',
      ),
    );
    expect(readFileSync(config, 'utf8')).toContain('public_key_path: mykey.pub');

    // `npx jwtproxy`, and never a download of whatever else is called jwtproxy. (Not `npx --no …`:
    // npm then reads `-config` as its own option.)
    const cli: RunningCli = await startCli(['-config', config], { cwd: installDir.dir, command: ['npx', '--no-install', 'jwtproxy'], processGroup: true, timeoutMs: 60_000 });
    try {
      const verifier = cli.servers['verifier_proxies[0]']!;
      expect(await httpRequest(`${verifier}/x`)).toMatchObject({ status: 403, body: 'jwtproxy: unable to verify request: Could not parse JWT' });
      const signed = await httpRequest(`${verifier}/x`, { headers: { authorization: `Bearer ${await mintToken('http://api.internal')}` } });
      expect(signed.status).toBe(200);
      expect((JSON.parse(signed.body) as SeenRequest).url).toBe('/x');
    } finally {
      // SIGTERM to the group (npx itself dies of it): jwtproxy stops cleanly.
      const stopped = await cli.stop();
      expect(stopped.stderr).toMatch(/msg="shutting down" signal=SIGTERM\n[\s\S]*msg="stopped"/);
    }

    // SIGTERM to npx alone, as `kill <pid>` or a process manager sends it: npx dies without
    // passing it on, and jwtproxy notices that npx is gone and stops as if it had been signalled.
    const second: RunningCli = await startCli(['-config', config], { cwd: installDir.dir, command: ['npx', '--no-install', 'jwtproxy'], timeoutMs: 60_000 });
    const verifier = second.servers['verifier_proxies[0]']!;
    const stopped = await second.stop('SIGTERM');
    expect(stopped.stderr).toMatch(/msg="shutting down" signal=SIGTERM reason="npx, which started jwtproxy, has exited"[\s\S]*msg="stopped"/);
    await expect(httpRequest(`${verifier}/x`)).rejects.toThrow(/ECONNREFUSED/);
  }, 240_000);
});

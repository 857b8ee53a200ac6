/**
 * What a registry would get, checked by tools rather than by eye: `pnpm pack:public` packs exactly
 * the workspace packages that are not private, each tarball has its build, README and the
 * publishing fields, no tests, sources or source maps, no `workspace:` range, and `publint
 * --strict` and `attw --profile esm-only` find nothing. The packages are ESM only on purpose
 * (Node >= 20.18.1), so attw's CommonJS and node10 resolutions are out of scope. A private
 * package (the repository root, testkit, bench, the examples) refuses to be packed.
 * Needs every package built (turbo's test task builds them first).
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, realpathSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from '@jwtproxy/testkit';
import { tempDir } from './helpers.js';

const run = promisify(execFile);
/** Without the npm_config_* settings that a pnpm/turbo parent passes down. */
const cleanEnv: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^npm_config_/i.test(key)));

interface Manifest {
  name: string;
  version: string;
  private?: boolean;
  type?: string;
  license?: string;
  engines?: { node?: string };
  sideEffects?: boolean | string[];
  exports?: Record<string, Record<string, string>>;
  bin?: Record<string, string>;
  dependencies?: Record<string, string>;
}

/** Every workspace package (pnpm-workspace.yaml: packages/*, apps/*, examples/*, bench) and the root. */
function workspacePackages(): Array<{ dir: string; manifest: Manifest }> {
  const dirs = [repoRoot, path.join(repoRoot, 'bench')];
  for (const group of ['packages', 'apps', 'examples']) {
    for (const name of readdirSync(path.join(repoRoot, group))) dirs.push(path.join(repoRoot, group, name));
  }
  return dirs
    .filter((dir) => existsSync(path.join(dir, 'package.json')))
    .map((dir) => ({ dir, manifest: JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as Manifest }));
}

/** The part of @arethetypeswrong/core used here. */
interface AttwCore {
  createPackageFromTarballData(data: Uint8Array): unknown;
  checkPackage(pkg: unknown): Promise<{ types: unknown; problems?: Array<{ kind: string; entrypoint?: string; resolutionKind?: string }> }>;
}

const packages = workspacePackages();
const publicPackages = packages.filter((p) => !p.manifest.private);
const privatePackages = packages.filter((p) => p.manifest.private);

let packDir: Awaited<ReturnType<typeof tempDir>>;
const tarballs = new Map<string, string>(); // package name → tarball path

async function tarballManifest(tarball: string): Promise<Manifest> {
  const { stdout } = await run('tar', ['-xzOf', tarball, 'package/package.json']);
  return JSON.parse(stdout) as Manifest;
}

beforeAll(async () => {
  packDir = await tempDir();
  for (const { manifest, dir } of publicPackages) {
    if (!existsSync(path.join(dir, 'dist/index.js'))) throw new Error(`${manifest.name} is not built (no dist/index.js): run pnpm build first`);
  }
  await run('pnpm', ['run', '--silent', 'pack:public', '--pack-destination', packDir.dir], { cwd: repoRoot, env: cleanEnv, timeout: 120_000 });
  for (const name of readdirSync(packDir.dir).filter((n) => n.endsWith('.tgz'))) {
    const tarball = path.join(packDir.dir, name);
    tarballs.set((await tarballManifest(tarball)).name, tarball);
  }
}, 150_000);

afterAll(async () => {
  await packDir?.cleanup();
});

describe('the publishable packages', () => {
  it('pnpm pack:public packs every package that is not private, and nothing else', () => {
    expect(publicPackages.map((p) => p.manifest.name)).toEqual(
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
    expect(privatePackages.map((p) => p.manifest.name)).toEqual(
      expect.arrayContaining(['jwtproxy-monorepo', '@jwtproxy/testkit', '@jwtproxy/bench', '@jwtproxy/example-httpserver']),
    );
    expect([...tarballs.keys()].sort()).toEqual(publicPackages.map((p) => p.manifest.name).sort());
  });

  it('each tarball: its build, types and README, the publishing fields, no tests, sources or source maps, no workspace: ranges', async () => {
    for (const [name, tarball] of tarballs) {
      const { stdout: listing } = await run('tar', ['-tzf', tarball]);
      const files = listing.split('\n').filter(Boolean);
      expect(files, name).toContain('package/dist/index.js');
      expect(files, name).toContain('package/dist/index.d.ts');
      expect(files, name).toContain('package/README.md');
      expect(files.filter((f) => /\.test\.|\/src\/|\/test\/|\.map$|\.tsbuildinfo$/.test(f)), name).toEqual([]);

      const manifest = await tarballManifest(tarball);
      expect(manifest.type, name).toBe('module');
      expect(manifest.license, name).toBe('Apache-2.0');
      expect(manifest.engines?.node, name).toBe('>=20.18.1');
      expect(manifest.sideEffects, `${name}: sideEffects says which modules register on import`).toBeDefined();
      expect(Object.keys(manifest.exports?.['.'] ?? {}), name).toEqual(['types', 'default']);
      for (const [dependency, range] of Object.entries(manifest.dependencies ?? {})) {
        expect(range, `${name} → ${dependency}`).not.toMatch(/^workspace:/);
      }
    }
    const cli = await tarballManifest(tarballs.get('@jwtproxy/cli')!);
    expect(cli.bin).toEqual({ jwtproxy: './bin/jwtproxy.js' });
  });

  it('publint --strict: no error, warning or suggestion for any package', async () => {
    const { publint } = await import('publint');
    const { formatMessage } = await import('publint/utils');
    const found: string[] = [];
    for (const [name, tarball] of tarballs) {
      const data = readFileSync(tarball);
      const tarballBytes = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) as ArrayBuffer;
      const { messages, pkg } = await publint({ pack: { tarball: tarballBytes }, level: 'suggestion', strict: true });
      for (const message of messages) found.push(`${name}: ${message.type} ${message.code}: ${formatMessage(message, pkg) ?? ''}`);
    }
    expect(found).toEqual([]);
  });

  it('attw (are the types wrong) --profile esm-only: no problem for any package', async () => {
    // The analysis of @arethetypeswrong/cli, in this process: TypeScript loads once, not once per
    // package (about 2 s of CPU each). The esm-only profile: problems of the node10 and node16-cjs
    // resolutions do not count.
    const attwCli = realpathSync(path.join(repoRoot, 'node_modules/@arethetypeswrong/cli/package.json'));
    const attw = (await import(pathToFileURL(createRequire(attwCli).resolve('@arethetypeswrong/core')).href)) as AttwCore;
    const ignoredResolutions = ['node10', 'node16-cjs'];
    const found: string[] = [];
    for (const [name, tarball] of tarballs) {
      const analysis = await attw.checkPackage(attw.createPackageFromTarballData(new Uint8Array(readFileSync(tarball))));
      if (!analysis.types) found.push(`${name}: no types found`);
      for (const problem of analysis.problems ?? []) {
        if (problem.resolutionKind !== undefined && ignoredResolutions.includes(problem.resolutionKind)) continue;
        found.push(`${name}: ${problem.kind} ${problem.entrypoint ?? ''} ${problem.resolutionKind ?? ''}`);
      }
    }
    expect(found).toEqual([]);
  }, 120_000);

  it('a private package refuses to be packed, with one line saying why', async () => {
    for (const { dir, manifest } of privatePackages) {
      const destination = await tempDir();
      try {
        const packed = await run('pnpm', ['pack', '--pack-destination', destination.dir], { cwd: dir, env: cleanEnv, timeout: 60_000 }).then(
          () => true,
          (error: { stderr?: string }) => {
            expect(error.stderr ?? '', manifest.name).toContain(`${manifest.name} is private: it is never packed or published`);
            return false;
          },
        );
        expect(packed, manifest.name).toBe(false);
        expect(readdirSync(destination.dir), manifest.name).toEqual([]);
      } finally {
        await destination.cleanup();
      }
    }
  });
});

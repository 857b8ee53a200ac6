#!/usr/bin/env node
/**
 * Bundles the `jwtproxy` command (src/main.ts) and its worker entry (src/worker-main.ts) into
 * dist/, over what tsc wrote for them, with the code the configuration may not need in chunks
 * loaded by import() (chunk-*.js beside them, so `new URL('./worker-main.js', import.meta.url)`
 * still finds the worker).
 *
 * Why (issue 19): Node's ESM loader spent ~200 ms of a 410 ms start resolving and linking the
 * ~500 files of our packages' dist, undici, yaml and jose; one bundle is one file to load.
 *
 * `@jwtproxy/core` stays outside: plugins import it from node_modules, and it must be the same
 * module the command uses (errors checked with instanceof, core's legacy registries).
 * dist/index.js (the package's library surface) and the other packages' dist are not touched.
 */
import { readdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(cli, 'dist');

// Chunks of an earlier build: their names carry a content hash, so they would pile up.
for (const file of readdirSync(dist)) if (file.startsWith('chunk-')) rmSync(path.join(dist, file));

/** Inside the bundle, `undici` is bundle/undici.cjs: the four things the packages use, not all of undici. */
const slimUndici = {
  name: 'slim-undici',
  setup(b) {
    b.onResolve({ filter: /^undici$/ }, () => ({ path: path.join(cli, 'bundle/undici.cjs') }));
  },
};

const result = await build({
  absWorkingDir: cli,
  entryPoints: { main: 'src/main.ts', 'worker-main': 'src/worker-main.ts' },
  outdir: dist,
  allowOverwrite: true,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  chunkNames: 'chunk-[hash]',
  external: ['@jwtproxy/core'],
  plugins: [slimUndici],
  // CommonJS dependencies (undici, yaml) call require() on node: built-ins.
  banner: { js: "import { createRequire as __jwtproxyRequire } from 'node:module'; const require = __jwtproxyRequire(import.meta.url);" },
  // The packages' own comments stay in their dist; the command needs none at run time.
  legalComments: 'none',
  minifyWhitespace: true,
  minifySyntax: true,
  metafile: true,
  logLevel: 'warning',
});

// Which packages each output file holds, for the lazy-loading test (a chunk's name does not say).
const contents = {};
for (const [output, { inputs }] of Object.entries(result.metafile.outputs)) {
  const packages = new Set();
  for (const input of Object.keys(inputs)) {
    const inModules = /node_modules\/((?:@[^/]+\/)?[^/]+)\/(?!.*node_modules\/)/.exec(input);
    const inWorkspace = /packages\/([^/]+)\//.exec(input);
    packages.add(inModules ? inModules[1] : inWorkspace ? `@jwtproxy/${inWorkspace[1]}` : '@jwtproxy/cli');
  }
  contents[path.basename(output)] = [...packages].sort();
}
writeFileSync(path.join(dist, 'bundle-contents.json'), JSON.stringify(contents, null, 1) + '\n');

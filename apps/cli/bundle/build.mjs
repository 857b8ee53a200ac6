#!/usr/bin/env node
/**
 * Bundles the `jwtproxy` command into dist/ (issue 19: start ≤ 150 ms, idle RSS ≤ 50 MB for a
 * signer + verifier sidecar), over what tsc wrote for its entries:
 *
 *   dist/launch.cjs           src/main.ts: V8 flags, the compile cache, then the command or a worker
 *   dist/jwtproxy-cli-*.cjs   src/cli.ts and what it imports (CommonJS, see below)
 *   dist/jwtproxy-worker-*.cjs  src/worker-main.ts and what it imports
 *   dist/chunk-*.cjs          code shared by both, or loaded only when a configuration needs it
 *                             (node-forge, ioredis, prom-client, jose, the admin listener, …)
 *   dist/undici-llhttp*.cjs   undici's WebAssembly HTTP parser, required at the first upstream response
 *   dist/main.js, dist/worker-main.js  ES module stubs that run launch.cjs (`node dist/main.js`,
 *                             and `new URL('./worker-main.js', import.meta.url)` in supervisor.ts)
 *
 * Why CommonJS: on Node 20, the ES module loader cost more than the code it loaded (resolving,
 * reading through fs/promises, linking ~20 chunks: ~100 ms of a 250-360 ms start), and Node 20 has
 * no compile cache for ES modules; CommonJS files load through require and, on Node 20, through
 * V8's code cache that compile-cache.ts keeps (module.enableCompileCache on Node 22.1+).
 * esbuild cannot split a CommonJS bundle, so the bundle is split as ES modules first, then each
 * file is turned into CommonJS (imports become require, import() a lazy require): the files and
 * what is loaded when stay those of the split.
 *
 * `@jwtproxy/core`: plugins import it from node_modules and must share it with the command
 * (instanceof on its errors, its legacy registries). With a `--plugin`, the launcher imports that
 * module first and the bundle uses it (globalThis[Symbol.for('jwtproxy.core')]); without one, no
 * other code can hold it, and the bundle's own copy of core (same code, one file less to resolve
 * among ~20) is used. dist/index.js (the package's library surface) and the other packages' dist
 * are not touched.
 */
import { readdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build, transform } from 'esbuild';

const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(cli, 'dist');
const require = createRequire(path.join(cli, 'package.json'));
/** packages/core/dist/index.js (or node_modules/@jwtproxy/core/dist/index.js once installed). */
const coreEntry = realpathSync(require.resolve('@jwtproxy/core'));
const coreDir = path.dirname(path.dirname(coreEntry));

// Files of an earlier build: their names carry a content hash, so they would pile up.
for (const file of readdirSync(dist)) if (/^(chunk-|jwtproxy-(cli|worker)-)/.test(file)) rmSync(path.join(dist, file));

/** Inside the bundle, `undici` is bundle/undici.cjs: the four things the packages use, not all of undici. */
const slimUndici = {
  name: 'slim-undici',
  setup(b) {
    b.onResolve({ filter: /^undici$/ }, () => ({ path: path.join(cli, 'bundle/undici.cjs') }));
  },
};

/**
 * What undici loads when its module loads but uses only on a path the command never takes, made
 * lazy inside the bundle (Node 20, sidecar start: ~9 built-in modules fewer before listening):
 * - node:http2, by dispatcher/client-h2.js, which runs only for a connection that negotiated h2
 *   (`allowH2`, which no package sets): its one function loads it on first call;
 * - node:assert, whose undici's uses are all `assert(value)` on its own invariants: the module is
 *   loaded when one fails, to throw its AssertionError.
 */
const LLHTTP_FILES = { 'llhttp-wasm.js': 'undici-llhttp-wasm.cjs', 'llhttp_simd-wasm.js': 'undici-llhttp-simd-wasm.cjs' };
const lazyUndiciParts = {
  name: 'lazy-undici-parts',
  setup(b) {
    const inUndici = (importer) => /[\\/]node_modules[\\/](\.pnpm[\\/][^\\/]+[\\/]node_modules[\\/])?undici[\\/]/.test(importer);
    b.onResolve({ filter: /^\.\/client-h2\.js$/ }, (args) =>
      inUndici(args.importer) && /dispatcher[\\/]client\.js$/.test(args.importer)
        ? { path: path.join(path.dirname(args.importer), 'client-h2.js'), namespace: 'lazy-client-h2' }
        : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: 'lazy-client-h2' }, (args) => ({
      contents: `module.exports = function connectH2(client, socket) { return require(${JSON.stringify(args.path)})(client, socket); };`,
      resolveDir: path.dirname(args.path),
      loader: 'js',
    }));
    // dispatcher/client-h1.js's WebAssembly parser (llhttp), two modules of ~72 KB of base64 each:
    // in the chunk, their text stays in the heap as long as the chunk's source does (V8 keeps a
    // script's whole source), though a process that never sends upstream never reads them. Files of
    // their own (LLHTTP_FILES below), which the bundle's require loads at the first upstream response.
    b.onResolve({ filter: /^\.\.\/llhttp\/llhttp(_simd)?-wasm\.js$/ }, (args) =>
      inUndici(args.importer) ? { path: `./${LLHTTP_FILES[path.basename(args.path)]}`, external: true } : undefined,
    );
    b.onResolve({ filter: /^node:assert$/ }, (args) => (inUndici(args.importer) ? { path: 'assert', namespace: 'lazy-assert' } : undefined));
    b.onLoad({ filter: /.*/, namespace: 'lazy-assert' }, () => ({
      contents: `function assert(value, message) { if (!value) require('node:assert')(value, message); }
assert.ok = assert;
module.exports = assert;`,
      loader: 'js',
    }));
  },
};

/** `@jwtproxy/core`: the module a plugin shares when there is one, else the bundled copy (see above). */
const CORE_KEY = "Symbol.for('jwtproxy.core')";
// Its run-time exports, bound once by name: esbuild would otherwise copy all of them (a getter
// each) into every file that imports core, as it does for a CommonJS module (~8 ms of a start).
const coreExports = Object.keys(await import(pathToFileURL(coreEntry).href));
const coreSwitch = {
  name: 'core-switch',
  setup(b) {
    b.onResolve({ filter: /^@jwtproxy\/core$/ }, () => ({ path: 'core', namespace: 'core-switch' }));
    b.onLoad({ filter: /.*/, namespace: 'core-switch' }, () => ({
      contents: `const core = globalThis[${CORE_KEY}] ?? require(${JSON.stringify(coreEntry)});\nexport const { ${coreExports.join(', ')} } = core;\n`,
      resolveDir: cli,
      loader: 'js',
    }));
    // core's logger finds pino beside itself (createRequire(import.meta.url)): in the bundle, that is
    // where @jwtproxy/core resolves from the command's dist, wherever the packages are installed.
    b.onLoad({ filter: /\.js$/ }, (args) => {
      if (!args.path.startsWith(coreDir + path.sep)) return undefined;
      const text = readFileSync(args.path, 'utf8');
      if (!text.includes('import.meta.url')) return undefined;
      return { contents: text.replaceAll('import.meta.url', "require('node:url').pathToFileURL(require.resolve('@jwtproxy/core')).href"), loader: 'js' };
    });
  },
};

/**
 * worker-main.ts ends with `await runWorker();`: a top-level await, which CommonJS has not. The
 * worker's start is the same without it (runWorker catches its own start errors and exits; an
 * error before that still reaches the primary, as an unhandled rejection, through 'error').
 */
const WORKER_TAIL = /\nawait runWorker\(\);\s*$/;
const workerWithoutTopLevelAwait = {
  name: 'worker-without-top-level-await',
  setup(b) {
    b.onLoad({ filter: /src[\\/]worker-main\.ts$/ }, (args) => {
      const text = readFileSync(args.path, 'utf8');
      if (!WORKER_TAIL.test(text)) throw new Error('src/worker-main.ts no longer ends with `await runWorker();`: update bundle/build.mjs');
      return { contents: text.replace(WORKER_TAIL, '\nvoid runWorker();\n'), loader: 'ts' };
    });
  },
};

/**
 * heap-limits.ts and compile-cache.ts hold state (the flags held during the start, the files to
 * cache) that the launcher sets and the command reads once listening: the bundle takes them from
 * launch.cjs, the module the launcher is, not from copies of its own.
 */
const fromLauncher = {
  name: 'from-launcher',
  setup(b) {
    b.onResolve({ filter: /^\.\/(heap-limits|compile-cache)\.js$/ }, (args) =>
      path.dirname(args.importer) === path.join(cli, 'src') ? { path: './launch.cjs', external: true } : undefined,
    );
  },
};

const split = await build({
  absWorkingDir: cli,
  entryPoints: { 'jwtproxy-cli': 'src/cli.ts', 'jwtproxy-worker': 'src/worker-main.ts' },
  outdir: dist,
  write: false,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  entryNames: '[name]-[hash]',
  chunkNames: 'chunk-[hash]',
  plugins: [slimUndici, lazyUndiciParts, coreSwitch, workerWithoutTopLevelAwait, fromLauncher],
  // The file's own URL, as each CommonJS file defines it below (cli.ts: ../package.json; supervisor.ts: ./worker-main.js).
  define: { 'import.meta.url': '__jwtproxyFileUrl' },
  // The packages' own comments stay in their dist; the command needs none at run time.
  legalComments: 'none',
  minifyWhitespace: true,
  minifySyntax: true,
  metafile: true,
  logLevel: 'warning',
});

/** `./chunk-X.js` as the split wrote it → `./chunk-X.cjs`. */
const renamed = (name) => name.replace(/\.js$/, '.cjs');
const entries = {};
const contents = {};
for (const file of split.outputFiles) {
  const base = path.basename(file.path);
  const meta = split.metafile.outputs[path.relative(cli, file.path)];
  // Each import of another output file names it as a string literal: "./chunk-ABC.js".
  const source = file.text.replace(/(["'])\.\/((?:chunk|jwtproxy-cli|jwtproxy-worker)-[A-Z0-9]+)\.js\1/g, '$1./$2.cjs$1');
  const converted = await transform(source, { format: 'cjs', platform: 'node', target: 'node20', minifyWhitespace: true, minifySyntax: true, logLevel: 'warning' });
  if (/\bimport\.meta\b/.test(converted.code)) throw new Error(`${base}: import.meta left in a CommonJS file`);
  // import() of another file of the bundle: a require when it resolves (what esbuild does without
  // splitting), so that it loads as CommonJS, through the cache, and not through the ES module loader.
  const code = converted.code.replace(/(?<![\w$.])import\((["'])(\.\/(?:chunk|jwtproxy-cli|jwtproxy-worker)-[A-Z0-9]+\.cjs)\1\)/g, 'Promise.resolve().then(()=>require($1$2$1))');
  // The one import() left is the plugins' (src/plugins.ts): compile-cache.ts compiles the bundle
  // with vm.Script on Node 20, where import() needs an experimental flag, so only without plugins.
  const nativeImports = code.match(/(?<![\w$.])import\(/g)?.length ?? 0;
  if (nativeImports > 0 && !Object.keys(meta.inputs).some((input) => input.endsWith('src/plugins.ts'))) {
    throw new Error(`${base}: import() outside src/plugins.ts, which compile-cache.ts's vm.Script (Node 20) cannot run: make it a static import or see loadBundleFile`);
  }
  // V8 keeps a script's source as long as its functions live, one byte a character only if no
  // character is above U+00FF (else two: the core chunk was 386 KB for 193 KB of text).
  const wide = /[^\x00-\xff]/.exec(code);
  if (wide) throw new Error(`${base}: ${JSON.stringify(code.slice(Math.max(0, wide.index - 60), wide.index + 20))}: a character above U+00FF in the code (write it as an escape)`);
  const banner = code.includes('__jwtproxyFileUrl') ? "var __jwtproxyFileUrl=require('node:url').pathToFileURL(__filename).href;\n" : '';
  writeFileSync(path.join(dist, renamed(base)), `'use strict';${banner}${code}`);
  // (A chunk that import() loads has an entryPoint in the metafile too: the names tell.)
  const entry = /^jwtproxy-(cli|worker)-/.exec(base)?.[1];
  if (entry) entries[entry] = renamed(base);

  // Which packages each file holds, for the lazy-loading test (a chunk's name does not say).
  const packages = new Set();
  for (const input of Object.keys(meta.inputs)) {
    if (input.startsWith('core-switch:')) continue;
    const inModules = /node_modules\/((?:@[^/]+\/)?[^/]+)\/(?!.*node_modules\/)/.exec(input);
    const inWorkspace = /packages\/([^/]+)\//.exec(input);
    packages.add(inModules ? inModules[1] : inWorkspace ? `@jwtproxy/${inWorkspace[1]}` : '@jwtproxy/cli');
  }
  contents[renamed(base)] = [...packages].sort();
}
if (!entries.cli || !entries.worker) throw new Error('the split lost an entry point');

// undici's llhttp modules (see lazyUndiciParts), as undici ships them (CommonJS, node:buffer only).
const undiciDir = path.dirname(createRequire(path.join(cli, 'bundle/undici.cjs')).resolve('undici/package.json'));
for (const [original, file] of Object.entries(LLHTTP_FILES)) {
  writeFileSync(path.join(dist, file), readFileSync(path.join(undiciDir, 'lib/llhttp', original)));
  contents[file] = ['undici'];
}

// The launcher: one small file Node compiles before the compile cache is on; it names the entries.
await build({
  absWorkingDir: cli,
  entryPoints: ['src/main.ts'],
  outfile: path.join(dist, 'launch.cjs'),
  bundle: true,
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  define: { JWTPROXY_BUNDLE: JSON.stringify(entries) },
  // Imported (not required) when a plugin shares it: the module plugins import.
  external: ['@jwtproxy/core'],
  legalComments: 'none',
  minifyWhitespace: true,
  minifySyntax: true,
  logLevel: 'warning',
});

// `node dist/main.js` (tests, docs) and the worker's URL: ES module stubs, as dist/ is "type": "module".
writeFileSync(path.join(dist, 'main.js'), "#!/usr/bin/env node\n// The jwtproxy command (bin/jwtproxy.js loads launch.cjs directly).\nimport launch from './launch.cjs';\nlaunch.runCommand();\n");
writeFileSync(path.join(dist, 'worker-main.js'), "// A worker thread of jwtproxy (supervisor.ts starts it by this name).\nimport launch from './launch.cjs';\nlaunch.runWorker();\n");
writeFileSync(path.join(dist, 'bundle-contents.json'), JSON.stringify(contents, null, 1) + '\n');

#!/usr/bin/env node
/**
 * The launcher of the `jwtproxy` command and of its worker threads: bundle/build.mjs builds it
 * into dist/launch.cjs, the one file Node compiles before V8 flags and the compile cache are set
 * (bin/jwtproxy.js requires it; dist/main.js and dist/worker-main.js are ES module stubs that
 * import it). The command itself is the CommonJS bundle JWTPROXY_BUNDLE names, loaded after that,
 * so that the compile cache covers it (compile-cache.ts).
 *
 * `@jwtproxy/core`: with a `--plugin` (or a worker whose command had one) the module plugins get
 * from node_modules is imported here first, and the bundle uses that one, so that both share it
 * (instanceof on its errors, its legacy registries). Without a plugin nothing else can import it,
 * and the bundle's own copy is used: ~17 ES modules fewer to resolve and link at each start.
 */
import path from 'node:path';
import { workerData } from 'node:worker_threads';
import { enableCompileCache, loadBundleFile } from './compile-cache.js';
import { applyV8Flags } from './heap-limits.js';

// The bundle takes these from here (bundle/build.mjs, `from-launcher`): one copy of their state.
export * from './compile-cache.js';
export * from './heap-limits.js';

/** The bundle's entry files, by bundle/build.mjs (their names carry a content hash). */
declare const JWTPROXY_BUNDLE: { cli: string; worker: string };

/** Where the bundle looks for the shared @jwtproxy/core (bundle/build.mjs, `core-switch`). */
const CORE_KEY = Symbol.for('jwtproxy.core');

/** Imports @jwtproxy/core from node_modules for the bundle to use, when a plugin will import it too. */
async function shareCore(): Promise<void> {
  (globalThis as Record<symbol, unknown>)[CORE_KEY] = await import('@jwtproxy/core');
}

const fromBundle = (name: string): unknown => loadBundleFile(path.join(__dirname, name));

/** Runs `jwtproxy ARGS…` and exits with its code. */
export function runCommand(argv: readonly string[] = process.argv.slice(2)): void {
  // A flag's value that merely looks like one costs the shared import, nothing else.
  const withPlugins = argv.some((arg) => /^--?plugin(=|$)/.test(arg));
  applyV8Flags();
  enableCompileCache(process.env, { withPlugins });
  const start = (): Promise<number> => (fromBundle(JWTPROXY_BUNDLE.cli) as typeof import('./cli.js')).main(argv);
  const running = withPlugins ? shareCore().then(start) : new Promise<number>((resolve) => resolve(start()));
  // Exit explicitly: pools and timers of stopped components must not keep the process alive.
  running.then(
    (code) => process.exit(code),
    (error: unknown) => {
      process.stderr.write(`jwtproxy: ${(error as Error)?.stack ?? String(error)}\n`);
      process.exit(1);
    },
  );
}

/** Runs one worker thread (supervisor.ts starts dist/worker-main.js, which calls this). */
export function runWorker(): void {
  const plugins = (workerData as { plugins?: unknown[] } | null)?.plugins ?? [];
  enableCompileCache(process.env, { withPlugins: plugins.length > 0 });
  // An error here reaches the primary as the worker's 'error' (unhandled rejection), as one in the worker's own start does.
  void (plugins.length > 0 ? shareCore() : Promise.resolve()).then(() => {
    fromBundle(JWTPROXY_BUNDLE.worker);
  });
}

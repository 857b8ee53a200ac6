/**
 * V8's on-disk code cache for the command's own code: a start compiles the bundle's files from the
 * cache that an earlier start wrote, instead of parsing them again.
 *
 * - Without plugins (any Node version): the bundle's files (dist/*.cjs, bundle/build.mjs) are
 *   compiled here with `vm.Script` and the `cachedData` of an earlier start; once the proxies
 *   listen (`flushCompileCache`), the files that had no usable cache get one, made then, so that it
 *   holds the functions the start ran too, not only the top-level code that Node's own compile cache
 *   holds. Signer + verifier, ms to listening: Node 20 ~250 (no cache ~300); Node 22 155-195 vs
 *   195-250 with Node's cache; Node 24 180-230 vs 225-300.
 * - With plugins: code compiled by vm.Script cannot import() (plugins are imported) without an
 *   experimental flag, so Node's own cache (`module.enableCompileCache`, Node 22.1+) is used; Node
 *   20 has none.
 *
 * The cache directory is `JWTPROXY_COMPILE_CACHE`, else `jwtproxy-compile-cache-<uid>` in the
 * temporary directory; `JWTPROXY_COMPILE_CACHE=off` (or Node's own `NODE_DISABLE_COMPILE_CACHE=1`)
 * turns it off. V8 trusts what it reads there as compiled code, so a directory that another user
 * owns or may write to is not used; nor is one that cannot be made (a read-only file system):
 * the start goes on without a cache, never fails because of it.
 */
import { closeSync, fstatSync, lstatSync, mkdirSync, openSync, readFileSync, readSync, renameSync, writeFileSync } from 'node:fs';
import module, { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import vm from 'node:vm';

/** What `enableCompileCache` did, for the debug line and the tests. */
export type CompileCacheState = { enabled: true; directory: string; by: 'node' | 'jwtproxy' } | { enabled: false; reason: string };

type CacheApi = {
  enableCompileCache?: (directory?: string) => { status: number; message?: string; directory?: string };
  flushCompileCache?: () => void;
  constants?: { compileCacheStatus?: Record<string, number> };
};

/** The directory of the bundle's own code cache, once enabled (a start without plugins). */
let ownCacheDirectory: string | undefined;

/** `withPlugins`: the command will import() plugins, which the bundle's own cache cannot (see above). */
export function enableCompileCache(env: NodeJS.ProcessEnv = process.env, { withPlugins = false }: { withPlugins?: boolean } = {}): CompileCacheState {
  const api = module as unknown as CacheApi;
  const nodeHasOne = typeof api.enableCompileCache === 'function';
  if (!nodeHasOne && withPlugins) return { enabled: false, reason: `Node.js ${process.versions.node} has no compile cache for a start with plugins` };
  if (env.NODE_DISABLE_COMPILE_CACHE) return { enabled: false, reason: 'NODE_DISABLE_COMPILE_CACHE is set' };
  const chosen = env.JWTPROXY_COMPILE_CACHE?.trim();
  if (chosen === 'off') return { enabled: false, reason: 'JWTPROXY_COMPILE_CACHE=off' };
  const uid = typeof process.getuid === 'function' ? process.getuid() : undefined;
  const directory = path.resolve(chosen || path.join(os.tmpdir(), `jwtproxy-compile-cache-${uid ?? 'user'}`));
  try {
    mkdirSync(directory, { recursive: true, mode: 0o700 });
    // lstat: a symbolic link planted at that name is not followed.
    const stat = lstatSync(directory);
    if (!stat.isDirectory()) return { enabled: false, reason: `${directory} is not a directory` };
    if (uid !== undefined && stat.uid !== uid) return { enabled: false, reason: `${directory} belongs to another user` };
    if ((stat.mode & 0o022) !== 0) return { enabled: false, reason: `${directory} is writable by other users` };
    if (!withPlugins) {
      ownCacheDirectory = directory;
      return { enabled: true, directory, by: 'jwtproxy' };
    }
    const result = api.enableCompileCache!(directory);
    const failed = api.constants?.compileCacheStatus?.FAILED;
    if (result.status === failed) return { enabled: false, reason: result.message ?? 'enableCompileCache failed' };
    return { enabled: true, directory: result.directory ?? directory, by: 'node' };
  } catch (error) {
    return { enabled: false, reason: (error as Error)?.message ?? String(error) };
  }
}

/** require.cache, where the bundle's files are as required files are. */
const requireCache = (module as unknown as { _cache: Record<string, NodeJS.Module | undefined> })._cache;
/** `./chunk-X.cjs` → its path (all of the bundle's files are in one directory). */
const bundlePaths = new Map<string, string>();

/** Files compiled without a usable cache, whose cache `flushCompileCache` writes. */
const toWrite: Array<{ script: vm.Script; cacheFile: string }> = [];

/** A bundle file's cache: its name has the file's content hash; V8 checks its own version and flags. */
const cacheFileOf = (directory: string, file: string): string => path.join(directory, `${path.basename(file)}.${process.version}-${process.arch}.v8`);

/** One buffer for every cache file read (readCacheFile), grown to the largest. */
let scratch: Buffer | undefined;

/**
 * A cache file's bytes, in a buffer that the next call overwrites: V8 reads `cachedData` only while
 * `new vm.Script` runs. One buffer instead of one per file (a sidecar's start reads 0.8 MB of
 * cache: malloc'd, freed only once V8 has collected their Buffer objects, and then as holes in the
 * C heap that RSS still counts). Measured (Node 20, signer + verifier, RSS 300 ms after listening,
 * 2 × 5 starts): 50.8 → 50.4 MB, with the reference dropped once the start is over
 * (flushCompileCache); 50.6-50.7 MB with it kept. The sources read the same way: no difference.
 */
function readCacheFile(file: string): Buffer {
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    if (scratch === undefined || scratch.length < size) scratch = Buffer.allocUnsafeSlow(Math.max(size, 256 * 1024));
    let read = 0;
    while (read < size) {
      const n = readSync(fd, scratch, read, size - read, read);
      if (n === 0) break;
      read += n;
    }
    return scratch.subarray(0, read);
  } finally {
    closeSync(fd);
  }
}

/**
 * Loads a file of the bundle (dist/*.cjs) as `require` would, and returns its exports. With the
 * bundle's own cache on, through `vm.Script` and its cached data, and so are the bundle's files it
 * requires (`./chunk-*.cjs`); each is in `require.cache` as a required file would be.
 */
export function loadBundleFile(file: string): unknown {
  const directory = ownCacheDirectory;
  if (directory === undefined) return createRequire(file)(file);
  const known = requireCache[file];
  if (known) return known.exports;
  const cacheFile = cacheFileOf(directory, file);
  let cachedData: Buffer | undefined;
  try {
    cachedData = readCacheFile(cacheFile);
  } catch {
    // None yet (or unreadable): compiled from the source, and cached once the proxies listen.
  }
  const source = readFileSync(file, 'utf8');
  const script = new vm.Script(wrapCommonJs(source), { filename: file, ...(cachedData ? { cachedData } : {}) });
  if (!cachedData || script.cachedDataRejected) toWrite.push({ script, cacheFile });
  // What Node's own loader sets up for a required file: a Module in require.cache, its require.
  const plainRequire = createRequire(file);
  const loaded = new (module as unknown as new (id: string) => NodeJS.Module & { paths: string[]; filename: string; loaded: boolean })(file);
  const directoryOfFile = path.dirname(file);
  loaded.filename = file;
  loaded.paths = (module as unknown as { _nodeModulePaths(dir: string): string[] })._nodeModulePaths(directoryOfFile);
  requireCache[file] = loaded;
  // The bundle's own files (`./chunk-X.cjs`, `./launch.cjs`) load through here too. Paths are made
  // once per name: every file asks for core's, and path.join called that often was what got V8's
  // optimizing compiler (its code: ~3 MB of RSS) to run during the start.
  const bundleRequire = Object.assign(
    (id: string): unknown => {
      if (!(id.startsWith('./') && id.endsWith('.cjs'))) return plainRequire(id);
      let target = bundlePaths.get(id);
      if (target === undefined) bundlePaths.set(id, (target = path.join(directoryOfFile, id)));
      return loadBundleFile(target);
    },
    { resolve: plainRequire.resolve, cache: plainRequire.cache, main: plainRequire.main, extensions: plainRequire.extensions },
  );
  try {
    const run = script.runInThisContext() as (exports: unknown, require: unknown, module: unknown, filename: string, dirname: string) => void;
    run.call(loaded.exports, loaded.exports, bundleRequire, loaded, file, directoryOfFile);
  } catch (error) {
    delete requireCache[file];
    throw error;
  }
  loaded.loaded = true;
  return loaded.exports;
}

/** CommonJS's function wrapper, as Node's loader puts around a file (same line numbers). */
function wrapCommonJs(source: string): string {
  return `(function (exports, require, module, __filename, __dirname) { ${source}\n});`;
}

/**
 * Writes what was compiled so far to the cache: once the proxies listen, so that a process stopped
 * by SIGKILL, as a container often is, still leaves the cache for the next start (the bundle's
 * files that had none; with plugins, Node's own on 22.10+).
 */
export function flushCompileCache(): void {
  // The start's files are read: the buffer goes with the next collection (a later chunk makes another).
  scratch = undefined;
  try {
    (module as unknown as CacheApi).flushCompileCache?.();
  } catch {
    // A cache that cannot be written costs the next start its compile time, nothing else.
  }
  for (const { script, cacheFile } of toWrite.splice(0)) {
    try {
      // Whole or not at all: another process may read it meanwhile (workers, a second start).
      const temporary = `${cacheFile}.${process.pid}.tmp`;
      writeFileSync(temporary, script.createCachedData(), { mode: 0o600 });
      renameSync(temporary, cacheFile);
    } catch {
      // As above.
    }
  }
}

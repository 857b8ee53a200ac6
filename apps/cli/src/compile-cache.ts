/**
 * V8's on-disk code cache for the command's own code (Node 22.1+, `module.enableCompileCache`):
 * a start compiles the bundle's chunks from the cache that an earlier start wrote, instead of
 * parsing them again. Node 20 has no such cache; there this does nothing.
 *
 * The cache directory is `JWTPROXY_COMPILE_CACHE`, else `jwtproxy-compile-cache-<uid>` in the
 * temporary directory; `JWTPROXY_COMPILE_CACHE=off` (or Node's own `NODE_DISABLE_COMPILE_CACHE=1`)
 * turns it off. V8 trusts what it reads there as compiled code, so a directory that another user
 * owns or may write to is not used; nor is one that cannot be made (a read-only file system):
 * the start goes on without a cache, never fails because of it.
 */
import { lstatSync, mkdirSync } from 'node:fs';
import module from 'node:module';
import os from 'node:os';
import path from 'node:path';

/** What `enableCompileCache` did, for the debug line and the tests. */
export type CompileCacheState = { enabled: true; directory: string } | { enabled: false; reason: string };

type CacheApi = {
  enableCompileCache?: (directory?: string) => { status: number; message?: string; directory?: string };
  flushCompileCache?: () => void;
  constants?: { compileCacheStatus?: Record<string, number> };
};

export function enableCompileCache(env: NodeJS.ProcessEnv = process.env): CompileCacheState {
  const api = module as unknown as CacheApi;
  if (typeof api.enableCompileCache !== 'function') return { enabled: false, reason: `Node.js ${process.versions.node} has no compile cache` };
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
    const result = api.enableCompileCache(directory);
    const failed = api.constants?.compileCacheStatus?.FAILED;
    if (result.status === failed) return { enabled: false, reason: result.message ?? 'enableCompileCache failed' };
    return { enabled: true, directory: result.directory ?? directory };
  } catch (error) {
    return { enabled: false, reason: (error as Error)?.message ?? String(error) };
  }
}

/**
 * Writes what was compiled so far to the cache (Node 22.10+): once the proxies listen, so that a
 * process stopped by SIGKILL, as a container often is, still leaves the cache for the next start.
 */
export function flushCompileCache(): void {
  try {
    (module as unknown as CacheApi).flushCompileCache?.();
  } catch {
    // A cache that cannot be written costs the next start its compile time, nothing else.
  }
}

/**
 * How many worker threads `jwtproxy` runs: `-workers N`, else `jwtproxy.workers`, else `auto`:
 * one per core this process may use (the machine's, or fewer under a container's CPU limit), and
 * no more than its memory limit holds (MEMORY_PER_WORKER each: a 128 MiB sidecar runs one).
 * 1 where worker threads cannot share a port.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import type { LoadedConfig } from '@jwtproxy/config';
import { CGROUP_MEMORY_MAX, containerMemoryLimit, memoryLimitOf } from './heap-limits.js';

/** Where cgroup v2 keeps a container's CPU limit: `max 100000` (none) or `<quota> <period>` (µs). */
export const CGROUP_CPU_MAX = '/sys/fs/cgroup/cpu.max';

/** Cores the limit in `cpu.max`'s text allows (a fraction rounds up: 1.5 CPUs is 2 threads' worth), or undefined for none. */
export function coresOfCpuMax(text: string): number | undefined {
  const [quota, period] = text.trim().split(/\s+/);
  if (quota === undefined || quota === 'max') return undefined;
  const q = Number(quota);
  const p = Number(period ?? 100_000);
  if (!Number.isFinite(q) || !Number.isFinite(p) || q <= 0 || p <= 0) return undefined;
  return Math.max(1, Math.ceil(q / p));
}

/** The cores this process may use: os.availableParallelism(), capped by the cgroup v2 CPU quota when there is one. */
export function availableCores(cpuMaxFile = CGROUP_CPU_MAX): number {
  const parallelism = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  let limit: number | undefined;
  try {
    limit = coresOfCpuMax(readFileSync(cpuMaxFile, 'utf8'));
  } catch {
    // No cgroup v2 (or not readable): the machine's count.
  }
  return Math.max(1, Math.min(parallelism, limit ?? parallelism));
}

/**
 * Container memory `auto` counts per worker: a worker's RSS after 30 s of saturating load was
 * 70-80 MB, and the first also carries the process (a 2-worker verifier: 99 MB idle, 193 MB loaded;
 * docs/scaling.md). 128 MiB leaves room for the upstream pools' buffers and a burst.
 */
export const MEMORY_PER_WORKER = 128 * 1024 * 1024;

/** Workers a memory limit of `limit` bytes holds (at least 1), or undefined for no limit. */
function workersWithin(limit: number | undefined): number | undefined {
  return limit === undefined ? undefined : Math.max(1, Math.floor(limit / MEMORY_PER_WORKER));
}

/** Workers a cgroup v2 memory limit holds (`memory.max`: bytes or `max`), or undefined for none. */
export function workersOfMemoryMax(text: string): number | undefined {
  return workersWithin(memoryLimitOf(text));
}

/** What `auto` gives: the cores, capped by the workers the container's memory limit holds. */
export function autoWorkers(cpuMaxFile = CGROUP_CPU_MAX, memoryMaxFile = CGROUP_MEMORY_MAX): number {
  const cores = availableCores(cpuMaxFile);
  return Math.min(cores, workersWithin(containerMemoryLimit(memoryMaxFile)) ?? cores);
}

/**
 * Whether `server.listen({ reusePort: true })` works here: Node 22.12+ (and 23.1+). Without it,
 * worker threads cannot listen on one port, and jwtproxy runs one.
 */
export function hasReusePort(versions: NodeJS.ProcessVersions = process.versions): boolean {
  const [major = 0, minor = 0] = versions.node.split('.').map(Number);
  return major > 23 || (major === 23 && minor >= 1) || (major === 22 && minor >= 12);
}

export interface WorkerPlan {
  /** Threads that run proxies; 1: everything on the main thread, no worker at all. */
  count: number;
  /** Why fewer than asked (or than the cores), for the one line said at start; undefined when nothing to say. */
  fallback?: string;
  /** Where the count came from: `-workers`, `jwtproxy.workers`, or `auto` (`cores`; asked for, or by default). */
  from: 'flag' | 'config' | 'cores';
}

/** The workers to run for `config` given the flag (which wins over the file). */
export function planWorkers(config: LoadedConfig, flag: number | 'auto' | undefined, options: { cores?: number; reusePort?: boolean; plugins?: number } = {}): WorkerPlan {
  const asked = flag ?? config.workers ?? 'auto';
  const from = asked === 'auto' ? 'cores' : flag !== undefined ? 'flag' : 'config';
  const wanted = asked === 'auto' ? (options.cores ?? autoWorkers()) : asked;
  if (wanted <= 1) return { count: 1, from };
  // Only the proxies run in workers (a key registry server alone runs in the primary).
  if (!config.signerProxy?.enabled && !config.verifierProxies.some((p) => p.enabled)) return { count: 1, from };
  // A plugin's components are built once per worker: one that keeps state in memory (a nonce
  // store) would then keep it per worker, and a replay could pass once in each. Asked for, fine;
  // with auto (the default), fail closed with one worker.
  if (from === 'cores' && (options.plugins ?? 0) > 0) {
    return { count: 1, from, fallback: `with --plugin, workers must be a number, not auto (-workers N or jwtproxy.workers: N): a plugin's components would run once per worker; one worker instead of ${wanted}` };
  }
  if (!(options.reusePort ?? hasReusePort())) {
    return { count: 1, from, fallback: `Node.js ${process.versions.node} has no listen({ reusePort }) (22.12 or later has): one worker instead of ${wanted}` };
  }
  const unix = [config.signerProxy, ...config.verifierProxies].find((p) => p?.enabled && p.listenAddr.startsWith('unix:'));
  if (unix) return { count: 1, from, fallback: `${unix.path} listens on a unix socket, which worker threads cannot share: one worker instead of ${wanted}` };
  return { count: wanted, from };
}

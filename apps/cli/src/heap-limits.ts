/**
 * V8 heap settings for a sidecar (issue 19, docs/memory.md), applied before anything else loads
 * (main.ts calls applyV8Flags first, cli.ts releaseStartUpFlags once the proxies listen).
 *
 * `JWTPROXY_V8_FLAGS` is handed to V8 as it is. `--max-semi-space-size` and `--max-old-space-size`
 * only act when node starts (NODE_OPTIONS); what is set here acts at run time. The young
 * generation held at 2 × 1 MiB for good (`JWTPROXY_V8_FLAGS=--semi-space-growth-factor=1`) saved
 * 20-25 MB more under load but cost 12-15 % of throughput (bench, verifier and signer → verifier):
 * opt-in; the caps below (8 MB lean, 16 MB fast) are the default.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { PerformanceObserver } from 'node:perf_hooks';
import v8 from 'node:v8';
import vm from 'node:vm';

/** Where cgroup v2 keeps a container's memory limit: `max` (none) or bytes. */
export const CGROUP_MEMORY_MAX = '/sys/fs/cgroup/memory.max';
/** At or under this memory limit the heap is run lean by default. */
export const LEAN_HEAP_MEMORY_LIMIT = 256 * 1024 * 1024;

/**
 * `lean`: the heap settings below (RUN_FLAGS and the young generation's cap) that keep a
 * signer + verifier under 96 MB after 30 s of saturating load, at a throughput cost (bench, same
 * run before the request tracker's fix: verifier 0.71x, ES256 signer 0.79x of V8's defaults); `fast`:
 * the same old-generation setting and a young generation held at 16 MB instead of 8
 * (youngGenerationCapMb).
 * `JWTPROXY_HEAP=lean|fast` chooses; else lean in a container whose memory limit is
 * 256 MiB or less (a sidecar such as Che's 128 MiB), fast elsewhere.
 */
export type HeapMode = 'lean' | 'fast';
export function heapModeOf(env: NodeJS.ProcessEnv = process.env, memoryMaxFile = CGROUP_MEMORY_MAX): HeapMode {
  const chosen = env.JWTPROXY_HEAP?.trim();
  if (chosen === 'lean' || chosen === 'fast') return chosen;
  const limit = containerMemoryLimit(memoryMaxFile);
  return limit !== undefined && limit <= LEAN_HEAP_MEMORY_LIMIT ? 'lean' : 'fast';
}

/** The bytes a cgroup v2 `memory.max` text allows, or undefined for `max` (no limit) or anything else. */
export function memoryLimitOf(text: string): number | undefined {
  const limit = Number(text.trim());
  return Number.isFinite(limit) && limit > 0 ? limit : undefined;
}

/** This container's memory limit in bytes, or undefined without one (or without cgroup v2). */
export function containerMemoryLimit(memoryMaxFile = CGROUP_MEMORY_MAX): number | undefined {
  try {
    return memoryLimitOf(readFileSync(memoryMaxFile, 'utf8'));
  } catch {
    return undefined;
  }
}

/** The flags docs/memory.md recommends for a sidecar with a tight memory limit. */
export const sidecarV8Flags = '--semi-space-growth-factor=1';

/**
 * Held while the command starts, then given back to V8's defaults once the proxies
 * listen (`releaseStartUpFlags`), so that requests run as V8 would run them otherwise:
 *
 * - `--semi-space-growth-factor=1` (default 2): the young generation stays at its initial 2 × 1 MiB
 *   through the start instead of growing for start-up's short-lived garbage. Measured (Node 20,
 *   signer + verifier, one process): RSS idle 1.7 MB less; throughput after the release the same
 *   (signer → verifier, 5 s: 1033 and 1423 req/s held vs 996 and 1394 not held, same runs).
 *
 * Not held: `--max-opt=1` (no optimizing compiler during the start) saved 3.5 MB more idle (V8's
 * own optimizer code not paged in), but setting `--max-opt=999` back did not give the hot request
 * path its optimized code again: 0.5-0.6× the throughput.
 *
 * A flag the user sets (JWTPROXY_V8_FLAGS, NODE_OPTIONS, node's own arguments) is left alone.
 */
/**
 * Set for the whole run: `--heap-growing-percent=50`. V8 sizes the old generation's next
 * collection from the machine's memory, not the container's, and under load let promoted request
 * garbage pile up to 28-35 MB of old space before collecting; with 50 the next full collection comes
 * when the heap is 1.5 × what the last one kept. Acts at run time (unlike --max-old-space-size).
 * In both heap modes: with the young generation held at 16 MB, fast mode's RSS after 30 s of the
 * bench's sidecar load was 101 MB without it and 92 MB with it (Node 20, same run, throughput 2037
 * and 2091 req/s): since the request tracker's fix the old generation holds little garbage, and a
 * full collection of it is short.
 */
const RUN_FLAGS: ReadonlyArray<{ name: string; value: string }> = [{ name: '--heap-growing-percent', value: '--heap-growing-percent=50' }];

const START_UP_FLAGS: ReadonlyArray<{ name: string; start: string; standard: string }> = [
  { name: '--semi-space-growth-factor', start: '--semi-space-growth-factor=1', standard: '--semi-space-growth-factor=2' },
];

let held: string[] = [];

/** Hands `JWTPROXY_V8_FLAGS` (if set) to V8, then holds the start-up flags the user did not set. */
export function applyV8Flags(env: NodeJS.ProcessEnv = process.env): void {
  const chosen = env.JWTPROXY_V8_FLAGS ?? '';
  if (chosen.trim()) v8.setFlagsFromString(chosen);
  // V8 takes --a_b as --a-b.
  const userSet = [chosen, env.NODE_OPTIONS ?? '', ...process.execArgv].join(' ').replaceAll('_', '-');
  for (const flag of RUN_FLAGS) if (!userSet.includes(flag.name)) v8.setFlagsFromString(flag.value);
  held = [];
  for (const flag of START_UP_FLAGS) {
    if (userSet.includes(flag.name)) continue;
    v8.setFlagsFromString(flag.start);
    held.push(flag.standard);
  }
}

/** After the start: V8's defaults again for what the start held, then the young generation's cap. */
export function releaseStartUpFlags(env: NodeJS.ProcessEnv = process.env): void {
  const wasHeld = held.length > 0;
  for (const standard of held) v8.setFlagsFromString(standard);
  held = [];
  // A growth factor the user chose is theirs: no cap on top of it.
  if (wasHeld) capYoungGeneration(youngGenerationCapMb(env));
}

/**
 * One memory-reducing garbage collection once the start is over (cli.ts, after the code cache was
 * written): what V8's memory reducer would do by itself only after 8 s or more of idleness. The
 * start leaves garbage in the old generation (parsed configuration, module set-up, the bundle's
 * files as read: the compiled scripts keep their own wrapped copy) and a young generation grown to
 * 2 × 1 MiB; a memory-reducing collection compacts the old generation, gives the free parts of its
 * pages back to the system and shrinks the young generation to its initial size. Measured (Node 20,
 * signer + verifier, RSS 300 ms after listening, 2 × 5 starts): 53.1-53.2 → 50.8 MB (RssAnon 15.1
 * → 12.2 MB; the inspector's code paged in: +0.5 MB file-backed); Node 22 and 24 a few MB less too.
 * It takes 25-60 ms of CPU once the proxies listen, not before. Without it, V8's memory reducer
 * got the same process to 51.5 MB 11 s after listening.
 *
 * JavaScript reaches that collection (`isolate->LowMemoryNotification()`) only through the
 * inspector protocol's `HeapProfiler.collectGarbage`, here through an in-process session (no port,
 * no thread; disconnected after its answer, on the next turn: disconnecting inside the answer's
 * callback hangs the process on Node 20). V8's plain full collection (`gc()`, `--expose-gc`) does
 * not compact or give memory back: 0.3-0.4 MB; it is the fallback where the inspector is missing
 * (a node built without it) or refused.
 */
export async function collectStartUpGarbage(): Promise<void> {
  let session: import('node:inspector').Session | undefined;
  try {
    // Loaded only now (its code is part of what it costs), by require: an import() would load
    // Node's ES module loader into a start that did without it (bin/jwtproxy.js). Any absolute
    // path does as the base for a built-in module.
    const { Session } = createRequire(process.execPath)('node:inspector') as typeof import('node:inspector');
    session = new Session();
    session.connect();
    const connected = session;
    await new Promise<void>((resolve, reject) => {
      connected.post('HeapProfiler.collectGarbage', (error) => setImmediate(() => {
        connected.disconnect();
        if (error) reject(error);
        else resolve();
      }));
    });
    return;
  } catch {
    try {
      session?.disconnect();
    } catch {
      // Already closed.
    }
  }
  try {
    plainFullCollection();
  } catch {
    // Memory the next collections give back anyway: never a reason to fail (cli.ts does not wait for it).
  }
}

/**
 * V8's `gc`: exposed for a moment (`--expose-gc` acts on contexts made after it is set, hence the
 * new context) and the flag set back, so that the rest of the run, and the code cache V8 checks
 * its flags against, are as before. With `--expose-gc` set by the user, their `gc`.
 */
function plainFullCollection(): void {
  let gc = (globalThis as { gc?: () => void }).gc;
  if (typeof gc !== 'function') {
    try {
      v8.setFlagsFromString('--expose-gc');
      gc = vm.runInNewContext('gc') as () => void;
    } finally {
      v8.setFlagsFromString('--no-expose-gc');
    }
  }
  gc();
}

/**
 * The young generation's cap, MB for both semi-spaces: `JWTPROXY_YOUNG_GENERATION_MB`, else 8 in the
 * lean heap mode and 16 in the fast one; 0 lets V8 grow it to its own maximum (2 × 16 MiB on Node
 * 20 and 22, 2 × 64 MiB on Node 24).
 *
 * Fast mode's 16: V8 alone grows the young generation under a proxy's allocation rate to its
 * maximum, which is most of what a loaded process holds beyond its live data. Measured (bench
 * `sidecar`, signer + verifier, 20 s of saturating load, same run): RSS after the load Node 20 105 →
 * 95 MB, Node 24 157 → 121 MB, throughput unchanged within the run's noise; the verifier's
 * instructions per request (valgrind, 1,000 → 5,000 requests) +0.7 %: a scavenge costs what
 * survives it, and since the request tracker no longer keeps responses alive (docs/memory.md) little
 * does. Lean's 8 (with its old-generation setting) gave +1.3 %.
 */
export const LEAN_YOUNG_GENERATION_MB = 8;
export const FAST_YOUNG_GENERATION_MB = 16;
export function youngGenerationCapMb(env: NodeJS.ProcessEnv = process.env): number {
  const standard = heapModeOf(env) === 'lean' ? LEAN_YOUNG_GENERATION_MB : FAST_YOUNG_GENERATION_MB;
  const text = env.JWTPROXY_YOUNG_GENERATION_MB?.trim();
  if (!text) return standard;
  const value = Number(text);
  return Number.isFinite(value) && value >= 0 ? value : standard;
}

/**
 * Keeps V8's young generation at or under `capMb`. `--max-semi-space-size` only acts when node
 * starts (NODE_OPTIONS), but the growth factor acts at run time: after each garbage collection (a
 * `gc` PerformanceObserver: its entry comes on the same turn of the event loop, before the next
 * scavenge) this looks at the young generation's size and sets the factor to 1 once it reached the
 * cap, back to 2 if V8 shrank it below. V8 grows it by doubling (1, 2, 4, 8, 16 MiB per
 * semi-space). A timer every 50 ms, as before, was too slow: under a proxy's allocation rate V8
 * doubled it every 20-30 ms, from 2 to 32 MB between two looks. Returns the function that stops watching.
 */
export function capYoungGeneration(capMb: number): () => void {
  if (!(capMb > 0)) return () => {};
  const cap = capMb * 1024 * 1024;
  let growing = true;
  const check = (): void => {
    const size = v8.getHeapSpaceStatistics().find((space) => space.space_name === 'new_space')?.space_size ?? 0;
    const grow = size < cap;
    if (grow === growing) return;
    growing = grow;
    v8.setFlagsFromString(grow ? '--semi-space-growth-factor=2' : '--semi-space-growth-factor=1');
  };
  check();
  const observer = new PerformanceObserver(check);
  observer.observe({ entryTypes: ['gc'] });
  return () => observer.disconnect();
}

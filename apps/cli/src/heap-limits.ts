/**
 * V8 heap settings, applied before anything else loads (main.ts calls this first).
 *
 * `JWTPROXY_V8_FLAGS` is handed to V8 as it is. A memory-tight sidecar may set
 * `JWTPROXY_V8_FLAGS=--semi-space-growth-factor=1`: the young generation then stays at its initial
 * size (1 MiB semi-spaces instead of growing to 16 MiB under load), the one heap-size flag that
 * still acts when set at run time (`--max-old-space-size` only acts in NODE_OPTIONS). It is off by
 * default: measured side by side (bench, verifier and signer → verifier, 5 s each) it saved 20-25 MB
 * of RSS under load and cost 12-15 % of throughput (more frequent scavenges).
 */
import v8 from 'node:v8';

/** The flags docs/memory.md recommends for a sidecar with a tight memory limit. */
export const sidecarV8Flags = '--semi-space-growth-factor=1';

/**
 * V8 settings held while the command starts, then given back to V8's defaults once the proxies
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
const START_UP_FLAGS: ReadonlyArray<{ name: string; start: string; standard: string }> = [
  { name: '--semi-space-growth-factor', start: '--semi-space-growth-factor=1', standard: '--semi-space-growth-factor=2' },
];

let held: string[] = [];

/** Hands `JWTPROXY_V8_FLAGS` (if set) to V8, then holds the start-up flags the user did not set. */
export function applyV8Flags(env: NodeJS.ProcessEnv = process.env): void {
  const chosen = env.JWTPROXY_V8_FLAGS ?? '';
  if (chosen.trim()) v8.setFlagsFromString(chosen);
  const userSet = [chosen, env.NODE_OPTIONS ?? '', ...process.execArgv].join(' ');
  held = [];
  for (const flag of START_UP_FLAGS) {
    if (userSet.includes(flag.name)) continue;
    v8.setFlagsFromString(flag.start);
    held.push(flag.standard);
  }
}

/** After the start: V8's defaults again for what the start held (no-op when it held nothing). */
export function releaseStartUpFlags(): void {
  for (const standard of held) v8.setFlagsFromString(standard);
  held = [];
}

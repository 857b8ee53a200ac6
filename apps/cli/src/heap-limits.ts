/**
 * V8 heap settings for a sidecar, applied before anything else loads (main.ts imports this
 * first). Node lets V8's young generation grow to 2 × 16 MiB semi-spaces under load; for a proxy,
 * whose garbage is almost all per-request and short-lived, that is ~30 MiB of RSS for a few
 * percent of throughput. By default the young generation stays at its initial size (1 MiB
 * semi-spaces): `--semi-space-growth-factor=1`, the one heap-size flag that still acts when set
 * at run time (`--max-semi-space-size` and `--max-old-space-size` only act on the command line or
 * in NODE_OPTIONS).
 *
 * Overrides: `JWTPROXY_V8_FLAGS` replaces the default (empty: V8's own defaults), and a
 * semi-space flag in NODE_OPTIONS or on node's command line turns the default off.
 */
import v8 from 'node:v8';

export const sidecarV8Flags = '--semi-space-growth-factor=1';

function setsYoungGeneration(options: string): boolean {
  return /--(max-semi-space-size|min-semi-space-size|semi-space-growth-factor|max-young-generation-size)\b/.test(options);
}

const chosen =
  process.env.JWTPROXY_V8_FLAGS ??
  (setsYoungGeneration(`${process.env.NODE_OPTIONS ?? ''} ${process.execArgv.join(' ')}`) ? '' : sidecarV8Flags);
if (chosen.trim()) v8.setFlagsFromString(chosen);

// Memory and claim times of a `local` store (one thread) filled with distinct jtis. Not a test:
// run after `pnpm build`, one store per process so that each starts from the same heap:
//   node --expose-gc packages/nonce-stores/bench/fill.mjs [--count 1000000] [--max-entries 1000000] [--dist ../dist]
// --dist: another build of the package to measure (e.g. a copy of an older one's dist/, placed
// where it resolves @jwtproxy/core, such as packages/nonce-stores/node_modules/.old-dist).
// Prints one JSON line: heap, array buffers and RSS that the store added (after full
// collections), the slowest single claim of the fill and what a claim costs on average.
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';

const { values } = parseArgs({
  options: {
    count: { type: 'string', default: '1000000' },
    'max-entries': { type: 'string', default: '1000000' },
    dist: { type: 'string', default: new URL('../dist', import.meta.url).pathname },
  },
});
const count = Number(values.count);
const maxEntries = Number(values['max-entries']);
const { LocalNonceStore } = await import(pathToFileURL(resolve(values.dist, 'index.js')).href);
if (typeof globalThis.gc !== 'function') throw new Error('run with --expose-gc');

const MiB = 1024 * 1024;
const usage = () => {
  globalThis.gc();
  globalThis.gc();
  return process.memoryUsage();
};

// 43-character jtis (base64url of 32 pseudo-random bytes), made a batch at a time from a small
// buffer so that the only memory that lasts is the store's. The generator (xorshift32, random
// seed) can start again, to make the same jtis for the replays.
const BATCH = 4096;
const seed = randomBytes(4).readUInt32LE(0) | 1;
let state = seed;
const entropy = Buffer.alloc(32 * BATCH);
const words = new Uint32Array(entropy.buffer, entropy.byteOffset, entropy.length / 4);
const jtiAt = (i) => {
  const j = i % BATCH;
  if (j === 0) {
    for (let k = 0; k < words.length; k++) {
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      words[k] = state;
    }
  }
  return entropy.toString('base64url', j * 32, j * 32 + 32);
};

const before = usage();
const store = new LocalNonceStore({ maxEntries, purgeIntervalMs: 0 });
const exp = Math.floor(Date.now() / 1000) + 3600;
let slowest = 0;
let slowestAt = -1;
/** Time inside claim (and its await) only, not making the jtis. */
let claiming = 0;
let over1ms = 0;
let slowestGrowth = 0;
let lastBytes = store.byteLength;
for (let i = 0; i < count; i++) {
  const jti = jtiAt(i);
  const t = performance.now();
  // Awaited one at a time, as the verifier does.
  if ((await store.claim(jti, exp)) !== true) throw new Error('not claimed');
  const took = performance.now() - t;
  claiming += took;
  if (took > 1) over1ms++;
  // A claim that changed the store's tables (a growth), where the build has byteLength.
  const bytes = store.byteLength;
  if (bytes !== lastBytes) {
    lastBytes = bytes;
    if (took > slowestGrowth) slowestGrowth = took;
  }
  if (took > slowest) {
    slowest = took;
    slowestAt = i;
  }
}
const after = usage();
if (store.size !== count) throw new Error(`holds ${store.size}`);

// The same jtis again (equal strings, not the same objects): every one a replay.
state = seed;
let replayMs = 0;
for (let i = 0; i < count; i++) {
  const jti = jtiAt(i);
  const t = performance.now();
  if ((await store.claim(jti, exp)) !== false) throw new Error('replay accepted');
  replayMs += performance.now() - t;
}

console.log(
  JSON.stringify({
    node: process.version,
    dist: values.dist,
    count,
    maxEntries,
    heapMiB: +((after.heapUsed - before.heapUsed) / MiB).toFixed(1),
    arrayBuffersMiB: +((after.arrayBuffers - before.arrayBuffers) / MiB).toFixed(1),
    rssMiB: +((after.rss - before.rss) / MiB).toFixed(1),
    bytesPerNonce: Math.round((after.heapUsed + after.arrayBuffers - before.heapUsed - before.arrayBuffers) / count),
    slowestClaimMs: +slowest.toFixed(2),
    slowestAt,
    claimsOver1ms: over1ms,
    slowestGrowthClaimMs: lastBytes === undefined ? null : +slowestGrowth.toFixed(3),
    claimUs: +((claiming * 1000) / count).toFixed(3),
    replayUs: +((replayMs * 1000) / count).toFixed(3),
  }),
);
await store.stop();

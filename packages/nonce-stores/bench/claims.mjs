// Claims per second in one thread: the `local` store on its own tables (which grow with the
// nonces) against the same store on one SharedNonceTable of max_entries, and the table alone.
// For the store of an older build, see bench/fill.mjs --dist. Not a test: run after `pnpm build`,
//   node packages/nonce-stores/bench/claims.mjs [--count 500000] [--rounds 5] [--max-entries 1000000]
// Rounds of each kind alternate so that a busy machine slows them alike; medians are reported.
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { LocalNonceStore, SharedNonceTable } from '../dist/index.js';

const { values } = parseArgs({
  options: {
    count: { type: 'string', default: '500000' },
    rounds: { type: 'string', default: '5' },
    'max-entries': { type: 'string', default: '1000000' },
  },
});
const count = Number(values.count);
const rounds = Number(values.rounds);
const maxEntries = Number(values['max-entries']);

// 32-character jtis as the signer makes them (64-symbol alphabet), flat strings as JSON.parse gives them.
const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
function jtis(n) {
  const bytes = randomBytes(n * 32);
  const out = new Array(n);
  for (let i = 0; i < n; i++) {
    let s = '';
    for (let j = 0; j < 32; j++) s += alphabet[bytes[i * 32 + j] & 63];
    out[i] = s;
  }
  return JSON.parse(JSON.stringify(out));
}

const exp = Math.floor(Date.now() / 1000) + 300;

/** New jtis then the same again (replays), through `claim` awaited one at a time as the verifier does. */
async function throughStore(store, ids) {
  let started = performance.now();
  for (let i = 0; i < ids.length; i++) if ((await store.claim(ids[i], exp)) !== true) throw new Error('not claimed');
  const fresh = ids.length / ((performance.now() - started) / 1000);
  started = performance.now();
  for (let i = 0; i < ids.length; i++) if ((await store.claim(ids[i], exp)) !== false) throw new Error('replay accepted');
  const replays = ids.length / ((performance.now() - started) / 1000);
  await store.stop();
  return { fresh, replays };
}

const kinds = {
  'local store, own tables': (ids) => throughStore(new LocalNonceStore({ maxEntries, purgeIntervalMs: 0 }), ids),
  'local store, shared table': (ids) => throughStore(new LocalNonceStore({ sharedTable: SharedNonceTable.create(maxEntries), purgeIntervalMs: 0 }), ids),
  'SharedNonceTable.claim alone': async (ids) => {
    const table = SharedNonceTable.create(maxEntries);
    const now = Math.floor(Date.now() / 1000);
    let started = performance.now();
    for (let i = 0; i < ids.length; i++) if (table.claim(ids[i], exp, now) !== 'claimed') throw new Error('not claimed');
    const fresh = ids.length / ((performance.now() - started) / 1000);
    started = performance.now();
    for (let i = 0; i < ids.length; i++) if (table.claim(ids[i], exp, now) !== 'seen') throw new Error('replay accepted');
    return { fresh, replays: ids.length / ((performance.now() - started) / 1000) };
  },
};

const results = Object.fromEntries(Object.keys(kinds).map((name) => [name, { fresh: [], replays: [] }]));
for (let round = 0; round < rounds; round++) {
  for (const [name, run] of Object.entries(kinds)) {
    const ids = jtis(count);
    const { fresh, replays } = await run(ids);
    results[name].fresh.push(fresh);
    results[name].replays.push(replays);
  }
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const base = results['local store, own tables'];
console.log(`node ${process.version}, ${count.toLocaleString()} jtis per round, max_entries ${maxEntries.toLocaleString()}, ${rounds} rounds, medians:`);
console.log('| store | new jtis/s | ratio | replays/s | ratio |');
console.log('|---|---|---|---|---|');
for (const [name, r] of Object.entries(results)) {
  const fresh = median(r.fresh);
  const replays = median(r.replays);
  console.log(
    `| ${name} | ${Math.round(fresh).toLocaleString()} | ${(fresh / median(base.fresh)).toFixed(2)} | ${Math.round(replays).toLocaleString()} | ${(replays / median(base.replays)).toFixed(2)} |`,
  );
}

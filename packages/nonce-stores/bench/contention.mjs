// Claims per second of 1, 2 and 4 worker threads claiming distinct jtis in one SharedNonceTable
// at once: what the lock costs when workers meet on it. Not a test: run after `pnpm build`,
//   node packages/nonce-stores/bench/contention.mjs [--count 300000] [--workers 1,2,4]
// On a machine with fewer cores than workers the threads also share cores: read the total
// against the number of cores.
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { SharedNonceTable } from '../dist/index.js';

if (!isMainThread) {
  const table = SharedNonceTable.attach(workerData.buffer);
  const go = new Int32Array(workerData.go);
  const prefix = randomBytes(8).toString('base64url');
  // Flat 32-character strings made before the start.
  const ids = JSON.parse(JSON.stringify(Array.from({ length: workerData.count }, (_, i) => `${prefix}${String(i).padStart(21, '0')}`)));
  const exp = Math.floor(Date.now() / 1000) + 300;
  const now = exp - 300;
  parentPort.postMessage('ready');
  Atomics.wait(go, 0, 0, 30_000);
  const started = performance.now();
  for (let i = 0; i < ids.length; i++) if (table.claim(ids[i], exp, now) !== 'claimed') throw new Error('not claimed');
  parentPort.postMessage({ ms: performance.now() - started });
} else {
  const { values } = parseArgs({ options: { count: { type: 'string', default: '300000' }, workers: { type: 'string', default: '1,2,4' } } });
  const count = Number(values.count);
  console.log(`node ${process.version}, ${count.toLocaleString()} distinct jtis per worker, one table`);
  for (const n of values.workers.split(',').map(Number)) {
    const table = SharedNonceTable.create(n * count);
    const go = new Int32Array(new SharedArrayBuffer(4));
    const workers = Array.from({ length: n }, () => new Worker(new URL(import.meta.url), { workerData: { buffer: table.buffer, go: go.buffer, count } }));
    await Promise.all(workers.map((w) => new Promise((resolve) => w.once('message', resolve))));
    const started = performance.now();
    Atomics.store(go, 0, 1);
    Atomics.notify(go, 0);
    const times = await Promise.all(workers.map((w) => new Promise((resolve, reject) => (w.once('message', resolve), w.once('error', reject)))));
    const wall = performance.now() - started;
    await Promise.all(workers.map((w) => w.terminate()));
    if (table.size !== n * count) throw new Error(`table holds ${table.size}`);
    const slowest = Math.max(...times.map((t) => t.ms));
    console.log(`${n} worker(s): ${Math.round((n * count) / (wall / 1000)).toLocaleString()} claims/s in all (${Math.round(count / (slowest / 1000)).toLocaleString()}/s for the slowest worker)`);
  }
}

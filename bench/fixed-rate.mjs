#!/usr/bin/env node
// An open-loop load generator: sends requests at a fixed rate whatever the answers' pace, and
// measures each one's latency from the time it was due (not from when it was sent), so that a
// stall delays the requests queued behind it in the figures too (no coordinated omission).
// wrk keeps 32 connections busy, which measures throughput; added latency is only meaningful at
// the same rate for the upstream and for each proxy, which is what this gives.
//
//   node fixed-rate.mjs --url http://127.0.0.1:PORT/ --rate 1000 --duration 5
//        [--target http://host:port/]  send absolute-form requests for that target (a forward proxy)
//        [--tokens FILE [--offset N]]  one `Authorization: Bearer` token per request, from the file
//                                      (from line N on: tokens are single-use)
// Prints JSON: { sent, ok, failed, p50, p99, max } (latencies in ms).
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    target: { type: 'string' },
    tokens: { type: 'string' },
    offset: { type: 'string', default: '0' },
    rate: { type: 'string', default: '1000' },
    duration: { type: 'string', default: '5' },
  },
});
const rate = Number(args.rate);
const total = Math.round(rate * Number(args.duration));
const url = new URL(args.url);
const tokens = args.tokens ? readFileSync(args.tokens, 'utf8').split('\n').filter(Boolean).slice(Number(args.offset)) : undefined;
if (tokens && tokens.length < total) throw new Error(`${total} requests need as many tokens; ${args.tokens} has ${tokens.length}`);
const target = args.target ? new URL(args.target) : undefined;

// More connections than requests ever in flight at this rate: none waits for a free connection.
const pool = new Pool(url.origin, { connections: 256, pipelining: 1 });
const latencies = new Float64Array(total);
let ok = 0;
let failed = 0;
let finished = 0;
let done;
const allDone = new Promise((resolve) => (done = resolve));

function send(index, dueAt) {
  const headers = {};
  if (target) headers.host = target.host;
  if (tokens) headers.authorization = `Bearer ${tokens[index]}`;
  pool
    .request({ method: 'GET', path: target ? target.href : url.pathname, headers })
    .then(async ({ statusCode, body }) => {
      await body.dump();
      if (statusCode === 200) ok++;
      else failed++;
    })
    .catch(() => failed++)
    .finally(() => {
      latencies[index] = performance.now() - dueAt;
      if (++finished === total) done();
    });
}

const started = performance.now();
let next = 0;
// Every millisecond, send what has come due: a timer per request would cost more than it measures.
const ticker = setInterval(() => {
  const now = performance.now();
  while (next < total && started + (next * 1000) / rate <= now) {
    send(next, started + (next * 1000) / rate);
    next++;
  }
  if (next === total) clearInterval(ticker);
}, 1);

await allDone;
await pool.close();
const sorted = Array.from(latencies).sort((a, b) => a - b);
const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
process.stdout.write(JSON.stringify({ sent: total, ok, failed, p50: at(0.5), p99: at(0.99), max: sorted.at(-1) }) + '\n');

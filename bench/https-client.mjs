// Load for the HTTPS signer, which wrk cannot drive (it speaks no CONNECT): N keep-alive
// tunnels through the proxy, each sending requests back to back for D seconds.
// Prints JSON {rps, p50, p99, total, failed}; with --first-hosts, instead measures the first
// request to each of many new hosts (each needs a freshly forged certificate) against a
// request on a new tunnel to a known host.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ProxyAgent, request } from 'undici';

const { values: a } = parseArgs({
  options: {
    proxy: { type: 'string' },
    ca: { type: 'string' },
    target: { type: 'string' },
    connections: { type: 'string', default: '32' },
    duration: { type: 'string', default: '5' },
    'first-hosts': { type: 'string' },
    port: { type: 'string' },
  },
});
const ca = readFileSync(a.ca, 'utf8');
const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;

async function timed(url, dispatcher) {
  const started = process.hrtime.bigint();
  const { statusCode, body } = await request(url, { dispatcher });
  await body.dump();
  return { ms: Number(process.hrtime.bigint() - started) / 1e6, ok: statusCode === 200 };
}

if (a['first-hosts']) {
  const hosts = a['first-hosts'].split(',');
  const first = [];
  const known = [];
  let failed = 0;
  for (const host of hosts) {
    // A fresh agent is a fresh tunnel: the first one to a host pays for forging its certificate.
    for (const into of [first, known]) {
      const agent = new ProxyAgent({ uri: a.proxy, requestTls: { ca } });
      const r = await timed(`https://${host}:${a.port}/`, agent).catch(() => ({ ms: NaN, ok: false }));
      if (r.ok) into.push(r.ms);
      else failed++;
      await agent.close();
    }
  }
  first.sort((x, y) => x - y);
  known.sort((x, y) => x - y);
  console.log(JSON.stringify({ hosts: hosts.length, failed, firstP50: percentile(first, 50), firstP99: percentile(first, 99), firstMax: first.at(-1), knownP50: percentile(known, 50), knownP99: percentile(known, 99) }));
} else {
  const agent = new ProxyAgent({ uri: a.proxy, requestTls: { ca }, connections: Number(a.connections) });
  const latencies = [];
  let failed = 0;
  const until = Date.now() + Number(a.duration) * 1000;
  const warmUntil = Date.now() + 1000;
  await Promise.all(
    Array.from({ length: Number(a.connections) }, async () => {
      while (Date.now() < until + 1000) {
        const r = await timed(a.target, agent).catch(() => ({ ms: NaN, ok: false }));
        if (Date.now() < warmUntil) continue;
        if (r.ok) latencies.push(r.ms);
        else failed++;
      }
    }),
  );
  await agent.close();
  latencies.sort((x, y) => x - y);
  console.log(JSON.stringify({ rps: latencies.length / Number(a.duration), p50: percentile(latencies, 50), p99: percentile(latencies, 99), total: latencies.length + failed, failed }));
}

/**
 * How many workers `jwtproxy` runs (issue 16): one per core within a container's CPU limit
 * (cgroup v2 cpu.max), the flag over the file, and one worker — said in one line — where worker
 * threads cannot share a port (no reusePort, a unix socket) or a plugin is loaded without a
 * setting. The last part through the real command.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '@jwtproxy/config';
import { autoWorkers, availableCores, coresOfCpuMax, hasReusePort, planWorkers, workersOfMemoryMax } from '../src/workers.js';
import { e2eConfig, jwtproxyConfig, runCli, startCli, tempDir } from './helpers.js';

const verifier = jwtproxyConfig({ verifiers: [e2eConfig.verifier({ upstream: 'http://127.0.0.1:9', audience: 'http://a.test' })] });
const configOf = (extra = ''): ReturnType<typeof parseConfig> => parseConfig(`${verifier}${extra}`, 'c.yaml');

describe('the worker count', () => {
  it('reads a cgroup v2 CPU limit: a quota of 1.5 CPUs gives 2, "max" gives none', () => {
    expect(coresOfCpuMax('max 100000\n')).toBeUndefined();
    expect(coresOfCpuMax('150000 100000\n')).toBe(2);
    expect(coresOfCpuMax('100000 100000')).toBe(1);
    expect(coresOfCpuMax('50000 100000')).toBe(1);
    expect(coresOfCpuMax('400000 100000')).toBe(4);
    expect(coresOfCpuMax('garbage')).toBeUndefined();
  });

  it('caps the cores by the limit in cpu.max, and never below 1', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'jwtproxy-cpu-'));
    try {
      const file = path.join(dir, 'cpu.max');
      await writeFile(file, '100000 100000\n');
      expect(availableCores(file)).toBe(1);
      await writeFile(file, 'max 100000\n');
      expect(availableCores(file)).toBeGreaterThanOrEqual(1);
      expect(availableCores(path.join(dir, 'absent'))).toBeGreaterThanOrEqual(1);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('holds one worker per 128 MiB of a cgroup v2 memory limit: 128 MiB gives 1, 512 MiB 4, "max" no cap', async () => {
    const mib = 1024 * 1024;
    expect(workersOfMemoryMax('max\n')).toBeUndefined();
    expect(workersOfMemoryMax(`${128 * mib}\n`)).toBe(1);
    expect(workersOfMemoryMax(`${100 * mib}`)).toBe(1);
    expect(workersOfMemoryMax(`${300 * mib}`)).toBe(2);
    expect(workersOfMemoryMax(`${512 * mib}`)).toBe(4);
    const dir = await mkdtemp(path.join(tmpdir(), 'jwtproxy-mem-'));
    try {
      const cpu = path.join(dir, 'cpu.max');
      const memory = path.join(dir, 'memory.max');
      await writeFile(cpu, '800000 100000\n');
      await writeFile(memory, `${128 * mib}\n`);
      // Eight cores' quota (if the machine has them), a sidecar's 128 MiB: one worker.
      expect(autoWorkers(cpu, memory)).toBe(1);
      await writeFile(memory, `${256 * mib}\n`);
      expect(autoWorkers(cpu, memory)).toBe(Math.min(2, availableCores(cpu)));
      await writeFile(memory, 'max\n');
      expect(autoWorkers(cpu, memory)).toBe(availableCores(cpu));
      expect(autoWorkers(cpu, path.join(dir, 'absent'))).toBe(availableCores(cpu));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('knows which Node versions can share a port among threads (listen reusePort: 22.12+, 23.1+)', () => {
    const at = (node: string): boolean => hasReusePort({ ...process.versions, node });
    expect([at('20.20.2'), at('22.11.0'), at('22.12.0'), at('23.0.0'), at('23.1.0'), at('24.22.3')]).toEqual([false, false, true, false, true, true]);
  });

  it('takes -workers over jwtproxy.workers over the default auto; auto is the cores; falls back to 1 with the reason', () => {
    expect(planWorkers(configOf(), undefined, { cores: 4, reusePort: true })).toEqual({ count: 4, from: 'cores' });
    expect(planWorkers(configOf(), undefined, { cores: 1, reusePort: true })).toEqual({ count: 1, from: 'cores' });
    expect(planWorkers(configOf(), undefined, { cores: 4, reusePort: false })).toMatchObject({ count: 1, from: 'cores', fallback: expect.stringMatching(/no listen\(\{ reusePort \}\).*one worker instead of 4/) });
    expect(planWorkers(configOf(), undefined, { cores: 4, reusePort: true, plugins: 1 })).toMatchObject({ count: 1, fallback: expect.stringMatching(/with --plugin, workers must be a number/) });
    expect(planWorkers(configOf(), 'auto', { cores: 4, reusePort: true })).toEqual({ count: 4, from: 'cores' });
    expect(planWorkers(configOf('  workers: auto\n'), undefined, { cores: 4, reusePort: true })).toEqual({ count: 4, from: 'cores' });
    expect(planWorkers(configOf('  workers: 3\n'), undefined, { cores: 4, reusePort: true })).toEqual({ count: 3, from: 'config' });
    expect(planWorkers(configOf('  workers: 3\n'), 2, { cores: 4, reusePort: true })).toEqual({ count: 2, from: 'flag' });
    expect(planWorkers(configOf(), 1, { cores: 4, reusePort: true })).toEqual({ count: 1, from: 'flag' });
    expect(planWorkers(configOf(), 'auto', { cores: 4, reusePort: false })).toMatchObject({ count: 1, fallback: expect.stringMatching(/no listen\(\{ reusePort \}\).*one worker instead of 4/) });
    expect(planWorkers(configOf(), 'auto', { cores: 4, reusePort: true, plugins: 1 })).toMatchObject({ count: 1, fallback: expect.stringMatching(/with --plugin, workers must be a number/) });
    expect(planWorkers(configOf(), 2, { cores: 4, reusePort: true, plugins: 1 })).toEqual({ count: 2, from: 'flag' });
    const unix = parseConfig(verifier.replace('127.0.0.1:0', 'unix:/tmp/jwtproxy-plan.sock'), 'c.yaml');
    expect(planWorkers(unix, 2, { reusePort: true })).toMatchObject({ count: 1, fallback: expect.stringMatching(/verifier_proxies\[0\] listens on a unix socket/) });
  });
});

describe('through the command', () => {
  let files: Awaited<ReturnType<typeof tempDir>>;
  beforeAll(async () => {
    files = await tempDir();
  });
  afterAll(async () => {
    await files.cleanup();
  });

  it('-workers takes a whole number from 1 to 256 or auto (exit 2 otherwise)', async () => {
    for (const bad of ['0', '257', 'two', '1.5']) {
      const result = await runCli(['-config', 'x.yaml', '-workers', bad]);
      expect(result.code).toBe(2);
      expect(result.stderr).toBe(`jwtproxy: -workers must be a whole number from 1 to 256 or auto (got ${JSON.stringify(bad)}) (see jwtproxy --help)\n`);
    }
  });

  it('jwtproxy.workers: 0 is a configuration error naming the key and file:line', async () => {
    const file = await files.write('zero.yaml', `${verifier}  workers: 0\n`);
    const result = await runCli(['-config', file]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^jwtproxy: workers: must be from 1 to 256 or auto \(one per available core\), got 0 \(\S*zero\.yaml:\d+\)\n$/);
  });

  it('-workers 2 on a unix socket listener: one worker, said in one warning line, and it serves', async () => {
    const socket = path.join(files.dir, 'v.sock');
    const file = await files.write('unix.yaml', verifier.replace('127.0.0.1:0', `unix:${socket}`));
    const cli = await startCli(['-config', file, '-workers', '2']);
    try {
      const lines = cli.logLines().filter((line) => /one worker instead of 2/.test(line.msg ?? ''));
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatchObject({ level: 'warn', workers: '1' });
      // On a Node without reusePort that is the reason given; with it, the unix socket is.
      expect(lines[0]!.msg).toMatch(hasReusePort() ? /verifier_proxies\[0\] listens on a unix socket/ : /no listen\(\{ reusePort \}\)/);
      expect(cli.servers['verifier_proxies[0]']).toBe(`unix:${socket}`);
      expect(cli.logLines().some((line) => line.worker !== undefined)).toBe(false);
    } finally {
      expect((await cli.stop()).code).toBe(0);
    }
  });

  it('-workers 1: no worker thread and no line about workers', async () => {
    const file = await files.write('one.yaml', verifier);
    const cli = await startCli(['-config', file, '-workers', '1']);
    try {
      expect(cli.stderr()).not.toMatch(/worker/);
    } finally {
      expect((await cli.stop()).code).toBe(0);
    }
  });

  it('no setting: one worker per core this machine gives (auto), or one and an info line saying why', async () => {
    const file = await files.write('default.yaml', verifier);
    const cli = await startCli(['-config', file, '-log-level', 'debug'], { defaultWorkers: true, timeoutMs: 30_000 });
    const cores = autoWorkers();
    try {
      const fallback = cli.logLines().filter((line) => /one worker instead of/.test(line.msg ?? ''));
      if (cores > 1 && hasReusePort()) {
        expect(cli.logLines().filter((line) => line.msg === 'workers started')).toEqual([expect.objectContaining({ workers: String(cores) })]);
        // Every worker listens and says so, but at info only the first: the others' start lines, the
        // same lines again, are at debug (a worker's log reaches the primary's stderr a little later).
        const listening = (level: string): Set<string | undefined> =>
          new Set(cli.logLines().filter((line) => line.msg === 'verifier proxy listening' && line.level === level).map((line) => line.worker));
        await expect.poll(() => listening('debug'), { timeout: 5_000 }).toEqual(new Set(Array.from({ length: cores - 1 }, (_, i) => String(i + 2))));
        await expect.poll(() => listening('info'), { timeout: 5_000 }).toEqual(new Set(['1']));
        expect(fallback).toEqual([]);
      } else {
        expect(cli.logLines().filter((line) => line.worker !== undefined)).toEqual([]);
        if (cores > 1) expect(fallback).toEqual([expect.objectContaining({ level: 'info', workers: '1', msg: expect.stringMatching(new RegExp(`no listen\\(\\{ reusePort \\}\\).*one worker instead of ${cores}`)) })]);
        else expect(fallback).toEqual([]);
      }
      const response = await fetch(`${cli.servers['verifier_proxies[0]']}/`);
      expect(response.status).toBe(403);
    } finally {
      expect((await cli.stop()).code).toBe(0);
    }
  });
});

import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { RepeatedLogLimiter, createLogger, silentLogger, type Logger } from '../src/index.js';
import { FLUSH_INTERVAL_MS } from '../src/logger.js';

describe('RepeatedLogLimiter', () => {
  it('writes the first line of a kind, holds back repeats within the interval, then writes one with their count', () => {
    let now = 1_000_000;
    const limiter = new RepeatedLogLimiter(silentLogger, { intervalMs: 10_000, clock: () => now });
    expect(limiter.admit('redis down')).toBe(0);
    for (let i = 0; i < 500; i++) expect(limiter.admit('redis down')).toBeUndefined();
    // Another kind of failure is not held back by the first.
    expect(limiter.admit('upstream down')).toBe(0);
    now += 9_999;
    expect(limiter.admit('redis down')).toBeUndefined();
    now += 1;
    expect(limiter.admit('redis down')).toBe(501);
    expect(limiter.admit('redis down')).toBeUndefined();
    now += 60_000;
    expect(limiter.admit('redis down')).toBe(1);
    expect(limiter.admit('redis down')).toBeUndefined();
  });

  it('stays bounded when every failure has a different text', () => {
    const limiter = new RepeatedLogLimiter(silentLogger, { intervalMs: 10_000, clock: () => 0 });
    for (let i = 0; i < 5_000; i++) expect(limiter.admit(`connect ECONNREFUSED 127.0.0.1:${i}`)).toBe(0);
  });

  it('writes through the logger at the given level, with repeated=N after held-back lines', () => {
    let now = 0;
    const lines: string[] = [];
    const record = (level: string) => (message: string, fields?: Record<string, unknown>) => lines.push(`${level} ${message} ${JSON.stringify(fields)}`);
    const logger: Logger = { debug: record('debug'), info: record('info'), warn: record('warn'), error: record('error') };
    const limiter = new RepeatedLogLimiter(logger, { intervalMs: 1_000, clock: () => now });
    for (let i = 0; i < 3; i++) limiter.write('warn', 'ECONNREFUSED', 'upstream request failed', { upstream: 'http://127.0.0.1:1' });
    now = 1_000;
    limiter.write('warn', 'ECONNREFUSED', 'upstream request failed', { upstream: 'http://127.0.0.1:1' });
    expect(lines).toEqual([
      'warn upstream request failed {"upstream":"http://127.0.0.1:1"}',
      'warn upstream request failed {"upstream":"http://127.0.0.1:1","repeated":2}',
    ]);
  });
});

/** A stream that keeps each write apart, as a file or pipe would receive them. */
function recordingStream(): Writable & { writes: string[]; text(): string } {
  const writes: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      writes.push(chunk.toString('utf8'));
      done();
    },
  });
  return Object.assign(stream, { writes, text: () => writes.join('') });
}

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
/** Past the interval info lines wait for (and a little more for a loaded machine's timers). */
const nextFlush = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, FLUSH_INTERVAL_MS + 30));

describe('createLogger (text)', () => {
  it('writes logfmt lines: bare tokens, quoted text, numbers as JSON writes them, child bindings, no undefined fields', async () => {
    const stream = recordingStream();
    const logger = createLogger({ level: 'info', stream, clock: () => Date.UTC(2026, 10, 29, 12, 0, 5, 7) });
    logger.info('access', { method: 'GET', host: '127.0.0.1:8080', path: '/a b', status: 200, duration_ms: 1.25, skipped: undefined, ok: true });
    logger.child!({ component: 'verifier_proxies[0]' }).info('refused', { reason: 'ERR_INVALID_CLAIM', received_aud: 'http://billing.internal:9000', empty: '', error: new Error('no key "x"') });
    logger.info('odd numbers', { nan: NaN, inf: -Infinity, huge: 1e21, tiny: 1e-7, negative: -3, object: { a: 1 }, list: [1] });
    logger.debug('not at info');
    await nextFlush();
    expect(stream.text()).toBe(
      [
        'time=2026-11-29T12:00:05.007Z level=info msg="access" method=GET host=127.0.0.1:8080 path="/a b" status=200 duration_ms=1.25 ok=true',
        'time=2026-11-29T12:00:05.007Z level=info msg="refused" component="verifier_proxies[0]" reason=ERR_INVALID_CLAIM received_aud=http://billing.internal:9000 empty="" error="no key \\"x\\""',
        'time=2026-11-29T12:00:05.007Z level=info msg="odd numbers" nan=null inf=null huge="1e+21" tiny=1e-7 negative=-3 object="{\\"a\\":1}" list="[1]"',
        '',
      ].join('\n'),
    );
  });

  it('time= is the ISO time to the millisecond, also across seconds and before 1970, leap days and centuries, and beyond years 0-9999', async () => {
    const times = [0, 9, 99, 999, 1000, 1000.9, 59_999, 60_000, Date.UTC(2026, 0, 1) - 1, Date.UTC(2026, 0, 1), Date.UTC(2026, 0, 1) + 10, -1, -1500.5];
    // The date is computed without Date (logger.ts, isoSecond): the calendar's corners, and the
    // years toISOString writes with a sign, which still go through Date.
    times.push(Date.UTC(2024, 1, 29, 23, 59, 59, 999), Date.UTC(2024, 2, 1), Date.UTC(2000, 1, 29, 12), Date.UTC(1900, 1, 28, 23, 59, 59), Date.UTC(1900, 2, 1), Date.UTC(2100, 1, 28, 23, 59, 59, 999), Date.UTC(2100, 2, 1));
    times.push(Date.UTC(1969, 11, 31, 23, 59, 59, 999), -62_167_219_200_000, -62_167_219_200_001, 253_402_300_799_999, 253_402_300_800_000, 8.64e15, -8.64e15);
    let at = 0;
    const stream = recordingStream();
    const logger = createLogger({ stream, clock: () => times[at]! });
    for (at = 0; at < times.length; at++) logger.info('tick');
    await nextFlush();
    const written = stream.text().trimEnd().split('\n').map((line) => /^time=(\S+) /.exec(line)![1]);
    expect(written).toEqual(times.map((t) => new Date(t).toISOString()));
  });

  it('gathers the info lines of several turns into one write after the interval; a warn or error line goes out at once, after those before it', async () => {
    const stream = recordingStream();
    const logger = createLogger({ stream, clock: () => 0 });
    logger.info('one');
    await nextTurn();
    logger.info('two');
    await nextTurn();
    expect(stream.writes).toEqual([]);
    await nextFlush();
    expect(stream.writes).toHaveLength(1);
    expect(stream.writes[0]!.split('\n').filter(Boolean).map((line) => /msg="(\w+)"/.exec(line)![1])).toEqual(['one', 'two']);

    logger.info('three');
    logger.warn('four');
    // Written at once: what explains a failure is not held back.
    expect(stream.writes).toHaveLength(2);
    expect(stream.writes[1]).toMatch(/msg="three".*\n.*level=warn msg="four"\n$/);
    logger.error('five');
    expect(stream.writes).toHaveLength(3);
  });

  it('loggers writing to one stream keep their order (a reload makes a new logger for the same stderr)', async () => {
    const stream = recordingStream();
    const first = createLogger({ stream, clock: () => 0 });
    const second = createLogger({ stream, level: 'debug', clock: () => 0 });
    first.info('a');
    second.debug('b');
    first.child!({ component: 'x' }).info('c');
    await nextFlush();
    expect(stream.writes).toHaveLength(1);
    expect(stream.text().match(/msg="(\w)"/g)).toEqual(['msg="a"', 'msg="b"', 'msg="c"']);
  });

  it('holds at most 64 KiB: a burst within one turn is written in parts as it grows, every line in order', () => {
    const stream = recordingStream();
    const logger = createLogger({ stream, clock: () => 0 });
    for (let i = 0; i < 5_000; i++) logger.info('access', { i, path: '/some/path/of/a/request' });
    // Still in the same turn: most of it was written already, each write at most 64 KiB and a line.
    expect(stream.writes.length).toBeGreaterThan(4);
    for (const write of stream.writes) expect(write.length).toBeLessThan(64 * 1024 + 200);
    return nextFlush().then(() => {
      const numbers = stream.text().trimEnd().split('\n').map((line) => Number(/ i=(\d+) /.exec(line)![1]));
      expect(numbers).toEqual(Array.from({ length: 5_000 }, (_, i) => i));
    });
  });
});

describe('createLogger (json)', () => {
  it('writes one JSON object a line with level, time, bindings, fields and msg, gathered per turn like text', async () => {
    const stream = recordingStream();
    const logger = createLogger({ format: 'json', stream, clock: () => Date.UTC(2026, 10, 29, 12, 0, 5, 70) });
    logger.info('access', { method: 'GET', status: 200, skipped: undefined });
    logger.child!({ component: 'signer_proxy' }).info('refused', { error: new Error('boom') });
    expect(stream.writes).toEqual([]);
    await nextFlush();
    expect(stream.writes).toHaveLength(1);
    expect(stream.text()).toBe(
      '{"level":"info","time":"2026-11-29T12:00:05.070Z","method":"GET","status":200,"msg":"access"}\n' +
        '{"level":"info","time":"2026-11-29T12:00:05.070Z","component":"signer_proxy","error":"boom","msg":"refused"}\n',
    );
    logger.warn('now');
    expect(stream.writes).toHaveLength(2);
  });
});

describe('lines gathered when the process ends', () => {
  const coreDist = fileURLToPath(new URL('../dist/index.js', import.meta.url));

  /** Runs a module in a real node process that logs to its stderr, then ends as `ending` says. */
  function runLogging(ending: string, format: 'text' | 'json' = 'text'): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
    const script = `
      const { createLogger } = await import(${JSON.stringify(coreDist)});
      const logger = createLogger({ format: ${JSON.stringify(format)} });
      for (let i = 0; i < 1000; i++) logger.info('access', { i });
      ${ending}`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    return new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stderr })));
  }

  it('stderr redirected to a file (written with the file descriptor, not through the stream): every line, in order, past 64 KiB and at exit', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'logger-file-'));
    try {
      const file = path.join(dir, 'stderr.log');
      const fd = openSync(file, 'a');
      const script = `
        const { createLogger } = await import(${JSON.stringify(coreDist)});
        const logger = createLogger({});
        for (let i = 0; i < 5000; i++) logger.info('access', { i, path: '/a/path/of/some/length' });
        setTimeout(() => { logger.info('later'); logger.warn('last'); }, 50);`;
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'ignore', fd] });
      const code = await new Promise((resolve) => child.on('close', resolve));
      closeSync(fd);
      expect(code).toBe(0);
      const lines = readFileSync(file, 'utf8').trimEnd().split('\n');
      expect(lines.filter((line) => line.includes('msg="access"')).map((line) => Number(/ i=(\d+) /.exec(line)![1]))).toEqual(Array.from({ length: 5000 }, (_, i) => i));
      expect(lines.slice(-2).map((line) => /msg="(\w+)"/.exec(line)![1])).toEqual(['later', 'last']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  const accessCount = (stderr: string): number => stderr.split('\n').filter((line) => line.includes('access')).length;

  it('process.exit in the same turn: every line is written', async () => {
    const result = await runLogging('process.exit(3);');
    expect(result.code).toBe(3);
    expect(accessCount(result.stderr)).toBe(1000);
  });

  it('an uncaught exception in the same turn: every line is written, then the exception', async () => {
    const result = await runLogging("throw new Error('fatal');");
    expect(result.code).toBe(1);
    expect(accessCount(result.stderr)).toBe(1000);
    expect(result.stderr).toContain('Error: fatal');
  });

  it('a handled SIGTERM that exits (as the CLI stops): every line is written, JSON too', async () => {
    const result = await runLogging("process.on('SIGTERM', () => { logger.info('stopped'); process.exit(0); }); process.kill(process.pid, 'SIGTERM'); setTimeout(() => {}, 5000);", 'json');
    expect(result.code).toBe(0);
    const lines = result.stderr.trimEnd().split('\n').map((line) => JSON.parse(line) as { msg: string });
    expect(lines.filter((line) => line.msg === 'access')).toHaveLength(1000);
    expect(lines.at(-1)!.msg).toBe('stopped');
  });
});

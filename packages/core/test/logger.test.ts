import { describe, expect, it } from 'vitest';
import { RepeatedLogLimiter, silentLogger, type Logger } from '../src/index.js';

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

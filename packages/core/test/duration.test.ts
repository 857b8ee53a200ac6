import { describe, expect, it } from 'vitest';
import { formatDuration, parseDuration, toDuration } from '../src/index.js';

describe('Go durations', () => {
  it.each([
    ['300ms', 300],
    ['1.5h', 5_400_000],
    ['1m30s', 90_000],
    ['-1m', -60_000],
    ['0', 0],
    ['12h', 43_200_000],
    ['1h2m3s4ms', 3_723_004],
    ['.5s', 500],
    ['1.s', 1000],
    ['100us', 0.1],
    ['100µs', 0.1],
    ['250ns', 0.00025],
    ['+5s', 5000],
  ])('parses %s', (text, ms) => {
    expect(parseDuration(text)).toBeCloseTo(ms, 9);
  });

  it.each(['', '5', '5x', 'ms', '1m 30s', '.s', '-', '1.5', 'abc', '1d', '5s junk'])('rejects %j', (text) => {
    expect(() => parseDuration(text)).toThrow(`${JSON.stringify(text)} is not a duration`);
  });

  it.each([
    [0, '0s'],
    [300, '300ms'],
    [90_000, '1m30s'],
    [5_400_000, '1h30m0s'],
    [3_600_000, '1h0m0s'],
    [1500, '1.5s'],
    [0.0015, '1.5µs'],
    [-60_000, '-1m0s'],
    [0.00025, '250ns'],
  ])('formats %d ms as %s', (ms, text) => {
    expect(formatDuration(ms)).toBe(text);
    expect(parseDuration(text)).toBeCloseTo(ms, 9);
  });

  it('accepts YAML 0 but not other bare numbers', () => {
    expect(toDuration(0)).toBe(0);
    expect(toDuration('5m')).toBe(300_000);
    expect(() => toDuration(5)).toThrow('"5" is not a duration');
  });
});

/**
 * Go `time.Duration` strings, as the Go configuration uses them: `300ms`, `1.5h`, `1m30s`,
 * `-1m`, `0`. Values are milliseconds (fractional below 1 ms).
 */

const unitNanos: Record<string, number> = {
  ns: 1,
  us: 1e3,
  // Written as escapes: one character above U+00FF anywhere in a source file makes V8 keep the
  // whole file's text two bytes a character (the command's bundle chunk holding core: +190 KB idle).
  '\u00b5s': 1e3, // µs, U+00B5 micro sign
  '\u03bcs': 1e3, // μs, U+03BC Greek mu
  ms: 1e6,
  s: 1e9,
  m: 60e9,
  h: 3600e9,
};

const component = /^(\d*)(?:\.(\d*))?(ns|us|\u00b5s|\u03bcs|ms|s|m|h)/;

export class DurationParseError extends Error {
  constructor(text: string) {
    super(`${JSON.stringify(text)} is not a duration`);
    this.name = 'DurationParseError';
  }
}

/** Parses a Go duration string into milliseconds; anything Go would reject is a DurationParseError. */
export function parseDuration(text: string): number {
  let rest = text;
  let sign = 1;
  if (rest.startsWith('-') || rest.startsWith('+')) {
    if (rest[0] === '-') sign = -1;
    rest = rest.slice(1);
  }
  if (rest === '0') return 0;
  if (rest === '') throw new DurationParseError(text);
  let nanos = 0;
  while (rest !== '') {
    const match = component.exec(rest);
    if (!match) throw new DurationParseError(text);
    const [whole, intPart = '', fracPart, unit = ''] = match;
    if (intPart === '' && (fracPart === undefined || fracPart === '')) throw new DurationParseError(text);
    const value = Number(`${intPart || '0'}.${fracPart ?? '0'}`);
    nanos += value * (unitNanos[unit] ?? NaN);
    rest = rest.slice(whole.length);
  }
  if (!Number.isFinite(nanos) || nanos > 2 ** 63) throw new DurationParseError(text);
  return (sign * Math.round(nanos)) / 1e6;
}

/** Accepts a Go duration string, or 0; used for YAML values. */
export function toDuration(value: unknown): number {
  if (value === 0) return 0;
  if (typeof value === 'string') return parseDuration(value);
  throw new DurationParseError(String(value));
}

function formatFraction(value: number, digits: number): string {
  // value is an integer count of the smaller unit; print it as a decimal with trailing zeros cut.
  const whole = Math.floor(value / 10 ** digits);
  const frac = (value % 10 ** digits).toString().padStart(digits, '0').replace(/0+$/, '');
  return frac ? `${whole}.${frac}` : `${whole}`;
}

/** Formats milliseconds as Go's Duration.String() does: `1h30m0s`, `300ms`, `1.5µs`, `0s`. */
export function formatDuration(ms: number): string {
  let nanos = Math.round(ms * 1e6);
  if (nanos === 0) return '0s';
  const sign = nanos < 0 ? '-' : '';
  nanos = Math.abs(nanos);
  if (nanos < 1e3) return `${sign}${nanos}ns`;
  if (nanos < 1e6) return `${sign}${formatFraction(nanos, 3)}µs`;
  if (nanos < 1e9) return `${sign}${formatFraction(nanos, 6)}ms`;
  const hours = Math.floor(nanos / 3600e9);
  nanos -= hours * 3600e9;
  const minutes = Math.floor(nanos / 60e9);
  nanos -= minutes * 60e9;
  const seconds = formatFraction(nanos, 9);
  if (hours > 0) return `${sign}${hours}h${minutes}m${seconds}s`;
  if (minutes > 0) return `${sign}${minutes}m${seconds}s`;
  return `${sign}${seconds}s`;
}

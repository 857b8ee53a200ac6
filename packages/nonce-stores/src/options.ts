import { ConfigError, toDuration } from '@jwtproxy/core';

/** A short description of a value for error messages. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  return typeof value === 'string' ? JSON.stringify(value) : typeof value === 'number' ? String(value) : typeof value;
}

/** A misspelt option would otherwise be ignored silently and its default used. */
export function rejectUnknownOptions(options: Record<string, unknown>, known: readonly string[]): void {
  for (const key of Object.keys(options)) {
    const expected = known.length ? `expected ${known.join(', ')}` : 'this type takes no options';
    if (!known.includes(key)) throw new ConfigError(key, `unknown option (${expected})`);
  }
}

/** A Go duration string (or 0) in ms; absent means `fallback`. */
export function durationOption(options: Record<string, unknown>, key: string, fallback: number): number {
  const value = options[key];
  if (value === undefined || value === null) return fallback;
  try {
    return toDuration(value);
  } catch {
    throw new ConfigError(key, `must be a duration such as "1m" or "30s" (or 0), got ${describe(value)}`);
  }
}

export function positiveIntegerOption(options: Record<string, unknown>, key: string, fallback: number): number {
  const value = options[key];
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
    throw new ConfigError(key, `must be a whole number of 1 or more, got ${describe(value)}`);
  }
  return value;
}

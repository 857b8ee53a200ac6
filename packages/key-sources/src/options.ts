import path from 'node:path';
import { ConfigError } from '@jwtproxy/core';

/** A short, key-free description of a value for error messages. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  return typeof value === 'string' ? JSON.stringify(value) : typeof value;
}

/**
 * Refuses option names the component does not know: a misspelt `private_key_pth` would
 * otherwise be silently ignored and surface later as "is required" or, worse, a default.
 */
export function rejectUnknownOptions(options: Record<string, unknown>, known: readonly string[]): void {
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) throw new ConfigError(key, `unknown option (expected ${known.join(', ')})`);
  }
}

export function requiredString(options: Record<string, unknown>, key: string): string {
  const value = options[key];
  if (value === undefined || value === null) throw new ConfigError(key, 'is required');
  if (typeof value !== 'string') throw new ConfigError(key, `must be a string, got ${describe(value)}`);
  if (value === '') throw new ConfigError(key, 'must not be empty');
  return value;
}

/** A path from the configuration; relative paths are relative to the configuration file's directory. */
export function resolvePath(baseDir: string, file: string): string {
  return path.resolve(baseDir, file);
}

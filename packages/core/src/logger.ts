import type { Logger } from './types.js';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const ranks: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export function isLogLevel(value: string): value is LogLevel {
  return value in ranks;
}

function quote(value: unknown): string {
  const text = value instanceof Error ? value.message : typeof value === 'string' ? value : JSON.stringify(value);
  return /^[\w./:@-]+$/.test(text ?? '') ? String(text) : JSON.stringify(text);
}

/**
 * A logger writing logfmt lines (as the Go tool's logrus does) to a stream, stderr by default.
 * `time=… level=info msg="…" key=value`.
 */
export function createLogger(options: { level?: LogLevel; stream?: NodeJS.WritableStream; clock?: () => number } = {}): Logger {
  const threshold = ranks[options.level ?? 'info'];
  const stream = options.stream ?? process.stderr;
  const now = options.clock ?? Date.now;
  const write = (level: LogLevel, message: string, fields?: Record<string, unknown>): void => {
    if (ranks[level] < threshold) return;
    let line = `time=${new Date(now()).toISOString()} level=${level} msg=${JSON.stringify(message)}`;
    if (fields) for (const [key, value] of Object.entries(fields)) if (value !== undefined) line += ` ${key}=${quote(value)}`;
    stream.write(line + '\n');
  };
  return {
    debug: (m, f) => write('debug', m, f),
    info: (m, f) => write('info', m, f),
    warn: (m, f) => write('warn', m, f),
    error: (m, f) => write('error', m, f),
  };
}

export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

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

/**
 * Keeps a recurring failure from flooding the log: a proxy refusing thousands of requests a
 * second while Redis, the key server or an upstream is down would otherwise write a line for
 * each. The first line of each kind passes; then at most one per interval, carrying how many
 * were held back since the last (`repeated=N`).
 */
export class RepeatedLogLimiter {
  readonly #logger: Logger;
  readonly #intervalMs: number;
  readonly #clock: () => number;
  /** Kind → when its last line was written and how many were held back since. */
  readonly #kinds = new Map<string, { writtenAt: number; heldBack: number }>();

  constructor(logger: Logger, options: { intervalMs?: number | undefined; clock?: () => number } = {}) {
    this.#logger = logger;
    this.#intervalMs = options.intervalMs ?? 10_000;
    this.#clock = options.clock ?? Date.now;
  }

  /**
   * Whether a line of this kind is written now: undefined to hold it back, else the number of
   * lines held back since the last one written (0 for the first).
   */
  admit(kind: string): number | undefined {
    const now = this.#clock();
    const seen = this.#kinds.get(kind);
    if (seen && now - seen.writtenAt < this.#intervalMs) {
      seen.heldBack++;
      return undefined;
    }
    // Kinds come from error texts; a bound keeps a flood of distinct ones from growing the map.
    if (!seen && this.#kinds.size >= 1_000) this.#kinds.clear();
    const heldBack = seen?.heldBack ?? 0;
    this.#kinds.set(kind, { writtenAt: now, heldBack: 0 });
    return heldBack;
  }

  /** Writes the line unless one of the same kind was written less than an interval ago. */
  write(level: LogLevel, kind: string, message: string, fields: Record<string, unknown> = {}): void {
    const repeated = this.admit(kind);
    if (repeated !== undefined) this.#logger[level](message, repeated ? { ...fields, repeated } : fields);
  }
}

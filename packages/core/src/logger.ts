import { createRequire } from 'node:module';
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

export type LogFormat = 'text' | 'json';

export function isLogFormat(value: string): value is LogFormat {
  return value === 'text' || value === 'json';
}

export interface LoggerOptions {
  level?: LogLevel;
  /** `text`: logfmt lines, as the Go tool's logrus writes them (default); `json`: one JSON object a line (pino). */
  format?: LogFormat;
  /** Where lines go; stderr by default. */
  stream?: NodeJS.WritableStream;
  clock?: () => number;
}

/**
 * The process's logger: logfmt (`time=… level=info msg="…" key=value`, as the Go tool's logrus)
 * or JSON lines through pino, which is loaded only when JSON is asked for (a sidecar that logs
 * text does not pay for it). Both give child loggers whose lines carry their bindings.
 */
export function createLogger(options: LoggerOptions = {}): Logger {
  if (options.format === 'json') return jsonLogger(options);
  return textLogger(ranks[options.level ?? 'info'], options.stream ?? process.stderr, options.clock ?? Date.now, '');
}

function textLogger(threshold: number, stream: NodeJS.WritableStream, now: () => number, bound: string): Logger {
  const write = (level: LogLevel, message: string, fields?: Record<string, unknown>): void => {
    if (ranks[level] < threshold) return;
    let line = `time=${new Date(now()).toISOString()} level=${level} msg=${JSON.stringify(message)}${bound}`;
    if (fields) for (const key in fields) if (fields[key] !== undefined) line += ` ${key}=${quote(fields[key])}`;
    stream.write(line + '\n');
  };
  return {
    debug: (m, f) => write('debug', m, f),
    info: (m, f) => write('info', m, f),
    warn: (m, f) => write('warn', m, f),
    error: (m, f) => write('error', m, f),
    enabled: (level) => ranks[level] >= threshold,
    child(bindings) {
      let more = bound;
      for (const key in bindings) if (bindings[key] !== undefined) more += ` ${key}=${quote(bindings[key])}`;
      return textLogger(threshold, stream, now, more);
    },
  };
}

/** pino's API as used here (loaded lazily: its types are not a dependency of core's users). */
interface PinoLike {
  isLevelEnabled(level: string): boolean;
  debug(fields: object, message: string): void;
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
  child(bindings: object): PinoLike;
}
type PinoFactory = (options: object, stream?: NodeJS.WritableStream) => PinoLike & { constructor: unknown };

function jsonLogger(options: LoggerOptions): Logger {
  const pino = createRequire(import.meta.url)('pino') as PinoFactory & { stdTimeFunctions: { isoTime: () => string } };
  const now = options.clock;
  const base = pino(
    {
      level: options.level ?? 'info',
      base: undefined,
      messageKey: 'msg',
      timestamp: now ? () => `,"time":"${new Date(now()).toISOString()}"` : pino.stdTimeFunctions.isoTime,
      formatters: { level: (label: string) => ({ level: label }) },
      // An Error as its message, as in the text format (stacks stay out of access and refusal lines).
      serializers: { error: (value: unknown) => (value instanceof Error ? value.message : value) },
    },
    options.stream ?? process.stderr,
  );
  return wrapPino(base);
}

function wrapPino(pino: PinoLike): Logger {
  const clean = (fields?: Record<string, unknown>): object => fields ?? {};
  return {
    debug: (m, f) => pino.debug(clean(f), m),
    info: (m, f) => pino.info(clean(f), m),
    warn: (m, f) => pino.warn(clean(f), m),
    error: (m, f) => pino.error(clean(f), m),
    child: (bindings) => wrapPino(pino.child(bindings)),
    enabled: (level) => pino.isLevelEnabled(level),
  };
}

/** `logger.child(bindings)` where the logger has one; else a wrapper that adds the bindings to every line. */
export function childLogger(logger: Logger, bindings: Record<string, unknown>): Logger {
  if (logger.child) return logger.child(bindings);
  const merge = (fields?: Record<string, unknown>): Record<string, unknown> => ({ ...bindings, ...fields });
  return {
    debug: (m, f) => logger.debug(m, merge(f)),
    info: (m, f) => logger.info(m, merge(f)),
    warn: (m, f) => logger.warn(m, merge(f)),
    error: (m, f) => logger.error(m, merge(f)),
    child: (more) => childLogger(logger, { ...bindings, ...more }),
    ...(logger.enabled ? { enabled: (level: LogLevel) => logger.enabled!(level) } : {}),
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

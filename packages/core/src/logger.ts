import { fstatSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Logger } from './types.js';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const ranks: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export function isLogLevel(value: string): value is LogLevel {
  return value in ranks;
}

/** Whether `text` is written bare in a logfmt line: one or more of `A-Z a-z 0-9 _ . / : @ -`. */
function isBare(text: string): boolean {
  const length = text.length;
  if (length === 0) return false;
  for (let i = 0; i < length; i++) {
    const c = text.charCodeAt(i);
    // a-z, A-Z, 0-9, then _ . / : @ -
    if ((c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 45 && c <= 58) || c === 95 || c === 64) continue;
    return false;
  }
  return true;
}

/** A field's value in a logfmt line: bare when it is a plain token, else a JSON string. */
function quote(value: unknown): string {
  // The common cases first (an access line is mostly short tokens and numbers), without a regex.
  if (typeof value === 'string') return isBare(value) ? value : JSON.stringify(value);
  if (typeof value === 'number') {
    // As JSON.stringify would write it: NaN and ±Infinity as null; 1e+21 quoted for its `+`.
    if (!Number.isFinite(value)) return 'null';
    const text = String(value);
    return text.includes('+') ? `"${text}"` : text;
  }
  const text = value instanceof Error ? value.message : JSON.stringify(value);
  return isBare(text ?? '') ? String(text) : JSON.stringify(text);
}

/**
 * `time=` values: what `new Date(ms).toISOString()` gives, with the part up to the second kept while
 * the second lasts (a busy proxy writes thousands of lines a second; formatting a date each time is
 * most of a line's cost besides the write).
 */
function isoTimestamps(): (ms: number) => string {
  let second = NaN;
  let prefix = '';
  return (ms) => {
    // Toward zero, as Date does with a fraction of a millisecond.
    const whole = Math.trunc(ms);
    const at = Math.floor(whole / 1000);
    if (at !== second) {
      prefix = isoSecond(at);
      second = at;
    }
    const milli = whole - at * 1000;
    return prefix + (milli < 10 ? '00' : milli < 100 ? '0' : '') + milli + 'Z';
  };
}

const twoDigits = (n: number): string => (n < 10 ? '0' : '') + n;

/**
 * `new Date(at * 1000).toISOString()` up to the `.` before the milliseconds, computed from the
 * number of days since 1970 (the proleptic Gregorian calendar, as Date's). Not through Date: on
 * Node 20, V8's toISOString looks up the local time zone's display name through ICU on each call
 * (a time zone, even for a UTC string), and the first call pages in ~0.9 MB of ICU's time-zone data
 * and code (issue 19: the idle RSS of a sidecar, whose start writes its first line). Years outside
 * 0…9999, which toISOString writes with a sign and six digits, and times that are no date
 * (RangeError) still go through Date.
 */
function isoSecond(at: number): string {
  const days = Math.floor(at / 86_400);
  const inDay = at - days * 86_400;
  // Days since 0000-03-01 in 400-year eras of 146,097 days: March first puts the leap day last.
  const shifted = days + 719_468;
  const era = Math.floor(shifted / 146_097);
  const dayOfEra = shifted - era * 146_097;
  const yearOfEra = Math.floor((dayOfEra - Math.floor(dayOfEra / 1460) + Math.floor(dayOfEra / 36_524) - Math.floor(dayOfEra / 146_096)) / 365);
  const dayOfYear = dayOfEra - (365 * yearOfEra + Math.floor(yearOfEra / 4) - Math.floor(yearOfEra / 100));
  const monthFromMarch = Math.floor((5 * dayOfYear + 2) / 153);
  const day = dayOfYear - Math.floor((153 * monthFromMarch + 2) / 5) + 1;
  const month = monthFromMarch < 10 ? monthFromMarch + 3 : monthFromMarch - 9;
  const year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0);
  if (!(year >= 0 && year <= 9999)) return new Date(at * 1000).toISOString().slice(0, -4);
  const hours = Math.floor(inDay / 3600);
  const minutes = Math.floor((inDay - hours * 3600) / 60);
  const seconds = inDay - hours * 3600 - minutes * 60;
  return `${String(year).padStart(4, '0')}-${twoDigits(month)}-${twoDigits(day)}T${twoDigits(hours)}:${twoDigits(minutes)}:${twoDigits(seconds)}.`;
}

/**
 * Lines for one stream, written together at most every FLUSH_INTERVAL_MS rather than one write
 * each: under load a proxy writes thousands of access lines a second, and each write to stderr is
 * a system call (stderr to a file or a pipe is written synchronously by Node). Once per event-loop
 * turn, as before, was still one write for every two or three requests: ~2 µs of a verified
 * request's ~75 µs (CPU profile, verifier with access log, wrk -c32). A warn or error line is
 * written at once with the lines before it, so that what explains a failure is never held back,
 * and lines keep their order with anything the process writes to stderr on its way out. Lines
 * gathered are bounded: at 64 KiB they are written at once (the process waits for a slow reader
 * then; no line is dropped). Whatever is gathered is written when the process exits
 * (process.exit, a signal's graceful stop, an uncaught exception); only a kill -9 or a crash of
 * the runtime itself loses the last interval's lines.
 */
class LineBatch {
  readonly #stream: NodeJS.WritableStream;
  /** The file descriptor of a stream that is a regular file (stderr redirected to a file), else undefined. */
  readonly #fileFd: number | undefined;
  #pending = '';
  #scheduled = false;

  constructor(stream: NodeJS.WritableStream) {
    this.#stream = stream;
    this.#fileFd = regularFileFd(stream);
  }

  add(line: string, now: boolean): void {
    this.#pending += line;
    if (now || this.#pending.length >= MAX_PENDING_CHARS) {
      this.flush();
      return;
    }
    if (!this.#scheduled) {
      this.#scheduled = true;
      unflushed.add(this);
      // Unref'd: lines waiting never keep a process alive; the exit hook writes them.
      setTimeout(this.#flushSoon, FLUSH_INTERVAL_MS).unref();
    }
  }

  readonly #flushSoon = (): void => {
    this.#scheduled = false;
    this.flush();
  };

  /** Writes what is gathered, in one write. */
  flush(): void {
    if (!this.#scheduled) unflushed.delete(this);
    const text = this.#pending;
    if (text === '') return;
    this.#pending = '';
    try {
      // A file is written as Node's stream for it would (synchronously, all of it), without the
      // Buffer that stream makes of each write: 64 KiB of external memory per flush under load.
      if (this.#fileFd !== undefined) writeSync(this.#fileFd, text);
      else this.#stream.write(text);
    } catch {
      // A log that cannot be written (stderr to a full disk: Node writes files synchronously and
      // throws) must not take the proxy down from a timer callback: these lines are lost.
    }
  }
}

function regularFileFd(stream: NodeJS.WritableStream): number | undefined {
  const fd = (stream as { fd?: unknown }).fd;
  if (typeof fd !== 'number') return undefined;
  try {
    return fstatSync(fd).isFile() ? fd : undefined;
  } catch {
    return undefined;
  }
}

/** Characters gathered for one stream before they are written without waiting for the interval. */
const MAX_PENDING_CHARS = 64 * 1024;
/** How long an info or debug line may wait to be written with others. */
export const FLUSH_INTERVAL_MS = 20;

/**
 * Batches with lines waiting for their interval, written at exit. The batch of a stream is
 * the stream's, whichever logger writes to it (the CLI makes a new logger at a reload that
 * changes the level): so it is kept with the stream, not with a logger or a runtime.
 */
const unflushed = new Set<LineBatch>();
const batches = new WeakMap<NodeJS.WritableStream, LineBatch>();
let exitHookInstalled = false;

function batchFor(stream: NodeJS.WritableStream): LineBatch {
  let batch = batches.get(stream);
  if (batch === undefined) {
    batch = new LineBatch(stream);
    batches.set(stream, batch);
    if (!exitHookInstalled) {
      exitHookInstalled = true;
      process.on('exit', () => {
        for (const pending of [...unflushed]) pending.flush();
      });
    }
  }
  return batch;
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
  const now = options.clock ?? Date.now;
  const timestamp = isoTimestamps();
  return textLogger(ranks[options.level ?? 'info'], batchFor(options.stream ?? process.stderr), () => timestamp(now()), '');
}

/** `time=… level=… msg=` for each level, ready to be completed. */
const levelParts: Readonly<Record<LogLevel, string>> = { debug: ' level=debug msg=', info: ' level=info msg=', warn: ' level=warn msg=', error: ' level=error msg=' };

function textLogger(threshold: number, batch: LineBatch, time: () => string, bound: string): Logger {
  const write = (level: LogLevel, message: string, fields?: Record<string, unknown>): void => {
    const rank = ranks[level];
    if (rank < threshold) return;
    let line = 'time=' + time() + levelParts[level] + JSON.stringify(message) + bound;
    if (fields) {
      for (const key in fields) {
        const value = fields[key];
        if (value !== undefined) line += ' ' + key + '=' + quote(value);
      }
    }
    batch.add(line + '\n', rank >= ranks.warn);
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
      return textLogger(threshold, batch, time, more);
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
  const pino = createRequire(import.meta.url)('pino') as PinoFactory;
  const now = options.clock ?? Date.now;
  const timestamp = isoTimestamps();
  const batch = batchFor(options.stream ?? process.stderr);
  const base = pino(
    {
      level: options.level ?? 'info',
      base: undefined,
      messageKey: 'msg',
      // pino's stdTimeFunctions.isoTime, with the second's part kept while it lasts.
      timestamp: () => ',"time":"' + timestamp(now()) + '"',
      formatters: { level: (label: string) => ({ level: label }) },
      // An Error as its message, as in the text format (stacks stay out of access and refusal lines).
      serializers: { error: (value: unknown) => (value instanceof Error ? value.message : value) },
    },
    // pino writes each line whole: gathered per turn like the text format's.
    { write: (line: string) => batch.add(line, false) } as unknown as NodeJS.WritableStream,
  );
  return wrapPino(base, batch);
}

function wrapPino(pino: PinoLike, batch: LineBatch): Logger {
  const clean = (fields?: Record<string, unknown>): object => fields ?? {};
  return {
    debug: (m, f) => pino.debug(clean(f), m),
    info: (m, f) => pino.info(clean(f), m),
    // Written at once, with the lines before them (see LineBatch).
    warn: (m, f) => {
      pino.warn(clean(f), m);
      batch.flush();
    },
    error: (m, f) => {
      pino.error(clean(f), m);
      batch.flush();
    },
    child: (bindings) => wrapPino(pino.child(bindings), batch),
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

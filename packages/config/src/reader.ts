import { ConfigError, readDuration, suggestKey, type ComponentConfig, type DurationRule, type Logger } from '@jwtproxy/core';
import { isAlias, isMap, isScalar, isSeq, type Document, type LineCounter, type Node } from 'yaml';

/**
 * Typed reading of a parsed YAML document that never loses where a value came from:
 * every value is read through its key path (`verifier_proxies[0].verifier.max_ttl`) and
 * every mistake becomes a ConfigError naming that path and the file:line it is on.
 */

/** What the YAML holds, in words, for error messages (never the value of a secret: only scalars are quoted). */
export function describe(node: Node | null | undefined, doc: Document.Parsed): string {
  if (node === null || node === undefined) return 'nothing';
  if (isMap(node)) return 'a mapping';
  if (isSeq(node)) return 'a list';
  if (isScalar(node)) {
    const value = node.value;
    if (value === null) return 'nothing';
    if (typeof value === 'string') return JSON.stringify(value);
    return `${typeof value} ${String(node.source ?? value)}`;
  }
  return describe(isAlias(node) ? node.resolve(doc) : undefined, doc);
}

const joinPath = (parent: string, key: string): string => (parent ? `${parent}.${key}` : key);

export class YamlSource {
  readonly doc: Document.Parsed;
  readonly file: string;
  readonly logger: Logger;
  /** Every unknown key is an error (jwtproxy -check), not a warning. */
  readonly strict: boolean;
  readonly #lines: LineCounter;

  constructor(doc: Document.Parsed, file: string, lines: LineCounter, logger: Logger, strict = false) {
    this.doc = doc;
    this.file = file;
    this.#lines = lines;
    this.logger = logger;
    this.strict = strict;
  }

  lineAtOffset(offset: number): number {
    return this.#lines.linePos(offset).line;
  }

  lineOf(node: Node | null | undefined): number | undefined {
    return node?.range ? this.lineAtOffset(node.range[0]) : undefined;
  }

  resolve(node: unknown): Node | null {
    if (isAlias(node)) return (node.resolve(this.doc) as Node | undefined) ?? null;
    return (node as Node | null | undefined) ?? null;
  }

  error(path: string, line: number | undefined, problem: string): ConfigError {
    return new ConfigError(path, problem, { file: this.file, ...(line ? { line } : {}) });
  }

  /** Every key path inside `node` with the line it is on, for LoadedConfig.lineOf. */
  indexLines(node: unknown, path: string, into: Map<string, number>): void {
    const resolved = this.resolve(node);
    if (isMap(resolved)) {
      for (const pair of resolved.items) {
        const key = isScalar(pair.key) ? String(pair.key.value) : undefined;
        if (key === undefined || key === '<<') continue;
        const keyPath = joinPath(path, key);
        const line = this.lineOf(pair.key as Node);
        if (line !== undefined && !into.has(keyPath)) into.set(keyPath, line);
        this.indexLines(pair.value, keyPath, into);
      }
    } else if (isSeq(resolved)) {
      resolved.items.forEach((item, i) => {
        const itemPath = `${path}[${i}]`;
        const line = this.lineOf(item as Node);
        if (line !== undefined) into.set(itemPath, line);
        this.indexLines(item, itemPath, into);
      });
    }
  }
}

interface Entry {
  /** The value node; null for `key:` with nothing after it. */
  value: Node | null;
  /** Line of the key. */
  line: number | undefined;
}

/**
 * Blocks whose absence falls back to a default that weakens a proxy: found at any other level of a
 * known mapping, they are an error with where they belong, never an "unknown key" warning.
 */
const SECURITY_BLOCK_HOMES: ReadonlyMap<string, string> = new Map([
  ['nonce_storage', 'verifier_proxies[N].verifier'],
  ['key_server', 'verifier_proxies[N].verifier'],
  ['claims_verifiers', 'verifier_proxies[N].verifier'],
  ['private_key', 'signer_proxy.signer'],
]);

/**
 * A YAML mapping at a key path, read key by key; keys it does not know are warned about, except
 * a misplaced security block, which is an error.
 */
export class MapReader {
  readonly src: YamlSource;
  readonly path: string;
  /** Line of the key that holds this mapping (or of the mapping itself). */
  readonly line: number | undefined;
  readonly #entries = new Map<string, Entry>();

  constructor(src: YamlSource, path: string, node: Node, line: number | undefined, known: readonly string[] | 'any') {
    this.src = src;
    this.path = path;
    this.line = line;
    if (!isMap(node)) throw src.error(path, line ?? src.lineOf(node), `must be a mapping, got ${describe(node, src.doc)}`);
    const merged: Node[] = [];
    for (const pair of node.items) {
      const key = isScalar(pair.key) ? String(pair.key.value) : String(pair.key);
      if (key === '<<') {
        merged.push(pair.value as Node);
        continue;
      }
      this.#entries.set(key, { value: src.resolve(pair.value), line: src.lineOf(pair.key as Node) });
    }
    // YAML 1.1 merge keys (`<<: *defaults`): merged keys never override the mapping's own.
    for (const source of merged.flatMap((m) => {
      const resolved = src.resolve(m);
      return isSeq(resolved) ? resolved.items.map((item) => src.resolve(item)) : [resolved];
    })) {
      if (!isMap(source)) continue;
      for (const pair of source.items) {
        const key = isScalar(pair.key) ? String(pair.key.value) : String(pair.key);
        if (!this.#entries.has(key)) this.#entries.set(key, { value: src.resolve(pair.value), line: src.lineOf(pair.key as Node) });
      }
    }
    if (known !== 'any') this.#warnUnknown(known);
  }

  #warnUnknown(known: readonly string[]): void {
    for (const [key, entry] of this.#entries) {
      if (known.includes(key)) continue;
      const home = SECURITY_BLOCK_HOMES.get(key);
      if (home !== undefined) {
        // Ignoring it would silently fall back to a default (a per-process nonce store, say).
        throw this.src.error(this.pathOf(key), entry.line, `is not read here: it belongs under ${home} (is it indented at the wrong level?)`);
      }
      const suggestion = suggestKey(key, known);
      // Directly under `jwtproxy:` a typo (`singer_proxy`) would leave the whole block unread; with
      // -check every unknown key is a mistake to fix before deploying.
      if (this.src.strict || this.path === '') {
        throw this.src.error(this.pathOf(key), entry.line, `is not a known key${suggestion ? ` (did you mean ${suggestion}?)` : ''}`);
      }
      this.src.logger.warn('unknown configuration key, ignored', {
        key: this.pathOf(key),
        at: `${this.src.file}${entry.line ? `:${entry.line}` : ''}`,
        ...(suggestion ? { suggestion } : {}),
      });
    }
  }

  pathOf(key: string): string {
    return joinPath(this.path, key);
  }

  /** Line of `key`, or of this mapping when the key is absent. */
  lineOf(key: string): number | undefined {
    return this.#entries.get(key)?.line ?? this.line;
  }

  keys(): string[] {
    return [...this.#entries.keys()];
  }

  /** The value node, or undefined when the key is absent or empty (`key:` alone, or `~`). */
  node(key: string): Node | undefined {
    const value = this.#entries.get(key)?.value;
    if (value === null || value === undefined) return undefined;
    if (isScalar(value) && value.value === null) return undefined;
    return value;
  }

  has(key: string): boolean {
    return this.node(key) !== undefined;
  }

  fail(key: string, problem: string): never {
    throw this.src.error(this.pathOf(key), this.lineOf(key), problem);
  }

  /** A mistake in the mapping as a whole, or a required key that is not there (at the mapping's line). */
  failMissing(key: string, problem = 'is required'): never {
    throw this.src.error(this.pathOf(key), this.line, problem);
  }

  #got(key: string): string {
    return describe(this.node(key), this.src.doc);
  }

  /** A string; like Go's YAML decoder, a number or boolean scalar is taken as written. */
  optionalString(key: string): string | undefined {
    const node = this.node(key);
    if (node === undefined) return undefined;
    if (!isScalar(node)) this.fail(key, `must be a string, got ${this.#got(key)}`);
    const value = node.value;
    if (typeof value === 'string') return value;
    return node.source ?? String(value);
  }

  string(key: string, fallback: string): string {
    return this.optionalString(key) ?? fallback;
  }

  /** A string that must be there and not empty. */
  requiredString(key: string, problem = 'is required'): string {
    const value = this.optionalString(key);
    if (value === undefined) this.failMissing(key, problem);
    if (value === '') this.fail(key, 'must not be empty');
    return value;
  }

  bool(key: string, fallback: boolean): boolean {
    const node = this.node(key);
    if (node === undefined) return fallback;
    if (!isScalar(node) || typeof node.value !== 'boolean') this.fail(key, `must be true or false, got ${this.#got(key)}`);
    return node.value;
  }

  int(key: string, fallback: number): number {
    const node = this.node(key);
    if (node === undefined) return fallback;
    if (!isScalar(node) || typeof node.value !== 'number' || !Number.isInteger(node.value)) {
      this.fail(key, `must be an integer, got ${this.#got(key)}`);
    }
    return node.value;
  }

  number(key: string, fallback: number): number {
    const node = this.node(key);
    if (node === undefined) return fallback;
    if (!isScalar(node) || typeof node.value !== 'number' || !Number.isFinite(node.value)) this.fail(key, `must be a number, got ${this.#got(key)}`);
    return node.value;
  }

  /** A Go duration string (or 0) as milliseconds, under core's one rule for durations. */
  duration(key: string, fallback: number, rule: DurationRule = 'non-negative'): number {
    const node = this.node(key);
    if (node === undefined) return fallback;
    if (!isScalar(node)) this.fail(key, `must be a duration such as "5m", got ${this.#got(key)}`);
    const read = readDuration(node.value, rule);
    if ('problem' in read) this.fail(key, read.problem);
    return read.ms;
  }

  /**
   * A unix socket file mode. YAML 1.1 (as the Go tool reads it) makes `0755` the octal integer;
   * a string "0755" / "755" / "0o755" is read as octal digits too.
   */
  fileMode(key: string, fallback: number): number {
    const node = this.node(key);
    if (node === undefined) return fallback;
    let mode: number | undefined;
    if (isScalar(node) && typeof node.value === 'number' && Number.isInteger(node.value)) mode = node.value;
    if (isScalar(node) && typeof node.value === 'string') {
      const match = /^(?:0o?)?([0-7]{1,4})$/i.exec(node.value.trim());
      if (match) mode = parseInt(match[1]!, 8);
    }
    if (mode === undefined) this.fail(key, `must be an octal file mode such as 0755, got ${this.#got(key)}`);
    if (mode < 0 || mode > 0o777) {
      this.fail(key, `${(isScalar(node) && node.source) || String(mode)} is not a file mode (write it in octal with a leading 0, as in 0755)`);
    }
    return mode;
  }

  optionalMap(key: string, known: readonly string[] | 'any'): MapReader | undefined {
    const node = this.node(key);
    if (node === undefined) return undefined;
    return new MapReader(this.src, this.pathOf(key), node, this.lineOf(key), known);
  }

  /** The items of a list, each with its key path and line; an absent key is an empty list. */
  list(key: string): Array<{ node: Node | null; path: string; line: number | undefined }> {
    const node = this.node(key);
    if (node === undefined) return [];
    if (!isSeq(node)) this.fail(key, `must be a list, got ${this.#got(key)}`);
    return node.items.map((item, i) => {
      const resolved = this.src.resolve(item);
      return { node: resolved, path: `${this.pathOf(key)}[${i}]`, line: this.src.lineOf(resolved) ?? this.lineOf(key) };
    });
  }

  stringList(key: string): string[] {
    return this.list(key).map(({ node, path, line }) => {
      if (!isScalar(node) || node.value === null || typeof node.value === 'object') {
        throw this.src.error(path, line, `must be a string, got ${describe(node, this.src.doc)}`);
      }
      return typeof node.value === 'string' ? node.value : (node.source ?? String(node.value));
    });
  }

  /** Everything under this mapping as plain data (for component options and raw blocks). */
  toPlain(omit: readonly string[] = []): Record<string, unknown> {
    const plain: Record<string, unknown> = {};
    for (const [key, entry] of this.#entries) {
      if (omit.includes(key)) continue;
      plain[key] = entry.value === null ? null : (entry.value.toJS(this.src.doc) as unknown);
    }
    return plain;
  }
}

/**
 * A `{type, options}` component block. Only `type` is checked here: each factory validates
 * its own options (and reports paths relative to them; see createComponent).
 */
export function readComponent(src: YamlSource, node: Node, path: string, line: number | undefined, missingType: string): ComponentConfig {
  const block = new MapReader(src, path, node, line, ['type', 'options']);
  const type = block.requiredString('type', missingType);
  const options = block.optionalMap('options', 'any');
  return { type, options: options ? options.toPlain() : {} };
}

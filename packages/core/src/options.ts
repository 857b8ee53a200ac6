import * as v from 'valibot';
import { toDuration } from './duration.js';
import { ConfigError } from './errors.js';

/**
 * The one vocabulary for component options (built-ins and plugins alike): valibot schemas, plus
 * the project's rules, which hold for every component:
 * - an unknown option is an error naming it, with a "did you mean" suggestion (use
 *   `strictObject`; a registry refuses a plain `object`, which would drop unknown keys silently);
 * - a duration is a Go duration string (`300ms`, `1m30s`) or 0, read by `duration(rule)`, where
 *   every option says whether 0 or negative values are allowed;
 * - an empty value (`key:` with nothing after it) counts as absent.
 * A mistake becomes a ConfigError whose path is relative to the options (`tls.ca_file`); the
 * configuration loader puts the component's key path and the file:line in front.
 */

/** Any valibot schema (synchronous) that options are read with. */
export type OptionsSchema = v.GenericSchema<unknown, unknown>;

/**
 * What a duration option allows besides positive values: `positive` (> 0), `non-negative`
 * (≥ 0, 0 typically meaning "off"), `any` (negative too, for options whose negative value the
 * Go tool gives a meaning; say it in the description).
 */
export type DurationRule = 'positive' | 'non-negative' | 'any';

/** A short, secret-free description of a value for error messages: only strings are quoted. */
export function describeValue(value: unknown): string {
  if (value === null || value === undefined) return 'nothing';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? `${value.slice(0, 57)}...` : value);
  return typeof value;
}

/**
 * Reads a Go duration (or 0) as milliseconds under `rule`; the problem in words when it is not
 * one. The one reading of durations: component options and the proxies' own keys alike.
 */
export function readDuration(value: unknown, rule: DurationRule): { ms: number } | { problem: string } {
  if (typeof value === 'number' && value !== 0) return { problem: `${value} is not a duration (give a unit, as in "${value}s")` };
  if (typeof value !== 'number' && typeof value !== 'string') return { problem: `must be a duration such as "5m", got ${describeValue(value)}` };
  let ms: number;
  try {
    ms = toDuration(value);
  } catch {
    return { problem: `${JSON.stringify(value)} is not a duration` };
  }
  if (rule === 'positive' && !(ms > 0)) return { problem: `must be greater than 0, got ${JSON.stringify(String(value))}` };
  if (rule === 'non-negative' && ms < 0) return { problem: `must be 0 or more, got ${JSON.stringify(String(value))}` };
  return { ms };
}

/** Marks a duration schema for the docs (`getMetadata`). */
export interface DurationMetadata {
  readonly duration: DurationRule;
}

/** A duration option: a Go duration string (or 0) in, milliseconds out, refused outside `rule`. */
export function duration(rule: DurationRule) {
  return v.pipe(
    v.unknown(),
    v.rawTransform(({ dataset, addIssue, NEVER }) => {
      const read = readDuration(dataset.value, rule);
      if ('problem' in read) {
        addIssue({ message: read.problem });
        return NEVER;
      }
      return read.ms;
    }),
    v.metadata({ duration: rule } satisfies DurationMetadata),
  );
}

/** The edit distance of two short strings, to suggest a key for a misspelt one. */
export function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const above = row[j]!;
      row[j] = Math.min(above + 1, row[j - 1]! + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1));
      diagonal = above;
    }
  }
  return row[b.length]!;
}

/** The known key closest to a misspelt one, when one is close enough to be what was meant. */
export function suggestKey(key: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of known) {
    const distance = editDistance(candidate, key);
    if (distance <= Math.max(2, Math.floor(candidate.length / 5)) && distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best;
}

/** The problem for an option that is not one of `known`. */
export function unknownOptionProblem(key: string, known: readonly string[]): string {
  if (known.length === 0) return 'unknown option (this type takes no options)';
  const suggestion = suggestKey(key, known);
  return `unknown option${suggestion ? `: did you mean ${suggestion}?` : ''} (known: ${known.join(', ')})`;
}

// --- Reading a schema's shape (for unknown keys and for the docs) ---

type AnySchema = v.GenericSchema & {
  wrapped?: AnySchema;
  entries?: Record<string, AnySchema>;
  item?: AnySchema;
  options?: unknown;
  pipe?: readonly unknown[];
};

/** The schema under optional/nullable/pipe wrappers. */
export function unwrapSchema(schema: AnySchema): AnySchema {
  let current = schema;
  while (current.wrapped) current = current.wrapped;
  return current;
}

/** The mapping schema that `schema` is or (in a union) allows, if any. */
function objectSchemaOf(schema: AnySchema): AnySchema | undefined {
  const inner = unwrapSchema(schema);
  if (inner.entries) return inner;
  if (Array.isArray(inner.options)) {
    for (const branch of inner.options as AnySchema[]) {
      const found = objectSchemaOf(branch);
      if (found) return found;
    }
  }
  return undefined;
}

/** The schema at an issue's path (object keys and list items), as far as it can be followed. */
function schemaAt(root: AnySchema, path: readonly v.IssuePathItem[]): AnySchema | undefined {
  let current: AnySchema | undefined = root;
  for (const item of path) {
    if (!current) return undefined;
    const inner = unwrapSchema(current);
    if (item.type === 'array') current = inner.item ?? (Array.isArray(inner.options) ? (inner.options as AnySchema[]).map(unwrapSchema).find((b) => b.item)?.item : undefined);
    else if (item.type === 'object') current = objectSchemaOf(inner)?.entries?.[String(item.key)];
    else return undefined;
  }
  return current;
}

// --- From valibot issues to one ConfigError ---

type Issue = v.BaseIssue<unknown>;

function pathText(path: readonly v.IssuePathItem[] | undefined): string {
  let text = '';
  for (const item of path ?? []) {
    if (item.type === 'array') text += `[${String(item.key)}]`;
    else if (item.type === 'object') text += text ? `.${String(item.key)}` : String(item.key);
  }
  return text;
}

const isUnknownKey = (issue: Issue): boolean => issue.type === 'strict_object' && issue.expected === 'never';

/**
 * A union's issues are its branches' ones, with paths relative to the union: keep those of the
 * branches that got into the value (a mapping's unknown key), else the union's own issue.
 */
function flatten(issues: readonly Issue[]): Issue[] {
  return issues.flatMap((issue) => {
    if (issue.type !== 'union' || !issue.issues?.length) return [issue];
    const outer = issue.path ?? [];
    const inner = flatten(issue.issues).map((i) => ({ ...i, path: [...outer, ...(i.path ?? [])] }) as Issue);
    const deepest = Math.max(...inner.map((i) => i.path!.length));
    return deepest > outer.length ? inner.filter((i) => i.path!.length === deepest) : [issue];
  });
}

/** valibot's expectation (`(boolean | Object)`) in the words of the rest of the messages. */
function typeWords(expected: string | null): string {
  if (!expected) return 'something else';
  return expected
    .replace(/^\((.*)\)$/, '$1')
    .replaceAll(' | ', ' or ')
    .replace(/\bObject\b/g, 'mapping')
    .replace(/\bArray\b/g, 'list');
}

/** valibot's own messages start so; a schema's custom message is used as it is. */
const isDefaultMessage = (message: string): boolean => /^Invalid \w+: /.test(message);

function problemOf(issue: Issue, root: AnySchema): string {
  if (isUnknownKey(issue)) {
    const parent = schemaAt(root, issue.path?.slice(0, -1) ?? []);
    const known = Object.keys((parent && objectSchemaOf(parent)?.entries) ?? {});
    return unknownOptionProblem(String(issue.path?.at(-1)?.key), known);
  }
  if (!isDefaultMessage(issue.message)) return issue.message;
  const got = describeValue(issue.input);
  if (issue.kind === 'schema') {
    if ((issue.type === 'strict_object' || issue.type === 'object' || issue.type === 'loose_object') && issue.received === 'undefined') return 'is required';
    switch (issue.type) {
      case 'string':
        return `must be a string, got ${got}`;
      case 'number':
        return `must be a number, got ${got}`;
      case 'boolean':
        return `must be true or false, got ${got}`;
      case 'array':
        return `must be a list, got ${got}`;
      case 'strict_object':
      case 'object':
      case 'loose_object':
      case 'record':
        return `must be a mapping, got ${got}`;
      default:
        return `must be ${typeWords(issue.expected)}, got ${got}`;
    }
  }
  const requirement = (issue as { requirement?: unknown }).requirement;
  const shown = typeof issue.input === 'number' ? String(issue.input) : got;
  switch (issue.type) {
    case 'integer':
      return `must be a whole number, got ${shown}`;
    case 'min_value':
      return `must be ${String(requirement)} or more, got ${shown}`;
    case 'max_value':
      return `must be ${String(requirement)} or less, got ${shown}`;
    case 'gt_value':
      return `must be greater than ${String(requirement)}, got ${shown}`;
    case 'lt_value':
      return `must be less than ${String(requirement)}, got ${shown}`;
    case 'non_empty':
      return 'must not be empty';
    case 'min_length':
      if (requirement === 1) return Array.isArray(issue.input) ? 'must be a non-empty list' : 'must not be empty';
      return `must have at least ${String(requirement)} ${Array.isArray(issue.input) ? 'items' : 'characters'}`;
    default:
      return `is not valid (expected ${issue.expected ?? issue.type})`;
  }
}

/** One ConfigError for what a schema refused: an unknown option first (it often explains the rest), else the first problem. */
export function configErrorFrom(issues: readonly Issue[], schema: OptionsSchema): ConfigError {
  const all = flatten(issues);
  const issue = all.find(isUnknownKey) ?? all[0]!;
  return new ConfigError(pathText(issue.path), problemOf(issue, schema as AnySchema));
}

/** Empty values (`key:` with nothing after it) count as absent, in every mapping. */
function withoutEmpty(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutEmpty);
  if (value === null || typeof value !== 'object' || Object.getPrototypeOf(value) !== Object.prototype) return value;
  const copy: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) if (item !== null && item !== undefined) copy[key] = withoutEmpty(item);
  return copy;
}

/**
 * Reads options with their schema; throws a ConfigError whose path is relative to the options, or
 * under `at` (`cache.options`) for a mapping inside them that a component reads itself.
 */
export function parseOptions<S extends OptionsSchema>(schema: S, options: unknown, at = ''): v.InferOutput<S> {
  const result = v.safeParse(schema, withoutEmpty(options ?? {}));
  if (result.success) return result.output;
  const error = configErrorFrom(result.issues, schema);
  if (!at) throw error;
  throw new ConfigError(error.path ? `${at}.${error.path}` : at, error.problem);
}

/**
 * A schema that would let an unknown option through unnoticed: a plain `object` (it drops
 * unknown keys). Returns the key path of the first one, '' for the top, or undefined.
 */
export function lenientObjectIn(schema: OptionsSchema, at = ''): string | undefined {
  const inner = unwrapSchema(schema as AnySchema);
  if (inner.type === 'object') return at;
  for (const [key, entry] of Object.entries(inner.entries ?? {})) {
    const found = lenientObjectIn(entry, at ? `${at}.${key}` : key);
    if (found !== undefined) return found;
  }
  if (inner.item) return lenientObjectIn(inner.item, `${at}[]`);
  if (Array.isArray(inner.options)) {
    for (const branch of inner.options as OptionsSchema[]) {
      if (typeof branch !== 'object' || branch === null || !('~run' in branch)) continue;
      const found = lenientObjectIn(branch, at);
      if (found !== undefined) return found;
    }
  }
  return undefined;
}

/**
 * Everything a component definition is written with: valibot, plus `duration`. Handed to
 * plugins as `runtime.schema`, so a plugin needs no import of its own to declare typed options.
 */
export const schema = Object.freeze({ ...v, duration });
export type SchemaKit = typeof schema;
export { v };
export type { InferInput, InferOutput } from 'valibot';

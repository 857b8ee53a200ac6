import * as v from 'valibot';
import { unwrapSchema, type DurationMetadata, type OptionsSchema } from './options.js';
import { registryNames, type ComponentDefinition, type Runtime } from './registry.js';

/**
 * The docs' option tables, made from the schemas themselves: what a user reads and what the
 * loader checks cannot drift apart.
 */

/** One option as the docs show it. `name` is a key path under `options` (`tls.ca_file`, `sentinels[].host`). */
export interface OptionRow {
  name: string;
  type: string;
  required: boolean;
  default: string | undefined;
  description: string | undefined;
}

type Node = OptionsSchema & {
  kind: string;
  type: string;
  wrapped?: Node;
  entries?: Record<string, Node>;
  item?: Node;
  options?: unknown;
  pipe?: ReadonlyArray<{ kind: string; type: string; requirement?: unknown; description?: string; metadata?: unknown }>;
  literal?: unknown;
  default?: unknown;
};

/** Every layer of a schema, outside in (optional → pipe → the pipe's own schema → …), to read actions and descriptions from. */
function layers(schema: Node): Node[] {
  const all: Node[] = [];
  for (let current: Node | undefined = schema; current && all.length < 16; ) {
    all.push(current);
    const root = current.pipe?.[0] as Node | undefined;
    current = current.wrapped ?? (root && root !== current && root.kind === 'schema' && root.pipe ? root : undefined);
  }
  return all;
}

function actions(schema: Node) {
  return layers(schema).flatMap((layer) => layer.pipe?.filter((item) => item.kind !== 'schema') ?? []);
}

/** The metadata of a schema's layers, merged (the outer layer wins): `{duration}`, or `{typeText}` for the docs. */
function metadataOf(schema: Node): Record<string, unknown> | undefined {
  const found = actions(schema)
    .filter((action) => action.type === 'metadata' && action.metadata && typeof action.metadata === 'object')
    .map((action) => action.metadata as Record<string, unknown>);
  return found.length ? Object.assign({}, ...found.reverse()) : undefined;
}

function durationRuleOf(schema: Node): DurationMetadata['duration'] | undefined {
  return metadataOf(schema)?.duration as DurationMetadata['duration'] | undefined;
}

const ruleText = { positive: '> 0', 'non-negative': '≥ 0', any: 'may be negative' } as const;

/** The type in words: `string`, `integer ≥ 1`, `duration > 0`, `list of string`, `true or mapping`. */
export function typeText(schema: OptionsSchema): string {
  const node = schema as Node;
  const rule = durationRuleOf(node);
  if (rule) return `duration ${ruleText[rule]}`;
  const named = metadataOf(node)?.typeText;
  if (typeof named === 'string') return named;
  const inner = unwrapSchema(node) as Node;
  const bounds = actions(node)
    .map((a) => (a.type === 'min_value' ? `≥ ${String(a.requirement)}` : a.type === 'max_value' ? `≤ ${String(a.requirement)}` : a.type === 'gt_value' ? `> ${String(a.requirement)}` : ''))
    .filter(Boolean);
  const withBounds = (text: string): string => [text, ...bounds].join(' ');
  switch (inner.type) {
    case 'string':
      return 'string';
    case 'number':
      return withBounds(actions(node).some((a) => a.type === 'integer') ? 'integer' : 'number');
    case 'boolean':
      return 'boolean';
    case 'literal':
      return JSON.stringify(inner.literal);
    case 'picklist':
      return (inner.options as unknown[]).map((o) => JSON.stringify(o)).join(' or ');
    case 'array':
      return `list of ${typeText(inner.item!)}`;
    case 'union':
      return (inner.options as Node[]).map((o) => typeText(o)).join(' or ');
    case 'strict_object':
    case 'record':
    case 'loose_object':
      return 'mapping';
    default:
      return 'any';
  }
}

function descriptionOf(schema: Node): string | undefined {
  return actions(schema).find((a) => a.type === 'description')?.description;
}

function defaultText(schema: Node): string | undefined {
  const holder = layers(schema).find((layer) => 'default' in layer && layer.default !== undefined);
  if (!holder) return undefined;
  const value = v.getDefault(holder as never) as unknown;
  return typeof value === 'string' ? value : JSON.stringify(value);
}

function isOptional(schema: Node): boolean {
  return layers(schema).some((layer) => ['optional', 'nullish', 'exact_optional', 'undefinedable'].includes(layer.type));
}

/** The mapping inside a schema (itself, a list's items, or a union's mapping branch) whose keys are options too. */
function nestedEntries(schema: Node): { entries: Record<string, Node>; suffix: string } | undefined {
  const inner = unwrapSchema(schema) as Node;
  if (inner.entries) return { entries: inner.entries, suffix: '' };
  if (inner.type === 'array' && inner.item) {
    const nested = nestedEntries(inner.item);
    return nested && { entries: nested.entries, suffix: `[]${nested.suffix}` };
  }
  if (inner.type === 'union') {
    for (const branch of inner.options as Node[]) {
      const nested = nestedEntries(branch);
      if (nested) return nested;
    }
  }
  return undefined;
}

/** One row per option, nested mappings' keys included under their parent's name. */
export function optionRows(schema: OptionsSchema, prefix = ''): OptionRow[] {
  const nested = nestedEntries(schema as Node);
  if (!nested) return [];
  const rows: OptionRow[] = [];
  for (const [key, entry] of Object.entries(nested.entries)) {
    const name = `${prefix}${key}`;
    rows.push({ name, type: typeText(entry), required: !isOptional(entry), default: defaultText(entry), description: descriptionOf(entry) });
    rows.push(...optionRows(entry, `${name}${nestedEntries(entry)?.suffix ?? ''}.`));
  }
  return rows;
}

const cell = (text: string | undefined): string => (text ?? '').replaceAll('|', '\\|').replaceAll('\n', ' ');

/** A component's options as a markdown table (or a sentence when it has none, or any keys). */
export function optionsTable(definition: ComponentDefinition<unknown>): string {
  const rows = optionRows(definition.options);
  if (rows.length === 0) {
    const inner = unwrapSchema(definition.options as Node) as Node;
    return inner.type === 'record' ? `Options: any keys. ${descriptionOf(definition.options as Node) ?? ''}`.trim() : 'No options.';
  }
  const lines = ['| option | type | default | description |', '| --- | --- | --- | --- |'];
  for (const row of rows) {
    const fallback = row.default !== undefined ? `\`${row.default}\`` : row.required ? 'required' : '';
    lines.push(`| \`${cell(row.name)}\` | ${cell(row.type)} | ${cell(fallback)} | ${cell(row.description)} |`);
  }
  return lines.join('\n');
}

const headings: Record<(typeof registryNames)[number], string> = {
  privateKeySources: 'Private key sources (`signer.private_key`)',
  keyServers: 'Key servers (`verifier.key_server`)',
  keyCaches: 'Key caches (`key_server.options.cache`)',
  nonceStores: 'Nonce storage (`verifier.nonce_storage`)',
  claimsVerifiers: 'Claims verifiers (`verifier.claims_verifiers`)',
};

/** Markdown for every type registered in `runtime`: a section per kind, a table per type. */
export function componentDocs(runtime: Runtime): string {
  const parts: string[] = [];
  for (const name of registryNames) {
    const definitions = runtime[name].definitions();
    if (definitions.length === 0) continue;
    parts.push(`## ${headings[name]}\n`);
    for (const definition of definitions) {
      parts.push(`### \`${definition.type}\`\n`);
      if (definition.description) parts.push(`${definition.description}\n`);
      parts.push(`${optionsTable(definition as ComponentDefinition<unknown>)}\n`);
    }
  }
  return parts.join('\n');
}

/**
 * `jwtproxy keyregistry list|approve|revoke …`: the admin commands of the key registry, over its
 * admin API. And `startKeyRegistryFromConfig`, which starts a registry from the raw
 * `jwtproxy.keyregistry` block of the YAML.
 */
import { readFileSync } from 'node:fs';
import type { Logger } from '@jwtproxy/core';
import {
  KeyRegistryAdminClient,
  KeyRegistryAdminError,
  keyRegistryOptionsFrom,
  startKeyRegistryServer,
  type KeyInfo,
  type LiveState,
  type RunningKeyRegistry,
} from '@jwtproxy/keyregistry-server';

/** Environment variables the admin commands read when no flag is given. */
export const registryUrlEnvVar = 'JWTPROXY_REGISTRY_URL';
export const registryTokenEnvVar = 'JWTPROXY_REGISTRY_TOKEN';

export const keyRegistryUsage = `Usage:
  jwtproxy keyregistry list [--service NAME] [--state pending|approved|expired] [--json]
  jwtproxy keyregistry approve SERVICE KID
  jwtproxy keyregistry revoke SERVICE KID

Administers a jwtproxy key registry through its admin API. KID as listed (the Go tool's end in
"="); a KID copied from a URL (%3D) is decoded; put -- before a KID that starts with "-".

Options (each also as -name or --name=value):
  --url URL          the registry, e.g. https://keys.example.com (default $${registryUrlEnvVar})
  --token TOKEN      the registry's admin token (default $${registryTokenEnvVar})
  --token-file FILE  read the admin token from FILE
  --service NAME     list: only the keys of this service
  --state STATE      list: only keys in this state
  --json             list: print JSON instead of a table

Exit codes: 0 done, 1 the registry refused or could not be reached, 2 a usage mistake.
`;

export interface CommandIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  env: NodeJS.ProcessEnv;
}

class UsageError extends Error {}

interface Parsed {
  action: 'list' | 'approve' | 'revoke' | 'help';
  positional: string[];
  flags: Map<string, string | true>;
}

const valueFlags = new Set(['url', 'token', 'token-file', 'service', 'state']);
const booleanFlags = new Set(['json', 'help', 'h']);

function parse(argv: readonly string[]): Parsed {
  const positional: string[] = [];
  const flags = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    // Everything after `--` is positional: key ids are base64url and may start with "-".
    if (arg === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    }
    const match = /^--?([a-z-]+)(?:=(.*))?$/s.exec(arg);
    if (!match || arg === '-') {
      positional.push(arg);
      continue;
    }
    const [, name = '', inline] = match;
    if (booleanFlags.has(name)) {
      if (inline !== undefined) throw new UsageError(`flag --${name} takes no value`);
      flags.set(name, true);
    } else if (valueFlags.has(name)) {
      const value = inline ?? argv[++i];
      if (value === undefined) throw new UsageError(`flag --${name} needs a value`);
      flags.set(name, value);
    } else {
      throw new UsageError(`unknown flag ${arg}`);
    }
  }
  const [action, ...rest] = positional;
  if (flags.has('help') || flags.has('h') || action === undefined || action === 'help') return { action: 'help', positional: [], flags };
  if (action !== 'list' && action !== 'approve' && action !== 'revoke') throw new UsageError(`unknown keyregistry command ${JSON.stringify(action)} (list, approve, revoke)`);
  if (action === 'list' && rest.length > 0) throw new UsageError(`list takes no arguments (got ${rest.join(' ')})`);
  if (action !== 'list' && rest.length !== 2) throw new UsageError(`${action} needs SERVICE and KID`);
  return { action, positional: rest, flags };
}

/**
 * A service or key id as given: one copied from a registry URL (`…P74%3D`) is percent-decoded.
 * Registry names never contain `%`, so this cannot change a name that was given plainly.
 */
function plainName(value: string): string {
  if (!value.includes('%')) return value;
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

function text(flags: Map<string, string | true>, name: string): string | undefined {
  const value = flags.get(name);
  return typeof value === 'string' ? value : undefined;
}

function table(keys: KeyInfo[]): string {
  const rows = [
    ['SERVICE', 'KID', 'STATE', 'ALG', 'CREATED', 'EXPIRES', 'APPROVED BY'],
    ...keys.map((key) => [key.service, key.kid, key.state, key.alg, key.createdAt, key.expiresAt ?? 'never', key.approvedBy ?? '-']),
  ];
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)));
  return rows.map((row) => row.map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column]!))).join('  ')).join('\n') + '\n';
}

/**
 * Runs `jwtproxy keyregistry <argv…>` (argv without the word `keyregistry`) and resolves with
 * the exit code. Writes results to stdout and one `jwtproxy keyregistry: …` line per mistake to stderr.
 */
export async function runKeyRegistryCommand(argv: readonly string[], io: CommandIo = { stdout: process.stdout, stderr: process.stderr, env: process.env }): Promise<number> {
  const fail = (message: string, code: number): number => {
    io.stderr.write(`jwtproxy keyregistry: ${message}\n`);
    return code;
  };
  let parsed: Parsed;
  try {
    parsed = parse(argv);
  } catch (error) {
    if (error instanceof UsageError) return fail(`${error.message} (see jwtproxy keyregistry --help)`, 2);
    throw error;
  }
  if (parsed.action === 'help') {
    io.stdout.write(keyRegistryUsage);
    return 0;
  }
  const url = text(parsed.flags, 'url') ?? io.env[registryUrlEnvVar];
  if (!url) return fail(`no registry URL: give --url or set $${registryUrlEnvVar}`, 2);
  let token = text(parsed.flags, 'token');
  const tokenFile = text(parsed.flags, 'token-file');
  if (token !== undefined && tokenFile !== undefined) return fail('give --token or --token-file, not both', 2);
  if (tokenFile !== undefined) {
    try {
      token = readFileSync(tokenFile, 'utf8').trim();
    } catch (error) {
      return fail(`cannot read --token-file ${tokenFile}: ${(error as Error).message}`, 2);
    }
  }
  token ??= io.env[registryTokenEnvVar];
  if (!token) return fail(`no admin token: give --token or --token-file, or set $${registryTokenEnvVar}`, 2);
  const state = text(parsed.flags, 'state');
  if (state !== undefined && !['pending', 'approved', 'expired'].includes(state)) return fail('--state must be pending, approved or expired', 2);

  try {
    const client = new KeyRegistryAdminClient({ url, token });
    const [service = '', kid = ''] = parsed.positional.map(plainName);
    switch (parsed.action) {
      case 'list': {
        const keys = await client.list({
          ...(text(parsed.flags, 'service') !== undefined && { service: plainName(text(parsed.flags, 'service')!) }),
          ...(state !== undefined && { state: state as LiveState }),
        });
        io.stdout.write(parsed.flags.has('json') ? `${JSON.stringify(keys, null, 2)}\n` : keys.length ? table(keys) : 'no keys\n');
        return 0;
      }
      case 'approve': {
        const info = await client.approve(service, kid);
        io.stdout.write(`approved ${info.service}/${info.kid}${info.expiresAt ? ` (expires ${info.expiresAt})` : ''}\n`);
        return 0;
      }
      case 'revoke':
        await client.revoke(service, kid);
        io.stdout.write(`revoked ${service}/${kid}\n`);
        return 0;
    }
  } catch (error) {
    if (error instanceof KeyRegistryAdminError) return fail(error.message, error.code === 'invalid_name' ? 2 : 1);
    throw error;
  }
}

/**
 * Starts a key registry from the raw `jwtproxy.keyregistry` block (`baseDir`: the configuration
 * file's directory). Resolves undefined when the block says `enabled: false`. Configuration
 * mistakes throw core's ConfigError with a path relative to the block.
 */
export async function startKeyRegistryFromConfig(raw: Record<string, unknown>, baseDir: string, logger: Logger): Promise<RunningKeyRegistry | undefined> {
  const options = keyRegistryOptionsFrom(raw, baseDir);
  if (options.enabled === false) return undefined;
  return startKeyRegistryServer({ ...options, logger });
}

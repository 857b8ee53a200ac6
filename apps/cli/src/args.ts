import { isLogFormat, isLogLevel, type LogFormat, type LogLevel } from '@jwtproxy/core';

export interface CliArguments {
  command: 'run' | 'check' | 'help' | 'version';
  configFile?: string;
  /** From -log-level; when absent, the configuration's `log.level`, else info. */
  logLevel?: LogLevel;
  /** From -log-format; when absent, the configuration's `log.format`, else text. */
  logFormat?: LogFormat;
  /** ES modules (paths or package names) imported before the configuration is built. */
  plugins: string[];
  /** From -workers (`auto`: one per available core); when absent, the configuration's `workers`, else auto. */
  workers?: number | 'auto';
}

/** A mistake on the command line: printed with a pointer to --help, exit code 2 (as Go's flag package). */
export class UsageError extends Error {
  override name = 'UsageError';
}

export const usage = `Usage: jwtproxy -config FILE [-log-level LEVEL] [-log-format text|json] [--plugin MODULE]...
       jwtproxy -check -config FILE [--plugin MODULE]...
       jwtproxy keyregistry list|approve|revoke ...   (see jwtproxy keyregistry --help)

Runs the JWT signer (forward) proxy and verifier (reverse) proxies described by the
jwtproxy: block of a Go jwtproxy YAML configuration file. SIGHUP reloads the file; SIGINT and
SIGTERM stop gracefully.

Options:
  -config FILE          the YAML configuration file; $VAR and \${VAR} are expanded
  -log-level LEVEL      debug, info, warn or error (default: log.level of the file, else info)
  -log-format FORMAT    text (logfmt, as the Go tool) or json (default: log.format, else text)
  -workers N|auto       worker threads running the proxies on the same ports (default: workers
                        of the file, else auto: one per available core, within a container's
                        CPU limit and one per 128 MiB of its memory limit; 1: the main thread
                        alone). More than 1 needs Node.js 22.12 or later
  --plugin MODULE       an ES module (path or package) imported before the configuration
                        is built, to register key servers, private key sources, nonce
                        storages or claims verifiers; may be repeated
  -check                validate the configuration (keys, certificates, every option; unknown
                        keys are errors) without listening, then exit 0 (valid) or 1
  --help                show this help
  --version             show the version

Each option may be written with one or two dashes, and as -option VALUE or -option=VALUE.
`;

const valueFlags = new Set(['config', 'log-level', 'log-format', 'plugin', 'workers']);

/** Most worker threads -workers may ask for (as `jwtproxy.workers`). */
const MAX_WORKERS = 256;

/** Go-flag-style parsing: `-config f`, `--config f`, `-config=f`, `--config=f`. */
export function parseArguments(argv: readonly string[]): CliArguments {
  const result: CliArguments = { command: 'run', plugins: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const match = /^--?([a-z][a-z-]*)(?:=(.*))?$/s.exec(arg);
    if (!match) throw new UsageError(`unexpected argument ${JSON.stringify(arg)}`);
    const [, name = '', inlineValue] = match;
    if (name === 'help' || name === 'h') return { ...result, command: 'help' };
    if (name === 'version') return { ...result, command: 'version' };
    if (name === 'check') {
      result.command = 'check';
      continue;
    }
    if (!valueFlags.has(name)) throw new UsageError(`unknown flag ${JSON.stringify(arg.split('=')[0])}`);
    let value = inlineValue;
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new UsageError(`flag -${name} needs a value`);
    }
    if (name === 'config') result.configFile = value;
    else if (name === 'plugin') result.plugins.push(value);
    else if (name === 'workers') {
      const count = Number(value);
      if (value !== 'auto' && (!/^\d+$/.test(value) || count < 1 || count > MAX_WORKERS)) throw new UsageError(`-workers must be a whole number from 1 to ${MAX_WORKERS} or auto (got ${JSON.stringify(value)})`);
      result.workers = value === 'auto' ? 'auto' : count;
    }
    else if (name === 'log-format') {
      if (!isLogFormat(value)) throw new UsageError(`-log-format must be text or json (got ${JSON.stringify(value)})`);
      result.logFormat = value;
    } else {
      if (!isLogLevel(value)) throw new UsageError(`-log-level must be one of debug, info, warn, error (got ${JSON.stringify(value)})`);
      result.logLevel = value;
    }
  }
  if (result.configFile === undefined || result.configFile === '') throw new UsageError('-config FILE is required');
  return result;
}

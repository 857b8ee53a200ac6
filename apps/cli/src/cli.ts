import { readFileSync } from 'node:fs';
import { ConfigError, createLogger, type Logger } from '@jwtproxy/core';
import { loadConfig, type LoadedConfig } from '@jwtproxy/config';
import { parseArguments, usage, UsageError } from './args.js';
import { loadPlugins, PluginError } from './plugins.js';
import type { RunningJwtProxy } from './run.js';

export function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** The one line a user sees for a mistake that stops the start. */
function fail(message: string, code: number): number {
  process.stderr.write(`jwtproxy: ${message}\n`);
  return code;
}

/**
 * The jwtproxy command. Resolves with the exit code once it has nothing left to do: at once for
 * --help, --version, a mistake or no proxy enabled; after SIGINT/SIGTERM when proxies ran.
 */
export async function main(argv: readonly string[]): Promise<number> {
  // The proxies and their dependencies load only when they are needed: --help and --version stay quick.
  if (argv[0] === 'keyregistry') return (await import('./keyregistry-command.js')).runKeyRegistryCommand(argv.slice(1));
  let args;
  try {
    args = parseArguments(argv);
  } catch (error) {
    if (error instanceof UsageError) return fail(`${error.message} (see jwtproxy --help)`, 2);
    throw error;
  }
  if (args.command === 'help') {
    process.stdout.write(usage);
    return 0;
  }
  if (args.command === 'version') {
    process.stdout.write(`jwtproxy ${version()}\n`);
    return 0;
  }
  const logger = createLogger({ level: args.logLevel });

  let config: LoadedConfig;
  let running: RunningJwtProxy;
  try {
    // Built-in component types register on import, before plugins (which may replace them).
    const { startJwtProxy } = await import('./run.js');
    await loadPlugins(args.plugins, logger);
    config = await loadConfig(args.configFile!, { logger });
    const nothingEnabled =
      !config.signerProxy?.enabled && !config.verifierProxies.some((p) => p.enabled) && !config.keyregistry?.enabled;
    if (nothingEnabled) {
      logger.info('No proxy is enabled');
      return 0;
    }
    running = await startJwtProxy(config, logger);
  } catch (error) {
    if (error instanceof ConfigError || error instanceof PluginError) return fail(error.message, 1);
    return fail(`cannot start: ${(error as Error)?.stack ?? String(error)}`, 1);
  }

  for (const server of running.servers) logger.info('listening', { server: server.name, address: server.address });
  logger.info('ready', { servers: running.servers.length });
  return waitForSignal(running, logger);
}

/** First SIGINT/SIGTERM: graceful stop, exit 0. A second one: exit at once. */
function waitForSignal(running: RunningJwtProxy, logger: Logger): Promise<number> {
  return new Promise((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (stopping) {
        logger.warn('second signal: exiting at once', { signal });
        process.exit(1);
      }
      stopping = true;
      logger.info('shutting down', { signal });
      running.stop().then(
        () => {
          logger.info('stopped');
          resolve(0);
        },
        (error: unknown) => {
          logger.error('error while stopping', { error: (error as Error)?.message ?? String(error) });
          resolve(1);
        },
      );
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}

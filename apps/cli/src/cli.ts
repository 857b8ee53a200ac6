import { readFileSync } from 'node:fs';
import { ConfigError, childLogger, createLogger, type Logger } from '@jwtproxy/core';
import { loadConfig, type LoadedConfig } from '@jwtproxy/config';
import { parseArguments, usage, UsageError } from './args.js';
import { flushCompileCache } from './compile-cache.js';
import { collectStartUpGarbage, releaseStartUpFlags } from './heap-limits.js';
import { loadPlugins, PluginError } from './plugins.js';
import type { StartedServer } from './run.js';
import type { ConfigSource } from './worker-protocol.js';

/** What runs: the proxies on this thread (run.ts) or worker threads under a primary (supervisor.ts). */
interface Running {
  servers: StartedServer[];
  stop(): Promise<void>;
  reload(config: LoadedConfig, source: ConfigSource): Promise<StartedServer[]>;
}

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
  if (args.command === 'check') return checkCommand(args.configFile!, args.plugins);
  // The configuration may set the level and format; until it is read, the flags' (or defaults).
  let current = createLogger({ level: args.logLevel ?? 'info', format: args.logFormat ?? 'text' });
  const logger: Logger = {
    debug: (message, fields) => current.debug(message, fields),
    info: (message, fields) => current.info(message, fields),
    warn: (message, fields) => current.warn(message, fields),
    error: (message, fields) => current.error(message, fields),
    child: (bindings) => childLogger(current, bindings),
    enabled: (level) => current.enabled?.(level) ?? true,
  };
  // Listen for signals from the start: one that comes while components are being built is
  // honoured as soon as the start is over (so a component that started is still stopped).
  const shutdown = shutdownSignals(logger);
  // SIGHUP reloads (as nginx, Envoy, HAProxy); until the proxies run, one is noted and ignored.
  let reloadRequested: () => void = () => logger.warn('SIGHUP before the start finished: ignored');
  process.on('SIGHUP', () => reloadRequested());

  let config: LoadedConfig;
  let running: Running;
  try {
    // The built-in component types first, then the plugins' (which may replace them).
    const [{ startJwtProxy }, { createJwtProxyRuntime }, { loadConfigSource }, { planWorkers }] = await Promise.all([
      import('./run.js'),
      import('./builtins.js'),
      import('./supervisor.js'),
      import('./workers.js'),
    ]);
    const runtime = createJwtProxyRuntime(logger);
    await loadPlugins(args.plugins, runtime);
    const loaded = await loadConfigSource(args.configFile!, logger);
    config = loaded.config;
    const logLevel = args.logLevel ?? config.log.level ?? 'info';
    const logFormat = args.logFormat ?? config.log.format ?? 'text';
    if ((args.logLevel === undefined && config.log.level) || (args.logFormat === undefined && config.log.format)) {
      current = createLogger({ level: logLevel, format: logFormat });
    }
    const nothingEnabled =
      !config.signerProxy?.enabled && !config.verifierProxies.some((p) => p.enabled) && !config.keyregistry?.enabled;
    if (nothingEnabled) {
      // Exit non-zero: under systemd's Restart=on-failure a typo must not leave the service down quietly.
      logger.error('No proxy is enabled', { config: config.file });
      return 1;
    }
    const plan = planWorkers(config, args.workers, { plugins: args.plugins.length });
    // Asked for (flag or file): a warning; the default one per core: said, not warned about.
    if (plan.fallback) logger[plan.from === 'cores' ? 'info' : 'warn'](plan.fallback, { workers: 1 });
    if (plan.count > 1) {
      const { startWorkers } = await import('./supervisor.js');
      running = await startWorkers(loaded.source, config, logger, { count: plan.count, runtime, plugins: args.plugins, logLevel, logFormat, signal: shutdown.abortSignal });
    } else {
      running = await startJwtProxy(config, logger, { signal: shutdown.abortSignal, runtime });
    }
  } catch (error) {
    if (error instanceof ConfigError || error instanceof PluginError || (error as Error)?.name === 'WorkerStartError') return fail((error as Error).message, 1);
    return fail(`cannot start: ${(error as Error)?.stack ?? String(error)}`, 1);
  }

  if (!shutdown.abortSignal.aborted) {
    for (const server of running.servers) logger.info('listening', { server: server.name, address: server.address });
    logger.info('ready', { servers: running.servers.length });
    // The code the start compiled goes to the on-disk cache now, not only at a clean exit.
    flushCompileCache();
    releaseStartUpFlags();
    // Start-up's garbage, collected once the event loop has served what is already waiting.
    setImmediate(() => void collectStartUpGarbage());
  }
  reloadRequested = reloader(args.configFile!, running, logger, () => !shutdown.abortSignal.aborted);
  await shutdown.requested;
  try {
    await running.stop();
  } catch (error) {
    logger.error('error while stopping', { error: (error as Error)?.message ?? String(error) });
    return 1;
  }
  logger.info('stopped');
  return 0;
}

/** How often a jwtproxy started by npx checks that npx is still there. */
const PARENT_CHECK_INTERVAL_MS = 500;

/**
 * The first SIGINT/SIGTERM resolves `requested` and aborts `abortSignal` (graceful stop); a second
 * one exits at once. Started by npx (`npm exec`, which sets npm_command=exec), the process also
 * stops when npx goes: npx does not pass SIGTERM on, so `kill <npx>` or a process manager stopping
 * npx would otherwise leave the proxy running, orphaned.
 */
/**
 * What SIGHUP does: re-read and validate the whole file, then apply it (run.ts `reload`). A file
 * that does not load or build keeps the running configuration, with the reason logged. Reloads run
 * one at a time; signals that come during one make one more after it.
 */
function reloader(configFile: string, running: Running, logger: Logger, stillRunning: () => boolean): () => void {
  let busy = false;
  let again = false;
  const run = async (): Promise<void> => {
    busy = true;
    do {
      again = false;
      logger.info('reload requested', { config: configFile });
      try {
        const { loadConfigSource } = await import('./supervisor.js');
        const { config, source } = await loadConfigSource(configFile, logger);
        if (!stillRunning()) return;
        const servers = await running.reload(config, source);
        logger.info('reloaded', { servers: servers.map((s) => `${s.name}=${s.address}`).join(' ') });
      } catch (error) {
        logger.error('reload failed: the running configuration is kept', { error: (error as Error)?.message ?? String(error) });
      }
    } while (again && stillRunning());
    busy = false;
  };
  return () => {
    if (busy) again = true;
    else void run();
  };
}

/** `jwtproxy -check -config FILE`: validates without listening; 0 and one line when valid, else the mistake and 1. */
async function checkCommand(configFile: string, plugins: string[]): Promise<number> {
  const logger = createLogger({ level: 'warn' });
  try {
    const [{ createJwtProxyRuntime }, { checkConfiguration }] = await Promise.all([import('./builtins.js'), import('./check.js')]);
    const runtime = createJwtProxyRuntime(logger);
    await loadPlugins(plugins, runtime);
    const config = await loadConfig(configFile, { logger, strict: true });
    await checkConfiguration(config, runtime, logger);
    const parts = [config.signerProxy?.enabled ? config.signerProxy.path : undefined, ...config.verifierProxies.filter((p) => p.enabled).map((p) => p.path), config.keyregistry?.enabled ? 'keyregistry' : undefined];
    process.stdout.write(`configuration OK: ${config.file} (${parts.filter(Boolean).join(', ')})\n`);
    return 0;
  } catch (error) {
    if (error instanceof ConfigError || error instanceof PluginError) return fail(error.message, 1);
    return fail(`cannot check: ${(error as Error)?.message ?? String(error)}`, 1);
  }
}

function shutdownSignals(logger: Logger): { requested: Promise<NodeJS.Signals>; abortSignal: AbortSignal } {
  let requested = false;
  const controller = new AbortController();
  return {
    abortSignal: controller.signal,
    requested: new Promise((resolve) => {
      const stop = (signal: NodeJS.Signals, reason?: string): void => {
        if (requested) {
          logger.warn('second signal: exiting at once', { signal });
          process.exit(1);
        }
        requested = true;
        logger.info('shutting down', reason ? { signal, reason } : { signal });
        controller.abort();
        resolve(signal);
      };
      // Node passes the signal's number as a second argument: not a reason.
      process.on('SIGINT', () => stop('SIGINT'));
      process.on('SIGTERM', () => stop('SIGTERM'));
      if (process.env.npm_command === 'exec') {
        const parent = process.ppid;
        const watch = setInterval(() => {
          if (process.ppid === parent) return;
          clearInterval(watch);
          if (!requested) stop('SIGTERM', 'npx, which started jwtproxy, has exited');
        }, PARENT_CHECK_INTERVAL_MS);
        watch.unref();
      }
    }),
  };
}

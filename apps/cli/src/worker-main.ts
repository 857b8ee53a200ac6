/**
 * One worker thread of `jwtproxy` with `workers: N` (N > 1): runs the proxies of the configuration
 * (run.ts, as a single-threaded jwtproxy does) on ports every worker binds with SO_REUSEPORT, so
 * that the kernel spreads connections among them. The primary (supervisor.ts) started it; what
 * must be one per process comes from there:
 *
 * - the signer's key: the primary runs the key source and sends each active key (`signer-key`);
 * - the nonces of a `local` store: one SharedArrayBuffer table, asked for through `sharedState`;
 * - the admin listener and the key registry server run in the primary, which asks each worker for
 *   its metrics and readiness.
 *
 * Logs are written with the primary's level and format, each line naming the worker (`worker=2`);
 * a worker thread's stderr is forwarded to the process's by Node, line by line.
 */
import diagnostics from 'node:diagnostics_channel';
import net from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
import { ConfigError, NoActiveKeyError, SigningError, childLogger, createLogger, silentLogger, type Logger, type PrivateKeySource, type SigningKey } from '@jwtproxy/core';
import { parseConfig, type LoadedConfig } from '@jwtproxy/config';
import type { JwtProxyMetrics, Readiness } from '@jwtproxy/admin';
import { createJwtProxyRuntime } from './builtins.js';
import { loadPlugins } from './plugins.js';
import { startJwtProxy, type RunningJwtProxy, type WorkerSeams } from './run.js';
import type { ConfigSource, FromWorker, KeyProblem, ToWorker, WorkerData } from './worker-protocol.js';

/** The signer's key as the primary last sent it: the worker signs with it, the primary rotates it. */
class PrimaryKeySource implements PrivateKeySource {
  #key: SigningKey | undefined;
  #problem: KeyProblem | undefined;
  constructor(key: SigningKey | undefined, problem: KeyProblem | undefined) {
    this.#key = key;
    this.#problem = problem;
  }
  set(key: SigningKey | undefined, problem: KeyProblem | undefined): void {
    this.#key = key;
    this.#problem = problem;
  }
  activeKey(): SigningKey {
    if (this.#key) return this.#key;
    // As the primary's source said it: awaiting approval, or its own failure (502 with its message).
    if (!this.#problem || this.#problem.code === 'ERR_NO_ACTIVE_KEY') throw new NoActiveKeyError();
    throw new SigningError(this.#problem.message);
  }
}

/**
 * This thread's listening sockets, to close them before the proxies drain (`close-listeners`).
 *
 * Why: with SO_REUSEPORT every worker's listener is its own socket with its own accept queue, and
 * a connection still in that queue when its socket closes is reset by the kernel. A worker that
 * drains answers `Connection: close`, and its clients connect again at once; if another worker
 * still listens, those connections land in its queue and are reset when it closes in turn (1-8
 * per stop under keep-alive load, measured). So the primary has every worker close its listeners
 * first, and tells them to drain only when none listens: a client told to close then finds the
 * port closed (refused, never accepted), as with one thread.
 *
 * The servers are found through Node's `net.server.listen` tracing channel (Node 22.3+; workers
 * need 22.12+): the engine owns them and does not hand them out. Its own stop closes them again
 * later, which net.Server allows (it then waits for the same 'close').
 */
class Listeners {
  readonly #open = new Set<net.Server>();
  #closed = false;
  constructor() {
    diagnostics.subscribe('tracing:net.server.listen:asyncEnd', (message) => {
      const server = (message as { server?: unknown }).server;
      if (!(server instanceof net.Server)) return;
      // One that starts listening after the close (a reload under way when the stop came) closes too.
      if (this.#closed) this.#close(server);
      else {
        this.#open.add(server);
        server.once('close', () => this.#open.delete(server));
      }
    });
  }

  /** Closes every listening socket of this thread now (open connections are left to the drain). */
  closeAll(): number {
    this.#closed = true;
    const count = this.#open.size;
    for (const server of this.#open) this.#close(server);
    this.#open.clear();
    return count;
  }

  #close(server: net.Server): void {
    // net.Server's close, not http.Server's: that one would also close idle keep-alive connections
    // at once, resetting a request racing it (the engine's stop closes each once it stays idle).
    if (server.listening) net.Server.prototype.close.call(server);
  }
}

/**
 * The worker's logger: the primary's level and format, and `worker=N` at the end of each line
 * (after the line's own fields, so that a line reads as it does without workers up to there).
 *
 * While `repeatsFirst()` (workers 2..N, while their proxies start or reload), info and warn lines
 * go out at debug: every worker runs the same configuration, so the first worker's lines ("key
 * loaded", "no CA configured", "listening") speak for all, and the primary says how many started
 * or reloaded; without this, a start wrote each of those lines once per worker. Errors are never
 * lowered (a failed start is also reported to the primary, which logs it). `enabled` answers for
 * the real level, as the access log asks it once, at start; the access log has its own logger,
 * never lowered (WorkerSeams.accessLogger).
 */
function workerLogger(base: Logger, worker: number, repeatsFirst: () => boolean): Logger {
  const tag = { worker };
  const withTag = (fields: Record<string, unknown> | undefined): Record<string, unknown> => (fields ? { ...fields, worker } : tag);
  return {
    debug: (message, fields) => base.debug(message, withTag(fields)),
    info: (message, fields) => (repeatsFirst() ? base.debug : base.info)(message, withTag(fields)),
    warn: (message, fields) => (repeatsFirst() ? base.debug : base.warn)(message, withTag(fields)),
    error: (message, fields) => base.error(message, withTag(fields)),
    enabled: (level) => base.enabled?.(level) ?? true,
    child: (bindings) => workerLogger(childLogger(base, bindings), worker, repeatsFirst),
  };
}

/**
 * The configuration a worker runs: the primary's file as parsed there (its warnings were logged
 * there once), with the addresses the first worker bound for port 0, and without the admin
 * listener and key registry server, which the primary runs.
 */
export function workerConfig(source: ConfigSource, listenAddrs: Record<string, string>): LoadedConfig {
  const config = parseConfig(source.text, source.file, { logger: silentLogger });
  const at = (path: string, listenAddr: string): string => listenAddrs[path] ?? listenAddr;
  const { admin: _admin, keyregistry: _keyregistry, ...rest } = config;
  return {
    ...rest,
    ...(config.signerProxy ? { signerProxy: { ...config.signerProxy, listenAddr: at(config.signerProxy.path, config.signerProxy.listenAddr) } } : {}),
    verifierProxies: config.verifierProxies.map((proxy) => ({ ...proxy, listenAddr: at(proxy.path, proxy.listenAddr) })),
  };
}

async function runWorker(): Promise<void> {
  const port = parentPort;
  if (!port) throw new Error('worker-main.js runs in a worker thread that jwtproxy starts');
  const data = workerData as WorkerData;
  const send = (message: FromWorker): void => port.postMessage(message);
  const baseLogger = createLogger({ level: data.logLevel, format: data.logFormat });
  /** While the proxies start or reload (see workerLogger). */
  let settingUp = true;
  const logger = workerLogger(baseLogger, data.worker, () => data.worker > 1 && settingUp);

  const listeners = new Listeners();
  const keySource = new PrimaryKeySource(data.signerKey, data.signerKeyProblem);
  let nextRequest = 0;
  const pending = new Map<number, (reply: Extract<ToWorker, { type: 'reply' }>) => void>();
  /** Asks the primary; resolves with its reply (rejects with the error it sent). */
  const ask = (question: { type: 'nonce-table'; key: string; maxEntries: number } | { type: 'certificate'; host: string }): Promise<Extract<ToWorker, { type: 'reply' }>> =>
    new Promise((resolve, reject) => {
      const id = ++nextRequest;
      pending.set(id, (reply) => (reply.error ? reject(new Error(reply.error)) : resolve(reply)));
      send({ ...question, id });
    });

  let metrics: JwtProxyMetrics | undefined;
  let readiness: Readiness | undefined;
  if (data.admin) {
    const admin = await import('@jwtproxy/admin');
    // Process metrics (CPU, RSS, heap) are the primary's to report, once for the process.
    metrics = new admin.JwtProxyMetrics({ processMetrics: false });
    readiness = new admin.Readiness();
  }
  const seams: WorkerSeams = {
    sharedState: { nonceTable: async (key, maxEntries) => (await ask({ type: 'nonce-table', key, maxEntries })).buffer },
    forgedCertificates: async (host) => {
      const { certificate } = await ask({ type: 'certificate', host });
      if (!certificate) throw new Error(`no certificate for ${host} from the primary`);
      return certificate;
    },
    signerKeySource: keySource,
    // A request served while this worker's other proxies still start has its access line all the same.
    accessLogger: workerLogger(baseLogger, data.worker, () => false),
    ...(metrics ? { metrics } : {}),
    ...(readiness ? { readiness } : {}),
    reusePort: true,
  };

  let running: RunningJwtProxy | undefined;
  let stopping = false;
  // A stop that comes while the proxies start: what was built is stopped, nothing more listens.
  const abort = new AbortController();
  let chain = (async (): Promise<void> => {
    try {
      const runtime = createJwtProxyRuntime(logger);
      await loadPlugins(data.plugins, runtime);
      running = await startJwtProxy(workerConfig(data.source, data.listenAddrs), logger, { runtime, worker: seams, signal: abort.signal });
      settingUp = false;
    } catch (error) {
      send({ type: 'start-failed', error: (error as Error)?.message ?? String(error), configError: error instanceof ConfigError });
      process.exit(1);
    }
    if (abort.signal.aborted) return;
    send({ type: 'started', servers: running.servers, checks: readiness?.names ?? [] });
    if (data.crashAfterMs !== undefined) {
      // Fault injection (JWTPROXY_FAULT_WORKER_CRASH, for tests): an uncaught error, as a bug would throw.
      setTimeout(() => {
        throw new Error(`fault injection: worker ${data.worker} crashes (JWTPROXY_FAULT_WORKER_CRASH)`);
      }, data.crashAfterMs);
    }
  })();
  /** Reloads and the stop run one after the other, in the order the primary sent them. */
  const serially = (work: () => Promise<void>): void => {
    chain = chain.then(work, work);
  };

  port.on('message', (message: ToWorker) => {
    switch (message.type) {
      case 'reply':
        pending.get(message.id)?.(message);
        pending.delete(message.id);
        return;
      case 'signer-key':
        keySource.set(message.key, message.problem);
        return;
      case 'metrics':
        if (metrics) void metrics.snapshot().then((snapshot) => send({ type: 'metrics', id: message.id, snapshot }));
        else send({ type: 'metrics', id: message.id, snapshot: [] });
        return;
      case 'readiness':
        if (readiness) void readiness.evaluate().then((report) => send({ type: 'readiness', id: message.id, report }));
        else send({ type: 'readiness', id: message.id, report: { ready: true, checks: [] } });
        return;
      case 'reload':
        serially(async () => {
          if (stopping || !running) return;
          settingUp = true;
          try {
            const servers = await running.reload(workerConfig(message.source, message.listenAddrs));
            send({ type: 'reloaded', id: message.id, servers, checks: readiness?.names ?? [] });
          } catch (error) {
            send({ type: 'reload-failed', id: message.id, error: (error as Error)?.message ?? String(error) });
          } finally {
            settingUp = false;
          }
        });
        return;
      case 'close-listeners':
        send({ type: 'listeners-closed', id: message.id, count: listeners.closeAll() });
        return;
      case 'stop':
        stopping = true;
        abort.abort();
        serially(async () => {
          try {
            await running?.stop();
          } finally {
            send({ type: 'stopped' });
            // Pools and timers of stopped components must not keep the thread alive (as main.ts).
            process.exit(0);
          }
        });
        return;
    }
  });
}

await runWorker();

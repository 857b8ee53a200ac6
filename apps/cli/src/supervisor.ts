/**
 * The primary of `jwtproxy` with `workers: N` (N > 1). It serves no proxy request itself: it
 * starts N worker threads (worker-main.ts) that each run every proxy of the configuration on the
 * same ports (SO_REUSEPORT: the kernel spreads connections among them), and runs what must be one
 * per process:
 *
 * - the signer's private key source: one key is made, published, approved and rotated, and each
 *   active key is sent to every worker as soon as the source says it changed (its
 *   onActiveKeyChange event; a plugin's source without it is looked at every 20 ms);
 * - the `local` nonce tables (SharedNonceTables): a worker's store claims in the one table of its
 *   verifier, so a token is accepted once per process;
 * - the admin listener: /metrics sums the workers' metrics with the primary's process metrics,
 *   /readyz is ready when every check is ready in every worker (and the primary's own);
 * - the key registry server (it has its own state).
 *
 * A worker that exits without being asked (a crash) is started again after a backoff (doubling
 * from 250 ms to 30 s, reset once it ran a minute); the others keep serving meanwhile. SIGHUP: the
 * primary reads and checks the file once, then the first worker applies it (which binds any new
 * port 0), then the others; a file that does not load or build keeps everything as it was.
 * SIGINT/SIGTERM: every worker closes its listeners; once none listens, every worker stops
 * gracefully (its proxies drain within shutdown_timeout).
 */
import { Worker } from 'node:worker_threads';
import {
  ConfigError,
  childLogger,
  systemClock,
  type ComponentContext,
  type Logger,
  type LogFormat,
  type LogLevel,
  type PrivateKeySource,
  type RunningProxy,
  type Runtime,
  type SigningKey,
} from '@jwtproxy/core';
import type { JwtProxyMetrics, MetricSnapshot, Readiness, ReadinessReport, RunningAdminServer } from '@jwtproxy/admin';
import { createComponent, parseConfig, placeConfigError, readConfigFile, type LoadedConfig } from '@jwtproxy/config';
import { hasActiveKeyEvents } from '@jwtproxy/key-sources';
import { DEFAULT_MAX_ENTRIES, SharedNonceTables, sharedNonceTableKey } from '@jwtproxy/nonce-stores';
import type { CertificateForger } from '@jwtproxy/forward-proxy';
import { youngGenerationCapMb } from './heap-limits.js';
import { startFailure, type RunningJwtProxy, type StartedServer } from './run.js';
import type { ConfigSource, FromWorker, KeyProblem, StartedServerInfo, ToWorker, WorkerData } from './worker-protocol.js';

/**
 * How often the primary looks at a key source that does not announce its changes (a plugin's,
 * without onActiveKeyChange) for a new active key. Short: a rotation signed by the old key makes
 * the key registry drop that key at once, so a worker still signing with it makes tokens a
 * verifier that has not cached it refuses. The built-in sources announce each change: no timer.
 */
export const KEY_PUSH_INTERVAL_MS = 20;
/** First restart delay after a crash; doubles per crash in a row up to RESTART_MAX_DELAY_MS. */
export const RESTART_INITIAL_DELAY_MS = 250;
export const RESTART_MAX_DELAY_MS = 30_000;
/** A worker that ran this long before it crashed is restarted after the initial delay again. */
const RESTART_RESET_AFTER_MS = 60_000;
/** A worker that answers no metrics or readiness question within this is left out (metrics) or not ready. */
const QUESTION_TIMEOUT_MS = 2_000;
/** Fault injection for tests: `<worker>` or `<worker>:<ms>` — that worker's first run throws an uncaught error that long (default 500 ms) after it started. */
export const FAULT_WORKER_CRASH_ENV = 'JWTPROXY_FAULT_WORKER_CRASH';

/** A worker could not start (its reason is the message, which names the key and file:line of a configuration mistake). */
export class WorkerStartError extends Error {
  override name = 'WorkerStartError';
}

/** The configuration file's text with what it parses to: workers parse the same text, not the file again. */
export async function loadConfigSource(file: string, logger: Logger): Promise<{ config: LoadedConfig; source: ConfigSource }> {
  const source = await readConfigFile(file);
  return { config: parseConfig(source.text, source.file, { logger }), source };
}

export interface SupervisorOptions {
  count: number;
  runtime: Runtime;
  plugins: string[];
  logLevel: LogLevel;
  logFormat: LogFormat;
  signal?: AbortSignal;
  /** Default process.env (for JWTPROXY_FAULT_WORKER_CRASH). */
  env?: NodeJS.ProcessEnv;
}

export interface RunningWorkers extends RunningJwtProxy {
  reload(config: LoadedConfig, source?: ConfigSource): Promise<StartedServer[]>;
}

type Reply<T extends FromWorker['type']> = Extract<FromWorker, { type: T }>;

interface Slot {
  /** 1-based. */
  n: number;
  worker: Worker | undefined;
  threadId: number;
  running: boolean;
  /** Readiness check names it reported. */
  checks: string[];
  startedAt: number;
  crashesInARow: number;
  restartTimer: NodeJS.Timeout | undefined;
  /** Runs of this slot so far (the fault injection applies to the first). */
  runs: number;
  /** The configuration it runs (as started or last reloaded). */
  source: ConfigSource | undefined;
  waiting: Map<number, (message: FromWorker | undefined) => void>;
  exited: Promise<number>;
}

/** `127.0.0.1:0` with the port of `http://127.0.0.1:41234` → `127.0.0.1:41234` (the host as written). */
function withBoundPort(written: string, address: string): string | undefined {
  let port: string;
  try {
    port = new URL(address).port;
  } catch {
    return undefined;
  }
  return port ? `${written.slice(0, written.lastIndexOf(':'))}:${port}` : undefined;
}

function messageOf(error: unknown): string {
  return (error as Error)?.message ?? String(error);
}

export async function startWorkers(source: ConfigSource, config: LoadedConfig, logger: Logger, options: SupervisorOptions): Promise<RunningWorkers> {
  const { runtime } = options;
  const env = options.env ?? process.env;
  const fault = /^(\d+)(?::(\d+))?$/.exec(env[FAULT_WORKER_CRASH_ENV] ?? '');
  const nonceTables = new SharedNonceTables();
  let current = { config, source };
  /** Key path → what the file says (`127.0.0.1:0`) and what every worker binds (`127.0.0.1:41234`). */
  const bound = new Map<string, { written: string; listenAddr: string }>();
  let stopping = false;
  let nextId = 0;

  // The admin listener, the key registry server and the signer's key: one each, here.
  const adminPackage = config.admin ? await import('@jwtproxy/admin') : undefined;
  let admin: RunningAdminServer | undefined;
  let registry: { name: string; server: RunningProxy } | undefined;
  const readiness: Readiness | undefined = adminPackage ? new adminPackage.Readiness() : undefined;
  let keySource: { block: string; source: PrivateKeySource } | undefined;
  /** The signer's CA (TLS interception): certificates are forged here, once per host, for every worker. */
  let forger: { files: string; forger: CertificateForger } | undefined;
  let sentKey: SigningKey | undefined;
  let sentProblem: KeyProblem | undefined;
  /** How the running key source is followed: its change event, or a timer for one without it. */
  let unfollowKey: (() => void) | undefined;

  const slots: Slot[] = Array.from({ length: options.count }, (_, i) => ({
    n: i + 1,
    worker: undefined,
    threadId: -1,
    running: false,
    checks: [],
    startedAt: 0,
    crashesInARow: 0,
    restartTimer: undefined,
    runs: 0,
    source: undefined,
    waiting: new Map(),
    exited: Promise.resolve(0),
  }));

  /** The addresses workers listen on for `next`: a port 0 kept at what the first worker bound, while the file says the same. */
  const listenAddrsFor = (next: LoadedConfig): Record<string, string> => {
    const addrs: Record<string, string> = {};
    for (const proxy of [next.signerProxy, ...next.verifierProxies]) {
      const kept = proxy && bound.get(proxy.path);
      if (proxy && kept && kept.written === proxy.listenAddr) addrs[proxy.path] = kept.listenAddr;
    }
    return addrs;
  };
  const noteBound = (next: LoadedConfig, servers: StartedServerInfo[]): void => {
    for (const proxy of [next.signerProxy, ...next.verifierProxies]) {
      if (!proxy?.enabled) continue;
      const server = servers.find((s) => s.name === proxy.path);
      const listenAddr = server && /:0$/.test(proxy.listenAddr) ? withBoundPort(proxy.listenAddr, server.address) : undefined;
      if (listenAddr) bound.set(proxy.path, { written: proxy.listenAddr, listenAddr });
      else if (bound.get(proxy.path)?.written !== proxy.listenAddr) bound.delete(proxy.path);
    }
  };

  const post = (slot: Slot, message: ToWorker): void => {
    slot.worker?.postMessage(message);
  };
  /** Sends a question and resolves with the worker's answer of that id, or undefined after `timeoutMs` or if it exits. */
  const ask = <T extends FromWorker['type']>(slot: Slot, message: ToWorker & { id: number }, timeoutMs: number): Promise<Reply<T> | undefined> =>
    new Promise((resolve) => {
      const timer = timeoutMs === Infinity ? undefined : setTimeout(() => done(undefined), timeoutMs);
      const done = (answer: FromWorker | undefined): void => {
        clearTimeout(timer);
        slot.waiting.delete(message.id);
        resolve(answer as Reply<T> | undefined);
      };
      slot.waiting.set(message.id, done);
      if (slot.worker) post(slot, message);
      else done(undefined);
    });

  /** The key source's answer now: its key, or why it has none (awaiting approval, or its own failure). */
  const currentKey = (): { key: SigningKey | undefined; problem?: KeyProblem } => {
    try {
      return { key: keySource?.source.activeKey() };
    } catch (error) {
      return { key: undefined, problem: { code: (error as { code?: string })?.code, message: messageOf(error) } };
    }
  };
  const pushKey = (): void => {
    const { key, problem } = currentKey();
    const same = key ? key === sentKey || (sentKey !== undefined && key.kid === sentKey.kid && key.privateKey === sentKey.privateKey) : !sentKey && problem?.message === sentProblem?.message;
    if (same) return;
    sentKey = key;
    sentProblem = problem;
    for (const slot of slots) if (slot.worker) post(slot, { type: 'signer-key', key, ...(problem ? { problem } : {}) });
  };

  /**
   * Sends every change of `source`'s key to the workers as it happens: the listener runs in the
   * same turn as the change (a rotation), so every worker is told at once. Stops following the
   * source followed before.
   */
  const followKey = (source: PrivateKeySource | undefined): void => {
    unfollowKey?.();
    unfollowKey = undefined;
    if (!source) return;
    if (hasActiveKeyEvents(source)) {
      unfollowKey = source.onActiveKeyChange(pushKey);
      return;
    }
    const timer = setInterval(pushKey, KEY_PUSH_INTERVAL_MS).unref();
    unfollowKey = () => clearInterval(timer);
  };

  /** Readiness checks, named as the workers name theirs: ready when ready in every worker. */
  const registeredChecks = new Map<string, () => void>();
  let round: Promise<Array<ReadinessReport | string>> | undefined;
  const askReadiness = (): Promise<Array<ReadinessReport | string>> =>
    (round ??= Promise.all(
      slots.map(async (slot): Promise<ReadinessReport | string> => {
        if (!slot.running) return `worker ${slot.n} is not running (restarting)`;
        const answer = await ask<'readiness'>(slot, { type: 'readiness', id: ++nextId }, QUESTION_TIMEOUT_MS);
        return answer?.report ?? `worker ${slot.n} did not answer`;
      }),
    ).finally(() => (round = undefined)));
  const syncChecks = (): void => {
    if (!readiness) return;
    const names = new Set(slots.flatMap((slot) => slot.checks));
    for (const [name, unregister] of registeredChecks) {
      if (names.has(name)) continue;
      unregister();
      registeredChecks.delete(name);
    }
    for (const name of names) {
      if (registeredChecks.has(name)) continue;
      registeredChecks.set(
        name,
        readiness.register(name, async () => {
          for (const report of await askReadiness()) {
            if (typeof report === 'string') throw new Error(report);
            const check = report.checks.find((c) => c.name === name);
            if (check && !check.ready) throw new Error(check.problem ?? 'not ready');
          }
        }),
      );
    }
  };

  const metrics: JwtProxyMetrics | undefined = adminPackage
    ? new adminPackage.JwtProxyMetrics({
        others: async () => {
          const answers = await Promise.all(
            slots.filter((slot) => slot.running).map((slot) => ask<'metrics'>(slot, { type: 'metrics', id: ++nextId }, QUESTION_TIMEOUT_MS)),
          );
          return answers.filter((a): a is Reply<'metrics'> => a !== undefined).map((a): MetricSnapshot => a.snapshot);
        },
      })
    : undefined;

  const workerUrl = new URL('./worker-main.js', import.meta.url);

  /**
   * Starts the worker of `slot` and resolves once it listens (or rejects with why it could not).
   * After that, an exit nobody asked for restarts it (with backoff) while the primary runs.
   */
  const launch = (slot: Slot): Promise<StartedServerInfo[]> => {
    const crashAfter = fault && Number(fault[1]) === slot.n && slot.runs === 0 ? Number(fault[2] ?? 500) : undefined;
    slot.runs++;
    const data: WorkerData = {
      worker: slot.n,
      source: current.source,
      listenAddrs: listenAddrsFor(current.config),
      logLevel: options.logLevel,
      logFormat: options.logFormat,
      plugins: options.plugins,
      admin: Boolean(config.admin),
      signerKey: sentKey,
      ...(sentProblem ? { signerKeyProblem: sentProblem } : {}),
      ...(crashAfter !== undefined ? { crashAfterMs: crashAfter } : {}),
    };
    // The main thread caps its young generation (heap-limits.ts: 8 MB lean, 16 MB fast, or
    // JWTPROXY_YOUNG_GENERATION_MB); a worker's isolate gets the same through resourceLimits (V8
    // counts 3 semi-spaces: 8 MB → 12).
    const youngMb = youngGenerationCapMb(env);
    const worker = new Worker(workerUrl, {
      workerData: data,
      stderr: false,
      stdout: false,
      ...(youngMb > 0 ? { resourceLimits: { maxYoungGenerationSizeMb: youngMb * 1.5 } } : {}),
    });
    slot.worker = worker;
    slot.source = data.source;
    slot.threadId = worker.threadId;
    slot.running = false;
    let exit: (code: number) => void = () => {};
    slot.exited = new Promise((resolve) => (exit = resolve));
    return new Promise((resolve, reject) => {
      let started = false;
      worker.on('message', (message: FromWorker) => {
        switch (message.type) {
          case 'started':
            started = true;
            slot.running = true;
            slot.startedAt = Date.now();
            slot.checks = message.checks;
            syncChecks();
            resolve(message.servers);
            // Restarted while a reload went on: it started with the configuration before it.
            if (slot.source !== current.source) void catchUp(slot);
            return;
          case 'start-failed':
            reject(message.configError ? new WorkerStartError(message.error) : new WorkerStartError(`worker ${slot.n} cannot start: ${message.error}`));
            return;
          case 'certificate': {
            const answer = (certificate?: { key: string; cert: string }, error?: string): void =>
              post(slot, { type: 'reply', id: message.id, ...(certificate ? { certificate } : {}), ...(error ? { error } : {}) });
            if (!forger) answer(undefined, 'no CA is configured');
            else forger.forger.forgedFor(message.host).then((certificate) => answer(certificate), (error: unknown) => answer(undefined, messageOf(error)));
            return;
          }
          case 'nonce-table': {
            let reply: ToWorker;
            try {
              reply = { type: 'reply', id: message.id, buffer: nonceTables.bufferFor(message.key, message.maxEntries) };
            } catch (error) {
              reply = { type: 'reply', id: message.id, error: messageOf(error) };
            }
            post(slot, reply);
            return;
          }
          default:
            if ('id' in message) slot.waiting.get(message.id)?.(message);
        }
      });
      worker.on('error', (error) => {
        logger.error('worker failed', { worker: slot.n, error: messageOf(error) });
      });
      worker.on('exit', (code) => {
        slot.running = false;
        slot.worker = undefined;
        // Questions it will not answer now: answered "no answer" (undefined).
        for (const done of [...slot.waiting.values()]) done(undefined);
        // It may have been terminated inside a claim: its lock on a nonce table is released.
        nonceTables.threadExited(worker.threadId);
        exit(code);
        if (!started) {
          reject(new WorkerStartError(`worker ${slot.n} exited (code ${code}) before it listened`));
          if (!stopping && slot.runs > 1) scheduleRestart(slot);
          return;
        }
        syncChecks();
        if (stopping) return;
        logger.error('worker exited; restarting it', { worker: slot.n, code });
        scheduleRestart(slot);
      });
    });
  };

  /** Brings a worker to the current configuration (a reload it missed); if it cannot apply it, it starts anew with it. */
  const catchUp = async (slot: Slot): Promise<void> => {
    const target = current;
    const reply = await ask<'reloaded' | 'reload-failed'>(slot, { type: 'reload', id: ++nextId, source: target.source, listenAddrs: listenAddrsFor(target.config) }, Infinity);
    if (reply?.type === 'reloaded') {
      slot.source = target.source;
      slot.checks = reply.checks;
      syncChecks();
      if (slot.source !== current.source) await catchUp(slot);
      return;
    }
    if (!reply) return; // it exited: the restart starts it with the current configuration
    logger.error('worker could not apply the reload; restarting it with the new configuration', { worker: slot.n, error: reply.type === 'reload-failed' ? reply.error : 'exited' });
    void slot.worker?.terminate();
  };

  const scheduleRestart = (slot: Slot): void => {
    if (stopping || slot.restartTimer) return;
    if (slot.startedAt && Date.now() - slot.startedAt > RESTART_RESET_AFTER_MS) slot.crashesInARow = 0;
    const delay = Math.min(RESTART_MAX_DELAY_MS, RESTART_INITIAL_DELAY_MS * 2 ** Math.min(slot.crashesInARow, 20));
    slot.crashesInARow++;
    slot.restartTimer = setTimeout(() => {
      slot.restartTimer = undefined;
      if (stopping) return;
      launch(slot).then(
        () => logger.info('worker restarted', { worker: slot.n }),
        (error: unknown) => logger.error('worker restart failed', { worker: slot.n, error: messageOf(error), retryInMs: Math.min(RESTART_MAX_DELAY_MS, RESTART_INITIAL_DELAY_MS * 2 ** slot.crashesInARow) }),
      );
    }, delay);
  };

  /** The signer's key source for `next`: the running one if its block is unchanged, else a new one. */
  const keySourceFor = async (next: LoadedConfig): Promise<{ block: string; source: PrivateKeySource } | undefined> => {
    const signer = next.signerProxy?.enabled ? next.signerProxy : undefined;
    if (!signer) return undefined;
    const at = `${signer.path}.signer.private_key`;
    const block = `${next.baseDir}\u0000${signer.signer.issuer}\u0000${JSON.stringify(signer.signer.privateKey)}`;
    if (keySource?.block === block) return keySource;
    const context: ComponentContext = { logger, clock: systemClock, baseDir: next.baseDir, runtime, issuer: signer.signer.issuer, path: at };
    return { block, source: await createComponent(runtime.privateKeySources, signer.signer.privateKey, at, context, next) };
  };

  /** The CA forger for `next`: the running one if the files are the same, else one loaded from them. */
  const forgerFor = async (next: LoadedConfig): Promise<{ files: string; forger: CertificateForger } | undefined> => {
    const signer = next.signerProxy?.enabled ? next.signerProxy : undefined;
    if (!signer?.caKeyFile || !signer.caCrtFile) return undefined;
    const files = JSON.stringify([signer.caKeyFile, signer.caCrtFile]);
    if (forger?.files === files) return forger;
    const { CertificateForger } = await import('@jwtproxy/forward-proxy');
    try {
      return { files, forger: await CertificateForger.load({ caKeyFile: signer.caKeyFile, caCertFile: signer.caCrtFile }) };
    } catch (error) {
      throw error instanceof ConfigError ? placeConfigError(error, signer.path, next) : error;
    }
  };

  const stopWorkers = async (): Promise<void> => {
    for (const slot of slots) clearTimeout(slot.restartTimer);
    const shutdown = Math.max(5_000, current.config.signerProxy?.shutdownTimeout ?? 0, ...current.config.verifierProxies.map((p) => p.shutdownTimeout));
    // First every worker closes its listeners, and only then does any drain: a worker that drains
    // tells its clients `Connection: close`, and their next connection must find the port closed
    // (refused) rather than sit in the accept queue of a worker still listening, whose close would
    // reset it (SO_REUSEPORT: one queue per socket). Meanwhile open connections are served as usual.
    await Promise.all(slots.map((slot) => (slot.worker ? ask<'listeners-closed'>(slot, { type: 'close-listeners', id: ++nextId }, QUESTION_TIMEOUT_MS) : undefined)));
    await Promise.all(
      slots.map(async (slot) => {
        const worker = slot.worker;
        if (!worker) return;
        post(slot, { type: 'stop' });
        // Each proxy drains within its shutdown_timeout; a worker still there well after is cut.
        const late = setTimeout(() => void worker.terminate(), shutdown + 5_000);
        await slot.exited;
        clearTimeout(late);
      }),
    );
  };

  const stop = async (): Promise<void> => {
    stopping = true;
    readiness?.markStopping();
    followKey(undefined);
    await stopWorkers();
    const settle = async (what: string, work: Promise<void> | undefined): Promise<void> => {
      try {
        await work;
      } catch (error) {
        logger.warn('error while stopping', { what, error: messageOf(error) });
      }
    };
    await settle('private key source', keySource?.source.stop?.(Date.now() + 5_000));
    if (registry) await settle(registry.name, registry.server.stop());
    if (admin) await settle('admin', admin.stop());
  };

  let proxies: StartedServerInfo[] = [];
  const empty: RunningWorkers = { servers: [], stop: async () => {}, reload: async () => [] };
  // A signal while starting: the workers stop what they built, nothing more starts, no restart.
  const onAbort = (): void => {
    stopping = true;
    for (const slot of slots) post(slot, { type: 'stop' });
  };
  options.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    if (config.admin && adminPackage) {
      const { path: at, listenAddr } = config.admin;
      try {
        admin = await adminPackage.startAdminServer({
          listenAddr,
          metrics,
          readiness: readiness!,
          logger: childLogger(logger, { component: at }),
          ...(config.admin.serveJwks ? { publicJwks: () => publicJwksOf(keySource?.source) } : {}),
        });
      } catch (error) {
        throw startFailure(error, at, listenAddr, config);
      }
    }
    if (config.keyregistry?.enabled) {
      const at = config.keyregistry.path;
      const listenAddr = typeof config.keyregistry.options.listen_addr === 'string' ? config.keyregistry.options.listen_addr : ':8081';
      try {
        const [{ startKeyRegistryFromConfig }, { keyRegistryStorageAnswers }] = await Promise.all([import('./keyregistry-command.js'), import('@jwtproxy/keyregistry-server')]);
        const server = await startKeyRegistryFromConfig(config.keyregistry.options, config.baseDir, logger);
        if (server) {
          registry = { name: at, server };
          readiness?.register(`${at}: storage`, () => keyRegistryStorageAnswers(server.registry));
        }
      } catch (error) {
        throw startFailure(error, at, listenAddr, config);
      }
    }
    keySource = await keySourceFor(config);
    forger = await forgerFor(config);
    followKey(keySource?.source);
    ({ key: sentKey, problem: sentProblem } = currentKey());

    // The first worker binds any port 0; the others then bind the same ports.
    // The first worker binds any port 0 and the others then bind the ports it got; without a
    // port 0 they all start at once.
    const portZero = [config.signerProxy, ...config.verifierProxies].some((p) => p?.enabled && /:0$/.test(p.listenAddr));
    if (!options.signal?.aborted && portZero) {
      proxies = await launch(slots[0]!);
      noteBound(config, proxies);
      if (!options.signal?.aborted) await Promise.all(slots.slice(1).map(launch));
    } else if (!options.signal?.aborted) {
      [proxies = []] = await Promise.all(slots.map(launch));
    }
    if (options.signal?.aborted) {
      await stop();
      return empty;
    }
  } catch (error) {
    await stop();
    if (options.signal?.aborted) return empty;
    throw error;
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
  }
  logger.info('workers started', { workers: options.count });

  const servers = (): StartedServer[] => [
    ...(admin && config.admin ? [{ name: config.admin.path, address: admin.address }] : []),
    ...(registry ? [{ name: registry.name, address: registry.server.address }] : []),
    ...proxies,
  ];

  const reload = async (next: LoadedConfig, nextSource?: ConfigSource): Promise<StartedServer[]> => {
    if (!nextSource) throw new Error('a reload with workers needs the configuration text');
    // Checked here once (every component's options and files), before any worker is told.
    const { checkConfiguration } = await import('./check.js');
    await checkConfiguration(next, runtime, logger);
    if (next.workers !== current.config.workers) logger.warn('workers is read at start only: restart jwtproxy to change it', { running: options.count });
    const nextKey = await keySourceFor(next);
    const nextForger = await forgerFor(next);
    const listenAddrs = listenAddrsFor(next);
    const first = slots.find((slot) => slot.running);
    if (!first) throw new Error('no worker is running');
    const answer = await ask<'reloaded' | 'reload-failed'>(first, { type: 'reload', id: ++nextId, source: nextSource, listenAddrs }, Infinity);
    if (answer?.type !== 'reloaded') {
      if (nextKey && nextKey !== keySource) await nextKey.source.stop?.(Date.now() + 5_000);
      throw new Error(answer?.type === 'reload-failed' ? answer.error : `worker ${first.n} exited during the reload`);
    }
    // From here the new configuration is the one: a worker that fails to apply it starts anew with it.
    const previousKey = keySource;
    keySource = nextKey;
    forger = nextForger;
    current = { config: next, source: nextSource };
    first.checks = answer.checks;
    proxies = answer.servers;
    noteBound(next, answer.servers);
    if (nextKey !== previousKey) followKey(nextKey?.source);
    pushKey();
    if (previousKey && previousKey !== nextKey) void previousKey.source.stop?.(Date.now() + 5_000);
    first.source = nextSource;
    // The others (and any that started meanwhile with the old file) apply it now.
    await Promise.all(slots.filter((slot) => slot !== first && slot.running && slot.source !== nextSource).map(catchUp));
    syncChecks();
    // Tables of nonce stores the new configuration no longer has are forgotten (workers drop theirs as they go).
    nonceTables.retainOnly(localNonceTableKeys(next));
    return servers();
  };

  return { servers: servers(), stop, reload };
}

/** The shared table names of the `local` nonce stores `config` has, as the stores ask for them. */
function localNonceTableKeys(config: LoadedConfig): string[] {
  return config.verifierProxies
    .filter((proxy) => proxy.enabled && proxy.verifier.nonceStorage.type === 'local')
    .map((proxy) => {
      const maxEntries = proxy.verifier.nonceStorage.options?.max_entries;
      return sharedNonceTableKey(`${proxy.path}.verifier.nonce_storage`, typeof maxEntries === 'number' ? maxEntries : DEFAULT_MAX_ENTRIES);
    });
}

/** The public JWKs of the signer's key source, when it can give them (`preshared` can). */
function publicJwksOf(source: PrivateKeySource | undefined): readonly object[] | undefined {
  const withJwks = source as (PrivateKeySource & { publicJwks?: () => readonly object[] }) | undefined;
  return typeof withJwks?.publicJwks === 'function' ? withJwks.publicJwks() : undefined;
}

/**
 * Assembly: from a loaded configuration to listening proxies.
 *
 *   0. the admin listener, if configured (`/readyz` answers 503 while the rest starts);
 *   1. the key registry server, if configured (a signer in this process may publish to it);
 *   2. every component (key sources, key servers, nonce stores, claims verifiers), so that any
 *      mistake is a ConfigError naming its key before a proxy listens;
 *   3. the proxies, signer first, then each verifier.
 *
 * Anything that fails stops what already started, and the error goes to the caller. With an
 * admin listener, each proxy counts its requests into one metrics collector and its components
 * are wrapped to count their calls; readiness checks are registered for each part.
 */
import {
  ConfigError,
  ListenError,
  childLogger,
  RequestSigner,
  RequestVerifier,
  systemClock,
  type ComponentConfig,
  type ComponentContext,
  type ComponentRegistry,
  type Logger,
  type NonceStore,
  type PrivateKeySource,
  type RunningProxy,
  type Runtime,
  type SharedState,
  type Stoppable,
} from '@jwtproxy/core';
// Only types at the top: the admin package (prom-client), the proxies, the key registry server
// and what they depend on load when the configuration has them (`import()` below), so that a
// sidecar pays in start-up time and memory for what it runs.
import type { JwtProxyMetrics, Readiness, RunningAdminServer } from '@jwtproxy/admin';
import { createComponent, placeConfigError, type LoadedConfig, type SignerProxyConfig, type VerifierProxyConfig } from '@jwtproxy/config';
import { accessLog, type AccessRecord } from '@jwtproxy/proxy-engine';
import { createJwtProxyRuntime } from './builtins.js';

/** A server the CLI started: its key path in the configuration and where it listens. */
export interface StartedServer {
  /** `signer_proxy`, `verifier_proxies[0]`, `keyregistry`. */
  name: string;
  address: string;
}

export interface RunningJwtProxy {
  servers: StartedServer[];
  /** Stops every proxy in parallel (each within its shutdown_timeout), then the components, then the key registry. */
  stop(): Promise<void>;
  /**
   * Applies a new configuration (SIGHUP) without dropping a connection: components whose block is
   * unchanged are kept (nonces, keys, caches stay), changed ones are built anew, proxies that keep
   * their listener are updated in place, the others started anew and the old ones stopped
   * gracefully. Rejects, with the old configuration still running, when the new one cannot be
   * built or started. The key registry and admin blocks are read only at start.
   */
  reload(config: LoadedConfig): Promise<StartedServer[]>;
}

interface Listening {
  name: string;
  server: RunningProxy;
  /** ms */
  shutdownTimeout: number;
  /** What a reload compares to decide between an update in place and a new listener. */
  listener: string;
  update?: (config: LoadedConfig) => Promise<void>;
  /** Whether it still listens (false once its stop began), for its readiness check. */
  isOpen: () => boolean;
  kind: 'signer' | 'verifier';
}

/** Something that may hold resources: stopped at shutdown when it can be. */
type Component = Partial<Stoppable>;

/** System error codes of a bind failure (port in use, no permission, no such address). */
const listenErrorCodes = new Set(['EADDRINUSE', 'EACCES', 'EADDRNOTAVAIL', 'ENOENT', 'EPERM']);

/** The ListenError in an error's cause chain; or one made from a bind failure's system error that a server wrapped. */
function listenErrorIn(error: unknown, listenAddr: string): ListenError | undefined {
  for (let current = error, depth = 0; current instanceof Error && depth < 5; current = current.cause, depth++) {
    if (current instanceof ListenError) return current;
    const systemCode = (current as NodeJS.ErrnoException).code;
    if (systemCode && listenErrorCodes.has(systemCode) && (current as NodeJS.ErrnoException).syscall !== undefined) {
      return ListenError.fromSystemError(listenAddr, current as NodeJS.ErrnoException);
    }
  }
  return undefined;
}

/** One clear ConfigError for a proxy that could not start, naming its key. */
export function startFailure(error: unknown, at: string, listenAddr: string, config: LoadedConfig): ConfigError {
  if (error instanceof ConfigError) return placeConfigError(error, at, config);
  const listen = listenErrorIn(error, listenAddr);
  if (listen) return config.errorAt(`${at}.listen_addr`, listen.message);
  return config.errorAt(at, `cannot start: ${(error as Error)?.message ?? String(error)}`);
}

/**
 * A proxy's logger names it (`component=verifier_proxies[1]`), and so does its access log (unless
 * `log.access_log` is false), which writes through `accessLogger` (in a worker, one whose start
 * lines are not lowered: WorkerSeams.accessLogger).
 */
function proxyLogging(logger: Logger, path: string, config: LoadedConfig, accessLogger = logger): { logger: Logger; onAccess?: (record: AccessRecord) => void } {
  const named = childLogger(logger, { component: path });
  // Off, or not written at this level (-log-level warn): no access record is even built.
  if (!config.log.accessLog || named.enabled?.('info') === false) return { logger: named };
  const accessNamed = accessLogger === logger ? named : childLogger(accessLogger, { component: path });
  return { logger: named, onAccess: accessLog(accessNamed, { sample: config.log.accessLogSample }) };
}

/** The access log's consumer and the metrics' in one (metrics first: they never throw). */
function withMetrics(
  logging: { logger: Logger; onAccess?: (record: AccessRecord) => void },
  metrics: JwtProxyMetrics | undefined,
  path: string,
): { logger: Logger; onAccess?: (record: AccessRecord) => void } {
  if (!metrics) return logging;
  const count = metrics.onAccess(path);
  const log = logging.onAccess;
  return {
    logger: logging.logger,
    onAccess: log
      ? (record) => {
          count(record);
          log(record);
        }
      : count,
  };
}

export interface StartOptions {
  /** Aborted (a signal came) while starting: what was built is stopped and nothing more listens. */
  signal?: AbortSignal;
  /** The registries to build components from (with plugins' types); default: the built-ins only. */
  runtime?: Runtime;
  /** In a worker thread: what it shares with the primary and the other workers (worker-main.ts). */
  worker?: WorkerSeams;
}

/**
 * What a worker thread's proxies take from the primary instead of making their own. The worker
 * starts no admin listener and no key registry server (the primary runs them): its metrics and
 * readiness checks go to the primary, which answers /metrics and /readyz for the process.
 */
export interface WorkerSeams {
  /** Handed to every component: a `local` nonce store keeps its nonces in the process's one table. */
  sharedState: SharedState;
  /** The signer's key: a view of the one key source the primary runs (one key, rotated once, for all workers). */
  signerKeySource: PrivateKeySource;
  /** Where the proxies count (the primary sums every worker's); none without an admin listener. */
  metrics?: JwtProxyMetrics;
  /** The checks the primary asks for at each /readyz. */
  readiness?: Readiness;
  /** The access log's logger, when it is not `logger` (a worker's, whose start lines are lowered to debug). */
  accessLogger?: Logger;
  /** Listen with SO_REUSEPORT, as every worker does on the same ports. */
  reusePort: boolean;
  /** The signer's forged certificates (TLS interception): the primary forges each host once for the process. */
  forgedCertificates?: (host: string) => Promise<{ key: string; cert: string }>;
}

export async function startJwtProxy(config: LoadedConfig, logger: Logger, options: StartOptions = {}): Promise<RunningJwtProxy> {
  const runtime = options.runtime ?? createJwtProxyRuntime(logger);
  const { privateKeySources, keyServers, nonceStores, claimsVerifiers } = runtime;
  /** Every component built, by its key path and block: a reload keeps those whose block is unchanged. */
  let components = new Map<string, Component>();
  const listening = new Map<string, Listening>();
  // Stopped last, with its own shutdown_timeout: a verifier in this process may still ask it for keys.
  let registry: { name: string; server: RunningProxy } | undefined;
  // With `admin.listen_addr`: started first, stopped after everything else.
  const seams = options.worker;
  const adminPackage = config.admin || seams?.metrics ? await import('@jwtproxy/admin') : undefined;
  const metrics = seams ? seams.metrics : adminPackage ? new adminPackage.JwtProxyMetrics() : undefined;
  // Without an admin listener nothing asks for readiness: the checks are not kept.
  const adminReadiness = seams ? seams.readiness : adminPackage ? new adminPackage.Readiness() : undefined;
  const reusePort = seams?.reusePort ? { reusePort: true } : {};
  const readiness: Pick<Readiness, 'register' | 'markStopping'> = adminReadiness ?? { register: () => () => {}, markStopping: () => {} };
  let admin: RunningAdminServer | undefined;
  /** What the readiness checks of each proxy look at now (a reload swaps them). */
  const liveKeySources = new Map<string, PrivateKeySource>();
  const liveNonceStores = new Map<string, NonceStore>();

  const settle = async (what: string, work: Promise<void> | undefined): Promise<void> => {
    try {
      await work;
    } catch (error) {
      logger.warn('error while stopping', { what, error: (error as Error)?.message ?? String(error) });
    }
  };
  const stopComponents = (which: Iterable<Component>, deadline: number): Promise<unknown> =>
    Promise.all([...which].map((c) => settle('component', c.stop?.(deadline))));
  const longestShutdown = (): number => Math.max(5_000, ...[...listening.values()].map((l) => l.shutdownTimeout));

  const stop = async (): Promise<void> => {
    // Not ready from now on: load balancers stop sending while requests drain.
    readiness.markStopping();
    const proxies = [...listening.values()];
    listening.clear();
    await Promise.all(proxies.map((l) => settle(l.name, l.server.stop(Date.now() + l.shutdownTimeout))));
    await stopComponents(components.values(), Date.now() + Math.max(5_000, ...proxies.map((l) => l.shutdownTimeout)));
    if (registry) await settle(registry.name, registry.server.stop());
    if (admin) await settle('admin', admin.stop());
  };

  /**
   * Builds what `next` describes: the signer and a verifier per enabled entry. A component whose
   * block is the same as in `previous` is taken from there. On a mistake, what was built anew is
   * stopped and the error thrown.
   */
  const assemble = async (next: LoadedConfig, previous: Map<string, Component>) => {
    const context: ComponentContext = { logger, clock: systemClock, baseDir: next.baseDir, runtime, ...(seams ? { sharedState: seams.sharedState } : {}) };
    const built = new Map<string, Component>();
    const created: Component[] = [];
    const component = async <T extends Component>(registryOfKind: ComponentRegistry<T>, block: ComponentConfig, at: string, ctx: ComponentContext): Promise<T> => {
      const key = `${at}\u0000${next.baseDir}\u0000${JSON.stringify(block)}`;
      const kept = previous.get(key) as T | undefined;
      const made = kept ?? (await createComponent(registryOfKind, block, at, { ...ctx, path: at }, next));
      if (!kept) created.push(made);
      built.set(key, made);
      return made;
    };
    try {
      let signer: { signer: RequestSigner; keySource: PrivateKeySource } | undefined;
      const signerProxy = next.signerProxy?.enabled ? next.signerProxy : undefined;
      if (signerProxy) {
        const { signer: settings } = signerProxy;
        // Private key sources learn the signer's issuer from their context (autogenerated keys are published under it).
        const builtSource =
          seams?.signerKeySource ?? (await component(privateKeySources, settings.privateKey, `${signerProxy.path}.signer.private_key`, { ...context, issuer: settings.issuer }));
        const keySource = metrics && adminPackage ? adminPackage.instrumentPrivateKeySource(metrics, builtSource, { proxy: signerProxy.path }) : builtSource;
        signer = {
          keySource: builtSource,
          signer: new RequestSigner({
            issuer: settings.issuer,
            expirationTime: settings.expirationTime,
            maxSkew: settings.maxSkew,
            nonceLength: settings.nonceLength,
            keySource,
          }),
        };
      }
      const verifiers = new Map<string, { verifier: RequestVerifier; nonceStore: NonceStore }>();
      for (const proxy of next.verifierProxies.filter((p) => p.enabled)) {
        const at = `${proxy.path}.verifier`;
        const settings = proxy.verifier;
        const builtResolver = await component(keyServers, settings.keyServer, `${at}.key_server`, context);
        const builtStore = await component(nonceStores, settings.nonceStorage, `${at}.nonce_storage`, context);
        const keyResolver = metrics && adminPackage ? adminPackage.instrumentKeyServer(metrics, builtResolver, { proxy: proxy.path, type: settings.keyServer.type }) : builtResolver;
        const nonceStore = metrics && adminPackage ? adminPackage.instrumentNonceStore(metrics, builtStore, { proxy: proxy.path, type: settings.nonceStorage.type }) : builtStore;
        const checks = [];
        for (const [i, claimsVerifier] of settings.claimsVerifiers.entries()) {
          checks.push(await component(claimsVerifiers, claimsVerifier, `${at}.claims_verifiers[${i}]`, context));
        }
        verifiers.set(proxy.path, {
          nonceStore,
          verifier: new RequestVerifier({ audience: settings.audience, maxSkew: settings.maxSkew, maxTtl: settings.maxTtl, keyResolver, nonceStore, claimsVerifiers: checks }),
        });
      }
      return { signer, verifiers, built, created };
    } catch (error) {
      await stopComponents(created, Date.now() + 5_000);
      throw error;
    }
  };

  type Assembly = Awaited<ReturnType<typeof assemble>>;

  /** The signer's options from `next`, as both a start and an update take them. */
  const signerSettings = (next: LoadedConfig, signerProxy: SignerProxyConfig, signer: RequestSigner) => ({
    signer,
    ...(signerProxy.caKeyFile ? { caKeyFile: signerProxy.caKeyFile } : {}),
    ...(signerProxy.caCrtFile ? { caCertFile: signerProxy.caCrtFile } : {}),
    trustedCertificates: signerProxy.trustedCertificates,
    insecureSkipVerify: signerProxy.insecureSkipVerify,
    limits: signerProxy.limits,
    ...withMetrics(proxyLogging(logger, signerProxy.path, next, seams?.accessLogger), metrics, signerProxy.path),
  });
  const verifierSettings = (next: LoadedConfig, proxy: VerifierProxyConfig, verifier: RequestVerifier) => ({
    ...(proxy.keyFile && proxy.crtFile ? { tls: { keyFile: proxy.keyFile, certFile: proxy.crtFile } } : {}),
    upstream: proxy.verifier.upstream,
    ...(proxy.verifier.upstreamCaFile ? { upstreamCaFile: proxy.verifier.upstreamCaFile } : {}),
    claimsToHeaders: proxy.verifier.claimsToHeaders,
    stripToken: proxy.verifier.stripToken,
    che: { ...proxy.verifier.che, audience: proxy.verifier.audience },
    verifier,
    limits: proxy.limits,
    ...withMetrics(proxyLogging(logger, proxy.path, next, seams?.accessLogger), metrics, proxy.path),
  });

  /** Readiness checks by proxy path, each looking at what is live for that path (a reload swaps that, not the check). */
  const liveOpen = new Map<string, () => boolean>();
  const registered = new Map<string, Array<() => void>>();
  const watchReadiness = (proxy: Listening): void => {
    liveOpen.set(proxy.name, proxy.isOpen);
    if (registered.has(proxy.name)) return;
    const path = proxy.name;
    registered.set(path, [
      readiness.register(`${path}: listening`, () => {
        if (!liveOpen.get(path)?.()) throw new Error('not listening');
      }),
      proxy.kind === 'signer'
        ? // An autogenerated key awaiting approval: not ready (NoActiveKeyError, `No key is yet active`).
          readiness.register(`${path}: active key`, () => liveKeySources.get(path)?.activeKey())
        : readiness.register(`${path}: nonce store`, () => liveNonceStores.get(path)?.ping?.()),
    ]);
  };
  const unwatchReadiness = (path: string): void => {
    for (const unregister of registered.get(path) ?? []) unregister();
    registered.delete(path);
    liveOpen.delete(path);
  };

  /** Starts the proxies of `next` that `reuse` does not cover; returns them by path. */
  const startProxies = async (next: LoadedConfig, assembly: Assembly, skip: (path: string, listener: string) => boolean): Promise<Map<string, Listening>> => {
    const started = new Map<string, Listening>();
    try {
      const signerProxy = next.signerProxy?.enabled ? next.signerProxy : undefined;
      if (signerProxy && assembly.signer) {
        const listener = signerListener(signerProxy);
        if (!skip(signerProxy.path, listener)) {
          try {
            const { startSignerProxy } = await import('@jwtproxy/forward-proxy');
            const server = await startSignerProxy({
              listenAddr: signerProxy.listenAddr,
              socketPermission: signerProxy.socketPermission,
              ...reusePort,
              shutdownTimeout: signerProxy.shutdownTimeout,
              ...signerSettings(next, signerProxy, assembly.signer.signer),
              ...(metrics && adminPackage ? { certificateObserver: adminPackage.certificateObserver(metrics, { proxy: signerProxy.path }) } : {}),
              ...(seams?.forgedCertificates ? { forgedCertificates: seams.forgedCertificates } : {}),
            });
            metrics?.watchConnections(signerProxy.path, server);
            let open = true;
            const path = signerProxy.path;
            started.set(path, {
              name: path,
              server: { ...server, stop: (deadline) => ((open = false), server.stop(deadline)) },
              shutdownTimeout: signerProxy.shutdownTimeout,
              listener,
              update: async (cfg) => {
                const proxy = cfg.signerProxy!;
                await server.update(signerSettings(cfg, proxy, currentAssembly.signer!.signer));
              },
              isOpen: () => open,
              kind: 'signer',
            });
          } catch (error) {
            throw startFailure(error, signerProxy.path, signerProxy.listenAddr, next);
          }
        }
      }
      for (const proxy of next.verifierProxies.filter((p) => p.enabled)) {
        const listener = verifierListener(proxy);
        if (skip(proxy.path, listener)) continue;
        try {
          const { startVerifierProxy } = await import('@jwtproxy/reverse-proxy');
          const server = await startVerifierProxy({
            listenAddr: proxy.listenAddr,
            socketPermission: proxy.socketPermission,
            ...reusePort,
            shutdownTimeout: proxy.shutdownTimeout,
            ...verifierSettings(next, proxy, assembly.verifiers.get(proxy.path)!.verifier),
          });
          metrics?.watchConnections(proxy.path, server);
          let open = true;
          const path = proxy.path;
          started.set(path, {
            name: path,
            server: { ...server, stop: (deadline) => ((open = false), server.stop(deadline)) },
            shutdownTimeout: proxy.shutdownTimeout,
            listener,
            update: async (cfg) => {
              const entry = cfg.verifierProxies.find((p) => p.path === path)!;
              await server.update(verifierSettings(cfg, entry, currentAssembly.verifiers.get(path)!.verifier));
            },
            isOpen: () => open,
            kind: 'verifier',
          });
        } catch (error) {
          throw startFailure(error, proxy.path, proxy.listenAddr, next);
        }
      }
    } catch (error) {
      await Promise.all([...started.values()].map((l) => settle(l.name, l.server.stop(Date.now()))));
      throw error;
    }
    return started;
  };

  /** Makes `assembly` what the readiness checks look at. */
  const goLive = (assembly: Assembly): void => {
    liveKeySources.clear();
    liveNonceStores.clear();
    if (assembly.signer && config.signerProxy) liveKeySources.set(config.signerProxy.path, assembly.signer.keySource);
    for (const [path, { nonceStore }] of assembly.verifiers) liveNonceStores.set(path, nonceStore);
  };

  let currentAssembly: Assembly;
  try {
    // 0. The admin listener.
    if (config.admin) {
      const { path: at, listenAddr } = config.admin;
      try {
        admin = await adminPackage!.startAdminServer({
          listenAddr,
          metrics,
          readiness: adminReadiness!,
          logger: childLogger(logger, { component: at }),
          // The signer's public key as a JWK set, for verifiers outside jwtproxy (Envoy, Istio), when
          // asked and when its key source can give it; read on each request, so a reload's new key shows.
          ...(config.admin.serveJwks ? { publicJwks: () => signerPublicJwks(liveKeySources, config.signerProxy?.path) } : {}),
        });
      } catch (error) {
        throw startFailure(error, at, listenAddr, config);
      }
    }

    // 1. The key registry server.
    if (config.keyregistry?.enabled) {
      const at = config.keyregistry.path;
      const listenAddr = typeof config.keyregistry.options.listen_addr === 'string' ? config.keyregistry.options.listen_addr : ':8081';
      try {
        const [{ startKeyRegistryFromConfig }, { keyRegistryStorageAnswers }] = await Promise.all([
          import('./keyregistry-command.js'),
          import('@jwtproxy/keyregistry-server'),
        ]);
        const server = await startKeyRegistryFromConfig(config.keyregistry.options, config.baseDir, logger);
        if (server) {
          registry = { name: at, server };
          readiness.register(`${at}: storage`, () => keyRegistryStorageAnswers(server.registry));
        }
      } catch (error) {
        throw startFailure(error, at, listenAddr, config);
      }
    }

    // 2. Every component, before any proxy listens.
    currentAssembly = await assemble(config, new Map());
    components = currentAssembly.built;
    goLive(currentAssembly);

    if (options.signal?.aborted) {
      await stop();
      return { servers: [], stop: async () => {}, reload: async () => [] };
    }

    // 3. The proxies.
    for (const [path, proxy] of await startProxies(config, currentAssembly, () => false)) {
      listening.set(path, proxy);
      watchReadiness(proxy);
    }
  } catch (error) {
    await stop();
    throw error;
  }

  const servers = (): StartedServer[] =>
    [...(admin && config.admin ? [{ name: config.admin.path, server: admin }] : []), ...(registry ? [registry] : []), ...listening.values()].map((l) => ({
      name: l.name,
      address: l.server.address,
    }));

  const reload = async (next: LoadedConfig): Promise<StartedServer[]> => {
    const assembly = await assemble(next, components);
    const kept = (path: string, listener: string): boolean => listening.get(path)?.listener === listener;
    let started: Map<string, Listening>;
    try {
      started = await startProxies(next, assembly, kept);
    } catch (error) {
      await stopComponents(assembly.created, Date.now() + 5_000);
      throw error;
    }
    const previousComponents = components;
    currentAssembly = assembly;
    components = assembly.built;
    config = next;
    goLive(assembly);
    const wanted = new Set([...(next.signerProxy?.enabled ? [next.signerProxy.path] : []), ...next.verifierProxies.filter((p) => p.enabled).map((p) => p.path)]);
    const retired: Listening[] = [];
    for (const [path, proxy] of listening) {
      if (started.has(path) || !wanted.has(path)) {
        retired.push(proxy);
        listening.delete(path);
      } else {
        await proxy.update?.(next);
      }
    }
    for (const [path, proxy] of started) {
      listening.set(path, proxy);
      watchReadiness(proxy);
    }
    for (const proxy of retired) if (!listening.has(proxy.name)) unwatchReadiness(proxy.name);
    // What was replaced finishes its requests, then goes; components no longer used go after it.
    const deadline = Date.now() + longestShutdown();
    void (async () => {
      await Promise.all(retired.map((l) => settle(l.name, l.server.stop(Date.now() + l.shutdownTimeout))));
      const inUse = new Set(components.values());
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, deadline - Date.now())).unref());
      await stopComponents([...previousComponents.values()].filter((c) => !inUse.has(c)), Date.now() + 5_000);
    })();
    return servers();
  };

  return { servers: servers(), stop, reload };
}

/** The public JWKs of the signer's live key source, when it can give them (`preshared` can). */
function signerPublicJwks(sources: Map<string, PrivateKeySource>, path: string | undefined): readonly object[] | undefined {
  const source = path === undefined ? undefined : (sources.get(path) as (PrivateKeySource & { publicJwks?: () => readonly object[] }) | undefined);
  return typeof source?.publicJwks === 'function' ? source.publicJwks() : undefined;
}

/** What must stay the same for a signer to be updated in place instead of listening anew. */
function signerListener(proxy: SignerProxyConfig): string {
  return JSON.stringify([proxy.listenAddr, proxy.socketPermission, Boolean(proxy.caKeyFile && proxy.caCrtFile)]);
}

/** What must stay the same for a verifier to be updated in place instead of listening anew. */
function verifierListener(proxy: VerifierProxyConfig): string {
  return JSON.stringify([proxy.listenAddr, proxy.socketPermission, Boolean(proxy.keyFile && proxy.crtFile)]);
}

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
  type ComponentContext,
  type Logger,
  type RunningProxy,
  type Runtime,
  type Stoppable,
} from '@jwtproxy/core';
import {
  JwtProxyMetrics,
  Readiness,
  certificateObserver,
  instrumentKeyServer,
  instrumentNonceStore,
  instrumentPrivateKeySource,
  startAdminServer,
  type RunningAdminServer,
} from '@jwtproxy/admin';
import { createComponent, placeConfigError, type LoadedConfig } from '@jwtproxy/config';
import { startSignerProxy } from '@jwtproxy/forward-proxy';
import { accessLog, type AccessRecord } from '@jwtproxy/proxy-engine';
import { keyRegistryStorageAnswers } from '@jwtproxy/keyregistry-server';
import { startVerifierProxy } from '@jwtproxy/reverse-proxy';
import { createJwtProxyRuntime } from './builtins.js';
import { startKeyRegistryFromConfig } from './keyregistry-command.js';

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
}

interface Listening {
  name: string;
  server: RunningProxy;
  /** ms */
  shutdownTimeout: number;
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
function startFailure(error: unknown, at: string, listenAddr: string, config: LoadedConfig): ConfigError {
  if (error instanceof ConfigError) return placeConfigError(error, at, config);
  const listen = listenErrorIn(error, listenAddr);
  if (listen) return config.errorAt(`${at}.listen_addr`, listen.message);
  return config.errorAt(at, `cannot start: ${(error as Error)?.message ?? String(error)}`);
}

/**
 * A proxy's logger names it (`component=verifier_proxies[1]`), and its access log (unless
 * `log.access_log` is false) writes through that logger.
 */
function proxyLogging(logger: Logger, path: string, config: LoadedConfig): { logger: Logger; onAccess?: (record: AccessRecord) => void } {
  const named = childLogger(logger, { component: path });
  if (!config.log.accessLog) return { logger: named };
  return { logger: named, onAccess: accessLog(named, { sample: config.log.accessLogSample }) };
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
}

export async function startJwtProxy(config: LoadedConfig, logger: Logger, options: StartOptions = {}): Promise<RunningJwtProxy> {
  const runtime = options.runtime ?? createJwtProxyRuntime(logger);
  const { privateKeySources, keyServers, nonceStores, claimsVerifiers } = runtime;
  const context: ComponentContext = { logger, clock: systemClock, baseDir: config.baseDir, runtime };
  const components: Component[] = [];
  const listening: Listening[] = [];
  // Stopped last, with its own shutdown_timeout: a verifier in this process may still ask it for keys.
  let registry: { name: string; server: RunningProxy } | undefined;
  // With `admin.listen_addr`: started first, stopped after everything else.
  const metrics = config.admin ? new JwtProxyMetrics() : undefined;
  const readiness = new Readiness();
  let admin: RunningAdminServer | undefined;
  /** Proxies listening now, for their readiness checks. */
  const listeningNow = new Set<string>();
  const whenListening = (path: string) => () => {
    if (!listeningNow.has(path)) throw new Error('not listening');
  };

  const stop = async (): Promise<void> => {
    // Not ready from now on: load balancers stop sending while requests drain.
    readiness.markStopping();
    listeningNow.clear();
    const settle = async (what: string, work: Promise<void> | undefined): Promise<void> => {
      try {
        await work;
      } catch (error) {
        logger.warn('error while stopping', { what, error: (error as Error)?.message ?? String(error) });
      }
    };
    await Promise.all(listening.map((l) => settle(l.name, l.server.stop(Date.now() + l.shutdownTimeout))));
    const componentDeadline = Date.now() + Math.max(5_000, ...listening.map((l) => l.shutdownTimeout));
    await Promise.all(components.map((c) => settle('component', c.stop?.(componentDeadline))));
    if (registry) await settle(registry.name, registry.server.stop());
    if (admin) await settle('admin', admin.stop());
  };

  const build = <T extends Component>(made: T): T => {
    components.push(made);
    return made;
  };

  try {
    // 0. The admin listener, and a readiness check for each proxy to come.
    if (config.admin) {
      const { path: at, listenAddr } = config.admin;
      try {
        admin = await startAdminServer({ listenAddr, metrics, readiness, logger: childLogger(logger, { component: at }) });
      } catch (error) {
        throw startFailure(error, at, listenAddr, config);
      }
    }
    if (config.signerProxy?.enabled) readiness.register(`${config.signerProxy.path}: listening`, whenListening(config.signerProxy.path));
    for (const proxy of config.verifierProxies) if (proxy.enabled) readiness.register(`${proxy.path}: listening`, whenListening(proxy.path));

    // 1. The key registry server.
    if (config.keyregistry?.enabled) {
      const at = config.keyregistry.path;
      const listenAddr = typeof config.keyregistry.options.listen_addr === 'string' ? config.keyregistry.options.listen_addr : ':8081';
      try {
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
    const signerProxy = config.signerProxy?.enabled ? config.signerProxy : undefined;
    let signer: RequestSigner | undefined;
    if (signerProxy) {
      const { signer: settings } = signerProxy;
      // Private key sources learn the signer's issuer from their context (autogenerated keys are published under it).
      const builtSource = build(await createComponent(privateKeySources, settings.privateKey, `${signerProxy.path}.signer.private_key`, { ...context, issuer: settings.issuer }, config));
      // An autogenerated key awaiting approval: not ready (NoActiveKeyError, `No key is yet active`).
      readiness.register(`${signerProxy.path}: active key`, () => builtSource.activeKey());
      const keySource = metrics ? instrumentPrivateKeySource(metrics, builtSource, { proxy: signerProxy.path }) : builtSource;
      signer = new RequestSigner({
        issuer: settings.issuer,
        expirationTime: settings.expirationTime,
        maxSkew: settings.maxSkew,
        nonceLength: settings.nonceLength,
        keySource,
      });
    }
    const verifierProxies = config.verifierProxies.filter((proxy) => proxy.enabled);
    const verifiers: RequestVerifier[] = [];
    for (const proxy of verifierProxies) {
      const at = `${proxy.path}.verifier`;
      const settings = proxy.verifier;
      const builtResolver = build(await createComponent(keyServers, settings.keyServer, `${at}.key_server`, context, config));
      const builtStore = build(await createComponent(nonceStores, settings.nonceStorage, `${at}.nonce_storage`, context, config));
      const keyResolver = metrics ? instrumentKeyServer(metrics, builtResolver, { proxy: proxy.path, type: settings.keyServer.type }) : builtResolver;
      const nonceStore = metrics ? instrumentNonceStore(metrics, builtStore, { proxy: proxy.path, type: settings.nonceStorage.type }) : builtStore;
      readiness.register(`${proxy.path}: nonce store`, () => nonceStore.ping?.());
      const checks = [];
      for (const [i, claimsVerifier] of settings.claimsVerifiers.entries()) {
        checks.push(build(await createComponent(claimsVerifiers, claimsVerifier, `${at}.claims_verifiers[${i}]`, context, config)));
      }
      verifiers.push(
        new RequestVerifier({
          audience: settings.audience,
          maxSkew: settings.maxSkew,
          maxTtl: settings.maxTtl,
          keyResolver,
          nonceStore,
          claimsVerifiers: checks,
        }),
      );
    }

    if (options.signal?.aborted) {
      await stop();
      return { servers: [], stop: async () => {} };
    }

    // 3. The proxies.
    if (signerProxy && signer) {
      try {
        const server = await startSignerProxy({
          listenAddr: signerProxy.listenAddr,
          socketPermission: signerProxy.socketPermission,
          shutdownTimeout: signerProxy.shutdownTimeout,
          signer,
          ...(signerProxy.caKeyFile ? { caKeyFile: signerProxy.caKeyFile } : {}),
          ...(signerProxy.caCrtFile ? { caCertFile: signerProxy.caCrtFile } : {}),
          trustedCertificates: signerProxy.trustedCertificates,
          insecureSkipVerify: signerProxy.insecureSkipVerify,
          limits: signerProxy.limits,
          ...withMetrics(proxyLogging(logger, signerProxy.path, config), metrics, signerProxy.path),
          ...(metrics ? { certificateObserver: certificateObserver(metrics, { proxy: signerProxy.path }) } : {}),
        });
        listening.push({ name: signerProxy.path, server, shutdownTimeout: signerProxy.shutdownTimeout });
        metrics?.watchConnections(signerProxy.path, server);
        listeningNow.add(signerProxy.path);
      } catch (error) {
        throw startFailure(error, signerProxy.path, signerProxy.listenAddr, config);
      }
    }
    for (const [i, proxy] of verifierProxies.entries()) {
      try {
        const server = await startVerifierProxy({
          listenAddr: proxy.listenAddr,
          socketPermission: proxy.socketPermission,
          ...(proxy.keyFile && proxy.crtFile ? { tls: { keyFile: proxy.keyFile, certFile: proxy.crtFile } } : {}),
          upstream: proxy.verifier.upstream,
          ...(proxy.verifier.upstreamCaFile ? { upstreamCaFile: proxy.verifier.upstreamCaFile } : {}),
          verifier: verifiers[i]!,
          shutdownTimeout: proxy.shutdownTimeout,
          limits: proxy.limits,
          ...withMetrics(proxyLogging(logger, proxy.path, config), metrics, proxy.path),
        });
        listening.push({ name: proxy.path, server, shutdownTimeout: proxy.shutdownTimeout });
        metrics?.watchConnections(proxy.path, server);
        listeningNow.add(proxy.path);
      } catch (error) {
        throw startFailure(error, proxy.path, proxy.listenAddr, config);
      }
    }
  } catch (error) {
    await stop();
    throw error;
  }

  const servers = [...(admin && config.admin ? [{ name: config.admin.path, server: admin }] : []), ...(registry ? [registry] : []), ...listening].map((l) => ({
    name: l.name,
    address: l.server.address,
  }));
  return { servers, stop };
}

import type { IncomingMessage } from 'node:http';
import {
  ConfigError,
  WrongProxyKindError,
  checkRequestHead,
  httpAnswerFor,
  parseListenAddress,
  readFileAsync,
  RepeatedLogLimiter,
  removeSocketFile,
  writeRawAnswer,
  type Logger,
  type RequestSigner,
  type RunningProxy,
  type ServerLimits,
} from '@jwtproxy/core';
import { ProxyEngine, type AccessRecord, type ProxyHooks } from '@jwtproxy/proxy-engine';
import { CertificateForger, SharedCertificates, type CertificateForgingObserver, type ForgedCertificateSource, type SecureContextSource } from './certificates.js';
import { TlsInterceptor } from './interception.js';
import { absoluteTarget, isAbsoluteForm, tunnelTarget, type RequestTarget } from './targets.js';
import { ConnectTunnels } from './tunnels.js';
import { UpstreamPools } from './upstreams.js';

export interface SignerProxyOptions {
  /** `host:port`, `:port` (every interface) or `unix:/path`. */
  listenAddr: string;
  /** Mode of a unix socket, default 0o755 (as Go). */
  socketPermission?: number;
  /** Bind with SO_REUSEPORT: worker threads of one process listen on the same port (Node >= 22.12). */
  reusePort?: boolean;
  /** How long stop() lets requests in flight finish by default, in ms. */
  shutdownTimeout: number;
  signer: RequestSigner;
  /** The MITM CA (PEM files). Without both, a CONNECT tunnel that carries TLS is closed (plain HTTP in a tunnel is still signed). */
  caKeyFile?: string;
  caCertFile?: string;
  /** PEM files whose certificates replace the system roots for upstream TLS (as Go). */
  trustedCertificates?: string[];
  /** Accept any upstream certificate. */
  insecureSkipVerify?: boolean;
  logger: Logger;
  /** Least time between two log lines about the same recurring failure, ms (default 10 s). */
  repeatedLogIntervalMs?: number;
  /**
   * Timeouts, connection cap and header-line limit; each field left out is DEFAULT_SERVER_LIMITS'.
   * They hold for the listener and, the same, for the requests read from inside CONNECT tunnels.
   */
  limits?: Partial<ServerLimits>;
  /** Called as each request and tunnel ends (access log, metrics). */
  onAccess?: (record: AccessRecord) => void;
  /** Told of each certificate forged for an intercepted tunnel (metrics). */
  certificateObserver?: CertificateForgingObserver;
  /**
   * With the CA files given: where forged certificates come from instead of forging them here
   * (a worker thread asks its primary's CertificateForger.forgedFor: one forging per host for the process).
   */
  forgedCertificates?: ForgedCertificateSource;
}

const LISTEN_ADDR_KEY = 'signer_proxy.listen_addr';

export const NOT_A_PROXY_REQUEST = 'This is a forward proxy server. Does not respond to non-proxy requests.';

/**
 * The request headers the signer does not pass on as the client sent them: `host` is set from the
 * target, and `authorization` is the signer's own. A client's own credentials would reach the
 * upstream beside the signed token, and a service that reads the first Authorization header
 * (Node's `req.headers.authorization`, Go's `Header.Get`) would trust them instead.
 */
const SIGNER_OWNED_HEADERS: ReadonlySet<string> = new Set(['host', 'authorization']);

async function readTrustedCertificates(files: string[]): Promise<string[]> {
  return Promise.all(
    files.map(async (file) => {
      let pem: string;
      try {
        pem = await readFileAsync(file, 'utf8');
      } catch (error) {
        throw new ConfigError('signer_proxy.trusted_certificates', `cannot read ${(error as Error).message}`, { file });
      }
      if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new ConfigError('signer_proxy.trusted_certificates', 'no PEM certificate in the file', { file });
      return pem;
    }),
  );
}

/** Where a request goes: an absolute-form request names it; one inside a CONNECT tunnel goes to the tunnel's host. */
function targetOf(req: IncomingMessage, tunnels: ConnectTunnels): RequestTarget {
  const url = req.url ?? '';
  const tunnel = tunnels.tunnelOf(req);
  if (tunnel !== undefined) return tunnelTarget(tunnel, url, req.headers.host);
  if (isAbsoluteForm(url)) return absoluteTarget(url);
  throw new WrongProxyKindError(NOT_A_PROXY_REQUEST);
}

/** The signer's hooks into the engine: each request is signed for its target's audience. */
/** What a reload may swap in a running signer: everything but where it listens. */
export interface SignerProxyUpdate {
  signer: RequestSigner;
  caKeyFile?: string;
  caCertFile?: string;
  trustedCertificates?: string[];
  insecureSkipVerify?: boolean;
  limits?: Partial<ServerLimits>;
  onAccess?: (record: AccessRecord) => void;
}

/** A running signer, which a reload can update in place. */
export interface RunningSignerProxy extends RunningProxy {
  update(next: SignerProxyUpdate): Promise<void>;
}

/** What the hooks read on every request: swapped whole by a reload. */
interface SignerState {
  signer: RequestSigner;
  pools: UpstreamPools;
}

function signerHooks(state: { current: SignerState }, tunnels: () => ConnectTunnels, limits: () => ServerLimits): ProxyHooks {
  return {
    droppedRequestHeaders: SIGNER_OWNED_HEADERS,
    keepConnectionAfterRefusal: false,
    route(req, head) {
      const target = targetOf(req, tunnels());
      const { signer, pools } = state.current;
      // One async signature on libuv's thread pool: RSA never blocks the event loop. A `then` on
      // it rather than an async function: one promise and one turn of the microtask queue less.
      return signer.sign(target.audience).then((jwt) => ({
        dispatcher: pools.poolFor(target.origin),
        path: target.path,
        headers: ['host', target.host, ...head.headers, 'authorization', `Bearer ${jwt}`],
        upstreamName: target.origin,
        token: { aud: target.audience },
      }));
    },
    connect(req, socket, head) {
      // A CONNECT needs no Host header (RFC 9112 §3.2.3), but one that is there must be valid.
      const problem = checkRequestHead(req, limits());
      if (problem && (problem.status === 431 || req.headers.host !== undefined)) {
        writeRawAnswer(socket, httpAnswerFor(problem));
        return problem.status;
      }
      return tunnels().handleConnect(req, socket, head);
    },
    closeUpstreams: (deadline) => state.current.pools.close(deadline),
  };
}

/**
 * Starts the signer: a forward proxy that adds `Authorization: Bearer <jwt>` to every request:
 * absolute-form requests, requests inside CONNECT tunnels that carry plain HTTP and, with a CA,
 * inside tunnels that carry TLS. Rejects with ConfigError (naming the key and file) when it
 * cannot start.
 */
export async function startSignerProxy(options: SignerProxyOptions): Promise<RunningSignerProxy> {
  const { logger } = options;
  const listenAddress = parseListenAddress(options.listenAddr, LISTEN_ADDR_KEY);
  if (Boolean(options.caKeyFile) !== Boolean(options.caCertFile)) {
    throw new ConfigError(options.caKeyFile ? 'signer_proxy.ca_crt_file' : 'signer_proxy.ca_key_file', 'ca_key_file and ca_crt_file must be given together');
  }
  const interception = async (files: { caKeyFile: string; caCertFile: string }): Promise<SecureContextSource> =>
    options.forgedCertificates ? new SharedCertificates(options.forgedCertificates) : CertificateForger.load(files, { observer: options.certificateObserver });
  const forger = options.caKeyFile && options.caCertFile ? await interception({ caKeyFile: options.caKeyFile, caCertFile: options.caCertFile }) : undefined;
  const trustedCertificates = options.trustedCertificates?.length ? await readTrustedCertificates(options.trustedCertificates) : undefined;
  const pools = new UpstreamPools({ trustedCertificates, insecureSkipVerify: options.insecureSkipVerify ?? false });
  const state = { current: { signer: options.signer, pools } };

  let tunnels: ConnectTunnels | undefined;
  const engine: ProxyEngine = new ProxyEngine({
    hooks: signerHooks(state, () => tunnels!, () => engine.limits),
    limits: options.limits,
    logger,
    repeatedLogIntervalMs: options.repeatedLogIntervalMs,
    onAccess: options.onAccess,
  });
  const { limits } = engine;
  const outerServer = engine.createServer();
  // Reads the requests inside CONNECT tunnels; never bound to a port.
  const innerServer = engine.createUnboundServer();
  const interceptor = forger
    ? new TlsInterceptor(forger, {
        logger,
        handshakeTimeoutMs: Math.min(10_000, limits.readHeaderTimeoutMs),
        handOver: (tlsSocket, authority) => tunnels!.handOverTls(tlsSocket, authority),
      })
    : undefined;
  tunnels = new ConnectTunnels({
    innerServer,
    interceptor,
    firstBytesTimeoutMs: limits.readHeaderTimeoutMs,
    logger,
    log: new RepeatedLogLimiter(logger, { intervalMs: options.repeatedLogIntervalMs }),
  });

  let address: string;
  try {
    address = await engine.listen(outerServer, listenAddress, { socketPermission: options.socketPermission ?? 0o755, ...(options.reusePort ? { reusePort: true } : {}) });
  } catch (error) {
    innerServer.close();
    throw new ConfigError(LISTEN_ADDR_KEY, (error as Error).message);
  }
  if (!forger) {
    logger.warn('no CA configured (ca_key_file, ca_crt_file): CONNECT tunnels that carry TLS will be closed, not signed', { listen: address });
  }
  logger.info('signer proxy listening', { address, https_interception: forger ? 'on' : 'off' });

  const stop = async (deadline: number): Promise<void> => {
    // Tunnels that have sent nothing yet carry no request: closed with the listener.
    await engine.stop(deadline, () => tunnels!.closeSilent());
    tunnels!.destroyAll();
    await removeSocketFile(listenAddress);
    logger.info('signer proxy stopped', { address });
  };
  let stopped: Promise<void> | undefined;
  return {
    address,
    get openConnections() {
      return engine.openConnections;
    },
    get openTunnels() {
      return engine.openTunnels;
    },
    stop(deadline = Date.now() + options.shutdownTimeout) {
      stopped ??= stop(deadline);
      return stopped;
    },
    /**
     * Swaps the signer (its key source), the upstream TLS policy, the CA, the limits and the
     * access observer without closing a connection; requests already signed finish as they
     * started, old pools close once their requests are done. Rejects, changing nothing, when a
     * new file cannot be read or HTTPS interception would be turned on or off (that needs a restart).
     */
    async update(next: SignerProxyUpdate) {
      if (Boolean(next.caKeyFile && next.caCertFile) !== Boolean(forger)) {
        throw new Error('HTTPS interception (ca_key_file, ca_crt_file) cannot be turned on or off by a reload: the signer must be restarted');
      }
      const caChanged = next.caKeyFile !== options.caKeyFile || next.caCertFile !== options.caCertFile;
      const newForger = caChanged && next.caKeyFile && next.caCertFile
        ? await interception({ caKeyFile: next.caKeyFile, caCertFile: next.caCertFile })
        : undefined;
      const tlsChanged = JSON.stringify(next.trustedCertificates ?? []) !== JSON.stringify(options.trustedCertificates ?? []) || (next.insecureSkipVerify ?? false) !== (options.insecureSkipVerify ?? false);
      const trusted = !tlsChanged ? trustedCertificates : next.trustedCertificates?.length ? await readTrustedCertificates(next.trustedCertificates) : undefined;
      const previous = state.current.pools;
      const nextPools = tlsChanged ? new UpstreamPools({ trustedCertificates: trusted, insecureSkipVerify: next.insecureSkipVerify ?? false }) : previous;
      if (newForger) interceptor?.setForger(newForger);
      state.current = { signer: next.signer, pools: nextPools };
      engine.updateLimits(next.limits);
      engine.setOnAccess(next.onAccess);
      Object.assign(options, { caKeyFile: next.caKeyFile, caCertFile: next.caCertFile, trustedCertificates: next.trustedCertificates, insecureSkipVerify: next.insecureSkipVerify });
      if (tlsChanged) void previous.close(Date.now() + options.shutdownTimeout);
    },
  };
}

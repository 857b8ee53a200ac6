import { readFile } from 'node:fs/promises';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import {
  ConfigError,
  httpAnswerFor,
  listenOn,
  parseListenAddress,
  removeSocketFile,
  RepeatedLogLimiter,
  writeRawAnswer,
  type HttpAnswer,
  type Logger,
  type RequestSigner,
  type RunningProxy,
} from '@jwtproxy/core';
import { CertificateForger } from './certificates.js';
import { answer, createForwarder } from './forwarding.js';
import { TlsInterceptor } from './interception.js';
import { BadTargetError, absoluteTarget, isAbsoluteForm, tunnelTarget, type RequestTarget } from './targets.js';
import { forwardUpgrade } from './upgrade.js';
import { UpstreamPools } from './upstreams.js';

export interface SignerProxyOptions {
  /** `host:port`, `:port` (every interface) or `unix:/path`. */
  listenAddr: string;
  /** Mode of a unix socket, default 0o755 (as Go). */
  socketPermission?: number;
  /** How long stop() lets requests in flight finish by default, in ms. */
  shutdownTimeout: number;
  signer: RequestSigner;
  /** The MITM CA (PEM files). Without both, CONNECT is refused. */
  caKeyFile?: string;
  caCertFile?: string;
  /** PEM files whose certificates replace the system roots for upstream TLS (as Go). */
  trustedCertificates?: string[];
  /** Accept any upstream certificate. */
  insecureSkipVerify?: boolean;
  logger: Logger;
  /** Least time between two log lines about the same recurring failure, ms (default 10 s). */
  repeatedLogIntervalMs?: number;
}

const LISTEN_ADDR_KEY = 'signer_proxy.listen_addr';

export const NOT_A_PROXY_REQUEST = 'This is a forward proxy server. Does not respond to non-proxy requests.';
export const CONNECT_NEEDS_CA =
  'jwtproxy: HTTPS interception is not configured: set ca_key_file and ca_crt_file in signer_proxy to sign requests sent through CONNECT';

async function readTrustedCertificates(files: string[]): Promise<string[]> {
  return Promise.all(
    files.map(async (file) => {
      let pem: string;
      try {
        pem = await readFile(file, 'utf8');
      } catch (error) {
        throw new ConfigError('signer_proxy.trusted_certificates', `cannot read ${(error as Error).message}`, { file });
      }
      if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new ConfigError('signer_proxy.trusted_certificates', 'no PEM certificate in the file', { file });
      return pem;
    }),
  );
}

/**
 * Starts the signer: a forward proxy that adds `Authorization: Bearer <jwt>` to every request,
 * for plain HTTP (absolute-form requests) and, with a CA, for HTTPS through CONNECT.
 * Rejects with ConfigError (naming the key and file) when it cannot start.
 */
export async function startSignerProxy(options: SignerProxyOptions): Promise<RunningProxy> {
  const { signer, logger } = options;
  const listenAddress = parseListenAddress(options.listenAddr, LISTEN_ADDR_KEY);
  if (Boolean(options.caKeyFile) !== Boolean(options.caCertFile)) {
    throw new ConfigError(options.caKeyFile ? 'signer_proxy.ca_crt_file' : 'signer_proxy.ca_key_file', 'ca_key_file and ca_crt_file must be given together');
  }
  const forger =
    options.caKeyFile && options.caCertFile ? await CertificateForger.load({ caKeyFile: options.caKeyFile, caCertFile: options.caCertFile }) : undefined;
  const trustedCertificates = options.trustedCertificates?.length ? await readTrustedCertificates(options.trustedCertificates) : undefined;
  const tlsPolicy = { trustedCertificates, insecureSkipVerify: options.insecureSkipVerify ?? false };
  const pools = new UpstreamPools(tlsPolicy);
  const forwarder = createForwarder(signer, pools, logger, options.repeatedLogIntervalMs);

  let stopping = false;
  let inFlight = 0;
  let drained: (() => void) | undefined;
  const upgrades = new Set<Duplex>();

  const serverOptions: http.ServerOptions = {
    // Long uploads and downloads stream through: no whole-request deadline, but slow headers are cut.
    requestTimeout: 0,
    headersTimeout: 60_000,
    keepAliveTimeout: 30_000,
  };
  const outerServer = http.createServer(serverOptions);
  const innerServer = http.createServer(serverOptions);
  const interceptor = forger ? new TlsInterceptor(forger, innerServer, logger) : undefined;

  /** Where a request goes, or the answer when it cannot be forwarded. */
  const targetOf = (req: IncomingMessage, tunnel: string | undefined): RequestTarget | HttpAnswer => {
    const url = req.url ?? '';
    try {
      if (tunnel !== undefined) return tunnelTarget(tunnel, url, req.headers.host);
      if (isAbsoluteForm(url)) return absoluteTarget(url);
      return { status: 500, body: NOT_A_PROXY_REQUEST };
    } catch (error) {
      const reason = error instanceof BadTargetError ? error.message : `cannot parse ${url}`;
      return { status: 400, body: `jwtproxy: bad request target: ${reason}` };
    }
  };

  const track = (connection: { once(event: 'close', listener: () => void): unknown }): void => {
    inFlight++;
    connection.once('close', () => {
      if (--inFlight === 0) drained?.();
    });
  };

  const handle = (req: IncomingMessage, res: ServerResponse, tunnel: string | undefined): void => {
    track(res);
    // While stopping, let the client know this connection will not carry another request.
    if (stopping) res.shouldKeepAlive = false;
    const target = targetOf(req, tunnel);
    if ('status' in target) {
      answer(res, target);
      req.resume();
      return;
    }
    forwarder.forward(req, res, target).catch((error: unknown) => {
      // A bug, not a request problem: answer and keep serving rather than crash on an unhandled rejection.
      logger.error('request failed unexpectedly', { error });
      answer(res, httpAnswerFor(error));
    });
  };

  // WebSocket and other upgrades: signed, then the connections are joined. An open tunnel counts
  // as a request in flight, so a graceful stop gives it until the deadline before cutting it.
  const upgradeLog = new RepeatedLogLimiter(logger, { intervalMs: options.repeatedLogIntervalMs });
  const handleUpgrade = (req: IncomingMessage, client: Duplex, bodyHead: Buffer, tunnel: string | undefined): void => {
    client.on('error', () => undefined);
    if (stopping) return writeRawAnswer(client, { status: 503, body: 'jwtproxy: shutting down' });
    track(client);
    upgrades.add(client);
    client.once('close', () => upgrades.delete(client));
    const target = targetOf(req, tunnel);
    if ('status' in target) return writeRawAnswer(client, target);
    void forwardUpgrade(signer, tlsPolicy, upgradeLog, req, client, bodyHead, target);
  };

  outerServer.on('request', (req: IncomingMessage, res: ServerResponse) => handle(req, res, undefined));
  innerServer.on('request', (req: IncomingMessage, res: ServerResponse) => handle(req, res, interceptor?.tunnelOf(req) ?? ''));
  outerServer.on('connect', (req: IncomingMessage, socket, head: Buffer) => {
    if (interceptor && !stopping) interceptor.handleConnect(req, socket, head);
    else {
      socket.on('error', () => undefined);
      writeRawAnswer(socket, { status: 501, body: stopping ? 'jwtproxy: shutting down' : CONNECT_NEEDS_CA });
    }
  });
  outerServer.on('upgrade', (req: IncomingMessage, client: Duplex, bodyHead: Buffer) => handleUpgrade(req, client, bodyHead, undefined));
  innerServer.on('upgrade', (req: IncomingMessage, client: Duplex, bodyHead: Buffer) =>
    handleUpgrade(req, client, bodyHead, interceptor?.tunnelOf(req) ?? ''),
  );

  let address: string;
  try {
    address = await listenOn(outerServer, listenAddress, { socketPermission: options.socketPermission ?? 0o755 });
  } catch (error) {
    throw new ConfigError(LISTEN_ADDR_KEY, (error as Error).message);
  }
  if (!forger) {
    logger.warn('no CA configured (ca_key_file, ca_crt_file): HTTPS requests through CONNECT will be refused, not signed', { listen: address });
  }
  logger.info('signer proxy listening', { address, https_interception: forger ? 'on' : 'off' });

  let stopped: Promise<void> | undefined;
  const stop = async (deadline: number): Promise<void> => {
    stopping = true;
    const closed = new Promise<void>((resolve) => outerServer.close(() => resolve()));
    outerServer.closeIdleConnections();
    innerServer.closeIdleConnections();
    if (inFlight > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
        drained = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    outerServer.closeAllConnections();
    innerServer.closeAllConnections();
    interceptor?.destroyAll();
    for (const client of upgrades) client.destroy();
    await pools.close(deadline);
    await closed;
    await removeSocketFile(listenAddress);
    logger.info('signer proxy stopped', { address });
  };

  return {
    address,
    stop(deadline = Date.now() + options.shutdownTimeout) {
      stopped ??= stop(deadline);
      return stopped;
    },
  };
}

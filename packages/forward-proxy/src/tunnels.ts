import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { endRawConnection, writeRawAnswer, type Logger, type RepeatedLogLimiter } from '@jwtproxy/core';
import type { TlsInterceptor } from './interception.js';
import { parseConnectAuthority, type Tunnel } from './targets.js';

/** A TLS connection starts with a handshake record (content type 22); an HTTP request never does. */
const TLS_HANDSHAKE_RECORD = 0x16;

/**
 * A fatal `handshake_failure` alert (TLS record: alert, version 3.1, length 2, level fatal,
 * description 40), sent instead of a ServerHello when a tunnel carries TLS and no CA is
 * configured: the client reports a TLS failure ("alert handshake failure") at once instead of
 * a connection reset.
 */
const TLS_HANDSHAKE_FAILURE_ALERT = Buffer.from([0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28]);

export interface ConnectTunnelsOptions {
  /** The HTTP server (never bound to a port) that serves the requests read from tunnels. */
  innerServer: Server;
  /** Intercepts TLS tunnels; without one (no CA configured), a TLS tunnel is closed. */
  interceptor: TlsInterceptor | undefined;
  /** A tunnel that sends nothing in this time after the 200 is closed, ms. */
  firstBytesTimeoutMs: number;
  logger: Logger;
  log: RepeatedLogLimiter;
}

/**
 * CONNECT to any `host:port`: the signer answers `200 Connection established` at once, then reads
 * the tunnel's first bytes to see what it carries. A TLS handshake is intercepted (with a CA) or
 * refused; anything else is served as HTTP, each request signed for `http://host[:port]`.
 * Clients such as undici's ProxyAgent (Node's fetch) open a tunnel even for an `http://` URL.
 */
export class ConnectTunnels {
  readonly #options: ConnectTunnelsOptions;
  /** The tunnel of each connection the inner server reads requests from (raw or TLS socket). */
  readonly #tunnels = new WeakMap<object, Tunnel>();
  /** Tunnels not yet handed to the interceptor (waiting for their first bytes, or plain HTTP). */
  readonly #open = new Set<Duplex>();

  constructor(options: ConnectTunnelsOptions) {
    this.#options = options;
  }

  /** The tunnel a request read by the inner server came through. */
  tunnelOf(req: IncomingMessage): Tunnel | undefined {
    return this.#tunnels.get(req.socket);
  }

  /** Answers the CONNECT (200, or 400 for a target that is not `host:port`) and returns that status. */
  handleConnect(req: IncomingMessage, socket: Duplex, head: Buffer): number {
    const { logger, firstBytesTimeoutMs } = this.#options;
    const authority = req.url ?? '';
    const target = parseConnectAuthority(authority);
    socket.on('error', (error) => logger.debug('tunnel socket error', { tunnel: authority, error: error.message }));
    if (!target) {
      writeRawAnswer(socket, { status: 400, body: `jwtproxy: CONNECT needs a host:port target, got "${authority}"` });
      return 400;
    }
    this.#open.add(socket);
    socket.once('close', () => this.#open.delete(socket));
    socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    if (head.length > 0) {
      this.#route(socket, authority, target.host, head);
      return 200;
    }
    // Nothing yet: wait for the first bytes, as long as a request head may take.
    const silent = setTimeout(() => socket.destroy(), firstBytesTimeoutMs);
    const closed = (): void => {
      clearTimeout(silent);
      socket.destroy();
    };
    socket.once('data', (first: Buffer) => {
      clearTimeout(silent);
      socket.off('end', closed);
      socket.pause();
      this.#route(socket, authority, target.host, first);
    });
    socket.once('end', closed);
    socket.once('close', () => clearTimeout(silent));
    socket.resume();
    return 200;
  }

  #route(socket: Duplex, authority: string, connectHost: string, first: Buffer): void {
    const { interceptor, innerServer, log } = this.#options;
    if (first[0] === TLS_HANDSHAKE_RECORD) {
      if (interceptor) {
        this.#open.delete(socket);
        interceptor.intercept(socket, authority, connectHost, first);
        return;
      }
      log.write('warn', 'tls tunnel without CA', 'CONNECT tunnel carries TLS but HTTPS interception is not configured (ca_key_file, ca_crt_file): tunnel closed', {
        tunnel: authority,
      });
      socket.write(TLS_HANDSHAKE_FAILURE_ALERT);
      endRawConnection(socket);
      return;
    }
    this.#options.logger.debug('serving HTTP from a CONNECT tunnel', { tunnel: authority });
    this.#tunnels.set(socket, { authority, secure: false });
    socket.unshift(first);
    innerServer.emit('connection', socket);
    // Paused while the first bytes were looked at; Node's server reads a socket it did not accept
    // through 'data' events, which a paused socket does not emit.
    socket.resume();
  }

  /** Serves the requests of an intercepted tunnel, once its TLS handshake is done. */
  handOverTls(tlsSocket: Duplex, authority: string): void {
    this.#tunnels.set(tlsSocket, { authority, secure: true });
    this.#options.innerServer.emit('connection', tlsSocket);
  }

  /** Closes the tunnels that have not sent anything yet: they carry no request (at the start of a stop). */
  closeSilent(): void {
    for (const socket of this.#open) if (!this.#tunnels.has(socket)) socket.destroy();
  }

  /** Cuts every tunnel (at the end of a stop). */
  destroyAll(): void {
    for (const socket of this.#open) socket.destroy();
    this.#open.clear();
    this.#options.interceptor?.destroyAll();
  }
}

import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { TLSSocket, type SecureContext } from 'node:tls';
import { writeRawAnswer, type Logger } from '@jwtproxy/core';
import type { CertificateForger } from './certificates.js';
import { parseConnectAuthority } from './targets.js';

/** A client that has not finished its TLS handshake in this time is dropped. */
const HANDSHAKE_TIMEOUT = 10_000;
/** What a client may send before its tunnel's certificate is ready: a ClientHello is far smaller. */
const MAX_EARLY_BYTES = 64 * 1024;

/**
 * Man-in-the-middle for CONNECT: answers 200, forges a certificate for the requested host
 * (the SNI name when the client sends one, else the CONNECT host, e.g. an IP address),
 * terminates the client's TLS on the tunnel itself and hands the decrypted connection to
 * `innerServer`, an HTTP server that is never bound to a port. Requests read from it are
 * signed like any other; `tunnelOf(req)` tells which CONNECT target they belong to.
 */
export class TlsInterceptor {
  readonly #forger: CertificateForger;
  readonly #innerServer: Server;
  readonly #logger: Logger;
  readonly #authorities = new WeakMap<object, string>();
  readonly #tunnels = new Set<Duplex>();

  constructor(forger: CertificateForger, innerServer: Server, logger: Logger) {
    this.#forger = forger;
    this.#innerServer = innerServer;
    this.#logger = logger;
  }

  /** The CONNECT `host:port` a request inside a tunnel came through, as the client wrote it. */
  tunnelOf(req: IncomingMessage): string | undefined {
    return this.#authorities.get(req.socket);
  }

  handleConnect(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const authority = req.url ?? '';
    const target = parseConnectAuthority(authority);
    socket.on('error', (error) => this.#logger.debug('tunnel socket error', { tunnel: authority, error: error.message }));
    if (!target) {
      writeRawAnswer(socket, { status: 400, body: `jwtproxy: CONNECT needs a host:port target, got "${authority}"` });
      return;
    }
    this.#logger.debug('intercepting CONNECT', { tunnel: authority });
    this.#tunnels.add(socket);
    socket.once('close', () => this.#tunnels.delete(socket));
    // Answer at once; the certificate is forged while the client sends its ClientHello. Until
    // TLS starts, the tunnel is read here: early bytes are kept for the TLS layer, and a client
    // that closes meanwhile is dropped at once (an end read before the TLS layer takes the socket
    // would never reach it, and the tunnel would wait out the handshake timeout).
    socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    const early: Buffer[] = head.length ? [head] : [];
    let earlyBytes = head.length;
    const keepEarly = (chunk: Buffer) => {
      early.push(chunk);
      earlyBytes += chunk.length;
      if (earlyBytes > MAX_EARLY_BYTES) socket.destroy();
    };
    const dropClosed = () => socket.destroy();
    socket.on('data', keepEarly);
    socket.once('end', dropClosed);
    this.#forger.secureContextFor(target.host).then(
      (secureContext) => {
        socket.off('data', keepEarly);
        socket.off('end', dropClosed);
        socket.pause();
        if (early.length) socket.unshift(Buffer.concat(early));
        this.#startTls(socket, authority, target.host, secureContext);
      },
      (error: Error) => {
        this.#logger.error('cannot forge a certificate', { host: target.host, error: error.message });
        socket.destroy();
      },
    );
  }

  #startTls(socket: Duplex, authority: string, connectHost: string, secureContext: SecureContext): void {
    if (socket.destroyed) return;
    const tlsSocket = new TLSSocket(socket, {
      isServer: true,
      secureContext,
      ALPNProtocols: ['http/1.1'],
      SNICallback: (servername, done) => {
        const name = servername.toLowerCase();
        if (name === connectHost) return done(null, secureContext);
        this.#forger.secureContextFor(name).then((context) => done(null, context), (error: Error) => done(error));
      },
    });
    // From here the TLS socket owns the connection: track and cut it instead of the raw one.
    this.#tunnels.delete(socket);
    this.#tunnels.add(tlsSocket);
    const timer = setTimeout(() => tlsSocket.destroy(), HANDSHAKE_TIMEOUT);
    // A client that closes its side before the handshake is done will never finish it; without
    // this its socket would wait out the whole timeout.
    const dropHalfClosed = () => tlsSocket.destroy();
    tlsSocket.once('end', dropHalfClosed);
    tlsSocket.once('close', () => {
      this.#logger.debug('tunnel closed', { tunnel: authority });
      clearTimeout(timer);
      this.#tunnels.delete(tlsSocket);
      socket.destroy();
    });
    tlsSocket.on('error', (error) => {
      // A client that does not trust our CA ends here ("unknown ca" / "bad certificate").
      this.#logger.debug('TLS with the client failed', { tunnel: authority, error: error.message });
      tlsSocket.destroy();
    });
    tlsSocket.once('secure', () => {
      clearTimeout(timer);
      tlsSocket.off('end', dropHalfClosed);
      this.#authorities.set(tlsSocket, authority);
      this.#innerServer.emit('connection', tlsSocket);
    });
  }

  /** Cuts every tunnel (at the end of a shutdown). */
  destroyAll(): void {
    for (const socket of this.#tunnels) socket.destroy();
    this.#tunnels.clear();
  }
}

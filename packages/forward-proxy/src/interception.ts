import type { Duplex } from 'node:stream';
import { TLSSocket, type SecureContext } from 'node:tls';
import type { Logger } from '@jwtproxy/core';
import type { SecureContextSource } from './certificates.js';

/** What a client may send before its tunnel's certificate is ready: a ClientHello is far smaller. */
const MAX_EARLY_BYTES = 64 * 1024;

export interface TlsInterceptorOptions {
  /** A client that has not finished its TLS handshake in this time is dropped, ms. */
  handshakeTimeoutMs: number;
  /** Receives each tunnel's TLS socket once the handshake is done, to serve its requests. */
  handOver: (tlsSocket: TLSSocket, authority: string) => void;
  logger: Logger;
}

/**
 * Man-in-the-middle for a CONNECT tunnel that starts with a TLS handshake: forges a certificate
 * for the requested host (the SNI name when the client sends one, else the CONNECT host, e.g. an
 * IP address), terminates the client's TLS on the tunnel itself and hands the decrypted
 * connection over (to the signer's inner HTTP server, which is never bound to a port).
 */
export class TlsInterceptor {
  #forger: SecureContextSource;
  readonly #options: TlsInterceptorOptions;
  readonly #tunnels = new Set<Duplex>();

  constructor(forger: SecureContextSource, options: TlsInterceptorOptions) {
    this.#forger = forger;
    this.#options = options;
  }

  /**
   * Takes over a tunnel (already answered 200) whose first bytes, `first`, start a TLS handshake.
   * The certificate is forged while the rest of the ClientHello arrives. Until TLS starts, the
   * tunnel is read here: early bytes are kept for the TLS layer, and a client that closes
   * meanwhile is dropped at once (an end read before the TLS layer takes the socket would never
   * reach it, and the tunnel would wait out the handshake timeout).
   */
  intercept(socket: Duplex, authority: string, connectHost: string, first: Buffer): void {
    this.#options.logger.debug('intercepting CONNECT', { tunnel: authority });
    this.#tunnels.add(socket);
    socket.once('close', () => this.#tunnels.delete(socket));
    const early: Buffer[] = [first];
    let earlyBytes = first.length;
    const keepEarly = (chunk: Buffer) => {
      early.push(chunk);
      earlyBytes += chunk.length;
      if (earlyBytes > MAX_EARLY_BYTES) socket.destroy();
    };
    const dropClosed = () => socket.destroy();
    socket.on('data', keepEarly);
    socket.once('end', dropClosed);
    socket.resume();
    this.#forger.secureContextFor(connectHost).then(
      (secureContext) => {
        socket.off('data', keepEarly);
        socket.off('end', dropClosed);
        socket.pause();
        socket.unshift(Buffer.concat(early));
        this.#startTls(socket, authority, connectHost, secureContext);
      },
      (error: Error) => {
        this.#options.logger.error('cannot forge a certificate', { host: connectHost, error: error.message });
        socket.destroy();
      },
    );
  }

  #startTls(socket: Duplex, authority: string, connectHost: string, secureContext: SecureContext): void {
    if (socket.destroyed) return;
    const { logger, handOver, handshakeTimeoutMs } = this.#options;
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
    const timer = setTimeout(() => tlsSocket.destroy(), handshakeTimeoutMs);
    // A client that closes its side before the handshake is done will never finish it; without
    // this its socket would wait out the whole timeout.
    const dropHalfClosed = () => tlsSocket.destroy();
    tlsSocket.once('end', dropHalfClosed);
    tlsSocket.once('close', () => {
      logger.debug('tunnel closed', { tunnel: authority });
      clearTimeout(timer);
      this.#tunnels.delete(tlsSocket);
      socket.destroy();
    });
    tlsSocket.on('error', (error) => {
      // A client that does not trust our CA ends here ("unknown ca" / "bad certificate").
      logger.debug('TLS with the client failed', { tunnel: authority, error: error.message });
      tlsSocket.destroy();
    });
    tlsSocket.once('secure', () => {
      clearTimeout(timer);
      tlsSocket.off('end', dropHalfClosed);
      handOver(tlsSocket, authority);
    });
  }

  /** Forges with another CA from now on (a reload); tunnels already intercepted keep theirs. */
  setForger(forger: SecureContextSource): void {
    this.#forger = forger;
  }

  /** Cuts every intercepted tunnel (at the end of a shutdown). */
  destroyAll(): void {
    for (const socket of this.#tunnels) socket.destroy();
    this.#tunnels.clear();
  }
}

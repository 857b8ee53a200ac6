import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import { endRawConnection, spliceSockets } from '@jwtproxy/core';
import type { Dispatcher } from 'undici';
import { CLIENT_GONE, type UpstreamFailed } from './relay.js';
import { rawResponseHead, responseHeaders, switchingProtocolsHeaders, type UpstreamHeaders } from './request-head.js';

/**
 * An upgrade request (WebSocket and the like) on its way upstream through the same pool as any
 * request (so https and unix upstreams, trusted CAs and timeouts work the same). On `101 Switching
 * Protocols` the two raw connections are joined. Any other answer is relayed and the client
 * connection closed: no byte the client sends after a refused switch reaches the upstream.
 */
export class UpgradeRelay implements Dispatcher.DispatchHandler {
  #controller: Dispatcher.DispatchController | undefined;
  #answered = false;
  #tunnelled = false;

  constructor(
    private readonly client: Duplex,
    private readonly bodyHead: Buffer,
    private readonly failed: UpstreamFailed,
  ) {
    client.once('close', () => {
      if (!this.#tunnelled) this.#controller?.abort(CLIENT_GONE);
    });
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.client.destroyed) controller.abort(CLIENT_GONE);
  }

  onRequestUpgrade(_controller: Dispatcher.DispatchController, statusCode: number, headers: UpstreamHeaders, socket: Duplex): void {
    if (this.client.destroyed) {
      socket.destroy();
      return;
    }
    this.#answered = true;
    this.#tunnelled = true;
    this.client.write(rawResponseHead(statusCode, STATUS_CODES[statusCode] ?? '', switchingProtocolsHeaders(headers)));
    if (this.bodyHead.length > 0) socket.write(this.bodyHead);
    spliceSockets(this.client, socket);
  }

  onResponseStart(_controller: Dispatcher.DispatchController, statusCode: number, headers: UpstreamHeaders, statusMessage?: string): void {
    if (statusCode < 200 || this.client.destroyed) return;
    this.#answered = true;
    const relayed = responseHeaders(headers);
    // The body (de-chunked by undici) ends with the connection.
    relayed.connection = 'close';
    this.client.write(rawResponseHead(statusCode, statusMessage || STATUS_CODES[statusCode] || '', relayed));
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (!this.client.write(chunk) && !controller.paused) {
      controller.pause();
      this.client.once('drain', () => controller.resume());
    }
  }

  onResponseEnd(): void {
    endRawConnection(this.client);
  }

  onResponseError(_controller: Dispatcher.DispatchController | undefined, error: Error): void {
    if (error === CLIENT_GONE || this.client.destroyed) return;
    if (this.#answered) this.client.destroy();
    else this.failed(error);
  }
}

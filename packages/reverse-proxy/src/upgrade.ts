import { STATUS_CODES, type IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { UpstreamError, endRawConnection, httpAnswerFor, spliceSockets, writeRawAnswer, type RepeatedLogLimiter } from '@jwtproxy/core';
import type { Dispatcher } from 'undici';
import { describeUpstreamError } from './answers.js';
import { CLIENT_GONE, type UpstreamDispatchOptions } from './forward.js';
import { rawResponseHead, responseHeaders, switchingProtocolsHeaders, type RequestHead, type UpstreamHeaders } from './headers.js';
import type { Upstream } from './upstream.js';

/**
 * A verified upgrade request (WebSocket and the like) on its way upstream through the same
 * pool (so https and unix upstreams work the same). On `101 Switching Protocols` the two raw
 * connections are joined. Any other answer is relayed and the client connection closed: no
 * byte the client sends after a refused switch reaches the upstream unverified.
 */
class UpgradeForwarding implements Dispatcher.DispatchHandler {
  #controller: Dispatcher.DispatchController | undefined;
  #answered = false;
  #tunnelled = false;

  constructor(
    private readonly upstream: Upstream,
    private readonly log: RepeatedLogLimiter,
    private readonly client: Duplex,
    private readonly head: Buffer,
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
    if (this.head.length > 0) socket.write(this.head);
    spliceSockets(this.client, socket);
  }

  onResponseStart(_controller: Dispatcher.DispatchController, statusCode: number, headers: UpstreamHeaders): void {
    if (statusCode < 200 || this.client.destroyed) return;
    this.#answered = true;
    const relayed = responseHeaders(headers);
    // The body (de-chunked by undici) ends with the connection.
    relayed.connection = 'close';
    this.client.write(rawResponseHead(statusCode, STATUS_CODES[statusCode] ?? '', relayed));
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
    const reason = describeUpstreamError(error);
    this.log.write('warn', reason, 'upstream upgrade failed', { upstream: this.upstream.description, error: reason });
    if (this.#answered) this.client.destroy();
    else writeRawAnswer(this.client, httpAnswerFor(new UpstreamError(reason, { cause: error })));
  }
}

/** Sends a verified upgrade request upstream, forwarding its head with the client's Host. */
export function forwardUpgrade(upstream: Upstream, log: RepeatedLogLimiter, req: IncomingMessage, client: Duplex, bodyHead: Buffer, head: RequestHead): void {
  const options: UpstreamDispatchOptions = {
    path: upstream.targetFor(req.url!),
    method: req.method as Dispatcher.HttpMethod,
    headers: head.headers,
    // undici writes `Connection: upgrade` and `Upgrade: <protocol>` itself.
    upgrade: head.upgrade ?? 'websocket',
    servername: upstream.servername,
  };
  upstream.pool.dispatch(options, new UpgradeForwarding(upstream, log, client, bodyHead));
}

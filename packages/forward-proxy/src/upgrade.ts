import type { IncomingMessage } from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { httpAnswerFor, spliceSockets, writeRawAnswer, type RepeatedLogLimiter, type RequestSigner } from '@jwtproxy/core';
import { upstreamFailure } from './forwarding.js';
import { forwardedRequestHeaders } from './headers.js';
import type { RequestTarget } from './targets.js';
import { upstreamTlsOptions, type UpstreamTlsPolicy } from './upstreams.js';

/** As undici's default connect timeout: an upstream that does not accept in this time gets a 502. */
const CONNECT_TIMEOUT = 10_000;

/** The request head for the upstream: the client's request, signed, with `Connection: Upgrade` restored. */
function upgradeRequestHead(req: IncomingMessage, target: RequestTarget, authorization: string): string {
  // Node's parser refuses CR and LF in names and values, so the head cannot be split.
  const headers = forwardedRequestHeaders(req.rawHeaders, target.host, authorization);
  let head = `${req.method} ${target.path} HTTP/1.1\r\n`;
  for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
  return `${head}connection: Upgrade\r\nupgrade: ${req.headers.upgrade}\r\n\r\n`;
}

function connectTo(origin: string, policy: UpstreamTlsPolicy): Duplex & { setTimeout(ms: number): unknown } {
  const url = new URL(origin);
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  if (url.protocol === 'http:') return net.connect({ host, port: Number(url.port || 80) });
  // SNI carries host names only, never IP addresses (RFC 6066 §3).
  const servername = net.isIP(host) ? undefined : host;
  return tls.connect({ host, port: Number(url.port || 443), servername, ALPNProtocols: ['http/1.1'], ...upstreamTlsOptions(policy) });
}

/**
 * A protocol upgrade (WebSocket, `ws://` through the proxy or `wss://` inside an intercepted
 * tunnel), signed like any request. Once the upstream accepts the connection the signed request
 * head is sent and the two connections are joined: the upstream's answer, `101 Switching
 * Protocols` or a refusal, reaches the client unchanged. The signer trusts its own client, so
 * unlike the verifier it has nothing to withhold after a refused switch.
 * Settles when the tunnel is set up or the client has been answered; never rejects.
 */
export async function forwardUpgrade(
  signer: RequestSigner,
  policy: UpstreamTlsPolicy,
  log: RepeatedLogLimiter,
  req: IncomingMessage,
  client: Duplex,
  bodyHead: Buffer,
  target: RequestTarget,
): Promise<void> {
  let authorization: string;
  try {
    authorization = await signer.authorizationFor(target.audience);
  } catch (error) {
    log.write('warn', error instanceof Error ? error.message : String(error), 'unable to sign request', { audience: target.audience, error });
    return writeRawAnswer(client, httpAnswerFor(error));
  }
  if (client.destroyed) return;
  const upstream = connectTo(target.origin, policy);
  const connectedEvent = target.origin.startsWith('https:') ? 'secureConnect' : 'connect';
  upstream.setTimeout(CONNECT_TIMEOUT);
  await new Promise<void>((settled) => {
    const failed = (error: Error): void => {
      upstream.destroy();
      const failure = upstreamFailure(target.origin, error);
      log.write('warn', failure.message, 'upstream upgrade failed', { upstream: target.origin, error: failure.message });
      writeRawAnswer(client, httpAnswerFor(failure));
      settled();
    };
    const gone = (): void => {
      upstream.destroy();
      settled();
    };
    upstream.once('timeout', () => failed(new Error(`no connection within ${CONNECT_TIMEOUT} ms`)));
    upstream.once('error', failed);
    client.once('close', gone);
    upstream.once(connectedEvent, () => {
      upstream.removeListener('error', failed);
      client.removeListener('close', gone);
      upstream.setTimeout(0);
      upstream.write(upgradeRequestHead(req, target, authorization));
      if (bodyHead.length > 0) upstream.write(bodyHead);
      spliceSockets(client, upstream);
      settled();
    });
  });
}

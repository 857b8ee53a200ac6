import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from '@jwtproxy/core';
import { BadRequestError, KeyRegistryError, registryAnswerFor } from './errors.js';
import { matchesEtag, type JwkSetPublisher } from './jwks.js';
import { checkName } from './names.js';
import type { KeyRegistry, LiveState } from './registry.js';

export interface HttpHandlerOptions {
  registry: KeyRegistry;
  /** Serves the JWK sets (GET /.well-known/jwks.json, /services/{service}/jwks.json). */
  jwkSets: JwkSetPublisher;
  logger: Logger;
  maxBodyBytes: number;
  /** A body that sends nothing for this long is answered 408 (0: no limit). */
  bodyIdleTimeoutMs: number;
  /** SHA-256 of the admin token; undefined disables the admin API. */
  adminTokenDigest: Buffer | undefined;
}

const jsonType = 'application/json';

class NotFoundRoute extends KeyRegistryError {
  constructor() {
    super(404, 'not_found', 'no such resource; the registry serves /services/{service}/keys[/{kid}], /services/{service}/jwks.json, /.well-known/jwks.json and /admin/…');
  }
}

class MethodNotAllowed extends KeyRegistryError {
  readonly allow: string;
  constructor(allow: string[]) {
    super(405, 'method_not_allowed', `method not allowed; use ${allow.join(', ')}`);
    this.allow = allow.join(', ');
  }
}

class BodyTooLarge extends KeyRegistryError {
  constructor(limit: number) {
    super(413, 'body_too_large', `the body is larger than ${limit} bytes`);
  }
}

class BodyTimeout extends KeyRegistryError {
  constructor(idleMs: number) {
    super(408, 'request_timeout', `the body sent nothing for ${idleMs} ms`);
  }
}

/** The client closed the connection before its body arrived: nobody is left to answer. */
class ClientGone extends Error {}

/** How long a connection closed after a refused body still reads (and drops) what the client sends. */
const lingerMs = 2000;

function send(res: ServerResponse, status: number, body: string | undefined, headers: Record<string, string> = {}): void {
  if (res.headersSent) return;
  const payload = body === undefined ? undefined : Buffer.from(body);
  res.writeHead(status, { ...(payload ? { 'content-type': jsonType, 'content-length': String(payload.length) } : {}), ...headers });
  res.end(payload);
}

/**
 * Reads the body up to `limit` bytes: 413 beyond it, 408 when it sends nothing for `idleMs`. The
 * stream is never destroyed here (destroying it would take the socket, and the answer, with
 * it); the caller answers and closes the connection, and whatever the client still sends is
 * dropped unread. `refused` runs at the moment of refusal, synchronously: the parser may reach a
 * request pipelined behind this body before the refusal's answer is written, and must find the
 * connection already closing.
 */
function readBody(req: IncomingMessage, res: ServerResponse, limit: number, idleMs: number, refused: () => void): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) {
    refused();
    return Promise.reject(new BodyTooLarge(limit));
  }
  // Sent only for a body we may accept, so that a client waiting for it never sends an oversize one.
  if (/^100-continue$/i.test(req.headers.expect ?? '')) res.writeContinue();
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const finish = (error?: Error): void => {
      req.off('data', onData).off('end', onEnd).off('error', onGone).off('close', onGone).off('timeout', onIdle);
      req.setTimeout(0);
      // Keep the stream flowing: what the client still sends is dropped.
      req.resume();
      if (error) reject(error);
      else resolve(Buffer.concat(chunks, size));
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > limit) {
        chunks.length = 0;
        refused();
        finish(new BodyTooLarge(limit));
      } else chunks.push(chunk);
    };
    const onEnd = (): void => finish();
    const onGone = (): void => finish(new ClientGone());
    const onIdle = (): void => {
      refused();
      finish(new BodyTimeout(idleMs));
    };
    req.on('data', onData).once('end', onEnd).once('error', onGone).once('close', onGone);
    // A listener on the request keeps Node from destroying the socket when the timer fires.
    if (idleMs > 0) req.setTimeout(idleMs, onIdle);
  });
}

/**
 * Closes a connection whose request was refused before its body was read, without losing the
 * answer. Node ends a `Connection: close` answer with `socket.destroySoon()`, which closes as soon
 * as the answer is written; a client still sending then gets a reset, and its TCP stack may drop
 * the answer it has not read yet. So on this socket that step becomes a lingering close (RFC 9112
 * §9.6): send FIN after the answer, keep reading and dropping for at most `lingerMs` or until the
 * client closes its side, then close.
 */
function lingerOnClose(socket: Socket): void {
  socket.destroySoon = function lingeringClose(this: Socket): void {
    this.end();
    const timer = setTimeout(() => this.destroy(), lingerMs);
    timer.unref();
    this.once('end', () => this.destroy());
    this.once('close', () => clearTimeout(timer));
  };
}

function parseJson(body: Buffer): unknown {
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body));
  } catch {
    throw new BadRequestError('invalid JWK: the body is not valid JSON', 'invalid_jwk');
  }
}

/** Splits the path into decoded segments; bad percent-encoding is a 400. */
function pathSegments(rawPath: string): string[] {
  return rawPath
    .split('/')
    .slice(1)
    .map((segment) => {
      try {
        return decodeURIComponent(segment);
      } catch {
        throw new BadRequestError('the path has invalid percent-encoding', 'invalid_name');
      }
    });
}

function allow(method: string, methods: string[]): void {
  if (!methods.includes(method)) throw new MethodNotAllowed(methods);
}

const liveStates: readonly LiveState[] = ['pending', 'approved', 'expired'];

/** The request handler: routing, body limits, admin authentication, and every error mapped in one place. */
export function createRequestHandler(options: HttpHandlerOptions): (req: IncomingMessage, res: ServerResponse) => void {
  const { registry, jwkSets, logger, maxBodyBytes, bodyIdleTimeoutMs, adminTokenDigest } = options;
  /** Connections answered `Connection: close`: requests pipelined behind the refused one are never run. */
  const closing = new WeakSet<Socket>();
  const closeAfterAnswer = (socket: Socket): void => {
    if (closing.has(socket)) return;
    closing.add(socket);
    lingerOnClose(socket);
  };

  const checkAdmin = (req: IncomingMessage): void => {
    if (!adminTokenDigest) throw new KeyRegistryError(403, 'admin_disabled', 'the admin API is disabled: no admin token is configured');
    const match = /^bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    const given = createHash('sha256').update(match?.[1] ?? '').digest();
    if (!match || !timingSafeEqual(given, adminTokenDigest)) throw new KeyRegistryError(401, 'unauthorized', 'a valid admin token is required (Authorization: Bearer <token>)');
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const target = req.url ?? '';
    if (!target.startsWith('/')) throw new BadRequestError('only origin-form request targets are served');
    const queryAt = target.indexOf('?');
    const rawPath = queryAt === -1 ? target : target.slice(0, queryAt);
    const query = new URLSearchParams(queryAt === -1 ? '' : target.slice(queryAt + 1));
    const segments = pathSegments(rawPath);
    const method = req.method === 'HEAD' ? 'GET' : (req.method ?? '');
    const [first, second, third, fourth, fifth, sixth] = segments;

    if (first === 'services' && third === 'keys' && second !== undefined) {
      if (segments.length === 3) {
        allow(method, ['GET']);
        const keys = await registry.listKeys(second);
        return send(res, 200, JSON.stringify({ keys }));
      }
      if (segments.length === 4 && fourth !== undefined) {
        allow(method, ['GET', 'PUT', 'DELETE']);
        if (method === 'GET') {
          const { jwk, maxAgeSeconds } = await registry.getKey(second, fourth);
          return send(res, 200, JSON.stringify(jwk), { 'cache-control': `max-age=${maxAgeSeconds}` });
        }
        if (method === 'PUT') {
          const body = parseJson(await readBody(req, res, maxBodyBytes, bodyIdleTimeoutMs, () => closeAfterAnswer(req.socket)));
          const result = await registry.publish({
            service: second, kid: fourth, body, authorization: req.headers.authorization,
            expiration: query.get('expiration'), rotation: query.get('rotation'),
          });
          return send(res, result.status, JSON.stringify({ status: result.outcome }));
        }
        await registry.remove({ service: second, kid: fourth, authorization: req.headers.authorization });
        return send(res, 204, undefined);
      }
    }

    const jwkSetOf = segments.length === 2 && first === '.well-known' && second === 'jwks.json' ? (query.get('service') ?? undefined)
      : segments.length === 3 && first === 'services' && third === 'jwks.json' && second !== undefined ? checkName('service', second)
      : null;
    if (jwkSetOf !== null) {
      allow(method, ['GET']);
      const set = await jwkSets.keySet(jwkSetOf);
      const headers = { 'cache-control': `max-age=${set.maxAgeSeconds}`, etag: set.etag };
      if (matchesEtag(req.headers['if-none-match'], set.etag)) return send(res, 304, undefined, headers);
      return send(res, 200, set.body, { ...headers, 'content-type': 'application/jwk-set+json' });
    }

    if (first === 'admin') {
      checkAdmin(req);
      if (second === 'keys' && segments.length === 2) {
        allow(method, ['GET']);
        const state = query.get('state') ?? undefined;
        if (state !== undefined && !liveStates.includes(state as LiveState)) throw new BadRequestError('"state" must be pending, approved or expired');
        const keys = await registry.adminList({ service: query.get('service') ?? undefined, state: state as LiveState | undefined });
        return send(res, 200, JSON.stringify({ keys }));
      }
      if (second === 'services' && fourth === 'keys' && third !== undefined && fifth !== undefined) {
        if (segments.length === 5) {
          allow(method, ['GET', 'DELETE']);
          if (method === 'GET') return send(res, 200, JSON.stringify(await registry.adminGet(third, fifth)));
          await registry.revoke(third, fifth);
          return send(res, 204, undefined);
        }
        if (segments.length === 6 && sixth === 'approve') {
          allow(method, ['POST']);
          return send(res, 200, JSON.stringify(await registry.approve(third, fifth)));
        }
      }
    }

    if (first === 'healthz' && segments.length === 1) {
      allow(method, ['GET']);
      return send(res, 200, JSON.stringify({ status: 'ok' }));
    }
    throw new NotFoundRoute();
  };

  return (req, res) => {
    // Captured now: once the answer is written Node detaches the socket from the request.
    const socket = req.socket;
    if (closing.has(socket)) return;
    handle(req, res).catch((error: unknown) => {
      if (error instanceof ClientGone) return void socket.destroy();
      const answer = registryAnswerFor(error);
      if (answer.status >= 500 && !(error instanceof KeyRegistryError)) {
        logger.error('key registry: request failed', { method: req.method, error: error instanceof Error ? error.message : String(error) });
      } else if (answer.status === 503) {
        logger.error('key registry: storage unavailable', { method: req.method, error: (error as Error).message });
      } else {
        logger.debug('key registry: request refused', { method: req.method, status: answer.status, code: (error as KeyRegistryError).code });
      }
      const headers: Record<string, string> = {};
      if (error instanceof MethodNotAllowed) headers.allow = error.allow;
      if (answer.status === 401) headers['www-authenticate'] = 'Bearer';
      // A body we did not read to the end would be read as the next request on this connection.
      if (!req.complete || closing.has(socket)) {
        headers.connection = 'close';
        closeAfterAnswer(socket);
      }
      send(res, answer.status, answer.body, headers);
    });
  };
}

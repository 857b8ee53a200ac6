// The least a Node.js reverse proxy does: node:http in, undici Pool.stream out, no checks, no
// header work (the client's raw headers go on, the upstream's come back as undici gives them).
// The `passthrough` case of run.mjs measures it beside the verifier: what is left between the two
// is the verifier's own cost per request (the token's parse and RSA verification, the nonce, the
// engine's header and connection rules).
//
// With a public key file, it is the `passthrough-rs256` case: the same, plus the one thing no
// verifier can skip, the RS256 verification of the request's own token (crypto.verify over the
// signing input, as core's jws.ts does; no claims, no nonce, no engine). What a verifier built on
// node:http, undici and OpenSSL can reach at most on this machine.
//   node passthrough.mjs PORT UPSTREAM_ORIGIN [PUBLIC_KEY_PEM]
import { createPublicKey, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { Pool } from 'undici';

const [port, upstream, publicKeyFile] = process.argv.slice(2);
const pool = new Pool(upstream);
const publicKey = publicKeyFile ? createPublicKey(readFileSync(publicKeyFile)) : undefined;

/** Whether `Authorization: Bearer <jwt>` carries a JWS whose RS256 signature `publicKey` verifies. */
function signatureVerifies(authorization) {
  if (typeof authorization !== 'string' || !authorization.startsWith('Bearer ')) return false;
  const lastDot = authorization.lastIndexOf('.');
  if (lastDot < 0) return false;
  const signingInput = Buffer.from(authorization.slice(7, lastDot));
  return verify('sha256', signingInput, publicKey, Buffer.from(authorization.slice(lastDot + 1), 'base64url'));
}

const server = http.createServer((req, res) => {
  if (publicKey && !signatureVerifies(req.headers.authorization)) {
    res.writeHead(403, { 'content-length': '0' }).end();
    return;
  }
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  pool.stream(
    { path: req.url, method: req.method, headers: req.rawHeaders, body: hasBody ? req : null },
    ({ statusCode, headers }) => {
      res.writeHead(statusCode, headers);
      return res;
    },
    (error) => {
      if (!error) return;
      if (res.headersSent) res.destroy();
      else res.writeHead(502, { 'content-length': '0' }).end();
    },
  );
});
server.keepAliveTimeout = 60_000;
server.listen(Number(port), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));

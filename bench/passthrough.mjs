// The least a Node.js reverse proxy does: node:http in, undici Pool.stream out, no checks, no
// header work (the client's raw headers go on, the upstream's come back as undici gives them).
// The `passthrough` case of run.mjs measures it beside the verifier: what is left between the two
// is the verifier's own cost per request (the token's parse and RSA verification, the nonce, the
// engine's header and connection rules).
//   node passthrough.mjs PORT UPSTREAM_ORIGIN
import http from 'node:http';
import { Pool } from 'undici';

const [port, upstream] = process.argv.slice(2);
const pool = new Pool(upstream);

const server = http.createServer((req, res) => {
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

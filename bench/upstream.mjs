// The bare upstream: a minimal keep-alive server in its own process, answering "ok".
//   node upstream.mjs PORT                      plain HTTP on 127.0.0.1
//   node upstream.mjs PORT KEY CERT HOSTS…      HTTPS on each loopback address listed
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';

const [port = '0', keyFile, certFile, ...hosts] = process.argv.slice(2);
const handler = (req, res) => {
  req.resume();
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '2' });
  res.end('ok');
};
const tls = keyFile ? { key: readFileSync(keyFile), cert: readFileSync(certFile) } : undefined;
const addresses = hosts.length ? hosts : ['127.0.0.1'];
let pending = addresses.length;
for (const host of addresses) {
  const server = tls ? https.createServer(tls, handler) : http.createServer(handler);
  server.keepAliveTimeout = 60_000;
  server.listen(Number(port), host, () => {
    if (--pending === 0) process.stdout.write(`listening ${port}\n`);
  });
}
process.on('SIGTERM', () => process.exit(0));

#!/usr/bin/env node
// The web service behind the verifier: says who called it and which key signed the token the
// verifier accepted. Listens on 127.0.0.1:8080 (or $PORT).
import http from 'node:http';

const port = Number(process.env.PORT ?? 8080);

/** The decoded header and claims of the token (already verified by the verifier in front). */
function tokenOf(authorization = '') {
  const [header, claims] = authorization.replace(/^Bearer /, '').split('.');
  const decode = (part) => JSON.parse(Buffer.from(part ?? '', 'base64url').toString() || '{}');
  return { header: decode(header), claims: decode(claims) };
}

http
  .createServer((req, res) => {
    const { header, claims } = tokenOf(req.headers.authorization);
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`Hello from the web service. You are ${claims.iss ?? 'unknown'}, your token was signed with key ${header.kid ?? '-'}\n`);
  })
  .listen(port, '127.0.0.1', () => console.log(`web service listening on http://127.0.0.1:${port}`));

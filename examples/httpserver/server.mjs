// The small web service behind the verifier: tells the caller what it received.
import http from 'node:http';

export function startWebService(port = 8080) {
  const server = http.createServer((req, res) => {
    const auth = req.headers.authorization ?? '(none)';
    const claims = auth.startsWith('Bearer ') ? JSON.parse(Buffer.from(auth.split('.')[1] ?? '', 'base64url').toString() || '{}') : undefined;
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`Hello from the web service. You are ${claims?.iss ?? 'unknown'} (token for ${claims?.aud ?? '-'}, jti ${claims?.jti ?? '-'}).\n`);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

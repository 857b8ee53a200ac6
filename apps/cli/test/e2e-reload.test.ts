/**
 * Issue 15, operating a running jwtproxy: `-check` on good and bad files (without listening),
 * SIGHUP with a changed signing key under load (zero failed requests, the new kid in use after),
 * SIGHUP with a broken file (the old configuration keeps serving), SIGHUP moving a verifier to
 * another port, and a configuration that enables nothing exiting non-zero.
 */
import { generateKeyPairSync, createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { freeLoopbackPort, interop, listenOnLoopback, makeCa, startEchoService } from '@jwtproxy/testkit';
import { claimsOf, e2eConfig, httpRequest, jwtproxyConfig, kidOf, runCli, startCli, tempDir } from './helpers.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function files(): Promise<Awaited<ReturnType<typeof tempDir>>> {
  const dir = await tempDir();
  cleanups.push(() => dir.cleanup());
  return dir;
}

describe('jwtproxy -check', () => {
  it('answers 0 and one line for a valid file, without listening', async () => {
    const dir = await files();
    const port = await freeLoopbackPort();
    const config = await dir.write(
      'ok.yaml',
      jwtproxyConfig({ signer: e2eConfig.signer(), verifiers: [e2eConfig.verifier({ listenAddr: `127.0.0.1:${port}`, upstream: 'http://127.0.0.1:9', audience: 'http://x' })] }),
    );
    const result = await runCli(['-check', '-config', config]);
    expect(result.code).toBe(0);
    expect(result.stdout).toBe(`configuration OK: ${config} (signer_proxy, verifier_proxies[0])\n`);
    // Nothing listened: the port is still free.
    const probe = http.createServer();
    await new Promise<void>((resolve, reject) => probe.once('error', reject).listen(port, '127.0.0.1', () => resolve()));
    await new Promise((resolve) => probe.close(resolve));
  });

  it.each([
    ['an unknown key, even deep down', (f: string[]) => f.map((l) => l.replace('      audience:', '      audiance: x\n      audience:')), 'verifier_proxies[0].verifier.audiance: is not a known key (did you mean audience?)'],
    ['an unreadable public key', (f: string[]) => f.map((l) => l.replace(JSON.stringify(interop.publicKeyPath), '"/nonexistent/key.pub"')), 'verifier_proxies[0].verifier.key_server.options'],
    ['a typo at the top (singer_proxy)', (f: string[]) => f.map((l) => l.replace('  signer_proxy:', '  singer_proxy:')), 'singer_proxy: is not a known key (did you mean signer_proxy?)'],
  ])('answers 1 with the key path and file:line for %s', async (_name, change, message) => {
    const dir = await files();
    const lines = jwtproxyConfig({ signer: e2eConfig.signer(), verifiers: [e2eConfig.verifier({ upstream: 'http://127.0.0.1:9', audience: 'http://x' })] }).split('\n');
    const config = await dir.write('bad.yaml', change(lines).join('\n'));
    const result = await runCli(['-check', '-config', config]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(message);
    expect(result.stderr).toMatch(new RegExp(`${config.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:\\d+`));
  });

  it('answers 1 when the CA key is not the CA certificate\'s', async () => {
    const dir = await files();
    const ca = makeCa('check CA');
    const other = makeCa('another CA');
    const caCert = await dir.write('ca.crt', ca.cert);
    const wrongKey = await dir.write('other.key', other.key);
    const config = await dir.write('ca.yaml', jwtproxyConfig({ signer: e2eConfig.signer({ extra: [`ca_key_file: ${JSON.stringify(wrongKey)}`, `ca_crt_file: ${JSON.stringify(caCert)}`] }) }));
    const result = await runCli(['-check', '-config', config]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`signer_proxy.ca_key_file: ${wrongKey} is not the key of the CA certificate ${caCert}`);
  });
});

describe('a configuration that enables nothing', () => {
  it('exits 1 with an error line (systemd Restart=on-failure notices)', async () => {
    const dir = await files();
    const config = await dir.write('none.yaml', 'jwtproxy:\n  verifier_proxies:\n  - enabled: false\n');
    const result = await runCli(['-config', config]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/level=error msg="No proxy is enabled"/);
  });
});

describe('SIGHUP', () => {
  it('swaps the signing key under load with zero failed requests; the verifier then sees the new kid', async () => {
    const dir = await files();
    // Two signing keys; the verifier (another jwtproxy) knows both through a JWK set served here.
    const newKey = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const newKeyFile = await dir.write('new.key', newKey.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
    const jwk = (pem: string | Buffer, kid: string) => ({ ...createPublicKey(pem).export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' });
    const set = { keys: [jwk(readFileSync(interop.publicKeyPath), interop.keyId), jwk(newKey.publicKey.export({ type: 'spki', format: 'pem' }) as string, 'newkey')] };
    const jwks = await listenOnLoopback(
      http.createServer((_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'max-age=600' });
        res.end(JSON.stringify(set));
      }),
    );
    cleanups.push(() => jwks.close());
    const service = await startEchoService();
    cleanups.push(() => service.close());
    const verifierPort = await freeLoopbackPort();
    const verifierUrl = `http://127.0.0.1:${verifierPort}`;
    const verifierConfig = await dir.write(
      'verifier.yaml',
      [
        'jwtproxy:',
        '  verifier_proxies:',
        `  - listen_addr: 127.0.0.1:${verifierPort}`,
        '    verifier:',
        `      upstream: ${service.url}`,
        `      audience: ${verifierUrl}`,
        '      key_server:',
        '        type: jwks',
        `        options: {url: "${jwks.url}/jwks.json", issuer: ${interop.issuer}}`,
        '',
      ].join('\n'),
    );
    const verifier = await startCli(['-config', verifierConfig]);
    cleanups.push(() => verifier.stop());

    const signerBlock = (keyId: string, keyFile: string) =>
      jwtproxyConfig({ signer: e2eConfig.signer().map((line) => line.replace(`key_id: ${interop.keyId}`, `key_id: ${keyId}`).replace(JSON.stringify(interop.privateKeyPath), JSON.stringify(keyFile))) });
    const signerConfig = await dir.write('signer.yaml', signerBlock(interop.keyId, interop.privateKeyPath));
    const signer = await startCli(['-config', signerConfig]);
    cleanups.push(() => signer.stop());
    const proxy = signer.servers.signer_proxy!;

    const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
    cleanups.push(async () => agent.destroy());
    const outcomes: Record<string, number> = {};
    let running = true;
    const client = async (): Promise<void> => {
      while (running) {
        try {
          const answer = await httpRequest(`${verifierUrl}/load`, { proxy, agent });
          const kid = answer.status === 200 ? kidOf((JSON.parse(answer.body) as { headers: { authorization?: string } }).headers.authorization) : undefined;
          const outcome = answer.status === 200 ? `200 ${kid}` : `${answer.status} ${answer.body}`;
          outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
        } catch (error) {
          const outcome = `error ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`;
          outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
        }
      }
    };
    const clients = Array.from({ length: 8 }, client);
    await new Promise((resolve) => setTimeout(resolve, 800));
    await dir.write('signer.yaml', signerBlock('newkey', newKeyFile));
    signer.child.kill('SIGHUP');
    await signer.waitForLog(/msg="reloaded"/);
    await new Promise((resolve) => setTimeout(resolve, 800));
    running = false;
    await Promise.all(clients);
    console.log('SIGHUP under load:', JSON.stringify(outcomes));
    expect(Object.keys(outcomes).filter((outcome) => !outcome.startsWith('200 '))).toEqual([]);
    expect(outcomes[`200 ${interop.keyId}`]).toBeGreaterThan(10);
    expect(outcomes['200 newkey']).toBeGreaterThan(10);
    const after = await httpRequest(`${verifierUrl}/after`, { proxy });
    expect(claimsOf((JSON.parse(after.body) as { headers: { authorization?: string } }).headers.authorization).iss).toBe(interop.issuer);
    expect(kidOf((JSON.parse(after.body) as { headers: { authorization?: string } }).headers.authorization)).toBe('newkey');
  });

  it('with a broken file keeps serving with the old configuration and logs why', async () => {
    const dir = await files();
    const service = await startEchoService();
    cleanups.push(() => service.close());
    const port = await freeLoopbackPort();
    const url = `http://127.0.0.1:${port}`;
    const config = await dir.write('v.yaml', jwtproxyConfig({ signer: e2eConfig.signer(), verifiers: [e2eConfig.verifier({ listenAddr: `127.0.0.1:${port}`, upstream: service.url, audience: url })] }));
    const cli = await startCli(['-config', config]);
    cleanups.push(() => cli.stop());
    expect((await httpRequest(`${url}/before`, { proxy: cli.servers.signer_proxy! })).status).toBe(200);
    await dir.write('v.yaml', 'jwtproxy:\n  verifier_proxies:\n  - listen_addr: [oops\n');
    cli.child.kill('SIGHUP');
    const line = await cli.waitForLog(/msg="reload failed: the running configuration is kept"/);
    expect(line).toContain('invalid YAML');
    expect((await httpRequest(`${url}/after`, { proxy: cli.servers.signer_proxy! })).status).toBe(200);
    expect(cli.child.exitCode).toBeNull();
  });

  it('moves a verifier to a new port: the new one serves, the old one stops', async () => {
    const dir = await files();
    const service = await startEchoService();
    cleanups.push(() => service.close());
    const [oldPort, newPort] = [await freeLoopbackPort(), await freeLoopbackPort()];
    const entry = (port: number) => e2eConfig.verifier({ listenAddr: `127.0.0.1:${port}`, upstream: service.url, audience: 'http://verifier.test' });
    const config = await dir.write('m.yaml', jwtproxyConfig({ signer: e2eConfig.signer(), verifiers: [entry(oldPort)] }));
    const cli = await startCli(['-config', config]);
    cleanups.push(() => cli.stop());
    const signer = cli.servers.signer_proxy!;
    expect((await httpRequest(`http://127.0.0.1:${oldPort}/x`)).status).toBe(403);
    await dir.write('m.yaml', jwtproxyConfig({ signer: e2eConfig.signer(), verifiers: [entry(newPort)] }));
    cli.child.kill('SIGHUP');
    await cli.waitForLog(/msg="reloaded"/);
    // A verifier listens on the new port (403 without a token), the signer was updated in place.
    expect((await httpRequest(`http://127.0.0.1:${newPort}/x`)).status).toBe(403);
    expect((await httpRequest(`http://127.0.0.1:${newPort}/x`, { proxy: signer }).catch((error: Error) => error))).not.toBeInstanceOf(Error);
    await new Promise((resolve) => setTimeout(resolve, 300));
    await expect(httpRequest(`http://127.0.0.1:${oldPort}/x`)).rejects.toThrow(/ECONNREFUSED/);
  });
});

/**
 * Issue 20, plugins: each seam answers what a plugin throws with that seam's documented answer,
 * as the Go tool does, and logs it as a refusal (debug) or a dependency failure (warn), never as
 * an error of ours (500). Uses the example plugins of examples/plugins/, loaded with --plugin by
 * the real jwtproxy command.
 */
import { copyFile, mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freeLoopbackPort, interop, repoRoot, startEchoService, type RunningServer, type SeenRequest } from '@jwtproxy/testkit';
import { RequestSigner } from '@jwtproxy/core';
import { PresharedPrivateKeySource } from '@jwtproxy/key-sources';
import { claimsOf, httpRequest, startCli, tempDir, type RunningCli } from './helpers.js';

const plugins = path.join(repoRoot, 'examples/plugins');

let files: Awaited<ReturnType<typeof tempDir>>;
let service: RunningServer & { seen: SeenRequest[] };
let cli: RunningCli;
/** Verifiers by what they exercise; each one's audience is its own http://127.0.0.1:<port>. */
const verifiers = { claims: '', brokenKeyServer: '', nonces: '' };
let signer: string;
let signingKeyFile: string;

/** A token signed with the interop key for `audience`, by `issuer`. */
async function token(audience: string, issuer: string): Promise<string> {
  const requestSigner = new RequestSigner({
    issuer,
    expirationTime: 60_000,
    maxSkew: 10_000,
    nonceLength: 32,
    keySource: PresharedPrivateKeySource.fromFile(interop.keyId, interop.privateKeyPath),
  });
  return `Bearer ${await requestSigner.sign(audience)}`;
}

/** Log lines (parsed) whose reason or error mentions `text`. */
const linesAbout = (text: string) => cli.logLines().filter((line) => Object.values(line).some((value) => value.includes(text)));

beforeAll(async () => {
  files = await tempDir();
  service = await startEchoService();
  // The key directory of the pem-directory key server: the interop public key for two issuers.
  for (const issuer of ['jwtproxy', 'billing']) {
    await mkdir(path.join(files.dir, 'keys', issuer), { recursive: true });
    await copyFile(interop.publicKeyPath, path.join(files.dir, 'keys', issuer, `${interop.keyId}.pem`));
  }
  signingKeyFile = path.join(files.dir, 'signing.key');
  await copyFile(interop.privateKeyPath, signingKeyFile);
  const notADirectory = await files.write('not-a-directory', 'a file where the key server expects a directory');
  const ports = { claims: await freeLoopbackPort(), brokenKeyServer: await freeLoopbackPort(), nonces: await freeLoopbackPort() };
  const verifier = (port: number, keyDir: string, extra: string[]) => [
    `  - listen_addr: 127.0.0.1:${port}`,
    '    verifier:',
    `      upstream: ${service.url}`,
    `      audience: http://127.0.0.1:${port}`,
    `      key_server: {type: pem-directory, options: {dir: ${JSON.stringify(keyDir)}}}`,
    ...extra,
  ];
  const config = await files.write(
    'plugins.yaml',
    [
      'jwtproxy:',
      '  signer_proxy:',
      '    listen_addr: 127.0.0.1:0',
      '    signer:',
      `      issuer: ${interop.issuer}`,
      `      private_key: {type: reloading-pem, options: {key_id: ${interop.keyId}, path: signing.key, reload_interval: 200ms}}`,
      '  verifier_proxies:',
      ...verifier(ports.claims, 'keys', ['      claims_verifiers:', '      - {type: allowed-issuers, options: {issuers: [jwtproxy]}}']),
      ...verifier(ports.brokenKeyServer, notADirectory, []),
      ...verifier(ports.nonces, 'keys', ['      nonce_storage: {type: bounded-memory, options: {max: 2}}']),
      '',
    ].join('\n'),
  );
  const pluginArgs = ['allowed-issuers-claims-verifier.mjs', 'pem-directory-key-server.mjs', 'bounded-memory-nonce-store.mjs', 'reloading-pem-key-source.mjs'].flatMap(
    (file) => ['--plugin', path.join(plugins, file)],
  );
  cli = await startCli(['-config', config, '-log-level', 'debug', ...pluginArgs]);
  signer = cli.servers.signer_proxy!;
  verifiers.claims = `http://127.0.0.1:${ports.claims}`;
  verifiers.brokenKeyServer = `http://127.0.0.1:${ports.brokenKeyServer}`;
  verifiers.nonces = `http://127.0.0.1:${ports.nonces}`;
});

afterAll(async () => {
  const stopped = await cli?.stop();
  await service?.close();
  await files?.cleanup();
  expect(stopped?.code).toBe(0);
  // Not one request was a bug of ours.
  expect(stopped?.stderr).not.toMatch(/level=error/);
});

describe('errors from plugins, through the jwtproxy command', () => {
  it('a claims verifier that throws new Error("issuer not allowed: billing"): 403 with the Go body, logged at debug', async () => {
    const answer = await httpRequest(`${verifiers.claims}/claims`, { headers: { authorization: await token(verifiers.claims, 'billing') } });
    expect(answer.status).toBe(403);
    expect(answer.body).toBe('Error verifying claims: issuer not allowed: billing');
    const logged = await cli.waitForLog(/Error verifying claims: issuer not allowed: billing/);
    expect(logged).toMatch(/level=debug msg="request refused"/);
    // An allowed issuer passes through the same verifier.
    expect((await httpRequest(`${verifiers.claims}/claims`, { headers: { authorization: await token(verifiers.claims, 'jwtproxy') } })).status).toBe(200);
  });

  it("a key server's unknown key: 403 Could not find any matching public key; its failure: 403 Unexpected key server error", async () => {
    const unknown = await httpRequest(`${verifiers.claims}/keys`, { headers: { authorization: await token(verifiers.claims, 'payroll') } });
    expect(unknown).toMatchObject({ status: 403, body: 'jwtproxy: unable to verify request: Could not find any matching public key' });
    const broken = await httpRequest(`${verifiers.brokenKeyServer}/keys`, { headers: { authorization: await token(verifiers.brokenKeyServer, 'jwtproxy') } });
    expect(broken).toMatchObject({ status: 403, body: 'jwtproxy: unable to verify request: Unexpected key server error' });
    await cli.waitForLog(/Unexpected key server error/);
    expect(linesAbout('Unexpected key server error').map((line) => line.level)).not.toContain('error');
  });

  it("a nonce store's failure: 503 Nonce storage unavailable (fail closed), logged as a warning", async () => {
    for (let i = 0; i < 2; i++) {
      expect((await httpRequest(`${verifiers.nonces}/n${i}`, { headers: { authorization: await token(verifiers.nonces, 'jwtproxy') } })).status).toBe(200);
    }
    // The store is full of unexpired nonces and throws: no token passes.
    const full = await httpRequest(`${verifiers.nonces}/full`, { headers: { authorization: await token(verifiers.nonces, 'jwtproxy') } });
    expect(full).toMatchObject({ status: 503, body: 'jwtproxy: unable to verify request: Nonce storage unavailable' });
    const logged = await cli.waitForLog(/Nonce storage unavailable/);
    expect(logged).toMatch(/level=warn /);
  });

  it("a private key source's failure: 502 unable to sign request: <its message>, logged as a warning", async () => {
    const before = await httpRequest(`${verifiers.claims}/signed`, { proxy: signer });
    expect(before.status).toBe(200);
    expect(claimsOf((JSON.parse(before.body) as SeenRequest).headers.authorization)).toMatchObject({ iss: interop.issuer, aud: verifiers.claims });
    await rm(signingKeyFile);
    // The key source reads its file every 0.2 s: wait until it has noticed (bounded).
    let answer = before;
    for (let i = 0; i < 50 && answer.status === 200; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      answer = await httpRequest(`${verifiers.claims}/signed`, { proxy: signer });
    }
    expect(answer.status).toBe(502);
    expect(answer.body).toBe(`jwtproxy: unable to sign request: cannot read the signing key ${signingKeyFile}: ENOENT`);
    const logged = await cli.waitForLog(/msg="unable to sign request"/);
    expect(logged).toMatch(/level=warn /);
  });
});

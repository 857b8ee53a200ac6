/**
 * Issue 15, docs/operations.md: the deployment examples in examples/deploy/ work as written, as far
 * as this machine allows (no cluster, no systemd as PID 1). The Kubernetes manifest is parsed: its
 * probes name the admin port and paths of the configuration it embeds, the grace period covers
 * preStop and shutdown_timeout, the Service targets the verifier's port, and the key file lies in the
 * mounted ConfigMap. That configuration (listeners moved to loopback, the key path to a test key) is
 * checked with `jwtproxy -check` and then run: the probe paths the manifest names answer 200, a
 * signed request passes and an unsigned one is refused. The systemd unit's ExecStartPre check and
 * ExecReload signal are run against the same process.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { RequestSigner } from '@jwtproxy/core';
import { PresharedPrivateKeySource } from '@jwtproxy/key-sources';
import { freeLoopbackPort, interop, repoRoot, startEchoService } from '@jwtproxy/testkit';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { httpRequest, runCli, startCli, tempDir, type RunningCli } from './helpers.js';

const deployDir = path.join(repoRoot, 'examples/deploy');

interface Probe {
  httpGet: { path: string; port: string | number };
}
interface Container {
  name: string;
  args?: string[];
  env?: Array<{ name: string; value: string }>;
  ports?: Array<{ name?: string; containerPort: number }>;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  lifecycle?: { preStop?: { exec?: { command: string[] } } };
  resources?: { limits?: { memory?: string } };
  volumeMounts?: Array<{ name: string; mountPath: string }>;
}
interface Manifest {
  kind: string;
  metadata: { name: string };
  data?: Record<string, string>;
  spec?: {
    template?: { spec: { terminationGracePeriodSeconds: number; containers: Container[]; volumes: Array<{ name: string; configMap?: { name: string } }> } };
    ports?: Array<{ port: number; targetPort: string | number }>;
  };
}
interface ProxyConfig {
  jwtproxy: {
    admin: { listen_addr: string };
    verifier_proxies: Array<{
      listen_addr: string;
      shutdown_timeout: string;
      verifier: { upstream: string; audience: string; key_server: { options: { issuer: string; key_id: string; public_key_path: string } } };
    }>;
  };
}

async function readManifest(): Promise<{ configMap: Manifest; deployment: Manifest; service: Manifest; config: ProxyConfig }> {
  const documents = parseAllDocuments(await readFile(path.join(deployDir, 'kubernetes-sidecar.yaml'), 'utf8'));
  for (const document of documents) expect(document.errors).toEqual([]);
  const manifests = documents.map((document) => document.toJS() as Manifest);
  const byKind = (kind: string): Manifest => {
    const found = manifests.find((m) => m.kind === kind);
    if (!found) throw new Error(`no ${kind} in the manifest`);
    return found;
  };
  const configMap = byKind('ConfigMap');
  return { configMap, deployment: byKind('Deployment'), service: byKind('Service'), config: parse(configMap.data!['config.yaml']!) as ProxyConfig };
}

/** `:9090` or `host:9090` → 9090. */
const portOf = (listenAddr: string): number => Number(/:(\d+)$/.exec(listenAddr)?.[1]);
/** `10s`, `1m` → seconds (the forms the manifest uses). */
const secondsOf = (duration: string): number => {
  const match = /^(\d+)(s|m)$/.exec(duration);
  if (!match) throw new Error(`unexpected duration ${duration}`);
  return Number(match[1]) * (match[2] === 'm' ? 60 : 1);
};

/** A systemd unit's `Key=value` lines (a key may repeat). */
function unitEntries(text: string): Array<[string, string]> {
  return text
    .split('\n')
    .filter((line) => /^[A-Za-z]+=/.test(line))
    .map((line) => {
      const at = line.indexOf('=');
      return [line.slice(0, at), line.slice(at + 1)];
    });
}

let files: Awaited<ReturnType<typeof tempDir>>;
let echo: Awaited<ReturnType<typeof startEchoService>>;
let running: RunningCli | undefined;

beforeEach(async () => {
  files = await tempDir();
  echo = await startEchoService();
  running = undefined;
});
afterEach(async () => {
  const stopped = await running?.stop();
  await echo.close();
  await files.cleanup();
  if (stopped) expect(stopped.code, stopped.stderr).toBe(0);
});

describe('examples/deploy/kubernetes-sidecar.yaml', () => {
  it('its probes, ports, grace period and key mount agree with the embedded configuration', async () => {
    const { configMap, deployment, service, config } = await readManifest();
    const pod = deployment.spec!.template!.spec;
    const sidecar = pod.containers.find((c) => c.name === 'jwtproxy')!;
    expect(pod.containers.map((c) => c.name)).toEqual(['app', 'jwtproxy']);
    const portNamed = (port: string | number): number => (typeof port === 'number' ? port : sidecar.ports!.find((p) => p.name === port)!.containerPort);

    const adminPort = portOf(config.jwtproxy.admin.listen_addr);
    expect(sidecar.readinessProbe!.httpGet.path).toBe('/readyz');
    expect(portNamed(sidecar.readinessProbe!.httpGet.port)).toBe(adminPort);
    expect(sidecar.livenessProbe!.httpGet.path).toBe('/healthz');
    expect(portNamed(sidecar.livenessProbe!.httpGet.port)).toBe(adminPort);

    const verifier = config.jwtproxy.verifier_proxies[0]!;
    expect(portNamed(service.spec!.ports![0]!.targetPort)).toBe(portOf(verifier.listen_addr));
    // The app sits behind the verifier on the Pod's loopback.
    expect(verifier.verifier.upstream).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);

    // SIGKILL must not cut a graceful stop: preStop sleep + shutdown_timeout within the grace period.
    const preStop = sidecar.lifecycle!.preStop!.exec!.command;
    expect(preStop[0]).toBe('sleep');
    expect(Number(preStop[1]) + secondsOf(verifier.shutdown_timeout)).toBeLessThan(pod.terminationGracePeriodSeconds);
    // Above the 149 MiB peak measured under load (docs/operations.md), so the sidecar is not OOM-killed.
    expect(Number(/^(\d+)Mi$/.exec(sidecar.resources!.limits!.memory!)?.[1])).toBeGreaterThanOrEqual(160);

    // The key file and the configuration come from the ConfigMap mounted where the args point.
    const mount = sidecar.volumeMounts![0]!;
    expect(pod.volumes.find((v) => v.name === mount.name)!.configMap!.name).toBe(configMap.metadata.name);
    expect(sidecar.args).toEqual(['-config', `${mount.mountPath}/config.yaml`]);
    const keyPath = verifier.verifier.key_server.options.public_key_path;
    expect(path.dirname(keyPath)).toBe(mount.mountPath);
    expect(Object.keys(configMap.data!)).toContain(path.basename(keyPath));
  });

  it('its configuration passes jwtproxy -check, runs, and answers the probe paths the manifest names with 200', async () => {
    const { deployment, config } = await readManifest();
    const sidecar = deployment.spec!.template!.spec.containers.find((c) => c.name === 'jwtproxy')!;
    const verifier = config.jwtproxy.verifier_proxies[0]!;
    const { issuer, key_id: keyId } = verifier.verifier.key_server.options;
    // This machine: listeners on loopback, the app is the echo service, the key is a test key.
    const [adminPort, verifierPort] = [await freeLoopbackPort(), await freeLoopbackPort()];
    config.jwtproxy.admin.listen_addr = `127.0.0.1:${adminPort}`;
    verifier.listen_addr = `127.0.0.1:${verifierPort}`;
    verifier.verifier.upstream = `${echo.url}/`;
    verifier.verifier.key_server.options.public_key_path = interop.publicKeyPath;
    const configFile = await files.write('config.yaml', JSON.stringify(config));

    const check = await runCli(['-check', '-config', configFile]);
    expect(check.code, check.stderr).toBe(0);
    expect(check.stdout + check.stderr).toContain('configuration OK');

    const nodeOptions = sidecar.env!.find((e) => e.name === 'NODE_OPTIONS')!.value;
    running = await startCli(['-config', configFile], { env: { NODE_OPTIONS: nodeOptions } });
    const admin = `http://127.0.0.1:${adminPort}`;
    const healthz = await httpRequest(`${admin}${sidecar.livenessProbe!.httpGet.path}`);
    expect(healthz.status).toBe(200);
    const readyz = await httpRequest(`${admin}${sidecar.readinessProbe!.httpGet.path}`);
    expect(readyz.status, readyz.body).toBe(200);
    expect((JSON.parse(readyz.body) as { status: string }).status).toBe('ready');

    // The verifier in front of the app: a token of the configured signer passes, none is refused.
    const signer = new RequestSigner({
      issuer,
      expirationTime: 60_000,
      maxSkew: 10_000,
      nonceLength: 32,
      keySource: PresharedPrivateKeySource.fromFile(keyId, interop.privateKeyPath),
    });
    const token = await signer.sign(verifier.verifier.audience);
    const passed = await httpRequest(`http://127.0.0.1:${verifierPort}/orders`, { headers: { authorization: `Bearer ${token}` } });
    expect(passed.status).toBe(200);
    expect((await httpRequest(`http://127.0.0.1:${verifierPort}/orders`)).status).toBe(403);
    // log.format json from the ConfigMap: one JSON access line per request, never the token.
    await running.waitForLog(/"status":403.*"msg":"access"/);
    const access = running.stderr().split('\n').filter((line) => line.includes('"msg":"access"')).map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(access.map((line) => [line.verdict, line.iss, line.kid])).toEqual([
      ['passed', issuer, keyId],
      ['refused', undefined, undefined],
    ]);
    expect(running.stderr()).not.toContain(token);
  });
});

describe('examples/deploy/jwtproxy.service', () => {
  it('restarts on failure, checks the file before starting, and its ExecStartPre and ExecReload work on the real command', async () => {
    const entries = unitEntries(await readFile(path.join(deployDir, 'jwtproxy.service'), 'utf8'));
    const values = (key: string): string[] => entries.filter(([k]) => k === key).map(([, v]) => v);
    expect(values('Restart')).toEqual(['on-failure']);
    for (const key of ['NoNewPrivileges', 'ProtectSystem', 'DynamicUser', 'MemoryMax']) expect(values(key), key).toHaveLength(1);
    const [execStart] = values('ExecStart');
    const [binary, ...startArgs] = execStart!.split(' ');
    expect(startArgs).toEqual(['-config', '/etc/jwtproxy/config.yaml']);
    expect(values('ExecStartPre')).toEqual([`${binary} -check -config /etc/jwtproxy/config.yaml`]);
    expect(values('ExecReload')).toEqual([`${binary} -check -config /etc/jwtproxy/config.yaml`, '/bin/kill -HUP $MAINPID']);

    // ExecStartPre with /etc/jwtproxy/config.yaml as a test file: 0 for a good file, 1 for a typo.
    const adminPort = await freeLoopbackPort();
    const good = [
      'jwtproxy:',
      '  admin:',
      `    listen_addr: 127.0.0.1:${adminPort}`,
      '  verifier_proxies:',
      '  - listen_addr: 127.0.0.1:0',
      '    verifier:',
      `      upstream: ${echo.url}/`,
      '      audience: http://orders.internal',
      '      key_server:',
      '        type: preshared',
      `        options: {issuer: ${interop.issuer}, key_id: ${interop.keyId}, public_key_path: ${JSON.stringify(interop.publicKeyPath)}}`,
      '',
    ].join('\n');
    const configFile = await files.write('config.yaml', good);
    const asHere = (command: string): string[] => command.replace('/etc/jwtproxy/config.yaml', configFile).split(' ').slice(1);
    expect((await runCli(asHere(values('ExecStartPre')[0]!))).code).toBe(0);
    await files.write('config.yaml', good.replace('verifier_proxies:', 'verifier_proxy:'));
    const typo = await runCli(asHere(values('ExecStartPre')[0]!));
    expect(typo.code).toBe(1);
    expect(typo.stderr).toContain('verifier_proxy');

    // ExecReload on a running process: the check, then SIGHUP (as $MAINPID gets it) reloads.
    await files.write('config.yaml', good);
    running = await startCli(asHere(execStart!));
    await files.write('config.yaml', good.replace('http://orders.internal', 'http://orders.example'));
    expect((await runCli(asHere(values('ExecReload')[0]!))).code).toBe(0);
    running.child.kill('SIGHUP');
    await running.waitForLog(/msg="reloaded"/);
    expect((await httpRequest(`http://127.0.0.1:${adminPort}/readyz`)).status).toBe(200);
  });
});

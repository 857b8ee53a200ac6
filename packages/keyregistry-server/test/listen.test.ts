import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { lstat, mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryKeyStore, startKeyRegistryServer } from '../src/index.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function getOverSocket(socketPath: string, requestPath: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const request = http.get({ socketPath, path: requestPath, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    request.on('error', reject);
  });
}

describe('the registry listener', () => {
  it('listens on a unix socket, replacing a stale socket file, and removes it at stop', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'registry-unix-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const socketPath = path.join(dir, 'registry.sock');
    // A socket file left behind by a registry that was killed.
    const owner = spawn(process.execPath, ['-e', `require('node:net').createServer().listen(${JSON.stringify(socketPath)}, () => console.log('up'))`]);
    await once(owner.stdout, 'data');
    owner.kill('SIGKILL');
    await once(owner, 'exit');

    const registry = await startKeyRegistryServer({ listenAddr: `unix:${socketPath}`, publicUrl: 'http://registry.test', store: new MemoryKeyStore() });
    cleanups.push(() => registry.stop());
    expect(registry.address).toBe(`unix:${socketPath}`);
    const answer = await getOverSocket(socketPath, '/services/billing/keys');
    expect(answer.status).toBe(200);
    expect(JSON.parse(answer.body)).toEqual({ keys: [] });
    await registry.stop();
    await expect(lstat(socketPath)).rejects.toThrow(/ENOENT/);
  });

  it('names the address in use', async () => {
    const taken = http.createServer().listen(0, '127.0.0.1');
    await once(taken, 'listening');
    cleanups.push(() => new Promise((resolve) => taken.close(resolve)));
    const { port } = taken.address() as AddressInfo;
    await expect(startKeyRegistryServer({ listenAddr: `127.0.0.1:${port}`, store: new MemoryKeyStore() })).rejects.toThrow(
      `key registry: cannot listen on 127.0.0.1:${port}: address already in use`,
    );
  });
});

/**
 * The protocol conformance suite against KEYREGISTRY_URL (with KEYREGISTRY_ADMIN_TOKEN for
 * approvals, KEYREGISTRY_AUDIENCE when publishers must sign another aud), or, without it,
 * against this server on the file store.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { KeyRegistryAdminClient, startKeyRegistryServer, type RunningKeyRegistry } from '../src/index.js';
import { keyRegistryConformanceSuite, type ConformanceTarget } from './conformance-suite.js';

const externalUrl = process.env.KEYREGISTRY_URL;
const adminToken = process.env.KEYREGISTRY_ADMIN_TOKEN ?? 'conformance-admin-token-0123456789';
let running: RunningKeyRegistry | undefined;
let directory: string | undefined;
let target: ConformanceTarget;

beforeAll(async () => {
  let baseUrl = externalUrl;
  if (!baseUrl) {
    directory = await mkdtemp(path.join(os.tmpdir(), 'keyregistry-conformance-'));
    running = await startKeyRegistryServer({
      listenAddr: '127.0.0.1:0',
      storage: { type: 'file', path: path.join(directory, 'keys.json') },
      adminToken,
    });
    baseUrl = running.address;
  }
  const admin = new KeyRegistryAdminClient({ url: baseUrl, token: adminToken });
  target = {
    baseUrl,
    ...(process.env.KEYREGISTRY_AUDIENCE ? { audience: process.env.KEYREGISTRY_AUDIENCE } : {}),
    approve: async (service, kid) => void (await admin.approve(service, kid)),
  };
});

afterAll(async () => {
  await running?.stop();
  if (directory) await rm(directory, { recursive: true, force: true });
});

keyRegistryConformanceSuite(() => target);

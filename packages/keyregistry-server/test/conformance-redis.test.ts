/** The protocol conformance suite against this server on the Redis store (127.0.0.1:6379, or REDIS_URL). */
import { afterAll, beforeAll } from 'vitest';
import { KeyRegistryAdminClient, startKeyRegistryServer, type RunningKeyRegistry } from '../src/index.js';
import { keyRegistryConformanceSuite, type ConformanceTarget } from './conformance-suite.js';
import { deletePrefix, redisUrl, testPrefix } from './redis-support.js';

const adminToken = 'conformance-admin-token-0123456789';
const keyPrefix = testPrefix();
let running: RunningKeyRegistry;
let target: ConformanceTarget;

beforeAll(async () => {
  running = await startKeyRegistryServer({ listenAddr: '127.0.0.1:0', storage: { type: 'redis', url: redisUrl, keyPrefix }, adminToken });
  const admin = new KeyRegistryAdminClient({ url: running.address, token: adminToken });
  target = { baseUrl: running.address, approve: async (service, kid) => void (await admin.approve(service, kid)) };
});

afterAll(async () => {
  await running?.stop();
  await deletePrefix(keyPrefix);
});

keyRegistryConformanceSuite(() => target);

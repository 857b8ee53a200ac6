import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const here = path.dirname(fileURLToPath(import.meta.url));

it('the README demo shows a signed request passing and an unsigned one refused', () => {
  const run = spawnSync(process.execPath, [path.join(here, '../demo.mjs'), '--once'], { encoding: 'utf8', timeout: 30_000 });
  expect(run.stdout).toMatch(/signed request .*: 200\n  Hello from the web service\. You are jwtproxy \(token for http:\/\/localhost:8081/);
  expect(run.stdout).toContain("unsigned request (curl http://localhost:8081/): 403\n  jwtproxy: unable to verify request: Could not parse JWT");
  expect(run.status).toBe(0);
});

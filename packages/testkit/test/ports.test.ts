import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { freeLoopbackPort } from '../src/ports.js';

const portsModule = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../dist/ports.js');

/** A separate test process that takes `count` ports at once, prints them, and holds them until its stdin ends. */
async function portsOfAnotherProcess(count: number) {
  const child = spawn(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `import { freeLoopbackPort } from ${JSON.stringify(portsModule)};
       const ports = await Promise.all(Array.from({ length: ${count} }, () => freeLoopbackPort()));
       console.log(JSON.stringify(ports));
       process.stdin.resume();`,
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const [line] = (await once(child.stdout, 'data')) as [Buffer];
  return {
    ports: JSON.parse(line.toString()) as number[],
    async release() {
      child.stdin.end();
      await once(child, 'exit');
    },
  };
}

describe('freeLoopbackPort', () => {
  it('never gives one port twice, within a process or across processes, and each is free to listen on', async () => {
    const others = await Promise.all([1, 2, 3, 4].map(() => portsOfAnotherProcess(50)));
    const mine = await Promise.all(Array.from({ length: 50 }, () => freeLoopbackPort()));
    const all = [...mine, ...others.flatMap((o) => o.ports)];
    expect(new Set(all).size).toBe(250);
    // Below the OS's ephemeral range, so no port 0 listener or outgoing connection takes it meanwhile.
    for (const port of all) expect(port).toBeLessThan(32_768);
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(mine[0], '127.0.0.1', resolve));
    server.close();
    await Promise.all(others.map((o) => o.release()));
    // A process that exits gives its ports back.
    const lockDir = path.join(tmpdir(), 'jwtproxy-test-ports');
    expect(others.flatMap((o) => o.ports).filter((port) => existsSync(path.join(lockDir, String(port))))).toEqual([]);
    expect(mine.every((port) => existsSync(path.join(lockDir, String(port))))).toBe(true);
  });
});

import type { Logger } from '@jwtproxy/core';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../src/index.js';
import { configErrorOf, verifierBlock } from './helpers.js';

const verifier = verifierBlock;
const errorOf = configErrorOf;

describe('jwtproxy.admin (the admin listener)', () => {
  it('reads admin.listen_addr; without an admin block there is no admin listener', () => {
    expect(parseConfig(`jwtproxy:\n  admin:\n    listen_addr: 127.0.0.1:9090\n${verifier}`, 'c.yaml').admin).toEqual({ path: 'admin', listenAddr: '127.0.0.1:9090', serveJwks: false });
    expect(parseConfig(`jwtproxy:\n  admin:\n    listen_addr: 127.0.0.1:9090\n    serve_jwks: true\n${verifier}`, 'c.yaml').admin?.serveJwks).toBe(true);
    expect(parseConfig(`jwtproxy:\n  admin:\n    listen_addr: unix:/run/jwtproxy-admin.sock\n${verifier}`, 'c.yaml').admin?.listenAddr).toBe('unix:/run/jwtproxy-admin.sock');
    expect(parseConfig(`jwtproxy:\n${verifier}`, 'c.yaml').admin).toBeUndefined();
  });

  it('an admin block without listen_addr, or with one that is not an address, is an error at its key and line', () => {
    expect(errorOf(`jwtproxy:\n  admin: {}\n${verifier}`).message).toMatch(/^admin\.listen_addr: is required: where \/metrics, \/healthz and \/readyz listen .*\(config\.yaml:2\)$/);
    const bad = errorOf(`jwtproxy:\n  admin:\n    listen_addr: localhost\n${verifier}`);
    expect(bad.path).toBe('admin.listen_addr');
    expect(bad.message).toContain('"localhost" is not a listen address');
    expect(bad.line).toBe(3);
  });

  it('admin is a known top-level key: no "unknown key" warning for it', () => {
    const warnings: string[] = [];
    const logger: Logger = { debug() {}, info() {}, warn: (message) => void warnings.push(message), error() {} };
    parseConfig(`jwtproxy:\n  admin:\n    listen_addr: :9090\n${verifier}`, 'c.yaml', { logger });
    expect(warnings).toEqual([]);
  });
});

import { ConfigError } from '@jwtproxy/core';
import { expect } from 'vitest';
import { parseConfig } from '../src/index.js';

/** A `verifier_proxies` block (two-space indented, under `jwtproxy:`) with one preshared verifier. */
export const verifierBlock = [
  '  verifier_proxies:',
  '  - listen_addr: 127.0.0.1:0',
  '    verifier:',
  '      upstream: http://127.0.0.1:9000',
  '      audience: http://localhost:8082',
  '      key_server:',
  '        type: preshared',
  '        options: {issuer: a, key_id: k, public_key_path: k.pub}',
  '',
].join('\n');

/** The ConfigError that parsing `text` throws (the test fails when it parses). */
export function configErrorOf(text: string): ConfigError {
  try {
    parseConfig(text, 'config.yaml');
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

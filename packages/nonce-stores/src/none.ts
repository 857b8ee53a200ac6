import { silentLogger, type ComponentContext, type Logger, type NonceStore, type UnixSeconds } from '@jwtproxy/core';
import { rejectUnknownOptions } from './options.js';

/**
 * `nonce_storage: {type: none}` (asked for in quay/jwtproxy#103): every jti is accepted, so a
 * captured token can be replayed until it expires. For set-ups that accept that in exchange for
 * stateless replicas; it says so loudly at start-up.
 */
export class NoNonceStore implements NonceStore {
  constructor(options: { logger?: Logger } = {}) {
    (options.logger ?? silentLogger).warn(
      'nonce_storage type none: replay protection is OFF; a captured token is accepted again until it expires',
    );
  }

  claim(_jti: string, _expiresAt: UnixSeconds): Promise<boolean> {
    return Promise.resolve(true);
  }
}

/** The registry factory; `none` takes no options. */
export function createNoNonceStore(options: Record<string, unknown>, context: ComponentContext): NoNonceStore {
  rejectUnknownOptions(options, []);
  return new NoNonceStore({ logger: context.logger });
}

import { defineComponent, schema as s, silentLogger, type Logger, type NonceStore, type UnixSeconds } from '@jwtproxy/core';

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

  /** Always answers (the readiness probe). */
  ping(): Promise<void> {
    return Promise.resolve();
  }
}

/** `nonce_storage: {type: none}`: no options. */
export const noNonceStore = defineComponent({
  type: 'none',
  description: 'Replay protection OFF: every jti is accepted (quay/jwtproxy#103); warned about at start.',
  options: s.strictObject({}),
  create: (_options, context): NoNonceStore => new NoNonceStore({ logger: context.logger }),
});

/** `nonce_storage: {type: void}`: the Eclipse Che fork's name for `none` (same store, same warning). */
export const voidNonceStore = defineComponent({
  type: 'void',
  description: 'Alias of none (the Eclipse Che fork\'s name): replay protection OFF; warned about at start.',
  options: s.strictObject({}),
  create: (_options, context): NoNonceStore => new NoNonceStore({ logger: context.logger }),
});

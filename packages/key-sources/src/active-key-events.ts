import type { PrivateKeySource } from '@jwtproxy/core';

/**
 * A private key source that says when its active key changes, so that whoever copies the key
 * elsewhere (the primary of a jwtproxy with workers sends it to every worker thread) does so at
 * once instead of looking at activeKey() on a timer.
 */
export interface ActiveKeyEvents {
  /**
   * Calls `listener`, synchronously, right after activeKey()'s answer changes (a new key, or
   * none until one is approved). Returns the function that unsubscribes it.
   */
  onActiveKeyChange(listener: () => void): () => void;
}

/** Whether `source` announces its key changes (the built-in sources do; a plugin's may not). */
export function hasActiveKeyEvents(source: PrivateKeySource): source is PrivateKeySource & ActiveKeyEvents {
  return typeof (source as Partial<ActiveKeyEvents>).onActiveKeyChange === 'function';
}

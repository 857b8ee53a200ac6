import { KeyRegistryError } from './errors.js';
import type { KeyRegistry } from './registry.js';

/** A service and key id no publisher uses: reading them asks the storage without finding anything. */
const PROBE_SERVICE = 'jwtproxy-readiness-probe';
const PROBE_KID = 'probe';

/**
 * The registry's readiness (for an admin listener's `/readyz`): resolves when its storage answers
 * a read (one GET of a key nobody publishes: a file store reads memory, Redis one HGET within
 * its command timeout); rejects with StorageUnavailableError when it does not.
 */
export async function keyRegistryStorageAnswers(registry: KeyRegistry): Promise<void> {
  try {
    await registry.getKey(PROBE_SERVICE, PROBE_KID);
  } catch (error) {
    // "No such key" (or any other answer about the key) is the storage answering.
    if (error instanceof KeyRegistryError && error.status < 500) return;
    throw error;
  }
}

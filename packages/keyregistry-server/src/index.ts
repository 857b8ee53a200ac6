export {
  startKeyRegistryServer,
  openKeyStore,
  defaultStoragePath,
  keyRegistryDefaults,
  type KeyRegistryServerOptions,
  type RunningKeyRegistry,
  type StorageSpec,
} from './server.js';
export { keyRegistryOptionsFrom, keyRegistryBlockOptions, adminTokenEnvVar, minAdminTokenLength } from './options.js';
export { keyRegistryStorageAnswers } from './readiness.js';
export { KeyRegistry, type KeyInfo, type LiveState, type KeyRegistryPolicy, type PublishRequest, type PublishResult } from './registry.js';
export type { KeyStore, StoredKey, KeyChange, KeyState } from './store.js';
export { MemoryKeyStore } from './store.js';
export { FileKeyStore } from './file-store.js';
export { RedisKeyStore, type RedisKeyStoreOptions } from './redis-store.js';
export { KeyRegistryAdminClient, KeyRegistryAdminError, type KeyRegistryAdminClientOptions } from './admin-client.js';
export { KeyRegistryError, StorageUnavailableError, registryAnswerFor, type RegistryErrorCode } from './errors.js';
export type { PublicJwk, PublishingAlgorithm } from './jwk.js';
export { jwkSetMember, type JwkSetMember } from './jwks.js';

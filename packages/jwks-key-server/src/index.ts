export { JwksKeyServer, jwksDefaults, jwksUrlFromDiscovery, type JwksKeyServerOptions, type JwksObserver, type JwksReadOutcome, type JwksStatus } from './jwks-key-server.js';
export { jwksKeyServer, jwksKeyServerFromConfig, jwksKeyServerOptions, type JwksKeyServerConfig } from './component.js';
export { readKeySet, verificationKeyFromJwk, supportedAlgorithms, MIN_RSA_BITS, MAX_RSA_BITS, MAX_KID_LENGTH, type JwkRules, type KeySetContents, type UsableKey } from './jwk.js';
export { freshnessLifetime, type LifetimeRules } from './lifetime.js';
export {
  JwksError,
  JwksUnavailableError,
  JwksAnswerTooLargeError,
  JwksInvalidError,
  JwksDiscoveryError,
  UnusableJwkError,
  type JwksErrorCode,
} from './errors.js';

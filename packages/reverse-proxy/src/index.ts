export { startVerifierProxy, type RunningVerifierProxy, type VerifierProxyOptions, type VerifierProxyUpdate } from './verifier-proxy.js';
export type { CheOptions } from './che.js';

export { startVerifierProxy, type VerifierProxyOptions } from './verifier-proxy.js';

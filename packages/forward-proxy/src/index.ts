export { startSignerProxy, NOT_A_PROXY_REQUEST, type SignerProxyOptions } from './signer-proxy.js';
export type { CertificateForgingObserver } from './certificates.js';

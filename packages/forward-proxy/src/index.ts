export { startSignerProxy, NOT_A_PROXY_REQUEST, type RunningSignerProxy, type SignerProxyOptions, type SignerProxyUpdate } from './signer-proxy.js';
export { CertificateForger, type CertificateForgingObserver, type ForgedCertificate, type ForgedCertificateSource } from './certificates.js';

export { startSignerProxy, NOT_A_PROXY_REQUEST, CONNECT_NEEDS_CA, type SignerProxyOptions } from './signer-proxy.js';

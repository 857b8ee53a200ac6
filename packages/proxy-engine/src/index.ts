export { ProxyEngine, serverLimits, type Outbound, type ProxyEngineOptions, type ProxyHooks } from './engine.js';
export { readRequestHead, responseHeaders, type RequestHead, type UpstreamHeaders } from './request-head.js';
export { writeAnswer, upstreamFailure } from './answers.js';

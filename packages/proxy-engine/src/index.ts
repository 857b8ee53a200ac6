export { ProxyEngine, serverLimits, type AccessRecord, type Outbound, type ProxyEngineOptions, type ProxyHooks, type TokenFacts } from './engine.js';
export { accessLog, type AccessLogOptions } from './access-log.js';
export { readRequestHead, responseHeaders, type RequestHead, type UpstreamHeaders } from './request-head.js';
export { writeAnswer, upstreamFailure } from './answers.js';

export * from './errors.js';
export { readFileAsync } from './files.js';
export * from './types.js';
export * from './registry.js';
export {
  configErrorFrom,
  describeValue,
  duration,
  editDistance,
  parseOptions,
  readDuration,
  schema,
  suggestKey,
  unknownOptionProblem,
  v,
  type DurationMetadata,
  type InferInput,
  type InferOutput,
  type DurationRule,
  type OptionsSchema,
  type SchemaKit,
} from './options.js';
export { componentDocs, optionRows, optionsTable, typeText, type OptionRow } from './options-docs.js';
export { parseDuration, formatDuration, toDuration, DurationParseError } from './duration.js';
export { createLogger, childLogger, silentLogger, isLogLevel, isLogFormat, RepeatedLogLimiter, type LogLevel, type LogFormat, type LoggerOptions } from './logger.js';
export { algorithmsFor, verificationKeyFrom, signingKeyFromKeyObject } from './keys.js';
export { RequestSigner, audienceOf, generateNonce, type RequestSignerOptions } from './signing.js';
export {
  RequestVerifier,
  extractToken,
  parseJwt,
  type ParsedJwt,
  type RequestVerifierOptions,
  type VerifiedToken,
} from './verification.js';
export { StaticClaimsVerifier, staticClaimsVerifier } from './static-claims.js';
export { HOP_BY_HOP_HEADERS, RAW_CLOSE_LINGER_MS, endRawConnection, spliceSockets, writeRawAnswer } from './http.js';
export {
  parseListenAddress,
  formatListenAddress,
  listenOn,
  listenProblem,
  ListenError,
  removeSocketFile,
  type ListenAddress,
  type ListenOptions,
} from './listen.js';
export {
  DEFAULT_SERVER_LIMITS,
  RequestTracker,
  applyServerLimits,
  checkRequestHead,
  defaultMaxConnections,
  httpServerOptions,
  requestHeadAnswer,
  watchRequestBody,
  type ServerLimits,
} from './server.js';

export * from './errors.js';
export * from './types.js';
export * from './registry.js';
export { parseDuration, formatDuration, toDuration, DurationParseError } from './duration.js';
export { createLogger, silentLogger, isLogLevel, type LogLevel } from './logger.js';

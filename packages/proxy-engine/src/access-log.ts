import type { Logger } from '@jwtproxy/core';
import type { AccessRecord } from './engine.js';

export interface AccessLogOptions {
  /**
   * Share of passed requests written, 0 to 1 (default 1: all). Refusals and failures are always
   * written: they are what an operator looks for.
   */
  sample?: number;
}

const round = (ms: number): number => Math.round(ms * 100) / 100;

/**
 * An `onAccess` that writes one `access` line per request, upgrade and tunnel at info: method,
 * host, path without query, status, upstream status, bytes, durations, the verdict with its
 * reason code and facts, the token's iss/kid/sub (or the audience the signer signed for) and the
 * client's address. Never the token or a key.
 */
export function accessLog(logger: Logger, options: AccessLogOptions = {}): (record: AccessRecord) => void {
  const sample = options.sample ?? 1;
  return (record) => {
    // At -log-level warn or error no access line is written: build none.
    if (logger.enabled?.('info') === false) return;
    if (record.verdict === 'passed' && sample < 1 && Math.random() >= sample) return;
    // Only the fields a line has, in the line's order (the logger skips undefined values, but
    // visiting them costs as much as writing them).
    const fields: Record<string, unknown> = {};
    if (record.kind !== 'request') fields.kind = record.kind;
    fields.method = record.method;
    if (record.host !== undefined) fields.host = record.host;
    fields.path = record.path;
    fields.status = record.status;
    if (record.upstreamStatus !== undefined) fields.upstream_status = record.upstreamStatus;
    fields.bytes_in = record.bytesIn;
    fields.bytes_out = record.bytesOut;
    fields.duration_ms = round(record.durationMs);
    if (record.upstreamMs !== undefined) fields.upstream_ms = round(record.upstreamMs);
    fields.verdict = record.verdict;
    if (record.reason !== undefined) fields.reason = record.reason;
    const token = record.token;
    if (token !== undefined) {
      if (token.iss !== undefined) fields.iss = token.iss;
      if (token.kid !== undefined) fields.kid = token.kid;
      if (token.sub !== undefined) fields.sub = token.sub;
      if (token.aud !== undefined) fields.aud = token.aud;
    }
    if (record.client !== undefined) fields.client = record.client;
    if (record.facts) for (const key in record.facts) fields[key] = record.facts[key];
    logger.info('access', fields);
  };
}

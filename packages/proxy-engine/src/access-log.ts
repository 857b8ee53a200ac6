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
    const fields: Record<string, unknown> = {
      kind: record.kind === 'request' ? undefined : record.kind,
      method: record.method,
      host: record.host,
      path: record.path,
      status: record.status,
      upstream_status: record.upstreamStatus,
      bytes_in: record.bytesIn,
      bytes_out: record.bytesOut,
      duration_ms: round(record.durationMs),
      upstream_ms: record.upstreamMs === undefined ? undefined : round(record.upstreamMs),
      verdict: record.verdict,
      reason: record.reason,
      iss: record.token?.iss,
      kid: record.token?.kid,
      sub: record.token?.sub,
      aud: record.token?.aud,
      client: record.client,
    };
    if (record.facts) for (const key in record.facts) fields[key] = record.facts[key];
    logger.info('access', fields);
  };
}

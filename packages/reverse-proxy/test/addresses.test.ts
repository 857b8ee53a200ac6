import { describe, expect, it } from 'vitest';
import { joinTarget, parseUpstream } from '../src/upstream.js';

/** What Go's httputil.NewSingleHostReverseProxy sends for (upstream, request target). */
const cases: Array<[upstream: string, request: string, sent: string]> = [
  ['http://u:1', '/', '/'],
  ['http://u:1', '/a/b?x=1', '/a/b?x=1'],
  ['http://u:1/', '/a', '/a'],
  ['http://u:1/base', '/', '/base/'],
  ['http://u:1/base', '/a', '/base/a'],
  ['http://u:1/base/', '/a', '/base/a'],
  ['http://u:1/base/', '/a/', '/base/a/'],
  ['http://u:1/base?k=v', '/a', '/base/a?k=v'],
  ['http://u:1/base?k=v', '/a?x=1&y=2', '/base/a?k=v&x=1&y=2'],
  ['http://u:1?k=v', '/a?x=1', '/a?k=v&x=1'],
  ['http://u:1/b%2Fc', '/d%20e', '/b%2Fc/d%20e'],
  ['http://u:1', '/a?', '/a?'],
];

describe('the upstream target', () => {
  it.each(cases)('%s + %s → %s', (upstream, request, sent) => {
    const { basePath, baseQuery } = parseUpstream(upstream);
    expect(joinTarget(basePath, baseQuery, request)).toBe(sent);
  });
});

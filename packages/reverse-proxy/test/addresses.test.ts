import { describe, expect, it } from 'vitest';
import { parseListenAddress } from '../src/listen.js';
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

describe('listen addresses', () => {
  it('reads host:port, :port, [v6]:port and unix:/path as the Go configuration writes them', () => {
    expect(parseListenAddress('127.0.0.1:8082')).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 8082 });
    expect(parseListenAddress(':8082')).toEqual({ kind: 'tcp', host: undefined, port: 8082 });
    expect(parseListenAddress('[::1]:8082')).toEqual({ kind: 'tcp', host: '::1', port: 8082 });
    expect(parseListenAddress('unix:/run/jwtproxy.sock')).toEqual({ kind: 'unix', path: '/run/jwtproxy.sock' });
    for (const bad of ['8082', 'host:', 'host:99999', 'unix:']) expect(() => parseListenAddress(bad), bad).toThrow(`"${bad}"`);
  });
});

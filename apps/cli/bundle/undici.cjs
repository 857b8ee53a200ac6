'use strict';
// What the bundled jwtproxy command takes from undici, without the rest of it (fetch, WebSocket,
// EventSource, caches, mocks, proxy agents: ~60 % of undici's code, which the command never runs
// but would parse at every start). The packages import 'undici' itself: bundle/build.mjs points
// their `import … from 'undici'` here only inside the command's bundle.
const Dispatcher = require('undici/lib/dispatcher/dispatcher');
const Pool = require('undici/lib/dispatcher/pool');
const Agent = require('undici/lib/dispatcher/agent');
const buildConnector = require('undici/lib/core/connect');
const api = require('undici/lib/api');
const { parseURL } = require('undici/lib/core/util');
const { getGlobalDispatcher } = require('undici/lib/global');

// As undici's index does: request(), stream(), … are methods of every dispatcher.
Object.assign(Dispatcher.prototype, api);

/** `request(url, options)` as undici exports it, for the forms the packages use: a URL and options. */
function request(url, options = {}) {
  const target = parseURL(url);
  const { dispatcher = getGlobalDispatcher(), ...rest } = options;
  return api.request.call(dispatcher, {
    ...rest,
    origin: target.origin,
    path: target.search ? `${target.pathname}${target.search}` : target.pathname,
    method: rest.method || (rest.body ? 'PUT' : 'GET'),
  });
}

module.exports = { Dispatcher, Pool, Agent, buildConnector, request };

'use strict';
// @deployerp/sdk against a real gateway (`gateway serve`), started by tests/e2e/test_sdk_node.py, which runs
// `node --test sdk/node/test/` with the addresses and keys below in the environment. Run alone, without them,
// every test is skipped and says why.
//
//   DEPLOYERP_TEST_BASE_URL     a gateway (memory rate limits; tier sdk_fast: 60 a minute, so Retry-After: 1)
//   DEPLOYERP_TEST_ADMIN_KEY    api-keys:read, api-keys:write, servers:read, instances:*
//   DEPLOYERP_TEST_READER_KEY   api-keys:read, servers:read
//   DEPLOYERP_TEST_FAST_KEYS    three keys of tier sdk_fast with api-keys:read, comma-separated
//   DEPLOYERP_TEST_DOWN_URL     a gateway whose rate limiter's Redis is down: every request gets 503, Retry-After: 1
//   DEPLOYERP_TEST_DOWN_KEY     a key of that gateway
//
// The fetch wrappers below only watch (and, in one test, add a competing request before a retry): every
// request still goes to the real gateway.

const test = require('node:test');
const assert = require('node:assert/strict');
const { inspect } = require('node:util');
const net = require('node:net');

const sdk = require('..');
const {
  DeployERPClient, DeployERPError, AuthenticationError, PermissionError, PermissionDeniedError, RateLimitError,
  NotFoundError, ValidationError, ConflictError, ServerError, APIError, APIConnectionError, APITimeoutError,
  ConfigurationError,
} = sdk;

const ENV = process.env;
const URL_ = ENV.DEPLOYERP_TEST_BASE_URL;
const ADMIN = ENV.DEPLOYERP_TEST_ADMIN_KEY;
const READER = ENV.DEPLOYERP_TEST_READER_KEY;
const FAST = (ENV.DEPLOYERP_TEST_FAST_KEYS || '').split(',').filter(Boolean);
const DOWN_URL = ENV.DEPLOYERP_TEST_DOWN_URL;
const DOWN_KEY = ENV.DEPLOYERP_TEST_DOWN_KEY;
const skip = URL_ && ADMIN && READER && FAST.length === 3 && DOWN_URL && DOWN_KEY
  ? false : 'no gateway: run through tests/e2e/test_sdk_node.py, which starts one';

/** Everything a log would show of an error: its message, stack and own properties. */
const shown = (err) => `${err}\n${err.stack}\n${inspect(err, { depth: 5 })}`;

/** A fetch that records each attempt (time, status) and passes it on unchanged. */
function watched(before) {
  const calls = [];
  const fetchImpl = async (url, init) => {
    if (before) await before(calls.length, url, init);
    const call = { at: Date.now() };
    calls.push(call);
    const response = await fetch(url, init);
    call.status = response.status;
    return response;
  };
  return { calls, fetchImpl };
}

/** Spend a sdk_fast key's burst: requests until one is refused with 429. */
async function drain(key) {
  const c = new DeployERPClient({ apiKey: key, baseUrl: URL_, maxRetries: 0 });
  for (let i = 0; i < 400; i++) {
    try {
      await c.apiKeys.list({ limit: 1 });
    } catch (err) {
      assert.ok(err instanceof RateLimitError, shown(err));
      return err;
    }
  }
  throw new Error('the key was never rate limited');
}

async function closedPort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

// --- the guide's snippet ------------------------------------------------------------------------------------

test('seed snippet: auth.test() succeeds with a key', { skip }, async () => {
  const client = new DeployERPClient({ apiKey: ADMIN, baseUrl: URL_ });
  const me = await client.auth.test();
  assert.equal(me.authenticated, true);
  assert.match(me.key_id, /^key_/);
  assert.ok(me.permissions.includes('api-keys:write'));
  assert.equal(me.rate_limit.limit, 1000); // the standard tier's hour, as the guide shows it
});

test('seed snippet: a bad key rejects with AuthenticationError, without the key', { skip }, async () => {
  const bad = ADMIN.slice(0, -1) + (ADMIN.endsWith('A') ? 'B' : 'A'); // the checksum fails
  const client = new DeployERPClient({ apiKey: bad, baseUrl: URL_ });
  const err = await client.auth.test().then(() => null, (e) => e);
  assert.ok(err instanceof AuthenticationError && err instanceof APIError && err instanceof DeployERPError);
  assert.equal(err.name, 'AuthenticationError');
  assert.equal(err.status, 401);
  assert.equal(err.code, 'invalid_token');
  assert.match(err.message, /^401 invalid_token: /);
  assert.ok(!shown(err).includes(bad));
});

// --- configuration ------------------------------------------------------------------------------------------

test('DEPLOYERP_API_KEY and DEPLOYERP_BASE_URL are read when no option is given', { skip }, async (t) => {
  const saved = { key: ENV.DEPLOYERP_API_KEY, url: ENV.DEPLOYERP_BASE_URL };
  t.after(() => {
    for (const [name, value] of [['DEPLOYERP_API_KEY', saved.key], ['DEPLOYERP_BASE_URL', saved.url]]) {
      if (value === undefined) delete ENV[name]; else ENV[name] = value;
    }
  });
  ENV.DEPLOYERP_API_KEY = READER;
  ENV.DEPLOYERP_BASE_URL = URL_;
  const fromEnv = new DeployERPClient();
  assert.equal(fromEnv.baseUrl, URL_);
  assert.ok(!(await fromEnv.auth.test()).permissions.includes('api-keys:write'));
  const explicit = new DeployERPClient({ apiKey: ADMIN }); // an option beats the variable
  assert.ok((await explicit.auth.test()).permissions.includes('api-keys:write'));

  delete ENV.DEPLOYERP_BASE_URL;
  assert.equal(new DeployERPClient().baseUrl, 'https://api.deployerp.com');

  ENV.DEPLOYERP_API_KEY = '  ';
  const none = new DeployERPClient({ baseUrl: `http://127.0.0.1:${await closedPort()}` }); // never throws here
  const err = await none.auth.test().then(() => null, (e) => e);
  assert.ok(err instanceof AuthenticationError, shown(err)); // not a connection error: nothing was sent
  assert.equal(err.code, 'authentication_required');
  assert.match(err.message, /DEPLOYERP_API_KEY/);
});

test('bad options are ConfigurationErrors; bad arguments reject', { skip }, async () => {
  assert.throws(() => new DeployERPClient({ apiKey: 'x', baseUrl: 'ftp://example.com' }), ConfigurationError);
  assert.throws(() => new DeployERPClient({ apiKey: 'x', baseUrl: 'not a url' }), /DEPLOYERP_BASE_URL/);
  assert.throws(() => new DeployERPClient({ apiKey: 'x', prefix: 'v1/' }), /prefix/);
  assert.throws(() => new DeployERPClient({ apiKey: 'x', maxRetries: -1 }), ConfigurationError);
  const client = new DeployERPClient({ apiKey: ADMIN, baseUrl: URL_ });
  await assert.rejects(client.apiKeys.get(''), TypeError);
  await assert.rejects(client.request('GET', 'http://elsewhere.example/v1/servers'), TypeError);
  const secret = 'dep_live_has space\r\nX-Evil: 1';
  const err = await new DeployERPClient({ apiKey: secret, baseUrl: URL_ }).auth.test().then(() => null, (e) => e);
  assert.ok(err instanceof AuthenticationError);
  assert.ok(!shown(err).includes('has space'));
});

test('the key is never shown by inspect or JSON', { skip }, () => {
  const client = new DeployERPClient({ apiKey: ADMIN, baseUrl: URL_ });
  for (const text of [inspect(client), JSON.stringify(client), String(Object.keys(client))]) {
    assert.ok(!text.includes(ADMIN) && !text.includes(ADMIN.slice(-8)), text);
  }
  assert.match(inspect(client), /apiKey: '\[redacted\]'/);
});

// --- errors ---------------------------------------------------------------------------------------------------

test('403: PermissionError (alias PermissionDeniedError) with the gateway code', { skip }, async () => {
  const reader = new DeployERPClient({ apiKey: READER, baseUrl: URL_ });
  const err = await reader.apiKeys.create({ name: 'from-reader' }).then(() => null, (e) => e);
  assert.ok(err instanceof PermissionError && err instanceof PermissionDeniedError, shown(err));
  assert.equal(err.status, 403);
  assert.equal(err.code, 'insufficient_permissions');
  await assert.rejects(reader.request('GET', '/v1/instances'), PermissionError); // the policy, through the gateway
  assert.ok((await reader.request('GET', '/v1/servers')).path === '/v1/servers');
});

test('404, 422 with the field, 409, and connection errors', { skip }, async () => {
  const client = new DeployERPClient({ apiKey: ADMIN, baseUrl: URL_ });
  await assert.rejects(client.apiKeys.get('key_doesnotexist00'), (e) => e instanceof NotFoundError && e.code === 'not_found');
  await assert.rejects(client.apiKeys.create({ name: 'x', permissions: ['not a scope'] }),
    (e) => e instanceof ValidationError && e.status === 422 && e.field === 'permissions');
  const victim = await client.apiKeys.create({ name: 'node-conflict', permissions: ['servers:read'] });
  await client.apiKeys.revoke(victim.id);
  await assert.rejects(client.apiKeys.rotate(victim.id), (e) => e instanceof ConflictError && e.status === 409);

  const gone = new DeployERPClient({ apiKey: ADMIN, baseUrl: `http://127.0.0.1:${await closedPort()}` });
  const err = await gone.auth.test().then(() => null, (e) => e);
  assert.ok(err instanceof APIConnectionError && !(err instanceof APITimeoutError), shown(err));
  assert.ok(!shown(err).includes(ADMIN));
  // the recording upstream's /__slow answers after the given seconds: longer than this client waits
  const impatient = new DeployERPClient({ apiKey: ADMIN, baseUrl: URL_, timeout: 300 });
  await assert.rejects(impatient.request('GET', '/v1/servers/__slow', { query: { seconds: 3 } }), APITimeoutError);
});

// --- retries ----------------------------------------------------------------------------------------------------

// The limiter is real and keeps time: a token can come back in the few milliseconds between draining a key
// and the SDK's request. Such a run shows nothing about retries, so the scenario is tried again (at most 3 times).

test('429: waits the Retry-After, then the retry succeeds', { skip }, async () => {
  for (let run = 0; run < 3; run++) {
    const { calls, fetchImpl } = watched(async (n) => {
      if (n === 0) await drain(FAST[0]);
    });
    const client = new DeployERPClient({ apiKey: FAST[0], baseUrl: URL_, maxRetries: 3, fetch: fetchImpl });
    const page = await client.apiKeys.list({ limit: 1 });
    assert.equal(page.pagination.limit, 1);
    assert.equal(calls.at(-1).status, 200);
    if (calls[0].status !== 429) continue; // a token came back first
    // Retry-After is 1 s for this tier: each retry waited it out (one sent sooner would be refused again)
    for (let i = 1; i < calls.length; i++) {
      assert.ok(calls[i].at - calls[i - 1].at >= 990, `retry ${i} came ${calls[i].at - calls[i - 1].at} ms after`);
    }
    return;
  }
  assert.fail('the first attempt was never refused');
});

test('429: RateLimitError with retryAfter once maxRetries retries are refused too', { skip }, async () => {
  // Before each retry a competing request takes every token that has come back, so each attempt is refused.
  for (let run = 0; run < 3; run++) {
    const { calls, fetchImpl } = watched(async () => drain(FAST[1]));
    const client = new DeployERPClient({ apiKey: FAST[1], baseUrl: URL_, maxRetries: 2, fetch: fetchImpl });
    const started = Date.now();
    const err = await client.apiKeys.list({ limit: 1 }).then(() => null, (e) => e);
    if (err === null) { // a token came back between the drain and an attempt
      assert.equal(calls.at(-1).status, 200);
      continue;
    }
    assert.ok(err instanceof RateLimitError, shown(err));
    assert.equal(err.code, 'rate_limit_exceeded');
    assert.equal(err.retryAfter, 1);
    assert.deepEqual(calls.map((c) => c.status), [429, 429, 429]); // the first try and two retries, no more
    assert.ok(Date.now() - started >= 2000); // two waits of Retry-After
    return;
  }
  assert.fail('an attempt succeeded in every run');
});

test('429: a Retry-After beyond maxRetryWait is not waited for', { skip }, async () => {
  await drain(FAST[2]);
  const { calls, fetchImpl } = watched();
  const client = new DeployERPClient({ apiKey: FAST[2], baseUrl: URL_, maxRetries: 5, maxRetryWait: 500,
    fetch: fetchImpl });
  const started = Date.now();
  await assert.rejects(client.apiKeys.list({ limit: 1 }), (e) => e instanceof RateLimitError && e.retryAfter === 1);
  assert.equal(calls.length, 1);
  assert.ok(Date.now() - started < 500);
});

test('503: an idempotent call is retried after Retry-After, a POST is not', { skip }, async () => {
  const get = watched();
  const client = new DeployERPClient({ apiKey: DOWN_KEY, baseUrl: DOWN_URL, maxRetries: 2, fetch: get.fetchImpl });
  const err = await client.auth.test().then(() => null, (e) => e);
  assert.ok(err instanceof ServerError, shown(err));
  assert.equal(err.status, 503);
  assert.equal(err.code, 'rate_limit_unavailable');
  assert.equal(get.calls.length, 3);
  assert.ok(get.calls[2].at - get.calls[0].at >= 1980);

  const post = watched();
  const poster = new DeployERPClient({ apiKey: DOWN_KEY, baseUrl: DOWN_URL, maxRetries: 2, fetch: post.fetchImpl });
  await assert.rejects(poster.apiKeys.create({ name: 'once' }), ServerError);
  assert.equal(post.calls.length, 1); // a POST that failed halfway must not create a second key
});

// --- key management -----------------------------------------------------------------------------------------

test('apiKeys: create, list, get, update, rotate, revoke', { skip }, async () => {
  const client = new DeployERPClient({ apiKey: ADMIN, baseUrl: URL_ });
  const expires = new Date(Date.now() + 30 * 86400_000);
  const created = await client.apiKeys.create({
    name: 'node-created', permissions: ['servers:read'], ipWhitelist: ['127.0.0.0/8'], expiresAt: expires,
    description: 'made by the Node SDK test',
  });
  assert.match(created.value, /^dep_live_/);
  assert.deepEqual(created.permissions, ['servers:read']);
  assert.deepEqual(created.ip_whitelist, ['127.0.0.0/8']);
  assert.equal(created.expires_at.slice(0, 16), expires.toISOString().slice(0, 16));

  const made = new DeployERPClient({ apiKey: created.value, baseUrl: URL_ });
  assert.equal((await made.auth.test()).key_id, created.id);

  const got = await client.apiKeys.get(created.id);
  assert.equal(got.name, 'node-created');
  assert.ok(!('value' in got));
  const page = await client.apiKeys.list({ limit: 500 });
  assert.ok(page.data.some((k) => k.id === created.id));
  assert.ok(page.data.every((k) => !('value' in k)));
  const one = await client.apiKeys.list({ limit: 1, offset: 0, status: 'active' });
  assert.equal(one.data.length, 1);
  assert.equal(one.pagination.next_offset, 1);

  const updated = await client.apiKeys.update(created.id, { name: 'node-renamed', expiresAt: null });
  assert.equal(updated.name, 'node-renamed');
  assert.equal(updated.expires_at, null);
  assert.equal(updated.description, 'made by the Node SDK test');

  const rotated = await client.apiKeys.rotate(created.id, { gracePeriod: '0' });
  assert.equal(rotated.old_key.id, created.id);
  assert.match(rotated.new_key.value, /^dep_live_/);
  const revoked = await client.apiKeys.revoke(rotated.new_key.id);
  assert.equal(revoked.status, 'revoked');
  const revokedPage = await client.apiKeys.list({ status: 'revoked', limit: 500 });
  assert.ok(revokedPage.data.some((k) => k.id === rotated.new_key.id));

  // the revoked key stops working (within the gateway's cache TTL, 0.5 s here)
  const dead = new DeployERPClient({ apiKey: rotated.new_key.value, baseUrl: URL_ });
  const deadline = Date.now() + 15_000;
  for (;;) {
    const err = await dead.auth.test().then(() => null, (e) => e);
    if (err) {
      assert.ok(err instanceof AuthenticationError && err.code === 'invalid_token', shown(err));
      break;
    }
    assert.ok(Date.now() < deadline, 'a revoked key was still accepted');
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
});

// The `fetch` option: every HTTP request of a handle, its reads (catch-up, long-poll, SSE), its
// calls and its producers goes through the caller's fetch (a Cloudflare service binding, a test
// double, a proxy). The streams here live at a host that does not resolve: only a fetch that
// routes them to the reference server reaches it, so a request sent with the global fetch fails.
// Also a producer's pendingCount and inFlightCount, seen while such a fetch holds its batches.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { DurableStream, IdempotentProducer, stream, table } from '../src/node.js';
import { useReferenceServer } from '../test-support/reference-server.mjs';

const server = useReferenceServer();
const unreachable = () => `http://edgestream.invalid/json-${randomUUID()}`;

/** A fetch that sends to the reference server what was addressed to the unreachable host, and logs `METHOD live`. */
function router(log = []) {
  const f = (url, init) => {
    const { pathname, search, searchParams } = new URL(url);
    log.push(`${init.method} ${searchParams.get('live') ?? ''}`.trim());
    return fetch(`${server.url}${pathname}${search}`, init);
  };
  return Object.assign(f, { log });
}

test("a handle's fetch sends its calls, its producers' batches and its reads: catch-up, long-poll and SSE", async () => {
  const routed = router();
  const ds = new DurableStream({ url: unreachable(), contentType: 'application/json', fetch: routed });
  await ds.create();
  await ds.append({ n: 1 });
  const producer = new IdempotentProducer(ds, 'p', { lingerMs: 0 });
  producer.append({ n: 2 });
  await producer.flush();
  assert.deepEqual(await ds.stream({ live: false }).items(), [{ n: 1 }, { n: 2 }]);
  for (const live of ['long-poll', 'sse']) {
    const tail = (await ds.head()).offset;
    const follow = ds.stream({ live, offset: tail, json: true });
    const next = async () => (await follow.next()).value.items;
    let items = await next();
    const appended = ds.append({ live });
    while (items.length === 0) items = await next();
    await appended;
    assert.deepEqual(items, [{ live }]);
    assert.equal(follow.mode, live);
    follow.cancel();
  }
  for (const request of ['PUT', 'POST', 'GET', 'HEAD', 'GET long-poll', 'GET sse']) assert.ok(routed.log.includes(request), `${request} in ${routed.log}`);
  // stream() and table() take it too.
  assert.deepEqual(await stream({ url: ds.url, live: false, fetch: routed }).items(), [{ n: 1 }, { n: 2 }, { live: 'long-poll' }, { live: 'sse' }]);
  const rows = table({ url: ds.url, live: false, fetch: routed, onInvalid: 'skip' });
  await rows.finished;
  assert.equal(rows.offset, (await ds.head()).offset);
});

test("a producer's own fetch sends its batches, and the stream's sends the rest", async () => {
  const mine = router();
  const handles = router();
  const ds = new DurableStream({ url: unreachable(), contentType: 'application/json', fetch: handles });
  await ds.create();
  const producer = new IdempotentProducer(ds, 'p', { lingerMs: 0, fetch: mine });
  producer.append(1);
  producer.append(2);
  await producer.detach();
  assert.ok(mine.log.length > 0 && mine.log.every((r) => r === 'POST'), String(mine.log));
  assert.deepEqual(handles.log, ['PUT']);
  // writable() passes it on to its producer.
  const w = ds.writable({ fetch: mine });
  const writer = w.getWriter();
  await writer.write(3);
  await writer.close();
  assert.deepEqual(handles.log, ['PUT']);
  assert.deepEqual(await ds.stream({ live: false }).items(), [1, 2, 3]);
});

test('a fetch that throws or rejects is a failed connection: NETWORK_ERROR, retried as one', async () => {
  const retry = { maxRetries: 2, initialDelayMs: 1, maxDelayMs: 1 };
  for (const fail of [() => { throw new TypeError('refused'); }, () => Promise.reject(new TypeError('refused'))]) {
    let calls = 0;
    const failing = (...args) => (calls++, fail(...args));
    const ds = new DurableStream({ url: unreachable(), contentType: 'application/json', fetch: failing, retry });
    await assert.rejects(ds.head(), (e) => e.code === 'NETWORK_ERROR' && e.message.includes('refused'));
    // The first failed connection goes again at once, counted as no retry; then the 2 retries.
    assert.equal(calls, 4);
  }
  // Failing twice, then routed: a reader and a producer (whose requests are timed) ride it out.
  let left = 2;
  const routed = router();
  const flaky = (url, init) => (left-- > 0 ? (() => { throw new TypeError('down'); })() : routed(url, init));
  const ds = new DurableStream({ url: unreachable(), contentType: 'application/json', fetch: routed });
  await ds.create();
  const producer = new IdempotentProducer(ds, 'p', { lingerMs: 0, fetch: flaky, requestTimeoutMs: 5000 });
  producer.append(7);
  await producer.flush();
  assert.equal(left, -1);
  left = 2;
  assert.deepEqual(await stream({ url: ds.url, live: false, fetch: flaky, retry }).items(), [7]);
  assert.equal(left, -1);
});

test('a fetch that is not a function is refused with INVALID_ARGUMENT, before anything is sent', async () => {
  const url = unreachable();
  const refused = (e) => e.code === 'INVALID_ARGUMENT' && e.message.includes('fetch must be a function');
  for (const fetch of ['https://proxy.example', {}, 1]) {
    assert.throws(() => stream({ url, fetch }), refused);
    assert.throws(() => table({ url, fetch }), refused);
    assert.throws(() => new DurableStream({ url, fetch }), refused);
    assert.throws(() => new IdempotentProducer(url, 'p', { fetch }), refused);
    assert.throws(() => new DurableStream({ url }).writable({ fetch }), refused);
  }
});

test('pendingCount and inFlightCount: values not yet in a batch, and batches not yet acknowledged', async () => {
  // POSTs wait at the gate until it is opened.
  let open;
  const gate = new Promise((r) => (open = r));
  const routed = router();
  const gated = async (url, init) => (init.method === 'POST' && (await gate), routed(url, init));
  const ds = new DurableStream({ url: unreachable(), contentType: 'application/json', fetch: routed });
  await ds.create();
  const producer = new IdempotentProducer(ds, 'p', { lingerMs: 60_000, maxInFlight: 1, fetch: gated });
  assert.deepEqual([producer.pendingCount, producer.inFlightCount], [0, 0]);
  producer.append(1);
  producer.append(2);
  assert.deepEqual([producer.pendingCount, producer.inFlightCount], [2, 0]);
  const first = producer.flush();
  assert.deepEqual([producer.pendingCount, producer.inFlightCount], [0, 1]);
  producer.append(3);
  const second = producer.flush();
  // One batch sent (waiting at the gate), one waiting for the only request slot.
  assert.deepEqual([producer.pendingCount, producer.inFlightCount], [0, 2]);
  open();
  await Promise.all([first, second]);
  assert.deepEqual([producer.pendingCount, producer.inFlightCount], [0, 0]);
  assert.deepEqual(await ds.stream({ live: false }).items(), [1, 2, 3]);
});

test("create()'s own headers, params and fetch are used for that call, and a url other than the handle's is refused", async () => {
  const routed = router();
  const seen = [];
  const wrapped = (url, init) => {
    seen.push({ token: new URL(url).searchParams.get('t'), header: new Headers(init.headers).get('x-call') });
    return routed(url, init);
  };
  const ds = new DurableStream({ url: unreachable(), contentType: 'application/json' });
  await ds.create({ fetch: wrapped, headers: { 'x-call': 'yes' }, params: { t: 'p' } });
  assert.deepEqual(seen, [{ token: 'p', header: 'yes' }]);
  await assert.rejects(ds.create({ url: unreachable(), fetch: wrapped }), (e) => e.code === 'INVALID_ARGUMENT' && /url differs/.test(e.message));
  await assert.doesNotReject(ds.create({ url: ds.url, fetch: wrapped }));
});

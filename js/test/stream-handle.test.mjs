// The reading handle's lifecycle: subscribe/unsubscribe, callback errors, `finished`, and the
// AbortSignal it listens to. Against the reference server; a wrapper around `globalThis.fetch`
// (which the wasm calls) records each request's URL and AbortSignal.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { getEventListeners } from 'node:events';
import { DurableStream, stream } from '../src/node.js';
import { useReferenceServer } from '../test-support/reference-server.mjs';

const server = useReferenceServer({ longPollTimeout: 500 });

/** Every request the client made: `{ url, signal }`. */
const requests = [];
const realFetch = globalThis.fetch;
globalThis.fetch = (url, init = {}) => {
  requests.push({ url: String(url), signal: init.signal });
  return realFetch(url, init);
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** How `promise` settles within `ms`: `['resolved', value]`, `['rejected', error]` or `['pending']`. */
async function settled(promise, ms) {
  let timer;
  const pending = new Promise((r) => {
    timer = setTimeout(() => r(['pending']), ms);
  });
  try {
    return await Promise.race([promise.then((v) => ['resolved', v], (e) => ['rejected', e]), pending]);
  } finally {
    clearTimeout(timer);
  }
}

async function until(condition, what, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

async function jsonStream(...messages) {
  const ds = await DurableStream.create({ url: `${server.url}/handle-${randomUUID()}`, contentType: 'application/json' });
  for (const m of messages) await ds.append(m);
  return ds;
}

const liveRequests = (url) => requests.filter((r) => r.url.startsWith(url) && /[?&]live=/.test(r.url));

test('unsubscribing the last subscriber stops the live request, and no batch is read for nobody', async () => {
  const ds = await jsonStream({ m: 'first' });
  const h = stream({ url: ds.url, live: 'sse' });
  const seen = [];
  let unsubscribe;
  const delivered = new Promise((resolve) => {
    unsubscribe = h.subscribe((batch) => {
      seen.push(...batch.items);
      if (batch.upToDate) resolve(batch.offset);
    });
  });
  const offset = await delivered;
  await until(() => liveRequests(ds.url).length > 0, 'the live request');
  await sleep(100);
  unsubscribe();
  await until(() => liveRequests(ds.url).every((r) => r.signal?.aborted), 'the live request to be aborted', 2000);
  assert.deepEqual(await settled(h.finished, 1000), ['resolved', undefined]);
  await ds.append({ m: 'second' });
  await sleep(300);
  assert.deepEqual(seen, [{ m: 'first' }]);
  assert.equal(h.offset, offset, 'the handle did not read past what its subscriber got');
  unsubscribe(); // a second call is a no-op
});

test('a subscribe() callback that throws, with no onError, rejects `finished` and stops the handle', async () => {
  const ds = await jsonStream(1);
  const h = stream({ url: ds.url, live: 'long-poll' });
  const boom = new Error('boom in callback');
  let calls = 0;
  h.subscribe(() => {
    calls++;
    throw boom;
  });
  assert.deepEqual(await settled(h.finished, 2000), ['rejected', boom]);
  await ds.append(2);
  await sleep(300);
  assert.equal(calls, 1);
  assert.ok(
    liveRequests(ds.url).every((r) => r.signal?.aborted),
    'no live request is left open',
  );
  await assert.rejects(h.next(), (e) => e === boom);
});

test('a subscribe() callback that throws goes to onError', async () => {
  const ds = await jsonStream(1);
  const h = stream({ url: ds.url, live: 'long-poll' });
  const boom = new Error('async boom');
  const reported = new Promise((resolve) => {
    h.subscribe(async () => {
      throw boom;
    }, resolve);
  });
  assert.deepEqual(await settled(reported, 2000), ['resolved', boom]);
  assert.deepEqual(await settled(h.finished, 1000), ['rejected', boom]);
});

test('a read error reaches onError before `finished` rejects', async () => {
  const ds = await jsonStream(1);
  const h = stream({ url: ds.url, live: 'long-poll' });
  const order = [];
  h.subscribe(() => {}, (e) => order.push(`onError ${e.code}`));
  h.finished.catch((e) => order.push(`finished ${e.code}`));
  await sleep(200);
  await ds.delete();
  await settled(h.finished, 3000);
  await sleep(50);
  assert.deepEqual(order, ['onError NOT_FOUND', 'finished NOT_FOUND']);
});

test('`finished` rejects when the reader refuses its options', async () => {
  for (const [options, code] of [
    [{ offset: 'a/b' }, 'INVALID_OFFSET'],
    [{ live: 'websocket' }, 'INVALID_ARGUMENT'],
    [{ retry: { maxRetries: -1 } }, 'INVALID_ARGUMENT'],
  ]) {
    const h = stream({ url: `${server.url}/handle-${randomUUID()}`, ...options });
    await assert.rejects(h.next(), (e) => e.code === code);
    const [state, error] = await settled(h.finished, 1000);
    assert.equal(state, 'rejected', JSON.stringify(options));
    assert.equal(error.code, code);
  }
});

test('a handle lets go of a shared AbortSignal when it ends', async () => {
  const ds = await jsonStream({ x: 1 });
  const shared = new AbortController().signal;
  for (let i = 0; i < 20; i++) {
    const h = stream({ url: ds.url, live: false, signal: shared });
    assert.deepEqual(await h.items(), [{ x: 1 }]);
    await h.finished;
  }
  // Ended by cancel(), and by an error.
  const cancelled = stream({ url: ds.url, live: 'long-poll', signal: shared });
  await cancelled.next();
  cancelled.cancel();
  await cancelled.finished;
  const failed = stream({ url: `${server.url}/handle-missing-${randomUUID()}`, live: false, signal: shared });
  await assert.rejects(failed.next(), (e) => e.code === 'NOT_FOUND');
  await assert.rejects(failed.finished);
  assert.equal(getEventListeners(shared, 'abort').length, 0);
  // Handles made and never read do not listen at all: the signal would keep them reachable.
  const unread = Array.from({ length: 5 }, () => stream({ url: ds.url, live: 'long-poll', signal: shared }));
  assert.equal(getEventListeners(shared, 'abort').length, 0);
  // One aborted before it is read ends at once when it is.
  const early = new AbortController();
  const late = stream({ url: ds.url, live: 'long-poll', signal: early.signal });
  early.abort();
  assert.deepEqual(await late.next(), { done: true, value: undefined });
  assert.deepEqual(await settled(late.finished, 1000), ['resolved', undefined]);
  // Asking for `finished` starts listening: aborting settles it though nothing was read.
  const watched = new AbortController();
  const waiting = stream({ url: ds.url, live: 'long-poll', signal: watched.signal });
  const finished = waiting.finished;
  assert.equal(getEventListeners(watched.signal, 'abort').length, 1);
  watched.abort();
  assert.deepEqual(await settled(finished, 1000), ['resolved', undefined]);
  assert.equal(unread.length, 5);
  // A handle still reading keeps listening, and aborting it ends it.
  const controller = new AbortController();
  const live = stream({ url: ds.url, live: 'long-poll', signal: controller.signal });
  await live.next();
  assert.equal(getEventListeners(controller.signal, 'abort').length, 1);
  controller.abort();
  assert.deepEqual(await settled(live.finished, 1000), ['resolved', undefined]);
  assert.equal(getEventListeners(controller.signal, 'abort').length, 0);
});

test('an unsubscribe followed at once by a subscribe (React StrictMode) keeps the handle reading', async () => {
  const ds = await jsonStream({ m: 'first' });
  const h = stream({ url: ds.url, live: 'long-poll' });
  const seen = [];
  const unsubscribe = h.subscribe(() => {});
  unsubscribe();
  const second = new Promise((resolve) => {
    h.subscribe((batch) => {
      seen.push(...batch.items);
      if (seen.length === 2) resolve();
    });
  });
  await sleep(200);
  await ds.append({ m: 'second' });
  assert.deepEqual(await settled(second, 3000), ['resolved', undefined]);
  assert.deepEqual(seen, [{ m: 'first' }, { m: 'second' }]);
  h.cancel();
});

test('subscribe() on a handle its last subscriber left says so through onError, or a warning', async () => {
  const ds = await jsonStream(1);
  const h = stream({ url: ds.url, live: 'long-poll' });
  const unsubscribe = h.subscribe(() => {});
  await sleep(100);
  unsubscribe();
  await sleep(0);
  const told = new Promise((resolve) => h.subscribe(() => assert.fail('no batch comes'), resolve));
  const [state, error] = await settled(told, 1000);
  assert.equal(state, 'resolved');
  assert.equal(error.code, 'ABORTED');
  assert.match(error.message, /open a new one from its offset/);
  const warnings = await warned(async () => {
    h.subscribe(() => {});
    await sleep(10);
  });
  assert.equal(warnings.length, 1);
  assert.match(warnings[0], /cancelled handle/);
});

/** What `console.warn` was given while `fn` ran. */
async function warned(fn) {
  const real = console.warn;
  const got = [];
  console.warn = (...args) => got.push(args.map(String).join(' '));
  try {
    await fn();
  } finally {
    console.warn = real;
  }
  return got;
}

test('a read error that no onError and no `finished` would hear is logged as a warning, once', async () => {
  const unheard = await jsonStream(1);
  const warnings = await warned(async () => {
    const h = stream({ url: unheard.url, live: 'long-poll' });
    h.subscribe(() => {});
    await sleep(200);
    await unheard.delete();
    await sleep(1500);
  });
  assert.equal(warnings.filter((w) => /NOT_FOUND|not found/i.test(w)).length, 1, warnings.join('\n'));
  // Heard by onError, or by whoever asked for `finished`: no warning.
  for (const listen of [(h) => h.subscribe(() => {}, () => {}), (h) => (h.subscribe(() => {}), h.finished)]) {
    const ds = await jsonStream(1);
    const quiet = await warned(async () => {
      const h = stream({ url: ds.url, live: 'long-poll' });
      listen(h);
      await sleep(200);
      await ds.delete();
      await settled(h.finished, 3000);
    });
    assert.deepEqual(quiet, []);
  }
});

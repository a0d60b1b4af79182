// A per-call `signal` on DurableStream's calls (create, head, append, close, delete): it stops
// the request, which rejects with ABORTED carrying the signal's reason as `cause`, as the
// handle's own signal does. Against a server that reads each request and never answers, so
// only a signal can end a call.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { getEventListeners } from 'node:events';
import { DurableStream } from '../src/node.js';
import { within, abortLater } from '../test-support/within.mjs';
import { withLocalServer } from '../test-support/local-server.mjs';

/** Requests the silent server got, with their bodies. */
const received = [];

/** A server that reads every request and never answers; closed after `body`. */
function withSilentServer(body) {
  const silent = (req) => {
    let text = '';
    req.on('data', (c) => (text += c));
    req.on('end', () => received.push({ method: req.method, body: text }));
  };
  return withLocalServer(silent, body);
}

const abortedWith = (reason) => (e) => e.code === 'ABORTED' && e.cause === reason;

test('each call of a DurableStream takes its own signal: aborted, it rejects with ABORTED and the reason', { timeout: 10_000 }, async () => {
  await withSilentServer(async (url) => {
    const ds = new DurableStream({ url, contentType: 'text/plain' });
    const calls = {
      create: (signal) => ds.create({ signal }),
      head: (signal) => ds.head({ signal }),
      append: (signal) => ds.append('x', { signal }),
      close: (signal) => ds.close({ signal }),
      'close with a body': (signal) => ds.close({ body: 'last', signal }),
      delete: (signal) => ds.delete({ signal }),
    };
    for (const [name, run] of Object.entries(calls)) {
      const reason = new Error(`stop ${name}`);
      await within(assert.rejects(run(abortLater(100, reason)), abortedWith(reason), name), 5000, name);
    }
    // AbortSignal.timeout() is a per-call timeout: the cause is its TimeoutError.
    await within(
      assert.rejects(ds.head({ signal: AbortSignal.timeout(100) }), (e) => e.code === 'ABORTED' && e.cause?.name === 'TimeoutError'),
      5000,
      'timeout',
    );
  });
});

test('an append whose content type is not known yet is stopped by its signal in the HEAD that learns it', { timeout: 10_000 }, async () => {
  await withSilentServer(async (url) => {
    const ds = new DurableStream({ url });
    const reason = new Error('stop');
    await within(assert.rejects(ds.append('x', { signal: abortLater(100, reason) }), abortedWith(reason)), 5000, 'append');
  });
});

test("a call's signal already aborted sends nothing; the handle's signal still stops a call that has its own", { timeout: 10_000 }, async () => {
  await withSilentServer(async (url) => {
    received.length = 0;
    const gone = new AbortController();
    gone.abort('gone');
    const ds = new DurableStream({ url, contentType: 'text/plain' });
    await assert.rejects(ds.append('x', { signal: gone.signal }), abortedWith('gone'));
    await assert.rejects(ds.delete({ signal: gone.signal }), abortedWith('gone'));
    assert.equal(received.length, 0);

    const reason = new Error('handle stopped');
    const handle = new DurableStream({ url, contentType: 'text/plain', signal: abortLater(100, reason) });
    const own = new AbortController();
    await within(assert.rejects(handle.head({ signal: own.signal }), abortedWith(reason)), 5000, 'head');
  });
});

test("a call's signal that is not an AbortSignal is refused with INVALID_ARGUMENT", { timeout: 10_000 }, async () => {
  const ds = new DurableStream({ url: 'http://127.0.0.1:9/v1/stream/x', contentType: 'text/plain' });
  for (const run of [() => ds.head({ signal: {} }), () => ds.append('x', { signal: 'no' }), () => ds.create({ signal: 1 }), () => ds.delete({ signal: {} })]) {
    await assert.rejects(run(), (e) => e.code === 'INVALID_ARGUMENT' && /signal/.test(e.message));
  }
});

test("calls with their own signal stop listening to the handle's signal and their own once done", { timeout: 10_000 }, async () => {
  await withSilentServer(async (url) => {
    const shared = new AbortController();
    const ds = new DurableStream({ url, contentType: 'text/plain', signal: shared.signal });
    for (let i = 0; i < 3; i++) {
      const call = new AbortController();
      setTimeout(() => call.abort('next'), 50);
      await assert.rejects(ds.head({ signal: call.signal }), abortedWith('next'));
      assert.equal(getEventListeners(call.signal, 'abort').length, 0);
    }
    assert.equal(getEventListeners(shared.signal, 'abort').length, 0);
  });
});

test('an aborted append may still have landed: the server got it, only the answer was not waited for', { timeout: 10_000 }, async () => {
  await withSilentServer(async (url) => {
    received.length = 0;
    const ds = new DurableStream({ url, contentType: 'text/plain' });
    await assert.rejects(ds.append('landed?', { signal: abortLater(300, 'stop') }), abortedWith('stop'));
    assert.deepEqual(received, [{ method: 'POST', body: 'landed?' }]);
  });
});

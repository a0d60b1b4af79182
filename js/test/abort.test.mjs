// Work stopped by an AbortSignal (or a cancel): ABORTED errors carry the signal's reason as
// `cause`, and a one-off read stopped early rejects rather than pass for an empty stream. Against
// a server that answers every request with 503, so the client is always still retrying.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { DurableStream, stream } from '../src/node.js';

/** A server answering 503 (Retry-After: 2) to everything; closed after `body`. */
async function withUnavailableServer(body) {
  const server = http.createServer((req, res) => {
    res.writeHead(503, { 'retry-after': '2' });
    res.end();
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    await body(`http://127.0.0.1:${server.address().port}/v1/stream/x`);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
}

/** An AbortSignal aborted with `reason` after `ms`. */
function abortLater(ms, reason) {
  const controller = new AbortController();
  setTimeout(() => controller.abort(reason), ms);
  return controller.signal;
}

test('items(), bytes() and text() of a read stopped by its signal reject with ABORTED and the reason', async () => {
  await withUnavailableServer(async (url) => {
    for (const helper of ['items', 'bytes', 'text']) {
      const reason = new Error(`stop ${helper}`);
      const h = stream({ url, live: false, signal: abortLater(100, reason) });
      await assert.rejects(h[helper](), (e) => e.code === 'ABORTED' && e.cause === reason, helper);
      // Iteration itself ends as it does on cancel(): `finished` resolves.
      assert.equal(await h.finished, undefined);
    }
    // AbortSignal.timeout(): the cause is its TimeoutError.
    const timedOut = stream({ url, live: false, signal: AbortSignal.timeout(100) });
    await assert.rejects(timedOut.items(), (e) => e.code === 'ABORTED' && e.cause?.name === 'TimeoutError');
    // A signal aborted before the read starts.
    const early = new AbortController();
    early.abort('gone');
    await assert.rejects(stream({ url, live: false, signal: early.signal }).text(), (e) => e.code === 'ABORTED' && e.cause === 'gone');
  });
});

test('items() of a handle cancelled before the read completed rejects with ABORTED, without a cause', async () => {
  await withUnavailableServer(async (url) => {
    const h = stream({ url, live: false });
    setTimeout(() => h.cancel(), 100);
    await assert.rejects(h.items(), (e) => e.code === 'ABORTED' && e.cause === undefined);
    // next() on a cancelled handle ends iteration, as documented.
    assert.deepEqual(await h.next(), { done: true, value: undefined });
  });
});

test("an aborted stream operation's ABORTED error carries the signal's reason", async () => {
  await withUnavailableServer(async (url) => {
    const reason = new Error('user navigated away');
    await assert.rejects(
      DurableStream.head({ url, signal: abortLater(100, reason) }),
      (e) => e.code === 'ABORTED' && e.cause === reason,
    );
    const ds = new DurableStream({ url, contentType: 'text/plain', signal: abortLater(100, reason) });
    await assert.rejects(ds.append('x'), (e) => e.code === 'ABORTED' && e.cause === reason);
    const already = new AbortController();
    already.abort(reason);
    await assert.rejects(
      DurableStream.create({ url, contentType: 'text/plain', signal: already.signal }),
      (e) => e.code === 'ABORTED' && e.cause === reason,
    );
  });
});

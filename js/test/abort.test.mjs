// Work stopped by an AbortSignal (or a cancel): ABORTED errors carry the signal's reason as
// `cause`, and a one-off read stopped early rejects rather than pass for an empty stream. Against
// a server that answers every request with 503, so the client is always still retrying.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import zlib from 'node:zlib';
import { DurableStream, IdempotentProducer, change, stream, table } from '../src/node.js';
import { abortLater } from '../test-support/within.mjs';
import { withLocalServer } from '../test-support/local-server.mjs';

/** Requests the unavailable server got. */
let served = 0;

/** A server answering 503 (Retry-After: 2) to everything; closed after `body`. */
function withUnavailableServer(body) {
  const unavailable = (req, res) => {
    served++;
    res.writeHead(503, { 'retry-after': '2' });
    res.end();
  };
  return withLocalServer(unavailable, body);
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

test("a producer stops when the stream's signal or its own aborts: pending work fails with ABORTED, no retry follows", async () => {
  await withUnavailableServer(async (url) => {
    for (const where of ['stream', 'producer']) {
      const reason = new Error(`stop via the ${where}`);
      const controller = new AbortController();
      const retry = { maxRetries: 50, initialDelayMs: 200 };
      const ds = new DurableStream({ url, contentType: 'text/plain', retry, ...(where === 'stream' ? { signal: controller.signal } : {}) });
      const errors = [];
      const p = new IdempotentProducer(ds, 'p', {
        onError: (e) => errors.push(e),
        ...(where === 'producer' ? { signal: controller.signal } : {}),
      });
      p.append('x');
      const flushed = p.flush();
      setTimeout(() => controller.abort(reason), 300);
      const started = Date.now();
      await assert.rejects(flushed, (e) => e.code === 'ABORTED' && e.cause === reason, where);
      assert.ok(Date.now() - started < 1500, 'at once, not after the retry budget');
      assert.deepEqual(errors.map((e) => e.code), ['ABORTED']);
      assert.throws(() => p.append('y'), (e) => e.code === 'ABORTED');
      await assert.rejects(p.close(), (e) => e.code === 'ABORTED');
      const before = served;
      await new Promise((r) => setTimeout(r, 600));
      assert.equal(served, before, 'nothing is sent after the abort');
    }
    // A signal aborted before the producer is made stops it at once.
    const done = new AbortController();
    done.abort('already');
    const p = new IdempotentProducer(new DurableStream({ url, contentType: 'text/plain' }), 'p', { signal: done.signal });
    assert.throws(() => p.append('x'), (e) => e.code === 'ABORTED' && e.cause === 'already');
    assert.throws(() => new IdempotentProducer(url, 'p', { signal: 'x' }), (e) => e.code === 'INVALID_ARGUMENT' && /signal/.test(e.message));
  });
});

test('a producer lets go of its signal once it is closed', async () => {
  const { getEventListeners } = await import('node:events');
  const server = http.createServer((req, res) => {
    res.writeHead(204, { 'stream-next-offset': '1', 'stream-closed': 'true' });
    res.end();
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    const controller = new AbortController();
    const ds = new DurableStream({ url: `http://127.0.0.1:${server.address().port}/s`, contentType: 'text/plain' });
    const p = new IdempotentProducer(ds, 'p', { signal: controller.signal });
    assert.equal(getEventListeners(controller.signal, 'abort').length, 1);
    await p.close();
    assert.equal(getEventListeners(controller.signal, 'abort').length, 0);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

test('a WebSocket reader cancelled while its params function runs opens no socket', async () => {
  // Node 20 has no global WebSocket; undici's is the one an application installs.
  globalThis.WebSocket ??= (await import('undici')).WebSocket;
  let upgrades = 0;
  const server = http.createServer((req, res) => res.end());
  server.on('upgrade', (req, socket) => {
    upgrades++;
    socket.destroy();
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    const url = `http://127.0.0.1:${server.address().port}/v1/stream/x`;
    const controller = new AbortController();
    // `now` with `json` given: the first request is the socket, after the token is fetched.
    const h = stream({
      url,
      live: 'ws',
      offset: 'now',
      json: true,
      signal: controller.signal,
      params: { token: () => new Promise((r) => setTimeout(() => r('t'), 200)) },
    });
    const next = h.next();
    setTimeout(() => controller.abort(), 50);
    assert.deepEqual(await next, { done: true, value: undefined });
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(upgrades, 0, 'no socket is opened after the abort');
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

test('a retry delay past what timers hold waits, rather than retrying at once in a loop', async () => {
  await withUnavailableServer(async (url) => {
    const before = served;
    const h = stream({ url, live: 'sse', retry: { initialDelayMs: 1e12, maxDelayMs: 1e12 } });
    h.next().catch(() => {});
    await new Promise((r) => setTimeout(r, 500));
    h.cancel();
    assert.equal(served - before, 1, 'one request, then the (capped) backoff');
  });
});

test("a reader cancelled while it reads a gzip page ends, and so does a table's `finished` (Node's fetch can leave the body's read pending for good)", async () => {
  // Node's fetch (undici, Node 20) leaves arrayBuffer() of a gzip body that arrives in pieces
  // pending for ever, about one time in five, when the request is aborted during the read: the
  // cancelled reader's next() never settled, nor did a cancelled table's `finished` (which never
  // saved its snapshot either), and a process with nothing else to do exited with code 13.
  const page = zlib.gzipSync(JSON.stringify(Array.from({ length: 3000 }, (_, i) => change.insert('u', `k${i}`, 'x'.repeat(100)))));
  let sending;
  const handler = (req, res) => {
    res.writeHead(200, {
      'content-type': 'application/json',
      'content-encoding': 'gzip',
      'stream-next-offset': '0000000000000000_0000000000000001',
      'stream-up-to-date': 'true',
    });
    let at = 0;
    const step = () => {
      if (at >= page.length) return res.end();
      res.write(page.subarray(at, (at += 4096)));
      setImmediate(step);
    };
    step();
    sending?.();
  };
  await withLocalServer(handler, async (url) => {
    const hung = (p) => Promise.race([p.then(() => false, () => false), new Promise((r) => setTimeout(() => r(true), 3000))]);
    for (let i = 0; i < 30; i++) {
      const started = new Promise((r) => (sending = r));
      const h = stream({ url, live: false, json: true });
      const next = h.next();
      await started;
      await new Promise((r) => setTimeout(r, i % 4));
      h.cancel();
      assert.equal(await hung(next), false, `next() of a handle cancelled mid-body (try ${i})`);

      const startedToo = new Promise((r) => (sending = r));
      const t = table({ url, live: false });
      await startedToo;
      await new Promise((r) => setTimeout(r, i % 4));
      t.cancel();
      assert.equal(await hung(t.finished), false, `finished of a table cancelled mid-body (try ${i})`);
    }
  });
});

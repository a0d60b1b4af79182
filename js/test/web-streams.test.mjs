// Web streams in and out: `DurableStream.writable()` and `appendStream()` append through an
// idempotent producer (exactly once, with backpressure), and a handle's `bodyStream()`,
// `jsonStream()` and `textStream()` are async-iterable ReadableStreams of what it reads.
// Against the reference server, behind a proxy here where a test needs to hold or drop answers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { DurableStream, StreamClosedError, stream } from '../src/node.js';
import { useReferenceServer } from '../test-support/reference-server.mjs';
import { within } from '../test-support/within.mjs';
import { startServer } from '../../scripts/dev-server.mjs';

const server = useReferenceServer({ longPollTimeout: 500 });

const newStream = (contentType = 'text/plain', base = server.url) =>
  DurableStream.create({ url: `${base}/web-streams-${randomUUID()}`, contentType });
const readText = (ds) => stream({ url: ds.url, live: false }).text();
const readItems = (ds) => stream({ url: ds.url, live: false }).items();

/** A ReadableStream of `chunks`, then closed. */
const readableOf = (chunks) =>
  new ReadableStream({
    start(c) {
      for (const chunk of chunks) c.enqueue(chunk);
      c.close();
    },
  });

/** A promise and its resolve. */
function later() {
  let resolve;
  const promise = new Promise((r) => (resolve = r));
  return { promise, resolve };
}

/** Whether `promise` is still pending once the callbacks already queued have run. */
async function pending(promise) {
  const none = Symbol('pending');
  return (await Promise.race([promise, new Promise((r) => setImmediate(() => r(none)))])) === none;
}

/**
 * A proxy to the reference server that hands each POST to `onPost({ seq, body, count })`, which
 * may return `'drop'` (the POST is forwarded and lands, then the connection is destroyed before
 * the answer: the client sees a dropped connection) or a promise to hold the answer until it
 * settles. `posts` lists what came, with the server's status (`status`); `signal` aborts once it
 * is closed. `to` is another server to proxy to.
 */
async function proxy(onPost = () => {}, to = server.url) {
  const posts = [];
  const target = new URL(to);
  const p = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks);
    const headers = { ...req.headers, host: target.host };
    const seen = req.method === 'POST' ? { seq: req.headers['producer-seq'], body: body.toString(), count: posts.length + 1 } : null;
    if (seen) posts.push(seen);
    const fate = seen ? onPost(seen) : undefined;
    const up = http.request(new URL(req.url, target), { method: req.method, headers }, async (answer) => {
      const answerBody = [];
      for await (const chunk of answer) answerBody.push(chunk);
      if (seen) seen.status = answer.statusCode;
      if (fate === 'drop') return res.destroy();
      await fate;
      res.writeHead(answer.statusCode, answer.headers);
      res.end(Buffer.concat(answerBody));
    });
    up.on('error', () => res.destroy());
    up.end(body);
  });
  await new Promise((r) => p.listen(0, '127.0.0.1', r));
  const stop = new AbortController();
  return {
    posts,
    url: `http://127.0.0.1:${p.address().port}`,
    // For the producers sent through it: they retry without limit, and a test that failed must
    // not leave one retrying against the closed proxy.
    signal: stop.signal,
    close: () => {
      stop.abort();
      p.closeAllConnections();
      return new Promise((r) => p.close(r));
    },
  };
}

/**
 * A proxy that holds the answer to the first POST until `hold` is resolved; `first` resolves
 * when that POST has come.
 */
async function holdingFirstPost() {
  const hold = later();
  const first = later();
  const px = await proxy((post) => {
    if (post.count === 1) {
      first.resolve();
      return hold.promise;
    }
  });
  return { px, first, hold };
}

/**
 * A source that gives 'a', then 'b' once another writer has closed `ds` (so its append fails
 * with STREAM_CLOSED), then nothing until cancelled; `cancelled` resolves with the reason.
 */
function closedMidway(ds) {
  const cancelled = later();
  let pulls = 0;
  const source = new ReadableStream(
    {
      async pull(c) {
        pulls++;
        if (pulls === 1) c.enqueue('a');
        else if (pulls === 2) {
          await ds.close();
          c.enqueue('b');
        } else await new Promise(() => {});
      },
      cancel: (reason) => cancelled.resolve(reason),
    },
    { highWaterMark: 0 },
  );
  return { source, cancelled };
}

// --- writable() ----------------------------------------------------------------------------

test('writable(): what is piped in lands in order, bytes and strings as they are', async () => {
  const ds = await newStream();
  await readableOf(['a', new TextEncoder().encode('bc'), 'dé']).pipeTo(ds.writable());
  assert.equal(await readText(ds), 'abcdé');
});

test('writable() on a JSON stream: each chunk is one message, an array included', async () => {
  const ds = await newStream('application/json');
  const w = ds.writable({ producerId: 'json-writer' }).getWriter();
  for (const chunk of [{ a: 1 }, [1, 2], 'true', 3]) await w.write(chunk);
  await w.close();
  assert.deepEqual(await readItems(ds), [{ a: 1 }, [1, 2], true, 3]);
  // The stream is left open.
  assert.equal((await ds.head()).closed, false);
});

test("writable(): a write waits while the producer's queue is full, and goes on once a request is answered", async () => {
  const { px, first, hold } = await holdingFirstPost();
  try {
    const ds = await newStream('text/plain', px.url);
    const w = ds.writable({ maxInFlight: 1, maxBatchItems: 1, lingerMs: 0, signal: px.signal }).getWriter();
    await w.write('a'); // sent at once: nothing waits
    await first.promise;
    const b = w.write('b'); // its batch waits for the one request allowed
    assert.equal(await pending(b), true, "write('b') waits while 'a' is unanswered");
    assert.equal(px.posts.length, 1);
    hold.resolve();
    await within(b, 10_000, "write('b')");
    await w.close();
    assert.deepEqual(px.posts.map((p) => p.body), ['a', 'b']);
    assert.equal(await readText(ds), 'ab');
  } finally {
    hold.resolve();
    await px.close();
  }
});

test('writable(): a connection dropped after a batch landed is retried, and nothing lands twice', async () => {
  const px = await proxy((post) => (post.count === 2 ? 'drop' : undefined));
  try {
    const ds = await newStream('text/plain', px.url);
    await readableOf(['a', 'b', 'c']).pipeTo(ds.writable({ maxBatchItems: 1, maxInFlight: 1, signal: px.signal }));
    assert.equal(await readText(ds), 'abc');
    // 'b' was sent twice (the same seq), and stored once.
    assert.deepEqual(px.posts.map((p) => [p.seq, p.body, p.status]), [
      ['0', 'a', 200],
      ['1', 'b', 200],
      ['1', 'b', 204],
      ['2', 'c', 200],
    ]);
  } finally {
    await px.close();
  }
});

test('writable(): abort() cancels the producer, which fails with ABORTED and the reason as cause', async () => {
  const ds = await newStream();
  const errors = [];
  const w = ds.writable({ lingerMs: 60_000, onError: (e) => errors.push(e) }).getWriter();
  await w.write('queued, never sent');
  const reason = new Error('user went away');
  await w.abort(reason);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, 'ABORTED');
  assert.equal(errors[0].cause, reason);
  assert.equal(await readText(ds), '');
});

test('writable(): abort() while a write waits for room cancels the producer at once', async () => {
  const first = later();
  const px = await proxy((post) => {
    if (post.count === 1) first.resolve();
    return new Promise(() => {}); // never answered
  });
  try {
    const ds = await newStream('text/plain', px.url);
    const errors = [];
    const w = ds.writable({ maxInFlight: 1, maxBatchItems: 1, lingerMs: 0, signal: px.signal, onError: (e) => errors.push(e) }).getWriter();
    await w.write('a');
    await first.promise;
    const b = w.write('b');
    assert.equal(await pending(b), true);
    await within(w.abort('stop'), 10_000, 'abort()');
    assert.equal(errors[0]?.code, 'ABORTED');
    assert.equal(errors[0].cause, 'stop');
  } finally {
    await px.close();
  }
});

test('writable(): a pipe whose source fails aborts it, and what was queued is not sent', async () => {
  const ds = await newStream();
  const boom = new Error('source failed');
  const errors = [];
  const source = new ReadableStream({
    start(c) {
      c.enqueue('x');
    },
    pull(c) {
      c.error(boom);
    },
  });
  await assert.rejects(source.pipeTo(ds.writable({ lingerMs: 60_000, onError: (e) => errors.push(e) })), (e) => e === boom);
  assert.equal(errors[0]?.code, 'ABORTED');
  assert.equal(errors[0].cause, boom);
  assert.equal(await readText(ds), '');
});

test('writable(): its signal stops it with ABORTED', async () => {
  const ds = await newStream();
  const controller = new AbortController();
  const w = ds.writable({ signal: controller.signal }).getWriter();
  await w.write('a');
  controller.abort('stop');
  await assert.rejects(w.write('b'), (e) => e.code === 'ABORTED' && e.cause === 'stop');
  await assert.rejects(w.closed, (e) => e.code === 'ABORTED');
});

test('writable(): a value the stream refuses fails the write with INVALID_ARGUMENT', async () => {
  const ds = await newStream();
  const w = ds.writable().getWriter();
  await assert.rejects(w.write({ not: 'bytes' }), (e) => e.code === 'INVALID_ARGUMENT');
  await assert.rejects(w.closed, (e) => e.code === 'INVALID_ARGUMENT');
});

test('writable(): a chunk the stream refuses errors it there, and the chunks written before it are still appended', async () => {
  const ds = await newStream();
  const w = ds.writable({ lingerMs: 60_000 }).getWriter();
  await w.write('a');
  await w.write('b');
  await assert.rejects(w.write({ not: 'bytes' }), (e) => e.code === 'INVALID_ARGUMENT');
  await assert.rejects(w.write('c'), (e) => e.code === 'INVALID_ARGUMENT');
  await assert.rejects(w.closed, (e) => e.code === 'INVALID_ARGUMENT');
  // The writes that resolved land although the stream was never closed: a live reader sees them.
  const reader = stream({ url: ds.url, live: 'long-poll' });
  let text = '';
  const seen = (async () => {
    for await (const t of reader.textStream()) if ((text += t).length >= 2) return text;
  })();
  try {
    assert.equal(await within(seen, 10_000, 'the chunks written before the refused one'), 'ab');
  } finally {
    reader.cancel();
  }
  assert.equal(await readText(ds), 'ab');
});

test('writable(): a server error mid-way errors the stream with it, and the pipe cancels its source', async () => {
  const ds = await newStream();
  const { source, cancelled } = closedMidway(ds);
  await assert.rejects(source.pipeTo(ds.writable()), (e) => e instanceof StreamClosedError);
  assert.ok((await within(cancelled.promise, 10_000, 'the source is cancelled')) instanceof StreamClosedError);
});

// --- appendStream() --------------------------------------------------------------------------

test('appendStream(): a ReadableStream, an async generator and an array land in order; it resolves to the offset after them', async () => {
  const ds = await newStream();
  await ds.appendStream(readableOf(['a', 'b']));
  async function* more() {
    yield 'c';
    yield new TextEncoder().encode('d');
  }
  await ds.appendStream(more());
  const { offset } = await ds.appendStream(['e', 'f']);
  assert.equal(await readText(ds), 'abcdef');
  assert.equal(offset, (await ds.head()).offset);
});

test('appendStream() on a JSON stream: each chunk is one message', async () => {
  const ds = await newStream('application/json');
  async function* messages() {
    for (let i = 0; i < 5; i++) yield { i };
    yield [5, 6];
  }
  await ds.appendStream(messages(), { producerId: 'gen' });
  assert.deepEqual(await readItems(ds), [{ i: 0 }, { i: 1 }, { i: 2 }, { i: 3 }, { i: 4 }, [5, 6]]);
});

test('appendStream(): a source that throws stops there; what it gave before lands, then it rejects with its error', async () => {
  const ds = await newStream();
  const boom = new Error('source failed');
  async function* failing() {
    yield 'a';
    yield 'b';
    throw boom;
  }
  await assert.rejects(ds.appendStream(failing()), (e) => e === boom);
  assert.equal(await readText(ds), 'ab');
});

test('appendStream(): a value the stream refuses stops it with INVALID_ARGUMENT, after what came before lands; the source is cancelled', async () => {
  const ds = await newStream();
  let finished = false;
  async function* values() {
    try {
      yield 'a';
      yield { not: 'bytes' };
      yield 'never';
    } finally {
      finished = true;
    }
  }
  await assert.rejects(ds.appendStream(values()), (e) => e.code === 'INVALID_ARGUMENT');
  assert.equal(await readText(ds), 'a');
  assert.equal(finished, true);
});

test('appendStream(): aborting its signal mid-way rejects with ABORTED and cancels the source', async () => {
  const ds = await newStream();
  const controller = new AbortController();
  const waiting = later();
  const cancelled = later();
  let pulls = 0;
  const source = new ReadableStream(
    {
      async pull(c) {
        if (++pulls <= 2) return c.enqueue(String(pulls));
        waiting.resolve();
        await new Promise(() => {}); // a source with nothing more for now
      },
      cancel: (reason) => cancelled.resolve(reason),
    },
    { highWaterMark: 0 },
  );
  const appending = ds.appendStream(source, { signal: controller.signal });
  await waiting.promise;
  controller.abort('enough');
  await assert.rejects(appending, (e) => e.code === 'ABORTED' && e.cause === 'enough');
  assert.equal((await within(cancelled.promise, 10_000, 'the source is cancelled')).code, 'ABORTED');
  // What was queued may have been sent or not: a prefix of it landed, nothing else.
  assert.ok(['', '1', '12'].includes(await readText(ds)));
});

test('appendStream(): a server error mid-way rejects with it, and cancels the source', async () => {
  const ds = await newStream();
  const { source, cancelled } = closedMidway(ds);
  await assert.rejects(ds.appendStream(source), (e) => e instanceof StreamClosedError);
  assert.ok((await within(cancelled.promise, 10_000, 'the source is cancelled')) instanceof StreamClosedError);
});

test('appendStream(): dropped connections are retried, and every chunk lands exactly once', async () => {
  const px = await proxy((post) => (post.count === 1 || post.count === 4 ? 'drop' : undefined));
  try {
    const ds = await newStream('application/json', px.url);
    const chunks = Array.from({ length: 6 }, (_, i) => ({ n: i }));
    await ds.appendStream(chunks, { maxBatchItems: 2, maxInFlight: 1, signal: px.signal });
    assert.deepEqual(await readItems(ds), chunks);
    // The first and the third batch were sent twice each (the same seq), and stored once.
    assert.deepEqual(px.posts.map((p) => [p.seq, p.status]), [
      ['0', 200],
      ['0', 204],
      ['1', 200],
      ['2', 200],
      ['2', 204],
    ]);
  } finally {
    await px.close();
  }
});

test("appendStream(): the source is read no faster than the producer sends", async () => {
  const { px, first, hold } = await holdingFirstPost();
  try {
    const ds = await newStream('text/plain', px.url);
    let pulls = 0;
    const pulled = [];
    const source = new ReadableStream(
      {
        pull(c) {
          pulls++;
          pulled[pulls]?.resolve();
          if (pulls <= 4) c.enqueue(String(pulls));
          else c.close();
        },
      },
      { highWaterMark: 0 },
    );
    pulled[3] = later();
    const appending = ds.appendStream(source, { maxInFlight: 1, maxBatchItems: 1, lingerMs: 0, signal: px.signal });
    await first.promise;
    // '1' is in flight and '2' waits for it: the third chunk is asked for only once '1' is answered.
    assert.equal(await pending(pulled[3].promise), true);
    assert.equal(pulls, 2);
    hold.resolve();
    const { offset } = await within(appending, 10_000, 'appendStream()');
    assert.equal(pulls, 5);
    assert.deepEqual(px.posts.map((p) => p.body), ['1', '2', '3', '4']);
    assert.equal(offset, (await ds.head()).offset);
  } finally {
    hold.resolve();
    await px.close();
  }
});

test('appendStream() and writable() called again with the same producerId: each call lands (it claims an epoch of its own)', async () => {
  const ds = await newStream();
  await ds.appendStream(['a', 'b'], { producerId: 'same' });
  const { offset } = await ds.appendStream(['c', 'd'], { producerId: 'same' });
  await readableOf(['e']).pipeTo(ds.writable({ producerId: 'same' }));
  assert.equal(await readText(ds), 'abcde');
  assert.notEqual(offset, undefined);
});

test('appendStream(): a source that is not a stream or iterable is INVALID_ARGUMENT', async () => {
  const ds = new DurableStream({ url: `${server.url}/not-used`, contentType: 'text/plain' });
  for (const source of [undefined, 5, { a: 1 }]) {
    await assert.rejects(ds.appendStream(source), (e) => e.code === 'INVALID_ARGUMENT');
  }
});

// --- bodyStream(), jsonStream(), textStream() ------------------------------------------------

test('jsonStream(): the items one by one, across batches, async iterable', async () => {
  const ds = await newStream('application/json');
  for (const m of [{ a: 1 }, [2, 3], '"x"']) await ds.append(m);
  const seen = [];
  for await (const item of ds.stream({ live: false }).jsonStream()) seen.push(item);
  assert.deepEqual(seen, [{ a: 1 }, [2, 3], 'x']);
});

test('bodyStream() and textStream(): the bytes, and the text with characters split across appends whole', async () => {
  const ds = await newStream();
  const e = new TextEncoder().encode('é');
  await ds.append('a');
  await ds.append(e.subarray(0, 1));
  await ds.append(e.subarray(1));
  const parts = [];
  for await (const chunk of ds.stream({ live: false }).bodyStream()) {
    assert.ok(chunk instanceof Uint8Array);
    parts.push(...chunk);
  }
  assert.deepEqual(parts, [...new TextEncoder().encode('aé')]);
  let text = '';
  for await (const s of ds.stream({ live: false }).textStream()) text += s;
  assert.equal(text, 'aé');
});

test('jsonStream() follows a live stream; cancelling the ReadableStream cancels the handle', async () => {
  const ds = await newStream('application/json');
  await ds.append(1);
  const feed = ds.stream({ live: 'long-poll' });
  const reader = feed.jsonStream().getReader();
  assert.deepEqual(await reader.read(), { done: false, value: 1 });
  const next = reader.read();
  await ds.append(2);
  assert.deepEqual(await within(next, 10_000, 'the live item'), { done: false, value: 2 });
  await reader.cancel();
  await within(feed.finished, 10_000, 'finished');
});

test('the streams of the other kind error with INVALID_ARGUMENT', async () => {
  const json = await newStream('application/json');
  const bytes = await newStream();
  await assert.rejects(json.stream({ live: false }).bodyStream().getReader().read(), (e) => e.code === 'INVALID_ARGUMENT' && /bodyStream/.test(e.message));
  await assert.rejects(json.stream({ live: false }).textStream().getReader().read(), (e) => e.code === 'INVALID_ARGUMENT' && /textStream/.test(e.message));
  await assert.rejects(bytes.stream({ live: false }).jsonStream().getReader().read(), (e) => e.code === 'INVALID_ARGUMENT');
});

test('a read stopped by its signal before it completed errors the ReadableStream with ABORTED', async () => {
  const ds = await newStream('application/json');
  await ds.append({ first: true });
  const controller = new AbortController();
  const reader = ds.stream({ live: 'long-poll', signal: controller.signal }).jsonStream().getReader();
  assert.deepEqual((await reader.read()).value, { first: true });
  const next = reader.read();
  controller.abort('bye');
  await assert.rejects(next, (e) => e.code === 'ABORTED' && e.cause === 'bye');
});

test('a read error reaches the ReadableStream', async () => {
  const feed = stream({ url: `${server.url}/web-streams-missing-${randomUUID()}`, live: false });
  await assert.rejects(feed.textStream().getReader().read(), (e) => e.code === 'NOT_FOUND');
});

test('where ReadableStream is not async iterable (Safari), the streams are made so, and a loop left early cancels the handle', async () => {
  const ds = await newStream('application/json');
  for (const m of [1, 2, 3]) await ds.append(m);
  const proto = ReadableStream.prototype;
  const native = Object.getOwnPropertyDescriptor(proto, Symbol.asyncIterator);
  delete proto[Symbol.asyncIterator];
  try {
    const feed = ds.stream({ live: 'long-poll' });
    const items = feed.jsonStream();
    assert.equal(typeof items[Symbol.asyncIterator], 'function');
    const seen = [];
    for await (const item of items) {
      seen.push(item);
      if (item === 2) break;
    }
    assert.deepEqual(seen, [1, 2]);
    await within(feed.finished, 10_000, 'finished');
  } finally {
    Object.defineProperty(proto, Symbol.asyncIterator, native);
  }
});

test('the ReadableStreams ask for nothing until they are read', async () => {
  const ds = await newStream();
  await ds.append('abc');
  const realFetch = globalThis.fetch;
  let fetches = 0;
  globalThis.fetch = (...args) => {
    fetches++;
    return realFetch(...args);
  };
  try {
    const feed = ds.stream({ live: false });
    const text = feed.textStream();
    await new Promise((r) => setImmediate(r));
    assert.equal(fetches, 0);
    const { value } = await text.getReader().read();
    assert.equal(value, 'abc');
    assert.equal(fetches, 1);
  } finally {
    globalThis.fetch = realFetch;
  }
});

test('against our Worker: appendStream() and writable() through dropped connections land every chunk exactly once', async () => {
  const worker = await startServer();
  const px = await proxy((post) => (post.count % 3 === 1 ? 'drop' : undefined), worker.baseUrl);
  try {
    const ds = await newStream('application/json', `${px.url}/v1/stream`);
    const chunks = Array.from({ length: 6 }, (_, i) => ({ n: i }));
    await ds.appendStream(chunks, { maxBatchItems: 2, maxInFlight: 1, signal: px.signal });
    await readableOf([{ n: 6 }, { n: 7 }]).pipeTo(ds.writable({ maxBatchItems: 1, maxInFlight: 1, signal: px.signal }));
    assert.deepEqual(await readItems(ds), [...chunks, { n: 6 }, { n: 7 }]);
    // Every third POST landed unanswered and was sent again.
    assert.deepEqual(px.posts.map((p) => p.status), [200, 204, 200, 200, 204, 200, 200, 204]);
  } finally {
    await px.close();
    await worker.stop();
  }
});

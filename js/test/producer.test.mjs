// The idempotent producer batches appends: these tests count the POSTs it sends and check what
// each carries (items, Producer-Seq), then read the stream back.
//
//   node scripts/client.mjs build && node --test js/test/
//
// Against the reference server (`@durable-streams/server`, started here). The producer lives in
// js/src/core.js; the requests go through the wasm, which calls `globalThis.fetch`, so a wrapper
// around it sees every request.
import { after, before, beforeEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { DurableStreamTestServer } from '@durable-streams/server';
import { DurableStream, IdempotentProducer, StreamClosedError, stream } from '../src/node.js';
import { within } from '../test-support/within.mjs';

let server;
const realFetch = globalThis.fetch;
/** POSTs seen: `{ seq, epoch, id, body }`, in the order they were sent. */
let posts = [];
/** When set, called with each POST; may return a replacement promise for its response. */
let intercept = null;

before(async () => {
  server = new DurableStreamTestServer({ port: 0, host: '127.0.0.1', longPollTimeout: 500 });
  await server.start();
  globalThis.fetch = (url, init = {}) => {
    if (String(init.method ?? 'GET').toUpperCase() === 'POST') {
      const headers = Object.fromEntries([...new Headers(init.headers)].map(([k, v]) => [k.toLowerCase(), String(v)]));
      const body = typeof init.body === 'string' ? init.body : new TextDecoder().decode(init.body ?? new Uint8Array());
      const post = {
        id: headers['producer-id'],
        epoch: headers['producer-epoch'] === undefined ? undefined : Number(headers['producer-epoch']),
        seq: headers['producer-seq'] === undefined ? undefined : Number(headers['producer-seq']),
        body,
      };
      if (headers['stream-closed'] === 'true') post.closed = true;
      posts.push(post);
      const replaced = intercept?.(post, () => realFetch(url, init));
      if (replaced) return replaced;
    }
    return realFetch(url, init);
  };
});

after(async () => {
  globalThis.fetch = realFetch;
  await server.stop();
});

beforeEach(() => {
  posts = [];
  intercept = null;
});

async function newStream(contentType = 'text/plain') {
  return DurableStream.create({ url: `${server.url}/producer-${randomUUID()}`, contentType });
}

async function readText(ds) {
  return stream({ url: ds.url, live: false }).text();
}

async function readItems(ds) {
  return stream({ url: ds.url, live: false }).items();
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Each distinct seq of an epoch's POSTs with its body, by seq (a resent batch counts once). */
function batchesAt(epoch) {
  const bySeq = new Map();
  for (const post of posts) if (post.epoch === epoch) bySeq.set(post.seq, post.body);
  return [...bySeq].sort((a, b) => a[0] - b[0]);
}

test('appends made together go out as one request', async () => {
  const ds = await newStream();
  const p = new IdempotentProducer(ds, 'together', { lingerMs: 20 });
  for (const s of ['item1,', 'item2,', 'item3,', 'item4,', 'item5']) p.append(s);
  assert.equal(posts.length, 0, 'nothing is sent before the linger time');
  await p.flush();
  assert.deepEqual(posts, [{ id: 'together', epoch: 0, seq: 0, body: 'item1,item2,item3,item4,item5' }]);
  assert.equal(p.nextSeq, 1);
  assert.equal(await readText(ds), 'item1,item2,item3,item4,item5');
});

test('a stream that is not JSON takes any bytes as they are, and refuses values that are not strings or bytes', async () => {
  const ds = await newStream('application/octet-stream');
  const p = new IdempotentProducer(ds, 'bytes', { lingerMs: 20 });
  const backing = new Uint8Array([0, 1, 2, 3, 4, 5, 6, 7]);
  p.append(new Uint8Array([65, 66]).buffer); // 'AB'
  p.append(new DataView(new Uint8Array([67]).buffer)); // 'C'
  p.append(new Int16Array([0x4544])); // 'DE' on a little-endian host
  p.append(backing.subarray(2, 4)); // bytes 2 and 3, not the whole buffer
  p.append('fg');
  for (const value of [{ a: 1 }, 5, null, [1]]) {
    assert.throws(() => p.append(value), (e) => e.code === 'INVALID_ARGUMENT', JSON.stringify(value));
  }
  await p.flush();
  const read = await stream({ url: ds.url, live: false }).bytes();
  assert.deepEqual([...read], [65, 66, 67, 0x44, 0x45, 2, 3, 102, 103]);
});

test('an empty string or buffer appends nothing and is not sent (a POST without a body is refused); close(\'\') closes', async () => {
  const ds = await newStream();
  const p = new IdempotentProducer(ds, 'empty', { lingerMs: 0 });
  p.append('');
  await p.flush();
  p.append(new Uint8Array(0));
  p.append('a');
  p.append('');
  await p.flush();
  assert.deepEqual(posts, [{ id: 'empty', epoch: 0, seq: 0, body: 'a' }]);
  await p.close('');
  assert.deepEqual(posts.slice(1), [{ id: 'empty', epoch: 0, seq: 1, body: '', closed: true }]);
  assert.equal(await readText(ds), 'a');
  assert.equal((await ds.head()).closed, true);
});

test('a producer that learns at flush that its stream is not JSON refuses an object alone, rather than send its String()', async () => {
  const created = await newStream('application/octet-stream');
  const p = new IdempotentProducer(new DurableStream({ url: created.url }), 'late', { lingerMs: 5 });
  p.append({ a: 1 });
  await assert.rejects(p.flush(), (e) => e.code === 'INVALID_ARGUMENT' && e.cause?.code === 'INVALID_ARGUMENT');
  assert.equal(posts.length, 0, 'nothing was sent');
  // The kind is known now: refused at once, and the producer carries on.
  assert.throws(() => p.append({ b: 2 }), (e) => e.code === 'INVALID_ARGUMENT');
  p.append('ok');
  await p.flush();
  assert.equal(await readText(created), 'ok');
});

test('values appended before a JSON stream\'s kind is known that are not JSON are refused alone; the rest lands', async () => {
  const created = await newStream('application/json');
  const errors = [];
  const p = new IdempotentProducer(created.url, 'early', { lingerMs: 5, onError: (e) => errors.push(e) });
  p.append('not json text');
  p.append({ good: 1 });
  p.append('1,2');
  p.append('"fine"');
  await assert.rejects(p.flush(), (e) => e.code === 'INVALID_ARGUMENT' && /2 values/.test(e.message));
  // Reported once, and the producer has not failed.
  await p.flush();
  p.append({ more: 2 });
  await p.close();
  assert.deepEqual(await readItems(created), [{ good: 1 }, 'fine', { more: 2 }]);
  assert.deepEqual(errors, []);
});

test('close(data) refuses a last message the stream cannot take, as append() does, and the producer stays open', async () => {
  // Known to be JSON: refused synchronously.
  const known = await newStream('application/json');
  const p = new IdempotentProducer(known, 'closer');
  p.append({ n: 1 });
  assert.throws(() => p.close('bye'), (e) => e.code === 'INVALID_ARGUMENT');
  p.append({ n: 2 }); // still open
  await p.close({ ok: true });
  assert.deepEqual(await readItems(known), [{ n: 1 }, { n: 2 }, { ok: true }]);
  // Not known yet (nothing appended, a URL): close() rejects once it has learnt the kind.
  const unknown = await newStream('application/json');
  const q = new IdempotentProducer(unknown.url, 'closer');
  await assert.rejects(q.close('bye'), (e) => e.code === 'INVALID_ARGUMENT');
  assert.equal((await unknown.head()).closed, false, 'nothing was closed');
  q.append({ n: 1 });
  await q.close({ ok: true });
  assert.deepEqual(await readItems(unknown), [{ n: 1 }, { ok: true }]);
  assert.equal((await unknown.head()).closed, true);
  // A text stream refuses an object the same way.
  const text = await newStream('text/plain');
  const r = new IdempotentProducer(text, 'closer');
  assert.throws(() => r.close({ a: 1 }), (e) => e.code === 'INVALID_ARGUMENT');
  await r.close('end');
  assert.equal(await readText(text), 'end');
});

test('lingerMs: appends after a batch left start the next one, with the next seq', async () => {
  const ds = await newStream();
  const p = new IdempotentProducer(ds, 'linger', { lingerMs: 30 });
  p.append('a');
  p.append('b');
  await sleep(150); // the batch has left
  assert.equal(posts.length, 1, 'the linger timer sends the batch without flush()');
  p.append('c');
  await p.flush();
  assert.deepEqual(
    posts.map(({ seq, body }) => [seq, body]),
    [
      [0, 'ab'],
      [1, 'c'],
    ],
  );
  assert.equal(await readText(ds), 'abc');
});

test('a lingerMs past what timers hold waits that long (at most about 24 days), rather than firing at once', async () => {
  const ds = await newStream();
  const p = new IdempotentProducer(ds, 'long-linger', { lingerMs: 2 ** 40 });
  p.append('a');
  await sleep(100);
  assert.equal(posts.length, 0, 'the batch waits for flush()');
  await p.flush();
  assert.equal(posts.length, 1);
});

test('flush() waits for the values appended before it, not for those appended after', async () => {
  const ds = await newStream();
  const p = new IdempotentProducer(ds, 'barrier', { lingerMs: 5 });
  // The batch of what is appended after the flush is held on its way until released.
  let release;
  const held = new Promise((r) => (release = r));
  intercept = (post, send) => (post.body === 'later' ? held.then(send) : undefined);
  p.append('before');
  const flushed = p.flush().then(() => 'flushed');
  p.append('later');
  const outcome = await Promise.race([flushed, sleep(3_000).then(() => 'still waiting')]);
  assert.equal(outcome, 'flushed', 'a busy producer still confirms what came before');
  assert.equal(await readText(ds), 'before');
  release();
  await p.flush();
  assert.equal(await readText(ds), 'beforelater');
});

test('maxBatchItems cuts a batch at that many items', async () => {
  const ds = await newStream();
  const p = new IdempotentProducer(ds, 'items', { lingerMs: 10_000, maxBatchItems: 2 });
  for (const s of ['1', '2', '3', '4', '5']) p.append(s);
  assert.equal(posts.length, 0, 'the batches wait for the stream type (one HEAD) before sending');
  await p.flush();
  const bySeq = [...posts].sort((x, y) => x.seq - y.seq).map(({ seq, body }) => [seq, body]);
  assert.deepEqual(bySeq, [
    [0, '12'],
    [1, '34'],
    [2, '5'],
  ]);
  assert.equal(await readText(ds), '12345');
});

test('maxBatchBytes cuts a batch once it holds that many bytes', async () => {
  const ds = await newStream();
  const p = new IdempotentProducer(ds, 'bytes', { lingerMs: 10_000, maxBatchBytes: 4, maxInFlight: 1 });
  for (const s of ['aa', 'bb', 'cc', 'é']) p.append(s); // 'é' is 2 bytes in UTF-8
  await p.flush();
  assert.deepEqual(
    posts.map(({ seq, body }) => [seq, body]),
    [
      [0, 'aabb'],
      [1, 'ccé'],
    ],
  );
  assert.equal(await readText(ds), 'aabbccé');
});

test('a value that would take the batch past maxBatchBytes starts the next batch, so values that fit alone never go out together past it', async () => {
  const ds = await newStream();
  // maxBatchBytes set to what the server takes: two values that each fit must not be sent as
  // one request the server refuses (413), which would fail the producer.
  const p = new IdempotentProducer(ds, 'cap', { lingerMs: 10_000, maxBatchBytes: 4, maxInFlight: 1 });
  for (const s of ['aaa', 'bbb', 'c', 'toolong', 'd']) p.append(s);
  await p.flush();
  assert.deepEqual(
    posts.map(({ seq, body }) => [seq, body]),
    [
      [0, 'aaa'],
      [1, 'bbbc'],
      [2, 'toolong'], // larger than the cap alone: sent alone
      [3, 'd'],
    ],
  );
  assert.equal(await readText(ds), 'aaabbbctoolongd');
});

test('a value changed after append() is sent as it was appended, so maxBatchBytes, which counted it then, still bounds the body', async () => {
  const ds = await newStream('application/json');
  // 20 bytes: what the server takes, say. {"s":"a"} fits ([, ] and all: 11 bytes).
  const p = new IdempotentProducer(ds, 'changed', { lingerMs: 10_000, maxBatchBytes: 20, maxInFlight: 1 });
  const value = { s: 'a' };
  p.append(value);
  value.s = 'a'.repeat(100); // changed before the batch goes out
  await p.flush();
  assert.deepEqual(
    posts.map(({ seq, body }) => [seq, body]),
    [[0, '[{"s":"a"}]']],
  );
  assert.deepEqual(await readItems(ds), [{ s: 'a' }]);
});

test('JSON streams: a batch is one JSON array of the messages, read back as separate items', async () => {
  const ds = await newStream('application/json');
  const p = new IdempotentProducer(ds, 'json', { lingerMs: 20 });
  p.append({ id: 1 });
  p.append([2, 3]); // one message that is an array
  p.append('"three"'); // strings are JSON text
  await p.flush();
  assert.equal(posts.length, 1);
  assert.equal(posts[0].seq, 0);
  assert.deepEqual(JSON.parse(posts[0].body), [{ id: 1 }, [2, 3], 'three']);
  assert.deepEqual(await readItems(ds), [{ id: 1 }, [2, 3], 'three']);
});

test('many small appends in flight at once arrive once each, in order', async () => {
  const ds = await newStream();
  const p = new IdempotentProducer(ds, 'pipelined', { lingerMs: 0, maxBatchItems: 3, maxInFlight: 4 });
  const want = [];
  for (let i = 0; i < 30; i++) {
    const s = `${i},`;
    want.push(s);
    p.append(s);
  }
  await p.flush();
  // A batch that overtook an earlier one is refused (409) and sent again with the same seq and
  // body, so a seq may appear more than once; the batches are the distinct seqs.
  const batches = new Map();
  for (const { seq, body } of posts) {
    if (batches.has(seq)) assert.equal(batches.get(seq), body, `seq ${seq} was resent with another body`);
    batches.set(seq, body);
  }
  const seqs = [...batches.keys()].sort((a, b) => a - b);
  assert.equal(seqs.length, 10, 'batches of maxBatchItems (3) appends');
  assert.deepEqual(seqs, seqs.map((_, i) => i), 'seqs are 0, 1, 2, ... without a gap');
  assert.equal(seqs.map((s) => batches.get(s)).join(''), want.join(''), 'batches hold the appends in order');
  assert.equal(await readText(ds), want.join(''));
});

/** The first POST reaches the server, but its response never reaches the client. */
function loseFirstResponse() {
  const lost = { count: 0 };
  intercept = (post, send) => {
    if (lost.count > 0) return null;
    lost.count++;
    return send().then(async (res) => {
      await res.arrayBuffer();
      throw new TypeError('fetch failed (response lost)');
    });
  };
  return lost;
}

test('a batch whose response is lost is sent again with the same seq and lands once', async () => {
  const ds = await newStream();
  const p = new IdempotentProducer(ds, 'lost-reply', { lingerMs: 5, maxInFlight: 1 });
  const lost = loseFirstResponse();
  p.append('x');
  p.append('y');
  await p.flush();
  p.append('z');
  await p.flush();
  assert.equal(lost.count, 1);
  assert.deepEqual(
    posts.map(({ seq, body }) => [seq, body]),
    [
      [0, 'xy'],
      [0, 'xy'],
      [1, 'z'],
    ],
  );
  assert.equal(await readText(ds), 'xyz');
});

test('a batch that fails for good fails the producer: later calls throw its error, and no later seq is sent', async () => {
  const ds = await DurableStream.create({
    url: `${server.url}/producer-${randomUUID()}`,
    contentType: 'text/plain',
    retry: { maxRetries: 1, initialDelayMs: 5, maxDelayMs: 5 },
  });
  const errors = [];
  const p = new IdempotentProducer(ds, 'outage', { onError: (e) => errors.push(e) });
  p.append('a');
  await p.flush();
  // The server is down for longer than the retry budget.
  intercept = () => Promise.resolve(new Response('down', { status: 503 }));
  p.append('b');
  const failure = await p.flush().then(
    () => assert.fail('flush() resolved during the outage'),
    (e) => e,
  );
  assert.equal(failure.code, 'UNEXPECTED_STATUS');
  assert.equal(failure.status, 503);
  // The server is back, but the producer has failed: it says so instead of sending batches
  // past the one the server never took (each would be refused as a sequence gap).
  intercept = null;
  const sent = posts.length;
  assert.throws(() => p.append('c'), (e) => e === failure);
  await assert.rejects(p.flush(), (e) => e === failure);
  await assert.rejects(p.close(), (e) => e === failure);
  assert.equal(posts.length, sent, 'nothing is sent once the producer has failed');
  assert.ok(
    posts.every((post) => post.seq <= 1),
    'no seq past the failed batch',
  );
  assert.deepEqual(errors, [failure], 'onError hears of the failure once');
  assert.equal(await readText(ds), 'a');
});

test('concurrent flush() callers all see the failure, and so does a close() racing them', async () => {
  const ds = await newStream();
  const p = new IdempotentProducer(ds, 'refused');
  intercept = () => Promise.resolve(new Response('bad', { status: 400 }));
  p.append('important');
  const results = await Promise.allSettled([p.flush(), p.flush(), p.close()]);
  assert.deepEqual(
    results.map((r) => [r.status, r.reason?.code]),
    [
      ['rejected', 'BAD_REQUEST'],
      ['rejected', 'BAD_REQUEST'],
      ['rejected', 'BAD_REQUEST'],
    ],
  );
  assert.ok(!posts.some((post) => post.closed), 'the stream is not closed over the lost data');
  intercept = null;
  assert.equal(await readText(ds), '');
});

test('autoClaim: flush() resolves after a batch past seq 0 is fenced and re-sent under a new epoch', async () => {
  const ds = await newStream();
  const a = new IdempotentProducer(ds, 'shared', { autoClaim: true });
  a.append('a0;');
  await a.flush();
  const b = new IdempotentProducer(ds, 'shared', { epoch: 1 });
  b.append('z;');
  await b.flush();
  a.append('a1;'); // seq 1 at epoch 0: refused (403), then seq 0 at epoch 2
  await within(a.flush(), 5000, 'flush()');
  assert.equal(a.epoch, 2);
  assert.equal(a.nextSeq, 1);
  assert.equal(await readText(ds), 'a0;z;a1;');
  a.append('a2;');
  await within(a.flush(), 5000, 'the next flush()');
  assert.equal(await readText(ds), 'a0;z;a1;a2;');
});

test('autoClaim with batches in flight: the fenced batches are re-sent in append order under one new epoch', async () => {
  const ds = await newStream();
  const errors = [];
  const a = new IdempotentProducer(ds, 'shared', { autoClaim: true, maxBatchItems: 1, maxInFlight: 5, onError: (e) => errors.push(e) });
  a.append('b0;');
  await a.flush(); // epoch 0 confirmed: batches are pipelined from now on
  const b = new IdempotentProducer(ds, 'shared', { epoch: 1 });
  b.append('z;');
  await b.flush();
  // The 403 for b1 comes back last, as concurrent responses may.
  intercept = (post, send) =>
    post.body === 'b1;' && post.epoch === 0
      ? send().then(async (res) => {
          await sleep(100);
          return res;
        })
      : null;
  a.append('b1;');
  a.append('b2;');
  a.append('b3;');
  await within(a.flush(), 5000, 'flush()');
  assert.deepEqual(errors, []);
  assert.equal(await readText(ds), 'b0;z;b1;b2;b3;');
  assert.equal(a.epoch, 2, 'one claim for all the fenced batches');
  assert.deepEqual(batchesAt(2), [
    [0, 'b1;'],
    [1, 'b2;'],
    [2, 'b3;'],
  ]);
});

test('autoClaim covers close(): a fenced close claims the next epoch and closes with its last message', async () => {
  const ds = await newStream();
  const a = new IdempotentProducer(ds, 'shared', { autoClaim: true });
  a.append('a;');
  await a.flush();
  const b = new IdempotentProducer(ds, 'shared', { epoch: 1 });
  b.append('b;');
  await b.flush();
  const result = await within(a.close('last;'), 5000, 'close()');
  assert.equal(result.duplicate, false);
  assert.equal(a.epoch, 2);
  const closes = posts.filter((post) => post.closed);
  assert.deepEqual(
    closes.map(({ epoch, seq, body }) => [epoch, seq, body]),
    [
      [0, 1, 'last;'],
      [2, 0, 'last;'],
    ],
  );
  assert.equal(await readText(ds), 'a;b;last;');
  assert.equal((await ds.head()).closed, true);
  assert.equal(result.finalOffset, (await ds.head()).offset);
});

test('close() is idempotent under concurrent calls, and append() throws StreamClosedError once it has started', async () => {
  const ds = await newStream();
  const p = new IdempotentProducer(ds, 'closer');
  p.append('x');
  const first = p.close();
  assert.throws(() => p.append('too late'), (e) => e instanceof StreamClosedError);
  const second = p.close();
  const [r1, r2] = await Promise.all([first, second]);
  assert.deepEqual(r1, r2);
  assert.equal(posts.filter((post) => post.closed).length, 1, 'one close request');
  assert.deepEqual(await p.close(), r1, 'a later close() gives the same result');
  assert.throws(() => p.append('later'), (e) => e instanceof StreamClosedError);
  assert.equal(await readText(ds), 'x');
  assert.equal((await ds.head()).closed, true);
});

test('a producer built from a URL with `json` set sends the stream\'s content type', async () => {
  for (const [contentType, json, data] of [
    ['application/json', true, { a: 1 }],
    ['text/plain', false, 'hello'],
  ]) {
    const ds = await newStream(contentType);
    const p = new IdempotentProducer(ds.url, 'from-url', { json });
    p.append(data);
    await p.flush();
    if (json) assert.deepEqual(await readItems(ds), [data]);
    else assert.equal(await readText(ds), data);
  }
});

test('close() without data reports no duplicate; a close with data the server already has does', async () => {
  const ds = await newStream();
  const p = new IdempotentProducer(ds, 'close-only');
  p.append('x');
  const closed = await p.close();
  assert.equal(closed.duplicate, false, 'a 204 to a close-only request is not a duplicate');
  assert.equal(closed.finalOffset, (await ds.head()).offset);

  const other = await newStream();
  const first = await new IdempotentProducer(other, 'closer').close('last');
  assert.equal(first.duplicate, false);
  // Another instance at the same epoch sends the same close (seq 0) again, as a retry would.
  const again = await new IdempotentProducer(other, 'closer').close('last');
  assert.equal(again.duplicate, true);
  assert.equal(await readText(other), 'last');
});

test('autoClaim: a new instance at an epoch an older one used claims the next epoch, and its data lands', async () => {
  const ds = await newStream();
  const old = new IdempotentProducer(ds, 'tab');
  for (const v of ['o0;', 'o1;', 'o2;']) {
    old.append(v);
    await old.flush();
  }
  // A reloaded tab: the same id at epoch 0, whose seqs 0.. the server already has.
  const reloaded = new IdempotentProducer(ds, 'tab', { autoClaim: true });
  reloaded.append('n0;');
  await within(reloaded.flush(), 5000, 'flush()');
  reloaded.append('n1;');
  await within(reloaded.flush(), 5000, 'the next flush()');
  assert.equal(reloaded.epoch, 1);
  assert.equal(await readText(ds), 'o0;o1;o2;n0;n1;');
  // Its close, data and all, lands too, and so does a close-only one of a third instance.
  const third = new IdempotentProducer(ds, 'tab', { autoClaim: true, epoch: 1 });
  third.append('t0;');
  const closed = await within(third.close('t1;'), 5000, 'close()');
  assert.equal(third.epoch, 2);
  assert.equal(closed.duplicate, false);
  assert.equal(await readText(ds), 'o0;o1;o2;n0;n1;t0;t1;');
  // The old instance is fenced: its next batch is refused, nothing of it lands.
  old.append('late;');
  await assert.rejects(old.flush(), (e) => e.code === 'STALE_EPOCH' || e.code === 'STREAM_CLOSED');
  assert.equal(await readText(ds), 'o0;o1;o2;n0;n1;t0;t1;');
});

test('autoClaim: a batch re-sent after its response was lost is a duplicate of itself, not a collision', async () => {
  const ds = await newStream();
  const p = new IdempotentProducer(ds, 'resent', { autoClaim: true, maxInFlight: 1 });
  loseFirstResponse();
  p.append('x');
  await within(p.flush(), 5000, 'flush()');
  assert.equal(p.epoch, 0, 'no epoch was claimed for its own replay');
  assert.equal(await readText(ds), 'x');
});

test('a backlog goes out in batches as large as maxBatchBytes and maxBatchItems allow, not one POST per linger', async () => {
  const ds = await newStream('application/json');
  // Each POST takes 150 ms, while values come every 2 ms: batches pile up behind the one in flight.
  intercept = (post, send) => new Promise((r) => setTimeout(r, 150)).then(send);
  const p = new IdempotentProducer(ds, 'backlog', { lingerMs: 1, maxInFlight: 1, maxBatchItems: 40 });
  for (let i = 0; i < 100; i++) {
    p.append(i);
    await new Promise((r) => setTimeout(r, 2));
  }
  await p.flush();
  const sizes = posts.map((post) => JSON.parse(post.body).length);
  assert.deepEqual(sizes.reduce((a, b) => a + b, 0), 100);
  assert.ok(sizes.every((n) => n <= 40), `no batch over maxBatchItems: ${sizes}`);
  // About 100 values in 300 ms at 150 ms a POST: a handful of POSTs, where one a linger is ~60.
  assert.ok(posts.length <= 8, `${posts.length} POSTs: ${sizes}`);
  assert.deepEqual(posts.map((post) => post.seq), posts.map((_, i) => i));
  assert.deepEqual(await stream({ url: ds.url, live: false }).items(), [...Array(100).keys()]);
});

test('merged batches stay within maxBatchBytes', async () => {
  const ds = await newStream();
  intercept = (post, send) => new Promise((r) => setTimeout(r, 100)).then(send);
  const p = new IdempotentProducer(ds, 'backlog-bytes', { lingerMs: 1, maxInFlight: 1, maxBatchBytes: 50 });
  for (let i = 0; i < 40; i++) {
    p.append('0123456789');
    await new Promise((r) => setTimeout(r, 2));
  }
  await p.flush();
  assert.ok(posts.every((post) => post.body.length <= 50), posts.map((post) => post.body.length).join());
  assert.ok(posts.length < 20, `${posts.length} POSTs`);
  assert.equal(await readText(ds), '0123456789'.repeat(40));
});

test('on a JSON stream, maxBatchBytes bounds the body as sent: the [ , ] around the values and their UTF-8 bytes count', async () => {
  const ds = await newStream('application/json');
  const bytes = (post) => new TextEncoder().encode(post.body).length;
  const bodies = () => posts.splice(0).map((post) => post.body);

  // Set to what the server takes, the limit must hold for the request: '[1,2,3]' is 7 bytes.
  for (const made of ['stream', 'url']) {
    // From a URL, the stream's kind is not known when the values are appended.
    const p = new IdempotentProducer(made === 'url' ? ds.url : ds, `framing-${made}`, { lingerMs: 10_000, maxBatchBytes: 7, maxInFlight: 1 });
    for (let i = 1; i <= 7; i++) p.append(i);
    await p.flush();
    assert.deepEqual(bodies(), ['[1,2,3]', '[4,5,6]', '[7]'], made);
  }

  // 'é' is one UTF-16 unit and two UTF-8 bytes: '["é","é"]' is 11 bytes, '["é","e"]' 10.
  const utf8 = new IdempotentProducer(ds, 'utf8', { lingerMs: 10_000, maxBatchBytes: 10, maxInFlight: 1 });
  for (const v of ['"é"', '"é"', '"e"']) utf8.append(v);
  await utf8.flush();
  assert.deepEqual(bodies(), ['["é"]', '["é","e"]']);

  // A backlog merged behind a slow request: 3 values of 12 bytes are 40 bytes framed, 4 are 53.
  intercept = (post, send) => sleep(100).then(send);
  const merged = new IdempotentProducer(ds, 'merged', { lingerMs: 1, maxInFlight: 1, maxBatchBytes: 50 });
  for (let i = 0; i < 30; i++) {
    merged.append('"0123456789"');
    await sleep(2);
  }
  await merged.flush();
  const sizes = posts.map(bytes);
  assert.ok(sizes.every((n) => n <= 50), `every body within 50 bytes: ${sizes}`);
  assert.ok(sizes.includes(40), `batches fill up to the limit: ${sizes}`);
  assert.equal(posts.reduce((n, post) => n + JSON.parse(post.body).length, 0), 30);
  posts = [];

  // A value whose body alone is over the limit still goes, alone.
  const big = new IdempotentProducer(ds, 'big', { lingerMs: 10_000, maxBatchBytes: 7 });
  for (const v of [1, '"xxxx"', 2]) big.append(v);
  await big.flush();
  assert.deepEqual(bodies(), ['[1]', '["xxxx"]', '[2]']);
  assert.equal((await readItems(ds)).length, 7 * 2 + 3 + 30 + 3);
});

test('without retry.maxRetries, a producer rides out an outage longer than the default 5 retries', async () => {
  // Backoff of 20 to 50 ms: 5 retries would be spent in about 0.2 s of a 1.5 s outage.
  const ds = await DurableStream.create({
    url: `${server.url}/producer-${randomUUID()}`,
    contentType: 'text/plain',
    retry: { initialDelayMs: 20, maxDelayMs: 50 },
  });
  const p = new IdempotentProducer(ds, 'patient');
  p.append('a');
  await p.flush();
  let refused = 0;
  intercept = () => {
    refused++;
    return Promise.reject(new TypeError('fetch failed'));
  };
  setTimeout(() => (intercept = null), 1500);
  p.append('b');
  p.append('c');
  await p.flush();
  assert.ok(refused > 6, `${refused} attempts failed before the server came back`);
  assert.equal(await readText(ds), 'abc');
});

/** Runs `body` with every HEAD answered by `answer(n)` (n counting from 1), or passed on when it returns nothing. */
async function withHeads(answer, body) {
  const inner = globalThis.fetch;
  const heads = { count: 0 };
  globalThis.fetch = (url, init = {}) => {
    if (String(init.method ?? 'GET').toUpperCase() === 'HEAD') {
      heads.count++;
      const replaced = answer(heads.count);
      if (replaced) return Promise.resolve(replaced);
    }
    return inner(url, init);
  };
  try {
    await body(heads);
  } finally {
    globalThis.fetch = inner;
  }
}

test("the HEAD that learns the stream's kind is retried as its batches are: through an outage of any length", async () => {
  const { url } = await newStream('application/json');
  // A stream with no maxRetries, whose kind is not known: the producer asks for it first.
  const ds = new DurableStream({ url, retry: { initialDelayMs: 5, maxDelayMs: 20 } });
  await withHeads(
    (n) => (n <= 10 ? new Response(null, { status: 503 }) : undefined),
    async (heads) => {
      const p = new IdempotentProducer(ds, 'p');
      p.append({ n: 1 });
      await within(p.flush(), 10_000, 'flush');
      assert.equal(heads.count, 11);
    },
  );
  assert.deepEqual(await readItems(ds), [{ n: 1 }]);
});

test("the HEAD that learns the stream's kind ends when the producer's signal aborts", async () => {
  const { url } = await newStream('application/json');
  await withHeads(
    () => new Response(null, { status: 503 }),
    async (heads) => {
      const ds = new DurableStream({ url, retry: { initialDelayMs: 100, maxDelayMs: 100 } });
      const p = new IdempotentProducer(ds, 'p', { signal: AbortSignal.timeout(300) });
      p.append({ n: 1 });
      await assert.rejects(within(p.flush(), 5_000, 'flush'), (e) => e.code === 'ABORTED');
      const sent = heads.count;
      await sleep(500);
      assert.equal(heads.count, sent, 'no HEAD is sent after the abort');
    },
  );
});

test("autoClaim: a first attempt held back by a headers function is no replay, so an older instance's duplicate is still told from its own", async () => {
  const ds = await newStream();
  const old = new IdempotentProducer(ds, 'tab');
  old.append('o0;');
  await old.flush();
  // A reloaded tab whose token service is not up yet: its first POST waits for the token.
  let calls = 0;
  const token = async () => {
    if (++calls === 1) throw new Error('token service starting');
    return 't';
  };
  const withToken = new DurableStream({ url: ds.url, contentType: 'text/plain', headers: { authorization: token }, retry: { initialDelayMs: 5 } });
  const reloaded = new IdempotentProducer(withToken, 'tab', { autoClaim: true });
  reloaded.append('n0;');
  await within(reloaded.flush(), 5000, 'flush()');
  assert.equal(reloaded.epoch, 1);
  assert.equal(await readText(ds), 'o0;n0;');
});

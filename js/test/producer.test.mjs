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
import { DurableStream, IdempotentProducer, stream } from '../src/node.js';

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
      const headers = Object.fromEntries(Object.entries(init.headers ?? {}).map(([k, v]) => [k.toLowerCase(), String(v)]));
      const body = typeof init.body === 'string' ? init.body : new TextDecoder().decode(init.body ?? new Uint8Array());
      const post = {
        id: headers['producer-id'],
        epoch: headers['producer-epoch'] === undefined ? undefined : Number(headers['producer-epoch']),
        seq: headers['producer-seq'] === undefined ? undefined : Number(headers['producer-seq']),
        body,
      };
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

test('a batch whose response is lost is sent again with the same seq and lands once', async () => {
  const ds = await newStream();
  const p = new IdempotentProducer(ds, 'lost-reply', { lingerMs: 5, maxInFlight: 1 });
  let lost = 0;
  // The first POST reaches the server, but its response never reaches the client.
  intercept = (post, send) => {
    if (lost > 0) return null;
    lost++;
    return send().then(async (res) => {
      await res.arrayBuffer();
      throw new TypeError('fetch failed (response lost)');
    });
  };
  p.append('x');
  p.append('y');
  await p.flush();
  p.append('z');
  await p.flush();
  assert.equal(lost, 1);
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

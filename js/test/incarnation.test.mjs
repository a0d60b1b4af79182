// A reader never goes on from its offset in a stream deleted and created again at its URL:
// offsets are byte positions the new stream reuses, so the reader compares the incarnation each
// response names (edgestream's `Stream-Incarnation`) with the first, and fails with
// STREAM_REPLACED; a live table starts over instead. Against our Worker; a wrapper around
// `globalThis.fetch` (which the wasm calls) takes the network down for one stream.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { WebSocket } from 'undici';
import { DurableStream, change, stream, table } from '../src/node.js';
import { startServer } from '../../scripts/dev-server.mjs';

// Node 20 has no global WebSocket.
globalThis.WebSocket ??= WebSocket;

let server;
before(async () => {
  server = await startServer({ vars: { LONG_POLL_TIMEOUT_MS: '500' } });
});
after(async () => {
  await server?.stop();
});

/** Paths whose requests fail as if the network were down. */
const down = new Set();
const realFetch = globalThis.fetch;
globalThis.fetch = (url, init = {}) => {
  if (down.has(new URL(String(url)).pathname)) return Promise.reject(new TypeError('fetch failed'));
  return realFetch(url, init);
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const fast = { initialDelayMs: 50, maxDelayMs: 200 };
const json = 'application/json';

/**
 * Takes the network down for `url` until the long-poll in flight has ended (it times out in
 * 0.5 s), deletes the stream and creates it again with `body`, and brings the network back.
 */
async function replaceWhileDown(url, body) {
  const { pathname } = new URL(url);
  down.add(pathname);
  await sleep(1200);
  await realFetch(url, { method: 'DELETE' });
  const res = await realFetch(url, { method: 'PUT', headers: { 'content-type': json }, body: JSON.stringify(body) });
  assert.equal(res.status, 201);
  down.delete(pathname);
}

test('a long-poll reader that reconnects to a stream created again fails with STREAM_REPLACED', { timeout: 20_000 }, async () => {
  const url = `${server.baseUrl}/v1/stream/incarnation-${randomUUID()}`;
  await DurableStream.create({ url, contentType: json, body: JSON.stringify([1]) });
  const h = stream({ url, live: 'long-poll', retry: fast });
  const it = h[Symbol.asyncIterator]();
  const first = (await it.next()).value;
  assert.deepEqual(first.items, [1]);
  const pending = it.next();
  // The same length of data: the reader's offset is valid in the new stream.
  await replaceWhileDown(url, [2, 3]);
  await assert.rejects(pending, (e) => e.code === 'STREAM_REPLACED' && e.name === 'DurableStreamError');
  await assert.rejects(h.finished, (e) => e.code === 'STREAM_REPLACED');
  assert.equal(typeof first.incarnation, 'string');
  assert.equal(h.incarnation, first.incarnation);
});

test('a reader given the incarnation it saved with its offset refuses another, and reads on in the same one', { timeout: 20_000 }, async () => {
  const url = `${server.baseUrl}/v1/stream/incarnation-${randomUUID()}`;
  const ds = await DurableStream.create({ url, contentType: json, body: JSON.stringify(['a']) });
  const first = stream({ url, live: false });
  const batches = [];
  for await (const b of first) batches.push(b);
  const { offset, incarnation } = batches.at(-1);
  await ds.append('"b"');
  assert.deepEqual(await stream({ url, live: false, offset, incarnation }).items(), ['b']);
  await ds.delete();
  const again = await DurableStream.create({ url, contentType: json, body: JSON.stringify(['x', 'y']) });
  for (const live of [false, 'long-poll', 'sse', 'ws']) {
    const h = stream({ url, live, offset, incarnation, retry: fast });
    await assert.rejects(h.items(), (e) => e.code === 'STREAM_REPLACED', `live: ${live}`);
  }
  // From `now` a reader that knows the type goes live at once: the SSE response says which
  // stream it reads, and a socket, whose handshake's headers a client cannot read, is refused
  // by the server for the incarnation it names.
  for (const live of ['sse', 'ws']) {
    const h = stream({ url, live, offset: 'now', json: true, incarnation, retry: fast });
    await assert.rejects(h.items(), (e) => e.code === 'STREAM_REPLACED', `live: ${live} from now`);
    assert.equal(h.mode, live);
  }
  assert.deepEqual(await stream({ url, live: false, offset }).items(), ['y']);
  await again.delete();
});

test('a reader resuming from an offset the stream created again cannot take learns it was replaced, not that its offset is bad', { timeout: 20_000 }, async () => {
  const url = `${server.baseUrl}/v1/stream/incarnation-${randomUUID()}`;
  const ds = await DurableStream.create({ url, contentType: json, body: JSON.stringify(['a', 'bb', 'ccc']) });
  const batches = [];
  for await (const b of stream({ url, live: false })) batches.push(b);
  const { offset, incarnation } = batches.at(-1);
  await ds.delete();
  // Shorter than the saved offset: that offset is past the new stream's end (400).
  const again = await DurableStream.create({ url, contentType: json, body: JSON.stringify(['x']) });
  for (const live of [false, 'long-poll', 'sse', 'ws']) {
    const h = stream({ url, live, offset, incarnation, retry: fast });
    await assert.rejects(h.items(), (e) => e.code === 'STREAM_REPLACED', `live: ${live}`);
  }
  await again.delete();
});

test('a live table whose stream is created again while it reconnects starts over', { timeout: 20_000 }, async () => {
  const url = `${server.baseUrl}/v1/stream/incarnation-table-${randomUUID()}`;
  await DurableStream.create({ url, contentType: json, body: JSON.stringify([change.insert('u', 'a', 1)]) });
  const t = table({ url, live: 'long-poll', retry: fast });
  await t.ready();
  const updates = [];
  // What the table says of itself as each update comes: with the reset, it holds nothing and is
  // not up to date, as the update says.
  const seen = [];
  t.subscribe((u) => {
    updates.push(u);
    seen.push({ upToDate: t.upToDate, offset: t.offset, size: t.size });
  });
  const before = t.snapshot().incarnation;
  await replaceWhileDown(url, [change.insert('u', 'a', 2), change.insert('u', 'b', 3)]);
  const deadline = Date.now() + 10_000;
  while (!(t.upToDate && t.get('u', 'b') === 3) && Date.now() < deadline) await sleep(20);
  t.cancel(); // before the assertions: a live table left reading would keep the test running
  assert.equal(updates[0]?.reset, true);
  assert.deepEqual(seen[0], { upToDate: false, offset: '-1', size: 0 });
  assert.deepEqual([...t.entries('u')], [['a', 2], ['b', 3]]);
  assert.equal(typeof before, 'string');
  assert.notEqual(t.snapshot().incarnation, before);
  await t.finished;
});

test('a table given an offset and the incarnation it came from starts over on a stream created again', { timeout: 20_000 }, async () => {
  const url = `${server.baseUrl}/v1/stream/incarnation-table-option-${randomUUID()}`;
  const ds = await DurableStream.create({ url, contentType: json, body: JSON.stringify([change.insert('u', 'a', 1)]) });
  const batches = [];
  for await (const b of stream({ url, live: false })) batches.push(b);
  const { offset, incarnation } = batches.at(-1);
  await ds.delete();
  await DurableStream.create({
    url,
    contentType: json,
    body: JSON.stringify([change.insert('u', 'a', 2), change.insert('u', 'b', 3)]),
  });
  const t = table({ url, live: false, offset, incarnation, retry: fast });
  await t.ready();
  await t.finished;
  // Read on from `offset` in the new stream, it would hold `b` alone.
  assert.deepEqual([...t.entries('u')], [['a', 2], ['b', 3]]);
});

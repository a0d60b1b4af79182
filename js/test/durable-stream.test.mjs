// DurableStream on a JSON stream: one append() is one message, whatever the value, as with the
// producer. (A JSON array body is the protocol's batch append, so the client wraps each value.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { DurableStream, IdempotentProducer, stream } from '../src/node.js';
import { useReferenceServer } from '../test-support/reference-server.mjs';

const server = useReferenceServer();

const url = () => `${server.url}/json-${randomUUID()}`;
const items = (ds) => stream({ url: ds.url, live: false }).items();

test('append(value) appends exactly one message, arrays included, as the producer does', async () => {
  const ds = await DurableStream.create({ url: url(), contentType: 'application/json' });
  await ds.append([1, 2, 3]);
  await ds.append('[4,5]'); // strings are JSON text: still one message
  await ds.append({ a: 1 });
  await ds.append([]);
  await ds.append(new TextEncoder().encode('[6]')); // bytes are JSON text too
  const p = new IdempotentProducer(ds, 'p');
  p.append([7, 8]);
  await p.flush();
  assert.deepEqual(await items(ds), [[1, 2, 3], [4, 5], { a: 1 }, [], [6], [7, 8]]);
});

test('close({ body }) takes one message; create({ body }) takes the initial content, an array being a list of messages', async () => {
  const ds = await DurableStream.create({ url: url(), contentType: 'application/json', body: [0, 1] });
  await ds.append('"middle"');
  const closed = await ds.close({ body: [2, 3] });
  assert.equal(closed.closed, true);
  assert.deepEqual(await items(ds), [0, 1, 'middle', [2, 3]]);
  const one = await DurableStream.create({ url: url(), contentType: 'application/json', body: { first: true } });
  assert.deepEqual(await items(one), [{ first: true }]);
  const nested = await DurableStream.create({ url: url(), contentType: 'application/json', body: '[[0,1]]' });
  assert.deepEqual(await items(nested), [[0, 1]]);
});

test('a value that is not JSON is refused before anything is sent', async () => {
  const ds = await DurableStream.create({ url: url(), contentType: 'application/json' });
  await assert.rejects(ds.append(undefined), (e) => e.code === 'INVALID_ARGUMENT');
  await assert.rejects(ds.close({ body: () => {} }), (e) => e.code === 'INVALID_ARGUMENT');
  await assert.rejects(DurableStream.create({ url: url(), contentType: 'application/json', body: Symbol('x') }), (e) => e.code === 'INVALID_ARGUMENT');
  // Text that is not exactly one JSON value: wrapped, '1,2' would have been two messages.
  for (const text of ['1,2', '{"a":1} {"b":2}', 'hello', '']) {
    await assert.rejects(ds.append(text), (e) => e.code === 'INVALID_ARGUMENT', text);
    await assert.rejects(ds.append(new TextEncoder().encode(text)), (e) => e.code === 'INVALID_ARGUMENT', text);
    assert.throws(() => new IdempotentProducer(ds, 'p').append(text), (e) => e.code === 'INVALID_ARGUMENT', text);
  }
  assert.deepEqual(await items(ds), []);
  assert.equal((await ds.head()).closed, false);
});

test('create() takes the create options the handle was made with; its own options override them', async () => {
  const made = new DurableStream({ url: url(), contentType: 'application/json', ttlSeconds: 60, body: [{ seed: 1 }] });
  assert.equal((await made.create()).status, 201);
  assert.equal((await made.head()).ttlSeconds, 60);
  assert.deepEqual(await items(made), [{ seed: 1 }]);
  // Made by the static create(), then created again: the same configuration, so 200, not 409.
  const again = await DurableStream.create({ url: url(), contentType: 'application/json', ttlSeconds: 60 });
  assert.equal((await again.create()).status, 200);
  // What create() is given wins over the handle's (a TTL the stream does not have: 409), an
  // expiry of the other kind included (not both sent: 400).
  await assert.rejects(again.create({ ttlSeconds: 30 }), (e) => e.status === 409);
  const until = new Date(Date.now() + 3_600_000).toISOString();
  const other = new DurableStream({ url: url(), contentType: 'application/json', ttlSeconds: 60 });
  assert.equal((await other.create({ expiresAt: until })).status, 201);
  assert.equal((await other.head()).ttlSeconds, undefined);
});

test('a Promise is refused as a JSON value (JSON.stringify would write {}), and nothing is sent', async () => {
  const ds = await DurableStream.create({ url: url(), contentType: 'application/json' });
  await assert.rejects(ds.append(Promise.resolve(1)), (e) => e.code === 'INVALID_ARGUMENT' && /await/.test(e.message));
  const p = new IdempotentProducer(ds, 'p', { json: true });
  assert.throws(() => p.append(Promise.resolve(2)), (e) => e.code === 'INVALID_ARGUMENT');
  await p.close();
  assert.deepEqual(await items(ds), []);
});

test('other streams take strings and bytes as they are', async () => {
  const ds = await DurableStream.create({ url: url(), contentType: 'text/plain', body: '[a]' });
  await ds.append('[b]');
  await ds.append(new TextEncoder().encode('[c]'));
  await ds.close({ body: '[d]' });
  assert.equal(await stream({ url: ds.url, live: false }).text(), '[a][b][c][d]');
});

test('a plain append whose connection fails after sending is not sent again; a 503 is retried', async () => {
  const http = await import('node:http');
  const received = [];
  let refuseNext = false;
  const fake = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      if (req.method !== 'POST') {
        res.writeHead(200, { 'content-type': 'text/plain', 'stream-next-offset': '0' });
        return res.end();
      }
      if (refuseNext) {
        // Not stored: the client may send it again.
        refuseNext = false;
        res.writeHead(503, { 'retry-after': '0', 'content-type': 'text/plain' });
        return res.end('busy');
      }
      received.push(body);
      // Stored, then the connection drops before the answer: the append landed.
      if (received.length === 1) return req.socket.destroy();
      res.writeHead(204, { 'stream-next-offset': String(received.length) });
      res.end();
    });
  });
  await new Promise((r) => fake.listen(0, '127.0.0.1', r));
  try {
    const ds = new DurableStream({ url: `http://127.0.0.1:${fake.address().port}/s`, contentType: 'text/plain', retry: { initialDelayMs: 1 } });
    await assert.rejects(ds.append('once'), (e) => e.code === 'NETWORK_ERROR');
    assert.deepEqual(received, ['once'], 'sent once: it may have landed');
    refuseNext = true;
    await ds.append('twice');
    assert.deepEqual(received, ['once', 'twice']);
  } finally {
    fake.closeAllConnections();
    await new Promise((r) => fake.close(r));
  }
});

test('a close without data whose connection fails is sent again (closing twice is harmless); a close with data is not', async () => {
  const http = await import('node:http');
  const closes = [];
  let dropFirst = true;
  const fake = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      closes.push(body);
      // Closed, then the connection drops before the answer.
      if (dropFirst) {
        dropFirst = false;
        return req.socket.destroy();
      }
      res.writeHead(204, { 'stream-next-offset': '1', 'stream-closed': 'true' });
      res.end();
    });
  });
  await new Promise((r) => fake.listen(0, '127.0.0.1', r));
  try {
    const ds = new DurableStream({ url: `http://127.0.0.1:${fake.address().port}/s`, contentType: 'text/plain', retry: { initialDelayMs: 1 } });
    const closed = await ds.close();
    assert.equal(closed.closed, true);
    assert.deepEqual(closes, ['', '']);
    closes.length = 0;
    dropFirst = true;
    await assert.rejects(ds.close({ body: 'last' }), (e) => e.code === 'NETWORK_ERROR');
    assert.deepEqual(closes, ['last'], 'sent once: its data may have landed');
  } finally {
    fake.closeAllConnections();
    await new Promise((r) => fake.close(r));
  }
});

test("append() with producer headers of the caller's own reports a batch the server already had as duplicate, as AppendResult says", async () => {
  const ds = await DurableStream.create({ url: url(), contentType: 'application/json' });
  // The protocol's idempotent append, written by hand rather than through an IdempotentProducer.
  const own = new DurableStream({ url: ds.url, headers: { 'Producer-Id': 'me', 'Producer-Epoch': '0', 'Producer-Seq': '0' } });
  const first = await own.append({ n: 1 });
  assert.equal(first.duplicate, false);
  const again = await own.append({ n: 1 });
  assert.equal(again.status, 204);
  assert.equal(again.duplicate, true);
  // A plain append is never a duplicate, whatever its status.
  assert.equal((await ds.append({ n: 2 })).duplicate, false);
  assert.deepEqual(await items(ds), [{ n: 1 }, { n: 2 }]);
});

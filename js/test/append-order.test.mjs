// A stream's append() calls land in the order they were made, as @durable-streams/client's do:
// one request at a time, the appends made while one is out going together in the next.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { DurableStream, stream } from '../src/node.js';
import { useReferenceServer } from '../test-support/reference-server.mjs';

const server = useReferenceServer();

/** A fetch that counts POSTs and holds each for `holdMs` before sending it, so requests could overtake. */
function countingFetch(holdMs) {
  const posts = [];
  const fn = async (input, init) => {
    const req = new Request(input, init);
    if (req.method === 'POST') {
      posts.push(req);
      // The first request waits longest: without an order, later ones would land first.
      await new Promise((r) => setTimeout(r, posts.length === 1 ? holdMs * 3 : holdMs * Math.random()));
    }
    return fetch(req);
  };
  return { fn, posts };
}

const read = (url, json) => (json ? stream({ url, live: false }).items() : stream({ url, live: false }).text());

test('concurrent appends to a JSON stream land in call order, in few requests', async () => {
  const url = `${server.url}/order-${randomUUID()}`;
  const { fn, posts } = countingFetch(30);
  const ds = await DurableStream.create({ url, contentType: 'application/json', fetch: fn });
  const calls = [ds.append({ i: 0 })];
  await new Promise((r) => setTimeout(r, 10)); // the first is out
  for (let i = 1; i < 50; i++) calls.push(ds.append({ i }));
  const results = await Promise.all(calls);
  assert.deepEqual(await read(url, true), Array.from({ length: 50 }, (_, i) => ({ i })));
  // The first goes alone; the 49 made while it was out share the next request.
  assert.equal(posts.length, 2);
  assert.equal(results[0].offset === results[1].offset, false);
  assert.equal(results[1].offset, results[49].offset, 'appends sent together resolve to their request\'s result');
});

test('concurrent appends of text and bytes land in call order; an empty one is refused alone', async () => {
  const url = `${server.url}/order-${randomUUID()}`;
  const { fn, posts } = countingFetch(30);
  const ds = await DurableStream.create({ url, contentType: 'text/plain', fetch: fn });
  const calls = [ds.append('0,')];
  await new Promise((r) => setTimeout(r, 10));
  for (let i = 1; i < 40; i++) calls.push(ds.append(i % 2 ? `${i},` : new TextEncoder().encode(`${i},`)));
  const empty = assert.rejects(ds.append(''), (e) => e.status === 400);
  calls.push(ds.append('last'));
  await Promise.all(calls);
  await empty;
  assert.equal(await read(url, false), Array.from({ length: 40 }, (_, i) => `${i},`).join('') + 'last');
  assert.equal(posts.length, 4, 'the first, the 39 behind it, the empty one, the last');
});

test('close() lands after the appends made before it; appends after it are refused', async () => {
  const url = `${server.url}/order-${randomUUID()}`;
  const { fn } = countingFetch(20);
  const ds = await DurableStream.create({ url, contentType: 'application/json', fetch: fn });
  const before = [ds.append(1), ds.append(2), ds.append(3)];
  const closing = ds.close({ body: 4 });
  const after = ds.append(5);
  await Promise.all(before);
  assert.equal((await closing).closed, true);
  await assert.rejects(after, (e) => e.code === 'STREAM_CLOSED');
  assert.deepEqual(await read(url, true), [1, 2, 3, 4]);
});

test('an append aborted while waiting its turn is not sent, and the others still land in order', async () => {
  const url = `${server.url}/order-${randomUUID()}`;
  const { fn } = countingFetch(50);
  const ds = await DurableStream.create({ url, contentType: 'application/json', fetch: fn });
  const ac = new AbortController();
  const first = ds.append('"a"');
  const dropped = ds.append('"b"', { signal: ac.signal });
  const third = ds.append('"c"');
  ac.abort(new Error('changed my mind'));
  await assert.rejects(dropped, (e) => e.code === 'ABORTED' && e.cause?.message === 'changed my mind');
  await Promise.all([first, third]);
  assert.deepEqual(await read(url, true), ['a', 'c']);
});

test('a value that cannot be sent is refused alone; the appends around it land', async () => {
  const url = `${server.url}/order-${randomUUID()}`;
  const { fn, posts } = countingFetch(30);
  const ds = await DurableStream.create({ url, contentType: 'application/octet-stream', fetch: fn });
  const a = ds.append('a');
  const b = ds.append('b');
  const bad = ds.append({ not: 'bytes' });
  const c = ds.append('c');
  await assert.rejects(bad, (e) => e.code === 'INVALID_ARGUMENT');
  await Promise.all([a, b, c]);
  assert.equal(await read(url, false), 'abc');
  assert.equal(posts.length, 2, 'a and b together, c; the bad value is refused before sending');
});

test('a refused request rejects every append in it, and the next request goes on', async () => {
  const url = `${server.url}/order-${randomUUID()}`;
  let posts = 0;
  const fn = async (input, init) => {
    const req = new Request(input, init);
    if (req.method !== 'POST') return fetch(req);
    if (++posts === 2) return new Response('no', { status: 400 });
    await new Promise((r) => setTimeout(r, 30));
    return fetch(req);
  };
  const ds = await DurableStream.create({ url, contentType: 'application/json', fetch: fn });
  const first = ds.append(0);
  await new Promise((r) => setTimeout(r, 10));
  const refused = [1, 2].map((v) => assert.rejects(ds.append(v), (e) => e.status === 400));
  await first;
  await Promise.all(refused);
  await ds.append(3);
  assert.deepEqual(await read(url, true), [0, 3]);
  assert.equal(posts, 3);
});

test('a request whose appends were all aborted by their own signals is stopped, and the line goes on', async () => {
  const url = `${server.url}/order-${randomUUID()}`;
  const posts = [];
  // The first POST is held a moment; the second (the appends made meanwhile) never answers
  // until its signal aborts, as a stalled connection would not.
  const fn = async (input, init) => {
    const req = new Request(input, init);
    if (req.method === 'POST') {
      posts.push(req);
      if (posts.length === 1) await new Promise((r) => setTimeout(r, 50));
      if (posts.length === 2) await new Promise((_, reject) => req.signal.addEventListener('abort', () => reject(req.signal.reason), { once: true }));
    }
    return fetch(req);
  };
  const ds = await DurableStream.create({ url, contentType: 'application/json', fetch: fn });
  const first = ds.append(1);
  await new Promise((r) => setTimeout(r, 10)); // the first is out
  const acs = [new AbortController(), new AbortController()];
  const held = acs.map((ac, i) => ds.append(2 + i, { signal: ac.signal }));
  await first;
  while (posts.length < 2) await new Promise((r) => setTimeout(r, 5));
  for (const ac of acs) ac.abort(new Error('gave up waiting'));
  for (const p of held) await assert.rejects(p, (e) => e.code === 'ABORTED');
  // Nobody waits for the stalled request any more: it is stopped, and the next append is sent.
  const last = await Promise.race([ds.append(4), new Promise((r) => setTimeout(() => r('stuck'), 3000))]);
  assert.notEqual(last, 'stuck', 'the append after a stalled request whose appends all gave up never settled');
  assert.deepEqual(await read(url, true), [1, 4]);
  assert.equal(posts.length, 3);
});

test('appends sent together take at most 1 MiB of body, counted in UTF-8 bytes', async () => {
  const url = `${server.url}/order-${randomUUID()}`;
  const sizes = [];
  const fn = async (input, init) => {
    const req = new Request(input, init);
    if (req.method !== 'POST') return fetch(req);
    const body = new Uint8Array(await req.arrayBuffer());
    sizes.push(body.length);
    await new Promise((r) => setTimeout(r, 30));
    return fetch(req.url, { method: 'POST', headers: req.headers, body });
  };
  const ds = await DurableStream.create({ url, contentType: 'application/json', fetch: fn });
  const first = ds.append(0);
  await new Promise((r) => setTimeout(r, 10));
  // Five of 400,008 bytes of JSON each (200,000 two-byte characters), 200,008 UTF-16 units:
  // two to a request, where counting units would have sent all five (2 MB) together.
  const big = { s: 'é'.repeat(200_000) };
  await Promise.all([first, ...Array.from({ length: 5 }, () => ds.append(big))]);
  assert.deepEqual(sizes.slice(1), [800_019, 800_019, 400_010]);
  assert.equal((await read(url, true)).length, 6);
});

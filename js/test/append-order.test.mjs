// A stream's append() calls land in the order they were made, as @durable-streams/client's do:
// one request at a time, the appends made while one is out going together in the next.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { DurableStream, IdempotentProducer, stream } from '../src/node.js';
import { useReferenceServer } from '../test-support/reference-server.mjs';
import { startServer } from '../../scripts/dev-server.mjs';

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

// Our Worker with MAX_APPEND_BYTES far under the 1 MiB a batch may take: a batch its appends would
// each fit is refused (413) as a whole, and is sent again in parts.
const LIMIT = 1000;
let worker;
before(async () => {
  worker = await startServer({ vars: { MAX_APPEND_BYTES: String(LIMIT) } });
});
after(async () => {
  await worker?.stop();
});

/** A fetch that notes each POST's body size and status, holding the first a moment so that appends wait behind it. */
function notingFetch() {
  const posts = [];
  const fn = async (input, init) => {
    const req = new Request(input, init);
    if (req.method !== 'POST') return fetch(req);
    const body = new Uint8Array(await req.arrayBuffer());
    if (!posts.length) await new Promise((r) => setTimeout(r, 50));
    const res = await fetch(req.url, { method: 'POST', headers: req.headers, body, signal: req.signal });
    posts.push({ size: body.length, status: res.status, text: new TextDecoder().decode(body) });
    return res;
  };
  return { fn, posts };
}

test('a batch the server refuses as too large (413) goes again in parts; an append too large alone is refused alone', { timeout: 30_000 }, async () => {
  const url = `${worker.baseUrl}/v1/stream/split-${randomUUID()}`;
  const { fn, posts } = notingFetch();
  const ds = await DurableStream.create({ url, contentType: 'application/json', fetch: fn });
  const first = ds.append({ i: 0 });
  await new Promise((r) => setTimeout(r, 10)); // the first is out
  // 40 messages of about 100 bytes (4 KB together, each under the limit), one of 2 KB among them.
  const message = (i) => ({ i, pad: 'x'.repeat(90) });
  const calls = [];
  for (let i = 1; i <= 40; i++) calls.push(ds.append(message(i)));
  const large = { pad: 'y'.repeat(2 * LIMIT) };
  const tooLarge = ds.append(large);
  for (let i = 41; i <= 80; i++) calls.push(ds.append(message(i)));
  await assert.rejects(tooLarge, (e) => e.status === 413 && e.code === 'PAYLOAD_TOO_LARGE');
  const results = [await first, ...(await Promise.all(calls))];
  assert.deepEqual(await read(url, true), [{ i: 0 }, ...Array.from({ length: 80 }, (_, i) => message(i + 1))]);
  // Each append resolves to its own request's result: offsets never go back, and the last is the tail.
  for (let i = 1; i < results.length; i++) assert.ok(results[i].offset >= results[i - 1].offset, `offset ${i} went back`);
  assert.equal(results.at(-1).offset, (await ds.head()).offset);
  // Every request that landed fits the limit; the ones refused were batches, or the large one alone.
  assert.ok(posts.every((p) => p.status !== 200 && p.status !== 204 || p.size <= LIMIT), JSON.stringify(posts));
  const alone = posts.filter((p) => p.text === JSON.stringify([large]));
  assert.deepEqual(alone.map((p) => p.status), [413], 'the large append is sent alone once, and refused');
});

test('concatenated bytes refused as too large (413) go again in parts, in call order', { timeout: 30_000 }, async () => {
  const url = `${worker.baseUrl}/v1/stream/split-${randomUUID()}`;
  const { fn, posts } = notingFetch();
  const ds = await DurableStream.create({ url, contentType: 'text/plain', fetch: fn });
  const first = ds.append('start;');
  await new Promise((r) => setTimeout(r, 10));
  const chunk = (i) => `${i}:${'z'.repeat(300)};`;
  const calls = Array.from({ length: 12 }, (_, i) => ds.append(i % 2 ? chunk(i) : new TextEncoder().encode(chunk(i))));
  await Promise.all([first, ...calls]);
  assert.equal(await read(url, false), 'start;' + Array.from({ length: 12 }, (_, i) => chunk(i)).join(''));
  assert.ok(posts.some((p) => p.status === 413), 'the whole batch was tried first');
  assert.ok(posts.filter((p) => p.status !== 413).length < 13, 'the parts are batches, not one append each');
});

test('an append aborted while its batch is out is not sent again when the batch is refused as too large', { timeout: 30_000 }, async () => {
  const url = `${worker.baseUrl}/v1/stream/split-${randomUUID()}`;
  const bodies = [];
  let release;
  const held = new Promise((r) => (release = r));
  const fn = async (input, init) => {
    const req = new Request(input, init);
    if (req.method !== 'POST') return fetch(req);
    const body = await req.text();
    bodies.push(body);
    // The first is held so that the rest wait behind it; the second (their batch) until told.
    await (bodies.length === 1 ? new Promise((r) => setTimeout(r, 50)) : bodies.length === 2 ? held : undefined);
    return fetch(req.url, { method: 'POST', headers: req.headers, body });
  };
  const ds = await DurableStream.create({ url, contentType: 'application/json', fetch: fn });
  const first = ds.append({ s: 'first' });
  await new Promise((r) => setTimeout(r, 10));
  const ac = new AbortController();
  // Five of about 260 bytes: over the limit together, each under it alone, two to a request
  // once it has been refused.
  const values = ['a', 'b', 'c', 'd', 'e'].map((k) => ({ s: k + 'p'.repeat(250) }));
  const [a, b, ...rest] = values.map((v, i) => ds.append(v, i === 1 ? { signal: ac.signal } : {}));
  await first;
  while (bodies.length < 2) await new Promise((r) => setTimeout(r, 5));
  assert.equal(JSON.parse(bodies[1]).length, 5, 'the five went together');
  ac.abort(new Error('no longer wanted'));
  await assert.rejects(b, (e) => e.code === 'ABORTED');
  release();
  await Promise.all([a, ...rest]);
  assert.deepEqual(await read(url, true), [{ s: 'first' }, values[0], ...values.slice(2)]);
  assert.ok(bodies.slice(2).every((body) => !body.includes(values[1].s)), 'the aborted append was sent again');
});

test('a refused batch of 200,000 appends goes again whole, past the most arguments a call takes', { timeout: 120_000 }, async () => {
  // A server in the test's own fetch, refusing bodies over the limit as the Worker does: over
  // the network, a socket left idle while the test's event loop is busy with 200,000 appends can
  // be closed under the client by the server's keep-alive timeout.
  const stored = [];
  const fn = async (input, init) => {
    const body = await new Request(input, init).text();
    if (body.length > LIMIT) return new Response(`body is larger than ${LIMIT} bytes`, { status: 413 });
    stored.push(...JSON.parse(body));
    return new Response(null, { status: 204, headers: { 'Stream-Next-Offset': String(stored.length).padStart(16, '0') } });
  };
  const ds = new DurableStream({ url: 'http://127.0.0.1:9/v1/stream/x', contentType: 'application/json', fetch: fn });
  const count = 200_000;
  const first = ds.append(-1);
  const calls = Array.from({ length: count }, (_, i) => ds.append(i % 10));
  const results = await Promise.all([first, ...calls]);
  assert.equal(stored.length, count + 1);
  assert.ok(stored.every((v, i) => v === (i ? (i - 1) % 10 : -1)), 'out of order');
  assert.equal(results.at(-1).offset, String(count + 1).padStart(16, '0'));
});

test('a producer batch refused as too large (413) goes again in parts, each value once and in order; one too large alone fails the producer', { timeout: 60_000 }, async () => {
  for (const [kind, contentType, maxInFlight] of [['json', 'application/json', 5], ['bytes', 'text/plain', 1]]) {
    const url = `${worker.baseUrl}/v1/stream/psplit-${randomUUID()}`;
    const { fn, posts } = notingFetch();
    const ds = await DurableStream.create({ url, contentType });
    // maxBatchBytes at its default (1 MiB), far over the server's 1000 bytes.
    const p = new IdempotentProducer(ds, `split-${kind}`, { lingerMs: 50, maxInFlight, fetch: fn });
    const value = (i) => (kind === 'json' ? { i, pad: 'x'.repeat(90) } : `${i}:${'z'.repeat(95)};`);
    for (let i = 0; i < 30; i++) p.append(value(i));
    await p.flush();
    // More after the split: batches now take at most half the refused size.
    for (let i = 30; i < 60; i++) p.append(value(i));
    await p.flush();
    const all = Array.from({ length: 60 }, (_, i) => value(i));
    assert.deepEqual(await read(url, kind === 'json'), kind === 'json' ? all : all.join(''));
    assert.ok(posts.some((q) => q.status === 413), 'the whole batch was tried first');
    assert.ok(posts.every((q) => q.status === 413 || q.size <= LIMIT), JSON.stringify(posts.map((q) => [q.size, q.status])));
    assert.ok(posts.filter((q) => q.status !== 413).length < 30, 'the parts are batches, not one value each');
    // A value too large alone is refused, and fails the producer as before.
    p.append(kind === 'json' ? { pad: 'y'.repeat(2 * LIMIT) } : 'y'.repeat(2 * LIMIT));
    await assert.rejects(p.flush(), (e) => e.status === 413);
  }
});

test('a producer batch refused as too large after an attempt that may have landed is not split: the producer fails', { timeout: 30_000 }, async () => {
  const url = `${worker.baseUrl}/v1/stream/psplit-${randomUUID()}`;
  const ds = await DurableStream.create({ url, contentType: 'application/json' });
  let posts = 0;
  // The first attempt's connection fails after the request went out: it may have been stored,
  // so its (epoch, seq) must not carry other data.
  const fn = async (input, init) => {
    const req = new Request(input, init);
    if (req.method === 'POST' && posts++ === 0) throw new TypeError('fetch failed');
    return fetch(req);
  };
  const p = new IdempotentProducer(ds, 'unsure', { lingerMs: 20, fetch: fn, onError: () => {} });
  for (let i = 0; i < 30; i++) p.append({ i, pad: 'x'.repeat(90) });
  await assert.rejects(p.flush(), (e) => e.status === 413);
  assert.equal(posts, 2, 'sent once more, then refused');
  assert.deepEqual(await read(url, true), []);
});

test('a producer batch refused as too large while a later batch is out: with autoClaim, its parts and the later batch go again in order at a new epoch; without, the producer fails', { timeout: 60_000 }, async () => {
  for (const autoClaim of [true, false]) {
    const url = `${worker.baseUrl}/v1/stream/psplit-${randomUUID()}`;
    const ds = await DurableStream.create({ url, contentType: 'application/json' });
    const seen = [];
    let bigOut;
    const big = new Promise((r) => (bigOut = r));
    // The 413 is held until a later batch has been answered, so that one is out meanwhile.
    const fn = async (input, init) => {
      const req = new Request(input, init);
      const body = req.method === 'POST' ? await req.text() : undefined;
      if (body?.length > LIMIT) bigOut();
      const res = await fetch(req.url, { method: req.method, headers: req.headers, body, signal: req.signal });
      seen.push([res.status, body?.length]);
      if (res.status === 413) while (!seen.some(([status]) => status === 409)) await new Promise((r) => setTimeout(r, 10));
      return res;
    };
    const p = new IdempotentProducer(ds, `later-${autoClaim}`, { autoClaim, lingerMs: 20, maxInFlight: 5, fetch: fn, onError: () => {} });
    p.append({ first: true });
    await p.flush();
    const value = (i) => ({ i, pad: 'x'.repeat(90) });
    for (let i = 0; i < 30; i++) p.append(value(i));
    await big;
    p.append({ last: true });
    if (!autoClaim) {
      await assert.rejects(p.flush(), (e) => e.status === 413);
      assert.deepEqual(await read(url, true), [{ first: true }]);
      continue;
    }
    await p.flush();
    assert.deepEqual(await read(url, true), [{ first: true }, ...Array.from({ length: 30 }, (_, i) => value(i)), { last: true }]);
    assert.ok(seen.some(([status]) => status === 409), 'the later batch was out');
    // A part refused again while the later batch is out moves on to one more epoch.
    assert.ok(p.epoch >= 1, `epoch ${p.epoch}`);
  }
});

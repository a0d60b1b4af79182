// Forks from the client: `create({ forkedFrom, forkOffset, forkSubOffset })` sends the fork
// headers the server reads (the source's path, whether given as a URL or a path), bad options are
// refused with INVALID_ARGUMENT before anything is sent, and the server's refusals are typed
// errors. Against our Worker (forks are not in the reference server) and a server that records
// what it is sent.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { DurableStream, stream } from '../src/node.js';
import { startServer } from '../../scripts/dev-server.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

const base = () => `${server.baseUrl}/v1/stream`;
const name = (what) => `fork-${what}-${randomUUID()}`;
const items = (url) => stream({ url, live: false }).items();
const text = (url) => stream({ url, live: false }).text();

test('a fork of a JSON stream at its tail, named by URL, inherits its messages and content type', { timeout: 30_000 }, async () => {
  const source = await DurableStream.create({ url: `${base()}/${name('src')}`, contentType: 'application/json', body: [1, 2] });
  const fork = await DurableStream.create({ url: `${base()}/${name('fork')}`, forkedFrom: new URL(source.url) });
  assert.equal(fork.contentType, 'application/json');
  await fork.append(3);
  await source.append(4);
  assert.deepEqual(await items(fork.url), [1, 2, 3]);
  assert.deepEqual(await items(source.url), [1, 2, 4]);
  // The same fork again is a confirmation (the source has grown since).
  const again = await new DurableStream({ url: fork.url }).create({ forkedFrom: source.url });
  assert.equal(again.created, false);
});

test('a fork at an offset, with a sub-offset, named by its path or relative to the fork', { timeout: 30_000 }, async () => {
  const src = name('text');
  const source = new DurableStream({ url: `${base()}/${src}`, contentType: 'text/plain' });
  const start = (await source.create()).offset;
  const first = await source.append('hello world');
  await source.append('!');

  const atOffset = `${base()}/${name('at')}`;
  await DurableStream.create({ url: atOffset, forkedFrom: `/v1/stream/${src}`, forkOffset: first.offset });
  assert.equal(await text(atOffset), 'hello world');

  const within = `${base()}/${name('sub')}`;
  const res = await new DurableStream({ url: within }).create({ forkedFrom: src, forkOffset: start, forkSubOffset: 5 });
  assert.equal(res.created, true);
  assert.equal(res.contentType, 'text/plain');
  assert.equal(await text(within), 'hello');
});

test("the server's refusals of a fork are typed errors", { timeout: 30_000 }, async () => {
  const fork = () => new DurableStream({ url: `${base()}/${name('bad')}` });
  await assert.rejects(fork().create({ forkedFrom: `/v1/stream/${name('missing')}` }), (e) => e.code === 'NOT_FOUND' && e.status === 404 && /fork source not found/.test(e.message));

  const source = await DurableStream.create({ url: `${base()}/${name('src')}`, contentType: 'application/json', body: [{ a: 1 }] });
  const past = '0000000000000000_0000000000099999';
  await assert.rejects(fork().create({ forkedFrom: source.url, forkOffset: past }), (e) => e.code === 'INVALID_OFFSET' && e.status === 400);
  // Inside the message: not a boundary.
  const inside = '0000000000000000_0000000000000001';
  await assert.rejects(fork().create({ forkedFrom: source.url, forkOffset: inside }), (e) => e.code === 'INVALID_OFFSET' && /inside a JSON message/.test(e.message));
  // A fork's configuration differs from the stream's at that URL.
  await assert.rejects(new DurableStream({ url: source.url }).create({ forkedFrom: source.url }), (e) => e.code === 'CONFLICT' && e.status === 409);
});

/** A server recording each request's method, path and headers, answering 201 to a PUT. */
async function withRecorder(body) {
  const seen = [];
  const rec = http.createServer((req, res) => {
    seen.push({ method: req.method, path: req.url, headers: req.headers });
    req.resume();
    res.writeHead(req.method === 'PUT' ? 201 : 200, { 'content-type': 'text/plain', 'stream-next-offset': '0000000000000000_0000000000000000' });
    res.end();
  });
  await new Promise((r) => rec.listen(0, '127.0.0.1', r));
  try {
    await body(`http://127.0.0.1:${rec.address().port}`, seen);
  } finally {
    rec.closeAllConnections();
    await new Promise((r) => rec.close(r));
  }
}

test('forkedFrom is sent as the path on the server, only on the create', { timeout: 10_000 }, async () => {
  await withRecorder(async (origin, seen) => {
    const url = `${origin}/v1/stream/rooms/fork`;
    const cases = [
      [`${origin}/v1/stream/rooms/src?token=t#x`, '/v1/stream/rooms/src'],
      [new URL(`${origin}/v1/stream/a b`), '/v1/stream/a%20b'],
      ['/v1/stream/other', '/v1/stream/other'],
      ['src', '/v1/stream/rooms/src'],
      ['../top', '/v1/stream/top'],
    ];
    for (const [forkedFrom, path] of cases) {
      seen.length = 0;
      await new DurableStream({ url }).create({ forkedFrom, forkOffset: 'opaque-offset', forkSubOffset: 0 });
      assert.equal(seen[0].headers['stream-forked-from'], path, String(forkedFrom));
      assert.equal(seen[0].headers['stream-fork-offset'], 'opaque-offset');
      assert.equal(seen[0].headers['stream-fork-sub-offset'], '0');
    }
    seen.length = 0;
    const ds = await DurableStream.create({ url, forkedFrom: 'src' });
    await ds.append('x');
    await ds.head();
    assert.deepEqual(
      seen.map((r) => [r.method, r.headers['stream-forked-from']]),
      [['PUT', '/v1/stream/rooms/src'], ['POST', undefined], ['HEAD', undefined]],
    );
    assert.equal(seen[0].headers['stream-fork-offset'], undefined);
  });
});

test('bad fork options are refused with INVALID_ARGUMENT before anything is sent', { timeout: 10_000 }, async () => {
  await withRecorder(async (origin, seen) => {
    const ds = new DurableStream({ url: `${origin}/v1/stream/fork` });
    const bad = [
      [{ forkOffset: '0000000000000000_0000000000000000' }, /need forkedFrom/],
      [{ forkSubOffset: 1 }, /need forkedFrom/],
      [{ forkedFrom: '' }, /forkedFrom/],
      [{ forkedFrom: 42 }, /forkedFrom/],
      [{ forkedFrom: 'http://elsewhere.example/v1/stream/src' }, /same server/],
      [{ forkedFrom: 'src', forkOffset: '-1' }, /forkOffset/],
      [{ forkedFrom: 'src', forkOffset: 'now' }, /forkOffset/],
      [{ forkedFrom: 'src', forkOffset: '' }, /forkOffset/],
      [{ forkedFrom: 'src', forkOffset: 'a/b' }, /forkOffset/],
      [{ forkedFrom: 'src', forkOffset: 12 }, /forkOffset/],
      [{ forkedFrom: 'src', forkSubOffset: -1 }, /forkSubOffset/],
      [{ forkedFrom: 'src', forkSubOffset: 1.5 }, /forkSubOffset/],
      [{ forkedFrom: 'src', forkSubOffset: '1' }, /forkSubOffset/],
    ];
    for (const [options, message] of bad) {
      await assert.rejects(ds.create(options), (e) => e.code === 'INVALID_ARGUMENT' && message.test(e.message), JSON.stringify(options));
    }
    assert.equal(seen.length, 0);
  });
});

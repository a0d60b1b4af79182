// A keep-alive connection the server has already closed: workerd closes an idle one after 5 s,
// Node's fetch (undici) reuses one for 4 s, and a request that goes out on it as it closes fails
// with a network error (`other side closed`, ECONNRESET) though the server never saw it. A
// request that is safe to repeat goes again once, at once, without a retry of the caller's
// `retry` budget or its backoff; a plain append, which could be stored twice, is not repeated.
//
// Made deterministic by a TCP proxy in front of the reference server that closes a client's
// connection, instead of passing the next request on, when `drops` says to (whether Node's
// `fetch` sends that request on a kept-alive connection or a new one, it fails the same way).
// With `loses`, it passes the next request on and closes the client's connection when the answer
// comes instead of passing it back: the request landed, and its repeat meets what it did.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { randomUUID } from 'node:crypto';
import { DurableStream, IdempotentProducer, stream } from '../src/node.js';
import { useReferenceServer } from '../test-support/reference-server.mjs';

const reference = useReferenceServer();

/**
 * Runs `body(base, proxy)`; the next `proxy.drops` requests are cut unseen, and the answers to the
 * next `proxy.loses` requests passed on are cut.
 */
async function withStaleProxy(body) {
  const upstream = new URL(reference.url);
  const proxy = { drops: 0, dropped: 0, forwarded: 0, loses: 0, lost: 0 };
  const sockets = new Set();
  const server = net.createServer((client) => {
    const up = net.connect(Number(upstream.port), upstream.hostname);
    sockets.add(client).add(up);
    // Answered, and nothing sent since (or nothing sent yet): the next bytes are a new request.
    let idle = true;
    let lose = false;
    client.on('data', (chunk) => {
      if (idle && proxy.drops > 0) {
        proxy.drops--;
        proxy.dropped++;
        up.destroy();
        client.destroy();
        return;
      }
      if (idle) {
        proxy.forwarded++;
        lose = proxy.loses > 0;
        if (lose) proxy.loses--;
      }
      idle = false;
      up.write(chunk);
    });
    up.on('data', (chunk) => {
      if (lose) {
        proxy.lost++;
        up.destroy();
        client.destroy();
        return;
      }
      idle = true;
      client.write(chunk);
    });
    for (const [a, b] of [[client, up], [up, client]]) {
      a.on('error', () => b.destroy());
      a.on('close', () => b.destroy());
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    await body(`http://127.0.0.1:${server.address().port}`, proxy);
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
  }
}

// `retry: { maxRetries: 0 }`: without the re-send, the first failure would reach the caller.
const noRetry = { maxRetries: 0 };

test('a request safe to repeat that meets a connection the server closed goes again at once', { timeout: 30_000 }, async () => {
  await withStaleProxy(async (base, proxy) => {
    const url = `${base}/v1/stream/stale-${randomUUID()}`;
    const ds = await DurableStream.create({ url, contentType: 'application/json', retry: noRetry });
    await ds.append({ n: 1 });
    const cut = async (what, op) => {
      proxy.drops = 1;
      const before = proxy.dropped;
      const started = Date.now();
      const result = await op();
      assert.equal(proxy.dropped, before + 1, `${what}: no request met a closed connection`);
      assert.ok(Date.now() - started < 2000, `${what}: waited a backoff`);
      return result;
    };
    const head = await cut('HEAD', () => ds.head());
    assert.equal(head.status, 200);
    const again = await cut('PUT with the same config', () => DurableStream.create({ url, contentType: 'application/json', retry: noRetry }));
    assert.equal(again.url, url);
    assert.deepEqual(await cut('a read', () => stream({ url, live: false, retry: noRetry }).items()), [{ n: 1 }]);
    // A long-poll that has caught up waits on a kept-alive connection: its next poll is cut.
    const feed = stream({ url, live: 'long-poll', retry: noRetry, offset: head.offset });
    const [, got] = await Promise.all([
      cut('a live read', async () => {
        await new Promise((r) => setTimeout(r, 100));
        await ds.append({ n: 2 });
      }),
      (async () => {
        for await (const batch of feed) if (batch.items.length) return batch.items;
      })(),
    ]);
    assert.deepEqual(got, [{ n: 2 }]);
    feed.cancel();
    const p = new IdempotentProducer(ds, `stale-${randomUUID()}`, { lingerMs: 0 });
    p.append({ n: 3 });
    await p.flush();
    proxy.drops = 1;
    p.append({ n: 4 });
    await p.flush();
    assert.equal(proxy.dropped, 5, 'the producer append met no closed connection');
    assert.deepEqual(await ds.stream({ live: false }).items(), [{ n: 1 }, { n: 2 }, { n: 3 }, { n: 4 }]);
    await cut('DELETE', () => ds.delete());
    await assert.rejects(ds.head(), (e) => e.code === 'NOT_FOUND');
  });
});

test('a plain append that meets a closed connection is not sent again: it rejects with NETWORK_ERROR', { timeout: 30_000 }, async () => {
  await withStaleProxy(async (base, proxy) => {
    const url = `${base}/v1/stream/stale-${randomUUID()}`;
    const ds = await DurableStream.create({ url, contentType: 'application/json' });
    await ds.append({ n: 1 });
    proxy.drops = 1;
    const forwarded = proxy.forwarded;
    await assert.rejects(ds.append({ n: 2 }), (e) => e.code === 'NETWORK_ERROR');
    assert.equal(proxy.dropped, 1);
    assert.equal(proxy.forwarded, forwarded, 'the append was sent again');
    assert.deepEqual(await ds.stream({ live: false }).items(), [{ n: 1 }]);
  });
});

test('a request sent again after its first attempt landed reports what that attempt did', { timeout: 30_000 }, async () => {
  await withStaleProxy(async (base, proxy) => {
    const url = `${base}/v1/stream/landed-${randomUUID()}`;
    const ds = new DurableStream({ url, contentType: 'application/json', retry: noRetry });
    const landed = async (what, op, loses = 1) => {
      proxy.loses = loses;
      const before = proxy.lost;
      const result = await op();
      assert.equal(proxy.lost, before + loses, `${what}: no answer was lost`);
      return result;
    };
    // The PUT created the stream; its repeat is answered 200, "exists with the same config".
    const created = await landed('PUT', () => ds.create());
    assert.equal(created.status, 200);
    assert.equal(created.created, false);
    assert.equal(created.replayed, true, 'PUT: not marked as sent again');
    // A close without data: closing a closed stream that way is answered 204.
    const closed = await landed('close()', () => ds.close());
    assert.equal(closed.closed, true);
    assert.equal(closed.replayed, true);
    // The DELETE deleted the stream; its repeat is answered 404, taken as the first's success.
    assert.deepEqual(await landed('DELETE', () => ds.delete()), { status: 404, replayed: true });
    await assert.rejects(ds.head(), (e) => e.code === 'NOT_FOUND');
    // The same through the backoff retries: the at-once repeat's answer is lost too.
    const retried = new DurableStream({ url, contentType: 'application/json', retry: { maxRetries: 1, initialDelayMs: 10 } });
    await retried.create();
    assert.deepEqual(await landed('DELETE retried', () => retried.delete(), 2), { status: 404, replayed: true });
    // A DELETE sent once that is answered 404 still rejects: the stream was not there.
    await assert.rejects(ds.delete(), (e) => e.code === 'NOT_FOUND');
    // A source with a fork is soft-deleted: the repeat is answered 410, taken as deleted too.
    const source = await DurableStream.create({ url: `${url}-src`, contentType: 'application/json', retry: noRetry });
    await DurableStream.create({ url: `${url}-fork`, forkedFrom: source.url });
    assert.deepEqual(await landed('DELETE of a source', () => source.delete()), { status: 410, replayed: true });
    await assert.rejects(source.head(), (e) => e.code === 'GONE');
    await assert.rejects(source.delete(), (e) => e.code === 'GONE');
  });
});

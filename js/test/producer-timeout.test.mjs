// A producer's request can get no answer at all: the connection dies without closing (a network
// partition, a proxy that swallows the request, a laptop that slept). Unanswered within
// `requestTimeoutMs`, it is aborted and retried as a failed connection is, with the same
// (id, epoch, seq), so what the lost attempt landed is deduplicated. Against our Worker, behind
// a proxy here that swallows requests.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { DurableStream, IdempotentProducer } from '../src/node.js';
import { startServer } from '../../scripts/dev-server.mjs';
import { within } from '../test-support/within.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

/**
 * A proxy to `target` that hands each request to `fate(request)`: `'drop'` leaves it unanswered
 * and does not forward it; `'mute'` forwards it, but never relays the answer (it landed, and the
 * client does not know); anything else passes it through. `requests` are what came, each with
 * the status the server gave it (`upstream`).
 */
async function swallowingProxy(target, fate) {
  const requests = [];
  const proxy = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks);
    const h = req.headers;
    const seen = {
      method: req.method,
      producer: h['producer-id'] === undefined ? undefined : `${h['producer-id']}/${h['producer-epoch']}/${h['producer-seq']}`,
      closed: h['stream-closed'] === 'true',
      body: body.toString(),
    };
    requests.push(seen);
    const what = fate(seen);
    if (what === 'drop') return;
    const headers = { ...h };
    delete headers.host;
    const up = http.request(new URL(req.url, target), { method: req.method, headers }, (answer) => {
      seen.upstream = answer.statusCode;
      if (what === 'mute') {
        answer.resume();
        return;
      }
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    });
    up.on('error', () => res.destroy());
    up.end(body);
  });
  await new Promise((r) => proxy.listen(0, '127.0.0.1', r));
  return {
    requests,
    url: `http://127.0.0.1:${proxy.address().port}`,
    close: () => {
      proxy.closeAllConnections();
      return new Promise((r) => proxy.close(r));
    },
  };
}

test('unanswered requests of a producer (its HEAD, an append, its close) are retried after requestTimeoutMs, and land once', async () => {
  const path = `/v1/stream/producer-timeout/${randomUUID()}`;
  const direct = await DurableStream.create({ url: `${server.baseUrl}${path}`, contentType: 'text/plain' });
  let producer;
  const retryingAt = {};
  const count = (kind) => proxy.requests.filter((r) => r.kind === kind).length;
  const proxy = await swallowingProxy(server.baseUrl, (r) => {
    r.kind = r.method === 'HEAD' ? 'head' : r.closed ? 'close' : 'append';
    const n = proxy.requests.filter((o) => o.kind === r.kind).length;
    retryingAt[`${r.kind} ${n}`] = producer.retrying;
    // The first HEAD never reaches the server; the first append and close land, unanswered.
    if (n === 1) return r.kind === 'head' ? 'drop' : 'mute';
  });
  const stop = new AbortController();
  try {
    // Made from a URL, so it learns the stream's type with a HEAD before its first append. A
    // batch sent once that comes back a duplicate would be an older instance's with autoClaim,
    // unless it was sent again: a timed-out attempt counts as sent.
    const ds = new DurableStream({ url: `${proxy.url}${path}` });
    producer = new IdempotentProducer(ds, 'p', { autoClaim: true, requestTimeoutMs: 1000, signal: stop.signal });
    producer.append('a');
    producer.append('b');
    await within(producer.flush(), 15_000, 'flush()');
    const closed = await within(producer.close('c'), 15_000, 'close()');

    assert.equal(count('head'), 2);
    const appends = proxy.requests.filter((r) => r.kind === 'append');
    assert.deepEqual(
      appends.map((r) => [r.producer, r.body, r.upstream]),
      [
        ['p/0/0', 'ab', 200],
        ['p/0/0', 'ab', 204],
      ],
    );
    const closes = proxy.requests.filter((r) => r.kind === 'close');
    assert.deepEqual(
      closes.map((r) => [r.producer, r.body, r.upstream]),
      [
        ['p/0/1', 'c', 200],
        ['p/0/1', 'c', 204],
      ],
    );
    assert.equal(closed.duplicate, true);
    assert.equal(producer.epoch, 0);
    assert.equal(await (await fetch(`${direct.url}?offset=-1`)).text(), 'abc');
    // Retrying from each timeout until the answer to the request sent again.
    assert.deepEqual(retryingAt, {
      'head 1': false,
      'head 2': true,
      'append 1': false,
      'append 2': true,
      'close 1': false,
      'close 2': true,
    });
    assert.equal(producer.retrying, false);
  } finally {
    stop.abort();
    await proxy.close();
  }
});

test('requestTimeoutMs must be an integer > 0', () => {
  for (const requestTimeoutMs of [0, -1, 1.5, '1000']) {
    assert.throws(
      () => new IdempotentProducer('http://127.0.0.1:1/s', 'p', { requestTimeoutMs }),
      (e) => e.code === 'INVALID_ARGUMENT' && /requestTimeoutMs/.test(e.message),
    );
  }
});

test('with a retry budget, a request that never gets an answer fails the producer with NETWORK_ERROR saying so', async () => {
  const proxy = await swallowingProxy('http://127.0.0.1:1', () => 'drop');
  try {
    const ds = new DurableStream({ url: `${proxy.url}/s`, contentType: 'text/plain', retry: { maxRetries: 1, initialDelayMs: 10 } });
    const producer = new IdempotentProducer(ds, 'p', { requestTimeoutMs: 200 });
    producer.append('a');
    await assert.rejects(within(producer.flush(), 5_000, 'flush()'), (e) => e.code === 'NETWORK_ERROR' && /no response in 200 ms/.test(e.message));
    assert.deepEqual(
      proxy.requests.map((r) => r.producer),
      ['p/0/0', 'p/0/0'],
    );
    assert.equal(producer.retrying, false);
  } finally {
    await proxy.close();
  }
});

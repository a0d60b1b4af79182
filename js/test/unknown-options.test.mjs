// An option the client does not know is refused with INVALID_ARGUMENT naming it, before anything
// is sent. Ignored, it would do nothing without a word: `lingerMs` misspelt, or an option of
// another client (`@durable-streams/client`'s `backoffOptions`, `onError` on a read, `warnOnHttp`,
// `batching`) kept when moving an app over. A fake server counts what reaches it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { DurableStream, IdempotentProducer, stream, table } from '../src/node.js';

async function withServer(body) {
  let requests = 0;
  const server = http.createServer((req, res) => {
    requests++;
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json', 'stream-next-offset': 'o1', 'stream-up-to-date': 'true' });
      res.end(req.method === 'GET' ? '[1]' : '');
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    await body(`http://127.0.0.1:${server.address().port}/s`, () => requests);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
}

/** The error is INVALID_ARGUMENT and names the option. */
const naming = (name) => (e) => e.code === 'INVALID_ARGUMENT' && e.message.includes(`unknown option ${name}`);

test('stream() and table() refuse options they do not know, at once', async () => {
  await withServer(async (url, requests) => {
    for (const [options, name] of [
      [{ backoffOptions: { maxRetries: 3 } }, 'backoffOptions'],
      [{ onError: () => {} }, 'onError'],
      [{ warnOnHttp: false }, 'warnOnHttp'],
      [{ sseResilience: { maxShortConnections: 1 } }, 'sseResilience'],
      [{ livee: false }, 'livee'],
    ]) {
      assert.throws(() => stream({ url, live: false, ...options }), naming(name), name);
      assert.throws(() => new DurableStream({ url }).stream({ live: false, ...options }), naming(name), name);
      assert.throws(() => table({ url, live: false, ...options }), naming(name), name);
    }
    // Inside `retry`: the other client's backoff names.
    assert.throws(() => stream({ url, retry: { initialDelay: 100 } }), naming('retry.initialDelay'));
    assert.throws(() => stream({ url, retry: { maxDelay: 100 } }), naming('retry.maxDelay'));
    assert.equal(requests(), 0);
    // What is known still reads, and an option given as undefined is "not given".
    assert.deepEqual(await stream({ url, live: false, json: true, retry: { maxRetries: 1, initialDelayMs: 50 }, onError: undefined }).items(), [1]);
    assert.equal(requests(), 1);
  });
});

test('DurableStream and its calls refuse options they do not know, before sending', async () => {
  await withServer(async (url, requests) => {
    assert.throws(() => new DurableStream({ url, batching: false }), naming('batching'));
    assert.throws(() => new DurableStream({ url, warnOnHttp: false }), naming('warnOnHttp'));
    await assert.rejects(DurableStream.create({ url, contentType: 'application/json', debug: true }), naming('debug'));
    await assert.rejects(DurableStream.connect({ url, backoffOptions: {} }), naming('backoffOptions'));
    const log = new DurableStream({ url, contentType: 'application/json' });
    await assert.rejects(log.create({ ttl: 60 }), naming('ttl'));
    await assert.rejects(log.head({ timeout: 5 }), naming('timeout'));
    await assert.rejects(log.append({ a: 1 }, { producerId: 'p', producerEpoch: 0, producerSeq: 0 }), naming('producerId'));
    await assert.rejects(log.close({ finalMessage: 'bye' }), naming('finalMessage'));
    await assert.rejects(log.delete({ force: true }), naming('force'));
    assert.equal(requests(), 0);
    // Known options go through.
    await log.create({ ttlSeconds: 60, signal: undefined });
    await log.append({ a: 1 }, { seq: '1' });
    assert.equal(requests(), 2);
  });
});

test('IdempotentProducer, writable() and appendStream() refuse options they do not know', async () => {
  await withServer(async (url, requests) => {
    const log = new DurableStream({ url, contentType: 'application/json' });
    for (const [options, name] of [
      [{ headers: { authorization: 'x' } }, 'headers'],
      [{ batching: false }, 'batching'],
      [{ lingerMS: 10 }, 'lingerMS'],
      [{ retry: { maxRetries: 1 } }, 'retry'],
    ]) {
      assert.throws(() => new IdempotentProducer(log, 'p1', options), naming(name), name);
      assert.throws(() => log.writable(options), naming(name), name);
      await assert.rejects(log.appendStream([1], options), naming(name), name);
    }
    assert.equal(requests(), 0);
    const producer = new IdempotentProducer(log, 'p1', { lingerMs: 0, maxInFlight: 1, onError: undefined });
    producer.append(1);
    await producer.flush();
    assert.equal(requests(), 1);
  });
});

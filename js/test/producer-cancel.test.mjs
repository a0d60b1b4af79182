// cancel() stops a producer that has no AbortSignal: without `retry.maxRetries` a producer keeps
// retrying a server that does not answer, and flush() and detach() would wait for ever.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { DurableStream, IdempotentProducer } from '../src/node.js';
import { within } from '../test-support/within.mjs';
import { withLocalServer } from '../test-support/local-server.mjs';

/**
 * Aborted once the test file is done, so that a producer cancel() did not stop (a failing test,
 * or a client without cancel()) does not keep the process alive retrying. Never aborted before.
 */
const backstop = new AbortController();
after(() => backstop.abort('test over'));

/** A server that answers `answer(req, body, res)`, closed after `run(base)`. */
function withServer(answer, run) {
  const read = async (req, res) => {
    let body = '';
    for await (const chunk of req) body += chunk;
    answer(req, body, res);
  };
  return withLocalServer(read, run);
}

test('cancel() stops a producer retrying a dead server: flush(), detach() and close() reject with ABORTED, nothing more is sent', async () => {
  let posts = 0;
  const unavailable = (req, body, res) => {
    posts++;
    res.writeHead(503, { 'retry-after': '1' });
    res.end();
  };
  await withServer(unavailable, async (url) => {
    for (const ending of ['flush', 'detach', 'close']) {
      // No signal and no retry.maxRetries: the producer retries until the server answers.
      const ds = new DurableStream({ url, contentType: 'text/plain', retry: { initialDelayMs: 20, maxDelayMs: 50 }, signal: backstop.signal });
      const errors = [];
      const p = new IdempotentProducer(ds, 'p', { onError: (e) => errors.push(e) });
      p.append('x');
      const pending = p[ending]();
      pending.catch(() => {});
      await new Promise((r) => setTimeout(r, 300));
      assert.ok(p.retrying || posts > 1, `${ending}: the producer is still retrying`);
      const reason = new Error('shutting down');
      p.cancel(reason);
      const e = await within(pending.then(() => null, (err) => err), 1000, `${ending}() after cancel()`);
      assert.equal(e?.code, 'ABORTED', ending);
      assert.equal(e.cause, reason);
      assert.match(e.message, /cancel\(\)/);
      assert.match(e.message, /may have been stored/, 'an append in flight may have landed: the error says so');
      assert.deepEqual(errors, [e], 'onError hears of it once');
      assert.equal(p.retrying, false);
      // The first error stands: a second cancel changes nothing, later calls get the same error.
      p.cancel('again');
      // (append() says the producer is detached or closed, once detach() or close() was called.)
      if (ending === 'flush') assert.throws(() => p.append('y'), (err) => err === e);
      else assert.throws(() => p.append('y'));
      await assert.rejects(p.flush(), (err) => err === e);
      await assert.rejects(p.detach(), (err) => err === e);
      const before = posts;
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(posts, before, `${ending}: nothing is sent after cancel()`);
    }
  });
});

test('cancel() without a reason, on a producer that learns the stream type: the HEAD is stopped too', async () => {
  let heads = 0;
  await withServer(
    (req, body, res) => {
      if (req.method === 'HEAD') heads++;
      res.writeHead(503);
      res.end();
    },
    async (url) => {
      const p = new IdempotentProducer(new DurableStream({ url, signal: backstop.signal }), 'p');
      p.append('x');
      const flushed = p.flush();
      await new Promise((r) => setTimeout(r, 200));
      p.cancel();
      await assert.rejects(within(flushed, 1000, 'flush()'), (e) => e.code === 'ABORTED' && e.cause === undefined && /queued/.test(e.message));
      const before = heads;
      await new Promise((r) => setTimeout(r, 300));
      assert.ok(heads >= 1 && heads === before, 'no HEAD after cancel()');
    },
  );
});

test('cancel() keeps what was acknowledged and is a no-op once the producer is detached or closed', async () => {
  const bodies = [];
  let offset = 0;
  await withServer(
    (req, body, res) => {
      if (req.method === 'POST') {
        bodies.push([req.headers['producer-seq'], body]);
        offset += body.length;
      }
      const headers = { 'stream-next-offset': String(offset), 'producer-epoch': req.headers['producer-epoch'] ?? '0' };
      if (req.headers['producer-seq'] !== undefined) headers['producer-seq'] = req.headers['producer-seq'];
      if (req.headers['stream-closed'] === 'true') headers['stream-closed'] = 'true';
      res.writeHead(200, headers);
      res.end();
    },
    async (url) => {
      const ds = new DurableStream({ url, contentType: 'text/plain' });
      const p = new IdempotentProducer(ds, 'p');
      p.append('a');
      await p.flush();
      await p.detach();
      p.cancel('late');
      assert.equal(p.offset, '1');
      assert.throws(() => p.append('b'), (e) => e.code === 'INVALID_ARGUMENT' && /detached/.test(e.message));
      const q = new IdempotentProducer(ds, 'q');
      q.append('b');
      await q.close();
      q.cancel('late');
      assert.deepEqual((await q.close()).finalOffset, '2');
      assert.deepEqual(bodies, [
        ['0', 'a'],
        ['0', 'b'],
        ['1', ''],
      ]);
    },
  );
});

test('a producer holding the writer lease, cancelled while it retries: detach() and acquire() reject at once, without trying to give the lease up', async () => {
  let posts = 0;
  let releases = 0;
  await withServer(
    (req, body, res) => {
      posts++;
      if (req.headers['stream-lease-ttl'] === '0') releases++;
      if (posts > 1) {
        res.writeHead(503);
        res.end();
        return;
      }
      res.writeHead(200, {
        'stream-next-offset': String(body.length),
        'producer-epoch': '0',
        'producer-seq': '0',
        'stream-lease-expires-at': new Date(Date.now() + 60_000).toISOString(),
      });
      res.end();
    },
    async (url) => {
      const ds = new DurableStream({ url, contentType: 'text/plain', retry: { initialDelayMs: 20, maxDelayMs: 50 }, signal: backstop.signal });
      const p = new IdempotentProducer(ds, 'leader', { lease: { ttlSeconds: 60 } });
      p.append('a');
      await p.flush();
      assert.ok(p.leaseExpiresAt, 'it holds the lease');
      p.append('b');
      const flushed = p.flush();
      flushed.catch(() => {});
      await new Promise((r) => setTimeout(r, 200));
      p.cancel('stop');
      await assert.rejects(within(flushed, 1000, 'flush()'), (e) => e.code === 'ABORTED' && e.cause === 'stop');
      await assert.rejects(within(p.acquire(), 1000, 'acquire()'), (e) => e.code === 'ABORTED');
      await assert.rejects(within(p.detach(), 1000, 'detach()'), (e) => e.code === 'ABORTED');
      // A retry sent just before cancel() may still reach the server under load; no release may.
      await new Promise((r) => setTimeout(r, 200));
      assert.ok(posts > 1, 'it retried');
      assert.equal(releases, 0, 'no release is sent: the lease runs out on its own');
    },
  );
});

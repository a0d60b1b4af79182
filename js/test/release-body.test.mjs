// The short body of an answer to a write (or of a retried error) is read to its end, not
// cancelled: a cancelled body is an aborted request to a browser (`net::ERR_ABORTED` in its
// network log, the demo's PUT showed it), and a connection whose answer was cut cannot be used
// again. A server that compresses sends even an empty body chunked, with no length to tell.
// Against a fake server that sends each body a moment after its headers, and counts the
// connections its clients cut.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { DurableStream } from '../src/node.js';

/** A server answering with `answer(req)` = [status, headers, body], the body 20 ms late. */
async function withServer(answer, body) {
  let cut = 0;
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const [status, headers, text] = answer(req);
      res.writeHead(status, headers);
      res.flushHeaders();
      setTimeout(() => res.end(text), 20);
    });
  });
  server.on('connection', (socket) => socket.on('close', () => cut++));
  server.keepAliveTimeout = 10_000;
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    await body(`http://127.0.0.1:${server.address().port}/v1/stream/s`, async () => {
      // Whatever the client will do with the last answer's body, it has done by then.
      await new Promise((r) => setTimeout(r, 100));
      return cut;
    });
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
}

const written = { 'content-type': 'text/plain', 'stream-next-offset': '0000000000000001_0000000000000000' };

test('the short bodies of answers to writes are read, not cut', async () => {
  await withServer(
    (req) => [req.method === 'PUT' ? 201 : 200, { ...written, 'transfer-encoding': 'chunked' }, 'ok\n'],
    async (url, cutConnections) => {
      const s = await DurableStream.create({ url, contentType: 'text/plain' });
      for (let i = 0; i < 10; i++) await s.append(`x${i}`);
      await s.delete();
      assert.equal(await cutConnections(), 0);
    },
  );
});

test('the short body of a retried 503 is read, not cut', async () => {
  let calls = 0;
  await withServer(
    () => (++calls <= 3 ? [503, { 'retry-after': '0', 'content-type': 'text/plain' }, 'busy, try again\n'] : [200, written, '']),
    async (url, cutConnections) => {
      await new DurableStream({ url, contentType: 'text/plain' }).append('x');
      assert.equal(calls, 4);
      assert.equal(await cutConnections(), 0);
    },
  );
});

test('an answer whose length says it is long is cancelled, not read', async () => {
  const big = 'y'.repeat(1 << 20);
  let sent = 0;
  await withServer(
    (req) => {
      sent++;
      return [req.method === 'PUT' ? 201 : 200, { ...written, 'content-length': String(big.length) }, big];
    },
    async (url, cutConnections) => {
      const s = await DurableStream.create({ url, contentType: 'text/plain' });
      await s.append('x');
      assert.equal(sent, 2);
      assert.equal(await cutConnections(), 2, 'both answers cut short');
    },
  );
});

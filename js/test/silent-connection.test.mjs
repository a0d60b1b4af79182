// A connection that dies without closing (a proxy or a network that drops it silently) sends
// nothing more and never ends. A live reader must notice and reconnect on its own: an SSE
// connection that brings nothing for 45 s (edgestream's server writes a heartbeat every 15 s),
// a long-poll unanswered for 65 s (servers answer within about 30 s). Slow by nature: about
// 70 s, both readers at once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { stream } from '../src/node.js';

/**
 * A JSON stream that is `[]` at `o1` until `state.data` is set, and then `data` at `o2` to a new
 * request. An SSE response, once it has said where the stream stands, sends nothing more and
 * stays open; a long-poll with nothing new is never answered: both as if the connection died.
 */
function silentStream(state) {
  return http.createServer((req, res) => {
    state.requests.push(new URL(req.url, 'http://x').searchParams.get('live'));
    const url = new URL(req.url, 'http://x');
    const ready = state.data !== undefined && url.searchParams.get('offset') !== 'o2';
    const next = ready ? 'o2' : 'o1';
    if (url.searchParams.get('live') === 'sse') {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      if (ready) res.write(`event: data\ndata: ${JSON.stringify(state.data)}\n\n`);
      res.write(`event: control\ndata: ${JSON.stringify({ streamNextOffset: next, streamCursor: '1', upToDate: true })}\n\n`);
      return;
    }
    if (url.searchParams.get('live') === 'long-poll' && !ready) return;
    res.writeHead(200, { 'content-type': 'application/json', 'stream-next-offset': next, 'stream-up-to-date': 'true', 'stream-cursor': '1' });
    res.end(ready ? JSON.stringify(state.data) : '[]');
  });
}

test('SSE and long-poll readers reconnect from a connection that went silent, and get what came meanwhile', { timeout: 120_000 }, async () => {
  const state = { requests: [] };
  const server = silentStream(state);
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  const follow = async (live) => {
    const h = stream({ url: `http://127.0.0.1:${port}/s`, live, json: true });
    const it = h[Symbol.asyncIterator]();
    try {
      assert.deepEqual((await it.next()).value.items, []);
      const started = Date.now();
      for (;;) {
        const { value } = await it.next();
        if (value.items.length > 0) return { items: value.items, offset: value.offset, waited: Date.now() - started };
      }
    } finally {
      h.cancel();
    }
  };
  try {
    const readers = Promise.all([follow('sse'), follow('long-poll')]);
    // Both are following now, each on a connection that will bring nothing more.
    await new Promise((r) => setTimeout(r, 1_000));
    state.data = [{ n: 1 }];
    const [sse, poll] = await readers;
    assert.deepEqual(sse.items, [{ n: 1 }]);
    assert.deepEqual(poll.items, [{ n: 1 }]);
    assert.equal(sse.offset, 'o2');
    assert.equal(poll.offset, 'o2');
    assert.ok(sse.waited >= 40_000 && sse.waited < 60_000, `SSE reconnected after ${sse.waited} ms`);
    assert.ok(poll.waited >= 60_000 && poll.waited < 80_000, `long-poll sent again after ${poll.waited} ms`);
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

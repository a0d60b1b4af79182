// A live reader rides out an outage of any length by default, as EventSource does: its server
// goes away for longer than a retry budget would last, and the reader still delivers what was
// appended once it is back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { stream } from '../src/node.js';
import { fakeStream } from '../test-support/fake-stream.mjs';

for (const live of ['long-poll', 'sse']) {
  test(`a ${live} reader with no maxRetries rides out an outage that would spend any budget, and says it is retrying`, async () => {
    const state = {};
    let server = fakeStream(state);
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    const { port } = server.address();
    // The default options: 5 retries would be spent in about 2 to 3 s.
    const h = stream({ url: `http://127.0.0.1:${port}/s`, live });
    try {
      const it = h[Symbol.asyncIterator]();
      assert.deepEqual((await it.next()).value.items, []);
      // The reader asks for its next batch, and follows the stream for a while (an SSE connection
      // that has lived is resumed at once when it ends, as the 60 s ones are)...
      let pending = it.next();
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(h.retrying, false);
      // ...then the server goes down, for longer than the retries of any budget take.
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      await new Promise((r) => setTimeout(r, 4000));
      // It says so, for an application to show.
      assert.equal(h.retrying, true);
      state.data = ['after the outage'];
      server = fakeStream(state);
      await new Promise((r) => server.listen(port, '127.0.0.1', r));
      for (;;) {
        const { value, done } = await pending;
        pending = it.next();
        assert.equal(done, false);
        assert.equal(h.retrying, false);
        if (value.items.length > 0) {
          assert.deepEqual(value.items, ['after the outage']);
          break;
        }
      }
    } finally {
      h.cancel();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
}

test('a one-off read, or a live reader given a budget, still gives up once it is spent', async () => {
  const server = http.createServer();
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}/s`;
  await new Promise((r) => server.close(r));
  for (const options of [{ live: false, retry: { initialDelayMs: 5 } }, { live: 'long-poll', retry: { maxRetries: 2, initialDelayMs: 5 } }]) {
    const h = stream({ url, ...options });
    await assert.rejects(h.items(), (e) => e.code === 'NETWORK_ERROR');
    // Failed for good: it no longer says it is retrying.
    assert.equal(h.retrying, false);
  }
});

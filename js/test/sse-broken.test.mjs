// SSE connections that break (a network that drops, a Wi-Fi that flaps) are not a proxy that
// ends streaming responses early: however many break within a second of opening, an `auto` or
// `sse` reader backs off and reconnects over SSE, and does not fall back to long-poll for good.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stream } from '../src/node.js';
import { withLocalServer } from '../test-support/local-server.mjs';

const BROKEN = 5;

for (const live of ['auto', 'sse']) {
  test(`an ${live} reader whose SSE connections break ${BROKEN} times in a row, each at once, stays on SSE`, async () => {
    const requests = [];
    let sse = 0;
    const control = (offset) => `event: control\ndata: ${JSON.stringify({ streamNextOffset: offset, streamCursor: '1', upToDate: true })}\n\n`;
    await withLocalServer(
      (req, res) => {
        const url = new URL(req.url, 'http://x');
        const mode = url.searchParams.get('live');
        requests.push(mode ?? 'catch-up');
        if (mode === 'sse') {
          sse++;
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          if (sse <= BROKEN) {
            // Where the stream stands gets through, then the connection breaks (no clean end).
            res.write(control('o1'), () => setTimeout(() => res.destroy(), 20));
            return;
          }
          res.write(`event: data\ndata: ${JSON.stringify(['over sse'])}\n\n${control('o2')}`);
          return; // and stays open
        }
        // The catch-up read, and (before the fix) the long-poll the reader fell back to.
        const data = mode === 'long-poll' ? ['over long-poll'] : [];
        res.writeHead(200, { 'content-type': 'application/json', 'stream-next-offset': mode ? 'o2' : 'o1', 'stream-up-to-date': 'true', 'stream-cursor': '1' });
        res.end(JSON.stringify(data));
      },
      async (url) => {
        const h = stream({ url, live, retry: { initialDelayMs: 10, maxDelayMs: 50 } });
        try {
          const it = h[Symbol.asyncIterator]();
          assert.deepEqual((await it.next()).value.items, []);
          const { value } = await it.next();
          assert.deepEqual(value.items, ['over sse']);
          assert.equal(h.mode, 'sse');
          assert.deepEqual(requests, ['catch-up', ...Array(BROKEN + 1).fill('sse')]);
        } finally {
          h.cancel();
        }
      },
    );
  });
}

// Where the reading handle says it stands, against fake servers that control exactly what
// arrives: its offset is the one after the last batch the application took (so resuming from it
// after `break` loses nothing), batches read before a failure are handed out before the failure,
// and a response that says nowhere to go next is refused rather than read again and again.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { stream } from '../src/node.js';

/** A server answering with `handler(req, res, url)`; closed after `body`. */
async function withServer(handler, body) {
  const server = http.createServer((req, res) => handler(req, res, new URL(req.url, 'http://x')));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    await body(`http://127.0.0.1:${server.address().port}/s`);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
}

const json = (offset, extra = {}) => ({ 'content-type': 'application/json', 'stream-next-offset': offset, ...extra });
const sseData = (items, offset) =>
  `event: data\ndata: ${JSON.stringify(items)}\n\nevent: control\ndata: ${JSON.stringify({ streamNextOffset: offset, upToDate: true })}\n\n`;

/** Catch-up answers an empty page at `o1`; SSE sends `events` in one write, then stays open. */
function sseServer(events) {
  return (req, res, url) => {
    if (url.searchParams.get('live') === 'sse') {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(events);
      return;
    }
    res.writeHead(200, json('o1', { 'stream-up-to-date': 'true' }));
    res.end('[]');
  };
}

test('the offset is after the last batch taken, not after what was read ahead', async () => {
  const events = sseData(['A'], 'o2') + sseData(['B'], 'o3') + sseData(['C'], 'o4');
  await withServer(sseServer(events), async (url) => {
    const h = stream({ url, live: 'sse', json: true });
    const taken = [];
    for await (const batch of h) {
      taken.push(...batch.items);
      assert.equal(h.offset, batch.offset, 'the handle stands where the batch ends');
      if (taken.includes('A')) break;
    }
    assert.deepEqual(taken, ['A']);
    // B and C were read but not taken: resuming from here must read them again.
    assert.equal(h.offset, 'o2');
  });
});

test('batches read before a malformed one are handed out first; the offset stays at the last of them', async () => {
  const events = sseData(['A'], 'o2') + `event: data\ndata: [1,\n\nevent: control\ndata: {"streamNextOffset":"o3"}\n\n`;
  await withServer(sseServer(events), async (url) => {
    const h = stream({ url, live: 'sse', json: true });
    const taken = [];
    await assert.rejects(
      (async () => {
        for await (const batch of h) taken.push(...batch.items);
      })(),
      (e) => e.code === 'PARSE_ERROR',
    );
    assert.deepEqual(taken, ['A']);
    assert.equal(h.offset, 'o2');
  });
});

test('a catch-up page that cannot be parsed leaves the offset where it was', async () => {
  await withServer(
    (req, res) => {
      res.writeHead(200, json('o7'));
      res.end('[1,');
    },
    async (url) => {
      const h = stream({ url, live: false, json: true });
      await assert.rejects(h.items(), (e) => e.code === 'PARSE_ERROR');
      assert.equal(h.offset, '-1');
    },
  );
});

test('a page without Stream-Next-Offset, or with -1 or now, is PARSE_ERROR, never read again', async () => {
  for (const offset of [undefined, '-1', 'now']) {
    let requests = 0;
    await withServer(
      (req, res) => {
        requests++;
        res.writeHead(200, offset === undefined ? { 'content-type': 'application/json' } : json(offset));
        res.end('[1]');
      },
      async (url) => {
        const h = stream({ url, live: false, json: true });
        await assert.rejects(h.items(), (e) => e.code === 'PARSE_ERROR', String(offset));
        assert.equal(requests, 1, String(offset));
      },
    );
  }
});

test('long-polls answered at once with nothing are paced by the backoff, not sent in a busy loop', async () => {
  let polls = 0;
  let dataAt = 0;
  await withServer(
    (req, res, url) => {
      if (url.searchParams.get('live') !== 'long-poll') {
        res.writeHead(200, json('o1', { 'stream-up-to-date': 'true' }));
        return res.end('[]');
      }
      polls++;
      // After a while of empty answers, one with data: it resets the pacing.
      if (polls === 6) {
        dataAt = polls;
        res.writeHead(200, json('o2', { 'stream-up-to-date': 'true' }));
        return res.end('["x"]');
      }
      res.writeHead(204, { 'stream-next-offset': polls > 6 ? 'o2' : 'o1', 'stream-up-to-date': 'true' });
      res.end();
    },
    async (url) => {
      const signal = AbortSignal.timeout(1500);
      const h = stream({ url, live: 'long-poll', json: true, signal, retry: { initialDelayMs: 20, maxDelayMs: 400 } });
      const items = [];
      for await (const batch of h) items.push(...batch.items);
      assert.deepEqual(items, ['x']);
      assert.equal(dataAt, 6);
      // Without pacing, a server that answers at once gets hundreds of polls a second. Paced
      // (20, 40, 80, 160, 320 ms, then 400 ms each, halved at most by jitter), 1.5 s allow about
      // a dozen, even counting the reset after the data.
      assert.ok(polls >= 7 && polls <= 25, `${polls} long-polls in 1.5 s`);
    },
  );
});

test("offset 'now' on a stream of unknown type learns the type first, so a JSON stream's SSE data are items", async () => {
  const requests = [];
  await withServer(
    (req, res, url) => {
      requests.push(`${url.searchParams.get('offset')} ${url.searchParams.get('live') ?? 'catch-up'}`);
      if (url.searchParams.get('live') === 'sse') {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(sseData([{ hello: 'world' }], 'o2'));
        return;
      }
      // A `now` GET: no data, the stream's type and its tail.
      res.writeHead(200, json('o1', { 'stream-up-to-date': 'true' }));
      res.end();
    },
    async (url) => {
      const h = stream({ url, offset: 'now', live: 'sse' });
      const items = [];
      for await (const batch of h) {
        assert.ok(batch.items, 'a JSON batch has items');
        items.push(...batch.items);
        if (items.length) break;
      }
      assert.deepEqual(items, [{ hello: 'world' }]);
      assert.deepEqual(requests, ['now catch-up', 'o1 sse']);
      // Told the type, the reader goes live at once.
      requests.length = 0;
      const told = stream({ url, offset: 'now', live: 'sse', json: true });
      for await (const batch of told) if (batch.items.length) break;
      assert.deepEqual(requests, ['now sse']);
    },
  );
});

test('an SSE error event saying the stream is gone ends the reader with its error, after the batches before it', async () => {
  let sseRequests = 0;
  await withServer(
    (req, res, url) => {
      if (url.searchParams.get('live') === 'sse') {
        sseRequests++;
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(sseData(['A'], 'o2') + 'event: error\ndata:{"type":"error","status":404,"message":"stream not found"}\n\n');
        return;
      }
      res.writeHead(200, json('o1', { 'stream-up-to-date': 'true' }));
      res.end('[]');
    },
    async (url) => {
      const h = stream({ url, live: 'sse', json: true });
      const taken = [];
      await assert.rejects(
        (async () => {
          for await (const batch of h) taken.push(...batch.items);
        })(),
        (e) => e.code === 'NOT_FOUND' && e.status === 404,
      );
      assert.deepEqual(taken, ['A']);
      assert.equal(h.offset, 'o2');
      assert.equal(sseRequests, 1, 'not resumed from its offset');
    },
  );
});

test("long-poll from offset 'now' starts with a 'now' GET: its first batch comes at once, as items, upToDate", async () => {
  const requests = [];
  let polled = false;
  await withServer(
    (req, res, url) => {
      const live = url.searchParams.get('live');
      const offset = url.searchParams.get('offset');
      requests.push(`${offset} ${live ?? 'catch-up'}`);
      if (live === 'long-poll') {
        // One message a while later, after o1; otherwise nothing new (204) once the poll times out.
        setTimeout(() => {
          polled = true;
          if (offset === 'o1') {
            res.writeHead(200, json('o2', { 'stream-up-to-date': 'true' }));
            res.end('[{"n":1}]');
          } else {
            res.writeHead(204, { 'stream-next-offset': offset === 'now' ? 'o1' : offset, 'stream-up-to-date': 'true' });
            res.end();
          }
        }, offset === 'o1' ? 300 : 1000);
        return;
      }
      res.writeHead(200, json('o1', { 'stream-up-to-date': 'true' }));
      res.end('[]');
    },
    async (url) => {
      for (const options of [{}, { json: true }]) {
        requests.length = 0;
        polled = false;
        const h = stream({ url, offset: 'now', live: 'long-poll', ...options });
        const first = (await h.next()).value;
        assert.equal(polled, false, 'the first batch did not wait for the long-poll');
        assert.deepEqual([first.items, first.offset, first.upToDate], [[], 'o1', true]);
        assert.deepEqual((await h.next()).value.items, [{ n: 1 }]);
        h.cancel();
        assert.deepEqual(requests.slice(0, 2), ['now catch-up', 'o1 long-poll'], JSON.stringify(options));
      }
    },
  );
});

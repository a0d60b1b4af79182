// The wasm's load is the client's first request: one the network fails (the entry module says
// NETWORK_ERROR, as browser.js does for a fetch that fails) is retried as requests are: a live
// reader and a producer wait for the network, a one-off call gives up after its retry budget,
// and cancel() ends a wait.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import initWasm from '../dist/edgestream_client.js';
import { DurableStream, DurableStreamError, setLoader, stream } from '../src/node.js';
import { fakeStream } from '../test-support/fake-stream.mjs';

let online = false;
let loads = 0;
setLoader(async () => {
  loads++;
  if (!online) throw new DurableStreamError('the wasm could not be fetched', 'NETWORK_ERROR', undefined, { cause: new TypeError('fetch failed') });
  return initWasm({ module_or_path: await readFile(new URL('../dist/edgestream_client_bg.wasm', import.meta.url)) });
});

test('a failed wasm load is retried as a failed request: one-off calls give up, live readers wait until it loads', async () => {
  const server = fakeStream({});
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}/s`;
  try {
    // A one-off call: its retry budget (here 2 retries), then NETWORK_ERROR.
    await assert.rejects(DurableStream.head({ url, retry: { maxRetries: 2, initialDelayMs: 1 } }), (e) => e.code === 'NETWORK_ERROR');
    assert.equal(loads, 3);
    // A live reader cancelled while it waits ends, as one cancelled while offline does.
    const cancelled = stream({ url, live: 'long-poll', retry: { initialDelayMs: 60_000, maxDelayMs: 60_000 } });
    const ended = cancelled.next();
    while (!cancelled.retrying) await new Promise((r) => setImmediate(r));
    cancelled.cancel();
    assert.deepEqual(await ended, { done: true, value: undefined });
    // A live reader waits through load failures, past any default budget, and reads once it loads.
    const h = stream({ url, live: 'long-poll', retry: { initialDelayMs: 1, maxDelayMs: 1 } });
    const first = h.next();
    const before = loads;
    while (loads < before + 10) await new Promise((r) => setTimeout(r, 1));
    assert.equal(h.retrying, true);
    online = true;
    const { done, value } = await first;
    assert.equal(done, false);
    assert.deepEqual(value.items, []);
    assert.equal(h.retrying, false);
    h.cancel();
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

// A producer whose server goes away probes the outage with one request at a time: the first
// batch whose request fails retries on its backoff, and the others in flight wait for it rather
// than each retrying on a backoff of its own (5 batches in flight were 5 times the requests to a
// server that is down, or coming back up). Once the probe gets through, they all go again, in
// order, and every item lands exactly once. Against the reference server behind a proxy that
// fails the producer's requests while `down`: by dropping the connection, or with a 503.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { DurableStream, IdempotentProducer, stream } from '../src/node.js';
import { useReferenceServer } from '../test-support/reference-server.mjs';

const reference = useReferenceServer();

/** A proxy to the reference server; `state.down` fails POSTs as `state.mode` says, recording their seq. */
async function outageProxy(state) {
  const proxy = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    if (state.down && req.method === 'POST') {
      state.failed.push(Number(req.headers['producer-seq']));
      state.onFailed?.();
      if (state.mode === 'network') return req.socket.destroy();
      res.writeHead(503, { 'content-type': 'text/plain' });
      return res.end('down');
    }
    const target = new URL(req.url, reference.url);
    const headers = { ...req.headers };
    delete headers.host;
    const up = await fetch(target, { method: req.method, headers, body: chunks.length ? Buffer.concat(chunks) : undefined });
    res.writeHead(up.status, Object.fromEntries(up.headers));
    res.end(Buffer.from(await up.arrayBuffer()));
  });
  await new Promise((r) => proxy.listen(0, '127.0.0.1', r));
  return proxy;
}

for (const mode of ['network', '503']) {
  test(`an outage (${mode === 'network' ? 'connections dropped' : '503'}) is probed by one batch at a time, and every item lands once`, { timeout: 60_000 }, async () => {
    const state = { down: false, mode, failed: [] };
    const proxy = await outageProxy(state);
    try {
      const url = `http://127.0.0.1:${proxy.address().port}/v1/stream/outage-${mode}-${Date.now()}`;
      const ds = new DurableStream({ url, contentType: 'application/json', retry: { initialDelayMs: 10, maxDelayMs: 40 } });
      await ds.create();
      const producer = new IdempotentProducer(ds, 'p', { lingerMs: 0, maxBatchItems: 1 });
      state.down = true;
      const enough = new Promise((r) => (state.onFailed = () => state.failed.length >= 40 && r()));
      for (let i = 0; i < 10; i++) producer.append({ i });
      await enough;
      // Each batch in flight failed once; after that, only one of them was sent again.
      const firsts = state.failed.filter((seq, i) => state.failed.indexOf(seq) === i);
      const retried = new Set(state.failed.filter((seq, i) => state.failed.indexOf(seq) !== i));
      assert.ok(firsts.length <= 5, `at most maxInFlight batches were sent: ${firsts}`);
      assert.deepEqual([...retried].length, 1, `one batch probed the outage: ${state.failed}`);
      state.down = false;
      await producer.flush();
      await producer.close();
      const items = await stream({ url, json: true }).items();
      assert.deepEqual(items, Array.from({ length: 10 }, (_, i) => ({ i })));
    } finally {
      proxy.closeAllConnections();
      await new Promise((r) => proxy.close(r));
    }
  });
}

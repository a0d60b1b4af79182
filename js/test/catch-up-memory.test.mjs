// A catch-up response is not copied into wasm memory, which never shrinks, so a large catch-up
// does not grow it: a binary stream's body reaches the caller as fetched, a JSON one is decoded
// and parsed by the host. Our Worker answers up to 16 MiB per response, the reference server a
// whole stream in one.
//
// Runs in a process of its own (node --test), so the wasm memory starts at its initial size.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { DurableStream, init, stream } from '../src/node.js';
import wasmExports from '../dist/edgestream_client.js';
import { appendBatch } from '../test-support/append-batch.mjs';
import { useReferenceServer } from '../test-support/reference-server.mjs';

const server = useReferenceServer();

/** The wasm's memory (the build gives its exports short names: found by type, not by name). */
async function wasmMemory() {
  await init();
  return Object.values(await wasmExports()).find((e) => e instanceof WebAssembly.Memory);
}

test('a 24 MiB catch-up of a binary stream leaves wasm memory where it was', async () => {
  const url = `${server.url}/v1/stream/memory-${randomUUID()}`;
  const handle = await DurableStream.create({ url, contentType: 'application/octet-stream' });
  const part = 8 << 20;
  for (const fill of [1, 2, 3]) await handle.append(new Uint8Array(part).fill(fill));
  const memory = await wasmMemory();
  const before = memory.buffer.byteLength;
  let total = 0;
  for await (const batch of stream({ url, offset: '-1', live: false })) {
    // Checked in place: copying the bytes into this test's own arrays is not the point.
    for (let i = 0; i < batch.bytes.length; i += 1 << 20) {
      assert.equal(batch.bytes[i], 1 + Math.floor((total + i) / part));
    }
    total += batch.bytes.length;
  }
  assert.equal(total, 3 * part);
  const grown = memory.buffer.byteLength - before;
  assert.ok(grown < 4 << 20, `wasm memory grew by ${grown} bytes`);
});

test('a 24 MiB catch-up of a JSON stream leaves wasm memory where it was', async () => {
  const url = `${server.url}/v1/stream/memory-json-${randomUUID()}`;
  await DurableStream.create({ url, contentType: 'application/json' });
  const pad = 'j'.repeat(8 << 10);
  let sent = 0;
  for (let a = 0; a < 3; a++) {
    const batch = Array.from({ length: 1000 }, () => ({ i: sent++, pad }));
    await appendBatch(url, batch);
  }
  const memory = await wasmMemory();
  const before = memory.buffer.byteLength;
  let seen = 0;
  for await (const batch of stream({ url, offset: '-1', live: false })) {
    for (const item of batch.items) assert.equal(item.i, seen++);
  }
  assert.equal(seen, sent);
  const grown = memory.buffer.byteLength - before;
  assert.ok(grown < 4 << 20, `wasm memory grew by ${grown} bytes`);
});

test("a JSON catch-up response's messages are handed out in the array JSON.parse made, not copied into another as it grows", async () => {
  // 200,000 small messages copied one by one into a second array cost 6 MB more heap at the peak.
  const url = `${server.url}/v1/stream/memory-items-${randomUUID()}`;
  await DurableStream.create({ url, contentType: 'application/json' });
  await appendBatch(url, Array.from({ length: 5000 }, (_, i) => ({ i })));
  const parse = JSON.parse;
  const parsed = [];
  JSON.parse = (...args) => {
    const value = parse(...args);
    if (Array.isArray(value) && value.length === 5000) parsed.push(value);
    return value;
  };
  const batches = [];
  try {
    for await (const batch of stream({ url, offset: '-1', live: false })) batches.push(batch);
  } finally {
    JSON.parse = parse;
  }
  const full = batches.filter((b) => b.items.length > 0);
  assert.equal(full.length, 1);
  assert.deepEqual(full[0].items.map((m) => m.i), Array.from({ length: 5000 }, (_, i) => i));
  // The reference server runs in this process and may parse the stream too.
  assert.ok(parsed.includes(full[0].items), 'the batch holds a copy of the parsed array');
});

// A batch can hold more messages than a function call takes arguments: the reference server
// answers a whole stream in one response, and ours up to 16 MiB, which is 170,000 messages of
// 100 bytes. Nothing on the way from the response to the caller may spread a batch into a call.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { DurableStream, stream } from '../src/node.js';
import { appendBatch } from '../test-support/append-batch.mjs';
import { useReferenceServer } from '../test-support/reference-server.mjs';

const server = useReferenceServer();

// Well past V8's limit on arguments (about 120,000 with Node's default stack).
const COUNT = 300_000;

async function jsonStreamOf(count) {
  const url = `${server.url}/v1/stream/large-${randomUUID()}`;
  await DurableStream.create({ url, contentType: 'application/json' });
  const part = 100_000;
  for (let start = 0; start < count; start += part) {
    const messages = Array.from({ length: Math.min(part, count - start) }, (_, i) => start + i);
    await appendBatch(url, messages);
  }
  return url;
}

test('items() collects a batch of 300,000 messages', async () => {
  const url = await jsonStreamOf(COUNT);
  let largest = 0;
  for await (const batch of stream({ url, offset: '-1', live: false })) {
    largest = Math.max(largest, batch.items.length);
  }
  // The point of the test: one batch, not several small ones.
  assert.equal(largest, COUNT);
  const items = await stream({ url, offset: '-1', live: false }).items();
  assert.equal(items.length, COUNT);
  for (let i = 0; i < COUNT; i += 9_973) assert.equal(items[i], i);
  assert.equal(items[COUNT - 1], COUNT - 1);
});

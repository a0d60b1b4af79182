// A server that names no incarnation (the reference server) answers an offset past the end of a
// stream with its tail: a 200 whose Stream-Next-Offset is before the offset asked for. Offsets
// only grow, so the stream is shorter than the one the offset was read in (deleted and created
// again): the reader refuses it with INVALID_OFFSET, as edgestream's server refuses such an
// offset, rather than go on from an earlier offset of another stream; a table starts over.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { DurableStream, change, stream, table } from '../src/node.js';
import { useReferenceServer } from '../test-support/reference-server.mjs';

const server = useReferenceServer();

async function replacedByShorter() {
  const url = `${server.url}/s-${randomUUID()}`;
  const old = await DurableStream.create({ url, contentType: 'application/json' });
  await old.append(change.insert('user', 'u1', { name: 'A'.repeat(200) }));
  const { offset } = await old.append(change.insert('user', 'u2', { name: 'Bo' }));
  const first = table({ url, live: false });
  await first.finished;
  const snapshot = first.snapshot();
  await old.delete();
  await DurableStream.create({ url, contentType: 'application/json', body: [change.insert('user', 'u9', { name: 'new' })] });
  return { url, offset, snapshot };
}

test('a reader whose offset is past the end of the stream gets INVALID_OFFSET, in every mode', async () => {
  const { url, offset } = await replacedByShorter();
  for (const live of [false, 'long-poll', 'sse']) {
    await assert.rejects(stream({ url, offset, live }).items(), (e) => e.code === 'INVALID_OFFSET', `live: ${live}`);
  }
  // From the start, or at its own tail, the new stream reads as usual.
  assert.deepEqual((await stream({ url, live: false }).items()).map((m) => m.key), ['u9']);
});

test('a table restored from a snapshot of a longer stream at the URL starts over', async () => {
  const { url, snapshot } = await replacedByShorter();
  const t = table({ url, live: false, from: snapshot });
  let reset = false;
  t.subscribe((u) => {
    reset ||= u.reset;
  });
  await t.finished;
  assert.equal(reset, true);
  assert.deepEqual([...t.keys('user')], ['u9']);
});

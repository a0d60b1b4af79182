// Hierarchical channels from the client (an edgestream extension, so against our Worker only):
// `create({ channel: true })` makes a channel, and a live reader of it gets every message of
// the streams below it, including one created after the reader started, as envelopes, each
// stream announced by a `created` event.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { DurableStream, stream } from '../src/node.js';
import { startServer } from '../../scripts/dev-server.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

test('a channel created by the client follows every stream below it, live', { timeout: 30_000 }, async () => {
  const prefix = `rooms-${randomUUID()}`;
  const base = `${server.baseUrl}/v1/stream`;
  const channel = await DurableStream.create({ url: `${base}/${prefix}`, channel: true });
  assert.equal(channel.contentType, 'application/json');
  // The same create again is a confirmation; without `channel` it is another configuration.
  assert.equal((await channel.create({ channel: true })).created, false);
  await assert.rejects(new DurableStream({ url: channel.url }).create({ contentType: 'application/json' }), (e) => e.status === 409);

  const lobby = await DurableStream.create({ url: `${base}/${prefix}/lobby`, contentType: 'application/json' });
  await lobby.append({ from: 'ana', text: 'hi' });

  const seen = [];
  const handle = stream({ url: channel.url, live: 'sse' });
  const got = (n) =>
    new Promise((resolve) => {
      const stop = handle.subscribe((batch) => {
        seen.push(...batch.items);
        if (seen.length >= n) {
          stop();
          resolve();
        }
      });
    });
  // Each room is announced (`created`) before its first message: 3 streams, 3 messages.
  const first = got(6);
  // A room created after the reader started, and a text stream deeper down.
  const kitchen = await DurableStream.create({ url: `${base}/${prefix}/kitchen`, contentType: 'application/json' });
  await kitchen.append({ from: 'bo', text: 'coffee?' });
  const log = await DurableStream.create({ url: `${base}/${prefix}/kitchen/log`, contentType: 'text/plain' });
  await log.append('kettle on');
  await first;

  const byStream = {};
  for (const m of seen) (byStream[m.stream] ??= []).push(m);
  for (const room of ['lobby', 'kitchen', 'kitchen/log']) {
    assert.deepEqual(byStream[`${prefix}/${room}`][0].event, 'created', room);
  }
  const messages = (room) => byStream[`${prefix}/${room}`].filter((m) => !m.event);
  assert.deepEqual(messages('lobby').map((m) => m.data), [{ from: 'ana', text: 'hi' }]);
  assert.deepEqual(messages('kitchen').map((m) => m.data), [{ from: 'bo', text: 'coffee?' }]);
  assert.deepEqual(messages('kitchen/log').map((m) => m.text), ['kettle on']);
  // Each envelope's offset is the source's offset after the message: reading from it gets nothing.
  const after = await fetch(`${lobby.url}?offset=${messages('lobby')[0].offset}`);
  assert.equal(await after.text(), '[]');
});

// Live keyed tables (js/src/table.js): State Protocol change messages materialized while a
// stream is followed, and resumed from a saved snapshot without reading the stream again.
// Every test runs against the reference server and against our Worker (built by `npm test`
// before this step).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { getEventListeners } from 'node:events';
import { DurableStream, IdempotentProducer, change, storageStore, table } from '../src/node.js';
import { appendBatch as post } from '../test-support/append-batch.mjs';
import { useReferenceServer } from '../test-support/reference-server.mjs';
import { startServer } from '../../scripts/dev-server.mjs';

const reference = useReferenceServer({ longPollTimeout: 500 });
const worker = { url: '', instance: undefined };
before(async () => {
  worker.instance = await startServer({ vars: { LONG_POLL_TIMEOUT_MS: '1000' } });
  worker.url = worker.instance.baseUrl;
});
after(async () => {
  await worker.instance?.stop();
});

// Every GET the client sends, so a test can tell where a table started reading.
const realFetch = globalThis.fetch;
const gets = [];
globalThis.fetch = (url, init = {}) => {
  if (String(init.method ?? 'GET').toUpperCase() === 'GET') gets.push(new URL(String(url)));
  return realFetch(url, init);
};
/** The offsets of the GETs sent for `url` since `since` (an index into `gets`). */
const offsetsRead = (url, since) =>
  gets.slice(since).filter((u) => u.pathname === new URL(url).pathname).map((u) => u.searchParams.get('offset'));

/** Resolves with the first update `predicate` accepts. */
function nextUpdate(t, predicate = () => true) {
  return new Promise((resolve) => {
    const stop = t.subscribe((update) => {
      if (predicate(update)) {
        stop();
        resolve(update);
      }
    });
  });
}

/** A Web Storage stand-in (getItem/setItem) that counts saves. */
function memoryStorage() {
  const map = new Map();
  return {
    saves: 0,
    getItem: (k) => (map.has(k) ? map.get(k) : null),
    setItem(k, v) {
      this.saves++;
      map.set(k, String(v));
    },
  };
}

const sortedRows = (t) => t.snapshot().rows.sort((a, b) => (a[0] + a[1] < b[0] + b[1] ? -1 : 1));

for (const [name, server] of [
  ['reference server', reference],
  ['edgestream Worker', worker],
]) {
  describe(`tables, ${name}`, { timeout: 30_000 }, () => {
    async function jsonStream(...messages) {
      const url = `${server.url}/v1/stream/table-${randomUUID()}`;
      const ds = await DurableStream.create({ url, contentType: 'application/json' });
      if (messages.length > 0) await post(url, messages);
      return { url, ds };
    }

    test('materializes inserts, updates, upserts and deletes, then follows live', async () => {
      const { url, ds } = await jsonStream(
        change.insert('user', 'u1', { name: 'Ada' }),
        change.insert('user', 'u2', { name: 'Bo' }),
        change.insert('room', 'lobby', { topic: 'hi' }),
        change.update('user', 'u1', { name: 'Ada L.' }),
        change.delete('user', 'u2'),
        change.upsert('user', 'u3', { name: 'Cy' }),
      );
      const t = table({ url, live: 'sse' });
      await t.ready();
      assert.equal(t.upToDate, true);
      assert.deepEqual(t.get('user', 'u1'), { name: 'Ada L.' });
      assert.equal(t.has('user', 'u2'), false);
      assert.deepEqual(t.get('user', 'u3'), { name: 'Cy' });
      assert.deepEqual([...t.keys('user')], ['u1', 'u3']);
      assert.deepEqual(t.types().sort(), ['room', 'user']);
      assert.equal(t.size, 3);
      assert.equal(t.count('user'), 2);

      const live = nextUpdate(t, (u) => u.changes.length > 0);
      // The delete of u2, which the table no longer holds, changes nothing and is not reported.
      await post(url, [
        change.update('room', 'lobby', { topic: 'bye' }),
        change.delete('user', 'u2'),
        change.delete('user', 'u1'),
      ]);
      const update = await live;
      assert.deepEqual(
        update.changes.map(({ type, key, operation, value, previous }) => ({ type, key, operation, value, previous })),
        [
          { type: 'room', key: 'lobby', operation: 'update', value: { topic: 'bye' }, previous: { topic: 'hi' } },
          { type: 'user', key: 'u1', operation: 'delete', value: undefined, previous: { name: 'Ada L.' } },
        ],
      );
      assert.equal(update.offset, t.offset);
      assert.equal(t.size, 2);
      assert.deepEqual(t.get('room', 'lobby'), { topic: 'bye' });
      t.cancel();
      await t.finished;
    });

    test('a table resumed from its snapshot reads only what came after it', async () => {
      const { url, ds } = await jsonStream(
        ...Array.from({ length: 50 }, (_, i) => change.insert('item', `k${i}`, { n: i })),
      );
      const first = table({ url, live: false });
      await first.finished;
      const saved = JSON.parse(JSON.stringify(first.snapshot()));
      assert.equal(saved.rows.length, 50);

      await post(url, [change.update('item', 'k7', { n: 700 }), change.delete('item', 'k8')]);
      await ds.append(change.insert('item', 'k50', { n: 50 }));

      const since = gets.length;
      const resumed = table({ url, live: false, from: saved });
      const seen = [];
      resumed.subscribe((u) => seen.push(...u.changes.map((c) => `${c.operation}:${c.key}`)));
      await resumed.finished;
      // It started at the snapshot's offset, and saw only the three later changes.
      assert.equal(offsetsRead(url, since)[0], saved.offset);
      assert.deepEqual(seen, ['update:k7', 'delete:k8', 'insert:k50']);
      // And it holds what a table read from the start holds.
      const fresh = table({ url, live: false });
      await fresh.finished;
      assert.deepEqual(sortedRows(resumed), sortedRows(fresh));
      assert.equal(resumed.offset, fresh.offset);
      assert.equal(resumed.size, 50);
    });

    test('a store keeps the snapshot, and the next table loads it and resumes', async () => {
      const { url, ds } = await jsonStream(change.insert('flag', 'dark', true), change.insert('flag', 'beta', false));
      const storage = memoryStorage();
      const store = storageStore(storage, 'flags');
      // Saves at most once a minute while it follows, and once more at the end.
      const t = table({ url, live: 'long-poll', store, saveEveryMs: 60_000 });
      await t.ready();
      const live = nextUpdate(t, (u) => u.changes.length > 0);
      await ds.append(change.update('flag', 'beta', true));
      await live;
      assert.equal(storage.saves, 1, 'saved once caught up, then not again within saveEveryMs');
      t.cancel();
      await t.finished;
      const stored = JSON.parse(storage.getItem('flags'));
      assert.equal(stored.offset, t.offset, 'the last snapshot is saved on cancel');

      await ds.append(change.delete('flag', 'dark'));
      const since = gets.length;
      const again = table({ url, live: false, store });
      await again.finished;
      assert.equal(offsetsRead(url, since)[0], stored.offset);
      assert.deepEqual(sortedRows(again), [['flag', 'beta', true]]);
      assert.equal(JSON.parse(storage.getItem('flags')).offset, again.offset);
    });

    test('the end of a burst is saved once saveEveryMs has passed, with no later change to prompt it', async () => {
      const { url, ds } = await jsonStream(change.insert('n', 'k', 0));
      const storage = memoryStorage();
      const t = table({ url, live: 'long-poll', store: storageStore(storage, 'burst'), saveEveryMs: 300 });
      try {
        await t.ready();
        for (let i = 1; i <= 5; i++) {
          const seen = nextUpdate(t, (u) => u.changes.length > 0);
          await ds.append(change.update('n', 'k', i));
          await seen;
        }
        assert.notEqual(JSON.parse(storage.getItem('burst')).offset, t.offset, 'the last changes came within saveEveryMs');
        await new Promise((r) => setTimeout(r, 600));
        const saved = JSON.parse(storage.getItem('burst'));
        assert.equal(saved.offset, t.offset);
        assert.deepEqual(saved.rows, [['n', 'k', 5]]);
      } finally {
        t.cancel();
        await t.finished;
      }
    });

    test('a store that cannot save does not stop the table: onError hears of it, and it saves again later', async () => {
      const { url, ds } = await jsonStream(change.insert('flag', 'dark', true));
      const storage = memoryStorage();
      let full = true;
      const setItem = storage.setItem.bind(storage);
      storage.setItem = (key, value) => {
        if (full) throw new DOMException('the quota has been exceeded', 'QuotaExceededError');
        setItem(key, value);
      };
      const t = table({ url, live: 'long-poll', store: storageStore(storage, 'flags'), saveEveryMs: 0 });
      const errors = [];
      t.subscribe(() => {}, (e) => errors.push(e));
      await t.ready();
      assert.equal(errors[0]?.name, 'QuotaExceededError');
      // Still following.
      full = false;
      const live = nextUpdate(t, (u) => u.changes.length > 0);
      await ds.append(change.insert('flag', 'beta', false));
      await live;
      assert.deepEqual(sortedRows(t), [['flag', 'beta', false], ['flag', 'dark', true]]);
      t.cancel();
      await t.finished;
      assert.equal(JSON.parse(storage.getItem('flags')).offset, t.offset);
    });

    test('a reset drops the rows, and the snapshot after it is what the table holds', async () => {
      const { url, ds } = await jsonStream(change.insert('doc', 'a', 1), change.insert('doc', 'b', 2));
      const t = table({ url, live: 'sse' });
      await t.ready();
      const live = nextUpdate(t, (u) => u.reset);
      await post(url, [change.insert('doc', 'c', 3), change.reset(), change.insert('doc', 'd', 4)]);
      const update = await live;
      assert.deepEqual(update.changes.map((c) => c.key), ['d']);
      assert.deepEqual(sortedRows(t), [['doc', 'd', 4]]);
      t.cancel();
    });

    test('a batch with an invalid message fails the table and leaves the rows as they were', async () => {
      const { url, ds } = await jsonStream(change.insert('k', 'x', 1));
      const t = table({ url, live: 'sse' });
      const errors = [];
      // A listener that throws is reported to its onError and stays subscribed.
      let calls = 0;
      t.subscribe(
        () => {
          calls++;
          throw new Error('listener bug');
        },
        (e) => errors.push(e.code ?? e.message),
      );
      await t.ready();
      const before = t.snapshot();
      await post(url, [change.update('k', 'x', 2), { hello: 'world' }]);
      await assert.rejects(t.finished, (e) => e.code === 'PARSE_ERROR' && /not a State Protocol message/.test(e.message));
      assert.deepEqual(t.snapshot(), before);
      // The listener's own error for each batch it saw, then the table's.
      assert.deepEqual(errors, [...Array(calls).fill('listener bug'), 'PARSE_ERROR']);
      assert.ok(calls >= 1);

      // With onInvalid: 'skip', the same stream reads through, and onError hears of what was
      // skipped (it used to tell no one), as the console does with no onError.
      const lenient = table({ url, live: false, onInvalid: 'skip' });
      const skipped = [];
      lenient.subscribe(() => {}, (e) => skipped.push(e));
      await lenient.finished;
      assert.deepEqual(sortedRows(lenient), [['k', 'x', 2]]);
      assert.equal(skipped.length, 1);
      assert.ok(skipped[0].code === 'PARSE_ERROR' && /^message \d+ of the batch before .*not a State Protocol message/.test(skipped[0].message), skipped[0].message);
      const warned = [];
      const warn = console.warn;
      console.warn = (...args) => void warned.push(args);
      try {
        const quiet = table({ url, live: false, onInvalid: 'skip' });
        await quiet.finished;
        assert.deepEqual(sortedRows(quiet), [['k', 'x', 2]]);
      } finally {
        console.warn = warn;
      }
      assert.equal(warned.length, 1);
      assert.equal(warned[0][0], 'edgestream table: skipped:');
      assert.equal(warned[0][1].code, 'PARSE_ERROR');
    });

    test('a listener without onError that throws ends the table, after every listener has the update', async () => {
      const { url } = await jsonStream(change.insert('k', 'a', 1));
      const t = table({ url, live: 'sse' });
      const bug = new Error('listener bug');
      const seen = [];
      const errors = [];
      t.subscribe(() => {
        seen.push('throws');
        throw bug;
      });
      t.subscribe(
        (u) => void seen.push(`handled ${u.offset === t.offset}`),
        (e) => errors.push(e),
      );
      t.subscribe(() => void seen.push('plain'));
      // Not an uncaught exception (which would end this process): finished and ready() reject.
      await assert.rejects(t.finished, (e) => e === bug);
      await assert.rejects(t.ready(), (e) => e === bug);
      assert.deepEqual(seen, ['throws', 'handled true', 'plain']);
      assert.deepEqual(errors, [bug]);
      // The rows match the offset, and stay readable; nothing more is read.
      assert.equal(t.get('k', 'a'), 1);
      const since = gets.length;
      await post(url, [change.insert('k', 'b', 2)]);
      await new Promise((r) => setTimeout(r, 300));
      assert.deepEqual(offsetsRead(url, since), []);
      assert.equal(t.has('k', 'b'), false);
      assert.deepEqual(seen, ['throws', 'handled true', 'plain']);
    });

    test('messages missing what the State Protocol requires are refused', async () => {
      for (const bad of [
        { type: 'a', key: 'b', value: 1 },
        { type: '', key: 'b', value: 1, headers: { operation: 'insert' } },
        { type: 'a', key: 7, value: 1, headers: { operation: 'insert' } },
        { type: 'a', key: 'b', headers: { operation: 'insert' } },
        { type: 'a', key: 'b', value: 1, headers: { operation: 'merge' } },
        { headers: { control: 'rewind' } },
        'text',
      ]) {
        const { url } = await jsonStream(bad);
        const t = table({ url, live: false });
        await assert.rejects(t.finished, { code: 'PARSE_ERROR' }, JSON.stringify(bad));
      }
      // A delete needs no value, and snapshot markers are accepted.
      const { url } = await jsonStream(
        { headers: { control: 'snapshot-start' } },
        change.insert('a', 'b', 1),
        { type: 'a', key: 'b', headers: { operation: 'delete' } },
        { headers: { control: 'snapshot-end', offset: '0' } },
      );
      const ok = table({ url, live: false });
      await ok.finished;
      assert.equal(ok.size, 0);
      // A text stream is no table, even when its bytes happen to be JSON.
      const text = `${server.url}/v1/stream/table-${randomUUID()}`;
      await DurableStream.create({ url: text, contentType: 'text/plain', body: JSON.stringify(change.insert('a', 'b', 1)) });
      await assert.rejects(table({ url: text, live: false }).finished, (e) => e.code === 'PARSE_ERROR' && /not a JSON stream/.test(e.message));
    });

    test('a message with both an operation and a control is a change, as @durable-streams/state reads it', async () => {
      const { url } = await jsonStream(
        change.insert('a', 'x', 1),
        { type: 'a', key: 'y', value: 2, headers: { operation: 'insert', control: 'reset' } },
      );
      const t = table({ url, live: false });
      const resets = [];
      t.subscribe((u) => void resets.push(u.reset));
      await t.finished;
      assert.deepEqual(sortedRows(t), [['a', 'x', 1], ['a', 'y', 2]]);
      assert.ok(!resets.includes(true));
    });

    test('a closed stream ends the table; a producer writes its changes exactly once', async () => {
      const { url, ds } = await jsonStream();
      const t = table({ url, live: 'auto' });
      await t.ready();
      const producer = new IdempotentProducer(ds, `writer-${randomUUID()}`, { lingerMs: 1 });
      for (let i = 0; i < 200; i++) producer.append(change.upsert('counter', `c${i % 10}`, i));
      await producer.close(change.insert('meta', 'done', true));
      await t.finished;
      assert.equal(t.closed, true);
      assert.equal(t.size, 11);
      for (let k = 0; k < 10; k++) assert.equal(t.get('counter', `c${k}`), 190 + k);
      assert.equal(t.get('meta', 'done'), true);
    });
  });
}

test('a snapshot past the tail of a stream created again starts over (edgestream Worker)', async () => {
  const url = `${worker.url}/v1/stream/table-${randomUUID()}`;
  const ds = await DurableStream.create({
    url,
    contentType: 'application/json',
    body: JSON.stringify(Array.from({ length: 20 }, (_, i) => change.insert('old', `k${i}`, i))),
  });
  const first = table({ url, live: false });
  await first.finished;
  const saved = first.snapshot();
  await ds.delete();
  await DurableStream.create({ url, contentType: 'application/json', body: JSON.stringify(change.insert('new', 'k', 1)) });

  const resumed = table({ url, live: false, from: saved });
  const resets = [];
  resumed.subscribe((u) => {
    if (u.reset) resets.push(u.offset);
  });
  await resumed.finished;
  assert.deepEqual(resets, ['-1']);
  assert.deepEqual(sortedRows(resumed), [['new', 'k', 1]]);
});

test('a snapshot of a stream deleted and created again with as much data starts over (edgestream Worker)', async () => {
  // Offsets are byte positions: the new stream has the old one's offset, so only the
  // incarnation the snapshot records tells them apart.
  const url = `${worker.url}/v1/stream/table-${randomUUID()}`;
  const ds = await DurableStream.create({ url, contentType: 'application/json' });
  await ds.append(change.insert('u', 'a', 1));
  const first = table({ url, live: false });
  await first.finished;
  const saved = first.snapshot();
  await ds.delete();
  const again = await DurableStream.create({ url, contentType: 'application/json' });
  await again.append(change.insert('u', 'a', 2));
  await again.append(change.insert('u', 'b', 3));

  const resumed = table({ url, live: false, from: saved });
  const resets = [];
  resumed.subscribe((u) => {
    if (u.reset) resets.push(u.offset);
  });
  await resumed.finished;
  assert.deepEqual(sortedRows(resumed), [['u', 'a', 2], ['u', 'b', 3]]);
  assert.deepEqual(resets, ['-1']);
  assert.equal(typeof saved.incarnation, 'string');
  assert.notEqual(resumed.snapshot().incarnation, saved.incarnation);
  // A snapshot of the same incarnation resumes where it was, as does one without an incarnation.
  const since = gets.length;
  const same = table({ url, live: false, from: resumed.snapshot() });
  await same.finished;
  assert.deepEqual(offsetsRead(url, since), [resumed.offset]);
  const { incarnation, ...older } = resumed.snapshot();
  const untagged = table({ url, live: false, from: older });
  await untagged.finished;
  assert.deepEqual(sortedRows(untagged), [['u', 'a', 2], ['u', 'b', 3]]);
});

test('a table that started over saves the new stream to its store, even at the offset the old snapshot had (edgestream Worker)', async () => {
  const url = `${worker.url}/v1/stream/table-${randomUUID()}`;
  const ds = await DurableStream.create({ url, contentType: 'application/json' });
  await ds.append(change.insert('u', 'a', 1));
  const storage = memoryStorage();
  const store = storageStore(storage, 'u');
  await table({ url, live: false, store }).finished;
  const old = JSON.parse(storage.getItem('u'));
  await ds.delete();
  const again = await DurableStream.create({ url, contentType: 'application/json' });
  await again.append(change.insert('u', 'a', 2)); // as many bytes: the same offset
  const t = table({ url, live: false, store });
  await t.finished;
  assert.equal(t.offset, old.offset);
  const saved = JSON.parse(storage.getItem('u'));
  assert.notEqual(saved.incarnation, old.incarnation);
  assert.deepEqual(saved, t.snapshot());
  assert.deepEqual(saved.rows, [['u', 'a', 2]]);
});

test('ready() rejects when the table is cancelled first; an aborted signal stops it', async () => {
  const url = `${reference.url}/v1/stream/table-${randomUUID()}`;
  await DurableStream.create({ url, contentType: 'application/json' });
  const controller = new AbortController();
  const reason = new Error('left the page');
  controller.abort(reason);
  const t = table({ url, signal: controller.signal });
  await assert.rejects(t.ready(), (e) => e.code === 'ABORTED' && e.cause === reason);
  await t.finished;
  assert.equal(t.size, 0);
});

test("cancelling a table whose store's load() never settles (an IndexedDB open blocked by another tab) ends it", { timeout: 5_000 }, async () => {
  const hung = { load: () => new Promise(() => {}), save: () => {} };
  const url = `${reference.url}/v1/stream/table-${randomUUID()}`;
  const t = table({ url, store: hung });
  t.cancel();
  await assert.rejects(t.ready(), { code: 'ABORTED' });
  await t.finished;
  const controller = new AbortController();
  const aborted = table({ url, store: hung, signal: controller.signal });
  controller.abort();
  await assert.rejects(aborted.ready(), { code: 'ABORTED' });
  await aborted.finished;
});

test('cancel() ends a table whose listener never settles, and saves its snapshot, as a stream handle ends', { timeout: 10_000 }, async () => {
  const url = `${reference.url}/v1/stream/table-${randomUUID()}`;
  await DurableStream.create({ url, contentType: 'application/json', body: JSON.stringify([change.insert('a', 'b', 1)]) });
  const storage = memoryStorage();
  const t = table({ url, live: 'long-poll', store: storageStore(storage, 't'), saveEveryMs: 60_000 });
  const called = new Promise((resolve) => t.subscribe(() => (resolve(), new Promise(() => {}))));
  await called;
  t.cancel();
  await t.finished;
  assert.deepEqual(JSON.parse(storage.getItem('t')), t.snapshot());
  assert.deepEqual(sortedRows(t), [['a', 'b', 1]]);
});

/** A store whose saves settle only when the test says: `calls[i].resolve()`; `nextCall()` waits for a save. */
function heldStore() {
  const calls = [];
  let waiting = [];
  return {
    calls,
    nextCall: (n = calls.length + 1) =>
      calls.length >= n ? Promise.resolve(calls[n - 1]) : new Promise((r) => waiting.push([n, r])),
    load: () => undefined,
    save(snapshot) {
      return new Promise((resolve) => {
        calls.push({ snapshot, resolve });
        for (const [n, r] of waiting) if (calls.length >= n) r(calls[n - 1]);
        waiting = waiting.filter(([n]) => calls.length < n);
      });
    },
  };
}

test("a slow store's saves run one at a time and the newest rows are saved last; it holds neither the reader nor a cancelled table's finished", { timeout: 15_000 }, async () => {
  const url = `${reference.url}/v1/stream/table-${randomUUID()}`;
  const ds = await DurableStream.create({ url, contentType: 'application/json', body: JSON.stringify([change.insert('n', 'k', 0)]) });
  const store = heldStore();
  const t = table({ url, live: 'long-poll', store, saveEveryMs: 300 });
  (await store.nextCall(1)).resolve(); // saved once caught up
  let seen = nextUpdate(t, (u) => u.changes.length > 0);
  await ds.append(change.update('n', 'k', 1));
  await seen;
  // Saved at once or once saveEveryMs has passed; left hanging.
  const held = await store.nextCall(2);
  assert.deepEqual(held.snapshot.rows, [['n', 'k', 1]]);
  seen = nextUpdate(t, (u) => u.changes.length > 0);
  await ds.append(change.update('n', 'k', 2));
  await seen;
  t.cancel();
  await t.finished;
  assert.equal(store.calls.length, 2, 'no save while another runs');
  held.resolve();
  const last = await store.nextCall(3);
  assert.deepEqual(last.snapshot, t.snapshot());
});

test('a save still running when the table starts over does not count as a save of the new stream (edgestream Worker)', { timeout: 15_000 }, async () => {
  const url = `${worker.url}/v1/stream/table-${randomUUID()}`;
  const ds = await DurableStream.create({ url, contentType: 'application/json' });
  await ds.append(change.insert('u', 'a', 1));
  const store = heldStore();
  const t = table({ url, live: 'long-poll', store, saveEveryMs: 0 });
  // The first listener call holds the reader while the stream is replaced by one as long.
  let release;
  const gate = new Promise((r) => (release = r));
  let calls = 0;
  const holding = new Promise((resolve) => t.subscribe(() => (calls++ === 0 ? (resolve(), gate) : undefined)));
  await holding;
  await ds.delete();
  const again = await DurableStream.create({ url, contentType: 'application/json' });
  await again.append(change.insert('u', 'a', 2));
  const caughtUp = nextUpdate(t, (u) => !u.reset && u.upToDate && t.get('u', 'a') === 2);
  release();
  const held = await store.nextCall(1); // the old stream's rows, left hanging
  assert.deepEqual(held.snapshot.rows, [['u', 'a', 1]]);
  await caughtUp; // started over, and read the new stream to the same offset
  assert.equal(t.offset, held.snapshot.offset);
  held.resolve();
  const next = await Promise.race([store.nextCall(2), new Promise((r) => setTimeout(r, 2_000))]);
  next?.resolve();
  t.cancel();
  await t.finished;
  const last = store.calls.at(-1);
  last.resolve();
  assert.deepEqual(last.snapshot, t.snapshot(), 'the store ends with the new stream');
});

test('a store whose save never settles holds finished until cancel(), then not', { timeout: 10_000 }, async () => {
  const url = `${reference.url}/v1/stream/table-${randomUUID()}`;
  await DurableStream.create({ url, contentType: 'application/json', body: JSON.stringify([change.insert('a', 'b', 1)]) });
  const store = heldStore();
  const t = table({ url, live: false, store });
  let settled = false;
  t.finished.then(() => (settled = true));
  await store.nextCall(1);
  await t.ready();
  for (let i = 0; i < 10; i++) await null;
  assert.equal(settled, false, 'a table that ends by itself waits for its last save');
  t.cancel();
  await t.finished;
});

test("a table cancelled before its first response to offset: 'now' saves nothing (a later table would resume from 'now')", async () => {
  const url = `${reference.url}/v1/stream/table-${randomUUID()}`;
  await DurableStream.create({ url, contentType: 'application/json', body: JSON.stringify([change.insert('a', 'b', 1)]) });
  const storage = memoryStorage();
  const t = table({ url, offset: 'now', store: storageStore(storage, 'n') });
  t.cancel();
  await assert.rejects(t.ready(), { code: 'ABORTED' });
  await t.finished;
  assert.equal(storage.getItem('n'), null);
});

test('a listener unsubscribed by another during an update is not called with it, as on an EventTarget', async () => {
  const url = `${reference.url}/v1/stream/table-${randomUUID()}`;
  await DurableStream.create({ url, contentType: 'application/json', body: JSON.stringify([change.insert('a', 'b', 1)]) });
  const t = table({ url, live: false });
  const seen = [];
  let stopB;
  t.subscribe(() => {
    seen.push('A');
    stopB();
  });
  stopB = t.subscribe(() => void seen.push('B'));
  await t.finished;
  assert.deepEqual(seen, ['A']);
});

test('tables let go of a shared signal when they end, and aborting it stops the live ones', async () => {
  const url = `${reference.url}/v1/stream/table-${randomUUID()}`;
  await DurableStream.create({ url, contentType: 'application/json', body: JSON.stringify(change.insert('a', 'b', 1)) });
  const controller = new AbortController();
  const ended = Array.from({ length: 5 }, () => table({ url, live: false, signal: controller.signal }));
  await Promise.all(ended.map((t) => t.finished));
  assert.equal(getEventListeners(controller.signal, 'abort').length, 0);
  const live = table({ url, live: 'sse', signal: controller.signal });
  await live.ready();
  assert.equal(getEventListeners(controller.signal, 'abort').length, 1);
  controller.abort();
  await live.finished;
  assert.deepEqual(sortedRows(live), [['a', 'b', 1]]);
});

test("an onError that throws does not keep the error that ends the table from the other listeners, nor leave a rejection unhandled", async () => {
  const url = `${reference.url}/v1/stream/table-${randomUUID()}`; // never created: NOT_FOUND
  const unhandled = [];
  const onUnhandled = (e) => unhandled.push(e);
  process.on('unhandledRejection', onUnhandled);
  try {
    const t = table({ url, live: false });
    const heard = [];
    t.subscribe(() => {}, () => {
      throw new Error('a bug in the first onError');
    });
    t.subscribe(() => {}, (e) => heard.push(e.code));
    await assert.rejects(t.finished, { code: 'NOT_FOUND' });
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(heard, ['NOT_FOUND']);
    assert.deepEqual(unhandled, []);
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
});

test("a listener that subscribes after the table failed hears why in its onError, as on a stream handle", { timeout: 5_000 }, async () => {
  const url = `${reference.url}/v1/stream/table-${randomUUID()}`; // never created: NOT_FOUND
  const t = table({ url, live: false });
  await assert.rejects(t.finished, { code: 'NOT_FOUND' });
  const heard = await new Promise((resolve) => t.subscribe(() => resolve('an update'), resolve));
  assert.equal(heard.code, 'NOT_FOUND');
});

test('a store whose load() fails does not stop the table: onError hears of it, and the table reads from the start and saves', { timeout: 10_000 }, async () => {
  const url = `${reference.url}/v1/stream/table-${randomUUID()}`;
  await DurableStream.create({ url, contentType: 'application/json', body: JSON.stringify([change.insert('a', 'b', 1)]) });
  for (const load of [
    () => {
      throw new DOMException('the storage is blocked', 'SecurityError');
    },
    async () => {
      throw new DOMException('the database connection was lost', 'UnknownError');
    },
  ]) {
    const saved = [];
    const t = table({ url, live: false, store: { load, save: (s) => void saved.push(s) } });
    const errors = [];
    t.subscribe(() => {}, (e) => errors.push(e.name));
    await t.finished;
    assert.equal(errors.length, 1);
    assert.match(errors[0], /SecurityError|UnknownError/);
    assert.deepEqual(sortedRows(t), [['a', 'b', 1]]);
    assert.deepEqual(saved.at(-1), t.snapshot());
  }
});

test("a listener whose onError throws too keeps the update from no other listener; its error then ends the table", { timeout: 10_000 }, async () => {
  const url = `${reference.url}/v1/stream/table-${randomUUID()}`;
  await DurableStream.create({ url, contentType: 'application/json', body: JSON.stringify([change.insert('a', 'b', 1)]) });
  const t = table({ url, live: 'long-poll' });
  const second = new Error('a bug in onError');
  t.subscribe(
    () => {
      throw new Error('a bug in the listener');
    },
    () => {
      throw second;
    },
  );
  const seen = [];
  t.subscribe((u) => void seen.push(u.offset), () => {});
  await assert.rejects(t.finished, (e) => e === second);
  assert.deepEqual(seen, [t.offset]);
});

test('bad arguments are refused with INVALID_ARGUMENT', () => {
  const invalid = { code: 'INVALID_ARGUMENT' };
  assert.throws(() => table({}), invalid);
  assert.throws(() => table({ url: 'http://x/s', onInvalid: 'ignore' }), invalid);
  assert.throws(() => table({ url: 'http://x/s', store: {} }), invalid);
  assert.throws(() => table({ url: 'http://x/s', from: { offset: '1', rows: [] } }), invalid);
  assert.throws(() => table({ url: 'http://x/s', from: { version: 1, offset: '1', rows: [['t', '', 1]] } }), invalid);
  assert.throws(() => change.insert('', 'k', 1), invalid);
  assert.throws(() => change.insert('t', 'k'), invalid);
  assert.throws(() => change.update('t', 'k', 1, 'txid'), invalid);
  // A control header would make it a control message to other readers: a change has none.
  assert.throws(() => change.insert('t', 'k', 1, { control: 'reset' }), invalid);
  assert.throws(() => change.delete('t', 'k', { control: 'snapshot-end' }), invalid);
  assert.throws(() => storageStore({}, 'k'), invalid);
  assert.deepEqual(change.delete('t', 'k', { txid: 'x1' }), {
    type: 't',
    key: 'k',
    value: null,
    headers: { txid: 'x1', operation: 'delete' },
  });
});

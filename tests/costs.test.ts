// What operations cost in the units Cloudflare bills a SQLite-backed Durable Object for: rows
// read and, a thousand times dearer, rows written, index entries included. The server runs
// with FAULT_MARKER, so each stream's and subscription's answer carries the rows its request
// read and wrote (`x-edgestream-rows`, worker/src/rows.rs). Counts, not times: each is exact for this build
// and its runtime, so a change that writes more rows per operation fails here and says where.
// docs/benchmark.md ("What an operation costs on Cloudflare") has the whole table, from
// bench/costs.mjs.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';
import { receiver } from './support/webhook';

let server: Awaited<ReturnType<typeof startServer>>;
const MARKER = 'never-in-these-paths';

beforeAll(async () => {
  // A stream whose path holds the marker fails its first call of each kind (worker/src/fault.rs):
  // only the test of a retried notification names one.
  server = await startServer({ vars: { FAULT_MARKER: MARKER, WEBHOOK_ALLOW_LOCALHOST: 'true' } });
});

afterAll(async () => {
  await server?.stop();
});

let counter = 0;
const unique = (label: string) => `costs/${label}-${process.pid}-${Date.now()}-${counter++}`;
const text = { 'content-type': 'text/plain' };

async function answer(method: string, name: string, headers: Record<string, string> = {}, body?: string) {
  const res = await fetch(`${server.baseUrl}/v1/stream/${name}`, { method, headers, body });
  await res.arrayBuffer();
  expect(res.status, `${method} ${name}`).toBeLessThan(300);
  return res;
}

/** Rows as `read=R written=W` in header `name`. */
function counted(res: Response, name: string) {
  const found = /^read=(\d+) written=(\d+)$/.exec(res.headers.get(name) ?? '');
  expect(found, name).not.toBeNull();
  return { read: Number(found![1]), written: Number(found![2]) };
}

/** The rows the request read and wrote in the stream's object. */
async function call(method: string, name: string, headers: Record<string, string> = {}, body?: string) {
  return counted(await answer(method, name, headers, body), 'x-edgestream-rows');
}

/** The rows the stream's object has written since it started (a HEAD writes none). */
async function writtenSoFar(name: string) {
  return counted(await answer('HEAD', name), 'x-edgestream-rows-total').written;
}

const producer = (id: string, seq: number) => ({
  ...text,
  'producer-id': id,
  'producer-epoch': '0',
  'producer-seq': String(seq),
});

describe('rows written per operation', () => {
  it('a plain append writes its one log row', async () => {
    const name = unique('plain');
    await call('PUT', name, text);
    await call('POST', name, text, 'first');
    expect((await call('POST', name, text, 'x'.repeat(100))).written).toBe(1);
  });

  // The producers table was keyed by text in a rowid table: each save wrote the row, the key's
  // index beside it, and the age index: 4 rows an append. Without a rowid the key is the table.
  // The state's age stamp (`updated_ms`, indexed to find expired states) is set a step past the
  // append that writes it (1/64 of PRODUCER_TTL_MS) and kept by the appends that come before
  // it, which rewrite the state's row alone: not its age entry (3 rows each, before).
  it("a producer's first append writes its log row, its state and the state's age entry; its next, the log row and the state", async () => {
    const name = unique('producer');
    await call('PUT', name, text);
    expect((await call('POST', name, producer('p', 0), 'a')).written).toBe(3);
    expect((await call('POST', name, producer('p', 1), 'b')).written).toBe(2);
    expect((await call('POST', name, producer('p', 2), 'c')).written).toBe(2);
    // A retry stores nothing.
    expect((await call('POST', name, producer('p', 2), 'c')).written).toBe(0);
    // A new epoch is the same producer's state: its age stamp is kept too.
    expect((await call('POST', name, { ...producer('p', 0), 'producer-epoch': '1' }, 'd')).written).toBe(2);
    expect((await call('GET', `${name}?offset=-1`)).written).toBe(0);
  });

  // The lease is one row of its own, written when taken (or renewed); the holder's appends
  // under it write what any producer's next append writes.
  it('a producer taking the writer lease writes the lease beside its append', async () => {
    const name = unique('lease');
    await call('PUT', name, text);
    expect((await call('POST', name, producer('w', 0), 'a')).written).toBe(3);
    expect((await call('POST', name, { ...producer('w', 1), 'stream-lease-ttl': '60' }, 'b')).written).toBe(3);
    expect((await call('POST', name, producer('w', 2), 'c')).written).toBe(2);
  });

  // The registration a create owes is a row of `pending`, written and deleted in the create's
  // turn: keyed by text in a rowid table, its insert wrote 2 rows (10 in all). The rest is
  // the tables made for the new stream, its schema version and the stream's row.
  it('a create writes its tables, its row, and its owed registration once', async () => {
    const name = unique('create');
    expect((await call('PUT', name, text)).written).toBe(8);
    // The same PUT again is answered from memory.
    expect(await call('PUT', name, text)).toEqual({ read: 1, written: 0 });
  });

  // The registry keeps every stream's path: keyed by text in a rowid table, 2 rows a create.
  it('a create writes one row in the registry', async () => {
    const res = await answer('PUT', unique('registered'), text);
    expect(res.headers.get('x-edgestream-registry-written')).toBe('1');
  });

  // A channel moves its mark for the source in the turn that appends the source's batch: the
  // marks were keyed by text in a rowid table, 3 rows a batch.
  it('a batch a channel takes writes its log row and its mark', async () => {
    const channel = unique('channel');
    const json = { 'content-type': 'application/json' };
    await answer('PUT', channel, { ...json, 'stream-channel': 'true' });
    await answer('PUT', `${channel}/a`, json);
    await answer('POST', `${channel}/a`, json, '{"n":1}');
    const before = await writtenSoFar(channel);
    // The source's append is answered once the channel has the batch.
    await answer('POST', `${channel}/a`, json, '{"n":2}');
    expect((await writtenSoFar(channel)) - before).toBe(2);
  });

  // A source stores where its channel stands (`channel_links.forwarded`) once every 16 batches
  // the channel takes, not with each (2 rows an append before): in between it keeps it in
  // memory, and the channel's mark, moved with its rows, is what makes delivery exact
  // (worker/src/object/channel.rs). Each of these appends is one batch.
  it('a source below a channel stores where the channel stands once every 16 batches', async () => {
    const channel = unique('chanfwd');
    const json = { 'content-type': 'application/json' };
    await answer('PUT', channel, { ...json, 'stream-channel': 'true' });
    const source = `${channel}/a`;
    await answer('PUT', source, json);
    const written: number[] = [];
    for (let i = 0; i < 16; i++) written.push((await call('POST', source, json, `{"n":${i}}`)).written);
    expect(written).toEqual([...Array(15).fill(1), 2]);
  });

  it('reads write nothing', async () => {
    const name = unique('reads');
    await call('PUT', name, text);
    for (let i = 0; i < 3; i++) await call('POST', name, text, `m${i}`);
    expect((await call('GET', `${name}?offset=-1`)).written).toBe(0);
    expect(await call('HEAD', name)).toEqual({ read: 0, written: 0 });
  });
});

// A subscription object's answers carry the same counts. What a stream's notification and the
// subscription's alarm (its deliveries) cost shows in `x-edgestream-rows-total` between two of
// its GETs, which write nothing.
describe('rows a subscription writes', () => {
  const json = { 'content-type': 'application/json' };
  const sub = (id: string, rest = '') => `${server.baseUrl}/v1/stream/__ds/subscriptions/${id}${rest}`;
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  async function subscribe(id: string, body: unknown) {
    // A stream with the marker in its path answers its first link with 503: the PUT is retried.
    for (let i = 0; i < 5; i++) {
      const res = await fetch(sub(id), { method: 'PUT', headers: json, body: JSON.stringify(body) });
      await res.arrayBuffer();
      if (res.status < 300) return;
      expect(res.status).toBe(503);
    }
    throw new Error(`subscription ${id} was never made`);
  }

  async function subWritten(id: string) {
    const res = await fetch(sub(id));
    await res.arrayBuffer();
    expect(res.status).toBe(200);
    return counted(res, 'x-edgestream-rows-total').written;
  }

  /** The rows written once the subscription's alarm is done: the count stops moving. */
  async function settled(id: string) {
    let last = await subWritten(id);
    for (;;) {
      await sleep(400);
      const now = await subWritten(id);
      if (now === last) return now;
      last = now;
    }
  }

  async function until(check: () => boolean | Promise<boolean>, ms = 10_000) {
    const deadline = Date.now() + ms;
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error('timed out');
      await sleep(50);
    }
  }

  const webhook = (pattern: string, url: string) => ({ type: 'webhook', pattern, webhook: { url }, lease_ttl_ms: 600_000 });
  const hits = (hook: Awaited<ReturnType<typeof receiver>>, id: string) => hook.bodies.filter((b) => b?.subscription_id === id).length;

  // The stream writes its log row alone: the alarm its turn sets, not a row, records that the
  // subscriptions are owed its tail (worker/src/object/subscribers.rs). It wrote a `pending`
  // row in the append's turn and deleted it once they answered: 3 rows before. Each
  // subscription whose wake is out (delivered, not yet called back) moves its link's tail, one
  // row.
  it("an append writes its log row in the stream, and its link's tail in each subscription with a wake out", async () => {
    const prefix = unique('subs');
    const stream = `${prefix}/s`;
    const hook = await receiver();
    const ids = [0, 1, 2].map((i) => `cost-${prefix.replaceAll('/', '-')}-${i}`);
    try {
      await answer('PUT', stream, json);
      for (const id of ids) await subscribe(id, webhook(`${prefix}/*`, hook.url));
      await answer('POST', stream, json, '{"n":0}');
      await until(() => ids.every((id) => hits(hook, id) === 1));
      const before = [];
      for (const id of ids) before.push(await settled(id));
      expect((await call('POST', stream, json, '{"n":1}')).written).toBe(1);
      for (const [i, id] of ids.entries()) expect((await subWritten(id)) - before[i], id).toBe(1);
    } finally {
      for (const id of ids) await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });

  // The notification writes the link's tail, the wake's list of streams (one row, keyed by
  // path without a rowid: two before) and the record; the alarm's delivery writes the record
  // as the delivery left it. It saved the record before the delivery too, unchanged from what
  // the notification stored: 6 rows before.
  it('a wake, from the notification that owes it to its delivery, writes 4 rows', async () => {
    const prefix = unique('wake');
    const stream = `${prefix}/s`;
    const id = `cost-${prefix.replaceAll('/', '-')}`;
    const hook = await receiver();
    try {
      await answer('PUT', stream, json);
      await subscribe(id, webhook(`${prefix}/*`, hook.url));
      const before = await settled(id);
      await answer('POST', stream, json, '{"n":0}');
      await until(() => hits(hook, id) === 1);
      expect((await settled(id)) - before).toBe(4);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });

  // A callback (`done`) with more appended since the wake writes the acked cursor, the next
  // wake's list and record, and the record once the alarm delivers it. The list names the
  // same stream at a new tail: its row is moved, where it was deleted and written again (2
  // rows, 3 with its index, and the record saved before the delivery: 7 rows before).
  it('a callback that ends a wake with more pending writes 4 rows, the next delivery included', async () => {
    const prefix = unique('callback');
    const stream = `${prefix}/s`;
    const id = `cost-${prefix.replaceAll('/', '-')}`;
    const hook = await receiver();
    try {
      await answer('PUT', stream, json);
      await subscribe(id, webhook(`${prefix}/*`, hook.url));
      await answer('POST', stream, json, '{"n":0}');
      await until(() => hits(hook, id) === 1);
      await answer('POST', stream, json, '{"n":1}');
      const before = await settled(id);
      const w = hook.bodies.find((b) => b?.subscription_id === id);
      const acks = w.streams.map((s: any) => ({ stream: s.path, offset: s.tail_offset }));
      const res = await fetch(w.callback_url, {
        method: 'POST',
        headers: { ...json, authorization: `Bearer ${w.callback_token}` },
        body: JSON.stringify({ wake_id: w.wake_id, generation: w.generation, acks, done: true }),
      });
      expect(await res.json()).toEqual({ ok: true, next_wake: true });
      await until(() => hits(hook, id) === 2);
      expect((await settled(id)) - before).toBe(4);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });

  // A claim lists again the streams its wake event named, at their tails now: rows whose tail
  // has not moved are kept as they are (the list was deleted and written again, its path index
  // beside it: 4 rows with the record).
  it('a claim with nothing new since its wake event writes the record alone', async () => {
    const prefix = unique('claim');
    const stream = `${prefix}/s`;
    const wake = `${prefix}/wake`;
    const id = `cost-${prefix.replaceAll('/', '-')}`;
    try {
      await answer('PUT', stream, json);
      await answer('PUT', wake, json);
      await subscribe(id, { type: 'pull-wake', streams: [stream], wake_stream: wake, lease_ttl_ms: 600_000 });
      const tail = async () => (await answer('HEAD', wake)).headers.get('stream-next-offset');
      const empty = await tail();
      await answer('POST', stream, json, '{"n":0}');
      await until(async () => (await tail()) !== empty);
      const before = await settled(id);
      const res = await fetch(sub(id, '/claim'), { method: 'POST', headers: json, body: '{"worker":"w"}' });
      await res.arrayBuffer();
      expect(res.status).toBe(200);
      expect((await subWritten(id)) - before).toBe(1);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });

  // A stream that subscriptions cover is told so by its registration, in the turn that settles
  // it: a `subscribers` entry per subscription (keyed by id, without a rowid), flagged `created`
  // so that every notification says the stream is new until that subscription has taken one,
  // across retries and restarts (worker/src/object/subscribers.rs). The registration's
  // notification clears each flag as its subscription answers: a row more per subscription.
  // So a create writes the 8 rows of one that nothing covers, and 2 per subscription; nothing
  // after it (its alarm stands down). Each subscription writes the new stream's link, nothing
  // pending (the stream is empty); the registry its one row.
  it('a create that subscriptions cover writes 2 rows per subscription in the stream, and its link in each', async () => {
    const prefix = unique('covered');
    const hook = await receiver();
    const ids = [0, 1, 2].map((i) => `cost-${prefix.replaceAll('/', '-')}-${i}`);
    const solo = `cost-${prefix.replaceAll('/', '-')}-solo`;
    try {
      for (const id of ids) await subscribe(id, webhook(`${prefix}/*`, hook.url));
      await subscribe(solo, { type: 'webhook', streams: [`${prefix}/x/solo`], webhook: { url: hook.url }, lease_ttl_ms: 600_000 });
      const all = [...ids, solo];
      const before = [];
      for (const id of all) before.push(await settled(id));

      const three = await answer('PUT', `${prefix}/s`, json);
      expect(counted(three, 'x-edgestream-rows').written).toBe(8 + 2 * 3);
      expect(three.headers.get('x-edgestream-registry-written')).toBe('1');
      const one = await answer('PUT', `${prefix}/x/solo`, json);
      expect(counted(one, 'x-edgestream-rows').written).toBe(8 + 2 * 1);
      expect(one.headers.get('x-edgestream-registry-written')).toBe('1');

      for (const [i, id] of all.entries()) expect((await settled(id)) - before[i], id).toBe(1);
      // The streams' objects wrote nothing after their answers (whose totals also hold the
      // rows of the object's start): no retry, no owed row.
      expect(await writtenSoFar(`${prefix}/s`)).toBe(counted(three, 'x-edgestream-rows-total').written);
      expect(await writtenSoFar(`${prefix}/x/solo`)).toBe(counted(one, 'x-edgestream-rows-total').written);
      expect(hits(hook, solo) + ids.reduce((n, id) => n + hits(hook, id), 0)).toBe(0);
    } finally {
      for (const id of [...ids, solo]) await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });

  // A stream tells its subscriptions its tail again when a call failed (here the first
  // subscription's, an injected fault): the ones that had it store nothing (their link was
  // written again, a row each).
  it('a notification of a tail the subscription already has writes nothing', async () => {
    const prefix = unique(`${MARKER}-again`);
    const stream = `${prefix}/s`;
    const hook = await receiver();
    const [first, second] = ['a', 'b'].map((n) => `cost-${prefix.replaceAll('/', '-')}-${n}`);
    try {
      // The stream's first registration fails (503); the retried PUT finishes it.
      for (;;) {
        const res = await fetch(`${server.baseUrl}/v1/stream/${stream}`, { method: 'PUT', headers: json });
        await res.arrayBuffer();
        if (res.status < 300) break;
        expect(res.status).toBe(503);
      }
      await subscribe(first, webhook(`${prefix}/*`, hook.url));
      await subscribe(second, webhook(`${prefix}/*`, hook.url));
      const before = await settled(second);
      // Told at once, the first subscription's call fails; the alarm tells both again.
      await answer('POST', stream, json, '{"n":0}');
      await until(() => hits(hook, first) === 1 && hits(hook, second) === 1);
      // The same 4 rows as any wake (link, list, record, delivery), and none for the retry.
      expect((await settled(second)) - before).toBe(4);
    } finally {
      for (const id of [first, second]) await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });
});

describe('rows a channel writes', () => {
  // A source created below a channel sends it a batch that only announces the stream: the
  // channel's mark answers where the link already is, and the link is not written again.
  it('a create below a channel writes 11 rows', async () => {
    const channel = unique('chan');
    const json = { 'content-type': 'application/json' };
    await answer('PUT', channel, { ...json, 'stream-channel': 'true' });
    expect((await call('PUT', `${channel}/a`, json)).written).toBe(11);
  });
});

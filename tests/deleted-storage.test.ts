// A deleted stream's object gives its storage back (`deleteAll`) once nothing is owed for it,
// and no sooner: a Durable Object's storage is kept, and billed, until it is emptied
// (worker/src/object/mod.rs, `give_back_storage`). Locally each object has an SQLite file in
// wrangler's state directory; those that hold the stream schema hold its SQL text, as in
// tests/auth.test.ts ('requests for streams that do not exist store nothing'). The server runs
// with FAULT_MARKER, so a stream whose path carries it fails its first call of each kind to
// the registry (worker/src/fault.rs).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';
import { objectsHolding } from './support/state';

const MARKER = 'faulty';

let server: Awaited<ReturnType<typeof startServer>>;

beforeAll(async () => {
  server = await startServer({ vars: { FAULT_MARKER: MARKER } });
});

afterAll(async () => {
  await server?.stop();
});

const url = (path: string) => `${server.baseUrl}/v1/stream/${path}`;
let counter = 0;
const unique = (label: string) => `gone-${label}-${process.pid}-${Date.now()}-${counter++}`;
const json = { 'content-type': 'application/json' };
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function request(method: string, path: string, headers: Record<string, string> = {}, body?: string) {
  const res = await fetch(url(path), { method, headers, body });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

/** How many stream objects hold the stream schema (tables, with or without rows). */
const objectsStoring = () => objectsHolding(server.persistTo, 'edgestream-StreamObject', 'CREATE TABLE producers');

/** Polls `check` until it holds or `ms` pass; whether it held. */
async function until(check: () => Promise<boolean> | boolean, ms = 15_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await sleep(100);
  }
}

describe('a deleted stream', () => {
  it('gives its object\'s storage back: no tables, no rows', async () => {
    const before = objectsStoring();
    const streams = Array.from({ length: 5 }, (_, i) => unique(`five-${i}`));
    for (const s of streams) {
      expect((await request('PUT', s, json, '[{"n":1}]')).status).toBe(201);
      const producer = { ...json, 'producer-id': 'p', 'producer-epoch': '0', 'producer-seq': '0' };
      expect((await request('POST', s, producer, '{"n":2}')).status).toBe(200);
    }
    expect(objectsStoring()).toBe(before + 5);
    for (const s of streams) expect((await request('DELETE', s)).status).toBe(204);
    // Given back in the DELETE's own turn: nothing was owed.
    expect(objectsStoring(), 'objects still storing after their streams were deleted').toBe(before);
    for (const s of streams) {
      expect((await request('GET', `${s}?offset=-1`)).status).toBe(404);
      expect((await request('DELETE', s)).status).toBe(404);
    }
    expect(objectsStoring()).toBe(before);
  });

  it('created again at its path is a new stream: a new incarnation, no producer state, no lease, and it is kept', async () => {
    const before = objectsStoring();
    const s = unique('again');
    const created = await request('PUT', s, json, '[{"n":1}]');
    expect(created.status).toBe(201);
    const old = created.headers.get('stream-incarnation');
    expect(old).toBeTruthy();
    const producer = (seq: number) => ({
      ...json,
      'producer-id': 'p',
      'producer-epoch': '3',
      'producer-seq': String(seq),
      'stream-lease-ttl': '600',
    });
    expect((await request('POST', s, producer(0), '{"n":2}')).status).toBe(200);
    expect((await request('POST', s, producer(1), '{"n":3}')).status).toBe(200);
    expect((await request('HEAD', s)).headers.get('stream-lease-expires-at')).toBeTruthy();
    expect((await request('DELETE', s)).status).toBe(204);
    expect(objectsStoring()).toBe(before);

    // The same object, in the same isolate, makes its tables again.
    const again = await request('PUT', s, json);
    expect(again.status).toBe(201);
    expect(again.headers.get('stream-incarnation')).toBeTruthy();
    expect(again.headers.get('stream-incarnation')).not.toBe(old);
    expect(objectsStoring()).toBe(before + 1);
    const head = await request('HEAD', s);
    expect(head.status).toBe(200);
    expect(head.headers.get('stream-lease-expires-at')).toBeNull();
    // The old lease holds nothing here (another producer appends), and the old producer's
    // state means nothing: its seq 0 at epoch 3 is a new append (200), not a duplicate (204).
    const other = { ...json, 'producer-id': 'q', 'producer-epoch': '0', 'producer-seq': '0' };
    expect((await request('POST', s, other, '{"m":1}')).status).toBe(200);
    const p = { ...json, 'producer-id': 'p', 'producer-epoch': '3', 'producer-seq': '0' };
    expect((await request('POST', s, p, '{"m":2}')).status).toBe(200);
    const read = await request('GET', `${s}?offset=-1`);
    expect(read.status).toBe(200);
    expect(JSON.parse(read.text)).toEqual([{ m: 1 }, { m: 2 }]);
    expect(read.headers.get('stream-incarnation')).toBe(again.headers.get('stream-incarnation'));

    // Stored for real: it reads back after a hard restart, and goes again on DELETE.
    await server.restart({ hard: true });
    const after = await request('GET', `${s}?offset=-1`);
    expect(after.status).toBe(200);
    expect(JSON.parse(after.text)).toEqual([{ m: 1 }, { m: 2 }]);
    expect(objectsStoring()).toBe(before + 1);
    expect((await request('DELETE', s)).status).toBe(204);
    expect(objectsStoring()).toBe(before);
  }, 60_000);

  it('read by forks keeps its storage (410) until the last fork goes, then gives it back', async () => {
    const before = objectsStoring();
    const source = unique('source');
    const forks = [unique('fork-a'), unique('fork-b')];
    expect((await request('PUT', source, json, '[{"n":1}]')).status).toBe(201);
    const forkOf = { ...json, 'stream-forked-from': `/v1/stream/${source}` };
    for (const f of forks) expect((await request('PUT', f, forkOf)).status).toBe(201);
    expect(objectsStoring()).toBe(before + 3);
    expect((await request('DELETE', source)).status).toBe(204);
    expect((await request('GET', `${source}?offset=-1`)).status).toBe(410);
    expect(objectsStoring(), 'the source is kept for its forks').toBe(before + 3);
    expect((await request('DELETE', forks[0])).status).toBe(204);
    expect(objectsStoring()).toBe(before + 2);
    // The other fork still reads the source's bytes.
    const read = await request('GET', `${forks[1]}?offset=-1`);
    expect(read.status).toBe(200);
    expect(JSON.parse(read.text)).toEqual([{ n: 1 }]);
    expect((await request('GET', `${source}?offset=-1`)).status).toBe(410);
    expect((await request('DELETE', forks[1])).status).toBe(204);
    // The last fork's release removes the source (from its alarm), which then gives back.
    expect(await until(() => objectsStoring() === before)).toBe(true);
    expect((await request('GET', `${source}?offset=-1`)).status).toBe(404);
  });

  it('whose deregistration fails keeps its storage until the alarm has told the registry, across a hard restart', async () => {
    const before = objectsStoring();
    const s = `${unique('owed')}/${MARKER}`;
    // Its first registration fails (503); the retried PUT finishes it.
    expect((await request('PUT', s, json)).status).toBe(503);
    expect((await request('PUT', s, json)).status).toBe(200);
    expect(objectsStoring()).toBe(before + 1);
    // Its first call to tell the registry it is gone fails: that call is owed, so the object
    // keeps it (and nothing of the stream: 404).
    expect((await request('DELETE', s)).status).toBe(204);
    expect((await request('GET', `${s}?offset=-1`)).status).toBe(404);
    expect(objectsStoring(), 'storage given back while a call was still owed').toBe(before + 1);
    // workerd dies; the alarm stored with the owed call runs it (the new isolate's first
    // attempt fails again, then it goes through) and then gives the storage back.
    await server.restart({ hard: true });
    expect(await until(() => objectsStoring() === before, 30_000)).toBe(true);
    expect((await request('GET', `${s}?offset=-1`)).status).toBe(404);
    // Created again in this isolate, whose first registration fails too (503), then goes
    // through: the emptied object stores the new stream and its owed registration again.
    expect((await request('PUT', s, json, '[{"n":2}]')).status).toBe(503);
    expect((await request('PUT', s, json)).status).toBe(200);
    expect(objectsStoring()).toBe(before + 1);
    expect(JSON.parse((await request('GET', `${s}?offset=-1`)).text)).toEqual([{ n: 2 }]);
  }, 60_000);

  it('behind its channel keeps its storage (the backlog, the deleted event owed) until the channel has it all', async () => {
    const before = objectsStoring();
    const channel = unique('chan');
    expect((await request('PUT', channel, { 'stream-channel': 'true' })).status).toBe(201);
    const source = `${channel}/${MARKER}-src`;
    // Its first registration fails (503), then the retried PUT links it to the channel.
    expect((await request('PUT', source, json)).status).toBe(503);
    expect((await request('PUT', source, json)).status).toBe(200);
    // Its first delivery fails: both appends are acknowledged with the channel behind.
    for (let n = 1; n <= 2; n++) expect((await request('POST', source, json, JSON.stringify({ n }))).status).toBe(204);
    expect(objectsStoring()).toBe(before + 2);
    // Its first call to the registry and its first deleted event fail too: what the channel
    // has not had is owed, so the source's object keeps it.
    expect((await request('DELETE', source)).status).toBe(204);
    expect(objectsStoring(), 'storage given back while the channel was owed messages').toBe(before + 2);
    const events = async () => {
      const res = await request('GET', `${channel}?offset=-1`);
      return (JSON.parse(res.text) as any[]).filter((e) => e.stream === source).map((e) => e.event ?? e.data);
    };
    // The alarm delivers the rest, then the event, then gives the storage back.
    expect(await until(() => objectsStoring() === before + 1, 30_000)).toBe(true);
    expect(await events()).toEqual(['created', { n: 1 }, { n: 2 }, 'deleted']);
  }, 60_000);

  it('that expires gives its storage back from its alarm, and its path can be created again', async () => {
    const before = objectsStoring();
    const s = unique('ttl');
    expect((await request('PUT', s, { ...json, 'stream-ttl': '1' }, '[{"n":1}]')).status).toBe(201);
    expect(objectsStoring()).toBe(before + 1);
    // No request: the expiry alarm removes it and gives the storage back.
    expect(await until(() => objectsStoring() === before)).toBe(true);
    expect((await request('GET', `${s}?offset=-1`)).status).toBe(404);
    expect(objectsStoring()).toBe(before);
    expect((await request('PUT', s, json, '[{"n":2}]')).status).toBe(201);
    const read = await request('GET', `${s}?offset=-1`);
    expect(JSON.parse(read.text)).toEqual([{ n: 2 }]);
  });
});

describe('an admin request for a subscription id that has none', () => {
  it('stores nothing; only a PUT that creates the subscription does', async () => {
    const subscriptionsStoring = () =>
      objectsHolding(server.persistTo, 'edgestream-SubscriptionObject', 'CREATE TABLE snapshot');
    const before = subscriptionsStoring();
    const id = `none-${process.pid}-${Date.now()}`;
    const sub = `__ds/subscriptions/${id}`;
    expect((await request('GET', sub)).status).toBe(404);
    expect((await request('DELETE', sub)).status).toBe(204);
    expect((await request('POST', `${sub}/streams`, json, '{"streams":["a"]}')).status).toBe(404);
    expect((await request('DELETE', `${sub}/streams/a`)).status).toBe(404);
    expect((await request('POST', `${sub}/claim`, json, '{}')).status).toBe(404);
    // A PUT refused before anything is stored.
    expect((await request('PUT', sub, json, '{"type":"webhook"}')).status).toBe(400);
    expect(subscriptionsStoring(), 'subscription objects stored for ids with no subscription').toBe(before);
    const body = JSON.stringify({ type: 'pull-wake', pattern: `${id}/*`, wake_stream: `${id}-wake` });
    expect((await request('PUT', sub, json, body)).status).toBe(201);
    expect(subscriptionsStoring()).toBe(before + 1);
    expect((await request('GET', sub)).status).toBe(200);
    expect((await request('DELETE', sub)).status).toBe(204);
    expect((await request('GET', sub)).status).toBe(404);
  });
});

// Hierarchical channels, end to end against the built Worker on wrangler dev: a channel
// (`PUT` with `Stream-Channel: true`) is a JSON stream that receives one envelope per message of
// every stream strictly below its path (JSON data, text or base64; large appends in pieces; a
// closed event after a closed source's last message), exactly once and in each source's order,
// from the moment it exists; it is read in every mode (catch-up, long-poll, SSE, WebSocket);
// clients cannot append to it (405, over HTTP and over a socket); nested channels each get
// their copy; a new channel links every existing stream below it; a deleted channel stops
// receiving; a source deleted and created again is a new source; and what a source holds
// reaches its channels across a hard restart.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'undici';
import { startServer } from '../scripts/dev-server.mjs';
import { handshake } from './support/handshake';

let server: Awaited<ReturnType<typeof startServer>>;

beforeAll(async () => {
  // A new channel links the streams below it 25 per call to the registry, so the test of 70
  // streams sees several calls.
  server = await startServer({ vars: { LONG_POLL_TIMEOUT_MS: '5000', LINKS_PER_CALL: '25' } });
});

afterAll(async () => {
  await server?.stop();
});

const base = () => `${server.baseUrl}/v1/stream`;
let counter = 0;
/** A fresh tree for one test, so tests never see each other's streams. */
const tree = (label: string) => `chan-${label}-${process.pid}-${Date.now()}-${counter++}`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const json = { 'content-type': 'application/json' };
const channelHeaders = { 'stream-channel': 'true' };

type Envelope = { stream: string; offset: string; data?: unknown; text?: string; base64?: string; event?: string };

async function call(method: string, name: string, headers: Record<string, string> = {}, body?: string | Uint8Array, query = '') {
  const res = await fetch(`${base()}/${name}${query}`, { method, headers, body: body as BodyInit | undefined });
  const text = method === 'HEAD' ? '' : await res.text();
  return { status: res.status, headers: res.headers, text };
}

const put = (name: string, headers: Record<string, string> = {}, body?: string) => call('PUT', name, headers, body);
const post = (name: string, body: string | Uint8Array, headers: Record<string, string> = json) =>
  call('POST', name, headers, body);

/** The headers of the 101 that upgrades `name` to a `live=ws` socket (the socket is dropped). */
async function upgradeHeaders(name: string) {
  const answer = await handshake(`${base()}/${name}?offset=-1&live=ws`);
  expect(answer.status).toBe(101);
  return answer.headers;
}

async function createChannel(name: string) {
  const res = await put(name, channelHeaders);
  expect(res.status).toBe(201);
}

/** A `created` or `deleted` event: the tests of messages leave them out. */
const lifecycle = (e: any) => e?.event === 'created' || e?.event === 'deleted';

/** Every message of a JSON stream (for a channel, all but its created and deleted events). */
async function readAll<T = unknown>(name: string): Promise<T[]> {
  return (await readRaw<T>(name)).filter((e) => !lifecycle(e));
}

/** Every message of a JSON stream from -1, following pages to the tail. */
async function readRaw<T = unknown>(name: string): Promise<T[]> {
  let offset = '-1';
  const out: T[] = [];
  for (;;) {
    const res = await call('GET', name, {}, undefined, `?offset=${encodeURIComponent(offset)}`);
    expect(res.status).toBe(200);
    out.push(...(JSON.parse(res.text) as T[]));
    offset = res.headers.get('stream-next-offset')!;
    if (res.headers.get('stream-up-to-date') === 'true') return out;
  }
}

async function waitFor(done: () => boolean, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!done() && Date.now() < deadline) await sleep(20);
  return done();
}

/** Polls an async condition until it holds or `timeoutMs` pass; whether it held. */
async function waitForAsync(done: () => Promise<boolean>, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await done()) return true;
    if (Date.now() > deadline) return false;
    await sleep(50);
  }
}

/** The channel's envelopes once `done` holds for them (polled), or the last ones read. */
async function channelUntil(name: string, done: (all: Envelope[]) => boolean, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  let all: Envelope[] = [];
  while (Date.now() < deadline) {
    all = await readAll<Envelope>(name);
    if (done(all)) return all;
    await sleep(100);
  }
  return all;
}

describe('creating a channel', () => {
  it('is a JSON stream marked Stream-Channel, idempotent on a second PUT', async () => {
    const root = tree('create');
    const res = await put(root, channelHeaders);
    expect(res.status).toBe(201);
    expect(res.headers.get('stream-channel')).toBe('true');
    expect(res.headers.get('content-type')).toBe('application/json');
    const head = await call('HEAD', root);
    expect(head.status).toBe(200);
    expect(head.headers.get('stream-channel')).toBe('true');
    const get = await call('GET', root, {}, undefined, '?offset=-1');
    expect(get.status).toBe(200);
    expect(get.headers.get('stream-channel')).toBe('true');
    expect(get.text).toBe('[]');
    const now = await call('GET', root, {}, undefined, '?offset=now');
    expect(now.status).toBe(200);
    expect(now.headers.get('stream-channel')).toBe('true');
    expect((await put(root, { ...channelHeaders, ...json })).status).toBe(200);
    expect((await put(root, channelHeaders)).status).toBe(200);
    // A plain stream says nothing of channels.
    const plain = await put(`${root}/plain`, json);
    expect(plain.status).toBe(201);
    expect(plain.headers.get('stream-channel')).toBeNull();
    expect((await call('HEAD', `${root}/plain`)).headers.get('stream-channel')).toBeNull();
  });

  it('refuses a second PUT that differs in being a channel (409)', async () => {
    const root = tree('mismatch');
    await createChannel(root);
    const without = await put(root, json);
    expect(without.status).toBe(409);
    const withFalse = await put(root, { ...json, 'stream-channel': 'false' });
    expect(withFalse.status).toBe(409);
    const plain = `${root}-plain`;
    expect((await put(plain, json)).status).toBe(201);
    const asChannel = await put(plain, channelHeaders);
    expect(asChannel.status).toBe(409);
    expect(asChannel.headers.get('content-type')).toContain('text/plain');
    // And a channel PUT again with a different TTL is a mismatch like any other.
    expect((await put(root, { ...channelHeaders, 'stream-ttl': '60' })).status).toBe(409);
  });

  it('refuses a channel that is not JSON, has a body, is a fork, is closed, or a bad header value (400)', async () => {
    const root = tree('bad');
    const cases: [Record<string, string>, string | undefined][] = [
      [{ ...channelHeaders, 'content-type': 'text/plain' }, undefined],
      [{ ...channelHeaders, ...json }, '[{"a":1}]'],
      [{ ...channelHeaders, 'stream-forked-from': `/v1/stream/${root}-src` }, undefined],
      [{ ...channelHeaders, 'stream-closed': 'true' }, undefined],
      [{ 'stream-channel': 'yes' }, undefined],
    ];
    expect((await put(`${root}-src`, json)).status).toBe(201);
    for (const [headers, body] of cases) {
      const res = await put(root, headers, body);
      expect(res.status, JSON.stringify(headers)).toBe(400);
      expect(res.headers.get('content-type')).toContain('text/plain');
      expect(res.text.length).toBeGreaterThan(0);
    }
    // None of them created anything.
    expect((await call('HEAD', root)).status).toBe(404);
  });

  it('refuses appends from clients with 405 and an Allow header', async () => {
    const root = tree('post');
    await createChannel(root);
    for (const headers of [json, { 'content-type': 'text/plain' }, {}]) {
      const res = await post(root, '{"x":1}', headers);
      expect(res.status).toBe(405);
      expect(res.headers.get('allow')).toContain('GET');
      expect(res.headers.get('allow')).not.toContain('POST');
      expect(res.headers.get('content-type')).toContain('text/plain');
      expect(res.text).toMatch(/channel/);
    }
    const close = await call('POST', root, { 'stream-closed': 'true' });
    expect(close.status).toBe(405);
    expect(await readAll(root)).toEqual([]);
  });
});

describe('delivery', () => {
  it('wraps each message of a JSON source with its stream and offset', async () => {
    const root = tree('json');
    await createChannel(root);
    const source = `${root}/lobby`;
    expect((await put(source, json)).status).toBe(201);
    const first = await post(source, '[{"a":1},{"b":"x\\"y"}]');
    expect(first.status).toBe(204);
    const second = await post(source, '"hello"');
    const all = await channelUntil(root, (a) => a.length >= 3);
    expect(all.map((e) => e.data)).toEqual([{ a: 1 }, { b: 'x"y' }, 'hello']);
    expect(all.every((e) => e.stream === source)).toBe(true);
    expect(all[1].offset).toBe(first.headers.get('stream-next-offset'));
    expect(all[2].offset).toBe(second.headers.get('stream-next-offset'));
    // Each envelope's offset is where the source's next message starts.
    const after = await call('GET', source, {}, undefined, `?offset=${all[0].offset}`);
    expect(JSON.parse(after.text)).toEqual([{ b: 'x"y' }, 'hello']);
    expect(Object.keys(all[0]).sort()).toEqual(['data', 'offset', 'stream']);
  });

  it('wraps each append of a text source as text and of a binary one as base64', async () => {
    const root = tree('bytes');
    await createChannel(root);
    expect((await put(`${root}/log`, { 'content-type': 'text/plain' })).status).toBe(201);
    expect((await put(`${root}/bin`, { 'content-type': 'application/octet-stream' })).status).toBe(201);
    const one = await post(`${root}/log`, 'line one\n', { 'content-type': 'text/plain' });
    const two = await post(`${root}/log`, 'ünïcode "two"', { 'content-type': 'text/plain' });
    const bin = await post(`${root}/bin`, new Uint8Array([0, 255, 1, 2]), { 'content-type': 'application/octet-stream' });
    const all = await channelUntil(root, (a) => a.length >= 3);
    const log = all.filter((e) => e.stream === `${root}/log`);
    expect(log).toEqual([
      { stream: `${root}/log`, offset: one.headers.get('stream-next-offset'), text: 'line one\n' },
      { stream: `${root}/log`, offset: two.headers.get('stream-next-offset'), text: 'ünïcode "two"' },
    ]);
    const bins = all.filter((e) => e.stream === `${root}/bin`);
    expect(bins).toEqual([{ stream: `${root}/bin`, offset: bin.headers.get('stream-next-offset'), base64: 'AP8BAg==' }]);
  });

  it('carries an append larger than a batch in consecutive pieces, and a large JSON message whole', async () => {
    const root = tree('large');
    await createChannel(root);
    const text = `${root}/text`;
    const doc = `${root}/doc`;
    expect((await put(text, { 'content-type': 'text/plain' })).status).toBe(201);
    expect((await put(doc, json)).status).toBe(201);
    const big = Array.from({ length: 2600 }, (_, i) => `line ${i} ${'x'.repeat(1000)}\n`).join('');
    const appended = await post(text, big, { 'content-type': 'text/plain' });
    expect(appended.status).toBe(204);
    const value = { blob: 'y'.repeat(1_500_000) };
    const jsonAppend = await post(doc, JSON.stringify(value));
    const all = await channelUntil(root, (a) => a.some((e) => e.stream === doc) && a.filter((e) => e.stream === text).map((e) => e.text).join('').length >= big.length, 30_000);
    const pieces = all.filter((e) => e.stream === text);
    expect(pieces.length).toBeGreaterThan(1);
    expect(pieces.map((e) => e.text).join('')).toBe(big);
    const offsets = pieces.map((e) => e.offset);
    expect([...offsets].sort()).toEqual(offsets);
    expect(offsets[offsets.length - 1]).toBe(appended.headers.get('stream-next-offset'));
    const docs = all.filter((e) => e.stream === doc);
    expect(docs).toEqual([{ stream: doc, offset: jsonAppend.headers.get('stream-next-offset'), data: value }]);
  }, 60_000);

  it('cuts a large text append between characters, so every piece is text', async () => {
    const root = tree('utf8');
    await createChannel(root);
    const source = `${root}/text`;
    expect((await put(source, { 'content-type': 'text/plain' })).status).toBe(201);
    // A batch holds 1 MiB: with one byte before it, each 3-byte € puts the cut inside a
    // character, and 4-byte emoji do the same at the second cut.
    const big = 'a'.repeat(1024 * 1024 - 1) + '€'.repeat(400_000) + '😀'.repeat(10);
    const appended = await post(source, big, { 'content-type': 'text/plain; charset=utf-8' });
    expect(appended.status).toBe(204);
    const all = await channelUntil(root, (a) => a.filter((e) => e.stream === source).map((e) => e.text ?? '').join('').length >= big.length, 30_000);
    const pieces = all.filter((e) => e.stream === source);
    expect(pieces.length).toBeGreaterThan(1);
    expect(pieces.every((e) => typeof e.text === 'string' && e.base64 === undefined)).toBe(true);
    expect(pieces.map((e) => e.text).join('')).toBe(big);
    expect(pieces[pieces.length - 1].offset).toBe(appended.headers.get('stream-next-offset'));
  }, 60_000);

  it('covers any depth on segment boundaries, never a sibling prefix; nested channels each get one copy', async () => {
    const root = tree('nested');
    await createChannel(`${root}/rooms`);
    await createChannel(`${root}/rooms/eu`);
    for (const s of ['rooms/eu/paris', 'rooms/lobby', 'roomsx/a', 'rooms/eu/deep/er']) {
      expect((await put(`${root}/${s}`, json)).status).toBe(201);
    }
    expect((await post(`${root}/rooms/eu/paris`, '{"n":"paris"}')).status).toBe(204);
    expect((await post(`${root}/rooms/lobby`, '{"n":"lobby"}')).status).toBe(204);
    expect((await post(`${root}/roomsx/a`, '{"n":"sibling"}')).status).toBe(204);
    expect((await post(`${root}/rooms/eu/deep/er`, '{"n":"deeper"}')).status).toBe(204);
    const rooms = await channelUntil(`${root}/rooms`, (a) => a.length >= 3);
    const eu = await channelUntil(`${root}/rooms/eu`, (a) => a.length >= 2);
    // Nothing more arrives late.
    await sleep(500);
    expect((await readAll<Envelope>(`${root}/rooms`)).map((e) => e.data)).toEqual([
      { n: 'paris' },
      { n: 'lobby' },
      { n: 'deeper' },
    ]);
    expect(rooms.map((e) => e.stream)).toEqual([`${root}/rooms/eu/paris`, `${root}/rooms/lobby`, `${root}/rooms/eu/deep/er`]);
    expect((await readAll<Envelope>(`${root}/rooms/eu`)).map((e) => e.data)).toEqual([{ n: 'paris' }, { n: 'deeper' }]);
    expect(eu).toHaveLength(2);
  });

  it('feeds a stream created before the channel from its tail, and one created after from its start', async () => {
    const root = tree('before');
    const old = `${root}/old`;
    expect((await put(old, json, '[{"history":1}]')).status).toBe(201);
    expect((await post(old, '{"history":2}')).status).toBe(204);
    await createChannel(root);
    expect((await post(old, '{"live":1}')).status).toBe(204);
    const fresh = `${root}/fresh`;
    expect((await put(fresh, json, '[{"initial":1}]')).status).toBe(201);
    const all = await channelUntil(root, (a) => a.length >= 2);
    await sleep(300);
    const again = await readAll<Envelope>(root);
    expect(again).toEqual(all);
    expect(all.map((e) => [e.stream, e.data])).toEqual([
      [old, { live: 1 }],
      [fresh, { initial: 1 }],
    ]);
  });

  it('links every existing stream below a new channel, over several calls to the registry', async () => {
    const root = tree('many');
    const names = Array.from({ length: 70 }, (_, i) => `${root}/r${i}/s`);
    for (let i = 0; i < names.length; i += 10) {
      const created = await Promise.all(names.slice(i, i + 10).map((n) => put(n, json)));
      for (const res of created) expect(res.status).toBe(201);
    }
    await createChannel(root);
    for (let i = 0; i < names.length; i += 10) {
      const appended = await Promise.all(names.slice(i, i + 10).map((n) => post(n, JSON.stringify({ n }))));
      for (const res of appended) expect(res.status).toBe(204);
    }
    const all = await channelUntil(root, (a) => a.length >= names.length);
    await sleep(300);
    expect((await readAll(root)).length).toBe(names.length);
    expect(new Set(all.map((e) => e.stream))).toEqual(new Set(names));
    expect(all.every((e) => (e.data as { n: string }).n === e.stream)).toBe(true);
  }, 60_000);

  it('keeps each source in order, with no gap or duplicate, under concurrent appends to several sources', async () => {
    const root = tree('order');
    await createChannel(root);
    const sources = Array.from({ length: 5 }, (_, i) => `${root}/s${i}`);
    for (const s of sources) expect((await put(s, json)).status).toBe(201);
    const perSource = 40;
    // Each source gets its appends four at a time; all sources at once.
    await Promise.all(
      sources.map(async (s, i) => {
        for (let k = 0; k < perSource; k += 4) {
          const batch = [k, k + 1, k + 2, k + 3].map((n) => post(s, JSON.stringify({ src: i, n })));
          for (const res of await Promise.all(batch)) expect(res.status).toBe(204);
        }
      }),
    );
    const total = sources.length * perSource;
    const all = await channelUntil(root, (a) => a.length >= total, 30_000);
    await sleep(500);
    expect((await readAll(root)).length).toBe(total);
    for (const s of sources) {
      const mine = all.filter((e) => e.stream === s);
      // Exactly the source's own log, in its order, each with the source's offset after it.
      const log = await readAll<{ src: number; n: number }>(s);
      expect(mine.map((e) => e.data)).toEqual(log);
      expect(new Set(mine.map((e) => (e.data as { n: number }).n)).size).toBe(perSource);
      const offsets = mine.map((e) => e.offset);
      expect([...offsets].sort()).toEqual(offsets);
      expect(new Set(offsets).size).toBe(perSource);
      const tail = (await call('HEAD', s)).headers.get('stream-next-offset');
      expect(offsets[offsets.length - 1]).toBe(tail);
    }
  }, 90_000);

  it('reaches a live SSE reader of the channel', async () => {
    const root = tree('sse');
    await createChannel(root);
    const source = `${root}/talk`;
    expect((await put(source, json)).status).toBe(201);
    const ctrl = new AbortController();
    const res = await fetch(`${base()}/${root}?offset=now&live=sse`, { signal: ctrl.signal });
    expect(res.status).toBe(200);
    expect(res.headers.get('stream-channel')).toBe('true');
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let text = '';
    // Let the reader settle, then append.
    await sleep(200);
    const appended = await post(source, '{"said":"hi"}');
    expect(appended.status).toBe(204);
    const deadline = Date.now() + 10_000;
    while (!text.includes('"said":"hi"') && Date.now() < deadline) {
      const { value, done } = await Promise.race([
        reader.read(),
        sleep(deadline - Date.now()).then(() => ({ value: undefined, done: true })),
      ]);
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    ctrl.abort();
    expect(text).toContain('event: data');
    const line = text.split('\n').find((l) => l.includes('"said":"hi"'))!;
    const events = JSON.parse(line.replace(/^data: ?/, '')) as Envelope[];
    expect(events).toEqual([{ stream: source, offset: appended.headers.get('stream-next-offset'), data: { said: 'hi' } }]);
  });

  it('answers a long-poll reader of the channel when a source is appended to', async () => {
    const root = tree('poll');
    await createChannel(root);
    const source = `${root}/talk`;
    expect((await put(source, json)).status).toBe(201);
    const tail = (await call('HEAD', root)).headers.get('stream-next-offset')!;
    const poll = fetch(`${base()}/${root}?offset=${tail}&live=long-poll`);
    await sleep(200);
    const appended = await post(source, '{"polled":true}');
    const res = await poll;
    expect(res.status).toBe(200);
    expect(res.headers.get('stream-channel')).toBe('true');
    expect(await res.json()).toEqual([{ stream: source, offset: appended.headers.get('stream-next-offset'), data: { polled: true } }]);
  });

  it('is followed over a WebSocket like any JSON stream, and refuses append frames with 405', async () => {
    const root = tree('ws');
    await createChannel(root);
    const source = `${root}/talk`;
    expect((await put(source, json)).status).toBe(201);
    const ws = new WebSocket(`${base().replace(/^http/, 'ws')}/${root}?offset=-1&live=ws`);
    const messages: any[] = [];
    ws.addEventListener('message', (e) => {
      if (typeof e.data === 'string') messages.push(JSON.parse(e.data));
    });
    await new Promise<void>((resolve, reject) => {
      ws.addEventListener('open', () => resolve());
      ws.addEventListener('error', () => reject(new Error('cannot open the socket')));
    });
    const appended = await post(source, '{"w":1}');
    const items = () => messages.filter((m) => m.type === 'data').flatMap((m) => m.items).filter((e) => !lifecycle(e));
    expect(await waitFor(() => items().length >= 1)).toBe(true);
    expect(items()).toEqual([{ stream: source, offset: appended.headers.get('stream-next-offset'), data: { w: 1 } }]);
    ws.send(JSON.stringify({ type: 'append', id: 7, data: { forged: true } }));
    expect(await waitFor(() => messages.some((m) => m.id === 7))).toBe(true);
    const reply = messages.find((m) => m.id === 7);
    expect([reply.type, reply.status]).toEqual(['error', 405]);
    ws.close();
    expect((await readAll<Envelope>(root)).map((e) => e.data)).toEqual([{ w: 1 }]);
    // The upgrade says it is a channel, as its other responses do; a plain stream's does not.
    expect((await upgradeHeaders(root))['stream-channel']).toBe('true');
    expect((await upgradeHeaders(source))['stream-channel']).toBeUndefined();
  });

  it('feeds a fork created below it from where the fork diverges, not its inherited history', async () => {
    const root = tree('fork');
    await createChannel(root);
    const outside = `${root}-outside`;
    expect((await put(outside, json, '[{"inherited":1}]')).status).toBe(201);
    const fork = `${root}/fork`;
    expect((await put(fork, { 'stream-forked-from': `/v1/stream/${outside}` })).status).toBe(201);
    const own = await post(fork, '{"own":1}');
    expect(own.status).toBe(204);
    const all = await channelUntil(root, (a) => a.length >= 1);
    await sleep(300);
    expect(await readAll<Envelope>(root)).toEqual(all);
    expect(all).toEqual([{ stream: fork, offset: own.headers.get('stream-next-offset'), data: { own: 1 } }]);
  });

  it('follows the last message of a closed source with one closed event', async () => {
    const root = tree('closed');
    const early = `${root}/early`;
    expect((await put(early, json)).status).toBe(201);
    expect((await call('POST', early, { 'stream-closed': 'true' })).status).toBe(204);
    await createChannel(root);
    const a = `${root}/a`;
    const b = `${root}/b`;
    expect((await put(a, json)).status).toBe(201);
    expect((await put(b, { 'content-type': 'text/plain' })).status).toBe(201);
    const data = await post(a, '{"n":1}');
    const close = await call('POST', a, { 'stream-closed': 'true' });
    expect(close.status).toBe(204);
    const last = await post(b, 'bye', { 'content-type': 'text/plain', 'stream-closed': 'true' });
    expect(last.status).toBe(204);
    const all = await channelUntil(root, (e) => e.filter((x) => x.event === 'closed').length >= 2);
    await sleep(500);
    expect(await readAll<Envelope>(root)).toEqual(all);
    expect(all.filter((e) => e.stream === a)).toEqual([
      { stream: a, offset: data.headers.get('stream-next-offset'), data: { n: 1 } },
      { stream: a, offset: close.headers.get('stream-next-offset'), event: 'closed' },
    ]);
    expect(all.filter((e) => e.stream === b)).toEqual([
      { stream: b, offset: last.headers.get('stream-next-offset'), text: 'bye' },
      { stream: b, offset: last.headers.get('stream-next-offset'), event: 'closed' },
    ]);
    // A stream closed before the channel existed says nothing to it.
    expect(all.some((e) => e.stream === early)).toBe(false);
  });

  it('stops feeding a deleted channel while its sources keep working; a channel created again starts afresh', async () => {
    const root = tree('delete');
    await createChannel(root);
    const source = `${root}/s`;
    expect((await put(source, json)).status).toBe(201);
    expect((await post(source, '{"n":1}')).status).toBe(204);
    await channelUntil(root, (a) => a.length >= 1);
    expect((await call('DELETE', root)).status).toBe(204);
    expect((await call('HEAD', root)).status).toBe(404);
    for (let n = 2; n <= 4; n++) expect((await post(source, JSON.stringify({ n }))).status).toBe(204);
    // The channel is not brought back by its sources.
    expect((await call('HEAD', root)).status).toBe(404);
    await createChannel(root);
    expect((await post(source, '{"n":5}')).status).toBe(204);
    const all = await channelUntil(root, (a) => a.length >= 1);
    await sleep(300);
    expect((await readAll<Envelope>(root)).map((e) => e.data)).toEqual([{ n: 5 }]);
    expect(all).toHaveLength(1);
    expect(await readAll(source)).toEqual([{ n: 1 }, { n: 2 }, { n: 3 }, { n: 4 }, { n: 5 }]);
  });

  it('delivers the appends of a source deleted and created again as a new source', async () => {
    const root = tree('recreate');
    await createChannel(root);
    const source = `${root}/s`;
    expect((await put(source, json)).status).toBe(201);
    // The same size at the same offsets in both incarnations: only the incarnation tells them apart.
    const first = await post(source, '{"v":"a"}');
    await channelUntil(root, (a) => a.length >= 1);
    expect((await call('DELETE', source)).status).toBe(204);
    expect((await put(source, { 'content-type': 'application/json' })).status).toBe(201);
    const second = await post(source, '{"v":"b"}');
    expect(second.headers.get('stream-next-offset')).toBe(first.headers.get('stream-next-offset'));
    const all = await channelUntil(root, (a) => a.length >= 2);
    await sleep(300);
    expect((await readAll<Envelope>(root)).map((e) => e.data)).toEqual([{ v: 'a' }, { v: 'b' }]);
    expect(all.map((e) => e.offset)).toEqual([first.headers.get('stream-next-offset'), second.headers.get('stream-next-offset')]);
  });
});

describe('created and deleted events', () => {
  it('announces each stream created below it once, before its first message; not one that existed before it', async () => {
    const root = tree('created');
    const old = `${root}/old`;
    expect((await put(old, json)).status).toBe(201);
    await createChannel(root);
    const room = `${root}/room`;
    const made = await put(room, json);
    expect(made.status).toBe(201);
    // An empty stream is announced at once, with the offset a reader of it starts from.
    let raw: Envelope[] = [];
    const announced = async () => (raw = await readRaw<Envelope>(root)).some((e) => e.event === 'created');
    expect(await waitForAsync(announced)).toBe(true);
    expect(raw).toEqual([{ stream: room, offset: made.headers.get('stream-next-offset'), event: 'created' }]);
    await post(room, '{"n":1}');
    await post(old, '{"n":2}');
    // A fork below the channel is announced from where it diverges.
    const fork = `${root}/fork`;
    const forked = await put(fork, { 'stream-forked-from': `/v1/stream/${room}` });
    expect(forked.status).toBe(201);
    expect(await waitForAsync(async () => (raw = await readRaw<Envelope>(root)).length >= 4)).toBe(true);
    await sleep(300);
    raw = await readRaw<Envelope>(root);
    const of = (stream: string) => raw.filter((e) => e.stream === stream).map((e) => e.event ?? e.data);
    expect(of(room)).toEqual(['created', { n: 1 }]);
    expect(of(old)).toEqual([{ n: 2 }]);
    expect(raw.filter((e) => e.stream === fork)).toEqual([
      { stream: fork, offset: forked.headers.get('stream-next-offset'), event: 'created' },
    ]);
  });

  it('tells it once when a stream below it is deleted, after its last message; created again, it is announced again', async () => {
    const root = tree('deleted');
    const before = `${root}/before`;
    expect((await put(before, json)).status).toBe(201);
    await createChannel(root);
    const room = `${root}/room`;
    expect((await put(room, json)).status).toBe(201);
    const last = await post(room, '{"n":1}');
    await post(before, '{"n":2}');
    expect((await call('DELETE', room)).status).toBe(204);
    // A stream that existed before the channel is told of too.
    expect((await call('DELETE', before)).status).toBe(204);
    let raw: Envelope[] = [];
    const deletions = async () => (raw = await readRaw<Envelope>(root)).filter((e) => e.event === 'deleted').length;
    expect(await waitForAsync(async () => (await deletions()) >= 2)).toBe(true);
    expect(raw.filter((e) => e.stream === room)).toEqual([
      { stream: room, offset: expect.any(String), event: 'created' },
      { stream: room, offset: last.headers.get('stream-next-offset'), data: { n: 1 } },
      { stream: room, offset: last.headers.get('stream-next-offset'), event: 'deleted' },
    ]);
    expect(raw.filter((e) => e.stream === before).map((e) => e.event ?? e.data)).toEqual([{ n: 2 }, 'deleted']);
    // Created again: a new stream, announced and fed from its start.
    expect((await put(room, json)).status).toBe(201);
    await post(room, '{"n":3}');
    expect(await waitForAsync(async () => (raw = await readRaw<Envelope>(root)).length >= 7)).toBe(true);
    await sleep(300);
    raw = await readRaw<Envelope>(root);
    expect(raw.filter((e) => e.stream === room).map((e) => e.event ?? e.data)).toEqual([
      'created',
      { n: 1 },
      'deleted',
      'created',
      { n: 3 },
    ]);
  });

  it('tells it nothing of a stream refused for being created already expired, even at or before 1970', async () => {
    const root = tree('expired');
    await createChannel(root);
    const times = ['2000-01-01T00:00:00Z', '1970-01-01T00:00:00Z', '1969-12-31T23:59:59Z', '0000-01-01T00:00:00Z'];
    for (const [i, at] of times.entries()) {
      expect((await put(`${root}/s${i}`, { ...json, 'stream-expires-at': at })).status).toBe(400);
    }
    // One that expires a moment later is announced, then removed by its alarm alone.
    const soon = `${root}/soon`;
    expect((await put(soon, { ...json, 'stream-expires-at': new Date(Date.now() + 1500).toISOString() })).status).toBe(201);
    const events = async () => (await readRaw<Envelope>(root)).map((e) => `${e.event}:${e.stream}`);
    expect(await waitForAsync(async () => (await events()).includes(`deleted:${soon}`))).toBe(true);
    expect(await events()).toEqual([`created:${soon}`, `deleted:${soon}`]);
  });

  it('tells it when a source with forks is deleted (410), and not again when its last fork goes', async () => {
    const root = tree('soft');
    await createChannel(root);
    const source = `${root}/source`;
    expect((await put(source, json)).status).toBe(201);
    await post(source, '{"n":1}');
    const fork = `${root}-fork`;
    expect((await put(fork, { 'stream-forked-from': `/v1/stream/${source}` })).status).toBe(201);
    expect((await call('DELETE', source)).status).toBe(204);
    expect((await call('GET', source, {}, undefined, '?offset=-1')).status).toBe(410);
    let raw: Envelope[] = [];
    expect(await waitForAsync(async () => (raw = await readRaw<Envelope>(root)).some((e) => e.event === 'deleted'))).toBe(true);
    // The last fork goes, and the source with it: the channel has its event already.
    expect((await call('DELETE', fork)).status).toBe(204);
    await sleep(1_000);
    raw = await readRaw<Envelope>(root);
    expect(raw.map((e) => e.event ?? e.data)).toEqual(['created', { n: 1 }, 'deleted']);
  });
});

describe('limits', () => {
  /** `count` tiny messages as one JSON array: each becomes an envelope that names the stream. */
  const tiny = (count: number) => `[${Array(count).fill('1').join(',')}]`;

  it('refuses whole (413) an append whose envelopes would exceed MAX_APPEND_BYTES in a channel; the source and channel stay whole', async () => {
    const root = tree('copy');
    await createChannel(root);
    // A long name, as the resource probe used: 131,071 messages of 2 bytes would be about
    // 140 MB of envelopes in the channel for a 256 KiB append.
    const source = `${root}/${'n'.repeat(1000 - root.length)}`;
    expect((await put(source, json)).status).toBe(201);
    expect((await post(source, '{"n":1}')).status).toBe(204);
    await channelUntil(root, (a) => a.length >= 1);
    const before = (await call('HEAD', source)).headers.get('stream-next-offset');
    const big = tiny(131_071);
    const refused = await post(source, big);
    expect(refused.status).toBe(413);
    expect(refused.headers.get('content-type')).toContain('text/plain');
    expect(refused.text).toMatch(/channel/);
    // Nothing of it was stored or delivered.
    expect((await call('HEAD', source)).headers.get('stream-next-offset')).toBe(before);
    expect(await readAll(source)).toEqual([{ n: 1 }]);
    // The source goes on: its next append reaches the channel, right after the first.
    const next = await post(source, '[{"n":2},{"n":3}]');
    expect(next.status).toBe(204);
    const all = await channelUntil(root, (a) => a.length >= 3);
    await sleep(300);
    expect((await readAll<Envelope>(root)).map((e) => e.data)).toEqual([{ n: 1 }, { n: 2 }, { n: 3 }]);
    expect(all[2].offset).toBe(next.headers.get('stream-next-offset'));
    // The same append to a stream no channel covers is taken: only a channel's copy is bounded.
    const free = `${root}x/${'n'.repeat(900)}`;
    expect((await put(free, json)).status).toBe(201);
    expect((await post(free, big)).status).toBe(204);
  }, 60_000);

  it('refuses (413) a create whose initial body would be too large in a channel, and takes smaller appends whole', async () => {
    const root = tree('copy-create');
    await createChannel(root);
    const source = `${root}/${'c'.repeat(500)}`;
    const refused = await put(source, json, tiny(65_535));
    expect(refused.status).toBe(413);
    expect(refused.text).toMatch(/channel/);
    expect((await call('HEAD', source)).status).toBe(404);
    // Under the limit: every message arrives, each in its own envelope.
    expect((await put(source, json, tiny(2_000))).status).toBe(201);
    const all = await channelUntil(root, (a) => a.length >= 2_000, 30_000);
    expect(all).toHaveLength(2_000);
    expect(all.every((e) => e.stream === source && e.data === 1)).toBe(true);
    // The same body under a path no channel covers is created whole: only a channel's copy is
    // bounded (it was refused for any nested path before the registry was asked).
    const free = `${root}x/${'c'.repeat(500)}`;
    const created = await put(free, json, tiny(65_535));
    expect(created.status).toBe(201);
    expect((await readAll(free)).length).toBe(65_535);
  }, 60_000);

  it('refuses a channel more than 8 segments deep (400); one 8 deep, with 7 above it, gets every append below it', async () => {
    const root = tree('depth');
    const levels = Array.from({ length: 9 }, (_, i) => [root, ...Array.from({ length: i }, (_, j) => `l${j}`)].join('/'));
    for (const level of levels.slice(0, 8)) await createChannel(level);
    const deep = await put(levels[8], channelHeaders);
    expect(deep.status).toBe(400);
    expect(deep.headers.get('content-type')).toContain('text/plain');
    expect(deep.text).toMatch(/at most 8 segments/);
    expect((await call('HEAD', levels[8])).status).toBe(404);
    // A stream may still be deeper: it feeds the eight channels above it, each once.
    const source = `${levels[8]}/s/t`;
    expect((await put(source, json)).status).toBe(201);
    expect((await post(source, '{"deep":true}')).status).toBe(204);
    for (const level of levels.slice(0, 8)) {
      const all = await channelUntil(level, (a) => a.length >= 1);
      expect(all.map((e) => [e.stream, e.data])).toEqual([[source, { deep: true }]]);
    }
  }, 60_000);
});

describe('durability', () => {
  it('delivers what each source holds exactly once across a hard restart', async () => {
    const root = tree('restart');
    await createChannel(root);
    const sources = Array.from({ length: 5 }, (_, i) => `${root}/s${i}`);
    for (const s of sources) expect((await put(s, json)).status).toBe(201);
    // Many appends in flight at once, straight to the Worker's own socket (wrangler's proxy
    // would hold their answers back until the objects were done): the runtime is killed once a
    // few have been acknowledged, so some are stored and not yet delivered to the channel.
    const own = await server.workerUrl();
    const workerd = await server.workerPid();
    const acked: { s: string; n: number }[] = [];
    const inFlight = sources.flatMap((s) =>
      Array.from({ length: 100 }, (_, n) =>
        fetch(`${own}/v1/stream/${s}`, { method: 'POST', headers: json, body: JSON.stringify({ n }) }).then(
          (res) => {
            if (res.status === 204) acked.push({ s, n });
          },
          () => {},
        ),
      ),
    );
    while (acked.length < 10) await sleep(1);
    process.kill(workerd, 'SIGKILL');
    await server.restart({ hard: true });
    await Promise.all(inFlight);
    expect(acked.length).toBeGreaterThanOrEqual(10);
    // Every message a source holds after the restart reaches the channel, exactly once.
    const logs = new Map<string, { n: number }[]>();
    for (const s of sources) logs.set(s, await readAll<{ n: number }>(s));
    for (const { s, n } of acked) expect(logs.get(s)!.map((m) => m.n)).toContain(n);
    const total = [...logs.values()].reduce((sum, log) => sum + log.length, 0);
    const all = await channelUntil(root, (a) => a.length >= total, 30_000);
    await sleep(500);
    expect((await readAll(root)).length).toBe(total);
    for (const s of sources) {
      expect(all.filter((e) => e.stream === s).map((e) => e.data)).toEqual(logs.get(s));
    }
  }, 120_000);
});

// Forks and their sources' lifecycle, end to end against the built Worker on wrangler dev: a
// JSON fork starts on a message boundary or is refused like a read at that offset; a source
// deleted or expired while forks read through it stays soft-deleted (410, 409 on PUT) and is
// never created afresh over the rows its forks read; live readers of such a source learn 410;
// and a fork PUT again with the divergence point spelled either way is idempotent.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'undici';
import { startServer } from '../scripts/dev-server.mjs';

let server: Awaited<ReturnType<typeof startServer>>;

beforeAll(async () => {
  server = await startServer({ vars: { LONG_POLL_TIMEOUT_MS: '10000' } });
});

afterAll(async () => {
  await server?.stop();
});

const base = () => `${server.baseUrl}/v1/stream`;
let counter = 0;
const unique = (prefix: string) => `forks/${prefix}-${process.pid}-${Date.now()}-${counter++}`;
const off = (n: number) => `0000000000000000_${String(n).padStart(16, '0')}`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function call(method: string, name: string, headers: Record<string, string> = {}, body?: string, query = '') {
  const res = await fetch(`${base()}/${name}${query}`, { method, headers, body });
  const text = method === 'HEAD' ? '' : await res.text();
  return { status: res.status, headers: res.headers, text };
}

const put = (name: string, headers: Record<string, string>, body?: string) => call('PUT', name, headers, body);
const fork = (name: string, source: string, extra: Record<string, string> = {}) =>
  put(name, { 'stream-forked-from': `/v1/stream/${source}`, ...extra });
const read = (name: string, offset = '-1') => call('GET', name, {}, undefined, `?offset=${encodeURIComponent(offset)}`);

/** Every byte of a stream from -1, following pages to the tail. */
async function readAll(name: string) {
  let offset = '-1';
  let text = '';
  for (;;) {
    const res = await read(name, offset);
    expect(res.status).toBe(200);
    text += res.text;
    offset = res.headers.get('stream-next-offset')!;
    if (res.headers.get('stream-up-to-date') === 'true') return { text, offset };
  }
}

/** Whether the path is free: it can be created afresh (and is then deleted again). */
async function pathIsFree(name: string) {
  const res = await put(name, { 'content-type': 'text/plain' });
  if (res.status === 201) expect((await call('DELETE', name)).status).toBe(204);
  return res.status === 201;
}

describe('JSON forks start on a message boundary', () => {
  const json = { 'content-type': 'application/json' };

  it('refuses a fork offset inside a message of the source, as a read there is refused', async () => {
    const src = unique('json-src');
    // Stored as `{"a":1},{"b":22},`: boundaries at 0, 8 and 17.
    expect((await put(src, json, '[{"a":1},{"b":22}]')).status).toBe(201);
    const readThere = await read(src, off(3));
    expect(readThere.status).toBe(400);

    for (const at of [1, 3, 7, 9, 16]) {
      const res = await fork(unique('json-mid'), src, { 'stream-fork-offset': off(at) });
      expect(res.status, `fork at ${at}`).toBe(400);
      expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
      expect(res.text).toMatch(/inside a JSON message/);
    }
    // With a sub-offset too: the anchor itself must be a boundary.
    const sub = await fork(unique('json-mid-sub'), src, { 'stream-fork-offset': off(3), 'stream-fork-sub-offset': '1' });
    expect(sub.status).toBe(400);
    expect(sub.text).toMatch(/inside a JSON message/);

    // On a boundary it works, and every read of the fork is a JSON array.
    const ok = unique('json-ok');
    const created = await fork(ok, src, { 'stream-fork-offset': off(8) });
    expect(created.status).toBe(201);
    expect(created.headers.get('stream-next-offset')).toBe(off(8));
    expect(JSON.parse((await readAll(ok)).text)).toEqual([{ a: 1 }]);
    expect((await call('POST', ok, json, '{"c":3}')).status).toBe(204);
    expect(JSON.parse((await readAll(ok)).text)).toEqual([{ a: 1 }, { c: 3 }]);
    const subOk = unique('json-ok-sub');
    const bySub = await fork(subOk, src, { 'stream-fork-offset': off(8), 'stream-fork-sub-offset': '1' });
    expect(bySub.status).toBe(201);
    expect(JSON.parse((await readAll(subOk)).text)).toEqual([{ a: 1 }, { b: 22 }]);

    // The refused forks took no reference on the source: once the two forks go, so does it.
    expect((await call('DELETE', src)).status).toBe(204);
    expect((await call('DELETE', ok)).status).toBe(204);
    expect(await pathIsFree(src)).toBe(false);
    expect((await call('DELETE', subOk)).status).toBe(204);
    expect(await pathIsFree(src)).toBe(true);
  });

  it('counts a sub-offset within the one append at the fork offset, and says so when it goes past it', async () => {
    const text = { 'content-type': 'text/plain' };
    const src = unique('sub-bytes');
    expect((await put(src, text, 'aaa')).status).toBe(201);
    expect((await call('POST', src, text, 'bbb')).status).toBe(204);
    // Bytes of a non-JSON stream: 3 is the whole first append; 4 would run into the next one.
    const whole = unique('sub-bytes-3');
    expect((await fork(whole, src, { 'stream-fork-offset': off(0), 'stream-fork-sub-offset': '3' })).status).toBe(201);
    expect((await readAll(whole)).text).toBe('aaa');
    for (const [at, sub] of [[0, '4'], [6, '1']] as const) {
      const past = await fork(unique('sub-bytes-past'), src, { 'stream-fork-offset': off(at), 'stream-fork-sub-offset': sub });
      expect(past.status, `${at}+${sub}`).toBe(400);
      expect(past.text).toMatch(/Stream-Fork-Sub-Offset is past the end of the append/);
    }
    // Messages of a JSON stream: the append `[{"a":1},{"b":22}]` holds two.
    const jsonSrc = unique('sub-json');
    expect((await put(jsonSrc, json, '[{"a":1},{"b":22}]')).status).toBe(201);
    const past = await fork(unique('sub-json-past'), jsonSrc, { 'stream-fork-offset': off(0), 'stream-fork-sub-offset': '3' });
    expect(past.status).toBe(400);
    expect(past.text).toMatch(/Stream-Fork-Sub-Offset is past the end of the append/);
  });

  it('refuses a fork offset inside a message the source inherited from its own source', async () => {
    const root = unique('json-root');
    expect((await put(root, json, '[{"a":1},{"b":22}]')).status).toBe(201);
    // `middle` is a fork of all of root, with one message of its own: offsets below 17 are
    // inherited, so the boundary is checked against root's rows.
    const middle = unique('json-middle');
    expect((await fork(middle, root)).status).toBe(201);
    expect((await call('POST', middle, json, '{"m":"x"}')).status).toBe(204);

    for (const at of [3, 12, 18]) {
      const res = await fork(unique('json-inherited-mid'), middle, { 'stream-fork-offset': off(at) });
      expect(res.status, `fork at ${at}`).toBe(400);
      expect(res.text).toMatch(/inside a JSON message/);
    }
    const sub = await fork(unique('json-inherited-sub'), middle, { 'stream-fork-offset': off(3), 'stream-fork-sub-offset': '1' });
    expect(sub.status).toBe(400);

    const leaf = unique('json-leaf');
    expect((await fork(leaf, middle, { 'stream-fork-offset': off(8) })).status).toBe(201);
    expect((await call('POST', leaf, json, '[{"l":1}]')).status).toBe(204);
    expect(JSON.parse((await readAll(leaf)).text)).toEqual([{ a: 1 }, { l: 1 }]);
    const atOwn = unique('json-leaf-own');
    expect((await fork(atOwn, middle, { 'stream-fork-offset': off(17) })).status).toBe(201);
    expect(JSON.parse((await readAll(atOwn)).text)).toEqual([{ a: 1 }, { b: 22 }]);
  });

  it('lets byte streams fork anywhere', async () => {
    const src = unique('bytes-src');
    expect((await put(src, { 'content-type': 'text/plain' }, 'abcdef')).status).toBe(201);
    const f = unique('bytes-fork');
    expect((await fork(f, src, { 'stream-fork-offset': off(3) })).status).toBe(201);
    expect((await readAll(f)).text).toBe('abc');
  });
});

describe('a source with forks stays soft-deleted', () => {
  const text = { 'content-type': 'text/plain' };

  /** A soft-deleted source answers 410 to every access and 409 to PUT. */
  async function expectSoftDeleted(src: string) {
    expect((await read(src)).status).toBe(410);
    expect((await call('HEAD', src)).status).toBe(410);
    expect((await call('POST', src, text, 'X')).status).toBe(410);
    expect((await put(src, text)).status).toBe(409);
    expect((await call('DELETE', src)).status).toBe(410);
  }

  it('after DELETE, when its TTL passes', async () => {
    const src = unique('ttl-src');
    expect((await put(src, { ...text, 'stream-ttl': '1' }, 'source-data')).status).toBe(201);
    const f = unique('ttl-fork');
    expect((await fork(f, src, { 'stream-ttl': '3600' })).status).toBe(201);
    expect((await call('POST', f, text, '+fork')).status).toBe(204);
    expect((await call('DELETE', src)).status).toBe(204);
    await expectSoftDeleted(src);
    await sleep(2_200);
    await expectSoftDeleted(src);
    expect((await readAll(f)).text).toBe('source-data+fork');
    // The last fork takes the source along, and only then is the path free.
    expect((await call('DELETE', f)).status).toBe(204);
    expect(await pathIsFree(src)).toBe(true);
  });

  it('after DELETE, when its Stream-Expires-At passes', async () => {
    const src = unique('at-src');
    const at = new Date(Date.now() + 1_000).toISOString();
    expect((await put(src, { ...text, 'stream-expires-at': at }, 'source-data')).status).toBe(201);
    const f = unique('at-fork');
    expect((await fork(f, src, { 'stream-ttl': '3600' })).status).toBe(201);
    expect((await call('DELETE', src)).status).toBe(204);
    await sleep(2_000);
    await expectSoftDeleted(src);
    expect((await readAll(f)).text).toBe('source-data');
  });

  it('when it expires with forks, even for a request that reaches it before its alarm', async () => {
    // Whether a request or the expiry alarm reaches a source first after its deadline is a race.
    // Each round hammers several sources with PUTs across their deadlines; before the fix, most
    // rounds had some PUT win the race and create the source afresh (201) over its fork's rows.
    for (let round = 0; round < 3; round++) {
      const pairs = Array.from({ length: 8 }, () => ({ src: unique('race-src'), f: unique('race-fork') }));
      const deadline = Date.now() + 1_500;
      const headers = { ...text, 'stream-expires-at': new Date(deadline).toISOString() };
      for (const { src, f } of pairs) {
        expect((await put(src, headers, 'source-data')).status).toBe(201);
        expect((await fork(f, src, { 'stream-ttl': '3600' })).status).toBe(201);
      }
      expect(Date.now()).toBeLessThan(deadline - 100);
      while (Date.now() < deadline - 40) await sleep(5);
      const statuses = await Promise.all(
        pairs.flatMap(({ src }) =>
          [0, 1].map(async () => {
            const seen: number[] = [];
            while (Date.now() < deadline + 300) seen.push((await put(src, headers)).status);
            return seen;
          }),
        ),
      );
      for (const seen of statuses) {
        // 200 (the same configuration) until the deadline, then 409 (soft-deleted), never 201.
        expect(seen.filter((s) => s !== 200 && s !== 409)).toEqual([]);
        expect(seen[seen.length - 1]).toBe(409);
      }
      for (const { src, f } of pairs) {
        await expectSoftDeleted(src);
        const all = await readAll(f);
        expect(all.text).toBe('source-data');
        expect(all.offset).toBe(off(11));
      }
      // The forks still hold their sources: deleting each frees its path.
      for (const { src, f } of pairs) {
        expect(await pathIsFree(src)).toBe(false);
        expect((await call('DELETE', f)).status).toBe(204);
        expect(await pathIsFree(src)).toBe(true);
      }
    }
  });
});

/** A WebSocket whose text messages are collected. */
async function openSocket(name: string, query: string, protocols?: string[]) {
  const ws = new WebSocket(`${base().replace(/^http/, 'ws')}/${name}?${query}`, protocols);
  const messages: any[] = [];
  ws.addEventListener('message', (e) => {
    if (typeof e.data === 'string') messages.push(JSON.parse(e.data));
  });
  const closed = new Promise<number>((resolve) => ws.addEventListener('close', (e) => resolve(e.code)));
  await new Promise<void>((resolve, reject) => {
    ws.addEventListener('open', () => resolve());
    ws.addEventListener('error', () => reject(new Error('cannot open the socket')));
  });
  return { ws, messages, closed };
}

/** Waits until `check` holds, for up to `ms`. */
async function until(check: () => boolean, ms = 5_000) {
  const end = Date.now() + ms;
  while (!check() && Date.now() < end) await sleep(20);
}

describe('live readers of a deleted source', () => {
  const text = { 'content-type': 'text/plain' };
  const liveQuery = (mode: string) => `?offset=${off(3)}&live=${mode}`;

  it('get 410 when the source is soft-deleted, and 404 when it is deleted outright', async () => {
    for (const withFork of [true, false]) {
      const src = unique('live-src');
      expect((await put(src, text, 'abc')).status).toBe(201);
      if (withFork) expect((await fork(unique('live-fork'), src)).status).toBe(201);
      const expected = withFork ? 410 : 404;
      const longPoll = call('GET', src, {}, undefined, liveQuery('long-poll'));
      // At the tail, the socket is held by the stream's object.
      const held = await openSocket(src, liveQuery('ws').slice(1), ['edgestream.v2']);
      await sleep(300);
      expect((await call('DELETE', src)).status).toBe(204);
      expect((await longPoll).status).toBe(expected);
      await until(() => held.messages.some((m) => m.type === 'error'));
      expect(held.messages.find((m) => m.type === 'error')).toMatchObject({ status: expected });
      // The close frame follows at once, but workerd ends a socket the object holds only when
      // it evicts the object (docs/websocket.md), so its close is not awaited here.
      held.ws.close();
    }
  });

  it('get 410 from the edge too, when the source is itself a fork read through the edge', async () => {
    const root = unique('edge-root');
    expect((await put(root, text, 'abc')).status).toBe(201);
    const middle = unique('edge-middle');
    expect((await fork(middle, root)).status).toBe(201);
    // From -1, the socket starts in the inherited range: the edge follows it.
    const followed = await openSocket(middle, 'offset=-1&live=ws', ['edgestream.v2']);
    await until(() => followed.messages.some((m) => m.upToDate === true));
    expect((await fork(unique('edge-leaf'), middle)).status).toBe(201);
    expect((await call('DELETE', middle)).status).toBe(204);
    await until(() => followed.messages.some((m) => m.type === 'error'));
    expect(followed.messages.find((m) => m.type === 'error')).toMatchObject({ status: 410 });
    expect(await followed.closed).toBe(1000);
  });

  it('get 410 when the source expires with forks', async () => {
    const src = unique('live-expiry');
    const at = new Date(Date.now() + 1_500).toISOString();
    expect((await put(src, { ...text, 'stream-expires-at': at }, 'abc')).status).toBe(201);
    expect((await fork(unique('live-expiry-fork'), src, { 'stream-ttl': '3600' })).status).toBe(201);
    const longPoll = call('GET', src, {}, undefined, liveQuery('long-poll'));
    const held = await openSocket(src, liveQuery('ws').slice(1), ['edgestream.v2']);
    expect((await longPoll).status).toBe(410);
    await until(() => held.messages.some((m) => m.type === 'error'));
    expect(held.messages.find((m) => m.type === 'error')).toMatchObject({ status: 410 });
    held.ws.close();
  });
});

describe('a fork PUT again', () => {
  const text = { 'content-type': 'text/plain' };

  it('matches with Stream-Fork-Offset given or omitted, when the divergence point is the same', async () => {
    const src = unique('again-src');
    expect((await put(src, text, 'abc')).status).toBe(201);
    const implicit = unique('again-implicit');
    const created = await fork(implicit, src);
    expect(created.status).toBe(201);
    const point = created.headers.get('stream-next-offset')!;
    expect(point).toBe(off(3));
    expect((await fork(implicit, src)).status).toBe(200);
    expect((await fork(implicit, src, { 'stream-fork-offset': point })).status).toBe(200);
    expect((await fork(implicit, src, { 'stream-fork-offset': off(2) })).status).toBe(409);

    const explicit = unique('again-explicit');
    expect((await fork(explicit, src, { 'stream-fork-offset': point })).status).toBe(201);
    expect((await fork(explicit, src, { 'stream-fork-offset': point })).status).toBe(200);
    expect((await fork(explicit, src)).status).toBe(200);
    expect((await fork(explicit, src, { 'stream-fork-offset': off(0) })).status).toBe(409);
    // Another source is another configuration.
    const other = unique('again-other');
    expect((await put(other, text, 'abc')).status).toBe(201);
    expect((await fork(explicit, other, { 'stream-fork-offset': point })).status).toBe(409);
    // Appends to the source since do not change what an omitted offset matches.
    expect((await call('POST', src, text, 'def')).status).toBe(204);
    expect((await fork(explicit, src)).status).toBe(200);

    // A sub-offset resolves to a point too: the same request, or that point, matches.
    const bySub = unique('again-sub');
    const subCreated = await fork(bySub, src, { 'stream-fork-offset': off(0), 'stream-fork-sub-offset': '2' });
    expect(subCreated.status).toBe(201);
    expect(subCreated.headers.get('stream-next-offset')).toBe(off(2));
    expect((await fork(bySub, src, { 'stream-fork-offset': off(0), 'stream-fork-sub-offset': '2' })).status).toBe(200);
    expect((await fork(bySub, src, { 'stream-fork-offset': off(2) })).status).toBe(200);
    expect((await fork(bySub, src)).status).toBe(200);
    expect((await fork(bySub, src, { 'stream-fork-offset': off(0), 'stream-fork-sub-offset': '1' })).status).toBe(409);
    expect((await fork(bySub, src, { 'stream-fork-offset': off(0) })).status).toBe(409);
  });

  it('without an expiry matches only the one it would inherit from its source', async () => {
    const forever = unique('again-forever');
    expect((await put(forever, text, 'abc')).status).toBe(201);
    // Its own TTL: made again without one, it would never expire.
    const own = unique('again-own-ttl');
    expect((await fork(own, forever, { 'stream-ttl': '100' })).status).toBe(201);
    expect((await fork(own, forever, { 'stream-ttl': '100' })).status).toBe(200);
    expect((await fork(own, forever)).status).toBe(409);
    expect((await fork(own, forever, { 'stream-ttl': '99' })).status).toBe(409);
    // The source's TTL, inherited: asking for none, or for that TTL, is the same fork.
    const expiring = unique('again-ttl-src');
    expect((await put(expiring, { ...text, 'stream-ttl': '100' }, 'abc')).status).toBe(201);
    const inherits = unique('again-inherits');
    expect((await fork(inherits, expiring)).status).toBe(201);
    expect((await fork(inherits, expiring)).status).toBe(200);
    expect((await fork(inherits, expiring, { 'stream-ttl': '100' })).status).toBe(200);
    expect((await fork(inherits, expiring, { 'stream-ttl': '50' })).status).toBe(409);
  });
});

// A fork stores its source's path with the name decoded (`/v1/stream/pct%41` for the stream the
// URL `/v1/stream/pct%2541` names); the calls to the source once decoded that path again, so a
// fork of `pct%41` inherited `pctA`'s bytes, and one of a name holding a `%` that does not start
// an escape (`100%`) was answered 503 on every retry.
describe('a source whose name holds a percent sign', () => {
  const text = { 'content-type': 'text/plain' };

  it('is the one a fork reads, through every depth, and releases', async () => {
    const dir = unique('percent');
    expect((await put(`${dir}/pct%2541`, text, 'right')).status).toBe(201);
    expect((await put(`${dir}/pctA`, text, 'WRONG')).status).toBe(201);
    const f1 = await fork(`${dir}/f1`, `${dir}/pct%2541`);
    expect(f1.status).toBe(201);
    expect(f1.headers.get('stream-next-offset')).toBe(off(5));
    expect((await readAll(`${dir}/f1`)).text).toBe('right');
    // A fork of the fork reads the inherited range from the first source, by its stored path.
    expect((await call('POST', `${dir}/f1`, text, '+1')).status).toBe(204);
    expect((await fork(`${dir}/f2`, `${dir}/f1`)).status).toBe(201);
    expect((await readAll(`${dir}/f2`)).text).toBe('right+1');

    expect((await put(`${dir}/100%25`, text, 'hundred')).status).toBe(201);
    const f3 = await fork(`${dir}/f3`, `${dir}/100%25`, { 'stream-fork-offset': off(3) });
    expect(f3.status, f3.text).toBe(201);
    expect((await readAll(`${dir}/f3`)).text).toBe('hun');

    // The references were taken on the right sources and are given back: deleted with its
    // forks gone, each source can be created afresh.
    for (const f of ['f3', 'f2', 'f1']) expect((await call('DELETE', `${dir}/${f}`)).status).toBe(204);
    for (const source of ['pct%2541', '100%25']) {
      expect((await call('DELETE', `${dir}/${source}`)).status).toBe(204);
      expect((await put(`${dir}/${source}`, text)).status).toBe(201);
    }
    expect((await readAll(`${dir}/pctA`)).text).toBe('WRONG');
  });
});

// The platform refuses a request nested more than 16 calls deep (workerd does not enforce it
// locally; our objects refuse internal calls nested deeper than it would allow). A fork reads
// each inherited range from the ancestor that holds it in one call, so a chain of any depth
// reads, forks and deletes within the limit.
describe('a chain of forks deeper than the platform nests calls', () => {
  const json = { 'content-type': 'application/json' };
  const depth = 40;

  it('reads every level, forks at every level, and is cleaned up when it goes', async () => {
    const chain = [unique('deep-0')];
    expect((await put(chain[0], json, '[{"level":0}]')).status).toBe(201);
    for (let level = 1; level <= depth; level++) {
      const name = unique(`deep-${level}`);
      expect((await fork(name, chain[level - 1])).status, `fork ${level}`).toBe(201);
      expect((await call('POST', name, json, `{"level":${level},"pad":"${'x'.repeat(level)}"}`)).status).toBe(204);
      chain.push(name);
    }
    const leaf = chain[depth];
    // Read whole, and read again in small pages from every message's offset.
    const all = await readAll(leaf);
    const levels = (text: string) => JSON.parse(text).map((m: { level: number }) => m.level);
    expect(levels(all.text)).toEqual(Array.from({ length: depth + 1 }, (_, i) => i));
    // From the second message on (the root holds `{"level":0},`, 12 bytes), and from the last.
    expect(levels((await readAll(leaf)).text).length).toBe(depth + 1);
    const fromSecond = await read(leaf, off(12));
    expect(fromSecond.status).toBe(200);
    expect(levels(fromSecond.text)).toEqual(Array.from({ length: depth }, (_, i) => i + 1));
    // A long-poll catches up from the start as well.
    const poll = await call('GET', leaf, {}, undefined, '?offset=-1&live=long-poll');
    expect(poll.status).toBe(200);
    expect(levels(poll.text)[0]).toBe(0);

    // A fork of the leaf, at a sub-offset inside the root's range, and one refused inside a
    // message the root holds: both resolved by the ancestor that holds the position.
    const twig = unique('deep-twig');
    const bySub = await fork(twig, leaf, { 'stream-fork-offset': off(0), 'stream-fork-sub-offset': '1' });
    expect(bySub.status).toBe(201);
    expect(levels((await readAll(twig)).text)).toEqual([0]);
    const inside = await fork(unique('deep-inside'), leaf, { 'stream-fork-offset': off(3) });
    expect(inside.status).toBe(400);
    expect(inside.text).toMatch(/inside a JSON message/);

    // Delete every level while forks still read through it, then the forks: the whole chain
    // goes, however long, and every path is free again.
    for (const name of chain) expect((await call('DELETE', name)).status).toBe(204);
    expect((await read(leaf)).status).toBe(410);
    expect((await read(chain[0])).status).toBe(410);
    expect(levels((await readAll(twig)).text)).toEqual([0]);
    expect((await call('DELETE', twig)).status).toBe(204);
    const deadline = Date.now() + 20_000;
    for (const name of chain) {
      while (!(await pathIsFree(name))) {
        expect(Date.now() < deadline, `${name} still kept`).toBe(true);
        await sleep(100);
      }
    }
  }, 120_000);
});

describe('the depth of a chain of forks', () => {
  const text = { 'content-type': 'text/plain' };
  const maxDepth = 64; // MAX_FORK_DEPTH

  it('reads exactly at every level, whatever ranges its ancestors hold, and refuses a fork deeper than 64', async () => {
    // A model of each level: its whole content and its base. Levels take turns: forked at the
    // tail with nothing appended (the next inherits nothing from it), at the tail with data, below
    // the source's own base (the source holds nothing for it), and at the source's base.
    type Level = { name: string; content: string; base: number };
    const root: Level = { name: unique('depth-0'), content: '<root:' + 'r'.repeat(594) + '>', base: 0 };
    expect((await put(root.name, text, root.content)).status).toBe(201);
    const chain = [root];
    for (let level = 1; level <= maxDepth; level++) {
      const source = chain[level - 1];
      const at = [source.content.length, source.content.length, Math.floor(source.base / 2), source.base][level % 4];
      const name = unique(`depth-${level}`);
      const created = await fork(name, source.name, { 'stream-fork-offset': off(at) });
      expect(created.status, `fork ${level}: ${created.text}`).toBe(201);
      const own = level % 4 === 0 ? '' : `<${level}:${'x'.repeat(level % 4 === 3 ? 40 : 290)}>`;
      if (own) expect((await call('POST', name, text, own)).status).toBe(204);
      chain.push({ name, content: source.content.slice(0, at) + own, base: at });
    }
    for (const level of chain) expect((await readAll(level.name)).text, level.name).toBe(level.content);
    // Reads that start inside inherited ranges, at every level of the deepest fork's ancestry.
    const leaf = chain[maxDepth];
    for (let from = 0; from <= leaf.content.length; from += 53) {
      let offset = off(from);
      let got = '';
      for (;;) {
        const res = await read(leaf.name, offset);
        expect(res.status).toBe(200);
        got += res.text;
        offset = res.headers.get('stream-next-offset')!;
        if (res.headers.get('stream-up-to-date') === 'true') break;
      }
      expect(got, `from ${from}`).toBe(leaf.content.slice(from));
    }

    // A fork of the 64th level is refused, nothing is created, and the source took no
    // reference: deleted, it goes outright and its path is free again.
    const deeper = unique('depth-65');
    const refused = await fork(deeper, leaf.name);
    expect(refused.status).toBe(400);
    expect(refused.headers.get('content-type')).toMatch(/^text\/plain/);
    expect(refused.text).toMatch(/64 forks deep/);
    expect((await call('HEAD', deeper)).status).toBe(404);
    // One level up still forks.
    const sibling = unique('depth-64b');
    expect((await fork(sibling, chain[maxDepth - 1].name)).status).toBe(201);
    expect((await readAll(sibling)).text).toBe(chain[maxDepth - 1].content);
    expect((await call('DELETE', leaf.name)).status).toBe(204);
    expect((await call('HEAD', leaf.name)).status).toBe(404);
  }, 180_000);
});

describe('a fork whose create fails after its source took the reference', () => {
  it('gives the reference back, so the source goes with its last real fork', async () => {
    const json = { 'content-type': 'application/json' };
    const src = unique('refused-src');
    expect((await put(src, json, '[{"n":1}]')).status).toBe(201);
    // The source takes a reference; then the fork's initial data is refused.
    const refused = await put(unique('refused-fork'), { ...json, 'stream-forked-from': `/v1/stream/${src}` }, '{not json');
    expect(refused.status).toBe(400);
    const kept = unique('kept-fork');
    expect((await fork(kept, src, json)).status).toBe(201);
    expect((await call('DELETE', src)).status).toBe(204);
    expect((await read(src)).status).toBe(410);
    expect(JSON.parse((await readAll(kept)).text)).toEqual([{ n: 1 }]);
    // The refused fork's reference was given back: the kept fork's is the last.
    expect((await call('DELETE', kept)).status).toBe(204);
    expect((await read(src)).status).toBe(404);
    expect(await pathIsFree(src)).toBe(true);
  });
});

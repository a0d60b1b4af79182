// A channel created over more existing streams than one invocation may link. Its PUT used to
// call the registry for every page of them (`LINKS_PER_CALL` streams a call) before answering:
// past Cloudflare's per-invocation subrequest limit (about 5 million streams on the paid plan,
// 500,000 on the free one) it failed, and the channel could not be made. Now the registration
// links `LINK_PAGES_PER_INVOCATION` pages, the PUT answers 201 with `Stream-Channel-Linking`
// (the streams linked so far), and the channel's alarm links the rest from the registry's
// place, a PUT of the channel again going on from there too.
//
// This server links 2 streams per page and 2 pages per invocation; a stream whose path holds
// FAULT_MARKER answers its first channel link with 503 (worker/src/fault.rs), which stops
// linking at that page until the alarm tries it again.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';

const MARKER = 'flaky-chanlink-marker';
let server: Awaited<ReturnType<typeof startServer>>;
const url = (path: string) => `${server.baseUrl}/v1/stream/${path}`;
const json = { 'content-type': 'application/json' };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const uid = () => `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 7)}`;

beforeAll(async () => {
  server = await startServer({
    vars: { LINKS_PER_CALL: '2', LINK_PAGES_PER_INVOCATION: '2', FAULT_MARKER: MARKER },
  });
});

afterAll(async () => {
  await server?.stop();
});

type Envelope = { stream: string; offset: string; data?: any; event?: string };

const put = (path: string, body?: unknown, headers: Record<string, string> = json) =>
  fetch(url(path), { method: 'PUT', headers, body: body === undefined ? undefined : JSON.stringify(body) });
const putChannel = (path: string) => fetch(url(path), { method: 'PUT', headers: { 'stream-channel': 'true' } });
const append = (path: string, body: unknown) =>
  fetch(url(path), { method: 'POST', headers: json, body: JSON.stringify(body) });

/** `Stream-Channel-Linking` as a number, or null once every stream below is linked. */
const linking = (res: Response) => {
  const v = res.headers.get('stream-channel-linking');
  return v === null ? null : Number(v);
};

async function readAll<T>(path: string): Promise<T[]> {
  let offset = '-1';
  const out: T[] = [];
  for (;;) {
    const res = await fetch(`${url(path)}?offset=${encodeURIComponent(offset)}`);
    expect(res.status).toBe(200);
    out.push(...((await res.json()) as T[]));
    offset = res.headers.get('stream-next-offset')!;
    if (res.headers.get('stream-up-to-date') === 'true') return out;
  }
}

async function eventually(check: () => Promise<boolean>, ms = 30_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await sleep(100);
  }
  return false;
}

describe('creating a channel over more streams than one invocation links', () => {
  test('the PUT answers after its pages, HEAD shows progress, the alarm links the rest, and every append reaches the channel once', { timeout: 120_000 }, async () => {
    const p = `chanlink-${uid()}`;
    const existing = Array.from({ length: 25 }, (_, i) => `${p}/s${String(i).padStart(2, '0')}`);
    // On the third page, the first the alarm links (with s04): its first channel link fails,
    // so linking waits there for a retry, after the PUT's pages and before most of the rest.
    // Its first registration fails too (503): the retried PUT finishes it.
    // Another on a later page (with s19) holds linking up again for a second, whatever the
    // PUTs linked.
    const flaky = [`${p}/s04-${MARKER}`, `${p}/s19-${MARKER}`];
    for (const name of existing) expect((await put(name, [{ name, phase: 'before' }])).status).toBe(201);
    for (const name of flaky) {
      expect((await put(name, [{ name, phase: 'before' }])).status).toBe(503);
      expect((await put(name, [{ name, phase: 'before' }])).status).toBe(200);
    }
    const sources = [...existing, ...flaky].sort();

    const created = await putChannel(p);
    expect(created.status).toBe(201);
    expect(created.headers.get('stream-channel')).toBe('true');
    // Two pages of two streams: the rest is left to the alarm.
    const first = linking(created);
    expect(first, 'the PUT linked every page itself').not.toBeNull();
    expect(first).toBeLessThanOrEqual(4);

    // The same PUT again goes on from where linking stands: past the failing page, unless
    // it reached that page before the alarm did.
    const again = await putChannel(p);
    expect(again.status).toBe(200);
    const second = linking(again);
    if (second !== null) expect(second).toBeGreaterThanOrEqual(first ?? 0);
    // HEAD shows how far linking is, until it is done; not yet, with the page of s19 to fail.
    const head = await fetch(url(p), { method: 'HEAD' });
    const seen = [linking(head)!];
    expect(seen[0], 'linking finished before the second failing page').not.toBeNull();
    expect(seen[0]).toBeGreaterThanOrEqual(second ?? first ?? 0);

    // Appended while linking runs: reaches the channel if the source's page was linked first.
    for (const name of sources) expect((await append(name, { name, phase: 'during' })).status).toBe(204);
    // Created while linking runs, one on a page read already and one on a page to come: fed
    // from their start.
    const born = [`${p}/a-born`, `${p}/z-born`];
    for (const name of born) expect((await put(name, [{ name, phase: 'born' }])).status).toBe(201);

    // The count grows until it is gone.
    const done = await eventually(async () => {
      const head = await fetch(url(p), { method: 'HEAD' });
      expect(head.status).toBe(200);
      const n = linking(head);
      if (n === null) return true;
      seen.push(n);
      return false;
    }, 60_000);
    expect(done, 'linking never finished').toBe(true);
    for (let i = 1; i < seen.length; i++) expect(seen[i]).toBeGreaterThanOrEqual(seen[i - 1]);
    expect(Math.max(0, ...seen)).toBeLessThanOrEqual(sources.length + born.length);

    const all = [...sources, ...born];
    for (const name of all) expect((await append(name, { name, phase: 'after' })).status).toBe(204);

    const envelopes = async () => (await readAll<Envelope>(p)).filter((e) => e.event === undefined);
    const arrived = await eventually(async () => {
      const got = await envelopes();
      return all.every((name) => got.some((e) => e.stream === name && e.data?.phase === 'after'));
    }, 40_000);
    expect(arrived, 'some stream’s appends after linking did not reach the channel').toBe(true);
    await sleep(500);
    const got = await envelopes();
    const events = (await readAll<Envelope>(p)).filter((e) => e.event !== undefined);
    for (const name of all) {
      const own = (await readAll<any>(name)).map((m) => m.phase);
      const copied = got.filter((e) => e.stream === name);
      // Once each, in order: the source's messages from where it was linked to its tail.
      const phases = copied.map((e) => e.data?.phase);
      const offsets = copied.map((e) => e.offset);
      expect(new Set(offsets).size, `${name} copied twice`).toBe(offsets.length);
      expect([...offsets].sort(), `${name} out of order`).toEqual(offsets);
      expect(phases, `${name} is not a tail of its messages`).toEqual(own.slice(own.length - phases.length));
      if (born.includes(name)) {
        // From its start, announced.
        expect(phases).toEqual(['born', 'after']);
        expect(events.filter((e) => e.stream === name && e.event === 'created')).toHaveLength(1);
      } else {
        // From where its page linked it: never its history before the channel, and what
        // was appended after the PUT for the streams the PUT linked.
        expect(phases.includes('before'), `${name}'s history reached the channel`).toBe(false);
        expect(phases.at(-1)).toBe('after');
        if (sources.indexOf(name) < (first ?? 0)) expect(phases).toEqual(['during', 'after']);
      }
    }
    expect(new Set(got.map((e) => e.stream))).toEqual(new Set(all));
  });
});

describe('a stream created while its channel links, asked by a page before its registration is in', () => {
  // A new stream is in the registry as soon as its registration reaches it, before the stream
  // has taken in the answer (the channels above it, each fed from its start). A channel's
  // linking page that asks it in between must not link it at its tail: its registration then
  // finds the channel linked already, and its first messages and its `created` event never
  // reached the channel.
  test('is fed to the channel from its start, announced', { timeout: 60_000 }, async () => {
    const p = `chanreg-${uid()}`;
    // The PUT links [a, b] and [c, d]; the alarm's page [m-…] fails once and waits a backoff.
    const flaky = `${p}/m-${MARKER}`;
    // Its page is then [m-…, n-…]: the retry asks it while its registration's answer is held
    // (worker/src/fault.rs, `hold_registration`).
    const born = `${p}/n-${MARKER}-slowreg`;
    for (const name of [`${p}/a`, `${p}/b`, `${p}/c`, `${p}/d`]) expect((await put(name, [{ name, phase: 'before' }])).status).toBe(201);
    expect((await put(flaky, [{ name: flaky, phase: 'before' }])).status).toBe(503);
    expect((await put(flaky, [{ name: flaky, phase: 'before' }])).status).toBe(200);
    const created = await putChannel(p);
    expect(created.status).toBe(201);
    expect(linking(created), 'the PUT linked every page itself').not.toBeNull();
    // The alarm reaches the failing page at once, and waits a second before trying it again.
    await sleep(300);
    // Its first registration fails before the registry hears of it (503); the retry's answer
    // is held until the page's retry has asked the stream to link the channel.
    expect((await put(born, [{ name: born, phase: 'born' }])).status).toBe(503);
    const retried = put(born, [{ name: born, phase: 'born' }]);
    const done = await eventually(async () => linking(await fetch(url(p), { method: 'HEAD' })) === null);
    expect(done, 'linking never finished').toBe(true);
    expect([200, 503]).toContain((await retried).status);
    expect((await append(born, { name: born, phase: 'after' })).status).toBe(204);
    const mine = async () => (await readAll<Envelope>(p)).filter((e) => e.stream === born);
    expect(await eventually(async () => (await mine()).some((e) => e.data?.phase === 'after')), 'the append after linking did not reach the channel').toBe(true);
    await sleep(500);
    expect((await mine()).map((e) => e.event ?? e.data?.phase)).toEqual(['created', 'born', 'after']);
  });
});

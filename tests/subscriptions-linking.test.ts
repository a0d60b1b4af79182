// A subscription whose pattern covers more existing streams than one invocation may link.
// Its PUT used to link every page of them before answering: past the per-invocation
// subrequest limit (about 5 million streams on Cloudflare's paid plan, 500,000 on the free
// one) it failed with 503, and each retry started again at the first page and failed at the
// same place, so the subscription could never be made. Linking now goes
// `LINK_PAGES_PER_INVOCATION` pages at a time, the rest in the subscription's alarm, from
// where the last invocation stopped; GET shows how far it got.
//
// This server links 2 streams per page (LINKS_PER_CALL) and 2 pages per invocation; streams
// whose path holds FAULT_MARKER answer their first request to link a subscription with 503
// (worker/src/fault.rs), which stops linking at that page until the alarm retries it.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';
import { hookServer, type Hit } from './support/webhook';

const MARKER = 'flaky-link-marker';
let server: Awaited<ReturnType<typeof startServer>>;
const url = (path: string) => `${server.baseUrl}/v1/stream/${path}`;
const sub = (id: string) => url(`__ds/subscriptions/${id}`);
const json = { 'content-type': 'application/json' };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const uid = () => `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 7)}`;
/** The entries of `hits` (from the `since`th on) that deliver data pending on `path`. */
const pendingOn = (hits: Hit[], path: string, since = 0) =>
  hits.slice(since).flatMap((h) => (h.body?.streams ?? []).filter((s: any) => s.path === path && s.has_pending));

beforeAll(async () => {
  server = await startServer({
    vars: {
      WEBHOOK_ALLOW_LOCALHOST: 'true',
      WEBHOOK_TIMEOUT_MS: '2000',
      LINKS_PER_CALL: '2',
      LINK_PAGES_PER_INVOCATION: '2',
      FAULT_MARKER: MARKER,
    },
  });
});

afterAll(async () => {
  await server?.stop();
});

async function put(path: string, body: unknown) {
  return fetch(url(path), { method: 'PUT', headers: json, body: JSON.stringify(body) });
}

async function tailOf(path: string) {
  const head = await fetch(url(path), { method: 'HEAD' });
  expect(head.status).toBe(200);
  return head.headers.get('stream-next-offset') as string;
}

type Linking = { done: boolean; linked: number | null; failures: number };

async function described(id: string) {
  const res = await fetch(sub(id));
  expect(res.status).toBe(200);
  return (await res.json()) as { linking: Linking; streams: any[] };
}

async function eventually(check: () => Promise<boolean>, ms = 20_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await sleep(50);
  }
  return false;
}

describe('linking a pattern over more streams than one invocation links', () => {
  test('the PUT answers after its budget, GET shows progress, the alarm links the rest, and every append is delivered once', { timeout: 90_000 }, async () => {
    const p = `linking-${uid()}`;
    const existing = Array.from({ length: 25 }, (_, i) => `${p}/s${String(i).padStart(2, '0')}`);
    // Sorts after s24, on the last page of the existing streams: that page fails once, so
    // linking waits there for a retry. Last, so the alarm, which links on at once after the
    // PUT, cannot reach it before the repeated PUT below (6 of its invocations away).
    const flaky = `${p}/s99-${MARKER}`;
    // Created while linking waits: one on a page read already, one on a page still to come.
    const early = `${p}/a-born`;
    const late = `${p}/z-born`;
    // Deliveries fail until linking is done, so what a wake owes waits through the pages.
    let failing = true;
    const acked: any[] = [];
    const hook = await hookServer((hit, res) => {
      if (failing) {
        res.writeHead(500, json);
        res.end('{}');
        return;
      }
      acked.push(hit.body);
      res.writeHead(200, json);
      res.end('{"done":true}');
    });
    const id = `sub-${p}`;
    const config = { type: 'webhook', pattern: `${p}/*`, webhook: { url: hook.url }, lease_ttl_ms: 1_000 };
    try {
      const zero = await (async () => {
        expect((await put(`${p}-empty`, [])).status).toBe(201);
        return tailOf(`${p}-empty`);
      })();
      for (const name of existing) expect((await put(name, [{ name }])).status).toBe(201);
      // Its first registration fails too (503): the retried PUT finishes it.
      expect((await put(flaky, [{ name: flaky }])).status).toBe(503);
      expect((await put(flaky, [{ name: flaky }])).status).toBe(200);
      const linkedAt = new Map<string, string>();
      for (const name of [...existing, flaky]) linkedAt.set(name, await tailOf(name));

      const created = await put(`__ds/subscriptions/${id}`, config);
      expect(created.status).toBe(201);
      const first = (await created.json()).linking as Linking;
      // Two pages of two: the rest is left to the alarm.
      expect(first.done).toBe(false);
      expect(first.linked).toBeLessThanOrEqual(4);

      // The same PUT again goes on from there; another pattern is refused.
      const again = await put(`__ds/subscriptions/${id}`, config);
      expect(again.status).toBe(200);
      const second = (await again.json()).linking as Linking;
      expect(second.linked).toBeGreaterThan(first.linked ?? 0);
      expect((await put(`__ds/subscriptions/${id}`, { ...config, pattern: `${p}/s*` })).status).toBe(409);

      // Linking reaches the flaky stream's page, fails it, and waits to try it again.
      const stalled = await eventually(async () => {
        const { linking } = await described(id);
        return linking.failures > 0 && !linking.done;
      });
      expect(stalled, 'linking did not stop at the failing page').toBe(true);
      for (const name of [early, late]) expect((await put(name, [{ name, born: true }])).status).toBe(201);

      const done = await eventually(async () => (await described(id)).linking.done);
      expect(done, 'linking never finished').toBe(true);
      failing = false;
      const state = await described(id);
      // Every page linked once: the 26 existing streams and the one created ahead of them.
      expect(state.linking).toEqual({ done: true, linked: 27, failures: 0 });
      const all = [...existing, flaky, early, late];
      expect(state.streams.map((s) => s.path).sort()).toEqual([...all].sort());
      // An existing stream is covered from when it was linked (nothing appended since), a
      // stream created while linking ran from its start, wherever its page was.
      linkedAt.set(early, zero);
      linkedAt.set(late, zero);

      for (const name of all) expect((await fetch(url(name), { method: 'POST', headers: json, body: JSON.stringify({ more: name }) })).status).toBe(204);
      const finalTail = new Map<string, string>();
      for (const name of all) finalTail.set(name, await tailOf(name));

      // Each stream's data is delivered once: the wakes' ranges for it chain from where it
      // was linked to its tail, no range twice.
      const covered = () => {
        const ranges = new Map<string, [string, string][]>();
        for (const body of acked) {
          for (const s of body?.streams ?? []) {
            if (!s.has_pending) continue;
            ranges.set(s.path, [...(ranges.get(s.path) ?? []), [s.acked_offset, s.tail_offset]]);
          }
        }
        return ranges;
      };
      const delivered = await eventually(async () => all.every((name) => covered().get(name)?.at(-1)?.[1] === finalTail.get(name)), 40_000);
      expect(delivered, 'some stream’s appends were not delivered').toBe(true);
      await sleep(500);
      const ranges = covered();
      for (const name of all) {
        const chain = ranges.get(name) ?? [];
        expect(chain[0]?.[0], `${name} starts where it was linked`).toBe(linkedAt.get(name));
        for (let i = 1; i < chain.length; i++) expect(chain[i][0], `${name} delivered twice or with a gap`).toBe(chain[i - 1][1]);
        expect(chain.at(-1)?.[1]).toBe(finalTail.get(name));
      }
      expect([...ranges.keys()].sort()).toEqual([...all].sort());
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });

  // A stream that already knows the subscription (here one that named it explicitly before it
  // was deleted and made again with a pattern) tells it of an append before linking's pages
  // reach it. It existed before: its link starts where its page finds it, as every existing
  // stream's does, so that append is not delivered; it was delivered from the stream's start.
  test('an existing stream that appends before its page is linked is delivered from where its page finds it', { timeout: 60_000 }, async () => {
    const p = `stale-${uid()}`;
    const flaky = `${p}/m-${MARKER}`;
    const known = `${p}/t-known`;
    const hook = await hookServer((_, res) => {
      res.writeHead(200, json);
      res.end('{"done":true}');
    });
    const id = `sub-${p}`;
    try {
      // The PUT links [a, b] and [c, d]; the alarm fails [m-…, n] once; [t-known] comes after.
      for (const name of [`${p}/a`, `${p}/b`, `${p}/c`, `${p}/d`, `${p}/n`, known]) expect((await put(name, [{ name }])).status).toBe(201);
      expect((await put(flaky, [{ name: flaky }])).status).toBe(503);
      expect((await put(flaky, [{ name: flaky }])).status).toBe(200);
      const explicit = { type: 'webhook', streams: [known], webhook: { url: hook.url }, lease_ttl_ms: 1_000 };
      expect((await put(`__ds/subscriptions/${id}`, explicit)).status).toBe(201);
      expect((await fetch(sub(id), { method: 'DELETE' })).status).toBe(204);
      const created = await put(`__ds/subscriptions/${id}`, { ...explicit, streams: undefined, pattern: `${p}/*` });
      expect(created.status).toBe(201);
      const stalled = await eventually(async () => (await described(id)).linking.failures > 0);
      expect(stalled, 'linking did not stop at the failing page').toBe(true);
      expect((await fetch(url(known), { method: 'POST', headers: json, body: '{"during":true}' })).status).toBe(204);
      const from = await tailOf(known);
      expect(await eventually(async () => (await described(id)).linking.done), 'linking never finished').toBe(true);
      expect((await fetch(url(known), { method: 'POST', headers: json, body: '{"after":true}' })).status).toBe(204);
      const to = await tailOf(known);
      const delivered = () => pendingOn(hook.hits, known);
      expect(await eventually(async () => delivered().some((s: any) => s.tail_offset === to)), 'the append after linking was not delivered').toBe(true);
      await sleep(300);
      expect(delivered().map((s: any) => [s.acked_offset, s.tail_offset])).toEqual([[from, to]]);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });
  // A stream created while linking runs is covered from its start. Its registration tells the
  // subscription so (`created`); when that call fails, the notification the stream owes is
  // retried from its alarm, and still says so: a subscription still linking must not take it
  // for an existing stream's append and start the new stream's link at its tail.
  test('a stream created while linking runs, whose registration’s notification fails once, is covered from its start', { timeout: 60_000 }, async () => {
    const p = `born-${uid()}`;
    // The PUT links [a, b] and [c, d]; then four pages each fail once, so linking runs on for
    // several seconds of backoff, past the stream's retry of its notification (1 s).
    const flaky = [1, 2, 3, 4].flatMap((i) => [`${p}/m${i}-${MARKER}`, `${p}/m${i}x`]);
    // Sorts on the first page, read already: no page links it, only its notification.
    const born = `${p}/b-born-${MARKER}`;
    const hook = await hookServer((_, res) => {
      res.writeHead(500, json);
      res.end('{}');
    });
    const id = `sub-${p}`;
    try {
      expect((await put(`${p}-empty`, [])).status).toBe(201);
      const zero = await tailOf(`${p}-empty`);
      for (const name of [`${p}/a`, `${p}/b`, `${p}/c`, `${p}/d`]) expect((await put(name, [{ name }])).status).toBe(201);
      for (const name of flaky) {
        if (name.includes(MARKER)) expect((await put(name, [{ name }])).status).toBe(503);
        expect([200, 201]).toContain((await put(name, [{ name }])).status);
      }
      const config = { type: 'webhook', pattern: `${p}/*`, webhook: { url: hook.url }, lease_ttl_ms: 1_000 };
      expect((await put(`__ds/subscriptions/${id}`, config)).status).toBe(201);
      const stalled = await eventually(async () => (await described(id)).linking.failures > 0);
      expect(stalled, 'linking did not stop at a failing page').toBe(true);
      // Its registration fails once (503), then its notification of the subscription does.
      expect((await put(born, [{ born: true }])).status).toBe(503);
      expect((await put(born, [{ born: true }])).status).toBe(200);
      const bornTail = await tailOf(born);
      expect(bornTail).not.toBe(zero);
      // The stream's alarm retries the notification while the subscription is still linking.
      expect(await eventually(async () => (await described(id)).streams.some((s) => s.path === born)), 'the new stream was never linked').toBe(true);
      expect((await described(id)).linking.done, 'linking finished before the retry: the test proves nothing').toBe(false);
      expect(await eventually(async () => (await described(id)).linking.done), 'linking never finished').toBe(true);
      const link = (await described(id)).streams.find((s) => s.path === born);
      expect(link).toMatchObject({ acked_offset: zero, tail_offset: bornTail, has_pending: true });
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });
  // A stream created while linking runs is in the registry from the moment its registration
  // reaches it, before the stream has taken in the registry's answer (which says the
  // subscription covers it, new). A linking page that asks the stream to link the subscription
  // in between must not be answered as by an existing stream, at its tail: that left the new
  // stream's first data (here its initial body) out of the subscription for good.
  test('a stream a page asks to link while its registration is on its way is covered from its start', { timeout: 60_000 }, async () => {
    const p = `midreg-${uid()}`;
    // The PUT links [a, b] and [c, d]; the alarm then fails [m-…] once and waits a backoff.
    const flaky = `${p}/m-${MARKER}`;
    // Its page is [m-…, n-…]: the retry asks it while its registration's answer is held
    // (worker/src/fault.rs, \`hold_registration\`).
    const born = `${p}/n-${MARKER}-slowreg`;
    const hook = await hookServer((_, res) => {
      res.writeHead(500, json);
      res.end('{}');
    });
    const id = `sub-${p}`;
    try {
      expect((await put(`${p}-empty`, [])).status).toBe(201);
      const zero = await tailOf(`${p}-empty`);
      for (const name of [`${p}/a`, `${p}/b`, `${p}/c`, `${p}/d`]) expect((await put(name, [{ name }])).status).toBe(201);
      expect((await put(flaky, [{ name: flaky }])).status).toBe(503);
      expect((await put(flaky, [{ name: flaky }])).status).toBe(200);
      const config = { type: 'webhook', pattern: `${p}/*`, webhook: { url: hook.url }, lease_ttl_ms: 1_000 };
      expect((await put(`__ds/subscriptions/${id}`, config)).status).toBe(201);
      const stalled = await eventually(async () => (await described(id)).linking.failures > 0);
      expect(stalled, 'linking did not stop at the failing page').toBe(true);
      // Its first registration fails before the registry hears of it (503); the retry's
      // answer is held until the page's retry has asked the stream to link the subscription.
      expect((await put(born, [{ born: true }])).status).toBe(503);
      const retried = put(born, [{ born: true }]);
      expect(await eventually(async () => (await described(id)).linking.done), 'linking never finished').toBe(true);
      expect([200, 503]).toContain((await retried).status);
      const bornTail = await tailOf(born);
      expect(bornTail).not.toBe(zero);
      expect(await eventually(async () => (await described(id)).streams.some((s) => s.path === born)), 'the new stream was never linked').toBe(true);
      // Its registration, and the notification it owes, have had their time.
      await sleep(2_500);
      const link = (await described(id)).streams.find((s) => s.path === born);
      expect(link).toMatchObject({ acked_offset: zero, tail_offset: bornTail, has_pending: true });
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });
  // A subscription's explicit streams are linked in one step; when one of them cannot be asked
  // (here the flaky stream answers its first link with 503), the step is retried. The retry
  // used to move the links the first attempt made to their stream's tail again, so what was
  // appended between the two was never delivered.
  test('a retried link of explicit streams keeps the cursor of those it linked', { timeout: 60_000 }, async () => {
    const p = `explicit-${uid()}`;
    const good = `${p}/a`;
    const flaky = `${p}/b-${MARKER}`;
    // Deliveries fail until linking is done, so the append stays pending through the retry.
    let failing = true;
    const hook = await hookServer((_, res) => {
      res.writeHead(failing ? 500 : 200, json);
      res.end(failing ? '{}' : '{"done":true}');
    });
    const id = `sub-${p}`;
    try {
      expect((await put(good, [{ name: good }])).status).toBe(201);
      expect((await put(flaky, [{ name: flaky }])).status).toBe(503);
      expect((await put(flaky, [{ name: flaky }])).status).toBe(200);
      const config = { type: 'webhook', streams: [good, flaky], webhook: { url: hook.url }, lease_ttl_ms: 1_000 };
      // The good stream is linked at its tail; the flaky one fails, and with it the PUT.
      expect((await put(`__ds/subscriptions/${id}`, config)).status).toBe(503);
      const from = await tailOf(good);
      expect((await fetch(url(good), { method: 'POST', headers: json, body: '{"between":true}' })).status).toBe(204);
      const to = await tailOf(good);
      // The repeated PUT (or the alarm, whichever comes first) links the flaky stream.
      expect([200, 201]).toContain((await put(`__ds/subscriptions/${id}`, config)).status);
      expect(await eventually(async () => (await described(id)).linking.done), 'linking never finished').toBe(true);
      const link = (await described(id)).streams.find((s) => s.path === good);
      expect([link?.acked_offset, link?.tail_offset], 'the retry moved the link made before it').toEqual([from, to]);
      failing = false;
      const okHits = hook.hits.length;
      const delivered = () => pendingOn(hook.hits, good, okHits);
      expect(await eventually(async () => delivered().length > 0, 30_000), 'the append between the attempts was not delivered').toBe(true);
      expect(delivered().map((s: any) => [s.acked_offset, s.tail_offset])).toEqual([[from, to]]);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });
  // A stream created while linking runs is covered from its start: its registration tells the
  // subscription it is new. When that notification failed (here the flaky stream's first call
  // to a subscription fails), its retry no longer said so, and the page that reached the
  // stream later linked it at its tail: its first data was never delivered.
  test('a new stream whose first notification is retried is still covered from its start', { timeout: 60_000 }, async () => {
    const p = `born-${uid()}`;
    const flaky = `${p}/m-${MARKER}`;
    const born = `${p}/z-${MARKER}`;
    let failing = true;
    const hook = await hookServer((_, res) => {
      res.writeHead(failing ? 500 : 200, json);
      res.end(failing ? '{}' : '{"done":true}');
    });
    const id = `sub-${p}`;
    try {
      expect((await put(`${p}-empty`, [])).status).toBe(201);
      const zero = await tailOf(`${p}-empty`);
      // The PUT links [a, b] and [c, d]; the alarm fails [m-…, n] once.
      for (const name of [`${p}/a`, `${p}/b`, `${p}/c`, `${p}/d`, `${p}/n`]) expect((await put(name, [{ name }])).status).toBe(201);
      expect((await put(flaky, [{ name: flaky }])).status).toBe(503);
      expect((await put(flaky, [{ name: flaky }])).status).toBe(200);
      const config = { type: 'webhook', pattern: `${p}/*`, webhook: { url: hook.url }, lease_ttl_ms: 1_000 };
      expect((await put(`__ds/subscriptions/${id}`, config)).status).toBe(201);
      expect(await eventually(async () => (await described(id)).linking.failures > 0), 'linking did not stop at the failing page').toBe(true);
      // Its registration fails first (503), then its notification to the subscription.
      expect((await put(born, [{ first: true }])).status).toBe(503);
      expect((await put(born, [{ first: true }])).status).toBe(200);
      const bornTail = await tailOf(born);
      expect(await eventually(async () => (await described(id)).linking.done), 'linking never finished').toBe(true);
      const link = (await described(id)).streams.find((s) => s.path === born);
      expect([link?.acked_offset, link?.tail_offset], 'the new stream is not covered from its start').toEqual([zero, bornTail]);
      failing = false;
      const okHits = hook.hits.length;
      const delivered = () => pendingOn(hook.hits, born, okHits);
      expect(await eventually(async () => delivered().length > 0, 30_000), 'the new stream\'s first data was not delivered').toBe(true);
      expect(delivered().map((s: any) => [s.acked_offset, s.tail_offset])).toEqual([[zero, bornTail]]);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });
  // A subscription deleted and created again under its id is a new subscription: it covers a
  // stream from when it links it. A stream that linked the deleted one keeps its entry (it is
  // dropped at the stream's next notification) and tells the new one its appends. Named
  // explicitly once linking was done (the stream answers the first request to link it with
  // 503, so the link waits for the retried request), it was counted from offset 0 at its
  // first append, and its whole history was delivered.
  test('a stream holding a deleted subscription\'s entry is covered by the one created again from when it links it', { timeout: 60_000 }, async () => {
    const p = `again-${uid()}`;
    const known = `${p}/x-${MARKER}`;
    const hook = await hookServer((_, res) => {
      res.writeHead(200, json);
      res.end('{"done":true}');
    });
    const id = `sub-${p}`;
    const webhook = { url: hook.url };
    try {
      expect((await put(`__ds/subscriptions/${id}`, { type: 'webhook', pattern: `${p}/*`, webhook, lease_ttl_ms: 1_000 })).status).toBe(201);
      // Its registration links the subscription (its first try fails: 503, the PUT retried).
      expect((await put(known, [{ before: true }])).status).toBe(503);
      expect((await put(known, [{ before: true }])).status).toBe(200);
      const linked = async () => (await described(id)).streams.some((s) => s.path === known);
      expect(await eventually(linked), 'the stream never linked the first subscription').toBe(true);
      expect((await fetch(sub(id), { method: 'DELETE' })).status).toBe(204);
      const again = { type: 'webhook', pattern: `${p}-other/*`, webhook, lease_ttl_ms: 1_000 };
      const seen = hook.hits.length;
      expect((await put(`__ds/subscriptions/${id}`, again)).status).toBe(201);
      expect((await described(id)).linking.done).toBe(true);
      const add = () => fetch(sub(`${id}/streams`), { method: 'POST', headers: json, body: JSON.stringify({ streams: [known] }) });
      expect((await add()).status).toBe(503);
      expect((await fetch(url(known), { method: 'POST', headers: json, body: '{"while":true}' })).status).toBe(204);
      await sleep(300);
      expect((await add()).status).toBe(204);
      const from = await tailOf(known);
      expect((await fetch(url(known), { method: 'POST', headers: json, body: '{"after":true}' })).status).toBe(204);
      const to = await tailOf(known);
      const delivered = () => pendingOn(hook.hits, known, seen);
      expect(await eventually(async () => delivered().some((s: any) => s.tail_offset === to)), 'the append after linking was not delivered').toBe(true);
      await sleep(300);
      expect(delivered().map((s: any) => [s.acked_offset, s.tail_offset])).toEqual([[from, to]]);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });

  // A new stream's registration tells each subscription covering it that the stream is new,
  // and says so until the subscription answers. Here the stream cannot reach its subscriptions
  // for 3 s (`notify-down`, worker/src/fault.rs), and the subscription is deleted and created
  // again under its id meanwhile: the new one links the stream, which existed before it, so it
  // covers it from there. The stream's answer to that link, and its retried notification, still
  // said it was new (it was, to the deleted one), and the new subscription took it from its start.
  test('a stream new to a deleted subscription is not new to the one created again under its id', { timeout: 60_000 }, async () => {
    const p = `renew-${uid()}`;
    const stream = `${p}/s-${MARKER}-notify-down`;
    const hook = await hookServer((_, res) => {
      res.writeHead(200, json);
      res.end('{"done":true}');
    });
    const id = `sub-${p}`;
    const config = { type: 'webhook', pattern: `${p}/*`, webhook: { url: hook.url }, lease_ttl_ms: 1_000 };
    try {
      expect((await put(`__ds/subscriptions/${id}`, config)).status).toBe(201);
      // Its registration (the first fails: 503, the PUT retried) links the subscription, and its
      // notification fails.
      expect((await put(stream, [{ before: true }])).status).toBe(503);
      expect((await put(stream, [{ before: true }])).status).toBe(200);
      expect((await fetch(sub(id), { method: 'DELETE' })).status).toBe(204);
      const seen = hook.hits.length;
      // Its page's first link of the stream fails (503); the same PUT again links it.
      expect((await put(`__ds/subscriptions/${id}`, config)).status).toBe(503);
      expect([200, 201]).toContain((await put(`__ds/subscriptions/${id}`, config)).status);
      expect(await eventually(async () => (await described(id)).linking.done), 'linking never finished').toBe(true);
      const state = await described(id);
      const from = await tailOf(stream);
      expect(state.streams.find((s) => s.path === stream), 'the new subscription does not cover the stream from when it linked it').toMatchObject({ acked_offset: from, has_pending: false });
      // Told once the outage is over: the append, and nothing before the new subscription.
      expect((await fetch(url(stream), { method: 'POST', headers: json, body: '{"after":true}' })).status).toBe(204);
      const to = await tailOf(stream);
      const delivered = () => pendingOn(hook.hits, stream, seen);
      expect(await eventually(async () => delivered().some((s: any) => s.tail_offset === to)), 'the append was not delivered').toBe(true);
      await sleep(300);
      expect(delivered().map((s: any) => [s.acked_offset, s.tail_offset])).toEqual([[from, to]]);
      expect((await described(id)).streams.find((s) => s.path === stream)).toMatchObject({ acked_offset: to, tail_offset: to });
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });
  // Streams a `POST .../streams` adds are linked at their tails by that request; when one cannot
  // be asked (the flaky stream answers its first link with 503), the request is answered 503.
  // Only the client's retry linked it: a client that did not retry left it named but never
  // linked (the stream never heard of the subscription), and none of its appends was delivered.
  // The subscription's alarm now finishes it, and GET shows linking not done until then.
  test('a stream a failed POST .../streams named is linked by the alarm without a retry', { timeout: 60_000 }, async () => {
    const p = `added-${uid()}`;
    const good = `${p}/a`;
    const flaky = `${p}/b-${MARKER}`;
    const hook = await hookServer((_, res) => {
      res.writeHead(200, json);
      res.end('{"done":true}');
    });
    const id = `sub-${p}`;
    try {
      expect((await put(good, [{ name: good }])).status).toBe(201);
      expect((await put(flaky, [{ name: flaky }])).status).toBe(503);
      expect((await put(flaky, [{ name: flaky }])).status).toBe(200);
      expect((await put(`__ds/subscriptions/${id}`, { type: 'webhook', streams: [good], webhook: { url: hook.url }, lease_ttl_ms: 1_000 })).status).toBe(201);
      const add = await fetch(sub(`${id}/streams`), { method: 'POST', headers: json, body: JSON.stringify({ streams: [flaky] }) });
      expect(add.status).toBe(503);
      // Not retried: the alarm links it.
      expect(await eventually(async () => (await described(id)).linking.done), 'linking never finished').toBe(true);
      const from = await tailOf(flaky);
      expect((await described(id)).streams.find((s) => s.path === flaky)).toMatchObject({ acked_offset: from, tail_offset: from });
      expect((await fetch(url(flaky), { method: 'POST', headers: json, body: '{"after":true}' })).status).toBe(204);
      const to = await tailOf(flaky);
      const delivered = () => pendingOn(hook.hits, flaky);
      expect(await eventually(async () => delivered().some((s: any) => s.tail_offset === to), 10_000), 'the append was not delivered').toBe(true);
      expect(delivered().map((s: any) => [s.acked_offset, s.tail_offset])).toEqual([[from, to]]);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });
  // A release that leaves nothing owed deletes the wake's lease alarm, but the subscription's
  // one alarm also links the streams a failed `POST .../streams` named: the release deleted it
  // all the same (it went by the wake alone), and the stream was never linked without a retry.
  // With FAULT_MARKER on, a subscription's GET says when its alarm is set (`x-edgestream-alarm`).
  test('a release with nothing left keeps the alarm a failed POST .../streams owes', { timeout: 60_000 }, async () => {
    const p = `released-${uid()}`;
    const wake = `wake-${p}/w`;
    const good = `${p}/a`;
    const flaky = `${p}/b-${MARKER}`;
    const id = `pull-${p}`;
    try {
      expect((await put(wake, [])).status).toBe(201);
      expect((await put(good, [{ n: 0 }])).status).toBe(201);
      expect((await put(flaky, [{ name: flaky }])).status).toBe(503);
      expect((await put(flaky, [{ name: flaky }])).status).toBe(200);
      const config = { type: 'pull-wake', streams: [good], wake_stream: wake, lease_ttl_ms: 60_000 };
      expect((await put(`__ds/subscriptions/${id}`, config)).status).toBe(201);
      expect((await fetch(url(good), { method: 'POST', headers: json, body: '{"n":1}' })).status).toBe(204);
      const claim = await fetch(sub(`${id}/claim`), { method: 'POST', headers: json, body: '{"worker":"w"}' });
      expect(claim.status).toBe(200);
      const w = await claim.json();
      const auth = { ...json, authorization: `Bearer ${w.token}` };
      const fence = { wake_id: w.wake_id, generation: w.generation };
      // The worker acks all it took, and keeps the wake.
      const acks = w.streams.map((s: any) => ({ stream: s.path, offset: s.tail_offset }));
      expect((await fetch(sub(`${id}/ack`), { method: 'POST', headers: auth, body: JSON.stringify({ ...fence, acks }) })).status).toBe(200);
      const add = await fetch(sub(`${id}/streams`), { method: 'POST', headers: json, body: JSON.stringify({ streams: [flaky] }) });
      expect(add.status).toBe(503);
      expect((await fetch(sub(`${id}/release`), { method: 'POST', headers: auth, body: JSON.stringify(fence) })).status).toBe(204);
      const after = await fetch(sub(id));
      expect((await after.json()).linking.done).toBe(false);
      expect(after.headers.get('x-edgestream-alarm'), 'the release deleted the alarm linking owes').not.toBe('none');
      expect(await eventually(async () => (await described(id)).linking.done, 10_000), 'linking never finished').toBe(true);
      expect((await described(id)).streams.map((s) => s.path).sort()).toEqual([good, flaky].sort());
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });
  // A stream drops a subscription's entry when the subscription answers a notification
  // `linked: false` (it was deleted). Here that answer comes two seconds late (`late-unlinked`,
  // worker/src/fault.rs), and meanwhile the subscription is created again and links the stream:
  // the stream, finding the entry there, kept it, then dropped it on the late answer, so the new
  // subscription was never told of the stream's appends.
  test('a late linked:false from a deleted subscription does not drop the one created again meanwhile', { timeout: 60_000 }, async () => {
    const p = `late-${uid()}`;
    const stream = `${p}/s`;
    const hook = await hookServer((_, res) => {
      res.writeHead(200, json);
      res.end('{"done":true}');
    });
    const id = `sub-${p}-${MARKER}-late-unlinked`;
    const config = { type: 'webhook', streams: [stream], webhook: { url: hook.url }, lease_ttl_ms: 1_000 };
    try {
      expect((await put(stream, [{ before: true }])).status).toBe(201);
      expect((await put(`__ds/subscriptions/${id}`, config)).status).toBe(201);
      expect((await fetch(sub(id), { method: 'DELETE' })).status).toBe(204);
      // The append's notification reaches the deleted subscription, whose answer is late.
      const appended = fetch(url(stream), { method: 'POST', headers: json, body: '{"during":true}' });
      await sleep(300);
      const seen = hook.hits.length;
      expect((await put(`__ds/subscriptions/${id}`, config)).status).toBe(201);
      const from = await tailOf(stream);
      expect((await appended).status).toBe(204);
      expect((await described(id)).streams.find((s) => s.path === stream)).toMatchObject({ acked_offset: from, tail_offset: from });
      expect((await fetch(url(stream), { method: 'POST', headers: json, body: '{"after":true}' })).status).toBe(204);
      const to = await tailOf(stream);
      const delivered = () => pendingOn(hook.hits, stream, seen);
      expect(await eventually(async () => delivered().some((s: any) => s.tail_offset === to), 10_000), 'the append after the new subscription linked the stream was not delivered').toBe(true);
      expect(delivered().map((s: any) => [s.acked_offset, s.tail_offset])).toEqual([[from, to]]);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });
  // A stream named before it existed is new to the subscription: its registration says so
  // until the subscription takes a notification, which covers it from its start. Once taken,
  // the stream is an existing one to that subscription: dropped (`DELETE .../streams/<path>`)
  // and named again (`POST .../streams`) with no append between, so the stream still holds
  // the subscription's entry, it is linked at its tail, as any named stream is. Were the
  // stream to keep saying it is new (the same incarnation's flag never cleared), its answer to
  // that link would put the cursor back at its start, and its history be delivered again.
  test('a new stream dropped and named again once its notification was taken is linked at its tail', { timeout: 60_000 }, async () => {
    const p = `renamed-${uid()}`;
    const stream = `${p}/s`;
    const hook = await hookServer((_, res) => {
      res.writeHead(200, json);
      res.end('{"done":true}');
    });
    const id = `sub-${p}`;
    const config = { type: 'webhook', streams: [stream], webhook: { url: hook.url }, lease_ttl_ms: 1_000 };
    try {
      expect((await put(`__ds/subscriptions/${id}`, config)).status).toBe(201);
      expect((await put(stream, [{ first: true }])).status).toBe(201);
      const tail = await tailOf(stream);
      const link = async () => (await described(id)).streams.find((s) => s.path === stream);
      // Covered from its start: its first data delivered, and acked.
      expect(await eventually(async () => pendingOn(hook.hits, stream).length > 0), 'the new stream\'s data was not delivered').toBe(true);
      expect(await eventually(async () => (await link())?.acked_offset === tail), 'the delivery was not acked').toBe(true);
      // The stream stores that the subscription took its notification after the answer.
      await sleep(300);
      const drop = await fetch(sub(`${id}/streams/${encodeURIComponent(stream)}`), { method: 'DELETE' });
      expect(drop.status).toBe(204);
      expect(await link()).toBeUndefined();
      const seen = hook.hits.length;
      const add = await fetch(sub(`${id}/streams`), { method: 'POST', headers: json, body: JSON.stringify({ streams: [stream] }) });
      expect(add.status).toBe(204);
      expect(await link(), 'named again, the stream was not linked at its tail').toMatchObject({ acked_offset: tail, tail_offset: tail, has_pending: false });
      await sleep(1_000);
      expect(pendingOn(hook.hits, stream, seen), 'the stream\'s history was delivered again').toEqual([]);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });
  // A linking page asks each of its streams for its tail, and saves the links once the
  // registry has brought every answer back. A stream deleted in between tells the
  // subscription it is gone before the page has linked it: the subscription, finding no link,
  // answered `linked: false`, and the page then saved a link at the old stream's tail. A
  // stream created at that path later found that link placed, so its data before the old
  // tail was never delivered. Here the page's answer is held until the removal is told
  // (`slowpage`, worker/src/fault.rs).
  test('a stream deleted while its linking page is out is not linked at its old tail, and one created there again is covered from its start', { timeout: 60_000 }, async () => {
    const p = `gone-${uid()}`;
    const stream = `${p}/s`;
    const hook = await hookServer((_, res) => {
      res.writeHead(500, json);
      res.end('{}');
    });
    const id = `sub-${p}-${MARKER}-slowpage`;
    const config = { type: 'webhook', pattern: `${p}/*`, webhook: { url: hook.url }, lease_ttl_ms: 1_000 };
    try {
      expect((await put(`${p}-empty`, [])).status).toBe(201);
      const zero = await tailOf(`${p}-empty`);
      expect((await put(stream, [{ old: true }])).status).toBe(201);
      const oldTail = await tailOf(stream);
      const created = put(`__ds/subscriptions/${id}`, config);
      const held = await eventually(async () => {
        const res = await fetch(sub(id));
        await res.body?.cancel();
        return res.status === 200 && res.headers.get('x-edgestream-pages-held') === '1';
      }, 10_000);
      expect(held, 'the linking page was never held').toBe(true);
      expect((await fetch(url(stream), { method: 'DELETE' })).status).toBe(204);
      expect((await created).status).toBe(201);
      expect((await described(id)).linking.done).toBe(true);
      expect((await described(id)).streams.filter((s) => s.path === stream), 'a link was saved for the deleted stream').toEqual([]);
      // The same body again: a new stream whose tail is where the old one's was.
      let status = 0;
      expect(await eventually(async () => (status = (await put(stream, [{ new: true }])).status) === 201, 10_000), `the stream was not created again (${status})`).toBe(true);
      const newTail = await tailOf(stream);
      expect(newTail).toBe(oldTail);
      expect(await eventually(async () => (await described(id)).streams.some((s) => s.path === stream), 10_000), 'the new stream was never linked').toBe(true);
      await sleep(500);
      const link = (await described(id)).streams.find((s) => s.path === stream);
      expect(link).toMatchObject({ acked_offset: zero, tail_offset: newTail, has_pending: true });
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });
});

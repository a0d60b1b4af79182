// Subscriptions beyond what the conformance suite covers. A stream keeps its list of linked
// subscriptions in memory (worker/src/object/store.rs); a subscription that links a stream
// after the stream has already appended must still be told of the next append. The rest are
// regressions from an audit: webhooks that redirect, hang, fail for a while or answer at
// length; streams deleted and created again; explicit links removed under a pattern; racing
// PUTs; and subscriptions that name many streams.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';
import { hookServer, receiver } from './support/webhook';

let server: Awaited<ReturnType<typeof startServer>>;
const url = (path: string) => `${server.baseUrl}/v1/stream/${path}`;

beforeAll(async () => {
  // A short delivery timeout, so a webhook that never answers is given up on quickly.
  // The registry links 4 streams per call, so a pattern over 10 takes three.
  // FAULT_MARKER turns on the test-only headers (worker/src/fault.rs); no stream here has it in
  // its path, so nothing is made to fail.
  server = await startServer({
    vars: { WEBHOOK_ALLOW_LOCALHOST: 'true', WEBHOOK_TIMEOUT_MS: '2000', LINKS_PER_CALL: '4', FAULT_MARKER: 'no-stream-is-named-this' },
  });
});

afterAll(async () => {
  await server?.stop();
});

async function until(check: () => boolean, ms = 5_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

const json = { 'content-type': 'application/json' };

describe('a subscription that links a stream with history', () => {
  test('is notified of the stream’s next append', async () => {
    const prefix = `late-${Date.now()}`;
    const stream = `${prefix}/s`;
    expect((await fetch(url(stream), { method: 'PUT', headers: json })).status).toBe(201);
    // Appends before any subscription exists: the stream learns it has no subscribers.
    for (let i = 0; i < 3; i++) {
      expect((await fetch(url(stream), { method: 'POST', headers: json, body: JSON.stringify({ i }) })).status).toBe(204);
    }
    const hook = await receiver();
    const id = `sub-${prefix}`;
    try {
      const created = await fetch(url(`__ds/subscriptions/${id}`), {
        method: 'PUT',
        headers: json,
        body: JSON.stringify({ type: 'webhook', pattern: `${prefix}/*`, webhook: { url: hook.url }, lease_ttl_ms: 1_000 }),
      });
      expect(created.status).toBe(201);
      const before = hook.bodies.length;
      expect((await fetch(url(stream), { method: 'POST', headers: json, body: '{"after":true}' })).status).toBe(204);
      const notified = await until(() =>
        hook.bodies.slice(before).some((b) => b.streams?.some((s: any) => s.path === stream && s.has_pending)),
      );
      expect(notified, 'no webhook named the stream after its append').toBe(true);
    } finally {
      await fetch(url(`__ds/subscriptions/${id}`), { method: 'DELETE' });
      await hook.close();
    }
  });
});

const sub = (id: string, rest = '') => url(`__ds/subscriptions/${id}${rest}`);
const uid = () => `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 7)}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function put(path: string, body: unknown) {
  return fetch(url(path), { method: 'PUT', headers: json, body: typeof body === 'string' ? body : JSON.stringify(body) });
}

async function post(path: string, body: unknown, headers: Record<string, string> = {}) {
  return fetch(url(path), { method: 'POST', headers: { ...json, ...headers }, body: JSON.stringify(body) });
}

/** A page of the subscription's description: at most `limit` streams, after `after`. */
async function streamsPage(id: string, query: { limit?: number; after?: string } = {}) {
  const q = new URLSearchParams();
  if (query.limit !== undefined) q.set('limit', String(query.limit));
  if (query.after !== undefined) q.set('streams_after', query.after);
  const res = await fetch(`${sub(id)}${q.size ? `?${q}` : ''}`);
  expect(res.status).toBe(200);
  return (await res.json()) as { status: string; pattern: string; streams: any[]; streams_has_more: boolean; streams_next: string | null };
}

/** The subscription's description with every stream it links, read a page at a time. */
async function described(id: string) {
  const first = await streamsPage(id);
  for (let page = first; page.streams_has_more; ) {
    page = await streamsPage(id, { after: page.streams_next! });
    first.streams.push(...page.streams);
  }
  return first;
}

async function linkOf(id: string, path: string) {
  return (await described(id)).streams.find((s) => s.path === path);
}

/** Polls an async condition. */
async function eventually(check: () => Promise<boolean>, ms = 8_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await sleep(100);
  }
  return false;
}

async function tailOf(path: string) {
  const head = await fetch(url(path), { method: 'HEAD' });
  return head.headers.get('stream-next-offset');
}

/** Creates the webhook subscription `id` to `<p>/*` (and `streams`), expecting 201. */
async function webhookSubscription(id: string, p: string, hookUrl: string, options: { leaseMs?: number; streams?: string[] } = {}) {
  const body = { type: 'webhook', pattern: `${p}/*`, webhook: { url: hookUrl }, lease_ttl_ms: options.leaseMs ?? 1_000, ...(options.streams ? { streams: options.streams } : {}) };
  expect((await put(`__ds/subscriptions/${id}`, body)).status).toBe(201);
}

/** Calls back the webhook wake `w` with `acks`, as its receiver would. */
async function callBack(w: any, acks: unknown[], done: boolean) {
  return fetch(w.callback_url, {
    method: 'POST',
    headers: { ...json, authorization: `Bearer ${w.callback_token}` },
    body: JSON.stringify({ wake_id: w.wake_id, generation: w.generation, acks, done }),
  });
}

describe('webhook delivery', () => {
  test('a redirect is a failed delivery: the signed wake is never sent to its target', async () => {
    const p = `redir-${uid()}`;
    const target = await hookServer((_, res) => {
      res.writeHead(200, json);
      res.end('{"done":true}');
    });
    const redirector = await hookServer((_, res) => {
      res.writeHead(307, { location: `${target.url}/internal-admin` });
      res.end();
    });
    const id = `sub-${p}`;
    try {
      await webhookSubscription(id, p, redirector.url);
      expect((await put(`${p}/s`, { x: 1 })).status).toBe(201);
      // The first attempt, then a retry about a second later: the 307 counted as a failure.
      expect(await until(() => redirector.hits.length >= 2, 8_000), 'the redirect was not retried').toBe(true);
      expect(target.hits, 'the wake was sent to where the redirect pointed').toHaveLength(0);
      const state = await described(id);
      expect(state.status).toBe('failed');
      expect(state.streams.find((s) => s.path === `${p}/s`)?.has_pending).toBe(true);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await redirector.close();
      await target.close();
    }
  });

  test('a long reply is cut off after a few KiB and does not end the wake', async () => {
    const p = `bigreply-${uid()}`;
    const total = 16 * 1024 * 1024;
    let sent = 0;
    let closed = false;
    const hook = await hookServer((_, res, n) => {
      if (n > 1) {
        res.writeHead(200, json);
        res.end('{}');
        return;
      }
      // 16 MiB of whitespace, then a reply that would end the wake if it were read.
      res.writeHead(200, json);
      const chunk = Buffer.alloc(64 * 1024, 0x20);
      res.on('close', () => (closed = true));
      const pump = () => {
        while (!closed && sent < total) {
          sent += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        if (!closed) res.end('{"done":true}');
      };
      pump();
    });
    const id = `sub-${p}`;
    try {
      await webhookSubscription(id, p, hook.url, { leaseMs: 60_000 });
      expect((await put(`${p}/s`, { x: 1 })).status).toBe(201);
      expect(await until(() => closed, 8_000), 'the reply was never closed').toBe(true);
      await sleep(300);
      expect(sent, 'the whole reply was read').toBeLessThan(total);
      const link = await linkOf(id, `${p}/s`);
      expect(link?.has_pending, 'the reply past the limit acked the wake').toBe(true);
      // Delivered all the same: no failure is recorded, and the wake waits for its callback.
      expect((await described(id)).status).toBe('active');
      expect(hook.hits).toHaveLength(1);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });

  test('a webhook that never answers times out, and the wake is retried', async () => {
    const p = `hang-${uid()}`;
    // The first request is held open for good; later ones end the wake.
    const hook = await hookServer((_, res, n) => {
      if (n === 1) return;
      res.writeHead(200, json);
      res.end('{"done":true}');
    });
    const id = `sub-${p}`;
    try {
      await webhookSubscription(id, p, hook.url);
      expect((await put(`${p}/s`, { x: 1 })).status).toBe(201);
      // WEBHOOK_TIMEOUT_MS is 2 s here, and the first retry follows about a second later.
      expect(await until(() => hook.hits.length >= 2, 10_000), 'no delivery after the hung one').toBe(true);
      expect(await eventually(async () => (await linkOf(id, `${p}/s`))?.has_pending === false)).toBe(true);
      // The next append is delivered too: the subscription is not stuck.
      const before = hook.hits.length;
      expect((await post(`${p}/s`, { y: 2 })).status).toBe(204);
      expect(await until(() => hook.hits.length > before, 5_000)).toBe(true);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });

  test('failed deliveries go on being retried after the lease would have ended', async () => {
    const p = `retry-${uid()}`;
    // Fails for 2.5 s (the first attempt and the retry a second later), then ends the wake.
    let failUntil = Infinity;
    const hook = await hookServer((_, res) => {
      if (Date.now() < failUntil) {
        res.writeHead(500);
        res.end('not yet');
        return;
      }
      res.writeHead(200, json);
      res.end('{"done":true}');
    });
    const id = `sub-${p}`;
    try {
      await webhookSubscription(id, p, hook.url);
      failUntil = Date.now() + 2_500;
      expect((await put(`${p}/s`, { x: 1 })).status).toBe(201);
      // Attempts at about 0, 1 and 3 s; the third is answered.
      const delivered = await eventually(async () => {
        const state = await described(id);
        return state.status === 'active' && state.streams.some((s) => s.path === `${p}/s` && !s.has_pending);
      }, 15_000);
      expect(delivered, `stuck after ${hook.hits.length} attempts`).toBe(true);
      expect(hook.hits.length).toBeGreaterThanOrEqual(3);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });
});

describe('links', () => {
  test('a deleted stream created again at its path is delivered as a new stream', async () => {
    const p = `recreate-${uid()}`;
    const globbed = `${p}/s`;
    const named = `named-${p}/e`;
    const hook = await hookServer((_, res) => {
      res.writeHead(200, json);
      res.end('{"done":true}');
    });
    const id = `sub-${p}`;
    try {
      await webhookSubscription(id, p, hook.url, { streams: [named] });
      const history = JSON.stringify({ history: 'x'.repeat(200) });
      expect((await put(globbed, history)).status).toBe(201);
      expect((await put(named, history)).status).toBe(201);
      // Delivered and acked ({"done": true}) up to the long first tails.
      const acked = async () => {
        const state = await described(id);
        return [globbed, named].every((path) => state.streams.some((s) => s.path === path && !s.has_pending && s.acked_offset === s.tail_offset));
      };
      expect(await eventually(acked)).toBe(true);
      const oldTail = await tailOf(named);
      expect((await linkOf(id, named))?.acked_offset).toBe(oldTail);

      expect((await fetch(url(globbed), { method: 'DELETE' })).status).toBe(204);
      expect((await fetch(url(named), { method: 'DELETE' })).status).toBe(204);
      // The pattern's link is gone; the explicit one waits at the start for a new stream.
      expect(await linkOf(id, globbed)).toBeUndefined();
      const waiting = await linkOf(id, named);
      expect(waiting?.link_type).toBe('explicit');
      expect(waiting?.acked_offset).not.toBe(oldTail);
      expect(waiting?.has_pending).toBe(false);

      // Created again, shorter than before: all of the new data is delivered and acked.
      const seen = hook.hits.length;
      expect((await put(globbed, '{"small":1}')).status).toBe(201);
      expect((await put(named, '{"small":1}')).status).toBe(201);
      expect((await post(globbed, { again: 2 })).status).toBe(204);
      const woke = (path: string) =>
        hook.hits.slice(seen).some((h) => h.body?.streams?.some((s: any) => s.path === path && s.has_pending));
      expect(await until(() => woke(globbed) && woke(named), 8_000), 'no wake for the new streams').toBe(true);
      expect(await eventually(acked)).toBe(true);
      expect((await linkOf(id, globbed))?.acked_offset).toBe(await tailOf(globbed));
      expect((await linkOf(id, named))?.acked_offset).toBe(await tailOf(named));
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });

  test('removing an explicit stream the pattern also matches keeps its cursor', async () => {
    const p = `replay-${uid()}`;
    const wake = `wake-${p}/w`;
    const stream = `${p}/a`;
    const id = `pull-${p}`;
    try {
      expect((await put(wake, '[]')).status).toBe(201);
      expect(
        (await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `${p}/*`, streams: [stream], wake_stream: wake, lease_ttl_ms: 5_000 }))
          .status,
      ).toBe(201);
      // Named before it exists, then created: linked both ways.
      expect((await put(stream, JSON.stringify({ history: 'x'.repeat(50) }))).status).toBe(201);
      const claim = await post(`__ds/subscriptions/${id}/claim`, { worker: 'w' });
      expect(claim.status).toBe(200);
      const claimed = await claim.json();
      const tail = claimed.streams.find((s: any) => s.path === stream).tail_offset;
      const ack = await post(
        `__ds/subscriptions/${id}/ack`,
        { wake_id: claimed.wake_id, generation: claimed.generation, acks: [{ stream, offset: tail }], done: true },
        { authorization: `Bearer ${claimed.token}` },
      );
      expect(ack.status).toBe(200);

      expect((await fetch(sub(id, `/streams/${encodeURIComponent(stream)}`), { method: 'DELETE' })).status).toBe(204);
      const kept = await linkOf(id, stream);
      expect(kept, 'the pattern still matches, but the link is gone').toBeDefined();
      expect(kept.link_type).toBe('glob');
      expect(kept.acked_offset).toBe(tail);

      expect((await post(stream, { more: 1 })).status).toBe(204);
      const again = await post(`__ds/subscriptions/${id}/claim`, { worker: 'w' });
      expect(again.status).toBe(200);
      const next = (await again.json()).streams.find((s: any) => s.path === stream);
      expect(next.acked_offset, 'acked data is handed out again').toBe(tail);
      expect(next.has_pending).toBe(true);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });
});

describe('the registry with many links', () => {
  // The one registry is asked which subscriptions cover each stream created or removed in the
  // deployment. It used to read every link to answer, and a subscription may name 10,000
  // streams, existing or not: 100,000 explicit links (ten subscriptions, a hundred requests) cost
  // every create and removal 22 ms of the registry's time, one at a time for the deployment.
  // With FAULT_MARKER on, a PUT that registers its stream says how many rows the registry read.
  test('finds the subscriptions of a new stream reading only the links that can match it', async () => {
    const p = `many-${uid()}`;
    const wake = `wake-${p}`;
    const id = `pull-${p}`;
    const named = (set: number) => Array.from({ length: 1000 }, (_, i) => `${p}/named/${set}/${i}`);
    try {
      expect((await put(wake, '[]')).status).toBe(201);
      const created = await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `${p}/globbed/*`, streams: named(0), wake_stream: wake });
      expect(created.status).toBe(201);
      expect((await post(`__ds/subscriptions/${id}/streams`, { streams: named(1) })).status).toBe(204);

      const rowsRead = (res: Response) => Number(res.headers.get('x-edgestream-registry-rows'));
      const other = await put(`other-${p}`, '[]');
      expect(other.status).toBe(201);
      expect(rowsRead(other), 'rows the registry read for a stream no link covers').toBeLessThan(200);

      // The links still find the streams they cover, by pattern and by name.
      const globbed = await put(`${p}/globbed/a`, '[]');
      expect(globbed.status).toBe(201);
      expect(rowsRead(globbed)).toBeLessThan(200);
      expect((await linkOf(id, `${p}/globbed/a`))?.link_type).toBe('glob');
      const explicit = await put(`${p}/named/1/999`, '[]');
      expect(explicit.status).toBe(201);
      expect(rowsRead(explicit)).toBeLessThan(200);
      expect((await linkOf(id, `${p}/named/1/999`))?.link_type).toBe('explicit');
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });
});

describe('stream names in a subscription', () => {
  test('a wake stream is named as given, like the streams it covers: never %-decoded again', async () => {
    const p = `pct-${uid()}`;
    // The stream literally named `…/w%41`, whose URL escapes the `%`; `…/wA` is another one.
    const wake = `wake-${p}/w%41`;
    const wakeUrl = `wake-${p}/w%2541`;
    const id = `pull-${p}`;
    try {
      expect((await put(wakeUrl, '[]')).status).toBe(201);
      expect((await put(`wake-${p}/wA`, '[]')).status).toBe(201);
      expect((await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `${p}/*`, wake_stream: wake })).status).toBe(201);
      expect((await put(`${p}/s`, '{"n":1}')).status).toBe(201);
      const events = async (path: string) => (await (await fetch(url(`${path}?offset=-1`))).json()) as any[];
      expect(await eventually(async () => (await events(wakeUrl)).length === 1), 'no wake event in the named stream').toBe(true);
      expect((await events(wakeUrl))[0]).toMatchObject({ type: 'wake', subscription_id: id, stream: `${p}/s` });
      expect(await events(`wake-${p}/wA`)).toEqual([]);
      // A name no URL can reach is refused when the subscription is made.
      const refused = await put(`__ds/subscriptions/${id}-bs`, { type: 'pull-wake', pattern: `${p}/*`, wake_stream: 'a\\b' });
      expect(refused.status).toBe(400);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });

  test('only a first segment of exactly __ds is reserved: __dsq/… is named like any stream', async () => {
    const p = `__dsq${uid()}`;
    const id = `dsq-${uid()}`;
    try {
      expect((await put(`${p}/a`, '[]')).status).toBe(201);
      expect((await put(`${p}/wake`, '[]')).status).toBe(201);
      const made = await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `${p}/x/*`, streams: [`${p}/a`], wake_stream: `${p}/wake` });
      expect(made.status, await made.text()).toBe(201);
      expect(await linkOf(id, `${p}/a`)).toBeDefined();
      const reserved = await put(`__ds/subscriptions/${id}-r`, { type: 'pull-wake', pattern: `${p}/*`, streams: ['__ds/a'], wake_stream: `${p}/wake` });
      expect(reserved.status).toBe(400);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });
});

describe('acks', () => {
  test('an ack inside a JSON message is 409 INVALID_OFFSET; at a message boundary, or anywhere in a byte stream, it counts', async () => {
    const p = `acks-${uid()}`;
    const wake = `wake-${p}/w`;
    const id = `pull-${p}`;
    const at = (position: number) => `0000000000000000_${String(position).padStart(16, '0')}`;
    const positionOf = (offset: string) => Number(offset.split('_')[1]);
    try {
      expect((await put(wake, '[]')).status).toBe(201);
      expect((await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `${p}/*`, wake_stream: wake, lease_ttl_ms: 10_000 })).status).toBe(201);
      const stream = `${p}/json`;
      expect((await put(stream, '')).status).toBe(201);
      const first = (await post(stream, { abcdef: 1 })).headers.get('stream-next-offset')!;
      expect((await post(stream, { g: 2 })).status).toBe(204);
      const bytes = `${p}/text`;
      const text = await fetch(url(bytes), { method: 'PUT', headers: { 'content-type': 'text/plain' }, body: 'abcdefgh' });
      expect(text.status).toBe(201);
      let claimed: any;
      const claim = async () => {
        const res = await post(`__ds/subscriptions/${id}/claim`, { worker: 'w' });
        if (res.status === 200) claimed = await res.json();
        return res.status === 200;
      };
      expect(await eventually(claim)).toBe(true);
      const { wake_id: wakeId, generation, token } = claimed;
      const ack = (acks: { stream: string; offset: string }[]) =>
        post(`__ds/subscriptions/${id}/ack`, { wake_id: wakeId, generation, acks }, { authorization: `Bearer ${token}` });
      // Inside the second message: refused, and nothing of the ack applied.
      const inside = await ack([{ stream: bytes, offset: at(3) }, { stream, offset: at(positionOf(first) + 3) }]);
      expect(inside.status).toBe(409);
      expect((await inside.json()).error.code).toBe('INVALID_OFFSET');
      expect((await linkOf(id, bytes)).acked_offset).toBe(at(0));
      // At the boundary between the messages, and mid-way through the byte stream: applied.
      expect((await ack([{ stream, offset: first }, { stream: bytes, offset: at(3) }])).status).toBe(200);
      expect((await linkOf(id, stream)).acked_offset).toBe(first);
      expect((await linkOf(id, bytes)).acked_offset).toBe(at(3));
      // A read from the acked offset works.
      expect(await (await fetch(url(`${stream}?offset=${first}`))).json()).toEqual([{ g: 2 }]);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });
});

describe('a pattern over more existing streams than the registry links per call', () => {
  test('links every one of them, each at its tail', async () => {
    const p = `many-${uid()}`;
    const wake = `wake-${p}/w`;
    const id = `pull-${p}`;
    const names = Array.from({ length: 10 }, (_, i) => `${p}/s${i}`);
    for (const [i, name] of names.entries()) {
      // Stream i holds i + 1 messages, so each has its own tail.
      expect((await put(name, JSON.stringify(Array.from({ length: i + 1 }, () => ({ n: i }))))).status).toBe(201);
    }
    try {
      expect((await put(wake, '[]')).status).toBe(201);
      expect((await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `${p}/*`, wake_stream: wake })).status).toBe(201);
      const streams = (await described(id)).streams;
      expect(streams.map((s) => s.path).sort()).toEqual([...names].sort());
      for (const name of names) {
        const tail = (await fetch(url(name), { method: 'HEAD' })).headers.get('stream-next-offset');
        const link = streams.find((s) => s.path === name);
        expect(link, name).toMatchObject({ link_type: 'glob', tail_offset: tail, acked_offset: tail, has_pending: false });
      }
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });
});

describe('a stream with more subscriptions than one invocation may call', () => {
  // Ten subscriptions over one stream, with LINKS_PER_CALL at 4: no request or alarm may call
  // more than 4 of them, yet every one must learn the tail, and none may be starved by appends
  // that keep coming (worker/src/object/subscribers.rs).
  test('tells every one its tail, at most LINKS_PER_CALL at a time, with none starved by appends', { timeout: 60_000 }, async () => {
    const p = `fan-${uid()}`;
    const wake = `wake-${p}/w`;
    const stream = `${p}/s`;
    const ids = Array.from({ length: 10 }, (_, i) => `pull-${p}-${i}`);
    const tailOf = async () => (await fetch(url(stream), { method: 'HEAD' })).headers.get('stream-next-offset') ?? '';
    // What each subscription was last told of the stream's tail.
    const told = () =>
      Promise.all(ids.map(async (id) => (await described(id)).streams.find((s) => s.path === stream)?.tail_offset as string));
    const eventually = async (check: (tails: string[]) => boolean, ms = 15_000) => {
      const deadline = Date.now() + ms;
      let tails = await told();
      while (!check(tails) && Date.now() < deadline) {
        await sleep(100);
        tails = await told();
      }
      return tails;
    };
    expect((await put(wake, '[]')).status).toBe(201);
    expect((await put(stream, '[]')).status).toBe(201);
    try {
      for (const id of ids) {
        expect((await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `${p}/*`, wake_stream: wake })).status).toBe(201);
      }
      expect((await post(stream, { n: 0 })).status).toBe(204);
      const first = await tailOf();
      expect(await eventually((tails) => tails.every((t) => t === first))).toEqual(ids.map(() => first));

      // Appends one after another while the passes run: each subscription still learns a tail
      // written after they began, however late in the order it is.
      let going = true;
      let appended = 0;
      // Several appenders at once, so appends come faster than a batch of calls is made.
      const appending = Promise.all(
        [1, 2, 3, 4].map(async () => {
          while (going) {
            expect((await post(stream, { n: ++appended })).status).toBe(204);
          }
        }),
      );
      try {
        await sleep(300);
        const mark = await tailOf();
        const tails = await eventually((tails) => tails.every((t) => t >= mark));
        expect(tails.filter((t) => t < mark), `told before ${mark}, while ${appended} appends went on`).toEqual([]);
      } finally {
        going = false;
        await appending;
      }
      // Once the appends stop, every one learns the last tail.
      const last = await tailOf();
      expect(await eventually((tails) => tails.every((t) => t === last))).toEqual(ids.map(() => last));

      const batch = (await fetch(url(stream), { method: 'HEAD' })).headers.get('x-edgestream-notify-batch');
      expect(Number(batch), 'the most subscriptions called at once').toBeGreaterThan(0);
      expect(Number(batch), 'the most subscriptions called at once').toBeLessThanOrEqual(4);
    } finally {
      for (const id of ids) await fetch(sub(id), { method: 'DELETE' });
    }
  });
});

describe('a registration finished while a notification is owed', () => {
  // A stream whose registration's answer was lost (the registry has it; the stream still owes
  // it) is linked by 4 subscriptions; its append's call to them fails, so that notification is
  // owed too. The PUT that finishes the registration told the 4 of the tail, then ran the owed
  // notification's batch: 8 subscriptions called in one invocation with LINKS_PER_CALL 4,
  // twice the bound. They share one budget per invocation (worker/src/object/subscribers.rs,
  // Budget); the rest stays owed, for the alarm.
  test('tells at most LINKS_PER_CALL subscriptions in that invocation, and all of them in the end', { timeout: 30_000 }, async () => {
    const p = `budget-${uid()}`;
    // FAULT_MARKER and `lost` in its path: its first registration fails before the call, its
    // second after it (worker/src/fault.rs); its first append's first call to a subscription
    // fails, and its first request to link a subscription is answered 503.
    const stream = `${p}/no-stream-is-named-this-lost`;
    const wake = `wake-${p}/w`;
    const ids = [1, 2, 3, 4].map((n) => `budget-${n}-${p}`);
    expect((await put(wake, '[]')).status).toBe(201);
    try {
      expect((await put(stream, '[]')).status).toBe(503);
      expect((await put(stream, '[]')).status, 'the registration’s answer was not lost').toBe(503);
      for (const id of ids) {
        const body = { type: 'pull-wake', streams: [stream], wake_stream: wake };
        let status = (await put(`__ds/subscriptions/${id}`, body)).status;
        if (status === 503) status = (await put(`__ds/subscriptions/${id}`, body)).status;
        expect(status, id).toBeLessThan(300);
      }
      expect((await post(stream, { n: 1 })).status).toBe(204);
      expect((await put(stream, '[]')).status).toBe(200);
      const batch = (await fetch(url(stream), { method: 'HEAD' })).headers.get('x-edgestream-notify-batch');
      expect(Number(batch), 'the most subscriptions called in one invocation').toBeLessThanOrEqual(4);
      const tail = await tailOf(stream);
      const told = await eventually(async () => {
        const tails = await Promise.all(ids.map(async (id) => (await linkOf(id, stream))?.tail_offset));
        return tails.every((t) => t === tail);
      });
      expect(told, 'a subscription never learned the tail').toBe(true);
    } finally {
      for (const id of ids) await fetch(sub(id), { method: 'DELETE' });
    }
  });
});

describe('statuses shared with the reference server', () => {
  test('a method a reserved route does not take is 405 with the Allow header RFC 9110 requires', async () => {
    const id = `allow-${uid()}`;
    for (const [path, method, allow] of [
      [`__ds/subscriptions/${id}`, 'POST', 'PUT, GET, DELETE, OPTIONS'],
      [`__ds/subscriptions/${id}/streams`, 'GET', 'POST, OPTIONS'],
      [`__ds/subscriptions/${id}/claim`, 'GET', 'POST, OPTIONS'],
      [`__ds/subscriptions/${id}/ack`, 'PUT', 'POST, OPTIONS'],
      ['__ds/jwks.json', 'POST', 'GET, HEAD, OPTIONS'],
    ]) {
      const res = await fetch(url(path), { method });
      expect(res.status, `${method} ${path}`).toBe(405);
      expect(res.headers.get('allow'), `${method} ${path}`).toBe(allow);
      expect(await res.text()).toBe('method not allowed\n');
    }
  });

  test('deleting a subscription is idempotent: 204 whether or not it exists', async () => {
    const id = `gone-${uid()}`;
    expect((await fetch(sub(id), { method: 'DELETE' })).status).toBe(204);
    expect((await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `p-${id}/*`, wake_stream: `w-${id}` })).status).toBe(201);
    expect((await fetch(sub(id), { method: 'DELETE' })).status).toBe(204);
    expect((await fetch(sub(id), { method: 'DELETE' })).status).toBe(204);
    expect((await fetch(sub(id))).status).toBe(404);
  });

  test('an ack past the stream’s tail is 409 INVALID_OFFSET, and changes nothing', async () => {
    const p = `ack-${uid()}`;
    const wake = `wake-${p}/w`;
    const stream = `${p}/a`;
    const id = `pull-${p}`;
    try {
      expect((await put(wake, '[]')).status).toBe(201);
      expect((await put(stream, '{"n":1}')).status).toBe(201);
      expect((await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `${p}/*`, wake_stream: wake })).status).toBe(201);
      expect((await post(stream, { n: 2 })).status).toBe(204);
      const claim = await post(`__ds/subscriptions/${id}/claim`, { worker: 'w' });
      expect(claim.status).toBe(200);
      const claimed = await claim.json();
      const link = claimed.streams.find((s: any) => s.path === stream);
      const beyond = String(link.tail_offset).replace(/_(\d+)$/, (_m: string, n: string) => `_${String(BigInt(n) + 1000n).padStart(n.length, '0')}`);
      expect(beyond).not.toBe(link.tail_offset);
      const ack = await post(
        `__ds/subscriptions/${id}/ack`,
        { wake_id: claimed.wake_id, generation: claimed.generation, acks: [{ stream, offset: beyond }] },
        { authorization: `Bearer ${claimed.token}` },
      );
      expect(ack.status).toBe(409);
      expect((await ack.json()).error.code).toBe('INVALID_OFFSET');
      expect((await linkOf(id, stream))?.acked_offset).toBe(link.acked_offset);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });

  test('an ack behind the cursor, or of a stream not covered, is 409 INVALID_OFFSET, and changes nothing', async () => {
    const p = `back-${uid()}`;
    const wake = `wake-${p}/w`;
    const stream = `${p}/a`;
    const id = `pull-${p}`;
    try {
      expect((await put(wake, '[]')).status).toBe(201);
      const start = (await put(stream, '{"n":1}')).headers.get('stream-next-offset')!;
      expect((await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `${p}/*`, wake_stream: wake })).status).toBe(201);
      expect((await post(stream, { n: 2 })).status).toBe(204);
      const claim = await post(`__ds/subscriptions/${id}/claim`, { worker: 'w' });
      expect(claim.status).toBe(200);
      const claimed = await claim.json();
      const tail = claimed.streams.find((s: any) => s.path === stream).tail_offset;
      const ack = (acks: unknown[]) =>
        post(`__ds/subscriptions/${id}/ack`, { wake_id: claimed.wake_id, generation: claimed.generation, acks }, { authorization: `Bearer ${claimed.token}` });
      // Acks of one stream in one request count in any order: the furthest wins.
      expect((await ack([{ stream, offset: tail }, { stream, offset: start }])).status).toBe(200);
      expect((await linkOf(id, stream))?.acked_offset).toBe(tail);
      // The same ack again is fine; one behind the cursor now is refused.
      expect((await ack([{ stream, offset: tail }])).status).toBe(200);
      const back = await ack([{ stream, offset: start }]);
      expect(back.status).toBe(409);
      expect((await back.json()).error.code).toBe('INVALID_OFFSET');
      const elsewhere = await ack([{ stream: `${p}-other/x`, offset: tail }]);
      expect(elsewhere.status).toBe(409);
      expect((await elsewhere.json()).error.code).toBe('INVALID_OFFSET');
      expect((await linkOf(id, stream))?.acked_offset).toBe(tail);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });
});

describe('status', () => {
  test('a pull-wake subscription whose wake event could not be written is active again once claimed', async () => {
    const p = `status-${uid()}`;
    const wake = `wake-${p}/w`;
    const stream = `${p}/a`;
    const id = `pull-${p}`;
    try {
      expect((await put(stream, '[]')).status).toBe(201);
      // No wake stream yet: writing the wake event fails, and is retried.
      expect((await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `${p}/*`, wake_stream: wake })).status).toBe(201);
      expect((await post(stream, { n: 1 })).status).toBe(204);
      let status = '';
      for (let i = 0; i < 100 && status !== 'failed'; i++) {
        await sleep(100);
        status = (await described(id)).status;
      }
      expect(status).toBe('failed');
      expect((await put(wake, '[]')).status).toBe(201);
      const claim = await post(`__ds/subscriptions/${id}/claim`, { worker: 'w' });
      expect(claim.status).toBe(200);
      expect((await described(id)).status).toBe('active');
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });

  test('a webhook that failed, then calls back before it answers, is active again', async () => {
    const p = `recover-${uid()}`;
    // The first attempt fails; the retry is handled as the README says: read, call back with
    // the acks and done, then answer. The callback ends the wake before the answer arrives.
    const callbacks: number[] = [];
    const hook = await hookServer(async (hit, res, n) => {
      if (n === 1) {
        res.writeHead(500);
        res.end('down');
        return;
      }
      const acks = hit.body.streams.map((s: any) => ({ stream: s.path, offset: s.tail_offset }));
      callbacks.push((await callBack(hit.body, acks, true)).status);
      res.writeHead(200, json);
      res.end('{}');
    });
    const id = `sub-${p}`;
    try {
      await webhookSubscription(id, p, hook.url);
      expect((await put(`${p}/s`, { x: 1 })).status).toBe(201);
      expect(await until(() => callbacks.length >= 1, 8_000), 'no retry after the failure').toBe(true);
      expect(callbacks[0]).toBe(200);
      expect(await eventually(async () => (await linkOf(id, `${p}/s`))?.has_pending === false)).toBe(true);
      // The delivery that was called back succeeded: nothing is failing any more.
      await sleep(300);
      expect((await described(id)).status).toBe('active');
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });
});

describe('a webhook that calls back and then answers', () => {
  test('with {"done":true} after a heartbeat, ends the wake at once', async () => {
    const p = `beat-${uid()}`;
    // A progress ack with "done": false, then the answer that acks the rest.
    const beats: number[] = [];
    const hook = await hookServer(async (hit, res) => {
      beats.push((await callBack(hit.body, [], false)).status);
      res.writeHead(200, json);
      res.end('{"done":true}');
    });
    const id = `sub-${p}`;
    try {
      // A lease far longer than the wait below: only the answer can end the wake in time.
      await webhookSubscription(id, p, hook.url, { leaseMs: 60_000 });
      expect((await put(`${p}/s`, { x: 1 })).status).toBe(201);
      expect(await until(() => beats.length >= 1, 5_000)).toBe(true);
      expect(beats[0]).toBe(200);
      expect(await eventually(async () => (await linkOf(id, `${p}/s`))?.has_pending === false, 3_000), 'the answer\'s done was ignored').toBe(true);
      expect(hook.hits).toHaveLength(1);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });
});

describe('a pull-wake subscription whose pattern covers its own wake stream', () => {
  test('does not cover it, so its wake events do not wake it again', async () => {
    const p = `self-${uid()}`;
    const wake = `${p}/wake`;
    const stream = `${p}/a`;
    const id = `pull-${p}`;
    try {
      expect((await put(wake, '[]')).status).toBe(201);
      expect((await put(stream, '[]')).status).toBe(201);
      expect((await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `${p}/**`, wake_stream: wake })).status).toBe(201);
      // Naming it is refused: a worker that does not ack its wake stream would be woken by
      // each wake event, for ever.
      const named = await put(`__ds/subscriptions/other-${id}`, { type: 'pull-wake', streams: [wake], wake_stream: wake });
      expect(named.status).toBe(400);
      expect((await post(`__ds/subscriptions/${id}/streams`, { streams: [wake] })).status).toBe(400);
      expect((await post(stream, { n: 1 })).status).toBe(204);
      // The wake event is written to the wake stream; the subscription does not hear of it.
      expect(await eventually(async () => (await fetch(url(`${wake}?offset=-1`)).then((r) => r.json())).length > 0)).toBe(true);
      const claim = await post(`__ds/subscriptions/${id}/claim`, { worker: 'w' });
      expect(claim.status).toBe(200);
      const claimed = await claim.json();
      expect(claimed.streams.map((s: any) => s.path)).toEqual([stream]);
      const tail = claimed.streams[0].tail_offset;
      const ack = await post(
        `__ds/subscriptions/${id}/ack`,
        { wake_id: claimed.wake_id, generation: claimed.generation, acks: [{ stream, offset: tail }], done: true },
        { authorization: `Bearer ${claimed.token}` },
      );
      expect(await ack.json()).toEqual({ ok: true, next_wake: false });
      await sleep(300);
      expect((await described(id)).streams.map((s) => s.path)).toEqual([stream]);
      expect((await post(`__ds/subscriptions/${id}/claim`, { worker: 'w' })).status).toBe(409);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });
});

describe('configuration', () => {
  test('a body with a field of the wrong type is 400 naming the field', async () => {
    const res = await put(`__ds/subscriptions/bad-${uid()}`, { type: 'pull-wake', pattern: 'x/*', wake_stream: 'w', lease_ttl_ms: 1.5 });
    expect(res.status).toBe(400);
    expect(await res.text()).toContain('lease_ttl_ms must be a whole number of milliseconds');
  });

  test('a pattern no stream path can match, or a removal naming no valid path, is 400 rather than a silent no-op', async () => {
    for (const pattern of ['__ds/**', '../*', 'a/./b']) {
      const res = await put(`__ds/subscriptions/never-${uid()}`, { type: 'pull-wake', pattern, wake_stream: 'w' });
      expect(res.status, pattern).toBe(400);
    }
    const id = `remove-${uid()}`;
    try {
      expect((await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `rm-${id}/*`, wake_stream: `wake-${id}` })).status).toBe(201);
      for (const encoded of ['', 'a%2F..%2Fb', '__ds%2Fx']) {
        const res = await fetch(sub(id, `/streams/${encoded}`), { method: 'DELETE' });
        expect(res.status, encoded).toBe(400);
      }
      expect((await fetch(sub(id, `/streams/${encodeURIComponent(`rm-${id}/a`)}`), { method: 'DELETE' })).status).toBe(204);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });

  test('an ack without a token is 401 whatever wake it names, so a caller without one learns nothing', async () => {
    const p = `tokenless-${uid()}`;
    const wake = `wake-${p}/w`;
    const id = `pull-${p}`;
    try {
      expect((await put(wake, '[]')).status).toBe(201);
      expect((await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `${p}/*`, wake_stream: wake, lease_ttl_ms: 5_000 })).status).toBe(201);
      expect((await put(`${p}/a`, '{"x":1}')).status).toBe(201);
      let claimed: any;
      for (const deadline = Date.now() + 5_000; !claimed && Date.now() < deadline; await new Promise((r) => setTimeout(r, 100))) {
        const claim = await post(`__ds/subscriptions/${id}/claim`, { worker: 'w' });
        if (claim.status === 200) claimed = await claim.json();
        else await claim.body?.cancel();
      }
      expect(claimed).toBeDefined();
      for (const [wakeId, generation] of [[claimed.wake_id, claimed.generation], ['w_guess', claimed.generation], [claimed.wake_id, claimed.generation + 7]]) {
        const res = await post(`__ds/subscriptions/${id}/ack`, { wake_id: wakeId, generation, acks: [] });
        expect(res.status, `${wakeId} ${generation}`).toBe(401);
      }
      // With its token, a stale generation is fenced, as the protocol says.
      const stale = await post(
        `__ds/subscriptions/${id}/ack`,
        { wake_id: claimed.wake_id, generation: claimed.generation + 7, acks: [] },
        { authorization: `Bearer ${claimed.token}` },
      );
      expect(stale.status).toBe(409);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });

  test('of two PUTs racing to create one id with different configurations, one gets 409', async () => {
    for (let round = 0; round < 5; round++) {
      const id = `race-${uid()}`;
      const create = (n: string) =>
        put(`__ds/subscriptions/${id}`, { type: 'webhook', pattern: `race/${n}/*`, webhook: { url: `http://127.0.0.1:9/${n}` } });
      try {
        const [a, b] = await Promise.all([create('A'), create('B')]);
        expect([a.status, b.status].sort(), `round ${round}`).toEqual([201, 409]);
        const loser = a.status === 409 ? a : b;
        expect((await loser.json()).error.code).toBe('SUBSCRIPTION_ALREADY_EXISTS');
        const winner = a.status === 201 ? 'A' : 'B';
        expect((await described(id)).pattern).toBe(`race/${winner}/*`);
      } finally {
        await fetch(sub(id), { method: 'DELETE' });
      }
    }
  });

  test('a request naming more than 1000 streams is refused', async () => {
    const id = `many-${uid()}`;
    const paths = Array.from({ length: 1_001 }, (_, i) => `many/${i}`);
    const refused = await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', streams: paths, wake_stream: 'many/wake' });
    expect(refused.status).toBe(400);
    expect((await refused.json()).error.code).toBe('INVALID_REQUEST');
    expect((await fetch(sub(id))).status).toBe(404);
    try {
      expect((await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', streams: paths.slice(0, 1), wake_stream: 'many/wake' })).status).toBe(201);
      const add = await post(`__ds/subscriptions/${id}/streams`, { streams: paths });
      expect(add.status).toBe(400);
      expect((await add.json()).error.message).toMatch(/1000 streams/);
      expect((await described(id)).streams).toHaveLength(1);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });

  test('a subscription over thousands of long stream paths keeps working, up to its bound', { timeout: 120_000 }, async () => {
    const p = `big-${uid()}`;
    const wake = `wake-${p}/w`;
    const id = `pull-${p}`;
    // 1000 paths of about 1000 bytes a request: 3 MB of paths in all, past SQLite's 2 MB row.
    const long = (round: number, i: number) => `${p}/${round}-${i}-${'y'.repeat(980)}`;
    try {
      expect((await put(wake, '[]')).status).toBe(201);
      expect((await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `${p}/live/*`, wake_stream: wake })).status).toBe(201);
      for (let round = 0; round < 3; round++) {
        const streams = Array.from({ length: 1_000 }, (_, i) => long(round, i));
        const add = await post(`__ds/subscriptions/${id}/streams`, { streams });
        expect(add.status, `round ${round}: ${await add.text()}`).toBe(204);
      }
      // A wake over all of them is taken, claimed and acked.
      expect((await put(`${p}/live/x`, '{"a":1}')).status).toBe(201);
      const claim = await post(`__ds/subscriptions/${id}/claim`, { worker: 'w' });
      expect(claim.status).toBe(200);
      const claimed = await claim.json();
      // The wake lists the one stream with news, not the 3000 quiet ones.
      expect(claimed.streams.map((s: any) => s.path)).toEqual([`${p}/live/x`]);
      const x = claimed.streams.find((s: any) => s.path === `${p}/live/x`);
      const ack = await post(
        `__ds/subscriptions/${id}/ack`,
        { wake_id: claimed.wake_id, generation: claimed.generation, acks: [{ stream: x.path, offset: x.tail_offset }], done: true },
        { authorization: `Bearer ${claimed.token}` },
      );
      expect(ack.status).toBe(200);

      // Up to 10000 explicit streams; one more is refused, and nothing of that request is kept.
      for (let round = 0; round < 7; round++) {
        const streams = Array.from({ length: 1_000 }, (_, i) => `${p}/short/${round}/${i}`);
        expect((await post(`__ds/subscriptions/${id}/streams`, { streams })).status).toBe(204);
      }
      const over = await post(`__ds/subscriptions/${id}/streams`, { streams: [`${p}/one-more`, `${p}/short/0/0`] });
      expect(over.status).toBe(400);
      expect((await over.json()).error.message).toMatch(/10000 explicit streams/);
      // Streams already named may be named again.
      expect((await post(`__ds/subscriptions/${id}/streams`, { streams: [`${p}/short/0/0`] })).status).toBe(204);
      const state = await described(id);
      expect(state.streams.filter((s) => s.link_type === 'explicit')).toHaveLength(10_000);
      expect(state.streams.some((s) => s.path === `${p}/one-more`)).toBe(false);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });
});

// A wake listed every stream the subscription covers, with or without news: a webhook body of
// about 1.5 MB for a subscription over 10,000 streams, at each wake. It lists only those with
// data past their cursor, at most MAX_WAKE_STREAMS (src/subscription.rs) per wake, the next
// wake going on from where the last list ended. A subscription whose id holds FAULT_MARKER and
// `paged` lists 2 per wake, and reads its pattern's streams from the registry 2 at a time
// (worker/src/fault.rs, TEST_PAGE).
const PAGED = 'paged-no-stream-is-named-this';

describe('a wake lists only the streams with news', () => {
  test('a webhook body names the one stream appended to, not the quiet ones', async () => {
    const p = `news-${uid()}`;
    const hook = await hookServer((_, res) => {
      res.writeHead(200, json);
      res.end('{"done":true}');
    });
    const id = `sub-${p}`;
    try {
      for (const name of ['a', 'b', 'c']) expect((await put(`${p}/${name}`, { name })).status).toBe(201);
      await webhookSubscription(id, p, hook.url);
      expect((await described(id)).streams).toHaveLength(3);
      expect((await post(`${p}/b`, { more: true })).status).toBe(204);
      expect(await until(() => hook.hits.length >= 1), 'no wake').toBe(true);
      const streams = hook.hits[0].body.streams;
      expect(streams.map((s: any) => s.path)).toEqual([`${p}/b`]);
      expect(streams[0].has_pending).toBe(true);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });

  test('more streams with news than a wake lists are listed by the wakes that follow, each once', async () => {
    const p = `pages-${uid()}`;
    const wake = `wake-${p}/w`;
    const id = `${PAGED}-${p}`;
    const names = ['a', 'b', 'c', 'd', 'e'].map((n) => `${p}/${n}`);
    try {
      expect((await put(wake, '[]')).status).toBe(201);
      for (const name of names) expect((await put(name, { name })).status).toBe(201);
      const created = await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `${p}/*`, wake_stream: wake });
      expect(created.status).toBe(201);
      // The pattern's 5 streams were read from the registry 2 at a time, and all linked.
      expect(Number(created.headers.get('x-edgestream-registry-page'))).toBe(2);
      expect((await described(id)).streams.map((s) => s.path).sort()).toEqual(names);
      for (const name of names) expect((await post(name, { more: true })).status).toBe(204);
      const listed: string[] = [];
      for (let round = 0; round < 3; round++) {
        const claim = await post(`__ds/subscriptions/${id}/claim`, { worker: 'w' });
        expect(claim.status, `round ${round}`).toBe(200);
        const claimed = await claim.json();
        expect(claimed.streams.length, `round ${round}`).toBeLessThanOrEqual(2);
        expect(claimed.streams.every((s: any) => s.has_pending)).toBe(true);
        listed.push(...claimed.streams.map((s: any) => s.path));
        const acks = claimed.streams.map((s: any) => ({ stream: s.path, offset: s.tail_offset }));
        const ack = await post(
          `__ds/subscriptions/${id}/ack`,
          { wake_id: claimed.wake_id, generation: claimed.generation, acks, done: true },
          { authorization: `Bearer ${claimed.token}` },
        );
        expect(ack.status).toBe(200);
        expect((await ack.json()).next_wake, `round ${round}`).toBe(round < 2);
      }
      expect(listed.sort()).toEqual(names);
      // Each wake event named a stream its wake lists.
      const events = (await (await fetch(url(wake))).json()).filter((e: any) => e.subscription_id === id);
      expect(events.length).toBeGreaterThan(0);
      const byGeneration = new Map<number, number>();
      for (const e of events) byGeneration.set(e.generation, (byGeneration.get(e.generation) ?? 0) + 1);
      expect(Math.max(...byGeneration.values())).toBeLessThanOrEqual(2);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });

  test('a wake not yet delivered whose listed streams were all deleted lists the others with news', { timeout: 30_000 }, async () => {
    const p = `relist-${uid()}`;
    let failing = true;
    const hook = await hookServer((_, res) => {
      res.writeHead(failing ? 500 : 200, json);
      res.end('{}');
    });
    const id = `${PAGED}-${p}`;
    try {
      for (const name of ['a', 'b']) expect((await put(`${p}/${name}`, { name })).status).toBe(201);
      await webhookSubscription(id, p, hook.url);
      // The first append makes the wake, which lists a alone; its delivery fails.
      expect((await post(`${p}/a`, { more: true })).status).toBe(204);
      expect(await until(() => hook.hits.length >= 1), 'no delivery').toBe(true);
      expect(hook.hits[0].body.streams.map((s: any) => s.path)).toEqual([`${p}/a`]);
      expect((await post(`${p}/b`, { more: true })).status).toBe(204);
      expect((await fetch(url(`${p}/a`), { method: 'DELETE' })).status).toBe(204);
      failing = false;
      const seen = hook.hits.length;
      expect(await until(() => hook.hits.length > seen, 10_000), 'no delivery after the recovery').toBe(true);
      expect(hook.hits[seen].body.streams.map((s: any) => s.path)).toEqual([`${p}/b`]);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });

  test('streams created while a pattern’s pages are read are all linked, their data pending', { timeout: 60_000 }, async () => {
    const p = `racing-${uid()}`;
    const wake = `wake-${p}/w`;
    const id = `${PAGED}-${p}`;
    const before = Array.from({ length: 8 }, (_, i) => `${p}/before-${i}`);
    const during = Array.from({ length: 8 }, (_, i) => `${p}/${i % 2 ? 'a' : 'z'}-during-${i}`);
    try {
      expect((await put(wake, '[]')).status).toBe(201);
      for (const name of before) expect((await put(name, { name })).status).toBe(201);
      const [created, ...made] = await Promise.all([
        put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `${p}/*`, wake_stream: wake }),
        ...during.map((name) => put(name, { name })),
      ]);
      expect(created.status).toBe(201);
      for (const res of made) expect(res.status).toBe(201);
      for (const name of [...before, ...during]) expect((await post(name, { more: true })).status).toBe(204);
      const all = [...before, ...during].sort();
      const seen = await eventually(async () => {
        const streams = (await described(id)).streams;
        return all.every((name) => streams.some((s) => s.path === name && s.has_pending));
      });
      expect(seen, 'a stream created during the paging was not linked').toBe(true);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });
});

// A pattern may link millions of streams (linking goes on in pages, by alarm): a GET that
// listed them all would pass a Worker's memory and CPU limits. It lists a page of them, in path
// order, `limit` at most (default and most: 1000, STREAMS_PAGE_MAX in src/subscription.rs), and
// the next page starts after the last path listed (`streams_after`).
describe("a subscription's streams, a page at a time", () => {
  test('paging through lists every stream once, in path order; streams linked meanwhile after the cursor are listed too', async () => {
    const p = `pages-${uid()}`;
    const wake = `wake-${p}`;
    const id = `pull-${p}`;
    // Byte order, not locale order: upper case before lower case, '-' before '.' before digits.
    const globbed = ['B', 'a', 'a-1', 'a.1', 'a0', 'b', 'c'].map((n) => `${p}/${n}`);
    const named = [`${p}/a/x`, `${p}/n/1`, `${p}/n/2`];
    const sorted = [...globbed, ...named].sort();
    try {
      expect((await put(wake, '[]')).status).toBe(201);
      for (const name of globbed) expect((await put(name, '[]')).status).toBe(201);
      expect((await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `${p}/*`, streams: named, wake_stream: wake })).status).toBe(201);

      const seen: string[] = [];
      let page = await streamsPage(id, { limit: 3 });
      let pages = 1;
      for (;;) {
        const paths = page.streams.map((s) => s.path);
        expect(paths.length).toBeLessThanOrEqual(3);
        seen.push(...paths);
        if (!page.streams_has_more) {
          expect(page.streams_next).toBeNull();
          break;
        }
        expect(paths).toHaveLength(3);
        expect(page.streams_next).toBe(paths[2]);
        if (pages === 1) {
          // Linked between two pages: one before the cursor (not listed in this pass) and one
          // after it (listed once). Those linked throughout stay exactly where they were.
          expect((await put(`${p}/0-before`, '[]')).status).toBe(201);
          expect((await put(`${p}/zz-after`, '[]')).status).toBe(201);
        }
        page = await streamsPage(id, { limit: 3, after: page.streams_next! });
        pages += 1;
        expect(pages).toBeLessThan(10);
      }
      const expected = [...sorted, `${p}/zz-after`];
      expect(seen).toEqual(expected);
      expect(pages).toBe(4);
      // Unpaged, the same list with the stream linked before the cursor: the whole list fits
      // in the default page.
      const whole = await streamsPage(id);
      expect(whole.streams.map((s) => s.path)).toEqual([...expected, `${p}/0-before`].sort());
      expect(whole.streams_has_more).toBe(false);
      expect(whole.streams_next).toBeNull();
      // A page of exactly the streams left says no more follow; a cursor at or past the last
      // stream answers an empty page; a cursor need not be a linked path.
      const last = await streamsPage(id, { limit: 2, after: `${p}/c` });
      expect(last.streams.map((s) => s.path)).toEqual([`${p}/n/1`, `${p}/n/2`]);
      expect(last).toMatchObject({ streams_has_more: true, streams_next: `${p}/n/2` });
      const end = await streamsPage(id, { limit: 2, after: `${p}/n/2` });
      expect(end.streams.map((s) => s.path)).toEqual([`${p}/zz-after`]);
      expect(end).toMatchObject({ streams_has_more: false, streams_next: null });
      expect(await streamsPage(id, { after: `${p}/zz-after` })).toMatchObject({ streams: [], streams_has_more: false, streams_next: null });
      expect((await streamsPage(id, { limit: 1, after: `${p}/a.` })).streams.map((s) => s.path)).toEqual([`${p}/a.1`]);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });

  test('a GET, and the PUT that creates it, list at most 1000 streams unless asked for fewer', async () => {
    const p = `bigpage-${uid()}`;
    const id = `pull-${p}`;
    const names = Array.from({ length: 1001 }, (_, i) => `${p}/n${String(i).padStart(4, '0')}`);
    const body = { type: 'pull-wake', streams: names.slice(0, 1000), wake_stream: `wake-${p}` };
    try {
      const created = await put(`__ds/subscriptions/${id}`, body);
      expect(created.status).toBe(201);
      expect(await created.json()).toMatchObject({ streams_has_more: false, streams_next: null });
      expect((await post(`__ds/subscriptions/${id}/streams`, { streams: [names[1000]] })).status).toBe(204);
      const first = await streamsPage(id);
      expect(first.streams.map((s) => s.path)).toEqual(names.slice(0, 1000));
      expect(first).toMatchObject({ streams_has_more: true, streams_next: names[999] });
      const second = await streamsPage(id, { after: first.streams_next! });
      expect(second.streams.map((s) => s.path)).toEqual([names[1000]]);
      expect(second).toMatchObject({ streams_has_more: false, streams_next: null });
      // The PUT's answer (here a repeated one, 200) is the first page.
      const again = await put(`__ds/subscriptions/${id}`, body);
      expect(again.status).toBe(200);
      const confirmed = await again.json();
      expect(confirmed.streams).toHaveLength(1000);
      expect(confirmed).toMatchObject({ streams_has_more: true, streams_next: names[999] });
      expect((await streamsPage(id, { limit: 1000 })).streams).toHaveLength(1000);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });

  test('a bad limit or cursor is 400 INVALID_REQUEST saying which; other parameters are let be', async () => {
    const id = `badpage-${uid()}`;
    try {
      expect((await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', streams: [`${id}/a`, `${id}/b`], wake_stream: `wake-${id}` })).status).toBe(201);
      const refusals: [string, RegExp][] = [
        ['limit=0', /limit must be a whole number from 1 to 1000/],
        ['limit=1001', /limit must be a whole number from 1 to 1000/],
        ['limit=', /limit must be a whole number from 1 to 1000/],
        ['limit=-1', /limit must be a whole number from 1 to 1000/],
        ['limit=%2B5', /limit must be a whole number from 1 to 1000/],
        ['limit=2.5', /limit must be a whole number from 1 to 1000/],
        ['limit=ten', /limit must be a whole number from 1 to 1000/],
        ['limit=99999999999999999999999', /limit must be a whole number from 1 to 1000/],
        ['limit=1&limit=2', /limit may be given once/],
        ['streams_after=', /streams_after must be a stream path/],
        ['streams_after=a%2F%2Fb', /streams_after must be a stream path/],
        ['streams_after=__ds%2Fx', /streams_after must be a stream path/],
        ['streams_after=a%2F..%2Fb', /streams_after must be a stream path/],
        ['streams_after=a%07b', /streams_after must be a stream path/],
        [`streams_after=${'x'.repeat(1025)}`, /streams_after must be a stream path/],
        ['streams_after=a&streams_after=b', /streams_after may be given once/],
      ];
      for (const [query, why] of refusals) {
        const res = await fetch(`${sub(id)}?${query}`);
        expect(res.status, query).toBe(400);
        const error = (await res.json()).error;
        expect(error.code, query).toBe('INVALID_REQUEST');
        expect(error.message, query).toMatch(why);
      }
      // Refused whether or not the subscription exists: the edge checks before asking it.
      expect((await fetch(`${sub(`none-${id}`)}?limit=0`)).status).toBe(400);
      expect((await fetch(`${sub(`none-${id}`)}?limit=1`)).status).toBe(404);
      const ok = await fetch(`${sub(id)}?limit=1&unknown=1`);
      expect(ok.status).toBe(200);
      expect(await ok.json()).toMatchObject({ streams: [{ path: `${id}/a` }], streams_has_more: true, streams_next: `${id}/a` });
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });
});

describe('a webhook subscription described', () => {
  // The description names the key its webhooks are signed with. A subscription object that had
  // not fetched the key since it started (after a restart, or an eviction) left it out.
  test('names its signing key, also from an object started afresh', async () => {
    const id = `signing-${Date.now()}`;
    const hook = await receiver();
    try {
      const created = await put(`__ds/subscriptions/${id}`, { type: 'webhook', pattern: `${id}/*`, webhook: { url: hook.url } });
      expect(created.status).toBe(201);
      const signing = (await created.json()).webhook.signing;
      const jwks = await (await fetch(url('__ds/jwks.json'))).json();
      expect(signing).toEqual({ alg: 'ed25519', kid: jwks.keys[0].kid, jwks_url: url('__ds/jwks.json') });
      await server.restart();
      const described = await fetch(url(`__ds/subscriptions/${id}`));
      expect(described.status).toBe(200);
      expect((await described.json()).webhook.signing).toEqual(signing);
    } finally {
      await fetch(url(`__ds/subscriptions/${id}`), { method: 'DELETE' });
      await hook.close();
    }
  }, 60_000);
});

describe('wake tokens (PROTOCOL §7.3: the token is checked first, then the wake it names)', () => {
  // A token the subscription never issued was fenced (409) when it named an old wake, though
  // refused (401) naming the current one; an earlier holder's token naming the current wake was
  // refused (401) instead of fenced; and no token at all was 404 for a subscription not there.
  test('a token the subscription never issued is 401 whatever wake it names; its earlier ones are FENCED', async () => {
    const p = `tokens-${uid()}`;
    const wake = `wake-${p}/w`;
    const stream = `${p}/a`;
    const id = `pull-${p}`;
    const ack = (w: { wake_id: string; generation: number }, token?: string) =>
      post(`__ds/subscriptions/${id}/ack`, { wake_id: w.wake_id, generation: w.generation, acks: [] }, token ? { authorization: `Bearer ${token}` } : {});
    const answer = async (res: Response) => [res.status, res.status === 200 ? 'ok' : (await res.json()).error?.code];
    try {
      expect((await put(wake, '[]')).status).toBe(201);
      expect((await put(`__ds/subscriptions/${id}`, { type: 'pull-wake', pattern: `${p}/*`, wake_stream: wake })).status).toBe(201);
      expect((await put(stream, '{"a":1}')).status).toBe(201);
      const claimFirst = await post(`__ds/subscriptions/${id}/claim`, { worker: 'w1' });
      expect(claimFirst.status).toBe(200);
      const first = await claimFirst.json();
      expect(await answer(await ack(first, 'not-a-token'))).toEqual([401, 'TOKEN_INVALID']);
      expect(await answer(await ack({ ...first, generation: first.generation - 1 }, 'not-a-token'))).toEqual([401, 'TOKEN_INVALID']);
      expect(await answer(await ack(first, first.token))).toEqual([200, 'ok']);
      // Given up with work pending: a new wake, which another worker claims.
      const released = await post(`__ds/subscriptions/${id}/release`, { wake_id: first.wake_id, generation: first.generation }, { authorization: `Bearer ${first.token}` });
      expect(released.status).toBe(204);
      expect(await answer(await ack(first, first.token))).toEqual([409, 'FENCED']);
      const claimSecond = await post(`__ds/subscriptions/${id}/claim`, { worker: 'w2' });
      expect(claimSecond.status).toBe(200);
      const second = await claimSecond.json();
      expect(second.generation).toBeGreaterThan(first.generation);
      expect(await answer(await ack(second, first.token))).toEqual([409, 'FENCED']);
      expect(await answer(await ack(second, 'not-a-token'))).toEqual([401, 'TOKEN_INVALID']);
      expect(await answer(await ack(second, second.token))).toEqual([200, 'ok']);
      // No token: refused before the subscription is looked up.
      const missing = await post(`__ds/subscriptions/missing-${p}/ack`, { wake_id: 'w', generation: 1, acks: [] });
      expect(await answer(missing)).toEqual([401, 'TOKEN_INVALID']);
      expect(await answer(await ack(second))).toEqual([401, 'TOKEN_INVALID']);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });
});

// What a stream owes other objects after a commit, when the calls fail. A stream tells the
// registry when it is created (which links the channels and subscription patterns above it) and
// when it is removed, tells its subscriptions each new tail, feeds its channels, and, as a fork,
// gives back its reference on its source. Each of these is owed work, written in the turn that
// makes it owed, with the alarm set in that turn (worker/src/object/owed.rs, subscribers.rs,
// channel.rs, fork.rs). The server runs with FAULT_MARKER, so a stream whose path contains the
// marker fails its first call of each kind in an isolate, as it would if the registry, a
// subscription or a channel were unreachable, loses the answers to its first calls to take and
// give back a fork's reference, and answers the first request to link it (for a new channel or
// subscription) with 503 (worker/src/fault.rs). A new subscription that cannot link every
// stream it covers is finished the same way (worker/src/subscription/object.rs,
// `finish_links`).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';
import { WebSocket } from 'undici';
import { mintToken } from '../scripts/token.mjs';
import { receiver } from './support/webhook';

const MARKER = 'faulty';

let server: Awaited<ReturnType<typeof startServer>>;

beforeAll(async () => {
  server = await startServer({ vars: { FAULT_MARKER: MARKER, WEBHOOK_ALLOW_LOCALHOST: 'true' } });
});

afterAll(async () => {
  await server?.stop();
});

const url = (path: string) => `${server.baseUrl}/v1/stream/${path}`;
let counter = 0;
const unique = (label: string) => `owed-${label}-${process.pid}-${Date.now()}-${counter++}`;
const json = { 'content-type': 'application/json' };
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function request(method: string, path: string, headers: Record<string, string> = {}, body?: string) {
  const res = await fetch(url(path), { method, headers, body });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

/** Every message of a JSON stream from -1, following pages to the tail; for a channel, all but
 * its `created` and `deleted` events. */
async function readAll(path: string): Promise<any[]> {
  return (await readRaw(path)).filter((e) => e?.event !== 'created' && e?.event !== 'deleted');
}

async function readRaw(path: string): Promise<any[]> {
  let offset = '-1';
  const out: any[] = [];
  for (;;) {
    const res = await request('GET', `${path}?offset=${encodeURIComponent(offset)}`);
    expect(res.status).toBe(200);
    out.push(...JSON.parse(res.text));
    offset = res.headers.get('stream-next-offset')!;
    if (res.headers.get('stream-up-to-date') === 'true') return out;
  }
}

/** A new channel, named after `label`. */
async function newChannel(label: string) {
  const channel = unique(label);
  expect((await request('PUT', channel, { 'stream-channel': 'true' })).status).toBe(201);
  return channel;
}

/** What a channel holds of one source: each event's name, or the message (its data, or for a
 * byte stream its text). */
async function sourceEvents(channel: string, source: string, field: 'data' | 'text' = 'data') {
  return (await readRaw(channel)).filter((e) => e.stream === source).map((e) => e.event ?? e[field]);
}

/** Polls `check` until it holds or `ms` pass; whether it held. */
async function until(check: () => Promise<boolean> | boolean, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await sleep(100);
  }
}

type Hook = Awaited<ReturnType<typeof receiver>>;

/** Runs `body` with a webhook receiver and the id `sub-<prefix>`; deletes both after. */
async function withHook(prefix: string, body: (hook: Hook, id: string) => Promise<void>) {
  const hook = await receiver();
  const id = `sub-${prefix}`;
  try {
    await body(hook, id);
  } finally {
    await request('DELETE', `__ds/subscriptions/${id}`);
    await hook.close();
  }
}

const subscribeOnce = (id: string, pattern: string, hookUrl: string) =>
  request(
    'PUT',
    `__ds/subscriptions/${id}`,
    json,
    JSON.stringify({ type: 'webhook', pattern, webhook: { url: hookUrl }, lease_ttl_ms: 1_000 }),
  );

/** A subscription made before any stream it covers exists. */
async function subscribe(id: string, pattern: string, hookUrl: string) {
  expect((await subscribeOnce(id, pattern, hookUrl)).status).toBe(201);
}

async function linkedStreams(id: string): Promise<string[]> {
  const res = await request('GET', `__ds/subscriptions/${id}`);
  expect(res.status).toBe(200);
  return JSON.parse(res.text).streams.map((s: { path: string }) => s.path);
}

/** Creates a stream whose first registration is made to fail: 503, then 200 on the retry. */
async function createThroughFault(path: string) {
  const first = await request('PUT', path, json);
  expect(first.status).toBe(503);
  expect(first.headers.get('retry-after')).toBe('1');
  expect(first.text).toMatch(/retry the PUT/);
  const retried = await request('PUT', path, json);
  expect(retried.status).toBe(200);
}

describe('a create whose registration fails', () => {
  it('answers 503 with Retry-After; the retried PUT links it, and its channel gets what was appended meanwhile', async () => {
    const channel = await newChannel('chan');
    const source = `${channel}/${MARKER}-a`;
    const first = await request('PUT', source, json);
    expect(first.status).toBe(503);
    expect(first.headers.get('retry-after')).toBe('1');
    // The stream is stored: it takes appends before it is linked.
    expect((await request('POST', source, json, '{"n":1}')).status).toBe(204);
    expect((await request('PUT', source, json)).status).toBe(200);
    expect((await request('POST', source, json, '{"n":2}')).status).toBe(204);
    // Linked from its start: the append made before the retry reaches the channel too.
    expect(await until(async () => (await readAll(channel)).length >= 2)).toBe(true);
    const envelopes = await readAll(channel);
    expect(envelopes.map((e) => e.data)).toEqual([{ n: 1 }, { n: 2 }]);
    expect(envelopes.every((e) => e.stream === source)).toBe(true);
  });

  it('refuses (413), before it is linked, an append that would be too large in a channel it will be linked to from its start', async () => {
    const channel = await newChannel('chan-big');
    const source = `${channel}/${MARKER}-big`;
    expect((await request('PUT', source, json)).status).toBe(503);
    // 250,000 tiny messages: 500 KB here, far over MAX_APPEND_BYTES (16 MiB) as envelopes that
    // each name the stream. The stream cannot know its channels yet; the channel will read it
    // from its start, so the append is refused whole.
    const big = `[${Array(250_000).fill('1').join(',')}]`;
    const refused = await request('POST', source, json, big);
    expect(refused.status).toBe(413);
    expect(refused.text).toMatch(/channel/);
    expect((await request('POST', source, json, '{"n":1}')).status).toBe(204);
    expect((await request('PUT', source, json)).status).toBe(200);
    expect(await until(async () => (await readAll(channel)).length >= 1)).toBe(true);
    await sleep(300);
    expect((await readAll(channel)).map((e) => e.data)).toEqual([{ n: 1 }]);
    expect(await readAll(source)).toEqual([{ n: 1 }]);
  }, 30_000);

  it('links a channel created before it is linked after an initial body too large for that channel, never copying it', async () => {
    // The channels-above race: the create asked the registry whether a channel is above its
    // path (none), stored its body, and failed to register; a channel is created above it
    // before the retry, which learns of it. 250,000 tiny messages would be about 25 MB of
    // envelopes in the channel, over MAX_APPEND_BYTES (16 MiB).
    const channel = unique('race');
    const source = `${channel}/${MARKER}-initial`;
    const big = `[${Array(250_000).fill('1').join(',')}]`;
    expect((await request('PUT', source, json, big)).status).toBe(503);
    expect((await request('PUT', channel, { 'stream-channel': 'true' })).status).toBe(201);
    expect((await request('POST', source, json, '{"n":1}')).status).toBe(204);
    expect((await request('PUT', source, json)).status).toBe(200);
    // The channel is fed from the end of the initial body, as if the stream had existed
    // before it: what was appended after, not the body and no created event. (Its size is
    // looked at first: a copy of the body would be too large to read here in one piece.)
    const size = async () => Number((await request('HEAD', channel)).headers.get('stream-next-offset')!.split('_')[1]);
    expect(await until(async () => (await size()) > 0)).toBe(true);
    await sleep(300);
    expect(await size()).toBeLessThan(1024);
    expect(await sourceEvents(channel, source)).toEqual([{ n: 1 }]);
    // The stream itself holds the body and the append.
    expect(JSON.parse((await request('GET', `${source}?offset=-1`)).text).length).toBe(250_001);
  }, 60_000);

  it('is linked by the alarm when nobody retries it', async () => {
    const channel = await newChannel('alarm');
    const source = `${channel}/${MARKER}-b`;
    expect((await request('PUT', source, json)).status).toBe(503);
    expect((await request('POST', source, json, '{"n":1}')).status).toBe(204);
    expect(await until(async () => (await readAll(channel)).length >= 1)).toBe(true);
    expect((await readAll(channel)).map((e) => e.data)).toEqual([{ n: 1 }]);
    // Once linked, a later append is delivered before it is acknowledged.
    expect((await request('POST', source, json, '{"n":2}')).status).toBe(204);
    expect((await readAll(channel)).map((e) => e.data)).toEqual([{ n: 1 }, { n: 2 }]);
  });

  it('is linked by the alarm after a hard restart', async () => {
    const channel = await newChannel('restart');
    const source = `${channel}/${MARKER}-c`;
    expect((await request('PUT', source, json)).status).toBe(503);
    expect((await request('POST', source, json, '{"n":1}')).status).toBe(204);
    // workerd dies before the alarm fires. The alarm was stored with the stream, and in the
    // new isolate the first registration fails again before one succeeds.
    await server.restart({ hard: true });
    expect(await until(async () => (await readAll(channel)).length >= 1, 15_000)).toBe(true);
    expect((await readAll(channel)).map((e) => e.data)).toEqual([{ n: 1 }]);
  });

  it('is found by a subscription pattern once linked', async () => {
    const prefix = unique(`${MARKER}-sub`);
    await withHook(prefix, async (hook, id) => {
      await subscribe(id, `${prefix}/*`, hook.url);
      await createThroughFault(`${prefix}/s`);
      // Its first notification fails too: the subscription links it when the retry reaches it.
      expect(await until(async () => (await linkedStreams(id)).includes(`${prefix}/s`))).toBe(true);
    });
  });
});

describe('a source that restarts between the batches it stores its channel\'s position for', () => {
  // A source stores where its channel stands once every 16 batches (worker/src/object/channel.rs),
  // so after a hard restart it goes on from a position the channel has passed, and a DELETE then
  // keeps, for the channel, rows it already has. The channel's mark admits none of them twice.
  it('feeds the channel each message once, and its deleted event after them', async () => {
    const channel = await newChannel('fwd-restart');
    const source = `${channel}/s`;
    const messages = [0, 1, 2, 3, 4].map((n) => ({ n }));
    expect((await request('PUT', source, json)).status).toBe(201);
    for (const m of messages.slice(0, 3)) expect((await request('POST', source, json, JSON.stringify(m))).status).toBe(204);
    await server.restart({ hard: true });
    for (const m of messages.slice(3)) expect((await request('POST', source, json, JSON.stringify(m))).status).toBe(204);
    expect(await sourceEvents(channel, source)).toEqual(['created', ...messages]);
    await server.restart({ hard: true });
    expect((await request('DELETE', source)).status).toBe(204);
    expect(await until(async () => (await sourceEvents(channel, source)).includes('deleted'), 15_000)).toBe(true);
    expect(await sourceEvents(channel, source)).toEqual(['created', ...messages, 'deleted']);
  }, 60_000);
});

describe('a channel whose registry cannot link a stream below it', () => {
  it('answers 503; the retried PUT links that stream, which then feeds it', async () => {
    const channel = unique('link');
    const below = `${channel}/${MARKER}-e`;
    const other = `${channel}/plain`;
    await createThroughFault(below);
    expect((await request('PUT', other, json)).status).toBe(201);
    // The stream below answers its first link with 503: the channel is not complete yet.
    const first = await request('PUT', channel, { 'stream-channel': 'true' });
    expect(first.status).toBe(503);
    expect(first.headers.get('retry-after')).toBe('1');
    expect((await request('PUT', channel, { 'stream-channel': 'true' })).status).toBe(200);
    expect((await request('POST', below, json, '{"from":"below"}')).status).toBe(204);
    expect((await request('POST', other, json, '{"from":"other"}')).status).toBe(204);
    expect(await until(async () => (await readAll(channel)).length >= 2)).toBe(true);
    // Across sources a channel keeps no order (the stream below also fails its first delivery).
    const envelopes = (await readAll(channel)).map((e) => [e.stream, e.data]);
    envelopes.sort((a, b) => String(a[0]).localeCompare(String(b[0])));
    expect(envelopes).toEqual([
      [below, { from: 'below' }],
      [other, { from: 'other' }],
    ]);
  });
});

describe('a channel over many streams, one of which is slow to link', () => {
  it('goes on linking the others meanwhile, 32 at a time, rather than waiting for it with each batch', async () => {
    // The held stream answers only once 40 other streams have been asked after it (5 s at
    // most, then 503): a registry that waited for each batch of 32 to finish before asking the
    // next asked no more than its 31 batch-mates, and the channel's PUT was 503.
    const channel = unique('window');
    await createThroughFault(`${channel}/${MARKER}-hold`);
    for (let i = 0; i < 80; i += 20) {
      const created = await Promise.all(Array.from({ length: 20 }, (_, j) => request('PUT', `${channel}/s${String(i + j).padStart(3, '0')}`, json)));
      expect(created.map((c) => c.status)).toEqual(Array(20).fill(201));
    }
    const made = await request('PUT', channel, { 'stream-channel': 'true' });
    expect(made.status, made.text).toBe(201);
    // Every stream is linked: an append to the held one and to the last reaches the channel
    // (the held one's first delivery fails, as its marker asks, and is retried).
    expect((await request('POST', `${channel}/${MARKER}-hold`, json, '{"n":1}')).status).toBe(204);
    expect((await request('POST', `${channel}/s079`, json, '{"n":2}')).status).toBe(204);
    expect(await until(async () => (await readAll(channel)).length >= 2)).toBe(true);
    expect((await readAll(channel)).map((e) => e.data.n).sort()).toEqual([1, 2]);
  }, 60_000);
});

describe('a subscription whose streams cannot all be linked', () => {
  it('answers 503; the retried PUT links them, and an append is then delivered', async () => {
    const prefix = unique(`${MARKER}-sublink`);
    const stream = `${prefix}/s`;
    await createThroughFault(stream);
    await withHook(prefix, async (hook, id) => {
      // The stream answers its first link with 503.
      const first = await subscribeOnce(id, `${prefix}/*`, hook.url);
      expect(first.status).toBe(503);
      const retried = await subscribeOnce(id, `${prefix}/*`, hook.url);
      expect(retried.status).toBe(200);
      expect(JSON.parse(retried.text).streams.map((s: { path: string }) => s.path)).toEqual([stream]);
      expect((await request('POST', stream, json, '{"n":1}')).status).toBe(204);
      expect(await until(() => hook.named(stream)), 'the webhook never named the stream after its append').toBe(true);
    });
  });

  it('is finished by the alarm when nobody retries it', async () => {
    const prefix = unique(`${MARKER}-subalarm`);
    const stream = `${prefix}/s`;
    await createThroughFault(stream);
    await withHook(prefix, async (hook, id) => {
      const first = await subscribeOnce(id, `${prefix}/*`, hook.url);
      expect(first.status).toBe(503);
      expect(await until(async () => (await linkedStreams(id)).includes(stream))).toBe(true);
    });
  });
});

/**
 * A stream named after `label` (with the marker), created through its registration's fault and
 * linked to a webhook subscription through its first link's (503, then 200 on the retried PUT).
 */
async function withSubscribedStream(label: string, body: (stream: string, hook: Hook) => Promise<void>) {
  const prefix = unique(`${MARKER}-${label}`);
  const stream = `${prefix}/s`;
  await createThroughFault(stream);
  await withHook(prefix, async (hook, id) => {
    expect((await subscribeOnce(id, `${prefix}/*`, hook.url)).status).toBe(503);
    expect((await subscribeOnce(id, `${prefix}/*`, hook.url)).status).toBe(200);
    await body(stream, hook);
  });
}

describe('a notification that fails', () => {
  it('is retried, so the subscription learns of the append with no later append', async () => {
    await withSubscribedStream('notify', async (stream, hook) => {
      // The stream's first notification fails; the append is still acknowledged.
      expect((await request('POST', stream, json, '{"n":1}')).status).toBe(204);
      expect(await until(() => hook.named(stream)), 'the webhook never named the stream after its append').toBe(true);
    });
  });
});

describe('a removal whose deregistration fails', () => {
  it('still answers 204, and the registry and subscriptions forget the stream', async () => {
    const prefix = unique(`${MARKER}-del`);
    const stream = `${prefix}/s`;
    await withHook(prefix, async (hook, id) => {
      await subscribe(id, `${prefix}/*`, hook.url);
      await createThroughFault(stream);
      expect(await until(async () => (await linkedStreams(id)).includes(stream))).toBe(true);
      // The stream's first call to the registry fails, and then the subscription answers the
      // registry's first notice with 503: the removal is retried until both have it.
      expect((await request('DELETE', stream)).status).toBe(204);
      expect(await until(async () => (await linkedStreams(id)).length === 0)).toBe(true);
      // Created again, it is a stream the registry knows: the pattern links it once more.
      expect((await request('PUT', stream, json)).status).toBe(201);
      expect(await until(async () => (await linkedStreams(id)).includes(stream))).toBe(true);
    });
  });
});

describe('a deleted event whose delivery fails', () => {
  it('is retried until the channel has it, once', async () => {
    const channel = await newChannel('gone');
    const source = `${channel}/${MARKER}-g`;
    await createThroughFault(source);
    expect((await request('POST', source, json, '{"n":1}')).status).toBe(204);
    // Its first delivery fails too: the message reaches the channel from the alarm.
    const events = () => sourceEvents(channel, source);
    expect(await until(async () => (await events()).length >= 2)).toBe(true);
    // Its first call to the registry fails, then its first deleted event: the DELETE is
    // answered at once, and the alarm gives both.
    expect((await request('DELETE', source)).status).toBe(204);
    expect(await until(async () => (await events()).includes('deleted'), 15_000)).toBe(true);
    await sleep(1_000);
    expect(await events()).toEqual(['created', { n: 1 }, 'deleted']);
  });
});

describe('a channel delivery that fails', () => {
  it('is retried after a backoff, exactly once and in order, while appends are acknowledged', async () => {
    const channel = await newChannel('backoff');
    const source = `${channel}/${MARKER}-d`;
    await createThroughFault(source);
    // The first delivery fails: the append is acknowledged without waiting for the channel.
    const started = Date.now();
    expect((await request('POST', source, json, '{"n":1}')).status).toBe(204);
    for (let n = 2; n <= 5; n++) expect((await request('POST', source, json, JSON.stringify({ n }))).status).toBe(204);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(await until(async () => (await readAll(channel)).length >= 5)).toBe(true);
    await sleep(500);
    expect((await readAll(channel)).map((e) => e.data)).toEqual([1, 2, 3, 4, 5].map((n) => ({ n })));
  });
});

// workerd refuses alarms past 2189 ("This API doesn't support dates after 2189"), and
// `Stream-Expires-At: 9999-12-31T23:59:59Z` is a common way to say "never". The alarm handler
// set the alarm for the expiry and returned its error before doing the owed work, so the work
// the alarm had in hand (a failed delivery, a registration nobody retried) was never done.
describe('a stream that expires after 2189', () => {
  const forever = { ...json, 'stream-expires-at': '9999-12-31T23:59:59Z' };

  it('has its failed channel delivery retried by the alarm all the same', async () => {
    const channel = await newChannel('forever');
    const source = `${channel}/${MARKER}-forever`;
    expect((await request('PUT', source, forever)).status).toBe(503);
    expect((await request('PUT', source, forever)).status).toBe(200);
    // The first delivery fails; nothing later comes to start another round.
    expect((await request('POST', source, json, '{"n":1}')).status).toBe(204);
    expect(await until(async () => (await readAll(channel)).length >= 1)).toBe(true);
    expect((await readAll(channel)).map((e) => e.data)).toEqual([{ n: 1 }]);
  });

  it('is linked by the alarm when nobody retries its create', async () => {
    const channel = await newChannel('forever-alarm');
    const source = `${channel}/${MARKER}-forever-b`;
    expect((await request('PUT', source, forever)).status).toBe(503);
    expect((await request('POST', source, json, '{"n":1}')).status).toBe(204);
    expect(await until(async () => (await readAll(channel)).length >= 1)).toBe(true);
    expect((await readAll(channel)).map((e) => e.data)).toEqual([{ n: 1 }]);
  });
});

describe('a fork whose calls to its source lose their answers', () => {
  it('gives back every reference exactly once: the source stays for the fork still reading it, and goes with it', async () => {
    const base = unique('fork');
    const source = `${base}/source`;
    const faulty = `${base}/${MARKER}-fork`;
    const other = `${base}/other`;
    const forkOf = { ...json, 'stream-forked-from': `/v1/stream/${source}` };
    expect((await request('PUT', source, json, '[{"n":1}]')).status).toBe(201);
    // The source takes a reference, and its answer is lost: the create fails, and that
    // reference is given back (an answer lost too, so it is given back twice).
    const first = await request('PUT', faulty, forkOf);
    expect(first.status).toBe(503);
    expect(first.headers.get('retry-after')).toBe('1');
    // Taken again under the retried create's own id; its first registration fails as well.
    const second = await request('PUT', faulty, forkOf);
    expect(second.status).toBe(503);
    expect(second.text).toMatch(/retry the PUT/);
    expect((await request('PUT', faulty, forkOf)).status).toBe(200);
    expect((await request('PUT', other, forkOf)).status).toBe(201);
    expect((await request('DELETE', source)).status).toBe(204);
    expect((await request('GET', `${source}?offset=-1`)).status).toBe(410);
    // Removed, the fork gives its reference back; the alarm retries what failed.
    expect((await request('DELETE', faulty)).status).toBe(204);
    await sleep(3_000);
    // No reference was given back twice: the source is kept for the other fork, which reads it.
    expect((await request('GET', `${source}?offset=-1`)).status).toBe(410);
    expect(await readAll(other)).toEqual([{ n: 1 }]);
    // And none was kept: with the other fork gone, so is the source.
    expect((await request('DELETE', other)).status).toBe(204);
    expect(await until(async () => (await request('GET', `${source}?offset=-1`)).status === 404)).toBe(true);
    expect((await request('PUT', source, json)).status).toBe(201);
  });
});

describe('a subscription deleted and created again at once', () => {
  it('is created after the delete has reached the registry, so its pattern still links new streams', async () => {
    const prefix = unique(`${MARKER}-again`);
    const pattern = `${prefix}/*`;
    await withHook(prefix, async (hook, id) => {
      await subscribe(id, pattern, hook.url);
      // The delete tells the registry a second late; the create arrives meanwhile.
      const deleted = request('DELETE', `__ds/subscriptions/${id}`);
      await sleep(200);
      const created = subscribeOnce(id, pattern, hook.url);
      expect((await deleted).status).toBe(204);
      expect((await created).status).toBe(201);
      const stream = `${prefix}/s`;
      await createThroughFault(stream);
      expect(await until(async () => (await linkedStreams(id)).includes(stream)), 'the pattern no longer links new streams').toBe(true);
    });
  });
});

describe('a stream dropped from a subscription while the registry cannot be told', () => {
  it('is dropped all the same (204, not 503), and a stream created at that path later is not linked', async () => {
    const prefix = unique(`${MARKER}-drop`);
    // The stream carries no marker: only the subscription's call to the registry fails.
    const stream = unique('dropped');
    await withHook(prefix, async (hook, id) => {
      await subscribe(id, `${prefix}/*`, hook.url);
      expect((await request('POST', `__ds/subscriptions/${id}/streams`, json, JSON.stringify({ streams: [stream] }))).status).toBe(204);
      const dropped = await request('DELETE', `__ds/subscriptions/${id}/streams/${encodeURIComponent(stream)}`);
      expect(dropped.status, dropped.text).toBe(204);
      expect(await linkedStreams(id)).not.toContain(stream);
      // The registry still names the subscription to a stream created there; the subscription
      // says it does not link it. An append is acknowledged once its subscriptions have answered.
      expect((await request('PUT', stream, json)).status).toBe(201);
      expect((await request('POST', stream, json, '{"n":1}')).status).toBe(204);
      expect(await linkedStreams(id)).not.toContain(stream);
      // Sent again, the removal is still 204.
      expect((await request('DELETE', `__ds/subscriptions/${id}/streams/${encodeURIComponent(stream)}`)).status).toBe(204);
    });
  });
});

describe('a subscription deleted while the registry cannot be told', () => {
  it('is deleted all the same, and a PUT made before the alarm tells the registry keeps its pattern', async () => {
    const prefix = unique(`${MARKER}-unlink`);
    const pattern = `${prefix}/*`;
    await withHook(prefix, async (hook, id) => {
      // The first deletion of a marked id tells the registry a second late; the next fails.
      await subscribe(id, pattern, hook.url);
      expect((await request('DELETE', `__ds/subscriptions/${id}`)).status).toBe(204);
      await subscribe(id, pattern, hook.url);
      const deleted = await request('DELETE', `__ds/subscriptions/${id}`);
      expect(deleted.status, deleted.text).toBe(204);
      expect((await request('GET', `__ds/subscriptions/${id}`)).status).toBe(404);
      // Created again before the alarm retried: the failed removal is no longer owed, and
      // nothing takes the new links away, not the retry (due a second after the failure) nor
      // the alarm the create sets to finish its own linking (ten seconds on).
      await subscribe(id, pattern, hook.url);
      await sleep(11_000);
      const stream = `${prefix}/s`;
      await createThroughFault(stream);
      expect(await until(async () => (await linkedStreams(id)).includes(stream)), 'the pattern no longer links new streams').toBe(true);
    });
  });
});

describe('a source deleted while its channel is failing', () => {
  it('still gives the channel what it had not delivered, in order and once, before its deleted event', async () => {
    const channel = await newChannel('behind');
    const source = `${channel}/${MARKER}-b`;
    await createThroughFault(source);
    // The first delivery fails, and the appends are acknowledged with the channel behind.
    for (let n = 1; n <= 3; n++) expect((await request('POST', source, json, JSON.stringify({ n }))).status).toBe(204);
    expect((await request('DELETE', source)).status).toBe(204);
    const events = () => sourceEvents(channel, source);
    // Its first deleted event fails too: the alarm gives it, after the messages.
    expect(await until(async () => (await events()).includes('deleted'), 15_000)).toBe(true);
    await sleep(1_000);
    expect(await events()).toEqual(['created', { n: 1 }, { n: 2 }, { n: 3 }, 'deleted']);
    // Created again, it is a new source, fed from its start.
    expect((await request('PUT', source, json)).status).toBe(201);
    expect((await request('POST', source, json, '{"n":4}')).status).toBe(204);
    expect(await until(async () => (await events()).length === 7)).toBe(true);
    expect((await events()).slice(5)).toEqual(['created', { n: 4 }]);
  });

  it('gives a byte stream\'s pieces the same way, and its closed event', async () => {
    const channel = await newChannel('bytes');
    const source = `${channel}/${MARKER}-t`;
    const text = { 'content-type': 'text/plain' };
    const first = await request('PUT', source, text);
    expect(first.status).toBe(503);
    expect((await request('PUT', source, text)).status).toBe(200);
    expect((await request('POST', source, text, 'ab')).status).toBe(204);
    expect((await request('POST', source, { ...text, 'stream-closed': 'true' }, 'cd')).status).toBe(204);
    expect((await request('DELETE', source)).status).toBe(204);
    const events = () => sourceEvents(channel, source, 'text');
    expect(await until(async () => (await events()).includes('deleted'), 15_000)).toBe(true);
    await sleep(1_000);
    expect(await events()).toEqual(['created', 'ab', 'cd', 'closed', 'deleted']);
  });

  it('kept for its forks, gives the channel the rest from its rows', async () => {
    const channel = await newChannel('kept');
    const source = `${channel}/${MARKER}-k`;
    await createThroughFault(source);
    expect((await request('POST', source, json, '{"n":1}')).status).toBe(204);
    // A fork outside the channel keeps the source's rows: its DELETE soft-deletes it.
    const fork = unique('kept-fork');
    expect((await request('PUT', fork, { ...json, 'stream-forked-from': `/v1/stream/${source}` })).status).toBe(201);
    expect((await request('DELETE', source)).status).toBe(204);
    expect((await request('GET', `${source}?offset=-1`)).status).toBe(410);
    const events = () => sourceEvents(channel, source);
    expect(await until(async () => (await events()).includes('deleted'), 15_000)).toBe(true);
    await sleep(1_000);
    expect(await events()).toEqual(['created', { n: 1 }, 'deleted']);
    expect((await request('DELETE', fork)).status).toBe(204);
  });
});

describe('a deleted source whose removal fails when its last fork goes', () => {
  // A source whose path also contains `torn` fails its first removal after its rows are purged,
  // the way a storage error would (worker/src/fault.rs).
  it('keeps the fork\'s reference for the retry, so the source still goes', async () => {
    const source = `${MARKER}-torn-${unique('last-fork')}`;
    const fork = unique('last-fork-of');
    // Its registration fails once: the retried PUT finishes it.
    expect((await request('PUT', source, json, '[{"n":1}]')).status).toBe(503);
    expect((await request('PUT', source, json, '[{"n":1}]')).status).toBe(200);
    expect((await request('PUT', fork, { ...json, 'stream-forked-from': `/v1/stream/${source}` })).status).toBe(201);
    expect((await request('DELETE', source)).status).toBe(204);
    expect((await request('GET', `${source}?offset=-1`)).status).toBe(410);
    // The fork's release fails with the removal; its alarm gives the reference back again.
    expect((await request('DELETE', fork)).status).toBe(204);
    expect(await until(async () => (await request('GET', `${source}?offset=-1`)).status === 404)).toBe(true);
  });
});

describe('an append whose storage fails after its rows are written', () => {
  // A stream whose path also contains `torn` fails its first append there, after the rows
  // (three of them: 2.5 MiB) are written, the way a storage error would (worker/src/fault.rs).
  const text = { 'content-type': 'text/plain' };
  const body = 'abcdefghij'.repeat(262_144);

  async function created(label: string) {
    const path = `${MARKER}-torn-${unique(label)}`;
    // Its registration fails once too: the retried PUT finishes it.
    expect((await request('PUT', path, text)).status).toBe(503);
    expect((await request('PUT', path, text)).status).toBe(200);
    return path;
  }

  it('stores none of a plain append, so its retry is stored once', async () => {
    const path = await created('plain');
    const failed = await request('POST', path, text, body);
    expect(failed.status).toBe(503);
    const read = await request('GET', `${path}?offset=-1`);
    expect(read.text.length, 'nothing of the refused append is readable').toBe(0);
    expect(read.headers.get('stream-next-offset')).toBe('0000000000000000_0000000000000000');
    expect((await request('POST', path, text, body)).status).toBe(204);
    expect((await request('GET', `${path}?offset=-1`)).text).toBe(body);
  });

  it("stores none of a producer's append, so its retry is new (200), not a duplicate", async () => {
    const path = await created('producer');
    const producer = { ...text, 'producer-id': 'p', 'producer-epoch': '0', 'producer-seq': '0' };
    expect((await request('POST', path, producer, body)).status).toBe(503);
    expect((await request('GET', `${path}?offset=-1`)).text.length).toBe(0);
    expect((await request('POST', path, producer, body)).status).toBe(200);
    expect((await request('POST', path, producer, body)).status).toBe(204);
    expect((await request('GET', `${path}?offset=-1`)).text).toBe(body);
  });
});

describe('an append cut off before its subscriptions are told', () => {
  // A stream whose path also contains `cut` stores its first append with subscribers, then
  // fails the request before telling them, as if the isolate died (worker/src/fault.rs). The
  // append owes the notification in its own turn, so the alarm tells them.
  it('is notified by the alarm, though its retry is a duplicate that notifies nothing', async () => {
    await withSubscribedStream('cut', async (stream, hook) => {
      const producer = { ...json, 'producer-id': 'p', 'producer-epoch': '0', 'producer-seq': '0' };
      expect((await request('POST', stream, producer, '{"n":1}')).status).toBe(503);
      expect((await request('POST', stream, producer, '{"n":1}')).status, 'stored: its retry is a duplicate').toBe(204);
      expect(await until(() => hook.named(stream), 15_000), 'the webhook never named the stream after its append').toBe(true);
    });
  }, 30_000);

  // No row of the stream records that the append's subscriptions are owed its tail: the alarm
  // set in the append's turn does. The instance that starts after the crash has told them
  // nothing, so its alarm tells them the tail (and its first call fails, as every first call of
  // a kind does in an isolate, so a retry tells them).
  it('is notified by the alarm after a hard restart', async () => {
    await withSubscribedStream('cut-restart', async (stream, hook) => {
      expect((await request('POST', stream, json, '{"n":1}')).status).toBe(503);
      expect(hook.named(stream), 'not told before the crash').toBe(false);
      await server.restart({ hard: true });
      expect(await until(() => hook.named(stream), 20_000), 'the webhook never named the stream after its append').toBe(true);
    });
  }, 40_000);

  // A worker reads a woken stream to its end and acks where the read ended, as a consumer
  // does. The read can see an append the subscription has not heard of yet (here for a second,
  // until the alarm tells it; on Cloudflare for the few milliseconds a notification takes).
  it('can be acked by a worker that read it before its subscription was told', async () => {
    const p = unique('ackahead');
    const stream = `${p}/${MARKER}-cut`;
    const wake = `wake-${p}`;
    const id = `pull-${p}`;
    const sub = `__ds/subscriptions/${id}`;
    try {
      expect((await request('PUT', wake, json)).status).toBe(201);
      const body = JSON.stringify({ type: 'pull-wake', pattern: `${p}/*`, wake_stream: wake, lease_ttl_ms: 10_000 });
      expect((await request('PUT', sub, json, body)).status).toBe(201);
      // Its first call to the registry fails (503); the retried PUT links it.
      expect((await request('PUT', stream, json, '{"n":1}')).status).toBe(503);
      expect((await request('PUT', stream, json, '{"n":1}')).status).toBe(200);
      const pending = async () => JSON.parse((await request('GET', sub)).text).streams.some((s: any) => s.path === stream && s.has_pending);
      for (let i = 0; i < 50 && !(await pending()); i++) await sleep(100);
      const claim = await request('POST', `${sub}/claim`, json, '{"worker":"w"}');
      expect(claim.status).toBe(200);
      const claimed = JSON.parse(claim.text);
      const link = claimed.streams.find((s: any) => s.path === stream);
      expect(link?.has_pending).toBe(true);
      // Stored, and the subscription not told.
      expect((await request('POST', stream, json, '{"n":2}')).status).toBe(503);
      const read = await request('GET', `${stream}?offset=${encodeURIComponent(link.acked_offset)}`);
      expect(JSON.parse(read.text)).toEqual([{ n: 1 }, { n: 2 }]);
      const end = read.headers.get('stream-next-offset')!;
      expect(end).not.toBe(link.tail_offset);
      const ack = await request('POST', `${sub}/ack`, { ...json, authorization: `Bearer ${claimed.token}` }, JSON.stringify({
        wake_id: claimed.wake_id, generation: claimed.generation, acks: [{ stream, offset: end }], done: true,
      }));
      expect(ack.status, ack.text).toBe(200);
      const state = JSON.parse((await request('GET', sub)).text);
      expect(state.streams.find((s: any) => s.path === stream)?.acked_offset).toBe(end);
      // Told later, the subscription has nothing more to wake for.
      await sleep(1_500);
      const after = JSON.parse((await request('GET', sub)).text);
      expect(after.streams.find((s: any) => s.path === stream)).toMatchObject({ acked_offset: end, tail_offset: end, has_pending: false });
    } finally {
      await request('DELETE', sub);
    }
  }, 30_000);
});

describe('the alarm, once a request has done the work it was set for', () => {
  // With FAULT_MARKER on, a HEAD says when the stream's alarm is set for (worker/src/fault.rs).
  // A create or an append sets it SAFETY_MS on, in case the request dies before it has
  // registered the stream, told its subscriptions and fed its channels; once it has, the alarm
  // goes back to the stream's own timed work, so the object is not woken for nothing.
  const alarmAt = async (path: string) => {
    const res = await request('HEAD', path);
    expect(res.status).toBe(200);
    return res.headers.get('x-edgestream-alarm');
  };

  it('is cleared for a stream fed to a channel and told to a subscription, with no expiry', async () => {
    const channel = await newChannel('quiet');
    await withHook(channel, async (hook, id) => {
      await subscribe(id, `${channel}/*`, hook.url);
      const stream = `${channel}/s`;
      expect((await request('PUT', stream, json, '[{"n":0}]')).status).toBe(201);
      expect(await alarmAt(stream)).toBe('none');
      expect((await request('POST', stream, json, '{"n":1}')).status).toBe(204);
      expect(hook.named(stream), 'the subscription was told in the append').toBe(true);
      expect((await readAll(channel)).map((e) => e.data)).toEqual([{ n: 0 }, { n: 1 }]);
      expect(await alarmAt(stream)).toBe('none');
    });
  });

  it('is moved to the expiry of a stream with a TTL', async () => {
    const channel = await newChannel('quiet-ttl');
    const stream = `${channel}/s`;
    expect((await request('PUT', stream, { ...json, 'stream-ttl': '3600' })).status).toBe(201);
    expect((await request('POST', stream, json, '{"n":1}')).status).toBe(204);
    const at = Number(await alarmAt(stream));
    expect(at).toBeGreaterThan(Date.now() + 3_590_000);
    expect(at).toBeLessThan(Date.now() + 3_610_000);
  });

  it('stays set while a notification is owed, and is done once the alarm has given it', async () => {
    await withSubscribedStream('owed-alarm', async (stream, hook) => {
      // The stream's first notification fails: the append leaves it to the alarm.
      expect((await request('POST', stream, json, '{"n":1}')).status).toBe(204);
      const at = Number(await alarmAt(stream));
      expect(at).toBeGreaterThan(Date.now() - 1_000);
      expect(at).toBeLessThan(Date.now() + 3_000);
      expect(await until(() => hook.named(stream), 15_000)).toBe(true);
      expect(await until(async () => (await alarmAt(stream)) === 'none')).toBe(true);
    });
  }, 30_000);
});

describe('work owed behind a call that keeps failing', () => {
  // A stream whose path carries the marker and `deregister-down` cannot tell the registry it
  // was removed for 5 s from its first try (worker/src/fault.rs). Created again meanwhile, its
  // new incarnation's registration waits for that removal (a removed incarnation leaves the
  // registry before a new one joins), which backs off 1 s, 2 s, 4 s. With FAULT_MARKER on, a
  // HEAD says how often the stream's alarm has run (`x-edgestream-alarm-runs`).
  const head = async (path: string) => (await request('HEAD', path)).headers;
  const alarmRuns = async (path: string) => Number((await head(path)).get('x-edgestream-alarm-runs'));

  it('wakes the object when the failing call is retried, not every 200 ms, and the alarm then finishes both in order', async () => {
    const stream = unique(`${MARKER}-deregister-down`);
    await createThroughFault(stream);
    // The retried PUT registered it: the alarm its failed try set is not left to fire for
    // nothing.
    expect((await head(stream)).get('x-edgestream-alarm')).toBe('none');
    expect((await request('DELETE', stream)).status).toBe(204);
    // Stored again, but not registered: the PUT's own try of the removal failed too, and is
    // retried 2 s after it. The alarm the DELETE's try set for 1 s after it moves there:
    // nothing is due before (it ran once for nothing, and was set again).
    const putAt = Date.now();
    expect((await request('PUT', stream, json)).status).toBe(503);
    expect(Number((await head(stream)).get('x-edgestream-alarm'))).toBeGreaterThanOrEqual(putAt + 2_000);
    const before = await alarmRuns(stream);
    await sleep(3_500);
    // One alarm, at that retry (an alarm per 200 ms was 15).
    expect((await alarmRuns(stream)) - before).toBeLessThanOrEqual(1);
    // 4 s later the registry hears of the removal, and then of the new stream: nothing is
    // left owed, and the alarm is cleared.
    expect(await until(async () => (await head(stream)).get('x-edgestream-alarm') === 'none', 15_000)).toBe(true);
    expect((await alarmRuns(stream)) - before).toBeLessThanOrEqual(2);
    expect((await request('PUT', stream, json)).status).toBe(200);
  }, 30_000);
});

describe('a channel deleted and created again above a source', () => {
  // A source keeps in memory where each channel stands between the batches it stores that for;
  // with FAULT_MARKER on, a HEAD says for how many (`x-edgestream-channel-positions`).
  it('leaves no position of its old incarnation in the source', async () => {
    const channel = await newChannel('again');
    const source = `${channel}/s`;
    const kept = async () => (await request('HEAD', source)).headers.get('x-edgestream-channel-positions');
    expect((await request('PUT', source, json)).status).toBe(201);
    for (let n = 1; n <= 3; n++) expect((await request('POST', source, json, JSON.stringify({ n }))).status).toBe(204);
    expect(await kept()).toBe('1');
    // Deleted and created again before the source's next append: its new incarnation's link
    // replaces the old one's, which is never answered "gone".
    expect((await request('DELETE', channel)).status).toBe(204);
    expect((await request('PUT', channel, { 'stream-channel': 'true' })).status).toBe(201);
    expect((await request('POST', source, json, '{"n":4}')).status).toBe(204);
    expect(await kept()).toBe('1');
    expect(await sourceEvents(channel, source)).toEqual([{ n: 4 }]);
  });
});

describe('a channel that fails, on a stream a client socket with an expiring token follows', () => {
  // The alarm alone closes an idle client socket at its token's expiry. A channel's delivery
  // that fails moves the alarm to its backoff, which must not put that close off.
  const secret = 'owed-secret-' + Math.random().toString(36).slice(2);
  let guarded: Awaited<ReturnType<typeof startServer>>;
  const bearer = (ops: string[], expiresAt: number) => mintToken({ secret, prefix: '', ops, expiresAt });
  const admin = bearer(['read', 'append', 'create', 'delete'], Math.floor(Date.now() / 1000) + 3600);

  beforeAll(async () => {
    guarded = await startServer({ vars: { FAULT_MARKER: MARKER, AUTH_SECRET: secret } });
  });

  afterAll(async () => {
    await guarded?.stop();
  });

  const call = (method: string, path: string, headers: Record<string, string> = {}, body?: string) =>
    fetch(`${guarded.baseUrl}/v1/stream/${path}`, { method, headers: { ...headers, authorization: `Bearer ${admin}` }, body });

  it('keeps the alarm at the token\'s expiry, and the socket is closed then', async () => {
    const channel = unique('tokens');
    const source = `${channel}/${MARKER}-token`;
    // Its registration fails once (503); the retried PUT registers it.
    expect((await call('PUT', source, json)).status).toBe(503);
    expect((await call('PUT', source, json)).status).toBe(200);
    // The channel above it: the source answers its first link with 503, the retried PUT links it.
    expect((await call('PUT', channel, { 'stream-channel': 'true' })).status).toBe(503);
    expect((await call('PUT', channel, { 'stream-channel': 'true' })).status).toBe(200);

    const expiresAt = Math.floor(Date.now() / 1000) + 4;
    const ws = new WebSocket(
      `${guarded.baseUrl.replace(/^http/, 'ws')}/v1/stream/${source}?offset=now&live=ws&token=${encodeURIComponent(bearer(['read'], expiresAt))}`,
    );
    const closed = new Promise<{ code: number }>((resolve) => ws.addEventListener('close', (e) => resolve({ code: e.code })));
    await new Promise<void>((resolve, reject) => {
      ws.addEventListener('open', () => resolve());
      ws.addEventListener('error', () => reject(new Error('cannot open the socket')));
    });

    // Less than the first backoff (2 s) before the expiry, the append's first delivery to the
    // channel fails: the backoff would set the alarm past the expiry.
    await sleep(Math.max(0, expiresAt * 1000 - 1_500 - Date.now()));
    expect((await call('POST', source, json, '{"n":1}')).status).toBe(204);
    const head = await call('HEAD', source);
    const alarm = Number(head.headers.get('x-edgestream-alarm'));
    expect(alarm).toBeGreaterThan(0);
    expect(alarm).toBeLessThanOrEqual(expiresAt * 1000);

    // The close frame arrives at the alarm; workerd completes the close some seconds later.
    while (ws.readyState === WebSocket.OPEN) await sleep(20);
    expect(Date.now()).toBeLessThan(expiresAt * 1000 + 400);
    expect((await closed).code).toBe(4401);
    // The channel still gets the message, after its backoff.
    const events = async () => {
      const res = await call('GET', `${channel}?offset=-1`);
      return ((await res.json()) as any[]).filter((e) => e.stream === source).map((e) => e.event ?? e.data);
    };
    expect(await until(async () => JSON.stringify(await events()).includes('{"n":1}'), 15_000)).toBe(true);
  }, 30_000);
});

// The reference TypeScript client, `@durable-streams/client` (pinned in package.json), against our
// Worker: people who move to edgestream keep their client code, so its main flows must work here
// as they do against the reference server. Create and metadata, appends of text, bytes and JSON,
// catch-up and resume, long-poll and SSE (text, JSON, base64) to the stream's close, its
// idempotent producer (pipelining, fencing, autoClaim, close), errors, auth hooks, backoff on
// 503 and cancellation. Access control is on, so every request carries the client's header hook.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DurableStream,
  FetchError,
  IdempotentProducer,
  StaleEpochError,
  stream,
  type StreamResponse,
} from '@durable-streams/client';
import { startServer } from '../scripts/dev-server.mjs';
import { mintToken } from '../scripts/token.mjs';

const secret = 'interop-secret';
const marker = 'faulty';
let server: Awaited<ReturnType<typeof startServer>>;

beforeAll(async () => {
  server = await startServer({
    vars: {
      AUTH_SECRET: secret,
      LONG_POLL_TIMEOUT_MS: '1000',
      SSE_CONNECTION_MS: '2000',
      SSE_HEARTBEAT_MS: '200',
      FAULT_MARKER: marker,
    },
  });
});

afterAll(async () => {
  await server?.stop();
});

const token = (ops: string[], prefix = 'interop', seconds = 3600) =>
  mintToken({ secret, prefix, ops, expiresAt: Math.floor(Date.now() / 1000) + seconds });
const full = () => token(['create', 'append', 'read', 'delete']);
/** The client's header hook: a function, called again for each request. */
const auth = () => ({ Authorization: () => `Bearer ${full()}` });
let counter = 0;
const url = (name: string) => `${server.baseUrl}/v1/stream/interop/${name}-${process.pid}-${counter++}`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const create = (name: string, options: Partial<Parameters<typeof DurableStream.create>[0]> = {}) =>
  DurableStream.create({ url: url(name), headers: auth(), ...options });

/** HEAD of an existing stream (fails the test if it is missing). */
async function headOf(h: DurableStream) {
  const head = await h.head();
  if (!head.exists) throw new Error(`${h.url} is missing`);
  return head;
}

/** What a promise rejects with (fails the test if it resolves). */
async function rejection(promise: Promise<unknown>): Promise<any> {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  throw new Error('expected a rejection');
}

/** Everything a live subscription receives until the stream's close ends it. */
function untilClosed<T>(
  res: StreamResponse,
  kind: 'text' | 'json' | 'bytes',
): Promise<{ parts: T[]; closed: boolean }> {
  const parts: T[] = [];
  return new Promise((resolve, reject) => {
    res.closed.catch(reject);
    const take = (items: T[], closed: boolean) => {
      parts.push(...items);
      if (closed) resolve({ parts, closed });
    };
    if (kind === 'text') res.subscribeText(async (c) => take([c.text as T], c.streamClosed));
    if (kind === 'json') res.subscribeJson(async (b) => take(b.items as T[], b.streamClosed));
    if (kind === 'bytes') res.subscribeBytes(async (c) => take([...c.data] as T[], c.streamClosed));
  });
}

/**
 * Follows `h` live from `options`, then runs `steps` (an append, or a pause in ms) and closes
 * the stream (with `closeBody`): what the reader received up to the close.
 */
async function follow<T>(
  h: DurableStream,
  options: Parameters<DurableStream['stream']>[0],
  kind: 'text' | 'json' | 'bytes',
  steps: Array<string | Uint8Array | number>,
  closeBody?: string,
): Promise<T[]> {
  const got = untilClosed<T>(await h.stream(options), kind);
  await sleep(200);
  for (const step of steps) await (typeof step === 'number' ? sleep(step) : h.append(step));
  await h.close(closeBody === undefined ? undefined : { body: closeBody });
  return (await got).parts;
}

describe('create, metadata, delete', () => {
  it('creates with a content type and TTL, confirms the same config, refuses another with 409', async () => {
    const h = await create('meta', { contentType: 'text/plain', ttlSeconds: 3600 });
    expect(h.contentType).toBe('text/plain');
    await DurableStream.create({ url: h.url, headers: auth(), contentType: 'text/plain', ttlSeconds: 3600 });
    const e = await rejection(DurableStream.create({ url: h.url, headers: auth(), contentType: 'application/json' }));
    expect(e).toBeInstanceOf(FetchError);
    expect(e.status).toBe(409);

    await h.append('abc');
    const head = await headOf(h);
    expect(head).toMatchObject({ exists: true, contentType: 'text/plain', streamClosed: false, cacheControl: 'no-store' });
    const connected = await DurableStream.connect({ url: h.url, headers: auth() });
    expect(connected.contentType).toBe('text/plain');
    const res = await connected.stream({ live: false, offset: head.offset });
    expect(await res.text()).toBe('');
  });

  it('reports a missing stream as exists: false on HEAD and as a 404 FetchError elsewhere', async () => {
    const missing = new DurableStream({ url: url('missing'), headers: auth(), contentType: 'text/plain' });
    expect(await missing.head()).toEqual({ exists: false });
    for (const attempt of [() => missing.append('x'), () => stream({ url: missing.url, headers: auth(), live: false }), () => missing.delete()]) {
      const e = await rejection(attempt());
      expect(e).toBeInstanceOf(FetchError);
      expect(e.status).toBe(404);
    }
  });

  it('deletes; a live reader of the deleted stream ends with 404', async () => {
    const h = await create('delete', { contentType: 'text/plain', body: 'a' });
    const res = await h.stream({ live: 'long-poll' });
    const ended = res.closed.then(
      () => 'resolved',
      (e) => e.status,
    );
    res.subscribeText(async () => {});
    await sleep(200);
    await h.delete();
    expect(await ended).toBe(404);
    expect((await h.head()).exists).toBe(false);
  });

  it('refuses with 400 an offset past the end of a stream deleted and created again', async () => {
    const h = await create('recreate', { contentType: 'text/plain', body: 'abcdef' });
    const { offset } = await headOf(h);
    await h.delete();
    await h.create({ contentType: 'text/plain', body: 'x' });
    const e = await rejection(h.stream({ live: false, offset }));
    expect(e).toBeInstanceOf(FetchError);
    expect(e.status).toBe(400);
  });

  it('expires a stream past its Stream-TTL or Stream-Expires-At', async () => {
    const a = await create('ttl', { contentType: 'text/plain', ttlSeconds: 1 });
    const b = await create('expires', { contentType: 'text/plain', expiresAt: new Date(Date.now() + 1000).toISOString() });
    expect((await a.head()).exists).toBe(true);
    await sleep(2200);
    expect((await a.head()).exists).toBe(false);
    expect((await b.head()).exists).toBe(false);
  });

  it('retries a 503 after its Retry-After (the stream stored but not yet linked to the registry)', async () => {
    const statuses: number[] = [];
    const started = Date.now();
    const h = await DurableStream.create({
      url: url(marker),
      headers: auth(),
      contentType: 'text/plain',
      fetch: async (input, init) => {
        const res = await fetch(input, init);
        statuses.push(res.status);
        if (res.status === 503) expect(res.headers.get('retry-after')).toBe('1');
        return res;
      },
    });
    expect(statuses).toEqual([503, 200]);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1000);
    expect((await h.head()).exists).toBe(true);
  });
});

describe('appends and catch-up reads', () => {
  it('round-trips text, and concurrent appends batched by the client, in order', async () => {
    const h = await create('text', { contentType: 'text/plain' });
    await h.append('hello ');
    await Promise.all(Array.from({ length: 20 }, (_, i) => h.append(`${i},`)));
    const res = await h.stream({ live: false });
    expect(await res.text()).toBe(`hello ${Array.from({ length: 20 }, (_, i) => `${i},`).join('')}`);
    expect(res.upToDate).toBe(true);
    expect(res.streamClosed).toBe(false);
  });

  it('round-trips every byte value, and a large stream read over many pages', async () => {
    const h = await create('bytes', { contentType: 'application/octet-stream' });
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    await h.append(all);
    const big = new Uint8Array(3 << 20).map((_, i) => (i * 7) & 255);
    await h.append(big);
    const body = await (await h.stream({ live: false })).body();
    expect(Buffer.compare(Buffer.from(body), Buffer.concat([all, big]))).toBe(0);
  });

  it('JSON mode: batched appends, an initial array body, json() and jsonStream()', async () => {
    const h = await create('json', { contentType: 'application/json', body: '[{"a":1},{"b":2}]' });
    await Promise.all([h.append('{"c":3}'), h.append('[4,5]'), h.append('"s"')]);
    expect(await (await h.stream({ live: false })).json()).toEqual([{ a: 1 }, { b: 2 }, { c: 3 }, [4, 5], 's']);
    const items: unknown[] = [];
    for await (const item of (await h.stream({ live: false })).jsonStream()) items.push(item);
    expect(items).toHaveLength(5);
  });

  it('streams a request body (appendStream), and pipes into writable(), which closes the stream', async () => {
    const h = await create('append-stream', { contentType: 'text/plain' });
    async function* chunks() {
      for (let i = 0; i < 4; i++) {
        yield `chunk${i};`;
        await sleep(20);
      }
    }
    await h.appendStream(chunks());
    const source = new ReadableStream({
      start(c) {
        for (let i = 0; i < 5; i++) c.enqueue(`${i};`);
        c.close();
      },
    });
    await source.pipeTo(h.writable());
    const res = await h.stream({ live: false });
    expect(await res.text()).toBe('chunk0;chunk1;chunk2;chunk3;0;1;2;3;4;');
    expect(res.streamClosed).toBe(true);
  });

  it('resumes from a returned offset, from HEAD and from now', async () => {
    const h = await create('resume', { contentType: 'text/plain', body: 'one;' });
    const first = await h.stream({ live: false });
    expect(await first.text()).toBe('one;');
    await h.append('two;');
    const next = await h.stream({ live: false, offset: first.offset });
    expect(await next.text()).toBe('two;');
    expect(next.offset > first.offset).toBe(true);
    expect((await headOf(h)).offset).toBe(next.offset);
    const now = await h.stream({ live: false, offset: 'now' });
    expect(await now.text()).toBe('');
    expect(now.offset).toBe(next.offset);
  });

  it('surfaces a Stream-Seq regression and a content-type mismatch as 409', async () => {
    const h = await create('seq', { contentType: 'text/plain', batching: false });
    await h.append('a', { seq: 'w-002' });
    expect((await rejection(h.append('b', { seq: 'w-001' }))).status).toBe(409);
    expect((await rejection(h.append('{}', { contentType: 'application/json' }))).status).toBe(409);
    expect(await (await h.stream({ live: false })).text()).toBe('a');
  });
});

describe('close', () => {
  it('closes idempotently; later appends get 409 with Stream-Closed; close with a final JSON message', async () => {
    const h = await create('close', { contentType: 'text/plain', body: 'x' });
    const first = await h.close();
    const again = await h.close();
    expect(again.finalOffset).toBe(first.finalOffset);
    const e = await rejection(h.append('y'));
    expect(e.status).toBe(409);
    expect(e.headers['stream-closed']).toBe('true');
    expect((await headOf(h)).streamClosed).toBe(true);

    const j = await create('close-json', { contentType: 'application/json', body: '{"a":1}' });
    const closed = await j.close({ body: '{"done":true}' });
    const res = await j.stream({ live: false });
    expect(await res.json()).toEqual([{ a: 1 }, { done: true }]);
    expect(res.streamClosed).toBe(true);
    expect(res.offset).toBe(closed.finalOffset);
  });

  it('creates a stream closed, with its only content', async () => {
    const h = await create('closed', { contentType: 'application/json', body: '{"error":"x"}', closed: true });
    const res = await h.stream({ live: true });
    expect(await res.json()).toEqual([{ error: 'x' }]);
    expect(res.streamClosed).toBe(true);
  });
});

describe('live reads', () => {
  it('long-poll: follows appends across long-poll timeouts, echoing cursors, until the close', async () => {
    const h = await create('long-poll', { contentType: 'text/plain', body: 'a' });
    const cursors: Array<string | null> = [];
    const res = await stream({
      url: h.url,
      headers: auth(),
      live: 'long-poll',
      fetch: async (input, init) => {
        cursors.push(new URL(String(input)).searchParams.get('cursor'));
        return fetch(input, init);
      },
    });
    const got = untilClosed<string>(res, 'text');
    await sleep(200);
    await h.append('b');
    await sleep(1500); // past a long-poll timeout (1 s)
    await h.append('c');
    await h.close();
    const { parts } = await got;
    expect(parts.join('')).toBe('abc');
    expect(cursors.filter(Boolean).length).toBeGreaterThan(0);
  });

  it('live: true on a JSON stream, from HEAD offset', async () => {
    const h = await create('auto', { contentType: 'application/json', body: '{"old":1}' });
    const { offset } = await headOf(h);
    const parts = await follow(h, { live: true, offset }, 'json', ['{"new":1}'], '{"new":2}');
    expect(parts).toEqual([{ new: 1 }, { new: 2 }]);
  });

  it('SSE text: heartbeats, reconnects past SSE_CONNECTION_MS, exact text (a leading space, a character split between appends)', async () => {
    const h = await create('sse-text', { contentType: 'text/plain', body: 'line1\n' });
    const split = new TextEncoder().encode('😀€');
    const steps = [' lead space\n', split.slice(0, 2), 100, split.slice(2), 2500, 'data: not an event\n'];
    // The 2.5 s pause is quiet (heartbeats only) past the SSE response's end: the client reconnects.
    const parts = await follow<string>(h, { live: 'sse' }, 'text', steps);
    expect(parts.join('')).toBe('line1\n lead space\n😀€data: not an event\n');
  });

  it('SSE JSON and SSE base64 bytes until the close', async () => {
    const j = await create('sse-json', { contentType: 'application/json', body: '{"a":"x\\ny"}' });
    expect(await follow(j, { live: 'sse' }, 'json', ['{\n  "pretty": [1,\n 2]\n}'])).toEqual([{ a: 'x\ny' }, { pretty: [1, 2] }]);

    const b = await create('sse-bytes', { contentType: 'application/octet-stream' });
    await b.append(new Uint8Array([0, 1, 2, 255]));
    expect(await follow(b, { live: 'sse' }, 'bytes', [new Uint8Array([10, 13, 0])])).toEqual([0, 1, 2, 255, 10, 13, 0]);
  });

  it('an AbortSignal ends long-poll and SSE reads at once; cancel() stops a subscription', async () => {
    const h = await create('abort', { contentType: 'text/plain', body: 'a' });
    for (const live of ['long-poll', 'sse'] as const) {
      const controller = new AbortController();
      const reader = (await h.stream({ live, signal: controller.signal })).textStream().getReader();
      expect((await reader.read()).value).toBe('a');
      setTimeout(() => controller.abort(), 200);
      const started = Date.now();
      expect((await reader.read()).done).toBe(true);
      expect(Date.now() - started).toBeLessThan(3000);
    }
    const res = await h.stream({ live: 'long-poll' });
    const got: string[] = [];
    res.subscribeText(async (c) => void got.push(c.text));
    await sleep(200);
    res.cancel();
    await res.closed;
    await h.append('b');
    await sleep(300);
    expect(got.join('')).toBe('a');
  });
});

describe('idempotent producer', () => {
  it('appends JSON in order, and closes with a final message idempotently', async () => {
    const h = await create('producer-json', { contentType: 'application/json' });
    const errors: Error[] = [];
    const p = new IdempotentProducer(h, 'p1', { lingerMs: 1, onError: (e) => errors.push(e) });
    for (let i = 0; i < 200; i++) p.append(JSON.stringify({ i }));
    await p.flush();
    const closed = await p.close(JSON.stringify({ end: true }));
    expect(await p.close(JSON.stringify({ end: true }))).toEqual(closed);
    const res = await h.stream({ live: false });
    const items = await res.json();
    expect(items).toEqual([...Array.from({ length: 200 }, (_, i) => ({ i })), { end: true }]);
    expect(res.offset).toBe(closed.finalOffset);
    expect(errors).toEqual([]);
  });

  it('pipelines batches that reach the server out of order (held, or refused 409 and resent)', async () => {
    for (const delay of [100, 1200]) {
      const h = await create('producer-order', { contentType: 'application/octet-stream' });
      const answers: Array<[string, number]> = [];
      let delayed = false;
      const errors: Error[] = [];
      const p = new IdempotentProducer(h, 'p', {
        lingerMs: 0,
        maxBatchBytes: 1,
        maxInFlight: 5,
        onError: (e) => errors.push(e),
        fetch: async (input, init) => {
          const seq = (init?.headers as Record<string, string>)['Producer-Seq'];
          if (seq === '0' && !delayed) {
            delayed = true;
            await sleep(delay);
          }
          const res = await fetch(input, init);
          answers.push([seq, res.status]);
          return res;
        },
      });
      for (let i = 0; i < 8; i++) p.append(new Uint8Array([i]));
      await p.flush();
      expect(errors).toEqual([]);
      expect([...(await (await h.stream({ live: false })).body())]).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
      // Held up to 500 ms for its predecessor, or refused 409 past it and sent again.
      const refused = answers.filter(([, status]) => status === 409).length;
      expect(delay < 500 ? refused === 0 : refused > 0).toBe(true);
    }
  });

  it('fences a stale epoch (StaleEpochError), autoClaims past it, restarts, and treats a repeated seq as a duplicate', async () => {
    const h = await create('producer-epoch', { contentType: 'text/plain' });
    const staleErrors: Error[] = [];
    const old = new IdempotentProducer(h, 'w', { epoch: 0, onError: (e) => staleErrors.push(e) });
    old.append('a');
    await old.flush();
    const next = new IdempotentProducer(h, 'w', { epoch: 1 });
    next.append('b');
    await next.flush();
    old.append('zombie');
    await old.flush().catch(() => {});
    expect(staleErrors).toHaveLength(1);
    expect(staleErrors[0]).toBeInstanceOf(StaleEpochError);
    expect((staleErrors[0] as StaleEpochError).currentEpoch).toBe(1);

    const claimer = new IdempotentProducer(h, 'w', { autoClaim: true });
    claimer.append('c');
    await claimer.flush();
    expect(claimer.epoch).toBe(2);
    await claimer.restart();
    claimer.append('d');
    await claimer.flush();
    expect(claimer.epoch).toBe(3);

    const twin = new IdempotentProducer(h, 'w', { epoch: 3 });
    twin.append('d-again'); // seq 0 of epoch 3 again: a duplicate, not stored
    await twin.flush();
    expect(await (await h.stream({ live: false })).text()).toBe('abcd');
  });

  it('detach() leaves the stream open', async () => {
    const h = await create('producer-detach', { contentType: 'text/plain' });
    const p = new IdempotentProducer(h, 'w');
    p.append('a');
    await p.detach();
    expect((await headOf(h)).streamClosed).toBe(false);
    expect(await (await h.stream({ live: false })).text()).toBe('a');
  });
});

describe('access control through the client hooks', () => {
  it('refuses a request without a token (401) and an operation the token lacks (403)', async () => {
    const e = await rejection(DurableStream.create({ url: url('no-token'), contentType: 'text/plain' }));
    expect(e).toBeInstanceOf(FetchError);
    expect(e.status).toBe(401);
    const h = await DurableStream.create({
      url: url('create-only'),
      contentType: 'text/plain',
      headers: { Authorization: `Bearer ${token(['create'])}` },
    });
    expect((await rejection(h.append('x'))).status).toBe(403);
  });

  it('reads with ?token= from params, catch-up and SSE', async () => {
    const h = await create('params', { contentType: 'text/plain', body: 'a' });
    const reader = new DurableStream({ url: h.url, params: { token: () => token(['read']) } });
    expect(await (await reader.stream({ live: false })).text()).toBe('a');
    const res = await reader.stream({ live: 'sse' });
    const got = untilClosed<string>(res, 'text');
    await sleep(200);
    await h.close({ body: 'b' });
    expect((await got).parts.join('')).toBe('ab');
  });

  it('IdempotentProducer does not send the handle\'s params: a ?token= alone is 401 for it', async () => {
    const h = await create('producer-params', { contentType: 'text/plain' });
    const withParams = new DurableStream({ url: h.url, contentType: 'text/plain', params: { token: full() } });
    await withParams.append('a');
    const errors: FetchError[] = [];
    const p = new IdempotentProducer(withParams, 'w', { onError: (e) => errors.push(e as FetchError) });
    p.append('b');
    await p.flush().catch(() => {});
    expect(errors.map((e) => e.status)).toEqual([401]);
    expect(await (await h.stream({ live: false })).text()).toBe('a');
  });

  it('onError gets the 401 and retries with the headers it returns', async () => {
    const h = await create('refresh', { contentType: 'text/plain', body: 'data' });
    const seen: number[] = [];
    const res = await stream({
      url: h.url,
      live: false,
      headers: { Authorization: 'Bearer not-a-token' },
      onError: async (e) => {
        seen.push((e as FetchError).status);
        return { headers: { Authorization: `Bearer ${token(['read'])}` } };
      },
    });
    expect(seen).toEqual([401]);
    expect(await res.text()).toBe('data');
  });

  it('a long-poll reader outlives its short tokens: the header hook is called again for each request', async () => {
    const h = await create('token-expiry', { contentType: 'text/plain', body: 'a' });
    const res = await stream({ url: h.url, live: 'long-poll', headers: { Authorization: () => `Bearer ${token(['read'], 'interop', 2)}` } });
    const got = untilClosed<string>(res, 'text');
    await sleep(2500);
    await h.append('b');
    await h.close();
    expect((await got).parts.join('')).toBe('ab');
  });
});

// MAX_LIVE_READERS: a stream holds at most that many live readers at once (SSE readers and
// parked long-polls, each an internal socket on the stream's object, and `live=ws` sockets the
// object holds), counted together. One more is refused with 503 and Retry-After before anything
// is held; catch-up reads are not counted; a reader that leaves frees its place, and the count
// holds after the object is evicted from memory with its sockets open.
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { WebSocket } from 'undici';
import { startServer } from '../scripts/dev-server.mjs';
import { handshake } from './support/handshake';
import { stream } from '../js/src/node.js';

// Node 20 has no WebSocket of its own, which the npm client's `live: 'ws'` needs.
(globalThis as { WebSocket?: unknown }).WebSocket ??= WebSocket;

const LIMIT = 3;
let server: Awaited<ReturnType<typeof startServer>>;
const url = (name: string) => `${server.baseUrl}/v1/stream/live-readers/${name}-${Date.now().toString(36)}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const text = { 'content-type': 'text/plain' };

beforeAll(async () => {
  // Heartbeats every 200 ms: the edge learns at its next write that an SSE reader hung up.
  server = await startServer({
    vars: { MAX_LIVE_READERS: String(LIMIT), SSE_HEARTBEAT_MS: '200', LONG_POLL_TIMEOUT_MS: '60000' },
  });
});

afterAll(async () => {
  await server?.stop();
});

type Mode = 'sse' | 'long-poll' | 'ws';

/** A live reader at the tail; resolves once the server holds it (its response began, or its socket opened). */
async function open(stream: string, mode: Mode): Promise<{ close: () => void }> {
  const live = `${stream}?offset=now&live=${mode}`;
  if (mode === 'ws') {
    const ws = new WebSocket(live.replace(/^http/, 'ws'));
    await new Promise<void>((resolve, reject) => {
      ws.addEventListener('open', () => resolve());
      ws.addEventListener('error', () => reject(new Error('ws reader refused')));
    });
    return { close: () => ws.close() };
  }
  const abort = new AbortController();
  const pending = fetch(live, { signal: abort.signal });
  pending.catch(() => {});
  if (mode === 'sse') {
    const res = await pending;
    expect(res.status).toBe(200);
    // Its first event: the object has accepted its socket.
    const reader = res.body!.getReader();
    await reader.read();
  } else {
    // A long-poll answers nothing until an append: it is held once its request reached the
    // object, by then.
    await sleep(500);
  }
  return { close: () => abort.abort() };
}

/** The "status" of a long-poll let in, which has no answer yet. */
const HELD = 0;

/** One more live reader of `mode`: its status, Retry-After and body. */
async function attempt(stream: string, mode: Mode) {
  const live = `${stream}?offset=now&live=${mode}`;
  if (mode === 'ws') {
    const { status, headers, body } = await handshake(live);
    return { status, retryAfter: headers['retry-after'] as string | undefined, body };
  }
  const abort = new AbortController();
  const answer = fetch(live, { signal: abort.signal });
  answer.catch(() => {});
  // A long-poll let in waits for data: no answer within a second means it is held.
  const res = await Promise.race([answer, sleep(1_000).then(() => undefined)]);
  if (res === undefined) {
    abort.abort();
    return { status: HELD, retryAfter: undefined, body: '' };
  }
  const result = { status: res.status, retryAfter: res.headers.get('retry-after') ?? undefined, body: '' };
  if (res.status === 503) result.body = await res.text();
  abort.abort();
  return result;
}

/** Tries a reader of `mode` until one is let in; fails after `ms`. */
async function admittedWithin(stream: string, mode: Mode, ms: number) {
  const deadline = Date.now() + ms;
  for (;;) {
    const { status } = await attempt(stream, mode);
    if (status !== 503) return status;
    if (Date.now() > deadline) throw new Error(`no ${mode} reader let in within ${ms} ms`);
    await sleep(100);
  }
}

const expectRefused = (r: { status: number; retryAfter?: string; body: string }) => {
  expect(r.status).toBe(503);
  expect(Number(r.retryAfter)).toBeGreaterThan(0);
  expect(r.body).toMatch(/too many live readers/);
};

describe.each(['sse', 'long-poll', 'ws'] as Mode[])('%s readers', (mode) => {
  test(`the ${LIMIT + 1}th is refused with 503 and Retry-After; catch-up still reads; a reader that leaves frees its place`, async () => {
    const s = url(mode);
    expect((await fetch(s, { method: 'PUT', headers: text, body: 'abc' })).status).toBe(201);
    const readers = [];
    for (let i = 0; i < LIMIT; i++) readers.push(await open(s, mode));
    try {
      for (const kind of ['sse', 'long-poll', 'ws'] as Mode[]) expectRefused(await attempt(s, kind));
      // Catch-up is not limited: a plain read, and a long-poll with data waiting.
      const read = await fetch(`${s}?offset=-1`);
      expect(read.status).toBe(200);
      expect(await read.text()).toBe('abc');
      const poll = await fetch(`${s}?offset=-1&live=long-poll`);
      expect(poll.status).toBe(200);
      expect(await poll.text()).toBe('abc');
      // Nor are the other streams.
      const other = url(`${mode}-other`);
      await fetch(other, { method: 'PUT', headers: text });
      const elsewhere = await open(other, mode);
      elsewhere.close();
      // One reader leaves: its place goes to the next. (Here a long-poll leaves once answered:
      // wrangler dev's proxy does not tell the Worker that its client hung up; see "a reader
      // whose client hangs up".)
      if (mode === 'long-poll') {
        expect((await fetch(s, { method: 'POST', headers: text, body: 'd' })).status).toBe(204);
        readers.length = 0;
      } else {
        readers.shift()!.close();
      }
      expect(await admittedWithin(s, mode, 10_000)).toBe({ sse: 200, 'long-poll': HELD, ws: 101 }[mode]);
    } finally {
      for (const r of readers) r.close();
    }
  }, 30_000);
});

test('readers of every kind count together, and an append that answers the long-polls frees their places', async () => {
  const s = url('mixed');
  await fetch(s, { method: 'PUT', headers: text });
  const readers = [await open(s, 'sse'), await open(s, 'ws'), await open(s, 'long-poll')];
  try {
    expectRefused(await attempt(s, 'sse'));
    // The long-poll is answered, and its socket closed: a place is free again.
    expect((await fetch(s, { method: 'POST', headers: text, body: 'x' })).status).toBe(204);
    expect(await admittedWithin(s, 'sse', 5_000)).toBe(200);
  } finally {
    for (const r of readers) r.close();
  }
}, 30_000);

/**
 * A live reader of `mode` at the tail over a bare TCP connection to `base`, held once its
 * request has reached the object (an SSE reader: once its first event came); `hangUp` resets
 * the connection, as a client that goes away does.
 */
async function rawReader(base: string, stream: string, mode: 'sse' | 'long-poll') {
  const { hostname, port, host } = new URL(base);
  const socket: Socket = connect(Number(port), hostname);
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  let answer = '';
  socket.on('data', (chunk) => (answer += chunk));
  socket.on('error', () => {});
  socket.write(`GET ${new URL(stream).pathname}?offset=now&live=${mode} HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
  const deadline = Date.now() + 5_000;
  if (mode === 'sse') while (!answer.includes('event: control') && Date.now() < deadline) await sleep(20);
  else await sleep(500);
  return { answer: () => answer, hangUp: () => socket.resetAndDestroy() };
}

describe('a reader whose client hangs up', () => {
  // A server where nothing is written to an idle reader for a minute: no long-poll timeout,
  // and no SSE heartbeat (whose failed write would tell the edge too).
  let quiet: Awaited<ReturnType<typeof startServer>>;
  beforeAll(async () => {
    // FAULT_MARKER (in no path here): a HEAD says how many catch-up pages the object served.
    quiet = await startServer({
      vars: { MAX_LIVE_READERS: String(LIMIT), SSE_HEARTBEAT_MS: '60000', LONG_POLL_TIMEOUT_MS: '60000', FAULT_MARKER: 'never-in-a-path' },
    });
  });
  afterAll(async () => {
    await quiet?.stop();
  });

  test.each(['long-poll', 'sse'] as const)('%s: frees its place at once, not at the next write', async (mode) => {
    // Straight to the Worker's own socket: wrangler dev's proxy in front of it does not pass a
    // client's disconnect on, and workerd's HTTP server notices one when the connection is
    // reset (Cloudflare's front line tells the Worker of any).
    const direct = await quiet.workerUrl();
    const s = `${quiet.baseUrl}/v1/stream/live-readers/hangup-${mode}-${Date.now().toString(36)}`;
    await fetch(s, { method: 'PUT', headers: text });
    const readers = [];
    for (let i = 0; i < LIMIT - 1; i++) readers.push(await open(s, 'ws'));
    try {
      const reader = await rawReader(direct, s, mode);
      expect(reader.answer()).toMatch(mode === 'sse' ? /^HTTP\/1.1 200/ : /^$/);
      expectRefused(await attempt(s, 'ws'));
      reader.hangUp();
      // A refusal stands for a second (Retry-After: 1) before the readers are counted again.
      const hungUp = Date.now();
      expect(await admittedWithin(s, 'ws', 2_500)).toBe(101);
      expect(Date.now() - hungUp).toBeLessThan(3_000);
    } finally {
      for (const r of readers) r.close();
    }
  }, 30_000);

  test('sse: one that hangs up during catch-up stops the pages read for it', async () => {
    // Ten catch-up pages (PAGE_BYTES, 4 MiB each, in worker/src/object/mod.rs). Its reader takes
    // the start, stops reading while the edge waits for it to take the next page, and resets.
    const direct = await quiet.workerUrl();
    const path = `/v1/stream/live-readers/hangup-catch-up-${Date.now().toString(36)}`;
    await fetch(`${direct}${path}`, { method: 'PUT', headers: text });
    const mib = 'x'.repeat(1 << 20);
    for (let i = 0; i < 40; i++) expect((await fetch(`${direct}${path}`, { method: 'POST', headers: text, body: mib })).status).toBe(204);
    const pages = async () => Number((await fetch(`${direct}${path}`, { method: 'HEAD' })).headers.get('x-edgestream-edge-pages'));
    expect(await pages()).toBe(0);
    const { hostname, port, host } = new URL(direct);
    const socket = connect(Number(port), hostname);
    socket.on('error', () => {});
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    let got = 0;
    const paused = new Promise<void>((resolve) =>
      socket.on('data', (chunk: Buffer) => {
        got += chunk.length;
        if (got < 65_536) return;
        socket.pause();
        resolve();
      }),
    );
    socket.write(`GET ${path}?offset=-1&live=sse HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
    await paused;
    await sleep(500);
    const before = await pages();
    expect(before).toBeGreaterThan(0);
    expect(before).toBeLessThan(10);
    socket.resetAndDestroy();
    await sleep(2_000);
    // At most the page it was reading when the client went away.
    expect(await pages()).toBeLessThanOrEqual(before + 1);
  }, 60_000);
});

describe('SSE readers at exactly the limit', () => {
  // Each response ends after about a second, and its reader comes back at once: the edge closes
  // the old internal socket when it ends the response, so the object has let go of it by the
  // time the reconnect arrives, and the reconnect is never refused.
  let brief: Awaited<ReturnType<typeof startServer>>;
  beforeAll(async () => {
    brief = await startServer({
      vars: { MAX_LIVE_READERS: String(LIMIT), SSE_CONNECTION_MS: '1000', SSE_HEARTBEAT_MS: '60000' },
    });
  });
  afterAll(async () => {
    await brief?.stop();
  });

  test('reconnecting at SSE_CONNECTION_MS are let in again, not refused while their old socket closes', async () => {
    const s = `${brief.baseUrl}/v1/stream/live-readers/reconnect-${Date.now().toString(36)}`;
    await fetch(s, { method: 'PUT', headers: text });
    const until = Date.now() + 6_000;
    const refusals: number[] = [];
    let connections = 0;
    const reader = async () => {
      while (Date.now() < until) {
        const res = await fetch(`${s}?offset=now&live=sse`);
        if (res.status !== 200) {
          refusals.push(res.status);
          await res.text();
          await sleep(1_000);
          continue;
        }
        connections++;
        const body = res.body!.getReader();
        while (!(await body.read()).done);
      }
    };
    await Promise.all(Array.from({ length: LIMIT }, reader));
    expect(refusals).toEqual([]);
    expect(connections).toBeGreaterThanOrEqual(LIMIT * 4);
  }, 30_000);
});

test('the count holds after the object is evicted with its sockets open', async () => {
  const s = url('evicted');
  await fetch(s, { method: 'PUT', headers: text });
  const readers = [];
  for (let i = 0; i < LIMIT; i++) readers.push(await open(s, 'ws'));
  try {
    // Longer than workerd's eviction delay for an object with no request in flight.
    await sleep(15_000);
    const res = await fetch(`${s}?offset=-1`);
    expect(res.headers.get('server-timing') ?? '').toContain('cold-start');
    expectRefused(await attempt(s, 'ws'));
    expectRefused(await attempt(s, 'sse'));
  } finally {
    for (const r of readers) r.close();
  }
}, 40_000);

test('the npm client takes the 503 for a pause, backs off, and reads once a place is free', async () => {
  const s = url('client');
  await fetch(s, { method: 'PUT', headers: text, body: 'a' });
  const readers = [];
  for (let i = 0; i < LIMIT; i++) readers.push(await open(s, 'ws'));
  const abort = new AbortController();
  try {
    for (const live of ['sse', 'long-poll', 'ws'] as const) {
      const h = stream({ url: s, live, offset: 'now', json: false, signal: abort.signal, retry: { initialDelayMs: 50, maxDelayMs: 200 } });
      const got = (async () => {
        for await (const batch of h) if (batch.bytes.length > 0) return new TextDecoder().decode(batch.bytes);
      })();
      await sleep(1_500);
      expect(h.retrying).toBe(true);
      // A place frees, and the reader gets in and reads what comes next.
      readers.shift()!.close();
      if (live === 'long-poll') {
        // A waiting long-poll has no answer yet (it is `retrying` until one comes); it reads on
        // from its offset, so an append made before it gets in reaches it too.
        await sleep(2_500);
      } else {
        // `offset: 'now'` reads from wherever the tail is when the reader gets in.
        const deadline = Date.now() + 10_000;
        while (h.retrying && Date.now() < deadline) await sleep(50);
        expect(h.retrying).toBe(false);
      }
      expect((await fetch(s, { method: 'POST', headers: text, body: `after-${live}` })).status).toBe(204);
      expect(await got).toBe(`after-${live}`);
      h.cancel();
      readers.push(await openWhenFree(s));
    }
  } finally {
    abort.abort();
    for (const r of readers) r.close();
  }
}, 60_000);

/** Refills the place the client's reader took once it has let go of it. */
async function openWhenFree(s: string) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      return await open(s, 'ws');
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await sleep(100);
    }
  }
}

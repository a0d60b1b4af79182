// BODY_BUDGET_BYTES (worker/src/intake.rs): request bodies held in the isolate at once share one
// budget, counted as their bytes arrive, so concurrent large appends cannot add up past an
// isolate's memory. A body that would take the isolate past it is answered 503 with Retry-After,
// nothing of it stored, and goes through when retried; one body of any accepted size always goes
// through alone; a client that declares a large body and sends it slowly holds only what it has
// sent; and a body's share is given back however its request ends (answered, refused, or
// abandoned by its client).
// Requests go to the Worker's own workerd socket, as in production: wrangler dev's local proxy
// forwards a chunked upload whose client went away as if it were complete (docs/reliability.md).
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';

const KIB = 1024;
const BUDGET = 1024 * KIB;
const MAX_APPEND = 4 * BUDGET;
let server: Awaited<ReturnType<typeof startServer>>;
let worker: URL;

beforeAll(async () => {
  server = await startServer({ vars: { BODY_BUDGET_BYTES: String(BUDGET), MAX_APPEND_BYTES: String(MAX_APPEND) } });
  worker = new URL(await server.workerUrl());
});

afterAll(async () => {
  await server?.stop();
});

let counter = 0;
const unique = (prefix: string) => `/v1/stream/${prefix}-${process.pid}-${Date.now()}-${counter++}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const OCTETS = { 'content-type': 'application/octet-stream' };

type Reply = { status: number; headers: http.IncomingHttpHeaders; body: Buffer };

/**
 * A request whose body is sent in two parts: `first`, then, when `finish()` is called, the rest.
 * With `chunked` it declares no length. `abort()` drops the connection instead.
 */
function upload(method: string, path: string, body: Buffer, first: number, chunked = false, to = worker, extra: http.OutgoingHttpHeaders = {}) {
  const headers: http.OutgoingHttpHeaders = { ...OCTETS, ...extra };
  if (!chunked) headers['content-length'] = body.length;
  const req = http.request({ host: to.hostname, port: to.port, method, path, headers, agent: false });
  const reply = new Promise<Reply>((resolve, reject) => {
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
  req.write(body.subarray(0, first));
  return {
    reply,
    finish() {
      req.end(body.subarray(first));
      return reply;
    },
    abort() {
      reply.catch(() => {});
      req.destroy();
    },
  };
}

/** A request sent whole. */
const send = (method: string, path: string, body: Buffer, chunked = false) => upload(method, path, body, body.length, chunked).finish();

async function create(path: string) {
  expect((await send('PUT', path, Buffer.alloc(0))).status).toBe(201);
}

async function read(path: string) {
  const res = await fetch(`${worker.origin}${path}?offset=-1`);
  expect(res.status).toBe(200);
  return Buffer.from(await res.arrayBuffer());
}

function expectBusy(reply: Reply) {
  expect(reply.status).toBe(503);
  expect(reply.headers['retry-after']).toBe('1');
  expect(reply.body.toString()).toMatch(/retry/);
}

/** Bytes that say where they come from, so a mix-up shows in the comparison. */
const body = (size: number, fill: number) => Buffer.alloc(size, fill);

/**
 * Starts an append of `size` bytes and sends `sent` of them (all but the last KiB by default):
 * once they have arrived, the object holds them as the body's share.
 */
async function held(path: string, size: number, fill: number, chunked = false, sent = size - KIB) {
  const up = upload('POST', path, body(size, fill), sent, chunked);
  await sleep(1000);
  return up;
}

describe('the isolate budget for request bodies (BODY_BUDGET_BYTES)', () => {
  it('refuses a body that would pass the budget with 503 and Retry-After, stores none of it, and takes it on retry', async () => {
    const path = unique('busy');
    await create(path);
    const first = await held(path, 700 * KIB, 1);
    // Declared, chunked, and a create with a body: each would pass the budget.
    expectBusy(await send('POST', path, body(700 * KIB, 2)));
    expectBusy(await send('POST', path, body(700 * KIB, 2), true));
    const other = unique('busy-create');
    expectBusy(await send('PUT', other, body(700 * KIB, 3)));
    // Small enough to fit beside the held one.
    expect((await send('POST', path, body(200 * KIB, 4))).status).toBe(204);
    expect((await first.finish()).status).toBe(204);
    expect((await send('POST', path, body(700 * KIB, 2))).status).toBe(204);
    expect((await send('PUT', other, body(700 * KIB, 3))).status).toBe(201);
    expect((await read(path)).equals(Buffer.concat([body(200 * KIB, 4), body(700 * KIB, 1), body(700 * KIB, 2)]))).toBe(true);
    expect((await read(other)).equals(body(700 * KIB, 3))).toBe(true);
  });

  it('leaves small appends the last sixteenth of the budget while large uploads hold the rest', async () => {
    const path = unique('reserve');
    await create(path);
    // Two large uploads that would take all but 6 KiB of the budget: the second is refused
    // once it reaches the large bodies' part (1 MiB less 64 KiB), as it would be past the budget.
    const first = await held(path, 700 * KIB, 1);
    const second = await held(path, 320 * KIB, 2);
    try {
      // A small append goes through beside them (before, it got 503 until a large one ended).
      expect((await send('POST', path, body(10 * KIB, 3))).status).toBe(204);
      expect((await send('POST', path, body(10 * KIB, 4), true)).status).toBe(204);
    } catch (e) {
      first.abort();
      second.abort();
      throw e;
    }
    expectBusy(await second.finish());
    expect((await first.finish()).status).toBe(204);
    expect((await read(path)).equals(Buffer.concat([body(10 * KIB, 3), body(10 * KIB, 4), body(700 * KIB, 1)]))).toBe(true);
  });

  it("lets a producer's next append past the budget held by its later ones, which wait for it", async () => {
    const path = unique('producer');
    await create(path);
    const producer = (seq: number) => ({ 'producer-id': 'p', 'producer-epoch': '0', 'producer-seq': String(seq) });
    // Its second append reached the server first and holds 699 KiB.
    const second = upload('POST', path, body(700 * KIB, 2), 699 * KIB, false, worker, producer(1));
    await sleep(1000);
    // The first would take the budget past its limit: refused, it left the second to time out
    // (409), and a client sending several at once got neither through.
    const first = await upload('POST', path, body(400 * KIB, 1), 400 * KIB, false, worker, producer(0)).finish();
    if (first.status !== 200) second.abort();
    expect(first.status, first.body.toString()).toBe(200);
    expect((await second.finish()).status).toBe(200);
    expect((await read(path)).equals(Buffer.concat([body(400 * KIB, 1), body(700 * KIB, 2)]))).toBe(true);
  });

  it('counts a declared body as it arrives: one that is sent slowly holds only what has come', async () => {
    const path = unique('slow');
    await create(path);
    const slow = await held(path, 900 * KIB, 1, false, 64 * KIB);
    // Had the declared 900 KiB been reserved, 700 KiB more would pass the 1 MiB budget.
    expect((await send('POST', path, body(700 * KIB, 2))).status).toBe(204);
    expect((await slow.finish()).status).toBe(204);
    expect((await read(path)).equals(Buffer.concat([body(700 * KIB, 2), body(900 * KIB, 1)]))).toBe(true);
  });

  it('lets one body larger than the budget through when it is the only one', async () => {
    const path = unique('alone');
    await create(path);
    for (const chunked of [false, true]) {
      expect((await send('POST', path, body(2 * BUDGET, 5), chunked)).status).toBe(204);
    }
    expect((await read(path)).length).toBe(4 * BUDGET);
  });

  it('gives a share back however the request ends: refused by the stream, too large, or abandoned by its client', async () => {
    const path = unique('released');
    await create(path);
    // A 409 (wrong content type) after its body was read.
    const wrongType = await new Promise<number>((resolve, reject) => {
      const req = http.request(
        { host: worker.hostname, port: worker.port, method: 'POST', path, headers: { 'content-type': 'text/plain' }, agent: false },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      );
      req.on('error', reject);
      req.end(body(700 * KIB, 6));
    });
    expect(wrongType).toBe(409);
    // A streamed body that grows past MAX_APPEND_BYTES: 413 once its share was past the budget.
    expect((await send('POST', path, body(MAX_APPEND + KIB, 6), true)).status).toBe(413);
    // Uploads whose clients go away in the middle of their bodies, declared and chunked.
    for (const chunked of [false, true]) (await held(path, 700 * KIB, 7, chunked)).abort();
    await sleep(1000);
    // Were any of their shares still counted, the 600 KiB append below, sent while this one
    // holds 300 KiB, would pass the budget and be refused.
    const waiting = await held(path, 300 * KIB, 8);
    expect((await send('POST', path, body(600 * KIB, 9))).status).toBe(204);
    expect((await waiting.finish()).status).toBe(204);
    // Nothing of the abandoned uploads was stored.
    expect((await read(path)).equals(Buffer.concat([body(600 * KIB, 9), body(300 * KIB, 8)]))).toBe(true);
  });
});

describe('a paused upload (BODY_IDLE_TIMEOUT_MS)', () => {
  // Its own server, with a short idle time: the tests above pause uploads on purpose.
  let paused: Awaited<ReturnType<typeof startServer>>;
  let origin: URL;
  beforeAll(async () => {
    paused = await startServer({ vars: { BODY_BUDGET_BYTES: String(BUDGET), BODY_IDLE_TIMEOUT_MS: '1000' } });
    origin = new URL(await paused.workerUrl());
  });
  afterAll(async () => {
    await paused?.stop();
  });

  /** An append of `size` bytes, of which only `sent` are sent: the rest never comes. */
  const stalled = (path: string, size: number, sent: number) => upload('POST', path, body(size, 9), sent, false, origin);
  const post = async (path: string, bytes: Buffer) =>
    (await fetch(`${origin.origin}${path}`, { method: 'POST', headers: OCTETS, body: new Uint8Array(bytes) })).status;

  it('is refused with 408 once nothing arrives for the idle time, and gives its share of the budget back', async () => {
    const path = unique('paused');
    expect((await fetch(`${origin.origin}${path}`, { method: 'PUT', headers: OCTETS })).status).toBe(201);
    const started = Date.now();
    // A large body counted as it arrives, and a small one reserved whole: both pause.
    const large = stalled(path, 900 * KIB, 800 * KIB);
    const small = stalled(path, 10 * KIB, KIB);
    await sleep(300);
    // Meanwhile the paused body holds its share.
    expect(await post(path, body(700 * KIB, 2))).toBe(503);
    for (const up of [large, small]) {
      const reply = await up.reply;
      expect(reply.status).toBe(408);
      expect(reply.body.toString()).toMatch(/stopped arriving/);
      up.abort();
    }
    expect(Date.now() - started).toBeLessThan(10_000);
    // Its share is back, and nothing of it was stored.
    expect(await post(path, body(700 * KIB, 2))).toBe(204);
    const stored = Buffer.from(await (await fetch(`${origin.origin}${path}?offset=-1`)).arrayBuffer());
    expect(stored.equals(body(700 * KIB, 2))).toBe(true);
  }, 30_000);
});

// Durability under faults (`npm run test:slow`): writers append (plain and idempotent
// producers) while the local server is killed with SIGKILL at random moments and restarted;
// readers follow over SSE and WebSocket throughout. Afterwards every acknowledged append is
// present exactly once and in order, producer retries made no duplicates, and each reader
// ended with exactly the stream's bytes.
//
// CHAOS_KILLS (default 8) sets the number of kills; CHAOS_SEED makes the timing repeatable.
import { afterAll, beforeAll, expect, test } from 'vitest';
import { WebSocket } from 'undici';
import { startServer } from '../../scripts/dev-server.mjs';
import { seeded } from '../support/random';
import { sseEvents } from '../support/sse';

const KILLS = Number(process.env.CHAOS_KILLS ?? 8);
const SEED = Number(process.env.CHAOS_SEED ?? Date.now() % 1_000_000);
const PLAIN_WRITERS = 3;
const PRODUCERS = 3;

let server: Awaited<ReturnType<typeof startServer>>;
const streamUrl = (name: string) => `${server.baseUrl}/v1/stream/chaos/${name}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const random = seeded(SEED).next;

beforeAll(async () => {
  server = await startServer({ vars: { LONG_POLL_TIMEOUT_MS: '1000', SSE_CONNECTION_MS: '5000' } });
});

afterAll(async () => {
  await server?.stop();
});

/** fetch that reports a dead server as `undefined` instead of throwing. */
async function attempt(url: string, init: RequestInit = {}): Promise<{ status: number; text: string } | undefined> {
  try {
    const res = await fetch(url, { ...init, signal: AbortSignal.timeout(10_000) });
    return { status: res.status, text: await res.text() };
  } catch {
    return undefined;
  }
}

/** Retries an idempotent request until the server answers it. */
async function until(url: string, init: RequestInit = {}) {
  for (;;) {
    const reply = await attempt(url, init);
    if (reply && reply.status < 500) return reply;
    await sleep(100);
  }
}

type Totals = { acked: number; unknown: number; duplicates: number; kills: number };
const totals: Totals = { acked: 0, unknown: 0, duplicates: 0, kills: 0 };

/** A plain writer: one POST per token; an unanswered POST may or may not have landed. */
async function plainWriter(i: number, stop: () => boolean) {
  const acked: number[] = [];
  const unknown = new Set<number>();
  for (let n = 0; !stop(); n++) {
    const reply = await attempt(streamUrl(`plain-${i}`), {
      method: 'POST',
      headers: { 'content-type': 'text/plain' },
      body: `w${i}-${n};`,
    });
    if (reply?.status === 204) acked.push(n);
    else if (reply === undefined || reply.status >= 500) {
      unknown.add(n);
      await sleep(50 + random() * 150);
    } else throw new Error(`plain-${i}: append ${n} got ${reply.status} ${reply.text}`);
  }
  totals.acked += acked.length;
  totals.unknown += unknown.size;
  return { acked, unknown };
}

/** An idempotent producer: retries each seq until it is acknowledged (200, or 204 duplicate). */
async function producer(i: number, stop: () => boolean) {
  let seq = 0;
  for (; !stop(); seq++) {
    for (;;) {
      const reply = await attempt(streamUrl(`prod-${i}`), {
        method: 'POST',
        headers: {
          'content-type': 'text/plain',
          'producer-id': `producer-${i}`,
          'producer-epoch': '0',
          'producer-seq': String(seq),
        },
        body: `p${i}-${seq};`,
      });
      if (reply?.status === 200) break;
      if (reply?.status === 204) {
        totals.duplicates++; // it landed before the crash; the retry was recognised
        break;
      }
      if (reply && reply.status < 500) throw new Error(`prod-${i}: seq ${seq} got ${reply.status} ${reply.text}`);
      await sleep(50 + random() * 150);
    }
    totals.acked++;
  }
  return seq;
}

type Followed = { bytes: Buffer; checkpoints: [string, number][]; connections: number };

/**
 * What a follower has seen. Data counts only once its control has arrived; a dropped
 * connection discards the rest, and the next one resumes from the last control's offset.
 */
class Follower {
  offset = '-1';
  closed = false;
  connections = 0;
  private committed: Buffer[] = [];
  private length = 0;
  private pending: Buffer[] = [];
  private checkpoints: [string, number][] = [];

  connected() {
    this.connections++;
    this.pending = [];
  }

  data(bytes: Buffer) {
    this.pending.push(bytes);
  }

  control(control: { streamNextOffset: string; streamClosed?: boolean }) {
    for (const b of this.pending) {
      this.committed.push(b);
      this.length += b.length;
    }
    this.pending = [];
    this.offset = control.streamNextOffset;
    this.checkpoints.push([this.offset, this.length]);
    if (control.streamClosed) this.closed = true;
  }

  result(): Followed {
    return { bytes: Buffer.concat(this.committed), checkpoints: this.checkpoints, connections: this.connections };
  }
}

/** Follows over SSE from -1 until the stream closes, reconnecting whenever the connection drops. */
async function followSse(name: string): Promise<Followed> {
  const f = new Follower();
  while (!f.closed) {
    try {
      const res = await fetch(`${streamUrl(name)}?offset=${encodeURIComponent(f.offset)}&live=sse`);
      if (res.status !== 200 || !res.body) throw new Error(`status ${res.status}`);
      f.connected();
      for await (const { event, data } of sseEvents(res.body)) {
        if (event === 'data') f.data(Buffer.from(data));
        else if (event === 'control') f.control(JSON.parse(data));
      }
    } catch {
      // dropped by a kill: resume from the last control
    }
    if (!f.closed) await sleep(100 + random() * 200);
  }
  return f.result();
}

/**
 * The same over `live=ws`: binary messages are data, text messages are controls. With
 * `receipts` the socket offers edgestream.v3, as the edgestream client does: its binary messages
 * start with a header that may hold their batch's control, and it answers each control with a
 * receipt.
 */
async function followWs(name: string, receipts = false): Promise<Followed> {
  const combined = receipts;
  const f = new Follower();
  while (!f.closed) {
    await new Promise<void>((resolve) => {
      const url = `${streamUrl(name).replace('http', 'ws')}?offset=${encodeURIComponent(f.offset)}&live=ws`;
      const ws = new WebSocket(url, receipts ? ['edgestream.v3'] : []);
      ws.binaryType = 'arraybuffer';
      const receipt = (control: { streamNextOffset: string }) => {
        f.control(control);
        if (receipts) ws.send(JSON.stringify({ type: 'received', offset: control.streamNextOffset }));
      };
      ws.addEventListener('open', () => f.connected());
      ws.addEventListener('message', (e) => {
        if (typeof e.data !== 'string' && combined) {
          const bytes = Buffer.from(e.data as ArrayBuffer);
          const length = bytes.readUInt32BE(0);
          f.data(bytes.subarray(4 + length));
          if (length > 0) receipt(JSON.parse(bytes.subarray(4, 4 + length).toString()));
        } else if (typeof e.data !== 'string') f.data(Buffer.from(e.data as ArrayBuffer));
        else {
          const message = JSON.parse(e.data);
          if (message.type === 'control') receipt(message);
        }
      });
      ws.addEventListener('close', () => resolve());
      ws.addEventListener('error', () => {
        try {
          ws.close();
        } catch {}
      });
    });
    if (!f.closed) await sleep(100 + random() * 200);
  }
  return f.result();
}

/** Tokens `<tag><n>;` of one writer, in stream order. */
function tokens(text: string, tag: string): number[] {
  return text
    .split(';')
    .filter((t) => t.length > 0)
    .map((t) => {
      expect(t.startsWith(tag), `unexpected token ${t}`).toBe(true);
      return Number(t.slice(tag.length));
    });
}

test(`acknowledged appends survive ${KILLS} SIGKILLs exactly once, and SSE and WebSocket readers end with the exact bytes (seed ${SEED})`, async () => {
  for (let i = 0; i < PLAIN_WRITERS; i++) {
    expect((await until(streamUrl(`plain-${i}`), { method: 'PUT', headers: { 'content-type': 'text/plain' } })).status).toBe(201);
  }
  for (let i = 0; i < PRODUCERS; i++) {
    expect((await until(streamUrl(`prod-${i}`), { method: 'PUT', headers: { 'content-type': 'text/plain' } })).status).toBe(201);
  }
  const followed = ['plain-0', 'prod-0'];
  const kinds = ['SSE', 'WebSocket', 'WebSocket (edgestream.v3, with receipts)'];
  const readers = followed.flatMap((name) => [followSse(name), followWs(name), followWs(name, true)]);

  let stopping = false;
  const stop = () => stopping;
  const plain = Array.from({ length: PLAIN_WRITERS }, (_, i) => plainWriter(i, stop));
  const producers = Array.from({ length: PRODUCERS }, (_, i) => producer(i, stop));

  const started = Date.now();
  for (let k = 0; k < KILLS; k++) {
    await sleep(700 + random() * 2300);
    await server.restart({ hard: true });
    totals.kills++;
  }
  await sleep(1000);
  stopping = true;
  const plainResults = await Promise.all(plain);
  const producerSeqs = await Promise.all(producers);

  // Readers end when the followed streams close.
  for (const name of followed) {
    const reply = await until(streamUrl(name), { method: 'POST', headers: { 'stream-closed': 'true' } });
    expect(reply.status).toBe(204);
  }
  const results = await Promise.all(readers);

  // Plain writers: every acknowledged token once, in order; unacknowledged ones at most once.
  const finals = new Map<string, string>();
  for (let i = 0; i < PLAIN_WRITERS; i++) {
    const text = (await until(`${streamUrl(`plain-${i}`)}?offset=-1`)).text;
    finals.set(`plain-${i}`, text);
    const seen = tokens(text, `w${i}-`);
    expect(new Set(seen).size, `plain-${i} has a duplicate`).toBe(seen.length);
    expect([...seen].sort((a, b) => a - b), `plain-${i} is out of order`).toEqual(seen);
    const present = new Set(seen);
    const { acked, unknown } = plainResults[i];
    for (const n of acked) expect(present.has(n), `plain-${i}: acknowledged append ${n} is missing`).toBe(true);
    for (const n of seen) expect(acked.includes(n) || unknown.has(n), `plain-${i}: ${n} was never sent`).toBe(true);
  }
  // Producers: exactly seqs 0..N-1, once each, in order, despite the retries.
  for (let i = 0; i < PRODUCERS; i++) {
    const text = (await until(`${streamUrl(`prod-${i}`)}?offset=-1`)).text;
    finals.set(`prod-${i}`, text);
    expect(tokens(text, `p${i}-`)).toEqual(Array.from({ length: producerSeqs[i] }, (_, n) => n));
  }
  // Readers: the exact bytes, and every offset they saw still reads as the right suffix.
  for (let r = 0; r < results.length; r++) {
    const name = followed[Math.floor(r / kinds.length)];
    const text = finals.get(name)!;
    const { bytes, checkpoints, connections } = results[r];
    expect(bytes.toString(), `${kinds[r % kinds.length]} reader of ${name}`).toBe(text);
    expect(connections).toBeGreaterThan(KILLS / 2);
    for (const [offset, length] of checkpoints.filter((_, i) => i % 7 === 0)) {
      const suffix = await until(`${streamUrl(name)}?offset=${encodeURIComponent(offset)}`);
      expect(suffix.text).toBe(text.slice(length));
    }
  }
  const seconds = ((Date.now() - started) / 1000).toFixed(0);
  const readBytes = results.reduce((n, r) => n + r.bytes.length, 0);
  const reconnects = results.reduce((n, r) => n + r.connections, 0);
  console.log(
    `chaos: ${totals.kills} SIGKILLs in ${seconds} s; ${totals.acked} acknowledged appends checked ` +
      `(${totals.unknown} unanswered plain appends, ${totals.duplicates} producer retries recognised as duplicates); ` +
      `${results.length} readers (${kinds.join(', ')}) ended with the exact ${readBytes} bytes over ${reconnects} connections; seed ${SEED}`,
  );
}, 600_000);

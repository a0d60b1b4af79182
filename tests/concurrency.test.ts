// Many clients at once against a few stream paths: plain appends (some with Stream-Seq, some
// over 1 MiB), closing appends and idempotent-producer appends (parallel retries of one seq,
// several seqs in flight at once, epoch bumps racing with appends, two writers sharing a
// producer id), append frames on `live=ws` sockets, close-only POSTs, DELETE and PUT racing with
// all of it, forks of streams being written, closed and deleted, catch-up reads and HEADs, while
// SSE, long-poll and `live=ws` readers follow. Every answer is recorded with when it was sent and answered, and afterwards
// the history is checked (nothing here asserts on timing):
//   - no 5xx but 503 with Retry-After, and no panic or trap in wrangler's log;
//   - every read, HEAD, reader and acknowledgement of an incarnation (`Stream-Incarnation`)
//     agrees with every other on each byte position they both know, and no bytes are known past
//     where the incarnation was said to be closed;
//   - an acknowledged append is at the offset it was acknowledged with in every later read from
//     before its end, unless a DELETE may have come between;
//   - a close acknowledged with an offset: every later read shows the stream closed there, and no
//     append sent after it is acknowledged (unless a DELETE may have come between);
//   - a later HEAD's tail is not before an acknowledged append's end, and a producer's append
//     answered as a duplicate is in later reads;
//   - a token is in an incarnation at most once, a producer's (epoch, seq) at most once and in
//     increasing order, and Stream-Seq values in increasing order;
//   - a live reader's controls advance exactly by the bytes it got (no gap, no duplicate), all
//     in the one incarnation its response or socket names;
//   - a fork's inherited bytes are its source's (an incarnation of it) up to the fork offset;
//   - equal ETags mean equal answers, and equal reads give equal ETags.
// Some rounds SIGKILL wrangler's process group mid-run and restart it on the same state.
//
// CONC_SEED replays a run (as far as timing allows: the history is checked, not predicted);
// CONC_ROUNDS (default 2), CONC_CLIENTS (12), CONC_OPS (30 per client) and CONC_KILL_ROUNDS (1:
// how many of the rounds, the last ones, kill the server) scale it up. CONC_TRACE=<file prefix>
// writes each round's requests and answers, in time order, and wrangler's log.
import { afterAll, beforeAll, expect, test } from 'vitest';
import { writeFileSync } from 'node:fs';
import { WebSocket } from 'undici';
import { startServer } from '../scripts/dev-server.mjs';
import { seeded } from './support/random';
import { sseEvents } from './support/sse';

const ROUNDS = Number(process.env.CONC_ROUNDS ?? 2);
const CLIENTS = Number(process.env.CONC_CLIENTS ?? 12);
const OPS = Number(process.env.CONC_OPS ?? 30);
const KILL_ROUNDS = Number(process.env.CONC_KILL_ROUNDS ?? 1);
const FIRST_SEED = Number(process.env.CONC_SEED ?? 1 + (Date.now() % 100_000));

let server: Awaited<ReturnType<typeof startServer>>;

beforeAll(async () => {
  server = await startServer({ vars: { LONG_POLL_TIMEOUT_MS: '1000', SSE_CONNECTION_MS: '2000' } });
});

afterAll(async () => {
  await server?.stop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.now();
const pos = (offset: string) => Number(offset.split('_')[1]);
const wire = (position: number) => `0000000000000000_${String(position).padStart(16, '0')}`;
const TEXT = { 'content-type': 'text/plain' };
const BAD_LOG = /panicked|RuntimeError|unreachable|Uncaught|internal error/i;
/**
 * The lines of wrangler's log that say something went wrong, without workerd's stack lines and
 * the runtime's note of a catch-up body broken off by design when its stream was deleted.
 */
const badLines = (log: string) =>
  log
    .split('\n')
    .filter((l) => BAD_LOG.test(l) && !/^\s*stack:/.test(l) && !l.includes('stream deleted mid-response: body broken off'))
    .map((l) => l.slice(0, 300));

type Reply = { status: number; headers: Headers; body: string } | undefined;

/** What one incarnation of one path is known to hold. */
/** What one incarnation of one path is known to hold: bytes at positions, some unknown. */
class Known {
  data = new Uint8Array(1024);
  has = new Uint8Array(1024);
  /** The end of the furthest byte known. */
  length = 0;
  closedAt?: number;
  /** The byte at `i` as a one-character string, if known. */
  at(i: number) {
    return i < this.length && this.has[i] ? String.fromCharCode(this.data[i]) : undefined;
  }
  set(i: number, b: number) {
    if (i >= this.data.length) {
      let size = this.data.length;
      while (size <= i) size *= 2;
      const data = new Uint8Array(size);
      data.set(this.data);
      const has = new Uint8Array(size);
      has.set(this.has);
      this.data = data;
      this.has = has;
    }
    this.data[i] = b;
    this.has[i] = 1;
    this.length = Math.max(this.length, i + 1);
  }
  /** The known bytes from 0 up to the first unknown one. */
  prefix() {
    let end = 0;
    while (end < this.length && this.has[end]) end++;
    return Buffer.from(this.data.subarray(0, end)).toString('latin1');
  }
}

class History {
  violations: string[] = [];
  known = new Map<string, Known>(); // `${path} ${incarnation}` →
  /** Acknowledged appends: the token ends at `end`. */
  acks: { path: string; token: string; end: number; start: number; done: number; closing: boolean }[] = [];
  closes: { path: string; at: number; start: number; done: number }[] = [];
  deletes: { path: string; start: number; done: number }[] = [];
  /** Catch-up reads: [from, to) of incarnation `inc`. */
  reads: { path: string; inc: string; from: number; to: number; body: string; closed: boolean; start: number; done: number }[] = [];
  /** HEADs: the tail of incarnation `inc`. */
  heads: { path: string; inc: string; tail: number; start: number; done: number }[] = [];
  /** Producer appends answered as duplicates (204): that (id, epoch, seq) is stored. */
  duplicates: { path: string; id: string; epoch: number; seq: number; start: number; done: number }[] = [];
  etags = new Map<string, string>();
  etagOf = new Map<string, string>();
  forks: { path: string; source: string; at: number }[] = [];
  counts: Record<string, number> = {};
  trace: string[] = [];
  /** Plain tokens → the path they were sent to. */
  sent = new Map<string, string>();
  /** Plain tokens sent with a Stream-Seq → it. */
  streamSeqs = new Map<string, string>();

  fail(what: string) {
    if (this.violations.length < 50) this.violations.push(what);
  }
  count(what: string) {
    this.counts[what] = (this.counts[what] ?? 0) + 1;
  }
  entry(path: string, inc: string): Known {
    const key = `${path} ${inc}`;
    let k = this.known.get(key);
    if (!k) this.known.set(key, (k = new Known()));
    return k;
  }
  /** `bytes` were read at `from` of this incarnation. */
  observe(path: string, inc: string | null, from: number, bytes: string, who: string) {
    if (!inc) return this.fail(`${who}: no Stream-Incarnation on a read of ${path}`);
    const k = this.entry(path, inc);
    for (let i = 0; i < bytes.length; i++) {
      const at = from + i;
      const b = bytes.charCodeAt(i);
      if (at >= k.length || !k.has[at]) k.set(at, b);
      else if (k.data[at] !== b) {
        const theirs = Array.from({ length: 12 }, (_, j) => k.at(at + j) ?? '?').join('');
        return this.fail(`${who}: ${path} (${inc}) byte ${at} is ${JSON.stringify(bytes.slice(i, i + 12))}, others saw ${JSON.stringify(theirs)}`);
      }
    }
    if (k.closedAt !== undefined && from + bytes.length > k.closedAt) this.fail(`${who}: ${path} (${inc}) has bytes up to ${from + bytes.length}, past its close at ${k.closedAt}`);
  }
  /**
   * What a live reader got from `at` up to an offset it was told (`next`, a control's or a
   * long-poll's): exactly those bytes, as everyone else read them, and the close if it says so.
   */
  span(kind: string, path: string, inc: string | null, at: number, bytes: string, next: number, closed: boolean, who: string) {
    if (next !== at + bytes.length) this.fail(`${who}: ${kind} says ${next} after ${bytes.length} bytes from ${at}`);
    this.observe(path, inc, at, bytes, who);
    this.count(kind);
    if (closed) this.closedAt(path, inc, next, who);
  }
  closedAt(path: string, inc: string | null, at: number, who: string) {
    if (!inc) return;
    const k = this.entry(path, inc);
    if (k.closedAt !== undefined && k.closedAt !== at) this.fail(`${who}: ${path} (${inc}) closed at ${at}, earlier seen closed at ${k.closedAt}`);
    k.closedAt = at;
    if (k.length > at) this.fail(`${who}: ${path} (${inc}) closed at ${at} but bytes up to ${k.length} were read`);
  }
  /**
   * A DELETE of `path` that may have taken effect between an operation that started at `a` and
   * one that ended at `b`: it may be ordered anywhere within the time it was in flight.
   */
  deletedBetween(path: string, a: number, b: number) {
    return this.deletes.some((d) => d.path === path && d.done > a && d.start < b);
  }
}

/** fetch that reports a dead server as `undefined`. */
async function send(h: History, url: string, init: RequestInit = {}): Promise<Reply> {
  const start = now();
  const line = `${(init.method ?? 'GET').padEnd(6)} ${url.replace(/^.*\/conc\/[^/]*\//, '')} ${JSON.stringify(init.headers ?? {})} ${typeof init.body === 'string' ? init.body.slice(0, 40) : ''}`;
  try {
    const res = await fetch(url, { ...init, signal: init.signal ?? AbortSignal.timeout(20_000) });
    const body = init.method === 'HEAD' ? '' : await res.text();
    h.trace.push(`${start.toFixed(1)}..${now().toFixed(1)} ${line} → ${res.status} next=${res.headers.get('stream-next-offset')?.replace(/^0+_0*/, '')} inc=${res.headers.get('stream-incarnation')} closed=${res.headers.get('stream-closed')} ${body.slice(0, 80)}`);
    if (res.status >= 500 && !(res.status === 503 && res.headers.get('retry-after'))) {
      h.fail(`${init.method ?? 'GET'} ${url} got ${res.status}: ${body.slice(0, 200)}`);
    }
    return { status: res.status, headers: res.headers, body };
  } catch (e) {
    h.trace.push(`${start.toFixed(1)}..${now().toFixed(1)} ${line} → ${(e as Error).message}`);
    await sleep(100); // the server is down (a SIGKILL round): do not spin
    return undefined;
  }
}

function expectStatus(h: History, what: string, reply: Reply, allowed: number[]) {
  if (reply && !allowed.includes(reply.status) && reply.status !== 503) h.fail(`${what}: unexpected ${reply.status} ${reply.body.slice(0, 200)}`);
}

type Round = {
  h: History;
  r: ReturnType<typeof seeded>;
  base: string;
  paths: string[];
  stopped: boolean;
  forkCount: number;
  streamSeq: number;
  /** Readers started during the round (of forks). */
  followers: Promise<void>[];
  /** Offsets acknowledged or read per path, for forks and reads at an offset. */
  seen: Map<string, number[]>;
};

const url = (round: Round, path: string) => `${round.base}/${path}`;

function remember(round: Round, path: string, p: number) {
  const list = round.seen.get(path) ?? [];
  list.push(p);
  if (list.length > 30) list.shift();
  round.seen.set(path, list);
}

/** A catch-up read, from -1 or an offset seen on the path, recorded. */
async function catchUp(round: Round, path: string, who: string, fromStart = false) {
  const { h, r } = round;
  const known = round.seen.get(path) ?? [];
  const from = fromStart || !known.length || r.chance(0.5) ? -1 : r.pick(known);
  const start = now();
  const reply = await send(h, `${url(round, path)}?offset=${from < 0 ? '-1' : wire(from)}`);
  const done = now();
  if (!reply) return reply;
  expectStatus(h, `${who} GET ${path}`, reply, [200, 400, 404, 410]);
  if (reply.status !== 200) return reply;
  h.count('read');
  const inc = reply.headers.get('stream-incarnation');
  const next = reply.headers.get('stream-next-offset');
  if (!next) return h.fail(`${who} GET ${path}: no Stream-Next-Offset`), reply;
  const at = Math.max(from, 0);
  if (pos(next) !== at + reply.body.length) h.fail(`${who} GET ${path} from ${at}: ${reply.body.length} bytes but Stream-Next-Offset ${next}`);
  const closed = reply.headers.get('stream-closed') === 'true';
  h.observe(path, inc, at, reply.body, `${who} GET ${path}`);
  if (closed && reply.headers.get('stream-up-to-date') === 'true') h.closedAt(path, inc, pos(next), `${who} GET ${path}`);
  h.reads.push({ path, inc: inc ?? '', from: at, to: pos(next), body: reply.body, closed, start, done });
  remember(round, path, pos(next));
  const etag = reply.headers.get('etag');
  if (etag) {
    const answer = `${path}|${inc}|${at}|${next}|${closed}|${reply.body}`;
    const had = h.etags.get(etag);
    if (had !== undefined && had !== answer) h.fail(`${who}: ETag ${etag} names two answers:\n  ${had.slice(0, 200)}\n  ${answer.slice(0, 200)}`);
    h.etags.set(etag, answer);
    const same = `${path}|${inc}|${at}|${next}|${closed}`;
    const other = h.etagOf.get(same);
    if (other !== undefined && other !== etag) h.fail(`${who}: equal reads of ${same} have ETags ${other} and ${etag}`);
    h.etagOf.set(same, etag);
  }
  return reply;
}

const WEIGHTS = { append: 10, big: 1, producer: 8, retry: 3, pipeline: 3, ws: 3, read: 5, head: 2, close: 1, put: 3, recreate: 2, delete: 1, fork: 2 } as const;
function pickWeighted<K extends string>(r: ReturnType<typeof seeded>, weights: Readonly<Record<K, number>>): K {
  const entries = Object.entries(weights) as [K, number][];
  let x = r.next() * entries.reduce((n, [, w]) => n + w, 0);
  for (const [k, w] of entries) if ((x -= w) < 0) return k;
  return entries[0][0];
}

/** One writer-and-reader client: random operations on the round's paths. */
async function client(round: Round, c: number) {
  const { h, r } = round;
  let n = 0;
  // Producer ids are shared by pairs of clients: two writers with one id.
  const producerId = `p${c >> 1}`;
  let epoch = 0;
  let seq = 0;
  const wsState = { epoch: 0, seq: 0 };
  for (let op = 0; op < OPS && !round.stopped; op++) {
    const path = r.chance(0.2) && round.forkCount > 0 ? `f${r.int(round.forkCount)}` : r.pick(round.paths);
    const target = url(round, path);
    const who = `client ${c} op ${op}`;
    const kind = pickWeighted(r, WEIGHTS);
    if (kind === 'append' || kind === 'big') {
      const closing = r.chance(0.02);
      // `big`: an append of several rows (over 1 MiB), read back in pieces.
      const token = kind === 'big' ? `b${c}.${n++}:${'x'.repeat(100_000 + r.int(1_400_000))};` : `a${c}.${n++};`;
      h.sent.set(token, path);
      // Some carry a Stream-Seq from a counter all clients share: racing, they may arrive out
      // of order, and only increasing ones may be stored.
      const streamSeq = r.chance(0.3) ? String(++round.streamSeq).padStart(8, '0') : undefined;
      if (streamSeq) h.streamSeqs.set(token, streamSeq);
      const start = now();
      const reply = await send(h, target, {
        method: 'POST',
        headers: { ...TEXT, ...(closing ? { 'stream-closed': 'true' } : {}), ...(streamSeq ? { 'stream-seq': streamSeq } : {}) },
        body: token,
      });
      const done = now();
      expectStatus(h, `${who} POST ${path}`, reply, [204, 404, 409, 410]);
      if (reply?.status === 409 && streamSeq && !reply.headers.get('stream-closed')) h.count('stream-seq 409');
      if (reply?.status === 204) {
        const next = reply.headers.get('stream-next-offset');
        if (!next) h.fail(`${who}: append acknowledged without Stream-Next-Offset`);
        else {
          h.acks.push({ path, token, end: pos(next), start, done, closing });
          if (closing) h.closes.push({ path, at: pos(next), start, done });
          remember(round, path, pos(next));
        }
        h.count(closing ? 'closing append' : 'append');
      }
    } else if (kind === 'producer' || kind === 'retry') {
      // `retry`: the same (epoch, seq, body) sent 2 or 3 times at once. Sometimes an epoch bump
      // races with the append before it.
      const bump = r.chance(0.1);
      const copies = kind === 'retry' ? 2 + r.int(2) : 1;
      const attempts: Promise<void>[] = [];
      // Now and then the producer's append closes the stream, its retries racing with it.
      const closing = kind === 'retry' && r.chance(0.1);
      const sendOne = async (e: number, s: number, token: string) => {
        const start = now();
        const reply = await send(h, target, {
          method: 'POST',
          headers: { ...TEXT, 'producer-id': producerId, 'producer-epoch': String(e), 'producer-seq': String(s), ...(closing ? { 'stream-closed': 'true' } : {}) },
          body: token,
        });
        const done = now();
        expectStatus(h, `${who} producer POST ${path}`, reply, [200, 204, 400, 403, 404, 409, 410]);
        if (!reply) return;
        if (reply.status === 200) {
          const next = reply.headers.get('stream-next-offset');
          if (!next) return h.fail(`${who}: producer append acknowledged without Stream-Next-Offset`);
          h.acks.push({ path, token, end: pos(next), start, done, closing });
          if (closing) {
            if (reply.headers.get('stream-closed') !== 'true') h.fail(`${who}: a closing producer append acknowledged without Stream-Closed`);
            h.closes.push({ path, at: pos(next), start, done });
          }
          remember(round, path, pos(next));
          h.count(closing ? 'producer close' : 'producer append');
          if (reply.headers.get('producer-seq') !== String(s) || reply.headers.get('producer-epoch') !== String(e)) h.fail(`${who}: producer append e${e} s${s} answered with epoch ${reply.headers.get('producer-epoch')} seq ${reply.headers.get('producer-seq')}`);
          if (e === epoch && s >= seq) seq = s + 1;
        } else if (reply.status === 204) {
          h.count('producer duplicate');
          h.duplicates.push({ path, id: producerId, epoch: e, seq: s, start, done });
          // The retry of a closing append is answered with the final offset.
          const final = reply.headers.get('stream-next-offset');
          if (closing && final && reply.headers.get('stream-closed') === 'true') h.closes.push({ path, at: pos(final), start, done });
          if (reply.headers.get('stream-next-offset') && reply.headers.get('stream-closed') !== 'true') h.fail(`${who}: a duplicate has a Stream-Next-Offset`);
          if (e === epoch && s >= seq) seq = s + 1;
        } else if (reply.status === 409 && reply.headers.get('producer-expected-seq')) {
          if (e === epoch) seq = Number(reply.headers.get('producer-expected-seq'));
        } else if (reply.status === 403) {
          const current = Number(reply.headers.get('producer-epoch') ?? epoch);
          if (current >= epoch) {
            epoch = current + 1;
            seq = 0;
          }
        } else if (reply.status === 400) seq = 0;
      };
      const s = seq;
      const token = `P${producerId}e${epoch}s${s}c${c};`;
      for (let k = 0; k < copies; k++) attempts.push(sendOne(epoch, s, token));
      if (bump) {
        const e = epoch + 1;
        attempts.push(sendOne(e, 0, `P${producerId}e${e}s0c${c};`));
        epoch = e;
        seq = 1;
      }
      await Promise.all(attempts);
    } else if (kind === 'pipeline') {
      // A producer with several appends in flight on separate connections, as a browser's is:
      // they may reach the object in any order, and the later ones wait for the earlier.
      const k = 2 + r.int(3);
      const first = seq;
      const e = epoch;
      await Promise.all(
        Array.from({ length: k }, async (_, i) => {
          const s = first + i;
          const token = `P${producerId}e${e}s${s}c${c};`;
          const start = now();
          const reply = await send(h, target, {
            method: 'POST',
            headers: { ...TEXT, 'producer-id': producerId, 'producer-epoch': String(e), 'producer-seq': String(s) },
            body: token,
          });
          const done = now();
          expectStatus(h, `${who} pipelined POST ${path}`, reply, [200, 204, 400, 403, 404, 409, 410]);
          if (reply?.status === 200) {
            const next = reply.headers.get('stream-next-offset');
            if (!next) return h.fail(`${who}: producer append acknowledged without Stream-Next-Offset`);
            h.acks.push({ path, token, end: pos(next), start, done, closing: false });
            h.count('pipelined append');
          } else if (reply?.status === 204) {
            h.count('producer duplicate');
            h.duplicates.push({ path, id: producerId, epoch: e, seq: s, start, done });
          }
          else if (reply?.status === 403) {
            const current = Number(reply.headers.get('producer-epoch') ?? epoch);
            if (current >= epoch) {
              epoch = current + 1;
              seq = 0;
            }
          }
        }),
      );
      if (epoch === e) seq = Math.max(seq, first + k);
    } else if (kind === 'ws') {
      // Append frames on a socket: plain and a producer of the socket's own, pipelined.
      const k = 1 + r.int(5);
      const wsProducer = `w${c}`;
      wsState.epoch += r.chance(0.2) ? 1 : 0;
      if (r.chance(0.2)) wsState.seq = 0;
      const frames = Array.from({ length: k }, (_, i) => {
        const producer = r.chance(0.6);
        const token = producer ? `P${wsProducer}e${wsState.epoch}s${wsState.seq}c${c};` : `a${c}.${n++};`;
        if (!producer) h.sent.set(token, path);
        const frame: Record<string, unknown> = { type: 'append', id: i, data: token };
        if (producer) Object.assign(frame, { producerId: wsProducer, producerEpoch: wsState.epoch, producerSeq: wsState.seq++ });
        if (r.chance(0.03)) frame.close = true;
        return { frame, token, start: 0 };
      });
      await new Promise<void>((resolve) => {
        const ws = new WebSocket(`${target.replace('http', 'ws')}?offset=now&live=ws`);
        let answered = 0;
        const timer = setTimeout(() => ws.close(), 20_000);
        ws.addEventListener('open', () => {
          for (const f of frames) {
            f.start = now();
            ws.send(JSON.stringify(f.frame));
          }
        });
        ws.addEventListener('message', (e) => {
          if (typeof e.data !== 'string') return;
          const m = JSON.parse(e.data);
          if (m.type !== 'ack' && !(m.type === 'error' && m.id !== undefined)) {
            if (m.type === 'error' && m.status >= 500 && m.status !== 503) h.fail(`${who}: ws error ${e.data}`);
            return;
          }
          const f = frames[m.id];
          if (m.id !== answered) h.fail(`${who}: ws reply to frame ${m.id} where ${answered} was next`);
          answered++;
          if (m.type === 'ack' && m.streamNextOffset && (m.status === 200 || !f.frame.producerId)) {
            h.acks.push({ path, token: f.token, end: pos(m.streamNextOffset), start: f.start, done: now(), closing: Boolean(f.frame.close) });
            if (f.frame.close) h.closes.push({ path, at: pos(m.streamNextOffset), start: f.start, done: now() });
            h.count('ws append');
          } else if (m.type === 'error') {
            h.count(`ws append ${m.status}`);
            if (m.status >= 500 && m.status !== 503) h.fail(`${who}: ws append error ${e.data}`);
            if (m.producerExpectedSeq !== undefined) wsState.seq = m.producerExpectedSeq;
            if (m.status === 403) {
              wsState.epoch = Math.max(wsState.epoch, Number(m.producerEpoch ?? 0)) + 1;
              wsState.seq = 0;
            }
          }
          if (answered === frames.length) ws.close();
        });
        ws.addEventListener('close', () => {
          clearTimeout(timer);
          resolve();
        });
        ws.addEventListener('error', () => {
          try {
            ws.close();
          } catch {}
        });
      });
    } else if (kind === 'read') {
      await catchUp(round, path, who);
    } else if (kind === 'head') {
      const start = now();
      const reply = await send(h, target, { method: 'HEAD' });
      const next = reply?.headers.get('stream-next-offset');
      if (reply?.status === 200 && next) h.heads.push({ path, inc: reply.headers.get('stream-incarnation') ?? '', tail: pos(next), start, done: now() });
      expectStatus(h, `${who} HEAD ${path}`, reply, [200, 404, 410]);
      if (reply?.status === 200) {
        h.count('head');
        const next = reply.headers.get('stream-next-offset');
        const inc = reply.headers.get('stream-incarnation');
        if (!next || !inc) h.fail(`${who} HEAD ${path}: no offset or incarnation`);
        else if (reply.headers.get('stream-closed') === 'true') h.closedAt(path, inc, pos(next), `${who} HEAD ${path}`);
      }
    } else if (kind === 'close') {
      const start = now();
      const reply = await send(h, target, { method: 'POST', headers: { 'stream-closed': 'true' } });
      const done = now();
      expectStatus(h, `${who} close ${path}`, reply, [204, 404, 410]);
      if (reply?.status === 204) {
        const next = reply.headers.get('stream-next-offset');
        if (!next || reply.headers.get('stream-closed') !== 'true') h.fail(`${who}: close acknowledged without offset or Stream-Closed`);
        else h.closes.push({ path, at: pos(next), start, done });
        h.count('close');
      }
    } else if (kind === 'put' || kind === 'recreate') {
      if (path.startsWith('f')) continue;
      if (kind === 'recreate') {
        // DELETE and PUT back to back, racing with everyone else.
        const d = { path, start: now(), done: Infinity };
        h.deletes.push(d);
        const reply = await send(h, target, { method: 'DELETE' });
        d.done = now();
        expectStatus(h, `${who} DELETE ${path}`, reply, [204, 404, 410]);
        if (reply?.status === 204) h.count('delete');
        else if (reply) d.done = -Infinity;
      }
      const reply = await send(h, target, { method: 'PUT', headers: TEXT });
      expectStatus(h, `${who} PUT ${path}`, reply, [200, 201, 409]);
      if (reply?.status === 201) h.count('create');
    } else if (kind === 'delete') {
      const d = { path, start: now(), done: Infinity };
      h.deletes.push(d);
      const reply = await send(h, target, { method: 'DELETE' });
      d.done = now();
      expectStatus(h, `${who} DELETE ${path}`, reply, [204, 404, 410]);
      if (reply?.status === 204) h.count('delete');
      else if (reply) d.done = -Infinity; // nothing was deleted by it
    } else {
      // A fork of a stream being written, at an offset acknowledged or read on it.
      if (path.startsWith('f')) continue;
      const known = round.seen.get(path) ?? [];
      const at = known.length ? r.pick(known) : 0;
      const name = `f${round.forkCount++}`;
      const reply = await send(h, url(round, name), {
        method: 'PUT',
        headers: { ...TEXT, 'stream-forked-from': new URL(target).pathname, 'stream-fork-offset': wire(at) },
      });
      expectStatus(h, `${who} fork ${name} of ${path}`, reply, [201, 400, 404, 409, 410]);
      if (reply?.status === 201) {
        h.forks.push({ path: name, source: path, at });
        h.count('fork');
        // Some forks are followed from their start, inherited range and all, while their
        // source goes on changing.
        if (r.chance(0.3)) round.followers.push(r.chance(0.5) ? sseReader(round, name, `SSE reader of ${name}`) : wsReader(round, name, `WebSocket reader of ${name}`));
        // Read it while its source goes on changing, and usually delete it again, so that its
        // source, if deleted meanwhile, is not kept for it for the rest of the round.
        await catchUp(round, name, who, true);
        if (r.chance(0.7)) {
          const d = { path: name, start: now(), done: Infinity };
          h.deletes.push(d);
          const gone = await send(h, url(round, name), { method: 'DELETE' });
          d.done = now();
          expectStatus(h, `${who} DELETE ${name}`, gone, [204, 404, 410]);
        }
      }
    }
  }
}

/** Follows a path over SSE, reconnecting, until the round stops. */
async function sseReader(round: Round, path: string, who: string) {
  const { h } = round;
  let offset = '-1';
  let inc: string | null = null;
  while (!round.stopped) {
    const abort = new AbortController();
    const stopper = setInterval(() => round.stopped && abort.abort(), 100);
    try {
      const res = await fetch(`${url(round, path)}?offset=${encodeURIComponent(offset)}&live=sse`, { signal: abort.signal });
      if (res.status !== 200 || !res.body) {
        await res.text();
        if (res.status >= 500 && res.status !== 503) h.fail(`${who}: SSE got ${res.status}`);
        offset = '-1';
        await sleep(100);
        continue;
      }
      const got = res.headers.get('stream-incarnation');
      if (!got) h.fail(`${who}: SSE response without Stream-Incarnation`);
      if (inc !== null && got !== inc) {
        // Another incarnation answered the offset we had: a signal. Its bytes from here on are
        // still its own, so they are recorded under it.
        h.count('sse incarnation change');
      }
      inc = got;
      let at = offset === '-1' ? 0 : pos(offset);
      let pending = '';
      let ended = false;
      for await (const { event, data } of sseEvents(res.body)) {
        if (event === 'data') pending += data;
        else if (event === 'control') {
          const control = JSON.parse(data);
          const next = pos(control.streamNextOffset);
          h.span('sse control', path, inc, at, pending, next, control.streamClosed === true, who);
          pending = '';
          at = next;
          offset = control.streamNextOffset;
          if (control.streamClosed) ended = true;
        } else if (event === 'error') {
          h.count('sse deleted');
          offset = '-1';
          inc = null;
          ended = true;
        }
        if (ended) break;
      }
      abort.abort();
      if (ended && offset !== '-1') {
        // Closed: wait for the stream to be deleted and created again.
        await sleep(200);
        offset = '-1';
        inc = null;
      }
    } catch {
      await sleep(100);
    } finally {
      clearInterval(stopper);
    }
  }
}

/** Follows a path with long-polls until the round stops. */
async function longPollReader(round: Round, path: string, who: string) {
  const { h } = round;
  let offset = '-1';
  let cursor = '';
  while (!round.stopped) {
    const reply = await send(h, `${url(round, path)}?offset=${encodeURIComponent(offset)}&live=long-poll${cursor ? `&cursor=${cursor}` : ''}`);
    if (!reply) {
      await sleep(100);
      continue;
    }
    cursor = reply.headers.get('stream-cursor') ?? '';
    if (reply.status === 200 || reply.status === 204) {
      const next = reply.headers.get('stream-next-offset');
      const inc = reply.headers.get('stream-incarnation');
      if (!next) {
        h.fail(`${who}: long-poll ${reply.status} without Stream-Next-Offset`);
        continue;
      }
      const at = offset === '-1' ? 0 : pos(offset);
      const closed = reply.headers.get('stream-closed') === 'true';
      h.span('long-poll', path, inc, at, reply.body, pos(next), closed, who);
      offset = next;
      if (closed) {
        await sleep(200);
        offset = '-1';
      }
    } else {
      expectStatus(h, `${who} long-poll`, reply, [400, 404, 410]);
      offset = '-1';
      await sleep(100);
    }
  }
}

/** Follows a path over `live=ws` (edgestream.v3, with receipts), naming the incarnation it reads. */
async function wsReader(round: Round, path: string, who: string) {
  const { h } = round;
  let offset = '-1';
  let inc: string | null = null;
  while (!round.stopped) {
    if (inc === null) {
      const head = await send(h, url(round, path), { method: 'HEAD' });
      if (head?.status !== 200 || head.headers.get('stream-closed') === 'true') {
        await sleep(100);
        continue;
      }
      inc = head.headers.get('stream-incarnation');
      offset = '-1';
    }
    const outcome = await new Promise<'opened' | 'refused' | 'deleted' | 'closed'>((resolve) => {
      const ws = new WebSocket(`${url(round, path).replace('http', 'ws')}?offset=${encodeURIComponent(offset)}&live=ws&incarnation=${encodeURIComponent(inc!)}`, ['edgestream.v3']);
      ws.binaryType = 'arraybuffer';
      let opened = false;
      let outcome: 'opened' | 'deleted' | 'closed' = 'opened';
      let at = offset === '-1' ? 0 : pos(offset);
      let pending = '';
      const stopper = setInterval(() => round.stopped && ws.close(), 100);
      const control = (c: { streamNextOffset: string; streamClosed?: boolean }) => {
        const next = pos(c.streamNextOffset);
        h.span('ws control', path, inc, at, pending, next, c.streamClosed === true, who);
        pending = '';
        at = next;
        offset = c.streamNextOffset;
        if (c.streamClosed) outcome = 'closed';
        try {
          ws.send(JSON.stringify({ type: 'received', offset: c.streamNextOffset }));
        } catch {}
      };
      ws.addEventListener('open', () => (opened = true));
      ws.addEventListener('message', (e) => {
        if (typeof e.data !== 'string') {
          const bytes = Buffer.from(e.data as ArrayBuffer);
          const length = bytes.readUInt32BE(0);
          pending += bytes.subarray(4 + length).toString('latin1');
          if (length > 0) control(JSON.parse(bytes.subarray(4, 4 + length).toString()));
        } else {
          const message = JSON.parse(e.data);
          if (message.type === 'control') control(message);
          else if (message.type === 'error') {
            if (message.status === 404 || message.status === 410) outcome = 'deleted';
            h.count(`ws error ${message.status}`);
            if (message.status >= 500 && message.status !== 503) h.fail(`${who}: ws error ${e.data}`);
          }
        }
      });
      ws.addEventListener('close', () => {
        clearInterval(stopper);
        resolve(opened ? outcome : 'refused');
      });
      ws.addEventListener('error', () => {
        try {
          ws.close();
        } catch {}
      });
    });
    if (outcome === 'deleted' || outcome === 'closed' || outcome === 'refused') {
      inc = null; // start over on whatever incarnation is there
      await sleep(100);
    }
  }
}

const JSON_TYPE = { 'content-type': 'application/json' };

/** What the round knows of its JSON stream: messages per incarnation, acknowledged appends. */
type JsonHistory = {
  known: Map<string, string[]>; // incarnation → its messages from the start, as far as known
  acks: { tokens: string[]; start: number; done: number }[];
  closes: { start: number; done: number }[];
  deletes: { start: number; done: number }[];
  reads: { inc: string; messages: string[]; closed: boolean; start: number; done: number }[];
};

/** `messages`, read from the start of incarnation `inc`, agree with every other such read. */
function observeJson(h: History, j: JsonHistory, inc: string | null, messages: string[], who: string) {
  if (!inc) return h.fail(`${who}: no Stream-Incarnation`);
  const known = j.known.get(inc) ?? [];
  for (let i = 0; i < Math.min(known.length, messages.length); i++) {
    if (known[i] !== messages[i]) return h.fail(`${who}: JSON message ${i} of ${inc} is ${messages[i]}, others saw ${known[i]}`);
  }
  if (messages.length > known.length) j.known.set(inc, messages.slice());
}

/** A client of the JSON stream `j0`: appends of one or two messages, producers, closes, DELETE and PUT, reads. */
async function jsonClient(round: Round, j: JsonHistory, c: number) {
  const { h, r } = round;
  const target = url(round, 'j0');
  let n = 0;
  let seq = 0;
  const epoch = 0;
  const who = `JSON client ${c}`;
  for (let op = 0; op < OPS && !round.stopped; op++) {
    const kind = pickWeighted(r, { append: 8, producer: 4, read: 3, close: 1, recreate: 2 } as const);
    if (kind === 'append' || kind === 'producer') {
      const tokens = kind === 'producer' ? [`J${c}s${seq}`] : Array.from({ length: 1 + r.int(2) }, () => `j${c}.${n++}`);
      const body = tokens.length === 1 && r.chance(0.5) ? JSON.stringify(tokens[0]) : JSON.stringify(tokens);
      const producer: Record<string, string> = kind === 'producer' ? { 'producer-id': `J${c}`, 'producer-epoch': String(epoch), 'producer-seq': String(seq) } : {};
      const copies = kind === 'producer' && r.chance(0.3) ? 2 : 1;
      const closing = kind === 'append' && r.chance(0.03);
      await Promise.all(
        Array.from({ length: copies }, async () => {
          const start = now();
          const reply = await send(h, target, { method: 'POST', headers: { ...JSON_TYPE, ...producer, ...(closing ? { 'stream-closed': 'true' } : {}) }, body });
          const done = now();
          expectStatus(h, `${who} POST j0`, reply, [200, 204, 404, 409, 410]);
          if (reply && (reply.status === 200 || (reply.status === 204 && kind === 'append'))) {
            j.acks.push({ tokens, start, done });
            if (closing) j.closes.push({ start, done });
            h.count('json append');
          }
          if (reply?.status === 409 && reply.headers.get('producer-expected-seq')) seq = Number(reply.headers.get('producer-expected-seq')) - 1;
        }),
      );
      if (kind === 'producer') seq++;
    } else if (kind === 'read') {
      const start = now();
      const reply = await send(h, `${target}?offset=-1`);
      const done = now();
      expectStatus(h, `${who} GET j0`, reply, [200, 404, 410]);
      if (reply?.status !== 200) continue;
      let messages: string[];
      try {
        messages = JSON.parse(reply.body);
      } catch {
        h.fail(`${who}: GET j0 is not JSON: ${reply.body.slice(0, 200)}`);
        continue;
      }
      const inc = reply.headers.get('stream-incarnation');
      observeJson(h, j, inc, messages, `${who} GET j0`);
      j.reads.push({ inc: inc ?? '', messages, closed: reply.headers.get('stream-closed') === 'true', start, done });
      h.count('json read');
    } else if (kind === 'close') {
      const start = now();
      const reply = await send(h, target, { method: 'POST', headers: { 'stream-closed': 'true' } });
      expectStatus(h, `${who} close j0`, reply, [204, 404, 410]);
      if (reply?.status === 204) j.closes.push({ start, done: now() });
    } else {
      const d = { start: now(), done: Infinity };
      j.deletes.push(d);
      const gone = await send(h, target, { method: 'DELETE' });
      d.done = now();
      if (gone && gone.status !== 204) d.done = -Infinity;
      const made = await send(h, target, { method: 'PUT', headers: JSON_TYPE });
      expectStatus(h, `${who} PUT j0`, made, [200, 201, 409]);
      seq = 0;
    }
  }
}

/** Follows `j0` over SSE or `live=ws` from the start on each connection, checking every prefix it has at a control. */
async function jsonReader(round: Round, j: JsonHistory, mode: 'sse' | 'ws', who: string) {
  const { h } = round;
  while (!round.stopped) {
    const head = await send(h, url(round, 'j0'), { method: 'HEAD' });
    const inc = head?.headers.get('stream-incarnation');
    if (head?.status !== 200 || !inc) {
      await sleep(100);
      continue;
    }
    const messages: string[] = [];
    const control = () => {
      observeJson(h, j, inc, messages, who);
      h.count(`json ${mode} control`);
    };
    if (mode === 'ws') {
      await new Promise<void>((resolve) => {
        const ws = new WebSocket(`${url(round, 'j0').replace('http', 'ws')}?offset=-1&live=ws&incarnation=${encodeURIComponent(inc)}`);
        const stopper = setInterval(() => round.stopped && ws.close(), 100);
        ws.addEventListener('message', (e) => {
          if (typeof e.data !== 'string') return h.fail(`${who}: binary message on a JSON stream`);
          const m = JSON.parse(e.data);
          if (m.type === 'data') messages.push(...m.items);
          else if (m.type === 'control') control();
        });
        ws.addEventListener('close', () => {
          clearInterval(stopper);
          resolve();
        });
        ws.addEventListener('error', () => {
          try {
            ws.close();
          } catch {}
        });
      });
    } else {
      const abort = new AbortController();
      const stopper = setInterval(() => round.stopped && abort.abort(), 100);
      try {
        const res = await fetch(`${url(round, 'j0')}?offset=-1&live=sse`, { signal: abort.signal });
        if (res.status === 200 && res.body && res.headers.get('stream-incarnation') === inc) {
          for await (const { event, data } of sseEvents(res.body)) {
            if (event === 'data') messages.push(...JSON.parse(data));
            else if (event === 'control') control();
          }
        } else await res.text();
      } catch {
        // stopped, or the server was killed
      } finally {
        clearInterval(stopper);
      }
    }
    await sleep(50);
  }
}

/** The JSON stream's history: acknowledged messages once each in later reads, closes kept, tokens once. */
function checkJson(h: History, j: JsonHistory) {
  const deletedBetween = (a: number, b: number) => j.deletes.some((d) => d.done > a && d.start < b);
  for (const a of j.acks) {
    for (const read of j.reads) {
      if (read.start < a.done || deletedBetween(a.start, read.done)) continue;
      const at = read.messages.indexOf(a.tokens[0]);
      if (at < 0 || a.tokens.some((t, i) => read.messages[at + i] !== t)) h.fail(`j0: acknowledged ${JSON.stringify(a.tokens)} missing from a later read (${read.inc})`);
    }
  }
  for (const c of j.closes) {
    for (const read of j.reads) {
      if (read.start > c.done && !deletedBetween(c.start, read.done) && !read.closed) h.fail(`j0: a close was acknowledged, a later read (${read.inc}) is not closed`);
    }
  }
  for (const [inc, messages] of j.known) {
    const seen = new Set<string>();
    for (const m of messages) {
      if (seen.has(m)) h.fail(`j0 (${inc}): message ${m} is there twice`);
      seen.add(m);
    }
  }
}

/** The producer tokens of an incarnation's known prefix: (epoch, seq) at most once, increasing per id. */
function checkTokens(h: History, key: string, k: Known) {
  let prefix = k.prefix();
  // A fork inherits its source's bytes up to its fork offset, which may cut a token, and no
  // producer state: only its own appends count.
  const fork = h.forks.find((f) => key.startsWith(`${f.path} `));
  if (fork) prefix = prefix.slice(fork.at);
  const tokens = prefix.split(';').slice(0, -1);
  const seen = new Set<string>();
  const last = new Map<string, [number, number]>();
  let lastStreamSeq = '';
  for (const t of tokens) {
    const streamSeq = h.streamSeqs.get(`${t};`);
    if (streamSeq !== undefined) {
      if (streamSeq <= lastStreamSeq) h.fail(`${key}: Stream-Seq ${streamSeq} (${t}) stored after ${lastStreamSeq}`);
      lastStreamSeq = streamSeq;
    }
    const plain = /^a\d+\.\d+$/.exec(t) ?? /^b\d+\.\d+:x+$/.exec(t);
    const producer = /^P([pw]\d+)e(\d+)s(\d+)c\d+$/.exec(t);
    if (!plain && !producer) {
      h.fail(`${key}: unexpected token ${JSON.stringify(t)}`);
      return;
    }
    const id = producer ? `${producer[1]} e${producer[2]} s${producer[3]}` : t;
    if (seen.has(id)) h.fail(`${key}: ${producer ? 'producer append' : 'token'} ${id} is there twice`);
    seen.add(id);
    if (producer) {
      const e = Number(producer[2]);
      const s = Number(producer[3]);
      const before = last.get(producer[1]);
      if (before && (e < before[0] || (e === before[0] && s <= before[1]))) h.fail(`${key}: producer ${producer[1]} e${e} s${s} after e${before[0]} s${before[1]}`);
      last.set(producer[1], [e, s]);
    }
  }
}

async function runRound(seed: number, kill: boolean) {
  const h = new History();
  const round: Round = {
    h,
    r: seeded(seed),
    base: `${server.baseUrl}/v1/stream/conc/${seed}-${Math.random().toString(36).slice(2, 8)}`,
    paths: ['s0', 's1', 's2'],
    stopped: false,
    forkCount: 0,
    streamSeq: 0,
    followers: [],
    seen: new Map(),
  };
  /** A PUT sent again until it is answered other than 503 (a create answered 503 is finished by its retry). */
  const create = async (path: string, headers: Record<string, string>) => {
    for (;;) {
      const reply = await send(h, url(round, path), { method: 'PUT', headers });
      if (reply && reply.status !== 503) return reply.status;
      await sleep(200);
    }
  };
  for (const p of round.paths) expect([200, 201]).toContain(await create(p, TEXT));
  // A JSON stream beside them, with clients and readers of its own.
  const j: JsonHistory = { known: new Map(), acks: [], closes: [], deletes: [], reads: [] };
  expect([200, 201]).toContain(await create('j0', JSON_TYPE));
  const jsonReaders = [jsonReader(round, j, 'sse', 'JSON SSE reader'), jsonReader(round, j, 'ws', 'JSON WebSocket reader')];
  const jsonClients = Array.from({ length: Math.max(2, CLIENTS >> 2) }, (_, c) => jsonClient(round, j, c));
  const readers = round.paths.slice(0, 2).flatMap((p) => [
    sseReader(round, p, `SSE reader of ${p}`),
    wsReader(round, p, `WebSocket reader of ${p}`),
    longPollReader(round, p, `long-poll reader of ${p}`),
  ]);
  const clients = Array.from({ length: CLIENTS }, (_, c) => client(round, c));
  let killer: Promise<void> = Promise.resolve();
  let kills = 0;
  if (kill) {
    let done = false;
    void Promise.all(clients).then(() => (done = true));
    killer = (async () => {
      for (let k = 0; k < 2 && !done; k++) {
        await sleep(300 + round.r.int(1200));
        if (done) break;
        for (const l of badLines(server.log())) h.fail(`wrangler's log before a kill: ${l}`);
        if (process.env.CONC_TRACE) writeFileSync(`${process.env.CONC_TRACE}-${seed}-log${kills}`, server.log());
        h.trace.push(`${now().toFixed(1)} SIGKILL`);
        await server.restart({ hard: true });
        h.trace.push(`${now().toFixed(1)} restarted`);
        kills++;
      }
    })();
  }
  await Promise.all([...clients, ...jsonClients]);
  await killer;
  // Final catch-up reads of every path, then the readers stop.
  for (const p of [...round.paths, ...Array.from({ length: round.forkCount }, (_, i) => `f${i}`)]) {
    for (let tries = 0; tries < 50; tries++) {
      const reply = await catchUp(round, p, 'final read', true);
      if (reply && reply.status !== 503) break;
      await sleep(200);
    }
  }
  await sleep(300);
  for (let tries = 0; tries < 50; tries++) {
    const start = now();
    const reply = await send(h, `${url(round, 'j0')}?offset=-1`);
    if (reply?.status === 200) {
      const inc = reply.headers.get('stream-incarnation');
      const messages = JSON.parse(reply.body);
      observeJson(h, j, inc, messages, 'final read of j0');
      j.reads.push({ inc: inc ?? '', messages, closed: reply.headers.get('stream-closed') === 'true', start, done: now() });
    }
    if (reply && reply.status !== 503) break;
    await sleep(200);
  }
  round.stopped = true;
  await Promise.all([...readers, ...jsonReaders, ...round.followers]);
  checkJson(h, j);
  for (const l of badLines(server.log())) h.fail(`wrangler's log: ${l}`);
  if (process.env.CONC_TRACE) writeFileSync(`${process.env.CONC_TRACE}-${seed}-log`, server.log());

  // Acknowledged appends: in every later read that covers them, unless a DELETE came between.
  for (const a of h.acks) {
    for (const read of h.reads) {
      if (read.path !== a.path || read.start < a.done || read.from > a.end - a.token.length) continue;
      if (h.deletedBetween(a.path, a.start, read.done)) continue;
      if (read.to < a.end) h.fail(`${a.path}: append ${a.token} acknowledged at ${a.end}, but a later read (${read.inc}) ends at ${read.to}`);
      else if (read.body.slice(a.end - a.token.length - read.from, a.end - read.from) !== a.token) h.fail(`${a.path}: append ${a.token} acknowledged at ${a.end}, a later read (${read.inc}) has ${JSON.stringify(read.body.slice(a.end - a.token.length - read.from, a.end - read.from))} there`);
    }
  }
  // Appends acknowledged one after the other, with no DELETE between, end at increasing offsets.
  const byPath = new Map<string, History['acks']>();
  for (const a of h.acks) byPath.set(a.path, [...(byPath.get(a.path) ?? []), a]);
  for (const [path, acks] of byPath) {
    const sorted = [...acks].sort((x, y) => x.done - y.done);
    for (let i = 0; i < sorted.length; i++) {
      for (let k = i + 1; k < sorted.length; k++) {
        const [a, b] = [sorted[i], sorted[k]];
        if (b.start > a.done && b.end <= a.end && !h.deletedBetween(path, a.start, b.done)) h.fail(`${path}: ${b.token} acknowledged at ${b.end}, sent after ${a.token} was acknowledged at ${a.end}`);
      }
    }
  }
  // A later HEAD's tail is at least an acknowledged append's end.
  for (const a of h.acks) {
    for (const head of h.heads) {
      if (head.path === a.path && head.start > a.done && !h.deletedBetween(a.path, a.start, head.done) && head.tail < a.end) h.fail(`${a.path}: append ${a.token} acknowledged at ${a.end}, a later HEAD (${head.inc}) says the tail is ${head.tail}`);
    }
  }
  // A producer's duplicate (204) stands for an append of that (epoch, seq) that later reads hold.
  for (const d of h.duplicates) {
    const token = new RegExp(`P${d.id}e${d.epoch}s${d.seq}c\\d+;`);
    for (const read of h.reads) {
      if (read.path !== d.path || read.from !== 0 || read.start < d.done || h.deletedBetween(d.path, d.start, read.done)) continue;
      if (!token.test(read.body)) h.fail(`${d.path}: producer ${d.id} e${d.epoch} s${d.seq} answered as a duplicate, but a later read (${read.inc}) does not hold it`);
    }
  }
  // Acknowledged closes: later reads are closed there, and no append sent after is acknowledged.
  for (const c of h.closes) {
    for (const read of h.reads) {
      if (read.path !== c.path || read.start < c.done || h.deletedBetween(c.path, c.start, read.done)) continue;
      if (!read.closed || read.to !== c.at) h.fail(`${c.path}: close acknowledged at ${c.at}, a later read (${read.inc}) ends at ${read.to}, closed: ${read.closed}`);
    }
    for (const a of h.acks) {
      if (a.path === c.path && a.start > c.done && !h.deletedBetween(c.path, c.start, a.done)) h.fail(`${c.path}: append ${a.token} acknowledged at ${a.end}, sent after a close acknowledged at ${c.at}`);
    }
  }
  for (const [key, k] of h.known) checkTokens(h, key, k);
  // Forks: the inherited bytes are an incarnation of the source's. Each plain token in them was
  // sent to the source, and sits where it was acknowledged if it was; an incarnation of the source
  // that holds one of those tokens at the same place agrees with every inherited byte it knows.
  const ackedAt = new Map(h.acks.filter((a) => a.token.startsWith('a')).map((a) => [a.token, a]));
  for (const f of h.forks) {
    const read = h.reads.filter((x) => x.path === f.path && x.from === 0).at(-1);
    if (!read) continue;
    const inherited = read.body.slice(0, f.at);
    if (read.to < f.at) h.fail(`fork ${f.path} of ${f.source} at ${f.at} holds only ${read.to} bytes`);
    const tokens = [...inherited.matchAll(/a\d+\.\d+;/g)];
    for (const t of tokens) {
      const end = t.index! + t[0].length;
      const sent = h.sent.get(t[0]);
      const ack = ackedAt.get(t[0]);
      if (sent !== f.source) h.fail(`fork ${f.path} of ${f.source} inherited ${t[0]}, sent to ${sent}`);
      else if (ack && ack.end !== end) h.fail(`fork ${f.path} of ${f.source} has ${t[0]} ending at ${end}, acknowledged at ${ack.end}`);
    }
    for (const [key, k] of h.known) {
      if (!key.startsWith(`${f.source} `)) continue;
      const same = tokens.some((t) => [...t[0]].every((b, i) => k.at(t.index! + i) === b));
      const differs = [...inherited].findIndex((b, i) => k.at(i) !== undefined && k.at(i) !== b);
      if (same && differs >= 0) h.fail(`fork ${f.path} of ${f.source} at ${f.at}: inherited ${JSON.stringify(inherited.slice(0, 200))} differs from ${key} at ${differs}`);
    }
  }
  if (process.env.CONC_TRACE) writeFileSync(`${process.env.CONC_TRACE}-${seed}`, h.trace.sort((a, b) => parseFloat(a) - parseFloat(b)).join('\n'));
  console.log(`seed ${seed}${kill ? ` (${kills} SIGKILLs)` : ''}: ${JSON.stringify(h.counts)}, ${h.known.size} incarnations seen, ${h.violations.length} violations`);
  return h.violations;
}

test(`${ROUNDS} rounds of ${CLIENTS} concurrent clients keep every acknowledged write and every reader consistent (seeds from ${FIRST_SEED})`, async () => {
  const violations: string[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const seed = FIRST_SEED + i;
    const found = await runRound(seed, i >= ROUNDS - KILL_ROUNDS);
    violations.push(...found.map((v) => `seed ${seed}: ${v}`));
  }
  expect(violations, `replay with CONC_SEED=${FIRST_SEED}`).toEqual([]);
}, 600_000);

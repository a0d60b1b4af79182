// A property test at the HTTP level: random sequences of create, append (plain, closing and
// idempotent-producer), read, HEAD, close and delete against the running server, each answer
// compared with a small model of the protocol. Any difference fails with the seed and the
// operations that led to it. MODEL_SEEDS and MODEL_STEPS scale it up; MODEL_SEED replays one.
import { afterAll, beforeAll, expect, test } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';
import { seeded } from './support/random';

const SEEDS = Number(process.env.MODEL_SEEDS ?? 6);
const STEPS = Number(process.env.MODEL_STEPS ?? 150);
const FIRST_SEED = Number(process.env.MODEL_SEED ?? 1 + (Date.now() % 100_000));

let server: Awaited<ReturnType<typeof startServer>>;

beforeAll(async () => {
  server = await startServer();
});

afterAll(async () => {
  await server?.stop();
});


type Kind = 'text' | 'json';
/** What the model believes about one path. */
type Model = {
  exists: boolean;
  kind: Kind;
  closed: boolean;
  text: string; // text streams
  messages: unknown[]; // JSON streams
  tail: string; // the last Stream-Next-Offset
  offsets: Map<string, number>; // offsets seen → length (bytes or messages) there
  producer: number; // last accepted seq of producer "p" at epoch 0, or -1
};

const TYPES: Record<Kind, string> = { text: 'text/plain', json: 'application/json' };
const fresh = (kind: Kind): Model => ({
  exists: false,
  kind,
  closed: false,
  text: '',
  messages: [],
  tail: '',
  offsets: new Map(),
  producer: -1,
});
const size = (m: Model) => (m.kind === 'text' ? m.text.length : m.messages.length);

async function call(url: string, init: RequestInit = {}) {
  const res = await fetch(url, init);
  const body = await res.text();
  return { status: res.status, headers: res.headers, body };
}

/** A random body for the stream's kind, and what the model adds for it. */
function payload(r: ReturnType<typeof seeded>, kind: Kind): { body: string; text?: string; messages?: unknown[] } {
  if (kind === 'text') {
    const text = Array.from({ length: 1 + r.int(12) }, () => r.pick(['a', 'b', 'é', '\n', ' ', '日', 'z'])).join('');
    return { body: text, text };
  }
  const messages = Array.from({ length: 1 + r.int(3) }, () => r.pick([{ n: r.int(100) }, 'str', 7, null, [1, 2], { nested: { ok: true } }]));
  // A top-level array is flattened one level; a single value is one message.
  return messages.length === 1 && !Array.isArray(messages[0]) && r.chance(0.5)
    ? { body: JSON.stringify(messages[0]), messages }
    : { body: JSON.stringify(messages), messages };
}

async function runSeed(seed: number) {
  const r = seeded(seed);
  const base = `${server.baseUrl}/v1/stream/model/${seed}-${Math.random().toString(36).slice(2, 8)}`;
  const paths: [string, Kind][] = [
    ['a', 'text'],
    ['b', 'text'],
    ['c', 'json'],
    ['d', 'json'],
  ];
  const models = new Map(paths.map(([p, k]) => [p, fresh(k)]));
  const log: string[] = [];

  /** Records a new tail offset: it must sort after every earlier one of this incarnation. */
  const advance = (m: Model, offset: string | null, what: string) => {
    expect(offset, `${what}: Stream-Next-Offset`).toBeTruthy();
    if (m.tail) expect(offset! > m.tail || (offset === m.tail && size(m) === m.offsets.get(m.tail)), `${what}: offset went backwards`).toBe(true);
    m.tail = offset!;
    m.offsets.set(offset!, size(m));
  };

  for (let step = 0; step < STEPS; step++) {
    const [path, kind] = r.pick(paths);
    const m = models.get(path)!;
    const url = `${base}/${path}`;
    const op = r.pick(['create', 'create', 'append', 'append', 'append', 'append', 'producer', 'read', 'read', 'head', 'close', 'delete'] as const);
    const what = `seed ${seed} step ${step}: ${op} ${path}`;
    log.push(what);
    try {
      if (op === 'create') {
        const closed = r.chance(0.15);
        const headers: Record<string, string> = { 'content-type': TYPES[kind] };
        if (closed) headers['stream-closed'] = 'true';
        const withBody = !m.exists && r.chance(0.4);
        const p = withBody ? payload(r, kind) : undefined;
        const res = await call(url, { method: 'PUT', headers, body: p?.body });
        if (!m.exists) {
          expect(res.status, what).toBe(201);
          Object.assign(m, fresh(kind), { exists: true, closed });
          if (p?.text) m.text = p.text;
          if (p?.messages) m.messages = p.messages;
          advance(m, res.headers.get('stream-next-offset'), what);
        } else {
          // Same content type; the config matches only if the closed status does too.
          expect(res.status, what).toBe(closed === m.closed ? 200 : 409);
        }
      } else if (op === 'append') {
        const close = r.chance(0.08);
        const wrongType = r.chance(0.08);
        const p = payload(r, kind);
        const headers: Record<string, string> = { 'content-type': wrongType ? 'application/octet-stream' : TYPES[kind] };
        if (close) headers['stream-closed'] = 'true';
        const res = await call(url, { method: 'POST', headers, body: p.body });
        if (!m.exists) expect(res.status, what).toBe(404);
        else if (m.closed) {
          expect(res.status, what).toBe(409);
          expect(res.headers.get('stream-closed'), what).toBe('true');
          expect(res.headers.get('stream-next-offset'), what).toBe(m.tail);
        } else if (wrongType) expect(res.status, what).toBe(409);
        else {
          expect(res.status, `${what}: ${res.body}`).toBe(204);
          if (p.text) m.text += p.text;
          if (p.messages) m.messages.push(...p.messages);
          if (close) {
            m.closed = true;
            expect(res.headers.get('stream-closed'), what).toBe('true');
          }
          advance(m, res.headers.get('stream-next-offset'), what);
        }
      } else if (op === 'producer') {
        const seq = Math.max(0, m.producer + r.pick([1, 1, 1, 0, 2])); // next, a retry, or a gap
        const p = payload(r, kind);
        const res = await call(url, {
          method: 'POST',
          headers: { 'content-type': TYPES[kind], 'producer-id': 'p', 'producer-epoch': '0', 'producer-seq': String(seq) },
          body: p.body,
        });
        if (!m.exists) expect(res.status, what).toBe(404);
        else if (m.closed) expect(res.status, what).toBe(409);
        else if (seq === m.producer + 1) {
          expect(res.status, `${what}: ${res.body}`).toBe(200);
          m.producer = seq;
          if (p.text) m.text += p.text;
          if (p.messages) m.messages.push(...p.messages);
          advance(m, res.headers.get('stream-next-offset'), what);
        } else if (seq <= m.producer) {
          expect(res.status, what).toBe(204); // a duplicate: acknowledged, not appended again
          // No offset: the tail may be past other appends since, which a reader would skip.
          expect(res.headers.get('stream-next-offset'), what).toBeNull();
        } else {
          expect(res.status, what).toBe(409);
          expect(res.headers.get('producer-expected-seq'), what).toBe(String(m.producer + 1));
        }
      } else if (op === 'read') {
        const known = [...m.offsets.keys()];
        const from = known.length && r.chance(0.7) ? r.pick(known) : '-1';
        const res = await call(`${url}?offset=${encodeURIComponent(from)}`);
        if (!m.exists) {
          expect(res.status, what).toBe(404);
          continue;
        }
        expect(res.status, what).toBe(200);
        const at = from === '-1' ? 0 : m.offsets.get(from)!;
        if (m.kind === 'text') expect(res.body, what).toBe(m.text.slice(at));
        else expect(JSON.parse(res.body), what).toEqual(m.messages.slice(at));
        expect(res.headers.get('stream-next-offset'), what).toBe(m.tail);
        expect(res.headers.get('stream-up-to-date'), what).toBe('true');
        expect(res.headers.get('stream-closed'), what).toBe(m.closed ? 'true' : null);
      } else if (op === 'head') {
        const res = await call(url, { method: 'HEAD' });
        expect(res.status, what).toBe(m.exists ? 200 : 404);
        if (m.exists) {
          expect(res.headers.get('stream-next-offset'), what).toBe(m.tail);
          expect(res.headers.get('content-type'), what).toBe(TYPES[kind]);
          expect(res.headers.get('stream-closed'), what).toBe(m.closed ? 'true' : null);
        }
      } else if (op === 'close') {
        const res = await call(url, { method: 'POST', headers: { 'stream-closed': 'true' } });
        if (!m.exists) expect(res.status, what).toBe(404);
        else {
          expect(res.status, what).toBe(204); // idempotent
          expect(res.headers.get('stream-closed'), what).toBe('true');
          expect(res.headers.get('stream-next-offset'), what).toBe(m.tail);
          m.closed = true;
        }
      } else {
        const res = await call(url, { method: 'DELETE' });
        expect(res.status, what).toBe(m.exists ? 204 : 404);
        models.set(path, fresh(kind));
      }
    } catch (e) {
      throw new Error(`${(e as Error).message}\nreplay with MODEL_SEED=${seed} MODEL_SEEDS=1; last steps:\n  ${log.slice(-8).join('\n  ')}`);
    }
  }
  return STEPS;
}

test(`${SEEDS} random operation sequences of ${STEPS} steps agree with the protocol model (seeds from ${FIRST_SEED})`, async () => {
  let steps = 0;
  for (let s = 0; s < SEEDS; s++) steps += await runSeed(FIRST_SEED + s);
  console.log(`model: ${SEEDS} seeds × ${STEPS} steps = ${steps} operations agreed with the model (first seed ${FIRST_SEED})`);
}, 300_000);

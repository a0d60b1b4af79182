// Clauses of PROTOCOL.md that the published conformance suite leaves open (it accepts either
// answer, or does not ask), pinned to what the text says: an idempotent producer appending to
// a closed stream, and `Stream-Seq`'s scope and its empty value; and a producer's appends that
// arrive out of order.
import { afterAll, beforeAll, expect, test } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';

let server: Awaited<ReturnType<typeof startServer>>;

beforeAll(async () => {
  server = await startServer({ vars: { LONG_POLL_TIMEOUT_MS: '1000' } });
});

afterAll(async () => {
  await server?.stop();
});

let counter = 0;
const url = (label: string) => `${server.baseUrl}/v1/stream/protocol/${label}-${process.pid}-${Date.now()}-${counter++}`;
const text = { 'content-type': 'text/plain' };
const producer = (epoch: number, seq: number) => ({ 'producer-id': 'p', 'producer-epoch': String(epoch), 'producer-seq': String(seq) });

async function call(target: string, method: string, headers: Record<string, string> = {}, body?: string) {
  const res = await fetch(target, { method, headers, body });
  return { status: res.status, headers: res.headers, body: await res.text() };
}

test('§5.2.1: a stale epoch appending to a closed stream is told it is closed (409, Stream-Closed), not fenced', async () => {
  const s = url('closed-stale');
  expect((await call(s, 'PUT', text)).status).toBe(201);
  const closing = await call(s, 'POST', { ...text, ...producer(1, 0), 'stream-closed': 'true' }, 'final');
  expect(closing.status).toBe(200);
  const stale = await call(s, 'POST', { ...text, ...producer(0, 1) }, 'more');
  expect(stale.status).toBe(409);
  expect(stale.headers.get('stream-closed')).toBe('true');
  expect(stale.headers.get('stream-next-offset')).toBe(closing.headers.get('stream-next-offset'));
  // The closing tuple itself is still a duplicate, and nothing was appended.
  const again = await call(s, 'POST', { ...text, ...producer(1, 0), 'stream-closed': 'true' }, 'final');
  expect(again.status).toBe(204);
  expect((await call(s, 'GET')).body).toBe('final');
});

test('§5.2: Stream-Seq is scoped to the stream, and an empty one orders nothing', async () => {
  const a = url('seq-a');
  const b = url('seq-b');
  for (const s of [a, b]) expect((await call(s, 'PUT', text)).status).toBe(201);
  expect((await call(a, 'POST', { ...text, 'stream-seq': '5' }, '1')).status).toBe(204);
  // Another stream has its own order.
  expect((await call(b, 'POST', { ...text, 'stream-seq': '1' }, '1')).status).toBe(204);
  // An append without it, or with an empty value, is not compared and does not move it.
  expect((await call(a, 'POST', text, '2')).status).toBe(204);
  expect((await call(a, 'POST', { ...text, 'stream-seq': '' }, '3')).status).toBe(204);
  expect((await call(a, 'POST', { ...text, 'stream-seq': '' }, '4')).status).toBe(204);
  const regression = await call(a, 'POST', { ...text, 'stream-seq': '4' }, 'x');
  expect(regression.status).toBe(409);
  expect((await call(a, 'POST', { ...text, 'stream-seq': '6' }, '5')).status).toBe(204);
  expect((await call(a, 'GET')).body).toBe('12345');
});

// A producer with several appends in flight sends them on several connections, and they may
// reach the stream's object out of order. One that comes before its predecessor waits for it
// (up to 500 ms), so both land in sequence order and neither is told of a gap.
test.each([
  ['within an epoch', 0],
  ['at a new epoch, whose first append must be seq 0', 1],
])('a producer append that arrives before its predecessor waits for it, %s: both 200, stored in sequence order', async (_, epoch) => {
  const s = url('early');
  expect((await call(s, 'PUT', text)).status).toBe(201);
  expect((await call(s, 'POST', { ...text, ...producer(0, 0) }, 'a')).status).toBe(200);
  // Within epoch 0, 'b' is seq 1 and 'c' seq 2; at epoch 1, they are its seq 0 and 1.
  const first = epoch === 0 ? 1 : 0;
  const early = call(s, 'POST', { ...text, ...producer(epoch, first + 1) }, 'c');
  await new Promise((r) => setTimeout(r, 150));
  expect((await call(s, 'POST', { ...text, ...producer(epoch, first) }, 'b')).status).toBe(200);
  const ahead = await early;
  expect(ahead.status).toBe(200);
  expect(ahead.headers.get('producer-seq')).toBe(String(first + 1));
  expect((await call(`${s}?offset=-1`, 'GET')).body).toBe('abc');
});

test('a new epoch not started at 0 is still 400, once the wait is over', async () => {
  const s = url('epoch');
  expect((await call(s, 'PUT', text)).status).toBe(201);
  expect((await call(s, 'POST', { ...text, ...producer(0, 0) }, 'a')).status).toBe(200);
  const started = Date.now();
  expect((await call(s, 'POST', { ...text, ...producer(1, 1) }, 'x')).status).toBe(400);
  expect(Date.now() - started).toBeGreaterThanOrEqual(450);
});

test('a gap that is not filled is still 409, once the wait is over', async () => {
  const s = url('gap');
  expect((await call(s, 'PUT', text)).status).toBe(201);
  expect((await call(s, 'POST', { ...text, ...producer(0, 0) }, 'a')).status).toBe(200);
  const started = Date.now();
  const gap = await call(s, 'POST', { ...text, ...producer(0, 2) }, 'c');
  expect(gap.status).toBe(409);
  expect(gap.headers.get('producer-expected-seq')).toBe('1');
  expect(gap.headers.get('producer-received-seq')).toBe('2');
  expect(Date.now() - started).toBeGreaterThanOrEqual(450);
  // A new producer must start at 0: its first append at 1 waits too, then is a gap.
  const fresh = await call(s, 'POST', { ...text, 'producer-id': 'q', 'producer-epoch': '0', 'producer-seq': '1' }, 'x');
  expect(fresh.status).toBe(409);
  expect((await call(`${s}?offset=-1`, 'GET')).body).toBe('a');
});

// The wait is part of the append's own decision, in the protocol's precedence: an append that
// would be refused for something checked before its producer (a closed stream, a wrong content
// type) is refused at once, not after waiting for a predecessor that cannot help it.
test('an append ahead of its producer to a closed stream is refused at once', async () => {
  const s = url('closed-gap');
  expect((await call(s, 'PUT', text)).status).toBe(201);
  expect((await call(s, 'POST', { ...text, ...producer(0, 0) }, 'a')).status).toBe(200);
  expect((await call(s, 'POST', { ...text, 'stream-closed': 'true' })).status).toBe(204);
  const started = Date.now();
  const late = await call(s, 'POST', { ...text, ...producer(0, 2) }, 'c');
  expect(late.status).toBe(409);
  expect(late.headers.get('stream-closed')).toBe('true');
  const typed = url('typed-gap');
  expect((await call(typed, 'PUT', text)).status).toBe(201);
  const wrongType = await call(typed, 'POST', { 'content-type': 'application/json', ...producer(0, 3) }, '[1]');
  expect(wrongType.status).toBe(409);
  expect(Date.now() - started).toBeLessThan(400);
  expect((await call(`${s}?offset=-1`, 'GET')).body).toBe('a');
});

test('appends slide a TTL: a burst of one-row appends stores rows alone, the next due refresh stores the access time', async () => {
  // With a 2 s TTL the access time is written at most every 100 ms: in each burst the first
  // append writes it with its row (in a transaction), the rest write their row alone, and a
  // producer's append writes its state too. The stream outlives its TTL only if they slide it.
  const s = url('sliding-ttl');
  expect((await call(s, 'PUT', { ...text, 'stream-ttl': '2' })).status).toBe(201);
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  let expected = '';
  let seq = 0;
  const started = Date.now();
  while (Date.now() - started < 3_500) {
    for (let i = 0; i < 4; i++) {
      expect((await call(s, 'POST', text, `${i};`)).status).toBe(204);
      expected += `${i};`;
    }
    expect((await call(s, 'POST', { ...text, ...producer(0, seq++) }, 'p;')).status).toBe(200);
    expected += 'p;';
    await sleep(600);
  }
  const read = await call(s, 'GET');
  expect(read.status, 'appends kept the stream past its TTL').toBe(200);
  expect(read.body).toBe(expected);
  // Untouched (HEAD does not slide it), it expires.
  await sleep(2_500);
  expect((await call(s, 'HEAD')).status).toBe(404);
}, 20_000);

test('a producer\'s retried append (204, a duplicate) slides a TTL as its first send did', async () => {
  const s = url('sliding-ttl-duplicate');
  expect((await call(s, 'PUT', { ...text, 'stream-ttl': '2' })).status).toBe(201);
  expect((await call(s, 'POST', { ...text, ...producer(0, 0) }, 'a')).status).toBe(200);
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const started = Date.now();
  while (Date.now() - started < 3_500) {
    await sleep(600);
    expect((await call(s, 'POST', { ...text, ...producer(0, 0) }, 'a')).status, 'the retry found its stream').toBe(204);
  }
  expect((await call(s, 'GET')).body).toBe('a');
}, 20_000);

// RFC 9112 §5.1: the whitespace around a field value is no part of it. workerd drops the
// leading whitespace but passes the trailing on, so `Stream-TTL: 60 ` was refused, and
// `Producer-Id: p ` was another producer than `p`: a retry that an intermediary had trimmed
// was appended a second time. fetch() trims values itself, so these go through node:http.
test('RFC 9112: trailing whitespace around protocol header values is not part of them', async () => {
  const { request } = await import('node:http');
  const raw = (target: string, method: string, headers: Record<string, string>, body = '') =>
    new Promise<{ status: number; headers: Record<string, unknown>; body: string }>((resolve, reject) => {
      const req = request(target, { method, headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) } }, (res) => {
        let data = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (data += c));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: data }));
      });
      req.on('error', reject);
      req.end(body);
    });
  const s = url('ows');
  const created = await raw(s, 'PUT', { 'content-type': 'text/plain ', 'stream-ttl': '60 \t' });
  expect(created.status, created.body).toBe(201);
  expect((await call(s, 'HEAD')).headers.get('stream-ttl')).toBe('60');
  const p = (id: string, epoch: string, seq: string) => ({ ...text, 'producer-id': id, 'producer-epoch': epoch, 'producer-seq': seq });
  const first = await raw(s, 'POST', p('p ', '0 ', '0\t'), 'a');
  expect(first.status, first.body).toBe(200);
  // The same append, trimmed on its way: a duplicate, not a second copy.
  expect((await call(s, 'POST', p('p', '0', '0'), 'a')).status).toBe(204);
  expect((await raw(s, 'POST', p('p', '0', '1 '), 'b')).status).toBe(200);
  // Stream-Seq `5 ` is `5`: `5` again is not greater.
  expect((await raw(s, 'POST', { ...text, 'stream-seq': '5 ' }, 'c')).status).toBe(204);
  expect((await call(s, 'POST', { ...text, 'stream-seq': '5' }, 'x')).status).toBe(409);
  expect((await call(s, 'GET')).body).toBe('abc');
});

// §4.1 treats a Stream-Closed that is not `true` as absent. A header sent on two field lines
// reaches the server joined by a comma (RFC 9110 §5.3; a proxy or the runtime joins them), so a
// client that repeated `Stream-Closed: true` meant true on each line: its stream was created
// open, or its close stored as a plain append, while it took the stream for closed. Each line
// is read on its own; lines that disagree still read as absent.
test('§4.1: Stream-Closed on two field lines, each true, closes; lines that disagree do not', async () => {
  const { request } = await import('node:http');
  const raw = (target: string, method: string, headers: Record<string, string | string[]>, body = '') =>
    new Promise<{ status: number; headers: Record<string, unknown> }>((resolve, reject) => {
      const req = request(target, { method, headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) } }, (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers }));
      });
      req.on('error', reject);
      req.end(body);
    });
  const closed = async (s: string) => (await call(s, 'HEAD')).headers.get('stream-closed') === 'true';
  // A create, on two lines and as one joined line.
  const made = url('closed-lines-put');
  const created = await raw(made, 'PUT', { ...text, 'stream-closed': ['true', 'true'] });
  expect(created.status).toBe(201);
  expect(created.headers['stream-closed']).toBe('true');
  expect(await closed(made)).toBe(true);
  const joined = url('closed-joined-put');
  expect((await call(joined, 'PUT', { ...text, 'stream-closed': 'true, TRUE' })).status).toBe(201);
  expect(await closed(joined)).toBe(true);
  // A close with its final append.
  const s = url('closed-lines-post');
  expect((await call(s, 'PUT', text)).status).toBe(201);
  const disagree = await raw(s, 'POST', { ...text, 'stream-closed': ['true', 'false'] }, 'a');
  expect(disagree.status).toBe(204);
  expect(await closed(s)).toBe(false);
  const closing = await raw(s, 'POST', { ...text, 'stream-closed': ['true', 'true'] }, 'b');
  expect(closing.status).toBe(204);
  expect(closing.headers['stream-closed']).toBe('true');
  expect(await closed(s)).toBe(true);
  expect((await call(s, 'POST', text, 'c')).status).toBe(409);
  expect((await call(s, 'GET')).body).toBe('ab');
});

// RFC 9110 §9.3.2: a HEAD answers with the fields a GET of the same URL would, so a client (or a
// cache) can tell with a HEAD whether a read it stored is still current. It used to carry none.
test('HEAD carries the ETag a GET of the same URL does, and answers its If-None-Match 304', async () => {
  const s = url('head-etag');
  const json = { 'content-type': 'application/json' };
  const j = url('head-etag-json');
  expect((await call(s, 'PUT', text, 'hello ')).status).toBe(201);
  expect((await call(j, 'PUT', json, '[1,2]')).status).toBe(201);
  const same = async (target: string) => {
    const [got, head] = [await call(target, 'GET'), await call(target, 'HEAD')];
    expect(got.headers.get('etag'), target).toMatch(/^".+"$/);
    expect(head.headers.get('etag'), target).toBe(got.headers.get('etag'));
    return head;
  };
  const first = await same(s);
  await same(j);
  const mid = first.headers.get('stream-next-offset')!;
  expect((await call(s, 'POST', text, 'world')).status).toBe(204);
  expect((await call(j, 'POST', json, '3')).status).toBe(204);
  const second = await same(s);
  expect(second.headers.get('etag')).not.toBe(first.headers.get('etag'));
  await same(j);
  await same(`${s}?offset=${mid}`);
  await same(`${s}?offset=-1`);
  await same(`${s}?offset=${second.headers.get('stream-next-offset')}`);
  // The tag it names is current: 304, with the stream's headers and no body.
  const current = await call(s, 'HEAD', { 'if-none-match': second.headers.get('etag')! });
  expect(current.status).toBe(304);
  expect(current.headers.get('stream-next-offset')).toBe(second.headers.get('stream-next-offset'));
  expect((await call(s, 'HEAD', { 'if-none-match': first.headers.get('etag')! })).status).toBe(200);
  // A read from offset=now has no ETag, and neither has its HEAD.
  expect((await call(`${s}?offset=now`, 'HEAD')).headers.get('etag')).toBeNull();
  // A fork's inherited bytes, and a close, which changes the tag.
  const f = url('head-etag-fork');
  expect((await call(f, 'PUT', { ...text, 'stream-forked-from': new URL(s).pathname })).status).toBe(201);
  expect((await call(f, 'POST', text, '!')).status).toBe(204);
  await same(f);
  await same(`${f}?offset=${mid}`);
  expect((await call(s, 'POST', { ...text, 'stream-closed': 'true' })).status).toBe(204);
  const closed = await same(s);
  expect(closed.headers.get('etag')).not.toBe(second.headers.get('etag'));
});

// PROTOCOL §5.1: a sliding TTL is reset by each read or write, and by a live read when the server
// begins processing it; not by HEAD. A read refused for its offset is no read: it used to slide
// the TTL when a catch-up GET asked past the tail (400), though the same long-poll did not.
test('refused reads do not slide a TTL; long-polls do', async () => {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const refused = url('refused-read-ttl');
  const polled = url('polled-ttl');
  for (const s of [refused, polled]) expect((await call(s, 'PUT', { ...text, 'stream-ttl': '2' }, 'abc')).status).toBe(201);
  const tail = (await call(polled, 'HEAD')).headers.get('stream-next-offset')!;
  const past = '0000000000000000_9999999999999999';
  const started = Date.now();
  while (Date.now() - started < 3_500) {
    const [a, b, c] = await Promise.all([
      call(`${refused}?offset=${past}`, 'GET'),
      call(`${refused}?offset=${past}&live=long-poll`, 'GET'),
      call(`${polled}?offset=${tail}&live=long-poll`, 'GET'),
    ]);
    // 400 until the refused stream expires, then 404: the long-polled one never does.
    expect([400, 404]).toContain(a.status);
    expect([400, 404]).toContain(b.status);
    expect(c.status).toBe(204);
    await sleep(300);
  }
  expect((await call(refused, 'HEAD')).status, 'refused reads kept the stream').toBe(404);
  expect((await call(polled, 'HEAD')).status, 'long-polls kept the stream').toBe(200);
}, 20_000);

// The same inside a JSON message: a catch-up read of a fork refused inside a message it
// inherited (read from its source, not its own rows), and a long-poll refused inside a message,
// are no reads either, and slid the TTL all the same.
test('reads refused inside a JSON message, a fork\'s inherited one or by a long-poll, do not slide a TTL', async () => {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const json = { 'content-type': 'application/json' };
  const source = url('refused-inherited-source');
  expect((await call(source, 'PUT', json, '[{"a":1},{"b":2}]')).status).toBe(201);
  const fork = url('refused-inherited-fork');
  const read = url('read-inherited-fork');
  for (const f of [fork, read]) {
    const made = await call(f, 'PUT', { ...json, 'stream-ttl': '2', 'stream-forked-from': new URL(source).pathname });
    expect(made.status).toBe(201);
  }
  const polled = url('refused-long-poll');
  expect((await call(polled, 'PUT', { ...json, 'stream-ttl': '2' }, '[{"a":1},{"b":2}]')).status).toBe(201);
  const inside = '0000000000000000_0000000000000003';
  const started = Date.now();
  while (Date.now() - started < 3_500) {
    const [refused, answered, poll] = await Promise.all([
      call(`${fork}?offset=${inside}`, 'GET'),
      call(`${read}?offset=-1`, 'GET'),
      call(`${polled}?offset=${inside}&live=long-poll`, 'GET'),
    ]);
    // 400 until the stream expires, then 404; the inherited page read from the start, 200.
    expect([400, 404]).toContain(refused.status);
    expect(answered.status).toBe(200);
    expect([400, 404]).toContain(poll.status);
    await sleep(300);
  }
  expect((await call(fork, 'HEAD')).status, 'refused reads kept the fork').toBe(404);
  expect((await call(polled, 'HEAD')).status, 'refused long-polls kept the stream').toBe(404);
  expect((await call(read, 'HEAD')).status, 'reads of its inherited page kept the fork').toBe(200);
  expect((await call(source, 'HEAD')).status).toBe(200);
}, 20_000);

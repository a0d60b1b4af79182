// What an upgrade must keep: `populate` writes streams of every kind through an older Worker
// (scripts/upgrade-fixture.mjs keeps what it stored under tests/upgrade/<commit>/), and
// `verify` checks that the current Worker, started on that state, reads it back unchanged and
// goes on from it. Both take the server's base URL; `populate` returns what it saw, which
// `verify` compares with.

const JSON_TYPE = { 'content-type': 'application/json' };
const TEXT_TYPE = { 'content-type': 'text/plain' };
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function call(base, method, name, headers = {}, body, query = '') {
  const res = await fetch(`${base}/v1/stream/${name}${query}`, { method, headers, body });
  const text = method === 'HEAD' ? '' : await res.text();
  return { status: res.status, headers: res.headers, text };
}

function expectStatus(res, want, what) {
  if (res.status !== want) throw new Error(`${what}: ${res.status} (wanted ${want}) ${res.text}`);
  return res;
}

/** The whole of a stream as a catch-up read sees it. */
async function snapshot(base, name) {
  const res = expectStatus(await call(base, 'GET', name, {}, undefined, '?offset=-1'), 200, `read ${name}`);
  const head = expectStatus(await call(base, 'HEAD', name), 200, `HEAD ${name}`);
  return {
    body: res.text,
    next: res.headers.get('stream-next-offset'),
    etag: res.headers.get('etag'),
    type: res.headers.get('content-type'),
    closed: res.headers.get('stream-closed'),
    ttl: head.headers.get('stream-ttl'),
  };
}

/** A channel's envelopes but its `created` events, which older versions did not send. */
const messages = (body) => JSON.parse(body).filter((e) => e.event !== 'created');

/** Until `check` returns something truthy (a channel is fed after the append is answered). */
async function eventually(what, check, ms = 10_000) {
  const until = Date.now() + ms;
  for (;;) {
    const got = await check();
    if (got) return got;
    if (Date.now() > until) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(100);
  }
}

const producerOf = (id, seq, epoch = 0) => ({
  'producer-id': id,
  'producer-epoch': String(epoch),
  'producer-seq': String(seq),
});
const producer = (seq) => ({ ...JSON_TYPE, ...producerOf('up-writer', seq) });

const LONG_TYPE = `text/plain; charset=utf-8; x=${'a'.repeat(300)}`;

export const STREAMS = ['up/text', 'up/json', 'up/closed', 'up/fork', 'up/ttl', 'up/ch', 'up/ch/a'];

export async function populate(base) {
  const ok = async (want, what, ...args) => expectStatus(await call(base, ...args), want, what);
  await ok(201, 'create text', 'PUT', 'up/text', TEXT_TYPE);
  const first = await ok(204, 'append text', 'POST', 'up/text', TEXT_TYPE, 'hello ');
  await ok(204, 'append text', 'POST', 'up/text', TEXT_TYPE, 'world');

  await ok(201, 'create json', 'PUT', 'up/json', JSON_TYPE);
  await ok(200, 'producer seq 0', 'POST', 'up/json', producer(0), '[{"n":1},{"n":2}]');
  await ok(200, 'producer seq 1', 'POST', 'up/json', producer(1), '{"n":3}');

  await ok(201, 'create closed', 'PUT', 'up/closed', TEXT_TYPE);
  await ok(204, 'append closed', 'POST', 'up/closed', TEXT_TYPE, 'bye');
  await ok(204, 'close', 'POST', 'up/closed', { ...TEXT_TYPE, 'stream-closed': 'true' });

  const forkAt = first.headers.get('stream-next-offset');
  await ok(201, 'fork', 'PUT', 'up/fork', {
    ...TEXT_TYPE,
    'stream-forked-from': '/v1/stream/up/text',
    'stream-fork-offset': forkAt,
  });
  await ok(204, 'append fork', 'POST', 'up/fork', TEXT_TYPE, 'there');

  await ok(201, 'create ttl', 'PUT', 'up/ttl', { ...TEXT_TYPE, 'stream-ttl': '315360000' }, 'kept');

  await ok(201, 'create channel', 'PUT', 'up/ch', { 'stream-channel': 'true' });
  await ok(201, 'create source', 'PUT', 'up/ch/a', TEXT_TYPE);
  await ok(204, 'append source', 'POST', 'up/ch/a', TEXT_TYPE, 'x');
  await eventually('the channel has the first message', async () => messages((await snapshot(base, 'up/ch')).body).length === 1);

  // Versions since 2026-12-02 have writer leases: one taken for a day (older ones ignore it).
  await ok(201, 'create lease', 'PUT', 'up/lease', TEXT_TYPE);
  const take = { ...TEXT_TYPE, ...producerOf('holder', 0), 'stream-lease-ttl': '86400' };
  const took = await ok(200, 'take the lease', 'POST', 'up/lease', take, 'mine');
  const leased = took.headers.get('stream-lease-expires-at');

  // A pull-wake subscription over upsub/*, claimed and acknowledged up to its stream's tail.
  await ok(201, 'create wake stream', 'PUT', 'upwake/w', JSON_TYPE);
  await ok(201, 'create subscription', 'PUT', '__ds/subscriptions/up-sub', JSON_TYPE, JSON.stringify({ type: 'pull-wake', pattern: 'upsub/*', wake_stream: 'upwake/w', lease_ttl_ms: 60_000 }));
  await ok(201, 'create subscribed', 'PUT', 'upsub/a', TEXT_TYPE, 'first');
  const claim = await ok(200, 'claim', 'POST', '__ds/subscriptions/up-sub/claim', JSON_TYPE, JSON.stringify({ worker: 'w' }));
  const claimed = JSON.parse(claim.text);
  const acked = claimed.streams.find((s) => s.path === 'upsub/a')?.tail_offset;
  if (!acked) throw new Error(`claim does not cover upsub/a: ${claim.text}`);
  const token = { ...JSON_TYPE, authorization: `Bearer ${claimed.token}` };
  const acks = { wake_id: claimed.wake_id, generation: claimed.generation, acks: [{ stream: 'upsub/a', offset: acked }], done: true };
  await ok(200, 'ack', 'POST', '__ds/subscriptions/up-sub/ack', token, JSON.stringify(acks));

  // Versions before 2026-12-03 took a Content-Type of any length; later ones cap it at 256 bytes.
  const made = await call(base, 'PUT', 'up/long', { 'content-type': LONG_TYPE }, 'long');
  const long = made.status === 201;
  if (!long) expectStatus(made, 400, 'create with a long type');

  const seen = {};
  for (const name of [...STREAMS, 'up/lease', 'upsub/a', ...(long ? ['up/long'] : [])]) seen[name] = await snapshot(base, name);
  return { forkAt, seen, leased, acked, long };
}

/** Throws on the first difference from what `populate` saw, or from what should follow it. */
export async function verify(base, { forkAt, seen, leased, acked, long }) {
  const ok = async (want, what, ...args) => expectStatus(await call(base, ...args), want, what);
  const equal = (got, want, what) => {
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      throw new Error(`${what}: ${JSON.stringify(got)}, wanted ${JSON.stringify(want)}`);
    }
  };
  for (const name of Object.keys(seen)) equal(await snapshot(base, name), seen[name], `${name} as stored`);

  // Appends go on from the stored tail, and the fork still reads its source's prefix.
  const more = await ok(204, 'append text', 'POST', 'up/text', TEXT_TYPE, '!');
  equal((await snapshot(base, 'up/text')).body, 'hello world!', 'up/text after an append');
  equal(await ok(200, 'read from the old tail', 'GET', 'up/text', {}, undefined, `?offset=${seen['up/text'].next}`).then((r) => r.text), '!', 'read from the old tail');
  if (more.headers.get('stream-next-offset') <= seen['up/text'].next) throw new Error('the tail did not move on');
  equal((await snapshot(base, 'up/fork')).body, 'hello there', 'up/fork after its source grew');
  equal(await ok(200, 'fork read from its fork point', 'GET', 'up/fork', {}, undefined, `?offset=${forkAt}`).then((r) => r.text), 'there', 'fork from its fork point');

  // The producer's stored state dedupes its last append and takes the next.
  await ok(204, 'producer retry of seq 1', 'POST', 'up/json', producer(1), '{"n":3}');
  await ok(409, 'producer gap', 'POST', 'up/json', producer(3), '{"n":5}');
  await ok(200, 'producer seq 2', 'POST', 'up/json', producer(2), '{"n":4}');
  equal(JSON.parse((await snapshot(base, 'up/json')).body), [{ n: 1 }, { n: 2 }, { n: 3 }, { n: 4 }], 'up/json after the producer');

  // A closed stream stays closed.
  const refused = await ok(409, 'append to the closed stream', 'POST', 'up/closed', TEXT_TYPE, 'more');
  equal(refused.headers.get('stream-closed'), 'true', 'closed stream refusal');

  // The channel goes on from its mark: one more message, then the source's closed event.
  await ok(204, 'append source', 'POST', 'up/ch/a', TEXT_TYPE, 'y');
  await ok(204, 'close source', 'POST', 'up/ch/a', { ...TEXT_TYPE, 'stream-closed': 'true' });
  const events = await eventually('the channel has the new message and the closed event', async () => {
    const got = messages((await snapshot(base, 'up/ch')).body);
    return got.length >= 3 && got;
  });
  equal(
    events.map((e) => [e.stream, e.data ?? e.text ?? null, e.event ?? null]),
    [
      ['up/ch/a', 'x', null],
      ['up/ch/a', 'y', null],
      ['up/ch/a', null, 'closed'],
    ],
    'channel events',
  );

  // The lease (at most a day) is held until its stored expiry, however old the fixture.
  if (leased) {
    const held = Date.parse(leased) > Date.now() + 5_000;
    const head = await ok(200, 'HEAD of the leased stream', 'HEAD', 'up/lease');
    equal(head.headers.get('stream-lease-expires-at'), held ? leased : null, 'the stored lease');
    await ok(200, 'append by the holder', 'POST', 'up/lease', { ...TEXT_TYPE, ...producerOf('holder', 1) }, ', still');
    const other = await ok(held ? 423 : 204, 'append by another writer', 'POST', 'up/lease', TEXT_TYPE, ' theirs');
    equal((await snapshot(base, 'up/lease')).body, held ? 'mine, still' : 'mine, still theirs', 'up/lease after its holder appended');
    if (held && other.headers.get('stream-lease-expires-at') !== leased) throw new Error('423 without the stored expiry');
  }

  // The subscription still covers upsub/*, with its acknowledged cursor: new data is pending.
  if (acked) {
    await ok(204, 'append subscribed', 'POST', 'upsub/a', TEXT_TYPE, ', second');
    const claim = await ok(200, 'claim after the upgrade', 'POST', '__ds/subscriptions/up-sub/claim', JSON_TYPE, JSON.stringify({ worker: 'w' }));
    const sub = JSON.parse(claim.text).streams.find((s) => s.path === 'upsub/a');
    equal([sub?.acked_offset, sub?.has_pending], [acked, true], 'the subscription\'s cursor for upsub/a');
  }

  // A stream made with a type longer than today's cap keeps it: a PUT naming it confirms the
  // stream, appends and forks take it, and only a new stream is refused it.
  if (long) {
    await ok(200, 'PUT again with the long type', 'PUT', 'up/long', { 'content-type': LONG_TYPE });
    await ok(204, 'append with the long type', 'POST', 'up/long', { 'content-type': LONG_TYPE }, '!');
    const fork = { 'stream-forked-from': '/v1/stream/up/long' };
    await ok(201, 'fork naming the long type', 'PUT', 'up/long-fork', { ...fork, 'content-type': LONG_TYPE });
    equal((await snapshot(base, 'up/long-fork')).type, LONG_TYPE, 'the fork takes the long type');
    await ok(400, 'a new stream with the long type', 'PUT', 'up/long-new', { 'content-type': LONG_TYPE });
  }

  // And a stream can still be deleted and created again.
  await ok(204, 'delete', 'DELETE', 'up/ttl');
  await ok(404, 'deleted', 'HEAD', 'up/ttl');
  await ok(201, 'created again', 'PUT', 'up/ttl', TEXT_TYPE);
}

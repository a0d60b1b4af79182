// What each protocol operation costs on Cloudflare, in the units it bills a SQLite-backed
// Durable Object for: SQLite rows read and rows written (index entries included), requests to
// objects, and alarms. Counted, not timed, so one run is the answer: the server runs with
// FAULT_MARKER, which makes each object's answer carry its rows (`x-edgestream-rows`, and
// `x-edgestream-rows-total` since the object started, worker/src/rows.rs). Not part of
// `npm run bench`; docs/benchmark.md has its table.
//
//   node bench/costs.mjs [--base http://127.0.0.1:8787]   (a server started with FAULT_MARKER)
import http from 'node:http';
import { startServer } from '../scripts/dev-server.mjs';
import { option } from './common.mjs';

const argv = process.argv.slice(2);
const given = option(argv, 'base', '');
const server = given ? null : await startServer({ vars: { FAULT_MARKER: 'never-in-a-path', WEBHOOK_ALLOW_LOCALHOST: 'true' } });
const base = given || server.baseUrl;
const run = `${Date.now().toString(36)}`;
const url = (name) => `${base}/v1/stream/cost-${run}/${name}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function rows(res, name = 'x-edgestream-rows') {
  const v = res.headers.get(name);
  if (!v) return null;
  const m = /read=(\d+) written=(\d+)/.exec(v);
  return { read: Number(m[1]), written: Number(m[2]) };
}

async function req(name, method, headers = {}, body) {
  const res = await fetch(url(name), { method, headers, body });
  await res.arrayBuffer();
  if (res.status >= 500) throw new Error(`${method} ${name}: ${res.status}`);
  return res;
}

/** The object's rows since it started, from a HEAD (which reads no row once it is awake). */
async function total(name) {
  return rows(await req(name, 'HEAD'), 'x-edgestream-rows-total');
}
const diff = (a, b) => ({ read: b.read - a.read, written: b.written - a.written });

const table = [];
function record(op, r, calls, note = '') {
  table.push({ op, ...r, calls, note });
}

const text = { 'content-type': 'text/plain' };
const json = { 'content-type': 'application/json' };

// Create.
{
  const res = await req('create', 'PUT', text);
  record('create (PUT, empty)', rows(res), '1 + registry 1', 'object start: ' + JSON.stringify(rows(res, 'x-edgestream-start-rows')));
  const res2 = await req('create-body', 'PUT', text, 'x'.repeat(100));
  record('create (PUT, 100-byte body)', rows(res2), '1 + registry 1');
  record('create again, same config (PUT, 200)', rows(await req('create', 'PUT', text)), '1');
}
// Appends.
{
  await req('append', 'PUT', text);
  await req('append', 'POST', text, 'a');
  record('append (POST, 100 B)', rows(await req('append', 'POST', text, 'x'.repeat(100))), '1');
  const p = (seq, id = 'p1') => ({ ...text, 'producer-id': id, 'producer-epoch': '0', 'producer-seq': String(seq) });
  record('producer append, new producer', rows(await req('append', 'POST', p(0), 'x')), '1');
  record('producer append, next seq', rows(await req('append', 'POST', p(1), 'x')), '1');
  record('producer append, duplicate (204)', rows(await req('append', 'POST', p(1), 'x')), '1');
  record('append with Stream-Seq', rows(await req('append', 'POST', { ...text, 'stream-seq': 'a1' }, 'x')), '1');
  await req('json', 'PUT', json);
  for (const n of [1, 10, 100]) {
    const body = JSON.stringify(Array.from({ length: n }, (_, i) => ({ i })));
    record(`JSON append, ${n} message${n > 1 ? 's' : ''}`, rows(await req('json', 'POST', json, body)), '1');
  }
  const lease = { ...p(2), 'stream-lease-ttl': '60' };
  record('producer append taking the writer lease', rows(await req('append', 'POST', lease, 'x')), '1');
  record('producer append under its own lease', rows(await req('append', 'POST', p(3), 'x')), '1');
}
// Reads.
{
  const name = 'read';
  await req(name, 'PUT', text);
  for (let i = 0; i < 20; i++) await req(name, 'POST', text, 'x'.repeat(100));
  record('catch-up GET, 20 appends, from the start', rows(await req(`${name}?offset=-1`, 'GET')), '1');
  const mid = (await req(`${name}?offset=-1`, 'GET')).headers.get('stream-next-offset');
  await req(name, 'POST', text, 'y');
  record('catch-up GET, the last append', rows(await req(`${name}?offset=${mid}`, 'GET')), '1');
  record('GET at the tail (up to date)', rows(await req(`${name}?offset=now`, 'GET')), '1');
  record('HEAD', rows(await req(name, 'HEAD')), '1');
  await req('jsonread', 'PUT', json);
  for (let i = 0; i < 20; i++) await req('jsonread', 'POST', json, '[{"a":1},{"b":2}]');
  record('JSON catch-up GET, 40 messages', rows(await req('jsonread?offset=-1', 'GET')), '1');
}
// Live readers: what each append costs with one open, and what the reader itself costs.
for (const mode of ['long-poll', 'sse']) {
  const name = `live-${mode}`;
  await req(name, 'PUT', text);
  const before = await total(name);
  const ctl = new AbortController();
  const tail = (await req(name, 'HEAD')).headers.get('stream-next-offset');
  const reading = fetch(url(`${name}?offset=${tail}&live=${mode}`), { signal: ctl.signal }).then((r) => r.arrayBuffer()).catch(() => {});
  await sleep(300);
  const appends = 10;
  let appendRows = { read: 0, written: 0 };
  for (let i = 0; i < appends; i++) {
    const r = rows(await req(name, 'POST', text, 'z'));
    appendRows = { read: appendRows.read + r.read, written: appendRows.written + r.written };
  }
  await sleep(300);
  ctl.abort();
  await reading;
  const after = await total(name);
  const d = diff(before, after);
  const reader = { read: d.read - appendRows.read, written: d.written - appendRows.written };
  record(`${mode} reader: its own rows over ${appends} appends`, reader, mode === 'sse' ? '1 (held open)' : '1 per answer', 'messages are sent from memory');
}
// Close, delete.
{
  await req('close', 'PUT', text);
  await req('close', 'POST', text, 'x');
  record('close (POST Stream-Closed: true, empty)', rows(await req('close', 'POST', { ...text, 'stream-closed': 'true' })), '1');
  await req('delete', 'PUT', text);
  await req('delete', 'POST', text, 'x');
  const res = await req('delete', 'DELETE');
  record('DELETE', rows(res), '1 + registry 1');
}
// Fork.
{
  await req('source', 'PUT', text);
  await req('source', 'POST', text, 'x'.repeat(100));
  const before = await total('source');
  const res = await req('fork', 'PUT', { ...text, 'stream-forked-from': `/v1/stream/cost-${run}/source` });
  const src = diff(before, await total('source'));
  record('fork (PUT Stream-Forked-From)', rows(res), '1 + source 1 + registry 1', `the source: ${src.read} read, ${src.written} written`);
  record('catch-up GET of a fork (inherited bytes)', rows(await req('fork?offset=-1', 'GET')), '1 + source 1');
}
// TTL expiry, done by the alarm.
{
  const res = await req('ttl', 'PUT', { ...text, 'stream-ttl': '1' });
  const after = rows(res, 'x-edgestream-rows-total');
  await sleep(2500);
  const gone = await req('ttl', 'HEAD');
  const d = diff(after, rows(gone, 'x-edgestream-rows-total'));
  record('TTL expiry (alarm)', d, '1 alarm + registry 1', `HEAD then: ${gone.status}`);
}
// Channels: a source below a channel.
{
  await req('chan', 'PUT', { ...json, 'stream-channel': 'true' });
  const res = await req('chan/a', 'PUT', json);
  record('create below a channel', rows(res), '1 + registry 1 + channel 1');
  await req('chan/a', 'POST', json, '{"m":0}');
  // An append is answered once the channel has its batch.
  const before = await total('chan');
  const r = rows(await req('chan/a', 'POST', json, '{"m":1}'));
  record('append below a channel: the source', r, '1 + channel 1');
  record('append below a channel: the channel', diff(before, await total('chan')), '');
}

// Subscriptions: what each subscription object reads and writes per append, per wake, per
// delivery, per callback, claim and ack. Its answers carry the same headers as a stream's;
// what notifications and alarms cost shows in `x-edgestream-rows-total` between two GETs (a
// GET writes nothing; its own reads, `own`, are taken off).
{
  const hits = [];
  const hook = http.createServer((rq, rs) => {
    const chunks = [];
    rq.on('data', (c) => chunks.push(c));
    rq.on('end', () => {
      hits.push(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      rs.writeHead(200, json);
      rs.end('{}');
    });
  });
  await new Promise((r) => hook.listen(0, '127.0.0.1', r));
  const hookUrl = `http://127.0.0.1:${hook.address().port}/hook`;
  const subUrl = (id, rest = '') => `${base}/v1/stream/__ds/subscriptions/${id}${rest}`;
  const subCall = async (id, rest, body, token) => {
    const headers = { ...json, ...(token ? { authorization: `Bearer ${token}` } : {}) };
    const res = await fetch(subUrl(id, rest), { method: body === undefined ? 'GET' : rest ? 'POST' : 'PUT', headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    if (res.status >= 300) throw new Error(`subscription ${id}${rest}: ${res.status} ${text}`);
    return { res, body: text ? JSON.parse(text) : null };
  };
  /**
   * The subscription's rows since it started, but for the GETs that asked (which write
   * nothing, and read `own` rows each): an answer's own count may include an alarm's rows.
   */
  const gets = new Map();
  const subTotal = async (id) => {
    const { res } = await subCall(id, '');
    gets.set(id, (gets.get(id) ?? 0) + 1);
    const t = rows(res, 'x-edgestream-rows-total');
    return { read: t.read - gets.get(id) * own.read, written: t.written };
  };
  // Waits for the subscription's alarm (a delivery) to be done: its rows stop changing.
  const settled = async (id) => {
    let last = await subTotal(id);
    for (;;) {
      await sleep(300);
      const now = await subTotal(id);
      if (now.written === last.written) return now;
      last = now;
    }
  };
  const webhookSub = async (id, prefix) => {
    await subCall(id, '', { type: 'webhook', pattern: `${prefix}/*`, webhook: { url: hookUrl }, lease_ttl_ms: 600_000 });
  };
  const prefix = `cost-${run}/subs`;
  const sname = (n) => `subs/${n}`;
  await req(sname('one/s'), 'PUT', json);
  const id = `cost-${run}-one`;
  await webhookSub(id, `${prefix}/one`);
  // A GET's own reads, measured on a quiet subscription.
  let own = { read: 0, written: 0 };
  const quiet = async (sub) => {
    await subCall(sub, '');
    own = rows((await subCall(sub, '')).res);
  };
  await quiet(id);
  // The first append: the link's tail, a wake (its list of streams, the record), and the
  // alarm's delivery.
  let before = await subTotal(id);
  const first = rows(await req(sname('one/s'), 'POST', json, '{"n":0}'));
  while (hits.length < 1) await sleep(20);
  let after = await settled(id);
  record('append, 1 webhook subscription, no wake out: the stream', first, 'stream 1, subscription 1');
  record('... the subscription: notified, wakes, delivers', diff(before, after), '1 alarm run, 1 webhook POST');
  // Appends while the wake is out (not yet called back): the link's tail alone.
  before = after;
  let stream = { read: 0, written: 0 };
  for (let i = 1; i <= 10; i++) {
    const r = rows(await req(sname('one/s'), 'POST', json, `{"n":${i}}`));
    stream = { read: stream.read + r.read, written: stream.written + r.written };
  }
  after = await subTotal(id);
  const per = (r, n) => ({ read: r.read / n, written: r.written / n });
  record('append, 1 webhook subscription, wake out: the stream (per append, of 10)', per(stream, 10), 'stream 1, subscription 1');
  record('... the subscription (per append)', per(diff(before, after), 10), '');
  // The callback acks the wake's streams and ends it; the appends since wake it again.
  const wake = hits.at(-1);
  const acks = wake.streams.map((s) => ({ stream: s.path, offset: s.tail_offset }));
  before = after;
  await subCall(id, '/callback', { wake_id: wake.wake_id, generation: wake.generation, acks, done: true }, wake.callback_token);
  while (hits.length < 2) await sleep(20);
  after = await settled(id);
  record('webhook callback (ack, done) with more pending: the next wake and its delivery', diff(before, after), 'subscription 1, 1 alarm run, 1 webhook POST');
  const next = hits.at(-1);
  before = after;
  const tail = next.streams.map((s) => ({ stream: s.path, offset: s.tail_offset }));
  await subCall(id, '/callback', { wake_id: next.wake_id, generation: next.generation, acks: tail, done: true }, next.callback_token);
  after = await settled(id);
  record('webhook callback (ack, done), nothing more pending', diff(before, after), 'subscription 1');

  // Ten subscriptions over one stream, each with its wake out.
  const ten = Array.from({ length: 10 }, (_, i) => `cost-${run}-ten-${i}`);
  await req(sname('ten/s'), 'PUT', json);
  for (const t of ten) await webhookSub(t, `${prefix}/ten`);
  await req(sname('ten/s'), 'POST', json, '{"n":0}');
  while (hits.length < 2 + 10) await sleep(20);
  const tens = [];
  for (const t of ten) tens.push(await settled(t));
  const tenRows = rows(await req(sname('ten/s'), 'POST', json, '{"n":1}'));
  let subs = { read: 0, written: 0 };
  for (const [i, t] of ten.entries()) {
    const d = diff(tens[i], await subTotal(t));
    subs = { read: subs.read + d.read, written: subs.written + d.written };
  }
  record('append, 10 webhook subscriptions, wakes out: the stream', tenRows, 'stream 1, subscriptions 10');
  record('... the 10 subscriptions together', subs, '');

  // A create that subscriptions cover: the stream stores an entry per subscription, flagged
  // `created` until that subscription has taken the notification saying the stream is new,
  // and clears the flag as it answers; each subscription links the (empty) stream.
  for (const [label, ids, dir] of [['1 webhook subscription', [id], 'one'], ['10 webhook subscriptions', ten, 'ten']]) {
    const subsBefore = [];
    for (const t of ids) subsBefore.push(await settled(t));
    const created = rows(await req(sname(`${dir}/new`), 'PUT', json));
    let linked = { read: 0, written: 0 };
    for (const [i, t] of ids.entries()) {
      const d = diff(subsBefore[i], await settled(t));
      linked = { read: linked.read + d.read, written: linked.written + d.written };
    }
    record(`create (PUT, empty) covered by ${label}: the stream`, created, `stream 1, registry 1, subscriptions ${ids.length}`);
    record(`... the ${ids.length === 1 ? 'subscription' : `${ids.length} subscriptions together`}`, linked, '');
  }

  // Pull-wake: the wake event is an append to the wake stream; a worker claims and acks.
  const pid = `cost-${run}-pull`;
  const wakeStream = `cost-${run}/wake`;
  await req('wake', 'PUT', json);
  await req(sname('pull'), 'PUT', json);
  await subCall(pid, '', { type: 'pull-wake', streams: [`${prefix}/pull`], wake_stream: wakeStream, lease_ttl_ms: 600_000 });
  await quiet(pid);
  before = await subTotal(pid);
  const wakeBefore = await total('wake');
  await req(sname('pull'), 'POST', json, '{"n":0}');
  while ((await total('wake')).written === wakeBefore.written) await sleep(50);
  after = await settled(pid);
  record('append, 1 pull-wake subscription: the subscription (notified, wakes, appends the event)', diff(before, after), '1 alarm run, wake stream 1');
  record('... the wake stream (the wake event)', diff(wakeBefore, await total('wake')), '');
  before = after;
  const { body: claim, res: claimRes } = await subCall(pid, '/claim', { worker: 'w' });
  after = await subTotal(pid);
  record('pull-wake claim', { read: rows(claimRes).read, written: diff(before, after).written }, 'subscription 1');
  before = after;
  const pulled = claim.streams.map((s) => ({ stream: s.path, offset: s.tail_offset }));
  await subCall(pid, '/ack', { wake_id: claim.wake_id, generation: claim.generation, acks: pulled, done: true }, claim.token);
  after = await settled(pid);
  record('pull-wake ack (done), nothing more pending', diff(before, after), 'subscription 1');
  hook.closeAllConnections();
  hook.close();
}

console.log('| operation | rows read | rows written | object requests | note |');
console.log('|---|---:|---:|---|---|');
for (const t of table) console.log(`| ${t.op} | ${t.read} | ${t.written} | ${t.calls} | ${t.note} |`);
await server?.stop();

// What each protocol operation costs on Cloudflare, in the units it bills a SQLite-backed
// Durable Object for: SQLite rows read and rows written (index entries included), requests to
// objects, and alarms. Counted, not timed, so one run is the answer: the server runs with
// FAULT_MARKER, which makes each object's answer carry its rows (`x-edgestream-rows`, and
// `x-edgestream-rows-total` since the object started, worker/src/rows.rs). Not part of
// `npm run bench`; docs/benchmark.md has its table.
//
//   node bench/costs.mjs [--base http://127.0.0.1:8787]   (a server started with FAULT_MARKER)
import { startServer } from '../scripts/dev-server.mjs';
import { option } from './common.mjs';

const argv = process.argv.slice(2);
const given = option(argv, 'base', '');
const server = given ? null : await startServer({ vars: { FAULT_MARKER: 'never-in-a-path' } });
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

console.log('| operation | rows read | rows written | object requests | note |');
console.log('|---|---:|---:|---|---|');
for (const t of table) console.log(`| ${t.op} | ${t.read} | ${t.written} | ${t.calls} | ${t.note} |`);
await server?.stop();

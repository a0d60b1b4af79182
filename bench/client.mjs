// The two clients on the same server: edgestream's (js/src, wasm) beside the reference client
// @durable-streams/client, in Node, reading and writing the same streams on one edgestream
// server (wrangler dev, release build, the Worker's own socket). Each measurement runs in a
// fresh child process that loads one client only, so the CPU time (process.cpuUsage) and the
// peak heap and RSS are that client's; the parent writes the streams and sends the appends.
//
//   node bench/client.mjs [--runs 3] [--catchup-mb 50] [--items 200000] [--messages 20000]
//                         [--appends 20000] [--only catchupBytes,catchupJson,sse,longPoll,producer]
//                         [--clients edgestream,reference] [--json]
//
// CLIENT_BENCH_PROFILE=DIR writes a CPU profile of each measurement (the measured part only) to
// DIR, as CLIENT-WORKLOAD-PID.cpuprofile (open it in Chrome's DevTools). The profiler's own
// thread costs CPU too: the figures of a profiled run are not comparable.
//
// Workloads:
//   catchupBytes  a 50 MB byte stream read from -1 until up to date, batch by batch (see readAll)
//   catchupJson   a JSON stream of 200,000 small messages read from -1, batch by batch
//   sse, longPoll a follower of a new JSON stream while the parent appends 20,000 messages
//                 (4 writers, one message per POST): CPU per message, append→receipt latency
//   producer      20,000 small JSON values through each client's IdempotentProducer, then flush
// Every figure is the median of `--runs` runs, the clients taking turns. `npm run bench` runs it
// too (skip it with `--skip clients`) and puts the table in bench/results/latest.md.
import { fork } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import v8 from 'node:v8';
import { startServer } from '../scripts/dev-server.mjs';
import { option, send } from './common.mjs';

const self = fileURLToPath(import.meta.url);
const now = () => performance.timeOrigin + performance.now();

export const CLIENTS = {
  // CLIENT_BENCH_EDGESTREAM: another copy of the package's node.js (an older js/src and dist), to compare builds.
  edgestream: { label: 'edgestream (js/src + wasm)', module: process.env.CLIENT_BENCH_EDGESTREAM ?? '../js/src/node.js' },
  reference: { label: '@durable-streams/client', module: '@durable-streams/client' },
};

export const CLIENT_WORKLOADS = ['catchupBytes', 'catchupJson', 'sse', 'longPoll', 'producer'];

// ---------------------------------------------------------------------------------------------
// The child: one client, one measurement.

/** Peak V8 heap, sampled every 10 ms while the event loop turns, and at the end. */
function heapSampler() {
  let peak = v8.getHeapStatistics().used_heap_size;
  const sample = () => (peak = Math.max(peak, v8.getHeapStatistics().used_heap_size));
  const timer = setInterval(sample, 10);
  return () => {
    clearInterval(timer);
    sample();
    return peak;
  };
}

/** Reads `url` from -1 until caught up, batch by batch, counting bytes or items. */
async function readAll(client, lib, url, json) {
  let count = 0;
  if (client === 'edgestream') {
    for await (const batch of lib.stream({ url, offset: '-1', live: false })) count += json ? batch.items.length : batch.bytes.length;
    return count;
  }
  // With `live: false` the reference client 0.2.7 stops after the first response even when that
  // is not up to date (a read of more than one response, 16 MiB each on edgestream, ends early):
  // it reads live here and is cancelled at upToDate, which also spares waiting for its `closed`,
  // which may resolve before the subscriber has had the last batch.
  const res = await lib.stream({ url, offset: '-1', live: 'long-poll', json });
  await new Promise((resolve, reject) => {
    const end = (batch) => batch.upToDate && (res.cancel(), resolve());
    if (json) res.subscribeJson((batch) => end(batch, (count += batch.items.length)));
    else res.subscribeBytes((chunk) => end(chunk, (count += chunk.data.length)));
    res.closed.catch(reject);
  });
  return count;
}

/**
 * Follows `url` (a JSON stream) in `live` mode until `total` messages carrying `{ i, t }` came,
 * calling `onFirst` after the first. Returns the latencies, ms, of the messages with i >= 0.
 */
async function follow(client, lib, url, live, total, onFirst) {
  const latencies = [];
  latencies.batches = 0;
  let seen = 0;
  let done;
  const finished = new Promise((resolve) => (done = resolve));
  const take = (items) => {
    const t = now();
    if (items.length > 0 && seen > 0) latencies.batches++;
    for (const m of items) {
      if (m.i >= 0) latencies.push(t - m.t);
      if (++seen === 1) onFirst();
    }
    if (seen >= total) done();
  };
  if (client === 'edgestream') {
    const feed = lib.stream({ url, offset: '-1', live: live === 'longPoll' ? 'long-poll' : 'sse' });
    for await (const batch of feed) {
      take(batch.items);
      if (seen >= total) break;
    }
  } else {
    const res = await lib.stream({ url, offset: '-1', live: live === 'longPoll' ? 'long-poll' : 'sse', json: true });
    res.subscribeJson((batch) => take(batch.items));
    await finished;
    res.cancel();
  }
  return latencies;
}

async function produce(client, lib, url, count) {
  const value = (i) => ({ i, kind: 'tick', pad: 'xxxxxxxxxxxxxxxx' });
  const stream = new lib.DurableStream({ url, contentType: 'application/json' });
  const producer = new lib.IdempotentProducer(stream, `bench-${process.pid}`, { autoClaim: true, onError: (e) => console.error(e) });
  // The reference producer takes only strings and bytes.
  if (client === 'edgestream') for (let i = 0; i < count; i++) producer.append(value(i));
  else for (let i = 0; i < count; i++) producer.append(JSON.stringify(value(i)));
  await producer.flush();
  await producer.detach();
}

/** Starts the CPU profiler when CLIENT_BENCH_PROFILE names a directory; the result stops it. */
async function profiler(task) {
  const dir = process.env.CLIENT_BENCH_PROFILE;
  if (!dir) return async () => {};
  const { Session } = await import('node:inspector');
  const session = new Session();
  session.connect();
  const post = (method, params) => new Promise((resolve, reject) => session.post(method, params, (e, r) => (e ? reject(e) : resolve(r))));
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: 100 });
  await post('Profiler.start');
  return async () => {
    const { profile } = await post('Profiler.stop');
    writeFileSync(path.join(dir, `${task.client}-${task.kind}-${process.pid}.cpuprofile`), JSON.stringify(profile));
    session.disconnect();
  };
}

async function child(task) {
  const lib = await import(CLIENTS[task.client].module);
  // Warm up: the wasm loaded, the code paths compiled, on a small stream of each kind.
  await readAll(task.client, lib, task.warmBytes, false);
  await readAll(task.client, lib, task.warmJson, true);
  globalThis.gc?.();
  const heap = heapSampler();
  const stopProfile = await profiler(task);
  const rssBefore = process.memoryUsage.rss();
  let cpu;
  let t0;
  let count;
  let latencies;
  if (task.kind === 'catchupBytes' || task.kind === 'catchupJson') {
    cpu = process.cpuUsage();
    t0 = performance.now();
    count = await readAll(task.client, lib, task.url, task.kind === 'catchupJson');
  } else if (task.kind === 'producer') {
    cpu = process.cpuUsage();
    t0 = performance.now();
    await produce(task.client, lib, task.url, task.count);
    count = task.count;
  } else {
    // The follower reads the stream's first message (i = -1) before the parent sends the rest.
    latencies = await follow(task.client, lib, task.url, task.kind, task.count + 1, () => {
      cpu = process.cpuUsage();
      t0 = performance.now();
      process.send({ ready: true });
    });
    count = latencies.length;
  }
  const ms = performance.now() - t0;
  const used = process.cpuUsage(cpu);
  await stopProfile();
  const result = {
    count,
    ms,
    cpuUs: used.user + used.system,
    peakHeapMb: heap() / 2 ** 20,
    // Peak RSS of the whole child (Node, the client, its warm-up) and its growth in the run.
    peakRssMb: (process.resourceUsage().maxRSS * 1024) / 2 ** 20,
    rssGrowthMb: (process.resourceUsage().maxRSS * 1024 - rssBefore) / 2 ** 20,
  };
  if (latencies) {
    latencies.sort((a, b) => a - b);
    result.p50 = latencies[Math.floor(latencies.length * 0.5)];
    result.batches = latencies.batches;
    result.p90 = latencies[Math.floor(latencies.length * 0.9)];
    result.p99 = latencies[Math.min(latencies.length - 1, Math.ceil(latencies.length * 0.99) - 1)];
    result.max = latencies[latencies.length - 1];
  }
  process.send({ result });
}

if (process.argv[2] === '--child') {
  process.once('message', (task) =>
    child(task).then(
      () => process.exit(0),
      (e) => {
        console.error(e);
        process.exit(1);
      },
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// The parent: streams, appends, runs and medians.

const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });

async function create(base, name, contentType) {
  const url = `${base}/v1/stream/${name}`;
  const status = await send(agent, 'PUT', url, undefined, { 'content-type': contentType });
  if (status !== 201 && status !== 200) throw new Error(`PUT ${name}: ${status}`);
  return url;
}

async function post(url, body, contentType) {
  const status = await send(agent, 'POST', url, body, { 'content-type': contentType });
  if (status !== 200 && status !== 204) throw new Error(`POST ${url}: ${status}`);
}

async function byteStream(base, name, mb) {
  const url = await create(base, name, 'application/octet-stream');
  const chunk = Buffer.alloc(2 ** 20, 'edgestream bytes ');
  for (let i = 0; i < mb; i++) await post(url, chunk, 'application/octet-stream');
  return url;
}

async function jsonStream(base, name, items) {
  const url = await create(base, name, 'application/json');
  const per = 2000;
  for (let i = 0; i < items; i += per) {
    const batch = [];
    for (let j = i; j < Math.min(items, i + per); j++) batch.push({ i: j, user: `u${j % 97}`, text: 'hello' });
    await post(url, JSON.stringify(batch), 'application/json');
  }
  return url;
}

/** Runs one task in a fresh child; `whenReady` is called (and awaited) when the child says so. */
function runChild(task, whenReady, timeoutMs = 180_000) {
  return new Promise((resolve, reject) => {
    const proc = fork(self, ['--child'], { execArgv: ['--expose-gc'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`${task.client} ${task.kind}: no result in ${timeoutMs / 1000} s`));
    }, timeoutMs);
    let result;
    proc.on('message', (m) => {
      if (m.ready) whenReady().catch((e) => (proc.kill('SIGKILL'), reject(e)));
      if (m.result) result = m.result;
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      if (result) resolve(result);
      else reject(new Error(`${task.client} ${task.kind}: child exited with ${code}`));
    });
    proc.send(task);
  });
}

/** `count` messages `{ i, t, pad }` by `writers` concurrent writers, one message per POST. */
async function appendMessages(url, count, writers = 4) {
  let next = 0;
  const pad = 'x'.repeat(40);
  const writer = async () => {
    while (next < count) {
      const i = next++;
      await post(url, JSON.stringify({ i, t: now(), pad }), 'application/json');
    }
  };
  await Promise.all(Array.from({ length: writers }, writer));
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};
const r = (x, d = 1) => (x === undefined || x === null ? null : Number(x.toFixed(d)));

/** What one workload's runs come to, for one client. */
function summarise(kind, runs) {
  const m = (f) => median(runs.map(f));
  const out = { runs: runs.length, cpuMs: r(m((x) => x.cpuUs / 1000)), peakHeapMb: r(m((x) => x.peakHeapMb)), peakRssMb: r(m((x) => x.peakRssMb)), rssGrowthMb: r(m((x) => x.rssGrowthMb)) };
  if (kind === 'catchupBytes') out.mbPerSecond = r(m((x) => x.count / 1e6 / (x.ms / 1000)));
  if (kind === 'catchupJson') out.itemsPerSecond = Math.round(m((x) => x.count / (x.ms / 1000)));
  if (kind === 'sse' || kind === 'longPoll') {
    out.cpuUsPerMessage = r(m((x) => x.cpuUs / x.count));
    // Messages per batch: a client that takes longer to ask again gets more per batch, and so
    // spends less CPU per message; compare CPU per message with this beside it.
    out.perBatch = r(m((x) => x.count / x.batches), 2);
    out.p50 = r(m((x) => x.p50), 2);
    out.p99 = r(m((x) => x.p99), 2);
  }
  if (kind === 'producer') {
    out.appendsPerSecond = Math.round(m((x) => x.count / (x.ms / 1000)));
    out.cpuUsPerAppend = r(m((x) => x.cpuUs / x.count), 2);
  }
  out.perRun = runs.map((x) => ({ ms: r(x.ms), cpuMs: r(x.cpuUs / 1000) }));
  return out;
}

/**
 * Measures both clients on one fresh edgestream server. Options: runs, catchupMb, items,
 * messages, appends, only (workload ids), clients (ids of CLIENTS), log (for progress lines).
 */
export async function measureClients({ runs = 3, catchupMb = 50, items = 200_000, messages = 20_000, appends = 20_000, only = CLIENT_WORKLOADS, clients = Object.keys(CLIENTS), log = console.log } = {}) {
  const server = await startServer({ startTimeoutMs: 90_000 });
  const result = { runs, catchupMb, items, messages, appends, workloads: {} };
  try {
    const base = await server.workerUrl();
    const id = Date.now().toString(36);
    const warmBytes = await byteStream(base, `cb-warm-bytes-${id}`, 1);
    const warmJson = await jsonStream(base, `cb-warm-json-${id}`, 2000);
    const urls = {};
    if (only.includes('catchupBytes')) urls.catchupBytes = await byteStream(base, `cb-bytes-${id}`, catchupMb);
    if (only.includes('catchupJson')) urls.catchupJson = await jsonStream(base, `cb-json-${id}`, items);
    let n = 0;
    for (const kind of CLIENT_WORKLOADS.filter((k) => only.includes(k))) {
      const runsOf = Object.fromEntries(clients.map((c) => [c, []]));
      for (let run = 0; run < runs; run++) {
        for (const client of clients) {
          const task = { client, kind, warmBytes, warmJson };
          let whenReady = async () => {};
          if (kind === 'catchupBytes' || kind === 'catchupJson') task.url = urls[kind];
          else {
            task.url = await create(base, `cb-${kind}-${client}-${id}-${n++}`, 'application/json');
            task.count = kind === 'producer' ? appends : messages;
            if (kind !== 'producer') {
              await post(task.url, JSON.stringify({ i: -1, t: now() }), 'application/json');
              whenReady = () => appendMessages(task.url, messages);
            }
          }
          const x = await runChild(task, whenReady);
          log(`   ${kind} ${client} run ${run + 1}: ${(x.ms / 1000).toFixed(2)} s, CPU ${(x.cpuUs / 1000).toFixed(0)} ms, ${x.count} counted${x.p50 === undefined ? '' : `, ${x.batches} batches, p50 ${x.p50.toFixed(1)} ms, p90 ${x.p90.toFixed(1)} ms, p99 ${x.p99.toFixed(1)} ms, max ${x.max.toFixed(0)} ms`}`);
          runsOf[client].push(x);
        }
      }
      result.workloads[kind] = Object.fromEntries(Object.entries(runsOf).map(([c, xs]) => [c, summarise(kind, xs)]));
    }
  } finally {
    await server.stop();
  }
  return result;
}

/** The comparison as a markdown table. */
export function clientTable(c) {
  const rows = [
    ['catchupBytes', 'mbPerSecond', `catch-up read of ${c.catchupMb} MB of bytes`, 'MB/s', true],
    ['catchupBytes', 'cpuMs', 'its CPU', 'ms', false],
    ['catchupBytes', 'peakHeapMb', 'its peak heap', 'MB', false],
    ['catchupBytes', 'peakRssMb', 'its peak RSS (whole process)', 'MB', false],
    ['catchupJson', 'itemsPerSecond', `catch-up read of ${c.items.toLocaleString('en-US')} JSON messages`, 'items/s', true],
    ['catchupJson', 'cpuMs', 'its CPU', 'ms', false],
    ['catchupJson', 'peakHeapMb', 'its peak heap', 'MB', false],
    ['catchupJson', 'peakRssMb', 'its peak RSS (whole process)', 'MB', false],
    ['sse', 'cpuUsPerMessage', `SSE follow of ${c.messages.toLocaleString('en-US')} appends: CPU per message`, 'µs', false],
    ['sse', 'perBatch', 'messages per batch received', '', null],
    ['sse', 'p50', 'append→receipt p50', 'ms', false],
    ['sse', 'p99', 'append→receipt p99', 'ms', false],
    ['longPoll', 'cpuUsPerMessage', `long-poll follow of ${c.messages.toLocaleString('en-US')} appends: CPU per message`, 'µs', false],
    ['longPoll', 'perBatch', 'messages per batch received', '', null],
    ['longPoll', 'p50', 'append→receipt p50', 'ms', false],
    ['longPoll', 'p99', 'append→receipt p99', 'ms', false],
    ['producer', 'appendsPerSecond', `idempotent producer, ${c.appends.toLocaleString('en-US')} appends then flush`, 'appends/s', true],
    ['producer', 'cpuUsPerAppend', 'its CPU per append', 'µs', false],
  ];
  const fmt = (x) => (x === null || x === undefined ? '–' : x >= 100 ? Math.round(x).toLocaleString('en-US') : String(x));
  const lines = ['| workload | unit | edgestream | @durable-streams/client | edgestream ÷ reference |', '|---|---|---|---|---|'];
  for (const [kind, key, label, unit, higher] of rows) {
    const w = c.workloads[kind];
    if (!w) continue;
    const [a, b] = [w.edgestream?.[key], w.reference?.[key]];
    const ratio = higher === null ? '' : typeof a === 'number' && typeof b === 'number' && b ? `${(a / b).toFixed(2)}× ${(higher ? a >= b : a <= b) ? '(better)' : '(worse)'}` : '–';
    lines.push(`| ${label} | ${unit}${higher ? ', higher is better' : ''} | ${fmt(a)} | ${fmt(b)} | ${ratio} |`);
  }
  return lines.join('\n');
}

if (process.argv[2] !== '--child' && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const argv = process.argv.slice(2);
  const only = option(argv, 'only');
  const result = await measureClients({
    runs: Number(option(argv, 'runs', 3)),
    catchupMb: Number(option(argv, 'catchup-mb', 50)),
    items: Number(option(argv, 'items', 200_000)),
    messages: Number(option(argv, 'messages', 20_000)),
    appends: Number(option(argv, 'appends', 20_000)),
    only: only ? only.split(',') : CLIENT_WORKLOADS,
    clients: option(argv, 'clients', Object.keys(CLIENTS).join(',')).split(','),
  });
  console.log(`\n${clientTable(result)}`);
  if (argv.includes('--json')) console.log(JSON.stringify(result, null, 2));
  process.exit(0);
}

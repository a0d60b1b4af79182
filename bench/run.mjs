// `npm run bench`: edgestream beside the reference Node server (@durable-streams/server), on the
// same machine, with the same load generator. Writes bench/results/latest.json and latest.md.
//
//   node bench/run.mjs [--quick] [--only edgestream,ref-memory,ref-file] [--skip appends,catchup,fanout,floor,syncs,clients]
//                      [--rate 50] [--sse 1000] [--ws 200] [--messages 1000] [--catchup-mb 50]
//   node bench/run.mjs --report-only     # rewrite latest.md from latest.json
//
// Servers run one at a time so they never compete for the two cores. Each runs every
// workload; its processes' RSS and CPU time are sampled from /proc throughout: for edgestream
// the whole `wrangler dev` tree (the wrangler Node process, its proxy workerd and the workerd
// running the Worker and its Durable Objects), for the reference server its Node process.
// The Worker must be built first (`npm run build`).
import { fork } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer } from '../scripts/dev-server.mjs';
import { startReferenceServer } from '../scripts/reference-server.mjs';
import { CLK_TCK, readStat } from './common.mjs';
import { clientTable, measureClients } from './client.mjs';
import { floorTable, measureFloor } from './floor.mjs';
import { canTrace, measureSyncs } from './syncs.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.dirname(here);

// ---------------------------------------------------------------------------------------------
// Options

function options(argv) {
  const get = (name, fallback) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 && i + 1 < argv.length ? argv[i + 1] : fallback;
  };
  const quick = argv.includes('--quick');
  const list = (name, all) => (get(name) ? get(name).split(',').map((s) => s.trim()) : all);
  const number = (name, full, small) => Number(get(name, quick ? small : full));
  return {
    quick,
    only: list('only', ['edgestream', 'ref-memory', 'ref-file']),
    skip: list('skip', []),
    reuse: list('reuse', []),
    appendBytes: 100,
    sequentialAppends: number('sequential', 2000, 200),
    concurrentWriters: 16,
    appendsPerWriter: number('per-writer', 250, 25),
    catchupMb: number('catchup-mb', 50, 5),
    // The first reads of a freshly written stream run at half speed or less (caches still cold):
    // those are read but not timed, so the median is of the steady state, for every server.
    catchupWarmups: 2,
    catchupRuns: 7,
    idleMs: 15_000,
    throughputRuns: number('runs', 3, 1),
    sseReaders: number('sse', 1000, 100),
    wsReaders: number('ws', 200, 20),
    messages: number('messages', 1000, 100),
    rate: number('rate', 50, 50),
    readerProcesses: 2,
  };
}

// ---------------------------------------------------------------------------------------------
// HTTP with keep-alive, without fetch's overhead: both servers get the same client.

const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

function request(method, url, { headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, agent, headers }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.setTimeout(60_000, () => req.destroy(new Error(`${method} ${url}: no answer in 60 s`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** Reads a response without keeping it: for catch-up throughput. */
function drain(url) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent }, (res) => {
      let bytes = 0;
      res.on('data', (c) => (bytes += c.length));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, bytes }));
      res.on('error', reject);
    });
    req.setTimeout(120_000, () => req.destroy(new Error(`GET ${url}: no answer in 120 s`)));
    req.on('error', reject);
  });
}

async function must(promise, expected, what) {
  const res = await promise;
  if (!expected.includes(res.status)) {
    throw new Error(`${what}: HTTP ${res.status} ${res.body?.toString().slice(0, 200) ?? ''}`);
  }
  return res;
}

const nowMs = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function withTimeout(promise, ms, what) {
  let timer;
  try {
    return await Promise.race([
      promise,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms / 1000} s`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

function stats(latencies) {
  const sorted = Float64Array.from(latencies).sort();
  return {
    count: sorted.length,
    p50: round(percentile(sorted, 50)),
    p99: round(percentile(sorted, 99)),
    max: round(sorted.length ? sorted[sorted.length - 1] : null),
  };
}

const round = (x, digits = 2) => (x === null || x === undefined || !Number.isFinite(x) ? null : Number(x.toFixed(digits)));

// ---------------------------------------------------------------------------------------------
// Process accounting from /proc: RSS and CPU time of a process tree, sampled.

function descendants(rootPid) {
  const children = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const s = readStat(entry);
    if (!s) continue;
    const list = children.get(s.ppid) ?? [];
    list.push(Number(entry));
    children.set(s.ppid, list);
  }
  const out = [rootPid];
  for (let i = 0; i < out.length; i++) out.push(...(children.get(out[i]) ?? []));
  return out;
}

function roleOf(pid, port) {
  let args = '';
  try {
    args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {}
  if (args.includes('workerd')) {
    return args.includes(`entry=127.0.0.1:${port} `) || args.endsWith(`entry=127.0.0.1:${port}`)
      ? 'workerd (wrangler proxy)'
      : 'workerd (Worker and objects)';
  }
  if (args.includes('reference-server.mjs')) return 'node (reference server)';
  if (args.includes('wrangler-dist')) return 'node (wrangler)';
  if (args.includes('wrangler')) return 'node (wrangler launcher)';
  return args.split(' ')[0] || `pid ${pid}`;
}

/** Samples a process tree every `everyMs`: peak RSS (total and per role) and CPU seconds. */
class ProcessMonitor {
  constructor(rootPid, port, everyMs = 200) {
    this.rootPid = rootPid;
    this.port = port;
    this.pids = new Map(); // pid → { role, ticks, rss }
    this.peakRss = 0;
    this.peakByRole = {};
    this.sample();
    this.timer = setInterval(() => this.sample(), everyMs);
  }

  sample() {
    let total = 0;
    const byRole = {};
    for (const pid of descendants(this.rootPid)) {
      const s = readStat(pid);
      if (!s) continue;
      const known = this.pids.get(pid) ?? { role: roleOf(pid, this.port), ticks: 0, rss: 0 };
      known.ticks = s.ticks;
      known.rss = s.rss;
      this.pids.set(pid, known);
      total += s.rss;
      byRole[known.role] = (byRole[known.role] ?? 0) + s.rss;
    }
    this.lastRss = total;
    this.peakRss = Math.max(this.peakRss, total);
    for (const [role, rss] of Object.entries(byRole)) {
      this.peakByRole[role] = Math.max(this.peakByRole[role] ?? 0, rss);
    }
    return total;
  }

  /** CPU seconds so far, in total and per role. */
  cpu() {
    this.sample();
    const byRole = {};
    let total = 0;
    for (const { role, ticks } of this.pids.values()) {
      byRole[role] = (byRole[role] ?? 0) + ticks / CLK_TCK;
      total += ticks / CLK_TCK;
    }
    return { total, byRole };
  }

  stop() {
    clearInterval(this.timer);
  }
}

function cpuDelta(before, after) {
  const byRole = {};
  for (const [role, seconds] of Object.entries(after.byRole)) {
    byRole[role] = round(seconds - (before.byRole[role] ?? 0));
  }
  return { total: round(after.total - before.total), byRole };
}

// ---------------------------------------------------------------------------------------------
// Servers

async function startEdgestream() {
  const server = await startServer({ startTimeoutMs: 90_000 });
  // Load goes to the Worker's own workerd socket; wrangler's proxy, which production does not
  // have, is measured apart (appendsViaProxy).
  return {
    baseUrl: await server.workerUrl(),
    proxyUrl: server.baseUrl,
    pid: server.pid,
    port: server.port,
    webSocket: true,
    /** The stream's object marks the response of the request that started (or woke) it. */
    coldStart: (res) => /\bcold-start\b/.test(res.headers['server-timing'] ?? ''),
    stop: () => server.stop(),
  };
}

async function startReference(dataDir) {
  const server = await startReferenceServer({ nodeArgs: ['--expose-gc'], compression: false, dataDir, startTimeoutMs: 30_000 });
  return {
    baseUrl: server.url,
    pid: server.pid,
    port: Number(new URL(server.url).port),
    webSocket: false,
    /** A full collection in the server process, before memory is sampled. */
    async collectGarbage() {
      server.collectGarbage();
      await sleep(500);
    },
    async stop() {
      await server.stop();
      if (dataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

const SERVERS = {
  edgestream: { label: 'edgestream (wrangler dev: workerd)', start: startEdgestream },
  'ref-memory': { label: '@durable-streams/server 0.3.7, in-memory', start: () => startReference() },
  'ref-file': {
    label: '@durable-streams/server 0.3.7, file-backed',
    start: () => startReference(mkdtempSync(path.join(os.tmpdir(), 'ds-ref-'))),
  },
};

// ---------------------------------------------------------------------------------------------
// Workloads

const streamUrl = (server, name) => `${server.baseUrl}/v1/stream/${name}`;
const runId = Date.now().toString(36);

async function createStream(server, name, contentType) {
  await must(request('PUT', streamUrl(server, name), { headers: { 'content-type': contentType } }), [200, 201], `PUT ${name}`);
}

function payload(bytes, i) {
  const head = `${i}:`;
  return Buffer.from(head + 'x'.repeat(Math.max(0, bytes - head.length)));
}

/** Workload 1a: 100 B appends, one after another, on one stream. */
async function appendsSequential(server, opt) {
  const name = `bench-seq-${runId}`;
  await createStream(server, name, 'application/octet-stream');
  const url = streamUrl(server, name);
  const headers = { 'content-type': 'application/octet-stream' };
  for (let i = 0; i < 50; i++) await must(request('POST', url, { headers, body: payload(opt.appendBytes, i) }), [200, 204], 'warm-up');
  const latencies = new Float64Array(opt.sequentialAppends);
  const start = performance.now();
  for (let i = 0; i < opt.sequentialAppends; i++) {
    const t = performance.now();
    await must(request('POST', url, { headers, body: payload(opt.appendBytes, i) }), [200, 204], 'append');
    latencies[i] = performance.now() - t;
  }
  const seconds = (performance.now() - start) / 1000;
  return { appends: opt.sequentialAppends, seconds: round(seconds), perSecond: round(opt.sequentialAppends / seconds, 0), latencyMs: stats(latencies) };
}

/** Workload 1a again, through wrangler dev's proxy: what the proxy adds locally. */
async function appendsViaProxy(server, opt) {
  if (!server.proxyUrl) return undefined;
  return appendsSequential({ ...server, baseUrl: server.proxyUrl }, opt);
}

/** Workload 1b: 16 writers on 16 streams at once, each appending one after another. */
async function appendsConcurrent(server, opt) {
  const names = Array.from({ length: opt.concurrentWriters }, (_, i) => `bench-par-${runId}-${i}`);
  for (const name of names) await createStream(server, name, 'application/octet-stream');
  const headers = { 'content-type': 'application/octet-stream' };
  await Promise.all(names.map(async (name) => {
    for (let i = 0; i < 10; i++) await must(request('POST', streamUrl(server, name), { headers, body: payload(opt.appendBytes, i) }), [200, 204], 'warm-up');
  }));
  const latencies = [];
  const start = performance.now();
  await Promise.all(names.map(async (name) => {
    const url = streamUrl(server, name);
    for (let i = 0; i < opt.appendsPerWriter; i++) {
      const t = performance.now();
      await must(request('POST', url, { headers, body: payload(opt.appendBytes, i) }), [200, 204], 'append');
      latencies.push(performance.now() - t);
    }
  }));
  const seconds = (performance.now() - start) / 1000;
  const appends = opt.concurrentWriters * opt.appendsPerWriter;
  return { writers: opt.concurrentWriters, appends, seconds: round(seconds), perSecond: round(appends / seconds, 0), latencyMs: stats(latencies) };
}

/** Workload 2: fill a stream with `catchupMb` MB, then read it all from -1, page by page. */
async function catchup(server, opt) {
  const name = `bench-catchup-${runId}`;
  await createStream(server, name, 'application/octet-stream');
  const url = streamUrl(server, name);
  const chunk = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 131 + 7) & 0xff;
  const total = opt.catchupMb * chunk.length;
  const fillStart = performance.now();
  for (let i = 0; i < opt.catchupMb; i++) {
    await must(request('POST', url, { headers: { 'content-type': 'application/octet-stream' }, body: chunk }), [200, 204], 'fill');
  }
  const fillSeconds = (performance.now() - fillStart) / 1000;
  const runs = [];
  for (let run = -opt.catchupWarmups; run < opt.catchupRuns; run++) {
    let offset = '-1';
    let bytes = 0;
    let requests = 0;
    const start = performance.now();
    for (;;) {
      const res = await drain(`${url}?offset=${encodeURIComponent(offset)}`);
      requests++;
      if (res.status !== 200) throw new Error(`catch-up read: HTTP ${res.status}`);
      bytes += res.bytes;
      const next = res.headers['stream-next-offset'];
      if (res.headers['stream-up-to-date'] === 'true' || next === offset || !next) break;
      offset = next;
      if (requests > 10_000) throw new Error('catch-up read does not advance');
    }
    const seconds = (performance.now() - start) / 1000;
    if (bytes !== total) throw new Error(`catch-up read returned ${bytes} bytes, expected ${total}`);
    if (run >= 0) runs.push({ seconds, requests, mbPerSecond: total / 1e6 / seconds });
  }
  const sorted = [...runs].sort((a, b) => a.mbPerSecond - b.mbPerSecond);
  const median = sorted[Math.floor(sorted.length / 2)];
  return {
    megabytes: round(total / 1e6, 1),
    fillMbPerSecond: round(total / 1e6 / fillSeconds, 1),
    runs: runs.length,
    requestsPerRead: median.requests,
    mbPerSecond: round(median.mbPerSecond, 1),
    bestMbPerSecond: round(sorted[sorted.length - 1].mbPerSecond, 1),
  };
}

/** Workload 3: many live readers on one stream while one writer appends `messages` messages. */
async function fanout(server, opt, monitor) {
  const name = `bench-fanout-${runId}`;
  await createStream(server, name, 'application/json');
  const wsReaders = server.webSocket ? opt.wsReaders : 0;
  const procs = opt.readerProcesses;
  const children = [];
  const progress = [];
  const results = [];
  const split = (n, i) => Math.floor(n / procs) + (i < n % procs ? 1 : 0);
  await server.collectGarbage?.();
  const baselineRss = monitor.sample();
  try {
    for (let i = 0; i < procs; i++) {
      const child = fork(path.join(here, 'fanout-readers.mjs'), [], { serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      progress[i] = { ready: 0, complete: 0, connected: 0 };
      child.on('message', (m) => {
        if (m.type === 'progress') progress[i] = m;
        else if (m.type === 'result') results[i] = m;
      });
      children.push(child);
      child.send({ cmd: 'start', baseUrl: server.baseUrl, path: name, sse: split(opt.sseReaders, i), ws: split(wsReaders, i), messages: opt.messages, staggerMs: 2 });
    }
    const readers = opt.sseReaders + wsReaders;
    const sum = (key) => progress.reduce((n, p) => n + p[key], 0);
    const readyStart = performance.now();
    while (sum('ready') < readers) {
      if (performance.now() - readyStart > 120_000) throw new Error(`only ${sum('ready')} of ${readers} readers connected`);
      await sleep(100);
    }
    const connectSeconds = (performance.now() - readyStart) / 1000;
    await sleep(1000);
    await server.collectGarbage?.();
    const readyRss = monitor.sample();

    const url = streamUrl(server, name);
    // The cost claim behind holding readers at the edge: with every reader open and nothing
    // appended for a while, the runtime evicts the stream's object (workerd after about 10 s
    // without a request), so the next request has to start it again.
    let sleptWithReaders = null;
    if (server.coldStart) {
      await must(request('HEAD', url), [200], 'fan-out probe');
      await sleep(opt.idleMs);
      sleptWithReaders = server.coldStart(await must(request('HEAD', url), [200], 'fan-out probe'));
    }
    const interval = 1000 / opt.rate;
    const appendLatencies = new Float64Array(opt.messages);
    const writeStart = performance.now();
    for (let seq = 0; seq < opt.messages; seq++) {
      const due = writeStart + seq * interval;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
      const t = nowMs();
      const body = JSON.stringify({ seq, t });
      const sent = performance.now();
      await must(request('POST', url, { headers: { 'content-type': 'application/json' }, body }), [200, 204], 'fan-out append');
      appendLatencies[seq] = performance.now() - sent;
    }
    const writeSeconds = (performance.now() - writeStart) / 1000;
    const deliverStart = performance.now();
    while (sum('complete') < readers && performance.now() - deliverStart < 30_000) await sleep(100);
    const drainSeconds = (performance.now() - deliverStart) / 1000;

    for (const child of children) child.send({ cmd: 'finish' });
    const collectStart = performance.now();
    while (results.filter(Boolean).length < procs) {
      if (performance.now() - collectStart > 30_000) throw new Error('reader processes did not report');
      await sleep(50);
    }
    const merge = (kind) => {
      const parts = results.map((r) => r[kind]);
      const latencies = new Float64Array(parts.reduce((n, p) => n + p.latencies.length, 0));
      let at = 0;
      for (const p of parts) {
        latencies.set(p.latencies, at);
        at += p.latencies.length;
      }
      const readersOfKind = parts.reduce((n, p) => n + p.readers, 0);
      const delivered = parts.reduce((n, p) => n + p.delivered, 0);
      const duplicates = parts.reduce((n, p) => n + p.duplicates, 0);
      const gaps = parts.reduce((n, p) => n + p.gaps, 0);
      const complete = parts.reduce((n, p) => n + p.complete, 0);
      return {
        readers: readersOfKind,
        expected: readersOfKind * opt.messages,
        delivered,
        complete,
        duplicates,
        gaps,
        reconnects: parts.reduce((n, p) => n + p.reconnects, 0),
        errors: parts.reduce((n, p) => n + p.errors, 0),
        exactlyOnceInOrder: readersOfKind > 0 && complete === readersOfKind && duplicates === 0 && gaps === 0 && delivered === readersOfKind * opt.messages,
        latencyMs: stats(latencies),
      };
    };
    const all = results.flatMap((r) => [r.sse.latencies, r.ws.latencies]);
    const allLatencies = new Float64Array(all.reduce((n, a) => n + a.length, 0));
    let at = 0;
    for (const a of all) {
      allLatencies.set(a, at);
      at += a.length;
    }
    return {
      messages: opt.messages,
      ratePerSecond: opt.rate,
      connectSeconds: round(connectSeconds, 1),
      writeSeconds: round(writeSeconds, 1),
      drainSeconds: round(drainSeconds, 1),
      appendLatencyMs: stats(appendLatencies),
      sse: merge('sse'),
      ws: wsReaders > 0 ? merge('ws') : null,
      all: stats(allLatencies),
      rssBaselineMb: round(baselineRss / 2 ** 20, 1),
      rssWithReadersMb: round(readyRss / 2 ** 20, 1),
      kbPerReader: round((readyRss - baselineRss) / 1024 / readers, 1),
      idleSeconds: sleptWithReaders === null ? null : opt.idleMs / 1000,
      sleptWithReaders,
    };
  } finally {
    for (const child of children) {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  }
}

/**
 * Runs an append workload `throughputRuns` times and keeps the median run: a run of a few
 * seconds on a shared 2-core machine varies by a fifth from one run to the next.
 */
function medianRun(run) {
  return async (server, opt, monitor) => {
    const runs = [];
    for (let i = 0; i < opt.throughputRuns; i++) {
      const result = await run(server, opt, monitor);
      if (result === undefined) return undefined; // not for this server
      runs.push(result);
    }
    const sorted = [...runs].sort((a, b) => a.perSecond - b.perSecond);
    return { ...sorted[Math.floor(sorted.length / 2)], runsPerSecond: runs.map((r) => r.perSecond) };
  };
}

const WORKLOADS = [
  { id: 'appendsSequential', group: 'appends', run: medianRun(appendsSequential), timeoutMs: 300_000 },
  { id: 'appendsViaProxy', group: 'appends', run: medianRun(appendsViaProxy), timeoutMs: 300_000 },
  { id: 'appendsConcurrent', group: 'appends', run: medianRun(appendsConcurrent), timeoutMs: 300_000 },
  { id: 'catchup', group: 'catchup', run: catchup, timeoutMs: 600_000 },
  { id: 'fanout', group: 'fanout', run: fanout, timeoutMs: 600_000, freshServer: true },
];

// ---------------------------------------------------------------------------------------------
// One server: start, run everything, account, always stop.

async function benchServer(id, opt) {
  const def = SERVERS[id];
  console.log(`\n== ${def.label}`);
  const result = { label: def.label, workloads: {}, cpuSeconds: {}, errors: {} };
  let server = await def.start();
  let monitor = new ProcessMonitor(server.pid, server.port);
  const peaks = { total: 0, byRole: {} };
  const keepPeaks = () => {
    peaks.total = Math.max(peaks.total, monitor.peakRss);
    for (const [role, rss] of Object.entries(monitor.peakByRole)) peaks.byRole[role] = Math.max(peaks.byRole[role] ?? 0, rss);
  };
  const cpuTotal = { total: 0, byRole: {} };
  let ran = 0;
  try {
    await sleep(1000);
    result.idleRssMb = round(monitor.sample() / 2 ** 20, 1);
    for (const w of WORKLOADS) {
      if (opt.skip.includes(w.group) || opt.skip.includes(w.id)) continue;
      if (w.freshServer && ran > 0) {
        // Memory per reader is measured from a server that has not just freed the catch-up's
        // buffers: an allocator that reuses them would hide what the readers cost.
        keepPeaks();
        monitor.stop();
        await server.stop();
        server = await def.start();
        monitor = new ProcessMonitor(server.pid, server.port);
        await sleep(1000);
      }
      ran++;
      const before = monitor.cpu();
      const t = performance.now();
      process.stdout.write(`   ${w.id} … `);
      try {
        result.workloads[w.id] = await withTimeout(w.run(server, opt, monitor), w.timeoutMs, w.id);
        console.log(`done in ${((performance.now() - t) / 1000).toFixed(1)} s`);
      } catch (e) {
        result.errors[w.id] = e.message;
        console.log(`FAILED: ${e.message}`);
      }
      const spent = cpuDelta(before, monitor.cpu());
      result.cpuSeconds[w.id] = spent;
      cpuTotal.total += spent.total;
      for (const [role, seconds] of Object.entries(spent.byRole)) cpuTotal.byRole[role] = (cpuTotal.byRole[role] ?? 0) + seconds;
    }
    result.cpuSeconds.total = { total: round(cpuTotal.total), byRole: Object.fromEntries(Object.entries(cpuTotal.byRole).map(([k, v]) => [k, round(v)])) };
    keepPeaks();
    result.peakRssMb = round(peaks.total / 2 ** 20, 1);
    result.peakRssByRoleMb = Object.fromEntries(Object.entries(peaks.byRole).map(([k, v]) => [k, round(v / 2 ** 20, 1)]));
  } finally {
    monitor.stop();
    await server.stop();
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// Report

function machine() {
  const cpus = os.cpus();
  return {
    cpus: cpus.length,
    model: cpus[0]?.model ?? 'unknown',
    memoryGb: round(os.totalmem() / 2 ** 30, 1),
    os: `${os.type()} ${os.release()}`,
    node: process.version,
  };
}

const get = (obj, dotted) => dotted.split('.').reduce((o, k) => (o == null ? undefined : o[k]), obj);

/** Rows of the comparison: [label, path in a server's result, unit, higher-is-better]. */
const ROWS = [
  ['1a. sequential appends (100 B)', 'workloads.appendsSequential.perSecond', 'appends/s', true],
  ['1a. latency p50', 'workloads.appendsSequential.latencyMs.p50', 'ms', false],
  ['1a. latency p99', 'workloads.appendsSequential.latencyMs.p99', 'ms', false],
  ['1a. through wrangler dev\'s proxy (local only)', 'workloads.appendsViaProxy.perSecond', 'appends/s', true],
  ['1a. through the proxy: latency p50', 'workloads.appendsViaProxy.latencyMs.p50', 'ms', false],
  ['1b. 16 concurrent writers (100 B)', 'workloads.appendsConcurrent.perSecond', 'appends/s', true],
  ['1b. latency p50', 'workloads.appendsConcurrent.latencyMs.p50', 'ms', false],
  ['1b. latency p99', 'workloads.appendsConcurrent.latencyMs.p99', 'ms', false],
  ['2. catch-up read from -1', 'workloads.catchup.mbPerSecond', 'MB/s', true],
  ['3. fan-out SSE: append→receipt p50', 'workloads.fanout.sse.latencyMs.p50', 'ms', false],
  ['3. fan-out SSE: append→receipt p99', 'workloads.fanout.sse.latencyMs.p99', 'ms', false],
  ['3. fan-out WS: append→receipt p50', 'workloads.fanout.ws.latencyMs.p50', 'ms', false],
  ['3. fan-out WS: append→receipt p99', 'workloads.fanout.ws.latencyMs.p99', 'ms', false],
  ['3. fan-out: append (POST) p99', 'workloads.fanout.appendLatencyMs.p99', 'ms', false],
  ['3. memory per live reader', 'workloads.fanout.kbPerReader', 'KB', false],
  ['4. idle RSS', 'idleRssMb', 'MB', false],
  ['4. peak RSS', 'peakRssMb', 'MB', false],
  ['4. CPU, all workloads', 'cpuSeconds.total.total', 's', false],
  ['4. CPU, fan-out', 'cpuSeconds.fanout.total', 's', false],
];

function ratios(servers) {
  const ours = servers.edgestream;
  if (!ours) return {};
  const out = {};
  for (const id of Object.keys(servers)) {
    if (id === 'edgestream') continue;
    out[id] = {};
    for (const [label, key, , higherIsBetter] of ROWS) {
      const a = get(ours, key);
      const b = get(servers[id], key);
      if (typeof a !== 'number' || typeof b !== 'number' || b === 0) continue;
      out[id][key] = { label, ratio: round(a / b, 2), better: higherIsBetter ? a >= b : a <= b };
    }
  }
  return out;
}

function fmt(x) {
  if (x === null || x === undefined) return '–';
  if (typeof x === 'number') return x >= 100 ? Math.round(x).toLocaleString('en-US') : String(x);
  return String(x);
}

function deliveryLine(f, kind) {
  const d = f?.[kind];
  if (!d) return 'n/a';
  const verdict = d.exactlyOnceInOrder ? 'every message exactly once, in order' : 'NOT exactly once in order';
  return `${d.complete}/${d.readers} readers complete, ${d.delivered.toLocaleString('en-US')}/${d.expected.toLocaleString('en-US')} delivered, ${d.duplicates} duplicates, ${d.gaps} missing or out of order, ${d.reconnects} reconnects: ${verdict}`;
}

function markdown(report) {
  const order = Object.keys(SERVERS);
  const ids = Object.keys(report.servers).sort((a, b) => order.indexOf(a) - order.indexOf(b));
  const refs = ids.filter((id) => id !== 'edgestream');
  const lines = [];
  lines.push(`# Benchmark: edgestream beside the reference server`, '');
  lines.push(`Run ${report.date} on ${report.machine.cpus} × ${report.machine.model}, ${report.machine.memoryGb} GB, ${report.machine.os}, Node ${report.machine.node}. Generated by \`npm run bench\` (bench/run.mjs)${report.options.quick ? ' with --quick (small sizes: not comparable to a full run)' : ''}.`, '');
  lines.push(`Servers ran one at a time on this machine, each with the same load generator (Node, keep-alive HTTP, fan-out readers in ${report.options.readerProcesses} child processes). edgestream is \`wrangler dev\` with the release build and without its DevTools inspector, which production does not have either (while it is on, wrangler relays the runtime's network events for every call of a stream's object to its Node process: about 1 ms of CPU per append in two more processes sharing the two cores; see \`wranglerEnv\` in scripts/dev-server.mjs). The load goes to the Worker's own workerd socket: wrangler's local proxy, a second workerd that funnels every request through one Durable Object of its own and which production does not have, is measured apart (the 1a rows marked \"through wrangler dev's proxy\"). Append rates are ${(report.options.throughputRuns ?? 1) > 1 ? `the median of ${report.options.throughputRuns} runs` : 'from one run'}, catch-up the median of ${report.options.catchupRuns} reads${report.options.catchupWarmups ? ` after ${report.options.catchupWarmups} untimed ones` : ''}. Memory and CPU count the whole wrangler tree, proxy included. The fan-out runs on a freshly started server. Before each memory sample of the fan-out the reference server collects its garbage (node --expose-gc); workerd cannot be told to from outside, so edgestream's memory per reader includes its garbage.`, '');
  const reused = ids.filter((id) => report.servers[id].reusedFrom);
  if (reused.length) lines.push(...reused.map((id) => `_${id}: results reused from the run of ${report.servers[id].reusedFrom} (\`--reuse\`)._`), '');
  lines.push('## Results', '');
  const header = ['workload', 'unit', ...ids.map((id) => id), ...refs.map((id) => `edgestream ÷ ${id}`)];
  lines.push(`| ${header.join(' | ')} |`);
  lines.push(`|${header.map(() => '---').join('|')}|`);
  for (const [label, key, unit, higherIsBetter] of ROWS) {
    const values = ids.map((id) => fmt(get(report.servers[id], key)));
    if (values.every((v) => v === '–')) continue;
    const rs = refs.map((id) => {
      const r = report.ratios[id]?.[key];
      return r ? `${r.ratio}× ${r.better ? '(better)' : '(worse)'}` : '–';
    });
    lines.push(`| ${label} | ${unit}${higherIsBetter ? ', higher is better' : ''} | ${values.join(' | ')} | ${rs.join(' | ')} |`);
  }
  lines.push('');
  lines.push('## Fan-out delivery', '');
  const o = report.options;
  lines.push(`One JSON stream, ${o.sseReaders} SSE readers${o.wsReaders ? ` and ${o.wsReaders} WebSocket readers (edgestream only: the reference server has no WebSocket mode)` : ''}, one writer appending ${o.messages} messages at ${o.rate}/s. Latency is from just before the POST to the reader parsing the message (one clock).`, '');
  for (const id of ids) {
    const f = report.servers[id].workloads.fanout;
    if (!f) continue;
    const slept = f.sleptWithReaders == null ? '' : ` With all ${f.sse.readers + (f.ws?.readers ?? 0)} readers open and ${f.idleSeconds} s without a request, the stream's object ${f.sleptWithReaders ? 'was evicted (hibernated): the next request started it again' : 'was still running: the readers kept it awake'}.`;
    lines.push(`- **${id}**: SSE: ${deliveryLine(f, 'sse')}.${f.ws ? ` WS: ${deliveryLine(f, 'ws')}.` : ''} The writer, which waits for each append, managed ${f.writeSeconds ? round(o.messages / f.writeSeconds, 1) : '?'} appends/s. Readers connected in ${f.connectSeconds} s; RSS ${f.rssBaselineMb} MB before readers, ${f.rssWithReadersMb} MB with them.${slept}`);
  }
  lines.push('');
  lines.push('## Memory and CPU by process', '');
  for (const id of ids) {
    const s = report.servers[id];
    const peak = Object.entries(s.peakRssByRoleMb ?? {}).map(([role, mb]) => `${role} ${mb} MB`).join(', ');
    const cpu = Object.entries(s.cpuSeconds?.total?.byRole ?? {}).map(([role, sec]) => `${role} ${sec} s`).join(', ');
    lines.push(`- **${id}**: peak RSS ${peak}; CPU over all workloads: ${cpu}.`);
    const fan = s.cpuSeconds?.fanout?.byRole;
    if (fan) lines.push(`  Fan-out CPU: ${Object.entries(fan).map(([role, sec]) => `${role} ${sec} s`).join(', ')}.`);
  }
  lines.push('');
  const ours = report.servers.edgestream;
  if (ours) {
    lines.push('## Targets (issue 4)', '');
    const f = ours.workloads.fanout;
    const p99 = f?.sse?.latencyMs?.p99;
    lines.push(`- Fan-out p99 under 50 ms for ${o.sseReaders} SSE readers, every message delivered: ${p99 == null ? 'not measured' : `p99 ${p99} ms, ${f.sse.exactlyOnceInOrder ? 'all delivered' : 'NOT all delivered'}: ${p99 < 50 && f.sse.exactlyOnceInOrder ? 'met' : 'NOT met'}`}.`);
    for (const id of refs) {
      const r = report.ratios[id] ?? {};
      const verdict = (key) => (r[key] ? (r[key].better ? 'met' : 'NOT met') : 'not measured');
      lines.push(`- Against ${id}: sequential appends ${verdict('workloads.appendsSequential.perSecond')}, concurrent appends ${verdict('workloads.appendsConcurrent.perSecond')}, catch-up ${verdict('workloads.catchup.mbPerSecond')}, memory per live reader ${verdict('workloads.fanout.kbPerReader')}.`);
    }
    lines.push('');
  }
  if (ours) lines.push(...shortfalls(report), '');
  if (report.floor) {
    const fl = report.floor;
    lines.push('## The runtime floor', '');
    lines.push(`workerd CPU per request, in µs, for edgestream and for a plain JS Worker and Durable Object that do the least each request needs (bench/floor/: no wasm, no protocol checks). Sequential requests to each Worker's own socket; the median of ${fl.rounds} runs of ${fl.count.toLocaleString('en-US')}. The floor also calls its object with \`fetch()\` as well as RPC, and forwards the incoming request itself, to show what the way of calling costs. Then concurrent writers, on both.`, '');
    lines.push(floorTable(fl), '');
  }
  if (report.clients) {
    const c = report.clients;
    lines.push('## The clients', '');
    lines.push(`edgestream's client (js/src and its wasm) beside the reference client @durable-streams/client, in Node, on one edgestream server (bench/client.mjs). Each measurement runs in a fresh Node process that loads one client, reads a small stream of each kind to warm up, then is measured: CPU time of that process (\`process.cpuUsage\`), its peak V8 heap and peak RSS. Catch-up reads go from -1 to the end, batch by batch; the followers read a new JSON stream while the bench appends ${c.messages.toLocaleString('en-US')} messages (4 writers, one message per POST), latency from just before the POST to the batch in the reader; the producers append ${c.appends.toLocaleString('en-US')} small JSON values and flush. The median of ${c.runs} runs, the clients taking turns. The server and the appends share the machine's cores with the client: the follow rates are the server's, and CPU per message includes the client's idle costs over the run.`, '');
    lines.push(clientTable(c), '');
  }
  const errors = ids.flatMap((id) => Object.entries(report.servers[id].errors ?? {}).map(([w, e]) => `- ${id} / ${w}: ${e}`));
  if (errors.length) lines.push('## Failures', '', ...errors, '');
  return lines.join('\n');
}

/** What the sync trace says about an append's cost, as a sentence (or nothing). */
function syncsSentence(report) {
  const m = report.syncs?.mainThread;
  if (!m) return '';
  return ` The thread also waits on disk: traced with \`perf trace\` (bench/syncs.mjs), the commit of each append synced to disk on that same thread (${m.calls.toLocaleString('en-US')} syncs for ${report.syncs.appends.toLocaleString('en-US')} appends, ${m.avgUs} µs each on average with tracing, ${m.minUs} µs the shortest), and nothing else ran meanwhile: ${Math.round(m.blockedShare * 100)}% of the traced run.`;
}

/** What the runtime floor says about an append's cost, as a sentence (or nothing). */
function floorAppend(report) {
  const ours = report.floor?.ours?.append;
  const floor = report.floor?.floor?.append;
  if (!ours || !floor) return '';
  const cheapest = Math.min(...['append', 'appendFetch', 'appendForward'].map((k) => report.floor.floor[k]).filter(Boolean));
  const a = report.floor.ours.concurrent;
  const b = report.floor.floor.concurrent;
  const measured = a && b
    ? ` Measured directly: with the same ${b.writers} concurrent writers, each on an object of its own, the floor reached ${b.perSecond.toLocaleString('en-US')} appends/s (p99 ${b.p99} ms) against ${a.perSecond.toLocaleString('en-US')}/s (p99 ${a.p99} ms) for edgestream in the same measurement.`
    : '';
  return ` Most of that CPU is the runtime's: a plain JS Worker and object that only store the row (bench/floor/) cost ${floor.toLocaleString('en-US')} µs per sequential append (${cheapest.toLocaleString('en-US')} µs the cheapest way of calling the object) against ${ours.toLocaleString('en-US')} µs for ours, so even with no code of ours one thread would cap near ${Math.round(1e6 / cheapest).toLocaleString('en-US')} appends/s.${measured}`;
}

/** The floor's SSE fan-out beside ours (bench/floor.mjs), as a sentence; '' if not measured. */
function fanoutFloor(report) {
  const ours = report.floor?.ours?.fanout;
  const floor = report.floor?.floor?.fanout;
  if (!ours || !floor) return '';
  const readers = report.options.sseReaders;
  const [wsOurs, wsFloor] = [report.floor.ours.fanoutWs, report.floor.floor.fanoutWs];
  const ws = wsOurs && wsFloor
    ? ` With ${wsFloor.readers} WebSocket readers whose sockets the object holds, the floor spent ${wsFloor.usPerDelivery} µs per message per reader against ${wsOurs.usPerDelivery} µs for edgestream, which sends each reader one message per append too (under edgestream.v3: the data with its control fields) and checks it against the reader's receipts.`
    : '';
  return ` Measured directly (bench/floor.mjs): with ${floor.readers} SSE readers held the same way, each fed by an internal socket the object accepted, a plain JS Worker with no wasm and no protocol spent ${floor.usPerDelivery} µs of workerd CPU per message per reader against ${ours.usPerDelivery} µs for edgestream, so even with no code of ours one message to ${readers.toLocaleString('en-US')} SSE readers would take about ${Math.round((floor.usPerDelivery * readers) / 1000)} ms of the thread.${ws}`;
}

/** CPU seconds of the roles whose name matches `pattern`, in one phase (`total` or `fanout`). */
function roleCpu(server, phase, pattern) {
  const byRole = server?.cpuSeconds?.[phase]?.byRole ?? {};
  return Object.entries(byRole).reduce((sum, [role, sec]) => (pattern.test(role) ? sum + sec : sum), 0);
}

/**
 * Where edgestream falls short and why, from this run's own profile: CPU by process, CPU per
 * delivered message, and where an append's time goes.
 */
function shortfalls(report) {
  const ours = report.servers.edgestream;
  const ref = report.servers['ref-memory'];
  const lines = ['## Where edgestream falls short, and why (from this run\'s profile)', ''];
  const direct = ours?.workloads?.appendsSequential?.latencyMs?.p50;
  const proxied = ours?.workloads?.appendsViaProxy?.latencyMs?.p50;
  if (direct && proxied) {
    lines.push(`- **wrangler dev's proxy is measured apart.** Through it a sequential append's p50 is ${proxied} ms instead of ${direct} ms on the Worker's own socket: the proxy, a second workerd, passes every request through one Durable Object of its own. Production has no such hop, so the other figures are taken on the Worker's socket. Memory and CPU still count the whole wrangler tree: of the ${fmt(ours.peakRssMb)} MB peak, the Worker's own workerd held ${fmt(ours.peakRssByRoleMb?.['workerd (Worker and objects)'])} MB.`);
  }
  const f = ours?.workloads?.fanout;
  const delivered = (f?.sse?.delivered ?? 0) + (f?.ws?.delivered ?? 0);
  const workerFan = roleCpu(ours, 'fanout', /Worker and objects/);
  if (delivered && workerFan) {
    const usOurs = (workerFan * 1e6) / delivered;
    const refDelivered = ref?.workloads?.fanout?.sse?.delivered ?? 0;
    const refFan = ref?.cpuSeconds?.fanout?.total ?? 0;
    const usRef = refDelivered ? (refFan * 1e6) / refDelivered : undefined;
    lines.push(`- **Fan-out is bound by one thread.** workerd runs the Worker and its objects on one thread, so the two cores do not help: the Worker's workerd spent ${round(usOurs, 0)} µs of CPU per delivered message (${round(workerFan, 1)} s for ${delivered.toLocaleString('en-US')} deliveries)${usRef ? `, the reference server ${round(usRef, 0)} µs` : ''}, and one append's deliveries to all ${report.options.sseReaders + (report.options.wsReaders ?? 0)} readers take about ${round((usOurs * (report.options.sseReaders + (report.options.wsReaders ?? 0))) / 1000, 0)} ms of that thread. The writer waits for each append, so it managed ${f.writeSeconds ? round(report.options.messages / f.writeSeconds, 1) : '?'} appends/s of the ${report.options.rate}/s asked for. A CPU profile of the isolate (\`node bench/profile.mjs fanout\`) puts most of a delivery in the runtime: the write into the reader's response stream (about 13 µs), the wasm-bindgen glue around socket events and writes, the runtime's own native work, and the object's socket send (about 4 µs); our wasm (frame decode, SSE encode) is under 2 µs.${fanoutFloor(report)} The WebSocket readers are held by the stream's object itself, which sends each of them the append's messages in the append's own turn with no edge request or JS handler in between (so their latency is lower than the SSE readers'); their connections still pass through the Worker's workerd, which relays them natively. Sharing one internal socket per stream per isolate is possible (SSE bodies as JS streams, which any request may write into) and was built and measured on the branch experiment/shared-sse-hub: it halved the memory of an idle SSE reader (89 KB against 194 KB) and saved a little CPU per delivery (65 against 70 µs), but workerd runs each reader's pending read as a separate cross-request task, and at 8 appends/s the SSE p99 rose from 117 to 197 ms. The main branch keeps one internal socket per SSE reader.`);
  }
  const a = ours?.workloads?.appendsSequential?.latencyMs?.p50;
  const b = ref?.workloads?.appendsSequential?.latencyMs?.p50;
  if (a && b) {
    lines.push(`- **Appends pay for durability and two hops.** A sequential append's p50 is ${a} ms against ${b} ms for the in-memory reference. Ours crosses the edge Worker and then the stream's Durable Object, and is acknowledged only after its SQLite transaction is durable (the output gate holds the response until then); the in-memory reference appends to an array in the process that answers.`);
  }
  const concurrent = ours?.workloads?.appendsConcurrent;
  const workerAppends = roleCpu(ours, 'appendsConcurrent', /Worker and objects/);
  if (concurrent?.perSecond && workerAppends) {
    const runs = report.options.throughputRuns ?? 1;
    const msEach = (workerAppends * 1000) / (concurrent.appends * runs);
    lines.push(`- **Concurrent writers share that one thread.** 16 writers on 16 streams are 16 Durable Objects, but workerd runs them and the edge on one thread: each append cost ${round(msEach, 2)} ms of its CPU (${round(workerAppends, 1)} s for ${(concurrent.appends * runs).toLocaleString('en-US')} appends), which caps it near ${Math.round(1000 / msEach).toLocaleString('en-US')} appends/s with nothing else to do; it managed ${concurrent.perSecond.toLocaleString('en-US')}.${floorAppend(report)}${syncsSentence(report)} The file-backed reference also waits for a disk sync per append, but in libuv's thread pool, off its event loop, and lets concurrent appends to a file share one sync.`);
  }
  const kb = f?.kbPerReader;
  if (kb && ref?.workloads?.fanout?.kbPerReader && kb > ref.workloads.fanout.kbPerReader) {
    lines.push(`- **Each live reader costs the runtime a request, an internal socket and a response stream** (${kb} KB of RSS per reader here). \`node bench/reader-memory.mjs\` opens idle readers on a fresh server and splits the cost: the JS heap holds only a few KB of it; the rest is workerd's native memory per request, per WebSocket pair and per response stream, which no code of ours allocates. With \`--floor\` it opens them on bench/floor/, a plain JS Worker that holds each kind of reader the same way with no wasm and no protocol: on 2026-11-30 an idle reader cost that floor 191 KB (SSE) and 141 KB (long-poll), against 225 and 142 KB for edgestream; on 2026-12-04 a WebSocket reader cost it 116 KB, against 142 KB for edgestream, with both declining the permessage-deflate that undici offers (329 and 363 KB when they agreed to it: \`WS_COMPRESSION\`).`);
  }
  const c = ours?.workloads?.catchup?.mbPerSecond;
  const d = ref?.workloads?.catchup?.mbPerSecond;
  if (c && d && c < d) {
    lines.push(`- **Catch-up reads** (${c} against ${d} MB/s) come from SQLite rows of up to 1 MiB, up to 16 MiB per response: the object streams each row as SQLite copied it into a buffer of the runtime's, reading the next while one is sent, and the edge passes the body on. What is left is mostly SQLite reading the rows and the runtime moving the bytes (\`node bench/profile.mjs requests --kind catchup\`). The reference serves them from memory in one process.`);
  }
  return lines;
}

// ---------------------------------------------------------------------------------------------

async function main() {
  if (process.argv.includes('--report-only')) {
    // Rewrites latest.md (and the ratios) from latest.json, e.g. after the report's wording
    // changed or another run's servers were merged in.
    const out = path.join(here, 'results');
    const report = JSON.parse(readFileSync(path.join(out, 'latest.json'), 'utf8'));
    report.ratios = ratios(report.servers);
    writeFileSync(path.join(out, 'latest.json'), `${JSON.stringify(report, null, 2)}\n`);
    writeFileSync(path.join(out, 'latest.md'), `${markdown(report)}\n`);
    console.log('Wrote bench/results/latest.md from latest.json');
    return;
  }
  const opt = options(process.argv.slice(2));
  try {
    readFileSync(path.join(root, 'worker', 'build', 'index.js'));
  } catch {
    throw new Error('the Worker is not built: run `npm run build` first');
  }
  const report = { date: new Date().toISOString(), machine: machine(), options: opt, servers: {} };
  // --reuse ref-file: keep that server's results from the previous latest.json instead of
  // running it again (its fan-out alone takes ten minutes).
  const reuse = opt.reuse;
  if (reuse.length) {
    const previous = JSON.parse(readFileSync(path.join(here, 'results', 'latest.json'), 'utf8'));
    for (const id of reuse) {
      if (!previous.servers[id]) throw new Error(`--reuse ${id}: not in the previous results`);
      report.servers[id] = { ...previous.servers[id], reusedFrom: previous.servers[id].reusedFrom ?? previous.date };
    }
  }
  for (const id of opt.only) {
    if (report.servers[id]) continue;
    if (!SERVERS[id]) throw new Error(`unknown server ${id} (use ${Object.keys(SERVERS).join(', ')})`);
    try {
      report.servers[id] = await benchServer(id, opt);
    } catch (e) {
      report.servers[id] = { label: SERVERS[id].label, workloads: {}, errors: { start: e.message } };
      console.log(`   FAILED: ${e.message}`);
    }
  }
  if (opt.only.includes('edgestream') && !opt.skip.includes('floor')) {
    // The runtime's own cost per request (bench/floor.mjs), so the report can say how much of
    // edgestream's is ours.
    console.log('\n== the runtime floor (bench/floor.mjs)');
    try {
      report.floor = await measureFloor({
        count: opt.quick ? 500 : 3000,
        rounds: opt.quick ? 1 : 3,
        writers: opt.concurrentWriters,
        appends: opt.quick ? 50 : 500,
        readers: opt.quick ? 100 : 500,
        messages: opt.quick ? 20 : 100,
      });
    } catch (e) {
      console.log(`   FAILED: ${e.message}`);
    }
  }
  if (opt.only.includes('edgestream') && !opt.skip.includes('syncs') && canTrace()) {
    // Disk syncs on the Worker's thread during concurrent appends (bench/syncs.mjs).
    console.log('\n== disk syncs on the Worker\'s thread (bench/syncs.mjs, perf trace)');
    try {
      report.syncs = await measureSyncs({ writers: opt.concurrentWriters, appends: opt.quick ? 400 : 3200 });
    } catch (e) {
      console.log(`   FAILED: ${e.message}`);
    }
  }
  if (opt.only.includes('edgestream') && !opt.skip.includes('clients')) {
    // The two clients on one edgestream server (bench/client.mjs).
    console.log('\n== the clients: edgestream beside @durable-streams/client (bench/client.mjs)');
    try {
      report.clients = await measureClients(opt.quick ? { runs: 1, catchupMb: 5, items: 20_000, messages: 1000, appends: 2000 } : {});
    } catch (e) {
      console.log(`   FAILED: ${e.message}`);
    }
  }
  report.ratios = ratios(report.servers);
  const out = path.join(here, 'results');
  mkdirSync(out, { recursive: true });
  writeFileSync(path.join(out, 'latest.json'), `${JSON.stringify(report, null, 2)}\n`);
  const md = markdown(report);
  writeFileSync(path.join(out, 'latest.md'), `${md}\n`);
  console.log(`\n${md}\nWrote bench/results/latest.md and latest.json`);
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e.stack ?? e.message);
    process.exit(1);
  },
);

// How long the Worker's thread waits on disk syncs while writers append. workerd runs the
// Worker and every Durable Object on one thread, and under `wrangler dev` each append's SQLite
// commit syncs to disk on that thread: whatever the sync takes, nothing else runs. This traces
// the sync system calls of the Worker's workerd with `perf trace` while 16 writers append, and
// reports them per thread. The tracing slows the run, so its rate is not the benchmark's.
// `npm run bench` runs it when `perf` is installed and quotes it in bench/results/latest.md.
//
//   node bench/syncs.mjs [--writers 16] [--appends 3200]
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { startServer } from '../scripts/dev-server.mjs';
import { option, send } from './common.mjs';

/** Whether `perf trace` can run here. */
export function canTrace() {
  return spawnSync('perf', ['--version'], { stdio: 'ignore' }).status === 0;
}

/**
 * `perf trace -s` output: per thread, the sync calls and their total time.
 * Returns [{ tid, calls, totalMs, minMs, avgMs, maxMs }].
 */
export function parseSummary(text) {
  const threads = [];
  let current;
  for (const line of text.split('\n')) {
    const head = /^\s*\S+ \((\d+)\), \d+ events/.exec(line);
    if (head) {
      current = { tid: Number(head[1]), calls: 0, totalMs: 0, minMs: Infinity, maxMs: 0 };
      threads.push(current);
      continue;
    }
    const row = /^\s*(fsync|fdatasync)\s+(\d+)\s+\d+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)/.exec(line);
    if (row && current) {
      current.calls += Number(row[2]);
      current.totalMs += Number(row[3]);
      current.minMs = Math.min(current.minMs, Number(row[4]));
      current.maxMs = Math.max(current.maxMs, Number(row[6]));
    }
  }
  return threads
    .filter((t) => t.calls > 0)
    .map((t) => ({ ...t, avgMs: t.totalMs / t.calls }));
}

/** Traces syncs during `appends` appends by `writers` writers on their own streams. */
export async function measureSyncs({ writers = 16, appends = 3200 } = {}) {
  const server = await startServer();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'edgestream-syncs-'));
  const out = path.join(dir, 'perf.txt');
  try {
    const base = await server.workerUrl();
    const pid = await server.workerPid();
    const agent = new http.Agent({ keepAlive: true, maxSockets: writers });
    const streams = Array.from({ length: writers }, (_, i) => `${base}/v1/stream/syncs-${Date.now()}-${i}`);
    /** An append; anything but a 2xx would make the trace meaningless. */
    const append = async (s, body) => {
      const status = await send(agent, 'POST', s, body);
      if (status >= 300) throw new Error(`POST ${s}: ${status}`);
    };
    for (const s of streams) {
      await send(agent, 'PUT', s, '');
      for (let i = 0; i < 20; i++) await append(s, '{"warm":true}');
    }
    const tracer = spawn('perf', ['trace', '-s', '-e', 'fsync,fdatasync', '-p', String(pid), '-o', out], { stdio: 'ignore' });
    const exited = new Promise((resolve) => tracer.on('exit', resolve));
    await new Promise((resolve) => setTimeout(resolve, 1000)); // perf attaches
    const started = performance.now();
    await Promise.all(streams.map(async (s) => {
      for (let i = 0; i < appends / writers; i++) await append(s, JSON.stringify({ i }));
    }));
    const seconds = (performance.now() - started) / 1000;
    tracer.kill('SIGINT');
    await exited;
    agent.destroy();
    const threads = parseSummary(readFileSync(out, 'utf8'));
    const main = threads.find((t) => t.tid === pid);
    return {
      writers,
      appends,
      seconds: Math.round(seconds * 100) / 100,
      mainThread: main ? { calls: main.calls, avgUs: Math.round(main.avgMs * 1000), minUs: Math.round(main.minMs * 1000), blockedShare: Math.round((main.totalMs / 1000 / seconds) * 100) / 100 } : null,
      otherThreads: threads.filter((t) => t.tid !== pid).map((t) => ({ calls: t.calls, avgUs: Math.round(t.avgMs * 1000) })),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await server.stop();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  if (!canTrace()) {
    console.error('bench/syncs.mjs needs perf (apt-get install linux-perf)');
    process.exit(2);
  }
  const argv = process.argv.slice(2);
  const r = await measureSyncs({ writers: Number(option(argv, 'writers', 16)), appends: Number(option(argv, 'appends', 3200)) });
  console.log(`${r.appends} appends by ${r.writers} writers in ${r.seconds} s, traced`);
  if (r.mainThread) {
    const m = r.mainThread;
    console.log(`Worker's thread: ${m.calls} syncs, ${m.avgUs} µs each on average (${m.minUs} µs the shortest), blocked ${Math.round(m.blockedShare * 100)}% of the run`);
  } else {
    console.log("Worker's thread: no syncs");
  }
  for (const t of r.otherThreads) console.log(`another thread: ${t.calls} syncs, ${t.avgUs} µs each`);
  process.exit(0);
}

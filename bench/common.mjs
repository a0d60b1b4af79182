// Small pieces the bench scripts share: command-line options, per-process CPU and memory from
// /proc, one HTTP request on a keep-alive agent, and a copy of a build to serve.
import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));

/** `--name value` from `argv`, or `fallback`. */
export function option(argv, name, fallback) {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : fallback;
}

/** Clock ticks per second, the unit of CPU time in /proc/<pid>/stat. */
export const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** A process's parent, CPU ticks (user + system) and RSS in bytes; null once it has ended. */
export function readStat(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which is in parentheses and may contain spaces.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ppid = Number(rest[1]);
    const ticks = Number(rest[11]) + Number(rest[12]);
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) * 1024;
    return { ppid, ticks, rss };
  } catch {
    return null;
  }
}

/** CPU seconds a running process has used so far. */
export function cpuSeconds(pid) {
  const s = readStat(pid);
  if (!s) throw new Error(`process ${pid} has ended`);
  return s.ticks / CLK_TCK;
}

/**
 * CPU seconds a running process has used so far, summed over its threads from the scheduler's
 * run time (ns): finer than [cpuSeconds]'s clock ticks (10 ms each), for short batches.
 */
export function threadCpuSeconds(pid) {
  let ns = 0;
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // The thread ended meanwhile.
    }
  }
  return ns / 1e9;
}

/**
 * One request on `agent`, its body read and dropped, with `extra` headers. Resolves with the
 * status; rejects on a network error or a 5xx, which no bench request should get.
 */
export function send(agent, method, url, body, extra = {}) {
  return new Promise((resolve, reject) => {
    const headers = body === undefined ? extra : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...extra };
    const req = http.request(url, { method, agent, headers }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode >= 500 ? reject(new Error(`${method} ${url}: ${res.statusCode}`)) : resolve(res.statusCode)));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * Receipts as the edgestream client sends them under edgestream.v3: `receipt(ws, offset)` after
 * each control sends `{"type":"received"}` once the reader has moved 64 KiB since the last one
 * (and after the first control). Nothing is sent on a socket under another subprotocol.
 */
export function receiptSender() {
  let last;
  return (ws, offset) => {
    if (ws.protocol !== 'edgestream.v3') return;
    const position = Number(offset.split('_')[1]);
    if (position - last < 65536) return;
    last = position;
    ws.send(JSON.stringify({ type: 'received', offset }));
  };
}

/**
 * A temporary directory holding a copy of `build` (a `worker/build` directory) and a
 * wrangler.toml that serves it (this checkout's, or `toml`), for `startServer({ config })`. The
 * caller removes it.
 */
export function servedCopy(build, label, toml = path.join(root, 'wrangler.toml')) {
  const dir = mkdtempSync(path.join(tmpdir(), `edgestream-${label}-`));
  cpSync(build, path.join(dir, 'build'), { recursive: true });
  const config = readFileSync(toml, 'utf8').replace(/^main = .*$/m, 'main = "build/index.js"');
  writeFileSync(path.join(dir, 'wrangler.toml'), config);
  return dir;
}

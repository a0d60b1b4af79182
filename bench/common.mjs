// Small pieces the bench scripts share: command-line options, per-process CPU and memory from
// /proc, and one HTTP request on a keep-alive agent.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';

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
 * One request on `agent`, its body read and dropped. Resolves with the status; rejects on a
 * network error or a 5xx, which no bench request should get.
 */
export function send(agent, method, url, body) {
  return new Promise((resolve, reject) => {
    const headers = body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
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

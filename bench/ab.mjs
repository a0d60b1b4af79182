// Compares the workerd CPU per request of two or more builds of the Worker, precisely enough to
// see a change of 10–20 µs on a noisy machine. Not part of `npm run bench`.
//
//   node bench/ab.mjs --builds OLD_BUILD,NEW_BUILD[,…] [--kind append|producer|head|long-poll]
//                     [--configs OLD_TOML,NEW_TOML[,…]] [--rounds 4] [--batches 4] [--count 800]
//
// `long-poll`: each request is a long-poll parked at the tail and the append that answers it.
// `--configs` gives each build its own wrangler.toml (a change of compatibility flags, say);
// by default every build runs with this checkout's.
//
// Each build is a copy of a `worker/build` directory (keep one of the old build before
// rebuilding). Give the first build twice (`--builds old,old,new`) for an A/A control: the
// spread it shows is the resolution of the run.
//
// Why this shape: one server per build measured in turn varies by 10–15% from run to run (and
// even between batches of one server), more than most changes save. Here every round starts a
// fresh server for each build (in an order that rotates by round: the first one started runs a
// little slower), and sends the builds' requests interleaved one by one (rotating which build
// goes first), so whatever the machine does meanwhile falls on all of them alike. The CPU is
// the sum over all threads of each Worker's workerd (/proc/PID/task/*/schedstat, in ns), so
// with more servers running each request also carries more of the idle servers' background
// time: compare the paired differences, not the absolute figures, across runs.
import { rmSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer } from '../scripts/dev-server.mjs';
import { option, send, servedCopy, threadCpuSeconds } from './common.mjs';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const argv = process.argv.slice(2);
const builds = (option(argv, 'builds') ?? '').split(',').filter(Boolean).map((b) => path.resolve(b));
const kind = option(argv, 'kind', 'append');
const rounds = Number(option(argv, 'rounds', 4));
const batches = Number(option(argv, 'batches', 4));
const count = Number(option(argv, 'count', 800));
if (builds.length < 2) throw new Error('--builds OLD,NEW: at least two build directories');
if (!['append', 'producer', 'head', 'long-poll'].includes(kind)) {
  throw new Error(`--kind ${kind}: expected append, producer, head or long-poll`);
}
const configs = (option(argv, 'configs') ?? '').split(',').filter(Boolean).map((c) => path.resolve(c));
if (configs.length > 0 && configs.length !== builds.length) throw new Error('--configs: one wrangler.toml per build');

/** One measured request; anything but a success would measure something else. */
async function measured(s, method, body, extra) {
  const status = await send(s.agent, method, s.url, body, extra);
  if (status >= 300) throw new Error(`${method} ${s.url}: ${status}`);
}

const message = (i) => JSON.stringify({ i, pad: 'x'.repeat(80) });
function one(s, i) {
  if (kind === 'head') return measured(s, 'HEAD');
  if (kind === 'long-poll') return parkedPoll(s, i);
  if (kind === 'producer') {
    return measured(s, 'POST', message(i), { 'producer-id': 'ab', 'producer-epoch': '0', 'producer-seq': String(s.seq++) });
  }
  return measured(s, 'POST', message(i));
}

/**
 * A long-poll at the tail (on its own connection), given time to park, then the append that
 * answers it. It names the tail the previous append reported, so one that parks late still
 * gets that append, at once.
 */
async function parkedPoll(s, i) {
  const poll = request(s.pollAgent, 'GET', `${s.url}?offset=${s.tail ?? 'now'}&live=long-poll`);
  await new Promise((r) => setTimeout(r, 5));
  const append = await request(s.agent, 'POST', s.url, message(i));
  if (append.status >= 300) throw new Error(`POST ${s.url}: ${append.status}`);
  s.tail = append.headers['stream-next-offset'];
  const { status } = await poll;
  if (status !== 200) throw new Error(`long-poll: ${status}, not answered by the append`);
}

/** `send`, resolving to the status and headers. */
function request(agent, method, url, body) {
  return new Promise((resolve, reject) => {
    const headers = body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
    const req = http.request(url, { method, agent, headers }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const median = (a) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const dirs = builds.map((build, b) => servedCopy(build, 'ab', configs[b]));
const perBatch = builds.map(() => []);
try {
  for (let r = 0; r < rounds; r++) {
    const servers = [];
    try {
      for (let k = 0; k < builds.length; k++) {
        const b = (k + r) % builds.length;
        const server = await startServer({ config: path.join(dirs[b], 'wrangler.toml') });
        const agent = () => new http.Agent({ keepAlive: true, maxSockets: 1 });
        servers[b] = { server, pid: await server.workerPid(), agent: agent(), pollAgent: agent(), seq: 0 };
        servers[b].url = `${await server.workerUrl()}/v1/stream/ab-${Date.now().toString(36)}-${b}`;
        await send(servers[b].agent, 'PUT', servers[b].url, '[]');
      }
      for (const s of servers) for (let i = 0; i < 300; i++) await one(s, i);
      for (let batch = 0; batch < batches; batch++) {
        const before = servers.map((s) => threadCpuSeconds(s.pid));
        for (let i = 0; i < count; i++) {
          for (let k = 0; k < servers.length; k++) await one(servers[(i + k) % servers.length], i);
        }
        servers.forEach((s, b) => perBatch[b].push(((threadCpuSeconds(s.pid) - before[b]) * 1e6) / count));
      }
      const last = perBatch.map((p) => median(p.slice(-batches)).toFixed(0));
      console.log(`round ${r + 1}/${rounds}: ${last.join(' / ')} µs per request`);
    } finally {
      for (const s of servers) {
        if (!s) continue;
        s.agent.destroy();
        s.pollAgent.destroy();
        await s.server.stop();
      }
    }
  }
} finally {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
}

console.log(`\n${kind}: workerd CPU per request, µs (${rounds} rounds × ${batches} batches of ${count}, interleaved)`);
builds.forEach((b, k) => {
  const line = `  ${k}: ${path.relative(root, b) || b}: median ${median(perBatch[k]).toFixed(0)}`;
  if (k === 0) return console.log(line);
  const d = perBatch[k].map((x, i) => x - perBatch[0][i]);
  console.log(
    `${line}; against 0, paired: median ${median(d).toFixed(1)} [${Math.min(...d).toFixed(0)} … ${Math.max(...d).toFixed(0)}], ` +
      `lower in ${d.filter((x) => x < 0).length}/${d.length} batches`,
  );
});
process.exit(0);

// What the runtime itself costs per request, beside what edgestream costs. Runs the same
// sequential requests against edgestream and against bench/floor/, a plain JS Worker and
// Durable Object doing the least each request needs, and reports the workerd CPU per request
// (from /proc: the Worker's own workerd only; requests go to its own socket, not wrangler's
// proxy). `npm run bench` runs it too and quotes it in bench/results/latest.md.
//
//   node bench/floor.mjs [--count 3000] [--rounds 3] [--only edgestream|floor]
import { readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { startServer } from '../scripts/dev-server.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const WARMUP = 200;

/** What is measured, by id: its label, and the request to edgestream and to the floor. */
export const FLOOR_KINDS = {
  notFound: { label: '404 answered at the edge', ours: ['GET', '/no-such-page'], floor: ['GET', '/404'] },
  head: { label: 'HEAD: edge, then object, no storage', ours: ['HEAD', 'STREAM'], floor: ['GET', '/rpc/head'] },
  headFetch: { label: 'the same, object called with fetch()', floor: ['GET', '/fetch/head'] },
  append: { label: 'append: edge, then object, one SQLite row', ours: ['POST', 'STREAM'], floor: ['POST', '/rpc/append'] },
  appendFetch: { label: 'the same, object called with fetch()', floor: ['POST', '/fetch/append'] },
  appendForward: { label: 'the same, fetch() of the incoming request', floor: ['POST', '/forward/append'] },
};

/** CPU seconds (user + system) a process has used so far. */
function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

function request(agent, url, method, body) {
  return new Promise((resolve, reject) => {
    const headers = body ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } : {};
    const req = http.request(url, { method, agent, headers }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode >= 500 ? reject(new Error(`${method} ${url}: ${res.statusCode}`)) : resolve(res.statusCode)));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const message = (i) => JSON.stringify({ i, pad: 'x'.repeat(80) });

/** Median workerd CPU per request, in µs, for each kind `side` ('ours' or 'floor') has. */
async function measure(server, side, { count, rounds }) {
  const base = await server.workerUrl();
  const pid = await server.workerPid();
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const stream = `/v1/stream/floor-${Date.now()}`;
  if (side === 'ours') await request(agent, base + stream, 'PUT', '[]');
  const results = {};
  try {
    for (const [id, kind] of Object.entries(FLOOR_KINDS)) {
      if (!kind[side]) continue;
      const [method, p] = kind[side];
      const url = base + (p === 'STREAM' ? stream : p);
      const body = method === 'POST' ? message : () => undefined;
      const samples = [];
      for (let round = 0; round < rounds; round++) {
        for (let i = 0; i < WARMUP; i++) await request(agent, url, method, body(i));
        const before = cpuSeconds(pid);
        for (let i = 0; i < count; i++) await request(agent, url, method, body(i));
        samples.push(((cpuSeconds(pid) - before) * 1e6) / count);
      }
      samples.sort((a, b) => a - b);
      results[id] = Math.round(samples[Math.floor(samples.length / 2)]);
    }
  } finally {
    agent.destroy();
  }
  return results;
}

/** Measures both Workers, one after the other: { ours, floor, count, rounds }. */
export async function measureFloor({ count = 3000, rounds = 3, only } = {}) {
  const out = { count, rounds, ours: {}, floor: {} };
  const sides = [
    ['ours', {}],
    ['floor', { config: path.join(here, 'floor', 'wrangler.toml') }],
  ];
  for (const [side, serverOptions] of sides) {
    if (only && only !== (side === 'ours' ? 'edgestream' : 'floor')) continue;
    const server = await startServer(serverOptions);
    try {
      out[side] = await measure(server, side, { count, rounds });
    } finally {
      await server.stop();
    }
  }
  return out;
}

/** The results as a Markdown table. */
export function floorTable({ ours, floor }) {
  const cell = (v) => (v === undefined ? '' : v.toLocaleString('en-US'));
  const rows = Object.entries(FLOOR_KINDS).map(([id, k]) => `| ${k.label} | ${cell(ours[id])} | ${cell(floor[id])} |`);
  return ['| request | edgestream | plain JS floor |', '|---|---|---|', ...rows].join('\n');
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const argv = process.argv.slice(2);
  const option = (name) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 && i + 1 < argv.length ? argv[i + 1] : undefined;
  };
  const result = await measureFloor({
    count: Number(option('count') ?? 3000),
    rounds: Number(option('rounds') ?? 3),
    only: option('only'),
  });
  console.log(`workerd CPU per request, µs (median of ${result.rounds} × ${result.count} sequential requests)\n`);
  console.log(floorTable(result));
  process.exit(0);
}

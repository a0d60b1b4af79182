// What the runtime itself costs per request, beside what edgestream costs. Runs the same
// sequential requests against edgestream and against bench/floor/, a plain JS Worker and
// Durable Object doing the least each request needs, and reports the workerd CPU per request
// (from /proc: the Worker's own workerd only; requests go to its own socket, not wrangler's
// proxy). `npm run bench` runs it too and quotes it in bench/results/latest.md.
//
//   node bench/floor.mjs [--count 3000] [--rounds 3] [--only edgestream|floor]
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { startServer } from '../scripts/dev-server.mjs';
import { cpuSeconds, option, send } from './common.mjs';

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

const message = (i) => JSON.stringify({ i, pad: 'x'.repeat(80) });

/** Median workerd CPU per request, in µs, for each kind `side` ('ours' or 'floor') has. */
async function measure(server, side, { count, rounds }) {
  const base = await server.workerUrl();
  const pid = await server.workerPid();
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const stream = `/v1/stream/floor-${Date.now()}`;
  if (side === 'ours') await send(agent, 'PUT', base + stream, '[]');
  const results = {};
  try {
    for (const [id, kind] of Object.entries(FLOOR_KINDS)) {
      if (!kind[side]) continue;
      const [method, p] = kind[side];
      const url = base + (p === 'STREAM' ? stream : p);
      const body = method === 'POST' ? message : () => undefined;
      const samples = [];
      for (let round = 0; round < rounds; round++) {
        for (let i = 0; i < WARMUP; i++) await send(agent, method, url, body(i));
        const before = cpuSeconds(pid);
        for (let i = 0; i < count; i++) await send(agent, method, url, body(i));
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
  const result = await measureFloor({
    count: Number(option(argv, 'count', 3000)),
    rounds: Number(option(argv, 'rounds', 3)),
    only: option(argv, 'only'),
  });
  console.log(`workerd CPU per request, µs (median of ${result.rounds} × ${result.count} sequential requests)\n`);
  console.log(floorTable(result));
  process.exit(0);
}

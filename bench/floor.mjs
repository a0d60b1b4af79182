// What the runtime itself costs per request, beside what edgestream costs. Runs the same
// sequential requests against edgestream and against bench/floor/, a plain JS Worker and
// Durable Object doing the least each request needs, and reports the workerd CPU per request
// (from /proc: the Worker's own workerd only; requests go to its own socket, not wrangler's
// proxy). It also runs 16 concurrent writers on 16 objects against each, since that is where
// one workerd thread caps the append rate, and an SSE fan-out (readers held at the edge, each
// fed by an internal socket the object accepted), since that is where one thread caps the
// delivery rate. `npm run bench` runs it too and quotes it in bench/results/latest.md.
//
//   node bench/floor.mjs [--count 3000] [--rounds 3] [--appends 500] [--readers 500] [--messages 100]
//                        [--only edgestream|floor] [--fanout-only]
//
// `--fanout-only` skips the request rows and the concurrent writers, for comparing builds on
// the fan-out rows alone (run old and new builds alternately: one run varies by several µs).
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { WebSocket } from 'undici';
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

/**
 * `writers` writers, each appending `appends` times in turn to its own stream (ours) or object
 * (the floor): appends per second and latency percentiles, in ms.
 */
async function concurrent(server, side, { writers, appends }) {
  const base = await server.workerUrl();
  const agent = new http.Agent({ keepAlive: true, maxSockets: writers });
  const tag = Date.now().toString(36);
  const urls = Array.from({ length: writers }, (_, i) =>
    side === 'ours' ? `${base}/v1/stream/floor-writer-${tag}-${i}` : `${base}/fetch/append?o=writer-${tag}-${i}`,
  );
  try {
    for (const url of urls) {
      if (side === 'ours') await send(agent, 'PUT', url, '[]');
      await send(agent, 'POST', url, message(0));
    }
    const latencies = [];
    const started = performance.now();
    await Promise.all(
      urls.map(async (url) => {
        for (let i = 0; i < appends; i++) {
          const t = performance.now();
          await send(agent, 'POST', url, message(i));
          latencies.push(performance.now() - t);
        }
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    latencies.sort((a, b) => a - b);
    const at = (p) => Math.round(latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))] * 10) / 10;
    return { writers, appends: latencies.length, perSecond: Math.round(latencies.length / seconds), p50: at(0.5), p99: at(0.99) };
  } finally {
    agent.destroy();
  }
}

/**
 * `readers` live readers (`mode` sse or ws) at the tail of one stream (ours) or object (the
 * floor), then `messages` appends (ours) or broadcasts (the floor) at 20/s, each awaited: the
 * workerd CPU per message delivered to one reader, in µs, once every reader has every message.
 */
async function fanout(server, side, { readers, messages, mode = 'sse' }) {
  const base = await server.workerUrl();
  const pid = await server.workerPid();
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const readerAgent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
  const tag = Date.now().toString(36);
  const stream = `${base}/v1/stream/floor-fanout-${tag}`;
  const [readUrl, writeUrl, event] =
    side === 'ours'
      ? [`${stream}?offset=now&live=${mode}`, stream, 'event: data\n']
      : [`${base}/live/reader?live=${mode}&o=fanout-${tag}`, `${base}/live/broadcast?o=fanout-${tag}`, 'data: '];
  if (side === 'ours') await send(agent, 'PUT', stream, '[]');
  const counts = new Array(readers).fill(0);
  const requests = [];
  try {
    for (let i = 0; i < readers; i++) {
      if (mode === 'ws') {
        // Ours sends each append as one message (data with its control fields) to clients that
        // offer edgestream.v3, as the edgestream client does; the client's first receipt follows
        // its first control, and 100 small messages never add up to the 64 KiB of the next.
        const ws = new WebSocket(readUrl.replace('http', 'ws'), side === 'ours' ? 'edgestream.v3' : undefined);
        let receipted = false;
        ws.addEventListener('message', (e) => {
          if (side !== 'ours' || String(e.data).startsWith('{"type":"data"')) counts[i]++;
          if (side === 'ours' && !receipted) {
            const offset = JSON.parse(String(e.data)).streamNextOffset;
            if (offset) {
              receipted = true;
              ws.send(JSON.stringify({ type: 'received', offset }));
            }
          }
        });
        ws.addEventListener('error', () => {});
        requests.push({ destroy: () => ws.close() });
      } else {
        const req = http.get(readUrl, { agent: readerAgent }, (res) => {
          let carry = '';
          res.setEncoding('utf8');
          res.on('data', (chunk) => {
            // Events can be cut anywhere between chunks: keep the end of the last one.
            const text = carry + chunk;
            counts[i] += text.split(event).length - 1;
            carry = text.slice(-(event.length - 1));
          });
          res.on('error', () => {});
        });
        req.on('error', () => {});
        requests.push(req);
      }
      if (i % 50 === 49) await sleep(20);
    }
    await sleep(2000);
    const before = cpuSeconds(pid);
    for (let i = 0; i < messages; i++) {
      const t = performance.now();
      await send(agent, 'POST', writeUrl, message(i));
      await sleep(Math.max(0, 50 - (performance.now() - t)));
    }
    const deadline = Date.now() + 60_000;
    while (counts.some((n) => n < messages) && Date.now() < deadline) await sleep(50);
    const delivered = counts.reduce((a, n) => a + Math.min(n, messages), 0);
    if (delivered < readers * messages) throw new Error(`fan-out: ${delivered} of ${readers * messages} deliveries arrived`);
    return { readers, messages, usPerDelivery: Math.round(((cpuSeconds(pid) - before) * 1e6) / delivered) };
  } finally {
    for (const req of requests) req.destroy();
    agent.destroy();
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Measures both Workers, one after the other: { ours, floor, count, rounds }. */
export async function measureFloor({ count = 3000, rounds = 3, writers = 16, appends = 500, readers = 500, messages = 100, only, fanoutOnly = false } = {}) {
  const out = { count, rounds, ours: {}, floor: {} };
  const sides = [
    ['ours', {}],
    ['floor', { config: path.join(here, 'floor', 'wrangler.toml') }],
  ];
  for (const [side, serverOptions] of sides) {
    if (only && only !== (side === 'ours' ? 'edgestream' : 'floor')) continue;
    const server = await startServer(serverOptions);
    try {
      if (!fanoutOnly) {
        out[side] = await measure(server, side, { count, rounds });
        out[side].concurrent = await concurrent(server, side, { writers, appends });
      }
      if (readers > 0) {
        out[side].fanout = await fanout(server, side, { readers, messages });
        out[side].fanoutWs = await fanout(server, side, { readers, messages, mode: 'ws' });
      }
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
  // No request was measured with --fanout-only.
  const measured = Object.keys(FLOOR_KINDS).some((id) => ours[id] !== undefined || floor[id] !== undefined);
  const table = measured ? ['| request | edgestream | plain JS floor |', '|---|---|---|', ...rows] : [];
  const [a, b] = [ours.concurrent, floor.concurrent];
  if (a || b) {
    const writers = (a ?? b).writers;
    table.push(
      '',
      `${writers} concurrent writers, each on its own stream (edgestream) or object (the floor, called with \`fetch()\`):`,
      '',
      '| | edgestream | plain JS floor |',
      '|---|---|---|',
      `| appends/s | ${cell(a?.perSecond)} | ${cell(b?.perSecond)} |`,
      `| latency p50, ms | ${cell(a?.p50)} | ${cell(b?.p50)} |`,
      `| latency p99, ms | ${cell(a?.p99)} | ${cell(b?.p99)} |`,
    );
  }
  const [c, d] = [ours.fanout, floor.fanout];
  if (c || d) {
    const { readers, messages } = c ?? d;
    const [e, f] = [ours.fanoutWs, floor.fanoutWs];
    table.push(
      '',
      `Fan-out: ${readers} readers, ${messages} messages at 20/s, each to every reader; workerd CPU per message per reader, µs:`,
      '',
      '| | edgestream | plain JS floor |',
      '|---|---|---|',
      `| SSE, held at the edge (an internal socket each) | ${cell(c?.usPerDelivery)} | ${cell(d?.usPerDelivery)} |`,
      ...(e || f ? [`| WebSocket, the client's socket held by the object | ${cell(e?.usPerDelivery)} | ${cell(f?.usPerDelivery)} |`] : []),
    );
  }
  return table.join('\n');
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const argv = process.argv.slice(2);
  const result = await measureFloor({
    count: Number(option(argv, 'count', 3000)),
    rounds: Number(option(argv, 'rounds', 3)),
    appends: Number(option(argv, 'appends', 500)),
    readers: Number(option(argv, 'readers', 500)),
    messages: Number(option(argv, 'messages', 100)),
    only: option(argv, 'only'),
    fanoutOnly: argv.includes('--fanout-only'),
  });
  if (!argv.includes('--fanout-only')) {
    console.log(`workerd CPU per request, µs (median of ${result.rounds} × ${result.count} sequential requests)\n`);
  }
  console.log(floorTable(result));
  process.exit(0);
}

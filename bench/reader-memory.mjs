// What one idle live reader costs the Worker's workerd: opens `--readers` readers of one mode on
// a fresh server, lets them settle, and prints the growth of the process's RSS and, with
// `--heap`, of the isolate's JS heap (through wrangler dev's inspector, which is otherwise off,
// as in the benchmark). Not part of `npm run bench`.
//
//   node bench/reader-memory.mjs [--readers 1000] [--mode sse|long-poll|ws] [--heap] [--floor] [--port N]
//                                [--var NAME:VALUE ...]
//
// `--floor` opens the same readers on bench/floor/, a plain JS Worker that holds them the same
// way with no protocol and no wasm: what the runtime itself costs per reader. `--var` passes a
// setting to the Worker as `npm start` does (`--var WS_COMPRESSION:true` to compare).
//
// Readers start at the tail (`offset=now`), so each holds its request, its internal socket to
// the stream's object and (SSE) its response stream, and nothing else.
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'undici';
import { startServer } from '../scripts/dev-server.mjs';
import { inspect } from '../scripts/inspector.mjs';
import { option, readStat } from './common.mjs';

const argv = process.argv.slice(2);
const readers = Number(option(argv, 'readers', 1000));
const mode = option(argv, 'mode', 'sse');
if (!['sse', 'long-poll', 'ws'].includes(mode)) throw new Error(`--mode ${mode}: expected sse, long-poll or ws`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const withHeap = argv.includes('--heap');
const floor = argv.includes('--floor');
const port = option(argv, 'port', undefined);
const vars = { LONG_POLL_TIMEOUT_MS: '120000' };
argv.forEach((arg, i) => {
  if (arg !== '--var' || i + 1 >= argv.length) return;
  const [name, ...value] = argv[i + 1].split(':');
  vars[name] = value.join(':');
});
const server = await startServer({
  inspector: withHeap,
  ...(port === undefined ? {} : { port: Number(port) }),
  ...(floor ? { config: fileURLToPath(new URL('floor/wrangler.toml', import.meta.url)) } : { vars }),
});
const sockets = [];
try {
  const base = await server.workerUrl();
  const pid = await server.workerPid();
  const rssMb = () => readStat(pid).rss / (1024 * 1024);
  const session = withHeap ? await inspect(server.inspectorPort) : undefined;
  const heapMb = async () => {
    if (!session) return NaN;
    const r = await session.call('Runtime.getHeapUsage');
    return (r.usedSize ?? r.result?.usedSize ?? 0) / 1e6;
  };
  const stream = `${base}/v1/stream/reader-memory-${Date.now().toString(36)}`;
  if (!floor) await fetch(stream, { method: 'PUT', headers: { 'content-type': 'application/json' } });
  const reader = floor ? `${base}/live/reader?live=${mode}` : `${stream}?offset=now&live=${mode}`;
  const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
  const open = async (n) => {
    for (let i = 0; i < n; i++) {
      if (mode === 'ws') {
        const ws = new WebSocket(reader.replace('http', 'ws'));
        ws.addEventListener('error', () => {});
        sockets.push(ws);
      } else {
        const req = http.get(reader, { agent }, (res) => res.on('data', () => {}).on('error', () => {}));
        req.on('error', () => {});
        sockets.push(req);
      }
      if (i % 50 === 49) await sleep(20);
    }
  };
  // A first batch pays for what is made once (compiled code, the object, its socket list).
  await open(100);
  await sleep(3000);
  const [rss0, heap0] = [rssMb(), await heapMb()];
  await open(readers);
  await sleep(5000);
  const [rss1, heap1] = [rssMb(), await heapMb()];
  const each = (mb) => ((mb * 1024) / readers).toFixed(1);
  const heap = session ? `, JS heap +${(heap1 - heap0).toFixed(1)} MB (${each(heap1 - heap0)} KB each)` : '';
  console.log(`${readers} idle ${mode} readers: RSS +${(rss1 - rss0).toFixed(0)} MB (${each(rss1 - rss0)} KB each)${heap}`);
  session?.close();
} finally {
  for (const s of sockets) (s.close ?? s.destroy).call(s);
  await server.stop();
}
process.exit(0);

// What counting live readers (MAX_LIVE_READERS) costs a new one: holds `--readers` live=ws
// readers on one stream, then makes `--connects` WebSocket handshakes more, one at a time (each
// socket dropped once upgraded, or refused at the limit), and prints workerd's CPU per handshake.
// Run it on the build before the limit (`--build DIR`, a copy of a `worker/build` directory) and
// on this one, with the limit above `--readers` (the object counts its sockets once, for the
// first reader) and at it (`--var MAX_LIVE_READERS:5000`: every handshake is refused, and the
// object counts its sockets at most once a second). Not part of `npm run bench`.
// On 2026-12-05, at 5,000 readers: 1.1 to 1.3 ms per handshake before and after the limit (a
// count on every handshake had cost 1.5 to 2.7 ms more), and 1.06 ms per refused one.
//
//   node bench/reader-limit.mjs [--readers 5000] [--connects 300] [--build DIR] [--var NAME:VALUE ...]
import { rmSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { WebSocket } from 'undici';
import { startServer } from '../scripts/dev-server.mjs';
import { option, servedCopy, threadCpuSeconds } from './common.mjs';

const argv = process.argv.slice(2);
const readers = Number(option(argv, 'readers', 5000));
const connects = Number(option(argv, 'connects', 300));
const build = option(argv, 'build', undefined);
const vars = {};
argv.forEach((arg, i) => {
  if (arg !== '--var' || i + 1 >= argv.length) return;
  const [name, ...value] = argv[i + 1].split(':');
  vars[name] = value.join(':');
});
const copy = build ? servedCopy(path.resolve(build), 'reader-limit') : undefined;
const server = await startServer({ vars, ...(copy ? { config: path.join(copy, 'wrangler.toml') } : {}) });
const sockets = [];
try {
  const base = await server.workerUrl();
  const pid = await server.workerPid();
  const stream = `${base}/v1/stream/reader-limit-${Date.now().toString(36)}`;
  await fetch(stream, { method: 'PUT', headers: { 'content-type': 'text/plain' }, body: 'x' });
  const live = `${stream}?offset=now&live=ws`.replace(/^http/, 'ws');
  for (let opened = 0; opened < readers; ) {
    const batch = Math.min(50, readers - opened);
    await Promise.all(
      Array.from({ length: batch }, async () => {
        const ws = new WebSocket(live);
        sockets.push(ws);
        await new Promise((resolve, reject) => {
          ws.addEventListener('open', resolve);
          ws.addEventListener('error', () => reject(new Error('a reader was refused')));
        });
      }),
    );
    opened += batch;
  }
  const statuses = new Map();
  const before = threadCpuSeconds(pid);
  const started = performance.now();
  for (let i = 0; i < connects; i++) {
    const status = await handshake(live.replace(/^ws/, 'http'));
    statuses.set(status, (statuses.get(status) ?? 0) + 1);
  }
  const cpuUs = ((threadCpuSeconds(pid) - before) / connects) * 1e6;
  const wallMs = (performance.now() - started) / connects;
  console.log(
    JSON.stringify({
      build: build ?? 'this',
      vars,
      readers,
      connects,
      statuses: Object.fromEntries(statuses),
      workerdCpuUsPerHandshake: Math.round(cpuUs),
      wallMsPerHandshake: Number(wallMs.toFixed(2)),
    }),
  );
} finally {
  for (const ws of sockets) ws.close();
  await server.stop();
  if (copy) rmSync(copy, { recursive: true, force: true });
}
process.exit(0);

/** One WebSocket handshake: its status; an upgraded socket is dropped at once. */
function handshake(url) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, {
      agent: false,
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-key': Buffer.from('reader-limit-key').toString('base64'),
        'sec-websocket-version': '13',
      },
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve(res.statusCode);
    });
    req.on('response', (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', reject);
    req.end();
  });
}

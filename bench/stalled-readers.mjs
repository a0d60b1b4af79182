// What clients that stop reading cost the Worker's workerd, by kind, on a fresh server:
//
//   uploads: `--count` concurrent appends of 16 MiB to one stream, each retried on 503 (after
//            its Retry-After) until stored; BODY_BUDGET_BYTES bounds what they hold together.
//   gets:    `--count` catch-up GETs of a 16 MiB stream from -1 on raw sockets that stop
//            reading after their first bytes; each holds the rows its response is streaming
//            from and what its connection buffers, and keeps the stream's object awake
//            (checked after 20 s without a request).
//
// Prints workerd's RSS before and at its peak. Not part of `npm run bench`; it is how the
// memory bounds in docs/reliability.md were measured (`bench/ws-stall.mjs` measures WebSockets).
//
//   node bench/stalled-readers.mjs --kind uploads|gets [--count 16]
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { startServer } from '../scripts/dev-server.mjs';
import { option } from './common.mjs';

const argv = process.argv.slice(2);
const kind = option(argv, 'kind', 'uploads');
const count = Number(option(argv, 'count', 16));
const MIB = 1024 * 1024;
const rssMb = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const OCTETS = { 'content-type': 'application/octet-stream' };

/** Appends `body` until it is stored, waiting out each 503; the statuses it got. */
async function appendUntilStored(url, body, statuses) {
  for (;;) {
    const res = await fetch(url, { method: 'POST', headers: OCTETS, body });
    await res.arrayBuffer();
    statuses[res.status] = (statuses[res.status] ?? 0) + 1;
    if (res.status !== 503) return;
    await sleep(1000 * Number(res.headers.get('retry-after') ?? 1));
  }
}

/** A GET that stops reading once its first bytes arrive. */
function stalledGet(base, path) {
  const socket = net.connect(Number(base.port), base.hostname);
  socket.on('error', () => {});
  socket.write(`GET ${path}?offset=-1 HTTP/1.1\r\nHost: ${base.host}\r\n\r\n`);
  socket.once('data', () => socket.pause());
  return socket;
}

const server = await startServer();
const sockets = [];
try {
  const base = new URL(await server.workerUrl());
  const pid = await server.workerPid();
  const url = `${base.origin}/v1/stream/stalled-${kind}-${Date.now().toString(36)}`;
  const body = new Uint8Array(16 * MIB).fill(7);
  const created = await fetch(url, { method: 'PUT', headers: OCTETS, body: kind === 'gets' ? body : undefined });
  if (created.status !== 201) throw new Error(`cannot create the stream: ${created.status}`);
  await sleep(1000);
  const before = rssMb(pid);
  let peak = before;
  const sampler = setInterval(() => (peak = Math.max(peak, rssMb(pid))), 20);
  let what;
  if (kind === 'uploads') {
    const statuses = {};
    await Promise.all(Array.from({ length: count }, () => appendUntilStored(url, body, statuses)));
    const tail = (await fetch(url, { method: 'HEAD' })).headers.get('stream-next-offset');
    what = `${count} concurrent 16 MiB appends (statuses ${JSON.stringify(statuses)}, tail ${tail})`;
  } else if (kind === 'gets') {
    for (let i = 0; i < count; i++) {
      sockets.push(stalledGet(base, new URL(url).pathname));
      await sleep(20);
    }
    await sleep(5000);
    what = `${count} stalled catch-up GETs of a 16 MiB stream`;
  } else {
    throw new Error(`--kind uploads|gets, not ${kind}`);
  }
  clearInterval(sampler);
  peak = Math.max(peak, rssMb(pid));
  console.log(`${what}: workerd RSS ${before.toFixed(0)} MB before, ${peak.toFixed(0)} MB at its peak (+${(peak - before).toFixed(0)} MB)`);
  if (kind === 'gets') {
    // A page the reader has not taken keeps the object's request open: is the object evicted
    // (its response to the next request marked cold-start) after longer than workerd's ~10 s?
    await sleep(15_000);
    const head = await fetch(url, { method: 'HEAD' });
    const cold = /\bcold-start\b/.test(head.headers.get('server-timing') ?? '');
    console.log(`after 20 s without a request, with the readers still stalled, the stream's object was ${cold ? 'evicted' : 'still awake'}`);
  }
} finally {
  for (const socket of sockets) socket.destroy();
  await server.stop();
}

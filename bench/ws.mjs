// What WebSocket readers and writers cost the Worker's workerd, on a fresh server: `--readers`
// sockets follow one stream while `--appends` POSTs arrive (at 20/s), then one socket appends
// `--writes` frames one after another, each waiting for its ack. Prints the workerd CPU per
// delivery and per socket append, and the delivery latency. Not part of `npm run bench`; it is
// how the README's figures for WebSocket readers held by the stream's object were measured.
//
//   node bench/ws.mjs [--readers 200] [--appends 300] [--writes 2000] [--protocol edgestream.v3]
//
// Readers offer `--protocol` (default edgestream.v3, as the edgestream client does, sending a
// receipt every 64 KiB they read; edgestream.v2 for none).
import http from 'node:http';
import { WebSocket } from 'undici';
import { startServer } from '../scripts/dev-server.mjs';
import { cpuSeconds, option, receiptSender, send } from './common.mjs';

const argv = process.argv.slice(2);
const readers = Number(option(argv, 'readers', 200));
const appends = Number(option(argv, 'appends', 300));
const writes = Number(option(argv, 'writes', 2000));
const protocol = option(argv, 'protocol', 'edgestream.v3');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];

/** Opens a socket on `url` and resolves once it is open; `onMessage` gets every message. */
function open(url, onMessage) {
  // Offered as the edgestream client offers it: a JSON append arrives as one message.
  const ws = new WebSocket(url, protocol);
  ws.binaryType = 'arraybuffer';
  const receipt = receiptSender();
  ws.addEventListener('message', (e) => {
    onMessage(e.data);
    if (ws.protocol !== 'edgestream.v3' || typeof e.data !== 'string') return;
    const message = JSON.parse(e.data);
    const offset = message.streamNextOffset;
    if (['data', 'control'].includes(message.type) && offset !== undefined) receipt(ws, offset);
  });
  return new Promise((resolve, reject) => {
    ws.addEventListener('open', () => resolve(ws));
    ws.addEventListener('error', () => reject(new Error(`cannot open ${url}`)));
  });
}

// The socket writer measures what one socket can append, waiting for each ack: without the
// per-socket append rate (WS_APPEND_RATE, 500/s by default), which would close it with 1013.
const server = await startServer({ vars: { WS_APPEND_RATE: '1000000' } });
const sockets = [];
try {
  const base = await server.workerUrl();
  const pid = await server.workerPid();
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  const stream = `${base}/v1/stream/ws-bench-${Date.now().toString(36)}`;
  if ((await send(agent, 'PUT', stream, '')) !== 201) throw new Error('cannot create the stream');
  const live = `${stream.replace('http', 'ws')}?offset=now&live=ws`;

  // Fan-out on a JSON stream: each reader notes when each append's message arrives.
  const sentAt = new Map();
  const latencies = [];
  let delivered = 0;
  for (let i = 0; i < readers; i++) {
    sockets.push(
      await open(live, (data) => {
        const message = JSON.parse(data);
        if (message.type !== 'data') return;
        for (const item of message.items) {
          delivered++;
          latencies.push(performance.now() - sentAt.get(item));
        }
      }),
    );
  }
  await sleep(2000);
  const cpu0 = cpuSeconds(pid);
  for (let i = 0; i < appends; i++) {
    const body = `"m${i}"`;
    sentAt.set(JSON.parse(body), performance.now());
    await send(agent, 'POST', stream, body);
    await sleep(50);
  }
  await sleep(1000);
  const fanCpu = cpuSeconds(pid) - cpu0;
  latencies.sort((a, b) => a - b);
  if (delivered !== readers * appends) throw new Error(`delivered ${delivered} of ${readers * appends}`);
  console.log(
    `${readers} WebSocket readers × ${appends} appends: workerd ${((fanCpu * 1e6) / delivered).toFixed(1)} µs of CPU per delivery (the appends included); append→receipt p50 ${percentile(latencies, 0.5).toFixed(1)} ms, p99 ${percentile(latencies, 0.99).toFixed(1)} ms`,
  );
  for (const ws of sockets.splice(0)) ws.close();
  await sleep(1000);

  // Appends over one socket, each acknowledged before the next is sent.
  let acked;
  const writer = await open(live, (data) => {
    if (typeof data === 'string' && JSON.parse(data).type === 'ack') acked();
  });
  sockets.push(writer);
  const cpu1 = cpuSeconds(pid);
  const t0 = performance.now();
  for (let i = 0; i < writes; i++) {
    const ack = new Promise((resolve) => (acked = resolve));
    writer.send(JSON.stringify({ type: 'append', id: i, data: 'x'.repeat(100) }));
    await ack;
  }
  const seconds = (performance.now() - t0) / 1000;
  console.log(
    `${writes} appends over one socket: ${(writes / seconds).toFixed(0)}/s, workerd ${(((cpuSeconds(pid) - cpu1) * 1e6) / writes).toFixed(0)} µs of CPU each`,
  );
} finally {
  for (const ws of sockets) ws.close();
  await server.stop();
}

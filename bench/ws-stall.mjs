// What a live WebSocket client that stopped reading costs the Worker's workerd: on a fresh
// server, one client opens `live=ws` at the tail of a JSON stream with a raw socket, offering
// `--protocol`, and then never reads (nor sends a receipt) while `--mib` appends of 1 MiB arrive.
// Prints workerd's RSS before and at its peak. With `edgestream.v3` the server closes the socket
// once it is WS_BACKLOG_BYTES behind its receipts; with `edgestream.v2`, which sends none, once it
// has been sent WS_BACKLOG_BYTES; `none` opens no client, for the growth of the appends alone. Not
// part of `npm run bench`; it is how docs/websocket.md's figures were measured.
//
//   node bench/ws-stall.mjs [--protocol edgestream.v3|edgestream.v2|none] [--mib 200]
import http from 'node:http';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { startServer } from '../scripts/dev-server.mjs';
import { option, send } from './common.mjs';

const argv = process.argv.slice(2);
const protocol = option(argv, 'protocol', 'edgestream.v3');
const mib = Number(option(argv, 'mib', 200));
const rssMb = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A WebSocket handshake on a raw socket, which is then paused: a client that stopped reading. */
async function stalledClient(url, path) {
  const socket = net.connect(Number(url.port), url.hostname);
  await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  socket.write(
    [
      `GET ${path}?offset=now&live=ws HTTP/1.1`,
      `Host: ${url.host}`,
      'Connection: Upgrade',
      'Upgrade: websocket',
      'Sec-WebSocket-Version: 13',
      `Sec-WebSocket-Key: ${Buffer.from('0123456789abcdef').toString('base64')}`,
      `Sec-WebSocket-Protocol: ${protocol}`,
      '',
      '',
    ].join('\r\n'),
  );
  let head = '';
  await new Promise((resolve) => {
    const onData = (chunk) => {
      head += chunk.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      socket.off('data', onData);
      resolve();
    };
    socket.on('data', onData);
  });
  if (!head.startsWith('HTTP/1.1 101')) throw new Error(`handshake refused: ${head.split('\r\n')[0]}`);
  // Let the first control arrive, then stop reading.
  await sleep(300);
  socket.pause();
  return socket;
}

const server = await startServer();
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
let client;
try {
  const base = await server.workerUrl();
  const pid = await server.workerPid();
  const path = `/v1/stream/ws-stall-${Date.now().toString(36)}`;
  if ((await send(agent, 'PUT', base + path, '')) !== 201) throw new Error('cannot create the stream');
  if (protocol !== 'none') client = await stalledClient(new URL(base), path);
  const body = JSON.stringify('x'.repeat((1 << 20) - 2));
  const before = rssMb(pid);
  let peak = before;
  for (let i = 0; i < mib; i++) {
    await send(agent, 'POST', base + path, body);
    if (i % 10 === 9) peak = Math.max(peak, rssMb(pid));
  }
  await sleep(2000);
  peak = Math.max(peak, rssMb(pid));
  console.log(
    `${protocol}: workerd RSS ${before.toFixed(0)} MB before, ${peak.toFixed(0)} MB at its peak (+${(peak - before).toFixed(0)} MB) with ${mib} MiB appended past a client that stopped reading`,
  );
} finally {
  client?.destroy();
  agent.destroy();
  await server.stop();
}

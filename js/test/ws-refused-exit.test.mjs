// A WebSocket reader whose handshake is refused leaves no timer behind. Node's own WebSocket
// (Node 20 and 22) fires `error` and no `close` for a refused handshake, and the client's
// keep-alive interval stopped only on `close`: after the reader had ended (the stream gone),
// that interval kept pinging a dead socket, and kept the Node process from exiting, for 40 s.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { spawn } from 'node:child_process';

/** A server whose first read is up to date at `o1`, whose upgrades are refused 404, and whose later reads answer 404. */
async function goneServer() {
  let reads = 0;
  const server = http.createServer((req, res) => {
    const status = reads++ === 0 ? 200 : 404;
    res.writeHead(status, { 'stream-next-offset': 'o1', 'stream-up-to-date': 'true', 'content-type': 'application/json' });
    res.end(status === 200 ? '[]' : 'stream not found');
  });
  server.on('upgrade', (req, socket) => socket.end('HTTP/1.1 404 No\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return server;
}

// Run in a child: its timers are its own, and it must end by itself.
const child = `
  import { stream } from ${JSON.stringify(new URL('../src/node.js', import.meta.url).href)};
  const h = stream({ url: process.argv[1], live: 'ws', offset: 'o0', json: true });
  const code = await h.items().then(() => 'none', (e) => e.code);
  // The socket's own events have all been delivered by now (the reader waited for a read over HTTP after them).
  await new Promise((r) => setImmediate(r));
  const timers = process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  console.log(JSON.stringify({ code, timers }));
`;

test("a WebSocket reader whose handshake is refused (no close event) stops its timers: Node's process exits", { timeout: 30_000 }, async () => {
  if (typeof WebSocket !== 'function' && !process.allowedNodeEnvironmentFlags.has('--experimental-websocket')) return;
  const server = await goneServer();
  try {
    const flags = typeof WebSocket === 'function' ? [] : ['--experimental-websocket', '--no-warnings'];
    const proc = spawn(process.execPath, [...flags, '--input-type=module', '-e', child, `http://127.0.0.1:${server.address().port}/s`], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    proc.stdout.on('data', (d) => (out += d));
    // With the interval left running the child lived 40 s more; killed at 20 s, it fails here.
    const killer = setTimeout(() => proc.kill(), 20_000);
    const exit = await new Promise((r) => proc.on('exit', (code, signal) => r(signal ?? code)));
    clearTimeout(killer);
    const result = JSON.parse(out.trim().split('\n').pop());
    assert.equal(result.code, 'NOT_FOUND');
    assert.equal(result.timers, 0, 'no timer left once the reader has ended');
    assert.equal(exit, 0, 'the process exits by itself');
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

// A WebSocket reader that cannot stay connected says why: against a fake server whose upgrades
// close at once with a code and reason, the error that ends the reader carries both.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash } from 'node:crypto';
import { WebSocket } from 'undici';
import { stream } from '../src/node.js';

// Node 20 has no global WebSocket; an application there installs one the same way.
globalThis.WebSocket ??= WebSocket;

/** A close frame (server to client, unmasked) with `code` and a short `reason`. */
function closeFrame(code, reason) {
  const text = Buffer.from(reason);
  const payload = Buffer.concat([Buffer.from([code >> 8, code & 0xff]), text]);
  return Buffer.concat([Buffer.from([0x88, payload.length]), payload]);
}

test('a WebSocket closed by the server fails the reader with its close code and reason', async () => {
  let upgrades = 0;
  let upgradeUrl;
  const upgraded = new Set();
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'stream-next-offset': 'o1', 'stream-up-to-date': 'true' });
    res.end('[]');
  });
  server.on('upgrade', (req, socket) => {
    upgrades++;
    upgraded.add(socket);
    upgradeUrl = new URL(req.url, 'http://x');
    const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
    const protocol = req.headers['sec-websocket-protocol']?.split(',')[0].trim();
    socket.write(
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        `Sec-WebSocket-Accept: ${accept}\r\n${protocol ? `Sec-WebSocket-Protocol: ${protocol}\r\n` : ''}\r\n`,
    );
    socket.end(closeFrame(4001, 'not today'));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    const url = `http://127.0.0.1:${server.address().port}/s`;
    const h = stream({ url, live: 'ws', json: true, retry: { maxRetries: 1, initialDelayMs: 10 }, params: { live: 'sse', mine: '1' } });
    await assert.rejects(
      (async () => {
        for await (const _ of h);
      })(),
      (e) => {
        assert.equal(e.code, 'NETWORK_ERROR');
        assert.equal(e.closeCode, 4001);
        assert.match(e.message, /\(4001\): not today/);
        return true;
      },
    );
    assert.equal(upgrades, 2, 'one attempt and one retry');
    // The caller's reserved params are dropped from the upgrade, and not reported as sent.
    assert.deepEqual([...upgradeUrl.searchParams], [['live', 'ws'], ['mine', '1'], ['offset', 'o1']]);
    assert.deepEqual(h.lastRequest.params, { mine: '1' });
  } finally {
    for (const socket of upgraded) socket.destroy();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

/**
 * A server whose first read (the reader's catch-up, from `o0`) is up to date at `o1`, whose upgrades are
 * refused with `upgradeStatus`, and whose later reads answer `readStatus`.
 */
async function refusingServer(upgradeStatus, readStatus) {
  const seen = { upgrades: 0, reads: 0, offsets: [] };
  const server = http.createServer((req, res) => {
    const status = seen.reads++ === 0 ? 200 : readStatus;
    seen.offsets.push(new URL(req.url, 'http://x').searchParams.get('offset'));
    const body = status === 400 ? 'offset is beyond the end of the stream' : '[]';
    res.writeHead(status, { 'stream-next-offset': 'o1', 'stream-up-to-date': 'true', 'content-type': 'application/json' });
    res.end(body);
  });
  server.on('upgrade', (req, socket) => {
    seen.upgrades++;
    socket.end(`HTTP/1.1 ${upgradeStatus} No\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${server.address().port}/s`, seen, server };
}

for (const [status, code] of [
  [404, 'NOT_FOUND'],
  [410, 'GONE'],
  [401, 'UNAUTHORIZED'],
  [403, 'FORBIDDEN'],
  [400, 'INVALID_OFFSET'],
]) {
  test(`a WebSocket handshake refused for a read that answers ${status} ends the reader with ${code}, not retries`, async () => {
    const { url, seen, server } = await refusingServer(status, status);
    try {
      const started = Date.now();
      // Live readers retry without limit by default: only the read over HTTP can end this one.
      const h = stream({ url, live: 'ws', offset: 'o0', json: true });
      await assert.rejects(h.items(), (e) => e.code === code && e.status === status);
      // The catch-up, then one read at the reader's offset: no retry. (undici itself repeats a
      // handshake refused with 401 once.)
      assert.deepEqual(seen.offsets, ['o0', 'o1']);
      assert.equal(seen.upgrades, status === 401 ? 2 : 1);
      assert.ok(Date.now() - started < 2000);
      assert.equal(h.retrying, false);
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
}

test('a WebSocket handshake refused while the stream reads fine is retried as a network failure', async () => {
  const { url, seen, server } = await refusingServer(503, 200);
  try {
    const h = stream({ url, live: 'ws', offset: 'o0', json: true, retry: { maxRetries: 2, initialDelayMs: 10 } });
    await assert.rejects(h.items(), (e) => e.code === 'NETWORK_ERROR');
    assert.equal(seen.upgrades, 3, 'one attempt and two retries');
    assert.equal(seen.reads, 4, 'the catch-up, and a read after each refusal');
    // Failed for good: no longer retrying.
    assert.equal(h.retrying, false);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

test("a WebSocket refused for want of the credentials the reader sends as headers ends it with UNAUTHORIZED, not endless retries", async () => {
  // A server that takes the token as a header or a param (as edgestream's does): a socket
  // carries no headers, so the reader's `authorization` header never reaches the upgrade.
  const seen = { upgrades: 0, reads: 0 };
  const authorized = (req) => req.headers.authorization === 'Bearer t' || new URL(req.url, 'http://x').searchParams.get('token') === 't';
  const server = http.createServer((req, res) => {
    seen.reads++;
    if (!authorized(req)) {
      res.writeHead(401, { 'content-type': 'text/plain' });
      return res.end('missing token');
    }
    res.writeHead(200, { 'stream-next-offset': 'o1', 'stream-up-to-date': 'true', 'content-type': 'application/json' });
    res.end('[]');
  });
  server.on('upgrade', (req, socket) => {
    seen.upgrades++;
    socket.end('HTTP/1.1 401 No\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    const url = `http://127.0.0.1:${server.address().port}/s`;
    const h = stream({ url, live: 'ws', json: true, headers: { authorization: 'Bearer t' }, retry: { initialDelayMs: 10, maxDelayMs: 20 } });
    const outcome = await Promise.race([
      h.items().then(
        () => 'resolved',
        (e) => e,
      ),
      new Promise((r) => setTimeout(() => r('still retrying'), 1500)),
    ]);
    h.cancel();
    assert.equal(outcome?.code, 'UNAUTHORIZED', String(outcome));
    assert.match(outcome.message, /params/, 'the error says where a socket\'s credentials go');
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

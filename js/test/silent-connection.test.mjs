// A connection that dies without closing (a proxy or a network that drops it silently) sends
// nothing more and never ends. A live reader must notice and reconnect on its own: an SSE
// connection that brings nothing for 45 s (edgestream's server writes a heartbeat every 15 s),
// a long-poll unanswered for 65 s (servers answer within about 30 s), a WebSocket that does not
// answer the ping sent after 20 s quiet within 20 s more. Slow by nature: about 70 s, all three
// readers at once; with the late keepalive timer (50 s) and the long-poll that outlasts its
// restart (65 s) below, about 3 minutes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { WebSocket } from 'undici';
import { stream } from '../src/node.js';
import { fakeStream } from '../test-support/fake-stream.mjs';

// Node 20 has no global WebSocket; an application there installs one the same way.
globalThis.WebSocket ??= WebSocket;

/** An unmasked server text frame. */
const textFrame = (text) => {
  const payload = Buffer.from(text);
  return Buffer.concat([Buffer.from([0x81, payload.length]), payload]);
};

/** The text of the masked client frames in `bytes` (short text frames only). */
function clientTexts(bytes) {
  const out = [];
  for (let i = 0; i + 6 <= bytes.length; ) {
    const len = bytes[i + 1] & 0x7f;
    const mask = bytes.subarray(i + 2, i + 6);
    const payload = Buffer.from(bytes.subarray(i + 6, i + 6 + len)).map((b, j) => b ^ mask[j % 4]);
    if ((bytes[i] & 0x0f) === 1) out.push(payload.toString());
    i += 6 + len;
  }
  return out;
}

/** Answers a WebSocket upgrade with 101 and the client's first subprotocol. */
function acceptUpgrade(req, socket) {
  const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
  const protocol = req.headers['sec-websocket-protocol']?.split(',')[0].trim();
  socket.write(
    'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      `Sec-WebSocket-Accept: ${accept}\r\nSec-WebSocket-Protocol: ${protocol}\r\n\r\n`,
  );
}

/**
 * The fake stream of test-support, whose SSE responses and long-polls go silent once they have
 * said where the stream stands, with WebSocket upgrades that do the same: a control, then
 * nothing, pings unanswered.
 */
function silentStream(state) {
  return fakeStream(state).on('upgrade', (req, socket) => {
    // A WebSocket that says where the stream stands and then nothing more, pings included.
    state.sockets.add(socket);
    acceptUpgrade(req, socket);
    let received = Buffer.alloc(0);
    socket.on('data', (chunk) => {
      received = Buffer.concat([received, chunk]);
      state.wsTexts.set(socket, clientTexts(received));
    });
    socket.on('error', () => {});
    const ready = state.data !== undefined;
    if (ready) socket.write(textFrame(JSON.stringify({ type: 'data', items: state.data })));
    socket.write(textFrame(JSON.stringify({ type: 'control', streamNextOffset: ready ? 'o2' : 'o1', streamCursor: '1', upToDate: true })));
  });
}

test('SSE, long-poll and WebSocket readers reconnect from a connection that went silent, and get what came meanwhile', { timeout: 120_000 }, async () => {
  const state = { requests: [], sockets: new Set(), wsTexts: new Map() };
  const server = silentStream(state);
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  const follow = async (live) => {
    const h = stream({ url: `http://127.0.0.1:${port}/s`, live, json: true });
    const it = h[Symbol.asyncIterator]();
    try {
      assert.deepEqual((await it.next()).value.items, []);
      const started = Date.now();
      for (;;) {
        const { value } = await it.next();
        if (value.items.length > 0) return { items: value.items, offset: value.offset, waited: Date.now() - started };
      }
    } finally {
      h.cancel();
    }
  };
  try {
    const readers = Promise.all([follow('sse'), follow('long-poll'), follow('ws')]);
    // Both are following now, each on a connection that will bring nothing more.
    await new Promise((r) => setTimeout(r, 1_000));
    state.data = [{ n: 1 }];
    const [sse, poll, ws] = await readers;
    assert.deepEqual(sse.items, [{ n: 1 }]);
    assert.deepEqual(poll.items, [{ n: 1 }]);
    assert.equal(sse.offset, 'o2');
    assert.equal(poll.offset, 'o2');
    assert.ok(sse.waited >= 40_000 && sse.waited < 60_000, `SSE reconnected after ${sse.waited} ms`);
    assert.ok(poll.waited >= 60_000 && poll.waited < 80_000, `long-poll sent again after ${poll.waited} ms`);
    assert.deepEqual(ws.items, [{ n: 1 }]);
    assert.ok(ws.waited >= 35_000 && ws.waited < 60_000, `WebSocket reconnected after ${ws.waited} ms`);
    const texts = [...state.wsTexts.values()].flat();
    assert.ok(texts.includes('{"type":"ping"}'), `the quiet socket was pinged: ${JSON.stringify(texts)}`);
  } finally {
    for (const socket of state.sockets) socket.destroy();
    server.closeAllConnections();
    server.close();
  }
});

// A throttled tab, or a machine waking from sleep, runs the keepalive's timer late: the first
// tick may come after twice the quiet time. The socket is pinged then, and kept when it answers,
// rather than given up for its silence before it was asked.
test('a WebSocket whose keepalive timer fires late pings before it gives up, and is kept when answered', { timeout: 120_000 }, async () => {
  const realSetInterval = globalThis.setInterval;
  // The keepalive ticks every quiet time / 4 (5 s): make each tick come after 45 s instead.
  globalThis.setInterval = (f, ms, ...args) => realSetInterval(f, ms === 5_000 ? 45_000 : ms, ...args);
  const state = { requests: [], sockets: new Set(), upgrades: 0, pings: 0 };
  const server = fakeStream(state).on('upgrade', (req, socket) => {
    state.upgrades++;
    state.sockets.add(socket);
    acceptUpgrade(req, socket);
    let received = Buffer.alloc(0);
    let answered = 0;
    socket.on('data', (chunk) => {
      received = Buffer.concat([received, chunk]);
      const pings = clientTexts(received).filter((t) => t === '{"type":"ping"}').length;
      for (; answered < pings; answered++) socket.write(textFrame('{"type":"pong"}'));
      state.pings = Math.max(state.pings, pings);
    });
    socket.on('error', () => {});
    socket.write(textFrame(JSON.stringify({ type: 'control', streamNextOffset: 'o1', streamCursor: '1', upToDate: true })));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  const h = stream({ url: `http://127.0.0.1:${port}/s`, live: 'ws', json: true });
  try {
    const it = h[Symbol.asyncIterator]();
    assert.deepEqual((await it.next()).value.items, []);
    // Following live now, on a socket that answers pings and brings nothing else.
    const following = it.next();
    await new Promise((r) => setTimeout(r, 50_000));
    assert.equal(state.pings, 1, 'pinged at the late tick');
    assert.equal(state.upgrades, 1, 'the answered socket was kept');
    assert.equal(h.retrying, false);
    h.cancel();
    assert.equal((await following).done, true);
  } finally {
    globalThis.setInterval = realSetInterval;
    h.cancel();
    for (const socket of state.sockets) socket.destroy();
    server.closeAllConnections();
    server.close();
  }
});

// A long-poll is sent again after 65 s unanswered, retries and their backoff included. The
// reader's failures count on across that restart, so `retry.maxRetries` ends an outage whose
// backoff outlasts it, as it does for SSE.
test('a long-poll reader gives up after retry.maxRetries though its backoff outlasts the 65 s restart', { timeout: 120_000 }, async () => {
  const realRandom = Math.random;
  Math.random = () => 1; // each backoff takes its whole 40 s
  const server = fakeStream({});
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  const h = stream({ url: `http://127.0.0.1:${port}/s`, live: 'long-poll', json: true, retry: { maxRetries: 2, initialDelayMs: 40_000, maxDelayMs: 40_000 } });
  try {
    const it = h[Symbol.asyncIterator]();
    assert.deepEqual((await it.next()).value.items, []);
    // The server goes away for good: every request fails at once.
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    const started = Date.now();
    // Fails at 0 s, 40 s, and (after the restart at 65 s) a third time: NETWORK_ERROR.
    await assert.rejects(
      Promise.race([it.next(), new Promise((_, reject) => setTimeout(() => reject(new Error('still retrying after 100 s')), 100_000))]),
      (e) => e.code === 'NETWORK_ERROR',
    );
    const waited = Date.now() - started;
    assert.ok(waited >= 60_000 && waited < 90_000, `gave up after ${waited} ms`);
  } finally {
    Math.random = realRandom;
    h.cancel();
  }
});

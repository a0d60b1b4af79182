// A WebSocket reader whose token expires: the server closes its socket with 4401, and the reader
// opens another with whatever its params give now. A params function that refreshes the token
// reads on without a gap; a fixed token that has expired ends the reader with UNAUTHORIZED, as
// a 401 on any reconnect does, instead of retrying it forever.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { WebSocket } from 'undici';
import { stream } from '../src/node.js';
import { startServer } from '../../scripts/dev-server.mjs';
import { mintToken } from '../../scripts/token.mjs';

globalThis.WebSocket ??= WebSocket;

const secret = 'expiry-' + randomUUID();
let server;
before(async () => {
  server = await startServer({ vars: { AUTH_SECRET: secret } });
});
after(async () => {
  await server?.stop();
});

const inSeconds = (s) => Math.floor(Date.now() / 1000) + s;
const token = (ops, expiresAt) => mintToken({ secret, prefix: 'expiry', ops, expiresAt });
const admin = token(['create', 'append'], inSeconds(3600));
const fast = { initialDelayMs: 50, maxDelayMs: 200 };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function request(url, method, body) {
  const res = await fetch(url, {
    method,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${admin}` },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.ok(res.ok, `${method} ${res.status}`);
}

test('a reader whose token params refresh reads on past the first token\'s expiry', { timeout: 40_000 }, async () => {
  const url = `${server.baseUrl}/v1/stream/expiry/${randomUUID()}`;
  await request(url, 'PUT', [1]);
  const expiresAt = inSeconds(3);
  let current = token(['read'], expiresAt);
  const h = stream({ url, live: 'ws', json: true, retry: fast, params: { token: () => current } });
  const it = h[Symbol.asyncIterator]();
  assert.deepEqual((await it.next()).value.items, [1]);
  current = token(['read'], inSeconds(3600));
  await sleep(Math.max(0, expiresAt * 1000 - Date.now()) + 300);
  // Delivered on the old socket no more: its close makes the reader reconnect with the new token.
  await request(url, 'POST', [2]);
  const items = [];
  while (!items.includes(2)) items.push(...(await it.next()).value.items);
  assert.deepEqual(items.filter((i) => i === 2), [2]);
  assert.equal(h.lastRequest.params.token, current, 'it came over a socket opened with the new token');
  h.cancel();
});

test('a reader whose fixed token has expired ends with UNAUTHORIZED', { timeout: 40_000 }, async () => {
  const url = `${server.baseUrl}/v1/stream/expiry/${randomUUID()}`;
  await request(url, 'PUT', [1]);
  const expiresAt = inSeconds(3);
  const h = stream({ url, live: 'ws', json: true, retry: fast, params: { token: token(['read'], expiresAt) } });
  const it = h[Symbol.asyncIterator]();
  assert.deepEqual((await it.next()).value.items, [1]);
  await sleep(Math.max(0, expiresAt * 1000 - Date.now()) + 300);
  await request(url, 'POST', [2]);
  await assert.rejects(
    (async () => {
      for (;;) {
        const { value, done } = await it.next();
        if (done) return;
        assert.ok(!value.items.includes(2), 'nothing appended after the expiry arrives');
      }
    })(),
    (e) => e.code === 'UNAUTHORIZED',
  );
});

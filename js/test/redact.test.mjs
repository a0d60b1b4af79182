// Credentials never show in an error: a token in the URL (`?token=`), the values of the caller's
// params and headers (given as values or by functions) and any parameter named as one of the
// caller's params are `***` in every message, whether the client wrote the URL there (a network
// error, a refusal, a WebSocket's close) or the server's error body echoed the request. A URL
// with `user:password@`, which fetch() refuses in an error that shows them, is refused up front.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash } from 'node:crypto';
import { WebSocket } from 'undici';
import { DurableStream, IdempotentProducer, stream, table } from '../src/node.js';
import { withLocalServer } from '../test-support/local-server.mjs';

globalThis.WebSocket ??= WebSocket;

const SECRETS = ['URLSECRET', 'PARAMSECRET', 'HEADERSECRET', 'USERSECRET'];
const fast = { initialDelayMs: 5, maxDelayMs: 10, maxRetries: 1 };

/** Options with a token in the URL, one in params (by a function) and one in a header (by a function). */
const secretOptions = (url) => ({
  url: `${url}?token=URLSECRET&plain=1`,
  params: { key: () => 'PARAMSECRET', other: 'shown' },
  headers: { authorization: async () => 'Bearer HEADERSECRET' },
  retry: fast,
});

/** Everything an error says: its message, stack and details, and its causes'. */
function said(e, depth = 0) {
  if (!e || typeof e !== 'object' || depth > 3) return String(e);
  return [e.message, e.stack, JSON.stringify(e), said(e.cause, depth + 1)].join('\n');
}

function assertClean(e) {
  const text = said(e);
  for (const s of SECRETS) assert.ok(!text.includes(s), `${s} shows in: ${e?.message}`);
  return true;
}

async function failure(run) {
  try {
    await run();
  } catch (e) {
    return e;
  }
  assert.fail('expected an error');
}

/** A server whose error bodies echo the request's URL and Authorization header. */
const echoing = (status) => (req, res) => {
  res.writeHead(status, { 'content-type': 'text/plain' });
  res.end(`refused ${req.url} for ${req.headers.authorization}`);
};

test('a network error hides the URL\'s token', async () => {
  // A port that was just closed: the connection is refused.
  const closed = http.createServer();
  await new Promise((r) => closed.listen(0, '127.0.0.1', r));
  const { port } = closed.address();
  await new Promise((r) => closed.close(r));
  const url = `http://127.0.0.1:${port}/v1/stream/x`;
  const errors = [
    await failure(() => stream(secretOptions(url)).text()),
    await failure(() => new DurableStream(secretOptions(url)).append('x', { contentType: 'text/plain' })),
  ];
  for (const e of errors) {
    assert.equal(e.code, 'NETWORK_ERROR');
    assert.match(e.message, /\?token=\*\*\*&plain=1: network error/);
    assertClean(e);
  }
});

test('a refusal hides the token, and the params and headers its body echoes', async () => {
  for (const status of [401, 403, 404, 500]) {
    await withLocalServer(echoing(status), async (url) => {
      const read = await failure(() => stream(secretOptions(url)).text());
      assert.equal(read.status, status);
      assertClean(read);
      // The body is still shown, the secrets left out: every param the caller gave is one.
      assert.match(read.message, /refused \/v1\/stream\/x\?token=\*\*\*&plain=1&key=\*\*\*&offset=-1&other=\*\*\* for \*\*\*/);
      const head = await failure(() => new DurableStream(secretOptions(url)).head());
      assertClean(head);
      const producer = new IdempotentProducer(new DurableStream({ ...secretOptions(url), contentType: 'text/plain' }), 'p');
      producer.append('x');
      assertClean(await failure(() => producer.flush()));
    });
  }
});

test('a parameter named as one of the caller\'s params is hidden wherever the URL shows it', async () => {
  await withLocalServer(echoing(400), async (url) => {
    const e = await failure(() => stream({ url: `${url}?Page=a&page=b`, params: { page: 'zzz' }, retry: fast }).text());
    assert.match(e.message, /\?Page=a&page=\*\*\*: bad request \(400\): refused \/v1\/stream\/x\?Page=a&page=\*\*\*&offset=-1&page=\*\*\* for undefined/);
  });
});

test('a WebSocket closed by the server hides the URL\'s token and the params', async () => {
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'stream-next-offset': 'o1', 'stream-up-to-date': 'true' });
    res.end('[]');
  });
  const sockets = new Set();
  server.on('upgrade', (req, socket) => {
    sockets.add(socket);
    const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
    const protocol = req.headers['sec-websocket-protocol'].split(',')[0].trim();
    socket.write(
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        `Sec-WebSocket-Accept: ${accept}\r\nSec-WebSocket-Protocol: ${protocol}\r\n\r\n`,
    );
    // The close reason echoes the request's query.
    const reason = Buffer.from(new URL(req.url, 'http://x').search.slice(0, 100));
    socket.end(Buffer.concat([Buffer.from([0x88, reason.length + 2, 0x0f, 0xa1]), reason]));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    const url = `http://127.0.0.1:${server.address().port}/v1/stream/x`;
    const h = stream({ ...secretOptions(url), live: 'ws', json: true });
    const e = await failure(async () => {
      for await (const _ of h);
    });
    assert.equal(e.closeCode, 4001);
    assert.match(e.message, /^WebSocket http:\/\/127\.0\.0\.1:\d+\/v1\/stream\/x\?token=\*\*\*&plain=1 closed \(4001\)/);
    assertClean(e);
  } finally {
    for (const s of sockets) s.destroy();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

test('a table of a stream that is not JSON names it without the token', async () => {
  const handler = (req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'stream-next-offset': 'o1', 'stream-up-to-date': 'true' });
    res.end('x');
  };
  await withLocalServer(handler, async (url) => {
    const t = table({ ...secretOptions(url), retry: fast });
    const e = await failure(() => t.finished);
    assert.equal(e.code, 'PARSE_ERROR');
    assert.match(e.message, /\?token=\*\*\*&plain=1 is not a JSON stream/);
    assertClean(e);
  });
});

test('a URL with credentials is refused before any request, without showing them', { timeout: 20_000 }, async () => {
  let requests = 0;
  await withLocalServer((req, res) => (requests++, res.end()), async (url) => {
    const withUser = url.replace('http://', 'http://me:USERSECRET@');
    for (const run of [() => stream({ url: withUser }).text(), () => new DurableStream({ url: withUser }).head()]) {
      const e = await failure(run);
      assert.equal(e.code, 'INVALID_ARGUMENT');
      assertClean(e);
    }
  });
  assert.equal(requests, 0);
  // A relative URL where there is no page is named, its token hidden; so is a fork source that is no URL.
  const relative = await failure(() => stream({ url: '/v1/stream/x?token=URLSECRET' }).text());
  const source = 'http://[x/v1/stream/a?token=URLSECRET';
  const fork = await failure(() => new DurableStream({ url: 'http://127.0.0.1:1/v1/stream/b' }).create({ forkedFrom: source }));
  for (const e of [relative, fork]) {
    assert.equal(e.code, 'INVALID_ARGUMENT');
    assert.match(e.message, /token=\*\*\*/);
    assertClean(e);
  }
});

test('a URL parameter named as credentials usually are is hidden, though not in params', async () => {
  // RFC 6750's access_token, API keys, signed URLs (S3's X-Amz-*, a `sig`), passwords, sessions.
  const names = ['access_token', 'api_key', 'apiKey', 'X-Amz-Signature', 'X-Amz-Credential', 'sig', 'password', 'client_secret', 'auth', 'jwt', 'sessionid'];
  const query = names.map((n, i) => `${n}=S${i}x`).join('&');
  const shown = /\?access_token=\*\*\*&api_key=\*\*\*&apiKey=\*\*\*&X-Amz-Signature=\*\*\*&X-Amz-Credential=\*\*\*&sig=\*\*\*&password=\*\*\*&client_secret=\*\*\*&auth=\*\*\*&jwt=\*\*\*&sessionid=\*\*\*&plain=1/;
  const clean = (e) => {
    for (let i = 0; i < names.length; i++) assert.ok(!said(e).includes(`S${i}x`), `S${i}x shows in: ${e.message}`);
    assert.match(e.message, shown);
  };
  await withLocalServer(echoing(403), async (url) => {
    const refused = await failure(() => stream({ url: `${url}?${query}&plain=1`, retry: fast }).text());
    assert.equal(refused.status, 403);
    clean(refused);
  });
  const handler = (req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'stream-next-offset': 'o1', 'stream-up-to-date': 'true' });
    res.end('x');
  };
  await withLocalServer(handler, async (url) => {
    const notJson = await failure(() => table({ url: `${url}?${query}&plain=1`, retry: fast }).finished);
    assert.equal(notJson.code, 'PARSE_ERROR');
    clean(notJson);
  });
  const relative = await failure(() => stream({ url: `/v1/stream/x?${query}&plain=1` }).text());
  assert.equal(relative.code, 'INVALID_ARGUMENT');
  clean(relative);
  // Names that say nothing of credentials are shown, as the offset is.
  await withLocalServer(echoing(404), async (url) => {
    const e = await failure(() => stream({ url: `${url}?plain=1&page=2`, retry: fast }).text());
    assert.match(e.message, /refused \/v1\/stream\/x\?plain=1&page=2&offset=-1 /);
  });
});

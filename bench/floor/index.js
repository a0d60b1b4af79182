// The floor Worker (see wrangler.toml): each path is one way to do the least an append needs.
//   /404          answered at the edge
//   /fetch/head   edge -> object with stub.fetch(), no storage
//   /rpc/head     edge -> object over RPC, no storage
//   /fetch/append edge -> object with stub.fetch(), one SQLite insert
//   /rpc/append   edge -> object over RPC with the same Request and Response, one SQLite insert
//   /forward/append  edge -> object with stub.fetch(request): the incoming request itself
//   /live/reader?live=...  a live reader shaped like edgestream's (bench/reader-memory.mjs --floor):
//     ws         the client's socket handed to the object, which accepts it (hibernation API),
//                declining permessage-deflate as edgestream does by default (WS_COMPRESSION);
//     sse        the edge holds a response stream and an internal socket the object accepts,
//                and relays each message as an SSE event;
//     long-poll  the edge holds the request and an internal socket until a message or 120 s.
//   /live/broadcast  POST: the object sends the body to every socket it holds, once each.
// `?o=<name>` picks the object (one named `floor` by default), for concurrent writers.
import { DurableObject } from 'cloudflare:workers';

export class Floor extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    ctx.storage.sql.exec('CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, data BLOB)');
  }

  async fetch(request) {
    if (request.headers.get('upgrade') === 'websocket') {
      const [client, server] = Object.values(new WebSocketPair());
      this.ctx.acceptWebSocket(server);
      return new Response(null, { status: 101, webSocket: client });
    }
    if (new URL(request.url).pathname === '/broadcast') {
      const message = await request.text();
      for (const socket of this.ctx.getWebSockets()) socket.send(message);
      return new Response(null, { status: 204 });
    }
    if (request.method !== 'POST') return new Response(null, { headers: { 'stream-next-offset': '0' } });
    const data = await request.arrayBuffer();
    this.ctx.storage.sql.exec('INSERT INTO log (data) VALUES (?)', data);
    return new Response(null, { status: 204, headers: { 'stream-next-offset': String(data.byteLength) } });
  }

  webSocketMessage() {}

  handle(method, url, headers, body) {
    return this.fetch(new Request(url, { method, headers, body }));
  }
}

export default {
  async fetch(request, env) {
    const { pathname, searchParams } = new URL(request.url);
    if (pathname === '/v1/stream/__health') {
      // What scripts/dev-server.mjs looks for to find the Worker's own socket.
      return new Response(null, { headers: { 'access-control-expose-headers': 'stream-next-offset' } });
    }
    const [, via] = pathname.split('/');
    if (!['fetch', 'rpc', 'forward', 'live'].includes(via)) return new Response('not found', { status: 404 });
    const stub = env.OBJECTS.get(env.OBJECTS.idFromName(searchParams.get('o') ?? 'floor'));
    if (via === 'live') return live(request, stub, searchParams.get('live'));
    if (via === 'forward') return stub.fetch(request);
    const url = 'https://floor/stream';
    const body = request.method === 'POST' ? request.body : null;
    if (via === 'fetch') return stub.fetch(new Request(url, { method: request.method, headers: request.headers, body }));
    return stub.handle(request.method, url, [...request.headers], body);
  },
};

/** A live reader, held the way edgestream holds one of its mode (see the top of this file). */
async function live(request, stub, mode) {
  if (request.method === 'POST') return stub.fetch('https://floor/broadcast', { method: 'POST', body: request.body });
  if (mode === 'ws') {
    // The Worker's Sec-WebSocket-Extensions is what it accepts, and none is agreed: the 101
    // names no extension (see docs/websocket.md#compression).
    const upgraded = await stub.fetch(request);
    if (upgraded.status !== 101) return upgraded;
    return new Response(null, {
      status: 101,
      webSocket: upgraded.webSocket,
      headers: { 'sec-websocket-extensions': 'identity' },
    });
  }
  const internal = await stub.fetch('https://floor/live', { headers: { upgrade: 'websocket' } });
  const socket = internal.webSocket;
  socket.accept();
  if (mode === 'sse') {
    const { readable, writable } = new IdentityTransformStream();
    const writer = writable.getWriter();
    const encoder = new TextEncoder();
    socket.addEventListener('message', (e) => writer.write(encoder.encode(`data: ${e.data}\n\n`)).catch(() => {}));
    return new Response(readable, { headers: { 'content-type': 'text/event-stream' } });
  }
  const data = await new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), 120_000);
    socket.addEventListener('message', (e) => {
      clearTimeout(timer);
      resolve(e.data);
    });
  });
  socket.close();
  return data === null ? new Response(null, { status: 204 }) : new Response(data);
}

// The floor Worker (see wrangler.toml): each path is one way to do the least an append needs.
//   /404          answered at the edge
//   /fetch/head   edge -> object with stub.fetch(), no storage
//   /rpc/head     edge -> object over RPC, no storage
//   /fetch/append edge -> object with stub.fetch(), one SQLite insert
//   /rpc/append   edge -> object over RPC with the same Request and Response, one SQLite insert
//   /forward/append  edge -> object with stub.fetch(request): the incoming request itself
// `?o=<name>` picks the object (one named `floor` by default), for concurrent writers.
import { DurableObject } from 'cloudflare:workers';

export class Floor extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    ctx.storage.sql.exec('CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, data BLOB)');
  }

  async fetch(request) {
    if (request.method !== 'POST') return new Response(null, { headers: { 'stream-next-offset': '0' } });
    const data = await request.arrayBuffer();
    this.ctx.storage.sql.exec('INSERT INTO log (data) VALUES (?)', data);
    return new Response(null, { status: 204, headers: { 'stream-next-offset': String(data.byteLength) } });
  }

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
    if (!['fetch', 'rpc', 'forward'].includes(via)) return new Response('not found', { status: 404 });
    const stub = env.OBJECTS.get(env.OBJECTS.idFromName(searchParams.get('o') ?? 'floor'));
    if (via === 'forward') return stub.fetch(request);
    const url = 'https://floor/stream';
    const body = request.method === 'POST' ? request.body : null;
    if (via === 'fetch') return stub.fetch(new Request(url, { method: request.method, headers: request.headers, body }));
    return stub.handle(request.method, url, [...request.headers], body);
  },
};

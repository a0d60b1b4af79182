// Uses `edgestream` inside a Worker and a Durable Object; each route answers JSON the test checks.
import { DurableObject } from 'cloudflare:workers';
import { DurableStream, IdempotentProducer, change, init, stream, table } from 'edgestream';

const json = (value, status = 200) => Response.json(value, { status });
const failure = (e) => json({ error: { name: e?.name, code: e?.code, message: String(e?.message ?? e) } }, 500);

async function collect(handle, count) {
  const items = [];
  for await (const batch of handle) {
    items.push(...(batch.items ?? []));
    if (items.length >= count) break;
  }
  return items;
}

/** Made by one request and used by the next: workerd refuses that in a Worker (not in an object). */
let shared = null;

export class Follower extends DurableObject {
  #table = null;
  #producer = null;
  async fetch(request) {
    const q = new URL(request.url).searchParams;
    if (q.has('produce')) {
      // One producer for the object's lifetime, used by each request.
      this.#producer ??= new IdempotentProducer(new DurableStream({ url: q.get('produce'), contentType: 'application/json' }), 'follower', { autoClaim: true });
      this.#producer.append(JSON.parse(q.get('data')));
      await this.#producer.flush();
      return json({ nextSeq: this.#producer.nextSeq });
    }
    if (q.has('start')) {
      this.#table?.cancel();
      // Its snapshot is kept in the object's storage (saveEveryMs: each batch), to resume from.
      const storage = this.ctx.storage;
      const store = { load: () => storage.get('snapshot'), save: (snapshot) => storage.put('snapshot', snapshot) };
      this.#table = table({ url: q.get('start'), live: q.get('live') ?? 'sse', store, saveEveryMs: 0 });
      await this.#table.ready();
      return json({ size: this.#table.size });
    }
    if (q.has('saved')) return json((await this.ctx.storage.get('snapshot')) ?? null);
    return json({ rows: Object.fromEntries(this.#table?.entries('user') ?? []), upToDate: this.#table?.upToDate });
  }
}

export default {
  async fetch(request, env, ctx) {
    const { pathname, search, searchParams: q } = new URL(request.url);
    // A client's request sent through the SELF service binding: on to the server it names.
    const upstream = request.headers.get('x-upstream');
    if (upstream) return fetch(new URL(pathname + search, upstream), request);
    const url = q.get('url');
    try {
      switch (pathname) {
        case '/v1/stream/__health':
          return new Response(null);
        case '/init':
          await init();
          return json({ ok: true });
        case '/append': {
          const handle = await DurableStream.create({ url, contentType: 'application/json' });
          const result = await handle.append(JSON.parse(q.get('data')));
          return json({ offset: result.offset });
        }
        case '/read':
          return json({ items: await collect(stream({ url, live: false, json: true }), Infinity) });
        case '/follow': {
          // Catches up, then (live) asks for the next batch, appends from this same request, and
          // reads that append over the live connection.
          const handle = stream({ url, json: true, live: q.get('live') });
          const first = await handle.next();
          const pending = handle.next();
          await new DurableStream({ url, contentType: 'application/json' }).append(JSON.parse(q.get('data')));
          const next = await pending;
          const mode = handle.mode;
          handle.cancel();
          return json({ first: first.value?.items, next: next.value?.items, mode });
        }
        case '/via-binding': {
          // Every request (calls, a producer's, catch-up and a live follow) goes through a service
          // binding given as `fetch`, to a host that does not resolve: only the binding reaches it.
          const at = new URL(url);
          const ds = new DurableStream({
            url: `http://upstream.invalid${at.pathname}`,
            contentType: 'application/json',
            headers: { 'x-upstream': at.origin },
            fetch: env.SELF.fetch.bind(env.SELF),
          });
          await ds.create();
          await ds.append({ n: 1 });
          const producer = new IdempotentProducer(ds, 'binding', { lingerMs: 0 });
          producer.append({ n: 2 });
          await producer.detach();
          const handle = ds.stream({ json: true, live: q.get('live') });
          const first = await handle.next();
          const pending = handle.next();
          await ds.append({ n: 3 });
          const next = await pending;
          const mode = handle.mode;
          handle.cancel();
          return json({ first: first.value?.items, next: next.value?.items, mode });
        }
        case '/produce': {
          // Answers at once (unless `wait`); the producer's lingering batch is sent under ctx.waitUntil. detach()
          // flushes and leaves the stream open (close() would close it).
          const producer = new IdempotentProducer(new DurableStream({ url, contentType: 'application/json' }), q.get('id'), { lingerMs: 50 });
          for (const item of JSON.parse(q.get('items'))) producer.append(item);
          if (q.has('wait')) await producer.detach();
          else ctx.waitUntil(producer.detach());
          return json({ queued: true });
        }
        case '/table': {
          const t = table({ url, live: false });
          await t.finished;
          return json({ rows: Object.fromEntries(t.entries('user')) });
        }
        case '/change':
          await new DurableStream({ url, contentType: 'application/json' }).append(change.upsert('user', q.get('key'), { name: q.get('name') }));
          return json({ ok: true });
        case '/ndjson': {
          // js/README.md's example: the stream's messages from `offset` on, one line each, live.
          const feed = stream({ url, json: true, offset: q.get('offset') ?? 'now' });
          const lines = new TextEncoder();
          const body = new ReadableStream({
            async pull(controller) {
              const { value, done } = await feed.next();
              if (done) return controller.close();
              for (const item of value.items ?? []) controller.enqueue(lines.encode(`${JSON.stringify(item)}\n`));
            },
            cancel: () => feed.cancel(),
          });
          return new Response(body, { headers: { 'content-type': 'application/x-ndjson' } });
        }
        case '/shared':
          shared ??= new IdempotentProducer(new DurableStream({ url, contentType: 'application/json' }), 'shared');
          shared.append(JSON.parse(q.get('data')));
          await shared.flush();
          return json({ ok: true });
        case '/do':
          return env.FOLLOWER.get(env.FOLLOWER.idFromName('one')).fetch(request);
      }
      return json({ error: 'no route' }, 404);
    } catch (e) {
      return failure(e);
    }
  },
};

// Compiled by ../types.test.mjs (never run): what the runtime accepts must type-check, and what
// it refuses must not (each `@ts-expect-error` fails the build if the line compiles).
import { DurableStream, IdempotentProducer, LeaseHeldError, init, stream, type ChannelMessage, type StreamHandle } from 'edgestream';

const url = 'http://127.0.0.1/v1/stream/x';

// Header and param maps: what http.rs resolve_map takes.
stream({ url, headers: new Headers({ authorization: 'Bearer x' }) });
stream({ url, params: { limit: 10, deep: true, skip: undefined, none: null } });
stream({ url, headers: { authorization: async () => 'Bearer x', 'x-n': () => 1, 'x-u': () => undefined } });
stream({ url, headers: () => ({ a: undefined, b: 'x' }) });
stream({ url, headers: async () => new Headers() });
stream({ url, params: async () => ({ token: () => 'fresh' }) });
new DurableStream({ url, headers: new Headers(), params: { n: 1 } });
stream({ url, headers: new Map([['authorization', () => 'Bearer x']]), params: new URLSearchParams({ token: 't' }) });
// @ts-expect-error a Map's values are header values too
stream({ url, headers: new Map([['a', { b: 1 }]]) });
// @ts-expect-error a header value is text, not an object
stream({ url, headers: { a: { b: 1 } } });
// An array of [name, value] pairs, as fetch takes headers.
stream({ url, headers: [['authorization', () => 'Bearer x']], params: [['a', 'b']] });
// @ts-expect-error an array of pairs, not a flat list
stream({ url, headers: ['authorization', 'Bearer x'] });
// @ts-expect-error a pair's value is a header value too
stream({ url, headers: [['a', { b: 1 }]] });

// fetch: the global one's type, a wrapper, a service binding's bound fetch.
declare const binding: { fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response> };
stream({ url, fetch });
stream({ url, fetch: (u, init) => fetch(u, { ...init, keepalive: true }) });
new DurableStream({ url, fetch: binding.fetch.bind(binding) });
new IdempotentProducer(url, 'id', { fetch: async (u: string) => fetch(u) });
// @ts-expect-error fetch is a function
stream({ url, fetch: 'https://proxy' });

// init(): URL, Response, bytes or a compiled Module.
declare const bytes: Uint8Array;
declare const compiled: WebAssembly.Module;
void init(new URL('https://cdn.example/edgestream_client_bg.wasm'));
declare const response: Response;
void init(response);
void init(bytes);
void init(bytes.buffer as ArrayBuffer);
void init(compiled);

async function producer(ds: DurableStream) {
  const p = new IdempotentProducer(ds, 'id', { autoClaim: true, requestTimeoutMs: 30_000, onError: (e) => e.code });
  p.append({ a: 1 });
  const retrying: boolean = p.retrying;
  void retrying;
  const backlog: number = p.pendingCount + p.inFlightCount;
  void backlog;
  await p.flush();
  const { finalOffset, duplicate } = await p.close();
  return [finalOffset, duplicate] as const;
}
void producer;

function cancelProducer(ds: DurableStream) {
  const p = new IdempotentProducer(ds, 'id');
  p.cancel();
  p.cancel(new Error('shutting down'));
  p.cancel('any reason');
  // @ts-expect-error: cancel() returns nothing to await
  const settled: Promise<void> = p.cancel();
  return settled;
}
void cancelProducer;

async function channel(url: string) {
  const all = await DurableStream.create({ url, channel: true });
  return all.stream<{ stream: string; offset: string; data?: unknown }>({ live: 'sse' });
}
void channel;

async function forks(base: string, source: DurableStream) {
  const at = (await source.head({ signal: AbortSignal.timeout(5000) })).offset;
  const fork = await DurableStream.create({ url: `${base}/fork`, forkedFrom: source.url, forkOffset: at, forkSubOffset: 0 });
  await fork.create({ forkedFrom: new URL(source.url), signal: new AbortController().signal });
  // @ts-expect-error: a sub-offset is a number
  await fork.create({ forkedFrom: '/v1/stream/a', forkSubOffset: '1' });
  return fork;
}
void forks;

async function callSignals(ds: DurableStream, signal: AbortSignal) {
  await ds.append('x', { seq: '1', signal });
  await ds.close({ body: 'last', signal });
  await ds.delete({ signal });
  const status: number = (await ds.delete({})).status;
  // @ts-expect-error: a signal is an AbortSignal
  await ds.head({ signal: 'no' });
  return status;
}
void callSignals;

async function exclusive(ds: DurableStream) {
  const p = new IdempotentProducer(ds, 'leader', { lease: { ttlSeconds: 10, wait: true } });
  const until: string | undefined = await p.acquire();
  const held: string | undefined = p.leaseExpiresAt;
  try {
    await ds.append('x');
  } catch (e) {
    if (e instanceof LeaseHeldError) {
      const code: 'LEASE_HELD' = e.code;
      const wait: number | undefined = e.retryAfterMs;
      return [code, wait, e.leaseExpiresAt];
    }
  }
  const result = await ds.append('y');
  await p.detach();
  return [until, held, result.leaseExpiresAt];
}
void exclusive;

// A handle whose kind is given: `json: true` batches always have `items`, `json: false` `bytes`.
async function kinds(url: string, ds: DurableStream) {
  for await (const batch of stream<ChannelMessage<{ text: string }>>({ url, json: true })) {
    for (const m of batch.items) {
      const from: string = m.stream;
      if ('data' in m) return [from, m.data.text];
      if ('event' in m) return [from, m.event];
    }
    // @ts-expect-error a JSON batch has no bytes
    batch.bytes.byteLength;
  }
  const bytes = stream({ url, json: false });
  bytes.subscribe((batch) => void batch.bytes.byteLength);
  const r = await ds.stream<number>({ json: true }).next();
  if (!r.done) r.value.items.map((n) => n + 1);
  for await (const batch of ds.stream({ json: false })) batch.bytes.byteLength;
  for await (const batch of stream({ url })) {
    // @ts-expect-error without `json`, a batch may be either kind
    batch.items.length;
  }
  const any: StreamHandle = stream({ url, json: true });
  return any;
}
void kinds;

// Web streams in and out.
async function webStreams(ds: DurableStream, signal: AbortSignal) {
  const w: WritableStream<unknown> = ds.writable({ producerId: 'pipe', lingerMs: 10, signal, onError: (e) => e.code });
  await new ReadableStream<string>().pipeTo(w);
  async function* gen() {
    yield 'a';
    yield new Uint8Array(1);
  }
  const { offset } = await ds.appendStream(gen(), { maxInFlight: 2 });
  const tail: string | undefined = offset;
  await ds.appendStream(new ReadableStream<Uint8Array>());
  await ds.appendStream([{ a: 1 }, { a: 2 }]);
  // @ts-expect-error: a source is a stream or an iterable
  await ds.appendStream(5);
  for await (const item of ds.stream<{ n: number }>({ json: true }).jsonStream()) {
    const n: number = item.n;
    void n;
  }
  for await (const chunk of ds.stream({ live: false }).bodyStream()) {
    const bytes: Uint8Array = chunk;
    void bytes;
  }
  const text: ReadableStream<string> = ds.stream().textStream();
  return [tail, text];
}
void webStreams;

// Types for `edgestream`, the Durable Streams client (hand-written; the runtime is js/src/*.js).

type Scalar = string | number | boolean;
/**
 * A header or query value (numbers and booleans are sent as text), or a function called before
 * every request (token refresh). `undefined` or `null` leaves the header or param out.
 */
export type DynamicValue = Scalar | null | undefined | (() => Scalar | null | undefined | Promise<Scalar | null | undefined>);
type PlainMap =
  | Headers
  | URLSearchParams
  | ReadonlyMap<string, DynamicValue>
  | Record<string, DynamicValue>
  | ReadonlyArray<readonly [string, DynamicValue]>;
/**
 * Header or query parameter map (an object, `Headers`, `Map`, `URLSearchParams`, or an array of
 * `[name, value]` pairs, as `fetch` takes headers); the whole map may also be an (async) function.
 */
export type DynamicMap = PlainMap | (() => PlainMap | null | undefined | Promise<PlainMap | null | undefined>);

/**
 * Reconnection policy. Defaults: 100 ms doubling to 5 s, with jitter; 5 retries, except for a
 * live reader and a producer, which retry without limit unless `maxRetries` is given.
 */
export interface RetryOptions {
  /** Retries after the first attempt: an integer >= 0, or `Infinity`. */
  maxRetries?: number | undefined;
  /** > 0. */
  initialDelayMs?: number | undefined;
  /** >= initialDelayMs. */
  maxDelayMs?: number | undefined;
  /** >= 1. */
  multiplier?: number | undefined;
}

/**
 * What sends the client's HTTP requests instead of the global `fetch`: a Cloudflare service
 * binding's (`env.SERVICE.fetch.bind(env.SERVICE)`: it is called as a plain function), a test
 * double, a proxy or an auth wrapper. One that throws or rejects is a failed connection
 * (NETWORK_ERROR, retried as one). WebSocket follows (`live: 'ws'`) do not use it.
 */
export type FetchFunction = (url: string, init: RequestInit) => Promise<Response>;

/** How a reader follows the stream after catching up. `true` is the same as `'auto'`. */
export type LiveMode = 'auto' | 'sse' | 'ws' | 'long-poll' | false | true;

export interface StreamOptions {
  url: string | URL;
  /**
   * Where to start: an offset from an earlier batch, `'-1'` (start, the default) or `'now'` (tail).
   * One past the stream's end (a shorter stream created again at the URL) fails the reader with
   * INVALID_OFFSET, whether the server refuses it or answers with its tail (STREAM_REPLACED
   * when `incarnation` says it is another stream).
   */
  offset?: string | undefined;
  /**
   * The batch's `incarnation`, saved with `offset`: a stream deleted and created again at the URL
   * since (whose offsets mean nothing to you) fails the reader with STREAM_REPLACED rather than
   * hand out its data (also when `offset` is past the new stream's end or inside one of its JSON
   * messages): start again from -1. Ignored by servers that name no incarnation.
   */
  incarnation?: string | undefined;
  /** Default `'auto'`: SSE, falling back to long-poll behind proxies that break it. */
  live?: LiveMode | undefined;
  /**
   * Parse data as JSON messages (`items`). Default: when the stream's type is application/json.
   * Given, it decides alone: `true` types the batches as `JsonBatch` (always `items`), `false` as
   * `BytesBatch` (always `bytes`).
   */
  json?: boolean | undefined;
  headers?: DynamicMap | undefined;
  params?: DynamicMap | undefined;
  retry?: RetryOptions | undefined;
  fetch?: FetchFunction | undefined;
  /**
   * Aborting it cancels the reader and the request in flight: iteration ends (as on `cancel()`),
   * and `items()`, `bytes()` and `text()` reject with ABORTED if their read was not complete.
   */
  signal?: AbortSignal | undefined;
  /** Stop live requests while the page is hidden and resume when shown. Default true. */
  pauseWhenHidden?: boolean | undefined;
}

interface BatchBase {
  /** Where the next read starts: store it to resume later. */
  offset: string;
  cursor?: string;
  /**
   * The stream's incarnation (edgestream's `Stream-Incarnation`; absent from servers without it):
   * another one at the same URL is a stream deleted and created again, which reuses offsets.
   */
  incarnation?: string;
  /** The reader has everything the stream held when this batch was sent. */
  upToDate: boolean;
  /** The stream is closed and this is its last batch. */
  closed: boolean;
}
/** A batch of a JSON stream: the messages, in order. */
export interface JsonBatch<T = unknown> extends BatchBase {
  items: T[];
  bytes?: undefined;
}
/** A batch of any other stream: the bytes, in order. */
export interface BytesBatch extends BatchBase {
  bytes: Uint8Array;
  items?: undefined;
}
export type Batch<T = unknown> = JsonBatch<T> | BytesBatch;

/**
 * An item of a channel (`create({ channel: true })`): a message of a stream below it (`data` on a
 * JSON stream, `text` or `base64` on others), or an event of one. `offset` is the source's offset
 * after it (for `created`, where a reader of the source starts; for `closed` and `deleted`, its
 * tail). `stream` is the source's decoded name: encode its segments to build its URL. Read a
 * channel with `stream<ChannelMessage>({ url, json: true })`.
 */
export type ChannelMessage<T = unknown> = { stream: string; offset: string } & (
  | { data: T }
  | { text: string }
  | { base64: string }
  | { event: 'created' | 'closed' | 'deleted' }
);

/**
 * Follows a stream. `B` is the batch type: `JsonBatch<T>` for a handle opened with `json: true`,
 * `BytesBatch` with `json: false`, and either (check `items` or `bytes`) otherwise.
 */
export declare class StreamHandle<T = unknown, B extends Batch<T> = Batch<T>> implements AsyncIterableIterator<B> {
  /** The same as `stream(options)`. */
  constructor(options: StreamOptions);
  /** Where the application stands: the offset after the last batch it took (or the start). Pass it as `offset` to resume, after `break` too. */
  readonly offset: string;
  readonly upToDate: boolean;
  readonly closed: boolean;
  readonly cursor: string | undefined;
  /** HTTP status of the last response (0 before the first). */
  readonly status: number;
  /**
   * A request or connection failed and the reader waits to try again (a live reader retries
   * without limit by default): true from the failure until the next response or connection.
   */
  readonly retrying: boolean;
  readonly contentType: string | undefined;
  /** The stream's incarnation, once a response named it (or the `incarnation` option until then). */
  readonly incarnation: string | undefined;
  readonly mode: 'catch-up' | 'sse' | 'long-poll' | 'ws';
  readonly lastRequest: { headers: Record<string, string>; params: Record<string, string> };
  /**
   * Resolves when iteration ends (closed, caught up with live: false, or cancelled); rejects on
   * failure: a read error, options the reader refuses, or a `subscribe()` callback that threw.
   */
  readonly finished: Promise<void>;
  next(): Promise<IteratorResult<B, undefined>>;
  return(): Promise<IteratorResult<B, undefined>>;
  [Symbol.asyncIterator](): this;
  /**
   * Calls `callback` for each batch, awaiting it before reading on. Returns an unsubscribe
   * function. When the last subscriber unsubscribes, the handle is cancelled (the live request is
   * aborted and `finished` resolves), so nothing is read for nobody; a batch already on its way
   * is kept and returned by `next()`. A callback that throws (or rejects) stops the handle: every
   * `onError` gets the error and `finished` rejects with it, as do read errors. The cancel waits
   * for the current microtasks, so an unsubscribe and a subscribe at once (React's StrictMode)
   * keep the handle; a subscribe on a cancelled handle gets `ABORTED` in `onError`. A failure that
   * no `onError` and nobody awaiting `finished` hears is logged with `console.warn`.
   */
  subscribe(callback: (batch: B) => void | Promise<void>, onError?: (error: unknown) => void): () => void;
  cancel(): void;
  /**
   * Collects the items of a JSON stream from where the handle stands (on a fresh handle, the
   * start of the read; after batches handed out, the rest) until it is closed (or caught up with
   * `live: false`);
   * INVALID_ARGUMENT on a stream that is not JSON. ABORTED (with the signal's reason as `cause`)
   * when the handle is cancelled or its signal aborts first.
   */
  items(): Promise<T[]>;
  /**
   * Collects the bytes of a stream that is not JSON from where the handle stands, until it is
   * closed (or caught up with `live: false`); INVALID_ARGUMENT on a JSON stream, ABORTED as for
   * `items()`.
   */
  bytes(): Promise<Uint8Array>;
  /** `bytes()`, decoded as UTF-8. */
  text(): Promise<string>;
  /**
   * The items of a JSON stream, one by one, as a ReadableStream that `for await` reads (Safari's
   * included), from where the handle stands. Batches are read only as the stream is read. It
   * closes where iteration ends (the stream closed, or caught up with `live: false`), and errors
   * with the read's error, with INVALID_ARGUMENT on a stream that is not JSON, and with ABORTED
   * (the signal's reason as `cause`) when the handle is cancelled or its signal aborts before the
   * read completed. Cancelling it cancels the handle. The handle's `offset` moves a whole batch
   * at a time, when the batch's first item is read: past items not read yet (resume from batches).
   */
  jsonStream(): ReadableStreamAsyncIterable<T>;
  /** The bytes of a stream that is not JSON, as `jsonStream()` gives items; INVALID_ARGUMENT on a JSON stream. */
  bodyStream(): ReadableStreamAsyncIterable<Uint8Array>;
  /** `bodyStream()`, decoded as UTF-8 (a character split between batches comes out whole). */
  textStream(): ReadableStreamAsyncIterable<string>;
}

/** A ReadableStream that `for await` reads, in every runtime. */
export type ReadableStreamAsyncIterable<T> = ReadableStream<T> & AsyncIterable<T>;

/**
 * Follows a stream: a catch-up read, then live updates. With `json: true` every batch has
 * `items` (`JsonBatch<T>`); with `json: false`, `bytes`; otherwise it depends on the stream's type.
 */
export declare function stream<T = unknown>(options: StreamOptions & { json: true }): StreamHandle<T, JsonBatch<T>>;
export declare function stream<T = unknown>(options: StreamOptions & { json: false }): StreamHandle<T, BytesBatch>;
export declare function stream<T = unknown>(options: StreamOptions): StreamHandle<T>;

/** `WebAssembly.Module` where the libs in use declare it (DOM, workers); Node-only projects have none. */
type WasmModule = typeof globalThis extends { WebAssembly: { Module: abstract new (...args: never[]) => infer M } } ? M : never;

/**
 * Loads the wasm early (optional: it loads on first use). Accepts a URL, Response, bytes or Module.
 * Rejects with NETWORK_ERROR when the network fails the fetch, UNEXPECTED_STATUS for a status
 * (a 404), and NOT_SUPPORTED (the load's error as `cause`) for a file that is not the wasm.
 */
export declare function init(input?: URL | string | Response | ArrayBuffer | ArrayBufferView | WasmModule): Promise<void>;

export interface StreamHandleOptions {
  url: string | URL;
  /** The stream's content type; learnt from create/head when omitted. */
  contentType?: string | undefined;
  headers?: DynamicMap | undefined;
  params?: DynamicMap | undefined;
  retry?: RetryOptions | undefined;
  signal?: AbortSignal | undefined;
  /** Sends every request of the handle, its producers' and its `stream()`s' (unless they give their own). */
  fetch?: FetchFunction | undefined;
}

/** Options of one call of a `DurableStream`. */
export interface CallOptions {
  /**
   * Stops this call, as the handle's own `signal` does (either stops it): it rejects with
   * ABORTED, the signal's `reason` as `cause`. `AbortSignal.timeout(ms)` bounds the call's time.
   */
  signal?: AbortSignal | undefined;
}

export interface CreateOptions {
  contentType?: string | undefined;
  /** A sliding TTL, in whole seconds (an integer >= 0). */
  ttlSeconds?: number | undefined;
  expiresAt?: string | undefined;
  /** Create the stream already closed. */
  closed?: boolean | undefined;
  /**
   * Create a channel (an edgestream extension): a JSON stream that receives every message of the
   * streams below its path, each as `{ stream, offset, data }` (or `text`/`base64` for streams
   * that are not JSON), and `{ stream, offset, event }` when one is `created`, `closed` or
   * `deleted`. Read it like any JSON stream.
   */
  channel?: boolean | undefined;
  /**
   * Create the stream as a fork of this one: a `URL`, or a string resolved against `url` as a
   * link is (`'https://host/v1/stream/a'`, `'/v1/stream/a'`, or `'a'` for a sibling of `url`).
   * It must be on the same server as `url`; its path is sent (`Stream-Forked-From`), not its query.
   * The fork takes the source's content type and, unless it sets its own, its expiry.
   */
  forkedFrom?: string | URL | undefined;
  /**
   * Where the fork leaves its source: an offset the server issued (a batch's, an append's or a
   * head's `offset`). Omitted, the fork is made at the source's tail. Needs `forkedFrom`.
   */
  forkOffset?: string | undefined;
  /**
   * How far into the one append at `forkOffset` the fork leaves its source: in messages for a
   * JSON stream, in bytes otherwise (an integer >= 0). Needs `forkedFrom`.
   */
  forkSubOffset?: number | undefined;
  /**
   * Initial content, as the protocol reads a PUT body. On a JSON stream it is a list of messages
   * when it is an array (`[a, b]` creates the stream with messages `a` and `b`; `[[1, 2]]` with
   * the one message `[1, 2]`), and one message otherwise; strings and bytes are JSON text, read
   * the same way. (Unlike `append()`, which always appends one message.)
   */
  body?: string | Uint8Array | ArrayBuffer | unknown;
}

/**
 * `replayed: true`: the request went out more than once (its connection failed, or it was
 * answered 429 or 5xx, and it was sent again), so an earlier attempt may have landed and this
 * result is the repeat's answer. The client cannot tell whether it did.
 */
export interface Replayed {
  replayed?: true;
}

export interface CreateResult extends Replayed {
  /** 201 created, 200 already existed with the same configuration. */
  status: number;
  /**
   * The server answered 201: this request created the stream. False on 200, when it already
   * existed; with `replayed: true` it may be this call's own earlier attempt, whose answer was
   * lost, that created it (or not: a connection the server had closed unseen is the usual
   * cause). The client cannot tell; to create a stream with its first messages, give `body`.
   */
  created: boolean;
  offset?: string;
  contentType?: string;
  closed: boolean;
}

export interface HeadResult {
  status: number;
  offset?: string;
  contentType?: string;
  ttlSeconds?: number;
  expiresAt?: string;
  etag?: string;
  closed: boolean;
}

export interface AppendResult extends Replayed {
  status: number;
  offset?: string;
  closed: boolean;
  /**
   * The server already had this producer batch (HTTP 204): an append with producer headers, an
   * `IdempotentProducer`'s or your own (`headers`). Always false for a close without data:
   * servers answer every close-only request with 204, so it cannot tell.
   */
  duplicate: boolean;
  producerEpoch?: number;
  producerSeq?: number;
  /** When the writer lease the producer holds after this append ends (RFC 3339). */
  leaseExpiresAt?: string;
  headersSent: Record<string, string>;
  paramsSent: Record<string, string>;
}

/**
 * 204 (or another 2xx). Sent more than once (`replayed: true`), a 404, or a 410 (kept for its
 * forks), is taken as the earlier attempt's success, whose answer was lost: the client cannot
 * tell it from a stream that was not there, so `status` is then 404 or 410 and the call resolves.
 */
export interface DeleteResult extends Replayed {
  status: number;
}

export declare class DurableStream {
  constructor(options: StreamHandleOptions & CreateOptions);
  readonly url: string;
  contentType: string | undefined;
  static create(options: StreamHandleOptions & CreateOptions): Promise<DurableStream>;
  static connect(options: StreamHandleOptions): Promise<DurableStream>;
  static head(options: StreamHandleOptions): Promise<HeadResult>;
  static delete(options: StreamHandleOptions): Promise<DeleteResult>;
  /**
   * PUT, with the create options the handle was made with; those given here override them.
   * Its `signal` stops this call (and so does the handle's own).
   */
  create(options?: CreateOptions & CallOptions): Promise<CreateResult>;
  head(options?: CallOptions): Promise<HeadResult>;
  /**
   * Appends one message or chunk. JSON streams take any JSON value as one message, an array
   * included (strings and bytes are JSON text; other values as `JSON.stringify` writes them,
   * `NaN` as `null`); others take strings or bytes. To append several
   * JSON messages in one request, use an `IdempotentProducer`. Appends (and `close()`) land in
   * the order they were called: one request is out at a time, and the appends made meanwhile go
   * together in the next (up to 1 MiB; one with `seq` goes alone), each resolving to that
   * request's result. Appends sent together and refused as too large (413) go again in parts of
   * at most half that size (and later requests stay under it), down to one append a request; one
   * refused alone rejects. A request that fails rejects every append in it; the next goes on. A request
   * is stopped once every append in it has been stopped by its own `signal`.
   *
   * An append stopped by its `signal` (ABORTED) may still have landed: the request may have
   * reached the server before it was aborted. To append exactly once, use an `IdempotentProducer`.
   */
  append(data: unknown, options?: { seq?: string | undefined; contentType?: string | undefined } & CallOptions): Promise<AppendResult>;
  /** Closes the stream; `body` is a last message (one, as with `append()`) sent in the same request. */
  close(options?: { body?: unknown; contentType?: string | undefined } & CallOptions): Promise<AppendResult & { finalOffset?: string }>;
  delete(options?: CallOptions): Promise<DeleteResult>;
  /**
   * A WritableStream that appends each chunk written through an `IdempotentProducer` (batched,
   * exactly once; one message per chunk on a JSON stream, as the producer's `append()` takes it),
   * made with `options`. A write resolves once its chunk is queued and no batch waits for a
   * request (backpressure: at most `maxInFlight` batches in flight and one waiting); `close()`
   * resolves once everything written is acknowledged, and leaves the stream open; `abort(reason)`
   * cancels the producer (what was not acknowledged may or may not land). The producer's failure
   * (a refusal, its `signal`) errors the WritableStream with its error, and so does a chunk the
   * stream cannot take (INVALID_ARGUMENT): that write and every later one reject, and the chunks
   * written before it are still sent (the producer is detached: flushed, then stopped).
   */
  writable(options?: WriteStreamOptions): WritableStream<unknown>;
  /**
   * Appends every chunk of `source` through an `IdempotentProducer` made with `options`, as
   * `writable()` does, reading the source only as fast as the producer sends. Resolves to the
   * offset after the last batch once all of it is acknowledged (undefined if the source was
   * empty). A source that throws, or gives a chunk the stream cannot take, stops there: what it
   * gave before is sent, then this rejects with its error (INVALID_ARGUMENT for the chunk). When
   * the producer fails (a refusal such as STREAM_CLOSED, or ABORTED when `signal` aborts), this
   * rejects with its error and the source is cancelled.
   */
  appendStream(source: ReadableStream<unknown> | AsyncIterable<unknown> | Iterable<unknown>, options?: WriteStreamOptions): Promise<{ offset: string | undefined }>;
  /** Follows this stream, with its headers, params, retry and signal: see `stream()`. */
  stream<T = unknown>(options: Omit<StreamOptions, 'url'> & { json: true }): StreamHandle<T, JsonBatch<T>>;
  stream<T = unknown>(options: Omit<StreamOptions, 'url'> & { json: false }): StreamHandle<T, BytesBatch>;
  stream<T = unknown>(options?: Omit<StreamOptions, 'url'>): StreamHandle<T>;
}

export interface ProducerOptions {
  /** Starting epoch: an integer >= 0, default 0. */
  epoch?: number | undefined;
  /**
   * On a stale epoch (403), claim the one after the server's and retry, `close()` included. The
   * batches in flight are let settle first, then the fenced ones are re-sent in append order under
   * the one new epoch. Gives up (the producer fails) after 5 claims in a row. It also takes over
   * from an older instance at its own epoch (a reloaded tab starts at 0 again): a batch sent once
   * that comes back a duplicate was that instance's, so the next epoch is claimed. Without it, a
   * new instance must start above the epochs used before, or its batches do not land.
   * Default false.
   */
  autoClaim?: boolean | undefined;
  /** How long a batch waits for more data, in ms: an integer >= 0. Default 5. */
  lingerMs?: number | undefined;
  /**
   * A batch's request body holds at most this many bytes (a value over it alone goes alone), and
   * is sent once full: an integer > 0. Default 1 MiB. Exact, so it can be the server's limit:
   * the values' UTF-8 bytes and, on a JSON stream, the `[`, `,` and `]` around them. (Until a
   * producer made from a URL has learnt the stream's kind, the framing is counted either way.)
   * A batch of several values refused with 413 on its first attempt goes again in halves (the
   * first at its own seq; while later batches are out, only with `autoClaim`, at a new epoch,
   * the later batches after them), and this becomes half its size.
   */
  maxBatchBytes?: number | undefined;
  /** A batch is sent once it holds this many items: an integer > 0. Default unlimited. */
  maxBatchItems?: number | undefined;
  /** Batches in flight at once: an integer > 0. Default 5. */
  maxInFlight?: number | undefined;
  /**
   * How long a request (an append, a close, the HEAD that learns the stream's type) waits for its
   * response, in ms: an integer > 0. Past it the connection is taken for dead (it can die without
   * closing: a network partition, a proxy, a laptop's sleep), and the request is aborted and
   * retried as a failed connection is, with the same producer id, epoch and seq, so it lands
   * once. Counts the upload too: raise it for large batches on a slow uplink. Default 60000.
   */
  requestTimeoutMs?: number | undefined;
  /** JSON stream? Default: from the stream's content type. */
  json?: boolean | undefined;
  /** Called once, when the producer fails (see `IdempotentProducer`). */
  onError?: ((error: DurableStreamError) => void) | undefined;
  /**
   * Aborting it (or the `DurableStream`'s own `signal`) stops the producer for good: requests in
   * flight and retries end, and it fails with ABORTED (the signal's reason as `cause`). Without a
   * signal, `cancel()` does the same.
   */
  signal?: AbortSignal | undefined;
  /** Sends the producer's requests. Default: the `DurableStream`'s `fetch`, else the global one. */
  fetch?: FetchFunction | undefined;
  /**
   * Make this producer the stream's only appender (an edgestream extension): each batch takes or
   * renews the stream's writer lease for `ttlSeconds` (1 to 86400), an idle producer renews it
   * within a third of it, and `detach()` gives it up. Appends by others are refused
   * (LeaseHeldError) until then. A producer refused the lease fails with LeaseHeldError, unless
   * `wait` is true: then, until it first holds the lease, it waits for it (a standby), `flush()`
   * included. Once it has held the lease, losing it fails the producer.
   */
  lease?: { ttlSeconds: number; wait?: boolean | undefined } | undefined;
}

/**
 * Options of `writable()` and `appendStream()`: those of the producer they append through, a new
 * instance per call, with `autoClaim` on by default (a call with an earlier one's `producerId`
 * claims an epoch of its own; at the earlier epoch its batches would not land).
 */
export interface WriteStreamOptions extends ProducerOptions {
  /** The producer's id (printable ASCII, sent as a header). Default: a new random one. */
  producerId?: string | undefined;
}

/**
 * Batched, pipelined, exactly-once appends. A batch that fails for good (refused by the server,
 * or still failing once the `retry` budget of the stream is spent) fails the producer: the server
 * expects that batch's seq next, so nothing after it could land. From then on `append()` throws
 * that error, and `flush()`, `close()` and `detach()` reject with it, for every caller; what was
 * queued is dropped, and batches not acknowledged may or may not have landed. To go on, create a
 * new producer with a higher epoch (or `autoClaim`).
 */
export declare class IdempotentProducer {
  /**
   * `producerId` is sent as a header: printable ASCII, without spaces at either end
   * (INVALID_ARGUMENT otherwise). Derive it from a name with, say, `encodeURIComponent`.
   */
  constructor(stream: DurableStream | string | URL, producerId: string, options?: ProducerOptions);
  readonly epoch: number;
  readonly nextSeq: number;
  readonly offset: string | undefined;
  /** When the writer lease this producer holds ends (RFC 3339); undefined when it holds none. */
  readonly leaseExpiresAt: string | undefined;
  /**
   * A request failed (no connection, no response within `requestTimeoutMs`, or a status such as
   * 503) and waits to be sent again: true from the failure until the next response, or until
   * the producer fails.
   */
  readonly retrying: boolean;
  /** Values appended and not yet in a batch (the one lingering for `lingerMs`). */
  readonly pendingCount: number;
  /**
   * Batches not yet acknowledged: sent, or waiting for a request (of `maxInFlight`) or to be sent
   * again. With `pendingCount`, what to show as backpressure.
   */
  readonly inFlightCount: number;
  /**
   * Takes (or renews) the writer lease without appending data, after what is queued; with
   * `lease.wait`, waits until it is free. Resolves to when it ends. Needs the `lease` option.
   */
  acquire(): Promise<string | undefined>;
  /**
   * Queues data (one message on a JSON stream). Throws StreamClosedError once `close()` has been
   * called, and the producer's error once it has failed. Throws INVALID_ARGUMENT for a value the
   * stream cannot take when its kind is known; before that, such a value is left out when the
   * kind is learnt, and the next `flush()` reports it.
   */
  append(data: unknown): void;
  /**
   * Sends what is queued and resolves when every value appended before the call is acknowledged
   * (values appended meanwhile are not waited for, so a busy producer still gets its
   * confirmations); rejects once the producer
   * has failed, and (once) with INVALID_ARGUMENT when values appended before the stream's kind was
   * known did not fit it and were left out (the producer carries on).
   */
  flush(): Promise<void>;
  /**
   * Flushes and closes the stream, optionally with a last message. Idempotent: every call returns
   * the first call's promise (later calls' `data` is ignored). `duplicate` is true when the server
   * already had this close with its data (never for a close without data). A last message the
   * stream cannot take throws INVALID_ARGUMENT (or rejects with it, when the kind is learnt first),
   * and the producer stays open.
   */
  close(data?: unknown): Promise<{ finalOffset?: string; duplicate: boolean }>;
  /**
   * Flushes and stops, leaving the stream open and giving up the writer lease. A standby (`lease.wait`)
   * stops waiting for the lease: its batches fail with LeaseHeldError, and `detach()` rejects with it.
   * Waits for the server as `flush()` does: `cancel()` (or the `signal`) ends the wait.
   */
  detach(): Promise<void>;
  /**
   * Stops the producer now, without waiting for the server, as aborting its `signal` does (for a
   * producer made without one): requests in flight and retries end, what is queued is dropped,
   * and it fails with ABORTED (`reason` as `cause`), so pending and later `flush()`, `close()`,
   * `detach()` and `acquire()` reject with it and `onError` hears of it. Acknowledged batches
   * stay stored; a batch in flight may have been stored or not (the error's message says
   * whether there was one), and nothing is sent again. A writer lease it holds is not given up:
   * it runs out. No-op once the producer is closed, detached or failed.
   */
  cancel(reason?: unknown): void;
}

export type ErrorCode =
  | 'NOT_FOUND'
  | 'GONE'
  | 'CONFLICT'
  | 'SEQUENCE_CONFLICT'
  | 'STREAM_CLOSED'
  | 'STALE_EPOCH'
  | 'SEQUENCE_GAP'
  | 'BAD_REQUEST'
  | 'INVALID_OFFSET'
  | 'UNAUTHORIZED'
  | 'FORBIDDEN'
  | 'PAYLOAD_TOO_LARGE'
  | 'LEASE_HELD'
  | 'UNEXPECTED_STATUS'
  | 'NETWORK_ERROR'
  | 'PARSE_ERROR'
  | 'INVALID_ARGUMENT'
  | 'NOT_SUPPORTED'
  | 'ABORTED'
  /** The stream was deleted and created again since the reader's first response (or its `incarnation` option). */
  | 'STREAM_REPLACED';

/**
 * Every error the client raises. `code` is stable; `status` is the HTTP status, if any. The
 * constructors take the same arguments as the runtime's: `details` are copied onto the error
 * (`cause` included: `new DurableStreamError('m', 'ABORTED', undefined, { cause: reason })`).
 */
export declare class DurableStreamError extends Error {
  constructor(message: string, code: ErrorCode, status?: number | undefined, details?: DurableStreamErrorDetails | undefined);
  readonly code: ErrorCode;
  readonly status?: number;
  /** A WebSocket reader's NETWORK_ERROR: the close code of the connection that failed last. */
  readonly closeCode?: number;
  /** For ABORTED caused by an AbortSignal: the signal's `reason`. */
  readonly cause?: unknown;
}
/** Fields a `DurableStreamError` constructor copies onto the error. */
export interface DurableStreamErrorDetails {
  closeCode?: number | undefined;
  cause?: unknown;
}
/** Code `STREAM_CLOSED`. The message defaults to `'stream is closed'`. */
export declare class StreamClosedError extends DurableStreamError {
  constructor(message?: string | undefined, status?: number | undefined, details?: (DurableStreamErrorDetails & { finalOffset?: string | undefined }) | undefined);
  readonly code: 'STREAM_CLOSED';
  readonly finalOffset?: string;
}
/** Code `STALE_EPOCH`. */
export declare class StaleEpochError extends DurableStreamError {
  constructor(message?: string | undefined, status?: number | undefined, details?: (DurableStreamErrorDetails & { currentEpoch?: number | undefined }) | undefined);
  readonly code: 'STALE_EPOCH';
  readonly currentEpoch?: number;
}
/** Code `SEQUENCE_GAP`. */
export declare class SequenceGapError extends DurableStreamError {
  constructor(
    message?: string | undefined,
    status?: number | undefined,
    details?: (DurableStreamErrorDetails & { expectedSeq?: number | undefined; receivedSeq?: number | undefined }) | undefined,
  );
  readonly code: 'SEQUENCE_GAP';
  readonly expectedSeq?: number;
  readonly receivedSeq?: number;
}
/** Another producer holds the stream's writer lease (HTTP 423). Code `LEASE_HELD`. */
export declare class LeaseHeldError extends DurableStreamError {
  constructor(
    message?: string | undefined,
    status?: number | undefined,
    details?: (DurableStreamErrorDetails & { leaseExpiresAt?: string | undefined; retryAfterMs?: number | undefined }) | undefined,
  );
  readonly code: 'LEASE_HELD';
  /** When the holder's lease ends (RFC 3339, by the server's clock). */
  readonly leaseExpiresAt?: string;
  /** How long to wait before trying again: the server's `Retry-After`, which no client clock skews. */
  readonly retryAfterMs?: number;
}

/** Throws INVALID_ARGUMENT for a bad producer id or option. */
export declare function checkProducerOptions(producerId: string, options?: ProducerOptions): void;
/** Rejects with INVALID_ARGUMENT for bad retry options. */
export declare function checkRetryOptions(options: RetryOptions): Promise<void>;

// ---------------------------------------------------------------------------------------------
// Live keyed tables (the Durable Streams State Protocol)

/** A State Protocol change message, as appended to a table's JSON stream. */
export interface ChangeMessage<V = unknown> {
  type: string;
  key: string;
  value: V | null;
  old_value?: unknown;
  headers: { operation: 'insert' | 'update' | 'upsert' | 'delete'; txid?: string; timestamp?: string; [name: string]: unknown };
}
/** A State Protocol control message. `reset` makes tables drop their rows. */
export interface ControlMessage {
  headers: { control: 'snapshot-start' | 'snapshot-end' | 'reset'; offset?: string };
}

/** The optional headers of a change message (left out when undefined). */
export interface ChangeHeaders {
  txid?: string | undefined;
  timestamp?: string | undefined;
}
/** Builders for the messages a table reads; append them with `append()` or a producer. */
export declare const change: {
  insert<V>(type: string, key: string, value: V, headers?: ChangeHeaders): ChangeMessage<V>;
  update<V>(type: string, key: string, value: V, headers?: ChangeHeaders): ChangeMessage<V>;
  upsert<V>(type: string, key: string, value: V, headers?: ChangeHeaders): ChangeMessage<V>;
  delete(type: string, key: string, headers?: ChangeHeaders): ChangeMessage<never>;
  reset(): ControlMessage;
};

/** A table's rows and the offset they are current to: plain JSON, to store and restore. */
export interface TableSnapshot<V = unknown> {
  version: 1;
  offset: string;
  /** The stream incarnation the rows come from, when the server names one. */
  incarnation?: string | undefined;
  rows: Array<[type: string, key: string, value: V]>;
}

/**
 * Where a table keeps its snapshot between sessions. `save` is called one at a time (a save asked
 * for while one runs saves the newest rows once it has settled), and never awaited by the reader.
 */
export interface TableStore<V = unknown> {
  load(): TableSnapshot<V> | undefined | null | Promise<TableSnapshot<V> | undefined | null>;
  save(snapshot: TableSnapshot<V>): void | Promise<void>;
}

export interface TableOptions<V = unknown> extends Omit<StreamOptions, 'json'> {
  /** Resume from this snapshot: only what was appended after its offset is read. */
  from?: TableSnapshot<V> | undefined;
  /** Load the snapshot from here on start (unless `from`), and save it as the table moves on. */
  store?: TableStore<V> | undefined;
  /** At most one save per this many ms while following (default 1000); always one at the end. */
  saveEveryMs?: number | undefined;
  /**
   * A message that is not a State Protocol message: fail the table (default) or skip it. A
   * skip is told to `subscribe()`'s `onError` (or the console), once per batch, as `PARSE_ERROR`.
   */
  onInvalid?: 'error' | 'skip' | undefined;
}

export interface TableChange<V = unknown> {
  type: string;
  key: string;
  operation: 'insert' | 'update' | 'upsert' | 'delete';
  /** The new value (undefined for a delete): the table's own object, to treat as read-only. */
  value: V | undefined;
  /** The value the table held before (undefined if it had none); not a copy either. */
  previous: V | undefined;
  headers: ChangeMessage['headers'];
}

export interface TableUpdate<V = unknown> {
  /**
   * The changes of one batch, in order (after the last `reset` in it, if any). A delete of a
   * key the table did not hold changed nothing and is not listed.
   */
  changes: TableChange<V>[];
  /** The table dropped its rows first (a `reset` message, or a resync from the start). */
  reset: boolean;
  offset: string;
  upToDate: boolean;
  closed: boolean;
}

export declare class KeyedTable<V = unknown> {
  constructor(options: TableOptions<V>);
  readonly offset: string;
  readonly upToDate: boolean;
  readonly closed: boolean;
  readonly mode: 'catch-up' | 'sse' | 'long-poll' | 'ws';
  /** HTTP status of the last response (0 before the first). */
  readonly status: number;
  /** A request or connection failed and the table waits to try again (see StreamHandle). */
  readonly retrying: boolean;
  /** Rows over all types. */
  readonly size: number;
  /**
   * Settles when reading ends: resolves when the stream is closed, the table caught up with
   * `live: false`, or cancelled; rejects when the table fails: a read error, an invalid message,
   * or a listener without `onError` that threw (with its error, as `ready()` does if the table had
   * not caught up). It waits for the store's last `save` until `cancel()` (a cancelled table
   * does not wait for it).
   */
  readonly finished: Promise<void>;
  /** Resolves once the table first holds everything the stream held. */
  ready(): Promise<void>;
  /**
   * The value, as with a `Map`: the table's own object, not a copy (nor are the values of
   * `entries()`, `values()` and updates). Treat it as read-only: a change to it changes the table
   * and the snapshots it saves.
   */
  get(type: string, key: string): V | undefined;
  has(type: string, key: string): boolean;
  types(): string[];
  entries(type: string): IterableIterator<[string, V]>;
  keys(type: string): IterableIterator<string>;
  values(type: string): IterableIterator<V>;
  count(type: string): number;
  snapshot(): TableSnapshot<V>;
  /**
   * Called after each batch is applied; awaited before the next is read. `onError` gets the
   * error that ends the table (at once, if it has already), errors the listener throws (the listener stays subscribed and the
   * table reads on), errors of the store's `load` and `save`, and invalid messages skipped with `onInvalid: 'skip'`
   * (neither of which ends the table). A listener
   * without `onError` that throws fails the table once every listener has had that update:
   * reading stops, and `finished` (and `ready()`, before it resolved) rejects with the error,
   * which the other listeners' `onError` get, as on a stream handle. Nothing is thrown
   * where it cannot be caught; a failure that no `onError`, `finished` or pending `ready()`
   * hears is logged with `console.warn`. Returns an unsubscribe function; a listener unsubscribed during
   * an update (by another listener) is not called with it, as on an `EventTarget`.
   */
  subscribe(listener: (update: TableUpdate<V>) => void | Promise<void>, onError?: (error: unknown) => void): () => void;
  /**
   * Stops reading; the rows stay readable, and a store gets a last snapshot. `finished` does not
   * wait for a listener that is still running, nor for that save.
   */
  cancel(): void;
}

/** Follows a JSON stream of change messages as a live table. */
export declare function table<V = unknown>(options: TableOptions<V>): KeyedTable<V>;

/** A `TableStore` in `localStorage`, `sessionStorage` or anything with `getItem`/`setItem`. */
export declare function storageStore<V = unknown>(
  storage: { getItem(key: string): string | null; setItem(key: string, value: string): void },
  key: string,
): TableStore<V>;

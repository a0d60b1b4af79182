// The public API of `edgestream`. The protocol work (requests, retries, SSE, offsets, producer
// headers) happens in the wasm module; this file gives it a JavaScript shape: async iterators,
// AbortSignal, classes and typed errors.
import {
  Reader,
  appendStream,
  createStream,
  deleteStream,
  headStream,
  validateRetryOptions,
} from '../dist/edgestream_client.js';

let loader = null;
let ready = null;

/** @internal Set by the entry module (browser or Node) to load the wasm. */
export function setLoader(fn) {
  loader = fn;
}

/**
 * Loads the wasm module. Called for you on first use; call it yourself to load early, or to pass
 * the module explicitly (a `URL`, `Response`, `BufferSource` or `WebAssembly.Module`).
 */
export function init(input) {
  if (!ready) {
    if (!loader) throw new Error('edgestream: no wasm loader (import "edgestream", not a file inside it)');
    ready = Promise.resolve(loader(input)).then(() => undefined);
    ready.catch(() => {
      ready = null;
    });
  }
  return ready;
}

// ---------------------------------------------------------------------------------------------
// Errors

/** Every error the client raises. `code` is stable; `status` is the HTTP status if any. */
export class DurableStreamError extends Error {
  constructor(message, code, status, details) {
    super(message);
    this.name = 'DurableStreamError';
    this.code = code;
    if (status !== undefined) this.status = status;
    if (details) Object.assign(this, details);
  }
}
/** The stream is closed: no more appends. `finalOffset` is its end, when known. */
export class StreamClosedError extends DurableStreamError {
  constructor(message = 'stream is closed', status, details) {
    super(message, 'STREAM_CLOSED', status, details);
    this.name = 'StreamClosedError';
  }
}
/** Another producer instance claimed a newer epoch (HTTP 403). `currentEpoch` is the server's. */
export class StaleEpochError extends DurableStreamError {
  constructor(message, status, details) {
    super(message, 'STALE_EPOCH', status, details);
    this.name = 'StaleEpochError';
  }
}
/** The server expected another producer sequence number (HTTP 409): batches were lost. */
export class SequenceGapError extends DurableStreamError {
  constructor(message, status, details) {
    super(message, 'SEQUENCE_GAP', status, details);
    this.name = 'SequenceGapError';
  }
}

const DETAIL_KEYS = ['currentEpoch', 'expectedSeq', 'receivedSeq', 'finalOffset', 'cause'];

/** Turns the wasm's coded errors (and host errors) into instances of the classes above. */
function toError(e) {
  if (e instanceof DurableStreamError) return e;
  if (!e || typeof e !== 'object' || typeof e.code !== 'string') {
    if (e && e.name === 'AbortError') return new DurableStreamError('the operation was cancelled', 'ABORTED');
    return e;
  }
  const details = {};
  for (const k of DETAIL_KEYS) if (e[k] !== undefined) details[k] = e[k];
  let err;
  switch (e.code) {
    case 'STREAM_CLOSED':
      err = new StreamClosedError(e.message, e.status, details);
      break;
    case 'STALE_EPOCH':
      err = new StaleEpochError(e.message, e.status, details);
      break;
    case 'SEQUENCE_GAP':
      err = new SequenceGapError(e.message, e.status, details);
      break;
    default:
      err = new DurableStreamError(e.message, e.code, e.status, details);
  }
  if (e.stack) err.stack = e.stack;
  return err;
}

async function call(fn, options) {
  await init();
  try {
    return await fn(options);
  } catch (e) {
    throw toError(e);
  }
}

// ---------------------------------------------------------------------------------------------
// Reading

/**
 * Follows a stream. Returns a handle that is an async iterator of batches
 * (`{ items | bytes, offset, cursor, upToDate, closed }`), with `subscribe`, `cancel` and the
 * current `offset`, `upToDate` and `closed`.
 */
export function stream(options) {
  return new StreamHandle(options);
}

export class StreamHandle {
  #options;
  #reader = null;
  #cancelled = false;
  #pending = null;
  #error = null;
  #subscribers = new Set();
  #pumping = false;
  #finished;
  #resolveFinished;
  #rejectFinished;

  constructor(options) {
    if (!options || typeof options.url !== 'string' && !(options.url instanceof URL)) {
      throw new DurableStreamError('stream(): url is required', 'INVALID_ARGUMENT');
    }
    this.#options = { ...options, url: String(options.url) };
    this.#finished = new Promise((resolve, reject) => {
      this.#resolveFinished = resolve;
      this.#rejectFinished = reject;
    });
    this.#finished.catch(() => {});
    const signal = options.signal;
    if (signal) {
      if (signal.aborted) this.cancel();
      else signal.addEventListener('abort', () => this.cancel(), { once: true });
    }
  }

  /** Where the next read starts (pass it as `offset` to resume later). */
  get offset() {
    return this.#reader ? this.#reader.offset : (this.#options.offset ?? '-1');
  }
  /** The reader has everything the stream held at its last response. */
  get upToDate() {
    return this.#reader ? this.#reader.upToDate : false;
  }
  /** The stream is closed and the reader has reached its end. */
  get closed() {
    return this.#reader ? this.#reader.closed : false;
  }
  /** The last cursor the server sent (echoed on live requests for CDN collapsing). */
  get cursor() {
    return this.#reader?.cursor ?? undefined;
  }
  /** The HTTP status of the last response. */
  get status() {
    return this.#reader ? this.#reader.status : 0;
  }
  /** The stream's content type, once known. */
  get contentType() {
    return this.#reader?.contentType ?? undefined;
  }
  /** The transport in use: `catch-up`, `sse`, `long-poll` or `ws`. */
  get mode() {
    return this.#reader ? this.#reader.mode : 'catch-up';
  }
  /** The dynamic headers and params sent with the last request (for diagnostics). */
  get lastRequest() {
    return this.#reader
      ? { headers: this.#reader.headersSent, params: this.#reader.paramsSent }
      : { headers: {}, params: {} };
  }
  /** Settles when iteration ends: resolves when closed or cancelled, rejects on failure. */
  get finished() {
    return this.#finished;
  }

  async #ensureReader() {
    await init();
    if (!this.#reader) {
      try {
        this.#reader = new Reader(this.#options);
      } catch (e) {
        throw toError(e);
      }
      if (this.#cancelled) this.#reader.cancel();
    }
    return this.#reader;
  }

  /** The next batch; `{ done: true }` when the stream is closed, caught up (live: false) or cancelled. */
  next() {
    // One request at a time: concurrent next() calls queue behind each other.
    const run = async () => {
      if (this.#error) throw this.#error;
      if (this.#cancelled) return { done: true, value: undefined };
      const reader = await this.#ensureReader();
      try {
        const value = await reader.next();
        if (value === undefined) {
          this.#resolveFinished();
          return { done: true, value: undefined };
        }
        return { done: false, value };
      } catch (e) {
        const err = toError(e);
        if (this.#cancelled || err?.code === 'ABORTED') {
          this.#resolveFinished();
          return { done: true, value: undefined };
        }
        this.#error = err;
        this.#rejectFinished(err);
        throw err;
      }
    };
    const p = (this.#pending ?? Promise.resolve()).then(run, run);
    this.#pending = p.catch(() => {});
    return p;
  }

  /** Ends iteration early (`for await ... break`). */
  async return() {
    this.cancel();
    return { done: true, value: undefined };
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  /**
   * Calls `callback(batch)` for every batch, awaiting it before reading on (backpressure).
   * Returns a function that unsubscribes. Errors go to `onError` (or reject `finished`).
   */
  subscribe(callback, onError) {
    const entry = { callback, onError };
    this.#subscribers.add(entry);
    this.#pump();
    return () => {
      this.#subscribers.delete(entry);
    };
  }

  async #pump() {
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      while (this.#subscribers.size > 0) {
        const { done, value } = await this.next();
        if (done) break;
        for (const s of [...this.#subscribers]) await s.callback(value);
      }
    } catch (e) {
      for (const s of [...this.#subscribers]) s.onError?.(e);
    } finally {
      this.#pumping = false;
    }
  }

  /** Stops reading and aborts the request in flight. */
  cancel() {
    this.#cancelled = true;
    this.#reader?.cancel();
    this.#resolveFinished?.();
  }

  /** Reads until caught up (or closed) and returns every item (JSON streams). */
  async items() {
    const all = [];
    for await (const batch of this) {
      // A loop, not push(...items): a batch can hold more messages than a call has arguments.
      if (batch.items) for (const item of batch.items) all.push(item);
      if (batch.upToDate && this.#options.live === false) break;
    }
    return all;
  }

  /** Reads until caught up (or closed) and returns the bytes (non-JSON streams). */
  async bytes() {
    const parts = [];
    let n = 0;
    for await (const batch of this) {
      if (batch.bytes) {
        parts.push(batch.bytes);
        n += batch.bytes.length;
      }
    }
    const out = new Uint8Array(n);
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  /** Like `bytes()`, decoded as UTF-8. */
  async text() {
    return new TextDecoder().decode(await this.bytes());
  }
}

// ---------------------------------------------------------------------------------------------
// Writing

const isJsonType = (ct) => typeof ct === 'string' && /^\s*application\/json\s*(;|$)/i.test(ct);
const encoder = new TextEncoder();

/** Encodes one value for a JSON stream: strings are taken as JSON text, the rest is stringified. */
function jsonText(value) {
  if (typeof value === 'string') return value;
  if (value instanceof Uint8Array) return new TextDecoder().decode(value);
  return JSON.stringify(value);
}

/** A stream at a URL: create, inspect, append to, close, delete, read. */
export class DurableStream {
  /**
   * @param {object} options `url`, `contentType`, `headers`, `params`, `retry`, `signal`
   */
  constructor(options) {
    if (!options || !options.url) throw new DurableStreamError('DurableStream: url is required', 'INVALID_ARGUMENT');
    this.url = String(options.url);
    this.contentType = options.contentType;
    this.options = options;
  }

  #request(extra) {
    const { headers, params, retry, signal } = this.options;
    return { url: this.url, headers, params, retry, signal, ...extra };
  }

  /** Creates the stream (PUT) and returns a handle to it. Resolves if it exists with the same configuration. */
  static async create(options) {
    const ds = new DurableStream(options);
    await ds.create(options);
    return ds;
  }

  /** A handle to an existing stream; fails with `NOT_FOUND` if there is none. */
  static async connect(options) {
    const ds = new DurableStream(options);
    await ds.head();
    return ds;
  }

  /** Metadata of the stream at `options.url`. */
  static head(options) {
    return new DurableStream(options).head();
  }

  /** Deletes the stream at `options.url`. */
  static delete(options) {
    return new DurableStream(options).delete();
  }

  /** PUT. Options: `contentType`, `ttlSeconds`, `expiresAt`, `closed`, `body`. */
  async create(options = {}) {
    const contentType = options.contentType ?? this.contentType;
    let body = options.body;
    if (body !== undefined && isJsonType(contentType) && typeof body !== 'string' && !(body instanceof Uint8Array)) {
      body = JSON.stringify(body);
    }
    const res = await call(
      createStream,
      this.#request({
        contentType,
        ttlSeconds: options.ttlSeconds,
        expiresAt: options.expiresAt,
        closed: options.closed,
        body,
      }),
    );
    this.contentType = res.contentType ?? contentType ?? this.contentType;
    return res;
  }

  /** HEAD: `{ offset, contentType, closed, ttlSeconds, expiresAt, etag }`. */
  async head() {
    const res = await call(headStream, this.#request({}));
    if (res.contentType) this.contentType = res.contentType;
    return res;
  }

  async #type() {
    if (this.contentType === undefined) await this.head();
    return this.contentType;
  }

  /**
   * Appends one message or chunk. JSON streams take any JSON value (strings are taken as JSON
   * text); other streams take strings (UTF-8) or bytes. Options: `seq` (`Stream-Seq`).
   */
  async append(data, options = {}) {
    const contentType = options.contentType ?? (await this.#type());
    const body = isJsonType(contentType) ? jsonText(data) : data;
    return call(appendStream, this.#request({ body, contentType, seq: options.seq }));
  }

  /** Closes the stream, optionally appending a last message in the same request. */
  async close(options = {}) {
    let body = options.body;
    let contentType = options.contentType;
    if (body !== undefined) {
      contentType ??= await this.#type();
      if (isJsonType(contentType)) body = jsonText(body);
    }
    const res = await call(appendStream, this.#request({ body, contentType, close: true }));
    return { ...res, finalOffset: res.offset };
  }

  /** DELETE. */
  delete() {
    return call(deleteStream, this.#request({}));
  }

  /** Follows this stream: see `stream()`. */
  stream(options = {}) {
    const { headers, params, retry, signal } = this.options;
    return stream({ url: this.url, headers, params, retry, signal, ...options });
  }
}

/**
 * Exactly-once appends: each batch carries `(Producer-Id, Producer-Epoch, Producer-Seq)`, so a
 * retried batch is recognised as a duplicate, and a newer instance of the producer (a higher
 * epoch) fences older ones.
 */
export class IdempotentProducer {
  #stream;
  #id;
  #epoch;
  #seq = 0;
  #autoClaim;
  #lingerMs;
  #maxBatchBytes;
  #maxBatchItems;
  #maxInFlight;
  #onError;
  #json;
  #items = [];
  #bytes = 0;
  #timer = null;
  #queue = [];
  #inflight = new Map();
  #confirmed = false;
  #error = null;
  #idleWaiters = [];
  #settleWaiters = [];
  #state = 'open';
  #closeResult = null;
  #lastOffset;

  /**
   * @param {DurableStream|string} stream the stream (or its URL)
   * @param {string} producerId stable id of this producer
   * @param {object} options `epoch` (0), `autoClaim` (false), `lingerMs` (5), `maxBatchBytes` (1 MiB),
   *   `maxBatchItems` (none), `maxInFlight` (5), `onError`, `json`
   */
  constructor(stream, producerId, options = {}) {
    if (typeof producerId !== 'string' || producerId === '') {
      throw new DurableStreamError('producerId must be a non-empty string', 'INVALID_ARGUMENT');
    }
    checkProducerOptions(producerId, options);
    this.#stream = typeof stream === 'string' || stream instanceof URL ? new DurableStream({ url: stream }) : stream;
    this.#id = producerId;
    this.#epoch = options.epoch ?? 0;
    this.#autoClaim = options.autoClaim ?? false;
    this.#lingerMs = options.lingerMs ?? 5;
    this.#maxBatchBytes = options.maxBatchBytes ?? 1024 * 1024;
    this.#maxBatchItems = options.maxBatchItems ?? Infinity;
    this.#maxInFlight = options.maxInFlight ?? 5;
    this.#onError = options.onError;
    this.#json = options.json;
  }

  get epoch() {
    return this.#epoch;
  }
  /** The sequence number the next batch will carry. */
  get nextSeq() {
    return this.#seq;
  }
  /** The offset after the last acknowledged batch. */
  get offset() {
    return this.#lastOffset;
  }

  /** Queues `data` for the next batch. Returns at once; `flush()` waits for delivery. */
  append(data) {
    if (this.#state !== 'open') {
      throw this.#state === 'closed' ? new StreamClosedError('producer is closed') : new DurableStreamError('producer is detached', 'INVALID_ARGUMENT');
    }
    if (this.#error) throw this.#error;
    const size = typeof data === 'string' ? encoder.encode(data).length : data instanceof Uint8Array ? data.length : jsonText(data).length;
    this.#items.push(data);
    this.#bytes += size;
    if (this.#bytes >= this.#maxBatchBytes || this.#items.length >= this.#maxBatchItems) this.#cut();
    else if (this.#timer === null) this.#timer = setTimeout(() => this.#cut(), this.#lingerMs);
  }

  /** Sends whatever is queued and waits until every batch is acknowledged. */
  async flush() {
    this.#cut();
    if (this.#idle()) return this.#takeError();
    await new Promise((resolve) => this.#idleWaiters.push(resolve));
    return this.#takeError();
  }

  /** Flushes, then closes the stream (with an optional last message). Idempotent. */
  async close(data) {
    if (this.#closeResult) return this.#closeResult;
    await this.flush();
    const json = await this.#isJson();
    let body;
    if (data !== undefined) body = json ? `[${jsonText(data)}]` : data;
    const seq = this.#seq++;
    const res = await this.#send({ body, seq, epoch: this.#epoch, close: true });
    this.#state = 'closed';
    this.#closeResult = { finalOffset: res.offset, duplicate: res.duplicate };
    return this.#closeResult;
  }

  /** Flushes and stops this producer without closing the stream. */
  async detach() {
    try {
      await this.flush();
    } finally {
      if (this.#state === 'open') this.#state = 'detached';
    }
  }

  #takeError() {
    const e = this.#error;
    if (e) {
      this.#error = null;
      throw e;
    }
  }

  #idle() {
    return this.#queue.length === 0 && this.#inflight.size === 0 && this.#items.length === 0;
  }

  async #isJson() {
    if (this.#json === undefined) {
      this.#json = isJsonType(this.#stream.contentType ?? (await this.#stream.head()).contentType);
    }
    return this.#json;
  }

  #cut() {
    if (this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    if (this.#items.length === 0) return;
    this.#queue.push({ items: this.#items });
    this.#items = [];
    this.#bytes = 0;
    this.#pump();
  }

  #pump() {
    const limit = this.#autoClaim && !this.#confirmed ? 1 : this.#maxInFlight;
    while (this.#inflight.size < limit && this.#queue.length > 0) {
      const batch = this.#queue.shift();
      batch.epoch = this.#epoch;
      batch.seq = this.#seq++;
      const run = this.#deliver(batch).finally(() => {
        this.#inflight.delete(batch.seq);
        for (const w of this.#settleWaiters.splice(0)) w();
        this.#pump();
        if (this.#idle()) for (const w of this.#idleWaiters.splice(0)) w();
      });
      this.#inflight.set(batch.seq, run);
    }
  }

  async #body(batch) {
    if (await this.#isJson()) return `[${batch.items.map(jsonText).join(',')}]`;
    const parts = batch.items.map((i) => (i instanceof Uint8Array ? i : encoder.encode(typeof i === 'string' ? i : String(i))));
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  #send({ body, seq, epoch, close }) {
    return call(appendStream, {
      url: this.#stream.url,
      headers: this.#stream.options?.headers,
      params: this.#stream.options?.params,
      retry: this.#stream.options?.retry,
      body,
      contentType: this.#stream.contentType,
      close,
      producer: { id: this.#id, epoch, seq },
    });
  }

  async #deliver(batch) {
    try {
      batch.body ??= await this.#body(batch);
      for (let attempt = 0; ; attempt++) {
        try {
          const res = await this.#send({ body: batch.body, seq: batch.seq, epoch: batch.epoch });
          this.#confirmed = true;
          if (res.offset) this.#lastOffset = res.offset;
          return;
        } catch (e) {
          if (e instanceof StaleEpochError && this.#autoClaim && attempt < 5) {
            // Fenced: claim the epoch after the server's and restart the sequence.
            if (batch.epoch >= this.#epoch) {
              this.#epoch = Math.max(this.#epoch, (e.currentEpoch ?? this.#epoch) + 1);
              this.#seq = 0;
              this.#confirmed = false;
            }
            batch.epoch = this.#epoch;
            batch.seq = this.#seq++;
            continue;
          }
          if (e instanceof SequenceGapError && attempt < 10 && !this.#error && !(e.expectedSeq >= batch.seq)) {
            // Pipelined batches arrived out of order: once the earlier ones have landed, resend.
            if (this.#hasEarlier(batch)) {
              while (this.#hasEarlier(batch)) await new Promise((r) => this.#settleWaiters.push(r));
            } else {
              await new Promise((r) => setTimeout(r, 10 * (attempt + 1)));
            }
            if (this.#error) throw e;
            continue;
          }
          throw e;
        }
      }
    } catch (e) {
      if (e instanceof StreamClosedError) this.#state = 'closed';
      this.#error ??= e;
      this.#queue.length = 0;
      try {
        this.#onError?.(e);
      } catch {}
    }
  }

  #hasEarlier(batch) {
    for (const seq of this.#inflight.keys()) if (seq < batch.seq) return true;
    return false;
  }
}

/**
 * Throws `INVALID_ARGUMENT` for a bad producer id or option, before anything is sent. (Synchronous,
 * so it runs in JS: the constructor may be called before the wasm has loaded.)
 */
export function checkProducerOptions(producerId, options = {}) {
  const fail = (m) => {
    throw new DurableStreamError(m, 'INVALID_ARGUMENT');
  };
  if (typeof producerId !== 'string' || producerId === '') fail('producerId must be a non-empty string');
  const isInt = (v, min) => Number.isSafeInteger(v) && v >= min;
  const rules = [
    ['epoch', 0, ' must be an integer from 0 to 2^53-1'],
    ['maxBatchBytes', 1, ' must be an integer > 0'],
    ['maxBatchItems', 1, ' must be an integer > 0'],
    ['maxInFlight', 1, ' must be an integer > 0'],
    ['lingerMs', 0, ' must be an integer >= 0'],
  ];
  for (const [key, min, rule] of rules) {
    const v = options[key];
    if (v !== undefined && v !== null && !isInt(v, min)) fail(key + rule);
  }
}

/** Throws `INVALID_ARGUMENT` for bad retry options (`maxRetries`, `initialDelayMs`, `maxDelayMs`, `multiplier`). */
export async function checkRetryOptions(options) {
  await init();
  try {
    validateRetryOptions(options);
  } catch (e) {
    throw toError(e);
  }
}

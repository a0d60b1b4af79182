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
import { DurableStreamError, READ_OPTIONS, cancelOnAbort, deferred, eitherSignal, fetchProblem, invalid, optionsProblem, pageUrl, shownUrl, signalProblem, sleep, unknownOption } from './settle.js';

let loader = null;
let ready = null;
/** What the last `init(input)` was given: a load retried after a failure loads it again. */
let source;

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
    if (input !== undefined) source = input;
    // A load that fails otherwise than over the network (a file that is not the wasm, or not
    // there) is a DurableStreamError too, as every error of the client.
    ready = Promise.resolve(loader(source)).then(
      () => undefined,
      (e) => {
        throw e instanceof DurableStreamError ? e : new DurableStreamError(`the client's wasm could not be loaded: ${e?.message ?? e}`, 'NOT_SUPPORTED', undefined, { cause: e });
      },
    );
    ready.catch(() => {
      ready = null;
    });
  }
  return ready;
}

// ---------------------------------------------------------------------------------------------
// Errors

export { DurableStreamError };
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

/**
 * Another producer holds the stream's writer lease (HTTP 423). `leaseExpiresAt` is when it ends
 * (RFC 3339, by the server's clock) and `retryAfterMs` how long to wait before trying again (the
 * server's `Retry-After`, which no client clock skews).
 */
export class LeaseHeldError extends DurableStreamError {
  constructor(message, status, details) {
    super(message, 'LEASE_HELD', status, details);
    this.name = 'LeaseHeldError';
  }
}

const DETAIL_KEYS = ['currentEpoch', 'expectedSeq', 'receivedSeq', 'finalOffset', 'leaseExpiresAt', 'closeCode', 'cause'];

/**
 * Throws INVALID_ARGUMENT for an option `known` does not list, a `url` that cannot be fetched
 * here, or a `signal` that is not one.
 */
function checkOptions(who, options, known) {
  const problem = optionsProblem(options, known);
  if (problem) throw invalid(`${who}: ${problem}`);
}

/** The options of a `DurableStream` (and of `DurableStream.create()`). */
const HANDLE_OPTIONS = 'url headers params retry signal fetch contentType ttlSeconds expiresAt closed channel forkedFrom forkOffset forkSubOffset body';

/** Throws INVALID_ARGUMENT for an option of a call that `known` does not list, or a bad `signal`. */
function callOptions(options, known) {
  const problem = unknownOption(options, known) ?? signalProblem(options?.signal);
  if (problem) throw invalid(problem);
}

/** Turns the wasm's coded errors (and host errors) into instances of the classes above. */
function toError(e, signal) {
  if (e instanceof DurableStreamError) return withReason(e, signal);
  if (!e || typeof e !== 'object' || typeof e.code !== 'string') {
    if (e && e.name === 'AbortError') return withReason(new DurableStreamError('the operation was cancelled', 'ABORTED'), signal);
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
    case 'LEASE_HELD':
      err = new LeaseHeldError(e.message, e.status, details);
      if (e.retryAfter > 0) err.retryAfterMs = e.retryAfter * 1e3;
      break;
    default:
      err = new DurableStreamError(e.message, e.code, e.status, details);
  }
  if (e.stack) err.stack = e.stack;
  return withReason(err, signal);
}

/** An ABORTED error caused by an aborted `signal` carries why it was aborted as `cause`. */
function withReason(err, signal) {
  if (err.code === 'ABORTED' && signal?.aborted && err.cause === undefined && signal.reason !== undefined) {
    err.cause = signal.reason;
  }
  return err;
}

/** The ABORTED error of work stopped by `signal` (its `reason` as `cause`), or by a cancel (no signal). */
function abortedError(message, signal) {
  return withReason(new DurableStreamError(message, 'ABORTED'), signal);
}

/**
 * Loads the wasm for a request made with `options`. A load the network failed (the entry module
 * says so with NETWORK_ERROR) is retried as a request is: with the `retry` backoff (or `retries`
 * times, when given: a live reader and a producer pass Infinity unless `maxRetries` is set), a
 * wait the `online` event ends early, `onRetry` told; `signal` stops it with ABORTED.
 */
async function load(options, retries) {
  const { retry, signal, onRetry } = options ?? {};
  const max = retry?.maxRetries ?? retries ?? 5;
  let delay = retry?.initialDelayMs > 0 ? retry.initialDelayMs : 100;
  for (let attempt = 0; ; attempt++) {
    if (signal?.aborted) throw abortedError('the operation was cancelled', signal);
    try {
      return await init();
    } catch (e) {
      if (e?.code !== 'NETWORK_ERROR' || !(attempt < max)) throw e;
    }
    onRetry?.();
    // Half jitter, as the wasm's backoff.
    await sleep(delay * (0.5 + Math.random() / 2), signal);
    delay = Math.min(delay * (retry?.multiplier >= 1 ? retry.multiplier : 2), retry?.maxDelayMs > 0 ? retry.maxDelayMs : 5000);
  }
}

async function call(fn, options) {
  try {
    await load(options);
    return await fn(options);
  } catch (e) {
    throw toError(e, options?.signal);
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
  /** A batch read after the last subscriber left, handed out by the next next(). */
  #held = null;
  #finished = deferred();
  /** Whether anyone asked for `finished`, which then hears of a failure. */
  #finishedAsked = false;
  #watching = false;
  /** Aborted by cancel(): ends a wait to load the wasm again. */
  #stop = new AbortController();
  /** The wasm failed to load and the handle waits to try again. */
  #loadRetrying = false;

  constructor(options) {
    if (!options || typeof options.url !== 'string' && !(options.url instanceof URL)) {
      throw invalid('stream(): url is required');
    }
    checkOptions('stream()', options, READ_OPTIONS);
    this.#options = { ...options, url: String(options.url) };
  }

  /**
   * Listens to the signal from the handle's first use (reading, or asking for `finished`): a
   * handle made and dropped unread must not stay reachable from a long-lived shared signal.
   */
  #watch() {
    if (this.#watching) return;
    this.#watching = true;
    // The handle itself, held weakly: a handle read partly and dropped is not kept by the signal.
    cancelOnAbort(this.#options.signal, this, this.#finished.promise);
  }

  /** Where the next read starts (pass it as `offset` to resume later). */
  get offset() {
    return this.#reader ? this.#reader.state().offset : (this.#options.offset ?? '-1');
  }
  /** The reader has everything the stream held at its last response. */
  get upToDate() {
    return this.#reader ? this.#reader.state().upToDate : false;
  }
  /** The stream is closed and the reader has reached its end. */
  get closed() {
    return this.#reader ? this.#reader.state().closed : false;
  }
  /** The last cursor the server sent (echoed on live requests for CDN collapsing). */
  get cursor() {
    return this.#reader?.state().cursor ?? undefined;
  }
  /** The HTTP status of the last response. */
  get status() {
    return this.#reader ? this.#reader.state().status : 0;
  }
  /**
   * A request or connection failed and the reader waits to try again (live readers retry
   * without limit): true from the failure until the next response or connection.
   */
  get retrying() {
    return this.#reader ? this.#reader.state().retrying : this.#loadRetrying;
  }
  /**
   * The stream's incarnation (`Stream-Incarnation`), once a response named it: save it with the
   * offset and pass both back, and a stream deleted and created again fails with STREAM_REPLACED.
   */
  get incarnation() {
    return this.#reader ? this.#reader.state().incarnation : this.#options.incarnation;
  }
  /** The stream's content type, once known. */
  get contentType() {
    return this.#reader?.state().contentType ?? undefined;
  }
  /** The transport in use: `catch-up`, `sse`, `long-poll` or `ws`. */
  get mode() {
    return this.#reader ? this.#reader.state().mode : 'catch-up';
  }
  /** The dynamic headers and params sent with the last request (for diagnostics). */
  get lastRequest() {
    const state = this.#reader?.state();
    return state ? { headers: state.headersSent, params: state.paramsSent } : { headers: {}, params: {} };
  }
  /** Settles when iteration ends: resolves when closed or cancelled, rejects on failure. */
  get finished() {
    this.#finishedAsked = true;
    this.#watch();
    return this.#finished.promise;
  }

  async #ensureReader() {
    // A live reader rides out an outage from its first request on, the wasm's load included.
    const { retry, live } = this.#options;
    try {
      await load({ retry, signal: this.#stop.signal, onRetry: () => (this.#loadRetrying = true) }, live === false ? 5 : Infinity);
    } finally {
      this.#loadRetrying = false;
    }
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
    this.#watch();
    // One request at a time: concurrent next() calls queue behind each other.
    const run = async () => {
      if (this.#held) {
        const value = this.#held;
        this.#held = null;
        return { done: false, value };
      }
      if (this.#error) throw this.#error;
      if (this.#cancelled) return { done: true, value: undefined };
      try {
        // Inside the try: a Reader that refuses its options (or a wasm that fails to load) must
        // settle `finished` too.
        const reader = await this.#ensureReader();
        const value = await reader.next();
        if (value === undefined) {
          this.#finished.resolve();
          return { done: true, value: undefined };
        }
        return { done: false, value };
      } catch (e) {
        const err = toError(e);
        if (this.#cancelled || err?.code === 'ABORTED') {
          this.#finished.resolve();
          return { done: true, value: undefined };
        }
        this.#fail(err);
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
   * Returns a function that unsubscribes; when the last subscriber leaves, the handle is cancelled
   * (the live request is aborted), so no batch is read for nobody. A read error goes to every
   * `onError` and rejects `finished`; so does a callback that throws, which also cancels the handle.
   */
  subscribe(callback, onError) {
    if (this.#cancelled && !this.#error) {
      // Nothing more will be read: say so rather than wait in silence.
      const e = abortedError('this handle was cancelled (its last subscriber left, or cancel() was called): open a new one from its offset', this.#options.signal);
      queueMicrotask(() => (onError ? onError(e) : console.warn('edgestream: subscribe() on a cancelled handle:', e.message)));
      return () => {};
    }
    const entry = { callback, onError };
    this.#subscribers.add(entry);
    this.#pump();
    return () => {
      if (!this.#subscribers.delete(entry) || this.#subscribers.size > 0) return;
      // Cancelled once the current task's microtasks have run, unless someone subscribed
      // again: an unsubscribe and subscribe in one go (React's StrictMode runs an effect's
      // cleanup and the effect again at once) keep the handle.
      queueMicrotask(() => {
        if (this.#subscribers.size === 0) this.cancel();
      });
    };
  }

  async #pump() {
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      while (this.#subscribers.size > 0) {
        let result;
        const failed = this.#error;
        try {
          result = await this.next();
        } catch (e) {
          // A new failure was reported as it happened (see #fail); an old one is rethrown to
          // whoever subscribed since.
          if (failed) this.#report(e);
          return;
        }
        if (result.done) return;
        if (this.#subscribers.size === 0) {
          // The last subscriber left while this batch was on its way: keep it for next().
          this.#held = result.value;
          return;
        }
        for (const s of [...this.#subscribers]) {
          if (!this.#subscribers.has(s)) continue;
          try {
            await s.callback(result.value);
          } catch (e) {
            // Like a throw in a for-await body, which ends the loop: the handle stops, and the
            // error is not lost (onError, or `finished` rejects).
            this.#fail(e);
            this.cancel();
            return;
          }
        }
      }
    } finally {
      this.#pumping = false;
    }
  }

  #report(e) {
    for (const s of [...this.#subscribers]) {
      try {
        s.onError?.(e);
      } catch {}
    }
  }

  /**
   * The handle has failed: every `onError` is told, then `finished` rejects with `e`, and later
   * next() calls rethrow it.
   */
  #fail(e) {
    if (this.#error) return;
    this.#error = e;
    // Subscribers alone, none of them with an onError, and nobody asked for `finished`: the
    // error would otherwise go unheard (an iterator's next() throws it to its caller instead).
    const unheard = this.#pumping && !this.#finishedAsked && ![...this.#subscribers].some((s) => s.onError);
    if (unheard) console.warn('edgestream: a subscribed handle failed (pass onError to subscribe(), or await `finished`):', e);
    this.#report(e);
    this.#finished.reject(e);
  }

  /** Stops reading and aborts the request in flight. */
  cancel() {
    this.#cancelled = true;
    this.#stop.abort();
    this.#reader?.cancel();
    this.#finished.resolve();
  }

  /**
   * Reads batches to the end of what a one-off read returns (caught up with `live: false`, or the
   * stream closed), passing each to `take`. A handle cancelled (or its signal aborted) first
   * rejects with ABORTED: what was read is not the stream's content, and must not pass for it.
   */
  async #collect(take) {
    for await (const batch of this.#whole()) take(batch);
  }

  /** The batches #collect() takes, ending with its ABORTED when the read did not complete. */
  async *#whole() {
    let complete = false;
    for (;;) {
      const { done, value } = await this.next();
      if (done) break;
      yield value;
      complete = value.closed || (value.upToDate && this.#options.live === false);
    }
    if (!complete && this.#cancelled) throw abortedError('the read was cancelled before it completed', this.#options.signal);
  }

  /**
   * The read as a ReadableStream of the chunks `take(batch)` returns for each batch, and the
   * last one `end()` returns, if any; batches are read only as chunks are asked for. It ends as
   * `items()` does (a read cancelled before it completed errors with ABORTED); cancelling it
   * cancels the handle.
   */
  #readable(take, end) {
    const batches = this.#whole();
    return iterable(
      new ReadableStream(
        {
          async pull(c) {
            for (;;) {
              const { done, value } = await batches.next();
              if (done) {
                const last = end?.();
                if (last) c.enqueue(last);
                return c.close();
              }
              const chunks = take(value);
              for (const chunk of chunks) c.enqueue(chunk);
              if (chunks.length > 0) return;
            }
          },
          cancel: () => this.cancel(),
        },
        { highWaterMark: 0 },
      ),
    );
  }

  /** The items of a JSON stream, one by one, as an async-iterable ReadableStream. */
  jsonStream() {
    return this.#readable((batch) => (batch.bytes ? this.#wrongKind('jsonStream()', 'is not JSON: use bodyStream() or textStream()') : batch.items));
  }

  /** The bytes of a stream that is not JSON, as an async-iterable ReadableStream of Uint8Array. */
  bodyStream() {
    return this.#readable((batch) => this.#chunks(batch, 'bodyStream()'));
  }

  /** Like `bodyStream()`, decoded as UTF-8 (a character split between batches comes out whole). */
  textStream() {
    const decoder = new TextDecoder();
    return this.#readable(
      (batch) => this.#chunks(batch, 'textStream()').map((bytes) => decoder.decode(bytes, { stream: true })).filter((text) => text),
      () => decoder.decode(),
    );
  }

  /** A batch's bytes as chunks (none when empty); INVALID_ARGUMENT on a JSON stream. */
  #chunks(batch, helper) {
    return batch.items ? this.#wrongKind(helper, 'is JSON: use jsonStream()') : batch.bytes.length > 0 ? [batch.bytes] : [];
  }

  /** Reads until caught up (or closed) and returns every item (JSON streams). */
  async items() {
    const all = [];
    await this.#collect((batch) => {
      if (batch.bytes) this.#wrongKind('items()', 'is not JSON: use bytes() or text()');
      // A loop, not push(...items): a batch can hold more messages than a call has arguments.
      if (batch.items) for (const item of batch.items) all.push(item);
    });
    return all;
  }

  /** Reads until caught up (or closed) and returns the bytes (non-JSON streams). */
  async bytes() {
    const parts = [];
    await this.#collect((batch) => {
      if (batch.items) this.#wrongKind('bytes() and text()', 'is JSON: use items()');
      if (batch.bytes) parts.push(batch.bytes);
    });
    return concat(parts);
  }

  /** A helper read a stream of the other kind: stop, rather than return it as empty. */
  #wrongKind(helper, why) {
    this.cancel();
    throw invalid(`${helper}: the stream ${why}`);
  }

  /** Like `bytes()`, decoded as UTF-8. */
  async text() {
    return new TextDecoder().decode(await this.bytes());
  }
}

/**
 * `stream`, made async iterable where the runtime's ReadableStream is not (Safari): `for await`
 * reads it, and a loop left early cancels it, as the native iterator does.
 */
function iterable(stream) {
  stream[Symbol.asyncIterator] ??= async function* () {
    const reader = stream.getReader();
    try {
      for (let r; !(r = await reader.read()).done; ) yield r.value;
    } finally {
      reader.cancel().catch(() => {});
    }
  };
  return stream;
}

// ---------------------------------------------------------------------------------------------
// Writing

const isJsonType = (ct) => typeof ct === 'string' && /^\s*application\/json\s*(;|$)/i.test(ct);
const encoder = new TextEncoder();

/** Encodes one value for a JSON stream: strings and bytes are taken as JSON text, the rest is stringified. */
function jsonText(value) {
  if (typeof value === 'string' || value instanceof ArrayBuffer || ArrayBuffer.isView(value)) {
    const text = typeof value === 'string' ? value : new TextDecoder().decode(value);
    // Text must be one JSON value: '1,2' would otherwise land as two messages once wrapped.
    try {
      JSON.parse(text);
    } catch {
      throw invalid('JSON text must be exactly one JSON value');
    }
    return text;
  }
  // JSON.stringify would write a Promise as {}: one passed by mistake for its value is refused.
  if (typeof value?.then === 'function') throw invalid('a Promise is not a JSON value: await it first');
  let text;
  try {
    text = JSON.stringify(value);
  } catch (e) {
    // A BigInt, a cycle, or a toJSON() that throws.
    throw invalid(`the value is not JSON: ${e.message}`);
  }
  if (text === undefined) throw invalid(`${typeof value} is not a JSON value`);
  return text;
}

/**
 * The bytes of a value for a stream that is not JSON: a string as UTF-8, a buffer or view as is.
 * Anything else is refused, or with `orJson` (the stream's kind not yet known) taken as JSON.
 */
function bytesOf(value, orJson) {
  if (typeof value === 'string') return encoder.encode(value);
  if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) return new Uint8Array(value.buffer ?? value, value.byteOffset, value.byteLength);
  if (orJson) return jsonText(value);
  throw invalid('strings or bytes only');
}

/** The UTF-8 length of a value as encodeFor() gives it (a string is sent as UTF-8). */
function byteLength(encoded) {
  if (typeof encoded !== 'string') return encoded.length;
  let n = encoded.length;
  for (let i = 0; i < encoded.length; i++) {
    const c = encoded.charCodeAt(i);
    if (c < 0x80) continue;
    // 2 bytes below U+0800; a surrogate pair (2 units) is 4; the rest, a lone surrogate (sent
    // as U+FFFD) included, 3.
    n += c < 0x800 ? 1 : 2;
    if (c >= 0xd800 && c < 0xdc00 && (encoded.charCodeAt(i + 1) & 0xfc00) === 0xdc00) i++;
  }
  return n;
}

/** A producer's value as appended, encoded for the stream's known kind (see `append()`). */
class Encoded {
  constructor(part) {
    this.part = part;
  }
}

/**
 * The size of a batch's body: its values' `bytes` and, for a JSON batch of `count` values, the
 * `[`, `,` and `]` around them (`maxBatchBytes` bounds the request as sent).
 */
const bodySize = (bytes, count, json) => (json ? bytes + count + 1 : bytes);

/**
 * `value` as a stream takes it: JSON text when `json`, bytes when not, and while the stream's
 * kind is unknown (`json` undefined) bytes, or JSON text for what cannot be bytes.
 */
const encodeFor = (json, value) => (json ? jsonText(value) : bytesOf(value, json === undefined));

/** `parts` (byte arrays) one after another, in one array. */
function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let n = 0;
  for (const p of parts) out.set(p, n), (n += p.length);
  return out;
}

/** `options` without the entries given as `undefined`. */
const defined = (options) => Object.fromEntries(Object.entries(options ?? {}).filter(([, v]) => v !== undefined));


/**
 * The path a fork's `Stream-Forked-From` names: `source` (a URL, or a URL relative to `url` as a
 * link is, such as `/v1/stream/a`) must be on the server of `url`. Its query and fragment are
 * not sent: the server names streams by path.
 */
function forkPath(source, url) {
  if (source === undefined || source === null) return undefined;
  if (!(typeof source === 'string' || source instanceof URL) || source === '') throw invalid('forkedFrom must be the source stream\'s URL or path');
  const base = new URL(url, pageUrl());
  let from;
  try {
    from = new URL(source, base);
  } catch {
    throw invalid(`forkedFrom ${JSON.stringify(shownUrl(source))} is not a URL or path`);
  }
  if (from.origin !== base.origin) throw invalid(`forkedFrom must be on the same server as url (${base.origin}), not ${from.origin}`);
  return from.pathname;
}

/** A stream at a URL: create, inspect, append to, close, delete, read. */
export class DurableStream {
  /**
   * @param {object} options `url`, `contentType`, `headers`, `params`, `retry`, `signal`
   */
  constructor(options) {
    if (!options || !options.url) throw invalid('DurableStream: url is required');
    checkOptions('DurableStream', options, HANDLE_OPTIONS);
    this.url = String(options.url);
    this.contentType = options.contentType;
    this.options = options;
  }

  #request(extra) {
    const { headers, params, retry, signal, fetch } = this.options;
    return { url: this.url, headers, params, retry, signal, fetch, ...extra };
  }

  /**
   * Calls `fn` with the handle's options and `extra`, stopped (ABORTED, the reason as `cause`) by
   * the handle's `signal` or the call's own `signal`, whichever aborts first.
   */
  async #call(fn, extra, signal) {
    return eitherSignal(this.options.signal, signal, (s) => call(fn, this.#request({ ...extra, signal: s })));
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

  /**
   * PUT. Options: `contentType`, `ttlSeconds`, `expiresAt`, `closed`, `channel`, `body`. `body` is the
   * initial content as the protocol reads a PUT body, not one message: on a JSON stream an array
   * is a list of messages (so a stream can be created with several, atomically), and any other
   * value is one message; strings and bytes are JSON text, read the same way.
   */
  async create(options = {}) {
    callOptions(options, HANDLE_OPTIONS);
    // What the handle was made with counts, as for every other call; `options` overrides it,
    // an expiry of either kind replacing the handle's. (Its `signal` is the call's own.)
    const given = defined(options);
    if (given.url !== undefined && String(given.url) !== this.url) throw invalid('create: url differs from the handle\'s (make a handle for that url)');
    const expiry = 'ttlSeconds' in given || 'expiresAt' in given ? { ttlSeconds: undefined, expiresAt: undefined } : {};
    options = { ...this.options, ...expiry, ...given };
    const contentType = options.contentType ?? this.contentType;
    let body = options.body;
    if (body !== undefined && isJsonType(contentType)) body = jsonText(body);
    const res = await this.#call(
      createStream,
      {
        contentType,
        ttlSeconds: options.ttlSeconds,
        expiresAt: options.expiresAt,
        closed: options.closed,
        channel: options.channel,
        forkedFrom: forkPath(options.forkedFrom, this.url),
        forkOffset: options.forkOffset,
        forkSubOffset: options.forkSubOffset,
        body,
        headers: options.headers,
        params: options.params,
        retry: options.retry,
        fetch: options.fetch,
      },
      given.signal,
    );
    this.contentType = res.contentType ?? contentType ?? this.contentType;
    return res;
  }

  /** HEAD: `{ offset, contentType, closed, ttlSeconds, expiresAt, etag }`. Options: `signal`. */
  async head(options = {}) {
    callOptions(options, 'signal');
    const res = await this.#call(headStream, {}, options.signal);
    if (res.contentType) this.contentType = res.contentType;
    return res;
  }

  async #type(signal) {
    if (this.contentType === undefined) await this.head({ signal });
    return this.contentType;
  }

  /**
   * Appends one message or chunk. JSON streams take any JSON value, an array included, as one
   * message (strings are taken as JSON text); other streams take strings (UTF-8) or bytes.
   * Options: `seq` (`Stream-Seq`), `signal`. Appends land in the order they were called (see
   * `#drain()`). An append stopped by its signal may still have landed: the request may have
   * reached the server before it was aborted.
   */
  async append(data, options = {}) {
    callOptions(options, 'seq contentType signal');
    return this.#enqueue({ ...options, body: data });
  }

  /** Closes the stream, optionally appending a last message (one, as `append()`) in the same request. */
  async close(options = {}) {
    callOptions(options, 'body contentType signal');
    const res = await this.#enqueue({ ...options, close: true });
    return { ...res, finalOffset: res.offset };
  }

  /** Appends and closes not yet sent, in call order. */
  #line = [];
  #sending = false;
  /** The most bytes appends sent together may take (see `#drain()`): 1 MiB, less once the server refused a batch. */
  #most = 1 << 20;

  /**
   * Puts an append (or close) in line. Its own `signal` takes it out of the line at once, or,
   * once sent alone, stops its request.
   */
  #enqueue(entry) {
    const { signal } = entry;
    const done = (entry.done = deferred());
    cancelOnAbort(
      signal,
      () => {
        this.#line = this.#line.filter((e) => e !== entry);
        done.reject(abortedError('the operation was cancelled', signal));
        entry.out?.();
      },
      done.promise,
    );
    if (!signal?.aborted) this.#line.push(entry), this.#drain();
    return done.promise;
  }

  /**
   * Sends the line one request at a time, so appends land in the order they were called. The
   * appends waiting while a request is out go together in the next one (a JSON array of their
   * messages, or their bytes one after another), up to 1 MiB, each resolving to its result. One
   * with `seq`, a close, and an empty one go alone, as does a value that cannot be sent (refused
   * as it would be alone), and one whose `contentType` option differs from the one before it
   * starts the next request. A request that fails rejects every append in it; one whose appends
   * have all been stopped by their own signals is stopped. A server that takes less than 1 MiB
   * at once refuses a batch (413) whose appends may each fit: its appends go back to the front of
   * the line, and batches take at most half as much from then on, down to one append a request.
   */
  async #drain() {
    if (this.#sending) return;
    this.#sending = true;
    for (let first, size; (first = this.#line.shift()); ) {
      const batch = [first];
      try {
        let { body, contentType, seq, close } = first;
        const none = close && body === undefined; // a close without a last message
        if (!none) contentType ??= await this.#type(first.signal);
        const json = isJsonType(contentType);
        const encode = (v) => {
          try {
            return encodeFor(json, v);
          } catch {} // Refused when its turn comes, alone.
        };
        const parts = [encode(body)];
        // The body's bytes with the commas between messages: at most #most, and 2 brackets.
        size = close || seq !== undefined ? 0 : parts[0] && byteLength(parts[0]);
        for (let next, part, more; size && (next = this.#line[batch.length - 1]) && !next.close && next.seq === undefined && next.contentType === first.contentType; size = more) {
          part = encode(next.body);
          if (!part?.length || (more = size + byteLength(part) + 1) > this.#most) break;
          parts.push(part);
          batch.push(next);
        }
        // Taken from the line at once: one shift() each costs a copy of the line when it is long.
        this.#line.splice(0, batch.length - 1);
        // The protocol takes a JSON array body as a batch of messages, so even one value is
        // wrapped: an array stays one message.
        if (json && !none) body = `[${batch[1] ? parts.join() : jsonText(body)}]`;
        else if (batch[1]) body = concat(parts);
        // Appends sent together are stopped by their own signals one by one (#enqueue); once
        // every one has been, none waits for the request, and it is stopped too, so that a
        // request that never answers does not hold up the line for ever.
        const all = new AbortController();
        for (const e of batch) e.out = () => batch.every((b) => b.signal?.aborted) && all.abort();
        const res = await this.#call(appendStream, { body, contentType, seq, close }, batch[1] ? all.signal : first.signal);
        for (const e of batch) e.done.resolve(res);
      } catch (err) {
        // Appends sent together and refused as too large go again (those not yet stopped by their
        // own signals), in at most half as many bytes; one refused alone is refused. (Not
        // unshift(...batch): a batch can hold more appends than a call takes arguments.)
        if (err.status === 413 && batch[1]) (this.#most = size / 2), (this.#line = batch.filter((e) => !e.signal?.aborted).concat(this.#line));
        else for (const e of batch) e.done.reject(err);
      }
    }
    this.#sending = false;
  }

  /** DELETE. Options: `signal`. */
  async delete(options = {}) {
    callOptions(options, 'signal');
    return this.#call(deleteStream, {}, options.signal);
  }

  /**
   * A WritableStream that appends each chunk written (one message on a JSON stream, as a
   * producer's `append()` takes it) through an IdempotentProducer made with `options`
   * (`producerId`, random when not given, and the producer's options). A write resolves once the
   * chunk is queued and no batch waits for a request (backpressure); `close()` resolves once
   * everything written is acknowledged (the stream stays open); `abort(reason)` cancels the
   * producer. A chunk the stream cannot take errors the stream there (the chunks written before
   * it are still sent), and so does a failure of the producer.
   */
  writable(options = {}) {
    let controller;
    const producer = this.#producer(options, (e) => controller?.error(e));
    return new WritableStream({
      start: (c) => {
        controller = c;
        // Cancelled at once, not once a write waiting for room (for the server) has settled; in a
        // microtask, as the stream must not be errored from inside its abort (Node asserts).
        c.signal?.addEventListener('abort', () => queueMicrotask(() => producer.cancel(c.signal.reason)));
      },
      write: (chunk) => {
        try {
          producer.append(chunk);
        } catch (e) {
          // The stream errors here, with `e`; the writes before this one resolved, so what they
          // queued is still sent: the producer is detached (flushed, then stopped), not cancelled.
          // A failure of that flush reaches onError.
          controller.error(e);
          producer.detach().catch(() => {});
          throw e;
        }
        return producer[ROOM]();
      },
      close: () => producer.detach(),
      abort: (reason) => producer.cancel(reason),
    });
  }

  /**
   * Appends every chunk of `source` (a ReadableStream, or an async or plain iterable) through an
   * IdempotentProducer, as `writable(options)` does, reading no faster than it sends; resolves
   * to `{ offset }` once all of it is acknowledged. A source that fails, or gives a value the
   * stream refuses, stops there: what it gave before is sent, then this rejects with its error. A
   * failure of the producer (its `signal` included: ABORTED) rejects with that error and cancels
   * the source.
   */
  async appendStream(source, options = {}) {
    const halted = deferred();
    const producer = this.#producer(options, halted.reject);
    let it;
    try {
      it = source?.getReader?.() ?? source?.[Symbol.asyncIterator]?.() ?? source?.[Symbol.iterator]?.();
      if (!it) throw invalid('appendStream(): source must be a ReadableStream or an iterable');
      for (let r; !(r = await Promise.race([halted.promise, it.read ? it.read() : it.next()])).done; ) {
        producer.append(r.value);
        await producer[ROOM]();
      }
    } catch (e) {
      // The source is told to stop (a stream is cancelled, an iterator returned), whatever stopped this.
      Promise.resolve()
        .then(() => (it.cancel ? it.cancel(e) : it.return?.()))
        .catch(() => {});
      // What came before is sent; if the producer failed (that is what stopped the loop), this
      // rejects with its error.
      await producer.detach();
      throw e;
    }
    await producer.detach();
    return { offset: producer.offset };
  }

  /**
   * A producer for writable() and appendStream(), whose failure `onError` hears too. Each call
   * makes a new instance, which claims an epoch of its own (autoClaim, unless told otherwise):
   * at the epoch of an earlier call with the same producerId, its batches would be taken for
   * that call's and not land.
   */
  #producer({ producerId, ...options }, onError) {
    return new IdempotentProducer(this, producerId ?? crypto.getRandomValues(new Uint32Array(2)).join('-'), {
      ...options,
      autoClaim: options.autoClaim ?? true,
      onError: (e) => {
        onError(e);
        options.onError?.(e);
      },
    });
  }

  /**
   * Follows this stream: see `stream()`. Its `headers`, `params`, `retry` and `signal` are the
   * reader's, unless `options` gives others (an option given as `undefined` is left out, as
   * everywhere).
   */
  stream(options = {}) {
    const { headers, params, retry, signal, fetch } = this.options;
    return stream({ url: this.url, headers, params, retry, signal, fetch, ...defined(options) });
  }
}

/** Claims in a row (without an acknowledged batch in between) before autoClaim gives up. */
const MAX_CLAIMS = 5;

/** The producer's method that writable() and appendStream() wait on: room for more (see there). */
const ROOM = Symbol();

/**
 * Exactly-once appends: each batch carries `(Producer-Id, Producer-Epoch, Producer-Seq)`, so a
 * retried batch is recognised as a duplicate, and a newer instance of the producer (a higher
 * epoch) fences older ones.
 *
 * A batch that fails for good fails the producer: the server expects that batch's seq next, so
 * no later batch could land. The error is kept and thrown by every later call.
 *
 * With `lease`, the producer is the stream's only appender: every batch takes or renews the
 * stream's writer lease, an idle producer renews it before half of it has passed, and `detach()`
 * gives it up. Others are refused (LeaseHeldError) until it runs out or is given up.
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
  /** How long a request waits for its response before it is sent again (see `#call()`). */
  #timeoutMs;
  /** The last attempt of a request failed, and it waits to be sent again. */
  #retrying = false;
  /** The batch whose requests probe an outage, and the `[n, go]` of those waiting for it (#send). */
  #prober = null;
  #waiting = [];
  #onError;
  /** The `fetch` option: the stream's own when not given. */
  #fetch;
  #json;
  /** The stream's content type and JSON-ness, learnt once (a HEAD when the stream does not say). */
  #format = null;
  /** `#format`'s value once it has come: batches are prepared (and sent) only then. */
  #kind = null;
  #learning = false;
  /** Values appended before the stream's kind was known that turned out not to fit it. */
  #refused = [];
  #items = [];
  #bytes = 0;
  #timer = null;
  /** Batches in append order, each numbered (`n`) once: seqs change when an epoch is claimed. */
  #batches = 0;
  #queue = [];
  #inflight = new Set();
  /** Batches refused for a stale epoch, held until the rest of their epoch settles (autoClaim). */
  #fenced = [];
  /** The highest epoch the server reported for the fenced batches. */
  #fencedAt = -1;
  #claims = 0;
  #confirmed = false;
  #error = null;
  /** flush() and close() callers: `{ mark, resolve }`, settled once the batches below `mark` are. */
  #sentWaiters = [];
  #settleWaiters = [];
  /** Callers of [ROOM](), waiting for the queue to empty. */
  #roomWaiters = [];
  #state = 'open';
  #closing = null;
  #lastOffset;
  /** The `lease` option (`{ ttlSeconds, wait }`), if any. */
  #lease;
  /** When the lease this producer holds ends; undefined when it holds none. */
  #leaseUntil;
  /** Whether it ever held the lease: having lost it, it fails rather than wait for it again. */
  #led = false;
  /** Ends a standby's wait for the lease early (set while it waits), and whether to stop. */
  #wake = null;
  #stopWaiting = false;
  #renewTimer;
  /** Aborted when the producer stops for good: ends its requests and backoffs at once. */
  #stop = new AbortController();
  /** Stops listening to the caller's signals. */
  #unlisten;

  /**
   * @param {DurableStream|string} stream the stream (or its URL)
   * @param {string} producerId stable id of this producer
   * @param {object} options `epoch` (0), `autoClaim` (false), `lingerMs` (5), `maxBatchBytes` (1 MiB),
   *   `maxBatchItems` (none), `maxInFlight` (5), `requestTimeoutMs` (60 s), `onError`, `json`,
   *   `lease: { ttlSeconds, wait }`, `signal` (as does the stream's own `signal`, aborting it
   *   fails the producer with ABORTED)
   */
  constructor(stream, producerId, options = {}) {
    if (typeof producerId !== 'string' || producerId === '') {
      throw invalid('producerId must be a non-empty string');
    }
    checkProducerOptions(producerId, options);
    this.#stream = typeof stream === 'string' || stream instanceof URL ? new DurableStream({ url: stream }) : stream;
    this.#id = producerId;
    this.#epoch = options.epoch ?? 0;
    this.#autoClaim = options.autoClaim ?? false;
    // Capped where timers overflow (a longer one would fire at once), as requestTimeoutMs is.
    this.#lingerMs = Math.min(options.lingerMs ?? 5, 2 ** 31 - 1);
    this.#maxBatchBytes = options.maxBatchBytes ?? 1024 * 1024;
    this.#maxBatchItems = options.maxBatchItems ?? Infinity;
    this.#maxInFlight = options.maxInFlight ?? 5;
    // Capped where timers overflow (a longer one would fire at once).
    this.#timeoutMs = Math.min(options.requestTimeoutMs ?? 60_000, 2 ** 31 - 1);
    this.#onError = options.onError;
    this.#fetch = options.fetch;
    this.#json = options.json;
    this.#lease = options.lease;
    this.#listen([options.signal, this.#stream.options?.signal]);
  }

  /** Fails the producer with ABORTED (the reason as `cause`) when one of `signals` aborts. */
  #listen(signals) {
    const ended = deferred();
    this.#unlisten = ended.resolve;
    for (const signal of signals) cancelOnAbort(signal, () => this.#abort(signal), ended.promise);
  }

  #abort(signal) {
    this.#halt('its signal aborted', signal.reason);
  }

  /**
   * Stops the producer now, as its `signal` would: requests in flight and retries end, what is
   * queued is dropped, and it fails with ABORTED (`reason` as `cause`). No-op once closed,
   * detached or failed.
   */
  cancel(reason) {
    this.#halt('cancel() was called', reason);
  }

  #halt(why, reason) {
    if (this.#error || this.#state === 'closed' || this.#state === 'detached') return;
    // Say what became of the values not acknowledged: a batch in flight may have landed (the
    // server may have stored it and its answer not come back yet); what was queued was not sent.
    const inflight = this.#inflight.size;
    const queued = this.#items.length + this.#queue.length + this.#fenced.length;
    let what = '';
    if (inflight) what += `; ${inflight === 1 ? 'the batch' : `the ${inflight} batches`} in flight may have been stored, or not`;
    if (queued) what += '; what was queued was not sent';
    this.#fail(new DurableStreamError(`the producer was stopped: ${why}${what}`, 'ABORTED', undefined, reason === undefined ? undefined : { cause: reason }));
    this.#wakeSent();
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
  /** When the writer lease this producer holds ends (RFC 3339), as last acknowledged. */
  get leaseExpiresAt() {
    return this.#leaseUntil;
  }
  /**
   * A request failed (no connection, no response in time, or a status such as 503) and waits to
   * be sent again: true from the failure until the next response (or the producer fails).
   */
  get retrying() {
    return this.#retrying;
  }
  /** Values appended and not yet in a batch (the one lingering for `lingerMs`). */
  get pendingCount() {
    return this.#items.length;
  }
  /** Batches not yet acknowledged: sent, or waiting for a request (of `maxInFlight`) or to be sent again. */
  get inFlightCount() {
    return this.#queue.length + this.#inflight.size + this.#fenced.length;
  }

  /**
   * Takes (or renews) the writer lease now, without appending data, after what is queued. With
   * `lease.wait`, waits until the lease is free. Resolves to when it ends.
   */
  async acquire() {
    if (!this.#lease || this.#state !== 'open') throw invalid('acquire() needs an open producer with a lease');
    this.#leaseOnly();
    await this.flush();
    return this.#leaseUntil;
  }

  /** Queues a batch without data, which takes, renews or (`release`) gives up the lease. */
  #leaseOnly(release) {
    // A failed producer sends nothing more: queued, the batch would never settle (nor would
    // the flush() that waits for it, in acquire() or detach()).
    if (this.#error) return;
    this.#cut();
    this.#queue.push({ n: this.#batches++, items: [], release });
    this.#pump();
  }

  /** Queues `data` for the next batch. Returns at once; `flush()` waits for delivery. */
  append(data) {
    if (this.#state === 'detached') throw invalid('producer is detached');
    if (this.#state !== 'open') {
      throw this.#error instanceof StreamClosedError ? this.#error : new StreamClosedError('producer is closed');
    }
    if (this.#error) throw this.#error;
    // When the stream's kind is known, refuse what it cannot take now, not at flush; before
    // that, a value that fits neither kind (a BigInt) is refused, and the rest is checked when
    // the kind is known (see #prepare).
    const json = this.#knownJson();
    const part = encodeFor(json, data);
    const size = byteLength(part);
    // A value that would take the batch past maxBatchBytes starts the next one: set to what the
    // server takes, two values that fit alone must not go out together and be refused (413).
    // Until the kind is known, the JSON framing is counted: a batch may be smaller, never over.
    const framed = json !== false;
    if (this.#items.length > 0 && bodySize(this.#bytes + size, this.#items.length + 1, framed) > this.#maxBatchBytes) this.#cut();
    // Once the kind is known, the value is sent as encoded now (and encoded once): a value
    // changed after append() could otherwise go out past maxBatchBytes, which counted it now.
    this.#items.push(json === undefined ? data : new Encoded(part));
    this.#bytes += size;
    if (bodySize(this.#bytes, this.#items.length, framed) >= this.#maxBatchBytes || this.#items.length >= this.#maxBatchItems) this.#cut();
    else if (this.#timer === null) this.#timer = setTimeout(() => this.#cut(), this.#lingerMs);
  }

  /**
   * Sends whatever is queued and waits until every batch is acknowledged that holds a value
   * appended before the call; values appended meanwhile are not waited for. Rejects with the
   * producer's error once it has failed: every caller, this time and every later time.
   */
  async flush() {
    this.#cut();
    await this.#whenSent();
    if (this.#error) throw this.#error;
    if (this.#refused.length > 0) {
      const refused = this.#refused.splice(0);
      const what = refused.length === 1 ? 'a value' : `${refused.length} values`;
      throw new DurableStreamError(
        `${what} appended before the stream's type was known did not fit it and was not sent: ${refused[0].message}`,
        'INVALID_ARGUMENT',
        undefined,
        { cause: refused[0] },
      );
    }
  }

  /** Whether the stream is JSON, where that is known without asking the server (else undefined). */
  #knownJson() {
    if (this.#json !== undefined && this.#json !== null) return this.#json;
    if (this.#kind) return this.#kind.json;
    const type = this.#stream.contentType;
    return type ? isJsonType(type) : undefined;
  }

  /**
   * Flushes, then closes the stream (with an optional last message). Idempotent: every call
   * returns the first call's promise. `append()` throws StreamClosedError from the first call on.
   */
  close(data) {
    if (!this.#closing && data !== undefined && this.#state === 'open' && !this.#error) {
      // As append() does: a last message the stream cannot take is refused now, and the
      // producer stays open.
      const json = this.#knownJson();
      if (json !== undefined) encodeFor(json, data);
    }
    this.#closing ??= this.#close(data);
    return this.#closing;
  }

  async #close(data) {
    if (this.#state === 'detached') throw invalid('producer is detached');
    this.#state = 'closing';
    try {
      await this.flush();
      if (data !== undefined) {
        // The kind was not known when close() was called: check the last message now.
        this.#kind ??= await this.#streamFormat();
        encodeFor(this.#kind.json, data);
        // Stopped while it learnt the kind: queued now, the close would never settle.
        if (this.#error) throw this.#error;
      }
    } catch (e) {
      // Nothing was closed: unless the producer failed, it stays open (close() may be called again).
      if (!this.#error) {
        this.#state = 'open';
        this.#closing = null;
      }
      throw e;
    }
    // The close goes through the same delivery as the batches, so autoClaim covers it too.
    const batch = { n: this.#batches++, close: true, items: data === undefined ? [] : [data] };
    this.#queue.push(batch);
    this.#pump();
    await this.#whenSent();
    clearInterval(this.#renewTimer);
    if (this.#error) throw this.#error;
    this.#state = 'closed';
    this.#unlisten();
    return { finalOffset: batch.result.offset, duplicate: batch.result.duplicate };
  }

  /**
   * Flushes and stops this producer without closing the stream, giving up its writer lease. A
   * standby stops waiting for the lease: what it holds fails with LeaseHeldError, and so does this.
   */
  async detach() {
    if (this.#closing) {
      await this.#closing;
      return;
    }
    this.#stopWaiting = true;
    this.#wake?.();
    try {
      if (this.#leaseUntil) this.#leaseOnly(true);
      await this.flush();
    } finally {
      clearInterval(this.#renewTimer);
      if (this.#state === 'open') this.#state = 'detached';
      this.#unlisten();
    }
  }

  /**
   * Every sixth of the lease, renews it if no batch was queued since the last look, so an idle
   * lease is renewed within a third of it.
   */
  #renewing() {
    let seen;
    this.#renewTimer ??= setInterval(() => {
      if (seen === this.#batches && this.#state === 'open' && this.#leaseUntil) this.#leaseOnly();
      seen = this.#batches;
    }, (this.#lease.ttlSeconds * 1000) / 6);
    // A lease alone does not keep a Node process running.
    this.#renewTimer.unref?.();
  }

  /** Whether every batch numbered below `mark` has settled: acknowledged, refused or failed. */
  #sent(mark) {
    const before = (b) => b.n < mark;
    return !this.#queue.some(before) && !this.#fenced.some(before) && ![...this.#inflight].some(before);
  }

  /** Settles once the batches queued so far have: later ones are not waited for. */
  #whenSent() {
    const mark = this.#batches;
    if (this.#sent(mark)) return Promise.resolve();
    return new Promise((resolve) => this.#sentWaiters.push({ mark, resolve }));
  }

  /** `{ contentType, json }` of the stream. Sends need the content type even when `json` is given. */
  #streamFormat() {
    this.#format ??= (async () => {
      // Sent as its batches are: retried through an outage, and ended by the producer's signal.
      const contentType = this.#stream.contentType ?? (await this.#call(headStream)).contentType;
      return { contentType, json: this.#json ?? isJsonType(contentType) };
    })();
    return this.#format;
  }

  #cut() {
    if (this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    if (this.#items.length === 0) return;
    this.#queue.push({ n: this.#batches++, items: this.#items, bytes: this.#bytes });
    this.#items = [];
    this.#bytes = 0;
    this.#pump();
  }

  /**
   * A backlog goes out in batches as large as `maxBatchBytes` and `maxBatchItems` allow: the
   * data batches queued right behind `batch`, none of them sent yet, join it. A lease-only
   * batch, a close, or a batch being sent again (its bytes are fixed) is left where it is.
   */
  #merge(batch) {
    const mergeable = (b) => b.bytes !== undefined && !b.prepared;
    if (!mergeable(batch)) return;
    while (this.#queue.length > 0 && mergeable(this.#queue[0])) {
      const next = this.#queue[0];
      if (bodySize(batch.bytes + next.bytes, batch.items.length + next.items.length, this.#kind?.json !== false) > this.#maxBatchBytes) break;
      if (batch.items.length + next.items.length > this.#maxBatchItems) break;
      this.#queue.shift();
      batch.items = batch.items.concat(next.items);
      batch.bytes += next.bytes;
    }
  }

  #pump() {
    if (this.#error) return;
    // Data batches are prepared, and values that do not fit refused, once the kind is known.
    if (!this.#kind && this.#queue.some((b) => b.items.length > 0)) {
      this.#learnKind();
      return;
    }
    if (this.#fenced.length > 0) {
      // Claim only once every batch of the old epoch has settled, then resend in append order.
      if (this.#inflight.size > 0) return;
      this.#claim();
    }
    // One batch at a time until the epoch is confirmed (autoClaim) and the lease is held, and
    // while the parts of a batch refused as too large are out (see #deliver).
    const probing = (this.#autoClaim && !this.#confirmed) || (this.#lease && !this.#leaseUntil);
    const limit = probing || [...this.#inflight].some((b) => b.d) ? 1 : this.#maxInFlight;
    while (this.#inflight.size < limit && this.#queue.length > 0) {
      const batch = this.#queue.shift();
      this.#merge(batch);
      if (!this.#prepare(batch)) continue;
      batch.epoch = this.#epoch;
      batch.seq = this.#seq++;
      this.#inflight.add(batch);
      this.#deliver(batch).finally(() => {
        this.#inflight.delete(batch);
        for (const w of this.#settleWaiters.splice(0)) w();
        this.#pump();
        this.#wakeSent();
      });
    }
    // Every queued batch may have been refused whole.
    this.#wakeSent();
  }

  /**
   * Settles once no batch waits for a request to go out in (every one of `maxInFlight` is busy),
   * or the producer has stopped: what writable() and appendStream() wait for before taking more.
   */
  [ROOM]() {
    if (this.#queue.length > 0 && !this.#error) return new Promise((resolve) => this.#roomWaiters.push(resolve));
  }

  #wakeSent() {
    if (this.#queue.length === 0 || this.#error) for (const w of this.#roomWaiters.splice(0)) w();
    const waiting = [];
    for (const w of this.#sentWaiters) {
      if (this.#sent(w.mark)) w.resolve();
      else waiting.push(w);
    }
    this.#sentWaiters = waiting;
  }

  /** Learns the stream's kind (a HEAD if the stream does not know it), then sends what is queued. */
  #learnKind() {
    if (this.#learning) return;
    this.#learning = true;
    this.#streamFormat()
      .then(
        (kind) => {
          this.#kind = kind;
        },
        (e) => this.#fail(e),
      )
      .finally(() => {
        this.#learning = false;
        this.#pump();
        this.#wakeSent();
      });
  }

  /** Fenced: take the epoch after the server's, restart the sequence, fenced batches first. */
  #claim() {
    const fenced = this.#fenced.splice(0).sort((a, b) => a.n - b.n);
    this.#epoch = Math.max(this.#epoch, this.#fencedAt) + 1;
    this.#fencedAt = -1;
    this.#seq = 0;
    this.#confirmed = false;
    this.#claims++;
    this.#queue.unshift(...fenced);
  }

  /**
   * The body and content type of a batch, prepared once (a resend must carry the same bytes),
   * once the stream's kind is known. A value appended before then that does not fit it is left
   * out and kept for flush() to report; the others are sent. False when none is left.
   */
  #prepare(batch) {
    if (batch.prepared) return true;
    batch.prepared = true;
    if (batch.items.length === 0) return true; // a lease-only batch, or a close without data
    const { contentType, json } = this.#kind;
    batch.contentType = contentType;
    const parts = [];
    for (const item of batch.items) {
      try {
        const part = item instanceof Encoded ? item.part : encodeFor(json, item);
        // An empty string or buffer appends nothing; sent, it would be a POST without a body (400).
        if (part.length > 0) parts.push(part);
      } catch (e) {
        this.#refused.push(e);
      }
    }
    // Nothing left to send: a close goes out without data, a batch of data not at all.
    if (parts.length === 0) return batch.close;
    this.#body(batch, parts);
    return true;
  }

  /** Sets a batch's body to `parts` (kept, to split the batch if it is refused as too large). */
  #body(batch, parts) {
    batch.parts = parts;
    batch.body = this.#kind.json ? `[${parts.join(',')}]` : concat(parts);
  }

  #send(batch) {
    // One request at a time probes an outage: the first batch whose request fails (a lost
    // connection, a 503) retries on its backoff; another that fails meanwhile waits until the
    // prober's request gets through (or fails for good), then they all go again, in order.
    const onRetry = () => {
      this.#retrying = true;
      batch.unsure = true; // an attempt may have landed
      if ((this.#prober ??= batch) !== batch) return new Promise((go) => this.#waiting.push([batch.n, go]));
    };
    return this.#call(appendStream, {
      body: batch.body,
      contentType: batch.contentType,
      close: batch.close,
      producer: { id: this.#id, epoch: batch.epoch, seq: batch.seq },
      leaseTtl: this.#lease ? (batch.release ? 0 : this.#lease.ttlSeconds) : undefined,
      onRetry,
    }).finally(() => this.#prober === batch && this.#release());
  }

  /** Ends the wait of the batches waiting for the prober (see #send), in order. */
  #release() {
    this.#prober = null;
    for (const [, go] of this.#waiting.sort((a, b) => a[0] - b[0]).splice(0)) go();
  }

  /**
   * A request of the producer's: the stream's URL, headers and params, with `#retry()` and the
   * producer's own signal. An attempt unanswered for `requestTimeoutMs` (a connection that died
   * without closing) is aborted and retried as a failed connection is, with the same
   * (id, epoch, seq): the server deduplicates it if it landed.
   */
  async #call(fn, extra) {
    const { headers, params, fetch } = this.#stream.options ?? {};
    const onRetry = () => (this.#retrying = true);
    try {
      return await call(fn, { url: this.#stream.url, headers, params, fetch: this.#fetch ?? fetch, retry: this.#retry(), signal: this.#stop.signal, timeoutMs: this.#timeoutMs, onRetry, ...extra });
    } finally {
      this.#retrying = false;
    }
  }

  /**
   * The stream's retry policy, without a limit on retries unless it sets one: a producer's
   * batches are deduplicated, so it can ride out an outage of any length, as a live reader
   * does, instead of failing after a few seconds and dropping what is queued.
   */
  #retry() {
    const retry = this.#stream.options?.retry;
    return retry?.maxRetries === undefined ? { ...retry, maxRetries: Infinity } : retry;
  }

  async #deliver(batch) {
    try {
      for (let attempt = 0; ; attempt++) {
        // Once the producer has failed, a later seq could only be refused: do not send it.
        if (this.#error) return;
        try {
          const result = (batch.result = await this.#send(batch));
          // With autoClaim, a duplicate of a request sent once is an older instance's batch at
          // this (epoch, seq) (a reloaded tab starts at epoch 0 again): this one's data did not
          // land. The epoch is taken, as a 403 would say, so the next one is claimed.
          if (this.#autoClaim && !result.replayed && (result.duplicate || result.producerSeq > batch.seq)) {
            throw new StaleEpochError(
              `producer epoch ${batch.epoch} is in use by an older instance of '${this.#id}'`,
              result.status,
              { currentEpoch: batch.epoch },
            );
          }
          this.#confirmed = true;
          this.#claims = 0;
          if (batch.result.offset) this.#lastOffset = batch.result.offset;
          if (batch.release || batch.result.leaseExpiresAt) {
            this.#leaseUntil = batch.result.leaseExpiresAt;
            this.#led ||= !batch.release;
            this.#renewing();
          }
          return;
        } catch (e) {
          if (this.#error) return; // the producer failed meanwhile; the first error stands
          if (e instanceof LeaseHeldError) {
            this.#leaseUntil = undefined;
            if (this.#lease?.wait && !this.#led && !this.#stopWaiting) {
              // Standby: try again (same seq: nothing landed) when the holder's lease ends, or
              // within 2 s, in case it gives the lease up before that; detach() ends the wait.
              await new Promise((r) => {
                this.#wake = r;
                setTimeout(r, Math.min(2000, e.retryAfterMs ?? 2000));
              });
              this.#wake = null;
              if (!this.#stopWaiting) {
                attempt = -1;
                continue;
              }
            }
          }
          if (e instanceof StaleEpochError && this.#autoClaim && this.#claims < MAX_CLAIMS) {
            this.#fencedAt = Math.max(this.#fencedAt, e.currentEpoch ?? batch.epoch);
            this.#fenced.push(batch);
            return;
          }
          // Refused as too large (413), so not stored, by its only attempt: nothing landed at its
          // (epoch, seq). Its first half goes again at that seq, the rest next (at the following
          // seq), and batches take at most half as many bytes. While later seqs are out, an
          // attempt of theirs that is still on its way would land once this seq is stored, before
          // the rest: with autoClaim the parts go to a new epoch, as when fenced, and the later
          // batches after them (at this epoch, nothing can land after this seq, never stored).
          const { parts } = batch;
          const later = [...this.#inflight].some((b) => b.seq > batch.seq);
          if (e.status === 413 && parts?.[1] && !batch.unsure && !batch.close && (!later || this.#autoClaim)) {
            this.#maxBatchBytes = byteLength(batch.body) >> 1;
            const rest = { n: batch.n + (batch.d = (batch.d ?? 1) / 2), d: batch.d, items: [], prepared: true, contentType: batch.contentType };
            this.#body(rest, parts.splice(parts.length >> 1));
            this.#body(batch, parts);
            if (later) {
              this.#fencedAt = Math.max(this.#fencedAt, batch.epoch);
              this.#fenced.push(batch, rest);
              return;
            }
            this.#queue.unshift(rest);
            attempt = -1;
            continue;
          }
          if (e instanceof SequenceGapError && attempt < 10 && !(e.expectedSeq >= batch.seq)) {
            // Pipelined batches arrived out of order: once the earlier ones have landed, resend.
            if (this.#hasEarlier(batch)) {
              while (this.#hasEarlier(batch)) await new Promise((r) => this.#settleWaiters.push(r));
            } else {
              await new Promise((r) => setTimeout(r, 10 * (attempt + 1)));
            }
            if (this.#error) return;
            if (this.#fenced.length > 0) {
              // An earlier batch was fenced, so this epoch is over for this one too.
              this.#fenced.push(batch);
              return;
            }
            continue;
          }
          throw e;
        }
      }
    } catch (e) {
      this.#fail(e);
    }
  }

  /** A batch failed for good: keep its error for every later call and drop what was queued. */
  #fail(e) {
    if (this.#error) return;
    this.#error = e;
    this.#unlisten();
    // Requests in flight and backoffs end now: nothing after this could land.
    this.#stop.abort(e);
    this.#release();
    this.#wake?.();
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    clearInterval(this.#renewTimer);
    this.#items = [];
    this.#bytes = 0;
    this.#queue.length = 0;
    this.#fenced.length = 0;
    try {
      this.#onError?.(e);
    } catch {}
  }

  #hasEarlier(batch) {
    for (const other of this.#inflight) if (other.n < batch.n) return true;
    return false;
  }
}

/**
 * Throws `INVALID_ARGUMENT` for a bad producer id or option, before anything is sent. (Synchronous,
 * so it runs in JS: the constructor may be called before the wasm has loaded.)
 */
export function checkProducerOptions(producerId, options = {}) {
  const fail = (m) => {
    throw invalid(m);
  };
  if (typeof producerId !== 'string' || producerId === '') fail('producerId must be a non-empty string');
  // Sent as the Producer-Id header: fetch sends other characters as Latin-1 bytes (which the
  // server refuses as not UTF-8) or refuses them, and HTTP trims spaces at either end.
  if (!/^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/.test(producerId)) {
    fail(`producerId ${JSON.stringify(producerId)} must be printable ASCII, without spaces at either end (it is sent as a header)`);
  }
  const unknown = unknownOption(options, 'epoch autoClaim lingerMs maxBatchBytes maxBatchItems maxInFlight requestTimeoutMs json onError signal fetch lease');
  if (unknown) fail(unknown);
  const isInt = (v, min) => Number.isSafeInteger(v) && v >= min;
  const rules = [
    ['epoch', 0, ' must be an integer from 0 to 2^53-1'],
    ['maxBatchBytes', 1, ' must be an integer > 0'],
    ['maxBatchItems', 1, ' must be an integer > 0'],
    ['maxInFlight', 1, ' must be an integer > 0'],
    ['lingerMs', 0, ' must be an integer >= 0'],
    ['requestTimeoutMs', 1, ' must be an integer > 0'],
  ];
  for (const [key, min, rule] of rules) {
    const v = options[key];
    if (v !== undefined && v !== null && !isInt(v, min)) fail(key + rule);
  }
  const signal = signalProblem(options.signal) ?? fetchProblem(options.fetch);
  if (signal) fail(signal);
  const ttl = options.lease?.ttlSeconds;
  if (options.lease != null && !(isInt(ttl, 1) && ttl <= 86400)) fail('lease.ttlSeconds must be an integer from 1 to 86400');
}

/** Throws `INVALID_ARGUMENT` for bad retry options (`maxRetries`, `initialDelayMs`, `maxDelayMs`, `multiplier`). */
export async function checkRetryOptions(options) {
  try {
    await load();
    validateRetryOptions(options);
  } catch (e) {
    throw toError(e);
  }
}

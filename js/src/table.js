// Live keyed tables: a JSON stream of State Protocol change messages (insert, update, upsert,
// delete of a value at a type and key) kept materialized in memory while it is followed, and
// resumable from a saved snapshot (offset and rows) instead of being read again from the start.
// The message format is the Durable Streams State Protocol's, so tables interoperate with
// `@durable-streams/state` writers and readers.
import { DurableStreamError, stream } from './core.js';
import { READ_OPTIONS, cancelOnAbort, deferred, invalid, optionsProblem, shownUrl } from './settle.js';

const OPERATIONS = new Set(['insert', 'update', 'upsert', 'delete']);
const CONTROLS = new Set(['snapshot-start', 'snapshot-end', 'reset']);
const SNAPSHOT_VERSION = 1;

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const nonEmpty = (v) => typeof v === 'string' && v.length > 0;

/**
 * Sorts one message: `{ change }`, `{ control }`, or `{ invalid: reason }`. A change names a
 * non-empty `type` and `key` and an `operation`, and carries a `value` unless it is a delete.
 */
function classify(message) {
  if (!isObject(message) || !isObject(message.headers)) return { invalid: 'not a State Protocol message' };
  const { headers } = message;
  // A message with an operation is a change, even with a control too, as @durable-streams/state
  // reads it (so a stray `control: 'reset'` beside one drops no rows here that it keeps there).
  if (headers.operation === undefined && headers.control !== undefined) {
    return CONTROLS.has(headers.control)
      ? { control: headers.control }
      : { invalid: `unknown control ${JSON.stringify(headers.control)}` };
  }
  if (!OPERATIONS.has(headers.operation)) return { invalid: `unknown operation ${JSON.stringify(headers.operation)}` };
  if (!nonEmpty(message.type) || !nonEmpty(message.key)) return { invalid: 'type and key must be non-empty strings' };
  if (headers.operation !== 'delete' && !('value' in message)) return { invalid: `${headers.operation} without a value` };
  return { change: message };
}

/** Checks a snapshot's shape; returns an error message, or null when it can be restored. */
function snapshotProblem(snapshot) {
  if (!isObject(snapshot)) return 'a snapshot is an object';
  if (snapshot.version !== SNAPSHOT_VERSION) return `unknown snapshot version ${JSON.stringify(snapshot.version)}`;
  if (!nonEmpty(snapshot.offset)) return 'a snapshot needs its offset';
  if (!Array.isArray(snapshot.rows)) return 'a snapshot needs its rows';
  if (snapshot.incarnation !== undefined && !nonEmpty(snapshot.incarnation)) return "a snapshot's incarnation is a string";
  for (const row of snapshot.rows) {
    if (!Array.isArray(row) || row.length !== 3 || !nonEmpty(row[0]) || !nonEmpty(row[1])) {
      return 'each snapshot row is [type, key, value]';
    }
  }
  return null;
}

/**
 * A table of values by `type` and `key`, materialized from a JSON stream of change messages and
 * kept current while the stream is followed. It starts reading when created.
 */
export class KeyedTable {
  #rows = new Map();
  #size = 0;
  #offset;
  /** The stream's incarnation the rows come from, when its server names one. */
  #incarnation;
  #restored = false;
  #upToDate = false;
  #closed = false;
  #cancelled = false;
  #handle = null;
  #streamOptions;
  #store;
  #saveEveryMs;
  #lastSave = 0;
  /** A save put off by `saveEveryMs`, to come once it has passed. */
  #saveTimer = null;
  #savedOffset;
  /** How many times the table started over: a save begun before then saved another stream. */
  #startedOver = 0;
  /** The store's save running, if one is: one at a time. */
  #saving = null;
  /** A save was asked for while one ran: it saves the rows as they are once that one ends. */
  #dirty = false;
  #skipInvalid;
  #listeners = new Set();
  /** The error that ended the table, for listeners that subscribe after it. */
  #error;
  #signal;
  #ready = deferred();
  #finished = deferred();
  /** Whether a failure would be heard: `finished` was asked for, or ready() (while pending). */
  #finishedAsked = false;
  #readyAsked = false;
  #readyDone = false;
  /** Resolves on `cancel()`: a store's load that never settles does not hold the table. */
  #stopped = deferred();

  constructor(options) {
    if (!options || (typeof options.url !== 'string' && !(options.url instanceof URL))) {
      throw invalid('table(): url is required');
    }
    const { from, store, saveEveryMs = 1000, onInvalid = 'error', offset, incarnation, json, signal, ...streamOptions } = options;
    const problem = optionsProblem(options, `${READ_OPTIONS} from store saveEveryMs onInvalid`);
    if (problem) throw invalid(`table(): ${problem}`);
    if (onInvalid !== 'error' && onInvalid !== 'skip') throw invalid("table(): onInvalid is 'error' or 'skip'");
    if (store !== undefined && (typeof store?.load !== 'function' || typeof store?.save !== 'function')) {
      throw invalid('table(): store needs load() and save()');
    }
    if (!Number.isFinite(saveEveryMs) || saveEveryMs < 0) throw invalid('table(): saveEveryMs must be >= 0');
    if (from !== undefined) {
      const problem = snapshotProblem(from);
      if (problem) throw invalid(`table(): ${problem}`);
      this.#restore(from);
    } else {
      this.#offset = offset ?? '-1';
      // The stream `offset` was saved from: another one at the URL starts the table over.
      this.#incarnation = incarnation;
    }
    this.#streamOptions = { ...streamOptions, url: String(options.url) };
    this.#store = store;
    this.#saveEveryMs = saveEveryMs;
    this.#skipInvalid = onInvalid === 'skip';
    // The table cancels its reader itself: the signal is not passed down.
    this.#signal = signal;
    cancelOnAbort(signal, () => this.cancel(), this.#finished.promise);
    this.#run();
  }

  /** The offset the table's rows are current to: save it with `snapshot()`. */
  get offset() {
    return this.#offset;
  }
  /** The table holds everything the stream held at its last response. */
  get upToDate() {
    return this.#upToDate;
  }
  /** The stream is closed and the table holds all of it. */
  get closed() {
    return this.#closed;
  }
  /** The transport in use: `catch-up`, `sse`, `long-poll` or `ws`. */
  get mode() {
    return this.#handle?.mode ?? 'catch-up';
  }
  /** The HTTP status of the last response (0 before the first). */
  get status() {
    return this.#handle?.status ?? 0;
  }
  /** A request or connection failed and the table waits to try again, as on a stream handle. */
  get retrying() {
    return this.#handle?.retrying ?? false;
  }
  /** How many rows the table holds, over all types. */
  get size() {
    return this.#size;
  }
  /** Resolves once the table first holds everything the stream held; rejects if it fails first. */
  ready() {
    this.#readyAsked = true;
    return this.#ready.promise;
  }
  /**
   * Settles when reading ends: resolves when the stream is closed or the table cancelled, and
   * rejects when it fails (a read error, an invalid message, a listener without `onError` that threw).
   */
  get finished() {
    this.#finishedAsked = true;
    return this.#finished.promise;
  }

  get(type, key) {
    return this.#rows.get(type)?.get(key);
  }
  has(type, key) {
    return this.#rows.get(type)?.has(key) ?? false;
  }
  /** The types that have rows. */
  types() {
    return [...this.#rows.keys()];
  }
  /** `[key, value]` pairs of one type, in the order the keys were added (a key deleted and written again comes last). */
  entries(type) {
    return (this.#rows.get(type) ?? new Map()).entries();
  }
  keys(type) {
    return (this.#rows.get(type) ?? new Map()).keys();
  }
  values(type) {
    return (this.#rows.get(type) ?? new Map()).values();
  }
  /** Rows of one type. */
  count(type) {
    return this.#rows.get(type)?.size ?? 0;
  }

  /**
   * The rows and the offset they are current to, as plain JSON: pass it back as `from` (or let
   * a `store` keep it) and a later table reads only what was appended since.
   */
  snapshot() {
    const rows = [];
    for (const [type, byKey] of this.#rows) for (const [key, value] of byKey) rows.push([type, key, value]);
    const snapshot = { version: SNAPSHOT_VERSION, offset: this.#offset, rows };
    if (this.#incarnation) snapshot.incarnation = this.#incarnation;
    return snapshot;
  }

  /**
   * Calls `listener(update)` after each batch is applied, with the batch's `changes`, whether
   * it began with a `reset`, and the new `offset`, `upToDate` and `closed`. Each call is awaited
   * before the next batch is read. `onError` gets the error that ends the table, if one does,
   * and errors the listener throws (the listener stays subscribed and the table reads on). A
   * listener without `onError` that throws fails the table with its error, once every listener
   * has had that update. Returns a function that unsubscribes.
   */
  subscribe(listener, onError) {
    // Too late to hear it happen: told at once, as a stream handle tells its late subscribers.
    if (this.#error) queueMicrotask(() => onError?.(this.#error.e));
    const entry = { listener, onError };
    this.#listeners.add(entry);
    return () => this.#listeners.delete(entry);
  }

  /**
   * Stops reading (the rows stay readable), saving a last snapshot to the store first; without
   * waiting for a listener still running.
   */
  cancel() {
    if (this.#cancelled) return;
    this.#cancelled = true;
    this.#stopped.resolve();
    this.#handle?.cancel();
  }

  #restore(snapshot) {
    this.#clear();
    for (const [type, key, value] of snapshot.rows) this.#set(type, key, value);
    this.#offset = snapshot.offset;
    this.#incarnation = snapshot.incarnation;
    this.#savedOffset = snapshot.offset;
    this.#restored = true;
  }

  #clear() {
    this.#rows.clear();
    this.#size = 0;
  }

  #set(type, key, value) {
    let byKey = this.#rows.get(type);
    if (!byKey) this.#rows.set(type, (byKey = new Map()));
    if (!byKey.has(key)) this.#size++;
    byKey.set(key, value);
  }

  /** Whether the key was there to delete. */
  #delete(type, key) {
    const byKey = this.#rows.get(type);
    if (!byKey?.delete(key)) return false;
    this.#size--;
    if (byKey.size === 0) this.#rows.delete(type);
    return true;
  }

  async #run() {
    try {
      if (this.#store && !this.#restored) {
        let saved;
        try {
          saved = await Promise.race([this.#store.load(), this.#stopped.promise]);
        } catch (e) {
          // A cache that cannot be read (storage blocked, a database lost): read the stream
          // from the start, as without one. After a turn, so that listeners are subscribed.
          await null;
          this.#tell(e);
        }
        if (saved !== undefined && saved !== null && snapshotProblem(saved) === null) this.#restore(saved);
      }
      for (;;) {
        try {
          await this.#follow();
          break;
        } catch (e) {
          // The stream was deleted and created again (its server says so, or a restored offset
          // is past its end): start over from the beginning rather than keep rows that are not
          // the stream's. Offsets are byte positions the new stream reuses.
          const replaced = e?.code === 'STREAM_REPLACED' || (this.#restored && e?.code === 'INVALID_OFFSET');
          if (!replaced || this.#cancelled) throw e;
          this.#restored = false;
          this.#clear();
          this.#offset = '-1';
          this.#incarnation = undefined;
          // What the store holds is the old stream's, even at an offset the new one reaches.
          this.#savedOffset = undefined;
          this.#startedOver++;
          // As the reset update says: the rows are gone, and the table reads from the start.
          this.#upToDate = false;
          this.#closed = false;
          await this.#notify({ changes: [], reset: true, offset: '-1', upToDate: false, closed: false });
        }
      }
      // A store that never settles (a hung IndexedDB) holds `finished` only until `cancel()`:
      // cancelled, the table hands its last snapshot to the store and does not wait.
      await Promise.race([this.#save(true), this.#stopped.promise]);
      if (this.#cancelled && !this.#upToDate && !this.#closed) {
        const err = new DurableStreamError('the table was cancelled before it caught up', 'ABORTED');
        // Stopped by its signal: why, as every ABORTED error made from a signal says.
        if (this.#signal?.aborted && this.#signal.reason !== undefined) err.cause = this.#signal.reason;
        this.#ready.reject(err);
      }
      this.#ready.resolve();
      this.#finished.resolve();
    } catch (e) {
      this.#error = { e };
      clearTimeout(this.#saveTimer);
      this.#saveTimer = null;
      // Nobody would hear of it (ready() heard only if it had not resolved): say so, as a
      // stream handle does, rather than stop following without a trace.
      if (!this.#finishedAsked && !(this.#readyAsked && !this.#readyDone) && ![...this.#listeners].some((l) => l.onError)) {
        console.warn('edgestream: a table failed (pass onError to subscribe(), or await `finished`):', e);
      }
      this.#ready.reject(e);
      this.#finished.reject(e);
      // Every listener hears of it, as on a stream handle: one whose onError throws keeps it
      // from none of the others, and leaves no rejection of this (unawaited) run unhandled.
      for (const { onError } of [...this.#listeners]) {
        try {
          onError?.(e);
        } catch {}
      }
    }
  }

  async #follow() {
    if (this.#cancelled) return;
    // With the incarnation the rows come from, the reader refuses (STREAM_REPLACED) to go on
    // from their offset in another stream at the same URL.
    this.#handle = stream({ ...this.#streamOptions, offset: this.#offset, incarnation: this.#incarnation });
    if (this.#cancelled) this.#handle.cancel();
    let first = true;
    for await (const batch of this.#handle) {
      if (first && !Array.isArray(batch.items)) {
        this.#handle.cancel();
        throw new DurableStreamError(`${shownUrl(this.#streamOptions.url)} is not a JSON stream`, 'PARSE_ERROR');
      }
      first = false;
      this.#restored = false;
      this.#incarnation = batch.incarnation;
      const update = this.#apply(batch);
      // Cancelled, the table does not wait for a listener that never settles (the rows are
      // already whole, and saved below).
      await Promise.race([this.#notify(update), this.#stopped.promise]);
      if (this.#upToDate) {
        this.#readyDone = true;
        this.#ready.resolve();
      }
      // Not awaited: a slow store does not hold the reader.
      this.#save(false);
    }
  }

  /** Applies a whole batch, or nothing of it when a message is invalid and not skipped. */
  #apply(batch) {
    const sorted = batch.items.map(classify);
    const bad = sorted.findIndex((m) => m.invalid);
    if (bad !== -1) {
      const e = new DurableStreamError(
        `message ${bad + 1} of the batch before ${batch.offset}: ${sorted[bad].invalid}`,
        'PARSE_ERROR',
      );
      if (!this.#skipInvalid) {
        this.#handle.cancel();
        throw e;
      }
      // Skipped, not silently: `onError` (or the console) hears of the first in each batch.
      this.#tell(e, 'skipped');
    }
    let changes = [];
    let reset = false;
    for (const { change, control } of sorted) {
      if (control === 'reset') {
        this.#clear();
        changes = [];
        reset = true;
      } else if (change) {
        const { type, key, value, headers } = change;
        const previous = this.get(type, key);
        if (headers.operation === 'delete') {
          // A delete of a key the table does not hold changes nothing, so it is not a change.
          if (!this.#delete(type, key)) continue;
        } else this.#set(type, key, value);
        changes.push({ type, key, operation: headers.operation, value: headers.operation === 'delete' ? undefined : value, previous, headers });
      }
    }
    this.#offset = batch.offset;
    this.#upToDate = batch.upToDate;
    this.#closed = batch.closed;
    return { changes, reset, offset: batch.offset, upToDate: batch.upToDate, closed: batch.closed };
  }

  /**
   * Hands `update` to every listener. A listener's error goes to its `onError`; with none, every
   * listener still gets this update, and then the error fails the table (as a stream handle's
   * subscriber error does): an error no one handles is neither lost nor thrown where no one can
   * catch it (an uncaught exception ends a Node process).
   */
  async #notify(update) {
    let unhandled = null;
    for (const entry of [...this.#listeners]) {
      // One unsubscribed by another listener during this update is not called, as on an EventTarget.
      if (!this.#listeners.has(entry)) continue;
      const { listener, onError } = entry;
      try {
        await listener(update);
      } catch (e) {
        try {
          if (!onError) throw e;
          onError(e);
        } catch (e) {
          // Unhandled (no onError, or one that threw too): the other listeners still get the update.
          unhandled ??= { error: e };
        }
      }
    }
    if (unhandled) throw unhandled.error;
  }

  /**
   * Saves to the store when the offset moved and `saveEveryMs` has passed (or always, `final`).
   * Within `saveEveryMs` of the last save, it saves once that has passed, so the end of a burst
   * is saved too, not only when the next change comes.
   */
  #save(final) {
    // `-1` and `now` are no positions in the stream: a later table would resume from them.
    if (!this.#store || this.#offset === this.#savedOffset || this.#offset === '-1' || this.#offset === 'now') return;
    const now = Date.now();
    if (!final && now - this.#lastSave < this.#saveEveryMs) {
      if (this.#saveTimer === null) {
        this.#saveTimer = setTimeout(() => {
          this.#saveTimer = null;
          if (!this.#cancelled) this.#save(false);
        }, this.#lastSave + this.#saveEveryMs - now);
        // A pending save alone does not keep a Node process running.
        this.#saveTimer.unref?.();
      }
      return;
    }
    clearTimeout(this.#saveTimer);
    this.#saveTimer = null;
    this.#lastSave = now;
    this.#dirty = true;
    return (this.#saving ??= this.#drain());
  }

  /**
   * Saves one snapshot at a time, so an older one never lands after a newer one: a save asked
   * for while one runs saves the rows as they are when that one has ended.
   */
  async #drain() {
    while (this.#dirty) {
      this.#dirty = false;
      const snapshot = this.snapshot();
      // (Never on the first turn: `#save` checked it.)
      if (snapshot.offset === this.#savedOffset) continue;
      const startedOver = this.#startedOver;
      try {
        await this.#store.save(snapshot);
        // Saved rows of the stream before a start-over are not the rows at this offset now.
        if (startedOver === this.#startedOver) this.#savedOffset = snapshot.offset;
      } catch (e) {
        // The store is a cache: a full localStorage must not stop the table. It tries again at
        // the next save.
        this.#tell(e);
        // Not done yet when save() throws at once: `#save` has yet to keep this in `#saving`.
        await null;
      }
    }
    this.#saving = null;
  }

  /** Tells every `onError` (or the console, with none) of a failure the table reads on after. */
  #tell(e, what = 'the store failed') {
    const subscribed = [...this.#listeners].filter((l) => l.onError);
    for (const { onError } of subscribed) {
      try {
        onError(e);
      } catch (thrown) {
        queueMicrotask(() => {
          throw thrown;
        });
      }
    }
    if (subscribed.length === 0) console.warn(`edgestream table: ${what}:`, e);
  }
}

/** Follows a JSON stream of change messages as a live table: see `KeyedTable`. */
export function table(options) {
  return new KeyedTable(options);
}

/**
 * A store for `table({ store })` in a Web Storage object (`localStorage`, `sessionStorage`, or
 * anything with `getItem`/`setItem`), under `key`. A value that does not parse is ignored.
 */
export function storageStore(storage, key) {
  if (typeof storage?.getItem !== 'function' || typeof storage?.setItem !== 'function') {
    throw invalid('storageStore(): storage needs getItem() and setItem()');
  }
  if (!nonEmpty(key)) throw invalid('storageStore(): key must be a non-empty string');
  return {
    load() {
      const text = storage.getItem(key);
      if (text === null || text === undefined) return undefined;
      try {
        return JSON.parse(text);
      } catch {
        return undefined;
      }
    },
    save(snapshot) {
      storage.setItem(key, JSON.stringify(snapshot));
    },
  };
}

function changeMessage(operation, type, key, value, headers) {
  if (!nonEmpty(type) || !nonEmpty(key)) throw invalid(`change.${operation}(): type and key must be non-empty strings`);
  if (headers !== undefined && !isObject(headers)) throw invalid(`change.${operation}(): headers must be an object`);
  if (headers?.control !== undefined) throw invalid(`change.${operation}(): a change has no control header`);
  if (operation !== 'delete' && value === undefined) throw invalid(`change.${operation}(): value is required`);
  const message = { type, key, value, headers: { ...headers, operation } };
  if (operation === 'delete' && value === undefined) message.value = null;
  return message;
}

/**
 * Builds State Protocol messages to append (with `DurableStream.append` or an
 * `IdempotentProducer`): `change.insert('user', 'u1', { name: 'Ada' })`. `headers` may add a
 * `txid` or `timestamp`.
 */
export const change = Object.freeze({
  insert: (type, key, value, headers) => changeMessage('insert', type, key, value, headers),
  update: (type, key, value, headers) => changeMessage('update', type, key, value, headers),
  upsert: (type, key, value, headers) => changeMessage('upsert', type, key, value, headers),
  delete: (type, key, headers) => changeMessage('delete', type, key, undefined, headers),
  /** Tells every table reading the stream to drop its rows (a new snapshot follows). */
  reset: () => ({ headers: { control: 'reset' } }),
});

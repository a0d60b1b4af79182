// Promise and AbortSignal plumbing shared by stream handles (core.js) and tables (table.js), and
// the client's error class, which both raise.

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

/** The error of an argument or option the client cannot take. */
export const invalid = (message) => new DurableStreamError(message, 'INVALID_ARGUMENT');

/** A promise with its `resolve` and `reject`; its rejection is never reported as unhandled. */
export function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {});
  return { promise, resolve, reject };
}

/**
 * Calls `owner.cancel()` when `signal` aborts (at once if it has), and lets go of the signal once
 * `finished` settles: a long-lived signal shared by many reads would otherwise keep every ended
 * one (and its wasm Reader) reachable. The listener holds `owner` weakly, and is removed when
 * `owner` is collected: a handle dropped before it finished is not kept alive by the signal.
 * (`owner` may also be the function to call, held strongly.)
 */
export function cancelOnAbort(signal, owner, finished) {
  if (!signal) return;
  // Held strongly where there is no WeakRef (workerd before compatibility date 2025-05-05).
  const weak = typeof owner !== 'function' && (dropped ? new WeakRef(owner) : held(owner));
  const cancel = weak ? () => weak.deref()?.cancel() : owner;
  if (signal.aborted) return cancel();
  signal.addEventListener('abort', cancel, { once: true });
  const stop = () => signal.removeEventListener('abort', cancel);
  if (weak) dropped?.register(owner, stop);
  finished.finally(stop).catch(() => {});
}

/**
 * A stand-in for a WeakRef that holds `owner` strongly. Made out here: a closure over `owner`
 * inside cancelOnAbort would put it in the context that function's listener keeps, so the signal
 * would hold every owner strongly, WeakRef or not.
 */
const held = (owner) => ({ deref: () => owner });

/** Removes the abort listeners of owners collected unfinished. */
const dropped = typeof FinalizationRegistry == 'function' && typeof WeakRef == 'function' ? new FinalizationRegistry((stop) => stop()) : null;

/**
 * Resolves after `ms` (capped where timers overflow), at once when `signal` aborts, or when the
 * network comes back (a page's or worker's `online`), as the wasm's retry waits do.
 */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const g = typeof globalThis.addEventListener === 'function' ? globalThis : null;
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      g?.removeEventListener('online', done);
      resolve();
    };
    const timer = setTimeout(done, Math.min(ms, 2 ** 31 - 1));
    signal?.addEventListener('abort', done, { once: true });
    g?.addEventListener('online', done, { once: true });
  });
}

/** Why `signal` (an option) cannot be listened to, or null: an AbortSignal, or one that behaves as one. */
export function signalProblem(signal) {
  if (signal === undefined || signal === null) return null;
  const ok = typeof signal === 'object' && typeof signal.aborted === 'boolean' && typeof signal.addEventListener === 'function';
  return ok ? null : 'signal must be an AbortSignal';
}

/**
 * Why `options` cannot be taken, or null: it names an option (given, not `undefined`) that `known`
 * (names separated by spaces) does not list. Ignored, an option would do nothing without a word:
 * a misspelt one, or another client's (`backoffOptions`) kept when moving an app over.
 */
export function unknownOption(options, known, prefix = '') {
  for (const key of Object.keys(options ?? {})) {
    if (options[key] !== undefined && !known.split(' ').includes(key)) return `unknown option ${prefix}${key} (known: ${known})`;
  }
  return null;
}

/** The options of a reader (`stream()`), which a table takes too. */
export const READ_OPTIONS = 'url headers params retry signal fetch offset incarnation live json pauseWhenHidden';

/**
 * Why a reader's, a table's or a handle's `options` cannot be taken, or null: an option `known`
 * does not list (in `retry` too), a `url` that cannot be fetched here, a `signal` or `fetch` that
 * is not one.
 */
export function optionsProblem(options, known) {
  return (
    unknownOption(options, known) ??
    unknownOption(options.retry, 'maxRetries initialDelayMs maxDelayMs multiplier', 'retry.') ??
    urlProblem(String(options.url)) ??
    signalProblem(options.signal) ??
    fetchProblem(options.fetch)
  );
}

/** Why `fetch` (an option) cannot be called, or null. */
export const fetchProblem = (f) => (f == null || typeof f == 'function' ? null : 'fetch must be a function');

/**
 * Why `url` cannot be fetched, or null. Without a page (Node, Deno without --location), there is
 * nothing to resolve a relative URL against: fetch() would fail every retry. A URL with
 * credentials (`user:password@`) fetch() refuses, in an error that shows them.
 */
export function urlProblem(url) {
  const base = pageUrl();
  try {
    const { username, password } = new URL(url, base);
    return username || password ? 'url must not hold credentials (user:password@): give them in headers' : null;
  } catch {
    url = JSON.stringify(shownUrl(url));
    return base === undefined ? `url must be absolute here (there is no page to resolve ${url} against)` : `url ${url} is not a URL`;
  }
}

/** `url` as an error message shows it: the values of parameters named like credentials hidden (as the wasm's messages do). */
export const shownUrl = (url) => String(url).replace(/([?&][^=&#]*(?:token|key|secret|pass|sig|auth|cred|jwt|sess)[^=&#]*=)[^&#]*/gi, '$1***');

/** The page's URL, which relative URLs are resolved against; undefined without a page. */
export function pageUrl() {
  try {
    return typeof location === 'undefined' ? undefined : location.href;
  } catch {
    return undefined; // Deno's location getter throws unless started with --location
  }
}

/**
 * Runs `fn(signal)` with a signal that aborts, with its reason, when `a` or `b` does (either
 * may be absent), and stops listening to both once `fn`'s promise settles: a long-lived signal
 * shared by many calls must not keep every ended one reachable.
 */
export async function eitherSignal(a, b, fn) {
  if (!a || !b || a === b) return fn(a ?? b);
  const both = new AbortController();
  const stops = [a, b].map((s) => [s, () => both.abort(s.reason)]);
  for (const [s, stop] of stops) s.aborted ? stop() : s.addEventListener('abort', stop, { once: true });
  try {
    return await fn(both.signal);
  } finally {
    for (const [s, stop] of stops) s.removeEventListener('abort', stop);
  }
}

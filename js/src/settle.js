// Promise and AbortSignal plumbing shared by stream handles (core.js) and tables (table.js).

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
 * Calls `cancel` when `signal` aborts (at once if it has), and lets go of the signal once
 * `finished` settles: a long-lived signal shared by many reads would otherwise keep every ended
 * one (and its wasm Reader) reachable.
 */
export function cancelOnAbort(signal, cancel, finished) {
  if (!signal) return;
  if (signal.aborted) {
    cancel();
    return;
  }
  signal.addEventListener('abort', cancel, { once: true });
  finished.finally(() => signal.removeEventListener('abort', cancel)).catch(() => {});
}

// A Wasm trap: what a bug that panicked would do. The runtime keeps the isolate, and the
// instance is rebuilt before the next call into it: wasm-bindgen's glue marks it terminated as
// the trap leaves Wasm, and worker-build's handler, told of the trap by the runtime, marks it
// broken for its entrypoints and object proxies (logging `Critical`). scripts/build.mjs replaces
// worker-build's default export with a plain `fetch` object (`plainEdgeEntrypoint`) and runs
// Rust futures' tasks as promise reactions (`promiseTaskQueue`), and both must keep that
// recovery: a trap in a task run as a promise reaction reaches the runtime as an unhandled
// rejection, not as an `error` event, so the handler must hear of those too. The server runs
// with FAULT_MARKER, so a path with the marker traps where it asks (worker/src/fault.rs,
// `trap_if_asked`): `trap` at the edge in the request's first poll, `trap-await` at the edge in
// a task run after an await, `trap-object` in the stream's object, after an await, on a HEAD.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';

const MARKER = 'faulty';

let server: Awaited<ReturnType<typeof startServer>>;

beforeAll(async () => {
  server = await startServer({ vars: { FAULT_MARKER: MARKER, LONG_POLL_TIMEOUT_MS: '1000' } });
});

afterAll(async () => {
  await server?.stop();
});

const url = (path: string) => `${server.baseUrl}/v1/stream/${path}`;
/** A request after a trap: answered, or failed within 10 s, not left hanging. */
const call = (path: string, init: RequestInit = {}) => fetch(url(path), { ...init, signal: AbortSignal.timeout(10_000) });
const text = { 'content-type': 'text/plain' };
const unique = (what: string) => `${what}-${process.pid}-${Date.now()}`;

/**
 * The trapping request: the Worker gives it no answer of its own. At the edge the runtime ends
 * it; a request whose object trapped is not ended (nor is the edge's call to the object), so
 * with `answered` false the client gives up on it, as the npm client gives up on a silent
 * connection.
 */
async function trap(path: string, method = 'GET', answered = true) {
  try {
    const res = await fetch(url(path), { method, signal: AbortSignal.timeout(answered ? 10_000 : 2_000) });
    await res.arrayBuffer();
    // workerd answers for a handler that can never answer.
    expect(res.status).toBeGreaterThanOrEqual(500);
  } catch (e) {
    // Or drops the connection; never a hang past the timeout.
    if (answered) expect((e as Error).name).not.toBe('TimeoutError');
  }
}

/**
 * How many times the glue has marked the instance broken so far: it logs `Critical` then (the
 * server logs warnings and errors only, so not the `Reinitializing` of the rebuild after it).
 */
const marks = () => server.log().split('Critical').length - 1;

/**
 * Traps three times with `trapOnce`, and after each checks that the instance was marked broken
 * and that each request after the trap is answered in full: appends, a read, a HEAD (unless `head`
 * is false: on the object's trap stream a HEAD is the trap) and a long-poll at the tail, each
 * through the edge's wasm and the stream's object.
 */
async function survives(path: string, trapOnce: () => Promise<void>, head = true) {
  // A stream whose path has the marker is answered 503 while its first call to the registry
  // fails, and its retry finds it made (200).
  let created = await call(path, { method: 'PUT', headers: text });
  if (created.status === 503 && path.includes(MARKER)) {
    created = await call(path, { method: 'PUT', headers: text });
    expect(created.status).toBe(200);
  } else expect(created.status).toBe(201);
  let expected = '';
  for (let round = 0; round < 3; round++) {
    const before = marks();
    await trapOnce();
    for (let i = 0; i < 5; i++) {
      const piece = `r${round}m${i};`;
      const res = await call(path, { method: 'POST', headers: text, body: piece });
      expect(res.status).toBe(204);
      expected += piece;
    }
    const read = await call(`${path}?offset=-1`);
    expect(read.status).toBe(200);
    expect(await read.text()).toBe(expected);
    let tail = read.headers.get('stream-next-offset')!;
    if (head) {
      const res = await call(path, { method: 'HEAD' });
      expect(res.status).toBe(200);
      expect(res.headers.get('stream-next-offset')).toBe(tail);
      tail = res.headers.get('stream-next-offset')!;
    }
    const poll = await call(`${path}?offset=${tail}&live=long-poll`);
    expect(poll.status).toBe(204);
    await poll.arrayBuffer();
    // The runtime reported the trap and the glue marked the instance, which the next request
    // rebuilt: the same server (not a fresh isolate) answered throughout. Its log may trail its
    // answers a little.
    const deadline = Date.now() + 5_000;
    while (marks() <= before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(marks()).toBeGreaterThan(before);
  }
}

describe('a Wasm trap', () => {
  it('at the edge, in the first poll of its request, leaves the Worker serving', async () => {
    await survives(unique('trap-after'), () => trap(unique(`${MARKER}-trap`)));
  });

  it('at the edge, in a task run after an await, leaves the Worker serving', async () => {
    await survives(unique('await-after'), () => trap(unique(`${MARKER}-trap-await`)));
  });

  it("in a stream's object, in a task run after an await, leaves that stream and the Worker serving", async () => {
    // Objects run in the edge's isolate and share its Wasm instance.
    const path = unique(`${MARKER}-trap-object`);
    await survives(path, () => trap(path, 'HEAD', false), false);
  });
});

// A Wasm trap at the edge: what a bug that panicked would do. The runtime keeps the isolate;
// worker-build's glue marks the instance broken, and the next request rebuilds it before it
// runs. scripts/build.mjs replaces worker-build's default export with a plain `fetch` object
// (`plainEdgeEntrypoint`), which must keep that recovery. The server runs with FAULT_MARKER, so
// a path with the marker and `trap` traps the edge (worker/src/fault.rs, `trap_if_asked`).
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
const text = { 'content-type': 'text/plain' };

/** The trapping request: the Worker gives it no answer of its own. */
async function trap() {
  try {
    const res = await fetch(url(`${MARKER}-trap-${Date.now()}`), { signal: AbortSignal.timeout(10_000) });
    await res.arrayBuffer();
    // workerd answers for a handler that can never answer.
    expect(res.status).toBeGreaterThanOrEqual(500);
  } catch (e) {
    // Or drops the connection; never a hang past the timeout.
    expect((e as Error).name).not.toBe('TimeoutError');
  }
}

describe('a Wasm trap at the edge', () => {
  it('leaves the Worker serving: each request after one is answered in full', async () => {
    const path = `trap-after-${process.pid}-${Date.now()}`;
    expect((await fetch(url(path), { method: 'PUT', headers: text })).status).toBe(201);
    let expected = '';
    for (let round = 0; round < 3; round++) {
      await trap();
      // Appends, a read, a HEAD and a long-poll at the tail, each through the edge's wasm.
      for (let i = 0; i < 5; i++) {
        const piece = `r${round}m${i};`;
        const res = await fetch(url(path), { method: 'POST', headers: text, body: piece });
        expect(res.status).toBe(204);
        expected += piece;
      }
      const read = await fetch(url(`${path}?offset=-1`));
      expect(read.status).toBe(200);
      expect(await read.text()).toBe(expected);
      const head = await fetch(url(path), { method: 'HEAD' });
      expect(head.status).toBe(200);
      const tail = head.headers.get('stream-next-offset')!;
      const poll = await fetch(url(`${path}?offset=${tail}&live=long-poll`));
      expect(poll.status).toBe(204);
      await poll.arrayBuffer();
    }
    // The runtime reported the trap, and the glue rebuilt the instance (not a fresh isolate:
    // the same server answered throughout).
    expect(server.log()).toContain('Critical');
  });
});

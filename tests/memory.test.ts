// Readers that disconnect must not leave memory behind in the Worker's isolate. A client that
// goes away cancels its request, and workerd then runs none of that request's callbacks again,
// so whatever a follower registered (socket listeners, timers, promise callbacks) is only freed
// if nothing outside the request keeps it. Heap counts come from snapshots of the isolate,
// taken through wrangler dev's inspector after a full collection.
import http from 'node:http';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'undici';
import { startServer } from '../scripts/dev-server.mjs';
import { heapCounts, inspect } from '../scripts/inspector.mjs';

// SSE responses end after 1 s, so followers of cancelled requests are given up 11 s after they
// start (ABANDON_AFTER_MS in worker/src/edge/live.rs).
const SSE_MS = 1000;
const ABANDONED_AFTER_MS = SSE_MS + 10_000;
let server: Awaited<ReturnType<typeof startServer>>;
let session: Awaited<ReturnType<typeof inspect>>;
const S = `/v1/stream/memory-${Date.now().toString(36)}`;
/** A stream of three catch-up pages (PAGE_BYTES, 4 MiB, in worker/src/object/mod.rs). */
const BIG = `${S}-big`;
const agent = new http.Agent({ keepAlive: false });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  server = await startServer({ inspector: true, vars: { SSE_CONNECTION_MS: String(SSE_MS) } });
  session = await inspect(server.inspectorPort);
  await session.call('Runtime.enable');
  await fetch(`${server.baseUrl}${S}`, { method: 'PUT', headers: { 'content-type': 'application/json' } });
  await fetch(`${server.baseUrl}${S}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"n":0}' });
  await fetch(`${server.baseUrl}${BIG}`, { method: 'PUT', headers: { 'content-type': 'text/plain' } });
  const mib = 'x'.repeat(1 << 20);
  for (let i = 0; i < 10; i++) {
    const res = await fetch(`${server.baseUrl}${BIG}`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: mib });
    expect(res.status).toBe(204);
  }
});

afterAll(async () => {
  session?.close();
  await server?.stop();
});

/** `n` readers that follow the stream live until it has answered them, then hang up. */
async function abandon(n: number, kind: 'sse' | 'ws') {
  const hangUps: (() => void)[] = [];
  await Promise.all(
    Array.from({ length: n }, () =>
      new Promise<void>((resolve, reject) => {
        if (kind === 'ws') {
          const ws = new WebSocket(`${server.baseUrl.replace('http', 'ws')}${S}?offset=-1&live=ws`);
          ws.addEventListener('message', () => resolve(), { once: true });
          ws.addEventListener('error', () => reject(new Error('socket failed')));
          hangUps.push(() => ws.close());
        } else {
          const req = http.get(`${server.baseUrl}${S}?offset=-1&live=sse`, { agent }, (res) => {
            res.once('data', () => resolve());
            res.on('error', () => {});
          });
          req.on('error', () => {});
          hangUps.push(() => req.destroy());
        }
      }),
    ),
  );
  for (const hangUp of hangUps) hangUp();
}

/** `n` SSE readers that follow the stream until the server ends their responses (SSE_MS). */
async function readToEnd(n: number) {
  await Promise.all(
    Array.from({ length: n }, () =>
      new Promise<void>((resolve, reject) => {
        const req = http.get(`${server.baseUrl}${S}?offset=-1&live=sse`, { agent }, (res) => {
          res.resume();
          res.on('end', () => resolve());
          res.on('error', reject);
        });
        req.on('error', reject);
      }),
    ),
  );
}

/**
 * `n` SSE readers of the large stream, straight to the Worker's own socket (wrangler dev's proxy
 * does not pass a client's hang-up on), that take the start of its catch-up, stop reading while
 * the edge waits for them to take the next page, and reset their connections well before the
 * response's deadline.
 */
async function abandonCatchUp(n: number) {
  const { hostname, port, host } = new URL(await server.workerUrl());
  const readers = await Promise.all(
    Array.from({ length: n }, () =>
      new Promise<ReturnType<typeof connect>>((resolve, reject) => {
        const socket = connect(Number(port), hostname);
        socket.on('error', () => {});
        socket.once('connect', () => socket.write(`GET ${BIG}?offset=-1&live=sse HTTP/1.1\r\nHost: ${host}\r\n\r\n`));
        let got = 0;
        socket.on('data', (chunk: Buffer) => {
          got += chunk.length;
          if (got < 65_536) return;
          socket.pause();
          resolve(socket);
        });
        setTimeout(() => reject(new Error('no catch-up page')), 5_000);
      }),
    ),
  );
  await sleep(200);
  for (const socket of readers) socket.resetAndDestroy();
  await sleep(1_000);
}

/** Heap counts once every follower started so far has been given up and collected. */
async function settled() {
  await sleep(ABANDONED_AFTER_MS + 500);
  // Starting a follower is what gives up the stale ones.
  await abandon(1, 'sse');
  await sleep(500);
  return heapCounts(session);
}

describe('readers that hang up', () => {
  it('leave next to nothing behind: 600 cancelled SSE and WebSocket followers', { timeout: 120_000 }, async () => {
    // A first round pays for what is created once (compiled code, the object's state).
    await abandon(50, 'sse');
    await abandon(10, 'ws');
    const before = await settled();
    const rounds = 3;
    for (let i = 0; i < rounds; i++) {
      await abandon(150, 'sse');
      await abandon(50, 'ws');
    }
    const after = await settled();
    const readers = rounds * 200;
    const perReader = (key: 'closures' | 'contexts' | 'objects') => (after[key] - before[key]) / readers;
    console.log(`memory: per cancelled reader ${perReader('closures').toFixed(2)} closures, ${perReader('contexts').toFixed(2)} contexts, ${perReader('objects').toFixed(2)} objects, ${((after.usedBytes - before.usedBytes) / readers).toFixed(0)} heap bytes`);
    // An SSE follower creates about ten closures. While its socket listeners, deadline timer
    // and body watch were `forget`-ed, all ten stayed for the life of the isolate: 7.5 closures,
    // 3.8 contexts and 1.3 KB of heap per reader in this mix. Two more per SSE reader stayed
    // after that (1.5 per reader here): the body watch, made with `Closure::once_into_js`,
    // which keeps itself in wasm-bindgen's table until it is called.
    expect(perReader('closures')).toBeLessThan(0.3);
    expect(perReader('contexts')).toBeLessThan(0.3);
    expect((after.usedBytes - before.usedBytes) / readers).toBeLessThan(1000);
  });

  it('SSE responses that end as they should leave nothing behind', { timeout: 120_000 }, async () => {
    // Each live SSE response watches its body for the reader going away. That watch was made
    // with `Closure::once_into_js`, which wasm-bindgen frees only when it is called: a response
    // that ended at its deadline (or whose reader hung up) never calls it, so each kept its
    // function and table slot for the life of the isolate: 2 closures, a context and about
    // 500 bytes of heap per response, which every SSE reconnection added to.
    await readToEnd(20);
    const before = await heapCounts(session);
    const rounds = 3;
    for (let i = 0; i < rounds; i++) await readToEnd(100);
    const after = await heapCounts(session);
    const responses = rounds * 100;
    const perResponse = (key: 'closures' | 'contexts' | 'objects') => (after[key] - before[key]) / responses;
    console.log(`memory: per SSE response that ended ${perResponse('closures').toFixed(2)} closures, ${perResponse('contexts').toFixed(2)} contexts, ${perResponse('objects').toFixed(2)} objects, ${((after.usedBytes - before.usedBytes) / responses).toFixed(0)} heap bytes`);
    expect(perResponse('closures')).toBeLessThan(0.3);
    expect(perResponse('contexts')).toBeLessThan(0.3);
  });

  it('readers that hang up during catch-up leave nothing behind', { timeout: 120_000 }, async () => {
    // Each waited for its reader to take a page when its client went away. The runtime then runs
    // no timer or I/O callback of the request again, so its catch-up waited for good: the task,
    // its promises' callbacks and the page queued for the reader (about 4 MiB) stayed for the
    // life of the isolate. The request's abort now fails that wait, and the task ends.
    await abandonCatchUp(8);
    await sleep(1_000);
    const before = await heapCounts(session);
    const rounds = 4;
    for (let i = 0; i < rounds; i++) await abandonCatchUp(16);
    const readers = rounds * 16;
    // The runtime takes the resets in its own time (on a loaded machine, past a second for a
    // few of them), so the counts are taken again while they still fall: a catch-up that never
    // ends keeps its closures however long this waits.
    let after = await heapCounts(session);
    for (let waited = 0; waited < 10_000 && (after.closures - before.closures) / readers >= 0.3; waited += 1_000) {
      await sleep(1_000);
      after = await heapCounts(session);
    }
    const perReader = (key: 'closures' | 'contexts' | 'objects') => (after[key] - before[key]) / readers;
    const bytes = (after.usedBytes - before.usedBytes) / readers;
    console.log(`memory: per reader that hung up during catch-up ${perReader('closures').toFixed(2)} closures, ${perReader('contexts').toFixed(2)} contexts, ${perReader('objects').toFixed(2)} objects, ${bytes.toFixed(0)} heap bytes`);
    expect(perReader('closures')).toBeLessThan(0.3);
    expect(perReader('contexts')).toBeLessThan(0.3);
    expect(bytes).toBeLessThan(10_000);
  });
});

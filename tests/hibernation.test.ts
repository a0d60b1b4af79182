// Open readers must not keep a stream's Durable Object awake: the edge holds SSE and long-poll
// responses, and the object holds only hibernatable sockets (the edge's internal ones, and
// WebSocket clients' own), so between appends the runtime may evict it (workerd does after
// about 10 s without a request) and billing stops. The object marks the response of the request
// that started it with `Server-Timing: cold-start`, which is how this test sees an eviction
// from outside.
import { afterAll, beforeAll, expect, test } from 'vitest';
import { WebSocket } from 'undici';
import { startServer } from '../scripts/dev-server.mjs';

let server: Awaited<ReturnType<typeof startServer>>;
const url = (name: string) => `${server.baseUrl}/v1/stream/hibernation/${name}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const cold = (res: Response) => (res.headers.get('server-timing') ?? '').includes('cold-start');

/** Longer than workerd's eviction delay for an object with no request in flight. */
const IDLE_MS = 15_000;

beforeAll(async () => {
  // Defaults for the live timeouts (long-polls 30 s, SSE 60 s): readers outlast the idle time.
  server = await startServer();
});

afterAll(async () => {
  await server?.stop();
});

/** Resolves once `check()` holds, polling; fails after `ms`. */
async function until(check: () => boolean, what: string, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** An SSE reader that collects the text of its data events. */
function sseReader(streamUrl: string, signal: AbortSignal) {
  const reader = { data: [] as string[], controls: 0, failed: undefined as unknown };
  (async () => {
    const res = await fetch(`${streamUrl}?offset=-1&live=sse`, { signal });
    expect(res.status).toBe(200);
    const decoder = new TextDecoder();
    let buffered = '';
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buffered += decoder.decode(chunk, { stream: true });
      let end;
      while ((end = buffered.indexOf('\n\n')) >= 0) {
        const lines = buffered.slice(0, end).split('\n');
        buffered = buffered.slice(end + 2);
        const data = lines.filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n');
        if (lines[0] === 'event: data') reader.data.push(data);
        if (lines[0] === 'event: control') reader.controls++;
      }
    }
  })().catch((e) => {
    if (!signal.aborted) reader.failed = e;
  });
  return reader;
}

/** A WebSocket follower that collects the bytes of its (binary) data messages as text. */
function wsReader(streamUrl: string) {
  const ws = new WebSocket(`${streamUrl.replace(/^http/, 'ws')}?offset=-1&live=ws`);
  ws.binaryType = 'arraybuffer';
  const reader = { ws, data: [] as string[], controls: 0, acks: [] as Record<string, unknown>[] };
  ws.addEventListener('message', (e) => {
    if (typeof e.data === 'string') {
      const message = JSON.parse(e.data);
      if (message.type === 'control') reader.controls++;
      else reader.acks.push(message);
    } else {
      reader.data.push(Buffer.from(e.data as ArrayBuffer).toString());
    }
  });
  return reader;
}

test('the stream object hibernates with SSE, long-poll and WebSocket readers open, then wakes to deliver to all', async () => {
  const name = `readers-${Date.now()}`;
  const created = await fetch(url(name), { method: 'PUT', headers: { 'content-type': 'text/plain' }, body: 'first' });
  expect(created.status).toBe(201);
  expect(cold(created)).toBe(true); // the PUT started the object

  const abort = new AbortController();
  const sse = Array.from({ length: 30 }, () => sseReader(url(name), abort.signal));
  const ws = Array.from({ length: 10 }, () => wsReader(url(name)));
  try {
    await until(() => sse.every((r) => r.controls > 0) && ws.every((r) => r.controls > 0), 'the readers to catch up');
    for (const r of [...sse, ...ws]) expect(r.data).toEqual(['first']);
    const tail = (await fetch(url(name), { method: 'HEAD' })).headers.get('stream-next-offset');
    const longPolls = Array.from({ length: 10 }, () =>
      fetch(`${url(name)}?offset=${encodeURIComponent(tail!)}&live=long-poll`, { signal: abort.signal }).then(async (res) => ({
        status: res.status,
        body: await res.text(),
      })),
    );
    await sleep(500); // the long-polls reach the object and park

    // Awake: the same instance answers.
    const awake = await fetch(url(name), { method: 'HEAD' });
    expect(awake.status).toBe(200);
    expect(cold(awake)).toBe(false);

    // Idle, with 50 readers open: the runtime evicts the object anyway.
    await sleep(IDLE_MS);
    const woken = await fetch(url(name), { method: 'HEAD' });
    expect(woken.status).toBe(200);
    expect(cold(woken)).toBe(true);

    // Its sockets survived the eviction: the next append reaches every reader, once.
    const appended = await fetch(url(name), { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'second' });
    expect(appended.status).toBe(204);
    expect(cold(appended)).toBe(false);
    await until(() => sse.every((r) => r.data.length >= 2) && ws.every((r) => r.data.length >= 2), 'the append to reach every follower');
    for (const r of await Promise.all(longPolls)) expect(r).toEqual({ status: 200, body: 'second' });
    await sleep(200); // room for a duplicate to show up
    for (const r of [...sse, ...ws]) expect(r.data).toEqual(['first', 'second']);

    // The object holds the WebSocket clients itself. After another idle spell as long as the
    // one that evicted it above, an append frame on one of them wakes it, and the ack and the
    // data reach everyone: the socket's attachment, which says how to serve it, outlived the
    // instance.
    await sleep(IDLE_MS);
    ws[0].ws.send(JSON.stringify({ type: 'append', id: 'after-sleep', data: 'third' }));
    await until(() => ws[0].acks.length > 0, 'the ack');
    expect(ws[0].acks).toEqual([expect.objectContaining({ type: 'ack', id: 'after-sleep', status: 204 })]);
    await until(() => sse.every((r) => r.data.length >= 3) && ws.every((r) => r.data.length >= 3), 'the third append');
    expect(cold(await fetch(url(name), { method: 'HEAD' }))).toBe(false); // the frame woke it
    await sleep(200);
    for (const r of [...sse, ...ws]) expect(r.data).toEqual(['first', 'second', 'third']);
    expect(sse.filter((r) => r.failed)).toEqual([]);
  } finally {
    abort.abort();
    for (const r of ws) r.ws.close();
  }
}, 90_000);

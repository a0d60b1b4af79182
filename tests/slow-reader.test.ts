// A live SSE reader that stops reading must not make the edge hold every later append in memory
// (one isolate serves many readers, and running out of memory ends them all). Past
// SSE_BACKLOG_BYTES not taken by its connection, its response is cut; the reader resumes from the
// last control event it got whole and catches up, with nothing lost or repeated. A reader that
// keeps up is never cut.
import http from 'node:http';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';

const MIB = 1024 * 1024;
const APPENDS = 40;

let server: Awaited<ReturnType<typeof startServer>>;
const url = (name: string) => `${server.baseUrl}/v1/stream/slow-reader/${name}`;

beforeAll(async () => {
  server = await startServer({ vars: { SSE_CONNECTION_MS: '30000', SSE_BACKLOG_BYTES: String(MIB) } });
});

afterAll(async () => {
  await server?.stop();
});

/** Append `i` of a stream: 1 MiB of one letter, so a repeat or a gap shows in the text. */
const chunk = (i: number) => String.fromCharCode(97 + (i % 26)).repeat(MIB);

async function create(name: string) {
  const res = await fetch(url(name), { method: 'PUT', headers: { 'content-type': 'text/plain' } });
  expect(res.status).toBe(201);
}

async function appendAll(name: string) {
  for (let i = 0; i < APPENDS; i++) {
    const res = await fetch(url(name), { method: 'POST', headers: { 'content-type': 'text/plain' }, body: chunk(i) });
    await res.arrayBuffer();
    expect(res.status).toBe(204);
  }
}

/** The stream from `offset` to its tail, by plain catch-up reads. */
async function readFrom(name: string, offset: string) {
  let text = '';
  for (;;) {
    const res = await fetch(`${url(name)}?offset=${encodeURIComponent(offset)}`);
    expect(res.status).toBe(200);
    text += await res.text();
    offset = res.headers.get('stream-next-offset')!;
    if (res.headers.get('stream-up-to-date') === 'true') return text;
  }
}

/**
 * An SSE reader over node:http, so that pausing it stops the socket. Data counts only once its
 * control event has arrived, as the protocol's clients do; `offset` is that control's.
 */
function sseReader(name: string) {
  const reader = {
    committed: '',
    offset: '-1',
    ended: false,
    response: undefined as http.IncomingMessage | undefined,
    request: undefined as http.ClientRequest | undefined,
    done: undefined as unknown as Promise<void>,
  };
  let buffer = '';
  let pending = '';
  reader.done = new Promise((resolve) => {
    const finish = () => {
      reader.ended = true;
      resolve();
    };
    reader.request = http.get(`${url(name)}?offset=-1&live=sse`, { agent: false }, (res) => {
      reader.response = res;
      expect(res.statusCode).toBe(200);
      res.setEncoding('utf8');
      res.on('data', (text: string) => {
        buffer += text;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const lines = block.split('\n');
          const data = lines.filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n');
          if (lines[0] === 'event: data') pending += data;
          if (lines[0] === 'event: control') {
            reader.committed += pending;
            pending = '';
            reader.offset = JSON.parse(data).streamNextOffset;
          }
        }
      });
      res.on('close', finish);
      res.on('error', () => {});
    });
    reader.request.on('error', finish);
  });
  return reader;
}

test('a reader that stops reading is cut off, then resumes from its last offset with nothing lost or repeated', async () => {
  const name = `stalled-${Date.now()}`;
  await create(name);
  const reader = sseReader(name);
  await expect.poll(() => reader.response !== undefined).toBe(true);
  reader.response!.pause();
  const started = Date.now();
  // Far more than the socket buffers between the two processes take: the rest queues at the edge.
  await appendAll(name);
  reader.response!.resume();
  await reader.done;
  // Cut well before SSE_CONNECTION_MS (30 s) would have ended the response.
  expect(Date.now() - started).toBeLessThan(20_000);
  const full = await readFrom(name, '-1');
  expect(full.length).toBe(APPENDS * MIB);
  expect(reader.committed.length).toBeLessThan(full.length);
  const rest = await readFrom(name, reader.offset);
  expect(reader.committed.length + rest.length).toBe(full.length);
  expect(reader.committed + rest === full).toBe(true);
}, 60_000);

test('a reader that keeps up is not cut off by the same limit', async () => {
  const name = `keeping-up-${Date.now()}`;
  await create(name);
  const reader = sseReader(name);
  await expect.poll(() => reader.response !== undefined).toBe(true);
  await appendAll(name);
  await expect.poll(() => reader.committed.length, { timeout: 15_000 }).toBe(APPENDS * MIB);
  expect(reader.ended).toBe(false);
  const full = await readFrom(name, '-1');
  expect(reader.committed === full).toBe(true);
  reader.request!.destroy();
  await reader.done;
}, 60_000);

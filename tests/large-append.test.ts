// A JSON append of many tiny messages must not make the Worker hold memory per message. Wasm
// memory never shrinks and an isolate on Cloudflare has 128 MB, so a 16 MB body of 8 million
// one-byte messages once grew it to 145 MiB (a span list, then lists of message ends, beside
// the body and its framing): one request could get the isolate, and every live reader in it,
// killed. Sizes come from heap snapshots through wrangler dev's inspector.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';
import { inspect, wasmMemoryBytes } from '../scripts/inspector.mjs';

const MIB = 1024 * 1024;
let server: Awaited<ReturnType<typeof startServer>>;
let session: Awaited<ReturnType<typeof inspect>>;

beforeAll(async () => {
  server = await startServer({ inspector: true });
  session = await inspect(server.inspectorPort);
});

afterAll(async () => {
  session?.close();
  await server?.stop();
});

it('a 16 MB append of 8 million messages is stored, followed live, and grows wasm memory by about two bodies', async () => {
  const url = `${server.baseUrl}/v1/stream/large-append-${Date.now().toString(36)}`;
  const json = { 'content-type': 'application/json' };
  expect((await fetch(url, { method: 'PUT', headers: json })).status).toBe(201);
  expect((await fetch(url, { method: 'POST', headers: json, body: '[0]' })).status).toBe(204);
  // A live reader at the tail: the append is also framed and sent to it.
  const reader = new AbortController();
  let events = '';
  const following = fetch(`${url}?offset=now&live=sse`, { signal: reader.signal })
    .then(async (res) => {
      const text = res.body!.pipeThrough(new TextDecoderStream()).getReader();
      for (let r = await text.read(); !r.done; r = await text.read()) events = (events + r.value).slice(-4096);
    })
    .catch(() => {});
  await new Promise((r) => setTimeout(r, 500));
  const before = await wasmMemoryBytes(session);

  const count = 8_000_000;
  const body = '[' + '1,'.repeat(count - 1) + '1]';
  expect(body.length).toBe(2 * count + 1);
  const res = await fetch(url, { method: 'POST', headers: json, body });
  expect(res.status).toBe(204);
  const tail = res.headers.get('stream-next-offset');

  const read = await fetch(`${url}?offset=-1`);
  const items = JSON.parse(await read.text());
  expect(items.length).toBe(count + 1);
  expect(items[0]).toBe(0);
  expect(items[count]).toBe(1);
  await expect.poll(() => events.includes(`"streamNextOffset":"${tail}"`), { timeout: 20_000 }).toBe(true);
  reader.abort();
  await following;

  // The body and its framing, each 16 MB, may be held at once; nothing per message is.
  const grown = (await wasmMemoryBytes(session)) - before;
  expect(grown).toBeLessThan(48 * MIB);
}, 60_000);

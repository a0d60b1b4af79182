// Live reads end on time: an SSE response closes after SSE_CONNECTION_MS even while frames keep
// arriving (clients then resume from their offset), and a long-poll with nothing to say answers
// 204 after LONG_POLL_TIMEOUT_MS.
import { afterAll, beforeAll, expect, test } from 'vitest';
import { WebSocket } from 'undici';
import { startServer } from '../scripts/dev-server.mjs';

let server: Awaited<ReturnType<typeof startServer>>;
const url = (name: string) => `${server.baseUrl}/v1/stream/live-test/${name}`;

beforeAll(async () => {
  server = await startServer({ vars: { SSE_CONNECTION_MS: '2000', LONG_POLL_TIMEOUT_MS: '1000' } });
});

afterAll(async () => {
  await server?.stop();
});

test('an SSE response ends after SSE_CONNECTION_MS, with or without frames arriving, and resumes', async () => {
  const name = `sse-${Date.now()}`;
  expect((await fetch(url(name), { method: 'PUT', headers: { 'content-type': 'text/plain' } })).status).toBe(201);
  let writing = true;
  let written = 0;
  const writer = (async () => {
    while (writing) {
      await fetch(url(name), { method: 'POST', headers: { 'content-type': 'text/plain' }, body: `<${written++}>` });
      await new Promise((r) => setTimeout(r, 150));
    }
  })();
  let offset = '-1';
  let received = '';
  try {
    for (let round = 0; round < 3; round++) {
      const started = Date.now();
      const res = await fetch(`${url(name)}?offset=${encodeURIComponent(offset)}&live=sse`, { signal: AbortSignal.timeout(15_000) });
      expect(res.status).toBe(200);
      const text = await res.text(); // resolves only when the server ends the response
      const elapsed = Date.now() - started;
      expect(elapsed).toBeGreaterThanOrEqual(1800);
      expect(elapsed).toBeLessThan(6000);
      for (const block of text.split('\n\n')) {
        if (block.startsWith('event: data')) received += block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n');
        if (block.startsWith('event: control')) offset = JSON.parse(block.slice(block.indexOf('data:') + 5)).streamNextOffset;
      }
    }
  } finally {
    writing = false;
    await writer;
  }
  const all = await (await fetch(`${url(name)}?offset=-1`)).text();
  expect(all.startsWith(received)).toBe(true);
  expect(received.length).toBeGreaterThan(0);
  // An idle stream: the response still ends on time.
  const idleStart = Date.now();
  const idle = await fetch(`${url(name)}?offset=now&live=sse`, { signal: AbortSignal.timeout(15_000) });
  await idle.text();
  expect(Date.now() - idleStart).toBeLessThan(6000);
}, 60_000);

test('a long-poll with nothing new answers 204 after LONG_POLL_TIMEOUT_MS', async () => {
  const name = `lp-${Date.now()}`;
  const created = await fetch(url(name), { method: 'PUT', headers: { 'content-type': 'text/plain' } });
  const tail = created.headers.get('stream-next-offset')!;
  const started = Date.now();
  const res = await fetch(`${url(name)}?offset=${encodeURIComponent(tail)}&live=long-poll`);
  expect(res.status).toBe(204);
  const elapsed = Date.now() - started;
  expect(elapsed).toBeGreaterThanOrEqual(800);
  expect(elapsed).toBeLessThan(4000);
});

test('every long-poll answer carries a cursor, a closed stream\'s too, and one for a page the client has is 304', async () => {
  const name = `lp-cursor-${Date.now()}`;
  const text = { 'content-type': 'text/plain' };
  const created = await fetch(url(name), { method: 'PUT', headers: text, body: 'abc' });
  const start = created.headers.get('stream-next-offset')!.replace(/\d+$/, (d) => '0'.repeat(d.length));
  const poll = (offset: string, headers: Record<string, string> = {}) =>
    fetch(`${url(name)}?offset=${encodeURIComponent(offset)}&live=long-poll`, { headers });
  // Data at once, then If-None-Match with its ETag: 304.
  const page = await poll(start);
  expect(page.status).toBe(200);
  expect(page.headers.get('stream-cursor')).toMatch(/^\d+$/);
  const again = await poll(start, { 'if-none-match': page.headers.get('etag')! });
  expect(again.status).toBe(304);
  expect(await again.text()).toBe('');
  // Released by a close: 204, closed, with a cursor.
  const tail = page.headers.get('stream-next-offset')!;
  const waiting = poll(tail);
  await new Promise((r) => setTimeout(r, 200));
  expect((await fetch(url(name), { method: 'POST', headers: { ...text, 'stream-closed': 'true' } })).status).toBe(204);
  const released = await waiting;
  expect(released.status).toBe(204);
  expect(released.headers.get('stream-closed')).toBe('true');
  expect(released.headers.get('stream-cursor')).toMatch(/^\d+$/);
  // On the closed stream: data (200) and its end (204) at once, both with a cursor.
  for (const [offset, status] of [[start, 200], [tail, 204]] as const) {
    const res = await poll(offset);
    expect(res.status).toBe(status);
    expect(res.headers.get('stream-closed')).toBe('true');
    expect(res.headers.get('stream-cursor')).toMatch(/^\d+$/);
  }
});

test('a long-poll from offset=now that gets data is never cached and has no ETag: its URL names no position', async () => {
  const name = `lp-now-${Date.now()}`;
  const text = { 'content-type': 'text/plain' };
  expect((await fetch(url(name), { method: 'PUT', headers: text, body: 'before' })).status).toBe(201);
  const polled = fetch(`${url(name)}?offset=now&live=long-poll`);
  await new Promise((r) => setTimeout(r, 300));
  expect((await fetch(url(name), { method: 'POST', headers: text, body: 'after' })).status).toBe(204);
  const page = await polled;
  expect(page.status).toBe(200);
  expect(await page.text()).toBe('after');
  expect(page.headers.get('cache-control')).toBe('no-store');
  expect(page.headers.get('etag')).toBeNull();
  // The same append read from a real offset is a cacheable page with an ETag.
  const fixed = await fetch(`${url(name)}?offset=-1&live=long-poll`);
  expect(await fixed.text()).toBe('beforeafter');
  expect(fixed.headers.get('cache-control')).toMatch(/^public, max-age=\d+/);
  expect(fixed.headers.get('etag')).toBeTruthy();
});

test('a cursor at or past the current interval gets a strictly greater one, however many digits it has', async () => {
  const name = `lp-big-cursor-${Date.now()}`;
  expect((await fetch(url(name), { method: 'PUT', headers: { 'content-type': 'text/plain' }, body: 'x' })).status).toBe(201);
  const cursorFor = async (cursor: string) => {
    const res = await fetch(`${url(name)}?offset=-1&live=long-poll&cursor=${cursor}`);
    await res.body?.cancel();
    expect(res.status).toBe(200);
    return res.headers.get('stream-cursor')!;
  };
  for (const client of ['18446744073709551615', '99999999999999999999999', '123456789012345678901234567890']) {
    const answered = await cursorFor(client);
    expect(answered).toMatch(/^\d+$/);
    expect(BigInt(answered) > BigInt(client)).toBe(true);
    expect(BigInt(answered) - BigInt(client) <= 180n).toBe(true);
  }
  // SSE puts it in the control event.
  const res = await fetch(`${url(name)}?offset=-1&live=sse&cursor=99999999999999999999999`);
  const reader = res.body!.getReader();
  let seen = '';
  while (!seen.includes('streamCursor')) seen += new TextDecoder().decode((await reader.read()).value);
  await reader.cancel();
  const cursor = /"streamCursor":"(\d+)"/.exec(seen)![1];
  expect(BigInt(cursor) > 99999999999999999999999n).toBe(true);
});

test('readers that start together are released apart: SSE closes and long-poll timeouts are staggered', async () => {
  const name = `stagger-${Date.now()}`;
  const created = await fetch(url(name), { method: 'PUT', headers: { 'content-type': 'text/plain' } });
  const tail = encodeURIComponent(created.headers.get('stream-next-offset')!);
  const readers = 24;
  const endTimes = async (mode: 'sse' | 'long-poll') => {
    const started = Date.now();
    return Promise.all(
      Array.from({ length: readers }, async () => {
        const res = await fetch(`${url(name)}?offset=${tail}&live=${mode}`, { signal: AbortSignal.timeout(15_000) });
        await res.text();
        return Date.now() - started;
      }),
    );
  };
  // Up to 10% early at random: 200 ms of spread for SSE (2 s), 100 ms for long-polls (1 s).
  // Without a stagger they all ended within about 50 ms of each other.
  for (const [mode, period] of [['sse', 2000], ['long-poll', 1000]] as const) {
    const times = await endTimes(mode);
    const spread = Math.max(...times) - Math.min(...times);
    expect(Math.min(...times)).toBeGreaterThanOrEqual(period * 0.9 - 50);
    expect(spread).toBeGreaterThan(period * 0.04);
  }
}, 30_000);

test('an SSE response whose stream is deleted ends with an error event, so no client resumes into a new stream', async () => {
  for (const start of ['tail', 'start'] as const) {
    const name = `gone-${start}-${Date.now()}`;
    const created = await fetch(url(name), { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '[1,2]' });
    expect(created.status).toBe(201);
    // From the start, the response holds the stream's data before the error event.
    const from = start === 'tail' ? encodeURIComponent(created.headers.get('stream-next-offset')!) : '-1';
    const res = await fetch(`${url(name)}?offset=${from}&live=sse`, { signal: AbortSignal.timeout(15_000) });
    expect(res.status).toBe(200);
    const text = res.text();
    await new Promise((r) => setTimeout(r, 300));
    expect((await fetch(url(name), { method: 'DELETE' })).status).toBe(204);
    const events = (await text).split('\n\n').filter((b) => b.trim() !== '');
    const last = events.at(-1)!;
    expect(last.startsWith('event: error\n'), last).toBe(true);
    expect(JSON.parse(last.slice(last.indexOf('data:') + 5))).toMatchObject({ type: 'error', status: 404 });
    // Events before it are the stream's own.
    expect(events.slice(0, -1).every((b) => /^event: (data|control)\n/.test(b))).toBe(true);
  }
});

test('an open reader keeps a TTL stream alive whatever its transport, and the TTL counts again once it goes', async () => {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const head = async (name: string) => (await fetch(url(name), { method: 'HEAD' })).status;
  const gone = async (name: string) => {
    for (const deadline = Date.now() + 6000; Date.now() < deadline; await sleep(100)) {
      if ((await head(name)) === 404) return true;
    }
    return false;
  };
  const create = async (name: string) => {
    const res = await fetch(url(name), { method: 'PUT', headers: { 'content-type': 'text/plain', 'stream-ttl': '1' } });
    expect(res.status).toBe(201);
  };
  // SSE, held at the edge: its 2 s connection outlives the 1 s TTL, and ends without an error.
  const sse = `ttl-sse-${Date.now()}`;
  await create(sse);
  const res = await fetch(`${url(sse)}?offset=now&live=sse`, { signal: AbortSignal.timeout(15_000) });
  const text = res.text();
  await sleep(1500);
  expect(await head(sse)).toBe(200);
  const events = await text;
  expect(events).not.toContain('event: error');
  // Then it expires within about a TTL of the reader going (polled: the alarm's timing varies).
  expect(await gone(sse)).toBe(true);

  // A WebSocket, held by the stream's object, open for three TTLs.
  const ws = `ttl-ws-${Date.now()}`;
  await create(ws);
  const wsUrl = `${url(ws).replace(/^http/, 'ws')}?offset=now&live=ws`;
  const socket = new WebSocket(wsUrl);
  await new Promise((resolve, reject) => {
    socket.addEventListener('open', resolve);
    socket.addEventListener('error', reject);
  });
  let closedWith = 0;
  socket.addEventListener('close', (e) => (closedWith = e.code));
  await sleep(3000);
  expect(closedWith).toBe(0);
  expect(await head(ws)).toBe(200);
  socket.close();
  expect(await gone(ws)).toBe(true);
}, 30_000);

/** Follows `name` over SSE from `from` until the offset `target()` names, resuming as a client
 * does; returns the text of its data events, each decoded on its own as SSE clients do. */
async function sseText(name: string, from: string, target: () => string | undefined): Promise<string> {
  let offset = from;
  let text = '';
  for (let round = 0; round < 20 && offset !== target(); round++) {
    const res = await fetch(`${url(name)}?offset=${encodeURIComponent(offset)}&live=sse`, { signal: AbortSignal.timeout(15_000) });
    expect(res.status).toBe(200);
    const decoder = new TextDecoder();
    let buffered = '';
    const reader = res.body!.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffered.indexOf('\n\n')) !== -1) {
        const block = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5));
        if (block.startsWith('event: data')) text += data.join('\n');
        if (block.startsWith('event: control')) offset = JSON.parse(data.join('\n')).streamNextOffset;
      }
      if (offset === target()) {
        await reader.cancel();
        break;
      }
    }
  }
  expect(offset).toBe(target());
  return text;
}

test('SSE delivers text whole where an append is cut into frames and a catch-up into pages', async () => {
  const name = `utf8-${Date.now()}`;
  const type = { 'content-type': 'text/plain; charset=utf-8' };
  const created = await fetch(url(name), { method: 'PUT', headers: type });
  expect(created.status).toBe(201);
  const start = created.headers.get('stream-next-offset')!;
  // Live: one append of 600,000 bytes, which goes out in 512 KiB frames (not a multiple of 3).
  // 600,003 bytes: the first 4 MiB page then ends inside a 4-byte character of what follows.
  const euros = '€'.repeat(200_001);
  let tail: string | undefined;
  const live = sseText(name, start, () => tail);
  await new Promise((r) => setTimeout(r, 300));
  const posted = await fetch(url(name), { method: 'POST', headers: type, body: euros });
  expect(posted.status).toBe(204);
  tail = posted.headers.get('stream-next-offset')!;
  expect(await live).toBe(euros);
  // Catch-up: past 4 MiB, read in pages; a CRLF and 4-byte characters too.
  const more = 'a\r\n😀'.repeat(300_000);
  for (let i = 0; i < 2; i++) {
    const res = await fetch(url(name), { method: 'POST', headers: type, body: more });
    expect(res.status).toBe(204);
    tail = res.headers.get('stream-next-offset')!;
  }
  const all = await sseText(name, start, () => tail);
  expect(all.length).toBe(euros.length + 2 * more.replaceAll('\r\n', '\n').length);
  expect(all).toBe(euros + more.replaceAll('\r\n', '\n').repeat(2));
}, 60_000);

// A writer that forwards a byte stream as it comes (an upstream response's chunks, a model's
// tokens as bytes) cuts characters and CRLFs between appends. A catch-up read of those bytes
// sends them in one piece, but a live reader got each append as a piece of its own, decoded
// alone: U+FFFD for each half of the character, and two line breaks for the CRLF.
test('SSE delivers text whole where a writer cut a character or a CRLF between appends', async () => {
  const name = `utf8-appends-${Date.now()}`;
  const type = { 'content-type': 'text/plain; charset=utf-8' };
  const bytes = Buffer.from('a😀b€\r\nc\r\rd\u07FFé', 'utf8');
  const text = 'a😀b€\nc\n\nd\u07FFé';
  // Cut after 2 and 4 bytes of the emoji, inside the euro, between the CR and LF, and so on.
  const cuts = [2, 4, 6, 8, 9, 10, 12, 13, 15, 17];
  expect((await fetch(url(name), { method: 'PUT', headers: type, body: bytes.subarray(0, cuts[0]) })).status).toBe(201);
  let received = '';
  // Each control event's offset, with the text received before it.
  const controls: { offset: string; before: string }[] = [];
  const live = (async () => {
    const res = await fetch(`${url(name)}?offset=-1&live=sse`, { signal: AbortSignal.timeout(15_000) });
    for (const block of (await res.text()).split('\n\n')) {
      if (block.startsWith('event: data')) received += block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5)).join('\n');
      if (block.startsWith('event: control')) controls.push({ offset: JSON.parse(block.slice(block.indexOf('data:') + 5)).streamNextOffset, before: received });
    }
  })();
  await new Promise((r) => setTimeout(r, 300));
  for (let i = 1; i <= cuts.length; i++) {
    const end = i < cuts.length ? cuts[i] : bytes.length;
    const headers = i === cuts.length ? { ...type, 'stream-closed': 'true' } : type;
    expect((await fetch(url(name), { method: 'POST', headers, body: bytes.subarray(cuts[i - 1], end) })).status).toBe(204);
    await new Promise((r) => setTimeout(r, 50));
  }
  await live;
  expect(received).toBe(text);
  // A reader that resumes from any control event's offset reads on to the same text: no byte
  // it was sent is sent again, nor one it was not skipped.
  expect(controls.length).toBeGreaterThan(2);
  for (const { offset, before } of controls) {
    const rest = await (await fetch(`${url(name)}?offset=${offset}`)).arrayBuffer();
    expect(before + Buffer.from(rest).toString('utf8').replace(/\r\n?/g, '\n'), offset).toBe(text);
  }
  expect(controls.at(-1)!.offset).toBe(`0000000000000000_${String(bytes.length).padStart(16, '0')}`);
});

test('a page may be cached no longer than its stream lives, whether the object or the edge answers it', async () => {
  const put = async (name: string, headers: Record<string, string>) => {
    const res = await fetch(url(name), { method: 'PUT', headers: { 'content-type': 'text/plain', ...headers }, body: 'first' });
    expect(res.status).toBe(201);
    return res.headers.get('stream-next-offset')!;
  };
  const cacheOf = async (name: string, query: string) => (await fetch(`${url(name)}?${query}`)).headers.get('cache-control');
  const stamp = Date.now();
  await put(`cache-forever-${stamp}`, {});
  expect(await cacheOf(`cache-forever-${stamp}`, 'offset=-1')).toBe('public, max-age=60, stale-while-revalidate=300');
  // A sliding TTL counts from this read: fresh for a minute, then stale only until it runs out.
  await put(`cache-ttl-${stamp}`, { 'stream-ttl': '100' });
  expect(await cacheOf(`cache-ttl-${stamp}`, 'offset=-1')).toBe('public, max-age=60, stale-while-revalidate=40');
  const tail = await put(`cache-short-${stamp}`, { 'stream-ttl': '30' });
  expect(await cacheOf(`cache-short-${stamp}`, 'offset=-1')).toBe('public, max-age=30');
  // An absolute expiry: never past it.
  const expiresAt = new Date(Date.now() + 20_000).toISOString();
  await put(`cache-at-${stamp}`, { 'stream-expires-at': expiresAt });
  const max = Number(/max-age=(\d+)$/.exec((await cacheOf(`cache-at-${stamp}`, 'offset=-1'))!)?.[1]);
  expect(max).toBeGreaterThan(10);
  expect(max).toBeLessThanOrEqual(20);
  // A long-poll page the edge makes from the object's frame, for an append it waited for. On a
  // loaded machine the append can come after this server's 1 s timeout: then poll again from
  // the new tail.
  let from = tail;
  for (let round = 0; ; round++) {
    const polled = fetch(`${url(`cache-short-${stamp}`)}?offset=${encodeURIComponent(from)}&live=long-poll`);
    await new Promise((r) => setTimeout(r, 300));
    const body = `second-${round}`;
    const post = await fetch(url(`cache-short-${stamp}`), { method: 'POST', headers: { 'content-type': 'text/plain' }, body });
    expect(post.status).toBe(204);
    const page = await polled;
    if (page.status === 204 && round < 4) {
      await page.arrayBuffer();
      from = post.headers.get('stream-next-offset')!;
      continue;
    }
    expect(page.status).toBe(200);
    expect(await page.text()).toBe(body);
    expect(page.headers.get('cache-control')).toBe('public, max-age=30');
    break;
  }
});

test('an idle SSE response is sent comment lines, so a reader that hung up is noticed and a TTL stream expires soon after', async () => {
  // Its own server: SSE responses that last, and a heartbeat well within them.
  const beating = await startServer({ vars: { SSE_CONNECTION_MS: '60000', SSE_HEARTBEAT_MS: '500' } });
  const at = (name: string) => `${beating.baseUrl}/v1/stream/live-test/${name}`;
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  try {
    // An idle reader gets `:` comments between whole events, and nothing else changes.
    const quiet = `heartbeat-${Date.now()}`;
    expect((await fetch(at(quiet), { method: 'PUT', headers: { 'content-type': 'text/plain' }, body: 'a' })).status).toBe(201);
    const res = await fetch(`${at(quiet)}?offset=-1&live=sse`, { signal: AbortSignal.timeout(15_000) });
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let seen = '';
    for (const until = Date.now() + 1800; Date.now() < until;) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += decoder.decode(value, { stream: true });
    }
    await reader.cancel();
    const blocks = seen.split('\n\n').filter((b) => b !== '');
    expect(blocks.filter((b) => b === ':').length).toBeGreaterThanOrEqual(2);
    expect(blocks.filter((b) => b !== ':').every((b) => /^event: (data|control)\n/.test(b))).toBe(true);
    expect(blocks[0]).toBe('event: data\ndata:a');

    // No silence is longer than about a heartbeat: a comment line follows data by one heartbeat,
    // not by up to two (a tick that found data written since the last one used to wait for the
    // next). Appends land at varying phases of the heartbeat.
    const phased = `heartbeat-phase-${Date.now()}`;
    expect((await fetch(at(phased), { method: 'PUT', headers: { 'content-type': 'text/plain' } })).status).toBe(201);
    const live = await fetch(`${at(phased)}?offset=now&live=sse`, { signal: AbortSignal.timeout(20_000) });
    const liveReader = live.body!.getReader();
    const gaps: number[] = [];
    for (let i = 0; i < 6; i++) {
      await sleep(100 + i * 70);
      expect((await fetch(at(phased), { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'x' })).status).toBe(204);
      let dataAt = 0;
      for (;;) {
        const { value, done } = await liveReader.read();
        expect(done).toBe(false);
        const text = decoder.decode(value);
        if (text.includes('data:x')) dataAt = Date.now();
        else if (dataAt && text.split('\n\n').includes(':')) break;
      }
      gaps.push(Date.now() - dataAt);
    }
    await liveReader.cancel();
    expect(Math.max(...gaps), `data to the next comment line, ms: ${gaps}`).toBeLessThan(750);

    // A sliding TTL counts again from when the reader hangs up: it used to count only from when
    // its response would have ended (SSE_CONNECTION_MS, a minute here).
    const ttl = `heartbeat-ttl-${Date.now()}`;
    const created = await fetch(at(ttl), { method: 'PUT', headers: { 'content-type': 'text/plain', 'stream-ttl': '1' } });
    expect(created.status).toBe(201);
    const hangUp = new AbortController();
    const held = await fetch(`${at(ttl)}?offset=now&live=sse`, { signal: hangUp.signal });
    const heldReader = held.body!.getReader();
    await heldReader.read();
    await sleep(1500);
    expect((await fetch(at(ttl), { method: 'HEAD' })).status).toBe(200);
    hangUp.abort();
    const left = Date.now();
    let status = 200;
    while (status === 200 && Date.now() - left < 20_000) {
      await sleep(200);
      status = (await fetch(at(ttl), { method: 'HEAD' })).status;
    }
    expect(status).toBe(404);
    // Three heartbeats (the third write after a hang-up fails locally), the TTL and the alarm's slack.
    expect(Date.now() - left).toBeLessThan(6000);
  } finally {
    await beating.stop();
  }
}, 60_000);

test('settings out of range are taken at their bounds: SSE_CONNECTION_MS under a second, a number of more digits than fit', async () => {
  // A 1 ms SSE response used to close before its first catch-up page, sending nothing, every
  // time; and digits past 64 bits fell back to the default instead of the cap (64 MiB here).
  const odd = await startServer({ vars: { SSE_CONNECTION_MS: '1', MAX_APPEND_BYTES: '99999999999999999999' } });
  const at = `${odd.baseUrl}/v1/stream/live-test/bounds-${Date.now()}`;
  try {
    expect((await fetch(at, { method: 'PUT', headers: { 'content-type': 'text/plain' }, body: 'hello' })).status).toBe(201);
    const sse = await fetch(`${at}?offset=-1&live=sse`, { signal: AbortSignal.timeout(10_000) });
    expect(sse.status).toBe(200);
    expect(await sse.text()).toMatch(/^event: data\ndata:hello\n\nevent: control\n/);
    const big = new Uint8Array(17 * 1024 * 1024).fill(97);
    expect((await fetch(at, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: big })).status).toBe(204);
  } finally {
    await odd.stop();
  }
}, 60_000);

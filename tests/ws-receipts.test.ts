// Receipts on `live=ws` (subprotocol edgestream.v3, docs/websocket.md): a client that offers it
// says how far it has read, and the server closes its socket with 1012 once it would be more than
// WS_BACKLOG_BYTES behind, instead of queueing every later append in the runtime's memory for a
// client that stopped reading. A client that sends no receipts counts as having read only what it
// was sent on connecting, so each of its connections carries at most the limit (and a page).
// Checked on both ends that hold client sockets: the stream's object (a client near the tail) and
// the edge (a client that started more than a page behind).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'undici';
import { startServer } from '../scripts/dev-server.mjs';

const MIB = 1024 * 1024;
const LIMIT = MIB;
const CHUNK = 64 * 1024;
const FELL_BEHIND = 'fell behind: reconnect from the last offset';
const NO_RECEIPTS = 'sent the limit without receipts: reconnect from the last offset';

let server: Awaited<ReturnType<typeof startServer>>;

beforeAll(async () => {
  server = await startServer({ vars: { WS_BACKLOG_BYTES: String(LIMIT) } });
});

afterAll(async () => {
  await server?.stop();
});

const base = () => `${server.baseUrl}/v1/stream`;
let counter = 0;
const unique = (prefix: string) => `${prefix}-${process.pid}-${Date.now()}-${counter++}`;

async function create(name: string, body?: Buffer) {
  const res = await fetch(`${base()}/${name}`, {
    method: 'PUT',
    headers: { 'content-type': 'application/octet-stream' },
    body: body && new Uint8Array(body),
  });
  expect(res.status).toBe(201);
  return res.headers.get('stream-next-offset')!;
}

async function append(name: string, body: Buffer) {
  const res = await fetch(`${base()}/${name}`, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream' },
    body: new Uint8Array(body),
  });
  expect(res.status).toBe(204);
  return res.headers.get('stream-next-offset')!;
}

/** A chunk whose bytes say where they are, so a gap or a repeat shows in the comparison. */
const chunk = (i: number) => Buffer.alloc(CHUNK, i % 251);

/**
 * A socket on a binary stream that collects what it is sent: payload bytes, and the offset of the
 * last control (alone, or in a combined message's header). With `receipts`, it answers each
 * control with a receipt, as a client that keeps reading does.
 */
class Follower {
  chunks: Buffer[] = [];
  bytes = 0;
  offset: string | undefined;
  upToDate = false;
  errors: Array<Record<string, unknown>> = [];
  closed: Promise<{ code: number; reason: string }>;

  private constructor(
    readonly ws: WebSocket,
    /** Whether it answers each control with a receipt; a test may change it. */
    public receipts: boolean,
  ) {
    ws.binaryType = 'arraybuffer';
    ws.addEventListener('message', (e) => {
      let control: Record<string, any> | undefined;
      if (typeof e.data === 'string') {
        const json = JSON.parse(e.data);
        if (json.type === 'error') this.errors.push(json);
        if (json.type === 'control') control = json;
      } else {
        const data = Buffer.from(e.data as ArrayBuffer);
        if (ws.protocol) {
          const len = data.readUInt32BE(0);
          if (len > 0) control = JSON.parse(data.subarray(4, 4 + len).toString());
          this.take(data.subarray(4 + len));
        } else {
          this.take(data);
        }
      }
      if (control) {
        this.offset = control.streamNextOffset;
        this.upToDate = control.upToDate === true;
        if (this.receipts) this.receipt();
      }
    });
    this.closed = new Promise((resolve) => ws.addEventListener('close', (e) => resolve({ code: e.code, reason: e.reason })));
  }

  receipt() {
    this.ws.send(JSON.stringify({ type: 'received', offset: this.offset }));
  }

  private take(bytes: Buffer) {
    this.chunks.push(bytes);
    this.bytes += bytes.length;
  }

  static async open(name: string, offset: string, protocols: string[], receipts: boolean) {
    const ws = new WebSocket(`${base().replace(/^http/, 'ws')}/${name}?offset=${offset}&live=ws`, protocols);
    const follower = new Follower(ws, receipts);
    await new Promise<void>((resolve, reject) => {
      ws.addEventListener('open', () => resolve());
      ws.addEventListener('error', () => reject(new Error('cannot open the socket')));
    });
    return follower;
  }

  /** Waits until `done()` or the socket closes; false if neither happens in time. */
  async until(done: () => boolean, timeoutMs = 20_000) {
    const deadline = Date.now() + timeoutMs;
    while (!done() && this.ws.readyState !== WebSocket.CLOSED) {
      if (Date.now() > deadline) return false;
      await new Promise((r) => setTimeout(r, 20));
    }
    return done();
  }
}

/** Whether the socket is still open `ms` later. */
async function stillOpen(follower: Follower, ms = 300) {
  await new Promise((r) => setTimeout(r, ms));
  return follower.ws.readyState === WebSocket.OPEN;
}

/**
 * Waits for the close that cuts `follower` off with `reason`, and checks what it was sent past
 * the `uncounted` bytes it was not held to: at most the limit, and within a chunk of it.
 */
async function expectCut(follower: Follower, reason: string, uncounted = 0) {
  expect(await follower.closed).toEqual({ code: 1012, reason });
  const counted = follower.bytes - uncounted;
  expect(counted).toBeGreaterThanOrEqual(LIMIT - CHUNK);
  expect(counted).toBeLessThanOrEqual(LIMIT);
}

/**
 * Resumes a cut-off follower from its last control's offset until `done`, and checks that the
 * two together got exactly `sent`: nothing lost, nothing twice.
 */
async function expectResumes(
  name: string,
  cut: Follower,
  protocols: string[],
  sent: Buffer[],
  done: (resumed: Follower) => boolean = (resumed) => resumed.upToDate,
) {
  const resumed = await Follower.open(name, cut.offset!, protocols, true);
  expect(await resumed.until(() => done(resumed))).toBe(true);
  expect(Buffer.concat([...cut.chunks, ...resumed.chunks]).equals(Buffer.concat(sent))).toBe(true);
  resumed.ws.close();
}

describe('WebSocket receipts (edgestream.v3)', () => {
  it('answers edgestream.v3 when it is offered, and edgestream.v2 when only that is', async () => {
    const name = unique('proto');
    await create(name);
    for (const [offered, chosen] of [
      [['edgestream.v3', 'edgestream.v2'], 'edgestream.v3'],
      [['edgestream.v2', 'edgestream.v3'], 'edgestream.v3'],
      [['edgestream.v2'], 'edgestream.v2'],
    ] as const) {
      const follower = await Follower.open(name, 'now', [...offered], false);
      expect(follower.ws.protocol).toBe(chosen);
      follower.ws.close();
    }
  });

  it('a client that sends receipts as it reads follows many times the limit on one socket', async () => {
    const name = unique('reads');
    await create(name);
    const follower = await Follower.open(name, 'now', ['edgestream.v3'], true);
    expect(await follower.until(() => follower.offset !== undefined)).toBe(true);
    const sent: Buffer[] = [];
    let tail = '';
    // Each append is read before the next is made, as a client that keeps up reads them.
    for (let i = 0; i < 128; i++) {
      sent.push(chunk(i));
      tail = await append(name, sent[i]);
      expect(await follower.until(() => follower.offset === tail)).toBe(true);
    }
    expect(Buffer.concat(follower.chunks).equals(Buffer.concat(sent))).toBe(true);
    expect(await stillOpen(follower)).toBe(true);
    follower.ws.close();
  });

  it('a client that stops sending receipts is closed with 1012 past the limit, and resumes from its offset exactly', async () => {
    const name = unique('stalls');
    await create(name);
    const follower = await Follower.open(name, 'now', ['edgestream.v3'], false);
    expect(await follower.until(() => follower.offset !== undefined)).toBe(true);
    const sent: Buffer[] = [];
    for (let i = 0; i < 64; i++) {
      sent.push(chunk(i));
      await append(name, sent[i]);
    }
    // It was sent up to the limit (from where it last said it was), and nothing beyond.
    await expectCut(follower, FELL_BEHIND);
    await expectResumes(name, follower, ['edgestream.v3'], sent);
  });

  it('the catch-up a socket opens with is not held to the limit; the live appends after it are', async () => {
    const catchUp = Buffer.concat(Array.from({ length: 48 }, (_, i) => chunk(i))); // 3 MiB, within a page
    const name = unique('opens-behind');
    await create(name, catchUp);
    const follower = await Follower.open(name, '-1', ['edgestream.v3'], false);
    expect(await follower.until(() => follower.upToDate)).toBe(true);
    expect(follower.bytes).toBe(catchUp.length);
    for (let i = 0; i < 48; i++) await append(name, chunk(100 + i));
    await expectCut(follower, FELL_BEHIND, catchUp.length);
  });

  it.each([
    ['edgestream.v2', ['edgestream.v2']],
    ['no subprotocol', []],
  ])('a client that does not offer receipts (%s) is closed with 1012 once sent the limit live, and resumes from its offset exactly', async (_, protocols) => {
    const name = unique('no-receipts');
    await create(name);
    // It sends receipts anyway: they count only under edgestream.v3.
    const follower = await Follower.open(name, 'now', protocols, true);
    expect(await follower.until(() => follower.offset !== undefined)).toBe(true);
    const sent: Buffer[] = [];
    let tail = '';
    // It reads every append before the next is made, yet the server cannot know that.
    for (let i = 0; i < 48 && follower.ws.readyState === WebSocket.OPEN; i++) {
      sent.push(chunk(i));
      tail = await append(name, sent[i]);
      await follower.until(() => follower.offset === tail, 5_000);
    }
    await expectCut(follower, NO_RECEIPTS);
    for (let i = sent.length; i < 24; i++) {
      sent.push(chunk(i));
      tail = await append(name, sent[i]);
    }
    await expectResumes(name, follower, protocols, sent, (resumed) => resumed.offset === tail);
  });

  it('a client the edge follows live (a fork\'s reader) that does not offer receipts is closed with 1012 once sent the limit', async () => {
    const source = unique('fork-source');
    await create(source, chunk(0));
    const name = unique('fork');
    const forked = await fetch(`${base()}/${name}`, {
      method: 'PUT',
      headers: { 'content-type': 'application/octet-stream', 'stream-forked-from': `/v1/stream/${source}` },
    });
    expect(forked.status).toBe(201);
    // The fork's inherited range is read from its source, so the edge serves this socket.
    const follower = await Follower.open(name, '-1', ['edgestream.v2'], true);
    expect(await follower.until(() => follower.upToDate)).toBe(true);
    const sent = [chunk(0)];
    for (let i = 1; i < 48 && follower.ws.readyState === WebSocket.OPEN; i++) {
      sent.push(chunk(i));
      const tail = await append(name, sent[i]);
      await follower.until(() => follower.offset === tail, 5_000);
    }
    // Counted from where it connected, its catch-up included.
    await expectCut(follower, NO_RECEIPTS);
    await expectResumes(name, follower, ['edgestream.v2'], sent);
  });

  it('a receipt for more than the client was sent counts only what it was sent', async () => {
    const name = unique('lies');
    await create(name);
    const follower = await Follower.open(name, 'now', ['edgestream.v3'], false);
    expect(await follower.until(() => follower.offset !== undefined)).toBe(true);
    // Far beyond the tail: as if it had read everything to come. Then it reads nothing more.
    follower.ws.send(JSON.stringify({ type: 'received', offset: `0000000000000000_${String(2 ** 40).padStart(16, '0')}` }));
    await new Promise((r) => setTimeout(r, 200));
    for (let i = 0; i < 48; i++) await append(name, chunk(i));
    expect(await follower.closed).toEqual({ code: 1012, reason: FELL_BEHIND });
    expect(follower.bytes).toBeLessThanOrEqual(LIMIT);
  });

  it('a client the edge serves that sends no receipts gets its catch-up over several connections, each within the limit and a page', async () => {
    const catchUp = Buffer.concat(Array.from({ length: 160 }, (_, i) => chunk(i))); // 10 MiB
    const name = unique('edge-no-receipts');
    await create(name, catchUp);
    const got: Buffer[] = [];
    let offset = '-1';
    let connections = 0;
    for (let upToDate = false; !upToDate; connections++) {
      const follower = await Follower.open(name, offset, ['edgestream.v2'], false);
      // Until it is up to date, or its connection has carried what it may and closes.
      upToDate = await follower.until(() => follower.upToDate);
      if (!upToDate) {
        expect(await follower.closed).toEqual({ code: 1012, reason: 'catch-up continues: reconnect from the last offset' });
      }
      // One page (4 MiB) is past the 1 MiB limit: each connection carries one.
      expect(follower.bytes).toBeLessThanOrEqual(4 * MIB);
      got.push(...follower.chunks);
      offset = follower.offset!;
      follower.ws.close();
    }
    expect(connections).toBe(3);
    expect(Buffer.concat(got).equals(catchUp)).toBe(true);
  });

  it('a client the edge serves (it started more than a page behind) is paced by its receipts on one socket', async () => {
    const catchUp = Buffer.concat(Array.from({ length: 160 }, (_, i) => chunk(i))); // 10 MiB
    const name = unique('edge');
    await create(name, catchUp);
    const follower = await Follower.open(name, '-1', ['edgestream.v3'], false);
    // Without a receipt, one catch-up page (4 MiB, past the 1 MiB limit) and nothing more.
    expect(await follower.until(() => follower.offset !== undefined)).toBe(true);
    await new Promise((r) => setTimeout(r, 500));
    expect(follower.bytes).toBe(4 * MIB);
    expect(follower.upToDate).toBe(false);
    // Receipts let the rest through, on the same socket.
    follower.receipts = true;
    follower.receipt();
    expect(await follower.until(() => follower.upToDate)).toBe(true);
    expect(Buffer.concat(follower.chunks).equals(catchUp)).toBe(true);
    // Live, the edge holds it to its receipts as the object does.
    const sent: Buffer[] = [];
    let tail = '';
    for (let i = 0; i < 24; i++) {
      sent.push(chunk(1000 + i));
      tail = await append(name, sent[i]);
      expect(await follower.until(() => follower.offset === tail)).toBe(true);
    }
    expect(Buffer.concat(follower.chunks).equals(Buffer.concat([catchUp, ...sent]))).toBe(true);
    follower.receipts = false;
    for (let i = 0; i < 48; i++) await append(name, chunk(2000 + i));
    await expectCut(follower, FELL_BEHIND, catchUp.length + sent.length * CHUNK);
  });

  it('a client the edge serves that receipts every control is not cut off when it goes live while the stream is appended to', async () => {
    // Found by a probe (2026-12-05): the edge sent the last catch-up page and went live at once,
    // before the receipts for the pages had reached it, and cut the client off ("fell behind")
    // at the second live append although it had receipted everything it was sent.
    const catchUp = Buffer.concat(Array.from({ length: 160 }, (_, i) => chunk(i))); // 10 MiB
    const name = unique('edge-live');
    await create(name, catchUp);
    const follower = await Follower.open(name, '-1', ['edgestream.v3'], true);
    const sent: Buffer[] = [];
    let writing = true;
    const writer = (async () => {
      for (let i = 0; writing && i < 400; i++) {
        const bytes = Buffer.from(`<${i}>`);
        await append(name, bytes);
        sent.push(bytes);
      }
    })();
    expect(await follower.until(() => follower.upToDate && follower.bytes > catchUp.length)).toBe(true);
    await new Promise((r) => setTimeout(r, 500));
    writing = false;
    await writer;
    const tail = await append(name, Buffer.from('end'));
    sent.push(Buffer.from('end'));
    expect(await follower.until(() => follower.offset === tail)).toBe(true);
    expect(follower.ws.readyState).toBe(WebSocket.OPEN);
    expect(Buffer.concat(follower.chunks).equals(Buffer.concat([catchUp, ...sent]))).toBe(true);
    follower.ws.close();
  });

  it('a client the edge serves gets a 404 error, not the new stream, when its stream is deleted and created again', async () => {
    const old = Buffer.concat(Array.from({ length: 160 }, (_, i) => chunk(i))); // 10 MiB
    const name = unique('edge-replaced');
    await create(name, old);
    const follower = await Follower.open(name, '-1', ['edgestream.v3'], false);
    // One page, then it waits for a receipt.
    expect(await follower.until(() => follower.offset !== undefined)).toBe(true);
    await new Promise((r) => setTimeout(r, 300));
    expect(follower.bytes).toBe(4 * MIB);
    expect((await fetch(`${base()}/${name}`, { method: 'DELETE' })).status).toBe(204);
    await create(name, Buffer.concat(Array.from({ length: 160 }, (_, i) => chunk(i + 7))));
    follower.receipts = true;
    follower.receipt();
    await follower.closed;
    expect(follower.errors).toEqual([expect.objectContaining({ type: 'error', status: 404 })]);
    // Only the old incarnation's bytes, from its start.
    expect(follower.bytes).toBe(4 * MIB);
    expect(Buffer.concat(follower.chunks).equals(old.subarray(0, 4 * MIB))).toBe(true);
  });

  it('a session waiting in catch-up for receipts appends nothing to a stream deleted and created again', async () => {
    const name = unique('recreated');
    await create(name, Buffer.concat(Array.from({ length: 128 }, (_, i) => chunk(i)))); // 8 MiB
    // More than a page behind, so the edge serves it; without receipts its catch-up stops short
    // of the tail and waits for them.
    const follower = await Follower.open(name, '-1', ['edgestream.v3'], false);
    expect(await follower.until(() => follower.bytes >= LIMIT)).toBe(true);
    expect(await stillOpen(follower)).toBe(true);
    expect(follower.upToDate).toBe(false);
    expect((await fetch(`${base()}/${name}`, { method: 'DELETE' })).status).toBe(204);
    expect((await create(name, Buffer.from('new;'))).length).toBeGreaterThan(0);
    for (let id = 0; id < 3; id++) follower.ws.send(JSON.stringify({ type: 'append', id, data: `old-session-${id};` }));
    expect(await follower.until(() => follower.errors.filter((e) => e.id !== undefined).length === 3)).toBe(true);
    for (const error of follower.errors.filter((e) => e.id !== undefined)) expect(error.status).toBe(404);
    const read = await fetch(`${base()}/${name}?offset=-1`);
    expect(Buffer.from(await read.arrayBuffer()).toString()).toBe('new;');
    follower.ws.close();
  });

  it('refuses a receipt without a control offset with 1008, and appends nothing', async () => {
    const name = unique('bad');
    const tail = await create(name);
    for (const bad of [
      { type: 'received' },
      { type: 'received', offset: '-1' },
      { type: 'received', offset: tail, data: 'x' },
    ]) {
      const follower = await Follower.open(name, 'now', ['edgestream.v3'], false);
      follower.ws.send(JSON.stringify(bad));
      const closed = await follower.closed;
      expect(closed.code).toBe(1008);
      expect(follower.errors[0]).toMatchObject({ type: 'error', status: 400 });
    }
    const res = await fetch(`${base()}/${name}`, { method: 'HEAD' });
    expect(res.headers.get('stream-next-offset')).toBe(tail);
  });
});

describe('WebSocket receipts: a writer cut off by its own appends', () => {
  /** Opens a socket at the tail (the stream's object holds it) that appends and counts replies. */
  async function writer(name: string, protocols: string[]) {
    const follower = await Follower.open(name, 'now', protocols, false);
    expect(await follower.until(() => follower.offset !== undefined)).toBe(true);
    const replies: Array<Record<string, any>> = [];
    follower.ws.addEventListener('message', (e) => {
      if (typeof e.data !== 'string') return;
      const json = JSON.parse(e.data);
      if (json.type === 'ack' || json.type === 'error') replies.push(json);
    });
    return { follower, replies };
  }

  /** How many 256 KiB appends the stream holds. */
  async function stored(name: string) {
    const res = await fetch(`${base()}/${name}`, { method: 'HEAD' });
    return Number(res.headers.get('stream-next-offset')!.split('_')[1]) / (256 * 1024);
  }

  const frame = (i: number) => JSON.stringify({ type: 'append', id: i, data: 'z'.repeat(256 * 1024) });

  it.each([
    ['edgestream.v2', ['edgestream.v2']],
    ['no subprotocol', []],
  ])('acknowledges the append whose echo cuts it off before closing with 1012 (%s)', async (_, protocols) => {
    const name = unique('own-cut');
    await create(name);
    const { follower, replies } = await writer(name, protocols);
    let sent = 0;
    // One at a time, each awaited: its own appends come back to it until they pass the limit.
    for (let i = 0; i < 16 && follower.ws.readyState === WebSocket.OPEN; i++) {
      follower.ws.send(frame(i));
      sent++;
      await follower.until(() => replies.length > i, 5_000);
    }
    expect(await follower.closed).toEqual({ code: 1012, reason: NO_RECEIPTS });
    expect(sent).toBeLessThan(16);
    expect(replies.every((r) => r.type === 'ack' && r.status === 204)).toBe(true);
    // Every append that was stored was acknowledged, and the one that crossed the limit was stored.
    expect(await stored(name)).toBe(replies.length);
    expect(replies.length).toBe(sent);
  });

  it('applies none of the appends pipelined after the one that cut it off', async () => {
    const name = unique('pipe-cut');
    await create(name);
    const { follower, replies } = await writer(name, ['edgestream.v2']);
    for (let i = 0; i < 16; i++) follower.ws.send(frame(i));
    expect(await follower.closed).toEqual({ code: 1012, reason: NO_RECEIPTS });
    expect(replies.every((r) => r.type === 'ack' && r.status === 204)).toBe(true);
    expect(replies.length).toBeGreaterThan(0);
    expect(replies.length).toBeLessThan(16);
    expect(await stored(name)).toBe(replies.length);
  });
});

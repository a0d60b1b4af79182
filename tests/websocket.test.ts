// edgestream's WebSocket extension (docs/websocket.md), end to end against the built Worker on
// wrangler dev: follow and append over one socket, JSON and binary streams, resuming from the
// last offset without duplicates or gaps, producer dedupe across reconnects, and bad frames.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'undici';
import { startServer } from '../scripts/dev-server.mjs';
import { binaryFrame } from './support/frames';
import { handshake } from './support/handshake';
import { mintToken } from '../scripts/token.mjs';

let server: Awaited<ReturnType<typeof startServer>>;

beforeAll(async () => {
  server = await startServer();
});

afterAll(async () => {
  await server?.stop();
});

type Control = {
  type: 'control';
  streamNextOffset: string;
  streamCursor?: string;
  upToDate?: boolean;
  streamClosed?: boolean;
};
type Message =
  | { kind: 'binary'; bytes: Buffer }
  | { kind: 'text'; json: { type: string; [key: string]: unknown } };

/** A request body fetch accepts (its types refuse a Buffer). */
const bodyOf = (body?: string | Buffer) =>
  body === undefined || typeof body === 'string' ? body : new Uint8Array(body);

/** A WebSocket whose messages queue up for `next()`. */
class Client {
  private queue: Message[] = [];
  private wake: (() => void) | undefined;
  closed: Promise<{ code: number; reason: string }>;

  private constructor(readonly ws: WebSocket) {
    ws.binaryType = 'arraybuffer';
    ws.addEventListener('message', (e) => {
      const data = e.data as string | ArrayBuffer;
      this.queue.push(
        typeof data === 'string'
          ? { kind: 'text', json: JSON.parse(data) }
          : { kind: 'binary', bytes: Buffer.from(data) },
      );
      this.wake?.();
    });
    this.closed = new Promise((resolve) =>
      ws.addEventListener('close', (e) => {
        resolve({ code: e.code, reason: e.reason });
        this.wake?.();
      }),
    );
  }

  static async open(name: string, query: string, baseUrl = server.baseUrl, protocols?: string[]): Promise<Client> {
    const url = `${baseUrl.replace(/^http/, 'ws')}/v1/stream/${name}?${query}`;
    const ws = new WebSocket(url, protocols);
    const client = new Client(ws);
    await new Promise<void>((resolve, reject) => {
      ws.addEventListener('open', () => resolve());
      ws.addEventListener('error', () => reject(new Error(`cannot open ${url}`)));
    });
    return client;
  }

  /** The next message; throws after `timeoutMs` or when the socket closes first. */
  async next(timeoutMs = 5_000): Promise<Message> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const message = this.queue.shift();
      if (message) return message;
      if (this.ws.readyState === WebSocket.CLOSED) throw new Error('socket closed');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('no message in time');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }

  /** The next text message, which must have type `type`. */
  async expect(type: string): Promise<Record<string, any>> {
    const message = await this.next();
    if (message.kind !== 'text') throw new Error(`expected ${type}, got a binary message`);
    expect(message.json.type).toBe(type);
    return message.json;
  }

  /** The next reply to an append frame (`ack` or `error`), skipping what is followed. */
  async reply(timeoutMs?: number): Promise<Record<string, any>> {
    for (;;) {
      const message = await this.next(timeoutMs);
      if (message.kind === 'text' && ['ack', 'error'].includes(message.json.type)) return message.json;
    }
  }

  /** Whatever is queued now, without waiting. */
  drain(): Message[] {
    return this.queue.splice(0);
  }

  send(frame: object | Buffer) {
    this.ws.send(Buffer.isBuffer(frame) ? frame : JSON.stringify(frame));
  }
}

/**
 * Reads data and control messages until a control satisfies `until`. A data message with control
 * fields (the edgestream.v2 subprotocol) counts as its data, then its control.
 */
async function follow(client: Client, until: (c: Control) => boolean) {
  const chunks: Buffer[] = [];
  const items: unknown[] = [];
  const controls: Control[] = [];
  for (;;) {
    const message = await client.next();
    if (message.kind === 'binary') {
      chunks.push(message.bytes);
      continue;
    }
    const json = message.json;
    if (json.type === 'data') items.push(...(json.items as unknown[]));
    if (json.type === 'control' || (json.type === 'data' && 'streamNextOffset' in json)) {
      controls.push(json as Control);
      if (until(json as Control)) break;
    }
  }
  return { bytes: Buffer.concat(chunks), items, controls, last: controls[controls.length - 1] };
}

const base = () => `${server.baseUrl}/v1/stream`;
let counter = 0;
const unique = (prefix: string) => `${prefix}-${process.pid}-${Date.now()}-${counter++}`;

async function create(name: string, contentType: string, body?: string | Buffer) {
  const res = await fetch(`${base()}/${name}`, {
    method: 'PUT',
    headers: { 'content-type': contentType },
    body: bodyOf(body),
  });
  expect(res.status).toBe(201);
  return res.headers.get('stream-next-offset')!;
}

async function post(name: string, contentType: string, body: string | Buffer) {
  const res = await fetch(`${base()}/${name}`, {
    method: 'POST',
    headers: { 'content-type': contentType },
    body: bodyOf(body),
  });
  expect(res.status).toBe(204);
  return res.headers.get('stream-next-offset')!;
}

/** A stream of `contentType` holding `body`; with `fork`, a fork of one, so that a socket
 * reading from its start is held by the edge (in the inherited range), not by the object. */
async function writable(prefix: string, contentType: string, body: string, fork: boolean) {
  const name = unique(prefix);
  await create(name, contentType, body);
  if (!fork) return name;
  const copy = unique(`${prefix}-fork`);
  const res = await fetch(`${base()}/${copy}`, {
    method: 'PUT',
    headers: { 'content-type': contentType, 'stream-forked-from': `/v1/stream/${name}` },
  });
  expect(res.status).toBe(201);
  return copy;
}

/** Who holds a socket that reads from -1: the stream's object, or the edge for a fork. */
const HOLDERS: [string, boolean][] = [
  ['the stream\'s object', false],
  ['the edge (a fork\'s inherited range)', true],
];

/** A text stream holding `src;` (a fork of one when `fork`), followed to its tail by a socket
 * that the edge holds for a fork and the object otherwise. */
async function followedWritable(prefix: string, fork: boolean) {
  const name = await writable(prefix, 'text/plain', 'src;', fork);
  const client = await Client.open(name, `offset=${fork ? '-1' : 'now'}&live=ws`);
  await follow(client, (c) => c.upToDate === true);
  return { name, client };
}

async function readAll(name: string) {
  const res = await fetch(`${base()}/${name}?offset=-1`);
  expect(res.status).toBe(200);
  return Buffer.from(await res.arrayBuffer());
}

/** The status of a WebSocket handshake on `path`. */
const handshakeStatus = async (path: string, baseUrl = server.baseUrl) => (await handshake(`${baseUrl}${path}`)).status;

describe('WebSocket follow', () => {
  it('sends catch-up and live data of a binary stream as binary messages', async () => {
    const name = unique('bin');
    const bytes = Buffer.from([0, 1, 2, 255, 254, 10, 13]);
    await create(name, 'application/octet-stream', bytes);
    const client = await Client.open(name, 'offset=-1&live=ws');
    const first = await follow(client, (c) => c.upToDate === true);
    expect(first.bytes.equals(bytes)).toBe(true);
    expect(first.last.streamCursor).toMatch(/^\d+$/);

    const more = Buffer.from([7, 7, 0, 7]);
    const tail = await post(name, 'application/octet-stream', more);
    const live = await follow(client, (c) => c.streamNextOffset === tail);
    expect(live.bytes.equals(more)).toBe(true);
    expect(live.last.upToDate).toBe(true);
    client.ws.close();
  });

  it('sends JSON streams as data messages with items', async () => {
    const name = unique('json');
    await create(name, 'application/json', JSON.stringify([{ a: 1 }, 'two']));
    const client = await Client.open(name, 'offset=-1&live=ws');
    const first = await follow(client, (c) => c.upToDate === true);
    expect(first.items).toEqual([{ a: 1 }, 'two']);
    const tail = await post(name, 'application/json', JSON.stringify([3, [4], null]));
    const live = await follow(client, (c) => c.streamNextOffset === tail);
    expect(live.items).toEqual([3, [4], null]);
    client.ws.close();
  });

  it('sends a JSON append as one message to clients that offer the edgestream.v2 subprotocol', async () => {
    // More than a page (4 MiB) of JSON, so that a socket from -1 is followed by the edge while
    // one from the tail is held by the stream's object: both take the combined form.
    const name = unique('combined');
    const messages = Array.from({ length: 4400 }, (_, i) => ({ i, pad: 'x'.repeat(1000) }));
    await create(name, 'application/json', JSON.stringify(messages.slice(0, 2000)));
    await post(name, 'application/json', JSON.stringify(messages.slice(2000)));
    const v2 = ['edgestream.v2'];
    const far = await Client.open(name, 'offset=-1&live=ws', server.baseUrl, v2);
    const near = await Client.open(name, 'offset=now&live=ws', server.baseUrl, ['chat', ...v2]);
    const plain = await Client.open(name, 'offset=now&live=ws');
    expect([far.ws.protocol, near.ws.protocol, plain.ws.protocol]).toEqual([...v2, ...v2, '']);
    expect((await follow(far, (c) => c.upToDate === true)).items).toEqual(messages);
    // With nothing to catch up, the first message is a control alone.
    expect((await near.expect('control')).upToDate).toBe(true);
    expect((await plain.expect('control')).upToDate).toBe(true);

    const tail = await post(name, 'application/json', JSON.stringify([{ live: 1 }, 'two']));
    for (const client of [far, near]) {
      expect(await client.expect('data')).toEqual({
        type: 'data',
        items: [{ live: 1 }, 'two'],
        streamNextOffset: tail,
        streamCursor: expect.stringMatching(/^\d+$/),
        upToDate: true,
      });
    }
    // A client that did not offer it gets the data, then the control.
    expect((await plain.expect('data')).items).toEqual([{ live: 1 }, 'two']);
    expect((await plain.expect('control')).streamNextOffset).toBe(tail);

    // The append that closes the stream carries the end of it.
    const res = await fetch(`${base()}/${name}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'stream-closed': 'true' },
      body: '[3]',
    });
    expect(res.status).toBe(204);
    const end = res.headers.get('stream-next-offset');
    for (const client of [far, near]) {
      expect(await client.expect('data')).toEqual({
        type: 'data',
        items: [3],
        streamNextOffset: end,
        upToDate: true,
        streamClosed: true,
      });
    }
    // (The object's own close reaches Node clients only at its eviction, about 10 s later.)
    expect((await far.closed).code).toBe(1000);
    expect(far.drain()).toEqual([]);
    expect((await plain.expect('data')).items).toEqual([3]);
    expect(await plain.expect('control')).toMatchObject({ streamNextOffset: end, streamClosed: true });
  }, 30_000);

  // 3 MiB is caught up by the stream's object, 5 MiB by the edge: both take the binary form.
  it.each([3, 5])('under edgestream.v2, a binary message has a header: a %i MiB catch-up, then one message per append', async (mib) => {
    const name = unique('combined-bin');
    const size = mib * 1024 * 1024 + 123;
    const body = Buffer.alloc(size);
    for (let i = 0; i < size; i++) body[i] = (i * 7 + (i >> 12)) & 0xff;
    await create(name, 'application/octet-stream', body.subarray(0, 2 * 1024 * 1024));
    await post(name, 'application/octet-stream', body.subarray(2 * 1024 * 1024));
    const client = await Client.open(name, 'offset=-1&live=ws', server.baseUrl, ['edgestream.v2']);
    expect(client.ws.protocol).toBe('edgestream.v2');
    /** A binary message: `[u32 header length][header: control fields or nothing][payload]`. */
    const unframe = (bytes: Buffer) => {
      const length = bytes.readUInt32BE(0);
      const header = bytes.subarray(4, 4 + length).toString();
      return { control: length ? JSON.parse(header) : undefined, payload: bytes.subarray(4 + length) };
    };
    const chunks: Buffer[] = [];
    for (;;) {
      const message = await client.next(15_000);
      if (message.kind === 'binary') {
        const { control, payload } = unframe(message.bytes);
        expect(control).toBeUndefined(); // a catch-up ends with a control message of its own
        expect(payload.length).toBeLessThanOrEqual(64 * 1024);
        chunks.push(payload);
      } else if (message.json.type === 'control' && message.json.upToDate) {
        break;
      }
    }
    expect(chunks.length).toBe(mib * 16 + 1);
    expect(Buffer.concat(chunks).equals(body)).toBe(true);

    const more = Buffer.from([0, 0, 0, 9, 255]); // looks like a header: must not be read as one
    const tail = await post(name, 'application/octet-stream', more);
    const live = await client.next();
    if (live.kind !== 'binary') throw new Error('expected a binary message');
    expect(unframe(live.bytes)).toEqual({
      control: { streamNextOffset: tail, streamCursor: expect.stringMatching(/^\d+$/), upToDate: true },
      payload: more,
    });
    const res = await fetch(`${base()}/${name}`, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream', 'stream-closed': 'true' },
      body: 'end',
    });
    expect(res.status).toBe(204);
    const last = await client.next();
    if (last.kind !== 'binary') throw new Error('expected a binary message');
    expect(unframe(last.bytes)).toEqual({
      control: { streamNextOffset: res.headers.get('stream-next-offset'), upToDate: true, streamClosed: true },
      payload: Buffer.from('end'),
    });
    client.ws.close();
  }, 30_000);

  // A browser reads a WebSocket message only once all of it has arrived, and the npm client gives
  // up a socket on which nothing arrived for 40 s: a data message of 1 MiB never reached a reader
  // below about 25 KB/s. So no data message carries more than 64 KiB of the stream, under any
  // subprotocol, whether the object (3 MiB behind) or the edge (5 MiB) serves the socket, for the
  // catch-up and for a live append larger than that; a single JSON message larger than 64 KiB
  // still arrives whole, in a data message of its own.
  const MAX_MESSAGE = 64 * 1024;
  const PROTOCOLS: [string, string[]][] = [
    ['no subprotocol', []],
    ['edgestream.v2', ['edgestream.v2']],
    ['edgestream.v3', ['edgestream.v3', 'edgestream.v2']],
  ];

  /**
   * Reads until a control at `offset`, checking that no data message carries more than
   * MAX_MESSAGE of the stream (`allowed` says which JSON items may be larger, alone); sends
   * receipts under edgestream.v3.
   */
  async function readSmall(client: Client, offset: string, allowed: (item: unknown) => boolean = () => false) {
    const combined = client.ws.protocol !== '';
    const chunks: Buffer[] = [];
    const items: unknown[] = [];
    let messages = 0;
    for (;;) {
      const message = await client.next(15_000);
      let control: Control | undefined;
      if (message.kind === 'binary') {
        let payload = message.bytes;
        if (combined) {
          const length = payload.readUInt32BE(0);
          if (length) control = JSON.parse(payload.subarray(4, 4 + length).toString());
          payload = payload.subarray(4 + length);
        }
        expect(payload.length).toBeLessThanOrEqual(MAX_MESSAGE);
        chunks.push(payload);
        messages++;
      } else if (message.json.type === 'data') {
        const got = message.json.items as unknown[];
        // Stored as each message and a comma: the array's brackets stand for the last comma.
        const size = Buffer.byteLength(JSON.stringify(got)) - 1;
        if (!(got.length === 1 && allowed(got[0]))) expect(size).toBeLessThanOrEqual(MAX_MESSAGE);
        items.push(...got);
        messages++;
        if ('streamNextOffset' in message.json) control = message.json as unknown as Control;
      } else if (message.json.type === 'control') {
        control = message.json as unknown as Control;
      }
      if (!control) continue;
      if (client.ws.protocol === 'edgestream.v3') client.send({ type: 'received', offset: control.streamNextOffset });
      if (control.streamNextOffset === offset) break;
    }
    return { bytes: Buffer.concat(chunks), items, messages };
  }

  describe.each(PROTOCOLS)('with %s', (_, protocols) => {
    it.each([3, 5])('sends a %i MiB binary catch-up and a large live append in data messages of at most 64 KiB', async (mib) => {
      const name = unique('small-bin');
      const size = mib * 1024 * 1024 + 123;
      const body = Buffer.alloc(size);
      for (let i = 0; i < size; i++) body[i] = (i * 13 + (i >> 10)) & 0xff;
      await create(name, 'application/octet-stream', body.subarray(0, 2 * 1024 * 1024));
      const caughtUp = await post(name, 'application/octet-stream', body.subarray(2 * 1024 * 1024));
      const client = await Client.open(name, 'offset=-1&live=ws', server.baseUrl, protocols);
      expect(client.ws.protocol).toBe(protocols[0] ?? '');
      const catchup = await readSmall(client, caughtUp);
      expect(catchup.bytes.equals(body)).toBe(true);
      expect(catchup.messages).toBeGreaterThanOrEqual(Math.ceil(size / MAX_MESSAGE));

      // Larger than the object's own frames (512 KiB) too.
      const append = Buffer.alloc(1536 * 1024 + 5);
      for (let i = 0; i < append.length; i++) append[i] = (i * 5 + (i >> 9)) & 0xff;
      const tail = await post(name, 'application/octet-stream', append);
      const live = await readSmall(client, tail);
      expect(live.bytes.equals(append)).toBe(true);
      expect(live.messages).toBeGreaterThanOrEqual(Math.ceil(append.length / MAX_MESSAGE));
      client.ws.close();
    }, 60_000);

    it('sends a JSON catch-up and a large live append in data messages of at most 64 KiB, a larger message whole', async () => {
      const name = unique('small-json');
      const messages = Array.from({ length: 2000 }, (_, i) => ({ i, pad: 'y'.repeat(500 + (i % 300)) }));
      const big = { big: 'z'.repeat(100 * 1024) };
      const isBig = (item: unknown) => JSON.stringify(item) === JSON.stringify(big);
      await create(name, 'application/json', JSON.stringify(messages.slice(0, 1000)));
      const caughtUp = await post(name, 'application/json', JSON.stringify([...messages.slice(1000, 1500), big, ...messages.slice(1500)]));
      const client = await Client.open(name, 'offset=-1&live=ws', server.baseUrl, protocols);
      const catchup = await readSmall(client, caughtUp, isBig);
      expect(catchup.items).toEqual([...messages.slice(0, 1500), big, ...messages.slice(1500)]);

      const more = messages.map((m) => ({ ...m, live: true }));
      const tail = await post(name, 'application/json', JSON.stringify([big, ...more]));
      const live = await readSmall(client, tail, isBig);
      expect(live.items).toEqual([big, ...more]);
      expect(live.messages).toBeGreaterThan(2);
      client.ws.close();
    }, 60_000);
  });

  it('starts at the tail for offset=now and then delivers only new data', async () => {
    const name = unique('now');
    const tail = await create(name, 'text/plain', 'old');
    const client = await Client.open(name, 'offset=now&live=ws');
    const control = await client.expect('control');
    expect(control.streamNextOffset).toBe(tail);
    expect(control.upToDate).toBe(true);
    const next = await post(name, 'text/plain', 'new');
    const live = await follow(client, (c) => c.streamNextOffset === next);
    expect(live.bytes.toString()).toBe('new');
    client.ws.close();
  });

  // 3 MiB is caught up by the stream's object, which holds the socket; 5 MiB, more than a page,
  // by the edge.
  it.each([3, 5])('splits a large catch-up (%i MiB) into messages of at most 64 KiB and loses nothing', async (mib) => {
    const name = unique('large');
    const size = mib * 1024 * 1024 + 123;
    const body = Buffer.alloc(size);
    for (let i = 0; i < size; i++) body[i] = (i * 31 + (i >> 11)) & 0xff;
    await create(name, 'application/octet-stream', body.subarray(0, 2 * 1024 * 1024));
    await post(name, 'application/octet-stream', body.subarray(2 * 1024 * 1024));
    const client = await Client.open(name, 'offset=-1&live=ws');
    const chunks: Buffer[] = [];
    for (;;) {
      const message = await client.next(15_000);
      if (message.kind === 'binary') {
        expect(message.bytes.length).toBeLessThanOrEqual(64 * 1024);
        chunks.push(message.bytes);
      } else if (message.json.type === 'control' && message.json.upToDate) {
        break;
      }
    }
    expect(chunks.length).toBe(mib * 16 + 1);
    expect(Buffer.concat(chunks).equals(body)).toBe(true);
    client.ws.close();
  });

  it('ends a connection that sends no receipts once its catch-up passes WS_BACKLOG_BYTES with 1012, and reconnecting from the last offset loses and repeats nothing', async () => {
    // workerd cannot tell how much a client has read of what a WebSocket sent, so a long
    // catch-up is split across connections: each close is queued behind its data, and a client
    // that does not read holds at most one connection's share in the server's memory.
    const name = unique('budget');
    const mib = 1024 * 1024;
    const body = Buffer.alloc(40 * mib);
    for (let i = 0; i < body.length; i += 4096) body.writeUInt32BE(i, i);
    await create(name, 'application/octet-stream', body.subarray(0, 8 * mib));
    for (let at = 8 * mib; at < body.length; at += 8 * mib) await post(name, 'application/octet-stream', body.subarray(at, at + 8 * mib));
    const received: Buffer[] = [];
    let offset = '-1';
    let connections = 0;
    for (let upToDate = false; !upToDate; ) {
      const client = await Client.open(name, `offset=${encodeURIComponent(offset)}&live=ws`, server.baseUrl, ['edgestream.v2']);
      connections++;
      let sent = 0;
      for (;;) {
        let message;
        try {
          message = await client.next(15_000);
        } catch {
          break;
        }
        let control: Control | undefined;
        if (message.kind === 'binary') {
          // edgestream.v2: [u32 header length][header: control JSON, or empty][payload]
          const headerLength = message.bytes.readUInt32BE(0);
          const payload = message.bytes.subarray(4 + headerLength);
          received.push(payload);
          sent += payload.length;
          if (headerLength > 0) control = JSON.parse(message.bytes.subarray(4, 4 + headerLength).toString());
        } else if (message.json.type === 'control') {
          control = message.json as Control;
        }
        if (control) {
          offset = control.streamNextOffset;
          if (control.upToDate) {
            upToDate = true;
            break;
          }
        }
      }
      if (!upToDate) {
        const { code } = await client.closed;
        expect(code).toBe(1012);
      }
      // At most the limit (8 MiB by default) and the page that crossed it (4 MiB).
      expect(sent).toBeLessThanOrEqual(12 * mib);
      client.ws.close();
    }
    expect(connections).toBeGreaterThanOrEqual(4);
    expect(Buffer.concat(received).equals(body)).toBe(true);
  }, 60_000);

  it('serves sockets far behind or in a fork\'s inherited range like those at the tail', async () => {
    // The object holds a socket that starts within a page (4 MiB) of the tail; one further
    // behind, or reading a fork's inherited bytes, is caught up and followed by the edge. Both
    // kinds follow and append side by side on the same stream, and see the same bytes.
    const name = unique('paths');
    const size = 4 * 1024 * 1024 + 4096;
    const body = Buffer.alloc(size, 0x61);
    for (let i = 0; i < size; i += 4096) body[i] = 0x62;
    await create(name, 'application/octet-stream', body);
    const far = await Client.open(name, 'offset=-1&live=ws');
    const near = await Client.open(name, 'offset=now&live=ws');
    const caughtUp = await follow(far, (c) => c.upToDate === true);
    expect(caughtUp.bytes.equals(body)).toBe(true);
    expect((await near.expect('control')).upToDate).toBe(true);

    const fork = unique('paths-fork');
    const forked = await fetch(`${base()}/${fork}`, {
      method: 'PUT',
      headers: { 'content-type': 'application/octet-stream', 'stream-forked-from': `/v1/stream/${name}` },
    });
    expect(forked.status).toBe(201);
    const inherited = await Client.open(fork, 'offset=-1&live=ws');
    const forkCaughtUp = await follow(inherited, (c) => c.upToDate === true);
    expect(forkCaughtUp.bytes.equals(body)).toBe(true);
    /** The bytes of `stream` after `offset` (one page, which holds them all). */
    const after = async (stream: string, offset: string) => {
      const res = await fetch(`${base()}/${stream}?offset=${offset}`);
      expect(res.status).toBe(200);
      return Buffer.from(await res.arrayBuffer()).toString();
    };

    const appendBytes = (client: Client, id: number, text: string) => {
      client.send(binaryFrame({ type: 'append', id }, Buffer.from(text)));
    };
    appendBytes(far, 1, 'from-far;');
    appendBytes(near, 2, 'from-near;');
    appendBytes(inherited, 3, 'in-fork;');
    /** Replies and data on `client` until the ack of `id` and `length` bytes of data arrived. */
    const acks = async (client: Client, id: number, length: number) => {
      const seen: Record<string, any>[] = [];
      const bytes: Buffer[] = [];
      while (!seen.some((m) => m.type === 'ack' && m.id === id) || Buffer.concat(bytes).length < length) {
        const message = await client.next();
        if (message.kind === 'binary') bytes.push(message.bytes);
        else if (message.json.type !== 'control') seen.push(message.json);
      }
      return { replies: seen, bytes: Buffer.concat(bytes).toString() };
    };
    const [fromFar, fromNear, fromFork] = await Promise.all([
      acks(far, 1, 19),
      acks(near, 2, 19),
      acks(inherited, 3, 8),
    ]);
    expect(fromFar.replies).toEqual([expect.objectContaining({ type: 'ack', id: 1, status: 204 })]);
    expect(fromNear.replies).toEqual([expect.objectContaining({ type: 'ack', id: 2, status: 204 })]);
    // One order, the stream's, for both.
    expect(['from-far;from-near;', 'from-near;from-far;']).toContain(fromFar.bytes);
    expect(fromNear.bytes).toBe(fromFar.bytes);
    expect(await after(name, caughtUp.last.streamNextOffset)).toBe(fromFar.bytes);
    expect(fromFork).toEqual({
      replies: [expect.objectContaining({ type: 'ack', id: 3, status: 204 })],
      bytes: 'in-fork;',
    });
    expect(await after(fork, forkCaughtUp.last.streamNextOffset)).toBe('in-fork;');
    for (const client of [far, near, inherited]) client.ws.close();
  });

  it('splits a large JSON catch-up on message boundaries', async () => {
    const name = unique('large-json');
    const messages = Array.from({ length: 3000 }, (_, i) => ({ i, pad: 'x'.repeat(1000) }));
    await create(name, 'application/json', JSON.stringify(messages.slice(0, 1500)));
    await post(name, 'application/json', JSON.stringify(messages.slice(1500)));
    const client = await Client.open(name, 'offset=-1&live=ws');
    const items: unknown[] = [];
    let dataMessages = 0;
    for (;;) {
      const message = await client.next(15_000);
      if (message.kind !== 'text') throw new Error('binary message on a JSON stream');
      if (message.json.type === 'data') {
        dataMessages++;
        items.push(...(message.json.items as unknown[]));
      } else if (message.json.type === 'control' && message.json.upToDate) {
        break;
      }
    }
    expect(dataMessages).toBeGreaterThan(2);
    expect(items).toEqual(messages);
    client.ws.close();
  });

  it('resumes from the last offset without duplicates or gaps while a writer appends', async () => {
    const name = unique('resume');
    await create(name, 'text/plain');
    let writing = true;
    let written = 0;
    const writer = (async () => {
      while (writing) {
        await post(name, 'text/plain', `<${written++}>`);
      }
    })();
    let offset = '-1';
    const received: Buffer[] = [];
    try {
      for (let round = 0; round < 6; round++) {
        const client = await Client.open(name, `offset=${offset}&live=ws`);
        // Read a few controls' worth, then drop the connection mid-stream.
        let controls = 0;
        let pending: Buffer[] = [];
        while (controls < 3 + round) {
          const message = await client.next();
          if (message.kind === 'binary') {
            pending.push(message.bytes);
          } else if (message.json.type === 'control') {
            // Data counts once its control arrives: that is the offset a client resumes from.
            received.push(...pending);
            pending = [];
            offset = message.json.streamNextOffset as string;
            controls++;
          }
        }
        client.ws.close();
        await client.closed;
      }
    } finally {
      writing = false;
      await writer;
    }
    // Catch up to the end once more, then compare with what the stream holds.
    const client = await Client.open(name, `offset=${offset}&live=ws`);
    const rest = await follow(client, (c) => c.upToDate === true);
    received.push(rest.bytes);
    client.ws.close();
    const text = Buffer.concat(received).toString();
    expect(text).toBe((await readAll(name)).toString());
    const numbers = [...text.matchAll(/<(\d+)>/g)].map((m) => Number(m[1]));
    expect(numbers).toEqual(numbers.map((_, i) => i));
    expect(numbers.length).toBe(written);
    expect(written).toBeGreaterThan(10);
  });

  it('delivers a burst of concurrent appends in fewer frames, each byte once and in order', async () => {
    const name = unique('burst');
    const start = await create(name, 'text/plain');
    const client = await Client.open(name, 'offset=now&live=ws');
    await client.expect('control');
    const appends = 60;
    const offsets = await Promise.all(Array.from({ length: appends }, (_, i) => post(name, 'text/plain', `<${i}>`)));
    const tail = offsets.sort().at(-1)!;
    let frames = 0;
    const received: Buffer[] = [];
    for (let offset = start; offset !== tail; ) {
      const message = await client.next();
      if (message.kind === 'binary') {
        frames++;
        received.push(message.bytes);
      } else if (message.json.type === 'control') offset = message.json.streamNextOffset as string;
    }
    client.ws.close();
    expect(Buffer.concat(received).toString()).toBe((await readAll(name)).toString());
    const numbers = [...Buffer.concat(received).toString().matchAll(/<(\d+)>/g)].map((m) => Number(m[1]));
    expect([...numbers].sort((a, b) => a - b)).toEqual(numbers.map((_, i) => i));
    // The object merges appends that arrive while others are in flight into one frame.
    console.log(`burst: ${appends} concurrent appends reached the follower in ${frames} frames`);
    expect(frames).toBeLessThan(appends);
  });

  it('closes with 1000 after the final control when the stream closes', async () => {
    const name = unique('closing');
    await create(name, 'text/plain', 'a');
    const client = await Client.open(name, 'offset=-1&live=ws');
    await follow(client, (c) => c.upToDate === true);
    const res = await fetch(`${base()}/${name}`, {
      method: 'POST',
      headers: { 'content-type': 'text/plain', 'stream-closed': 'true' },
      body: 'z',
    });
    expect(res.status).toBe(204);
    const end = await follow(client, (c) => c.streamClosed === true);
    expect(end.bytes.toString()).toBe('z');
    expect(end.last.streamCursor).toBeUndefined();
    expect((await client.closed).code).toBe(1000);
  });

  it('tells a follower when the stream is deleted', async () => {
    const name = unique('deleted');
    await create(name, 'text/plain', 'a');
    const client = await Client.open(name, 'offset=-1&live=ws');
    await follow(client, (c) => c.upToDate === true);
    expect((await fetch(`${base()}/${name}`, { method: 'DELETE' })).status).toBe(204);
    const error = await client.expect('error');
    expect(error.status).toBe(404);
    expect((await client.closed).code).toBe(1000);
  });

  it('refuses the handshake like a read: 404, 400, and 426 without Upgrade', async () => {
    const name = unique('handshake');
    await create(name, 'text/plain', 'abc');
    expect(await handshakeStatus(`/v1/stream/${unique('missing')}?offset=-1&live=ws`)).toBe(404);
    expect(await handshakeStatus(`/v1/stream/${name}?live=ws`)).toBe(400);
    expect(await handshakeStatus(`/v1/stream/${name}?offset=zzz&live=ws`)).toBe(400);
    expect(await handshakeStatus(`/v1/stream/${name}?offset=-1&live=ws`)).toBe(101);
    const plain = await fetch(`${base()}/${name}?offset=-1&live=ws`);
    expect(plain.status).toBe(426);
    // An offset inside a JSON message: the object refuses it, and so does the handshake.
    const json = unique('handshake-json');
    await create(json, 'application/json', '[{"a":1},{"b":2}]');
    const tail = (await fetch(`${base()}/${json}?offset=-1`)).headers.get('stream-next-offset')!;
    const inside = tail.replace(/\d+$/, (p) => '1'.padStart(p.length, '0'));
    expect(await handshakeStatus(`/v1/stream/${json}?offset=${inside}&live=ws`)).toBe(400);
  });
});

describe('WebSocket append', () => {
  it('appends text and acknowledges each append with its offset, seen by followers', async () => {
    const name = unique('append-text');
    await create(name, 'text/plain');
    const writer = await Client.open(name, 'offset=now&live=ws');
    await writer.expect('control');
    const reader = await Client.open(name, 'offset=now&live=ws');
    await reader.expect('control');

    writer.send({ type: 'append', id: 'a1', data: 'hello ' });
    writer.send({ type: 'append', id: 2, data: 'wörld' });
    const acks: Record<string, any>[] = [];
    while (acks.length < 2) {
      const message = await writer.next();
      if (message.kind === 'text' && message.json.type === 'ack') acks.push(message.json);
    }
    expect(acks.map((a) => a.id)).toEqual(['a1', 2]);
    expect(acks.map((a) => a.status)).toEqual([204, 204]);
    const seen = await follow(reader, (c) => c.streamNextOffset === acks[1].streamNextOffset);
    expect(seen.bytes.toString()).toBe('hello wörld');
    expect((await readAll(name)).toString()).toBe('hello wörld');
    writer.ws.close();
    reader.ws.close();
  });

  it('appends JSON values, flattening a top-level array as POST does', async () => {
    const name = unique('append-json');
    await create(name, 'application/json');
    const client = await Client.open(name, 'offset=-1&live=ws');
    await client.expect('control');
    client.send({ type: 'append', id: 1, data: { n: 1 } });
    client.send({ type: 'append', id: 2, data: [2, 'three', null] });
    client.send({ type: 'append', id: 3, data: null });
    client.send({ type: 'append', id: 4, data: [] });
    const replies: Record<string, any>[] = [];
    const items: unknown[] = [];
    let offset = '';
    while (replies.length < 4 || offset !== replies[2].streamNextOffset) {
      const message = await client.next();
      if (message.kind !== 'text') throw new Error('binary message on a JSON stream');
      const json = message.json;
      if (json.type === 'data') items.push(...(json.items as unknown[]));
      else if (json.type === 'control') offset = json.streamNextOffset as string;
      else replies.push(json);
    }
    expect(replies.map((r) => [r.type, r.id, r.status])).toEqual([
      ['ack', 1, 204],
      ['ack', 2, 204],
      ['ack', 3, 204],
      ['error', 4, 400],
    ]);
    expect(items).toEqual([{ n: 1 }, 2, 'three', null, null]);
    const body = await fetch(`${base()}/${name}?offset=-1`).then((r) => r.json());
    expect(body).toEqual([{ n: 1 }, 2, 'three', null, null]);
    client.ws.close();
  });

  it('appends bytes from binary frames with a JSON header', async () => {
    const name = unique('append-bin');
    await create(name, 'application/octet-stream');
    const client = await Client.open(name, 'offset=now&live=ws');
    await client.expect('control');
    const payload = Buffer.from([0, 255, 1, 254, 0]);
    client.send(binaryFrame({ type: 'append', id: 9, producerId: 'bin', producerEpoch: 0, producerSeq: 0 }, payload));
    let ack: Record<string, any> | undefined;
    const data: Buffer[] = [];
    while (!ack || data.length === 0) {
      const message = await client.next();
      if (message.kind === 'binary') data.push(message.bytes);
      else if (message.json.type === 'ack') ack = message.json;
    }
    expect(ack).toMatchObject({ id: 9, status: 200, producerEpoch: 0, producerSeq: 0 });
    expect(Buffer.concat(data).equals(payload)).toBe(true);
    expect((await readAll(name)).equals(payload)).toBe(true);
    client.ws.close();
  });

  it('follows the rules and errors of POST, and keeps the socket open after them', async () => {
    const name = unique('rules');
    await create(name, 'text/plain');
    const client = await Client.open(name, 'offset=now&live=ws');
    await client.expect('control');
    const reply = async (frame: object) => {
      client.send(frame);
      return client.reply();
    };
    expect(await reply({ type: 'append', id: 1 })).toMatchObject({ type: 'error', id: 1, status: 400 });
    expect(await reply({ type: 'append', id: 2, data: 'x', producerId: 'p' })).toMatchObject({
      type: 'error',
      status: 400,
      message: expect.stringContaining('Producer'),
    });
    expect(await reply({ type: 'append', id: 3, data: 'x', producerId: 'p', producerEpoch: -1, producerSeq: 0 }))
      .toMatchObject({ type: 'error', status: 400 });
    expect(await reply({ type: 'append', id: 31, data: 'x', producerId: 'p', producerEpoch: 0, producerSeq: 1.5 }))
      .toMatchObject({ type: 'error', id: 31, status: 400 });
    expect(await reply({ type: 'append', id: 4, data: 'x', streamSeq: 'b' })).toMatchObject({ type: 'ack', status: 204 });
    expect(await reply({ type: 'append', id: 5, data: 'y', streamSeq: 'a' })).toMatchObject({ type: 'error', status: 409 });
    expect(await reply({ type: 'append', id: 6, data: 'z', close: true })).toMatchObject({
      type: 'ack',
      id: 6,
      streamClosed: true,
    });
    // The stream is closed: the socket ends with 1000 after the final control.
    expect((await client.closed).code).toBe(1000);
    expect((await readAll(name)).toString()).toBe('xz');

    // A new socket on the closed stream gets POST's 409 for appends.
    const again = await Client.open(name, 'offset=now&live=ws');
    const control = await again.expect('control');
    expect(control.streamClosed).toBe(true);
    expect((await again.closed).code).toBe(1000);
  });

  it('deduplicates a producer across a reconnect', async () => {
    const name = unique('dedupe');
    await create(name, 'text/plain');
    const producer = { producerId: 'writer-1', producerEpoch: 0 };
    // First connection: send five appends and drop the socket before reading the acks.
    const first = await Client.open(name, 'offset=now&live=ws');
    await first.expect('control');
    for (let seq = 0; seq < 5; seq++) {
      first.send({ type: 'append', id: seq, data: `[${seq}]`, ...producer, producerSeq: seq });
    }
    // Wait until the server has the first three, then vanish.
    const deadline = Date.now() + 10_000;
    while (!(await readAll(name)).toString().includes('[2]')) {
      if (Date.now() > deadline) throw new Error('appends did not arrive');
      await new Promise((r) => setTimeout(r, 20));
    }
    first.ws.close();
    await first.closed;

    // Reconnect and retry everything from seq 0, as a writer unsure of its acks does.
    const second = await Client.open(name, 'offset=now&live=ws');
    await second.expect('control');
    for (let seq = 0; seq < 7; seq++) {
      second.send({ type: 'append', id: seq, data: `[${seq}]`, ...producer, producerSeq: seq });
    }
    const acks: Record<string, any>[] = [];
    while (acks.length < 7) acks.push(await second.reply());
    acks.forEach((ack, seq) => {
      expect(ack).toMatchObject({ type: 'ack', id: seq, producerEpoch: 0 });
      if (ack.status === 200) {
        expect(ack.producerSeq).toBe(seq);
      } else {
        // A duplicate: acknowledged with the highest sequence the stream already has.
        expect(ack.status).toBe(204);
        expect(ack.producerSeq).toBeGreaterThanOrEqual(seq);
      }
    });
    expect(acks[0].status).toBe(204); // seq 0 was already there
    expect(acks[6].status).toBe(200);
    expect((await readAll(name)).toString()).toBe('[0][1][2][3][4][5][6]');

    // A stale epoch is refused as POST refuses it.
    second.send({ type: 'append', id: 'old', data: 'x', producerId: 'writer-1', producerEpoch: 0, producerSeq: 7 });
    second.send({ type: 'append', id: 'new', data: '+', producerId: 'writer-1', producerEpoch: 1, producerSeq: 0 });
    second.send({ type: 'append', id: 'stale', data: 'x', producerId: 'writer-1', producerEpoch: 0, producerSeq: 8 });
    const replies: Record<string, any>[] = [];
    while (replies.length < 3) replies.push(await second.reply());
    expect(replies[0]).toMatchObject({ type: 'ack', id: 'old', status: 200 });
    expect(replies[1]).toMatchObject({ type: 'ack', id: 'new', status: 200, producerEpoch: 1 });
    expect(replies[2]).toMatchObject({ type: 'error', id: 'stale', status: 403, producerEpoch: 1 });
    second.ws.close();
  });
});

describe('WebSocket producer frames ahead of their producer', () => {
  // One socket's frames come in order, so a frame ahead of its producer is answered at once, as
  // POST would answer it without the wait it gives requests that may overtake each other. The
  // edge relays its frames to the object as POSTs; those waited up to 500 ms, holding the
  // frames behind them.
  it.each(HOLDERS)('are refused with 409 without waiting when %s holds the socket', async (_, fork) => {
    const { name, client } = await followedWritable('gap', fork);
    const producer = { producerId: 'gap', producerEpoch: 0 };
    client.send({ type: 'append', id: 0, data: 'a;', ...producer, producerSeq: 0 });
    expect(await client.reply()).toMatchObject({ type: 'ack', id: 0, status: 200 });
    client.send({ type: 'append', id: 2, data: 'c;', ...producer, producerSeq: 2 });
    // Its predecessor comes over HTTP 300 ms later: a frame that waited for it would be
    // applied after it.
    const late = new Promise((r) => setTimeout(r, 300)).then(() =>
      fetch(`${base()}/${name}`, {
        method: 'POST',
        headers: { 'content-type': 'text/plain', 'producer-id': 'gap', 'producer-epoch': '0', 'producer-seq': '1' },
        body: 'b;',
      }),
    );
    expect(await client.reply()).toMatchObject({ type: 'error', id: 2, status: 409, producerExpectedSeq: 1, producerReceivedSeq: 2 });
    expect((await late).status).toBe(200);
    expect((await readAll(name)).toString()).toBe('src;a;b;');
    client.ws.close();
  });
});

describe('WebSocket keepalive', () => {
  // A page cannot send WebSocket pings, so a client that wants to tell a quiet socket from a
  // dead one sends {"type":"ping"}; the runtime answers it on a socket the object holds without
  // waking the object, and the edge on one it holds. Spaced differently, it is read and
  // answered all the same.
  it.each(HOLDERS)('answers a ping with a pong when %s holds the socket, which stays open', async (_, fork) => {
    const { name, client } = await followedWritable('ping', fork);
    client.send({ type: 'ping' });
    expect(await client.expect('pong')).toEqual({ type: 'pong' });
    // A second later: pings are answered once a second at most (below).
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    client.ws.send('{ "type": "ping" }');
    expect(await client.expect('pong')).toEqual({ type: 'pong' });
    client.send({ type: 'append', id: 1, data: 'x;' });
    expect(await client.reply()).toMatchObject({ type: 'ack', id: 1, status: 204 });
    expect((await readAll(name)).toString()).toBe('src;x;');
    client.ws.close();
  });

  // A pong is queued whether or not the client reads, so pings sent faster than one a second
  // are not answered: a client that sent them without reading would grow the server's queue.
  it.each(HOLDERS)('answers one ping a second at most when %s holds the socket', async (_, fork) => {
    const { client } = await followedWritable('ping-flood', fork);
    for (let i = 0; i < 200; i++) client.ws.send('{ "type": "ping" }');
    // Frames are answered in turn: the append's ack comes after whatever the pings got.
    client.send({ type: 'append', id: 1, data: 'x;' });
    let pongs = 0;
    for (;;) {
      const message = await client.next();
      if (message.kind !== 'text') continue;
      if (message.json.type === 'pong') pongs++;
      if (message.json.type === 'ack') break;
    }
    expect(pongs).toBeGreaterThanOrEqual(1);
    expect(pongs).toBeLessThan(5);
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    client.ws.send('{ "type": "ping" }');
    expect(await client.expect('pong')).toEqual({ type: 'pong' });
    client.ws.close();
  });
});

describe('WebSocket compression', () => {
  // Browsers and undici offer permessage-deflate on every socket, and a compressed socket costs
  // workerd a zlib state each way for as long as it is open; the server declines the offer
  // unless WS_COMPRESSION is on (RFC 7692: it leaves the extension out of its 101).
  const OFFER = 'permessage-deflate; client_max_window_bits';
  // Compressible, and larger than one deflate window, so that a compressed path would be used.
  const BIG = 'edgestream compresses nothing here; '.repeat(2_000);

  /** `writer` appends BIG and is answered; it and a second reader at the tail both receive it. */
  async function flowsBothWays(baseUrl: string, name: string, writer: Client) {
    const reader = await Client.open(name, 'offset=now&live=ws', baseUrl);
    expect((await reader.expect('control')).upToDate).toBe(true);
    writer.send({ type: 'append', id: 1, data: BIG });
    /** The data `client` receives until it has BIG's length, and the replies among it. */
    const receive = async (client: Client) => {
      const bytes: Buffer[] = [];
      const replies: Record<string, any>[] = [];
      while (Buffer.concat(bytes).length < BIG.length || (client === writer && replies.length === 0)) {
        const message = await client.next();
        if (message.kind === 'binary') bytes.push(message.bytes);
        else if (message.json.type !== 'control') replies.push(message.json);
      }
      return { text: Buffer.concat(bytes).toString(), replies };
    };
    const [written, read] = await Promise.all([receive(writer), receive(reader)]);
    expect(written).toEqual({ text: BIG, replies: [expect.objectContaining({ type: 'ack', id: 1, status: 204 })] });
    expect(read).toEqual({ text: BIG, replies: [] });
    const res = await fetch(`${baseUrl}/v1/stream/${name}?offset=-1`);
    expect(await res.text()).toBe(`src;${BIG}`);
    for (const client of [writer, reader]) client.ws.close();
  }

  it.each(HOLDERS)('declines permessage-deflate when %s holds the socket, which then follows and appends', async (_, fork) => {
    const name = await writable('deflate-off', 'text/plain', 'src;', fork);
    const query = `offset=${fork ? '-1' : 'now'}&live=ws`;
    // Through wrangler's proxy, as clients connect, and on the Worker's own socket.
    for (const url of [server.baseUrl, await server.workerUrl()]) {
      const answer = await handshake(`${url}/v1/stream/${name}?${query}`, { 'sec-websocket-extensions': OFFER });
      expect(answer.status).toBe(101);
      expect(answer.headers['sec-websocket-extensions']).toBeUndefined();
    }
    // undici offers the same, and accepts the answer.
    const writer = await Client.open(name, query);
    expect(writer.ws.extensions).toBe('');
    await follow(writer, (c) => c.upToDate === true);
    await flowsBothWays(server.baseUrl, name, writer);
  });

  describe('with WS_COMPRESSION on', () => {
    let compressing: Awaited<ReturnType<typeof startServer>>;
    beforeAll(async () => {
      compressing = await startServer({ vars: { WS_COMPRESSION: 'true' } });
    });
    afterAll(async () => {
      await compressing?.stop();
    });

    it('agrees to permessage-deflate, and data flows both ways compressed', async () => {
      const name = unique('deflate-on');
      const put = await fetch(`${compressing.baseUrl}/v1/stream/${name}`, {
        method: 'PUT',
        headers: { 'content-type': 'text/plain' },
        body: 'src;',
      });
      expect(put.status).toBe(201);
      const answer = await handshake(`${compressing.baseUrl}/v1/stream/${name}?offset=now&live=ws`, {
        'sec-websocket-extensions': OFFER,
      });
      expect(answer.status).toBe(101);
      expect(answer.headers['sec-websocket-extensions']).toMatch(/^permessage-deflate/);
      const writer = await Client.open(name, 'offset=now&live=ws', compressing.baseUrl);
      expect(writer.ws.extensions).toMatch(/^permessage-deflate/);
      expect((await writer.expect('control')).upToDate).toBe(true);
      await flowsBothWays(compressing.baseUrl, name, writer);
    });
  });
});

describe('WebSocket bad frames', () => {
  async function refused(name: string, frame: string | Buffer) {
    const client = await Client.open(name, 'offset=now&live=ws');
    await client.expect('control');
    client.ws.send(frame);
    const error = await client.expect('error');
    expect(error.status).toBe(400);
    expect(typeof error.message).toBe('string');
    return { error, close: await client.closed };
  }

  it('closes with 1007 for frames that are not JSON or have a broken binary header', async () => {
    const name = unique('bad-1007');
    await create(name, 'text/plain');
    expect((await refused(name, '{"type":"append",')).close.code).toBe(1007);
    expect((await refused(name, 'append please')).close.code).toBe(1007);
    expect((await refused(name, Buffer.from([0, 0]))).close.code).toBe(1007);
    expect((await refused(name, Buffer.from([0, 0, 0, 50, 123]))).close.code).toBe(1007);
    // A string with an unpaired surrogate is JSON, but has no UTF-8 bytes to append.
    const lone = await refused(name, '{"type":"append","data":"\\ud800"}');
    expect(lone.close.code).toBe(1007);
    expect(lone.error.message).toContain('surrogate');
  });

  it('closes with 1008 for frames that break the protocol', async () => {
    const name = unique('bad-1008');
    await create(name, 'text/plain');
    expect((await refused(name, '[1,2]')).close.code).toBe(1008);
    expect((await refused(name, '{"type":"subscribe"}')).close.code).toBe(1008);
    expect((await refused(name, '{"type":"append","data":5}')).close.code).toBe(1008);
    expect((await refused(name, '{"type":"append","data":"x","producerSeq":true}')).close.code).toBe(1008);
    // Stream-Seq is compared as text, so a number (10 sorts before 9) is refused, not misread.
    expect((await refused(name, '{"type":"append","data":"x","streamSeq":10}')).close.code).toBe(1008);
    // Beyond ASCII, a producer id over HTTP has no one text form: refused rather than risk two producers.
    expect((await refused(name, '{"type":"append","data":"x","producerId":"é","producerEpoch":0,"producerSeq":0}')).close.code).toBe(1008);
    expect((await refused(name, '{"type":"append","data":"x","prodcerId":"typo"}')).close.code).toBe(1008);
    expect((await refused(name, binaryFrame('{"type":"append","data":"inline"}'))).close.code).toBe(1008);
    // Nothing was appended, and the stream still serves.
    expect((await readAll(name)).length).toBe(0);
    const client = await Client.open(name, 'offset=now&live=ws');
    await client.expect('control');
    client.send({ type: 'append', id: 1, data: 'ok' });
    let ack: Record<string, any> | undefined;
    while (!ack) {
      const message = await client.next();
      if (message.kind === 'text' && message.json.type !== 'control') ack = message.json;
    }
    expect(ack).toMatchObject({ type: 'ack', id: 1, status: 204 });
    client.ws.close();
  });

  it('applies none of the frames sent after a bad frame, though they arrive before the close', async () => {
    for (const [bad, code] of [
      ['not json', 1007],
      ['{"type":"nope"}', 1008],
    ] as const) {
      const name = unique('bad-then');
      await create(name, 'text/plain');
      // At the tail: the stream's object holds this socket.
      const client = await Client.open(name, 'offset=now&live=ws');
      await client.expect('control');
      client.ws.send(bad);
      for (let i = 0; i < 5; i++) client.send({ type: 'append', id: i, data: `after-bad-${i};` });
      expect((await client.closed).code).toBe(code);
      const replies = client.drain().filter((m) => m.kind === 'text' && m.json.type !== 'control');
      expect(replies).toHaveLength(1);
      expect(replies[0]).toMatchObject({ kind: 'text', json: { type: 'error', status: 400 } });
      expect((await readAll(name)).toString()).toBe('');
    }
  });
});

describe('WebSocket append backpressure', () => {
  // A client may pipeline its appends, but only so many may wait for their turn (1,000 frames
  // or 8 MiB), and only so many a second: past either the socket is closed with 1013 once
  // everything before is answered, and nothing it sent after is applied. Meanwhile the stream
  // serves everyone else.
  describe('with a slow allowance', () => {
    // 300 frames at once, then 50 a second: the flood passes it however fast this machine
    // applies appends. At the default 500 a second, a loaded machine applied all 4,000 frames
    // as they came (the runtime hands the object a socket's next message only once the last
    // one's write is done, so no line builds up there), and the socket was never closed.
    let main: typeof server;
    beforeAll(async () => {
      main = server;
      server = await startServer({ vars: { WS_APPEND_BURST: '300', WS_APPEND_RATE: '50' } });
    });
    afterAll(async () => {
      const slow = server;
      server = main;
      await slow?.stop();
    });
    it.each(HOLDERS)('closes a socket that floods appends with 1013 when %s holds it, applying exactly what it answered', async (_, fork) => {
      const { name, client } = await followedWritable('flood', fork);
      const frames = 4000;
      for (let i = 0; i < frames; i++) client.send({ type: 'append', id: i, data: `${i};` });
      // Other requests are answered while the line drains.
      const other = unique('flood-other');
      await create(other, 'text/plain');
      const post = await fetch(`${base()}/${name}`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'http;' });
      expect(post.status).toBe(204);
      expect((await fetch(`${base()}/${other}`, { method: 'HEAD' })).status).toBe(200);
      const closed = await client.closed;
      expect(closed.code).toBe(1013);
      const replies = client.drain().flatMap((m) => (m.kind === 'text' && m.json.type !== 'control' ? [m.json] : []));
      const last = replies.pop();
      expect(last).toMatchObject({ type: 'error', status: 503, retryAfter: 1 });
      // Refused for its rate, the frame was read: its reply names it, as every append's does.
      if (/faster/.test(String(last?.message))) expect(last?.id).toBe(replies.length);
      else expect(last?.id).toBeUndefined();
      // Every frame before the one past the limit was applied and answered, in order.
      expect(replies.length).toBeGreaterThan(0);
      expect(replies.length).toBeLessThan(frames);
      expect(replies.map((r) => [r.type, r.id])).toEqual(replies.map((_, i) => ['ack', i]));
      const data = (await readAll(name)).toString();
      expect(data.startsWith('src;')).toBe(true);
      const appended = data.slice('src;'.length);
      expect(appended.split('http;')).toHaveLength(2);
      expect(appended.replace('http;', '')).toBe(replies.map((_, i) => `${i};`).join(''));
    }, 60_000);
  });

  // The byte limit is for frames waiting behind another: a frame alone in line is bounded only
  // by MAX_APPEND_BYTES (16 MiB here) and the platform's message limit. Held to 8 MiB, a larger
  // frame was refused 503 "too many waiting" however often it was resent.
  it.each(HOLDERS)('takes a frame over 8 MiB alone in line, and refuses one over MAX_APPEND_BYTES with 413, when %s holds the socket', async (_, fork) => {
    const name = await writable('big-frame', 'application/octet-stream', 'src;', fork);
    const open = async () => {
      const client = await Client.open(name, `offset=${fork ? '-1' : 'now'}&live=ws`);
      await follow(client, (c) => c.upToDate === true);
      return client;
    };
    const reply = async (client: Client, id: number, bytes: number) => {
      client.send(binaryFrame({ type: 'append', id }, Buffer.alloc(bytes, 0x71)));
      return client.reply(30_000);
    };
    const MiB = 1024 * 1024;
    // This client follows without receipts, so once its own 9 MiB reach it, it is past
    // WS_BACKLOG_BYTES and is closed with 1012 after the ack: the rest goes on a new socket.
    const first = await open();
    expect(await reply(first, 1, 9 * MiB)).toMatchObject({ type: 'ack', id: 1, status: 204 });
    first.ws.close();
    const client = await open();
    expect(await reply(client, 2, 17 * MiB)).toMatchObject({ type: 'error', id: 2, status: 413 });
    // The socket stays open.
    expect(await reply(client, 3, 1)).toMatchObject({ type: 'ack', id: 3, status: 204 });
    client.ws.close();
    // A fork's read may end at the end of its inherited range: read on to the tail.
    let stored = 0;
    for (let offset = '-1'; ; ) {
      const res = await fetch(`${base()}/${name}?offset=${offset}`);
      stored += (await res.arrayBuffer()).byteLength;
      offset = res.headers.get('stream-next-offset')!;
      if (res.headers.get('stream-up-to-date') === 'true') break;
    }
    expect(stored).toBe('src;'.length + 9 * MiB + 1);
  }, 60_000);
});

describe('WebSocket access control', () => {
  const secret = 'ws-secret-' + Math.random().toString(36).slice(2);
  let guarded: Awaited<ReturnType<typeof startServer>>;
  const inAnHour = () => Math.floor(Date.now() / 1000) + 3600;
  const token = (ops: string[], expiresAt = inAnHour()) =>
    encodeURIComponent(mintToken({ secret, prefix: 'ws-auth/', ops, expiresAt }));

  beforeAll(async () => {
    guarded = await startServer({ vars: { AUTH_SECRET: secret } });
    const res = await fetch(`${guarded.baseUrl}/v1/stream/ws-auth/a`, {
      method: 'PUT',
      headers: { 'content-type': 'text/plain', authorization: `Bearer ${decodeURIComponent(token(['create']))}` },
    });
    expect(res.status).toBe(201);
  });

  afterAll(async () => {
    await guarded?.stop();
  });

  async function replyTo(client: Client, frame: object) {
    client.send(frame);
    for (;;) {
      const message = await client.next();
      if (message.kind === 'text' && message.json.type !== 'control') return message.json;
    }
  }

  it('needs a read token to connect and an append token to append, as POST does', async () => {
    expect(await handshakeStatus('/v1/stream/ws-auth/a?offset=-1&live=ws', guarded.baseUrl)).toBe(401);
    expect(
      await handshakeStatus(`/v1/stream/other/a?offset=-1&live=ws&token=${token(['read'])}`, guarded.baseUrl),
    ).toBe(403);

    const reader = await Client.open('ws-auth/a', `offset=-1&live=ws&token=${token(['read'])}`, guarded.baseUrl);
    await reader.expect('control');
    expect(await replyTo(reader, { type: 'append', id: 1, data: 'x' })).toMatchObject({
      type: 'error',
      id: 1,
      status: 403,
    });
    reader.ws.close();

    const writer = await Client.open(
      'ws-auth/a',
      `offset=-1&live=ws&token=${token(['read', 'append'])}`,
      guarded.baseUrl,
    );
    await writer.expect('control');
    expect(await replyTo(writer, { type: 'append', id: 2, data: 'y' })).toMatchObject({
      type: 'ack',
      id: 2,
      status: 204,
    });
    writer.ws.close();
  });

  /** A request to the guarded server with a token that may do everything under ws-auth/. */
  const admin = (path: string, init: RequestInit = {}) =>
    fetch(`${guarded.baseUrl}/v1/stream/${path}`, {
      ...init,
      headers: {
        'content-type': 'text/plain',
        ...(init.headers as Record<string, string>),
        authorization: `Bearer ${decodeURIComponent(token(['create', 'append', 'read']))}`,
      },
    });
  /** Waits until `expiresAt` (Unix seconds) has passed. */
  const pastExpiry = (expiresAt: number) => new Promise((r) => setTimeout(r, Math.max(0, expiresAt * 1000 - Date.now()) + 200));
  /** The socket's close, or `null` if it stays open for `ms`. */
  const closedWithin = (client: Client, ms: number) =>
    Promise.race([client.closed, new Promise<null>((r) => setTimeout(() => r(null), ms))]);
  /** When the socket received its close frame (stopped being open), failing after `ms`. */
  const closingWithin = async (client: Client, ms: number) => {
    const deadline = Date.now() + ms;
    while (client.ws.readyState === WebSocket.OPEN) {
      if (Date.now() > deadline) throw new Error('still open');
      await new Promise((r) => setTimeout(r, 50));
    }
    return Date.now();
  };
  /** Everything a socket was sent, as text: its bytes, and its text messages as JSON. */
  const everything = (messages: Message[]) =>
    messages.map((m) => (m.kind === 'binary' ? m.bytes.toString() : JSON.stringify(m.json))).join('');

  it('closes the socket with 4401 at an append after the token expires, which it neither applies nor answers', async () => {
    const name = `ws-auth/${unique('expiring-writer')}`;
    expect((await admin(name, { method: 'PUT' })).status).toBe(201);
    const expiresAt = Math.floor(Date.now() / 1000) + 3;
    const writer = await Client.open(
      name,
      `offset=now&live=ws&token=${token(['read', 'append'], expiresAt)}`,
      guarded.baseUrl,
    );
    await writer.expect('control');
    expect(await replyTo(writer, { type: 'append', id: 'before', data: 'b' })).toMatchObject({ type: 'ack' });
    await pastExpiry(expiresAt);
    writer.drain();
    writer.send({ type: 'append', id: 'after', data: 'a' });
    const closed = await closedWithin(writer, 15_000);
    expect(closed).toMatchObject({ code: 4401 });
    expect(closed?.reason).toContain('token expired');
    expect(everything(writer.drain())).not.toContain('after');
    expect(await (await admin(`${name}?offset=-1`)).text()).toBe('b');
  });

  // A reader's token grants `read` for about 2-3 s: it gets what is appended before its
  // expiry, nothing after, and its socket closes with 4401 (a security probe saw one receive
  // every append for 80 s). The object holds a socket at the tail, with or without receipts;
  // the edge holds one reading a fork's inherited range, and closes it at the expiry itself.
  it.each([
    ['the stream\'s object, with receipts', false, ['edgestream.v3']],
    ['the stream\'s object, without a subprotocol', false, undefined],
    ['the edge (a fork\'s inherited range)', true, undefined],
  ])('a reader gets nothing after its token expires and is closed with 4401, when %s holds the socket', async (_, fork, protocols) => {
    let name = `ws-auth/${unique('expiring-reader')}`;
    expect((await admin(name, { method: 'PUT', body: 'src;' })).status).toBe(201);
    if (fork) {
      const source = name;
      name = `ws-auth/${unique('expiring-fork')}`;
      const res = await admin(name, { method: 'PUT', headers: { 'stream-forked-from': `/v1/stream/${source}` } });
      expect(res.status).toBe(201);
    }
    const expiresAt = Math.floor(Date.now() / 1000) + 3;
    const reader = await Client.open(
      name,
      `offset=${fork ? '-1' : 'now'}&live=ws&token=${token(['read'], expiresAt)}`,
      guarded.baseUrl,
      protocols,
    );
    await follow(reader, (c) => c.upToDate === true);
    expect((await admin(name, { method: 'POST', body: 'before;' })).status).toBe(204);
    // Under edgestream.v3 the append comes as one binary message with its control in a header.
    const before: Message[] = [];
    while (!everything(before).includes('before;')) before.push(await reader.next());
    await pastExpiry(expiresAt);
    // An idle socket is closed at the expiry, with no append to prompt it: by the edge's
    // session, or by the object's alarm.
    await closingWithin(reader, 5_000);
    for (let i = 0; i < 3; i++) {
      expect((await admin(name, { method: 'POST', body: `after-${i};` })).status).toBe(204);
    }
    const closed = await closedWithin(reader, 20_000);
    expect(closed).toMatchObject({ code: 4401 });
    expect(closed?.reason).toContain('token expired');
    expect(everything(reader.drain())).not.toContain('after-');
  });

  it('closes idle sockets held by the object each at its own token\'s expiry, with no append', async () => {
    const name = `ws-auth/${unique('expiring-idle')}`;
    expect((await admin(name, { method: 'PUT' })).status).toBe(201);
    const now = Math.floor(Date.now() / 1000);
    const open = async (expiresAt: number) => {
      const reader = await Client.open(name, `offset=now&live=ws&token=${token(['read'], expiresAt)}`, guarded.baseUrl);
      await follow(reader, (c) => c.upToDate === true);
      return reader;
    };
    // The later one first, so the alarm set for it must be brought forward for the other, and
    // set again for the later one when it fires.
    const late = await open(now + 7);
    const early = await open(now + 3);
    const lasting = await open(now + 3600);
    // The close frame arrives at the expiry (the socket is then closing); workerd completes the
    // close only later, so the close event comes some seconds after.
    expect(await closingWithin(early, 10_000)).toBeGreaterThanOrEqual((now + 3) * 1000);
    expect(late.ws.readyState).toBe(WebSocket.OPEN);
    expect(await closingWithin(late, 10_000)).toBeGreaterThanOrEqual((now + 7) * 1000);
    for (const reader of [early, late]) {
      const closed = await closedWithin(reader, 20_000);
      expect(closed).toMatchObject({ code: 4401 });
      expect(closed?.reason).toContain('token expired');
    }
    // A socket whose token lasts is left open, and still gets what is appended.
    expect((await admin(name, { method: 'POST', body: 'still here' })).status).toBe(204);
    const after: Message[] = [];
    while (!everything(after).includes('still here')) after.push(await lasting.next());
    lasting.ws.close();
  });
});

describe('WebSocket appends past MAX_APPEND_BYTES', () => {
  // Its own server with a 4 KiB limit: a frame over the default 16 MiB would be over the
  // platform's WebSocket message limit first.
  let small: Awaited<ReturnType<typeof startServer>>;
  const at = (name: string) => `${small.baseUrl}/v1/stream/${name}`;
  beforeAll(async () => {
    small = await startServer({ vars: { MAX_APPEND_BYTES: '4096' } });
  });
  afterAll(async () => {
    await small?.stop();
  });

  async function replyTo(client: Client, frame: object) {
    client.send(frame);
    return client.reply();
  }

  it('refuses a frame too large, or too large for a channel above, with 413 as POST does, and stores none of it', async () => {
    const root = unique('wslimit');
    const put = (name: string, headers: Record<string, string>) => fetch(at(name), { method: 'PUT', headers });
    expect((await put(root, { 'content-type': 'application/json', 'stream-channel': 'true' })).status).toBe(201);
    const source = `${root}/s`;
    expect((await put(source, { 'content-type': 'application/json' })).status).toBe(201);
    const client = await Client.open(source, 'offset=now&live=ws', small.baseUrl);
    await client.expect('control');

    // 1,500 tiny messages: 3 KB here, each a whole envelope naming the stream in the channel.
    const tiny = Array(1_500).fill(1);
    expect(JSON.stringify(tiny).length).toBeLessThan(4096);
    const copy = await replyTo(client, { type: 'append', id: 1, data: tiny });
    expect(copy).toMatchObject({ type: 'error', id: 1, status: 413, message: expect.stringContaining('channel') });
    const big = await replyTo(client, { type: 'append', id: 2, data: 'x'.repeat(5_000) });
    expect(big).toMatchObject({ type: 'error', id: 2, status: 413 });
    // The socket stays open and appends within the limits.
    expect(await replyTo(client, { type: 'append', id: 3, data: { n: 1 } })).toMatchObject({ type: 'ack', id: 3, status: 204 });
    client.ws.close();
    const stored = await (await fetch(`${at(source)}?offset=-1`)).json();
    expect(stored).toEqual([{ n: 1 }]);
  }, 30_000);
});

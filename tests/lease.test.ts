// The writer lease (one exclusive appender per stream), end to end against the built Worker on
// wrangler dev: an idempotent producer that sends `Stream-Lease-TTL` becomes the stream's only
// appender until the lease runs out or it sends `Stream-Lease-TTL: 0`; everyone else gets 423
// with `Retry-After` and `Stream-Lease-Expires-At`, and nothing of theirs is stored. The same
// rules hold for append frames on a `live=ws` socket.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'undici';
import { startServer } from '../scripts/dev-server.mjs';

let server: Awaited<ReturnType<typeof startServer>>;

beforeAll(async () => {
  server = await startServer();
});

afterAll(async () => {
  await server?.stop();
});

const base = () => `${server.baseUrl}/v1/stream`;
let counter = 0;
const unique = (prefix: string) => `lease/${prefix}-${process.pid}-${Date.now()}-${counter++}`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const text = { 'content-type': 'text/plain' };

async function call(method: string, name: string, headers: Record<string, string> = {}, body?: string) {
  const res = await fetch(`${base()}/${name}`, { method, headers, body });
  return { status: res.status, headers: res.headers, text: method === 'HEAD' ? '' : await res.text() };
}

async function create(name: string) {
  expect((await call('PUT', name, text)).status).toBe(201);
}

/** A producer's append; `lease` is the `Stream-Lease-TTL` to send, if any. */
function append(name: string, id: string | null, seq: number, body: string, lease?: string, epoch = 0) {
  const headers: Record<string, string> = body === '' ? {} : { ...text };
  if (id !== null) {
    headers['producer-id'] = id;
    headers['producer-epoch'] = String(epoch);
    headers['producer-seq'] = String(seq);
  }
  if (lease !== undefined) headers['stream-lease-ttl'] = lease;
  return call('POST', name, headers, body === '' ? undefined : body);
}

async function contents(name: string) {
  const res = await call('GET', `${name}?offset=-1`);
  expect(res.status).toBe(200);
  return res.text;
}

/** Seconds from now until the RFC 3339 time in `header`. */
function secondsUntil(header: string | null) {
  expect(header).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d/);
  return (Date.parse(header!) - Date.now()) / 1000;
}

function expectRefused(res: { status: number; headers: Headers; text: string }, maxSeconds: number) {
  expect(res.status).toBe(423);
  expect(res.text).toMatch(/writer lease/);
  const retry = Number(res.headers.get('retry-after'));
  expect(retry).toBeGreaterThanOrEqual(1);
  expect(retry).toBeLessThanOrEqual(maxSeconds);
  const left = secondsUntil(res.headers.get('stream-lease-expires-at'));
  expect(left).toBeGreaterThan(0);
  expect(left).toBeLessThanOrEqual(maxSeconds + 1);
}

describe('the writer lease over HTTP', () => {
  it('makes its holder the only appender until it is released', async () => {
    const name = unique('exclusive');
    await create(name);
    // Before any lease, anyone appends.
    expect((await append(name, 'b', 0, 'b0')).status).toBe(200);
    expect((await append(name, null, 0, '-')).status).toBe(204);

    const taken = await append(name, 'a', 0, 'a0', '30');
    expect(taken.status).toBe(200);
    const left = secondsUntil(taken.headers.get('stream-lease-expires-at'));
    expect(left).toBeGreaterThan(25);
    expect(left).toBeLessThanOrEqual(31);
    const head = await call('HEAD', name);
    expect(head.headers.get('stream-lease-expires-at')).toBe(taken.headers.get('stream-lease-expires-at'));

    // Others are refused, with or without producer headers, and whatever they ask.
    expectRefused(await append(name, 'b', 1, 'b1'), 30);
    expectRefused(await append(name, null, 0, 'anon'), 30);
    expectRefused(await append(name, 'b', 1, 'b1', '30'), 30);
    expectRefused(await append(name, 'b', 1, '', '0'), 30);
    // A retry of what another producer appended before the lease is still a duplicate.
    const retry = await append(name, 'b', 0, 'b0');
    expect(retry.status).toBe(204);
    expect(retry.headers.get('producer-seq')).toBe('0');

    // The holder appends without renewing; its expiry stays as it was.
    const plain = await append(name, 'a', 1, 'a1');
    expect(plain.status).toBe(200);
    expect(plain.headers.get('stream-lease-expires-at')).toBe(taken.headers.get('stream-lease-expires-at'));
    expect(await contents(name)).toBe('b0-a0a1');

    // Released with a lease-only request (no body): nothing is appended, the seq is used.
    const tail = (await call('HEAD', name)).headers.get('stream-next-offset');
    const released = await append(name, 'a', 2, '', '0');
    expect(released.status).toBe(204);
    expect(released.headers.get('stream-lease-expires-at')).toBeNull();
    expect(released.headers.get('stream-next-offset')).toBe(tail);
    const after = await call('HEAD', name);
    expect(after.headers.get('stream-lease-expires-at')).toBeNull();
    expect(after.headers.get('stream-next-offset')).toBe(tail);
    expect((await append(name, 'b', 1, 'b1')).status).toBe(200);
    expect((await append(name, 'a', 3, 'a3')).status).toBe(200);
    expect(await contents(name)).toBe('b0-a0a1b1a3');
  });

  it('takes the lease with a request that has no data, and renews it', async () => {
    const name = unique('lease-only');
    await create(name);
    const taken = await append(name, 'a', 0, '', '10');
    expect(taken.status).toBe(204);
    expect(taken.headers.get('producer-seq')).toBe('0');
    const first = secondsUntil(taken.headers.get('stream-lease-expires-at'));
    expect(first).toBeGreaterThan(5);
    expect(first).toBeLessThanOrEqual(11);
    expectRefused(await append(name, 'b', 0, 'x'), 10);
    const renewed = await append(name, 'a', 1, 'a1', '3600');
    expect(renewed.status).toBe(200);
    expect(secondsUntil(renewed.headers.get('stream-lease-expires-at'))).toBeGreaterThan(3500);
    expectRefused(await append(name, 'b', 0, 'x'), 3600);
    // A retried lease-only request is a duplicate like any producer retry, and tells its
    // producer the lease it holds (a retry is how a producer whose answer was lost learns it).
    const retried = await append(name, 'a', 0, '', '10');
    expect(retried.status).toBe(204);
    expect(retried.headers.get('stream-lease-expires-at')).toBe(renewed.headers.get('stream-lease-expires-at'));
    // Another producer's duplicate says nothing of a lease it does not hold.
    expect(await append(name, 'a', 2, '', '0')).toMatchObject({ status: 204 });
    expect((await append(name, 'b', 0, 'b0')).status).toBe(200);
    const dup = await append(name, 'b', 0, 'b0');
    expect(dup.status).toBe(204);
    expect(dup.headers.get('stream-lease-expires-at')).toBeNull();
    expect(await contents(name)).toBe('a1b0');
  });

  it('runs out, fences the former holder once another takes it, and follows the holder across epochs', async () => {
    const name = unique('expiry');
    await create(name);
    expect((await append(name, 'a', 0, 'a0', '1')).status).toBe(200);
    expectRefused(await append(name, 'b', 0, 'b0'), 1);
    // A restarted instance of the holder (a new epoch) keeps the lease; its old epoch is fenced.
    expect((await append(name, 'a', 0, 'a1', undefined, 1)).status).toBe(200);
    expect((await append(name, 'a', 1, 'zombie', undefined, 0)).status).toBe(403);
    await sleep(1200);
    // Run out: another producer takes it, and the former holder is refused from then on.
    const taken = await append(name, 'b', 0, 'b0', '30');
    expect(taken.status).toBe(200);
    expectRefused(await append(name, 'a', 1, 'late', undefined, 1), 30);
    expect(await contents(name)).toBe('a0a1b0');
  });

  it('lets exactly one of many racing producers take a free lease', async () => {
    const name = unique('race');
    await create(name);
    const results = await Promise.all(
      Array.from({ length: 12 }, (_, i) => append(name, `p${i}`, 0, `<${i}>`, '30')),
    );
    const won = results.filter((r) => r.status === 200);
    expect(won.length).toBe(1);
    for (const r of results) if (r.status !== 200) expectRefused(r, 30);
    expect(await contents(name)).toMatch(/^<\d+>$/);
  });

  it('refuses bad lease headers before the stream is touched', async () => {
    const name = unique('bad');
    await create(name);
    for (const value of ['abc', '-1', '1.5', '86401', '']) {
      const res = await append(name, 'a', 0, 'x', value);
      expect(res.status, value).toBe(400);
      expect(res.text).toMatch(/Stream-Lease-TTL/);
    }
    const anonymous = await call('POST', name, { ...text, 'stream-lease-ttl': '30' }, 'x');
    expect(anonymous.status).toBe(400);
    expect(anonymous.text).toMatch(/Producer-Id/);
    expect(await contents(name)).toBe('');
    // With no body, no close and no lease, an append is still refused as empty.
    expect((await append(name, 'a', 0, '')).status).toBe(400);
  });

  it('answers a closed stream as closed, and dies with its stream', async () => {
    const name = unique('lifecycle');
    await create(name);
    expect((await append(name, 'a', 0, 'a0', '60')).status).toBe(200);
    // The holder closes it; another producer learns it is closed, not leased.
    const closed = await call('POST', name, {
      'producer-id': 'a',
      'producer-epoch': '0',
      'producer-seq': '1',
      'stream-closed': 'true',
    });
    expect(closed.status).toBe(204);
    const late = await append(name, 'b', 0, 'b0');
    expect(late.status).toBe(409);
    expect(late.headers.get('stream-closed')).toBe('true');
    // Nothing can append to a closed stream, so HEAD shows no lease on it.
    const head = await call('HEAD', name);
    expect(head.headers.get('stream-closed')).toBe('true');
    expect(head.headers.get('stream-lease-expires-at')).toBeNull();
    // Deleted and created again, the stream has no lease.
    expect((await call('DELETE', name)).status).toBe(204);
    await create(name);
    expect((await call('HEAD', name)).headers.get('stream-lease-expires-at')).toBeNull();
    expect((await append(name, 'b', 0, 'b0')).status).toBe(200);
  });

  it('lets browsers send the lease header and read its expiry', async () => {
    const name = unique('cors');
    await create(name);
    const preflight = await fetch(`${base()}/${name}`, {
      method: 'OPTIONS',
      headers: {
        origin: 'https://app.example',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'stream-lease-ttl',
      },
    });
    expect(preflight.headers.get('access-control-allow-headers')).toMatch(/stream-lease-ttl/);
    const res = await fetch(`${base()}/${name}`, {
      method: 'POST',
      headers: { ...text, origin: 'https://app.example', 'producer-id': 'a', 'producer-epoch': '0', 'producer-seq': '0', 'stream-lease-ttl': '5' },
      body: 'x',
    });
    expect(res.headers.get('access-control-expose-headers')).toMatch(/stream-lease-expires-at/);
  });
});

describe('the writer lease across a hard restart', () => {
  it('is still held, by the same producer, after the server is killed and started again', async () => {
    const name = unique('restart');
    await create(name);
    const taken = await append(name, 'a', 0, 'a0', '600');
    expect(taken.status).toBe(200);
    await server.restart({ hard: true });
    const head = await call('HEAD', name);
    expect(head.headers.get('stream-lease-expires-at')).toBe(taken.headers.get('stream-lease-expires-at'));
    expectRefused(await append(name, 'b', 0, 'b0'), 600);
    expect((await append(name, 'a', 1, 'a1')).status).toBe(200);
    expect(await contents(name)).toBe('a0a1');
  }, 120_000);
});

describe('the writer lease on a live=ws socket', () => {
  /** Opens a socket on `name` and collects its acks and errors by id. */
  async function open(name: string) {
    const ws = new WebSocket(`${base().replace(/^http/, 'ws')}/${name}?offset=now&live=ws`, ['edgestream.v2']);
    const replies = new Map<number, any>();
    const waiters = new Map<number, (m: any) => void>();
    ws.addEventListener('message', (e) => {
      if (typeof e.data !== 'string') return;
      const m = JSON.parse(e.data);
      if ((m.type === 'ack' || m.type === 'error') && typeof m.id === 'number') {
        replies.set(m.id, m);
        waiters.get(m.id)?.(m);
      }
    });
    await new Promise<void>((resolve, reject) => {
      ws.addEventListener('open', () => resolve());
      ws.addEventListener('error', () => reject(new Error('cannot open')));
    });
    let id = 0;
    const send = (frame: Record<string, unknown>) => {
      const n = ++id;
      ws.send(JSON.stringify({ type: 'append', id: n, ...frame }));
      return new Promise<any>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no reply to ${n}`)), 10_000);
        waiters.set(n, (m) => {
          clearTimeout(timer);
          resolve(m);
        });
        if (replies.has(n)) waiters.get(n)!(replies.get(n));
      });
    };
    return { ws, send };
  }

  it('takes, enforces and releases the lease through append frames', async () => {
    const name = unique('ws');
    await create(name);
    const a = await open(name);
    const b = await open(name);
    try {
      const taken = await a.send({ data: 'a0', producerId: 'a', producerEpoch: 0, producerSeq: 0, leaseTtl: 30 });
      expect(taken.type).toBe('ack');
      expect(secondsUntil(taken.leaseExpiresAt)).toBeGreaterThan(25);
      // The same frame again (a resend after a lost ack) is a duplicate that names the lease.
      const again = await a.send({ data: 'a0', producerId: 'a', producerEpoch: 0, producerSeq: 0, leaseTtl: 30 });
      expect(again).toMatchObject({ type: 'ack', status: 204, leaseExpiresAt: taken.leaseExpiresAt });
      const refused = await b.send({ data: 'b0', producerId: 'b', producerEpoch: 0, producerSeq: 0 });
      expect(refused).toMatchObject({ type: 'error', status: 423 });
      expect(refused.retryAfter).toBeGreaterThanOrEqual(1);
      expect(secondsUntil(refused.leaseExpiresAt)).toBeGreaterThan(25);
      const bad = await b.send({ data: 'b0', producerId: 'b', producerEpoch: 0, producerSeq: 0, leaseTtl: 'soon' });
      expect(bad).toMatchObject({ type: 'error', status: 400 });
      const released = await a.send({ producerId: 'a', producerEpoch: 0, producerSeq: 1, leaseTtl: 0 });
      expect(released.type).toBe('ack');
      expect(released.leaseExpiresAt).toBeUndefined();
      const now = await b.send({ data: 'b0', producerId: 'b', producerEpoch: 0, producerSeq: 0 });
      expect(now).toMatchObject({ type: 'ack', status: 200 });
    } finally {
      a.ws.close();
      b.ws.close();
    }
    expect(await contents(name)).toBe('a0b0');
  });
});

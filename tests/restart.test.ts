// Durability across a restart: streams, acknowledged appends and producer state survive
// wrangler dev being killed (SIGKILL, no clean shutdown) and started again on the same state.
import { afterAll, beforeAll, expect, test } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';

let server: Awaited<ReturnType<typeof startServer>>;
const url = (name: string) => `${server.baseUrl}/v1/stream/restart-test/${name}`;

beforeAll(async () => {
  server = await startServer({ vars: { LONG_POLL_TIMEOUT_MS: '1000' } });
});

afterAll(async () => {
  await server?.stop();
});

async function append(name: string, body: string, producer?: { id: string; epoch: number; seq: number }) {
  const headers: Record<string, string> = { 'content-type': 'text/plain' };
  if (producer) {
    headers['producer-id'] = producer.id;
    headers['producer-epoch'] = String(producer.epoch);
    headers['producer-seq'] = String(producer.seq);
  }
  const res = await fetch(url(name), { method: 'POST', headers, body });
  await res.arrayBuffer();
  return res;
}

test('every acknowledged append, stream and producer survives a hard restart', async () => {
  // `untimed` has no TTL or Stream-Seq, so its appends write log rows only and its tail is
  // found again from them; `plain` has a TTL, so its appends rewrite the stream's row too.
  const names = ['plain', 'untimed', 'producer', 'json', 'closed'];
  for (const name of names) {
    const type = name === 'json' ? 'application/json' : 'text/plain';
    const headers: Record<string, string> = { 'content-type': type };
    if (name === 'plain') headers['stream-ttl'] = '3600';
    const res = await fetch(url(name), { method: 'PUT', headers });
    expect(res.status).toBe(201);
  }
  const expected: string[] = [];
  for (let i = 0; i < 50; i++) {
    const res = await append('plain', `line ${i}\n`);
    expect(res.status).toBe(204);
    expected.push(`line ${i}\n`);
  }
  for (let seq = 0; seq < 10; seq++) {
    const res = await append('producer', `p${seq};`, { id: 'writer-1', epoch: 3, seq });
    expect(res.status).toBe(200);
  }
  const big = 'x'.repeat(3 * 1024 * 1024); // spans several SQLite rows
  expect((await append('plain', big)).status).toBe(204);
  expected.push(big);
  const untimed: string[] = [];
  for (const body of ['a', 'bc', big, 'def']) {
    expect((await append('untimed', body)).status).toBe(204);
    untimed.push(body);
  }
  const untimedTail = (await fetch(url('untimed'), { method: 'HEAD' })).headers.get('stream-next-offset');
  const jsonRes = await fetch(url('json'), { method: 'POST', headers: { 'content-type': 'application/json' }, body: '[{"a":1},{"b":2}]' });
  expect(jsonRes.status).toBe(204);
  const closeRes = await fetch(url('closed'), { method: 'POST', headers: { 'stream-closed': 'true' } });
  expect(closeRes.status).toBe(204);
  const tailBefore = (await fetch(url('plain'), { method: 'HEAD' })).headers.get('stream-next-offset');

  await server.restart({ hard: true });

  const plain = await fetch(url('plain'));
  expect(plain.status).toBe(200);
  expect(await plain.text()).toBe(expected.join(''));
  expect(plain.headers.get('stream-next-offset')).toBe(tailBefore);
  const head = await fetch(url('plain'), { method: 'HEAD' });
  expect(head.headers.get('stream-ttl')).toBe('3600');

  const afterRestart = await fetch(url('untimed'), { method: 'HEAD' });
  expect(afterRestart.headers.get('stream-next-offset')).toBe(untimedTail);
  const more = await append('untimed', 'ghij');
  expect(more.status).toBe(204);
  const position = (offset: string | null) => Number(offset?.split('_')[1]);
  expect(position(untimedTail)).toBe(untimed.join('').length);
  expect(position(more.headers.get('stream-next-offset'))).toBe(position(untimedTail) + 'ghij'.length);
  const untimedRead = await fetch(url('untimed'));
  expect(await untimedRead.text()).toBe([...untimed, 'ghij'].join(''));
  expect(untimedRead.headers.get('stream-next-offset')).toBe(more.headers.get('stream-next-offset'));

  const producer = await fetch(url('producer'));
  expect(await producer.text()).toBe(Array.from({ length: 10 }, (_, i) => `p${i};`).join(''));
  // The producer's state survived: a retry is a duplicate, a gap is refused, the next seq works.
  const dup = await append('producer', 'p9;', { id: 'writer-1', epoch: 3, seq: 9 });
  expect(dup.status).toBe(204);
  const gap = await append('producer', 'p12;', { id: 'writer-1', epoch: 3, seq: 12 });
  expect(gap.status).toBe(409);
  expect(gap.headers.get('producer-expected-seq')).toBe('10');
  const stale = await append('producer', 'old;', { id: 'writer-1', epoch: 2, seq: 0 });
  expect(stale.status).toBe(403);
  const next = await append('producer', 'p10;', { id: 'writer-1', epoch: 3, seq: 10 });
  expect(next.status).toBe(200);

  expect(await (await fetch(url('json'))).json()).toEqual([{ a: 1 }, { b: 2 }]);
  const closed = await fetch(url('closed'), { method: 'HEAD' });
  expect(closed.headers.get('stream-closed')).toBe('true');
  expect((await append('closed', 'more')).status).toBe(409);
}, 120_000);

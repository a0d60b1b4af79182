// The npm package inside a Cloudflare Worker: tests/in-worker/worker.js imports `edgestream` as a
// user's Worker would (wrangler bundles it with its esbuild, `workerd` conditions) and uses it
// against edgestream's own server: wasm load, reads, live follows, appends, a producer whose
// lingering batch is sent under ctx.waitUntil, tables, a service binding as the `fetch` option,
// and a Durable Object that follows a stream across requests.
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';

let upstream: Awaited<ReturnType<typeof startServer>>;
let worker: Awaited<ReturnType<typeof startServer>>;
/** The same Worker at a compatibility date before 2025-05-05: no WeakRef, no FinalizationRegistry. */
let oldWorker: Awaited<ReturnType<typeof startServer>>;
let project: string;
const e = encodeURIComponent;
const streamUrl = (name: string) => `${upstream.baseUrl}/v1/stream/in-worker/${name}-${Date.now()}`;
async function call(route: string, params: Record<string, string>, at = worker) {
  const res = await fetch(`${at.baseUrl}${route}?${new URLSearchParams(params)}`);
  return { status: res.status, body: (await res.json()) as any };
}
async function createJson(url: string, items: unknown[] = []) {
  expect((await fetch(url, { method: 'PUT', headers: { 'content-type': 'application/json' } })).status).toBe(201);
  for (const item of items) {
    const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(item) });
    expect(res.status).toBeLessThan(300);
  }
}
async function readAll(url: string) {
  return (await fetch(`${url}?offset=-1`)).json();
}

beforeAll(async () => {
  upstream = await startServer();
  // A user's project: the Worker and the package under node_modules (the package is js/).
  project = mkdtempSync(path.join(tmpdir(), 'edgestream-in-worker-'));
  mkdirSync(path.join(project, 'node_modules'));
  symlinkSync(path.resolve('js'), path.join(project, 'node_modules', 'edgestream'));
  for (const file of ['worker.js', 'wrangler.toml']) copyFileSync(path.join('tests', 'in-worker', file), path.join(project, file));
  worker = await startServer({ config: path.join(project, 'wrangler.toml') });
});

afterAll(async () => {
  await worker?.stop();
  await oldWorker?.stop();
  await upstream?.stop();
  if (project) rmSync(project, { recursive: true, force: true });
});

test('the wasm loads in workerd (imported as a compiled module), for concurrent first requests', async () => {
  const answers = await Promise.all(Array.from({ length: 6 }, () => call('/init', {})));
  expect(answers).toEqual(Array(6).fill({ status: 200, body: { ok: true } }));
});

test('create, append and read from a request handler', async () => {
  const url = streamUrl('append');
  const appended = await call('/append', { url, data: JSON.stringify({ a: 1 }) });
  expect(appended.status).toBe(200);
  expect(typeof appended.body.offset).toBe('string');
  expect(await readAll(url)).toEqual([{ a: 1 }]);
  expect(await call('/read', { url })).toEqual({ status: 200, body: { items: [{ a: 1 }] } });
});

test('at a compatibility date without WeakRef and FinalizationRegistry, the package loads, reads and follows', async () => {
  // Started here: a Worker whose global scope throws does not start at all.
  const config = readFileSync(path.join(project, 'wrangler.toml'), 'utf8');
  writeFileSync(path.join(project, 'old.toml'), config.replace(/^compatibility_date = .*$/m, 'compatibility_date = "2024-09-23"'));
  oldWorker = await startServer({ config: path.join(project, 'old.toml') });
  const url = streamUrl('old-date');
  await createJson(url, [{ n: 1 }]);
  expect(await call('/follow', { url, live: 'sse', data: JSON.stringify({ n: 2 }) }, oldWorker)).toEqual({
    status: 200,
    body: { first: [{ n: 1 }], next: [{ n: 2 }], mode: 'sse' },
  });
}, 120_000);

for (const live of ['sse', 'long-poll', 'ws']) {
  test(`a live follow over ${live} inside a request`, async () => {
    const url = streamUrl(`follow-${live}`);
    await createJson(url, [{ n: 1 }]);
    const { status, body } = await call('/follow', { url, live, data: JSON.stringify({ n: 2 }) });
    expect(status).toBe(200);
    expect(body).toEqual({ first: [{ n: 1 }], next: [{ n: 2 }], mode: live });
  });
}

for (const live of ['sse', 'long-poll']) {
  test(`the fetch option: calls, a producer and a follow over ${live} through a service binding`, async () => {
    const url = streamUrl(`binding-${live}`);
    expect(await call('/via-binding', { url, live })).toEqual({
      status: 200,
      body: { first: [{ n: 1 }, { n: 2 }], next: [{ n: 3 }], mode: live },
    });
    expect(await readAll(url)).toEqual([{ n: 1 }, { n: 2 }, { n: 3 }]);
  });
}

/** The stream's messages once there are `count` of them (a producer's batch lands after the response). */
async function readUntil(url: string, count: number) {
  let read: unknown[] = [];
  for (let i = 0; i < 100; i++) {
    read = await readAll(url);
    if (read.length >= count) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  return read;
}

test('a response that streams a live follow as NDJSON', async () => {
  const url = streamUrl('ndjson');
  await createJson(url, [{ n: 1 }]);
  const offset = (await fetch(url, { method: 'HEAD' })).headers.get('stream-next-offset')!;
  const res = await fetch(`${worker.baseUrl}/ndjson?${new URLSearchParams({ url, offset })}`);
  expect(res.headers.get('content-type')).toBe('application/x-ndjson');
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let text = '';
  // Appended once the response is open: read live.
  for (const n of [2, 3]) {
    expect((await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ n }) })).status).toBeLessThan(300);
    while (!text.endsWith(`{"n":${n}}\n`)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`the response ended after ${JSON.stringify(text)}`);
      text += value;
    }
  }
  expect(text).toBe('{"n":2}\n{"n":3}\n');
  await reader.cancel();
});

test("a producer's lingering batch is sent after the response, under ctx.waitUntil", async () => {
  const url = streamUrl('producer');
  await createJson(url);
  const produce = (id: string, items: unknown[], wait = false) => call('/produce', { url, id, items: JSON.stringify(items), ...(wait ? { wait: '1' } : {}) });
  expect(await produce('request-1', [{ i: 1 }, { i: 2 }])).toEqual({ status: 200, body: { queued: true } });
  expect(await readUntil(url, 2)).toEqual([{ i: 1 }, { i: 2 }]);
  // A request sent again with the same producer id (an idempotency key) appends nothing more;
  // another request's producer appends after it.
  expect((await produce('request-1', [{ i: 1 }, { i: 2 }], true)).status).toBe(200);
  expect((await produce('request-2', [{ i: 3 }])).status).toBe(200);
  expect(await readUntil(url, 3)).toEqual([{ i: 1 }, { i: 2 }, { i: 3 }]);
});

test("a producer made in one request fails in the next with workerd's own error; a Durable Object's serves every request", async () => {
  const url = streamUrl('shared');
  await createJson(url);
  expect(await call('/shared', { url, data: '1' })).toEqual({ status: 200, body: { ok: true } });
  const second = await call('/shared', { url, data: '2' });
  expect(second.status).toBe(500);
  expect(second.body.error.message).toMatch(/Cannot perform I\/O on behalf of a different request/);
  expect(await readAll(url)).toEqual([1]);
  // In a Durable Object, one producer serves each request to the object.
  const inObject = streamUrl('object-producer');
  await createJson(inObject);
  for (const data of ['3', '4']) expect((await call('/do', { produce: inObject, data })).status).toBe(200);
  expect(await readAll(inObject)).toEqual([3, 4]);
});

test('a table reads in a request; a Durable Object follows one across requests', async () => {
  const url = streamUrl('table');
  await createJson(url);
  expect((await call('/change', { url, key: 'a', name: 'Ada' })).status).toBe(200);
  expect(await call('/table', { url })).toEqual({ status: 200, body: { rows: { a: { name: 'Ada' } } } });
  // The object's table, started by one request, follows appends made by later ones.
  expect(await call('/do', { start: url })).toEqual({ status: 200, body: { size: 1 } });
  expect((await call('/change', { url, key: 'b', name: 'Bob' })).status).toBe(200);
  let state: any;
  for (let i = 0; i < 100; i++) {
    state = (await call('/do', {})).body;
    if (state.rows.b) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  expect(state.rows).toEqual({ a: { name: 'Ada' }, b: { name: 'Bob' } });
  // Its store saved a snapshot in the object's storage, up to the stream's end.
  const end = (await fetch(url, { method: 'HEAD' })).headers.get('stream-next-offset');
  let saved: any;
  for (let i = 0; i < 100; i++) {
    saved = (await call('/do', { saved: '1' })).body;
    if (saved?.offset === end) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  expect(saved).toMatchObject({ version: 1, offset: end, rows: [['user', 'a', { name: 'Ada' }], ['user', 'b', { name: 'Bob' }]] });
});

// Subscriptions beyond what the conformance suite covers. A stream keeps its list of linked
// subscriptions in memory (worker/src/object/store.rs); a subscription that links a stream
// after the stream has already appended must still be told of the next append.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';

let server: Awaited<ReturnType<typeof startServer>>;
const url = (path: string) => `${server.baseUrl}/v1/stream/${path}`;

beforeAll(async () => {
  server = await startServer({ vars: { WEBHOOK_ALLOW_LOCALHOST: 'true' } });
});

afterAll(async () => {
  await server?.stop();
});

/** A webhook receiver on 127.0.0.1 that records each notification's JSON body. */
async function receiver() {
  const bodies: any[] = [];
  const srv = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      bodies.push(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}/hook`, bodies, close: () => new Promise((r) => srv.close(r)) };
}

async function until(check: () => boolean, ms = 5_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

const json = { 'content-type': 'application/json' };

describe('a subscription that links a stream with history', () => {
  test('is notified of the stream’s next append', async () => {
    const prefix = `late-${Date.now()}`;
    const stream = `${prefix}/s`;
    expect((await fetch(url(stream), { method: 'PUT', headers: json })).status).toBe(201);
    // Appends before any subscription exists: the stream learns it has no subscribers.
    for (let i = 0; i < 3; i++) {
      expect((await fetch(url(stream), { method: 'POST', headers: json, body: JSON.stringify({ i }) })).status).toBe(204);
    }
    const hook = await receiver();
    const id = `sub-${prefix}`;
    try {
      const created = await fetch(url(`__ds/subscriptions/${id}`), {
        method: 'PUT',
        headers: json,
        body: JSON.stringify({ type: 'webhook', pattern: `${prefix}/*`, webhook: { url: hook.url }, lease_ttl_ms: 1_000 }),
      });
      expect(created.status).toBe(201);
      const before = hook.bodies.length;
      expect((await fetch(url(stream), { method: 'POST', headers: json, body: '{"after":true}' })).status).toBe(204);
      const notified = await until(() =>
        hook.bodies.slice(before).some((b) => b.streams?.some((s: any) => s.path === stream && s.has_pending)),
      );
      expect(notified, 'no webhook named the stream after its append').toBe(true);
    } finally {
      await fetch(url(`__ds/subscriptions/${id}`), { method: 'DELETE' });
      await hook.close();
    }
  });
});

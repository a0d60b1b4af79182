// Rotating AUTH_SECRET: with AUTH_SECRET_PREVIOUS set, access tokens and wake-token MACs made
// with either secret are accepted, and what the server issues is made with AUTH_SECRET alone.
// One state directory is served in turn before, during and after a rotation, as an operator
// would roll it out (README, "Access control").
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test, vi } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';
import { mintToken } from '../scripts/token.mjs';

const OLD = 'rotation-old-' + Math.random().toString(36).slice(2);
const NEW = 'rotation-new-' + Math.random().toString(36).slice(2);
const inAnHour = () => Math.floor(Date.now() / 1000) + 3600;
const mint = (secret: string, ops = ['read']) => mintToken({ secret, prefix: '', ops, expiresAt: inAnHour() });
const bearer = (t: string) => ({ authorization: `Bearer ${t}` });
const WARNING = 'AUTH_SECRET_PREVIOUS is set without AUTH_SECRET';

let state: string;
type Server = Awaited<ReturnType<typeof startServer>>;
let server: Server | undefined;
const serve = async (vars: Record<string, string>) => {
  await server?.stop();
  server = undefined;
  server = await startServer({ persistTo: state, vars });
  return server;
};
const url = (s: Server, path: string) => `${s.baseUrl}/v1/stream/${path}`;

const SUB = 'rotation-jobs';
type Claim = { wake_id: string; generation: number; token: string };

/** Claims the subscription's wake (as soon as it has one) with an admin token made with `secret`. */
async function claim(s: Server, secret: string): Promise<Claim> {
  const headers = { 'content-type': 'application/json', ...bearer(mint(secret, ['admin'])) };
  for (let i = 0; i < 100; i++) {
    const res = await fetch(url(s, `__ds/subscriptions/${SUB}/claim`), { method: 'POST', headers, body: '{"worker":"w"}' });
    if (res.status === 200) return (await res.json()) as Claim;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error('never claimable');
}

/** `POST .../release` of `wake` with the wake token `token`. */
const release = (s: Server, wake: Claim, token: string) =>
  fetch(url(s, `__ds/subscriptions/${SUB}/release`), {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...bearer(token) },
    body: JSON.stringify({ wake_id: wake.wake_id, generation: wake.generation }),
  });

/** The MAC a wake token carries, as the server makes it with `secret` (README, Subscriptions). */
const wakeMac = (secret: string, token: string) => {
  const [nonce] = token.split('.');
  return createHmac('sha256', secret).update(`edgestream-wake-token:${SUB}:${nonce}`).digest('base64url');
};

/** A wake claimed before the rotation, under the old secret alone, and one claimed during it. */
let before: Claim;
let during: Claim;

beforeAll(async () => {
  state = mkdtempSync(join(tmpdir(), 'edgestream-rotation-'));
  const s = await serve({ AUTH_SECRET: OLD });
  const all = { 'content-type': 'application/json', ...bearer(mint(OLD, ['admin', 'create', 'append', 'read'])) };
  expect((await fetch(url(s, 'rot/wake'), { method: 'PUT', headers: all })).status).toBe(201);
  const body = JSON.stringify({ type: 'pull-wake', streams: ['rot/jobs'], wake_stream: 'rot/wake', lease_ttl_ms: 600000 });
  expect((await fetch(url(s, `__ds/subscriptions/${SUB}`), { method: 'PUT', headers: all, body })).status).toBe(201);
  expect((await fetch(url(s, 'rot/jobs'), { method: 'PUT', headers: all, body: '{"job":1}' })).status).toBe(201);
  before = await claim(s, OLD);
  expect(before.token.split('.')[1]).toBe(wakeMac(OLD, before.token));
}, 120_000);

afterAll(async () => {
  await server?.stop();
  if (state) rmSync(state, { recursive: true, force: true });
});

test('during a rotation, tokens made with either secret are accepted, and new wake tokens are made with AUTH_SECRET', async () => {
  const s = await serve({ AUTH_SECRET: NEW, AUTH_SECRET_PREVIOUS: OLD });
  const read = (t?: string) => fetch(url(s, 'rot/jobs'), { headers: t === undefined ? {} : bearer(t) });
  expect((await read(mint(OLD))).status, 'a token made with the previous secret').toBe(200);
  expect((await read(mint(NEW))).status, 'a token made with the current secret').toBe(200);
  expect((await read(mint('neither-secret'))).status, 'a token made with neither').toBe(401);
  expect((await read()).status, 'no token').toBe(401);
  // The previous secret's signature over other claims is no more valid than any other forgery.
  const [, oldSignature] = mint(OLD).split('.');
  const widened = Buffer.from(JSON.stringify({ prefix: '', ops: ['read', 'delete'], exp: inAnHour() })).toString('base64url');
  expect((await read(`${widened}.${oldSignature}`)).status, 'claims edited after signing').toBe(401);
  // A token made with the previous secret is still held to its prefix and operations.
  const narrow = mintToken({ secret: OLD, prefix: 'rot/other', ops: ['read'], expiresAt: inAnHour() });
  expect((await read(narrow)).status, 'outside its prefix').toBe(403);

  // The wake claimed before the rotation: its token's MAC was made with the old secret.
  const forged = `${before.token.split('.')[0]}.${wakeMac('neither-secret', before.token)}`;
  expect((await release(s, before, forged)).status, 'a wake token MAC made with neither secret').toBe(401);
  expect((await release(s, before, before.token)).status, 'a wake token issued before the rotation').toBe(204);

  // What the server issues now carries a MAC made with AUTH_SECRET alone.
  during = await claim(s, OLD);
  expect(during.token.split('.')[1]).toBe(wakeMac(NEW, during.token));
  expect(during.token.split('.')[1]).not.toBe(wakeMac(OLD, during.token));
  expect(s.log()).not.toContain(WARNING);
});

test('once AUTH_SECRET_PREVIOUS is removed, what was made with the old secret is refused', async () => {
  const s = await serve({ AUTH_SECRET: NEW });
  const read = (t: string) => fetch(url(s, 'rot/jobs'), { headers: bearer(t) });
  expect((await read(mint(OLD))).status).toBe(401);
  expect((await read(mint(NEW))).status).toBe(200);
  // The wake claimed during the rotation was issued with the new secret, so its token lives
  // on; the same token with a MAC made with the old secret is refused at the edge.
  const oldMac = `${during.token.split('.')[0]}.${wakeMac(OLD, during.token)}`;
  expect((await release(s, during, oldMac)).status).toBe(401);
  expect((await release(s, during, during.token)).status).toBe(204);
});

test('AUTH_SECRET_PREVIOUS alone keeps access closed: it is used as AUTH_SECRET, and the Worker says so once', async () => {
  const s = await serve({ AUTH_SECRET_PREVIOUS: NEW });
  const read = (t?: string) => fetch(url(s, 'rot/jobs'), { headers: t === undefined ? {} : bearer(t) });
  expect((await read()).status, 'no token').toBe(401);
  expect((await read(mint('neither-secret'))).status, 'a token made with another secret').toBe(401);
  for (let i = 0; i < 3; i++) expect((await read(mint(NEW))).status).toBe(200);
  // Wake tokens are issued, and checked, with it.
  const wake = await claim(s, NEW);
  expect(wake.token.split('.')[1]).toBe(wakeMac(NEW, wake.token));
  expect((await release(s, wake, wake.token)).status).toBe(204);
  // The runtime's log reaches wrangler's output a moment after the request that wrote it (a
  // CI run once counted 0 here): wait for the warning, then give a second one time to show.
  await vi.waitFor(() => expect(s.log()).toContain(WARNING), { timeout: 10_000, interval: 100 });
  await new Promise((r) => setTimeout(r, 500));
  expect(s.log().split(WARNING).length - 1, s.log()).toBe(1);
  expect(s.log()).not.toContain('access is open');
});

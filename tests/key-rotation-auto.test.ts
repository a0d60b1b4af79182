// Automatic rotation of the webhook signing key (README, "Rotating the webhook signing key"):
// with KEY_ROTATION_MS set, the registry rotates the key on its alarm every period, with the
// overlap KEY_ROTATION_OVERLAP_MS, once per period however it is woken or restarted. Every
// delivery is verified the way a receiver verifies it, by the `kid` its signature names.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';
import { hookServer, verifiedKid, type Hit, type Jwk } from './support/webhook';

const PERIOD = 4000;
const OVERLAP = 1500;

let server: Awaited<ReturnType<typeof startServer>>;
const url = (path: string) => `${server.baseUrl}/v1/stream/${path}`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

type KeyState = { kid: string; status: string; signs_from_ms: number; retires_ms: number | null };
type Keys = { keys: KeyState[]; now_ms: number; next_rotation_ms: number | null };

const keys = async (): Promise<Keys> => {
  const res = await fetch(url('__ds/keys'));
  expect(res.status).toBe(200);
  return (await res.json()) as Keys;
};
const jwks = async () => ((await (await fetch(url('__ds/jwks.json'))).json()) as { keys: Jwk[] }).keys;

let deliveries: Hit[] = [];
let hook: Awaited<ReturnType<typeof hookServer>>;
let hookUrl: string;


beforeAll(async () => {
  hook = await hookServer((_, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"done":true}');
  });
  deliveries = hook.hits;
  hookUrl = hook.url;
  // FAULT_MARKER (in no path here): subscriptions keep the schedule for 1 s, not 5 minutes.
  server = await startServer({
    vars: {
      WEBHOOK_ALLOW_LOCALHOST: 'true',
      FAULT_MARKER: 'never-in-a-path',
      KEY_ROTATION_MS: String(PERIOD),
      KEY_ROTATION_OVERLAP_MS: String(OVERLAP),
    },
  });
});

afterAll(async () => {
  await server?.stop();
  await hook?.close();
});

test('the registry rotates the key by itself every period, once per period across a restart, and deliveries verify throughout', async () => {
  const SUB = `auto-rotation-${Date.now()}`;
  const STREAM = `kra/${SUB}`;
  expect((await fetch(url(STREAM), { method: 'PUT', headers: { 'content-type': 'application/json' } })).status).toBe(201);
  const made = await fetch(url(`__ds/subscriptions/${SUB}`), {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'webhook', streams: [STREAM], webhook: { url: hookUrl } }),
  });
  expect(made.status).toBe(201);
  const first = await keys();
  expect(first.keys).toHaveLength(1);
  // Due a period after the key was made (on first use, just now).
  expect(first.next_rotation_ms).toBeGreaterThan(first.now_ms);
  expect(first.next_rotation_ms).toBeLessThanOrEqual(first.now_ms + PERIOD);
  // The key set is cached no longer than until then, so a cache made now has the fresh key
  // from the rotation on, long before it signs.
  const set = await fetch(url('__ds/jwks.json'));
  const maxAge = Number(set.headers.get('cache-control')?.match(/max-age=(\d+)/)?.[1]);
  expect(maxAge).toBeGreaterThanOrEqual(1);
  expect(maxAge).toBeLessThanOrEqual(Math.ceil((first.next_rotation_ms! - Date.now()) / 1000) + 1);

  // Every key seen, by kid: when it signs from. Watched with many requests at once, none of
  // which may rotate anything; the server restarts halfway, so the registry starts afresh.
  const seen = new Map<string, number>();
  const signers = new Set<string>();
  let appended = 0;
  const start = Date.now();
  let restarted = false;
  while (Date.now() - start < 3.5 * PERIOD) {
    const answers = await Promise.all(Array.from({ length: 8 }, () => keys()));
    for (const a of answers) for (const k of a.keys) seen.set(k.kid, k.signs_from_ms);
    if (!restarted && Date.now() - start > 1.6 * PERIOD) {
      await server.restart();
      restarted = true;
    }
    expect((await fetch(url(STREAM), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ n: ++appended }) })).status).toBe(204);
    await sleep(250);
    const set = await jwks();
    for (const d of deliveries.splice(0)) if (d.body?.subscription_id === SUB) signers.add(verifiedKid(d, set));
  }
  const end = Date.now();
  // One key made at the start, then one a period: no more, whoever asked.
  const starts = [...seen.values()].sort((a, b) => a - b);
  const rotations = starts.length - 1;
  expect(rotations, `keys signing from ${starts.map((s) => s - start)}`).toBeGreaterThanOrEqual(Math.floor((end - start) / PERIOD) - 1);
  expect(rotations).toBeLessThanOrEqual(Math.ceil((end - start) / PERIOD));
  for (let i = 1; i < starts.length; i++) expect(starts[i] - starts[i - 1], `key ${i}`).toBeGreaterThanOrEqual(PERIOD);
  // Each fresh key signed before the next replaced it: deliveries used several keys.
  expect(signers.size).toBeGreaterThanOrEqual(2);
  // At most two keys are published at once (the period is at least twice the overlap).
  const now = await keys();
  expect(now.keys.length).toBeLessThanOrEqual(2);
  expect(now.next_rotation_ms).toBeGreaterThan(now.now_ms - 1000);
}, 60_000);

test('a rotation asked for counts as the period\'s: the next automatic one is a period after it', async () => {
  const res = await fetch(url('__ds/keys/rotate'), { method: 'POST', body: JSON.stringify({ overlap_ms: OVERLAP }) });
  expect(res.status).toBe(200);
  const asked = (await res.json()) as Keys;
  const fresh = asked.keys[asked.keys.length - 1];
  expect(fresh.status).toBe('next');
  expect(asked.next_rotation_ms).toBe(fresh.signs_from_ms - OVERLAP + PERIOD);
  // Just before it is due, the fresh key is still the newest; just after, a newer one is.
  await sleep(asked.next_rotation_ms! - Date.now() - 600);
  expect((await keys()).keys.map((k) => k.kid).at(-1)).toBe(fresh.kid);
  await sleep(asked.next_rotation_ms! - Date.now() + 1500);
  const later = await keys();
  expect(later.keys.map((k) => k.kid)).toContain(fresh.kid);
  expect(later.keys.map((k) => k.kid).at(-1)).not.toBe(fresh.kid);
}, 30_000);

test('an alarm set for a shorter period rotates nothing once the setting is longer: the stored keys say when it is due', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'edgestream-keys-'));
  const vars = (period: number) => ({ FAULT_MARKER: 'never-in-a-path', KEY_ROTATION_MS: String(period), KEY_ROTATION_OVERLAP_MS: String(OVERLAP) });
  let other = await startServer({ persistTo: dir, vars: vars(PERIOD) });
  try {
    const ask = async () => (await (await fetch(`${other.baseUrl}/v1/stream/__ds/keys`)).json()) as Keys;
    // Its first key is made now, and the registry's alarm set for a period later.
    const before = await ask();
    const due = before.next_rotation_ms!;
    expect(before.keys).toHaveLength(1);
    expect(due).toBeLessThanOrEqual(Date.now() + PERIOD);
    // Restarted with a longer period; nothing asks the registry until the old alarm has fired.
    await other.stop();
    other = await startServer({ persistTo: dir, vars: vars(60_000) });
    await sleep(due + 2500 - Date.now());
    const after = await ask();
    expect(after.keys.map((k) => k.kid)).toEqual([before.keys[0].kid]);
    expect(after.next_rotation_ms).toBe(due - PERIOD + 60_000);
  } finally {
    await other.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}, 60_000);

// Rotating the webhook signing key (README, Subscriptions: "Signing keys rotate"). A rotation
// publishes the fresh key in /v1/stream/__ds/jwks.json at once, signs with it only `overlap_ms`
// later, and keeps the old key published for `overlap_ms` after its last signature. Every
// delivery here is verified the way a receiver verifies it: by the `kid` its signature names,
// against the key set the server publishes.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';
import { hookServer, verifiedKid, type Hit, type Jwk } from './support/webhook';

let server: Awaited<ReturnType<typeof startServer>>;
const url = (path: string) => `${server.baseUrl}/v1/stream/${path}`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

let deliveries: Hit[] = [];
let hook: Awaited<ReturnType<typeof hookServer>>;
let hookUrl: string;

type KeyState = { kid: string; status: 'current' | 'next' | 'retiring'; signs_from_ms: number; retires_ms: number | null };

const jwks = async () => {
  const res = await fetch(url('__ds/jwks.json'));
  expect(res.status).toBe(200);
  return { keys: ((await res.json()) as { keys: Jwk[] }).keys, cacheControl: res.headers.get('cache-control') };
};
const keys = async () => {
  const res = await fetch(url('__ds/keys'));
  expect(res.status).toBe(200);
  return ((await res.json()) as { keys: KeyState[] }).keys;
};
const rotate = (body?: string) => fetch(url('__ds/keys/rotate'), { method: 'POST', headers: { 'content-type': 'application/json' }, body });


const SUB = `rotation-hook-${Date.now()}`;
const STREAM = `kr/${SUB}`;
let appended = 0;

/** Appends to the subscription's stream and waits for the delivery of that append. */
async function deliver(): Promise<Hit> {
  const n = ++appended;
  expect((await fetch(url(STREAM), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ n }) })).status).toBe(204);
  for (let i = 0; i < 200; i++) {
    const d = deliveries.find((d) => d.body?.subscription_id === SUB && d.body.streams?.some((s: any) => s.tail_offset !== s.acked_offset) && !(d as any).taken);
    if (d) {
      (d as any).taken = true;
      return d;
    }
    await sleep(50);
  }
  throw new Error(`no delivery for append ${n}`);
}

beforeAll(async () => {
  hook = await hookServer((_, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"done":true}');
  });
  deliveries = hook.hits;
  hookUrl = hook.url;
  // With FAULT_MARKER set (no path here contains it), subscriptions keep the key schedule they
  // fetched for 1 s instead of a minute, so that overlaps of seconds can be tested.
  server = await startServer({ vars: { WEBHOOK_ALLOW_LOCALHOST: 'true', FAULT_MARKER: 'never-in-a-path' } });
  expect((await fetch(url(STREAM), { method: 'PUT', headers: { 'content-type': 'application/json' } })).status).toBe(201);
  const made = await fetch(url(`__ds/subscriptions/${SUB}`), {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'webhook', streams: [STREAM], webhook: { url: hookUrl } }),
  });
  expect(made.status).toBe(201);
});

afterAll(async () => {
  await server?.stop();
  await hook?.close();
});

test('a rotation publishes the fresh key first, signs with it after the overlap, then drops the old key', async () => {
  const before = await jwks();
  expect(before.keys).toHaveLength(1);
  expect(before.keys[0]).not.toHaveProperty('d');
  const old = before.keys[0].kid;
  expect(verifiedKid(await deliver(), before.keys)).toBe(old);
  expect(await keys()).toEqual([expect.objectContaining({ kid: old, status: 'current', retires_ms: null })]);

  const overlap = 4000;
  const asked = Date.now();
  const rotated = await rotate(JSON.stringify({ overlap_ms: overlap }));
  expect(rotated.status).toBe(200);
  const schedule = ((await rotated.json()) as { keys: KeyState[] }).keys;
  expect(schedule.map((k) => [k.kid, k.status])).toEqual([
    [old, 'current'],
    [expect.not.stringMatching(old), 'next'],
  ]);
  const fresh = schedule[1].kid;
  expect(fresh).toMatch(/^ds_[A-Za-z0-9_-]{22}$/);
  const switchAt = schedule[1].signs_from_ms;
  expect(switchAt).toBeGreaterThanOrEqual(asked + overlap);
  expect(schedule[0].retires_ms).toBe(switchAt + overlap);

  // Published at once, old key first, before the fresh one signs anything; this isolate's
  // copy is cached no longer than until the old key goes.
  const during = await jwks();
  expect(during.keys.map((k) => k.kid)).toEqual([old, fresh]);
  expect(Number(during.cacheControl?.match(/max-age=(\d+)/)?.[1])).toBeLessThanOrEqual(Math.ceil((switchAt + overlap - Date.now()) / 1000) + 1);
  expect(Date.now()).toBeLessThan(switchAt);
  expect(verifiedKid(await deliver(), during.keys), 'a delivery before the switch').toBe(old);

  // After the switch (and the second a subscription keeps its schedule under test), the fresh
  // key signs; the old one is still published, for deliveries in flight.
  await sleep(switchAt + 1200 - Date.now());
  expect(verifiedKid(await deliver(), during.keys), 'a delivery after the switch').toBe(fresh);
  expect((await keys()).map((k) => [k.kid, k.status])).toEqual([
    [old, 'retiring'],
    [fresh, 'current'],
  ]);
  expect((await jwks()).keys.map((k) => k.kid)).toEqual([old, fresh]);

  // Once the overlap after the switch is over, the old key is gone from the set.
  await sleep(switchAt + overlap + 1100 - Date.now());
  const after = await jwks();
  expect(after.keys.map((k) => k.kid)).toEqual([fresh]);
  expect(after.cacheControl).toBe('public, max-age=300');
  expect(verifiedKid(await deliver(), after.keys)).toBe(fresh);
  expect((await keys()).map((k) => [k.kid, k.status])).toEqual([[fresh, 'current']]);
  // The subscription names the key that signs now.
  const described = await (await fetch(url(`__ds/subscriptions/${SUB}`))).json();
  expect(described.webhook.signing.kid).toBe(fresh);
}, 60_000);

test('a rotation with no overlap replaces the key at once, for a key that leaked', async () => {
  const [leaked] = await keys();
  const res = await rotate('{"overlap_ms":0}');
  expect(res.status).toBe(200);
  const [replacement, ...others] = ((await res.json()) as { keys: KeyState[] }).keys;
  expect(others).toEqual([]);
  expect(replacement).toMatchObject({ status: 'current', retires_ms: null });
  expect(replacement.kid).not.toBe(leaked.kid);
  const set = (await jwks()).keys;
  expect(set.map((k) => k.kid)).toEqual([replacement.kid]);
  await sleep(1200);
  expect(verifiedKid(await deliver(), set)).toBe(replacement.kid);
}, 30_000);

test('a rotation while another is under way withdraws the key that never signed', async () => {
  const [current] = await keys();
  const first = ((await (await rotate('{"overlap_ms":60000}')).json()) as { keys: KeyState[] }).keys;
  expect(first.map((k) => k.status)).toEqual(['current', 'next']);
  const second = ((await (await rotate('{"overlap_ms":60000}')).json()) as { keys: KeyState[] }).keys;
  expect(second.map((k) => k.status)).toEqual(['current', 'next']);
  expect(second[0].kid).toBe(current.kid);
  expect(second[1].kid).not.toBe(first[1].kid);
  expect((await jwks()).keys.map((k) => k.kid)).toEqual([current.kid, second[1].kid]);
  // The default overlap is ten minutes.
  const third = ((await (await rotate()).json()) as { keys: KeyState[] }).keys;
  expect(third[1].signs_from_ms - Date.now()).toBeGreaterThan(590_000);
  expect(third[0].retires_ms! - third[1].signs_from_ms).toBe(600_000);
  // Through all of it the key that signed before goes on signing: none retires before its
  // successor signs (a third rotation with a longer overlap once left no key to sign with).
  expect(third.map((k) => [k.kid, k.status])).toEqual([
    [current.kid, 'current'],
    [expect.any(String), 'next'],
  ]);
  await sleep(1200);
  expect(verifiedKid(await deliver(), (await jwks()).keys)).toBe(current.kid);
});

test('a rotation with a bad body is 400 and changes nothing; other methods are 405', async () => {
  const before = await keys();
  for (const body of ['{"overlap_ms":-1}', '{"overlap_ms":86400001}', '{"overlap_ms":1.5}', '{"overlap_ms":"600000"}', '{"overlap":1}', '[]', 'x']) {
    const res = await rotate(body);
    expect(res.status, body).toBe(400);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('INVALID_REQUEST');
  }
  expect(await keys()).toEqual(before);
  for (const [path, method, allow] of [
    ['__ds/keys/rotate', 'GET', 'POST, OPTIONS'],
    ['__ds/keys', 'POST', 'GET, OPTIONS'],
  ]) {
    const res = await fetch(url(path), { method });
    expect(res.status, path).toBe(405);
    expect(res.headers.get('allow'), path).toBe(allow);
  }
});

test('a subscription that cannot reach the registry when its schedule is due signs with the one it kept', async () => {
  // Its id asks for the fault: its first fetch of the schedule after the one it made at its
  // create fails, as when the registry cannot be reached.
  const id = `never-in-a-path-keys-down-${Date.now()}`;
  const stream = `kr/kept-${Date.now()}`;
  expect((await fetch(url(stream), { method: 'PUT', headers: { 'content-type': 'application/json' } })).status).toBe(201);
  const made = await fetch(url(`__ds/subscriptions/${id}`), {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'webhook', streams: [stream], webhook: { url: hookUrl } }),
  });
  expect(made.status).toBe(201);
  const kid = ((await made.json()) as any).webhook.signing.kid;
  // Past the second a subscription keeps its schedule under test: the next request asks again.
  await sleep(1200);
  expect((await fetch(url(stream), { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"n":1}' })).status).toBe(204);
  // Whichever asks first, the delivery or a GET, neither fails: the key the kept schedule says
  // signs now still does.
  for (let i = 0; i < 100; i++) {
    const got = await fetch(url(`__ds/subscriptions/${id}`));
    expect(got.status, await got.clone().text()).toBe(200);
    const described = (await got.json()) as any;
    expect(described.webhook.signing.kid).toBe(kid);
    expect(described.delivery.failures, described.delivery.last_error).toBe(0);
    const d = deliveries.find((d) => d.body?.subscription_id === id);
    if (d) {
      expect(verifiedKid(d, (await jwks()).keys)).toBe(kid);
      return;
    }
    await sleep(50);
  }
  throw new Error('no delivery');
});

test('a subscription whose kept schedule is too old to trust while the registry is down refuses to sign, and retries', async () => {
  // Its id asks for the fault: from the first time it asks for the schedule again, it cannot
  // reach the registry for 6 s. Under test a kept schedule signs for at most 3 s (10 minutes
  // otherwise): past that, a rotation it never heard of may have withdrawn its key.
  const id = `never-in-a-path-keys-outage-${Date.now()}`;
  const stream = `kr/outage-${Date.now()}`;
  expect((await fetch(url(stream), { method: 'PUT', headers: { 'content-type': 'application/json' } })).status).toBe(201);
  const made = await fetch(url(`__ds/subscriptions/${id}`), {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'webhook', streams: [stream], webhook: { url: hookUrl } }),
  });
  expect(made.status).toBe(201);
  const fetchedAt = Date.now();
  const kept = ((await made.json()) as any).webhook.signing.kid;
  // The key it kept is replaced at once, as a leaked key is, and leaves the key set.
  const rotated = await rotate('{"overlap_ms":0}');
  expect(rotated.status).toBe(200);
  const [fresh] = ((await rotated.json()) as { keys: KeyState[] }).keys;
  expect(fresh.kid).not.toBe(kept);
  expect((await jwks()).keys.map((k) => k.kid)).toEqual([fresh.kid]);

  await sleep(fetchedAt + 3500 - Date.now());
  expect((await fetch(url(stream), { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"n":1}' })).status).toBe(204);
  // The delivery fails, counted as any failure is, with a retry set, and nothing is signed
  // with the withdrawn key; the subscription names no key while none may sign.
  let failed: any;
  for (let i = 0; i < 100 && !failed; i++) {
    const d = deliveries.find((d) => d.body?.subscription_id === id);
    expect(d, `a delivery signed with ${d?.signature} while the registry was down`).toBeUndefined();
    const got = await fetch(url(`__ds/subscriptions/${id}`));
    expect(got.status, await got.clone().text()).toBe(200);
    const described = (await got.json()) as any;
    if (described.delivery.failures > 0) {
      failed = described;
      expect(Number(got.headers.get('x-edgestream-alarm'))).toBeGreaterThan(Date.now() - 1000);
    } else await sleep(50);
  }
  expect(failed, 'the delivery failed').toBeDefined();
  expect(failed.status).toBe('failed');
  expect(failed.delivery.last_error).toMatch(/registry cannot be reached.*schedule kept is \d+ s old.*not signing with a key that may be withdrawn/);
  expect(failed.webhook.signing.kid).toBeNull();

  // Once the registry answers again, a retry signs with the fresh key.
  for (let i = 0; i < 300; i++) {
    const d = deliveries.find((d) => d.body?.subscription_id === id);
    if (d) {
      expect(verifiedKid(d, (await jwks()).keys)).toBe(fresh.kid);
      const described = (await (await fetch(url(`__ds/subscriptions/${id}`))).json()) as any;
      expect(described.webhook.signing.kid).toBe(fresh.kid);
      return;
    }
    await sleep(50);
  }
  throw new Error('no delivery once the registry answered again');
}, 30_000);

describe('with KEY_ROTATION_OVERLAP_MS shorter than a kept schedule is otherwise trusted', () => {
  // An overlap of 1 s (3 s is how long a kept schedule signs under test, 10 minutes otherwise):
  // a rotation with it retires the key it replaces 2 s later, so a schedule kept from before the
  // rotation may sign only while it is at most 1 s old.
  const OVERLAP = 1000;
  let short: Awaited<ReturnType<typeof startServer>>;
  const at = (path: string) => `${short.baseUrl}/v1/stream/${path}`;
  beforeAll(async () => {
    short = await startServer({
      vars: { WEBHOOK_ALLOW_LOCALHOST: 'true', FAULT_MARKER: 'never-in-a-path', KEY_ROTATION_OVERLAP_MS: String(OVERLAP) },
    });
  });
  afterAll(async () => {
    await short?.stop();
  });
  const published = async () => ((await (await fetch(at('__ds/jwks.json'))).json()) as { keys: Jwk[] }).keys;

  test('a subscription that cannot reach the registry signs with no key a rotation with that overlap withdrew', async () => {
    const id = `never-in-a-path-keys-outage-short-${Date.now()}`;
    const stream = `kr/outage-short-${Date.now()}`;
    expect((await fetch(at(stream), { method: 'PUT', headers: { 'content-type': 'application/json' } })).status).toBe(201);
    const made = await fetch(at(`__ds/subscriptions/${id}`), {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'webhook', streams: [stream], webhook: { url: hookUrl } }),
    });
    expect(made.status).toBe(201);
    const fetchedAt = Date.now();
    const kept = ((await made.json()) as any).webhook.signing.kid;
    // Rotated as an automatic rotation with this setting would: the fresh key signs 1 s later,
    // and the one the subscription kept leaves the key set 1 s after that.
    const rotated = await fetch(at('__ds/keys/rotate'), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ overlap_ms: OVERLAP }) });
    expect(rotated.status).toBe(200);
    const [old, fresh] = ((await rotated.json()) as { keys: KeyState[] }).keys;
    expect(old.kid).toBe(kept);
    expect(old.retires_ms).toBe(fresh.signs_from_ms + OVERLAP);

    // Once the kept key is withdrawn, with the schedule kept 2.5 s old, an append: the
    // subscription asks the registry again (it keeps a schedule 1 s under test) and cannot
    // reach it for the next 6 s.
    await sleep(Math.max(old.retires_ms! + 200, fetchedAt + 2500) - Date.now());
    expect((await published()).map((k) => k.kid)).toEqual([fresh.kid]);
    expect(Date.now() - fetchedAt).toBeLessThan(3000);
    expect((await fetch(at(stream), { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"n":1}' })).status).toBe(204);
    let failed: any;
    for (let i = 0; i < 100 && !failed; i++) {
      const d = deliveries.find((d) => d.body?.subscription_id === id);
      expect(d, `a delivery signed with ${d?.signature} (${kept} was withdrawn) while the registry was down`).toBeUndefined();
      const described = (await (await fetch(at(`__ds/subscriptions/${id}`))).json()) as any;
      if (described.delivery.failures > 0) failed = described;
      else await sleep(50);
    }
    expect(failed, 'the delivery failed').toBeDefined();
    expect(failed.delivery.last_error).toMatch(/schedule kept is \d+ s old, past the 1 s it may be trusted/);
    expect(failed.webhook.signing.kid).toBeNull();

    // Once the registry answers again, a retry signs with the fresh key.
    for (let i = 0; i < 300; i++) {
      const d = deliveries.find((d) => d.body?.subscription_id === id);
      if (d) {
        expect(verifiedKid(d, await published())).toBe(fresh.kid);
        return;
      }
      await sleep(50);
    }
    throw new Error('no delivery once the registry answered again');
  }, 30_000);
});

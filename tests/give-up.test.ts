// Deliveries that keep failing: a subscription retries them with backoff for DELIVERY_GIVE_UP_MS,
// then stops (no alarm is left set for it) and says so in its GET; new data, or a PUT of the
// subscription, tries again. Its cursors are untouched, so nothing owed is lost.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';
import { hookServer } from './support/webhook';

let server: Awaited<ReturnType<typeof startServer>>;
const url = (path: string) => `${server.baseUrl}/v1/stream/${path}`;
const sub = (id: string) => url(`__ds/subscriptions/${id}`);
const json = { 'content-type': 'application/json' };
const uid = () => `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 7)}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// Retries stop after 3 s of failures: the tries at about 0, 1 and 3 s. FAULT_MARKER turns on
// the test-only header that says when a subscription's alarm is set (no id or path here has it).
const GIVE_UP_MS = 3_000;

beforeAll(async () => {
  server = await startServer({
    vars: {
      WEBHOOK_ALLOW_LOCALHOST: 'true',
      WEBHOOK_TIMEOUT_MS: '2000',
      DELIVERY_GIVE_UP_MS: String(GIVE_UP_MS),
      FAULT_MARKER: 'no-stream-is-named-this',
    },
  });
});

afterAll(async () => {
  await server?.stop();
});

type Delivery = {
  failures: number;
  lapsed_leases: number;
  releases: number;
  failing_since: string | null;
  last_error: string | null;
  next_attempt_at: string | null;
  gave_up_at: string | null;
};
const HEALTHY: Delivery = { failures: 0, lapsed_leases: 0, releases: 0, failing_since: null, last_error: null, next_attempt_at: null, gave_up_at: null };
type Described = { status: string; delivery: Delivery; streams: any[]; alarm: string | null };

async function described(id: string): Promise<Described> {
  const res = await fetch(sub(id));
  expect(res.status).toBe(200);
  return { ...(await res.json()), alarm: res.headers.get('x-edgestream-alarm') };
}

async function eventually<T>(check: () => Promise<T | undefined | false>, ms: number): Promise<T | undefined> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const value = await check();
    if (value) return value;
    await sleep(100);
  }
  return undefined;
}

/** A webhook subscription to `<p>/*` whose receiver fails while `failing.on` is true. */
async function failingHook(p: string) {
  const failing = { on: true };
  const hook = await hookServer((_, res) => {
    if (failing.on) {
      res.writeHead(500);
      res.end('down');
      return;
    }
    res.writeHead(200, json);
    res.end('{"done":true}');
  });
  const id = `sub-${p}`;
  const body = JSON.stringify({ type: 'webhook', pattern: `${p}/*`, webhook: { url: hook.url }, lease_ttl_ms: 60_000 });
  const put = () => fetch(sub(id), { method: 'PUT', headers: json, body });
  expect((await put()).status).toBe(201);
  return { id, hook, failing, put };
}

/** Waits for retries to stop, and answers the GET that shows it. */
async function gaveUp(id: string, ms = 12_000) {
  const state = await eventually(async () => {
    const s = await described(id);
    return s.delivery?.gave_up_at != null && s;
  }, ms);
  expect(state, 'retries never stopped').toBeTruthy();
  return state!;
}

describe('a webhook that keeps failing', () => {
  test('stops being retried after the give-up window, with no alarm left, and new data tries it again', async () => {
    const p = `giveup-${uid()}`;
    const { id, hook } = await failingHook(p);
    try {
      expect((await fetch(url(`${p}/s`), { method: 'PUT', headers: json, body: '{"n":1}' })).status).toBe(201);
      const stopped = await gaveUp(id);
      expect(stopped.status).toBe('failed');
      expect(stopped.delivery.failures).toBeGreaterThanOrEqual(2);
      expect(stopped.delivery.last_error).toContain('500');
      expect(stopped.delivery.next_attempt_at).toBeNull();
      expect(Date.parse(stopped.delivery.gave_up_at!) - Date.parse(stopped.delivery.failing_since!)).toBeGreaterThanOrEqual(GIVE_UP_MS);
      expect(stopped.alarm, 'an alarm is still set for a subscription that gave up').toBe('none');
      // Its data is still owed: the cursor has not moved.
      expect(stopped.streams.find((s) => s.path === `${p}/s`)?.has_pending).toBe(true);
      const tries = hook.hits.length;
      const generation = hook.hits[tries - 1].body.generation;
      // Longer than the backoff's delay at this point (4 s, ±20%): nothing is tried.
      await sleep(5_500);
      expect(hook.hits.length, 'the webhook was called after retries stopped').toBe(tries);
      expect((await described(id)).alarm).toBe('none');

      // New data: a new wake, covering it, is tried again (at once, or once one more backoff
      // delay has passed since retries stopped).
      expect((await fetch(url(`${p}/s`), { method: 'POST', headers: json, body: '{"n":2}' })).status).toBe(204);
      const tail = (await described(id)).streams.find((s) => s.path === `${p}/s`)?.tail_offset;
      expect(tail).not.toBe(stopped.streams.find((s) => s.path === `${p}/s`)?.tail_offset);
      expect(await eventually(async () => hook.hits.length > tries, 10_000), 'new data did not try the webhook again').toBe(true);
      const again = hook.hits[tries].body;
      expect(again.generation).toBeGreaterThan(generation);
      expect(again.streams.find((s: any) => s.path === `${p}/s`)?.tail_offset).toBe(tail);
      // That try failed too, well after the window: retries stop again at once.
      const stoppedAgain = await gaveUp(id, 5_000);
      expect(Date.parse(stoppedAgain.delivery.gave_up_at!)).toBeGreaterThan(Date.parse(stopped.delivery.gave_up_at!));
      expect(stoppedAgain.delivery.failing_since).toBe(stopped.delivery.failing_since);
      expect(stoppedAgain.delivery.failures).toBe(hook.hits.length);
      expect(stoppedAgain.alarm).toBe('none');

      // A busy stream over the dead endpoint: its appends start one wake, tried no sooner than
      // the backoff allows (after 4 failures, 8 s ±20%), not one try per append.
      const before = hook.hits.length;
      for (let n = 3; n < 8; n++) {
        expect((await fetch(url(`${p}/s`), { method: 'POST', headers: json, body: JSON.stringify({ n }) })).status).toBe(204);
      }
      const waiting = await described(id);
      const next = Date.parse(waiting.delivery.next_attempt_at!);
      const backoff = Math.min(1_000 * 2 ** (stoppedAgain.delivery.failures - 1), 60_000);
      expect(next - Date.parse(stoppedAgain.delivery.gave_up_at!)).toBeGreaterThanOrEqual(backoff * 0.8);
      expect(Number(waiting.alarm)).toBe(next);
      await sleep(1_000);
      expect(hook.hits.length, 'appends after retries stopped each tried the webhook').toBe(before);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });

  test('a PUT of the subscription tries again at once, and a delivery that succeeds makes it active', async () => {
    const p = `giveup-put-${uid()}`;
    const { id, hook, failing, put } = await failingHook(p);
    try {
      expect((await fetch(url(`${p}/s`), { method: 'PUT', headers: json, body: '{"n":1}' })).status).toBe(201);
      await gaveUp(id);
      const tries = hook.hits.length;
      // The endpoint is fixed; its owner puts the same subscription again.
      failing.on = false;
      const confirmed = await put();
      expect(confirmed.status).toBe(200);
      expect((await confirmed.json()).delivery.gave_up_at).toBeNull();
      expect(await eventually(async () => hook.hits.length > tries, 3_000), 'the PUT did not try the webhook again').toBe(true);
      const done = await eventually(async () => {
        const s = await described(id);
        return s.streams.every((l) => !l.has_pending) && s;
      }, 5_000);
      expect(done, 'the data was not delivered').toBeTruthy();
      expect(done!.status).toBe('active');
      expect(done!.delivery).toEqual(HEALTHY);
      expect(done!.alarm).toBe('none');
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });
});

describe('a pull-wake subscription whose wake events cannot be written', () => {
  test('stops retrying them, and a claim still takes the data owed', async () => {
    const p = `giveup-pull-${uid()}`;
    const wake = `wake-${p}/w`;
    const id = `pull-${p}`;
    try {
      expect((await fetch(url(`${p}/a`), { method: 'PUT', headers: json, body: '[]' })).status).toBe(201);
      // No wake stream: each wake event fails.
      const body = JSON.stringify({ type: 'pull-wake', pattern: `${p}/*`, wake_stream: wake });
      expect((await fetch(sub(id), { method: 'PUT', headers: json, body })).status).toBe(201);
      expect((await fetch(url(`${p}/a`), { method: 'POST', headers: json, body: '{"n":1}' })).status).toBe(204);
      const stopped = await gaveUp(id);
      expect(stopped.status).toBe('failed');
      expect(stopped.delivery.last_error).toContain('wake stream answered');
      expect(stopped.alarm).toBe('none');
      // A worker that starts claims without waiting for an event, and gets the data.
      expect((await fetch(url(wake), { method: 'PUT', headers: json, body: '[]' })).status).toBe(201);
      const claim = await fetch(sub(`${id}/claim`), { method: 'POST', headers: json, body: '{"worker":"w"}' });
      expect(claim.status).toBe(200);
      expect((await claim.json()).streams.some((s: any) => s.path === `${p}/a` && s.has_pending)).toBe(true);
      const active = await described(id);
      expect(active.status).toBe('active');
      expect(active.delivery.gave_up_at).toBeNull();
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });
});

/** Calls back for the wake `w` (a webhook body, or a claim's answer with its token). */
async function ackWake(path: string, w: any, token: string, done: boolean) {
  const acks = w.streams.map((s: any) => ({ stream: s.path, offset: s.tail_offset }));
  return fetch(path, {
    method: 'POST',
    headers: { ...json, authorization: `Bearer ${token}` },
    body: JSON.stringify({ wake_id: w.wake_id, generation: w.generation, acks, done }),
  });
}

describe('a webhook that answers 2xx but never acks', () => {
  test('each lapsed lease is a failure: backed off, given up after the window, and an ack makes it active', async () => {
    const p = `lapse-${uid()}`;
    // Answers 200 without "done" and never calls back, until `acking.on`.
    const acking = { on: false };
    const hook = await hookServer((hit, res) => {
      res.writeHead(200, json);
      res.end('{}');
      if (acking.on) void ackWake(hit.body.callback_url, hit.body, hit.body.callback_token, true);
    });
    const id = `sub-${p}`;
    const body = JSON.stringify({ type: 'webhook', pattern: `${p}/*`, webhook: { url: hook.url }, lease_ttl_ms: 1_000 });
    try {
      expect((await fetch(sub(id), { method: 'PUT', headers: json, body })).status).toBe(201);
      expect((await fetch(url(`${p}/s`), { method: 'PUT', headers: json, body: '{"n":1}' })).status).toBe(201);
      // After the first lapse the subscription says so, though every post got a 2xx.
      const lapsed = await eventually(async () => {
        const s = await described(id);
        return s.delivery.lapsed_leases >= 1 && s;
      }, 5_000);
      expect(lapsed, 'a lapsed lease was not counted').toBeTruthy();
      expect(lapsed!.status).toBe('failed');
      expect(lapsed!.delivery.last_error).toContain('lease lapsed without an ack');
      expect(lapsed!.delivery.failing_since).not.toBeNull();

      const stopped = await gaveUp(id, 15_000);
      expect(stopped.status).toBe('failed');
      expect(stopped.delivery.last_error).toContain('lease lapsed without an ack');
      expect(stopped.delivery.lapsed_leases).toBe(stopped.delivery.failures);
      expect(stopped.delivery.failures).toBe(hook.hits.length);
      expect(stopped.delivery.failures).toBeGreaterThanOrEqual(2);
      expect(stopped.delivery.next_attempt_at).toBeNull();
      expect(Date.parse(stopped.delivery.gave_up_at!) - Date.parse(stopped.delivery.failing_since!)).toBeGreaterThanOrEqual(GIVE_UP_MS);
      expect(stopped.alarm, 'an alarm is still set for a subscription that gave up').toBe('none');
      expect(stopped.streams.find((s) => s.path === `${p}/s`)?.has_pending).toBe(true);
      // Wakes came a lease plus the backoff apart, not a lease: the first retry 1 s (±20%) after
      // the first lapse, the next one at the window's end (3 s after that lapse), about 2 s on.
      const gaps = hook.hits.slice(1).map((h, i) => h.at - hook.hits[i].at);
      for (const gap of gaps) expect(gap).toBeGreaterThanOrEqual(1_000 + 800 - 100);
      const tries = hook.hits.length;
      await sleep(3_000);
      expect(hook.hits.length, 'a wake was sent after retries stopped').toBe(tries);

      // The receiver is fixed and calls back: new data's wake is acked, and all is well again.
      acking.on = true;
      expect((await fetch(url(`${p}/s`), { method: 'POST', headers: json, body: '{"n":2}' })).status).toBe(204);
      const healthy = await eventually(async () => {
        const s = await described(id);
        return s.streams.every((l) => !l.has_pending) && s.status === 'active' && s;
      }, 10_000);
      expect(healthy, 'the acked wake did not make it active').toBeTruthy();
      expect(healthy!.delivery).toEqual(HEALTHY);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });
});

describe('a claimed pull-wake whose lease lapses without an ack', () => {
  test('counts as a failure; a new claim does not clear it, an ack does', async () => {
    const p = `lapse-pull-${uid()}`;
    const wake = `wake-${p}/w`;
    const id = `pull-${p}`;
    try {
      expect((await fetch(url(wake), { method: 'PUT', headers: json, body: '[]' })).status).toBe(201);
      const body = JSON.stringify({ type: 'pull-wake', pattern: `${p}/*`, wake_stream: wake, lease_ttl_ms: 1_000 });
      expect((await fetch(sub(id), { method: 'PUT', headers: json, body })).status).toBe(201);
      expect((await fetch(url(`${p}/a`), { method: 'PUT', headers: json, body: '{"n":1}' })).status).toBe(201);
      const claim = () => fetch(sub(`${id}/claim`), { method: 'POST', headers: json, body: '{"worker":"w"}' });
      const first = await claim();
      expect(first.status).toBe(200);
      const firstWake = await first.json();
      // The worker crashes: nothing is acked, and the lease lapses.
      const lapsed = await eventually(async () => {
        const s = await described(id);
        return s.delivery.lapsed_leases >= 1 && s;
      }, 5_000);
      expect(lapsed, 'a lapsed lease was not counted').toBeTruthy();
      expect(lapsed!.status).toBe('failed');
      expect(lapsed!.delivery.failures).toBe(1);
      expect(lapsed!.delivery.last_error).toContain('lease lapsed without an ack');
      // Another worker claims the next generation: taking it is not yet acking it.
      const second = await claim();
      expect(second.status).toBe(200);
      const secondWake = await second.json();
      expect(secondWake.generation).toBeGreaterThan(firstWake.generation);
      expect((await described(id)).status).toBe('failed');
      const acked = await ackWake(sub(`${id}/ack`), secondWake, secondWake.token, true);
      expect(acked.status).toBe(200);
      const after = await described(id);
      expect(after.status).toBe('active');
      expect(after.delivery).toEqual(HEALTHY);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });
});

describe('data appended while the last failing attempt is in flight', () => {
  test('is tried once more after the backoff, not left owed until more data comes', async () => {
    const p = `giveup-late-${uid()}`;
    const id = `sub-${p}`;
    // Fails every post; the last attempt (the one due at the window's end, as the GET says while
    // it is out) is kept waiting until the test lets it fail.
    let release: (() => void) | undefined;
    let heldArrived: (() => void) | undefined;
    const lastHeld = new Promise<void>((resolve) => (heldArrived = resolve));
    const hook = await hookServer(async (_, res) => {
      const fail = () => {
        res.writeHead(500);
        res.end('down');
      };
      const { delivery } = await described(id);
      const since = delivery.failing_since && Date.parse(delivery.failing_since);
      if (!release && since && delivery.next_attempt_at && Date.parse(delivery.next_attempt_at) === since + GIVE_UP_MS) {
        release = fail;
        heldArrived!();
        return;
      }
      fail();
    });
    const body = JSON.stringify({ type: 'webhook', pattern: `${p}/*`, webhook: { url: hook.url }, lease_ttl_ms: 60_000 });
    try {
      expect((await fetch(sub(id), { method: 'PUT', headers: json, body })).status).toBe(201);
      expect((await fetch(url(`${p}/s`), { method: 'PUT', headers: json, body: '{"n":1}' })).status).toBe(201);
      const before = (await described(id)).streams.find((s) => s.path === `${p}/s`).tail_offset;
      await Promise.race([lastHeld, sleep(8_000)]);
      expect(release, 'no attempt came at the end of the window').toBeTruthy();
      const generation = hook.hits[hook.hits.length - 1].body.generation;
      // While that attempt is out, data comes; the subscription learns the stream's new tail.
      expect((await fetch(url(`${p}/s`), { method: 'POST', headers: json, body: '{"n":2}' })).status).toBe(204);
      const tail = await eventually(async () => {
        const link = (await described(id)).streams.find((s) => s.path === `${p}/s`);
        return link.tail_offset !== before && link.tail_offset;
      }, 1_000);
      expect(tail, 'the append did not reach the subscription').toBeTruthy();
      const tries = hook.hits.length;
      release!();
      // Retries stop, but the data that came during the last one is tried once more.
      expect(await eventually(async () => hook.hits.length > tries, 10_000), 'the data that came during the last attempt was never tried').toBe(true);
      const again = hook.hits[tries].body;
      expect(again.generation).toBeGreaterThan(generation);
      expect(again.streams.find((s: any) => s.path === `${p}/s`)?.tail_offset).toBe(tail);
      // That fails too, with nothing new since: retries stop, and nothing is left set.
      const stopped = await gaveUp(id, 5_000);
      expect(stopped.alarm).toBe('none');
      expect(stopped.delivery.failures).toBe(hook.hits.length);
      await sleep(1_500);
      expect(hook.hits.length).toBe(tries + 1);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });
});

describe('a pull-wake worker that claims and releases in a loop, acking nothing', () => {
  test('gets the first release back at once, then wake events a backoff apart, then none; an ack resets it', async () => {
    const p = `release-loop-${uid()}`;
    const wake = `wake-${p}/w`;
    const id = `pull-${p}`;
    let offset = '-1';
    /** The wake events written since the last call, each with when this test saw it. */
    const nextEvent = async (ms: number) =>
      eventually(async () => {
        const res = await fetch(`${url(wake)}?offset=${offset}`);
        const events = await res.json();
        if (!events.length) return undefined;
        offset = res.headers.get('stream-next-offset')!;
        return { at: Date.now(), events };
      }, ms);
    const claim = async () => {
      const res = await fetch(sub(`${id}/claim`), { method: 'POST', headers: json, body: '{"worker":"w"}' });
      expect(res.status).toBe(200);
      return res.json();
    };
    const release = async (w: any) => {
      const res = await fetch(sub(`${id}/release`), {
        method: 'POST',
        headers: { ...json, authorization: `Bearer ${w.token}` },
        body: JSON.stringify({ wake_id: w.wake_id, generation: w.generation }),
      });
      expect(res.status).toBe(204);
    };
    try {
      expect((await fetch(url(wake), { method: 'PUT', headers: json, body: '[]' })).status).toBe(201);
      const body = JSON.stringify({ type: 'pull-wake', pattern: `${p}/*`, wake_stream: wake, lease_ttl_ms: 60_000 });
      expect((await fetch(sub(id), { method: 'PUT', headers: json, body })).status).toBe(201);
      expect((await fetch(url(`${p}/a`), { method: 'PUT', headers: json, body: '{"n":1}' })).status).toBe(201);
      // The worker: on each wake event, claim, then release without acking.
      const first = await nextEvent(3_000);
      expect(first, 'no first wake event').toBeTruthy();
      const seen = [first!];
      const released: number[] = [];
      for (;;) {
        await release(await claim());
        released.push(Date.now());
        const next = await nextEvent(5_000);
        if (!next) break;
        seen.push(next);
        expect(seen.length, 'wake events never stopped').toBeLessThan(10);
      }
      // The first release handed the work back at once; the second waited for the 1 s backoff
      // (±20%), the third for 2 s or the window's end (3 s after the second), whichever came
      // first; a release past the window stopped retries (the fourth, or, when the third's
      // event came before the window ended, the fifth, its event at the end).
      expect([4, 5]).toContain(seen.length);
      expect(seen[1].at - released[0], 'the first release was not handed back at once').toBeLessThan(700);
      expect(seen[2].at - released[1], 'the second release was not backed off').toBeGreaterThanOrEqual(800 - 100);
      expect(seen[3].at - released[2], 'the third release was not backed off').toBeGreaterThanOrEqual(1_200);
      const stopped = await described(id);
      expect(stopped.status).toBe('failed');
      expect(stopped.delivery.releases).toBe(seen.length);
      expect(stopped.delivery.failures).toBe(seen.length - 1);
      expect(stopped.delivery.lapsed_leases).toBe(0);
      expect(stopped.delivery.last_error).toContain('released without an ack');
      expect(Date.parse(stopped.delivery.gave_up_at!) - Date.parse(stopped.delivery.failing_since!)).toBeGreaterThanOrEqual(GIVE_UP_MS);
      expect(stopped.alarm).toBe('none');

      // A worker that comes back claims without waiting for an event; a claim is not an ack.
      const w = await claim();
      expect((await described(id)).delivery.releases).toBe(seen.length);
      // Its ack (done: false, a heartbeat that records its progress) resets everything...
      const acks = w.streams.map((s: any) => ({ stream: s.path, offset: s.tail_offset }));
      const acked = await fetch(sub(`${id}/ack`), {
        method: 'POST',
        headers: { ...json, authorization: `Bearer ${w.token}` },
        body: JSON.stringify({ wake_id: w.wake_id, generation: w.generation, acks, done: false }),
      });
      expect(acked.status).toBe(200);
      const active = await described(id);
      expect(active.status).toBe('active');
      expect(active.delivery).toEqual(HEALTHY);
      // ...so, with new data, its next release hands the work back at once again.
      expect((await fetch(url(`${p}/a`), { method: 'POST', headers: json, body: '{"n":2}' })).status).toBe(204);
      await release(w);
      const back = Date.now();
      const again = await nextEvent(3_000);
      expect(again, 'the release after an ack was not handed back').toBeTruthy();
      expect(again!.at - back).toBeLessThan(700);
      expect((await described(id)).delivery.releases).toBe(1);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });
});

describe('streams owed that a full wake list left out, when retries stop', () => {
  // A subscription whose id carries the fault marker and `paged` lists a wake's streams 2 at a
  // time (the 500 of MAX_WAKE_STREAMS, lowered).
  test('each get one more wake, the lists going on in turn, then retries stop', async () => {
    const p = `giveup-full-${uid()}`;
    const id = `no-stream-is-named-this-paged-${uid()}`;
    const hook = await hookServer((_, res) => {
      res.writeHead(500);
      res.end('down');
    });
    const body = JSON.stringify({ type: 'webhook', pattern: `${p}/*`, webhook: { url: hook.url }, lease_ttl_ms: 60_000 });
    const names = ['a', 'b', 'c', 'd', 'e'].map((n) => `${p}/${n}`);
    try {
      expect((await fetch(sub(id), { method: 'PUT', headers: json, body })).status).toBe(201);
      // The first append's wake lists its stream alone; the others come while it is retried.
      for (const name of names) {
        expect((await fetch(url(name), { method: 'PUT', headers: json, body: '{"n":1}' })).status).toBe(201);
      }
      // Its retries stop at the window's end (3 s); the streams it did not list, all owed, then
      // get a wake each, two to a list: b and c one backoff after retries stopped (4 s, ±20%),
      // then d and e one more backoff on (8 s).
      const later = () => hook.hits.filter((h) => h.body.generation > hook.hits[0].body.generation);
      const offered = await eventually(async () => later().length >= 2 && later(), 40_000);
      const tried = hook.hits.map((h) => `${h.at - hook.hits[0].at} ms: generation ${h.body.generation} [${h.body.streams.map((s: any) => s.path)}]`);
      expect(offered, `the streams the full lists left out were not all offered; tried: ${tried.join('; ')}`).toBeTruthy();
      const tries = hook.hits.length - 2;
      expect(hook.hits.slice(0, tries).every((h) => h.body.streams.map((s: any) => s.path).join() === names[0])).toBe(true);
      expect(offered!.map((h) => h.body.streams.map((s: any) => s.path))).toEqual([names.slice(1, 3), names.slice(3, 5)]);
      // Every stream was offered once since the failures began: retries stop, nothing left set.
      const stopped = await gaveUp(id, 5_000);
      expect(stopped.alarm).toBe('none');
      expect(stopped.delivery.failures).toBe(hook.hits.length);
      await sleep(2_000);
      expect(hook.hits.length, 'streams already offered were woken again').toBe(tries + 2);
      expect((await described(id)).streams.filter((s) => s.has_pending).length).toBe(names.length);
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  }, 75_000);
});

describe('a subscription with nothing owed', () => {
  // Every alarm invocation is billed: once a subscription owes nothing (no delivery, no lease
  // running, no linking), no alarm is left set to fire for nothing.
  const leaseRuns = (s: Described) => s.alarm !== 'none' && Number(s.alarm) > Date.now() + 30_000 && s;

  test('keeps no alarm after a done callback acks all its webhook was woken for', async () => {
    const p = `idle-hook-${uid()}`;
    // Answers 200 without "done": the wake's lease runs until the callback below.
    const hook = await hookServer((_, res) => {
      res.writeHead(200, json);
      res.end('{}');
    });
    const id = `sub-${p}`;
    const body = JSON.stringify({ type: 'webhook', pattern: `${p}/*`, webhook: { url: hook.url }, lease_ttl_ms: 60_000 });
    try {
      expect((await fetch(sub(id), { method: 'PUT', headers: json, body })).status).toBe(201);
      expect((await fetch(url(`${p}/s`), { method: 'PUT', headers: json, body: '{"n":1}' })).status).toBe(201);
      expect(await eventually(async () => hook.hits.length > 0 && leaseRuns(await described(id)), 5_000), 'no lease ran').toBeTruthy();
      const wake = hook.hits[0].body;
      const acked = await ackWake(wake.callback_url, wake, wake.callback_token, true);
      expect(acked.status).toBe(200);
      expect((await acked.json()).next_wake).toBe(false);
      const after = await described(id);
      expect(after.streams.every((s) => !s.has_pending)).toBe(true);
      expect(after.alarm, 'the ended lease left its alarm set').toBe('none');
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });

  test('keeps no alarm after a claimed pull-wake is acked done with nothing left', async () => {
    const p = `idle-pull-${uid()}`;
    const wake = `wake-${p}/w`;
    const id = `pull-${p}`;
    try {
      expect((await fetch(url(wake), { method: 'PUT', headers: json, body: '[]' })).status).toBe(201);
      const body = JSON.stringify({ type: 'pull-wake', pattern: `${p}/*`, wake_stream: wake, lease_ttl_ms: 60_000 });
      expect((await fetch(sub(id), { method: 'PUT', headers: json, body })).status).toBe(201);
      expect((await fetch(url(`${p}/a`), { method: 'PUT', headers: json, body: '{"n":1}' })).status).toBe(201);
      const claim = await fetch(sub(`${id}/claim`), { method: 'POST', headers: json, body: '{"worker":"w"}' });
      expect(claim.status).toBe(200);
      const claimed = await claim.json();
      expect(leaseRuns(await described(id)), 'the claim started no lease').toBeTruthy();
      const acked = await ackWake(sub(`${id}/ack`), claimed, claimed.token, true);
      expect(acked.status).toBe(200);
      expect((await acked.json()).next_wake).toBe(false);
      expect((await described(id)).alarm, 'the ended lease left its alarm set').toBe('none');
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
    }
  });

  test('keeps no alarm for a failing delivery once the only stream it was for is deleted', async () => {
    const p = `idle-gone-${uid()}`;
    const { id, hook } = await failingHook(p);
    try {
      expect((await fetch(url(`${p}/s`), { method: 'PUT', headers: json, body: '{"n":1}' })).status).toBe(201);
      // The first try failed: the next is due about 1 s on, the alarm set for it.
      const failing = await eventually(async () => {
        const s = await described(id);
        return s.delivery.failures >= 1 && s.delivery.next_attempt_at != null && s;
      }, 5_000);
      expect(failing, 'the delivery did not fail').toBeTruthy();
      expect(Number(failing!.alarm)).toBe(Date.parse(failing!.delivery.next_attempt_at!));
      // The stream goes, and with it all the wake was owed for.
      expect((await fetch(url(`${p}/s`), { method: 'DELETE' })).status).toBe(204);
      const after = await described(id);
      expect(after.streams).toEqual([]);
      expect(after.delivery.next_attempt_at).toBeNull();
      expect(after.alarm, 'the retry of a wake no longer owed left its alarm set').toBe('none');
    } finally {
      await fetch(sub(id), { method: 'DELETE' });
      await hook.close();
    }
  });
});

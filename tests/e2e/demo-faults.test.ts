// The demo app against what anyone can do to its streams, and against a server that goes away:
// a chat message or a table row without the shape the demo needs is skipped, and later ones still
// show; a room or tail whose stream was deleted, or whose stored offset the stream no longer has,
// starts over; the status pill does not say "live" while the view's reader is failing; Insert is
// not sent twice; a room name the demo refuses is refused with a reason; no console errors on load;
// a write made offline says so.
import { describe, expect, test } from 'vitest';
import type { BrowserContext, Page } from 'playwright-core';
import { messages, openRoom, send, useDemo } from './demo-page';
import { startServer } from '../../scripts/dev-server.mjs';
import { mintToken } from '../../scripts/token.mjs';

const demo = useDemo();

interface Opened {
  page: Page;
  context: BrowserContext;
  /** Uncaught exceptions in the page, from its load on. */
  errors: string[];
  /** Console errors, from its load on. */
  consoleErrors: string[];
  /** The messages of alert() dialogs (dismissed). */
  alerts: string[];
}

async function openPage(context?: BrowserContext): Promise<Opened> {
  const ctx = context ?? (await demo.browser().newContext({ viewport: { width: 1200, height: 800 } }));
  const page = await ctx.newPage();
  const errors: string[] = [];
  const consoleErrors: string[] = [];
  const alerts: string[] = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(`${m.text()} ${m.location().url}`);
  });
  page.on('dialog', (d) => {
    alerts.push(d.message());
    void d.dismiss();
  });
  await page.goto(`${demo.server().baseUrl}/`);
  await expect.poll(() => page.locator('#state').textContent(), { timeout: 10_000 }).toBe('live');
  expect(errors).toEqual([]);
  return { page, context: ctx, errors, consoleErrors, alerts };
}

const state = (page: Page) => page.locator('#state').textContent();

/** A request to the server, outside the page; its status. */
/**
 * Lets the first POST to `url` reach the server and drops its connection before the answer (a
 * send that landed while the page learns only that it failed); later requests pass. `count`:
 * how many answers were lost.
 */
async function loseFirstAnswer(context: BrowserContext, url: string) {
  const lost = { count: 0 };
  await context.route(url, async (route) => {
    if (route.request().method() !== 'POST' || lost.count > 0) return route.continue();
    lost.count++;
    const res = await route.fetch();
    await res.body();
    await route.abort('connectionreset');
  });
  return lost;
}

async function call(method: string, path: string, body?: string, contentType = 'application/json') {
  const res = await fetch(`${demo.server().baseUrl}/v1/stream/${path}`, {
    method,
    headers: body === undefined && method !== 'PUT' ? {} : { 'content-type': contentType },
    body,
  });
  await res.arrayBuffer();
  return res.status;
}

describe('rooms', () => {
  test('a page load logs no console error (a favicon included)', async () => {
    const a = await openPage();
    // First in the file: Chromium remembers a favicon that failed, for every context.
    expect(await a.page.locator('link[rel~="icon"]').count()).toBe(1);
    await a.page.waitForTimeout(1_000);
    expect(a.consoleErrors).toEqual([]);
    await a.context.close();
  });

  test('messages without the shape of a chat message are skipped, in the room and in All rooms; later ones show', async () => {
    const room = `bad${Date.now()}`;
    const watcher = await openPage();
    // All rooms first: that creates the `rooms` channel, which the room then feeds.
    await watcher.page.click('#all-rooms');
    await expect.poll(() => watcher.page.locator('#room-title').textContent()).toBe('All rooms');
    await expect.poll(() => state(watcher.page), { timeout: 10_000 }).toBe('live');

    const a = await openPage();
    await openRoom(a.page, room);
    await send(a.page, 'ada', 'before');
    await expect.poll(() => messages(a.page)).toEqual(['before']);
    // Anyone can append anything to a room's JSON stream.
    const bad = [{}, 'hi', 42, null, true, [], { at: 'x' }, { hello: 1 }, { id: 'x', user: 'eve', text: 'no time' },
      { id: 'y', user: 'eve', text: 'bad time', at: 1e20 }, { id: 'z', user: { a: 1 }, text: 'who?', at: Date.now() }];
    for (const message of bad) expect(await call('POST', `rooms/${room}`, JSON.stringify([message]))).toBe(204);
    await send(a.page, 'ada', 'after');
    await expect.poll(() => messages(a.page), { timeout: 5_000 }).toEqual(['before', 'after']);
    expect(await state(a.page)).toBe('live');

    // A reload shows the same, from the stored messages and offset.
    await a.page.reload();
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    await expect.poll(() => messages(a.page)).toEqual(['before', 'after']);
    await send(a.page, 'ada', 'after reload');
    await expect.poll(() => messages(a.page), { timeout: 5_000 }).toEqual(['before', 'after', 'after reload']);

    // All rooms got the same envelopes, and skips the same messages.
    const inRoom = (p: Page) =>
      p.locator('#messages li').evaluateAll(
        (lis, name) => lis.filter((li) => li.querySelector('.room')?.textContent === `#${name}`).map((li) => li.querySelector('.text')?.textContent),
        room,
      );
    await expect.poll(() => inRoom(watcher.page), { timeout: 5_000 }).toEqual(['before', 'after', 'after reload']);
    const fresh = await openPage(watcher.context);
    await expect.poll(() => fresh.page.locator('#room-title').textContent()).toBe('All rooms');
    await expect.poll(() => inRoom(fresh.page), { timeout: 5_000 }).toEqual(['before', 'after', 'after reload']);
    expect(await state(watcher.page)).toBe('live');

    for (const p of [a, watcher, fresh]) expect(p.errors).toEqual([]);
    await a.context.close();
    await watcher.context.close();
  });

  test('a room whose stream is deleted while open starts over on a new stream', async () => {
    const room = `del${Date.now()}`;
    const a = await openPage();
    await openRoom(a.page, room);
    for (const text of ['m0', 'm1', 'm2']) await send(a.page, 'ada', text);
    await expect.poll(() => messages(a.page)).toEqual(['m0', 'm1', 'm2']);
    expect(await call('DELETE', `rooms/${room}`)).toBe(204);
    // The page creates the room again, drops what it showed of the old one, and follows the new one.
    await expect.poll(() => messages(a.page), { timeout: 15_000 }).toEqual([]);
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    await send(a.page, 'ada', 'after delete');
    await expect.poll(() => messages(a.page), { timeout: 5_000 }).toEqual(['after delete']);
    expect(a.alerts).toEqual([]);
    expect(a.errors).toEqual([]);
    await a.context.close();
  });

  test('a stored offset past the end of the room (deleted and created again meanwhile) reads the room from the start', async () => {
    const room = `stale${Date.now()}`;
    const a = await openPage();
    await openRoom(a.page, room);
    for (const text of ['m0', 'm1', 'm2', 'm3']) await send(a.page, 'ada', text);
    await expect.poll(() => messages(a.page)).toEqual(['m0', 'm1', 'm2', 'm3']);
    // The tab goes away; the room is deleted and created again, shorter (or the server's state was wiped).
    await a.page.goto('about:blank');
    expect(await call('DELETE', `rooms/${room}`)).toBe(204);
    expect(await call('PUT', `rooms/${room}`)).toBe(201);
    expect(await call('POST', `rooms/${room}`, JSON.stringify({ id: 'f', user: 'bob', text: 'fresh', at: Date.now() }))).toBe(204);

    const firstRead = a.page.waitForRequest((r) => r.method() === 'GET' && r.url().includes(`/v1/stream/rooms/${room}`));
    await a.page.goto(`${demo.server().baseUrl}/`);
    // It tried the stored offset first (a reload still resumes)...
    expect(new URL((await firstRead).url()).searchParams.get('offset')).not.toBe('-1');
    // ...and, refused, read the new room from its start: none of the old messages stay on screen.
    await expect.poll(() => messages(a.page), { timeout: 15_000 }).toEqual(['fresh']);
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    await send(a.page, 'ada', 'after');
    await expect.poll(() => messages(a.page), { timeout: 5_000 }).toEqual(['fresh', 'after']);
    expect(a.errors).toEqual([]);
    await a.context.close();
  });

  test('a message whose send failed after it landed, sent again, shows once (here, in All rooms, after a reload)', async () => {
    const room = `again${Date.now()}`;
    const watcher = await openPage();
    await watcher.page.click('#all-rooms');
    await expect.poll(() => state(watcher.page), { timeout: 10_000 }).toBe('live');
    const a = await openPage();
    await openRoom(a.page, room);
    // The first send reaches the server, and its answer is lost (the connection drops).
    const url = `**/v1/stream/rooms/${room}`;
    await loseFirstAnswer(a.context, url);
    await send(a.page, 'ada', 'hello');
    await expect.poll(() => a.alerts.length, { timeout: 5_000 }).toBe(1);
    expect(await a.page.inputValue('#message')).toBe('hello');
    await a.context.unroute(url);
    // The user sends it again, as the page invites (the text is back in the box), then another.
    await a.page.press('#message', 'Enter');
    await expect.poll(() => a.page.inputValue('#message')).toBe('');
    await send(a.page, 'ada', 'next');
    const stored = async () => {
      const res = await fetch(`${demo.server().baseUrl}/v1/stream/rooms/${room}?offset=-1`);
      return ((await res.json()) as { text: string }[]).map((m) => m.text);
    };
    await expect.poll(stored, { timeout: 5_000 }).toEqual(['hello', 'hello', 'next']);
    await expect.poll(() => messages(a.page), { timeout: 5_000 }).toEqual(['hello', 'next']);
    const inRoom = (p: Page) =>
      p.locator('#messages li').evaluateAll(
        (lis, name) => lis.filter((li) => li.querySelector('.room')?.textContent === `#${name}`).map((li) => li.querySelector('.text')?.textContent),
        room,
      );
    await expect.poll(() => inRoom(watcher.page), { timeout: 5_000 }).toEqual(['hello', 'next']);
    // A page that reads the room from the start, all of it in one batch.
    const b = await openPage();
    await openRoom(b.page, room);
    await expect.poll(() => messages(b.page), { timeout: 5_000 }).toEqual(['hello', 'next']);
    await a.page.reload();
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    expect(await messages(a.page)).toEqual(['hello', 'next']);
    for (const p of [a, b, watcher]) await p.context.close();
  });

  test('a send that fails after the page moved to another room is not put in that room\'s box', async () => {
    const stamp = Date.now();
    const [first, second] = [`from${stamp}`, `to${stamp}`];
    const a = await openPage();
    await openRoom(a.page, second);
    await openRoom(a.page, first);
    // The send to the first room hangs, then fails, once the page shows the second.
    let fail: () => void = () => {};
    const failed = new Promise<void>((r) => (fail = r));
    await a.context.route(`**/v1/stream/rooms/${first}`, async (route) => {
      if (route.request().method() !== 'POST') return route.continue();
      await failed;
      await route.abort('connectionreset');
    });
    await send(a.page, 'ada', 'meant for the first room');
    await a.page.click(`#room-list button:text-is("#${second}")`);
    await expect.poll(() => a.page.locator('#room-title').textContent()).toBe(`#${second}`);
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    fail();
    await expect.poll(() => a.alerts.length, { timeout: 5_000 }).toBe(1);
    expect(a.alerts[0]).toContain(`#${first}`);
    // Enter in the second room cannot send the first room's message there.
    expect(await a.page.inputValue('#message')).toBe('');
    await a.context.close();
  });

  test('messages sent in quick succession land in the order they were sent, even when the first is slow', async () => {
    const room = `order${Date.now()}`;
    const a = await openPage();
    await openRoom(a.page, room);
    // The first send takes a while to reach the server (a slow connection).
    const url = `**/v1/stream/rooms/${room}`;
    let posts = 0;
    await a.context.route(url, async (route) => {
      if (route.request().method() === 'POST' && posts++ === 0) await new Promise((r) => setTimeout(r, 700));
      await route.continue();
    });
    await a.page.fill('#who', 'ada');
    const sent = ['one', 'two', 'three', 'four'];
    await a.page.evaluate((texts) => {
      for (const text of texts) {
        (document.getElementById('message') as HTMLInputElement).value = text;
        (document.getElementById('message-form') as HTMLFormElement).requestSubmit();
      }
    }, sent);
    await expect.poll(() => messages(a.page), { timeout: 5_000 }).toHaveLength(sent.length);
    expect(await messages(a.page)).toEqual(sent);
    expect(a.alerts).toEqual([]);
    await a.context.close();
  });

  test('stored settings the demo cannot use (another version\'s, or edited by hand) give way to its defaults', async () => {
    const a = await openPage();
    const set = (entries: [string, string][]) =>
      a.page.evaluate((entries) => {
        for (const [key, value] of entries) localStorage.setItem(`edgestream-demo:${key}`, value);
      }, entries);
    // A list that is not one, a room and a mode the demo has not got.
    await set([['rooms', '{"a":1}'], ['room', '"../../x"'], ['mode', '"bogus"']]);
    await a.page.reload();
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    expect(await a.page.locator('#room-title').textContent()).toBe('#lobby');
    expect(await a.page.locator('#mode').inputValue()).toBe('auto');
    expect(await a.page.locator('#room-list button').allTextContents()).toEqual(['All rooms', '#lobby', '#dev', '#random']);
    // A list with names the demo cannot use: those are left out.
    await set([['rooms', '[1, null, "../x", "ok-room"]']]);
    await a.page.reload();
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    expect(await a.page.locator('#room-list button').allTextContents()).toEqual(['All rooms', '#ok-room']);
    expect(a.errors).toEqual([]);
    await a.context.close();
  });

  test('a room name the demo cannot use is refused, with the reason', async () => {
    const a = await openPage();
    // The pattern compiles (browsers use the `v` flag): no console error about it.
    expect(a.consoleErrors.filter((e) => /pattern/i.test(e))).toEqual([]);
    await a.page.fill('#room-name', 'my room!');
    expect(await a.page.locator('#room-name').evaluate((el: HTMLInputElement) => el.checkValidity())).toBe(false);
    await a.page.click('#room-form button');
    const reason = await a.page.locator('#room-name').evaluate((el: HTMLInputElement) => el.validationMessage);
    expect(reason).not.toBe('');
    expect(await a.page.locator('#room-title').textContent()).toBe('#lobby');
    // A good name still opens its room.
    await openRoom(a.page, `ok-${Date.now()}`);
    await a.context.close();
  });

  test('a room name with capitals or spaces around it is taken as the submit handler folds it', async () => {
    const a = await openPage();
    for (const [typed, room] of [['Lobby', 'lobby'], [' dev ', 'dev']]) {
      await a.page.fill('#room-name', typed);
      expect(await a.page.locator('#room-name').evaluate((el: HTMLInputElement) => el.checkValidity()), typed).toBe(true);
      await a.page.click('#room-form button');
      await expect.poll(() => a.page.locator('#room-title').textContent()).toBe(`#${room}`);
    }
    await a.context.close();
  });

  test('the live region holds only the status, which is not rewritten while it stays the same', async () => {
    const a = await openPage();
    // The Live mode select is not inside a live region.
    expect(await a.page.locator('[aria-live] select, [role="status"] select, [role="alert"] select').count()).toBe(0);
    expect(await a.page.locator('#state').evaluate((el) => el.closest('[aria-live], [role="status"]') !== null)).toBe(true);
    await a.page.evaluate(() => {
      const w = window as unknown as { writes: number };
      w.writes = 0;
      new MutationObserver((records) => (w.writes += records.length)).observe(document.getElementById('state')!, {
        childList: true, characterData: true, subtree: true, attributes: true,
      });
    });
    // The status is refreshed every 500 ms: over a few refreshes, while live, nothing is written.
    await a.page.waitForTimeout(2_000);
    expect(await state(a.page)).toBe('live');
    expect(await a.page.evaluate(() => (window as unknown as { writes: number }).writes)).toBe(0);
    await a.context.close();
  });

  test('the messages live region renders a room\'s backlog busy (not announced), and new messages not busy', async () => {
    const room = `busy${Date.now()}`;
    const a = await openPage();
    await openRoom(a.page, room);
    for (const text of ['one', 'two', 'three']) {
      await send(a.page, 'ada', text);
      await expect.poll(() => a.page.inputValue('#message')).toBe('');
    }
    await expect.poll(() => messages(a.page), { timeout: 5_000 }).toEqual(['one', 'two', 'three']);
    // From the next load on: every insertion into the list, with the region's state as it was.
    await a.page.addInitScript(() => {
      const w = window as unknown as { inserts: { added: number; busy: string | null; live: string | null }[] };
      w.inserts = [];
      for (const name of ['append', 'replaceChildren'] as const) {
        const original = Element.prototype[name];
        Element.prototype[name] = function (this: Element, ...nodes: (Node | string)[]) {
          if (this.id === 'messages' && nodes.length > 0) {
            w.inserts.push({ added: nodes.length, busy: this.getAttribute('aria-busy'), live: this.getAttribute('aria-live') });
          }
          return original.apply(this, nodes);
        };
      }
    });
    // The room is opened from its cache (3 messages) and its reader catches up.
    await a.page.reload();
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    await expect.poll(() => a.page.locator('#messages').getAttribute('data-caught-up')).toBe('');
    const inserts = () => a.page.evaluate(() => (window as unknown as { inserts: { added: number; busy: string | null }[] }).inserts);
    const backlog = await inserts();
    expect(backlog.reduce((n, i) => n + i.added, 0)).toBeGreaterThanOrEqual(3);
    expect(backlog.filter((i) => i.busy !== 'true')).toEqual([]);
    expect(await a.page.locator('#messages').getAttribute('aria-busy')).toBe(null);
    expect(await a.page.locator('#messages').getAttribute('aria-live')).toBe('polite');
    // A new message, from elsewhere, is inserted while the region is not busy: it is announced.
    expect(await call('POST', `rooms/${room}`, JSON.stringify({ id: 'x1', user: 'bob', text: 'four', at: Date.now() }))).toBe(204);
    await expect.poll(() => messages(a.page), { timeout: 5_000 }).toEqual(['one', 'two', 'three', 'four']);
    expect((await inserts()).slice(backlog.length)).toEqual([{ added: 1, busy: null, live: 'polite' }]);
    expect(a.errors).toEqual([]);
    await a.context.close();
  });

  test('a room whose stream exists with another content type is not retried, and the page says why', async () => {
    const room = `txt${Date.now()}`;
    expect(await call('PUT', `rooms/${room}`, undefined, 'text/plain')).toBe(201);
    const a = await openPage();
    const puts: string[] = [];
    a.page.on('request', (r) => {
      if (r.method() === 'PUT' && new URL(r.url()).pathname === `/v1/stream/rooms/${room}`) puts.push(r.url());
    });
    await a.page.fill('#room-name', room);
    await a.page.click('#room-form button');
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('stopped');
    expect(await a.page.locator('#problem').textContent()).toMatch(/409/);
    expect(await a.page.locator('#problem').isVisible()).toBe(true);
    // Nothing more is loading: a list left busy would keep a screen reader from announcing.
    expect(await a.page.locator('#messages').getAttribute('aria-busy')).toBe(null);
    const tried = puts.length;
    expect(tried).toBe(1);
    // Retried, it would have been asked again several times within these seconds.
    await a.page.waitForTimeout(3_000);
    expect(puts).toHaveLength(tried);
    expect(await state(a.page)).toBe('stopped');
    // Another room works, and the reason goes away.
    await openRoom(a.page, `ok${Date.now()}`);
    expect(await a.page.locator('#problem').isVisible()).toBe(false);
    expect(a.errors).toEqual([]);
    await a.context.close();
  });

  test('a server that requires an access token: the page says so, and uses one given as ?token=', async () => {
    const secret = 'demo-e2e-secret';
    const locked = await startServer({ vars: { AUTH_SECRET: secret, LONG_POLL_TIMEOUT_MS: '2000' } });
    const context = await demo.browser().newContext({ viewport: { width: 1200, height: 800 } });
    try {
      const page = await context.newPage();
      const errors: string[] = [];
      page.on('pageerror', (e) => errors.push(String(e)));
      await page.goto(`${locked.baseUrl}/`);
      await expect.poll(() => state(page), { timeout: 10_000 }).toBe('stopped');
      expect(await page.locator('#problem').textContent()).toMatch(/access token/i);
      const token = mintToken({ secret, prefix: '', ops: ['read', 'append', 'create'], expiresAt: Math.floor(Date.now() / 1000) + 3600 });
      await page.goto(`${locked.baseUrl}/?token=${encodeURIComponent(token)}`);
      await expect.poll(() => state(page), { timeout: 10_000 }).toBe('live');
      expect(await page.locator('#problem').isVisible()).toBe(false);
      await send(page, 'ada', 'with a token');
      await expect.poll(() => messages(page), { timeout: 5_000 }).toContain('with a token');
      expect(errors).toEqual([]);
    } finally {
      await context.close();
      await locked.stop();
    }
  }, 120_000);

  test('the status pill does not say "live" while the view cannot reach the server, and says it again once it can', async () => {
    const a = await openPage();
    await a.page.selectOption('#mode', 'sse');
    await openRoom(a.page, `pill${Date.now()}`);
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    // Every text the pill shows from now on, in order.
    await a.page.evaluate(() => {
      const pill = document.getElementById('state')!;
      const seen: string[] = ((window as unknown as { pill: string[] }).pill = []);
      new MutationObserver(() => {
        if (seen.at(-1) !== pill.textContent) seen.push(pill.textContent ?? '');
      }).observe(pill, { childList: true, characterData: true, subtree: true });
    });
    // The network is cut (new requests fail), and the server restart drops the open SSE connection.
    await a.context.route('**/v1/stream/**', (route) => route.abort('connectionrefused'));
    await demo.server().restart();
    await a.page.waitForTimeout(12_000);
    const seen = await a.page.evaluate(() => (window as unknown as { pill: string[] }).pill);
    // Once the reader gave up, the pill never went back to "live" while nothing could be read.
    const firstDown = seen.indexOf('reconnecting');
    expect(firstDown, seen.join()).toBeGreaterThanOrEqual(0);
    expect(seen.slice(firstDown), seen.join()).not.toContain('live');
    expect(await state(a.page), seen.join()).toBe('reconnecting');
    await a.context.unroute('**/v1/stream/**');
    await expect.poll(() => state(a.page), { timeout: 15_000 }).toBe('live');
    await a.context.close();
  });
});

describe('offline', () => {
  test('a write made while the browser is offline says so, in each view, keeps what was typed, and goes through once back online', async () => {
    const a = await openPage();
    const room = `off${Date.now()}`;
    await openRoom(a.page, room);
    await a.page.fill('#who', 'ada');
    const tag = `offline-${Date.now()}`;
    // Each view's form, its field, and where what it wrote shows.
    const views = [
      { tab: '#tab-rooms', field: '#message', submit: '#message-form button', shown: async () => (await messages(a.page)).filter((t) => t === tag).length },
      { tab: '#tab-table', field: '#row-name', submit: '#row-form button', shown: () => a.page.locator(`#rows tr[data-name="${tag}"]`).count() },
      { tab: '#tab-tail', field: '#line', submit: '#tail-form button', shown: async () => ((await a.page.locator('#tail').textContent()) ?? '').split('\n').filter((l) => l === tag).length },
    ];
    for (const view of views) {
      await a.page.click(view.tab);
      await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
      await a.context.setOffline(true);
      await expect.poll(() => state(a.page)).toBe('offline');
      const before = a.alerts.length;
      await a.page.fill(view.field, tag);
      await a.page.click(view.submit);
      await expect.poll(() => a.alerts.length, { timeout: 15_000 }).toBe(before + 1);
      // Said in words the user can act on, not fetch's "Failed to fetch".
      expect(a.alerts[before], view.tab).toMatch(/offline/);
      expect(await a.page.inputValue(view.field), view.tab).toBe(tag);
      await a.context.setOffline(false);
      await expect.poll(() => state(a.page), { timeout: 15_000 }).toBe('live');
      await a.page.click(view.submit);
      await expect.poll(view.shown, { timeout: 10_000 }).toBe(1);
    }
    expect(a.errors).toEqual([]);
    await a.context.close();
  });
});

describe('live table', () => {
  const names = (p: Page) => p.locator('#rows tr').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-name')));

  async function insert(p: Page, name: string, qty = '1') {
    await p.fill('#row-name', name);
    await p.fill('#row-qty', qty);
    await p.click('#row-form button');
  }

  test('Insert clicked twice on a slow network inserts one row', async () => {
    const a = await openPage();
    await a.page.click('#tab-table');
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    // Appends take a second to reach the server.
    await a.context.route('**/v1/stream/tables/items', async (route) => {
      if (route.request().method() === 'POST') await new Promise((r) => setTimeout(r, 1_000));
      await route.continue();
    });
    const name = `slow-${Date.now()}`;
    await a.page.fill('#row-name', name);
    await a.page.dblclick('#row-form button');
    await a.page.waitForTimeout(500);
    await a.page.click('#row-form button', { force: true });
    await a.page.press('#row-name', 'Enter');
    await expect.poll(() => names(a.page), { timeout: 5_000 }).toContain(name);
    await a.page.waitForTimeout(2_000);
    expect((await names(a.page)).filter((n) => n === name)).toHaveLength(1);
    // Once the insert is done the form takes the next one.
    await expect.poll(() => a.page.locator('#row-form button').isDisabled()).toBe(false);
    expect(await a.page.locator('#row-name').inputValue()).toBe('');
    await a.context.close();
  });

  test('an Insert whose answer was lost, clicked again, inserts one row', async () => {
    const a = await openPage();
    await a.page.click('#tab-table');
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    const url = '**/v1/stream/tables/items';
    await loseFirstAnswer(a.context, url);
    const name = `lost-${Date.now()}`;
    await insert(a.page, name);
    await expect.poll(() => a.alerts.length, { timeout: 5_000 }).toBe(1);
    // The row landed; the page could not know. The name is still in the box: Insert again.
    await expect.poll(() => names(a.page), { timeout: 5_000 }).toContain(name);
    await a.context.unroute(url);
    await a.page.click('#row-form button');
    await expect.poll(() => a.page.locator('#row-name').inputValue()).toBe('');
    const after = `${name}-after`;
    await insert(a.page, after);
    await expect.poll(() => names(a.page), { timeout: 5_000 }).toContain(after);
    expect((await names(a.page)).filter((n) => n === name)).toHaveLength(1);
    expect(a.alerts).toHaveLength(1);
    await a.context.close();
  });

  test('Save refuses what Insert refuses (no name, a quantity below 0, fractional or empty) and sends nothing', async () => {
    const a = await openPage();
    await a.page.click('#tab-table');
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    const posts: string[] = [];
    a.page.on('request', (r) => {
      if (r.method() === 'POST' && r.url().includes('/v1/stream/tables/items')) posts.push(r.postData() ?? '');
    });
    const name = `valid-${Date.now()}`;
    await insert(a.page, name);
    await expect.poll(() => names(a.page), { timeout: 5_000 }).toContain(name);
    const row = a.page.locator(`#rows tr[data-name="${name}"]`);
    const [nameInput, qtyInput] = await row.locator('input').all();
    for (const [n, q] of [[name, '-3'], [name, '1.5'], [name, ''], ['', '2'], ['   ', '2']]) {
      await nameInput.fill(n);
      await qtyInput.fill(q);
      await row.getByRole('button', { name: 'Save' }).click();
      // The browser says what is wrong, on the field.
      const invalid = await row.locator('input').evaluateAll((inputs) => inputs.map((i) => (i as HTMLInputElement).validationMessage).filter(Boolean));
      expect(invalid, `${n}/${q}`).toHaveLength(1);
    }
    // A valid edit goes through: it is the only POST since the insert.
    await nameInput.fill(name);
    await qtyInput.fill('7');
    await row.getByRole('button', { name: 'Save' }).click();
    await expect.poll(() => row.locator('input').nth(1).getAttribute('data-stored'), { timeout: 5_000 }).toBe('7');
    expect(posts).toHaveLength(2);
    expect(JSON.parse(posts[1]).value).toMatchObject({ name, qty: 7 });
    // Insert: only spaces is refused and said so; the name typed next goes through.
    await insert(a.page, '   ');
    expect(await a.page.locator('#row-name').evaluate((i) => (i as HTMLInputElement).validationMessage)).not.toBe('');
    const next = `${name}-2`;
    await insert(a.page, next);
    await expect.poll(() => names(a.page), { timeout: 5_000 }).toContain(next);
    expect(posts).toHaveLength(3);
    expect(a.alerts).toEqual([]);
    await a.context.close();
  });

  test('a Save or Delete that fails says so, and the row stays as it was', async () => {
    const a = await openPage();
    await a.page.click('#tab-table');
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    const name = `keep-${Date.now()}`;
    await insert(a.page, name);
    await expect.poll(() => names(a.page), { timeout: 5_000 }).toContain(name);
    await a.context.route('**/v1/stream/tables/items', (route) =>
      route.request().method() === 'POST' ? route.abort('connectionrefused') : route.continue(),
    );
    const row = a.page.locator(`#rows tr[data-name="${name}"]`);
    for (const button of ['Save', 'Delete']) {
      const before = a.alerts.length;
      await row.getByRole('button', { name: button === 'Delete' ? `Delete ${name}` : 'Save' }).click();
      await expect.poll(() => a.alerts.length, { timeout: 5_000 }).toBe(before + 1);
    }
    expect(await names(a.page)).toContain(name);
    expect(a.errors).toEqual([]);
    await a.context.close();
  });

  test('a row being edited keeps its value and focus while rows change, and is marked when its own row changes', async () => {
    const a = await openPage();
    await a.page.click('#tab-table');
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    const name = `edit-${Date.now()}`;
    await insert(a.page, name);
    await expect.poll(() => names(a.page), { timeout: 5_000 }).toContain(name);
    const id = (await a.page.locator(`#rows tr[data-name="${name}"]`).getAttribute('data-id'))!;
    const row = a.page.locator(`#rows tr[data-id="${id}"]`);
    // Every row's buttons name their row.
    expect(await row.getByRole('button', { name: `Save ${name}`, exact: true }).count()).toBe(1);
    const item = row.getByRole('textbox', { name: `Item ${id}` });
    await item.fill(`${name}-mine`);
    const focused = () => a.page.evaluate(() => document.activeElement?.getAttribute('aria-label'));
    expect(await focused()).toBe(`Item ${id}`);

    // Someone else inserts a row: the edit and the focus stay.
    const other = `${name}-other`;
    const now = Date.now();
    const write = (operation: string, key: string, value: object) =>
      call('POST', 'tables/items', JSON.stringify({ type: 'item', key, value, headers: { operation } }));
    expect(await write('insert', `${id}x`, { name: other, qty: 1, createdAt: now, updatedAt: now })).toBe(204);
    await expect.poll(() => names(a.page), { timeout: 5_000 }).toContain(other);
    expect(await item.inputValue()).toBe(`${name}-mine`);
    expect(await focused()).toBe(`Item ${id}`);
    expect(await row.getAttribute('class') ?? '').not.toContain('stale');

    // Someone else changes this very row: the edit stays, the row says it changed, and the
    // quantity, not being edited, shows theirs.
    expect(await write('update', id, { name: `${name}-theirs`, qty: 5, createdAt: now, updatedAt: Date.now() })).toBe(204);
    await expect.poll(() => row.getAttribute('data-name'), { timeout: 5_000 }).toBe(`${name}-theirs`);
    expect(await row.getAttribute('class')).toContain('stale');
    expect(await item.inputValue()).toBe(`${name}-mine`);
    expect(await row.locator('input[type=number]').inputValue()).toBe('5');
    expect(await focused()).toBe(`Item ${id}`);

    // Save writes the edit; the mark goes.
    await row.getByRole('button', { name: /^Save / }).click();
    await expect.poll(() => row.getAttribute('data-name'), { timeout: 5_000 }).toBe(`${name}-mine`);
    expect(await row.getAttribute('class') ?? '').not.toContain('stale');
    expect(await row.locator('input[type=number]').inputValue()).toBe('5');
    expect(a.errors).toEqual([]);
    await a.context.close();
  });

  test('changes whose value is not a row are ignored or shown safely; later rows still show', async () => {
    const a = await openPage();
    await a.page.click('#tab-table');
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    const tag = `t${Date.now()}`;
    await insert(a.page, `${tag}-before`);
    await expect.poll(() => names(a.page), { timeout: 5_000 }).toContain(`${tag}-before`);
    // Valid State Protocol changes (so `onInvalid: 'skip'` keeps them) whose values are not rows.
    for (const [i, value] of [null, 'x', 42, [], { name: { a: 1 }, qty: 'abc', createdAt: 'zzz', updatedAt: 'soon' }].entries()) {
      const change = { type: 'item', key: `${tag}-bad${i}`, value, headers: { operation: 'insert' } };
      expect(await call('POST', 'tables/items', JSON.stringify(change))).toBe(204);
    }
    await insert(a.page, `${tag}-after`);
    await expect.poll(() => names(a.page), { timeout: 5_000 }).toContain(`${tag}-after`);
    expect((await names(a.page)).filter((n) => n?.startsWith(`${tag}-`) && !n.includes('bad'))).toEqual([`${tag}-before`, `${tag}-after`]);
    expect(await state(a.page)).toBe('live');

    // A reload restores them from the saved snapshot, and a page that reads from the start agrees.
    await a.page.reload();
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    await expect.poll(() => names(a.page)).toEqual(expect.arrayContaining([`${tag}-before`, `${tag}-after`]));
    const b = await openPage();
    await b.page.click('#tab-table');
    await expect.poll(() => names(b.page), { timeout: 10_000 }).toEqual(expect.arrayContaining([`${tag}-before`, `${tag}-after`]));
    await insert(b.page, `${tag}-last`);
    await expect.poll(() => names(a.page), { timeout: 5_000 }).toContain(`${tag}-last`);
    expect(a.errors).toEqual([]);
    expect(b.errors).toEqual([]);
    await a.context.close();
    await b.context.close();
  });
});

describe('tail', () => {
  test('lines appended in quick succession land in the order they were appended, even when the first is slow', async () => {
    const a = await openPage();
    await a.page.click('#tab-tail');
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    let posts = 0;
    await a.context.route('**/v1/stream/tail/demo', async (route) => {
      if (route.request().method() === 'POST' && posts++ === 0) await new Promise((r) => setTimeout(r, 700));
      await route.continue();
    });
    const tag = `order-${Date.now()}`;
    const lines = ['a', 'b', 'c'].map((l) => `${tag}-${l}`);
    await a.page.evaluate((lines) => {
      for (const line of lines) {
        (document.getElementById('line') as HTMLInputElement).value = line;
        (document.getElementById('tail-form') as HTMLFormElement).requestSubmit();
      }
    }, lines);
    const ours = async () => ((await a.page.locator('#tail').textContent()) ?? '').split('\n').filter((l) => l.startsWith(tag));
    await expect.poll(ours, { timeout: 5_000 }).toHaveLength(3);
    expect(await ours()).toEqual(lines);
    await a.context.close();
  });

  test('a line whose answer was lost is appended once, even when Append is pressed again', async () => {
    const a = await openPage();
    await a.page.click('#tab-tail');
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    // The first append reaches the server, and its answer is lost (the connection drops).
    const lost = await loseFirstAnswer(a.context, '**/v1/stream/tail/demo');
    const tag = `lost-${Date.now()}`;
    await a.page.fill('#line', tag);
    await a.page.press('#line', 'Enter');
    const ours = async () => ((await a.page.locator('#tail').textContent()) ?? '').split('\n').filter((l) => l.startsWith(tag));
    // Either the page gave the line back (and said so), or it shows it: then the user presses Append again.
    await expect.poll(async () => a.alerts.length > 0 || (await ours()).length > 0, { timeout: 10_000 }).toBe(true);
    await a.page.press('#line', 'Enter');
    await expect.poll(() => a.page.inputValue('#line'), { timeout: 10_000 }).toBe('');
    // A later line: once it shows, whatever the first one became has landed before it.
    await a.page.fill('#line', `${tag}-after`);
    await a.page.press('#line', 'Enter');
    await expect.poll(ours, { timeout: 10_000 }).toContain(`${tag}-after`);
    expect(await ours()).toEqual([tag, `${tag}-after`]);
    expect(lost.count).toBe(1);
    expect(a.errors).toEqual([]);
    await a.context.close();
  });

  test('an Append that fails keeps the line and says so', async () => {
    const a = await openPage();
    await a.page.click('#tab-tail');
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    await a.context.route('**/v1/stream/tail/demo', (route) =>
      route.request().method() === 'POST' ? route.abort('connectionrefused') : route.continue(),
    );
    await a.page.fill('#line', 'not sent');
    await a.page.press('#line', 'Enter');
    await expect.poll(() => a.alerts.length, { timeout: 5_000 }).toBe(1);
    expect(await a.page.inputValue('#line')).toBe('not sent');
    await a.context.unroute('**/v1/stream/tail/demo');
    await a.page.press('#line', 'Enter');
    await expect.poll(() => a.page.locator('#tail').textContent(), { timeout: 5_000 }).toContain('not sent');
    expect(a.errors).toEqual([]);
    await a.context.close();
  });

  test('a tail whose stored offset the stream no longer has, or whose stream is deleted while open, starts over', async () => {
    const a = await openPage();
    await a.page.click('#tab-tail');
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    for (const line of ['old 1', 'old 2', 'old 3']) {
      await a.page.fill('#line', line);
      await a.page.click('#tail-form button');
      await expect.poll(() => a.page.locator('#tail').textContent(), { timeout: 5_000 }).toContain(line);
    }
    // Deleted and created again, shorter, while the tab is away.
    await a.page.goto('about:blank');
    expect(await call('DELETE', 'tail/demo')).toBe(204);
    expect(await call('PUT', 'tail/demo', undefined, 'text/plain')).toBe(201);
    expect(await call('POST', 'tail/demo', 'new\n', 'text/plain')).toBe(204);
    await a.page.goto(`${demo.server().baseUrl}/`);
    await expect.poll(() => a.page.locator('#tail').textContent(), { timeout: 15_000 }).toBe('new\n');
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');

    // Deleted while open: the page creates it again and follows the new stream.
    expect(await call('DELETE', 'tail/demo')).toBe(204);
    await expect.poll(() => a.page.locator('#tail').textContent(), { timeout: 15_000 }).toBe('');
    await expect.poll(() => state(a.page), { timeout: 10_000 }).toBe('live');
    await a.page.fill('#line', 'again');
    await a.page.click('#tail-form button');
    await expect.poll(() => a.page.locator('#tail').textContent(), { timeout: 5_000 }).toBe('again\n');
    expect(a.errors).toEqual([]);
    await a.context.close();
  });
});

// The demo app in a real browser (Debian Chromium through playwright-core) against wrangler dev:
// rooms deliver across pages, a reload resumes without gap or duplicate, a cut network
// reconnects and catches up, the live table converges, and each view is screenshotted.
import { describe, expect, test } from 'vitest';
import type { BrowserContext, Page } from 'playwright-core';
import path from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { messages, openRoom, send, useDemo } from './demo-page';

const shots = path.join(path.dirname(fileURLToPath(import.meta.url)), 'screenshots');
const demo = useDemo();

async function openPage(context?: BrowserContext): Promise<{ page: Page; context: BrowserContext }> {
  const ctx = context ?? (await demo.browser().newContext({ viewport: { width: 1200, height: 800 } }));
  const page = await ctx.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${demo.server().baseUrl}/`);
  await expect.poll(() => page.locator('#state').textContent(), { timeout: 10_000 }).toBe('live');
  expect(errors).toEqual([]);
  return { page, context: ctx };
}


describe('rooms', () => {
  test('a message sent in one page appears in another within a second', async () => {
    const room = `r${Date.now()}`;
    const a = await openPage();
    const b = await openPage();
    await openRoom(a.page, room);
    await openRoom(b.page, room);
    const sentAt = Date.now();
    await send(a.page, 'ada', 'hello from a');
    await expect.poll(() => messages(b.page), { timeout: 1_000, interval: 25 }).toEqual(['hello from a']);
    expect(Date.now() - sentAt).toBeLessThan(1_000);
    await send(b.page, 'bob', 'hi ada');
    await expect.poll(() => messages(a.page), { timeout: 1_000, interval: 25 }).toEqual(['hello from a', 'hi ada']);
    await a.page.screenshot({ path: path.join(shots, 'rooms.png') });
    await a.context.close();
    await b.context.close();
  });

  test('an empty room says so once caught up, and not after its first message', async () => {
    const { page, context } = await openPage();
    // What the list shows on its own: its ::before text, which only an empty, caught-up list has.
    const shown = () => page.locator('#messages').evaluate((el) => getComputedStyle(el, '::before').content);
    await openRoom(page, `empty${Date.now()}`);
    await expect.poll(shown).toBe('"No messages yet: say something below."');
    await send(page, 'ada', 'first');
    await expect.poll(() => messages(page)).toEqual(['first']);
    expect(await shown()).toBe('none');
    await context.close();
  });

  test('creating a room and sending to it finish in the browser\'s network log: no write shows as aborted', async () => {
    const { page, context } = await openPage();
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    const writes = new Map<string, string>();
    const finished: string[] = [];
    const failed: string[] = [];
    cdp.on('Network.requestWillBeSent', (e) => {
      if (e.request.method !== 'GET') writes.set(e.requestId, `${e.request.method} ${new URL(e.request.url).pathname}`);
    });
    cdp.on('Network.loadingFinished', (e) => writes.has(e.requestId) && finished.push(writes.get(e.requestId)!));
    cdp.on('Network.loadingFailed', (e) => writes.has(e.requestId) && failed.push(`${writes.get(e.requestId)}: ${e.errorText}`));
    const room = `net${Date.now()}`;
    await openRoom(page, room);
    await send(page, 'ada', 'one');
    await send(page, 'ada', 'two');
    await expect.poll(() => messages(page)).toEqual(['one', 'two']);
    await expect.poll(() => finished.filter((w) => w.endsWith(`/rooms/${room}`)).length).toBe(3);
    expect(finished).toEqual(expect.arrayContaining([`PUT /v1/stream/rooms/${room}`, `POST /v1/stream/rooms/${room}`]));
    expect(failed).toEqual([]);
    await context.close();
  });

  test('a reload resumes from the stored offset: no re-download, no gap, no duplicate', async () => {
    const room = `reload${Date.now()}`;
    const { page, context } = await openPage();
    await openRoom(page, room);
    for (let i = 0; i < 5; i++) await send(page, 'ada', `m${i}`);
    await expect.poll(() => messages(page)).toEqual(['m0', 'm1', 'm2', 'm3', 'm4']);
    // The tab goes away; someone else writes meanwhile.
    await page.goto('about:blank');
    const other = await openPage();
    await openRoom(other.page, room);
    await send(other.page, 'bob', 'while you were away');
    await expect.poll(() => messages(other.page)).toContain('while you were away');

    const firstRead = page.waitForRequest((r) => r.method() === 'GET' && r.url().includes(`/v1/stream/rooms/${room}`));
    await page.goto(`${demo.server().baseUrl}/`);
    const offset = new URL((await firstRead).url()).searchParams.get('offset');
    // It resumed from the stored offset, not from the beginning.
    expect(offset).not.toBeNull();
    expect(offset).not.toBe('-1');
    await expect.poll(() => messages(page), { timeout: 10_000 }).toEqual(['m0', 'm1', 'm2', 'm3', 'm4', 'while you were away']);
    await send(page, 'ada', 'after reload');
    await expect.poll(() => messages(page)).toEqual(['m0', 'm1', 'm2', 'm3', 'm4', 'while you were away', 'after reload']);
    await context.close();
    await other.context.close();
  });

  test('with the network cut and restored, the page reconnects and catches up', async () => {
    const room = `cut${Date.now()}`;
    const { page, context } = await openPage();
    await openRoom(page, room);
    await send(page, 'ada', 'before');
    await expect.poll(() => messages(page)).toEqual(['before']);
    // Offline ends the open live connection too; the route keeps new requests failing.
    // Cut the network: new requests fail, and a server restart drops the open live connection.
    await context.route('**/v1/stream/**', (route) => route.abort('internetdisconnected'));
    await demo.server().restart();
    // Written by someone else while this page is cut off:
    for (const text of ['during 1', 'during 2']) {
      const res = await fetch(`${demo.server().baseUrl}/v1/stream/rooms/${room}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ id: text, user: 'bob', text, at: Date.now() }),
      });
      expect(res.status).toBe(204);
    }
    await page.waitForTimeout(1_000);
    expect(await messages(page)).toEqual(['before']);
    // Restore the network: the page reconnects from its offset and catches up.
    await context.unroute('**/v1/stream/**');
    await expect.poll(() => messages(page), { timeout: 20_000 }).toEqual(['before', 'during 1', 'during 2']);
    await send(page, 'ada', 'after');
    await expect.poll(() => messages(page), { timeout: 5_000 }).toEqual(['before', 'during 1', 'during 2', 'after']);
    await context.close();
  });
  test('a room of 200,000 messages opens on the last 500 (a catch-up batch holds up to 170,000)', async () => {
    const room = `big${Date.now()}`;
    const total = 200_000;
    const url = `${demo.server().baseUrl}/v1/stream/rooms/${room}`;
    expect((await fetch(url, { method: 'PUT', headers: { 'content-type': 'application/json' } })).status).toBe(201);
    for (let start = 0; start < total; start += 100_000) {
      const batch = Array.from({ length: 100_000 }, (_, i) => ({ id: `m${start + i}`, user: 'bot', text: `m${start + i}`, at: 0 }));
      const res = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(batch),
      });
      expect(res.status).toBe(204);
    }
    const { page, context } = await openPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await openRoom(page, room);
    await expect.poll(async () => (await messages(page)).at(-1), { timeout: 20_000 }).toBe(`m${total - 1}`);
    const shown = await messages(page);
    expect(shown).toEqual(Array.from({ length: 500 }, (_, i) => `m${total - 500 + i}`));
    expect(errors).toEqual([]);
    await context.close();
  });
  // Last in this block: from here on the `rooms` channel exists, and every room feeds it.
  test('All rooms follows the rooms channel: every room, those opened later included, and a reload resumes', async () => {
    const a = await openPage();
    await a.page.click('#all-rooms');
    await expect.poll(() => a.page.locator('#room-title').textContent()).toBe('All rooms');
    await expect.poll(() => a.page.locator('#state').textContent(), { timeout: 10_000 }).toBe('live');
    expect(await a.page.locator('#message').isDisabled()).toBe(true);
    const b = await openPage();
    const first = `all${Date.now()}`;
    const second = `${first}-b`;
    await openRoom(b.page, first);
    await send(b.page, 'ada', 'in the first room');
    await openRoom(b.page, second);
    await send(b.page, 'bob', 'in a room opened later');
    const expected = ['in the first room', 'in a room opened later'];
    await expect.poll(() => messages(a.page), { timeout: 5_000 }).toEqual(expected);
    expect(await a.page.locator('#messages li .room').allTextContents()).toEqual([`#${first}`, `#${second}`]);
    // The channel announced both rooms (`created`): they joined page A's list without a click.
    await expect.poll(() => a.page.locator('#room-list button').allTextContents()).toEqual(
      expect.arrayContaining([`#${first}`, `#${second}`]),
    );
    await a.page.screenshot({ path: path.join(shots, 'all-rooms.png') });

    // A reload shows what was stored and reads the channel from its stored offset, not from -1.
    const firstRead = a.page.waitForRequest((r) => r.method() === 'GET' && new URL(r.url()).pathname === '/v1/stream/rooms');
    await a.page.reload();
    expect(new URL((await firstRead).url()).searchParams.get('offset')).not.toBe('-1');
    await expect.poll(() => a.page.locator('#state').textContent(), { timeout: 10_000 }).toBe('live');
    await send(b.page, 'bob', 'after the reload');
    await expect.poll(() => messages(a.page), { timeout: 5_000 }).toEqual([...expected, 'after the reload']);
    await a.context.close();
    await b.context.close();
  });

  test('a reader scrolled up in a room is not pulled down by new messages; at the bottom, or after sending, it follows them', async () => {
    const { page, context } = await openPage();
    const room = `scroll${Date.now()}`;
    await openRoom(page, room);
    const post = async (texts: string[]) => {
      const body = JSON.stringify(texts.map((text, i) => ({ id: `${text}-${i}`, user: 'bob', text, at: Date.now() })));
      const res = await fetch(`${demo.server().baseUrl}/v1/stream/rooms/${room}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      expect(res.status).toBe(204);
    };
    const list = page.locator('#messages');
    const fromBottom = () => list.evaluate((el) => el.scrollHeight - el.scrollTop - el.clientHeight);
    await post(Array.from({ length: 40 }, (_, i) => `old ${i}`));
    await expect.poll(async () => (await messages(page)).length, { timeout: 5_000 }).toBe(40);
    expect(await fromBottom()).toBeLessThan(2);
    // Scrolled up to read: a new message leaves the view where it is.
    await list.evaluate((el) => (el.scrollTop = 0));
    await post(['while reading']);
    await expect.poll(async () => (await messages(page)).at(-1), { timeout: 5_000 }).toBe('while reading');
    expect(await list.evaluate((el) => el.scrollTop)).toBe(0);
    // Back at the bottom: new messages keep it there.
    await list.evaluate((el) => (el.scrollTop = el.scrollHeight));
    await post(['at the bottom']);
    await expect.poll(async () => (await messages(page)).at(-1), { timeout: 5_000 }).toBe('at the bottom');
    expect(await fromBottom()).toBeLessThan(2);
    // Scrolled up, the reader sends a message: the view goes down to it.
    await list.evaluate((el) => (el.scrollTop = 0));
    await send(page, 'ada', 'my own');
    await expect.poll(async () => (await messages(page)).at(-1), { timeout: 5_000 }).toBe('my own');
    expect(await fromBottom()).toBeLessThan(2);
    await context.close();
  });

  test('rooms opened in two tabs of one browser are both in the list, in each tab and after a reload', async () => {
    const a = await openPage();
    // A second tab: the same storage.
    const b = await openPage(a.context);
    const one = `tab-a${Date.now()}`;
    const two = `tab-b${Date.now()}`;
    await openRoom(a.page, one);
    await openRoom(b.page, two);
    const list = (p: Page) => p.locator('#room-list button').allTextContents();
    await expect.poll(() => list(a.page)).toEqual(expect.arrayContaining([`#${one}`, `#${two}`]));
    await expect.poll(() => list(b.page)).toEqual(expect.arrayContaining([`#${one}`, `#${two}`]));
    await a.page.reload();
    await expect.poll(() => list(a.page)).toEqual(expect.arrayContaining([`#${one}`, `#${two}`]));
    await a.context.close();
  });
});

describe('live table', () => {
  test('both pages converge after an insert, an update and a delete', async () => {
    const a = await openPage();
    const b = await openPage();
    for (const p of [a.page, b.page]) {
      await p.click('#tab-table');
      await expect.poll(() => p.locator('#state').textContent(), { timeout: 10_000 }).toBe('live');
    }
    const name = `widget-${Date.now()}`;
    await a.page.fill('#row-name', name);
    await a.page.fill('#row-qty', '3');
    await a.page.click('#row-form button');
    const rowIn = (p: Page) => p.locator(`#rows tr[data-name="${name}"]`);
    await expect.poll(() => rowIn(b.page).count(), { timeout: 2_000 }).toBe(1);
    const id = await rowIn(b.page).getAttribute('data-id');

    // Update in page B; page A sees the new quantity.
    await b.page.locator(`#rows tr[data-id="${id}"] input[type=number]`).fill('7');
    await b.page.locator(`#rows tr[data-id="${id}"] button:has-text("Save")`).click();
    await expect.poll(() => a.page.locator(`#rows tr[data-id="${id}"] input[type=number]`).inputValue(), { timeout: 2_000 }).toBe('7');
    await a.page.screenshot({ path: path.join(shots, 'table.png') });

    // Delete in page A; both lose the row.
    await a.page.locator(`#rows tr[data-id="${id}"] button:has-text("Delete")`).click();
    for (const p of [a.page, b.page]) {
      await expect.poll(() => p.locator(`#rows tr[data-id="${id}"]`).count(), { timeout: 2_000 }).toBe(0);
    }
    const snapshot = async (p: Page) => p.locator('#rows tr').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-id')));
    expect(await snapshot(a.page)).toEqual(await snapshot(b.page));

    // A reload restores the rows from the table's saved snapshot and reads on from its offset,
    // not from the start of the stream.
    await a.page.fill('#row-name', `${name}-kept`);
    await a.page.click('#row-form button');
    await expect.poll(() => rowIn(b.page).count(), { timeout: 2_000 }).toBe(0);
    await expect.poll(() => b.page.locator(`#rows tr[data-name="${name}-kept"]`).count(), { timeout: 2_000 }).toBe(1);
    const offsets: string[] = [];
    b.page.on('request', (r) => {
      const u = new URL(r.url());
      if (u.pathname === '/v1/stream/tables/items' && r.method() === 'GET') offsets.push(u.searchParams.get('offset') ?? '');
    });
    const before = await snapshot(b.page);
    await b.page.reload();
    await expect.poll(() => b.page.locator('#state').textContent(), { timeout: 10_000 }).toBe('live');
    expect(await snapshot(b.page)).toEqual(before);
    expect(offsets.length).toBeGreaterThan(0);
    expect(offsets[0]).not.toBe('-1');
    await a.context.close();
    await b.context.close();
  });
});

describe('tail', () => {
  test('lines appended are followed live, in every live mode', async () => {
    const { page, context } = await openPage();
    await page.click('#tab-tail');
    for (const mode of ['sse', 'long-poll', 'ws']) {
      await page.selectOption('#mode', mode);
      await expect.poll(() => page.locator('#state').textContent(), { timeout: 10_000 }).toBe('live');
      const line = `line via ${mode} ${Date.now()}`;
      await page.fill('#line', line);
      await page.click('#tail-form button');
      await expect.poll(() => page.locator('#tail').textContent(), { timeout: 5_000 }).toContain(line);
      await expect.poll(() => page.locator('#info-mode').textContent(), { timeout: 5_000 }).toBe(mode);
    }
    await page.screenshot({ path: path.join(shots, 'tail.png') });
    await context.close();
  });
});

describe('tail growth', () => {
  test('the tail shows at most the last 100,000 characters, the same it saves for a reload', async () => {
    const { page, context } = await openPage();
    await page.click('#tab-tail');
    await expect.poll(() => page.locator('#state').textContent(), { timeout: 10_000 }).toBe('live');
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${demo.server().baseUrl}/v1/stream/tail/demo`, {
        method: 'POST',
        headers: { 'content-type': 'text/plain' },
        body: `${String(i).repeat(59_999)}\n`,
      });
      expect(res.status).toBe(204);
    }
    const last = `last line ${Date.now()}`;
    await page.fill('#line', last);
    await page.click('#tail-form button');
    const shown = () => page.locator('#tail').evaluate((el) => el.textContent ?? '');
    await expect.poll(async () => (await shown()).endsWith(`${last}\n`), { timeout: 10_000 }).toBe(true);
    const text = await shown();
    expect(text.length).toBe(100_000);
    const saved = await page.evaluate(() => JSON.parse(localStorage.getItem('edgestream-demo:tail') ?? '{}').text);
    expect(text).toBe(saved);
    await context.close();
  });
});

describe('layout', () => {
  /** How far the page is wider than the viewport. */
  const overflow = (page: Page) => page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);

  test('at 375 px nothing overflows sideways: Send and the table\'s inputs are on screen, and a long word wraps', async () => {
    const ctx = await demo.browser().newContext({ viewport: { width: 375, height: 667 } });
    const { page, context } = await openPage(ctx);
    await openRoom(page, `narrow${Date.now()}`);
    expect(await overflow(page)).toBe(0);
    const box = async (selector: string) => (await page.locator(selector).boundingBox())!;
    const sendButton = await box('#message-form button');
    expect(sendButton.x).toBeGreaterThanOrEqual(0);
    expect(sendButton.x + sendButton.width).toBeLessThanOrEqual(375);
    expect((await box('#message')).width).toBeGreaterThan(150);

    // One unbroken word as long as a message may be wraps inside the list.
    const word = 'w'.repeat(500);
    await send(page, 'ada', word);
    await expect.poll(() => messages(page)).toEqual([word]);
    expect(await overflow(page)).toBe(0);
    expect(await page.locator('#messages').evaluate((el) => el.scrollWidth - el.clientWidth)).toBe(0);
    await page.screenshot({ path: path.join(tmpdir(), 'edgestream-demo-narrow-rooms.png'), fullPage: true });

    await page.click('#tab-table');
    await expect.poll(() => page.locator('#state').textContent(), { timeout: 10_000 }).toBe('live');
    const name = `narrow-${Date.now()}`;
    await page.fill('#row-name', name);
    await page.click('#row-form button');
    const row = page.locator(`#rows tr[data-name="${name}"]`);
    await expect.poll(() => row.count(), { timeout: 5_000 }).toBe(1);
    expect(await overflow(page)).toBe(0);
    for (const input of await row.locator('input').all()) {
      const b = (await input.boundingBox())!;
      expect(b.width).toBeGreaterThanOrEqual(70);
      expect(b.x + b.width).toBeLessThanOrEqual(375);
    }
    for (const button of await row.locator('button').all()) {
      const b = (await button.boundingBox())!;
      expect(b.x + b.width).toBeLessThanOrEqual(375);
    }
    await page.screenshot({ path: path.join(tmpdir(), 'edgestream-demo-narrow-table.png'), fullPage: true });

    await page.click('#tab-tail');
    await expect.poll(() => page.locator('#state').textContent(), { timeout: 10_000 }).toBe('live');
    expect(await overflow(page)).toBe(0);
    await context.close();
  });

  test('right-to-left names and messages keep the line in order: name, text, time', async () => {
    const { page, context } = await openPage();
    await openRoom(page, `rtl${Date.now()}`);
    const sent = [['דנה', 'שלום עולם!'], ['ada', 'مرحبا 123'], ['سارة', 'hi 42']];
    for (const [who, text] of sent) await send(page, who, text);
    await expect.poll(() => messages(page)).toEqual(sent.map(([, text]) => text));
    // Each part as the line lays it out: with the parts not isolated from each other, the
    // bidi algorithm reorders one's characters among its neighbours' (the time's digits end up
    // on both sides of a Hebrew message, a Hebrew name after its Hebrew message).
    const layout = await page.locator('#messages li').evaluateAll((lis) =>
      lis.map((li) => ['.who', '.text', 'time'].map((s) => {
        const r = li.querySelector(s)!.getBoundingClientRect();
        return { left: r.left, right: r.right };
      })),
    );
    for (const [who, text, time] of layout) {
      expect(who.right).toBeLessThanOrEqual(text.left + 0.5);
      expect(text.right).toBeLessThanOrEqual(time.left + 0.5);
    }
    await context.close();
  });

  test('a long unbroken message wraps in All rooms on a wide page', async () => {
    const { page, context } = await openPage();
    // All rooms first: that creates the `rooms` channel, which the room then feeds.
    await page.click('#all-rooms');
    await expect.poll(() => page.locator('#state').textContent(), { timeout: 10_000 }).toBe('live');
    const url = `${demo.server().baseUrl}/v1/stream/rooms/wide${Date.now()}`;
    expect((await fetch(url, { method: 'PUT', headers: { 'content-type': 'application/json' } })).status).toBe(201);
    const word = 'v'.repeat(500);
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ id: 'w', user: 'ada', text: word, at: Date.now() }),
    });
    expect(res.status).toBe(204);
    await expect.poll(() => messages(page), { timeout: 5_000 }).toContain(word);
    expect(await overflow(page)).toBe(0);
    expect(await page.locator('#messages').evaluate((el) => el.scrollWidth - el.clientWidth)).toBe(0);
    await context.close();
  });
});

// The npm client in a real browser page (Debian Chromium through playwright-core) against
// wrangler dev, for what only a browser shows: the page's visibility, garbage collection.
import { describe, expect, test } from 'vitest';
import type { CDPSession, Page } from 'playwright-core';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { useDemo } from './demo-page';
import { startServer } from '../../scripts/dev-server.mjs';

const demo = useDemo();

/**
 * Runs `body` with a TCP relay to the server between the page and it, as a network between:
 * `wire` joins each connection the page opens (`client`) to its own to the server (`server`),
 * passing bytes on as the test's network would. Every socket is destroyed afterwards.
 */
async function withRelay(
  wire: (client: net.Socket, server: net.Socket) => void,
  body: (origin: string) => Promise<void>,
): Promise<void> {
  const target = Number(new URL(demo.server().baseUrl).port);
  const open = new Set<net.Socket>();
  const relay = net.createServer((client) => {
    const server = net.connect(target, '127.0.0.1');
    for (const s of [client, server]) {
      open.add(s);
      s.on('close', () => open.delete(s));
      s.on('error', () => {});
    }
    wire(client, server);
  });
  await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
  try {
    await body(`http://127.0.0.1:${(relay.address() as net.AddressInfo).port}`);
  } finally {
    for (const s of open) s.destroy();
    await new Promise((r) => relay.close(r));
  }
}

/**
 * A page of the server's origin with the client loaded as `window.es`, and nothing else running
 * (a 404 is a document of the origin; the demo's page would follow its own streams).
 */
async function clientPage(origin = demo.server().baseUrl): Promise<{ page: Page; cdp: CDPSession; errors: string[]; close: () => Promise<void> }> {
  const context = await demo.browser().newContext();
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${origin}/client-test`);
  // A string: vite would rewrite an import() in a function.
  await page.evaluate(`import('/vendor/edgestream/src/browser.js').then((es) => { window.es = es; })`);
  const cdp = await context.newCDPSession(page);
  return { page, cdp, errors, close: () => context.close() };
}

/**
 * Follows `url` in the page as `window.h`, with its items' `n` in `window.got`. With `failures`
 * its errors go to `window.failures`; without, an error is unheard, as some tests want.
 */
function followInPage(page: Page, url: string, options: Record<string, unknown>, failures = false) {
  return page.evaluate(
    ({ url, options, failures }) => {
      const w = window as any;
      w.got = [];
      w.failures = [];
      w.h = w.es.stream({ url, ...options });
      w.h.subscribe((b: any) => w.got.push(...b.items.map((i: any) => i.n)), failures ? (e: any) => w.failures.push(String(e)) : undefined);
    },
    { url, options, failures },
  );
}

/** How many `visibilitychange` listeners the page's document has. */
async function visibilityListeners(cdp: CDPSession): Promise<number> {
  const { result } = await cdp.send('Runtime.evaluate', { expression: 'document' });
  const { listeners } = await cdp.send('DOMDebugger.getEventListeners', { objectId: result.objectId! });
  await cdp.send('Runtime.releaseObject', { objectId: result.objectId! });
  return listeners.filter((l) => l.type === 'visibilitychange').length;
}

/**
 * Collects garbage until the document has `count` visibility listeners: handles are collected,
 * and their wasm freed, in a later task than the collection.
 */
async function untilListeners(page: Page, cdp: CDPSession, count: number) {
  await expect
    .poll(async () => {
      await cdp.send('HeapProfiler.collectGarbage');
      await page.evaluate(() => new Promise((r) => setTimeout(r, 50)));
      return visibilityListeners(cdp);
    }, { timeout: 15_000, interval: 100 })
    .toBe(count);
}

async function createJson(path: string, body: string) {
  const res = await fetch(`${demo.server().baseUrl}/v1/stream/${path}`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body,
  });
  await res.arrayBuffer();
  expect(res.status).toBe(201);
}

describe('client in a page', () => {
  test('a handle dropped without cancel() leaves no visibility listener behind once collected, and hiding the tab then throws nothing', async () => {
    const path = `dropped-${Date.now()}`;
    await createJson(path, '[{"n":1}]');
    const { page, cdp, errors, close } = await clientPage();
    const url = `${demo.server().baseUrl}/v1/stream/${path}`;
    const before = await visibilityListeners(cdp);
    await page.evaluate(async (url) => {
      const es = (window as any).es;
      for (let i = 0; i < 3; i++) {
        // Read a batch, then forget the handle: no cancel(), no read to the end.
        const first = await es.stream({ url, live: false }).next();
        if (first.value.items[0].n !== 1) throw new Error('unexpected batch');
      }
    }, url);
    expect(await visibilityListeners(cdp)).toBe(before + 3);
    await untilListeners(page, cdp, before);
    await page.evaluate(() => {
      Object.defineProperty(document, 'visibilityState', { value: 'hidden', configurable: true });
      document.dispatchEvent(new Event('visibilitychange'));
    });
    expect(errors).toEqual([]);
    await close();
  });

  test('a reader waiting out a long backoff while offline reconnects as soon as the browser is back online', async () => {
    const path = `online-${Date.now()}`;
    await createJson(path, '[{"n":0}]');
    const { page, errors, close } = await clientPage();
    const url = `${demo.server().baseUrl}/v1/stream/${path}`;
    // The page went offline after loading (the wasm is not fetched offline).
    await page.evaluate(() => (window as any).es.init());
    await page.context().setOffline(true);
    // At least 300 s between tries (half jitter): only the `online` event can bring it back sooner.
    await followInPage(page, url, { live: 'long-poll', retry: { initialDelayMs: 600_000, maxDelayMs: 600_000 } });
    await expect.poll(() => page.evaluate(() => (window as any).h.retrying), { timeout: 15_000 }).toBe(true);
    expect(await page.evaluate(() => (window as any).got)).toEqual([]);
    await page.context().setOffline(false);
    await expect.poll(() => page.evaluate(() => (window as any).got), { timeout: 20_000 }).toEqual([0]);
    expect(await page.evaluate(() => (window as any).h.retrying)).toBe(false);
    expect(errors).toEqual([]);
    await close();
  });

  test('offline before the wasm is loaded: a one-off call fails with NETWORK_ERROR, and a live reader and a producer wait for the network, then go on', async () => {
    const path = `wasm-offline-${Date.now()}`;
    await createJson(path, '[{"n":0}]');
    const { page, errors, close } = await clientPage();
    const url = `${demo.server().baseUrl}/v1/stream/${path}`;
    // The module is imported, its wasm not fetched yet: the network goes before first use.
    await page.context().setOffline(true);
    const oneOff = await page.evaluate(async (url) => {
      const es = (window as any).es;
      try {
        await es.DurableStream.head({ url, retry: { maxRetries: 1, initialDelayMs: 1 } });
        return 'resolved';
      } catch (e: any) {
        return { isClientError: e instanceof es.DurableStreamError, code: e.code, cause: e.cause?.name };
      }
    }, url);
    expect(oneOff).toEqual({ isClientError: true, code: 'NETWORK_ERROR', cause: 'TypeError' });
    await followInPage(page, url, { live: 'long-poll' }, true);
    await page.evaluate((url) => {
      const w = window as any;
      w.p = new w.es.IdempotentProducer(new w.es.DurableStream({ url }), 'offline-tab');
      w.p.append({ n: 1 });
      w.flushed = w.p.flush().then(() => 'flushed', (e: any) => String(e));
    }, url);
    await expect.poll(() => page.evaluate(() => (window as any).h.retrying), { timeout: 15_000 }).toBe(true);
    expect(await page.evaluate(() => (window as any).failures)).toEqual([]);
    await page.context().setOffline(false);
    expect(await page.evaluate(() => (window as any).flushed)).toBe('flushed');
    await expect.poll(() => page.evaluate(() => (window as any).got), { timeout: 20_000 }).toEqual([0, 1]);
    expect(await page.evaluate(() => (window as any).failures)).toEqual([]);
    await page.evaluate(() => (window as any).h.cancel());
    expect(errors).toEqual([]);
    await close();
  });

  test('a handle read partly and dropped, whose signal lives on, is collected (its signal does not keep it)', async () => {
    const path = `dropped-signal-${Date.now()}`;
    await createJson(path, '[{"n":1}]');
    const { page, cdp, errors, close } = await clientPage();
    const url = `${demo.server().baseUrl}/v1/stream/${path}`;
    const before = await visibilityListeners(cdp);
    await page.evaluate(async (url) => {
      const w = window as any;
      w.shared = new AbortController();
      for (let i = 0; i < 3; i++) {
        const first = await w.es.stream({ url, live: false, signal: w.shared.signal }).next();
        if (first.value.items[0].n !== 1) throw new Error('unexpected batch');
      }
    }, url);
    expect(await visibilityListeners(cdp)).toBe(before + 3);
    await untilListeners(page, cdp, before);
    // A live handle on the same signal is still cancelled by it.
    const ended = await page.evaluate(async (url) => {
      const w = window as any;
      const h = w.es.stream({ url, live: 'long-poll', signal: w.shared.signal });
      await h.next();
      const next = h.next();
      w.shared.abort();
      return (await next).done;
    }, url);
    expect(ended).toBe(true);
    expect(errors).toEqual([]);
    await close();
  });

  test('a long-poll answer that a slow link takes longer than the unanswered-poll watchdog to bring is read, not sent again and again', async () => {
    const path = `slow-answer-${Date.now()}`;
    await createJson(path, '[{"n":0}]');
    const { page, cdp, errors, close } = await clientPage();
    const url = `${demo.server().baseUrl}/v1/stream/${path}`;
    // The reader gives a long-poll unanswered for 65 s up as a dead connection: here after 2 s,
    // which the page's timers of exactly that length are shortened to.
    await page.evaluate(() => {
      const set = window.setTimeout;
      window.setTimeout = ((f: () => void, ms?: number, ...rest: unknown[]) => set(f, ms === 65_000 ? 2_000 : ms, ...rest)) as typeof setTimeout;
    });
    await page.evaluate(() => (window as any).es.init());
    // A slow link (100 KB/s down), from the reader's first request on.
    await cdp.send('Network.enable');
    await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: 100_000, uploadThroughput: -1 });
    await followInPage(page, url, { live: 'long-poll' }, true);
    await expect.poll(() => page.evaluate(() => (window as any).got), { timeout: 15_000 }).toEqual([0]);
    // 700 KB that does not compress, appended while the reader polls: each answer (the server
    // sends up to about 512 KB in one) takes the link seconds, well past the watchdog.
    const N = 700;
    const items = Array.from({ length: N }, (_, i) => ({ n: i + 1, pad: randomBytes(750).toString('base64') }));
    const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(items) });
    expect(res.status).toBe(204);
    await expect.poll(() => page.evaluate(() => (window as any).got.length), { timeout: 90_000 }).toBe(N + 1);
    expect(await page.evaluate(() => (window as any).got)).toEqual(Array.from({ length: N + 1 }, (_, i) => i));
    expect(await page.evaluate(() => (window as any).failures)).toEqual([]);
    await page.evaluate(() => (window as any).h.cancel());
    expect(errors).toEqual([]);
    await close();
  }, 120_000);

  test('a read sent on a connection that never answers is given up after the watchdog and sent again', async () => {
    // A TCP relay to the server that swallows the first catch-up read (`offset=-1`) sent through
    // it: that connection stays open and says nothing, as one that died silently (a half-open
    // socket after the network changed, a proxy that hangs) would.
    let swallowed = 0;
    const wire = (client: net.Socket, server: net.Socket) => {
      let dead = false;
      client.on('data', (d) => {
        if (!dead && swallowed === 0 && /^GET \/v1\/stream\/\S*[?&]offset=-1/.test(d.toString('latin1'))) {
          dead = true;
          swallowed++;
        }
        if (!dead) server.write(d);
      });
      server.on('data', (d) => {
        if (!dead) client.write(d);
      });
      client.on('close', () => server.destroy());
      // Nor does it close when the server closes its side.
      server.on('close', () => dead || client.destroy());
    };
    await withRelay(wire, async (origin) => {
      const path = `unanswered-${Date.now()}`;
      await createJson(path, '[{"n":0}]');
      const { page, errors, close } = await clientPage(origin);
      // The reader's 65 s watchdog, here after 2 s: the page's timers of exactly that length are shortened.
      await page.evaluate(() => {
        const set = window.setTimeout;
        window.setTimeout = ((f: () => void, ms?: number, ...rest: unknown[]) => set(f, ms === 65_000 ? 2_000 : ms, ...rest)) as typeof setTimeout;
      });
      await page.evaluate(() => (window as any).es.init());
      await followInPage(page, `${origin}/v1/stream/${path}`, { live: 'sse' });
      await expect.poll(() => swallowed, { timeout: 10_000 }).toBe(1);
      await expect.poll(() => page.evaluate(() => (window as any).got), { timeout: 20_000 }).toEqual([0]);
      expect(await page.evaluate(() => (window as any).h.mode)).toBe('sse');
      expect(errors).toEqual([]);
      await close();
    });
  });

  test('an auto reader whose SSE connections the network breaks again and again, each within a second, stays on SSE and misses nothing', async () => {
    // A TCP relay to the server, as a network between: it breaks each SSE connection 100 ms
    // after the first bytes of its response (where the stream stands) got through.
    const BREAKS = 5;
    let breaks = 0;
    const wire = (client: net.Socket, server: net.Socket) => {
      // The request on its way (a connection is reused for the next) is an SSE request.
      let sse = false;
      client.on('data', (d) => {
        const request = /^[A-Z]+ \S*/.exec(d.toString('latin1'));
        if (request) sse = /[?&]live=sse/.test(request[0]);
      });
      server.on('data', () => {
        if (!sse || breaks >= BREAKS) return;
        sse = false;
        breaks++;
        setTimeout(() => (client.destroy(), server.destroy()), 100);
      });
      client.on('close', () => server.destroy());
      server.on('close', () => client.destroy());
      client.pipe(server).pipe(client);
    };
    await withRelay(wire, async (origin) => {
      const path = `broken-${Date.now()}`;
      await createJson(path, '[{"n":0}]');
      const { page, errors, close } = await clientPage(origin);
      await followInPage(page, `${origin}/v1/stream/${path}`, { live: 'auto', retry: { initialDelayMs: 10, maxDelayMs: 100 } });
      await expect.poll(() => breaks, { timeout: 15_000 }).toBe(BREAKS);
      // Appended after the last break: it comes over SSE.
      const res = await fetch(`${demo.server().baseUrl}/v1/stream/${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '[{"n":1}]' });
      expect(res.status).toBe(204);
      await expect.poll(() => page.evaluate(() => (window as any).got), { timeout: 10_000 }).toEqual([0, 1]);
      expect(await page.evaluate(() => (window as any).h.mode)).toBe('sse');
      expect(errors).toEqual([]);
      await close();
    });
  });
  test('a WebSocket reader on a link of 4 KB/s reads an append larger than the link carries in 40 s, on one socket', async () => {
    // A page cannot read a WebSocket message before all of it has arrived, and the reader gives
    // a socket up when nothing arrives for 40 s (a ping after 20 s of quiet, whose answer comes
    // behind the message on the connection). A live append went out in messages of up to
    // 512 KiB (and a catch-up over the socket, which a reconnect starts with, up to 1 MiB): here
    // 250 KB, a minute on this link, so the reader gave its socket up, and again each time it
    // came back for it, and read nothing. In messages of at most 64 KiB (16 s each) it keeps
    // its socket.
    // The link: a TCP relay that passes the server's bytes on WebSocket connections at 4 KB/s,
    // in order, as a slow network does (Chromium's own throttling lets the ping's answer by).
    const RATE = 4_000;
    let sockets = 0;
    const wire = (client: net.Socket, server: net.Socket) => {
      let slow: boolean | undefined;
      const queue: Buffer[] = [];
      const pace = setInterval(() => {
        let budget = RATE / 10;
        while (budget > 0 && queue.length) {
          const head = queue[0];
          const part = head.subarray(0, budget);
          client.write(part);
          budget -= part.length;
          if (part.length === head.length) queue.shift();
          else queue[0] = head.subarray(part.length);
        }
      }, 100);
      client.on('data', (d) => {
        if (slow === undefined) {
          slow = /^GET \S*[?&]live=ws/.test(d.toString('latin1'));
          if (slow) sockets++;
        }
        server.write(d);
      });
      server.on('data', (d) => (slow ? queue.push(d) : client.write(d)));
      client.on('close', () => {
        clearInterval(pace);
        server.destroy();
      });
      server.on('close', () => {
        if (!slow) client.destroy();
      });
    };
    await withRelay(wire, async (origin) => {
      const path = `ws-slow-${Date.now()}`;
      const N = 250;
      const items = Array.from({ length: N }, (_, i) => ({ n: i, pad: randomBytes(730).toString('base64') }));
      await createJson(path, JSON.stringify(items.slice(0, 1)));
      const { page, errors, close } = await clientPage(origin);
      await page.evaluate(() => (window as any).es.init());
      await followInPage(page, `${origin}/v1/stream/${path}`, { live: 'ws' }, true);
      // It catches up over HTTP, then follows over the socket.
      await expect.poll(() => page.evaluate(() => (window as any).got), { timeout: 20_000 }).toEqual([0]);
      await expect.poll(() => page.evaluate(() => (window as any).h.mode), { timeout: 20_000 }).toBe('ws');
      const res = await fetch(`${demo.server().baseUrl}/v1/stream/${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(items.slice(1)),
      });
      expect(res.status).toBe(204);
      await expect.poll(() => page.evaluate(() => (window as any).got.length), { timeout: 150_000, interval: 1_000 }).toBe(N);
      expect(await page.evaluate(() => (window as any).got)).toEqual(items.map((i) => i.n));
      expect(await page.evaluate(() => (window as any).failures)).toEqual([]);
      expect(sockets).toBe(1);
      await page.evaluate(() => (window as any).h.cancel());
      expect(errors).toEqual([]);
      await close();
    });
  }, 170_000);

  test("a producer's batch waiting behind live readers for one of the 6 HTTP/1.1 connections goes first, rather than time out at the back of the queue again and again", async () => {
    // A live request waited for a connection in the browser's queue in turn with everything
    // else, and a request the client gives up on waiting (a producer's after requestTimeoutMs, a
    // read's after 65 s) went to the back of the queue again. In a probe, 15 SSE readers in one
    // page, and a producer's flush and a catch-up read from the page had not ended 8 minutes on.
    // Here connections end every 4 s and the producer waits 3 s: 18 readers hold 6 and keep 12
    // waiting, which the batch waited behind each time. Live requests now go last.
    const server = await startServer({ vars: { SSE_CONNECTION_MS: '4000' } });
    try {
      const base = server.baseUrl;
      const tag = `queue-${Date.now()}`;
      for (let i = 0; i < 18; i++) {
        const res = await fetch(`${base}/v1/stream/${tag}-${i}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '[{"n":0}]' });
        expect(res.status).toBe(201);
      }
      const { page, errors, close } = await clientPage(base);
      await page.evaluate(
        ({ base, tag }) => {
          const w = window as any;
          w.got = [];
          w.hs = Array.from({ length: 18 }, (_, i) => {
            const h = w.es.stream({ url: `${base}/v1/stream/${tag}-${i}`, live: 'sse' });
            h.subscribe((b: any) => i === 17 && w.got.push(...b.items.map((x: any) => x.n)));
            return h;
          });
        },
        { base, tag },
      );
      await expect.poll(() => page.evaluate(() => (window as any).hs.every((h: any) => h.upToDate)), { timeout: 30_000 }).toBe(true);
      await page.evaluate((url) => {
        const w = window as any;
        w.p = new w.es.IdempotentProducer(new w.es.DurableStream({ url }), 'queued', { requestTimeoutMs: 3000 });
        w.p.append({ n: 1 });
        w.flushed = 'waiting';
        w.p.flush().then(() => (w.flushed = 'flushed'), (e: any) => (w.flushed = String(e)));
      }, `${base}/v1/stream/${tag}-17`);
      await expect.poll(() => page.evaluate(() => (window as any).flushed), { timeout: 30_000 }).toBe('flushed');
      await expect.poll(() => page.evaluate(() => (window as any).got), { timeout: 20_000 }).toEqual([0, 1]);
      await page.evaluate(() => (window as any).hs.forEach((h: any) => h.cancel()));
      expect(errors).toEqual([]);
      await close();
    } finally {
      await server.stop();
    }
  }, 90_000);
});

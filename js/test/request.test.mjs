// What the client sends of the caller's headers and params, against a fake server that records
// each request: protocol headers replace the caller's of the same name in any case (never joined
// to them), reserved params are dropped, and `lastRequest` reports what was actually sent.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { DurableStream, stream } from '../src/node.js';

/** A server that records `{ method, url, headers }` of each request and answers with `handler`. */
async function withServer(handler, body) {
  const seen = [];
  const server = http.createServer((req, res) => {
    seen.push({ method: req.method, url: new URL(req.url, 'http://x'), headers: req.headers });
    req.resume();
    req.on('end', () => handler(req, res));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    await body(`http://127.0.0.1:${server.address().port}/s`, seen);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
}

const page = (req, res) => {
  res.writeHead(200, { 'content-type': 'application/json', 'stream-next-offset': 'o1', 'stream-up-to-date': 'true' });
  res.end('[1]');
};

test('reserved params are dropped, and lastRequest.params shows only what was sent', async () => {
  await withServer(page, async (url, seen) => {
    const params = { offset: '99', live: 'sse', cursor: 'c', mine: 'yes' };
    const h = stream({ url, live: false, params, headers: { 'X-Trace': 't1' } });
    assert.deepEqual(await h.items(), [1]);
    assert.equal(seen.length, 1);
    assert.deepEqual([...seen[0].url.searchParams], [['mine', 'yes'], ['offset', '-1']]);
    assert.deepEqual(h.lastRequest, { headers: { 'X-Trace': 't1' }, params: { mine: 'yes' } });
  });
});

test('query parameters go in order of name, the caller\'s among the client\'s, so one read is one URL whichever client asks (PROTOCOL §10.1)', async () => {
  await withServer(
    (req, res) => {
      const live = new URL(req.url, 'http://x').searchParams.get('live');
      const head = { 'content-type': 'application/json', 'stream-next-offset': live ? 'o2' : 'o1', 'stream-up-to-date': 'true', 'stream-cursor': '5' };
      res.writeHead(200, live ? { ...head, 'stream-closed': 'true' } : head);
      res.end(live ? '[2]' : '[1]');
    },
    async (url, seen) => {
      const h = stream({ url, live: 'long-poll', json: true, params: { zone: 'eu', auth: 'a', tag: () => 't' } });
      const items = [];
      for await (const batch of h) items.push(...batch.items);
      assert.deepEqual(items, [1, 2]);
      assert.deepEqual(
        seen.map((r) => r.url.search),
        ['?auth=a&offset=-1&tag=t&zone=eu', '?auth=a&cursor=5&live=long-poll&offset=o1&tag=t&zone=eu'],
      );
    },
  );
});

test("a protocol header replaces the caller's of the same name in any case, never joined to it", async () => {
  await withServer(
    (req, res) => {
      res.writeHead(req.method === 'HEAD' ? 200 : 204, {
        'content-type': 'application/json',
        'stream-next-offset': 'o2',
      });
      res.end();
    },
    async (url, seen) => {
      const ds = new DurableStream({
        url,
        contentType: 'application/json',
        headers: { 'Content-Type': 'text/plain', 'X-Trace': 't2' },
      });
      await ds.append({ a: 1 });
      const post = seen.find((r) => r.method === 'POST');
      assert.equal(post.headers['content-type'], 'application/json');
      assert.equal(post.headers['x-trace'], 't2');
    },
  );
});

test('a header name that HTTP does not allow is INVALID_ARGUMENT, and nothing is sent', async () => {
  await withServer(page, async (url, seen) => {
    const h = stream({ url, live: false, headers: { 'bad name': 'x' } });
    await assert.rejects(h.items(), (e) => e.code === 'INVALID_ARGUMENT');
    assert.equal(seen.length, 0);
  });
});

test('a mistyped option is INVALID_ARGUMENT naming it, before anything is sent, never silently ignored', async () => {
  await withServer(page, async (url, seen) => {
    for (const [options, name] of [
      [{ ttlSeconds: '60' }, 'ttlSeconds'],
      [{ expiresAt: new Date() }, 'expiresAt'],
      [{ contentType: 42 }, 'contentType'],
      [{ closed: 'true' }, 'closed'],
      [{ channel: 1 }, 'channel'],
    ]) {
      await assert.rejects(
        DurableStream.create({ url, ...options }),
        (e) => e.code === 'INVALID_ARGUMENT' && e.message.includes(name),
        name,
      );
    }
    for (const [options, name] of [
      [{ json: 'yes' }, 'json'],
      [{ pauseWhenHidden: 0 }, 'pauseWhenHidden'],
    ]) {
      await assert.rejects(
        stream({ url, live: false, ...options }).items(),
        (e) => e.code === 'INVALID_ARGUMENT' && e.message.includes(name),
        name,
      );
    }
    assert.equal(seen.length, 0);
    // null and undefined mean "not given".
    await stream({ url, live: false, json: null, pauseWhenHidden: undefined }).items();
    assert.equal(seen.length, 1);
  });
});

test("items() on bytes, and bytes() or text() on JSON, are INVALID_ARGUMENT, not an empty result", async () => {
  const answer = (type, body) => (req, res) => {
    res.writeHead(200, { 'content-type': type, 'stream-next-offset': 'o1', 'stream-up-to-date': 'true', 'stream-closed': 'true' });
    res.end(body);
  };
  await withServer(answer('text/plain', 'hello'), async (url) => {
    await assert.rejects(stream({ url, live: false }).items(), (e) => e.code === 'INVALID_ARGUMENT' && /bytes\(\)/.test(e.message));
    assert.equal(await stream({ url, live: false }).text(), 'hello');
  });
  await withServer(answer('application/json', '[1,2]'), async (url) => {
    await assert.rejects(stream({ url, live: false }).text(), (e) => e.code === 'INVALID_ARGUMENT' && /items\(\)/.test(e.message));
    await assert.rejects(stream({ url, live: false }).bytes(), (e) => e.code === 'INVALID_ARGUMENT');
    assert.deepEqual(await stream({ url, live: false }).items(), [1, 2]);
  });
  // Empty streams too: the response says which kind the stream is.
  await withServer(answer('text/plain', ''), async (url) => {
    await assert.rejects(stream({ url, live: false }).items(), (e) => e.code === 'INVALID_ARGUMENT');
    assert.equal(await stream({ url, live: false }).text(), '');
  });
  await withServer(answer('application/json', '[]'), async (url) => {
    await assert.rejects(stream({ url, live: false }).bytes(), (e) => e.code === 'INVALID_ARGUMENT');
    assert.deepEqual(await stream({ url, live: false }).items(), []);
  });
});

test('a value JSON.stringify cannot encode is INVALID_ARGUMENT, and nothing is sent', async () => {
  await withServer(
    (req, res) => {
      res.writeHead(204, { 'stream-next-offset': 'o2' });
      res.end();
    },
    async (url, seen) => {
      const ds = new DurableStream({ url, contentType: 'application/json' });
      const cycle = {};
      cycle.self = cycle;
      for (const value of [1n, cycle, { toJSON() { throw new Error('no'); } }]) {
        await assert.rejects(ds.append(value), (e) => e.code === 'INVALID_ARGUMENT');
      }
      assert.equal(seen.length, 0);
    },
  );
});

test('a header or param value that is not a string, number or boolean is INVALID_ARGUMENT naming it, and nothing is sent', async () => {
  await withServer(page, async (url, seen) => {
    const bad = [{}, [1, 2], Symbol('x'), 1n, () => ({}), async () => [1]];
    for (const value of bad) {
      for (const map of ['headers', 'params']) {
        await assert.rejects(
          stream({ url, live: false, [map]: { a: value } }).items(),
          (e) => e.code === 'INVALID_ARGUMENT' && e.message.includes(`${map}.a`),
          `${map} ${typeof value}`,
        );
      }
      await assert.rejects(DurableStream.head({ url, headers: { a: value } }), (e) => e.code === 'INVALID_ARGUMENT');
    }
    assert.equal(seen.length, 0);
    // Strings, numbers and booleans are sent as text.
    const h = stream({ url, live: false, headers: { a: 'x', b: 2, c: true, d: () => 3 } });
    await h.items();
    assert.deepEqual(h.lastRequest.headers, { a: 'x', b: '2', c: 'true', d: '3' });
  });
});

test('headers and params given as a Map or URLSearchParams are sent, not silently dropped', async () => {
  await withServer(page, async (url, seen) => {
    const h = stream({
      url,
      live: false,
      headers: new Map([['authorization', 'Bearer t'], ['x-n', () => 2]]),
      params: new URLSearchParams({ token: 'abc', offset: '99' }),
    });
    assert.deepEqual(await h.items(), [1]);
    assert.equal(seen[0].headers.authorization, 'Bearer t');
    assert.equal(seen[0].headers['x-n'], '2');
    assert.deepEqual([...seen[0].url.searchParams], [['offset', '-1'], ['token', 'abc']]);
    assert.deepEqual(h.lastRequest, { headers: { authorization: 'Bearer t', 'x-n': '2' }, params: { token: 'abc' } });
    // A Map's values are checked as an object's are.
    await assert.rejects(
      stream({ url, live: false, headers: new Map([['a', {}]]) }).items(),
      (e) => e.code === 'INVALID_ARGUMENT' && e.message.includes('headers.a'),
    );
  });
});

test('headers and params given as an array of [name, value] pairs (as fetch takes them) are sent; an array of anything else is INVALID_ARGUMENT saying so', async () => {
  await withServer(page, async (url, seen) => {
    const h = stream({ url, live: false, headers: [['authorization', 'Bearer t'], ['x-n', () => 2]], params: [['token', 'abc'], ['offset', '99']] });
    assert.deepEqual(await h.items(), [1]);
    assert.equal(seen[0].headers.authorization, 'Bearer t');
    assert.equal(seen[0].headers['x-n'], '2');
    assert.deepEqual([...seen[0].url.searchParams], [['offset', '-1'], ['token', 'abc']]);
    assert.deepEqual(h.lastRequest, { headers: { authorization: 'Bearer t', 'x-n': '2' }, params: { token: 'abc' } });
    // A flat list, a pair without its value, three elements, a Set of names: nothing is sent.
    for (const headers of [['authorization', 'Bearer t'], [['a', 'b'], ['authorization']], [['a', 'b', 'c']], new Set(['a'])]) {
      await assert.rejects(
        stream({ url, live: false, headers }).items(),
        (e) => e.code === 'INVALID_ARGUMENT' && e.message === 'headers given as an array (or another iterable) must hold [name, value] pairs',
      );
    }
    await assert.rejects(
      stream({ url, live: false, params: () => [['token']] }).items(),
      (e) => e.code === 'INVALID_ARGUMENT' && e.message === 'params given as an array (or another iterable) must hold [name, value] pairs',
    );
    assert.equal(seen.length, 1);
  });
});

test('a producer id that cannot be sent as a header as it is is INVALID_ARGUMENT at construction, not a failed first flush', async () => {
  const { IdempotentProducer } = await import('../src/node.js');
  await withServer(page, async (url, seen) => {
    // Non-ASCII (fetch sends a header as Latin-1 bytes, or refuses it), control characters, and
    // spaces at either end (HTTP trims them: the server would see another id).
    for (const id of ['José', 'tab€1', 'a\nb', ' lead', 'trail ', 'tab\t']) {
      assert.throws(
        () => new IdempotentProducer(new DurableStream({ url, contentType: 'text/plain' }), id),
        (e) => e.code === 'INVALID_ARGUMENT' && /producerId/.test(e.message),
        JSON.stringify(id),
      );
    }
    assert.equal(seen.length, 0);
    // Printable ASCII, inner spaces included, is fine.
    new IdempotentProducer(url, 'tab 1: user/42 ~ok');
  });
});

test('a signal that is not an AbortSignal, or a relative URL without a page, is INVALID_ARGUMENT at once', async () => {
  const { table } = await import('../src/node.js');
  for (const make of [
    (o) => stream({ live: false, ...o }),
    (o) => new DurableStream(o),
    (o) => table({ live: false, ...o }),
  ]) {
    assert.throws(() => make({ url: 'http://127.0.0.1:1/s', signal: 'x' }), (e) => e.code === 'INVALID_ARGUMENT' && /signal/.test(e.message));
    assert.throws(() => make({ url: '/v1/stream/x' }), (e) => e.code === 'INVALID_ARGUMENT' && /absolute/.test(e.message));
  }
});

test('an option given as undefined is the same as one left out (index.d.ts types them `?: T | undefined`)', async () => {
  await withServer(page, async (url, seen) => {
    const none = { offset: undefined, live: undefined, json: undefined, retry: undefined, signal: undefined, pauseWhenHidden: undefined };
    const h = stream({ url, ...none, live: false, headers: undefined, params: undefined });
    assert.deepEqual(await h.items(), [1]);
    assert.equal(seen.at(-1).url.searchParams.get('offset'), '-1');
    // A DurableStream's own headers, params, retry and signal stand unless the reader's options
    // give others: an undefined one does not drop them.
    const ds = new DurableStream({ url, contentType: undefined, headers: { 'x-mine': 'ds' }, params: { p: 'ds' } });
    const r = ds.stream({ ...none, live: false, headers: undefined, params: undefined });
    assert.deepEqual(await r.items(), [1]);
    assert.deepEqual(r.lastRequest, { headers: { 'x-mine': 'ds' }, params: { p: 'ds' } });
    const own = ds.stream({ live: false, headers: { 'x-mine': 'reader' } });
    await own.items();
    assert.deepEqual(own.lastRequest.headers, { 'x-mine': 'reader' });
  });
});

test('a headers or params function whose promise rejects is retried as a failed connection is (nothing was sent), whatever the method', async () => {
  let calls = 0;
  const flaky = async () => {
    if (++calls <= 2) throw new TypeError('token service down');
    return 't';
  };
  await withServer(page, async (url, seen) => {
    const ds = new DurableStream({ url, contentType: 'application/json', headers: { authorization: flaky }, retry: { initialDelayMs: 5 } });
    await ds.head();
    assert.equal(seen.length, 1);
    assert.equal(seen[0].headers.authorization, 't');
    // A plain POST, which is never sent twice once it may have landed, is sent once it can be.
    calls = 0;
    await ds.append({ n: 1 });
    assert.deepEqual(seen.map((r) => r.method), ['HEAD', 'POST']);
  });
});

test('a live reader whose params function fails once goes on; one that always fails gives up with NETWORK_ERROR and the cause', async () => {
  await withServer(page, async (url, seen) => {
    let calls = 0;
    const params = {
      token: async () => {
        if (++calls === 2) throw new TypeError('token service down');
        return `t${calls}`;
      },
    };
    const h = stream({ url, live: 'long-poll', params, retry: { initialDelayMs: 5 } });
    const it = h[Symbol.asyncIterator]();
    for (let i = 0; i < 3; i++) assert.equal((await it.next()).done, false);
    h.cancel();
    assert.deepEqual(seen.slice(0, 3).map((r) => r.url.searchParams.get('token')), ['t1', 't3', 't4']);
    const cause = new TypeError('always down');
    const broken = new DurableStream({ url, headers: () => Promise.reject(cause), retry: { maxRetries: 1, initialDelayMs: 5 } });
    await assert.rejects(broken.head(), (e) => e.code === 'NETWORK_ERROR' && e.cause === cause && /headers or params function/.test(e.message));
  });
});

test('a headers or params function that throws is a bug of the caller\'s: INVALID_ARGUMENT at once, with the cause, and nothing is sent', async () => {
  await withServer(page, async (url, seen) => {
    const bug = new TypeError('undefined is not a function');
    const headers = {
      authorization: () => {
        throw bug;
      },
    };
    await assert.rejects(new DurableStream({ url, headers }).head(), (e) => e.code === 'INVALID_ARGUMENT' && e.cause === bug);
    await assert.rejects(stream({ url, live: 'long-poll', headers }).items(), (e) => e.code === 'INVALID_ARGUMENT' && e.cause === bug);
    assert.equal(seen.length, 0);
  });
});

// A wasm that cannot be loaded (a bundler that did not ship it, a wrong file) rejects with a
// DurableStreamError, as every error of the client does (index.d.ts), not the host's own error:
// an app that handles errors by `code` sees it. Each entry module is checked in a process of its
// own (the loader is per module instance), so this file runs browser.js's loader in Node, which
// fetches string and http(s) URL inputs as it does in a browser.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { DurableStreamError, init, stream } from '../src/browser.js';

test('a wasm that cannot be fetched or compiled rejects with a DurableStreamError, the load error as cause', async () => {
  const server = createServer((req, res) => {
    if (req.url === '/page.wasm') {
      res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><p>an SPA fallback</p>');
    } else res.writeHead(404, { 'content-type': 'text/plain' }).end('not here');
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const origin = `http://127.0.0.1:${server.address().port}`;
  try {
    // A 404: the status, as for any request the client makes.
    await assert.rejects(init(`${origin}/missing.wasm`), (e) => {
      assert.ok(e instanceof DurableStreamError, `${e?.constructor?.name}: ${e?.message}`);
      assert.equal(e.code, 'UNEXPECTED_STATUS');
      assert.equal(e.status, 404);
      assert.match(e.message, /404/);
      assert.match(e.message, /missing\.wasm/);
      return true;
    });
    // A file that is not the wasm, and bytes that are not one: the compile error as cause.
    for (const input of [`${origin}/page.wasm`, new Uint8Array([1, 2, 3])]) {
      await assert.rejects(init(input), (e) => {
        assert.ok(e instanceof DurableStreamError, `${e?.constructor?.name}: ${e?.message}`);
        assert.equal(e.code, 'NOT_SUPPORTED');
        assert.ok(e.cause instanceof Error, String(e.cause));
        return true;
      });
    }
    // The first call of an app, loading from where init() was last told: its error is the same.
    await assert.rejects(stream({ url: `${origin}/s`, live: false }).items(), (e) => e instanceof DurableStreamError && e.code === 'NOT_SUPPORTED');
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

test('in Node, a wasm file that is not there rejects with a DurableStreamError too', async () => {
  const { init: nodeInit } = await import('../src/node.js'); // its loader replaces browser.js's
  await assert.rejects(nodeInit(new URL('./no-such-file.wasm', import.meta.url)), (e) => {
    assert.ok(e instanceof DurableStreamError, `${e?.constructor?.name}: ${e?.message}`);
    assert.equal(e.code, 'NOT_SUPPORTED');
    assert.equal(e.cause?.code, 'ENOENT');
    return true;
  });
});

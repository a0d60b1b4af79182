// A table whose failure nobody would hear (no listener with onError, nobody awaiting `finished`,
// ready() resolved or never asked for) says so with console.warn, as a stream handle does:
// otherwise it stops following without a trace, and a page shows stale rows.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { DurableStream, change, table } from '../src/node.js';
import { useReferenceServer } from '../test-support/reference-server.mjs';

const server = useReferenceServer();

/** Resolves with the arguments of the next console.warn (and restores it). */
function nextWarning() {
  const original = console.warn;
  return new Promise((resolve) => {
    console.warn = (...args) => {
      console.warn = original;
      resolve(args);
    };
  });
}

// A timeout is how the old code fails here: it never warned.
test('a listener without onError that throws, after ready() resolved, is warned about', { timeout: 10_000 }, async () => {
  const url = `${server.url}/t-${randomUUID()}`;
  const ds = await DurableStream.create({ url, contentType: 'application/json', body: [change.insert('user', 'u1', { name: 'Ada' })] });
  const users = table({ url, live: 'long-poll' });
  const bug = new Error('showRow failed');
  users.subscribe(({ changes }) => {
    if (changes.some((c) => c.key === 'u2')) throw bug;
  });
  await users.ready();
  const warned = nextWarning();
  await ds.append(change.insert('user', 'u2', { name: 'Bo' }));
  const [message, error] = await warned;
  assert.match(message, /table/);
  assert.equal(error, bug);
  await assert.rejects(users.finished, (e) => e === bug);
});

test('a table that fails with no listener and nobody awaiting it is warned about', { timeout: 10_000 }, async () => {
  const warned = nextWarning();
  table({ url: `${server.url}/missing-${randomUUID()}`, live: false });
  const [, error] = await warned;
  assert.equal(error.code, 'NOT_FOUND');
});

test('a failure someone hears is not warned about: finished awaited, ready() pending, or an onError', async () => {
  const original = console.warn;
  const warnings = [];
  console.warn = (...args) => warnings.push(args);
  try {
    const missing = () => `${server.url}/missing-${randomUUID()}`;
    await assert.rejects(table({ url: missing(), live: false }).finished, (e) => e.code === 'NOT_FOUND');
    await assert.rejects(table({ url: missing(), live: false }).ready(), (e) => e.code === 'NOT_FOUND');
    const errors = [];
    const t = table({ url: missing(), live: false });
    await new Promise((resolve) => t.subscribe(() => {}, (e) => resolve(errors.push(e))));
    assert.equal(errors[0].code, 'NOT_FOUND');
    assert.deepEqual(warnings, []);
  } finally {
    console.warn = original;
  }
});

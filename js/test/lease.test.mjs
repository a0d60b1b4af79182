// The writer lease from the client (an edgestream extension, so against our Worker only): an
// IdempotentProducer with `lease` is the stream's only appender, renews the lease while idle,
// gives it up on detach(), and with `wait` stands by until the lease is free.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { DurableStream, DurableStreamError, IdempotentProducer, LeaseHeldError } from '../src/node.js';
import { startServer } from '../../scripts/dev-server.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function fresh() {
  return DurableStream.create({ url: `${server.baseUrl}/v1/stream/lease/${randomUUID()}`, contentType: 'text/plain' });
}

async function text(ds) {
  const res = await fetch(`${ds.url}?offset=-1`);
  return res.text();
}

/** A producer's lease taken by a raw POST, which never renews it. */
async function takeRaw(ds, id, ttl) {
  const res = await fetch(ds.url, {
    method: 'POST',
    headers: { 'content-type': 'text/plain', 'producer-id': id, 'producer-epoch': '0', 'producer-seq': '0', 'stream-lease-ttl': String(ttl) },
    body: `<${id}>`,
  });
  assert.equal(res.status, 200);
}

describe('IdempotentProducer with a writer lease', () => {
  test('is the only appender; others get LeaseHeldError with when to come back', async () => {
    const ds = await fresh();
    const leader = new IdempotentProducer(ds, 'leader', { lease: { ttlSeconds: 30 } });
    assert.equal(leader.leaseExpiresAt, undefined);
    leader.append('a');
    await leader.flush();
    const until = Date.parse(leader.leaseExpiresAt);
    assert.ok(until > Date.now() + 25_000 && until <= Date.now() + 31_000, leader.leaseExpiresAt);

    await assert.rejects(ds.append('intruder'), (e) => {
      assert.ok(e instanceof LeaseHeldError && e instanceof DurableStreamError);
      assert.equal(e.code, 'LEASE_HELD');
      assert.equal(e.status, 423);
      assert.equal(e.leaseExpiresAt, leader.leaseExpiresAt);
      assert.ok(e.retryAfterMs > 25_000 && e.retryAfterMs <= 31_000, String(e.retryAfterMs));
      return true;
    });
    const errors = [];
    const other = new IdempotentProducer(ds, 'other', { lease: { ttlSeconds: 30 }, onError: (e) => errors.push(e) });
    other.append('b');
    await assert.rejects(other.flush(), LeaseHeldError);
    assert.equal(errors.length, 1);
    assert.throws(() => other.append('c'), LeaseHeldError);

    // Pipelined batches once the lease is held.
    for (let i = 0; i < 20; i++) {
      leader.append(String(i % 10));
      await sleep(i % 3);
    }
    await leader.flush();
    await leader.detach();
    assert.equal(leader.leaseExpiresAt, undefined);
    await ds.append('!');
    assert.equal(await text(ds), 'a01234567890123456789!');
  });

  test('renews the lease while idle, and gives it up on detach()', async () => {
    const ds = await fresh();
    const leader = new IdempotentProducer(ds, 'leader', { lease: { ttlSeconds: 1 } });
    const first = await leader.acquire();
    assert.ok(Date.parse(first) > Date.now());
    assert.equal(leader.nextSeq, 1);
    // Three lease lengths with nothing to append: the lease is kept.
    await sleep(3000);
    assert.ok(Date.parse(leader.leaseExpiresAt) > Date.parse(first), 'renewed');
    await assert.rejects(ds.append('intruder'), LeaseHeldError);
    await leader.detach();
    await ds.append('free');
    assert.equal(await text(ds), 'free');
  });

  test('with wait, stands by until the holder gives the lease up, then takes over', async () => {
    const ds = await fresh();
    const leader = new IdempotentProducer(ds, 'leader', { lease: { ttlSeconds: 30 } });
    leader.append('L1');
    await leader.flush();
    const standby = new IdempotentProducer(ds, 'standby', { lease: { ttlSeconds: 30, wait: true } });
    standby.append('S1');
    let landed = false;
    const waiting = standby.flush().then(() => (landed = true));
    await sleep(300);
    assert.equal(landed, false);
    leader.append('L2');
    await leader.flush();
    await leader.detach();
    await waiting;
    assert.ok(standby.leaseExpiresAt);
    await assert.rejects(ds.append('intruder'), LeaseHeldError);
    await standby.detach();
    assert.equal(await text(ds), 'L1L2S1');
  });

  test('with wait, takes over once a holder that stopped renewing runs out', async () => {
    const ds = await fresh();
    await takeRaw(ds, 'crashed', 1);
    const standby = new IdempotentProducer(ds, 'standby', { lease: { ttlSeconds: 30, wait: true } });
    const started = Date.now();
    const until = await standby.acquire();
    assert.ok(Date.now() - started >= 500, 'waited for the lease');
    assert.ok(Date.parse(until) > Date.now() + 25_000);
    standby.append('S');
    await standby.close();
    assert.equal(await text(ds), '<crashed>S');
  });

  test('a leader that lost the lease fails instead of waiting for it again', async () => {
    const ds = await fresh();
    const leader = new IdempotentProducer(ds, 'leader', { lease: { ttlSeconds: 1, wait: true } });
    await leader.acquire();
    // The leader's renewals are held back (a stalled process) until its lease has run out and
    // another producer has taken it.
    let release;
    const held = new Promise((r) => (release = r));
    const realFetch = globalThis.fetch;
    globalThis.fetch = async (url, init = {}) => {
      if (new Headers(init.headers).get('producer-id') === 'leader') await held;
      return realFetch(url, init);
    };
    try {
      await sleep(1500);
      await takeRaw(ds, 'usurper', 30);
      release();
      await assert.rejects(leader.flush(), LeaseHeldError);
      assert.equal(leader.leaseExpiresAt, undefined);
      assert.throws(() => leader.append('late'), LeaseHeldError);
    } finally {
      globalThis.fetch = realFetch;
    }
    assert.equal(await text(ds), '<usurper>');
  });

  test('a standby that is detached stops waiting for the lease, and appends nothing', async () => {
    const ds = await fresh();
    await takeRaw(ds, 'holder', 60);
    const standby = new IdempotentProducer(ds, 'standby', { lease: { ttlSeconds: 30, wait: true } });
    standby.append('S');
    const flushed = standby.flush();
    await sleep(300);
    const started = Date.now();
    await assert.rejects(standby.detach(), LeaseHeldError);
    await assert.rejects(flushed, LeaseHeldError);
    assert.ok(Date.now() - started < 1000, 'stopped waiting at once');
    assert.throws(() => standby.append('late'), DurableStreamError);
    assert.equal(await text(ds), '<holder>');
  });

  test("a client whose clock runs ahead of the server's is told to wait as long as the server says, and a standby does not poll in a loop", async () => {
    const ds = await fresh();
    await takeRaw(ds, 'holder', 30);
    // This machine's clock is a minute fast: the holder's lease ends, by it, in the past.
    const realNow = Date.now;
    const realFetch = globalThis.fetch;
    let posts = 0;
    Date.now = () => realNow() + 60_000;
    globalThis.fetch = (url, init = {}) => {
      if (String(init.method).toUpperCase() === 'POST') posts++;
      return realFetch(url, init);
    };
    try {
      await assert.rejects(ds.append('x'), (e) => {
        assert.ok(e instanceof LeaseHeldError);
        assert.ok(e.retryAfterMs > 25_000 && e.retryAfterMs <= 30_000, String(e.retryAfterMs));
        return true;
      });
      posts = 0;
      const standby = new IdempotentProducer(ds, 'standby', { lease: { ttlSeconds: 30, wait: true } });
      standby.append('S');
      const flushed = standby.flush();
      await sleep(1000);
      await assert.rejects(standby.detach(), LeaseHeldError);
      await assert.rejects(flushed, LeaseHeldError);
      // It asks again within 2 s at most (in case the holder gives the lease up), not at once.
      assert.ok(posts <= 3, `the standby sent ${posts} POSTs in a second`);
    } finally {
      Date.now = realNow;
      globalThis.fetch = realFetch;
    }
    assert.equal(await text(ds), '<holder>');
  });

  test('refuses bad lease options before sending anything', () => {
    for (const lease of [{ ttlSeconds: 0 }, { ttlSeconds: 86_401 }, { ttlSeconds: 1.5 }, { ttlSeconds: '10' }, {}, 30]) {
      assert.throws(
        () => new IdempotentProducer('http://127.0.0.1:1/v1/stream/x', 'p', { lease }),
        (e) => e.code === 'INVALID_ARGUMENT',
        JSON.stringify(lease),
      );
    }
    const plain = new IdempotentProducer('http://127.0.0.1:1/v1/stream/x', 'p');
    return assert.rejects(plain.acquire(), (e) => e.code === 'INVALID_ARGUMENT');
  });
});

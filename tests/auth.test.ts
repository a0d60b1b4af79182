// Access control: with AUTH_SECRET set, tokens are verified at the edge before any object is
// touched. Covers missing, forged, expired and malformed tokens, prefix escapes and operation
// escalation, bearer and query-parameter tokens, and the __ds admin APIs.
import { createHmac } from 'node:crypto';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';
import { mintToken } from '../scripts/token.mjs';
import { objectsHolding } from './support/state';
import { receiver } from './support/webhook';

const secret = 'test-secret-' + Math.random().toString(36).slice(2);
let server: Awaited<ReturnType<typeof startServer>>;
const url = (path: string) => `${server.baseUrl}/v1/stream/${path}`;
const inAnHour = () => Math.floor(Date.now() / 1000) + 3600;
const token = (prefix: string, ops: string[], expiresAt = inAnHour()) => mintToken({ secret, prefix, ops, expiresAt });
const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

beforeAll(async () => {
  server = await startServer({ vars: { AUTH_SECRET: secret, LONG_POLL_TIMEOUT_MS: '500', WEBHOOK_ALLOW_LOCALHOST: 'true' } });
  const admin = token('', ['create', 'append', 'read', 'delete']);
  const res = await fetch(url('auth/rooms/a'), { method: 'PUT', headers: { 'content-type': 'text/plain', ...bearer(admin) }, body: 'hello' });
  expect(res.status).toBe(201);
});

afterAll(async () => {
  await server?.stop();
});

describe('without a valid token', () => {
  test('no token is 401 with WWW-Authenticate, for every method', async () => {
    for (const method of ['GET', 'HEAD', 'POST', 'PUT', 'DELETE']) {
      const res = await fetch(url('auth/rooms/a'), { method, headers: { 'content-type': 'text/plain' }, body: method === 'POST' || method === 'PUT' ? 'x' : undefined });
      expect(res.status, method).toBe(401);
      expect(res.headers.get('www-authenticate')).toContain('Bearer');
      expect(res.headers.get('access-control-allow-origin')).toBe('*');
    }
  });

  test('a token signed with another secret is 401', async () => {
    const forged = mintToken({ secret: 'not-the-secret', prefix: '', ops: ['read'], expiresAt: inAnHour() });
    expect((await fetch(url('auth/rooms/a'), { headers: bearer(forged) })).status).toBe(401);
  });

  test('a token whose claims were edited after signing is 401', async () => {
    const good = token('auth/rooms/a', ['read']);
    const signature = good.split('.')[1];
    const widened = Buffer.from(JSON.stringify({ prefix: '', ops: ['read', 'delete'], exp: inAnHour() })).toString('base64url');
    expect((await fetch(url('auth/rooms/a'), { method: 'DELETE', headers: bearer(`${widened}.${signature}`) })).status).toBe(401);
  });

  test('an expired token is 401', async () => {
    const expired = token('', ['read'], Math.floor(Date.now() / 1000) - 1);
    const res = await fetch(url('auth/rooms/a'), { headers: bearer(expired) });
    expect(res.status).toBe(401);
    expect(await res.text()).toContain('expired');
  });

  test('malformed tokens are 401, never 500', async () => {
    const validPayload = Buffer.from('{"prefix":"","ops":["read"],"exp":99999999999}').toString('base64url');
    const unknownOp = Buffer.from(JSON.stringify({ prefix: '', ops: ['root'], exp: inAnHour() })).toString('base64url');
    // A token for every stream says so ("prefix": ""): one without a prefix is malformed.
    const noPrefix = Buffer.from(JSON.stringify({ ops: ['read'], exp: inAnHour() })).toString('base64url');
    const sign = (p: string) => createHmac('sha256', secret).update(p).digest('base64url');
    for (const t of ['', 'x', 'a.b.c', '.', `${validPayload}.`, `${validPayload}.!!!`, 'x'.repeat(5000), `${Buffer.from('not json').toString('base64url')}.${sign(Buffer.from('not json').toString('base64url'))}`, `${unknownOp}.${sign(unknownOp)}`, `${noPrefix}.${sign(noPrefix)}`]) {
      const res = await fetch(url('auth/rooms/a'), { headers: bearer(t) });
      expect(res.status, t.slice(0, 40)).toBe(401);
    }
  });

  test('an exp past the year 9999 is 401: an exp in milliseconds would be a token that never expires', async () => {
    // `exp` is Unix seconds. A minter that writes Date.now() + 3600_000 (milliseconds) made a
    // token good until the year 57,000 or so, which was accepted.
    const sign = (p: string) => createHmac('sha256', secret).update(p).digest('base64url');
    const signed = (exp: number) => {
      const payload = Buffer.from(JSON.stringify({ prefix: '', ops: ['read'], exp })).toString('base64url');
      return `${payload}.${sign(payload)}`;
    };
    for (const exp of [Date.now() + 3_600_000, 253402300800, Number.MAX_SAFE_INTEGER]) {
      const res = await fetch(url('auth/rooms/a?offset=-1'), { headers: bearer(signed(exp)) });
      expect(res.status, String(exp)).toBe(401);
      expect(await res.text(), String(exp)).toContain('not valid');
    }
    // The last second of 9999 (UTC) is still an expiry.
    expect((await fetch(url('auth/rooms/a?offset=-1'), { headers: bearer(signed(253402300799)) })).status).toBe(200);
    // And the minting helper refuses a millisecond expiry rather than minting one.
    expect(() => mintToken({ secret, prefix: '', ops: ['read'], expiresAt: Date.now() + 3_600_000 })).toThrow(/seconds/);
  });
});

describe('scoped tokens', () => {
  test('a read token reads, by header or by query parameter', async () => {
    const t = token('auth/rooms/a', ['read']);
    const byHeader = await fetch(url('auth/rooms/a?offset=-1'), { headers: bearer(t) });
    expect(byHeader.status).toBe(200);
    expect(await byHeader.text()).toBe('hello');
    // Only the reader's own cache may keep what a token was needed for, never a shared one.
    expect(byHeader.headers.get('cache-control')).toBe('private, max-age=60, stale-while-revalidate=300');
    // and that cache keys it by the token too: a browser keys a page by its URL alone, and
    // would otherwise hand it to a request with another token, or an expired one.
    expect(byHeader.headers.get('vary') ?? '').toMatch(/\bauthorization\b/i);
    const byQuery = await fetch(url(`auth/rooms/a?offset=-1&token=${encodeURIComponent(t)}`));
    expect(byQuery.status).toBe(200);
    // SSE through a query token (EventSource cannot set headers).
    const controller = new AbortController();
    const sse = await fetch(url(`auth/rooms/a?offset=-1&live=sse&token=${encodeURIComponent(t)}`), { signal: controller.signal });
    expect(sse.status).toBe(200);
    const reader = sse.body!.getReader();
    const { value } = await reader.read();
    expect(new TextDecoder().decode(value)).toContain('hello');
    controller.abort();
  });

  test('the Bearer scheme is matched without regard to case (RFC 9110 §11.1)', async () => {
    // Clients that spell the scheme `bearer` (as some HTTP libraries and proxies do) were told
    // a token was required.
    const t = token('auth/rooms/a', ['read']);
    for (const scheme of ['bearer', 'BEARER', 'Bearer ']) {
      const res = await fetch(url('auth/rooms/a?offset=-1'), { headers: { authorization: `${scheme} ${t}` } });
      expect(res.status, scheme).toBe(200);
      expect(await res.text()).toBe('hello');
    }
    // Another scheme is still no token at all.
    expect((await fetch(url('auth/rooms/a?offset=-1'), { headers: { authorization: `Basic ${t}` } })).status).toBe(401);
  });

  test('an SSE response ends by its token\'s expiry, so reading on needs a valid token', async () => {
    const admin = token('', ['create', 'append']);
    const name = `auth/rooms/sse-expiry-${Math.random().toString(36).slice(2)}`;
    const append = (body: string) =>
      fetch(url(name), { method: 'POST', headers: { 'content-type': 'text/plain', ...bearer(admin) }, body });
    expect((await fetch(url(name), { method: 'PUT', headers: { 'content-type': 'text/plain', ...bearer(admin) } })).status).toBe(201);
    const expiresAt = Math.floor(Date.now() / 1000) + 3;
    const t = encodeURIComponent(token('auth/rooms', ['read'], expiresAt));
    const sse = await fetch(url(`${name}?offset=now&live=sse&token=${t}`));
    expect(sse.status).toBe(200);
    let text = '';
    const ended = (async () => {
      const reader = sse.body!.getReader();
      for (let r = await reader.read(); !r.done; r = await reader.read()) text += Buffer.from(r.value).toString();
      return Date.now();
    })();
    expect((await append('before;')).status).toBe(204);
    // The response would otherwise last SSE_CONNECTION_MS (about a minute), getting every append.
    const late = setTimeout(() => void append('after;'), Math.max(0, expiresAt * 1000 - Date.now()) + 500);
    const end = await Promise.race([ended, new Promise<null>((r) => setTimeout(() => r(null), 15_000))]);
    clearTimeout(late);
    expect(end).not.toBeNull();
    expect(text).toContain('before;');
    expect(text).not.toContain('after;');
    expect((await fetch(url(`${name}?offset=now&live=sse&token=${t}`))).status).toBe(401);
  });

  test('operation escalation is 403 and changes nothing', async () => {
    const t = token('auth/rooms/', ['read']);
    for (const [method, body] of [['POST', 'more'], ['PUT', ''], ['DELETE', undefined]] as const) {
      const res = await fetch(url('auth/rooms/a'), { method, headers: { 'content-type': 'text/plain', ...bearer(t) }, body });
      expect(res.status, method).toBe(403);
    }
    const check = await fetch(url('auth/rooms/a?offset=-1'), { headers: bearer(t) });
    expect(await check.text()).toBe('hello');
  });

  test('prefixes stop at segment boundaries: no escape to siblings or parents', async () => {
    const t = token('auth/rooms/a', ['read', 'append', 'create']);
    expect((await fetch(url('auth/rooms/ab'), { method: 'PUT', headers: bearer(t) })).status).toBe(403);
    expect((await fetch(url('auth/rooms'), { method: 'PUT', headers: bearer(t) })).status).toBe(403);
    expect((await fetch(url('auth/other/a'), { headers: bearer(t) })).status).toBe(403);
    // Encoded dot segments are resolved by URL parsing (to auth/rooms/b, outside the prefix);
    // encoded slashes are refused before any scope is considered.
    expect((await fetch(url('auth/rooms/a/%2E%2E/b'), { headers: bearer(t) })).status).toBe(403);
    expect((await fetch(url('auth/rooms/a%2Fb'), { headers: bearer(t) })).status).toBe(400);
    // Below the prefix is covered.
    expect((await fetch(url('auth/rooms/a/thread-1'), { method: 'PUT', headers: bearer(t) })).status).toBe(201);
    const append = await fetch(url('auth/rooms/a'), { method: 'POST', headers: { 'content-type': 'text/plain', ...bearer(t) }, body: ' world' });
    expect(append.status).toBe(204);
  });

  test('a fork needs read on its source: no copying a stream the token cannot read', async () => {
    const admin = bearer(token('', ['create', 'append', 'read', 'delete']));
    const secretPath = 'auth/vault/data';
    const made = await fetch(url(secretPath), { method: 'PUT', headers: { 'content-type': 'text/plain', ...admin }, body: 'TOP SECRET' });
    expect(made.status).toBe(201);
    const mine = token('auth/mine/', ['create', 'read', 'append']);
    const fork = (path: string, source: string, t: string) =>
      fetch(url(path), { method: 'PUT', headers: { 'content-type': 'text/plain', 'stream-forked-from': `/v1/stream/${source}`, ...bearer(t) } });
    const refused = await fork('auth/mine/copy', secretPath, mine);
    expect(refused.status).toBe(403);
    expect(await refused.text()).not.toContain('SECRET');
    // Nothing was created, and the answer says nothing of the source (a missing one is 403 too).
    expect((await fetch(url('auth/mine/copy?offset=-1'), { headers: bearer(mine) })).status).toBe(404);
    expect((await fork('auth/mine/copy', 'auth/vault/missing', mine)).status).toBe(403);
    // The source's scope is checked as a read, so create alone does not do.
    const own = await fetch(url('auth/mine/src'), { method: 'PUT', headers: { 'content-type': 'text/plain', ...bearer(mine) }, body: 'mine' });
    expect(own.status).toBe(201);
    expect((await fork('auth/mine/copy', 'auth/mine/src', token('auth/mine/', ['create']))).status).toBe(403);
    // A source the token reads forks as before.
    expect((await fork('auth/mine/copy', 'auth/mine/src', mine)).status).toBe(201);
    expect(await (await fetch(url('auth/mine/copy?offset=-1'), { headers: bearer(mine) })).text()).toBe('mine');
    // Read on the source may come from a wider scope than create on the fork.
    const reader = token('auth/', ['read', 'create']);
    expect((await fork('auth/copy-of-vault', secretPath, reader)).status).toBe(201);
  });

  test('subscription APIs need an admin token; the key set stays public', async () => {
    const body = JSON.stringify({ type: 'pull-wake', pattern: 'auth/rooms/*', wake_stream: 'auth/wake' });
    const sub = url('__ds/subscriptions/auth-sub');
    expect((await fetch(sub, { method: 'PUT', headers: { 'content-type': 'application/json' }, body })).status).toBe(401);
    const notAdmin = token('', ['read', 'append', 'create', 'delete']);
    expect((await fetch(sub, { method: 'PUT', headers: { 'content-type': 'application/json', ...bearer(notAdmin) }, body })).status).toBe(403);
    // A subscription's patterns may reach any stream: admin counts only for every stream.
    const scoped = await fetch(sub, { method: 'PUT', headers: { 'content-type': 'application/json', ...bearer(token('auth', ['admin'])) }, body });
    expect(scoped.status).toBe(403);
    expect(await scoped.text()).toMatch(/admin needs a token for every stream/);
    const admin = token('', ['admin']);
    expect((await fetch(sub, { method: 'PUT', headers: { 'content-type': 'application/json', ...bearer(admin) }, body })).status).toBe(201);
    expect((await fetch(url('__ds/jwks.json'))).status).toBe(200);
    // The signing keys' schedule and their rotation, likewise.
    for (const [path, method] of [['__ds/keys', 'GET'], ['__ds/keys/rotate', 'POST']]) {
      expect((await fetch(url(path), { method })).status, `${method} ${path}`).toBe(401);
      expect((await fetch(url(path), { method, headers: bearer(notAdmin) })).status, `${method} ${path}`).toBe(403);
      expect((await fetch(url(path), { method, headers: bearer(token('auth', ['admin'])) })).status, `${method} ${path}`).toBe(403);
    }
    expect((await fetch(url('__ds/keys'), { headers: bearer(admin) })).status).toBe(200);
    expect((await fetch(url('__ds/keys/rotate'), { method: 'POST', headers: bearer(admin), body: '{"overlap_ms":600000}' })).status).toBe(200);
  });

  test('only the wake-token routes skip the admin check, not paths that end like them', async () => {
    const admin = { 'content-type': 'application/json', ...bearer(token('', ['admin'])) };
    const sub = url('__ds/subscriptions/auth-links');
    const body = JSON.stringify({ type: 'pull-wake', streams: ['auth/jobs/ack', 'auth/jobs/release', 'auth/jobs/callback'], wake_stream: 'auth/wake' });
    expect((await fetch(sub, { method: 'PUT', headers: admin, body })).status).toBe(201);
    for (const action of ['ack', 'release', 'callback']) {
      // A link whose path ends in an action name, removed with a raw `/` or an encoded one.
      expect((await fetch(`${sub}/streams/auth/jobs/${action}`, { method: 'DELETE' })).status).toBe(401);
      expect((await fetch(`${sub}/streams/auth%2Fjobs%2F${action}`, { method: 'DELETE' })).status).toBe(401);
      expect((await fetch(`${sub}/streams/x/${action}`, { method: 'POST', body: '{}' })).status).toBe(401);
    }
    const links = (await (await fetch(sub, { headers: admin })).json()) as { streams: { path: string }[] };
    expect(links.streams.map((l) => l.path).sort()).toEqual(['auth/jobs/ack', 'auth/jobs/callback', 'auth/jobs/release']);
    // The wake-token routes themselves still answer without an admin token (their own token decides).
    const ack = await fetch(`${sub}/ack`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    expect([400, 401, 403, 409]).toContain(ack.status);
    expect(ack.headers.get('www-authenticate')).toBeNull();
  });

  test('a wake token the server did not issue is refused at the edge: no subscription object is touched', async () => {
    // Every object that ever ran keeps its SQLite file in wrangler's state directory: an
    // unauthenticated request must not make one (an attacker could make any number).
    const objectsDir = join(server.persistTo, 'v3', 'do', 'edgestream-SubscriptionObject');
    const objects = () => (existsSync(objectsDir) ? readdirSync(objectsDir).filter((f) => /^[0-9a-f]{64}\.sqlite$/.test(f)).length : 0);
    const before = objects();
    const nonce = Buffer.alloc(32, 7).toString('base64url');
    const forged = [undefined, 'Bearer x', `Bearer ${nonce}`, `Bearer ${nonce}.${nonce}`, `Bearer ${token('', ['admin'])}`];
    for (const action of ['callback', 'ack', 'release']) {
      for (const authorization of forged) {
        const res = await fetch(url(`__ds/subscriptions/nobody-${Date.now()}-${action}/${action}`), {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...(authorization ? { authorization } : {}) },
          body: JSON.stringify({ wake_id: 'w_x', generation: 1 }),
        });
        expect(res.status, `${action} ${authorization}`).toBe(401);
        expect(((await res.json()) as { error: { code: string } }).error.code).toBe('TOKEN_INVALID');
      }
    }
    expect(objects(), 'objects made by unauthenticated requests').toBe(before);

    // A token the server issued still works, for its own subscription only.
    const id = `auth-wake-${Date.now()}`;
    const admin = { 'content-type': 'application/json', ...bearer(token('', ['admin', 'create', 'append', 'read'])) };
    expect((await fetch(url(`auth/wake-${id}`), { method: 'PUT', headers: admin })).status).toBe(201);
    const sub = url(`__ds/subscriptions/${id}`);
    const body = JSON.stringify({ type: 'pull-wake', streams: [`auth/jobs-${id}`], wake_stream: `auth/wake-${id}` });
    expect((await fetch(sub, { method: 'PUT', headers: admin, body })).status).toBe(201);
    expect((await fetch(`${sub}-other`, { method: 'PUT', headers: admin, body })).status).toBe(201);
    expect((await fetch(url(`auth/jobs-${id}`), { method: 'PUT', headers: admin, body: '{"job":1}' })).status).toBe(201);
    const claimed = await (async () => {
      for (let i = 0; i < 100; i++) {
        const res = await fetch(`${sub}/claim`, { method: 'POST', headers: admin, body: '{"worker":"w"}' });
        if (res.status === 200) return (await res.json()) as { wake_id: string; generation: number; token: string };
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      throw new Error('never claimable');
    })();
    const release = JSON.stringify({ wake_id: claimed.wake_id, generation: claimed.generation });
    const post = (target: string, t: string) =>
      fetch(`${target}/release`, { method: 'POST', headers: { 'content-type': 'application/json', ...bearer(t) }, body: release });
    expect((await post(`${sub}-other`, claimed.token)).status, 'another subscription').toBe(401);
    expect((await post(sub, claimed.token.replace(/^./, (c) => (c === 'A' ? 'B' : 'A')))).status, 'an edited token').toBe(401);
    expect((await post(sub, claimed.token)).status).toBe(204);

    // A webhook's callback token, likewise.
    const hook = await receiver();
    try {
      const hooked = `auth-hook-${Date.now()}`;
      const made = await fetch(url(`__ds/subscriptions/${hooked}`), {
        method: 'PUT',
        headers: admin,
        body: JSON.stringify({ type: 'webhook', streams: [`auth/${hooked}`], webhook: { url: hook.url } }),
      });
      expect(made.status).toBe(201);
      expect((await fetch(url(`auth/${hooked}`), { method: 'PUT', headers: admin, body: '{"job":2}' })).status).toBe(201);
      let wake: any;
      for (let i = 0; i < 100 && !wake; i++) {
        wake = hook.bodies.find((b) => b.subscription_id === hooked);
        if (!wake) await new Promise((resolve) => setTimeout(resolve, 50));
      }
      expect(wake, 'no webhook arrived').toBeDefined();
      const callback = (t: string) =>
        fetch(wake.callback_url, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...bearer(t) },
          body: JSON.stringify({ wake_id: wake.wake_id, generation: wake.generation, done: true }),
        });
      expect((await callback(claimed.token)).status, "another subscription's token").toBe(401);
      expect((await callback(wake.callback_token)).status).toBe(200);
    } finally {
      await hook.close();
    }
  });
});

describe('what a client cannot make the server do', () => {
  const admin = () => token('', ['create', 'append', 'read', 'delete']);

  test('a stream read never renders as an active page on this origin', async () => {
    const page = url(`auth/html-${Date.now()}`);
    const created = await fetch(page, { method: 'PUT', headers: { 'content-type': 'text/html', ...bearer(admin()) }, body: '<script>alert(1)</script>' });
    expect(created.status).toBe(201);
    const sandboxed = (res: Response) => expect(res.headers.get('content-security-policy')).toBe("sandbox; default-src 'none'");
    const read = await fetch(`${page}?offset=-1`, { headers: bearer(admin()) });
    expect(read.status).toBe(200);
    expect(read.headers.get('content-type')).toBe('text/html');
    sandboxed(read);
    const tail = read.headers.get('stream-next-offset');
    sandboxed(await fetch(`${page}?offset=now`, { headers: bearer(admin()) }));
    // A long-poll's data is answered by the edge.
    const polled = fetch(`${page}?offset=${tail}&live=long-poll`, { headers: bearer(admin()) });
    await new Promise((resolve) => setTimeout(resolve, 100));
    await fetch(page, { method: 'POST', headers: { 'content-type': 'text/html', ...bearer(admin()) }, body: '<p>' });
    const live = await polled;
    expect(live.status).toBe(200);
    expect(await live.text()).toBe('<p>');
    sandboxed(live);
  });

  test('requests for streams that do not exist store nothing: a reader cannot make objects pile up', async () => {
    // A Durable Object's storage is kept until it is deleted. Locally each object touched has
    // an SQLite file in wrangler's state directory (miniflare makes one for every object, with
    // a table of its own): the objects that made the stream schema hold its SQL text.
    const objects = () => objectsHolding(server.persistTo, 'edgestream-StreamObject', 'CREATE TABLE producers');
    const t = bearer(token('auth/none/', ['read', 'append', 'delete']));
    const before = objects();
    const missing = () => url(`auth/none/${Date.now()}-${Math.random().toString(36).slice(2)}`);
    const asks: [string, RequestInit][] = [
      ['', { method: 'HEAD' }],
      ['?offset=-1', {}],
      ['?offset=-1&live=long-poll', {}],
      ['?offset=-1&live=sse', {}],
      ['', { method: 'DELETE' }],
      ['', { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'x' }],
    ];
    for (const [query, init] of asks) {
      const res = await fetch(missing() + query, { ...init, headers: { ...t, ...(init.headers as Record<string, string>) } });
      expect(res.status, `${init.method ?? 'GET'} ${query}`).toBe(404);
      await res.arrayBuffer();
    }
    expect(objects(), 'objects stored for streams that do not exist').toBe(before);
  });

  test('the public key set is answered from the edge\'s copy, not by the registry each time', async () => {
    // Anyone may ask for it; the registry, which every create and delete calls, must not
    // answer each stranger. A copy served from memory says how old it is (Age).
    const first = await fetch(url('__ds/jwks.json'));
    expect(first.status).toBe(200);
    const keys = await first.text();
    const again = await fetch(url('__ds/jwks.json'));
    expect(again.status).toBe(200);
    expect(await again.text()).toBe(keys);
    expect(again.headers.get('age')).toMatch(/^\d+$/);
    expect(again.headers.get('cache-control')).toBe('public, max-age=300');
    expect(again.headers.get('content-type')).toBe('application/jwk-set+json');
    expect(JSON.parse(keys).keys[0]).not.toHaveProperty('d');
    const head = await fetch(url('__ds/jwks.json'), { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(Number(head.headers.get('content-length'))).toBe(Buffer.byteLength(keys));
  });

  test('a token signature spelled another way is 401: one spelling per signature', async () => {
    const t = token('auth/rooms/', ['read']);
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    // 32 bytes are 43 characters, whose last two bits carry nothing.
    const other = t.slice(0, -1) + alphabet[alphabet.indexOf(t.slice(-1)) ^ 1];
    expect((await fetch(url('auth/rooms/a?offset=-1'), { headers: bearer(t) })).status).toBe(200);
    expect((await fetch(url('auth/rooms/a?offset=-1'), { headers: bearer(other) })).status).toBe(401);
  });

  test('the internal x-edgestream- headers a client sends are not passed on', async () => {
    const target = url(`auth/internal-${Date.now()}`);
    expect((await fetch(target, { method: 'PUT', headers: { 'content-type': 'text/plain', ...bearer(admin()) } })).status).toBe(201);
    const res = await fetch(target, {
      method: 'POST',
      headers: { 'content-type': 'text/plain', 'x-edgestream-instance': 'bogus', 'x-edgestream-socket-frame': '1', ...bearer(admin()) },
      body: ';internal',
    });
    expect(res.status).toBe(204);
    // A producer's gap waits for its predecessor as usual, rather than being refused at once.
    const started = Date.now();
    const gap = await fetch(target, {
      method: 'POST',
      headers: { 'content-type': 'text/plain', 'x-edgestream-socket-frame': '1', 'producer-id': 'gap', 'producer-epoch': '0', 'producer-seq': '3', ...bearer(admin()) },
      body: 'never',
    });
    expect(gap.status).toBe(409);
    expect(Date.now() - started).toBeGreaterThanOrEqual(400);
  });
});

describe('CORS origins restricted by CORS_ORIGINS', () => {
  let restricted: Awaited<ReturnType<typeof startServer>>;
  const allowed = ['https://app.example', 'https://admin.example'];

  beforeAll(async () => {
    restricted = await startServer({ vars: { CORS_ORIGINS: allowed.join(', ') } });
    const res = await fetch(`${restricted.baseUrl}/v1/stream/cors/a`, { method: 'PUT', headers: { 'content-type': 'text/plain' } });
    expect(res.status).toBe(201);
  });

  afterAll(async () => {
    await restricted?.stop();
  });

  test('a listed origin is echoed with Vary: Origin; others get no Access-Control-Allow-Origin', async () => {
    const get = (origin: string) => fetch(`${restricted.baseUrl}/v1/stream/cors/a?offset=-1`, { headers: { origin } });
    for (const origin of allowed) {
      const res = await get(origin);
      expect(res.status).toBe(200);
      expect(res.headers.get('access-control-allow-origin')).toBe(origin);
      // Decorated once, by the stream's object: not again at the edge.
      expect(res.headers.get('vary')).toBe('Origin');
      expect(res.headers.get('x-content-type-options')).toBe('nosniff');
      expect(res.headers.get('cross-origin-resource-policy')).toBe('cross-origin');
    }
    // An append answered by the object, and a refusal made at the edge, carry them too.
    const append = await fetch(`${restricted.baseUrl}/v1/stream/cors/a`, { method: 'POST', headers: { origin: allowed[0], 'content-type': 'text/plain' }, body: 'x' });
    expect(append.status).toBe(204);
    expect(append.headers.get('access-control-allow-origin')).toBe(allowed[0]);
    expect(append.headers.get('vary')).toBe('Origin');
    expect(append.headers.get('access-control-expose-headers')).toContain('stream-next-offset');
    const refused = await fetch(`${restricted.baseUrl}/v1/stream/cors/a`, { method: 'PATCH', headers: { origin: allowed[0] } });
    expect(refused.status).toBe(405);
    expect(refused.headers.get('access-control-allow-origin')).toBe(allowed[0]);
    expect(refused.headers.get('x-content-type-options')).toBe('nosniff');
    for (const origin of ['https://evil.example', 'https://app.example.evil.example', 'null']) {
      const res = await get(origin);
      expect(res.headers.get('access-control-allow-origin')).toBeNull();
      expect(res.headers.get('vary')).toBe('Origin');
    }
    // A catch-up read may be cached publicly: one made for no origin says it varies by origin
    // too, or a shared cache could hand it, without Access-Control-Allow-Origin, to a listed one.
    const plain = await fetch(`${restricted.baseUrl}/v1/stream/cors/a?offset=-1`);
    expect(plain.headers.get('access-control-allow-origin')).toBeNull();
    expect(plain.headers.get('vary')).toBe('Origin');
    const live = await fetch(`${restricted.baseUrl}/v1/stream/cors/a?offset=-1&live=long-poll`, { headers: { origin: allowed[1] } });
    expect(live.headers.get('vary')).toBe('Origin');
    // Errors carry the same headers, so a listed page can read why it was refused.
    const missing = await fetch(`${restricted.baseUrl}/v1/stream/cors/nope?offset=-1`, { headers: { origin: allowed[0] } });
    expect(missing.status).toBe(404);
    expect(missing.headers.get('access-control-allow-origin')).toBe(allowed[0]);
  });

  test('live reads answered by the object are allowed for a listed origin too', async () => {
    const origin = allowed[0];
    const base = `${restricted.baseUrl}/v1/stream/cors`;
    // The edge asks the object for these itself, without the client's Origin.
    const longPoll = await fetch(`${base}/a?offset=-1&live=long-poll`, { headers: { origin } });
    expect(longPoll.status).toBe(200);
    expect(longPoll.headers.get('access-control-allow-origin')).toBe(origin);
    expect(longPoll.headers.get('vary')).toBe('Origin');
    for (const live of ['long-poll', 'sse']) {
      const missing = await fetch(`${base}/nope?offset=-1&live=${live}`, { headers: { origin } });
      expect(missing.status).toBe(404);
      expect(missing.headers.get('access-control-allow-origin')).toBe(origin);
      expect(missing.headers.get('x-content-type-options')).toBe('nosniff');
    }
    const evil = await fetch(`${base}/a?offset=-1&live=long-poll`, { headers: { origin: 'https://evil.example' } });
    expect(evil.headers.get('access-control-allow-origin')).toBeNull();
  });

  test('preflights are answered for listed origins only', async () => {
    const preflight = (origin: string) =>
      fetch(`${restricted.baseUrl}/v1/stream/cors/a`, {
        method: 'OPTIONS',
        headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'producer-id' },
      });
    const ok = await preflight(allowed[1]);
    expect(ok.status).toBe(204);
    expect(ok.headers.get('access-control-allow-origin')).toBe(allowed[1]);
    expect(ok.headers.get('access-control-allow-methods')).toContain('POST');
    const evil = await preflight('https://evil.example');
    expect(evil.headers.get('access-control-allow-origin')).toBeNull();
  });
});

describe('npm run token', () => {
  // Run without blocking the event loop: while a synchronous child ran, a keep-alive connection
  // the Worker closed (after 5 s idle) stayed in fetch's pool unnoticed, and the next request
  // on it failed with "other side closed".
  const cli = (...args: string[]) =>
    new Promise<{ status: number | null; stdout: string }>((resolve, reject) => {
      const child = spawn(process.execPath, ['scripts/token.mjs', ...args], { env: { ...process.env, AUTH_SECRET: secret } });
      let stdout = '';
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
      child.on('error', reject).on('close', (status) => resolve({ status, stdout }));
    });
  const claims = (t: string) => JSON.parse(Buffer.from(t.trim().split('.')[0], 'base64url').toString());

  test('refuses a flag without its value, or no --prefix, rather than minting a token for every stream', async () => {
    // No --prefix at all would be a token for every stream that nobody asked for.
    for (const args of [['--ops', 'read', '--prefix'], ['--prefix', '--ops', 'read'], ['--ttl'], ['--bogus', 'x'], ['--ops', 'admin']]) {
      const run = await cli(...args);
      expect(run.status, args.join(' ')).toBe(2);
      expect(run.stdout).toBe('');
    }
  });

  test('mints what it was asked for: a prefix, or every stream only with --prefix \'\'', async () => {
    const rooms = await cli('--prefix', 'auth/rooms', '--ops', 'read');
    expect(rooms.status).toBe(0);
    expect(claims(rooms.stdout)).toMatchObject({ prefix: 'auth/rooms', ops: ['read'] });
    expect((await fetch(url('auth/rooms/a?offset=-1'), { headers: bearer(rooms.stdout.trim()) })).status).toBe(200);
    const every = await cli('--prefix', '', '--ops', 'read');
    expect(every.status).toBe(0);
    expect(claims(every.stdout).prefix).toBe('');
  });
});

describe('a long-poll with a token that expires', () => {
  // Its own server, whose long-polls wait 20 s: the one above releases them after 500 ms,
  // before any token could expire.
  let slow: Awaited<ReturnType<typeof startServer>>;
  beforeAll(async () => {
    slow = await startServer({ vars: { AUTH_SECRET: secret, LONG_POLL_TIMEOUT_MS: '20000' } });
  });
  afterAll(async () => {
    await slow?.stop();
  });

  test('is answered 204 at the token\'s expiry instead of waiting its full timeout, and asking again is 401', async () => {
    const at = (path: string) => `${slow.baseUrl}/v1/stream/${path}`;
    const name = `auth/rooms/poll-expiry-${Math.random().toString(36).slice(2)}`;
    const admin = token('', ['create', 'append']);
    expect((await fetch(at(name), { method: 'PUT', headers: { 'content-type': 'text/plain', ...bearer(admin) } })).status).toBe(201);
    // A fresh token waits: nothing is appended, so it is still waiting after 3 s.
    const fresh = encodeURIComponent(token('auth/rooms', ['read']));
    const abort = new AbortController();
    const waiting = fetch(at(`${name}?offset=now&live=long-poll&token=${fresh}`), { signal: abort.signal }).then((r) => r.status, () => 'aborted');
    const expiresAt = Math.floor(Date.now() / 1000) + 2;
    const t = encodeURIComponent(token('auth/rooms', ['read'], expiresAt));
    const started = Date.now();
    const res = await fetch(at(`${name}?offset=now&live=long-poll&token=${t}`));
    const waited = Date.now() - started;
    expect(res.status).toBe(204);
    expect(waited).toBeLessThan(10_000);
    expect(Date.now()).toBeGreaterThanOrEqual(expiresAt * 1000 - 250);
    const still = await Promise.race([waiting, new Promise((r) => setTimeout(() => r('waiting'), 500))]);
    expect(still).toBe('waiting');
    abort.abort();
    const again = await fetch(at(`${name}?offset=now&live=long-poll&token=${t}`));
    expect(again.status).toBe(401);
  }, 30_000);
});

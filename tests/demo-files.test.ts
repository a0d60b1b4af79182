// The demo app's files, which the Worker embeds at build time (worker/build.rs) and serves on
// paths outside /v1/: every file of www/dist byte for byte with its content type, revalidation
// by ETag, HEAD, and clear refusals for anything else.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer } from '../scripts/dev-server.mjs';
import { root } from '../scripts/run.mjs';

const dist = path.join(root, 'www', 'dist');
let server: Awaited<ReturnType<typeof startServer>>;

beforeAll(async () => {
  server = await startServer();
});
afterAll(async () => {
  await server?.stop();
});

/** Every file under `dir`, as URL paths (`/vendor/edgestream/src/core.js`). */
function files(dir: string, prefix = ''): string[] {
  return readdirSync(dir).flatMap((name) => {
    const full = path.join(dir, name);
    return statSync(full).isDirectory() ? files(full, `${prefix}/${name}`) : [`${prefix}/${name}`];
  });
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.wasm': 'application/wasm',
};

describe('the demo app', () => {
  it('serves every built file byte for byte, with its content type and an ETag', async () => {
    const all = files(dist);
    expect(all).toContain('/index.html');
    expect(all.some((f) => f.endsWith('.wasm'))).toBe(true);
    for (const file of all) {
      const res = await fetch(`${server.baseUrl}${file}`);
      expect(res.status, file).toBe(200);
      expect(res.headers.get('content-type'), file).toBe(TYPES[path.extname(file)]);
      expect(res.headers.get('etag'), file).toMatch(/^"[0-9a-f]{16}"$/);
      expect(res.headers.get('cache-control'), file).toBe('no-cache');
      expect(res.headers.get('x-content-type-options'), file).toBe('nosniff');
      expect(Buffer.from(await res.arrayBuffer()).equals(readFileSync(path.join(dist, file))), file).toBe(true);
    }
  });

  it('/ is index.html', async () => {
    const res = await fetch(`${server.baseUrl}/`);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe(readFileSync(path.join(dist, 'index.html'), 'utf8'));
  });

  it('revalidates by ETag: 304 for a current copy (strong or weak), 200 for a stale one', async () => {
    const first = await fetch(`${server.baseUrl}/app.js`);
    await first.arrayBuffer();
    const etag = first.headers.get('etag')!;
    for (const tag of [etag, `W/${etag}`, `"stale", ${etag}`, '*']) {
      const res = await fetch(`${server.baseUrl}/app.js`, { headers: { 'if-none-match': tag } });
      expect(res.status, tag).toBe(304);
      expect(res.headers.get('etag')).toBe(etag);
      expect(await res.text()).toBe('');
    }
    const stale = await fetch(`${server.baseUrl}/app.js`, { headers: { 'if-none-match': '"0000000000000000"' } });
    expect(stale.status).toBe(200);
    expect((await stale.arrayBuffer()).byteLength).toBe(statSync(path.join(dist, 'app.js')).size);
  });

  // (Not index.html: wrangler dev's proxy rewrites HTML responses, which drops their length.)
  it('HEAD gives the headers of GET and no body', async () => {
    const res = await fetch(`${server.baseUrl}/app.js`, { method: 'HEAD' });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/javascript; charset=utf-8');
    expect(Number(res.headers.get('content-length'))).toBe(statSync(path.join(dist, 'app.js')).size);
    expect(await res.text()).toBe('');
  });

  it('refuses other methods with 405 and Allow, and unknown paths with 404', async () => {
    const post = await fetch(`${server.baseUrl}/app.js`, { method: 'POST', body: 'x' });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET, HEAD, OPTIONS');
    expect(await post.text()).toBe('method not allowed\n');
    for (const missing of ['/nope.js', '/vendor/', '/index.html/', '/v2/stream/x']) {
      const res = await fetch(`${server.baseUrl}${missing}`);
      expect(res.status, missing).toBe(404);
      expect(await res.text()).toBe('not found\n');
    }
  });
});

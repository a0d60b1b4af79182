// What an operator meets running the server: settings written the way TOML allows or mistyped.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { WebSocket } from 'undici';
import { startServer } from '../scripts/dev-server.mjs';

const scratch = mkdtempSync(path.join(tmpdir(), 'edgestream-operator-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

test('[vars] written as TOML numbers and booleans are used, and each bad setting is logged once with the value used', async () => {
  // Unquoted, wrangler binds a number or a boolean, not text: both used to be ignored silently
  // (a 30 s long-poll, no compression), and so were the mistyped --var values below.
  const toml = readFileSync('wrangler.toml', 'utf8')
    .replace(/^main = .*$/m, `main = ${JSON.stringify(path.resolve('worker/build/index.js'))}`)
    .replace(/^LONG_POLL_TIMEOUT_MS = .*$/m, 'LONG_POLL_TIMEOUT_MS = 1000')
    .replace(/^WS_COMPRESSION = .*$/m, 'WS_COMPRESSION = true');
  writeFileSync(path.join(scratch, 'wrangler.toml'), toml);
  const server = await startServer({
    config: path.join(scratch, 'wrangler.toml'),
    vars: { SSE_HEARTBEAT_MS: '0', BODY_IDLE_TIMEOUT_MS: '1e3', WEBHOOK_ALLOW_LOCALHOST: 'yes', WS_APPEND_BURST: '1' },
  });
  try {
    const url = `${server.baseUrl}/v1/stream/operator/toml-${Date.now()}`;
    expect((await fetch(url, { method: 'PUT', headers: { 'content-type': 'text/plain' } })).status).toBe(201);
    const started = Date.now();
    expect((await fetch(`${url}?offset=now&live=long-poll`)).status).toBe(204);
    expect(Date.now() - started).toBeLessThan(10_000);
    const ws = new WebSocket(`${url.replace("http", "ws")}?offset=now&live=ws`);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = reject;
    });
    expect(ws.extensions).toMatch(/^permessage-deflate/);
    ws.close();
    const log = server.log();
    const lines = [
      'setting SSE_HEARTBEAT_MS="0" is not a whole number above 0; using the default, 15000',
      'setting BODY_IDLE_TIMEOUT_MS="1e3" is not a whole number above 0; using the default, 20000',
      'setting WEBHOOK_ALLOW_LOCALHOST="yes" is neither true nor false; using false',
      // Under 257 (1 + 16 MiB / 64 KiB), the largest append a socket may send was refused 503
      // "too fast" every time, however long it waited.
      'setting WS_APPEND_BURST="1" is under 257; using 257',
    ];
    for (const line of lines) expect(log.split(line).length - 1, line).toBe(1);
    expect(log).not.toMatch(/setting (LONG_POLL_TIMEOUT_MS|WS_COMPRESSION)/);
  } finally {
    await server.stop();
  }
}, 60_000);

// What an operator meets running the server: settings written the way TOML allows or mistyped,
// what a failed request logs, and `npm start` (scripts/start.mjs) stopped by a signal or started
// twice on one state.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { WebSocket } from 'undici';
import { freePort, startServer } from '../scripts/dev-server.mjs';
import { mintToken } from '../scripts/token.mjs';

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

test("a request that fails logs one line with its method and path, never its token; refusals log nothing", async () => {
  const secret = 'operator-secret';
  const server = await startServer({ vars: { FAULT_MARKER: 'faulty', AUTH_SECRET: secret } });
  try {
    const token = mintToken({ secret, prefix: '', ops: ['read', 'append', 'create'], expiresAt: Math.floor(Date.now() / 1000) + 3600 });
    // A `torn` stream's first append fails after its rows are written, as a storage error would
    // (worker/src/fault.rs); its first registration fails too, so the PUT is sent again.
    const name = `faulty-torn-${Date.now()}`;
    const url = `${server.baseUrl}/v1/stream/${name}?token=${token}`;
    const text = { 'content-type': 'text/plain' };
    expect((await fetch(url, { method: 'PUT', headers: text })).status).toBe(503);
    expect((await fetch(url, { method: 'PUT', headers: text })).status).toBe(200);
    const before = server.log();
    const refused = [
      await fetch(`${server.baseUrl}/v1/stream/${name}`), // no token: 401
      await fetch(`${url}&offset=nonsense`), // 400
      await fetch(`${server.baseUrl}/v1/stream/missing?token=${token}`), // 404
      await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '1' }), // 409
    ].map((r) => r.status);
    expect(refused).toEqual([401, 400, 404, 409]);
    expect((await fetch(url, { method: 'POST', headers: text, body: 'x' })).status).toBe(503);
    await new Promise((r) => setTimeout(r, 500));
    // Each used to name no stream: `stream object: <error>`, `stream: Register failed: <error>`.
    const log = server.log();
    expect(log.split(`stream object: POST /v1/stream/${name}: injected fault: TornWrite`).length - 1).toBe(1);
    expect(log.split(`stream /v1/stream/${name}: Register failed: injected fault`).length - 1).toBe(1);
    const after = log.slice(before.length).split('\n');
    expect(after.filter((l) => /ERROR|WARNING/.test(l) && !l.includes('Register failed'))).toHaveLength(1);
    expect(log).not.toContain(token);
  } finally {
    await server.stop();
  }
}, 60_000);

test("a registry's or a subscription's failure logs the request's method and path, what it was about, and never a token", async () => {
  const secret = 'operator-secret';
  const server = await startServer({ vars: { FAULT_MARKER: 'faulty', AUTH_SECRET: secret } });
  try {
    const token = mintToken({ secret, prefix: '', ops: ['read', 'append', 'create', 'admin'], expiresAt: Math.floor(Date.now() / 1000) + 3600 });
    const tag = Date.now();
    // The stream's own first registration call fails before it leaves (as in the test above);
    // the second reaches the registry, whose first registration of a `broken` stream fails.
    const name = `faulty-broken-${tag}`;
    const url = `${server.baseUrl}/v1/stream/${name}?token=${token}`;
    const text = { 'content-type': 'text/plain' };
    const puts = [];
    for (let i = 0; i < 3; i++) puts.push((await fetch(url, { method: 'PUT', headers: text })).status);
    expect(puts).toEqual([503, 503, 200]);
    // A subscription whose id is `broken` fails its first create.
    const id = `faulty-broken-sub-${tag}`;
    const sub = `${server.baseUrl}/v1/stream/__ds/subscriptions/${id}?token=${token}`;
    const body = JSON.stringify({ type: 'pull-wake', pattern: `faulty-subs-${tag}/*`, wake_stream: name });
    const creates = [];
    for (let i = 0; i < 2; i++) creates.push((await fetch(sub, { method: 'PUT', headers: { 'content-type': 'application/json' }, body })).status);
    expect(creates).toEqual([503, 201]);
    await new Promise((r) => setTimeout(r, 500));
    // Each used to be `registry: <error>` and `subscription: <error>`, naming nothing.
    const log = server.log();
    expect(log.split(`registry: POST /internal/stream-created (stream ${name}): injected fault: Broken`).length - 1).toBe(1);
    expect(log.split(`subscription: PUT /create (subscription ${id}): injected fault: Broken`).length - 1).toBe(1);
    expect(log).not.toContain(token);
  } finally {
    await server.stop();
  }
}, 60_000);

/** `npm start`'s script (or `npm start` itself), on its own port and state, in a process group of its own. */
function start(port: number, state: string, npm = false) {
  const flags = ['--port', String(port), '--persist-to', state];
  const [command, args] = npm ? ['npm', ['start', '--', ...flags]] : [process.execPath, ['scripts/start.mjs', ...flags]];
  const child = spawn(command, args, {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (c) => (out += c));
  child.stderr!.on('data', (c) => (out += c));
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  /** Its exit code, or 'running' after 30 s. */
  const exited = Promise.race([exit, new Promise<'running'>((r) => setTimeout(r, 30_000, 'running').unref())]);
  return { child, exited, out: () => out };
}

async function up(base: string, child: ChildProcess) {
  for (let i = 0; i < 600 && child.exitCode === null; i++) {
    try {
      await (await fetch(`${base}/v1/stream/__health`, { method: 'HEAD' })).arrayBuffer();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`not up on ${base}`);
}

/** Pids of the processes whose command line names `text` (wrangler's names its state). */
function running(text: string) {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(text);
      } catch {
        return false;
      }
    });
}

test('npm start refuses a state directory another server uses, keeps data across restarts, and leaves nothing running when sent SIGTERM alone', async () => {
  const state = path.join(scratch, 'state');
  const [port, other] = [await freePort(), await freePort()];
  const base = `http://127.0.0.1:${port}`;
  const first = start(port, state);
  const pgids: number[] = [first.child.pid!];
  try {
    await up(base, first.child);
    const url = `${base}/v1/stream/operator/kept`;
    expect((await fetch(url, { method: 'PUT', headers: { 'content-type': 'text/plain' }, body: 'kept;' })).status).toBe(201);

    // Two servers on one state each served the same streams from their own memory.
    const second = start(other, state);
    pgids.push(second.child.pid!);
    expect(await second.exited).toBe(1);
    expect(second.out()).toContain(`the state directory ${state} is in use by another edgestream server (pid ${first.child.pid})`);
    expect((await fetch(url)).status).toBe(200);

    // SIGTERM to the script alone (a process manager, `kill <pid>`) used to leave wrangler and
    // workerd running, holding the port and the state.
    process.kill(first.child.pid!, 'SIGTERM');
    expect(await first.exited).toBe(0);
    for (let i = 0; i < 50 && running(state).length > 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect(running(state)).toEqual([]);
    await expect(fetch(url)).rejects.toThrow();

    // The state is free again, and what was stored is there.
    const third = start(other, state, true);
    pgids.push(third.child.pid!);
    await up(`http://127.0.0.1:${other}`, third.child);
    expect(await (await fetch(`http://127.0.0.1:${other}/v1/stream/operator/kept?offset=-1`)).text()).toBe('kept;');
    // npm, sent SIGTERM alone, exits without passing it on: the script used to serve on.
    process.kill(third.child.pid!, 'SIGTERM');
    await third.exited;
    for (let i = 0; i < 100 && running(state).length > 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect(running(state)).toEqual([]);
    await expect(fetch(`http://127.0.0.1:${other}/`)).rejects.toThrow();
  } finally {
    for (const pid of [...pgids, ...running(state).map(Number)]) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {}
      try {
        process.kill(pid, 'SIGKILL');
      } catch {}
    }
  }
}, 120_000);

// Upgrades: each tests/upgrade/<commit>/ holds the objects' storage as an older Worker left
// it (made by scripts/upgrade-fixture.mjs). The current Worker, started on a copy, must read
// every stream back as it was and go on from it: appends, producers, forks, closed streams
// and channels (tests/upgrade/state.mjs).
import { afterEach, describe, expect, test } from 'vitest';
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startServer } from '../scripts/dev-server.mjs';
import { verify } from './upgrade/state.mjs';

const fixtures = path.join(import.meta.dirname, 'upgrade');
const commits = readdirSync(fixtures).filter((d) => existsSync(path.join(fixtures, d, 'seen.json')));

let stop: (() => Promise<void>) | undefined;
afterEach(async () => {
  await stop?.();
  stop = undefined;
});

describe('state stored by an older Worker', () => {
  test('there is a fixture', () => {
    expect(commits.length).toBeGreaterThan(0);
  });

  test.each(commits)('from %s is served unchanged and goes on', async (commit) => {
    const state = mkdtempSync(path.join(tmpdir(), 'edgestream-upgrade-'));
    cpSync(path.join(fixtures, commit, 'do'), path.join(state, 'v3', 'do'), { recursive: true });
    // The fixtures' producers must not lapse as they age (PRODUCER_TTL_MS is at most 10 years).
    // With FAULT_MARKER (in no fixture's path), answers count their SQLite rows.
    const server = await startServer({
      persistTo: state,
      vars: { PRODUCER_TTL_MS: String(315_360_000_000), FAULT_MARKER: 'never-in-a-fixture' },
    });
    stop = async () => {
      await server.stop();
      rmSync(state, { recursive: true, force: true });
    };
    const seen = JSON.parse(readFileSync(path.join(fixtures, commit, 'seen.json'), 'utf8'));
    await verify(server.baseUrl, seen);
    // The tables keyed by text were made again without a rowid (worker/src/schema.rs): a new
    // producer's first append writes its log row, its state and the state's age entry, not
    // also a second copy of its key. The fixture's producer was stamped by an older Worker at
    // its append (verify's last one restamped it), and its next append keeps that stamp: it
    // writes its log row and its state alone.
    const append = async (id: string, seq: number) => {
      const res = await fetch(`${server.baseUrl}/v1/stream/up/json`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'producer-id': id, 'producer-epoch': '0', 'producer-seq': String(seq) },
        body: `{"n":${seq + 2}}`,
      });
      expect(res.status).toBe(200);
      return res.headers.get('x-edgestream-rows');
    };
    expect(await append('up-writer', 3)).toMatch(/ written=2$/);
    expect(await append('up-newcomer', 0)).toMatch(/ written=3$/);
  });

  // The registry's `streams`, a row per stream in the deployment, is too large to copy in one
  // invocation at millions of streams: it is set aside and moved back a few rows per call to
  // the registry (one with FAULT_MARKER), which reads both tables meanwhile.
  test('the registry moves its streams over a call at a time, serving them from both meanwhile', async () => {
    const state = mkdtempSync(path.join(tmpdir(), 'edgestream-upgrade-'));
    cpSync(path.join(fixtures, 'b384338', 'do'), path.join(state, 'v3', 'do'), { recursive: true });
    const vars = { PRODUCER_TTL_MS: String(315_360_000_000), FAULT_MARKER: 'never-in-a-fixture' };
    let server = await startServer({ persistTo: state, vars });
    stop = async () => {
      await server.stop();
      rmSync(state, { recursive: true, force: true });
    };
    const all = ['up/ch', 'up/ch/a', 'up/closed', 'up/fork', 'up/json', 'up/lease', 'up/text', 'up/ttl', 'upsub/a', 'upwake/w'];
    // One call to the registry: the key set, which the isolate then keeps.
    expect((await fetch(`${server.baseUrl}/v1/stream/__ds/jwks.json`)).status).toBe(200);
    await server.stop();
    expect(registryStreams(state)).toEqual({ streams: all.slice(0, 1), streams_rowid: all.slice(1) });

    server = await startServer({ persistTo: state, vars });
    const api = (p: string, init?: RequestInit) => fetch(`${server.baseUrl}/v1/stream/${p}`, init);
    // A pattern's existing streams are listed from both tables, in order, once each.
    const put = await api('__ds/subscriptions/up-all', {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'pull-wake', pattern: 'up/**', wake_stream: 'upwake/w' }),
    });
    expect(put.status).toBe(201);
    const linked = (await (await api('__ds/subscriptions/up-all')).json()) as { streams: { path: string }[] };
    expect(linked.streams.map((s) => s.path).sort()).toEqual(all.filter((p) => p.startsWith('up/')));
    // A stream still set aside is removed from there too (up/text, a fork's source, would stay).
    expect((await api('up/ttl', { method: 'DELETE' })).status).toBe(204);
    // Each create is a call to the registry: enough of them move the rest.
    const created = Array.from({ length: 8 }, (_, i) => `upnew/${i}`);
    for (const p of created) expect((await api(p, { method: 'PUT' })).status).toBe(201);
    await server.stop();
    const moved = [...all.filter((p) => p !== 'up/ttl'), ...created].sort();
    expect(registryStreams(state)).toEqual({ streams: moved });
  });
});

/** The registry's tables of streams in the storage under `state`, each with its paths in order. */
function registryStreams(state: string): Record<string, string[]> {
  const dir = path.join(state, 'v3', 'do', 'edgestream-RegistryObject');
  const file = readdirSync(dir).find((f) => /^[0-9a-f]{64}\.sqlite$/.test(f));
  if (!file) throw new Error(`no registry storage in ${dir}`);
  const read = `import json, sqlite3, sys
c = sqlite3.connect(sys.argv[1])
names = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'streams%'")]
print(json.dumps({n: [r[0] for r in c.execute(f"SELECT path FROM {n} ORDER BY path")] for n in names}))`;
  return JSON.parse(execFileSync('python3', ['-c', read, path.join(dir, file)], { encoding: 'utf8' }));
}

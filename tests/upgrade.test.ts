// Upgrades: each tests/upgrade/<commit>/ holds the objects' storage as an older Worker left
// it (made by scripts/upgrade-fixture.mjs). The current Worker, started on a copy, must read
// every stream back as it was and go on from it: appends, producers, forks, closed streams
// and channels (tests/upgrade/state.mjs).
import { afterEach, describe, expect, test } from 'vitest';
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
});

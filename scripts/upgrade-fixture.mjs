// Makes an upgrade fixture: the state an older Worker stored, for tests/upgrade.test.ts to
// serve with the current one.
//
//   node scripts/upgrade-fixture.mjs <commit> [--worktree <dir>]
//
// Checks <commit> out in a worktree (or uses --worktree, already built), builds it there,
// starts it on an empty state directory, writes the streams of tests/upgrade/state.mjs
// through it, stops it, and keeps the state and what was read back under
// tests/upgrade/<commit>/.
import { cp, mkdtemp, rm, symlink, writeFile, mkdir, readdir, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { root, run } from './run.mjs';
import { populate } from '../tests/upgrade/state.mjs';

const args = process.argv.slice(2);
const commit = args[0];
if (!commit || commit.startsWith('-')) {
  console.error('usage: node scripts/upgrade-fixture.mjs <commit> [--worktree <dir>]');
  process.exit(2);
}
const given = args.indexOf('--worktree') >= 0 ? args[args.indexOf('--worktree') + 1] : undefined;

const scratch = await mkdtemp(path.join(tmpdir(), 'edgestream-upgrade-'));
const tree = given ?? path.join(scratch, 'tree');
const state = path.join(scratch, 'state');
let seen;
try {
  if (!given) {
    await run('git', ['worktree', 'add', '--detach', tree, commit]);
    await symlink(path.join(root, 'node_modules'), path.join(tree, 'node_modules'));
    await run('node', ['scripts/build.mjs'], { cwd: tree });
  }
  const { startServer } = await import(pathToFileURL(path.join(tree, 'scripts', 'dev-server.mjs')).href);
  const server = await startServer({ persistTo: state });
  try {
    seen = await populate(server.baseUrl);
  } finally {
    await server.stop();
  }
} catch (e) {
  if (!given) await run('git', ['worktree', 'remove', '--force', tree]).catch(() => {});
  await rm(scratch, { recursive: true, force: true });
  throw e;
}

const out = path.join(root, 'tests', 'upgrade', commit);
await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
// Only the objects' storage: wrangler's caches and blobs of other kinds are not the Worker's.
await cp(path.join(state, 'v3', 'do'), path.join(out, 'do'), { recursive: true });
// workerd leaves each database's recent pages in its write-ahead log: fold them in and compact,
// so the fixture is one small file per object.
await run('python3', [
  '-c',
  `import glob, sqlite3
for f in glob.glob(${JSON.stringify(path.join(out, 'do', '*', '*.sqlite'))}):
    c = sqlite3.connect(f)
    c.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    c.execute('PRAGMA journal_mode=DELETE')
    c.execute('VACUUM')
    c.close()`,
]);
await writeFile(path.join(out, 'seen.json'), `${JSON.stringify(seen, null, 2)}\n`);
let bytes = 0;
for (const dir of await readdir(path.join(out, 'do'))) {
  for (const file of await readdir(path.join(out, 'do', dir))) {
    const p = path.join(out, 'do', dir, file);
    if (/-(wal|shm)$/.test(file)) await rm(p);
    else bytes += (await stat(p)).size;
  }
}
console.log(`tests/upgrade/${commit}: ${bytes} bytes of object storage`);
if (!given) await run('git', ['worktree', 'remove', '--force', tree]);
await rm(scratch, { recursive: true, force: true });

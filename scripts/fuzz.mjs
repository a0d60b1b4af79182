// Fuzzes the protocol core: runs every cargo-fuzz target in fuzz/ for a bounded time.
//
//   node scripts/fuzz.mjs                 # 30 s per target
//   FUZZ_SECONDS=300 node scripts/fuzz.mjs
//   node scripts/fuzz.mjs sse json        # only these targets
//
// The machines have stable Rust only, so cargo-fuzz runs with RUSTC_BOOTSTRAP=1 to accept its
// -Z flags; AddressSanitizer works that way too (set FUZZ_SANITIZER=none to do without it).
// Targets are built with debug assertions, so integer overflow counts as a crash.
// Prints executions per target and `fuzz: N targets, M executions, K crashes`; exits non-zero
// if any target crashed (its input is saved under fuzz/artifacts/<target>/).
import { spawn, spawnSync } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const fuzzDir = path.join(root, 'fuzz');
const logDir = path.join(fuzzDir, 'target', 'logs');

const CARGO_FUZZ_VERSION = '0.13.2';
const seconds = Number.parseInt(process.env.FUZZ_SECONDS ?? '30', 10);
if (!Number.isInteger(seconds) || seconds <= 0) {
  console.error(`fuzz: FUZZ_SECONDS must be a positive integer, not ${process.env.FUZZ_SECONDS}`);
  process.exit(2);
}
const sanitizer = process.env.FUZZ_SANITIZER ?? 'address';
const env = { ...process.env, RUSTC_BOOTSTRAP: '1' };
const buildFlags = ['--sanitizer', sanitizer, '--debug-assertions'];

/** Runs a command to completion with inherited output; throws on failure. */
function runOrThrow(command, args) {
  const r = spawnSync(command, args, { cwd: root, env, stdio: 'inherit' });
  if (r.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} failed (${r.signal ?? `exit ${r.status}`})`);
  }
}

function ensureCargoFuzz() {
  const r = spawnSync('cargo', ['fuzz', '--version'], { cwd: root, env, encoding: 'utf8' });
  const have = r.status === 0 ? r.stdout.trim() : '';
  if (have === `cargo-fuzz ${CARGO_FUZZ_VERSION}`) return;
  console.log(`fuzz: installing cargo-fuzz ${CARGO_FUZZ_VERSION} (found: ${have || 'none'})`);
  runOrThrow('cargo', ['install', 'cargo-fuzz', '--version', CARGO_FUZZ_VERSION, '--locked']);
}

function listTargets() {
  const r = spawnSync('cargo', ['fuzz', 'list'], { cwd: root, env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cargo fuzz list failed: ${r.stderr}`);
  return r.stdout.split('\n').map((s) => s.trim()).filter(Boolean);
}

/** SSE target inputs start with a cut count and little-endian u16 cut positions. */
function sseInput(cuts, text) {
  const head = Buffer.alloc(1 + 2 * cuts.length);
  head[0] = cuts.length;
  cuts.forEach((c, i) => head.writeUInt16LE(c, 1 + 2 * i));
  return Buffer.concat([head, Buffer.from(text, 'utf8')]);
}

/** A `live=ws` binary message: `[u32 big-endian header length][header][payload]`. */
function binaryMessage(header, payload) {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(Buffer.byteLength(header));
  return Buffer.concat([length, Buffer.from(header), Buffer.from(payload)]);
}

/** A few literal examples per byte-oriented target; the corpus directory is git-ignored. */
const seeds = {
  offset: [
    '0000000000000000_0000000000000000',
    '0000000000000000_0000000000001234',
    '-1',
    'now',
    '0000000000000000_9999999999999999&now',
  ],
  json: [
    '{"event":"created","id":1}',
    '[{"a":1}, "x,y", [1,2], null, true, -0.5e10]',
    '[[1,2],[3,4]]',
    '[]',
    ' "\\u00e9\\n\\"" ',
    '{"k":[{"n":{"m":[]}}]}',
    '["\\ud83d\\ude00", "\\udc00", "a\\ud93A"]',
  ],
  sse: [
    sseInput([7, 20], 'event: data\ndata:hello\n\nevent: control\ndata:{"streamNextOffset":"0000000000000000_0000000000000005","upToDate":true}\n\n'),
    sseInput([1, 2, 3], '\ufeff: comment\r\nevent:control\rdata: one\r\ndata:two\nid: 7\nretry: 1500\n\n'),
    sseInput([5], '{"streamNextOffset":"a\\"b","streamCursor":42,"x":[1,{"y":"}"}],"streamClosed":true}'),
    sseInput([], 'line one\r\nline two\rthree\n'),
  ],
  base64: [
    'Zm9vYmFy',
    'Zg==',
    'AQID\nBAUG\r\nBwgJ\rCg==',
    'eyJwcmVmaXgiOiIifQ',
    '-_8',
    'DD++',
  ],
  ws: [
    '{"type":"data","items":[{"a":"]}"},2],"streamNextOffset":"0000000000000000_0000000000000012","streamCursor":"7","upToDate":true}',
    '{"type":"error","id":3,"status":409,"message":"producer sequence gap","producerExpectedSeq":1}',
    '[{"a":1}, "x,y", [1,2], null]',
    binaryMessage('{"streamNextOffset":"a","upToDate":true}', [0, 255, 10]),
  ],
};

function writeSeeds(target) {
  const list = seeds[target];
  if (!list) return;
  const dir = path.join(fuzzDir, 'corpus', target);
  mkdirSync(dir, { recursive: true });
  list.forEach((seed, i) => {
    const file = path.join(dir, `seed-${i}`);
    if (!existsSync(file)) writeFileSync(file, seed);
  });
}

/** Executions from libFuzzer's closing lines (final stats, `Done N runs`, or the last `#N`). */
function executions(log) {
  const stat = log.match(/stat::number_of_executed_units:\s*(\d+)/);
  if (stat) return Number(stat[1]);
  const done = log.match(/Done (\d+) runs in/);
  if (done) return Number(done[1]);
  const counters = [...log.matchAll(/^#(\d+)\s/gm)];
  return counters.length ? Number(counters[counters.length - 1][1]) : 0;
}

/** Runs one target for `seconds`, logging to fuzz/target/logs/<target>.log. */
function fuzzTarget(target) {
  mkdirSync(logDir, { recursive: true });
  const logFile = path.join(logDir, `${target}.log`);
  const out = createWriteStream(logFile);
  const args = [
    'fuzz', 'run', target, ...buildFlags, '--',
    `-max_total_time=${seconds}`,
    '-print_final_stats=1',
    '-timeout=10',
    '-rss_limit_mb=2048',
  ];
  return new Promise((resolve) => {
    const child = spawn('cargo', args, { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.pipe(out, { end: false });
    child.stderr.pipe(out, { end: false });
    // A hung build or a fuzzer that ignores -max_total_time must not hang the run.
    const guard = setTimeout(() => child.kill('SIGKILL'), (seconds + 600) * 1000);
    child.on('close', (code, signal) => {
      clearTimeout(guard);
      out.end(() => {
        const log = readFileSync(logFile, 'utf8');
        resolve({ target, ok: code === 0, code: signal ?? code, execs: executions(log), log, logFile });
      });
    });
  });
}

ensureCargoFuzz();
const all = listTargets();
const wanted = process.argv.slice(2);
const unknown = wanted.filter((t) => !all.includes(t));
if (unknown.length) {
  console.error(`fuzz: unknown target(s) ${unknown.join(', ')}; have ${all.join(', ')}`);
  process.exit(2);
}
const targets = wanted.length ? wanted : all;
console.log(`fuzz: building ${targets.join(', ')} (sanitizer ${sanitizer})`);
// `cargo fuzz build` takes one target or none (all).
runOrThrow('cargo', ['fuzz', 'build', ...buildFlags, ...(targets.length === 1 ? targets : [])]);

let total = 0;
const crashed = [];
for (const target of targets) {
  writeSeeds(target);
  const started = Date.now();
  const r = await fuzzTarget(target);
  total += r.execs;
  const secs = ((Date.now() - started) / 1000).toFixed(0);
  if (r.ok) {
    console.log(`fuzz: ${target}: ${r.execs} executions in ${secs} s, ok`);
  } else {
    crashed.push(target);
    console.log(`fuzz: ${target}: CRASHED (${r.code}) after ${r.execs} executions; log: ${path.relative(root, r.logFile)}`);
    // The failure itself (panic message or sanitizer report) and where its input was saved.
    const lines = r.log.split('\n');
    const found = lines.findIndex((l) => /panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)/.test(l));
    const from = found >= 0 ? found : Math.max(0, lines.length - 20);
    const saved = lines.filter((l) => /Test unit written to|^Base64:/.test(l));
    console.log([...lines.slice(from, from + 12), ...saved].join('\n'));
  }
}
console.log(`fuzz: ${targets.length} targets, ${total} executions, ${crashed.length} crashes`);
if (crashed.length) {
  console.log(`fuzz: crashed: ${crashed.join(', ')}; reproduce with RUSTC_BOOTSTRAP=1 cargo fuzz run -a <target> fuzz/artifacts/<target>/<crash file>`);
  process.exit(1);
}

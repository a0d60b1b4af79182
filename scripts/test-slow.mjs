// `npm run test:slow`: the long suites that CI runs after `npm test`: the SIGKILL chaos test
// (tests/slow/) and a bounded fuzzing run of every core target (scripts/fuzz.mjs).
// CHAOS_KILLS and FUZZ_SECONDS scale them; EDGESTREAM_TEST_ONLY=<substring> picks steps.
import { bin, run, step } from './run.mjs';
import { buildWorker } from './build.mjs';

const only = process.env.EDGESTREAM_TEST_ONLY;
const steps = [
  ['bootstrap', () => run('bash', ['scripts/bootstrap.sh'])],
  ['build: worker', buildWorker],
  ['durability: SIGKILL chaos with SSE and WebSocket readers', () => run(bin('vitest'), ['run', '--config', 'tests/vitest.slow.config.ts'])],
  ['fuzz: every core target, bounded', () => run('node', ['scripts/fuzz.mjs'])],
];

const started = Date.now();
try {
  for (const [title, fn] of steps) {
    if (only && title !== 'bootstrap' && !title.includes(only)) continue;
    await step(title, fn);
  }
  console.log(`\nnpm run test:slow: all steps passed in ${((Date.now() - started) / 1000).toFixed(0)} s`);
} catch (e) {
  console.error(`\nnpm run test:slow: FAILED: ${e.message}`);
  process.exit(1);
}

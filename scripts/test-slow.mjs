// `npm run test:slow`: the long suites that CI runs after `npm test`: the SIGKILL chaos test
// (tests/slow/) and a bounded fuzzing run of every core target (scripts/fuzz.mjs).
// CHAOS_KILLS and FUZZ_SECONDS scale them; EDGESTREAM_TEST_ONLY=<substring> picks steps.
import { bin, run, runSteps } from './run.mjs';
import { buildWorker } from './build.mjs';

const steps = [
  ['bootstrap', () => run('bash', ['scripts/bootstrap.sh'])],
  ['build: worker', buildWorker],
  ['durability: SIGKILL chaos with SSE and WebSocket readers', () => run(bin('vitest'), ['run', '--config', 'tests/vitest.slow.config.ts'])],
  ['fuzz: every core target, bounded', () => run('node', ['scripts/fuzz.mjs'])],
];

await runSteps('npm run test:slow', steps);

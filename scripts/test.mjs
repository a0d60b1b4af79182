// `npm test`: every check, in order, stopping at the first failure.
// EDGESTREAM_TEST_ONLY=<substring> runs only the steps whose title contains it (for quick local loops).
import { bin, run, runSteps } from './run.mjs';
import { buildAll } from './build.mjs';
import { testClientInBrowser, testClientInBrowserAgainstWorker, testClientInNode } from './client.mjs';

const steps = [
  ['bootstrap', () => run('bash', ['scripts/bootstrap.sh'])],
  ['cargo fmt --check', () => run('cargo', ['fmt', '--all', '--check'])],
  ['cargo clippy', () => run('cargo', ['clippy', '--workspace', '--all-targets', '--', '-D', 'warnings'])],
  ['cargo test', () => run('cargo', ['test', '--workspace'])],
  [
    'core: no_std build for wasm32',
    () => run('cargo', ['build', '-p', 'edgestream', '--no-default-features', '--target', 'wasm32-unknown-unknown']),
  ],
  ['tsc --noEmit', () => run(bin('tsc'), ['--noEmit', '-p', 'tsconfig.json'])],
  ['build', buildAll],
  ['end-to-end suites (vitest)', () => run(bin('vitest'), ['run', '--config', 'tests/vitest.config.ts'])],
  ['client: browser tests, reference server with faults (wasm-pack, headless Chromium)', testClientInBrowser],
  ['client: browser tests, our Worker with WebSocket (wasm-pack, headless Chromium)', testClientInBrowserAgainstWorker],
  ['client: Node tests (js/test: producer batching, catch-up memory, large batches, bundles, tables)', testClientInNode],
  ['client: conformance (reference server)', () => run('node', ['tests/client-conformance/run.mjs'])],
  [
    'client: conformance (our Worker, cases without fault injection)',
    () => run('node', ['tests/client-conformance/run.mjs', '--server', 'worker']),
  ],
];

await runSteps('npm test', steps);

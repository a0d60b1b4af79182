// Small helpers for the build and test scripts: run a command, stream its output, fail loudly.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const bin = (name) => path.join(root, 'node_modules', '.bin', name);

/** Runs a command with inherited stdio; resolves on exit 0, rejects otherwise. */
export function run(command, args = [], options = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: root, stdio: 'inherit', ...options });
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      if (code === 0) resolve();
      else reject(new Error(`${command} ${args.join(' ')} failed (${signal ?? `exit ${code}`})`));
    });
  });
}

/** Prints a step header and times it. */
export async function step(title, fn) {
  const started = Date.now();
  console.log(`\n=== ${title}`);
  await fn();
  console.log(`=== ${title}: ok (${((Date.now() - started) / 1000).toFixed(1)} s)`);
}

/**
 * Runs `[title, fn]` steps in order and stops at the first failure, exiting 1.
 * EDGESTREAM_TEST_ONLY=<substring> runs only the steps whose title contains it (plus bootstrap).
 */
export async function runSteps(name, steps) {
  const only = process.env.EDGESTREAM_TEST_ONLY;
  const started = Date.now();
  try {
    for (const [title, fn] of steps) {
      if (only && title !== 'bootstrap' && !title.includes(only)) continue;
      await step(title, fn);
    }
    console.log(`\n${name}: all steps passed in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  } catch (e) {
    console.error(`\n${name}: FAILED: ${e.message}`);
    process.exit(1);
  }
}

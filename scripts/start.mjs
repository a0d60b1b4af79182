// `npm start`: bootstrap, build, then serve the Worker and the demo with `wrangler dev`.
// Flags after `--` go to wrangler (e.g. `npm start -- --port 9000 --var NAME:VALUE`).
import { spawn } from 'node:child_process';
import path from 'node:path';
import { bin, root, run, step } from './run.mjs';
import { buildAll } from './build.mjs';
import { claimState, wranglerEnv } from './dev-server.mjs';

const extra = process.argv.slice(2);
const has = (flag) => extra.some((a) => a === flag || a.startsWith(`${flag}=`));
/** The value of `--flag value` or `--flag=value`, the last one given. */
const value = (flag) => {
  let found;
  extra.forEach((a, i) => {
    if (a === flag) found = extra[i + 1];
    else if (a.startsWith(`${flag}=`)) found = a.slice(flag.length + 1);
  });
  return found;
};

await step('bootstrap', () => run('bash', ['scripts/bootstrap.sh']));
await buildAll();
// wrangler dev keeps its state under .wrangler/state unless told otherwise. A second server on
// the same state would serve the same streams from its own memory: refuse it.
let release;
try {
  release = claimState(path.resolve(root, value('--persist-to') ?? '.wrangler/state'));
} catch (e) {
  console.error(`edgestream: ${e.message}`);
  process.exit(1);
}
const args = ['dev', '--local', '--show-interactive-dev-session=false'];
if (!has('--ip')) args.push('--ip', '127.0.0.1');
if (!has('--port')) args.push('--port', '8787');
// Local development: subscriptions may call webhooks on this machine.
if (!extra.some((a) => a.startsWith('WEBHOOK_ALLOW_LOCALHOST'))) args.push('--var', 'WEBHOOK_ALLOW_LOCALHOST:true');
args.push(...extra);
// wrangler's DevTools inspector costs about 1 ms of CPU per request to a stream (see
// wranglerEnv): it is on only when asked for with --inspector-port.
console.log(`\nedgestream: wrangler ${args.join(' ')}`);
// wrangler and its two workerd processes run in a process group of their own, which this
// process stops however it is stopped: Ctrl-C, or a SIGTERM or SIGHUP sent to it alone (a
// process manager, `kill`), which used to leave them running, holding the port and the state.
const child = spawn(bin('wrangler'), args, {
  cwd: root,
  env: wranglerEnv({ inspector: has('--inspector-port') }),
  stdio: ['ignore', 'inherit', 'inherit'],
  detached: true,
});
const group = (signal) => {
  try {
    process.kill(-child.pid, signal);
  } catch {} // already gone
};
let stopping = 0;
const stop = (signal) => {
  // npm passes the terminal's Ctrl-C on as well, so one press arrives twice at once: a second
  // signal counts only after a moment, and then ends the group at once.
  if (stopping && Date.now() - stopping > 500) {
    console.error('edgestream: stopping now (SIGKILL)');
    group('SIGKILL');
  } else if (!stopping) {
    stopping = Date.now();
    group(signal === 'SIGHUP' ? 'SIGTERM' : signal);
    setTimeout(() => {
      console.error('edgestream: wrangler did not stop within 10 s; killing it');
      group('SIGKILL');
    }, 10_000).unref();
  }
};
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, () => stop(signal));
// npm does not pass on a SIGTERM sent to it alone: it exits, and this process would serve on
// with no one to stop it. Its parent gone, it stops too.
const parent = process.ppid;
setInterval(() => process.ppid !== parent && stop('SIGTERM'), 1000).unref();
process.on('exit', () => {
  group('SIGKILL'); // whatever of the group is left, workerd included
  release();
});
child.on('error', (e) => {
  console.error(`edgestream: cannot run wrangler: ${e.message}`);
  process.exit(1);
});
child.on('exit', (code, signal) => {
  if (stopping) process.exit(0);
  console.error(`edgestream: wrangler ${args.join(' ')} failed (${signal ?? `exit ${code}`})`);
  process.exit(1);
});

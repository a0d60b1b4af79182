// `npm start`: bootstrap, build, then serve the Worker and the demo with `wrangler dev`.
// Flags after `--` go to wrangler (e.g. `npm start -- --port 9000 --var NAME:VALUE`).
import { bin, root, run, step } from './run.mjs';
import { buildAll } from './build.mjs';
import { wranglerEnv } from './dev-server.mjs';

const extra = process.argv.slice(2);
const has = (flag) => extra.some((a) => a === flag || a.startsWith(`${flag}=`));

await step('bootstrap', () => run('bash', ['scripts/bootstrap.sh']));
await buildAll();
const args = ['dev', '--local', '--show-interactive-dev-session=false'];
if (!has('--ip')) args.push('--ip', '127.0.0.1');
if (!has('--port')) args.push('--port', '8787');
// Local development: subscriptions may call webhooks on this machine.
if (!extra.some((a) => a.startsWith('WEBHOOK_ALLOW_LOCALHOST'))) args.push('--var', 'WEBHOOK_ALLOW_LOCALHOST:true');
args.push(...extra);
// wrangler's DevTools inspector costs about 1 ms of CPU per request to a stream (see
// wranglerEnv): it is on only when asked for with --inspector-port.
console.log(`\nedgestream: wrangler ${args.join(' ')}`);
await run(bin('wrangler'), args, {
  cwd: root,
  env: wranglerEnv({ inspector: has('--inspector-port') }),
}).catch((e) => {
  console.error(e.message);
  process.exit(1);
});

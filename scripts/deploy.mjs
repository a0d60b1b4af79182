// `npm run deploy`: build, then `wrangler deploy` (needs a Cloudflare account and `wrangler
// login`). Flags after `--` go to wrangler (e.g. `npm run deploy -- --dry-run --outdir dist`).
// wrangler runs without sending usage metrics, as everywhere else in this project.
import { bin, root, run, step } from './run.mjs';
import { buildAll } from './build.mjs';

await step('bootstrap', () => run('bash', ['scripts/bootstrap.sh']));
await buildAll();
await run(bin('wrangler'), ['deploy', ...process.argv.slice(2)], {
  cwd: root,
  env: { ...process.env, WRANGLER_SEND_METRICS: 'false' },
}).catch((e) => {
  console.error(e.message);
  process.exit(1);
});

// Builds what `wrangler dev` serves: the Worker (Rust → wasm, offline) and the demo's assets.
import { cp, mkdir, rm } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { bin, root, run, step } from './run.mjs';
import { buildClient } from './client.mjs';

function which(tool) {
  return execFileSync('bash', ['-lc', `command -v ${tool}`], { encoding: 'utf8' }).trim();
}

/** worker-build, told to use our pinned binaries instead of downloading them from GitHub. */
export async function buildWorker() {
  await run('worker-build', ['--release'], {
    cwd: path.join(root, 'worker'),
    env: {
      ...process.env,
      WASM_BINDGEN_BIN: which('wasm-bindgen'),
      WASM_OPT_BIN: bin('wasm-opt'),
      ESBUILD_BIN: bin('esbuild'),
    },
  });
}

/**
 * The demo app's static files, which the Worker embeds (worker/build.rs): www/public,
 * plus the npm package (js/src and the built js/dist) under vendor/edgestream, which the page
 * imports through an import map, as a plain `<script type="module">` user would.
 */
export async function buildAssets() {
  const out = path.join(root, 'www', 'dist');
  await rm(out, { recursive: true, force: true });
  await mkdir(out, { recursive: true });
  await cp(path.join(root, 'www', 'public'), out, { recursive: true });
  const vendor = path.join(out, 'vendor', 'edgestream');
  await cp(path.join(root, 'js', 'src'), path.join(vendor, 'src'), { recursive: true });
  await cp(path.join(root, 'js', 'dist'), path.join(vendor, 'dist'), { recursive: true });
}

export async function buildAll() {
  // The Worker embeds the demo, and the demo vendors the client: build in that order.
  await step('build: client (wasm + JS glue, gzip size)', buildClient);
  await step('build: demo assets', buildAssets);
  await step('build: worker', buildWorker);
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  buildAll().catch((e) => {
    console.error(e.message);
    process.exit(1);
  });
}

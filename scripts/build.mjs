// Builds what `wrangler dev` serves: the Worker (Rust → wasm, offline) and the demo's assets.
import { copyFile, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
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
  const index = path.join(root, 'worker', 'build', 'index.js');
  await writeFile(index, promiseTaskQueue(plainEdgeEntrypoint(await readFile(index, 'utf8'))));
}

/** What a post-processing step (`by`) says when worker-build's output lacks `what` it needs. */
const shapeChanged = (what, by) =>
  new Error(`worker/build/index.js: ${what} not found; worker-build's output changed (see ${by} in scripts/build.mjs)`);
/** The first match of `re` in worker-build's output, or the error naming `what` and `by`. */
function needIn(js, re, what, by) {
  const m = js.match(re);
  if (!m) throw shapeChanged(what, by);
  return m;
}
const id = '[A-Za-z_$][\\w$]*';
// A name found in the bundle, to match literally (`$` is the only character in one that a
// pattern reads otherwise).
const literal = (name) => name.replace(/\$/g, '\\$');

/**
 * Exports the edge's `fetch` as a plain module-worker object instead of worker-build's default
 * export, a `WorkerEntrypoint` subclass behind a `Proxy`: the runtime then constructs no
 * entrypoint (nor proxies its instance and its `fetch`) for every request. The edge keeps no
 * state on the instance, and its handler reads only the request, `env` and `ctx`. What the
 * proxy did stays: the Wasm instance is rebuilt before the call if a trap marked it broken,
 * and a trap thrown by the call marks it so. Measured with request-interleaved appends under
 * `wrangler dev` (whose facade also subclasses an entrypoint class): about 30 µs of workerd
 * CPU less per append. The durable object classes keep their proxies. Fails the build if
 * worker-build's output no longer has the shape this relies on (see its shim.js).
 */
export function plainEdgeEntrypoint(js) {
  const need = (re, what) => needIn(js, re, what, 'plainEdgeEntrypoint');
  const [, entry] = need(new RegExp(`(${id})\\.prototype\\.fetch=function\\(\\w+\\)\\{return ${id}\\.call\\(this,`), 'the entrypoint class');
  const [, exported] = need(new RegExp(`[{,](${id}) as default[,}]`), 'the default export');
  need(new RegExp(`[,;{ ]${literal(exported)}=new Proxy\\(${literal(entry)},${id}\\)`), 'the proxied entrypoint');
  const [, reinit] = need(new RegExp(`function (${id})\\(\\)\\{${id}\\.criticalError&&\\(console\\.log\\("Reinitializing Wasm application"\\)`), 'the reinitialization check');
  const [, critical] = need(new RegExp(`function (${id})\\((\\w+)\\)\\{\\2 instanceof WebAssembly\\.RuntimeError`), 'the trap handler');
  const edge =
    `var __edgestreamEdge={fetch(request,env,ctx){${reinit}();` +
    `try{return ${entry}.prototype.fetch.call({env,ctx},request)}catch(e){throw ${critical}(e),e}}};`;
  const exports = need(/export\s*\{[^}]*\}\s*;?\s*$/, 'the export statement');
  return (
    js.slice(0, exports.index) +
    edge +
    exports[0].replace(new RegExp(`([{,])${literal(exported)} as default([,}])`), '$1__edgestreamEdge as default$2')
  );
}

/**
 * Makes the futures executor (js-sys's, behind `spawn_local` and every Rust future in the
 * Worker, the first poll of each request included) queue its task runs as promise reactions
 * instead of with the global `queueMicrotask`: it asks the global for `queueMicrotask` once per
 * Wasm instance, and this makes the import that asks answer `undefined`. workerd's
 * `queueMicrotask` wraps each callback to report what it throws, and a promise reaction costs
 * it less: with `node bench/ab.mjs`, 30 and 49 µs less workerd CPU per append in two runs
 * (paired medians, lower in 16 and 15 of 16 batches; A/A controls 10 and 5 µs) than the same
 * Wasm with `queueMicrotask`, and no change beyond the noise in SSE delivery
 * (`node bench/floor.mjs --fanout-only`).
 *
 * A trap (a Wasm `unreachable`, as a panic with panic=abort, `std::process::abort` or an
 * out-of-bounds access raises) in a task run marks the instance broken twice over, and this
 * keeps both. wasm-bindgen's glue marks it terminated as the trap leaves any export, and
 * rebuilds it at the next call into Wasm (workers-rs registers the abort handler that asks for
 * that): on its own this kept every request after a trap served in `tests/trap.test.ts`.
 * worker-build's handler logs `Critical` and marks it for its entrypoints and object proxies,
 * which rebuild it before their call. That handler heard of a trap in a task run through the
 * global `error` event, which workerd's `queueMicrotask` raises. In a promise reaction the trap
 * rejects the reaction's promise, which nothing handles, so the handler is also given the
 * reason of each `unhandledrejection` event. workerd dispatches that from a microtask it
 * queues when the promise is rejected, in the same drain of the microtask queue: after the
 * microtasks queued before the trap, before later ones, and before the isolate takes its next
 * event (a request, an object's call, an alarm), so no entrypoint finds the instance unmarked.
 * (Microtasks queued before it that call back into Wasm meet the glue's mark either way.) A
 * Rust panic also marks it from the panic hook workers-rs sets, before the trap.
 * `tests/trap.test.ts` traps the edge and a stream's object, also in tasks run after an await,
 * and checks that the handler saw each trap, which it does not without this hook. Fails the
 * build if worker-build's output no longer has the shape this relies on.
 */
export function promiseTaskQueue(js) {
  const by = 'promiseTaskQueue';
  const param = '([A-Za-z_$][\\w$]*)';
  const detect = new RegExp(`(__wbg_queueMicrotask_[0-9a-f]+:function\\(${param}\\)\\{)return \\2\\.queueMicrotask\\}`, 'g');
  const found = js.match(detect)?.length ?? 0;
  if (found !== 1) throw shapeChanged(`the one import that asks the global for queueMicrotask (found ${found})`, by);
  if (js.includes('"unhandledrejection"')) throw shapeChanged('a bundle with no unhandledrejection handler of its own', by);
  const [, critical] = needIn(js, new RegExp(`function (${id})\\(${param}\\)\\{\\2 instanceof WebAssembly\\.RuntimeError`), 'the trap handler', by);
  const onError = needIn(js, new RegExp(`addEventListener\\("error",${param}=>\\{${literal(critical)}\\(\\1\\.error\\)\\}\\);`), 'the error event handler', by);
  const at = onError.index + onError[0].length;
  const hook = `addEventListener("unhandledrejection",r=>{${critical}(r.reason)});`;
  return (js.slice(0, at) + hook + js.slice(at)).replace(detect, '$1return void 0}');
}

/** Every file under `dir` (relative paths), skipping `skip` directory names at any depth. */
async function filesUnder(dir, skip = new Set()) {
  if (!existsSync(dir)) return [];
  const out = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (skip.has(entry.name)) continue;
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await filesUnder(full, skip)).map((f) => path.join(entry.name, f)));
    else if (entry.isFile()) out.push(entry.name);
  }
  return out.sort();
}

/**
 * The demo app's static files, which the Worker embeds (worker/build.rs): www/public,
 * plus the npm package (js/src and the built js/dist) under vendor/edgestream, which the page
 * imports through an import map, as a plain `<script type="module">` user would. Only files
 * whose content changed are written, and files no longer there removed: worker/build.rs
 * watches www/dist, and a rewritten file would rebuild the Worker for nothing.
 */
export async function buildAssets() {
  const out = path.join(root, 'www', 'dist');
  const vendor = path.join('vendor', 'edgestream');
  const wanted = new Map();
  for (const [from, to] of [
    [path.join(root, 'www', 'public'), ''],
    [path.join(root, 'js', 'src'), path.join(vendor, 'src')],
    [path.join(root, 'js', 'dist'), path.join(vendor, 'dist')],
  ]) {
    for (const f of await filesUnder(from)) wanted.set(path.join(to, f), path.join(from, f));
  }
  for (const [rel, from] of wanted) {
    const to = path.join(out, rel);
    const bytes = await readFile(from);
    const old = existsSync(to) ? await readFile(to) : null;
    if (old && old.equals(bytes)) continue;
    await mkdir(path.dirname(to), { recursive: true });
    await copyFile(from, to);
  }
  for (const rel of await filesUnder(out)) {
    if (!wanted.has(rel)) await rm(path.join(out, rel));
  }
}

/** Where each build step keeps the digest of the inputs it last built from. */
const stamps = path.join(root, 'target', 'build-stamps');

/** A digest of the contents of `inputs` (files or directories, relative to the root). */
async function digest(inputs) {
  const hash = createHash('sha256');
  const skip = new Set(['target', 'node_modules', 'build', 'pkg', '.wrangler']);
  for (const input of inputs) {
    const full = path.join(root, input);
    if (!existsSync(full)) continue;
    const files = (await stat(full)).isDirectory() ? await filesUnder(full, skip) : [''];
    for (const f of files) {
      hash.update(path.join(input, f)).update('\0').update(await readFile(path.join(full, f))).update('\0');
    }
  }
  return hash.digest('hex');
}

/**
 * Runs `build` unless its outputs exist and its inputs are what it last built from, so a
 * second `npm start` serves at once. EDGESTREAM_REBUILD=1 builds anyway.
 */
async function unlessFresh(name, inputs, outputs, build) {
  const stamp = path.join(stamps, name);
  // The outputs count too: a build run by hand from other sources leaves other outputs.
  const state = async () => `${await digest(inputs)} ${await digest(outputs)}`;
  const built = existsSync(stamp) ? (await readFile(stamp, 'utf8')).trim() : '';
  const present = outputs.every((o) => existsSync(path.join(root, o)));
  if (process.env.EDGESTREAM_REBUILD !== '1' && present && built === (await state())) {
    console.log(`${name}: up to date (inputs unchanged since the last build)`);
    return;
  }
  await rm(stamp, { force: true });
  await build();
  await mkdir(stamps, { recursive: true });
  await writeFile(stamp, `${await state()}\n`);
}

/** What the core and both crates build from. */
const RUST = ['src', 'Cargo.toml', 'Cargo.lock'];

export async function buildAll() {
  // The Worker embeds the demo, and the demo vendors the client: build in that order.
  await step('build: client (wasm + JS glue, gzip size)', () =>
    unlessFresh('client', [...RUST, 'client', 'scripts/client.mjs'], ['js/dist'], buildClient),
  );
  await step('build: demo assets', buildAssets);
  await step('build: worker', () =>
    unlessFresh('worker', [...RUST, 'worker', 'www/dist', 'wrangler.toml', 'scripts/build.mjs'], ['worker/build'], buildWorker),
  );
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  buildAll().catch((e) => {
    console.error(e.message);
    process.exit(1);
  });
}

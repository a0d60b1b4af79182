// Builds the browser client (client/ → js/dist) and runs its tests.
//
//   import { buildClient, testClient } from './client.mjs'
//   node scripts/client.mjs build | test | browser | browser-worker | node | size
//
// The build is offline: cargo for wasm32, the wasm-bindgen CLI pinned by bootstrap.sh, and
// wasm-opt from the npm package binaryen. It prints the gzip size of the wasm plus its JS glue,
// which the issue budgets at 60 KB.
import { execFile } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { bin, root, run, step } from './run.mjs';

const js = path.join(root, 'js');
const dist = path.join(js, 'dist');
const targetDir = path.join(root, 'target', 'client');
// Size-tuned release settings for the client only, without touching the workspace profile
// (the Worker's build keeps its own) — hence the separate target directory.
const registrySrc = path.join(process.env.CARGO_HOME ?? path.join(process.env.HOME ?? '/root', '.cargo'), 'registry', 'src');
const releaseEnv = () => ({
  ...process.env,
  // Panic locations name source files; short prefixes keep those strings out of the wasm: each
  // registry's directory (`index.crates.io-<hash>`, 34 characters in every such string) as `c`.
  // Read when the build starts: a fresh machine has none until cargo unpacks its first crate.
  RUSTFLAGS: [
    process.env.RUSTFLAGS ?? '',
    `--remap-path-prefix=${registrySrc}=crates`,
    ...readdirSafe(registrySrc).map((name) => `--remap-path-prefix=${path.join(registrySrc, name)}=c`),
    `--remap-path-prefix=${root}=edgestream`,
  ].join(' ').trim(),
  CARGO_PROFILE_RELEASE_OPT_LEVEL: 'z',
  CARGO_PROFILE_RELEASE_PANIC: 'abort',
  CARGO_PROFILE_RELEASE_LTO: 'true',
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS: '1',
});
const WASM_FEATURES = [
  '--enable-bulk-memory',
  '--enable-sign-ext',
  '--enable-nontrapping-float-to-int',
  '--enable-mutable-globals',
  '--enable-reference-types',
  '--enable-multivalue',
];

/** The names in `dir`, none if it does not exist. */
function readdirSafe(dir) {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Gzip size (level 9) of a file or buffer. */
const gz = (buf) => gzipSync(buf, { level: 9 }).length;

/** Gzip size of `entry` bundled and minified by esbuild, as an app's bundler would. */
async function bundledSize(entry, name) {
  const bundle = path.join(targetDir, `${name}.bundle.min.js`);
  await run(bin('esbuild'), [entry, '--bundle', '--minify', '--format=esm', '--platform=browser', `--outfile=${bundle}`, '--log-level=error']);
  return gz(await readFile(bundle));
}

/**
 * What a web app ships: the wasm, plus the package's JS (our code, the wasm-bindgen glue and its
 * snippets) bundled and minified. `js` is an app that uses the client (everything but live
 * tables, which a bundler leaves out unless the app imports them); `tablesJs` is the whole
 * package. The raw, unminified files are listed too.
 */
export async function clientSize() {
  const wasm = await readFile(path.join(dist, 'edgestream_client_bg.wasm'));
  const withoutTables = path.join(targetDir, 'edgestream-client-entry.js');
  await mkdir(targetDir, { recursive: true });
  await writeFile(
    withoutTables,
    `import ${JSON.stringify(path.join(js, 'src', 'browser.js'))};\nexport * from ${JSON.stringify(path.join(js, 'src', 'core.js'))};\n`,
  );
  const jsSize = await bundledSize(withoutTables, 'edgestream');
  const tablesJs = await bundledSize(path.join(js, 'src', 'browser.js'), 'edgestream-all');
  const rows = [];
  const walk = async (dir) => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const p = path.join(dir, entry.name);
      if (entry.isDirectory()) await walk(p);
      else if (/\.(js|wasm)$/.test(entry.name)) rows.push([path.relative(root, p), (await stat(p)).size, gz(await readFile(p))]);
    }
  };
  await walk(dist);
  await walk(path.join(js, 'src'));
  return { rows, wasm: gz(wasm), js: jsSize, total: gz(wasm) + jsSize, withTables: gz(wasm) + tablesJs };
}

export async function printClientSize() {
  const { rows, wasm, js: jsSize, total, withTables } = await clientSize();
  for (const [file, raw, size] of rows) console.log(`  ${file}: ${raw} B, ${size} B gzip`);
  const kb = (n) => (n / 1024).toFixed(1);
  console.log(
    `client size: ${kb(total)} KB gzip = wasm ${kb(wasm)} KB + JS ${kb(jsSize)} KB (bundled, minified); budget 60 KB; ` +
      `with live tables ${kb(withTables)} KB`,
  );
  return total;
}

export async function buildClient() {
  await run(
    'cargo',
    ['build', '--release', '--target', 'wasm32-unknown-unknown', '-p', 'edgestream-client', '--no-default-features', '--target-dir', targetDir],
    { env: releaseEnv() },
  );
  await rm(dist, { recursive: true, force: true });
  await mkdir(dist, { recursive: true });
  const raw = path.join(targetDir, 'wasm32-unknown-unknown', 'release', 'edgestream_client.wasm');
  // --keep-debug keeps the function names for stubPanicFormatting; wasm-opt strips them.
  await run('wasm-bindgen', ['--target', 'web', '--out-dir', dist, '--out-name', 'edgestream_client', '--no-typescript', '--omit-default-module-path', '--keep-debug', raw]);
  const wasm = path.join(dist, 'edgestream_client_bg.wasm');
  await writeFile(wasm, stubPanicFormatting(await readFile(wasm)));
  const optimised = path.join(dist, 'edgestream_client_bg.opt.wasm');
  // --converge repeats the passes while they still shrink the module (about 120 bytes gzip).
  // --ignore-implicit-traps lets it drop or move loads whose value is unused, as if a load
  // could not trap (75 bytes): true of this Rust code, where memory is accessed safely,
  // integer division checks its divisor first and float-to-int conversions saturate. Explicit
  // traps (a panic's `unreachable`) stay where they are. --low-memory-unused lets it fold a
  // constant added to a pointer into the load's or store's offset (130 bytes): the two differ
  // only when the sum wraps past 4 GB into the first kilobyte, and rust-lld puts the 1 MB stack
  // first, so that kilobyte is the stack's far end, used only a kilobyte short of overflowing it.
  // The passes run as -Oz, --flatten, --rereloop, -Oz: the control flow of every function is
  // rebuilt by the Relooper from its basic blocks, which the second -Oz then shrinks further than
  // the structure rustc gave it (about 380 bytes gzip, for 15 s more build time).
  await run(bin('wasm-opt'), ['-Oz', '--flatten', '--rereloop', '-Oz', '--converge', '--ignore-implicit-traps', '--low-memory-unused', ...WASM_FEATURES, '--strip-debug', '--strip-producers', '--strip-target-features', wasm, '-o', optimised]);
  await shortenNames(optimised, wasm, path.join(dist, 'edgestream_client.js'));
  await rm(optimised);
  await printClientSize();
}

/**
 * Replaces the body of each `Display`/`Debug` implementation left in the wasm by `unreachable`
 * (1.5 KB gzip). They are there only because core's panics (an index out of bounds, a `RefCell`
 * borrowed twice, an `expect`) build their message's `fmt::Arguments` before calling the panic
 * handler: that puts pointers to them in the function table, which wasm-opt must keep whole
 * (JS calls closures through it), and with them all of `core::fmt` they reach (padding,
 * integer printing, char counting). The release build's panic handler (client/src/lib.rs)
 * traps without reading the message, so none of them ever runs. Formatting anything else
 * would need a `fmt::Write` implementation to write into (a `String` for `format!` or
 * `to_string`); the build fails if one appears, as then these functions could run.
 */
export function stubPanicFormatting(wasm) {
  const stub = /^<[^>]* as core\[[0-9a-f]+\]::fmt::(Display|Debug)>::fmt$/;
  let at = 8;
  const uleb = () => {
    let value = 0;
    for (let shift = 0; ; shift += 7) {
      const byte = wasm[at++];
      value += (byte & 0x7f) * 2 ** shift;
      if (!(byte & 0x80)) return value;
    }
  };
  const encode = (n) => {
    const out = [];
    do {
      const byte = n & 0x7f;
      n = Math.floor(n / 128);
      out.push(n ? byte | 0x80 : byte);
    } while (n);
    return Buffer.from(out);
  };
  const skipName = () => {
    const len = uleb();
    at += len;
  };
  let imported = 0;
  let code;
  const names = new Map();
  while (at < wasm.length) {
    const start = at;
    const id = wasm[at++];
    const end = uleb() + at;
    if (id === 2) {
      // Imports: only the functions among them count towards the function indices.
      for (let n = uleb(); n > 0; n--) {
        skipName();
        skipName();
        const kind = wasm[at++];
        if (kind === 0) (uleb(), imported++);
        else if (kind === 1) (at++, wasm[at++] & 1 ? (uleb(), uleb()) : uleb());
        else if (kind === 2) (wasm[at++] & 1 ? (uleb(), uleb()) : uleb());
        else if (kind === 3) at += 2;
        else throw new Error(`stubPanicFormatting: unknown import kind ${kind}`);
      }
    } else if (id === 10) {
      code = { start, end, bodies: [] };
      for (let n = uleb(); n > 0; n--) {
        const size = uleb();
        code.bodies.push(wasm.subarray(at, at + size));
        at += size;
      }
    } else if (id === 0) {
      const len = uleb();
      if (wasm.toString('utf8', at, at + len) === 'name') {
        at += len;
        while (at < end) {
          const sub = wasm[at++];
          const subEnd = uleb() + at;
          if (sub === 1) {
            for (let n = uleb(); n > 0; n--) {
              const index = uleb();
              const len = uleb();
              names.set(index, wasm.toString('utf8', at, at + len));
              at += len;
            }
          }
          at = subEnd;
        }
      }
    }
    at = end;
  }
  if (!code || names.size === 0) throw new Error('stubPanicFormatting: the wasm has no code or no function names');
  const writers = [...names.values()].filter((name) => name.includes('fmt::Write'));
  if (writers.length) throw new Error(`stubPanicFormatting: the wasm formats text (${writers.join(', ')}); its Display/Debug code may run`);
  const unreachable = Buffer.from([0x00, 0x00, 0x0b]); // no locals; unreachable; end
  const bodies = code.bodies.map((body, i) => (stub.test(names.get(imported + i) ?? '') ? unreachable : body));
  const payload = Buffer.concat([encode(bodies.length), ...bodies.flatMap((body) => [encode(body.length), body])]);
  return Buffer.concat([wasm.subarray(0, code.start), Buffer.from([10]), encode(payload.length), payload, wasm.subarray(code.end)]);
}

/**
 * Gives the wasm's imports, their modules and its exports one- or two-letter names (binaryen's
 * minify-imports-and-exports-and-modules), and renames them to match in the wasm-bindgen glue.
 * wasm-bindgen names each import after its function and a hash (`__wbg_get_556f1c9a5c587e8c`),
 * 80 of them, twice (in the wasm and in the glue), plus a snippet's path per import: random
 * hex that gzip cannot compress, about 2 KB gzip of the budget for nothing.
 */
async function shortenNames(input, output, gluePath) {
  const { stdout } = await promisify(execFile)(
    bin('wasm-opt'),
    [...WASM_FEATURES, '--minify-imports-and-exports-and-modules', input, '-o', output],
    { cwd: root, maxBuffer: 16 << 20 },
  );
  const map = JSON.parse(stdout);
  const modules = new Set(WebAssembly.Module.imports(new WebAssembly.Module(await readFile(output))).map((i) => i.module));
  if (modules.size !== 1) throw new Error(`shortenNames: expected one import module, got ${[...modules]}`);
  const [module] = modules;
  let glue = await readFile(gluePath, 'utf8');
  const replaceOnce = (from, to, what) => {
    const at = glue.indexOf(from);
    if (at < 0 || glue.indexOf(from, at + 1) >= 0) throw new Error(`shortenNames: ${what} is not in the glue exactly once`);
    glue = glue.slice(0, at) + to + glue.slice(at + from.length);
  };
  // The namespaces the glue imports the snippets as (several per snippet: any one will do).
  const namespaces = new Map();
  for (const [, name, file] of glue.matchAll(/^import \* as (import\d+) from "([^"]+)"$/gm)) if (!namespaces.has(file)) namespaces.set(file, name);
  const own = './edgestream_client_bg.js';
  const fromSnippets = [];
  for (const [from, name, short] of map.imports) {
    if (from === own) replaceOnce(`\n        ${name}: function(`, `\n        ${short}: function(`, `import ${name}`);
    else if (namespaces.has(from)) fromSnippets.push(`        ${short}: ${namespaces.get(from)}.${name},\n`);
    else throw new Error(`shortenNames: no namespace for the import module ${from}`);
  }
  replaceOnce('    const import0 = {\n        __proto__: null,\n', `    const import0 = {\n        __proto__: null,\n${fromSnippets.join('')}`, 'the import object');
  const ret = glue.match(/\n    return \{\n        __proto__: null,\n(?:        "[^"]+": import\d+,\n)+    \};\n/);
  if (!ret) throw new Error('shortenNames: the import object\'s modules are not where expected');
  replaceOnce(ret[0], `\n    return { __proto__: null, ${JSON.stringify(module)}: import0 };\n`, 'the modules');
  for (const [name, short] of map.exports) glue = glue.replace(new RegExp(`\\bwasm\\.${name}\\b`, 'g'), `wasm.${short}`);
  const left = glue.match(/\bwasm\.[A-Za-z_$][\w$]*/g)?.filter((w) => !map.exports.some(([, short]) => w === `wasm.${short}`));
  if (left?.length) throw new Error(`shortenNames: the glue uses exports that have no short name: ${[...new Set(left)]}`);
  await writeFile(gluePath, glue);
}

/**
 * Seconds the wasm-bindgen test runner waits for the whole browser run (its default, 20, is less
 * than the hidden-page and short-SSE tests take together).
 */
const BROWSER_TEST_TIMEOUT_S = '180';

/** Browser tests (client/tests/browser.rs) in headless Chromium against the reference server. */
export async function testClientInBrowser() {
  const { startReferenceServer } = await import('./reference-server.mjs');
  const server = await startReferenceServer({ longPollTimeoutMs: 500 });
  try {
    await run('wasm-pack', ['test', '--mode', 'no-install', '--headless', '--chrome', 'client'], {
      env: {
        ...process.env,
        EDGESTREAM_TEST_URL: server.url,
        EDGESTREAM_TEST_FAULTS: '1',
        CHROMEDRIVER: process.env.CHROMEDRIVER ?? '/usr/bin/chromedriver',
        WASM_BINDGEN_TEST_TIMEOUT: process.env.WASM_BINDGEN_TEST_TIMEOUT ?? BROWSER_TEST_TIMEOUT_S,
      },
    });
  } finally {
    await server.stop();
  }
}

/**
 * The same browser tests against our Worker on wrangler dev (built first), WebSocket following
 * included; fault injection is the reference server's, so those cases run only there.
 */
export async function testClientInBrowserAgainstWorker() {
  const { startServer } = await import('./dev-server.mjs');
  const server = await startServer({ vars: { LONG_POLL_TIMEOUT_MS: '500' } });
  try {
    await run('wasm-pack', ['test', '--mode', 'no-install', '--headless', '--chrome', 'client'], {
      env: {
        ...process.env,
        EDGESTREAM_TEST_URL: `${server.baseUrl}/v1/stream`,
        EDGESTREAM_TEST_WS: '1',
        CHROMEDRIVER: process.env.CHROMEDRIVER ?? '/usr/bin/chromedriver',
        WASM_BINDGEN_TEST_TIMEOUT: process.env.WASM_BINDGEN_TEST_TIMEOUT ?? BROWSER_TEST_TIMEOUT_S,
      },
    });
  } finally {
    await server.stop();
  }
}

/** Node tests of the package's JS (js/test: the producer's batching), against the reference server. */
export async function testClientInNode() {
  await run('node', ['--test', path.join(js, 'test')]);
}

/** Client tests: native unit tests, the browser tests, the Node tests and the conformance suite. */
export async function testClient() {
  await step('client: cargo test (native)', () => run('cargo', ['test', '-p', 'edgestream-client']));
  await step('client: browser tests (wasm-pack, headless Chromium)', testClientInBrowser);
  await step('client: Node tests (js/test)', testClientInNode);
  await step('client: conformance (reference server)', () =>
    run('node', [path.join('tests', 'client-conformance', 'run.mjs')]),
  );
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const what = process.argv[2] ?? 'build';
  const job = {
    build: buildClient,
    test: testClient,
    browser: testClientInBrowser,
    'browser-worker': testClientInBrowserAgainstWorker,
    node: testClientInNode,
    size: printClientSize,
  }[what];
  if (!job) {
    console.error('usage: node scripts/client.mjs build|test|browser|browser-worker|node|size');
    process.exit(2);
  }
  job().catch((e) => {
    console.error(e.message);
    process.exit(1);
  });
}

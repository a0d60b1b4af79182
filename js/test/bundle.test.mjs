// Apps bundle the package (Vite, esbuild, webpack). The entry modules register the wasm loader
// with a top-level call, so a bundler that believed the package has no side effects would drop
// that call and every use would fail with "no wasm loader". Bundle it as an app would, with
// esbuild for the browser and for Node, and read a stream through each bundle.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync, symlinkSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build } from 'esbuild';
import { DurableStream } from '../src/node.js';
import { useReferenceServer } from '../test-support/reference-server.mjs';

const server = useReferenceServer();
const pkg = fileURLToPath(new URL('..', import.meta.url));
const wasm = path.join(pkg, 'dist', 'edgestream_client_bg.wasm');

/** An app folder with `edgestream` installed (a symlink, as `npm link` makes). */
function app(t) {
  const dir = mkdtempSync(path.join(tmpdir(), 'edgestream-bundle-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(path.join(dir, 'node_modules'));
  symlinkSync(pkg, path.join(dir, 'node_modules', 'edgestream'), 'dir');
  writeFileSync(path.join(dir, 'main.js'), "export { init, stream } from 'edgestream';\n");
  return dir;
}

async function bundle(dir, platform) {
  const outfile = path.join(dir, 'out', `app-${platform}.mjs`);
  await build({
    absWorkingDir: dir,
    entryPoints: ['main.js'],
    bundle: true,
    format: 'esm',
    platform,
    outfile,
    logLevel: 'silent',
  });
  return outfile;
}

async function streamWithText(text) {
  const url = `${server.url}/v1/stream/bundle-${randomUUID()}`;
  await DurableStream.create({ url, contentType: 'text/plain', body: text });
  return url;
}

test('a browser bundle keeps the wasm loader', async (t) => {
  const dir = app(t);
  const { init, stream } = await import(pathToFileURL(await bundle(dir, 'browser')).href);
  // Node's fetch cannot read the file: URL a browser would fetch, so hand the bytes over.
  await init(readFileSync(wasm));
  const url = await streamWithText('from a browser bundle');
  assert.equal(await stream({ url, live: false }).text(), 'from a browser bundle');
});

test('a Node bundle keeps the wasm loader', async (t) => {
  const dir = app(t);
  const outfile = await bundle(dir, 'node');
  // The loader reads ../dist/edgestream_client_bg.wasm next to the bundle, as shipped.
  cpSync(path.join(pkg, 'dist'), path.join(dir, 'dist'), { recursive: true });
  const { stream } = await import(pathToFileURL(outfile).href);
  const url = await streamWithText('from a Node bundle');
  assert.equal(await stream({ url, live: false }).text(), 'from a Node bundle');
});

test('in Node, init() takes the wasm as a file: URL, or its string', async (t) => {
  for (const input of [pathToFileURL(wasm), pathToFileURL(wasm).href]) {
    // A Node bundle of its own, so that this init() is the first its module copy sees.
    const dir = app(t);
    const { init, stream } = await import(pathToFileURL(await bundle(dir, 'node')).href);
    await init(input);
    const url = await streamWithText('from a file: URL');
    assert.equal(await stream({ url, live: false }).text(), 'from a file: URL', String(input));
  }
});

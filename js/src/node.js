// Node 20+: fetch() cannot read file: URLs, so the wasm is read from disk.
import { readFile } from 'node:fs/promises';
import { setLoader } from './core.js';
import initWasm from '../dist/edgestream_client.js';

/** What `init(input)` loads: the package's own wasm by default, and a file: URL from disk. */
async function wasmSource(input) {
  if (input === undefined) return readFile(new URL('../dist/edgestream_client_bg.wasm', import.meta.url));
  const url = input instanceof URL ? input : typeof input === 'string' && input.startsWith('file:') ? new URL(input) : null;
  return url?.protocol === 'file:' ? readFile(url) : input;
}

setLoader(async (input) => initWasm({ module_or_path: await wasmSource(input) }));

export * from './core.js';
export * from './table.js';

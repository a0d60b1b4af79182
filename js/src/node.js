// Node 20+: fetch() cannot read file: URLs, so the wasm is read from disk.
import { readFile } from 'node:fs/promises';
import { setLoader } from './core.js';
import initWasm from '../dist/edgestream_client.js';

setLoader(async (input) =>
  initWasm({
    module_or_path: input ?? (await readFile(new URL('../dist/edgestream_client_bg.wasm', import.meta.url))),
  }),
);

export * from './core.js';
export * from './table.js';

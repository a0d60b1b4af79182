// Browsers and bundlers (Vite, webpack, esbuild): the wasm is fetched next to this module.
// Bundlers see `new URL('…', import.meta.url)` and ship the file as an asset.
import { setLoader } from './core.js';
import initWasm from '../dist/edgestream_client.js';

setLoader((input) =>
  initWasm({ module_or_path: input ?? new URL('../dist/edgestream_client_bg.wasm', import.meta.url) }),
);

export * from './core.js';
export * from './table.js';

// Browsers and bundlers: the wasm is fetched next to this module. Vite and webpack see
// `new URL('…', import.meta.url)` and ship the file as an asset; with esbuild, pass its URL to
// init() (js/README.md).
import { setLoader } from './core.js';
import initWasm from '../dist/edgestream_client.js';

setLoader((input) =>
  initWasm({ module_or_path: input ?? new URL('../dist/edgestream_client_bg.wasm', import.meta.url) }),
);

export * from './core.js';
export * from './table.js';

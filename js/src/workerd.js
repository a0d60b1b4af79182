// Cloudflare Workers (workerd): it fetches no file URLs and compiles no wasm bytes at run time,
// so the wasm is imported as a module, which wrangler (and other workerd bundlers) compile ahead.
import { setLoader } from './core.js';
import initWasm from '../dist/edgestream_client.js';
import wasm from '../dist/edgestream_client_bg.wasm';

setLoader((input) => initWasm({ module_or_path: input ?? wasm }));

export * from './core.js';
export * from './table.js';

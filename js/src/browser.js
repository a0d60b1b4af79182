// Browsers and bundlers: the wasm is fetched next to this module. Vite and webpack see
// `new URL('…', import.meta.url)` and ship the file as an asset; with esbuild, pass its URL to
// init() (js/README.md).
import { DurableStreamError, setLoader } from './core.js';
import initWasm from '../dist/edgestream_client.js';

setLoader(async (input) => {
  input ??= new URL('../dist/edgestream_client_bg.wasm', import.meta.url);
  // A fetch that fails (the network is down) is a NETWORK_ERROR, which readers and producers
  // retry as they retry their requests.
  if (typeof input === 'string' || input instanceof URL) {
    input = await fetch(input).catch((e) => {
      throw new DurableStreamError(`the client's wasm could not be fetched: ${e?.message ?? e}`, 'NETWORK_ERROR', undefined, { cause: e });
    });
    // A status (a bundler that did not ship the file: see init() in js/README.md) is not retried.
    if (!input.ok) throw new DurableStreamError(`failed to fetch Wasm: ${input.status} ${input.url}`, 'UNEXPECTED_STATUS', input.status);
  }
  return initWasm({ module_or_path: input });
});

export * from './core.js';
export * from './table.js';

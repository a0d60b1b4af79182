// Compiled by ../types.test.mjs in a Node-only project (lib ES2022 and @types/node, no DOM, with
// skipLibCheck off): the package's types must not need the DOM lib.
import { init, stream } from 'edgestream';

const h = stream({ url: 'http://127.0.0.1/v1/stream/x', live: false, headers: new Headers() });
void h.items();
void init(new Uint8Array(8));

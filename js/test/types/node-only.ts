// Compiled by ../types.test.mjs in a Node-only project (lib ES2022 and @types/node, no DOM, with
// skipLibCheck off): the package's types must not need the DOM lib.
import { init, stream, type DurableStream } from 'edgestream';

const h = stream({ url: 'http://127.0.0.1/v1/stream/x', live: false, headers: new Headers() });
void h.items();
void init(new Uint8Array(8));

// Web streams are globals of Node's types too.
async function webStreams(ds: DurableStream) {
  await ds.appendStream(['a'], { producerId: 'p' });
  await new ReadableStream<string>().pipeTo(ds.writable());
  for await (const s of ds.stream({ live: false }).textStream()) void s;
}
void webStreams;

// Runs the reference Node server (@durable-streams/server) in its own process, so the benchmark
// can measure its memory and CPU apart from the load generator.
//
//   node bench/ref-server.mjs [--data-dir DIR]
//
// Prints one JSON line {"url": "..."} when listening; stops cleanly on SIGTERM or SIGINT.
import { DurableStreamTestServer } from '@durable-streams/server';

const args = process.argv.slice(2);
const at = args.indexOf('--data-dir');
const dataDir = at >= 0 ? args[at + 1] : undefined;

const server = new DurableStreamTestServer({
  port: 0,
  host: '127.0.0.1',
  dataDir,
  // Both servers answer uncompressed bodies, so catch-up reads compare the same bytes.
  compression: false,
});
const url = await server.start();
process.stdout.write(`${JSON.stringify({ url })}\n`);

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  try {
    await Promise.race([server.stop(), new Promise((r) => setTimeout(r, 5_000))]);
  } finally {
    process.exit(0);
  }
};
process.on('SIGTERM', stop);
// The benchmark asks for a collection before it samples memory (node --expose-gc), so the
// garbage of an earlier workload does not hide what live readers cost.
process.on('SIGUSR2', () => globalThis.gc?.());
process.on('SIGINT', stop);
process.on('disconnect', stop);

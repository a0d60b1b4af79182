// The reference Node server (@durable-streams/server) in a process of its own, for the client
// tests, the client conformance runner and the benchmark.
//
//   node scripts/reference-server.mjs [--long-poll-timeout MS] [--no-compression] [--data-dir DIR]
//
// As a program it prints one JSON line {"url": "..."} when listening and stops cleanly on
// SIGTERM, SIGINT or when its standard input ends (its parent has gone); SIGUSR2 asks it for a full collection (run it with
// --expose-gc). `startReferenceServer()` runs it and waits for that line.
//
// Why a process of its own: Node 20 can deadlock inside its crypto module when a collection
// runs while the server exports its webhook signing key at start-up (seen in CI: the test
// runner, on a large heap after many steps, hung there with every thread waiting). A fresh
// process starts on a small heap, and a start that still hangs is killed and tried again.
import { spawn } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';

const self = fileURLToPath(import.meta.url);

/**
 * Starts the server: { url, pid, collectGarbage(), stop() }. Options: longPollTimeoutMs,
 * compression (default the server's own), dataDir, nodeArgs (e.g. ['--expose-gc']),
 * startTimeoutMs per attempt (default 20 s), attempts (default 3).
 */
export async function startReferenceServer(options = {}) {
  const attempts = options.attempts ?? 3;
  let lastError;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    try {
      return await startOnce(options);
    } catch (e) {
      lastError = e;
      console.error(`reference server: start ${attempt} of ${attempts} failed: ${e.message}`);
    }
  }
  throw lastError;
}

async function startOnce(options) {
  const args = [...(options.nodeArgs ?? []), self];
  if (options.longPollTimeoutMs !== undefined) args.push('--long-poll-timeout', String(options.longPollTimeoutMs));
  if (options.compression === false) args.push('--no-compression');
  if (options.dataDir) args.push('--data-dir', options.dataDir);
  // Standard input stays open while this process lives: the server stops when it ends.
  const child = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let log = '';
  child.stderr.on('data', (c) => (log += c));
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const kill = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  };
  let timer;
  try {
    const url = await new Promise((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (c) => {
        out += c;
        const line = out.split('\n').find((l) => l.startsWith('{'));
        if (line) resolve(JSON.parse(line).url);
      });
      child.once('exit', (code, signal) => reject(new Error(`exited (${signal ?? code}): ${log}`)));
      const ms = options.startTimeoutMs ?? 20_000;
      timer = setTimeout(() => reject(new Error(`not listening after ${ms} ms`)), ms);
    });
    return {
      url,
      pid: child.pid,
      /** A full collection in the server process, before memory is sampled (--expose-gc). */
      collectGarbage: () => child.kill('SIGUSR2'),
      stop: kill,
    };
  } catch (e) {
    child.kill('SIGKILL');
    await exited;
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

async function serve() {
  const { DurableStreamTestServer } = await import('@durable-streams/server');
  const args = process.argv.slice(2);
  const value = (name) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const longPollTimeout = value('--long-poll-timeout');
  const server = new DurableStreamTestServer({
    port: 0,
    host: '127.0.0.1',
    dataDir: value('--data-dir'),
    ...(longPollTimeout ? { longPollTimeout: Number(longPollTimeout) } : {}),
    // The benchmark compares uncompressed bodies with edgestream's.
    ...(args.includes('--no-compression') ? { compression: false } : {}),
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
  process.on('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.on('error', stop);
  process.stdin.resume();
  process.on('SIGUSR2', () => globalThis.gc?.());
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await serve();

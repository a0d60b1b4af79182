// Starts `wrangler dev` on a free port for tests and benchmarks, and always stops it by PID.
//
//   import { startServer } from './dev-server.mjs'
//   const server = await startServer({ vars: { LONG_POLL_TIMEOUT_MS: '1000' } })
//   ... server.baseUrl ...
//   await server.restart()   // same state directory: a crash-and-recover test
//   await server.stop()
//
// CLI: node scripts/dev-server.mjs [--port N] [--var NAME:VALUE ...]
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, unlinkSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { bin, root } from './run.mjs';

/**
 * The environment wrangler runs in: no metrics, no `request.cf` download, and the DevTools
 * inspector off unless `inspector`. wrangler 4.86 has no flag for the inspector, and when it is
 * on, its inspector proxy (in wrangler's own workerd) subscribes to the runtime's network events
 * and relays every event to the wrangler Node process as an HTTP request: about 1 ms of CPU in
 * those two processes per request that calls the stream's object, more than the Worker itself
 * spends, on a machine whose cores the load shares. wrangler turns the inspector off inside a
 * VS Code JavaScript debug terminal, which it recognises by `VSCODE_INSPECTOR_OPTIONS`.
 */
export function wranglerEnv({ inspector = false } = {}) {
  return {
    ...process.env,
    WRANGLER_SEND_METRICS: 'false',
    CLOUDFLARE_CF_FETCH_ENABLED: 'false',
    ...(inspector ? {} : { VSCODE_INSPECTOR_OPTIONS: '{}' }),
  };
}

/** A TCP port nobody listens on right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** The state directories this process serves, each with its lock file. */
const claimed = new Map();

/**
 * Claims a state directory (`--persist-to`) for this process, and returns a function that gives
 * it back. wrangler dev does not lock it, and two servers on one directory each serve the same
 * streams from their own memory: appends on one were refused 503 after a UNIQUE constraint
 * failure on the other's rows, and readers on one never heard of appends on the other. Throws
 * while a live process holds it; a claim left by a process that died is taken over.
 */
export function claimState(dir) {
  const lock = path.join(dir, 'edgestream.pid');
  if (claimed.has(lock)) throw new Error(`another server of this process already serves ${dir}`);
  mkdirSync(dir, { recursive: true });
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = openSync(lock, 'wx');
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      break;
    } catch (e) {
      if (e.code !== 'EEXIST' || attempt > 0) throw e;
      const holder = Number(readFileSync(lock, 'utf8').trim());
      if (Number.isInteger(holder) && holder > 0 && alive(holder)) {
        throw new Error(
          `the state directory ${dir} is in use by another edgestream server (pid ${holder}): ` +
            'stop it first, or give this one another directory with --persist-to',
        );
      }
      unlinkSync(lock); // its holder died without giving it back
    }
  }
  claimed.set(lock, dir);
  return () => {
    if (!claimed.delete(lock)) return;
    try {
      unlinkSync(lock);
    } catch {}
  };
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code === 'EPERM';
  }
}

const running = new Set();
/** State directories made here, removed when this process ends however it ends. */
const ownDirs = new Set();
function stopAllSync() {
  for (const child of running) {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {}
  }
  running.clear();
  for (const lock of claimed.keys()) {
    try {
      unlinkSync(lock);
    } catch {}
  }
  claimed.clear();
  for (const dir of ownDirs) {
    // workerd, just killed, may still be writing into it: whatever is left stays.
    try {
      rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
    } catch {}
  }
  ownDirs.clear();
}
/** Stops every server when this process ends: hooked by the first start, not on import
 * (`npm start` imports this file and stops its server its own way). */
let hooked = false;
function hookExit() {
  if (hooked) return;
  hooked = true;
  process.on('exit', stopAllSync);
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, () => {
      stopAllSync();
      process.exit(130);
    });
  }
}

async function waitUntilUp(baseUrl, child, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`wrangler exited early (code ${child.exitCode})`);
    try {
      const res = await fetch(`${baseUrl}/v1/stream/__health`, { method: 'HEAD' });
      await res.arrayBuffer();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`wrangler did not answer on ${baseUrl} within ${timeoutMs} ms`);
}

/** TCP ports listened on by the processes of process group `pgid`, with their pid (Linux /proc). */
function listeningSockets(pgid) {
  const owners = new Map(); // socket inode → pid
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      // Field 5 of /proc/<pid>/stat is the process group; the name before it may hold spaces.
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]) !== pgid) continue;
      for (const fd of readdirSync(`/proc/${pid}/fd`)) {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m) owners.set(m[1], Number(pid));
      }
    } catch {} // the process ended while we looked
  }
  const sockets = [];
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f[3] === '0A' && owners.has(f[9])) sockets.push({ port: parseInt(f[1].split(':')[1], 16), pid: owners.get(f[9]) });
  }
  return sockets;
}

/**
 * The Worker's own workerd socket, behind wrangler dev's proxy, and the workerd that listens on
 * it: { url, pid }. The proxy (a second workerd) funnels every request through one Durable Object
 * of its own before it reaches the Worker, which production does not do; the benchmark measures
 * the Worker here, and the proxy apart.
 */
async function findWorker(pgid, skip) {
  // Looked for again for up to 10 s: on a loaded machine a look can miss it (a CI run once
  // found no socket answering, between two looks that did).
  for (const deadline = Date.now() + 10_000; ; await new Promise((r) => setTimeout(r, 200))) {
    for (const { port, pid } of listeningSockets(pgid)) {
      if (skip.includes(port)) continue;
      try {
        const res = await fetch(`http://127.0.0.1:${port}/v1/stream/__health`, { method: 'HEAD', signal: AbortSignal.timeout(5_000) });
        await res.arrayBuffer();
        if (res.headers.get('access-control-expose-headers')?.includes('stream-next-offset')) return { url: `http://127.0.0.1:${port}`, pid };
      } catch {}
    }
    if (Date.now() > deadline) throw new Error('the Worker\'s own workerd socket was not found');
  }
}

/**
 * Starts the built Worker (or the Worker of another wrangler.toml: `config`). Options: port
 * (default: a free one), vars ({ NAME: value }), inspector (default false: see
 * `wranglerEnv`; true for profiles and heap counts through `inspectorPort`),
 * persistTo (default: a fresh temporary directory, removed on stop), quiet (default true:
 * wrangler's output goes to a log kept in memory and printed if start-up fails).
 */
export async function startServer(options = {}) {
  // A port found free can be taken before wrangler binds it (test files start servers in
  // parallel, and wrangler picks more ports of its own), and workerd then fails to start: try
  // again on fresh ports. A server that cannot start for any other reason fails every time.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(options);
    } catch (e) {
      if (options.port !== undefined || attempt === 3 || !/exited early/.test(e.message)) throw e;
      console.error(`wrangler failed to start (attempt ${attempt}); trying again on other ports`);
    }
  }
}

async function startOnce(options) {
  hookExit();
  const port = options.port ?? (await freePort());
  const inspector = options.inspector ? await freePort() : undefined;
  const ownState = !options.persistTo;
  const persistTo = options.persistTo ?? mkdtempSync(path.join(tmpdir(), 'edgestream-state-'));
  if (ownState) ownDirs.add(persistTo);
  const release = claimState(persistTo);
  const baseUrl = `http://127.0.0.1:${port}`;
  const args = [
    'dev', '--local', '--ip', '127.0.0.1', '--port', String(port),
    ...(inspector ? ['--inspector-port', String(inspector)] : []),
    '--show-interactive-dev-session=false', '--persist-to', persistTo, '--log-level', 'warn',
  ];
  if (options.config) args.push('--config', options.config);
  for (const [name, value] of Object.entries(options.vars ?? {})) args.push('--var', `${name}:${value}`);
  let child;
  let log = '';
  const launch = async () => {
    log = '';
    child = spawn(bin('wrangler'), args, {
      cwd: root,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: wranglerEnv({ inspector: Boolean(inspector) }),
    });
    running.add(child);
    const keep = (chunk) => {
      log += chunk;
      if (log.length > 200_000) log = log.slice(-100_000);
      if (options.quiet === false) process.stderr.write(chunk);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    try {
      await waitUntilUp(baseUrl, child, options.startTimeoutMs ?? 60_000);
    } catch (e) {
      console.error(log);
      await kill();
      throw e;
    }
  };
  const kill = async (signal = 'SIGTERM') => {
    if (!child) return;
    const c = child;
    child = undefined;
    running.delete(c);
    if (c.exitCode !== null) return;
    const exited = new Promise((resolve) => c.once('exit', resolve));
    try {
      process.kill(-c.pid, signal);
    } catch {}
    const timer = setTimeout(() => {
      try {
        process.kill(-c.pid, 'SIGKILL');
      } catch {}
    }, 5_000);
    await exited;
    clearTimeout(timer);
  };
  try {
    await launch();
  } catch (e) {
    release();
    if (ownState) rmSync(persistTo, { recursive: true, force: true });
    throw e;
  }
  return {
    baseUrl,
    port,
    /** wrangler's inspector (Chrome DevTools protocol), for profiling the Worker. */
    inspectorPort: inspector,
    persistTo,
    get pid() {
      return child?.pid;
    },
    log: () => log,
    /** The Worker's own socket, bypassing wrangler's proxy (see findWorker). */
    workerUrl: async () => (await findWorker(child.pid, [port, inspector])).url,
    /** The pid of the workerd that runs the Worker and its objects. */
    workerPid: async () => (await findWorker(child.pid, [port, inspector])).pid,
    /** Stops and starts again on the same port and state (SIGKILL when `hard`). */
    async restart({ hard = false } = {}) {
      await kill(hard ? 'SIGKILL' : 'SIGTERM');
      await launch();
    },
    async stop() {
      await kill();
      release();
      if (ownState) rmSync(persistTo, { recursive: true, force: true });
    },
  };
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const argv = process.argv.slice(2);
  const vars = {};
  let port;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--port') port = Number(argv[++i]);
    else if (argv[i] === '--var') {
      const [name, ...rest] = argv[++i].split(':');
      vars[name] = rest.join(':');
    }
  }
  const server = await startServer({ port, vars, quiet: false });
  console.log(`edgestream dev server on ${server.baseUrl} (pid ${server.pid}); Ctrl-C stops it`);
}

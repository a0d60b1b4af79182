// CPU profile of the Worker's isolate, taken through wrangler dev's inspector (the Chrome
// DevTools protocol), while the Worker serves a fan-out or a loop of small requests. Prints the
// functions with the most self time, per delivery or per request. This is how the reasons in
// bench/results/latest.md were found; it is not part of `npm run bench`.
//
//   node bench/profile.mjs fanout [--sse 600] [--ws 0] [--messages 200] [--rate 50]
//   node bench/profile.mjs requests [--kind append|producer|head|404|catchup] [--count 2000]
//   (either: [--top 30] rows to print, [--save FILE.cpuprofile] to keep the raw profile,
//   [--config wrangler.toml] to profile another build)
//
// Names: `(program)` is the runtime's own native work, `(idle)` is waiting, `__wbg_*` are the
// wasm-bindgen imports (a JS call made from Rust; their names are read from wrangler's bundle),
// `write` and `send` the runtime's stream write and WebSocket send. Sampling adds overhead: compare shares, not absolute times.
import { fork } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer } from '../scripts/dev-server.mjs';
import { inspect } from '../scripts/inspector.mjs';
import { option } from './common.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const argv = process.argv.slice(2);
const mode = argv[0] ?? 'fanout';

/**
 * A readable name for a profiled function. The wasm-bindgen imports are anonymous functions in
 * wrangler's bundle; the import's name (`__wbg_write_…`) sits on the line that defines them, so
 * it is read from the bundle itself.
 */
const bundles = new Map();
function bundleLines(url) {
  if (!bundles.has(url)) {
    let lines = [];
    try {
      // The inspector names wrangler's bundle only `index.js`: the newest under .wrangler/tmp.
      const tmp = path.join(here, '..', '.wrangler', 'tmp');
      const newest = readdirSync(tmp)
        .filter((d) => d.startsWith('dev-'))
        .map((d) => path.join(tmp, d, url))
        .filter((f) => existsSync(f))
        .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0];
      if (newest) lines = readFileSync(newest, 'utf8').split('\n');
    } catch {
      // No bundle to read: names stay anonymous.
    }
    bundles.set(url, lines);
  }
  return bundles.get(url);
}

function nameOf(f) {
  if (!f.url) return f.functionName || '(anonymous)';
  const file = f.url.split('/').pop();
  if (f.functionName) return `${f.functionName} (${file})`;
  if (file.endsWith('.js')) {
    // The line also closes the previous import, by name: take the one being defined.
    const imported = bundleLines(f.url)[f.lineNumber]?.match(/(__wbg_\w+?)_[0-9a-f]{16}:/);
    if (imported) return `${imported[1]} (${file})`;
  }
  return `(anonymous) (${file}:${f.lineNumber + 1})`;
}

/** Self time by function, biggest first: [name, microseconds]. */
function selfTimes(profile) {
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map();
  profile.samples.forEach((id, i) => {
    const key = nameOf(nodes.get(id).callFrame);
    self.set(key, (self.get(key) ?? 0) + (profile.timeDeltas[i] ?? 0));
  });
  return [...self].sort((a, b) => b[1] - a[1]);
}

/** Self time by kind of code. */
function byKind(rows) {
  const wasm = 'wasm (our code and the crates it uses)';
  const js = 'JS (wasm-bindgen glue, the worker-build shim, wrangler middleware)';
  const runtime = 'the runtime (native calls, its own work, GC)';
  const kinds = { [wasm]: 0, [js]: 0, [runtime]: 0, idle: 0 };
  for (const [name, us] of rows) {
    if (name.startsWith('(idle)')) kinds.idle += us;
    else if (name.includes('.wasm')) kinds[wasm] += us;
    else if (name.includes('.js')) kinds[js] += us;
    else kinds[runtime] += us;
  }
  return kinds;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
function request(base, method, target, body, contentType = 'application/json', extra = {}) {
  return new Promise((resolve, reject) => {
    const headers = { 'content-type': contentType, ...extra };
    const req = http.request(`${base}${target}`, { method, agent, headers }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', reject);
    req.end(body);
  });
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// --config FILE: another build's wrangler.toml, to compare builds.
const server = await startServer({ inspector: true, config: option(argv, 'config') });
let readers;
try {
  const base = await server.workerUrl();
  const stream = `/v1/stream/profile-${Date.now().toString(36)}`;
  await request(base, 'PUT', stream);
  let units;
  let run;
  if (mode === 'fanout') {
    const sse = Number(option(argv, 'sse', 600));
    const ws = Number(option(argv, 'ws', 0));
    const messages = Number(option(argv, 'messages', 200));
    const rate = Number(option(argv, 'rate', 50));
    readers = fork(path.join(here, 'fanout-readers.mjs'), [], { serialization: 'advanced' });
    let ready = 0;
    readers.on('message', (m) => {
      if (m.type === 'progress') ready = m.ready;
    });
    readers.send({ cmd: 'start', baseUrl: base, path: stream.slice('/v1/stream/'.length), sse, ws, messages, staggerMs: 2 });
    const deadline = Date.now() + 120_000;
    while (ready < sse + ws) {
      if (Date.now() > deadline) throw new Error(`only ${ready} of ${sse + ws} readers connected`);
      await sleep(100);
    }
    await sleep(1000);
    units = { count: messages * (sse + ws), name: 'delivery', plural: 'deliveries' };
    run = async () => {
      const start = performance.now();
      for (let seq = 0; seq < messages; seq++) {
        const wait = start + (seq * 1000) / rate - performance.now();
        if (wait > 0) await sleep(wait);
        await request(base, 'POST', stream, JSON.stringify({ seq, t: performance.timeOrigin + performance.now() }));
      }
    };
  } else if (mode === 'requests') {
    const kind = option(argv, 'kind', 'append');
    const count = Number(option(argv, 'count', 2000));
    if (kind === 'catchup') {
      // A binary stream of 4 MiB: each read from -1 is one catch-up response of all of it.
      const chunk = Buffer.alloc(1 << 20, 7);
      await request(base, 'PUT', `${stream}-bytes`, undefined, 'application/octet-stream');
      for (let i = 0; i < 4; i++) await request(base, 'POST', `${stream}-bytes`, chunk, 'application/octet-stream');
    }
    const one = {
      append: (i) => request(base, 'POST', stream, JSON.stringify({ i })),
      // An idempotent producer's appends, its sequence counting up from 0.
      producer: (i) =>
        request(base, 'POST', stream, JSON.stringify({ i }), 'application/json', {
          'producer-id': 'profile',
          'producer-epoch': '0',
          'producer-seq': String(i),
        }),
      head: () => request(base, 'HEAD', stream),
      404: () => request(base, 'GET', '/no-such-file'),
      catchup: () => request(base, 'GET', `${stream}-bytes?offset=-1`),
    }[kind];
    if (!one) throw new Error(`--kind ${kind}: expected append, producer, head, 404 or catchup`);
    for (let i = 0; i < 50; i++) await one(i);
    units = { count, name: 'request', plural: 'requests' };
    run = async () => {
      for (let i = 0; i < count; i++) await one(i);
    };
  } else {
    throw new Error(`mode ${mode}: expected fanout or requests`);
  }

  const inspector = await inspect(server.inspectorPort);
  await inspector.call('Profiler.enable');
  await inspector.call('Profiler.setSamplingInterval', { interval: 100 });
  await inspector.call('Profiler.start');
  const started = performance.now();
  await run();
  const seconds = (performance.now() - started) / 1000;
  const { result } = await inspector.call('Profiler.stop');
  inspector.close();

  // --save FILE keeps the raw profile (a .cpuprofile that Chrome DevTools opens).
  if (option(argv, 'save')) writeFileSync(option(argv, 'save'), JSON.stringify(result.profile));
  const rows = selfTimes(result.profile);
  const total = rows.reduce((sum, [, us]) => sum + us, 0);
  const idle = rows.find(([name]) => name === '(idle)')?.[1] ?? 0;
  console.log(`${mode}: ${units.count.toLocaleString('en-US')} ${units.plural} in ${seconds.toFixed(1)} s`);
  console.log(`isolate busy ${((total - idle) / 1e6).toFixed(2)} s: ${((total - idle) / units.count).toFixed(1)} µs per ${units.name}\n`);
  for (const [kind, us] of Object.entries(byKind(rows))) {
    if (kind !== 'idle') console.log(`${(us / units.count).toFixed(1).padStart(8)} µs  ${kind}`);
  }
  console.log('');
  for (const [name, us] of rows.slice(0, Number(option(argv, 'top', 30)))) {
    console.log(`${(us / units.count).toFixed(2).padStart(8)} µs  ${((100 * us) / total).toFixed(1).padStart(5)}%  ${name}`);
  }
} finally {
  readers?.kill();
  await server.stop();
}

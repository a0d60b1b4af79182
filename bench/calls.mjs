// How many JS calls the Worker's wasm makes per request: each wasm-bindgen import (a call
// from Rust into JS) counted, in a copy of a build whose imports are wrapped in counters. Not
// part of `npm run bench`; a count does not vary from run to run as a CPU time does on a
// shared machine, so it shows what a change to the glue saves.
//
//   node bench/calls.mjs [--build worker/build] [--kind append|producer|head] [--count 500] [--top 40]
//
// The copy answers `GET /__calls` (the counts since the last such request) at the edge before
// the Worker sees it; the edge and the objects share one isolate, so the counts are both's.
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer } from '../scripts/dev-server.mjs';
import { option, servedCopy } from './common.mjs';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const argv = process.argv.slice(2);
const build = path.resolve(option(argv, 'build', path.join(root, 'worker', 'build')));
const kind = option(argv, 'kind', 'append');
const count = Number(option(argv, 'count', 500));

/** A copy of `build` with counted imports, and a wrangler.toml that serves it. */
function countedCopy() {
  const dir = servedCopy(build, 'calls');
  const index = path.join(dir, 'build', 'index.js');
  let js = readFileSync(index, 'utf8');
  // Every instantiation (the first, and the one that restarts the module after a trap).
  const instance = /new WebAssembly\.Instance\((\w+),(\w+)\(\)\)/g;
  if (!instance.test(js)) throw new Error(`${index}: no wasm instantiation found`);
  const wrap =
    '(function(imports){const c=globalThis.__wbgCalls??={};for(const ns of Object.values(imports)){' +
    'for(const [k,f] of Object.entries(ns)){if(typeof f!=="function")continue;' +
    'const name=k.replace(/_[0-9a-f]{16}$/,"");c[name]??=0;ns[k]=function(...a){c[name]++;return f.apply(this,a)}}}return imports})';
  js = js.replace(instance, (_, module, imports) => `new WebAssembly.Instance(${module},${wrap}(${imports}()))`);
  const entry = /(\w+)\.prototype\.fetch=function\((\w)\)\{return /;
  if (!entry.test(js)) throw new Error(`${index}: no fetch entry point found`);
  js = js.replace(
    entry,
    (_, cls, req) =>
      `${cls}.prototype.fetch=function(${req}){if(new URL(${req}.url).pathname==="/__calls"){` +
      'const out=JSON.stringify(globalThis.__wbgCalls??{});for(const k in globalThis.__wbgCalls)globalThis.__wbgCalls[k]=0;' +
      `return new Response(out)}return `,
  );
  writeFileSync(index, js);
  return dir;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
function request(url, method, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, agent, headers: { 'content-type': 'application/json', ...headers } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const dir = countedCopy();
const server = await startServer({ config: path.join(dir, 'wrangler.toml') });
try {
  const base = await server.workerUrl();
  const stream = `${base}/v1/stream/calls-${Date.now().toString(36)}`;
  await request(stream, 'PUT');
  const one = {
    append: (i) => request(stream, 'POST', JSON.stringify({ i })),
    producer: (i) =>
      request(stream, 'POST', JSON.stringify({ i }), { 'producer-id': 'calls', 'producer-epoch': '0', 'producer-seq': String(i) }),
    head: () => request(stream, 'HEAD'),
  }[kind];
  if (!one) throw new Error(`--kind ${kind}: expected append, producer or head`);
  for (let i = 0; i < 50; i++) await one(i);
  const taken = async () => JSON.parse((await request(`${base}/__calls`, 'GET')).text);
  await taken();
  for (let i = 50; i < 50 + count; i++) {
    const { status } = await one(i);
    if (status >= 300) throw new Error(`${kind} ${i}: ${status}`);
  }
  const calls = Object.entries(await taken())
    .filter(([, n]) => n > 0)
    .sort((a, b) => b[1] - a[1]);
  const total = calls.reduce((sum, [, n]) => sum + n, 0);
  console.log(`${kind}: ${(total / count).toFixed(1)} JS calls from wasm per request (${count} requests)\n`);
  for (const [name, n] of calls.slice(0, Number(option(argv, 'top', 40)))) {
    console.log(`${(n / count).toFixed(2).padStart(8)}  ${name}`);
  }
} finally {
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
}

// A Chrome DevTools protocol session on the Worker's isolate, through wrangler dev's inspector
// (`startServer({ inspector: true }).inspectorPort`): CPU profiles for bench/profile.mjs, heap
// counts and the wasm memory size for the memory tests.
import { WebSocket } from 'undici';

export async function inspect(port) {
  if (!port) throw new Error('no inspector: start the server with startServer({ inspector: true })');
  // wrangler's inspector proxy only admits local origins.
  const socket = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { Origin: 'http://localhost' } });
  await new Promise((resolve, reject) => {
    socket.addEventListener('open', resolve, { once: true });
    socket.addEventListener('error', () => reject(new Error('the inspector refused the connection')), { once: true });
  });
  let id = 0;
  const pending = new Map();
  const listeners = new Map();
  socket.addEventListener('message', (e) => {
    const m = JSON.parse(e.data);
    if (m.method) listeners.get(m.method)?.(m.params);
    pending.get(m.id)?.(m);
    pending.delete(m.id);
  });
  const call = (method, params = {}) =>
    new Promise((resolve) => {
      pending.set(++id, resolve);
      socket.send(JSON.stringify({ id, method, params }));
    });
  return {
    call,
    /** Sends without waiting for an answer (wrangler's proxy drops some, such as a snapshot's). */
    send: (method, params = {}) => socket.send(JSON.stringify({ id: ++id, method, params })),
    /** Calls `f(params)` for each event `method` (one listener per method). */
    on: (method, f) => listeners.set(method, f),
    close: () => socket.close(),
  };
}

/**
 * Takes a heap snapshot, which collects garbage first (workerd does not answer
 * HeapProfiler.collectGarbage): { snapshot, nodes, strings, usedBytes }, the parsed snapshot and
 * the heap's used size after it.
 */
async function takeSnapshot(session) {
  const chunks = [];
  session.on('HeapProfiler.addHeapSnapshotChunk', (p) => chunks.push(p.chunk));
  await session.call('HeapProfiler.enable');
  session.send('HeapProfiler.takeHeapSnapshot', { reportProgress: false });
  // The isolate answers in order: this comes back once the snapshot has been sent.
  const { result } = await session.call('Runtime.getHeapUsage');
  return { ...JSON.parse(chunks.join('')), usedBytes: result.usedSize };
}

/** What a heap snapshot leaves: { closures, contexts, objects, usedBytes }. */
export async function heapCounts(session) {
  const { snapshot, nodes, strings, usedBytes } = await takeSnapshot(session);
  const fields = snapshot.meta.node_fields;
  const types = snapshot.meta.node_types[0];
  const [type, name] = [fields.indexOf('type'), fields.indexOf('name')];
  const counts = { closures: 0, contexts: 0, objects: 0 };
  for (let i = 0; i < nodes.length; i += fields.length) {
    const t = types[nodes[i + type]];
    if (t === 'closure') counts.closures++;
    else if (t === 'object' && strings[nodes[i + name]] === 'system / Context') counts.contexts++;
    else if (t === 'object') counts.objects++;
  }
  return { ...counts, usedBytes };
}

/**
 * The size of the isolate's wasm memory, in bytes, from a heap snapshot: the largest
 * ArrayBuffer backing store, which is the wasm instance's linear memory whenever it is larger
 * than any buffer a test holds. Wasm memory never shrinks, so this is its high-water mark.
 */
export async function wasmMemoryBytes(session) {
  const { snapshot, nodes, strings } = await takeSnapshot(session);
  const fields = snapshot.meta.node_fields;
  const [name, size] = [fields.indexOf('name'), fields.indexOf('self_size')];
  let largest = 0;
  for (let i = 0; i < nodes.length; i += fields.length) {
    if (strings[nodes[i + name]] === 'system / JSArrayBufferData') largest = Math.max(largest, nodes[i + size]);
  }
  return largest;
}

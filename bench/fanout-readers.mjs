// A share of the fan-out benchmark's live readers, in a process of its own so that parsing
// 1,000+ streams does not stall the writer's clock. Started by bench/run.mjs with fork().
//
// Parent → child: { cmd: 'start', baseUrl, path, sse, ws, messages, staggerMs }
//                 { cmd: 'finish' }  (report now, complete or not)
// Child → parent: { type: 'progress', ready, complete, connected }
//                 { type: 'result', sse: {...}, ws: {...} }
//
// Every message the writer appends is a JSON object {"seq": n, "t": <send time, ms>}. A reader
// checks that it sees seq 0, 1, 2, … exactly once and in order, and records now − t for each.
import http from 'node:http';
import { WebSocket } from 'undici';
import { receiptSender } from './common.mjs';

const now = () => performance.timeOrigin + performance.now();
const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });

let config;
let stopping = false;
const readers = [];

class Reader {
  constructor(kind, messages) {
    this.kind = kind;
    this.messages = messages;
    this.expected = 0;
    this.duplicates = 0;
    this.gaps = 0;
    this.latencies = new Float64Array(messages);
    this.count = 0;
    this.offset = '-1';
    this.cursor = undefined;
    this.ready = false;
    this.done = false;
    this.reconnects = 0;
    this.errors = 0;
    this.connected = false;
  }

  item(value) {
    const seq = value?.seq;
    if (!Number.isInteger(seq)) {
      this.gaps++;
      return;
    }
    if (seq < this.expected) {
      this.duplicates++;
      return;
    }
    if (seq > this.expected) this.gaps += seq - this.expected;
    if (this.count < this.latencies.length) this.latencies[this.count++] = now() - value.t;
    this.expected = seq + 1;
    if (this.expected >= this.messages) this.finish();
  }

  control(control) {
    if (typeof control.streamNextOffset === 'string') this.offset = control.streamNextOffset;
    if (control.streamCursor !== undefined) this.cursor = String(control.streamCursor);
    if (control.upToDate && !this.ready) {
      this.ready = true;
      report();
    }
    if (control.streamClosed) this.finish();
  }

  finish() {
    if (this.done) return;
    this.done = true;
    this.close?.();
    report();
  }

  query(live) {
    const cursor = this.cursor ? `&cursor=${encodeURIComponent(this.cursor)}` : '';
    return `/v1/stream/${config.path}?offset=${encodeURIComponent(this.offset)}&live=${live}${cursor}`;
  }

  /** Reconnects from the last control's offset after the server ends a response or socket. */
  again() {
    this.connected = false;
    if (this.done || stopping) return;
    this.reconnects++;
    setTimeout(() => this.connect(), 50);
  }

  connect() {
    if (this.kind === 'sse') this.connectSse();
    else this.connectWs();
  }

  connectSse() {
    const req = http.get(`${config.baseUrl}${this.query('sse')}`, { agent }, (res) => {
      if (res.statusCode !== 200) {
        this.errors++;
        res.resume();
        res.on('end', () => this.again());
        return;
      }
      this.connected = true;
      res.setEncoding('utf8');
      let buffer = '';
      res.on('data', (chunk) => {
        buffer += chunk;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          this.event(block);
        }
      });
      res.on('end', () => this.again());
      res.on('error', () => {});
    });
    req.on('error', () => {
      this.errors++;
      this.again();
    });
    this.close = () => req.destroy();
  }

  event(block) {
    let type = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith('event:')) type = line.slice(6).trim();
      else if (line.startsWith('data:')) data.push(line.slice(line[5] === ' ' ? 6 : 5));
    }
    if (data.length === 0) return;
    let json;
    try {
      json = JSON.parse(data.join('\n'));
    } catch {
      this.errors++;
      return;
    }
    if (type === 'data') {
      for (const value of Array.isArray(json) ? json : [json]) this.item(value);
    } else if (type === 'control') {
      this.control(json);
    }
  }

  connectWs() {
    // As the edgestream client does: a JSON append arrives as one message, its data and control,
    // and the reader sends a receipt every 64 KiB it moves (edgestream.v3).
    const ws = new WebSocket(`${config.baseUrl.replace(/^http/, 'ws')}${this.query('ws')}`, ['edgestream.v3', 'edgestream.v2']);
    const receipt = receiptSender();
    ws.binaryType = 'arraybuffer';
    let opened = false;
    ws.addEventListener('open', () => {
      opened = true;
      this.connected = true;
    });
    ws.addEventListener('message', (e) => {
      if (typeof e.data !== 'string') {
        this.errors++;
        return;
      }
      const json = JSON.parse(e.data);
      if (json.type === 'data') for (const value of json.items) this.item(value);
      if (json.type === 'control' || (json.type === 'data' && 'streamNextOffset' in json)) {
        this.control(json);
        receipt(ws, this.offset);
      }
    });
    ws.addEventListener('close', () => {
      if (!opened) this.errors++;
      this.again();
    });
    ws.addEventListener('error', () => {});
    this.close = () => ws.close();
  }
}

let reportTimer;
function report() {
  // Coalesce progress reports: one per 100 ms at most.
  if (reportTimer) return;
  reportTimer = setTimeout(() => {
    reportTimer = undefined;
    process.send?.({
      type: 'progress',
      ready: readers.filter((r) => r.ready).length,
      complete: readers.filter((r) => r.done).length,
      connected: readers.filter((r) => r.connected).length,
    });
  }, 100);
}

function summary(kind) {
  const group = readers.filter((r) => r.kind === kind);
  const total = group.reduce((n, r) => n + r.count, 0);
  const latencies = new Float64Array(total);
  let at = 0;
  for (const r of group) {
    latencies.set(r.latencies.subarray(0, r.count), at);
    at += r.count;
  }
  return {
    readers: group.length,
    complete: group.filter((r) => r.done && r.expected >= r.messages).length,
    delivered: total,
    duplicates: group.reduce((n, r) => n + r.duplicates, 0),
    gaps: group.reduce((n, r) => n + r.gaps, 0),
    reconnects: group.reduce((n, r) => n + r.reconnects, 0),
    errors: group.reduce((n, r) => n + r.errors, 0),
    latencies,
  };
}

process.on('message', async (msg) => {
  if (msg.cmd === 'start') {
    config = msg;
    for (let i = 0; i < msg.sse; i++) readers.push(new Reader('sse', msg.messages));
    for (let i = 0; i < msg.ws; i++) readers.push(new Reader('ws', msg.messages));
    for (const reader of readers) {
      reader.connect();
      if (msg.staggerMs) await new Promise((r) => setTimeout(r, msg.staggerMs));
    }
    report();
  } else if (msg.cmd === 'finish') {
    stopping = true;
    const result = { type: 'result', sse: summary('sse'), ws: summary('ws') };
    for (const reader of readers) reader.close?.();
    process.send?.(result, () => process.exit(0));
  }
});
process.on('disconnect', () => process.exit(0));

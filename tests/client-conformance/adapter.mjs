#!/usr/bin/env node
// The conformance adapter: drives the `edgestream` package (js/) from JSON-lines commands on
// stdin, one result line on stdout per command, in order. See README.md beside this file.
import { createInterface } from 'node:readline';
import {
  DurableStream,
  DurableStreamError,
  IdempotentProducer,
  StreamClosedError,
  checkProducerOptions,
  checkRetryOptions,
  init,
  stream,
} from '../../js/src/node.js';

const VERSION = '0.1.0';
let serverUrl = '';
/** Content types seen per path, so appends and reads know the stream's type. */
const contentTypes = new Map();
/** Producers that live across commands, keyed by path, id and epoch. */
const producers = new Map();
/** Dynamic headers and params: { type, counter, token, last }. */
const dynamicHeaders = new Map();
const dynamicParams = new Map();

const urlOf = (path) => `${serverUrl}${path}`;
const b64 = (s) => new Uint8Array(Buffer.from(s, 'base64'));
const text = new TextDecoder();

function nextValue(d) {
  if (d.type === 'counter') d.last = String(++d.counter);
  else if (d.type === 'timestamp') d.last = String(Date.now());
  else d.last = d.token ?? '';
  return d.last;
}

/** Header and param maps whose values are functions, evaluated by the client per request. */
function dynamicMaps(extraHeaders) {
  const headers = {};
  for (const [name, d] of dynamicHeaders) headers[name] = () => nextValue(d);
  Object.assign(headers, extraHeaders ?? {});
  const params = {};
  for (const [name, d] of dynamicParams) params[name] = () => nextValue(d);
  return { headers, params };
}

function sentValues(map) {
  if (map.size === 0) return undefined;
  const out = {};
  for (const [name, d] of map) if (d.last !== undefined) out[name] = d.last;
  return out;
}

const CODE_FOR = {
  NOT_FOUND: 'NOT_FOUND',
  GONE: 'NOT_FOUND',
  CONFLICT: 'CONFLICT',
  SEQUENCE_CONFLICT: 'SEQUENCE_CONFLICT',
  SEQUENCE_GAP: 'SEQUENCE_CONFLICT',
  STALE_EPOCH: 'CONFLICT',
  STREAM_CLOSED: 'STREAM_CLOSED',
  INVALID_OFFSET: 'INVALID_OFFSET',
  PARSE_ERROR: 'PARSE_ERROR',
  NETWORK_ERROR: 'NETWORK_ERROR',
  INVALID_ARGUMENT: 'INVALID_ARGUMENT',
  NOT_SUPPORTED: 'NOT_SUPPORTED',
};

function errorResult(commandType, err) {
  if (err instanceof DurableStreamError) {
    let errorCode = CODE_FOR[err.code] ?? (err.status ? 'UNEXPECTED_STATUS' : 'INTERNAL_ERROR');
    if (err.code === 'BAD_REQUEST') errorCode = commandType === 'read' ? 'INVALID_OFFSET' : 'UNEXPECTED_STATUS';
    const result = { type: 'error', success: false, commandType, errorCode, message: err.message };
    if (err.status !== undefined) result.status = err.status;
    return result;
  }
  return {
    type: 'error',
    success: false,
    commandType,
    errorCode: 'INTERNAL_ERROR',
    message: err instanceof Error ? `${err.name}: ${err.message}` : String(err),
  };
}

const isJson = (path) => /^\s*application\/json/i.test(contentTypes.get(path) ?? '');

async function typeOf(path) {
  if (!contentTypes.has(path)) {
    try {
      const head = await DurableStream.head({ url: urlOf(path) });
      if (head.contentType) contentTypes.set(path, head.contentType);
    } catch {}
  }
  return contentTypes.get(path);
}

async function read(cmd) {
  const live = cmd.live === true ? 'auto' : cmd.live === 'long-poll' || cmd.live === 'sse' ? cmd.live : false;
  await typeOf(cmd.path);
  const { headers, params } = dynamicMaps(cmd.headers);
  const handle = stream({ url: urlOf(cmd.path), offset: cmd.offset, live, headers, params });
  const maxChunks = cmd.maxChunks ?? 100;
  const chunks = [];
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    handle.cancel();
  }, cmd.timeoutMs ?? 5000);
  try {
    for await (const batch of handle) {
      const hasData = batch.items ? batch.items.length > 0 : batch.bytes.length > 0;
      if (hasData) {
        chunks.push({
          data: batch.items ? JSON.stringify(batch.items) : text.decode(batch.bytes),
          offset: batch.offset,
        });
      }
      if (cmd.waitForUpToDate && batch.upToDate) break;
      if (chunks.length >= maxChunks) break;
    }
  } catch (e) {
    if (!timedOut) return errorResult('read', e);
  } finally {
    clearTimeout(timer);
    handle.cancel();
  }
  return {
    type: 'read',
    success: true,
    status: handle.status || 200,
    chunks,
    offset: handle.offset,
    upToDate: handle.upToDate,
    streamClosed: handle.closed,
    cursor: handle.cursor,
    headersSent: sentValues(dynamicHeaders),
    paramsSent: sentValues(dynamicParams),
  };
}

function producerFor(path, producerId, epoch, autoClaim, options = {}) {
  const key = `${path}|${producerId}|${epoch}`;
  let p = producers.get(key);
  if (!p) {
    const ds = new DurableStream({ url: urlOf(path), contentType: contentTypes.get(path) });
    p = new IdempotentProducer(ds, producerId, { epoch, autoClaim, lingerMs: 0, maxInFlight: 1, ...options });
    producers.set(key, p);
  }
  return p;
}

async function handle(cmd) {
  switch (cmd.type) {
    case 'init':
      serverUrl = cmd.serverUrl;
      contentTypes.clear();
      producers.clear();
      dynamicHeaders.clear();
      dynamicParams.clear();
      await init();
      return {
        type: 'init',
        success: true,
        clientName: 'edgestream',
        clientVersion: VERSION,
        features: {
          batching: true,
          sse: true,
          longPoll: true,
          auto: true,
          streaming: true,
          dynamicHeaders: true,
          retryOptions: true,
          batchItems: true,
          strictZeroValidation: true,
        },
      };

    case 'create': {
      const contentType = cmd.contentType ?? 'application/octet-stream';
      const ds = new DurableStream({ url: urlOf(cmd.path), contentType, headers: cmd.headers });
      const res = await ds.create({
        contentType,
        ttlSeconds: cmd.ttlSeconds,
        expiresAt: cmd.expiresAt,
        closed: cmd.closed,
        body: cmd.data,
      });
      contentTypes.set(cmd.path, contentType);
      return { type: 'create', success: true, status: res.status, offset: res.offset };
    }

    case 'connect': {
      const ds = await DurableStream.connect({ url: urlOf(cmd.path), headers: cmd.headers });
      if (ds.contentType) contentTypes.set(cmd.path, ds.contentType);
      const head = await ds.head();
      return { type: 'connect', success: true, status: 200, offset: head.offset };
    }

    case 'append': {
      const contentType = (await typeOf(cmd.path)) ?? 'application/octet-stream';
      const { headers, params } = dynamicMaps(cmd.headers);
      const ds = new DurableStream({ url: urlOf(cmd.path), contentType, headers, params });
      const body = cmd.binary ? b64(cmd.data) : cmd.data;
      const res = await ds.append(body, { seq: cmd.seq === undefined ? undefined : String(cmd.seq) });
      return {
        type: 'append',
        success: true,
        status: 200,
        offset: res.offset,
        headersSent: sentValues(dynamicHeaders),
        paramsSent: sentValues(dynamicParams),
      };
    }

    case 'read':
      return read(cmd);

    case 'head': {
      const res = await DurableStream.head({ url: urlOf(cmd.path), headers: cmd.headers });
      if (res.contentType) contentTypes.set(cmd.path, res.contentType);
      return {
        type: 'head',
        success: true,
        status: 200,
        offset: res.offset,
        contentType: res.contentType,
        ttlSeconds: res.ttlSeconds,
        expiresAt: res.expiresAt,
        streamClosed: res.closed,
      };
    }

    case 'delete': {
      await DurableStream.delete({ url: urlOf(cmd.path), headers: cmd.headers });
      contentTypes.delete(cmd.path);
      return { type: 'delete', success: true, status: 200 };
    }

    case 'close': {
      const contentType = cmd.contentType ?? (await typeOf(cmd.path));
      const ds = new DurableStream({ url: urlOf(cmd.path), contentType });
      const res = await ds.close({ body: cmd.data, contentType: cmd.contentType });
      return { type: 'close', success: true, status: 200, finalOffset: res.finalOffset };
    }

    case 'idempotent-append': {
      await typeOf(cmd.path);
      const p = producerFor(cmd.path, cmd.producerId, cmd.epoch, cmd.autoClaim);
      p.append(cmd.data);
      await p.flush();
      return { type: 'idempotent-append', success: true, status: 200, offset: p.offset };
    }

    case 'idempotent-append-batch': {
      await typeOf(cmd.path);
      const maxInFlight = cmd.maxInFlight ?? 1;
      const ds = new DurableStream({ url: urlOf(cmd.path), contentType: contentTypes.get(cmd.path) });
      // With more than one batch in flight, one item per batch exercises pipelining.
      const p = new IdempotentProducer(ds, cmd.producerId, {
        epoch: cmd.epoch,
        autoClaim: cmd.autoClaim,
        maxInFlight,
        lingerMs: maxInFlight > 1 ? 0 : 1000,
        maxBatchBytes: maxInFlight > 1 ? 1 : 1024 * 1024,
      });
      for (const item of cmd.items) p.append(item);
      try {
        await p.flush();
      } finally {
        await p.detach().catch(() => {});
      }
      return { type: 'idempotent-append-batch', success: true, status: 200 };
    }

    case 'idempotent-close': {
      await typeOf(cmd.path);
      const p = producerFor(cmd.path, cmd.producerId, cmd.epoch, cmd.autoClaim);
      const res = await p.close(cmd.data);
      return { type: 'idempotent-close', success: true, status: 200, finalOffset: res.finalOffset };
    }

    case 'idempotent-detach': {
      const key = `${cmd.path}|${cmd.producerId}|${cmd.epoch}`;
      const p = producers.get(key) ?? producerFor(cmd.path, cmd.producerId, cmd.epoch, false);
      await p.detach();
      producers.delete(key);
      return { type: 'idempotent-detach', success: true, status: 200 };
    }

    case 'set-dynamic-header':
      dynamicHeaders.set(cmd.name, { type: cmd.valueType, counter: 0, token: cmd.initialValue });
      return { type: 'set-dynamic-header', success: true };

    case 'set-dynamic-param':
      dynamicParams.set(cmd.name, { type: cmd.valueType, counter: 0 });
      return { type: 'set-dynamic-param', success: true };

    case 'clear-dynamic':
      dynamicHeaders.clear();
      dynamicParams.clear();
      return { type: 'clear-dynamic', success: true };

    case 'validate': {
      const { target, ...options } = cmd.target;
      if (target === 'retry-options') await checkRetryOptions(options);
      else if (target === 'idempotent-producer') {
        const { producerId, ...rest } = options;
        checkProducerOptions(producerId ?? 'test-producer', rest);
      } else {
        return { type: 'error', success: false, commandType: 'validate', errorCode: 'NOT_SUPPORTED', message: `unknown target ${target}` };
      }
      return { type: 'validate', success: true };
    }

    case 'shutdown':
      return { type: 'shutdown', success: true };

    default:
      return {
        type: 'error',
        success: false,
        commandType: cmd.type,
        errorCode: 'NOT_SUPPORTED',
        message: `unknown command ${cmd.type}`,
      };
  }
}

const out = (result) =>
  process.stdout.write(JSON.stringify(result).replace(/[\u2028\u2029]/g, (c) => (c === '\u2028' ? '\\u2028' : '\\u2029')) + '\n');

const rl = createInterface({ input: process.stdin, terminal: false });
for await (const line of rl) {
  if (!line.trim()) continue;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    out({ type: 'error', success: false, commandType: 'init', errorCode: 'PARSE_ERROR', message: String(e) });
    continue;
  }
  try {
    out(await handle(cmd));
  } catch (e) {
    out(errorResult(cmd.type, e instanceof StreamClosedError || e instanceof DurableStreamError ? e : e));
  }
  if (cmd.type === 'shutdown') break;
}
process.exit(0);

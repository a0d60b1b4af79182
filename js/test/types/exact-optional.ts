// Compiled by ../types.test.mjs with exactOptionalPropertyTypes: an option the runtime takes as
// `undefined` (the same as leaving it out) is typed `?: T | undefined`, so values that may be
// undefined pass through.
import {
  DurableStream,
  DurableStreamError as DurableStreamErrorClass,
  IdempotentProducer,
  LeaseHeldError,
  SequenceGapError,
  StaleEpochError,
  StreamClosedError,
  change,
  checkProducerOptions,
  stream,
  table,
  type DurableStreamError,
} from 'edgestream';

declare const url: string;
declare const saved: string | undefined;
declare const maybeType: string | undefined;
declare const maybeSignal: AbortSignal | undefined;
declare const maybeHandler: ((e: DurableStreamError) => void) | undefined;
declare const maybeNumber: number | undefined;
declare const maybeFlag: boolean | undefined;

stream({
  url,
  offset: saved,
  live: undefined,
  json: maybeFlag,
  headers: undefined,
  params: undefined,
  retry: { maxRetries: maybeNumber, initialDelayMs: undefined, maxDelayMs: undefined, multiplier: undefined },
  signal: maybeSignal,
  pauseWhenHidden: maybeFlag,
});
stream({ url, retry: undefined });

const ds = new DurableStream({ url, contentType: maybeType, headers: undefined, params: undefined, retry: undefined, signal: maybeSignal });
void DurableStream.create({ url, contentType: maybeType, ttlSeconds: maybeNumber, expiresAt: undefined, closed: maybeFlag, channel: undefined, body: undefined });
void ds.create({ contentType: undefined, ttlSeconds: undefined });
void ds.append('x', { seq: saved, contentType: maybeType });
void ds.close({ body: undefined, contentType: maybeType });
ds.stream({ offset: saved, live: undefined, signal: maybeSignal });

const options = {
  epoch: maybeNumber,
  autoClaim: maybeFlag,
  lingerMs: undefined,
  maxBatchBytes: undefined,
  maxBatchItems: undefined,
  maxInFlight: undefined,
  requestTimeoutMs: undefined,
  json: maybeFlag,
  onError: maybeHandler,
  signal: maybeSignal,
  lease: { ttlSeconds: 10, wait: maybeFlag },
};
new IdempotentProducer(ds, 'id', options);
new IdempotentProducer(url, 'id', { onError: undefined, lease: undefined });
checkProducerOptions('id', options);

table({ url, offset: saved, from: undefined, store: undefined, saveEveryMs: maybeNumber, onInvalid: undefined, live: undefined });

// @ts-expect-error url is required, and not undefined
stream({ url: undefined });

// Change headers the runtime leaves out of the message's JSON when undefined.
declare const maybeTxid: string | undefined;
change.insert('todo', 't1', { title: 'milk' }, { txid: maybeTxid, timestamp: undefined });
change.update('todo', 't1', { title: 'milk' }, { txid: maybeTxid });
change.upsert('todo', 't1', { title: 'milk' }, { timestamp: saved });
change.delete('todo', 't1', { txid: maybeTxid });

// An error made in a test double, with details that may be undefined (copied as they are).
new DurableStreamErrorClass('m', 'NETWORK_ERROR', maybeNumber, { closeCode: maybeNumber, cause: undefined });
new StreamClosedError(undefined, undefined, { finalOffset: saved });
new StaleEpochError('fenced', 403, { currentEpoch: maybeNumber });
new SequenceGapError('gap', 409, { expectedSeq: maybeNumber, receivedSeq: maybeNumber });
new LeaseHeldError('held', 423, { leaseExpiresAt: saved, retryAfterMs: maybeNumber });

// Compiled by ../types.test.mjs: the error classes' constructors as js/src/core.js defines them.
import {
  DurableStreamError,
  LeaseHeldError,
  SequenceGapError,
  StaleEpochError,
  StreamClosedError,
  type ErrorCode,
} from 'edgestream';

declare const reason: unknown;
const notFound = new DurableStreamError('m', 'NOT_FOUND');
const code: ErrorCode = notFound.code;
const withStatus = new DurableStreamError('gone', 'GONE', 410);
const aborted = new DurableStreamError('stopped', 'ABORTED', undefined, { cause: reason });
const network = new DurableStreamError('lost', 'NETWORK_ERROR', undefined, { closeCode: 1006 });
// @ts-expect-error the second argument is the code: `{ cause }` would become the code
new DurableStreamError('m', { cause: reason });
// @ts-expect-error a code the client does not raise
new DurableStreamError('m', 'TEAPOT');
// @ts-expect-error the code is required
new DurableStreamError('m');

const closed = new StreamClosedError();
const closedAt = new StreamClosedError('closed', 409, { finalOffset: '0_10' });
const stale = new StaleEpochError('fenced', 403, { currentEpoch: 3 });
const gap = new SequenceGapError('gap', 409, { expectedSeq: 1, receivedSeq: 4 });
const lease = new LeaseHeldError('held', 423, { leaseExpiresAt: '2030-01-01T00:00:00Z', retryAfterMs: 500 });
// @ts-expect-error a subclass fixes its code: the second argument is the status
new StaleEpochError('m', 'STALE_EPOCH');
// @ts-expect-error currentEpoch is a number
new StaleEpochError('m', 403, { currentEpoch: '3' });

const closedCode: 'STREAM_CLOSED' = closed.code;
const base: DurableStreamError = lease;
export const all = [notFound, code, withStatus, aborted, network, closedAt, stale, gap, closedCode, base];

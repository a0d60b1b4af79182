// The error classes' constructors, as index.d.ts declares them (types/errors.ts compiles the
// same calls): DurableStreamError(message, code, status?, details?), and each subclass
// (message?, status?, details?) with its code fixed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DurableStreamError,
  LeaseHeldError,
  SequenceGapError,
  StaleEpochError,
  StreamClosedError,
} from '../src/node.js';

test('DurableStreamError takes a code, a status and details (cause included)', () => {
  const plain = new DurableStreamError('m', 'NOT_FOUND');
  assert.equal(plain.message, 'm');
  assert.equal(plain.code, 'NOT_FOUND');
  assert.equal('status' in plain, false);
  const reason = new Error('why');
  const aborted = new DurableStreamError('stopped', 'ABORTED', undefined, { cause: reason, closeCode: 1006 });
  assert.equal(aborted.cause, reason);
  assert.equal(aborted.closeCode, 1006);
  assert.equal('status' in aborted, false);
  assert.equal(new DurableStreamError('gone', 'GONE', 410).status, 410);
});

test('each subclass fixes its code and takes (message?, status?, details?)', () => {
  const closed = new StreamClosedError();
  assert.equal(closed.message, 'stream is closed');
  assert.equal(closed.code, 'STREAM_CLOSED');
  assert.equal(new StreamClosedError('c', 409, { finalOffset: '0_10' }).finalOffset, '0_10');
  const stale = new StaleEpochError('fenced', 403, { currentEpoch: 3 });
  assert.deepEqual([stale.code, stale.status, stale.currentEpoch], ['STALE_EPOCH', 403, 3]);
  const gap = new SequenceGapError('gap', 409, { expectedSeq: 1, receivedSeq: 4 });
  assert.deepEqual([gap.code, gap.expectedSeq, gap.receivedSeq], ['SEQUENCE_GAP', 1, 4]);
  const lease = new LeaseHeldError('held', 423, { leaseExpiresAt: 'T', retryAfterMs: 500 });
  assert.deepEqual([lease.code, lease.leaseExpiresAt, lease.retryAfterMs], ['LEASE_HELD', 'T', 500]);
  for (const e of [closed, stale, gap, lease]) assert.ok(e instanceof DurableStreamError);
});

// The release build (scripts/client.mjs) replaces by a trap the Display/Debug code that only
// core's panic messages reach: the panic handler traps without formatting them. Checked on a
// small module made here: the function imports shift the indices the names are given by, the
// other functions are left as they were, and a module that could format text (it has a
// `fmt::Write` implementation) is refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stubPanicFormatting } from '../../scripts/client.mjs';

const DISPLAY = '<u32 as core[0123abcd]::fmt::Display>::fmt';

const uleb = (n) => {
  const out = [];
  do {
    const byte = n & 0x7f;
    n >>>= 7;
    out.push(n ? byte | 0x80 : byte);
  } while (n);
  return out;
};
const str = (s) => [...uleb(Buffer.byteLength(s)), ...Buffer.from(s)];
const section = (id, bytes) => [id, ...uleb(bytes.length), ...bytes];

/** A module importing `m.f` (function 0) and exporting `a` (function 1: returns 7) and `b`
 * (function 2: returns its first argument), functions 1 and 2 named `first` and `second` (no
 * name section without them). */
function module(first, second) {
  const i32 = 0x7f;
  return Buffer.from([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    ...section(1, [1, 0x60, 2, i32, i32, 1, i32]),
    ...section(2, [1, ...str('m'), ...str('f'), 0x00, 0]),
    ...section(3, [2, 0, 0]),
    ...section(7, [2, ...str('a'), 0x00, 1, ...str('b'), 0x00, 2]),
    ...section(10, [2, 4, 0, 0x41, 7, 0x0b, 4, 0, 0x20, 0, 0x0b]),
    ...(first === undefined ? [] : section(0, [...str('name'), ...section(1, [2, 1, ...str(first), 2, ...str(second)])])),
  ]);
}

async function exports(wasm) {
  const { instance } = await WebAssembly.instantiate(wasm, { m: { f: () => 0 } });
  return instance.exports;
}

test('the Display/Debug functions trap and the others are left as they were', async () => {
  const before = await exports(module(DISPLAY, 'edgestream_client::keep'));
  assert.equal(before.a(1, 2), 7);
  const after = await exports(stubPanicFormatting(module(DISPLAY, 'edgestream_client::keep')));
  assert.throws(() => after.a(1, 2), WebAssembly.RuntimeError);
  assert.equal(after.b(5, 0), 5);
  // The function index counts the imported function: the name of function 2 is the one read.
  const second = await exports(stubPanicFormatting(module('edgestream_client::keep', DISPLAY)));
  assert.equal(second.a(1, 2), 7);
  assert.throws(() => second.b(5, 0), WebAssembly.RuntimeError);
});

test('a module that can format text is refused', () => {
  assert.throws(
    () => stubPanicFormatting(module(DISPLAY, '<alloc[0123abcd]::string::String as core[0123abcd]::fmt::Write>::write_str')),
    /formats text/,
  );
});

test('a module without function names is refused', async () => {
  assert.equal((await exports(module())).a(1, 2), 7);
  assert.throws(() => stubPanicFormatting(module()), /no function names/);
});

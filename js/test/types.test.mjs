// The hand-written types (js/index.d.ts) against what the runtime accepts: fixtures under
// types/ are compiled with tsc, in a DOM project and in a Node-only one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const tsc = path.join(here, '..', '..', 'node_modules', 'typescript', 'bin', 'tsc');

function compile(project) {
  return new Promise((resolve) => {
    execFile(process.execPath, [tsc, '-p', path.join(here, 'types', project)], (error, stdout, stderr) => {
      resolve({ code: error ? (error.code ?? 1) : 0, output: `${stdout}${stderr}` });
    });
  });
}

test('header and param maps, and init() inputs, type-check as the runtime takes them (DOM project)', async () => {
  const { code, output } = await compile('tsconfig.dom.json');
  assert.equal(code, 0, output);
});

test('the types compile in a Node-only project (no DOM lib, skipLibCheck off)', async () => {
  const { code, output } = await compile('tsconfig.node.json');
  assert.equal(code, 0, output);
});

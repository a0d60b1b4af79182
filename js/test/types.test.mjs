// The hand-written types (js/index.d.ts) against what the runtime accepts: fixtures under
// types/ are compiled with tsc, in a DOM project and in a Node-only one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const tsc = path.join(here, '..', '..', 'node_modules', 'typescript', 'bin', 'tsc');

function compile(project) {
  return new Promise((resolve) => {
    execFile(process.execPath, [tsc, '-p', path.resolve(here, 'types', project)], (error, stdout, stderr) => {
      resolve({ code: error ? (error.code ?? 1) : 0, output: `${stdout}${stderr}` });
    });
  });
}

test('header and param maps, and init() inputs, type-check as the runtime takes them (DOM project)', async () => {
  const { code, output } = await compile('tsconfig.dom.json');
  assert.equal(code, 0, output);
});

test('options the runtime takes as undefined type-check under exactOptionalPropertyTypes', async () => {
  const { code, output } = await compile('tsconfig.exact.json');
  assert.equal(code, 0, output);
});

test('the types compile in a Node-only project (no DOM lib, skipLibCheck off)', async () => {
  const { code, output } = await compile('tsconfig.node.json');
  assert.equal(code, 0, output);
});

/**
 * The README's examples, as a reader would paste them into a strict TypeScript project: every
 * ```js and ```ts block, and the module script of the ```html one (its import of the package's
 * file is the package).
 */
async function readmeExamples() {
  const text = await readFile(path.join(here, '..', 'README.md'), 'utf8');
  const examples = [];
  for (const [, lang, body] of text.matchAll(/^```(\w+)\n([\s\S]*?)^```$/gm)) {
    if (lang === 'js' || lang === 'ts') examples.push(body);
    if (lang === 'html') {
      for (const [, script] of body.matchAll(/<script type="module">([\s\S]*?)<\/script>/g)) {
        examples.push(script.replace(/from '[^']*\/edgestream\/src\/browser\.js'/g, "from 'edgestream'"));
      }
    }
  }
  return examples;
}

/**
 * Compiles the README's examples as a consumer's strict project with the given module settings,
 * with the package installed (a link in node_modules: its `exports` and `types` are what resolve).
 */
async function compileExamples(module, moduleResolution) {
  const examples = await readmeExamples();
  assert.ok(examples.length >= 7, `found ${examples.length} examples`);
  const dir = await mkdtemp(path.join(tmpdir(), 'edgestream-readme-'));
  try {
    await mkdir(path.join(dir, 'node_modules'));
    await symlink(path.join(here, '..'), path.join(dir, 'node_modules', 'edgestream'), 'dir');
    // An ES module package, as Node16 resolution needs for the examples' `import` and top-level await.
    await writeFile(path.join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
    const files = [];
    for (const [i, body] of examples.entries()) {
      const file = path.join(dir, `example-${i + 1}.ts`);
      // Each example is a module of its own (top-level await), whether or not it imports.
      await writeFile(file, `${body}\nexport {};\n`);
      files.push(file);
    }
    const config = {
      compilerOptions: {
        target: 'ES2022',
        module,
        moduleResolution,
        lib: ['ES2022', 'DOM', 'DOM.Iterable'],
        types: [],
        strict: true,
        exactOptionalPropertyTypes: true,
        noUncheckedIndexedAccess: true,
        noEmit: true,
        skipLibCheck: false,
      },
      files: [path.join(here, 'types', 'readme-globals.d.ts'), ...files],
    };
    await writeFile(path.join(dir, 'tsconfig.json'), JSON.stringify(config));
    return await compile(path.join(dir, 'tsconfig.json'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('every README example compiles in a strict project (exactOptionalPropertyTypes, noUncheckedIndexedAccess), resolved as a bundler does', async () => {
  const { code, output } = await compileExamples('ESNext', 'Bundler');
  assert.equal(code, 0, output);
});

test('every README example compiles in a strict project, resolved as Node does (Node16)', async () => {
  const { code, output } = await compileExamples('Node16', 'Node16');
  assert.equal(code, 0, output);
});

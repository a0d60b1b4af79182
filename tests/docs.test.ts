// The docs' pointers into the code: a newcomer follows README's map and the paths, settings,
// npm scripts and names the docs give, so each must still exist and be what the docs say.
// No server: these read files only. `DOCS_ROOT` points the checks at another copy of the tree
// (how a deliberately broken copy is shown to fail).
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { root as repoRoot } from '../scripts/run.mjs';

const root = process.env.DOCS_ROOT ?? repoRoot;
const read = (file: string) => readFileSync(path.join(root, file), 'utf8');

/** Every file in the tree, as git sees it (tracked, or new and not ignored). */
const files: string[] = execFileSync('git', ['ls-files', '--cached', '--others', '--exclude-standard'], {
  cwd: root,
  encoding: 'utf8',
})
  .split('\n')
  .filter(Boolean)
  // A worktree's node_modules may be a link, which git lists as an untracked file.
  .filter((f) => f !== 'node_modules' && existsSync(path.join(root, f)));
const fileSet = new Set(files);
const basenames = new Set(files.map((f) => path.basename(f)));
const topLevel = new Set(files.map((f) => f.split('/')[0]));

/** The docs a newcomer reads: the root's, docs/, the package's README and the client
 * conformance runner's (not the third-party cases' or the benchmark's generated results). */
const DOCS = files.filter((f) =>
  /^([^/]+|docs\/.+|js\/README|tests\/client-conformance\/README)\.md$/.test(f),
);

/** Whether `p` (a file, or a folder when it ends in `/`) is in the tree. */
function inTree(p: string): boolean {
  const clean = p.replace(/\/$/, '');
  return fileSet.has(clean) || files.some((f) => f.startsWith(`${clean}/`));
}

/** Text in backticks: `code`. */
function codeSpans(text: string): string[] {
  return [...text.matchAll(/`([^`\n]+)`/g)].map((m) => m[1]);
}

/** Paths into this repository named in backticks, alone or in a command (`node bench/ab.mjs`):
 * they start with one of its top-level entries and name no placeholder or pattern (`<name>`,
 * `*`, `...`). Built outputs are left out. */
function repoPaths(text: string): string[] {
  return codeSpans(text).flatMap((span) => span.split(/\s+/)).filter(
    (s) =>
      /^[\w.-]+(\/[\w.@-]+)*\/?$/.test(s) &&
      s.includes('/') &&
      topLevel.has(s.split('/')[0]) &&
      !/\/(dist|pkg|build)(\/|$)/.test(s) &&
      !s.startsWith('.wrangler'),
  );
}

/** Files of the reader's own that the docs name (js/README.md: a Vite app's config). */
const READERS_FILES = new Set(['vite.config.js']);

/** Bare file names (`lease.rs`, `ws-stall.mjs`), as the Layout table gives them within a folder. */
function bareFileNames(text: string): string[] {
  return codeSpans(text).filter((s) => /^[\w.-]+\.(rs|ts|mjs|js|sh|toml)$/.test(s) && !READERS_FILES.has(s));
}

/** Relative Markdown links (`[text](docs/websocket.md#compression)`), without the anchor. */
function relativeLinks(text: string): string[] {
  return [...text.matchAll(/\]\(([^)\s]+)\)/g)]
    .map((m) => m[1])
    .filter((l) => !/^[a-z]+:/.test(l) && !l.startsWith('#'))
    .map((l) => l.replace(/#.*$/, ''));
}

/** The rows of the Markdown table that follows `heading`'s line, as cells. */
function tableAfter(text: string, heading: RegExp): string[][] {
  const lines = text.split('\n');
  const at = lines.findIndex((l) => heading.test(l));
  expect(at, `no line matching ${heading}`).toBeGreaterThanOrEqual(0);
  const start = lines.findIndex((l, i) => i > at && l.startsWith('|'));
  const rows: string[][] = [];
  for (let i = start + 2; i < lines.length && lines[i].startsWith('|'); i++) {
    rows.push(lines[i].split(/(?<!\\)\|/).slice(1, -1).map((c) => c.trim()));
  }
  return rows;
}

describe('the docs point at what is there', () => {
  it('every repository path in backticks exists', () => {
    expect(DOCS).toEqual(expect.arrayContaining(['README.md', 'DEVELOPERS.md', 'js/README.md', 'docs/websocket.md']));
    const missing = DOCS.flatMap((doc) =>
      repoPaths(read(doc))
        .filter((p) => !inTree(p) && !inTree(path.posix.join(path.posix.dirname(doc), p)))
        .map((p) => `${doc}: ${p}`),
    );
    expect(missing).toEqual([]);
  });

  it('every bare file name in backticks is a file somewhere in the tree', () => {
    const missing = DOCS.flatMap((doc) =>
      bareFileNames(read(doc))
        .filter((name) => !basenames.has(name))
        .map((name) => `${doc}: ${name}`),
    );
    expect(missing).toEqual([]);
  });

  it('every relative link leads to a file', () => {
    const missing = DOCS.flatMap((doc) =>
      relativeLinks(read(doc))
        .filter((l) => !inTree(path.posix.normalize(path.posix.join(path.posix.dirname(doc), l))))
        .map((l) => `${doc}: ${l}`),
    );
    expect(missing).toEqual([]);
  });

  it('every link to a heading (`#anchor`) names a heading of its file, as GitHub spells them', () => {
    const slug = (heading: string) =>
      heading
        .trim()
        .toLowerCase()
        .replace(/[^\p{L}\p{N}\s_-]/gu, '')
        .replace(/\s/g, '-');
    const headings = (file: string) => {
      const seen = new Map<string, number>();
      const out = new Set<string>();
      for (const m of read(file)
        .replace(/```[\s\S]*?```/g, '')
        .matchAll(/^#{1,6}\s+(.+)$/gm)) {
        const s = slug(m[1]);
        const n = seen.get(s) ?? 0;
        seen.set(s, n + 1);
        out.add(n ? `${s}-${n}` : s);
      }
      return out;
    };
    const wrong: string[] = [];
    for (const doc of DOCS) {
      for (const m of read(doc).matchAll(/\]\(([^)\s]*)#([^)\s]+)\)/g)) {
        if (/^[a-z]+:/.test(m[1])) continue;
        const target = m[1] ? path.posix.normalize(path.posix.join(path.posix.dirname(doc), m[1])) : doc;
        if (fileSet.has(target) && !headings(target).has(m[2])) wrong.push(`${doc}: ${m[1]}#${m[2]}`);
      }
    }
    expect(wrong).toEqual([]);
  });

  it("README's map names functions and types that are in the files it names", () => {
    const rows = tableAfter(read('README.md'), /^Where to look first/);
    expect(rows.length).toBeGreaterThan(5);
    const wrong: string[] = [];
    for (const [question, answer] of rows) {
      let file: string | undefined;
      for (const m of answer.matchAll(/`([^`]+)`( in `([^`]+)`)?/g)) {
        const span = m[1];
        if (span.includes('/')) {
          file = span;
          if (!fileSet.has(file)) wrong.push(`${question}: ${file} does not exist`);
          continue;
        }
        // `Store::append`, `decide`, `SseFollower::on_event`: each part must be defined in the
        // file named before it, or after it as "`name` in `file`" (a type, a function, a class).
        if (!/^[A-Za-z_][\w]*(::[A-Za-z_]\w*)*$/.test(span)) continue;
        if (m[3]) file = m[3];
        if (!file || !fileSet.has(file)) {
          wrong.push(`${question}: \`${span}\` follows no file`);
          continue;
        }
        const source = read(file);
        for (const part of span.split('::')) {
          const defined = new RegExp(`\\b(fn|struct|enum|trait|type|impl|const|mod|class|function)\\s+${part}\\b`);
          if (!defined.test(source)) wrong.push(`${question}: ${file} defines no \`${part}\``);
        }
      }
      if (!file) wrong.push(`${question}: names no file`);
    }
    expect(wrong).toEqual([]);
  });

  it('every [vars] setting in wrangler.toml is in the Settings table with its default, and back', () => {
    const toml = read('wrangler.toml');
    const vars = new Map<string, string>();
    const section = toml.slice(toml.indexOf('[vars]'));
    for (const m of section.matchAll(/^([A-Z][A-Z0-9_]*)\s*=\s*"([^"]*)"/gm)) vars.set(m[1], m[2]);
    expect(vars.size).toBeGreaterThan(10);

    const rows = tableAfter(read('README.md'), /^## Settings/);
    const table = new Map(rows.map(([name, def]) => [name.replace(/`/g, ''), def.replace(/`/g, '')]));
    const wrong: string[] = [];
    for (const [name, value] of vars) {
      if (!table.has(name)) wrong.push(`${name} is in wrangler.toml but not in README's Settings`);
      else if (table.get(name) !== value) wrong.push(`${name}: README says ${table.get(name)}, wrangler.toml ${value}`);
    }
    for (const [name, def] of table) {
      // Secrets and test-only settings are unset by default and stay out of wrangler.toml.
      if (!vars.has(name) && def !== 'unset') wrong.push(`${name} is in README's Settings but not in wrangler.toml`);
    }
    // And the Worker reads each of them.
    const config = read('worker/src/config.rs') + read('worker/src/auth.rs') + read('worker/src/fault.rs');
    for (const name of table.keys()) {
      if (!config.includes(`"${name}"`)) wrong.push(`${name}: the Worker does not read it`);
    }
    expect(wrong).toEqual([]);
  });

  it("the Worker's own defaults, used when a setting is absent, are the ones README gives", () => {
    const config = read('worker/src/config.rs');
    const rows = tableAfter(read('README.md'), /^## Settings/);
    const wrong: string[] = [];
    let numbers = 0;
    for (const [cell, def] of rows) {
      const name = cell.replace(/`/g, '');
      const call = config.match(new RegExp(`number\\(\\s*"${name}",\\s*Self::(DEFAULT_\\w+)`));
      if (!call) continue;
      numbers++;
      const expr = config.match(new RegExp(`const ${call[1]}: u64 = ([\\d_ *]+);`))?.[1];
      const value = expr?.replace(/_/g, '').split('*').reduce((a, b) => a * Number(b), 1);
      if (String(value) !== def.replace(/`/g, '')) wrong.push(`${name}: README says ${def}, config.rs ${expr}`);
    }
    expect(numbers).toBeGreaterThan(10);
    expect(wrong).toEqual([]);
  });

  it('every code name in backticks (a constant, a function, a type) is in the code', () => {
    // Names from elsewhere: Python and nginx in README's examples, the runtime and other
    // WebSocket libraries in docs/websocket.md, Vite in js/README.md. `SseFrame` is
    // DEVELOPERS.md's example of a protocol name (the core's SSE type is `SseEvent`). The rest
    // are `@durable-streams/client`'s, which js/README.md maps for users coming from it.
    const elsewhere = new Set([
      'urlsafe_b64encode',
      'proxy_redirect',
      'bufferedAmount',
      'close_timeout',
      'max_size',
      'setWebSocketAutoResponse',
      'pendingAutoResponseDeque',
      'optimizeDeps',
      'urlOrBytesOrModule',
      'SseFrame',
      'FetchError',
      'subscribeJson',
      'subscribeBytes',
      'subscribeText',
      'startOffset',
      'isLoading',
      'onFailedAttempt',
      'cacheControl',
      'lastSuccessfulOffset',
      'pendingCount',
      'inFlightCount',
      'FetchBackoffAbortError',
      'MissingStreamUrlError',
      'InvalidSignalError',
      'CONFLICT_SEQ',
      'CONFLICT_EXISTS',
      'RATE_LIMITED',
      'ALREADY_CLOSED',
      'ALREADY_CONSUMED',
      'SSE_NOT_SUPPORTED',
      'asAsyncIterableReadableStream',
      'createFetchWithBackoff',
      'BackoffDefaults',
    ]);
    const sources = files.filter(
      (f) => /\.(rs|js|mjs|ts|toml|json|sh)$/.test(f) && !f.startsWith('tests/client-conformance/cases/'),
    );
    const words = new Set(sources.flatMap((f) => read(f).match(/[A-Za-z_][A-Za-z0-9_]*/g) ?? []));
    const name = /\b([A-Z][A-Z0-9]*_[A-Z0-9_]+|[a-z]+_[a-z0-9_]+|[a-z]+[A-Z][A-Za-z0-9]*|[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*)\b/g;
    const missing = DOCS.flatMap((doc) =>
      [...new Set(codeSpans(read(doc)).flatMap((span) => span.match(name) ?? []))]
        .filter((w) => !words.has(w) && !elsewhere.has(w))
        .map((w) => `${doc}: ${w}`),
    );
    expect(missing).toEqual([]);
  });

  it("every module is in its parent's index (the `//!` list a newcomer reads first)", () => {
    const parents = [
      'src/lib.rs',
      'worker/src/lib.rs',
      'worker/src/edge/mod.rs',
      'worker/src/object/mod.rs',
      'worker/src/subscription/mod.rs',
      'worker/src/subscription/object/mod.rs',
      'client/src/lib.rs',
    ];
    const missing: string[] = [];
    for (const parent of parents) {
      const source = read(parent);
      const index = source
        .split('\n')
        .filter((l) => l.startsWith('//!'))
        .join('\n');
      const modules = [...source.matchAll(/^(?:pub )?mod (\w+);/gm)].map((m) => m[1]);
      expect(modules.length, parent).toBeGreaterThan(0);
      for (const name of modules) {
        const named = [`[\`${name}\`]`, `\`${name}\``, `\`${name}.rs\``].some((n) => index.includes(n));
        if (!named) missing.push(`${parent}: mod ${name}`);
      }
    }
    expect(missing).toEqual([]);
  });

  it('the bad-input counts README and docs/reliability.md give are the tests tests/bad-input.test.ts has', () => {
    const listed = JSON.parse(
      execFileSync(
        path.join(repoRoot, 'node_modules', '.bin', 'vitest'),
        ['list', '--config', 'tests/vitest.config.ts', 'tests/bad-input.test.ts', '--json'],
        { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] },
      ),
    ) as { name: string }[];
    // Two of them are the seeded random ones (requests, and WebSocket frames); the rest are
    // the refusals and the edge cases that must go through.
    const random = listed.filter((t) => /^random /.test(t.name)).length;
    expect(random).toBe(2);
    const readme = read('README.md').match(/(\d+) bad-input tests: (\d+) refusals,[\s\S]*?(\w+) edge cases/);
    const reliability = read('docs/reliability.md').match(
      /\*\*(\d+)\*\* tests in `tests\/bad-input\.test\.ts`[^:]*: (\d+) refusals and (\d+) edge cases/,
    );
    expect(readme, 'README: "N bad-input tests: N refusals, ... N edge cases"').toBeTruthy();
    expect(reliability, 'docs/reliability.md: "**N** tests in tests/bad-input.test.ts ..."').toBeTruthy();
    const words: Record<string, number> = { four: 4, five: 5, six: 6, seven: 7 };
    for (const [doc, m] of [['README.md', readme!], ['docs/reliability.md', reliability!]] as const) {
      const [total, refusals, edge] = [Number(m[1]), Number(m[2]), words[m[3]] ?? Number(m[3])];
      expect({ doc, total, parts: refusals + edge + random }).toEqual({ doc, total: listed.length, parts: listed.length });
    }
  });

  it("every test docs/reliability.md's bad-input table names is a test of the file it names", () => {
    const rows = tableAfter(read('docs/reliability.md'), /Test names are from `tests\/bad-input\.test\.ts` unless noted/);
    expect(rows.length).toBeGreaterThan(40);
    // Each cell: `*name*`s of tests/bad-input.test.ts, or of the file named before them.
    const cited: { file: string; name: string }[] = [];
    for (const row of rows) {
      for (const part of row[row.length - 1].split(';')) {
        const file = part.match(/`(tests\/[\w./-]+\.test\.ts)`/)?.[1] ?? 'tests/bad-input.test.ts';
        for (const m of part.matchAll(/\*([^*]+)\*/g)) cited.push({ file, name: m[1] });
      }
    }
    const files = [...new Set(cited.map((c) => c.file))];
    const listed = JSON.parse(
      execFileSync(
        path.join(repoRoot, 'node_modules', '.bin', 'vitest'),
        ['list', '--config', 'tests/vitest.config.ts', ...files, '--json'],
        { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] },
      ),
    ) as { name: string; file: string }[];
    // "…" stands for any text: the pieces around it must appear in order in one test's name.
    const matches = (name: string, test: string) => {
      let at = 0;
      for (const piece of name.split('…').map((p) => p.trim()).filter(Boolean)) {
        const found = test.indexOf(piece, at);
        if (found < 0) return false;
        at = found + piece.length;
      }
      return true;
    };
    const missing = cited
      .filter(({ file, name }) => !listed.some((t) => t.file.endsWith(file) && matches(name, t.name)))
      .map(({ file, name }) => `${file}: ${name}`);
    expect(missing).toEqual([]);
  });

  it('every npm script the docs name is in package.json', () => {
    const scripts = Object.keys(JSON.parse(read('package.json')).scripts);
    const missing = DOCS.flatMap((doc) =>
      [...read(doc).matchAll(/\bnpm (?:run (?:-s )?([\w:-]+)|(start|test)\b)/g)]
        .map((m) => m[1] ?? m[2])
        .filter((name) => !scripts.includes(name))
        .map((name) => `${doc}: npm ${name}`),
    );
    expect(missing).toEqual([]);
  });
});

// What a local server keeps in wrangler's state directory, for tests that check what objects
// store. Locally each object touched has an SQLite file (miniflare makes one for every object,
// with a table of its own): the objects that made our tables hold their SQL text.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * How many objects of Durable Object class `className` (as wrangler names its directory, e.g.
 * `edgestream-StreamObject`) under `persistTo` hold `schemaText`, in their database or its WAL.
 */
export function objectsHolding(persistTo: string, className: string, schemaText: string): number {
  const dir = join(persistTo, 'v3', 'do', className);
  if (!existsSync(dir)) return 0;
  const holds = (file: string) => [file, `${file}-wal`].some((f) => existsSync(f) && readFileSync(f).includes(schemaText));
  return readdirSync(dir).filter((f) => /^[0-9a-f]{64}\.sqlite$/.test(f) && holds(join(dir, f))).length;
}

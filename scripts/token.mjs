// Mints an edgestream access token (HMAC-SHA256), as the Worker verifies it.
//
//   npm run -s token -- --prefix rooms --ops read,append --ttl 3600
//
// The secret comes from --secret or the AUTH_SECRET environment variable, and must equal the
// Worker's (`wrangler secret put AUTH_SECRET`, or `--var AUTH_SECRET:...` locally); while the
// secret is rotated, mint with the new one (AUTH_SECRET_PREVIOUS only verifies).
import { createHmac } from 'node:crypto';
import { pathToFileURL } from 'node:url';

const OPERATIONS = ['read', 'append', 'create', 'delete', 'admin'];

/**
 * Returns a token granting `ops` on `prefix` (a stream path such as `rooms/lobby`, `rooms/` for
 * everything under rooms, or `` for every path) until `expiresAt` (Unix seconds). The prefix
 * has no default: a token for every stream is asked for by name.
 */
export function mintToken({ secret, prefix, ops, expiresAt }) {
  if (!secret) throw new Error('a secret is required');
  if (typeof prefix !== 'string') throw new Error("a prefix is required (every stream is --prefix '')");
  if (!Array.isArray(ops) || ops.length === 0) throw new Error('ops must list at least one operation');
  for (const op of ops) {
    if (!OPERATIONS.includes(op)) throw new Error(`unknown operation ${op} (use ${OPERATIONS.join(', ')})`);
  }
  // An expiry past the year 9999 is milliseconds by mistake; the Worker refuses such a token.
  if (!Number.isInteger(expiresAt) || expiresAt > 253402300799) throw new Error('expiresAt must be Unix seconds, an integer before the year 10000');
  const payload = Buffer.from(JSON.stringify({ prefix, ops, exp: expiresAt })).toString('base64url');
  const signature = createHmac('sha256', secret).update(payload).digest('base64url');
  return `${payload}.${signature}`;
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = process.argv.slice(2);
  const usage = 'usage: npm run token -- --prefix P [--secret S] [--ops read,append,create,delete,admin] [--ttl SECONDS]';
  if (args.includes('--help') || args.includes('-h')) {
    console.log(usage);
    process.exit(0);
  }
  const known = new Set(['--secret', '--prefix', '--ops', '--ttl']);
  for (let i = 0; i < args.length; i += 2) {
    // A flag without its value would quietly become the default: an empty prefix is every stream.
    const problem = !known.has(args[i])
      ? `unknown argument ${args[i]}`
      : i + 1 >= args.length || args[i + 1].startsWith('--')
        ? `${args[i]} needs a value${args[i] === '--prefix' ? " (every stream is --prefix '')" : ''}`
        : null;
    if (problem) {
      console.error(`token: ${problem}`);
      console.error(usage);
      process.exit(2);
    }
  }
  const opt = (name, fallback) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
  };
  try {
    const ttl = Number(opt('ttl', '3600'));
    if (!Number.isInteger(ttl) || ttl <= 0) throw new Error('--ttl must be a positive number of seconds');
    const token = mintToken({
      secret: opt('secret', process.env.AUTH_SECRET),
      prefix: opt('prefix', undefined),
      ops: opt('ops', 'read').split(',').map((s) => s.trim()).filter(Boolean),
      expiresAt: Math.floor(Date.now() / 1000) + ttl,
    });
    console.log(token);
  } catch (e) {
    console.error(`token: ${e.message}`);
    console.error(usage);
    process.exit(2);
  }
}

// The published Durable Streams server conformance suite, run against our Worker on wrangler dev.
import { afterAll, beforeAll, describe } from 'vitest';
import { runConformanceTests } from '@durable-streams/server-conformance-tests';
import { startServer } from '../../scripts/dev-server.mjs';

// The suite's long-poll tests expect the server to time out in about a second.
const longPollTimeoutMs = 1_000;
// The reserved subscription APIs run too; their webhook receivers listen on 127.0.0.1.
const config = { baseUrl: '', longPollTimeoutMs, subscriptions: true };
let server: Awaited<ReturnType<typeof startServer>>;

beforeAll(async () => {
  server = await startServer({ vars: { LONG_POLL_TIMEOUT_MS: String(longPollTimeoutMs), WEBHOOK_ALLOW_LOCALHOST: 'true' } });
  config.baseUrl = server.baseUrl;
});

afterAll(async () => {
  await server?.stop();
});

describe('edgestream server conformance', () => {
  runConformanceTests(config);
});

// The reference server (@durable-streams/server) in this test process, started before the
// file's tests and stopped after them: `const server = useReferenceServer(options)`, then
// `server.url` inside a test.
import { after, before } from 'node:test';
import { DurableStreamTestServer } from '@durable-streams/server';

export function useReferenceServer(options = {}) {
  const handle = { url: '', instance: undefined };
  before(async () => {
    handle.instance = new DurableStreamTestServer({ port: 0, host: '127.0.0.1', ...options });
    await handle.instance.start();
    handle.url = handle.instance.url;
  });
  after(async () => {
    await handle.instance?.stop();
  });
  return handle;
}

import http from 'node:http';

/**
 * Runs `run(url)` against a throwaway HTTP server on a free local port that handles requests with
 * `handler(req, res)`, and closes it (dropping open connections) afterwards. `url` names a stream
 * on it: `http://127.0.0.1:<port>/v1/stream/x`.
 */
export async function withLocalServer(handler, run) {
  const server = http.createServer(handler);
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    return await run(`http://127.0.0.1:${server.address().port}/v1/stream/x`);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
}

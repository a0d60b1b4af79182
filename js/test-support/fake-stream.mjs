// A fake JSON stream server for reader tests that need connections a real server would not
// leave hanging.
import http from 'node:http';

/**
 * `[]` and up to date at `o1` until `state.data` is set; then `data` at `o2` to a new request.
 * An SSE response, once it has said where the stream stands, sends nothing more and stays
 * open; a long-poll with nothing new is never answered. `state.requests`, when given, collects
 * each request's `live` parameter.
 */
export function fakeStream(state) {
  return http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    state.requests?.push(url.searchParams.get('live'));
    const ready = state.data !== undefined && url.searchParams.get('offset') !== 'o2';
    const next = ready ? 'o2' : 'o1';
    if (url.searchParams.get('live') === 'sse') {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      if (ready) res.write(`event: data\ndata: ${JSON.stringify(state.data)}\n\n`);
      res.write(`event: control\ndata: ${JSON.stringify({ streamNextOffset: next, streamCursor: '1', upToDate: true })}\n\n`);
      return;
    }
    if (url.searchParams.get('live') === 'long-poll' && !ready) return;
    res.writeHead(200, { 'content-type': 'application/json', 'stream-next-offset': next, 'stream-up-to-date': 'true', 'stream-cursor': '1' });
    res.end(ready ? JSON.stringify(state.data) : '[]');
  });
}

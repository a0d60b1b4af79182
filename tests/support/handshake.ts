// A raw WebSocket handshake with node:http (fetch refuses Upgrade), for tests that look at the
// answer itself: its status and headers (and a refusal's body), whether the server upgraded (101)
// or refused.
import * as http from 'node:http';

/**
 * The status and headers of the answer to a WebSocket handshake on `url`, with `extra` request
 * headers (an extension offer, say), and the body of a refusal; an upgraded socket is dropped.
 */
export function handshake(
  url: string,
  extra: Record<string, string> = {},
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, {
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-key': Buffer.from('edgestream-test!').toString('base64'),
        'sec-websocket-version': '13',
        ...extra,
      },
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0, headers: res.headers, body: '' });
    });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

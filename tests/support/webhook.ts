// A webhook receiver for the subscription suites: listens on 127.0.0.1 (the test server runs
// with WEBHOOK_ALLOW_LOCALHOST) and records each notification's JSON body.
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export async function receiver() {
  const bodies: any[] = [];
  const srv = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      bodies.push(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/hook`,
    bodies,
    /** Whether a notification named `stream` as having data pending. */
    named: (stream: string) => bodies.some((b) => b.streams?.some((s: any) => s.path === stream && s.has_pending)),
    close: () => new Promise((r) => srv.close(r)),
  };
}

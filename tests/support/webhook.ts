// Webhook receivers for the subscription suites: they listen on 127.0.0.1 (the test server runs
// with WEBHOOK_ALLOW_LOCALHOST) and record each request.
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export type Hit = { at: number; url: string; body: any };

/**
 * A webhook receiver that records each request (its body parsed as JSON when it is JSON) and
 * lets `answer` reply (by default 200 `{}`). `close` also drops connections a handler left open.
 */
export async function hookServer(answer?: (hit: Hit, res: http.ServerResponse, n: number) => void) {
  const hits: Hit[] = [];
  const srv = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      let body: any = raw;
      try {
        body = JSON.parse(raw);
      } catch {}
      const hit = { at: Date.now(), url: req.url ?? '', body };
      hits.push(hit);
      if (answer) return answer(hit, res, hits.length);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/hook`,
    hits,
    close: () => {
      srv.closeAllConnections();
      return new Promise((r) => srv.close(r));
    },
  };
}

/** A receiver that answers every notification 200 `{}` and keeps their bodies. */
export async function receiver() {
  const server = await hookServer();
  return {
    url: server.url,
    get bodies(): any[] {
      return server.hits.map((h) => h.body);
    },
    /** Whether a notification named `stream` as having data pending. */
    named: (stream: string) =>
      server.hits.some((h) => h.body?.streams?.some((s: any) => s.path === stream && s.has_pending)),
    close: server.close,
  };
}

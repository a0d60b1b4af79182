// Webhook receivers for the subscription suites: they listen on 127.0.0.1 (the test server runs
// with WEBHOOK_ALLOW_LOCALHOST) and record each request.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { createPublicKey, verify } from 'node:crypto';
import { expect } from 'vitest';

/** A request the receiver got: `raw` is its body as sent, `signature` its `webhook-signature`. */
export type Hit = { at: number; url: string; body: any; raw: string; signature: string };

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
      const hit = { at: Date.now(), url: req.url ?? '', body, raw, signature: String(req.headers['webhook-signature'] ?? '') };
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

/** A published signing key, as the JWKS lists it. */
export type Jwk = { kid: string; x: string };

/**
 * The `kid` a delivery's `webhook-signature` names, after checking the Ed25519 signature of
 * `t.body` as a receiver would, with that key from the published `set`.
 */
export function verifiedKid(d: Pick<Hit, 'signature' | 'raw'>, set: Jwk[]): string {
  const fields = Object.fromEntries(d.signature.split(',').map((f) => f.split('=', 2) as [string, string]));
  const jwk = set.find((k) => k.kid === fields.kid);
  expect(jwk, `kid ${fields.kid} is not in the key set ${set.map((k) => k.kid)}`).toBeDefined();
  const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: jwk!.x }, format: 'jwk' });
  const ok = verify(null, Buffer.from(`${fields.t}.${d.raw}`), key, Buffer.from(fields.ed25519, 'base64url'));
  expect(ok, 'the signature verifies with the published key').toBe(true);
  return fields.kid;
}

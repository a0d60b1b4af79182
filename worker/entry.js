// The Worker's entry module: what worker-build generates (worker/build/index.js), with
// `StreamObject` made reachable over RPC.
//
// The runtime offers RPC only on Durable Object classes that extend `DurableObject`, and
// worker-build's classes do not. An RPC call costs far less than `stub.fetch()`: in a plain JS
// Worker under wrangler dev, a forwarded append that writes one SQLite row took about 950 µs
// of workerd CPU through `fetch()` and 610 µs through RPC with the same Request and Response
// (README, "Architecture notes"). So `StreamObject` here extends `DurableObject`, hands every runtime
// event to the Rust object unchanged, and adds `handle()`, which the edge calls instead of
// `fetch()` (worker/src/rpc.rs). Requests that upgrade to a WebSocket still use `fetch()`:
// a WebSocket cannot cross an RPC call.
import { DurableObject } from 'cloudflare:workers';
import edge, {
  RegistryObject,
  StreamObject as RustStreamObject,
  SubscriptionObject,
} from './build/index.js';

export default edge;
export { RegistryObject, SubscriptionObject };

export class StreamObject extends DurableObject {
  #rust;

  constructor(ctx, env) {
    super(ctx, env);
    this.#rust = new RustStreamObject(ctx, env);
  }

  fetch(request) {
    return this.#rust.fetch(request);
  }

  /**
   * One protocol request without the HTTP hop: the edge passes the request's parts (headers
   * as [name, value] pairs, the body as a stream or null) and gets the object's Response.
   */
  handle(method, url, headers, body) {
    return this.#rust.fetch(new Request(url, { method, headers, body }));
  }

  alarm(info) {
    return this.#rust.alarm(info);
  }

  webSocketMessage(ws, message) {
    return this.#rust.webSocketMessage(ws, message);
  }

  webSocketClose(ws, code, reason, wasClean) {
    return this.#rust.webSocketClose(ws, code, reason, wasClean);
  }

  webSocketError(ws, error) {
    return this.#rust.webSocketError(ws, error);
  }
}

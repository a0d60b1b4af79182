//! Calls into a stream's object over RPC instead of `fetch()`.
//!
//! `worker/entry.js` gives `StreamObject` a `handle(method, url, headers, body)` method; the
//! runtime serves it without the HTTP machinery of a subrequest, which made `fetch()` the
//! largest cost of an append. The object still sees a `Request` and answers a `Response`, so
//! its routes do not change. Upgrades (live subscriptions) keep using `fetch()`.

use js_sys::{Array, Promise};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use worker::worker_sys::web_sys;
use worker::{Headers, Method, Response, Result, Stub};

#[wasm_bindgen]
extern "C" {
    /// A `StreamObject` stub seen as an RPC target.
    type StreamObjectRpc;
    #[wasm_bindgen(method, catch)]
    fn handle(
        this: &StreamObjectRpc,
        method: &str,
        url: &str,
        headers: &Array,
        body: &JsValue,
    ) -> std::result::Result<Promise, JsValue>;
}

/// A stream object's stub, for calls over RPC.
pub struct ObjectRpc(StreamObjectRpc);

impl ObjectRpc {
    pub fn new(stub: Stub) -> Self {
        // `into_rpc` only re-types the runtime's stub.
        ObjectRpc(stub.into_rpc())
    }

    /// Sends one request to the object and waits for its response. The body is anything
    /// `new Request` takes that can cross RPC: a `ReadableStream` or bytes.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        headers: &Headers,
        body: Option<JsValue>,
    ) -> Result<Response> {
        // Headers do not cross RPC; their [name, value] pairs do.
        let pairs = Array::from(headers.as_ref());
        let body = body.unwrap_or(JsValue::NULL);
        let promise = self.0.handle(method.as_ref(), url, &pairs, &body)?;
        let resp: web_sys::Response = JsFuture::from(promise).await?.dyn_into()?;
        Ok(Response::from(resp))
    }
}

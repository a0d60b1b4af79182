//! A response body written from event handlers.
//!
//! `Response::from_stream` pulls a Rust stream: each chunk costs a pull call, a promise and a
//! task poll. A live reader's chunks come from socket events, so the edge writes them straight
//! into workerd's native `IdentityTransformStream`, whose readable side is the response body.
//! Every binding here catches JS exceptions: an uncaught one would trap the whole wasm
//! instance, and every live reader in the isolate with it.
//!
//! A live write does not wait for the reader, so a reader that stops reading would make the
//! edge hold every later frame in memory (and one isolate serves many readers). The pipe is
//! made with a byte high-water mark, which makes the writer's `desiredSize` count the bytes the
//! connection has not taken yet; past a limit the writer waits for the reader instead.

use std::cell::Cell;
use std::time::Duration;

use js_sys::{Promise, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use worker::web_sys::{self, ReadableStream};
use worker::Delay;

use crate::socket::{self, AbortWatch};

/// Why a body is aborted when its client went away.
const CLIENT_GONE: &str = "client gone";

#[wasm_bindgen]
extern "C" {
    type IdentityTransformStream;
    #[wasm_bindgen(constructor, catch)]
    fn new(strategy: &JsValue) -> Result<IdentityTransformStream, JsValue>;
    #[wasm_bindgen(method, getter)]
    fn readable(this: &IdentityTransformStream) -> ReadableStream;
    #[wasm_bindgen(method, getter)]
    fn writable(this: &IdentityTransformStream) -> WritableStream;

    type WritableStream;
    #[wasm_bindgen(method, catch, js_name = getWriter)]
    fn get_writer(this: &WritableStream) -> Result<Writer, JsValue>;

    type Writer;
    #[wasm_bindgen(method, catch)]
    fn write(this: &Writer, chunk: &Uint8Array) -> Result<Promise, JsValue>;
    #[wasm_bindgen(method, catch)]
    fn close(this: &Writer) -> Result<Promise, JsValue>;
    #[wasm_bindgen(method, catch)]
    fn abort(this: &Writer, reason: &JsValue) -> Result<Promise, JsValue>;
    /// `null` once the stream has errored.
    #[wasm_bindgen(method, getter, catch, js_name = desiredSize)]
    fn desired_size(this: &Writer) -> Result<Option<f64>, JsValue>;
    #[wasm_bindgen(method, getter, catch)]
    fn closed(this: &Writer) -> Result<Promise, JsValue>;

    /// A promise seen through `then` with plain functions, so a one-shot callback can be
    /// handed over to it.
    type Thenable;
    #[wasm_bindgen(method, catch, js_name = then)]
    fn then_functions(
        this: &Thenable,
        resolve: &js_sys::Function,
        reject: &js_sys::Function,
    ) -> Result<JsValue, JsValue>;
}

thread_local! {
    /// Swallows the rejection of a write nobody awaits (the reader has gone; `on_gone` says so).
    static IGNORE: Closure<dyn FnMut(JsValue)> = Closure::new(|_| {});
}

/// The pipe's high-water mark. It makes `desiredSize` a byte count (see the module docs), and
/// a queue below it counts as drained ([`BodyWriter::drained`]); the writes do not wait on it.
const HIGH_WATER_MARK: f64 = 65_536.0;

/// Creates a pipe: the readable side is a response body, the [`BodyWriter`] feeds it, and
/// [`BodyWriter::behind`] says when more than `backlog_limit` bytes wait for the reader.
pub fn body_pipe(backlog_limit: u64) -> worker::Result<(ReadableStream, BodyWriter)> {
    let strategy = js_sys::Object::new();
    js_sys::Reflect::set(&strategy, &"highWaterMark".into(), &HIGH_WATER_MARK.into())
        .map_err(js_error)?;
    let pipe = IdentityTransformStream::new(&strategy).map_err(js_error)?;
    let writer = pipe.writable().get_writer().map_err(js_error)?;
    Ok((
        pipe.readable(),
        BodyWriter {
            writer,
            open: Cell::new(true),
            backlog_limit: backlog_limit as f64,
            unmeasured: Cell::new(0),
        },
    ))
}

/// For a promise nobody awaits: its rejection only says the reader has gone.
fn ignore_rejection(p: &Promise) {
    IGNORE.with(|ignore| {
        let _ = p.catch(ignore);
    });
}

fn js_error(e: JsValue) -> worker::Error {
    worker::Error::JsError(format!("{e:?}"))
}

/// The writing end of a [`body_pipe`].
pub struct BodyWriter {
    writer: Writer,
    open: Cell<bool>,
    backlog_limit: f64,
    /// Bytes sent since the backlog was last measured: measuring costs a call into the
    /// runtime, and a fan-out makes one per reader per message.
    unmeasured: Cell<usize>,
}

/// How much may be sent between two measurements of the backlog.
const MEASURE_EVERY: usize = 64 * 1024;

impl BodyWriter {
    /// Queues `bytes` without waiting for the reader; false once the body can take no more.
    pub fn send(&self, bytes: &[u8]) -> bool {
        match self.start_write(bytes) {
            Some(p) => {
                ignore_rejection(&p);
                self.unmeasured.set(self.unmeasured.get() + bytes.len());
                true
            }
            None => false,
        }
    }

    /// Writes `bytes` and waits until the reader has taken them (backpressure for catch-up).
    /// The write starts at once and copies `bytes`, so the caller may drop them before it
    /// awaits: a page held in wasm memory while its reader is slow would grow that memory,
    /// which never shrinks, by a page for every such reader.
    pub fn send_and_wait(&self, bytes: &[u8]) -> impl std::future::Future<Output = bool> {
        let written = self.start_write(bytes).map(JsFuture::from);
        async move {
            match written {
                Some(w) => w.await.is_ok(),
                None => false,
            }
        }
    }

    /// Whether more than the backlog limit is queued (measured once per [`MEASURE_EVERY`]
    /// bytes sent): the writer should wait for the reader ([`BodyWriter::send_and_wait`])
    /// rather than queue more.
    pub fn behind(&self) -> bool {
        if self.unmeasured.get() < MEASURE_EVERY {
            return false;
        }
        self.unmeasured.set(0);
        self.backlog() > self.backlog_limit
    }

    /// Waits until the reader has taken nearly all that was queued; false if the body failed.
    /// (The writer's `ready` is the usual way, but workerd's never resolves once the stream
    /// has been over its high-water mark.)
    pub async fn drained(&self) -> bool {
        while self.open.get() {
            match self.writer.desired_size() {
                Ok(Some(desired)) if desired > 0.0 => return true,
                Ok(Some(_)) => Delay::from(Duration::from_millis(10)).await,
                _ => return false,
            }
        }
        false
    }

    /// Ends the body at once, dropping what is queued: the reader's connection breaks, and it
    /// resumes from the last offset it saw whole.
    pub fn abort(&self) {
        if self.open.replace(false) {
            if let Ok(p) = self.writer.abort(&"reader fell behind".into()) {
                ignore_rejection(&p);
            }
        }
    }

    /// Aborts the body as [`BodyWriter::abort`] does when `signal` aborts (the request's, when
    /// its client goes away), until the watch answered is dropped: a write waiting for the
    /// reader then fails at once, inside the abort event, instead of waiting for good (the
    /// runtime runs no timer or I/O callback of that request again).
    #[must_use = "dropping the watch stops it"]
    pub fn abort_on(&self, signal: &web_sys::AbortSignal) -> Option<AbortWatch> {
        if signal.aborted() {
            self.abort();
            return None;
        }
        let abort = js_sys::Reflect::get(&self.writer, &"abort".into()).ok()?;
        let abort = abort.dyn_ref::<js_sys::Function>()?;
        socket::on_abort(
            signal,
            abort.bind1(&self.writer, &CLIENT_GONE.into()).into(),
        )
    }

    /// Bytes written that the reader's connection has not taken yet.
    fn backlog(&self) -> f64 {
        match self.writer.desired_size() {
            Ok(Some(desired)) => HIGH_WATER_MARK - desired,
            // Errored: the next write fails and says so.
            _ => 0.0,
        }
    }

    fn start_write(&self, bytes: &[u8]) -> Option<Promise> {
        if !self.open.get() {
            return None;
        }
        // A copy: the runtime reads the chunk later, after wasm memory may have been reused.
        match self.writer.write(&Uint8Array::from(bytes)) {
            Ok(p) => Some(p),
            Err(_) => {
                self.open.set(false);
                None
            }
        }
    }

    /// Ends the body after what was written; later writes are dropped.
    pub fn close(&self) {
        if self.open.replace(false) {
            if let Ok(p) = self.writer.close() {
                ignore_rejection(&p);
            }
        }
    }

    /// Calls `gone` once if the reader goes away (disconnects) before the body is closed.
    pub fn on_gone(&self, gone: impl FnOnce() + 'static) {
        let Ok(closed) = self.writer.closed() else {
            return gone();
        };
        // Handed over as a plain JS function: freed once the promise is collected. (A
        // `forget`-ed `Closure` would keep its slot in wasm-bindgen's table, and with it the
        // function and everything the callback holds, for the life of the isolate; so would
        // `Closure::once_into_js` until it is called, which it never is when the body ends
        // normally or the request is cancelled: two closures and ~500 bytes per response.)
        let mut gone = Some(gone);
        let on_rejected = Closure::<dyn FnMut(JsValue)>::new(move |_: JsValue| {
            if let Some(gone) = gone.take() {
                gone();
            }
        })
        .into_js_value();
        IGNORE.with(|ignore| {
            let _ = closed
                .unchecked_ref::<Thenable>()
                .then_functions(ignore.as_ref().unchecked_ref(), on_rejected.unchecked_ref());
        });
    }
}

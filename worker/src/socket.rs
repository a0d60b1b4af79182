//! An owned WebSocket event queue.
//!
//! `worker::WebSocket::events()` borrows its socket, which cannot live inside a `'static`
//! response body stream, and it panics if an event arrives after the stream is dropped. This
//! wrapper owns the socket and its listeners, ignores events nobody waits for, and removes its
//! listeners when dropped.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures_util::StreamExt;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;
use worker::web_sys;

use crate::wsproto::{Admit, Waiting};

/// What a socket reported.
#[derive(Debug)]
pub enum SocketEvent {
    Binary(Vec<u8>),
    Text(String),
    /// Closed (cleanly or not), or failed: nothing more will arrive.
    Closed,
    /// More messages arrived than may wait in a client socket's queue ([`Waiting`]). Those
    /// after it are dropped unread: the peer must resend what was not answered.
    Overflow,
}

impl SocketEvent {
    /// The bytes of a message (0 for the others).
    fn size(&self) -> u64 {
        match self {
            SocketEvent::Binary(bytes) => bytes.len() as u64,
            SocketEvent::Text(text) => text.len() as u64,
            SocketEvent::Closed | SocketEvent::Overflow => 0,
        }
    }

    /// What a `message` event carried.
    pub fn from_message(e: &web_sys::MessageEvent) -> SocketEvent {
        let data = e.data();
        if let Some(text) = data.as_string() {
            SocketEvent::Text(text)
        } else if data.is_object() {
            // An ArrayBuffer, possibly from another realm (the Durable Object's), where
            // `instanceof ArrayBuffer` is false: view it instead of type-checking it.
            SocketEvent::Binary(js_sys::Uint8Array::new(&data).to_vec())
        } else {
            SocketEvent::Closed
        }
    }
}

type Listener<T> = Closure<dyn FnMut(T)>;

/// A WebSocket with its incoming events queued for `next().await`.
pub struct Socket {
    ws: web_sys::WebSocket,
    rx: UnboundedReceiver<SocketEvent>,
    on_message: Listener<web_sys::MessageEvent>,
    on_close: Listener<web_sys::CloseEvent>,
    on_error: Listener<web_sys::Event>,
    finished: bool,
    /// Counts the queue of a client's socket.
    waiting: Option<Rc<Cell<Waiting>>>,
}

fn forward<T>(
    tx: &UnboundedSender<SocketEvent>,
    f: impl Fn(T) -> SocketEvent + 'static,
) -> Listener<T>
where
    T: wasm_bindgen::convert::FromWasmAbi + 'static,
{
    let tx = tx.clone();
    Closure::wrap(Box::new(move |event: T| {
        // A send fails only when the receiver is gone, and then nobody is waiting.
        let _ = tx.unbounded_send(f(event));
    }) as Box<dyn FnMut(T)>)
}

impl Socket {
    /// Starts listening on `ws` and accepts it (for sockets from `fetch` or a `WebSocketPair`).
    pub fn accept(ws: worker::WebSocket) -> worker::Result<Socket> {
        let socket = Socket::listen(ws.as_ref().clone(), false)?;
        ws.accept()?;
        Ok(socket)
    }

    /// [`Socket::accept`] for a client's socket, whose messages wait in the queue while the
    /// last is handled: past the limits of [`Waiting`], the queue ends with
    /// [`SocketEvent::Overflow`], so a client that sends faster than its messages are handled
    /// cannot make it grow without end.
    pub fn accept_client(ws: worker::WebSocket) -> worker::Result<Socket> {
        let socket = Socket::listen(ws.as_ref().clone(), true)?;
        ws.accept()?;
        Ok(socket)
    }

    fn listen(ws: web_sys::WebSocket, bounded: bool) -> worker::Result<Socket> {
        // Newer compatibility dates deliver binary messages as `Blob`s unless told otherwise.
        ws.set_binary_type(web_sys::BinaryType::Arraybuffer);
        let (tx, rx) = unbounded();
        let waiting = bounded.then(|| Rc::new(Cell::new(Waiting::default())));
        let on_message = match &waiting {
            Some(waiting) => {
                let (tx, waiting) = (tx.clone(), waiting.clone());
                Closure::wrap(Box::new(move |e: web_sys::MessageEvent| {
                    let mut counts = waiting.get();
                    // After an overflow, messages are dropped before they are read.
                    if counts.dropping() {
                        return;
                    }
                    let event = SocketEvent::from_message(&e);
                    let admitted = counts.admit(event.size(), || true);
                    waiting.set(counts);
                    let event = match admitted {
                        Admit::Queued => event,
                        Admit::Overflow => SocketEvent::Overflow,
                        Admit::Dropped => return,
                    };
                    let _ = tx.unbounded_send(event);
                }) as Box<dyn FnMut(web_sys::MessageEvent)>)
            }
            None => forward(&tx, |e: web_sys::MessageEvent| {
                SocketEvent::from_message(&e)
            }),
        };
        let on_close = forward(&tx, |_: web_sys::CloseEvent| SocketEvent::Closed);
        let on_error = forward(&tx, |_: web_sys::Event| SocketEvent::Closed);
        ws.add_event_listener_with_callback("message", on_message.as_ref().unchecked_ref())?;
        ws.add_event_listener_with_callback("close", on_close.as_ref().unchecked_ref())?;
        ws.add_event_listener_with_callback("error", on_error.as_ref().unchecked_ref())?;
        Ok(Socket {
            ws,
            rx,
            on_message,
            on_close,
            on_error,
            finished: false,
            waiting,
        })
    }

    /// The next event; `Closed` forever once the socket has closed.
    pub async fn next(&mut self) -> SocketEvent {
        if self.finished {
            return SocketEvent::Closed;
        }
        match self.rx.next().await {
            Some(SocketEvent::Closed) | None => {
                self.finished = true;
                SocketEvent::Closed
            }
            Some(event) => {
                if let Some(waiting) = &self.waiting {
                    let mut counts = waiting.get();
                    counts.taken(event.size());
                    waiting.set(counts);
                }
                event
            }
        }
    }

    /// Closes the socket; errors (already closed) are ignored.
    pub fn close(&self, code: u16, reason: &str) {
        self.sender().close(code, reason);
    }

    /// Stops queueing: removes this socket's listeners and returns the socket with the events
    /// already queued, for a caller that handles events in listeners of its own. Nothing can
    /// arrive in between, as long as the caller attaches its listeners before it next awaits.
    pub fn detach(mut self) -> (web_sys::WebSocket, Vec<SocketEvent>) {
        let mut queued = Vec::new();
        while let Ok(event) = self.rx.try_recv() {
            queued.push(event);
        }
        self.remove_listeners();
        // The caller owns the socket now: dropping `self` must not close it.
        self.finished = true;
        (self.ws.clone(), queued)
    }

    /// Hands every event to `handler` inside the runtime's callback, with no channel or task
    /// wake-up in between, until it breaks or the socket closes (`Closed` is handed over too).
    /// With one socket per live reader, that per-frame path is most of a fan-out's cost.
    pub fn handle<T: 'static>(
        self,
        handler: impl FnMut(SocketEvent) -> ControlFlow<T> + 'static,
    ) -> HandledSocket<T> {
        let (ws, queued) = self.detach();
        let shared = Rc::new(Handling {
            handler: RefCell::new(Box::new(handler)),
            outcome: RefCell::new(None),
            done: Cell::new(false),
            waker: RefCell::new(None),
        });
        for event in queued {
            shared.deliver(event);
        }
        let listener = |f: Box<dyn FnMut(web_sys::Event)>| Closure::wrap(f);
        let s = shared.clone();
        let on_message = listener(Box::new(move |e| {
            s.deliver(SocketEvent::from_message(e.unchecked_ref()));
        }));
        let s = shared.clone();
        let on_close = listener(Box::new(move |_| s.deliver(SocketEvent::Closed)));
        let s = shared.clone();
        let on_error = listener(Box::new(move |_| s.deliver(SocketEvent::Closed)));
        for (name, f) in [
            ("message", &on_message),
            ("close", &on_close),
            ("error", &on_error),
        ] {
            let _ = ws.add_event_listener_with_callback(name, f.as_ref().unchecked_ref());
        }
        HandledSocket {
            ws,
            shared,
            listeners: [on_message, on_close, on_error],
        }
    }

    fn remove_listeners(&self) {
        let ws = &self.ws;
        let _ = ws.remove_event_listener_with_callback(
            "message",
            self.on_message.as_ref().unchecked_ref(),
        );
        let _ =
            ws.remove_event_listener_with_callback("close", self.on_close.as_ref().unchecked_ref());
        let _ =
            ws.remove_event_listener_with_callback("error", self.on_error.as_ref().unchecked_ref());
    }

    /// See [`close_on_abort`].
    #[must_use = "dropping the watch stops it"]
    pub fn close_on_abort(&self, signal: &web_sys::AbortSignal) -> Option<AbortWatch> {
        close_on_abort(&self.ws, signal)
    }

    /// A handle that sends on this socket, for a task that sends while another awaits `next()`.
    pub fn sender(&self) -> SocketSender {
        SocketSender {
            ws: self.ws.clone(),
        }
    }
}

/// Closes `ws` (1000) when `signal` aborts: the request's signal, which workerd aborts when the
/// client goes away (the `enable_request_signal` compatibility flag, set in wrangler.toml). The
/// listener is the socket's own `close`, bound to its arguments ([`on_abort`]), and closing a
/// socket twice is harmless.
#[must_use = "dropping the watch stops it"]
pub fn close_on_abort(
    ws: &web_sys::WebSocket,
    signal: &web_sys::AbortSignal,
) -> Option<AbortWatch> {
    if signal.aborted() {
        let _ = ws.close_with_code_and_reason(1000, CLIENT_GONE);
        return None;
    }
    let close = js_sys::Reflect::get(ws, &"close".into()).ok()?;
    let close = close.dyn_ref::<js_sys::Function>()?;
    on_abort(
        signal,
        close.bind2(ws, &1000.into(), &CLIENT_GONE.into()).into(),
    )
}

/// Adds `listener` to `signal`'s abort event until the [`AbortWatch`] answered is dropped.
/// Callers pass a runtime method bound to its object and arguments (`Function.bind`), so no
/// Rust closure is made per reader: the listener runs inside the abort event itself, which is
/// the last the runtime runs of a request whose client went away (its timers and I/O callbacks
/// then never run). Drop the watch once the reader is done, or the signal, which the runtime
/// may keep past the request, keeps the listener and what it is bound to alive.
#[must_use = "dropping the watch stops it"]
pub fn on_abort(
    signal: &web_sys::AbortSignal,
    listener: wasm_bindgen::JsValue,
) -> Option<AbortWatch> {
    signal
        .add_event_listener_with_callback("abort", listener.unchecked_ref())
        .ok()?;
    Some(AbortWatch {
        signal: signal.clone(),
        listener,
    })
}

/// The abort listener [`on_abort`] added; dropping it removes the listener.
pub struct AbortWatch {
    signal: web_sys::AbortSignal,
    listener: wasm_bindgen::JsValue,
}

impl Drop for AbortWatch {
    fn drop(&mut self) {
        let _ = self
            .signal
            .remove_event_listener_with_callback("abort", self.listener.unchecked_ref());
    }
}

const CLIENT_GONE: &str = "client gone";

/// Sends a copy of `bytes`. The runtime may read a message after `send` returns, so it must
/// not be a view into wasm memory that later allocations reuse.
pub fn send_copy(ws: &web_sys::WebSocket, bytes: &[u8]) -> worker::Result<()> {
    ws.send_with_array_buffer_view(&js_sys::Uint8Array::from(bytes))?;
    Ok(())
}

/// The sending half of a [`Socket`]. It holds no listeners; the `Socket` still owns those.
#[derive(Clone)]
pub struct SocketSender {
    ws: web_sys::WebSocket,
}

impl crate::wsproto::Sink for SocketSender {
    fn send_bytes(&self, bytes: &[u8]) -> worker::Result<()> {
        send_copy(&self.ws, bytes)
    }

    fn send_text(&self, text: &str) -> worker::Result<()> {
        self.ws.send_with_str(text)?;
        Ok(())
    }
}

impl SocketSender {
    /// Closes the socket; errors (already closed) are ignored.
    pub fn close(&self, code: u16, reason: &str) {
        let _ = self.ws.close_with_code_and_reason(code, reason);
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.remove_listeners();
        if !self.finished {
            let _ = self.ws.close_with_code_and_reason(1000, "done");
        }
    }
}

type Handler<T> = Box<dyn FnMut(SocketEvent) -> ControlFlow<T>>;

struct Handling<T> {
    handler: RefCell<Handler<T>>,
    outcome: RefCell<Option<T>>,
    done: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl<T> Handling<T> {
    fn deliver(&self, event: SocketEvent) {
        if self.done.get() {
            return;
        }
        let closed = matches!(event, SocketEvent::Closed);
        let Ok(mut handler) = self.handler.try_borrow_mut() else {
            return;
        };
        if let ControlFlow::Break(outcome) = handler(event) {
            *self.outcome.borrow_mut() = Some(outcome);
            self.done.set(true);
        } else if closed {
            self.done.set(true);
        }
        drop(handler);
        if self.done.get() {
            if let Some(waker) = self.waker.borrow_mut().take() {
                waker.wake();
            }
        }
    }
}

/// A socket whose events go straight to a handler (see [`Socket::handle`]). Dropping it removes
/// the listeners and closes the socket.
pub struct HandledSocket<T> {
    ws: web_sys::WebSocket,
    shared: Rc<Handling<T>>,
    listeners: [Listener<web_sys::Event>; 3],
}

impl<T> HandledSocket<T> {
    /// Waits until the handler breaks (its value) or the socket closes (`None`).
    pub fn finished(&self) -> impl Future<Output = Option<T>> + '_ {
        Finished(&self.shared)
    }
}

struct Finished<'a, T>(&'a Rc<Handling<T>>);

impl<T> Future for Finished<'_, T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if self.0.done.get() {
            return Poll::Ready(self.0.outcome.borrow_mut().take());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for HandledSocket<T> {
    fn drop(&mut self) {
        for (name, f) in ["message", "close", "error"].iter().zip(&self.listeners) {
            let _ = self
                .ws
                .remove_event_listener_with_callback(name, f.as_ref().unchecked_ref());
        }
        let _ = self.ws.close_with_code_and_reason(1000, "done");
    }
}

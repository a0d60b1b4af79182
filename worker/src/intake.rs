//! How many bytes of request bodies the isolate holds at once.
//!
//! An append's body is read whole before it is stored, and each append to a stream waits in
//! its object while its body arrives, so concurrent large appends add up: locally, eight
//! concurrent 16 MiB appends to one stream grew workerd by 423 MB, and an isolate on
//! Cloudflare has 128 MB for every object it runs, while wasm memory never shrinks. Each body
//! therefore takes a share of one isolate-wide budget ([`Held`]) as its bytes arrive, and a
//! request that would take the isolate past it is answered 503 with `Retry-After` before more
//! of its body is held. Nothing was stored, so the client's retry is safe. WebSocket append
//! frames waiting in a stream object's line take a share too (`object/inbox.rs`).
//!
//! A small body (at most [`SMALL_BODY_BYTES`]) is not kept waiting by large ones: large
//! bodies together take at most the budget less its last sixteenth ([`reserve`]), which is left
//! to small ones, so an append of a few bytes still goes through while large uploads hold all
//! they may (32 uploads of 1 MiB held the whole 32 MiB budget, and every small append got 503
//! until one finished). And one body at a time may go past the budget ([`Held::may_exceed`]):
//! a producer's next append, which its producer's later appends, holding their shares, wait
//! for.
//!
//! Request bodies are read here ([`read_body`]): refused past the stream's limit (413), when
//! the budget is spent (503), or when they stop arriving (408).

use std::cell::Cell;

use edgestream::headers as h;
use edgestream::ProtocolError;
use wasm_bindgen::{JsCast, JsValue};
use worker::worker_sys::web_sys;
use worker::{Request, Response, Result};

use crate::http::{error, header, text, unavailable, within};

/// A body of at most this many bytes is small: it may take the share of the budget that large
/// bodies leave free.
pub const SMALL_BODY_BYTES: u64 = 64 * 1024;

thread_local! {
    /// Bytes reserved by every [`Held`] alive in this isolate.
    static HELD: Cell<u64> = const { Cell::new(0) };
    /// Of those, bytes reserved by large bodies (a share past [`SMALL_BODY_BYTES`]).
    static LARGE: Cell<u64> = const { Cell::new(0) };
    /// Whether a body holds the isolate's one place past the budget ([`Held::may_exceed`]).
    static EXCESS: Cell<bool> = const { Cell::new(false) };
}

/// The part of a `limit` that large bodies leave to small ones.
fn reserve(limit: u64) -> u64 {
    limit / 16
}

/// One body's share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Held {
    bytes: u64,
    limit: u64,
    /// It may take the isolate's one place past the budget.
    may_exceed: bool,
    /// It holds that place.
    excess: bool,
}

impl Held {
    /// A share holding nothing yet, under an isolate-wide `limit`.
    pub fn new(limit: u64) -> Held {
        Held {
            bytes: 0,
            limit,
            may_exceed: false,
            excess: false,
        }
    }

    /// Lets this body go past the budget when it would be refused, as long as no other body
    /// in the isolate does: for a producer's next append, which the appends of its producer
    /// that came before it wait for while holding their shares. One such body at a time keeps
    /// the isolate within the budget and one body more.
    pub fn may_exceed(&mut self) {
        self.may_exceed = true;
    }

    /// Reserves `more` bytes. False, with nothing reserved, when that would take the bodies
    /// the isolate holds past the limit, unless this is the only body held: one body of any
    /// size the server accepts always goes through. Large bodies stop short of the limit by
    /// its [`reserve`], which small ones may always use: a small body is refused only when
    /// it fits neither under the limit nor in the reserve beside the other small ones.
    pub fn grow(&mut self, more: u64) -> bool {
        let total = HELD.with(Cell::get);
        let large = LARGE.with(Cell::get);
        let others = total - self.bytes;
        let after = self.bytes.saturating_add(more);
        let was_large = self.bytes > SMALL_BODY_BYTES;
        let is_large = after > SMALL_BODY_BYTES;
        if others > 0 {
            let fits = total.saturating_add(more) <= self.limit;
            let refused = if is_large {
                let large_others = large - if was_large { self.bytes } else { 0 };
                !fits || large_others.saturating_add(after) > self.limit - reserve(self.limit)
            } else {
                let small = total - large;
                !fits && small.saturating_add(more) > reserve(self.limit)
            };
            if refused {
                if !self.may_exceed || (!self.excess && EXCESS.with(Cell::get)) {
                    return false;
                }
                EXCESS.with(|e| e.set(true));
                self.excess = true;
            }
        }
        HELD.with(|held| held.set(total.saturating_add(more)));
        if is_large {
            let moved = if was_large { more } else { after };
            LARGE.with(|l| l.set(large.saturating_add(moved)));
        }
        self.bytes = after;
        true
    }

    /// Gives the share back, for a body refused and read on only to be thrown away.
    pub fn release(&mut self) {
        HELD.with(|held| held.set(held.get() - self.bytes));
        if self.bytes > SMALL_BODY_BYTES {
            LARGE.with(|l| l.set(l.get() - self.bytes));
        }
        if self.excess {
            EXCESS.with(|e| e.set(false));
            self.excess = false;
        }
        self.bytes = 0;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

/// How much of a refused streamed body is read and thrown away before the refusal is sent.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

/// Why a request body was not read.
#[derive(Debug)]
pub enum BodyRefusal {
    /// Larger than `max` (413).
    TooLarge(ProtocolError),
    /// The isolate holds as many bodies as it may ([`Held`]): 503 with `Retry-After`.
    Busy,
    /// Malformed on the wire (a bad chunked encoding) or cut off by its client: 400, since
    /// the same request sent again fails the same way.
    Unreadable,
    /// Nothing arrived for the body's idle time (`BODY_IDLE_TIMEOUT_MS`): 408.
    Stalled,
}

impl BodyRefusal {
    /// The response that refuses the request.
    pub fn response(&self) -> Result<Response> {
        match self {
            BodyRefusal::TooLarge(e) => error(e),
            BodyRefusal::Busy => unavailable("too many large writes in progress; retry"),
            BodyRefusal::Unreadable => text(400, "the request body could not be read"),
            BodyRefusal::Stalled => text(408, "the request body stopped arriving"),
        }
    }
}

/// A declared body up to this size is reserved whole and read in one call: one wait instead
/// of one per chunk, which matters for small appends when the event loop is busy. A larger one
/// is counted as its bytes arrive, so a client that declares a large body and sends it slowly
/// holds only what it has sent.
const READ_WHOLE_BYTES: u64 = SMALL_BODY_BYTES;

/// Reads a request body completely, refusing it as soon as it grows past `max` bytes, so a
/// huge or endless body cannot exhaust the isolate's memory, or as soon as holding it would
/// take the bodies the isolate holds past their budget (`held` keeps its share until dropped),
/// or once nothing of it arrives for `idle_ms`, so a paused upload gives its share back.
pub async fn read_body(
    req: &mut Request,
    max: u64,
    held: &mut Held,
    idle_ms: u64,
) -> Result<std::result::Result<Vec<u8>, BodyRefusal>> {
    let declared =
        header(req.headers(), h::CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(len) = declared {
        if len > max {
            return Ok(Err(BodyRefusal::TooLarge(ProtocolError::PayloadTooLarge {
                limit: max,
            })));
        }
        if len <= READ_WHOLE_BYTES && held.grow(len) {
            return Ok(match whole_body(req.inner(), idle_ms).await {
                Ok(Some(body)) => Ok(body),
                Ok(None) => {
                    held.release();
                    Err(BodyRefusal::Stalled)
                }
                Err(e) => Err(unreadable(&e, held)),
            });
        }
    }
    let Some(stream) = req.inner().body() else {
        // No body at all.
        return Ok(Ok(Vec::new()));
    };
    let reader: web_sys::ReadableStreamDefaultReader = stream.get_reader().unchecked_into();
    // The chunks stay in JS until the end, so wasm memory takes one copy of the exact size.
    let mut chunks: Vec<js_sys::Uint8Array> = Vec::new();
    let mut total: u64 = 0;
    loop {
        let refusal = match within(idle_ms, next_chunk(&reader)).await {
            Some(Ok(Some(chunk))) => {
                let len = u64::from(chunk.length());
                total += len;
                if total > max {
                    BodyRefusal::TooLarge(ProtocolError::PayloadTooLarge { limit: max })
                } else if !held.grow(len) {
                    BodyRefusal::Busy
                } else {
                    chunks.push(chunk);
                    continue;
                }
            }
            Some(Ok(None)) => break,
            Some(Err(e)) => return Ok(Err(unreadable(&e, held))),
            None => BodyRefusal::Stalled,
        };
        drop(chunks);
        held.release();
        if matches!(refusal, BodyRefusal::Stalled) {
            let _ = reader.cancel();
        } else {
            // Answering before the body has been read leaves the upload half sent: the client
            // may see its connection reset instead of the answer, and a proxy in front of us may
            // wedge its keep-alive connection. Discard the rest, up to a bound, so the answer
            // arrives.
            discard(&reader, total, idle_ms).await;
        }
        return Ok(Err(refusal));
    }
    // `total <= max`, which a wasm allocation can hold.
    let mut body = vec![0u8; total as usize];
    let mut at = 0;
    for chunk in &chunks {
        let len = chunk.length() as usize;
        chunk.copy_to(&mut body[at..at + len]);
        at += len;
    }
    Ok(Ok(body))
}

#[wasm_bindgen::prelude::wasm_bindgen(inline_js = "export function bodyWithin(req, ms) {
    return new Promise((resolve, reject) => {
        const timer = setTimeout(resolve, ms, null);
        req.arrayBuffer().then(
            (buffer) => {
                clearTimeout(timer);
                resolve(new Uint8Array(buffer));
            },
            (e) => {
                clearTimeout(timer);
                reject(e);
            },
        );
    });
}")]
extern "C" {
    #[wasm_bindgen(catch, js_name = bodyWithin)]
    fn body_within(
        req: &web_sys::Request,
        ms: f64,
    ) -> std::result::Result<js_sys::Promise, JsValue>;
}

/// A request's whole body, or `None` if it has not all arrived within `idle_ms`. The wait, the
/// timer and the copy out of the runtime's buffer are one call from Rust, instead of a future
/// racing a [`worker::Delay`] (a wasm closure, a timer set and cleared through the glue, and
/// the array buffer wrapped in a second call).
async fn whole_body(req: &web_sys::Request, idle_ms: u64) -> Result<Option<Vec<u8>>> {
    let read = body_within(req, idle_ms as f64)?;
    let body = wasm_bindgen_futures::JsFuture::from(read).await?;
    if body.is_null() {
        return Ok(None);
    }
    Ok(Some(body.unchecked_into::<js_sys::Uint8Array>().to_vec()))
}

/// A body that failed to arrive: logged, and its share of the budget given back.
fn unreadable(e: &worker::Error, held: &mut Held) -> BodyRefusal {
    worker::console_warn!("request body unreadable: {e}");
    held.release();
    BodyRefusal::Unreadable
}

/// The next chunk of a body, or `None` at its end. A body cut off by its client is an error,
/// never an end, so a part of an append is never taken for all of it.
async fn next_chunk(
    reader: &web_sys::ReadableStreamDefaultReader,
) -> Result<Option<js_sys::Uint8Array>> {
    let read = wasm_bindgen_futures::JsFuture::from(reader.read()).await?;
    let done = js_sys::Reflect::get(&read, &JsValue::from_str("done"))?;
    if done.as_bool() != Some(false) {
        return Ok(None);
    }
    let value = js_sys::Reflect::get(&read, &JsValue::from_str("value"))?;
    value
        .dyn_into::<js_sys::Uint8Array>()
        .map(Some)
        .map_err(|_| worker::Error::RustError("request body chunk is not bytes".into()))
}

/// Reads the rest of a body and throws it away, up to [`DRAIN_LIMIT`] bytes in all, until it
/// ends or pauses for `idle_ms`.
async fn discard(reader: &web_sys::ReadableStreamDefaultReader, mut discarded: u64, idle_ms: u64) {
    while discarded < DRAIN_LIMIT {
        match within(idle_ms, next_chunk(reader)).await {
            Some(Ok(Some(chunk))) => discarded += u64::from(chunk.length()),
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> u64 {
        HELD.with(Cell::get)
    }

    #[test]
    fn bodies_share_one_budget_and_give_it_back() {
        let mut first = Held::new(100);
        // Alone, a body goes through whatever its size.
        assert!(first.grow(60));
        assert!(first.grow(60));
        assert_eq!(held(), 120);
        let mut second = Held::new(100);
        assert!(!second.grow(1), "past the limit while another body is held");
        assert_eq!(held(), 120);
        drop(first);
        assert_eq!(held(), 0);
        assert!(second.grow(70));
        let mut third = Held::new(100);
        assert!(third.grow(30));
        assert!(!third.grow(1));
        // A refused share still holds what it had, until given back.
        assert_eq!(held(), 100);
        third.release();
        assert_eq!(held(), 70);
        drop(third);
        drop(second);
        assert_eq!(held(), 0);
    }

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn large_bodies_leave_a_reserve_to_small_ones() {
        let limit = 32 * MIB;
        // Large bodies take the budget but for its last sixteenth (2 MiB).
        let mut large: Vec<Held> = (0..30).map(|_| Held::new(limit)).collect();
        for h in &mut large {
            assert!(h.grow(MIB));
        }
        let mut one_more = Held::new(limit);
        assert!(!one_more.grow(MIB), "a large body would take the reserve");
        assert!(one_more.grow(SMALL_BODY_BYTES), "a small one still fits");
        assert!(
            !one_more.grow(1),
            "grown large, it is held to the large bodies' part"
        );
        drop(one_more);
        // 32 small bodies at their largest fill the reserve; the next waits.
        let mut small: Vec<Held> = (0..32).map(|_| Held::new(limit)).collect();
        for h in &mut small {
            assert!(h.grow(SMALL_BODY_BYTES));
        }
        assert_eq!(held(), limit);
        assert!(!Held::new(limit).grow(1));
        drop(small);
        drop(large);
        assert_eq!(held(), 0);
        assert_eq!(LARGE.with(Cell::get), 0);
    }

    #[test]
    fn one_body_at_a_time_may_go_past_the_budget() {
        let limit = 32 * MIB;
        let mut others = Held::new(limit);
        assert!(others.grow(30 * MIB));
        let mut next = Held::new(limit);
        next.may_exceed();
        assert!(next.grow(8 * MIB));
        assert!(next.grow(8 * MIB), "it keeps the place as it grows");
        let mut second = Held::new(limit);
        second.may_exceed();
        assert!(!second.grow(MIB), "the place is taken");
        assert!(!Held::new(limit).grow(MIB));
        drop(next);
        assert!(second.grow(MIB), "given back, the place is free");
        drop(second);
        drop(others);
        assert_eq!(held(), 0);
        assert!(!EXCESS.with(Cell::get));
    }

    #[test]
    fn a_lone_large_body_still_leaves_the_reserve_to_small_ones() {
        let limit = 32 * MIB;
        let mut alone = Held::new(limit);
        assert!(alone.grow(40 * MIB));
        let mut small = Held::new(limit);
        assert!(small.grow(SMALL_BODY_BYTES));
        // A second large body waits for the first.
        assert!(!Held::new(limit).grow(SMALL_BODY_BYTES + 1));
        drop(small);
        drop(alone);
        assert_eq!(held(), 0);
        assert_eq!(LARGE.with(Cell::get), 0);
    }
}

//! The object's one alarm. Its handler does all of the object's timed work: expiry, delivery
//! to channels (`channel.rs`), the work owed to other objects (`owed.rs`) and closing client
//! sockets whose token has expired (`clients.rs`).
//!
//! Work that begins in a turn sets the alarm in that same turn: the runtime's `setAlarm` is
//! called right there, not after an `await`, so it commits with the turn's writes, and should
//! the isolate die before the work is done, the alarm does it.

use std::cell::Cell;

use wasm_bindgen::{JsCast, JsValue};
use worker::Result;

use super::store::Meta;
use super::StreamObject;

/// The alarm as this instance knows it.
pub struct Alarm {
    /// The runtime's `DurableObjectState`, to set the alarm in the caller's own turn.
    state: JsValue,
    /// Set by this instance and not fired since: a caller that only needs it set soon has
    /// nothing to do.
    armed: Cell<bool>,
}

impl Alarm {
    pub fn new(state: JsValue) -> Alarm {
        Alarm {
            state,
            armed: Cell::new(false),
        }
    }

    /// Sets the alarm for `at_ms`, or for the stream's expiry if that comes first, unless it
    /// is already known to be set.
    pub fn arm(&self, meta: &Meta, at_ms: i64) {
        if self.armed.get() {
            return;
        }
        let at = meta
            .expiry
            .deadline(meta.accessed_ms)
            .map_or(at_ms, |deadline| deadline.min(at_ms));
        self.set(at);
    }

    /// Sets the alarm for `at_ms`, whatever it was set for.
    pub fn set(&self, at_ms: i64) {
        match set_now(&self.state, at_ms) {
            Ok(()) => self.armed.set(true),
            Err(e) => {
                self.armed.set(false);
                worker::console_error!("stream: cannot set the alarm: {e:?}")
            }
        }
    }

    /// Whether this instance set the alarm and it has not fired since.
    pub fn armed(&self) -> bool {
        self.armed.get()
    }

    /// The alarm fired, or is to be set afresh: it is no longer known to be set.
    pub fn forget(&self) {
        self.armed.set(false);
    }
}

/// The time to give the runtime for an alarm due at `at_ms`. It refuses any at or before 1970
/// (an expiry a client may well ask for); a time already past fires at once all the same.
fn runtime_time(at_ms: i64) -> f64 {
    at_ms.max(1) as f64
}

/// Calls `storage.setAlarm` in the caller's turn; the returned promise is only logged.
fn set_now(state: &JsValue, at_ms: i64) -> std::result::Result<(), JsValue> {
    let storage = js_sys::Reflect::get(state, &"storage".into())?;
    let set: js_sys::Function = js_sys::Reflect::get(&storage, &"setAlarm".into())?.dyn_into()?;
    let promise: js_sys::Promise = set
        .call1(&storage, &JsValue::from_f64(runtime_time(at_ms)))?
        .dyn_into()?;
    wasm_bindgen_futures::spawn_local(async move {
        if let Err(e) = wasm_bindgen_futures::JsFuture::from(promise).await {
            worker::console_error!("stream: setting the alarm failed: {e:?}");
        }
    });
    Ok(())
}

/// Sets the alarm for `at_ms`, awaiting the runtime.
pub async fn schedule(obj: &StreamObject, at_ms: i64) -> Result<()> {
    let when = js_sys::Date::new(&js_sys::Number::from(runtime_time(at_ms)));
    obj.state
        .storage()
        .set_alarm(worker::ScheduledTime::new(when))
        .await
}

/// Sets the alarm for `at_ms` unless it is already set no later.
pub async fn by(obj: &StreamObject, at_ms: i64) -> Result<()> {
    match obj.state.storage().get_alarm().await? {
        Some(set) if set <= at_ms => Ok(()),
        _ => schedule(obj, at_ms).await,
    }
}

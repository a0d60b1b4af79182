//! The object's one alarm. Its handler does all of the object's timed work: expiry
//! (`expiry.rs`), delivery to channels (`channel.rs`), the work owed to other objects
//! (`owed.rs`) and closing client sockets whose token has expired (`clients.rs`).
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
    /// When this instance last set the alarm for (or found it set for), if it has not fired
    /// since: a caller that needs it by then has nothing to do, and one that needs it later
    /// must not move it, since earlier work (a token's expiry, an owed retry) set it there.
    at: Cell<Option<i64>>,
}

impl Alarm {
    pub fn new(state: JsValue) -> Alarm {
        Alarm {
            state,
            at: Cell::new(None),
        }
    }

    /// Sets the alarm for `at_ms`, or for the stream's expiry if that comes first, unless it
    /// is already known to be set no later.
    pub fn arm(&self, meta: &Meta, at_ms: i64) {
        let at = meta
            .expiry
            .deadline(meta.accessed_ms)
            .map_or(at_ms, |deadline| deadline.min(at_ms));
        self.set(at);
    }

    /// Sets the alarm for `at_ms`, unless it is already known to be set no later.
    pub fn set(&self, at_ms: i64) {
        if self.set_by(at_ms) {
            return;
        }
        match set_now(&self.state, at_ms) {
            Ok(()) => self.at.set(Some(at_ms)),
            Err(e) => {
                self.at.set(None);
                worker::console_error!("stream: cannot set the alarm: {e:?}")
            }
        }
    }

    /// Whether the alarm is known to be set for `at_ms` or sooner.
    pub fn set_by(&self, at_ms: i64) -> bool {
        self.at.get().is_some_and(|at| at <= at_ms)
    }

    /// The alarm fired, or is to be set afresh: it is no longer known to be set.
    pub fn forget(&self) {
        self.at.set(None);
    }

    /// What the runtime was told or answered, from an `await`: set for `at_ms`.
    fn learn(&self, at_ms: i64) {
        self.at.set(Some(at_ms));
    }

    /// Moves the alarm to `at_ms`, or clears it: for timed work that is not soon, so a caller
    /// that needs it soon sets it again.
    fn defer(&self, at_ms: Option<i64>) {
        if at_ms.is_some() && self.at.get() == at_ms {
            return;
        }
        let result = match at_ms {
            Some(at) => set_now(&self.state, at),
            None => delete_now(&self.state),
        };
        match result {
            Ok(()) => self.at.set(at_ms),
            Err(e) => {
                self.at.set(None);
                worker::console_error!("stream: cannot move the alarm: {e:?}");
            }
        }
    }
}

/// The work a request armed the alarm for is done (its subscriptions told, its channels fed,
/// its registration made): the alarm moves to the object's next timed work, or is cleared, so
/// that the request does not wake the object `SAFETY_MS` later for nothing. Only when this
/// instance knows when it is set; and in one turn, so nothing another request owes meanwhile
/// is missed.
pub fn stand_down(obj: &StreamObject) {
    if obj.alarm.at.get().is_none() {
        return;
    }
    match next_work(obj) {
        Ok(Some(Next::Soon)) => {}
        Ok(Some(Next::At(at_ms))) => obj.alarm.defer(Some(at_ms)),
        Ok(None) => obj.alarm.defer(None),
        Err(e) => worker::console_error!("stream: cannot tell the alarm's next work: {e}"),
    }
}

/// When the alarm is next needed.
enum Next {
    /// Work is owed, or under way: the alarm stays as it is.
    Soon,
    /// The stream's expiry, or a client socket's token expiry.
    At(i64),
}

/// What the alarm handler would find to do, and when: `None` for nothing at all.
fn next_work(obj: &StreamObject) -> Result<Option<Next>> {
    // First: a stream removed meanwhile (by a DELETE, or found expired) owes its removal.
    if !obj.store()?.owed()?.is_empty() {
        return Ok(Some(Next::Soon));
    }
    timed_work(obj)
}

/// As [`next_work`], leaving out the work owed in `pending` rows: the rest of the alarm's
/// timed work, all of it.
fn timed_work(obj: &StreamObject) -> Result<Option<Next>> {
    // An append whose subscriptions may not have its tail (another request's, whose
    // notification is on its way) owes them, with no row: the alarm is its record.
    if super::subscribers::untold(obj)? {
        return Ok(Some(Next::Soon));
    }
    let Some(meta) = obj.meta()? else {
        return Ok(None);
    };
    if meta.deleted || super::channel::any_behind(obj, &meta)? {
        return Ok(Some(Next::Soon));
    }
    let expiry = meta.expiry.deadline(meta.accessed_ms);
    // Seen, not closed: the socket whose append this is must still get its answer.
    let token = obj
        .hub
        .first_client_expiry()
        .map(|secs| secs.saturating_mul(1000));
    Ok(expiry.into_iter().chain(token).min().map(Next::At))
}

/// Sets the alarm for the work owed in `pending` rows, next due at `due_ms`
/// ([`super::owed`]), or for the object's other timed work if that comes first. When nothing
/// else is under way (what [`next_work`] calls soon: subscriptions that may not have the tail,
/// a channel behind, a deleted stream's removal), that is the whole of the alarm's work, so an
/// alarm set earlier is moved later to it: a failing task a request tried again backs off
/// further than the alarm set for its last try (or for the request, `SAFETY_MS` on), which
/// would otherwise fire once, find nothing due and be set again. That move is made in the
/// caller's turn, as [`stand_down`] makes its own.
pub async fn owed_by(obj: &StreamObject, due_ms: i64) -> Result<()> {
    match timed_work(obj)? {
        Some(Next::Soon) => by(obj, due_ms).await,
        Some(Next::At(at_ms)) => {
            obj.alarm.defer(Some(at_ms.min(due_ms)));
            Ok(())
        }
        None => {
            obj.alarm.defer(Some(due_ms));
            Ok(())
        }
    }
}

/// The latest alarm given to the runtime: 2160-02-18. workerd refuses dates past 2189 ("This
/// API doesn't support dates after 2189"), and `Stream-Expires-At: 9999-12-31T23:59:59Z` is a
/// common way to say "never". An alarm for a later expiry fires then, finds the stream not yet
/// expired, and is set again.
const LATEST_ALARM_MS: i64 = 6_000_000_000_000;

/// The time to give the runtime for an alarm due at `at_ms`. It refuses any at or before 1970
/// (an expiry a client may well ask for) and any past 2189 ([`LATEST_ALARM_MS`]); a time
/// already past fires at once all the same.
fn runtime_time(at_ms: i64) -> f64 {
    at_ms.clamp(1, LATEST_ALARM_MS) as f64
}

/// Calls `storage.setAlarm` in the caller's turn.
fn set_now(state: &JsValue, at_ms: i64) -> std::result::Result<(), JsValue> {
    call_now(state, "setAlarm", &[JsValue::from_f64(runtime_time(at_ms))])
}

/// Calls `storage.deleteAlarm` in the caller's turn.
fn delete_now(state: &JsValue) -> std::result::Result<(), JsValue> {
    call_now(state, "deleteAlarm", &[])
}

/// Calls `storage.<method>` in the caller's turn, so it commits with the turn's writes; the
/// returned promise is only logged.
fn call_now(state: &JsValue, method: &str, args: &[JsValue]) -> std::result::Result<(), JsValue> {
    let storage = js_sys::Reflect::get(state, &"storage".into())?;
    let f: js_sys::Function = js_sys::Reflect::get(&storage, &method.into())?.dyn_into()?;
    let args: js_sys::Array = args.iter().collect();
    let promise: js_sys::Promise = f.apply(&storage, &args)?.dyn_into()?;
    let method = method.to_string();
    wasm_bindgen_futures::spawn_local(async move {
        if let Err(e) = wasm_bindgen_futures::JsFuture::from(promise).await {
            worker::console_error!("stream: {method} failed: {e:?}");
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
        .await?;
    obj.alarm.learn(at_ms);
    Ok(())
}

/// Sets the alarm for `at_ms` unless it is already set no later.
pub async fn by(obj: &StreamObject, at_ms: i64) -> Result<()> {
    if obj.alarm.set_by(at_ms) {
        return Ok(());
    }
    match obj.state.storage().get_alarm().await? {
        Some(set) if set <= at_ms => {
            obj.alarm.learn(set);
            Ok(())
        }
        _ => schedule(obj, at_ms).await,
    }
}

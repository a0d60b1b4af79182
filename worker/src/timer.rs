//! A timer future that can be awaited again and again from different tasks.
//!
//! `worker::Delay` remembers the waker of the task that first polled it. An SSE body is pulled
//! by a new task for every chunk, so a `Delay` kept across chunks would wake a task that has
//! already finished, and the connection would never reach its deadline. [`Deadline`] wakes
//! whichever task polled it last, so one timer per connection replaces a timer per frame.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use wasm_bindgen::prelude::Closure;
use wasm_bindgen::JsCast;
use worker::web_sys::WorkerGlobalScope;

#[derive(Default)]
struct Shared {
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// Resolves once `after` has passed; cancels its timer when dropped.
pub struct Deadline {
    shared: Rc<Shared>,
    timeout_id: Option<i32>,
    _callback: Closure<dyn FnMut()>,
}

impl Deadline {
    pub fn after(after: Duration) -> Deadline {
        let shared = Rc::new(Shared::default());
        let on_fire = shared.clone();
        let callback = Closure::<dyn FnMut()>::new(move || {
            on_fire.fired.set(true);
            if let Some(waker) = on_fire.waker.borrow_mut().take() {
                waker.wake();
            }
        });
        let ms = i32::try_from(after.as_millis()).unwrap_or(i32::MAX);
        // workerd's global scope is not an `instanceof WorkerGlobalScope`, so no checked cast.
        let global: WorkerGlobalScope = js_sys::global().unchecked_into();
        let timeout_id = global
            .set_timeout_with_callback_and_timeout_and_arguments_0(
                callback.as_ref().unchecked_ref(),
                ms,
            )
            .ok();
        if timeout_id.is_none() {
            // No timer could be set: fire at once rather than never.
            shared.fired.set(true);
        }
        Deadline {
            shared,
            timeout_id,
            _callback: callback,
        }
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.fired.get() {
            return Poll::Ready(());
        }
        let mut waker = self.shared.waker.borrow_mut();
        match waker.as_ref() {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Some(id) = self.timeout_id {
            let global: WorkerGlobalScope = js_sys::global().unchecked_into();
            global.clear_timeout_with_handle(id);
        }
    }
}

//! Writes that are stored together or not at all.
//!
//! An object's writes in one turn are committed together, but a statement that fails (storage
//! full, out of memory) undoes only itself: the writes before it are committed all the same. An
//! append that failed after its first rows would leave them readable, with no producer state to
//! say they were stored, so its retry would store them again. `transactionSync` rolls all of
//! its writes back when its callback fails.

use wasm_bindgen::closure::ScopedClosure;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use worker::{Error, Result};

#[wasm_bindgen]
extern "C" {
    /// The object's `DurableObjectStorage`, for the method `worker` does not bind.
    pub type Transactional;
    #[wasm_bindgen(method, catch, js_name = transactionSync)]
    fn transaction_sync(
        this: &Transactional,
        body: &ScopedClosure<dyn FnMut() -> std::result::Result<(), JsValue>>,
    ) -> std::result::Result<JsValue, JsValue>;
    #[wasm_bindgen(method, catch, js_name = deleteAll)]
    fn delete_all_js(this: &Transactional) -> std::result::Result<js_sys::Promise, JsValue>;
}

impl Transactional {
    /// The storage of the object whose state is `state`.
    pub fn of(state: &worker::worker_sys::DurableObjectState) -> Result<Transactional> {
        Ok(state.storage()?.unchecked_into())
    }

    /// Deletes everything the object stores, its tables and (at this compatibility date) its
    /// alarm with them, in the caller's turn: the call is made here, not after an `await`, so
    /// nothing another request does in between is lost. The returned promise is only logged.
    pub fn delete_all(&self) -> Result<()> {
        let promise = self.delete_all_js().map_err(Error::from)?;
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(e) = wasm_bindgen_futures::JsFuture::from(promise).await {
                worker::console_error!("storage: deleteAll failed: {e:?}");
            }
        });
        Ok(())
    }

    /// Runs `f`, keeping its writes only if it returns `Ok`.
    pub fn atomically<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut f = Some(f);
        let mut out: Option<Result<T>> = None;
        let failed = {
            let mut body = || match f.take().map(|f| f()) {
                Some(Ok(v)) => {
                    out = Some(Ok(v));
                    Ok(())
                }
                Some(Err(e)) => {
                    // Thrown so that the runtime rolls back; `out` keeps the error itself.
                    let thrown = JsValue::from_str(&e.to_string());
                    out = Some(Err(e));
                    Err(thrown)
                }
                None => Ok(()),
            };
            let closure = ScopedClosure::borrow_mut(&mut body);
            self.transaction_sync(&closure).err()
        };
        match (out, failed) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(_)), Some(e)) | (None, Some(e)) => Err(Error::from(e)),
            (Some(Ok(v)), None) => Ok(v),
            (None, None) => Err(Error::RustError("transaction did not run".into())),
        }
    }
}

//! edgestream's browser client, compiled to wasm and wrapped by the npm package `edgestream`.
//!
//! The protocol rules come from the core crate (`edgestream`): the SSE decoder and control
//! events, base64, offset and header validation, header names. This crate adds what a client
//! needs around them: requests with fresh headers per attempt, backoff, and a reader that
//! catches up and then follows the stream over SSE, long-poll or WebSocket.
//!
//! - [`reader`]: the stream reader (`Reader` in JS).
//! - [`ops`]: create, head, append/close, delete, and option validation.
//! - [`http`]: one request, its retries and its typed errors.
//! - [`error`]: the typed errors JS sees, by stable `code`.
//! - [`sse`], [`batch`], [`offset`], [`backoff`], [`js`]: the pieces they share.

pub mod backoff;
pub mod batch;
pub mod error;
pub mod http;
pub mod js;
pub mod offset;
pub mod ops;
pub mod reader;
pub mod sse;

use wasm_bindgen::prelude::*;

#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

/// Runs when the module is instantiated: readable panic messages in debug builds only.
#[wasm_bindgen(start)]
pub fn start() {
    #[cfg(debug_assertions)]
    console_error_panic_hook::set_once();
}

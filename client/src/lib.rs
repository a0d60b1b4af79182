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
//!
//! The crate is `no_std` with `alloc`; the `std` feature (on by default) links std back in. The
//! npm package's release build turns it off: a panic then traps at once through the handler
//! below, which is what std's handler ends in too under `panic = "abort"`, minus the message
//! formatting (`core::fmt`) and payload machinery it would carry into the wasm for nobody to read.

#![no_std]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod backoff;
pub mod batch;
pub mod error;
pub mod http;
pub mod js;
pub mod offset;
pub mod ops;
pub mod reader;
pub mod sse;

#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

#[cfg(all(target_family = "wasm", not(feature = "std")))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

/// Runs when the module is instantiated: readable panic messages in debug builds. Other
/// builds have no start function at all (an empty one still costs an export, a glue function
/// and a call at instantiation).
#[cfg(all(debug_assertions, feature = "std"))]
#[wasm_bindgen::prelude::wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

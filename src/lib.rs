//! edgestream's protocol core: the rules of the Durable Streams protocol, sans-IO.
//!
//! The Worker (`worker/`) and the browser client (`client/`) both build on this crate, so the
//! server and the client cannot disagree about a rule. It does no I/O, reads no clock and draws
//! no random numbers: callers pass time (Unix milliseconds) and randomness in.
//!
//! - [`offset`]: the server's [`Offset`] and strict parsing of the offsets clients send.
//! - [`headers`]: header names and their validation (TTL, expiry, producers, forks, types).
//! - [`producer`]: the idempotent-producer state machine.
//! - [`lease`]: the writer lease, one exclusive appender per stream.
//! - [`stream`]: create-or-match, append precedence, closing, expiry, forks, cache policy.
//! - [`json`]: JSON mode: validation, one-level flattening, the stored framing.
//! - [`sse`]: the SSE encoder and the incremental decoder.
//! - [`channel`]: hierarchical channels: the header, which paths a channel covers, envelopes.
//! - [`cursor`], [`etag`]: CDN collapsing and cache validation.
//! - [`subscription`]: glob links, lease bounds and webhook retry for `__ds/subscriptions`.
//! - [`token`]: access tokens: operations, path-prefix scopes, expiry.
//! - [`ws`]: the server's messages on a `live=ws` socket, built and read.
//! - [`error`]: every refusal with its status, text and headers.
//! - [`base64`], [`time`]: small codecs kept in-crate to keep the wasm client small.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod base64;
pub mod channel;
pub mod cursor;
pub mod error;
pub mod etag;
pub mod headers;
pub mod json;
pub mod lease;
pub mod offset;
pub mod producer;
pub mod sse;
pub mod stream;
pub mod subscription;
pub mod time;
pub mod token;
pub mod ws;

pub use error::ProtocolError;
pub use headers::{ContentType, SseEncoding};
pub use offset::{Offset, ReadFrom};
pub use producer::{ProducerDecision, ProducerState};
pub use stream::Expiry;

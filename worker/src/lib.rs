//! edgestream's Cloudflare Worker: the Durable Streams protocol at the edge.
//!
//! - [`edge`]: the fetch handler every request enters; validates and routes, holds SSE and
//!   long-poll readers.
//! - [`object`]: `StreamObject`, one SQLite-backed Durable Object per stream.
//! - [`subscription`]: the reserved `__ds` subscription APIs (webhooks, pull-wake).
//! - [`auth`]: access tokens (HMAC-SHA256, scoped to a path prefix and operations).
//! - [`frame`]: the frames an object sends its live readers.
//! - [`demo`]: the demo app, embedded at build time and served outside `/v1/`.
//! - [`security`]: the security and CORS headers on every response.
//! - [`wsproto`]: the messages of `live=ws`, spoken by the edge and the object.
//! - [`intake`]: the isolate's budget for request bodies held in memory.
//! - [`fault`]: fault injection for tests (`FAULT_MARKER`), off by default.
//! - [`crypto`]: WebCrypto for token MACs, random tokens and the webhook signing key.
//! - [`schema`]: creating and upgrading each object's SQLite tables.
//! - [`rows`]: counting each request's SQLite rows read and written, for tests.
//! - [`transaction`]: writes stored together or not at all (`transactionSync`).
//! - [`turnstile`]: work that awaits and must not interleave takes turns.
//! - [`pipe`]: the SSE response body the edge writes from socket events.
//! - [`path`], [`config`], [`http`], [`reply`], [`socket`]: the pieces both sides share.

pub mod auth;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod edge;
pub mod fault;
pub mod frame;
pub mod http;
pub mod intake;
pub mod object;
pub mod path;
pub mod pipe;
pub mod reply;
pub mod rows;
pub mod schema;
pub mod security;
pub mod socket;
pub mod subscription;
pub mod transaction;
pub mod turnstile;
pub mod wsproto;

use worker::worker_sys::web_sys;
use worker::{event, Context, Env, Result};

#[event(fetch)]
async fn fetch(req: web_sys::Request, env: Env, _ctx: Context) -> Result<web_sys::Response> {
    edge::handle(http::request_without_cf(req), env).await
}

//! The edge Worker: routes `/v1/stream/<name>` to the stream's Durable Object.
//!
//! It refuses what it can check without storage (method, path, offset and header syntax, body
//! size) so bad requests never wake an object, holds SSE and long-poll readers itself (see
//! [`live`]), hands `live=ws` clients over to the object (see `ws.rs`), and puts the security
//! and CORS headers on every response it makes (see [`security`]).

mod live;
mod ws;

use edgestream::headers::{self as h, ContentType, ForkHeaders, LiveMode, ProducerHeaders};
use edgestream::lease::LeaseRequest;
use edgestream::stream::Expiry;
use edgestream::token::{AuthError, Operation};
use edgestream::{ProtocolError, ReadFrom};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use worker::worker_sys::web_sys;
use worker::{Env, Headers, Method, Request, Response, Result, Stub};

use crate::auth;
use crate::config::Config;
use crate::http::{self, header};
use crate::path::{PathError, StreamName, STREAM_PREFIX};
use crate::security;

/// What answers a request: a response the edge made, which it decorates (see [`security`]),
/// or the stream object's, passed back as the runtime gave it when the object decorated it
/// already, as it does every response it makes.
enum Reply {
    Edge(Response),
    Object(web_sys::Response),
}

/// Handles one request from the outside world.
pub async fn handle(req: Request, env: Env) -> Result<web_sys::Response> {
    let config = Config::from_env(&env);
    let cors = security::Cors::of(req.headers(), &config);
    let inner = Clone::clone(req.inner()); // the handle, not `Request.clone()`
    let resp = match route(req, &env, &config).await {
        Ok(Reply::Object(resp)) if cors.decorated(&resp) => return Ok(resp),
        Ok(Reply::Object(resp)) => Response::from(resp),
        Ok(Reply::Edge(resp)) => resp,
        Err(e) => {
            worker::console_error!("edge: {}: {e}", http::described(&inner));
            http::unavailable("temporary failure; retry")?
        }
    };
    Ok(cors.decorate(resp)?.into())
}

/// Largest total size of a request's header names and values. Every protocol header is short;
/// anything near this is an attack or a mistake, refused before it reaches storage.
const MAX_HEADER_BYTES: usize = 32 * 1024;

async fn route(req: Request, env: &Env, config: &Config) -> Result<Reply> {
    if http::header_bytes(req.headers())? > MAX_HEADER_BYTES {
        return edge(http::text(431, "request headers are too large"));
    }
    // workers-rs reads any method it does not know as GET, so the runtime's own name decides.
    if !KNOWN_METHODS.contains(&req.inner().method().as_str()) {
        return edge(not_allowed());
    }
    let url = req.url()?;
    // workerd hands the Worker every WebSocket upgrade as a GET, whatever its method: a DELETE
    // or POST with `Upgrade: websocket` would be served as a read. Only live=ws reads upgrade.
    let upgrade = header(req.headers(), "upgrade");
    if upgrade.is_some_and(|v| v.to_ascii_lowercase().contains("websocket"))
        && !url.query_pairs().any(|(k, v)| k == "live" && v == "ws")
    {
        return edge(http::text(
            400,
            "a WebSocket upgrade is only for a live=ws read",
        ));
    }
    if req.method() == Method::Options {
        return edge(preflight());
    }
    if let Some(rest) = url
        .path()
        .strip_prefix(STREAM_PREFIX)
        .and_then(|p| p.strip_prefix("__ds/"))
    {
        let rest = rest.to_string();
        // The key set is public; callbacks, acks and releases carry their own wake tokens.
        match crate::subscription::uses_wake_token(&req.method(), &rest) {
            // Its MAC is checked here, so a forged token starts no subscription object.
            Some(id) => {
                if !auth::wake_token_issued(&req, env, id).await? {
                    let invalid = edgestream::subscription::SubscriptionError::TokenInvalid;
                    return edge(crate::subscription::error(invalid));
                }
            }
            None if rest == "jwks.json" => {}
            None => {
                if let Err(e) = auth::authorize(&req, &url, env, Operation::Admin, "").await? {
                    return edge(refuse(e));
                }
            }
        }
        return edge(crate::subscription::route(req, &url, &rest, env, config).await);
    }
    let site = crate::fault::Site::Edge;
    if crate::fault::trap_if_asked(config.fault_marker.as_deref(), url.path(), site) {
        crate::fault::trap_after_await().await;
    }
    let name = match StreamName::from_url_path(url.path()) {
        Ok(name) => name,
        Err(PathError::NotAStream) => return edge(crate::demo::serve(&req, url.path())),
        Err(e) => return edge(http::text(e.status(), e.message())),
    };
    if name.is_reserved() {
        return edge(http::text(404, "not found"));
    }
    let access = match Operation::for_method(req.method().as_ref()) {
        Some(op) => match auth::authorize(&req, &url, env, op, name.as_str()).await? {
            Ok(access) => Some(access),
            Err(e) => return edge(refuse(e)),
        },
        None => None,
    };
    match req.method() {
        Method::Get => {
            let read_until = access.as_ref().and_then(auth::Access::read_until);
            get(req, &url, &name, env, config, read_until).await
        }
        Method::Head | Method::Delete => forward(req, &url, &name, env).await,
        Method::Put => {
            let source = match check_create(req.headers(), config) {
                Ok(source) => source,
                Err(e) => return edge(http::error(&e)),
            };
            // A fork is a copy of its source: whoever makes one must be able to read it. The
            // token verified above is checked against the source, not verified twice.
            if let (Some(source), Some(access)) = (source, &access) {
                if let Err(e) = access.allows(Operation::Read, source.as_str()) {
                    return edge(refuse(e));
                }
            }
            match forward(req, &url, &name, env).await? {
                Reply::Object(created) if created.status() == 201 => {
                    let created = http::mutable(Response::from(created))?;
                    let location = format!("{}{}", url.origin().ascii_serialization(), url.path());
                    created.headers().set(h::LOCATION, &location)?;
                    Ok(Reply::Edge(created))
                }
                reply => Ok(reply),
            }
        }
        Method::Post => {
            if let Err(e) = check_append(req.headers(), config) {
                return edge(http::error(&e));
            }
            forward(req, &url, &name, env).await
        }
        _ => edge(not_allowed()),
    }
}

/// A response the edge made, as a [`Reply`].
fn edge(resp: Result<Response>) -> Result<Reply> {
    resp.map(Reply::Edge)
}

/// The methods any route answers; every other one is 405.
const KNOWN_METHODS: [&str; 6] = ["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS"];

fn not_allowed() -> Result<Response> {
    let resp = http::error(&ProtocolError::MethodNotAllowed)?;
    resp.headers().set("allow", &KNOWN_METHODS.join(", "))?;
    Ok(resp)
}

/// 401 or 403 for a request without the access it needs.
fn refuse(e: AuthError) -> Result<Response> {
    let resp = http::text(e.status(), e.message())?;
    if e.status() == 401 {
        resp.headers()
            .set("www-authenticate", "Bearer realm=\"edgestream\"")?;
    }
    Ok(resp)
}

/// CORS preflight: every method and protocol header is allowed.
fn preflight() -> Result<Response> {
    let headers = Headers::new();
    headers.set("access-control-allow-methods", &KNOWN_METHODS.join(", "))?;
    headers.set("access-control-allow-headers", h::CORS_ALLOW_HEADERS)?;
    headers.set("access-control-max-age", "86400")?;
    Ok(Response::empty()?.with_status(204).with_headers(headers))
}

/// PUT headers that can be checked without the stream. Answers a fork's source.
fn check_create(
    headers: &Headers,
    config: &Config,
) -> std::result::Result<Option<StreamName>, ProtocolError> {
    check_length(header(headers, h::CONTENT_LENGTH), config)?;
    // Not its length: a PUT that confirms a stream created before the cap names its type.
    if let Some(ct) = header(headers, h::CONTENT_TYPE).filter(|v| !v.trim().is_empty()) {
        ContentType::parse_stored(&ct)?;
    }
    Expiry::from_headers(
        header(headers, h::STREAM_TTL).as_deref(),
        header(headers, h::STREAM_EXPIRES_AT).as_deref(),
    )?;
    let channel = header(headers, edgestream::channel::STREAM_CHANNEL);
    edgestream::channel::parse_header(channel.as_deref())?;
    let forked_from = header(headers, h::STREAM_FORKED_FROM);
    let fork_offset = header(headers, h::STREAM_FORK_OFFSET);
    let sub_offset = header(headers, h::STREAM_FORK_SUB_OFFSET);
    if let Some(fork) = ForkHeaders::parse(
        forked_from.as_deref(),
        fork_offset.as_deref(),
        sub_offset.as_deref(),
    )? {
        let source = StreamName::from_header_path(fork.source)
            .map_err(|_| ProtocolError::Header(h::HeaderError::ForkedFrom))?;
        return Ok(Some(source));
    }
    Ok(None)
}

/// POST headers that can be checked without the stream.
pub(crate) fn check_append(
    headers: &Headers,
    config: &Config,
) -> std::result::Result<(), ProtocolError> {
    // In one call: an append is the most frequent request.
    let [length, id, epoch, seq, lease, stream_seq] = http::header_values(
        headers,
        [
            h::CONTENT_LENGTH,
            h::PRODUCER_ID,
            h::PRODUCER_EPOCH,
            h::PRODUCER_SEQ,
            h::STREAM_LEASE_TTL,
            h::STREAM_SEQ,
        ],
    );
    check_length(length, config)?;
    let producer = ProducerHeaders::parse(id.as_deref(), epoch.as_deref(), seq.as_deref())?;
    if let Some(lease) = lease {
        LeaseRequest::parse(&lease)?;
        if producer.is_none() {
            return Err(h::HeaderError::LeaseWithoutProducer.into());
        }
    }
    let stream_seq = http::stream_seq(stream_seq);
    if let Some(seq) = &stream_seq {
        h::parse_stream_seq(seq)?;
    }
    // They name and order writers: two different values must not arrive as one.
    if [&id, &stream_seq]
        .iter()
        .any(|v| v.as_deref().is_some_and(http::decoded_lossily))
    {
        return Err(ProtocolError::BadRequest(
            "Producer-Id and Stream-Seq must be UTF-8",
        ));
    }
    Ok(())
}

/// `Content-Length`'s value against `MAX_APPEND_BYTES`.
fn check_length(length: Option<String>, config: &Config) -> std::result::Result<(), ProtocolError> {
    match length.map(|v| v.trim().parse::<u64>()) {
        Some(Ok(len)) if len > config.max_append_bytes => Err(ProtocolError::PayloadTooLarge {
            limit: config.max_append_bytes,
        }),
        Some(Err(_)) => Err(ProtocolError::BadRequest("Content-Length is not a number")),
        _ => Ok(()),
    }
}

async fn get(
    req: Request,
    url: &worker::Url,
    name: &StreamName,
    env: &Env,
    config: &Config,
    read_until: Option<i64>,
) -> Result<Reply> {
    let offsets = http::query_values(url, "offset");
    let from = match ReadFrom::from_query(offsets.iter().map(String::as_str)) {
        Ok(from) => from,
        Err(e) => return edge(http::error(&e.into())),
    };
    let mode =
        match LiveMode::from_query(http::query_values(url, "live").iter().map(String::as_str)) {
            Ok(mode) => mode,
            Err(e) => return edge(http::error(&e.into())),
        };
    let Some(mode) = mode else {
        return forward(req, url, name, env).await;
    };
    if offsets.is_empty() {
        return edge(http::error(&ProtocolError::BadRequest(
            "live reads require an offset",
        )));
    }
    let cursor = http::query_value(url, "cursor");
    let stub = stub_for(env, name)?;
    edge(match mode {
        LiveMode::LongPoll => {
            let if_none_match = http::header(req.headers(), h::IF_NONE_MATCH);
            let asked = live::Asked {
                cursor: cursor.as_deref(),
                if_none_match: if_none_match.as_deref(),
            };
            let signal = req.inner().signal();
            live::long_poll(&stub, name, from, asked, config, read_until, &signal).await
        }
        LiveMode::Sse => {
            let signal = req.inner().signal();
            live::sse(stub, name.clone(), from, cursor, config, read_until, signal).await
        }
        LiveMode::WebSocket => {
            ws::websocket(&req, url, env, stub, name.clone(), from, cursor, config).await
        }
    })
}

pub fn stub_for(env: &Env, name: &StreamName) -> Result<Stub> {
    env.durable_object("STREAMS")?
        .id_from_name(name.as_str())?
        .get_stub()
}

/// The object-side URL of a stream: the validated name re-encoded, so the object never sees a
/// client's raw path or host.
pub fn object_url(name: &StreamName, query: Option<&str>) -> String {
    match query {
        Some(q) if !q.is_empty() => format!(
            "https://edgestream{STREAM_PREFIX}{}?{q}",
            name.url_encoded()
        ),
        _ => format!("https://edgestream{STREAM_PREFIX}{}", name.url_encoded()),
    }
}

#[wasm_bindgen::prelude::wasm_bindgen(
    inline_js = "export function forwardToObject(stub, req, url, internal) {
    const init = { method: req.method, headers: req.headers };
    if (req.method === 'PUT' || req.method === 'POST') init.body = req.body;
    // The new request's headers are its own copy, and mutable.
    const forwarded = new Request(url, init);
    const headers = forwarded.headers;
    for (const name of req.headers.keys()) {
        if (name.startsWith(internal)) headers.delete(name);
    }
    headers.delete('upgrade');
    return stub.fetch(forwarded);
}"
)]
extern "C" {
    /// The whole of [`forward`] but the wait, in one call from Rust instead of one per header
    /// and per step (copy, strip, `RequestInit`, `Request`, fetch): an append crossed from
    /// wasm to JS about twice as often before.
    #[wasm_bindgen(catch, js_name = forwardToObject)]
    fn forward_to_object(
        stub: &JsValue,
        req: &web_sys::Request,
        url: &str,
        internal: &JsValue,
    ) -> std::result::Result<js_sys::Promise, JsValue>;
}

thread_local! {
    /// [`http::INTERNAL_PREFIX`], made a JS string once per isolate.
    static INTERNAL: JsValue = JsValue::from_str(http::INTERNAL_PREFIX);
}

/// Passes a request to the stream's object, body streamed through for PUT and POST, and
/// returns its response as the runtime gave it. Headers it copies but `upgrade` and the
/// internal ones ([`http::INTERNAL_PREFIX`]) a client sent: only the edge sets those.
async fn forward(req: Request, url: &worker::Url, name: &StreamName, env: &Env) -> Result<Reply> {
    let stub = stub_for(env, name)?.into_rpc::<JsValue>();
    let url = object_url(name, url.query());
    let promise =
        INTERNAL.with(|internal| forward_to_object(&stub, req.inner(), &url, internal))?;
    Ok(Reply::Object(
        JsFuture::from(promise).await?.unchecked_into(),
    ))
}

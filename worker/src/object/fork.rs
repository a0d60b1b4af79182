//! Forks: object-to-object calls between a fork and its source.
//!
//! A fork shares its source's offsets below its divergence point (`base`) and stores only its
//! own appends. Creating a fork takes a reference on the source; deleting (or expiring) the fork
//! gives it back. A deleted source with forks is kept, soft-deleted, until the last one goes,
//! and the clean-up cascades up the chain.
//!
//! The platform refuses a request nested more than 16 calls deep, so nothing here may call
//! through a chain of forks: a fork records its ancestors when it is created and reads each
//! inherited range from the ancestor that holds it, in one call. Internal calls carry their
//! depth ([`X_HOPS`]), and an object refuses calls nested deeper than production would allow,
//! which workerd does not enforce locally.

use edgestream::json;
use edgestream::stream::{self, Expiry, ForkRequest};
use edgestream::{ContentType, Offset, ProtocolError};
use serde::{Deserialize, Serialize};
use worker::{Env, Method, Request, RequestInit, Response, Result};

use super::store::{Ancestor, Meta, Page, ReadError};
use super::{new_instance, Lookup, StreamObject};
use crate::http::{self, header, now_ms};
use crate::path::StreamName;
use crate::reply::X_PAGE_END;

/// How deeply an internal call is nested: 1 for a call made while answering a client.
pub const X_HOPS: &str = "x-edgestream-hops";
/// Deepest internal call an object answers. With the edge's call to the first object, this
/// stays under the platform's limit of 16 nested requests.
pub const MAX_HOPS: u32 = 14;

/// The depth of the request an object is answering: 0 for a client's (through the edge).
pub fn hops_of(req: &Request) -> u32 {
    header(req.headers(), X_HOPS)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What a fork asks of its source.
#[derive(Serialize, Deserialize)]
struct AcquireRequest {
    offset: Option<u64>,
    sub_offset: u64,
    content_type: Option<String>,
}

/// What the source answers: its type and expiry (which the fork may inherit) and the position
/// the fork diverges at.
#[derive(Serialize, Deserialize)]
struct AcquireReply {
    content_type: String,
    expiry_kind: u8,
    expiry_value: i64,
    point: u64,
    /// The source and its ancestors, nearest first: the fork's ancestors. Absent when the
    /// source is a fork made before ancestors were recorded; the fork then reads through it.
    #[serde(default)]
    ancestry: Option<Vec<Ancestor>>,
}

fn expiry_to_wire(e: Expiry) -> (u8, i64) {
    match e {
        Expiry::Never => (0, 0),
        Expiry::Ttl(s) => (1, i64::try_from(s).unwrap_or(i64::MAX)),
        Expiry::At(at) => (2, at),
    }
}

fn expiry_from_wire(kind: u8, value: i64) -> Expiry {
    match kind {
        1 => Expiry::Ttl(u64::try_from(value).unwrap_or(0)),
        2 => Expiry::At(value),
        _ => Expiry::Never,
    }
}

/// Calls another stream's object, from a request `hops` deep.
async fn call(
    env: &Env,
    path: &str,
    op: &str,
    query: &str,
    body: Option<Vec<u8>>,
    hops: u32,
) -> Result<Response> {
    let name = StreamName::from_url_path(path)
        .map_err(|e| worker::Error::RustError(e.message().into()))?;
    let stub = env
        .durable_object("STREAMS")?
        .id_from_name(name.as_str())?
        .get_stub()?;
    let mut init = RequestInit::new();
    match body {
        Some(body) => {
            init.with_method(Method::Post);
            init.with_body(Some(js_sys::Uint8Array::from(&body[..]).into()));
        }
        None => {
            init.with_method(Method::Get);
        }
    }
    let headers = worker::Headers::new();
    headers.set(X_HOPS, &(hops + 1).to_string())?;
    init.with_headers(headers);
    let req = Request::new_with_init(&format!("https://edgestream/internal/{op}?{query}"), &init)?;
    stub.fetch_with_request(req).await
}

async fn page_of(resp: Response) -> Result<Page> {
    let end = header(resp.headers(), X_PAGE_END)
        .and_then(|v| v.parse::<u64>().ok())
        .and_then(Offset::new)
        .ok_or_else(|| worker::Error::RustError("internal read without an end".into()))?;
    Ok(Page {
        data: crate::http::response_bytes(&resp).await?,
        end,
    })
}

/// Where an inherited position is read from: the ancestor that holds it and the end of what it
/// holds for this fork, or, for a fork without recorded ancestors, its source (which reads on
/// through its own).
fn holder<'a>(ancestry: &'a [Ancestor], meta: &'a Meta, at: Offset) -> Option<(&'a str, Offset)> {
    let fork = meta.fork.as_ref()?;
    match stream::ancestor_holding(ancestry.iter().map(|a| a.base), meta.base, at) {
        Some((i, end)) => ancestry.get(i).map(|a| (a.path.as_str(), end)),
        None if ancestry.is_empty() => Some((fork.source.as_str(), meta.base)),
        None => None,
    }
}

/// Reads from `from` towards `to` (at most the fork's base) from the ancestor holding `from`
/// (`ancestry` is the fork's, read once for all the ranges of a page): a page that ends where
/// that ancestor's range does, or sooner.
pub async fn read_inherited(
    obj: &StreamObject,
    meta: &Meta,
    ancestry: &[Ancestor],
    from: Offset,
    to: Offset,
    budget: usize,
    hops: u32,
) -> Result<std::result::Result<Page, ProtocolError>> {
    let Some((path, end)) = holder(ancestry, meta, from) else {
        return Ok(Err(ProtocolError::BadRequest(
            "offset is before the stream's data",
        )));
    };
    let query = format!(
        "from={}&to={}&budget={budget}",
        from.position(),
        to.min(end).position()
    );
    let resp = call(&obj.env, path, "read", &query, None, hops).await?;
    match resp.status_code() {
        200 => Ok(Ok(page_of(resp).await?)),
        // `from` inside a JSON message (the source's other 400, a malformed internal query,
        // cannot come from this call).
        400 => Ok(Err(ReadError::NotABoundary.into_protocol())),
        404 => Ok(Err(ProtocolError::Gone)),
        status => Err(worker::Error::RustError(format!(
            "fork source read failed with {status}"
        ))),
    }
}

/// The bytes from `at` to the end of the append holding it, but not past `cap` (a fork's base
/// is a boundary too). `None` when there is no data at `at`.
pub async fn append_from(
    obj: &StreamObject,
    meta: &Meta,
    at: Offset,
    cap: Offset,
    hops: u32,
) -> Result<Option<Page>> {
    if at < meta.base {
        let ancestry = obj.store()?.ancestry()?;
        let Some((path, end)) = holder(&ancestry, meta, at) else {
            return Ok(None);
        };
        let query = format!("at={}&cap={}", at.position(), cap.min(end).position());
        let resp = call(&obj.env, path, "append-from", &query, None, hops).await?;
        return match resp.status_code() {
            200 => Ok(Some(page_of(resp).await?)),
            _ => Ok(None),
        };
    }
    let Some(mut page) = obj.store()?.append_from(at)? else {
        return Ok(None);
    };
    if page.end > cap {
        page.data.truncate(cap.distance_from(at) as usize);
        page.end = cap;
    }
    Ok(Some(page))
}

/// Whether a JSON message starts at `at` (before the stream's tail), asking the sources for an
/// inherited position: a fork may only diverge where a read may start, or its reads would not
/// be JSON arrays.
pub async fn json_boundary(
    obj: &StreamObject,
    meta: &Meta,
    at: Offset,
    hops: u32,
) -> Result<std::result::Result<(), ProtocolError>> {
    let inside = ProtocolError::BadRequest("fork offset is inside a JSON message");
    if at >= meta.base {
        return Ok(if obj.store()?.json_boundary(at)? {
            Ok(())
        } else {
            Err(inside)
        });
    }
    let ancestry = obj.store()?.ancestry()?;
    let Some((path, _)) = holder(&ancestry, meta, at) else {
        return Ok(Err(inside));
    };
    let query = format!("at={}", at.position());
    let resp = call(&obj.env, path, "boundary", &query, None, hops).await?;
    match resp.status_code() {
        200 => Ok(Ok(())),
        400 => Ok(Err(inside)),
        // A source further up the chain is gone: nothing inherited can be read.
        404 | 409 => Ok(Err(ProtocolError::ForkSourceGone)),
        status => Err(worker::Error::RustError(format!(
            "fork source boundary check failed with {status}"
        ))),
    }
}

/// On the source: checks a fork request, resolves its divergence point and takes a reference.
pub async fn acquire(obj: &StreamObject, body: &[u8], hops: u32) -> Result<Response> {
    let Ok(ask) = serde_json::from_slice::<AcquireRequest>(body) else {
        return http::text(400, "bad fork request");
    };
    let meta = match obj.lookup(now_ms()).await? {
        Lookup::Live(meta) => meta,
        Lookup::Deleted => return http::error(&ProtocolError::ForkSourceGone),
        Lookup::Missing => return http::error(&ProtocolError::ForkSourceNotFound),
    };
    if let Some(asked) = ask.content_type.as_deref() {
        match ContentType::parse(asked) {
            Ok(ct) if ct.matches(&meta.content_type) => {}
            _ => return http::error(&ProtocolError::ContentTypeMismatch),
        }
    }
    let anchor = match ask.offset {
        None => meta.tail,
        Some(p) => match Offset::new(p) {
            Some(o) if o <= meta.tail => o,
            _ => return http::error(&ProtocolError::ForkOffsetOutOfRange),
        },
    };
    // Before the sub-offset, which counts messages from the anchor.
    if meta.is_json() && anchor < meta.tail {
        if let Err(e) = json_boundary(obj, &meta, anchor, hops).await? {
            return http::error(&e);
        }
    }
    let point = if ask.sub_offset == 0 {
        anchor
    } else {
        let Some(page) = append_from(obj, &meta, anchor, meta.tail, hops).await? else {
            return http::error(&ProtocolError::ForkOffsetOutOfRange);
        };
        let within = if meta.is_json() {
            usize::try_from(ask.sub_offset - 1)
                .ok()
                .and_then(|i| json::MessageEnds::new(&page.data).nth(i))
                .map(|e| e as u64)
        } else {
            Some(ask.sub_offset).filter(|&s| s <= page.data.len() as u64)
        };
        match within.and_then(|w| anchor.checked_add(w)) {
            Some(point) => point,
            None => return http::error(&ProtocolError::ForkOffsetOutOfRange),
        }
    };
    // Reading may have awaited; take the reference on the current state.
    let Some(mut current) = obj.meta()? else {
        return http::error(&ProtocolError::ForkSourceNotFound);
    };
    if current.deleted {
        return http::error(&ProtocolError::ForkSourceGone);
    }
    current.forks += 1;
    obj.save(&current)?;
    let (expiry_kind, expiry_value) = expiry_to_wire(current.expiry);
    let itself = Ancestor {
        path: current.path.clone(),
        base: current.base.position(),
    };
    let ancestors = obj.store()?.ancestry()?;
    let ancestry = match current.fork {
        None => Some(vec![itself]),
        Some(_) if ancestors.is_empty() => None,
        Some(_) => Some(std::iter::once(itself).chain(ancestors).collect()),
    };
    let reply = AcquireReply {
        content_type: current.content_type.as_str().to_string(),
        expiry_kind,
        expiry_value,
        point: point.position(),
        ancestry,
    };
    Response::from_json(&reply)
}

/// Gives back a fork's reference on its source, from a request `hops` deep.
pub async fn release(env: &Env, source: &str, hops: u32) -> Result<()> {
    let resp = call(env, source, "fork-release", "", Some(Vec::new()), hops).await?;
    match resp.status_code() {
        200..=299 | 404 => Ok(()),
        status => Err(worker::Error::RustError(format!(
            "fork release failed with {status}"
        ))),
    }
}

/// On the source: a fork went away. The last fork of a deleted source takes it along, which
/// releases its own source in turn. Up a long chain of deleted sources that cascade would nest
/// past the platform's limit, so from [`MAX_HOPS`] deep it goes on from an alarm, which starts
/// a request of its own.
pub async fn on_release(obj: &StreamObject, hops: u32) -> Result<Response> {
    let Some(mut meta) = obj.meta()? else {
        return Response::ok("");
    };
    meta.forks = meta.forks.saturating_sub(1);
    if !meta.deleted || meta.forks > 0 {
        obj.save(&meta)?;
    } else if hops < MAX_HOPS {
        obj.remove(meta, hops).await?;
    } else {
        obj.save(&meta)?;
        super::alarm::schedule(obj, now_ms()).await?;
    }
    Response::ok("")
}

impl StreamObject {
    /// PUT with `Stream-Forked-From`.
    pub(super) async fn create_fork(
        &self,
        name: &StreamName,
        request: &edgestream::stream::CreateRequest,
        fork: ForkRequest,
        body: Vec<u8>,
        now: i64,
    ) -> Result<Response> {
        if fork.source == name.full_path() {
            return http::error(&ProtocolError::ForkSourceNotFound);
        }
        let ask = AcquireRequest {
            offset: fork.offset.map(Offset::position),
            sub_offset: fork.sub_offset,
            content_type: request
                .content_type
                .as_ref()
                .map(|c| c.as_str().to_string()),
        };
        let ask = serde_json::to_vec(&ask).map_err(|e| worker::Error::RustError(e.to_string()))?;
        let mut resp = call(&self.env, &fork.source, "fork-acquire", "", Some(ask), 0).await?;
        let reply: AcquireReply = match resp.status_code() {
            200 => resp.json().await?,
            404 => return http::error(&ProtocolError::ForkSourceNotFound),
            // The source says why: out of range, or inside a JSON message.
            400 | 409 => {
                let status = resp.status_code();
                let text = resp.text().await.unwrap_or_default();
                return http::text(status, text.trim());
            }
            status => {
                return Err(worker::Error::RustError(format!(
                    "fork acquire failed with {status}"
                )))
            }
        };
        // Someone may have created this stream while we waited for the source.
        match self.lookup(now).await? {
            Lookup::Missing => {}
            other => {
                release(&self.env, &fork.source, 0).await?;
                return match other {
                    Lookup::Live(meta) => self.existing(&meta, request).await,
                    _ => http::error(&ProtocolError::PathInUse),
                };
            }
        }
        let content_type =
            ContentType::parse(&reply.content_type).unwrap_or_else(|_| ContentType::default_type());
        let point = Offset::new(reply.point).unwrap_or(Offset::ZERO);
        let meta = Meta {
            path: name.full_path(),
            instance: new_instance(),
            content_type,
            expiry: Expiry::for_fork(
                expiry_from_wire(reply.expiry_kind, reply.expiry_value),
                request.expiry,
            ),
            accessed_ms: now,
            closed: request.closed,
            closed_by: None,
            base: point,
            tail: point,
            last_stream_seq: None,
            fork: Some(fork.clone()),
            forks: 0,
            deleted: false,
            channel: false,
        };
        let ancestry = reply.ancestry.unwrap_or_default();
        let created = self.finish_create(meta, &body, &ancestry).await?;
        if created.status_code() >= 400 {
            release(&self.env, &fork.source, 0).await?;
        }
        Ok(created)
    }
}

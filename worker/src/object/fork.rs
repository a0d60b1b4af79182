//! Forks: object-to-object calls between a fork and its source.
//!
//! A fork shares its source's offsets below its divergence point (`base`) and stores only its
//! own appends. Creating a fork takes a reference on the source; deleting (or expiring) the fork
//! gives it back. A deleted source with forks is kept, soft-deleted, until the last one goes,
//! and the clean-up cascades up the chain.
//!
//! A reference is held by the fork's id (its path and incarnation), so taking or giving it back
//! twice counts once: a call whose answer was lost can be made again. Giving it back is owed
//! work (`owed.rs`), owed before the reference is even taken: a create that dies after its
//! source took the reference, or fails after, gives it back, and one that succeeds settles the
//! debt in the turn that stores the fork.
//!
//! The platform refuses a request nested more than 16 calls deep, so nothing here may call
//! through a chain of forks: a fork records its ancestors when it is created and reads each
//! inherited range from the ancestor that holds it, in one call. Internal calls carry their
//! depth ([`X_HOPS`]), and an object refuses calls nested deeper than production would allow,
//! which workerd does not enforce locally.

use std::cell::RefCell;

use edgestream::headers::HeaderError;
use edgestream::json;
use edgestream::stream::{self, Expiry, ForkRequest};
use edgestream::{ContentType, Offset, ProtocolError};
use serde::{Deserialize, Serialize};
use worker::{Env, Method, Request, RequestInit, Response, Result};

use super::store::{Ancestor, Meta, Page, ReadError, Task};
use super::{new_instance, owed, Lookup, StreamObject};
use crate::fault::Call;
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
    /// The id the reference is held by.
    #[serde(default)]
    fork: Option<String>,
}

/// A reference a fork took on its source, owed back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SourceRef {
    /// The source's full path.
    source: String,
    /// The id it is held by; none for a fork made before references had ids, whose reference
    /// is one of a count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fork: Option<String>,
}

/// What a fork gives back (the body of `fork-release`; empty from a fork made before
/// references had ids).
#[derive(Default, Serialize, Deserialize)]
struct ReleaseRequest {
    #[serde(default)]
    fork: Option<String>,
}

/// What a new fork stores beside its metadata, in the same turn.
pub(super) struct Origin<'a> {
    /// The id its reference on its source is held by.
    pub id: &'a str,
    /// Its source's expiry, which it takes unless it asked for its own.
    pub inherited_expiry: Expiry,
    /// How many forks deep it is.
    pub depth: u32,
}

/// The id a fork's reference on its source is held by: one per incarnation.
fn fork_id(path: &str, instance: &str) -> String {
    format!("{path}#{instance}")
}

/// The ids of the forks this object is creating right now, whose references the owed work
/// leaves alone: the create settles or gives them back itself.
#[derive(Default)]
pub struct Creating(RefCell<Vec<String>>);

/// A create in progress, until dropped.
struct CreatingGuard<'a> {
    creating: &'a Creating,
    id: String,
}

impl Creating {
    fn enter(&self, id: &str) -> CreatingGuard<'_> {
        self.0.borrow_mut().push(id.to_string());
        CreatingGuard {
            creating: self,
            id: id.to_string(),
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.0.borrow().iter().any(|c| c == id)
    }
}

impl Drop for CreatingGuard<'_> {
    fn drop(&mut self) {
        self.creating.0.borrow_mut().retain(|c| c != &self.id);
    }
}

/// What the source answers: its type and expiry (which the fork may inherit) and the position
/// the fork diverges at.
#[derive(Serialize, Deserialize)]
struct AcquireReply {
    content_type: String,
    expiry_kind: i64,
    expiry_value: i64,
    point: u64,
    /// The source and its ancestors, nearest first, that the fork inherits a range from: the
    /// fork's ancestors. Absent when the source is a fork made before ancestors were recorded;
    /// the fork then reads through it.
    #[serde(default)]
    ancestry: Option<Vec<Ancestor>>,
    /// How many forks deep the source is (0 for a stream that is not a fork). Absent from a
    /// source running an older version.
    #[serde(default)]
    depth: Option<u32>,
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
    // `path` is a stored full path, whose name is already decoded (`full_path`).
    let name = StreamName::from_full_path(path)
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
    // Refused before any reference is taken: the source's depth never changes.
    let depth = depth_of(obj, &meta)?;
    if depth >= stream::MAX_FORK_DEPTH {
        return http::error(&ProtocolError::ForkTooDeep);
    }
    if let Some(asked) = ask.content_type.as_deref() {
        match ContentType::parse_stored(asked) {
            // A type over the cap only as the source's own (one created before the cap).
            Ok(ct) if ct.as_str() != meta.content_type.as_str() && ct.check_cap().is_err() => {
                return http::error(&ProtocolError::Header(HeaderError::ContentTypeTooLong))
            }
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
        // Counted within the one append at the anchor: messages of a JSON stream, else bytes.
        let Some(page) = append_from(obj, &meta, anchor, meta.tail, hops).await? else {
            return http::error(&ProtocolError::ForkSubOffsetPastAppend);
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
            None => return http::error(&ProtocolError::ForkSubOffsetPastAppend),
        }
    };
    // Reading may have awaited; take the reference on the current state.
    let Some(mut current) = obj.meta()? else {
        return http::error(&ProtocolError::ForkSourceNotFound);
    };
    if current.deleted {
        return http::error(&ProtocolError::ForkSourceGone);
    }
    // Deleted and created again meanwhile: the point was worked out on the old stream.
    if current.instance != meta.instance {
        return http::error(&ProtocolError::ForkSourceNotFound);
    }
    // Taken once per id: a request made again after its answer was lost takes nothing more.
    // The reference and the count together, or a retry would find it taken and not counted.
    obj.store()?.atomically(|| {
        let taken = match ask.fork.as_deref() {
            Some(id) => obj.store()?.take_fork_ref(id)?,
            None => true,
        };
        if taken {
            current.forks += 1;
            obj.save(&current)?;
        }
        Ok(())
    })?;
    let (expiry_kind, expiry_value) = current.expiry.to_parts();
    let itself = Ancestor {
        path: current.path.clone(),
        base: current.base.position(),
    };
    let ancestors = obj.store()?.ancestry()?;
    let ancestry = match current.fork {
        None => Some(vec![itself]),
        Some(_) if ancestors.is_empty() => None,
        Some(_) => Some(stream::inherited_ancestors(
            std::iter::once(itself).chain(ancestors),
            |a| a.base,
            point,
        )),
    };
    let reply = AcquireReply {
        content_type: current.content_type.as_str().to_string(),
        expiry_kind,
        expiry_value,
        point: point.position(),
        ancestry,
        depth: Some(depth),
    };
    Response::from_json(&reply)
}

/// How many forks deep the stream `meta` is: 0 unless it is a fork. A fork made before depths
/// were recorded holds every ancestor in its ancestry (or none, if made before ancestries were,
/// when it counts as 1).
fn depth_of(obj: &StreamObject, meta: &Meta) -> Result<u32> {
    if meta.fork.is_none() {
        return Ok(0);
    }
    let store = obj.store()?;
    Ok(match store.fork_depth()? {
        Some(depth) => depth,
        None => u32::try_from(store.ancestry()?.len())
            .unwrap_or(u32::MAX)
            .max(1),
    })
}

/// Owes the reference `held` back, in the caller's turn, with the alarm set in that turn.
fn owe_release(obj: &StreamObject, held: SourceRef) -> Result<()> {
    let mut owed = owed_releases(obj)?;
    if !owed.contains(&held) {
        owed.push(held);
    }
    save_releases(obj, &owed)?;
    obj.alarm.set(now_ms() + super::SAFETY_MS);
    Ok(())
}

fn owed_releases(obj: &StreamObject) -> Result<Vec<SourceRef>> {
    Ok(obj
        .store()?
        .owed()?
        .into_iter()
        .find(|o| o.task == Task::Release)
        .and_then(|o| serde_json::from_str(&o.detail).ok())
        .unwrap_or_default())
}

fn save_releases(obj: &StreamObject, owed: &[SourceRef]) -> Result<()> {
    let store = obj.store()?;
    if owed.is_empty() {
        return store.settle(Task::Release);
    }
    let detail =
        serde_json::to_string(owed).map_err(|e| worker::Error::RustError(e.to_string()))?;
    store.owe(Task::Release, now_ms(), &detail)
}

/// Whether the reference of fork `id` is owed back.
fn owes_release(obj: &StreamObject, id: &str) -> Result<bool> {
    Ok(owed_releases(obj)?
        .iter()
        .any(|r| r.fork.as_deref() == Some(id)))
}

/// The fork `id` is stored, in this turn: it holds its reference from now on, until removed.
pub fn hold(obj: &StreamObject, id: &str) -> Result<()> {
    let owed: Vec<SourceRef> = owed_releases(obj)?
        .into_iter()
        .filter(|r| r.fork.as_deref() != Some(id))
        .collect();
    save_releases(obj, &owed)?;
    obj.store()?.save_source_ref(id)
}

/// The fork `meta` is being removed, in the turn that purges it: its reference is owed back.
pub fn owe_removed(obj: &StreamObject, meta: &Meta) -> Result<()> {
    let Some(fork) = &meta.fork else {
        return Ok(());
    };
    let held = SourceRef {
        source: fork.source.clone(),
        fork: obj.store()?.source_ref()?,
    };
    owe_release(obj, held)
}

/// Gives back the owed references, from a request `hops` deep; whether all of them are back.
/// Those of forks being created here are left to their create.
pub async fn give_back(obj: &StreamObject, hops: u32) -> Result<bool> {
    let owed: Vec<SourceRef> = owed_releases(obj)?
        .into_iter()
        .filter(|r| {
            !r.fork
                .as_deref()
                .is_some_and(|id| obj.forks_creating.contains(id))
        })
        .collect();
    let results = futures_util::future::join_all(owed.iter().map(|r| release(obj, r, hops))).await;
    let mut given = Vec::new();
    for (held, result) in owed.iter().zip(results) {
        match result {
            Ok(()) => given.push(held),
            Err(e) => worker::console_warn!("fork: release on {} failed: {e}", held.source),
        }
    }
    let left: Vec<SourceRef> = owed_releases(obj)?
        .into_iter()
        .filter(|r| !given.contains(&r))
        .collect();
    save_releases(obj, &left)?;
    Ok(given.len() == owed.len())
}

/// Gives back one reference, from a request `hops` deep.
async fn release(obj: &StreamObject, held: &SourceRef, hops: u32) -> Result<()> {
    let body = match &held.fork {
        Some(id) => serde_json::to_vec(&ReleaseRequest {
            fork: Some(id.clone()),
        })
        .map_err(|e| worker::Error::RustError(e.to_string()))?,
        None => Vec::new(),
    };
    let resp = call(&obj.env, &held.source, "fork-release", "", Some(body), hops).await?;
    match resp.status_code() {
        200..=299 | 404 => {
            // An injected fault stands for an answer lost on its way back.
            let id = held.fork.as_deref().unwrap_or(&held.source);
            obj.faults.check(id, Call::ForkRelease)
        }
        status => Err(worker::Error::RustError(format!(
            "fork release failed with {status}"
        ))),
    }
}

/// On the source: a fork went away. The last fork of a deleted source takes it along, which
/// releases its own source in turn. Up a long chain of deleted sources that cascade would nest
/// past the platform's limit, so from [`MAX_HOPS`] deep it goes on from an alarm, which starts
/// a request of its own.
pub async fn on_release(obj: &StreamObject, body: &[u8], hops: u32) -> Result<Response> {
    let release = if body.is_empty() {
        ReleaseRequest::default()
    } else {
        match serde_json::from_slice::<ReleaseRequest>(body) {
            Ok(release) => release,
            Err(_) => return http::text(400, "bad fork release"),
        }
    };
    let Some(mut meta) = obj.meta()? else {
        return Response::ok("");
    };
    let store = obj.store()?;
    let last_of_deleted = |meta: &Meta| meta.deleted && meta.forks == 0;
    // The reference and the count together, as they were taken; with the last fork of a
    // deleted source, its removal too, so that a failure leaves the reference for the retry.
    let held = store.atomically(|| {
        let held = match release.fork.as_deref() {
            Some(id) => store.drop_fork_ref(id)?,
            // From a fork made before references had ids: one of those counted without one.
            None => meta.forks > store.fork_refs()?,
        };
        if held {
            meta.forks = meta.forks.saturating_sub(1);
            if last_of_deleted(&meta) && hops < MAX_HOPS {
                obj.purge(&meta)?;
            } else {
                obj.save(&meta)?;
            }
        }
        Ok(held)
    })?;
    if !last_of_deleted(&meta) {
        return Response::ok("");
    }
    // The last fork of a deleted source: it goes too. Given back already, it is one whose
    // removal was left to the alarm, which this request may as well do.
    if held && hops < MAX_HOPS {
        obj.removed(hops).await?;
    } else if hops < MAX_HOPS {
        obj.remove(meta, hops).await?;
    } else {
        super::alarm::schedule(obj, now_ms()).await?;
    }
    Response::ok("")
}

impl StreamObject {
    /// PUT with `Stream-Forked-From`. The reference the source takes is owed back first,
    /// whatever happens next: the fork's creation settles that in the turn that stores it, and
    /// otherwise it is given back before the answer (or by the alarm, should this request die).
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
        let instance = new_instance();
        let id = fork_id(&name.full_path(), &instance);
        owe_release(
            self,
            SourceRef {
                source: fork.source.clone(),
                fork: Some(id.clone()),
            },
        )?;
        let creating = self.forks_creating.enter(&id);
        let created = self
            .take_and_create(name, request, fork, body, now, instance)
            .await;
        drop(creating);
        // A failure to read what is owed must not turn the create's answer into an error.
        if owes_release(self, &id).unwrap_or(true) {
            if let Err(e) = owed::run(self, false, 0).await {
                worker::console_warn!("fork {}: giving back its reference failed: {e}", id);
            }
        }
        created
    }

    /// Takes the reference on the source under the id of the fork's incarnation `instance`,
    /// and stores the fork.
    async fn take_and_create(
        &self,
        name: &StreamName,
        request: &edgestream::stream::CreateRequest,
        fork: ForkRequest,
        body: Vec<u8>,
        now: i64,
        instance: String,
    ) -> Result<Response> {
        let id = &fork_id(&name.full_path(), &instance);
        let ask = AcquireRequest {
            offset: fork.offset.map(Offset::position),
            sub_offset: fork.sub_offset,
            content_type: request
                .content_type
                .as_ref()
                .map(|c| c.as_str().to_string()),
            fork: Some(id.to_string()),
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
        // An injected fault stands for the source's answer lost on its way back.
        self.faults.check(id, Call::ForkAcquire)?;
        // Someone may have created this stream while we waited for the source.
        match self.lookup(now).await? {
            Lookup::Missing => {}
            Lookup::Live(meta) => return self.existing(&meta, request).await,
            Lookup::Deleted => return http::error(&ProtocolError::PathInUse),
        }
        let content_type = ContentType::parse_stored(&reply.content_type)
            .unwrap_or_else(|_| ContentType::default_type());
        let point = Offset::new(reply.point).unwrap_or(Offset::ZERO);
        let inherited_expiry = Expiry::from_parts(reply.expiry_kind, reply.expiry_value);
        let meta = Meta {
            path: name.full_path(),
            instance,
            content_type,
            expiry: Expiry::for_fork(inherited_expiry, request.expiry),
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
        // A source of an older version says no depth: the ancestry it sends then holds itself
        // and every ancestor of it.
        let depth = reply
            .depth
            .unwrap_or_else(|| {
                let sent = reply.ancestry.as_ref().map_or(0, Vec::len);
                u32::try_from(sent.saturating_sub(1)).unwrap_or(u32::MAX)
            })
            .saturating_add(1);
        let ancestry = reply.ancestry.unwrap_or_default();
        let origin = Origin {
            id,
            inherited_expiry,
            depth,
        };
        self.finish_create(meta, &body, &ancestry, Some(origin))
            .await
    }
}

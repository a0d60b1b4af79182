//! Responses to reads, built the same way by the object (catch-up) and the edge (long-poll).

use std::borrow::Cow;

use edgestream::headers as h;
use edgestream::stream::{cache_control, CacheKind, CacheScope};
use edgestream::{etag, json, Offset};
use js_sys::Uint8Array;
use worker::{web_sys, Headers, Response, Result};

use crate::object::store::RowRange;

/// Headers the object puts on its WebSocket upgrade so the edge knows the stream's shape.
pub const X_CONTENT_TYPE: &str = "x-edgestream-content-type";
pub const X_INSTANCE: &str = "x-edgestream-instance";
/// On the upgrade of an SSE reader at the tail: no backlog frame follows, and the edge writes
/// the reader's first control event itself (see `object::live::accept`).
pub const X_AT_TAIL: &str = "x-edgestream-at-tail";
/// The position an internal read page ends at.
pub const X_PAGE_END: &str = "x-edgestream-page-end";
/// On the POST the edge makes of a socket's append frame: decided at once, as the frames of a
/// socket the object holds are, since one socket's frames come in order.
pub const X_SOCKET_FRAME: &str = "x-edgestream-socket-frame";

/// Names the stream's incarnation on a reply (`Stream-Incarnation`), so a client that resumes
/// from a stored offset can tell a stream deleted and created again from the one it read. The
/// internal [`X_INSTANCE`] stays between the edge and the object.
pub fn name_incarnation(headers: &Headers, instance: &str) -> Result<()> {
    if !instance.is_empty() {
        headers.set(h::STREAM_INCARNATION, instance)?;
    }
    Ok(())
}

/// The bytes of a page.
pub enum PageData<'a> {
    /// Log bytes (framed JSON for JSON streams): owned when the page was read for this reply,
    /// so the body takes them without another copy.
    Bytes(Cow<'a, [u8]>),
    /// A non-JSON page already in a JS buffer, which becomes the body as it is.
    Js(Uint8Array),
    /// A page streamed from the object's rows as the client takes it (a JSON one as an array).
    Rows(RowRange),
}

impl PageData<'_> {
    fn is_empty(&self) -> bool {
        match self {
            PageData::Bytes(bytes) => bytes.is_empty(),
            PageData::Js(buffer) => buffer.length() == 0,
            PageData::Rows(range) => range.is_empty(),
        }
    }
}

impl<'a> From<&'a [u8]> for PageData<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        PageData::Bytes(Cow::Borrowed(bytes))
    }
}

impl From<Vec<u8>> for PageData<'_> {
    fn from(bytes: Vec<u8>) -> Self {
        PageData::Bytes(Cow::Owned(bytes))
    }
}

/// A page of a stream, ready to be answered.
pub struct ReadReply<'a> {
    pub content_type: &'a str,
    pub json: bool,
    pub data: PageData<'a>,
    pub start: Offset,
    pub end: Offset,
    pub up_to_date: bool,
    pub closed: bool,
    /// The stream incarnation, for the ETag.
    pub instance: &'a str,
    /// `Stream-Cursor`, for live reads.
    pub cursor: Option<&'a str>,
    /// Who may cache the page, and for how long. `None` for a long-poll from `offset=now`: its
    /// URL names no fixed position, so a cache keyed by it would hand a later reader data from
    /// before it asked. Such a page is never stored and has no ETag (PROTOCOL.md §8.1).
    pub cache: Option<CacheScope>,
}

impl ReadReply<'_> {
    /// 200 with the body, or 304 when `if_none_match` names this exact page.
    pub fn respond(self, if_none_match: Option<&str>) -> Result<Response> {
        let tag = etag::etag(self.instance, self.start, self.end, self.closed);
        let kind = match self.cache {
            None => CacheKind::NoStore,
            Some(_) if self.data.is_empty() => CacheKind::EmptyAtTail,
            Some(scope) => CacheKind::Data(scope),
        };
        let headers = Headers::new();
        if self.cache.is_some() {
            headers.set(h::ETAG, &tag)?;
        }
        headers.set(h::CACHE_CONTROL, &cache_control(kind))?;
        // A reader's own cache keys a page by its URL alone: without this, a browser would
        // hand a page read with one token to a request with another (or an expired one) for
        // as long as the page may be kept. A token in the query is in the URL already.
        if matches!(kind, CacheKind::Data(CacheScope { shared: false, .. })) {
            headers.set("vary", "Authorization")?;
        }
        headers.set(h::STREAM_NEXT_OFFSET, &self.end.to_string())?;
        if self.up_to_date {
            headers.set(h::STREAM_UP_TO_DATE, "true")?;
        }
        if self.closed {
            headers.set(h::STREAM_CLOSED, "true")?;
        }
        if let Some(cursor) = self.cursor {
            headers.set(h::STREAM_CURSOR, cursor)?;
        }
        name_incarnation(&headers, self.instance)?;
        if self.cache.is_some() && if_none_match.is_some_and(|v| h::if_none_match(v, &tag)) {
            return Ok(Response::empty()?.with_status(304).with_headers(headers));
        }
        set_stream_type(&headers, self.content_type)?;
        let body = match self.data {
            PageData::Bytes(bytes) if self.json => json::render_array(&bytes),
            PageData::Bytes(bytes) => bytes.into_owned(),
            PageData::Js(buffer) => {
                let init = web_sys::ResponseInit::new();
                init.set_headers(&headers.0);
                let resp =
                    web_sys::Response::new_with_opt_buffer_source_and_init(Some(&buffer), &init)?;
                return Ok(Response::from(resp));
            }
            PageData::Rows(range) => {
                // A body streamed from the rows breaks off if the stream is deleted under it.
                // Compressed on its way (wrangler dev compresses text for clients that accept
                // gzip, as Cloudflare's front end does), the break became the end of a whole,
                // shorter gzip body, which the client took for the page. Declared already
                // encoded, it is sent as it is, and a break stays one. A range of one chunk is
                // read whole before the response is made, and may be compressed.
                if !range.is_whole() {
                    headers.set("content-encoding", "identity")?;
                }
                let init = web_sys::ResponseInit::new();
                init.set_headers(&headers.0);
                let body = range.open()?;
                let resp =
                    web_sys::Response::new_with_opt_readable_stream_and_init(Some(&body), &init)?;
                return Ok(Response::from(resp));
            }
        };
        Ok(Response::from_bytes(body)?.with_headers(headers))
    }
}

/// Names a read's content type: the stream's, whatever its creator said. A browser that opens
/// the read as a page (a `text/html` or `image/svg+xml` stream, say) renders it sandboxed, with
/// no script and nothing loaded, so no stream's bytes act on this origin's pages or storage.
fn set_stream_type(headers: &Headers, content_type: &str) -> Result<()> {
    headers.set(h::CONTENT_TYPE, content_type)?;
    headers.set("content-security-policy", "sandbox; default-src 'none'")
}

/// 200 for `offset=now` catch-up reads: no data, the tail, never cached.
pub fn at_now(
    content_type: &str,
    json_stream: bool,
    tail: Offset,
    closed: bool,
    instance: &str,
) -> Result<Response> {
    let headers = Headers::new();
    name_incarnation(&headers, instance)?;
    set_stream_type(&headers, content_type)?;
    headers.set(h::CACHE_CONTROL, &cache_control(CacheKind::NoStore))?;
    headers.set(h::STREAM_NEXT_OFFSET, &tail.to_string())?;
    headers.set(h::STREAM_UP_TO_DATE, "true")?;
    if closed {
        headers.set(h::STREAM_CLOSED, "true")?;
    }
    let body = if json_stream {
        b"[]".to_vec()
    } else {
        Vec::new()
    };
    Ok(Response::from_bytes(body)?.with_headers(headers))
}

/// 204 for a long-poll with nothing new: the tail, up to date, and the cursor (the protocol
/// asks for one on every long-poll response, a closed stream's included; only SSE drops it).
pub fn no_content(
    tail: Offset,
    closed: bool,
    cursor: Option<&str>,
    instance: &str,
) -> Result<Response> {
    let headers = Headers::new();
    name_incarnation(&headers, instance)?;
    headers.set(h::CACHE_CONTROL, &cache_control(CacheKind::NoStore))?;
    headers.set(h::STREAM_NEXT_OFFSET, &tail.to_string())?;
    headers.set(h::STREAM_UP_TO_DATE, "true")?;
    if closed {
        headers.set(h::STREAM_CLOSED, "true")?;
    }
    if let Some(cursor) = cursor {
        headers.set(h::STREAM_CURSOR, cursor)?;
    }
    Ok(Response::empty()?.with_status(204).with_headers(headers))
}

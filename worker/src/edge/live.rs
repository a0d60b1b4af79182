//! Live reads held at the edge: long-poll and SSE.
//!
//! The edge, not the Durable Object, holds each reader's open response. It subscribes to the
//! object over an internal WebSocket that the object accepts with the hibernation API, so an
//! object with thousands of open readers sleeps between appends. Catch-up ranges the object can
//! answer at once come back as plain pages; the edge relays them and subscribes again.

use std::time::Duration;

use edgestream::cursor;
use edgestream::headers::{self as h, ContentType, LiveMode, SseEncoding};
use edgestream::sse::{self, Control};
use edgestream::{json, Offset, ReadFrom};
use futures_util::future::{select, Either};
use futures_util::stream;
use worker::{Delay, Headers, Method, Request, RequestInit, Response, Result, Stub};

use super::object_url;
use crate::config::Config;
use crate::frame::{self, Frame};
use crate::http::{self, header, now_ms, random_u32};
use crate::path::StreamName;
use crate::reply::{self, ReadReply, X_CONTENT_TYPE, X_INSTANCE};
use crate::socket::{Socket, SocketEvent};
use crate::timer::Deadline;

/// How the object answered a subscription.
pub(super) enum Subscription {
    /// Over HTTP: a page of data that was already there, or an error.
    Page(Response),
    /// Upgraded: frames will follow.
    Live(LiveSocket),
}

pub(super) struct LiveSocket {
    pub(super) socket: Socket,
    /// Where the reader starts (the tail, for `offset=now`).
    pub(super) start: Offset,
    pub(super) content_type: String,
    instance: String,
    closed: bool,
}

fn offset_token(from: ReadFrom) -> String {
    match from {
        ReadFrom::Start => "-1".into(),
        ReadFrom::Now => "now".into(),
        ReadFrom::At(o) => o.to_string(),
    }
}

/// Asks the stream's object for a live subscription at `from`: a page over HTTP when data is
/// already waiting (or on error), else an upgraded internal socket.
pub(super) async fn subscribe(
    stub: &Stub,
    name: &StreamName,
    from: ReadFrom,
    mode: LiveMode,
) -> Result<Subscription> {
    let live = match mode {
        LiveMode::LongPoll => "long-poll",
        LiveMode::Sse => "sse",
        LiveMode::WebSocket => "ws",
    };
    let url = object_url(
        name,
        Some(&format!("offset={}&live={live}", offset_token(from))),
    );
    let headers = Headers::new();
    headers.set("upgrade", "websocket")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let resp = stub
        .fetch_with_request(Request::new_with_init(&url, &init)?)
        .await?;
    if resp.status_code() != 101 {
        return Ok(Subscription::Page(resp));
    }
    let meta = resp.headers();
    let start = header(meta, h::STREAM_NEXT_OFFSET).and_then(|v| Offset::parse(&v).ok());
    let content_type =
        header(meta, X_CONTENT_TYPE).unwrap_or_else(|| h::DEFAULT_CONTENT_TYPE.into());
    let instance = header(meta, X_INSTANCE).unwrap_or_default();
    let closed = h::is_closed(header(meta, h::STREAM_CLOSED).as_deref());
    let (Some(start), Some(ws)) = (start, resp.websocket()) else {
        return Err(worker::Error::RustError(
            "stream object upgraded without its metadata".into(),
        ));
    };
    Ok(Subscription::Live(LiveSocket {
        socket: Socket::accept(ws)?,
        start,
        content_type,
        instance,
        closed,
    }))
}

/// Adds the cursor to a page the object answered directly.
fn with_cursor(resp: Response, cursor: u64) -> Result<Response> {
    let resp = http::mutable(resp)?;
    let headers = resp.headers();
    if (200..300).contains(&resp.status_code())
        && !h::is_closed(header(headers, h::STREAM_CLOSED).as_deref())
    {
        headers.set(h::STREAM_CURSOR, &cursor.to_string())?;
    }
    Ok(resp)
}

/// `live=long-poll`: data at once if there is any, else wait for the next append or time out.
pub async fn long_poll(
    stub: &Stub,
    name: &StreamName,
    from: ReadFrom,
    client_cursor: Option<&str>,
    config: &Config,
) -> Result<Response> {
    let cursor = cursor::next_cursor(now_ms(), client_cursor, random_u32());
    let mut live = match subscribe(stub, name, from, LiveMode::LongPoll).await? {
        Subscription::Page(resp) => return with_cursor(resp, cursor),
        Subscription::Live(live) => live,
    };
    // Readers that started together should not all come back together: stagger by up to 10%.
    let jitter = config.long_poll_timeout_ms / 10 * u64::from(random_u32() % 1000) / 1000;
    let mut timeout = Delay::from(Duration::from_millis(config.long_poll_timeout_ms - jitter));
    let json_stream = ContentType::parse(&live.content_type).is_ok_and(|c| c.is_json());
    loop {
        let event = match select(Box::pin(live.socket.next()), &mut timeout).await {
            Either::Left((event, _)) => event,
            Either::Right(_) => return reply::no_content(live.start, live.closed, Some(cursor)),
        };
        match event {
            SocketEvent::Binary(bytes) => match frame::decode(&bytes) {
                Some(Frame::Data {
                    start,
                    end,
                    closed,
                    up_to_date,
                    payload,
                }) => {
                    if payload.is_empty() {
                        if closed {
                            return reply::no_content(end, true, None);
                        }
                        continue;
                    }
                    let page = ReadReply {
                        content_type: &live.content_type,
                        json: json_stream,
                        data: payload,
                        start,
                        end,
                        up_to_date,
                        closed: closed && up_to_date,
                        instance: &live.instance,
                        cursor: Some(cursor),
                    };
                    return page.respond(None);
                }
                Some(Frame::Gone) => return http::error(&edgestream::ProtocolError::NotFound),
                None => return http::unavailable("bad frame from the stream object"),
            },
            SocketEvent::Text(_) => continue,
            // The object went away (restart, eviction): nothing new arrived, the client polls again.
            SocketEvent::Closed => return reply::no_content(live.start, false, Some(cursor)),
        }
    }
}

/// The state of one SSE response, advanced one chunk at a time.
struct SseReader {
    stub: Stub,
    name: StreamName,
    offset: ReadFrom,
    cursor: u64,
    encoding: SseEncoding,
    json: bool,
    deadline_ms: i64,
    /// One timer for the connection's deadline, shared by every wait: a timer per live frame
    /// would cost each reader a setTimeout and a clearTimeout per append.
    deadline: Deadline,
    pending: Option<Subscription>,
    socket: Option<Socket>,
    /// The offset and up-to-date flag of the last control event, to skip repeats.
    last_control: Option<(String, bool)>,
    /// The previous catch-up page moved nothing.
    stalled: bool,
    done: bool,
}

/// `live=sse`: catch-up pages, then live frames, as SSE `data` and `control` events. The server
/// closes the response after `SSE_CONNECTION_MS`; clients reconnect from the last offset.
pub async fn sse(
    stub: Stub,
    name: StreamName,
    from: ReadFrom,
    client_cursor: Option<String>,
    config: &Config,
) -> Result<Response> {
    // The first answer decides the status: a missing stream is a 404, not an empty event stream.
    let first = subscribe(&stub, &name, from, LiveMode::Sse).await?;
    let (first, content_type) = match first {
        Subscription::Page(resp) if resp.status_code() != 200 => return Ok(resp),
        Subscription::Page(resp) => {
            let ct = header(resp.headers(), h::CONTENT_TYPE).unwrap_or_default();
            (Subscription::Page(resp), ct)
        }
        Subscription::Live(live) => {
            let ct = live.content_type.clone();
            (Subscription::Live(live), ct)
        }
    };
    let ct = ContentType::parse(&content_type).unwrap_or_else(|_| ContentType::default_type());
    let reader = SseReader {
        stub,
        name,
        offset: from,
        cursor: cursor::next_cursor(now_ms(), client_cursor.as_deref(), random_u32()),
        encoding: ct.sse_encoding(),
        json: ct.is_json(),
        deadline_ms: now_ms() + config.sse_connection_ms as i64,
        deadline: Deadline::after(Duration::from_millis(config.sse_connection_ms)),
        pending: Some(first),
        socket: None,
        last_control: None,
        stalled: false,
        done: false,
    };
    let body = stream::unfold(reader, |mut reader| async move {
        match reader.step().await {
            Ok(Some(chunk)) => Some((Ok::<Vec<u8>, worker::Error>(chunk), reader)),
            Ok(None) => None,
            Err(e) => {
                worker::console_error!("sse: {e}");
                None
            }
        }
    });
    let resp = Response::from_stream(body)?;
    let headers = resp.headers();
    headers.set(h::CONTENT_TYPE, "text/event-stream")?;
    headers.set(h::CACHE_CONTROL, "no-cache")?;
    if ct.sse_encoding() == SseEncoding::Base64 {
        headers.set(h::STREAM_SSE_DATA_ENCODING, "base64")?;
    }
    Ok(resp)
}

impl SseReader {
    /// The next chunk of the event stream, or `None` when the response should end.
    async fn step(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let left = self.deadline_ms - now_ms();
            if left <= 0 {
                return Ok(self.finish());
            }
            if let Some(sub) = self.pending.take() {
                match sub {
                    Subscription::Page(resp) => return self.page(resp).await,
                    Subscription::Live(live) => {
                        self.offset = ReadFrom::At(live.start);
                        self.socket = Some(live.socket);
                        continue;
                    }
                }
            }
            let Some(socket) = self.socket.as_mut() else {
                self.pending =
                    Some(subscribe(&self.stub, &self.name, self.offset, LiveMode::Sse).await?);
                continue;
            };
            let event = match select(Box::pin(socket.next()), &mut self.deadline).await {
                Either::Left((event, _)) => Some(event),
                Either::Right(_) => None,
            };
            let Some(event) = event else {
                return Ok(self.finish());
            };
            match event {
                SocketEvent::Binary(bytes) => match frame::decode(&bytes) {
                    Some(Frame::Data {
                        start,
                        end,
                        closed,
                        up_to_date,
                        payload,
                    }) => {
                        if let Some(chunk) = self.frame(start, end, closed, up_to_date, payload) {
                            return Ok(Some(chunk));
                        }
                    }
                    Some(Frame::Gone) | None => return Ok(self.finish()),
                },
                SocketEvent::Text(_) => {}
                // The object restarted or dropped us. End the response rather than subscribe
                // again here: the client resumes from its last offset, and a socket that keeps
                // failing can never turn into a loop inside this request.
                SocketEvent::Closed => return Ok(self.finish()),
            }
        }
    }

    fn finish(&mut self) -> Option<Vec<u8>> {
        self.done = true;
        if let Some(socket) = self.socket.take() {
            socket.close(1000, "reader done");
        }
        None
    }

    /// A page the object answered over HTTP (catch-up, or the inherited part of a fork).
    async fn page(&mut self, mut resp: Response) -> Result<Option<Vec<u8>>> {
        if resp.status_code() != 200 {
            return Ok(self.finish());
        }
        let meta = resp.headers().clone();
        let Some(end) = header(&meta, h::STREAM_NEXT_OFFSET).and_then(|v| Offset::parse(&v).ok())
        else {
            return Ok(self.finish());
        };
        let up_to_date = h::is_true(header(&meta, h::STREAM_UP_TO_DATE).as_deref());
        let closed = h::is_true(header(&meta, h::STREAM_CLOSED).as_deref());
        let body = resp.bytes().await?;
        let mut out = Vec::with_capacity(body.len() + 128);
        let has_data = if self.json {
            body.len() > 2
        } else {
            !body.is_empty()
        };
        if has_data {
            // JSON pages arrive already rendered as one array.
            sse::encode_data(&body, self.encoding, &mut out);
        }
        self.control(end, up_to_date, closed, &mut out);
        // A page that moved nothing twice in a row would only repeat itself: end instead.
        let progress = has_data || self.offset != ReadFrom::At(end);
        if closed || (!progress && self.stalled) {
            self.done = true;
        }
        self.stalled = !progress;
        self.offset = ReadFrom::At(end);
        Ok(Some(out))
    }

    /// A live frame: a data event (when it carries bytes) and its control event.
    fn frame(
        &mut self,
        start: Offset,
        end: Offset,
        closed: bool,
        up_to_date: bool,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        if let ReadFrom::At(expected) = self.offset {
            if start != expected {
                // A gap or overlap would corrupt the reader's view: end, and let it resume.
                return self.finish();
            }
        }
        let mut out = Vec::with_capacity(payload.len() + 160);
        if !payload.is_empty() {
            if self.json {
                sse::encode_data(&json::render_array(payload), self.encoding, &mut out);
            } else {
                sse::encode_data(payload, self.encoding, &mut out);
            }
        }
        self.control(end, up_to_date, closed, &mut out);
        self.offset = ReadFrom::At(end);
        if closed {
            self.finish();
        }
        (!out.is_empty()).then_some(out)
    }

    /// Appends a control event, unless it would repeat the previous one word for word.
    fn control(&mut self, end: Offset, up_to_date: bool, closed: bool, out: &mut Vec<u8>) {
        let next_offset = end.to_string();
        let repeat = out.is_empty()
            && !closed
            && self.last_control.as_ref() == Some(&(next_offset.clone(), up_to_date));
        if repeat {
            return;
        }
        let control = Control {
            next_offset: next_offset.clone(),
            cursor: Some(self.cursor.to_string()),
            up_to_date,
            closed,
        };
        sse::encode_control(&control, out);
        self.last_control = Some((next_offset, up_to_date));
    }
}

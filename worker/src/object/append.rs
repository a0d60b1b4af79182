//! Appends: a POST's body or a `live=ws` append frame, decided by the core's
//! [`stream::plan_append`] and written in one turn (the log rows, the producer state, the lease
//! and the metadata together), then queued for live readers, subscriptions and channels.

use std::time::Duration;

use edgestream::headers::{self as h, ContentType, ProducerHeaders};
use edgestream::json::{self, Purpose};
use edgestream::lease::{Lease, LeaseChange, LeaseRequest};
use edgestream::producer::ClosingProducer;
use edgestream::stream::{self, AppendPlan, AppendRequest, AppendTarget};
use edgestream::time::format_rfc3339;
use edgestream::ProtocolError;
use worker::{Delay, Headers, Request, Response, Result};

use super::expiry::touch_due;
use super::store::{self, Meta, Store, StoredProducer};
use super::EXPIRE_PRODUCERS_PER_APPEND;
use super::{alarm, channel, gap_wait, live, subscribers, Lookup, StreamObject};
use crate::http::{self, now_ms};
use crate::intake::Held;
use crate::reply;
use crate::wsproto::{self, ClientHello};

impl StreamObject {
    /// A POST: its body read whole (its share of the isolate's budget held until it is
    /// answered), then appended.
    pub(super) async fn append(&self, mut req: Request) -> Result<Response> {
        let mut held = Held::new(self.config.body_budget_bytes);
        // The appends of its producer that came before it wait for it, holding their shares:
        // refused for the budget, it would leave them all to time out (409).
        if self.next_of_its_producer(req.headers())? {
            held.may_exceed();
        }
        let body = match self.read_body(&mut req, &mut held).await? {
            Ok(body) => body,
            Err(refusal) => return refusal.response(),
        };
        // Refused after its body is read: one left unread can break the edge's call.
        if self.is_channel()? {
            return channel::refuse_append();
        }
        // A producer's POST that came before its predecessor may wait for it; a socket's frame,
        // relayed by the edge (`X_SOCKET_FRAME`), does not.
        self.append_body(req.headers(), body, true).await
    }

    /// Whether a POST is the append its producer's state takes next (its stored state, as the
    /// append would be decided now, accepts it). A small body is not asked about: it has the
    /// small bodies' part of the budget ([`crate::intake`]).
    fn next_of_its_producer(&self, headers: &Headers) -> Result<bool> {
        let [id, epoch, seq, length] = http::header_values(
            headers,
            [
                h::PRODUCER_ID,
                h::PRODUCER_EPOCH,
                h::PRODUCER_SEQ,
                h::CONTENT_LENGTH,
            ],
        );
        let declared = length.and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len <= crate::intake::SMALL_BODY_BYTES) {
            return Ok(false);
        }
        let Ok(Some(p)) = ProducerHeaders::parse(id.as_deref(), epoch.as_deref(), seq.as_deref())
        else {
            return Ok(false);
        };
        let store = self.store()?;
        let stored = self.producer_state(store, store.lease()?.as_ref(), p.id, now_ms())?;
        Ok(matches!(
            edgestream::producer::decide(stored.map(|s| s.state), p.epoch, p.seq),
            edgestream::producer::ProducerDecision::Accept { .. }
        ))
    }

    /// Producer `id`'s stored state and its age stamp, as its appends are decided at `now` under the stored
    /// `lease`: state idle past `PRODUCER_TTL_MS` counts as absent, except for the holder of an
    /// active writer lease, which keeps its state for as long as it holds the lease (which may
    /// be longer): it alone may append meanwhile.
    fn producer_state(
        &self,
        store: &Store,
        lease: Option<&Lease>,
        id: &str,
        now: i64,
    ) -> Result<Option<StoredProducer>> {
        let held = lease.is_some_and(|l| l.is_active(now) && l.holder == id);
        let kept_since = match held {
            true => i64::MIN,
            false => edgestream::producer::kept_since(now, self.config.producer_ttl_ms),
        };
        store.producer(id, kept_since)
    }

    /// A client socket's append frame, applied as the POST it stands for; the reply is an ack
    /// or an error.
    pub(super) async fn socket_append(
        &self,
        frame: &wsproto::AppendFrame<'_>,
        body: Vec<u8>,
        hello: &ClientHello,
    ) -> String {
        // The token's expiry counts at each append, as at the edge.
        if let Some(refusal) = hello.append.refusal(frame.id, http::now_secs()) {
            return refusal;
        }
        let result = self.apply_frame(frame, body).await;
        if result.is_err() {
            self.forget_cached();
        }
        wsproto::answer(frame.id, result).await
    }

    /// The POST an append frame stands for: its refusal, or the append's response.
    async fn apply_frame(
        &self,
        frame: &wsproto::AppendFrame<'_>,
        body: Vec<u8>,
    ) -> Result<std::result::Result<Response, ProtocolError>> {
        if self.is_channel()? {
            return channel::refuse_append().map(Ok);
        }
        let content_type = self
            .meta()?
            .map(|m| m.content_type)
            .unwrap_or_else(ContentType::default_type);
        let headers =
            match wsproto::append_headers(frame, &body, content_type.as_str(), &self.config)? {
                Ok(headers) => headers,
                Err(e) => return Ok(Err(e)),
            };
        let resp = self
            .in_flight(self.append_body(&headers, body, false))
            .await;
        live::flush(&self.hub);
        resp.map(Ok)
    }

    /// Runs an append, counted in [`StreamObject::appends_in_flight`] while it runs.
    pub(super) async fn in_flight<T>(&self, append: impl std::future::Future<Output = T>) -> T {
        self.appends_in_flight.set(self.appends_in_flight.get() + 1);
        let out = append.await;
        self.appends_in_flight.set(self.appends_in_flight.get() - 1);
        out
    }

    /// The stream an append goes to at `now`, or why there is none; `instance` is the
    /// incarnation the append is for, if any: the one the edge named for it, or the one it found
    /// before it waited.
    async fn append_target(
        &self,
        instance: Option<&str>,
        now: i64,
    ) -> Result<std::result::Result<Meta, ProtocolError>> {
        let meta = match self.lookup(now).await? {
            Lookup::Live(meta) => meta,
            Lookup::Deleted => return Ok(Err(ProtocolError::Gone)),
            Lookup::Missing => return Ok(Err(ProtocolError::NotFound)),
        };
        // An append the edge relays for a WebSocket session names the incarnation the session
        // reads: one deleted since, even if created again, is gone for it.
        if instance.is_some_and(|i| i != meta.instance) {
            return Ok(Err(ProtocolError::NotFound));
        }
        Ok(Ok(meta))
    }

    /// Appends `body` with the request headers `headers` (POST's, or a socket frame's).
    ///
    /// A producer's append that is ahead of its producer's state (a gap, or a new epoch's append
    /// after its first: its predecessors still on their way) waits for them when `may_wait`, up to
    /// [`gap_wait::GAP_WAIT_MS`] in all, and is then decided again, on the incarnation it found
    /// (one deleted meanwhile is gone for it, whatever was created since). HTTP appends may wait: the
    /// runtime hands pipelined requests to the object in any order. Socket frames never wait
    /// (those the edge relays carry `X_SOCKET_FRAME`): one socket's frames are applied in the
    /// order they came.
    async fn append_body(
        &self,
        headers: &Headers,
        body: Vec<u8>,
        may_wait: bool,
    ) -> Result<Response> {
        // Every header an append reads, in one call.
        let [producer_id, producer_epoch, producer_seq, stream_seq, content_type, lease, closed, instance, socket_frame] =
            http::header_values(
                headers,
                [
                    h::PRODUCER_ID,
                    h::PRODUCER_EPOCH,
                    h::PRODUCER_SEQ,
                    h::STREAM_SEQ,
                    h::CONTENT_TYPE,
                    h::STREAM_LEASE_TTL,
                    h::STREAM_CLOSED,
                    reply::X_INSTANCE,
                    reply::X_SOCKET_FRAME,
                ],
            );
        let stream_seq = http::stream_seq(stream_seq);
        let may_wait = may_wait && socket_frame.is_none();
        // Parsed now, refused after the lookup: a missing stream is 404 whatever the headers.
        let parsed = ProducerHeaders::parse(
            producer_id.as_deref(),
            producer_epoch.as_deref(),
            producer_seq.as_deref(),
        )
        .map_err(ProtocolError::from)
        .and_then(|producer| {
            let lease = lease.map(|v| LeaseRequest::parse(&v)).transpose()?;
            Ok(AppendRequest {
                content_type: content_type.as_deref(),
                body_len: body.len(),
                close: h::is_closed(closed.as_deref()),
                stream_seq: stream_seq.as_deref(),
                producer,
                lease,
            })
        });
        let mut now = now_ms();
        let wait_until = now + gap_wait::GAP_WAIT_MS;
        // The incarnation an append that waits found: it is decided again on that stream alone.
        // Deleted (or expired) meanwhile, that stream is gone for the append (404), even if
        // another was created at the path, whose producer of the same id may since have reached
        // the sequence number the append waited for.
        let mut found: Option<String> = None;
        // From the last lookup on there is no await until the response: the append is one
        // atomic turn.
        let (mut meta, request, stored_lease, stored, plan) = loop {
            let meta = match self
                .append_target(found.as_deref().or(instance.as_deref()), now)
                .await?
            {
                Ok(meta) => meta,
                Err(e) => return http::error(&e),
            };
            let request = match &parsed {
                Ok(request) => request,
                Err(e) => return http::error(e),
            };
            // Opened once the stream is found: an append to one that does not exist stores
            // nothing, not even the tables.
            let store = self.store()?;
            let stored_lease = store.lease()?;
            let stored = match &request.producer {
                Some(p) => self.producer_state(store, stored_lease.as_ref(), p.id, now)?,
                None => None,
            };
            let target = AppendTarget {
                content_type: &meta.content_type,
                closed: meta.closed,
                closed_by: meta.closed_by.as_ref(),
                tail: meta.tail,
                last_stream_seq: meta.last_stream_seq.as_deref(),
                lease: stored_lease.as_ref(),
                now_ms: now,
            };
            match (
                stream::plan_append(&target, request, stored.map(|s| s.state)),
                &request.producer,
            ) {
                (Ok(plan), _) => break (meta, request, stored_lease, stored, plan),
                (Err(ProtocolError::Producer(d)), Some(p))
                    if d.is_ahead() && may_wait && now < wait_until =>
                {
                    if found.is_none() {
                        found = Some(meta.instance.clone());
                    }
                    self.producer_turns.wait(p.id, wait_until - now).await;
                    now = now_ms();
                }
                (Err(e), _) => return http::error(&e),
            }
        };
        let store = self.store()?;
        let producer = &request.producer;
        let kept_since = edgestream::producer::kept_since(now, self.config.producer_ttl_ms);
        // The active lease held by this request's producer, if any.
        let held_by_producer = |lease: Option<&Lease>| {
            lease
                .filter(|l| l.is_active(now))
                .filter(|l| producer.as_ref().is_some_and(|p| p.id == l.holder))
                .map(|l| l.expires_ms)
        };
        let (producer_state, close, lease) = match plan {
            AppendPlan::AlreadyDone { duplicate, closed } => {
                // A retried write is a write: it slides a TTL as its first send did, so a
                // producer retrying into a quiet stream does not watch it expire under it.
                self.touch(&mut meta, now)?;
                let resp = Response::empty()?.with_status(204);
                let out = resp.headers();
                // Nothing was appended, so there is no offset after it to report: the tail now
                // may be past other writers' data, which a client reading on from it would skip.
                // A closed stream's tail is its final offset, which a repeated close reports.
                if closed {
                    out.set(h::STREAM_NEXT_OFFSET, &meta.tail.to_string())?;
                    out.set(h::STREAM_CLOSED, "true")?;
                }
                for (name, value) in duplicate.map(|d| d.headers()).unwrap_or_default() {
                    out.set(name, &value)?;
                }
                // A retry whose first answer was lost learns the lease its producer holds, as
                // the first answer said.
                if let Some(at) = held_by_producer(stored_lease.as_ref()) {
                    out.set(h::STREAM_LEASE_EXPIRES_AT, &format_rfc3339(at))?;
                }
                return Ok(resp);
            }
            AppendPlan::Write {
                producer,
                close,
                lease,
            } => (producer, close, lease),
        };
        // The lease this append leaves its producer holding, for the response.
        let lease_held_until = match &lease {
            LeaseChange::Set(l) => Some(l.expires_ms),
            LeaseChange::Clear => None,
            LeaseChange::Keep => held_by_producer(stored_lease.as_ref()),
        };
        let data = if meta.is_json() && !body.is_empty() {
            let framed = json::frame_messages(&body, Purpose::Append);
            // The framing is the body's size again: the body goes before storage copies it.
            drop(body);
            match framed {
                Ok(framed) => framed,
                Err(e) => return http::error(&e.into()),
            }
        } else {
            body
        };
        let start = meta.tail;
        let Some(tail) = store::end_of(start, data.len()) else {
            return http::error(&ProtocolError::StreamFull);
        };
        if let Some(refusal) = channel::oversized_copy(self, &meta, &data)? {
            return Ok(refusal);
        }
        let seq_changed = request.stream_seq.is_some();
        // A plain append of one row writes exactly one statement below: one INSERT, with no
        // producer state, lease, close, Stream-Seq, sliding-TTL access time or owed
        // notification to store beside it (the stream's row is not rewritten; memory learns
        // the new tail; subscriptions told inline are owed by the alarm alone). SQLite applies
        // a single statement whole or not at all, so it needs no transaction of its own:
        // `transactionSync` would only cost its savepoint. (The alarm a channel link or a
        // subscription sets after it commits with the turn either way.) A torn-write fault,
        // which fails after the rows, keeps the transaction.
        let one_statement = producer.is_none()
            && matches!(lease, LeaseChange::Keep)
            && !close
            && !seq_changed
            && store::one_row(&data)
            && !touch_due(&meta, now)
            && !subscribers::writes_row(self)?
            && !self.faults.armed(&meta.path, crate::fault::Call::TornWrite);
        // The rows, the producer's state, the lease and the metadata are stored together or
        // not at all: an append refused for a storage failure leaves nothing its retry would
        // store again.
        let mut write = || {
            store.append(start, &data, meta.is_json())?;
            if let (Some(p), Some(state)) = (&producer, producer_state) {
                // The stamp is rewritten only once this append comes after it.
                let kept = stored.map(|s| s.stamp_ms);
                let stamp = edgestream::producer::restamp(kept, now, self.config.producer_ttl_ms);
                store.save_producer(p.id, state, stamp)?;
                // A producer new to the stream (or whose state expired) clears out a few
                // expired ones, so their rows stay bounded by those appended to within the TTL.
                // A stream's closer is answered from its metadata row, so no state here is
                // needed for that.
                if stored.is_none() {
                    store.expire_producers(kept_since, EXPIRE_PRODUCERS_PER_APPEND)?;
                }
            }
            store.save_lease(&lease)?;
            meta.tail = tail;
            if let Some(seq) = request.stream_seq {
                meta.last_stream_seq = Some(seq.to_owned());
            }
            if close {
                meta.closed = true;
                meta.closed_by = producer.as_ref().map(|p| ClosingProducer {
                    id: p.id.to_string(),
                    epoch: p.epoch,
                    seq: p.seq,
                });
            }
            // A sliding TTL is refreshed as reads refresh it: at most once per `TOUCH_EVERY_MS`.
            self.touch(&mut meta, now)?;
            if close || seq_changed {
                self.save(&meta)?;
            } else {
                // Only the tail moved (and perhaps the access time, written by `touch`); the
                // rows just written say where the tail is.
                self.remember(&meta);
            }
            // A lease-only request changes nothing subscriptions see.
            if !data.is_empty() || close {
                subscribers::owe_notification(self, &meta)?;
            }
            self.faults.check(&meta.path, crate::fault::Call::TornWrite)
        };
        match one_statement {
            true => write()?,
            false => store.atomically(write)?,
        }
        if let (Some(p), Some(_)) = (&producer, producer_state) {
            // Its appends that came too early look again once this turn yields.
            self.producer_turns.advanced(p.id);
        }
        // A producer's data append is acknowledged with 200; a close-only request has no data.
        let status = if producer_state.is_some() && !data.is_empty() {
            200
        } else {
            204
        };
        // A lease-only request changes nothing readers, subscriptions or channels see.
        if !data.is_empty() || close {
            channel::stored(self, &meta);
            live::queue(&self.hub, start, tail, meta.closed, data, meta.is_json());
            if self.appends_in_flight.get() > 1 {
                // Other appends are on their way in: give them one turn of the event loop to
                // join this frame, so a burst costs every reader one frame instead of many.
                Delay::from(Duration::ZERO).await;
            }
            live::flush(&self.hub);
            subscribers::appended(self, &meta).await?;
            channel::forward(self).await;
            alarm::stand_down(self);
        }

        let resp = Response::empty()?.with_status(status);
        let out = resp.headers();
        out.set(h::STREAM_NEXT_OFFSET, &tail.to_string())?;
        if meta.closed {
            out.set(h::STREAM_CLOSED, "true")?;
        }
        if let Some(state) = producer_state {
            out.set(h::PRODUCER_EPOCH, &state.epoch.to_string())?;
            out.set(h::PRODUCER_SEQ, &state.last_seq.to_string())?;
        }
        if let Some(at) = lease_held_until {
            out.set(h::STREAM_LEASE_EXPIRES_AT, &format_rfc3339(at))?;
        }
        Ok(resp)
    }
}

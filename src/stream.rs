//! The stream state machine's rules: create-or-match, append precedence, closing, expiry, forks
//! and cache policy. Pure functions over the stored state and the parsed request; the server
//! does the storage and the client can reuse the same rules to predict outcomes.

use alloc::borrow::Cow;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::error::ProtocolError;
use crate::headers::{ContentType, HeaderError, ProducerHeaders};
use crate::lease::{self, Lease, LeaseChange, LeaseRequest};
use crate::offset::Offset;
use crate::producer::{self, ClosingProducer, ProducerDecision, ProducerState};

/// When a stream expires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Expiry {
    /// Never.
    #[default]
    Never,
    /// After this many seconds without a read or write (HEAD does not count).
    Ttl(u64),
    /// At this instant (Unix milliseconds).
    At(i64),
}

impl Expiry {
    /// From `Stream-TTL` and `Stream-Expires-At`; sending both is an error.
    pub fn from_headers(
        ttl: Option<&str>,
        expires_at: Option<&str>,
    ) -> Result<Expiry, HeaderError> {
        match (ttl, expires_at) {
            (Some(_), Some(_)) => Err(HeaderError::TtlAndExpiresAt),
            (Some(t), None) => crate::headers::parse_ttl(t).map(Expiry::Ttl),
            (None, Some(e)) => crate::headers::parse_expires_at(e).map(Expiry::At),
            (None, None) => Ok(Expiry::Never),
        }
    }

    /// Whether a stream created at `now_ms` with this expiry of its own would live at all: a
    /// TTL of 0 or an expiry already past would answer 201 for a stream no later request finds.
    pub fn check_new(self, now_ms: i64) -> Result<(), HeaderError> {
        match self {
            Expiry::Ttl(0) => Err(HeaderError::TtlZero),
            Expiry::At(at) if at <= now_ms => Err(HeaderError::ExpiresAtPast),
            _ => Ok(()),
        }
    }

    /// The instant the stream expires, given when it was last read or written.
    pub fn deadline(self, last_access_ms: i64) -> Option<i64> {
        match self {
            Expiry::Never => None,
            Expiry::Ttl(s) => {
                let ms = i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1000);
                Some(last_access_ms.saturating_add(ms))
            }
            Expiry::At(at) => Some(at),
        }
    }

    /// Whether the stream has expired at `now_ms`.
    pub fn is_expired(self, last_access_ms: i64, now_ms: i64) -> bool {
        self.deadline(last_access_ms).is_some_and(|d| now_ms >= d)
    }

    /// A fork's expiry from its source's and its own request (PROTOCOL.md §4.2): a fork that asks
    /// for nothing inherits the source's TTL value or absolute deadline; anything asked for wins.
    pub fn for_fork(source: Expiry, requested: Expiry) -> Expiry {
        match requested {
            Expiry::Never => source,
            own => own,
        }
    }

    /// How long a read answered at `now_ms` may be kept by a cache, in seconds: never past the
    /// stream's expiry. A TTL counts from this read, which slides it. `None`: it never expires.
    pub fn lifetime_s(self, now_ms: i64) -> Option<u64> {
        match self {
            Expiry::Never => None,
            Expiry::Ttl(s) => Some(s),
            Expiry::At(at) => Some(u64::try_from(at.saturating_sub(now_ms)).unwrap_or(0) / 1000),
        }
    }

    /// As two integers (kind, value), for storage and for calls between objects.
    pub fn to_parts(self) -> (i64, i64) {
        match self {
            Expiry::Never => (0, 0),
            Expiry::Ttl(s) => (1, i64::try_from(s).unwrap_or(i64::MAX)),
            Expiry::At(at) => (2, at),
        }
    }

    /// From [`Expiry::to_parts`]; an unknown kind is `Never`.
    pub fn from_parts(kind: i64, value: i64) -> Expiry {
        match kind {
            1 => Expiry::Ttl(u64::try_from(value).unwrap_or(0)),
            2 => Expiry::At(value),
            _ => Expiry::Never,
        }
    }

    /// `Stream-TTL` value to report, if any.
    pub fn ttl_seconds(self) -> Option<u64> {
        match self {
            Expiry::Ttl(s) => Some(s),
            _ => None,
        }
    }

    /// `Stream-Expires-At` instant to report, if any.
    pub fn expires_at_ms(self) -> Option<i64> {
        match self {
            Expiry::At(at) => Some(at),
            _ => None,
        }
    }
}

/// How a stored stream answers a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Readable and writable.
    Live,
    /// Soft-deleted (forks still read through it): 410 to clients, 409 to PUT.
    Deleted,
    /// Its expiry has just passed with no forks: remove it, and answer as missing.
    Expired,
    /// Its expiry has just passed while forks read through it: soft-delete it, and answer as
    /// [`Standing::Deleted`].
    ExpiredWithForks,
}

impl Standing {
    /// A soft-deleted stream stays deleted whatever its expiry says, and an expired one with
    /// forks is kept as one (PROTOCOL.md, Forks): its path must not be created afresh over the
    /// data its forks still read.
    pub fn of(deleted: bool, forks: u64, expiry: Expiry, accessed_ms: i64, now_ms: i64) -> Self {
        if deleted {
            Standing::Deleted
        } else if !expiry.is_expired(accessed_ms, now_ms) {
            Standing::Live
        } else if forks > 0 {
            Standing::ExpiredWithForks
        } else {
            Standing::Expired
        }
    }
}

/// The fork part of a stream's creation request, as the client asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkRequest {
    /// The source stream's path.
    pub source: String,
    /// Divergence point as asked (`None`: the source's tail at creation).
    pub offset: Option<Offset>,
    /// Messages or bytes past `offset`.
    pub sub_offset: u64,
}

/// An existing fork: the request that created it, and the divergence point it resolved to.
#[derive(Clone, Copy, Debug)]
pub struct ExistingFork<'a> {
    /// The create request the fork was made with.
    pub request: &'a ForkRequest,
    /// Where it diverged from its source.
    pub point: Offset,
    /// The source's expiry when the fork was made, which a fork asking for none takes; `None`
    /// for a fork stored before it was recorded (then any is taken to match).
    pub inherited_expiry: Option<Expiry>,
}

impl ForkRequest {
    /// Whether this request, made again, describes `existing`. An omitted `Stream-Fork-Offset`
    /// matches any point, so a client retrying a lost 201 with the offset it saw, or without
    /// one, is answered 200 either way, even after the source has grown (the reference server
    /// answers that retry 409).
    pub fn matches(&self, existing: &ExistingFork<'_>) -> bool {
        if self.source != existing.request.source {
            return false;
        }
        if self == existing.request {
            return true;
        }
        match self.offset {
            None => self.sub_offset == 0,
            Some(offset) => self.sub_offset == 0 && offset == existing.point,
        }
    }
}

/// What a PUT asks for.
#[derive(Clone, Debug)]
pub struct CreateRequest {
    /// `None` when the request had no `Content-Type` (default type, or the fork source's).
    pub content_type: Option<ContentType>,
    /// `Stream-TTL` or `Stream-Expires-At`, or neither.
    pub expiry: Expiry,
    /// `Stream-Closed: true`: created closed.
    pub closed: bool,
    /// `Stream-Forked-From` and its offsets, for a fork.
    pub fork: Option<ForkRequest>,
}

/// The configuration of an existing stream, for idempotent-create comparison.
#[derive(Clone, Debug)]
pub struct ExistingConfig<'a> {
    /// The stream's stored content type.
    pub content_type: &'a ContentType,
    /// The expiry the stream was created with (as resolved at creation, forks included).
    pub expiry: Expiry,
    /// Whether the stream is closed now.
    pub closed: bool,
    /// How it was forked, for a fork.
    pub fork: Option<ExistingFork<'a>>,
}

/// What a PUT on an existing stream gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    /// Same configuration: 200.
    Matches,
    /// Different configuration (or closure status): 409.
    Conflict,
}

impl CreateRequest {
    /// Compares this request with an existing stream. Absent content type and expiry on a fork
    /// mean "inherit": the source's content type, which a fork always has, and the source's
    /// expiry, which the fork has unless it asked for its own; on a plain stream they mean the
    /// defaults. Closure is compared with the stream's current status, as the protocol asks.
    pub fn compare(&self, existing: &ExistingConfig<'_>) -> CreateOutcome {
        let is_fork = self.fork.is_some();
        let type_matches = match &self.content_type {
            Some(ct) => ct.matches(existing.content_type),
            None if is_fork => true,
            None => ContentType::default_type().matches(existing.content_type),
        };
        let expiry_matches = match (self.expiry, &existing.fork) {
            (Expiry::Never, Some(fork)) if is_fork => fork
                .inherited_expiry
                .is_none_or(|inherited| inherited == existing.expiry),
            (asked, _) => asked == existing.expiry,
        };
        let fork_matches = match (&self.fork, &existing.fork) {
            (None, None) => true,
            (Some(asked), Some(fork)) => asked.matches(fork),
            _ => false,
        };
        if type_matches && expiry_matches && self.closed == existing.closed && fork_matches {
            CreateOutcome::Matches
        } else {
            CreateOutcome::Conflict
        }
    }
}

/// Which ancestor of a fork holds position `at`, below the fork's `base`: `bases` are the
/// ancestors' own bases (the lowest position each holds itself), nearest first. Answers the
/// ancestor's index and the end of the range it holds for this fork (the base of the ancestor
/// nearer the fork, or the fork's own). `None` when no ancestor reaches down to `at`, which a
/// complete ancestry (ending at a stream that is not a fork, base 0) never is.
pub fn ancestor_holding(
    bases: impl IntoIterator<Item = u64>,
    base: Offset,
    at: Offset,
) -> Option<(usize, Offset)> {
    if at >= base {
        return None;
    }
    let mut end = base;
    for (i, b) in bases.into_iter().enumerate() {
        if b <= at.position() {
            return Some((i, end));
        }
        // An ancestor forked below its own source's base (its range is empty) does not lift
        // the end: what lies above it is held by an ancestor nearer the fork.
        end = end.min(Offset::new(b)?);
    }
    None
}

/// Deepest chain of forks: a stream that is not a fork is 0 deep, a fork one deeper than its
/// source. A fork records its ancestors, and every read of inherited data and every fork of it
/// loads them, so the chain is bounded.
pub const MAX_FORK_DEPTH: u32 = 64;

/// The ancestors a new fork at `point` records, from its source's ancestry (the source first,
/// then its own ancestors, nearest first, with `base_of` each one's base): those it inherits a
/// non-empty range from. An ancestor whose base is at or above the base of one nearer the fork
/// (or at or above `point`) holds nothing the fork can read, so each kept ancestor's base is
/// below the last one's. Never empty: a fork that inherits nothing (at 0) keeps its source, as
/// an empty ancestry means one recorded before ancestries were.
pub fn inherited_ancestors<T>(
    ancestry: impl IntoIterator<Item = T>,
    base_of: impl Fn(&T) -> u64,
    point: Offset,
) -> Vec<T> {
    let mut ancestry = ancestry.into_iter();
    let Some(source) = ancestry.next() else {
        return Vec::new();
    };
    let mut below = point.position();
    let mut kept = Vec::new();
    let mut unkept_source = None;
    if base_of(&source) < below {
        below = base_of(&source);
        kept.push(source);
    } else {
        unkept_source = Some(source);
    }
    for a in ancestry {
        let b = base_of(&a);
        if b < below {
            below = b;
            kept.push(a);
        }
    }
    if kept.is_empty() {
        kept.extend(unkept_source);
    }
    kept
}

/// The stored state an append is checked against.
#[derive(Clone, Copy, Debug)]
pub struct AppendTarget<'a> {
    /// The stream's stored content type, which an append's must match.
    pub content_type: &'a ContentType,
    /// Whether it is closed: every append but its closer's retry is then 409.
    pub closed: bool,
    /// The producer append that closed it, so that append's retry is a duplicate.
    pub closed_by: Option<&'a ClosingProducer>,
    /// Its current tail, the offset a successful append starts at.
    pub tail: Offset,
    /// The last `Stream-Seq` any writer sent, which the next must exceed.
    pub last_stream_seq: Option<&'a str>,
    /// The writer lease as stored, run out or not.
    pub lease: Option<&'a Lease>,
    /// When the append is judged (Unix milliseconds): leases run out by it.
    pub now_ms: i64,
}

/// What a POST carries, after header parsing.
#[derive(Clone, Debug)]
pub struct AppendRequest<'a> {
    /// The raw `Content-Type` header, if any.
    pub content_type: Option<&'a str>,
    /// The body's length: an empty append must close the stream or change the lease.
    pub body_len: usize,
    /// `Stream-Closed: true`.
    pub close: bool,
    /// `Stream-Seq`.
    pub stream_seq: Option<&'a str>,
    /// `Producer-Id`, `-Epoch` and `-Seq`, all three or none.
    pub producer: Option<ProducerHeaders<'a>>,
    /// `Stream-Lease-TTL`.
    pub lease: Option<LeaseRequest>,
}

/// What the server should do with an append that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendPlan {
    /// Write the body (it may be empty for close-only or lease-only), store the producer state
    /// and the lease change with it, and close the stream if `close`. Answer 200 with producer
    /// headers when there is data, else 204.
    Write {
        /// The producer's new state, stored in the same transaction as the data.
        producer: Option<ProducerState>,
        /// Whether this append closes the stream.
        close: bool,
        /// What becomes of the writer lease.
        lease: LeaseChange,
    },
    /// Nothing to write: a producer retry of something already appended (204 with the
    /// producer's headers), or a repeated close (204 with `Stream-Closed`).
    AlreadyDone {
        /// The producer's `Duplicate`, for its headers.
        duplicate: Option<ProducerDecision>,
        /// Whether the stream is closed, for `Stream-Closed`.
        closed: bool,
    },
}

/// Checks an append in the protocol's precedence: closed stream first, then body and content
/// type, then the idempotent producer (so retries dedupe before `Stream-Seq` is compared), then
/// the writer lease (so a retry of an acknowledged append still dedupes after its producer lost
/// the lease), then `Stream-Seq`. `stored_producer` is the state of `request.producer`'s id, if
/// any.
pub fn plan_append(
    target: &AppendTarget<'_>,
    request: &AppendRequest<'_>,
    stored_producer: Option<ProducerState>,
) -> Result<AppendPlan, ProtocolError> {
    let has_body = request.body_len > 0;
    if request.lease.is_some() && request.producer.is_none() {
        return Err(HeaderError::LeaseWithoutProducer.into());
    }
    if target.closed {
        if let Some(p) = &request.producer {
            if target.closed_by.is_some_and(|c| c.is(p.id, p.epoch, p.seq)) {
                let duplicate = ProducerDecision::Duplicate {
                    epoch: p.epoch,
                    highest_seq: p.seq,
                };
                return Ok(AppendPlan::AlreadyDone {
                    duplicate: Some(duplicate),
                    closed: true,
                });
            }
        }
        // Closing again is idempotent, but not for a producer that did not close it: its
        // close did not happen and it must learn the stream was closed by someone else.
        if request.close && !has_body && request.producer.is_none() {
            return Ok(AppendPlan::AlreadyDone {
                duplicate: None,
                closed: true,
            });
        }
        return Err(ProtocolError::Closed {
            final_offset: target.tail,
        });
    }
    if !has_body && !request.close && request.lease.is_none() {
        return Err(ProtocolError::EmptyBody);
    }
    if has_body {
        let raw = request.content_type.filter(|c| !c.trim().is_empty());
        let raw = raw.ok_or(ProtocolError::MissingContentType)?;
        // The stream's own type, as stored, always matches: a stream created before the length
        // cap is still appended to with it (a `live=ws` frame carries it as its type).
        if raw.trim() != target.content_type.as_str() {
            let ct = ContentType::parse(raw)?;
            if !ct.matches(target.content_type) {
                return Err(ProtocolError::ContentTypeMismatch);
            }
        }
    }
    let mut producer_state = None;
    if let Some(p) = &request.producer {
        match producer::decide(stored_producer, p.epoch, p.seq) {
            ProducerDecision::Accept { state } => producer_state = Some(state),
            d @ ProducerDecision::Duplicate { .. } => {
                return Ok(AppendPlan::AlreadyDone {
                    duplicate: Some(d),
                    closed: false,
                });
            }
            refusal => return Err(ProtocolError::Producer(refusal)),
        }
    }
    let lease = lease::decide(
        target.lease,
        request.producer.as_ref().map(|p| p.id),
        request.lease,
        target.now_ms,
    )?;
    if let (Some(seq), Some(last)) = (request.stream_seq, target.last_stream_seq) {
        if seq.as_bytes() <= last.as_bytes() {
            return Err(ProtocolError::StreamSeqRegression);
        }
    }
    Ok(AppendPlan::Write {
        producer: producer_state,
        close: request.close,
        lease,
    })
}

/// Which kind of response a `Cache-Control` is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheKind {
    /// A read that returned data: immutable by position, so CDN-cacheable.
    Data(CacheScope),
    /// A read that returned nothing at the tail: may change at any moment.
    EmptyAtTail,
    /// `offset=now`, HEAD, long-poll timeouts, writes and errors.
    NoStore,
    /// SSE and other live streams.
    Live,
}

/// Who may keep a read that returned data, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheScope {
    /// Shared caches may keep it (`public`). False while reads need credentials: then only
    /// the reader's own cache may (`private`), or a CDN could hand one reader's data to another.
    pub shared: bool,
    /// Seconds until the stream may expire ([`Expiry::lifetime_s`]): no cache may serve its
    /// data after that, nor a deleted and re-created stream's old data for long.
    pub lifetime_s: Option<u64>,
}

/// How long a read with data stays fresh, and then how long it may be served stale while it
/// is revalidated (PROTOCOL.md §8.1).
const MAX_AGE_S: u64 = 60;
const STALE_WHILE_REVALIDATE_S: u64 = 300;

/// The `Cache-Control` value.
pub fn cache_control(kind: CacheKind) -> Cow<'static, str> {
    match kind {
        CacheKind::Data(CacheScope { shared, lifetime_s }) => {
            let scope = if shared { "public" } else { "private" };
            let lifetime = lifetime_s.unwrap_or(u64::MAX);
            let max_age = lifetime.min(MAX_AGE_S);
            let stale = (lifetime - max_age).min(STALE_WHILE_REVALIDATE_S);
            match (max_age, stale) {
                (0, _) => Cow::Borrowed("no-cache"),
                (_, 0) => Cow::Owned(format!("{scope}, max-age={max_age}")),
                _ => Cow::Owned(format!(
                    "{scope}, max-age={max_age}, stale-while-revalidate={stale}"
                )),
            }
        }
        CacheKind::EmptyAtTail => Cow::Borrowed("no-cache"),
        CacheKind::NoStore => Cow::Borrowed("no-store"),
        CacheKind::Live => Cow::Borrowed("no-cache"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::HeaderError;

    fn ct(s: &str) -> ContentType {
        ContentType::parse(s).unwrap()
    }

    #[test]
    fn a_new_stream_must_not_be_born_expired() {
        assert_eq!(Expiry::Ttl(0).check_new(5_000), Err(HeaderError::TtlZero));
        assert_eq!(Expiry::Ttl(1).check_new(5_000), Ok(()));
        assert_eq!(
            Expiry::At(5_000).check_new(5_000),
            Err(HeaderError::ExpiresAtPast)
        );
        assert_eq!(
            Expiry::At(4_999).check_new(5_000),
            Err(HeaderError::ExpiresAtPast)
        );
        assert_eq!(Expiry::At(5_001).check_new(5_000), Ok(()));
        assert_eq!(Expiry::Never.check_new(5_000), Ok(()));
    }

    #[test]
    fn expiry_headers() {
        assert_eq!(Expiry::from_headers(None, None), Ok(Expiry::Never));
        assert_eq!(Expiry::from_headers(Some("60"), None), Ok(Expiry::Ttl(60)));
        assert_eq!(
            Expiry::from_headers(None, Some("1970-01-01T00:00:01Z")),
            Ok(Expiry::At(1000))
        );
        assert_eq!(
            Expiry::from_headers(Some("60"), Some("1970-01-01T00:00:01Z")),
            Err(HeaderError::TtlAndExpiresAt)
        );
        assert_eq!(
            Expiry::from_headers(Some("1.5"), None),
            Err(HeaderError::Ttl)
        );
    }

    #[test]
    fn expiry_arithmetic() {
        assert!(!Expiry::Never.is_expired(0, i64::MAX));
        assert!(!Expiry::Ttl(2).is_expired(1000, 2999));
        assert!(Expiry::Ttl(2).is_expired(1000, 3000));
        assert!(Expiry::Ttl(0).is_expired(1000, 1000));
        assert!(!Expiry::At(5000).is_expired(0, 4999));
        assert!(Expiry::At(5000).is_expired(9_999_999, 5000));
        assert_eq!(Expiry::Ttl(u64::MAX).deadline(i64::MAX - 1), Some(i64::MAX));
    }

    #[test]
    fn fork_expiry_table() {
        use Expiry::*;
        let rows = [
            (Never, Never, Never),
            (Never, Ttl(5), Ttl(5)),
            (Never, At(9), At(9)),
            (Ttl(7), Never, Ttl(7)),
            (Ttl(7), Ttl(5), Ttl(5)),
            (Ttl(7), At(9), At(9)),
            (At(3), Never, At(3)),
            (At(3), Ttl(5), Ttl(5)),
            (At(3), At(9), At(9)),
        ];
        for (source, asked, got) in rows {
            assert_eq!(Expiry::for_fork(source, asked), got, "{source:?} {asked:?}");
        }
    }

    fn plain(content_type: Option<&str>, expiry: Expiry, closed: bool) -> CreateRequest {
        CreateRequest {
            content_type: content_type.map(ct),
            expiry,
            closed,
            fork: None,
        }
    }

    #[test]
    fn create_matching() {
        let text = ct("text/plain");
        let existing = ExistingConfig {
            content_type: &text,
            expiry: Expiry::Ttl(60),
            closed: false,
            fork: None,
        };
        assert_eq!(
            plain(Some("TEXT/PLAIN; charset=utf-8"), Expiry::Ttl(60), false).compare(&existing),
            CreateOutcome::Matches
        );
        assert_eq!(
            plain(Some("application/json"), Expiry::Ttl(60), false).compare(&existing),
            CreateOutcome::Conflict
        );
        assert_eq!(
            plain(Some("text/plain"), Expiry::Ttl(61), false).compare(&existing),
            CreateOutcome::Conflict
        );
        assert_eq!(
            plain(Some("text/plain"), Expiry::Never, false).compare(&existing),
            CreateOutcome::Conflict
        );
        assert_eq!(
            plain(Some("text/plain"), Expiry::Ttl(60), true).compare(&existing),
            CreateOutcome::Conflict
        );
        assert_eq!(
            plain(None, Expiry::Ttl(60), false).compare(&existing),
            CreateOutcome::Conflict
        );
        let octet = ContentType::default_type();
        let closed = ExistingConfig {
            content_type: &octet,
            expiry: Expiry::Never,
            closed: true,
            fork: None,
        };
        assert_eq!(
            plain(None, Expiry::Never, true).compare(&closed),
            CreateOutcome::Matches
        );
        assert_eq!(
            plain(None, Expiry::Never, false).compare(&closed),
            CreateOutcome::Conflict
        );
    }

    #[test]
    fn fork_create_matching() {
        let text = ct("text/plain");
        let fork = ForkRequest {
            source: "/v1/stream/a".into(),
            offset: None,
            sub_offset: 0,
        };
        let existing = ExistingConfig {
            content_type: &text,
            expiry: Expiry::Ttl(60),
            closed: false,
            fork: Some(ExistingFork {
                request: &fork,
                point: Offset::new(3).unwrap(),
                inherited_expiry: Some(Expiry::Ttl(60)),
            }),
        };
        let again = CreateRequest {
            content_type: None,
            expiry: Expiry::Never,
            closed: false,
            fork: Some(fork.clone()),
        };
        assert_eq!(again.compare(&existing), CreateOutcome::Matches);
        let at = |offset: u64, sub_offset: u64| CreateRequest {
            fork: Some(ForkRequest {
                offset: Some(Offset::new(offset).unwrap()),
                sub_offset,
                ..fork.clone()
            }),
            ..again.clone()
        };
        // The point it resolved to, given explicitly, is the same fork.
        assert_eq!(at(3, 0).compare(&existing), CreateOutcome::Matches);
        assert_eq!(at(0, 0).compare(&existing), CreateOutcome::Conflict);
        assert_eq!(at(0, 3).compare(&existing), CreateOutcome::Conflict);
        let elsewhere = CreateRequest {
            fork: Some(ForkRequest {
                source: "/v1/stream/b".into(),
                ..fork.clone()
            }),
            ..again.clone()
        };
        assert_eq!(elsewhere.compare(&existing), CreateOutcome::Conflict);
        let not_a_fork = plain(Some("text/plain"), Expiry::Ttl(60), false);
        assert_eq!(not_a_fork.compare(&existing), CreateOutcome::Conflict);
    }

    #[test]
    fn fork_without_an_expiry_matches_only_what_it_would_inherit() {
        let text = ct("text/plain");
        let fork = ForkRequest {
            source: "/v1/stream/a".into(),
            offset: None,
            sub_offset: 0,
        };
        // A fork that asked for a TTL of 100 of a source that never expires.
        let own_ttl = |inherited_expiry| ExistingConfig {
            content_type: &text,
            expiry: Expiry::Ttl(100),
            closed: false,
            fork: Some(ExistingFork {
                request: &fork,
                point: Offset::ZERO,
                inherited_expiry,
            }),
        };
        let asking = |expiry| CreateRequest {
            content_type: None,
            expiry,
            closed: false,
            fork: Some(fork.clone()),
        };
        let existing = own_ttl(Some(Expiry::Never));
        assert_eq!(
            asking(Expiry::Ttl(100)).compare(&existing),
            CreateOutcome::Matches
        );
        // Made again without it, it would never expire: another configuration.
        assert_eq!(
            asking(Expiry::Never).compare(&existing),
            CreateOutcome::Conflict
        );
        assert_eq!(
            asking(Expiry::Ttl(99)).compare(&existing),
            CreateOutcome::Conflict
        );
        // A source's TTL of 100, inherited, is what asking for none gets again.
        let inherited = own_ttl(Some(Expiry::Ttl(100)));
        assert_eq!(
            asking(Expiry::Never).compare(&inherited),
            CreateOutcome::Matches
        );
        // A fork stored before the source's expiry was kept: anything asked for none matches.
        assert_eq!(
            asking(Expiry::Never).compare(&own_ttl(None)),
            CreateOutcome::Matches
        );
    }

    #[test]
    fn fork_created_at_an_explicit_point_matches_an_omitted_offset() {
        let text = ct("text/plain");
        let by_sub = ForkRequest {
            source: "/v1/stream/a".into(),
            offset: Some(Offset::ZERO),
            sub_offset: 2,
        };
        let existing = ExistingConfig {
            content_type: &text,
            expiry: Expiry::Never,
            closed: false,
            fork: Some(ExistingFork {
                request: &by_sub,
                point: Offset::new(2).unwrap(),
                inherited_expiry: Some(Expiry::Never),
            }),
        };
        let asking = |offset: Option<u64>, sub_offset: u64| CreateRequest {
            content_type: None,
            expiry: Expiry::Never,
            closed: false,
            fork: Some(ForkRequest {
                offset: offset.map(|o| Offset::new(o).unwrap()),
                sub_offset,
                ..by_sub.clone()
            }),
        };
        let rows = [
            (Some(0), 2, CreateOutcome::Matches),
            // The point it resolved to, or no offset at all.
            (Some(2), 0, CreateOutcome::Matches),
            (None, 0, CreateOutcome::Matches),
            (Some(0), 1, CreateOutcome::Conflict),
            (Some(0), 0, CreateOutcome::Conflict),
            (None, 2, CreateOutcome::Conflict),
        ];
        for (offset, sub_offset, outcome) in rows {
            let got = asking(offset, sub_offset).compare(&existing);
            assert_eq!(got, outcome, "{offset:?} {sub_offset}");
        }
    }

    #[test]
    fn deleted_and_expired_standing() {
        use Standing::*;
        let ttl = Expiry::Ttl(2);
        // (deleted, forks, now) with the stream last accessed at 1000 and expiring at 3000.
        let rows = [
            (false, 0, 2999, Live),
            (false, 0, 3000, Expired),
            (false, 2, 3000, ExpiredWithForks),
            (true, 2, 2999, Deleted),
            // A soft-deleted stream stays deleted once its old expiry passes.
            (true, 2, 9999, Deleted),
        ];
        for (deleted, forks, now, standing) in rows {
            assert_eq!(
                Standing::of(deleted, forks, ttl, 1000, now),
                standing,
                "{deleted} {forks} {now}"
            );
        }
        assert_eq!(Standing::of(false, 1, Expiry::Never, 0, i64::MAX), Live);
    }

    fn target<'a>(
        content_type: &'a ContentType,
        closed: bool,
        closed_by: Option<&'a ClosingProducer>,
        last_seq: Option<&'a str>,
    ) -> AppendTarget<'a> {
        AppendTarget {
            content_type,
            closed,
            closed_by,
            tail: Offset::new(10).unwrap(),
            last_stream_seq: last_seq,
            lease: None,
            now_ms: 0,
        }
    }

    fn req<'a>(content_type: Option<&'a str>, body_len: usize, close: bool) -> AppendRequest<'a> {
        AppendRequest {
            content_type,
            body_len,
            close,
            stream_seq: None,
            producer: None,
            lease: None,
        }
    }

    #[test]
    fn plain_appends() {
        let text = ct("text/plain");
        let t = target(&text, false, None, None);
        assert_eq!(
            plan_append(&t, &req(Some("text/plain"), 3, false), None),
            Ok(AppendPlan::Write {
                producer: None,
                close: false,
                lease: LeaseChange::Keep,
            })
        );
        assert_eq!(
            plan_append(&t, &req(Some("TEXT/PLAIN;charset=utf-8"), 3, true), None),
            Ok(AppendPlan::Write {
                producer: None,
                close: true,
                lease: LeaseChange::Keep,
            })
        );
        assert_eq!(
            plan_append(&t, &req(Some("text/plain"), 0, false), None),
            Err(ProtocolError::EmptyBody)
        );
        assert_eq!(
            plan_append(&t, &req(None, 3, false), None),
            Err(ProtocolError::MissingContentType)
        );
        assert_eq!(
            plan_append(&t, &req(Some(""), 3, false), None),
            Err(ProtocolError::MissingContentType)
        );
        assert_eq!(
            plan_append(&t, &req(Some("application/json"), 3, false), None),
            Err(ProtocolError::ContentTypeMismatch)
        );
        assert_eq!(
            plan_append(&t, &req(Some("garbage"), 3, false), None),
            Err(ProtocolError::Header(HeaderError::ContentType))
        );
        // A type over the length cap is refused, unless it is the stream's own as stored (a
        // stream created before the cap).
        let long = alloc::format!("text/plain; x={}", "a".repeat(300));
        assert_eq!(
            plan_append(&t, &req(Some(&long), 3, false), None),
            Err(ProtocolError::Header(HeaderError::ContentTypeTooLong))
        );
        let old_type = ContentType::parse_stored(&long).unwrap();
        let old = target(&old_type, false, None, None);
        assert!(plan_append(&old, &req(Some(&long), 3, false), None).is_ok());
        assert!(plan_append(&old, &req(Some("text/plain"), 3, false), None).is_ok());
        // Close-only ignores the content type entirely.
        assert_eq!(
            plan_append(&t, &req(Some("application/json"), 0, true), None),
            Ok(AppendPlan::Write {
                producer: None,
                close: true,
                lease: LeaseChange::Keep,
            })
        );
        assert_eq!(
            plan_append(&t, &req(None, 0, true), None),
            Ok(AppendPlan::Write {
                producer: None,
                close: true,
                lease: LeaseChange::Keep,
            })
        );
    }

    #[test]
    fn closed_streams_come_first() {
        let text = ct("text/plain");
        let t = target(&text, true, None, None);
        // Closed beats content-type mismatch.
        assert_eq!(
            plan_append(&t, &req(Some("application/json"), 3, false), None),
            Err(ProtocolError::Closed {
                final_offset: Offset::new(10).unwrap()
            })
        );
        assert_eq!(
            plan_append(&t, &req(Some("text/plain"), 3, true), None),
            Err(ProtocolError::Closed {
                final_offset: Offset::new(10).unwrap()
            })
        );
        assert_eq!(
            plan_append(&t, &req(None, 0, true), None),
            Ok(AppendPlan::AlreadyDone {
                duplicate: None,
                closed: true
            })
        );
        assert_eq!(
            plan_append(&t, &req(None, 0, false), None),
            Err(ProtocolError::Closed {
                final_offset: Offset::new(10).unwrap()
            })
        );
    }

    #[test]
    fn closing_producer_retry_is_a_duplicate() {
        let text = ct("text/plain");
        let closer = ClosingProducer {
            id: "p".into(),
            epoch: 2,
            seq: 5,
        };
        let t = target(&text, true, Some(&closer), None);
        let stored = Some(ProducerState {
            epoch: 2,
            last_seq: 5,
        });
        let with = |epoch, seq| AppendRequest {
            producer: Some(ProducerHeaders {
                id: "p",
                epoch,
                seq,
            }),
            ..req(Some("text/plain"), 3, true)
        };
        assert_eq!(
            plan_append(&t, &with(2, 5), stored),
            Ok(AppendPlan::AlreadyDone {
                duplicate: Some(ProducerDecision::Duplicate {
                    epoch: 2,
                    highest_seq: 5
                }),
                closed: true
            })
        );
        assert_eq!(
            plan_append(&t, &with(2, 6), stored),
            Err(ProtocolError::Closed {
                final_offset: Offset::new(10).unwrap()
            })
        );
        // A stale epoch too learns that the stream is closed (PROTOCOL §5.2.1: any other
        // producer append to a closed stream is 409 with Stream-Closed).
        assert_eq!(
            plan_append(&t, &with(1, 0), stored),
            Err(ProtocolError::Closed {
                final_offset: Offset::new(10).unwrap()
            })
        );
        // Another producer's close-only request: the stream was closed by someone else.
        let other = AppendRequest {
            producer: Some(ProducerHeaders {
                id: "q",
                epoch: 0,
                seq: 0,
            }),
            ..req(None, 0, true)
        };
        assert_eq!(
            plan_append(&t, &other, None),
            Err(ProtocolError::Closed {
                final_offset: Offset::new(10).unwrap()
            })
        );
        // A plain close-only request stays idempotent.
        assert_eq!(
            plan_append(&t, &req(None, 0, true), None),
            Ok(AppendPlan::AlreadyDone {
                duplicate: None,
                closed: true
            })
        );
    }

    #[test]
    fn producer_before_stream_seq() {
        let text = ct("text/plain");
        let t = target(&text, false, None, Some("app-001"));
        let r = AppendRequest {
            stream_seq: Some("app-001"),
            producer: Some(ProducerHeaders {
                id: "p",
                epoch: 0,
                seq: 0,
            }),
            ..req(Some("text/plain"), 3, false)
        };
        let stored = Some(ProducerState {
            epoch: 0,
            last_seq: 0,
        });
        assert_eq!(
            plan_append(&t, &r, stored),
            Ok(AppendPlan::AlreadyDone {
                duplicate: Some(ProducerDecision::Duplicate {
                    epoch: 0,
                    highest_seq: 0
                }),
                closed: false
            })
        );
        // A new producer append with a regressing Stream-Seq is refused, and nothing is planned.
        assert_eq!(
            plan_append(&t, &r, None),
            Err(ProtocolError::StreamSeqRegression)
        );
    }

    #[test]
    fn stream_seq_is_bytewise() {
        let text = ct("text/plain");
        let with = |last: &'static str, next: &'static str| {
            let t = target(&text, false, None, Some(last));
            plan_append(
                &t,
                &AppendRequest {
                    stream_seq: Some(next),
                    ..req(Some("text/plain"), 1, false)
                },
                None,
            )
        };
        assert!(with("2", "10").is_err());
        assert!(with("09", "10").is_ok());
        assert!(with("a", "B").is_err());
        assert!(with("B", "a").is_ok());
        assert!(with("001", "001").is_err());
    }

    #[test]
    fn the_ancestor_holding_a_position() {
        let o = |n| Offset::new(n).unwrap();
        // A fork at 300 of B (forked at 200 of A, forked at 100 of a root R).
        let bases = [200, 100, 0];
        assert_eq!(ancestor_holding(bases, o(300), o(299)), Some((0, o(300))));
        assert_eq!(ancestor_holding(bases, o(300), o(200)), Some((0, o(300))));
        assert_eq!(ancestor_holding(bases, o(300), o(199)), Some((1, o(200))));
        assert_eq!(ancestor_holding(bases, o(300), o(100)), Some((1, o(200))));
        assert_eq!(ancestor_holding(bases, o(300), o(0)), Some((2, o(100))));
        // The fork's own range, and an ancestry that stops short, have no holder.
        assert_eq!(ancestor_holding(bases, o(300), o(300)), None);
        assert_eq!(ancestor_holding([200, 100], o(300), o(50)), None);
        assert_eq!(ancestor_holding([], o(300), o(0)), None);
        // Forks at the same point as their source: empty ranges are skipped.
        assert_eq!(
            ancestor_holding([100, 100, 0], o(100), o(99)),
            Some((2, o(100)))
        );
        // A fork at 300 of A (forked at 100 of B, whose base is 500, forked at 50 of R): A's
        // own appends hold 100..300, so R holds only 50..100 for it, not up to B's base.
        let bases = [100, 500, 50, 0];
        assert_eq!(ancestor_holding(bases, o(300), o(150)), Some((0, o(300))));
        assert_eq!(ancestor_holding(bases, o(300), o(75)), Some((2, o(100))));
        assert_eq!(ancestor_holding(bases, o(300), o(10)), Some((3, o(50))));
    }

    #[test]
    fn a_fork_records_only_the_ancestors_it_inherits_from() {
        let o = |n| Offset::new(n).unwrap();
        let keep =
            |bases: &[u64], point| inherited_ancestors(bases.iter().copied(), |b| *b, o(point));
        // Each below the last: all kept.
        assert_eq!(keep(&[200, 100, 0], 300), [200, 100, 0]);
        // Forks of forks at one point (each inherits nothing from its source): only the
        // ancestor holding the data below is kept.
        assert_eq!(keep(&[100, 100, 100, 0], 100), [0]);
        assert_eq!(keep(&[300, 300, 100, 0], 300), [100, 0]);
        // Forked below the source's base: the source holds nothing for it.
        assert_eq!(keep(&[500, 50, 0], 300), [50, 0]);
        // A non-monotone chain keeps the bases that fall, and reads stay the same.
        let chain = [100, 500, 50, 0];
        let kept = keep(&chain, 300);
        assert_eq!(kept, [100, 50, 0]);
        for at in 0..300 {
            let full = ancestor_holding(chain, o(300), o(at)).map(|(i, end)| (chain[i], end));
            let short = ancestor_holding(kept.iter().copied(), o(300), o(at))
                .map(|(i, end)| (kept[i], end));
            assert_eq!(full, short, "at {at}");
        }
        // A fork at 0 inherits nothing but keeps its source, so its ancestry is not empty.
        assert_eq!(keep(&[200, 0], 0), [200]);
        assert_eq!(keep(&[0], 0), [0]);
        assert_eq!(keep(&[], 10), [] as [u64; 0]);
    }

    #[test]
    fn writer_lease_precedence() {
        let text = ct("text/plain");
        let held = Lease {
            holder: "a".into(),
            expires_ms: 5_000,
        };
        let t = AppendTarget {
            lease: Some(&held),
            now_ms: 1_000,
            ..target(&text, false, None, None)
        };
        let by = |id, seq, lease| AppendRequest {
            producer: Some(ProducerHeaders { id, epoch: 0, seq }),
            lease,
            ..req(Some("text/plain"), 3, false)
        };
        let at = |seq| {
            Some(ProducerState {
                epoch: 0,
                last_seq: seq,
            })
        };
        // Others, with or without producer headers, are refused with 423.
        let refused = Err(ProtocolError::Leased {
            expires_ms: 5_000,
            retry_after_s: 4,
        });
        assert_eq!(
            plan_append(&t, &req(Some("text/plain"), 3, false), None),
            refused
        );
        assert_eq!(plan_append(&t, &by("b", 1, None), at(0)), refused);
        // ... but a retry of what another producer appended before is still a duplicate.
        assert!(matches!(
            plan_append(&t, &by("b", 0, None), at(0)),
            Ok(AppendPlan::AlreadyDone { .. })
        ));
        // A producer refusal comes before the lease's.
        assert_eq!(
            plan_append(&t, &by("b", 3, None), at(0))
                .unwrap_err()
                .status(),
            409
        );
        // The holder appends and renews; a lease-only request (no body) is a write.
        assert_eq!(
            plan_append(
                &t,
                &by("a", 1, Some(LeaseRequest::Hold { ttl_ms: 9_000 })),
                at(0)
            ),
            Ok(AppendPlan::Write {
                producer: at(1),
                close: false,
                lease: LeaseChange::Set(Lease {
                    holder: "a".into(),
                    expires_ms: 10_000
                }),
            })
        );
        let lease_only = AppendRequest {
            body_len: 0,
            content_type: None,
            ..by("a", 1, Some(LeaseRequest::Release))
        };
        assert_eq!(
            plan_append(&t, &lease_only, at(0)),
            Ok(AppendPlan::Write {
                producer: at(1),
                close: false,
                lease: LeaseChange::Clear,
            })
        );
        // A lease needs a producer to hold it.
        let anonymous = AppendRequest {
            lease: Some(LeaseRequest::Hold { ttl_ms: 1 }),
            ..req(Some("text/plain"), 3, false)
        };
        assert_eq!(
            plan_append(&t, &anonymous, None),
            Err(HeaderError::LeaseWithoutProducer.into())
        );
        // A closed stream answers as closed, lease or not.
        let closed = AppendTarget { closed: true, ..t };
        assert_eq!(
            plan_append(&closed, &by("b", 1, None), at(0))
                .unwrap_err()
                .status(),
            409
        );
        // Once the lease has run out, anyone may append, and another producer may take it.
        let later = AppendTarget { now_ms: 5_000, ..t };
        assert!(plan_append(&later, &req(Some("text/plain"), 3, false), None).is_ok());
        assert_eq!(
            plan_append(
                &later,
                &by("b", 1, Some(LeaseRequest::Hold { ttl_ms: 1_000 })),
                at(0)
            ),
            Ok(AppendPlan::Write {
                producer: at(1),
                close: false,
                lease: LeaseChange::Set(Lease {
                    holder: "b".into(),
                    expires_ms: 6_000
                }),
            })
        );
    }

    #[test]
    fn producer_refusals() {
        let text = ct("text/plain");
        let t = target(&text, false, None, None);
        let with = |epoch, seq| AppendRequest {
            producer: Some(ProducerHeaders {
                id: "p",
                epoch,
                seq,
            }),
            ..req(Some("text/plain"), 3, false)
        };
        let stored = Some(ProducerState {
            epoch: 1,
            last_seq: 3,
        });
        assert_eq!(
            plan_append(&t, &with(0, 9), stored).unwrap_err().status(),
            403
        );
        assert_eq!(
            plan_append(&t, &with(1, 9), stored).unwrap_err().status(),
            409
        );
        assert_eq!(
            plan_append(&t, &with(2, 1), stored).unwrap_err().status(),
            400
        );
        assert_eq!(
            plan_append(&t, &with(1, 4), stored),
            Ok(AppendPlan::Write {
                producer: Some(ProducerState {
                    epoch: 1,
                    last_seq: 4
                }),
                close: false,
                lease: LeaseChange::Keep,
            })
        );
    }

    #[test]
    fn cache_policy() {
        let data =
            |shared, lifetime_s| cache_control(CacheKind::Data(CacheScope { shared, lifetime_s }));
        assert_eq!(
            data(true, None),
            "public, max-age=60, stale-while-revalidate=300"
        );
        assert_eq!(
            data(false, None),
            "private, max-age=60, stale-while-revalidate=300"
        );
        // Never served past the stream's expiry.
        assert_eq!(
            data(true, Some(1_000)),
            "public, max-age=60, stale-while-revalidate=300"
        );
        assert_eq!(
            data(true, Some(360)),
            "public, max-age=60, stale-while-revalidate=300"
        );
        assert_eq!(
            data(true, Some(100)),
            "public, max-age=60, stale-while-revalidate=40"
        );
        assert_eq!(data(false, Some(60)), "private, max-age=60");
        assert_eq!(data(true, Some(5)), "public, max-age=5");
        assert_eq!(data(true, Some(0)), "no-cache");
        assert_eq!(cache_control(CacheKind::NoStore), "no-store");
        assert_eq!(cache_control(CacheKind::EmptyAtTail), "no-cache");
        assert!(cache_control(CacheKind::Live).contains("no-cache"));
    }

    #[test]
    fn expiry_parts_round_trip() {
        for e in [
            Expiry::Never,
            Expiry::Ttl(0),
            Expiry::Ttl(3600),
            Expiry::At(-5),
            Expiry::At(1_700_000_000_000),
        ] {
            let (kind, value) = e.to_parts();
            assert_eq!(Expiry::from_parts(kind, value), e);
        }
        assert_eq!(Expiry::from_parts(9, 1), Expiry::Never);
        assert_eq!(Expiry::from_parts(1, -1), Expiry::Ttl(0));
    }

    #[test]
    fn cache_lifetime_follows_expiry() {
        assert_eq!(Expiry::Never.lifetime_s(0), None);
        assert_eq!(Expiry::Ttl(30).lifetime_s(1_000), Some(30));
        assert_eq!(Expiry::At(10_999).lifetime_s(1_000), Some(9));
        assert_eq!(Expiry::At(1_000).lifetime_s(5_000), Some(0));
    }
}

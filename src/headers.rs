//! Protocol header names, and parsers with the protocol's exact validation rules.
//!
//! Names are lowercase: HTTP header names are case-insensitive and both the Workers and the
//! browser `Headers` objects accept any case.

use alloc::string::String;
use core::fmt;

use crate::offset::{Offset, OffsetError};
use crate::time;

/// The stream's media type: chosen at create, checked on every append, sent on every read.
pub const CONTENT_TYPE: &str = "content-type";
/// The body's declared size, for refusing an oversized append before reading it.
pub const CONTENT_LENGTH: &str = "content-length";
/// How long a catch-up page may be cached (never past the stream's expiry).
pub const CACHE_CONTROL: &str = "cache-control";
/// A catch-up page's entity tag (see [`crate::etag`]).
pub const ETAG: &str = "etag";
/// A reader's cached ETag, answered 304 when the page is unchanged.
pub const IF_NONE_MATCH: &str = "if-none-match";
/// The created stream's URL, on a 201.
pub const LOCATION: &str = "location";
/// Seconds to wait before sending again (503, and 423 while another producer holds the lease).
pub const RETRY_AFTER: &str = "retry-after";
/// `Bearer <token>`: an access token (see [`crate::token`]).
pub const AUTHORIZATION: &str = "authorization";

/// Where the next read starts: the tail after an append, the end of a read's data.
pub const STREAM_NEXT_OFFSET: &str = "stream-next-offset";
/// `true` when a read reached the tail, so a reader knows to go live.
pub const STREAM_UP_TO_DATE: &str = "stream-up-to-date";
/// `true` closes a stream on PUT or POST, and marks a closed stream's answers.
pub const STREAM_CLOSED: &str = "stream-closed";
/// The live interval number that keeps CDN-collapsed requests moving (see [`crate::cursor`]).
pub const STREAM_CURSOR: &str = "stream-cursor";
/// A sliding time to live, in seconds, counted from the last read or write.
pub const STREAM_TTL: &str = "stream-ttl";
/// A fixed expiry instant (RFC 3339).
pub const STREAM_EXPIRES_AT: &str = "stream-expires-at";
/// Writer ordering: compared byte-wise with the last one any writer sent (409 unless greater).
pub const STREAM_SEQ: &str = "stream-seq";
/// On PUT, the path of the stream a fork starts from.
pub const STREAM_FORKED_FROM: &str = "stream-forked-from";
/// On PUT, the source offset a fork diverges at (the source's tail when absent).
pub const STREAM_FORK_OFFSET: &str = "stream-fork-offset";
/// On PUT, how far into the append at the fork offset the fork diverges (messages for JSON).
pub const STREAM_FORK_SUB_OFFSET: &str = "stream-fork-sub-offset";
/// `base64` when an SSE response carries a binary stream's data as base64.
pub const STREAM_SSE_DATA_ENCODING: &str = "stream-sse-data-encoding";
/// edgestream extension: take, renew (seconds) or release (`0`) the writer lease.
pub const STREAM_LEASE_TTL: &str = "stream-lease-ttl";
/// edgestream extension: when the writer lease ends (RFC 3339).
pub const STREAM_LEASE_EXPIRES_AT: &str = "stream-lease-expires-at";
/// edgestream extension: an opaque token naming this incarnation of the stream. Offsets are
/// byte positions, so a stream deleted and created again at the same path reuses them; a
/// reader that resumes from a stored offset compares this token to know it is the same stream.
pub const STREAM_INCARNATION: &str = "stream-incarnation";

/// An idempotent producer's name, unique per writer (see [`crate::producer`]).
pub const PRODUCER_ID: &str = "producer-id";
/// A producer's incarnation: a restarted writer raises it to fence off its older self.
pub const PRODUCER_EPOCH: &str = "producer-epoch";
/// A producer's append number within its epoch, so a retry is recognised as one.
pub const PRODUCER_SEQ: &str = "producer-seq";
/// On a sequence gap (409), the sequence number the server expected next.
pub const PRODUCER_EXPECTED_SEQ: &str = "producer-expected-seq";
/// On a sequence gap (409), the sequence number the request carried.
pub const PRODUCER_RECEIVED_SEQ: &str = "producer-received-seq";

/// Request headers a browser may send cross-origin (CORS `Access-Control-Allow-Headers`).
pub const CORS_ALLOW_HEADERS: &str = "content-type, authorization, if-none-match, stream-ttl, \
stream-expires-at, stream-seq, stream-closed, stream-forked-from, stream-fork-offset, \
stream-fork-sub-offset, producer-id, producer-epoch, producer-seq, stream-lease-ttl, \
stream-channel";

/// Response headers a browser script may read (CORS `Access-Control-Expose-Headers`).
pub const CORS_EXPOSE_HEADERS: &str = "stream-next-offset, stream-up-to-date, stream-closed, \
stream-cursor, stream-ttl, stream-expires-at, stream-sse-data-encoding, producer-epoch, \
producer-seq, producer-expected-seq, producer-received-seq, etag, location, content-type, \
retry-after, stream-lease-expires-at, stream-channel, stream-channel-linking, stream-incarnation";

/// The largest integer the protocol allows in producer headers (JavaScript's safe integers).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Why a request header was refused. Every variant is a client error (400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// `Stream-TTL` is not a plain non-negative decimal integer.
    Ttl,
    /// `Stream-TTL` is a plain integer, but longer than [`MAX_TTL_SECONDS`].
    TtlTooLong,
    /// `Stream-Expires-At` is not an RFC 3339 timestamp.
    ExpiresAt,
    /// A new stream's `Stream-TTL` is 0: it would expire as it is created.
    TtlZero,
    /// A new stream's `Stream-Expires-At` has already passed.
    ExpiresAtPast,
    /// Both `Stream-TTL` and `Stream-Expires-At` were sent.
    TtlAndExpiresAt,
    /// Only some of `Producer-Id`, `Producer-Epoch`, `Producer-Seq` were sent.
    ProducerPartial,
    /// `Producer-Id` is empty or longer than [`MAX_PRODUCER_ID_LEN`].
    ProducerId,
    /// `Producer-Epoch` is not an integer in 0..=2^53-1.
    ProducerEpoch,
    /// `Producer-Seq` is not an integer in 0..=2^53-1.
    ProducerSeq,
    /// `Stream-Seq` is empty or longer than [`MAX_STREAM_SEQ_LEN`].
    StreamSeq,
    /// `Content-Type` is not a media type.
    ContentType,
    /// `Content-Type` is longer than [`MAX_CONTENT_TYPE_LEN`].
    ContentTypeTooLong,
    /// `Stream-Forked-From` is not a stream path.
    ForkedFrom,
    /// `Stream-Fork-Offset` is not an offset of this server.
    ForkOffset(OffsetError),
    /// `Stream-Fork-Sub-Offset` is not a non-negative integer.
    ForkSubOffset,
    /// A fork header was sent without `Stream-Forked-From`.
    ForkWithoutSource,
    /// The `live` query parameter has an unknown value, or is repeated.
    LiveMode,
    /// `Stream-Lease-TTL` is not a whole number of seconds up to a day.
    LeaseTtl,
    /// `Stream-Lease-TTL` without the producer headers that name the holder.
    LeaseWithoutProducer,
}

impl HeaderError {
    /// A short text for the error body.
    pub fn message(self) -> &'static str {
        match self {
            HeaderError::Ttl => "Stream-TTL must be a non-negative integer number of seconds",
            HeaderError::TtlTooLong => "Stream-TTL must be at most 3153600000 seconds (100 years)",
            HeaderError::ExpiresAt => "Stream-Expires-At must be an RFC 3339 timestamp",
            HeaderError::TtlZero => "Stream-TTL must be at least 1 second for a new stream",
            HeaderError::ExpiresAtPast => "Stream-Expires-At is in the past",
            HeaderError::TtlAndExpiresAt => "Stream-TTL and Stream-Expires-At cannot both be set",
            HeaderError::ProducerPartial => {
                "Producer-Id, Producer-Epoch and Producer-Seq must be sent together"
            }
            HeaderError::ProducerId => "Producer-Id must be 1 to 256 bytes",
            HeaderError::ProducerEpoch => "Producer-Epoch must be an integer from 0 to 2^53-1",
            HeaderError::ProducerSeq => "Producer-Seq must be an integer from 0 to 2^53-1",
            HeaderError::StreamSeq => "Stream-Seq must be 1 to 256 bytes",
            HeaderError::ContentType => "Content-Type is not a valid media type",
            HeaderError::ContentTypeTooLong => "Content-Type must be at most 256 bytes",
            HeaderError::ForkedFrom => "Stream-Forked-From must be a stream path on this server",
            HeaderError::ForkOffset(e) => match e {
                OffsetError::Unrecognised => "Stream-Fork-Offset was not issued by this server",
                _ => "Stream-Fork-Offset is malformed",
            },
            HeaderError::ForkSubOffset => "Stream-Fork-Sub-Offset must be a non-negative integer",
            HeaderError::ForkWithoutSource => "fork headers require Stream-Forked-From",
            HeaderError::LiveMode => "live must be long-poll, sse or ws, given once",
            HeaderError::LeaseTtl => "Stream-Lease-TTL must be an integer from 0 to 86400",
            HeaderError::LeaseWithoutProducer => {
                "Stream-Lease-TTL needs Producer-Id, Producer-Epoch and Producer-Seq"
            }
        }
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for HeaderError {}

/// Whether `text` is spelled as a plain decimal integer: digits only, no sign, no leading zero
/// (except `0` itself), whatever its size.
pub fn is_plain_decimal(text: &str) -> bool {
    let b = text.as_bytes();
    let leading_zero = b.len() > 1 && b[0] == b'0';
    !b.is_empty() && !leading_zero && b.iter().all(u8::is_ascii_digit)
}

/// Parses a plain decimal integer ([`is_plain_decimal`]) that fits in a `u64`.
pub fn parse_decimal(text: &str) -> Option<u64> {
    if !is_plain_decimal(text) {
        return None;
    }
    text.bytes().try_fold(0u64, |v, c| {
        v.checked_mul(10)?.checked_add(u64::from(c - b'0'))
    })
}

/// The longest TTL accepted: 100 years. Longer values are almost certainly mistakes and would
/// overflow millisecond arithmetic.
pub const MAX_TTL_SECONDS: u64 = 100 * 365 * 86_400;

/// `Stream-TTL`: seconds, plain decimal (`3600`; not `+3600`, `03600`, `3600.0`, `3.6e3`).
pub fn parse_ttl(text: &str) -> Result<u64, HeaderError> {
    match parse_decimal(text) {
        Some(v) if v <= MAX_TTL_SECONDS => Ok(v),
        // Well formed but too long (or past u64): say what the limit is.
        _ if is_plain_decimal(text) => Err(HeaderError::TtlTooLong),
        _ => Err(HeaderError::Ttl),
    }
}

/// `Stream-Expires-At`: an RFC 3339 timestamp, as Unix milliseconds.
pub fn parse_expires_at(text: &str) -> Result<i64, HeaderError> {
    time::parse_rfc3339(text.trim()).ok_or(HeaderError::ExpiresAt)
}

/// `Stream-Closed`: present only when exactly `true` (any case). Other values are not errors;
/// the protocol says to treat them as absent. A header sent on several field lines reaches the
/// server as one value, its lines joined by commas (RFC 9110 §5.3, as a proxy or the runtime's
/// `Headers` joins them): each line is read on its own, and the header is present when every
/// one of them is `true`, so `true, true` closes the stream, and `true, false` (a client that
/// said both) does not.
pub fn is_closed(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.split(',').all(|line| is_true(Some(line))))
}

/// A boolean protocol header (`Stream-Up-To-Date`; `Stream-Closed` is read by [`is_closed`]):
/// true only for `true`.
pub fn is_true(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Longest `Producer-Id`: the id is stored with each stream's producer state, so a client must
/// not be able to make that state arbitrarily large.
pub const MAX_PRODUCER_ID_LEN: usize = 256;
/// Longest `Stream-Seq`, which is stored as the stream's last sequence, for the same reason.
pub const MAX_STREAM_SEQ_LEN: usize = 256;

/// `Stream-Seq`: an opaque writer sequence compared byte-wise; 1 to 256 bytes.
pub fn parse_stream_seq(value: &str) -> Result<&str, HeaderError> {
    if value.is_empty() || value.len() > MAX_STREAM_SEQ_LEN {
        Err(HeaderError::StreamSeq)
    } else {
        Ok(value)
    }
}

/// The idempotent producer's identity and position, from `Producer-Id/-Epoch/-Seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerHeaders<'a> {
    /// `Producer-Id`.
    pub id: &'a str,
    /// `Producer-Epoch`.
    pub epoch: u64,
    /// `Producer-Seq`.
    pub seq: u64,
}

impl<'a> ProducerHeaders<'a> {
    /// All three headers or none; anything partial or malformed is an error.
    pub fn parse(
        id: Option<&'a str>,
        epoch: Option<&str>,
        seq: Option<&str>,
    ) -> Result<Option<ProducerHeaders<'a>>, HeaderError> {
        match (id, epoch, seq) {
            (None, None, None) => Ok(None),
            (Some(id), Some(epoch), Some(seq)) => {
                if id.is_empty() || id.len() > MAX_PRODUCER_ID_LEN {
                    return Err(HeaderError::ProducerId);
                }
                let epoch = parse_safe_integer(epoch).ok_or(HeaderError::ProducerEpoch)?;
                let seq = parse_safe_integer(seq).ok_or(HeaderError::ProducerSeq)?;
                Ok(Some(ProducerHeaders { id, epoch, seq }))
            }
            _ => Err(HeaderError::ProducerPartial),
        }
    }
}

/// A non-negative integer up to 2^53-1. Leading zeros are tolerated here (`007` is seven): unlike
/// TTLs, the protocol only asks for an integer.
fn parse_safe_integer(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    (v <= MAX_SAFE_INTEGER).then_some(v)
}

/// The fork part of a create request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkHeaders<'a> {
    /// Path of the source stream, as sent (e.g. `/v1/stream/src`).
    pub source: &'a str,
    /// Divergence point; `None` means the source's tail.
    pub offset: Option<Offset>,
    /// Messages (JSON) or bytes (other types) past `offset`; zero when absent.
    pub sub_offset: u64,
}

impl<'a> ForkHeaders<'a> {
    /// `Stream-Forked-From`, `Stream-Fork-Offset`, `Stream-Fork-Sub-Offset`.
    pub fn parse(
        forked_from: Option<&'a str>,
        fork_offset: Option<&str>,
        sub_offset: Option<&str>,
    ) -> Result<Option<ForkHeaders<'a>>, HeaderError> {
        let Some(source) = forked_from else {
            if fork_offset.is_some() || sub_offset.is_some() {
                return Err(HeaderError::ForkWithoutSource);
            }
            return Ok(None);
        };
        if source.is_empty() || !source.starts_with('/') || source.chars().any(char::is_control) {
            return Err(HeaderError::ForkedFrom);
        }
        let offset = match fork_offset {
            None => None,
            Some(text) => Some(Offset::parse(text.trim()).map_err(HeaderError::ForkOffset)?),
        };
        let sub_offset = match sub_offset {
            None => 0,
            Some(text) => parse_decimal(text.trim()).ok_or(HeaderError::ForkSubOffset)?,
        };
        Ok(Some(ForkHeaders {
            source,
            offset,
            sub_offset,
        }))
    }
}

/// How SSE `data` events carry a stream's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseEncoding {
    /// `text/*` and `application/json`: the bytes as UTF-8 text.
    Utf8,
    /// Everything else: standard base64, announced by `Stream-SSE-Data-Encoding: base64`.
    Base64,
}

/// A stream's media type. Comparison ignores case and parameters (`text/plain; charset=utf-8`
/// matches `TEXT/PLAIN`), as the protocol requires.
#[derive(Clone, Debug)]
pub struct ContentType {
    /// As the client sent it at creation (returned on reads).
    raw: String,
    /// Byte length of the `type/subtype` prefix of `raw`.
    essence_len: usize,
}

/// Longest `Content-Type` a client may give: a stream's type is stored and sent back on every
/// read, so an unbounded one would make each response's headers too large for some clients
/// (Node's fetch refuses headers over 16 KiB in all).
pub const MAX_CONTENT_TYPE_LEN: usize = 256;

/// The type a stream gets when created without `Content-Type`.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

impl ContentType {
    /// Parses a `Content-Type` value a client gave: `type "/" subtype *(";" parameter)`, at most
    /// [`MAX_CONTENT_TYPE_LEN`] bytes once trimmed.
    pub fn parse(value: &str) -> Result<ContentType, HeaderError> {
        if value.trim().len() > MAX_CONTENT_TYPE_LEN {
            return Err(HeaderError::ContentTypeTooLong);
        }
        ContentType::parse_stored(value)
    }

    /// Whether the type is within [`MAX_CONTENT_TYPE_LEN`], as a type a client gives must be
    /// unless it names a stream's own, stored before the cap.
    pub fn check_cap(&self) -> Result<(), HeaderError> {
        if self.raw.len() > MAX_CONTENT_TYPE_LEN {
            return Err(HeaderError::ContentTypeTooLong);
        }
        Ok(())
    }

    /// Parses a type already accepted: one stored, or one a server sends back. A stream
    /// created before the length cap keeps its type, whatever its length.
    pub fn parse_stored(value: &str) -> Result<ContentType, HeaderError> {
        let raw = value.trim();
        let essence = raw.split(';').next().unwrap_or_default().trim_end();
        let (ty, sub) = essence.split_once('/').ok_or(HeaderError::ContentType)?;
        let valid = |s: &str| !s.is_empty() && s.bytes().all(is_token_char);
        if !valid(ty) || !valid(sub) || raw.chars().any(|c| c.is_control() && c != '\t') {
            return Err(HeaderError::ContentType);
        }
        Ok(ContentType {
            raw: String::from(raw),
            essence_len: essence.len(),
        })
    }

    /// `application/octet-stream`, for streams created without a type.
    pub fn default_type() -> ContentType {
        ContentType {
            raw: String::from(DEFAULT_CONTENT_TYPE),
            essence_len: DEFAULT_CONTENT_TYPE.len(),
        }
    }

    /// The value as sent.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// `type/subtype` without parameters, in the case it was sent.
    pub fn essence(&self) -> &str {
        self.raw.get(..self.essence_len).unwrap_or_default()
    }

    /// Same media type, ignoring case and parameters.
    pub fn matches(&self, other: &ContentType) -> bool {
        self.essence().eq_ignore_ascii_case(other.essence())
    }

    /// JSON mode: `application/json` (any case, any parameters).
    pub fn is_json(&self) -> bool {
        self.essence().eq_ignore_ascii_case("application/json")
    }

    /// UTF-8 for `text/*` and JSON, base64 for everything else.
    pub fn sse_encoding(&self) -> SseEncoding {
        let e = self.essence();
        let is_text = e.len() > 5 && e.as_bytes()[..5].eq_ignore_ascii_case(b"text/");
        if is_text || self.is_json() {
            SseEncoding::Utf8
        } else {
            SseEncoding::Base64
        }
    }
}

impl PartialEq for ContentType {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other)
    }
}

impl Eq for ContentType {}

/// The `live` query parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveMode {
    /// `live=long-poll`
    LongPoll,
    /// `live=sse`
    Sse,
    /// `live=ws`: edgestream's WebSocket extension.
    WebSocket,
}

impl LiveMode {
    /// Parses the `live` parameter; `None` when absent (a catch-up read).
    pub fn parse(value: Option<&str>) -> Result<Option<LiveMode>, HeaderError> {
        match value {
            None => Ok(None),
            Some("long-poll") => Ok(Some(LiveMode::LongPoll)),
            Some("sse") => Ok(Some(LiveMode::Sse)),
            Some("ws") => Ok(Some(LiveMode::WebSocket)),
            Some(_) => Err(HeaderError::LiveMode),
        }
    }

    /// The mode of a URL's `live` parameters: none is a catch-up read, and more than one is
    /// refused, as a repeated `offset` is, since the reader's intent is unclear.
    pub fn from_query<'a, I>(values: I) -> Result<Option<LiveMode>, HeaderError>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut values = values.into_iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(HeaderError::LiveMode);
        }
        LiveMode::parse(first)
    }

    /// The `live` parameter's value for this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            LiveMode::LongPoll => "long-poll",
            LiveMode::Sse => "sse",
            LiveMode::WebSocket => "ws",
        }
    }
}

/// Whether an `If-None-Match` header matches `etag` (a quoted entity tag). Handles lists,
/// weak tags (`W/"..."`, compared weakly as RFC 9110 asks for `If-None-Match`) and `*`.
pub fn if_none_match(header: &str, etag: &str) -> bool {
    fn strip(t: &str) -> &str {
        let t = t.trim();
        t.strip_prefix("W/").unwrap_or(t)
    }
    let etag = strip(etag);
    header.split(',').any(|candidate| {
        let c = candidate.trim();
        c == "*" || (!c.is_empty() && strip(c) == etag)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rules() {
        assert_eq!(parse_ttl("3600"), Ok(3600));
        assert_eq!(parse_ttl("0"), Ok(0));
        for bad in [
            "", "abc", "-1", "+60", "00060", "60.5", "1e3", " 60", "60 ", "0x10",
        ] {
            assert_eq!(parse_ttl(bad), Err(HeaderError::Ttl), "{bad:?}");
        }
        assert_eq!(parse_ttl(&MAX_TTL_SECONDS.to_string()), Ok(MAX_TTL_SECONDS));
        for long in [
            "99999999999999999999999",
            "31536000000",
            &(MAX_TTL_SECONDS + 1).to_string(),
        ] {
            assert_eq!(parse_ttl(long), Err(HeaderError::TtlTooLong), "{long}");
        }
        assert!(HeaderError::TtlTooLong
            .message()
            .contains(&MAX_TTL_SECONDS.to_string()));
    }

    #[test]
    fn expires_at_rules() {
        assert!(parse_expires_at("2099-01-01T00:00:00Z").is_ok());
        assert!(parse_expires_at("2099-01-01T00:00:00+05:30").is_ok());
        assert_eq!(
            parse_expires_at("not-a-timestamp"),
            Err(HeaderError::ExpiresAt)
        );
    }

    #[test]
    fn closed_is_exactly_true() {
        assert!(is_closed(Some("true")));
        assert!(is_closed(Some("TRUE")));
        assert!(is_closed(Some("True")));
        for other in ["false", "yes", "1", "", "truee"] {
            assert!(!is_closed(Some(other)), "{other:?}");
        }
        assert!(!is_closed(None));
    }

    #[test]
    fn closed_on_several_lines_is_true_when_each_line_is() {
        for joined in [
            "true, true",
            "true,TRUE",
            " true ,\ttrue",
            "true, true, true",
        ] {
            assert!(is_closed(Some(joined)), "{joined:?}");
        }
        for joined in [
            "true, false",
            "false, true",
            "true,",
            ",true",
            "true, yes",
            ",",
        ] {
            assert!(!is_closed(Some(joined)), "{joined:?}");
        }
    }

    #[test]
    fn producer_headers_all_or_none() {
        assert_eq!(ProducerHeaders::parse(None, None, None), Ok(None));
        assert_eq!(
            ProducerHeaders::parse(Some("p"), Some("1"), Some("2")),
            Ok(Some(ProducerHeaders {
                id: "p",
                epoch: 1,
                seq: 2
            }))
        );
        assert_eq!(
            ProducerHeaders::parse(Some("p"), None, None),
            Err(HeaderError::ProducerPartial)
        );
        assert_eq!(
            ProducerHeaders::parse(None, Some("0"), None),
            Err(HeaderError::ProducerPartial)
        );
        assert_eq!(
            ProducerHeaders::parse(Some("p"), Some("0"), None),
            Err(HeaderError::ProducerPartial)
        );
        assert_eq!(
            ProducerHeaders::parse(Some(""), Some("0"), Some("0")),
            Err(HeaderError::ProducerId)
        );
    }

    #[test]
    fn producer_id_and_stream_seq_are_bounded() {
        let longest = "p".repeat(MAX_PRODUCER_ID_LEN);
        assert!(ProducerHeaders::parse(Some(&longest), Some("0"), Some("0")).is_ok());
        let too_long = "p".repeat(MAX_PRODUCER_ID_LEN + 1);
        assert_eq!(
            ProducerHeaders::parse(Some(&too_long), Some("0"), Some("0")),
            Err(HeaderError::ProducerId)
        );
        let seq = "9".repeat(MAX_STREAM_SEQ_LEN);
        assert_eq!(parse_stream_seq(&seq), Ok(seq.as_str()));
        let seq = "9".repeat(MAX_STREAM_SEQ_LEN + 1);
        assert_eq!(parse_stream_seq(&seq), Err(HeaderError::StreamSeq));
    }

    #[test]
    fn producer_integers() {
        for bad in [
            "1abc",
            "0xyz",
            "1e3",
            "-1",
            "",
            " 1",
            "1.0",
            "9007199254740992",
        ] {
            assert_eq!(
                ProducerHeaders::parse(Some("p"), Some(bad), Some("0")),
                Err(HeaderError::ProducerEpoch),
                "{bad:?}"
            );
            assert_eq!(
                ProducerHeaders::parse(Some("p"), Some("0"), Some(bad)),
                Err(HeaderError::ProducerSeq),
                "{bad:?}"
            );
        }
        let max = ProducerHeaders::parse(Some("p"), Some("9007199254740991"), Some("0"));
        assert_eq!(max.unwrap().unwrap().epoch, MAX_SAFE_INTEGER);
    }

    #[test]
    fn fork_headers() {
        assert_eq!(ForkHeaders::parse(None, None, None), Ok(None));
        assert_eq!(
            ForkHeaders::parse(None, Some("x"), None),
            Err(HeaderError::ForkWithoutSource)
        );
        assert_eq!(
            ForkHeaders::parse(None, None, Some("1")),
            Err(HeaderError::ForkWithoutSource)
        );
        let f = ForkHeaders::parse(
            Some("/v1/stream/a"),
            Some("0000000000000000_0000000000000005"),
            Some("3"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(f.offset, Offset::new(5));
        assert_eq!(f.sub_offset, 3);
        assert_eq!(
            ForkHeaders::parse(Some("/a"), Some("bogus"), None),
            Err(HeaderError::ForkOffset(OffsetError::Unrecognised))
        );
        for bad in ["-1", "1.5", "x", ""] {
            assert_eq!(
                ForkHeaders::parse(Some("/a"), None, Some(bad)),
                Err(HeaderError::ForkSubOffset)
            );
        }
        assert_eq!(
            ForkHeaders::parse(Some(""), None, None),
            Err(HeaderError::ForkedFrom)
        );
    }

    #[test]
    fn content_types() {
        let a = ContentType::parse("text/plain").unwrap();
        let b = ContentType::parse("TEXT/PLAIN; charset=utf-8").unwrap();
        assert!(a.matches(&b));
        assert_eq!(b.essence(), "TEXT/PLAIN");
        assert_eq!(b.as_str(), "TEXT/PLAIN; charset=utf-8");
        assert!(ContentType::parse("application/json; charset=utf-8")
            .unwrap()
            .is_json());
        assert!(ContentType::parse("APPLICATION/JSON").unwrap().is_json());
        assert!(!ContentType::parse("application/jsonl").unwrap().is_json());
        assert!(!a.matches(&ContentType::parse("application/json").unwrap()));
        for bad in [
            "",
            "text",
            "/plain",
            "text/",
            "text /plain",
            "a/b/c",
            "te\nxt/plain",
        ] {
            assert!(ContentType::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn content_types_are_bounded_when_given_but_not_when_stored() {
        let at_limit = alloc::format!("text/plain; x={}", "a".repeat(MAX_CONTENT_TYPE_LEN - 14));
        assert_eq!(at_limit.len(), MAX_CONTENT_TYPE_LEN);
        assert!(ContentType::parse(&at_limit).is_ok());
        // Surrounding whitespace is not stored, so it does not count.
        assert!(ContentType::parse(&alloc::format!("  {at_limit}  ")).is_ok());
        let over = alloc::format!("{at_limit}a");
        assert_eq!(
            ContentType::parse(&over).unwrap_err(),
            HeaderError::ContentTypeTooLong
        );
        assert_eq!(ContentType::parse_stored(&over).unwrap().as_str(), over);
        assert!(ContentType::parse_stored("not a type").is_err());
        // A stored type is checked against the cap where a client gives it as a new one's.
        assert_eq!(
            ContentType::parse_stored(&over).unwrap().check_cap(),
            Err(HeaderError::ContentTypeTooLong)
        );
        assert!(ContentType::parse_stored(&alloc::format!("  {at_limit}  "))
            .unwrap()
            .check_cap()
            .is_ok());
    }

    #[test]
    fn sse_encoding_by_type() {
        let enc = |t: &str| ContentType::parse(t).unwrap().sse_encoding();
        assert_eq!(enc("text/plain"), SseEncoding::Utf8);
        assert_eq!(enc("Text/CSV"), SseEncoding::Utf8);
        assert_eq!(enc("application/json"), SseEncoding::Utf8);
        assert_eq!(enc("application/octet-stream"), SseEncoding::Base64);
        assert_eq!(enc("application/x-protobuf"), SseEncoding::Base64);
        assert_eq!(enc("image/png"), SseEncoding::Base64);
        assert_eq!(enc("application/ndjson"), SseEncoding::Base64);
        assert_eq!(
            ContentType::default_type().sse_encoding(),
            SseEncoding::Base64
        );
    }

    #[test]
    fn live_modes() {
        assert_eq!(LiveMode::parse(None), Ok(None));
        assert_eq!(LiveMode::parse(Some("sse")), Ok(Some(LiveMode::Sse)));
        assert_eq!(
            LiveMode::parse(Some("long-poll")),
            Ok(Some(LiveMode::LongPoll))
        );
        assert_eq!(LiveMode::parse(Some("ws")), Ok(Some(LiveMode::WebSocket)));
        assert_eq!(LiveMode::parse(Some("poll")), Err(HeaderError::LiveMode));
        assert_eq!(LiveMode::from_query([]), Ok(None));
        assert_eq!(LiveMode::from_query(["sse"]), Ok(Some(LiveMode::Sse)));
        assert_eq!(
            LiveMode::from_query(["long-poll", "sse"]),
            Err(HeaderError::LiveMode)
        );
        assert_eq!(
            LiveMode::from_query(["sse", "sse"]),
            Err(HeaderError::LiveMode)
        );
        for mode in [LiveMode::LongPoll, LiveMode::Sse, LiveMode::WebSocket] {
            assert_eq!(LiveMode::parse(Some(mode.as_str())), Ok(Some(mode)));
        }
    }

    #[test]
    fn etag_matching() {
        let tag = "\"s:0:5\"";
        assert!(if_none_match("\"s:0:5\"", tag));
        assert!(if_none_match("W/\"s:0:5\"", tag));
        assert!(if_none_match("\"x\", \"s:0:5\"", tag));
        assert!(if_none_match("*", tag));
        assert!(!if_none_match("\"s:0:6\"", tag));
        assert!(!if_none_match("", tag));
    }

    use alloc::string::ToString;

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in ".*") {
            let _ = parse_ttl(&s);
            let _ = parse_expires_at(&s);
            let _ = ContentType::parse(&s);
            let _ = ProducerHeaders::parse(Some(&s), Some(&s), Some(&s));
            let _ = ForkHeaders::parse(Some(&s), Some(&s), Some(&s));
            let _ = if_none_match(&s, &s);
        }
    }
}

//! Every request-header parser of the core, on arbitrary header values.
//!
//! Invariants, per header:
//! - `Stream-TTL`: accepted values are plain decimals spelled canonically, at most 100 years;
//! - `Stream-Expires-At`: an accepted instant lies in years 0000 to 9999 in UTC and prints
//!   (`format_rfc3339`) to a timestamp that parses back to the same instant; any `i64` formats
//!   without panicking;
//! - `Stream-TTL` + `Stream-Expires-At` together: always refused; alone: the single parser's answer;
//! - `Stream-Closed`: true exactly for `true` in any case, surrounding whitespace ignored;
//! - `Stream-Seq`: refused only when empty, and given back unchanged;
//! - `Producer-Id/-Epoch/-Seq`: all three or none; numbers are safe integers that read back;
//! - fork headers: no fork header without `Stream-Forked-From`; the source is an absolute path
//!   without control characters; the offset is exactly `Offset::parse` of the trimmed value;
//! - `Content-Type`: the essence is a `type/subtype` prefix of the trimmed value, re-parsing is
//!   stable, matching is reflexive and symmetric and agrees with `==`, JSON and SSE encoding
//!   follow the essence;
//! - `live`, `If-None-Match`: only the documented values; a tag always matches itself and `*`;
//! - `cursor`: a decimal; the current interval unless the client's is a decimal at or past it,
//!   then strictly ahead of the client's by at most the jitter bound, whatever its length.
#![no_main]

use arbitrary::Arbitrary;
use edgestream::cursor::{interval_at, next_cursor, MAX_JITTER_S};
use edgestream::headers::{
    if_none_match, is_closed, is_plain_decimal, is_true, parse_decimal, parse_expires_at,
    parse_stream_seq, parse_ttl, ForkHeaders, HeaderError, LiveMode, ProducerHeaders,
    MAX_PRODUCER_ID_LEN, MAX_SAFE_INTEGER, MAX_STREAM_SEQ_LEN, MAX_TTL_SECONDS,
};
use edgestream::offset::Offset;
use edgestream::stream::Expiry;
use edgestream::time::{format_rfc3339, parse_rfc3339};
use edgestream::{ContentType, SseEncoding};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    ttl: Option<&'a str>,
    expires_at: Option<&'a str>,
    closed: Option<&'a str>,
    stream_seq: &'a str,
    producer_id: Option<&'a str>,
    producer_epoch: Option<&'a str>,
    producer_seq: Option<&'a str>,
    forked_from: Option<&'a str>,
    fork_offset: Option<&'a str>,
    fork_sub_offset: Option<&'a str>,
    content_type: &'a str,
    other_content_type: &'a str,
    live: Option<&'a str>,
    if_none_match: &'a str,
    etag: &'a str,
    cursor: Option<&'a str>,
    instant_ms: i64,
    random: u32,
}

/// First and last instants whose RFC 3339 form has a four-digit year (0000..=9999).
const MIN_MS: i64 = -62_167_219_200_000;
const MAX_MS: i64 = 253_402_300_799_999;

/// A non-negative decimal with optional leading zeros, as producer headers allow.
fn loose_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let digits = text.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    digits.parse().ok()
}

fn check_time(text: &str, instant_ms: i64) {
    let parsed = parse_expires_at(text);
    assert_eq!(parsed.ok(), parse_rfc3339(text.trim()));
    if let Ok(ms) = parsed {
        // Every accepted instant has a four-digit year in UTC, so it prints and parses back.
        assert!((MIN_MS..=MAX_MS).contains(&ms), "{text:?} -> {ms}");
        let printed = format_rfc3339(ms);
        assert_eq!(parse_rfc3339(&printed), Some(ms), "{text:?} -> {printed}");
    }
    let printed = format_rfc3339(instant_ms);
    if (MIN_MS..=MAX_MS).contains(&instant_ms) {
        assert_eq!(parse_rfc3339(&printed), Some(instant_ms), "{printed}");
    }
}

fn check_content_type(value: &str, other: &str) {
    let Ok(ct) = ContentType::parse(value) else {
        return;
    };
    let raw = ct.as_str();
    assert_eq!(raw, value.trim());
    let essence = ct.essence();
    assert!(raw.starts_with(essence));
    let (ty, sub) = essence.split_once('/').expect("essence has a slash");
    assert!(!ty.is_empty() && !sub.is_empty() && !sub.contains('/'));
    assert!(!essence.contains(';') && !essence.contains(char::is_whitespace));
    assert!(
        raw[essence.len()..].trim_start().is_empty()
            || raw[essence.len()..].trim_start().starts_with(';')
    );
    assert!(ct.matches(&ct));
    let again = ContentType::parse(raw).expect("a parsed type re-parses");
    assert_eq!(again.as_str(), raw);
    assert_eq!(again.essence(), essence);
    assert!(again.matches(&ct));
    assert_eq!(
        ct.is_json(),
        essence.eq_ignore_ascii_case("application/json")
    );
    let text = essence.len() > 5 && essence[..5].eq_ignore_ascii_case("text/");
    let expected = if text || ct.is_json() {
        SseEncoding::Utf8
    } else {
        SseEncoding::Base64
    };
    assert_eq!(ct.sse_encoding(), expected);
    let upper = ContentType::parse(&raw.to_ascii_uppercase()).expect("case does not matter");
    assert!(upper.matches(&ct));
    if let Ok(o) = ContentType::parse(other) {
        assert_eq!(ct.matches(&o), o.matches(&ct));
        assert_eq!(ct == o, ct.matches(&o));
        assert_eq!(
            ct.matches(&o),
            ct.essence().eq_ignore_ascii_case(o.essence())
        );
    }
}

fn check_producer(id: Option<&str>, epoch: Option<&str>, seq: Option<&str>) {
    let parsed = ProducerHeaders::parse(id, epoch, seq);
    match (id, epoch, seq) {
        (None, None, None) => assert_eq!(parsed, Ok(None)),
        (Some(id), Some(e), Some(s)) => {
            let safe =
                |t: &str| loose_decimal(t).filter(|&v| t.len() <= 20 && v <= MAX_SAFE_INTEGER);
            let expected = match (
                id.is_empty() || id.len() > MAX_PRODUCER_ID_LEN,
                safe(e),
                safe(s),
            ) {
                (true, _, _) => Err(HeaderError::ProducerId),
                (false, None, _) => Err(HeaderError::ProducerEpoch),
                (false, Some(_), None) => Err(HeaderError::ProducerSeq),
                (false, Some(epoch), Some(seq)) => Ok(Some(ProducerHeaders { id, epoch, seq })),
            };
            assert_eq!(parsed, expected, "{id:?} {e:?} {s:?}");
            if let Ok(Some(p)) = parsed {
                let (es, ss) = (p.epoch.to_string(), p.seq.to_string());
                let back = ProducerHeaders::parse(Some(id), Some(&es), Some(&ss));
                assert_eq!(back, Ok(Some(p)));
            }
        }
        _ => assert_eq!(parsed, Err(HeaderError::ProducerPartial)),
    }
}

fn check_fork(from: Option<&str>, offset: Option<&str>, sub: Option<&str>) {
    let parsed = ForkHeaders::parse(from, offset, sub);
    let Some(source) = from else {
        if offset.is_some() || sub.is_some() {
            assert_eq!(parsed, Err(HeaderError::ForkWithoutSource));
        } else {
            assert_eq!(parsed, Ok(None));
        }
        return;
    };
    let source_ok = source.starts_with('/') && !source.chars().any(char::is_control);
    if !source_ok {
        assert_eq!(parsed, Err(HeaderError::ForkedFrom));
        return;
    }
    let want_offset = offset.map(|t| Offset::parse(t.trim()));
    if let Some(Err(e)) = want_offset {
        assert_eq!(parsed, Err(HeaderError::ForkOffset(e)));
        return;
    }
    let want_sub = match sub {
        None => Some(0),
        Some(t) => parse_decimal(t.trim()),
    };
    let Some(want_sub) = want_sub else {
        assert_eq!(parsed, Err(HeaderError::ForkSubOffset));
        return;
    };
    let fork = parsed.expect("valid fork headers").expect("a fork");
    assert_eq!(fork.source, source);
    assert_eq!(fork.offset, want_offset.map(Result::unwrap));
    assert_eq!(fork.sub_offset, want_sub);
}

fuzz_target!(|input: Input<'_>| {
    // Stream-TTL and its underlying decimal parser.
    if let Some(ttl) = input.ttl {
        match parse_ttl(ttl) {
            Ok(v) => {
                assert!(v <= MAX_TTL_SECONDS);
                assert_eq!(v.to_string(), ttl, "TTL accepted a non-canonical spelling");
            }
            Err(e) => {
                assert!(parse_decimal(ttl).is_none_or(|v| v > MAX_TTL_SECONDS));
                // Too long exactly when it is spelled as a plain integer: then the error says so.
                let want = if is_plain_decimal(ttl) {
                    HeaderError::TtlTooLong
                } else {
                    HeaderError::Ttl
                };
                assert_eq!(e, want, "{ttl:?}");
            }
        }
        if let Some(v) = parse_decimal(ttl) {
            assert_eq!(v.to_string(), ttl);
        }
    }

    // Stream-Expires-At, and RFC 3339 printing of any instant.
    if let Some(at) = input.expires_at {
        check_time(at, input.instant_ms);
    } else {
        check_time("", input.instant_ms);
    }

    // Both expiry headers together.
    let expiry = Expiry::from_headers(input.ttl, input.expires_at);
    match (input.ttl, input.expires_at) {
        (Some(_), Some(_)) => assert_eq!(expiry, Err(HeaderError::TtlAndExpiresAt)),
        (Some(t), None) => assert_eq!(expiry, parse_ttl(t).map(Expiry::Ttl)),
        (None, Some(e)) => assert_eq!(expiry, parse_expires_at(e).map(Expiry::At)),
        (None, None) => assert_eq!(expiry, Ok(Expiry::Never)),
    }
    if let Ok(e) = expiry {
        assert_eq!(e.ttl_seconds().is_some(), matches!(e, Expiry::Ttl(_)));
        assert_eq!(e.expires_at_ms().is_some(), matches!(e, Expiry::At(_)));
        let now = input.instant_ms;
        if let Some(deadline) = e.deadline(now) {
            assert!(e.is_expired(now, deadline));
            if let Expiry::Ttl(_) = e {
                assert!(deadline >= now);
            }
        } else {
            assert!(!e.is_expired(now, i64::MAX));
        }
    }

    // Stream-Closed.
    let closed = is_closed(input.closed);
    assert_eq!(closed, is_true(input.closed));
    assert_eq!(
        closed,
        input
            .closed
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    );

    // Stream-Seq.
    match parse_stream_seq(input.stream_seq) {
        Ok(s) => {
            assert!(!s.is_empty() && s.len() <= MAX_STREAM_SEQ_LEN);
            assert!(core::ptr::eq(s, input.stream_seq));
        }
        Err(e) => {
            assert_eq!(e, HeaderError::StreamSeq);
            assert!(input.stream_seq.is_empty() || input.stream_seq.len() > MAX_STREAM_SEQ_LEN);
        }
    }

    // Producer-Id / Producer-Epoch / Producer-Seq.
    check_producer(input.producer_id, input.producer_epoch, input.producer_seq);

    // Stream-Forked-From / Stream-Fork-Offset / Stream-Fork-Sub-Offset.
    check_fork(input.forked_from, input.fork_offset, input.fork_sub_offset);

    // Content-Type.
    check_content_type(input.content_type, input.other_content_type);
    check_content_type(input.other_content_type, input.content_type);

    // live=
    let live = LiveMode::parse(input.live);
    match input.live {
        None => assert_eq!(live, Ok(None)),
        Some("long-poll") => assert_eq!(live, Ok(Some(LiveMode::LongPoll))),
        Some("sse") => assert_eq!(live, Ok(Some(LiveMode::Sse))),
        Some("ws") => assert_eq!(live, Ok(Some(LiveMode::WebSocket))),
        Some(_) => assert_eq!(live, Err(HeaderError::LiveMode)),
    }

    // If-None-Match against an ETag of the form the server issues.
    let _ = if_none_match(input.if_none_match, input.etag);
    assert!(if_none_match("*", input.etag));
    let id: String = input
        .etag
        .chars()
        .filter(|c| *c != ',' && *c != '"')
        .collect();
    let start = Offset::new(input.instant_ms.unsigned_abs() % 1_000).unwrap();
    let end = start
        .checked_add(input.instant_ms.unsigned_abs() % 7)
        .unwrap();
    let tag = edgestream::etag::etag(&id, start, end, closed);
    assert!(if_none_match(&tag, &tag), "{tag:?}");
    assert!(if_none_match(&format!("W/{tag}"), &tag), "{tag:?}");
    assert!(if_none_match(&format!("\"other\", {tag}"), &tag), "{tag:?}");
    let other = edgestream::etag::etag(&id, start, end, !closed);
    assert!(!if_none_match(&other, &tag), "{tag:?} vs {other:?}");

    // The `cursor` query parameter: decimal text, of any length a client sends.
    let now = input.instant_ms;
    let current = interval_at(now).to_string();
    let next = next_cursor(now, input.cursor, input.random);
    assert!(
        !next.is_empty() && next.bytes().all(|b| b.is_ascii_digit()),
        "{next:?}"
    );
    assert!(next == "0" || !next.starts_with('0'), "{next:?}");
    // Decimals compare by length once leading zeros are gone, then as text.
    let decimal = |t: &str| {
        let t = t.trim_start_matches('0');
        (t.len(), t.to_string())
    };
    let client = input
        .cursor
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()));
    match client {
        Some(c) if decimal(c) >= decimal(&current) => {
            assert!(decimal(&next) > decimal(c), "{c} -> {next}");
            let bound = u128::from(MAX_JITTER_S).div_ceil(20);
            match (c.parse::<u128>(), next.parse::<u128>()) {
                (Ok(c), Ok(n)) => assert!(n <= c + bound, "{c} -> {next}"),
                _ => assert!(next.len() <= decimal(c).0 + 1, "{c} -> {next}"),
            }
        }
        _ => assert_eq!(next, current),
    }
});

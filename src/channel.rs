//! Hierarchical channels: a JSON stream that receives every message of the streams below its
//! path, wrapped in an envelope that names the source stream and its offset.
//!
//! The rules here are the pure parts: the `Stream-Channel` header, which paths a channel
//! covers (on segment boundaries, as `rooms/**` or `rooms.>` would), and the envelopes. The
//! Worker moves the bytes.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::json::MessageEnds;
use crate::{base64, Offset, ProtocolError};

/// Request header of a PUT that creates a channel; response header of a channel's PUT, HEAD,
/// GET, long-poll and SSE responses.
pub const STREAM_CHANNEL: &str = "stream-channel";

/// Response header of a channel's PUT and HEAD while the registry is still linking the streams
/// that existed below it when it was created: how many it has linked so far. Absent once every
/// one is linked.
pub const STREAM_CHANNEL_LINKING: &str = "stream-channel-linking";

/// `Stream-Channel`: absent or `false` for a plain stream, `true` for a channel (ASCII case and
/// surrounding whitespace ignored). Anything else is refused rather than guessed.
pub fn parse_header(value: Option<&str>) -> Result<bool, ProtocolError> {
    let Some(value) = value else {
        return Ok(false);
    };
    let value = value.trim();
    if value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(ProtocolError::BadRequest(
            "Stream-Channel must be true or false",
        ))
    }
}

/// The most segments a channel's path may have (`a/b/c` has 3). Every append below a channel
/// is copied into it, so this bounds how many copies one append makes: at most this many
/// channels sit above any stream, however deep the stream itself is. Eight levels leave room
/// for `tenants/<id>/rooms/<region>/…` hierarchies and keep an append's cost in channels to at
/// most eight copies, and eight calls per delivery round.
pub const MAX_CHANNEL_DEPTH: usize = 8;

/// How many segments a stream path has.
pub fn depth(path: &str) -> usize {
    path.split('/').count()
}

/// A PUT may make a channel at `prefix` only when it is at most [`MAX_CHANNEL_DEPTH`] deep.
pub fn check_depth(prefix: &str) -> Result<(), ProtocolError> {
    if depth(prefix) > MAX_CHANNEL_DEPTH {
        return Err(ProtocolError::BadRequest(
            "a channel's path may have at most 8 segments",
        ));
    }
    Ok(())
}

/// Whether the channel at `prefix` covers the stream at `path`: `path` is strictly below
/// `prefix/`, at any depth. `rooms` covers `rooms/a` and `rooms/a/b`, never `rooms` itself or
/// `roomsx/a`. A channel deeper than [`MAX_CHANNEL_DEPTH`] (made before the limit) covers
/// nothing, so no way of linking puts more channels above a stream.
pub fn covers(prefix: &str, path: &str) -> bool {
    !prefix.is_empty()
        && depth(prefix) <= MAX_CHANNEL_DEPTH
        && path.len() > prefix.len() + 1
        && path.starts_with(prefix)
        && path.as_bytes()[prefix.len()] == b'/'
}

/// The paths a channel covering `path` could have: every proper prefix of `path` that ends on
/// a segment boundary, nearest the root first (`a/b/c` gives `a`, `a/b`).
pub fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.char_indices()
        .filter(|&(i, c)| c == '/' && i > 0)
        .map(move |(i, _)| &path[..i])
}

/// How a non-JSON source's bytes are carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BytesField {
    /// `"text"`: the bytes as a JSON string.
    Text,
    /// `"base64"`: standard base64 with padding.
    Base64,
}

impl BytesField {
    /// `text` for a `text/*` source whose piece is valid UTF-8, else `base64`.
    pub fn for_piece(text_type: bool, bytes: &[u8]) -> BytesField {
        if text_type && core::str::from_utf8(bytes).is_ok() {
            BytesField::Text
        } else {
            BytesField::Base64
        }
    }
}

/// Appends `value` to `out` as a JSON string.
pub fn write_json_string(value: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in value.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                let mut s = String::new();
                let _ = write!(s, "\\u{:04x}", c as u32);
                out.extend_from_slice(s.as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// How many bytes [`write_json_string`] writes for `value`.
pub fn json_string_len(value: &str) -> usize {
    2 + value
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum::<usize>()
}

/// Every offset is written in this many characters.
const OFFSET_LEN: usize = 33;

/// How many bytes [`write_head`] writes: the same for every offset.
fn head_len(stream: &str) -> u64 {
    // `{"stream":` name `,"offset":"` offset `",`
    (10 + json_string_len(stream) + 11 + OFFSET_LEN + 2) as u64
}

/// The bytes the envelopes of a JSON append (`framed`, in stored framing) take in a channel,
/// framed as [`json_batch`] writes them: computed before the append is stored, so one whose
/// copy would be too large is refused whole.
pub fn json_envelopes_len(stream: &str, framed: &[u8]) -> u64 {
    let mut messages = 0u64;
    let mut end = 0usize;
    for e in MessageEnds::new(framed) {
        messages += 1;
        end = e;
    }
    // Each message keeps its bytes and its comma (now the envelope's), and gains the head,
    // `"data":` and `}`.
    messages
        .saturating_mul(head_len(stream) + 8)
        .saturating_add(end as u64)
}

/// At most how many bytes the envelopes of a byte-stream append (`bytes`) take in a channel
/// when it is carried in at most `pieces` pieces, as the worker cuts it: a `text_stream`'s
/// pieces of a UTF-8 append are cut between characters, so each is text; any other piece is
/// base64.
pub fn bytes_envelopes_bound(stream: &str, bytes: &[u8], text_stream: bool, pieces: u64) -> u64 {
    let n = bytes.len() as u64;
    // Each base64 piece pads to a multiple of four characters.
    let base64 = n.div_ceil(3).saturating_add(pieces).saturating_mul(4);
    let data = if text_stream {
        let escaped: u64 = bytes
            .iter()
            .map(|&b| match b {
                b'"' | b'\\' | b'\n' | b'\r' | b'\t' => 2,
                b if b < 0x20 => 6,
                _ => 1,
            })
            .sum();
        match core::str::from_utf8(bytes) {
            Ok(_) => escaped,
            // Some pieces may be text and others base64.
            Err(_) => escaped.saturating_add(base64),
        }
    } else {
        base64
    };
    // Per piece: the head, `"base64":""` (the longer field), `}` and the comma.
    pieces
        .saturating_mul(head_len(stream) + 11 + 1 + 1)
        .saturating_add(data)
}

/// `{"stream":…,"offset":…,` — the start every envelope shares.
fn write_head(stream: &str, offset: Offset, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"stream\":");
    write_json_string(stream, out);
    let mut s = String::new();
    let _ = write!(s, ",\"offset\":\"{offset}\",");
    out.extend_from_slice(s.as_bytes());
}

/// The envelope of one JSON message (`message` is its JSON text, already validated):
/// `{"stream":…,"offset":…,"data":<message>}`, where `offset` is the source's offset just
/// after the message.
pub fn write_json_envelope(stream: &str, offset: Offset, message: &[u8], out: &mut Vec<u8>) {
    write_head(stream, offset, out);
    out.extend_from_slice(b"\"data\":");
    out.extend_from_slice(message);
    out.push(b'}');
}

/// The envelope of a piece of a non-JSON source: `{"stream":…,"offset":…,"text":"…"}` or
/// `…,"base64":"…"}`.
pub fn write_bytes_envelope(
    stream: &str,
    offset: Offset,
    bytes: &[u8],
    field: BytesField,
    out: &mut Vec<u8>,
) {
    write_head(stream, offset, out);
    match (field, core::str::from_utf8(bytes)) {
        (BytesField::Text, Ok(text)) => {
            out.extend_from_slice(b"\"text\":");
            write_json_string(text, out);
        }
        _ => {
            out.extend_from_slice(b"\"base64\":\"");
            base64::encode_into(bytes, out);
            out.push(b'"');
        }
    }
    out.push(b'}');
}

/// The event that follows a closed source's last message: `{"stream":…,"offset":…,"event":"closed"}`
/// with the source's final offset.
pub fn write_closed_envelope(stream: &str, offset: Offset, out: &mut Vec<u8>) {
    write_head(stream, offset, out);
    out.extend_from_slice(b"\"event\":\"closed\"}");
}

/// The event that comes before a new stream's first message, sent to the channels that
/// existed when it was created: `{"stream":…,"offset":…,"event":"created"}` with the offset a
/// reader of the stream starts from (its start, or where a fork diverges).
pub fn write_created_envelope(stream: &str, offset: Offset, out: &mut Vec<u8>) {
    write_head(stream, offset, out);
    out.extend_from_slice(b"\"event\":\"created\"}");
}

/// The event that follows a deleted stream's last delivered message:
/// `{"stream":…,"offset":…,"event":"deleted"}` with the stream's tail when it was deleted.
pub fn write_deleted_envelope(stream: &str, offset: Offset, out: &mut Vec<u8>) {
    write_head(stream, offset, out);
    out.extend_from_slice(b"\"event\":\"deleted\"}");
}

/// A channel's mark for a source incarnation once its `deleted` event is in: past every
/// position a stream reaches (positions pass through JavaScript numbers, so they stay below
/// 2^53, and a closed stream's mark at most reaches it), so nothing of that incarnation is
/// appended after it, and the event only once. 2^53 itself is exact as a JavaScript number.
pub const DELETED_MARK: u64 = 1 << 53;

/// Whether a channel whose mark for a source incarnation is `mark` still takes its `deleted`
/// event.
pub fn admits_deleted(mark: Option<u64>) -> bool {
    mark != Some(DELETED_MARK)
}

/// The source position a channel's mark reaches once a closed source's `closed` event is in
/// it: one past the final offset, which no message of a closed stream can reach, so the event
/// is deduplicated like any message.
pub fn closed_mark(tail: u64) -> u64 {
    tail.saturating_add(1)
}

/// A batch of envelopes in a JSON stream's stored framing (each followed by `,`), and the
/// source position just after the last source message it holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The envelopes, each followed by `,`, ready to append to the channel.
    pub framed: Vec<u8>,
    /// The source position after the last message held: where the next batch starts.
    pub end: u64,
}

/// Envelopes for the framed JSON messages of a source read from position `from`, stopping
/// once the batch holds `budget` bytes (it always holds at least one message when there is
/// one). `framed` must start on a message boundary; a trailing partial message is left out.
pub fn json_batch(stream: &str, from: u64, framed: &[u8], budget: usize) -> Batch {
    let mut batch = Batch {
        framed: Vec::new(),
        end: from,
    };
    let mut start = 0;
    for end in MessageEnds::new(framed) {
        if !batch.framed.is_empty() && batch.framed.len() >= budget {
            break;
        }
        let Some(offset) = from.checked_add(end as u64).and_then(Offset::new) else {
            break;
        };
        // The message without its comma.
        write_json_envelope(stream, offset, &framed[start..end - 1], &mut batch.framed);
        batch.framed.push(b',');
        batch.end = offset.position();
        start = end;
    }
    batch
}

/// What a channel does with a batch covering a source's positions `[from, to)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Append it and move the mark to `to`.
    Append,
    /// It has (some of) it already: answer the mark, from which the source resends.
    Already(u64),
}

/// The channel's rule for exactly-once delivery, given its mark for the source incarnation
/// (`None`: nothing from it yet). A batch is appended only when it starts at or past the mark,
/// so one delivered twice, whole or in part, is appended once. (A batch that starts past the
/// mark comes from a link made at a stream's tail, which is where the channel starts.)
pub fn admit(mark: Option<u64>, from: u64, to: u64) -> Admit {
    match mark {
        Some(mark) if mark > from || mark >= to => Admit::Already(mark),
        _ => Admit::Append,
    }
}

/// Where a source goes on from once the channel answered `mark`: never back, never past the
/// source's own tail.
pub fn advance(forwarded: u64, mark: u64, tail: u64) -> u64 {
    forwarded.max(mark.min(tail))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn a_batch_is_appended_once() {
        assert_eq!(admit(None, 0, 10), Admit::Append);
        assert_eq!(admit(Some(10), 10, 20), Admit::Append);
        // The same batch again, after its answer was lost.
        assert_eq!(admit(Some(20), 10, 20), Admit::Already(20));
        // A larger batch from the same start: the channel has its first part.
        assert_eq!(admit(Some(20), 10, 30), Admit::Already(20));
        // An older batch arriving late.
        assert_eq!(admit(Some(20), 0, 10), Admit::Already(20));
        // A link made at a later tail.
        assert_eq!(admit(Some(20), 50, 60), Admit::Append);
        assert_eq!(advance(10, 20, 30), 20);
        assert_eq!(advance(10, 5, 30), 10);
        assert_eq!(advance(10, 40, 30), 30);
    }

    #[test]
    fn closed_events_follow_the_last_message() {
        let mut out = Vec::new();
        write_closed_envelope("r/a", Offset::new(9).unwrap(), &mut out);
        assert_eq!(
            core::str::from_utf8(&out).unwrap(),
            "{\"stream\":\"r/a\",\"offset\":\"0000000000000000_0000000000000009\",\"event\":\"closed\"}"
        );
        // A close-only batch is appended once, and its mark never moves the source past its tail.
        assert_eq!(admit(Some(9), 9, closed_mark(9)), Admit::Append);
        assert_eq!(
            admit(Some(closed_mark(9)), 9, closed_mark(9)),
            Admit::Already(10)
        );
        assert_eq!(advance(9, closed_mark(9), 9), 9);
    }

    #[test]
    fn created_and_deleted_events() {
        let mut out = Vec::new();
        write_created_envelope("r/a", Offset::ZERO, &mut out);
        assert_eq!(
            core::str::from_utf8(&out).unwrap(),
            "{\"stream\":\"r/a\",\"offset\":\"0000000000000000_0000000000000000\",\"event\":\"created\"}"
        );
        crate::json::validate(&out).unwrap();
        out.clear();
        write_deleted_envelope("r/a", Offset::new(7).unwrap(), &mut out);
        assert!(core::str::from_utf8(&out)
            .unwrap()
            .ends_with("_0000000000000007\",\"event\":\"deleted\"}"));
        // A batch that only announces a new stream covers no position: appended while the
        // channel has nothing from that incarnation, and once.
        assert_eq!(admit(None, 0, 0), Admit::Append);
        assert_eq!(admit(Some(0), 0, 0), Admit::Already(0));
        // After its deleted event, nothing more of the incarnation, and no second event.
        assert!(admits_deleted(None));
        assert!(admits_deleted(Some(12)));
        assert!(!admits_deleted(Some(DELETED_MARK)));
        assert_eq!(
            admit(Some(DELETED_MARK), 12, 20),
            Admit::Already(DELETED_MARK)
        );
        assert_eq!(advance(12, DELETED_MARK, 20), 20);
    }

    #[test]
    fn header_values() {
        assert_eq!(parse_header(None), Ok(false));
        assert_eq!(parse_header(Some("true")), Ok(true));
        assert_eq!(parse_header(Some(" TRUE ")), Ok(true));
        assert_eq!(parse_header(Some("false")), Ok(false));
        assert!(parse_header(Some("yes")).is_err());
        assert!(parse_header(Some("")).is_err());
        assert!(parse_header(Some("1")).is_err());
    }

    #[test]
    fn coverage_is_on_segment_boundaries() {
        assert!(covers("rooms", "rooms/a"));
        assert!(covers("rooms", "rooms/a/b"));
        assert!(covers("rooms/eu", "rooms/eu/paris"));
        assert!(!covers("rooms", "rooms"));
        assert!(!covers("rooms", "rooms/"));
        assert!(!covers("rooms", "roomsx/a"));
        assert!(!covers("rooms", "room"));
        assert!(!covers("rooms/eu", "rooms/europe/x"));
        assert!(!covers("", "a"));
        assert!(covers("é", "é/ü"));
    }

    #[test]
    fn ancestors_are_segment_prefixes() {
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), vec!["a", "a/b"]);
        assert_eq!(ancestors("a").count(), 0);
        assert_eq!(
            ancestors("rooms/eu/paris").collect::<Vec<_>>(),
            vec!["rooms", "rooms/eu"]
        );
        for a in ancestors("x/y/z/w") {
            assert!(covers(a, "x/y/z/w"));
        }
    }

    #[test]
    fn json_envelopes_escape_the_name() {
        let mut out = Vec::new();
        write_json_envelope(
            "rooms/\"q\"\\\n",
            Offset::new(42).unwrap(),
            b"{\"a\":[1,2]}",
            &mut out,
        );
        let text = core::str::from_utf8(&out).unwrap();
        assert_eq!(
            text,
            "{\"stream\":\"rooms/\\\"q\\\"\\\\\\n\",\"offset\":\"0000000000000000_0000000000000042\",\"data\":{\"a\":[1,2]}}"
        );
        crate::json::validate(&out).unwrap();
        let mut ctl = Vec::new();
        write_json_string("\u{1}é", &mut ctl);
        assert_eq!(ctl, "\"\\u0001é\"".as_bytes());
    }

    #[test]
    fn bytes_envelopes_are_text_or_base64() {
        let mut out = Vec::new();
        let field = BytesField::for_piece(true, b"hi \"you\"");
        assert_eq!(field, BytesField::Text);
        write_bytes_envelope("t", Offset::new(8).unwrap(), b"hi \"you\"", field, &mut out);
        assert_eq!(
            core::str::from_utf8(&out).unwrap(),
            "{\"stream\":\"t\",\"offset\":\"0000000000000000_0000000000000008\",\"text\":\"hi \\\"you\\\"\"}"
        );
        out.clear();
        let field = BytesField::for_piece(true, &[0xff, 0x00]);
        assert_eq!(field, BytesField::Base64);
        write_bytes_envelope("b", Offset::new(2).unwrap(), &[0xff, 0x00], field, &mut out);
        assert!(core::str::from_utf8(&out)
            .unwrap()
            .ends_with("\"base64\":\"/wA=\"}"));
        assert_eq!(BytesField::for_piece(false, b"text"), BytesField::Base64);
        crate::json::validate(&out).unwrap();
    }

    #[test]
    fn channels_are_at_most_eight_deep() {
        assert_eq!(depth("a"), 1);
        assert_eq!(depth("a/b/c"), 3);
        let eight = "a/b/c/d/e/f/g/h";
        assert_eq!(depth(eight), MAX_CHANNEL_DEPTH);
        assert_eq!(check_depth(eight), Ok(()));
        let nine = "a/b/c/d/e/f/g/h/i";
        let refusal = check_depth(nine).unwrap_err();
        assert_eq!(refusal.status(), 400);
        assert!(refusal
            .message()
            .contains(&alloc::format!("at most {MAX_CHANNEL_DEPTH} segments")));
        // A deeper channel (made before the limit) covers nothing, so nothing links it.
        assert!(covers(eight, "a/b/c/d/e/f/g/h/x/y"));
        assert!(!covers(nine, "a/b/c/d/e/f/g/h/i/x"));
        // At most that many channels can sit above any stream.
        let deep = "a/b/c/d/e/f/g/h/i/j/k/l";
        assert_eq!(
            ancestors(deep).filter(|a| covers(a, deep)).count(),
            MAX_CHANNEL_DEPTH
        );
    }

    #[test]
    fn envelope_sizes() {
        assert_eq!(json_string_len("r/a"), 5);
        assert_eq!(json_string_len("\"\u{1}é"), 2 + 2 + 6 + 2);
        let max = Offset::new(Offset::MAX.position()).unwrap();
        assert_eq!(max.to_string().len(), OFFSET_LEN);
        assert_eq!(Offset::ZERO.to_string().len(), OFFSET_LEN);
        let framed = b"1,{\"x\":\"a,b\"},[3],";
        assert_eq!(
            json_envelopes_len("s", framed),
            json_batch("s", 100, framed, usize::MAX).framed.len() as u64
        );
        assert_eq!(json_envelopes_len("s", b""), 0);
        // One tiny message under a long name costs about the name.
        let name = "n".repeat(1000);
        assert_eq!(json_envelopes_len(&name, b"1,"), 1002 + 56 + 8 + 2);
        // Base64 for a binary stream, with the overhead of each piece.
        let bound = bytes_envelopes_bound("b", &[0; 300], false, 1);
        let mut out = Vec::new();
        write_bytes_envelope("b", max, &[0; 300], BytesField::Base64, &mut out);
        // The envelope and its comma, and at most a padding group and the text field's
        // shorter name to spare.
        let written = out.len() as u64 + 1;
        assert!(bound >= written && bound <= written + 6);
    }

    /// `bytes` cut into pieces at `cuts` (taken modulo its length), each cut moved back to the
    /// start of a character for a text stream's UTF-8 append, as the worker cuts one.
    fn pieces<'a>(bytes: &'a [u8], cuts: &[usize], text: bool) -> Vec<&'a [u8]> {
        let utf8 = core::str::from_utf8(bytes).ok();
        let mut at: Vec<usize> = cuts
            .iter()
            .map(|&c| c % (bytes.len() + 1))
            .map(|mut c| {
                if let (true, Some(s)) = (text, utf8) {
                    while !s.is_char_boundary(c) {
                        c -= 1;
                    }
                }
                c
            })
            .filter(|&c| c > 0 && c < bytes.len())
            .collect();
        at.sort_unstable();
        at.dedup();
        let mut out = Vec::new();
        let mut start = 0;
        for c in at.into_iter().chain([bytes.len()]) {
            out.push(&bytes[start..c]);
            start = c;
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn json_envelope_len_is_what_a_batch_writes(
            name in "[a-z\"\\\\/é\u{1}]{1,12}",
            items in proptest::collection::vec(r#"[0-9]{1,4}|"([a-z, é]|\\\\|\\"|\\u0007){0,6}"|\[[0-9,]{0,5}[0-9]\]|\{\}"#, 0..40),
            from in 0u64..1_000_000,
        ) {
            let mut framed = Vec::new();
            for item in &items {
                framed.extend_from_slice(item.as_bytes());
                framed.push(b',');
            }
            let batch = json_batch(&name, from, &framed, usize::MAX);
            proptest::prop_assert_eq!(batch.end, from + framed.len() as u64);
            proptest::prop_assert_eq!(json_envelopes_len(&name, &framed), batch.framed.len() as u64);
        }

        #[test]
        fn bytes_envelope_bound_holds(
            name in "[a-z\"\\\\/é]{1,12}",
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            ascii in proptest::collection::vec(0u8..0x80, 0..300),
            text_chars in "[a-zé€😀\"\\\\\n\u{1}]{0,100}",
            cuts in proptest::collection::vec(proptest::num::usize::ANY, 0..6),
            text in proptest::bool::ANY,
        ) {
            for data in [&bytes[..], &ascii[..], text_chars.as_bytes()] {
                let pieces = pieces(data, &cuts, text);
                let mut written = 0u64;
                for (i, piece) in pieces.iter().enumerate() {
                    let mut out = Vec::new();
                    let field = BytesField::for_piece(text, piece);
                    write_bytes_envelope(&name, Offset::new(i as u64).unwrap(), piece, field, &mut out);
                    written += out.len() as u64 + 1;
                }
                let bound = bytes_envelopes_bound(&name, data, text, pieces.len() as u64);
                proptest::prop_assert!(bound >= written, "{bound} < {written}");
                // And not far above it for UTF-8 text.
                if text && core::str::from_utf8(data).is_ok() {
                    proptest::prop_assert!(bound - written <= 2 * pieces.len() as u64);
                }
            }
        }
    }

    #[test]
    fn json_batches_carry_each_message_with_its_end_offset() {
        let framed = b"1,{\"x\":\"a,b\"},[3],";
        let batch = json_batch("s", 100, framed, 1 << 20);
        assert_eq!(batch.end, 100 + framed.len() as u64);
        let body = crate::json::render_array(&batch.framed);
        let text = core::str::from_utf8(&body).unwrap();
        assert_eq!(
            text,
            "[{\"stream\":\"s\",\"offset\":\"0000000000000000_0000000000000102\",\"data\":1},\
{\"stream\":\"s\",\"offset\":\"0000000000000000_0000000000000114\",\"data\":{\"x\":\"a,b\"}},\
{\"stream\":\"s\",\"offset\":\"0000000000000000_0000000000000118\",\"data\":[3]}]"
        );
        crate::json::validate(&body).unwrap();
        // A budget smaller than one envelope still takes one message, then stops.
        let one = json_batch("s", 100, framed, 1);
        assert_eq!(one.end, 102);
        // Even a budget of nothing (it once gave an empty batch, which moves no source on).
        assert_eq!(json_batch("s", 100, framed, 0), one);
        // A trailing partial message is left for the next batch.
        let partial = json_batch("s", 0, b"1,2", 1 << 20);
        assert_eq!(partial.end, 2);
        // Positions past the largest offset end the batch instead of overflowing.
        assert_eq!(json_batch("s", u64::MAX, b"1,", 1).framed, b"");
        assert_eq!(closed_mark(u64::MAX), u64::MAX);
        assert_eq!(
            json_batch("s", 7, b"", 10),
            Batch {
                framed: vec![],
                end: 7
            }
        );
    }
}

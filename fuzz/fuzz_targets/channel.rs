//! Channels: the `Stream-Channel` header, which paths a channel covers, and the envelopes.
//!
//! Invariants:
//! - `Stream-Channel`: absent or `false` is a plain stream, `true` a channel (case and
//!   surrounding whitespace ignored), anything else refused;
//! - `covers` is the documented rule (strictly below `prefix/`, at most 8 segments deep), and a
//!   covering channel is always one of the path's `ancestors`, which are its proper prefixes
//!   ending on a segment boundary, nearest the root first;
//! - `write_json_string` writes a JSON string that serde_json reads back as the value, in
//!   exactly `json_string_len` bytes;
//! - every envelope is one JSON object that serde_json reads, naming the stream and offset, and
//!   carrying the message, the text, or base64 that decodes to the bytes;
//! - `json_envelopes_len` is exactly the size of the batch `json_batch` writes for a whole
//!   append, and a smaller budget gives a prefix of it that stops on an envelope boundary;
//! - `bytes_envelopes_bound` is at least the size of the envelopes of any cutting of an append;
//! - `admit` and `advance`: a batch entirely at or past the mark is appended, anything else is
//!   answered with the mark; the source never goes back nor past its tail.
#![no_main]

use arbitrary::Arbitrary;
use edgestream::channel::{
    admit, advance, ancestors, bytes_envelopes_bound, check_depth, covers, depth, json_batch,
    json_envelopes_len, json_string_len, parse_header, write_bytes_envelope, write_closed_envelope,
    write_json_string, Admit, BytesField, MAX_CHANNEL_DEPTH,
};
use edgestream::json::{frame_messages, Purpose};
use edgestream::subscription::is_valid_path;
use edgestream::{base64, Offset};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    header: Option<&'a str>,
    prefix: &'a str,
    path: &'a str,
    body: &'a [u8],
    bytes: &'a [u8],
    cuts: Vec<u16>,
    text_stream: bool,
    budget: u16,
    from: u64,
    mark: Option<u64>,
    to: u64,
    tail: u64,
}

/// Reads an envelope back, checking the fields every envelope has.
fn envelope(out: &[u8], stream: &str, offset: Offset) -> serde_json::Map<String, Value> {
    let v: Value = serde_json::from_slice(out).unwrap_or_else(|e| {
        panic!(
            "envelope is not JSON ({e}): {:?}",
            String::from_utf8_lossy(out)
        )
    });
    let Value::Object(map) = v else {
        panic!("envelope is not an object")
    };
    assert_eq!(map.get("stream"), Some(&Value::String(stream.to_string())));
    assert_eq!(map.get("offset"), Some(&Value::String(offset.to_string())));
    assert_eq!(map.len(), 3, "{map:?}");
    map
}

/// Cuts `bytes` at `cuts` (taken modulo its length, sorted), between characters when `text`.
fn pieces<'b>(bytes: &'b [u8], cuts: &[u16], text: bool) -> Vec<&'b [u8]> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) % (bytes.len() + 1))
        .collect();
    if text {
        if let Ok(s) = core::str::from_utf8(bytes) {
            for a in &mut at {
                while !s.is_char_boundary(*a) {
                    *a -= 1;
                }
            }
        }
    }
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

fuzz_target!(|input: Input<'_>| {
    // Stream-Channel.
    let parsed = parse_header(input.header);
    match input.header.map(str::trim) {
        None => assert_eq!(parsed.ok(), Some(false)),
        Some(v) if v.eq_ignore_ascii_case("true") => assert_eq!(parsed.ok(), Some(true)),
        Some(v) if v.eq_ignore_ascii_case("false") => assert_eq!(parsed.ok(), Some(false)),
        Some(_) => assert!(parsed.is_err()),
    }

    // Coverage and ancestors.
    let (prefix, path) = (input.prefix, input.path);
    assert_eq!(depth(prefix), prefix.matches('/').count() + 1);
    assert_eq!(
        check_depth(prefix).is_ok(),
        depth(prefix) <= MAX_CHANNEL_DEPTH
    );
    let covered = covers(prefix, path);
    let expected = !prefix.is_empty()
        && depth(prefix) <= MAX_CHANNEL_DEPTH
        && path
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| !rest.is_empty());
    assert_eq!(covered, expected, "{prefix:?} covers {path:?}");
    assert!(!covers(path, path));
    let up: Vec<&str> = ancestors(path).collect();
    for (k, a) in up.iter().enumerate() {
        assert!(!a.is_empty() && a.len() < path.len());
        assert!(path.starts_with(a) && path.as_bytes()[a.len()] == b'/');
        if k > 0 {
            assert!(a.len() > up[k - 1].len());
        }
        // A stream path has no empty segment (`a/`, `a//b` are refused with 400), and then
        // every ancestor not too deep covers it, as the registry's `channels_above` assumes.
        if is_valid_path(path) {
            assert_eq!(
                covers(a, path),
                depth(a) <= MAX_CHANNEL_DEPTH,
                "{a:?} {path:?}"
            );
        }
    }
    if covered {
        assert!(
            up.contains(&prefix),
            "{prefix:?} covers {path:?} but is not an ancestor"
        );
    }

    // JSON strings.
    for s in [prefix, path] {
        let mut out = Vec::new();
        write_json_string(s, &mut out);
        assert_eq!(out.len(), json_string_len(s));
        let back: String = serde_json::from_slice(&out).expect("a JSON string");
        assert_eq!(back, s);
    }

    // Envelopes of single messages and events.
    let offset = Offset::new(input.from % (Offset::MAX.position() + 1)).unwrap();
    let mut out = Vec::new();
    write_closed_envelope(path, offset, &mut out);
    let map = envelope(&out, path, offset);
    assert_eq!(map.get("event"), Some(&Value::String("closed".into())));
    let text = core::str::from_utf8(input.bytes).ok();
    for field in [BytesField::Text, BytesField::Base64] {
        out.clear();
        write_bytes_envelope(path, offset, input.bytes, field, &mut out);
        let map = envelope(&out, path, offset);
        match (field, text) {
            (BytesField::Text, Some(t)) => {
                assert_eq!(map.get("text"), Some(&Value::String(t.to_string())));
            }
            _ => {
                let Some(Value::String(b)) = map.get("base64") else {
                    panic!("no base64 field: {map:?}")
                };
                assert_eq!(base64::decode(b.as_bytes()).as_deref(), Ok(input.bytes));
            }
        }
    }
    assert_eq!(
        BytesField::for_piece(input.text_stream, input.bytes),
        if input.text_stream && text.is_some() {
            BytesField::Text
        } else {
            BytesField::Base64
        }
    );

    // The envelopes of a byte append, cut into pieces, fit the bound computed before storing it.
    let cut = pieces(input.bytes, &input.cuts, input.text_stream);
    let mut written = 0u64;
    for piece in &cut {
        out.clear();
        let field = BytesField::for_piece(input.text_stream, piece);
        write_bytes_envelope(path, Offset::MAX, piece, field, &mut out);
        written += out.len() as u64 + 1;
    }
    let bound = bytes_envelopes_bound(path, input.bytes, input.text_stream, cut.len() as u64);
    assert!(
        written <= bound,
        "{written} > {bound} for {} pieces",
        cut.len()
    );

    // The envelopes of a JSON append (serde_json stops at 128 levels, so keep well below).
    let shallow = input
        .body
        .iter()
        .filter(|&&b| b == b'[' || b == b'{')
        .count()
        <= 100;
    if let (true, Ok(framed)) = (shallow, frame_messages(input.body, Purpose::Append)) {
        let from = input.from % (Offset::MAX.position() + 1 - framed.len() as u64);
        let whole = json_batch(path, from, &framed, usize::MAX);
        assert_eq!(whole.framed.len() as u64, json_envelopes_len(path, &framed));
        assert_eq!(whole.end, from + framed.len() as u64);
        let array = edgestream::json::render_array(&whole.framed);
        let Ok(Value::Array(envelopes)) = serde_json::from_slice::<Value>(&array) else {
            panic!(
                "batch is not a JSON array: {:?}",
                String::from_utf8_lossy(&array)
            )
        };
        let messages = edgestream::json::split_messages(input.body, Purpose::Append).unwrap();
        assert_eq!(envelopes.len(), messages.len());
        let ends = edgestream::json::message_ends(&framed);
        for ((env, span), end) in envelopes.iter().zip(&messages).zip(&ends) {
            let want: Value = serde_json::from_slice(&input.body[span.clone()]).unwrap();
            assert_eq!(env.get("data"), Some(&want));
            let at = Offset::new(from + *end as u64).unwrap();
            assert_eq!(env.get("offset"), Some(&Value::String(at.to_string())));
        }
        let part = json_batch(path, from, &framed, usize::from(input.budget));
        assert!(whole.framed.starts_with(&part.framed));
        assert!(part.end > from, "a batch holds at least one message");
        let held = edgestream::json::message_ends(&part.framed).len();
        assert!(held >= 1 && held <= ends.len());
        assert_eq!(part.end, from + ends[held - 1] as u64);
        if held < ends.len() {
            assert!(part.framed.len() >= usize::from(input.budget));
        }
        if held > 1 {
            // It stopped only once the budget was reached.
            let before = json_batch(path, from, &framed[..ends[held - 2]], usize::MAX);
            assert!(before.framed.len() < usize::from(input.budget));
        }
    }

    // Exactly-once delivery.
    let (from, to) = (input.from.min(input.to), input.from.max(input.to));
    match admit(input.mark, from, to) {
        Admit::Append => assert!(input.mark.is_none_or(|m| m <= from && m < to)),
        Admit::Already(m) => {
            assert_eq!(Some(m), input.mark);
            assert!(m > from || m >= to);
        }
    }
    let (forwarded, mark, tail) = (input.from, input.to, input.tail);
    let next = advance(forwarded, mark, tail);
    assert!(next >= forwarded);
    assert!(next <= forwarded.max(tail));
    assert!(next == forwarded || next == mark.min(tail));
});

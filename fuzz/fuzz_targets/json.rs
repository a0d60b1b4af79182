//! JSON mode: validation and one-level flattening of PUT/POST bodies, and the stored framing.
//!
//! Invariants:
//! - `validate` agrees with serde_json (an independent parser) on every body nested no deeper
//!   than serde_json's own limit, and refuses exactly the non-UTF-8 bodies as `Utf8`;
//! - `split_messages` accepts exactly what `validate` accepts (except `[]` for appends);
//! - its spans are in order, disjoint, inside the body, carry no surrounding whitespace, and
//!   each is one valid JSON value; a non-array body is one message, its trimmed self;
//! - a top-level array's spans are serde_json's elements, one for one;
//! - `frame_messages` (validation and framing in one pass, as appends are stored) gives exactly
//!   `split_messages` then `frame`, refusals included;
//! - framing then `message_ends`/`prefix_len` finds exactly those messages, and the rendered GET
//!   body `[m1,m2,…]` is valid JSON that flattens back to the same messages;
//! - the framing helpers never panic on arbitrary (even invalid) framed bytes.
#![no_main]

use edgestream::json::{
    frame, frame_messages, message_ends, prefix_len, render_array, split_messages, validate,
    JsonError, Purpose, MAX_DEPTH,
};
use libfuzzer_sys::fuzz_target;

/// The deepest nesting of `[`/`{` outside strings (an over-estimate on invalid input).
fn max_depth(body: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &c in body {
        if in_str {
            if esc {
                esc = false;
            } else if c == b'\\' {
                esc = true;
            } else if c == b'"' {
                in_str = false;
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// `body` with every `\uD800`–`\uDFFF` escape inside a string replaced by `\u0041`, the same
/// length, so that validity differs from the original only in how surrogates are judged.
fn without_surrogate_escapes(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    let (mut i, mut in_str) = (0, false);
    while i < out.len() {
        match (in_str, out[i]) {
            (false, b'"') => in_str = true,
            (true, b'"') => in_str = false,
            (true, b'\\') => {
                let hex = out
                    .get(i + 2..i + 6)
                    .and_then(|h| core::str::from_utf8(h).ok());
                let unit = hex.and_then(|h| u16::from_str_radix(h, 16).ok());
                let is_plain_hex = hex.is_some_and(|h| h.bytes().all(|c| c.is_ascii_hexdigit()));
                if out.get(i + 1) == Some(&b'u')
                    && is_plain_hex
                    && unit.is_some_and(|u| (0xD800..=0xDFFF).contains(&u))
                {
                    out[i + 2..i + 6].copy_from_slice(b"0041");
                    i += 6;
                    continue;
                }
                i += 1; // skip the escaped byte, so `\"` does not end the string
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

fuzz_target!(|body: &[u8]| {
    let valid = validate(body);
    let utf8 = core::str::from_utf8(body).is_ok();
    assert_eq!(valid == Err(JsonError::Utf8), !utf8);
    if let Err(JsonError::Syntax { at }) = valid {
        assert!(at <= body.len());
    }
    let trimmed_empty = body.iter().all(|&c| is_ws(c));
    if utf8 && trimmed_empty {
        assert_eq!(valid, Err(JsonError::Empty));
    }

    // Differential check against serde_json (which stops at 128 levels; we allow MAX_DEPTH).
    let depth = max_depth(body);
    // serde_json (with arbitrary_precision) reads an object keyed `$serde_json::private::Number`
    // as its own number token, and refuses valid JSON such as {"$serde_json::private::Number":0}:
    // no judge for such bodies (a CI fuzz run found one).
    let quirk = body
        .windows(b"$serde_json::private".len())
        .any(|w| w == b"$serde_json::private");
    if utf8 && depth <= 100 && !quirk {
        // serde_json refuses lone UTF-16 surrogates in `\u` escapes, with several different
        // errors; JSON's grammar (and JavaScript's JSON.parse, which clients use) allows them.
        // So serde_json judges a copy whose surrogate escapes are swapped for a plain one.
        let plain = without_surrogate_escapes(body);
        assert_eq!(
            validate(&plain),
            valid,
            "swapping escapes changed our verdict"
        );
        let theirs = serde_json::from_slice::<serde_json::Value>(&plain);
        assert_eq!(
            valid.is_ok(),
            theirs.is_ok(),
            "validate={valid:?} serde_json={theirs:?} body={:?}",
            String::from_utf8_lossy(body)
        );
    }
    if depth > MAX_DEPTH && valid.is_ok() {
        panic!("accepted a body nested {depth} deep");
    }

    for purpose in [Purpose::Create, Purpose::Append] {
        let split = split_messages(body, purpose);
        assert_eq!(
            frame_messages(body, purpose),
            split
                .as_ref()
                .map(|spans| frame(body, spans))
                .map_err(|e| *e)
        );
        let spans = match (&valid, &split) {
            (Ok(()), Ok(spans)) => spans,
            (Ok(()), Err(JsonError::EmptyArray)) => {
                assert_eq!(purpose, Purpose::Append);
                let inner: Vec<u8> = body.iter().copied().filter(|&c| !is_ws(c)).collect();
                assert_eq!(inner, b"[]");
                continue;
            }
            (Err(_), Err(_)) => continue,
            _ => panic!("validate={valid:?} but split_messages({purpose:?})={split:?}"),
        };

        let first = body.iter().position(|&c| !is_ws(c)).expect("non-empty");
        let is_array = body[first] == b'[';
        if !is_array {
            let last = body.iter().rposition(|&c| !is_ws(c)).unwrap();
            assert_eq!(spans.len(), 1);
            assert_eq!(spans[0], first..last + 1);
        }
        let mut prev_end = 0;
        for span in spans {
            assert!(span.start >= prev_end && span.start < span.end && span.end <= body.len());
            prev_end = span.end;
            let msg = &body[span.clone()];
            assert!(!is_ws(msg[0]) && !is_ws(msg[msg.len() - 1]));
            assert_eq!(validate(msg), Ok(()), "span {span:?}");
        }
        if is_array && depth <= 100 {
            if let Ok(serde_json::Value::Array(items)) =
                serde_json::from_slice::<serde_json::Value>(body)
            {
                assert_eq!(items.len(), spans.len());
                for (item, span) in items.iter().zip(spans) {
                    let ours: serde_json::Value =
                        serde_json::from_slice(&body[span.clone()]).expect("span parses alone");
                    assert_eq!(&ours, item);
                }
            }
        }

        // The stored framing and the read path.
        let framed = frame(body, spans);
        let expected_len: usize = spans.iter().map(|r| r.len() + 1).sum();
        assert_eq!(framed.len(), expected_len);
        let ends = message_ends(&framed);
        let mut at = 0;
        let want: Vec<usize> = spans
            .iter()
            .map(|r| {
                at += r.len() + 1;
                at
            })
            .collect();
        assert_eq!(ends, want, "message boundaries in the framed log");
        for k in 0..=spans.len() + 1 {
            let expect = if k == 0 {
                Some(0)
            } else {
                want.get(k - 1).copied()
            };
            assert_eq!(prefix_len(&framed, k), expect);
        }
        let rendered = render_array(&framed);
        let back = split_messages(&rendered, Purpose::Create).expect("rendered body is JSON");
        assert_eq!(back.len(), spans.len());
        for (b, s) in back.iter().zip(spans) {
            assert_eq!(&rendered[b.clone()], &body[s.clone()]);
        }
        // Reading from any message boundary renders the remaining messages.
        for &start in ends.iter().take(4) {
            let tail = render_array(&framed[start..]);
            assert!(validate(&tail).is_ok());
        }
    }

    // The framing helpers on arbitrary bytes.
    let ends = message_ends(body);
    assert!(ends.windows(2).all(|w| w[0] < w[1]));
    assert!(ends
        .iter()
        .all(|&e| e >= 1 && e <= body.len() && body[e - 1] == b','));
    let _ = prefix_len(body, body.len() % 7);
    let rendered = render_array(body);
    assert!(rendered.starts_with(b"[") && rendered.ends_with(b"]"));
});

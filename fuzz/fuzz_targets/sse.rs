//! The SSE decoder on arbitrary bytes and chunkings, and encode → decode round trips.
//!
//! Input layout: byte 0 is the number of cuts (mod 16), then two bytes per cut (little-endian
//! positions into the rest), then the body. Seeds are written that way by `scripts/fuzz.mjs`.
//!
//! Invariants:
//! - chunking never matters: the events (and `retry`) decoded from the body are the same whether
//!   it arrives whole, byte by byte, or split at the input's cut points (inside CRLF or UTF-8 too);
//! - decoded events have a non-empty type and no CR in their data, and ids hold no NUL;
//! - `encode_data` → decoder gives back the payload: exactly in base64 mode, and in UTF-8 mode the
//!   payload's text with each CR, LF or CRLF as one LF; payload bytes never forge a second event;
//! - `encode_control` → decoder → `Control::parse` gives back the control (as closing normalises
//!   it), and `Control::parse` on arbitrary text never panics and re-encodes to itself;
//! - base64 decodes what it encodes.
#![no_main]

use edgestream::base64;
use edgestream::sse::{decode_data, encode_control, encode_data, Control, SseDecoder, SseEvent};
use edgestream::SseEncoding;
use libfuzzer_sys::fuzz_target;

/// Decodes `bytes` fed in pieces ending at `cuts` (clamped, in order), then the rest.
fn decode(bytes: &[u8], cuts: &[usize]) -> (Vec<SseEvent>, Option<u32>) {
    let mut d = SseDecoder::new();
    let mut events = Vec::new();
    let mut last = 0;
    for &c in cuts {
        let c = c.clamp(last, bytes.len());
        d.push(&bytes[last..c]);
        last = c;
        while let Some(e) = d.next_event() {
            events.push(e);
        }
    }
    d.push(&bytes[last..]);
    while let Some(e) = d.next_event() {
        events.push(e);
    }
    (events, d.retry_ms)
}

/// What the UTF-8 mode promises to deliver: the text, each line break as one LF.
fn normalise_breaks(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload)
        .replace("\r\n", "\n")
        .replace('\r', "\n")
}

#[path = "common/control.rs"]
mod control;
use control::{as_sent, control_from};

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16);
    let header = (2 * n).min(rest.len());
    let (raw_cuts, body) = rest.split_at(header);
    let mut cuts: Vec<usize> = raw_cuts
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .collect();
    cuts.sort_unstable();

    // 1. Arbitrary bytes: the decoder's output does not depend on chunking.
    let whole = decode(body, &[]);
    let chunked = decode(body, &cuts);
    assert_eq!(whole, chunked, "chunking changed the events");
    if body.len() <= 512 {
        let every: Vec<usize> = (0..body.len()).collect();
        assert_eq!(
            whole,
            decode(body, &every),
            "byte-by-byte changed the events"
        );
    }
    for e in &whole.0 {
        assert!(!e.event.is_empty());
        assert!(!e.data.contains('\r'));
        assert!(e.id.as_deref().is_none_or(|id| !id.contains('\0')));
    }

    // 2. The body as a payload, in both encodings, between two control events.
    let text = String::from_utf8_lossy(body);
    let control = control_from(&text, n as u8);
    let mut wire = Vec::new();
    encode_control(&control, &mut wire);
    encode_data(body, SseEncoding::Base64, &mut wire);
    encode_data(body, SseEncoding::Utf8, &mut wire);
    encode_control(&control, &mut wire);
    let (events, retry) = decode(&wire, &cuts);
    assert_eq!(retry, None);
    assert_eq!(events.len(), 4, "payload forged or swallowed events");
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["control", "data", "data", "control"]);
    assert!(events.iter().all(|e| e.id.is_none()));
    let b64 = decode_data(&events[1].data, SseEncoding::Base64).expect("base64 decodes");
    assert_eq!(b64, body, "base64 round trip");
    let utf8 = decode_data(&events[2].data, SseEncoding::Utf8).unwrap();
    assert_eq!(
        utf8,
        normalise_breaks(body).into_bytes(),
        "UTF-8 round trip"
    );
    for e in [&events[0], &events[3]] {
        assert_eq!(Control::parse(&e.data), Ok(as_sent(&control)));
    }

    // 3. Control::parse on arbitrary text; whatever it accepts survives a re-encode.
    if let Ok(c) = Control::parse(&text) {
        assert_eq!(Control::parse(&c.to_json()), Ok(as_sent(&c)));
    }

    // 4. base64 on its own.
    assert_eq!(
        base64::decode(base64::encode(body).as_bytes()),
        Ok(body.to_vec())
    );
    if let Ok(bytes) = base64::decode(body) {
        assert_eq!(base64::decode(base64::encode(&bytes).as_bytes()), Ok(bytes));
    }
});

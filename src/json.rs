//! JSON mode: strict validation, one-level flattening of appended bodies, and the stored framing.
//!
//! A JSON stream's log holds each message's bytes followed by one `,`. A range of the log that
//! starts and ends on message boundaries is then a GET body once wrapped in `[` `]` (dropping the
//! last comma), with no parsing on the read path. Offsets in JSON streams count these framed bytes.

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

/// How deeply arrays and objects may nest. Bounds the scanner's memory on hostile input.
pub const MAX_DEPTH: usize = 256;

/// Why a body is not acceptable JSON for a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonError {
    /// No value at all (empty or whitespace only).
    Empty,
    /// Not valid UTF-8.
    Utf8,
    /// Not valid JSON; `at` is the byte position where it went wrong.
    Syntax {
        /// Byte position where parsing failed.
        at: usize,
    },
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// `[]` appended: no messages, which the protocol treats as a client bug.
    EmptyArray,
}

impl JsonError {
    /// A short text for the error body.
    pub fn message(self) -> &'static str {
        match self {
            JsonError::Empty => "body is empty; a JSON value is required",
            JsonError::Utf8 => "body is not valid UTF-8",
            JsonError::Syntax { .. } => "body is not valid JSON",
            JsonError::TooDeep => "JSON is nested too deeply",
            JsonError::EmptyArray => "an empty JSON array appends nothing",
        }
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::Syntax { at } => write!(f, "body is not valid JSON (at byte {at})"),
            other => f.write_str(other.message()),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for JsonError {}

/// Whether a body creates a stream (where `[]` means "no initial messages") or appends to one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A create's initial body: `[]` means no messages.
    Create,
    /// An append: `[]` is an empty array, which the protocol refuses.
    Append,
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn err(&self) -> JsonError {
        JsonError::Syntax { at: self.i }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), JsonError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err())
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err())
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<(), JsonError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err()),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err());
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err());
            }
        }
        Ok(())
    }

    /// A string; the input is already known to be valid UTF-8.
    fn string(&mut self) -> Result<(), JsonError> {
        self.expect(b'"')?;
        loop {
            match self.peek() {
                None => return Err(self.err()),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            for _ in 0..4 {
                                if !self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                                    return Err(self.err());
                                }
                                self.i += 1;
                            }
                        }
                        _ => return Err(self.err()),
                    }
                }
                Some(c) if c < 0x20 => return Err(self.err()),
                Some(_) => self.i += 1,
            }
        }
    }

    /// One complete value, iteratively so hostile nesting cannot overflow the stack.
    fn value(&mut self, depth: usize) -> Result<(), JsonError> {
        let mut stack: Vec<u8> = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                Some(open @ (b'[' | b'{')) => {
                    if depth + stack.len() + 1 > MAX_DEPTH {
                        return Err(JsonError::TooDeep);
                    }
                    self.i += 1;
                    self.skip_ws();
                    let close = if open == b'[' { b']' } else { b'}' };
                    if self.peek() == Some(close) {
                        self.i += 1;
                    } else {
                        stack.push(open);
                        if open == b'{' {
                            self.member_name()?;
                        }
                        continue;
                    }
                }
                Some(b'"') => self.string()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                _ => return Err(self.err()),
            }
            // A value just ended: close every container it completes.
            loop {
                let Some(&top) = stack.last() else {
                    return Ok(());
                };
                self.skip_ws();
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        if top == b'{' {
                            self.member_name()?;
                        }
                        break;
                    }
                    Some(b']') if top == b'[' => {
                        self.i += 1;
                        stack.pop();
                    }
                    Some(b'}') if top == b'{' => {
                        self.i += 1;
                        stack.pop();
                    }
                    _ => return Err(self.err()),
                }
            }
        }
    }

    fn member_name(&mut self) -> Result<(), JsonError> {
        self.skip_ws();
        self.string()?;
        self.skip_ws();
        self.expect(b':')
    }

    fn end(&mut self) -> Result<(), JsonError> {
        self.skip_ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            Err(self.err())
        }
    }
}

/// Whether `body` is exactly one JSON value (surrounding whitespace allowed).
pub fn validate(body: &[u8]) -> Result<(), JsonError> {
    core::str::from_utf8(body).map_err(|_| JsonError::Utf8)?;
    let mut s = Scanner { b: body, i: 0 };
    s.skip_ws();
    if s.peek().is_none() {
        return Err(JsonError::Empty);
    }
    s.value(0)?;
    s.end()
}

/// Validates a PUT or POST body and returns the byte spans of its messages after flattening
/// exactly one level: a top-level array yields its elements, anything else is one message.
pub fn split_messages(body: &[u8], purpose: Purpose) -> Result<Vec<Range<usize>>, JsonError> {
    let mut spans = Vec::new();
    each_message(body, purpose, |span| spans.push(span))?;
    Ok(spans)
}

/// Validates a PUT or POST body as [`split_messages`] does and returns its stored form (each
/// message followed by `,`), in one pass and with no list of spans: a 16 MiB array of tiny
/// messages would otherwise hold 8 bytes per message beside the body and its framing.
pub fn frame_messages(body: &[u8], purpose: Purpose) -> Result<Vec<u8>, JsonError> {
    // The framing of an array is never longer than the array, nor a single value's than it + 1.
    let mut out = Vec::with_capacity(body.len() + 1);
    each_message(body, purpose, |span| {
        if let Some(msg) = body.get(span) {
            out.extend_from_slice(msg);
            out.push(b',');
        }
    })?;
    Ok(out)
}

/// Validates `body` and hands each message's span to `found`, in order.
fn each_message(
    body: &[u8],
    purpose: Purpose,
    mut found: impl FnMut(Range<usize>),
) -> Result<(), JsonError> {
    core::str::from_utf8(body).map_err(|_| JsonError::Utf8)?;
    let mut s = Scanner { b: body, i: 0 };
    s.skip_ws();
    match s.peek() {
        None => return Err(JsonError::Empty),
        Some(b'[') => {
            s.i += 1;
            s.skip_ws();
            if s.peek() == Some(b']') {
                s.i += 1;
                s.end()?;
                return match purpose {
                    Purpose::Create => Ok(()),
                    Purpose::Append => Err(JsonError::EmptyArray),
                };
            }
            loop {
                s.skip_ws();
                let start = s.i;
                s.value(1)?;
                found(start..s.i);
                s.skip_ws();
                match s.peek() {
                    Some(b',') => s.i += 1,
                    Some(b']') => {
                        s.i += 1;
                        break;
                    }
                    _ => return Err(s.err()),
                }
            }
        }
        Some(_) => {
            let start = s.i;
            s.value(0)?;
            found(start..s.i);
        }
    }
    s.end()
}

/// The stored form of `spans` of `body`: each message followed by `,`.
pub fn frame(body: &[u8], spans: &[Range<usize>]) -> Vec<u8> {
    let len: usize = spans.iter().map(|r| r.len() + 1).sum();
    let mut out = Vec::with_capacity(len);
    for r in spans {
        if let Some(msg) = body.get(r.clone()) {
            out.extend_from_slice(msg);
            out.push(b',');
        }
    }
    out
}

/// A GET body for a framed range: `[m1,m2]`, or `[]` when the range is empty.
pub fn render_array(framed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(framed.len() + 2);
    write_array(framed, &mut out);
    out
}

/// Appends the array form of a framed range to `out`.
pub fn write_array(framed: &[u8], out: &mut Vec<u8>) {
    out.push(b'[');
    if let Some((b',', messages)) = framed.split_last() {
        out.extend_from_slice(messages);
    }
    out.push(b']');
}

/// End positions (just past each message's comma) of the messages in a framed range, in order.
/// The range must start on a message boundary; a trailing partial message has no end listed.
pub fn message_ends(framed: &[u8]) -> Vec<usize> {
    MessageEnds::new(framed).collect()
}

/// [`message_ends`] one at a time, holding nothing: a framed range of tiny messages has as many
/// ends as it has pairs of bytes.
#[derive(Clone, Debug)]
pub struct MessageEnds<'a> {
    framed: &'a [u8],
    i: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl<'a> MessageEnds<'a> {
    /// Iterates over `framed`, which must start on a message boundary.
    pub fn new(framed: &'a [u8]) -> MessageEnds<'a> {
        MessageEnds {
            framed,
            i: 0,
            depth: 0,
            in_string: false,
            escaped: false,
        }
    }
}

impl Iterator for MessageEnds<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while let Some(&c) = self.framed.get(self.i) {
            self.i += 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if c == b'\\' {
                    self.escaped = true;
                } else if c == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match c {
                b'"' => self.in_string = true,
                b'[' | b'{' => self.depth += 1,
                b']' | b'}' => self.depth = self.depth.saturating_sub(1),
                b',' if self.depth == 0 => return Some(self.i),
                _ => {}
            }
        }
        None
    }
}

/// The framed length of the first `n` messages of `framed`, or `None` if it has fewer.
pub fn prefix_len(framed: &[u8], n: usize) -> Option<usize> {
    if n == 0 {
        return Some(0);
    }
    MessageEnds::new(framed).nth(n - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec;

    fn msgs(body: &str, purpose: Purpose) -> Result<Vec<&str>, JsonError> {
        split_messages(body.as_bytes(), purpose)
            .map(|spans| spans.into_iter().map(|r| &body[r]).collect())
    }

    #[test]
    fn flattens_exactly_one_level() {
        assert_eq!(
            msgs(r#"{"event": "created"}"#, Purpose::Append).unwrap(),
            [r#"{"event": "created"}"#]
        );
        assert_eq!(
            msgs(r#"[{"event": "a"}, {"event": "b"}]"#, Purpose::Append).unwrap(),
            [r#"{"event": "a"}"#, r#"{"event": "b"}"#]
        );
        assert_eq!(
            msgs("[[1,2], [3,4]]", Purpose::Append).unwrap(),
            ["[1,2]", "[3,4]"]
        );
        assert_eq!(msgs("[[[1,2,3]]]", Purpose::Append).unwrap(), ["[[1,2,3]]"]);
        assert_eq!(msgs(" \n 42 \t", Purpose::Append).unwrap(), ["42"]);
        assert_eq!(
            msgs(
                r#"[1, "two", null, true, false, {"a":[]}, []]"#,
                Purpose::Append
            )
            .unwrap(),
            ["1", "\"two\"", "null", "true", "false", "{\"a\":[]}", "[]"]
        );
    }

    #[test]
    fn empty_arrays() {
        assert_eq!(msgs("[]", Purpose::Append), Err(JsonError::EmptyArray));
        assert_eq!(msgs(" [ ] ", Purpose::Append), Err(JsonError::EmptyArray));
        assert_eq!(msgs("[]", Purpose::Create).unwrap(), Vec::<&str>::new());
        assert_eq!(msgs("", Purpose::Create), Err(JsonError::Empty));
        assert_eq!(msgs("  ", Purpose::Append), Err(JsonError::Empty));
    }

    #[test]
    fn rejects_invalid_json() {
        for bad in [
            "{",
            "}",
            "[1,]",
            "[,1]",
            "{\"a\"}",
            "{\"a\":}",
            "{a:1}",
            "{'a':1}",
            "01",
            "1.",
            ".5",
            "-",
            "+1",
            "1e",
            "tru",
            "nul",
            "\"abc",
            "\"\\x\"",
            "\"\\u12g4\"",
            "\"a\nb\"",
            "1 2",
            "[1 2]",
            "{\"a\":1,}",
            "NaN",
            "Infinity",
            "\u{feff}1",
            "[1]]",
            "{\"a\":1}}",
            "//",
            "{\"a\" 1}",
        ] {
            assert!(
                matches!(
                    validate(bad.as_bytes()),
                    Err(JsonError::Syntax { .. } | JsonError::Empty)
                ),
                "{bad:?}"
            );
        }
        assert_eq!(validate(b"\"\xff\""), Err(JsonError::Utf8));
    }

    #[test]
    fn accepts_valid_json() {
        for good in [
            "0",
            "-0",
            "1.5e10",
            "-2E-3",
            "1e+2",
            "\"\\u00e9\\n\\\"\"",
            "\"é\"",
            // Lone UTF-16 surrogates: JSON's grammar and JSON.parse allow them.
            "\"a\\ud93A\"",
            "\"\\udc00x\"",
            "\"\\ud800\\u0041\"",
            "{}",
            "[]",
            "{\"a\":{\"b\":[1,{\"c\":null}]}}",
            " [ 1 , [ 2 ] , { } ] ",
        ] {
            assert_eq!(validate(good.as_bytes()), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn depth_is_bounded() {
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(validate(deep.as_bytes()), Err(JsonError::TooDeep));
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert_eq!(validate(ok.as_bytes()), Ok(()));
        let hostile = "[".repeat(1_000_000);
        assert!(validate(hostile.as_bytes()).is_err());
    }

    #[test]
    fn framing_round_trip() {
        let body = br#"[{"a":1}, "x,y", [1,2]]"#;
        let spans = split_messages(body, Purpose::Append).unwrap();
        let framed = frame(body, &spans);
        assert_eq!(framed, br#"{"a":1},"x,y",[1,2],"#);
        assert_eq!(render_array(&framed), br#"[{"a":1},"x,y",[1,2]]"#);
        assert_eq!(render_array(b""), b"[]");
        assert_eq!(message_ends(&framed), vec![8, 14, 20]);
        assert_eq!(prefix_len(&framed, 0), Some(0));
        assert_eq!(prefix_len(&framed, 2), Some(14));
        assert_eq!(prefix_len(&framed, 3), Some(20));
        assert_eq!(prefix_len(&framed, 4), None);
    }

    #[test]
    fn frame_messages_is_split_then_frame() {
        for (body, purpose) in [
            (&br#"[{"a":1}, "x,y", [1,2]]"#[..], Purpose::Append),
            (b" 42 ", Purpose::Append),
            (b"[]", Purpose::Create),
            (b"[]", Purpose::Append),
            (b"[1,]", Purpose::Append),
            (b"", Purpose::Create),
            (b"\"\xff\"", Purpose::Create),
        ] {
            let expected = split_messages(body, purpose).map(|spans| frame(body, &spans));
            assert_eq!(frame_messages(body, purpose), expected, "{body:?}");
        }
        // Many tiny messages: the framing is the body's size, reserved once.
        let body = String::from("[") + &"1,".repeat(99_999) + "1]";
        let framed = frame_messages(body.as_bytes(), Purpose::Append).unwrap();
        assert_eq!(framed.len(), 200_000);
        assert!(framed.capacity() <= body.len() + 1);
        assert_eq!(MessageEnds::new(&framed).count(), 100_000);
    }

    #[test]
    fn message_ends_ignore_escaped_quotes_and_nested_commas() {
        let framed = br#""a\",b",{"k":[1,2],"j":"}"},"#;
        assert_eq!(message_ends(framed), vec![8, framed.len()]);
    }

    proptest::proptest! {
        #[test]
        fn scanner_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let split = split_messages(&bytes, Purpose::Append);
            proptest::prop_assert_eq!(frame_messages(&bytes, Purpose::Append), split.map(|spans| frame(&bytes, &spans)));
            let _ = message_ends(&bytes);
        }

        #[test]
        fn scanner_never_panics_on_jsonish(s in "[\\[\\]{}\":,0-9a-z \\\\.eE+-]{0,64}") {
            let _ = split_messages(s.as_bytes(), Purpose::Create);
        }

        /// Any list of simple messages survives split → frame → render as the same list.
        #[test]
        fn frame_render_round_trip(items in proptest::collection::vec("[a-z0-9,\\[\\]\" ]{0,8}", 1..8)) {
            let values: Vec<String> = items.iter().map(|s| {
                let mut q = String::from("\"");
                q.push_str(&s.replace('"', "\\\""));
                q.push('"');
                q
            }).collect();
            let body = String::from("[") + &values.join(",") + "]";
            let spans = split_messages(body.as_bytes(), Purpose::Append).unwrap();
            proptest::prop_assert_eq!(spans.len(), values.len());
            let framed = frame(body.as_bytes(), &spans);
            proptest::prop_assert_eq!(message_ends(&framed).len(), values.len());
            proptest::prop_assert_eq!(render_array(&framed), body.into_bytes());
        }
    }
}

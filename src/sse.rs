//! Server-Sent Events: the encoder the server uses and the incremental decoder the client uses.
//!
//! Durable Streams sends two event types: `data` (a batch of the stream's bytes, UTF-8 or base64)
//! and `control` (a JSON object with the next offset, cursor, and up-to-date and closed flags).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::base64;
use crate::headers::SseEncoding;

/// Longest `data:` line the encoder writes for base64 payloads; long payloads wrap.
const BASE64_LINE: usize = 16 * 1024;

/// Appends an `event: data` event carrying `payload` to `out`.
///
/// UTF-8 mode splits the text at every CR, LF or CRLF into separate `data:` lines, so no line
/// ever holds a raw line break (which would let stream content forge events); a decoder joins
/// them back with LF. Invalid UTF-8 is replaced with U+FFFD. Base64 mode writes standard padded
/// base64, wrapped every 16 KiB.
pub fn encode_data(payload: &[u8], encoding: SseEncoding, out: &mut Vec<u8>) {
    out.extend_from_slice(b"event: data\n");
    match encoding {
        SseEncoding::Utf8 => {
            let text = String::from_utf8_lossy(payload);
            let bytes = text.as_bytes();
            let mut start = 0;
            let mut i = 0;
            while i < bytes.len() {
                match bytes[i] {
                    b'\r' | b'\n' => {
                        write_data_line(&bytes[start..i], out);
                        if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                            i += 1;
                        }
                        start = i + 1;
                    }
                    _ => {}
                }
                i += 1;
            }
            write_data_line(&bytes[start..], out);
        }
        SseEncoding::Base64 => {
            let mut text = Vec::new();
            base64::encode_into(payload, &mut text);
            if text.is_empty() {
                write_data_line(b"", out);
            }
            for line in text.chunks(BASE64_LINE) {
                write_data_line(line, out);
            }
        }
    }
    out.push(b'\n');
}

/// How many of the bytes just before a cut in a stream's data (`before`, its last few bytes
/// are enough) belong after it, so that no piece of text ends inside a UTF-8 character or
/// between a CR and the LF that may follow it.
///
/// The encoder reads each piece on its own, so a cut character would reach the reader as
/// U+FFFD and a cut CRLF as two line breaks, while offsets move past the bytes either way.
/// At most 3 bytes move. Bytes that are not UTF-8 cut where they are.
pub fn text_cut_back(before: &[u8]) -> usize {
    match utf8_cut_back(before) {
        0 => usize::from(before.last() == Some(&b'\r')),
        back => back,
    }
}

/// How many of the last bytes of `before` are the start of a UTF-8 character that they do not
/// finish (0 to 3).
fn utf8_cut_back(before: &[u8]) -> usize {
    let n = before.len();
    for back in 1..=n.min(3) {
        let width = match before[n - back] {
            0x80..=0xBF => continue,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => break,
        };
        return if width > back { back } else { 0 };
    }
    0
}

/// The pieces of a text stream as one SSE response sends them, one `data` event each, when the
/// pieces are cut where the stream's writers cut them (a live append each) rather than where
/// [`text_cut_back`] would.
///
/// Each event's text is decoded on its own, so a character that a writer split between two
/// appends would reach the reader as U+FFFD twice, and a CRLF split between them as two line
/// breaks, where a read of the same bytes in one piece gives the character and one line
/// break. A piece is therefore cut back as [`text_cut_back`] cuts pages: the bytes it moves
/// (at most 3) are held for the next piece, and the reader's offset stays before them
/// ([`TextPieces::held`]), so a reader that resumes from it reads them again whole.
#[derive(Clone, Debug, Default)]
pub struct TextPieces {
    /// The bytes the last piece held back.
    carry: Vec<u8>,
}

impl TextPieces {
    /// The bytes to send for the next `piece`: what was held before it and the piece, less
    /// what [`text_cut_back`] moves after the cut, unless `last` (the stream closed: no byte
    /// comes after it).
    pub fn next(&mut self, piece: &[u8], last: bool) -> Vec<u8> {
        let mut out = core::mem::take(&mut self.carry);
        out.extend_from_slice(piece);
        if !last {
            let back = text_cut_back(&out[out.len().saturating_sub(3)..]);
            self.carry = out.split_off(out.len() - back);
        }
        out
    }

    /// How many bytes before the end of the last piece were held back: the offset the reader
    /// has reached is that much before the piece's end.
    pub fn held(&self) -> usize {
        self.carry.len()
    }
}

/// Writes `data:<line>`. Decoders strip one space after the colon, so a line that itself starts
/// with a space gets one extra; other lines get none (clients match `data:{` literally).
fn write_data_line(line: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(if line.first() == Some(&b' ') {
        b"data: "
    } else {
        b"data:"
    });
    out.extend_from_slice(line);
    out.push(b'\n');
}

/// The contents of a `control` event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// Where the next read starts.
    pub next_offset: String,
    /// The cursor to echo on reconnection; omitted once the stream is closed.
    pub cursor: Option<String>,
    /// The reader has every byte that existed when the event was written.
    pub up_to_date: bool,
    /// The stream is closed and the reader is at its end: EOF.
    pub closed: bool,
}

impl Control {
    /// The JSON object, e.g. `{"streamNextOffset":"…","streamCursor":"7","upToDate":true}`.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(96);
        s.push_str("{\"streamNextOffset\":");
        write_json_string(&self.next_offset, &mut s);
        if let (Some(cursor), false) = (&self.cursor, self.closed) {
            s.push_str(",\"streamCursor\":");
            write_json_string(cursor, &mut s);
        }
        if self.up_to_date || self.closed {
            s.push_str(",\"upToDate\":true");
        }
        if self.closed {
            s.push_str(",\"streamClosed\":true");
        }
        s.push('}');
        s
    }

    /// Reads a control event's JSON. Unknown fields are ignored; `streamNextOffset` is required.
    pub fn parse(data: &str) -> Result<Control, ControlError> {
        let mut control = ControlReader::default();
        MiniJson::object(data, |key, r| {
            if !control.field(key, r)? {
                r.skip_value()?;
            }
            Ok(())
        })?;
        control.finish().ok_or(ControlError::MissingOffset)
    }
}

/// A control read field by field, from an object that may hold other fields too.
#[derive(Default)]
pub(crate) struct ControlReader {
    control: Control,
    has_offset: bool,
}

impl ControlReader {
    /// Reads the value of `key` if it is a control field; whether it was one.
    pub(crate) fn field(&mut self, key: &str, r: &mut MiniJson<'_>) -> Result<bool, ControlError> {
        let c = &mut self.control;
        match key {
            "streamNextOffset" => {
                c.next_offset = r.string()?;
                self.has_offset = true;
            }
            "streamCursor" => c.cursor = r.string_or_number()?,
            "upToDate" => c.up_to_date = r.boolean()?,
            "streamClosed" => c.closed = r.boolean()?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The control, if the object had its required `streamNextOffset`.
    pub(crate) fn finish(self) -> Option<Control> {
        self.has_offset.then_some(self.control)
    }
}

/// Why a control event could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// Not a JSON object of the expected shape.
    Syntax,
    /// No `streamNextOffset` field.
    MissingOffset,
}

impl ControlError {
    /// What went wrong, as the Display text (without `core::fmt`, for the wasm client).
    pub fn message(self) -> &'static str {
        match self {
            ControlError::Syntax => "control event is not a valid JSON object",
            ControlError::MissingOffset => "control event has no streamNextOffset",
        }
    }
}

impl core::fmt::Display for ControlError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.message())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ControlError {}

fn write_json_string(value: &str, out: &mut String) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends an `event: control` event to `out`.
pub fn encode_control(control: &Control, out: &mut Vec<u8>) {
    out.extend_from_slice(b"event: control\ndata:");
    out.extend_from_slice(control.to_json().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Just enough JSON to read a control object without pulling a JSON library into the client.
pub(crate) struct MiniJson<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> MiniJson<'a> {
    fn new(data: &'a str) -> MiniJson<'a> {
        MiniJson {
            s: data.as_bytes(),
            i: 0,
        }
    }
    /// Reads `data` as one JSON object, calling `field` with each key and the reader positioned
    /// at its value, which `field` must consume.
    pub(crate) fn object(
        data: &'a str,
        mut field: impl FnMut(&str, &mut MiniJson<'a>) -> Result<(), ControlError>,
    ) -> Result<(), ControlError> {
        let mut r = MiniJson::new(data);
        r.ws();
        r.eat(b'{')?;
        r.ws();
        if r.peek() == Some(b'}') {
            r.i += 1;
        } else {
            loop {
                r.ws();
                let key = r.string()?;
                r.ws();
                r.eat(b':')?;
                r.ws();
                field(&key, &mut r)?;
                r.ws();
                match r.peek() {
                    Some(b',') => r.i += 1,
                    Some(b'}') => {
                        r.i += 1;
                        break;
                    }
                    _ => return Err(ControlError::Syntax),
                }
            }
        }
        r.ws();
        if r.i != r.s.len() {
            return Err(ControlError::Syntax);
        }
        Ok(())
    }
    /// Skips a value and returns its text, as written.
    pub(crate) fn raw_value(&mut self) -> Result<&'a str, ControlError> {
        let start = self.i;
        self.skip_value()?;
        let raw = core::str::from_utf8(&self.s[start..self.i]).map_err(|_| ControlError::Syntax)?;
        Ok(raw.trim_end())
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> Result<(), ControlError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(ControlError::Syntax)
        }
    }
    pub(crate) fn string(&mut self) -> Result<String, ControlError> {
        self.eat(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let c = self.peek().ok_or(ControlError::Syntax)?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).map_err(|_| ControlError::Syntax),
                b'\\' => {
                    let e = self.peek().ok_or(ControlError::Syntax)?;
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.escaped_char()?,
                        _ => return Err(ControlError::Syntax),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                c if c < 0x20 => return Err(ControlError::Syntax),
                c => out.push(c),
            }
        }
    }
    /// The character of a `\uXXXX` escape (after the `u`), joining a surrogate pair as JSON
    /// means it; a lone surrogate becomes U+FFFD.
    fn escaped_char(&mut self) -> Result<char, ControlError> {
        let high = self.hex4()?;
        if (0xD800..0xDC00).contains(&high) && self.s.get(self.i..self.i + 2) == Some(b"\\u") {
            let at = self.i;
            self.i += 2;
            let low = self.hex4()?;
            if (0xDC00..0xE000).contains(&low) {
                let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                return Ok(char::from_u32(code).unwrap_or('\u{fffd}'));
            }
            // Not a pair: the second escape is read on its own.
            self.i = at;
        }
        Ok(char::from_u32(high).unwrap_or('\u{fffd}'))
    }
    /// Exactly four hex digits.
    fn hex4(&mut self) -> Result<u32, ControlError> {
        let digits = self.s.get(self.i..self.i + 4).ok_or(ControlError::Syntax)?;
        let mut code = 0;
        for &d in digits {
            let v = char::from(d).to_digit(16).ok_or(ControlError::Syntax)?;
            code = code * 16 + v;
        }
        self.i += 4;
        Ok(code)
    }
    pub(crate) fn string_or_number(&mut self) -> Result<Option<String>, ControlError> {
        match self.peek() {
            Some(b'"') => self.string().map(Some),
            Some(b'n') => self.word(b"null").map(|_| None),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                self.number()?;
                let text = core::str::from_utf8(&self.s[start..self.i])
                    .map_err(|_| ControlError::Syntax)?;
                Ok(Some(String::from(text)))
            }
            _ => Err(ControlError::Syntax),
        }
    }
    /// A JSON number: `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Result<(), ControlError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let int = self.digits();
        if int == 0 || (int > 1 && self.s[self.i - int] == b'0') {
            return Err(ControlError::Syntax);
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(ControlError::Syntax);
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(ControlError::Syntax);
            }
        }
        Ok(())
    }
    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }
    fn word(&mut self, w: &[u8]) -> Result<(), ControlError> {
        if self.s.get(self.i..self.i + w.len()) == Some(w) {
            self.i += w.len();
            Ok(())
        } else {
            Err(ControlError::Syntax)
        }
    }
    fn boolean(&mut self) -> Result<bool, ControlError> {
        match self.peek() {
            Some(b't') => self.word(b"true").map(|_| true),
            Some(b'f') => self.word(b"false").map(|_| false),
            Some(b'n') => self.word(b"null").map(|_| false),
            _ => Err(ControlError::Syntax),
        }
    }
    /// Skips any value by following its strings and nesting, without checking the grammar of
    /// what it skips: those are fields the reader does not use, and the core's strict JSON
    /// scanner would add 0.5 KB (gzip) to the client's wasm for them.
    pub(crate) fn skip_value(&mut self) -> Result<(), ControlError> {
        let rest = &self.s[self.i..];
        // Find the shortest prefix that is one valid value by scanning with depth tracking.
        let mut depth = 0usize;
        let mut in_str = false;
        let mut esc = false;
        for (k, &c) in rest.iter().enumerate() {
            if in_str {
                if esc {
                    esc = false;
                } else if c == b'\\' {
                    esc = true;
                } else if c == b'"' {
                    in_str = false;
                    if depth == 0 {
                        self.i += k + 1;
                        return Ok(());
                    }
                }
                continue;
            }
            match c {
                b'"' => in_str = true,
                b'[' | b'{' => depth += 1,
                b']' | b'}' if depth > 0 => {
                    depth -= 1;
                    if depth == 0 {
                        self.i += k + 1;
                        return Ok(());
                    }
                }
                b',' | b'}' | b']' if depth == 0 => {
                    if k == 0 {
                        return Err(ControlError::Syntax);
                    }
                    self.i += k;
                    return Ok(());
                }
                _ => {}
            }
        }
        Err(ControlError::Syntax)
    }
}

/// One event, as the SSE format defines it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `message` when absent.
    pub event: String,
    /// The `data:` lines joined with LF.
    pub data: String,
    /// The last `id:` seen in the stream so far, if any.
    pub id: Option<String>,
}

/// An incremental SSE parser following the WHATWG event-stream rules: input may be split
/// anywhere (even inside a CRLF or a UTF-8 sequence) and events come out as they complete.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// A CR ended the last line; an LF right after it belongs to the same line break.
    after_cr: bool,
    /// The byte-order mark check is still pending at the start of the stream.
    started: bool,
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    /// The reconnection time a `retry:` field asked for, in milliseconds.
    pub retry_ms: Option<u32>,
    ready: alloc::collections::VecDeque<SseEvent>,
}

impl SseDecoder {
    /// A decoder that has read nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; completed events become available through [`SseDecoder::next_event`].
    pub fn push(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if !self.started {
                self.line.push(b);
                if self.line.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.line) {
                    continue;
                }
                self.started = true;
                let pending = core::mem::take(&mut self.line);
                let rest = pending.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&pending);
                for &c in rest {
                    self.byte(c);
                }
                continue;
            }
            self.byte(b);
        }
    }

    fn byte(&mut self, b: u8) {
        match b {
            b'\n' if self.after_cr => self.after_cr = false,
            b'\n' => self.end_line(),
            b'\r' => {
                self.end_line();
                self.after_cr = true;
            }
            _ => {
                self.after_cr = false;
                self.line.push(b);
            }
        }
    }

    /// The next completed event, if any.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    fn end_line(&mut self) {
        let line = core::mem::take(&mut self.line);
        let line = String::from_utf8_lossy(&line);
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (&*line, ""),
        };
        match field {
            "event" => self.event = String::from(value),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(String::from(value)),
            "retry" if !value.is_empty() && value.bytes().all(|c| c.is_ascii_digit()) => {
                // All digits, so only a value past u32 fails to parse: it means "longest".
                self.retry_ms = Some(value.parse().unwrap_or(u32::MAX));
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        let event = core::mem::take(&mut self.event);
        if !self.has_data {
            return;
        }
        self.has_data = false;
        let data = core::mem::take(&mut self.data);
        self.ready.push_back(SseEvent {
            event: if event.is_empty() {
                String::from("message")
            } else {
                event
            },
            data,
            id: self.last_id.clone(),
        });
    }
}

/// The bytes of a `data` event, decoding base64 when the response said so.
pub fn decode_data(data: &str, encoding: SseEncoding) -> Result<Vec<u8>, base64::Base64Error> {
    match encoding {
        SseEncoding::Utf8 => Ok(data.as_bytes().to_vec()),
        SseEncoding::Base64 => base64::decode(data.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_cuts_move_back_to_a_whole_character() {
        let euro = "€".as_bytes(); // E2 82 AC
        assert_eq!(text_cut_back(b""), 0);
        assert_eq!(text_cut_back(b"abc"), 0);
        assert_eq!(text_cut_back(euro), 0);
        assert_eq!(text_cut_back(&euro[..1]), 1);
        assert_eq!(text_cut_back(&euro[..2]), 2);
        assert_eq!(text_cut_back(b"a\xE2\x82"), 2);
        let emoji = "😀".as_bytes(); // F0 9F 98 80
        assert_eq!(text_cut_back(emoji), 0);
        assert_eq!(text_cut_back(&emoji[..3]), 3);
        assert_eq!(
            text_cut_back(&emoji[1..]),
            0,
            "a character begun before the window"
        );
        assert_eq!(text_cut_back(&emoji[..1]), 1);
        assert_eq!(text_cut_back("é".as_bytes()), 0);
        assert_eq!(text_cut_back(&"é".as_bytes()[..1]), 1);
        // A CR stays with what follows it; an incomplete character after a CR moves alone.
        assert_eq!(text_cut_back(b"a\r"), 1);
        assert_eq!(text_cut_back(b"\r\n"), 0);
        assert_eq!(text_cut_back(b"\r\xE2"), 1);
        // Bytes that are not UTF-8 cut where they are.
        assert_eq!(text_cut_back(b"\x80\x80\x80\x80"), 0);
        assert_eq!(text_cut_back(b"a\xFF"), 0);
    }

    /// The text of `data` events, each event's lines joined as a decoder joins them.
    fn joined_data(events: &[u8]) -> String {
        let mut out = String::new();
        for block in core::str::from_utf8(events).unwrap().split("\n\n") {
            let lines: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .collect();
            out.push_str(&lines.join("\n"));
        }
        out
    }

    #[test]
    fn pieces_cut_where_text_cut_back_says_encode_to_the_whole_text() {
        let text = "a€b\r\nc😀d\re\u{7FF}".repeat(7);
        let bytes = text.as_bytes();
        let mut expected = Vec::new();
        encode_data(bytes, SseEncoding::Utf8, &mut expected);
        // Any piece of 4 bytes or more has room for a whole character.
        for size in 4..=12 {
            let mut events = Vec::new();
            let mut at = 0;
            while at < bytes.len() {
                let mut cut = (at + size).min(bytes.len());
                if cut < bytes.len() {
                    let back = text_cut_back(&bytes[cut.saturating_sub(4).max(at)..cut]);
                    if back < cut - at {
                        cut -= back;
                    }
                }
                encode_data(&bytes[at..cut], SseEncoding::Utf8, &mut events);
                at = cut;
            }
            assert_eq!(
                joined_data(&events),
                joined_data(&expected),
                "pieces of {size}"
            );
            assert!(!joined_data(&events).contains('\u{FFFD}'));
        }
    }

    #[test]
    fn pieces_cut_anywhere_send_the_whole_text() {
        let text = "a€b\r\nc😀d\re\u{7FF}\r\r\n\n".repeat(5);
        let bytes = text.as_bytes();
        let mut expected = Vec::new();
        encode_data(bytes, SseEncoding::Utf8, &mut expected);
        // Every cut a writer could make, with pieces of 1 to 6 bytes.
        for size in 1..=6 {
            let mut pieces = TextPieces::default();
            let mut events = Vec::new();
            let mut at = 0;
            while at < bytes.len() {
                let end = (at + size).min(bytes.len());
                let out = pieces.next(&bytes[at..end], false);
                assert!(pieces.held() <= 3);
                if !out.is_empty() {
                    encode_data(&out, SseEncoding::Utf8, &mut events);
                }
                at = end;
            }
            encode_data(&pieces.next(b"", true), SseEncoding::Utf8, &mut events);
            assert_eq!(
                joined_data(&events),
                joined_data(&expected),
                "pieces of {size}"
            );
            assert!(!joined_data(&events).contains('\u{FFFD}'));
        }
        // What a stream ends with is sent when it closes, whole or not.
        let mut pieces = TextPieces::default();
        assert_eq!(pieces.next(b"a\xF0\x9F", false), b"a");
        assert_eq!(pieces.held(), 2);
        assert_eq!(pieces.next(b"", false), b"");
        assert_eq!(pieces.next(b"", true), b"\xF0\x9F");
        assert_eq!(pieces.held(), 0);
    }

    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn decode_all(bytes: &[u8], cuts: &[usize]) -> Vec<SseEvent> {
        let mut d = SseDecoder::new();
        let mut last = 0;
        let mut events = Vec::new();
        for &c in cuts {
            let c = c.min(bytes.len()).max(last);
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
        events
    }

    #[test]
    fn utf8_data_splits_lines() {
        let mut out = Vec::new();
        encode_data(b"a\nb\r\nc\rd", SseEncoding::Utf8, &mut out);
        assert_eq!(out, b"event: data\ndata:a\ndata:b\ndata:c\ndata:d\n\n");
        let events = decode_all(&out, &[]);
        assert_eq!(events[0].event, "data");
        assert_eq!(events[0].data, "a\nb\nc\nd");
    }

    #[test]
    fn forged_events_stay_data() {
        let mut out = Vec::new();
        encode_data(
            b"x\n\nevent: control\ndata: {}\n\n",
            SseEncoding::Utf8,
            &mut out,
        );
        let events = decode_all(&out, &[]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, "data");
        assert_eq!(events[0].data, "x\n\nevent: control\ndata: {}\n\n");
    }

    #[test]
    fn base64_data() {
        let mut out = Vec::new();
        encode_data(
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            SseEncoding::Base64,
            &mut out,
        );
        assert_eq!(out, b"event: data\ndata:AQIDBAUGBwgJCg==\n\n");
        let mut out = Vec::new();
        encode_data(&[], SseEncoding::Base64, &mut out);
        assert_eq!(out, b"event: data\ndata:\n\n");
        let events = decode_all(&out, &[]);
        assert_eq!(
            decode_data(&events[0].data, SseEncoding::Base64).unwrap(),
            b""
        );
    }

    #[test]
    fn long_base64_wraps_and_decodes() {
        let payload: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        encode_data(&payload, SseEncoding::Base64, &mut out);
        assert!(out
            .split(|&b| b == b'\n')
            .all(|l| l.len() <= BASE64_LINE + 5));
        let events = decode_all(&out, &[7, 100, 20_000]);
        assert_eq!(
            decode_data(&events[0].data, SseEncoding::Base64).unwrap(),
            payload
        );
    }

    #[test]
    fn control_json() {
        let c = Control {
            next_offset: "0000000000000000_0000000000000005".into(),
            cursor: Some("123".into()),
            up_to_date: true,
            closed: false,
        };
        assert_eq!(
            c.to_json(),
            r#"{"streamNextOffset":"0000000000000000_0000000000000005","streamCursor":"123","upToDate":true}"#
        );
        assert_eq!(Control::parse(&c.to_json()), Ok(c.clone()));
        let closed = Control { closed: true, ..c };
        assert_eq!(
            closed.to_json(),
            r#"{"streamNextOffset":"0000000000000000_0000000000000005","upToDate":true,"streamClosed":true}"#
        );
        let mut out = Vec::new();
        encode_control(&closed, &mut out);
        assert!(out.starts_with(b"event: control\ndata:{"));
        assert!(out.ends_with(b"}\n\n"));
    }

    #[test]
    fn control_parse_tolerates_unknown_fields_and_numeric_cursor() {
        let c = Control::parse(r#" {"x":[1,{"y":"}"}],"streamNextOffset":"a\"b","streamCursor":42,"upToDate":false,"z":null} "#)
            .unwrap();
        assert_eq!(c.next_offset, "a\"b");
        assert_eq!(c.cursor.as_deref(), Some("42"));
        assert!(!c.up_to_date);
        assert_eq!(Control::parse("{}"), Err(ControlError::MissingOffset));
        assert_eq!(
            Control::parse("{\"streamNextOffset\":"),
            Err(ControlError::Syntax)
        );
        assert_eq!(Control::parse("[]"), Err(ControlError::Syntax));
    }

    #[test]
    fn control_parse_reads_json_strictly() {
        // An escaped surrogate pair is one character, as JSON means it; a lone one is U+FFFD.
        let c = Control::parse(r#"{"streamNextOffset":"\ud83d\ude00 \ud83d\u0041"}"#).unwrap();
        assert_eq!(c.next_offset, "\u{1F600} \u{FFFD}A");
        for bad in [
            "{\"streamNextOffset\":\"\\u+041\"}",
            "{\"streamNextOffset\":\"\\u00g1\"}",
            "{\"streamNextOffset\":\"a\tb\"}",
            r#"{"streamNextOffset":"a","streamCursor":1-2+e}"#,
            r#"{"streamNextOffset":"a","streamCursor":01}"#,
            r#"{"streamNextOffset":"a","streamCursor":-}"#,
            r#"{"streamNextOffset":"a","streamCursor":1.}"#,
            r#"{"streamNextOffset":"a","x":}"#,
        ] {
            assert_eq!(Control::parse(bad), Err(ControlError::Syntax), "{bad}");
        }
        let c = Control::parse(
            r#"{"streamNextOffset":"a","streamCursor":-1.5e3,"x":{"y":[true,null]}}"#,
        )
        .unwrap();
        assert_eq!(c.cursor.as_deref(), Some("-1.5e3"));
    }

    #[test]
    fn decoder_follows_the_whatwg_rules() {
        let text = "\u{feff}: comment\r\nevent:control\rdata: one\r\ndata:two\nid: 7\nretry: 1500\n\ndata\n\nevent: lonely\n\n";
        let events = decode_all(text.as_bytes(), &[1, 2, 3, 14, 15]);
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0],
            SseEvent {
                event: "control".into(),
                data: "one\ntwo".into(),
                id: Some("7".into())
            }
        );
        assert_eq!(
            events[1],
            SseEvent {
                event: "message".into(),
                data: "".into(),
                id: Some("7".into())
            }
        );
    }

    #[test]
    fn decoder_reports_retry() {
        let mut d = SseDecoder::new();
        d.push(b"retry: 250\n\n");
        assert_eq!(d.retry_ms, Some(250));
        // Digits past u32 still set it (to the longest), and anything else leaves it.
        d.push(b"retry: 4294967296\n");
        assert_eq!(d.retry_ms, Some(u32::MAX));
        d.push(b"retry: 10\nretry: 1e3\nretry: -1\nretry:\n");
        assert_eq!(d.retry_ms, Some(10));
    }

    #[test]
    fn crlf_split_across_chunks_is_one_break() {
        let events = decode_all(b"data:a\r\ndata:b\r\n\r\n", &[7, 15, 16, 17]);
        assert_eq!(
            events,
            vec![SseEvent {
                event: "message".into(),
                data: "a\nb".into(),
                id: None
            }]
        );
    }

    proptest::proptest! {
        #[test]
        fn base64_round_trips_under_any_chunking(
            payloads in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 1..5),
            cuts in proptest::collection::vec(0usize..2000, 0..8),
        ) {
            let mut out = Vec::new();
            for p in &payloads {
                encode_data(p, SseEncoding::Base64, &mut out);
                encode_control(&Control { next_offset: "o".to_string(), ..Control::default() }, &mut out);
            }
            let mut cuts = cuts;
            cuts.sort_unstable();
            let events = decode_all(&out, &cuts);
            let data: Vec<Vec<u8>> = events.iter().filter(|e| e.event == "data")
                .map(|e| decode_data(&e.data, SseEncoding::Base64).unwrap()).collect();
            proptest::prop_assert_eq!(data, payloads);
        }

        #[test]
        fn utf8_round_trips_without_cr(
            text in "[^\r]{0,200}",
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let mut out = Vec::new();
            encode_data(text.as_bytes(), SseEncoding::Utf8, &mut out);
            let mut cuts = cuts;
            cuts.sort_unstable();
            let events = decode_all(&out, &cuts);
            proptest::prop_assert_eq!(events.len(), 1);
            proptest::prop_assert_eq!(&events[0].data, &text);
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512), cut in 0usize..512) {
            let _ = decode_all(&bytes, &[cut]);
        }

        #[test]
        fn control_parse_never_panics(s in ".{0,100}") {
            let _ = Control::parse(&s);
        }
    }
}

//! Stream paths: which URLs name a stream, and the canonical name a Durable Object is keyed by.
//!
//! A stream lives at `/v1/stream/<name>`, where `<name>` may contain `/`. Names are decoded
//! once, and refused when decoding could make two URLs name one stream or escape the prefix:
//! encoded slashes, `.` and `..` segments, empty segments, control characters, bad UTF-8.

/// The URL prefix of every stream.
pub const STREAM_PREFIX: &str = "/v1/stream/";
/// Longest stream name, in bytes after decoding.
pub const MAX_NAME_LEN: usize = 1024;
/// The first name segment reserved for the protocol's control APIs.
pub const RESERVED_SEGMENT: &str = "__ds";

/// Why a path does not name a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not under `/v1/stream/`.
    NotAStream,
    Empty,
    TooLong,
    /// A `%` escape that is malformed or decodes to something forbidden.
    BadEscape,
    EncodedSlash,
    DotSegment,
    EmptySegment,
    ControlCharacter,
    Backslash,
    NotUtf8,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            PathError::NotAStream => "not found",
            PathError::Empty => "stream name is empty",
            PathError::TooLong => "stream name is too long",
            PathError::BadEscape => "stream name has a malformed %-escape",
            PathError::EncodedSlash => "stream name must not contain an encoded slash",
            PathError::DotSegment => "stream name must not contain . or .. segments",
            PathError::EmptySegment => "stream name must not contain empty segments",
            PathError::ControlCharacter => "stream name must not contain control characters",
            PathError::Backslash => "stream name must not contain a backslash",
            PathError::NotUtf8 => "stream name is not valid UTF-8",
        }
    }

    /// 404 for URLs outside the stream prefix, 400 for malformed names.
    pub fn status(self) -> u16 {
        match self {
            PathError::NotAStream => 404,
            _ => 400,
        }
    }
}

/// A validated stream name (without the prefix), decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamName(String);

impl StreamName {
    /// Parses the raw (still percent-encoded) URL path.
    pub fn from_url_path(raw: &str) -> Result<StreamName, PathError> {
        let encoded = raw
            .strip_prefix(STREAM_PREFIX)
            .ok_or(PathError::NotAStream)?;
        StreamName::from_encoded(encoded)
    }

    /// Parses a full stream path as the `Stream-Forked-From` header carries it, which may be
    /// sent decoded or encoded.
    pub fn from_header_path(value: &str) -> Result<StreamName, PathError> {
        StreamName::from_url_path(value.trim())
    }

    /// Parses a full path as this Worker stores it ([`StreamName::full_path`]: the prefix and
    /// the decoded name), for forks' records of their sources and ancestors. It is not decoded
    /// again: `/v1/stream/pct%41` names the stream `pct%41`, never `pctA`.
    pub fn from_full_path(path: &str) -> Result<StreamName, PathError> {
        let name = path
            .strip_prefix(STREAM_PREFIX)
            .ok_or(PathError::NotAStream)?;
        StreamName::from_name(name.to_string())
    }

    fn from_encoded(encoded: &str) -> Result<StreamName, PathError> {
        if encoded.is_empty() {
            return Err(PathError::Empty);
        }
        if encoded.len() > MAX_NAME_LEN * 3 {
            return Err(PathError::TooLong);
        }
        let bytes = encoded.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'%' {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let hi = (hex[0] as char).to_digit(16).ok_or(PathError::BadEscape)?;
                let lo = (hex[1] as char).to_digit(16).ok_or(PathError::BadEscape)?;
                let v = (hi * 16 + lo) as u8;
                if v == b'/' || v == b'\\' {
                    return Err(PathError::EncodedSlash);
                }
                out.push(v);
                i += 3;
            } else {
                out.push(b);
                i += 1;
            }
        }
        StreamName::from_name(String::from_utf8(out).map_err(|_| PathError::NotUtf8)?)
    }

    /// Checks a name that is already decoded, as subscriptions hold them (`wake_stream`).
    pub fn from_name(name: String) -> Result<StreamName, PathError> {
        if name.is_empty() {
            return Err(PathError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(PathError::TooLong);
        }
        if name.chars().any(char::is_control) {
            return Err(PathError::ControlCharacter);
        }
        // A URL cannot carry one: the parser reads `\` as `/`, and `%5C` is refused above.
        if name.contains('\\') {
            return Err(PathError::Backslash);
        }
        for segment in name.split('/') {
            match segment {
                "" => return Err(PathError::EmptySegment),
                "." | ".." => return Err(PathError::DotSegment),
                _ => {}
            }
        }
        Ok(StreamName(name))
    }

    /// The decoded name, e.g. `rooms/lobby`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The full path, e.g. `/v1/stream/rooms/lobby`, as forks and subscriptions refer to it.
    pub fn full_path(&self) -> String {
        format!("{STREAM_PREFIX}{}", self.0)
    }

    /// Whether the name starts with the reserved `__ds` segment.
    pub fn is_reserved(&self) -> bool {
        self.0.split('/').next() == Some(RESERVED_SEGMENT)
    }

    /// The percent-encoded form for URLs: every byte outside the unreserved set and `/`.
    pub fn url_encoded(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        for &b in self.0.as_bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_nested_names() {
        let n = StreamName::from_url_path("/v1/stream/rooms/lobby").unwrap();
        assert_eq!(n.as_str(), "rooms/lobby");
        assert_eq!(n.full_path(), "/v1/stream/rooms/lobby");
        assert!(!n.is_reserved());
        assert_eq!(
            StreamName::from_url_path("/v1/stream/a%20b")
                .unwrap()
                .as_str(),
            "a b"
        );
        assert_eq!(
            StreamName::from_url_path("/v1/stream/caf%C3%A9")
                .unwrap()
                .as_str(),
            "café"
        );
    }

    #[test]
    fn decoded_names_are_taken_literally() {
        let n = StreamName::from_name("a%2Fb/c%41".into()).unwrap();
        assert_eq!(n.as_str(), "a%2Fb/c%41");
        assert_eq!(n.url_encoded(), "a%252Fb/c%2541");
        let err = |p: &str| StreamName::from_name(p.into()).unwrap_err();
        assert_eq!(err(""), PathError::Empty);
        assert_eq!(err("a//b"), PathError::EmptySegment);
        assert_eq!(err("a/../b"), PathError::DotSegment);
        assert_eq!(err("a\u{0}b"), PathError::ControlCharacter);
        assert_eq!(err(&"x".repeat(MAX_NAME_LEN + 1)), PathError::TooLong);
        assert_eq!(err("a\\b"), PathError::Backslash);
    }

    #[test]
    fn refuses_escapes_and_traversal() {
        let err = |p: &str| StreamName::from_url_path(p).unwrap_err();
        assert_eq!(err("/v2/stream/x"), PathError::NotAStream);
        assert_eq!(err("/v1/stream/"), PathError::Empty);
        assert_eq!(err("/v1/stream/a%2Fb"), PathError::EncodedSlash);
        assert_eq!(err("/v1/stream/a%2fb"), PathError::EncodedSlash);
        assert_eq!(err("/v1/stream/a%5Cb"), PathError::EncodedSlash);
        assert_eq!(err("/v1/stream/a/../b"), PathError::DotSegment);
        assert_eq!(err("/v1/stream/a/%2E%2E/b"), PathError::DotSegment);
        assert_eq!(err("/v1/stream/./a"), PathError::DotSegment);
        assert_eq!(err("/v1/stream/a//b"), PathError::EmptySegment);
        assert_eq!(err("/v1/stream/a/"), PathError::EmptySegment);
        assert_eq!(err("/v1/stream/a%00"), PathError::ControlCharacter);
        assert_eq!(err("/v1/stream/a%0A"), PathError::ControlCharacter);
        assert_eq!(err("/v1/stream/a%ZZ"), PathError::BadEscape);
        assert_eq!(err("/v1/stream/a%4"), PathError::BadEscape);
        assert_eq!(err("/v1/stream/%FF"), PathError::NotUtf8);
        assert_eq!(
            err(&format!("/v1/stream/{}", "a".repeat(MAX_NAME_LEN + 1))),
            PathError::TooLong
        );
        assert!(
            StreamName::from_url_path(&format!("/v1/stream/{}", "a".repeat(MAX_NAME_LEN))).is_ok()
        );
    }

    #[test]
    fn reserved_prefix() {
        assert!(StreamName::from_url_path("/v1/stream/__ds/subscriptions/x")
            .unwrap()
            .is_reserved());
        assert!(!StreamName::from_url_path("/v1/stream/__dsx")
            .unwrap()
            .is_reserved());
    }

    #[test]
    fn stored_paths_are_not_decoded_again() {
        for raw in ["/v1/stream/x%2541", "/v1/stream/100%25", "/v1/stream/a%20b"] {
            let name = StreamName::from_url_path(raw).unwrap();
            assert_eq!(StreamName::from_full_path(&name.full_path()), Ok(name));
        }
        assert_eq!(
            StreamName::from_full_path("/v1/stream/pct%41")
                .unwrap()
                .as_str(),
            "pct%41"
        );
        assert_eq!(
            StreamName::from_full_path("/v2/stream/x"),
            Err(PathError::NotAStream)
        );
    }

    #[test]
    fn url_encoding_round_trips() {
        for raw in ["a b/c", "café/ü", "x%y", "plain-name_1.0~"] {
            let n = StreamName(raw.to_string());
            let again =
                StreamName::from_url_path(&format!("{STREAM_PREFIX}{}", n.url_encoded())).unwrap();
            assert_eq!(again, n);
        }
    }
}

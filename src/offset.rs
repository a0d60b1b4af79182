//! Stream offsets: the server's own position type and strict parsing of the offsets clients send.
//!
//! An [`Offset`] is a position in a stream's logical byte log. On the wire it is
//! `0000000000000000_<position as 16 digits>`: fixed width, so byte-wise comparison of two offsets
//! is the same as comparing positions, which is what the protocol promises clients. The first field
//! is reserved (always zero in this version) so a later version can number log segments without
//! breaking the ordering of offsets already handed out.

use core::fmt;
use core::str::FromStr;

/// Number of decimal digits in each field of the wire form.
const FIELD_DIGITS: usize = 16;
/// Length of the wire form: two fields and the `_` between them.
pub const OFFSET_LEN: usize = FIELD_DIGITS * 2 + 1;
/// Longest offset token a client may send; longer ones are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 255;

/// A position in a stream's log, as the server issues it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(u64);

impl Offset {
    /// The start of every stream.
    pub const ZERO: Offset = Offset(0);
    /// The largest position that fits the 16-digit wire field.
    pub const MAX: Offset = Offset(9_999_999_999_999_999);

    /// The offset at `position` bytes into the log, if it fits the wire format.
    pub const fn new(position: u64) -> Option<Offset> {
        if position <= Self::MAX.0 {
            Some(Offset(position))
        } else {
            None
        }
    }

    /// The position in the log, in bytes.
    pub const fn position(self) -> u64 {
        self.0
    }

    /// The offset `bytes` further on, or `None` if that would not fit the wire format.
    pub fn checked_add(self, bytes: u64) -> Option<Offset> {
        self.0.checked_add(bytes).and_then(Offset::new)
    }

    /// Bytes from `earlier` to `self` (zero if `earlier` is not earlier).
    pub fn distance_from(self, earlier: Offset) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Parses the exact wire form the server issues.
    pub fn parse(token: &str) -> Result<Offset, OffsetError> {
        check_token(token)?;
        let bytes = token.as_bytes();
        if bytes.len() != OFFSET_LEN || bytes[FIELD_DIGITS] != b'_' {
            return Err(OffsetError::Unrecognised);
        }
        let segment = parse_digits(&bytes[..FIELD_DIGITS]).ok_or(OffsetError::Unrecognised)?;
        if segment != 0 {
            return Err(OffsetError::Unrecognised);
        }
        let position = parse_digits(&bytes[FIELD_DIGITS + 1..]).ok_or(OffsetError::Unrecognised)?;
        Ok(Offset(position))
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0000000000000000_{:016}", self.0)
    }
}

impl FromStr for Offset {
    type Err = OffsetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Offset::parse(s)
    }
}

fn parse_digits(digits: &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(value)
}

/// Where a read starts, as the client asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// `offset=-1` or no offset: the beginning of the stream.
    Start,
    /// `offset=now`: the tail at the time of the request.
    Now,
    /// An offset the server issued earlier.
    At(Offset),
}

impl ReadFrom {
    /// Parses every value of the `offset` query parameter (none, one, or a forbidden repeat).
    pub fn from_query<'a, I>(values: I) -> Result<ReadFrom, OffsetError>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut values = values.into_iter();
        let Some(first) = values.next() else {
            return Ok(ReadFrom::Start);
        };
        if values.next().is_some() {
            return Err(OffsetError::Repeated);
        }
        ReadFrom::parse(first)
    }

    /// Parses one offset token: a sentinel or an issued offset.
    pub fn parse(token: &str) -> Result<ReadFrom, OffsetError> {
        match token {
            "-1" => Ok(ReadFrom::Start),
            "now" => Ok(ReadFrom::Now),
            _ => Offset::parse(token).map(ReadFrom::At),
        }
    }

    /// True when this read names a starting point the client had to be given (not a sentinel).
    pub fn is_explicit(self) -> bool {
        matches!(self, ReadFrom::At(_))
    }
}

/// Checks the characters of an offset token before its shape; the protocol forbids these outright.
fn check_token(token: &str) -> Result<(), OffsetError> {
    if token.is_empty() {
        return Err(OffsetError::Empty);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(OffsetError::TooLong);
    }
    if token.as_bytes().windows(2).any(|w| w == b"..") {
        return Err(OffsetError::IllegalCharacter);
    }
    for c in token.chars() {
        if matches!(c, ',' | '&' | '=' | '?' | '/' | ' ') || c.is_control() {
            return Err(OffsetError::IllegalCharacter);
        }
    }
    Ok(())
}

/// Why an offset was refused. Every variant is a client error (400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetError {
    /// `offset=` with no value.
    Empty,
    /// More than one `offset` parameter.
    Repeated,
    /// A character the protocol forbids in offsets.
    IllegalCharacter,
    /// Longer than any offset this server issues.
    TooLong,
    /// Well-formed, but not an offset this server issues.
    Unrecognised,
}

impl OffsetError {
    /// A short text for the error body.
    pub fn message(self) -> &'static str {
        match self {
            OffsetError::Empty => "offset must not be empty",
            OffsetError::Repeated => "offset must be given at most once",
            OffsetError::IllegalCharacter => "offset contains a character that is not allowed",
            OffsetError::TooLong => "offset is too long",
            OffsetError::Unrecognised => "offset was not issued by this server",
        }
    }
}

impl fmt::Display for OffsetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for OffsetError {}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn zero_prints_as_the_reference_literal() {
        assert_eq!(
            Offset::ZERO.to_string(),
            "0000000000000000_0000000000000000"
        );
    }

    #[test]
    fn display_and_parse_round_trip() {
        for p in [0u64, 1, 42, 1 << 40, Offset::MAX.position()] {
            let o = Offset::new(p).unwrap();
            assert_eq!(Offset::parse(&o.to_string()), Ok(o));
        }
    }

    #[test]
    fn wire_order_is_position_order() {
        let a = Offset::new(9).unwrap().to_string();
        let b = Offset::new(10).unwrap().to_string();
        assert!(a < b);
    }

    #[test]
    fn new_and_add_refuse_overflow() {
        assert_eq!(Offset::new(Offset::MAX.position() + 1), None);
        assert_eq!(Offset::MAX.checked_add(1), None);
        assert_eq!(Offset::ZERO.checked_add(u64::MAX), None);
        assert_eq!(Offset::ZERO.checked_add(5), Offset::new(5));
    }

    #[test]
    fn sentinels() {
        assert_eq!(ReadFrom::parse("-1"), Ok(ReadFrom::Start));
        assert_eq!(ReadFrom::parse("now"), Ok(ReadFrom::Now));
        assert_eq!(ReadFrom::from_query([]), Ok(ReadFrom::Start));
        assert_eq!(ReadFrom::from_query(["now"]), Ok(ReadFrom::Now));
        assert!(!ReadFrom::Now.is_explicit());
    }

    #[test]
    fn rejects_the_protocols_bad_offsets() {
        assert_eq!(ReadFrom::from_query([""]), Err(OffsetError::Empty));
        assert_eq!(ReadFrom::from_query(["a", "b"]), Err(OffsetError::Repeated));
        for bad in [
            "0,1", "0 1", "../x", "x/..", "a/b", "a\0", "a\n", "a\r\n", "a=b", "a&b", "a?b",
        ] {
            assert_eq!(
                ReadFrom::parse(bad),
                Err(OffsetError::IllegalCharacter),
                "{bad:?}"
            );
        }
        assert_eq!(ReadFrom::parse(&"9".repeat(300)), Err(OffsetError::TooLong));
    }

    #[test]
    fn rejects_tokens_of_other_shapes() {
        for bad in [
            "0",
            "-2",
            "NOW",
            "0000000000000000_000000000000000",
            "0000000000000000-0000000000000000",
            "0000000000000001_0000000000000000",
            "000000000000000a_0000000000000000",
            "0000000000000000_+000000000000000",
            "0000000000000000_00000000000000000",
        ] {
            assert_eq!(
                Offset::parse(bad),
                Err(OffsetError::Unrecognised),
                "{bad:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = ReadFrom::parse(&s);
        }

        #[test]
        fn any_position_round_trips(p in 0u64..=Offset::MAX.position()) {
            let o = Offset::new(p).unwrap();
            proptest::prop_assert_eq!(Offset::parse(&o.to_string()), Ok(o));
        }

        #[test]
        fn order_is_preserved(a in 0u64..=Offset::MAX.position(), b in 0u64..=Offset::MAX.position()) {
            let (oa, ob) = (Offset::new(a).unwrap(), Offset::new(b).unwrap());
            proptest::prop_assert_eq!(oa.cmp(&ob), oa.to_string().cmp(&ob.to_string()));
        }
    }
}

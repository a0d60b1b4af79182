//! Offsets as a client sees them: opaque tokens, compared and echoed, never interpreted.
//!
//! The core's [`ReadFrom`] checks what the protocol forbids in any offset (empty, `,&=?/`,
//! spaces, `..`, control characters, over 255 bytes). A well-formed token in another server's
//! format is `Unrecognised` by the core but still a valid offset for that server, so the client
//! accepts it and lets the server decide.

use alloc::string::String;
use edgestream::offset::OffsetError;
use edgestream::ReadFrom;

/// Where a reader starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// `-1` (or no offset): the beginning.
    Beginning,
    /// `now`: the tail, skipping history.
    Now,
    /// An offset a server issued.
    At(String),
}

impl Start {
    /// Checks a caller's offset before it goes into a URL.
    pub fn parse(token: Option<&str>) -> Result<Start, OffsetError> {
        let Some(token) = token else {
            return Ok(Start::Beginning);
        };
        match ReadFrom::parse(token) {
            Ok(ReadFrom::Start) => Ok(Start::Beginning),
            Ok(ReadFrom::Now) => Ok(Start::Now),
            Ok(ReadFrom::At(_)) | Err(OffsetError::Unrecognised) => Ok(Start::At(token.into())),
            Err(e) => Err(e),
        }
    }

    /// The value of the `offset` query parameter.
    pub fn as_param(&self) -> &str {
        match self {
            Start::Beginning => "-1",
            Start::Now => "now",
            Start::At(o) => o,
        }
    }
}

/// Checks an offset the server sent (`Stream-Next-Offset`, `streamNextOffset`): it must be a
/// usable token, because the reader will send it back, and not `-1` or `now`, which a server
/// never issues (PROTOCOL.md): sent back, `-1` would read the stream again from its start.
pub fn is_usable(token: &str) -> bool {
    !matches!(
        ReadFrom::parse(token),
        Ok(ReadFrom::Start | ReadFrom::Now)
            | Err(OffsetError::Empty | OffsetError::IllegalCharacter | OffsetError::TooLong)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinels_and_opaque_offsets() {
        assert_eq!(Start::parse(None), Ok(Start::Beginning));
        assert_eq!(Start::parse(Some("-1")), Ok(Start::Beginning));
        assert_eq!(Start::parse(Some("now")), Ok(Start::Now));
        let ours = "0000000000000000_0000000000000005";
        assert_eq!(Start::parse(Some(ours)), Ok(Start::At(ours.into())));
        // Another server's format is still an offset; the server judges it.
        assert_eq!(
            Start::parse(Some("0000000000000001_0000000000000005")),
            Ok(Start::At("0000000000000001_0000000000000005".into()))
        );
        assert_eq!(
            Start::parse(Some("not-a-valid-offset-format")),
            Ok(Start::At("not-a-valid-offset-format".into()))
        );
        assert_eq!(Start::At("x".into()).as_param(), "x");
        assert_eq!(Start::Now.as_param(), "now");
    }

    #[test]
    fn refuses_what_the_protocol_forbids() {
        assert_eq!(Start::parse(Some("")), Err(OffsetError::Empty));
        for bad in ["a&live=sse", "a/b", "a b", "..", "a\n"] {
            assert_eq!(
                Start::parse(Some(bad)),
                Err(OffsetError::IllegalCharacter),
                "{bad:?}"
            );
        }
        assert!(!is_usable(""));
        assert!(!is_usable("x?y"));
        assert!(is_usable("0000000000000000_0000000000000005"));
        assert!(is_usable("opaque-token.7"));
        assert!(!is_usable("-1"));
        assert!(!is_usable("now"));
    }
}

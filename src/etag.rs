//! Entity tags for catch-up reads: `"<stream id>:<start>:<end>"`, with `:c` once the stream is
//! closed, so a cached 304 can never hide the closure signal.

use alloc::format;
use alloc::string::String;

use crate::offset::Offset;

/// The ETag of a read of `[start, end)` of the stream instance `stream_id`.
///
/// `stream_id` distinguishes a stream from an earlier one deleted at the same path.
pub fn etag(stream_id: &str, start: Offset, end: Offset, closed: bool) -> String {
    format!(
        "\"{stream_id}:{}:{}{}\"",
        start.position(),
        end.position(),
        if closed { ":c" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::if_none_match;

    #[test]
    fn varies_with_range_identity_and_closure() {
        let a = Offset::ZERO;
        let b = Offset::new(5).unwrap();
        let open = etag("s1", a, b, false);
        assert_eq!(open, "\"s1:0:5\"");
        assert_ne!(open, etag("s1", a, b, true));
        assert_ne!(open, etag("s2", a, b, false));
        assert_ne!(open, etag("s1", a, Offset::new(6).unwrap(), false));
        assert!(if_none_match(&open, &open));
    }
}

//! Every refusal the protocol defines, with its status, its short text body and its headers.
//!
//! The server turns a `ProtocolError` into a response in one place, so every error carries the
//! same headers (and never becomes a 500).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::headers::{
    HeaderError, RETRY_AFTER, STREAM_CLOSED, STREAM_LEASE_EXPIRES_AT, STREAM_NEXT_OFFSET,
};
use crate::json::JsonError;
use crate::offset::{Offset, OffsetError};
use crate::producer::ProducerDecision;

/// A protocol-level refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A malformed offset (400).
    Offset(OffsetError),
    /// A malformed or contradictory header or query parameter (400).
    Header(HeaderError),
    /// A JSON stream was sent a body that is not acceptable JSON (400).
    Json(JsonError),
    /// Any other malformed request (400), with its reason.
    BadRequest(&'static str),
    /// An append with no body and no `Stream-Closed: true` (400).
    EmptyBody,
    /// An append with a body but no `Content-Type` (400).
    MissingContentType,
    /// The stream does not exist, or has expired (404).
    NotFound,
    /// The stream was deleted but lives on for its forks (410).
    Gone,
    /// The method is not one the stream URL supports (405).
    MethodNotAllowed,
    /// PUT on an existing stream with a different configuration (409).
    ConfigMismatch,
    /// PUT on a path whose deleted stream still serves forks (409).
    PathInUse,
    /// Append to a closed stream (409, with `Stream-Closed` and the final offset).
    Closed {
        /// The closed stream's last offset, so a writer knows where it ended.
        final_offset: Offset,
    },
    /// Append with a content type other than the stream's (409).
    ContentTypeMismatch,
    /// `Stream-Seq` not greater than the last one (409).
    StreamSeqRegression,
    /// The idempotent producer check refused the append (403, 409 or 400).
    Producer(ProducerDecision),
    /// Fork source is soft-deleted (409).
    ForkSourceGone,
    /// Fork source does not exist (404).
    ForkSourceNotFound,
    /// Fork offset beyond the source's tail (400).
    ForkOffsetOutOfRange,
    /// `Stream-Fork-Sub-Offset` past the end of the one append at the fork offset, counted in
    /// messages of a JSON stream and bytes of any other (400).
    ForkSubOffsetPastAppend,
    /// The source is already [`crate::stream::MAX_FORK_DEPTH`] forks deep (400: forking it
    /// can never succeed, as a source's depth never changes).
    ForkTooDeep,
    /// The body is larger than the server accepts (413).
    PayloadTooLarge {
        /// The most the server takes, in bytes.
        limit: u64,
    },
    /// The stream has grown to the largest size offsets can express (507 is not a 4xx; 413 is
    /// what clients handle).
    StreamFull,
    /// Another producer holds the writer lease (423, with when it ends and `Retry-After`).
    Leased {
        /// When the lease runs out unless renewed (Unix milliseconds).
        expires_ms: i64,
        /// Seconds until then, rounded up, for `Retry-After`.
        retry_after_s: u64,
    },
}

impl ProtocolError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ProtocolError::Offset(_)
            | ProtocolError::Header(_)
            | ProtocolError::Json(_)
            | ProtocolError::BadRequest(_)
            | ProtocolError::EmptyBody
            | ProtocolError::MissingContentType
            | ProtocolError::ForkOffsetOutOfRange
            | ProtocolError::ForkSubOffsetPastAppend
            | ProtocolError::ForkTooDeep => 400,
            ProtocolError::NotFound | ProtocolError::ForkSourceNotFound => 404,
            ProtocolError::MethodNotAllowed => 405,
            ProtocolError::Gone => 410,
            ProtocolError::ConfigMismatch
            | ProtocolError::PathInUse
            | ProtocolError::Closed { .. }
            | ProtocolError::ContentTypeMismatch
            | ProtocolError::StreamSeqRegression
            | ProtocolError::ForkSourceGone => 409,
            ProtocolError::Producer(d) => d.status(),
            ProtocolError::PayloadTooLarge { .. } | ProtocolError::StreamFull => 413,
            ProtocolError::Leased { .. } => 423,
        }
    }

    /// The short text body.
    pub fn message(&self) -> String {
        match self {
            ProtocolError::Offset(e) => e.message().to_string(),
            ProtocolError::Header(e) => e.message().to_string(),
            ProtocolError::Json(e) => e.to_string(),
            ProtocolError::BadRequest(m) => (*m).to_string(),
            ProtocolError::EmptyBody => {
                "append body is empty (send Stream-Closed: true to close)".into()
            }
            ProtocolError::MissingContentType => {
                "Content-Type is required when appending data".into()
            }
            ProtocolError::NotFound => "stream not found".into(),
            ProtocolError::Gone => "stream was deleted".into(),
            ProtocolError::MethodNotAllowed => "method not allowed".into(),
            ProtocolError::ConfigMismatch => {
                "stream already exists with a different configuration".into()
            }
            ProtocolError::PathInUse => "a deleted stream at this path still has forks".into(),
            ProtocolError::Closed { .. } => "stream is closed".into(),
            ProtocolError::ContentTypeMismatch => "Content-Type does not match the stream's".into(),
            ProtocolError::StreamSeqRegression => {
                "Stream-Seq must be greater than the last one".into()
            }
            ProtocolError::Producer(d) => d.message().to_string(),
            ProtocolError::ForkSourceGone => "fork source was deleted".into(),
            ProtocolError::ForkSourceNotFound => "fork source not found".into(),
            ProtocolError::ForkOffsetOutOfRange => "fork offset is beyond the source's data".into(),
            ProtocolError::ForkSubOffsetPastAppend => {
                "Stream-Fork-Sub-Offset is past the end of the append at Stream-Fork-Offset".into()
            }
            ProtocolError::ForkTooDeep => alloc::format!(
                "fork source is already {} forks deep, the most a chain of forks may be",
                crate::stream::MAX_FORK_DEPTH
            ),
            ProtocolError::PayloadTooLarge { limit } => {
                alloc::format!("body is larger than {limit} bytes")
            }
            ProtocolError::StreamFull => "stream has reached its maximum size".into(),
            ProtocolError::Leased { .. } => {
                "another producer holds the stream's writer lease".into()
            }
        }
    }

    /// Extra response headers the protocol asks for with this error.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            ProtocolError::Closed { final_offset } => alloc::vec![
                (STREAM_CLOSED, "true".into()),
                (STREAM_NEXT_OFFSET, final_offset.to_string()),
            ],
            ProtocolError::Producer(d) => d.headers(),
            ProtocolError::Leased {
                expires_ms,
                retry_after_s,
            } => alloc::vec![
                (
                    STREAM_LEASE_EXPIRES_AT,
                    crate::time::format_rfc3339(*expires_ms)
                ),
                (RETRY_AFTER, retry_after_s.to_string()),
            ],
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.message())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ProtocolError {}

impl From<OffsetError> for ProtocolError {
    fn from(e: OffsetError) -> Self {
        ProtocolError::Offset(e)
    }
}

impl From<HeaderError> for ProtocolError {
    fn from(e: HeaderError) -> Self {
        ProtocolError::Header(e)
    }
}

impl From<JsonError> for ProtocolError {
    fn from(e: JsonError) -> Self {
        ProtocolError::Json(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::ProducerState;

    #[test]
    fn statuses() {
        assert_eq!(ProtocolError::Offset(OffsetError::Empty).status(), 400);
        assert_eq!(ProtocolError::NotFound.status(), 404);
        assert_eq!(ProtocolError::Gone.status(), 410);
        assert_eq!(ProtocolError::ContentTypeMismatch.status(), 409);
        assert_eq!(ProtocolError::PayloadTooLarge { limit: 1 }.status(), 413);
        assert_eq!(
            ProtocolError::Producer(ProducerDecision::StaleEpoch { current_epoch: 1 }).status(),
            403
        );
        let _ = ProducerState {
            epoch: 0,
            last_seq: 0,
        };
    }

    #[test]
    fn closed_carries_the_final_offset() {
        let e = ProtocolError::Closed {
            final_offset: Offset::new(9).unwrap(),
        };
        let h = e.headers();
        assert!(h.contains(&(STREAM_CLOSED, "true".into())));
        assert!(h.contains(&(
            STREAM_NEXT_OFFSET,
            "0000000000000000_0000000000000009".into()
        )));
    }

    #[test]
    fn a_held_lease_says_when_it_ends() {
        let e = ProtocolError::Leased {
            expires_ms: 1_700_000_000_000,
            retry_after_s: 7,
        };
        assert_eq!(e.status(), 423);
        let h = e.headers();
        assert!(h.contains(&(STREAM_LEASE_EXPIRES_AT, "2023-11-14T22:13:20.000Z".into())));
        assert!(h.contains(&(RETRY_AFTER, "7".into())));
    }

    #[test]
    fn every_error_has_a_message() {
        let all = [
            ProtocolError::EmptyBody,
            ProtocolError::MissingContentType,
            ProtocolError::ConfigMismatch,
            ProtocolError::PathInUse,
            ProtocolError::StreamSeqRegression,
            ProtocolError::ForkSourceGone,
            ProtocolError::ForkSourceNotFound,
            ProtocolError::ForkOffsetOutOfRange,
            ProtocolError::ForkSubOffsetPastAppend,
            ProtocolError::ForkTooDeep,
            ProtocolError::MethodNotAllowed,
            ProtocolError::StreamFull,
            ProtocolError::Json(JsonError::Empty),
            ProtocolError::Header(HeaderError::Ttl),
            ProtocolError::Header(HeaderError::LeaseTtl),
            ProtocolError::Header(HeaderError::LeaseWithoutProducer),
            ProtocolError::Leased {
                expires_ms: 0,
                retry_after_s: 1,
            },
        ];
        for e in all {
            assert!(!e.message().is_empty(), "{e:?}");
            assert!((400..500).contains(&e.status()), "{e:?}");
        }
    }
}

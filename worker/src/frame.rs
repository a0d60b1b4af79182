//! The frames a stream's Durable Object sends to the edge over its internal WebSockets.
//!
//! The object encodes each append once, as one binary frame, and sends that same frame to every
//! live reader; the edge turns it into SSE events, a long-poll body or client WebSocket frames.
//! Layout (little-endian):
//!
//! ```text
//! [0]      kind: 1 = data, 2 = gone (stream deleted or expired)
//! [1]      flags: bit 0 = the stream is closed at `end`; bit 1 = `end` was the tail when sent
//! [2..10]  start position of the payload (gone: the status readers get, 404 or 410)
//! [10..18] end position (the reader's next offset)
//! [18..]   payload: log bytes in [start, end) (framed JSON for JSON streams)
//! ```

use edgestream::{Offset, ProtocolError};

const KIND_DATA: u8 = 1;
const KIND_GONE: u8 = 2;
const FLAG_CLOSED: u8 = 1;
const FLAG_UP_TO_DATE: u8 = 2;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 18;

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Log bytes `[start, end)`; `closed` when the stream is closed at `end`, `up_to_date` when
    /// `end` was the stream's tail.
    Data {
        start: Offset,
        end: Offset,
        closed: bool,
        up_to_date: bool,
        payload: &'a [u8],
    },
    /// The stream no longer exists, or is soft-deleted; readers should stop with `error`.
    Gone { error: ProtocolError },
}

/// Encodes a data frame.
pub fn encode_data(
    start: Offset,
    end: Offset,
    closed: bool,
    up_to_date: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(KIND_DATA);
    let mut flags = 0;
    if closed {
        flags |= FLAG_CLOSED;
    }
    if up_to_date || closed {
        flags |= FLAG_UP_TO_DATE;
    }
    out.push(flags);
    out.extend_from_slice(&start.position().to_le_bytes());
    out.extend_from_slice(&end.position().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Encodes a gone frame that tells readers `error`'s status: 410 for a stream kept for its
/// forks, 404 for one removed.
pub fn encode_gone(error: &ProtocolError) -> Vec<u8> {
    let mut out = vec![KIND_GONE, 0];
    out.extend_from_slice(&u64::from(error.status()).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

/// Decodes a frame; `None` for anything malformed (the edge then drops the connection and the
/// client resumes from its last offset).
pub fn decode(bytes: &[u8]) -> Option<Frame<'_>> {
    if bytes.len() < HEADER_LEN {
        return None;
    }
    let position = |at: usize| -> Option<Offset> {
        let raw: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
        Offset::new(u64::from_le_bytes(raw))
    };
    match bytes[0] {
        KIND_DATA => {
            let start = position(2)?;
            let end = position(10)?;
            let payload = &bytes[HEADER_LEN..];
            if end.distance_from(start) != payload.len() as u64 || end < start {
                return None;
            }
            Some(Frame::Data {
                start,
                end,
                closed: bytes[1] & FLAG_CLOSED != 0,
                up_to_date: bytes[1] & FLAG_UP_TO_DATE != 0,
                payload,
            })
        }
        KIND_GONE => {
            // A frame from an object that did not send a status (zero) means removed.
            let status = bytes
                .get(2..10)
                .and_then(|raw| <[u8; 8]>::try_from(raw).ok())
                .map(u64::from_le_bytes);
            let error = if status == Some(410) {
                ProtocolError::Gone
            } else {
                ProtocolError::NotFound
            };
            Some(Frame::Gone { error })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_round_trip() {
        let start = Offset::new(10).unwrap();
        let end = Offset::new(13).unwrap();
        let bytes = encode_data(start, end, true, false, b"abc");
        assert_eq!(
            decode(&bytes),
            Some(Frame::Data {
                start,
                end,
                closed: true,
                up_to_date: true,
                payload: b"abc"
            })
        );
        let empty = encode_data(end, end, false, true, b"");
        assert_eq!(
            decode(&empty),
            Some(Frame::Data {
                start: end,
                end,
                closed: false,
                up_to_date: true,
                payload: b""
            })
        );
        let behind = encode_data(start, end, false, false, b"abc");
        assert!(matches!(
            decode(&behind),
            Some(Frame::Data {
                up_to_date: false,
                ..
            })
        ));
    }

    #[test]
    fn gone_round_trip() {
        for error in [ProtocolError::Gone, ProtocolError::NotFound] {
            assert_eq!(
                decode(&encode_gone(&error)),
                Some(Frame::Gone {
                    error: error.clone()
                })
            );
        }
        // As sent before gone frames carried a status.
        let mut old = vec![KIND_GONE, 0];
        old.extend_from_slice(&[0; 16]);
        assert_eq!(
            decode(&old),
            Some(Frame::Gone {
                error: ProtocolError::NotFound
            })
        );
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(&[1; 17]), None);
        let mut bad_len = encode_data(Offset::ZERO, Offset::new(5).unwrap(), false, false, b"abc");
        assert_eq!(decode(&bad_len), None);
        bad_len[0] = 9;
        assert_eq!(decode(&bad_len), None);
        let backwards = encode_data(
            Offset::new(5).unwrap(),
            Offset::new(2).unwrap(),
            false,
            false,
            b"",
        );
        assert_eq!(decode(&backwards), None);
    }
}

//! Reading a Durable Streams SSE body: the core's incremental decoder, plus the client's rules
//! for which events matter. `data` events accumulate until a `control` event says where they end;
//! unknown event types are skipped (servers may add some); a malformed control event is an
//! error, because the reader could not know where to resume.

use alloc::{string::String, vec::Vec};
use edgestream::sse::{self, Control, SseDecoder};
use edgestream::ws::ServerMessage;
use edgestream::SseEncoding;

/// What one SSE connection has produced so far.
pub enum Event {
    /// A control event closing the data that came before it.
    Batch {
        parts: Vec<Vec<u8>>,
        control: Control,
    },
    /// An `error` event, the response's last: the stream is gone (edgestream's servers send it
    /// when the stream is deleted while followed, so the reader does not resume from its offset).
    Failed { status: u16, message: String },
}

/// Why an SSE body could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseError {
    /// A control event that is not the expected JSON object.
    Control(sse::ControlError),
    /// A base64 `data` event that does not decode.
    Base64,
}

impl SseError {
    pub fn message(self) -> &'static str {
        match self {
            SseError::Control(sse::ControlError::Syntax) => {
                "SSE control event is not a valid JSON object"
            }
            SseError::Control(sse::ControlError::MissingOffset) => {
                "SSE control event has no streamNextOffset"
            }
            SseError::Base64 => "SSE data event is not valid base64",
        }
    }
}

/// One SSE connection's parser.
pub struct SseReader {
    decoder: SseDecoder,
    encoding: SseEncoding,
    parts: Vec<Vec<u8>>,
}

impl SseReader {
    /// `encoding` comes from the response's `Stream-SSE-Data-Encoding` header.
    pub fn new(encoding: SseEncoding) -> SseReader {
        SseReader {
            decoder: SseDecoder::new(),
            encoding,
            parts: Vec::new(),
        }
    }

    /// Feeds a chunk of the body; returns the batches it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        self.decoder.push(chunk);
        let mut out = Vec::new();
        while let Some(event) = self.decoder.next_event() {
            match event.event.as_str() {
                "data" => {
                    let bytes = sse::decode_data(&event.data, self.encoding)
                        .map_err(|_| SseError::Base64)?;
                    self.parts.push(bytes);
                }
                "control" => {
                    let control = Control::parse(&event.data).map_err(SseError::Control)?;
                    out.push(Event::Batch {
                        parts: core::mem::take(&mut self.parts),
                        control,
                    });
                }
                "error" => {
                    if let Ok(ServerMessage::Error {
                        status, message, ..
                    }) = ServerMessage::parse(&event.data)
                    {
                        out.push(Event::Failed { status, message });
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The reconnection delay the server asked for with `retry:`, if any.
    pub fn retry_ms(&self) -> Option<u32> {
        self.decoder.retry_ms
    }
}

/// The data encoding a response announces.
pub fn encoding_of(header: Option<&str>) -> SseEncoding {
    match header {
        Some(v) if v.trim().eq_ignore_ascii_case("base64") => SseEncoding::Base64,
        _ => SseEncoding::Utf8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn batches(reader: &mut SseReader, input: &[u8]) -> Vec<(Vec<Vec<u8>>, Control)> {
        let mut out = Vec::new();
        // Feed one byte at a time: events may be split anywhere.
        for b in input {
            for event in reader.push(core::slice::from_ref(b)).unwrap() {
                if let Event::Batch { parts, control } = event {
                    out.push((parts, control));
                }
            }
        }
        out
    }

    #[test]
    fn data_then_control_makes_a_batch() {
        let mut r = SseReader::new(SseEncoding::Utf8);
        let got = batches(
            &mut r,
            b"event: data\ndata: hello\ndata:world\n\nevent: control\ndata: {\"streamNextOffset\":\"5\",\"streamCursor\":\"9\",\"upToDate\":true}\n\n",
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, vec![b"hello\nworld".to_vec()]);
        assert_eq!(got[0].1.next_offset, "5");
        assert_eq!(got[0].1.cursor.as_deref(), Some("9"));
        assert!(got[0].1.up_to_date);
    }

    #[test]
    fn base64_and_unknown_events() {
        let mut r = SseReader::new(encoding_of(Some("base64")));
        let got = batches(
            &mut r,
            b"event: future\ndata: {}\n\nevent: data\ndata:/f7/AA==\n\nevent: control\ndata:{\"streamNextOffset\":\"a\",\"streamClosed\":true}\n\n",
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, vec![vec![0xfd, 0xfe, 0xff, 0x00]]);
        assert!(got[0].1.closed);
    }

    #[test]
    fn unicode_separators_are_not_line_breaks() {
        let mut r = SseReader::new(SseEncoding::Utf8);
        let text = "event: data\ndata:a\u{85}b\u{2028}c\u{2029}d\n\nevent: control\ndata:{\"streamNextOffset\":\"1\"}\n\n";
        let got = batches(&mut r, text.as_bytes());
        assert_eq!(
            got[0].0,
            vec!["a\u{85}b\u{2028}c\u{2029}d".as_bytes().to_vec()]
        );
    }

    #[test]
    fn malformed_control_is_an_error() {
        for bad in ["{invalid json here", "", "{}"] {
            let mut r = SseReader::new(SseEncoding::Utf8);
            let mut input = b"event: control\ndata: ".to_vec();
            input.extend_from_slice(bad.as_bytes());
            input.extend_from_slice(b"\n\n");
            assert!(r.push(&input).is_err(), "{bad:?}");
        }
        let mut r = SseReader::new(SseEncoding::Base64);
        assert_eq!(
            r.push(b"event: data\ndata: !!!\n\n").err(),
            Some(SseError::Base64)
        );
    }

    #[test]
    fn data_without_control_is_held_back() {
        let mut r = SseReader::new(SseEncoding::Utf8);
        assert!(r.push(b"event: data\ndata: x\n\n").unwrap().is_empty());
    }

    #[test]
    fn an_error_event_reports_the_status() {
        let mut r = SseReader::new(SseEncoding::Utf8);
        let events = r
            .push(b"event: error\ndata:{\"type\":\"error\",\"status\":404,\"message\":\"stream not found\"}\n\n")
            .unwrap();
        assert!(matches!(
            events.as_slice(),
            [Event::Failed { status: 404, message }] if message == "stream not found"
        ));
        // An error event that is not an error message is skipped, like any unknown event.
        assert!(r.push(b"event: error\ndata: oops\n\n").unwrap().is_empty());
    }
}

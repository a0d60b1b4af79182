//! The server's messages on a `live=ws` socket (docs/websocket.md): built by the Worker, read by
//! the client.
//!
//! A batch is one or more data messages and then a control message with the SSE control
//! event's fields. A client that offers the [`COMBINED`] subprotocol gets the last data message
//! of a batch with the control fields inside it, so a live append costs one message per socket
//! instead of two: a JSON stream's data message carries them after `items`, and every binary
//! message starts with a header that holds them or is empty ([`binary_message`]).
//!
//! A client that offers [`RECEIPTS`] takes the same messages, and in return tells the server
//! how far it has read ([`receipt_message`]). workerd cannot measure a WebSocket's send queue,
//! so receipts are how the server learns that a client stopped reading (a tab frozen, a network
//! gone without a FIN) and closes its socket rather than queue every later append for it.

use alloc::string::String;
use alloc::vec::Vec;

use crate::json;
use crate::offset::Offset;
use crate::sse::{Control, ControlError, ControlReader, MiniJson};

/// The subprotocol (`Sec-WebSocket-Protocol`) under which a data message may carry its batch's
/// control fields.
pub const COMBINED: &str = "edgestream.v2";

/// [`COMBINED`], and the client sends receipts of what it has read.
pub const RECEIPTS: &str = "edgestream.v3";

/// The query parameter a `live=ws` client names the stream incarnation (`Stream-Incarnation`)
/// it read in, since browsers cannot send headers on a WebSocket: a stream deleted and created
/// again since refuses the handshake with 404, so the client does not resume from its offset in
/// the new one.
pub const INCARNATION_PARAM: &str = "incarnation";

/// Whether a handshake's `Sec-WebSocket-Protocol` list offers `protocol`.
pub fn offers(protocols: &str, protocol: &str) -> bool {
    protocols.split(',').any(|p| p.trim() == protocol)
}

/// Whether the subprotocol a server chose has data messages carry their batch's control
/// fields ([`COMBINED`], and [`RECEIPTS`], which builds on it).
pub fn combines(protocol: &str) -> bool {
    protocol == COMBINED || protocol == RECEIPTS
}

/// The subprotocol the server answers a handshake's `Sec-WebSocket-Protocol` list with: the
/// newest of ours it offers, if any.
pub fn choose_protocol(protocols: &str) -> Option<&'static str> {
    [RECEIPTS, COMBINED]
        .into_iter()
        .find(|ours| offers(protocols, ours))
}

/// How far a client under [`RECEIPTS`] has read, and the rule that holds it to that: the
/// server sends no data that would leave it more than a limit behind. A receipt is a claim, so
/// it counts only up to what the client was sent: a receipt for data not sent yet would
/// otherwise let a client that stopped reading be sent without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    read: Offset,
    sent: Offset,
}

impl Receipt {
    /// A client that was sent, and has read, everything before `offset`.
    pub fn at(offset: Offset) -> Receipt {
        Receipt {
            read: offset,
            sent: offset,
        }
    }

    /// The client was sent everything before `end`.
    pub fn sent(&mut self, end: Offset) {
        self.sent = self.sent.max(end);
    }

    /// A receipt for `offset`, counted up to what was sent; receipts never move back.
    pub fn received(&mut self, offset: Offset) {
        self.read = self.read.max(offset.min(self.sent));
    }

    /// Whether sending data up to `end` would leave the client more than `limit` bytes behind.
    pub fn falls_behind(self, end: Offset, limit: u64) -> bool {
        end.distance_from(self.read) > limit
    }
}

/// A client's keepalive: the server answers it with [`PONG`] at once, without waking a stream's
/// object that holds the socket, so a client can tell a quiet socket from a dead one (a page
/// cannot send WebSocket pings).
pub const PING: &str = r#"{"type":"ping"}"#;
/// The answer to [`PING`].
pub const PONG: &str = r#"{"type":"pong"}"#;

/// `{"type":"received","offset":…}`: the client has read everything before `offset` (the
/// `streamNextOffset` of the last control it handled).
pub fn receipt_message(offset: &str) -> String {
    let mut out = String::with_capacity(offset.len() + 32);
    out.push_str("{\"type\":\"received\",\"offset\":\"");
    out.push_str(offset);
    out.push_str("\"}");
    out
}

/// `{"type":"control",…}`: the SSE control event's fields under a type tag.
pub fn control_message(control: &Control) -> String {
    let fields = control.to_json();
    let mut out = String::with_capacity(fields.len() + 20);
    out.push_str("{\"type\":\"control\",");
    out.push_str(fields.strip_prefix('{').unwrap_or(&fields));
    out
}

/// `{"type":"data","items":[…]}` for a framed range of a JSON stream, with `control`'s fields
/// after `items` when the message also ends its batch.
pub fn data_message(framed: &[u8], control: Option<&Control>) -> String {
    let fields = control.map(Control::to_json);
    let extra = fields.as_ref().map_or(0, String::len);
    let mut out = Vec::with_capacity(framed.len() + 24 + extra);
    out.extend_from_slice(b"{\"type\":\"data\",\"items\":");
    json::write_array(framed, &mut out);
    match fields.as_deref().and_then(|f| f.strip_prefix('{')) {
        Some(fields) => {
            out.push(b',');
            out.extend_from_slice(fields.as_bytes());
        }
        None => out.push(b'}'),
    }
    // Stored JSON was validated as UTF-8 on append; a lossy copy only guards against a bug.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A binary data message under [`COMBINED`]: `[u32 big-endian header length][header][payload]`,
/// the layout of a binary append frame. The header is `control`'s JSON object when the message
/// ends its batch, and empty otherwise.
pub fn binary_message(payload: &[u8], control: Option<&Control>) -> Vec<u8> {
    let header = control.map(Control::to_json).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + header.len() + payload.len());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads a [`binary_message`]: the control its header holds, if any, and the payload.
pub fn parse_binary(message: &[u8]) -> Result<(Option<Control>, &[u8]), ControlError> {
    let Some((len, rest)) = message.split_first_chunk::<4>() else {
        return Err(ControlError::Syntax);
    };
    let len = u32::from_be_bytes(*len) as usize;
    let Some((header, payload)) = rest.split_at_checked(len) else {
        return Err(ControlError::Syntax);
    };
    if header.is_empty() {
        return Ok((None, payload));
    }
    let header = core::str::from_utf8(header).map_err(|_| ControlError::Syntax)?;
    Ok((Some(Control::parse(header)?), payload))
}

/// A text message from the server, as a client reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// Messages of a JSON stream: `items` is their JSON array as sent. `control` is present
    /// when the message also ends its batch (the [`COMBINED`] subprotocol).
    Data {
        /// The messages, as a JSON array.
        items: &'a str,
        /// The batch's end, when this message is also its last.
        control: Option<Control>,
    },
    /// The end of a batch.
    Control(Control),
    /// An error about the stream (`for_append` false: the socket is about to close) or the
    /// reply to an append frame.
    Error {
        /// The HTTP status the same refusal would have.
        status: u16,
        /// Its short text.
        message: String,
        /// Whether it answers an append frame (else it is about the stream, and the socket closes).
        for_append: bool,
    },
    /// An append's acknowledgement, or a type this client does not know: nothing to act on.
    Other,
}

impl<'a> ServerMessage<'a> {
    /// Reads a text message. A message without a `type` is a control message, as the first
    /// servers sent them.
    pub fn parse(text: &'a str) -> Result<ServerMessage<'a>, ControlError> {
        let mut kind: Option<String> = None;
        let mut items = None;
        let mut control = ControlReader::default();
        let mut status = None;
        let mut message = String::new();
        let mut id = false;
        MiniJson::object(text, |key, r| {
            match key {
                "type" => kind = Some(r.string()?),
                "items" => items = Some(r.raw_value()?),
                "status" => {
                    let text = r.string_or_number()?.unwrap_or_default();
                    status = Some(text.parse::<u16>().map_err(|_| ControlError::Syntax)?);
                }
                "message" => message = r.string()?,
                "id" => {
                    r.skip_value()?;
                    id = true;
                }
                _ => {
                    if !control.field(key, r)? {
                        r.skip_value()?;
                    }
                }
            }
            Ok(())
        })?;
        let control = control.finish();
        Ok(match kind.as_deref() {
            Some("data") => ServerMessage::Data {
                items: items.ok_or(ControlError::Syntax)?,
                control,
            },
            Some("control") | None => {
                ServerMessage::Control(control.ok_or(ControlError::MissingOffset)?)
            }
            Some("error") => ServerMessage::Error {
                status: status.ok_or(ControlError::Syntax)?,
                message,
                for_append: id,
            },
            Some(_) => ServerMessage::Other,
        })
    }
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString;

    use super::*;

    fn control(offset: &str, up_to_date: bool, closed: bool) -> Control {
        Control {
            next_offset: offset.into(),
            cursor: Some("7".into()),
            up_to_date,
            closed,
        }
    }

    #[test]
    fn data_and_control_messages_read_back() {
        let framed = br#"{"a":"]}"},2,"#;
        let plain = data_message(framed, None);
        assert_eq!(plain, r#"{"type":"data","items":[{"a":"]}"},2]}"#);
        assert_eq!(
            ServerMessage::parse(&plain),
            Ok(ServerMessage::Data {
                items: r#"[{"a":"]}"},2]"#,
                control: None
            })
        );
        let c = control("0000000000000000_0000000000000012", true, false);
        let combined = data_message(framed, Some(&c));
        assert_eq!(
            combined,
            r#"{"type":"data","items":[{"a":"]}"},2],"streamNextOffset":"0000000000000000_0000000000000012","streamCursor":"7","upToDate":true}"#
        );
        assert_eq!(
            ServerMessage::parse(&combined),
            Ok(ServerMessage::Data {
                items: r#"[{"a":"]}"},2]"#,
                control: Some(c.clone())
            })
        );
        let only = control_message(&c);
        assert_eq!(
            only,
            r#"{"type":"control","streamNextOffset":"0000000000000000_0000000000000012","streamCursor":"7","upToDate":true}"#
        );
        assert_eq!(ServerMessage::parse(&only), Ok(ServerMessage::Control(c)));
    }

    #[test]
    fn binary_messages_carry_a_header() {
        let c = control("0000000000000000_0000000000000004", true, false);
        let bytes = [0u8, 255, 10, 13];
        let ends = binary_message(&bytes, Some(&c));
        let header = c.to_json();
        assert_eq!(ends[..4], (header.len() as u32).to_be_bytes());
        assert_eq!(parse_binary(&ends), Ok((Some(c), &bytes[..])));
        let part = binary_message(&bytes, None);
        assert_eq!(part, [&[0u8, 0, 0, 0][..], &bytes].concat());
        assert_eq!(parse_binary(&part), Ok((None, &bytes[..])));
        assert_eq!(parse_binary(&[0, 0, 0, 0]), Ok((None, &[][..])));
        for bad in [
            &[0u8, 0, 0][..],
            &[0, 0, 0, 9, b'{', b'}'],
            &[0, 0, 0, 2, b'{', b'}'],
            &[0, 0, 0, 1, 0xff],
        ] {
            assert!(parse_binary(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_closed_streams_control_has_no_cursor() {
        let c = control("0000000000000000_0000000000000001", true, true);
        let text = data_message(b"1,", Some(&c));
        let Ok(ServerMessage::Data {
            control: Some(read),
            ..
        }) = ServerMessage::parse(&text)
        else {
            panic!("{text}");
        };
        assert!(read.closed && read.up_to_date && read.cursor.is_none());
    }

    #[test]
    fn errors_acks_and_unknown_types() {
        assert_eq!(
            ServerMessage::parse(r#"{"type":"error","status":404,"message":"stream not found"}"#),
            Ok(ServerMessage::Error {
                status: 404,
                message: "stream not found".to_string(),
                for_append: false
            })
        );
        let reply =
            r#"{"type":"error","id":"a","status":409,"message":"gap","producerExpectedSeq":3}"#;
        assert!(matches!(
            ServerMessage::parse(reply),
            Ok(ServerMessage::Error {
                status: 409,
                for_append: true,
                ..
            })
        ));
        let ack = r#"{"type":"ack","id":1,"status":204,"streamNextOffset":"0000000000000000_0000000000000001"}"#;
        assert_eq!(ServerMessage::parse(ack), Ok(ServerMessage::Other));
        assert_eq!(
            ServerMessage::parse(r#"{"type":"later","x":[1,{"y":2}]}"#),
            Ok(ServerMessage::Other)
        );
        // An untyped message is a control, as the SSE control event's JSON.
        assert!(matches!(
            ServerMessage::parse(r#"{"streamNextOffset":"x"}"#),
            Ok(ServerMessage::Control(_))
        ));
    }

    #[test]
    fn malformed_messages_are_refused() {
        for bad in [
            "",
            "[1,2]",
            r#"{"type":"data"}"#,
            r#"{"type":"control"}"#,
            r#"{"type":"error","message":"no status"}"#,
            r#"{"type":"error","status":99999}"#,
            r#"{"type":"data","items":[1]"#,
            r#"{"type":"data","items":[1]} x"#,
            r#"{"type":7}"#,
        ] {
            assert!(ServerMessage::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_subprotocol_is_found_in_a_list() {
        assert!(offers("edgestream.v2", COMBINED));
        assert!(offers("chat, edgestream.v2 ,x", COMBINED));
        assert!(!offers("edgestream.v22", COMBINED));
        assert!(!offers("", COMBINED));
    }

    #[test]
    fn the_newest_subprotocol_offered_is_chosen() {
        assert_eq!(
            choose_protocol("edgestream.v3, edgestream.v2"),
            Some(RECEIPTS)
        );
        assert_eq!(
            choose_protocol("edgestream.v2,edgestream.v3"),
            Some(RECEIPTS)
        );
        assert_eq!(choose_protocol("chat, edgestream.v2"), Some(COMBINED));
        assert_eq!(choose_protocol("chat"), None);
        assert_eq!(choose_protocol(""), None);
    }

    #[test]
    fn a_client_is_held_to_its_receipts_which_never_move_back() {
        let at = |p: u64| Offset::new(p).unwrap();
        let mut read = Receipt::at(at(100));
        assert!(!read.falls_behind(at(150), 50));
        assert!(read.falls_behind(at(151), 50));
        read.sent(at(150));
        read.received(at(120));
        read.received(at(110));
        assert!(!read.falls_behind(at(170), 50));
        assert!(read.falls_behind(at(171), 50));
        // A receipt for more than was sent counts only what was sent.
        read.received(at(1 << 40));
        assert!(!read.falls_behind(at(200), 50));
        assert!(read.falls_behind(at(201), 50));
        read.sent(at(120));
        read.received(at(300));
        assert!(
            read.falls_behind(at(201), 50),
            "what was sent never moves back"
        );
        // Data before what it has read never counts against it.
        assert!(!read.falls_behind(at(0), 0));
        assert!(combines(COMBINED) && combines(RECEIPTS) && !combines("chat"));
    }

    #[test]
    fn a_receipt_names_its_offset() {
        assert_eq!(
            receipt_message("0000000000000000_0000000000000042"),
            r#"{"type":"received","offset":"0000000000000000_0000000000000042"}"#
        );
    }
}

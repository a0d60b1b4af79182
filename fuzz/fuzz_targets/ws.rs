//! The `live=ws` server messages (`edgestream::ws`) on arbitrary input, and build → read round
//! trips.
//!
//! Invariants:
//! - `ServerMessage::parse` and `parse_binary` never panic on arbitrary text or bytes;
//! - a control that `parse_binary` finds re-encodes to a message that reads back the same;
//! - for a valid JSON body, `data_message` of its stored framing, with or without a control,
//!   reads back as data whose `items` are the rendered GET array and whose control is the one
//!   sent (as closing normalises it); `control_message` reads back as that control;
//! - `binary_message` of any bytes reads back as exactly those bytes and that control.
#![no_main]

use edgestream::json::{frame, render_array, split_messages, Purpose};
use edgestream::ws::{binary_message, control_message, data_message, parse_binary, ServerMessage};
use libfuzzer_sys::fuzz_target;

#[path = "common/control.rs"]
mod control;
use control::{as_sent, control_from};

fuzz_target!(|data: &[u8]| {
    let salt = data.first().copied().unwrap_or(0);
    let text = String::from_utf8_lossy(data);

    // 1. Arbitrary input never panics.
    let _ = ServerMessage::parse(&text);
    if let Ok((Some(control), payload)) = parse_binary(data) {
        let again = binary_message(payload, Some(&control));
        assert_eq!(parse_binary(&again), Ok((Some(as_sent(&control)), payload)));
    }

    // 2. Binary messages carry any bytes and any control.
    let control = control_from(&text, salt);
    let sent = as_sent(&control);
    for with in [None, Some(&control)] {
        let message = binary_message(data, with);
        assert_eq!(
            parse_binary(&message),
            Ok((with.map(as_sent), data)),
            "binary round trip"
        );
    }
    assert_eq!(
        ServerMessage::parse(&control_message(&control)),
        Ok(ServerMessage::Control(sent.clone()))
    );

    // 3. Data messages of a valid JSON body.
    let Ok(spans) = split_messages(data, Purpose::Create) else {
        return;
    };
    let framed = frame(data, &spans);
    let array = render_array(&framed);
    let array = core::str::from_utf8(&array).expect("validated JSON is UTF-8");
    for with in [None, Some(&control)] {
        let message = data_message(&framed, with);
        assert_eq!(
            ServerMessage::parse(&message),
            Ok(ServerMessage::Data {
                items: array,
                control: with.map(as_sent),
            }),
            "data round trip of {message}"
        );
    }
});

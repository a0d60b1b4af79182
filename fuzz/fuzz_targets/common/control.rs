//! Controls built from fuzz input, shared by the sse and ws targets.

use edgestream::sse::Control;

/// A control built from the input: its text as the offset and cursor, flags from `salt`.
pub fn control_from(text: &str, salt: u8) -> Control {
    let split = text
        .char_indices()
        .nth(text.chars().count() / 2)
        .map_or(text.len(), |(i, _)| i);
    Control {
        next_offset: text[..split].to_string(),
        cursor: (salt & 1 == 1).then(|| text[split..].to_string()),
        up_to_date: salt & 2 == 2,
        closed: salt & 4 == 4,
    }
}

/// A control as it reads back: closing drops the cursor and implies up-to-date.
pub fn as_sent(c: &Control) -> Control {
    let mut c = c.clone();
    if c.closed {
        c.cursor = None;
        c.up_to_date = true;
    }
    c
}

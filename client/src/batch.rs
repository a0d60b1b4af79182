//! A batch as the reader hands it out: the data of one response, SSE control event or WebSocket
//! control frame, and where the stream stands after it.

use js_sys::{Array, Object, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsValue;

use crate::{error, js};

/// The position after a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub offset: String,
    pub cursor: Option<String>,
    pub up_to_date: bool,
    pub closed: bool,
}

#[wasm_bindgen(inline_js = r#"
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
export function es_json_body(bytes) {
  let text;
  try { text = utf8.decode(bytes); } catch { return { bad: 'utf8' }; }
  if (/^[ \t\n\f\r]*$/.test(text)) return { skip: true };
  try { return { value: JSON.parse(text) }; } catch (e) { return { bad: 'json', why: String((e && e.message) || '') }; }
}
"#)]
extern "C" {
    /// A JSON body decoded and parsed on the JS side: `{ skip }` when it is only whitespace,
    /// `{ value }`, or `{ bad: 'utf8' | 'json', why }`.
    fn es_json_body(bytes: &Uint8Array) -> JsValue;
}

/// The data of a batch.
pub enum Data<'a> {
    /// Parts read into wasm memory: SSE data events and WebSocket frames.
    Parts(&'a [Vec<u8>]),
    /// A response body, left in JS: a catch-up response can be 16 MiB, and wasm memory, which
    /// never shrinks, would keep copies' worth of it. A binary one is handed out as it came; a
    /// JSON one is decoded and parsed by the host.
    Bytes(Uint8Array),
}

impl Data<'_> {
    pub fn is_empty(&self) -> bool {
        match self {
            Data::Parts(parts) => parts.iter().all(Vec::is_empty),
            Data::Bytes(bytes) => bytes.length() == 0,
        }
    }
}

/// Builds `{ items | bytes, offset, cursor, upToDate, closed }`.
///
/// JSON streams deliver each part (a response body, an SSE data event, a WebSocket text frame) as
/// a JSON array of messages; the arrays are parsed with the host's `JSON.parse` and flattened into
/// `items`. Other streams deliver bytes, concatenated into `bytes`.
pub fn to_js(data: Data<'_>, json: bool, pos: &Position) -> Result<Object, JsValue> {
    let out = Object::new();
    match data {
        Data::Bytes(bytes) if !json => js::set(&out, "bytes", bytes),
        Data::Bytes(bytes) => {
            let items = Array::new();
            let parsed = es_json_body(&bytes);
            if js::get_bool(&parsed, "skip") != Some(true) {
                match js::get_string(&parsed, "bad").as_deref() {
                    Some("utf8") => return Err(not_utf8()),
                    Some(_) => {
                        return Err(not_json(
                            &js::get_string(&parsed, "why").unwrap_or_default(),
                        ))
                    }
                    None => push_items(&items, js::get(&parsed, "value")),
                }
            }
            js::set(&out, "items", items);
        }
        Data::Parts(parts) => set_data(&out, parts, json)?,
    }
    js::set(&out, "offset", pos.offset.as_str());
    if let Some(cursor) = &pos.cursor {
        js::set(&out, "cursor", cursor.as_str());
    }
    js::set(&out, "upToDate", pos.up_to_date);
    js::set(&out, "closed", pos.closed);
    Ok(out)
}

/// Sets `items` (JSON) or `bytes` from parts in wasm memory.
fn set_data(out: &Object, parts: &[Vec<u8>], json: bool) -> Result<(), JsValue> {
    if json {
        let items = Array::new();
        for part in parts {
            if part.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let text = core::str::from_utf8(part).map_err(|_| not_utf8())?;
            let value = js_sys::JSON::parse(text)
                .map_err(|e| not_json(&js::get_string(&e, "message").unwrap_or_default()))?;
            push_items(&items, value);
        }
        js::set(out, "items", items);
    } else {
        let total: usize = parts.iter().map(Vec::len).sum();
        let mut bytes = Vec::with_capacity(total);
        for part in parts {
            bytes.extend_from_slice(part);
        }
        js::set(out, "bytes", js::bytes_to_js(&bytes));
    }
    Ok(())
}

/// Adds a part's messages to `items`: the elements of an array, or the value itself.
fn push_items(items: &Array, value: JsValue) {
    if Array::is_array(&value) {
        let arr: Array = value.into();
        for item in arr.iter() {
            items.push(&item);
        }
    } else {
        items.push(&value);
    }
}

fn not_utf8() -> JsValue {
    parse_error("JSON stream data is not valid UTF-8")
}

fn not_json(why: &str) -> JsValue {
    parse_error(&error::msg(&["JSON stream data does not parse: ", why]))
}

/// A `PARSE_ERROR`.
pub fn parse_error(message: &str) -> JsValue {
    error::new(error::PARSE_ERROR, message, None).into()
}

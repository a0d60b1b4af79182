//! A batch as the reader hands it out: the data of one response, SSE control event or WebSocket
//! control frame, and where the stream stands after it.

use alloc::{string::String, vec::Vec};
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
export function es_json_part(bytes, items) {
  let text;
  try { text = utf8.decode(bytes); } catch { return { bad: 'utf8' }; }
  if (/^[ \t\n\f\r]*$/.test(text)) return items;
  let value;
  try { value = JSON.parse(text); } catch (e) { return { bad: 'json', why: String((e && e.message) || '') }; }
  if (!Array.isArray(value)) value = [value];
  if (items.length === 0) return value;
  for (let i = 0; i < value.length; i++) items.push(value[i]);
  return items;
}
"#)]
extern "C" {
    /// Decodes and parses a JSON part on the JS side and adds its messages to `items` there:
    /// one call per part rather than two per message. Returns the messages so far (a part of
    /// only whitespace adds nothing), else `{ bad: 'utf8' | 'json', why }`. Into an empty
    /// `items` it adds none: the part's own parsed array is returned instead, so a catch-up
    /// response of many messages is not copied into a second array as it grows (6 MB more
    /// heap at the peak for 200,000 messages).
    fn es_json_part(bytes: &Uint8Array, items: &Array) -> JsValue;
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
        Data::Bytes(bytes) if json => js::set(&out, "items", push_json(Array::new(), &bytes)?),
        Data::Bytes(bytes) => js::set(&out, "bytes", bytes),
        Data::Parts(parts) if json => {
            let mut items = Array::new();
            for part in parts {
                items = push_json(items, &Uint8Array::from(part.as_slice()))?;
            }
            js::set(&out, "items", items);
        }
        Data::Parts(parts) => {
            let total: usize = parts.iter().map(Vec::len).sum();
            let mut bytes = Vec::with_capacity(total);
            for part in parts {
                bytes.extend_from_slice(part);
            }
            js::set(&out, "bytes", js::bytes_to_js(&bytes));
        }
    }
    js::set(&out, "offset", pos.offset.as_str());
    if let Some(cursor) = &pos.cursor {
        js::set(&out, "cursor", cursor.as_str());
    }
    js::set(&out, "upToDate", pos.up_to_date);
    js::set(&out, "closed", pos.closed);
    Ok(out)
}

/// `items` and the messages of one JSON part (an array of them, or one value) after them:
/// nothing more for a part of whitespace only, else a `PARSE_ERROR` unless it is UTF-8 that
/// parses.
fn push_json(items: Array, bytes: &Uint8Array) -> Result<Array, JsValue> {
    let refused = es_json_part(bytes, &items);
    if Array::is_array(&refused) {
        return Ok(refused.unchecked_into());
    }
    match js::get_string(&refused, "bad").as_deref() {
        Some("utf8") => Err(parse_error("JSON stream data is not valid UTF-8")),
        _ => {
            let why = js::get_string(&refused, "why").unwrap_or_default();
            Err(parse_error(&error::msg(&[
                "JSON stream data does not parse: ",
                &why,
            ])))
        }
    }
}

/// A `PARSE_ERROR`.
pub fn parse_error(message: &str) -> JsValue {
    error::new(error::PARSE_ERROR, message, None).into()
}

//! Base64 as request data carries it: SSE `base64` events and access-token halves.
//!
//! Invariants:
//! - `decode` is strict: text it accepts is exactly the canonical encoding of what it decoded,
//!   once CR and LF are removed (one spelling per byte string), and the error is `Length`
//!   exactly when that text's length is not a multiple of four;
//! - `decode(encode(x)) == x`, and `encode` writes only the alphabet and padding, in
//!   `4 * ceil(n / 3)` bytes;
//! - `base64url_decode` is as strict for unpadded base64url: accepted text is the canonical
//!   unpadded base64url of what it decoded.
#![no_main]

use edgestream::base64::{decode, encode, Base64Error};
use edgestream::token::base64url_decode;
use libfuzzer_sys::fuzz_target;

fn url(bytes: &[u8]) -> String {
    encode(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fuzz_target!(|data: &[u8]| {
    let clean: Vec<u8> = data
        .iter()
        .copied()
        .filter(|&b| b != b'\n' && b != b'\r')
        .collect();
    match decode(data) {
        Ok(bytes) => {
            assert_eq!(
                encode(&bytes).as_bytes(),
                clean,
                "not the canonical spelling"
            );
        }
        Err(e) => assert_eq!(
            e == Base64Error::Length,
            !clean.len().is_multiple_of(4),
            "{e:?}"
        ),
    }

    let text = encode(data);
    assert_eq!(text.len(), data.len().div_ceil(3) * 4);
    assert!(text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')));
    assert_eq!(decode(text.as_bytes()).as_deref(), Ok(data));
    let mut out = b"x".to_vec();
    edgestream::base64::encode_into(data, &mut out);
    assert_eq!(&out[1..], text.as_bytes());

    if let Ok(s) = core::str::from_utf8(data) {
        if let Ok(bytes) = base64url_decode(s) {
            assert_eq!(url(&bytes), s, "not the canonical base64url spelling");
        }
    }
    assert_eq!(base64url_decode(&url(data)).as_deref(), Ok(data));
});

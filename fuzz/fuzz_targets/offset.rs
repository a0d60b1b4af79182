//! Offsets: the strict parser of client tokens and the server's own wire form.
//!
//! Invariants:
//! - a token `Offset::parse` accepts is exactly the canonical spelling of what it parsed
//!   (`to_string()` gives the token back), so two spellings never name one position;
//! - `ReadFrom::parse` is the sentinels plus `Offset::parse`, and `from_query` refuses repeats;
//! - the refusal reasons follow the documented order (empty, too long, illegal characters);
//! - wire order is position order, and `new`/`checked_add`/`distance_from` agree with `u64` math.
#![no_main]

use edgestream::offset::{OffsetError, MAX_TOKEN_LEN, OFFSET_LEN};
use edgestream::{Offset, ReadFrom};
use libfuzzer_sys::fuzz_target;

/// A `u64` from up to eight bytes of `data` starting at `at` (missing bytes are zero).
fn word(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (k, slot) in b.iter_mut().enumerate() {
        *slot = data.get(at + k).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

fn check_token(token: &str) {
    let parsed = Offset::parse(token);
    match parsed {
        Ok(o) => {
            assert_eq!(token.len(), OFFSET_LEN, "{token:?}");
            assert_eq!(o.to_string(), token, "accepted a non-canonical spelling");
            assert!(o <= Offset::MAX);
            assert_eq!(Offset::new(o.position()), Some(o));
            assert_eq!(token.parse::<Offset>(), Ok(o));
        }
        Err(e) => {
            if token.is_empty() {
                assert_eq!(e, OffsetError::Empty);
            } else if token.len() > MAX_TOKEN_LEN {
                assert_eq!(e, OffsetError::TooLong);
            } else if token.contains("..")
                || token
                    .chars()
                    .any(|c| matches!(c, ',' | '&' | '=' | '?' | '/' | ' ') || c.is_control())
            {
                assert_eq!(e, OffsetError::IllegalCharacter, "{token:?}");
            } else {
                assert_eq!(e, OffsetError::Unrecognised, "{token:?}");
            }
            assert!(!e.message().is_empty());
            assert_ne!(e, OffsetError::Repeated);
        }
    }

    let read = ReadFrom::parse(token);
    match token {
        "-1" => assert_eq!(read, Ok(ReadFrom::Start)),
        "now" => assert_eq!(read, Ok(ReadFrom::Now)),
        _ => assert_eq!(read, parsed.map(ReadFrom::At)),
    }
    assert_eq!(
        read.map(ReadFrom::is_explicit).unwrap_or(false),
        matches!(read, Ok(ReadFrom::At(_)))
    );
    assert_eq!(ReadFrom::from_query([token]), read);
    assert_eq!(
        ReadFrom::from_query([token, token]),
        Err(OffsetError::Repeated)
    );
}

fuzz_target!(|data: &[u8]| {
    // The whole input as a token, and as `&`-separated query values (the Worker splits the
    // query string itself; each piece must behave like a lone token).
    let text = String::from_utf8_lossy(data);
    check_token(&text);
    for piece in text.split('&') {
        check_token(piece);
    }
    assert_eq!(ReadFrom::from_query([]), Ok(ReadFrom::Start));

    // Arithmetic and ordering on positions drawn from the input.
    let (a, b, n) = (word(data, 0), word(data, 8), word(data, 16));
    for p in [a, b, a % (Offset::MAX.position() + 1), n] {
        match Offset::new(p) {
            Some(o) => {
                assert!(p <= Offset::MAX.position());
                assert_eq!(o.position(), p);
                assert_eq!(Offset::parse(&o.to_string()), Ok(o));
            }
            None => assert!(p > Offset::MAX.position()),
        }
    }
    let oa = Offset::new(a % (Offset::MAX.position() + 1)).unwrap();
    let ob = Offset::new(b % (Offset::MAX.position() + 1)).unwrap();
    assert_eq!(oa.cmp(&ob), oa.to_string().cmp(&ob.to_string()));
    assert_eq!(
        oa.distance_from(ob),
        oa.position().saturating_sub(ob.position())
    );
    match oa.checked_add(n) {
        Some(sum) => {
            assert_eq!(Some(sum.position()), oa.position().checked_add(n));
            assert!(sum >= oa);
            assert_eq!(sum.distance_from(oa), n);
        }
        None => assert!(oa
            .position()
            .checked_add(n)
            .is_none_or(|s| s > Offset::MAX.position())),
    }
});

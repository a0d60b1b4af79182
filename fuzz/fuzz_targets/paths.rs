//! Path rules: subscription globs (`__ds/subscriptions` links) and access-token scopes.
//!
//! Invariants:
//! - `glob_matches` agrees with a naive backtracking matcher written from its documentation
//!   (`*` alone = one segment, `**` = zero or more segments, `*` inside a segment = any run);
//! - every path a pattern matches starts with the pattern's `literal_prefix` (the Worker finds a
//!   new stream's subscriptions by that prefix, so a match outside it would never be woken);
//! - a pattern without `*` matches exactly itself and is its own prefix; `**` matches every path;
//! - a valid path matches itself; `covers` is the documented segment-boundary rule;
//! - `token::split` gives back non-empty base64url halves of the token, and base64url decodes
//!   what base64 encodes.
#![no_main]

use arbitrary::Arbitrary;
use edgestream::base64;
use edgestream::subscription::{glob_matches, is_valid_path, is_valid_pattern, literal_prefix};
use edgestream::token::{base64url_decode, covers, split};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    pattern: &'a str,
    path: &'a str,
    token: &'a str,
    bytes: &'a [u8],
}

/// `*` matches any run of bytes within one segment.
fn naive_segment(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|k| naive_segment(rest, &s[k..])),
        Some((c, rest)) => s.first() == Some(c) && naive_segment(rest, &s[1..]),
    }
}

/// `**` matches any run of segments; anything else matches one segment.
fn naive_path(p: &[&str], s: &[&str]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((&"**", rest)) => (0..=s.len()).any(|k| naive_path(rest, &s[k..])),
        Some((seg, rest)) => {
            !s.is_empty()
                && naive_segment(seg.as_bytes(), s[0].as_bytes())
                && naive_path(rest, &s[1..])
        }
    }
}

fn check_glob(pattern: &str, path: &str) {
    let matched = glob_matches(pattern, path);
    // The naive matcher is exponential; keep it to inputs where that cannot bite.
    if pattern.len() <= 24 && path.len() <= 32 && pattern.matches('*').count() <= 6 {
        let p: Vec<&str> = pattern.split('/').collect();
        let s: Vec<&str> = path.split('/').collect();
        assert_eq!(matched, naive_path(&p, &s), "{pattern:?} vs {path:?}");
    }
    let prefix = literal_prefix(pattern);
    if matched {
        assert!(
            path.starts_with(&prefix),
            "{path:?} matches {pattern:?} but lies outside its literal prefix {prefix:?}"
        );
    }
    if !pattern.contains('*') {
        assert_eq!(prefix, pattern);
        assert_eq!(matched, pattern == path);
    }
    assert!(pattern.starts_with(&prefix));
}

fuzz_target!(|input: Input<'_>| {
    let Input {
        pattern,
        path,
        token,
        bytes,
    } = input;

    check_glob(pattern, path);
    check_glob(path, pattern);
    let _ = is_valid_pattern(pattern);
    assert!(glob_matches("**", path));
    if is_valid_path(path) {
        assert!(is_valid_pattern(path) || path.contains("**"));
        if !path.contains('*') {
            assert!(glob_matches(path, path));
        }
    }

    // Token scopes.
    let covered = covers(pattern, path);
    let expected = pattern.is_empty()
        || path == pattern
        || if pattern.ends_with('/') {
            path.starts_with(pattern)
        } else {
            path.starts_with(&format!("{pattern}/"))
        };
    assert_eq!(covered, expected, "{pattern:?} covers {path:?}");
    assert!(covers(path, path));

    // Token syntax.
    if let Ok((payload, signature)) = split(token) {
        assert!(!payload.is_empty() && !signature.is_empty());
        assert_eq!(format!("{payload}.{signature}"), token);
        let b64url = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        assert!(b64url(payload) && b64url(signature));
    }
    let url = base64::encode(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_");
    assert_eq!(base64url_decode(&url).as_deref(), Ok(bytes));
    let _ = base64url_decode(token);
});

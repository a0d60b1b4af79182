//! Rules of the reserved subscription APIs (`__ds/subscriptions/:id`): which stream paths a
//! pattern links, how long leases may be, and when a failed webhook is tried again.

use alloc::string::String;
use alloc::vec::Vec;

/// Shortest, default and longest lease a subscription may ask for.
pub const MIN_LEASE_MS: u64 = 1_000;
pub const DEFAULT_LEASE_MS: u64 = 30_000;
pub const MAX_LEASE_MS: u64 = 600_000;

/// Webhook retries back off from one second to a minute.
pub const RETRY_BASE_MS: u64 = 1_000;
pub const RETRY_MAX_MS: u64 = 60_000;

/// Why a subscription request is refused; `code()` is the protocol's error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriptionError {
    InvalidRequest(&'static str),
    NotFound,
    AlreadyExists,
    WebhookUrlRejected(&'static str),
    TokenInvalid,
    Fenced,
    AlreadyClaimed,
    NoPendingWork,
    InvalidOffset,
}

impl SubscriptionError {
    pub fn status(self) -> u16 {
        match self {
            SubscriptionError::InvalidRequest(_)
            | SubscriptionError::WebhookUrlRejected(_)
            | SubscriptionError::InvalidOffset => 400,
            SubscriptionError::TokenInvalid => 401,
            SubscriptionError::NotFound => 404,
            SubscriptionError::AlreadyExists
            | SubscriptionError::Fenced
            | SubscriptionError::AlreadyClaimed
            | SubscriptionError::NoPendingWork => 409,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            SubscriptionError::InvalidRequest(_) => "INVALID_REQUEST",
            SubscriptionError::NotFound => "SUBSCRIPTION_NOT_FOUND",
            SubscriptionError::AlreadyExists => "SUBSCRIPTION_ALREADY_EXISTS",
            SubscriptionError::WebhookUrlRejected(_) => "WEBHOOK_URL_REJECTED",
            SubscriptionError::TokenInvalid => "TOKEN_INVALID",
            SubscriptionError::Fenced => "FENCED",
            SubscriptionError::AlreadyClaimed => "ALREADY_CLAIMED",
            SubscriptionError::NoPendingWork => "NO_PENDING_WORK",
            SubscriptionError::InvalidOffset => "INVALID_OFFSET",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            SubscriptionError::InvalidRequest(m) | SubscriptionError::WebhookUrlRejected(m) => m,
            SubscriptionError::NotFound => "subscription not found",
            SubscriptionError::AlreadyExists => {
                "a subscription with this id exists with a different configuration"
            }
            SubscriptionError::TokenInvalid => "token invalid",
            SubscriptionError::Fenced => "wake generation is stale",
            SubscriptionError::AlreadyClaimed => "another worker holds the lease",
            SubscriptionError::NoPendingWork => "subscription has no pending work",
            SubscriptionError::InvalidOffset => "offset is not a valid offset of the stream",
        }
    }
}

/// A stream path as subscriptions name it: root-relative, non-empty segments, no `__ds`.
pub fn is_valid_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 1024
        && !path.starts_with("__ds")
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.chars().any(char::is_control))
}

/// A pattern: segments separated by `/`; `*` alone matches one segment, `**` zero or more,
/// and `*` inside a segment matches any run of characters within it.
pub fn is_valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.len() <= 1024
        && pattern
            .split('/')
            .all(|s| !s.is_empty() && (s == "**" || !s.contains("**")))
}

/// Whether `path` matches `pattern` (see [`is_valid_pattern`]). Dynamic programming over
/// segments (and characters within a segment), so no pattern can make it exponential.
pub fn glob_matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    wildcard_match(
        &pattern,
        &path,
        |p| *p == "**",
        |p, s| wildcard_match(p.as_bytes(), s.as_bytes(), |c| *c == b'*', |a, b| a == b),
    )
}

/// Classic wildcard matching: `is_any(p)` items match any run of items (including none),
/// other items must `matches` exactly one item. O(len(pattern) * len(text)).
fn wildcard_match<P, T>(
    pattern: &[P],
    text: &[T],
    is_any: impl Fn(&P) -> bool,
    matches: impl Fn(&P, &T) -> bool,
) -> bool {
    // row[j]: pattern[..i] matches text[..j]
    let mut row = alloc::vec![false; text.len() + 1];
    row[0] = true;
    for p in pattern {
        let mut next = alloc::vec![false; text.len() + 1];
        if is_any(p) {
            let mut seen = false;
            for j in 0..=text.len() {
                seen |= row[j];
                next[j] = seen;
            }
        } else {
            for j in 1..=text.len() {
                next[j] = row[j - 1] && matches(p, &text[j - 1]);
            }
        }
        row = next;
    }
    row[text.len()]
}

/// The literal start of a pattern (whole segments before the first wildcard, with the
/// trailing `/`), so a store can range-scan instead of testing every path. Every path the
/// pattern matches starts with it.
pub fn literal_prefix(pattern: &str) -> String {
    let mut prefix = String::new();
    let mut segments = pattern.split('/');
    while let Some(segment) = segments.next() {
        if segment.contains('*') {
            // Trailing `**`s may match no segment at all (`events/**` matches `events`), and then
            // the path ends where the literal part does, without the `/`.
            if segment == "**" && segments.all(|s| s == "**") {
                prefix.pop();
            }
            return prefix;
        }
        prefix.push_str(segment);
        prefix.push('/');
    }
    // No wildcard: the pattern names one path exactly.
    prefix.pop();
    prefix
}

/// A requested lease, checked against the protocol's bounds.
pub fn lease_ms(requested: Option<u64>) -> Result<u64, SubscriptionError> {
    match requested {
        None => Ok(DEFAULT_LEASE_MS),
        Some(ms) if (MIN_LEASE_MS..=MAX_LEASE_MS).contains(&ms) => Ok(ms),
        Some(_) => Err(SubscriptionError::InvalidRequest(
            "lease_ttl_ms must be between 1000 and 600000",
        )),
    }
}

/// Delay before webhook attempt `attempt + 1` (1-based failures): doubling from one second to
/// a minute, with ±20% jitter from `random` (any `u32`).
pub fn retry_delay_ms(failures: u32, random: u32) -> u64 {
    let exponent = failures.saturating_sub(1).min(16);
    let base = (RETRY_BASE_MS << exponent).min(RETRY_MAX_MS);
    // jitter in [-20%, +20%]
    let spread = base * 2 / 5;
    let offset = (u64::from(random) % (spread + 1)) as i64 - (spread / 2) as i64;
    (base as i64 + offset).max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_star_matches_one_segment() {
        assert!(glob_matches("events/*", "events/a"));
        assert!(!glob_matches("events/*", "events"));
        assert!(!glob_matches("events/*", "events/a/b"));
        assert!(!glob_matches("events/*", "other/a"));
    }

    #[test]
    fn double_star_matches_zero_or_more_segments() {
        assert!(glob_matches("events/**", "events"));
        assert!(glob_matches("events/**", "events/a/b/c"));
        assert!(glob_matches("**/log", "a/b/log"));
        assert!(glob_matches("**/log", "log"));
        assert!(glob_matches("a/**/z", "a/z"));
        assert!(glob_matches("a/**/z", "a/b/c/z"));
        assert!(!glob_matches("a/**/z", "a/b/c"));
        assert!(glob_matches("**", "anything/at/all"));
    }

    #[test]
    fn star_inside_a_segment() {
        assert!(glob_matches("events/user-*", "events/user-42"));
        assert!(glob_matches("events/*-log", "events/a-log"));
        assert!(!glob_matches("events/user-*", "events/admin-1"));
        assert!(!glob_matches("events/user-*", "events/user-1/x"));
    }

    #[test]
    fn exact_patterns() {
        assert!(glob_matches("manual/a", "manual/a"));
        assert!(!glob_matches("manual/a", "manual/ab"));
        assert!(!glob_matches("manual/a", "manual"));
    }

    #[test]
    fn pattern_and_path_validation() {
        assert!(is_valid_pattern("events/*"));
        assert!(is_valid_pattern("**"));
        assert!(!is_valid_pattern(""));
        assert!(!is_valid_pattern("events//a"));
        assert!(!is_valid_pattern("events/a**"));
        assert!(is_valid_path("events/a"));
        assert!(!is_valid_path("__ds/subscriptions/x"));
        assert!(!is_valid_path("a/../b"));
        assert!(!is_valid_path("a//b"));
        assert!(!is_valid_path(""));
    }

    #[test]
    fn literal_prefixes() {
        assert_eq!(literal_prefix("events/*"), "events/");
        assert_eq!(literal_prefix("a/b/**"), "a/b");
        assert_eq!(literal_prefix("a/**/z"), "a/");
        assert_eq!(literal_prefix("**"), "");
        assert_eq!(literal_prefix("ev*/x"), "");
        assert_eq!(literal_prefix("manual/a"), "manual/a");
    }

    /// Found by `cargo fuzz run paths` (input `/**` against the empty path): a trailing `**`
    /// matches zero segments, so the prefix a store scans by must not end in `/`, or a
    /// subscription to `events/**` would never be woken for the stream `events`.
    #[test]
    fn every_match_lies_inside_the_literal_prefix() {
        for (pattern, path) in [
            ("/**", ""),
            ("events/**", "events"),
            ("events/**/**", "events"),
            ("a/b/**", "a/b"),
            ("a/**/z", "a/z"),
            ("a/*", "a/x"),
            ("**", "x"),
        ] {
            assert!(glob_matches(pattern, path), "{pattern:?} {path:?}");
            let prefix = literal_prefix(pattern);
            assert!(
                path.starts_with(&prefix),
                "{path:?} matches {pattern:?} but not its prefix {prefix:?}"
            );
        }
    }

    #[test]
    fn lease_bounds() {
        assert_eq!(lease_ms(None), Ok(DEFAULT_LEASE_MS));
        assert_eq!(lease_ms(Some(1_000)), Ok(1_000));
        assert_eq!(lease_ms(Some(600_000)), Ok(600_000));
        assert!(lease_ms(Some(999)).is_err());
        assert!(lease_ms(Some(600_001)).is_err());
    }

    #[test]
    fn retry_delays_double_and_cap_with_jitter() {
        for random in [0, 1, 12345, u32::MAX] {
            let first = retry_delay_ms(1, random);
            assert!((800..=1_200).contains(&first), "{first}");
            let third = retry_delay_ms(3, random);
            assert!((3_200..=4_800).contains(&third), "{third}");
            let late = retry_delay_ms(30, random);
            assert!((48_000..=72_000).contains(&late), "{late}");
        }
    }

    #[test]
    fn error_codes_and_statuses() {
        assert_eq!(SubscriptionError::Fenced.status(), 409);
        assert_eq!(SubscriptionError::Fenced.code(), "FENCED");
        assert_eq!(SubscriptionError::TokenInvalid.status(), 401);
        assert_eq!(
            SubscriptionError::WebhookUrlRejected("x").code(),
            "WEBHOOK_URL_REJECTED"
        );
        assert_eq!(SubscriptionError::NoPendingWork.status(), 409);
    }

    proptest::proptest! {
        #[test]
        fn glob_never_panics(pattern in "[a-z*/]{0,12}", path in "[a-z/]{0,12}") {
            let _ = glob_matches(&pattern, &path);
        }

        #[test]
        fn matches_start_with_the_literal_prefix(pattern in "[a*/]{0,10}", path in "[a/]{0,10}") {
            if glob_matches(&pattern, &path) {
                proptest::prop_assert!(path.starts_with(&literal_prefix(&pattern)));
            }
        }

        #[test]
        fn literal_patterns_match_only_themselves(path in "[a-z]{1,4}(/[a-z]{1,4}){0,3}", other in "[a-z]{1,4}(/[a-z]{1,4}){0,3}") {
            proptest::prop_assert!(glob_matches(&path, &path));
            proptest::prop_assert_eq!(glob_matches(&path, &other), path == other);
        }
    }
}

//! Rules of the reserved subscription APIs (`__ds/subscriptions/:id`): which stream paths a
//! pattern links, how long leases may be, and when a failed webhook is tried again.

use alloc::string::String;
use alloc::vec::Vec;

/// Shortest lease a subscription may ask for (`lease_ttl_ms`; 400 below it).
pub const MIN_LEASE_MS: u64 = 1_000;
/// The lease of a subscription that asks for none.
pub const DEFAULT_LEASE_MS: u64 = 30_000;
/// Longest lease a subscription may ask for (400 above it): a crashed worker's wake lapses
/// within it.
pub const MAX_LEASE_MS: u64 = 600_000;

/// A failed webhook is tried again after a second, then backs off...
pub const RETRY_BASE_MS: u64 = 1_000;
/// ...to at most a minute between tries.
pub const RETRY_MAX_MS: u64 = 60_000;
/// Most bytes of a failed delivery's error a subscription keeps to show in its `GET`.
pub const MAX_LAST_ERROR_BYTES: usize = 200;

/// Most explicit streams one request may name (a PUT's `streams`, or `POST .../streams`): at
/// 1024 bytes a path, about the 1 MiB body the edge accepts.
pub const MAX_STREAMS_PER_REQUEST: usize = 1_000;
/// Most explicit streams one subscription may hold. Each is a row of its own, so storage is not
/// what limits them; the bound keeps a GET, a wake and a webhook body that list them sane.
pub const MAX_EXPLICIT_STREAMS: usize = 10_000;
/// Longest description a subscription keeps (it lives in its one record row).
pub const MAX_DESCRIPTION_BYTES: usize = 4_096;
/// Longest webhook URL a subscription keeps (it lives in the same row).
pub const MAX_WEBHOOK_URL_BYTES: usize = 4_096;
/// Most bytes of a webhook's reply that are read. A reply says `{"done": true}` or not; a
/// longer one is cut off and does not end the wake.
pub const MAX_WEBHOOK_REPLY_BYTES: usize = 8 * 1024;
/// Most streams one wake lists (a webhook body, a claim's answer, a run of wake events). A
/// wake lists only streams with data past their cursor; with more than this pending, the next
/// wake (right after this one is acked) lists the next ones, from where this list ended. So a
/// webhook body stays under about 75 KB for usual paths (600 KB with 1 KiB paths), however
/// many streams the subscription covers.
pub const MAX_WAKE_STREAMS: usize = 500;

/// How many linked streams a subscription's `GET` (and its `PUT`'s answer) lists when the
/// request names no `limit`, and the most it may name. A pattern may link millions of streams;
/// one answer listing them all would pass a Worker's memory and CPU limits and be of no use to
/// its reader. At most about 1.2 MB with 1 KiB paths, 200 KB for usual ones.
pub const STREAMS_PAGE_MAX: usize = 1_000;

/// Which page of a subscription's linked streams a `GET` asks for: at most `limit` of them, in
/// path order (bytewise), the first after `after` (the last path of the page before), or from
/// the first. A cursor that is a path, not a position, so streams linked or dropped while a
/// reader pages through move no other stream: each stream linked throughout is listed exactly
/// once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamsPage {
    /// Most streams listed.
    pub limit: usize,
    /// The path the page starts after (`None`: the first stream).
    pub after: Option<String>,
}

impl Default for StreamsPage {
    fn default() -> Self {
        StreamsPage {
            limit: STREAMS_PAGE_MAX,
            after: None,
        }
    }
}

impl StreamsPage {
    /// Reads the page from a request's decoded query parameters: `limit` (a whole number from
    /// 1 to [`STREAMS_PAGE_MAX`]) and `streams_after` (a stream path), each at most once.
    /// Other parameters (an access `token`, say) are not this page's concern.
    pub fn from_query<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<StreamsPage, SubscriptionError> {
        let mut limit = None;
        let mut after = None;
        for (name, value) in pairs {
            match name {
                "limit" if limit.is_some() => {
                    return Err(SubscriptionError::InvalidRequest("limit may be given once"))
                }
                "limit" => limit = Some(value),
                "streams_after" if after.is_some() => {
                    return Err(SubscriptionError::InvalidRequest(
                        "streams_after may be given once",
                    ))
                }
                "streams_after" => after = Some(value),
                _ => {}
            }
        }
        let limit = match limit {
            None => STREAMS_PAGE_MAX,
            // Digits only: `parse` would also take a sign.
            Some(v) => v
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| v.parse::<usize>().ok())
                .flatten()
                .filter(|n| (1..=STREAMS_PAGE_MAX).contains(n))
                .ok_or(SubscriptionError::InvalidRequest(
                    "limit must be a whole number from 1 to 1000",
                ))?,
        };
        let after = match after {
            None => None,
            Some(path) if is_valid_path(path) => Some(String::from(path)),
            Some(_) => {
                return Err(SubscriptionError::InvalidRequest(
                    "streams_after must be a stream path",
                ))
            }
        };
        Ok(StreamsPage { limit, after })
    }
}

// Why acks are refused with `INVALID_OFFSET`, as the reference server refuses them.
/// An ack whose offset does not parse, or that its stream would not start a read at (inside a
/// JSON message).
pub const ACK_NOT_AN_OFFSET: &str = "offset is not a valid offset of the stream";
/// An ack behind what the subscription already has for the stream.
pub const ACK_REGRESSES: &str = "ack offset is before the subscription's cursor for the stream";
/// An ack for a stream the subscription does not link.
pub const ACK_UNKNOWN_STREAM: &str = "ack names a stream the subscription does not cover";

/// Why a subscription request is refused; `code()` is the protocol's error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriptionError {
    /// A body or path the API cannot take (400); the text says what.
    InvalidRequest(&'static str),
    /// No such subscription (404).
    NotFound,
    /// The id is taken by a subscription with another configuration (409).
    AlreadyExists,
    /// A webhook URL the server will not call (400), for its scheme or address.
    WebhookUrlRejected(&'static str),
    /// A wake token that is not the current one's (401).
    TokenInvalid,
    /// An ack or release for an older wake generation (409).
    Fenced,
    /// Another worker holds the wake (409).
    AlreadyClaimed,
    /// Nothing to claim (409).
    NoPendingWork,
    /// An ack the subscription's cursors cannot take; the text says why.
    InvalidOffset(&'static str),
}

impl SubscriptionError {
    /// The HTTP status to answer with.
    pub fn status(self) -> u16 {
        match self {
            SubscriptionError::InvalidRequest(_) | SubscriptionError::WebhookUrlRejected(_) => 400,
            SubscriptionError::TokenInvalid => 401,
            SubscriptionError::NotFound => 404,
            // An ack past what the subscription was told of conflicts with its state, as the
            // reference server answers it.
            SubscriptionError::AlreadyExists
            | SubscriptionError::Fenced
            | SubscriptionError::AlreadyClaimed
            | SubscriptionError::NoPendingWork
            | SubscriptionError::InvalidOffset(_) => 409,
        }
    }

    /// The protocol's error code, for the JSON error body.
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
            SubscriptionError::InvalidOffset(_) => "INVALID_OFFSET",
        }
    }

    /// The error body's short message.
    pub fn message(self) -> &'static str {
        match self {
            SubscriptionError::InvalidRequest(m)
            | SubscriptionError::WebhookUrlRejected(m)
            | SubscriptionError::InvalidOffset(m) => m,
            SubscriptionError::NotFound => "subscription not found",
            SubscriptionError::AlreadyExists => {
                "a subscription with this id exists with a different configuration"
            }
            SubscriptionError::TokenInvalid => "token invalid",
            SubscriptionError::Fenced => "wake generation is stale",
            SubscriptionError::AlreadyClaimed => "another worker holds the lease",
            SubscriptionError::NoPendingWork => "subscription has no pending work",
        }
    }
}

impl core::fmt::Display for SubscriptionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.message())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SubscriptionError {}

/// A stream path as subscriptions name it: root-relative, non-empty segments, not under the
/// reserved first segment `__ds` (`__dsq/a` is a stream like any other).
pub fn is_valid_path(path: &str) -> bool {
    has_path_shape(path, |_| true)
}

/// A pattern: segments separated by `/`; `*` alone matches one segment, `**` zero or more,
/// and `*` inside a segment matches any run of characters within it. It keeps to the rules of
/// [`is_valid_path`] too, so one no stream path could match (a first segment `__ds`, a `..`
/// segment) is refused rather than kept as a subscription that never fires.
pub fn is_valid_pattern(pattern: &str) -> bool {
    has_path_shape(pattern, |s| s == "**" || !s.contains("**"))
}

/// The rules paths and patterns share, and `segment`'s for each segment besides.
fn has_path_shape(text: &str, segment: impl Fn(&str) -> bool) -> bool {
    !text.is_empty()
        && text.len() <= 1024
        && text.split('/').next() != Some("__ds")
        && !text.contains('\\')
        && text.split('/').all(|s| {
            !s.is_empty() && s != "." && s != ".." && !s.chars().any(char::is_control) && segment(s)
        })
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

/// The explicit streams a request names: each a valid path, at most
/// [`MAX_STREAMS_PER_REQUEST`] of them; answered sorted and without duplicates.
pub fn explicit_streams(mut paths: Vec<String>) -> Result<Vec<String>, SubscriptionError> {
    if paths.len() > MAX_STREAMS_PER_REQUEST {
        return Err(SubscriptionError::InvalidRequest(
            "a request may name at most 1000 streams",
        ));
    }
    if paths.iter().any(|p| !is_valid_path(p)) {
        return Err(SubscriptionError::InvalidRequest(
            "streams must be stream paths",
        ));
    }
    paths.sort_unstable();
    paths.dedup();
    Ok(paths)
}

/// Whether a subscription that holds `held` explicit streams may take `added` more.
pub fn check_explicit_total(held: usize, added: usize) -> Result<(), SubscriptionError> {
    if held.saturating_add(added) > MAX_EXPLICIT_STREAMS {
        return Err(SubscriptionError::InvalidRequest(
            "a subscription may name at most 10000 explicit streams",
        ));
    }
    Ok(())
}

/// When a subscription's alarm should fire next: when a delivery is owed, at its retry time
/// (`None`: at once); otherwise when the lease ends. A lease runs only once a wake has been
/// delivered, so a delivery that keeps failing goes on being retried with backoff instead of
/// stalling behind a lease that has already ended. Never before `now + 1`: an alarm handler that
/// sets the alarm to the instant it is running for (its clock stands still between I/O) has it
/// dropped when it returns.
pub fn next_alarm(
    deliver: bool,
    next_attempt_at: Option<i64>,
    lease_deadline: Option<i64>,
    now: i64,
) -> Option<i64> {
    let at = if deliver {
        next_attempt_at.unwrap_or(now)
    } else {
        lease_deadline?
    };
    Some(at.max(now.saturating_add(1)))
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

/// What follows a failed delivery (a webhook post or a wake event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try the delivery again then (Unix ms).
    RetryAt(i64),
    /// Deliveries have failed for the whole give-up window: stop retrying. The data stays
    /// owed; new data, or the subscription's `PUT`, tries again.
    GiveUp {
        /// The earliest new data may try again (Unix ms): one more backoff delay on, so a busy
        /// stream over a dead endpoint still costs at most one attempt per capped delay.
        resume_at: i64,
    },
}

/// After failure number `failures` (1-based) at `now`, in a run of failures that began at
/// `failing_since`: a retry with [`retry_delay_ms`]'s backoff, never set past the end of the
/// give-up window (`failing_since + give_up_ms`), so the last try falls at its end; or, once a
/// failure comes at or after that end, giving up.
pub fn after_failure(
    failures: u32,
    failing_since: i64,
    now: i64,
    give_up_ms: u64,
    random: u32,
) -> AfterFailure {
    let delay = i64::try_from(retry_delay_ms(failures, random)).unwrap_or(i64::MAX);
    let next = now.saturating_add(delay);
    let end = failing_since.saturating_add(i64::try_from(give_up_ms).unwrap_or(i64::MAX));
    if now >= end {
        AfterFailure::GiveUp { resume_at: next }
    } else {
        AfterFailure::RetryAt(next.min(end))
    }
}

/// A failed delivery's error as a subscription keeps it: at most [`MAX_LAST_ERROR_BYTES`],
/// cut at a character boundary.
pub fn last_error(error: &str) -> String {
    let mut end = error.len().min(MAX_LAST_ERROR_BYTES);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    String::from(&error[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streams_page_reads_limit_and_cursor_and_refuses_bad_values() {
        fn page(q: &[(&str, &str)]) -> Result<StreamsPage, SubscriptionError> {
            StreamsPage::from_query(q.iter().copied())
        }
        assert_eq!(page(&[]), Ok(StreamsPage::default()));
        assert_eq!(StreamsPage::default().limit, STREAMS_PAGE_MAX);
        assert_eq!(
            page(&[
                ("limit", "5"),
                ("streams_after", "events/a"),
                ("token", "t")
            ]),
            Ok(StreamsPage {
                limit: 5,
                after: Some(String::from("events/a"))
            })
        );
        assert_eq!(page(&[("limit", "1000")]).map(|p| p.limit), Ok(1000));
        assert_eq!(page(&[("limit", "007")]).map(|p| p.limit), Ok(7));
        let limit = Err(SubscriptionError::InvalidRequest(
            "limit must be a whole number from 1 to 1000",
        ));
        for bad in [
            "0",
            "1001",
            "",
            "-1",
            "+5",
            " 5",
            "5 ",
            "1.5",
            "x",
            "99999999999999999999999",
        ] {
            assert_eq!(page(&[("limit", bad)]), limit, "{bad:?}");
        }
        let after = Err(SubscriptionError::InvalidRequest(
            "streams_after must be a stream path",
        ));
        for bad in [
            "", "a//b", "/a", "a/", "__ds/x", "a/../b", "a\\b", "a\u{7}b",
        ] {
            assert_eq!(page(&[("streams_after", bad)]), after, "{bad:?}");
        }
        let long = "x".repeat(1025);
        assert_eq!(page(&[("streams_after", &long)]), after);
        assert_eq!(
            page(&[("limit", "1"), ("limit", "1")]),
            Err(SubscriptionError::InvalidRequest("limit may be given once"))
        );
        assert_eq!(
            page(&[("streams_after", "a"), ("streams_after", "b")]),
            Err(SubscriptionError::InvalidRequest(
                "streams_after may be given once"
            ))
        );
    }

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
        // Patterns no stream path can match.
        for never in [
            "__ds/**", "__ds", "../*", "a/./b", "a/..", "a\\b", "a/\u{7}",
        ] {
            assert!(!is_valid_pattern(never), "{never}");
        }
        // Only the exact reserved segment is reserved.
        assert!(is_valid_pattern("__dsq/*"));
        assert!(is_valid_pattern("__ds*/x"));
        assert!(is_valid_pattern("*/__ds"));
        assert!(is_valid_path("events/a"));
        assert!(!is_valid_path("__ds/subscriptions/x"));
        assert!(!is_valid_path("__ds"));
        assert!(is_valid_path("__dsq1/a"));
        assert!(is_valid_path("a/__ds"));
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

    /// The whole sequence for a one-minute window: 1 s, 2 s, 4 s ... (±20%), the last retry
    /// at the window's end, and giving up on the failure that comes then.
    #[test]
    fn failures_back_off_until_the_window_ends_then_give_up() {
        for random in [0, 7, 99_999, u32::MAX] {
            let (since, window): (i64, u64) = (1_000_000, 60_000);
            let end = since + window as i64;
            let mut now = since;
            let mut delays = Vec::new();
            let mut failures = 0;
            let resume_at = loop {
                failures += 1;
                match after_failure(failures, since, now, window, random) {
                    AfterFailure::RetryAt(at) => {
                        assert!(at > now && at <= end, "{at}");
                        delays.push(at - now);
                        now = at;
                    }
                    AfterFailure::GiveUp { resume_at } => break resume_at,
                }
                assert!(failures < 100, "never gave up");
            };
            assert_eq!(now, end, "the last try is at the window's end");
            // Doubling, with jitter, until the window's end cuts the last delay short.
            let bases = [1_000, 2_000, 4_000, 8_000, 16_000];
            for (delay, base) in delays.iter().zip(bases) {
                assert!((base * 4 / 5..=base * 6 / 5).contains(delay), "{delays:?}");
            }
            assert!(delays.len() <= 7, "{delays:?}");
            // New data may try again after one more backoff delay, capped at a minute.
            let wait = resume_at - now;
            assert!((1..=RETRY_MAX_MS as i64 * 6 / 5).contains(&wait), "{wait}");
        }
    }

    #[test]
    fn a_failure_after_giving_up_gives_up_again_at_once() {
        // The run of failures goes on (no success came): its window has long ended.
        let outcome = after_failure(40, 0, 10_000_000, 60_000, 5);
        let AfterFailure::GiveUp { resume_at } = outcome else {
            panic!("{outcome:?}");
        };
        assert!((10_000_000 + 48_000..=10_000_000 + 72_000).contains(&resume_at));
        // A long window: plain backoff, capped at a minute with its jitter.
        let long = after_failure(30, 0, 3_600_000, 86_400_000, 5);
        let AfterFailure::RetryAt(at) = long else {
            panic!("{long:?}");
        };
        assert!(
            (3_600_000 + 48_000..=3_600_000 + 72_000).contains(&at),
            "{at}"
        );
        // Times near the ends of i64 do not overflow.
        let far = after_failure(1, i64::MAX - 10, i64::MAX - 5, u64::MAX, 0);
        assert_eq!(far, AfterFailure::RetryAt(i64::MAX));
    }

    #[test]
    fn last_errors_are_cut_short_on_a_character_boundary() {
        assert_eq!(last_error("webhook answered 500"), "webhook answered 500");
        let long = "é".repeat(150);
        let cut = last_error(&long);
        assert!(cut.len() <= MAX_LAST_ERROR_BYTES && cut.len() >= MAX_LAST_ERROR_BYTES - 1);
        assert!(long.starts_with(&cut));
    }

    #[test]
    fn explicit_streams_are_checked_sorted_and_deduplicated() {
        let paths = |v: &[&str]| v.iter().map(|p| String::from(*p)).collect::<Vec<_>>();
        assert_eq!(
            explicit_streams(paths(&["b", "a/x", "b"])),
            Ok(paths(&["a/x", "b"]))
        );
        assert!(explicit_streams(paths(&["a", "a//b"])).is_err());
        assert!(explicit_streams(paths(&["__ds/x"])).is_err());
        // No URL names a stream with a backslash.
        assert!(explicit_streams(paths(&["a\\b"])).is_err());
        let at_limit: Vec<String> = (0..MAX_STREAMS_PER_REQUEST)
            .map(|i| alloc::format!("s/{i}"))
            .collect();
        assert_eq!(explicit_streams(at_limit).map(|v| v.len()), Ok(1_000));
        // One more is refused with a 400, even when every path repeats (the count is of what
        // was sent: a body this large is refused before any of it is looked at).
        let over: Vec<String> = (0..=MAX_STREAMS_PER_REQUEST)
            .map(|_| String::from("same"))
            .collect();
        let refused = explicit_streams(over).map(|_| ());
        assert_eq!(refused.map_err(SubscriptionError::status), Err(400));
    }

    #[test]
    fn explicit_streams_per_subscription_are_bounded() {
        assert!(check_explicit_total(0, MAX_EXPLICIT_STREAMS).is_ok());
        assert!(check_explicit_total(MAX_EXPLICIT_STREAMS - 1, 1).is_ok());
        assert!(check_explicit_total(MAX_EXPLICIT_STREAMS, 1).is_err());
        assert!(check_explicit_total(usize::MAX, 1).is_err());
        assert!(check_explicit_total(MAX_EXPLICIT_STREAMS, 0).is_ok());
    }

    /// The audit's lost wake: a webhook lease of one second had ended while its delivery was
    /// still being retried, and the alarm went to the lease's end (already past) instead of
    /// the retry, so it was set for the instant being handled and dropped.
    #[test]
    fn alarms_follow_owed_deliveries_not_leases() {
        let now = 10_000;
        // A retry is owed: its time counts, a lease that has ended does not.
        assert_eq!(
            next_alarm(true, Some(14_000), Some(9_000), now),
            Some(14_000)
        );
        assert_eq!(
            next_alarm(true, Some(14_000), Some(12_000), now),
            Some(14_000)
        );
        // Owed at once: as soon as possible, but never the instant being handled.
        assert_eq!(next_alarm(true, None, None, now), Some(now + 1));
        assert_eq!(next_alarm(true, Some(5_000), None, now), Some(now + 1));
        // Nothing owed: the lease's end, if any.
        assert_eq!(next_alarm(false, None, Some(12_000), now), Some(12_000));
        assert_eq!(
            next_alarm(false, Some(11_000), Some(12_000), now),
            Some(12_000)
        );
        assert_eq!(next_alarm(false, None, Some(9_000), now), Some(now + 1));
        assert_eq!(next_alarm(false, None, None, now), None);
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
        let regress = SubscriptionError::InvalidOffset(ACK_REGRESSES);
        assert_eq!(regress.status(), 409);
        assert_eq!(regress.code(), "INVALID_OFFSET");
        assert_eq!(regress.message(), ACK_REGRESSES);
        assert_eq!(SubscriptionError::InvalidRequest("x").status(), 400);
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

//! Subscription rules: the paths and patterns a request names, the explicit streams it lists,
//! the lease it asks for, and the webhook backoff and alarm times.
//!
//! Invariants:
//! - a valid path or pattern is non-empty, at most 1024 bytes, has no empty, `.` or `..`
//!   segment, no control character or backslash, and no first segment `__ds`; a valid path is
//!   a valid pattern unless it has a `**` inside a segment;
//! - `explicit_streams` accepts exactly lists of at most 1000 valid paths and answers them
//!   sorted, without duplicates, with the same set of paths;
//! - `check_explicit_total` caps the total at 10000, without overflowing;
//! - `lease_ms` takes exactly 1000..=600000 and defaults to 30000;
//! - a webhook retry waits between 80% and 120% of the doubling base, never past 72 s;
//! - the next alarm is never before `now + 1`, and is the owed delivery or the lease's end.
#![no_main]

use arbitrary::Arbitrary;
use edgestream::subscription::{
    check_explicit_total, explicit_streams, glob_matches, is_valid_path, is_valid_pattern,
    lease_ms, next_alarm, retry_delay_ms, DEFAULT_LEASE_MS, MAX_EXPLICIT_STREAMS, MAX_LEASE_MS,
    MAX_STREAMS_PER_REQUEST, MIN_LEASE_MS, RETRY_BASE_MS, RETRY_MAX_MS,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    paths: Vec<String>,
    /// Repeats the list this many times (so lists pass the 1000 cap).
    repeat: u8,
    held: usize,
    added: usize,
    lease: Option<u64>,
    failures: u32,
    random: u32,
    deliver: bool,
    next_attempt_at: Option<i64>,
    lease_deadline: Option<i64>,
    now: i64,
}

fn shape(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 1024
        && !text.contains('\\')
        && text.split('/').next() != Some("__ds")
        && text
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.chars().any(char::is_control))
}

fuzz_target!(|input: Input| {
    for p in &input.paths {
        assert_eq!(is_valid_path(p), shape(p), "{p:?}");
        let pattern_ok = shape(p) && p.split('/').all(|s| s == "**" || !s.contains("**"));
        assert_eq!(is_valid_pattern(p), pattern_ok, "{p:?}");
        if is_valid_path(p) && !p.contains('*') {
            assert!(is_valid_pattern(p) && glob_matches(p, p));
        }
    }

    // Explicit streams.
    let mut list = Vec::new();
    for _ in 0..=input.repeat % 8 {
        list.extend(input.paths.iter().cloned());
        if list.len() > MAX_STREAMS_PER_REQUEST + 1 {
            break;
        }
    }
    let answered = explicit_streams(list.clone());
    let ok = list.len() <= MAX_STREAMS_PER_REQUEST && list.iter().all(|p| is_valid_path(p));
    assert_eq!(answered.is_ok(), ok, "{} paths", list.len());
    if let Ok(streams) = answered {
        assert!(streams.windows(2).all(|w| w[0] < w[1]));
        let mut want = list;
        want.sort();
        want.dedup();
        assert_eq!(streams, want);
    }
    assert_eq!(
        check_explicit_total(input.held, input.added).is_ok(),
        u128::from(input.held as u64) + u128::from(input.added as u64)
            <= MAX_EXPLICIT_STREAMS as u128
    );

    // Lease.
    match (input.lease, lease_ms(input.lease)) {
        (None, r) => assert_eq!(r, Ok(DEFAULT_LEASE_MS)),
        (Some(ms), Ok(v)) => assert!(v == ms && (MIN_LEASE_MS..=MAX_LEASE_MS).contains(&ms)),
        (Some(ms), Err(_)) => assert!(!(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&ms)),
    }

    // Webhook backoff.
    let delay = retry_delay_ms(input.failures, input.random);
    // Doubling from one second, capped at a minute (1000 << 16 is past the cap).
    let base = (RETRY_BASE_MS << input.failures.saturating_sub(1).min(16)).min(RETRY_MAX_MS);
    assert!(
        delay * 5 >= base * 4,
        "{} failures: {delay} ms",
        input.failures
    );
    assert!(
        delay * 5 <= base * 6,
        "{} failures: {delay} ms",
        input.failures
    );
    assert!(delay <= RETRY_MAX_MS * 6 / 5);
    if input.failures >= 1 {
        // With the same jitter draw, a later attempt never waits less.
        let before = retry_delay_ms(input.failures - 1, input.random);
        assert!(delay >= before, "{before} then {delay}");
    }

    // Alarms.
    let now = input.now;
    let alarm = next_alarm(
        input.deliver,
        input.next_attempt_at,
        input.lease_deadline,
        now,
    );
    let want = if input.deliver {
        Some(input.next_attempt_at.unwrap_or(now))
    } else {
        input.lease_deadline
    };
    match (alarm, want) {
        (None, None) => {}
        (Some(a), Some(w)) => {
            assert!(a >= now.saturating_add(1));
            assert_eq!(a, w.max(now.saturating_add(1)));
        }
        (a, w) => panic!("alarm {a:?}, wanted {w:?}"),
    }
});

//! `Stream-Cursor`: interval numbers that let CDNs collapse live requests without looping.
//!
//! Time is cut into 20-second intervals counted from 2024-10-09T00:00:00Z. A live response carries
//! the current interval; if the client already echoes that interval (or a later one), the server
//! answers with a strictly greater cursor, jittered so clients spread out, which changes the
//! cache key and guarantees progress.

/// 2024-10-09T00:00:00Z in Unix milliseconds.
pub const CURSOR_EPOCH_MS: i64 = 1_728_432_000_000;
/// Length of one cursor interval.
pub const INTERVAL_MS: i64 = 20_000;
/// Jitter bounds, in seconds, added when the client's cursor has caught up.
pub const MIN_JITTER_S: u32 = 1;
pub const MAX_JITTER_S: u32 = 3600;

/// The interval number for a time.
pub fn interval_at(now_ms: i64) -> u64 {
    u64::try_from(
        now_ms
            .saturating_sub(CURSOR_EPOCH_MS)
            .div_euclid(INTERVAL_MS),
    )
    .unwrap_or(0)
}

/// The cursor for a live response. `client` is the request's `cursor` parameter (ignored when
/// not a number); `random` is any random `u32` from the caller.
pub fn next_cursor(now_ms: i64, client: Option<&str>, random: u32) -> u64 {
    let current = interval_at(now_ms);
    let Some(client) = client.and_then(|c| c.trim().parse::<u64>().ok()) else {
        return current;
    };
    if client < current {
        return current;
    }
    let jitter_s = MIN_JITTER_S + random % (MAX_JITTER_S - MIN_JITTER_S + 1);
    let jitter_intervals = (u64::from(jitter_s) * 1000)
        .div_ceil(INTERVAL_MS as u64)
        .max(1);
    client.saturating_add(jitter_intervals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_count_from_the_epoch() {
        assert_eq!(interval_at(CURSOR_EPOCH_MS), 0);
        assert_eq!(interval_at(CURSOR_EPOCH_MS + 19_999), 0);
        assert_eq!(interval_at(CURSOR_EPOCH_MS + 20_000), 1);
        assert_eq!(interval_at(0), 0);
    }

    #[test]
    fn fresh_or_stale_clients_get_the_current_interval() {
        let now = CURSOR_EPOCH_MS + 100 * INTERVAL_MS;
        assert_eq!(next_cursor(now, None, 7), 100);
        assert_eq!(next_cursor(now, Some("99"), 7), 100);
        assert_eq!(next_cursor(now, Some("garbage"), 7), 100);
    }

    #[test]
    fn caught_up_clients_get_a_strictly_greater_cursor() {
        let now = CURSOR_EPOCH_MS + 100 * INTERVAL_MS;
        for random in [0, 1, 19, 20, 3599, u32::MAX] {
            let c = next_cursor(now, Some("100"), random);
            assert!(c > 100 && c <= 100 + 180, "{random} -> {c}");
            let c = next_cursor(now, Some("5000"), random);
            assert!(c > 5000 && c <= 5180, "{random} -> {c}");
        }
        assert_eq!(next_cursor(now, Some(&u64::MAX.to_string()), 1), u64::MAX);
    }

    use alloc::string::ToString;
}

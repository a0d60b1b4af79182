//! `Stream-Cursor`: interval numbers that let CDNs collapse live requests without looping.
//!
//! Time is cut into 20-second intervals counted from 2024-10-09T00:00:00Z. A live response carries
//! the current interval; if the client already echoes that interval (or a later one), the server
//! answers with a strictly greater cursor, jittered so clients spread out, which changes the
//! cache key and guarantees progress.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// 2024-10-09T00:00:00Z in Unix milliseconds.
pub const CURSOR_EPOCH_MS: i64 = 1_728_432_000_000;
/// Length of one cursor interval.
pub const INTERVAL_MS: i64 = 20_000;
/// Least jitter, in seconds, added when the client's cursor has caught up: the cursor must move.
pub const MIN_JITTER_S: u32 = 1;
/// Most jitter, in seconds.
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

/// The cursor for a live response, as the decimal text of `Stream-Cursor`. `client` is the
/// request's `cursor` parameter (ignored unless it is a decimal number); `random` is any random
/// `u32` from the caller. Text rather than a `u64` because a client may echo a number of any
/// size, and one at or past the current interval must still get a strictly greater cursor.
pub fn next_cursor(now_ms: i64, client: Option<&str>, random: u32) -> String {
    let current = interval_at(now_ms).to_string();
    let Some(client) = client
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
    else {
        return current;
    };
    // Without leading zeros (zero is then empty), the shorter decimal is the smaller, and equal
    // lengths compare as text.
    let client = client.trim_start_matches('0');
    let at = current.trim_start_matches('0');
    if (client.len(), client) < (at.len(), at) {
        return current;
    }
    let jitter_s = MIN_JITTER_S + random % (MAX_JITTER_S - MIN_JITTER_S + 1);
    let jitter_intervals = (u64::from(jitter_s) * 1000)
        .div_ceil(INTERVAL_MS as u64)
        .max(1);
    add_decimal(client, jitter_intervals)
}

/// `digits` (a decimal without leading zeros; empty is zero) plus `n`, as decimal text.
fn add_decimal(digits: &str, n: u64) -> String {
    let mut reversed = Vec::with_capacity(digits.len() + 1);
    let mut carry = n;
    for digit in digits.bytes().rev().map(|b| u64::from(b - b'0')) {
        let sum = digit + carry;
        reversed.push(sum % 10);
        carry = sum / 10;
    }
    while carry > 0 {
        reversed.push(carry % 10);
        carry /= 10;
    }
    if reversed.is_empty() {
        reversed.push(0);
    }
    reversed
        .iter()
        .rev()
        .filter_map(|&d| char::from_digit(d as u32, 10))
        .collect()
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
        for client in [
            None,
            Some("99"),
            Some("099"),
            Some("0"),
            Some(""),
            Some("garbage"),
            Some("+100"),
            Some("-100"),
            Some("1e9"),
            Some("10 0"),
        ] {
            assert_eq!(next_cursor(now, client, 7), "100", "{client:?}");
        }
    }

    #[test]
    fn caught_up_clients_get_a_strictly_greater_cursor() {
        let now = CURSOR_EPOCH_MS + 100 * INTERVAL_MS;
        let number = |c: String| c.parse::<u64>().unwrap();
        for random in [0, 1, 19, 20, 3599, u32::MAX] {
            let c = number(next_cursor(now, Some("100"), random));
            assert!(c > 100 && c <= 100 + 180, "{random} -> {c}");
            let c = number(next_cursor(now, Some(" 0100 "), random));
            assert!(c > 100 && c <= 100 + 180, "{random} -> {c}");
            let c = number(next_cursor(now, Some("5000"), random));
            assert!(c > 5000 && c <= 5180, "{random} -> {c}");
        }
    }

    /// A cursor past what a `u64` holds is still a number, and gets a greater one back.
    #[test]
    fn cursors_of_any_size_move_forward() {
        let now = CURSOR_EPOCH_MS + 100 * INTERVAL_MS;
        // 1 second of jitter is one interval.
        assert_eq!(
            next_cursor(now, Some(&u64::MAX.to_string()), 0),
            "18446744073709551616"
        );
        assert_eq!(
            next_cursor(now, Some("99999999999999999999999"), 0),
            "100000000000000000000000"
        );
        assert_eq!(
            next_cursor(now, Some("00099999999999999999999999"), 0),
            "100000000000000000000000"
        );
        // 3600 s of jitter is 180 intervals.
        assert_eq!(
            next_cursor(now, Some("123456789012345678901234567890"), 3599),
            "123456789012345678901234568070"
        );
    }

    #[test]
    fn a_zero_cursor_at_interval_zero_moves_forward() {
        // A clock before the epoch is interval 0.
        assert_eq!(next_cursor(0, None, 0), "0");
        assert_eq!(next_cursor(0, Some("0"), 0), "1");
        assert_eq!(next_cursor(0, Some("000"), 3599), "180");
    }

    #[test]
    fn decimal_addition_carries() {
        assert_eq!(add_decimal("", 0), "0");
        assert_eq!(add_decimal("", 180), "180");
        assert_eq!(add_decimal("9", 1), "10");
        assert_eq!(add_decimal("999", 180), "1179");
        assert_eq!(add_decimal("1000", 1), "1001");
    }
}

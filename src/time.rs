//! RFC 3339 timestamps, for `Stream-Expires-At`.
//!
//! Times are Unix milliseconds (`i64`); the caller supplies the clock.

use alloc::string::String;
use core::fmt::Write;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

fn digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() {
        return None;
    }
    let mut v: u32 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u32::from(c - b'0'))?;
    }
    Some(v)
}

/// Parses an RFC 3339 `date-time` (e.g. `2026-01-01T00:00:00Z`, `2026-01-01t10:00:00.5+02:00`)
/// into Unix milliseconds. Returns `None` for anything that is not a valid instant.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let s = text.as_bytes();
    if s.len() < 20 {
        return None;
    }
    let sep = |i: usize, c: u8| s.get(i) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    if !matches!(s[10], b'T' | b't') {
        return None;
    }
    let year = i64::from(digits(&s[0..4])?);
    let month = digits(&s[5..7])?;
    let day = digits(&s[8..10])?;
    let hour = digits(&s[11..13])?;
    let minute = digits(&s[14..16])?;
    let second = digits(&s[17..19])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    // Second 60 is checked once the offset is applied (below).
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis: i64 = 0;
    if sep(i, b'.') {
        i += 1;
        let start = i;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        // Keep millisecond precision; further digits only need to be digits.
        for (k, &c) in s[start..i].iter().take(3).enumerate() {
            millis += i64::from(c - b'0') * [100, 10, 1][k];
        }
    }
    let offset_minutes: i64 = match s.get(i) {
        Some(b'Z' | b'z') if i + 1 == s.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == s.len() && s[i + 3] == b':' => {
            let oh = digits(&s[i + 1..i + 3])?;
            let om = digits(&s[i + 4..i + 6])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let m = i64::from(oh * 60 + om);
            if sign == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    let leap = second == 60;
    let second = second.min(59);
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_minutes * 60;
    // A leap second (RFC 3339 §5.7) is 23:59:60 UTC on a month's last day, whatever the local
    // time it is written in; it counts as the second before it. Any other second 60 is no instant.
    if leap {
        let last_second_of_day = secs.rem_euclid(86_400) == 86_399;
        let month_ends = civil_from_days(secs.div_euclid(86_400) + 1).2 == 1;
        if !(last_second_of_day && month_ends) {
            return None;
        }
    }
    let ms = secs.checked_mul(1000)?.checked_add(millis)?;
    // An offset can carry a written year 0000 or 9999 past them in UTC, where the instant has
    // no four-digit form: formatted back, it could not be parsed again.
    (EARLIEST_MS..=LATEST_MS).contains(&ms).then_some(ms)
}

/// 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z, the instants RFC 3339 can write.
const EARLIEST_MS: i64 = -62_167_219_200_000;
const LATEST_MS: i64 = 253_402_300_799_999;

/// Formats Unix milliseconds as RFC 3339 in UTC with millisecond precision,
/// e.g. `2026-11-24T00:00:00.000Z`.
pub fn format_rfc3339(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = String::with_capacity(24);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_and_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(parse_rfc3339("1970-01-01t00:00:00.123456z"), Some(123));
        assert_eq!(parse_rfc3339("1970-01-01T02:00:00+02:00"), Some(0));
        assert_eq!(parse_rfc3339("1969-12-31T23:00:00-01:00"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-10-09T00:00:00Z"),
            Some(1_728_432_000_000)
        );
    }

    #[test]
    fn validates_the_calendar() {
        assert!(parse_rfc3339("2024-02-29T00:00:00Z").is_some());
        assert!(parse_rfc3339("2023-02-29T00:00:00Z").is_none());
        assert!(parse_rfc3339("2100-02-29T00:00:00Z").is_none());
        assert!(parse_rfc3339("2000-02-29T00:00:00Z").is_some());
        assert!(parse_rfc3339("2024-13-01T00:00:00Z").is_none());
        assert!(parse_rfc3339("2024-04-31T00:00:00Z").is_none());
        assert!(parse_rfc3339("2024-01-01T24:00:00Z").is_none());
        assert!(parse_rfc3339("2024-01-01T00:60:00Z").is_none());
    }

    #[test]
    fn second_60_only_at_a_leap_second() {
        // 23:59:60 UTC on a month's last day, written in UTC or with an offset: the second
        // before it.
        let before = parse_rfc3339("2016-12-31T23:59:59Z");
        assert!(before.is_some());
        assert_eq!(parse_rfc3339("2016-12-31T23:59:60Z"), before);
        assert_eq!(parse_rfc3339("2017-01-01T01:59:60+02:00"), before);
        assert_eq!(parse_rfc3339("2016-12-31T18:29:60-05:30"), before);
        assert_eq!(
            parse_rfc3339("2015-06-30T23:59:60.5Z"),
            parse_rfc3339("2015-06-30T23:59:59.5Z")
        );
        for bad in [
            "2016-12-31T12:34:60Z",
            "2016-12-30T23:59:60Z",
            "2016-12-31T23:58:60Z",
            // 23:59 local time, not UTC.
            "2016-12-31T23:59:60+02:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "invalid-date",
            "2024-01-01",
            "2024-01-01T00:00:00",
            "2024-01-01 00:00:00Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00+0200",
            "2024-01-01T00:00:00Zjunk",
            "+024-01-01T00:00:00Z",
            "2024-1-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_utc() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(1_728_432_000_123),
            "2024-10-09T00:00:00.123Z"
        );
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn only_instants_with_a_four_digit_year_in_utc() {
        assert_eq!(parse_rfc3339("0000-01-01T00:00:00Z"), Some(EARLIEST_MS));
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59.999Z"), Some(LATEST_MS));
        assert_eq!(format_rfc3339(EARLIEST_MS), "0000-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339(LATEST_MS), "9999-12-31T23:59:59.999Z");
        assert_eq!(days_from_civil(0, 1, 1) * 86_400_000, EARLIEST_MS);
        // Written in year 9999 or 0000, but in UTC past them.
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59-23:59"), None);
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59.999-00:01"), None);
        assert_eq!(parse_rfc3339("0000-01-01T00:00:00+00:01"), None);
        assert!(parse_rfc3339("9999-12-31T23:59:59+00:01").is_some());
    }

    proptest::proptest! {
        #[test]
        fn format_then_parse(ms in EARLIEST_MS..=LATEST_MS) {
            proptest::prop_assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Some(ms));
        }

        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = parse_rfc3339(&s);
        }
    }
}

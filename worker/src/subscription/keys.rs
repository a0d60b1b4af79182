//! The webhook signing keys over time: which key signs now, which are published, and what a
//! rotation (`POST /v1/stream/__ds/keys/rotate`) changes.
//!
//! A rotation publishes a fresh key at once and has it sign only `overlap_ms` later, so that
//! receivers holding a cached key set (the JWKS says `max-age=300`, and each isolate keeps its
//! own copy as long) have it before its first signature; the key it replaces stays published
//! for `overlap_ms` after its last signature, for deliveries in flight and receivers that fetch
//! the set while verifying one. The registry stores the schedule; subscriptions fetch it and
//! pick the key by the clock, so they switch when the schedule says, not when they next ask.

use serde::{Deserialize, Serialize};

use crate::crypto::SigningKey;

/// The overlap a rotation takes unless it names one: longer than a cached key set lives at the
/// edge (5 minutes) plus in a receiver's cache that honours `Age` (what is left of the same
/// 5 minutes), with room for the clocks of the registry and the subscriptions.
pub const DEFAULT_OVERLAP_MS: i64 = 600_000;
/// The longest overlap a rotation may name: a day.
pub const MAX_OVERLAP_MS: i64 = 86_400_000;
/// How long a subscription keeps the schedule it fetched before it asks again: a rotation
/// reaches every subscription this long after it was made, at the latest. Half the default
/// overlap, so that with it every subscription knows the fresh key before it signs; no
/// shorter, since every subscription that delivers asks the one registry this often.
pub const SCHEDULE_KEPT_MS: i64 = 300_000;
/// The same, when `FAULT_MARKER` is set (tests, which rotate with overlaps of seconds).
pub const SCHEDULE_KEPT_MS_UNDER_TEST: i64 = 1_000;
/// The longest the key set may be cached (`max-age`, seconds).
pub const JWKS_MAX_AGE_S: i64 = 300;
/// The longest a kept schedule may be old and still sign when the registry cannot be reached
/// ([`trusted_ms`]): the default overlap.
pub const SCHEDULE_TRUSTED_MS: i64 = DEFAULT_OVERLAP_MS;
/// The same, when `FAULT_MARKER` is set.
pub const SCHEDULE_TRUSTED_MS_UNDER_TEST: i64 = 3_000;

/// How old a kept schedule may be and still sign when the registry cannot be reached: `longest`
/// ([`SCHEDULE_TRUSTED_MS`]), but never more than `overlap_ms`, the overlap of automatic
/// rotations (`KEY_ROTATION_OVERLAP_MS`). A rotation with that overlap (or a longer one) that
/// this object has not heard of lets the key it replaces sign until `overlap_ms` after it, so
/// within that bound the key the kept schedule names is still the one the registry's says
/// signs; a longer bound would sign, after a shorter overlap, with a key withdrawn meanwhile,
/// which receivers refuse. Past it, the delivery fails (retried) instead. There is no floor: a
/// short overlap leaves a kept schedule no time to sign, and deliveries wait for the registry.
pub fn trusted_ms(longest: i64, overlap_ms: i64) -> i64 {
    longest.min(overlap_ms.max(0))
}

/// A key and when it signs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScheduledKey {
    #[serde(flatten)]
    pub key: SigningKey,
    /// From when it signs (Unix ms).
    pub signs_from_ms: i64,
    /// When it stops being published (Unix ms), once a rotation has replaced it.
    pub retires_ms: Option<i64>,
}

/// The keys still published, oldest first.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Schedule {
    pub keys: Vec<ScheduledKey>,
}

/// Where a key stands at some moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Published, and will sign from its `signs_from_ms`.
    Next,
    /// Signs.
    Current,
    /// Published until its `retires_ms`, and signs no more.
    Retiring,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Next => "next",
            Status::Current => "current",
            Status::Retiring => "retiring",
        }
    }
}

impl Schedule {
    /// The keys published at `now`.
    fn published(&self, now: i64) -> impl Iterator<Item = &ScheduledKey> {
        self.keys
            .iter()
            .filter(move |k| k.retires_ms.is_none_or(|r| r > now))
    }

    /// The key that signs at `now`: of the published keys that sign by then, the one that
    /// began last.
    pub fn signing_at(&self, now: i64) -> Option<&ScheduledKey> {
        self.published(now)
            .filter(|k| k.signs_from_ms <= now)
            .max_by_key(|k| k.signs_from_ms)
    }

    /// The key a schedule fetched at `fetched_ms` and kept since lets sign at `now`, when the
    /// registry cannot be asked for a newer one: the one [`Schedule::signing_at`] names, as
    /// long as the schedule is at most `trusted_ms` old. Otherwise why it may not sign, for the
    /// delivery's `last_error`: a key withdrawn by a rotation this copy never saw must not sign.
    pub fn signing_kept(
        &self,
        fetched_ms: i64,
        now: i64,
        trusted_ms: i64,
    ) -> Result<&ScheduledKey, String> {
        let age_ms = now - fetched_ms;
        if age_ms > trusted_ms {
            return Err(format!(
                "the registry cannot be reached, and the signing keys' schedule kept is {} s old, \
                 past the {} s it may be trusted: not signing with a key that may be withdrawn",
                age_ms / 1000,
                trusted_ms / 1000
            ));
        }
        self.signing_at(now).ok_or_else(|| {
            "the registry cannot be reached, and no key of the schedule kept signs now".to_string()
        })
    }

    /// Each published key with where it stands at `now`, oldest first.
    pub fn statuses(&self, now: i64) -> Vec<(&ScheduledKey, Status)> {
        let current = self.signing_at(now).map(|k| k.key.kid.as_str());
        self.published(now)
            .map(|k| {
                let status = if Some(k.key.kid.as_str()) == current {
                    Status::Current
                } else if k.signs_from_ms > now {
                    Status::Next
                } else {
                    Status::Retiring
                };
                (k, status)
            })
            .collect()
    }

    /// How long (seconds, at least 1 and at most [`JWKS_MAX_AGE_S`]) a key set published at
    /// `now` may be cached: until the next key retires, so that a key withdrawn is not handed
    /// out from a cache after it was due to go, and until the next automatic rotation is due
    /// (`next_rotation_ms`), so that a cache made before it has the fresh key well before it
    /// signs, whatever the rotation's overlap.
    pub fn max_age_s(&self, now: i64, next_rotation_ms: Option<i64>) -> i64 {
        self.published(now)
            .filter_map(|k| k.retires_ms)
            .chain(next_rotation_ms)
            .map(|r| (r - now + 999) / 1000)
            .fold(JWKS_MAX_AGE_S, i64::min)
            .max(1)
    }
}

/// What a rotation does to the stored keys, as plain values the registry writes.
#[derive(Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Keys announced by an earlier rotation that have not signed yet: withdrawn, since they
    /// never will (they signed nothing, so no receiver needs them).
    pub withdrawn: Vec<String>,
    /// Keys that signed, and when each stops being published now.
    pub retiring: Vec<(String, i64)>,
    /// The fresh key's first signing moment.
    pub signs_from_ms: i64,
}

/// Plans a rotation at `now` to a fresh key that signs `overlap_ms` later. The key that signs
/// now goes on signing until then, and stays published until `overlap_ms` after; a key that
/// signed before it stays published until then too, or until it was already due to go, if
/// sooner. An overlap of 0 withdraws the old keys at once: for a key that leaked.
pub fn rotate(schedule: &Schedule, now: i64, overlap_ms: i64) -> Rotation {
    let signs_from_ms = now + overlap_ms;
    let retire = signs_from_ms + overlap_ms;
    let mut rotation = Rotation {
        withdrawn: Vec::new(),
        retiring: Vec::new(),
        signs_from_ms,
    };
    let current = schedule.signing_at(now).map(|k| k.key.kid.clone());
    for k in schedule.published(now) {
        if k.signs_from_ms > now {
            rotation.withdrawn.push(k.key.kid.clone());
        } else if Some(&k.key.kid) == current.as_ref() {
            // It signs until the fresh key does, whatever an earlier rotation had planned.
            rotation.retiring.push((k.key.kid.clone(), retire));
        } else {
            // It signs no more: its overlap may only get shorter.
            let until = k.retires_ms.map_or(retire, |r| r.min(retire));
            rotation.retiring.push((k.key.kid.clone(), until));
        }
    }
    rotation
}

/// Reads a rotation request's body: empty, `{}`, or `{"overlap_ms": N}` with N a whole number
/// of milliseconds from 0 to [`MAX_OVERLAP_MS`].
pub fn overlap_of(body: &[u8]) -> Result<i64, &'static str> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rotate {
        overlap_ms: Option<serde_json::Value>,
    }
    const BAD: &str = "overlap_ms must be a whole number of milliseconds from 0 to 86400000";
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DEFAULT_OVERLAP_MS);
    }
    let rotate: Rotate = serde_json::from_slice(body)
        .map_err(|_| "the body must be a JSON object, {} or {\"overlap_ms\": N}")?;
    match rotate.overlap_ms {
        None => Ok(DEFAULT_OVERLAP_MS),
        Some(v) => v
            .as_i64()
            .filter(|n| (0..=MAX_OVERLAP_MS).contains(n))
            .ok_or(BAD),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, signs_from_ms: i64, retires_ms: Option<i64>) -> ScheduledKey {
        ScheduledKey {
            key: SigningKey {
                kid: kid.to_string(),
                x: String::new(),
                d: String::new(),
            },
            signs_from_ms,
            retires_ms,
        }
    }

    fn kids(s: &Schedule, now: i64) -> Vec<(&str, &str)> {
        s.statuses(now)
            .into_iter()
            .map(|(k, st)| (k.key.kid.as_str(), st.name()))
            .collect()
    }

    #[test]
    fn a_rotation_publishes_first_signs_later_and_retires_the_old_key_after() {
        let mut s = Schedule {
            keys: vec![key("a", 0, None)],
        };
        let r = rotate(&s, 1_000, 600_000);
        assert_eq!(r.withdrawn, Vec::<String>::new());
        assert_eq!(r.retiring, vec![("a".to_string(), 1_201_000)]);
        assert_eq!(r.signs_from_ms, 601_000);
        s.keys[0].retires_ms = Some(1_201_000);
        s.keys.push(key("b", 601_000, None));
        assert_eq!(kids(&s, 1_000), [("a", "current"), ("b", "next")]);
        assert_eq!(s.signing_at(600_999).unwrap().key.kid, "a");
        assert_eq!(s.signing_at(601_000).unwrap().key.kid, "b");
        assert_eq!(kids(&s, 601_000), [("a", "retiring"), ("b", "current")]);
        assert_eq!(kids(&s, 1_201_000), [("b", "current")]);
        // Cached no longer than until the old key goes, and never past 5 minutes.
        assert_eq!(s.max_age_s(1_000, None), 300);
        assert_eq!(s.max_age_s(1_200_000, None), 1);
        assert_eq!(s.max_age_s(1_100_500, None), 101);
        assert_eq!(s.max_age_s(1_201_000, None), 300);
        // Nor past the next automatic rotation, even one overdue.
        assert_eq!(s.max_age_s(1_201_000, Some(1_261_000)), 60);
        assert_eq!(s.max_age_s(1_000, Some(2_000_000)), 300);
        assert_eq!(s.max_age_s(1_201_000, Some(1_000_000)), 1);
    }

    #[test]
    fn a_rotation_during_another_withdraws_the_key_that_never_signed() {
        let s = Schedule {
            keys: vec![key("a", 0, Some(1_200_000)), key("b", 600_000, None)],
        };
        let r = rotate(&s, 100_000, 50_000);
        assert_eq!(r.withdrawn, ["b"]);
        assert_eq!(r.retiring, vec![("a".to_string(), 200_000)]);
        // The key that signs goes on signing until the fresh one does, however long an earlier
        // rotation had planned: it never retires before its successor signs.
        let r = rotate(&s, 100_000, 900_000);
        assert_eq!(r.signs_from_ms, 1_000_000);
        assert_eq!(r.retiring, vec![("a".to_string(), 1_900_000)]);
        // A key that signs no more keeps its time when that is sooner.
        let s = Schedule {
            keys: vec![
                key("a", 0, Some(700_000)),
                key("b", 100_000, Some(1_500_000)),
            ],
        };
        let r = rotate(&s, 200_000, 300_000);
        assert_eq!(
            r.retiring,
            vec![("a".to_string(), 700_000), ("b".to_string(), 800_000)]
        );
    }

    #[test]
    fn an_overlap_of_zero_replaces_the_key_at_once() {
        let s = Schedule {
            keys: vec![key("a", 0, None)],
        };
        let r = rotate(&s, 5_000, 0);
        assert_eq!(r.retiring, vec![("a".to_string(), 5_000)]);
        assert_eq!(r.signs_from_ms, 5_000);
        let after = Schedule {
            keys: vec![key("a", 0, Some(5_000)), key("b", 5_000, None)],
        };
        assert_eq!(kids(&after, 5_000), [("b", "current")]);
    }

    #[test]
    fn a_kept_schedule_signs_only_while_it_is_trusted_and_with_a_published_key() {
        let s = Schedule {
            keys: vec![key("a", 0, Some(1_200_000)), key("b", 600_000, None)],
        };
        // Fetched at 100 s: trusted for 10 minutes, and the key signing follows the clock.
        assert_eq!(
            s.signing_kept(100_000, 500_000, 600_000).unwrap().key.kid,
            "a"
        );
        assert_eq!(
            s.signing_kept(100_000, 700_000, 600_000).unwrap().key.kid,
            "b"
        );
        // Past the bound, nothing signs: a rotation not seen may have withdrawn either key.
        let refused = s.signing_kept(100_000, 700_001, 600_000).unwrap_err();
        assert!(refused.contains("600 s old"), "{refused}");
        // A schedule whose every key is past its end names none.
        let retired = Schedule {
            keys: vec![key("a", 0, Some(5_000))],
        };
        assert!(retired.signing_kept(4_000, 4_999, 600_000).is_ok());
        assert!(retired.signing_kept(4_000, 5_000, 600_000).is_err());
    }

    #[test]
    fn a_kept_schedule_is_trusted_no_longer_than_the_overlap_of_automatic_rotations() {
        assert_eq!(trusted_ms(SCHEDULE_TRUSTED_MS, DEFAULT_OVERLAP_MS), 600_000);
        assert_eq!(trusted_ms(SCHEDULE_TRUSTED_MS, MAX_OVERLAP_MS), 600_000);
        assert_eq!(trusted_ms(SCHEDULE_TRUSTED_MS, 60_000), 60_000);
        assert_eq!(trusted_ms(SCHEDULE_TRUSTED_MS_UNDER_TEST, 1_000), 1_000);
        // A rotation with an overlap of 60 s, 1 s after the schedule was kept: the key it kept
        // signs until 61 s and is withdrawn at 121 s. Kept 90 s, it is still published, but no
        // longer the key that signs; the bound refuses it from 60 s on.
        let s = Schedule {
            keys: vec![key("a", 0, None)],
        };
        let trusted = trusted_ms(SCHEDULE_TRUSTED_MS, 60_000);
        assert!(s.signing_kept(0, 60_000, trusted).is_ok());
        let refused = s.signing_kept(0, 60_001, trusted).unwrap_err();
        assert!(refused.contains("past the 60 s"), "{refused}");
    }

    #[test]
    fn the_rotation_body_names_an_overlap_or_takes_the_default() {
        assert_eq!(overlap_of(b""), Ok(DEFAULT_OVERLAP_MS));
        assert_eq!(overlap_of(b" {} "), Ok(DEFAULT_OVERLAP_MS));
        assert_eq!(overlap_of(br#"{"overlap_ms":0}"#), Ok(0));
        assert_eq!(overlap_of(br#"{"overlap_ms":86400000}"#), Ok(86_400_000));
        for bad in [
            &br#"{"overlap_ms":86400001}"#[..],
            br#"{"overlap_ms":-1}"#,
            br#"{"overlap_ms":1.5}"#,
            br#"{"overlap_ms":"600000"}"#,
            br#"{"overlap":1}"#,
            b"[]",
            b"x",
        ] {
            assert!(overlap_of(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}

//! The idempotent-producer state machine (Kafka-style exactly-once appends).
//!
//! A producer sends `(id, epoch, seq)` with each append. The server keeps, per stream and producer
//! id, the epoch and the highest sequence it accepted. [`decide`] compares an incoming pair with
//! that state; the caller commits `Accept`'s new state in the same transaction as the data.

use alloc::string::String;
use alloc::vec::Vec;

use crate::headers::{PRODUCER_EPOCH, PRODUCER_EXPECTED_SEQ, PRODUCER_RECEIVED_SEQ, PRODUCER_SEQ};

/// What the server remembers about one producer on one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerState {
    /// The newest epoch accepted; older ones are fenced off.
    pub epoch: u64,
    /// Highest sequence accepted in `epoch`.
    pub last_seq: u64,
}

/// The outcome of checking an append's producer headers against the stored state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProducerDecision {
    /// New data: append it and store `state` with it (200).
    Accept {
        /// The producer's state once this append is stored.
        state: ProducerState,
    },
    /// Already appended: acknowledge without appending (204). `highest_seq` is the highest
    /// accepted sequence, not the request's, so pipelining clients can confirm what landed.
    Duplicate {
        /// The producer's current epoch.
        epoch: u64,
        /// The highest sequence number stored for it.
        highest_seq: u64,
    },
    /// A zombie from an older epoch (403); `current_epoch` tells it what to beat.
    StaleEpoch {
        /// The epoch the stream now accepts from this producer.
        current_epoch: u64,
    },
    /// Sequence numbers were skipped (409).
    Gap {
        /// The sequence number the server expected next.
        expected: u64,
        /// The one the request carried.
        received: u64,
    },
    /// A new epoch must start at sequence 0 (400).
    NewEpochBadSeq,
}

/// The oldest age stamp (Unix milliseconds) at which a producer's state is still kept at
/// `now_ms`, when state idle for longer than `ttl_ms` expires: state stamped before it is
/// treated as absent, and the producer as new. A stamp is never before the producer's last
/// append ([`restamp`]), so state is kept at least `ttl_ms` after it.
pub fn kept_since(now_ms: i64, ttl_ms: u64) -> i64 {
    now_ms.saturating_sub(i64::try_from(ttl_ms).unwrap_or(i64::MAX))
}

/// How far past an append its producer's age stamp is set: 1/64 of the TTL, at least a
/// second. The stamp is rewritten only once an append comes after it, so the appends in
/// between store the state without it (and without its age index entry: one SQLite row
/// written instead of two); state may then be kept up to this much longer than `ttl_ms`.
pub fn stamp_step_ms(ttl_ms: u64) -> i64 {
    i64::try_from(ttl_ms / 64).unwrap_or(i64::MAX).max(1_000)
}

/// The age stamp a producer's state is stored with (Unix milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamp {
    /// A new one: the state's row and its age index entry are written.
    New(i64),
    /// The stored one, kept as it is: only the state's row is written.
    Kept(i64),
}

impl Stamp {
    /// The stamp, new or kept.
    pub fn ms(self) -> i64 {
        match self {
            Stamp::New(at) | Stamp::Kept(at) => at,
        }
    }
}

/// The age stamp to store with a producer's state accepted at `now_ms`, given the stored one
/// (`stored`, if the state is kept): kept while it is at or after `now_ms`, so it is never
/// before the producer's last append.
pub fn restamp(stored: Option<i64>, now_ms: i64, ttl_ms: u64) -> Stamp {
    match stored {
        Some(stamp) if stamp >= now_ms => Stamp::Kept(stamp),
        _ => Stamp::New(now_ms.saturating_add(stamp_step_ms(ttl_ms))),
    }
}

/// Checks `(epoch, seq)` against the stored state of this producer, if any.
pub fn decide(stored: Option<ProducerState>, epoch: u64, seq: u64) -> ProducerDecision {
    let Some(state) = stored else {
        // An unknown producer must start at 0: anything else means earlier batches were lost.
        return if seq == 0 {
            ProducerDecision::Accept {
                state: ProducerState { epoch, last_seq: 0 },
            }
        } else {
            ProducerDecision::Gap {
                expected: 0,
                received: seq,
            }
        };
    };
    if epoch < state.epoch {
        return ProducerDecision::StaleEpoch {
            current_epoch: state.epoch,
        };
    }
    if epoch > state.epoch {
        return if seq == 0 {
            ProducerDecision::Accept {
                state: ProducerState { epoch, last_seq: 0 },
            }
        } else {
            ProducerDecision::NewEpochBadSeq
        };
    }
    if seq <= state.last_seq {
        return ProducerDecision::Duplicate {
            epoch,
            highest_seq: state.last_seq,
        };
    }
    if seq == state.last_seq + 1 {
        return ProducerDecision::Accept {
            state: ProducerState {
                epoch,
                last_seq: seq,
            },
        };
    }
    ProducerDecision::Gap {
        expected: state.last_seq + 1,
        received: seq,
    }
}

impl ProducerDecision {
    /// Whether the append is ahead of its producer's state (a gap, or a new epoch that does not
    /// start at 0): appends of its producer still on their way may make it acceptable.
    pub fn is_ahead(self) -> bool {
        matches!(
            self,
            ProducerDecision::Gap { .. } | ProducerDecision::NewEpochBadSeq
        )
    }

    /// The HTTP status this decision answers with.
    pub fn status(self) -> u16 {
        match self {
            ProducerDecision::Accept { .. } => 200,
            ProducerDecision::Duplicate { .. } => 204,
            ProducerDecision::StaleEpoch { .. } => 403,
            ProducerDecision::Gap { .. } => 409,
            ProducerDecision::NewEpochBadSeq => 400,
        }
    }

    /// True when the append may proceed (new data) or is already done (duplicate).
    pub fn is_success(self) -> bool {
        matches!(
            self,
            ProducerDecision::Accept { .. } | ProducerDecision::Duplicate { .. }
        )
    }

    /// The producer response headers that go with the decision.
    pub fn headers(self) -> Vec<(&'static str, String)> {
        use alloc::string::ToString;
        match self {
            ProducerDecision::Accept { state } => alloc::vec![
                (PRODUCER_EPOCH, state.epoch.to_string()),
                (PRODUCER_SEQ, state.last_seq.to_string()),
            ],
            ProducerDecision::Duplicate { epoch, highest_seq } => alloc::vec![
                (PRODUCER_EPOCH, epoch.to_string()),
                (PRODUCER_SEQ, highest_seq.to_string()),
            ],
            ProducerDecision::StaleEpoch { current_epoch } => {
                alloc::vec![(PRODUCER_EPOCH, current_epoch.to_string())]
            }
            ProducerDecision::Gap { expected, received } => alloc::vec![
                (PRODUCER_EXPECTED_SEQ, expected.to_string()),
                (PRODUCER_RECEIVED_SEQ, received.to_string()),
            ],
            ProducerDecision::NewEpochBadSeq => Vec::new(),
        }
    }

    /// A short text for error bodies.
    pub fn message(self) -> &'static str {
        match self {
            ProducerDecision::Accept { .. } | ProducerDecision::Duplicate { .. } => "",
            ProducerDecision::StaleEpoch { .. } => "producer epoch is stale",
            ProducerDecision::Gap { .. } => "producer sequence gap",
            ProducerDecision::NewEpochBadSeq => "a new producer epoch must start at sequence 0",
        }
    }
}

/// The producer append that closed a stream; a retry of exactly this append is a duplicate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClosingProducer {
    /// Its `Producer-Id`.
    pub id: String,
    /// Its `Producer-Epoch`.
    pub epoch: u64,
    /// Its `Producer-Seq`.
    pub seq: u64,
}

impl ClosingProducer {
    /// Whether `(id, epoch, seq)` is the append that closed the stream.
    pub fn is(&self, id: &str, epoch: u64, seq: u64) -> bool {
        self.id == id && self.epoch == epoch && self.seq == seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_kept_for_its_ttl_after_the_last_append() {
        let day: i64 = 86_400_000;
        let week = 7 * 86_400_000;
        // Updated exactly the TTL ago is still kept (the query keeps `updated_ms >= kept_since`).
        assert_eq!(kept_since(10 * day, week), 3 * day);
        assert!(3 * day - 1 < kept_since(10 * day, week));
        // Extreme clocks and TTLs saturate instead of overflowing.
        assert_eq!(kept_since(i64::MIN, 1), i64::MIN);
        assert_eq!(kept_since(0, u64::MAX), -i64::MAX);
    }

    /// Appends at any times keep their producer's state at least the TTL after the last one,
    /// and at most the TTL and one step, however few of them rewrite the stamp.
    #[test]
    fn stamps_keep_state_for_the_ttl_after_the_last_append() {
        for ttl in [1u64, 1_000, 64_000, 604_800_000] {
            let step = stamp_step_ms(ttl);
            let mut stamp = None;
            let mut restamped = 0;
            let mut now = 5_000_000_000i64;
            for gap in [0, 1, 7, 300, 999, 1_000, 1_001, 5_000, 9_999_999, 3, 2] {
                now += gap;
                let next = restamp(stamp, now, ttl);
                if matches!(next, Stamp::New(_)) {
                    restamped += 1;
                }
                let s = next.ms();
                stamp = Some(s);
                assert!(
                    s >= now && s <= now + step,
                    "ttl {ttl}, at {now}: stamp {s}"
                );
                // Kept through the TTL after this append, gone once the step has passed too.
                assert!(s >= kept_since(now + ttl as i64, ttl));
                assert!(s < kept_since(now + ttl as i64 + step + 1, ttl));
            }
            assert!(restamped < 11, "ttl {ttl}: every append restamped");
        }
        assert_eq!(stamp_step_ms(604_800_000), 9_450_000);
        assert_eq!(stamp_step_ms(1_000), 1_000);
        assert_eq!(restamp(Some(10), 10, 1_000), Stamp::Kept(10));
        assert_eq!(restamp(Some(9), 10, 1_000), Stamp::New(1_010));
        assert_eq!(restamp(None, 10, 1_000), Stamp::New(1_010));
        assert_eq!(restamp(None, i64::MAX, u64::MAX), Stamp::New(i64::MAX));
    }

    use ProducerDecision::*;

    const S: fn(u64, u64) -> Option<ProducerState> =
        |epoch, last_seq| Some(ProducerState { epoch, last_seq });

    #[test]
    fn appends_ahead_of_their_producer_are_told_apart() {
        assert!(decide(S(0, 3), 0, 5).is_ahead());
        assert!(decide(None, 0, 1).is_ahead());
        assert!(decide(S(0, 3), 1, 1).is_ahead());
        assert!(!decide(S(1, 3), 0, 9).is_ahead());
        assert!(!decide(S(0, 3), 0, 2).is_ahead());
        assert!(!decide(S(0, 3), 0, 4).is_ahead());
    }

    #[test]
    fn new_producer_starts_at_zero() {
        assert_eq!(
            decide(None, 0, 0),
            Accept {
                state: ProducerState {
                    epoch: 0,
                    last_seq: 0
                }
            }
        );
        assert_eq!(
            decide(None, 7, 0),
            Accept {
                state: ProducerState {
                    epoch: 7,
                    last_seq: 0
                }
            }
        );
        assert_eq!(
            decide(None, 0, 3),
            Gap {
                expected: 0,
                received: 3
            }
        );
    }

    #[test]
    fn same_epoch_sequences() {
        assert_eq!(
            decide(S(1, 4), 1, 5),
            Accept {
                state: ProducerState {
                    epoch: 1,
                    last_seq: 5
                }
            }
        );
        assert_eq!(
            decide(S(1, 4), 1, 4),
            Duplicate {
                epoch: 1,
                highest_seq: 4
            }
        );
        assert_eq!(
            decide(S(1, 4), 1, 0),
            Duplicate {
                epoch: 1,
                highest_seq: 4
            }
        );
        assert_eq!(
            decide(S(1, 4), 1, 7),
            Gap {
                expected: 5,
                received: 7
            }
        );
    }

    #[test]
    fn epochs_fence_zombies() {
        assert_eq!(decide(S(2, 9), 1, 10), StaleEpoch { current_epoch: 2 });
        assert_eq!(
            decide(S(2, 9), 3, 0),
            Accept {
                state: ProducerState {
                    epoch: 3,
                    last_seq: 0
                }
            }
        );
        assert_eq!(decide(S(2, 9), 3, 1), NewEpochBadSeq);
    }

    #[test]
    fn statuses_and_headers() {
        assert_eq!(decide(None, 0, 0).status(), 200);
        assert_eq!(decide(S(0, 0), 0, 0).status(), 204);
        assert_eq!(decide(S(1, 0), 0, 0).status(), 403);
        assert_eq!(decide(S(0, 0), 0, 2).status(), 409);
        assert_eq!(decide(S(0, 0), 1, 2).status(), 400);
        let h = decide(S(0, 5), 0, 3).headers();
        assert!(h.contains(&(PRODUCER_SEQ, "5".into())));
        let h = decide(S(0, 5), 0, 9).headers();
        assert!(h.contains(&(PRODUCER_EXPECTED_SEQ, "6".into())));
        assert!(h.contains(&(PRODUCER_RECEIVED_SEQ, "9".into())));
        assert_eq!(
            decide(S(4, 0), 1, 0).headers(),
            [(PRODUCER_EPOCH, "4".into())]
        );
    }

    #[test]
    fn closing_producer_identity() {
        let c = ClosingProducer {
            id: "p".into(),
            epoch: 1,
            seq: 2,
        };
        assert!(c.is("p", 1, 2));
        assert!(!c.is("p", 1, 3));
        assert!(!c.is("q", 1, 2));
    }

    proptest::proptest! {
        /// Replaying any accepted history in order is accepted again only at the next sequence,
        /// and every earlier sequence of the current epoch is a duplicate.
        #[test]
        fn accepted_history_is_idempotent(n in 1u64..50) {
            let mut state = None;
            for seq in 0..n {
                match decide(state, 0, seq) {
                    Accept { state: s } => state = Some(s),
                    other => proptest::prop_assert!(false, "{other:?}"),
                }
            }
            for seq in 0..n {
                proptest::prop_assert_eq!(decide(state, 0, seq), Duplicate { epoch: 0, highest_seq: n - 1 });
            }
        }
    }
}

//! The idempotent-producer state machine, driven like a server would drive it.
//!
//! Arbitrary sequences of appends `(producer, epoch, seq)` run against the stored state; the
//! target keeps its own log of what was accepted and checks every decision against it:
//! - accepted sequences in one epoch are exactly 0, 1, 2, … (strictly increasing, no gaps), and
//!   epochs never go backwards; a new producer or a new epoch starts at 0;
//! - a duplicate is only ever reported for a pair that was accepted before, with the highest
//!   accepted sequence; a retry of an accepted pair is always a duplicate;
//! - stale epochs, gaps and bad new-epoch starts are refused with the right numbers;
//! - status, success flag and response headers agree with the decision;
//! - `stream::plan_append` (the same decision inside append precedence) never writes to a closed
//!   stream, writes exactly the accepted state, and dedupes the append that closed the stream.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use edgestream::headers::{
    ProducerHeaders, PRODUCER_EPOCH, PRODUCER_EXPECTED_SEQ, PRODUCER_RECEIVED_SEQ, PRODUCER_SEQ,
};
use edgestream::producer::{decide, ClosingProducer};
use edgestream::stream::{plan_append, AppendPlan, AppendRequest, AppendTarget};
use edgestream::{ContentType, Offset, ProducerDecision, ProducerState, ProtocolError};
use libfuzzer_sys::fuzz_target;

/// How an append picks its `(epoch, seq)`, relative to the producer's stored state so the fuzzer
/// reaches deep histories quickly, or raw.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Pick {
    /// The next sequence in the current epoch.
    Next,
    /// A retry of an earlier sequence (`back` before the last).
    Retry { back: u8 },
    /// Skip ahead.
    Skip { by: u8 },
    /// A newer epoch, starting at `seq`.
    Bump { by: u8, seq: u8 },
    /// An older epoch.
    Zombie { by: u8, seq: u8 },
    /// Anything at all.
    Raw { epoch: u64, seq: u64 },
}

#[derive(Arbitrary, Debug)]
struct Append {
    producer: u8,
    pick: Pick,
    /// Also close the stream with this append.
    close: bool,
    has_body: bool,
}

#[derive(Default)]
struct Model {
    state: Option<ProducerState>,
    /// Every `(epoch, seq)` accepted, in order.
    accepted: Vec<(u64, u64)>,
}

fn choose(stored: Option<ProducerState>, pick: Pick) -> (u64, u64) {
    let (epoch, last) = stored.map_or((0, 0), |s| (s.epoch, s.last_seq));
    match pick {
        Pick::Next => (
            epoch,
            if stored.is_some() {
                last.saturating_add(1)
            } else {
                0
            },
        ),
        Pick::Retry { back } => (epoch, last.saturating_sub(u64::from(back))),
        Pick::Skip { by } => (epoch, last.saturating_add(2 + u64::from(by))),
        Pick::Bump { by, seq } => (epoch.saturating_add(1 + u64::from(by)), u64::from(seq % 4)),
        Pick::Zombie { by, seq } => (epoch.saturating_sub(1 + u64::from(by)), u64::from(seq)),
        Pick::Raw { epoch, seq } => (epoch, seq),
    }
}

fn header(headers: &[(&'static str, String)], name: &str) -> Option<u64> {
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.parse().expect("numeric producer header"))
}

fn check_decision(m: &Model, epoch: u64, seq: u64, d: ProducerDecision) {
    let stored = m.state;
    match d {
        ProducerDecision::Accept { state } => {
            assert_eq!(
                state,
                ProducerState {
                    epoch,
                    last_seq: seq
                }
            );
            match stored {
                None => assert_eq!(seq, 0),
                Some(s) if s.epoch == epoch => assert_eq!(seq, s.last_seq + 1),
                Some(s) => {
                    assert!(epoch > s.epoch, "accepted an older epoch");
                    assert_eq!(seq, 0, "a new epoch must start at 0");
                }
            }
            // Sequences in an epoch are contiguous from 0: this one is the count so far.
            let in_epoch = m.accepted.iter().filter(|(e, _)| *e == epoch).count() as u64;
            assert_eq!(seq, in_epoch);
            assert!(m
                .accepted
                .last()
                .is_none_or(|&(e, s)| (e, s) < (epoch, seq)));
        }
        ProducerDecision::Duplicate {
            epoch: e,
            highest_seq,
        } => {
            let s = stored.expect("duplicate of an unknown producer");
            assert_eq!((e, highest_seq), (s.epoch, s.last_seq));
            assert_eq!(epoch, s.epoch);
            assert!(seq <= s.last_seq);
            assert!(
                m.accepted.contains(&(epoch, seq)),
                "duplicate of ({epoch}, {seq}), which was never accepted"
            );
        }
        ProducerDecision::StaleEpoch { current_epoch } => {
            let s = stored.expect("stale epoch of an unknown producer");
            assert_eq!(current_epoch, s.epoch);
            assert!(epoch < s.epoch);
        }
        ProducerDecision::Gap { expected, received } => {
            assert_eq!(received, seq);
            let want = stored.map_or(0, |s| {
                assert_eq!(s.epoch, epoch);
                s.last_seq + 1
            });
            assert_eq!(expected, want);
            assert!(seq > expected);
        }
        ProducerDecision::NewEpochBadSeq => {
            let s = stored.expect("new epoch of an unknown producer");
            assert!(epoch > s.epoch && seq != 0);
        }
    }

    let status = d.status();
    assert_eq!(d.is_success(), status == 200 || status == 204);
    assert_eq!(d.message().is_empty(), d.is_success());
    let h = d.headers();
    match d {
        ProducerDecision::Accept { state } => {
            assert_eq!(status, 200);
            assert_eq!(header(&h, PRODUCER_EPOCH), Some(state.epoch));
            assert_eq!(header(&h, PRODUCER_SEQ), Some(state.last_seq));
        }
        ProducerDecision::Duplicate { epoch, highest_seq } => {
            assert_eq!(status, 204);
            assert_eq!(header(&h, PRODUCER_EPOCH), Some(epoch));
            assert_eq!(header(&h, PRODUCER_SEQ), Some(highest_seq));
        }
        ProducerDecision::StaleEpoch { current_epoch } => {
            assert_eq!(status, 403);
            assert_eq!(header(&h, PRODUCER_EPOCH), Some(current_epoch));
        }
        ProducerDecision::Gap { expected, received } => {
            assert_eq!(status, 409);
            assert_eq!(header(&h, PRODUCER_EXPECTED_SEQ), Some(expected));
            assert_eq!(header(&h, PRODUCER_RECEIVED_SEQ), Some(received));
        }
        ProducerDecision::NewEpochBadSeq => {
            assert_eq!(status, 400);
            assert!(h.is_empty());
        }
    }
}

fuzz_target!(|appends: Vec<Append>| {
    let mut producers: HashMap<u8, Model> = HashMap::new();
    let content_type = ContentType::parse("application/octet-stream").unwrap();
    let mut closed_by: Option<ClosingProducer> = None;
    let mut closed = false;
    let mut tail = Offset::ZERO;

    for a in appends.iter().take(512) {
        let id = a.producer % 4;
        let id_text = format!("p{id}");
        let model = producers.entry(id).or_default();
        let (epoch, seq) = choose(model.state, a.pick);

        // The bare state machine.
        let decision = decide(model.state, epoch, seq);
        check_decision(model, epoch, seq, decision);

        // The same append through the stream's append precedence.
        let request = AppendRequest {
            content_type: Some("application/octet-stream"),
            body_len: usize::from(a.has_body),
            close: a.close,
            stream_seq: None,
            producer: Some(ProducerHeaders {
                id: &id_text,
                epoch,
                seq,
            }),
            lease: None,
        };
        let target = AppendTarget {
            content_type: &content_type,
            closed,
            closed_by: closed_by.as_ref(),
            tail,
            last_stream_seq: None,
            lease: None,
            now_ms: 0,
        };
        let plan = plan_append(&target, &request, model.state);
        let closer = closed_by
            .as_ref()
            .is_some_and(|c| c.is(&id_text, epoch, seq));
        match plan {
            Ok(AppendPlan::Write {
                producer, close, ..
            }) => {
                assert!(!closed, "wrote to a closed stream");
                let ProducerDecision::Accept { state } = decision else {
                    panic!("wrote after {decision:?}");
                };
                assert_eq!(producer, Some(state));
                assert_eq!(close, a.close);
                // Commit, as the server does in the same transaction as the data.
                model.state = Some(state);
                model.accepted.push((epoch, seq));
                tail = tail.checked_add(u64::from(a.has_body)).unwrap();
                if close {
                    closed = true;
                    closed_by = Some(ClosingProducer {
                        id: id_text.clone(),
                        epoch,
                        seq,
                    });
                }
                // A retry of what was just committed is a duplicate, never a second write.
                let retry = decide(model.state, epoch, seq);
                assert_eq!(
                    retry,
                    ProducerDecision::Duplicate {
                        epoch,
                        highest_seq: seq
                    }
                );
            }
            Ok(AppendPlan::AlreadyDone {
                duplicate,
                closed: was_closed,
            }) => {
                assert_eq!(was_closed, closed);
                if closed {
                    assert!(closer, "only the closing append dedupes on a closed stream");
                    assert!(matches!(
                        duplicate,
                        Some(ProducerDecision::Duplicate { .. })
                    ));
                } else {
                    assert_eq!(duplicate, Some(decision));
                    assert!(matches!(decision, ProducerDecision::Duplicate { .. }));
                }
            }
            Err(ProtocolError::Producer(d)) => {
                assert!(!d.is_success());
                if !closed {
                    assert_eq!(d, decision);
                } else {
                    assert!(matches!(d, ProducerDecision::StaleEpoch { .. }));
                }
            }
            Err(ProtocolError::Closed { final_offset }) => {
                assert!(closed);
                assert!(!closer);
                assert_eq!(final_offset, tail);
            }
            Err(ProtocolError::EmptyBody) => {
                assert!(!closed && !a.has_body && !a.close);
            }
            Err(other) => panic!("unexpected refusal {other:?} for {a:?}"),
        }
    }

    // Per producer, the accepted log is strictly increasing and contiguous within each epoch.
    for m in producers.values() {
        for w in m.accepted.windows(2) {
            let ((e0, s0), (e1, s1)) = (w[0], w[1]);
            assert!(e1 > e0 && s1 == 0 || e1 == e0 && s1 == s0 + 1, "{w:?}");
        }
        assert_eq!(
            m.state,
            m.accepted
                .last()
                .map(|&(epoch, last_seq)| ProducerState { epoch, last_seq })
        );
    }
});

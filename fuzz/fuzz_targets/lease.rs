//! The writer lease: `Stream-Lease-TTL` and the rule that decides each append against the
//! stored lease.
//!
//! Invariants:
//! - `Stream-Lease-TTL` accepts exactly a canonical decimal of whole seconds (surrounding
//!   whitespace ignored) up to a day; `0` releases, anything else holds for that many seconds;
//! - an append is refused exactly when an active lease is held by another producer (or the
//!   append has none), and then with the lease's end and a `Retry-After` of at least one
//!   second that reaches it;
//! - an accepted hold stores a lease for the appending producer ending `ttl` after now; a
//!   release clears a stored lease; nothing else changes it;
//! - replaying a history of appends, the stored lease is only ever held by one producer at a
//!   time and no append from another producer is accepted while it is active.
#![no_main]

use arbitrary::Arbitrary;
use edgestream::headers::HeaderError;
use edgestream::lease::{decide, Lease, LeaseChange, LeaseRequest, MAX_LEASE_SECONDS};
use edgestream::ProtocolError;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Append<'a> {
    /// Producer 0..=3, or none.
    producer: Option<u8>,
    ttl: Option<&'a str>,
    /// Milliseconds since the previous append.
    elapsed: u32,
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    header: &'a str,
    holder: &'a str,
    producer: Option<&'a str>,
    expires_ms: i64,
    now_ms: i64,
    history: Vec<Append<'a>>,
}

const PRODUCERS: [&str; 4] = ["p0", "p1", "p2", "p3"];

fn check_header(header: &str) -> Result<LeaseRequest, HeaderError> {
    let parsed = LeaseRequest::parse(header);
    let t = header.trim();
    let canonical =
        !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) && (t == "0" || !t.starts_with('0'));
    let seconds = t
        .parse::<u64>()
        .ok()
        .filter(|&s| canonical && s <= MAX_LEASE_SECONDS);
    match seconds {
        Some(0) => assert_eq!(parsed, Ok(LeaseRequest::Release), "{header:?}"),
        Some(s) => assert_eq!(
            parsed,
            Ok(LeaseRequest::Hold {
                ttl_ms: s as i64 * 1000
            }),
            "{header:?}"
        ),
        None => assert_eq!(parsed, Err(HeaderError::LeaseTtl), "{header:?}"),
    }
    parsed
}

fn check_decide(
    stored: Option<&Lease>,
    producer: Option<&str>,
    request: Option<LeaseRequest>,
    now: i64,
) -> Result<LeaseChange, ProtocolError> {
    let decided = decide(stored, producer, request, now);
    let blocking = stored.filter(|l| l.expires_ms > now && producer != Some(l.holder.as_str()));
    match (&decided, blocking) {
        (
            Err(ProtocolError::Leased {
                expires_ms,
                retry_after_s,
            }),
            Some(l),
        ) => {
            assert_eq!(*expires_ms, l.expires_ms);
            assert!(*retry_after_s >= 1);
            // Whole seconds that reach the lease's end (the distance saturates at i64::MAX).
            let remaining = i128::from(l.expires_ms.saturating_sub(now));
            let wait = i128::from(*retry_after_s) * 1000;
            assert!(wait >= remaining && wait < remaining.max(1) + 1000);
        }
        (Err(e), b) => panic!("refused with {e:?} (blocking lease {b:?})"),
        (Ok(_), Some(l)) => panic!("accepted {producer:?} while {l:?} is active at {now}"),
        (Ok(change), None) => {
            let expected = match (request, producer) {
                (Some(LeaseRequest::Hold { ttl_ms }), Some(id)) => LeaseChange::Set(Lease {
                    holder: id.into(),
                    expires_ms: now.saturating_add(ttl_ms),
                }),
                (Some(LeaseRequest::Release), _) if stored.is_some() => LeaseChange::Clear,
                _ => LeaseChange::Keep,
            };
            assert_eq!(*change, expected);
        }
    }
    decided
}

fuzz_target!(|input: Input<'_>| {
    let request = check_header(input.header).ok();
    let stored = Lease {
        holder: input.holder.into(),
        expires_ms: input.expires_ms,
    };
    let _ = check_decide(Some(&stored), input.producer, request, input.now_ms);
    // Without a lease, or for its holder, an append is never refused.
    assert!(check_decide(None, input.producer, request, input.now_ms).is_ok());
    assert!(check_decide(Some(&stored), Some(input.holder), request, input.now_ms).is_ok());

    // A history of appends from a few producers, the lease stored between them.
    let mut now = input.now_ms.clamp(0, i64::MAX / 2);
    let mut lease: Option<Lease> = None;
    for append in &input.history {
        now += i64::from(append.elapsed);
        let producer = append.producer.map(|p| PRODUCERS[usize::from(p % 4)]);
        let request = append.ttl.and_then(|t| LeaseRequest::parse(t).ok());
        let before = lease.clone();
        match check_decide(lease.as_ref(), producer, request, now) {
            Ok(LeaseChange::Keep) => {}
            Ok(LeaseChange::Set(l)) => {
                assert_eq!(Some(l.holder.as_str()), producer);
                assert!(l.expires_ms >= now);
                lease = Some(l);
            }
            Ok(LeaseChange::Clear) => lease = None,
            Err(_) => {
                let held = before.as_ref().expect("refused without a lease");
                assert!(held.is_active(now) && producer != Some(held.holder.as_str()));
            }
        }
        if let (Some(b), Some(a)) = (&before, &lease) {
            // Another producer takes the lease only once the old one has run out.
            if a.holder != b.holder {
                assert!(!b.is_active(now));
            }
        }
    }
});

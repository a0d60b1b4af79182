//! The writer lease: one exclusive appender per stream.
//!
//! An idempotent producer that sends `Stream-Lease-TTL: <seconds>` with an append becomes the
//! stream's only appender until the lease runs out; it renews the lease with each append that
//! carries the header and gives it up with `Stream-Lease-TTL: 0`. While the lease is held, every
//! other append (from another producer id, or without producer headers) is refused with 423 and
//! told when the lease ends. The holder is a producer *id*, not an epoch: a restarted instance of
//! the same producer keeps the lease, and the producer rules already fence its older epochs.
//! A producer whose lease ran out and was taken by another is refused like any other, which
//! fences a writer that paused past its lease (the lease is the fencing token).

use alloc::string::String;

use crate::error::ProtocolError;
use crate::headers::{parse_decimal, HeaderError};

/// Longest lease one request may ask for: a day. A holder that crashes blocks the stream until
/// its lease runs out, so leases are meant to be short and renewed.
pub const MAX_LEASE_SECONDS: u64 = 86_400;

/// What `Stream-Lease-TTL` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseRequest {
    /// Take or renew the lease for this many milliseconds from now.
    Hold {
        /// How long the lease lasts from now, in milliseconds.
        ttl_ms: i64,
    },
    /// Give the lease up (`0`).
    Release,
}

impl LeaseRequest {
    /// Parses `Stream-Lease-TTL`: whole seconds from 0 (release) to [`MAX_LEASE_SECONDS`].
    pub fn parse(value: &str) -> Result<LeaseRequest, HeaderError> {
        match parse_decimal(value.trim()) {
            Some(0) => Ok(LeaseRequest::Release),
            Some(s) if s <= MAX_LEASE_SECONDS => Ok(LeaseRequest::Hold {
                ttl_ms: s as i64 * 1000,
            }),
            _ => Err(HeaderError::LeaseTtl),
        }
    }
}

/// The stored lease: who holds it and until when (Unix milliseconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The `Producer-Id` that holds it.
    pub holder: String,
    /// When it runs out unless renewed (Unix milliseconds).
    pub expires_ms: i64,
}

impl Lease {
    /// Whether it still excludes other appenders at `now_ms`.
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.expires_ms > now_ms
    }
}

/// What an accepted append does to the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    /// Nothing to store.
    Keep,
    /// Store this lease (taken or renewed).
    Set(Lease),
    /// Remove the stored lease (released, or run out and released by its former holder).
    Clear,
}

/// Checks an append against the stored lease. `producer` is the append's `Producer-Id`;
/// `request` its `Stream-Lease-TTL` (which the header rules only accept with a producer).
pub fn decide(
    stored: Option<&Lease>,
    producer: Option<&str>,
    request: Option<LeaseRequest>,
    now_ms: i64,
) -> Result<LeaseChange, ProtocolError> {
    if let Some(lease) = stored.filter(|l| l.is_active(now_ms)) {
        if producer != Some(lease.holder.as_str()) {
            return Err(ProtocolError::Leased {
                expires_ms: lease.expires_ms,
                retry_after_s: retry_after(lease.expires_ms.saturating_sub(now_ms)),
            });
        }
    }
    Ok(match (request, producer) {
        (Some(LeaseRequest::Hold { ttl_ms }), Some(id)) => LeaseChange::Set(Lease {
            holder: id.into(),
            expires_ms: now_ms.saturating_add(ttl_ms),
        }),
        (Some(LeaseRequest::Release), _) if stored.is_some() => LeaseChange::Clear,
        _ => LeaseChange::Keep,
    })
}

/// Whole seconds until `remaining_ms` has passed, at least 1 (a `Retry-After` of 0 invites a
/// busy loop).
fn retry_after(remaining_ms: i64) -> u64 {
    (remaining_ms.max(1) as u64).div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, expires_ms: i64) -> Lease {
        Lease {
            holder: holder.into(),
            expires_ms,
        }
    }

    #[test]
    fn ttl_header() {
        assert_eq!(LeaseRequest::parse("0"), Ok(LeaseRequest::Release));
        assert_eq!(
            LeaseRequest::parse("30"),
            Ok(LeaseRequest::Hold { ttl_ms: 30_000 })
        );
        assert_eq!(
            LeaseRequest::parse(" 86400 "),
            Ok(LeaseRequest::Hold { ttl_ms: 86_400_000 })
        );
        for bad in [
            "",
            "86401",
            "-1",
            "1.5",
            "01",
            "+5",
            "1e3",
            "ten",
            "99999999999999999999",
        ] {
            assert_eq!(
                LeaseRequest::parse(bad),
                Err(HeaderError::LeaseTtl),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_free_stream_takes_any_appender() {
        assert_eq!(decide(None, None, None, 0), Ok(LeaseChange::Keep));
        assert_eq!(decide(None, Some("a"), None, 0), Ok(LeaseChange::Keep));
        assert_eq!(
            decide(
                None,
                Some("a"),
                Some(LeaseRequest::Hold { ttl_ms: 5000 }),
                100
            ),
            Ok(LeaseChange::Set(lease("a", 5100)))
        );
        // Releasing a lease nobody holds changes nothing.
        assert_eq!(
            decide(None, Some("a"), Some(LeaseRequest::Release), 0),
            Ok(LeaseChange::Keep)
        );
    }

    #[test]
    fn the_holder_appends_renews_and_releases() {
        let held = lease("a", 10_000);
        assert_eq!(
            decide(Some(&held), Some("a"), None, 9_999),
            Ok(LeaseChange::Keep)
        );
        assert_eq!(
            decide(
                Some(&held),
                Some("a"),
                Some(LeaseRequest::Hold { ttl_ms: 1000 }),
                9_000
            ),
            Ok(LeaseChange::Set(lease("a", 10_000)))
        );
        assert_eq!(
            decide(Some(&held), Some("a"), Some(LeaseRequest::Release), 9_000),
            Ok(LeaseChange::Clear)
        );
    }

    #[test]
    fn others_are_refused_until_the_lease_runs_out() {
        let held = lease("a", 10_000);
        for (producer, request) in [
            (None, None),
            (Some("b"), None),
            (Some("b"), Some(LeaseRequest::Hold { ttl_ms: 1000 })),
            (Some("b"), Some(LeaseRequest::Release)),
            (Some("A"), None),
        ] {
            assert_eq!(
                decide(Some(&held), producer, request, 8_500),
                Err(ProtocolError::Leased {
                    expires_ms: 10_000,
                    retry_after_s: 2
                }),
                "{producer:?} {request:?}"
            );
        }
        // The last millisecond still counts, and asks for at least a second's wait.
        assert_eq!(
            decide(Some(&held), Some("b"), None, 9_999),
            Err(ProtocolError::Leased {
                expires_ms: 10_000,
                retry_after_s: 1
            })
        );
        // A lease that lasts for ever (a saturated expiry) still asks for a finite wait.
        assert!(matches!(
            decide(Some(&lease("a", i64::MAX)), None, None, -1),
            Err(ProtocolError::Leased { .. })
        ));
        // From its expiry on, the lease is free: another producer may take it, and anyone may
        // append.
        assert_eq!(
            decide(Some(&held), None, None, 10_000),
            Ok(LeaseChange::Keep)
        );
        assert_eq!(
            decide(
                Some(&held),
                Some("b"),
                Some(LeaseRequest::Hold { ttl_ms: 1000 }),
                10_000
            ),
            Ok(LeaseChange::Set(lease("b", 11_000)))
        );
        // A run-out lease released by anyone is cleared.
        assert_eq!(
            decide(Some(&held), Some("b"), Some(LeaseRequest::Release), 10_001),
            Ok(LeaseChange::Clear)
        );
    }

    #[test]
    fn far_future_arithmetic_saturates() {
        assert_eq!(
            decide(
                None,
                Some("a"),
                Some(LeaseRequest::Hold { ttl_ms: 1000 }),
                i64::MAX - 10
            ),
            Ok(LeaseChange::Set(lease("a", i64::MAX)))
        );
        assert_eq!(retry_after(i64::MAX), (i64::MAX as u64).div_ceil(1000));
        assert_eq!(retry_after(-5), 1);
    }
}

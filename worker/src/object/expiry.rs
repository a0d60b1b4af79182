//! TTL and `Stream-Expires-At` for the stream object: a sliding TTL refreshed by reads, writes
//! and open live readers (`touch`, `held_open`), the expiry checked on every request
//! (`lookup`) and by the alarm when none comes (`expire_if_due`), and the stream's removal once
//! expired (`expire`). The rules themselves (`Expiry`, `Standing`) are the core's, in
//! `src/stream.rs`.

use edgestream::headers as h;
use edgestream::stream::{Expiry, Standing};
use edgestream::time::format_rfc3339;
use worker::{Headers, Result};

use super::store::Meta;
use super::{alarm, Lookup, StreamObject};
use crate::http::now_ms;

/// Sliding TTLs are refreshed at most this often (and at most every 5% of the TTL), so a busy
/// stream is not a storage write per read, yet expiry stays accurate for short TTLs.
const TOUCH_EVERY_MS: i64 = 1000;

impl StreamObject {
    /// The stream as a request at `now` finds it. One past its TTL or expiry, reached before
    /// the alarm ran, goes now (unless live readers hold it open).
    pub(super) async fn lookup(&self, now: i64) -> Result<Lookup> {
        let Some(mut meta) = self.meta()? else {
            return Ok(Lookup::Missing);
        };
        let standing =
            match Standing::of(meta.deleted, meta.forks, meta.expiry, meta.accessed_ms, now) {
                Standing::Expired | Standing::ExpiredWithForks
                    if self.held_open(&mut meta, now)? =>
                {
                    Standing::Live
                }
                standing => standing,
            };
        Ok(match standing {
            Standing::Live => Lookup::Live(meta),
            Standing::Deleted => Lookup::Deleted,
            // Reached before the expiry alarm ran: do its work now.
            Standing::ExpiredWithForks => {
                self.expire(meta).await?;
                Lookup::Deleted
            }
            Standing::Expired => {
                self.expire(meta).await?;
                Lookup::Missing
            }
        })
    }

    /// The alarm's expiry work: a stream past its TTL or `Stream-Expires-At` expires, unless
    /// live readers hold it open (the alarm is set for the new deadline then), and one not yet
    /// past it has the alarm set for its deadline.
    pub(super) async fn expire_if_due(&self, mut meta: Meta, now: i64) -> Result<()> {
        match meta.expiry.deadline(meta.accessed_ms) {
            Some(deadline) if now >= deadline => {
                if self.held_open(&mut meta, now)? {
                    if let Some(next) = meta.expiry.deadline(meta.accessed_ms) {
                        alarm::schedule(self, next).await?;
                    }
                } else {
                    self.expire(meta).await?;
                }
            }
            Some(deadline) => alarm::schedule(self, deadline).await?,
            None => {}
        }
        Ok(())
    }

    /// Refreshes a sliding TTL on a read or write.
    pub(super) fn touch(&self, meta: &mut Meta, now: i64) -> Result<()> {
        if touch_due(meta, now) {
            self.slide(meta, now)?;
        }
        Ok(())
    }

    /// Records an access at `now`, from which a sliding TTL counts.
    fn slide(&self, meta: &mut Meta, now: i64) -> Result<()> {
        meta.accessed_ms = now;
        self.store()?.touch(now)?;
        self.remember(meta);
        Ok(())
    }

    /// An open live reader reads all the while, so it slides a TTL as a read request does:
    /// a stream being followed does not expire under its readers, whatever their transport
    /// (a long-poll slid it with each request, an SSE or WebSocket reader only when it
    /// connected). Its callers ask only once a live stream's expiry has passed (the lookup's
    /// `Standing`, the alarm's deadline), so readers cost nothing until then.
    fn held_open(&self, meta: &mut Meta, now: i64) -> Result<bool> {
        if !matches!(meta.expiry, Expiry::Ttl(_)) || !self.hub.has_readers() {
            return Ok(false);
        }
        self.slide(meta, now)?;
        Ok(true)
    }

    /// A live reader went: the TTL counts from now, as it would from its last read request.
    /// Best effort: a failure here only leaves the TTL counting from the reader's last read.
    pub(super) fn reader_left(&self) {
        let now = now_ms();
        let slid = self.meta().and_then(|meta| match meta {
            // It read until now, so even a TTL that ran out while it was open (the alarm not
            // yet run) counts from here; a stream the alarm removed has no metadata.
            Some(mut meta) if !meta.deleted => self.touch(&mut meta, now),
            _ => Ok(()),
        });
        if let Err(e) = slid {
            worker::console_warn!("stream: cannot slide the TTL as a reader leaves: {e}");
        }
    }

    /// An expired stream goes away, unless forks still read through it.
    async fn expire(&self, meta: Meta) -> Result<()> {
        if meta.forks > 0 {
            if !meta.deleted {
                self.soft_delete(meta).await?;
            }
            Ok(())
        } else {
            self.remove(meta, 0).await
        }
    }
}

/// `Stream-TTL` or `Stream-Expires-At`, as the stream has.
pub(super) fn set_expiry(headers: &Headers, expiry: Expiry) -> Result<()> {
    if let Some(ttl) = expiry.ttl_seconds() {
        headers.set(h::STREAM_TTL, &ttl.to_string())?;
    }
    if let Some(at) = expiry.expires_at_ms() {
        headers.set(h::STREAM_EXPIRES_AT, &format_rfc3339(at))?;
    }
    Ok(())
}

/// Whether a sliding TTL's access time is due to be written at `now`: at most once per
/// `TOUCH_EVERY_MS`, and more often for a TTL of under 20 s.
pub(super) fn touch_due(meta: &Meta, now: i64) -> bool {
    let Expiry::Ttl(ttl_seconds) = meta.expiry else {
        return false;
    };
    let every = TOUCH_EVERY_MS.min(ttl_seconds.saturating_mul(50).min(1000) as i64);
    now - meta.accessed_ms >= every
}

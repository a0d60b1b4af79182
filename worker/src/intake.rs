//! How many bytes of request bodies the isolate holds at once.
//!
//! An append's body is read whole before it is stored, and each append to a stream waits in
//! its object while its body arrives, so concurrent large appends add up: locally, eight
//! concurrent 16 MiB appends to one stream grew workerd by 423 MB, and an isolate on
//! Cloudflare has 128 MB for every object it runs, while wasm memory never shrinks. Each body
//! therefore takes a share of one isolate-wide budget ([`Held`]) as its bytes arrive, and a
//! request that would take the isolate past it is answered 503 with `Retry-After` before more
//! of its body is held. Nothing was stored, so the client's retry is safe. WebSocket append
//! frames waiting in a stream object's line take a share too (`object/inbox.rs`).

use std::cell::Cell;

thread_local! {
    /// Bytes reserved by every [`Held`] alive in this isolate.
    static HELD: Cell<u64> = const { Cell::new(0) };
}

/// One body's share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Held {
    bytes: u64,
    limit: u64,
}

impl Held {
    /// A share holding nothing yet, under an isolate-wide `limit`.
    pub fn new(limit: u64) -> Held {
        Held { bytes: 0, limit }
    }

    /// Reserves `more` bytes. False, with nothing reserved, when that would take the bodies
    /// the isolate holds past the limit, unless this is the only body held: one body of any
    /// size the server accepts always goes through.
    pub fn grow(&mut self, more: u64) -> bool {
        HELD.with(|held| {
            let total = held.get();
            let others = total - self.bytes;
            if others > 0 && total.saturating_add(more) > self.limit {
                return false;
            }
            held.set(total.saturating_add(more));
            self.bytes += more;
            true
        })
    }

    /// Gives the share back, for a body refused and read on only to be thrown away.
    pub fn release(&mut self) {
        HELD.with(|held| held.set(held.get() - self.bytes));
        self.bytes = 0;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> u64 {
        HELD.with(Cell::get)
    }

    #[test]
    fn bodies_share_one_budget_and_give_it_back() {
        let mut first = Held::new(100);
        // Alone, a body goes through whatever its size.
        assert!(first.grow(60));
        assert!(first.grow(60));
        assert_eq!(held(), 120);
        let mut second = Held::new(100);
        assert!(!second.grow(1), "past the limit while another body is held");
        assert_eq!(held(), 120);
        drop(first);
        assert_eq!(held(), 0);
        assert!(second.grow(70));
        let mut third = Held::new(100);
        assert!(third.grow(30));
        assert!(!third.grow(1));
        // A refused share still holds what it had, until given back.
        assert_eq!(held(), 100);
        third.release();
        assert_eq!(held(), 70);
        drop(third);
        drop(second);
        assert_eq!(held(), 0);
    }
}

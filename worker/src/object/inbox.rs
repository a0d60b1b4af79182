//! What each client socket has waiting for its turn to append, and how fast it may append.
//!
//! A socket's frames are applied one at a time (`socket_appends`). While an append awaits
//! (a channel's delivery, say), the frames that arrive meanwhile wait in that line, each
//! holding its bytes, with every other socket's frames behind them. So a socket's waiting
//! frames are held to the limits of [`Waiting`], and every waiting frame takes a share of the
//! isolate's body budget ([`Held`]), as an HTTP append's body does. The frame that goes past a
//! limit keeps its place in line without its bytes; at its turn, with everything before it
//! applied and answered, it closes the socket with 1013, and the frames sent after it are
//! dropped unread. Nothing unanswered was applied, so the client resends from its first
//! unanswered frame (a producer's resend is safe). The frames workerd has not yet handed over
//! cannot be counted: the [`AppendRate`] bounds those.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::intake::Held;
use crate::wsproto::{Admit, AppendAllowance, AppendRate, BadFrame, PongPace, Waiting};

/// Waiting frames, append allowances and when pings were answered, by socket (`ClientState::id`).
#[derive(Default)]
pub struct Inbox {
    sockets: RefCell<HashMap<u64, Waiting>>,
    /// Kept from a socket's first append until it closes (or the object sleeps: a socket
    /// that wakes it starts with a whole burst).
    allowances: RefCell<HashMap<u64, AppendAllowance>>,
    /// Kept from a socket's first ping that the runtime does not answer itself.
    pongs: RefCell<HashMap<u64, PongPace>>,
}

/// What becomes of a frame that just arrived.
pub enum Admission<'a> {
    /// It waits for its turn; its place counts until dropped.
    Queued(Place<'a>),
    /// It went past a limit: at its turn it closes the socket instead of appending.
    Overflow(Place<'a>),
    /// An earlier frame went past a limit: this one is dropped unread.
    Dropped,
}

/// A frame's place among its socket's waiting frames, and its share of the body budget.
pub struct Place<'a> {
    inbox: &'a Inbox,
    socket: u64,
    bytes: u64,
    _held: Held,
}

impl Inbox {
    /// Counts a frame of `bytes` from `socket`, under an isolate-wide body budget of `budget`.
    pub fn admit(&self, socket: u64, bytes: u64, budget: u64) -> Admission<'_> {
        let mut held = Held::new(budget);
        let admitted = self
            .sockets
            .borrow_mut()
            .entry(socket)
            .or_default()
            .admit(bytes, || held.grow(bytes));
        let place = |bytes| Place {
            inbox: self,
            socket,
            bytes,
            _held: held,
        };
        match admitted {
            Admit::Queued => Admission::Queued(place(bytes)),
            Admit::Overflow => Admission::Overflow(place(0)),
            Admit::Dropped => Admission::Dropped,
        }
    }

    /// Takes what an append of `bytes` from `socket` costs of its allowance.
    pub fn take(
        &self,
        socket: u64,
        rate: AppendRate,
        bytes: usize,
        now_ms: i64,
    ) -> Result<(), BadFrame> {
        self.allowances
            .borrow_mut()
            .entry(socket)
            .or_insert_with(|| AppendAllowance::new(rate, now_ms))
            .take(rate, bytes, now_ms)
    }

    /// Whether a ping from `socket` that came in at `now_ms` is answered ([`PongPace`]).
    pub fn answers_ping(&self, socket: u64, now_ms: i64) -> bool {
        self.pongs
            .borrow_mut()
            .entry(socket)
            .or_default()
            .answer(now_ms)
    }

    /// Forgets a socket that closed.
    pub fn forget(&self, socket: u64) {
        self.allowances.borrow_mut().remove(&socket);
        self.pongs.borrow_mut().remove(&socket);
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut sockets = self.inbox.sockets.borrow_mut();
        if sockets
            .get_mut(&self.socket)
            .is_some_and(|waiting| waiting.taken(self.bytes))
        {
            sockets.remove(&self.socket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wsproto::{MAX_WAITING_BYTES as MAX_BYTES, MAX_WAITING_FRAMES as MAX_FRAMES};

    const BUDGET: u64 = 64 * 1024 * 1024;

    fn queued(a: Admission<'_>) -> Place<'_> {
        match a {
            Admission::Queued(place) => place,
            _ => panic!("not queued"),
        }
    }

    #[test]
    fn a_socket_past_its_frame_limit_overflows_and_its_later_frames_are_dropped() {
        let inbox = Inbox::default();
        let places: Vec<_> = (0..MAX_FRAMES)
            .map(|_| queued(inbox.admit(1, 10, BUDGET)))
            .collect();
        // Another socket is not held to the first one's count.
        let other = queued(inbox.admit(2, 10, BUDGET));
        let Admission::Overflow(overflow) = inbox.admit(1, 10, BUDGET) else {
            panic!("the frame past the limit did not overflow");
        };
        assert!(matches!(inbox.admit(1, 10, BUDGET), Admission::Dropped));
        // While the overflowing frame waits, even with the line gone, the socket takes nothing.
        drop(places);
        assert!(matches!(inbox.admit(1, 10, BUDGET), Admission::Dropped));
        drop(overflow);
        // Once it has had its turn (the socket is closed), the socket starts afresh.
        assert!(matches!(inbox.admit(1, 10, BUDGET), Admission::Queued(_)));
        drop(other);
        assert!(inbox.sockets.borrow().is_empty());
    }

    #[test]
    fn bytes_count_per_socket_and_against_the_isolate_budget() {
        let inbox = Inbox::default();
        let big = queued(inbox.admit(1, MAX_BYTES - 1, BUDGET));
        assert!(matches!(inbox.admit(1, 2, BUDGET), Admission::Overflow(_)));
        drop(big);
        assert!(inbox.sockets.borrow().is_empty());
        // The budget is shared with every body the isolate holds: past it, a socket overflows
        // though its own limits are not reached (one frame alone always fits).
        let first = queued(inbox.admit(3, 600, 1000));
        assert!(matches!(inbox.admit(4, 600, 1000), Admission::Overflow(_)));
        drop(first);
        assert!(matches!(inbox.admit(5, 600, 1000), Admission::Queued(_)));
    }
}

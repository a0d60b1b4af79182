//! One at a time, in arrival order, across `await`s: an object's input gate lets another event
//! in whenever a handler awaits, so work that awaits and must not interleave takes turns here.
//! A client socket's append frames (each message is its own event, yet a producer may pipeline
//! its appends), a stream's owed work, and a subscription's changes each have one.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Lets callers through one at a time, in the order they arrived. The place in line is taken
/// when [`Turnstile::enter`] is called.
#[derive(Default)]
pub struct Turnstile {
    next: Cell<u64>,
    serving: Cell<u64>,
    /// Tickets whose holders left the line before their turn.
    abandoned: RefCell<Vec<u64>>,
    /// The waker of each ticket in line, so a turn wakes only the next holder: waking every
    /// waiter on each turn made a line of n cost n² polls (a client pipelining thousands of
    /// append frames stalled the whole isolate).
    waiting: RefCell<BTreeMap<u64, Waker>>,
}

impl Turnstile {
    pub fn enter(&self) -> Enter<'_> {
        let ticket = self.next.get();
        self.next.set(ticket + 1);
        Enter {
            turnstile: self,
            ticket,
            admitted: false,
        }
    }

    /// Serves the next ticket still in line, and wakes its holder.
    fn advance(&self) {
        let mut next = self.serving.get() + 1;
        let mut abandoned = self.abandoned.borrow_mut();
        while let Some(i) = abandoned.iter().position(|&t| t == next) {
            abandoned.swap_remove(i);
            next += 1;
        }
        drop(abandoned);
        self.serving.set(next);
        let waker = self.waiting.borrow_mut().remove(&next);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// How many have taken a place in line and not yet had their turn or left.
    #[cfg(test)]
    fn in_line(&self) -> usize {
        self.waiting.borrow().len()
    }
}

/// A place in line at the [`Turnstile`]; resolves to the turn.
pub struct Enter<'a> {
    turnstile: &'a Turnstile,
    ticket: u64,
    admitted: bool,
}

impl<'a> Future for Enter<'a> {
    type Output = Turn<'a>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Turn<'a>> {
        let turnstile = self.turnstile;
        if turnstile.serving.get() == self.ticket {
            self.admitted = true;
            return Poll::Ready(Turn(turnstile));
        }
        turnstile
            .waiting
            .borrow_mut()
            .insert(self.ticket, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Enter<'_> {
    fn drop(&mut self) {
        if self.admitted {
            return;
        }
        self.turnstile.waiting.borrow_mut().remove(&self.ticket);
        // Left the line: its turn, should it come, passes to the next.
        if self.turnstile.serving.get() == self.ticket {
            self.turnstile.advance();
        } else {
            self.turnstile.abandoned.borrow_mut().push(self.ticket);
        }
    }
}

/// A turn at the [`Turnstile`]; the next one starts when it is dropped.
pub struct Turn<'a>(&'a Turnstile);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.advance();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    #[test]
    fn turns_are_taken_in_arrival_order() {
        let turnstile = Turnstile::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut first = Box::pin(turnstile.enter());
        let mut second = Box::pin(turnstile.enter());
        let mut third = Box::pin(turnstile.enter());
        // Polled out of order, only the first to arrive gets in.
        assert!(third.as_mut().poll(&mut cx).is_pending());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        let Poll::Ready(turn) = first.as_mut().poll(&mut cx) else {
            panic!("the first arrival waits");
        };
        assert!(third.as_mut().poll(&mut cx).is_pending());
        drop(turn);
        assert!(third.as_mut().poll(&mut cx).is_pending());
        let Poll::Ready(turn) = second.as_mut().poll(&mut cx) else {
            panic!("the second arrival waits after the first left");
        };
        drop(turn);
        assert!(pin!(third).poll(&mut cx).is_ready());
    }

    #[test]
    fn a_place_given_up_passes_its_turn_on() {
        let turnstile = Turnstile::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut first = Box::pin(turnstile.enter());
        let second = turnstile.enter();
        let mut third = Box::pin(turnstile.enter());
        let Poll::Ready(turn) = first.as_mut().poll(&mut cx) else {
            panic!("the first arrival waits");
        };
        drop(second); // leaves before its turn
        assert!(third.as_mut().poll(&mut cx).is_pending());
        drop(turn);
        assert!(third.as_mut().poll(&mut cx).is_ready());
        // Admitted, then dropped unpolled at its turn: the line still moves.
        let fourth = turnstile.enter();
        let mut fifth = Box::pin(turnstile.enter());
        drop(third);
        drop(fourth);
        assert!(fifth.as_mut().poll(&mut cx).is_ready());
    }

    /// Counts its wakes.
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_turn_wakes_only_the_next_in_line() {
        let turnstile = Turnstile::default();
        let counters: Vec<Arc<Counter>> = (0..100)
            .map(|_| Arc::new(Counter(AtomicUsize::new(0))))
            .collect();
        let mut line: Vec<_> = (0..100).map(|_| Box::pin(turnstile.enter())).collect();
        for (enter, counter) in line.iter_mut().zip(&counters).skip(1) {
            let waker = Waker::from(counter.clone());
            assert!(enter
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending());
        }
        assert_eq!(turnstile.in_line(), 99);
        let woken = || -> Vec<usize> {
            counters
                .iter()
                .map(|c| c.0.load(Ordering::Relaxed))
                .collect()
        };
        let mut cx = Context::from_waker(Waker::noop());
        for (i, enter) in line.iter_mut().enumerate() {
            let Poll::Ready(turn) = enter.as_mut().poll(&mut cx) else {
                panic!("{i} was not let in at its turn");
            };
            drop(turn);
            // Every holder up to the next was woken once; none after it.
            let expected: Vec<usize> = (0..100)
                .map(|j| usize::from(j >= 1 && j <= i + 1))
                .collect();
            assert_eq!(woken(), expected, "after turn {i}");
        }
        assert_eq!(turnstile.in_line(), 0);
        // One that leaves the line takes its waker with it.
        let mut first = Box::pin(turnstile.enter());
        let mut second = Box::pin(turnstile.enter());
        let waker = Waker::from(counters[0].clone());
        assert!(second
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        drop(second);
        assert_eq!(turnstile.in_line(), 0);
        assert!(first.as_mut().poll(&mut cx).is_ready());
    }
}

//! One at a time, in arrival order, across `await`s: an object's input gate lets another event
//! in whenever a handler awaits, so work that awaits and must not interleave takes turns here.
//! A client socket's append frames (each message is its own event, yet a producer may pipeline
//! its appends), a stream's owed work, and a subscription's changes each have one.

use std::cell::{Cell, RefCell};
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
    waiting: RefCell<Vec<Waker>>,
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

    /// Serves the next ticket still in line, and lets every waiter look.
    fn advance(&self) {
        let mut next = self.serving.get() + 1;
        let mut abandoned = self.abandoned.borrow_mut();
        while let Some(i) = abandoned.iter().position(|&t| t == next) {
            abandoned.swap_remove(i);
            next += 1;
        }
        drop(abandoned);
        self.serving.set(next);
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for waker in waiting {
            waker.wake();
        }
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
        turnstile.waiting.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Enter<'_> {
    fn drop(&mut self) {
        if self.admitted {
            return;
        }
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
}

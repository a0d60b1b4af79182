//! Pipelined producer appends that arrive out of order (a `Producer-Seq` gap) wait a moment for
//! those before them.
//!
//! A client with several appends in flight sends them on several connections, and the runtime
//! may hand them to the object in any order (each body is read with awaits in between). Answered
//! at once, an append that came before its predecessor would get 409 (a sequence gap), and its
//! client would send it again once the predecessor landed: on this machine about half of a
//! browser producer's POSTs were such 409s. So an append ahead of its producer's state (a
//! sequence gap, or a new epoch's append before that epoch's seq 0) waits, up to
//! [`GAP_WAIT_MS`], until the producer's state moves, and is then decided as usual: still
//! ahead, it is still 409 (or 400 for the new epoch).

use std::cell::RefCell;
use std::collections::HashMap;

use futures_channel::oneshot;

use crate::http;

/// How long an append ahead of its producer waits for the appends before it.
pub const GAP_WAIT_MS: i64 = 500;

/// The appends waiting for their producer's state to move, by producer id.
#[derive(Default)]
pub struct ProducerTurns {
    waiting: RefCell<HashMap<String, Vec<oneshot::Sender<()>>>>,
}

impl ProducerTurns {
    /// Waits until producer `id` appends (see [`ProducerTurns::advanced`]) or `ms` pass.
    pub async fn wait(&self, id: &str, ms: i64) {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .borrow_mut()
            .entry(id.to_string())
            .or_default()
            .push(tx);
        // The receiver is dropped by the end of this statement, which cancels its sender.
        let timed_out = http::within(ms.max(0) as u64, rx).await.is_none();
        if timed_out {
            // Drop this waiter's sender, and the entry once nobody waits on it.
            let mut waiting = self.waiting.borrow_mut();
            if let Some(list) = waiting.get_mut(id) {
                list.retain(|tx| !tx.is_canceled());
                if list.is_empty() {
                    waiting.remove(id);
                }
            }
        }
    }

    /// Producer `id`'s state moved: every append waiting on it looks again.
    pub fn advanced(&self, id: &str) {
        let woken = self.waiting.borrow_mut().remove(id);
        for tx in woken.into_iter().flatten() {
            let _ = tx.send(());
        }
    }
}

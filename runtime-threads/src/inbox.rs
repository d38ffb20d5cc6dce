//! The inbox: where worker threads leave completed effects for the event
//! loop, and how they wake it.
//!
//! Keeps true (checked by the loom models in `loom_tests.rs`):
//! - every pushed item is drained exactly once, in the order of the pushes
//!   that the lock serialised;
//! - while the inbox holds an item, a wake-up is pending or will be sent:
//!   the push that makes the inbox non-empty wakes the loop, after
//!   releasing the lock, and only that push does. So a burst of completions
//!   costs one wake-up;
//! - `take_all` resets the wake-up source *before* it drains, never after:
//!   a push that lands after the drain finds the inbox empty and wakes
//!   again, so the loop never sleeps on a non-empty inbox.

use crate::sync::{Arc, Mutex, lock};
use crate::wake::Wake;

/// A multi-producer, single-consumer queue that wakes its consumer.
pub(crate) struct Inbox<T, W> {
    items: Mutex<Vec<T>>,
    waker: Arc<W>,
}

impl<T, W: Wake> Inbox<T, W> {
    pub(crate) fn new(waker: Arc<W>) -> Inbox<T, W> {
        Inbox {
            items: Mutex::new(Vec::new()),
            waker,
        }
    }

    /// Leaves `item` for the consumer, waking it if the inbox was empty.
    pub(crate) fn push(&self, item: T) {
        let first = {
            let mut items = lock(&self.items);
            items.push(item);
            items.len() == 1
        };
        if first {
            self.waker.wake();
        }
    }

    /// Takes the pending wake-ups, then moves every item pushed so far to
    /// the end of `into`. Called by the one consumer when woken.
    pub(crate) fn take_all(&self, into: &mut Vec<T>) {
        self.waker.reset();
        into.append(&mut lock(&self.items));
    }
}

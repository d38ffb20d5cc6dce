//! The shutdown flag: any thread may ask the server to stop; the event
//! loop notices at its next iteration.
//!
//! Keeps true (checked by the loom models in `loom_tests.rs`): once
//! `request` has returned, the loop wakes up (the first request sends a
//! wake-up; later ones find the flag set and need none) and, having reset
//! its wake-up source, sees the flag. Asking twice is the same as asking
//! once.

use crate::sync::{Arc, AtomicBool, Ordering};
use crate::wake::Wake;

/// A one-way flag with a wake-up attached.
pub(crate) struct ShutdownFlag<W> {
    requested: AtomicBool,
    waker: Arc<W>,
}

impl<W: Wake> ShutdownFlag<W> {
    pub(crate) fn new(waker: Arc<W>) -> ShutdownFlag<W> {
        ShutdownFlag {
            requested: AtomicBool::new(false),
            waker,
        }
    }

    /// Asks for shutdown; idempotent, callable from any thread.
    pub(crate) fn request(&self) {
        if !self.requested.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// True once shutdown was asked for.
    pub(crate) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }
}

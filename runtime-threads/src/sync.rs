//! The synchronisation primitives behind the runtime's shared state: std's
//! in every normal build, loom's under `cfg(guixd_loom)`, so that the loom
//! models in `loom_tests.rs` explore every interleaving of the very code
//! the server runs.
//!
//! Keeps true: the inbox, the worker pool and the shutdown flag reach
//! threads, locks, condition variables and atomics only through this
//! module, never through `std::sync` or `std::thread` directly. (The public
//! API takes `std::sync::Arc<Os>`; that `Arc` is only read, never part of
//! a synchronisation protocol of ours.) The cfg is our own and not `loom`,
//! because a plain `--cfg loom` changes crates that other parts of the
//! workspace depend on.

#[cfg(guixd_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, Ordering};
#[cfg(guixd_loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(guixd_loom)]
pub(crate) use loom::thread;

#[cfg(not(guixd_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(not(guixd_loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(not(guixd_loom))]
pub(crate) use std::thread;

/// Locks `mutex`, taking the data even if a thread panicked while holding
/// it: every critical section here only moves items in or out of a
/// collection, so a panic elsewhere cannot leave it half-updated.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `condvar`, with the same reasoning about poisoning as [`lock`].
pub(crate) fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar
        .wait(guard)
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

//! Support for the scenarios that run real daemons and the real Guix
//! client: the Guix root, the guixd binaries, daemon handles, client runs
//! and the shared signing keys.
//!
//! Keeps true: nothing here skips a test; a missing prerequisite (not root,
//! no Guix root, a guixd that does not build or start) is a panic that
//! names it. Tests that use these helpers are independent: each daemon has
//! its own directory, store and socket.

// Not every scenario uses every helper.
#![allow(dead_code)]

pub mod bins;
pub mod build_users;
pub mod client;
pub mod daemon;
pub mod http;
pub mod keys;
pub mod process;
pub mod root;
pub mod store;
pub mod transcript;

pub use bins::Runtime;
pub use client::run_guix;
pub use daemon::{Daemon, DaemonConfig, Implementation, Slot, Substitutes};

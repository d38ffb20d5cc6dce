//! guixd-tests: helpers shared by the integration binary and the benchmark
//! programs in this package.
//!
//! Keeps true: nothing here is used by the daemon itself; it only locates
//! test data (golden vectors) and runs the side-by-side benchmark
//! ([`bench`]) against daemons in the Guix root.

use std::path::PathBuf;

pub mod bench;

/// The directory of golden vectors produced by the real Guix client
/// (`tests/golden/`).
pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden")
}

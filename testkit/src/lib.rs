//! guixd-testkit: what guixd's tests share.
//!
//! For now this is the seeded property-test entry point, [`check`]:
//! quickcheck does not print the seed of a failing run, so every run here
//! picks a seed (or takes `GUIXD_SEED`), and a failure names it so the run
//! can be replayed exactly. The in-memory store, scripted clients and the
//! simulator join this crate with the issues that need them.

pub mod seed;

pub use seed::{check, check_n, seed};

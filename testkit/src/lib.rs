//! guixd-testkit: what guixd's tests share.
//!
//! - [`check`]: the seeded property-test entry point. quickcheck does not
//!   print the seed of a failing run, so every run here picks a seed (or
//!   takes `GUIXD_SEED`), and a failure names it so the run can be replayed
//!   exactly.
//! - [`client`]: a scripted client of the worker protocol, speaking as the
//!   Guix 1.5.0 client does, sans-IO underneath and blocking on top.
//! - [`memstore`]: an in-memory store that carries out every effect of the
//!   core as `guixd-os` does, keeping written and durable state apart,
//!   with injectable failures, crashes and scripted fake builders.
//! - [`sim`]: the deterministic simulator (daemon, in-memory store, fake
//!   builders and scripted clients, one seed), which prints its seed on
//!   failure; `GUIXD_SIM_RUNS` sets how many seeds its tests run and
//!   `GUIXD_SIM_TRACE` how many trace lines a failure shows.
//! - [`rng`]: the simulator's tiny seeded generator.
//! - [`server`]: in-process test servers on a temporary store, for either
//!   runtime, and [`both_runtimes!`], which runs one scenario on both.
//!
//! Keeps true: nothing here is needed by the daemon itself; everything
//! random is seeded and replayable from `GUIXD_SEED`.

pub mod client;
pub mod memstore;
pub mod rng;
pub mod seed;
pub mod server;
pub mod sim;

pub use client::{Client, ClientError};
pub use memstore::MemStore;
pub use seed::{check, check_n, seed};
pub use server::{Runtime, TestServer};

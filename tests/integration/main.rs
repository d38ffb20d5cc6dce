//! The one integration test binary of guixd. Each module is a group of
//! scenarios; scenarios that involve a daemon run on both runtimes.

mod bad_input;
mod build_daemons;
mod builds;
mod concurrency;
mod crash;
mod gc;
mod golden;
mod interop;
mod runtimes;
mod support;

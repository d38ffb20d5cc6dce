//! The one integration test binary of guixd. Each module is a group of
//! scenarios; scenarios that involve a daemon run on both runtimes.

mod builds;
mod golden;
mod interop;
mod support;

//! guixd-runtime-smol: drives the core's
//! [`Daemon`](guixd_core::daemon::Daemon) with smol, async-io and
//! blocking.
//!
//! One thread of our own runs a single-threaded executor. The `Daemon`
//! (which is `!Send`) is created on that thread and shared, behind a
//! `RefCell`, by the tasks of that executor: one accept task per listener,
//! one task per connection (it reads and writes the socket), one timer
//! task, one short task per effect, which runs `Os::run` on `blocking`'s
//! thread pool and hands the result back (except point reads that need not
//! wait, answered on the spot by `Os::run_now`), one task per builder (it spawns
//! it on that pool, then watches its pidfd and reads its log; see
//! `child.rs`), and a pressure task while builders run.
//!
//! What it keeps true:
//! - it decides nothing about the protocol or the store: every decision is
//!   the core's; this crate moves bytes, runs effects and keeps the timer;
//! - after every `handle_*` call the core's outputs are drained at once,
//!   and the deadline and the read budgets of starved connections are
//!   re-read (see `runtime::Inner::call`);
//! - never more than `read_budget` bytes are read from a connection before
//!   they are handed in, and reading stops while the budget is 0;
//! - bytes of one connection are written in the order the core sent them,
//!   and every written byte is reported;
//! - no work per event grows with the number of connections: idle
//!   connections cost one parked task and no buffer.

mod child;
mod conn;
mod runtime;

use guixd_core::config::Config;
use guixd_os::Os;
use guixd_os::net::Listener;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

/// The runtime's name, printed by `guixd --version`.
pub const NAME: &str = "smol";

/// A running server: the thread that serves, and the way to stop it.
///
/// Dropping a `Server` asks it to stop but does not wait for it.
pub struct Server {
    shutdown: async_channel::Sender<()>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Server {
    /// Starts serving `listeners` (already bound and listening) with a
    /// fresh core built from `config`, on a thread of its own. Returns once
    /// the listeners are registered with the reactor and that thread runs;
    /// connections made meanwhile wait in the listen backlog.
    pub fn start(config: Config, os: Arc<Os>, listeners: Vec<Listener>) -> io::Result<Server> {
        let listeners = listeners
            .into_iter()
            .map(async_io::Async::new)
            .collect::<io::Result<Vec<_>>>()?;
        // A capacity of one is enough: a second request to stop changes
        // nothing, so `shutdown` drops it when the first is still queued.
        let (shutdown, requests) = async_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("guixd-smol".to_owned())
            .spawn(move || runtime::serve(config, os, listeners, requests))?;
        Ok(Server {
            shutdown,
            thread: Some(thread),
        })
    }

    /// Asks the server to stop: it stops accepting, shuts the core down,
    /// lets the effects in flight finish and closes every connection.
    /// Idempotent, and callable from any thread.
    pub fn shutdown(&self) {
        // Full means a request is already queued; closed means the server
        // has stopped already. Either way there is nothing more to do.
        let _ = self.shutdown.try_send(());
    }

    /// Waits until the server has stopped. Errors while serving are
    /// logged, not fatal; the error here is the runtime thread's panic.
    pub fn join(mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the smol runtime thread panicked")))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

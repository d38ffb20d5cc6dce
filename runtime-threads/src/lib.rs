//! guixd-runtime-threads: drives the core's [`Daemon`] with plain threads.
//!
//! One event-loop thread owns the `Daemon` (it is `!Send`, so it is made on
//! that thread) and watches the listening sockets, the connections and an
//! eventfd with epoll; a fixed pool of worker threads runs the effects the
//! core asks for through [`guixd_os::Os::run`] and leaves the results in an
//! inbox that wakes the loop (point reads that need not wait are answered
//! on the loop thread: [`guixd_os::Os::run_now`]). `event_loop.rs` says what the loop keeps
//! true; `inbox.rs`, `pool.rs` and `shutdown.rs` hold the only state shared
//! between threads, built on the `sync` facade so that loom models
//! (`loom_tests.rs`, run by `runtime-threads/loom.sh`) check them.
//!
//! Like every runtime, this crate makes no protocol, store or scheduling
//! decision: it never looks inside an effect or a request.
//!
//! [`Daemon`]: guixd_core::daemon::Daemon

mod event_loop;
mod inbox;
mod pool;
mod shutdown;
mod sync;
mod wake;

#[cfg(all(test, guixd_loom))]
mod loom_tests;

use guixd_core::config::Config;
use guixd_os::Os;
use guixd_os::net::Listener;
use std::io;

/// The runtime's name, printed by `guixd --version`.
pub const NAME: &str = "threads";

/// Where the daemon's own log lines go. Each call gets one or more whole
/// lines, each ending with a newline.
pub type LogSink = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// How this runtime uses threads and buffers. The defaults suit a daemon;
/// tests may shrink them.
#[derive(Clone)]
pub struct ThreadsConfig {
    /// Worker threads running effects (at least one is started).
    pub workers: usize,
    /// Bytes read from a socket in one call (never more than the core's
    /// read budget allows).
    pub read_chunk_bytes: usize,
    /// Most epoll events taken in one wait.
    pub events_per_wait: usize,
    /// Where log lines go; `None` is the process's standard error.
    pub log_sink: Option<LogSink>,
}

impl Default for ThreadsConfig {
    fn default() -> ThreadsConfig {
        ThreadsConfig {
            workers: 16,
            read_chunk_bytes: 256 << 10,
            events_per_wait: 1024,
            log_sink: None,
        }
    }
}

impl std::fmt::Debug for ThreadsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadsConfig")
            .field("workers", &self.workers)
            .field("read_chunk_bytes", &self.read_chunk_bytes)
            .field("events_per_wait", &self.events_per_wait)
            .field("log_sink", &self.log_sink.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// A running server. Dropping it without [`Server::join`] shuts it down and
/// waits for it.
pub struct Server {
    handle: ShutdownHandle,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

/// Asks a server to stop, from any thread (a signal-handling thread, say),
/// while another thread waits in [`Server::join`].
#[derive(Clone)]
pub struct ShutdownHandle {
    flag: sync::Arc<shutdown::ShutdownFlag<wake::EventFd>>,
}

impl ShutdownHandle {
    /// Same as [`Server::shutdown`].
    pub fn shutdown(&self) {
        self.flag.request();
    }
}

impl std::fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("requested", &self.flag.is_requested())
            .finish()
    }
}

impl Server {
    /// Starts serving `listeners` (already bound; see
    /// [`guixd_os::net::Listener`]) with a fresh core built from `config`,
    /// on the runtime's own threads, with the default [`ThreadsConfig`].
    /// Returns once the server runs.
    pub fn start(
        config: Config,
        os: std::sync::Arc<Os>,
        listeners: Vec<Listener>,
    ) -> io::Result<Server> {
        Server::start_with(ThreadsConfig::default(), config, os, listeners)
    }

    /// Like [`Server::start`], with the runtime's own settings.
    pub fn start_with(
        threads: ThreadsConfig,
        config: Config,
        os: std::sync::Arc<Os>,
        listeners: Vec<Listener>,
    ) -> io::Result<Server> {
        let wake = sync::Arc::new(wake::EventFd::new()?);
        let epoll = event_loop::watch(&wake, &listeners)?;
        let inbox = sync::Arc::new(inbox::Inbox::new(wake.clone()));
        let flag = sync::Arc::new(shutdown::ShutdownFlag::new(wake.clone()));
        let loop_os = os.clone();
        let pool = {
            let inbox = inbox.clone();
            pool::Pool::start(threads.workers, "guixd-worker", move |job| {
                event_loop::run_job(&os, &inbox, job)
            })?
        };
        let parts = event_loop::Parts {
            epoll,
            inbox,
            shutdown: flag.clone(),
            pool,
            listeners,
            os: loop_os,
        };
        let thread = std::thread::Builder::new()
            .name("guixd-loop".to_owned())
            .spawn(move || event_loop::run(parts, config, &threads))?;
        Ok(Server {
            handle: ShutdownHandle { flag },
            thread: Some(thread),
        })
    }

    /// Asks the server to stop (idempotent, callable from any thread): stop
    /// accepting, `handle_shutdown` on the core, let effects in flight
    /// finish, close connections.
    pub fn shutdown(&self) {
        self.handle.shutdown();
    }

    /// A handle that asks this server to stop, for another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Waits until the server has stopped; returns the first fatal I/O
    /// error.
    pub fn join(mut self) -> io::Result<()> {
        self.wait()
    }

    fn wait(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        match thread.join() {
            Ok(result) => result,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(io::Error::other(format!(
                    "guixd bug: the event loop panicked: {what}"
                )))
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
            let _ = self.wait();
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("running", &self.thread.is_some())
            .finish()
    }
}

//! Builders: spawning a prepared build on `blocking`'s pool, then one task
//! per child that watches its pidfd and reads its log pipe; and the
//! pressure readings the core asks for while builders run.
//!
//! What it keeps true:
//! - every `Output::Spawn` is answered exactly once with
//!   `handle_child_started` (even if `Os::spawn_build` panics);
//! - a started child's exit is reported once, after reaping it through its
//!   pidfd (`waitid(P_PIDFD)`), and the end of its log once; it is never
//!   signalled by pid, and `Output::Kill` for a child already reaped does
//!   nothing;
//! - its log is read only while the core's `child_read_budget` is above 0,
//!   never more than that budget at once (like a connection's input);
//! - while children run, the pressure is read every
//!   [`PRESSURE_INTERVAL`] and handed in with `handle_pressure`.

use crate::runtime::{Inner, Notify};
use async_io::{Async, Timer};
use futures_lite::future;
use guixd_core::build_plan::{BuildId, ChildId};
use guixd_core::daemon::ExitStatus;
use rustix::io::Errno;
use std::cell::{Cell, RefCell};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

/// How often the machine's pressure is read while builders run.
const PRESSURE_INTERVAL: Duration = Duration::from_secs(5);

/// How often a child whose pidfd could not be registered with the reactor
/// is asked whether it exited.
const CHILD_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// SIGKILL, 9 on every Linux architecture.
const SIGKILL: i32 = 9;

/// A running builder, shared by its task and the dispatch of `Kill`.
pub(crate) struct ChildIo {
    pub(crate) id: ChildId,
    /// `None` once the child was reaped.
    pidfd: RefCell<Option<Rc<Async<OwnedFd>>>>,
    /// Listed among the starved log readers.
    pub(crate) starved: Cell<bool>,
    /// The log reader has stopped.
    pub(crate) ended: Cell<bool>,
    /// Wakes the log reader (budget).
    pub(crate) task: Notify,
}

/// Starts the build `build` as `child`.
pub(crate) fn spawn(inner: &Rc<Inner>, child: ChildId, build: BuildId) {
    let Some(executor) = inner.executor() else {
        return;
    };
    let inner = inner.clone();
    executor
        .spawn(async move {
            let os = inner.os();
            let result = blocking::unblock(move || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| os.spawn_build(build)))
                    .unwrap_or_else(|panic| Err(guixd_os::panicked(panic, "spawning a builder")))
            })
            .await;
            let spawned = match result {
                Ok(spawned) => spawned,
                Err(e) => {
                    inner.call(|daemon, now| daemon.handle_child_started(now, child, Err(e)));
                    return;
                }
            };
            let pidfd = Async::new(spawned.pidfd).map(Rc::new);
            let log = Async::new(spawned.log);
            let (pidfd, log) = match (pidfd, log) {
                (Ok(pidfd), Ok(log)) => (pidfd, log),
                (pidfd, log) => {
                    // Without the reactor the child can be neither waited
                    // for nor read: kill it, and wait for it by polling.
                    inner.log("cannot watch a builder; killing it");
                    let pidfd = match pidfd {
                        Ok(p) => Rc::try_unwrap(p).ok().and_then(|a| a.into_inner().ok()),
                        Err(_) => None,
                    };
                    drop(log);
                    inner.call(|daemon, now| {
                        daemon.handle_child_started(now, child, Ok(spawned.pid));
                    });
                    if let Some(pidfd) = pidfd {
                        let _ = guixd_os::child::kill_child(&pidfd, SIGKILL);
                        let status = poll_exit(&pidfd).await;
                        inner.call(|daemon, now| daemon.handle_child_exited(now, child, status));
                    } else {
                        inner.call(|daemon, now| {
                            daemon.handle_child_exited(now, child, ExitStatus::Signal(SIGKILL));
                        });
                    }
                    inner.call(|daemon, now| daemon.handle_child_output_closed(now, child));
                    return;
                }
            };
            let io = Rc::new(ChildIo {
                id: child,
                pidfd: RefCell::new(Some(pidfd.clone())),
                starved: Cell::new(false),
                ended: Cell::new(false),
                task: Notify::default(),
            });
            inner.add_child(io.clone());
            inner.call(|daemon, now| daemon.handle_child_started(now, child, Ok(spawned.pid)));
            start_pressure_readings(&inner);
            future::zip(watch_exit(&inner, &io, pidfd), read_log(&inner, &io, log)).await;
            io.ended.set(true);
            inner.remove_child(child);
        })
        .detach();
}

/// Kills `child` through its pidfd, if it was not reaped yet.
pub(crate) fn kill(inner: &Inner, child: ChildId) {
    let Some(io) = inner.child(child) else {
        return;
    };
    let pidfd = io.pidfd.borrow().clone();
    if let Some(pidfd) = pidfd {
        if let Err(e) = guixd_os::child::kill_child(pidfd.get_ref(), SIGKILL) {
            inner.log(&format!("cannot kill a builder: {e}"));
        }
    }
}

/// Waits until the child exited, reaps it and reports it.
async fn watch_exit(inner: &Rc<Inner>, io: &ChildIo, pidfd: Rc<Async<OwnedFd>>) {
    let status = loop {
        match guixd_os::child::wait_exit(pidfd.get_ref()) {
            Ok(Some(status)) => break exit_status(status),
            Ok(None) => {
                if pidfd.readable().await.is_err() {
                    break poll_exit(pidfd.get_ref()).await;
                }
            }
            Err(e) => {
                inner.log(&format!("cannot wait for a builder: {e}"));
                break ExitStatus::Signal(SIGKILL);
            }
        }
    };
    io.pidfd.borrow_mut().take();
    inner.call(|daemon, now| daemon.handle_child_exited(now, io.id, status));
}

/// Asks every [`CHILD_POLL_INTERVAL`] whether the child exited.
async fn poll_exit(pidfd: &OwnedFd) -> ExitStatus {
    loop {
        match guixd_os::child::wait_exit(pidfd) {
            Ok(Some(status)) => return exit_status(status),
            Ok(None) => {
                Timer::after(CHILD_POLL_INTERVAL).await;
            }
            Err(_) => return ExitStatus::Signal(SIGKILL),
        }
    }
}

/// Reads the child's log while the core has budget, until end of file.
async fn read_log(inner: &Rc<Inner>, io: &Rc<ChildIo>, log: Async<OwnedFd>) {
    loop {
        let budget = future::poll_fn(|cx| {
            let budget = inner.child_read_budget(io.id);
            if budget > 0 {
                return Poll::Ready(budget);
            }
            io.task.register(cx);
            inner.starve_child(io);
            Poll::Pending
        })
        .await;
        let outcome = {
            let mut buffer = inner.read_buffer.borrow_mut();
            let want = budget.min(buffer.len());
            match rustix::io::read(log.get_ref(), &mut buffer[..want]) {
                Ok(0) => Read::Closed,
                Ok(n) => {
                    inner.call(|daemon, now| daemon.handle_child_output(now, io.id, &buffer[..n]));
                    Read::Data
                }
                Err(Errno::AGAIN) => Read::Empty,
                Err(Errno::INTR) => Read::Data,
                Err(_) => Read::Closed,
            }
        };
        match outcome {
            Read::Data => future::yield_now().await,
            Read::Empty => {
                if log.readable().await.is_err() {
                    break;
                }
            }
            Read::Closed => break,
        }
    }
    inner.call(|daemon, now| daemon.handle_child_output_closed(now, io.id));
}

enum Read {
    Data,
    Empty,
    Closed,
}

/// Starts the task reading the pressure, unless it runs: it reads once at
/// once, then every [`PRESSURE_INTERVAL`] while children run.
fn start_pressure_readings(inner: &Rc<Inner>) {
    if inner.pressure_task.replace(true) {
        return;
    }
    let Some(executor) = inner.executor() else {
        inner.pressure_task.set(false);
        return;
    };
    let inner = inner.clone();
    executor
        .spawn(async move {
            while inner.has_children() {
                if let Some(pressure) = blocking::unblock(guixd_os::pressure::read).await {
                    inner.call(|daemon, now| daemon.handle_pressure(now, pressure));
                }
                Timer::after(PRESSURE_INTERVAL).await;
            }
            inner.pressure_task.set(false);
        })
        .detach();
}

/// How a reaped child ended, as the core names it.
fn exit_status(status: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(signal)) => ExitStatus::Signal(signal),
        // One of the two is always set for a child that ended.
        (None, None) => ExitStatus::Signal(SIGKILL),
    }
}

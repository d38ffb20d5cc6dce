//! The state shared by every task of the runtime thread, and the one door
//! into the core: [`Inner::call`].
//!
//! What it keeps true:
//! - everything here lives on the runtime thread (it is `Rc`/`RefCell`
//!   state, never sent anywhere); only effect closures and their results
//!   cross to `blocking`'s threads;
//! - the daemon is borrowed only inside `call` (mutably) and for a read of
//!   a budget (shared), never across an `await`; nothing `call` does polls
//!   a future, so no task can re-enter it;
//! - `call` drains `poll_output` to `None` after the handler, then wakes
//!   the connections whose budget grew, re-arms the timer if the deadline
//!   moved, and wakes the shutdown wait;
//! - every effect the core asks for is run exactly once and answered
//!   exactly once, even if `Os::run` panics;
//! - at most [`EFFECTS_RUNNING_MAX`] effects run at once; the rest wait in
//!   order.

use crate::child::{self, ChildIo};
use crate::conn::{self, ConnIo};
use async_io::{Async, Timer};
use futures_lite::future;
use guixd_core::build_plan::ChildId;
use guixd_core::config::Config;
use guixd_core::daemon::{ConnId, Daemon, Now, Output};
use guixd_core::effect::{Effect, EffectId, EffectResult};
use guixd_os::Os;
use guixd_os::net::Listener;
use smol::LocalExecutor;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{self, Write};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

/// Effects handed to `blocking`'s pool at once. That pool runs at most 500
/// threads by default; more in flight would only wait inside it, where we
/// cannot see them.
pub(crate) const EFFECTS_RUNNING_MAX: usize = 500;

/// The most bytes read from a socket in one call. The buffer is shared by
/// every connection (reads are synchronous), so idle connections cost none.
pub(crate) const READ_BUFFER_BYTES: usize = 256 * 1024;

/// How long closed connections may take to flush what they were sent,
/// once the core has finished shutting down; a peer that does not read
/// must not keep the daemon from stopping.
const SHUTDOWN_FLUSH_GRACE: Duration = Duration::from_secs(5);

/// Runs the server until it is asked to stop: the body of the runtime
/// thread.
pub(crate) fn serve(
    config: Config,
    os: Arc<Os>,
    listeners: Vec<Async<Listener>>,
    requests: async_channel::Receiver<()>,
) -> io::Result<()> {
    let executor = Rc::new(LocalExecutor::new());
    let inner = Rc::new(Inner::new(config, os, Rc::downgrade(&executor)));
    let accepts: Vec<_> = listeners
        .into_iter()
        .map(|listener| executor.spawn(conn::accept_loop(inner.clone(), listener)))
        .collect();
    executor.spawn(timer_loop(inner.clone())).detach();
    smol::block_on(executor.run(async {
        // Returns on a request from `Server::shutdown`, or when the
        // `Server` is gone: either way it is time to stop.
        let _ = requests.recv().await;
        // Dropping the accept tasks cancels them and closes the listeners.
        drop(accepts);
        inner.shutting_down.set(true);
        inner.call(|daemon, now| daemon.handle_shutdown(now));
        future::poll_fn(|cx| inner.poll_finished(cx)).await;
        let flushed = future::poll_fn(|cx| inner.poll_connections_gone(cx));
        future::or(flushed, async {
            Timer::after(SHUTDOWN_FLUSH_GRACE).await;
        })
        .await;
    }));
    // The tasks hold `inner`; dropping the executor drops them, and then
    // the daemon and the remaining sockets, on this thread.
    drop(executor);
    drop(inner);
    Ok(())
}

/// The state of the runtime thread, shared by its tasks.
pub(crate) struct Inner {
    daemon: RefCell<Daemon>,
    os: Arc<Os>,
    /// Weak, because the executor's tasks hold `Inner`.
    executor: Weak<LocalExecutor<'static>>,
    /// The I/O side of every connection the core serves.
    pub(crate) conns: RefCell<HashMap<ConnId, Rc<ConnIo>>>,
    /// Connections whose reader waits for budget; re-checked after every
    /// call. Only sessions with a full input buffer or none at all are
    /// here, so the list stays short however many connections are idle.
    starved: RefCell<Vec<Rc<ConnIo>>>,
    /// Builders running, and those whose log reader waits for budget.
    children: RefCell<HashMap<ChildId, Rc<ChildIo>>>,
    starved_children: RefCell<Vec<Rc<ChildIo>>>,
    /// The pressure task runs.
    pub(crate) pressure_task: Cell<bool>,
    /// The one read buffer, used synchronously by whichever connection
    /// reads.
    pub(crate) read_buffer: RefCell<Box<[u8]>>,
    effects_running: Cell<usize>,
    effects_waiting: RefCell<VecDeque<(EffectId, Effect)>>,
    /// The core's deadline as of the latest call.
    deadline: Cell<Option<Instant>>,
    timer: Notify,
    /// Wakes the shutdown wait.
    progress: Notify,
    pub(crate) shutting_down: Cell<bool>,
    last_now: Cell<Now>,
}

impl Inner {
    fn new(config: Config, os: Arc<Os>, executor: Weak<LocalExecutor<'static>>) -> Inner {
        let now = fresh_now(None);
        let daemon = Daemon::new(config, now);
        let deadline = daemon.poll_timeout();
        Inner {
            daemon: RefCell::new(daemon),
            os,
            executor,
            conns: RefCell::new(HashMap::new()),
            starved: RefCell::new(Vec::new()),
            children: RefCell::new(HashMap::new()),
            starved_children: RefCell::new(Vec::new()),
            pressure_task: Cell::new(false),
            read_buffer: RefCell::new(vec![0; READ_BUFFER_BYTES].into_boxed_slice()),
            effects_running: Cell::new(0),
            effects_waiting: RefCell::new(VecDeque::new()),
            deadline: Cell::new(deadline),
            timer: Notify::default(),
            progress: Notify::default(),
            shutting_down: Cell::new(false),
            last_now: Cell::new(now),
        }
    }

    /// Calls one of the daemon's `handle_*` methods with a fresh `now`,
    /// then carries out everything the daemon asked for.
    pub(crate) fn call<R>(self: &Rc<Self>, handle: impl FnOnce(&mut Daemon, Now) -> R) -> R {
        let now = fresh_now(Some(self.last_now.get()));
        self.last_now.set(now);
        let mut daemon = self.daemon.borrow_mut();
        let result = handle(&mut daemon, now);
        while let Some(output) = daemon.poll_output() {
            match output {
                // A point read that need not wait is answered here and now:
                // cheaper than a trip to the blocking pool and back.
                Output::Effect { id, effect } => match run_now(&self.os, &effect) {
                    Some(result) => daemon.handle_effect(now, id, result),
                    None => self.start_effect(id, effect),
                },
                output => self.dispatch(output),
            }
        }
        self.feed_starved(&daemon);
        let deadline = daemon.poll_timeout();
        if deadline != self.deadline.get() {
            self.deadline.set(deadline);
            self.timer.wake();
        }
        drop(daemon);
        if self.shutting_down.get() {
            self.progress.wake();
        }
        result
    }

    /// The executor, to spawn on; `None` only while the thread tears down.
    pub(crate) fn executor(&self) -> Option<Rc<LocalExecutor<'static>>> {
        self.executor.upgrade()
    }

    /// The os, for a worker thread.
    pub(crate) fn os(&self) -> Arc<Os> {
        self.os.clone()
    }

    /// How many bytes of `child`'s log the core takes now.
    pub(crate) fn child_read_budget(&self, child: ChildId) -> usize {
        self.daemon.borrow().child_read_budget(child)
    }

    /// Remembers that `io`'s log reader waits for budget.
    pub(crate) fn starve_child(&self, io: &Rc<ChildIo>) {
        if !io.starved.replace(true) {
            self.starved_children.borrow_mut().push(io.clone());
        }
    }

    pub(crate) fn add_child(&self, io: Rc<ChildIo>) {
        self.children.borrow_mut().insert(io.id, io);
    }

    pub(crate) fn remove_child(&self, child: ChildId) {
        self.children.borrow_mut().remove(&child);
        if self.shutting_down.get() {
            self.progress.wake();
        }
    }

    pub(crate) fn child(&self, child: ChildId) -> Option<Rc<ChildIo>> {
        self.children.borrow().get(&child).cloned()
    }

    pub(crate) fn has_children(&self) -> bool {
        !self.children.borrow().is_empty()
    }

    /// How many bytes the core takes from `conn` now.
    pub(crate) fn read_budget(&self, conn: ConnId) -> usize {
        self.daemon.borrow().read_budget(conn)
    }

    /// Remembers that `io`'s reader waits for budget.
    pub(crate) fn starve(&self, io: &Rc<ConnIo>) {
        if !io.starved.replace(true) {
            self.starved.borrow_mut().push(io.clone());
        }
    }

    /// A connection's task ended: forget it.
    pub(crate) fn connection_ended(&self, conn: ConnId) {
        self.conns.borrow_mut().remove(&conn);
        if self.shutting_down.get() {
            self.progress.wake();
        }
    }

    /// A line for the daemon's standard error. A failed write is
    /// ignored (`eprintln!` would panic): losing a log line must not stop
    /// the daemon when whatever reads its stderr has gone away.
    pub(crate) fn log(&self, line: &str) {
        // One write per line, so lines from elsewhere never cut into it.
        let mut text = String::with_capacity(line.len() + 1);
        text.push_str(line);
        text.push('\n');
        let _ = io::stderr().lock().write_all(text.as_bytes());
    }

    fn dispatch(self: &Rc<Self>, output: Output) {
        match output {
            Output::Send { conn, data } => {
                // A connection whose task has ended was told to close; the
                // core sends nothing after that.
                if let Some(io) = self.conns.borrow().get(&conn) {
                    io.push(data);
                }
            }
            Output::Close { conn } => {
                if let Some(io) = self.conns.borrow().get(&conn) {
                    io.close();
                }
            }
            Output::Effect { id, effect } => self.start_effect(id, effect),
            Output::Spawn { child, build } => child::spawn(self, child, build),
            Output::Kill { child } => child::kill(self, child),
            Output::Log(line) => self.log(&line),
        }
    }

    fn feed_starved(&self, daemon: &Daemon) {
        self.starved_children.borrow_mut().retain(|io| {
            if io.ended.get() {
                io.starved.set(false);
                return false;
            }
            if daemon.child_read_budget(io.id) == 0 {
                return true;
            }
            io.starved.set(false);
            io.task.wake();
            false
        });
        self.starved.borrow_mut().retain(|io| {
            if io.ended.get() {
                io.starved.set(false);
                return false;
            }
            if daemon.read_budget(io.id) == 0 {
                return true;
            }
            io.starved.set(false);
            io.task.wake();
            false
        });
    }

    fn start_effect(self: &Rc<Self>, id: EffectId, effect: Effect) {
        if self.effects_running.get() >= EFFECTS_RUNNING_MAX {
            self.effects_waiting.borrow_mut().push_back((id, effect));
            return;
        }
        // The executor outlives every task that could get here; it is gone
        // only once the thread is tearing down, when nothing matters.
        let Some(executor) = self.executor.upgrade() else {
            return;
        };
        self.effects_running.set(self.effects_running.get() + 1);
        let os = self.os.clone();
        let inner = self.clone();
        executor
            .spawn(async move {
                let result = blocking::unblock(move || run_effect(&os, effect)).await;
                inner.effects_running.set(inner.effects_running.get() - 1);
                let next = inner.effects_waiting.borrow_mut().pop_front();
                if let Some((id, effect)) = next {
                    inner.start_effect(id, effect);
                }
                inner.call(|daemon, now| daemon.handle_effect(now, id, result));
            })
            .detach();
    }

    fn poll_finished(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.daemon.borrow().is_finished() {
            return Poll::Ready(());
        }
        self.progress.register(cx);
        Poll::Pending
    }

    fn poll_connections_gone(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.conns.borrow().is_empty() {
            return Poll::Ready(());
        }
        self.progress.register(cx);
        Poll::Pending
    }
}

/// A waker slot for one waiting task.
#[derive(Default)]
pub(crate) struct Notify {
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    /// Makes the next `wake` wake the task polling with `cx`.
    pub(crate) fn register(&self, cx: &Context<'_>) {
        let mut slot = self.waker.borrow_mut();
        match &*slot {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => *slot = Some(cx.waker().clone()),
        }
    }

    pub(crate) fn wake(&self) {
        let waker = self.waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Calls `handle_timeout` whenever the core's deadline passes, re-arming
/// when `call` moves the deadline.
async fn timer_loop(inner: Rc<Inner>) {
    let mut timer = Timer::never();
    let mut armed: Option<Instant> = None;
    loop {
        future::poll_fn(|cx| {
            let wanted = inner.deadline.get();
            if wanted != armed {
                armed = wanted;
                timer = match wanted {
                    Some(at) => Timer::at(at),
                    None => Timer::never(),
                };
            }
            inner.timer.register(cx);
            Pin::new(&mut timer).poll(cx).map(drop)
        })
        .await;
        // A fired timer does not fire again: re-arm even for the same
        // deadline, should the core still ask for it.
        armed = None;
        inner.call(|daemon, now| daemon.handle_timeout(now));
    }
}

/// Runs one effect on the current (worker) thread. A panic in the os layer
/// is a guixd bug; it becomes an error result, because the core must hear
/// back about every effect exactly once and one bad effect must not take
/// every session down.
/// [`Os::run_now`] on the executor's thread; a panic in the os layer
/// becomes an error result, as in the blocking pool.
fn run_now(os: &Os, effect: &Effect) -> Option<EffectResult> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| os.run_now(effect)))
        .unwrap_or_else(|panic| Some(Err(guixd_os::panicked(panic, "an effect"))))
}

fn run_effect(os: &Os, effect: Effect) -> EffectResult {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| os.run(effect)))
        .unwrap_or_else(|panic| Err(guixd_os::panicked(panic, "an effect")))
}

/// The time now; never earlier than `last`, so that neither clock seen by
/// the core goes backwards (the wall clock may be set back).
fn fresh_now(last: Option<Now>) -> Now {
    let mono = Instant::now();
    let wall_s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match last {
        Some(last) => Now {
            mono: mono.max(last.mono),
            wall_s: wall_s.max(last.wall_s),
        },
        None => Now { mono, wall_s },
    }
}

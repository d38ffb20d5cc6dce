//! The daemon's one top-level machine: every connection, effect, lock and
//! registration of a guixd process, decided without any I/O.
//!
//! # Contract
//!
//! Inputs go in through `handle_*` calls, each given `now`; outputs come
//! out of [`Daemon::poll_output`]. After **every** `handle_*` call the
//! runtime drains `poll_output` until it returns `None`, then asks
//! [`Daemon::poll_timeout`] for the next deadline and calls
//! [`Daemon::handle_timeout`] when it passes. `now.mono` never goes
//! backwards from one call to the next. The runtime reads at most
//! [`Daemon::read_budget`] bytes from a connection before handing them in,
//! reports with [`Daemon::handle_written`] how many bytes of `Output::Send`
//! it has written, runs every `Output::Effect` (on any thread) and hands its
//! result back exactly once with [`Daemon::handle_effect`].
//!
//! # Children
//!
//! Builds run as children the runtime watches. `Output::Spawn { child,
//! build }` asks the runtime to start the build that a `PrepareBuild`
//! effect prepared (`guixd_os::Os::spawn_build`, on a worker thread) and
//! to report with [`Daemon::handle_child_started`]. A started child is then
//! watched until it has both exited ([`Daemon::handle_child_exited`]) and
//! closed its log ([`Daemon::handle_child_output_closed`]); its log is read
//! only up to [`Daemon::child_read_budget`] bytes at a time and handed in
//! with [`Daemon::handle_child_output`] (a budget of 0 means: stop reading
//! until it grows; re-check after every `handle_*` call). A child that
//! could not be started gets no further input. `Output::Kill { child }`
//! asks for SIGKILL through the child's pidfd; its exit is still reported.
//! The runtime also reads the machine's pressure every few seconds and
//! hands it in with [`Daemon::handle_pressure`].
//!
//! # What it keeps true
//!
//! - It never reads a clock, the environment or the filesystem, and never
//!   spawns anything: all of that arrives as inputs or leaves as outputs.
//! - Entities are small `Copy` ids into tables owned here; a `ConnId`
//!   carries a generation, so a stale id never reaches a new connection.
//! - Tasks are sessions (one per connection) and goals (one per derivation
//!   or path being realised, shared by every session that needs it); both
//!   are coroutines with the same mailbox, and effects, locks, timers and
//!   registrations are routed by task.
//! - At most one database write is in flight (the writer queue), and it
//!   carries every registration queued meanwhile (group commit).
//! - A task's slot is freed only once none of its effects is in flight and
//!   (for goals) every child it started has exited and closed its log;
//!   what it left behind (uploads, dumps, locks, build directories, open
//!   logs) is cleaned up then.
//! - A collection (see `gc.rs`) never holds anything other tasks wait
//!   for beyond one victim's lock; while it runs, every temporary root
//!   another task holds or adds is remembered for it (`gc_watches`), so
//!   a session that ends cannot take its protection away mid-collection;
//!   a victim's deletion is checked against them once more when the
//!   writer starts it, and validity queries about that path wait until
//!   it is done (`gc_deleting`).
//! - Iteration whose order shows in outputs is over ordered maps.

mod build_env;
mod gc;
mod goal;
mod report;
mod sched;
mod session;
pub(crate) mod task;

use crate::build_plan::{BuildId, ChildId};
use crate::config::Config;
use crate::effect::{Effect, EffectError, EffectErrorKind, EffectId, EffectOutput, EffectResult};
use crate::locks::{LockEvent, LockRequestId, LockTable};
use crate::store_path::StorePath;
use sched::{Action, GoalId, GoalKey, Sched};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::time::Instant;
use task::{ChildEvent, Completion, Ctx, Request, Shared, Task, TaskId, Token};

/// The time, as the runtime read it: monotonic for deadlines, wall-clock
/// seconds for what is recorded (registration times).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub wall_s: u64,
}

/// A connection, as the machine names it to the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

/// Who is at the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerKind {
    /// A Unix-domain socket peer, from `SO_PEERCRED`.
    Unix { pid: u32, uid: u32, gid: u32 },
    /// A TCP peer: never trusted, no GC, no kept build trees.
    Tcp { address: String },
}

/// A peer and what the runtime looked up about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub kind: PeerKind,
    /// The user name of a Unix peer's uid, when the system knows it.
    pub user_name: Option<String>,
}

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

/// The machine's load, as `/proc/pressure` says: the share of the last ten
/// seconds in which some (or all) tasks stalled, in hundredths of a
/// percent (`avg10=12.34` is 1234).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    pub memory_some_avg10_centi: u32,
    pub memory_full_avg10_centi: u32,
    pub cpu_some_avg10_centi: u32,
}

/// What the machine asks the runtime to do.
// Effects travel by value: boxing each would cost an allocation per
// effect, and outputs are drained at once, so few are ever queued.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes to the connection, after any sent before.
    Send { conn: ConnId, data: Vec<u8> },
    /// Close the connection once everything sent before is written.
    Close { conn: ConnId },
    /// Run this effect and hand its result back with `handle_effect`.
    Effect { id: EffectId, effect: Effect },
    /// A line for the daemon's own standard error.
    Log(String),
    /// Start the build a `PrepareBuild` effect prepared, as `child`; report
    /// with `handle_child_started`, then watch it (see the module docs).
    Spawn { child: ChildId, build: BuildId },
    /// Kill a started child (SIGKILL through its pidfd). Its exit and the
    /// end of its log are still reported.
    Kill { child: ChildId },
}

/// The daemon machine. See the module documentation for the contract.
pub struct Daemon {
    config: Rc<Config>,
    now: Now,
    conns: Vec<Slot>,
    free_slots: Vec<u32>,
    /// Occupied slots of `conns`.
    live_conns: usize,
    /// Goal tasks, running or waiting to be reaped.
    goals: BTreeMap<GoalId, GoalTask>,
    outputs: VecDeque<Output>,
    /// Who waits for each effect in flight.
    effect_owners: BTreeMap<EffectId, Owner>,
    /// Effects asked for beyond the in-flight ceiling, in order.
    effects_waiting: VecDeque<(EffectId, Effect)>,
    next_effect: u64,
    /// Tasks to poll before the next output is handed out.
    dirty: BTreeSet<TaskId>,
    locks: LockTable,
    lock_owners: BTreeMap<LockRequestId, (TaskId, Token)>,
    writer: Writer,
    /// Paths already written to this daemon's temp-roots file.
    temp_roots_in_file: BTreeSet<StorePath>,
    /// For each collection running (by its session): every temporary root
    /// other tasks held when it started or added since, even if their
    /// session ended meanwhile (see `gc.rs`).
    gc_watches: BTreeMap<TaskId, BTreeSet<StorePath>>,
    /// The path whose collector deletion (`GcDeletePath`) the writer runs
    /// now, and the validity queries about it held back until it is done.
    gc_deleting: Option<StorePath>,
    gc_parked: Vec<(TaskId, Token, Effect)>,
    /// Source of upload, dump, build, log and child ids, shared with tasks.
    ids: Rc<std::cell::Cell<u64>>,
    /// The memo of derivation modulo hashes, shared with sessions.
    drv_hashes: Rc<RefCell<task::DrvHashCache>>,
    sched: Sched,
    /// Children spawned and not yet reaped (exited, log closed).
    children: BTreeMap<ChildId, Child>,
    /// Armed alarms, by deadline, and each task's one alarm.
    timers: BTreeSet<(Instant, TaskId)>,
    alarms: BTreeMap<TaskId, Instant>,
    shutting_down: bool,
}

/// Why an effect is in flight.
#[derive(Debug)]
enum Owner {
    Task {
        task: TaskId,
        token: Token,
    },
    /// The job in flight of the writer.
    Writer,
    /// The lock table's OS lock on a path.
    OsLock(StorePath),
    /// The lock table's drop of an OS lock.
    OsUnlock(StorePath),
    /// An effect whose result only matters if it failed (cleanups, the
    /// temp-roots file, OS unlocks): failures are logged.
    Background,
}

/// The writer queue: database writes waiting, and the job in flight.
#[derive(Debug, Default)]
struct Writer {
    queued: VecDeque<(TaskId, Token, WriterJob)>,
    in_flight: Option<WriterFlight>,
    /// Locks of tasks stopped while their registration was in flight: they
    /// are released when it commits (deleting the lock files if it did),
    /// never before, so no one can take a path's lock and find it invalid
    /// while it is about to become valid.
    held_for_batch: BTreeMap<TaskId, BTreeSet<LockRequestId>>,
}

#[derive(Debug)]
enum WriterJob {
    Register(crate::effect::RegistrationGroup),
    Effect(Box<Effect>),
}

#[derive(Debug)]
enum WriterFlight {
    /// A registration batch, one waiter per group.
    Batch(Vec<(TaskId, Token)>),
    Single(TaskId, Token),
}

struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

/// What the machine keeps for any task.
struct TaskState {
    shared: Rc<RefCell<Shared>>,
    /// `None` once the coroutine finished or was dropped.
    task: Option<Task>,
    /// Effects of this task in flight.
    effects_in_flight: usize,
    /// Lock requests of this task, granted or waiting.
    locks: BTreeSet<LockRequestId>,
}

struct Conn {
    state: TaskState,
    /// The runtime was told to close, or the peer is gone.
    closed: bool,
}

struct GoalTask {
    state: TaskState,
    /// Children started by this goal and not yet reaped.
    children: BTreeSet<ChildId>,
    /// A session waiting for this goal has too much output pending: the
    /// goal's children are not read meanwhile.
    congested: bool,
}

#[derive(Debug)]
struct Child {
    goal: GoalId,
    started: bool,
    exited: bool,
    closed: bool,
    /// A kill was asked for before the child was reported started.
    kill_asked: bool,
}

/// Bytes read at once from a child nobody listens to any more (its goal
/// was dropped): read and thrown away, so it never blocks on its pipe.
const CHILD_DRAIN_BYTES: usize = 64 * 1024;

impl Daemon {
    /// A machine with no connections yet.
    pub fn new(config: Config, now: Now) -> Daemon {
        let locks = LockTable::new(crate::locks::LockLimits {
            lock_files_max: config.limits.lock_files_max,
            ..Default::default()
        });
        let drv_hashes = Rc::new(RefCell::new(task::DrvHashCache::new(
            config.limits.drv_hash_cache_entries,
        )));
        let slots = config.settings.typed().max_build_jobs as usize;
        Daemon {
            config: Rc::new(config),
            now,
            conns: Vec::new(),
            free_slots: Vec::new(),
            live_conns: 0,
            goals: BTreeMap::new(),
            outputs: VecDeque::new(),
            effect_owners: BTreeMap::new(),
            effects_waiting: VecDeque::new(),
            next_effect: 0,
            dirty: BTreeSet::new(),
            locks,
            lock_owners: BTreeMap::new(),
            writer: Writer::default(),
            temp_roots_in_file: BTreeSet::new(),
            gc_watches: BTreeMap::new(),
            gc_deleting: None,
            gc_parked: Vec::new(),
            ids: Rc::new(std::cell::Cell::new(0)),
            drv_hashes,
            sched: Sched::new(slots),
            children: BTreeMap::new(),
            timers: BTreeSet::new(),
            alarms: BTreeMap::new(),
            shutting_down: false,
        }
    }

    /// A client connected. Returns `None` when the machine will not serve
    /// it (connection ceiling reached, or shutting down): close it at once.
    pub fn handle_accept(&mut self, now: Now, peer: Peer) -> Option<ConnId> {
        self.advance(now);
        if self.shutting_down {
            return None;
        }
        if self.live_conns >= self.config.limits.connections_max {
            let live = self.live_conns;
            self.log(format!(
                "refusing connection: {live} connections already served"
            ));
            return None;
        }
        self.live_conns += 1;
        let index = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                self.conns.push(Slot {
                    generation: 0,
                    conn: None,
                });
                u32::try_from(self.conns.len() - 1).expect("connections_max fits in u32")
            }
        };
        let generation = {
            let slot = &mut self.conns[index as usize];
            slot.generation = slot.generation.wrapping_add(1);
            slot.generation
        };
        let id = ConnId { index, generation };
        let shared = Rc::new(RefCell::new(Shared::default()));
        let ctx = self.ctx(shared.clone());
        self.log(session::accepted_line(&peer));
        let task: Task = Box::pin(session::run(ctx, self.config.clone(), peer, id));
        self.conns[index as usize].conn = Some(Conn {
            state: TaskState::new(shared, task),
            closed: false,
        });
        self.dirty.insert(TaskId::Conn(id));
        self.pump();
        Some(id)
    }

    /// Bytes arrived from a client. Never more than `read_budget` allowed.
    pub fn handle_input(&mut self, now: Now, conn: ConnId, bytes: &[u8]) {
        self.advance(now);
        let limit = self.config.limits.input_buffer_bytes;
        if let Some(c) = self.conn_mut(conn) {
            let mut s = c.state.shared.borrow_mut();
            // The runtime is told the budget; more than that is its bug, but
            // the bound is what protects memory, so it holds regardless.
            let room = limit.saturating_sub(s.input.len());
            let take = bytes.len().min(room);
            s.input.extend_from_slice(&bytes[..take]);
            drop(s);
            self.dirty.insert(TaskId::Conn(conn));
        }
        self.pump();
    }

    /// The client closed its side, or reading or writing failed.
    pub fn handle_input_closed(&mut self, now: Now, conn: ConnId) {
        self.advance(now);
        if let Some(c) = self.conn_mut(conn) {
            c.state.shared.borrow_mut().input_closed = true;
            self.dirty.insert(TaskId::Conn(conn));
        }
        self.pump();
    }

    /// The runtime wrote `bytes` more of this connection's output.
    pub fn handle_written(&mut self, now: Now, conn: ConnId, bytes: usize) {
        self.advance(now);
        if let Some(c) = self.conn_mut(conn) {
            let mut s = c.state.shared.borrow_mut();
            s.unwritten_bytes = s.unwritten_bytes.saturating_sub(bytes);
            drop(s);
            self.dirty.insert(TaskId::Conn(conn));
        }
        self.pump();
    }

    /// An effect finished.
    pub fn handle_effect(&mut self, now: Now, id: EffectId, result: EffectResult) {
        self.advance(now);
        let Some(owner) = self.effect_owners.remove(&id) else {
            self.log(format!("guixd bug: result for unknown effect {}", id.0));
            return;
        };
        self.start_waiting_effects();
        match owner {
            Owner::Task { task, token } => {
                if let Some(st) = self.state_mut(task) {
                    st.effects_in_flight -= 1;
                }
                self.complete(task, token, Completion::Effect(result));
                self.reap_if_done(task);
            }
            Owner::Writer => self.writer_done(result),
            Owner::OsLock(path) => {
                let taken = matches!(result, Ok(EffectOutput::Locked(true)));
                if let Err(e) = &result {
                    self.log(format!("cannot lock `{path}': {}", e.message));
                }
                self.locks.handle_os_lock_result(now.mono, &path, taken);
            }
            Owner::OsUnlock(path) => {
                // The descriptor is closed whether or not the unlink worked.
                if let Err(e) = &result {
                    self.log(format!("error: {}", e.message));
                }
                self.locks.handle_os_lock_released(&path);
            }
            Owner::Background => {
                if let Err(e) = result {
                    self.log(format!("error: {}", e.message));
                }
            }
        }
        self.pump();
    }

    /// A child asked for with `Output::Spawn` started (with its pid), or
    /// could not be started (then nothing more is reported about it).
    pub fn handle_child_started(
        &mut self,
        now: Now,
        child: ChildId,
        result: Result<u32, EffectError>,
    ) {
        self.advance(now);
        let Some(c) = self.children.get_mut(&child) else {
            self.log(format!("guixd bug: start of unknown child {}", child.0));
            return;
        };
        c.started = true;
        let goal = c.goal;
        match &result {
            Err(_) => {
                c.exited = true;
                c.closed = true;
            }
            Ok(_) => {
                let listened = self
                    .goals
                    .get(&goal)
                    .is_some_and(|g| g.state.task.is_some());
                let c = self.children.get_mut(&child).expect("looked up above");
                if c.kill_asked || !listened {
                    self.outputs.push_back(Output::Kill { child });
                }
            }
        }
        self.deliver_child_event(child, ChildEvent::Started(result));
        self.reap_child_if_done(child);
        self.pump();
    }

    /// Bytes from a child's log (never more than `child_read_budget`).
    pub fn handle_child_output(&mut self, now: Now, child: ChildId, bytes: &[u8]) {
        self.advance(now);
        if !bytes.is_empty() {
            self.deliver_child_event(child, ChildEvent::Output(bytes.to_vec()));
        }
        self.pump();
    }

    /// A child's log reached end of file.
    pub fn handle_child_output_closed(&mut self, now: Now, child: ChildId) {
        self.advance(now);
        if let Some(c) = self.children.get_mut(&child) {
            c.closed = true;
        }
        self.deliver_child_event(child, ChildEvent::OutputClosed);
        self.reap_child_if_done(child);
        self.pump();
    }

    /// A child exited (or was killed).
    pub fn handle_child_exited(&mut self, now: Now, child: ChildId, status: ExitStatus) {
        self.advance(now);
        if let Some(c) = self.children.get_mut(&child) {
            c.exited = true;
        }
        self.deliver_child_event(child, ChildEvent::Exited(status));
        self.reap_child_if_done(child);
        self.pump();
    }

    /// The machine's pressure, read by the runtime every few seconds. New
    /// builds are held back while it is above the configured thresholds
    /// (`build-pressure-memory-max`, `build-pressure-cpu-max`, percent;
    /// unset or 0: never).
    pub fn handle_pressure(&mut self, now: Now, pressure: Pressure) {
        self.advance(now);
        let high = pressure_is_high(&self.config.settings, &pressure);
        if high != self.sched.pressure_high() {
            self.log(if high {
                format!(
                    "holding back new builds: memory pressure {}.{:02}%, cpu pressure {}.{:02}%",
                    pressure.memory_full_avg10_centi / 100,
                    pressure.memory_full_avg10_centi % 100,
                    pressure.cpu_some_avg10_centi / 100,
                    pressure.cpu_some_avg10_centi % 100
                )
            } else {
                "pressure is down: starting new builds again".to_owned()
            });
            let actions = self.sched.set_pressure_high(high);
            self.apply(actions);
        }
        self.pump();
    }

    /// The deadline given by `poll_timeout` passed.
    pub fn handle_timeout(&mut self, now: Now) {
        self.advance(now);
        self.locks.handle_timeout(now.mono);
        while let Some(&(deadline, task)) = self.timers.first() {
            if deadline > now.mono {
                break;
            }
            self.timers.pop_first();
            self.alarms.remove(&task);
            self.dirty.insert(task);
        }
        self.pump();
    }

    /// Stop accepting work: sessions are dropped (and with them the goals
    /// only they needed, whose builders are killed), and the machine is
    /// done once effects and children have drained (`is_finished`).
    pub fn handle_shutdown(&mut self, now: Now) {
        self.advance(now);
        self.shutting_down = true;
        let ids: Vec<ConnId> = self.live_conns().collect();
        for id in ids {
            self.drop_session(id);
        }
        self.pump();
    }

    /// True once shutdown was asked for and nothing is left in flight.
    pub fn is_finished(&self) -> bool {
        self.shutting_down
            && self.effect_owners.is_empty()
            && self.outputs.is_empty()
            && self.children.is_empty()
            && self.goals.is_empty()
    }

    /// How many more bytes of this connection's input the machine takes now.
    pub fn read_budget(&self, conn: ConnId) -> usize {
        match self.conn_ref(conn) {
            Some(c) if c.state.task.is_some() => {
                let s = c.state.shared.borrow();
                self.config
                    .limits
                    .input_buffer_bytes
                    .saturating_sub(s.input.len())
            }
            _ => 0,
        }
    }

    /// How many more bytes of this child's log the machine takes now.
    pub fn child_read_budget(&self, child: ChildId) -> usize {
        let Some(c) = self.children.get(&child) else {
            return CHILD_DRAIN_BYTES;
        };
        match self.goals.get(&c.goal) {
            Some(g) if g.state.task.is_some() => {
                if g.congested {
                    return 0;
                }
                let s = g.state.shared.borrow();
                self.config
                    .limits
                    .output_buffer_bytes
                    .saturating_sub(s.child_bytes)
            }
            _ => CHILD_DRAIN_BYTES,
        }
    }

    /// The next thing for the runtime to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When to call `handle_timeout` next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.first().map(|&(deadline, _)| deadline);
        match (self.locks.poll_timeout(), timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- internals

    fn advance(&mut self, now: Now) {
        debug_assert!(now.mono >= self.now.mono, "time went backwards");
        if now.mono >= self.now.mono {
            self.now = now;
        }
    }

    fn log(&mut self, line: String) {
        self.outputs.push_back(Output::Log(line));
    }

    fn ctx(&self, shared: Rc<RefCell<Shared>>) -> Ctx {
        Ctx::new(
            shared,
            self.config.limits.output_buffer_bytes,
            self.ids.clone(),
            self.drv_hashes.clone(),
        )
    }

    fn live_conns(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns.iter().enumerate().filter_map(|(i, s)| {
            s.conn.as_ref().map(|_| ConnId {
                index: i as u32,
                generation: s.generation,
            })
        })
    }

    fn conn_ref(&self, id: ConnId) -> Option<&Conn> {
        let slot = self.conns.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.conn.as_ref()
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        let slot = self.conns.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.conn.as_mut()
    }

    fn state_mut(&mut self, id: TaskId) -> Option<&mut TaskState> {
        match id {
            TaskId::Conn(c) => self.conn_mut(c).map(|c| &mut c.state),
            TaskId::Goal(g) => self.goals.get_mut(&g).map(|g| &mut g.state),
        }
    }

    /// Hands `completion` to a task that still runs (and drops it
    /// otherwise: nobody awaits it any more).
    fn complete(&mut self, task: TaskId, token: Token, completion: Completion) {
        if let Some(st) = self.state_mut(task) {
            if st.task.is_some() {
                st.shared.borrow_mut().completions.insert(token, completion);
                self.dirty.insert(task);
            }
        }
    }

    /// Polls dirty tasks and routes what they asked for, until nothing
    /// changes any more.
    fn pump(&mut self) {
        loop {
            self.route_lock_events();
            let Some(id) = self.dirty.pop_first() else {
                break;
            };
            self.poll_task(id);
        }
        self.refresh_congestion();
    }

    fn poll_task(&mut self, id: TaskId) {
        let now = self.now;
        let Some(st) = self.state_mut(id) else {
            return;
        };
        {
            let mut s = st.shared.borrow_mut();
            s.now_s = now.wall_s;
            s.now_mono = Some(now.mono);
            s.alarm = None;
        }
        let finished = match st.task.as_mut() {
            Some(task) => task::poll_once(task).is_ready(),
            None => return,
        };
        if finished {
            st.task = None;
        }
        let (requests, output, lines, events, alarm, result) = {
            let mut s = st.shared.borrow_mut();
            let requests = std::mem::take(&mut s.requests);
            let output = std::mem::take(&mut s.output);
            let lines = std::mem::take(&mut s.daemon_log);
            let events = std::mem::take(&mut s.events_out);
            let alarm = s.alarm.take();
            let result = s.goal_result.take();
            s.unwritten_bytes += output.len();
            (requests, output, lines, events, alarm, result)
        };
        for line in lines {
            self.log(line);
        }
        if let TaskId::Conn(conn) = id {
            if !output.is_empty() {
                self.outputs.push_back(Output::Send { conn, data: output });
            }
        }
        self.set_alarm(id, if finished { None } else { alarm });
        if let TaskId::Goal(goal) = id {
            self.publish(goal, events);
        }
        for (token, request) in requests {
            self.route(id, token, request);
        }
        if finished {
            match id {
                TaskId::Conn(conn) => self.drop_session(conn),
                TaskId::Goal(goal) => {
                    let result = result.unwrap_or_else(|| {
                        sched::GoalResult::escaped(
                            "guixd bug: a goal ended without a result".into(),
                        )
                    });
                    let actions = self.sched.finished(goal, result);
                    self.apply(actions);
                    self.drop_goal(goal);
                }
            }
        }
    }

    fn set_alarm(&mut self, task: TaskId, alarm: Option<Instant>) {
        if self.alarms.get(&task).copied() == alarm {
            return;
        }
        if let Some(old) = self.alarms.remove(&task) {
            self.timers.remove(&(old, task));
        }
        if let Some(at) = alarm {
            if at <= self.now.mono {
                self.dirty.insert(task);
            } else {
                self.alarms.insert(task, at);
                self.timers.insert((at, task));
            }
        }
    }

    /// Notes that `lock` answers `task`'s request `token`.
    fn own_lock(&mut self, task: TaskId, token: Token, lock: LockRequestId) {
        self.lock_owners.insert(lock, (task, token));
        if let Some(st) = self.state_mut(task) {
            st.locks.insert(lock);
        }
    }

    fn route(&mut self, task: TaskId, token: Token, request: Request) {
        match request {
            Request::Effect(effect) => {
                if let Some(st) = self.state_mut(task) {
                    st.effects_in_flight += 1;
                }
                // Whether a path being deleted is valid is answered once
                // the deletion is done: a session that protected it just
                // now then finds it invalid and adds it again.
                let asks_deleting = self
                    .gc_deleting
                    .as_ref()
                    .is_some_and(|p| asks_validity_of(&effect, p));
                if asks_deleting {
                    self.gc_parked.push((task, token, effect));
                } else {
                    self.start_effect(Owner::Task { task, token }, effect);
                }
            }
            Request::Lock(paths) => {
                let lock = self.locks.acquire(paths);
                self.own_lock(task, token, lock);
            }
            Request::LockInTable(paths) => {
                let lock = self.locks.acquire_in_table(paths);
                self.own_lock(task, token, lock);
            }
            Request::Unlock { lock, delete } => {
                self.lock_owners.remove(&lock.0);
                if let Some(st) = self.state_mut(task) {
                    st.locks.remove(&lock.0);
                }
                self.locks.release(lock.0, delete);
            }
            Request::Register(group) => {
                self.writer
                    .queued
                    .push_back((task, token, WriterJob::Register(group)));
                self.start_writer();
            }
            Request::WriteDb(effect) => {
                self.writer
                    .queued
                    .push_back((task, token, WriterJob::Effect(Box::new(effect))));
                self.start_writer();
            }
            Request::TempRootFile(path) => {
                for (watcher, roots) in &mut self.gc_watches {
                    if *watcher != task {
                        roots.insert(path.clone());
                    }
                }
                if self.temp_roots_in_file.insert(path.clone()) {
                    self.start_effect(Owner::Background, Effect::AddTempRoot { path });
                }
            }
            Request::Realise {
                goals,
                keep_going,
                options,
            } => {
                let actions = self.sched.realise(task, token, goals, keep_going, &options);
                self.apply(actions);
                if let TaskId::Conn(conn) = task {
                    self.replay_started(conn);
                }
            }
            Request::Slot(request) => {
                if let TaskId::Goal(goal) = task {
                    let actions = self.sched.request_slot(goal, token, request);
                    self.apply(actions);
                    if self.sched.waits_for_slot(goal) && self.sched.waits_for_others(goal) {
                        self.notice_waiting(goal);
                    }
                }
            }
            Request::ReleaseSlot => {
                if let TaskId::Goal(goal) = task {
                    let actions = self.sched.release_slot(goal, token);
                    self.apply(actions);
                }
            }
            Request::Spawn { child, build } => {
                let TaskId::Goal(goal) = task else {
                    return;
                };
                self.children.insert(
                    child,
                    Child {
                        goal,
                        started: false,
                        exited: false,
                        closed: false,
                        kill_asked: false,
                    },
                );
                if let Some(g) = self.goals.get_mut(&goal) {
                    g.children.insert(child);
                }
                self.outputs.push_back(Output::Spawn { child, build });
            }
            Request::Kill { child } => self.kill_child(child),
            Request::CancelLock(lock_token) => {
                let found = self
                    .lock_owners
                    .iter()
                    .find(|(_, owner)| **owner == (task, lock_token))
                    .map(|(lock, _)| *lock);
                if let Some(lock) = found {
                    self.lock_owners.remove(&lock);
                    if let Some(st) = self.state_mut(task) {
                        st.locks.remove(&lock);
                        // A grant that arrived meanwhile is not awaited.
                        st.shared.borrow_mut().completions.remove(&lock_token);
                    }
                    self.locks.cancel(lock);
                }
            }
            Request::OtherTempRoots => {
                let mut roots = self.gc_watches.get(&task).cloned().unwrap_or_default();
                for shared in self.others_shared(task) {
                    roots.extend(shared.borrow().temp_roots.iter().cloned());
                }
                self.complete(task, token, Completion::TempRoots(roots));
            }
            Request::Protected(paths) => {
                let protected = self.gc_protected(task, &paths);
                self.complete(task, token, Completion::Protected(protected));
            }
            Request::GcWatch(start) => {
                if start {
                    let mut roots = BTreeSet::new();
                    for shared in self.others_shared(task) {
                        roots.extend(shared.borrow().temp_roots.iter().cloned());
                    }
                    self.gc_watches.insert(task, roots);
                } else {
                    self.gc_watches.remove(&task);
                }
            }
        }
    }

    /// Whether a task other than the collector `collector` holds one of
    /// `paths` as a temporary root, or did since the collection started.
    fn gc_protected(&self, collector: TaskId, paths: &[StorePath]) -> bool {
        let watched = self
            .gc_watches
            .get(&collector)
            .is_some_and(|roots| paths.iter().any(|p| roots.contains(p)));
        watched
            || self.others_shared(collector).iter().any(|shared| {
                let s = shared.borrow();
                paths.iter().any(|p| s.temp_roots.contains(p))
            })
    }

    /// The mailboxes of every task but `except` (sessions, including those
    /// still draining, and goals): whose temporary roots a collection
    /// must respect.
    fn others_shared(&self, except: TaskId) -> Vec<Rc<RefCell<Shared>>> {
        let conns = self
            .live_conns()
            .filter(|c| TaskId::Conn(*c) != except)
            .filter_map(|c| self.conn_ref(c))
            .map(|c| c.state.shared.clone());
        let goals = self
            .goals
            .iter()
            .filter(|(g, _)| TaskId::Goal(**g) != except)
            .map(|(_, g)| g.state.shared.clone());
        conns.chain(goals).collect()
    }

    /// Says once per goal that it waits for builds of other sessions (the
    /// text the C++ daemon prints when it waits for other processes).
    fn notice_waiting(&mut self, goal: GoalId) {
        let Some(g) = self.goals.get(&goal) else {
            return;
        };
        if std::mem::replace(&mut g.state.shared.borrow_mut().waiting_noticed, true) {
            return;
        }
        self.publish(
            goal,
            vec![report::BuildEvent::Message {
                level: report::Level::Error,
                text: "waiting for locks or build slots...".to_owned(),
                nest: None,
            }],
        );
    }

    fn kill_child(&mut self, child: ChildId) {
        let Some(c) = self.children.get_mut(&child) else {
            return;
        };
        if !c.started {
            c.kill_asked = true;
        } else if !c.exited {
            self.outputs.push_back(Output::Kill { child });
        }
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Start { goal, key, options } => self.start_goal(goal, key, options),
                Action::Cancel(goal) => self.drop_goal(goal),
                Action::Complete {
                    task,
                    token,
                    completion,
                } => self.complete(task, token, completion),
            }
        }
    }

    fn start_goal(&mut self, goal: GoalId, key: GoalKey, options: Rc<sched::BuildOptions>) {
        let shared = Rc::new(RefCell::new(Shared::default()));
        let ctx = self.ctx(shared.clone());
        let task: Task = Box::pin(goal::run(ctx, self.config.clone(), goal, key, options));
        self.goals.insert(
            goal,
            GoalTask {
                state: TaskState::new(shared, task),
                children: BTreeSet::new(),
                congested: false,
            },
        );
        self.dirty.insert(TaskId::Goal(goal));
    }

    /// A session that comes to wait for builders already running gets their
    /// start traces, as if it had been there.
    fn replay_started(&mut self, conn: ConnId) {
        let running: Vec<(GoalId, report::BuildEvent)> = self
            .goals
            .iter()
            .filter_map(|(id, g)| {
                let trace = g.state.shared.borrow().started_trace.clone()?;
                Some((*id, trace))
            })
            .collect();
        for (goal, trace) in running {
            if !self.sched.audience(goal).contains(&conn) {
                continue;
            }
            if let Some(c) = self.conn_mut(conn) {
                let mut s = c.state.shared.borrow_mut();
                s.build_event_bytes += trace.weight_bytes();
                s.build_events.push_back(Rc::new(trace));
            }
            // The session must run to pass the trace on: until it does, the
            // trace counts against its output buffer.
            self.dirty.insert(TaskId::Conn(conn));
        }
    }

    /// Hands a goal's events to every session waiting for it.
    fn publish(&mut self, goal: GoalId, events: Vec<report::BuildEvent>) {
        if events.is_empty() {
            return;
        }
        let audience = self.sched.audience(goal);
        let events: Vec<Rc<report::BuildEvent>> = events.into_iter().map(Rc::new).collect();
        for &conn in audience.iter() {
            let Some(c) = self.conn_mut(conn) else {
                continue;
            };
            if c.state.task.is_none() {
                continue;
            }
            {
                let mut s = c.state.shared.borrow_mut();
                for e in &events {
                    s.build_event_bytes += e.weight_bytes();
                    s.build_events.push_back(e.clone());
                }
            }
            self.dirty.insert(TaskId::Conn(conn));
        }
    }

    fn deliver_child_event(&mut self, child: ChildId, event: ChildEvent) {
        let Some(goal) = self.children.get(&child).map(|c| c.goal) else {
            return;
        };
        let Some(g) = self.goals.get_mut(&goal) else {
            return;
        };
        if g.state.task.is_none() {
            return;
        }
        {
            let mut s = g.state.shared.borrow_mut();
            if let ChildEvent::Output(data) = &event {
                s.child_bytes += data.len();
            }
            s.child_events.push_back((child, event));
        }
        self.dirty.insert(TaskId::Goal(goal));
    }

    fn reap_child_if_done(&mut self, child: ChildId) {
        let Some(c) = self.children.get(&child) else {
            return;
        };
        if !(c.started && c.exited && c.closed) {
            return;
        }
        let goal = c.goal;
        self.children.remove(&child);
        if let Some(g) = self.goals.get_mut(&goal) {
            g.children.remove(&child);
        }
        self.reap_if_done(TaskId::Goal(goal));
    }

    /// Whether each goal with a child has a waiting session that cannot
    /// take more output: its children are then not read, so a slow client
    /// slows the builder down instead of filling memory.
    fn refresh_congestion(&mut self) {
        let limit = self.config.limits.output_buffer_bytes;
        let busy: Vec<GoalId> = self
            .goals
            .iter()
            .filter(|(_, g)| !g.children.is_empty() || g.congested)
            .map(|(id, _)| *id)
            .collect();
        for goal in busy {
            let audience = self.sched.audience(goal);
            let congested = audience.iter().any(|&conn| {
                self.conn_ref(conn).is_some_and(|c| {
                    let s = c.state.shared.borrow();
                    c.state.task.is_some()
                        && s.build_event_bytes + s.output.len() + s.unwritten_bytes >= limit
                })
            });
            if let Some(g) = self.goals.get_mut(&goal) {
                g.congested = congested;
            }
        }
    }

    fn route_lock_events(&mut self) {
        while let Some(event) = self.locks.poll_event() {
            match event {
                LockEvent::Granted(lock) => {
                    if let Some((task, token)) = self.lock_owners.get(&lock).copied() {
                        self.complete(task, token, Completion::Locked(task::LockHandle(lock)));
                    }
                }
                LockEvent::NeedOsLock(path) => {
                    self.start_effect(Owner::OsLock(path.clone()), Effect::TryLockPath { path });
                }
                LockEvent::ReleaseOsLock {
                    path,
                    delete_lock_file,
                } => {
                    self.start_effect(
                        Owner::OsUnlock(path.clone()),
                        Effect::UnlockPath {
                            path,
                            delete: delete_lock_file,
                        },
                    );
                }
                LockEvent::CeilingReached { lock_files } => {
                    self.log(format!(
                        "lock table full: {lock_files} lock files open; waiting for some to be released"
                    ));
                }
            }
        }
    }

    fn start_effect(&mut self, owner: Owner, effect: Effect) {
        let id = EffectId(self.next_effect);
        self.next_effect += 1;
        self.effect_owners.insert(id, owner);
        if self.effect_owners.len() - self.effects_waiting.len()
            > self.config.limits.effects_in_flight_max
        {
            self.effects_waiting.push_back((id, effect));
        } else {
            self.outputs.push_back(Output::Effect { id, effect });
        }
    }

    fn start_waiting_effects(&mut self) {
        while self.effect_owners.len() - self.effects_waiting.len()
            <= self.config.limits.effects_in_flight_max
        {
            let Some((id, effect)) = self.effects_waiting.pop_front() else {
                break;
            };
            self.outputs.push_back(Output::Effect { id, effect });
        }
    }

    fn start_writer(&mut self) {
        if self.writer.in_flight.is_some() {
            return;
        }
        let Some((_, _, front)) = self.writer.queued.front() else {
            return;
        };
        if matches!(front, WriterJob::Effect(_)) {
            let Some((task, token, WriterJob::Effect(effect))) = self.writer.queued.pop_front()
            else {
                return;
            };
            if let Effect::GcDeletePath { path, .. } = effect.as_ref() {
                // The last look before the deletion: a root added while the
                // job waited in the queue keeps the path.
                if self.gc_protected(task, &gc::guarded_paths(&self.config.dirs.store, path)) {
                    let kept = crate::gc::DeleteOutcome::InUse {
                        referrers: Vec::new(),
                    };
                    self.complete(
                        task,
                        token,
                        Completion::Effect(Ok(EffectOutput::GcDeleted(kept))),
                    );
                    // At most one deletion is queued (collections take
                    // turns on gc.lock), so this recursion is shallow.
                    self.start_writer();
                    return;
                }
                self.gc_deleting = Some(path.clone());
            }
            self.writer.in_flight = Some(WriterFlight::Single(task, token));
            self.start_effect(Owner::Writer, *effect);
            return;
        }
        let max = self.config.limits.registration_batch_max.max(1);
        let mut waiters = Vec::new();
        let mut groups = Vec::new();
        while waiters.len() < max {
            match self.writer.queued.front() {
                Some((_, _, WriterJob::Register(_))) => {}
                _ => break,
            }
            let Some((task, token, WriterJob::Register(group))) = self.writer.queued.pop_front()
            else {
                break;
            };
            waiters.push((task, token));
            groups.push(group);
        }
        self.writer.in_flight = Some(WriterFlight::Batch(waiters));
        self.start_effect(Owner::Writer, Effect::Register { groups });
    }

    fn writer_done(&mut self, result: EffectResult) {
        match self.writer.in_flight.take() {
            Some(WriterFlight::Single(task, token)) => {
                self.complete(task, token, Completion::Effect(result));
                if self.gc_deleting.take().is_some() {
                    for (task, token, effect) in std::mem::take(&mut self.gc_parked) {
                        self.start_effect(Owner::Task { task, token }, effect);
                    }
                }
            }
            Some(WriterFlight::Batch(waiters)) => {
                let results: Vec<Result<(), EffectError>> = match result {
                    Ok(EffectOutput::Registered(r)) if r.len() == waiters.len() => r,
                    Ok(other) => {
                        let e = EffectError::new(
                            EffectErrorKind::Database,
                            format!("guixd bug: registration answered with {other:?}"),
                        );
                        vec![Err(e); waiters.len()]
                    }
                    Err(e) => vec![Err(e); waiters.len()],
                };
                for ((task, token), r) in waiters.into_iter().zip(results) {
                    if let Some(locks) = self.writer.held_for_batch.remove(&task) {
                        for lock in locks {
                            self.locks.release(lock, r.is_ok());
                        }
                    }
                    self.complete(task, token, Completion::Registered(r));
                }
            }
            None => {}
        }
        self.start_writer();
    }

    /// Stops a task's coroutine and withdraws what it asked for: waiting
    /// writes and locks, its alarm.
    fn stop_task(&mut self, id: TaskId) {
        self.gc_watches.remove(&id);
        let Some(st) = self.state_mut(id) else {
            return;
        };
        st.task = None;
        let locks = std::mem::take(&mut st.locks);
        let registering = matches!(
            &self.writer.in_flight,
            Some(WriterFlight::Batch(waiters)) if waiters.iter().any(|(t, _)| *t == id)
        );
        for lock in locks {
            self.lock_owners.remove(&lock);
            if registering && self.locks.is_granted(lock) {
                self.writer
                    .held_for_batch
                    .entry(id)
                    .or_default()
                    .insert(lock);
            } else {
                self.locks.cancel(lock);
            }
        }
        self.writer.queued.retain(|(t, _, _)| *t != id);
        self.set_alarm(id, None);
    }

    /// Stops a session: its coroutine is dropped, its waiting
    /// registrations, locks and build requests are withdrawn, and the slot
    /// is freed once its effects have drained.
    fn drop_session(&mut self, id: ConnId) {
        if self.conn_ref(id).is_none() {
            return;
        }
        self.stop_task(TaskId::Conn(id));
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let already_closed = std::mem::replace(&mut conn.closed, true);
        if !already_closed {
            self.outputs.push_back(Output::Close { conn: id });
        }
        let actions = self.sched.task_gone(TaskId::Conn(id));
        self.apply(actions);
        self.reap_if_done(TaskId::Conn(id));
    }

    /// Stops a goal (finished, or cancelled because nobody needs it): its
    /// children are killed, and it is reaped once they and its effects are
    /// gone.
    fn drop_goal(&mut self, goal: GoalId) {
        if !self.goals.contains_key(&goal) {
            return;
        }
        self.stop_task(TaskId::Goal(goal));
        let children: Vec<ChildId> = self
            .goals
            .get(&goal)
            .map(|g| g.children.iter().copied().collect())
            .unwrap_or_default();
        for child in children {
            self.kill_child(child);
        }
        // A cancelled goal may still be registered; a finished one no
        // longer is, and then this does nothing.
        let actions = self.sched.task_gone(TaskId::Goal(goal));
        self.apply(actions);
        self.reap_if_done(TaskId::Goal(goal));
    }

    fn reap_if_done(&mut self, id: TaskId) {
        match id {
            TaskId::Conn(conn) => {
                let Some(c) = self.conn_ref(conn) else {
                    return;
                };
                if c.state.task.is_some() || c.state.effects_in_flight > 0 {
                    return;
                }
                let leftovers = session::leftovers(&c.state.shared.borrow());
                for effect in leftovers {
                    self.start_effect(Owner::Background, effect);
                }
                let slot = &mut self.conns[conn.index as usize];
                slot.conn = None;
                self.free_slots.push(conn.index);
                self.live_conns -= 1;
            }
            TaskId::Goal(goal) => {
                let Some(g) = self.goals.get(&goal) else {
                    return;
                };
                if g.state.task.is_some() || g.state.effects_in_flight > 0 || !g.children.is_empty()
                {
                    return;
                }
                let leftovers = goal::leftovers(&g.state.shared.borrow());
                for effect in leftovers {
                    self.start_effect(Owner::Background, effect);
                }
                self.goals.remove(&goal);
            }
        }
        self.dirty.remove(&id);
        self.set_alarm(id, None);
    }
}

impl TaskState {
    fn new(shared: Rc<RefCell<Shared>>, task: Task) -> TaskState {
        TaskState {
            shared,
            task: Some(task),
            effects_in_flight: 0,
            locks: BTreeSet::new(),
        }
    }
}

/// Whether `effect` asks whether `path` is valid.
fn asks_validity_of(effect: &Effect, path: &StorePath) -> bool {
    match effect {
        Effect::QueryPathInfo { path: p } => p == path,
        Effect::QueryValidPaths { paths } => paths.contains(path),
        _ => false,
    }
}

/// Whether `pressure` is above the thresholds in `settings`
/// (`build-pressure-memory-max` against memory "full", and
/// `build-pressure-cpu-max` against cpu "some", both in percent; unset,
/// unparsable or 0 turn a check off).
fn pressure_is_high(settings: &crate::settings::Settings, pressure: &Pressure) -> bool {
    let threshold = |name: &str| -> Option<u32> {
        let percent: f64 = settings.raw(name)?.trim().parse().ok()?;
        (percent > 0.0).then(|| (percent * 100.0).round() as u32)
    };
    let memory = threshold("build-pressure-memory-max")
        .is_some_and(|t| pressure.memory_full_avg10_centi >= t);
    let cpu =
        threshold("build-pressure-cpu-max").is_some_and(|t| pressure.cpu_some_avg10_centi >= t);
    memory || cpu
}

#[cfg(test)]
mod tests;

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
//! # What it keeps true
//!
//! - It never reads a clock, the environment or the filesystem, and never
//!   spawns anything: all of that arrives as inputs or leaves as outputs.
//! - Entities are small `Copy` ids into tables owned here; a `ConnId`
//!   carries a generation, so a stale id never reaches a new connection.
//! - At most one database write is in flight (the writer queue), and it
//!   carries every registration queued meanwhile (group commit).
//! - A connection's slot is freed only once none of its effects is in
//!   flight; what it left behind (uploads, dumps, locks) is cleaned up then.
//! - Iteration whose order shows in outputs is over ordered maps.

mod session;
pub(crate) mod task;

use crate::config::Config;
use crate::effect::{Effect, EffectError, EffectErrorKind, EffectId, EffectOutput, EffectResult};
use crate::locks::{LockEvent, LockRequestId, LockTable};
use crate::store_path::StorePath;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::time::Instant;
use task::{Completion, Ctx, Request, Shared, Task, Token};

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

/// What the machine asks the runtime to do.
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
}

/// The daemon machine. See the module documentation for the contract.
pub struct Daemon {
    config: Rc<Config>,
    now: Now,
    conns: Vec<Slot>,
    free_slots: Vec<u32>,
    /// Occupied slots of `conns`.
    live_conns: usize,
    outputs: VecDeque<Output>,
    /// Who waits for each effect in flight.
    effect_owners: BTreeMap<EffectId, Owner>,
    /// Effects asked for beyond the in-flight ceiling, in order.
    effects_waiting: VecDeque<(EffectId, Effect)>,
    next_effect: u64,
    /// Connections to poll before the next output is handed out.
    dirty: BTreeSet<ConnId>,
    locks: LockTable,
    lock_owners: BTreeMap<LockRequestId, (ConnId, Token)>,
    writer: Writer,
    /// Paths already written to this daemon's temp-roots file.
    temp_roots_in_file: BTreeSet<StorePath>,
    /// Source of upload and dump ids, shared with sessions.
    ids: Rc<std::cell::Cell<u64>>,
    /// The memo of derivation modulo hashes, shared with sessions.
    drv_hashes: Rc<RefCell<task::DrvHashCache>>,
    shutting_down: bool,
}

/// Why an effect is in flight.
#[derive(Debug)]
enum Owner {
    Session {
        conn: ConnId,
        token: Token,
    },
    /// The registration batch of the writer.
    Writer,
    /// The lock table's OS lock on a path.
    OsLock(StorePath),
    /// The lock table's drop of an OS lock.
    OsUnlock(StorePath),
    /// An effect whose result only matters if it failed (cleanups, the
    /// temp-roots file, OS unlocks): failures are logged.
    Background,
}

/// The writer queue: registrations waiting, and the batch in flight.
#[derive(Debug, Default)]
struct Writer {
    queued: VecDeque<(ConnId, Token, crate::effect::RegistrationGroup)>,
    in_flight: Option<Vec<(ConnId, Token)>>,
}

struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

struct Conn {
    shared: Rc<RefCell<Shared>>,
    /// `None` once the session finished or was dropped.
    task: Option<Task>,
    /// Effects of this connection in flight.
    effects_in_flight: usize,
    /// Lock requests of this connection, granted or waiting.
    locks: BTreeSet<LockRequestId>,
    /// The runtime was told to close, or the peer is gone.
    closed: bool,
}

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
        Daemon {
            config: Rc::new(config),
            now,
            conns: Vec::new(),
            free_slots: Vec::new(),
            live_conns: 0,
            outputs: VecDeque::new(),
            effect_owners: BTreeMap::new(),
            effects_waiting: VecDeque::new(),
            next_effect: 0,
            dirty: BTreeSet::new(),
            locks,
            lock_owners: BTreeMap::new(),
            writer: Writer::default(),
            temp_roots_in_file: BTreeSet::new(),
            ids: Rc::new(std::cell::Cell::new(0)),
            drv_hashes,
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
        let ctx = Ctx::new(
            shared.clone(),
            self.config.limits.output_buffer_bytes,
            self.ids.clone(),
            self.drv_hashes.clone(),
        );
        self.log(session::accepted_line(&peer));
        let task: Task = Box::pin(session::run(ctx, self.config.clone(), peer));
        self.conns[index as usize].conn = Some(Conn {
            shared,
            task: Some(task),
            effects_in_flight: 0,
            locks: BTreeSet::new(),
            closed: false,
        });
        self.dirty.insert(id);
        self.pump();
        Some(id)
    }

    /// Bytes arrived from a client. Never more than `read_budget` allowed.
    pub fn handle_input(&mut self, now: Now, conn: ConnId, bytes: &[u8]) {
        self.advance(now);
        let limit = self.config.limits.input_buffer_bytes;
        if let Some(c) = self.conn_mut(conn) {
            let mut s = c.shared.borrow_mut();
            // The runtime is told the budget; more than that is its bug, but
            // the bound is what protects memory, so it holds regardless.
            let room = limit.saturating_sub(s.input.len());
            let take = bytes.len().min(room);
            s.input.extend_from_slice(&bytes[..take]);
            drop(s);
            self.dirty.insert(conn);
        }
        self.pump();
    }

    /// The client closed its side, or reading or writing failed.
    pub fn handle_input_closed(&mut self, now: Now, conn: ConnId) {
        self.advance(now);
        if let Some(c) = self.conn_mut(conn) {
            c.shared.borrow_mut().input_closed = true;
            self.dirty.insert(conn);
        }
        self.pump();
    }

    /// The runtime wrote `bytes` more of this connection's output.
    pub fn handle_written(&mut self, now: Now, conn: ConnId, bytes: usize) {
        self.advance(now);
        if let Some(c) = self.conn_mut(conn) {
            let mut s = c.shared.borrow_mut();
            s.unwritten_bytes = s.unwritten_bytes.saturating_sub(bytes);
            drop(s);
            self.dirty.insert(conn);
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
            Owner::Session { conn, token } => {
                if let Some(c) = self.conn_mut(conn) {
                    c.effects_in_flight -= 1;
                    c.shared
                        .borrow_mut()
                        .completions
                        .insert(token, Completion::Effect(result));
                    self.dirty.insert(conn);
                }
                self.reap_if_done(conn);
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

    /// The deadline given by `poll_timeout` passed.
    pub fn handle_timeout(&mut self, now: Now) {
        self.advance(now);
        self.locks.handle_timeout(now.mono);
        self.pump();
    }

    /// Stop accepting work: sessions are dropped, and the machine is done
    /// once their effects have drained (`is_finished`).
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
        self.shutting_down && self.effect_owners.is_empty() && self.outputs.is_empty()
    }

    /// How many more bytes of this connection's input the machine takes now.
    pub fn read_budget(&self, conn: ConnId) -> usize {
        match self.conn_ref(conn) {
            Some(c) if c.task.is_some() => {
                let s = c.shared.borrow();
                self.config
                    .limits
                    .input_buffer_bytes
                    .saturating_sub(s.input.len())
            }
            _ => 0,
        }
    }

    /// The next thing for the runtime to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When to call `handle_timeout` next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.locks.poll_timeout()
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

    /// Polls dirty sessions and routes what they asked for, until nothing
    /// changes any more.
    fn pump(&mut self) {
        loop {
            self.route_lock_events();
            let Some(id) = self.dirty.pop_first() else {
                break;
            };
            self.poll_session(id);
        }
    }

    fn poll_session(&mut self, id: ConnId) {
        let now_s = self.now.wall_s;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.shared.borrow_mut().now_s = now_s;
        let finished = match conn.task.as_mut() {
            Some(task) => task::poll_once(task).is_ready(),
            None => false,
        };
        if finished {
            conn.task = None;
        }
        let (requests, output, lines) = {
            let mut s = conn.shared.borrow_mut();
            let requests = std::mem::take(&mut s.requests);
            let output = std::mem::take(&mut s.output);
            let lines = std::mem::take(&mut s.daemon_log);
            s.unwritten_bytes += output.len();
            (requests, output, lines)
        };
        for line in lines {
            self.log(line);
        }
        if !output.is_empty() {
            self.outputs.push_back(Output::Send {
                conn: id,
                data: output,
            });
        }
        for (token, request) in requests {
            self.route(id, token, request);
        }
        if finished {
            self.drop_session(id);
        }
    }

    fn route(&mut self, conn: ConnId, token: Token, request: Request) {
        match request {
            Request::Effect(effect) => {
                if let Some(c) = self.conn_mut(conn) {
                    c.effects_in_flight += 1;
                }
                self.start_effect(Owner::Session { conn, token }, effect);
            }
            Request::Lock(paths) => {
                let lock = self.locks.acquire(paths);
                self.lock_owners.insert(lock, (conn, token));
                if let Some(c) = self.conn_mut(conn) {
                    c.locks.insert(lock);
                }
            }
            Request::Unlock { lock, delete } => {
                self.lock_owners.remove(&lock.0);
                if let Some(c) = self.conn_mut(conn) {
                    c.locks.remove(&lock.0);
                }
                self.locks.release(lock.0, delete);
            }
            Request::Register(group) => {
                self.writer.queued.push_back((conn, token, group));
                self.start_writer();
            }
            Request::TempRootFile(path) => {
                if self.temp_roots_in_file.insert(path.clone()) {
                    self.start_effect(Owner::Background, Effect::AddTempRoot { path });
                }
            }
        }
    }

    fn route_lock_events(&mut self) {
        while let Some(event) = self.locks.poll_event() {
            match event {
                LockEvent::Granted(lock) => {
                    if let Some((conn, token)) = self.lock_owners.get(&lock).copied() {
                        if let Some(c) = self.conn_mut(conn) {
                            c.shared
                                .borrow_mut()
                                .completions
                                .insert(token, Completion::Locked(task::LockHandle(lock)));
                            self.dirty.insert(conn);
                        }
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
        if self.writer.in_flight.is_some() || self.writer.queued.is_empty() {
            return;
        }
        let n = self
            .writer
            .queued
            .len()
            .min(self.config.limits.registration_batch_max);
        let mut waiters = Vec::with_capacity(n);
        let mut groups = Vec::with_capacity(n);
        for (conn, token, group) in self.writer.queued.drain(..n) {
            waiters.push((conn, token));
            groups.push(group);
        }
        self.writer.in_flight = Some(waiters);
        self.start_effect(Owner::Writer, Effect::Register { groups });
    }

    fn writer_done(&mut self, result: EffectResult) {
        let waiters = self.writer.in_flight.take().unwrap_or_default();
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
        for ((conn, token), r) in waiters.into_iter().zip(results) {
            if let Some(c) = self.conn_mut(conn) {
                c.shared
                    .borrow_mut()
                    .completions
                    .insert(token, Completion::Registered(r));
                self.dirty.insert(conn);
            }
        }
        self.start_writer();
    }

    /// Stops a session: its coroutine is dropped, its waiting
    /// registrations and locks are withdrawn, and the slot is freed once its
    /// effects have drained.
    fn drop_session(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.task = None;
        let locks = std::mem::take(&mut conn.locks);
        let already_closed = std::mem::replace(&mut conn.closed, true);
        for lock in locks {
            self.lock_owners.remove(&lock);
            self.locks.cancel(lock);
        }
        self.writer.queued.retain(|(c, _, _)| *c != id);
        if !already_closed {
            self.outputs.push_back(Output::Close { conn: id });
        }
        self.reap_if_done(id);
    }

    fn reap_if_done(&mut self, id: ConnId) {
        let Some(conn) = self.conn_ref(id) else {
            return;
        };
        if conn.task.is_some() || conn.effects_in_flight > 0 {
            return;
        }
        let leftovers = session::leftovers(&conn.shared.borrow());
        for effect in leftovers {
            self.start_effect(Owner::Background, effect);
        }
        let slot = &mut self.conns[id.index as usize];
        slot.conn = None;
        self.free_slots.push(id.index);
        self.live_conns -= 1;
        self.dirty.remove(&id);
    }
}

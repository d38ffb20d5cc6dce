//! Tasks as coroutines: how a session's or a goal's sequential code asks
//! the machine for effects, locks, input, timers and children without ever
//! doing I/O itself.
//!
//! A task is one `async` function — a session per connection, or a goal
//! per derivation or path being realised — polled by the
//! [`Daemon`](super::Daemon) with a no-op waker: there is no executor, no
//! thread and no timer behind it. "Awaiting" only means "park until the
//! machine delivers something": the task pushes a [`Request`] into its
//! [`Shared`] mailbox and awaits a [`Completion`] for the token it was given;
//! the machine drains the mailbox after each poll, turns requests into
//! outputs (effects, lock requests, registrations, spawns), and re-polls the
//! task when a completion, input bytes, output room, child events, build
//! events or its alarm arrive. Both kinds of task use the same mailbox; the
//! fields one kind does not use stay empty.
//!
//! Timers are alarms: during a poll, every wait with a deadline lowers the
//! mailbox's `alarm` to its deadline; the machine clears the alarm before
//! each poll and arms its timer table from what the poll left. A wait that
//! is no longer polled (the task moved on) so leaves no stale timer behind.
//!
//! A collecting session also asks the machine about other tasks'
//! temporary roots (`OtherTempRoots`, `Protected`, `GcWatch`) and waits for
//! a victim's lock only until a deadline (`Ctx::lock_in_table_until`, withdrawn with
//! `CancelLock`).
//!
//! Keeps true:
//! - the mailbox is the only state shared between a session and the machine
//!   (an `Rc<RefCell<_>>`, single-threaded; never borrowed across an await);
//! - every token is used once; a completion for a token nobody awaits any
//!   more (a dropped session) is discarded by the machine;
//! - a session never holds more unparsed input than the machine let in, and
//!   it stops producing output while `output` plus the bytes the runtime has
//!   not yet written exceed the configured bound.

use super::report::BuildEvent;
use super::sched::{BuildOptions, GoalId, GoalKey, GoalResult, SlotRequest};
use super::{ConnId, ExitStatus};
use crate::build_plan::{BuildId, ChildId, LogId};
use crate::effect::{DumpId, Effect, EffectError, EffectResult, RegistrationGroup, UploadId};
use crate::store_path::StorePath;
use std::cell::Cell;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

/// A task, as the machine routes to it: a session (by its connection) or
/// a goal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TaskId {
    Conn(ConnId),
    Goal(GoalId),
}

/// One pending ask from a session to the machine.
#[derive(Debug)]
pub(crate) enum Request {
    Effect(Effect),
    /// Exclusive locks on all of these paths (all or nothing).
    Lock(BTreeSet<StorePath>),
    /// The same in the lock table alone, without lock files (for the
    /// collector's victims: see `LockTable::acquire_in_table`).
    LockInTable(BTreeSet<StorePath>),
    /// Releases a granted lock; `delete` removes the lock files.
    Unlock {
        lock: LockHandle,
        delete: bool,
    },
    /// A registration group for the writer queue.
    Register(RegistrationGroup),
    /// Record a temporary root in the daemon's temp-roots file (for other
    /// processes); no completion.
    TempRootFile(StorePath),
    /// A database write other than a registration (failed paths), run
    /// through the writer queue; completes with `Effect`.
    WriteDb(Effect),
    /// Wait for these goals (created if needed); completes with
    /// `Realised`.
    Realise {
        goals: Vec<GoalKey>,
        keep_going: bool,
        options: Rc<BuildOptions>,
    },
    /// A build slot for this goal; completes with `Slot`.
    Slot(SlotRequest),
    /// Gives the goal's build slot back; completes with `SlotReleased`.
    ReleaseSlot,
    /// Start the prepared build `build` as child `child`; its events
    /// arrive in `child_events`. No completion.
    Spawn {
        child: ChildId,
        build: BuildId,
    },
    /// Kill a child (SIGKILL); its exit still arrives. No completion.
    Kill {
        child: ChildId,
    },
    /// Withdraws the lock request made with this token, granted or not.
    /// No completion (one that arrived meanwhile is dropped).
    CancelLock(Token),
    /// The temporary roots of every other task (sessions and goals);
    /// completes with `TempRoots`.
    OtherTempRoots,
    /// Whether another task holds any of these paths as a temporary root,
    /// or did at any time since this task's `GcWatch(true)`; completes
    /// with `Protected`.
    Protected(Vec<StorePath>),
    /// Starts (`true`) or stops remembering every temporary root other
    /// tasks hold or add, for a collection. No completion.
    GcWatch(bool),
}

/// What the machine answers to a [`Request`].
#[derive(Debug)]
pub(crate) enum Completion {
    Effect(EffectResult),
    Locked(LockHandle),
    Registered(Result<(), EffectError>),
    /// One result per goal asked for, `None` for those no longer waited for.
    Realised(Vec<Option<GoalResult>>),
    Slot,
    /// The most other builds that ran beside the released one.
    SlotReleased {
        others_max: usize,
    },
    TempRoots(BTreeSet<StorePath>),
    Protected(bool),
}

/// What the runtime reported about a child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ChildEvent {
    /// The builder runs with this pid, or could not be started.
    Started(Result<u32, EffectError>),
    /// Bytes from its log pipe.
    Output(Vec<u8>),
    /// Its log pipe reached end of file.
    OutputClosed,
    Exited(ExitStatus),
}

/// A granted lock, to be given back with [`Ctx::unlock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LockHandle(pub(crate) crate::locks::LockRequestId);

/// Correlates a request with its completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Token(pub(crate) u64);

/// The mailbox between one session and the machine.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Client bytes not yet consumed by the session.
    pub input: Vec<u8>,
    /// The client closed its side (or the connection failed).
    pub input_closed: bool,
    /// Bytes for the client not yet handed to the runtime.
    pub output: Vec<u8>,
    /// Bytes handed to the runtime but not yet reported written.
    pub unwritten_bytes: usize,
    /// Requests not yet taken by the machine.
    pub requests: Vec<(Token, Request)>,
    /// Completions not yet taken by the session.
    pub completions: BTreeMap<Token, Completion>,
    /// Paths this session protects from garbage collection.
    pub temp_roots: BTreeSet<StorePath>,
    /// Uploads this session started and has not installed or discarded.
    pub uploads: BTreeSet<UploadId>,
    /// Dumps this session started and has not ended.
    pub dumps: BTreeSet<DumpId>,
    /// Lines for the daemon's own stderr.
    pub daemon_log: Vec<String>,
    /// Wall-clock seconds at the latest input, set by the machine.
    pub now_s: u64,
    /// Monotonic time at the latest input, set by the machine before
    /// every poll.
    pub now_mono: Option<Instant>,
    /// The earliest deadline a wait asked for during the latest poll.
    pub alarm: Option<Instant>,
    /// Goals: what the runtime reported about the goal's children.
    pub child_events: VecDeque<(ChildId, ChildEvent)>,
    /// Goals: bytes of child output in `child_events`.
    pub child_bytes: usize,
    /// Goals: events for the sessions that wait for the goal.
    pub events_out: Vec<BuildEvent>,
    /// Goals: the result, once the goal's coroutine returned.
    pub goal_result: Option<GoalResult>,
    /// Goals: builds prepared (or being prepared) and not finished, logs
    /// open, children not yet reaped: what a dropped goal leaves to clean.
    pub builds: BTreeSet<BuildId>,
    pub logs: BTreeSet<LogId>,
    /// Sessions: events of the goals this session waits for, not yet
    /// formatted, and what they weigh.
    pub build_events: VecDeque<Rc<BuildEvent>>,
    pub build_event_bytes: usize,
    /// `waiting for locks or build slots...` was said for this goal.
    pub waiting_noticed: bool,
    /// Goals: the `@ build-started` trace of the builder running now, for
    /// sessions that come to wait for the goal later.
    pub started_trace: Option<BuildEvent>,
    /// Sessions: the collection (its owner id) that may hold `gc.lock`,
    /// to release should the session be dropped.
    pub gc_owner: Option<u64>,
    next_token: u64,
}

impl Shared {
    fn push(&mut self, request: Request) -> Token {
        let token = Token(self.next_token);
        self.next_token += 1;
        self.requests.push((token, request));
        token
    }
}

/// The boxed session future the machine polls.
pub(crate) type Task = Pin<Box<dyn Future<Output = ()>>>;

/// Polls `task` once with a waker that does nothing: progress is driven by
/// the machine re-polling, never by wake-ups.
pub(crate) fn poll_once(task: &mut Task) -> Poll<()> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    task.as_mut().poll(&mut cx)
}

/// A session's handle on its mailbox.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    shared: Rc<RefCell<Shared>>,
    output_limit_bytes: usize,
    /// The daemon-wide source of upload and dump ids.
    ids: Rc<Cell<u64>>,
    /// The daemon-wide memo of `hashDerivationModulo`.
    drv_hashes: Rc<RefCell<DrvHashCache>>,
}

/// A bounded memo of derivation modulo hashes, keyed by `.drv` path. A
/// `.drv` path names its contents (it is a text path computed from them),
/// so an entry can never go stale, whatever other processes do; the bound
/// only costs re-reading.
#[derive(Debug)]
pub(crate) struct DrvHashCache {
    entries: BTreeMap<String, (crate::hash::Hash, u64)>,
    by_age: BTreeMap<u64, String>,
    clock: u64,
    capacity: usize,
}

impl DrvHashCache {
    pub(crate) fn new(capacity: usize) -> DrvHashCache {
        DrvHashCache {
            entries: BTreeMap::new(),
            by_age: BTreeMap::new(),
            clock: 0,
            capacity: capacity.max(1),
        }
    }

    fn get(&mut self, path: &str) -> Option<crate::hash::Hash> {
        let (hash, age) = self.entries.get_mut(path)?;
        self.by_age.remove(age);
        self.clock += 1;
        *age = self.clock;
        self.by_age.insert(self.clock, path.to_owned());
        Some(*hash)
    }

    fn insert(&mut self, path: String, hash: crate::hash::Hash) {
        if let Some((_, age)) = self.entries.remove(&path) {
            self.by_age.remove(&age);
        }
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.clock += 1;
        self.by_age.insert(self.clock, path.clone());
        self.entries.insert(path, (hash, self.clock));
    }
}

/// What woke a goal waiting with [`Ctx::wait_goal_event`].
#[derive(Debug)]
pub(crate) enum GoalEvent {
    Child(ChildId, ChildEvent),
    Completed(Token, Completion),
    Deadline,
}

/// What woke a session waiting for a build.
#[derive(Debug)]
pub(crate) enum SessionWake {
    /// A build event can be formatted and sent (there is output room).
    Event,
    /// The request completed, and every event before it was taken.
    Completed(Completion),
    /// The client went away.
    Disconnected,
}

/// The client went away while the session waited for its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Disconnected;

impl Ctx {
    pub(crate) fn new(
        shared: Rc<RefCell<Shared>>,
        output_limit_bytes: usize,
        ids: Rc<Cell<u64>>,
        drv_hashes: Rc<RefCell<DrvHashCache>>,
    ) -> Ctx {
        Ctx {
            shared,
            output_limit_bytes,
            ids,
            drv_hashes,
        }
    }

    /// A line for the daemon's own stderr.
    pub(crate) fn log_daemon(&self, line: String) {
        self.shared.borrow_mut().daemon_log.push(line);
    }

    /// Wall-clock seconds, as of the machine's latest input.
    pub(crate) fn now_s(&self) -> u64 {
        self.shared.borrow().now_s
    }

    /// Monotonic time, as of the machine's latest input.
    pub(crate) fn now_mono(&self) -> Option<Instant> {
        self.shared.borrow().now_mono
    }

    /// A fresh id for a build, a log or a child.
    pub(crate) fn fresh_id(&self) -> u64 {
        self.next_id()
    }

    /// Pushes a request without waiting; its completion is looked for with
    /// [`Ctx::wait_goal_event`] or [`Ctx::wait_session_event`].
    pub(crate) fn start(&self, request: Request) -> Token {
        self.shared.borrow_mut().push(request)
    }

    /// Waits for the goals `keys` and returns their results in order.
    pub(crate) async fn realise(
        &self,
        goals: Vec<GoalKey>,
        keep_going: bool,
        options: Rc<BuildOptions>,
    ) -> Vec<Option<GoalResult>> {
        match self
            .ask(Request::Realise {
                goals,
                keep_going,
                options,
            })
            .await
        {
            Completion::Realised(r) => r,
            other => unreachable_completion(other),
        }
    }

    /// Waits for a build slot.
    pub(crate) async fn slot(&self, request: SlotRequest) {
        match self.ask(Request::Slot(request)).await {
            Completion::Slot => {}
            other => unreachable_completion(other),
        }
    }

    /// Gives the build slot back; returns how many other builds ran beside
    /// this one at most.
    pub(crate) async fn release_slot(&self) -> usize {
        match self.ask(Request::ReleaseSlot).await {
            Completion::SlotReleased { others_max } => others_max,
            other => unreachable_completion(other),
        }
    }

    /// Runs a database write through the writer queue.
    pub(crate) async fn write_db(&self, effect: Effect) -> EffectResult {
        match self.ask(Request::WriteDb(effect)).await {
            Completion::Effect(r) => r,
            other => unreachable_completion(other),
        }
    }

    /// Starts the prepared build `build` as `child`.
    pub(crate) fn spawn(&self, child: ChildId, build: BuildId) {
        self.shared
            .borrow_mut()
            .push(Request::Spawn { child, build });
    }

    /// Kills `child`.
    pub(crate) fn kill(&self, child: ChildId) {
        self.shared.borrow_mut().push(Request::Kill { child });
    }

    /// Goals: leaves the result for the machine.
    pub(crate) fn set_goal_result(&self, result: GoalResult) {
        self.shared.borrow_mut().goal_result = Some(result);
    }

    /// Goals: the start trace of the running builder (`None` once it ended).
    pub(crate) fn set_started_trace(&self, trace: Option<BuildEvent>) {
        self.shared.borrow_mut().started_trace = trace;
    }

    /// Goals: true the first time only, so the waiting notice is said once.
    pub(crate) fn mark_waiting_noticed(&self) -> bool {
        !std::mem::replace(&mut self.shared.borrow_mut().waiting_noticed, true)
    }

    /// Tells the sessions waiting for this goal.
    pub(crate) fn publish(&self, event: BuildEvent) {
        self.shared.borrow_mut().events_out.push(event);
    }

    /// Remembers a build to finish should the goal be dropped.
    pub(crate) fn track_build(&self, build: BuildId, live: bool) {
        let mut s = self.shared.borrow_mut();
        if live {
            s.builds.insert(build);
        } else {
            s.builds.remove(&build);
        }
    }

    /// Remembers a log to close should the goal be dropped.
    pub(crate) fn track_log(&self, log: LogId, open: bool) {
        let mut s = self.shared.borrow_mut();
        if open {
            s.logs.insert(log);
        } else {
            s.logs.remove(&log);
        }
    }

    /// The goal's next event: a child event, the completion of one of
    /// `tokens`, or the deadline passing (looked for in that order).
    pub(crate) async fn wait_goal_event(
        &self,
        tokens: &[Token],
        deadline: Option<Instant>,
    ) -> GoalEvent {
        std::future::poll_fn(|_| {
            let mut s = self.shared.borrow_mut();
            if let Some((child, event)) = s.child_events.pop_front() {
                if let ChildEvent::Output(data) = &event {
                    s.child_bytes = s.child_bytes.saturating_sub(data.len());
                }
                return Poll::Ready(GoalEvent::Child(child, event));
            }
            for t in tokens {
                if let Some(c) = s.completions.remove(t) {
                    return Poll::Ready(GoalEvent::Completed(*t, c));
                }
            }
            if let Some(deadline) = deadline {
                if s.now_mono.is_some_and(|now| now >= deadline) {
                    return Poll::Ready(GoalEvent::Deadline);
                }
                s.alarm = Some(s.alarm.map_or(deadline, |a| a.min(deadline)));
            }
            Poll::Pending
        })
        .await
    }

    /// Sessions: the next event of the goals this session waits for.
    pub(crate) fn take_build_event(&self) -> Option<Rc<BuildEvent>> {
        let mut s = self.shared.borrow_mut();
        let event = s.build_events.pop_front()?;
        s.build_event_bytes = s.build_event_bytes.saturating_sub(event.weight_bytes());
        Some(event)
    }

    /// Sessions: waits until a build event can be sent (there is output
    /// room), the request `token` completed with no event left before it,
    /// or the client went away.
    pub(crate) async fn wait_session_event(&self, token: Token) -> SessionWake {
        std::future::poll_fn(|_| {
            let mut s = self.shared.borrow_mut();
            if !s.build_events.is_empty()
                && s.output.len() + s.unwritten_bytes < self.output_limit_bytes
            {
                return Poll::Ready(SessionWake::Event);
            }
            if s.input_closed {
                return Poll::Ready(SessionWake::Disconnected);
            }
            if s.build_events.is_empty() {
                if let Some(c) = s.completions.remove(&token) {
                    return Poll::Ready(SessionWake::Completed(c));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// The memoised modulo hash of a derivation, if known.
    pub(crate) fn drv_hash_cached(&self, drv_path: &str) -> Option<crate::hash::Hash> {
        self.drv_hashes.borrow_mut().get(drv_path)
    }

    /// Memoises the modulo hash of a derivation.
    pub(crate) fn remember_drv_hash(&self, drv_path: String, hash: crate::hash::Hash) {
        self.drv_hashes.borrow_mut().insert(drv_path, hash);
    }

    /// True while the upload is neither installed nor discarded.
    pub(crate) fn has_upload(&self, id: UploadId) -> bool {
        self.shared.borrow().uploads.contains(&id)
    }

    fn next_id(&self) -> u64 {
        let id = self.ids.get();
        self.ids.set(id + 1);
        id
    }

    /// A fresh upload id, remembered so that a dropped session's upload is
    /// discarded.
    pub(crate) fn new_upload(&self) -> UploadId {
        let id = UploadId(self.next_id());
        self.shared.borrow_mut().uploads.insert(id);
        id
    }

    /// The upload was installed or discarded by the session itself.
    pub(crate) fn forget_upload(&self, id: UploadId) {
        self.shared.borrow_mut().uploads.remove(&id);
    }

    /// A fresh dump id, remembered so that a dropped session's dump ends.
    pub(crate) fn new_dump(&self) -> DumpId {
        let id = DumpId(self.next_id());
        self.shared.borrow_mut().dumps.insert(id);
        id
    }

    /// The dump was ended by the session itself.
    pub(crate) fn forget_dump(&self, id: DumpId) {
        self.shared.borrow_mut().dumps.remove(&id);
    }

    /// Runs `effect` and waits for its result.
    pub(crate) async fn effect(&self, effect: Effect) -> EffectResult {
        match self.ask(Request::Effect(effect)).await {
            Completion::Effect(r) => r,
            other => unreachable_completion(other),
        }
    }

    /// Waits until every path in `paths` is locked for this session.
    pub(crate) async fn lock(&self, paths: BTreeSet<StorePath>) -> LockHandle {
        match self.ask(Request::Lock(paths)).await {
            Completion::Locked(h) => h,
            other => unreachable_completion(other),
        }
    }

    /// Asks for a lock on `paths` in the lock table alone (no lock files:
    /// for the collector, which keeps other processes away with `gc.lock`)
    /// and waits for it until `deadline` at most; `None` (the request
    /// withdrawn) when it was not granted by then.
    pub(crate) async fn lock_in_table_until(
        &self,
        paths: BTreeSet<StorePath>,
        deadline: Instant,
    ) -> Option<LockHandle> {
        let token = self.start(Request::LockInTable(paths));
        match self.wait_goal_event(&[token], Some(deadline)).await {
            GoalEvent::Completed(_, Completion::Locked(h)) => Some(h),
            GoalEvent::Completed(_, other) => unreachable_completion(other),
            // Sessions have no children; anything else means the deadline.
            GoalEvent::Child(..) | GoalEvent::Deadline => {
                self.start(Request::CancelLock(token));
                None
            }
        }
    }

    /// From now on until [`Ctx::gc_unwatch`], every temporary root other
    /// tasks hold now or add later counts for this task's collection, even
    /// once their session ended.
    pub(crate) fn gc_watch(&self) {
        self.start(Request::GcWatch(true));
    }

    /// Ends [`Ctx::gc_watch`].
    pub(crate) fn gc_unwatch(&self) {
        self.start(Request::GcWatch(false));
    }

    /// The temporary roots of every other session and goal (and, during a
    /// watch, every one they held since it started).
    pub(crate) async fn other_temp_roots(&self) -> BTreeSet<StorePath> {
        match self.ask(Request::OtherTempRoots).await {
            Completion::TempRoots(roots) => roots,
            other => unreachable_completion(other),
        }
    }

    /// Whether another session or goal holds one of `paths` as a
    /// temporary root.
    pub(crate) async fn is_protected(&self, paths: Vec<StorePath>) -> bool {
        match self.ask(Request::Protected(paths)).await {
            Completion::Protected(p) => p,
            other => unreachable_completion(other),
        }
    }

    /// Records (or forgets) the collection that may hold `gc.lock`.
    pub(crate) fn set_gc_owner(&self, owner: Option<u64>) {
        self.shared.borrow_mut().gc_owner = owner;
    }

    /// Gives a lock back; `delete` says its paths became valid.
    pub(crate) fn unlock(&self, lock: LockHandle, delete: bool) {
        self.shared
            .borrow_mut()
            .push(Request::Unlock { lock, delete });
    }

    /// Registers a group of items through the writer queue.
    pub(crate) async fn register(&self, group: RegistrationGroup) -> Result<(), EffectError> {
        match self.ask(Request::Register(group)).await {
            Completion::Registered(r) => r,
            other => unreachable_completion(other),
        }
    }

    /// Protects `path` from garbage collection for the rest of the session.
    pub(crate) fn add_temp_root(&self, path: &StorePath) {
        let mut s = self.shared.borrow_mut();
        if s.temp_roots.insert(path.clone()) {
            s.push(Request::TempRootFile(path.clone()));
        }
    }

    /// Appends bytes for the client.
    pub(crate) fn send(&self, bytes: &[u8]) {
        self.shared.borrow_mut().output.extend_from_slice(bytes);
    }

    /// Waits until the client's pending output is below the bound, so a
    /// producer (export, build logs) cannot outrun a slow client. Fails
    /// once the connection is gone: what is produced would go nowhere.
    pub(crate) async fn output_room(&self) -> Result<(), Disconnected> {
        std::future::poll_fn(|_| {
            let s = self.shared.borrow();
            if s.input_closed {
                Poll::Ready(Err(Disconnected))
            } else if s.output.len() + s.unwritten_bytes < self.output_limit_bytes {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Feeds the buffered input to `parse`, which returns how many bytes it
    /// consumed and maybe a value; waits for more input while it needs more.
    /// `parse` must consume something or produce a value when given a
    /// non-empty slice, unless it needs more bytes than it was given.
    pub(crate) async fn read_with<T, E>(
        &self,
        mut parse: impl FnMut(&[u8]) -> Result<(usize, Option<T>), E>,
    ) -> Result<Result<T, E>, Disconnected> {
        std::future::poll_fn(|_| {
            let mut s = self.shared.borrow_mut();
            loop {
                let waiting = if s.input_closed {
                    Poll::Ready(Err(Disconnected))
                } else {
                    Poll::Pending
                };
                if s.input.is_empty() {
                    return waiting;
                }
                match parse(&s.input) {
                    Err(e) => return Poll::Ready(Ok(Err(e))),
                    Ok((used, value)) => {
                        s.input.drain(..used);
                        if let Some(v) = value {
                            return Poll::Ready(Ok(Ok(v)));
                        }
                        if used == 0 {
                            // The parser needs more than is buffered.
                            return waiting;
                        }
                    }
                }
            }
        })
        .await
    }

    async fn ask(&self, request: Request) -> Completion {
        let token = self.shared.borrow_mut().push(request);
        std::future::poll_fn(
            |_| match self.shared.borrow_mut().completions.remove(&token) {
                Some(c) => Poll::Ready(c),
                None => Poll::Pending,
            },
        )
        .await
    }
}

fn unreachable_completion(c: Completion) -> ! {
    // The machine answers each request kind with its own completion kind;
    // anything else is a bug in the machine, not something a peer can cause.
    panic!("guixd bug: mismatched completion {c:?}")
}

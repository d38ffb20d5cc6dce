//! Sessions as coroutines: how a session's sequential code asks the machine
//! for effects, locks and input without ever doing I/O itself.
//!
//! A session is one `async` function per connection, polled by the
//! [`Daemon`](super::Daemon) with a no-op waker — there is no executor,
//! no thread and no timer behind it. "Awaiting" only means "park until the
//! machine delivers something": the session pushes a [`Request`] into its
//! [`Shared`] mailbox and awaits a [`Completion`] for the token it was given;
//! the machine drains the mailbox after each poll, turns requests into
//! outputs (effects, lock requests, registrations), and re-polls the session
//! when a completion, input bytes or output room arrive.
//!
//! Keeps true:
//! - the mailbox is the only state shared between a session and the machine
//!   (an `Rc<RefCell<_>>`, single-threaded; never borrowed across an await);
//! - every token is used once; a completion for a token nobody awaits any
//!   more (a dropped session) is discarded by the machine;
//! - a session never holds more unparsed input than the machine let in, and
//!   it stops producing output while `output` plus the bytes the runtime has
//!   not yet written exceed the configured bound.

use crate::effect::{DumpId, Effect, EffectError, EffectResult, RegistrationGroup, UploadId};
use crate::store_path::StorePath;
use std::cell::Cell;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

/// One pending ask from a session to the machine.
#[derive(Debug)]
pub(crate) enum Request {
    Effect(Effect),
    /// Exclusive locks on all of these paths (all or nothing).
    Lock(BTreeSet<StorePath>),
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
}

/// What the machine answers to a [`Request`].
#[derive(Debug)]
pub(crate) enum Completion {
    Effect(EffectResult),
    Locked(LockHandle),
    Registered(Result<(), EffectError>),
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

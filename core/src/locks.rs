//! The lock table: which lock request holds which store path, and when the
//! daemon must take or drop the OS lock on a path's `<path>.lock` file.
//!
//! guixd is one process serving many sessions, so exclusion *between its own
//! sessions* is decided here, in memory, without a system call. To exclude
//! *other processes* (the C++ daemon, Guile tools), every path a request
//! holds is also covered by an OS lock on `<path>.lock`, taken by an effect
//! the daemon runs when the table asks for it ([`LockEvent::NeedOsLock`]) and
//! dropped when the table says so ([`LockEvent::ReleaseOsLock`]). The table
//! is a sans-IO machine: `acquire`/`release`/`cancel` and `handle_*` calls go
//! in, [`LockEvent`]s and a retry deadline come out; it never reads a clock.
//!
//! Keeps true, after every call:
//! - no path is claimed by two requests, so no two granted requests share a
//!   path; a request is granted all of its paths at once or none of them;
//! - a request is granted only once the OS lock of every one of its paths is
//!   held, and an OS lock is dropped only when no request claims its path;
//!   the exception is a request for the table alone
//!   ([`LockTable::acquire_in_table`]), which opens no lock file: it is
//!   granted when its paths are free here and none of their lock files is
//!   being opened or closed;
//! - each lock file is opened at most once at a time: no second try-lock is
//!   asked for while one is in flight, held, or still being released;
//! - lock files open at once (try-locks in flight, locks held, releases in
//!   flight) stay within [`LockLimits::lock_files_max`], except for a single
//!   request larger than the ceiling, which may start only when no lock file
//!   is open at all (otherwise it could never be granted);
//! - waiting requests are served first come, first served: a request never
//!   overtakes an earlier request still waiting for any of the same paths,
//!   while requests for disjoint paths proceed independently;
//! - no lost wake-ups: after every call, no waiting request could be granted
//!   a claim right now under the rules above (the table is settled);
//! - request ids increase and are never reused; events come out in one
//!   deterministic order, decided by ids and path order alone.
//!
//! A request of one session for a path that another request of the *same*
//! session already holds simply waits behind it: the table knows no owner
//! beyond the request id. (The C++ daemon, which locks per process, throws
//! "deadlock: trying to re-acquire self-held lock" instead; avoiding that
//! situation is the caller's business in both daemons.)

use crate::store_path::StorePath;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// Identifies one lock request for the table's lifetime; ids increase with
/// every [`LockTable::acquire`] and are never reused, so a stale id can only
/// ever name a request that is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockRequestId(u64);

impl LockRequestId {
    /// The number behind the id, for logs.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for LockRequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lock request {}", self.0)
    }
}

/// The table's bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockLimits {
    /// Lock files open at once: try-locks in flight, OS locks held, and
    /// releases not yet reported done.
    pub lock_files_max: usize,
    /// First delay before a request retries after another process held one
    /// of its lock files; it doubles with each further failure.
    pub retry_backoff_min_ms: u64,
    /// Longest delay between retries. The C++ daemon's goals poll every
    /// `build-poll-interval` (5 s), which is the default here.
    pub retry_backoff_max_ms: u64,
}

impl Default for LockLimits {
    fn default() -> LockLimits {
        LockLimits {
            lock_files_max: 4096,
            retry_backoff_min_ms: 100,
            retry_backoff_max_ms: 5_000,
        }
    }
}

/// What the table asks of the daemon, or tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockEvent {
    /// The request holds all its paths, in the table and as OS locks.
    Granted(LockRequestId),
    /// Open `<path>.lock` and try to take its OS lock without waiting; report
    /// with [`LockTable::handle_os_lock_result`].
    NeedOsLock(StorePath),
    /// Drop the OS lock on `<path>.lock` and close it; when
    /// `delete_lock_file`, unlink it first (and write the stale token), as
    /// the C++ daemon does once a path became valid. Report completion with
    /// [`LockTable::handle_os_lock_released`].
    ReleaseOsLock {
        path: StorePath,
        delete_lock_file: bool,
    },
    /// A request waits because opening its lock files would exceed
    /// [`LockLimits::lock_files_max`]; `lock_files` are open now. Reported
    /// once per episode: again only after a moment with no such wait.
    CeilingReached { lock_files: usize },
}

/// The lock table.
///
/// Contract:
/// - Inputs: [`acquire`](Self::acquire), [`release`](Self::release),
///   [`cancel`](Self::cancel) from sessions, and the `handle_*` calls from
///   the daemon: the result of every [`LockEvent::NeedOsLock`] exactly once
///   ([`handle_os_lock_result`](Self::handle_os_lock_result)), the completion
///   of every [`LockEvent::ReleaseOsLock`] exactly once, whatever its outcome,
///   since the descriptor is closed either way
///   ([`handle_os_lock_released`](Self::handle_os_lock_released)), and
///   [`handle_timeout`](Self::handle_timeout) once
///   [`poll_timeout`](Self::poll_timeout)'s deadline has passed.
/// - Outputs: after any input, drain [`poll_event`](Self::poll_event) until
///   it returns `None`, then re-read `poll_timeout`.
/// - `now` never goes backwards from one call to the next.
/// - Unknown or stale ids, and reports for paths the table did not ask
///   about, are ignored: a session that went away may race its own release.
///
/// The lock file of a path is deleted when its OS lock is finally dropped if
/// any request that held the path since that OS lock was taken released it
/// with `delete_lock_file`. The flag is sticky rather than the last
/// releaser's because a lock passed on to a waiter that is then cancelled
/// (released without delete) would otherwise leave the file behind although
/// the path is valid; deleting is always safe, since under the C++ protocol
/// a process that locks a deleted file sees the stale token and retries.
#[derive(Debug)]
pub struct LockTable {
    limits: LockLimits,
    next_id: u64,
    /// Every live request, waiting or granted; id order is arrival order.
    requests: BTreeMap<LockRequestId, Request>,
    /// Requests that claim nothing yet (waiting or backing off), in order.
    queue: BTreeSet<LockRequestId>,
    /// Backing-off requests by retry deadline.
    retries: BTreeSet<(Instant, LockRequestId)>,
    /// Paths that are claimed or have a lock file open; no other entries.
    paths: BTreeMap<StorePath, PathEntry>,
    /// Entries of `paths` whose OS lock state is not `None`.
    lock_files_open: usize,
    /// Paths whose claim or OS lock changed during the current call; they
    /// are tidied once the call has settled the queue.
    touched: BTreeSet<StorePath>,
    /// The current ceiling episode was reported.
    ceiling_reported: bool,
    events: VecDeque<LockEvent>,
}

impl LockTable {
    pub fn new(limits: LockLimits) -> LockTable {
        LockTable {
            limits,
            next_id: 0,
            requests: BTreeMap::new(),
            queue: BTreeSet::new(),
            retries: BTreeSet::new(),
            paths: BTreeMap::new(),
            lock_files_open: 0,
            touched: BTreeSet::new(),
            ceiling_reported: false,
            events: VecDeque::new(),
        }
    }

    /// Asks for exclusive locks on all of `paths`. The request is granted
    /// ([`LockEvent::Granted`], possibly before this returns) once every path
    /// is free, no earlier waiting request wants any of them, and their OS
    /// locks are held. An empty set is granted at once.
    pub fn acquire(&mut self, paths: BTreeSet<StorePath>) -> LockRequestId {
        self.add_request(paths, false)
    }

    /// Like [`acquire`](Self::acquire), but excludes this daemon's other
    /// requests only: no lock file is opened (one already held because a
    /// release passed it on is kept until the request lets go). For a
    /// caller that keeps other processes away by other means: the
    /// collector, which holds `gc.lock` and the other processes'
    /// temporary-roots files while it deletes, so none of them can start
    /// using a dead path.
    pub fn acquire_in_table(&mut self, paths: BTreeSet<StorePath>) -> LockRequestId {
        self.add_request(paths, true)
    }

    fn add_request(&mut self, paths: BTreeSet<StorePath>, in_table: bool) -> LockRequestId {
        let id = LockRequestId(self.next_id);
        // A u64 counting requests cannot wrap in the daemon's lifetime.
        self.next_id += 1;
        self.requests.insert(
            id,
            Request {
                paths,
                in_table,
                state: RequestState::Waiting,
                failures: 0,
            },
        );
        self.queue.insert(id);
        self.settle();
        id
    }

    /// Gives back a granted request's paths. `delete_lock_file` says the
    /// paths became valid, so their lock files may go (see the type's doc).
    /// Each path's OS lock passes straight on to a waiting request that can
    /// now be granted it, or is dropped. Releasing a request that was not
    /// granted yet is a cancel, and its flag is ignored: nothing was done
    /// under a lock it never got.
    pub fn release(&mut self, id: LockRequestId, delete_lock_file: bool) {
        let Some(request) = self.requests.remove(&id) else {
            return;
        };
        match request.state {
            RequestState::Waiting => {
                self.queue.remove(&id);
            }
            RequestState::Backoff { until } => {
                self.queue.remove(&id);
                self.retries.remove(&(until, id));
            }
            RequestState::Acquiring | RequestState::Granted => {
                let delete = delete_lock_file && request.state == RequestState::Granted;
                for path in &request.paths {
                    if let Some(entry) = self.paths.get_mut(path) {
                        debug_assert_eq!(entry.claimant, Some(id), "claims follow requests");
                        if entry.claimant == Some(id) {
                            entry.claimant = None;
                            entry.delete_lock_file |= delete;
                            self.touched.insert(path.clone());
                        }
                    }
                }
            }
        }
        self.settle();
    }

    /// Forgets a request of a session that went away, waiting or granted;
    /// what it holds is released without deleting lock files.
    pub fn cancel(&mut self, id: LockRequestId) {
        self.release(id, false);
    }

    /// The outcome of a [`LockEvent::NeedOsLock`]. When the lock was not
    /// taken (another process holds it), the request that needs it lets go
    /// of everything it claimed, so that it cannot deadlock with that
    /// process, and retries after a backoff, keeping its place in the queue:
    /// later requests for any of its paths stay behind it, so a path held
    /// elsewhere for long also delays our later requests that overlap it.
    pub fn handle_os_lock_result(&mut self, now: Instant, path: &StorePath, taken: bool) {
        let Some(entry) = self.paths.get_mut(path) else {
            return;
        };
        if entry.os != OsLock::Pending {
            return;
        }
        let claimant = entry.claimant;
        self.touched.insert(path.clone());
        if taken {
            entry.os = OsLock::Held;
            if let Some(id) = claimant {
                self.grant_if_ready(id);
            }
        } else {
            entry.os = OsLock::None;
            self.lock_files_open -= 1;
            if let Some(id) = claimant {
                self.back_off(now, id);
            }
        }
        self.settle();
    }

    /// A [`LockEvent::ReleaseOsLock`] finished (successfully or not: the
    /// descriptor is closed either way), so the path's lock file may be
    /// opened again and no longer counts against the ceiling.
    pub fn handle_os_lock_released(&mut self, path: &StorePath) {
        let Some(entry) = self.paths.get_mut(path) else {
            return;
        };
        if entry.os != OsLock::Releasing {
            return;
        }
        entry.os = OsLock::None;
        self.lock_files_open -= 1;
        self.touched.insert(path.clone());
        self.settle();
    }

    /// Time passed: requests whose backoff is over compete again.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(until, id)) = self.retries.first() {
            if until > now {
                break;
            }
            self.retries.pop_first();
            if let Some(request) = self.requests.get_mut(&id) {
                request.state = RequestState::Waiting;
            }
        }
        self.settle();
    }

    /// The next thing the daemon must do or know, oldest first.
    pub fn poll_event(&mut self) -> Option<LockEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due: the earliest
    /// retry deadline of a backing-off request.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.retries.first().map(|&(until, _)| until)
    }

    /// Lock files open now: try-locks in flight, OS locks held, releases in
    /// flight.
    pub fn lock_files_open(&self) -> usize {
        self.lock_files_open
    }

    /// Whether `id` is a live, granted request.
    pub fn is_granted(&self, id: LockRequestId) -> bool {
        self.requests
            .get(&id)
            .is_some_and(|r| r.state == RequestState::Granted)
    }

    /// Live requests, granted or waiting.
    pub fn requests_len(&self) -> usize {
        self.requests.len()
    }

    /// No requests, no lock files open, no events to drain.
    pub fn is_idle(&self) -> bool {
        self.requests.is_empty() && self.paths.is_empty() && self.events.is_empty()
    }
}

/// One request and where it stands.
#[derive(Debug)]
struct Request {
    paths: BTreeSet<StorePath>,
    /// Asked for with [`LockTable::acquire_in_table`]: no OS locks.
    in_table: bool,
    state: RequestState,
    /// OS try-locks that failed for this request, for the backoff.
    failures: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestState {
    /// Queued; claims nothing.
    Waiting,
    /// Queued, claims nothing, and may not claim before `until`; it still
    /// keeps later requests for any of its paths behind it.
    Backoff { until: Instant },
    /// Claims all its paths; some OS locks are still being taken.
    Acquiring,
    /// Claims all its paths and holds all their OS locks.
    Granted,
}

/// A path that is claimed or has a lock file open.
#[derive(Debug, Default)]
struct PathEntry {
    /// The acquiring or granted request that claims the path.
    claimant: Option<LockRequestId>,
    os: OsLock,
    /// Some holder since the OS lock was taken released with deletion.
    delete_lock_file: bool,
}

/// The state of a path's lock file, as far as this process goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum OsLock {
    /// Not open.
    #[default]
    None,
    /// A try-lock was asked for and has not been reported.
    Pending,
    /// Open and locked.
    Held,
    /// A release was asked for and has not been reported.
    Releasing,
}

impl LockTable {
    /// Brings the table back to its settled state after an input: grants
    /// what can be granted, drops OS locks nobody claims any more, and
    /// reports a wait for the ceiling.
    ///
    /// Dropping a lock makes its path busy until the release is reported,
    /// which can turn a request that waited for the ceiling into one that
    /// waits for a path, and so free later requests: the queue is scanned
    /// again after any drop. The second scan only adds claims, so it drops
    /// nothing, and the loop runs at most twice.
    fn settle(&mut self) {
        loop {
            let ceiling_wait = self.schedule();
            if !self.tidy() {
                if ceiling_wait && !self.ceiling_reported {
                    self.events.push_back(LockEvent::CeilingReached {
                        lock_files: self.lock_files_open,
                    });
                }
                self.ceiling_reported = ceiling_wait;
                return;
            }
        }
    }

    /// Drops the OS locks of touched paths that nobody claims and forgets
    /// entries with neither claim nor lock file. Returns whether a lock was
    /// dropped.
    fn tidy(&mut self) -> bool {
        let mut dropped = false;
        for path in std::mem::take(&mut self.touched) {
            let Some(entry) = self.paths.get_mut(&path) else {
                continue;
            };
            if entry.claimant.is_some() {
                continue;
            }
            match entry.os {
                OsLock::Held => {
                    entry.os = OsLock::Releasing;
                    let delete_lock_file = std::mem::take(&mut entry.delete_lock_file);
                    self.events.push_back(LockEvent::ReleaseOsLock {
                        path,
                        delete_lock_file,
                    });
                    dropped = true;
                }
                OsLock::None => {
                    self.paths.remove(&path);
                }
                // The outstanding report will touch the path again.
                OsLock::Pending | OsLock::Releasing => {}
            }
        }
        dropped
    }

    /// One pass over the queue in arrival order, letting every request claim
    /// its paths that may; returns whether a request waits for the ceiling.
    /// A queued request that does not claim keeps every later request for
    /// any of its paths waiting (FIFO, no starvation); once one request waits
    /// for the ceiling, later ones that need new lock files wait too, so a
    /// large request is not starved by small ones.
    ///
    /// The pass costs time linear in the queued requests' paths; it runs on
    /// every input, which is what guarantees there are no lost wake-ups.
    fn schedule(&mut self) -> bool {
        let queued: Vec<LockRequestId> = self.queue.iter().copied().collect();
        let mut wanted_earlier: BTreeSet<StorePath> = BTreeSet::new();
        let mut ceiling_wait = false;
        for id in queued {
            let Some(request) = self.requests.get(&id) else {
                debug_assert!(false, "queued requests are live");
                continue;
            };
            let may_claim = request.state == RequestState::Waiting
                && request.paths.iter().all(|p| {
                    !wanted_earlier.contains(p)
                        && self.is_free(p)
                        && !(request.in_table && self.is_being_opened(p))
                });
            if may_claim {
                let new_files = if request.in_table {
                    0
                } else {
                    request
                        .paths
                        .iter()
                        .filter(|p| self.needs_new_file(p))
                        .count()
                };
                if new_files == 0 || (!ceiling_wait && self.fits(new_files)) {
                    self.claim(id);
                    continue;
                }
                ceiling_wait = true;
            }
            if let Some(request) = self.requests.get(&id) {
                wanted_earlier.extend(request.paths.iter().cloned());
            }
        }
        ceiling_wait
    }

    /// Whether no request claims `path` and its lock file is not being
    /// closed (it must be closed before it is opened again).
    fn is_free(&self, path: &StorePath) -> bool {
        self.paths
            .get(path)
            .is_none_or(|e| e.claimant.is_none() && e.os != OsLock::Releasing)
    }

    /// Whether a try-lock on `path`'s lock file is in flight (for a request
    /// that went away): its outcome is for requests that take OS locks.
    fn is_being_opened(&self, path: &StorePath) -> bool {
        self.paths
            .get(path)
            .is_some_and(|e| e.os == OsLock::Pending)
    }

    /// Whether claiming `path` would open its lock file. A path whose lock
    /// file was just closed still has an entry until the call's tidy-up.
    fn needs_new_file(&self, path: &StorePath) -> bool {
        self.paths.get(path).is_none_or(|e| e.os == OsLock::None)
    }

    /// Whether `new_files` more lock files may be opened. A request larger
    /// than the whole ceiling may start only when none is open.
    fn fits(&self, new_files: usize) -> bool {
        self.lock_files_open == 0 || self.lock_files_open + new_files <= self.limits.lock_files_max
    }

    /// Moves a free, waiting request to claim all its paths, asking for the
    /// OS locks it lacks. Lock files already held (a release passing them
    /// on) or being tried (for a request that went away) are reused.
    fn claim(&mut self, id: LockRequestId) {
        self.queue.remove(&id);
        let Some(request) = self.requests.get_mut(&id) else {
            return;
        };
        let mut ready = true;
        for path in &request.paths {
            let entry = self.paths.entry(path.clone()).or_default();
            debug_assert!(entry.claimant.is_none() && entry.os != OsLock::Releasing);
            entry.claimant = Some(id);
            if request.in_table {
                debug_assert!(entry.os != OsLock::Pending);
                continue;
            }
            match entry.os {
                OsLock::None => {
                    // A flag from a holder in the table alone, before this
                    // lock file was opened, is not about it.
                    entry.delete_lock_file = false;
                    entry.os = OsLock::Pending;
                    self.lock_files_open += 1;
                    self.events.push_back(LockEvent::NeedOsLock(path.clone()));
                    ready = false;
                }
                OsLock::Pending | OsLock::Releasing => ready = false,
                OsLock::Held => {}
            }
        }
        if ready {
            request.state = RequestState::Granted;
            self.events.push_back(LockEvent::Granted(id));
        } else {
            request.state = RequestState::Acquiring;
        }
    }

    /// Grants an acquiring request once all its OS locks are held.
    fn grant_if_ready(&mut self, id: LockRequestId) {
        let Some(request) = self.requests.get_mut(&id) else {
            return;
        };
        if request.state != RequestState::Acquiring {
            return;
        }
        let all_held = request
            .paths
            .iter()
            .all(|p| self.paths.get(p).is_some_and(|e| e.os == OsLock::Held));
        if all_held {
            request.state = RequestState::Granted;
            self.events.push_back(LockEvent::Granted(id));
        }
    }

    /// An acquiring request met a lock file another process holds: it lets go
    /// of its claims (the OS locks it took are dropped when nobody else can
    /// use them) and queues again until its retry deadline.
    fn back_off(&mut self, now: Instant, id: LockRequestId) {
        let Some(request) = self.requests.get_mut(&id) else {
            return;
        };
        debug_assert_eq!(request.state, RequestState::Acquiring);
        let delay = backoff_delay(&self.limits, request.failures);
        request.failures = request.failures.saturating_add(1);
        // An overflowing deadline is centuries away; retrying now is as good.
        let until = now.checked_add(delay).unwrap_or(now);
        request.state = RequestState::Backoff { until };
        for path in &request.paths {
            if let Some(entry) = self.paths.get_mut(path)
                && entry.claimant == Some(id)
            {
                entry.claimant = None;
                self.touched.insert(path.clone());
            }
        }
        self.queue.insert(id);
        self.retries.insert((until, id));
    }
}

/// The delay before a request retries after `failures` earlier failed
/// attempts: the minimum, doubled per failure, capped by the maximum.
fn backoff_delay(limits: &LockLimits, failures: u32) -> Duration {
    let factor = 1u64.checked_shl(failures.min(63)).unwrap_or(u64::MAX);
    let ms = limits
        .retry_backoff_min_ms
        .saturating_mul(factor)
        .min(limits.retry_backoff_max_ms);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_path::StoreDir;
    use quickcheck::{Arbitrary, Gen};

    // ---- helpers

    /// Tests need some origin in time; the table only ever compares the
    /// instants it is given, so which one does not matter.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn path(name: &str) -> StorePath {
        StoreDir::new("/gnu/store")
            .unwrap()
            .parse_path(&format!("/gnu/store/{name}"))
            .unwrap()
    }

    fn set(names: &[&str]) -> BTreeSet<StorePath> {
        names.iter().map(|n| path(n)).collect()
    }

    fn drain(t: &mut LockTable) -> Vec<LockEvent> {
        std::iter::from_fn(|| t.poll_event()).collect()
    }

    fn need(name: &str) -> LockEvent {
        LockEvent::NeedOsLock(path(name))
    }

    fn drop_lock(name: &str, delete_lock_file: bool) -> LockEvent {
        LockEvent::ReleaseOsLock {
            path: path(name),
            delete_lock_file,
        }
    }

    fn table(lock_files_max: usize) -> LockTable {
        LockTable::new(LockLimits {
            lock_files_max,
            retry_backoff_min_ms: 100,
            retry_backoff_max_ms: 400,
        })
    }

    /// Acquires `names` on an idle part of the table and takes every OS
    /// lock asked for at once.
    fn granted(t: &mut LockTable, now: Instant, names: &[&str]) -> LockRequestId {
        let id = t.acquire(set(names));
        let mut grants = 0;
        while let Some(event) = t.poll_event() {
            match event {
                LockEvent::NeedOsLock(p) => t.handle_os_lock_result(now, &p, true),
                LockEvent::Granted(g) if g == id => grants += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(grants, 1);
        assert!(t.is_granted(id));
        id
    }

    // ---- unit tests, one rule each

    #[test]
    fn a_fresh_request_takes_every_os_lock_then_is_granted() {
        let now = t0();
        let mut t = table(10);
        let id = t.acquire(set(&["b", "a"]));
        assert_eq!(drain(&mut t), vec![need("a"), need("b")]);
        assert!(!t.is_granted(id));
        t.handle_os_lock_result(now, &path("b"), true);
        assert_eq!(drain(&mut t), vec![]);
        t.handle_os_lock_result(now, &path("a"), true);
        assert_eq!(drain(&mut t), vec![LockEvent::Granted(id)]);
        assert_eq!(t.lock_files_open(), 2);

        t.release(id, true);
        assert_eq!(
            drain(&mut t),
            vec![drop_lock("a", true), drop_lock("b", true)]
        );
        assert_eq!(t.lock_files_open(), 2, "a release counts until reported");
        t.handle_os_lock_released(&path("a"));
        t.handle_os_lock_released(&path("b"));
        assert_eq!(t.lock_files_open(), 0);
        assert!(t.is_idle());
    }

    #[test]
    fn an_empty_request_is_granted_at_once() {
        let mut t = table(0);
        let id = t.acquire(BTreeSet::new());
        assert_eq!(drain(&mut t), vec![LockEvent::Granted(id)]);
        t.release(id, true);
        assert_eq!(drain(&mut t), vec![]);
        assert!(t.is_idle());
    }

    #[test]
    fn a_request_claims_nothing_until_all_its_paths_are_free() {
        let now = t0();
        let mut t = table(10);
        let a = granted(&mut t, now, &["p"]);
        let b = t.acquire(set(&["p", "q"]));
        // All or nothing: `q` is free but is not locked for b.
        assert_eq!(drain(&mut t), vec![]);
        assert_eq!(t.lock_files_open(), 1);
        t.release(a, false);
        // p passes on to b; only q must be taken.
        assert_eq!(drain(&mut t), vec![need("q")]);
        t.handle_os_lock_result(now, &path("q"), true);
        assert_eq!(drain(&mut t), vec![LockEvent::Granted(b)]);
    }

    #[test]
    fn a_later_request_does_not_overtake_an_earlier_conflicting_one() {
        let now = t0();
        let mut t = table(10);
        let a = granted(&mut t, now, &["p"]);
        let b = t.acquire(set(&["p", "q"]));
        let c = t.acquire(set(&["q"]));
        // c's path is free, but b came first and wants it.
        assert_eq!(drain(&mut t), vec![]);
        // Disjoint requests are not held up.
        let d = t.acquire(set(&["r"]));
        assert_eq!(drain(&mut t), vec![need("r")]);
        t.handle_os_lock_result(now, &path("r"), true);
        assert_eq!(drain(&mut t), vec![LockEvent::Granted(d)]);

        t.release(a, false);
        assert_eq!(drain(&mut t), vec![need("q")]);
        t.handle_os_lock_result(now, &path("q"), true);
        assert_eq!(drain(&mut t), vec![LockEvent::Granted(b)]);
        t.release(b, false);
        assert_eq!(
            drain(&mut t),
            vec![LockEvent::Granted(c), drop_lock("p", false)]
        );
    }

    #[test]
    fn a_released_os_lock_passes_on_to_a_waiter_without_being_dropped() {
        let now = t0();
        let mut t = table(10);
        let a = granted(&mut t, now, &["p"]);
        let b = t.acquire(set(&["p"]));
        assert_eq!(drain(&mut t), vec![]);
        t.release(a, true);
        assert_eq!(drain(&mut t), vec![LockEvent::Granted(b)]);
        assert_eq!(t.lock_files_open(), 1);
        // The deletion asked for by a is remembered although b does not ask.
        t.release(b, false);
        assert_eq!(drain(&mut t), vec![drop_lock("p", true)]);
    }

    #[test]
    fn the_delete_flag_does_not_outlive_the_os_lock() {
        let now = t0();
        let mut t = table(10);
        let a = granted(&mut t, now, &["p"]);
        t.release(a, true);
        assert_eq!(drain(&mut t), vec![drop_lock("p", true)]);
        t.handle_os_lock_released(&path("p"));
        let b = granted(&mut t, now, &["p"]);
        t.release(b, false);
        assert_eq!(drain(&mut t), vec![drop_lock("p", false)]);
    }

    #[test]
    fn a_lock_file_is_not_reopened_before_its_release_is_reported() {
        let now = t0();
        let mut t = table(10);
        let a = granted(&mut t, now, &["p"]);
        t.release(a, false);
        assert_eq!(drain(&mut t), vec![drop_lock("p", false)]);
        let b = t.acquire(set(&["p"]));
        assert_eq!(drain(&mut t), vec![]);
        t.handle_os_lock_released(&path("p"));
        assert_eq!(drain(&mut t), vec![need("p")]);
        t.handle_os_lock_result(now, &path("p"), true);
        assert_eq!(drain(&mut t), vec![LockEvent::Granted(b)]);
    }

    #[test]
    fn a_lock_held_elsewhere_makes_the_request_let_go_and_retry_later() {
        let now = t0();
        let mut t = table(10);
        let a = t.acquire(set(&["p", "q"]));
        assert_eq!(drain(&mut t), vec![need("p"), need("q")]);
        t.handle_os_lock_result(now, &path("p"), true);
        t.handle_os_lock_result(now, &path("q"), false);
        // What a took is dropped, so the other process cannot deadlock on it.
        assert_eq!(drain(&mut t), vec![drop_lock("p", false)]);
        assert_eq!(t.poll_timeout(), Some(now + ms(100)));
        t.handle_os_lock_released(&path("p"));
        assert_eq!(drain(&mut t), vec![]);

        // Not before the deadline.
        t.handle_timeout(now + ms(99));
        assert_eq!(drain(&mut t), vec![]);
        t.handle_timeout(now + ms(100));
        assert_eq!(drain(&mut t), vec![need("p"), need("q")]);
        assert_eq!(t.poll_timeout(), None);

        // The backoff doubles, up to its maximum.
        let mut clock = now + ms(100);
        for expected in [200, 400, 400] {
            t.handle_os_lock_result(clock, &path("p"), false);
            t.handle_os_lock_result(clock, &path("q"), true);
            assert_eq!(drain(&mut t), vec![drop_lock("q", false)]);
            t.handle_os_lock_released(&path("q"));
            assert_eq!(t.poll_timeout(), Some(clock + ms(expected)));
            clock += ms(expected);
            t.handle_timeout(clock);
            assert_eq!(drain(&mut t), vec![need("p"), need("q")]);
        }
        t.handle_os_lock_result(clock, &path("p"), true);
        t.handle_os_lock_result(clock, &path("q"), true);
        assert_eq!(drain(&mut t), vec![LockEvent::Granted(a)]);
    }

    #[test]
    fn a_backing_off_request_keeps_its_place() {
        let now = t0();
        let mut t = table(10);
        let a = t.acquire(set(&["p", "q"]));
        assert_eq!(drain(&mut t), vec![need("p"), need("q")]);
        t.handle_os_lock_result(now, &path("p"), false);
        let b = t.acquire(set(&["q"]));
        t.handle_os_lock_result(now, &path("q"), true);
        // b wants q, which a (earlier, backing off) wants too: q is dropped
        // rather than handed to b.
        assert_eq!(drain(&mut t), vec![drop_lock("q", false)]);
        t.handle_os_lock_released(&path("q"));
        assert_eq!(drain(&mut t), vec![]);
        t.handle_timeout(now + ms(100));
        assert_eq!(drain(&mut t), vec![need("p"), need("q")]);
        t.handle_os_lock_result(now + ms(100), &path("p"), true);
        t.handle_os_lock_result(now + ms(100), &path("q"), true);
        assert_eq!(drain(&mut t), vec![LockEvent::Granted(a)]);
        t.release(a, false);
        assert_eq!(
            drain(&mut t),
            vec![LockEvent::Granted(b), drop_lock("p", false)]
        );
    }

    #[test]
    fn the_ceiling_holds_requests_back_in_order_and_is_reported_once() {
        let now = t0();
        let mut t = table(2);
        let a = granted(&mut t, now, &["p", "q"]);
        let b = t.acquire(set(&["r"]));
        assert_eq!(
            drain(&mut t),
            vec![LockEvent::CeilingReached { lock_files: 2 }]
        );
        let c = t.acquire(set(&["s"]));
        assert_eq!(drain(&mut t), vec![], "one report per episode");
        t.release(a, false);
        // Releases in flight still count.
        assert_eq!(
            drain(&mut t),
            vec![drop_lock("p", false), drop_lock("q", false)]
        );
        t.handle_os_lock_released(&path("p"));
        assert_eq!(drain(&mut t), vec![need("r")]);
        t.handle_os_lock_result(now, &path("r"), true);
        assert_eq!(drain(&mut t), vec![LockEvent::Granted(b)]);
        t.handle_os_lock_released(&path("q"));
        assert_eq!(drain(&mut t), vec![need("s")]);
        t.handle_os_lock_result(now, &path("s"), true);
        assert_eq!(drain(&mut t), vec![LockEvent::Granted(c)]);
        assert_eq!(t.lock_files_open(), 2);

        // The episode ended, so the next one is reported again.
        let d = t.acquire(set(&["u"]));
        assert_eq!(
            drain(&mut t),
            vec![LockEvent::CeilingReached { lock_files: 2 }]
        );
        t.cancel(d);
        assert_eq!(drain(&mut t), vec![]);
    }

    #[test]
    fn a_small_request_does_not_overtake_one_waiting_for_the_ceiling() {
        let now = t0();
        let mut t = table(3);
        let a = granted(&mut t, now, &["p", "q"]);
        let b = t.acquire(set(&["r", "s"]));
        assert_eq!(
            drain(&mut t),
            vec![LockEvent::CeilingReached { lock_files: 2 }]
        );
        // One file would fit, but b came first.
        let _c = t.acquire(set(&["u"]));
        assert_eq!(drain(&mut t), vec![]);
        t.release(a, false);
        t.handle_os_lock_released(&path("p"));
        t.handle_os_lock_released(&path("q"));
        assert_eq!(
            drain(&mut t),
            vec![
                drop_lock("p", false),
                drop_lock("q", false),
                need("r"),
                need("s"),
                need("u")
            ]
        );
        assert!(!t.is_granted(b));
    }

    #[test]
    fn a_request_larger_than_the_ceiling_runs_alone() {
        let now = t0();
        let mut t = table(1);
        let a = granted(&mut t, now, &["p"]);
        let b = t.acquire(set(&["q", "r", "s"]));
        assert_eq!(
            drain(&mut t),
            vec![LockEvent::CeilingReached { lock_files: 1 }]
        );
        t.release(a, false);
        assert_eq!(drain(&mut t), vec![drop_lock("p", false)]);
        t.handle_os_lock_released(&path("p"));
        assert_eq!(drain(&mut t), vec![need("q"), need("r"), need("s")]);
        for p in ["q", "r", "s"] {
            t.handle_os_lock_result(now, &path(p), true);
        }
        assert_eq!(drain(&mut t), vec![LockEvent::Granted(b)]);
        assert_eq!(t.lock_files_open(), 3);
    }

    #[test]
    fn cancel_removes_waiting_acquiring_and_granted_requests() {
        let now = t0();
        let mut t = table(10);
        let a = granted(&mut t, now, &["p"]);
        let waiting = t.acquire(set(&["p"]));
        t.cancel(waiting);
        assert_eq!(drain(&mut t), vec![]);
        // Granted: released without deleting the lock file.
        t.cancel(a);
        assert_eq!(drain(&mut t), vec![drop_lock("p", false)]);
        t.handle_os_lock_released(&path("p"));

        // Acquiring: the try-lock in flight is dropped when it lands.
        let acquiring = t.acquire(set(&["q"]));
        assert_eq!(drain(&mut t), vec![need("q")]);
        t.cancel(acquiring);
        assert_eq!(drain(&mut t), vec![]);
        assert_eq!(t.lock_files_open(), 1);
        t.handle_os_lock_result(now, &path("q"), true);
        assert_eq!(drain(&mut t), vec![drop_lock("q", false)]);
        t.handle_os_lock_released(&path("q"));
        assert!(t.is_idle());
    }

    #[test]
    fn a_try_lock_in_flight_serves_the_next_claimant() {
        let now = t0();
        let mut t = table(10);
        let a = t.acquire(set(&["p"]));
        assert_eq!(drain(&mut t), vec![need("p")]);
        t.cancel(a);
        let b = t.acquire(set(&["p"]));
        // The file is already being opened: no second try-lock.
        assert_eq!(drain(&mut t), vec![]);
        t.handle_os_lock_result(now, &path("p"), true);
        assert_eq!(drain(&mut t), vec![LockEvent::Granted(b)]);
    }

    #[test]
    fn release_before_grant_is_a_cancel_and_ignores_delete() {
        let now = t0();
        let mut t = table(10);
        let a = t.acquire(set(&["p"]));
        drain(&mut t);
        t.release(a, true);
        t.handle_os_lock_result(now, &path("p"), true);
        assert_eq!(drain(&mut t), vec![drop_lock("p", false)]);
    }

    #[test]
    fn two_requests_for_one_path_queue_even_from_one_session() {
        let now = t0();
        let mut t = table(10);
        let a = granted(&mut t, now, &["p"]);
        let b = t.acquire(set(&["p"]));
        assert_eq!(drain(&mut t), vec![]);
        assert!(!t.is_granted(b));
        t.release(a, false);
        assert_eq!(drain(&mut t), vec![LockEvent::Granted(b)]);
    }

    #[test]
    fn stale_ids_and_unsolicited_reports_are_ignored() {
        let now = t0();
        let mut t = table(10);
        let a = granted(&mut t, now, &["p"]);
        t.release(a, false);
        drain(&mut t);
        t.release(a, true);
        t.cancel(a);
        t.handle_os_lock_result(now, &path("p"), true);
        t.handle_os_lock_result(now, &path("zzz"), true);
        t.handle_os_lock_released(&path("zzz"));
        assert_eq!(drain(&mut t), vec![]);
        assert_eq!(t.lock_files_open(), 1);
        t.handle_os_lock_released(&path("p"));
        t.handle_os_lock_released(&path("p"));
        assert!(t.is_idle());
    }

    #[test]
    fn ids_are_never_reused() {
        let mut t = table(10);
        let mut last = None;
        for _ in 0..5 {
            let id = t.acquire(BTreeSet::new());
            t.release(id, false);
            assert!(last < Some(id));
            last = Some(id);
        }
    }

    #[test]
    fn backoff_delays_saturate() {
        let l = LockLimits {
            lock_files_max: 1,
            retry_backoff_min_ms: 3,
            retry_backoff_max_ms: 50,
        };
        let delays: Vec<u64> = [0, 1, 2, 3, 4, 5, 64, u32::MAX]
            .iter()
            .map(|&f| backoff_delay(&l, f).as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![3, 6, 12, 24, 48, 50, 50, 50]);
    }

    // ---- the model test

    /// Paths the model draws from; few, so requests collide often.
    const UNIVERSE: usize = 5;

    #[derive(Clone, Debug)]
    enum Op {
        /// A request for the paths whose bits are set (possibly none); with
        /// `true`, for the table alone.
        Acquire(u8, bool),
        /// Release a granted request, chosen by index.
        Release { pick: u8, delete: bool },
        /// Cancel any live request, chosen by index.
        Cancel(u8),
        /// Answer a try-lock in flight, chosen by index.
        OsResult { pick: u8, taken: bool },
        /// Report a release in flight done, chosen by index.
        OsReleased(u8),
        /// Let time pass and fire the timer.
        Advance(u16),
    }

    impl Arbitrary for Op {
        fn arbitrary(g: &mut Gen) -> Op {
            match u8::arbitrary(g) % 16 {
                0..=3 => Op::Acquire(
                    u8::arbitrary(g) % (1 << UNIVERSE),
                    u8::arbitrary(g) % 4 == 0,
                ),
                4..=5 => Op::Release {
                    pick: u8::arbitrary(g),
                    delete: bool::arbitrary(g),
                },
                6 => Op::Cancel(u8::arbitrary(g)),
                7..=10 => Op::OsResult {
                    pick: u8::arbitrary(g),
                    // Mostly taken, so that requests make progress.
                    taken: u8::arbitrary(g) % 4 != 0,
                },
                11..=12 => Op::OsReleased(u8::arbitrary(g)),
                _ => Op::Advance(u16::arbitrary(g) % 300),
            }
        }
    }

    #[derive(Clone, Debug)]
    struct Scenario {
        limits: LockLimits,
        ops: Vec<Op>,
    }

    impl Arbitrary for Scenario {
        fn arbitrary(g: &mut Gen) -> Scenario {
            let min = 1 + u64::arbitrary(g) % 50;
            let limits = LockLimits {
                lock_files_max: usize::arbitrary(g) % (UNIVERSE + 2),
                retry_backoff_min_ms: min,
                retry_backoff_max_ms: min + u64::arbitrary(g) % 200,
            };
            let n = usize::arbitrary(g) % (2 * g.size() + 1);
            let ops = (0..n).map(|_| Op::arbitrary(g)).collect();
            Scenario { limits, ops }
        }

        fn shrink(&self) -> Box<dyn Iterator<Item = Scenario>> {
            let limits = self.limits.clone();
            Box::new(self.ops.shrink().map(move |ops| Scenario {
                limits: limits.clone(),
                ops,
            }))
        }
    }

    /// The table, the OS as the daemon sees it, and a naive account of the
    /// requests, checked against each other after every event and step.
    struct Model {
        table: LockTable,
        limits: LockLimits,
        now: Instant,
        universe: Vec<StorePath>,
        /// Try-locks asked for and not answered, in the order asked.
        os_pending: Vec<StorePath>,
        /// OS locks held, with the delete flag their release must carry.
        os_held: BTreeMap<StorePath, bool>,
        /// Releases asked for and not reported.
        os_releasing: Vec<StorePath>,
        /// Every request ever made, with its paths.
        all: BTreeMap<LockRequestId, BTreeSet<StorePath>>,
        /// The requests for the table alone.
        in_table: BTreeSet<LockRequestId>,
        /// Live requests: whether granted.
        live: BTreeMap<LockRequestId, bool>,
        cancelled: BTreeSet<LockRequestId>,
        granted_ever: BTreeSet<LockRequestId>,
    }

    impl Model {
        fn new(limits: LockLimits) -> Model {
            Model {
                table: LockTable::new(limits.clone()),
                limits,
                now: t0(),
                universe: (0..UNIVERSE).map(|i| path(&format!("p{i}"))).collect(),
                os_pending: Vec::new(),
                os_held: BTreeMap::new(),
                os_releasing: Vec::new(),
                all: BTreeMap::new(),
                in_table: BTreeSet::new(),
                live: BTreeMap::new(),
                cancelled: BTreeSet::new(),
                granted_ever: BTreeSet::new(),
            }
        }

        fn open(&self) -> usize {
            self.os_pending.len() + self.os_held.len() + self.os_releasing.len()
        }

        fn granted_live(&self) -> Vec<LockRequestId> {
            self.live
                .iter()
                .filter(|(_, g)| **g)
                .map(|(id, _)| *id)
                .collect()
        }

        fn acquire(&mut self, mask: u8, in_table: bool) {
            let paths: BTreeSet<StorePath> = (0..UNIVERSE)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| self.universe[i].clone())
                .collect();
            let id = if in_table {
                let id = self.table.acquire_in_table(paths.clone());
                self.in_table.insert(id);
                id
            } else {
                self.table.acquire(paths.clone())
            };
            assert!(self.all.keys().all(|old| *old < id), "ids increase");
            self.all.insert(id, paths);
            self.live.insert(id, false);
        }

        fn release(&mut self, id: LockRequestId, delete: bool) {
            for p in &self.all[&id] {
                if let Some(flag) = self.os_held.get_mut(p) {
                    *flag |= delete;
                }
            }
            self.table.release(id, delete);
            self.live.remove(&id);
        }

        fn os_result(&mut self, index: usize, taken: bool) {
            let p = self.os_pending.remove(index);
            if taken {
                self.os_held.insert(p.clone(), false);
            }
            self.table.handle_os_lock_result(self.now, &p, taken);
        }

        fn os_released(&mut self, index: usize) {
            let p = self.os_releasing.remove(index);
            self.table.handle_os_lock_released(&p);
        }

        fn step(&mut self, op: &Op) {
            match *op {
                Op::Acquire(mask, in_table) => self.acquire(mask, in_table),
                Op::Release { pick, delete } => {
                    let granted = self.granted_live();
                    if !granted.is_empty() {
                        self.release(granted[usize::from(pick) % granted.len()], delete);
                    }
                }
                Op::Cancel(pick) => {
                    let live: Vec<LockRequestId> = self.live.keys().copied().collect();
                    if !live.is_empty() {
                        let id = live[usize::from(pick) % live.len()];
                        self.table.cancel(id);
                        self.live.remove(&id);
                        self.cancelled.insert(id);
                    }
                }
                Op::OsResult { pick, taken } => {
                    if !self.os_pending.is_empty() {
                        self.os_result(usize::from(pick) % self.os_pending.len(), taken);
                    }
                }
                Op::OsReleased(pick) => {
                    if !self.os_releasing.is_empty() {
                        self.os_released(usize::from(pick) % self.os_releasing.len());
                    }
                }
                Op::Advance(n) => {
                    self.now += ms(u64::from(n));
                    self.table.handle_timeout(self.now);
                    assert!(self.table.poll_timeout().is_none_or(|t| t > self.now));
                }
            }
            self.observe();
        }

        /// Drains the table's events, checking each against the model.
        fn observe(&mut self) {
            while let Some(event) = self.table.poll_event() {
                match event {
                    LockEvent::NeedOsLock(p) => {
                        assert!(
                            !self.os_pending.contains(&p)
                                && !self.os_held.contains_key(&p)
                                && !self.os_releasing.contains(&p),
                            "{p} opened twice"
                        );
                        self.os_pending.push(p);
                        self.check_ceiling();
                    }
                    LockEvent::Granted(id) => {
                        assert_eq!(
                            self.live.get(&id),
                            Some(&false),
                            "{id} granted twice or after it went away"
                        );
                        assert!(self.granted_ever.insert(id));
                        let paths = &self.all[&id];
                        for p in paths {
                            if self.in_table.contains(&id) {
                                assert!(
                                    !self.os_pending.contains(p) && !self.os_releasing.contains(p),
                                    "{id} granted while the lock file of {p} opens or closes"
                                );
                            } else {
                                assert!(
                                    self.os_held.contains_key(p),
                                    "{id} granted without the OS lock on {p}"
                                );
                            }
                        }
                        for other in self.granted_live() {
                            assert!(
                                self.all[&other].is_disjoint(paths),
                                "{id} and {other} share a path"
                            );
                        }
                        self.live.insert(id, true);
                    }
                    LockEvent::ReleaseOsLock {
                        path,
                        delete_lock_file,
                    } => {
                        let Some(expected) = self.os_held.remove(&path) else {
                            panic!("{path} released but not held");
                        };
                        assert_eq!(delete_lock_file, expected, "delete flag of {path}");
                        for id in self.granted_live() {
                            assert!(
                                !self.all[&id].contains(&path),
                                "{path} dropped while {id} holds it"
                            );
                        }
                        self.os_releasing.push(path);
                    }
                    LockEvent::CeilingReached { lock_files } => {
                        assert_eq!(lock_files, self.open());
                        assert!(lock_files > 0);
                    }
                }
            }
            self.check();
        }

        /// Lock files stay within the ceiling, but for one request larger
        /// than it, which started alone.
        fn check_ceiling(&self) {
            if self.open() <= self.limits.lock_files_max {
                return;
            }
            let open: BTreeSet<&StorePath> = self
                .os_pending
                .iter()
                .chain(self.os_held.keys())
                .chain(self.os_releasing.iter())
                .collect();
            assert!(
                self.all
                    .values()
                    .any(|paths| paths.len() > self.limits.lock_files_max
                        && open.iter().all(|p| paths.contains(*p))),
                "{} lock files open, ceiling {}",
                self.open(),
                self.limits.lock_files_max
            );
        }

        /// The invariants that hold between steps.
        fn check(&self) {
            let t = &self.table;
            self.check_ceiling();
            assert_eq!(t.lock_files_open(), self.open());

            // The table agrees with the OS about every lock file.
            for (p, entry) in &t.paths {
                let expected = if self.os_pending.contains(p) {
                    OsLock::Pending
                } else if self.os_held.contains_key(p) {
                    OsLock::Held
                } else if self.os_releasing.contains(p) {
                    OsLock::Releasing
                } else {
                    OsLock::None
                };
                assert_eq!(entry.os, expected, "{p}");
                assert!(
                    entry.claimant.is_some() || entry.os != OsLock::None,
                    "{p} kept for nothing"
                );
                // No OS lock is kept once its last holder is gone.
                assert!(
                    entry.claimant.is_some() || entry.os != OsLock::Held,
                    "{p} held by nobody"
                );
                if let Some(id) = entry.claimant {
                    let r = &t.requests[&id];
                    assert!(matches!(
                        r.state,
                        RequestState::Acquiring | RequestState::Granted
                    ));
                    assert!(r.paths.contains(p));
                }
            }
            for p in self
                .os_pending
                .iter()
                .chain(self.os_held.keys())
                .chain(&self.os_releasing)
            {
                assert!(t.paths.contains_key(p), "{p} open but forgotten");
            }

            // The table agrees with the model about every request.
            assert_eq!(
                t.requests.keys().collect::<Vec<_>>(),
                self.live.keys().collect::<Vec<_>>()
            );
            for (id, r) in &t.requests {
                assert_eq!(r.state == RequestState::Granted, self.live[id], "{id}");
                let queued = matches!(
                    r.state,
                    RequestState::Waiting | RequestState::Backoff { .. }
                );
                assert_eq!(queued, t.queue.contains(id), "{id}");
                match r.state {
                    RequestState::Backoff { until } => {
                        assert!(t.retries.contains(&(until, *id)));
                        assert!(until > self.now, "{id} missed its retry");
                    }
                    RequestState::Acquiring | RequestState::Granted => {
                        for p in &r.paths {
                            assert_eq!(t.paths[p].claimant, Some(*id), "{id} claims {p}");
                        }
                        if r.in_table {
                            assert_eq!(r.state, RequestState::Granted, "{id} stuck");
                            assert!(r.paths.iter().all(|p| t.paths[p].os != OsLock::Pending));
                        } else {
                            let all_held = r.paths.iter().all(|p| t.paths[p].os == OsLock::Held);
                            assert_eq!(all_held, r.state == RequestState::Granted, "{id} stuck");
                        }
                    }
                    RequestState::Waiting => {}
                }
            }
            assert_eq!(
                t.retries.len(),
                t.requests
                    .values()
                    .filter(|r| matches!(r.state, RequestState::Backoff { .. }))
                    .count()
            );

            // FIFO: no granted request overtook an earlier one that still
            // waits for a shared path.
            for (id, granted) in &self.live {
                if !granted {
                    continue;
                }
                for (earlier, g) in self.live.range(..*id) {
                    assert!(
                        *g || self.all[earlier].is_disjoint(&self.all[id]),
                        "{id} overtook {earlier}"
                    );
                }
            }

            self.check_settled();
        }

        /// No lost wake-ups: a naive pass over the queue finds no request
        /// that may claim its paths now and does not.
        fn check_settled(&self) {
            let t = &self.table;
            let mut wanted_earlier: BTreeSet<&StorePath> = BTreeSet::new();
            let mut ceiling_wait = false;
            for (id, r) in &t.requests {
                match r.state {
                    RequestState::Acquiring | RequestState::Granted => continue,
                    RequestState::Backoff { .. } => {}
                    RequestState::Waiting => {
                        let in_table = self.in_table.contains(id);
                        let free = r.paths.iter().all(|p| {
                            !wanted_earlier.contains(p)
                                && match t.paths.get(p) {
                                    None => true,
                                    Some(e) => {
                                        e.claimant.is_none()
                                            && e.os != OsLock::Releasing
                                            && !(in_table && e.os == OsLock::Pending)
                                    }
                                }
                        });
                        let new_files = r
                            .paths
                            .iter()
                            .filter(|p| {
                                !in_table && t.paths.get(*p).is_none_or(|e| e.os == OsLock::None)
                            })
                            .count();
                        let fits = new_files == 0
                            || (!ceiling_wait
                                && (self.open() == 0
                                    || self.open() + new_files <= self.limits.lock_files_max));
                        assert!(!(free && fits), "{id} could claim its paths but waits");
                        if free {
                            ceiling_wait = true;
                        }
                    }
                }
                wanted_earlier.extend(&r.paths);
            }
            assert_eq!(
                t.ceiling_reported, ceiling_wait,
                "a wait for the ceiling went unreported"
            );
            let earliest = t
                .requests
                .values()
                .filter_map(|r| match r.state {
                    RequestState::Backoff { until } => Some(until),
                    _ => None,
                })
                .min();
            assert_eq!(t.poll_timeout(), earliest);
        }

        /// Every OS lock is now taken at the first try and every grant is
        /// released: everything still live must end up granted, and the
        /// table must end up empty.
        fn finish(&mut self) {
            let rounds = 4 * self.all.len() + 16;
            for _ in 0..rounds {
                if self.live.is_empty() && self.open() == 0 {
                    break;
                }
                while !self.os_pending.is_empty() {
                    self.os_result(0, true);
                    self.observe();
                }
                while !self.os_releasing.is_empty() {
                    self.os_released(0);
                    self.observe();
                }
                if let Some(deadline) = self.table.poll_timeout() {
                    self.now = self.now.max(deadline);
                    self.table.handle_timeout(self.now);
                    self.observe();
                }
                for id in self.granted_live() {
                    self.release(id, id.as_u64() % 2 == 0);
                    self.observe();
                }
            }
            assert!(self.live.is_empty(), "never granted: {:?}", self.live);
            assert_eq!(self.open(), 0);
            for id in self.all.keys() {
                assert!(
                    self.granted_ever.contains(id) || self.cancelled.contains(id),
                    "{id} starved"
                );
            }
            assert!(self.table.is_idle());
            assert_eq!(self.table.poll_timeout(), None);
        }
    }

    fn model_agrees(s: Scenario) -> bool {
        let mut m = Model::new(s.limits.clone());
        for op in &s.ops {
            m.step(op);
        }
        m.finish();
        true
    }

    #[test]
    fn model_random_operation_sequences() {
        guixd_testkit::check(model_agrees as fn(Scenario) -> bool);
    }
}

//! The event loop: the one thread that owns the core's [`Daemon`] and moves
//! bytes between it and the sockets.
//!
//! One epoll instance watches the listening sockets, every connection, and
//! the eventfd that worker threads and `shutdown` use to wake the loop.
//! Each iteration handles what epoll reported (accepts, reads, writes,
//! completed effects), fires the core's timer, and then *settles*: writes
//! what the core asked to send, closes what it asked to close, and brings
//! each touched connection's epoll interest up to date.
//!
//! Keeps true:
//! - the `Daemon` is created on this thread and never leaves it (it is
//!   `!Send`); `poll_output` is drained after every `handle_*` call, with a
//!   fresh `Now` per call, and `now.mono` never goes backwards;
//! - a connection is watched for reading only while the core's
//!   `read_budget` for it is positive and it has not reached EOF, and for
//!   writing only while output is pending; a connection watched for nothing
//!   is not in the epoll set at all, so a hung-up peer cannot make epoll
//!   report it over and over;
//! - no step costs O(connections): interest is recomputed only for
//!   connections something happened to, plus the "starved" ones (reading
//!   stopped because the budget was 0), whose budget can grow behind our
//!   back when the core makes progress on their session;
//! - every byte the core hands over is either written or, once the peer is
//!   gone, discarded, and in both cases reported with `handle_written`, so
//!   a session waiting for output room never waits for a dead peer;
//! - a connection is closed only when the core says `Close` (after its
//!   pending output is written or discarded), or when the loop ends;
//! - every effect goes to the worker pool, and its result comes back
//!   through the inbox to `handle_effect` exactly once, except a point
//!   read that `Os::run_now` answers on the loop thread without waiting
//!   (the core marks them: `Effect::is_point_read`), whose result goes to
//!   `handle_effect` at once; so does every
//!   spawn of a builder (`Os::spawn_build` blocks until its set-up is done),
//!   whose outcome goes to `handle_child_started`;
//! - a started child is watched through its pidfd (readable once it
//!   exited; then reaped with `waitid(P_PIDFD)` and reported once with
//!   `handle_child_exited`) and its log pipe (read only up to the core's
//!   `child_read_budget`, like a connection; end of file is reported once
//!   with `handle_child_output_closed`); its descriptors are closed once
//!   both were reported, and it is never signalled by pid;
//! - while children run, the machine's pressure is read every
//!   [`PRESSURE_INTERVAL`] and handed to `handle_pressure`.

use crate::inbox::Inbox;
use crate::pool::Pool;
use crate::shutdown::ShutdownFlag;
use crate::sync::Arc;
use crate::wake::EventFd;
use crate::{LogSink, ThreadsConfig};
use guixd_core::build_plan::{BuildId, ChildId};
use guixd_core::config::Config;
use guixd_core::daemon::{ConnId, Daemon, ExitStatus, Now, Output, Peer, PeerKind};
use guixd_core::effect::{Effect, EffectError, EffectErrorKind, EffectId, EffectResult};
use guixd_os::child::SpawnedChild;
use guixd_os::net::Listener;
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::io::Errno;
use rustix::net::{SendAncillaryBuffer, SendFlags, SocketFlags};
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime};

/// A finished job, on its way from a worker to the loop.
pub(crate) enum Completion {
    Effect(EffectId, EffectResult),
    Spawned(ChildId, Result<SpawnedChild, EffectError>),
}

/// A job for a worker: an effect, or the spawn of a prepared build.
// Effects travel by value, as the core hands them out: boxing each would
// cost an allocation per effect for a queue the core keeps short.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Job {
    Effect(EffectId, Effect),
    Spawn(ChildId, BuildId),
}

/// Everything the loop needs, made on the thread that starts the server
/// (so that failures are reported by `start`) and sent to the loop thread.
pub(crate) struct Parts {
    pub(crate) epoll: OwnedFd,
    pub(crate) inbox: Arc<Inbox<Completion, EventFd>>,
    pub(crate) shutdown: Arc<ShutdownFlag<EventFd>>,
    pub(crate) pool: Pool<Job>,
    pub(crate) listeners: Vec<Listener>,
    /// For point reads run on the loop thread ([`guixd_os::Os::run_now`]).
    pub(crate) os: std::sync::Arc<guixd_os::Os>,
}

/// Makes the epoll instance and registers the eventfd and the listeners
/// (made non-blocking) with it.
pub(crate) fn watch(wake: &EventFd, listeners: &[Listener]) -> io::Result<OwnedFd> {
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    epoll::add(&epoll, wake, EventData::new_u64(WAKE_TOKEN), EventFlags::IN)?;
    for (index, listener) in listeners.iter().enumerate() {
        listener.set_nonblocking(true)?;
        epoll::add(
            &epoll,
            listener,
            EventData::new_u64(listener_token(index)),
            EventFlags::IN,
        )?;
    }
    Ok(epoll)
}

/// Runs the loop on the calling thread until the core has finished after
/// a shutdown, or a fatal error. Then stops the worker pool.
pub(crate) fn run(parts: Parts, config: Config, threads: &ThreadsConfig) -> io::Result<()> {
    let mut event_loop = EventLoop::new(parts, config, threads);
    let result = event_loop.run();
    event_loop.flush_log();
    let EventLoop {
        pool,
        conns,
        listeners,
        ..
    } = event_loop;
    // Sockets close before the workers are joined: no peer should wait on a
    // worker that is finishing an effect nobody needs any more.
    drop((conns, listeners));
    pool.join();
    result
}

/// The epoll token of the eventfd.
const WAKE_TOKEN: u64 = u64::MAX;

/// Tokens whose high half is all ones are the loop's own; connection
/// generations never take that value.
const OWN_TOKENS: u64 = (u32::MAX as u64) << 32;

/// How many connections one wake-up of a listener accepts at most, so
/// that a flood of connections cannot starve the clients already served.
const ACCEPTS_PER_EVENT: usize = 256;

/// How long a listener rests after an accept error that is not about one
/// connection (out of descriptors, out of memory), so the loop does not
/// spin on a listener that stays readable.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The longest epoll wait; waking once in a while costs nothing and keeps
/// the timeout within what every kernel's `epoll_pwait` takes.
const WAIT_MAX: Duration = Duration::from_secs(3600);

/// Most buffers handed to one `sendmsg`.
const IOV_MAX: usize = 64;

/// Among the loop's own tokens, those with this bit name a child's pidfd
/// or log pipe: `CHILD_TOKENS | slot << 1 | is_log`.
const CHILD_TOKENS: u64 = OWN_TOKENS | (1 << 31);

/// How often the machine's pressure is read while builders run.
const PRESSURE_INTERVAL: Duration = Duration::from_secs(5);

/// How often a child whose pidfd could not be watched is asked whether it
/// exited.
const CHILD_POLL_INTERVAL: Duration = Duration::from_millis(100);

fn listener_token(index: usize) -> u64 {
    OWN_TOKENS | index as u64
}

fn child_token(slot: usize, log: bool) -> u64 {
    CHILD_TOKENS | ((slot as u64) << 1) | u64::from(log)
}

struct EventLoop {
    daemon: Daemon,
    os: std::sync::Arc<guixd_os::Os>,
    epoll: OwnedFd,
    inbox: Arc<Inbox<Completion, EventFd>>,
    shutdown: Arc<ShutdownFlag<EventFd>>,
    pool: Pool<Job>,
    listeners: Vec<ListenerSlot>,
    conns: Conns,
    /// The table slot of each connection the core knows.
    by_id: HashMap<ConnId, Key>,
    /// One read buffer for all connections; reads are handed to the core
    /// at once, so nothing stays in it between reads.
    read_buf: Vec<u8>,
    /// Most bytes read from one connection per epoll report, for fairness.
    read_per_event_bytes: usize,
    events: Vec<epoll::Event>,
    events_max: usize,
    completions: Vec<Completion>,
    /// Connections with output to write or a close to carry out.
    flush_queue: Vec<Key>,
    /// Connections whose epoll interest may have changed.
    recheck: Vec<Key>,
    /// Connections not read from because their budget was 0.
    starved: Vec<Key>,
    /// Builders the core started, by table slot.
    children: Vec<Option<ChildIo>>,
    free_children: Vec<usize>,
    child_slots: HashMap<ChildId, usize>,
    /// Children whose log is not read because their budget was 0.
    starved_children: Vec<usize>,
    /// When to read the machine's pressure next, while children run.
    next_pressure: Option<Instant>,
    /// Log lines not yet given to the sink, each ending with a newline.
    log: String,
    log_sink: Option<LogSink>,
    last_mono: Instant,
    stopping: bool,
}

/// A builder, as the runtime watches it.
struct ChildIo {
    id: ChildId,
    /// `None` once its exit was reported.
    pidfd: Option<OwnedFd>,
    /// `None` once the end of its log was reported.
    log: Option<OwnedFd>,
    /// The pidfd could not be watched with epoll: it is asked every
    /// [`CHILD_POLL_INTERVAL`] instead.
    polled: bool,
    /// The log pipe is in the epoll set.
    log_watched: bool,
    starved: bool,
}

struct ListenerSlot {
    /// `None` once the server stops accepting.
    listener: Option<Listener>,
    /// Set while the listener rests after an accept error.
    paused_until: Option<Instant>,
}

/// A slot of the connection table: its index and generation, which also
/// make its epoll token. A stale key (the slot was reused) finds nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    index: u32,
    generation: u32,
}

impl Key {
    fn token(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    fn from_token(token: u64) -> Key {
        Key {
            index: token as u32,
            generation: (token >> 32) as u32,
        }
    }
}

/// One connection, as the runtime sees it.
struct Conn {
    id: ConnId,
    fd: OwnedFd,
    /// Output not yet written, in order; the front buffer is written from
    /// `out_offset` on.
    out: VecDeque<Vec<u8>>,
    out_offset: usize,
    out_bytes: usize,
    /// What the epoll set watches for; empty means it is not in the set.
    interest: EventFlags,
    /// EOF or a failure was reported to the core; no more reads.
    read_closed: bool,
    /// Writing failed: the peer is gone, output is discarded.
    write_failed: bool,
    /// The core said `Close`.
    close_requested: bool,
    queued_flush: bool,
    queued_recheck: bool,
    starved: bool,
}

impl Conn {
    /// Drops all pending output; returns how many bytes that was.
    fn discard_output(&mut self) -> usize {
        let n = self.out_bytes;
        self.out.clear();
        self.out_offset = 0;
        self.out_bytes = 0;
        n
    }

    /// Forgets the first `n` bytes of pending output (they were written).
    fn consume(&mut self, mut n: usize) {
        self.out_bytes -= n;
        while n > 0 {
            let Some(front) = self.out.front() else {
                break;
            };
            let left = front.len() - self.out_offset;
            if n < left {
                self.out_offset += n;
                return;
            }
            n -= left;
            self.out.pop_front();
            self.out_offset = 0;
        }
    }
}

/// The connection table: slots reused through a free list, each with a
/// generation so that stale keys and epoll tokens miss.
#[derive(Default)]
struct Conns {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

impl Conns {
    fn insert(&mut self, conn: Conn) -> Key {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot::default());
                // The core refuses connections beyond its ceiling, which is
                // far below 2^32 slots.
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX - 1)
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.generation = match slot.generation.wrapping_add(1) {
            u32::MAX => 0,
            g => g,
        };
        slot.conn = Some(conn);
        Key {
            index,
            generation: slot.generation,
        }
    }

    fn get(&self, key: Key) -> Option<&Conn> {
        let slot = self.slots.get(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        slot.conn.as_ref()
    }

    fn get_mut(&mut self, key: Key) -> Option<&mut Conn> {
        let slot = self.slots.get_mut(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        slot.conn.as_mut()
    }

    fn remove(&mut self, key: Key) -> Option<Conn> {
        let slot = self.slots.get_mut(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        let conn = slot.conn.take()?;
        self.free.push(key.index);
        Some(conn)
    }
}

impl EventLoop {
    fn new(parts: Parts, config: Config, threads: &ThreadsConfig) -> EventLoop {
        let mono = Instant::now();
        let daemon = Daemon::new(
            config,
            Now {
                mono,
                wall_s: wall_seconds(),
            },
        );
        let read_chunk = threads.read_chunk_bytes.max(1);
        let events_max = threads.events_per_wait.max(1);
        EventLoop {
            daemon,
            os: parts.os,
            epoll: parts.epoll,
            inbox: parts.inbox,
            shutdown: parts.shutdown,
            pool: parts.pool,
            listeners: parts
                .listeners
                .into_iter()
                .map(|listener| ListenerSlot {
                    listener: Some(listener),
                    paused_until: None,
                })
                .collect(),
            conns: Conns::default(),
            by_id: HashMap::new(),
            read_buf: vec![0; read_chunk],
            read_per_event_bytes: read_chunk.saturating_mul(4),
            events: Vec::with_capacity(events_max),
            events_max,
            completions: Vec::new(),
            children: Vec::new(),
            free_children: Vec::new(),
            child_slots: HashMap::new(),
            starved_children: Vec::new(),
            next_pressure: None,
            flush_queue: Vec::new(),
            recheck: Vec::new(),
            starved: Vec::new(),
            log: String::new(),
            log_sink: threads.log_sink.clone(),
            last_mono: mono,
            stopping: false,
        }
    }

    fn run(&mut self) -> io::Result<()> {
        loop {
            if !self.stopping && self.shutdown.is_requested() {
                self.begin_shutdown();
            }
            self.settle();
            self.flush_log();
            if self.stopping && self.daemon.is_finished() {
                return Ok(());
            }
            let timeout = self.deadline().map(|deadline| {
                let wait = deadline
                    .saturating_duration_since(Instant::now())
                    .min(WAIT_MAX);
                rustix::event::Timespec {
                    tv_sec: wait.as_secs() as i64,
                    tv_nsec: i64::from(wait.subsec_nanos()) as _,
                }
            });
            let mut events = std::mem::take(&mut self.events);
            events.clear();
            events.reserve(self.events_max);
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            for event in &events {
                self.dispatch(event.data.u64(), event.flags);
            }
            self.events = events;
            self.fire_timers();
        }
    }

    // ---- inputs

    fn dispatch(&mut self, token: u64, flags: EventFlags) {
        if token == WAKE_TOKEN {
            // Resets the eventfd, then drains (see `inbox.rs`); the shutdown
            // flag is looked at again at the top of the next iteration.
            self.take_completions();
            return;
        }
        if token & CHILD_TOKENS == CHILD_TOKENS {
            let low = token & u64::from(u32::MAX >> 1);
            let slot = (low >> 1) as usize;
            if low & 1 == 1 {
                self.read_child(slot);
            } else {
                self.child_exit_ready(slot);
            }
            return;
        }
        if token & OWN_TOKENS == OWN_TOKENS {
            self.accept_from((token & u64::from(u32::MAX)) as usize);
            return;
        }
        let key = Key::from_token(token);
        let Some(conn) = self.conns.get(key) else {
            // Closed earlier in this batch.
            return;
        };
        let failed = flags.intersects(EventFlags::HUP | EventFlags::ERR);
        let wants_read = conn.interest.contains(EventFlags::IN);
        let wants_write = conn.interest.contains(EventFlags::OUT);
        if wants_read && (failed || flags.contains(EventFlags::IN)) {
            self.read_from(key);
        }
        if wants_write && (failed || flags.contains(EventFlags::OUT)) {
            self.queue_flush(key);
        }
    }

    fn take_completions(&mut self) {
        let mut completions = std::mem::take(&mut self.completions);
        self.inbox.take_all(&mut completions);
        for completion in completions.drain(..) {
            match completion {
                Completion::Effect(id, result) => {
                    let now = self.now();
                    self.daemon.handle_effect(now, id, result);
                    self.drain();
                }
                Completion::Spawned(child, result) => self.child_spawned(child, result),
            }
        }
        self.completions = completions;
    }

    fn accept_from(&mut self, index: usize) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let Some(ListenerSlot {
                listener: Some(listener),
                ..
            }) = self.listeners.get(index)
            else {
                return;
            };
            let unix = matches!(listener, Listener::Unix(_));
            let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
            let fd = match rustix::net::accept_with(listener, flags) {
                Ok(fd) => fd,
                Err(Errno::AGAIN) => return,
                // Errors about one connection that is gone already.
                Err(
                    Errno::INTR
                    | Errno::CONNABORTED
                    | Errno::PROTO
                    | Errno::PERM
                    | Errno::NETDOWN
                    | Errno::NONET
                    | Errno::HOSTDOWN
                    | Errno::HOSTUNREACH
                    | Errno::NETUNREACH
                    | Errno::OPNOTSUPP,
                ) => continue,
                Err(e) => {
                    self.log_line(format!("error accepting connection: {e}"));
                    self.pause_listener(index);
                    return;
                }
            };
            let (fd, peer) = match describe_peer(fd, unix) {
                Ok(described) => described,
                Err(e) => {
                    self.log_line(format!("error accepting connection: {e}"));
                    continue;
                }
            };
            let now = self.now();
            if let Some(id) = self.daemon.handle_accept(now, peer) {
                let key = self.conns.insert(Conn {
                    id,
                    fd,
                    out: VecDeque::new(),
                    out_offset: 0,
                    out_bytes: 0,
                    interest: EventFlags::empty(),
                    read_closed: false,
                    write_failed: false,
                    close_requested: false,
                    queued_flush: false,
                    queued_recheck: false,
                    starved: false,
                });
                self.by_id.insert(id, key);
                self.queue_recheck(key);
            }
            // A refused connection's descriptor was dropped: closed at once.
            self.drain();
        }
    }

    fn read_from(&mut self, key: Key) {
        let mut total = 0;
        loop {
            let Some(conn) = self.conns.get(key) else {
                return;
            };
            if conn.read_closed || conn.close_requested {
                break;
            }
            let id = conn.id;
            let want = self
                .daemon
                .read_budget(id)
                .min(self.read_buf.len())
                .min(self.read_per_event_bytes - total);
            if want == 0 {
                break;
            }
            match rustix::io::read(&conn.fd, &mut self.read_buf[..want]) {
                Ok(0) => {
                    self.input_closed(key);
                    break;
                }
                Ok(n) => {
                    let now = self.now();
                    self.daemon.handle_input(now, id, &self.read_buf[..n]);
                    self.drain();
                    total += n;
                    // A short read means the socket is empty for now;
                    // epoll says when more arrives.
                    if n < want {
                        break;
                    }
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => break,
                Err(_) => {
                    self.input_closed(key);
                    break;
                }
            }
        }
        self.queue_recheck(key);
    }

    /// Tells the core that no more input will come from this connection.
    fn input_closed(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.read_closed {
            return;
        }
        conn.read_closed = true;
        let id = conn.id;
        let now = self.now();
        self.daemon.handle_input_closed(now, id);
        self.drain();
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        if self.daemon.poll_timeout().is_some_and(|d| d <= now) {
            let now = self.now();
            self.daemon.handle_timeout(now);
            self.drain();
        }
        if self.next_pressure.is_some_and(|at| at <= now) {
            self.read_pressure();
        }
        let polled: Vec<usize> = self
            .children
            .iter()
            .enumerate()
            .filter(|(_, c)| c.as_ref().is_some_and(|c| c.polled))
            .map(|(slot, _)| slot)
            .collect();
        for slot in polled {
            self.child_exit_ready(slot);
        }
        for index in 0..self.listeners.len() {
            let slot = &mut self.listeners[index];
            if slot.paused_until.is_some_and(|until| until <= now) {
                slot.paused_until = None;
                if let Some(listener) = &slot.listener {
                    let watched = epoll::add(
                        &self.epoll,
                        listener,
                        EventData::new_u64(listener_token(index)),
                        EventFlags::IN,
                    );
                    if let Err(e) = watched {
                        self.log_line(format!("cannot watch a listening socket: {e}"));
                        self.pause_listener(index);
                    }
                }
            }
        }
    }

    fn begin_shutdown(&mut self) {
        self.stopping = true;
        // Closing a listener takes it out of the epoll set; new clients are
        // refused from now on.
        for slot in &mut self.listeners {
            slot.listener = None;
            slot.paused_until = None;
        }
        let now = self.now();
        self.daemon.handle_shutdown(now);
        self.drain();
    }

    // ---- outputs

    /// Takes every output of the core. Sends and closes are only queued
    /// here; `settle` carries them out.
    fn drain(&mut self) {
        while let Some(output) = self.daemon.poll_output() {
            match output {
                Output::Send { conn, data } => {
                    let Some(&key) = self.by_id.get(&conn) else {
                        continue;
                    };
                    if let Some(c) = self.conns.get_mut(key) {
                        if !data.is_empty() {
                            c.out_bytes += data.len();
                            c.out.push_back(data);
                            self.queue_flush(key);
                        }
                    }
                }
                Output::Close { conn } => {
                    let Some(&key) = self.by_id.get(&conn) else {
                        continue;
                    };
                    if let Some(c) = self.conns.get_mut(key) {
                        c.close_requested = true;
                        self.queue_flush(key);
                    }
                }
                Output::Effect { id, effect } => {
                    // A point read that need not wait is answered here and
                    // now: cheaper than two thread hand-overs.
                    if let Some(result) = run_now(&self.os, &effect) {
                        let now = self.now();
                        self.daemon.handle_effect(now, id, result);
                        continue;
                    }
                    if self.pool.submit(Job::Effect(id, effect)).is_err() {
                        // The pool only closes after the loop has ended;
                        // answer anyway, so the core's count stays right.
                        self.inbox.push(Completion::Effect(id, Err(pool_stopped())));
                    }
                }
                Output::Spawn { child, build } => {
                    if self.pool.submit(Job::Spawn(child, build)).is_err() {
                        self.inbox
                            .push(Completion::Spawned(child, Err(pool_stopped())));
                    }
                }
                Output::Kill { child } => self.kill_child(child),
                Output::Log(line) => self.log_line(line),
            }
        }
    }

    /// Writes what was queued, carries out closes and updates epoll
    /// interest, until nothing is left to do.
    fn settle(&mut self) {
        for slot in std::mem::take(&mut self.starved_children) {
            if let Some(Some(c)) = self.children.get_mut(slot) {
                c.starved = false;
            }
            self.update_child_interest(slot);
        }
        for key in std::mem::take(&mut self.starved) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.starved = false;
            }
            self.queue_recheck(key);
        }
        loop {
            if let Some(key) = self.flush_queue.pop() {
                self.flush(key);
            } else if let Some(key) = self.recheck.pop() {
                self.update_interest(key);
            } else {
                break;
            }
        }
    }

    fn flush(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.queued_flush = false;
        let id = conn.id;
        let mut written = 0;
        let mut failed = false;
        if conn.write_failed {
            written = conn.discard_output();
        }
        while conn.out_bytes > 0 {
            let mut iov = [IoSlice::new(&[]); IOV_MAX];
            let mut n = 0;
            for (i, buf) in conn.out.iter().take(IOV_MAX).enumerate() {
                let start = if i == 0 { conn.out_offset } else { 0 };
                iov[i] = IoSlice::new(&buf[start..]);
                n = i + 1;
            }
            let sent = rustix::net::sendmsg(
                &conn.fd,
                &iov[..n],
                &mut SendAncillaryBuffer::default(),
                SendFlags::NOSIGNAL,
            );
            match sent {
                Ok(n) => {
                    conn.consume(n);
                    written += n;
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => break,
                Err(_) => {
                    failed = true;
                    conn.write_failed = true;
                    written += conn.discard_output();
                }
            }
        }
        if written > 0 {
            let now = self.now();
            self.daemon.handle_written(now, id, written);
            self.drain();
        }
        if failed {
            self.input_closed(key);
        }
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if conn.close_requested && conn.out_bytes == 0 {
            self.close(key);
        } else {
            self.queue_recheck(key);
        }
    }

    fn close(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(key) {
            self.by_id.remove(&conn.id);
            // Dropping the descriptor closes it, which also takes it out of
            // the epoll set (it was never duplicated).
        }
    }

    fn update_interest(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.queued_recheck = false;
        let reading = !conn.read_closed && !conn.close_requested;
        let budget = if reading {
            self.daemon.read_budget(conn.id)
        } else {
            0
        };
        let mut want = EventFlags::empty();
        if budget > 0 {
            want |= EventFlags::IN;
        }
        if conn.out_bytes > 0 && !conn.write_failed {
            want |= EventFlags::OUT;
        }
        let starved = reading && budget == 0;
        if starved && !conn.starved {
            self.starved.push(key);
        }
        conn.starved = starved;
        if want == conn.interest {
            return;
        }
        let data = EventData::new_u64(key.token());
        let changed = if conn.interest.is_empty() {
            epoll::add(&self.epoll, &conn.fd, data, want)
        } else if want.is_empty() {
            epoll::delete(&self.epoll, &conn.fd)
        } else {
            epoll::modify(&self.epoll, &conn.fd, data, want)
        };
        match changed {
            Ok(()) => conn.interest = want,
            Err(e) => {
                // Without epoll the connection cannot make progress: treat
                // it as gone both ways and let the core close it.
                let _ = epoll::delete(&self.epoll, &conn.fd);
                conn.interest = EventFlags::empty();
                conn.write_failed = true;
                self.log_line(format!("cannot watch a client connection: {e}"));
                self.input_closed(key);
                self.queue_flush(key);
            }
        }
    }

    fn queue_flush(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.queued_flush {
                conn.queued_flush = true;
                self.flush_queue.push(key);
            }
        }
    }

    fn queue_recheck(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.queued_recheck {
                conn.queued_recheck = true;
                self.recheck.push(key);
            }
        }
    }

    // ---- children

    /// A worker finished spawning a builder: watch it, and tell the core.
    fn child_spawned(&mut self, child: ChildId, result: Result<SpawnedChild, EffectError>) {
        let spawned = match result {
            Ok(spawned) => spawned,
            Err(e) => {
                let now = self.now();
                self.daemon.handle_child_started(now, child, Err(e));
                self.drain();
                return;
            }
        };
        let slot = match self.free_children.pop() {
            Some(slot) => slot,
            None => {
                self.children.push(None);
                self.children.len() - 1
            }
        };
        let polled = epoll::add(
            &self.epoll,
            &spawned.pidfd,
            EventData::new_u64(child_token(slot, false)),
            EventFlags::IN,
        )
        .is_err();
        if polled {
            self.log_line(format!(
                "cannot watch builder {}; polling for its exit",
                spawned.pid
            ));
        }
        self.children[slot] = Some(ChildIo {
            id: child,
            pidfd: Some(spawned.pidfd),
            log: Some(spawned.log),
            polled,
            log_watched: false,
            starved: false,
        });
        self.child_slots.insert(child, slot);
        if self.next_pressure.is_none() {
            self.next_pressure = Some(Instant::now());
        }
        let now = self.now();
        self.daemon
            .handle_child_started(now, child, Ok(spawned.pid));
        self.drain();
        self.update_child_interest(slot);
    }

    /// The pidfd of a child is readable (or polled): reap it if it exited.
    fn child_exit_ready(&mut self, slot: usize) {
        let Some(Some(c)) = self.children.get_mut(slot) else {
            return;
        };
        let Some(pidfd) = &c.pidfd else {
            return;
        };
        let status = match guixd_os::child::wait_exit(pidfd) {
            Ok(None) => return,
            Ok(Some(status)) => exit_status(status),
            Err(e) => {
                // Nothing to reap (the child is gone some other way): the
                // core must still hear of its end.
                let line = format!("cannot wait for a builder: {e}");
                self.log_line(line);
                ExitStatus::Signal(9)
            }
        };
        let Some(Some(c)) = self.children.get_mut(slot) else {
            return;
        };
        if let Some(pidfd) = c.pidfd.take() {
            if !c.polled {
                let _ = epoll::delete(&self.epoll, &pidfd);
            }
        }
        c.polled = false;
        let id = c.id;
        let now = self.now();
        self.daemon.handle_child_exited(now, id, status);
        self.drain();
        self.forget_child_if_done(slot);
    }

    /// Reads a child's log while the core has budget for it.
    fn read_child(&mut self, slot: usize) {
        let mut total = 0;
        loop {
            let Some(Some(c)) = self.children.get(slot) else {
                return;
            };
            let Some(log) = &c.log else {
                return;
            };
            let id = c.id;
            let want = self
                .daemon
                .child_read_budget(id)
                .min(self.read_buf.len())
                .min(self.read_per_event_bytes - total);
            if want == 0 {
                break;
            }
            match rustix::io::read(log, &mut self.read_buf[..want]) {
                Ok(0) => {
                    self.child_log_closed(slot);
                    return;
                }
                Ok(n) => {
                    let now = self.now();
                    self.daemon
                        .handle_child_output(now, id, &self.read_buf[..n]);
                    self.drain();
                    total += n;
                    if n < want {
                        break;
                    }
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => break,
                Err(_) => {
                    self.child_log_closed(slot);
                    return;
                }
            }
        }
        self.update_child_interest(slot);
    }

    fn child_log_closed(&mut self, slot: usize) {
        let Some(Some(c)) = self.children.get_mut(slot) else {
            return;
        };
        if let Some(log) = c.log.take() {
            if c.log_watched {
                let _ = epoll::delete(&self.epoll, &log);
            }
        }
        c.log_watched = false;
        let id = c.id;
        let now = self.now();
        self.daemon.handle_child_output_closed(now, id);
        self.drain();
        self.forget_child_if_done(slot);
    }

    /// Watches a child's log for reading exactly while the core has budget
    /// for it.
    fn update_child_interest(&mut self, slot: usize) {
        let (id, watched) = match self.children.get(slot) {
            Some(Some(c)) if c.log.is_some() => (c.id, c.log_watched),
            _ => return,
        };
        let want = self.daemon.child_read_budget(id) > 0;
        let Some(Some(c)) = self.children.get_mut(slot) else {
            return;
        };
        if want != watched {
            let Some(log) = c.log.as_ref() else {
                return;
            };
            let changed = if want {
                epoll::add(
                    &self.epoll,
                    log,
                    EventData::new_u64(child_token(slot, true)),
                    EventFlags::IN,
                )
            } else {
                epoll::delete(&self.epoll, log)
            };
            match changed {
                Ok(()) => c.log_watched = want,
                Err(e) => {
                    // A log that cannot be watched cannot be read, and the
                    // builder would block on it: stop, as at end of file.
                    self.log_line(format!("cannot watch a builder's log: {e}"));
                    self.child_log_closed(slot);
                    return;
                }
            }
        }
        if !want && !c.starved {
            c.starved = true;
            self.starved_children.push(slot);
        }
    }

    fn forget_child_if_done(&mut self, slot: usize) {
        let done = matches!(self.children.get(slot), Some(Some(c)) if c.pidfd.is_none() && c.log.is_none());
        if !done {
            return;
        }
        if let Some(Some(c)) = self.children.get_mut(slot).map(Option::take) {
            self.child_slots.remove(&c.id);
        }
        self.free_children.push(slot);
        if self.child_slots.is_empty() {
            self.next_pressure = None;
        }
    }

    fn kill_child(&mut self, child: ChildId) {
        let Some(&slot) = self.child_slots.get(&child) else {
            return;
        };
        let Some(Some(c)) = self.children.get(slot) else {
            return;
        };
        if let Some(pidfd) = &c.pidfd {
            if let Err(e) = guixd_os::child::kill_child(pidfd, libc_sigkill()) {
                self.log_line(format!("cannot kill a builder: {e}"));
            }
        }
    }

    fn read_pressure(&mut self) {
        self.next_pressure = Some(Instant::now() + PRESSURE_INTERVAL);
        if let Some(pressure) = guixd_os::pressure::read() {
            let now = self.now();
            self.daemon.handle_pressure(now, pressure);
            self.drain();
        }
    }

    // ---- time, listeners, log

    fn now(&mut self) -> Now {
        let mono = Instant::now().max(self.last_mono);
        self.last_mono = mono;
        Now {
            mono,
            wall_s: wall_seconds(),
        }
    }

    /// The earliest of the core's deadline and the listeners' rests.
    fn deadline(&self) -> Option<Instant> {
        let rests = self.listeners.iter().filter_map(|slot| slot.paused_until);
        let polled = self
            .children
            .iter()
            .flatten()
            .any(|c| c.polled)
            .then(|| Instant::now() + CHILD_POLL_INTERVAL);
        self.daemon
            .poll_timeout()
            .into_iter()
            .chain(rests)
            .chain(self.next_pressure)
            .chain(polled)
            .min()
    }

    fn pause_listener(&mut self, index: usize) {
        let until = Instant::now() + ACCEPT_PAUSE;
        if let Some(slot) = self.listeners.get_mut(index) {
            if let Some(listener) = &slot.listener {
                let _ = epoll::delete(&self.epoll, listener);
            }
            slot.paused_until = Some(until);
        }
    }

    fn log_line(&mut self, line: String) {
        self.log.push_str(&line);
        self.log.push('\n');
    }

    fn flush_log(&mut self) {
        if self.log.is_empty() {
            return;
        }
        match &self.log_sink {
            Some(sink) => sink(&self.log),
            None => {
                // The daemon's own stderr; if it is gone there is nobody to
                // tell.
                let _ = io::Write::write_all(&mut io::stderr().lock(), self.log.as_bytes());
            }
        }
        self.log.clear();
    }
}

/// Who is at the other end of a freshly accepted socket; gives the
/// descriptor back with the answer.
fn describe_peer(fd: OwnedFd, unix: bool) -> io::Result<(OwnedFd, Peer)> {
    if unix {
        let stream = UnixStream::from(fd);
        let (pid, uid, gid) = guixd_os::net::peer_credentials(&stream)?;
        let peer = Peer {
            kind: PeerKind::Unix {
                // SO_PEERCRED gives 0 for a peer in a PID namespace we
                // cannot see; a pid is never negative.
                pid: u32::try_from(pid).unwrap_or(0),
                uid,
                gid,
            },
            user_name: guixd_os::net::user_name(uid),
        };
        Ok((OwnedFd::from(stream), peer))
    } else {
        let stream = TcpStream::from(fd);
        let address = stream.peer_addr()?;
        guixd_os::net::tune_tcp_stream(&stream);
        let peer = Peer {
            kind: PeerKind::Tcp {
                address: address.ip().to_string(),
            },
            user_name: None,
        };
        Ok((OwnedFd::from(stream), peer))
    }
}

fn wall_seconds() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// [`guixd_os::Os::run_now`] on the loop thread; a panic in the os layer
/// becomes an error result, as on a worker.
fn run_now(os: &guixd_os::Os, effect: &Effect) -> Option<EffectResult> {
    let run = std::panic::AssertUnwindSafe(|| os.run_now(effect));
    std::panic::catch_unwind(run).unwrap_or_else(|p| Some(Err(guixd_os::panicked(p, "an effect"))))
}

/// Runs one job on a worker thread and leaves its outcome in the inbox.
/// A panic in the os layer is a guixd bug; it becomes an error result, so
/// the core still hears back exactly once and the worker lives on.
pub(crate) fn run_job(os: &guixd_os::Os, inbox: &Inbox<Completion, EventFd>, job: Job) {
    match job {
        Job::Effect(id, effect) => {
            let run = std::panic::AssertUnwindSafe(|| os.run(effect));
            let result = std::panic::catch_unwind(run)
                .unwrap_or_else(|p| Err(guixd_os::panicked(p, "an effect")));
            inbox.push(Completion::Effect(id, result));
        }
        Job::Spawn(child, build) => {
            let run = std::panic::AssertUnwindSafe(|| os.spawn_build(build));
            let result = std::panic::catch_unwind(run)
                .unwrap_or_else(|p| Err(guixd_os::panicked(p, "spawning a builder")));
            inbox.push(Completion::Spawned(child, result));
        }
    }
}

fn pool_stopped() -> EffectError {
    EffectError::new(
        EffectErrorKind::Io(Errno::SHUTDOWN.raw_os_error()),
        "guixd bug: the worker pool has stopped",
    )
}

/// How a reaped child ended, as the core names it.
fn exit_status(status: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(signal)) => ExitStatus::Signal(signal),
        // One of the two is always set for a child that ended.
        (None, None) => ExitStatus::Signal(9),
    }
}

/// SIGKILL, which is 9 on every Linux architecture.
fn libc_sigkill() -> i32 {
    9
}

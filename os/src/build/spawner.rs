//! The spawner helper: a process forked from the daemon at start-up, while
//! the daemon still has a single thread, that creates every builder.
//!
//! Creating a builder needs `clone` with namespace flags and a long list of
//! system calls in the child before `exec`; doing that from the daemon,
//! whose threads may hold locks at the moment of the clone, is unsafe. The
//! helper is single-threaded forever, so its children may allocate and
//! format freely (see `phases.rs`).
//!
//! How a spawn goes:
//! 1. the daemon makes a fresh socket pair (the *channel*) and sends one
//!    end to the helper over the *control* socket (`SOCK_SEQPACKET`, one
//!    byte plus the descriptor per message);
//! 2. it writes the encoded [`SpawnSpec`] on the channel (`u32` length,
//!    little-endian, then the bytes);
//! 3. the helper creates the log pipe (and, for a user namespace, a setup
//!    socket), clones the builder with `CLONE_PARENT | CLONE_PIDFD` plus
//!    the namespace flags, writes the child's id maps and sends `"go\n"`;
//! 4. it replies on the channel: a status byte, the pid (`u32`), a
//!    message (`u32` length + bytes), with the pidfd and the log pipe's
//!    read end attached (`SCM_RIGHTS`) whenever a child exists.
//!
//! Keeps true:
//! - every builder is a child of the *daemon* (`CLONE_PARENT`), so the
//!   daemon reaps it with `waitid(P_PIDFD)`; the helper never waits for a
//!   builder and never reaps one. If a reply carries a child, the daemon
//!   owns it, also on failure (it must kill and reap it);
//! - one request per channel: a malformed, truncated or abandoned request
//!   (a dead peer, a stalled writer, past [`REQUEST_TIMEOUT`]) only costs
//!   that channel; the helper goes on serving the next one;
//! - the helper exits when the daemon's end of the control socket closes
//!   (the daemon exited or dropped the [`Spawner`]); termination signals
//!   from the terminal do not stop it, so an orderly daemon stop can still
//!   spawn until the end;
//! - the helper holds no descriptor of the daemon's besides its control
//!   socket and the standard streams, so builders inherit nothing.

use super::phases;
use super::spec::{SpawnSpec, SpecLimits};
use crate::locks::strerror;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// How long the helper waits for a request's bytes, or for the daemon to
/// take the reply, before giving up on that channel.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the daemon waits for the helper's reply. The helper serves one
/// request at a time, so this covers the requests queued before ours.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest reply message accepted.
const REPLY_MESSAGE_MAX_BYTES: usize = 64 << 10;

/// Reply status: the child runs; pidfd and log attached.
const STATUS_OK: u8 = 0;
/// Nothing was started; the message says why.
const STATUS_FAILED: u8 = 1;
/// A child was started but its set-up from the outside failed; it was
/// killed, and the daemon must reap it (pidfd and log attached).
const STATUS_FAILED_CHILD: u8 = 2;

/// The daemon's handle on the spawner helper.
#[derive(Debug)]
pub struct Spawner {
    control: OwnedFd,
    pid: libc::pid_t,
}

/// A builder the helper started.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub pid: u32,
    pub pidfd: OwnedFd,
    pub log: OwnedFd,
}

/// Why a spawn failed: the message (the C++ daemon's words where it has
/// some) and the child to kill and reap, when one was created.
#[derive(Debug)]
pub(crate) struct SpawnError {
    pub message: String,
    pub child: Option<Spawned>,
}

impl Spawner {
    /// Forks the helper. Call this while the process has a single thread
    /// (at daemon start-up, before any runtime thread): the helper is a
    /// copy of the calling process and must not inherit locks held by
    /// other threads.
    pub fn start() -> io::Result<Spawner> {
        let (daemon_end, helper_end) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        // SAFETY: getpid has no preconditions and cannot fail.
        let daemon = unsafe { libc::getpid() };
        // SAFETY: fork has no preconditions; the child only runs
        // `helper_main`, which never returns.
        let pid = unsafe { libc::fork() };
        if pid == -1 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            drop(daemon_end);
            helper_main(helper_end, daemon);
        }
        drop(helper_end);
        Ok(Spawner {
            control: daemon_end,
            pid,
        })
    }

    /// The helper's pid.
    pub fn pid(&self) -> u32 {
        // Pids are positive.
        self.pid as u32
    }

    /// Asks the helper to start the builder `spec` describes. Blocking.
    pub(crate) fn spawn(&self, spec: &SpawnSpec) -> Result<Spawned, SpawnError> {
        let fail = |context: &str, e: io::Error| SpawnError {
            message: format!("{context}: {}", strerror(&e)),
            child: None,
        };
        let (mine, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| fail("creating the spawn channel", e.into()))?;
        set_timeouts(&mine, REPLY_TIMEOUT).map_err(|e| fail("creating the spawn channel", e))?;
        send_fd(&self.control, theirs.as_fd())
            .map_err(|e| fail("sending a request to the spawner helper", e))?;
        drop(theirs);

        let body = spec.encode();
        let len = u32::try_from(body.len()).map_err(|_| SpawnError {
            message: "spawn request too large".to_owned(),
            child: None,
        })?;
        send_all(&mine, &len.to_le_bytes())
            .and_then(|()| send_all(&mine, &body))
            .map_err(|e| fail("writing to the spawner helper", e))?;

        let (header, fds) =
            recv_with_fds(&mine, 9).map_err(|e| fail("reading from the spawner helper", e))?;
        let status = header[0];
        let pid = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
        let msg_len = u32::from_le_bytes([header[5], header[6], header[7], header[8]]) as usize;
        let child = match <[OwnedFd; 2]>::try_from(fds) {
            Ok([pidfd, log]) => Some(Spawned { pid, pidfd, log }),
            Err(_) => None,
        };
        let message = if msg_len > REPLY_MESSAGE_MAX_BYTES {
            "overlong reply from the spawner helper".to_owned()
        } else {
            let mut buf = vec![0; msg_len];
            match recv_exact(&mine, &mut buf) {
                Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
                Err(e) => format!("reading from the spawner helper: {}", strerror(&e)),
            }
        };
        match (status, child) {
            (STATUS_OK, Some(child)) if msg_len == 0 => Ok(child),
            (_, child) => Err(SpawnError {
                message: if message.is_empty() {
                    "malformed reply from the spawner helper".to_owned()
                } else {
                    message
                },
                child,
            }),
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // Shutting the control socket down makes the helper see
        // end-of-file and exit; then reap it.
        let _ = rustix::net::shutdown(&self.control, rustix::net::Shutdown::Both);
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        while unsafe { libc::waitpid(self.pid, &mut status, 0) } == -1 {
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
    }
}

/// The helper's main loop; never returns.
fn helper_main(control: OwnedFd, daemon: libc::pid_t) -> ! {
    // SAFETY: signal-state and descriptor calls on this (now
    // single-threaded) process.
    unsafe {
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_NAME, c"guixd-spawner".as_ptr());
        // Gone with the daemon at once, even while serving a request (the
        // end of file on `control` would only be seen between requests).
        // Builders are the daemon's children (CLONE_PARENT), not ours, so
        // this takes none of them along.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != daemon {
            // The daemon died before the request above took effect.
            libc::_exit(0);
        }
    }
    close_inherited(control.as_raw_fd());
    let limits = SpecLimits::default();
    let daemon_in_proc = phases::parent_in_proc();
    loop {
        match recv_fd(&control) {
            // The daemon is gone.
            Ok(None) => break,
            Ok(Some(channel)) => serve_channel(channel, &limits, daemon_in_proc),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            // A message without a descriptor or with too many: skip it.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => continue,
            Err(_) => break,
        }
    }
    // SAFETY: `_exit` never returns; the daemon's atexit handlers are not
    // ours to run.
    unsafe { libc::_exit(0) }
}

/// Serves one request on `channel`; every failure is answered (when the
/// peer still listens) and forgotten.
/// `daemon_in_proc` is handed to the builder (see [`phases::run_child`]).
fn serve_channel(channel: OwnedFd, limits: &SpecLimits, daemon_in_proc: Option<libc::pid_t>) {
    if set_timeouts(&channel, REQUEST_TIMEOUT).is_err() {
        return;
    }
    let mut len = [0u8; 4];
    if recv_exact(&channel, &mut len).is_err() {
        return;
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > limits.request_max_bytes {
        let _ = reply(
            &channel,
            STATUS_FAILED,
            0,
            "spawn request over its limits",
            None,
        );
        return;
    }
    let mut body = vec![0u8; len];
    if recv_exact(&channel, &mut body).is_err() {
        return;
    }
    let spec = match SpawnSpec::decode(&body, limits) {
        Ok(spec) => spec,
        Err(e) => {
            let _ = reply(&channel, STATUS_FAILED, 0, &e.to_string(), None);
            return;
        }
    };
    match start_child(&spec, daemon_in_proc) {
        Ok(child) => {
            let _ = reply(&channel, STATUS_OK, child.pid, "", Some(&child));
        }
        Err(SpawnError {
            message,
            child: Some(child),
        }) => {
            let _ = reply(
                &channel,
                STATUS_FAILED_CHILD,
                child.pid,
                &message,
                Some(&child),
            );
        }
        Err(SpawnError {
            message,
            child: None,
        }) => {
            let _ = reply(&channel, STATUS_FAILED, 0, &message, None);
        }
    }
}

/// Clones the builder and, for a user namespace, maps its ids and lets it
/// go on.
fn start_child(
    spec: &SpawnSpec,
    daemon_in_proc: Option<libc::pid_t>,
) -> Result<Spawned, SpawnError> {
    let fail = |message: String| SpawnError {
        message,
        child: None,
    };
    let (log_r, log_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| fail(format!("creating pipe: {}", strerror(&e.into()))))?;
    let userns = spec.chroot.as_ref().is_some_and(|c| c.user_namespace);
    let setup = if userns {
        let pair = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| fail(format!("creating setup socket: {}", strerror(&e.into()))))?;
        Some(pair)
    } else {
        None
    };

    let mut flags = libc::CLONE_PARENT as u64 | libc::CLONE_PIDFD as u64;
    if spec.chroot.is_some() {
        flags |= (libc::CLONE_NEWNS
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS) as u64;
    }
    if userns {
        flags |= libc::CLONE_NEWUSER as u64;
    }
    let cloned = clone_child(flags).map_err(|e| fail(format!("clone: {}", strerror(&e))))?;
    let Cloned::Parent { pid, pidfd } = cloned else {
        // The child: every descriptor but these two is closed first thing.
        let setup_fd = setup.as_ref().map(|(_, child_end)| child_end.as_raw_fd());
        phases::run_child(spec, log_w.as_raw_fd(), setup_fd, daemon_in_proc);
    };
    drop(log_w);
    let child = Spawned {
        // Pids are positive.
        pid: pid as u32,
        pidfd,
        log: log_r,
    };
    let Some((parent_end, child_end)) = setup else {
        return Ok(child);
    };
    drop(child_end);
    let chroot = spec.chroot.as_ref();
    let mapped = chroot.map_or(Ok(()), |c| {
        map_ids(pid, c.host_uid, c.host_gid, &c.extra_gids)
    });
    let result = mapped.and_then(|()| {
        send_all(&parent_end, b"go\n")
            .map_err(|e| format!("writing to setup socket: {}", strerror(&e)))
    });
    match result {
        Ok(()) => Ok(child),
        Err(message) => {
            let _ = crate::child::kill_child(&child.pidfd, libc::SIGKILL);
            Err(SpawnError {
                message,
                child: Some(child),
            })
        }
    }
}

/// Writes the user namespace id maps of `pid`: guest uid 30001 and gid
/// 30000 for the daemon's ids, plus the extra gids through `newgidmap`
/// when there are some and it works (`initializeUserNamespace`).
fn map_ids(pid: libc::pid_t, uid: u32, gid: u32, extra_gids: &[(u32, u32)]) -> Result<(), String> {
    use super::sandbox::{GUEST_GID, GUEST_UID};
    write_proc(pid, "uid_map", &format!("{GUEST_UID} {uid} 1"))?;
    if !extra_gids.is_empty() {
        let mut args = vec![
            pid.to_string(),
            GUEST_GID.to_string(),
            gid.to_string(),
            "1".to_owned(),
        ];
        for (guest, host) in extra_gids {
            args.extend([guest.to_string(), host.to_string(), "1".to_owned()]);
        }
        if run_newgidmap(&args) {
            return Ok(());
        }
    }
    write_proc(pid, "setgroups", "deny")?;
    write_proc(pid, "gid_map", &format!("{GUEST_GID} {gid} 1\n"))
}

fn write_proc(pid: libc::pid_t, file: &str, contents: &str) -> Result<(), String> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::write(&path, contents).map_err(|e| format!("writing file '{path}': {}", strerror(&e)))
}

/// Runs `newgidmap ARGS` (found through `PATH`); true when it exited 0.
/// Forked by hand: std's `Command` takes a lock on the environment that a
/// thread of the daemon might have held when the helper was forked.
fn run_newgidmap(args: &[String]) -> bool {
    let Ok(mut argv) = std::iter::once("newgidmap")
        .chain(args.iter().map(String::as_str))
        .map(std::ffi::CString::new)
        .collect::<Result<Vec<_>, _>>()
    else {
        return false;
    };
    let mut ptrs: Vec<*const libc::c_char> = argv.iter_mut().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: this process is single-threaded; the child only calls
    // execvp and _exit.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return false;
    }
    if pid == 0 {
        // SAFETY: NUL-terminated strings in a null-terminated array.
        unsafe {
            libc::execvp(ptrs[0], ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } == -1 {
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

/// The clone-args structure of `clone3(2)` (the first version, 64 bytes).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// Which side of a clone this is.
enum Cloned {
    Child,
    Parent { pid: libc::pid_t, pidfd: OwnedFd },
}

/// `clone3` (or `clone` on kernels without it) without a new stack, like
/// `fork`.
fn clone_child(flags: u64) -> io::Result<Cloned> {
    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        child_tid: 0,
        parent_tid: 0,
        // Must be 0 with CLONE_PARENT: the child then signals the daemon
        // with the helper's own exit signal, SIGCHLD (the helper was
        // forked).
        exit_signal: 0,
        stack: 0,
        stack_size: 0,
        tls: 0,
    };
    // SAFETY: without CLONE_VM the child gets a copy of this process (as
    // with fork) and continues from here on its copy of the stack; `args`
    // and `pidfd` are valid for the call.
    let mut r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
        // clone(flags, stack, parent_tid, ...): with CLONE_PIDFD the pidfd
        // is stored through the parent_tid pointer on every architecture;
        // no exit signal in the flags, as above.
        // SAFETY: as above.
        r = unsafe {
            libc::syscall(
                libc::SYS_clone,
                flags as libc::c_ulong,
                0usize,
                &mut pidfd as *mut libc::c_int,
                0usize,
                0usize,
            )
        };
    }
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    if r == 0 {
        return Ok(Cloned::Child);
    }
    // SAFETY: the kernel stored a new descriptor for the child in `pidfd`,
    // owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // Pids fit in pid_t.
    Ok(Cloned::Parent {
        pid: r as libc::pid_t,
        pidfd,
    })
}

fn reply(
    channel: &OwnedFd,
    status: u8,
    pid: u32,
    message: &str,
    child: Option<&Spawned>,
) -> io::Result<()> {
    let mut head = Vec::with_capacity(9 + message.len());
    head.push(status);
    head.extend_from_slice(&pid.to_le_bytes());
    let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
    head.extend_from_slice(&len.to_le_bytes());
    head.extend_from_slice(message.as_bytes());
    let fds: Vec<_> = child
        .map(|c| vec![c.pidfd.as_fd(), c.log.as_fd()])
        .unwrap_or_default();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
    }
    let sent = loop {
        match rustix::net::sendmsg(
            channel,
            &[IoSlice::new(&head)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    send_all(channel, &head[sent..])
}

/// Sends one byte with `fd` attached over the control socket.
fn send_fd(control: &OwnedFd, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !cmsg.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
    }
    loop {
        match rustix::net::sendmsg(
            control,
            &[IoSlice::new(&[0])],
            &mut cmsg,
            SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one control message: `Ok(None)` at end-of-file, the one
/// descriptor it carries, or `InvalidData` when it carries none or several
/// (those are closed).
fn recv_fd(control: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        control,
        &mut [IoSliceMut::new(&mut byte)],
        &mut cmsg,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    if fds.len() != 1 {
        return Err(io::ErrorKind::InvalidData.into());
    }
    Ok(fds.pop())
}

/// Receives exactly `n` bytes, collecting the descriptors attached to them.
fn recv_with_fds(socket: &OwnedFd, n: usize) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    let mut fds = Vec::new();
    while filled < n {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let msg = match rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(&mut buf[filled..])],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for message in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if msg.bytes == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += msg.bytes;
    }
    Ok((buf, fds))
}

fn recv_exact(socket: &OwnedFd, buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::net::recv(socket, &mut buf[filled..], RecvFlags::empty()) {
            Ok((0, _)) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok((n, _)) => filled += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn send_all(socket: &OwnedFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::net::send(socket, data, SendFlags::NOSIGNAL) {
            Ok(n) => data = &data[n..],
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn set_timeouts(socket: &OwnedFd, timeout: Duration) -> io::Result<()> {
    use rustix::net::sockopt::{Timeout, set_socket_timeout};
    set_socket_timeout(socket, Timeout::Recv, Some(timeout))?;
    set_socket_timeout(socket, Timeout::Send, Some(timeout))?;
    Ok(())
}

/// Closes every descriptor the helper inherited from the daemon except the
/// standard streams and `keep` (database, lock files, listening sockets).
fn close_inherited(keep: RawFd) {
    let Ok(keep) = libc::c_uint::try_from(keep) else {
        return;
    };
    // SAFETY: closes descriptors of this process that no Rust object in the
    // helper refers to (the daemon's objects are never used here).
    unsafe {
        if keep > 3 {
            libc::close_range(3, keep - 1, 0);
        }
        libc::close_range(keep + 1, libc::c_uint::MAX, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::Exec;
    use super::*;
    use crate::child::wait_exit;

    fn channel(spawner: &Spawner) -> OwnedFd {
        let (mine, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        set_timeouts(&mine, REPLY_TIMEOUT).unwrap();
        send_fd(&spawner.control, theirs.as_fd()).unwrap();
        mine
    }

    fn failure_reply(channel: &OwnedFd) -> String {
        let (head, fds) = recv_with_fds(channel, 9).unwrap();
        assert_eq!(head[0], STATUS_FAILED);
        assert!(fds.is_empty());
        let len = u32::from_le_bytes([head[5], head[6], head[7], head[8]]) as usize;
        let mut msg = vec![0; len];
        recv_exact(channel, &mut msg).unwrap();
        String::from_utf8(msg).unwrap()
    }

    #[test]
    fn the_helper_survives_bad_requests() {
        let spawner = super::super::tests::shared_spawner();

        // A channel abandoned before any byte.
        drop(channel(&spawner));
        // A control message without a descriptor.
        rustix::net::send(&spawner.control, &[0], SendFlags::NOSIGNAL).unwrap();
        // Bytes that are not a spawn description.
        let c = channel(&spawner);
        send_all(&c, &10u32.to_le_bytes()).unwrap();
        send_all(&c, b"0123456789").unwrap();
        assert_eq!(failure_reply(&c), "not a spawn request");
        // A length beyond the limit.
        let c = channel(&spawner);
        send_all(&c, &u32::MAX.to_le_bytes()).unwrap();
        assert_eq!(failure_reply(&c), "spawn request over its limits");
        // A request cut short by a writer that went away.
        let c = channel(&spawner);
        send_all(&c, &100u32.to_le_bytes()).unwrap();
        send_all(&c, b"short").unwrap();
        drop(c);

        // The helper still serves.
        let spec = SpawnSpec {
            chroot: None,
            cwd: b"/".to_vec(),
            store_dir: b"/nonexistent".to_vec(),
            ids: None,
            persona: 0,
            exec: Exec::Program {
                program: b"/var/cache/guixd/guix-root/bin/busybox".to_vec(),
                argv: vec![b"true".to_vec()],
                envp: vec![],
            },
        };
        let child = spawner.spawn(&spec).unwrap();
        let mut first = [0u8; 2];
        let n = rustix::io::read(&child.log, &mut first).unwrap();
        assert_eq!(&first[..n], b"\n");
        let mut pfd = libc::pollfd {
            fd: child.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 60_000) }, 1);
        assert_eq!(wait_exit(&child.pidfd).unwrap().unwrap().code(), Some(0));
    }
}

//! Children of the daemon as the runtimes see them: a pidfd to wait on and
//! to signal, and the read end of the log pipe.
//!
//! Keeps true:
//! - a child is only ever named by its pidfd, never by its pid, once it has
//!   been spawned: waiting and signalling through a pidfd cannot reach
//!   another process that was given the same pid after the child was
//!   reaped;
//! - nothing here blocks: [`wait_exit`] asks with `WNOHANG` (a runtime
//!   learns that the child ended when its pidfd polls readable), and
//!   [`kill_child`] only sends a signal;
//! - no `SIGCHLD` handler and no `wait(-1)` anywhere: each child is reaped
//!   by whoever holds its pidfd, exactly once.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// A builder process started for the daemon (see `Os::spawn_build`).
///
/// The process is a child of the daemon process, so the pidfd can be waited
/// on with [`wait_exit`]. `log` carries the builder's standard output and
/// error (one pipe for both) and is non-blocking; it reaches end-of-file
/// once every process of the build has closed it.
#[derive(Debug)]
pub struct SpawnedChild {
    /// The child's pid in the daemon's pid namespace (for `@ build-started`
    /// and `@ build-log` lines only; never signal it by pid).
    pub pid: u32,
    /// Readable (in the `poll` sense) once the child has exited.
    pub pidfd: OwnedFd,
    /// The read end of the log pipe, non-blocking and close-on-exec.
    pub log: OwnedFd,
}

/// Reaps the child behind `pidfd` if it has exited: `Ok(None)` while it
/// still runs. After `Ok(Some(_))` the child is gone; asking again gives
/// `ECHILD`.
pub fn wait_exit(pidfd: &OwnedFd) -> io::Result<Option<ExitStatus>> {
    // SAFETY: `siginfo_t` is a plain C struct for which all-zero bytes are
    // a valid value; the kernel fills it in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // The descriptor is passed as the id, as P_PIDFD requires; it is a
    // non-negative int, so widening it to id_t is exact.
    let id = pidfd.as_raw_fd() as libc::id_t;
    loop {
        // SAFETY: `info` is a valid, writable siginfo_t; the pidfd stays
        // open for the duration of the call.
        let r =
            unsafe { libc::waitid(libc::P_PIDFD, id, &mut info, libc::WEXITED | libc::WNOHANG) };
        if r == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
    // SAFETY: after a successful waitid the pid and status fields of the
    // SIGCHLD variant are initialised (or zero when nothing changed, which
    // `WNOHANG` documents as `si_pid == 0`).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(exit_status_from_siginfo(info.si_code, status)))
}

/// Sends `signal` to the child behind `pidfd`. A child that has already
/// exited (even if not reaped yet) is not an error.
pub fn kill_child(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal takes the descriptor, the signal number, a
    // null siginfo (the kernel then fills one in as kill(2) does) and no
    // flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        return Ok(());
    }
    Err(err)
}

/// The status `waitid` reported, in the encoding of `wait(2)` that
/// [`ExitStatus`] wraps.
fn exit_status_from_siginfo(code: i32, status: i32) -> ExitStatus {
    let raw = match code {
        libc::CLD_EXITED => (status & 0xff) << 8,
        libc::CLD_KILLED => status & 0x7f,
        libc::CLD_DUMPED => (status & 0x7f) | 0x80,
        // WEXITED only reports the three codes above; anything else would
        // be a kernel change, shown as a plain exit with the status.
        _ => (status & 0xff) << 8,
    };
    ExitStatus::from_raw(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siginfo_codes_map_to_wait_statuses() {
        let exited = exit_status_from_siginfo(libc::CLD_EXITED, 3);
        assert_eq!(exited.code(), Some(3));
        let killed = exit_status_from_siginfo(libc::CLD_KILLED, libc::SIGKILL);
        assert_eq!(killed.signal(), Some(libc::SIGKILL));
        assert!(!killed.core_dumped());
        let dumped = exit_status_from_siginfo(libc::CLD_DUMPED, libc::SIGSEGV);
        assert_eq!(dumped.signal(), Some(libc::SIGSEGV));
        assert!(dumped.core_dumped());
    }

    #[test]
    // Reaped through its pidfd, which is what is tested.
    #[allow(clippy::zombie_processes)]
    fn a_child_is_waited_for_and_killed_through_its_pidfd() {
        use std::os::fd::FromRawFd;
        let child = std::process::Command::new("/var/cache/guixd/guix-root/bin/busybox")
            .args(["sleep", "1000"])
            .spawn()
            .unwrap();
        // SAFETY: pidfd_open takes a pid and flags; a non-negative result
        // is a new descriptor nobody else owns.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id(), 0) };
        assert!(fd >= 0);
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        assert!(wait_exit(&pidfd).unwrap().is_none());
        kill_child(&pidfd, libc::SIGKILL).unwrap();
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 60_000) }, 1);
        let status = wait_exit(&pidfd).unwrap().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // Gone: signalling is still fine, waiting again is ECHILD.
        kill_child(&pidfd, libc::SIGKILL).unwrap();
        assert_eq!(
            wait_exit(&pidfd).unwrap_err().raw_os_error(),
            Some(libc::ECHILD)
        );
    }
}

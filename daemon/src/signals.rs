//! The termination signals (SIGINT, SIGTERM, SIGHUP), taken synchronously:
//! blocked before any thread exists, then awaited with `sigwait`.
//!
//! Keeps true: once [`block_termination_signals`] has run on the main
//! thread, every thread started afterwards inherits the blocked mask, so
//! these signals are never delivered asynchronously to any thread and no
//! handler runs at an arbitrary point; [`wait`] is the only place they are
//! taken. Programs the daemon starts get an empty mask (the os layer's
//! agents set it with `posix_spawn`, `std::process::Command` resets it).

use std::io;

/// The signals that ask the daemon to stop, as for `guix-daemon`.
const TERMINATION_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Blocks the termination signals on the calling thread. Call it on the
/// main thread before starting any other.
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_set()?;
    // SAFETY: `set` is an initialised signal set; a null old-set pointer is
    // allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits until one of the termination signals arrives and returns its
/// number. They must be blocked (see [`block_termination_signals`]).
pub fn wait() -> io::Result<i32> {
    let set = termination_set()?;
    let mut signal: libc::c_int = 0;
    // SAFETY: `set` is initialised and `signal` is a valid place to write.
    let rc = unsafe { libc::sigwait(&set, &mut signal) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(signal)
}

fn termination_set() -> io::Result<libc::sigset_t> {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given; sigaddset is
    // then called only on that initialised set, with valid signal numbers.
    unsafe {
        if libc::sigemptyset(set.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        for signal in TERMINATION_SIGNALS {
            if libc::sigaddset(set.as_mut_ptr(), signal) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(set.assume_init())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_is_taken_by_wait() {
        // A thread of its own, so that the test harness's threads keep
        // their masks; SIGHUP sent to this thread only.
        let got = std::thread::spawn(|| {
            block_termination_signals().unwrap();
            // SAFETY: raise sends a signal to the calling thread; it is
            // blocked, so it stays pending until sigwait takes it.
            assert_eq!(unsafe { libc::raise(libc::SIGHUP) }, 0);
            wait().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(got, libc::SIGHUP);
    }
}

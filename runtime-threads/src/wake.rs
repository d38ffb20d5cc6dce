//! How other threads wake the event loop: the [`Wake`] trait, and its real
//! implementation, an eventfd the loop watches with epoll.
//!
//! Keeps true: a wake-up is never lost. An eventfd is a counter: `wake`
//! adds one, and `reset` takes the whole count at once. The loop resets
//! *before* it looks at what it was woken for (`Inbox::take_all` does both,
//! in that order; the shutdown flag is looked at after it), so anything
//! published before a `wake` is seen either by the look that follows this
//! reset or by the one after the next epoll wake-up, which that `wake`
//! guarantees.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Something that makes the event loop run one more iteration soon.
pub(crate) trait Wake: Send + Sync {
    /// Ensures the loop will run another iteration after this call.
    fn wake(&self);

    /// Takes every pending wake-up (called by the loop only).
    fn reset(&self);
}

/// A non-blocking, close-on-exec eventfd.
#[derive(Debug)]
pub(crate) struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub(crate) fn new() -> io::Result<EventFd> {
        let flags = rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK;
        let fd = rustix::event::eventfd(0, flags)?;
        Ok(EventFd { fd })
    }
}

impl Wake for EventFd {
    fn wake(&self) {
        loop {
            match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
                Err(rustix::io::Errno::INTR) => continue,
                // `AGAIN` would mean the counter is near 2^64, so a wake-up
                // is pending anyway.
                _ => return,
            }
        }
    }

    /// Takes the whole count, so epoll stops reporting the eventfd until
    /// the next `wake`.
    fn reset(&self) {
        let mut count = [0u8; 8];
        loop {
            match rustix::io::read(&self.fd, &mut count) {
                Err(rustix::io::Errno::INTR) => continue,
                // Either the count was taken, or it was already zero
                // (`AGAIN`); nothing else can fail on an eventfd we own.
                _ => return,
            }
        }
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(all(test, not(guixd_loom)))]
mod tests {
    use super::*;

    fn readable(fd: &EventFd) -> bool {
        let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&zero)).unwrap() == 1
    }

    #[test]
    fn wakes_accumulate_and_one_reset_takes_them_all() {
        let fd = EventFd::new().unwrap();
        assert!(!readable(&fd));
        fd.wake();
        fd.wake();
        assert!(readable(&fd));
        fd.reset();
        assert!(!readable(&fd));
        // A reset with nothing pending does not block.
        fd.reset();
        assert!(!readable(&fd));
    }
}

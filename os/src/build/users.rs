//! Build users (`--build-users-group`, spec 03 §3.1): picking a free member
//! of the group, holding its `<state>/userpool/<uid>` lock for the build,
//! and killing every process that runs under its uid.
//!
//! Keeps true:
//! - a build user is in use exactly while its [`BuildUser`] (and so the OFD
//!   lock on its userpool file) lives. OFD locks of two open descriptions
//!   conflict even within this one process, so two builds of this daemon
//!   can never get the same user, and the C++ daemon's `fcntl` locks
//!   conflict with ours;
//! - user and group look-ups use the reentrant C library calls, safe with
//!   the daemon's threads running;
//! - [`kill_user`] forks a process that only makes raw system calls before
//!   `_exit`, which is safe in a multi-threaded parent.

use crate::locks::{self, LockKind, Wait};
use guixd_core::effect::{EffectError, EffectErrorKind};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::path::Path;

/// Supplementary groups looked up per build user at most.
pub(crate) const SUPPLEMENTARY_GROUPS_MAX: usize = 1024;

/// A build user, locked for one build.
#[derive(Debug)]
pub(crate) struct BuildUser {
    pub uid: u32,
    /// The build users group's gid (the builder's gid), not the user's
    /// primary group.
    pub gid: u32,
    /// The user's groups (`getgrouplist`, the primary group included), set
    /// with `setgroups` in the builder.
    pub supplementary: Vec<u32>,
    /// Holds the userpool lock.
    _lock: File,
}

/// Locks the first free member of `group`, in the group's member order.
/// `daemon_uid` is refused as a build user.
pub(crate) fn acquire(
    state_dir: &Path,
    group: &str,
    daemon_uid: u32,
) -> Result<BuildUser, EffectError> {
    let Some((gid, members)) = group_by_name(group).map_err(|e| look_up_error(group, &e))? else {
        return Err(plain(format!(
            "the group `{group}' specified in `build-users-group' does not exist"
        )));
    };
    if members.is_empty() {
        return Err(plain(format!(
            "the build users group `{group}' has no members"
        )));
    }
    let pool = state_dir.join("userpool");
    for member in &members {
        let Some((uid, primary_gid)) =
            user_by_name(member).map_err(|e| look_up_error(member, &e))?
        else {
            return Err(plain(format!(
                "the user `{member}' in the group `{group}' does not exist"
            )));
        };
        std::fs::create_dir_all(&pool).map_err(|e| {
            locks::sys_error(format!("creating directory `{}'", pool.display()), &e)
        })?;
        let lock_path = pool.join(uid.to_string());
        let lock = locks::lock_file_at(&lock_path, LockKind::Exclusive, Wait::No).map_err(|e| {
            locks::sys_error(format!("opening user lock `{}'", lock_path.display()), &e)
        })?;
        let Some(lock) = lock else {
            continue;
        };
        // SAFETY: getuid has no preconditions and cannot fail.
        if uid == daemon_uid || uid == unsafe { libc::getuid() } {
            return Err(plain(format!(
                "the build user should not be a member of `{group}'"
            )));
        }
        let supplementary = group_list(member, primary_gid).map_err(|_| {
            plain(format!(
                "failed to get list of supplementary groups for `{member}'"
            ))
        })?;
        return Ok(BuildUser {
            uid,
            gid,
            supplementary,
            _lock: lock,
        });
    }
    Err(plain(format!(
        "all build users are currently in use; consider creating additional users and adding them to the `{group}' group"
    )))
}

/// Kills every process running under `uid` (the C++ daemon's `killUser`):
/// a forked process switches to `uid` and sends `SIGKILL` to every
/// process it may signal until none is left.
pub(crate) fn kill_user(uid: u32) -> Result<(), EffectError> {
    if uid == 0 {
        // kill(-1) as root would take the whole machine with it.
        return Err(plain("refusing to kill the processes of uid 0"));
    }
    // SAFETY: the child only makes raw system calls (setuid, kill, _exit),
    // which are async-signal-safe, so forking from a multi-threaded
    // process is sound; the parent only waits for that pid.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(locks::sys_error(
            "unable to fork",
            &io::Error::last_os_error(),
        ));
    }
    if pid == 0 {
        // SAFETY: see above; `_exit` never returns.
        unsafe {
            // The raw system call, not the C library's setuid, which would
            // try to coordinate with threads that do not exist here.
            if libc::syscall(libc::SYS_setuid, uid) == -1 {
                libc::_exit(2);
            }
            loop {
                if libc::kill(-1, libc::SIGKILL) == 0 {
                    break;
                }
                match *libc::__errno_location() {
                    libc::ESRCH => break,
                    libc::EINTR => continue,
                    _ => libc::_exit(3),
                }
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(locks::sys_error("waiting for the killer process", &err));
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        return Ok(());
    }
    let why = match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
        (true, 2) => "setting uid failed".to_owned(),
        (true, n) => format!("failed with exit code {n}"),
        (false, _) => format!("failed due to signal {}", libc::WTERMSIG(status)),
    };
    Err(plain(format!(
        "cannot kill processes for uid `{uid}': {why}"
    )))
}

/// The gid of `kvm` when it is one of this process's supplementary groups
/// (the builder gets it mapped to guest gid 40000 in user namespace mode).
pub(crate) fn kvm_gid() -> Option<u32> {
    let (gid, _) = group_by_name("kvm").ok()??;
    // SAFETY: with a zero size getgroups only returns the count.
    let count = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let mut groups = vec![0; usize::try_from(count).ok()?];
    // SAFETY: `groups` has room for `count` entries.
    let count = unsafe { libc::getgroups(count, groups.as_mut_ptr()) };
    groups.truncate(usize::try_from(count).ok()?);
    groups.contains(&gid).then_some(gid)
}

fn plain(message: impl Into<String>) -> EffectError {
    EffectError::new(EffectErrorKind::Helper, message)
}

fn look_up_error(name: &str, err: &io::Error) -> EffectError {
    locks::sys_error(format!("looking up `{name}'"), err)
}

/// The gid and member names of group `name`, `None` when there is no such
/// group.
fn group_by_name(name: &str) -> io::Result<Option<(u32, Vec<String>)>> {
    let Ok(cname) = CString::new(name) else {
        return Ok(None);
    };
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `group` is a plain C struct; all-zero is a valid value.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; the strings the
        // result points to live in `buf`, which outlives their use below.
        let r = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut group,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if r == libc::ERANGE && buf.len() < (16 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        if result.is_null() {
            return Ok(None);
        }
        let mut members = Vec::new();
        let mut p = group.gr_mem;
        // SAFETY: gr_mem is a null-terminated array of C strings in `buf`.
        unsafe {
            while !p.is_null() && !(*p).is_null() {
                members.push(CStr::from_ptr(*p).to_string_lossy().into_owned());
                p = p.add(1);
            }
        }
        return Ok(Some((group.gr_gid, members)));
    }
}

/// The uid and primary gid of user `name`, `None` when there is no such
/// user.
fn user_by_name(name: &str) -> io::Result<Option<(u32, u32)>> {
    let Ok(cname) = CString::new(name) else {
        return Ok(None);
    };
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `passwd` is a plain C struct; all-zero is a valid value.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call.
        let r = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if r == libc::ERANGE && buf.len() < (16 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        if result.is_null() {
            return Ok(None);
        }
        return Ok(Some((pw.pw_uid, pw.pw_gid)));
    }
}

/// `getgrouplist(name, primary)`, growing the buffer as needed (the C++
/// daemon gives up beyond 10 groups; more is not an error here).
fn group_list(name: &str, primary: u32) -> Result<Vec<u32>, ()> {
    let cname = CString::new(name).map_err(|_| ())?;
    let mut groups: Vec<libc::gid_t> = vec![0; 16];
    loop {
        let mut count = libc::c_int::try_from(groups.len()).map_err(|_| ())?;
        // SAFETY: `groups` has room for `count` entries; getgrouplist
        // updates `count` to the number it needs.
        let r =
            unsafe { libc::getgrouplist(cname.as_ptr(), primary, groups.as_mut_ptr(), &mut count) };
        let needed = usize::try_from(count).map_err(|_| ())?;
        if r >= 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        if needed <= groups.len() || needed > SUPPLEMENTARY_GROUPS_MAX {
            return Err(());
        }
        groups.resize(needed, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_group_is_reported_in_the_daemons_words() {
        let dir = std::env::temp_dir();
        let err = acquire(&dir, "guixd-no-such-group", 0).unwrap_err();
        assert_eq!(
            err.message,
            "the group `guixd-no-such-group' specified in `build-users-group' does not exist"
        );
    }

    #[test]
    fn groups_and_users_are_looked_up() {
        // `root` exists on every system these tests run on.
        assert_eq!(user_by_name("root").unwrap(), Some((0, 0)));
        assert_eq!(user_by_name("guixd-no-such-user").unwrap(), None);
        let (gid, _) = group_by_name("root").unwrap().unwrap();
        assert_eq!(gid, 0);
        assert!(group_list("root", 0).unwrap().contains(&0));
    }

    #[test]
    fn uid_zero_is_never_mass_killed() {
        assert!(kill_user(0).is_err());
    }

    #[test]
    fn killing_an_unused_uid_succeeds() {
        // No process runs under this uid: the killer finds nothing (ESRCH).
        kill_user(2_000_000_123).unwrap();
    }
}

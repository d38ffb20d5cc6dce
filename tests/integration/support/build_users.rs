//! The build users of the Guix root: the group `guixbuild` (gid 30000) with
//! the users `guixbuilder01..04` (uids 30001..30004), as a Guix system has
//! them, for daemons started with `--build-users-group=guixbuild`.
//!
//! Keeps true: only the ROOT's `/etc/group` and `/etc/passwd` are ever
//! changed (never this machine's), by appending the missing lines; a line
//! that is already there is left alone, so running this again, from this
//! process or another, changes nothing; processes serialise on a lock file
//! next to them.

use super::root::host;
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

/// The gid of the group.
pub const GID: u32 = 30000;

/// The users, with their uids, in the order of the group's member list.
pub const USERS: [(&str, u32); 4] = [
    ("guixbuilder01", 30001),
    ("guixbuilder02", 30002),
    ("guixbuilder03", 30003),
    ("guixbuilder04", 30004),
];

/// Makes sure the root has the group and its users.
pub fn ensure() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let lock_path = host("/etc/.guixd-it-build-users.lock");
        let lock = fs::File::create(&lock_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", lock_path.display()));
        // SAFETY: flock has no memory preconditions; the descriptor is open
        // for as long as `lock` lives, and closing it releases the lock.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert!(
            rc == 0,
            "flock {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        );
        let members: Vec<&str> = USERS.iter().map(|(name, _)| *name).collect();
        add_line(
            "/etc/group",
            super::daemon::BUILD_USERS_GROUP,
            &format!(
                "{}:x:{GID}:{}",
                super::daemon::BUILD_USERS_GROUP,
                members.join(",")
            ),
        );
        for (i, (name, uid)) in USERS.iter().enumerate() {
            add_line(
                "/etc/passwd",
                name,
                &format!(
                    "{name}:x:{uid}:{GID}:Guix build user {:02}:/var/empty:/usr/sbin/nologin",
                    i + 1
                ),
            );
        }
        drop(lock);
    });
}

/// Appends `line` to the root's `file` unless an entry named `name` is
/// already there.
fn add_line(file: &str, name: &str, line: &str) {
    let path = host(file);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let prefix = format!("{name}:");
    if text.lines().any(|l| l.starts_with(&prefix)) {
        return;
    }
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let sep = if text.is_empty() || text.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    writeln!(f, "{sep}{line}").unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

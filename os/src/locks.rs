//! Locks that exclude *other processes*: the per-path lock files of the
//! store (`<path>.lock`) and the reusable primitives the rest of the os
//! layer builds on (`gc.lock`, `temproots/<pid>`, `db/big-lock`,
//! `userpool/<uid>`).
//!
//! Between the daemon's own sessions, exclusion is decided by the core's
//! lock table without any system call; what is here only keeps the C++
//! daemon, Guile code (`guix gc`, `guix system init`...) and other guixd
//! processes out.
//!
//! Keeps true:
//! - every lock taken here is an open-file-description lock
//!   (`F_OFD_SETLK`/`F_OFD_SETLKW`) on the whole file. The kernel makes OFD
//!   locks and classic `fcntl` record locks conflict, so the C++ daemon and
//!   Guile, which use the latter, see ours and we see theirs. Unlike
//!   classic locks, an OFD lock belongs to one open file description: it is
//!   not dropped when some unrelated descriptor of the same file is closed,
//!   and two descriptions opened by one process exclude each other — which
//!   is what lets one daemon process stand for many sessions;
//! - [`Locks`] holds at most one descriptor per locked path; the lock lives
//!   exactly as long as that descriptor, and closing it releases the lock;
//! - nothing here waits unless the caller asked for it with [`Wait::Yes`];
//!   [`Locks::try_lock_path`] never blocks;
//! - a lock file is only ever deleted by its holder, with the deletion token
//!   protocol (unlink, then write `"d"` into it while still holding the
//!   lock), so a process that was waiting on the old file sees that it is
//!   stale and retries on a fresh one.

use crate::OsConfig;
use guixd_core::StorePath;
use guixd_core::effect::{EffectError, EffectErrorKind, EffectOutput, EffectResult};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// How many lock files a [`Locks`] holds open at most by default. The core's
/// lock table has its own, usually smaller, ceiling
/// (`Limits::lock_files_max`); this one only guards against a core bug.
pub const LOCK_FILES_MAX_DEFAULT: usize = 65_536;

/// How many times [`Locks::try_lock_path`] reopens a lock file that it found
/// stale before giving up. A stale file is normally replaced at once by its
/// deleter, so more than a handful of rounds means something else is wrong
/// (for instance a non-empty lock file that nobody unlinked), and the C++
/// daemon would spin forever there.
pub const STALE_RETRIES_MAX: u32 = 100;

/// The two kinds of record lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// A read lock: any number of holders, excludes exclusive holders.
    Shared,
    /// A write lock: one holder, excludes every other holder.
    Exclusive,
}

/// Whether taking a lock may block the calling thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Fail at once (with `Ok(false)` or `Ok(None)`) when another holder is
    /// in the way.
    No,
    /// Block until the lock is granted. Only ever do this on a worker
    /// thread.
    Yes,
}

/// The `<path>.lock` files this daemon holds, one open descriptor per path.
pub struct Locks {
    held: Mutex<HashMap<StorePath, File>>,
    files_max: usize,
}

// `Os` is shared by every worker thread.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Locks>();
};

impl Locks {
    /// An empty table with the default ceiling.
    pub fn new(_config: &OsConfig) -> Locks {
        Locks::with_files_max(LOCK_FILES_MAX_DEFAULT)
    }

    /// An empty table holding at most `files_max` lock files at once.
    pub fn with_files_max(files_max: usize) -> Locks {
        Locks {
            held: Mutex::new(HashMap::new()),
            files_max,
        }
    }

    /// Takes the exclusive lock on `<path>.lock` without waiting, creating
    /// the file (0600) if needed: `Locked(true)` when taken, `Locked(false)`
    /// when another process (or another open description) holds it.
    ///
    /// A lock obtained on a file that is not empty is on a *stale* file: its
    /// previous holder unlinked it and wrote the deletion token, and others
    /// may already hold a lock on a new file at the same path. Then the
    /// descriptor is closed and the path opened afresh.
    pub fn try_lock_path(&self, path: &StorePath) -> EffectResult {
        {
            let held = self.held();
            if held.contains_key(path) {
                // The core's lock table never asks twice; this is the
                // daemon's own words for the same bug.
                return Err(EffectError::new(
                    EffectErrorKind::Io(libc::EDEADLK),
                    "deadlock: trying to re-acquire self-held lock",
                ));
            }
            if held.len() >= self.files_max {
                return Err(EffectError::new(
                    EffectErrorKind::Io(libc::EMFILE),
                    format!(
                        "cannot lock `{path}': {} lock files are already held",
                        held.len()
                    ),
                ));
            }
        }

        // The system calls run without the table's mutex, so that a slow
        // open does not hold up other threads. Two threads racing for the
        // same path cannot both win: their open file descriptions are
        // distinct, and OFD locks exclude each other.
        let lock_path = format!("{}.lock", path.as_str());
        let opened = take_fresh_lock(&lock_path, &mut || match open_lock_file(
            Path::new(&lock_path),
            true,
        ) {
            Ok(Some(file)) => Ok(file),
            Ok(None) => Err(io::Error::from_raw_os_error(libc::ENOENT)),
            Err(e) => Err(e),
        })?;
        let Some(file) = opened else {
            return Ok(EffectOutput::Locked(false));
        };

        match self.held().entry(path.clone()) {
            Entry::Vacant(slot) => {
                slot.insert(file);
                Ok(EffectOutput::Locked(true))
            }
            // Unreachable while the kernel keeps OFD locks exclusive: the
            // holder's descriptor would have made ours fail above. Dropping
            // `file` releases our lock; the holder keeps its own.
            Entry::Occupied(_) => Err(EffectError::new(
                EffectErrorKind::Io(libc::EDEADLK),
                "deadlock: trying to re-acquire self-held lock",
            )),
        }
    }

    /// Releases the lock on `<path>.lock` by closing its descriptor. With
    /// `delete` (the path became valid), the file is first unlinked and the
    /// token `"d"` written into it, so that waiters know it is stale.
    /// Releasing a path that is not held does nothing.
    ///
    /// The lock is released even when writing the token fails; the error
    /// is reported afterwards.
    pub fn unlock_path(&self, path: &StorePath, delete: bool) -> EffectResult {
        let Some(file) = self.held().remove(path) else {
            return Ok(EffectOutput::Done);
        };
        let mut result = Ok(EffectOutput::Done);
        if delete {
            let lock_path = format!("{}.lock", path.as_str());
            if let Err(e) = delete_lock_file(Path::new(&lock_path), &file) {
                result = Err(sys_error("writing to file", &e));
            }
        }
        drop(file);
        result
    }

    /// Whether this table holds the lock on `path`.
    pub fn is_held(&self, path: &StorePath) -> bool {
        self.held().contains_key(path)
    }

    /// How many lock files are held.
    pub fn held_count(&self) -> usize {
        self.held().len()
    }

    fn held(&self) -> MutexGuard<'_, HashMap<StorePath, File>> {
        // A panic while the mutex was held cannot leave the map half
        // updated (every update is one insert or remove), so a poisoned
        // table is still a correct one.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Takes, converts (shared ↔ exclusive) or waits for an OFD lock of `kind`
/// on the whole file behind `fd`. `Ok(false)` only with [`Wait::No`], when
/// another open file description (of any process) holds a conflicting lock.
///
/// Converting a held lock is atomic for a downgrade; an upgrade that must
/// wait keeps the shared lock while waiting.
pub fn lock_fd(fd: impl AsFd, kind: LockKind, wait: Wait) -> io::Result<bool> {
    let l_type = match kind {
        LockKind::Shared => libc::F_RDLCK,
        LockKind::Exclusive => libc::F_WRLCK,
    };
    ofd_setlk(fd.as_fd(), l_type, wait)
}

/// Drops whatever OFD lock the open file description behind `fd` holds,
/// without closing it.
pub fn unlock_fd(fd: impl AsFd) -> io::Result<()> {
    ofd_setlk(fd.as_fd(), libc::F_UNLCK, Wait::No).map(|_| ())
}

/// Opens the lock file `path` read-write and close-on-exec, creating it
/// with mode 0600 when `create`. `Ok(None)` when `create` is off and the
/// file does not exist.
pub fn open_lock_file(path: &Path, create: bool) -> io::Result<Option<File>> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => Ok(Some(file)),
        Err(e) if !create && e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens (creating it 0600) the file `path` and takes an OFD lock on it.
/// The returned file holds the lock until it is dropped. `Ok(None)` when
/// `wait` is [`Wait::No`] and someone else holds a conflicting lock.
///
/// This does not check for staleness; files that are deleted with the token
/// protocol must be checked with [`is_stale`] by the caller.
pub fn lock_file_at(path: &Path, kind: LockKind, wait: Wait) -> io::Result<Option<File>> {
    let Some(file) = open_lock_file(path, true)? else {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    };
    Ok(lock_fd(&file, kind, wait)?.then_some(file))
}

/// Whether the lock file behind `file` was deleted by its previous holder:
/// the deletion token makes a deleted lock file non-empty, while a live
/// one is always empty.
pub fn is_stale(file: &File) -> io::Result<bool> {
    Ok(file.metadata()?.len() != 0)
}

/// The deletion half of the token protocol: unlinks `path` and writes `"d"`
/// into `file`, which must be the open, locked lock file. The result of the
/// unlink is ignored (removing the file is an optimisation; the token is
/// what waiters rely on); failing to write the token is an error.
pub fn delete_lock_file(path: &Path, file: &File) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut file = file;
    file.write_all(b"d")
}

/// An [`EffectError`] for a failed system call, worded as the C++ daemon's
/// `SysError`: `"<context>: <strerror>"`, with the errno as its kind.
pub fn sys_error(context: impl fmt::Display, err: &io::Error) -> EffectError {
    EffectError::new(
        EffectErrorKind::Io(err.raw_os_error().unwrap_or(libc::EIO)),
        format!("{context}: {}", strerror(err)),
    )
}

/// The C library's text for `err` (`"No such file or directory"`), without
/// the `" (os error N)"` that std's `Display` appends; for errors that do
/// not come from the OS, their own message.
pub fn strerror(err: &io::Error) -> String {
    let text = err.to_string();
    match err.raw_os_error() {
        Some(code) => match text.strip_suffix(&format!(" (os error {code})")) {
            Some(bare) => bare.to_owned(),
            None => text,
        },
        None => text,
    }
}

fn ofd_setlk(fd: BorrowedFd<'_>, l_type: libc::c_int, wait: Wait) -> io::Result<bool> {
    // SAFETY: `flock` is a plain C struct of integers (plus padding on some
    // targets), for which all-zero bytes are a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    // The kernel's constants are small; the casts only narrow the C int
    // to the struct's short fields. `l_start = l_len = 0` means the whole
    // file, even as it grows; `l_pid` must be 0 for OFD locks.
    lock.l_type = l_type as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = 0;
    lock.l_len = 0;
    lock.l_pid = 0;
    let cmd = match wait {
        Wait::No => libc::F_OFD_SETLK,
        Wait::Yes => libc::F_OFD_SETLKW,
    };
    loop {
        // SAFETY: `fd` is borrowed, so it stays open for the whole call, and
        // `lock` is an initialised `flock` that outlives it; F_OFD_SETLK(W)
        // only reads the struct.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &lock as *const libc::flock) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN | libc::EACCES) if wait == Wait::No => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// The open / lock / staleness-check loop of the PathLocks protocol, with
/// the opening step passed in (so tests can hand it a stale file first).
/// `Ok(None)` when someone else holds the lock.
fn take_fresh_lock(
    lock_path: &str,
    open: &mut dyn FnMut() -> io::Result<File>,
) -> Result<Option<File>, EffectError> {
    let mut rounds = 0;
    loop {
        let file =
            open().map_err(|e| sys_error(format_args!("opening lock file `{lock_path}'"), &e))?;
        if !lock_fd(&file, LockKind::Exclusive, Wait::No)
            .map_err(|e| sys_error("acquiring/releasing lock", &e))?
        {
            return Ok(None);
        }
        if !is_stale(&file)
            .map_err(|e| sys_error(format_args!("statting lock file `{lock_path}'"), &e))?
        {
            return Ok(Some(file));
        }
        rounds += 1;
        if rounds >= STALE_RETRIES_MAX {
            return Err(EffectError::new(
                EffectErrorKind::Io(libc::EAGAIN),
                format!("open lock file `{lock_path}' has become stale"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::{Scratch, scratch};
    use guixd_core::StoreDir;
    use std::process::{Command, Stdio};

    fn temp_dir(tag: &str) -> Scratch {
        scratch("locks", tag)
    }

    fn store_path(dir: &Path, name: &str) -> StorePath {
        let store = StoreDir::new(dir.to_str().unwrap()).unwrap();
        store
            .parse_path(&format!(
                "{}/0123456789abcdfghijklmnpqrsvwxyz-{name}",
                store.as_str()
            ))
            .unwrap()
    }

    fn locked(result: EffectResult) -> bool {
        match result.unwrap() {
            EffectOutput::Locked(b) => b,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn two_tables_exclude_each_other_and_release_works() {
        let dir = temp_dir("excl");
        let path = store_path(&dir, "a");
        let (a, b) = (Locks::with_files_max(8), Locks::with_files_max(8));
        assert!(locked(a.try_lock_path(&path)));
        assert!(a.is_held(&path));
        assert!(!locked(b.try_lock_path(&path)));
        assert!(!b.is_held(&path));
        let lock_file = dir.join(format!("{}.lock", path.base_name()));
        let meta = std::fs::metadata(&lock_file).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600
        );

        a.unlock_path(&path, false).unwrap();
        assert_eq!(a.held_count(), 0);
        assert!(lock_file.exists(), "unlock without delete keeps the file");
        assert!(locked(b.try_lock_path(&path)));
        assert!(!locked(a.try_lock_path(&path)));
        b.unlock_path(&path, false).unwrap();
        // Releasing what is not held is a no-op.
        b.unlock_path(&path, true).unwrap();
        assert!(lock_file.exists());
    }

    #[test]
    fn relocking_a_held_path_is_the_daemons_deadlock_error() {
        let dir = temp_dir("self");
        let path = store_path(&dir, "a");
        let a = Locks::with_files_max(8);
        assert!(locked(a.try_lock_path(&path)));
        let err = a.try_lock_path(&path).unwrap_err();
        assert_eq!(err.message, "deadlock: trying to re-acquire self-held lock");
        assert_eq!(a.held_count(), 1);
    }

    #[test]
    fn the_ceiling_is_enforced() {
        let dir = temp_dir("max");
        let a = Locks::with_files_max(2);
        assert!(locked(a.try_lock_path(&store_path(&dir, "a"))));
        assert!(locked(a.try_lock_path(&store_path(&dir, "b"))));
        let err = a.try_lock_path(&store_path(&dir, "c")).unwrap_err();
        assert_eq!(err.kind, EffectErrorKind::Io(libc::EMFILE));
        a.unlock_path(&store_path(&dir, "a"), false).unwrap();
        assert!(locked(a.try_lock_path(&store_path(&dir, "c"))));
    }

    #[test]
    fn deletion_writes_the_token_and_unlinks() {
        let dir = temp_dir("del");
        let path = store_path(&dir, "a");
        let lock_file = dir.join(format!("{}.lock", path.base_name()));
        let a = Locks::with_files_max(8);
        assert!(locked(a.try_lock_path(&path)));
        // Someone waiting on the same file keeps it open across deletion.
        let waiter = open_lock_file(&lock_file, false).unwrap().unwrap();
        assert!(!lock_fd(&waiter, LockKind::Exclusive, Wait::No).unwrap());
        a.unlock_path(&path, true).unwrap();
        assert!(!lock_file.exists());
        // The waiter now gets the lock, and sees that its file is stale.
        assert!(lock_fd(&waiter, LockKind::Exclusive, Wait::No).unwrap());
        assert!(is_stale(&waiter).unwrap());
        let mut contents = String::new();
        io::Read::read_to_string(&mut &waiter, &mut contents).unwrap();
        assert_eq!(contents, "d");
        // A fresh lock creates a fresh, empty file.
        assert!(locked(a.try_lock_path(&path)));
        assert_eq!(std::fs::metadata(&lock_file).unwrap().len(), 0);
    }

    #[test]
    fn after_a_deletion_the_path_is_locked_on_a_fresh_file() {
        let dir = temp_dir("fresh");
        let path = store_path(&dir, "a");
        let lock_file = dir.join(format!("{}.lock", path.base_name()));
        let holder = lock_file_at(&lock_file, LockKind::Exclusive, Wait::No)
            .unwrap()
            .unwrap();
        let a = Locks::with_files_max(8);
        assert!(!locked(a.try_lock_path(&path)));
        // The holder deletes with the token protocol but keeps its
        // descriptor (and lock) for a while: the path is free again.
        delete_lock_file(&lock_file, &holder).unwrap();
        assert!(locked(a.try_lock_path(&path)));
        assert_eq!(std::fs::metadata(&lock_file).unwrap().len(), 0);
        drop(holder);
    }

    #[test]
    fn a_lock_won_on_a_stale_file_is_retried_on_a_fresh_open() {
        // The race: we open the old file, its holder unlinks it, writes the
        // token and closes, and only then do we win the lock — on a file
        // that is no longer at the path. The opener hands out exactly that
        // file first.
        let dir = temp_dir("stale");
        let lock_file = dir.join("x.lock");
        let stale = lock_file_at(&lock_file, LockKind::Exclusive, Wait::No)
            .unwrap()
            .unwrap();
        let ours_then = open_lock_file(&lock_file, false).unwrap().unwrap();
        delete_lock_file(&lock_file, &stale).unwrap();
        drop(stale);
        let mut first = Some(ours_then);
        let mut opens = 0;
        let got = take_fresh_lock(lock_file.to_str().unwrap(), &mut || {
            opens += 1;
            match first.take() {
                Some(file) => Ok(file),
                None => Ok(open_lock_file(&lock_file, true)?.unwrap()),
            }
        })
        .unwrap()
        .unwrap();
        assert_eq!(opens, 2);
        assert!(!is_stale(&got).unwrap());
        assert!(lock_file.exists());
        // And it is a real lock on the file now at the path.
        assert!(
            lock_file_at(&lock_file, LockKind::Shared, Wait::No)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_non_empty_lock_file_that_nobody_unlinks_is_an_error_not_a_spin() {
        let dir = temp_dir("stuck");
        let path = store_path(&dir, "a");
        let lock_file = dir.join(format!("{}.lock", path.base_name()));
        std::fs::write(&lock_file, "d").unwrap();
        let a = Locks::with_files_max(8);
        let err = a.try_lock_path(&path).unwrap_err();
        assert!(err.message.contains("has become stale"), "{}", err.message);
        assert_eq!(a.held_count(), 0);
    }

    #[test]
    fn shared_and_exclusive_helpers() {
        let dir = temp_dir("kinds");
        let file = dir.join("big-lock");
        let r1 = lock_file_at(&file, LockKind::Shared, Wait::No)
            .unwrap()
            .unwrap();
        let r2 = lock_file_at(&file, LockKind::Shared, Wait::No)
            .unwrap()
            .unwrap();
        assert!(
            lock_file_at(&file, LockKind::Exclusive, Wait::No)
                .unwrap()
                .is_none()
        );
        drop(r1);
        assert!(
            lock_file_at(&file, LockKind::Exclusive, Wait::No)
                .unwrap()
                .is_none()
        );
        // Upgrade r2 (it is the only holder now), then downgrade.
        assert!(lock_fd(&r2, LockKind::Exclusive, Wait::No).unwrap());
        assert!(
            lock_file_at(&file, LockKind::Shared, Wait::No)
                .unwrap()
                .is_none()
        );
        assert!(lock_fd(&r2, LockKind::Shared, Wait::Yes).unwrap());
        assert!(
            lock_file_at(&file, LockKind::Shared, Wait::No)
                .unwrap()
                .is_some()
        );
        unlock_fd(&r2).unwrap();
        assert!(
            lock_file_at(&file, LockKind::Exclusive, Wait::No)
                .unwrap()
                .is_some()
        );
        assert!(
            open_lock_file(&dir.join("missing"), false)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_blocking_wait_is_woken_by_release() {
        let dir = temp_dir("wait");
        let file = dir.join("gc.lock");
        let holder = lock_file_at(&file, LockKind::Exclusive, Wait::Yes)
            .unwrap()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter_path = file.clone();
        let waiter = std::thread::spawn(move || {
            tx.send(()).unwrap();
            lock_file_at(&waiter_path, LockKind::Shared, Wait::Yes)
                .unwrap()
                .is_some()
        });
        rx.recv().unwrap();
        drop(holder);
        assert!(waiter.join().unwrap());
    }

    /// A child process holding a classic `fcntl` lock (Python's
    /// `fcntl.lockf`) conflicts with our OFD lock, in both directions.
    #[test]
    fn classic_fcntl_locks_of_another_process_conflict_with_ours() {
        if Command::new("python3")
            .arg("-c")
            .arg("")
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            eprintln!("python3 not available; skipping");
            return;
        }
        let dir = temp_dir("posix");
        let path = store_path(&dir, "a");
        let lock_file = dir.join(format!("{}.lock", path.base_name()));
        let script = r#"
import fcntl, os, sys
f = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
if sys.argv[2] == "hold":
    fcntl.lockf(f, fcntl.LOCK_EX)
    print("locked", flush=True)
    sys.stdin.read()
else:
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("got", flush=True)
    except OSError:
        print("busy", flush=True)
"#;
        // Their lock blocks ours.
        let mut child = Command::new("python3")
            .args(["-c", script, lock_file.to_str().unwrap(), "hold"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        io::BufRead::read_line(
            &mut io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "locked");
        let a = Locks::with_files_max(8);
        assert!(!locked(a.try_lock_path(&path)));
        drop(child.stdin.take());
        child.wait().unwrap();
        // Ours blocks theirs.
        assert!(locked(a.try_lock_path(&path)));
        let out = Command::new("python3")
            .args(["-c", script, lock_file.to_str().unwrap(), "try"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "busy");
        a.unlock_path(&path, false).unwrap();
        let out = Command::new("python3")
            .args(["-c", script, lock_file.to_str().unwrap(), "try"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "got");
    }

    #[test]
    fn strerror_drops_the_os_error_suffix() {
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(strerror(&e), "No such file or directory");
        let err = sys_error("opening lock file `x'", &e);
        assert_eq!(
            err.message,
            "opening lock file `x': No such file or directory"
        );
        assert_eq!(err.kind, EffectErrorKind::Io(libc::ENOENT));
        assert_eq!(strerror(&io::Error::other("plain")), "plain");
    }
}

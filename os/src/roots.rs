//! Garbage-collector roots kept on disk for *other processes*: the
//! daemon-wide temporary-roots file `<state>/temproots/<pid>`, indirect
//! roots under `<state>/gcroots/auto/`, the global `<state>/gc.lock`, and
//! the per-user profile directories.
//!
//! The core holds each session's temporary roots itself; what is written
//! here is only for the C++ daemon's or `guix gc`'s collector, which read
//! `temproots/` while holding `gc.lock` exclusively.
//!
//! Keeps true:
//! - the temporary-roots file follows the collector's protocol to the
//!   letter (spec 02 §10.3): it is created under a shared `gc.lock`, it is
//!   read-locked for as long as it exists, it is only appended to under a
//!   write lock, and it holds only whole `path\0` records — a failed append
//!   is cut back before the lock is downgraded;
//! - all of its locks are OFD locks (see `locks`), which conflict with the
//!   classic `fcntl` locks of the C++ collector, and which a collector in
//!   this same process also sees (unlike the C++ daemon, where a session's
//!   own collector treats the session's roots file as stale);
//! - one temporary-roots file per daemon process, behind one mutex; appends
//!   from many threads are serialised, never interleaved;
//! - an indirect root is replaced atomically (symlink to a unique temporary
//!   name, then rename), so a collector never sees it missing.

use crate::OsConfig;
use crate::locks::{self, LockKind, Wait, sys_error};
use guixd_core::StorePath;
use guixd_core::effect::{EffectError, EffectErrorKind, EffectOutput, EffectResult};
use guixd_core::hash::{Hash, HashAlgo};
use guixd_core::store_path::canonicalise_lexically;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// How many times the first [`Roots::add_temp_root`] recreates its file
/// because a collector deleted it between creation and locking. Each round
/// waits for the collector to release `gc.lock`, so one retry is the norm;
/// this bound only turns a pathological loop into an error.
pub const TEMP_ROOTS_RETRIES_MAX: u32 = 100;

/// This process's temporary-roots file and indirect roots.
pub struct Roots {
    state: PathBuf,
    temp_roots_path: PathBuf,
    temp_roots: Mutex<Option<TempRootsFile>>,
}

// `Os` is shared by every worker thread.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Roots>();
};

impl Roots {
    /// Nothing is created until the first root is added.
    pub fn new(config: &OsConfig) -> Roots {
        Roots::at(&config.dirs.state)
    }

    /// Roots kept under the state directory `state`.
    pub fn at(state: &Path) -> Roots {
        Roots {
            state: state.to_path_buf(),
            temp_roots_path: state.join("temproots").join(std::process::id().to_string()),
            temp_roots: Mutex::new(None),
        }
    }

    /// Appends `path` to this process's temporary-roots file, creating the
    /// file on first use. May block: while a collector holds `gc.lock`
    /// (first use only) or is reading our file (every use). Run it on a
    /// worker thread.
    pub fn add_temp_root(&self, path: &StorePath) -> EffectResult {
        let mut slot = self.temp_roots();
        let roots = match &mut *slot {
            Some(roots) => roots,
            empty @ None => empty.insert(self.open_temp_roots_file()?),
        };

        // Upgrading blocks while a collector holds its read lock on our
        // file, which is exactly when it must not change.
        locks::lock_fd(&roots.file, LockKind::Exclusive, Wait::Yes)
            .map_err(|e| sys_error("acquiring/releasing lock", &e))?;
        let mut record = Vec::with_capacity(path.as_str().len() + 1);
        record.extend_from_slice(path.as_str().as_bytes());
        record.push(0);
        // Written at an explicit offset, so that a failed, cut-back append
        // cannot leave a gap before the next record.
        let written = roots.file.write_all_at(&record, roots.len_bytes);
        if written.is_ok() {
            roots.len_bytes += record.len() as u64;
        } else {
            // A collector asserts that every record is a store path; never
            // leave half of one behind.
            let _ = roots.file.set_len(roots.len_bytes);
        }
        // Downgrade even after a failed write: holding the write lock would
        // stall every collector on the machine.
        let downgraded = locks::lock_fd(&roots.file, LockKind::Shared, Wait::Yes);
        written.map_err(|e| sys_error("writing to file", &e))?;
        downgraded.map_err(|e| sys_error("acquiring/releasing lock", &e))?;
        Ok(EffectOutput::Done)
    }

    /// Opens (creating it, as the C++ protocol asks: under `gc.lock`
    /// shared) this process's temporary-roots file unless it is open
    /// already, without adding a root to it.
    pub fn ensure_temp_roots_file(&self) -> Result<(), EffectError> {
        let mut slot = self.temp_roots();
        if slot.is_none() {
            *slot = Some(self.open_temp_roots_file()?);
        }
        Ok(())
    }

    /// Makes `link` an indirect root: `<state>/gcroots/auto/<h>` becomes a
    /// symlink to `link`, where `h` is [`indirect_root_name`] of it. An
    /// existing root of the same name is replaced atomically.
    pub fn add_indirect_root(&self, link: &str) -> EffectResult {
        let root = canonicalise_lexically(&format!(
            "{}/gcroots/auto/{}",
            self.state.display(),
            indirect_root_name(link)
        ));
        make_symlink(Path::new(&root), link)?;
        Ok(EffectOutput::Done)
    }

    /// Where this process's temporary roots are written
    /// (`<state>/temproots/<pid>`), whether or not the file exists yet.
    pub fn temp_roots_path(&self) -> &Path {
        &self.temp_roots_path
    }

    /// Removes the temporary-roots file (at shutdown; also done on drop).
    /// Further additions start a new file.
    pub fn remove_temp_roots_file(&self) {
        if let Some(roots) = self.temp_roots().take() {
            // Unlink while still holding the read lock: a collector that
            // opened the file meanwhile then finds it stale or gone.
            let _ = std::fs::remove_file(&self.temp_roots_path);
            drop(roots);
        }
    }

    /// The temporary-roots protocol's set-up: under a shared `gc.lock`,
    /// replace any leftover file of a dead process with our pid by a fresh
    /// one; then read-lock it, and start over if a collector deleted it in
    /// between (it writes the deletion token, so the file is not empty).
    fn open_temp_roots_file(&self) -> Result<TempRootsFile, EffectError> {
        let dir = self.state.join("temproots");
        create_dirs(&dir)?;
        let path = &self.temp_roots_path;
        for _ in 0..TEMP_ROOTS_RETRIES_MAX {
            let gc_lock = open_gc_lock(&self.state, LockKind::Shared, Wait::Yes)?;
            // It *must* be stale: no two live processes share a pid.
            let _ = std::fs::remove_file(path);
            let file = match locks::open_lock_file(path, true) {
                Ok(Some(file)) => file,
                Ok(None) => {
                    return Err(sys_error(
                        lock_file_context(path),
                        &io::Error::from_raw_os_error(libc::ENOENT),
                    ));
                }
                Err(e) => return Err(sys_error(lock_file_context(path), &e)),
            };
            drop(gc_lock);

            locks::lock_fd(&file, LockKind::Shared, Wait::Yes)
                .map_err(|e| sys_error("acquiring/releasing lock", &e))?;
            let len_bytes = file
                .metadata()
                .map_err(|e| sys_error(format_args!("statting `{}'", path.display()), &e))?
                .len();
            if len_bytes == 0 {
                return Ok(TempRootsFile { file, len_bytes });
            }
        }
        Err(EffectError::new(
            EffectErrorKind::Io(libc::EAGAIN),
            format!(
                "temporary roots file `{}' keeps being deleted",
                path.display()
            ),
        ))
    }

    fn temp_roots(&self) -> MutexGuard<'_, Option<TempRootsFile>> {
        // Every update under this mutex either completes or is cut back
        // before returning (see `add_temp_root`), so a poisoned slot is
        // still consistent.
        self.temp_roots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Roots {
    fn drop(&mut self) {
        self.remove_temp_roots_file();
    }
}

/// Opens `<state>/gc.lock` (0600, created if missing) and takes an OFD lock
/// of `kind` on it: shared to keep a collector from starting while roots
/// are being recorded, exclusive for the collector itself. `Ok(None)` only
/// with [`Wait::No`] when the lock is busy.
///
/// The C++ daemon prints `waiting for the big garbage collector lock...`
/// before a blocking wait; a caller that wants to say so should first try
/// with [`Wait::No`].
pub fn open_gc_lock(state: &Path, kind: LockKind, wait: Wait) -> Result<Option<File>, EffectError> {
    let path = state.join("gc.lock");
    let file = match locks::open_lock_file(&path, true) {
        Ok(Some(file)) => file,
        Ok(None) => {
            return Err(gc_lock_error(
                &path,
                &io::Error::from_raw_os_error(libc::ENOENT),
            ));
        }
        Err(e) => return Err(gc_lock_error(&path, &e)),
    };
    let taken =
        locks::lock_fd(&file, kind, wait).map_err(|e| sys_error("acquiring/releasing lock", &e))?;
    Ok(taken.then_some(file))
}

/// The file name of the indirect root for `link`: nix-base32 of the SHA-1
/// of the link's path, as given (32 characters).
pub fn indirect_root_name(link: &str) -> String {
    Hash::digest(HashAlgo::Sha1, link.as_bytes()).to_base32()
}

/// Creates `<state>/profiles/per-user/<user>` (0755) owned by `uid`, as
/// each session does for its client. Only a directory created now is
/// chmod'ed and chown'ed. When the chown fails (a rootless daemon without
/// `CAP_CHOWN`), the new directory is removed again and the failure is
/// only logged — `failed to change owner of directory 'D' to U: ...` on the
/// daemon's stderr — and the result is still success, as in the daemon.
pub fn create_user_profile_dir(config: &OsConfig, user: &str, uid: u32) -> EffectResult {
    // The daemon only ever passes names from the password database; refuse
    // anything that would leave `per-user/`.
    if user.is_empty() || user == "." || user == ".." || user.contains('/') || user.contains('\0') {
        return Err(EffectError::new(
            EffectErrorKind::Invalid,
            format!("invalid user name `{user}'"),
        ));
    }
    let dir = config
        .dirs
        .state
        .join("profiles")
        .join("per-user")
        .join(user);
    if !create_dirs(&dir)? {
        return Ok(EffectOutput::Done);
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(|e| {
        sys_error(
            format_args!("changing permissions of directory '{}'", dir.display()),
            &e,
        )
    })?;
    if let Err(e) = std::os::unix::fs::chown(&dir, Some(uid), None) {
        let _ = std::fs::remove_dir(&dir);
        let mut stderr = io::stderr().lock();
        let _ = writeln!(
            stderr,
            "failed to change owner of directory '{}' to {uid}: {}",
            dir.display(),
            locks::strerror(&e)
        );
    }
    Ok(EffectOutput::Done)
}

/// The open temporary-roots file and how many bytes of whole records it
/// holds.
struct TempRootsFile {
    file: File,
    len_bytes: u64,
}

/// Creates `dir` and its missing parents (0755 before the umask), as the
/// daemon's `createDirs`: `Ok(true)` when `dir` itself was created now.
/// A symlink to a directory counts as a directory.
fn create_dirs(dir: &Path) -> Result<bool, EffectError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(false),
        Ok(_) => {
            return Err(EffectError::new(
                EffectErrorKind::Io(libc::ENOTDIR),
                format!("`{}' is not a directory", dir.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(sys_error(
                format_args!("statting symlink `{}'", dir.display()),
                &e,
            ));
        }
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => Ok(true),
        // Another thread or process won the race; it is a directory if the
        // check below says so.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => Ok(false),
            _ => Err(EffectError::new(
                EffectErrorKind::Io(libc::ENOTDIR),
                format!("`{}' is not a directory", dir.display()),
            )),
        },
        Err(e) => Err(sys_error(
            format_args!("creating directory `{}'", dir.display()),
            &e,
        )),
    }
}

/// Points the symlink `link_path` at `target`, replacing whatever was there
/// atomically: the new link is made under a name unique to this process
/// and call, then renamed over the old one.
fn make_symlink(link_path: &Path, target: &str) -> Result<(), EffectError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    if let Some(parent) = link_path.parent() {
        create_dirs(parent)?;
    }
    let temp = PathBuf::from(format!(
        "{}.tmp-{}-{}",
        link_path.display(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let symlink = |temp: &Path| std::os::unix::fs::symlink(target, temp);
    if let Err(e) = symlink(&temp) {
        // A leftover of a crashed process that had our pid: the name is
        // ours now.
        if e.kind() != io::ErrorKind::AlreadyExists
            || std::fs::remove_file(&temp).is_err()
            || symlink(&temp).is_err()
        {
            return Err(sys_error(
                format_args!("creating symlink from `{}' to `{target}'", temp.display()),
                &e,
            ));
        }
    }
    if let Err(e) = std::fs::rename(&temp, link_path) {
        let _ = std::fs::remove_file(&temp);
        return Err(sys_error(
            format_args!(
                "cannot rename `{}' to `{}'",
                temp.display(),
                link_path.display()
            ),
            &e,
        ));
    }
    Ok(())
}

fn lock_file_context(path: &Path) -> String {
    format!("opening lock file `{}'", path.display())
}

fn gc_lock_error(path: &Path, err: &io::Error) -> EffectError {
    sys_error(
        format_args!("opening global GC lock `{}'", path.display()),
        err,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::{Scratch, scratch};
    use guixd_core::StoreDir;
    use guixd_core::config::Dirs;
    use std::os::unix::fs::MetadataExt;

    fn temp_dir(tag: &str) -> Scratch {
        scratch("roots", tag)
    }

    fn config(state: &Path) -> OsConfig {
        OsConfig {
            dirs: Dirs {
                store: StoreDir::new("/gnu/store").unwrap(),
                state: state.to_path_buf(),
                log: state.join("log"),
                db: state.join("db"),
                conf: state.join("etc"),
                guix_program: PathBuf::from("/nonexistent/guix"),
            },
            settings: Default::default(),
            uid: 0,
            gid: 0,
        }
    }

    fn path(name: &str) -> StorePath {
        StoreDir::new("/gnu/store")
            .unwrap()
            .parse_path(&format!(
                "/gnu/store/0123456789abcdfghijklmnpqrsvwxyz-{name}"
            ))
            .unwrap()
    }

    /// What the C++ collector does with a temporary-roots file: try a
    /// non-blocking write lock (success means its owner is dead), else read
    /// it under a read lock.
    fn collector_reads(file: &Path) -> Option<Vec<String>> {
        let f = locks::open_lock_file(file, false).unwrap()?;
        if locks::lock_fd(&f, LockKind::Exclusive, Wait::No).unwrap() {
            return None;
        }
        assert!(locks::lock_fd(&f, LockKind::Shared, Wait::No).unwrap());
        let mut contents = Vec::new();
        io::Read::read_to_end(&mut &f, &mut contents).unwrap();
        let mut records: Vec<String> = contents
            .split_inclusive(|&b| b == 0)
            .map(|r| {
                assert_eq!(r.last(), Some(&0), "a partial record");
                String::from_utf8(r[..r.len() - 1].to_vec()).unwrap()
            })
            .collect();
        records.sort();
        Some(records)
    }

    #[test]
    fn indirect_root_name_matches_the_daemon() {
        assert_eq!(
            indirect_root_name("/rel/link"),
            "5d0mvbb445yykpx4glc50vmv45q38bmc"
        );
    }

    #[test]
    fn temp_roots_are_appended_and_protected_by_a_read_lock() {
        let state = temp_dir("temp");
        let roots = Roots::at(&state);
        let file = roots.temp_roots_path().to_path_buf();
        assert_eq!(
            file,
            state.join("temproots").join(std::process::id().to_string())
        );
        assert!(!file.exists());

        roots.add_temp_root(&path("a")).unwrap();
        roots.add_temp_root(&path("b")).unwrap();
        assert_eq!(
            std::fs::read(&file).unwrap(),
            format!("{}\0{}\0", path("a"), path("b")).into_bytes()
        );
        assert!(state.join("gc.lock").exists());
        assert_eq!(
            std::fs::metadata(state.join("gc.lock")).unwrap().mode() & 0o777,
            0o600
        );
        // A collector sees a live owner (its write lock fails) and reads
        // whole records; while it holds its read lock, the gc.lock is free.
        assert_eq!(
            collector_reads(&file),
            Some(vec![path("a").to_string(), path("b").to_string()])
        );
        assert!(
            open_gc_lock(&state, LockKind::Exclusive, Wait::No)
                .unwrap()
                .is_some()
        );

        roots.remove_temp_roots_file();
        assert!(!file.exists());
        roots.add_temp_root(&path("c")).unwrap();
        assert_eq!(
            std::fs::read(&file).unwrap(),
            format!("{}\0", path("c")).into_bytes()
        );
        drop(roots);
        assert!(!file.exists(), "dropping removes the file");
    }

    /// The C++ collector's view, with classic `fcntl` locks from another
    /// process: our file is live (its write lock fails) and readable under
    /// its read lock.
    #[test]
    fn a_classic_fcntl_collector_sees_our_file_as_live() {
        let python = std::process::Command::new("python3")
            .args(["-c", ""])
            .status();
        if !python.is_ok_and(|s| s.success()) {
            return;
        }
        let state = temp_dir("fcntl");
        let roots = Roots::at(&state);
        roots.add_temp_root(&path("a")).unwrap();
        let script = r#"
import fcntl, os, sys
f = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("stale")
except OSError:
    fcntl.lockf(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    print("live " + os.read(f, 4096).decode().replace("\0", ";"))
"#;
        let out = std::process::Command::new("python3")
            .args(["-c", script, roots.temp_roots_path().to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("live {};", path("a"))
        );
    }

    #[test]
    fn a_leftover_file_with_our_pid_is_replaced() {
        let state = temp_dir("leftover");
        std::fs::create_dir_all(state.join("temproots")).unwrap();
        let roots = Roots::at(&state);
        std::fs::write(roots.temp_roots_path(), b"/gnu/store/old\0d").unwrap();
        roots.add_temp_root(&path("a")).unwrap();
        assert_eq!(
            std::fs::read(roots.temp_roots_path()).unwrap(),
            format!("{}\0", path("a")).into_bytes()
        );
    }

    #[test]
    fn creating_the_file_waits_for_a_running_collector() {
        let state = temp_dir("gcwait");
        let gc = open_gc_lock(&state, LockKind::Exclusive, Wait::No)
            .unwrap()
            .unwrap();
        let roots = std::sync::Arc::new(Roots::at(&state));
        let (tx, rx) = std::sync::mpsc::channel();
        let adder = {
            let roots = roots.clone();
            std::thread::spawn(move || {
                let result = roots.add_temp_root(&path("a"));
                tx.send(()).unwrap();
                result
            })
        };
        // The adder cannot finish while the collector holds gc.lock.
        assert!(rx.try_recv().is_err());
        assert!(!roots.temp_roots_path().exists());
        drop(gc);
        adder.join().unwrap().unwrap();
        rx.recv().unwrap();
        assert_eq!(
            collector_reads(roots.temp_roots_path()),
            Some(vec![path("a").to_string()])
        );
    }

    #[test]
    fn appending_waits_while_a_collector_reads() {
        let state = temp_dir("readwait");
        let roots = std::sync::Arc::new(Roots::at(&state));
        roots.add_temp_root(&path("a")).unwrap();
        // The collector's read lock blocks the upgrade to a write lock.
        let reader = locks::open_lock_file(roots.temp_roots_path(), false)
            .unwrap()
            .unwrap();
        assert!(locks::lock_fd(&reader, LockKind::Shared, Wait::No).unwrap());
        let adder = {
            let roots = roots.clone();
            std::thread::spawn(move || roots.add_temp_root(&path("b")))
        };
        // Whatever the adder managed so far, nothing was appended.
        assert_eq!(
            std::fs::read(roots.temp_roots_path()).unwrap(),
            format!("{}\0", path("a")).into_bytes()
        );
        drop(reader);
        adder.join().unwrap().unwrap();
        assert_eq!(
            std::fs::read(roots.temp_roots_path()).unwrap(),
            format!("{}\0{}\0", path("a"), path("b")).into_bytes()
        );
    }

    #[test]
    fn a_dead_owners_file_is_seen_as_stale_by_a_collector() {
        // After the owner closes its descriptor without unlinking (a crash),
        // the collector's non-blocking write lock succeeds.
        let state = temp_dir("dead");
        let roots = Roots::at(&state);
        roots.add_temp_root(&path("a")).unwrap();
        let file = roots.temp_roots_path().to_path_buf();
        // Simulate the crash: forget the descriptor but keep the file.
        let taken = roots.temp_roots().take();
        drop(taken);
        assert!(file.exists());
        assert_eq!(collector_reads(&file), None);
    }

    #[test]
    fn concurrent_appends_never_interleave() {
        let state = temp_dir("many");
        let roots = std::sync::Arc::new(Roots::at(&state));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let roots = roots.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        roots.add_temp_root(&path(&format!("t{t}-{i}"))).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let records = collector_reads(roots.temp_roots_path()).unwrap();
        assert_eq!(records.len(), 100);
        let mut expected: Vec<String> = (0..4)
            .flat_map(|t| (0..25).map(move |i| path(&format!("t{t}-{i}")).to_string()))
            .collect();
        expected.sort();
        assert_eq!(records, expected);
    }

    #[test]
    fn indirect_roots_are_created_and_replaced() {
        let state = temp_dir("indirect");
        let roots = Roots::at(&state);
        roots.add_indirect_root("/rel/link").unwrap();
        let root = state.join("gcroots/auto/5d0mvbb445yykpx4glc50vmv45q38bmc");
        assert_eq!(
            std::fs::read_link(&root).unwrap(),
            PathBuf::from("/rel/link")
        );
        // Replacing keeps the name and leaves no temporary behind.
        roots.add_indirect_root("/rel/link").unwrap();
        assert_eq!(
            std::fs::read_link(&root).unwrap(),
            PathBuf::from("/rel/link")
        );
        let names: Vec<_> = std::fs::read_dir(state.join("gcroots/auto"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn user_profile_directories() {
        let state = temp_dir("profiles");
        let config = config(&state);
        create_user_profile_dir(&config, "alice", 12345).unwrap();
        let dir = state.join("profiles/per-user/alice");
        let meta = std::fs::metadata(&dir).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o7777, 0o755);
        if rustix::process::geteuid().is_root() {
            assert_eq!(meta.uid(), 12345);
        }
        // An existing directory is left as it is.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        create_user_profile_dir(&config, "alice", 1).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);

        for bad in ["", ".", "..", "a/b"] {
            assert_eq!(
                create_user_profile_dir(&config, bad, 1).unwrap_err().kind,
                EffectErrorKind::Invalid
            );
        }
        std::fs::write(state.join("profiles/per-user/file"), "").unwrap();
        let err = create_user_profile_dir(&config, "file", 1).unwrap_err();
        assert!(
            err.message.ends_with("' is not a directory"),
            "{}",
            err.message
        );
    }
}

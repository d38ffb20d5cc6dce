//! What the daemon does to a store before serving anyone (spec 02 §7
//! "Startup/schema logic", §8 layout): the directories, the store's
//! ownership, the symlink check, the reserved space, the big lock and the
//! database schema.
//!
//! Keeps true:
//! - an existing store is taken as it is: directories that exist are left
//!   alone, a database created by the C++ daemon or by Guix's Guile tools
//!   is opened unchanged, and a new one gets exactly Guix's schema, so
//!   either side can use a store the other created;
//! - the schema file is only ever written whole (write, then rename), so a
//!   crash cannot leave an empty or half-written version behind;
//! - the big lock (`<db>/big-lock`) is held shared, as an open-file-
//!   description lock that conflicts with the C++ daemon's `fcntl` locks,
//!   from the first `prepare_store` of a database directory until the
//!   process exits;
//! - every failure carries the C++ daemon's words where it has some.

use crate::OsConfig;
use crate::db::{self, ConnectionOptions, DbLimits, SCHEMA_SQL, SCHEMA_VERSION};
use crate::locks::{self, LockKind, Wait};
use std::ffi::CString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Why the store could not be prepared or its database opened.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A system call failed; worded as the daemon's `SysError`.
    #[error("{context}: {}", locks::strerror(.source))]
    Io { context: String, source: io::Error },
    #[error("`{}' is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("the path `{}' is a symlink; this is not allowed for the store and its parent directories", .0.display())]
    SymlinkInStorePath(PathBuf),
    #[error(
        "'{0}' is read-only; make sure to mount it read-write for proper guix-daemon operation"
    )]
    ReadOnlyStore(String),
    #[error("the group `{0}' specified in `build-users-group' does not exist")]
    NoBuildUsersGroup(String),
    #[error("`{}' is corrupt", .0.display())]
    CorruptSchemaFile(PathBuf),
    #[error("current store schema is version {0}, but I only support {SCHEMA_VERSION}")]
    SchemaTooNew(i64),
    #[error("Your store database uses an implausibly old schema, version {0}.")]
    SchemaTooOld(i64),
    #[error("store database directory `{}' is not writable: {}", .dir.display(), locks::strerror(.source))]
    DbDirNotWritable { dir: PathBuf, source: io::Error },
    /// SQLite could not open the file (the daemon gives no reason; the
    /// source has SQLite's).
    #[error("cannot open store database `{}'", .file.display())]
    CannotOpenDb {
        file: PathBuf,
        source: rusqlite::Error,
    },
    /// A pragma or the schema failed, with the daemon's context.
    #[error("{context}: {source}")]
    Sqlite {
        context: &'static str,
        source: rusqlite::Error,
    },
}

/// The environment variable that turns the symlink check off when it is
/// `1`, as for the C++ daemon. The os layer reads it itself, because the
/// check is part of preparing the store and `OsConfig` has no field for it.
pub const IGNORE_SYMLINK_STORE_VAR: &str = "NIX_IGNORE_SYMLINK_STORE";

/// The name of the space-reserving file in the database directory, which
/// the garbage collector deletes first when the disk is full.
pub const RESERVED_FILE: &str = "reserved";

/// Prepares the store as the C++ daemon does when a session opens it:
/// creates missing directories (`<store>`, `<store>/.links`,
/// `<state>/profiles/per-user`, `<state>/temproots`, `<state>/gcroots` with
/// its `profiles` link, `<state>/userpool`, the database directory), fixes
/// the store's ownership and mode when running as root with a build group,
/// refuses a store reached through a symlink, reserves disk space, takes the
/// big lock, and checks the schema version, creating the database of a new
/// store.
///
/// When the store sits on a read-only mount and we are root, this moves the
/// *calling thread* into a private mount namespace and remounts the store
/// read-write there; mount namespaces are per thread until the process is
/// single-threaded again, so call this before any other thread exists.
pub fn prepare_store(config: &OsConfig) -> Result<(), SetupError> {
    let dirs = &config.dirs;
    let store = Path::new(dirs.store.as_str());
    let state = dirs.state.as_path();

    create_dirs(store)?;
    ensure_store_writable(store, config.uid)?;
    create_dirs(&store.join(".links"))?;
    let profiles = state.join("profiles");
    create_dirs(&profiles)?;
    create_dirs(&state.join("temproots"))?;
    create_dirs(&dirs.db)?;
    let gcroots = state.join("gcroots");
    if !path_exists(&gcroots)? {
        create_dirs(&gcroots)?;
        let link = gcroots.join("profiles");
        std::os::unix::fs::symlink(&profiles, &link).map_err(|e| {
            io_error(
                format!(
                    "creating symlink from `{}' to `{}'",
                    link.display(),
                    profiles.display()
                ),
                e,
            )
        })?;
    }
    let per_user = profiles.join("per-user");
    create_dirs(&per_user)?;
    // The C++ daemon creates this one when it first takes a build user;
    // having it from the start changes nothing for anyone.
    create_dirs(&state.join("userpool"))?;

    let build_group = &config.settings.build_users_group;
    if config.uid == 0 && !build_group.is_empty() {
        set_multi_user_permissions(store, &per_user, build_group)?;
    }

    if std::env::var_os(IGNORE_SYMLINK_STORE_VAR).as_deref() != Some("1".as_ref()) {
        check_store_not_symlink(store)?;
    }

    remove_leftovers(store);

    reserve_space(
        &dirs.db.join(RESERVED_FILE),
        config.settings.reserved_size_bytes,
    );
    take_big_lock(&dirs.db)?;

    let schema_file = dirs.db.join("schema");
    match schema_version(&schema_file)? {
        0 => create_database(config, &schema_file),
        v if v > SCHEMA_VERSION => Err(SetupError::SchemaTooNew(v)),
        v if v < SCHEMA_VERSION => Err(SetupError::SchemaTooOld(v)),
        _ => Ok(()),
    }
}

/// Prefixes of the store entries guixd writes before moving them into
/// place; each is followed by `<pid>-<n>`.
const TRANSIENT_PREFIXES: [&str; 3] = [".guixd-upload-", ".guixd-text-", ".tmp-link-"];

/// The stores [`remove_leftovers`] has cleaned in this process: from then
/// on, entries under this process's id there are this process's own.
static CLEANED_STORES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Deletes transient entries of the store left behind by a daemon process
/// that no longer runs (killed in the middle of an upload, say). They were
/// never valid, so nothing is lost; entries of a live process are kept.
/// Entries under this process's own id are a former daemon's too (one
/// restarted with the same id, as PID 1 of a container is) unless this
/// process has cleaned this store before, when they may be its own.
/// Failures are reported and skipped: a leftover costs only disk space.
pub fn remove_leftovers(store: &Path) {
    let seen_before = {
        let mut cleaned = CLEANED_STORES
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seen = cleaned.iter().any(|s| s == store);
        if !seen {
            cleaned.push(store.to_path_buf());
        }
        seen
    };
    let Ok(entries) = fs::read_dir(store) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let Some(pid) = TRANSIENT_PREFIXES.iter().find_map(|p| {
            name.strip_prefix(p)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
        }) else {
            continue;
        };
        let ours = pid == std::process::id();
        if (ours && seen_before) || (!ours && Path::new(&format!("/proc/{pid}")).exists()) {
            continue;
        }
        if let Err(e) = crate::files::delete_path(&entry.path()) {
            eprintln!(
                "warning: cannot remove leftover `{}': {}",
                entry.path().display(),
                e.message
            );
        }
    }
}

/// The version in the schema file, 0 when there is none (a new store).
/// The number is read as the daemon reads an `int`: leading white space
/// and a sign are allowed, anything after the digits (even a newline) is
/// not.
pub fn schema_version(schema_file: &Path) -> Result<i64, SetupError> {
    let text = match fs::read(schema_file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            return Err(io_error(
                format!("opening file `{}'", schema_file.display()),
                e,
            ));
        }
    };
    parse_schema_version(&text)
        .ok_or_else(|| SetupError::CorruptSchemaFile(schema_file.to_path_buf()))
}

/// Creates every directory of `path` that is missing (mode 0755 before the
/// umask), and fails unless `path` ends up a directory or a symlink to one.
pub fn create_dirs(path: &Path) -> Result<(), SetupError> {
    if path == Path::new("/") || path.as_os_str().is_empty() {
        return Ok(());
    }
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(_) => {
            if let Some(parent) = path.parent() {
                create_dirs(parent)?;
            }
            match DirBuilder::new().mode(0o755).create(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(io_error(
                        format!("creating directory `{}'", path.display()),
                        e,
                    ));
                }
            }
            fs::symlink_metadata(path)
                .map_err(|e| io_error(format!("getting status of `{}'", path.display()), e))?
        }
    };
    let is_dir = if meta.file_type().is_symlink() {
        fs::metadata(path)
            .map_err(|e| io_error(format!("statting symlink `{}'", path.display()), e))?
            .is_dir()
    } else {
        meta.is_dir()
    };
    if is_dir {
        Ok(())
    } else {
        Err(SetupError::NotADirectory(path.to_path_buf()))
    }
}

/// Refuses a store directory that is, or lies below, a symlink: other
/// processes would see store paths that are not the real ones.
pub fn check_store_not_symlink(store: &Path) -> Result<(), SetupError> {
    let mut path = store;
    while path != Path::new("/") && !path.as_os_str().is_empty() {
        let meta = fs::symlink_metadata(path)
            .map_err(|e| io_error(format!("getting status of `{}'", path.display()), e))?;
        if meta.file_type().is_symlink() {
            return Err(SetupError::SymlinkInStorePath(path.to_path_buf()));
        }
        match path.parent() {
            Some(parent) => path = parent,
            None => break,
        }
    }
    Ok(())
}

// ---- helpers

fn io_error(context: String, source: io::Error) -> SetupError {
    SetupError::Io { context, source }
}

/// Like the daemon's `pathExists`: only "does not exist" means false.
fn path_exists(path: &Path) -> Result<bool, SetupError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(
            format!("getting status of `{}'", path.display()),
            e,
        )),
    }
}

/// A store on a read-only mount is remounted read-write in a private mount
/// namespace when we are root (a read-only bind mount is a common way to
/// keep users from writing to it); otherwise it is an error.
fn ensure_store_writable(store: &Path, uid: u32) -> Result<(), SetupError> {
    let info = rustix::fs::statvfs(store).map_err(|e| {
        io_error(
            "getting info about the store mount point".to_owned(),
            e.into(),
        )
    })?;
    if !info.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
        return Ok(());
    }
    if uid != 0 {
        return Err(SetupError::ReadOnlyStore(store.display().to_string()));
    }
    // SAFETY: unshare takes no pointers; it only changes this thread's
    // namespaces (see `prepare_store` on threads).
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } == -1 {
        return Err(io_error(
            "setting up a private mount namespace".to_owned(),
            io::Error::last_os_error(),
        ));
    }
    let target = c_path(store)?;
    let fstype = c"none";
    // SAFETY: every pointer is either null (allowed for the source and the
    // data of a remount) or a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_REMOUNT | libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc == -1 {
        return Err(io_error(
            format!("remounting {} writable", store.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Root with a build group: `per-user` is 0755 and the store is
/// `root:<group>` with mode 01775, so build users can create outputs but
/// not delete each other's.
fn set_multi_user_permissions(
    store: &Path,
    per_user: &Path,
    group: &str,
) -> Result<(), SetupError> {
    fs::set_permissions(per_user, fs::Permissions::from_mode(0o755)).map_err(|e| {
        io_error(
            format!(
                "could not set permissions on '{}' to 755",
                per_user.display()
            ),
            e,
        )
    })?;
    let gid = group_id(group)?.ok_or_else(|| SetupError::NoBuildUsersGroup(group.to_owned()))?;
    let meta = fs::metadata(store).map_err(|e| {
        io_error(
            format!("getting attributes of path '{}'", store.display()),
            e,
        )
    })?;
    const STORE_MODE: u32 = 0o1775;
    if meta.uid() != 0 || meta.gid() != gid || meta.mode() & 0o7777 != STORE_MODE {
        std::os::unix::fs::chown(store, Some(0), Some(gid)).map_err(|e| {
            io_error(
                format!("changing ownership of path '{}'", store.display()),
                e,
            )
        })?;
        fs::set_permissions(store, fs::Permissions::from_mode(STORE_MODE)).map_err(|e| {
            io_error(
                format!("changing permissions on path '{}'", store.display()),
                e,
            )
        })?;
    }
    Ok(())
}

/// The gid of group `name`, through the reentrant C library lookup (the
/// plain one is not safe with other threads running).
fn group_id(name: &str) -> Result<Option<u32>, SetupError> {
    let Ok(c_name) = CString::new(name) else {
        return Ok(None);
    };
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    const BUF_MAX_BYTES: usize = 1 << 20;
    loop {
        // SAFETY: `group` is a plain C struct for which zeroed bytes are a
        // valid value; getgrnam_r fills it with pointers into `buf`.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the call: a NUL-terminated
        // name, a struct and an out-pointer on our stack, and `buf` with
        // its true length.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut group,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < BUF_MAX_BYTES {
            let len = buf.len() * 2;
            buf.resize(len, 0);
            continue;
        }
        if rc != 0 {
            return Err(io_error(
                format!("looking up group `{name}'"),
                io::Error::from_raw_os_error(rc),
            ));
        }
        return Ok((!result.is_null()).then_some(group.gr_gid));
    }
}

fn c_path(path: &Path) -> Result<CString, SetupError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io_error(
            format!("path `{}' holds a NUL byte", path.display()),
            io::Error::from_raw_os_error(libc::EINVAL),
        )
    })
}

/// Keeps `size_bytes` of disk for the garbage collector, which deletes the
/// file first when the disk is full (SQLite cannot even open a database on
/// a full disk). Failures are ignored, as in the daemon: this is a
/// precaution, not a requirement.
fn reserve_space(file: &Path, size_bytes: u64) {
    if fs::metadata(file).is_ok_and(|meta| meta.len() == size_bytes) {
        return;
    }
    let Ok(handle) = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(file)
    else {
        return;
    };
    let Ok(len) = i64::try_from(size_bytes) else {
        return;
    };
    // SAFETY: plain integer arguments and an open descriptor we own.
    let allocated = len == 0
        || unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&handle), 0, len) } == 0;
    if !allocated {
        let _ = fill_with_bytes(&handle, size_bytes);
    }
    let _ = handle.set_len(size_bytes);
}

/// Writes `size_bytes` filler bytes, for file systems without
/// `fallocate`.
fn fill_with_bytes(mut file: &File, size_bytes: u64) -> io::Result<()> {
    let chunk = [b'X'; 64 * 1024];
    let mut left = size_bytes;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// The big locks this process holds, one open file per database
/// directory, kept until the process exits. A schema upgrade would take
/// the lock exclusively; holding it shared keeps one from starting under
/// us.
static BIG_LOCKS: Mutex<Vec<(PathBuf, File)>> = Mutex::new(Vec::new());

fn take_big_lock(db_dir: &Path) -> Result<(), SetupError> {
    let mut held = BIG_LOCKS.lock().unwrap_or_else(PoisonError::into_inner);
    if held.iter().any(|(dir, _)| dir == db_dir) {
        return Ok(());
    }
    let path = db_dir.join("big-lock");
    // The C++ daemon falls back to a read-only mode when it may not open
    // this file; guixd has no read-only mode, so that is an error here.
    let file = locks::open_lock_file(&path, true)
        .map_err(|e| io_error(format!("opening lock file `{}'", path.display()), e))?
        .ok_or_else(|| {
            io_error(
                format!("opening lock file `{}'", path.display()),
                io::Error::from_raw_os_error(libc::ENOENT),
            )
        })?;
    let lock_error = |e| io_error("acquiring/releasing lock".to_owned(), e);
    if !locks::lock_fd(&file, LockKind::Shared, Wait::No).map_err(lock_error)? {
        eprintln!("waiting for the big store lock...");
        locks::lock_fd(&file, LockKind::Shared, Wait::Yes).map_err(lock_error)?;
    }
    held.push((db_dir.to_path_buf(), file));
    Ok(())
}

/// A new store: creates the database with Guix's schema, then records the
/// version. If a database file is already there (Guix's Guile tools create
/// one without a schema file), the schema's `if not exists` leaves it
/// intact.
fn create_database(config: &OsConfig, schema_file: &Path) -> Result<(), SetupError> {
    db::check_db_dir_writable(&config.dirs.db)?;
    let file = db::db_file(&config.dirs.db);
    let conn = db::open_writer(
        &file,
        true,
        ConnectionOptions::from_config(config),
        &DbLimits::default(),
    )?;
    conn.execute_batch(SCHEMA_SQL)
        .map_err(|source| SetupError::Sqlite {
            context: "initialising database schema",
            source,
        })?;
    drop(conn);
    write_whole_file(schema_file, SCHEMA_VERSION.to_string().as_bytes())
}

/// Writes `contents` to a temporary file next to `path` and renames it into
/// place, so readers see the old file or the whole new one.
fn write_whole_file(path: &Path, contents: &[u8]) -> Result<(), SetupError> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error(format!("writing file `{}'", path.display()), e)
    })
}

/// Parses the schema file's contents as C++ `istream >> int` followed by
/// an end-of-file check would.
fn parse_schema_version(text: &[u8]) -> Option<i64> {
    let start = text.iter().position(|c| !c.is_ascii_whitespace())?;
    let rest = &text[start..];
    let (negative, digits) = match rest.first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let magnitude: i64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let value = if negative { -magnitude } else { magnitude };
    i32::try_from(value).ok().map(i64::from)
}

#[cfg(test)]
mod leftover_tests {
    use super::*;

    #[test]
    fn leftovers_of_dead_processes_go_and_live_ones_stay() {
        let dir = std::env::temp_dir().join(format!("guixd-os-leftovers-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // Pid 4194304 is above the kernel's maximum, so it never runs.
        let dead = dir.join(".guixd-upload-4194304-7");
        fs::create_dir_all(dead.join("item/sub")).unwrap();
        let live = dir.join(format!(".guixd-text-{}-1", std::process::id()));
        fs::write(&live, b"x").unwrap();
        let item = dir.join("00000000000000000000000000000000-item");
        fs::write(&item, b"y").unwrap();
        // The first clean-up of a store in a process takes entries under
        // its own id for a former daemon's (same id after a restart).
        let former = dir.join(format!(".guixd-upload-{}-3", std::process::id()));
        fs::create_dir_all(former.join("item")).unwrap();
        remove_leftovers(&dir);
        assert!(!dead.exists());
        assert!(!former.exists());
        assert!(!live.exists());
        assert!(item.exists());
        // Later ones keep them: they may be this process's uploads.
        fs::write(&live, b"x").unwrap();
        fs::create_dir_all(dead.join("item")).unwrap();
        remove_leftovers(&dir);
        assert!(!dead.exists());
        assert!(live.exists());
        assert!(item.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tests::{temp_root, temp_store};
    use std::os::unix::fs::PermissionsExt;

    fn message(result: Result<(), SetupError>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn a_new_store_gets_the_daemons_layout() {
        let store = temp_store("layout");
        let dirs = &store.config.dirs;
        prepare_store(&store.config).unwrap();
        let store_dir = Path::new(dirs.store.as_str());
        for dir in [
            store_dir.to_path_buf(),
            store_dir.join(".links"),
            dirs.state.join("profiles/per-user"),
            dirs.state.join("temproots"),
            dirs.state.join("gcroots"),
            dirs.state.join("userpool"),
            dirs.db.clone(),
        ] {
            assert!(dir.is_dir(), "{} is missing", dir.display());
        }
        assert_eq!(
            fs::read_link(dirs.state.join("gcroots/profiles")).unwrap(),
            dirs.state.join("profiles")
        );
        assert_eq!(fs::read(dirs.db.join("schema")).unwrap(), b"7");
        assert!(dirs.db.join("db.sqlite").is_file());
        assert_eq!(
            fs::metadata(dirs.db.join(RESERVED_FILE)).unwrap().len(),
            4096
        );
        let big_lock = dirs.db.join("big-lock");
        assert_eq!(
            fs::metadata(&big_lock).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Held shared: another open file description may share it, but not
        // take it exclusively (as a schema upgrade would).
        assert!(
            locks::lock_file_at(&big_lock, LockKind::Exclusive, Wait::No)
                .unwrap()
                .is_none()
        );
        assert!(
            locks::lock_file_at(&big_lock, LockKind::Shared, Wait::No)
                .unwrap()
                .is_some()
        );
        // Preparing again changes nothing and succeeds.
        prepare_store(&store.config).unwrap();
        assert_eq!(fs::read(dirs.db.join("schema")).unwrap(), b"7");
    }

    #[test]
    fn an_existing_gcroots_directory_gets_no_profiles_link() {
        let store = temp_store("gcroots");
        let gcroots = store.config.dirs.state.join("gcroots");
        fs::create_dir_all(&gcroots).unwrap();
        prepare_store(&store.config).unwrap();
        assert!(fs::symlink_metadata(gcroots.join("profiles")).is_err());
    }

    #[test]
    fn schema_versions_other_than_7_are_refused_with_the_daemons_words() {
        let cases: [(&[u8], Option<&str>); 7] = [
            (
                b"8",
                Some("current store schema is version 8, but I only support 7"),
            ),
            (
                b"6",
                Some("Your store database uses an implausibly old schema, version 6."),
            ),
            (
                b"-1",
                Some("Your store database uses an implausibly old schema, version -1."),
            ),
            (b"7\n", Some("is corrupt")),
            (b"", Some("is corrupt")),
            (b"seven", Some("is corrupt")),
            (b" 7", None),
        ];
        for (text, expected) in cases {
            let store = temp_store("schema");
            fs::create_dir_all(&store.config.dirs.db).unwrap();
            fs::write(store.config.dirs.db.join("schema"), text).unwrap();
            let result = prepare_store(&store.config);
            match expected {
                None => result.unwrap(),
                Some(words) => {
                    let got = message(result);
                    assert!(got.contains(words), "{text:?}: {got}");
                }
            }
        }
        let store = temp_store("schema-corrupt-words");
        fs::create_dir_all(&store.config.dirs.db).unwrap();
        let file = store.config.dirs.db.join("schema");
        fs::write(&file, b"x").unwrap();
        assert_eq!(
            message(prepare_store(&store.config)),
            format!("`{}' is corrupt", file.display())
        );
    }

    #[test]
    fn a_schema_of_zero_is_a_new_store() {
        let store = temp_store("schema-zero");
        fs::create_dir_all(&store.config.dirs.db).unwrap();
        fs::write(store.config.dirs.db.join("schema"), b"0").unwrap();
        prepare_store(&store.config).unwrap();
        assert_eq!(fs::read(store.config.dirs.db.join("schema")).unwrap(), b"7");
    }

    #[test]
    fn a_database_guile_created_without_a_schema_file_is_kept() {
        let store = temp_store("guile-db");
        let db_dir = &store.config.dirs.db;
        fs::create_dir_all(db_dir).unwrap();
        {
            let conn = rusqlite::Connection::open(db::db_file(db_dir)).unwrap();
            conn.execute_batch(SCHEMA_SQL).unwrap();
            conn.execute(
                "insert into ValidPaths (path, hash, registrationTime) values ('/gnu/store/x', 'sha256:00', 1)",
                [],
            )
            .unwrap();
        }
        prepare_store(&store.config).unwrap();
        assert_eq!(fs::read(db_dir.join("schema")).unwrap(), b"7");
        let conn = rusqlite::Connection::open(db::db_file(db_dir)).unwrap();
        let count: i64 = conn
            .query_row("select count(*) from ValidPaths", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 1);
    }

    #[test]
    fn a_store_below_a_symlink_is_refused() {
        let root = temp_root("symlink");
        fs::create_dir_all(root.join("real")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
        fs::create_dir_all(root.join("real/store")).unwrap();
        assert_eq!(
            message(check_store_not_symlink(&root.join("link/store"))),
            format!(
                "the path `{}' is a symlink; this is not allowed for the store and its parent directories",
                root.join("link").display()
            )
        );
        check_store_not_symlink(&root.join("real/store")).unwrap();
        // Through the whole start-up too, unless the escape hatch is set
        // in this process's environment.
        if std::env::var_os(IGNORE_SYMLINK_STORE_VAR).is_none() {
            let mut config = crate::db::tests::config_at(&root);
            config.dirs.store =
                guixd_core::StoreDir::new(root.join("link/store").to_str().unwrap()).unwrap();
            assert!(message(prepare_store(&config)).contains("is a symlink"));
        }
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn create_dirs_refuses_a_file_in_the_way() {
        let root = temp_root("not-a-dir");
        fs::write(root.join("file"), b"").unwrap();
        assert_eq!(
            message(create_dirs(&root.join("file"))),
            format!("`{}' is not a directory", root.join("file").display())
        );
        assert_eq!(
            message(create_dirs(&root.join("file/below"))),
            format!("`{}' is not a directory", root.join("file").display())
        );
        create_dirs(&root.join("a/b/c")).unwrap();
        assert!(root.join("a/b/c").is_dir());
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn an_unreachable_database_directory_is_not_writable() {
        let root = temp_root("db-dir");
        let missing = root.join("missing");
        assert_eq!(
            message(db::check_db_dir_writable(&missing)),
            format!(
                "store database directory `{}' is not writable: No such file or directory",
                missing.display()
            )
        );
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn the_reserved_file_follows_the_setting() {
        let root = temp_root("reserved");
        let file = root.join(RESERVED_FILE);
        reserve_space(&file, 10_000);
        assert_eq!(fs::metadata(&file).unwrap().len(), 10_000);
        reserve_space(&file, 3);
        assert_eq!(fs::metadata(&file).unwrap().len(), 3);
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn schema_numbers_parse_like_a_cxx_int() {
        assert_eq!(parse_schema_version(b"7"), Some(7));
        assert_eq!(parse_schema_version(b"\n\t 7"), Some(7));
        assert_eq!(parse_schema_version(b"+7"), Some(7));
        assert_eq!(parse_schema_version(b"-0"), Some(0));
        assert_eq!(parse_schema_version(b"7 "), None);
        assert_eq!(parse_schema_version(b"2147483648"), None);
        assert_eq!(parse_schema_version(b"-2147483648"), Some(-2_147_483_648));
        assert_eq!(parse_schema_version(b"99999999999999999999999"), None);
        assert_eq!(parse_schema_version(b"-"), None);
    }

    #[test]
    fn any_int_round_trips_and_any_bytes_are_safe() {
        fn round_trip(n: i32) -> bool {
            parse_schema_version(n.to_string().as_bytes()) == Some(i64::from(n))
        }
        fn never_panics(bytes: Vec<u8>) -> bool {
            let _ = parse_schema_version(&bytes);
            true
        }
        guixd_testkit::check(round_trip as fn(i32) -> bool);
        guixd_testkit::check(never_panics as fn(Vec<u8>) -> bool);
    }
}

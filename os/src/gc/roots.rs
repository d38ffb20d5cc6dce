//! Where the collector finds roots: links and files under `gcroots`,
//! `manifests` and `profiles` (spec 03 §9.1), store items that running
//! processes use (`guix gc --list-busy`), and other processes'
//! temporary-roots files (spec 02 §10.3); and the listing of the store
//! directory.
//!
//! Keeps true:
//! - the scan follows the C++ `findRoots` step by step, with its messages
//!   and its choice of errors to skip (`EACCES`, `ENOENT`, `ENOTDIR`), but
//!   walks with an explicit stack and visits at most
//!   [`ROOTS_SCAN_ENTRIES_MAX`] entries; symlinks to directories are never
//!   followed, so no loop is possible;
//! - paths are handled as bytes; only roots whose store path is UTF-8 can
//!   be store paths at all (others are reported as invalid roots);
//! - a temporary-roots file is judged stale only when a non-blocking
//!   exclusive lock on it succeeds, which means that no process holds any
//!   lock on it; a live one is read only under a read lock, and only whole
//!   `path\0` records count.

use crate::locks::{self, LockKind, Wait, strerror, sys_error};
use guixd_core::StorePath;
use guixd_core::effect::{EffectError, EffectErrorKind};
use guixd_core::gc::{FoundRoots, TempRootsRead};
use guixd_core::store_path::StoreDir;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, FileType};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Entries the root scan visits at most before giving up.
pub const ROOTS_SCAN_ENTRIES_MAX: usize = 10_000_000;

/// Largest output of `guix gc --list-busy` read.
pub const RUNTIME_ROOTS_OUTPUT_MAX_BYTES: u64 = 256 << 20;

/// Largest temporary-roots file read.
pub const TEMP_ROOTS_FILE_MAX_BYTES: u64 = 256 << 20;

/// Scans `<state>/gcroots`, then `<state>/manifests` when it exists, then
/// `<state>/profiles` for roots, as the daemon's `findRoots` does. Stale
/// links under `gcroots/auto` are removed. `is_valid` says whether a store
/// path is valid.
pub fn find_roots(
    state: &Path,
    store_dir: &StoreDir,
    is_valid: &mut dyn FnMut(&StorePath) -> Result<bool, EffectError>,
) -> Result<FoundRoots, EffectError> {
    let mut auto_dir = state.as_os_str().as_bytes().to_vec();
    auto_dir.extend_from_slice(b"/gcroots/auto");
    let mut scan = Scan {
        store_dir,
        auto_dir,
        roots: BTreeMap::new(),
        messages: Vec::new(),
        is_valid,
        visited: 0,
    };
    scan.walk(join(state, "gcroots"))?;
    let manifests = join(state, "manifests");
    if fs::symlink_metadata(&manifests).is_ok() {
        scan.walk(manifests)?;
    }
    scan.walk(join(state, "profiles"))?;
    Ok(FoundRoots {
        roots: scan.roots.into_iter().collect(),
        messages: scan.messages,
    })
}

/// Runs `<program> gc --list-busy` (with `env` added to this process's
/// environment) and returns the valid store items it printed. Its failure
/// fails the collection, in the daemon's words: ``program `P' failed with
/// exit code N``.
pub fn runtime_roots(
    program: &Path,
    env: &[(OsString, OsString)],
    store_dir: &StoreDir,
    is_valid: &mut dyn FnMut(&StorePath) -> Result<bool, EffectError>,
) -> Result<BTreeSet<StorePath>, EffectError> {
    let failed = |how: String| {
        EffectError::new(
            EffectErrorKind::Helper,
            format!("program `{}' {how}", program.display()),
        )
    };
    let mut child = match Command::new(program)
        .args(["gc", "--list-busy"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        // The daemon's child prints why `exec` failed and exits with 127.
        Err(_) => return Err(failed("failed with exit code 127".to_owned())),
    };
    let mut output = Vec::new();
    let read = match child.stdout.take() {
        Some(stdout) => stdout
            .take(RUNTIME_ROOTS_OUTPUT_MAX_BYTES + 1)
            .read_to_end(&mut output),
        None => Ok(0),
    };
    if read.is_err() || output.len() as u64 > RUNTIME_ROOTS_OUTPUT_MAX_BYTES {
        let _ = child.kill();
        let _ = child.wait();
        return Err(match read {
            Err(e) => sys_error(
                format_args!("reading the output of `{}'", program.display()),
                &e,
            ),
            Ok(_) => failed(format!(
                "printed more than {RUNTIME_ROOTS_OUTPUT_MAX_BYTES} bytes"
            )),
        });
    }
    let status = child
        .wait()
        .map_err(|e| sys_error(format_args!("waiting for `{}'", program.display()), &e))?;
    if !status.success() {
        return Err(failed(status_text(status)));
    }
    let mut roots = BTreeSet::new();
    for path in parse_busy_output(&output, store_dir) {
        if is_valid(&path)? {
            roots.insert(path);
        }
    }
    Ok(roots)
}

/// The store items named by `guix gc --list-busy`'s output: each line in
/// the store, cut to its store item (validity not checked).
pub fn parse_busy_output(output: &[u8], store_dir: &StoreDir) -> BTreeSet<StorePath> {
    output
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| store_item(store_dir, line))
        .filter_map(|item| std::str::from_utf8(item).ok())
        .filter_map(|item| store_dir.parse_path(item).ok())
        .collect()
}

/// The names in the store directory (without `.` and `..`), in directory
/// order. Names that are not UTF-8 cannot be store paths of ours and are
/// left out; so is everything beyond `entries_max` names, which is an
/// error.
pub fn list_store(store: &Path, entries_max: usize) -> Result<Vec<String>, EffectError> {
    let entries = fs::read_dir(store)
        .map_err(|e| sys_error(format_args!("opening directory `{}'", store.display()), &e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|e| sys_error(format_args!("reading directory `{}'", store.display()), &e))?;
        if let Ok(name) = entry.file_name().into_string() {
            if names.len() >= entries_max {
                return Err(EffectError::new(
                    EffectErrorKind::Invalid,
                    format!(
                        "the store directory `{}' holds more than {entries_max} entries",
                        store.display()
                    ),
                ));
            }
            names.push(name);
        }
    }
    Ok(names)
}

/// Reads every temporary-roots file in `<state>/temproots` but `own`:
/// removes those whose owner is dead (a non-blocking exclusive lock
/// succeeds), read-locks and parses the others. The read-locked files are
/// returned, to be kept open until the collection's deletions are done.
pub(super) fn read_temp_roots(
    state: &Path,
    own: &Path,
    store_dir: &StoreDir,
) -> Result<(TempRootsRead, Vec<File>), EffectError> {
    let dir = state.join("temproots");
    let mut read = TempRootsRead::default();
    let mut files = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        // Created at start-up; gone only if someone removed it, and then
        // nobody has temporary roots.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((read, files)),
        Err(e) => {
            return Err(sys_error(
                format_args!("opening directory `{}'", dir.display()),
                &e,
            ));
        }
    };
    for entry in entries {
        let entry = entry
            .map_err(|e| sys_error(format_args!("reading directory `{}'", dir.display()), &e))?;
        let path = entry.path();
        if path == own {
            continue;
        }
        let file = match locks::open_lock_file(&path, false) {
            Ok(Some(file)) => file,
            // It's fine if the file disappeared meanwhile.
            Ok(None) => continue,
            Err(e) => {
                return Err(sys_error(
                    format_args!("opening temporary roots file `{}'", path.display()),
                    &e,
                ));
            }
        };
        let lock_error = |e: io::Error| sys_error("acquiring/releasing lock", &e);
        // Only possible when no process holds a lock on it: its owner died.
        if locks::lock_fd(&file, LockKind::Exclusive, Wait::No).map_err(lock_error)? {
            read.messages.push(format!(
                "removing stale temporary roots file `{}'",
                path.display()
            ));
            let _ = fs::remove_file(&path);
            let _ = (&file).write_all(b"d");
            continue;
        }
        // Keeps the owner from upgrading to its write lock, so it waits in
        // its `addTempRoot` until the collection is over.
        locks::lock_fd(&file, LockKind::Shared, Wait::Yes).map_err(lock_error)?;
        let mut contents = Vec::new();
        (&file)
            .take(TEMP_ROOTS_FILE_MAX_BYTES + 1)
            .read_to_end(&mut contents)
            .map_err(|e| sys_error(format_args!("reading file `{}'", path.display()), &e))?;
        if contents.len() as u64 > TEMP_ROOTS_FILE_MAX_BYTES {
            return Err(EffectError::new(
                EffectErrorKind::Invalid,
                format!(
                    "temporary roots file `{}' is larger than {TEMP_ROOTS_FILE_MAX_BYTES} bytes",
                    path.display()
                ),
            ));
        }
        // Only records followed by their NUL count; a record being written
        // cannot be seen here anyway, since its writer holds a write lock.
        let mut records: Vec<&[u8]> = contents.split(|&b| b == 0).collect();
        records.pop();
        for record in records {
            let text = String::from_utf8_lossy(record);
            let root = store_dir
                .parse_path(&text)
                .map_err(|e| EffectError::new(EffectErrorKind::Invalid, e.to_string()))?;
            read.roots.insert(root);
        }
        files.push(file);
    }
    Ok((read, files))
}

/// The state of one root scan.
struct Scan<'a> {
    store_dir: &'a StoreDir,
    /// `<state>/gcroots/auto`, where stale links are removed.
    auto_dir: Vec<u8>,
    roots: BTreeMap<String, StorePath>,
    messages: Vec<String>,
    is_valid: &'a mut dyn FnMut(&StorePath) -> Result<bool, EffectError>,
    visited: usize,
}

impl Scan<'_> {
    /// Scans `start` and everything below it, depth first, in directory
    /// order (the daemon's recursion, with a stack).
    fn walk(&mut self, start: PathBuf) -> Result<(), EffectError> {
        let mut stack: Vec<(PathBuf, Option<FileType>)> = vec![(start, None)];
        while let Some((path, hint)) = stack.pop() {
            self.visited += 1;
            if self.visited > ROOTS_SCAN_ENTRIES_MAX {
                return Err(EffectError::new(
                    EffectErrorKind::Invalid,
                    format!(
                        "more than {ROOTS_SCAN_ENTRIES_MAX} entries under the roots directories"
                    ),
                ));
            }
            if let Err(e) = self.visit(&path, hint, &mut stack) {
                self.skip_or_fail(&path, e)?;
            }
        }
        Ok(())
    }

    /// One entry; I/O failures come back for [`Scan::skip_or_fail`].
    fn visit(
        &mut self,
        path: &Path,
        hint: Option<FileType>,
        stack: &mut Vec<(PathBuf, Option<FileType>)>,
    ) -> Result<(), Failure> {
        let file_type = match hint {
            Some(t) => t,
            None => fs::symlink_metadata(path)
                .map_err(|e| io_failure("getting status of", path, e))?
                .file_type(),
        };
        if file_type.is_dir() {
            let mut children = Vec::new();
            for entry in fs::read_dir(path).map_err(|e| io_failure("opening directory", path, e))? {
                let entry = entry.map_err(|e| io_failure("reading directory", path, e))?;
                children.push((entry.path(), entry.file_type().ok()));
            }
            stack.extend(children.into_iter().rev());
        } else if file_type.is_symlink() {
            let target = fs::read_link(path)
                .map_err(|e| io_failure("reading symbolic link", path, e))?
                .into_os_string()
                .into_vec();
            if is_in_store(self.store_dir, &target) {
                self.found_root(path.as_os_str().as_bytes(), &target)?;
            } else {
                self.indirect(path, &target)?;
            }
        } else if file_type.is_file() {
            // A regular file roots the store item of the same name.
            let Some(name) = path.file_name() else {
                return Ok(());
            };
            let item = format!(
                "{}/{}",
                self.store_dir.as_str(),
                String::from_utf8_lossy(name.as_bytes())
            );
            if let Ok(store_path) = self.store_dir.parse_path(&item) {
                if (self.is_valid)(&store_path).map_err(Failure::Fatal)? {
                    self.roots
                        .insert(lossy(path.as_os_str().as_bytes()), store_path);
                }
            }
        }
        Ok(())
    }

    /// A symlink that does not point into the store: an indirect root when
    /// it points to a symlink into the store (the root is then keyed by
    /// that symlink, the user's link); a stale one under `gcroots/auto`
    /// when its target is gone.
    fn indirect(&mut self, path: &Path, target: &[u8]) -> Result<(), Failure> {
        let absolute = absolute_path(target, path.as_os_str().as_bytes());
        let absolute_path = Path::new(OsStr::from_bytes(&absolute));
        match fs::symlink_metadata(absolute_path) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                if is_in_dir(path.as_os_str().as_bytes(), &self.auto_dir) {
                    self.messages.push(format!(
                        "removing stale link from `{}' to `{}'",
                        path.display(),
                        lossy(&absolute)
                    ));
                    let _ = fs::remove_file(path);
                }
                Ok(())
            }
            Err(e) => Err(io_failure("getting status of", absolute_path, e)),
            Ok(st) if !st.file_type().is_symlink() => Ok(()),
            Ok(_) => {
                let target2 = fs::read_link(absolute_path)
                    .map_err(|e| io_failure("reading symbolic link", absolute_path, e))?
                    .into_os_string()
                    .into_vec();
                if is_in_store(self.store_dir, &target2) {
                    self.found_root(&absolute, &target2)?;
                }
                Ok(())
            }
        }
    }

    /// `target` lies in the store: its store item is a root if valid.
    fn found_root(&mut self, link: &[u8], target: &[u8]) -> Result<(), Failure> {
        let item = store_item(self.store_dir, target).unwrap_or(target);
        let store_path = std::str::from_utf8(item)
            .ok()
            .and_then(|s| self.store_dir.parse_path(s).ok());
        let valid = match store_path {
            Some(store_path) if (self.is_valid)(&store_path).map_err(Failure::Fatal)? => {
                self.roots.insert(lossy(link), store_path);
                true
            }
            _ => false,
        };
        if !valid {
            self.messages.push(format!(
                "skipping invalid root from `{}' to `{}'",
                lossy(link),
                lossy(item)
            ));
        }
        Ok(())
    }

    /// The daemon ignores permanent failures to read a potential root and
    /// says so; anything else ends the scan.
    fn skip_or_fail(&mut self, path: &Path, failure: Failure) -> Result<(), EffectError> {
        match failure {
            Failure::Io { error, .. }
                if matches!(
                    error.raw_os_error(),
                    Some(libc::EACCES | libc::ENOENT | libc::ENOTDIR)
                ) =>
            {
                self.messages.push(format!(
                    "cannot read potential root '{}': {}",
                    path.display(),
                    strerror(&error)
                ));
                Ok(())
            }
            Failure::Io { context, error } => Err(sys_error(context, &error)),
            Failure::Fatal(e) => Err(e),
        }
    }
}

/// Why visiting an entry failed.
enum Failure {
    /// A system call failed; `context` is the daemon's wording.
    Io { context: String, error: io::Error },
    /// Something other than the filesystem failed (the database).
    Fatal(EffectError),
}

fn io_failure(what: &str, path: &Path, error: io::Error) -> Failure {
    Failure::Io {
        context: format!("{what} `{}'", path.display()),
        error,
    }
}

/// `isInStore`: `target` is `STORE/` followed by at least one byte.
fn is_in_store(store_dir: &StoreDir, target: &[u8]) -> bool {
    is_in_dir(target, store_dir.as_str().as_bytes())
}

/// `isInDir`: `path` is below `dir` (not `dir` itself).
fn is_in_dir(path: &[u8], dir: &[u8]) -> bool {
    path.first() == Some(&b'/')
        && path.starts_with(dir)
        && path.len() >= dir.len() + 2
        && path[dir.len()] == b'/'
}

/// `toStorePath`: `STORE/NAME/...` cut to `STORE/NAME`; `None` when
/// `path` is not in the store.
fn store_item<'p>(store_dir: &StoreDir, path: &'p [u8]) -> Option<&'p [u8]> {
    if !is_in_store(store_dir, path) {
        return None;
    }
    let start = store_dir.as_str().len() + 1;
    match path[start..].iter().position(|&b| b == b'/') {
        Some(slash) => Some(&path[..start + slash]),
        None => Some(path),
    }
}

/// `absPath(target, dirOf(link))` with the daemon's lexical
/// canonicalisation: `.`, `..` and repeated slashes go, symlinks stay.
fn absolute_path(target: &[u8], link: &[u8]) -> Vec<u8> {
    let mut joined = Vec::new();
    if target.first() != Some(&b'/') {
        let dir = match link.iter().rposition(|&b| b == b'/') {
            Some(0) | None => &b"/"[..],
            Some(slash) => &link[..slash],
        };
        joined.extend_from_slice(dir);
        joined.push(b'/');
    }
    joined.extend_from_slice(target);
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in joined.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = Vec::with_capacity(joined.len());
    for p in &parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `statusToString` for a failed helper.
fn status_text(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("failed with exit code {code}");
    }
    match status.signal() {
        Some(signal) => format!("failed due to signal {signal} ({})", signal_name(signal)),
        None => "died abnormally".to_owned(),
    }
}

/// The C library's description of `signal`.
fn signal_name(signal: i32) -> String {
    // SAFETY: strsignal returns a pointer to a NUL-terminated string that
    // stays valid at least until the next strsignal call on this thread;
    // it is copied at once.
    let text = unsafe { libc::strsignal(signal) };
    if text.is_null() {
        return format!("signal {signal}");
    }
    // SAFETY: non-null, NUL-terminated (see above).
    unsafe { std::ffi::CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn absolute_paths_are_lexical() {
        assert_eq!(absolute_path(b"/a/./b//c/../d", b"/x/y"), b"/a/b/d");
        assert_eq!(
            absolute_path(b"../home/link", b"/var/guix/gcroots/auto/h"),
            b"/var/guix/gcroots/home/link"
        );
        assert_eq!(absolute_path(b"t", b"/l"), b"/t");
        assert_eq!(absolute_path(b"../../..", b"/a/b"), b"/");
    }

    #[test]
    fn store_items_are_cut_like_the_daemon() {
        let store = StoreDir::new("/gnu/store").unwrap();
        assert_eq!(
            store_item(&store, b"/gnu/store/abc-x/bin/y"),
            Some(&b"/gnu/store/abc-x"[..])
        );
        assert_eq!(
            store_item(&store, b"/gnu/store/abc-x"),
            Some(&b"/gnu/store/abc-x"[..])
        );
        assert_eq!(store_item(&store, b"/gnu/store/"), None);
        assert_eq!(store_item(&store, b"/gnu/storex/a"), None);
        assert_eq!(store_item(&store, b"gnu/store/a"), None);
        let parsed = parse_busy_output(
            b"/gnu/store/abc-x/bin/y\n\n/proc/1/exe\n/gnu/store/abc-x\n/gnu/store/def-z\n",
            &store,
        );
        let names: Vec<&str> = parsed.iter().map(StorePath::as_str).collect();
        assert_eq!(names, ["/gnu/store/abc-x", "/gnu/store/def-z"]);
    }
}

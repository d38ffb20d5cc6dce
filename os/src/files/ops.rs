//! The file-system primitives the store-file effects share: canonical
//! metadata (spec 02 §9), recursive deletion of leftovers, and error texts
//! in the C++ daemon's `SysError` style.
//!
//! Keeps true:
//! - canonical means: mode 0444, or 0555 when the owner may execute (never
//!   for symlinks, whose mode Linux ignores); mtime 1 with the atime left
//!   alone; the daemon's owner; only regular files, directories and
//!   symlinks;
//! - every failure is an [`EffectError`] whose message names the path, with
//!   the errno as its kind; nothing here panics;
//! - deletion walks with an explicit stack, so no tree is too deep for it,
//!   and makes read-only directories writable first, as the daemon's
//!   `deletePath` does (store directories are 0555).

use crate::locks::sys_error;
use guixd_core::effect::{EffectError, EffectErrorKind};
use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_OMIT};
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mtime of every store file: one second after the epoch.
pub const STORE_MTIME_S: i64 = 1;

/// Who owns new store files, and whether anything must be done about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    /// Whether files this process creates need a `chown` to get there: the
    /// daemon compares only the uid (a file created by the daemon's euid
    /// keeps the group the kernel gave it), and so do we.
    pub chown_needed: bool,
}

impl Owner {
    /// The owner `uid:gid`, for files created by this process.
    pub fn new(uid: u32, gid: u32) -> Owner {
        Owner {
            uid,
            gid,
            chown_needed: uid != rustix::process::geteuid().as_raw(),
        }
    }
}

/// Sets the canonical mode and mtime of one file, directory or symlink
/// (the daemon's `canonicaliseTimestampAndPermissions`), given its `lstat`.
pub fn canonicalise_timestamp_and_permissions(
    path: &Path,
    st: &Metadata,
) -> Result<(), EffectError> {
    if !st.file_type().is_symlink() {
        let mode = st.mode() & 0o7777;
        if mode != 0o444 && mode != 0o555 {
            let mode = canonical_mode(st.mode());
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| {
                sys_error(
                    format_args!("changing mode of `{}' to {mode:o}", path.display()),
                    &e,
                )
            })?;
        }
    }
    if st.mtime() != STORE_MTIME_S {
        set_store_mtime(path)?;
    }
    Ok(())
}

/// Like [`canonicalise_timestamp_and_permissions`], reading the metadata
/// itself.
pub fn canonicalise_path(path: &Path) -> Result<(), EffectError> {
    let st = lstat(path)?;
    canonicalise_timestamp_and_permissions(path, &st)
}

/// The canonical permission bits for a file of mode `mode`.
pub fn canonical_mode(mode: u32) -> u32 {
    0o444 | if mode & 0o100 != 0 { 0o111 } else { 0 }
}

/// Sets the mtime of `path` (never following a symlink) to 1, keeping its
/// atime.
pub fn set_store_mtime(path: &Path) -> Result<(), EffectError> {
    rustix::fs::utimensat(CWD, path, &store_times(), AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
        sys_error(
            format_args!("changing modification time of `{}'", path.display()),
            &e.into(),
        )
    })
}

/// Sets the mtime of an open file to 1, keeping its atime.
pub fn set_store_mtime_fd(file: &File, path: &Path) -> Result<(), EffectError> {
    rustix::fs::futimens(file, &store_times()).map_err(|e| {
        sys_error(
            format_args!("changing modification time of `{}'", path.display()),
            &e.into(),
        )
    })
}

/// Gives `path` (never following a symlink) to `owner`.
pub fn set_owner(path: &Path, owner: Owner) -> Result<(), EffectError> {
    std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid)).map_err(|e| {
        sys_error(
            format_args!("changing owner of `{}' to {}", path.display(), owner.uid),
            &e,
        )
    })
}

/// Gives an open file to `owner`.
pub fn set_owner_fd(file: &File, path: &Path, owner: Owner) -> Result<(), EffectError> {
    std::os::unix::fs::fchown(file, Some(owner.uid), Some(owner.gid)).map_err(|e| {
        sys_error(
            format_args!("changing owner of `{}' to {}", path.display(), owner.uid),
            &e,
        )
    })
}

/// `lstat`, with the daemon's words on failure.
pub fn lstat(path: &Path) -> Result<Metadata, EffectError> {
    fs::symlink_metadata(path).map_err(|e| {
        sys_error(
            format_args!("getting attributes of path `{}'", path.display()),
            &e,
        )
    })
}

/// `lstat` that reports a missing path as `None`.
pub fn lstat_if_exists(path: &Path) -> Result<Option<Metadata>, EffectError> {
    match fs::symlink_metadata(path) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(sys_error(
            format_args!("getting attributes of path `{}'", path.display()),
            &e,
        )),
    }
}

/// Deletes `path` and everything below it, making directories writable
/// first; a missing path is not an error. Returns the bytes freed: the
/// sizes of the non-directories whose last link went away.
pub fn delete_path(path: &Path) -> Result<u64, EffectError> {
    let Some(st) = lstat_if_exists(path)? else {
        return Ok(0);
    };
    let mut freed_bytes = 0;
    if !st.is_dir() {
        unlink(path, &st, &mut freed_bytes)?;
        return Ok(freed_bytes);
    }
    // Each directory on the stack is emptied of its non-directories, then
    // its subdirectories go on the stack above it; once it is found with no
    // subdirectory left, it is removed. Every directory is read at most
    // twice, and memory is bounded by the directories still pending.
    let mut stack: Vec<PathBuf> = vec![path.to_path_buf()];
    while let Some(dir) = stack.last().cloned() {
        make_dir_writable(&dir)?;
        let mut subdirs = Vec::new();
        let entries = fs::read_dir(&dir)
            .map_err(|e| sys_error(format_args!("opening directory `{}'", dir.display()), &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                sys_error(format_args!("reading directory `{}'", dir.display()), &e)
            })?;
            let child = entry.path();
            let Some(st) = lstat_if_exists(&child)? else {
                continue;
            };
            if st.is_dir() {
                subdirs.push(child);
            } else {
                unlink(&child, &st, &mut freed_bytes)?;
            }
        }
        if subdirs.is_empty() {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(sys_error(
                        format_args!("cannot unlink `{}'", dir.display()),
                        &e,
                    ));
                }
            }
            stack.pop();
        } else {
            stack.extend(subdirs);
        }
    }
    Ok(freed_bytes)
}

/// An [`EffectError`] for refused input.
pub fn invalid(message: impl Into<String>) -> EffectError {
    EffectError::new(EffectErrorKind::Invalid, message)
}

/// The message for a node that is neither a regular file, a directory nor
/// a symlink (the daemon's words).
pub fn unsupported_type(path: &Path) -> EffectError {
    invalid(format!("file `{}' has an unsupported type", path.display()))
}

/// Timestamps that keep the atime and set the mtime to 1.
fn store_times() -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: STORE_MTIME_S,
            tv_nsec: 0,
        },
    }
}

/// Gives the owner write and search permission on a directory, so its
/// entries can be removed.
fn make_dir_writable(dir: &Path) -> Result<(), EffectError> {
    let st = lstat(dir)?;
    if st.mode() & 0o300 != 0o300 {
        let mode = (st.mode() & 0o7777) | 0o700;
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))
            .map_err(|e| sys_error(format_args!("making `{}' writable", dir.display()), &e))?;
    }
    Ok(())
}

fn unlink(path: &Path, st: &Metadata, freed_bytes: &mut u64) -> Result<(), EffectError> {
    match fs::remove_file(path) {
        Ok(()) => {
            if st.nlink() <= 1 {
                *freed_bytes += st.len();
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(sys_error(
            format_args!("cannot unlink `{}'", path.display()),
            &e,
        )),
    }
}

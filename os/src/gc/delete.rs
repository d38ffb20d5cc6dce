//! Removing what the collector decided to delete: one store entry at a
//! time (to the trash when it is a directory), the trash itself, and
//! unused `.links` entries.
//!
//! Keeps true:
//! - bytes freed are counted as the daemon counts them: the `st_size` of
//!   every non-directory removed whose link count is at most the
//!   threshold (1, or 2 when deduplication keeps a `.links` entry);
//! - trees are deleted with an explicit stack, making directories writable
//!   first (store directories are read-only); an entry that vanished
//!   meanwhile is not an error;
//! - a directory goes to the trash by one `rename`; when that is
//!   impossible across devices or for lack of space, it is deleted in
//!   place, as the daemon does.

use crate::files::DEDUPLICATION_MIN_SIZE_BYTES;
use crate::locks::sys_error;
use guixd_core::effect::EffectError;
use guixd_core::gc::{DeleteOutcome, LinksReport, TrashPrepared};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Deletes `path` and everything below it, making directories writable
/// first. Returns the bytes freed: the sizes of the non-directories
/// removed that had at most `link_threshold` links. A missing `path` frees
/// nothing.
pub fn delete_tree(path: &Path, link_threshold: u64) -> Result<u64, EffectError> {
    let Some(st) = lstat_if_exists(path)? else {
        return Ok(0);
    };
    let mut freed_bytes = 0;
    if !st.is_dir() {
        unlink(path, &st, link_threshold, &mut freed_bytes)?;
        return Ok(freed_bytes);
    }
    // A directory stays on the stack until it is found with no
    // subdirectory left; its files go the first time it is read.
    let mut stack: Vec<PathBuf> = vec![path.to_path_buf()];
    while let Some(dir) = stack.last().cloned() {
        make_dir_writable(&dir)?;
        let mut subdirs = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                stack.pop();
                continue;
            }
            Err(e) => {
                return Err(sys_error(format_args!("opening `{}'", dir.display()), &e));
            }
        };
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
                unlink(&child, &st, link_threshold, &mut freed_bytes)?;
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

/// Removes the store entry `path` (already invalid): a directory is moved
/// to `trash` when given (its `nar_size` then counts as invalidated), or
/// else, like any other file, deleted in place.
pub(super) fn remove_store_entry(
    path: &Path,
    base_name: &str,
    trash: Option<&Path>,
    nar_size: u64,
    link_threshold: u64,
) -> Result<DeleteOutcome, EffectError> {
    let Some(st) = lstat_if_exists(path)? else {
        return Ok(DeleteOutcome::Deleted {
            existed: false,
            freed_bytes: 0,
            invalidated_bytes: 0,
            note: None,
        });
    };
    let deleted = |freed_bytes, invalidated_bytes, note| DeleteOutcome::Deleted {
        existed: true,
        freed_bytes,
        invalidated_bytes,
        note,
    };
    let Some(trash) = trash.filter(|_| st.is_dir()) else {
        return Ok(deleted(delete_tree(path, link_threshold)?, 0, None));
    };
    let target = trash.join(base_name);
    match move_to_trash(path, &st, &target) {
        Ok(()) => Ok(deleted(0, nar_size, None)),
        Err(e) => match e.raw_os_error() {
            // In a container, `rename` can say EXDEV when the two names are
            // not on the same layer.
            Some(libc::ENOSPC | libc::EXDEV) => {
                let note = format!(
                    "note: can't create move `{}': {}",
                    path.display(),
                    sys_error(
                        format_args!(
                            "unable to rename `{}' to `{}'",
                            path.display(),
                            target.display()
                        ),
                        &e
                    )
                    .message
                );
                Ok(deleted(delete_tree(path, link_threshold)?, 0, Some(note)))
            }
            // The same name is in the trash already (deleted, added again
            // and deleted in one collection); the daemon leaves the
            // directory behind, guixd deletes it in place.
            Some(libc::EEXIST | libc::ENOTEMPTY) => {
                Ok(deleted(delete_tree(path, link_threshold)?, 0, None))
            }
            // The daemon ignores any other failure here: the entry stays,
            // invalid, for a later collection.
            _ => Ok(deleted(0, 0, None)),
        },
    }
}

/// At the start of a deleting collection: deletes a leftover trash, then
/// creates an empty one. Without room for it, directories are deleted in
/// place instead.
pub(super) fn prepare_trash(
    trash: &Path,
    link_threshold: u64,
) -> Result<TrashPrepared, EffectError> {
    let freed_bytes = delete_tree(trash, link_threshold)?;
    match fs::create_dir_all(trash) {
        Ok(()) => Ok(TrashPrepared {
            use_trash: true,
            freed_bytes,
            note: None,
        }),
        Err(e) => {
            let error = sys_error(format_args!("creating directory `{}'", trash.display()), &e);
            // The daemon says so only for ENOSPC (and then keeps on without
            // a trash); for other errors it goes on as if the trash
            // existed, and every move fails quietly. guixd deletes in
            // place then too.
            let note = (e.raw_os_error() == Some(libc::ENOSPC))
                .then(|| format!("note: can't create trash directory: {}", error.message));
            Ok(TrashPrepared {
                use_trash: false,
                freed_bytes,
                note,
            })
        }
    }
}

/// Deletes the entries of `links` (`<store>/.links`) that no store file
/// links to any more, and those too small to be deduplicated; reports the
/// bytes they freed and what hard linking saves now, computed as the
/// daemon does (including its subtraction of the directory's own size).
pub(super) fn remove_unused_links(links: &Path) -> Result<LinksReport, EffectError> {
    let entries = fs::read_dir(links)
        .map_err(|e| sys_error(format_args!("opening directory `{}'", links.display()), &e))?;
    let mut actual_bytes: i64 = 0;
    let mut unshared_bytes: i64 = 0;
    let mut freed_bytes: u64 = 0;
    for entry in entries {
        let entry = entry
            .map_err(|e| sys_error(format_args!("reading directory `{}'", links.display()), &e))?;
        let path = entry.path();
        let Some(st) = lstat_if_exists(&path)? else {
            continue;
        };
        if st.nlink() != 1 && st.size() >= DEDUPLICATION_MIN_SIZE_BYTES {
            let size = i64::try_from(st.size()).unwrap_or(i64::MAX);
            let others = i64::try_from(st.nlink() - 1).unwrap_or(i64::MAX);
            actual_bytes = actual_bytes.saturating_add(size);
            unshared_bytes = unshared_bytes.saturating_add(others.saturating_mul(size));
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => freed_bytes = freed_bytes.saturating_add(st.size()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(sys_error(format_args!("deleting `{}'", path.display()), &e));
            }
        }
    }
    let overhead = fs::metadata(links)
        .map_err(|e| sys_error(format_args!("statting `{}'", links.display()), &e))?
        .size();
    let saved_bytes = unshared_bytes
        .saturating_sub(actual_bytes)
        .saturating_sub(i64::try_from(overhead).unwrap_or(i64::MAX));
    Ok(LinksReport {
        freed_bytes,
        saved_bytes,
    })
}

/// Makes a directory writable by its owner and renames it to `target`.
fn move_to_trash(path: &Path, st: &Metadata, target: &Path) -> io::Result<()> {
    fs::set_permissions(
        path,
        fs::Permissions::from_mode((st.mode() & 0o7777) | 0o200),
    )?;
    fs::rename(path, target)
}

/// `lstat` that reports a missing path as `None`.
fn lstat_if_exists(path: &Path) -> Result<Option<Metadata>, EffectError> {
    match fs::symlink_metadata(path) {
        Ok(st) => Ok(Some(st)),
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound) => Ok(None),
        Err(e) => Err(sys_error(
            format_args!("getting status of `{}'", path.display()),
            &e,
        )),
    }
}

/// Gives the owner write and search permission on a directory, so that
/// its entries can be removed.
fn make_dir_writable(dir: &Path) -> Result<(), EffectError> {
    let Some(st) = lstat_if_exists(dir)? else {
        return Ok(());
    };
    if st.mode() & 0o300 != 0o300 {
        let mode = (st.mode() & 0o7777) | 0o700;
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))
            .map_err(|e| sys_error(format_args!("making `{}' writable", dir.display()), &e))?;
    }
    Ok(())
}

fn unlink(
    path: &Path,
    st: &Metadata,
    link_threshold: u64,
    freed_bytes: &mut u64,
) -> Result<(), EffectError> {
    match fs::remove_file(path) {
        Ok(()) => {
            if st.nlink() <= link_threshold {
                *freed_bytes = freed_bytes.saturating_add(st.size());
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

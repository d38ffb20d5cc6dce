//! Deduplication: identical regular files of the store become hard links to
//! one inode named in `<store>/.links` (spec 02 §11), as the daemon's
//! `optimisePath` does after each new item and `optimize-store` does for the
//! whole store.
//!
//! Keeps true:
//! - only regular files of at least [`DEDUPLICATION_MIN_SIZE_BYTES`] are
//!   linked; symlinks, directories and small files never are, and files the
//!   owner may write are skipped as suspicious;
//! - a link's name is the nix-base32 SHA-256 of the file's one-file NAR, so
//!   the executable bit keeps otherwise identical files apart; the file is
//!   read once, in bounded pieces;
//! - a file is replaced only by an atomic `rename` of a fresh hard link to
//!   the `.links` inode over it, so it never goes missing, and a directory
//!   made writable for that gets its canonical mode and mtime back, even
//!   when the replacement fails;
//! - running out of links (`EMLINK`) or of directory space for `.links`
//!   (`ENOSPC`) only means that file stays as it is.

use super::ops::{self, canonicalise_path, invalid, lstat, lstat_if_exists};
use crate::locks::{strerror, sys_error};
use guixd_core::effect::EffectError;
use guixd_core::hash::{Hash, HashAlgo};
use guixd_core::nar::FileNarHasher;
use std::collections::HashSet;
use std::fs::{self, Metadata, OpenOptions};
use std::hash::{BuildHasher, Hasher as _};
use std::io::{self, Read};
use std::os::unix::fs::{DirEntryExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Files smaller than this are never deduplicated (the daemon's
/// `deduplicationMinSize`; Guile's `deduplicate` uses the same).
pub const DEDUPLICATION_MIN_SIZE_BYTES: u64 = 8192;

/// How many times a corrupted link (one whose size differs from the file's)
/// is replaced before giving up on the file; the daemon retries forever.
pub const CORRUPTED_LINK_RETRIES_MAX: u32 = 3;

/// Warnings kept in [`DedupStats::warnings`]; later ones are counted only.
pub const DEDUP_WARNINGS_MAX: usize = 64;

/// The read size used while hashing a file.
const HASH_READ_BYTES: usize = 1 << 20;

/// What a deduplication pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DedupStats {
    /// Files replaced by a hard link to an identical file.
    pub files_linked: u64,
    /// Their sizes, summed.
    pub bytes_freed: u64,
    /// Their `st_blocks` (512-byte units), summed.
    pub blocks_freed: u64,
    /// The daemon's messages for files left alone (`skipping suspicious
    /// writable file ...`), at most [`DEDUP_WARNINGS_MAX`].
    pub warnings: Vec<String>,
    /// Warnings beyond those kept.
    pub warnings_dropped: u64,
}

/// What happened to one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOutcome {
    /// Not a candidate: not a regular file, too small, writable, or an
    /// inode already known to be linked.
    Skipped,
    /// The file became the `.links` entry for its contents.
    NewLink,
    /// The file already was the `.links` inode.
    AlreadyLinked,
    /// The file was replaced by a hard link to the `.links` inode.
    Linked,
    /// The file stays as it is (too many links, no room in `.links`).
    GaveUp,
}

/// Deduplicates every file below `path` (a store item) against
/// `<store>/.links`.
pub fn deduplicate_tree(store: &Path, path: &Path) -> Result<DedupStats, EffectError> {
    let mut dedup = Deduplicator::new(store);
    let mut stats = DedupStats::default();
    dedup.tree(path, &mut stats)?;
    Ok(stats)
}

/// Deduplication state that lasts across files and items: the store, a
/// read buffer, and the inodes known to be in `.links`.
pub struct Deduplicator {
    store: PathBuf,
    links: PathBuf,
    /// Inodes known to be linked from `.links`: entries with these inodes
    /// are skipped without hashing.
    linked_inodes: HashSet<u64>,
    buf: Vec<u8>,
}

impl Deduplicator {
    pub fn new(store: &Path) -> Deduplicator {
        Deduplicator {
            store: store.to_path_buf(),
            links: store.join(".links"),
            linked_inodes: HashSet::new(),
            buf: Vec::new(),
        }
    }

    /// Reads the inodes of every `.links` entry, so that files already
    /// linked are skipped without being hashed (what `optimize-store` does
    /// before walking all valid paths).
    pub fn load_link_inodes(&mut self) -> Result<(), EffectError> {
        let entries = fs::read_dir(&self.links).map_err(|e| {
            sys_error(
                format_args!("opening directory `{}'", self.links.display()),
                &e,
            )
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                sys_error(
                    format_args!("reading directory `{}'", self.links.display()),
                    &e,
                )
            })?;
            self.linked_inodes.insert(entry.ino());
        }
        Ok(())
    }

    /// Deduplicates every file below `path`.
    pub fn tree(&mut self, path: &Path, stats: &mut DedupStats) -> Result<(), EffectError> {
        // Depth-first with an explicit stack: no store item is too deep.
        let mut stack = vec![path.to_path_buf()];
        while let Some(p) = stack.pop() {
            let Some(st) = lstat_if_exists(&p)? else {
                continue;
            };
            if st.is_dir() {
                let entries = fs::read_dir(&p).map_err(|e| {
                    sys_error(format_args!("opening directory `{}'", p.display()), &e)
                })?;
                for entry in entries {
                    let entry = entry.map_err(|e| {
                        sys_error(format_args!("reading directory `{}'", p.display()), &e)
                    })?;
                    if self.linked_inodes.contains(&entry.ino()) {
                        continue;
                    }
                    stack.push(entry.path());
                }
            } else {
                self.file(&p, &st, stats)?;
            }
        }
        Ok(())
    }

    /// Deduplicates one file given its `lstat`.
    pub fn file(
        &mut self,
        path: &Path,
        st: &Metadata,
        stats: &mut DedupStats,
    ) -> Result<FileOutcome, EffectError> {
        if !st.file_type().is_file() || st.len() < DEDUPLICATION_MIN_SIZE_BYTES {
            return Ok(FileOutcome::Skipped);
        }
        if st.mode() & 0o200 != 0 {
            warn(
                stats,
                format!("skipping suspicious writable file `{}'", path.display()),
            );
            return Ok(FileOutcome::Skipped);
        }
        if st.nlink() > 1 && self.linked_inodes.contains(&st.ino()) {
            return Ok(FileOutcome::Skipped);
        }

        let hash = self.hash_file(path, st)?;
        let link = self.links.join(hash.to_base32());
        let mut corrupted_retries = 0;
        let st_link = loop {
            if lstat_if_exists(&link)?.is_none() {
                match fs::hard_link(path, &link) {
                    Ok(()) => {
                        self.linked_inodes.insert(st.ino());
                        return Ok(FileOutcome::NewLink);
                    }
                    // Another process created the link first: use theirs.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    // On ext4 this can mean the directory index of `.links`
                    // is full; deduplication of this file is simply off.
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                        warn(
                            stats,
                            format!(
                                "cannot link `{}' to `{}': {}",
                                link.display(),
                                path.display(),
                                strerror(&e)
                            ),
                        );
                        return Ok(FileOutcome::GaveUp);
                    }
                    Err(e) => {
                        return Err(sys_error(
                            format_args!(
                                "cannot link `{}' to `{}'",
                                link.display(),
                                path.display()
                            ),
                            &e,
                        ));
                    }
                }
            }
            let st_link = lstat(&link)?;
            if st_link.ino() == st.ino() {
                self.linked_inodes.insert(st.ino());
                return Ok(FileOutcome::AlreadyLinked);
            }
            if st_link.len() == st.len() {
                break st_link;
            }
            if corrupted_retries == CORRUPTED_LINK_RETRIES_MAX {
                return Err(invalid(format!(
                    "link `{}' keeps changing size; not deduplicating `{}'",
                    link.display(),
                    path.display()
                )));
            }
            corrupted_retries += 1;
            warn(
                stats,
                format!("removing corrupted link `{}'", link.display()),
            );
            let _ = fs::remove_file(&link);
        };

        // Top-level items sit in the store itself, whose permissions are
        // not ours to touch; any deeper file's directory is 0555 and must
        // be writable for a moment.
        let parent = path.parent().unwrap_or(Path::new("/"));
        let restore = if parent != self.store {
            make_writable(parent)?;
            Some(RestoreCanonical(parent))
        } else {
            None
        };
        let outcome = self.replace_with_link(path, &link, st, stats);
        drop(restore);
        let outcome = outcome?;
        if outcome == FileOutcome::Linked {
            self.linked_inodes.insert(st_link.ino());
            stats.files_linked += 1;
            stats.bytes_freed += st.len();
            stats.blocks_freed += st.blocks();
        }
        Ok(outcome)
    }

    /// The SHA-256 of the one-file NAR of `path`, read in bounded pieces.
    fn hash_file(&mut self, path: &Path, st: &Metadata) -> Result<Hash, EffectError> {
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| sys_error(format_args!("opening file `{}'", path.display()), &e))?;
        let mut hasher = FileNarHasher::new(HashAlgo::Sha256, st.mode() & 0o100 != 0, st.len());
        if self.buf.len() < HASH_READ_BYTES {
            self.buf.resize(HASH_READ_BYTES, 0);
        }
        loop {
            let n = match file.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(sys_error(
                        format_args!("reading file `{}'", path.display()),
                        &e,
                    ));
                }
            };
            hasher
                .update(&self.buf[..n])
                .map_err(|e| changed(path, &e.to_string()))?;
        }
        hasher.finish().map_err(|e| changed(path, &e.to_string()))
    }

    /// Replaces `path` by a hard link to `link`: link to a fresh temporary
    /// name in the store, then rename it over the file.
    fn replace_with_link(
        &mut self,
        path: &Path,
        link: &Path,
        st: &Metadata,
        stats: &mut DedupStats,
    ) -> Result<FileOutcome, EffectError> {
        let max_links = |stats: &mut DedupStats| {
            // Empty files run into this easily and are not worth a word.
            if st.len() > 0 {
                warn(
                    stats,
                    format!("`{}' has maximum number of links", link.display()),
                );
            }
            Ok(FileOutcome::GaveUp)
        };
        let mut attempts = 0;
        let temp = loop {
            let temp =
                self.store
                    .join(format!(".tmp-link-{}-{}", std::process::id(), random_u32()));
            match fs::hard_link(link, &temp) {
                Ok(()) => break temp,
                Err(e) if e.raw_os_error() == Some(libc::EMLINK) => return max_links(stats),
                // A name left by a dead process with our pid, or a clash.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 10 => {
                    attempts += 1;
                }
                Err(e) => {
                    return Err(sys_error(
                        format_args!("cannot link `{}' to `{}'", temp.display(), link.display()),
                        &e,
                    ));
                }
            }
        };
        if let Err(e) = fs::rename(&temp, path) {
            let _ = fs::remove_file(&temp);
            // Some file systems count the link twice during a rename.
            if e.raw_os_error() == Some(libc::EMLINK) {
                return max_links(stats);
            }
            return Err(sys_error(
                format_args!("cannot rename `{}' to `{}'", temp.display(), path.display()),
                &e,
            ));
        }
        Ok(FileOutcome::Linked)
    }
}

/// Gives a directory back its canonical mode and mtime when dropped, so
/// that it is restored on every path out of a replacement.
struct RestoreCanonical<'a>(&'a Path);

impl Drop for RestoreCanonical<'_> {
    fn drop(&mut self) {
        // A failure here leaves a directory writable by its owner (the
        // daemon), which the next canonicalisation or verify fixes; there
        // is nobody to report it to from a destructor.
        let _ = canonicalise_path(self.0);
    }
}

fn make_writable(dir: &Path) -> Result<(), EffectError> {
    let st = ops::lstat(dir)?;
    fs::set_permissions(
        dir,
        fs::Permissions::from_mode((st.mode() & 0o7777) | 0o200),
    )
    .map_err(|e| {
        sys_error(
            format_args!("changing writability of `{}'", dir.display()),
            &e,
        )
    })
}

fn changed(path: &Path, what: &str) -> EffectError {
    EffectError::new(
        guixd_core::effect::EffectErrorKind::Io(libc::EIO),
        format!(
            "file `{}' changed while it was hashed: {what}",
            path.display()
        ),
    )
}

fn warn(stats: &mut DedupStats, message: String) {
    if stats.warnings.len() < DEDUP_WARNINGS_MAX {
        stats.warnings.push(message);
    } else {
        stats.warnings_dropped += 1;
    }
}

/// A value that differs between calls, for temporary names (the daemon
/// uses `rand()`); a clash only costs another attempt.
fn random_u32() -> u32 {
    // Each `RandomState` gets fresh keys, seeded from the OS once per
    // thread and stepped on every call.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    // Truncation keeps 32 well-mixed bits.
    h.finish() as u32
}

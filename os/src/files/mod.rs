//! Store files: uploads (a client's NAR restored into a new item), text
//! items, deduplication into `.links`, reading `.drv` files, and dumps (an
//! item serialised as a NAR for export) — the store-file effects of
//! `guixd_core::effect::Effect`.
//!
//! Keeps true:
//! - an item appears at its final name only complete and canonical: it is
//!   written under a temporary name in the store (one that is never a
//!   valid store path name: `.guixd-upload-<pid>-<id>/item`,
//!   `.guixd-text-<pid>-<n>`) and renamed into place, so a crash at any
//!   point leaves at most an invalid leftover, which the next install of
//!   that path deletes. Validity is the core's business, registered only
//!   after `upload_install`/`write_text` returned;
//! - [`Files`] is `Send + Sync`: uploads and dumps live in tables behind a
//!   mutex held only to look an entry up, and each entry has its own mutex,
//!   so different uploads and dumps proceed in parallel on different
//!   threads;
//! - an unknown upload or dump id is an error, never a panic; discarding an
//!   unknown upload is fine (it may already be gone);
//! - items are not fsynced (the daemon does not fsync them either);
//! - every failure is an `EffectError` worded like the daemon's `SysError`
//!   (`"<what> `<path>': <strerror>"`), with the errno as its kind.

mod dedup;
mod dump;
mod ops;
mod upload;

#[cfg(test)]
mod tests;

pub use dedup::{
    CORRUPTED_LINK_RETRIES_MAX, DEDUP_WARNINGS_MAX, DEDUPLICATION_MIN_SIZE_BYTES, DedupStats,
    Deduplicator, FileOutcome, deduplicate_tree,
};
pub use dump::READ_BUFFER_BYTES;
pub use ops::{
    Owner, STORE_MTIME_S, canonical_mode, canonicalise_path,
    canonicalise_timestamp_and_permissions, delete_path,
};
pub use upload::{PARALLEL_HASH_MIN_BYTES, PREALLOCATE_MIN_BYTES, WRITE_BUFFER_BYTES};

use crate::OsConfig;
use crate::locks::sys_error;
use dump::Dump;
use guixd_core::StorePath;
use guixd_core::effect::{
    DumpId, EffectError, EffectErrorKind, EffectOutput, EffectResult, Measured, UploadId,
    UploadKind,
};
use guixd_core::hash::{Hash, HashAlgo};
use guixd_core::nar::{NarLimits, file_nar_size, hash_file_nar};
use ops::{invalid, lstat_if_exists, set_owner_fd, set_store_mtime_fd};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::hash::Hash as StdHash;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use upload::{Creation, Upload};

/// How many uploads, and separately how many dumps, may be open at once.
/// The core bounds them far lower; this only turns a core bug into an
/// error instead of unbounded descriptors and memory.
pub const STREAMS_MAX: usize = 65_536;

/// How many temporary names `write_text` tries before giving up (a name is
/// taken only by a leftover of a dead process that had our pid).
pub const TEMP_NAME_ATTEMPTS_MAX: u32 = 16;

/// The store's files, and the uploads and dumps in progress.
pub struct Files {
    store: PathBuf,
    owner: Owner,
    limits: NarLimits,
    uploads: Table<UploadId, Upload>,
    dumps: Table<DumpId, Dump>,
    /// Numbers the temporary files of `write_text`.
    text_seq: AtomicU64,
}

// `Os` is shared by every worker thread.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Files>();
};

impl Files {
    /// Nothing is touched on disk until the first effect.
    pub fn new(config: &OsConfig) -> Files {
        Files::at(
            Path::new(config.dirs.store.as_str()),
            Owner::new(config.uid, config.gid),
        )
    }

    /// Files of the store directory `store`, owned by `owner`.
    pub fn at(store: &Path, owner: Owner) -> Files {
        Files {
            store: store.to_path_buf(),
            owner,
            limits: NarLimits::default(),
            uploads: Table::new(),
            dumps: Table::new(),
            text_seq: AtomicU64::new(0),
        }
    }

    /// The same, parsing uploads with `limits` (the core's, so that the two
    /// parsers agree on what they accept).
    pub fn with_nar_limits(mut self, limits: NarLimits) -> Files {
        self.limits = limits;
        self
    }

    /// Creates the temporary location of upload `upload`.
    pub fn upload_start(&self, upload: UploadId, kind: UploadKind, algo: HashAlgo) -> EffectResult {
        let twice = || invalid(format!("guixd bug: upload {} started twice", upload.0));
        // The id names the temporary directory, so a second start must be
        // refused before it touches the first one's directory.
        if self.uploads.get(upload).is_some() {
            return Err(twice());
        }
        let dir = self
            .store
            .join(format!(".guixd-upload-{}-{}", std::process::id(), upload.0));
        // The umask is read for each upload, since the daemon may set it
        // after this was built.
        let creation = Creation {
            owner: self.owner,
            fix_file_modes: umask_may_strip(0o555),
        };
        let started = Upload::start(dir, kind, algo, self.limits.clone(), creation)?;
        // Losing a race with another start of the same id (a core bug
        // twice over) leaves the directory to the winner, whose it is too.
        self.uploads.insert(upload, started).map_err(|_| twice())?;
        Ok(EffectOutput::Done)
    }

    /// Restores the next bytes of the upload's NAR.
    pub fn upload_chunk(&self, upload: UploadId, data: &[u8]) -> EffectResult {
        let entry = self.upload(upload)?;
        lock(&entry).chunk(data)?;
        Ok(EffectOutput::Done)
    }

    /// Checks that the NAR was complete and returns what it measured.
    pub fn upload_finish(&self, upload: UploadId) -> EffectResult {
        let entry = self.upload(upload)?;
        let measured = lock(&entry).finish()?;
        Ok(EffectOutput::Measured(measured))
    }

    /// Deletes what the upload wrote and forgets it; an unknown upload is
    /// already forgotten.
    pub fn upload_discard(&self, upload: UploadId) -> EffectResult {
        if let Some(entry) = self.uploads.remove(upload) {
            lock(&entry).discard()?;
        }
        Ok(EffectOutput::Done)
    }

    /// Moves a finished upload to `dest`, deleting any leftover there; the
    /// upload is forgotten once it is in place.
    pub fn upload_install(&self, upload: UploadId, dest: &StorePath) -> EffectResult {
        let entry = self.upload(upload)?;
        let mut u = lock(&entry);
        u.install(Path::new(dest.as_str()))?;
        drop(u);
        self.uploads.remove(upload);
        Ok(EffectOutput::Done)
    }

    /// Writes `contents` as the regular file `dest` (0444, mtime 1, the
    /// daemon's owner) through a temporary file and a rename, replacing
    /// any leftover.
    pub fn write_text(&self, dest: &StorePath, contents: &[u8]) -> EffectResult {
        let dest = Path::new(dest.as_str());
        let (temp, file) = self.create_text_temp()?;
        let written = (|| {
            let mut file = file;
            file.write_all(contents)
                .map_err(|e| sys_error(format_args!("writing to file `{}'", temp.display()), &e))?;
            file.set_permissions(fs::Permissions::from_mode(0o444))
                .map_err(|e| {
                    sys_error(
                        format_args!("changing mode of `{}' to 444", temp.display()),
                        &e,
                    )
                })?;
            set_store_mtime_fd(&file, &temp)?;
            if self.owner.chown_needed {
                set_owner_fd(&file, &temp, self.owner)?;
            }
            drop(file);
            // A file or symlink is replaced by the rename itself; a
            // directory has to go first.
            if lstat_if_exists(dest)?.is_some_and(|st| st.is_dir()) {
                delete_path(dest)?;
            }
            fs::rename(&temp, dest).map_err(|e| {
                sys_error(
                    format_args!("cannot rename `{}' to `{}'", temp.display(), dest.display()),
                    &e,
                )
            })
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        Ok(EffectOutput::Measured(Measured {
            nar_hash: hash_file_nar(HashAlgo::Sha256, false, contents),
            nar_size: file_nar_size(false, contents.len() as u64),
            content_hash: Hash::sha256(contents),
        }))
    }

    /// Hard-links the files of `path` into `.links`.
    pub fn deduplicate(&self, path: &StorePath) -> EffectResult {
        deduplicate_tree(&self.store, Path::new(path.as_str()))?;
        Ok(EffectOutput::Done)
    }

    /// Reads a whole regular file of the store, refusing anything else and
    /// files larger than `max_bytes`; a missing file is `NotFound`.
    pub fn read_store_file(&self, path: &StorePath, max_bytes: u64) -> EffectResult {
        let path = Path::new(path.as_str());
        // O_NONBLOCK keeps a FIFO from blocking the open; O_NOFOLLOW keeps
        // the read inside the item.
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                let err = sys_error(format_args!("reading file `{}'", path.display()), &e);
                match e.raw_os_error() {
                    Some(libc::ENOENT) => EffectError::new(EffectErrorKind::NotFound, err.message),
                    Some(libc::ELOOP) => {
                        invalid(format!("`{}' is not a regular file", path.display()))
                    }
                    _ => err,
                }
            })?;
        let st = file.metadata().map_err(|e| {
            sys_error(
                format_args!("getting attributes of path `{}'", path.display()),
                &e,
            )
        })?;
        if !st.is_file() {
            return Err(invalid(format!(
                "`{}' is not a regular file",
                path.display()
            )));
        }
        let too_large = |size: u64| {
            invalid(format!(
                "file `{}' is too large ({size} bytes, the limit is {max_bytes})",
                path.display()
            ))
        };
        if st.len() > max_bytes {
            return Err(too_large(st.len()));
        }
        // The size is bounded by `max_bytes` only as far as the file does
        // not grow; reading one byte more than allowed tells.
        let mut bytes = Vec::with_capacity(st.len() as usize);
        (&mut file)
            .take(max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| sys_error(format_args!("reading file `{}'", path.display()), &e))?;
        if bytes.len() as u64 > max_bytes {
            return Err(too_large(bytes.len() as u64));
        }
        Ok(EffectOutput::Bytes(bytes))
    }

    /// Starts serialising `path` as a NAR; a missing path is `NotFound`.
    pub fn dump_start(&self, dump: DumpId, path: &StorePath) -> EffectResult {
        let started = Dump::start(Path::new(path.as_str()))?;
        if self.dumps.insert(dump, started).is_err() {
            return Err(invalid(format!("guixd bug: dump {} started twice", dump.0)));
        }
        Ok(EffectOutput::Done)
    }

    /// The next at most `max_bytes` bytes of the dump; the chunk that ends
    /// the NAR carries its SHA-256 and size.
    pub fn dump_next(&self, dump: DumpId, max_bytes: usize) -> EffectResult {
        let entry = self
            .dumps
            .get(dump)
            .ok_or_else(|| invalid(format!("guixd bug: unknown dump {}", dump.0)))?;
        let (data, end) = lock(&entry).next(max_bytes)?;
        Ok(EffectOutput::DumpChunk { data, end })
    }

    /// Forgets a dump (closing what it had open).
    pub fn dump_end(&self, dump: DumpId) -> EffectResult {
        self.dumps.remove(dump);
        Ok(EffectOutput::Done)
    }

    fn upload(&self, upload: UploadId) -> Result<Arc<Mutex<Upload>>, EffectError> {
        self.uploads
            .get(upload)
            .ok_or_else(|| invalid(format!("guixd bug: unknown upload {}", upload.0)))
    }

    /// Creates `<store>/.guixd-text-<pid>-<n>` for writing, 0444 from the
    /// start.
    fn create_text_temp(&self) -> Result<(PathBuf, File), EffectError> {
        let mut attempts = 0;
        loop {
            let n = self.text_seq.fetch_add(1, Ordering::Relaxed);
            let temp = self
                .store
                .join(format!(".guixd-text-{}-{n}", std::process::id()));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .custom_flags(libc::O_CLOEXEC)
                .open(&temp)
            {
                Ok(file) => return Ok((temp, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    attempts += 1;
                    if attempts >= TEMP_NAME_ATTEMPTS_MAX {
                        return Err(sys_error(
                            format_args!("creating file `{}'", temp.display()),
                            &e,
                        ));
                    }
                    // A dead process's leftover: clear it for a later turn.
                    let _ = fs::remove_file(&temp);
                }
                Err(e) => {
                    return Err(sys_error(
                        format_args!("creating file `{}'", temp.display()),
                        &e,
                    ));
                }
            }
        }
    }
}

impl Drop for Files {
    /// Uploads still open when the daemon stops are deleted, best effort:
    /// nothing refers to them, and nobody is left to report a failure to.
    fn drop(&mut self) {
        for entry in self.uploads.drain() {
            let _ = lock(&entry).discard();
        }
    }
}

/// Entries keyed by id, each behind its own mutex. The table's mutex is
/// held only to look up, add or remove an entry, never during I/O.
struct Table<K, V> {
    entries: Mutex<HashMap<K, Arc<Mutex<V>>>>,
}

impl<K: Copy + Eq + StdHash, V> Table<K, V> {
    fn new() -> Table<K, V> {
        Table {
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Adds an entry; gives it back when the id is taken or the table is
    /// full.
    fn insert(&self, key: K, value: V) -> Result<(), V> {
        let mut entries = lock(&self.entries);
        if entries.contains_key(&key) || entries.len() >= STREAMS_MAX {
            return Err(value);
        }
        entries.insert(key, Arc::new(Mutex::new(value)));
        Ok(())
    }

    fn get(&self, key: K) -> Option<Arc<Mutex<V>>> {
        lock(&self.entries).get(&key).cloned()
    }

    fn remove(&self, key: K) -> Option<Arc<Mutex<V>>> {
        lock(&self.entries).remove(&key)
    }

    fn drain(&self) -> Vec<Arc<Mutex<V>>> {
        lock(&self.entries).drain().map(|(_, v)| v).collect()
    }
}

/// Locks a mutex, ignoring poisoning: every entry's state is valid between
/// statements (a panic cannot leave it half-updated in a way that matters
/// more than the error the panic already is).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether the process's umask clears any of `mode`'s bits, read from
/// `/proc/self/status` (reading it with `umask(2)` would change it for
/// every thread for a moment). When it cannot be read, assume it may.
fn umask_may_strip(mode: u32) -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .is_none_or(|umask| umask & mode != 0)
}

//! One upload: a NAR stream restored, chunk by chunk, into a temporary
//! location in the store, hashed on the way, and finally moved into place.
//!
//! Keeps true:
//! - the NAR's bytes are parsed by the core's push parser, whose state
//!   carries across chunks; file contents go straight from the chunk to the
//!   file (through one bounded buffer that only gathers small pieces), so
//!   memory never depends on file sizes;
//! - every byte is hashed once per hash asked for, as it passes: SHA-256
//!   over the NAR (recursive) or over the file's one-file NAR (flat), plus
//!   the client's algorithm when it is not that same hash;
//! - each node is made canonical as soon as it is complete (a file when its
//!   contents end, a directory when its last entry is written, a symlink at
//!   once), so the finished item needs no second walk: modes 0444/0555,
//!   mtime 1, the daemon's owner;
//! - the item only ever lives under the upload's temporary directory until
//!   [`Upload::install`] renames it to its final name, complete;
//! - after a failure the upload is spent: it repeats its error until it is
//!   discarded.

use super::ops::{
    self, Owner, delete_path, invalid, set_owner, set_owner_fd, set_store_mtime, set_store_mtime_fd,
};
use crate::locks::sys_error;
use guixd_core::effect::{EffectError, Measured, UploadKind};
use guixd_core::hash::{HashAlgo, Hasher};
use guixd_core::nar::{
    FileNarHasher, NarError, NarEvent, NarLimits, NarParser, Outcome, file_nar_size,
};
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Small pieces of file contents are gathered up to this many bytes before
/// they are written; larger pieces are written as they come.
pub const WRITE_BUFFER_BYTES: usize = 128 * 1024;

/// Chunks at least this large are hashed on a helper thread while they are
/// written (or, for flat uploads, with the two hashes side by side): a
/// thread costs tens of microseconds, a mebibyte of SHA-256 half a
/// millisecond.
pub const PARALLEL_HASH_MIN_BYTES: usize = 256 * 1024;

/// Files at least this large are preallocated (`fallocate`), which spares
/// the file system from growing them piece by piece and reports a full
/// disk before the contents arrive.
pub const PREALLOCATE_MIN_BYTES: u64 = 64 * 1024;

/// How the files of an upload are created.
#[derive(Clone, Copy, Debug)]
pub(super) struct Creation {
    pub owner: Owner,
    /// Whether the process's umask may strip bits from 0444/0555, so that
    /// files must be `fchmod`ed after creation.
    pub fix_file_modes: bool,
}

pub(super) struct Upload {
    /// `<store>/.guixd-upload-<pid>-<id>`, private to this upload.
    dir: PathBuf,
    parser: NarParser,
    hashes: Hashes,
    restore: Restore,
    state: State,
}

enum State {
    Receiving,
    Finished(Measured),
    /// Moved into place; nothing of it is left on disk.
    Installed,
    Failed(EffectError),
}

/// The hashes being computed as the bytes pass.
enum Hashes {
    Recursive {
        /// SHA-256 over the NAR.
        nar: Hasher,
        /// The client's algorithm over the NAR, unless it is SHA-256.
        content: Option<Hasher>,
    },
    Flat {
        algo: HashAlgo,
        /// SHA-256 over the one-file NAR of a non-executable file with
        /// these contents, and the client's algorithm over the contents;
        /// both exist once the file's size is known.
        file: Option<(FileNarHasher, Hasher, u64)>,
    },
}

impl Upload {
    /// Creates the upload's temporary directory `dir` (0700), replacing a
    /// leftover of a dead process that had the same pid.
    pub fn start(
        dir: PathBuf,
        kind: UploadKind,
        algo: HashAlgo,
        limits: NarLimits,
        creation: Creation,
    ) -> Result<Upload, EffectError> {
        let mut builder = DirBuilder::new();
        builder.mode(0o700);
        if let Err(e) = builder.create(&dir) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(sys_error(
                    format_args!("creating directory `{}'", dir.display()),
                    &e,
                ));
            }
            delete_path(&dir)?;
            builder.create(&dir).map_err(|e| {
                sys_error(format_args!("creating directory `{}'", dir.display()), &e)
            })?;
        }
        let hashes = match kind {
            UploadKind::Recursive => Hashes::Recursive {
                nar: Hasher::new(HashAlgo::Sha256),
                content: (algo != HashAlgo::Sha256).then(|| Hasher::new(algo)),
            },
            UploadKind::Flat => Hashes::Flat { algo, file: None },
        };
        let item = dir.join("item");
        Ok(Upload {
            dir,
            parser: NarParser::new(limits),
            hashes,
            restore: Restore {
                cur: item.clone(),
                item,
                open_dirs: 0,
                file: None,
                buf: Vec::new(),
                flat: kind == UploadKind::Flat,
                creation,
            },
            state: State::Receiving,
        })
    }

    /// Takes the next bytes of the NAR.
    pub fn chunk(&mut self, data: &[u8]) -> Result<(), EffectError> {
        self.receiving()?;
        let result = self.take_chunk(data);
        if let Err(e) = &result {
            self.fail(e.clone());
        }
        result
    }

    /// Checks that the NAR is complete and returns what it measured. The
    /// item is already canonical.
    pub fn finish(&mut self) -> Result<Measured, EffectError> {
        if let State::Finished(m) = self.state {
            return Ok(m);
        }
        self.receiving()?;
        let result = self.measure();
        match &result {
            Ok(m) => self.state = State::Finished(*m),
            Err(e) => self.fail(e.clone()),
        }
        result
    }

    /// Moves the finished item to `dest`, first deleting whatever is
    /// there, then removes the temporary directory.
    pub fn install(&mut self, dest: &Path) -> Result<(), EffectError> {
        match &self.state {
            State::Finished(_) => {}
            State::Receiving => return Err(invalid("guixd bug: installing an unfinished upload")),
            State::Installed => return Err(invalid("guixd bug: upload installed twice")),
            State::Failed(e) => return Err(e.clone()),
        }
        let item = self.restore.item.clone();
        delete_path(dest)?;
        rename_item(&item, dest)?;
        self.state = State::Installed;
        // The directory is empty now; a failure to remove it leaves only
        // an empty directory that nothing refers to, which is no reason to
        // fail an item that is in place.
        let _ = fs::remove_dir(&self.dir);
        Ok(())
    }

    /// Deletes whatever the upload wrote.
    pub fn discard(&mut self) -> Result<(), EffectError> {
        self.restore.file = None;
        if matches!(self.state, State::Installed) {
            return Ok(());
        }
        self.state = State::Failed(invalid("upload was discarded"));
        delete_path(&self.dir).map(|_| ())
    }

    fn receiving(&self) -> Result<(), EffectError> {
        match &self.state {
            State::Receiving => Ok(()),
            State::Finished(_) | State::Installed => Err(invalid(
                "guixd bug: data for an upload that is already complete",
            )),
            State::Failed(e) => Err(e.clone()),
        }
    }

    fn fail(&mut self, e: EffectError) {
        // Closing the file now frees the descriptor even if the discard
        // comes late.
        self.restore.file = None;
        self.state = State::Failed(e);
    }

    fn take_chunk(&mut self, data: &[u8]) -> Result<(), EffectError> {
        if self.parser.is_done() {
            if data.is_empty() {
                return Ok(());
            }
            return Err(nar_error(NarError::TrailingBytes { count: data.len() }));
        }
        let parallel = data.len() >= PARALLEL_HASH_MIN_BYTES;
        let Upload {
            parser,
            hashes,
            restore,
            ..
        } = self;
        match hashes {
            Hashes::Recursive { nar, content } => {
                // The core sends exactly the NAR's bytes, so the whole chunk
                // is hashed at once (a bad chunk fails the upload anyway),
                // beside the writing when the chunk is worth a thread.
                let mut hashers = (nar, content);
                let hash = |(nar, content): &mut (&mut Hasher, &mut Option<Hasher>)| {
                    nar.update(data);
                    if let Some(h) = content.as_mut() {
                        h.update(data);
                    }
                };
                let mut write = || restore_chunk(parser, restore, data, None);
                if parallel {
                    beside(&mut hashers, hash, write)?
                } else {
                    hash(&mut hashers);
                    write()
                }
            }
            Hashes::Flat { algo, file } => {
                // The contents are only known once parsed: write them
                // first, then run the two hashes side by side.
                let mut ranges = Vec::new();
                restore_chunk(parser, restore, data, Some((*algo, file, &mut ranges)))?;
                let Some((nar, content, _)) = file.as_mut() else {
                    return Ok(());
                };
                let mut content = content;
                let hash_content = |content: &mut &mut Hasher| {
                    for r in &ranges {
                        content.update(&data[r.clone()]);
                    }
                };
                let mut hash_nar = || {
                    ranges.iter().try_for_each(|r| {
                        nar.update(&data[r.clone()])
                            .map_err(|e| invalid(format!("guixd bug: {e}")))
                    })
                };
                if parallel {
                    beside(&mut content, hash_content, hash_nar)?
                } else {
                    hash_content(&mut content);
                    hash_nar()
                }
            }
        }
    }

    fn measure(&mut self) -> Result<Measured, EffectError> {
        if !self.parser.is_done() {
            return Err(nar_error(NarError::Truncated));
        }
        // Complete NARs close every file and directory they open.
        self.restore.file = None;
        match &mut self.hashes {
            Hashes::Recursive { nar, content } => {
                let nar_hash = nar.clone().finish();
                Ok(Measured {
                    nar_hash,
                    nar_size: self.parser.consumed_bytes(),
                    content_hash: content.take().map_or(nar_hash, Hasher::finish),
                })
            }
            Hashes::Flat { file, .. } => {
                let Some((nar, content, size_bytes)) = file.take() else {
                    return Err(invalid("regular file expected"));
                };
                let nar_hash = nar
                    .finish()
                    .map_err(|e| invalid(format!("guixd bug: {e}")))?;
                Ok(Measured {
                    nar_hash,
                    nar_size: file_nar_size(false, size_bytes),
                    content_hash: content.finish(),
                })
            }
        }
    }
}

/// Renames the item into place. A directory moving to another parent needs
/// write permission on itself (its `..` changes); root has it anyway, a
/// rootless daemon gets it for the moment of the rename. Either way the
/// moved directory is checked to still carry the canonical mtime, which
/// some file systems touch when `..` changes.
fn rename_item(item: &Path, dest: &Path) -> Result<(), EffectError> {
    let rename_error = |e: &io::Error| {
        sys_error(
            format_args!("cannot rename `{}' to `{}'", item.display(), dest.display()),
            e,
        )
    };
    match fs::rename(item, dest) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            let st = ops::lstat(item)?;
            if !st.is_dir() {
                return Err(rename_error(&e));
            }
            fs::set_permissions(item, fs::Permissions::from_mode(0o755))
                .map_err(|e| sys_error(format_args!("making `{}' writable", item.display()), &e))?;
            fs::rename(item, dest).map_err(|e| rename_error(&e))?;
            ops::canonicalise_path(dest)?;
            return Ok(());
        }
        Err(e) => return Err(rename_error(&e)),
    }
    let st = ops::lstat(dest)?;
    if st.is_dir() && st.mtime() != ops::STORE_MTIME_S {
        set_store_mtime(dest)?;
    }
    Ok(())
}

/// Parses `data`, the next bytes of the NAR, and writes what they hold.
/// For a flat upload, also starts its hashes at the file's header and
/// collects where in `data` the file's contents are.
fn restore_chunk(
    parser: &mut NarParser,
    restore: &mut Restore,
    data: &[u8],
    mut flat: Option<FlatHashing<'_>>,
) -> Result<(), EffectError> {
    let mut pos = 0;
    while pos < data.len() {
        let step = parser.feed(&data[pos..]).map_err(nar_error)?;
        let start = pos;
        pos += step.consumed;
        match step.outcome {
            Outcome::NeedMore => break,
            Outcome::Done => {
                if pos < data.len() {
                    return Err(nar_error(NarError::TrailingBytes {
                        count: data.len() - pos,
                    }));
                }
                break;
            }
            Outcome::Event(event) => {
                if let Some((algo, file, ranges)) = flat.as_mut() {
                    match event {
                        NarEvent::File { size_bytes, .. } => {
                            **file = Some((
                                FileNarHasher::new(HashAlgo::Sha256, false, size_bytes),
                                Hasher::new(*algo),
                                size_bytes,
                            ));
                        }
                        // File contents are handed out as sub-slices of the
                        // input, so what this step consumed is the data.
                        NarEvent::FileData(d) => {
                            debug_assert_eq!(d.len(), step.consumed);
                            ranges.push(start..pos);
                        }
                        _ => {}
                    }
                }
                restore.event(event)?;
            }
        }
    }
    Ok(())
}

/// What a flat upload's parse needs: the client's algorithm, the slot for
/// its hashers, and where the contents' ranges go.
type FlatHashing<'a> = (
    HashAlgo,
    &'a mut Option<(FileNarHasher, Hasher, u64)>,
    &'a mut Vec<Range<usize>>,
);

/// Runs `side(state)` on a helper thread while `main()` runs on this one,
/// and returns what `main` returned once both are done. When no thread can
/// be had, `side` runs here afterwards; a panic on the helper is reported
/// as a bug, since `state` may then be half-updated.
fn beside<S: Send, R>(
    state: &mut S,
    side: impl Fn(&mut S) + Sync,
    main: impl FnOnce() -> R,
) -> Result<R, EffectError> {
    let cell = Mutex::new(state);
    std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name("guixd-hash".into())
            .spawn_scoped(scope, || {
                side(&mut cell.lock().unwrap_or_else(PoisonError::into_inner))
            });
        let result = main();
        match helper {
            Ok(h) => h
                .join()
                .map_err(|_| invalid("guixd bug: the hashing thread panicked"))?,
            Err(_) => side(&mut cell.lock().unwrap_or_else(PoisonError::into_inner)),
        }
        Ok(result)
    })
}

fn nar_error(e: NarError) -> EffectError {
    invalid(e.to_string())
}

/// Writes the tree the events describe below the item's path.
struct Restore {
    /// `<dir>/item`, the root node.
    item: PathBuf,
    /// The node being written, or the innermost open directory.
    cur: PathBuf,
    open_dirs: usize,
    file: Option<File>,
    /// Contents not yet written to `file`.
    buf: Vec<u8>,
    /// Whether only one regular file may come (and never executable).
    flat: bool,
    creation: Creation,
}

impl Restore {
    fn event(&mut self, event: NarEvent<'_>) -> Result<(), EffectError> {
        match event {
            NarEvent::Directory { name } => {
                if self.flat {
                    return Err(invalid("regular file expected"));
                }
                self.enter(name);
                let mut builder = DirBuilder::new();
                builder.mode(0o755);
                builder.create(&self.cur).map_err(|e| {
                    sys_error(
                        format_args!("creating directory `{}'", self.cur.display()),
                        &e,
                    )
                })?;
                self.open_dirs += 1;
            }
            NarEvent::DirectoryEnd => {
                // Every entry is written: from now on the directory does
                // not change, so it can be made canonical for good.
                fs::set_permissions(&self.cur, fs::Permissions::from_mode(0o555)).map_err(|e| {
                    sys_error(
                        format_args!("changing mode of `{}' to 555", self.cur.display()),
                        &e,
                    )
                })?;
                set_store_mtime(&self.cur)?;
                if self.creation.owner.chown_needed {
                    set_owner(&self.cur, self.creation.owner)?;
                }
                self.open_dirs -= 1;
                self.leave();
            }
            NarEvent::File {
                name,
                executable,
                size_bytes,
            } => {
                self.enter(name);
                let mode = if executable && !self.flat {
                    0o555
                } else {
                    0o444
                };
                // The file is created with its final mode: a new file's
                // descriptor is writable whatever the mode says.
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&self.cur)
                    .map_err(|e| {
                        sys_error(format_args!("creating file `{}'", self.cur.display()), &e)
                    })?;
                if self.creation.fix_file_modes {
                    rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(mode)).map_err(
                        |e| {
                            sys_error(
                                format_args!(
                                    "changing mode of `{}' to {mode:o}",
                                    self.cur.display()
                                ),
                                &e.into(),
                            )
                        },
                    )?;
                }
                if size_bytes >= PREALLOCATE_MIN_BYTES {
                    preallocate(&file, size_bytes)?;
                }
                self.file = Some(file);
            }
            NarEvent::FileData(data) => self.write(data)?,
            NarEvent::FileEnd => {
                self.flush()?;
                let Some(file) = self.file.take() else {
                    return Err(invalid("guixd bug: file ended without being open"));
                };
                set_store_mtime_fd(&file, &self.cur)?;
                if self.creation.owner.chown_needed {
                    set_owner_fd(&file, &self.cur, self.creation.owner)?;
                }
                drop(file);
                self.leave();
            }
            NarEvent::Symlink { name, target } => {
                if self.flat {
                    return Err(invalid("regular file expected"));
                }
                self.enter(name);
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &self.cur).map_err(|e| {
                    sys_error(
                        format_args!(
                            "creating symlink from `{}' to `{}'",
                            self.cur.display(),
                            String::from_utf8_lossy(target)
                        ),
                        &e,
                    )
                })?;
                set_store_mtime(&self.cur)?;
                if self.creation.owner.chown_needed {
                    set_owner(&self.cur, self.creation.owner)?;
                }
                self.leave();
            }
        }
        Ok(())
    }

    /// Moves to the node `name` inside the innermost open directory (the
    /// root node has an empty name and is the item itself).
    fn enter(&mut self, name: &[u8]) {
        if self.open_dirs > 0 {
            self.cur.push(OsStr::from_bytes(name));
        }
    }

    /// Moves back up after a node is complete.
    fn leave(&mut self) {
        if self.open_dirs > 0 {
            self.cur.pop();
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<(), EffectError> {
        if self.buf.len() + data.len() > WRITE_BUFFER_BYTES {
            self.flush()?;
        }
        if data.len() >= WRITE_BUFFER_BYTES {
            return self.write_through(data);
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(WRITE_BUFFER_BYTES);
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), EffectError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let result = self.write_through(&buf);
        self.buf = buf;
        self.buf.clear();
        result
    }

    fn write_through(&mut self, data: &[u8]) -> Result<(), EffectError> {
        let Some(file) = self.file.as_mut() else {
            return Err(invalid("guixd bug: file data without an open file"));
        };
        file.write_all(data)
            .map_err(|e| sys_error(format_args!("writing to file `{}'", self.cur.display()), &e))
    }
}

/// Reserves the file's blocks; file systems that cannot are left alone, as
/// this is only an optimisation (and an early "disk full").
fn preallocate(file: &File, size_bytes: u64) -> Result<(), EffectError> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size_bytes) {
        Ok(()) => Ok(()),
        Err(e)
            if e == rustix::io::Errno::OPNOTSUPP
                || e == rustix::io::Errno::NOSYS
                || e == rustix::io::Errno::INVAL =>
        {
            Ok(())
        }
        Err(e) => Err(sys_error(
            format_args!("preallocating file of {size_bytes} bytes"),
            &e.into(),
        )),
    }
}

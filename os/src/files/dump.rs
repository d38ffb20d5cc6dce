//! One dump: a store item serialised as a NAR, handed out in bounded
//! chunks, with the SHA-256 and size of the whole NAR at the end.
//!
//! Keeps true:
//! - the bytes are the core's [`NarWriter`]'s, so they are canonical: the
//!   same as the daemon's `dumpPath` for the same tree;
//! - the walk is lazy and depth-first: a directory is listed (and sorted
//!   bytewise) when the walk enters it, so memory is the names of the
//!   directories currently open plus one read buffer, whatever the item's
//!   size; a file is read piece by piece, never whole;
//! - no chunk is longer than asked for; bytes the writer produced beyond
//!   that (at most one node's tokens) wait for the next chunk;
//! - every byte handed out is hashed exactly once, in order, and the chunk
//!   that completes the NAR carries the hash and size;
//! - after a failure the dump is spent and repeats its error.

use super::ops::{invalid, lstat, unsupported_type};
use crate::locks::sys_error;
use guixd_core::effect::{EffectError, EffectErrorKind};
use guixd_core::hash::{Hash, HashAlgo, Hasher};
use guixd_core::nar::{NarEvent, NarWriteError, NarWriter};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The largest single read from a file, whatever the chunk size.
pub const READ_BUFFER_BYTES: usize = 1 << 20;

/// A chunk of the NAR, with the whole NAR's SHA-256 and size once it is
/// complete.
pub(super) type Chunk = (Vec<u8>, Option<(Hash, u64)>);

pub(super) struct Dump {
    writer: NarWriter,
    hasher: Option<Hasher>,
    size_bytes: u64,
    /// Bytes the writer produced that did not fit in the last chunk.
    pending: Vec<u8>,
    /// Open directories, innermost last.
    dirs: Vec<DirCursor>,
    file: Option<OpenFile>,
    scratch: Vec<u8>,
    end: Option<(Hash, u64)>,
    failed: Option<EffectError>,
}

struct DirCursor {
    path: PathBuf,
    /// The entries not yet visited, sorted in reverse, so the next one is
    /// last.
    names: Vec<OsString>,
}

struct OpenFile {
    file: File,
    path: PathBuf,
    left_bytes: u64,
}

impl Dump {
    /// Starts a dump of `root`; a missing root is `NotFound`.
    pub fn start(root: &Path) -> Result<Dump, EffectError> {
        let mut dump = Dump {
            writer: NarWriter::new(),
            hasher: Some(Hasher::new(HashAlgo::Sha256)),
            size_bytes: 0,
            pending: Vec::new(),
            dirs: Vec::new(),
            file: None,
            scratch: Vec::new(),
            end: None,
            failed: None,
        };
        let mut out = Vec::new();
        match dump.visit(root, b"", &mut out) {
            Ok(()) => {}
            Err(e) if e.kind == EffectErrorKind::Io(libc::ENOENT) => {
                return Err(EffectError::new(EffectErrorKind::NotFound, e.message));
            }
            Err(e) => return Err(e),
        }
        dump.pending = out;
        Ok(dump)
    }

    /// The next at most `max_bytes` bytes of the NAR (at least one byte
    /// while any remain), and the NAR's hash and size with the last ones.
    pub fn next(&mut self, max_bytes: usize) -> Result<Chunk, EffectError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if let Some(end) = self.end {
            return Ok((Vec::new(), Some(end)));
        }
        let result = self.produce(max_bytes.max(1));
        if let Err(e) = &result {
            self.file = None;
            self.dirs.clear();
            self.failed = Some(e.clone());
        }
        result
    }

    fn produce(&mut self, max_bytes: usize) -> Result<Chunk, EffectError> {
        let mut out = std::mem::take(&mut self.pending);
        out.reserve(max_bytes.saturating_sub(out.len()));
        while out.len() < max_bytes && !self.writer.is_done() {
            self.step(&mut out, max_bytes)?;
        }
        if out.len() > max_bytes {
            self.pending = out.split_off(max_bytes);
        }
        self.size_bytes += out.len() as u64;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&out);
        }
        if self.writer.is_done() && self.pending.is_empty() {
            if let Some(h) = self.hasher.take() {
                self.end = Some((h.finish(), self.size_bytes));
            }
        }
        Ok((out, self.end))
    }

    /// Writes the next piece of the NAR to `out`: some file contents (no
    /// more than fit below `max_bytes`), the next entry, or the end of a
    /// directory.
    fn step(&mut self, out: &mut Vec<u8>, max_bytes: usize) -> Result<(), EffectError> {
        if let Some(open) = self.file.as_mut() {
            let room = max_bytes
                .saturating_sub(out.len())
                .clamp(1, READ_BUFFER_BYTES);
            let want = usize::try_from(open.left_bytes)
                .unwrap_or(usize::MAX)
                .min(room);
            if self.scratch.len() < want {
                self.scratch.resize(want, 0);
            }
            let n = read_some(&mut open.file, &mut self.scratch[..want]).map_err(|e| {
                sys_error(format_args!("reading file `{}'", open.path.display()), &e)
            })?;
            if n == 0 {
                return Err(EffectError::new(
                    EffectErrorKind::Io(libc::EIO),
                    format!(
                        "reading file `{}': unexpected end-of-file (the file shrank while it was read)",
                        open.path.display()
                    ),
                ));
            }
            open.left_bytes -= n as u64;
            let path = open.path.clone();
            write(
                &mut self.writer,
                NarEvent::FileData(&self.scratch[..n]),
                out,
                &path,
            )?;
            if self.file.as_ref().is_some_and(|f| f.left_bytes == 0) {
                self.file = None;
                write(&mut self.writer, NarEvent::FileEnd, out, &path)?;
            }
            return Ok(());
        }
        let Some(top) = self.dirs.last_mut() else {
            return Err(invalid("guixd bug: dump walked past the end of the item"));
        };
        match top.names.pop() {
            Some(name) => {
                let path = top.path.join(&name);
                self.visit(&path, name.as_bytes(), out)
            }
            None => {
                let path = top.path.clone();
                self.dirs.pop();
                write(&mut self.writer, NarEvent::DirectoryEnd, out, &path)
            }
        }
    }

    /// Starts the node at `path`, called `name` in its directory.
    fn visit(&mut self, path: &Path, name: &[u8], out: &mut Vec<u8>) -> Result<(), EffectError> {
        let st = lstat(path)?;
        let ft = st.file_type();
        if ft.is_file() {
            // The size and mode come from the open file, so they describe
            // the bytes that will be read.
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| sys_error(format_args!("opening file `{}'", path.display()), &e))?;
            let st = file.metadata().map_err(|e| {
                sys_error(
                    format_args!("getting attributes of path `{}'", path.display()),
                    &e,
                )
            })?;
            let size_bytes = st.len();
            let event = NarEvent::File {
                name,
                executable: st.mode() & 0o100 != 0,
                size_bytes,
            };
            write(&mut self.writer, event, out, path)?;
            if size_bytes == 0 {
                write(&mut self.writer, NarEvent::FileEnd, out, path)?;
            } else {
                self.file = Some(OpenFile {
                    file,
                    path: path.to_path_buf(),
                    left_bytes: size_bytes,
                });
            }
        } else if ft.is_dir() {
            let mut names = Vec::new();
            let entries = fs::read_dir(path).map_err(|e| {
                sys_error(format_args!("opening directory `{}'", path.display()), &e)
            })?;
            for entry in entries {
                let entry = entry.map_err(|e| {
                    sys_error(format_args!("reading directory `{}'", path.display()), &e)
                })?;
                names.push(entry.file_name());
            }
            names.sort_unstable_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
            write(&mut self.writer, NarEvent::Directory { name }, out, path)?;
            self.dirs.push(DirCursor {
                path: path.to_path_buf(),
                names,
            });
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(|e| {
                sys_error(
                    format_args!("reading symbolic link `{}'", path.display()),
                    &e,
                )
            })?;
            let event = NarEvent::Symlink {
                name,
                target: target.as_os_str().as_bytes(),
            };
            write(&mut self.writer, event, out, path)?;
        } else {
            return Err(unsupported_type(path));
        }
        Ok(())
    }
}

/// Feeds one event to the writer. The walk only produces valid events, so
/// an error means the tree changed under it (a file grew) or a bug.
fn write(
    writer: &mut NarWriter,
    event: NarEvent<'_>,
    out: &mut Vec<u8>,
    path: &Path,
) -> Result<(), EffectError> {
    writer
        .write(event, out)
        .map_err(|e: NarWriteError| invalid(format!("dumping `{}': {e}", path.display())))
}

/// One `read`, retried on `EINTR`.
fn read_some(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

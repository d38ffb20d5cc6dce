//! The streaming NAR writer, and the NAR of a single regular file (used for
//! add-to-store of one file and for `.links` names, spec 02 §11).
//!
//! Keeps true:
//! - the writer appends bytes only for events that keep the NAR valid:
//!   on a misuse it returns an error and neither its state nor the output
//!   changes;
//! - bytes appended so far are always a prefix of a canonical NAR, and once
//!   [`NarWriter::is_done`] they are one, byte for byte what the C++
//!   daemon's `dumpPath` and Guile's `write-file` produce for the same tree;
//! - file contents pass through once and are never held beyond the call.

use super::{
    NAR_MAGIC, NarEvent, is_valid_name, is_valid_target, padding_len, put_token, put_tokens,
};
use crate::hash::{Hash, HashAlgo, Hasher};

/// A misuse of [`NarWriter`] or [`FileNarHasher`]: the events do not form
/// a valid NAR. When the events come from a file tree that changed while
/// it was read (a file grew or shrank), this is how that shows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NarWriteError {
    #[error("NAR writer: {event} event not allowed {state}")]
    UnexpectedEvent {
        event: &'static str,
        state: &'static str,
    },
    #[error("NAR writer: the root node must have an empty name, not `{0}'")]
    RootNamed(String),
    #[error("NAR writer: invalid file name `{0}'")]
    InvalidName(String),
    #[error("NAR writer: entry `{name}' does not sort after `{previous}'")]
    NotSorted { previous: String, name: String },
    #[error("NAR writer: invalid symlink target `{0}'")]
    InvalidSymlinkTarget(String),
    #[error("NAR writer: file data exceeds the declared size of {size_bytes} bytes")]
    FileTooLong { size_bytes: u64 },
    #[error(
        "NAR writer: file ended {missing_bytes} bytes short of its declared size of {size_bytes} bytes"
    )]
    FileTooShort { size_bytes: u64, missing_bytes: u64 },
}

/// Writes a NAR from [`NarEvent`]s, appending its bytes to a caller's
/// buffer, so a caller can flush the buffer between events and write a
/// file of any size in chunks.
///
/// The events are those the parser reports: the root node (with an empty
/// name), and inside each directory its entries in strictly increasing
/// bytewise name order, each file as `File`, `FileData`* adding up to its
/// size, `FileEnd`. The writer keeps one name per open directory.
#[derive(Clone, Debug, Default)]
pub struct NarWriter {
    /// The last entry name of each open directory, innermost last; empty
    /// before its first entry.
    dirs: Vec<Vec<u8>>,
    state: WriterState,
}

impl NarWriter {
    pub fn new() -> NarWriter {
        NarWriter::default()
    }

    /// Appends the bytes of `event` to `out`, or explains why `event`
    /// cannot come next (and then appends nothing).
    pub fn write(&mut self, event: NarEvent<'_>, out: &mut Vec<u8>) -> Result<(), NarWriteError> {
        match (self.state, event) {
            (WriterState::Start | WriterState::InDir, NarEvent::Directory { name }) => {
                self.start_node(name, out)?;
                put_tokens(out, &[b"(", b"type", b"directory"]);
                self.dirs.push(Vec::new());
                self.state = WriterState::InDir;
            }
            (
                WriterState::Start | WriterState::InDir,
                NarEvent::File {
                    name,
                    executable,
                    size_bytes,
                },
            ) => {
                self.start_node(name, out)?;
                put_file_header(out, executable, size_bytes);
                self.state = WriterState::InFile {
                    size_bytes,
                    left_bytes: size_bytes,
                };
            }
            (WriterState::Start | WriterState::InDir, NarEvent::Symlink { name, target }) => {
                if !is_valid_target(target) {
                    let shown = String::from_utf8_lossy(target).into_owned();
                    return Err(NarWriteError::InvalidSymlinkTarget(shown));
                }
                self.start_node(name, out)?;
                put_tokens(out, &[b"(", b"type", b"symlink", b"target", target, b")"]);
                self.node_closed(out);
            }
            (WriterState::InDir, NarEvent::DirectoryEnd) => {
                put_token(out, b")");
                self.dirs.pop();
                self.node_closed(out);
            }
            (
                WriterState::InFile {
                    size_bytes,
                    left_bytes,
                },
                NarEvent::FileData(data),
            ) => {
                let left_bytes = left_bytes
                    .checked_sub(data.len() as u64)
                    .ok_or(NarWriteError::FileTooLong { size_bytes })?;
                out.extend_from_slice(data);
                self.state = WriterState::InFile {
                    size_bytes,
                    left_bytes,
                };
            }
            (
                WriterState::InFile {
                    size_bytes,
                    left_bytes,
                },
                NarEvent::FileEnd,
            ) => {
                if left_bytes > 0 {
                    return Err(NarWriteError::FileTooShort {
                        size_bytes,
                        missing_bytes: left_bytes,
                    });
                }
                out.extend_from_slice(file_nar_suffix(size_bytes));
                self.node_closed(out);
            }
            (state, event) => {
                return Err(NarWriteError::UnexpectedEvent {
                    event: event_kind(&event),
                    state: state.describe(),
                });
            }
        }
        Ok(())
    }

    /// Whether the root node is closed: the bytes written form a NAR.
    pub fn is_done(&self) -> bool {
        self.state == WriterState::Done
    }
}

/// The NAR of a single regular file with these contents.
pub fn file_nar(executable: bool, contents: &[u8]) -> Vec<u8> {
    let size_bytes = contents.len() as u64;
    let mut out = file_nar_prefix(executable, size_bytes);
    out.extend_from_slice(contents);
    out.extend_from_slice(file_nar_suffix(size_bytes));
    out
}

/// The bytes of a single-file NAR before the file's contents: the header
/// through the contents' size. The NAR is this, the contents, then
/// [`file_nar_suffix`].
pub fn file_nar_prefix(executable: bool, size_bytes: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(136);
    put_token(&mut out, NAR_MAGIC);
    put_file_header(&mut out, executable, size_bytes);
    out
}

/// The bytes of a regular file's NAR node after its contents: the padding
/// and the closing `)`.
pub fn file_nar_suffix(size_bytes: u64) -> &'static [u8] {
    &FILE_SUFFIXES[7 - padding_len(size_bytes)..]
}

/// The size of the single-file NAR of a file of `size_bytes`, without
/// building it.
pub fn file_nar_size(executable: bool, size_bytes: u64) -> u64 {
    file_nar_prefix(executable, size_bytes).len() as u64
        + size_bytes
        + file_nar_suffix(size_bytes).len() as u64
}

/// The hash of the single-file NAR of `contents`, without building it.
pub fn hash_file_nar(algo: HashAlgo, executable: bool, contents: &[u8]) -> Hash {
    let mut h = Hasher::new(algo);
    h.update(&file_nar_prefix(executable, contents.len() as u64));
    h.update(contents);
    h.update(file_nar_suffix(contents.len() as u64));
    h.finish()
}

/// Hashes the single-file NAR of a file read in chunks, without copying
/// the chunks: the size is declared up front (from `fstat`), and a file
/// that turns out longer or shorter is an error, as in the writer. This is
/// how `.links` names are computed (SHA-256, spec 02 §11).
#[derive(Clone, Debug)]
pub struct FileNarHasher {
    hasher: Hasher,
    size_bytes: u64,
    left_bytes: u64,
}

impl FileNarHasher {
    pub fn new(algo: HashAlgo, executable: bool, size_bytes: u64) -> FileNarHasher {
        let mut hasher = Hasher::new(algo);
        hasher.update(&file_nar_prefix(executable, size_bytes));
        FileNarHasher {
            hasher,
            size_bytes,
            left_bytes: size_bytes,
        }
    }

    /// Hashes the next bytes of the contents.
    pub fn update(&mut self, data: &[u8]) -> Result<(), NarWriteError> {
        self.left_bytes =
            self.left_bytes
                .checked_sub(data.len() as u64)
                .ok_or(NarWriteError::FileTooLong {
                    size_bytes: self.size_bytes,
                })?;
        self.hasher.update(data);
        Ok(())
    }

    /// The NAR's hash, once all the declared contents were hashed.
    pub fn finish(mut self) -> Result<Hash, NarWriteError> {
        if self.left_bytes > 0 {
            return Err(NarWriteError::FileTooShort {
                size_bytes: self.size_bytes,
                missing_bytes: self.left_bytes,
            });
        }
        self.hasher.update(file_nar_suffix(self.size_bytes));
        Ok(self.hasher.finish())
    }
}

/// Seven zero bytes, then the `)` token: the tail of every regular file's
/// node is a suffix of this.
const FILE_SUFFIXES: [u8; 23] = [
    0, 0, 0, 0, 0, 0, 0, // padding
    1, 0, 0, 0, 0, 0, 0, 0, // length 1
    b')', 0, 0, 0, 0, 0, 0, 0,
];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum WriterState {
    /// Nothing written yet: the root node comes next.
    #[default]
    Start,
    /// Inside the innermost open directory: an entry or its end comes next.
    InDir,
    /// Inside a regular file's contents.
    InFile { size_bytes: u64, left_bytes: u64 },
    /// The root node is closed.
    Done,
}

impl WriterState {
    fn describe(self) -> &'static str {
        match self {
            WriterState::Start => "at the start of the NAR",
            WriterState::InDir => "in a directory",
            WriterState::InFile { .. } => "in a regular file",
            WriterState::Done => "after the end of the NAR",
        }
    }
}

fn event_kind(event: &NarEvent<'_>) -> &'static str {
    match event {
        NarEvent::Directory { .. } => "Directory",
        NarEvent::DirectoryEnd => "DirectoryEnd",
        NarEvent::File { .. } => "File",
        NarEvent::FileData(_) => "FileData",
        NarEvent::FileEnd => "FileEnd",
        NarEvent::Symlink { .. } => "Symlink",
    }
}

/// Appends a regular node up to its contents: `(`, its type, the
/// executable marker, `contents` and the size.
fn put_file_header(out: &mut Vec<u8>, executable: bool, size_bytes: u64) {
    put_tokens(out, &[b"(", b"type", b"regular"]);
    if executable {
        put_tokens(out, &[b"executable", b""]);
    }
    put_token(out, b"contents");
    out.extend_from_slice(&size_bytes.to_le_bytes());
}

impl NarWriter {
    /// Checks a node's name and writes what precedes the node itself: the
    /// header for the root, the entry's opening for any other node. The
    /// caller checked that the state allows a node.
    fn start_node(&mut self, name: &[u8], out: &mut Vec<u8>) -> Result<(), NarWriteError> {
        let Some(last) = self.dirs.last_mut() else {
            if !name.is_empty() {
                let shown = String::from_utf8_lossy(name).into_owned();
                return Err(NarWriteError::RootNamed(shown));
            }
            put_token(out, NAR_MAGIC);
            return Ok(());
        };
        if !is_valid_name(name) {
            let shown = String::from_utf8_lossy(name).into_owned();
            return Err(NarWriteError::InvalidName(shown));
        }
        if name <= last.as_slice() {
            return Err(NarWriteError::NotSorted {
                previous: String::from_utf8_lossy(last).into_owned(),
                name: String::from_utf8_lossy(name).into_owned(),
            });
        }
        last.clear();
        last.extend_from_slice(name);
        put_tokens(out, &[b"entry", b"(", b"name", name, b"node"]);
        Ok(())
    }

    /// After a node's `)`: the NAR ends with the root; an entry's node is
    /// followed by the entry's own `)`.
    fn node_closed(&mut self, out: &mut Vec<u8>) {
        if self.dirs.is_empty() {
            self.state = WriterState::Done;
        } else {
            put_token(out, b")");
            self.state = WriterState::InDir;
        }
    }
}

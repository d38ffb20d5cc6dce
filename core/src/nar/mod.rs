//! NAR ("nix-archive-1"), the store's serialisation of a file tree: a
//! push-based streaming parser, a streaming writer, and NAR hashing helpers
//! (spec 02 §5 and §11).
//!
//! Every token of a NAR is a wire string: a little-endian u64 length, the
//! bytes, and zero padding up to a multiple of 8. The accepted grammar is
//! the canonical one, which is what every writer (the C++ daemon's
//! `dumpPath`, Guile's `write-file`, this module's [`NarWriter`]) produces:
//!
//! ```text
//! nar   := "nix-archive-1" node
//! node  := "(" "type" ( "regular" ["executable" ""] "contents" u64 bytes pad
//!                     | "symlink" "target" TARGET
//!                     | "directory" entry* ) ")"
//! entry := "entry" "(" "name" NAME "node" node ")"
//! ```
//!
//! Keeps true:
//! - the parser accepts only canonical NARs, and never a NAR the C++
//!   daemon's `parseDump` rejects: it is stricter (sorted entries, fields in
//!   canonical order, an empty `executable` value, a non-empty symlink
//!   target without NUL), never looser;
//! - the parser never consumes a byte past the end of the NAR, and its
//!   memory is bounded by [`NarLimits`] (one last name per open directory),
//!   whatever the file sizes: file contents are handed out as sub-slices of
//!   the caller's input, never copied;
//! - the writer only ever produces NARs the parser accepts (with limits
//!   wide enough), and on a misuse it returns an error without writing.
//!
//! Parser and writer speak the same [`NarEvent`]s, so a parsed NAR can be
//! fed straight back into a writer and comes out byte for byte the same.

mod parser;
mod tree;
mod writer;

pub use parser::{NarError, NarParser, Outcome, Step, parse_complete};
pub use tree::NarTree;
pub use writer::{
    FileNarHasher, NarWriteError, NarWriter, file_nar, file_nar_prefix, file_nar_size,
    file_nar_suffix, hash_file_nar,
};

/// The first token of every NAR.
pub const NAR_MAGIC: &[u8] = b"nix-archive-1";

/// One step of a NAR's structure, as the parser reports it and the writer
/// takes it.
///
/// Names and targets are raw bytes: store file names need not be UTF-8. A
/// regular file is `File`, then zero or more non-empty `FileData` chunks
/// adding up to exactly `size_bytes`, then `FileEnd`. A directory is
/// `Directory`, its entries in strictly increasing bytewise name order, then
/// `DirectoryEnd`. The root node has the empty name; every other node has a
/// valid entry name (non-empty, not `.` or `..`, without `/` or NUL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NarEvent<'a> {
    /// A directory begins.
    Directory { name: &'a [u8] },
    /// The innermost open directory ends.
    DirectoryEnd,
    /// A regular file begins; its contents follow as `FileData` events.
    File {
        name: &'a [u8],
        executable: bool,
        size_bytes: u64,
    },
    /// The next bytes of the current regular file's contents.
    FileData(&'a [u8]),
    /// The current regular file ends.
    FileEnd,
    /// A symbolic link, complete in one event.
    Symlink { name: &'a [u8], target: &'a [u8] },
}

/// Bounds on what a parsed NAR may contain. Every one is checked as soon as
/// the length or count in question is known, before its bytes are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarLimits {
    /// Deepest nesting of entries below the root: the entries of a root
    /// directory are at depth 1. The parser keeps one name per level.
    pub depth_max: usize,
    /// Longest entry name (Linux's `NAME_MAX` is 255).
    pub name_max_bytes: usize,
    /// Longest symlink target (Linux's `PATH_MAX` is 4096 with the NUL).
    pub symlink_target_max_bytes: usize,
    /// Largest regular file.
    pub file_max_bytes: u64,
    /// Largest NAR, counting every byte from the header to the last `)`.
    pub nar_max_bytes: u64,
    /// Most entries in one directory.
    pub dir_entries_max: u64,
}

impl Default for NarLimits {
    fn default() -> NarLimits {
        NarLimits {
            // 1024 levels of one-byte names already make a 2 KiB path;
            // nothing in a real store comes close.
            depth_max: 1024,
            name_max_bytes: 255,
            symlink_target_max_bytes: 4095,
            // Disk images and model weights in the store reach tens of GiB;
            // these bounds exist to keep arithmetic and promises finite.
            file_max_bytes: 1 << 40,
            nar_max_bytes: 1 << 42,
            dir_entries_max: 1 << 20,
        }
    }
}

/// Number of zero bytes that pad `len` bytes to a multiple of 8.
fn padding_len(len: u64) -> usize {
    // The result is below 8, so the cast never truncates.
    ((8 - len % 8) % 8) as usize
}

/// Whether `name` may name a directory entry: non-empty, not `.` or `..`,
/// and free of `/` and NUL (the daemon's rule, spec 02 §5).
fn is_valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.iter().any(|&b| b == b'/' || b == 0)
}

/// Whether `target` may be a symlink target: the kernel refuses an empty
/// one, and a NUL would silently cut it short in `symlink(2)`.
fn is_valid_target(target: &[u8]) -> bool {
    !target.is_empty() && !target.contains(&0)
}

/// Appends `bytes` as one NAR token (length, bytes, zero padding).
fn put_token(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(&[0u8; 8][..padding_len(bytes.len() as u64)]);
}

/// Appends each of `tokens` with [`put_token`].
fn put_tokens(out: &mut Vec<u8>, tokens: &[&[u8]]) {
    for t in tokens {
        put_token(out, t);
    }
}

#[cfg(test)]
mod tests;

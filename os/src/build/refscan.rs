//! Reference scanning (spec 03 §4 step 7): which candidate store paths a
//! build output refers to, found by searching the 32-character nix-base32
//! hash part of each candidate anywhere in the output's NAR serialisation;
//! and [`measure_tree`], the single pass over an output that produces its
//! NAR SHA-256, its NAR size, the references and, for fixed outputs, the
//! content hash.
//!
//! Keeps true:
//! - a candidate counts as found exactly when its whole hash part occurs
//!   somewhere in the bytes fed, whatever the chunking: the last 31 bytes of
//!   each chunk are kept and searched together with the start of the next
//!   one, so a hash part straddling any number of chunk borders is found;
//! - the search is linear in the input and skips ahead like the daemon's:
//!   a window of 32 bytes is looked at from its end, and a byte that is not
//!   a nix-base32 digit rules out every window containing it. Inside a run
//!   of digits each further byte costs one test and one probe of a 2^20-bit
//!   filter on the window's first four digits (rolled along the run); only
//!   windows passing the filter are looked up, in an open-addressing table
//!   of the candidates;
//! - the NAR bytes are the core's [`NarWriter`]'s, so hash and size are those
//!   of the daemon's `dumpPath` for the same tree; each NAR byte is hashed
//!   and scanned exactly once;
//! - the tree walk keeps one sorted name list per open directory and one
//!   read buffer, whatever the output's size, and uses an explicit stack, so
//!   no depth overflows the thread's stack.

use crate::locks::sys_error;
use guixd_core::base32::ALPHABET;
use guixd_core::effect::{EffectError, EffectErrorKind};
use guixd_core::hash::{Hash, HashAlgo, Hasher};
use guixd_core::nar::{NarEvent, NarWriteError, NarWriter};
use guixd_core::store_path::HASH_PART_LEN;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The largest single read from a file while measuring.
pub const MEASURE_READ_BYTES: usize = 1 << 20;

/// Searches a byte stream, fed in chunks, for a fixed set of hash parts.
pub struct RefScanner {
    /// One bit per value of the first four digits of a hash part: set when
    /// some candidate starts with those digits.
    filter: Box<[u64; FILTER_BITS / 64]>,
    candidates: Candidates,
    /// The last bytes fed (at most `HASH_PART_LEN - 1`), for matches that
    /// straddle a chunk border.
    tail: [u8; HASH_PART_LEN - 1],
    tail_len: usize,
}

/// The hash parts looked for, and which were found.
struct Candidates {
    /// Sorted and without duplicates.
    parts: Vec<[u8; HASH_PART_LEN]>,
    /// Open addressing over `parts`: 1 + the index of a part, or 0 for an
    /// empty slot; at most half full, so every probe ends.
    slots: Vec<u32>,
    /// `found[k]` tells whether `parts[k]` occurred.
    found: Vec<bool>,
    found_count: usize,
}

impl RefScanner {
    /// A scanner for `parts`; anything that is not 32 nix-base32 digits can
    /// never occur as a hash part and is left out.
    pub fn new<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> RefScanner {
        let mut kept: Vec<[u8; HASH_PART_LEN]> = parts
            .into_iter()
            .filter_map(|p| <[u8; HASH_PART_LEN]>::try_from(p).ok())
            .filter(|p| p.iter().all(|&b| is_digit(b)))
            .collect();
        kept.sort_unstable();
        kept.dedup();
        // More candidates than a `u32` counts cannot be in memory anyway
        // (32 bytes each); the ones beyond are dropped rather than wrapped.
        kept.truncate(u32::MAX as usize - 1);
        let mut filter = Box::new([0u64; FILTER_BITS / 64]);
        let mut slots = vec![0u32; (2 * kept.len()).next_power_of_two().max(2)];
        let mask = slots.len() - 1;
        for (k, p) in kept.iter().enumerate() {
            let key = filter_key(p);
            filter[key / 64] |= 1 << (key % 64);
            let mut slot = slot_of(p, mask);
            while slots[slot] != 0 {
                slot = (slot + 1) & mask;
            }
            // `k + 1` fits: `kept` was truncated above.
            slots[slot] = k as u32 + 1;
        }
        RefScanner {
            filter,
            candidates: Candidates {
                found: vec![false; kept.len()],
                found_count: 0,
                parts: kept,
                slots,
            },
            tail: [0; HASH_PART_LEN - 1],
            tail_len: 0,
        }
    }

    /// Searches the next bytes of the stream.
    pub fn feed(&mut self, data: &[u8]) {
        if self.done() || data.is_empty() {
            return;
        }
        // Windows that start in the tail and end in `data`. Searching the
        // tail's own windows again is harmless: finding is idempotent, and
        // the tail is shorter than a window anyway.
        if self.tail_len > 0 {
            let take = data.len().min(HASH_PART_LEN - 1);
            let mut stitch = [0u8; 2 * (HASH_PART_LEN - 1)];
            stitch[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            stitch[self.tail_len..self.tail_len + take].copy_from_slice(&data[..take]);
            self.search(&stitch[..self.tail_len + take]);
        }
        self.search(data);
        self.keep_tail(data);
    }

    /// The hash parts found so far, in sorted order.
    pub fn found(&self) -> impl Iterator<Item = &[u8; HASH_PART_LEN]> {
        let c = &self.candidates;
        c.parts
            .iter()
            .zip(&c.found)
            .filter(|(_, found)| **found)
            .map(|(part, _)| part)
    }

    /// Whether every candidate was found (further input changes nothing).
    fn done(&self) -> bool {
        self.candidates.done()
    }

    /// Every window of `s` that is a candidate is marked found.
    fn search(&mut self, s: &[u8]) {
        let mut i = 0;
        while let Some(window) = s
            .get(i..)
            .and_then(|rest| rest.first_chunk::<HASH_PART_LEN>())
        {
            // The last non-digit of the window rules out every window that
            // contains it: jump past it.
            if let Some(j) = window.iter().rposition(|&b| !is_digit(b)) {
                i += j + 1;
                continue;
            }
            // `s[i..i + 32]` is all digits: every window of the run it
            // starts is a candidate position.
            i = scan_run(&self.filter, &mut self.candidates, s, i);
            if self.done() {
                return;
            }
        }
    }

    /// Keeps the last `HASH_PART_LEN - 1` bytes of everything fed so far.
    fn keep_tail(&mut self, data: &[u8]) {
        const KEEP: usize = HASH_PART_LEN - 1;
        if data.len() >= KEEP {
            self.tail.copy_from_slice(&data[data.len() - KEEP..]);
            self.tail_len = KEEP;
            return;
        }
        let old_kept = self.tail_len.min(KEEP - data.len());
        self.tail
            .copy_within(self.tail_len - old_kept..self.tail_len, 0);
        self.tail[old_kept..old_kept + data.len()].copy_from_slice(data);
        self.tail_len = old_kept + data.len();
    }
}

impl Candidates {
    fn done(&self) -> bool {
        self.found_count == self.parts.len()
    }

    /// Marks `window` found when it is a candidate: a probe of the
    /// open-addressing table. Kept out of line, so the scanning loop keeps
    /// its registers.
    #[inline(never)]
    fn check(&mut self, window: &[u8; HASH_PART_LEN]) {
        let mask = self.slots.len() - 1;
        let mut slot = slot_of(window, mask);
        while let Some(k) = self.slots[slot].checked_sub(1) {
            let k = k as usize;
            if self.parts[k] == *window {
                if !self.found[k] {
                    self.found[k] = true;
                    self.found_count += 1;
                }
                return;
            }
            slot = (slot + 1) & mask;
        }
    }
}

/// Looks at every window of the run of digits that starts at `start` (the
/// window there is known to be all digits) and returns where the search
/// goes on: past the byte that ends the run. The filter key of each window
/// is rolled from the previous one, one digit in, one out.
fn scan_run(
    filter: &[u64; FILTER_BITS / 64],
    candidates: &mut Candidates,
    s: &[u8],
    start: usize,
) -> usize {
    let d = |b: u8| usize::from(DIGITS[b as usize] & 0x1f);
    let Some(&[a, b, c]) = s.get(start..).and_then(|r| r.first_chunk::<3>()) else {
        return s.len();
    };
    let mut key = (d(a) << 10) | (d(b) << 5) | d(c);
    let mut w = start;
    loop {
        let Some(&fourth) = s.get(w + 3) else {
            return s.len();
        };
        key = ((key << 5) | d(fourth)) & (FILTER_BITS - 1);
        if (filter[key / 64] >> (key % 64)) & 1 != 0 {
            if let Some(window) = s.get(w..).and_then(|r| r.first_chunk::<HASH_PART_LEN>()) {
                candidates.check(window);
            }
        }
        match s.get(w + HASH_PART_LEN) {
            Some(&next) if is_digit(next) => w += 1,
            _ => return w + HASH_PART_LEN + 1,
        }
    }
}

/// What else [`measure_tree`] hashes besides the NAR's SHA-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentHash {
    None,
    /// The NAR with this algorithm (a recursive fixed output).
    Nar(HashAlgo),
    /// The contents of the regular files, with this algorithm (a flat
    /// fixed output, whose root the caller checked is a regular file).
    Flat(HashAlgo),
}

/// What [`measure_tree`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeMeasure {
    pub nar_hash: Hash,
    pub nar_size: u64,
    /// The [`ContentHash`] asked for.
    pub content_hash: Option<Hash>,
}

/// Serialises the tree at `root` as a NAR, feeding every byte to the
/// SHA-256 hasher, to `scanner` and to the content hasher asked for.
pub fn measure_tree(
    root: &Path,
    scanner: &mut RefScanner,
    content: ContentHash,
) -> Result<TreeMeasure, EffectError> {
    let mut walk = Walk {
        writer: NarWriter::new(),
        out: Vec::with_capacity(FLUSH_BYTES + 4096),
        buf: Vec::new(),
        dirs: Vec::new(),
        sink: Sink {
            sha256: Hasher::new(HashAlgo::Sha256),
            size_bytes: 0,
            scanner,
            nar_content: match content {
                ContentHash::Nar(algo) => Some(Hasher::new(algo)),
                _ => None,
            },
        },
        flat: match content {
            ContentHash::Flat(algo) => Some(Hasher::new(algo)),
            _ => None,
        },
    };
    walk.visit(root, b"")?;
    while let Some(top) = walk.dirs.last_mut() {
        match top.names.pop() {
            Some(name) => {
                let path = top.path.join(&name);
                walk.visit(&path, name.as_bytes())?;
            }
            None => {
                let path = top.path.clone();
                walk.dirs.pop();
                walk.event(NarEvent::DirectoryEnd, &path)?;
            }
        }
        walk.flush_if_full();
    }
    walk.flush();
    if !walk.writer.is_done() {
        return Err(invalid(format!(
            "guixd bug: the NAR of `{}' is incomplete",
            root.display()
        )));
    }
    let Walk { sink, flat, .. } = walk;
    let content_hash = match (sink.nar_content, flat) {
        (Some(h), _) | (None, Some(h)) => Some(h.finish()),
        (None, None) => None,
    };
    Ok(TreeMeasure {
        nar_hash: sink.sha256.finish(),
        nar_size: sink.size_bytes,
        content_hash,
    })
}

/// NAR bytes are handed to the hashers and the scanner in pieces of about
/// this size.
const FLUSH_BYTES: usize = 1 << 20;

/// 2^20 filter bits: four digits of five bits each.
const FILTER_BITS: usize = 1 << 20;

/// Marks bytes that are not nix-base32 digits in [`DIGITS`].
const NOT_DIGIT: u8 = 0xff;

/// The value of each byte as a nix-base32 digit, or [`NOT_DIGIT`].
static DIGITS: [u8; 256] = digit_table();

const fn digit_table() -> [u8; 256] {
    let mut table = [NOT_DIGIT; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
}

#[inline]
fn is_digit(b: u8) -> bool {
    DIGITS[b as usize] != NOT_DIGIT
}

/// The filter bit of a window of digits: its first four digits' values.
fn filter_key(window: &[u8; HASH_PART_LEN]) -> usize {
    let d = |k: usize| usize::from(DIGITS[window[k] as usize] & 0x1f);
    (d(0) << 15) | (d(1) << 10) | (d(2) << 5) | d(3)
}

/// The first table slot for a hash part: a multiplicative hash of eight of
/// its characters beyond the four the filter already looked at (candidates
/// are uniformly random there).
fn slot_of(part: &[u8; HASH_PART_LEN], mask: usize) -> usize {
    let mut word = [0u8; 8];
    word.copy_from_slice(&part[8..16]);
    let h = u64::from_le_bytes(word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // The top bits are the well-mixed ones; the table has at most 2^33
    // slots, so the shift keeps enough of them.
    (h >> 31) as usize & mask
}

/// Where the NAR bytes go.
struct Sink<'a> {
    sha256: Hasher,
    size_bytes: u64,
    scanner: &'a mut RefScanner,
    nar_content: Option<Hasher>,
}

impl Sink<'_> {
    fn take(&mut self, data: &[u8]) {
        self.sha256.update(data);
        self.size_bytes += data.len() as u64;
        self.scanner.feed(data);
        if let Some(h) = self.nar_content.as_mut() {
            h.update(data);
        }
    }
}

struct Walk<'a> {
    writer: NarWriter,
    /// NAR bytes not yet handed to the sink.
    out: Vec<u8>,
    /// The read buffer, grown on first use.
    buf: Vec<u8>,
    /// Open directories, innermost last.
    dirs: Vec<DirCursor>,
    sink: Sink<'a>,
    flat: Option<Hasher>,
}

struct DirCursor {
    path: PathBuf,
    /// The entries not yet visited, sorted in reverse, so the next is last.
    names: Vec<OsString>,
}

impl Walk<'_> {
    /// Serialises the node at `path`, called `name` in its directory: a
    /// file or symlink completely, a directory's start (its entries follow
    /// from the cursor pushed).
    fn visit(&mut self, path: &Path, name: &[u8]) -> Result<(), EffectError> {
        let st = fs::symlink_metadata(path).map_err(|e| {
            sys_error(
                format_args!("getting attributes of path `{}'", path.display()),
                &e,
            )
        })?;
        let ft = st.file_type();
        if ft.is_file() {
            self.file(path, name)
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
            self.event(NarEvent::Directory { name }, path)?;
            self.dirs.push(DirCursor {
                path: path.to_path_buf(),
                names,
            });
            Ok(())
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
            self.event(event, path)
        } else {
            Err(invalid(format!(
                "file `{}' has an unsupported type",
                path.display()
            )))
        }
    }

    /// Serialises a regular file, reading it piece by piece.
    fn file(&mut self, path: &Path, name: &[u8]) -> Result<(), EffectError> {
        // Size and mode come from the open file, so they describe the bytes
        // read.
        let mut file = OpenOptions::new()
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
        let event = NarEvent::File {
            name,
            executable: st.mode() & 0o100 != 0,
            size_bytes: st.len(),
        };
        self.event(event, path)?;
        let mut left_bytes = st.len();
        if left_bytes > 0 && self.buf.is_empty() {
            self.buf = vec![0; MEASURE_READ_BYTES];
        }
        while left_bytes > 0 {
            let want = usize::try_from(left_bytes)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            let n = read_some(&mut file, &mut self.buf[..want])
                .map_err(|e| sys_error(format_args!("reading file `{}'", path.display()), &e))?;
            if n == 0 {
                return Err(EffectError::new(
                    EffectErrorKind::Io(libc::EIO),
                    format!(
                        "reading file `{}': unexpected end-of-file (the file shrank while it was read)",
                        path.display()
                    ),
                ));
            }
            left_bytes -= n as u64;
            // The pending tokens go first, then the data passes through the
            // writer (which counts it) straight to the sink.
            self.flush();
            let data = &self.buf[..n];
            self.writer
                .write(NarEvent::FileData(data), &mut self.out)
                .map_err(|e| write_error(path, e))?;
            if let Some(h) = self.flat.as_mut() {
                h.update(data);
            }
            self.flush();
        }
        self.event(NarEvent::FileEnd, path)
    }

    fn event(&mut self, event: NarEvent<'_>, path: &Path) -> Result<(), EffectError> {
        self.writer
            .write(event, &mut self.out)
            .map_err(|e| write_error(path, e))
    }

    fn flush_if_full(&mut self) {
        if self.out.len() >= FLUSH_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            self.sink.take(&self.out);
            self.out.clear();
        }
    }
}

/// The walk only produces valid events, so a writer error means the tree
/// changed under it or a bug.
fn write_error(path: &Path, e: NarWriteError) -> EffectError {
    invalid(format!("dumping `{}': {e}", path.display()))
}

fn invalid(message: String) -> EffectError {
    EffectError::new(EffectErrorKind::Invalid, message)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The obvious search: every window of the whole stream.
    fn naive(parts: &[Vec<u8>], stream: &[u8]) -> BTreeSet<Vec<u8>> {
        let wanted: BTreeSet<&[u8]> = parts
            .iter()
            .map(|p| p.as_slice())
            .filter(|p| p.len() == HASH_PART_LEN && p.iter().all(|&b| is_digit(b)))
            .collect();
        stream
            .windows(HASH_PART_LEN)
            .filter(|w| wanted.contains(w))
            .map(|w| w.to_vec())
            .collect()
    }

    fn scan_chunked(parts: &[Vec<u8>], stream: &[u8], cuts: &[usize]) -> BTreeSet<Vec<u8>> {
        let mut scanner = RefScanner::new(parts.iter().map(|p| p.as_slice()));
        let mut at = 0;
        for &cut in cuts {
            let end = (at + cut).min(stream.len());
            scanner.feed(&stream[at..end]);
            at = end;
        }
        scanner.feed(&stream[at..]);
        scanner.found().map(|p| p.to_vec()).collect()
    }

    /// A hash part made of digits chosen by `seed`.
    fn part(seed: u64) -> Vec<u8> {
        let h = Hash::sha256(&seed.to_le_bytes());
        guixd_core::base32::encode(&h.compress::<20>()).into_bytes()
    }

    #[test]
    fn finds_parts_anywhere_and_nothing_else() {
        let a = part(1);
        let b = part(2);
        let c = part(3);
        let mut stream = b"\x00\x01prefix/gnu/store/".to_vec();
        stream.extend_from_slice(&a);
        stream.extend_from_slice(b"-hello\n");
        // 31 characters of `b` only, then a non-digit.
        stream.extend_from_slice(&b[..31]);
        stream.push(b'-');
        // `c` glued between digits on both sides still counts.
        stream.extend_from_slice(b"abc");
        stream.extend_from_slice(&c);
        stream.extend_from_slice(b"xyz");
        let parts = vec![a.clone(), b, c.clone()];
        let found = scan_chunked(&parts, &stream, &[]);
        assert_eq!(found, BTreeSet::from([a, c]));
    }

    #[test]
    fn straddling_every_border() {
        let a = part(7);
        let mut stream = vec![0u8; 100];
        stream.extend_from_slice(&a);
        stream.extend_from_slice(&[0u8; 50]);
        for first in 0..stream.len() {
            // Cut at `first`, then into pieces of one byte through the hash.
            let mut cuts = vec![first];
            cuts.extend(std::iter::repeat_n(1, 40));
            let found = scan_chunked(std::slice::from_ref(&a), &stream, &cuts);
            assert_eq!(found, BTreeSet::from([a.clone()]), "cut at {first}");
        }
    }

    #[test]
    fn a_prefix_split_across_chunks_does_not_count() {
        let a = part(9);
        let mut stream = a[..31].to_vec();
        stream.push(b'!');
        stream.extend_from_slice(&a[1..]);
        for cut in 0..stream.len() {
            let found = scan_chunked(std::slice::from_ref(&a), &stream, &[cut]);
            assert!(found.is_empty(), "cut at {cut}");
        }
    }

    #[test]
    fn bad_candidates_are_ignored() {
        let parts = vec![
            b"short".to_vec(),
            b"EEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEE".to_vec(),
            b"eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee".to_vec(),
        ];
        let stream = parts.concat();
        assert!(scan_chunked(&parts, &stream, &[3, 10]).is_empty());
    }

    /// Candidates that agree on the characters the filter and the table
    /// look at collide; every one is still told apart.
    #[test]
    fn colliding_candidates() {
        let base = part(42);
        let parts: Vec<Vec<u8>> = (0..3000u32)
            .map(|k| {
                let mut p = base.clone();
                let tail = guixd_core::base32::encode(&k.to_le_bytes());
                p[HASH_PART_LEN - tail.len()..].copy_from_slice(tail.as_bytes());
                p
            })
            .collect();
        let mut stream = Vec::new();
        for p in parts.iter().step_by(7) {
            stream.extend_from_slice(p);
            stream.push(b'/');
        }
        // A near miss of every one: right prefix, wrong last character.
        for p in parts.iter().skip(1).step_by(7) {
            let mut q = p.clone();
            q[HASH_PART_LEN - 1] = b'e';
            stream.extend_from_slice(&q);
        }
        let found = scan_chunked(&parts, &stream, &[1000, 3, 5000]);
        assert_eq!(found.len(), 3000usize.div_ceil(7));
        assert_eq!(found, naive(&parts, &stream));
    }

    /// Any stream, any chunking: the same as the naive search.
    #[test]
    fn any_chunking_matches_the_naive_search() {
        fn prop(seeds: Vec<u8>, noise: Vec<(u8, u8)>, cuts: Vec<u8>) -> bool {
            let parts: Vec<Vec<u8>> = seeds.iter().take(8).map(|&s| part(u64::from(s))).collect();
            // A stream of digits, other bytes and whole or partial parts, so
            // that runs of digits and near misses are common.
            let mut stream = Vec::new();
            for &(kind, x) in &noise {
                match kind % 5 {
                    0 => stream.push(ALPHABET[usize::from(x % 32)]),
                    1 => stream.push(x),
                    2 | 3 if !parts.is_empty() => {
                        let p = &parts[usize::from(x) % parts.len()];
                        let len = if kind % 5 == 2 {
                            HASH_PART_LEN
                        } else {
                            usize::from(x) % 32
                        };
                        stream.extend_from_slice(&p[..len]);
                    }
                    _ => stream.extend_from_slice(&part(u64::from(x) + 1000)[..8]),
                }
            }
            let cuts: Vec<usize> = cuts.iter().map(|&c| usize::from(c % 40)).collect();
            scan_chunked(&parts, &stream, &cuts) == naive(&parts, &stream)
        }
        guixd_testkit::check(prop as fn(Vec<u8>, Vec<(u8, u8)>, Vec<u8>) -> bool);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        fn prop(parts: Vec<Vec<u8>>, stream: Vec<u8>, cut: u8) -> bool {
            let cut = usize::from(cut).min(stream.len());
            let found = scan_chunked(&parts, &stream, &[cut]);
            found == naive(&parts, &stream)
        }
        guixd_testkit::check(prop as fn(Vec<Vec<u8>>, Vec<u8>, u8) -> bool);
    }

    /// Throughput of the scanner alone and of SHA-256 on 256 MiB, printed;
    /// not an assertion. Run with
    /// `cargo test --release -p guixd-os --lib build::refscan -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark; run in release with --ignored --nocapture"]
    fn bench_scanner_256_mib() {
        const TOTAL_BYTES: usize = 256 << 20;
        const CHUNK_BYTES: usize = 1 << 20;
        let parts: Vec<Vec<u8>> = (0..10_000).map(part).collect();
        // Pseudo-random bytes (a xorshift), like compiled code or
        // compressed data.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut binary = vec![0u8; CHUNK_BYTES];
        for b in binary.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        // Text made of digits only with a space every 40 bytes, and a real
        // reference now and then: a worst case for the skipping.
        let mut text = Vec::with_capacity(CHUNK_BYTES);
        while text.len() < CHUNK_BYTES {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 64 == 0 {
                text.extend_from_slice(&parts[(x >> 8) as usize % parts.len()]);
            } else {
                text.push(ALPHABET[(x >> 8) as usize % 32]);
            }
            if text.len() % 41 == 40 {
                text.push(b' ');
            }
        }
        text.truncate(CHUNK_BYTES);
        // Random digits only: every byte starts a window to look at.
        let digits: Vec<u8> = (0..CHUNK_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ALPHABET[(x >> 8) as usize % 32]
            })
            .collect();
        for (label, chunk) in [
            ("random bytes", &binary),
            ("base32 words", &text),
            ("all base32", &digits),
        ] {
            let mut scanner = RefScanner::new(parts.iter().map(|p| p.as_slice()));
            let start = std::time::Instant::now();
            for _ in 0..TOTAL_BYTES / CHUNK_BYTES {
                scanner.feed(std::hint::black_box(chunk));
            }
            let secs = start.elapsed().as_secs_f64();
            let found = scanner.found().count();
            println!(
                "refscan {label}: 256 MiB in {secs:.3} s = {:.0} MiB/s ({found} found)",
                256.0 / secs
            );
        }
        let mut h = Hasher::new(HashAlgo::Sha256);
        let start = std::time::Instant::now();
        for _ in 0..TOTAL_BYTES / CHUNK_BYTES {
            h.update(std::hint::black_box(&binary));
        }
        let _ = h.finish();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "sha256 for comparison: 256 MiB in {secs:.3} s = {:.0} MiB/s",
            256.0 / secs
        );
        // The whole pass over a 256 MiB file (page cache warm): read, NAR,
        // SHA-256 and scan.
        let file = std::env::temp_dir().join(format!("guixd-refscan-bench-{}", std::process::id()));
        {
            let mut f = File::create(&file).unwrap();
            for _ in 0..TOTAL_BYTES / CHUNK_BYTES {
                std::io::Write::write_all(&mut f, &binary).unwrap();
            }
        }
        let mut scanner = RefScanner::new(parts.iter().map(|p| p.as_slice()));
        let start = std::time::Instant::now();
        let measured = measure_tree(&file, &mut scanner, ContentHash::None).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let _ = fs::remove_file(&file);
        println!(
            "measure_tree on a 256 MiB file: {secs:.3} s = {:.0} MiB/s (NAR {} bytes)",
            256.0 / secs,
            measured.nar_size
        );
    }
}

//! The push-based NAR parser: bytes in, [`NarEvent`]s out.
//!
//! Keeps true:
//! - each [`NarParser::feed`] consumes a prefix of its input and reports at
//!   most one event; any split of the same bytes into calls gives the same
//!   events (up to how file contents are cut into `FileData` chunks), the
//!   same error at the same byte, and the same end;
//! - `NeedMore` is reported only once the whole input was consumed, and no
//!   byte after the NAR's final `)` is ever consumed;
//! - file contents are never copied: a `FileData` event is a sub-slice of
//!   the input, as long as the input and the file allow;
//! - memory is bounded by the limits alone: one token of at most
//!   [`NarLimits::symlink_target_max_bytes`] (or a name, or a short keyword)
//!   and one last name per open directory;
//! - after an error the parser is spent and repeats that error.

use super::{NAR_MAGIC, NarEvent, NarLimits, is_valid_name, is_valid_target, padding_len};

/// Why a NAR was rejected. Texts are the C++ daemon's where it has one
/// (clients grep them); the rest are guixd's own.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NarError {
    #[error("bad archive: input doesn't look like a normalized archive")]
    NotAnArchive,
    #[error("bad archive: expected open tag")]
    ExpectedOpenTag,
    #[error("bad archive: unknown file type {0}")]
    UnknownFileType(String),
    #[error("bad archive: multiple type fields")]
    MultipleTypeFields,
    /// A token that is no NAR keyword at all.
    #[error("bad archive: unknown field {0}")]
    UnknownField(String),
    /// A NAR keyword in a place where the canonical grammar has another.
    #[error("bad archive: unexpected field {found} (expected {expected})")]
    UnexpectedField {
        found: String,
        expected: &'static str,
    },
    #[error("bad archive: node has no type")]
    MissingType,
    #[error("bad archive: regular file has no contents")]
    MissingContents,
    #[error("bad archive: symlink has no target")]
    MissingTarget,
    #[error("bad archive: executable marker has non-empty value")]
    ExecutableMarkerNotEmpty,
    #[error("NAR contains invalid file name `{0}'")]
    InvalidFileName(String),
    #[error("NAR directory is not sorted")]
    NotSorted,
    #[error("NAR contains invalid symlink target `{0}'")]
    InvalidSymlinkTarget(String),
    #[error("non-zero padding")]
    NonZeroPadding,
    #[error("NAR contains a file name of {len_bytes} bytes, longer than the limit of {max_bytes}")]
    NameTooLong { len_bytes: u64, max_bytes: usize },
    #[error(
        "NAR contains a symlink target of {len_bytes} bytes, longer than the limit of {max_bytes}"
    )]
    SymlinkTargetTooLong { len_bytes: u64, max_bytes: usize },
    #[error("NAR contains a file of {size_bytes} bytes, larger than the limit of {max_bytes}")]
    FileTooLarge { size_bytes: u64, max_bytes: u64 },
    #[error("NAR is larger than the limit of {max_bytes} bytes")]
    NarTooLarge { max_bytes: u64 },
    #[error("NAR nests entries deeper than the limit of {max} levels")]
    TooDeep { max: usize },
    #[error("NAR directory has more than {max} entries")]
    TooManyEntries { max: u64 },
    /// Only from [`parse_complete`]: the bytes end inside the NAR.
    #[error("unexpected end-of-file")]
    Truncated,
    /// Only from [`parse_complete`]: bytes follow the NAR's final `)`.
    #[error("bad archive: {count} trailing bytes after the end of the NAR")]
    TrailingBytes { count: usize },
}

/// What one [`NarParser::feed`] call did: how many input bytes it consumed
/// and what came of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step<'a> {
    /// Input bytes consumed, always a prefix of the input given. They are
    /// exactly the NAR's next bytes, so a caller hashes and counts these.
    pub consumed: usize,
    pub outcome: Outcome<'a>,
}

/// The result part of a [`Step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The whole input was consumed without completing an event: feed more.
    NeedMore,
    /// One event. Feed the rest of the input (after `consumed`) next.
    Event(NarEvent<'a>),
    /// The root node is closed: the NAR is complete. Nothing was consumed
    /// beyond its last byte, and further calls consume nothing.
    Done,
}

impl<'a> Step<'a> {
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    pub fn event(&self) -> Option<NarEvent<'a>> {
        match self.outcome {
            Outcome::Event(e) => Some(e),
            _ => None,
        }
    }

    pub fn is_done(&self) -> bool {
        self.outcome == Outcome::Done
    }

    pub fn needs_more(&self) -> bool {
        self.outcome == Outcome::NeedMore
    }
}

/// A push-based NAR parser.
///
/// Call [`feed`](NarParser::feed) with whatever bytes are at hand; it
/// consumes a prefix of them and returns one [`Step`]. On `Event`, handle
/// the event and feed the unconsumed rest; on `NeedMore`, feed the next
/// bytes; on `Done`, the NAR has ended and whatever follows belongs to the
/// caller. Names and targets in events borrow the parser, `FileData`
/// borrows the input, so an event must be dropped before the next call.
/// A typical loop, hashing exactly the NAR's bytes:
///
/// ```
/// use guixd_core::nar::{NarLimits, NarParser, Outcome, file_nar};
/// let bytes = file_nar(false, b"hello");
/// let mut parser = NarParser::new(NarLimits::default());
/// let mut pos = 0;
/// loop {
///     let step = parser.feed(&bytes[pos..]).unwrap();
///     // hasher.update(&bytes[pos..pos + step.consumed]);
///     pos += step.consumed;
///     match step.outcome {
///         Outcome::Event(_event) => {}
///         Outcome::NeedMore => unreachable!("all bytes were given"),
///         Outcome::Done => break,
///     }
/// }
/// assert_eq!(pos, bytes.len());
/// ```
#[derive(Clone, Debug)]
pub struct NarParser {
    limits: NarLimits,
    /// Where in the byte layout the parser is.
    state: State,
    /// Which string token the grammar wants next (when reading one).
    expect: Expect,
    /// The integer being read (a token length or a file size).
    int_buf: [u8; 8],
    /// The string token being read. Its length is checked against the
    /// limits before any of its bytes are taken.
    token: Vec<u8>,
    /// One frame per directory ever open at once; `dirs[..depth]` are the
    /// open ones, innermost last. Frames past `depth` are kept to reuse
    /// their allocations.
    dirs: Vec<DirFrame>,
    depth: usize,
    /// The current regular file: its `executable` marker and its size.
    executable: bool,
    file_size_bytes: u64,
    /// NAR bytes consumed by earlier calls.
    offset_bytes: u64,
    failed: Option<NarError>,
}

impl NarParser {
    pub fn new(limits: NarLimits) -> NarParser {
        NarParser {
            limits,
            state: State::Len { have: 0 },
            expect: Expect::Header,
            int_buf: [0; 8],
            token: Vec::new(),
            dirs: Vec::new(),
            depth: 0,
            executable: false,
            file_size_bytes: 0,
            offset_bytes: 0,
            failed: None,
        }
    }

    /// Consumes a prefix of `input` and reports what it completed; see the
    /// type's documentation for the loop around it.
    pub fn feed<'a>(&'a mut self, input: &'a [u8]) -> Result<Step<'a>, NarError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        // Bytes past the size limit are never looked at, so no token or
        // file can make the parser read beyond it.
        let budget = self.limits.nar_max_bytes.saturating_sub(self.offset_bytes);
        let input = &input[..input
            .len()
            .min(usize::try_from(budget).unwrap_or(usize::MAX))];
        let (consumed, found) = match self.run(input) {
            Ok(r) => r,
            Err(e) => {
                self.failed = Some(e.clone());
                return Err(e);
            }
        };
        self.offset_bytes += consumed as u64;
        let outcome = match found {
            Found::NeedMore if self.offset_bytes >= self.limits.nar_max_bytes => {
                let e = NarError::NarTooLarge {
                    max_bytes: self.limits.nar_max_bytes,
                };
                self.failed = Some(e.clone());
                return Err(e);
            }
            Found::NeedMore => Outcome::NeedMore,
            Found::Done => Outcome::Done,
            Found::Data { start, end } => Outcome::Event(NarEvent::FileData(&input[start..end])),
            Found::Event(p) => Outcome::Event(self.event(p)),
        };
        Ok(Step { consumed, outcome })
    }

    /// Whether the NAR's root node is closed.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// NAR bytes consumed so far; once done, the NAR's size.
    pub fn consumed_bytes(&self) -> u64 {
        self.offset_bytes
    }

    pub fn limits(&self) -> &NarLimits {
        &self.limits
    }
}

/// Parses `nar`, which must hold exactly one complete NAR, calling `visit`
/// with each event in order. Bytes after the NAR are an error here (a
/// stream's caller decides about them itself).
pub fn parse_complete(
    nar: &[u8],
    limits: NarLimits,
    mut visit: impl FnMut(NarEvent<'_>),
) -> Result<(), NarError> {
    let mut parser = NarParser::new(limits);
    let mut pos = 0;
    loop {
        let step = parser.feed(&nar[pos..])?;
        pos += step.consumed;
        match step.outcome {
            Outcome::Event(e) => visit(e),
            Outcome::NeedMore => return Err(NarError::Truncated),
            Outcome::Done if pos < nar.len() => {
                return Err(NarError::TrailingBytes {
                    count: nar.len() - pos,
                });
            }
            Outcome::Done => return Ok(()),
        }
    }
}

/// Longest token read when a keyword is expected. Every keyword is
/// shorter; the margin lets an error message show what was found instead.
const KEYWORD_READ_MAX_BYTES: usize = 64;

/// Every token the grammar knows, to tell a misplaced field from an
/// unknown one.
const KEYWORDS: &[&[u8]] = &[
    b"(",
    b")",
    b"type",
    b"regular",
    b"directory",
    b"symlink",
    b"executable",
    b"contents",
    b"target",
    b"entry",
    b"name",
    b"node",
    NAR_MAGIC,
];

/// The byte-level position: which part of a token or file is being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The length of the string token `expect` names; `have` bytes read.
    Len { have: usize },
    /// The token's bytes; `self.token` holds those read so far.
    Str { len: usize },
    /// The zero padding after the token.
    Pad { left: usize },
    /// The size of a regular file's contents.
    Size { have: usize },
    /// The contents; `left` bytes still to come.
    Data { left: u64 },
    /// The zero padding after the contents.
    DataPad { left: usize },
    /// The root node is closed.
    Done,
}

/// The grammar position: which string token comes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Header,
    NodeOpen,
    TypeKeyword,
    TypeValue,
    /// `executable` or `contents`.
    RegularField,
    ExecutableValue,
    ContentsKeyword,
    RegularClose,
    TargetKeyword,
    TargetValue,
    SymlinkClose,
    /// `entry`, or `)` closing the directory.
    DirField,
    EntryOpen,
    NameKeyword,
    NameValue,
    NodeKeyword,
    EntryClose,
}

impl Expect {
    /// What is expected, for error messages.
    fn describe(self) -> &'static str {
        match self {
            Expect::Header => "nix-archive-1",
            Expect::NodeOpen | Expect::EntryOpen => "(",
            Expect::TypeKeyword => "type",
            Expect::TypeValue => "regular, directory or symlink",
            Expect::RegularField => "executable or contents",
            Expect::ExecutableValue => "an empty string",
            Expect::ContentsKeyword => "contents",
            Expect::RegularClose | Expect::SymlinkClose | Expect::EntryClose => ")",
            Expect::TargetKeyword => "target",
            Expect::TargetValue => "a symlink target",
            Expect::DirField => "entry or )",
            Expect::NameKeyword => "name",
            Expect::NameValue => "a file name",
            Expect::NodeKeyword => "node",
        }
    }
}

#[derive(Clone, Debug, Default)]
struct DirFrame {
    /// The last entry name seen; entries must strictly increase. Empty
    /// before the first entry, which every valid name sorts after.
    last_name: Vec<u8>,
    entries: u64,
}

/// What [`NarParser::run`] stopped at. Events that borrow the parser are
/// named here and built in `feed`, after the mutable work is over.
enum Found {
    NeedMore,
    Done,
    Data { start: usize, end: usize },
    Event(Pending),
}

#[derive(Clone, Copy)]
enum Pending {
    Directory,
    DirectoryEnd,
    File,
    FileEnd,
    Symlink,
}

impl NarParser {
    /// Advances through `input` until one event, the end, or the end of the
    /// input; returns the bytes consumed with what was found.
    fn run(&mut self, input: &[u8]) -> Result<(usize, Found), NarError> {
        let mut pos = 0;
        loop {
            let avail = input.len() - pos;
            match self.state {
                State::Done => return Ok((pos, Found::Done)),
                State::Data { left } => {
                    // `n` is at most `avail`, so the cast back is lossless.
                    let n = left.min(avail as u64) as usize;
                    if n == 0 {
                        return Ok((pos, Found::NeedMore));
                    }
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataPad {
                            left: padding_len(self.file_size_bytes),
                        }
                    } else {
                        State::Data { left }
                    };
                    let found = Found::Data {
                        start: pos,
                        end: pos + n,
                    };
                    return Ok((pos + n, found));
                }
                State::Len { have } | State::Size { have } => {
                    let take = (8 - have).min(avail);
                    self.int_buf[have..have + take].copy_from_slice(&input[pos..pos + take]);
                    pos += take;
                    let have = have + take;
                    if have < 8 {
                        self.state = match self.state {
                            State::Len { .. } => State::Len { have },
                            _ => State::Size { have },
                        };
                        return Ok((pos, Found::NeedMore));
                    }
                    let value = u64::from_le_bytes(self.int_buf);
                    if let State::Size { .. } = self.state {
                        let at = self.offset_bytes + pos as u64;
                        self.start_contents(value, at)?;
                        return Ok((pos, Found::Event(Pending::File)));
                    }
                    let len = self.check_len(value)?;
                    self.token.clear();
                    self.state = State::Str { len };
                }
                State::Str { len } => {
                    let take = (len - self.token.len()).min(avail);
                    self.token.extend_from_slice(&input[pos..pos + take]);
                    pos += take;
                    if self.token.len() < len {
                        return Ok((pos, Found::NeedMore));
                    }
                    self.state = State::Pad {
                        left: padding_len(len as u64),
                    };
                }
                State::Pad { left } | State::DataPad { left } => {
                    let take = left.min(avail);
                    if input[pos..pos + take].iter().any(|&b| b != 0) {
                        // The daemon reads the header with a generic string
                        // reader and turns any failure into this message.
                        return Err(if self.expect == Expect::Header {
                            NarError::NotAnArchive
                        } else {
                            NarError::NonZeroPadding
                        });
                    }
                    pos += take;
                    let left = left - take;
                    let data = matches!(self.state, State::DataPad { .. });
                    if left > 0 {
                        self.state = if data {
                            State::DataPad { left }
                        } else {
                            State::Pad { left }
                        };
                        return Ok((pos, Found::NeedMore));
                    }
                    self.state = State::Len { have: 0 };
                    if data {
                        self.expect = Expect::RegularClose;
                    } else if let Some(p) = self.on_token()? {
                        return Ok((pos, Found::Event(p)));
                    }
                }
            }
        }
    }

    /// Checks a string token's declared length against what the grammar
    /// and the limits allow here, before any of its bytes are read.
    fn check_len(&self, len: u64) -> Result<usize, NarError> {
        let limits = &self.limits;
        match self.expect {
            Expect::Header if len != NAR_MAGIC.len() as u64 => Err(NarError::NotAnArchive),
            Expect::ExecutableValue if len != 0 => Err(NarError::ExecutableMarkerNotEmpty),
            Expect::NameValue if len == 0 => Err(NarError::InvalidFileName(String::new())),
            Expect::NameValue if len > limits.name_max_bytes as u64 => Err(NarError::NameTooLong {
                len_bytes: len,
                max_bytes: limits.name_max_bytes,
            }),
            Expect::TargetValue if len == 0 => Err(NarError::InvalidSymlinkTarget(String::new())),
            Expect::TargetValue if len > limits.symlink_target_max_bytes as u64 => {
                Err(NarError::SymlinkTargetTooLong {
                    len_bytes: len,
                    max_bytes: limits.symlink_target_max_bytes,
                })
            }
            // Both are at most a limit held in a usize, so the casts are
            // lossless.
            Expect::NameValue | Expect::TargetValue => Ok(len as usize),
            _ if len > KEYWORD_READ_MAX_BYTES as u64 => {
                Err(self.reject(&format!("of {len} bytes").into_bytes(), false))
            }
            _ => Ok(len as usize),
        }
    }

    /// Acts on a complete string token in `self.token`, moving the grammar
    /// on; returns the event it completes, if any.
    fn on_token(&mut self) -> Result<Option<Pending>, NarError> {
        let tok = self.token.as_slice();
        let next = match (self.expect, tok) {
            (Expect::Header, NAR_MAGIC) => Expect::NodeOpen,
            (Expect::Header, _) => return Err(NarError::NotAnArchive),
            (Expect::NodeOpen, b"(") => Expect::TypeKeyword,
            (Expect::TypeKeyword, b"type") => Expect::TypeValue,
            (Expect::TypeValue, b"regular") => {
                self.executable = false;
                Expect::RegularField
            }
            (Expect::TypeValue, b"symlink") => Expect::TargetKeyword,
            (Expect::TypeValue, b"directory") => {
                if self.dirs.len() == self.depth {
                    self.dirs.push(DirFrame::default());
                }
                let frame = &mut self.dirs[self.depth];
                frame.last_name.clear();
                frame.entries = 0;
                self.depth += 1;
                self.expect = Expect::DirField;
                return Ok(Some(Pending::Directory));
            }
            (Expect::RegularField, b"executable") => Expect::ExecutableValue,
            (Expect::RegularField | Expect::ContentsKeyword, b"contents") => {
                self.state = State::Size { have: 0 };
                return Ok(None);
            }
            (Expect::ExecutableValue, _) => {
                // `check_len` let only the empty value through.
                self.executable = true;
                Expect::ContentsKeyword
            }
            (Expect::RegularClose, b")") => {
                self.node_closed();
                return Ok(Some(Pending::FileEnd));
            }
            (Expect::TargetKeyword, b"target") => Expect::TargetValue,
            (Expect::TargetValue, target) => {
                if !is_valid_target(target) {
                    let shown = String::from_utf8_lossy(target).into_owned();
                    return Err(NarError::InvalidSymlinkTarget(shown));
                }
                self.expect = Expect::SymlinkClose;
                return Ok(Some(Pending::Symlink));
            }
            (Expect::SymlinkClose, b")") => {
                self.node_closed();
                return Ok(None);
            }
            (Expect::DirField, b"entry") => {
                // `depth` directories are open, so the new entry lies at
                // that depth below the root.
                if self.depth > self.limits.depth_max {
                    return Err(NarError::TooDeep {
                        max: self.limits.depth_max,
                    });
                }
                let frame = &mut self.dirs[self.depth - 1];
                if frame.entries >= self.limits.dir_entries_max {
                    return Err(NarError::TooManyEntries {
                        max: self.limits.dir_entries_max,
                    });
                }
                frame.entries += 1;
                Expect::EntryOpen
            }
            (Expect::DirField, b")") => {
                self.depth -= 1;
                self.node_closed();
                return Ok(Some(Pending::DirectoryEnd));
            }
            (Expect::EntryOpen, b"(") => Expect::NameKeyword,
            (Expect::NameKeyword, b"name") => Expect::NameValue,
            (Expect::NameValue, name) => {
                if !is_valid_name(name) {
                    let shown = String::from_utf8_lossy(name).into_owned();
                    return Err(NarError::InvalidFileName(shown));
                }
                // A DirField `entry` token came before, so a frame is open.
                let frame = &mut self.dirs[self.depth - 1];
                if name <= frame.last_name.as_slice() {
                    return Err(NarError::NotSorted);
                }
                // Copied rather than swapped with the token buffer, so a
                // frame never holds more than a name's worth of memory.
                frame.last_name.clear();
                frame.last_name.extend_from_slice(name);
                Expect::NodeKeyword
            }
            (Expect::NodeKeyword, b"node") => Expect::NodeOpen,
            (Expect::EntryClose, b")") => Expect::DirField,
            (_, found) => return Err(self.reject(found, true)),
        };
        self.expect = next;
        Ok(None)
    }

    /// The error for `found` where `self.expect` belongs; `readable` says
    /// whether `found` is the token itself or only a description of it.
    fn reject(&self, found: &[u8], readable: bool) -> NarError {
        let shown = String::from_utf8_lossy(found).into_owned();
        let in_node_after_type = matches!(
            self.expect,
            Expect::RegularField
                | Expect::ContentsKeyword
                | Expect::RegularClose
                | Expect::TargetKeyword
                | Expect::SymlinkClose
                | Expect::DirField
        );
        match self.expect {
            Expect::Header => NarError::NotAnArchive,
            Expect::NodeOpen | Expect::EntryOpen => NarError::ExpectedOpenTag,
            Expect::TypeValue => NarError::UnknownFileType(shown),
            Expect::TypeKeyword if readable && found == b")" => NarError::MissingType,
            Expect::RegularField | Expect::ContentsKeyword if readable && found == b")" => {
                NarError::MissingContents
            }
            Expect::TargetKeyword if readable && found == b")" => NarError::MissingTarget,
            _ if readable && in_node_after_type && found == b"type" => NarError::MultipleTypeFields,
            _ if readable && KEYWORDS.contains(&found) => NarError::UnexpectedField {
                found: shown,
                expected: self.expect.describe(),
            },
            _ => NarError::UnknownField(shown),
        }
    }

    /// Checks a regular file's size and starts reading its contents; `at`
    /// is the NAR offset of the first content byte.
    fn start_contents(&mut self, size_bytes: u64, at: u64) -> Result<(), NarError> {
        if size_bytes > self.limits.file_max_bytes {
            return Err(NarError::FileTooLarge {
                size_bytes,
                max_bytes: self.limits.file_max_bytes,
            });
        }
        // Refusing now, rather than when the budget runs out, spares the
        // caller from writing most of a file that cannot be kept.
        let end = at
            .saturating_add(size_bytes)
            .saturating_add(padding_len(size_bytes) as u64);
        if end > self.limits.nar_max_bytes {
            return Err(NarError::NarTooLarge {
                max_bytes: self.limits.nar_max_bytes,
            });
        }
        self.file_size_bytes = size_bytes;
        self.state = if size_bytes == 0 {
            State::DataPad { left: 0 }
        } else {
            State::Data { left: size_bytes }
        };
        Ok(())
    }

    /// A node's `)` was read: the NAR ends with the root, and an entry's
    /// node is followed by the entry's own `)`.
    fn node_closed(&mut self) {
        if self.depth == 0 {
            self.state = State::Done;
        } else {
            self.expect = Expect::EntryClose;
        }
    }

    /// Builds the event `p` names, borrowing names and targets from the
    /// parser's buffers.
    fn event(&self, p: Pending) -> NarEvent<'_> {
        match p {
            // The directory's own frame is already open, so its name is
            // the last one of the frame below.
            Pending::Directory => NarEvent::Directory {
                name: self.name_at(self.depth - 1),
            },
            Pending::DirectoryEnd => NarEvent::DirectoryEnd,
            Pending::File => NarEvent::File {
                name: self.name_at(self.depth),
                executable: self.executable,
                size_bytes: self.file_size_bytes,
            },
            Pending::FileEnd => NarEvent::FileEnd,
            Pending::Symlink => NarEvent::Symlink {
                name: self.name_at(self.depth),
                target: &self.token,
            },
        }
    }

    /// The name of a node whose parent directories number `open_dirs`: the
    /// last entry name of the innermost of them, or empty for the root.
    fn name_at(&self, open_dirs: usize) -> &[u8] {
        match open_dirs.checked_sub(1) {
            Some(i) => &self.dirs[i].last_name,
            None => &[],
        }
    }
}

//! The push-based `.drv` parser.
//!
//! It accepts exactly the language of the daemon's `parseDerivation`, which
//! is a little wider than what printers write:
//!
//! - a list is `[`, then elements each optionally preceded by one `,`, then
//!   `]`: the daemon's `endOfList` eats a `,` or a `]` and otherwise starts
//!   an element, so `["a""b"]` and `[,"a"]` are accepted, `["a",]` is not;
//! - strings may hold any byte; `\n`, `\r`, `\t` decode to LF, CR, TAB and
//!   `\X` to `X` for any other byte;
//! - paths (output paths, input derivations, input sources) must start
//!   with `/`;
//! - a repeated output id, input derivation or variable name replaces the
//!   earlier one; repeated set members collapse;
//! - parsing stops after the final `)`: bytes after it are not consumed,
//!   and the daemon ignores them, so the caller decides (see
//!   [`parse_derivation`]).
//!
//! Deliberate differences, all on input the daemon cannot handle either:
//! every string must be valid UTF-8 once decoded (the daemon takes any
//! bytes); the input ending inside a string is an error (the daemon's
//! parser loops forever there); and sizes are bounded by [`DrvLimits`].
//!
//! Keeps true:
//! - any split of the same bytes into [`DrvParser::feed`] calls gives the
//!   same derivation, the same consumed count, or the same error;
//! - no byte after the final `)` is consumed, and `NeedMore` means the
//!   whole input was consumed;
//! - memory is bounded by the limits: one string being read of at most
//!   [`DrvLimits::max_string_len_bytes`], and a derivation of at most
//!   [`DrvLimits::max_drv_bytes`] of text in at most
//!   [`DrvLimits::max_items_count`] list elements;
//! - after an error the parser is spent and repeats that error.

use super::{Derivation, DerivationOutput};
use std::collections::BTreeSet;
use std::mem;

/// Bounds on one derivation. The defaults are far above any real Guix
/// derivation (the largest are a few megabytes with a few thousand inputs)
/// and still keep a hostile `.drv` from growing memory without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrvLimits {
    /// Longest text accepted, up to and including the final `)`.
    pub max_drv_bytes: u64,
    /// Longest string, counted after unescaping.
    pub max_string_len_bytes: usize,
    /// Most list elements in the whole derivation: outputs, input
    /// derivations, their output names, sources, arguments and
    /// environment pairs together, counted before duplicates collapse.
    pub max_items_count: u64,
}

impl Default for DrvLimits {
    fn default() -> Self {
        DrvLimits {
            max_drv_bytes: 64 << 20,
            max_string_len_bytes: 64 << 20,
            max_items_count: 1 << 20,
        }
    }
}

/// Why a `.drv` text was rejected. The daemon reports these as
/// ``error parsing derivation `DRV': E``; that wrapping is the caller's.
/// Texts are the daemon's where it has one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DrvParseError {
    /// The next bytes (or the end of input) are not the literal the
    /// grammar requires here; the daemon's `expect`.
    #[error("expected string `{0}'")]
    Expected(&'static str),
    /// A path field is empty or does not start with `/`.
    #[error("bad path `{0}' in derivation")]
    BadPath(String),
    /// A decoded string is not UTF-8 (guixd only).
    #[error("string in derivation is not valid UTF-8")]
    InvalidUtf8,
    /// The input ended inside a string (guixd only: the daemon never
    /// returns from this case).
    #[error("unterminated string in derivation")]
    UnterminatedString,
    #[error("derivation is larger than the limit of {max_bytes} bytes")]
    TooLarge { max_bytes: u64 },
    #[error("derivation contains a string longer than the limit of {max_bytes} bytes")]
    StringTooLong { max_bytes: usize },
    #[error("derivation has more than {max} list elements")]
    TooManyItems { max: u64 },
    /// The caller fed the parser again after it returned the derivation.
    #[error("derivation parser fed after the end of the derivation")]
    FedAfterEnd,
}

/// What one [`DrvParser::feed`] call did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrvFeed {
    /// Bytes consumed: a prefix of the input given. When `derivation` is
    /// `None`, this is the whole input.
    pub consumed: usize,
    /// The derivation, once its final `)` was consumed.
    pub derivation: Option<Derivation>,
}

/// A push-based `.drv` parser.
///
/// It reads the daemon's language, which is wider than what printers
/// write: each list element may be preceded by one optional `,`; strings
/// decode `\n`, `\r`, `\t` and take `\X` as `X`; paths must start with
/// `/`; a repeated key replaces the earlier entry. Unlike the daemon, it
/// refuses strings that are not UTF-8 and text that ends inside a string
/// (where the daemon never returns), and it enforces [`DrvLimits`].
///
/// Feed it bytes as they come; each call consumes a prefix of its input.
/// When the final `)` is consumed the derivation is returned and the rest
/// of the input is left to the caller; the parser is then spent. If the
/// input ends first, [`finish`](DrvParser::finish) gives the error for the
/// truncated text.
///
/// ```
/// use guixd_core::derivation::{DrvLimits, DrvParser};
/// let text = br#"Derive([("out","/s/x","","")],[],[],"sys","/b",[],[("out","/s/x")])"#;
/// let mut parser = DrvParser::new(DrvLimits::default());
/// assert_eq!(parser.feed(&text[..10]).unwrap().derivation, None);
/// let fed = parser.feed(&text[10..]).unwrap();
/// assert_eq!(fed.consumed, text.len() - 10);
/// assert_eq!(fed.derivation.unwrap().platform, "sys");
/// ```
#[derive(Clone, Debug)]
pub struct DrvParser {
    limits: DrvLimits,
    /// Where in the grammar the parser is.
    stage: Stage,
    /// Bytes of the current literal already matched.
    lit_matched: usize,
    /// Progress through the current string.
    string: StrState,
    /// The current string's decoded bytes.
    buf: Vec<u8>,
    /// The derivation being built.
    drv: Derivation,
    /// Fields of the element being read, committed at its end.
    cur_key: String,
    cur_output: DerivationOutput,
    cur_names: BTreeSet<String>,
    cur_value: String,
    items_count: u64,
    consumed_bytes: u64,
    failed: Option<DrvParseError>,
}

impl DrvParser {
    pub fn new(limits: DrvLimits) -> DrvParser {
        DrvParser {
            limits,
            stage: Stage::Header,
            lit_matched: 0,
            string: StrState::Quote,
            buf: Vec::new(),
            drv: Derivation::default(),
            cur_key: String::new(),
            cur_output: DerivationOutput::default(),
            cur_names: BTreeSet::new(),
            cur_value: String::new(),
            items_count: 0,
            consumed_bytes: 0,
            failed: None,
        }
    }

    /// Consumes a prefix of `input`; see the type's documentation.
    pub fn feed(&mut self, input: &[u8]) -> Result<DrvFeed, DrvParseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.stage == Stage::Done {
            return Err(self.fail(DrvParseError::FedAfterEnd));
        }
        // Bytes past the size limit are never looked at, so whatever split
        // the input comes in, the limit trips at the same byte.
        let budget = self
            .limits
            .max_drv_bytes
            .saturating_sub(self.consumed_bytes);
        let input = &input[..input
            .len()
            .min(usize::try_from(budget).unwrap_or(usize::MAX))];
        let consumed = match self.run(input) {
            Ok(n) => n,
            Err(e) => return Err(self.fail(e)),
        };
        self.consumed_bytes += consumed as u64;
        if self.stage == Stage::Done {
            return Ok(DrvFeed {
                consumed,
                derivation: Some(mem::take(&mut self.drv)),
            });
        }
        if self.consumed_bytes >= self.limits.max_drv_bytes {
            let max_bytes = self.limits.max_drv_bytes;
            return Err(self.fail(DrvParseError::TooLarge { max_bytes }));
        }
        Ok(DrvFeed {
            consumed,
            derivation: None,
        })
    }

    /// The input ended before the derivation did: the error the daemon
    /// reports for this truncated text (what it would fail to read next).
    pub fn finish(self) -> DrvParseError {
        if let Some(e) = self.failed {
            return e;
        }
        match self.stage.action() {
            _ if self.stage == Stage::Done => DrvParseError::FedAfterEnd,
            Action::Lit(lit) => DrvParseError::Expected(lit),
            // At the end of input the daemon's `endOfList` says "not the
            // end", so the element's first token is what fails.
            Action::ListNext { element, .. } => match element.action() {
                Action::Lit(lit) => DrvParseError::Expected(lit),
                _ => DrvParseError::Expected("\""),
            },
            Action::Str { .. } if self.string == StrState::Quote => DrvParseError::Expected("\""),
            Action::Str { .. } => DrvParseError::UnterminatedString,
        }
    }

    /// Bytes consumed so far; once done, the length of the derivation text.
    pub fn consumed_bytes(&self) -> u64 {
        self.consumed_bytes
    }

    /// Whether the derivation was returned.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    pub fn limits(&self) -> &DrvLimits {
        &self.limits
    }
}

/// Parses one derivation from the start of `text`, which holds all of it.
/// Returns the derivation and the length of its text; bytes after the
/// final `)` are not looked at (the daemon ignores them; a caller wanting
/// strictness compares the length with `text.len()`).
pub fn parse_derivation(
    text: &[u8],
    limits: DrvLimits,
) -> Result<(Derivation, usize), DrvParseError> {
    let mut parser = DrvParser::new(limits);
    let fed = parser.feed(text)?;
    match fed.derivation {
        Some(drv) => Ok((drv, fed.consumed)),
        None => Err(parser.finish()),
    }
}

/// A position in the grammar, in the order of the text. Each stage does
/// one [`Action`] ([`Stage::action`]) and then moves on ([`Stage::next`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Header,
    OutputsNext,
    OutputOpen,
    OutputId,
    OutputSep1,
    OutputPath,
    OutputSep2,
    OutputAlgo,
    OutputSep3,
    OutputHash,
    OutputClose,
    InputsOpen,
    InputsNext,
    InputOpen,
    InputPath,
    InputNamesOpen,
    InputNamesNext,
    InputName,
    InputClose,
    SrcsOpen,
    SrcsNext,
    Src,
    PlatformSep,
    Platform,
    BuilderSep,
    Builder,
    ArgsOpen,
    ArgsNext,
    Arg,
    EnvOpen,
    EnvNext,
    EnvPairOpen,
    EnvName,
    EnvSep,
    EnvValue,
    EnvPairClose,
    Close,
    Done,
}

/// What a stage reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Exactly these bytes.
    Lit(&'static str),
    /// The daemon's `endOfList`: `,` then `element`, `]` then `after`, or
    /// anything else (not consumed) then `element`.
    ListNext { element: Stage, after: Stage },
    /// A quoted string; a path must start with `/`.
    Str { path: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StrState {
    /// Before the opening quote.
    Quote,
    /// Inside the string.
    Body,
    /// Right after a backslash.
    Escape,
}

impl Stage {
    fn action(self) -> Action {
        use Stage::*;
        let list = |element, after| Action::ListNext { element, after };
        match self {
            Header => Action::Lit("Derive(["),
            OutputsNext => list(OutputOpen, InputsOpen),
            OutputOpen | InputOpen | EnvPairOpen => Action::Lit("("),
            OutputSep1 | OutputSep2 | OutputSep3 | PlatformSep | BuilderSep | EnvSep => {
                Action::Lit(",")
            }
            OutputClose | InputClose | EnvPairClose | Close | Done => Action::Lit(")"),
            InputsOpen | InputNamesOpen | SrcsOpen | ArgsOpen | EnvOpen => Action::Lit(",["),
            InputsNext => list(InputOpen, SrcsOpen),
            InputNamesNext => list(InputName, InputClose),
            SrcsNext => list(Src, PlatformSep),
            ArgsNext => list(Arg, EnvOpen),
            EnvNext => list(EnvPairOpen, Close),
            OutputPath | InputPath | Src => Action::Str { path: true },
            OutputId | OutputAlgo | OutputHash | InputName | Platform | Builder | Arg | EnvName
            | EnvValue => Action::Str { path: false },
        }
    }

    /// The stage after a literal or a string stage completes. List stages
    /// choose their successor themselves.
    fn next(self) -> Stage {
        use Stage::*;
        match self {
            Header => OutputsNext,
            OutputOpen => OutputId,
            OutputId => OutputSep1,
            OutputSep1 => OutputPath,
            OutputPath => OutputSep2,
            OutputSep2 => OutputAlgo,
            OutputAlgo => OutputSep3,
            OutputSep3 => OutputHash,
            OutputHash => OutputClose,
            OutputClose => OutputsNext,
            InputsOpen => InputsNext,
            InputOpen => InputPath,
            InputPath => InputNamesOpen,
            InputNamesOpen => InputNamesNext,
            InputName => InputNamesNext,
            InputClose => InputsNext,
            SrcsOpen => SrcsNext,
            Src => SrcsNext,
            PlatformSep => Platform,
            Platform => BuilderSep,
            BuilderSep => Builder,
            Builder => ArgsOpen,
            ArgsOpen => ArgsNext,
            Arg => ArgsNext,
            EnvOpen => EnvNext,
            EnvPairOpen => EnvName,
            EnvName => EnvSep,
            EnvSep => EnvValue,
            EnvValue => EnvPairClose,
            EnvPairClose => EnvNext,
            Close => Done,
            OutputsNext | InputsNext | InputNamesNext | SrcsNext | ArgsNext | EnvNext | Done => {
                self
            }
        }
    }
}

impl DrvParser {
    fn fail(&mut self, e: DrvParseError) -> DrvParseError {
        self.failed = Some(e.clone());
        e
    }

    /// Consumes `input` until it runs out or the derivation ends; returns
    /// the count consumed.
    fn run(&mut self, input: &[u8]) -> Result<usize, DrvParseError> {
        let mut i = 0;
        while self.stage != Stage::Done {
            match self.stage.action() {
                Action::Lit(lit) => {
                    let want = &lit.as_bytes()[self.lit_matched..];
                    let have = &input[i..];
                    let n = want.len().min(have.len());
                    if want[..n] != have[..n] {
                        return Err(DrvParseError::Expected(lit));
                    }
                    i += n;
                    if n < want.len() {
                        self.lit_matched += n;
                        return Ok(i);
                    }
                    self.lit_matched = 0;
                    self.end_literal();
                }
                Action::ListNext { element, after } => {
                    let Some(&b) = input.get(i) else {
                        return Ok(i);
                    };
                    if b == b']' {
                        i += 1;
                        self.stage = after;
                        continue;
                    }
                    if b == b',' {
                        i += 1;
                    }
                    self.items_count += 1;
                    if self.items_count > self.limits.max_items_count {
                        let max = self.limits.max_items_count;
                        return Err(DrvParseError::TooManyItems { max });
                    }
                    self.stage = element;
                }
                Action::Str { path } => {
                    let (n, complete) = self.read_string(&input[i..])?;
                    i += n;
                    if !complete {
                        return Ok(i);
                    }
                    self.end_string(path)?;
                }
            }
        }
        Ok(i)
    }

    fn end_literal(&mut self) {
        match self.stage {
            Stage::OutputClose => {
                let id = mem::take(&mut self.cur_key);
                let out = mem::take(&mut self.cur_output);
                self.drv.outputs.insert(id, out);
            }
            Stage::InputClose => {
                let path = mem::take(&mut self.cur_key);
                let names = mem::take(&mut self.cur_names);
                self.drv.input_drvs.insert(path, names);
            }
            Stage::EnvPairClose => {
                let name = mem::take(&mut self.cur_key);
                let value = mem::take(&mut self.cur_value);
                self.drv.env.insert(name, value);
            }
            _ => {}
        }
        self.stage = self.stage.next();
    }

    /// Reads as much of the current string as `input` holds. Returns the
    /// count consumed and whether the closing quote was among it.
    fn read_string(&mut self, input: &[u8]) -> Result<(usize, bool), DrvParseError> {
        let mut i = 0;
        loop {
            match self.string {
                StrState::Quote => {
                    let Some(&b) = input.get(i) else {
                        return Ok((i, false));
                    };
                    if b != b'"' {
                        return Err(DrvParseError::Expected("\""));
                    }
                    i += 1;
                    self.buf.clear();
                    self.string = StrState::Body;
                }
                StrState::Body => {
                    let rest = &input[i..];
                    let Some(n) = rest.iter().position(|&b| b == b'"' || b == b'\\') else {
                        self.push(rest)?;
                        return Ok((input.len(), false));
                    };
                    self.push(&rest[..n])?;
                    i += n + 1;
                    if rest[n] == b'"' {
                        self.string = StrState::Quote;
                        return Ok((i, true));
                    }
                    self.string = StrState::Escape;
                }
                StrState::Escape => {
                    let Some(&b) = input.get(i) else {
                        return Ok((i, false));
                    };
                    let decoded = match b {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        other => other,
                    };
                    self.push(&[decoded])?;
                    i += 1;
                    self.string = StrState::Body;
                }
            }
        }
    }

    /// Appends decoded bytes to the current string, within the limit.
    fn push(&mut self, bytes: &[u8]) -> Result<(), DrvParseError> {
        let max_bytes = self.limits.max_string_len_bytes;
        if bytes.len() > max_bytes - self.buf.len() {
            return Err(DrvParseError::StringTooLong { max_bytes });
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn end_string(&mut self, path: bool) -> Result<(), DrvParseError> {
        let s =
            String::from_utf8(mem::take(&mut self.buf)).map_err(|_| DrvParseError::InvalidUtf8)?;
        if path && !s.starts_with('/') {
            return Err(DrvParseError::BadPath(s));
        }
        match self.stage {
            Stage::OutputId | Stage::InputPath | Stage::EnvName => self.cur_key = s,
            Stage::OutputPath => self.cur_output.path = s,
            Stage::OutputAlgo => self.cur_output.hash_algo = s,
            Stage::OutputHash => self.cur_output.hash = s,
            Stage::EnvValue => self.cur_value = s,
            Stage::InputName => {
                self.cur_names.insert(s);
            }
            Stage::Src => {
                self.drv.input_srcs.insert(s);
            }
            Stage::Platform => self.drv.platform = s,
            Stage::Builder => self.drv.builder = s,
            Stage::Arg => self.drv.args.push(s),
            _ => {}
        }
        self.stage = self.stage.next();
        Ok(())
    }
}

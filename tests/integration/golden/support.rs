//! What every golden-vector check shares: loading a JSON file (and checking
//! its header), a failure report that names the file and the vector, hex
//! decoding of the data, file trees and their NARs, and the NAR parser
//! driven over any chunking.
//!
//! Keeps true: nothing here depends on the code under test for reading the
//! data itself (hex is decoded by a helper of its own), so a bug in
//! `guixd_core::hex` cannot hide a bug elsewhere; and a [`Report`] panics
//! only in [`Report::finish`], listing every failure of its file at once.

use guixd_core::StoreDir;
use guixd_core::export::{ExportLimits, ExportOutcome, ExportParser, ExportedItem};
use guixd_core::nar::{NarEvent, NarLimits, NarParser, NarTree, NarWriter, Outcome};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::{Debug, Display};

/// The store directory every vector was made with.
pub const STORE_DIR: &str = "/gnu/store";

/// Chunk sizes every push parser is fed with: all at once, byte by byte,
/// and sizes that straddle the 8-byte alignment of wire and NAR tokens.
pub const CHUNK_SIZES: [usize; 4] = [usize::MAX, 1, 3, 13];

/// How a chunk size reads in a failure message.
pub fn chunking(chunk: usize) -> String {
    if chunk == usize::MAX {
        "in one go".into()
    } else {
        format!("in chunks of {chunk}")
    }
}

/// Reads `tests/golden/FILE`, checks its header and deserialises it.
pub fn load<T: DeserializeOwned>(file: &str) -> T {
    let path = guixd_tests::golden_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{file}: cannot read {}: {e}", path.display()));
    let value: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: not JSON: {e}"));
    let header: Header =
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{file}: bad header: {e}"));
    let kind = file.strip_suffix(".json").unwrap_or(file);
    assert_eq!(header.format, 1, "{file}: format");
    assert_eq!(header.kind, kind, "{file}: kind");
    assert_eq!(header.guix_version, "1.5.0", "{file}: guix_version");
    assert_eq!(header.store_dir, STORE_DIR, "{file}: store_dir");
    serde_json::from_value(value).unwrap_or_else(|e| panic!("{file}: unexpected layout: {e}"))
}

/// The store directory of the vectors.
pub fn store() -> StoreDir {
    StoreDir::new(STORE_DIR).expect("an absolute path")
}

/// The header every golden file starts with.
#[derive(Deserialize)]
struct Header {
    format: u32,
    kind: String,
    guix_version: String,
    store_dir: String,
}

/// The failures found in one golden file. Checks record a failure and go
/// on, so one run shows every vector that disagrees; [`Report::finish`]
/// then panics with all of them.
pub struct Report {
    file: &'static str,
    failures: Vec<String>,
    checks: usize,
}

impl Report {
    pub fn new(file: &'static str) -> Report {
        Report {
            file,
            failures: Vec::new(),
            checks: 0,
        }
    }

    /// Records a failure of `what` for `vector` unless `ok`.
    pub fn check(&mut self, vector: &str, what: &str, ok: bool, detail: impl Display) {
        self.checks += 1;
        if !ok {
            self.failures
                .push(format!("{}: {vector}: {what}: {detail}", self.file));
        }
    }

    /// Records a failure unless `actual == expected`.
    pub fn eq<T: PartialEq + Debug + ?Sized>(
        &mut self,
        vector: &str,
        what: &str,
        actual: &T,
        expected: &T,
    ) {
        let ok = actual == expected;
        self.check(
            vector,
            what,
            ok,
            format_args!("expected {expected:?}, got {actual:?}"),
        );
    }

    /// Like [`Report::eq`] for byte strings, which may be large: a failure
    /// shows the lengths and the first differing offset with some context.
    pub fn eq_bytes(&mut self, vector: &str, what: &str, actual: &[u8], expected: &[u8]) {
        let ok = actual == expected;
        self.check(
            vector,
            what,
            ok,
            format_args!("{}", bytes_diff(actual, expected)),
        );
    }

    /// Records an unconditional failure.
    pub fn fail(&mut self, vector: &str, what: &str, detail: impl Display) {
        self.check(vector, what, false, detail);
    }

    /// The value of `result`, or `None` after recording its error.
    pub fn ok<T, E: Display>(
        &mut self,
        vector: &str,
        what: &str,
        result: Result<T, E>,
    ) -> Option<T> {
        match result {
            Ok(v) => {
                self.checks += 1;
                Some(v)
            }
            Err(e) => {
                self.fail(vector, what, format_args!("unexpected error: {e}"));
                None
            }
        }
    }

    /// Panics with every failure recorded, if any.
    pub fn finish(self) {
        assert!(self.checks > 0, "{}: no check ran", self.file);
        if !self.failures.is_empty() {
            panic!(
                "{} of {} checks of {} failed:\n{}",
                self.failures.len(),
                self.checks,
                self.file,
                self.failures.join("\n")
            );
        }
        eprintln!("{}: all {} checks passed", self.file, self.checks);
    }
}

/// Decodes lowercase hex from a golden file. A malformed string is a
/// broken data file, not a failure of guixd.
pub fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd-length hex in a golden file: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16)
                .unwrap_or_else(|_| panic!("bad hex in a golden file: {s}"))
        })
        .collect()
}

/// Lowercase hex, for messages and comparisons with `*_hex` fields.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file-system object as the golden files describe it (README, "Trees").
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Tree {
    Regular {
        executable: bool,
        #[serde(default)]
        contents_hex: Option<String>,
        /// With `pattern_hex`: the large file, `size` bytes of the pattern
        /// repeated.
        #[serde(default)]
        size: Option<usize>,
        #[serde(default)]
        pattern_hex: Option<String>,
    },
    Symlink {
        target: String,
    },
    /// Entries in creation order, deliberately unsorted.
    Directory {
        entries: Vec<Entry>,
    },
}

#[derive(Clone, Debug, Deserialize)]
pub struct Entry {
    pub name: String,
    pub node: Tree,
}

impl Tree {
    /// The contents of a regular file; `None` for anything else.
    pub fn file_contents(&self) -> Option<Vec<u8>> {
        match self {
            Tree::Regular {
                contents_hex: Some(h),
                ..
            } => Some(unhex(h)),
            Tree::Regular {
                size: Some(size),
                pattern_hex: Some(p),
                ..
            } => {
                let pattern = unhex(p);
                Some(pattern.iter().copied().cycle().take(*size).collect())
            }
            _ => None,
        }
    }

    /// The NAR of this tree, written event by event with `NarWriter`, each
    /// directory's entries sorted bytewise by their UTF-8 names (as every
    /// NAR writer does), file contents in 4 KiB `FileData` chunks.
    pub fn to_nar(&self) -> Result<Vec<u8>, String> {
        let mut writer = NarWriter::new();
        let mut out = Vec::new();
        self.write(b"", &mut writer, &mut out)?;
        if !writer.is_done() {
            return Err("the writer is not done after the root node".into());
        }
        Ok(out)
    }

    /// The same tree as a `NarTree`, for comparison with what the parser
    /// reads back. Duplicate names are a broken data file.
    pub fn to_nar_tree(&self) -> NarTree {
        match self {
            Tree::Regular { executable, .. } => NarTree::File {
                executable: *executable,
                contents: self.file_contents().expect("a regular file has contents"),
            },
            Tree::Symlink { target } => NarTree::Symlink {
                target: target.as_bytes().to_vec(),
            },
            Tree::Directory { entries } => {
                let mut map = BTreeMap::new();
                for e in entries {
                    let old = map.insert(e.name.as_bytes().to_vec(), e.node.to_nar_tree());
                    assert!(
                        old.is_none(),
                        "duplicate entry `{}' in a golden tree",
                        e.name
                    );
                }
                NarTree::Directory(map)
            }
        }
    }

    fn write(&self, name: &[u8], writer: &mut NarWriter, out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Tree::Regular { executable, .. } => {
                let contents = self
                    .file_contents()
                    .ok_or("a regular file without contents")?;
                let event = NarEvent::File {
                    name,
                    executable: *executable,
                    size_bytes: contents.len() as u64,
                };
                put(writer, event, out)?;
                for chunk in contents.chunks(4096) {
                    put(writer, NarEvent::FileData(chunk), out)?;
                }
                put(writer, NarEvent::FileEnd, out)
            }
            Tree::Symlink { target } => {
                let target = target.as_bytes();
                put(writer, NarEvent::Symlink { name, target }, out)
            }
            Tree::Directory { entries } => {
                put(writer, NarEvent::Directory { name }, out)?;
                let mut sorted: Vec<&Entry> = entries.iter().collect();
                sorted.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
                for e in sorted {
                    e.node.write(e.name.as_bytes(), writer, out)?;
                }
                put(writer, NarEvent::DirectoryEnd, out)
            }
        }
    }
}

/// Hands one event to the writer, with its refusal as a message.
fn put(writer: &mut NarWriter, event: NarEvent<'_>, out: &mut Vec<u8>) -> Result<(), String> {
    writer.write(event, out).map_err(|e| e.to_string())
}

/// Parses the NAR at the start of `input`, fed to `NarParser` in chunks of
/// `chunk` bytes, and writes every event straight back with `NarWriter`.
/// Returns the rewritten NAR and how many bytes of `input` the parser
/// consumed (the NAR's length: bytes after it are not the parser's).
pub fn reparse_nar(input: &[u8], chunk: usize) -> Result<(Vec<u8>, usize), String> {
    let mut parser = NarParser::new(NarLimits::default());
    let mut writer = NarWriter::new();
    let mut out = Vec::new();
    let mut pos: usize = 0;
    loop {
        let end = pos.saturating_add(chunk).min(input.len());
        let step = parser
            .feed(&input[pos..end])
            .map_err(|e| format!("parser error at byte {pos}: {e}"))?;
        pos += step.consumed;
        match step.outcome {
            Outcome::Event(event) => writer
                .write(event, &mut out)
                .map_err(|e| format!("writer refused a parsed event: {e}"))?,
            Outcome::NeedMore if end == input.len() => {
                return Err(format!("the input ends inside the NAR, at byte {pos}"));
            }
            Outcome::NeedMore => {}
            Outcome::Done => break,
        }
    }
    if !writer.is_done() {
        return Err("the parser said done but the rewritten NAR is incomplete".into());
    }
    Ok((out, pos))
}

/// Checks that `nar` parses completely under every chunking in
/// [`CHUNK_SIZES`] and is rewritten byte for byte, and that `NarTree`
/// reads it and writes it back the same.
pub fn check_nar_round_trip(report: &mut Report, vector: &str, nar: &[u8]) {
    for chunk in CHUNK_SIZES {
        let what = format!("NAR parsed {} and rewritten", chunking(chunk));
        if let Some((rewritten, consumed)) = report.ok(vector, &what, reparse_nar(nar, chunk)) {
            report.eq(
                vector,
                &format!("{what}: bytes consumed"),
                &consumed,
                &nar.len(),
            );
            report.eq_bytes(vector, &what, &rewritten, nar);
        }
    }
    let tree = NarTree::from_nar(nar, NarLimits::default());
    if let Some(tree) = report.ok(vector, "NarTree::from_nar", tree)
        && let Some(again) = report.ok(vector, "NarTree::to_nar", tree.to_nar())
    {
        report.eq_bytes(vector, "NarTree round trip", &again, nar);
    }
}

/// Where two byte strings first differ, for failure messages.
fn bytes_diff(actual: &[u8], expected: &[u8]) -> String {
    let Some(at) = actual.iter().zip(expected).position(|(a, b)| a != b) else {
        if actual.len() == expected.len() {
            return "equal".into();
        }
        return format!(
            "lengths differ: expected {} bytes, got {} (one is a prefix of the other)",
            expected.len(),
            actual.len()
        );
    };
    let from = at.saturating_sub(16);
    let window = |b: &[u8]| hex(&b[from..(at + 16).min(b.len())]);
    format!(
        "expected {} bytes, got {}; first difference at byte {at}: expected …{}…, got …{}…",
        expected.len(),
        actual.len(),
        window(expected),
        window(actual)
    )
}

/// What an export stream held, item by item.
pub struct ParsedExport {
    pub items: Vec<ExportedItem>,
    /// Each item's NAR, rewritten with `NarWriter` from the parser's events.
    pub nars: Vec<Vec<u8>>,
    /// Bytes consumed, through the final marker 0.
    pub consumed: usize,
}

/// Parses an export bundle (markers included) fed to `ExportParser` in
/// chunks of `chunk` bytes.
pub fn parse_export(input: &[u8], chunk: usize) -> Result<ParsedExport, String> {
    let mut parser = ExportParser::new(store(), ExportLimits::default());
    let mut parsed = ParsedExport {
        items: Vec::new(),
        nars: Vec::new(),
        consumed: 0,
    };
    let mut writer = NarWriter::new();
    let mut nar = Vec::new();
    let mut pos: usize = 0;
    loop {
        let end = pos.saturating_add(chunk).min(input.len());
        let step = parser
            .feed(&input[pos..end])
            .map_err(|e| format!("export parser error at byte {pos}: {e}"))?;
        pos += step.consumed;
        match step.outcome {
            ExportOutcome::NeedMore if end == input.len() => {
                return Err(format!("the input ends inside the export, at byte {pos}"));
            }
            ExportOutcome::NeedMore => {}
            ExportOutcome::ItemStart => {
                writer = NarWriter::new();
                nar.clear();
            }
            ExportOutcome::Nar(event) => put(&mut writer, event, &mut nar)?,
            ExportOutcome::NarEnd => parsed.nars.push(std::mem::take(&mut nar)),
            ExportOutcome::Item(item) => parsed.items.push(item),
            ExportOutcome::End => break,
        }
    }
    parsed.consumed = pos;
    Ok(parsed)
}

//! Tests of the NAR parser, writer and helpers: known byte layouts and
//! vectors, every rejection, and properties (round trips, any chunking
//! gives the same parse, arbitrary or mutated bytes never panic).

use super::*;
use crate::hash::{Hash, HashAlgo};
use quickcheck::{Arbitrary, Gen};
use std::collections::BTreeMap;

// ---------------------------------------------------------------------
// Helpers.

/// Builds NAR bytes token by token, independently of the writer.
#[derive(Default)]
struct B(Vec<u8>);

impl B {
    fn new() -> B {
        B::default().s(b"nix-archive-1")
    }
    /// A string token.
    fn s(mut self, bytes: &[u8]) -> B {
        self.0
            .extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.0.extend_from_slice(bytes);
        while self.0.len() % 8 != 0 {
            self.0.push(0);
        }
        self
    }
    fn ss(self, tokens: &[&[u8]]) -> B {
        tokens.iter().fold(self, |b, t| b.s(t))
    }
    /// A bare u64 (a contents size).
    fn n(mut self, n: u64) -> B {
        self.0.extend_from_slice(&n.to_le_bytes());
        self
    }
    /// Raw bytes.
    fn raw(mut self, bytes: &[u8]) -> B {
        self.0.extend_from_slice(bytes);
        self
    }
    /// A whole regular node.
    fn file(self, executable: bool, contents: &[u8]) -> B {
        let b = self.ss(&[b"(", b"type", b"regular"]);
        let b = if executable {
            b.ss(&[b"executable", b""])
        } else {
            b
        };
        b.s(b"contents")
            .n(contents.len() as u64)
            .raw(contents)
            .raw(&[0; 8][..padding_len(contents.len() as u64)])
            .s(b")")
    }
    fn entry_start(self, name: &[u8]) -> B {
        self.ss(&[b"entry", b"(", b"name", name, b"node"])
    }
    fn bytes(self) -> Vec<u8> {
        self.0
    }
}

/// An owned copy of a [`NarEvent`], for comparing event streams.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Dir(Vec<u8>),
    DirEnd,
    File(Vec<u8>, bool, u64),
    Data(Vec<u8>),
    FileEnd,
    Link(Vec<u8>, Vec<u8>),
}

impl Ev {
    fn of(e: NarEvent<'_>) -> Ev {
        match e {
            NarEvent::Directory { name } => Ev::Dir(name.to_vec()),
            NarEvent::DirectoryEnd => Ev::DirEnd,
            NarEvent::File {
                name,
                executable,
                size_bytes,
            } => Ev::File(name.to_vec(), executable, size_bytes),
            NarEvent::FileData(d) => Ev::Data(d.to_vec()),
            NarEvent::FileEnd => Ev::FileEnd,
            NarEvent::Symlink { name, target } => Ev::Link(name.to_vec(), target.to_vec()),
        }
    }
}

/// Appends `e`, merging consecutive data chunks, so streams that differ
/// only in how contents were cut compare equal.
fn push_merged(events: &mut Vec<Ev>, e: Ev) {
    if let (Some(Ev::Data(prev)), Ev::Data(more)) = (events.last_mut(), &e) {
        prev.extend_from_slice(more);
        return;
    }
    events.push(e);
}

/// How a parse ended: the NAR's size, the input ran out, or an error.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    Done(usize),
    NeedMore,
    Failed(NarError),
}

/// Parses `bytes` fed in chunks whose sizes cycle through `splits` (all of
/// it at once when `splits` is empty), checking the step invariants on the
/// way. Returns the merged events and how it ended.
fn parse_chunked(bytes: &[u8], splits: &[usize], limits: &NarLimits) -> (Vec<Ev>, End) {
    let mut parser = NarParser::new(limits.clone());
    let mut events = Vec::new();
    let mut offset = 0;
    let mut split = 0;
    loop {
        let size = match splits {
            [] => bytes.len() - offset,
            _ => splits[split % splits.len()].max(1),
        };
        split += 1;
        let end = (offset + size).min(bytes.len());
        let chunk = &bytes[offset..end];
        let mut pos = 0;
        loop {
            let step = match parser.feed(&chunk[pos..]) {
                Ok(s) => s,
                Err(e) => {
                    // A spent parser repeats its error.
                    assert_eq!(parser.feed(b"more").err(), Some(e.clone()));
                    return (events, End::Failed(e));
                }
            };
            assert!(step.consumed <= chunk.len() - pos);
            pos += step.consumed;
            match step.outcome {
                Outcome::NeedMore => {
                    assert_eq!(pos, chunk.len(), "NeedMore left input unconsumed");
                    break;
                }
                Outcome::Done => {
                    let size = offset + pos;
                    assert_eq!(parser.consumed_bytes(), size as u64);
                    assert!(parser.is_done());
                    let again = parser.feed(&chunk[pos..]).map(|s| (s.consumed, s.outcome));
                    assert_eq!(again, Ok((0, Outcome::Done)));
                    return (events, End::Done(size));
                }
                Outcome::Event(e) => {
                    if let NarEvent::FileData(d) = e {
                        assert!(!d.is_empty(), "empty FileData event");
                    }
                    push_merged(&mut events, Ev::of(e));
                }
            }
        }
        offset = end;
        if offset == bytes.len() {
            return (events, End::NeedMore);
        }
    }
}

fn events_of(bytes: &[u8]) -> Result<Vec<Ev>, NarError> {
    let mut events = Vec::new();
    parse_complete(bytes, NarLimits::default(), |e| {
        push_merged(&mut events, Ev::of(e))
    })?;
    Ok(events)
}

fn err_of(bytes: &[u8]) -> NarError {
    err_with(bytes, &NarLimits::default())
}

fn err_with(bytes: &[u8], limits: &NarLimits) -> NarError {
    match parse_chunked(bytes, &[], limits) {
        (_, End::Failed(e)) => {
            // Byte by byte, the same error comes out.
            assert_eq!(parse_chunked(bytes, &[1], limits).1, End::Failed(e.clone()));
            e
        }
        (_, end) => panic!("expected an error, got {end:?}"),
    }
}

fn write_events(events: &[NarEvent<'_>]) -> Result<Vec<u8>, NarWriteError> {
    let mut w = NarWriter::new();
    let mut out = Vec::new();
    for e in events {
        w.write(*e, &mut out)?;
    }
    assert!(w.is_done());
    Ok(out)
}

fn dir(entries: Vec<(&[u8], NarTree)>) -> NarTree {
    NarTree::Directory(entries.into_iter().map(|(n, t)| (n.to_vec(), t)).collect())
}

fn file(executable: bool, contents: &[u8]) -> NarTree {
    NarTree::File {
        executable,
        contents: contents.to_vec(),
    }
}

fn link(target: &[u8]) -> NarTree {
    NarTree::Symlink {
        target: target.to_vec(),
    }
}

// ---------------------------------------------------------------------
// Known layouts and vectors.

#[test]
fn empty_regular_file_layout() {
    // Written out byte by byte, so the token encoder is checked too.
    let mut expected = Vec::new();
    for (len, text) in [
        (13u8, &b"nix-archive-1"[..]),
        (1, b"("),
        (4, b"type"),
        (7, b"regular"),
        (8, b"contents"),
    ] {
        expected.extend_from_slice(&[len, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(text);
        expected.resize(expected.len().next_multiple_of(8), 0);
    }
    expected.extend_from_slice(&[0; 8]); // size 0, no contents, no padding
    expected.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, b')', 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(expected.len(), 112);

    assert_eq!(file_nar(false, b""), expected);
    assert_eq!(file(false, b"").to_nar().unwrap(), expected);
    assert_eq!(
        events_of(&expected).unwrap(),
        vec![Ev::File(vec![], false, 0), Ev::FileEnd]
    );
}

#[test]
fn executable_file_layout() {
    let expected = B::new().file(true, b"abc").bytes();
    // The marker sits between the type and the contents.
    let marker = B::default().ss(&[b"regular", b"executable", b"", b"contents"]);
    assert!(expected.windows(marker.0.len()).any(|w| w == marker.0));
    assert_eq!(file_nar(true, b"abc"), expected);
    assert_eq!(
        events_of(&expected).unwrap(),
        vec![
            Ev::File(vec![], true, 3),
            Ev::Data(b"abc".to_vec()),
            Ev::FileEnd
        ]
    );
}

#[test]
fn symlink_layout() {
    let expected = B::new()
        .ss(&[b"(", b"type", b"symlink", b"target", b"../lib/x", b")"])
        .bytes();
    assert_eq!(link(b"../lib/x").to_nar().unwrap(), expected);
    assert_eq!(
        events_of(&expected).unwrap(),
        vec![Ev::Link(vec![], b"../lib/x".to_vec())]
    );
}

#[test]
fn nested_directories_layout() {
    let tree = dir(vec![
        (b"bin", dir(vec![(b"sh", link(b"bash"))])),
        (b"empty", dir(vec![])),
        (b"f", file(false, b"hello")),
    ]);
    let expected = B::new()
        .ss(&[b"(", b"type", b"directory"])
        .entry_start(b"bin")
        .ss(&[b"(", b"type", b"directory"])
        .entry_start(b"sh")
        .ss(&[b"(", b"type", b"symlink", b"target", b"bash", b")"])
        .s(b")") // entry sh
        .s(b")") // directory bin
        .s(b")") // entry bin
        .entry_start(b"empty")
        .ss(&[b"(", b"type", b"directory", b")"])
        .s(b")") // entry empty
        .entry_start(b"f")
        .file(false, b"hello")
        .s(b")") // entry f
        .s(b")") // root
        .bytes();
    assert_eq!(tree.to_nar().unwrap(), expected);
    assert_eq!(NarTree::from_nar(&expected, NarLimits::default()), Ok(tree));
    assert_eq!(
        events_of(&expected).unwrap(),
        vec![
            Ev::Dir(vec![]),
            Ev::Dir(b"bin".to_vec()),
            Ev::Link(b"sh".to_vec(), b"bash".to_vec()),
            Ev::DirEnd,
            Ev::Dir(b"empty".to_vec()),
            Ev::DirEnd,
            Ev::File(b"f".to_vec(), false, 5),
            Ev::Data(b"hello".to_vec()),
            Ev::FileEnd,
            Ev::DirEnd,
        ]
    );
}

#[test]
fn executable_shell_script_vector() {
    // Spec 02 §4: the recursive NAR of an executable `#!/bin/sh\n`.
    let nar = file_nar(true, b"#!/bin/sh\n");
    assert_eq!(nar.len(), 160);
    let hex = Hash::sha256(&nar).to_hex();
    assert!(
        hex.starts_with("6283c166") && hex.ends_with("6554"),
        "{hex}"
    );
    assert_eq!(
        hash_file_nar(HashAlgo::Sha256, true, b"#!/bin/sh\n").to_hex(),
        hex
    );
    let mut h = FileNarHasher::new(HashAlgo::Sha256, true, 10);
    h.update(b"#!/bin").unwrap();
    h.update(b"").unwrap();
    h.update(b"/sh\n").unwrap();
    assert_eq!(h.finish().unwrap().to_hex(), hex);
}

#[test]
fn single_file_helpers_agree() {
    for size in 0..20usize {
        let contents: Vec<u8> = (0..size as u8).collect();
        for executable in [false, true] {
            let nar = file_nar(executable, &contents);
            let mut glued = file_nar_prefix(executable, size as u64);
            glued.extend_from_slice(&contents);
            glued.extend_from_slice(file_nar_suffix(size as u64));
            assert_eq!(glued, nar);
            assert_eq!(nar.len() % 8, 0);
            assert_eq!(file(executable, &contents).to_nar().unwrap(), nar);
            for algo in [HashAlgo::Sha256, HashAlgo::Md5] {
                assert_eq!(
                    hash_file_nar(algo, executable, &contents),
                    Hash::digest(algo, &nar)
                );
            }
        }
    }
}

#[test]
fn file_nar_hasher_checks_the_size() {
    let mut h = FileNarHasher::new(HashAlgo::Sha256, false, 3);
    h.update(b"ab").unwrap();
    assert_eq!(
        h.clone().update(b"cd"),
        Err(NarWriteError::FileTooLong { size_bytes: 3 })
    );
    assert_eq!(
        h.finish(),
        Err(NarWriteError::FileTooShort {
            size_bytes: 3,
            missing_bytes: 1
        })
    );
}

// ---------------------------------------------------------------------
// Streaming behaviour.

#[test]
fn never_consumes_past_the_end() {
    let mut bytes = file_nar(false, b"data");
    let len = bytes.len();
    bytes.extend_from_slice(b"next request on the socket");
    let (_, end) = parse_chunked(&bytes, &[], &NarLimits::default());
    assert_eq!(end, End::Done(len));
    let (_, end) = parse_chunked(&bytes, &[3], &NarLimits::default());
    assert_eq!(end, End::Done(len));
    assert_eq!(
        parse_complete(&bytes, NarLimits::default(), |_| {}),
        Err(NarError::TrailingBytes { count: 26 })
    );
    assert_eq!(
        parse_complete(&bytes[..len - 1], NarLimits::default(), |_| {}),
        Err(NarError::Truncated)
    );
}

#[test]
fn empty_input_needs_more() {
    let mut p = NarParser::new(NarLimits::default());
    let step = p.feed(b"").unwrap();
    assert_eq!((step.consumed, step.outcome), (0, Outcome::NeedMore));
    assert!(step.needs_more() && !step.is_done() && step.event().is_none());
}

#[test]
fn file_data_is_borrowed_from_the_input_in_large_slices() {
    // A 3 GiB file: the parser streams it without holding it.
    let size: u64 = 3 << 30;
    let prefix = file_nar_prefix(true, size);
    let mut p = NarParser::new(NarLimits::default());
    let step = p.feed(&prefix).unwrap();
    assert_eq!(step.consumed, prefix.len());
    assert_eq!(
        step.event(),
        Some(NarEvent::File {
            name: b"",
            executable: true,
            size_bytes: size
        })
    );
    let buf = vec![7u8; 1 << 20];
    for _ in 0..8 {
        let step = p.feed(&buf).unwrap();
        assert_eq!(step.consumed, buf.len());
        match step.event() {
            Some(NarEvent::FileData(d)) => {
                assert_eq!(d.as_ptr(), buf.as_ptr());
                assert_eq!(d.len(), buf.len());
            }
            other => panic!("expected data, got {other:?}"),
        }
    }
    assert_eq!(p.consumed_bytes(), prefix.len() as u64 + 8 * (1 << 20));
}

#[test]
fn data_events_stop_at_the_end_of_the_file() {
    let bytes = B::new()
        .ss(&[b"(", b"type", b"directory"])
        .entry_start(b"a")
        .file(false, b"0123456789")
        .s(b")")
        .s(b")")
        .bytes();
    let mut p = NarParser::new(NarLimits::default());
    let mut pos = 0;
    let mut seen = Vec::new();
    loop {
        let step = p.feed(&bytes[pos..]).unwrap();
        pos += step.consumed;
        match step.outcome {
            Outcome::Event(NarEvent::FileData(d)) => seen.push(d.to_vec()),
            Outcome::Event(_) => {}
            Outcome::Done => break,
            Outcome::NeedMore => panic!("all bytes were given"),
        }
    }
    assert_eq!(seen, vec![b"0123456789".to_vec()]);
    assert_eq!(pos, bytes.len());
}

// ---------------------------------------------------------------------
// Rejections.

/// A root directory with the given entry names, each an empty file.
fn dir_with_names(names: &[&[u8]]) -> Vec<u8> {
    let mut b = B::new().ss(&[b"(", b"type", b"directory"]);
    for name in names {
        b = b.entry_start(name).file(false, b"").s(b")");
    }
    b.s(b")").bytes()
}

#[test]
fn rejects_bad_headers() {
    let not = NarError::NotAnArchive;
    assert_eq!(err_of(&B::default().s(b"nix-archive-2").bytes()), not);
    assert_eq!(err_of(&B::default().s(b"nix-archive-").bytes()), not);
    assert_eq!(err_of(&B::default().s(b"(").bytes()), not);
    assert_eq!(err_of(&[0xff; 16]), not);
    let mut padded = B::new().bytes();
    padded[23] = 1;
    assert_eq!(err_of(&padded), not);
    assert_eq!(
        NarError::NotAnArchive.to_string(),
        "bad archive: input doesn't look like a normalized archive"
    );
}

#[test]
fn rejects_invalid_names() {
    for name in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0b"] {
        let e = err_of(&dir_with_names(&[name]));
        let shown = String::from_utf8_lossy(name).into_owned();
        assert_eq!(e, NarError::InvalidFileName(shown), "{name:?}");
    }
    assert_eq!(
        NarError::InvalidFileName("..".into()).to_string(),
        "NAR contains invalid file name `..'"
    );
    // Names that merely look odd are fine.
    let ok = dir_with_names(&[b"...", b".a", b"\xff"]);
    assert!(events_of(&ok).is_ok());
}

#[test]
fn rejects_unsorted_and_duplicate_entries() {
    assert_eq!(err_of(&dir_with_names(&[b"b", b"a"])), NarError::NotSorted);
    assert_eq!(err_of(&dir_with_names(&[b"a", b"a"])), NarError::NotSorted);
    // Bytewise, not by locale or case: `B` < `a` < `ab` < `\x80`.
    assert!(events_of(&dir_with_names(&[b"B", b"a", b"ab", b"\x80"])).is_ok());
    assert_eq!(err_of(&dir_with_names(&[b"ab", b"a"])), NarError::NotSorted);
    assert_eq!(
        NarError::NotSorted.to_string(),
        "NAR directory is not sorted"
    );
}

#[test]
fn sorting_is_per_directory() {
    // A name may repeat in a subdirectory, and order restarts there.
    let bytes = B::new()
        .ss(&[b"(", b"type", b"directory"])
        .entry_start(b"m")
        .ss(&[b"(", b"type", b"directory"])
        .entry_start(b"z")
        .file(false, b"")
        .s(b")")
        .s(b")")
        .s(b")")
        .entry_start(b"n")
        .file(false, b"")
        .s(b")")
        .s(b")")
        .bytes();
    assert!(events_of(&bytes).is_ok());
}

#[test]
fn rejects_unknown_and_misplaced_tokens() {
    let node = |tokens: &[&[u8]]| B::new().ss(tokens).bytes();
    assert_eq!(
        err_of(&node(&[b"(", b"type", b"regular", b"colour"])),
        NarError::UnknownField("colour".into())
    );
    assert_eq!(
        NarError::UnknownField("colour".into()).to_string(),
        "bad archive: unknown field colour"
    );
    assert_eq!(
        err_of(&node(&[b"(", b"type", b"fifo"])),
        NarError::UnknownFileType("fifo".into())
    );
    assert_eq!(err_of(&node(&[b"[", b"type"])), NarError::ExpectedOpenTag);
    assert_eq!(err_of(&node(&[b"(", b")"])), NarError::MissingType);
    assert_eq!(
        err_of(&node(&[b"(", b"name", b"x"])),
        NarError::UnexpectedField {
            found: "name".into(),
            expected: "type"
        }
    );
    assert_eq!(
        err_of(&node(&[b"(", b"type", b"regular", b"type"])),
        NarError::MultipleTypeFields
    );
    assert_eq!(
        err_of(&node(&[b"(", b"type", b"directory", b"type"])),
        NarError::MultipleTypeFields
    );
    assert_eq!(
        err_of(&node(&[b"(", b"type", b"regular", b")"])),
        NarError::MissingContents
    );
    assert_eq!(
        err_of(&node(&[b"(", b"type", b"symlink", b")"])),
        NarError::MissingTarget
    );
    assert_eq!(
        err_of(&node(&[b"(", b"type", b"directory", b"entry", b"x"])),
        NarError::ExpectedOpenTag
    );
    // Entry fields only in the order name, node.
    assert_eq!(
        err_of(&node(&[
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"node"
        ])),
        NarError::UnexpectedField {
            found: "node".into(),
            expected: "name"
        }
    );
    // A token too long to be any keyword is refused before it is read.
    let long = B::new().ss(&[b"("]).n(1 << 40).bytes();
    assert_eq!(
        err_of(&long),
        NarError::UnknownField(format!("of {} bytes", 1u64 << 40))
    );
}

#[test]
fn executable_marker_only_before_contents() {
    let head = || B::new().ss(&[b"(", b"type", b"regular"]);
    // After the contents.
    let after = head().s(b"contents").n(0).ss(&[b"executable", b"", b")"]);
    assert_eq!(
        err_of(&after.bytes()),
        NarError::UnexpectedField {
            found: "executable".into(),
            expected: ")"
        }
    );
    // Twice.
    let twice = head().ss(&[b"executable", b"", b"executable", b""]);
    assert!(matches!(
        err_of(&twice.bytes()),
        NarError::UnexpectedField { .. }
    ));
    // With a value.
    let valued = head().ss(&[b"executable", b"yes", b"contents"]);
    assert_eq!(err_of(&valued.bytes()), NarError::ExecutableMarkerNotEmpty);
    // Contents twice.
    let again = head().s(b"contents").n(0).s(b"contents").n(0).s(b")");
    assert!(matches!(
        err_of(&again.bytes()),
        NarError::UnexpectedField { .. }
    ));
}

#[test]
fn rejects_bad_symlink_targets() {
    let with = |t: &[u8]| {
        B::new()
            .ss(&[b"(", b"type", b"symlink", b"target", t, b")"])
            .bytes()
    };
    assert_eq!(
        err_of(&with(b"")),
        NarError::InvalidSymlinkTarget(String::new())
    );
    assert_eq!(
        err_of(&with(b"a\0b")),
        NarError::InvalidSymlinkTarget("a\0b".into())
    );
    assert!(events_of(&with(b"/gnu/store/x")).is_ok());
}

#[test]
fn rejects_non_zero_padding() {
    // In a name.
    let mut bytes = dir_with_names(&[b"abc"]);
    let at = bytes.windows(3).position(|w| w == b"abc").unwrap() + 3;
    bytes[at + 2] = 9;
    assert_eq!(err_of(&bytes), NarError::NonZeroPadding);
    // After contents.
    let mut bytes = file_nar(false, b"abc");
    let at = bytes.len() - 16 - 1;
    bytes[at] = 1;
    assert_eq!(err_of(&bytes), NarError::NonZeroPadding);
    assert_eq!(NarError::NonZeroPadding.to_string(), "non-zero padding");
}

#[test]
fn enforces_limits() {
    let limits = NarLimits::default();
    let name = vec![b'n'; 256];
    assert_eq!(
        err_of(&dir_with_names(&[&name])),
        NarError::NameTooLong {
            len_bytes: 256,
            max_bytes: 255
        }
    );
    assert!(events_of(&dir_with_names(&[&name[..255]])).is_ok());

    let target = vec![b't'; 4096];
    let nar = |t: &[u8]| {
        B::new()
            .ss(&[b"(", b"type", b"symlink", b"target", t, b")"])
            .bytes()
    };
    assert_eq!(
        err_of(&nar(&target)),
        NarError::SymlinkTargetTooLong {
            len_bytes: 4096,
            max_bytes: 4095
        }
    );
    assert!(events_of(&nar(&target[..4095])).is_ok());

    let small = NarLimits {
        file_max_bytes: 4,
        ..limits
    };
    assert!(parse_complete(&file_nar(false, b"1234"), small.clone(), |_| {}).is_ok());
    assert_eq!(
        err_with(&file_nar(false, b"12345"), &small),
        NarError::FileTooLarge {
            size_bytes: 5,
            max_bytes: 4
        }
    );

    // The NAR size: exactly at the limit is fine, one byte less is not,
    // and a file that cannot fit is refused at its size.
    let nar = file_nar(false, b"1234");
    let exact = NarLimits {
        nar_max_bytes: nar.len() as u64,
        ..limits
    };
    assert!(parse_complete(&nar, exact, |_| {}).is_ok());
    let short = NarLimits {
        nar_max_bytes: nar.len() as u64 - 1,
        ..limits
    };
    assert_eq!(
        err_with(&nar, &short),
        NarError::NarTooLarge {
            max_bytes: nar.len() as u64 - 1
        }
    );
    let tight = NarLimits {
        nar_max_bytes: nar.len() as u64 - 20,
        ..limits
    };
    let prefix = file_nar_prefix(false, 4);
    let mut p = NarParser::new(tight);
    assert!(p.feed(&prefix).is_err());

    let deep = |levels: usize| {
        let mut b = B::new().ss(&[b"(", b"type", b"directory"]);
        for _ in 0..levels {
            b = b.entry_start(b"d").ss(&[b"(", b"type", b"directory"]);
        }
        for _ in 0..levels {
            b = b.s(b")").s(b")");
        }
        b.s(b")").bytes()
    };
    let two = NarLimits {
        depth_max: 2,
        ..limits
    };
    assert!(parse_complete(&deep(2), two.clone(), |_| {}).is_ok());
    assert_eq!(err_with(&deep(3), &two), NarError::TooDeep { max: 2 });

    let three = NarLimits {
        dir_entries_max: 3,
        ..limits
    };
    assert!(parse_complete(&dir_with_names(&[b"a", b"b", b"c"]), three.clone(), |_| {}).is_ok());
    assert_eq!(
        err_with(&dir_with_names(&[b"a", b"b", b"c", b"d"]), &three),
        NarError::TooManyEntries { max: 3 }
    );
}

// ---------------------------------------------------------------------
// The writer.

#[test]
fn writer_refuses_misuse_without_writing() {
    let mut w = NarWriter::new();
    let mut out = Vec::new();
    let refused = |w: &mut NarWriter, out: &mut Vec<u8>, e: NarEvent<'_>| {
        let before = out.len();
        assert!(w.write(e, out).is_err(), "{e:?} was accepted");
        assert_eq!(out.len(), before);
    };
    refused(&mut w, &mut out, NarEvent::DirectoryEnd);
    refused(&mut w, &mut out, NarEvent::FileData(b"x"));
    refused(&mut w, &mut out, NarEvent::Directory { name: b"named" });
    w.write(NarEvent::Directory { name: b"" }, &mut out)
        .unwrap();
    refused(&mut w, &mut out, NarEvent::Directory { name: b"" });
    refused(&mut w, &mut out, NarEvent::Directory { name: b".." });
    refused(&mut w, &mut out, NarEvent::Directory { name: b"a/b" });
    refused(&mut w, &mut out, NarEvent::FileEnd);
    let file_ev = |name: &'static [u8]| NarEvent::File {
        name,
        executable: false,
        size_bytes: 2,
    };
    w.write(file_ev(b"m"), &mut out).unwrap();
    refused(&mut w, &mut out, NarEvent::FileEnd);
    refused(&mut w, &mut out, NarEvent::FileData(b"abc"));
    refused(
        &mut w,
        &mut out,
        NarEvent::Symlink {
            name: b"n",
            target: b"t",
        },
    );
    w.write(NarEvent::FileData(b"a"), &mut out).unwrap();
    w.write(NarEvent::FileData(b"b"), &mut out).unwrap();
    refused(&mut w, &mut out, NarEvent::FileData(b"c"));
    w.write(NarEvent::FileEnd, &mut out).unwrap();
    refused(&mut w, &mut out, file_ev(b"m"));
    refused(&mut w, &mut out, file_ev(b"a"));
    let link_ev = |target: &'static [u8]| NarEvent::Symlink { name: b"z", target };
    refused(&mut w, &mut out, link_ev(b""));
    refused(&mut w, &mut out, link_ev(b"a\0"));
    w.write(link_ev(b"m"), &mut out).unwrap();
    assert!(!w.is_done());
    w.write(NarEvent::DirectoryEnd, &mut out).unwrap();
    assert!(w.is_done());
    refused(&mut w, &mut out, NarEvent::DirectoryEnd);
    refused(&mut w, &mut out, file_ev(b""));
    let tree = dir(vec![(b"m", file(false, b"ab")), (b"z", link(b"m"))]);
    assert_eq!(out, tree.to_nar().unwrap());
}

#[test]
fn tree_with_invalid_name_has_no_nar() {
    let tree = dir(vec![(b".", file(false, b""))]);
    assert_eq!(tree.to_nar(), Err(NarWriteError::InvalidName(".".into())));
}

// ---------------------------------------------------------------------
// Properties.

/// A file tree with valid, sorted, unique names, small enough to check
/// often; contents sizes cover every padding length.
#[derive(Clone, Debug)]
struct ArbTree(NarTree);

impl Arbitrary for ArbTree {
    fn arbitrary(g: &mut Gen) -> ArbTree {
        let depth = 1 + usize::arbitrary(g) % 4;
        ArbTree(arb_node(g, depth))
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = ArbTree>> {
        Box::new(shrink_node(&self.0).into_iter().map(ArbTree))
    }
}

fn arb_node(g: &mut Gen, depth: usize) -> NarTree {
    match u8::arbitrary(g) % if depth == 0 { 2 } else { 3 } {
        0 => {
            let len = usize::arbitrary(g) % if bool::arbitrary(g) { 20 } else { 200 };
            NarTree::File {
                executable: bool::arbitrary(g),
                contents: (0..len).map(|_| u8::arbitrary(g)).collect(),
            }
        }
        1 => {
            let len = 1 + usize::arbitrary(g) % 12;
            let target = (0..len).map(|_| u8::arbitrary(g).max(1)).collect();
            NarTree::Symlink { target }
        }
        _ => {
            let count = usize::arbitrary(g) % 5;
            let entries = (0..count)
                .map(|_| (arb_name(g), arb_node(g, depth - 1)))
                .collect::<BTreeMap<_, _>>();
            NarTree::Directory(entries)
        }
    }
}

fn arb_name(g: &mut Gen) -> Vec<u8> {
    // A small alphabet makes shared prefixes, and so ordering cases,
    // common; the high bytes check that order is unsigned.
    let alphabet = b"ab.Z-_\x7f\x80\xfe\xff";
    let len = 1 + usize::arbitrary(g) % 4;
    let mut name: Vec<u8> = (0..len).map(|_| *g.choose(alphabet).unwrap()).collect();
    if name == b"." || name == b".." {
        name.push(b'a');
    }
    name
}

fn shrink_node(t: &NarTree) -> Vec<NarTree> {
    match t {
        NarTree::Directory(entries) => {
            let mut out = Vec::new();
            for (name, child) in entries {
                let mut fewer = entries.clone();
                fewer.remove(name);
                out.push(NarTree::Directory(fewer));
                for smaller in shrink_node(child) {
                    let mut e = entries.clone();
                    e.insert(name.clone(), smaller);
                    out.push(NarTree::Directory(e));
                }
            }
            out
        }
        NarTree::File {
            executable,
            contents,
        } if !contents.is_empty() => vec![NarTree::File {
            executable: *executable,
            contents: contents[..contents.len() / 2].to_vec(),
        }],
        _ => Vec::new(),
    }
}

/// A change to a valid NAR.
#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, len: usize },
}

impl Arbitrary for Mutation {
    fn arbitrary(g: &mut Gen) -> Mutation {
        let at = usize::arbitrary(g);
        match u8::arbitrary(g) % 5 {
            0 => Mutation::Flip {
                at,
                bit: u8::arbitrary(g) % 8,
            },
            1 => Mutation::Set {
                at,
                byte: *g.choose(&[0, 1, 8, b'(', b')', 0xff]).unwrap(),
            },
            2 => Mutation::Truncate { at },
            3 => Mutation::Insert {
                at,
                bytes: Vec::arbitrary(g),
            },
            _ => Mutation::Remove {
                at,
                len: 1 + usize::arbitrary(g) % 16,
            },
        }
    }
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Flip { at, bit } => {
                if let Some(b) = bytes.get_mut(at % len) {
                    *b ^= 1 << bit;
                }
            }
            Mutation::Set { at, byte } => {
                if let Some(b) = bytes.get_mut(at % len) {
                    *b = *byte;
                }
            }
            Mutation::Truncate { at } => bytes.truncate(at % len),
            Mutation::Insert { at, bytes: more } => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, more.iter().copied());
            }
            Mutation::Remove { at, len: n } => {
                let at = at % len;
                let end = (at + n).min(bytes.len());
                if at < end {
                    bytes.drain(at..end);
                }
            }
        }
    }
    bytes
}

/// Split sizes for [`parse_chunked`]: small, so tokens straddle chunks.
fn splits_of(raw: &[u8]) -> Vec<usize> {
    raw.iter().map(|&b| 1 + usize::from(b) % 24).collect()
}

/// The whole input at once, byte by byte, and in `raw`'s chunks all give
/// the same events and the same end.
fn chunkings_agree(bytes: &[u8], raw: &[u8], limits: &NarLimits) -> bool {
    let whole = parse_chunked(bytes, &[], limits);
    whole == parse_chunked(bytes, &[1], limits)
        && whole == parse_chunked(bytes, &splits_of(raw), limits)
}

#[test]
fn prop_tree_round_trip() {
    fn prop(t: ArbTree) -> bool {
        let nar = t.0.to_nar().unwrap();
        // Tree → NAR → tree.
        let back = NarTree::from_nar(&nar, NarLimits::default()).unwrap();
        // NAR → events → writer → the same NAR.
        let mut owned = Vec::new();
        parse_complete(&nar, NarLimits::default(), |e| owned.push(Ev::of(e))).unwrap();
        let events: Vec<NarEvent<'_>> = owned
            .iter()
            .map(|e| match e {
                Ev::Dir(n) => NarEvent::Directory { name: n },
                Ev::DirEnd => NarEvent::DirectoryEnd,
                Ev::File(n, x, s) => NarEvent::File {
                    name: n,
                    executable: *x,
                    size_bytes: *s,
                },
                Ev::Data(d) => NarEvent::FileData(d),
                Ev::FileEnd => NarEvent::FileEnd,
                Ev::Link(n, t) => NarEvent::Symlink { name: n, target: t },
            })
            .collect();
        back == t.0 && write_events(&events).unwrap() == nar
    }
    guixd_testkit::check(prop as fn(ArbTree) -> bool);
}

#[test]
fn prop_any_chunking_gives_the_same_parse() {
    fn prop(t: ArbTree, raw: Vec<u8>) -> bool {
        let nar = t.0.to_nar().unwrap();
        let whole = parse_chunked(&nar, &[], &NarLimits::default());
        whole.1 == End::Done(nar.len()) && chunkings_agree(&nar, &raw, &NarLimits::default())
    }
    guixd_testkit::check(prop as fn(ArbTree, Vec<u8>) -> bool);
}

#[test]
fn prop_every_prefix_needs_more() {
    fn prop(t: ArbTree) -> bool {
        let nar = t.0.to_nar().unwrap();
        (0..nar.len())
            .all(|cut| parse_chunked(&nar[..cut], &[], &NarLimits::default()).1 == End::NeedMore)
    }
    guixd_testkit::check_n(50, prop as fn(ArbTree) -> bool);
}

#[test]
fn prop_arbitrary_bytes_never_panic() {
    fn prop(bytes: Vec<u8>, raw: Vec<u8>, headed: bool) -> bool {
        // With a valid header, the bytes reach the node grammar.
        let bytes = if headed {
            let mut b = B::new().bytes();
            b.extend_from_slice(&bytes);
            b
        } else {
            bytes
        };
        chunkings_agree(&bytes, &raw, &NarLimits::default())
    }
    guixd_testkit::check(prop as fn(Vec<u8>, Vec<u8>, bool) -> bool);
}

#[test]
fn prop_mutated_nars_never_panic() {
    fn prop(t: ArbTree, mutations: Vec<Mutation>, raw: Vec<u8>) -> bool {
        let bytes = mutate(t.0.to_nar().unwrap(), &mutations);
        let agree = chunkings_agree(&bytes, &raw, &NarLimits::default());
        // Whatever parses is canonical: writing it back gives the bytes.
        let canonical = match NarTree::from_nar(&bytes, NarLimits::default()) {
            Ok(tree) => tree.to_nar().unwrap() == bytes,
            Err(_) => true,
        };
        agree && canonical
    }
    guixd_testkit::check(prop as fn(ArbTree, Vec<Mutation>, Vec<u8>) -> bool);
}

#[test]
fn prop_small_limits_hold() {
    fn prop(t: ArbTree, knobs: (u8, u8, u8, u8, u16), raw: Vec<u8>) -> bool {
        let limits = NarLimits {
            depth_max: usize::from(knobs.0 % 5),
            name_max_bytes: usize::from(knobs.1 % 5),
            symlink_target_max_bytes: usize::from(knobs.2 % 13),
            file_max_bytes: u64::from(knobs.3),
            nar_max_bytes: u64::from(knobs.4) * 4,
            dir_entries_max: u64::from(knobs.0 % 6),
        };
        let nar = t.0.to_nar().unwrap();
        let agree = chunkings_agree(&nar, &raw, &limits);
        let within = match NarTree::from_nar(&nar, limits.clone()) {
            Ok(tree) => nar.len() as u64 <= limits.nar_max_bytes && fits(&tree, &limits, 0),
            Err(_) => true,
        };
        agree && within
    }
    guixd_testkit::check(prop as fn(ArbTree, (u8, u8, u8, u8, u16), Vec<u8>) -> bool);
}

/// Whether `t`, at `depth` below the root, is within `limits`.
fn fits(t: &NarTree, limits: &NarLimits, depth: usize) -> bool {
    match t {
        NarTree::File { contents, .. } => contents.len() as u64 <= limits.file_max_bytes,
        NarTree::Symlink { target } => target.len() <= limits.symlink_target_max_bytes,
        NarTree::Directory(entries) => {
            entries.len() as u64 <= limits.dir_entries_max
                && entries.iter().all(|(name, child)| {
                    depth < limits.depth_max
                        && name.len() <= limits.name_max_bytes
                        && fits(child, limits, depth + 1)
                })
        }
    }
}

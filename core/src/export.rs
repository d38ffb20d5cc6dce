//! Export archives: the stream `export-path` writes for one item and the
//! bundle `import-paths` reads (spec 01 §6.6).
//!
//! A bundle is a sequence of items, each announced by the `long long` 1 and
//! ended by the `long long` 0. An item is a NAR, then the `int`
//! [`EXPORT_MAGIC`], the item's path, its references, its deriver (`""` if
//! none), the `int` 1 and a signature, or the `int` 0 alone. The signed
//! value is the SHA-256 of every byte from the NAR's first through the
//! deriver string.
//!
//! What this file keeps true:
//! - [`ExportParser`] is push-based: any split of the same bytes gives the
//!   same outcomes (up to how file contents are cut into `FileData`
//!   chunks) and the same error, it never consumes a byte past the bundle's
//!   final 0, and its memory is bounded by [`ExportLimits`] whatever the
//!   file sizes (file contents are passed through, never buffered);
//! - the hashes it reports cover exactly the bytes the C++ daemon hashes:
//!   the signed hash from the NAR's first byte through the deriver, the NAR
//!   hash over the NAR alone;
//! - paths are asserted as the daemon's `importPath` does, each as soon as
//!   its field is read, so the first error is the daemon's first error;
//! - error texts are the C++ daemon's where it has one.

use crate::hash::{Hash, HashAlgo, Hasher};
use crate::nar::{NarError, NarEvent, NarLimits, NarParser, Outcome};
use crate::store_path::{StoreDir, StorePathError};
use crate::wire::prim::{Src, StrReader, StrsReader, Word, int_of, lossy_string};
use crate::wire::{EXPORT_MAGIC, WireError, WireLimits, write_bytes, write_int, write_strings};
use crate::wire::{write_str, write_u64};

/// Why an export stream could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// A bundle marker other than 0 or 1.
    #[error("input doesn't look like something created by `nix-store --export'")]
    NotAnExport,
    /// The word after the NAR is not [`EXPORT_MAGIC`].
    #[error("normalized archive cannot be imported; wrong format")]
    WrongFormat,
    #[error(transparent)]
    Nar(#[from] NarError),
    /// A trailer primitive was malformed or over a limit.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The path, a reference or the deriver is not a store path.
    #[error(transparent)]
    NotInStore(#[from] StorePathError),
}

/// Bounds on an export stream: the NAR's, and the trailer's (path,
/// references, deriver and signature, as one message).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportLimits {
    pub nar: NarLimits,
    pub trailer: WireLimits,
}

/// One imported item's trailer and hashes, reported once it is complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportedItem {
    pub path: String,
    /// In stream order (the exporter writes them sorted).
    pub references: Vec<String>,
    /// `""` when there is none.
    pub deriver: String,
    /// Present when the flag after the deriver was 1 (the daemon's
    /// `readInt(from) == 1`). The daemon's import refuses items without.
    pub signature: Option<Vec<u8>>,
    /// SHA-256 of the bytes from the NAR's first through the deriver: the
    /// value the signature must vouch for.
    pub signed_hash: Hash,
    /// SHA-256 of the NAR alone, and its size.
    pub nar_hash: Hash,
    pub nar_size_bytes: u64,
}

/// What one [`ExportParser::feed`] call did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportStep<'a> {
    /// Input bytes consumed, always a prefix of the input given.
    pub consumed: usize,
    pub outcome: ExportOutcome<'a>,
}

/// The result part of an [`ExportStep`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportOutcome<'a> {
    /// The whole input was consumed without completing anything.
    NeedMore,
    /// The marker 1: an item begins, its NAR follows.
    ItemStart,
    /// One event of the item's NAR, to restore while the stream goes on.
    Nar(NarEvent<'a>),
    /// The item's NAR is complete; its trailer follows.
    NarEnd,
    /// The item's trailer is complete.
    Item(ExportedItem),
    /// The marker 0: the bundle is over. Nothing after it was consumed;
    /// further calls consume nothing and report `End` again.
    End,
}

/// A push-based parser of an export bundle (the input of import-paths).
///
/// Call [`feed`](ExportParser::feed) with whatever bytes are at hand; it
/// consumes a prefix and reports one outcome: on `NeedMore` feed the next
/// bytes, on anything else handle it and feed the unconsumed rest. NAR
/// events borrow the parser and the input, so drop one before the next
/// call. After an error the parser is spent and repeats it.
#[derive(Clone, Debug)]
pub struct ExportParser {
    store_dir: StoreDir,
    limits: ExportLimits,
    stage: Stage,
    word: Word,
    string: StrReader,
    list: StrsReader,
    nar: NarParser,
    /// Hashes the signed region: NAR through deriver.
    hasher: Hasher,
    nar_hash: Option<Hash>,
    nar_size_bytes: u64,
    path: String,
    references: Vec<String>,
    deriver: String,
    signed_hash: Option<Hash>,
    /// Trailer bytes consumed for the current item.
    trailer_bytes: u64,
    failed: Option<ExportError>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Marker,
    Nar,
    Magic,
    Path,
    References,
    Deriver,
    SignatureFlag,
    Signature,
    Ended,
}

impl ExportParser {
    /// A parser for a bundle whose paths must lie in `store_dir`.
    pub fn new(store_dir: StoreDir, limits: ExportLimits) -> ExportParser {
        ExportParser {
            store_dir,
            nar: NarParser::new(limits.nar.clone()),
            limits,
            stage: Stage::Marker,
            word: Word::default(),
            string: StrReader::default(),
            list: StrsReader::new(1),
            hasher: Hasher::new(HashAlgo::Sha256),
            nar_hash: None,
            nar_size_bytes: 0,
            path: String::new(),
            references: Vec::new(),
            deriver: String::new(),
            signed_hash: None,
            trailer_bytes: 0,
            failed: None,
        }
    }

    /// Consumes a prefix of `input` and reports what it completed.
    pub fn feed<'a>(&'a mut self, input: &'a [u8]) -> Result<ExportStep<'a>, ExportError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.stage == Stage::Nar {
            // A NAR error needs no recording: the NAR parser repeats it.
            let step = self.nar.feed(input)?;
            let consumed = step.consumed;
            self.hasher.update(&input[..consumed]);
            self.nar_size_bytes += consumed as u64;
            let outcome = match step.outcome {
                Outcome::NeedMore => ExportOutcome::NeedMore,
                Outcome::Event(e) => ExportOutcome::Nar(e),
                Outcome::Done => {
                    // The NAR hash is the signed hash's prefix: finish a copy.
                    self.nar_hash = Some(self.hasher.clone().finish());
                    self.stage = Stage::Magic;
                    ExportOutcome::NarEnd
                }
            };
            return Ok(ExportStep { consumed, outcome });
        }
        let max = self.limits.trailer.max_message_bytes;
        let mut src = Src::new(input, max.saturating_sub(self.trailer_bytes), max);
        let result = self.step_trailer(&mut src, input);
        self.trailer_bytes += src.consumed() as u64;
        match result {
            Ok(outcome) => Ok(ExportStep {
                consumed: src.consumed(),
                outcome,
            }),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// True once the bundle's final marker 0 has been read.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Ended
    }

    /// Everything but the NAR: markers and trailer fields, hashing the
    /// trailer bytes that belong to the signed region.
    fn step_trailer(
        &mut self,
        src: &mut Src<'_>,
        input: &[u8],
    ) -> Result<ExportOutcome<'static>, ExportError> {
        loop {
            let before = src.consumed();
            let stage = self.stage;
            let done = self.step_field(src)?;
            if matches!(
                stage,
                Stage::Magic | Stage::Path | Stage::References | Stage::Deriver
            ) {
                self.hasher.update(&input[before..src.consumed()]);
            }
            match done {
                Some(outcome) => return Ok(outcome),
                None if self.stage == stage => return Ok(ExportOutcome::NeedMore),
                None => {}
            }
        }
    }

    /// Advances the current stage by what `src` holds. Returns an outcome
    /// to report, or `None` (the stage advanced, or more bytes are needed
    /// and the stage did not change).
    fn step_field(
        &mut self,
        src: &mut Src<'_>,
    ) -> Result<Option<ExportOutcome<'static>>, ExportError> {
        let wire = &self.limits.trailer;
        match self.stage {
            Stage::Marker => {
                let Some(word) = self.word.read(src)? else {
                    return Ok(None);
                };
                match u64::from_le_bytes(word) {
                    0 => {
                        self.stage = Stage::Ended;
                        Ok(Some(ExportOutcome::End))
                    }
                    1 => {
                        self.start_item();
                        Ok(Some(ExportOutcome::ItemStart))
                    }
                    _ => Err(ExportError::NotAnExport),
                }
            }
            Stage::Magic => {
                let Some(word) = self.word.read(src)? else {
                    return Ok(None);
                };
                if int_of(word)? != EXPORT_MAGIC {
                    return Err(ExportError::WrongFormat);
                }
                self.stage = Stage::Path;
                Ok(None)
            }
            Stage::Path => {
                let Some(path) = self.string.read(src, wire.max_string_len_bytes)? else {
                    return Ok(None);
                };
                self.path = lossy_string(path);
                self.store_dir.parse_path(&self.path)?;
                self.stage = Stage::References;
                Ok(None)
            }
            Stage::References => {
                let Some(refs) = self.list.read(src, wire)? else {
                    return Ok(None);
                };
                self.references = refs.into_iter().map(lossy_string).collect();
                // The daemon asserts the set it collected, in sorted order.
                let bad = self
                    .references
                    .iter()
                    .filter(|r| !self.store_dir.is_store_path(r))
                    .min();
                if let Some(bad) = bad {
                    return Err(StorePathError::NotInStore(bad.clone()).into());
                }
                self.stage = Stage::Deriver;
                Ok(None)
            }
            Stage::Deriver => {
                let Some(deriver) = self.string.read(src, wire.max_string_len_bytes)? else {
                    return Ok(None);
                };
                self.deriver = lossy_string(deriver);
                if !self.deriver.is_empty() {
                    self.store_dir.parse_path(&self.deriver)?;
                }
                self.stage = Stage::SignatureFlag;
                Ok(None)
            }
            Stage::SignatureFlag => {
                let Some(word) = self.word.read(src)? else {
                    return Ok(None);
                };
                // The signed region ends with the deriver; `step_trailer`
                // has already hashed it.
                let hasher = std::mem::replace(&mut self.hasher, Hasher::new(HashAlgo::Sha256));
                self.signed_hash = Some(hasher.finish());
                if int_of(word)? == 1 {
                    self.stage = Stage::Signature;
                    Ok(None)
                } else {
                    Ok(Some(self.finish_item(None)?))
                }
            }
            Stage::Signature => {
                let Some(sig) = self.string.read(src, wire.max_string_len_bytes)? else {
                    return Ok(None);
                };
                Ok(Some(self.finish_item(Some(sig))?))
            }
            Stage::Ended => Ok(Some(ExportOutcome::End)),
            Stage::Nar => Err(WireError::Bug("the NAR stage is handled by `feed`").into()),
        }
    }

    /// Resets the per-item state when the marker 1 is read.
    fn start_item(&mut self) {
        self.nar = NarParser::new(self.limits.nar.clone());
        self.hasher = Hasher::new(HashAlgo::Sha256);
        self.nar_hash = None;
        self.nar_size_bytes = 0;
        self.signed_hash = None;
        // The item's trailer gets a fresh budget; the marker's bytes count
        // against the previous one, which is harmless.
        self.trailer_bytes = 0;
        self.stage = Stage::Nar;
    }

    fn finish_item(
        &mut self,
        signature: Option<Vec<u8>>,
    ) -> Result<ExportOutcome<'static>, ExportError> {
        let (Some(nar_hash), Some(signed_hash)) = (self.nar_hash, self.signed_hash) else {
            return Err(WireError::Bug("an item's hashes are set before its end").into());
        };
        self.stage = Stage::Marker;
        Ok(ExportOutcome::Item(ExportedItem {
            path: std::mem::take(&mut self.path),
            references: std::mem::take(&mut self.references),
            deriver: std::mem::take(&mut self.deriver),
            signature,
            signed_hash,
            nar_hash,
            nar_size_bytes: self.nar_size_bytes,
        }))
    }
}

/// Appends a bundle marker: 1 before an item, 0 at the end.
pub fn write_export_marker(out: &mut Vec<u8>, item_follows: bool) {
    write_u64(out, u64::from(item_follows));
}

/// Appends the signed part of an item's trailer, which follows its NAR:
/// the magic, the path, the references (sorted and de-duplicated, as the
/// daemon's set) and the deriver (`""` for none). The signature covers the
/// NAR and these bytes.
pub fn encode_export_meta(path: &str, references: &[String], deriver: &str, out: &mut Vec<u8>) {
    write_int(out, EXPORT_MAGIC);
    write_str(out, path);
    let mut refs: Vec<&String> = references.iter().collect();
    refs.sort();
    refs.dedup();
    write_strings(out, refs);
    write_str(out, deriver);
}

/// Appends the end of an item's trailer: `int 1` and the signature, or
/// `int 0` alone.
pub fn encode_export_signature(signature: Option<&[u8]>, out: &mut Vec<u8>) {
    match signature {
        Some(sig) => {
            write_int(out, 1);
            write_bytes(out, sig);
        }
        None => write_int(out, 0),
    }
}

/// Appends a whole trailer: [`encode_export_meta`], then
/// [`encode_export_signature`].
pub fn encode_export_trailer(
    path: &str,
    references: &[String],
    deriver: &str,
    signature: Option<&[u8]>,
    out: &mut Vec<u8>,
) {
    encode_export_meta(path, references, deriver, out);
    encode_export_signature(signature, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nar::{NarWriter, file_nar};
    use quickcheck::{Arbitrary, Gen};

    fn store() -> StoreDir {
        StoreDir::new("/gnu/store").unwrap()
    }

    /// What a parse produced, with NAR events owned and file data merged,
    /// so that different chunkings compare equal.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Seen {
        ItemStart,
        Dir(Vec<u8>),
        DirEnd,
        File(Vec<u8>, bool, u64),
        Data(Vec<u8>),
        FileEnd,
        Link(Vec<u8>, Vec<u8>),
        NarEnd,
        Item(ExportedItem),
        End,
    }

    fn own(e: NarEvent<'_>) -> Seen {
        match e {
            NarEvent::Directory { name } => Seen::Dir(name.to_vec()),
            NarEvent::DirectoryEnd => Seen::DirEnd,
            NarEvent::File {
                name,
                executable,
                size_bytes,
            } => Seen::File(name.to_vec(), executable, size_bytes),
            NarEvent::FileData(d) => Seen::Data(d.to_vec()),
            NarEvent::FileEnd => Seen::FileEnd,
            NarEvent::Symlink { name, target } => Seen::Link(name.to_vec(), target.to_vec()),
        }
    }

    /// Parses `bytes` split into chunks of the given sizes (cycled).
    fn parse(bytes: &[u8], sizes: &[usize]) -> (Vec<Seen>, Option<ExportError>, usize) {
        let mut p = ExportParser::new(store(), ExportLimits::default());
        let mut seen: Vec<Seen> = Vec::new();
        let mut pos: usize = 0;
        let mut i = 0;
        while pos < bytes.len() && !p.is_done() {
            let size = sizes[i % sizes.len()].max(1);
            i += 1;
            let end = pos.saturating_add(size).min(bytes.len());
            let mut chunk = &bytes[pos..end];
            while !chunk.is_empty() && !p.is_done() {
                let step = match p.feed(chunk) {
                    Ok(s) => s,
                    Err(e) => return (seen, Some(e), 0),
                };
                pos += step.consumed;
                chunk = &chunk[step.consumed..];
                let item = match step.outcome {
                    ExportOutcome::NeedMore => {
                        assert!(chunk.is_empty(), "NeedMore with input left");
                        continue;
                    }
                    ExportOutcome::ItemStart => Seen::ItemStart,
                    ExportOutcome::Nar(e) => own(e),
                    ExportOutcome::NarEnd => Seen::NarEnd,
                    ExportOutcome::Item(it) => Seen::Item(it),
                    ExportOutcome::End => Seen::End,
                };
                match (seen.last_mut(), item) {
                    (Some(Seen::Data(d)), Seen::Data(more)) => d.extend(more),
                    (_, item) => seen.push(item),
                }
            }
        }
        (seen, None, pos)
    }

    /// A small directory NAR with a file, an executable and a symlink.
    fn dir_nar(contents: &[u8]) -> Vec<u8> {
        let mut w = NarWriter::new();
        let mut out = Vec::new();
        let events = [
            NarEvent::Directory { name: b"" },
            NarEvent::File {
                name: b"a",
                executable: false,
                size_bytes: contents.len() as u64,
            },
            NarEvent::FileData(contents),
            NarEvent::FileEnd,
            NarEvent::Symlink {
                name: b"b",
                target: b"a",
            },
            NarEvent::File {
                name: b"c",
                executable: true,
                size_bytes: 0,
            },
            NarEvent::FileEnd,
            NarEvent::DirectoryEnd,
        ];
        for e in events {
            w.write(e, &mut out).unwrap();
        }
        out
    }

    struct Item {
        nar: Vec<u8>,
        path: String,
        refs: Vec<String>,
        deriver: String,
        sig: Option<Vec<u8>>,
    }

    fn bundle(items: &[Item]) -> (Vec<u8>, Vec<Seen>) {
        let mut bytes = Vec::new();
        let mut want = Vec::new();
        for it in items {
            write_export_marker(&mut bytes, true);
            let start = bytes.len();
            bytes.extend_from_slice(&it.nar);
            let nar_hash = Hash::sha256(&it.nar);
            encode_export_meta(&it.path, &it.refs, &it.deriver, &mut bytes);
            let signed_hash = Hash::sha256(&bytes[start..]);
            encode_export_signature(it.sig.as_deref(), &mut bytes);
            want.push(Seen::ItemStart);
            let (mut events, err, _) = parse_nar_alone(&it.nar);
            assert_eq!(err, None);
            want.append(&mut events);
            want.push(Seen::NarEnd);
            let mut refs = it.refs.clone();
            refs.sort();
            refs.dedup();
            want.push(Seen::Item(ExportedItem {
                path: it.path.clone(),
                references: refs,
                deriver: it.deriver.clone(),
                signature: it.sig.clone(),
                signed_hash,
                nar_hash,
                nar_size_bytes: it.nar.len() as u64,
            }));
        }
        write_export_marker(&mut bytes, false);
        want.push(Seen::End);
        (bytes, want)
    }

    /// The NAR events of a NAR, owned and merged like `parse` does.
    fn parse_nar_alone(nar: &[u8]) -> (Vec<Seen>, Option<NarError>, usize) {
        let mut seen: Vec<Seen> = Vec::new();
        let r = crate::nar::parse_complete(nar, NarLimits::default(), |e| {
            match (seen.last_mut(), own(e)) {
                (Some(Seen::Data(d)), Seen::Data(more)) => d.extend(more),
                (_, s) => seen.push(s),
            }
        });
        (seen, r.err(), nar.len())
    }

    fn sample_items() -> Vec<Item> {
        vec![
            Item {
                nar: file_nar(false, b"hi\n"),
                path: "/gnu/store/00000000000000000000000000000000-hi".into(),
                refs: vec![],
                deriver: String::new(),
                sig: None,
            },
            Item {
                nar: dir_nar(b"some contents that span more than one word"),
                path: "/gnu/store/11111111111111111111111111111111-dir".into(),
                refs: vec![
                    "/gnu/store/b".into(),
                    "/gnu/store/a".into(),
                    "/gnu/store/00000000000000000000000000000000-hi".into(),
                ],
                deriver: "/gnu/store/22222222222222222222222222222222-dir.drv".into(),
                sig: Some(b"(signature (data (hash sha256 #AB#)))".to_vec()),
            },
        ]
    }

    #[test]
    fn a_bundle_parses_with_its_hashes() {
        let (bytes, want) = bundle(&sample_items());
        assert_eq!(parse(&bytes, &[usize::MAX]), (want, None, bytes.len()));
    }

    #[test]
    fn any_chunking_gives_the_same_outcomes() {
        let (bytes, want) = bundle(&sample_items());
        for sizes in [vec![1], vec![3], vec![7, 1, 13], vec![8], vec![64]] {
            assert_eq!(
                parse(&bytes, &sizes),
                (want.clone(), None, bytes.len()),
                "{sizes:?}"
            );
        }
        fn prop(sizes: Vec<u8>) -> bool {
            let sizes: Vec<usize> = sizes.into_iter().map(|s| usize::from(s).max(1)).collect();
            let sizes = if sizes.is_empty() { vec![1] } else { sizes };
            let (bytes, want) = bundle(&sample_items());
            parse(&bytes, &sizes) == (want, None, bytes.len())
        }
        guixd_testkit::check(prop as fn(Vec<u8>) -> bool);
    }

    #[test]
    fn the_observed_unsigned_export_parses() {
        // Spec 01 §6.6: a 3-byte text file, no references, no deriver, no
        // signature, as the client wraps it in a bundle.
        let nar = file_nar(false, b"abc");
        let path = "/gnu/store/33333333333333333333333333333333-t";
        let mut bytes = Vec::new();
        write_export_marker(&mut bytes, true);
        bytes.extend_from_slice(&nar);
        bytes.extend_from_slice(&[0x4e, 0x49, 0x58, 0x45, 0, 0, 0, 0]);
        write_str(&mut bytes, path);
        bytes.extend_from_slice(&[0; 8 * 3]);
        write_export_marker(&mut bytes, false);
        let mut trailer = Vec::new();
        encode_export_trailer(path, &[], "", None, &mut trailer);
        assert_eq!(&bytes[8 + nar.len()..bytes.len() - 8], &trailer[..]);
        let (seen, err, pos) = parse(&bytes, &[5]);
        assert_eq!((err, pos), (None, bytes.len()));
        let Some(Seen::Item(item)) = seen.iter().rev().nth(1) else {
            panic!("no item in {seen:?}");
        };
        assert_eq!(item.signature, None);
        assert_eq!(item.signed_hash, Hash::sha256(&bytes[8..bytes.len() - 16]));
    }

    #[test]
    fn nothing_after_the_end_is_consumed() {
        let (mut bytes, want) = bundle(&sample_items()[..1]);
        let len = bytes.len();
        bytes.extend_from_slice(b"garbage after the bundle");
        assert_eq!(parse(&bytes, &[usize::MAX]), (want, None, len));
    }

    #[test]
    fn a_bad_marker_is_not_an_export() {
        let mut bytes = Vec::new();
        write_u64(&mut bytes, 2);
        let (_, err, _) = parse(&bytes, &[1]);
        assert_eq!(
            err.unwrap().to_string(),
            "input doesn't look like something created by `nix-store --export'"
        );
    }

    #[test]
    fn a_wrong_magic_is_the_wrong_format() {
        let mut bytes = Vec::new();
        write_export_marker(&mut bytes, true);
        bytes.extend_from_slice(&file_nar(false, b""));
        write_int(&mut bytes, EXPORT_MAGIC + 1);
        let (_, err, _) = parse(&bytes, &[3]);
        assert_eq!(
            err.unwrap().to_string(),
            "normalized archive cannot be imported; wrong format"
        );
    }

    #[test]
    fn paths_are_asserted_field_by_field() {
        let mut items = sample_items();
        items[0].path = "/tmp/evil".into();
        let (bytes, _) = bundle(&items[..1]);
        let (_, err, _) = parse(&bytes, &[2]);
        assert_eq!(
            err.unwrap().to_string(),
            "path `/tmp/evil' is not in the store"
        );

        let mut items = sample_items();
        items[1].refs = vec!["/z".into(), "/gnu/store/ok".into(), "/c".into()];
        let (bytes, _) = bundle(&items[1..]);
        let (_, err, _) = parse(&bytes, &[2]);
        assert_eq!(err.unwrap().to_string(), "path `/c' is not in the store");

        let mut items = sample_items();
        items[1].deriver = "nope".into();
        let (bytes, _) = bundle(&items[1..]);
        let (_, err, _) = parse(&bytes, &[2]);
        assert_eq!(err.unwrap().to_string(), "path `nope' is not in the store");
    }

    #[test]
    fn a_bad_nar_is_reported_and_repeated() {
        let mut bytes = Vec::new();
        write_export_marker(&mut bytes, true);
        write_str(&mut bytes, "not-an-archive");
        let mut p = ExportParser::new(store(), ExportLimits::default());
        assert_eq!(p.feed(&bytes).unwrap().outcome, ExportOutcome::ItemStart);
        let e = p.feed(&bytes[8..]).unwrap_err();
        assert!(
            matches!(e, ExportError::Nar(NarError::NotAnArchive)),
            "{e:?}"
        );
        assert_eq!(p.feed(&[]).unwrap_err(), e);
    }

    #[test]
    fn trailer_limits_apply() {
        let limits = ExportLimits {
            trailer: WireLimits {
                max_list_count: 1,
                ..WireLimits::default()
            },
            ..ExportLimits::default()
        };
        let (bytes, _) = bundle(&sample_items()[1..]);
        let mut p = ExportParser::new(store(), limits);
        let mut rest = &bytes[..];
        let err = loop {
            match p.feed(rest) {
                Ok(step) => {
                    let n = step.consumed;
                    rest = &rest[n..];
                }
                Err(e) => break e,
            }
        };
        assert_eq!(
            err,
            ExportError::Wire(WireError::ListTooLong { count: 3, max: 1 })
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        fn prop(prefix: u8, bytes: Vec<u8>, sizes: Vec<u8>) -> bool {
            let sizes: Vec<usize> = sizes.into_iter().map(|s| usize::from(s).max(1)).collect();
            let sizes = if sizes.is_empty() { vec![1] } else { sizes };
            // Usually start inside a real item, so the trailer gets reached.
            let mut input = Vec::new();
            match prefix % 3 {
                0 => {}
                1 => write_export_marker(&mut input, true),
                _ => {
                    write_export_marker(&mut input, true);
                    input.extend_from_slice(&file_nar(false, b"x"));
                }
            }
            input.extend_from_slice(&bytes);
            parse(&input, &sizes) == parse(&input, &[usize::MAX])
        }
        guixd_testkit::check(prop as fn(u8, Vec<u8>, Vec<u8>) -> bool);
    }

    #[test]
    fn generated_trailers_round_trip() {
        fn prop(refs: Vec<u8>, deriver: bool, sig: Option<Vec<u8>>, contents: Vec<u8>) -> bool {
            let refs: Vec<String> = refs.iter().map(|r| format!("/gnu/store/r{r}")).collect();
            let item = Item {
                nar: dir_nar(&contents),
                path: "/gnu/store/p".into(),
                refs,
                deriver: if deriver {
                    "/gnu/store/d.drv".into()
                } else {
                    String::new()
                },
                sig,
            };
            let (bytes, want) = bundle(std::slice::from_ref(&item));
            let mut g = Gen::new(16);
            let sizes: Vec<usize> = (0..4).map(|_| 1 + usize::arbitrary(&mut g) % 32).collect();
            parse(&bytes, &sizes) == (want, None, bytes.len())
        }
        guixd_testkit::check(prop as fn(Vec<u8>, bool, Option<Vec<u8>>, Vec<u8>) -> bool);
    }
}

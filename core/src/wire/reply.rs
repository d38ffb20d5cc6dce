//! Replies: the typed result of each operation (what follows `STDERR_LAST`),
//! its encoder (daemon side) and its incremental decoder (client side).
//!
//! What this file keeps true: the encoder writes every result the C++
//! daemon collects into a `std::set` or `std::map` sorted bytewise and
//! without duplicates, whatever order the caller gave, and keeps the order
//! of the results that are lists (imported paths, substitute URLs, built-in
//! builders); the decoder accepts exactly what the encoder writes for the
//! same minor version, bounded by [`WireLimits`], and keeps the daemon's
//! order so a test can see it.

use super::prim::{FieldReader, Fields, Kind, Src, Value};
use super::{Feed, Op, WireError, WireLimits, write_int, write_str, write_strings, write_u64};

/// The result of one operation, one variant per operation. Operations the
/// daemon answers with a constant `int 1` have unit variants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    IsValidPath(bool),
    HasSubstitutes(bool),
    /// Lowercase base16 SHA-256 of the NAR.
    QueryPathHash(String),
    QueryReferences(Vec<String>),
    QueryReferrers(Vec<String>),
    AddToStore(String),
    AddTextToStore(String),
    BuildPaths,
    EnsurePath,
    AddTempRoot,
    AddIndirectRoot,
    SyncWithGc,
    /// `(link, target)` pairs, sorted by link.
    FindRoots(Vec<(String, String)>),
    /// The data itself went out in `STDERR_WRITE` frames.
    ExportPath,
    /// `""` when there is none.
    QueryDeriver(String),
    /// Nothing follows `STDERR_LAST`.
    SetOptions,
    CollectGarbage(GcResult),
    /// `None` when the path has no substitute.
    QuerySubstitutablePathInfo(Option<SubstitutableInfo>),
    QueryDerivationOutputs(Vec<String>),
    QueryAllValidPaths(Vec<String>),
    QueryFailedPaths(Vec<String>),
    ClearFailedPaths,
    QueryPathInfo(PathInfo),
    /// Imported paths in stream order (a list, not a set).
    ImportPaths(Vec<String>),
    QueryDerivationOutputNames(Vec<String>),
    /// `""` when no valid path has that hash part.
    QueryPathFromHashPart(String),
    /// `(path, info)`, sorted by path.
    QuerySubstitutablePathInfos(Vec<(String, SubstitutableInfo)>),
    QueryValidPaths(Vec<String>),
    QuerySubstitutablePaths(Vec<String>),
    QueryValidDerivers(Vec<String>),
    OptimiseStore,
    /// True when errors remain (the Guix client inverts it).
    VerifyStore(bool),
    /// Builder names without `builtin:`, in the daemon's order.
    BuiltinBuilders(Vec<String>),
    /// URLs in the order of the setting's tokens.
    SubstituteUrls(Vec<String>),
}

/// The result of query-path-info (spec 01 §6.5).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathInfo {
    /// `""` when there is none.
    pub deriver: String,
    /// Lowercase base16 SHA-256 of the NAR, without `sha256:`.
    pub hash: String,
    pub references: Vec<String>,
    /// Seconds since the epoch, truncated to 32 bits as the daemon does.
    pub registration_time: u32,
    pub nar_size: u64,
}

/// What a substituter says about a path it can provide.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubstitutableInfo {
    pub deriver: String,
    pub references: Vec<String>,
    pub download_size: u64,
    /// Not sent for op 21 to clients of minor < 7 (decoded as 0).
    pub nar_size: u64,
}

/// The result of collect-garbage: the paths returned or deleted and the
/// bytes freed (an obsolete `0` follows on the wire).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcResult {
    pub paths: Vec<String>,
    pub bytes_freed: u64,
}

impl Reply {
    /// The operation this replies to.
    pub fn op(&self) -> Op {
        match self {
            Reply::IsValidPath(_) => Op::IsValidPath,
            Reply::HasSubstitutes(_) => Op::HasSubstitutes,
            Reply::QueryPathHash(_) => Op::QueryPathHash,
            Reply::QueryReferences(_) => Op::QueryReferences,
            Reply::QueryReferrers(_) => Op::QueryReferrers,
            Reply::AddToStore(_) => Op::AddToStore,
            Reply::AddTextToStore(_) => Op::AddTextToStore,
            Reply::BuildPaths => Op::BuildPaths,
            Reply::EnsurePath => Op::EnsurePath,
            Reply::AddTempRoot => Op::AddTempRoot,
            Reply::AddIndirectRoot => Op::AddIndirectRoot,
            Reply::SyncWithGc => Op::SyncWithGc,
            Reply::FindRoots(_) => Op::FindRoots,
            Reply::ExportPath => Op::ExportPath,
            Reply::QueryDeriver(_) => Op::QueryDeriver,
            Reply::SetOptions => Op::SetOptions,
            Reply::CollectGarbage(_) => Op::CollectGarbage,
            Reply::QuerySubstitutablePathInfo(_) => Op::QuerySubstitutablePathInfo,
            Reply::QueryDerivationOutputs(_) => Op::QueryDerivationOutputs,
            Reply::QueryAllValidPaths(_) => Op::QueryAllValidPaths,
            Reply::QueryFailedPaths(_) => Op::QueryFailedPaths,
            Reply::ClearFailedPaths => Op::ClearFailedPaths,
            Reply::QueryPathInfo(_) => Op::QueryPathInfo,
            Reply::ImportPaths(_) => Op::ImportPaths,
            Reply::QueryDerivationOutputNames(_) => Op::QueryDerivationOutputNames,
            Reply::QueryPathFromHashPart(_) => Op::QueryPathFromHashPart,
            Reply::QuerySubstitutablePathInfos(_) => Op::QuerySubstitutablePathInfos,
            Reply::QueryValidPaths(_) => Op::QueryValidPaths,
            Reply::QuerySubstitutablePaths(_) => Op::QuerySubstitutablePaths,
            Reply::QueryValidDerivers(_) => Op::QueryValidDerivers,
            Reply::OptimiseStore => Op::OptimiseStore,
            Reply::VerifyStore(_) => Op::VerifyStore,
            Reply::BuiltinBuilders(_) => Op::BuiltinBuilders,
            Reply::SubstituteUrls(_) => Op::SubstituteUrls,
        }
    }

    /// The reply as the daemon puts it on the wire: sets sorted and
    /// de-duplicated, maps sorted by key with the first value of each key.
    /// Decoding an encoded reply gives back its normalised form.
    pub fn normalised(self) -> Reply {
        fn set(mut v: Vec<String>) -> Vec<String> {
            v.sort();
            v.dedup();
            v
        }
        fn map<T>(mut v: Vec<(String, T)>) -> Vec<(String, T)> {
            // A stable sort keeps the first of equal keys first.
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v.dedup_by(|later, earlier| later.0 == earlier.0);
            v
        }
        fn info(i: SubstitutableInfo) -> SubstitutableInfo {
            SubstitutableInfo {
                references: set(i.references),
                ..i
            }
        }
        match self {
            Reply::QueryReferences(v) => Reply::QueryReferences(set(v)),
            Reply::QueryReferrers(v) => Reply::QueryReferrers(set(v)),
            Reply::FindRoots(v) => Reply::FindRoots(map(v)),
            Reply::CollectGarbage(gc) => Reply::CollectGarbage(GcResult {
                paths: set(gc.paths),
                ..gc
            }),
            Reply::QuerySubstitutablePathInfo(i) => Reply::QuerySubstitutablePathInfo(i.map(info)),
            Reply::QueryDerivationOutputs(v) => Reply::QueryDerivationOutputs(set(v)),
            Reply::QueryAllValidPaths(v) => Reply::QueryAllValidPaths(set(v)),
            Reply::QueryFailedPaths(v) => Reply::QueryFailedPaths(set(v)),
            Reply::QueryPathInfo(p) => Reply::QueryPathInfo(PathInfo {
                references: set(p.references),
                ..p
            }),
            Reply::QueryDerivationOutputNames(v) => Reply::QueryDerivationOutputNames(set(v)),
            Reply::QuerySubstitutablePathInfos(v) => Reply::QuerySubstitutablePathInfos(
                map(v).into_iter().map(|(p, i)| (p, info(i))).collect(),
            ),
            Reply::QueryValidPaths(v) => Reply::QueryValidPaths(set(v)),
            Reply::QuerySubstitutablePaths(v) => Reply::QuerySubstitutablePaths(set(v)),
            Reply::QueryValidDerivers(v) => Reply::QueryValidDerivers(set(v)),
            other => other,
        }
    }
}

/// Appends `reply` as the daemon writes it after `STDERR_LAST` to a client
/// of minor `client_minor` (sets sorted and de-duplicated on the way).
pub fn encode_reply(reply: &Reply, client_minor: u8, out: &mut Vec<u8>) {
    match reply {
        Reply::IsValidPath(b) | Reply::HasSubstitutes(b) | Reply::VerifyStore(b) => {
            write_int(out, u32::from(*b));
        }
        Reply::QueryPathHash(s)
        | Reply::AddToStore(s)
        | Reply::AddTextToStore(s)
        | Reply::QueryDeriver(s)
        | Reply::QueryPathFromHashPart(s) => write_str(out, s),
        Reply::QueryReferences(v)
        | Reply::QueryReferrers(v)
        | Reply::QueryDerivationOutputs(v)
        | Reply::QueryAllValidPaths(v)
        | Reply::QueryFailedPaths(v)
        | Reply::QueryDerivationOutputNames(v)
        | Reply::QueryValidPaths(v)
        | Reply::QuerySubstitutablePaths(v)
        | Reply::QueryValidDerivers(v) => write_set(out, v),
        Reply::ImportPaths(v) | Reply::BuiltinBuilders(v) | Reply::SubstituteUrls(v) => {
            write_strings(out, v);
        }
        Reply::BuildPaths
        | Reply::EnsurePath
        | Reply::AddTempRoot
        | Reply::AddIndirectRoot
        | Reply::SyncWithGc
        | Reply::ExportPath
        | Reply::ClearFailedPaths
        | Reply::OptimiseStore => write_int(out, 1),
        Reply::SetOptions => {}
        Reply::FindRoots(roots) => {
            let roots = sorted_map(roots);
            write_int(out, roots.len() as u32);
            for (link, target) in roots {
                write_str(out, link);
                write_str(out, target);
            }
        }
        Reply::CollectGarbage(gc) => {
            write_set(out, &gc.paths);
            write_u64(out, gc.bytes_freed);
            write_u64(out, 0);
        }
        Reply::QuerySubstitutablePathInfo(None) => write_int(out, 0),
        Reply::QuerySubstitutablePathInfo(Some(i)) => {
            write_int(out, 1);
            write_str(out, &i.deriver);
            write_set(out, &i.references);
            write_u64(out, i.download_size);
            if client_minor >= 7 {
                write_u64(out, i.nar_size);
            }
        }
        Reply::QueryPathInfo(p) => {
            write_str(out, &p.deriver);
            write_str(out, &p.hash);
            write_set(out, &p.references);
            write_int(out, p.registration_time);
            write_u64(out, p.nar_size);
        }
        Reply::QuerySubstitutablePathInfos(infos) => {
            let infos = sorted_map(infos);
            write_int(out, infos.len() as u32);
            for (path, i) in infos {
                write_str(out, path);
                write_str(out, &i.deriver);
                write_set(out, &i.references);
                write_u64(out, i.download_size);
                write_u64(out, i.nar_size);
            }
        }
    }
}

/// Incremental decoder of one operation's reply (client side), fed the
/// bytes after `STDERR_LAST`. It yields the reply once and then consumes
/// nothing more; after an error it returns that error forever.
#[derive(Clone, Debug)]
pub struct ReplyDecoder {
    op: Op,
    daemon_minor: u8,
    limits: WireLimits,
    values: Vec<Value>,
    reader: FieldReader,
    used_bytes: u64,
    done: bool,
    failed: Option<WireError>,
}

impl ReplyDecoder {
    /// A decoder for the reply to `op` from a daemon of minor
    /// `daemon_minor` (which decides op 21's fields).
    pub fn new(op: Op, daemon_minor: u8, limits: WireLimits) -> ReplyDecoder {
        ReplyDecoder {
            op,
            daemon_minor,
            limits,
            values: Vec::new(),
            reader: FieldReader::default(),
            used_bytes: 0,
            done: false,
            failed: None,
        }
    }

    /// Consumes bytes of `input` up to the end of the reply.
    pub fn feed(&mut self, input: &[u8]) -> Result<Feed<Reply>, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.done {
            return Ok(Feed {
                consumed: 0,
                item: None,
            });
        }
        let max = self.limits.max_message_bytes;
        let mut src = Src::new(input, max.saturating_sub(self.used_bytes), max);
        let result = self.step(&mut src);
        self.used_bytes += src.consumed() as u64;
        match result {
            Ok(item) => {
                self.done = item.is_some();
                Ok(Feed {
                    consumed: src.consumed(),
                    item,
                })
            }
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// True once the reply has been yielded.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn step(&mut self, src: &mut Src<'_>) -> Result<Option<Reply>, WireError> {
        while let Some(kind) = reply_next(self.op, self.daemon_minor, &self.values, &self.limits)? {
            let Some(value) = self.reader.read(kind, src, &self.limits)? else {
                return Ok(None);
            };
            self.values.push(value);
        }
        build_reply(self.op, self.daemon_minor, std::mem::take(&mut self.values)).map(Some)
    }
}

/// Writes a string set: sorted bytewise, without duplicates.
fn write_set(out: &mut Vec<u8>, items: &[String]) {
    let mut sorted: Vec<&String> = items.iter().collect();
    sorted.sort();
    sorted.dedup();
    write_strings(out, sorted);
}

/// A map's entries sorted by key, the first of equal keys kept.
fn sorted_map<T>(entries: &[(String, T)]) -> Vec<(&String, &T)> {
    let mut sorted: Vec<(&String, &T)> = entries.iter().map(|(k, v)| (k, v)).collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    sorted.dedup_by(|later, earlier| later.0 == earlier.0);
    sorted
}

/// The kind of the next field of `op`'s reply, given those read so far;
/// `None` when the reply is complete.
fn reply_next(
    op: Op,
    minor: u8,
    values: &[Value],
    limits: &WireLimits,
) -> Result<Option<Kind>, WireError> {
    use Kind::*;
    let fixed = |kinds: &[Kind]| kinds.get(values.len()).copied();
    Ok(match op {
        Op::IsValidPath
        | Op::HasSubstitutes
        | Op::BuildPaths
        | Op::EnsurePath
        | Op::AddTempRoot
        | Op::AddIndirectRoot
        | Op::SyncWithGc
        | Op::ExportPath
        | Op::ClearFailedPaths
        | Op::OptimiseStore
        | Op::VerifyStore => fixed(&[Int]),
        Op::QueryPathHash
        | Op::AddToStore
        | Op::AddTextToStore
        | Op::QueryDeriver
        | Op::QueryPathFromHashPart => fixed(&[Str]),
        Op::QueryReferences
        | Op::QueryReferrers
        | Op::QueryDerivationOutputs
        | Op::QueryAllValidPaths
        | Op::QueryFailedPaths
        | Op::ImportPaths
        | Op::QueryDerivationOutputNames
        | Op::QueryValidPaths
        | Op::QuerySubstitutablePaths
        | Op::QueryValidDerivers
        | Op::BuiltinBuilders
        | Op::SubstituteUrls => fixed(&[Strs]),
        Op::SetOptions => None,
        Op::CollectGarbage => fixed(&[Strs, U64, U64]),
        Op::QueryPathInfo => fixed(&[Str, Str, Strs, Int, U64]),
        Op::QuerySubstitutablePathInfo => match values.first() {
            None => Some(Int),
            Some(Value::Int(0)) => None,
            Some(_) if minor >= 7 => [Str, Strs, U64, U64].get(values.len() - 1).copied(),
            Some(_) => [Str, Strs, U64].get(values.len() - 1).copied(),
        },
        Op::FindRoots => counted(values, &[Str, Str], limits)?,
        Op::QuerySubstitutablePathInfos => counted(values, &[Str, Str, Strs, U64, U64], limits)?,
    })
}

/// The next field of an `int` count followed by that many groups of
/// fields; the count is bounded like a list.
fn counted(
    values: &[Value],
    group: &[Kind],
    limits: &WireLimits,
) -> Result<Option<Kind>, WireError> {
    let count = match values.first() {
        None => return Ok(Some(Kind::Int)),
        Some(Value::Int(n)) => u64::from(*n),
        Some(_) => return Err(WireError::Bug("a counted reply starts with its count")),
    };
    if count > limits.max_list_count {
        return Err(WireError::ListTooLong {
            count,
            max: limits.max_list_count,
        });
    }
    let read = (values.len() - 1) as u64;
    let width = group.len() as u64;
    Ok(if read < count * width {
        Some(group[(read % width) as usize])
    } else {
        None
    })
}

/// The typed reply from the values `reply_next` asked for.
fn build_reply(op: Op, minor: u8, values: Vec<Value>) -> Result<Reply, WireError> {
    let mut f = Fields::new(values);
    let one = |f: &mut Fields| match f.int()? {
        1 => Ok(()),
        n => Err(WireError::UnexpectedReplyValue {
            value: u64::from(n),
        }),
    };
    Ok(match op {
        Op::IsValidPath => Reply::IsValidPath(f.nonzero()?),
        Op::HasSubstitutes => Reply::HasSubstitutes(f.nonzero()?),
        Op::QueryPathHash => Reply::QueryPathHash(f.string()?),
        Op::QueryReferences => Reply::QueryReferences(f.strings()?),
        Op::QueryReferrers => Reply::QueryReferrers(f.strings()?),
        Op::AddToStore => Reply::AddToStore(f.string()?),
        Op::AddTextToStore => Reply::AddTextToStore(f.string()?),
        Op::BuildPaths => one(&mut f).map(|()| Reply::BuildPaths)?,
        Op::EnsurePath => one(&mut f).map(|()| Reply::EnsurePath)?,
        Op::AddTempRoot => one(&mut f).map(|()| Reply::AddTempRoot)?,
        Op::AddIndirectRoot => one(&mut f).map(|()| Reply::AddIndirectRoot)?,
        Op::SyncWithGc => one(&mut f).map(|()| Reply::SyncWithGc)?,
        Op::FindRoots => {
            let count = f.int()?;
            let mut roots = Vec::new();
            for _ in 0..count {
                roots.push((f.string()?, f.string()?));
            }
            Reply::FindRoots(roots)
        }
        Op::ExportPath => one(&mut f).map(|()| Reply::ExportPath)?,
        Op::QueryDeriver => Reply::QueryDeriver(f.string()?),
        Op::SetOptions => Reply::SetOptions,
        Op::CollectGarbage => {
            let gc = GcResult {
                paths: f.strings()?,
                bytes_freed: f.u64()?,
            };
            f.u64()?;
            Reply::CollectGarbage(gc)
        }
        Op::QuerySubstitutablePathInfo => {
            if f.int()? == 0 {
                Reply::QuerySubstitutablePathInfo(None)
            } else {
                Reply::QuerySubstitutablePathInfo(Some(SubstitutableInfo {
                    deriver: f.string()?,
                    references: f.strings()?,
                    download_size: f.u64()?,
                    nar_size: if minor >= 7 { f.u64()? } else { 0 },
                }))
            }
        }
        Op::QueryDerivationOutputs => Reply::QueryDerivationOutputs(f.strings()?),
        Op::QueryAllValidPaths => Reply::QueryAllValidPaths(f.strings()?),
        Op::QueryFailedPaths => Reply::QueryFailedPaths(f.strings()?),
        Op::ClearFailedPaths => one(&mut f).map(|()| Reply::ClearFailedPaths)?,
        Op::QueryPathInfo => Reply::QueryPathInfo(PathInfo {
            deriver: f.string()?,
            hash: f.string()?,
            references: f.strings()?,
            registration_time: f.int()?,
            nar_size: f.u64()?,
        }),
        Op::ImportPaths => Reply::ImportPaths(f.strings()?),
        Op::QueryDerivationOutputNames => Reply::QueryDerivationOutputNames(f.strings()?),
        Op::QueryPathFromHashPart => Reply::QueryPathFromHashPart(f.string()?),
        Op::QuerySubstitutablePathInfos => {
            let count = f.int()?;
            let mut infos = Vec::new();
            for _ in 0..count {
                let path = f.string()?;
                infos.push((
                    path,
                    SubstitutableInfo {
                        deriver: f.string()?,
                        references: f.strings()?,
                        download_size: f.u64()?,
                        nar_size: f.u64()?,
                    },
                ));
            }
            Reply::QuerySubstitutablePathInfos(infos)
        }
        Op::QueryValidPaths => Reply::QueryValidPaths(f.strings()?),
        Op::QuerySubstitutablePaths => Reply::QuerySubstitutablePaths(f.strings()?),
        Op::QueryValidDerivers => Reply::QueryValidDerivers(f.strings()?),
        Op::OptimiseStore => one(&mut f).map(|()| Reply::OptimiseStore)?,
        Op::VerifyStore => Reply::VerifyStore(f.nonzero()?),
        Op::BuiltinBuilders => Reply::BuiltinBuilders(f.strings()?),
        Op::SubstituteUrls => Reply::SubstituteUrls(f.strings()?),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testgen::{ArbReply, Chunks, reply_for};
    use super::*;
    use crate::wire::{PROTOCOL_VERSION, write_bytes};
    use quickcheck::Gen;

    const MINOR: u8 = PROTOCOL_VERSION as u8;

    /// Decodes one reply from `bytes` fed in pieces of the given sizes.
    fn decode_chunked(
        op: Op,
        minor: u8,
        bytes: &[u8],
        sizes: &[usize],
        limits: &WireLimits,
    ) -> Result<(Option<Reply>, usize), WireError> {
        let mut dec = ReplyDecoder::new(op, minor, limits.clone());
        let mut pos: usize = 0;
        let mut i = 0;
        let mut reply = None;
        // An empty reply (set-options) completes without input.
        if let Some(r) = dec.feed(&[])?.item {
            return Ok((Some(r), 0));
        }
        while pos < bytes.len() && reply.is_none() {
            let size = sizes[i % sizes.len()].max(1);
            i += 1;
            let chunk = &bytes[pos..pos.saturating_add(size).min(bytes.len())];
            let f = dec.feed(chunk)?;
            pos += f.consumed;
            reply = f.item;
        }
        Ok((reply, pos))
    }

    #[test]
    fn every_reply_round_trips() {
        fn prop(r: ArbReply, chunks: Chunks) -> bool {
            let mut bytes = Vec::new();
            encode_reply(&r.reply, r.minor, &mut bytes);
            let want = r.reply.clone().normalised();
            let limits = WireLimits::default();
            let whole = decode_chunked(r.reply.op(), r.minor, &bytes, &[usize::MAX], &limits);
            let split = decode_chunked(r.reply.op(), r.minor, &bytes, &chunks.0, &limits);
            whole == Ok((Some(want), bytes.len())) && whole == split
        }
        guixd_testkit::check(prop as fn(ArbReply, Chunks) -> bool);
    }

    #[test]
    fn each_op_reply_round_trips_byte_by_byte() {
        let mut g = Gen::new(6);
        for minor in [0, 6, 7, 8, MINOR] {
            for op in Op::ALL {
                let reply = reply_for(op, minor, &mut g);
                let mut bytes = Vec::new();
                encode_reply(&reply, minor, &mut bytes);
                let got = decode_chunked(op, minor, &bytes, &[1], &WireLimits::default());
                assert_eq!(got, Ok((Some(reply.normalised()), bytes.len())), "{op:?}");
            }
        }
    }

    #[test]
    fn the_add_text_to_store_transcript_reply_is_the_spec_bytes() {
        // Spec 01 §7, daemon side: LAST, then the path for store
        // `/tmp/probe-a/store`, computed the way the session will.
        let dir = crate::store_path::StoreDir::new("/tmp/probe-a/store").unwrap();
        let path = dir
            .make_text_path("hello", &crate::hash::Hash::sha256(b"world"), [])
            .unwrap();
        let mut bytes = Vec::new();
        super::super::write_stderr_last(&mut bytes);
        encode_reply(
            &Reply::AddTextToStore(path.as_str().into()),
            MINOR,
            &mut bytes,
        );
        let mut want = vec![
            0x73, 0x74, 0x6c, 0x61, 0, 0, 0, 0, 0x39, 0, 0, 0, 0, 0, 0, 0,
        ];
        want.extend_from_slice(b"/tmp/probe-a/store/5i1a0r4ll8bi8nvn7k7mg9ynq0svb2wd-hello");
        want.extend_from_slice(&[0; 7]);
        assert_eq!(bytes, want);
    }

    #[test]
    fn sets_are_sorted_and_deduplicated_lists_are_not() {
        let paths = vec![
            "/gnu/store/b".to_string(),
            "/gnu/store/a".into(),
            "/gnu/store/b".into(),
        ];
        let mut set = Vec::new();
        encode_reply(&Reply::QueryValidPaths(paths.clone()), MINOR, &mut set);
        let mut want = Vec::new();
        write_strings(&mut want, ["/gnu/store/a", "/gnu/store/b"]);
        assert_eq!(set, want);
        let mut list = Vec::new();
        encode_reply(&Reply::ImportPaths(paths.clone()), MINOR, &mut list);
        let mut want = Vec::new();
        write_strings(&mut want, &paths);
        assert_eq!(list, want);
    }

    #[test]
    fn path_info_is_written_field_by_field() {
        let info = PathInfo {
            deriver: String::new(),
            hash: "ab".into(),
            references: vec!["/gnu/store/z".into(), "/gnu/store/y".into()],
            registration_time: 7,
            nar_size: 1 << 40,
        };
        let mut bytes = Vec::new();
        encode_reply(&Reply::QueryPathInfo(info), MINOR, &mut bytes);
        let mut want = Vec::new();
        write_str(&mut want, "");
        write_str(&mut want, "ab");
        write_strings(&mut want, ["/gnu/store/y", "/gnu/store/z"]);
        write_int(&mut want, 7);
        write_u64(&mut want, 1 << 40);
        assert_eq!(bytes, want);
    }

    #[test]
    fn gc_results_end_with_an_obsolete_zero() {
        let mut bytes = Vec::new();
        encode_reply(
            &Reply::CollectGarbage(GcResult {
                paths: vec![],
                bytes_freed: u64::MAX,
            }),
            MINOR,
            &mut bytes,
        );
        assert_eq!(bytes.len(), 24);
        assert_eq!(&bytes[8..16], &[0xff; 8]);
        assert_eq!(&bytes[16..], &[0; 8]);
    }

    #[test]
    fn roots_and_substitutable_infos_are_sorted_by_key() {
        let roots = vec![
            ("/b".to_string(), "/gnu/store/1".to_string()),
            ("/a".into(), "/gnu/store/2".into()),
        ];
        let mut bytes = Vec::new();
        encode_reply(&Reply::FindRoots(roots), MINOR, &mut bytes);
        let mut want = Vec::new();
        write_int(&mut want, 2);
        for s in ["/a", "/gnu/store/2", "/b", "/gnu/store/1"] {
            write_str(&mut want, s);
        }
        assert_eq!(bytes, want);
    }

    #[test]
    fn op_21_omits_nar_size_for_old_clients() {
        let info = SubstitutableInfo {
            deriver: "d".into(),
            references: vec![],
            download_size: 5,
            nar_size: 9,
        };
        let reply = Reply::QuerySubstitutablePathInfo(Some(info));
        let mut old = Vec::new();
        encode_reply(&reply, 6, &mut old);
        let mut new = Vec::new();
        encode_reply(&reply, 7, &mut new);
        assert_eq!(old.len() + 8, new.len());
    }

    #[test]
    fn constant_ones_are_checked_on_the_client_side() {
        let mut bytes = Vec::new();
        write_int(&mut bytes, 0);
        let got = decode_chunked(Op::BuildPaths, MINOR, &bytes, &[8], &WireLimits::default());
        assert_eq!(got, Err(WireError::UnexpectedReplyValue { value: 0 }));
    }

    #[test]
    fn counted_replies_are_bounded() {
        let limits = WireLimits {
            max_list_count: 3,
            ..WireLimits::default()
        };
        let mut bytes = Vec::new();
        write_int(&mut bytes, 4);
        let got = decode_chunked(Op::FindRoots, MINOR, &bytes, &[8], &limits);
        assert_eq!(got, Err(WireError::ListTooLong { count: 4, max: 3 }));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        fn prop(op: u8, bytes: Vec<u8>, chunks: Chunks) -> bool {
            let op = Op::ALL[usize::from(op) % Op::ALL.len()];
            let limits = WireLimits {
                max_string_len_bytes: 64,
                max_list_count: 8,
                max_pairs_count: 4,
                max_message_bytes: 512,
            };
            let whole = decode_chunked(op, MINOR, &bytes, &[usize::MAX], &limits);
            let split = decode_chunked(op, MINOR, &bytes, &chunks.0, &limits);
            whole == split
        }
        guixd_testkit::check(prop as fn(u8, Vec<u8>, Chunks) -> bool);
    }

    #[test]
    fn a_reply_stops_at_its_end() {
        let mut bytes = Vec::new();
        write_bytes(&mut bytes, b"/gnu/store/x");
        let len = bytes.len();
        bytes.extend_from_slice(b"trailing");
        let mut dec = ReplyDecoder::new(Op::AddToStore, MINOR, WireLimits::default());
        let f = dec.feed(&bytes).unwrap();
        assert_eq!(f.consumed, len);
        assert_eq!(f.item, Some(Reply::AddToStore("/gnu/store/x".into())));
        assert!(dec.is_done());
        assert_eq!(dec.feed(b"more").unwrap().consumed, 0);
    }
}

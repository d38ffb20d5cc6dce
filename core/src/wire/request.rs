//! Worker requests: the typed [`Request`], its incremental decoder (daemon
//! side) and its encoder (client side).
//!
//! Each operation's request is described by a schema, a list of field
//! kinds that depends on the operation and the client's minor version
//! (spec 01 §9); one generic field reader fills it and the values become a
//! typed [`Request`] at the end. What this file keeps true: the schema,
//! the typed conversion and the encoder agree for every operation and
//! every client minor (a round-trip property checks it); the decoder stops
//! right after a request, so add-to-store's NAR is left to the caller;
//! fields the C++ daemon reads as booleans are read with its exact test
//! (`!= 0` or `== 1`).

use super::prim::{FieldReader, Fields, Kind, Src, Value, Word, int_of, lossy_string};
use super::{Feed, Op, WireError, WireLimits, write_bool, write_bytes, write_int, write_pairs};
use super::{write_str, write_strings, write_u64};
use crate::store_path::{StoreDir, StorePathError};

/// One request, as read by the C++ daemon's `performOp`. Paths are the raw
/// strings the client sent (see [`Request::assert_store_paths`]); lists
/// keep the client's order and duplicates, where the daemon would collect
/// them into a sorted set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Op 1. The one operation whose path is asserted *after* work starts,
    /// so a bad path is a recoverable error.
    IsValidPath {
        path: String,
    },
    HasSubstitutes {
        path: String,
    },
    QueryPathHash {
        path: String,
    },
    QueryReferences {
        path: String,
    },
    QueryReferrers {
        path: String,
    },
    /// Op 7: only the header. The NAR follows on the wire, unframed, and
    /// is the caller's to parse.
    AddToStore(AddToStoreHeader),
    AddTextToStore {
        name: String,
        contents: Vec<u8>,
        references: Vec<String>,
    },
    /// Op 9. `mode` is 0 (normal), 1 (repair) or 2 (check) from a sane
    /// client; clients of minor < 15 do not send it, which means 0.
    BuildPaths {
        things: Vec<String>,
        mode: u32,
    },
    EnsurePath {
        path: String,
    },
    AddTempRoot {
        path: String,
    },
    /// Op 12. The daemon makes `file` absolute before use.
    AddIndirectRoot {
        file: String,
    },
    SyncWithGc,
    FindRoots,
    /// Op 16. `sign` is the daemon's `readInt(from) == 1`.
    ExportPath {
        path: String,
        sign: bool,
    },
    QueryDeriver {
        path: String,
    },
    SetOptions(ClientOptions),
    CollectGarbage(GcRequest),
    /// Op 21. The daemon makes `path` absolute and does not assert it.
    QuerySubstitutablePathInfo {
        path: String,
    },
    QueryDerivationOutputs {
        path: String,
    },
    QueryAllValidPaths,
    QueryFailedPaths,
    /// Op 25. Not asserted to be store paths (`"*"` clears everything).
    ClearFailedPaths {
        paths: Vec<String>,
    },
    QueryPathInfo {
        path: String,
    },
    /// Op 27: nothing inline; the bundle arrives through `STDERR_READ`.
    ImportPaths,
    QueryDerivationOutputNames {
        path: String,
    },
    QueryPathFromHashPart {
        hash_part: String,
    },
    QuerySubstitutablePathInfos {
        paths: Vec<String>,
    },
    QueryValidPaths {
        paths: Vec<String>,
    },
    QuerySubstitutablePaths {
        paths: Vec<String>,
    },
    QueryValidDerivers {
        path: String,
    },
    OptimiseStore,
    /// Op 35. Both flags are `readInt(from) != 0`.
    VerifyStore {
        check_contents: bool,
        repair: bool,
    },
    BuiltinBuilders,
    SubstituteUrls,
}

/// The fields of an add-to-store request before its NAR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddToStoreHeader {
    /// The base name of the item to create.
    pub name: String,
    /// Obsolete `fixed` flag (`== 1`); Guix 1.5.0 always sends 1.
    pub fixed: bool,
    /// `readInt(from) == 1`: NAR-hashed (true) or flat file (false).
    pub recursive: bool,
    /// The hash algorithm's name as sent, e.g. `sha256`; not checked here.
    pub hash_algo: String,
}

impl AddToStoreHeader {
    /// Whether the item is recursive and which algorithm names its hash,
    /// after the daemon's compatibility rule: without `fixed` it is always
    /// recursive SHA-256.
    pub fn method(&self) -> (bool, &str) {
        if self.fixed {
            (self.recursive, &self.hash_algo)
        } else {
            (true, "sha256")
        }
    }
}

/// The fields of a set-options request (spec 01 §6.1). A field is `None`
/// when the client's minor version does not carry it, which leaves that
/// setting as it was.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientOptions {
    pub keep_failed: bool,
    pub keep_going: bool,
    pub try_fallback: bool,
    /// The daemon's verbosity for this session (0 error .. 5 vomit).
    pub verbosity: u32,
    /// Minor < 0x61 only.
    pub max_build_jobs: Option<u32>,
    /// Minor < 0x61 only.
    pub max_silent_time: Option<u32>,
    /// Minor >= 2.
    pub use_build_hook: Option<bool>,
    /// Minor >= 4, with `log_type` and `print_build_trace`.
    pub build_verbosity: Option<u32>,
    pub log_type: Option<u32>,
    pub print_build_trace: Option<bool>,
    /// 6 <= minor < 0x61.
    pub build_cores: Option<u32>,
    /// Minor >= 10.
    pub use_substitutes: Option<bool>,
    /// Minor >= 12: setting overrides, in the client's order.
    pub overrides: Vec<(String, String)>,
}

/// The fields of a collect-garbage request (spec 01 §6.7); the obsolete
/// trailing ints are read and dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcRequest {
    /// 0 return-live, 1 return-dead, 2 delete-dead, 3 delete-specific.
    pub action: u32,
    pub paths: Vec<String>,
    /// `readInt(from) != 0`; the daemon refuses it.
    pub ignore_liveness: bool,
    pub max_freed_bytes: u64,
}

impl Request {
    /// The request's operation.
    pub fn op(&self) -> Op {
        match self {
            Request::IsValidPath { .. } => Op::IsValidPath,
            Request::HasSubstitutes { .. } => Op::HasSubstitutes,
            Request::QueryPathHash { .. } => Op::QueryPathHash,
            Request::QueryReferences { .. } => Op::QueryReferences,
            Request::QueryReferrers { .. } => Op::QueryReferrers,
            Request::AddToStore(_) => Op::AddToStore,
            Request::AddTextToStore { .. } => Op::AddTextToStore,
            Request::BuildPaths { .. } => Op::BuildPaths,
            Request::EnsurePath { .. } => Op::EnsurePath,
            Request::AddTempRoot { .. } => Op::AddTempRoot,
            Request::AddIndirectRoot { .. } => Op::AddIndirectRoot,
            Request::SyncWithGc => Op::SyncWithGc,
            Request::FindRoots => Op::FindRoots,
            Request::ExportPath { .. } => Op::ExportPath,
            Request::QueryDeriver { .. } => Op::QueryDeriver,
            Request::SetOptions(_) => Op::SetOptions,
            Request::CollectGarbage(_) => Op::CollectGarbage,
            Request::QuerySubstitutablePathInfo { .. } => Op::QuerySubstitutablePathInfo,
            Request::QueryDerivationOutputs { .. } => Op::QueryDerivationOutputs,
            Request::QueryAllValidPaths => Op::QueryAllValidPaths,
            Request::QueryFailedPaths => Op::QueryFailedPaths,
            Request::ClearFailedPaths { .. } => Op::ClearFailedPaths,
            Request::QueryPathInfo { .. } => Op::QueryPathInfo,
            Request::ImportPaths => Op::ImportPaths,
            Request::QueryDerivationOutputNames { .. } => Op::QueryDerivationOutputNames,
            Request::QueryPathFromHashPart { .. } => Op::QueryPathFromHashPart,
            Request::QuerySubstitutablePathInfos { .. } => Op::QuerySubstitutablePathInfos,
            Request::QueryValidPaths { .. } => Op::QueryValidPaths,
            Request::QuerySubstitutablePaths { .. } => Op::QuerySubstitutablePaths,
            Request::QueryValidDerivers { .. } => Op::QueryValidDerivers,
            Request::OptimiseStore => Op::OptimiseStore,
            Request::VerifyStore { .. } => Op::VerifyStore,
            Request::BuiltinBuilders => Op::BuiltinBuilders,
            Request::SubstituteUrls => Op::SubstituteUrls,
        }
    }

    /// Asserts, as the C++ daemon's `readStorePath(s)` does while reading
    /// the request, that every field it reads that way is a store path:
    /// fields in wire order, a list's members in sorted order (the daemon
    /// checks the set it collected). The first failure is the daemon's
    /// error. Op 1's path is not among these fields: the daemon asserts it
    /// only after work has started, and the session does that itself.
    pub fn assert_store_paths(&self, dir: &StoreDir) -> Result<(), StorePathError> {
        let one = |p: &String| dir.parse_path(p).map(drop);
        let set = |ps: &[String]| match ps.iter().filter(|p| !dir.is_store_path(p)).min() {
            Some(bad) => Err(StorePathError::NotInStore(bad.clone())),
            None => Ok(()),
        };
        match self {
            Request::HasSubstitutes { path }
            | Request::QueryPathHash { path }
            | Request::QueryReferences { path }
            | Request::QueryReferrers { path }
            | Request::EnsurePath { path }
            | Request::AddTempRoot { path }
            | Request::ExportPath { path, .. }
            | Request::QueryDeriver { path }
            | Request::QueryDerivationOutputs { path }
            | Request::QueryPathInfo { path }
            | Request::QueryDerivationOutputNames { path }
            | Request::QueryValidDerivers { path } => one(path),
            Request::AddTextToStore { references, .. } => set(references),
            Request::BuildPaths { things, .. } => set(things),
            Request::CollectGarbage(gc) => set(&gc.paths),
            Request::QuerySubstitutablePathInfos { paths }
            | Request::QueryValidPaths { paths }
            | Request::QuerySubstitutablePaths { paths } => set(paths),
            Request::IsValidPath { .. }
            | Request::AddToStore(_)
            | Request::AddIndirectRoot { .. }
            | Request::SyncWithGc
            | Request::FindRoots
            | Request::SetOptions(_)
            | Request::QuerySubstitutablePathInfo { .. }
            | Request::QueryAllValidPaths
            | Request::QueryFailedPaths
            | Request::ClearFailedPaths { .. }
            | Request::ImportPaths
            | Request::QueryPathFromHashPart { .. }
            | Request::OptimiseStore
            | Request::VerifyStore { .. }
            | Request::BuiltinBuilders
            | Request::SubstituteUrls => Ok(()),
        }
    }
}

/// Appends `req` as a client of minor version `client_minor` writes it:
/// the op, then the fields that minor carries. For add-to-store only the
/// header is written; the caller appends the NAR.
pub fn encode_request(req: &Request, client_minor: u8, out: &mut Vec<u8>) {
    write_int(out, req.op().code());
    match req {
        Request::IsValidPath { path }
        | Request::HasSubstitutes { path }
        | Request::QueryPathHash { path }
        | Request::QueryReferences { path }
        | Request::QueryReferrers { path }
        | Request::EnsurePath { path }
        | Request::AddTempRoot { path }
        | Request::QueryDeriver { path }
        | Request::QuerySubstitutablePathInfo { path }
        | Request::QueryDerivationOutputs { path }
        | Request::QueryPathInfo { path }
        | Request::QueryDerivationOutputNames { path }
        | Request::QueryValidDerivers { path }
        | Request::AddIndirectRoot { file: path }
        | Request::QueryPathFromHashPart { hash_part: path } => write_str(out, path),
        Request::AddToStore(h) => {
            write_str(out, &h.name);
            write_bool(out, h.fixed);
            write_bool(out, h.recursive);
            write_str(out, &h.hash_algo);
        }
        Request::AddTextToStore {
            name,
            contents,
            references,
        } => {
            write_str(out, name);
            write_bytes(out, contents);
            write_strings(out, references);
        }
        Request::BuildPaths { things, mode } => {
            write_strings(out, things);
            if client_minor >= 15 {
                write_int(out, *mode);
            }
        }
        Request::ExportPath { path, sign } => {
            write_str(out, path);
            write_bool(out, *sign);
        }
        Request::SetOptions(o) => encode_options(o, client_minor, out),
        Request::CollectGarbage(gc) => {
            write_int(out, gc.action);
            write_strings(out, &gc.paths);
            write_bool(out, gc.ignore_liveness);
            write_u64(out, gc.max_freed_bytes);
            write_int(out, 0);
            if client_minor >= 5 {
                write_int(out, 0);
                write_int(out, 0);
            }
        }
        Request::ClearFailedPaths { paths }
        | Request::QuerySubstitutablePathInfos { paths }
        | Request::QueryValidPaths { paths }
        | Request::QuerySubstitutablePaths { paths } => write_strings(out, paths),
        Request::VerifyStore {
            check_contents,
            repair,
        } => {
            write_bool(out, *check_contents);
            write_bool(out, *repair);
        }
        Request::SyncWithGc
        | Request::FindRoots
        | Request::QueryAllValidPaths
        | Request::QueryFailedPaths
        | Request::ImportPaths
        | Request::OptimiseStore
        | Request::BuiltinBuilders
        | Request::SubstituteUrls => {}
    }
}

/// Incremental decoder of a client's requests (daemon side).
///
/// Feed it the bytes that arrive; each call consumes bytes up to the end
/// of at most one request and returns it when complete. It is then ready
/// for the next request. After add-to-store it yields the header and
/// stops: the NAR that follows must go to a NAR parser before anything is
/// fed here again. After an error it returns that error forever: a request
/// that failed to parse ends the session (spec 01 §4.1).
#[derive(Clone, Debug)]
pub struct RequestDecoder {
    limits: WireLimits,
    client_minor: u8,
    store_dir: Option<StoreDir>,
    op_word: Word,
    pending: Option<Pending>,
    /// Bytes of the current request consumed so far.
    used_bytes: u64,
    failed: Option<WireError>,
}

#[derive(Clone, Debug)]
struct Pending {
    op: Op,
    schema: Vec<Kind>,
    values: Vec<Value>,
    reader: FieldReader,
}

impl RequestDecoder {
    /// A decoder for a client that announced minor version `client_minor`.
    pub fn new(client_minor: u8, limits: WireLimits) -> RequestDecoder {
        RequestDecoder {
            limits,
            client_minor,
            store_dir: None,
            op_word: Word::default(),
            pending: None,
            used_bytes: 0,
            failed: None,
        }
    }

    /// Makes the decoder assert store paths as the C++ daemon does, each
    /// as soon as its field is read (a list once complete, in sorted
    /// order), so the first error is the daemon's first error even when
    /// later fields are broken or missing. A failure is
    /// [`WireError::NotInStore`]. Op 1's path is never asserted here.
    pub fn assert_store_paths(mut self, dir: StoreDir) -> RequestDecoder {
        self.store_dir = Some(dir);
        self
    }

    /// Consumes bytes of `input` up to the end of one request.
    pub fn feed(&mut self, input: &[u8]) -> Result<Feed<Request>, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let max = self.limits.max_message_bytes;
        let mut src = Src::new(input, max.saturating_sub(self.used_bytes), max);
        let result = self.step(&mut src);
        self.used_bytes += src.consumed() as u64;
        match result {
            Ok(item) => {
                if item.is_some() {
                    self.used_bytes = 0;
                }
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

    /// The operation whose fields are being read, once its op word is in.
    /// The session needs it to answer as the daemon does before reading a
    /// request's fields (collect-garbage over TCP), or to tell a bad op
    /// word (no answer at all) from a bad field.
    pub fn pending_op(&self) -> Option<Op> {
        self.pending.as_ref().map(|p| p.op)
    }

    /// True between requests, where end-of-file is a normal close.
    pub fn is_idle(&self) -> bool {
        self.pending.is_none() && !self.op_word.is_started()
    }

    fn step(&mut self, src: &mut Src<'_>) -> Result<Option<Request>, WireError> {
        if self.pending.is_none() {
            let Some(word) = self.op_word.read(src)? else {
                return Ok(None);
            };
            let code = int_of(word)?;
            let op = Op::from_u32(code).ok_or(WireError::InvalidOperation(code))?;
            self.pending = Some(Pending {
                op,
                schema: request_schema(op, self.client_minor),
                values: Vec::new(),
                reader: FieldReader::default(),
            });
        }
        let Some(p) = self.pending.as_mut() else {
            return Err(WireError::Bug("no pending request after its op word"));
        };
        while let Some(&kind) = p.schema.get(p.values.len()) {
            let Some(value) = p.reader.read(kind, src, &self.limits)? else {
                return Ok(None);
            };
            if let Some(dir) = &self.store_dir {
                assert_field(dir, kind, &value)?;
            }
            p.values.push(value);
        }
        let Some(p) = self.pending.take() else {
            return Err(WireError::Bug("no pending request at its end"));
        };
        build_request(p.op, self.client_minor, p.values).map(Some)
    }
}

/// The fields of `op`'s request from a client of minor `minor`, in order.
fn request_schema(op: Op, minor: u8) -> Vec<Kind> {
    use Kind::*;
    match op {
        Op::IsValidPath
        | Op::AddIndirectRoot
        | Op::QuerySubstitutablePathInfo
        | Op::QueryPathFromHashPart => vec![Str],
        Op::HasSubstitutes
        | Op::QueryPathHash
        | Op::QueryReferences
        | Op::QueryReferrers
        | Op::EnsurePath
        | Op::AddTempRoot
        | Op::QueryDeriver
        | Op::QueryDerivationOutputs
        | Op::QueryPathInfo
        | Op::QueryDerivationOutputNames
        | Op::QueryValidDerivers => vec![Path],
        Op::AddToStore => vec![Str, Int, Int, Str],
        Op::AddTextToStore => vec![Str, Str, Paths],
        Op::BuildPaths if minor >= 15 => vec![Paths, Int],
        Op::BuildPaths => vec![Paths],
        Op::ExportPath => vec![Path, Int],
        Op::SetOptions => {
            let mut s = vec![Int, Int, Int, Int];
            if minor < 0x61 {
                s.extend([Int, Int]);
            }
            if minor >= 2 {
                s.push(Int);
            }
            if minor >= 4 {
                s.extend([Int, Int, Int]);
            }
            if (6..0x61).contains(&minor) {
                s.push(Int);
            }
            if minor >= 10 {
                s.push(Int);
            }
            if minor >= 12 {
                s.push(Pairs);
            }
            s
        }
        Op::CollectGarbage if minor >= 5 => vec![Int, Paths, Int, U64, Int, Int, Int],
        Op::CollectGarbage => vec![Int, Paths, Int, U64, Int],
        Op::ClearFailedPaths => vec![Strs],
        Op::QuerySubstitutablePathInfos | Op::QueryValidPaths | Op::QuerySubstitutablePaths => {
            vec![Paths]
        }
        Op::VerifyStore => vec![Int, Int],
        Op::SyncWithGc
        | Op::FindRoots
        | Op::QueryAllValidPaths
        | Op::QueryFailedPaths
        | Op::ImportPaths
        | Op::OptimiseStore
        | Op::BuiltinBuilders
        | Op::SubstituteUrls => vec![],
    }
}

/// Asserts a `Path` or `Paths` field as `readStorePath(s)` does.
fn assert_field(dir: &StoreDir, kind: Kind, value: &Value) -> Result<(), WireError> {
    let is_path = |b: &Vec<u8>| dir.is_store_path(&String::from_utf8_lossy(b));
    match (kind, value) {
        (Kind::Path, Value::Str(s)) if !is_path(s) => {
            Err(StorePathError::NotInStore(lossy_string(s.clone())).into())
        }
        (Kind::Paths, Value::Strs(list)) => match list.iter().filter(|s| !is_path(s)).min() {
            Some(bad) => Err(StorePathError::NotInStore(lossy_string(bad.clone())).into()),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// The typed request from the values of `request_schema(op, minor)`.
fn build_request(op: Op, minor: u8, values: Vec<Value>) -> Result<Request, WireError> {
    let mut f = Fields::new(values);
    Ok(match op {
        Op::IsValidPath => Request::IsValidPath { path: f.string()? },
        Op::HasSubstitutes => Request::HasSubstitutes { path: f.string()? },
        Op::QueryPathHash => Request::QueryPathHash { path: f.string()? },
        Op::QueryReferences => Request::QueryReferences { path: f.string()? },
        Op::QueryReferrers => Request::QueryReferrers { path: f.string()? },
        Op::AddToStore => Request::AddToStore(AddToStoreHeader {
            name: f.string()?,
            fixed: f.is_one()?,
            recursive: f.is_one()?,
            hash_algo: f.string()?,
        }),
        Op::AddTextToStore => Request::AddTextToStore {
            name: f.string()?,
            contents: f.bytes()?,
            references: f.strings()?,
        },
        Op::BuildPaths => Request::BuildPaths {
            things: f.strings()?,
            mode: if minor >= 15 { f.int()? } else { 0 },
        },
        Op::EnsurePath => Request::EnsurePath { path: f.string()? },
        Op::AddTempRoot => Request::AddTempRoot { path: f.string()? },
        Op::AddIndirectRoot => Request::AddIndirectRoot { file: f.string()? },
        Op::SyncWithGc => Request::SyncWithGc,
        Op::FindRoots => Request::FindRoots,
        Op::ExportPath => Request::ExportPath {
            path: f.string()?,
            sign: f.is_one()?,
        },
        Op::QueryDeriver => Request::QueryDeriver { path: f.string()? },
        Op::SetOptions => Request::SetOptions(build_options(&mut f, minor)?),
        Op::CollectGarbage => {
            let gc = GcRequest {
                action: f.int()?,
                paths: f.strings()?,
                ignore_liveness: f.nonzero()?,
                max_freed_bytes: f.u64()?,
            };
            // The obsolete fields are read and ignored, as the daemon does.
            f.int()?;
            if minor >= 5 {
                f.int()?;
                f.int()?;
            }
            Request::CollectGarbage(gc)
        }
        Op::QuerySubstitutablePathInfo => Request::QuerySubstitutablePathInfo { path: f.string()? },
        Op::QueryDerivationOutputs => Request::QueryDerivationOutputs { path: f.string()? },
        Op::QueryAllValidPaths => Request::QueryAllValidPaths,
        Op::QueryFailedPaths => Request::QueryFailedPaths,
        Op::ClearFailedPaths => Request::ClearFailedPaths {
            paths: f.strings()?,
        },
        Op::QueryPathInfo => Request::QueryPathInfo { path: f.string()? },
        Op::ImportPaths => Request::ImportPaths,
        Op::QueryDerivationOutputNames => Request::QueryDerivationOutputNames { path: f.string()? },
        Op::QueryPathFromHashPart => Request::QueryPathFromHashPart {
            hash_part: f.string()?,
        },
        Op::QuerySubstitutablePathInfos => Request::QuerySubstitutablePathInfos {
            paths: f.strings()?,
        },
        Op::QueryValidPaths => Request::QueryValidPaths {
            paths: f.strings()?,
        },
        Op::QuerySubstitutablePaths => Request::QuerySubstitutablePaths {
            paths: f.strings()?,
        },
        Op::QueryValidDerivers => Request::QueryValidDerivers { path: f.string()? },
        Op::OptimiseStore => Request::OptimiseStore,
        Op::VerifyStore => Request::VerifyStore {
            check_contents: f.nonzero()?,
            repair: f.nonzero()?,
        },
        Op::BuiltinBuilders => Request::BuiltinBuilders,
        Op::SubstituteUrls => Request::SubstituteUrls,
    })
}

/// Set-options fields in the daemon's reading order (spec 01 §6.1).
fn build_options(f: &mut Fields, minor: u8) -> Result<ClientOptions, WireError> {
    let mut o = ClientOptions {
        keep_failed: f.nonzero()?,
        keep_going: f.nonzero()?,
        try_fallback: f.nonzero()?,
        verbosity: f.int()?,
        ..ClientOptions::default()
    };
    if minor < 0x61 {
        o.max_build_jobs = Some(f.int()?);
        o.max_silent_time = Some(f.int()?);
    }
    if minor >= 2 {
        o.use_build_hook = Some(f.nonzero()?);
    }
    if minor >= 4 {
        o.build_verbosity = Some(f.int()?);
        o.log_type = Some(f.int()?);
        o.print_build_trace = Some(f.nonzero()?);
    }
    if (6..0x61).contains(&minor) {
        o.build_cores = Some(f.int()?);
    }
    if minor >= 10 {
        o.use_substitutes = Some(f.nonzero()?);
    }
    if minor >= 12 {
        o.overrides = f.pairs()?;
    }
    Ok(o)
}

/// Set-options fields as a client of minor `minor` writes them; a field
/// the minor carries but the options leave unset is written as 0.
fn encode_options(o: &ClientOptions, minor: u8, out: &mut Vec<u8>) {
    write_bool(out, o.keep_failed);
    write_bool(out, o.keep_going);
    write_bool(out, o.try_fallback);
    write_int(out, o.verbosity);
    if minor < 0x61 {
        write_int(out, o.max_build_jobs.unwrap_or(0));
        write_int(out, o.max_silent_time.unwrap_or(0));
    }
    if minor >= 2 {
        write_bool(out, o.use_build_hook.unwrap_or(false));
    }
    if minor >= 4 {
        write_int(out, o.build_verbosity.unwrap_or(0));
        write_int(out, o.log_type.unwrap_or(0));
        write_bool(out, o.print_build_trace.unwrap_or(false));
    }
    if (6..0x61).contains(&minor) {
        write_int(out, o.build_cores.unwrap_or(0));
    }
    if minor >= 10 {
        write_bool(out, o.use_substitutes.unwrap_or(false));
    }
    if minor >= 12 {
        write_pairs(out, o.overrides.iter().map(|(k, v)| (k, v)));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testgen::{ArbRequests, Chunks, request_for};
    use super::*;
    use crate::wire::PROTOCOL_VERSION;
    use quickcheck::{Arbitrary, Gen};

    const MINOR: u8 = PROTOCOL_VERSION as u8;

    /// Decodes `bytes` fed in pieces of the given sizes (cycled), collecting
    /// every request until the input runs out or an error occurs.
    fn decode_chunked(
        bytes: &[u8],
        sizes: &[usize],
        minor: u8,
        limits: &WireLimits,
    ) -> (Vec<Request>, Option<WireError>) {
        let mut dec = RequestDecoder::new(minor, limits.clone());
        let mut got = Vec::new();
        let mut pos: usize = 0;
        let mut i = 0;
        while pos < bytes.len() {
            let size = sizes
                .get(i % sizes.len().max(1))
                .copied()
                .unwrap_or(1)
                .max(1);
            i += 1;
            let mut chunk = &bytes[pos..pos.saturating_add(size).min(bytes.len())];
            pos += chunk.len();
            while !chunk.is_empty() {
                match dec.feed(chunk) {
                    Ok(f) => {
                        assert!(f.consumed <= chunk.len());
                        chunk = &chunk[f.consumed..];
                        match f.item {
                            Some(r) => got.push(r),
                            None => assert!(chunk.is_empty(), "stopped early without a value"),
                        }
                    }
                    Err(e) => return (got, Some(e)),
                }
            }
        }
        (got, None)
    }

    fn encode_all(reqs: &[Request], minor: u8) -> Vec<u8> {
        let mut out = Vec::new();
        for r in reqs {
            encode_request(r, minor, &mut out);
        }
        out
    }

    #[test]
    fn every_request_round_trips_at_every_minor() {
        fn prop(reqs: ArbRequests) -> bool {
            let bytes = encode_all(&reqs.requests, reqs.minor);
            let (got, err) =
                decode_chunked(&bytes, &[usize::MAX], reqs.minor, &WireLimits::default());
            err.is_none() && got == reqs.requests
        }
        guixd_testkit::check(prop as fn(ArbRequests) -> bool);
    }

    #[test]
    fn each_op_round_trips_at_each_interesting_minor() {
        let mut g = Gen::new(8);
        for minor in [
            0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12, 14, 15, 0x60, 0x61, MINOR, 0xff,
        ] {
            for op in Op::ALL {
                for _ in 0..4 {
                    let req = request_for(op, minor, &mut g);
                    let bytes = encode_all(std::slice::from_ref(&req), minor);
                    let (got, err) = decode_chunked(&bytes, &[3], minor, &WireLimits::default());
                    assert_eq!(err, None, "{op:?} at minor {minor}");
                    assert_eq!(got, vec![req], "{op:?} at minor {minor}");
                }
            }
        }
    }

    #[test]
    fn any_chunking_gives_the_same_requests() {
        fn prop(reqs: ArbRequests, chunks: Chunks) -> bool {
            let bytes = encode_all(&reqs.requests, reqs.minor);
            let limits = WireLimits::default();
            let whole = decode_chunked(&bytes, &[usize::MAX], reqs.minor, &limits);
            let split = decode_chunked(&bytes, &chunks.0, reqs.minor, &limits);
            whole == split
        }
        guixd_testkit::check(prop as fn(ArbRequests, Chunks) -> bool);
    }

    #[test]
    fn one_byte_chunks_give_the_same_requests() {
        let mut g = Gen::new(10);
        for _ in 0..20 {
            let reqs = ArbRequests::arbitrary(&mut g);
            let bytes = encode_all(&reqs.requests, reqs.minor);
            let limits = WireLimits::default();
            let whole = decode_chunked(&bytes, &[usize::MAX], reqs.minor, &limits);
            assert_eq!(decode_chunked(&bytes, &[1], reqs.minor, &limits), whole);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_chunking_does_not_matter() {
        fn prop(op: u8, bytes: Vec<u8>, chunks: Chunks, minor: u8) -> bool {
            // Start with a real op word most of the time, so the fields are
            // exercised rather than just `invalid operation`.
            let mut input = Vec::new();
            write_int(&mut input, Op::ALL[usize::from(op) % Op::ALL.len()].code());
            input.extend_from_slice(&bytes);
            let limits = WireLimits {
                max_string_len_bytes: 64,
                max_list_count: 8,
                max_pairs_count: 4,
                max_message_bytes: 256,
            };
            let whole = decode_chunked(&input, &[usize::MAX], minor, &limits);
            let split = decode_chunked(&input, &chunks.0, minor, &limits);
            let raw_whole = decode_chunked(&bytes, &[usize::MAX], minor, &limits);
            let raw_split = decode_chunked(&bytes, &chunks.0, minor, &limits);
            whole == split && raw_whole == raw_split
        }
        guixd_testkit::check(prop as fn(u8, Vec<u8>, Chunks, u8) -> bool);
    }

    #[test]
    fn the_add_text_to_store_transcript_decodes() {
        // Spec 01 §7: add-text-to-store "hello" "world" ().
        let mut bytes = vec![8, 0, 0, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(b"\x05\0\0\0\0\0\0\0hello\0\0\0");
        bytes.extend_from_slice(b"\x05\0\0\0\0\0\0\0world\0\0\0");
        bytes.extend_from_slice(&[0; 8]);
        let want = Request::AddTextToStore {
            name: "hello".into(),
            contents: b"world".to_vec(),
            references: vec![],
        };
        assert_eq!(encode_all(std::slice::from_ref(&want), MINOR), bytes);
        let (got, err) = decode_chunked(&bytes, &[1], MINOR, &WireLimits::default());
        assert_eq!((got, err), (vec![want], None));
    }

    #[test]
    fn add_to_store_stops_before_the_nar() {
        let header = AddToStoreHeader {
            name: "x".into(),
            fixed: true,
            recursive: true,
            hash_algo: "sha256".into(),
        };
        let mut bytes = Vec::new();
        encode_request(&Request::AddToStore(header.clone()), MINOR, &mut bytes);
        let header_len = bytes.len();
        write_str(&mut bytes, "nix-archive-1");
        let mut dec = RequestDecoder::new(MINOR, WireLimits::default());
        let f = dec.feed(&bytes).unwrap();
        assert_eq!(f.consumed, header_len);
        assert_eq!(f.item, Some(Request::AddToStore(header)));
        assert!(dec.is_idle());
    }

    #[test]
    fn add_to_store_compatibility_rule() {
        let mut h = AddToStoreHeader {
            name: "x".into(),
            fixed: true,
            recursive: false,
            hash_algo: "md5".into(),
        };
        assert_eq!(h.method(), (false, "md5"));
        h.fixed = false;
        assert_eq!(h.method(), (true, "sha256"));
    }

    #[test]
    fn booleans_use_the_daemons_tests() {
        // `sign` is `== 1`, `repair` is `!= 0`.
        let mut bytes = Vec::new();
        write_int(&mut bytes, Op::ExportPath.code());
        write_str(&mut bytes, "/gnu/store/x");
        write_int(&mut bytes, 2);
        write_int(&mut bytes, Op::VerifyStore.code());
        write_int(&mut bytes, 2);
        write_int(&mut bytes, 0);
        let (got, _) = decode_chunked(&bytes, &[usize::MAX], MINOR, &WireLimits::default());
        assert_eq!(
            got,
            vec![
                Request::ExportPath {
                    path: "/gnu/store/x".into(),
                    sign: false
                },
                Request::VerifyStore {
                    check_contents: true,
                    repair: false
                }
            ]
        );
    }

    #[test]
    fn bad_op_words_are_refused() {
        let mut dec = RequestDecoder::new(MINOR, WireLimits::default());
        let e = dec.feed(&[0, 0, 0, 0, 0, 1, 0, 0]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "implementation cannot deal with > 32-bit integers"
        );
        assert_eq!(dec.pending_op(), None);
        // The decoder stays failed.
        assert_eq!(dec.feed(&[]).unwrap_err(), e);
        for n in [0, 2, 15, 17, 36, 79, 82] {
            let mut dec = RequestDecoder::new(MINOR, WireLimits::default());
            let mut bytes = Vec::new();
            write_int(&mut bytes, n);
            let e = dec.feed(&bytes).unwrap_err();
            assert_eq!(e.to_string(), format!("invalid operation {n}"));
        }
    }

    #[test]
    fn a_high_int_inside_a_request_is_refused_with_the_op_known() {
        let mut bytes = Vec::new();
        write_int(&mut bytes, Op::VerifyStore.code());
        write_u64(&mut bytes, 1 << 32);
        let mut dec = RequestDecoder::new(MINOR, WireLimits::default());
        assert_eq!(dec.feed(&bytes), Err(WireError::IntTooLarge));
        assert_eq!(dec.pending_op(), Some(Op::VerifyStore));
    }

    #[test]
    fn non_zero_padding_in_a_request_is_refused() {
        let mut bytes = Vec::new();
        write_int(&mut bytes, Op::IsValidPath.code());
        write_str(&mut bytes, "/gnu/store/x");
        *bytes.last_mut().unwrap() = 7;
        let (_, err) = decode_chunked(&bytes, &[5], MINOR, &WireLimits::default());
        assert_eq!(err.unwrap().to_string(), "non-zero padding");
    }

    #[test]
    fn the_message_limit_counts_the_whole_request() {
        let req = Request::QueryValidPaths {
            paths: vec!["/gnu/store/a".into(), "/gnu/store/b".into()],
        };
        let bytes = encode_all(std::slice::from_ref(&req), MINOR);
        let fits = WireLimits {
            max_message_bytes: bytes.len() as u64,
            ..WireLimits::default()
        };
        // The budget is per request: two in a row both fit.
        let twice = [bytes.clone(), bytes.clone()].concat();
        for sizes in [[usize::MAX], [1], [7]] {
            let (got, err) = decode_chunked(&twice, &sizes, MINOR, &fits);
            assert_eq!((got.len(), err), (2, None));
        }
        let tight = WireLimits {
            max_message_bytes: bytes.len() as u64 - 1,
            ..WireLimits::default()
        };
        for sizes in [[usize::MAX], [1], [7]] {
            let (got, err) = decode_chunked(&bytes, &sizes, MINOR, &tight);
            assert!(got.is_empty());
            assert_eq!(
                err,
                Some(WireError::MessageTooLarge {
                    max: bytes.len() as u64 - 1
                })
            );
        }
    }

    #[test]
    fn list_and_string_limits_apply_to_requests() {
        let limits = WireLimits {
            max_string_len_bytes: 3,
            max_list_count: 1,
            ..WireLimits::default()
        };
        let mut bytes = Vec::new();
        encode_request(
            &Request::QueryValidPaths {
                paths: vec!["a".into(), "b".into()],
            },
            MINOR,
            &mut bytes,
        );
        let (_, err) = decode_chunked(&bytes, &[1], MINOR, &limits);
        assert_eq!(err, Some(WireError::ListTooLong { count: 2, max: 1 }));
        let mut bytes = Vec::new();
        encode_request(
            &Request::QueryPathInfo {
                path: "abcd".into(),
            },
            MINOR,
            &mut bytes,
        );
        let (_, err) = decode_chunked(&bytes, &[1], MINOR, &limits);
        assert_eq!(err, Some(WireError::StringTooLong { len: 4, max: 3 }));
    }

    #[test]
    fn store_paths_are_asserted_in_the_daemons_order() {
        let dir = StoreDir::new("/gnu/store").unwrap();
        let assert_in = |req: &Request| {
            let mut bytes = Vec::new();
            encode_request(req, MINOR, &mut bytes);
            let mut dec =
                RequestDecoder::new(MINOR, WireLimits::default()).assert_store_paths(dir.clone());
            let from_decoder = dec.feed(&bytes).map(|f| f.item);
            let from_request = req.assert_store_paths(&dir);
            (from_decoder, from_request)
        };
        // Op 1 is asserted by the session, after work starts.
        let ok = Request::IsValidPath {
            path: "/etc/passwd".into(),
        };
        assert_eq!(assert_in(&ok), (Ok(Some(ok.clone())), Ok(())));
        let bad = Request::QueryPathInfo {
            path: "/etc/passwd".into(),
        };
        let (d, r) = assert_in(&bad);
        assert_eq!(
            d.unwrap_err().to_string(),
            "path `/etc/passwd' is not in the store"
        );
        assert_eq!(
            r.unwrap_err().to_string(),
            "path `/etc/passwd' is not in the store"
        );
        // A list reports its smallest bad member, as the daemon's set does.
        let bad = Request::AddTextToStore {
            name: "x".into(),
            contents: vec![],
            references: vec!["/z".into(), "/gnu/store/ok".into(), "/b".into()],
        };
        let (d, r) = assert_in(&bad);
        assert_eq!(d.unwrap_err().to_string(), "path `/b' is not in the store");
        assert_eq!(r.unwrap_err().to_string(), "path `/b' is not in the store");
        // Derivation outputs in build-paths are store paths syntactically.
        let ok = Request::BuildPaths {
            things: vec!["/gnu/store/x.drv!out".into()],
            mode: 0,
        };
        assert_eq!(assert_in(&ok), (Ok(Some(ok.clone())), Ok(())));
        // Not asserted: indirect roots, failed-path lists, hash parts.
        for ok in [
            Request::AddIndirectRoot { file: "rel".into() },
            Request::ClearFailedPaths {
                paths: vec!["*".into()],
            },
            Request::QueryPathFromHashPart {
                hash_part: "x".into(),
            },
        ] {
            assert_eq!(assert_in(&ok), (Ok(Some(ok.clone())), Ok(())));
        }
    }

    #[test]
    fn a_path_is_asserted_before_later_fields_are_read() {
        let dir = StoreDir::new("/gnu/store").unwrap();
        let mut bytes = Vec::new();
        write_int(&mut bytes, Op::ExportPath.code());
        write_str(&mut bytes, "/tmp/x");
        // The sign field never arrives; the error does not wait for it.
        let mut dec = RequestDecoder::new(MINOR, WireLimits::default()).assert_store_paths(dir);
        assert_eq!(
            dec.feed(&bytes).unwrap_err().to_string(),
            "path `/tmp/x' is not in the store"
        );
    }

    #[test]
    fn idleness_tracks_request_boundaries() {
        let mut dec = RequestDecoder::new(MINOR, WireLimits::default());
        assert!(dec.is_idle());
        let mut bytes = Vec::new();
        encode_request(&Request::QueryAllValidPaths, MINOR, &mut bytes);
        assert_eq!(dec.feed(&bytes[..3]).unwrap().item, None);
        assert!(!dec.is_idle());
        assert_eq!(
            dec.feed(&bytes[3..]).unwrap().item,
            Some(Request::QueryAllValidPaths)
        );
        assert!(dec.is_idle());
    }

    #[test]
    fn set_options_as_guix_1_5_0_sends_it() {
        let o = ClientOptions {
            verbosity: 1,
            use_build_hook: Some(true),
            build_verbosity: Some(0),
            log_type: Some(0),
            print_build_trace: Some(true),
            use_substitutes: Some(true),
            overrides: vec![
                ("print-extended-build-trace".into(), "1".into()),
                ("user-name".into(), "alice".into()),
            ],
            ..ClientOptions::default()
        };
        let mut bytes = Vec::new();
        encode_request(&Request::SetOptions(o.clone()), MINOR, &mut bytes);
        // op, 4 ints, hook, 3 ints, substitutes, pair count: 10 words, then pairs.
        assert_eq!(u32::from_le_bytes(bytes[..4].try_into().unwrap()), 19);
        assert_eq!(&bytes[80..88], &[2, 0, 0, 0, 0, 0, 0, 0]);
        let (got, err) = decode_chunked(&bytes, &[1], MINOR, &WireLimits::default());
        assert_eq!((got, err), (vec![Request::SetOptions(o)], None));
    }
}

//! Test-only generators for the wire codec's properties: requests and
//! replies of every operation, consistent with a client minor version,
//! stderr frames, and chunk sizes to split inputs with.
//!
//! What this file keeps true: a generated value is one the encoder can
//! represent for its minor (fields a minor does not carry are absent), so
//! "decode(encode(x)) == x" is the exact property to check.

use super::{
    AddToStoreHeader, ClientOptions, GcRequest, GcResult, Op, PathInfo, Reply, Request,
    StderrFrame, SubstitutableInfo,
};
use quickcheck::{Arbitrary, Gen};

/// Minor versions where some field appears or disappears, plus 1.5.0's.
const MINORS: [u8; 18] = [
    0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12, 14, 15, 0x60, 0x61, 0x63, 0x64, 0xff,
];

/// A few requests from one client.
#[derive(Clone, Debug)]
pub(crate) struct ArbRequests {
    pub minor: u8,
    pub requests: Vec<Request>,
}

impl Arbitrary for ArbRequests {
    fn arbitrary(g: &mut Gen) -> Self {
        let minor = any_minor(g);
        let n = usize::arbitrary(g) % 6;
        let requests = (0..n)
            .map(|_| {
                let op = *g.choose(&Op::ALL).unwrap_or(&Op::IsValidPath);
                request_for(op, minor, g)
            })
            .collect();
        ArbRequests { minor, requests }
    }
}

/// One reply, normalised-or-not, with the minor it is sent to.
#[derive(Clone, Debug)]
pub(crate) struct ArbReply {
    pub minor: u8,
    pub reply: Reply,
}

impl Arbitrary for ArbReply {
    fn arbitrary(g: &mut Gen) -> Self {
        let minor = any_minor(g);
        let op = *g.choose(&Op::ALL).unwrap_or(&Op::IsValidPath);
        ArbReply {
            minor,
            reply: reply_for(op, minor, g),
        }
    }
}

/// A sequence of stderr frames that round-trips for a daemon of minor
/// 0x64 (errors carry a non-zero status).
#[derive(Clone, Debug)]
pub(crate) struct ArbFrames(pub Vec<StderrFrame>);

impl Arbitrary for ArbFrames {
    fn arbitrary(g: &mut Gen) -> Self {
        let n = usize::arbitrary(g) % 8;
        ArbFrames(
            (0..n)
                .map(|_| match u8::arbitrary(g) % 5 {
                    0 => StderrFrame::Next(Vec::arbitrary(g)),
                    1 => StderrFrame::Read(u32::arbitrary(g)),
                    2 => StderrFrame::Write(Vec::arbitrary(g)),
                    3 => StderrFrame::Last,
                    _ => StderrFrame::Error {
                        message: String::arbitrary(g),
                        status: u32::arbitrary(g).max(1),
                    },
                })
                .collect(),
        )
    }
}

/// Chunk sizes to split an input with (cycled), mostly small.
#[derive(Clone, Debug)]
pub(crate) struct Chunks(pub Vec<usize>);

impl Arbitrary for Chunks {
    fn arbitrary(g: &mut Gen) -> Self {
        let n = 1 + usize::arbitrary(g) % 8;
        Chunks(
            (0..n)
                .map(|_| match u8::arbitrary(g) % 4 {
                    0 => 1,
                    1 => 1 + usize::arbitrary(g) % 8,
                    2 => 1 + usize::arbitrary(g) % 64,
                    _ => 1 + usize::arbitrary(g) % 4096,
                })
                .collect(),
        )
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        // Sizes of 0 become 1, which can turn a candidate back into this
        // very value; skipping those keeps shrinking finite.
        let this = self.0.clone();
        Box::new(
            self.0
                .shrink()
                .map(|v| v.into_iter().map(|n| n.max(1)).collect::<Vec<_>>())
                .filter(move |v| !v.is_empty() && *v != this)
                .map(Chunks),
        )
    }
}

fn any_minor(g: &mut Gen) -> u8 {
    if bool::arbitrary(g) {
        *g.choose(&MINORS).unwrap_or(&0x64)
    } else {
        u8::arbitrary(g)
    }
}

fn s(g: &mut Gen) -> String {
    String::arbitrary(g)
}

fn strs(g: &mut Gen) -> Vec<String> {
    Vec::arbitrary(g)
}

/// A request for `op` as a client of minor `minor` can send it.
pub(crate) fn request_for(op: Op, minor: u8, g: &mut Gen) -> Request {
    match op {
        Op::IsValidPath => Request::IsValidPath { path: s(g) },
        Op::HasSubstitutes => Request::HasSubstitutes { path: s(g) },
        Op::QueryPathHash => Request::QueryPathHash { path: s(g) },
        Op::QueryReferences => Request::QueryReferences { path: s(g) },
        Op::QueryReferrers => Request::QueryReferrers { path: s(g) },
        Op::AddToStore => Request::AddToStore(AddToStoreHeader {
            name: s(g),
            fixed: bool::arbitrary(g),
            recursive: bool::arbitrary(g),
            hash_algo: s(g),
        }),
        Op::AddTextToStore => Request::AddTextToStore {
            name: s(g),
            contents: Vec::arbitrary(g),
            references: strs(g),
        },
        Op::BuildPaths => Request::BuildPaths {
            things: strs(g),
            mode: if minor >= 15 { u32::arbitrary(g) } else { 0 },
        },
        Op::EnsurePath => Request::EnsurePath { path: s(g) },
        Op::AddTempRoot => Request::AddTempRoot { path: s(g) },
        Op::AddIndirectRoot => Request::AddIndirectRoot { file: s(g) },
        Op::SyncWithGc => Request::SyncWithGc,
        Op::FindRoots => Request::FindRoots,
        Op::ExportPath => Request::ExportPath {
            path: s(g),
            sign: bool::arbitrary(g),
        },
        Op::QueryDeriver => Request::QueryDeriver { path: s(g) },
        Op::SetOptions => Request::SetOptions(options_for(minor, g)),
        Op::CollectGarbage => Request::CollectGarbage(GcRequest {
            action: u32::arbitrary(g),
            paths: strs(g),
            ignore_liveness: bool::arbitrary(g),
            max_freed_bytes: u64::arbitrary(g),
        }),
        Op::QuerySubstitutablePathInfo => Request::QuerySubstitutablePathInfo { path: s(g) },
        Op::QueryDerivationOutputs => Request::QueryDerivationOutputs { path: s(g) },
        Op::QueryAllValidPaths => Request::QueryAllValidPaths,
        Op::QueryFailedPaths => Request::QueryFailedPaths,
        Op::ClearFailedPaths => Request::ClearFailedPaths { paths: strs(g) },
        Op::QueryPathInfo => Request::QueryPathInfo { path: s(g) },
        Op::ImportPaths => Request::ImportPaths,
        Op::QueryDerivationOutputNames => Request::QueryDerivationOutputNames { path: s(g) },
        Op::QueryPathFromHashPart => Request::QueryPathFromHashPart { hash_part: s(g) },
        Op::QuerySubstitutablePathInfos => Request::QuerySubstitutablePathInfos { paths: strs(g) },
        Op::QueryValidPaths => Request::QueryValidPaths { paths: strs(g) },
        Op::QuerySubstitutablePaths => Request::QuerySubstitutablePaths { paths: strs(g) },
        Op::QueryValidDerivers => Request::QueryValidDerivers { path: s(g) },
        Op::OptimiseStore => Request::OptimiseStore,
        Op::VerifyStore => Request::VerifyStore {
            check_contents: bool::arbitrary(g),
            repair: bool::arbitrary(g),
        },
        Op::BuiltinBuilders => Request::BuiltinBuilders,
        Op::SubstituteUrls => Request::SubstituteUrls,
    }
}

fn options_for(minor: u8, g: &mut Gen) -> ClientOptions {
    let when = |cond: bool, g: &mut Gen| cond.then(|| u32::arbitrary(g));
    let flag = |cond: bool, g: &mut Gen| cond.then(|| bool::arbitrary(g));
    ClientOptions {
        keep_failed: bool::arbitrary(g),
        keep_going: bool::arbitrary(g),
        try_fallback: bool::arbitrary(g),
        verbosity: u32::arbitrary(g),
        max_build_jobs: when(minor < 0x61, g),
        max_silent_time: when(minor < 0x61, g),
        use_build_hook: flag(minor >= 2, g),
        build_verbosity: when(minor >= 4, g),
        log_type: when(minor >= 4, g),
        print_build_trace: flag(minor >= 4, g),
        build_cores: when((6..0x61).contains(&minor), g),
        use_substitutes: flag(minor >= 10, g),
        overrides: if minor >= 12 {
            Vec::arbitrary(g)
        } else {
            vec![]
        },
    }
}

fn info(minor_has_nar_size: bool, g: &mut Gen) -> SubstitutableInfo {
    SubstitutableInfo {
        deriver: s(g),
        references: strs(g),
        download_size: u64::arbitrary(g),
        nar_size: if minor_has_nar_size {
            u64::arbitrary(g)
        } else {
            0
        },
    }
}

/// A reply to `op` as the daemon can send it to a client of minor `minor`
/// (not necessarily normalised: the encoder sorts sets itself).
pub(crate) fn reply_for(op: Op, minor: u8, g: &mut Gen) -> Reply {
    match op {
        Op::IsValidPath => Reply::IsValidPath(bool::arbitrary(g)),
        Op::HasSubstitutes => Reply::HasSubstitutes(bool::arbitrary(g)),
        Op::QueryPathHash => Reply::QueryPathHash(s(g)),
        Op::QueryReferences => Reply::QueryReferences(strs(g)),
        Op::QueryReferrers => Reply::QueryReferrers(strs(g)),
        Op::AddToStore => Reply::AddToStore(s(g)),
        Op::AddTextToStore => Reply::AddTextToStore(s(g)),
        Op::BuildPaths => Reply::BuildPaths,
        Op::EnsurePath => Reply::EnsurePath,
        Op::AddTempRoot => Reply::AddTempRoot,
        Op::AddIndirectRoot => Reply::AddIndirectRoot,
        Op::SyncWithGc => Reply::SyncWithGc,
        Op::FindRoots => Reply::FindRoots(Vec::arbitrary(g)),
        Op::ExportPath => Reply::ExportPath,
        Op::QueryDeriver => Reply::QueryDeriver(s(g)),
        Op::SetOptions => Reply::SetOptions,
        Op::CollectGarbage => Reply::CollectGarbage(GcResult {
            paths: strs(g),
            bytes_freed: u64::arbitrary(g),
        }),
        Op::QuerySubstitutablePathInfo => {
            Reply::QuerySubstitutablePathInfo(bool::arbitrary(g).then(|| info(minor >= 7, g)))
        }
        Op::QueryDerivationOutputs => Reply::QueryDerivationOutputs(strs(g)),
        Op::QueryAllValidPaths => Reply::QueryAllValidPaths(strs(g)),
        Op::QueryFailedPaths => Reply::QueryFailedPaths(strs(g)),
        Op::ClearFailedPaths => Reply::ClearFailedPaths,
        Op::QueryPathInfo => Reply::QueryPathInfo(PathInfo {
            deriver: s(g),
            hash: s(g),
            references: strs(g),
            registration_time: u32::arbitrary(g),
            nar_size: u64::arbitrary(g),
        }),
        Op::ImportPaths => Reply::ImportPaths(strs(g)),
        Op::QueryDerivationOutputNames => Reply::QueryDerivationOutputNames(strs(g)),
        Op::QueryPathFromHashPart => Reply::QueryPathFromHashPart(s(g)),
        Op::QuerySubstitutablePathInfos => {
            let n = usize::arbitrary(g) % 4;
            Reply::QuerySubstitutablePathInfos((0..n).map(|_| (s(g), info(true, g))).collect())
        }
        Op::QueryValidPaths => Reply::QueryValidPaths(strs(g)),
        Op::QuerySubstitutablePaths => Reply::QuerySubstitutablePaths(strs(g)),
        Op::QueryValidDerivers => Reply::QueryValidDerivers(strs(g)),
        Op::OptimiseStore => Reply::OptimiseStore,
        Op::VerifyStore => Reply::VerifyStore(bool::arbitrary(g)),
        Op::BuiltinBuilders => Reply::BuiltinBuilders(strs(g)),
        Op::SubstituteUrls => Reply::SubstituteUrls(strs(g)),
    }
}

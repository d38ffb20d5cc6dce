//! The worker protocol's codec, protocol 0x164 (spec 01), in both
//! directions.
//!
//! The daemon side decodes the client's hello and requests and encodes the
//! server hello, stderr frames and replies; the client side (our tests and
//! load clients) does the opposite. Every decoder here is push-based: feed
//! any chunk, get back how many bytes were consumed and, when one is
//! complete, a value. What this module keeps true:
//!
//! - Any split of the same bytes gives the same values and the same error,
//!   and decoding costs O(n) in the input however it is chunked: partial
//!   state is kept per primitive, nothing is parsed twice.
//! - A decoder stops right after the value it yields and never consumes a
//!   byte of what follows (add-to-store's NAR, the next request).
//! - Everything read is bounded by [`WireLimits`]; memory grows with the
//!   bytes actually received, never with a length or count announced on
//!   the wire.
//! - No input makes anything here panic: arbitrary bytes give a
//!   [`WireError`], whose texts are the C++ daemon's where it has one.
//! - Requests keep paths as the raw strings the client sent: whether a
//!   field must be a store path, and what failing that means, is the
//!   session's decision (spec 01 §4.1); [`RequestDecoder::assert_store_paths`]
//!   and [`Request::assert_store_paths`] are the helpers for it.

mod handshake;
pub(crate) mod prim;
mod reply;
mod request;
mod stderr;
#[cfg(test)]
mod testgen;

pub use handshake::{
    ClientHello, HelloDecoder, HelloEvent, ServerHelloDecoder, encode_client_hello,
    encode_server_hello, write_client_magic,
};
pub use prim::{
    BytesDecoder, padding_len, write_bool, write_bytes, write_int, write_pairs, write_str,
    write_strings, write_u64,
};
pub use reply::{GcResult, PathInfo, Reply, ReplyDecoder, SubstitutableInfo, encode_reply};
pub use request::{
    AddToStoreHeader, ClientOptions, GcRequest, Request, RequestDecoder, encode_request,
};
pub use stderr::{
    Response, ResponseDecoder, StderrDecoder, StderrFrame, encode_stderr, write_stderr_error,
    write_stderr_last, write_stderr_next, write_stderr_read, write_stderr_write,
};

use crate::store_path::StorePathError;

/// The client's greeting, `"nixc"`.
pub const WORKER_MAGIC_1: u32 = 0x6e69_7863;
/// The daemon's answer, `"dxio"`.
pub const WORKER_MAGIC_2: u32 = 0x6478_696f;
/// The protocol version guixd speaks and announces, as Guix 1.5.0.
pub const PROTOCOL_VERSION: u32 = 0x164;
/// The marker between an exported item's NAR and its trailer, `"NIXE"`.
pub const EXPORT_MAGIC: u32 = 0x4558_494e;

/// A log message (`STDERR_NEXT`, "olmg").
pub const STDERR_NEXT: u32 = 0x6f6c_6d67;
/// The daemon asks the client for data (`STDERR_READ`, "data").
pub const STDERR_READ: u32 = 0x6461_7461;
/// Data for the client's sink (`STDERR_WRITE`, "dat\x16").
pub const STDERR_WRITE: u32 = 0x6461_7416;
/// The operation succeeded; its result follows (`STDERR_LAST`, "alts").
pub const STDERR_LAST: u32 = 0x616c_7473;
/// The operation failed (`STDERR_ERROR`, "cxtp").
pub const STDERR_ERROR: u32 = 0x6378_7470;

/// How many bytes the C++ daemon asks for in each `STDERR_READ`.
pub const STDERR_READ_CHUNK_BYTES: u32 = 32 * 1024;

/// The major part of a protocol version (`GET_PROTOCOL_MAJOR`).
pub const fn protocol_major(version: u32) -> u32 {
    version & 0xff00
}

/// The minor part of a protocol version (`GET_PROTOCOL_MINOR`), which
/// decides which optional fields a peer sends (spec 01 §9).
pub const fn protocol_minor(version: u32) -> u8 {
    (version & 0x00ff) as u8
}

/// A worker operation of protocol 0x164 (spec 01 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum Op {
    IsValidPath = 1,
    HasSubstitutes = 3,
    QueryPathHash = 4,
    QueryReferences = 5,
    QueryReferrers = 6,
    AddToStore = 7,
    AddTextToStore = 8,
    BuildPaths = 9,
    EnsurePath = 10,
    AddTempRoot = 11,
    AddIndirectRoot = 12,
    SyncWithGc = 13,
    FindRoots = 14,
    ExportPath = 16,
    QueryDeriver = 18,
    SetOptions = 19,
    CollectGarbage = 20,
    QuerySubstitutablePathInfo = 21,
    QueryDerivationOutputs = 22,
    QueryAllValidPaths = 23,
    QueryFailedPaths = 24,
    ClearFailedPaths = 25,
    QueryPathInfo = 26,
    ImportPaths = 27,
    QueryDerivationOutputNames = 28,
    QueryPathFromHashPart = 29,
    QuerySubstitutablePathInfos = 30,
    QueryValidPaths = 31,
    QuerySubstitutablePaths = 32,
    QueryValidDerivers = 33,
    OptimiseStore = 34,
    VerifyStore = 35,
    BuiltinBuilders = 80,
    SubstituteUrls = 81,
}

impl Op {
    /// Every operation, in numeric order.
    pub const ALL: [Op; 34] = [
        Op::IsValidPath,
        Op::HasSubstitutes,
        Op::QueryPathHash,
        Op::QueryReferences,
        Op::QueryReferrers,
        Op::AddToStore,
        Op::AddTextToStore,
        Op::BuildPaths,
        Op::EnsurePath,
        Op::AddTempRoot,
        Op::AddIndirectRoot,
        Op::SyncWithGc,
        Op::FindRoots,
        Op::ExportPath,
        Op::QueryDeriver,
        Op::SetOptions,
        Op::CollectGarbage,
        Op::QuerySubstitutablePathInfo,
        Op::QueryDerivationOutputs,
        Op::QueryAllValidPaths,
        Op::QueryFailedPaths,
        Op::ClearFailedPaths,
        Op::QueryPathInfo,
        Op::ImportPaths,
        Op::QueryDerivationOutputNames,
        Op::QueryPathFromHashPart,
        Op::QuerySubstitutablePathInfos,
        Op::QueryValidPaths,
        Op::QuerySubstitutablePaths,
        Op::QueryValidDerivers,
        Op::OptimiseStore,
        Op::VerifyStore,
        Op::BuiltinBuilders,
        Op::SubstituteUrls,
    ];

    /// The operation with wire number `n`, if there is one. Op 0 ("quit")
    /// is not one: the C++ daemon answers it with `invalid operation 0`.
    pub fn from_u32(n: u32) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.code() == n)
    }

    /// The operation's number on the wire.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The C++ daemon's name for the operation, without its `wop` prefix.
    pub const fn name(self) -> &'static str {
        match self {
            Op::IsValidPath => "IsValidPath",
            Op::HasSubstitutes => "HasSubstitutes",
            Op::QueryPathHash => "QueryPathHash",
            Op::QueryReferences => "QueryReferences",
            Op::QueryReferrers => "QueryReferrers",
            Op::AddToStore => "AddToStore",
            Op::AddTextToStore => "AddTextToStore",
            Op::BuildPaths => "BuildPaths",
            Op::EnsurePath => "EnsurePath",
            Op::AddTempRoot => "AddTempRoot",
            Op::AddIndirectRoot => "AddIndirectRoot",
            Op::SyncWithGc => "SyncWithGC",
            Op::FindRoots => "FindRoots",
            Op::ExportPath => "ExportPath",
            Op::QueryDeriver => "QueryDeriver",
            Op::SetOptions => "SetOptions",
            Op::CollectGarbage => "CollectGarbage",
            Op::QuerySubstitutablePathInfo => "QuerySubstitutablePathInfo",
            Op::QueryDerivationOutputs => "QueryDerivationOutputs",
            Op::QueryAllValidPaths => "QueryAllValidPaths",
            Op::QueryFailedPaths => "QueryFailedPaths",
            Op::ClearFailedPaths => "ClearFailedPaths",
            Op::QueryPathInfo => "QueryPathInfo",
            Op::ImportPaths => "ImportPaths",
            Op::QueryDerivationOutputNames => "QueryDerivationOutputNames",
            Op::QueryPathFromHashPart => "QueryPathFromHashPart",
            Op::QuerySubstitutablePathInfos => "QuerySubstitutablePathInfos",
            Op::QueryValidPaths => "QueryValidPaths",
            Op::QuerySubstitutablePaths => "QuerySubstitutablePaths",
            Op::QueryValidDerivers => "QueryValidDerivers",
            Op::OptimiseStore => "OptimiseStore",
            Op::VerifyStore => "VerifyStore",
            Op::BuiltinBuilders => "BuiltinBuilders",
            Op::SubstituteUrls => "SubstituteURLs",
        }
    }
}

/// Bounds on what one decoder accepts. The defaults are generous enough for
/// every real Guix client (64 MiB add-text-to-store contents, a million
/// paths in one query) and still keep a hostile peer from growing a
/// session's memory without bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireLimits {
    /// Longest string (path, name, contents, log chunk) accepted.
    pub max_string_len_bytes: u64,
    /// Most strings in one list (path lists, string sets).
    pub max_list_count: u64,
    /// Most pairs in one pair list (set-options overrides).
    pub max_pairs_count: u64,
    /// Largest single message: one request (without add-to-store's NAR),
    /// one stderr frame, one reply, or one export trailer.
    pub max_message_bytes: u64,
}

impl Default for WireLimits {
    fn default() -> Self {
        WireLimits {
            max_string_len_bytes: 64 << 20,
            max_list_count: 1 << 20,
            max_pairs_count: 1 << 16,
            max_message_bytes: 128 << 20,
        }
    }
}

/// What one call to a decoder's `feed` did: how many bytes of the input it
/// consumed and, if one was completed, the value. When `item` is `Some`,
/// decoding stopped right after it; the rest of the input is untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feed<T> {
    pub consumed: usize,
    pub item: Option<T>,
}

/// Why bytes could not be decoded. Texts are the C++ daemon's where it has
/// one; the limit texts are guixd's own. Every variant but [`WireError::Bug`]
/// is the peer's fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// An `int` (8 bytes on the wire) with any of its high 4 bytes set.
    #[error("implementation cannot deal with > 32-bit integers")]
    IntTooLarge,
    #[error("non-zero padding")]
    NonZeroPadding,
    /// The client's first word was not `WORKER_MAGIC_1`.
    #[error("protocol mismatch")]
    ProtocolMismatch,
    #[error("invalid operation {0}")]
    InvalidOperation(u32),
    /// A field the daemon reads with `readStorePath(s)` is not a store path
    /// (only reported when the decoder was given a store directory).
    #[error(transparent)]
    NotInStore(#[from] StorePathError),
    #[error("string of {len} bytes exceeds the limit of {max} bytes")]
    StringTooLong { len: u64, max: u64 },
    #[error("list of {count} strings exceeds the limit of {max}")]
    ListTooLong { count: u64, max: u64 },
    #[error("list of {count} string pairs exceeds the limit of {max}")]
    TooManyPairs { count: u64, max: u64 },
    #[error("message exceeds the limit of {max} bytes")]
    MessageTooLarge { max: u64 },
    /// Client side: the daemon's hello was not `WORKER_MAGIC_2` and a
    /// version of major 0x100.
    #[error("build daemon handshake failed")]
    HandshakeFailed,
    /// Client side: a stderr frame code that does not exist (the Guix
    /// client's text).
    #[error("invalid error code")]
    InvalidStderrCode(u32),
    /// Client side: a reply value the daemon never sends, e.g. anything but
    /// `1` where the daemon always writes `1`.
    #[error("unexpected reply value {value}")]
    UnexpectedReplyValue { value: u64 },
    /// The peer closed the stream in the middle of a message.
    #[error("unexpected end-of-file")]
    UnexpectedEof,
    /// A decoded field did not have the kind its schema promised: a bug in
    /// guixd, never the peer's fault.
    #[error("internal error in the wire codec: {0}")]
    Bug(&'static str),
}

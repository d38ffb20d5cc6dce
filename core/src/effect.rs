//! The closed vocabulary of side effects the core may ask for, and their
//! results.
//!
//! The core never performs I/O: it emits an [`Effect`] (plain data), some
//! runtime runs it on a worker thread through `guixd-os` (or, for a point
//! read that need not wait, at once on its event-loop thread:
//! [`Effect::is_point_read`]), and the result comes back as an
//! [`EffectResult`] value. Because results are values, a
//! test can inject any failure at any point. Keeps true:
//! - every variant is self-contained (owned data, no references into the
//!   core), so it can cross threads;
//! - effects that belong to one stream (an upload, a dump) carry the id the
//!   core chose, and the core never has two effects of one stream in flight
//!   at once, so the os side sees them in order;
//! - database writes are only ever asked for one at a time (the core's
//!   writer queue), so the daemon never contends with itself in SQLite;
//!   the one exception is `VerifyStore`, which runs for long and makes its
//!   rare repairs of the database (invalidations, missing hashes) through
//!   the os layer's single writer connection, between other writes;
//! - the collector's effects (`Gc*`) carry out decisions of `crate::gc`
//!   and the daemon's collection task: a path is deleted only by
//!   `GcDeletePath`, one at a time, through the writer queue.

use crate::build_plan::{BuildId, BuildPlan, LogId, OutputCheck, OutputFound, OutputRefused};
use crate::hash::{Hash, HashAlgo};
use crate::store_path::StorePath;
use std::collections::{BTreeMap, BTreeSet};

/// Identifies one effect in flight; chosen by the core, unique for the
/// daemon's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EffectId(pub u64);

/// Identifies an upload: a store item being written from a NAR stream into
/// a temporary location in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UploadId(pub u64);

/// Identifies a dump: a store item being serialised as a NAR, chunk by chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DumpId(pub u64);

/// What the database records for a valid path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidPathInfo {
    pub path: StorePath,
    /// `None` is stored as SQL NULL, never as "".
    pub deriver: Option<StorePath>,
    /// SHA-256 of the path's NAR serialisation.
    pub nar_hash: Hash,
    pub references: BTreeSet<StorePath>,
    /// Seconds since the Unix epoch.
    pub registration_time: u64,
    /// 0 means unknown (stored as NULL).
    pub nar_size: u64,
}

/// One item to register, as part of a registration group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub info: ValidPathInfo,
    /// For `.drv` items: the outputs the core parsed and checked, recorded
    /// in `DerivationOutputs` (`id`, output path).
    pub derivation_outputs: Vec<(String, StorePath)>,
}

/// Items that must become valid together or not at all (one client
/// request's worth). A [`Effect::Register`] batch carries several groups
/// and commits them in one transaction; a failing group is rolled back on
/// its own (savepoint) without failing the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationGroup {
    pub items: Vec<Registration>,
}

/// What a finished upload or text write measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measured {
    /// SHA-256 of the NAR serialisation of what was written.
    pub nar_hash: Hash,
    pub nar_size: u64,
    /// For uploads: the hash the client asked for (`algo` of the NAR when
    /// recursive, of the file contents when flat).
    pub content_hash: Hash,
}

/// How an upload's NAR is to be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadKind {
    /// The NAR is restored as a tree; `content_hash` is `algo` over the NAR.
    Recursive,
    /// The NAR must hold one regular file; its bytes are the item, and
    /// `content_hash` is `algo` over them.
    Flat,
}

/// An item of a substituter's `info` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubstitutablePathInfo {
    pub deriver: Option<StorePath>,
    pub references: BTreeSet<StorePath>,
    pub download_size: u64,
    pub nar_size: u64,
}

/// A request for a side effect.
// `PrepareBuild` carries a whole build plan; effects are moved, never
// copied, and few are queued at once, so boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    // ---- database reads (any number in flight; never block the writer)
    /// The info of `path`, or `None` when it is not valid.
    QueryPathInfo {
        path: StorePath,
    },
    /// The subset of `paths` that is valid.
    QueryValidPaths {
        paths: Vec<StorePath>,
    },
    /// Paths that refer to `path` (empty when it is not valid).
    QueryReferrers {
        path: StorePath,
    },
    /// Valid derivations that list `path` among their outputs.
    QueryValidDerivers {
        path: StorePath,
    },
    /// The outputs (`id` → path) of the valid derivation `drv`; `None`
    /// when `drv` is not valid.
    QueryDerivationOutputs {
        drv: StorePath,
    },
    QueryAllValidPaths,
    /// The valid path whose base name starts with `hash_part` and a dash.
    QueryPathFromHashPart {
        hash_part: String,
    },
    QueryFailedPaths,

    // ---- database writes (one in flight at a time, decided by the core)
    /// Registers every group in one transaction, each group all or
    /// nothing.
    Register {
        groups: Vec<RegistrationGroup>,
    },
    /// Removes entries from `FailedPaths` (`"*"` clears all; a `.drv`
    /// clears its outputs).
    ClearFailedPaths {
        paths: Vec<String>,
    },

    // ---- store files
    /// Creates the temporary location of a new upload.
    UploadStart {
        upload: UploadId,
        kind: UploadKind,
        algo: HashAlgo,
    },
    /// Appends the next bytes of the upload's NAR stream (exactly the bytes
    /// the core's parser consumed, in order).
    UploadChunk {
        upload: UploadId,
        data: Vec<u8>,
    },
    /// The NAR is complete: flushes, canonicalises and measures it.
    UploadFinish {
        upload: UploadId,
    },
    /// Forgets an upload and deletes whatever it wrote.
    UploadDiscard {
        upload: UploadId,
    },
    /// Moves a finished upload to `dest`, first deleting any invalid
    /// leftover at `dest`.
    UploadInstall {
        upload: UploadId,
        dest: StorePath,
    },
    /// Writes `contents` as the regular file `dest` (0444, mtime 1),
    /// replacing any invalid leftover, atomically.
    WriteText {
        dest: StorePath,
        contents: Vec<u8>,
    },
    /// Hard-links the files of `path` into `.links` (deduplication).
    Deduplicate {
        path: StorePath,
    },
    /// Reads a whole regular file of the store (e.g. a `.drv`), refusing
    /// files larger than `max_bytes`.
    ReadStoreFile {
        path: StorePath,
        max_bytes: u64,
    },

    // ---- dumps (export)
    /// Starts serialising `path` as a NAR.
    DumpStart {
        dump: DumpId,
        path: StorePath,
    },
    /// The next bytes of the dump, at most `max_bytes`.
    DumpNext {
        dump: DumpId,
        max_bytes: usize,
    },
    /// Forgets a dump.
    DumpEnd {
        dump: DumpId,
    },

    // ---- exclusion from other processes
    /// Takes the OS lock on `<path>.lock` without waiting.
    TryLockPath {
        path: StorePath,
    },
    /// Drops the OS lock on `<path>.lock`; when `delete` (the path became
    /// valid), removes the lock file first, as the daemon's protocol says.
    UnlockPath {
        path: StorePath,
        delete: bool,
    },

    // ---- roots
    /// Records `path` in this daemon's temporary-roots file, for other
    /// processes' garbage collectors.
    AddTempRoot {
        path: StorePath,
    },
    /// Creates `gcroots/auto/<hash>` pointing to `link`.
    AddIndirectRoot {
        link: String,
    },

    // ---- helpers run as processes
    /// Signs `hash` with the daemon's key through `guix authenticate`.
    Sign {
        hash: Hash,
    },
    /// Verifies a signature through `guix authenticate`; yields the hex hash
    /// it covers.
    Verify {
        signature: Vec<u8>,
    },
    /// Asks `guix substitute --query` which of `paths` it can substitute.
    SubstitutesHave {
        paths: Vec<StorePath>,
        options: Vec<(String, String)>,
    },
    /// Asks `guix substitute --query` for the infos of `paths`.
    SubstitutesInfo {
        paths: Vec<StorePath>,
        options: Vec<(String, String)>,
    },

    // ---- per-user state
    /// Creates `profiles/per-user/<user>` owned by `uid`.
    CreateUserProfileDir {
        user: String,
        uid: u32,
    },

    // ---- builds (spec 03; see build_plan.rs)
    /// The closure of `paths` under references (each path included).
    QueryClosure {
        paths: Vec<StorePath>,
    },
    /// Creates the build directory (`$TMPDIR/guix-build-NAME.drv-N`, with
    /// `top/` in chroot mode), the chroot skeleton and `build_dir_files`,
    /// acquires a build user when a group is configured, and keeps the plan
    /// for the spawn that follows (`Output::Spawn`). The os sets
    /// `NIX_BUILD_TOP`, `TMPDIR`, `TEMPDIR`, `TMP`, `TEMP` and `PWD` to the
    /// build directory as the builder sees it.
    PrepareBuild {
        build: BuildId,
        plan: BuildPlan,
    },
    /// After the builder exited successfully: checks every output, moves it
    /// from the chroot into the store unless `keep_in_chroot` (check mode),
    /// canonicalises it, scans it for the hash parts of `candidates`, and
    /// measures its NAR.
    CollectOutputs {
        build: BuildId,
        outputs: Vec<OutputCheck>,
        candidates: BTreeSet<StorePath>,
        keep_in_chroot: bool,
    },
    /// Ends a build: kills what is left of it, deletes the chroot, and the
    /// build directory unless `keep_build_dir` (then hands it to `owner_uid`
    /// when given), releases the build user.
    FinishBuild {
        build: BuildId,
        keep_build_dir: bool,
        owner_uid: Option<u32>,
    },
    /// Opens the log file of `drv` (`<logdir>/drvs/XX/REST[.gz|.bz2]`).
    LogOpen {
        log: LogId,
        drv: StorePath,
        compression: LogCompression,
    },
    /// Appends builder output to an open log (one in flight per log).
    LogWrite {
        log: LogId,
        data: Vec<u8>,
    },
    /// Finishes and closes a log.
    LogClose {
        log: LogId,
    },
    /// Records permanent build failures (`--cache-failures`); a database
    /// write, so it goes through the writer queue like registrations.
    RecordFailedPaths {
        paths: Vec<StorePath>,
        time_s: u64,
    },

    // ---- reuse of store contents for fixed-output derivations
    /// The valid paths whose NAR hash is the SHA-256 `hash` (`Paths`).
    QueryPathsByNarHash {
        hash: Hash,
    },
    /// The valid single-file items whose contents hash to `hash` (in its
    /// algorithm), as recorded by `IndexFlatContent` (`Paths`).
    FindFlatContent {
        hash: Hash,
    },
    /// Records that the valid single-file item `path` has contents hashing
    /// to `hash`; a database write, through the writer queue.
    IndexFlatContent {
        path: StorePath,
        hash: Hash,
    },
    /// Copies the valid item `from` to the new item `to` (replacing any
    /// invalid leftover): the tree when `recursive`, else the bytes of a
    /// single file as a non-executable file; checks that the copy hashes
    /// to `expected` (its NAR when recursive, its contents when flat) and
    /// measures it (`Measured`, `content_hash` in `expected`'s algorithm).
    CopyIntoOutput {
        from: StorePath,
        to: StorePath,
        recursive: bool,
        expected: Hash,
    },

    // ---- garbage collector and store maintenance (spec 03 §9–§10; the
    // decisions are `crate::gc`'s, these only carry them out)
    /// Takes `gc.lock` exclusively for the collection `owner` (`Locked`):
    /// without `wait`, `false` when another collection (of this process or
    /// another) holds it; with `wait`, blocks until it is free.
    GcLock {
        owner: u64,
        wait: bool,
    },
    /// Drops `gc.lock` and the read locks on other processes' temporary
    /// roots, if the collection `owner` holds them; otherwise nothing.
    GcRelease {
        owner: u64,
    },
    /// Other processes' temporary roots (`TempRoots`); needs `gc.lock`.
    /// The files read stay read-locked until `GcRelease`.
    GcReadTempRoots,
    /// The roots under `gcroots`, `manifests` and `profiles` (`Roots`).
    GcFindRoots,
    /// The valid store items running processes use, from `guix gc
    /// --list-busy` (`Paths`).
    GcRuntimeRoots,
    /// The reference graph in bulk and the names in the store directory
    /// (`GcSnapshot`).
    GcSnapshot,
    /// Deletes a leftover trash and creates an empty one
    /// (`TrashPrepared`).
    GcPrepareTrash,
    /// Deletes one path: invalidates it in a write transaction that finds
    /// it without other referrers (when `expect_valid`; otherwise it must
    /// still be invalid), then removes its files (`GcDeleted`). A database
    /// write: through the writer queue.
    GcDeletePath {
        path: StorePath,
        expect_valid: bool,
    },
    /// Deletes the trash directory (`Freed`).
    GcEmptyTrash,
    /// Removes `.links` entries nothing links to any more (`Links`).
    GcRemoveUnusedLinks,
    /// `verify-store`: existence always, contents when `check_contents`
    /// (`Verified`). Takes `gc.lock` itself for the existence check.
    VerifyStore {
        check_contents: bool,
    },
    /// `optimise-store`: deduplicates every valid path (`Optimised`).
    OptimiseStore,
}

/// Compression of build logs (`--log-compression`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogCompression {
    None,
    Gzip,
    Bzip2,
}

/// The most paths a `QueryValidPaths` may ask about and still be a point
/// read (see [`Effect::is_point_read`]).
pub const POINT_READ_PATHS_MAX: usize = 16;

impl Effect {
    /// A read of a few database rows through an index: cheaper than the
    /// hand-over to a worker thread and back, so a runtime may run it
    /// where it was asked for, on its event-loop thread, as long as it
    /// can do so without waiting (a reader connection is idle, the
    /// database is not busy; see `guixd_os::Os::run_now`). Everything
    /// else, and these when they would wait, goes to a worker.
    pub fn is_point_read(&self) -> bool {
        match self {
            Effect::QueryPathInfo { .. }
            | Effect::QueryPathFromHashPart { .. }
            | Effect::QueryDerivationOutputs { .. } => true,
            Effect::QueryValidPaths { paths } => paths.len() <= POINT_READ_PATHS_MAX,
            _ => false,
        }
    }
}

/// Why an effect failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectError {
    pub kind: EffectErrorKind,
    /// Human-readable, in the daemon's words where it has some; this is
    /// what the client sees.
    pub message: String,
}

/// Who or what is at fault when an effect fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EffectErrorKind {
    /// An operating-system error (errno).
    Io(i32),
    /// The database refused (constraint, corrupt, busy beyond retries).
    Database,
    /// The input was refused (a bad NAR inside an upload, a bad signature).
    Invalid,
    /// A helper program failed or is missing.
    Helper,
    /// The item is not there (a store file to read or dump).
    NotFound,
}

impl EffectError {
    pub fn new(kind: EffectErrorKind, message: impl Into<String>) -> EffectError {
        EffectError {
            kind,
            message: message.into(),
        }
    }
}

/// The value of a completed effect. Each [`Effect`] has one success shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EffectOutput {
    /// For effects with nothing to return.
    Done,
    PathInfo(Option<ValidPathInfo>),
    Paths(BTreeSet<StorePath>),
    Strings(BTreeSet<String>),
    DerivationOutputs(Option<BTreeMap<String, StorePath>>),
    Path(Option<StorePath>),
    /// One result per registration group, in the order given.
    Registered(Vec<Result<(), EffectError>>),
    Measured(Measured),
    Bytes(Vec<u8>),
    /// A dump chunk; `end` is set with the chunk that finishes the NAR.
    DumpChunk {
        data: Vec<u8>,
        end: Option<(Hash, u64)>,
    },
    /// `TryLockPath`: whether the lock was taken.
    Locked(bool),
    Signature(Vec<u8>),
    /// `Verify`: the hex hash the signature covers.
    VerifiedHash(String),
    SubstitutableInfos(BTreeMap<StorePath, SubstitutablePathInfo>),
    /// `SubstitutesHave` and `SubstitutesInfo`: the lines the substituter
    /// printed while it answered, each already prefixed `substitute: ` (the
    /// client sees them, as it does from the C++ daemon), and its answer
    /// (`Paths` or `SubstitutableInfos`).
    Substituter {
        diagnostics: Vec<Vec<u8>>,
        answer: Result<Box<EffectOutput>, EffectError>,
    },
    /// `PrepareBuild`: the build directory on the host.
    BuildPrepared {
        build_dir: String,
        /// Messages for the client about this build, in the daemon's
        /// words (why a fixed-output build has no network).
        notes: Vec<String>,
    },
    /// `CollectOutputs`: one result per output, in the order given.
    Outputs(Vec<Result<OutputFound, OutputRefused>>),
    /// `GcReadTempRoots`.
    TempRoots(crate::gc::TempRootsRead),
    /// `GcFindRoots`.
    Roots(crate::gc::FoundRoots),
    /// `GcSnapshot`: the graph's rows, and the store directory's names.
    GcSnapshot {
        rows: crate::gc::GcRows,
        entries: Vec<String>,
    },
    /// `GcPrepareTrash`.
    TrashPrepared(crate::gc::TrashPrepared),
    /// `GcDeletePath`.
    GcDeleted(crate::gc::DeleteOutcome),
    /// `GcEmptyTrash`: the bytes freed.
    Freed(u64),
    /// `GcRemoveUnusedLinks`.
    Links(crate::gc::LinksReport),
    /// `VerifyStore`.
    Verified(crate::gc::VerifyReport),
    /// `OptimiseStore`.
    Optimised(crate::gc::OptimiseReport),
}

/// What comes back for an effect.
pub type EffectResult = Result<EffectOutput, EffectError>;

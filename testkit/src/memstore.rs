//! An in-memory store that carries out every [`Effect`] of the core, with
//! the result shapes and error texts of `guixd-os`, and that keeps what was
//! written apart from what is durable.
//!
//! What a reader sees is the *written* state. Only some steps make a write
//! *durable*, as on a real machine: a registration commit (the database is
//! transactional, so what a commit wrote is durable and nothing else ever
//! is), a rename into place (an upload installed, a text item written, an
//! indirect root replaced). Everything else — uploads in progress, lock
//! files, per-user directories, OS locks, temporary roots — is lost by
//! [`MemStore::crash`], which keeps only the durable state. After a crash,
//! [`MemStore::violations`] tells whether some valid path lost its files.
//!
//! Keeps true:
//! - results and error texts are those `guixd_os::Os::run` gives for the
//!   same effect on the same state (messages name paths as os does);
//! - a registration batch is all-or-nothing per group (a savepoint per
//!   group, undone alone on failure), and groups see the groups before them;
//! - uploads are restored with the core's own NAR parser, chunk by chunk,
//!   hashed as os hashes them, and fail for good after an error;
//! - agents (signing, verifying, substituters) are deterministic fakes;
//! - the collector's effects work on the same state: roots on disk,
//!   runtime roots and other processes' temporary roots are set by the
//!   test, directories go to a trash emptied by `GcEmptyTrash`, and a
//!   deletion refuses a path with other referrers as os does; `gc.lock`
//!   cannot be waited for (nothing here blocks), which is an error;
//! - nothing here panics on any effect, in any order.

use guixd_core::build_plan::{BuildId, BuildPlan, LogId, OutputCheck, OutputFound, OutputRefused};
use guixd_core::daemon::ExitStatus;
use guixd_core::effect::{
    DumpId, Effect, EffectError, EffectErrorKind, EffectOutput, EffectResult, Measured,
    RegistrationGroup, SubstitutablePathInfo, UploadId, UploadKind, ValidPathInfo,
};
use guixd_core::gc::{
    DeleteOutcome, FoundRoots, GcRows, Level as GcLevel, LinksReport, OptimiseReport, PathRow,
    Repairable, TempRootsRead, TrashPrepared, VerifyReport,
};
use guixd_core::hash::{Hash, HashAlgo, Hasher};
use guixd_core::nar::{
    FileNarHasher, NarError, NarEvent, NarLimits, NarParser, NarTree, Outcome, file_nar_size,
    hash_file_nar,
};
use guixd_core::store_path::{HASH_PART_LEN, StoreDir, StorePath};
use std::collections::{BTreeMap, BTreeSet};

/// Linux errno values used in error kinds (os takes them from libc).
const ENOENT: i32 = 2;
const EIO: i32 = 5;
const EDEADLK: i32 = 35;

/// How a [`MemStore`] behaves.
#[derive(Clone, Debug)]
pub struct MemStoreConfig {
    pub store_dir: StoreDir,
    /// Limits for restoring uploads (the core's, so both parsers agree).
    pub nar_limits: NarLimits,
    /// Whether the daemon has a signing key (`Sign` fails without one).
    pub signing_key: bool,
    /// What the fake substituter offers.
    pub substitutes: BTreeMap<StorePath, SubstitutablePathInfo>,
}

impl MemStoreConfig {
    /// A store at `store_dir` with default limits, a signing key and no
    /// substitutes.
    pub fn new(store_dir: StoreDir) -> MemStoreConfig {
        MemStoreConfig {
            store_dir,
            nar_limits: NarLimits::default(),
            signing_key: true,
            substitutes: BTreeMap::new(),
        }
    }
}

/// What the store database holds: valid paths, derivation outputs and
/// failed paths. Transactional, so it is always durable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Db {
    pub valid: BTreeMap<StorePath, ValidPathInfo>,
    /// `.drv` path → (output id → output path).
    pub derivation_outputs: BTreeMap<StorePath, BTreeMap<String, StorePath>>,
    pub failed: BTreeSet<String>,
    /// guixd's index of single-file items by content hash:
    /// (algorithm name, hex digest) → paths.
    pub flat_content: BTreeMap<(String, String), BTreeSet<StorePath>>,
}

/// What lives in files: store items, lock files, roots, per-user
/// directories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disk {
    /// Store items at their final names (valid or leftovers).
    pub items: BTreeMap<StorePath, NarTree>,
    /// `<path>.lock` files that exist.
    pub lock_files: BTreeSet<StorePath>,
    /// `gcroots/auto/<name>` → the link it points to.
    pub indirect_roots: BTreeMap<String, String>,
    /// `profiles/per-user/<user>` directories.
    pub user_profiles: BTreeSet<String>,
}

/// The in-memory store. See the module documentation.
#[derive(Debug)]
pub struct MemStore {
    config: MemStoreConfig,
    /// Wall-clock seconds used for a registration time of 0.
    now_s: u64,
    db: Db,
    written: Disk,
    durable: Disk,
    uploads: BTreeMap<UploadId, Upload>,
    dumps: BTreeMap<DumpId, Dump>,
    /// OS locks this process holds.
    held_locks: BTreeSet<StorePath>,
    /// OS locks "another process" holds: `TryLockPath` is refused.
    foreign_locks: BTreeSet<StorePath>,
    /// The temp-roots file of this process.
    temp_roots: BTreeSet<StorePath>,
    /// Prepared builds, until `FinishBuild`.
    builds: BTreeMap<BuildId, FakeBuild>,
    /// Open build logs.
    logs: BTreeMap<LogId, (StorePath, Vec<u8>)>,
    /// Closed build logs, by derivation (the last one of each).
    build_logs: BTreeMap<StorePath, Vec<u8>>,
    next_pid: u32,
    effects_run: u64,
    crashes: u64,
    /// The garbage collector's side (roots, `gc.lock`, the trash).
    gc: MemGc,
}

/// What the in-memory store keeps for the garbage collector's effects.
#[derive(Debug, Default)]
struct MemGc {
    /// The collection holding `gc.lock`.
    owner: Option<u64>,
    /// Roots on disk: link (or file) → the store item it names.
    roots: BTreeMap<String, StorePath>,
    /// What `guix gc --list-busy` would print.
    runtime_roots: BTreeSet<StorePath>,
    /// Other processes' temporary roots.
    foreign_temp_roots: BTreeSet<StorePath>,
    /// Directories moved to the trash and not yet deleted.
    trash: Vec<NarTree>,
    /// Collections that asked for `gc.lock`.
    collections: u64,
}

impl MemStore {
    pub fn new(config: MemStoreConfig) -> MemStore {
        MemStore {
            config,
            now_s: 0,
            db: Db::default(),
            written: Disk::default(),
            durable: Disk::default(),
            uploads: BTreeMap::new(),
            dumps: BTreeMap::new(),
            held_locks: BTreeSet::new(),
            foreign_locks: BTreeSet::new(),
            temp_roots: BTreeSet::new(),
            builds: BTreeMap::new(),
            logs: BTreeMap::new(),
            build_logs: BTreeMap::new(),
            next_pid: 100,
            effects_run: 0,
            crashes: 0,
            gc: MemGc::default(),
        }
    }

    /// Carries out `effect`, as `guixd_os::Os::run` would.
    pub fn run(&mut self, effect: Effect) -> EffectResult {
        self.effects_run += 1;
        match effect {
            Effect::QueryPathInfo { path } => {
                Ok(EffectOutput::PathInfo(self.db.valid.get(&path).cloned()))
            }
            Effect::QueryValidPaths { paths } => Ok(EffectOutput::Paths(
                paths
                    .into_iter()
                    .filter(|p| self.db.valid.contains_key(p))
                    .collect(),
            )),
            Effect::QueryReferrers { path } => Ok(EffectOutput::Paths(self.referrers(&path))),
            Effect::QueryValidDerivers { path } => Ok(EffectOutput::Paths(
                self.db
                    .derivation_outputs
                    .iter()
                    .filter(|(drv, outs)| {
                        self.db.valid.contains_key(*drv) && outs.values().any(|o| *o == path)
                    })
                    .map(|(drv, _)| drv.clone())
                    .collect(),
            )),
            Effect::QueryDerivationOutputs { drv } => Ok(EffectOutput::DerivationOutputs(
                self.db.valid.contains_key(&drv).then(|| {
                    self.db
                        .derivation_outputs
                        .get(&drv)
                        .cloned()
                        .unwrap_or_default()
                }),
            )),
            Effect::QueryAllValidPaths => {
                Ok(EffectOutput::Paths(self.db.valid.keys().cloned().collect()))
            }
            Effect::QueryPathFromHashPart { hash_part } => self.path_from_hash_part(&hash_part),
            Effect::QueryFailedPaths => Ok(EffectOutput::Strings(self.db.failed.clone())),
            Effect::Register { groups } => Ok(EffectOutput::Registered(self.register(groups))),
            Effect::ClearFailedPaths { paths } => {
                self.clear_failed_paths(&paths);
                Ok(EffectOutput::Done)
            }
            Effect::UploadStart { upload, kind, algo } => self.upload_start(upload, kind, algo),
            Effect::UploadChunk { upload, data } => {
                self.upload_mut(upload)?.chunk(&data)?;
                Ok(EffectOutput::Done)
            }
            Effect::UploadFinish { upload } => {
                let measured = self.upload_mut(upload)?.finish()?;
                Ok(EffectOutput::Measured(measured))
            }
            Effect::UploadDiscard { upload } => {
                self.uploads.remove(&upload);
                Ok(EffectOutput::Done)
            }
            Effect::UploadInstall { upload, dest } => self.upload_install(upload, dest),
            Effect::WriteText { dest, contents } => Ok(self.write_text(dest, contents)),
            Effect::Deduplicate { path } => {
                // Hard links change nothing a reader of the tree sees.
                if !self.written.items.contains_key(&path) {
                    return Err(not_found_attributes(&path));
                }
                Ok(EffectOutput::Done)
            }
            Effect::ReadStoreFile { path, max_bytes } => self.read_store_file(&path, max_bytes),
            Effect::DumpStart { dump, path } => self.dump_start(dump, &path),
            Effect::DumpNext { dump, max_bytes } => match self.dumps.get_mut(&dump) {
                Some(d) => Ok(d.next(max_bytes)),
                None => Err(invalid(format!("guixd bug: unknown dump {}", dump.0))),
            },
            Effect::DumpEnd { dump } => {
                self.dumps.remove(&dump);
                Ok(EffectOutput::Done)
            }
            Effect::TryLockPath { path } => self.try_lock_path(path),
            Effect::UnlockPath { path, delete } => {
                if self.held_locks.remove(&path) && delete {
                    self.written.lock_files.remove(&path);
                }
                Ok(EffectOutput::Done)
            }
            Effect::AddTempRoot { path } => {
                self.temp_roots.insert(path);
                Ok(EffectOutput::Done)
            }
            Effect::AddIndirectRoot { link } => {
                let name = Hash::digest(HashAlgo::Sha1, link.as_bytes()).to_base32();
                // A symlink made under a temporary name and renamed.
                self.written
                    .indirect_roots
                    .insert(name.clone(), link.clone());
                self.durable.indirect_roots.insert(name, link);
                Ok(EffectOutput::Done)
            }
            Effect::Sign { hash } => {
                if !self.config.signing_key {
                    return Err(EffectError::new(
                        EffectErrorKind::Io(ENOENT),
                        "getting status of `/etc/guix/signing-key.sec': No such file or directory",
                    ));
                }
                Ok(EffectOutput::Signature(fake_signature(&hash)))
            }
            Effect::Verify { signature } => match verify_fake_signature(&signature) {
                Some(hex) => Ok(EffectOutput::VerifiedHash(hex)),
                None => Err(EffectError::new(
                    EffectErrorKind::Invalid,
                    "signature is not valid",
                )),
            },
            Effect::SubstitutesHave { paths, .. } => Ok(substituter_answer(EffectOutput::Paths(
                paths
                    .into_iter()
                    .filter(|p| self.config.substitutes.contains_key(p))
                    .collect(),
            ))),
            Effect::SubstitutesInfo { paths, .. } => {
                Ok(substituter_answer(EffectOutput::SubstitutableInfos(
                    paths
                        .into_iter()
                        .filter_map(|p| {
                            let info = self.config.substitutes.get(&p)?.clone();
                            Some((p, info))
                        })
                        .collect(),
                )))
            }
            Effect::CreateUserProfileDir { user, .. } => {
                if user.is_empty()
                    || user == "."
                    || user == ".."
                    || user.contains('/')
                    || user.contains('\0')
                {
                    return Err(invalid(format!("invalid user name `{user}'")));
                }
                self.written.user_profiles.insert(user);
                Ok(EffectOutput::Done)
            }
            Effect::QueryClosure { paths } => Ok(EffectOutput::Paths(self.closure(&paths))),
            Effect::RecordFailedPaths { paths, .. } => {
                self.db
                    .failed
                    .extend(paths.iter().map(|p| p.as_str().to_owned()));
                Ok(EffectOutput::Done)
            }
            Effect::PrepareBuild { build, plan } => self.prepare_build(build, plan),
            Effect::CollectOutputs {
                build,
                outputs,
                candidates,
                keep_in_chroot,
            } => self.collect_outputs(build, &outputs, &candidates, keep_in_chroot),
            Effect::FinishBuild { build, .. } => {
                self.builds.remove(&build);
                Ok(EffectOutput::Done)
            }
            Effect::LogOpen { log, drv, .. } => {
                if self.logs.contains_key(&log) {
                    return Err(invalid(format!(
                        "guixd bug: build log {} opened twice",
                        log.0
                    )));
                }
                self.logs.insert(log, (drv, Vec::new()));
                Ok(EffectOutput::Done)
            }
            Effect::LogWrite { log, data } => match self.logs.get_mut(&log) {
                Some((_, text)) => {
                    text.extend_from_slice(&data);
                    Ok(EffectOutput::Done)
                }
                None => Err(unknown_log(log)),
            },
            Effect::LogClose { log } => match self.logs.remove(&log) {
                Some((drv, text)) => {
                    self.build_logs.insert(drv, text);
                    Ok(EffectOutput::Done)
                }
                None => Err(unknown_log(log)),
            },
            Effect::QueryPathsByNarHash { hash } => Ok(EffectOutput::Paths(
                self.db
                    .valid
                    .values()
                    .filter(|i| i.nar_hash == hash)
                    .map(|i| i.path.clone())
                    .collect(),
            )),
            Effect::FindFlatContent { hash } => {
                let key = (hash.algo().name().to_owned(), hash.to_hex());
                Ok(EffectOutput::Paths(
                    self.db
                        .flat_content
                        .get(&key)
                        .map(|paths| {
                            paths
                                .iter()
                                .filter(|p| self.db.valid.contains_key(*p))
                                .cloned()
                                .collect()
                        })
                        .unwrap_or_default(),
                ))
            }
            Effect::IndexFlatContent { path, hash } => {
                let key = (hash.algo().name().to_owned(), hash.to_hex());
                let valid = &self.db.valid;
                let paths = self.db.flat_content.entry(key).or_default();
                paths.insert(path);
                // Rows of paths that are not valid any more go meanwhile.
                paths.retain(|p| valid.contains_key(p));
                Ok(EffectOutput::Done)
            }
            Effect::CopyIntoOutput {
                from,
                to,
                recursive,
                expected,
            } => self.copy_into_output(&from, to, recursive, &expected),
            Effect::GcLock { owner, wait } => self.gc_lock(owner, wait),
            Effect::GcRelease { owner } => {
                if self.gc.owner == Some(owner) {
                    self.gc.owner = None;
                }
                Ok(EffectOutput::Done)
            }
            Effect::GcReadTempRoots => {
                if self.gc.owner.is_none() {
                    return Err(invalid(
                        "guixd bug: temporary roots read without the garbage collector lock",
                    ));
                }
                Ok(EffectOutput::TempRoots(TempRootsRead {
                    roots: self.gc.foreign_temp_roots.clone(),
                    messages: Vec::new(),
                }))
            }
            Effect::GcFindRoots => Ok(EffectOutput::Roots(self.find_roots())),
            Effect::GcRuntimeRoots => Ok(EffectOutput::Paths(
                self.gc
                    .runtime_roots
                    .iter()
                    .filter(|p| self.db.valid.contains_key(*p))
                    .cloned()
                    .collect(),
            )),
            Effect::GcSnapshot => Ok(self.gc_snapshot()),
            Effect::GcPrepareTrash => {
                let freed_bytes = self.gc.trash.drain(..).map(|t| files_size(&t)).sum();
                Ok(EffectOutput::TrashPrepared(TrashPrepared {
                    use_trash: true,
                    freed_bytes,
                    note: None,
                }))
            }
            Effect::GcDeletePath { path, expect_valid } => self.gc_delete(&path, expect_valid),
            Effect::GcEmptyTrash => Ok(EffectOutput::Freed(
                self.gc.trash.drain(..).map(|t| files_size(&t)).sum(),
            )),
            Effect::GcRemoveUnusedLinks => Ok(EffectOutput::Links(LinksReport {
                freed_bytes: 0,
                saved_bytes: 0,
            })),
            Effect::VerifyStore { check_contents } => Ok(self.verify_store(check_contents)),
            Effect::OptimiseStore => Ok(EffectOutput::Optimised(OptimiseReport::default())),
        }
    }

    /// Runs the fake builder of a prepared build, as the runtime's spawn
    /// would start the real one: it writes its outputs (into the chroot,
    /// or straight into the store without one) and says what it printed
    /// and how it exited. The derivation's environment scripts it:
    /// - `guixd_fake`: `fail` exits with 1 and writes nothing; `noout`
    ///   exits with 0 and writes nothing; anything else succeeds;
    /// - `guixd_fake_outputs`: the output ids to write (default `out`),
    ///   each a regular file named by the variable of that id;
    /// - `guixd_fake_contents`: their contents (default names the `.drv`),
    ///   followed by one line per path of `guixd_fake_refs`, so that
    ///   scanning finds those references;
    /// - `guixd_fake_log`: what it prints (default `building <drv>`).
    pub fn start_builder(&mut self, build: BuildId) -> Result<FakeRun, EffectError> {
        let store_dir = self.config.store_dir.clone();
        let fb = self
            .builds
            .get_mut(&build)
            .ok_or_else(|| invalid(format!("guixd bug: unknown build {}", build.0)))?;
        let env: BTreeMap<&str, &str> = fb
            .plan
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let drv = fb.plan.drv_path.clone();
        let log = env
            .get("guixd_fake_log")
            .map_or_else(|| format!("building {drv}\n"), |l| (*l).to_owned())
            .into_bytes();
        let mode = env.get("guixd_fake").copied().unwrap_or("");
        let exit = match mode {
            "fail" => ExitStatus::Code(1),
            _ => ExitStatus::Code(0),
        };
        let mut written = Vec::new();
        if mode != "fail" && mode != "noout" {
            let mut contents = env
                .get("guixd_fake_contents")
                .map_or_else(|| format!("fake build of {drv}\n"), |c| (*c).to_owned());
            for r in env.get("guixd_fake_refs").unwrap_or(&"").split_whitespace() {
                contents.push_str(r);
                contents.push('\n');
            }
            for id in env
                .get("guixd_fake_outputs")
                .unwrap_or(&"out")
                .split_whitespace()
            {
                if let Some(path) = env.get(id).and_then(|p| store_dir.parse_path(p).ok()) {
                    written.push((path, contents.clone().into_bytes()));
                }
            }
        }
        let chroot = fb.plan.chroot;
        for (path, contents) in written {
            let tree = NarTree::File {
                executable: false,
                contents,
            };
            if chroot {
                fb.chroot_items.insert(path, tree);
            } else {
                // Written in place, never renamed: not durable.
                self.written.items.insert(path, tree);
            }
        }
        self.next_pid += 1;
        Ok(FakeRun {
            pid: self.next_pid,
            log,
            exit,
        })
    }

    /// The last closed build log of `drv`.
    pub fn build_log(&self, drv: &StorePath) -> Option<&[u8]> {
        self.build_logs.get(drv).map(Vec::as_slice)
    }

    /// Builds prepared and not finished.
    pub fn open_builds(&self) -> usize {
        self.builds.len()
    }

    /// Build logs opened and not closed.
    pub fn open_logs(&self) -> usize {
        self.logs.len()
    }

    /// Records that `effect` failed with `error` instead of running it, and
    /// returns the error: the state is left as a real failure of that
    /// effect would leave it (an upload or dump that failed is spent; a
    /// failed registration committed nothing; a failed lock was not taken).
    pub fn fail(&mut self, effect: &Effect, error: EffectError) -> EffectResult {
        self.effects_run += 1;
        match effect {
            Effect::UploadChunk { upload, .. } | Effect::UploadFinish { upload } => {
                if let Some(u) = self.uploads.get_mut(upload) {
                    u.state = UploadState::Failed(error.clone());
                }
            }
            Effect::DumpNext { dump, .. } => {
                if let Some(d) = self.dumps.get_mut(dump) {
                    d.failed = Some(error.clone());
                }
            }
            // Deleting what an upload wrote cannot really fail to forget it;
            // at worst a leftover stays in a temporary directory.
            Effect::UploadDiscard { upload } => {
                self.uploads.remove(upload);
            }
            // os closes the descriptor whether or not deleting the file
            // worked.
            Effect::UnlockPath { path, .. } => {
                self.held_locks.remove(path);
            }
            Effect::DumpEnd { dump } => {
                self.dumps.remove(dump);
            }
            // os forgets a build and a log even when finishing them fails.
            Effect::FinishBuild { build, .. } => {
                self.builds.remove(build);
            }
            Effect::LogClose { log } => {
                self.logs.remove(log);
            }
            // Dropping the lock cannot fail to drop it.
            Effect::GcRelease { owner } if self.gc.owner == Some(*owner) => {
                self.gc.owner = None;
            }
            _ => {}
        }
        Err(error)
    }

    /// A plausible failure of `effect`, worded as os words an I/O error.
    pub fn injected_error(&self, effect: &Effect) -> EffectError {
        let store = self.config.store_dir.as_str();
        let (kind, context) = match effect {
            Effect::QueryPathInfo { .. }
            | Effect::QueryValidPaths { .. }
            | Effect::QueryReferrers { .. }
            | Effect::QueryValidDerivers { .. }
            | Effect::QueryDerivationOutputs { .. }
            | Effect::QueryAllValidPaths
            | Effect::QueryPathFromHashPart { .. }
            | Effect::QueryFailedPaths => {
                return EffectError::new(
                    EffectErrorKind::Database,
                    "querying path in database: disk I/O error",
                );
            }
            Effect::Register { .. } | Effect::ClearFailedPaths { .. } => {
                return EffectError::new(
                    EffectErrorKind::Database,
                    "registering valid paths: disk I/O error",
                );
            }
            Effect::UploadStart { upload, .. }
            | Effect::UploadChunk { upload, .. }
            | Effect::UploadFinish { upload }
            | Effect::UploadDiscard { upload } => (
                EffectErrorKind::Io(EIO),
                format!(
                    "writing to file `{store}/.guixd-upload-0-{}/item'",
                    upload.0
                ),
            ),
            Effect::UploadInstall { upload, dest } => (
                EffectErrorKind::Io(EIO),
                format!(
                    "cannot rename `{store}/.guixd-upload-0-{}/item' to `{dest}'",
                    upload.0
                ),
            ),
            Effect::WriteText { .. } => (
                EffectErrorKind::Io(EIO),
                format!("writing to file `{store}/.guixd-text-0-0'"),
            ),
            Effect::Deduplicate { path }
            | Effect::ReadStoreFile { path, .. }
            | Effect::DumpStart { path, .. } => (
                EffectErrorKind::Io(EIO),
                format!("getting attributes of path `{path}'"),
            ),
            Effect::DumpNext { .. } | Effect::DumpEnd { .. } => {
                (EffectErrorKind::Io(EIO), format!("reading file `{store}'"))
            }
            Effect::TryLockPath { path } | Effect::UnlockPath { path, .. } => (
                EffectErrorKind::Io(EIO),
                format!("opening lock file `{path}.lock'"),
            ),
            Effect::AddTempRoot { .. } | Effect::AddIndirectRoot { .. } => {
                (EffectErrorKind::Io(EIO), "writing to file".to_owned())
            }
            Effect::Sign { .. }
            | Effect::Verify { .. }
            | Effect::SubstitutesHave { .. }
            | Effect::SubstitutesInfo { .. } => {
                return EffectError::new(
                    EffectErrorKind::Helper,
                    "`guix substitute' died unexpectedly",
                );
            }
            Effect::CreateUserProfileDir { user, .. } => (
                EffectErrorKind::Io(EIO),
                format!("creating directory `/var/guix/profiles/per-user/{user}'"),
            ),
            Effect::QueryClosure { .. }
            | Effect::RecordFailedPaths { .. }
            | Effect::QueryPathsByNarHash { .. }
            | Effect::FindFlatContent { .. }
            | Effect::IndexFlatContent { .. } => {
                return EffectError::new(
                    EffectErrorKind::Database,
                    "querying path in database: disk I/O error",
                );
            }
            Effect::CopyIntoOutput { to, .. } => {
                (EffectErrorKind::Io(EIO), format!("creating file `{to}'"))
            }
            Effect::GcLock { .. } | Effect::GcRelease { .. } => (
                EffectErrorKind::Io(EIO),
                "opening global GC lock `/var/guix/gc.lock'".to_owned(),
            ),
            Effect::GcReadTempRoots => (
                EffectErrorKind::Io(EIO),
                "opening temporary roots file `/var/guix/temproots/1'".to_owned(),
            ),
            Effect::GcFindRoots => (
                EffectErrorKind::Io(EIO),
                "opening directory `/var/guix/gcroots'".to_owned(),
            ),
            Effect::GcRuntimeRoots => {
                return EffectError::new(
                    EffectErrorKind::Helper,
                    "program `guix' failed with exit code 1",
                );
            }
            Effect::GcSnapshot | Effect::GcDeletePath { .. } => {
                return EffectError::new(
                    EffectErrorKind::Database,
                    "querying path in database: disk I/O error",
                );
            }
            Effect::GcPrepareTrash | Effect::GcEmptyTrash => {
                (EffectErrorKind::Io(EIO), format!("opening `{store}/trash'"))
            }
            Effect::GcRemoveUnusedLinks => (
                EffectErrorKind::Io(EIO),
                format!("opening directory `{store}/.links'"),
            ),
            Effect::VerifyStore { .. } | Effect::OptimiseStore => (
                EffectErrorKind::Io(EIO),
                format!("opening directory `{store}'"),
            ),
            Effect::PrepareBuild { plan, .. } => (
                EffectErrorKind::Io(EIO),
                format!(
                    "creating directory `/tmp/guix-build-{}'",
                    plan.drv_path.name()
                ),
            ),
            Effect::CollectOutputs { build, .. } | Effect::FinishBuild { build, .. } => (
                EffectErrorKind::Io(EIO),
                format!("getting attributes of path `/tmp/guix-build-{}'", build.0),
            ),
            Effect::LogOpen { drv, .. } => (
                EffectErrorKind::Io(EIO),
                format!("creating log file for `{drv}'"),
            ),
            Effect::LogWrite { .. } | Effect::LogClose { .. } => {
                (EffectErrorKind::Io(EIO), "writing to file".to_owned())
            }
        };
        EffectError::new(kind, format!("{context}: Input/output error"))
    }

    /// The machine stops: everything not durable is lost, as is everything
    /// the process held (uploads, dumps, OS locks, its temp-roots file).
    pub fn crash(&mut self) {
        self.crashes += 1;
        self.written = self.durable.clone();
        self.uploads.clear();
        self.dumps.clear();
        self.held_locks.clear();
        self.temp_roots.clear();
        self.builds.clear();
        self.logs.clear();
    }

    /// What a reader of the store would find wrong now: a valid path
    /// without its files, a reference to a path that is not valid, a
    /// derivation output record without its valid derivation.
    pub fn violations(&self) -> Vec<String> {
        violations_of(&self.db, &self.written)
    }

    /// The same for the state a crash would leave.
    pub fn durable_violations(&self) -> Vec<String> {
        violations_of(&self.db, &self.durable)
    }

    // ---- set-up and inspection

    /// The wall-clock seconds recorded for a registration time of 0.
    pub fn set_now(&mut self, now_s: u64) {
        self.now_s = now_s;
    }

    /// Makes `info.path` valid with `tree` as its files, durably, as if an
    /// earlier daemon had added it.
    pub fn insert_valid(&mut self, info: ValidPathInfo, tree: NarTree) {
        self.written.items.insert(info.path.clone(), tree.clone());
        self.durable.items.insert(info.path.clone(), tree);
        self.db.valid.insert(info.path.clone(), info);
    }

    /// Records a failed path (`FailedPaths`).
    pub fn insert_failed(&mut self, path: impl Into<String>) {
        self.db.failed.insert(path.into());
    }

    /// Makes `path` a root on disk, found by `GcFindRoots` under `link`.
    pub fn add_gc_root(&mut self, link: impl Into<String>, path: StorePath) {
        self.gc.roots.insert(link.into(), path);
    }

    /// What `guix gc --list-busy` prints from now on.
    pub fn set_runtime_roots(&mut self, paths: BTreeSet<StorePath>) {
        self.gc.runtime_roots = paths;
    }

    /// The temporary roots other processes hold from now on.
    pub fn set_foreign_temp_roots(&mut self, paths: BTreeSet<StorePath>) {
        self.gc.foreign_temp_roots = paths;
    }

    /// Whether a collection holds `gc.lock`.
    pub fn gc_locked(&self) -> bool {
        self.gc.owner.is_some()
    }

    /// How many times a collection asked for `gc.lock`.
    pub fn gc_collections(&self) -> u64 {
        self.gc.collections
    }

    /// Takes `path`'s files away (as if someone deleted them behind the
    /// daemon's back), leaving the database alone.
    pub fn remove_files(&mut self, path: &StorePath) {
        self.written.items.remove(path);
        self.durable.items.remove(path);
    }

    /// Replaces `path`'s files (as if someone modified them), leaving the
    /// database alone.
    pub fn replace_files(&mut self, path: &StorePath, tree: NarTree) {
        self.written.items.insert(path.clone(), tree.clone());
        self.durable.items.insert(path.clone(), tree);
    }

    /// Another process takes (or drops) the OS lock on `path`.
    pub fn set_foreign_lock(&mut self, path: StorePath, held: bool) {
        if held {
            self.foreign_locks.insert(path);
        } else {
            self.foreign_locks.remove(&path);
        }
    }

    pub fn config(&self) -> &MemStoreConfig {
        &self.config
    }

    pub fn config_mut(&mut self) -> &mut MemStoreConfig {
        &mut self.config
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The files a reader sees now.
    pub fn written(&self) -> &Disk {
        &self.written
    }

    /// The files a crash would leave.
    pub fn durable(&self) -> &Disk {
        &self.durable
    }

    pub fn is_valid(&self, path: &StorePath) -> bool {
        self.db.valid.contains_key(path)
    }

    pub fn path_info(&self, path: &StorePath) -> Option<&ValidPathInfo> {
        self.db.valid.get(path)
    }

    /// The files at `path`, valid or not.
    pub fn item(&self, path: &StorePath) -> Option<&NarTree> {
        self.written.items.get(path)
    }

    /// Uploads started and neither installed nor discarded.
    pub fn open_uploads(&self) -> usize {
        self.uploads.len()
    }

    /// Dumps started and not ended.
    pub fn open_dumps(&self) -> usize {
        self.dumps.len()
    }

    /// OS locks this process holds.
    pub fn held_locks(&self) -> &BTreeSet<StorePath> {
        &self.held_locks
    }

    /// Paths in this process's temp-roots file.
    pub fn temp_roots(&self) -> &BTreeSet<StorePath> {
        &self.temp_roots
    }

    /// Effects run (or failed) so far.
    pub fn effects_run(&self) -> u64 {
        self.effects_run
    }

    // ---- the database

    fn referrers(&self, path: &StorePath) -> BTreeSet<StorePath> {
        if !self.db.valid.contains_key(path) {
            return BTreeSet::new();
        }
        self.db
            .valid
            .values()
            .filter(|i| i.references.contains(path))
            .map(|i| i.path.clone())
            .collect()
    }

    fn path_from_hash_part(&self, hash_part: &str) -> EffectResult {
        if hash_part.len() != HASH_PART_LEN {
            return Err(invalid("invalid hash part"));
        }
        // The first path at or after the prefix, kept when it starts with
        // it, as the daemon's query does.
        let prefix = format!("{}/{}", self.config.store_dir.as_str(), hash_part);
        let found = self
            .db
            .valid
            .keys()
            .find(|p| p.as_str() >= prefix.as_str())
            .filter(|p| p.as_str().starts_with(&prefix))
            .cloned();
        Ok(EffectOutput::Path(found))
    }

    fn register(&mut self, groups: Vec<RegistrationGroup>) -> Vec<Result<(), EffectError>> {
        let mut results = Vec::with_capacity(groups.len());
        for group in &groups {
            let mut undo = Vec::new();
            let result = self.register_group(group, &mut undo);
            if result.is_err() {
                // The group's savepoint is rolled back; the others stay.
                for step in undo.into_iter().rev() {
                    match step {
                        Undo::Valid(path, Some(old)) => {
                            self.db.valid.insert(path, old);
                        }
                        Undo::Valid(path, None) => {
                            self.db.valid.remove(&path);
                        }
                        Undo::Outputs(path, Some(old)) => {
                            self.db.derivation_outputs.insert(path, old);
                        }
                        Undo::Outputs(path, None) => {
                            self.db.derivation_outputs.remove(&path);
                        }
                    }
                }
            }
            results.push(result);
        }
        results
    }

    /// One group, as os's `register_group`: update or insert each item,
    /// then add every reference (each must be valid), then refuse a cycle.
    fn register_group(
        &mut self,
        group: &RegistrationGroup,
        undo: &mut Vec<Undo>,
    ) -> Result<(), EffectError> {
        for item in &group.items {
            let info = &item.info;
            if info.nar_hash.algo() != HashAlgo::Sha256 {
                return Err(invalid(format!(
                    "the NAR hash of `{}' is not a SHA-256 hash",
                    info.path
                )));
            }
            if i64::try_from(info.nar_size).is_err() {
                return Err(invalid(format!("NAR size of `{}' is too large", info.path)));
            }
            let old = self.db.valid.get(&info.path).cloned();
            undo.push(Undo::Valid(info.path.clone(), old.clone()));
            match old {
                // Registering again updates only the size and the hash.
                Some(mut existing) => {
                    existing.nar_size = info.nar_size;
                    existing.nar_hash = info.nar_hash;
                    self.db.valid.insert(info.path.clone(), existing);
                }
                None => {
                    let mut new = info.clone();
                    if new.registration_time == 0 {
                        new.registration_time = self.now_s;
                    }
                    // References are added in the second pass.
                    new.references = BTreeSet::new();
                    self.db.valid.insert(info.path.clone(), new);
                    if !item.derivation_outputs.is_empty() {
                        let old_outs = self.db.derivation_outputs.get(&info.path).cloned();
                        undo.push(Undo::Outputs(info.path.clone(), old_outs));
                        let outs = self
                            .db
                            .derivation_outputs
                            .entry(info.path.clone())
                            .or_default();
                        for (id, path) in &item.derivation_outputs {
                            outs.insert(id.clone(), path.clone());
                        }
                    }
                }
            }
        }
        for item in &group.items {
            for reference in &item.info.references {
                if !self.db.valid.contains_key(reference) {
                    // The daemon's text, placeholder and all.
                    return Err(invalid("path `%1%' is not valid"));
                }
                if let Some(entry) = self.db.valid.get_mut(&item.info.path) {
                    entry.references.insert(reference.clone());
                }
            }
        }
        let members: BTreeSet<&StorePath> = group.items.iter().map(|i| &i.info.path).collect();
        match first_cycle(&members, |p| {
            self.db.valid.get(p).map_or_else(Vec::new, |info| {
                info.references
                    .iter()
                    .filter(|r| *r != p && members.contains(r))
                    .cloned()
                    .collect()
            })
        }) {
            Some(path) => Err(invalid(format!(
                "cycle detected in the references of `{path}'"
            ))),
            None => Ok(()),
        }
    }

    fn clear_failed_paths(&mut self, paths: &[String]) {
        for path in paths {
            if path == "*" {
                self.db.failed.clear();
                continue;
            }
            self.db.failed.remove(path);
            let outputs: Vec<String> = self
                .config
                .store_dir
                .parse_path(path)
                .ok()
                .filter(|drv| self.db.valid.contains_key(drv))
                .and_then(|drv| self.db.derivation_outputs.get(&drv))
                .map(|outs| outs.values().map(|p| p.as_str().to_owned()).collect())
                .unwrap_or_default();
            for out in outputs {
                self.db.failed.remove(&out);
            }
        }
    }

    /// The closure of `paths` under references; paths that are not valid
    /// contribute nothing, as in os's recursive query.
    fn closure(&self, paths: &[StorePath]) -> BTreeSet<StorePath> {
        let mut closure = BTreeSet::new();
        let mut todo: Vec<StorePath> = paths.to_vec();
        while let Some(p) = todo.pop() {
            let Some(info) = self.db.valid.get(&p) else {
                continue;
            };
            if closure.insert(p) {
                todo.extend(info.references.iter().cloned());
            }
        }
        closure
    }

    /// os's `copy_into_output`: a fresh copy of `from` at `to`, measured.
    fn copy_into_output(
        &mut self,
        from: &StorePath,
        to: StorePath,
        recursive: bool,
        expected: &Hash,
    ) -> EffectResult {
        let Some(tree) = self.written.items.get(from) else {
            let what = if recursive {
                "getting attributes of path"
            } else {
                "getting status of"
            };
            return Err(EffectError::new(
                EffectErrorKind::Io(ENOENT),
                format!("{what} `{from}': No such file or directory"),
            ));
        };
        let (copy, content_hash) = if recursive {
            let nar = tree
                .to_nar()
                .map_err(|e| invalid(format!("cannot dump `{from}': {e}")))?;
            (tree.clone(), Hash::digest(expected.algo(), &nar))
        } else {
            let NarTree::File { contents, .. } = tree else {
                return Err(invalid(format!("`{from}' is not a regular file")));
            };
            let copy = NarTree::File {
                executable: false,
                contents: contents.clone(),
            };
            (copy, Hash::digest(expected.algo(), contents))
        };
        if content_hash != *expected {
            return Err(invalid(format!(
                "`{from}' does not have the expected contents any more"
            )));
        }
        let nar = copy
            .to_nar()
            .map_err(|e| invalid(format!("cannot dump `{from}': {e}")))?;
        // Copied under a temporary name, then renamed: durable.
        self.written.items.insert(to.clone(), copy.clone());
        self.durable.items.insert(to, copy);
        Ok(EffectOutput::Measured(Measured {
            nar_hash: Hash::sha256(&nar),
            nar_size: nar.len() as u64,
            content_hash,
        }))
    }

    // ---- builds

    fn prepare_build(&mut self, build: BuildId, plan: BuildPlan) -> EffectResult {
        if self.builds.contains_key(&build) {
            return Err(invalid(format!(
                "guixd bug: build {} prepared twice",
                build.0
            )));
        }
        let build_dir = format!("/tmp/guix-build-{}-{}", plan.drv_path.name(), build.0);
        self.builds.insert(
            build,
            FakeBuild {
                plan,
                chroot_items: BTreeMap::new(),
            },
        );
        Ok(EffectOutput::BuildPrepared {
            build_dir,
            notes: Vec::new(),
        })
    }

    /// os's `collect_outputs`, for what the fake builder wrote.
    fn collect_outputs(
        &mut self,
        build: BuildId,
        outputs: &[OutputCheck],
        candidates: &BTreeSet<StorePath>,
        keep_in_chroot: bool,
    ) -> EffectResult {
        let Some(fb) = self.builds.get(&build) else {
            return Err(invalid(format!("guixd bug: unknown build {}", build.0)));
        };
        let chroot = fb.plan.chroot;
        let drv = fb.plan.drv_path.clone();
        let mut results = Vec::with_capacity(outputs.len());
        let mut moves = Vec::new();
        for check in outputs {
            let path = &check.path;
            let tree = if chroot {
                fb.chroot_items.get(path)
            } else {
                self.written.items.get(path)
            };
            let Some(tree) = tree else {
                results.push(Err(OutputRefused::Missing(format!(
                    "builder for `{drv}' failed to produce output path `{path}'"
                ))));
                continue;
            };
            let nar = tree
                .to_nar()
                .map_err(|e| invalid(format!("cannot dump `{path}': {e}")))?;
            let nar_hash = Hash::sha256(&nar);
            if let Some(fixed) = &check.fixed {
                let got = if fixed.recursive {
                    Hash::digest(fixed.hash.algo(), &nar)
                } else {
                    match tree {
                        NarTree::File {
                            executable: false,
                            contents,
                        } => Hash::digest(fixed.hash.algo(), contents),
                        _ => {
                            results.push(Err(OutputRefused::Rejected(format!(
                                "output path `{path}' should be a non-executable regular file"
                            ))));
                            continue;
                        }
                    }
                };
                if got != fixed.hash {
                    results.push(Err(OutputRefused::HashMismatch {
                        trace_line: format!(
                            "@ hash-mismatch {path} {} {} {}",
                            fixed.hash_algo_field,
                            fixed.hash.to_report_string(),
                            got.to_report_string()
                        ),
                        message: format!("hash mismatch for store item '{path}'"),
                    }));
                    continue;
                }
            }
            let references = candidates
                .iter()
                .filter(|c| c.hash_part().is_some_and(|h| contains(&nar, h.as_bytes())))
                .cloned()
                .collect();
            if chroot && !keep_in_chroot {
                moves.push((path.clone(), tree.clone()));
            }
            results.push(Ok(OutputFound {
                path: path.clone(),
                nar_hash,
                nar_size: nar.len() as u64,
                references,
            }));
        }
        for (path, tree) in moves {
            // Moved into the store by a rename: durable from here on.
            self.written.items.insert(path.clone(), tree.clone());
            self.durable.items.insert(path, tree);
        }
        Ok(EffectOutput::Outputs(results))
    }

    // ---- files

    fn upload_start(&mut self, upload: UploadId, kind: UploadKind, algo: HashAlgo) -> EffectResult {
        if self.uploads.contains_key(&upload) {
            return Err(invalid(format!(
                "guixd bug: upload {} started twice",
                upload.0
            )));
        }
        let hashes = match kind {
            UploadKind::Recursive => Hashes::Recursive {
                nar: Hasher::new(HashAlgo::Sha256),
                content: (algo != HashAlgo::Sha256).then(|| Hasher::new(algo)),
            },
            UploadKind::Flat => Hashes::Flat { algo, file: None },
        };
        self.uploads.insert(
            upload,
            Upload {
                parser: NarParser::new(self.config.nar_limits.clone()),
                flat: kind == UploadKind::Flat,
                hashes,
                builder: TreeBuilder::default(),
                state: UploadState::Receiving,
            },
        );
        Ok(EffectOutput::Done)
    }

    fn upload_mut(&mut self, upload: UploadId) -> Result<&mut Upload, EffectError> {
        self.uploads
            .get_mut(&upload)
            .ok_or_else(|| invalid(format!("guixd bug: unknown upload {}", upload.0)))
    }

    fn upload_install(&mut self, upload: UploadId, dest: StorePath) -> EffectResult {
        let u = self.upload_mut(upload)?;
        let tree = match &u.state {
            UploadState::Finished(_) => u.builder.root.take(),
            UploadState::Receiving => {
                return Err(invalid("guixd bug: installing an unfinished upload"));
            }
            UploadState::Failed(e) => return Err(e.clone()),
        };
        // A finished upload always has its root; an empty directory stands
        // in should the builder ever disagree.
        let tree = tree.unwrap_or(NarTree::Directory(BTreeMap::new()));
        self.uploads.remove(&upload);
        // The rename replaces any leftover and is the durable point.
        self.written.items.insert(dest.clone(), tree.clone());
        self.durable.items.insert(dest, tree);
        Ok(EffectOutput::Done)
    }

    fn write_text(&mut self, dest: StorePath, contents: Vec<u8>) -> EffectOutput {
        let measured = Measured {
            nar_hash: hash_file_nar(HashAlgo::Sha256, false, &contents),
            nar_size: file_nar_size(false, contents.len() as u64),
            content_hash: Hash::sha256(&contents),
        };
        let tree = NarTree::File {
            executable: false,
            contents,
        };
        self.written.items.insert(dest.clone(), tree.clone());
        self.durable.items.insert(dest, tree);
        EffectOutput::Measured(measured)
    }

    fn read_store_file(&self, path: &StorePath, max_bytes: u64) -> EffectResult {
        match self.written.items.get(path) {
            None => Err(EffectError::new(
                EffectErrorKind::NotFound,
                format!("reading file `{path}': No such file or directory"),
            )),
            Some(NarTree::File { contents, .. }) => {
                if contents.len() as u64 > max_bytes {
                    return Err(invalid(format!(
                        "file `{path}' is too large ({} bytes, the limit is {max_bytes})",
                        contents.len()
                    )));
                }
                Ok(EffectOutput::Bytes(contents.clone()))
            }
            Some(_) => Err(invalid(format!("`{path}' is not a regular file"))),
        }
    }

    fn dump_start(&mut self, dump: DumpId, path: &StorePath) -> EffectResult {
        let Some(tree) = self.written.items.get(path) else {
            return Err(EffectError::new(
                EffectErrorKind::NotFound,
                not_found_attributes(path).message,
            ));
        };
        if self.dumps.contains_key(&dump) {
            return Err(invalid(format!("guixd bug: dump {} started twice", dump.0)));
        }
        let nar = tree
            .to_nar()
            .map_err(|e| invalid(format!("cannot dump `{path}': {e}")))?;
        let end = (Hash::sha256(&nar), nar.len() as u64);
        self.dumps.insert(
            dump,
            Dump {
                nar,
                pos: 0,
                end,
                failed: None,
            },
        );
        Ok(EffectOutput::Done)
    }

    // ---- the garbage collector

    fn gc_lock(&mut self, owner: u64, wait: bool) -> EffectResult {
        self.gc.collections += 1;
        match self.gc.owner {
            None => {
                self.gc.owner = Some(owner);
                Ok(EffectOutput::Locked(true))
            }
            Some(o) if o == owner => Err(invalid(
                "guixd bug: the garbage collector lock was taken twice",
            )),
            Some(_) if !wait => Ok(EffectOutput::Locked(false)),
            // Nothing here can block; a real process would wait forever
            // if the holder never released it.
            Some(_) => Err(EffectError::new(
                EffectErrorKind::Io(EDEADLK),
                "waiting for the garbage collector lock would never end in the in-memory store",
            )),
        }
    }

    fn find_roots(&self) -> FoundRoots {
        let mut found = FoundRoots::default();
        for (link, path) in &self.gc.roots {
            if self.db.valid.contains_key(path) {
                found.roots.push((link.clone(), path.clone()));
            } else {
                found
                    .messages
                    .push(format!("skipping invalid root from `{link}' to `{path}'"));
            }
        }
        found
    }

    fn gc_snapshot(&self) -> EffectOutput {
        let ids: BTreeMap<&StorePath, i64> = self
            .db
            .valid
            .keys()
            .enumerate()
            .map(|(i, p)| (p, i as i64 + 1))
            .collect();
        let mut rows = GcRows::default();
        for (path, info) in &self.db.valid {
            let id = ids[path];
            rows.paths.push(PathRow {
                id,
                path: path.to_string(),
                deriver: info.deriver.as_ref().map(|d| d.to_string()),
                nar_size: info.nar_size,
            });
            for r in &info.references {
                if let Some(&rid) = ids.get(r) {
                    rows.references.push((id, rid));
                }
            }
        }
        for (drv, outputs) in &self.db.derivation_outputs {
            if let Some(&id) = ids.get(drv) {
                for out in outputs.values() {
                    rows.derivation_outputs.push((id, out.to_string()));
                }
            }
        }
        let mut entries: Vec<String> = self
            .written
            .items
            .keys()
            .map(|p| p.base_name().to_owned())
            .chain(
                self.written
                    .lock_files
                    .iter()
                    .map(|p| format!("{}.lock", p.base_name())),
            )
            .collect();
        entries.sort();
        entries.dedup();
        EffectOutput::GcSnapshot { rows, entries }
    }

    fn gc_delete(&mut self, path: &StorePath, expect_valid: bool) -> EffectResult {
        let mut nar_size = 0;
        if let Some(info) = self.db.valid.get(path) {
            if !expect_valid {
                return Ok(EffectOutput::GcDeleted(DeleteOutcome::BecameValid));
            }
            let users: Vec<String> = self
                .referrers(path)
                .into_iter()
                .filter(|r| r != path)
                .map(StorePath::into_string)
                .collect();
            if !users.is_empty() {
                return Ok(EffectOutput::GcDeleted(DeleteOutcome::InUse {
                    referrers: users,
                }));
            }
            nar_size = info.nar_size;
            self.db.valid.remove(path);
            self.db.derivation_outputs.remove(path);
            for paths in self.db.flat_content.values_mut() {
                paths.remove(path);
            }
        }
        // A lock file is an entry of the store directory of its own.
        if let Some(base) = path
            .as_str()
            .strip_suffix(".lock")
            .and_then(|b| self.config.store_dir.parse_path(b).ok())
        {
            if self.written.lock_files.remove(&base) && !self.held_locks.contains(&base) {
                self.durable.lock_files.remove(&base);
                return Ok(EffectOutput::GcDeleted(DeleteOutcome::Deleted {
                    existed: true,
                    freed_bytes: 0,
                    invalidated_bytes: 0,
                    note: None,
                }));
            }
        }
        let Some(tree) = self.written.items.remove(path) else {
            return Ok(EffectOutput::GcDeleted(DeleteOutcome::Deleted {
                existed: false,
                freed_bytes: 0,
                invalidated_bytes: 0,
                note: None,
            }));
        };
        self.durable.items.remove(path);
        let outcome = if matches!(tree, NarTree::Directory(_)) {
            self.gc.trash.push(tree);
            DeleteOutcome::Deleted {
                existed: true,
                freed_bytes: 0,
                invalidated_bytes: nar_size,
                note: None,
            }
        } else {
            DeleteOutcome::Deleted {
                existed: true,
                freed_bytes: files_size(&tree),
                invalidated_bytes: 0,
                note: None,
            }
        };
        Ok(EffectOutput::GcDeleted(outcome))
    }

    /// `verify-store` without repair, saying what the os layer says.
    fn verify_store(&mut self, check_contents: bool) -> EffectOutput {
        let mut report = VerifyReport::default();
        let say = |report: &mut VerifyReport, level, text: String| {
            report.messages.push((level, text));
        };
        say(&mut report, GcLevel::Error, "reading the store...".into());
        say(
            &mut report,
            GcLevel::Info,
            "checking path existence...".into(),
        );
        let paths: Vec<StorePath> = self.db.valid.keys().cloned().collect();
        // Referrers come first, so walk the vanished paths from those no
        // vanished path refers to.
        let vanished: BTreeSet<StorePath> = paths
            .iter()
            .filter(|p| !self.written.items.contains_key(*p))
            .cloned()
            .collect();
        for path in &vanished {
            let kept = self
                .referrers(path)
                .into_iter()
                .any(|r| &r != path && !vanished.contains(&r));
            if kept {
                say(
                    &mut report,
                    GcLevel::Error,
                    format!("path `{path}' disappeared, but it still has valid referrers!"),
                );
                report.errors = true;
                report.repairable.push(Repairable {
                    path: path.clone(),
                    vanished: true,
                    message_index: report.messages.len() - 1,
                });
            }
        }
        // Invalidate what can go, referrers before what they refer to.
        let mut left: BTreeSet<StorePath> = vanished;
        loop {
            let ready: Vec<StorePath> = left
                .iter()
                .filter(|p| self.referrers(p).into_iter().all(|r| &r == *p))
                .cloned()
                .collect();
            if ready.is_empty() {
                break;
            }
            for path in ready {
                say(
                    &mut report,
                    GcLevel::Error,
                    format!("path `{path}' disappeared, removing from database..."),
                );
                self.db.valid.remove(&path);
                self.db.derivation_outputs.remove(&path);
                left.remove(&path);
            }
        }
        if check_contents {
            say(&mut report, GcLevel::Info, "checking hashes...".into());
            for (path, info) in &self.db.valid {
                let Some(tree) = self.written.items.get(path) else {
                    continue;
                };
                let Ok(nar) = tree.to_nar() else { continue };
                let hash = Hash::sha256(&nar);
                if hash != info.nar_hash {
                    report.messages.push((
                        GcLevel::Error,
                        format!(
                            "path `{path}' was modified! expected hash `{}', got `{}'",
                            info.nar_hash.to_hex(),
                            hash.to_hex()
                        ),
                    ));
                    report.errors = true;
                    report.repairable.push(Repairable {
                        path: path.clone(),
                        vanished: false,
                        message_index: report.messages.len() - 1,
                    });
                }
            }
        }
        EffectOutput::Verified(report)
    }

    fn try_lock_path(&mut self, path: StorePath) -> EffectResult {
        if self.held_locks.contains(&path) {
            return Err(EffectError::new(
                EffectErrorKind::Io(EDEADLK),
                "deadlock: trying to re-acquire self-held lock",
            ));
        }
        self.written.lock_files.insert(path.clone());
        if self.foreign_locks.contains(&path) {
            return Ok(EffectOutput::Locked(false));
        }
        self.held_locks.insert(path);
        Ok(EffectOutput::Locked(true))
    }
}

/// Bytes of the regular files and symlink targets of `tree`.
fn files_size(tree: &NarTree) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![tree];
    while let Some(t) = stack.pop() {
        match t {
            NarTree::File { contents, .. } => total += contents.len() as u64,
            NarTree::Symlink { target } => total += target.len() as u64,
            NarTree::Directory(entries) => stack.extend(entries.values()),
        }
    }
    total
}

/// The signature the fake `guix authenticate` makes for `hash`.
pub fn fake_signature(hash: &Hash) -> Vec<u8> {
    format!("(signature {} guixd-testkit)", hash.to_hex()).into_bytes()
}

/// The hex hash a fake signature covers, if it is one.
pub fn verify_fake_signature(signature: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(signature).ok()?;
    let hex = text
        .strip_prefix("(signature ")?
        .strip_suffix(" guixd-testkit)")?;
    (!hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_owned())
}

/// A short name for an effect's kind, for logs and statistics.
pub fn effect_kind(effect: &Effect) -> &'static str {
    match effect {
        Effect::QueryPathInfo { .. } => "QueryPathInfo",
        Effect::QueryValidPaths { .. } => "QueryValidPaths",
        Effect::QueryReferrers { .. } => "QueryReferrers",
        Effect::QueryValidDerivers { .. } => "QueryValidDerivers",
        Effect::QueryDerivationOutputs { .. } => "QueryDerivationOutputs",
        Effect::QueryAllValidPaths => "QueryAllValidPaths",
        Effect::QueryPathFromHashPart { .. } => "QueryPathFromHashPart",
        Effect::QueryFailedPaths => "QueryFailedPaths",
        Effect::Register { .. } => "Register",
        Effect::ClearFailedPaths { .. } => "ClearFailedPaths",
        Effect::UploadStart { .. } => "UploadStart",
        Effect::UploadChunk { .. } => "UploadChunk",
        Effect::UploadFinish { .. } => "UploadFinish",
        Effect::UploadDiscard { .. } => "UploadDiscard",
        Effect::UploadInstall { .. } => "UploadInstall",
        Effect::WriteText { .. } => "WriteText",
        Effect::Deduplicate { .. } => "Deduplicate",
        Effect::ReadStoreFile { .. } => "ReadStoreFile",
        Effect::DumpStart { .. } => "DumpStart",
        Effect::DumpNext { .. } => "DumpNext",
        Effect::DumpEnd { .. } => "DumpEnd",
        Effect::TryLockPath { .. } => "TryLockPath",
        Effect::UnlockPath { .. } => "UnlockPath",
        Effect::AddTempRoot { .. } => "AddTempRoot",
        Effect::AddIndirectRoot { .. } => "AddIndirectRoot",
        Effect::Sign { .. } => "Sign",
        Effect::Verify { .. } => "Verify",
        Effect::SubstitutesHave { .. } => "SubstitutesHave",
        Effect::SubstitutesInfo { .. } => "SubstitutesInfo",
        Effect::CreateUserProfileDir { .. } => "CreateUserProfileDir",
        Effect::QueryClosure { .. } => "QueryClosure",
        Effect::PrepareBuild { .. } => "PrepareBuild",
        Effect::CollectOutputs { .. } => "CollectOutputs",
        Effect::FinishBuild { .. } => "FinishBuild",
        Effect::LogOpen { .. } => "LogOpen",
        Effect::LogWrite { .. } => "LogWrite",
        Effect::LogClose { .. } => "LogClose",
        Effect::RecordFailedPaths { .. } => "RecordFailedPaths",
        Effect::QueryPathsByNarHash { .. } => "QueryPathsByNarHash",
        Effect::FindFlatContent { .. } => "FindFlatContent",
        Effect::IndexFlatContent { .. } => "IndexFlatContent",
        Effect::CopyIntoOutput { .. } => "CopyIntoOutput",
        Effect::GcLock { .. } => "GcLock",
        Effect::GcRelease { .. } => "GcRelease",
        Effect::GcReadTempRoots => "GcReadTempRoots",
        Effect::GcFindRoots => "GcFindRoots",
        Effect::GcRuntimeRoots => "GcRuntimeRoots",
        Effect::GcSnapshot => "GcSnapshot",
        Effect::GcPrepareTrash => "GcPrepareTrash",
        Effect::GcDeletePath { .. } => "GcDeletePath",
        Effect::GcEmptyTrash => "GcEmptyTrash",
        Effect::GcRemoveUnusedLinks => "GcRemoveUnusedLinks",
        Effect::VerifyStore { .. } => "VerifyStore",
        Effect::OptimiseStore => "OptimiseStore",
    }
}

/// What a fake builder did when it was started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeRun {
    /// The pid to report with `handle_child_started`.
    pub pid: u32,
    /// Everything it printed.
    pub log: Vec<u8>,
    pub exit: ExitStatus,
}

/// A prepared build: its plan, and what its fake builder wrote into the
/// chroot.
#[derive(Debug)]
struct FakeBuild {
    plan: BuildPlan,
    chroot_items: BTreeMap<StorePath, NarTree>,
}

/// One step to undo when a registration group is rolled back.
enum Undo {
    Valid(StorePath, Option<ValidPathInfo>),
    Outputs(StorePath, Option<BTreeMap<String, StorePath>>),
}

#[derive(Debug)]
struct Upload {
    parser: NarParser,
    flat: bool,
    hashes: Hashes,
    builder: TreeBuilder,
    state: UploadState,
}

#[derive(Debug)]
enum UploadState {
    Receiving,
    Finished(Measured),
    Failed(EffectError),
}

#[derive(Debug)]
enum Hashes {
    Recursive {
        nar: Hasher,
        content: Option<Hasher>,
    },
    Flat {
        algo: HashAlgo,
        /// The one-file NAR hasher, the content hasher and the size, once
        /// the file's header was read.
        file: Option<(FileNarHasher, Hasher, u64)>,
    },
}

impl Upload {
    fn chunk(&mut self, data: &[u8]) -> Result<(), EffectError> {
        self.receiving()?;
        let result = self.take_chunk(data);
        if let Err(e) = &result {
            self.state = UploadState::Failed(e.clone());
        }
        result
    }

    fn finish(&mut self) -> Result<Measured, EffectError> {
        if let UploadState::Finished(m) = self.state {
            return Ok(m);
        }
        self.receiving()?;
        let result = self.measure();
        self.state = match &result {
            Ok(m) => UploadState::Finished(*m),
            Err(e) => UploadState::Failed(e.clone()),
        };
        result
    }

    fn receiving(&self) -> Result<(), EffectError> {
        match &self.state {
            UploadState::Receiving => Ok(()),
            UploadState::Finished(_) => Err(invalid(
                "guixd bug: data for an upload that is already complete",
            )),
            UploadState::Failed(e) => Err(e.clone()),
        }
    }

    fn take_chunk(&mut self, data: &[u8]) -> Result<(), EffectError> {
        if self.parser.is_done() {
            if data.is_empty() {
                return Ok(());
            }
            return Err(nar_error(NarError::TrailingBytes { count: data.len() }));
        }
        if let Hashes::Recursive { nar, content } = &mut self.hashes {
            nar.update(data);
            if let Some(h) = content {
                h.update(data);
            }
        }
        let mut pos = 0;
        while pos < data.len() {
            let step = self.parser.feed(&data[pos..]).map_err(nar_error)?;
            pos += step.consumed;
            match step.outcome {
                Outcome::NeedMore => break,
                Outcome::Done => {
                    if pos < data.len() {
                        return Err(nar_error(NarError::TrailingBytes {
                            count: data.len() - pos,
                        }));
                    }
                    break;
                }
                Outcome::Event(event) => {
                    if self.flat
                        && matches!(event, NarEvent::Directory { .. } | NarEvent::Symlink { .. })
                    {
                        return Err(invalid("regular file expected"));
                    }
                    if let Hashes::Flat { algo, file } = &mut self.hashes {
                        match event {
                            NarEvent::File { size_bytes, .. } => {
                                *file = Some((
                                    FileNarHasher::new(HashAlgo::Sha256, false, size_bytes),
                                    Hasher::new(*algo),
                                    size_bytes,
                                ));
                            }
                            NarEvent::FileData(d) => {
                                if let Some((nar, content, _)) = file {
                                    content.update(d);
                                    nar.update(d)
                                        .map_err(|e| invalid(format!("guixd bug: {e}")))?;
                                }
                            }
                            _ => {}
                        }
                    }
                    self.builder.event(event, self.flat);
                }
            }
        }
        Ok(())
    }

    fn measure(&mut self) -> Result<Measured, EffectError> {
        if !self.parser.is_done() {
            return Err(nar_error(NarError::Truncated));
        }
        match &mut self.hashes {
            Hashes::Recursive { nar, content } => {
                let nar_hash = nar.clone().finish();
                Ok(Measured {
                    nar_hash,
                    nar_size: self.parser.consumed_bytes(),
                    content_hash: content.take().map_or(nar_hash, Hasher::finish),
                })
            }
            Hashes::Flat { file, .. } => {
                let Some((nar, content, size_bytes)) = file.take() else {
                    return Err(invalid("regular file expected"));
                };
                let nar_hash = nar
                    .finish()
                    .map_err(|e| invalid(format!("guixd bug: {e}")))?;
                Ok(Measured {
                    nar_hash,
                    nar_size: file_nar_size(false, size_bytes),
                    content_hash: content.finish(),
                })
            }
        }
    }
}

/// A directory being assembled: its name and its entries so far.
type OpenDir = (Vec<u8>, BTreeMap<Vec<u8>, NarTree>);

/// Assembles a tree from the parser's (well-formed) events.
#[derive(Debug, Default)]
struct TreeBuilder {
    /// Open directories, innermost last: name and entries so far.
    open: Vec<OpenDir>,
    file: Option<(Vec<u8>, bool, Vec<u8>)>,
    root: Option<NarTree>,
}

impl TreeBuilder {
    fn event(&mut self, event: NarEvent<'_>, flat: bool) {
        match event {
            NarEvent::Directory { name } => self.open.push((name.to_vec(), BTreeMap::new())),
            NarEvent::DirectoryEnd => {
                if let Some((name, entries)) = self.open.pop() {
                    self.add(name, NarTree::Directory(entries));
                }
            }
            NarEvent::File {
                name, executable, ..
            } => {
                // A flat item is its contents only: never executable.
                self.file = Some((name.to_vec(), executable && !flat, Vec::new()));
            }
            NarEvent::FileData(data) => {
                if let Some((_, _, contents)) = &mut self.file {
                    contents.extend_from_slice(data);
                }
            }
            NarEvent::FileEnd => {
                if let Some((name, executable, contents)) = self.file.take() {
                    self.add(
                        name,
                        NarTree::File {
                            executable,
                            contents,
                        },
                    );
                }
            }
            NarEvent::Symlink { name, target } => self.add(
                name.to_vec(),
                NarTree::Symlink {
                    target: target.to_vec(),
                },
            ),
        }
    }

    fn add(&mut self, name: Vec<u8>, node: NarTree) {
        match self.open.last_mut() {
            Some((_, entries)) => {
                entries.insert(name, node);
            }
            None => self.root = Some(node),
        }
    }
}

#[derive(Debug)]
struct Dump {
    nar: Vec<u8>,
    pos: usize,
    end: (Hash, u64),
    failed: Option<EffectError>,
}

impl Dump {
    fn next(&mut self, max_bytes: usize) -> EffectOutput {
        let n = max_bytes.max(1).min(self.nar.len() - self.pos);
        let data = self.nar[self.pos..self.pos + n].to_vec();
        self.pos += n;
        let end = (self.pos == self.nar.len()).then_some(self.end);
        EffectOutput::DumpChunk { data, end }
    }
}

/// The path at which a depth-first walk of `members` (roots and
/// references in path order) first comes back to a path it is inside, as
/// os names it.
fn first_cycle(
    members: &BTreeSet<&StorePath>,
    mut references: impl FnMut(&StorePath) -> Vec<StorePath>,
) -> Option<StorePath> {
    let mut visited: BTreeSet<StorePath> = BTreeSet::new();
    let mut parents: BTreeSet<StorePath> = BTreeSet::new();
    let mut stack: Vec<(StorePath, Vec<StorePath>, usize)> = Vec::new();
    for &root in members {
        if !visited.insert(root.clone()) {
            continue;
        }
        parents.insert(root.clone());
        stack.push((root.clone(), references(root), 0));
        while let Some((path, refs, next)) = stack.last_mut() {
            if *next == refs.len() {
                parents.remove(path);
                stack.pop();
                continue;
            }
            let child = refs[*next].clone();
            *next += 1;
            if parents.contains(&child) {
                return Some(child);
            }
            if visited.insert(child.clone()) {
                parents.insert(child.clone());
                let child_refs = references(&child);
                stack.push((child, child_refs, 0));
            }
        }
    }
    None
}

fn violations_of(db: &Db, disk: &Disk) -> Vec<String> {
    let mut found = Vec::new();
    for (path, info) in &db.valid {
        if !disk.items.contains_key(path) {
            found.push(format!("valid path `{path}' has no files"));
        }
        for r in &info.references {
            if !db.valid.contains_key(r) {
                found.push(format!(
                    "valid path `{path}' refers to `{r}', which is not valid"
                ));
            }
        }
    }
    for drv in db.derivation_outputs.keys() {
        if !db.valid.contains_key(drv) {
            found.push(format!(
                "derivation outputs recorded for `{drv}', which is not valid"
            ));
        }
    }
    found
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A substituter that prints nothing and gives `answer`.
fn substituter_answer(answer: EffectOutput) -> EffectOutput {
    EffectOutput::Substituter {
        diagnostics: Vec::new(),
        answer: Ok(Box::new(answer)),
    }
}

fn unknown_log(log: LogId) -> EffectError {
    invalid(format!("guixd bug: unknown build log {}", log.0))
}

fn invalid(message: impl Into<String>) -> EffectError {
    EffectError::new(EffectErrorKind::Invalid, message)
}

fn nar_error(e: NarError) -> EffectError {
    invalid(e.to_string())
}

fn not_found_attributes(path: &StorePath) -> EffectError {
    EffectError::new(
        EffectErrorKind::Io(ENOENT),
        format!("getting attributes of path `{path}': No such file or directory"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use guixd_core::effect::Registration;
    use guixd_core::nar::file_nar;

    fn store_dir() -> StoreDir {
        StoreDir::new("/gnu/store").unwrap()
    }

    fn mem() -> MemStore {
        MemStore::new(MemStoreConfig::new(store_dir()))
    }

    fn path(name: &str) -> StorePath {
        store_dir()
            .make_text_path(name, &Hash::sha256(name.as_bytes()), [])
            .unwrap()
    }

    fn reg(p: &StorePath, refs: &[&StorePath]) -> Registration {
        Registration {
            info: ValidPathInfo {
                path: p.clone(),
                deriver: None,
                nar_hash: Hash::sha256(p.as_str().as_bytes()),
                references: refs.iter().map(|r| (*r).clone()).collect(),
                registration_time: 0,
                nar_size: 100,
            },
            derivation_outputs: Vec::new(),
        }
    }

    fn write(m: &mut MemStore, p: &StorePath) {
        m.run(Effect::WriteText {
            dest: p.clone(),
            contents: p.as_str().as_bytes().to_vec(),
        })
        .unwrap();
    }

    fn register(m: &mut MemStore, groups: Vec<Vec<Registration>>) -> Vec<Result<(), EffectError>> {
        let groups = groups
            .into_iter()
            .map(|items| RegistrationGroup { items })
            .collect();
        match m.run(Effect::Register { groups }).unwrap() {
            EffectOutput::Registered(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_group_with_an_unknown_reference_fails_alone() {
        let mut m = mem();
        let (a, b, c) = (path("a"), path("b"), path("c"));
        for p in [&a, &b, &c] {
            write(&mut m, p);
        }
        m.set_now(77);
        let r = register(
            &mut m,
            vec![
                vec![reg(&a, &[])],
                vec![reg(&b, &[&c])],
                vec![reg(&c, &[&a])],
            ],
        );
        assert_eq!(r[0], Ok(()));
        assert_eq!(r[1].clone().unwrap_err().message, "path `%1%' is not valid");
        assert_eq!(r[2], Ok(()));
        assert!(m.is_valid(&a) && !m.is_valid(&b) && m.is_valid(&c));
        assert_eq!(m.path_info(&a).unwrap().registration_time, 77);
        assert_eq!(
            m.path_info(&c).unwrap().references,
            BTreeSet::from([a.clone()])
        );
        assert!(m.violations().is_empty());
        // Referrers, valid subsets and all valid paths.
        assert_eq!(
            m.run(Effect::QueryReferrers { path: a.clone() }).unwrap(),
            EffectOutput::Paths(BTreeSet::from([c.clone()]))
        );
        assert_eq!(
            m.run(Effect::QueryValidPaths {
                paths: vec![a.clone(), b.clone()]
            })
            .unwrap(),
            EffectOutput::Paths(BTreeSet::from([a.clone()]))
        );
        assert_eq!(
            m.run(Effect::QueryReferrers { path: b.clone() }).unwrap(),
            EffectOutput::Paths(BTreeSet::new())
        );
    }

    #[test]
    fn a_cycle_fails_its_group_and_registering_again_updates_size_and_hash() {
        let mut m = mem();
        let (a, b) = (path("a"), path("b"));
        write(&mut m, &a);
        write(&mut m, &b);
        let r = register(&mut m, vec![vec![reg(&a, &[&b, &a]), reg(&b, &[&a])]]);
        let named = if a < b { &a } else { &b };
        assert_eq!(
            r[0].clone().unwrap_err().message,
            format!("cycle detected in the references of `{named}'")
        );
        assert!(!m.is_valid(&a) && !m.is_valid(&b));
        // A self-reference alone is fine.
        assert_eq!(register(&mut m, vec![vec![reg(&a, &[&a])]]), vec![Ok(())]);
        let mut again = reg(&a, &[]);
        again.info.nar_size = 5;
        again.info.deriver = Some(b.clone());
        assert_eq!(register(&mut m, vec![vec![again]]), vec![Ok(())]);
        let info = m.path_info(&a).unwrap();
        assert_eq!((info.nar_size, info.deriver.as_ref()), (5, None));
        assert_eq!(info.references, BTreeSet::from([a.clone()]));
    }

    #[test]
    fn uploads_restore_hash_and_install_like_os() {
        let mut m = mem();
        let tree = NarTree::Directory(BTreeMap::from([
            (
                b"bin".to_vec(),
                NarTree::File {
                    executable: true,
                    contents: b"#!/bin/sh\n".to_vec(),
                },
            ),
            (
                b"link".to_vec(),
                NarTree::Symlink {
                    target: b"bin".to_vec(),
                },
            ),
        ]));
        let nar = tree.to_nar().unwrap();
        let up = UploadId(1);
        m.run(Effect::UploadStart {
            upload: up,
            kind: UploadKind::Recursive,
            algo: HashAlgo::Sha1,
        })
        .unwrap();
        for chunk in nar.chunks(7) {
            m.run(Effect::UploadChunk {
                upload: up,
                data: chunk.to_vec(),
            })
            .unwrap();
        }
        let EffectOutput::Measured(measured) = m.run(Effect::UploadFinish { upload: up }).unwrap()
        else {
            panic!()
        };
        assert_eq!(measured.nar_hash, Hash::sha256(&nar));
        assert_eq!(measured.content_hash, Hash::digest(HashAlgo::Sha1, &nar));
        assert_eq!(measured.nar_size, nar.len() as u64);
        let dest = path("dest");
        m.run(Effect::UploadInstall {
            upload: up,
            dest: dest.clone(),
        })
        .unwrap();
        assert_eq!(m.item(&dest), Some(&tree));
        assert_eq!(m.open_uploads(), 0);
        // Installed uploads are forgotten.
        assert_eq!(
            m.run(Effect::UploadFinish { upload: up })
                .unwrap_err()
                .message,
            "guixd bug: unknown upload 1"
        );
    }

    #[test]
    fn flat_uploads_take_one_file_and_refuse_anything_else() {
        let mut m = mem();
        let contents = b"flat contents".to_vec();
        m.run(Effect::UploadStart {
            upload: UploadId(1),
            kind: UploadKind::Flat,
            algo: HashAlgo::Md5,
        })
        .unwrap();
        m.run(Effect::UploadChunk {
            upload: UploadId(1),
            data: file_nar(true, &contents),
        })
        .unwrap();
        let EffectOutput::Measured(measured) = m
            .run(Effect::UploadFinish {
                upload: UploadId(1),
            })
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            measured.content_hash,
            Hash::digest(HashAlgo::Md5, &contents)
        );
        assert_eq!(
            measured.nar_hash,
            hash_file_nar(HashAlgo::Sha256, false, &contents)
        );
        let dest = path("flat");
        m.run(Effect::UploadInstall {
            upload: UploadId(1),
            dest: dest.clone(),
        })
        .unwrap();
        assert_eq!(
            m.item(&dest),
            Some(&NarTree::File {
                executable: false,
                contents
            })
        );

        m.run(Effect::UploadStart {
            upload: UploadId(2),
            kind: UploadKind::Flat,
            algo: HashAlgo::Sha256,
        })
        .unwrap();
        let dir = NarTree::Directory(BTreeMap::new()).to_nar().unwrap();
        let e = m
            .run(Effect::UploadChunk {
                upload: UploadId(2),
                data: dir,
            })
            .unwrap_err();
        assert_eq!(e.message, "regular file expected");
        // A failed upload repeats its error.
        assert_eq!(
            m.run(Effect::UploadFinish {
                upload: UploadId(2)
            })
            .unwrap_err(),
            e
        );
    }

    #[test]
    fn bad_and_truncated_nars_fail_with_the_parsers_words() {
        let mut m = mem();
        m.run(Effect::UploadStart {
            upload: UploadId(1),
            kind: UploadKind::Recursive,
            algo: HashAlgo::Sha256,
        })
        .unwrap();
        let nar = file_nar(false, b"x");
        m.run(Effect::UploadChunk {
            upload: UploadId(1),
            data: nar[..nar.len() - 8].to_vec(),
        })
        .unwrap();
        assert_eq!(
            m.run(Effect::UploadFinish {
                upload: UploadId(1)
            })
            .unwrap_err()
            .message,
            "unexpected end-of-file"
        );
        m.run(Effect::UploadStart {
            upload: UploadId(2),
            kind: UploadKind::Recursive,
            algo: HashAlgo::Sha256,
        })
        .unwrap();
        assert_eq!(
            m.run(Effect::UploadChunk {
                upload: UploadId(2),
                data: vec![0; 16],
            })
            .unwrap_err()
            .message,
            "bad archive: input doesn't look like a normalized archive"
        );
        assert_eq!(
            m.run(Effect::UploadStart {
                upload: UploadId(2),
                kind: UploadKind::Recursive,
                algo: HashAlgo::Sha256,
            })
            .unwrap_err()
            .message,
            "guixd bug: upload 2 started twice"
        );
        m.run(Effect::UploadDiscard {
            upload: UploadId(2),
        })
        .unwrap();
        m.run(Effect::UploadDiscard {
            upload: UploadId(2),
        })
        .unwrap();
    }

    #[test]
    fn dumps_give_the_nar_in_bounded_chunks_with_its_hash_at_the_end() {
        let mut m = mem();
        let p = path("text");
        write(&mut m, &p);
        let nar = m.item(&p).unwrap().to_nar().unwrap();
        m.run(Effect::DumpStart {
            dump: DumpId(3),
            path: p.clone(),
        })
        .unwrap();
        let mut got = Vec::new();
        loop {
            let EffectOutput::DumpChunk { data, end } = m
                .run(Effect::DumpNext {
                    dump: DumpId(3),
                    max_bytes: 10,
                })
                .unwrap()
            else {
                panic!()
            };
            assert!(data.len() <= 10);
            got.extend(data);
            if let Some((hash, size)) = end {
                assert_eq!((hash, size), (Hash::sha256(&nar), nar.len() as u64));
                break;
            }
        }
        assert_eq!(got, nar);
        m.run(Effect::DumpEnd { dump: DumpId(3) }).unwrap();
        assert_eq!(m.open_dumps(), 0);
        let missing = path("missing");
        let e = m
            .run(Effect::DumpStart {
                dump: DumpId(4),
                path: missing.clone(),
            })
            .unwrap_err();
        assert_eq!(e.kind, EffectErrorKind::NotFound);
        assert_eq!(
            e.message,
            format!("getting attributes of path `{missing}': No such file or directory")
        );
    }

    #[test]
    fn reading_store_files() {
        let mut m = mem();
        let p = path("drv");
        write(&mut m, &p);
        assert_eq!(
            m.run(Effect::ReadStoreFile {
                path: p.clone(),
                max_bytes: 1000
            })
            .unwrap(),
            EffectOutput::Bytes(p.as_str().as_bytes().to_vec())
        );
        assert_eq!(
            m.run(Effect::ReadStoreFile {
                path: p.clone(),
                max_bytes: 3
            })
            .unwrap_err()
            .message,
            format!(
                "file `{p}' is too large ({} bytes, the limit is 3)",
                p.as_str().len()
            )
        );
        let e = m
            .run(Effect::ReadStoreFile {
                path: path("none"),
                max_bytes: 3,
            })
            .unwrap_err();
        assert_eq!(e.kind, EffectErrorKind::NotFound);
    }

    #[test]
    fn the_collector_effects_delete_only_what_may_go() {
        let mut m = mem();
        let (a, b, c) = (path("a"), path("b"), path("c"));
        for p in [&a, &b, &c] {
            write(&mut m, p);
        }
        let r = register(
            &mut m,
            vec![vec![reg(&a, &[]), reg(&b, &[&a])], vec![reg(&c, &[])]],
        );
        assert!(r.iter().all(Result::is_ok));
        m.add_gc_root("/var/guix/gcroots/c", c.clone());
        m.add_gc_root("/var/guix/gcroots/gone", path("gone"));
        assert_eq!(
            m.run(Effect::GcLock {
                owner: 1,
                wait: false
            }),
            Ok(EffectOutput::Locked(true))
        );
        assert_eq!(
            m.run(Effect::GcLock {
                owner: 2,
                wait: false
            }),
            Ok(EffectOutput::Locked(false))
        );
        let Ok(EffectOutput::Roots(found)) = m.run(Effect::GcFindRoots) else {
            panic!("no roots");
        };
        assert_eq!(
            found.roots,
            vec![("/var/guix/gcroots/c".to_owned(), c.clone())]
        );
        assert_eq!(found.messages.len(), 1);
        let Ok(EffectOutput::GcSnapshot { rows, entries }) = m.run(Effect::GcSnapshot) else {
            panic!("no snapshot");
        };
        assert_eq!(rows.paths.len(), 3);
        assert_eq!(rows.references.len(), 1);
        assert_eq!(entries.len(), 3);
        // `a` is referred to by `b`: refused; `b` goes, then `a`.
        let delete =
            |m: &mut MemStore, p: &StorePath, expect_valid| match m.run(Effect::GcDeletePath {
                path: p.clone(),
                expect_valid,
            }) {
                Ok(EffectOutput::GcDeleted(outcome)) => outcome,
                other => panic!("{other:?}"),
            };
        assert_eq!(
            delete(&mut m, &a, true),
            DeleteOutcome::InUse {
                referrers: vec![b.to_string()]
            }
        );
        assert_eq!(delete(&mut m, &c, false), DeleteOutcome::BecameValid);
        assert!(matches!(
            delete(&mut m, &b, true),
            DeleteOutcome::Deleted { existed: true, .. }
        ));
        assert!(matches!(
            delete(&mut m, &a, true),
            DeleteOutcome::Deleted { existed: true, .. }
        ));
        assert!(!m.is_valid(&a) && !m.is_valid(&b) && m.is_valid(&c));
        assert!(m.violations().is_empty(), "{:?}", m.violations());
        m.run(Effect::GcRelease { owner: 2 }).unwrap();
        assert!(m.gc_locked(), "only the holder releases");
        m.run(Effect::GcRelease { owner: 1 }).unwrap();
        assert!(!m.gc_locked());
        // Files gone behind the database's back are found by verify-store.
        m.remove_files(&c);
        let Ok(EffectOutput::Verified(report)) = m.run(Effect::VerifyStore {
            check_contents: false,
        }) else {
            panic!("no report");
        };
        assert!(!report.errors);
        assert!(!m.is_valid(&c));
    }

    #[test]
    fn locks_and_roots() {
        let mut m = mem();
        let p = path("locked");
        assert_eq!(
            m.run(Effect::TryLockPath { path: p.clone() }).unwrap(),
            EffectOutput::Locked(true)
        );
        assert_eq!(
            m.run(Effect::TryLockPath { path: p.clone() })
                .unwrap_err()
                .message,
            "deadlock: trying to re-acquire self-held lock"
        );
        m.run(Effect::UnlockPath {
            path: p.clone(),
            delete: true,
        })
        .unwrap();
        assert!(m.held_locks().is_empty() && m.written().lock_files.is_empty());
        m.set_foreign_lock(p.clone(), true);
        assert_eq!(
            m.run(Effect::TryLockPath { path: p.clone() }).unwrap(),
            EffectOutput::Locked(false)
        );
        m.run(Effect::AddIndirectRoot {
            link: "/home/u/result".into(),
        })
        .unwrap();
        assert_eq!(m.written().indirect_roots.len(), 1);
        let name = m.written().indirect_roots.keys().next().unwrap();
        assert_eq!(name.len(), 32);
        m.run(Effect::AddTempRoot { path: p.clone() }).unwrap();
        assert!(m.temp_roots().contains(&p));
    }

    #[test]
    fn hash_parts_and_failed_paths() {
        let mut m = mem();
        let a = path("a");
        write(&mut m, &a);
        register(&mut m, vec![vec![reg(&a, &[])]]);
        assert_eq!(
            m.run(Effect::QueryPathFromHashPart {
                hash_part: a.hash_part().unwrap().to_owned()
            })
            .unwrap(),
            EffectOutput::Path(Some(a.clone()))
        );
        assert_eq!(
            m.run(Effect::QueryPathFromHashPart {
                hash_part: "0".repeat(32)
            })
            .unwrap(),
            EffectOutput::Path(None)
        );
        assert_eq!(
            m.run(Effect::QueryPathFromHashPart {
                hash_part: "short".into()
            })
            .unwrap_err()
            .message,
            "invalid hash part"
        );
        m.insert_failed("x");
        m.insert_failed("y");
        m.run(Effect::ClearFailedPaths {
            paths: vec!["x".into()],
        })
        .unwrap();
        assert_eq!(
            m.run(Effect::QueryFailedPaths).unwrap(),
            EffectOutput::Strings(BTreeSet::from(["y".to_owned()]))
        );
        m.run(Effect::ClearFailedPaths {
            paths: vec!["*".into()],
        })
        .unwrap();
        assert!(m.db().failed.is_empty());
    }

    #[test]
    fn a_crash_keeps_renamed_items_and_commits_and_drops_the_rest() {
        let mut m = mem();
        let (a, b) = (path("a"), path("b"));
        write(&mut m, &a);
        register(&mut m, vec![vec![reg(&a, &[])]]);
        // An upload in progress and a lock: process state, lost.
        m.run(Effect::UploadStart {
            upload: UploadId(9),
            kind: UploadKind::Recursive,
            algo: HashAlgo::Sha256,
        })
        .unwrap();
        m.run(Effect::TryLockPath { path: b.clone() }).unwrap();
        m.run(Effect::CreateUserProfileDir {
            user: "alice".into(),
            uid: 1000,
        })
        .unwrap();
        // An item moved into place but never registered: a leftover.
        write(&mut m, &b);
        m.crash();
        assert!(m.is_valid(&a) && m.item(&a).is_some());
        assert!(!m.is_valid(&b) && m.item(&b).is_some());
        assert_eq!(m.open_uploads(), 0);
        assert!(m.held_locks().is_empty());
        assert!(m.written().user_profiles.is_empty());
        assert!(m.violations().is_empty());
        assert!(m.durable_violations().is_empty());
    }

    #[test]
    fn violations_name_a_valid_path_without_files() {
        let mut m = mem();
        let a = path("a");
        register(&mut m, vec![vec![reg(&a, &[])]]);
        assert_eq!(
            m.violations(),
            vec![format!("valid path `{a}' has no files")]
        );
    }

    #[test]
    fn injected_failures_spend_streams() {
        let mut m = mem();
        m.run(Effect::UploadStart {
            upload: UploadId(1),
            kind: UploadKind::Recursive,
            algo: HashAlgo::Sha256,
        })
        .unwrap();
        let chunk = Effect::UploadChunk {
            upload: UploadId(1),
            data: file_nar(false, b"x"),
        };
        let e = m.injected_error(&chunk);
        assert!(e.message.ends_with(": Input/output error"));
        assert_eq!(m.fail(&chunk, e.clone()), Err(e.clone()));
        assert_eq!(m.run(chunk).unwrap_err(), e);
    }

    #[test]
    fn fake_signatures_verify_and_forgeries_do_not() {
        let h = Hash::sha256(b"x");
        let mut m = mem();
        let EffectOutput::Signature(sig) = m.run(Effect::Sign { hash: h }).unwrap() else {
            panic!()
        };
        assert_eq!(
            m.run(Effect::Verify { signature: sig }).unwrap(),
            EffectOutput::VerifiedHash(h.to_hex())
        );
        assert!(
            m.run(Effect::Verify {
                signature: b"(signature zz guixd-testkit)".to_vec()
            })
            .is_err()
        );
    }

    /// The same effects against MemStore and the real `guixd_os::Os` on a
    /// temporary store give the same results, texts included.
    #[test]
    fn results_and_error_texts_are_those_of_os() {
        use guixd_core::config::Dirs;
        use guixd_core::effect::Registration;
        use std::os::unix::fs::MetadataExt;

        let root =
            std::env::temp_dir().join(format!("guixd-memstore-parity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let meta = std::fs::metadata(&root).unwrap();
        let store_dir = StoreDir::new(root.join("store").to_str().unwrap()).unwrap();
        let typed = guixd_core::settings::Typed {
            reserved_size_bytes: 4096,
            ..Default::default()
        };
        let os = guixd_os::Os::open(guixd_os::OsConfig {
            dirs: Dirs {
                store: store_dir.clone(),
                state: root.join("state"),
                log: root.join("log"),
                db: root.join("state/db"),
                conf: root.join("etc"),
                guix_program: root.join("no-guix"),
            },
            settings: typed,
            uid: meta.uid(),
            gid: meta.gid(),
        })
        .unwrap();
        let mut m = MemStore::new(MemStoreConfig::new(store_dir.clone()));

        let p = |name: &str| {
            store_dir
                .make_text_path(name, &Hash::sha256(name.as_bytes()), [])
                .unwrap()
        };
        let (a, b, c, d, drv, missing) = (p("a"), p("b"), p("c"), p("d"), p("x.drv"), p("missing"));
        let reg = |path: &StorePath, refs: &[&StorePath]| Registration {
            info: ValidPathInfo {
                path: path.clone(),
                deriver: None,
                nar_hash: Hash::sha256(path.as_str().as_bytes()),
                references: refs.iter().map(|r| (*r).clone()).collect(),
                registration_time: 1_700_000_000,
                nar_size: 120,
            },
            derivation_outputs: Vec::new(),
        };
        let mut with_outputs = reg(&drv, &[&a]);
        with_outputs.derivation_outputs = vec![("out".into(), d.clone())];
        let group = |items: Vec<Registration>| RegistrationGroup { items };
        let tree = NarTree::Directory(BTreeMap::from([
            (
                b"bin".to_vec(),
                NarTree::File {
                    executable: true,
                    contents: vec![7; 3000],
                },
            ),
            (
                b"link".to_vec(),
                NarTree::Symlink {
                    target: b"bin".to_vec(),
                },
            ),
        ]));
        let nar = tree.to_nar().unwrap();
        let dir_nar = NarTree::Directory(BTreeMap::new()).to_nar().unwrap();

        let mut effects = vec![
            Effect::WriteText {
                dest: a.clone(),
                contents: b"text of a".to_vec(),
            },
            Effect::Register {
                groups: vec![
                    group(vec![reg(&a, &[&a])]),
                    group(vec![reg(&b, &[&missing])]),
                    group(vec![reg(&c, &[&a]), reg(&b, &[&c]), with_outputs]),
                    group(vec![reg(&d, &[&p("e")]), reg(&p("e"), &[&d])]),
                ],
            },
            Effect::QueryPathInfo { path: a.clone() },
            Effect::QueryPathInfo { path: b.clone() },
            Effect::QueryPathInfo {
                path: missing.clone(),
            },
            Effect::QueryValidPaths {
                paths: vec![a.clone(), missing.clone(), c.clone()],
            },
            Effect::QueryReferrers { path: a.clone() },
            Effect::QueryReferrers {
                path: missing.clone(),
            },
            Effect::QueryValidDerivers { path: d.clone() },
            Effect::QueryDerivationOutputs { drv: drv.clone() },
            Effect::QueryDerivationOutputs {
                drv: missing.clone(),
            },
            Effect::QueryAllValidPaths,
            Effect::QueryClosure {
                paths: vec![b.clone(), missing.clone()],
            },
            Effect::QueryPathFromHashPart {
                hash_part: a.hash_part().unwrap().to_owned(),
            },
            Effect::QueryPathFromHashPart {
                hash_part: "0".repeat(32),
            },
            Effect::QueryPathFromHashPart {
                hash_part: "short".into(),
            },
            Effect::RecordFailedPaths {
                paths: vec![d.clone(), missing.clone()],
                time_s: 5,
            },
            Effect::ClearFailedPaths {
                paths: vec![drv.as_str().to_owned()],
            },
            Effect::QueryFailedPaths,
            Effect::UploadStart {
                upload: UploadId(1),
                kind: UploadKind::Recursive,
                algo: HashAlgo::Sha1,
            },
        ];
        for chunk in nar.chunks(1000) {
            effects.push(Effect::UploadChunk {
                upload: UploadId(1),
                data: chunk.to_vec(),
            });
        }
        effects.extend([
            Effect::UploadFinish {
                upload: UploadId(1),
            },
            Effect::UploadInstall {
                upload: UploadId(1),
                dest: c.clone(),
            },
            Effect::UploadFinish {
                upload: UploadId(1),
            },
            Effect::UploadStart {
                upload: UploadId(2),
                kind: UploadKind::Flat,
                algo: HashAlgo::Sha256,
            },
            Effect::UploadChunk {
                upload: UploadId(2),
                data: dir_nar,
            },
            Effect::UploadFinish {
                upload: UploadId(2),
            },
            Effect::UploadDiscard {
                upload: UploadId(2),
            },
            Effect::UploadStart {
                upload: UploadId(3),
                kind: UploadKind::Flat,
                algo: HashAlgo::Md5,
            },
            Effect::UploadChunk {
                upload: UploadId(3),
                data: file_nar(true, b"flat"),
            },
            Effect::UploadFinish {
                upload: UploadId(3),
            },
            Effect::UploadStart {
                upload: UploadId(4),
                kind: UploadKind::Recursive,
                algo: HashAlgo::Sha256,
            },
            Effect::UploadChunk {
                upload: UploadId(4),
                data: vec![1; 16],
            },
            Effect::UploadStart {
                upload: UploadId(5),
                kind: UploadKind::Recursive,
                algo: HashAlgo::Sha256,
            },
            Effect::UploadChunk {
                upload: UploadId(5),
                data: nar[..100].to_vec(),
            },
            Effect::UploadFinish {
                upload: UploadId(5),
            },
            Effect::UploadChunk {
                upload: UploadId(99),
                data: Vec::new(),
            },
            Effect::ReadStoreFile {
                path: a.clone(),
                max_bytes: 100,
            },
            Effect::ReadStoreFile {
                path: a.clone(),
                max_bytes: 3,
            },
            Effect::ReadStoreFile {
                path: c.clone(),
                max_bytes: 100,
            },
            Effect::ReadStoreFile {
                path: missing.clone(),
                max_bytes: 100,
            },
            Effect::DumpStart {
                dump: DumpId(1),
                path: c.clone(),
            },
        ]);
        for _ in 0..5 {
            effects.push(Effect::DumpNext {
                dump: DumpId(1),
                max_bytes: 1000,
            });
        }
        effects.extend([
            Effect::DumpEnd { dump: DumpId(1) },
            Effect::DumpNext {
                dump: DumpId(1),
                max_bytes: 10,
            },
            Effect::DumpStart {
                dump: DumpId(2),
                path: missing.clone(),
            },
            Effect::TryLockPath { path: b.clone() },
            Effect::TryLockPath { path: b.clone() },
            Effect::UnlockPath {
                path: b.clone(),
                delete: true,
            },
            Effect::UnlockPath {
                path: b.clone(),
                delete: true,
            },
            Effect::AddTempRoot { path: a.clone() },
            Effect::AddIndirectRoot {
                link: format!("{}/result", root.display()),
            },
            Effect::CreateUserProfileDir {
                user: "../x".into(),
                uid: 0,
            },
        ]);
        let mut differences = Vec::new();
        for effect in effects {
            let what = format!("{effect:?}").chars().take(100).collect::<String>();
            let want = os.run(effect.clone());
            let got = m.run(effect);
            if got != want {
                differences.push(format!("{what}\n  os:       {want:?}\n  memstore: {got:?}"));
            }
        }
        let _ = std::fs::remove_dir_all(&root);
        assert!(differences.is_empty(), "{}", differences.join("\n"));
    }

    #[test]
    fn any_chunking_of_an_upload_restores_the_same_tree() {
        fn prop(contents: Vec<u8>, name: u8, cuts: Vec<u8>) -> bool {
            let name = vec![b'a' + name % 26];
            let tree = NarTree::Directory(BTreeMap::from([(
                name,
                NarTree::File {
                    executable: contents.len() % 2 == 0,
                    contents,
                },
            )]));
            let nar = tree.to_nar().unwrap();
            let mut m = mem();
            m.run(Effect::UploadStart {
                upload: UploadId(0),
                kind: UploadKind::Recursive,
                algo: HashAlgo::Sha256,
            })
            .unwrap();
            let mut pos = 0;
            let mut i = 0;
            while pos < nar.len() {
                let n = cuts.get(i).map_or(nar.len(), |&c| usize::from(c) + 1);
                i += 1;
                let end = (pos + n).min(nar.len());
                m.run(Effect::UploadChunk {
                    upload: UploadId(0),
                    data: nar[pos..end].to_vec(),
                })
                .unwrap();
                pos = end;
            }
            m.run(Effect::UploadFinish {
                upload: UploadId(0),
            })
            .unwrap();
            let dest = path("d");
            m.run(Effect::UploadInstall {
                upload: UploadId(0),
                dest: dest.clone(),
            })
            .unwrap();
            m.item(&dest) == Some(&tree)
        }
        crate::check(prop as fn(Vec<u8>, u8, Vec<u8>) -> bool);
    }
}

//! guixd-os: the real machine. One dispatcher, [`Os::run`], carries out any
//! [`Effect`] the core asks for, against the real filesystem, SQLite
//! database, lock files and helper programs, and returns its result as a
//! value.
//!
//! Keeps true:
//! - `Os` is `Send + Sync`: runtimes call `run` from any worker thread, many
//!   at once; all shared state inside is behind its own lock;
//! - nothing here decides *what* or *when* — that is the core's job; this
//!   crate decides only *how* (which system calls, in which order, so that a
//!   crash at any point leaves no partially valid item);
//! - every failure comes back as an [`EffectError`] with the daemon's words
//!   where it has some, never as a panic.

pub mod agents;
pub mod build;
pub mod child;
pub mod db;
pub mod files;
pub mod gc;
pub mod locks;
pub mod net;
pub mod pressure;
pub mod reuse;
pub mod roots;
#[cfg(test)]
mod scratch;
pub mod setup;

use guixd_core::config::Dirs;
use guixd_core::effect::{Effect, EffectOutput, EffectResult};
use guixd_core::settings::Typed;

/// How the os layer was asked to behave, fixed at start-up.
#[derive(Clone, Debug)]
pub struct OsConfig {
    pub dirs: Dirs,
    /// The typed daemon settings at start-up (fsync, WAL, deduplication...).
    pub settings: Typed,
    /// The daemon's effective uid and gid: new store files get this owner.
    pub uid: u32,
    pub gid: u32,
}

/// The machine, opened: database connections, upload and dump tables,
/// lock files, helper processes.
pub struct Os {
    config: OsConfig,
    db: db::Db,
    files: files::Files,
    locks: locks::Locks,
    roots: roots::Roots,
    agents: agents::Agents,
    builds: build::Builds,
    gc: gc::Gc,
}

impl Os {
    /// Prepares the store as the daemon does at start-up (directories,
    /// database and schema, the big lock) and opens everything `run` needs.
    pub fn open(config: OsConfig) -> Result<Os, setup::SetupError> {
        setup::prepare_store(&config)?;
        let db = db::Db::open(&config)?;
        Ok(Os {
            files: files::Files::new(&config),
            locks: locks::Locks::new(&config),
            roots: roots::Roots::new(&config),
            agents: agents::Agents::new(&config),
            builds: build::Builds::new(&config),
            gc: gc::Gc::new(&config),
            db,
            config,
        })
    }

    /// The configuration this was opened with.
    pub fn config(&self) -> &OsConfig {
        &self.config
    }

    /// Hands over the spawner helper, which must have been started (with
    /// [`build::Spawner::start`]) while the process had a single thread.
    pub fn set_spawner(&mut self, spawner: build::Spawner) {
        self.builds.set_spawner(spawner);
    }

    /// Starts the builder of a build prepared by `PrepareBuild` (the
    /// runtime's answer to the core's `Spawn`), and waits until its set-up
    /// succeeded: the child is then running, a child of this process, with
    /// its log pipe non-blocking. A set-up failure is the builder's own
    /// message and leaves no child behind. Blocking; call it from a worker
    /// thread.
    pub fn spawn_build(
        &self,
        build: guixd_core::build_plan::BuildId,
    ) -> Result<child::SpawnedChild, guixd_core::effect::EffectError> {
        self.builds.spawn(build)
    }

    /// Makes sure this process's temporary-roots file exists before a
    /// collection takes `gc.lock`: creating it needs `gc.lock` shared, so
    /// a first temporary root added during the collection would block its
    /// worker thread until the collection ends, and every later one behind
    /// it, which could take all the workers a runtime has, the
    /// collection's own effects' included.
    fn ensure_temp_roots_file(&self) {
        // A failure shows again with the roots that need the file.
        let _ = self.roots.ensure_temp_roots_file();
    }

    /// The result of `effect` if it is a point read that can be answered
    /// without waiting (see [`guixd_core::effect::Effect::is_point_read`]
    /// and [`db::Db::read_now`]); `None` otherwise, and then it is for a
    /// worker. For a runtime's event-loop thread.
    pub fn run_now(&self, effect: &Effect) -> Option<EffectResult> {
        self.db.read_now(effect)
    }

    /// Carries out one effect. Blocking; call it from a worker thread.
    pub fn run(&self, effect: Effect) -> EffectResult {
        match effect {
            Effect::QueryPathInfo { path } => self.db.query_path_info(&path),
            Effect::QueryValidPaths { paths } => self.db.query_valid_paths(&paths),
            Effect::QueryReferrers { path } => self.db.query_referrers(&path),
            Effect::QueryValidDerivers { path } => self.db.query_valid_derivers(&path),
            Effect::QueryDerivationOutputs { drv } => self.db.query_derivation_outputs(&drv),
            Effect::QueryAllValidPaths => self.db.query_all_valid_paths(),
            Effect::QueryPathFromHashPart { hash_part } => {
                self.db.query_path_from_hash_part(&hash_part)
            }
            Effect::QueryFailedPaths => self.db.query_failed_paths(),
            Effect::Register { groups } => self.db.register(groups),
            Effect::ClearFailedPaths { paths } => self.db.clear_failed_paths(&paths),
            Effect::UploadStart { upload, kind, algo } => {
                self.files.upload_start(upload, kind, algo)
            }
            Effect::UploadChunk { upload, data } => self.files.upload_chunk(upload, &data),
            Effect::UploadFinish { upload } => self.files.upload_finish(upload),
            Effect::UploadDiscard { upload } => self.files.upload_discard(upload),
            Effect::UploadInstall { upload, dest } => self.files.upload_install(upload, &dest),
            Effect::WriteText { dest, contents } => self.files.write_text(&dest, &contents),
            Effect::Deduplicate { path } => self.files.deduplicate(&path),
            Effect::ReadStoreFile { path, max_bytes } => {
                self.files.read_store_file(&path, max_bytes)
            }
            Effect::DumpStart { dump, path } => self.files.dump_start(dump, &path),
            Effect::DumpNext { dump, max_bytes } => self.files.dump_next(dump, max_bytes),
            Effect::DumpEnd { dump } => self.files.dump_end(dump),
            Effect::TryLockPath { path } => self.locks.try_lock_path(&path),
            Effect::UnlockPath { path, delete } => self.locks.unlock_path(&path, delete),
            Effect::AddTempRoot { path } => self.roots.add_temp_root(&path),
            Effect::AddIndirectRoot { link } => self.roots.add_indirect_root(&link),
            Effect::Sign { hash } => self.agents.sign(&hash),
            Effect::Verify { signature } => self.agents.verify(&signature),
            Effect::SubstitutesHave { paths, options } => {
                self.agents.substitutes_have(&paths, &options)
            }
            Effect::SubstitutesInfo { paths, options } => {
                self.agents.substitutes_info(&paths, &options)
            }
            Effect::CreateUserProfileDir { user, uid } => {
                roots::create_user_profile_dir(&self.config, &user, uid)
            }
            Effect::QueryClosure { paths } => self.db.query_closure(&paths),
            Effect::RecordFailedPaths { paths, time_s } => {
                self.db.record_failed_paths(&paths, time_s)
            }
            Effect::PrepareBuild { build, plan } => self.builds.prepare(build, plan),
            Effect::CollectOutputs {
                build,
                outputs,
                candidates,
                keep_in_chroot,
            } => self
                .builds
                .collect_outputs(build, &outputs, &candidates, keep_in_chroot),
            Effect::FinishBuild {
                build,
                keep_build_dir,
                owner_uid,
            } => self.builds.finish(build, keep_build_dir, owner_uid),
            Effect::LogOpen {
                log,
                drv,
                compression,
            } => self.builds.log_open(log, &drv, compression),
            Effect::LogWrite { log, data } => self.builds.log_write(log, &data),
            Effect::LogClose { log } => self.builds.log_close(log),
            Effect::QueryPathsByNarHash { hash } => self.db.query_paths_by_nar_hash(&hash),
            Effect::FindFlatContent { hash } => self.db.find_flat_content(&hash),
            Effect::IndexFlatContent { path, hash } => self.db.index_flat_content(&path, &hash),
            Effect::CopyIntoOutput {
                from,
                to,
                recursive,
                expected,
            } => reuse::copy_into_output(
                std::path::Path::new(self.config.dirs.store.as_str()),
                &from,
                &to,
                recursive,
                &expected,
            ),
            Effect::GcLock { owner, wait } => {
                self.ensure_temp_roots_file();
                let wait = if wait {
                    locks::Wait::Yes
                } else {
                    locks::Wait::No
                };
                self.gc.lock_for(owner, wait).map(EffectOutput::Locked)
            }
            Effect::GcRelease { owner } => {
                self.gc.release_for(owner);
                Ok(EffectOutput::Done)
            }
            Effect::GcReadTempRoots => self.gc.read_temp_roots().map(EffectOutput::TempRoots),
            Effect::GcFindRoots => self.gc.find_roots(&self.db).map(EffectOutput::Roots),
            Effect::GcRuntimeRoots => self.gc.runtime_roots(&self.db).map(EffectOutput::Paths),
            Effect::GcSnapshot => self
                .gc
                .snapshot(&self.db)
                .map(|(rows, entries)| EffectOutput::GcSnapshot { rows, entries }),
            Effect::GcPrepareTrash => self.gc.prepare_trash().map(EffectOutput::TrashPrepared),
            Effect::GcDeletePath { path, expect_valid } => self
                .gc
                .delete_path(&self.db, &path, expect_valid)
                .map(EffectOutput::GcDeleted),
            Effect::GcEmptyTrash => self.gc.empty_trash().map(EffectOutput::Freed),
            Effect::GcRemoveUnusedLinks => self.gc.remove_unused_links().map(EffectOutput::Links),
            Effect::VerifyStore { check_contents } => self
                .gc
                .verify_store(&self.db, check_contents)
                .map(EffectOutput::Verified),
            Effect::OptimiseStore => self
                .gc
                .optimise_store(&self.db)
                .map(EffectOutput::Optimised),
        }
    }
}

/// The error result of `doing` (say "an effect") when the os code it ran
/// panicked, which only a bug in guixd can cause; runtimes catch such
/// panics so that the core still hears back exactly once.
pub fn panicked(
    panic: Box<dyn std::any::Any + Send>,
    doing: &str,
) -> guixd_core::effect::EffectError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    guixd_core::effect::EffectError::new(
        guixd_core::effect::EffectErrorKind::Io(rustix::io::Errno::IO.raw_os_error()),
        format!("guixd bug: {doing} panicked: {what}"),
    )
}

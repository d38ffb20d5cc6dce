//! The garbage collector's effects (spec 03 §9–§10): finding roots (on
//! disk, in running processes, in other processes' temporary-roots files),
//! reading the reference graph in bulk, deleting one path at a time,
//! the trash and `.links` clean-up, `verify-store` and `optimise-store`.
//! What is alive and in which order to delete is decided by the core's
//! planner (`guixd_core::gc`); this module only carries it out.
//!
//! Keeps true:
//! - one collection of this process at a time holds [`Gc`]'s locks, named
//!   by the owner id the core chose ([`Gc::lock_for`]); another waits for
//!   it as it would for another process, and a release by anyone else
//!   does nothing;
//! - `gc.lock` is taken exclusively (an OFD lock, which the C++ daemon's
//!   `fcntl` locks see) for as long as [`Gc`] holds it: while other
//!   processes' temporary roots are read and until the deletions are done.
//!   That blocks other processes' `addTempRoot` as the C++ protocol
//!   expects; guixd's own sessions keep their temporary roots in the core
//!   and never touch `gc.lock`, so its builds never wait for a collection;
//! - every other process's temporary-roots file stays read-locked from the
//!   moment it is read until [`Gc::release`], so its owner cannot add to it
//!   meanwhile; this process's own file is never read (its roots are the
//!   core's) and never locked by the collector, which would otherwise stall
//!   this daemon's own additions;
//! - a path is deleted only after a write transaction found it without
//!   referrers and invalidated it (or found it already invalid, as
//!   planned); a path that gained a referrer, or became valid, is left
//!   alone and reported, so the core can revive it;
//! - directories go to `<store>/trash` by `rename` (falling back to
//!   deletion in place), so a deletion never leaves a half-deleted item
//!   under its store name;
//! - nothing recurses: directory trees are walked with explicit stacks.

mod delete;
mod optimise;
mod roots;
mod verify;

#[cfg(test)]
mod tests;

pub use delete::delete_tree;
pub use optimise::optimise_store;
pub use roots::{
    ROOTS_SCAN_ENTRIES_MAX, RUNTIME_ROOTS_OUTPUT_MAX_BYTES, TEMP_ROOTS_FILE_MAX_BYTES, find_roots,
    list_store, parse_busy_output, runtime_roots,
};
pub use verify::{hash_path, verify_store};

use crate::OsConfig;
use crate::db::Db;
use crate::locks::{LockKind, Wait};
use guixd_core::StorePath;
use guixd_core::effect::{EffectError, EffectErrorKind};
use guixd_core::gc::{
    DeleteOutcome, FoundRoots, GcLimits, GcRows, LinksReport, OptimiseReport, TRASH_DIR_NAME,
    TempRootsRead, TrashPrepared, VerifyReport,
};
use guixd_core::store_path::StoreDir;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// What the collector's invalidation transaction found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// The path was not valid; nothing changed.
    NotValid,
    /// The path was valid and is not any more.
    Invalidated { nar_size: u64 },
    /// Valid paths other than itself refer to it (sorted); nothing changed.
    InUse(Vec<String>),
    /// The caller expected an invalid path, and it is valid; nothing
    /// changed.
    BecameValid,
}

/// The collector's side of the machine: `gc.lock` and the temporary-roots
/// files it holds during a collection, and the store's trash.
pub struct Gc {
    store: PathBuf,
    store_dir: StoreDir,
    state: PathBuf,
    /// This process's own temporary-roots file, never read by the
    /// collector.
    own_temp_roots: PathBuf,
    /// Deduplication is on: a file's `.links` entry does not keep its bytes
    /// from counting as freed.
    dedup: bool,
    guix_program: PathBuf,
    /// Set for helper programs: the store's directories.
    env: Vec<(OsString, OsString)>,
    limits: GcLimits,
    held: Mutex<Option<Held>>,
    /// Signalled whenever `held` is emptied, for a collection of this
    /// process waiting for another one to end.
    freed: Condvar,
    use_trash: AtomicBool,
}

// `Os` is shared by every worker thread.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Gc>();
};

/// Locks held during a collection.
struct Held {
    /// The collection that holds them (chosen by the core).
    owner: u64,
    /// Holds `gc.lock` exclusively while open.
    _gc_lock: File,
    /// Other processes' temporary-roots files, read-locked.
    temp_roots: Vec<File>,
}

impl Gc {
    /// Nothing is touched until the first call.
    pub fn new(config: &OsConfig) -> Gc {
        let dirs = &config.dirs;
        let env = [
            ("NIX_STORE_DIR", dirs.store.as_str().into()),
            ("GUIX_STATE_DIRECTORY", dirs.state.as_os_str().to_owned()),
            ("GUIX_LOG_DIRECTORY", dirs.log.as_os_str().to_owned()),
            ("GUIX_DATABASE_DIRECTORY", dirs.db.as_os_str().to_owned()),
            (
                "GUIX_CONFIGURATION_DIRECTORY",
                dirs.conf.as_os_str().to_owned(),
            ),
        ]
        .into_iter()
        .map(|(name, value)| (OsString::from(name), value))
        .collect();
        Gc {
            store: PathBuf::from(dirs.store.as_str()),
            store_dir: dirs.store.clone(),
            state: dirs.state.clone(),
            own_temp_roots: dirs
                .state
                .join("temproots")
                .join(std::process::id().to_string()),
            dedup: config.settings.auto_optimise_store,
            guix_program: dirs.guix_program.clone(),
            env,
            limits: GcLimits::default(),
            held: Mutex::new(None),
            freed: Condvar::new(),
            use_trash: AtomicBool::new(false),
        }
    }

    /// The same, treating `path` as this process's own temporary-roots file
    /// (tests stand for several processes in one).
    pub fn with_own_temp_roots(mut self, path: &Path) -> Gc {
        self.own_temp_roots = path.to_path_buf();
        self
    }

    /// Replaces the bounds.
    pub fn with_limits(mut self, limits: GcLimits) -> Gc {
        self.limits = limits;
        self
    }

    /// The bounds the collector works with.
    pub fn limits(&self) -> &GcLimits {
        &self.limits
    }

    /// Takes `gc.lock` exclusively: `Ok(false)` when another process holds
    /// it and `wait` is [`Wait::No`] (the caller then prints
    /// `waiting for the big garbage collector lock...` and waits).
    pub fn lock(&self, wait: Wait) -> Result<bool, EffectError> {
        self.lock_for(0, wait)
    }

    /// Takes `gc.lock` exclusively for the collection `owner`. Another
    /// collection of this process holding it counts as busy, like another
    /// process: `Ok(false)` with [`Wait::No`], a wait until it is released
    /// with [`Wait::Yes`].
    pub fn lock_for(&self, owner: u64, wait: Wait) -> Result<bool, EffectError> {
        let mut held = self.held();
        loop {
            match held.as_ref() {
                None => break,
                Some(h) if h.owner == owner => {
                    return Err(bug("the garbage collector lock was taken twice"));
                }
                Some(_) if matches!(wait, Wait::No) => return Ok(false),
                Some(_) => {
                    held = self
                        .freed
                        .wait(held)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
        match crate::roots::open_gc_lock(&self.state, LockKind::Exclusive, wait)? {
            Some(file) => {
                *held = Some(Held {
                    owner,
                    _gc_lock: file,
                    temp_roots: Vec::new(),
                });
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Drops what the collection `owner` holds; nothing when it holds
    /// nothing (it may have been refused the lock, or released already).
    pub fn release_for(&self, owner: u64) {
        let mut held = self.held();
        if held.as_ref().is_some_and(|h| h.owner == owner) {
            *held = None;
            self.freed.notify_all();
        }
    }

    /// Whether this collector holds `gc.lock`.
    pub fn is_locked(&self) -> bool {
        self.held().is_some()
    }

    /// Reads the temporary roots of every other process (spec 02 §10.3),
    /// removing the files of dead ones, and keeps the live ones read-locked
    /// until [`Gc::release`]. Needs `gc.lock`. May wait while an owner is
    /// appending.
    pub fn read_temp_roots(&self) -> Result<TempRootsRead, EffectError> {
        let mut held = self.held();
        let Some(held) = held.as_mut() else {
            return Err(bug(
                "temporary roots read without the garbage collector lock",
            ));
        };
        let (read, files) =
            roots::read_temp_roots(&self.state, &self.own_temp_roots, &self.store_dir)?;
        held.temp_roots.extend(files);
        Ok(read)
    }

    /// Drops the locks on other processes' temporary roots and `gc.lock`.
    pub fn release(&self) {
        self.held().take();
        self.freed.notify_all();
    }

    /// The roots on disk (`find-roots`), with validity from `db`.
    pub fn find_roots(&self, db: &Db) -> Result<FoundRoots, EffectError> {
        find_roots(&self.state, &self.store_dir, &mut |p| {
            db.is_valid_path(p.as_str())
        })
    }

    /// The valid store items that running processes use, from
    /// `<guix> gc --list-busy`.
    pub fn runtime_roots(&self, db: &Db) -> Result<BTreeSet<StorePath>, EffectError> {
        runtime_roots(&self.guix_program, &self.env, &self.store_dir, &mut |p| {
            db.is_valid_path(p.as_str())
        })
    }

    /// What the planner needs: the reference graph and the names in the
    /// store directory (read after the graph, so that anything that
    /// appears in between is seen as an invalid entry, which the deletion
    /// re-checks).
    pub fn snapshot(&self, db: &Db) -> Result<(GcRows, Vec<String>), EffectError> {
        let rows = db.gc_rows()?;
        let entries = list_store(&self.store, self.limits.entries_max)?;
        Ok((rows, entries))
    }

    /// Deletes a leftover trash and creates an empty one (spec 03 §9.2).
    pub fn prepare_trash(&self) -> Result<TrashPrepared, EffectError> {
        let prepared = delete::prepare_trash(&self.trash(), self.link_threshold())?;
        self.use_trash.store(prepared.use_trash, Ordering::Relaxed);
        Ok(prepared)
    }

    /// Deletes one path: invalidates it when valid (refusing if it has
    /// referrers), then moves a directory to the trash or deletes a file.
    /// `expect_valid` says what the plan found; a path planned invalid
    /// that is valid now is left alone.
    pub fn delete_path(
        &self,
        db: &Db,
        path: &StorePath,
        expect_valid: bool,
    ) -> Result<DeleteOutcome, EffectError> {
        if self.store_dir.parse_path(path.as_str()).is_err() {
            return Err(bug(&format!("asked to delete `{path}', outside the store")));
        }
        let nar_size = match db.invalidate_for_gc(path, expect_valid)? {
            Invalidation::NotValid => 0,
            Invalidation::Invalidated { nar_size } => nar_size,
            Invalidation::InUse(referrers) => return Ok(DeleteOutcome::InUse { referrers }),
            Invalidation::BecameValid => return Ok(DeleteOutcome::BecameValid),
        };
        let trash = self.use_trash.load(Ordering::Relaxed).then(|| self.trash());
        delete::remove_store_entry(
            Path::new(path.as_str()),
            path.base_name(),
            trash.as_deref(),
            nar_size,
            self.link_threshold(),
        )
    }

    /// Deletes the trash directory, returning the bytes freed.
    pub fn empty_trash(&self) -> Result<u64, EffectError> {
        self.use_trash.store(false, Ordering::Relaxed);
        delete_tree(&self.trash(), self.link_threshold())
    }

    /// The trash directory, `<store>/trash`.
    pub fn trash(&self) -> PathBuf {
        self.store.join(TRASH_DIR_NAME)
    }

    /// Removes `.links` entries that nothing else links to, or that are
    /// too small to be deduplicated (spec 02 §11).
    pub fn remove_unused_links(&self) -> Result<LinksReport, EffectError> {
        delete::remove_unused_links(&self.store.join(guixd_core::gc::LINKS_DIR_NAME))
    }

    /// `verify-store` (spec 03 §10), without repair.
    pub fn verify_store(&self, db: &Db, check_contents: bool) -> Result<VerifyReport, EffectError> {
        verify_store(self, db, check_contents)
    }

    /// `optimise-store`: deduplicates every valid path.
    pub fn optimise_store(&self, db: &Db) -> Result<OptimiseReport, EffectError> {
        optimise_store(&self.store, db)
    }

    /// Files that keep a `.links` entry count their bytes as freed when
    /// they have this many links or fewer (the daemon's `linkThreshold`).
    fn link_threshold(&self) -> u64 {
        if self.dedup { 2 } else { 1 }
    }

    fn held(&self) -> MutexGuard<'_, Option<Held>> {
        // The slot is replaced whole; a panic cannot leave it half set.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An error that only a bug in guixd can cause.
fn bug(what: &str) -> EffectError {
    EffectError::new(EffectErrorKind::Invalid, format!("guixd bug: {what}"))
}

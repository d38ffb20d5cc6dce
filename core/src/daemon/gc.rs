//! The garbage collector and store maintenance as session work: the
//! collect-garbage (op 20), find-roots (op 14), verify-store (op 35) and
//! optimise-store (op 34) operations, carried out with the planner of
//! `crate::gc` and the collector's effects (spec 03 §9–§10).
//!
//! A collection runs inside the session that asked for it, as a sequence
//! of effects: `gc.lock` (which keeps *other processes* from adding
//! temporary roots, as the C++ protocol wants), the roots on disk, the
//! runtime roots, other processes' temporary roots, then the temporary
//! roots of every other session and goal of this daemon (not the
//! collecting session's own: the C++ collector, locking its own
//! temporary-roots file from the same process, takes it for a dead
//! process's file and ignores it), the graph in bulk, the plan, and one
//! deletion per victim.
//!
//! Keeps true:
//! - builds and additions never wait for a collection as a whole: this
//!   daemon's sessions never touch `gc.lock`; exclusion is per path. Before
//!   each deletion the victim (and, for a `.lock` or `.chroot` companion,
//!   the path it belongs to) is checked against the temporary roots of
//!   every other task, its lock is taken in the core's lock table alone
//!   (no lock file: other processes are kept away by `gc.lock` and by
//!   their temporary-roots files, read-locked for the whole collection;
//!   and for a short while at most: a path someone holds is skipped, not
//!   waited for), the temporary roots are checked again, and only then is the
//!   deletion asked for, through the writer queue, where the machine
//!   looks once more as the job starts; a path found protected or in use
//!   is revived with everything it keeps alive. While the deletion runs,
//!   the machine holds back any session's question whether that path is
//!   valid, so a session that protects it meanwhile finds it gone and
//!   adds it again (under its lock, which the collector holds until the
//!   deletion is done) instead of being told it is there;
//! - a path one of this daemon's sessions protects at any moment between
//!   the start of root finding and the end of the collection is not
//!   deleted, even if that session ended meanwhile (the machine's watch,
//!   `Ctx::gc_watch`): the C++ protocol gets this by making sessions wait
//!   for `gc.lock` before adding a temporary root; guixd's sessions never
//!   wait, so the collector remembers what they protected instead;
//! - a session that goes away mid-collection leaves nothing held: the
//!   collection's owner id is in the session's mailbox, and the machine
//!   releases `gc.lock` when it reaps the session;
//! - messages and their levels are the C++ daemon's.

use super::report::Level;
use super::task::Ctx;
use crate::effect::{Effect, EffectOutput};
use crate::gc::{self, GcAction, GcGraph, GcLimits, GcOptions, GcRoots, GcRun, TRASH_DIR_NAME};
use crate::store_path::{StoreDir, StorePath};
use crate::wire::GcResult;
use std::collections::BTreeSet;
use std::time::Duration;

/// How long a collection waits for a victim's lock before skipping it.
pub(super) const VICTIM_LOCK_WAIT: Duration = Duration::from_millis(500);

/// Where a collection's messages go (the session's `log`).
pub(super) type Say<'a> = &'a mut dyn FnMut(Level, String);

/// What a collect-garbage request asks for, decoded.
#[derive(Clone, Debug)]
pub(super) struct CollectRequest {
    pub action: GcAction,
    /// An action number the daemon does not know: it walks the store as
    /// return-dead does and replies nothing.
    pub unknown_action: bool,
    pub max_freed_bytes: u64,
    pub keep_outputs: bool,
    pub keep_derivations: bool,
    pub seed: u64,
}

impl CollectRequest {
    /// The request for wire action `action` on `paths`.
    pub fn new(action: u32, paths: BTreeSet<StorePath>, max_freed_bytes: u64) -> CollectRequest {
        let (action, unknown_action) = match action {
            0 => (GcAction::ReturnLive, false),
            1 => (GcAction::ReturnDead, false),
            2 => (GcAction::DeleteDead, false),
            3 => (GcAction::DeleteSpecific(paths), false),
            _ => (GcAction::ReturnDead, true),
        };
        CollectRequest {
            action,
            unknown_action,
            max_freed_bytes,
            keep_outputs: false,
            keep_derivations: true,
            seed: 0,
        }
    }

    fn deletes(&self) -> bool {
        matches!(
            self.action,
            GcAction::DeleteDead | GcAction::DeleteSpecific(_)
        )
    }
}

/// Runs one collection for the session whose mailbox `ctx` is.
pub(super) async fn collect(
    ctx: &Ctx,
    store: &StoreDir,
    request: CollectRequest,
    say: Say<'_>,
) -> Result<GcResult, String> {
    let owner = ctx.fresh_id();
    ctx.set_gc_owner(Some(owner));
    let outcome = collect_locked(ctx, store, owner, &request, say).await;
    ctx.gc_unwatch();
    // Whatever happened, other processes may add roots again.
    let _ = ctx.effect(Effect::GcRelease { owner }).await;
    ctx.set_gc_owner(None);
    let (paths, mut bytes_freed) = match outcome? {
        Locked::Listed(paths) => {
            return Ok(GcResult {
                paths: paths.into_iter().map(StorePath::into_string).collect(),
                bytes_freed: 0,
            });
        }
        Locked::Deleted { paths, bytes_freed } => (paths, bytes_freed),
    };
    let trash = format!("{}/{TRASH_DIR_NAME}", store.as_str());
    say(Level::Info, gc::deleting_trash_line(&trash));
    match ctx.effect(Effect::GcEmptyTrash).await {
        Ok(EffectOutput::Freed(n)) => bytes_freed = bytes_freed.saturating_add(n),
        Ok(other) => return Err(unexpected(&other)),
        Err(e) => return Err(e.message),
    }
    say(Level::Error, gc::DELETING_UNUSED_LINKS.to_owned());
    match ctx.effect(Effect::GcRemoveUnusedLinks).await {
        Ok(EffectOutput::Links(links)) => {
            bytes_freed = bytes_freed.saturating_add(links.freed_bytes);
            say(Level::Info, gc::links_saving_line(links.saved_bytes));
        }
        Ok(other) => return Err(unexpected(&other)),
        Err(e) => return Err(e.message),
    }
    Ok(GcResult {
        paths: paths.into_iter().map(StorePath::into_string).collect(),
        bytes_freed,
    })
}

/// Find-roots (op 14): the roots on disk, as (link, store path) pairs
/// sorted by link; what the scan says goes to the client at the info
/// level.
pub(super) async fn find_roots(ctx: &Ctx, say: Say<'_>) -> Result<Vec<(String, String)>, String> {
    match ctx.effect(Effect::GcFindRoots).await {
        Ok(EffectOutput::Roots(found)) => {
            for m in found.messages {
                say(Level::Info, m);
            }
            Ok(found
                .roots
                .into_iter()
                .map(|(link, path)| (link, path.into_string()))
                .collect())
        }
        Ok(other) => Err(unexpected(&other)),
        Err(e) => Err(e.message),
    }
}

/// Optimise-store (op 34): deduplicates the store and says what it saved.
pub(super) async fn optimise(ctx: &Ctx, say: Say<'_>) -> Result<(), String> {
    match ctx.effect(Effect::OptimiseStore).await {
        Ok(EffectOutput::Optimised(report)) => {
            for w in report.warnings {
                say(Level::Error, w);
            }
            say(
                Level::Error,
                gc::optimise_line(report.bytes_freed, report.files_linked),
            );
            Ok(())
        }
        Ok(other) => Err(unexpected(&other)),
        Err(e) => Err(e.message),
    }
}

/// The session-facing level of a collector message.
pub(super) fn level_of(level: gc::Level) -> Level {
    match level {
        gc::Level::Error => Level::Error,
        gc::Level::Info => Level::Info,
        gc::Level::Talkative => Level::Talkative,
        gc::Level::Chatty => Level::Chatty,
        gc::Level::Debug => Level::Debug,
        gc::Level::Vomit => Level::Vomit,
    }
}

// ---- helpers

/// What the part of a collection under `gc.lock` produced.
enum Locked {
    /// Return-live and return-dead: the paths to reply with.
    Listed(Vec<StorePath>),
    /// The deleting actions: the paths deleted and the bytes freed so far
    /// (a leftover trash included).
    Deleted {
        paths: Vec<StorePath>,
        bytes_freed: u64,
    },
}

async fn collect_locked(
    ctx: &Ctx,
    store: &StoreDir,
    owner: u64,
    request: &CollectRequest,
    say: Say<'_>,
) -> Result<Locked, String> {
    if !take_gc_lock(ctx, owner, false).await? {
        say(Level::Error, gc::WAITING_FOR_GC_LOCK.to_owned());
        if !take_gc_lock(ctx, owner, true).await? {
            return Err("guixd bug: a waiting lock on gc.lock came back busy".to_owned());
        }
    }

    // This daemon's sessions go on adding items while roots are found:
    // one whose temporary root is dropped (its session ends) after it got
    // a root on disk that the scan below missed must still be seen, so
    // every temporary root from now on counts, until the end.
    ctx.gc_watch();
    say(Level::Error, gc::FINDING_ROOTS.to_owned());
    let mut roots = GcRoots::default();
    match ctx.effect(Effect::GcFindRoots).await {
        Ok(EffectOutput::Roots(found)) => {
            for m in found.messages {
                say(Level::Info, m);
            }
            roots
                .permanent
                .extend(found.roots.into_iter().map(|(_, path)| path));
        }
        Ok(other) => return Err(unexpected(&other)),
        Err(e) => return Err(e.message),
    }
    match ctx.effect(Effect::GcRuntimeRoots).await {
        Ok(EffectOutput::Paths(paths)) => roots.permanent.extend(paths),
        Ok(other) => return Err(unexpected(&other)),
        Err(e) => return Err(e.message),
    }
    match ctx.effect(Effect::GcReadTempRoots).await {
        Ok(EffectOutput::TempRoots(read)) => {
            for m in read.messages {
                say(Level::Error, m);
            }
            roots.temporary.extend(read.roots);
        }
        Ok(other) => return Err(unexpected(&other)),
        Err(e) => return Err(e.message),
    }
    roots.temporary.extend(ctx.other_temp_roots().await);

    let (rows, entries) = match ctx.effect(Effect::GcSnapshot).await {
        Ok(EffectOutput::GcSnapshot { rows, entries }) => (rows, entries),
        Ok(other) => return Err(unexpected(&other)),
        Err(e) => return Err(e.message),
    };
    let graph = GcGraph::new(store, rows, &GcLimits::default()).map_err(|e| e.to_string())?;
    let options = GcOptions {
        action: request.action.clone(),
        keep_outputs: request.keep_outputs,
        keep_derivations: request.keep_derivations,
        max_freed_bytes: request.max_freed_bytes,
        seed: request.seed,
    };
    let plan = gc::plan(&graph, &roots, &entries, &options);
    // The trash is prepared only now, after the graph and the plan (the
    // C++ collector does it before listing the store; the listing skips
    // `trash` by name either way), because this effect is also the first
    // input after that long computation: the machine's clock, which the
    // victims' lock deadlines below count from, stands still while the
    // core computes, so without it the first victim's deadline could lie
    // in the past already and that victim (with everything it keeps
    // alive) would be skipped.
    let mut bytes_freed = 0u64;
    if request.deletes() {
        match ctx.effect(Effect::GcPrepareTrash).await {
            Ok(EffectOutput::TrashPrepared(prepared)) => {
                bytes_freed = prepared.freed_bytes;
                if let Some(note) = prepared.note {
                    say(Level::Info, note);
                }
            }
            Ok(other) => return Err(unexpected(&other)),
            Err(e) => return Err(e.message),
        }
    }
    if !matches!(request.action, GcAction::DeleteSpecific(_)) && request.max_freed_bytes > 0 {
        let line = if request.deletes() {
            gc::DELETING_GARBAGE
        } else {
            gc::DETERMINING_LIVE_DEAD
        };
        say(Level::Error, line.to_owned());
    }
    match request.action {
        _ if request.unknown_action => return Ok(Locked::Listed(Vec::new())),
        GcAction::ReturnLive | GcAction::ReturnDead => return Ok(Locked::Listed(plan.listed)),
        GcAction::DeleteDead | GcAction::DeleteSpecific(_) => {}
    }

    let mut run = GcRun::new(graph, plan);
    while let Some(victim) = run.next_victim() {
        let guarded = guarded_paths(store, &victim.path);
        if ctx.is_protected(guarded.clone()).await {
            run.skip_protected();
            continue;
        }
        let Some(now) = ctx.now_mono() else {
            run.skip_protected();
            continue;
        };
        let Some(lock) = ctx
            .lock_in_table_until(
                BTreeSet::from([victim.path.clone()]),
                now + VICTIM_LOCK_WAIT,
            )
            .await
        else {
            run.skip_protected();
            continue;
        };
        // Someone may have come to need it while the lock was on its way.
        if ctx.is_protected(guarded).await {
            ctx.unlock(lock, false);
            run.skip_protected();
            continue;
        }
        let deleted = ctx
            .write_db(Effect::GcDeletePath {
                path: victim.path.clone(),
                expect_valid: victim.expect_valid(),
            })
            .await;
        match deleted {
            Ok(EffectOutput::GcDeleted(outcome)) => {
                // The path is invalid now (or was left alone): its lock
                // file has no use any more.
                ctx.unlock(lock, true);
                for line in run.complete(outcome) {
                    say(Level::Info, line);
                }
            }
            Ok(other) => {
                ctx.unlock(lock, false);
                return Err(unexpected(&other));
            }
            Err(e) => {
                ctx.unlock(lock, false);
                return Err(e.message);
            }
        }
    }
    let outcome = run.finish();
    if let Some(failure) = outcome.failure {
        return Err(failure.to_string());
    }
    Ok(Locked::Deleted {
        paths: outcome.paths,
        bytes_freed: bytes_freed.saturating_add(outcome.bytes_freed),
    })
}

/// Takes `gc.lock` for `owner`; `false` when busy (only without `wait`).
async fn take_gc_lock(ctx: &Ctx, owner: u64, wait: bool) -> Result<bool, String> {
    match ctx.effect(Effect::GcLock { owner, wait }).await {
        Ok(EffectOutput::Locked(taken)) => Ok(taken),
        Ok(other) => Err(unexpected(&other)),
        Err(e) => Err(e.message),
    }
}

/// The paths whose being a temporary root keeps `path` from deletion: the
/// path itself and, for a `X.lock` or `X.chroot` entry, `X` (the C++
/// collector's `isActiveTempFile`).
pub(super) fn guarded_paths(store: &StoreDir, path: &StorePath) -> Vec<StorePath> {
    let mut paths = vec![path.clone()];
    for suffix in [".lock", ".chroot"] {
        if let Some(base) = path.as_str().strip_suffix(suffix) {
            if let Ok(base) = store.parse_path(base) {
                paths.push(base);
            }
        }
    }
    paths
}

fn unexpected(output: &EffectOutput) -> String {
    format!("guixd bug: unexpected effect result {output:?}")
}

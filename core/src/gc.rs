//! The garbage collector's planner: which store items are alive, which are
//! dead, and in which order the dead ones may be deleted (spec 03 §9).
//!
//! The C++ daemon holds `gc.lock` for the whole collection and asks the
//! database about each path as it walks. guixd instead reads the reference
//! graph in bulk ([`GcRows`], a few queries for the whole database), builds
//! a [`GcGraph`] in memory, and plans with [`plan`]: pure, iterative, in
//! time and memory linear in paths plus references. The plan is then
//! carried out path by path ([`GcRun`]), each deletion being its own brief
//! exclusion: the core checks its lock table and the temporary roots of its
//! sessions before asking for a deletion, and the os deletes only inside a
//! write transaction that finds the path without referrers (the database's
//! `on delete restrict` says the same). A path that turns out to be in use
//! is *revived*: it and everything it keeps alive are taken off the plan.
//!
//! Liveness is exactly the C++ `canReachRoot`: a path is alive when it is a
//! root or when one of its *incoming* neighbours is alive, where the
//! incoming neighbours of `p` are its referrers; with `gc-keep-derivations`
//! (default on), for a `.drv` `p`, its valid outputs whose recorded deriver
//! is `p`; and with `gc-keep-outputs` (default off), the valid derivations
//! that list `p` among their outputs. Equivalently, the live set is what the
//! roots reach along the reversed edges, which is how it is computed here.
//!
//! Keeps true:
//! - the planner never reads a clock, the filesystem or an OS random
//!   source: the deletion order's shuffle comes from [`GcOptions::seed`],
//!   and every list it returns is in a deterministic order;
//! - no walk recurses: stores have millions of paths, so every traversal
//!   keeps its own stack; memory is a few bytes per path and per edge;
//! - a planned deletion order never puts a path before one of its
//!   referrers, never contains a live path, a root (permanent, runtime,
//!   temporary or locked), the `.lock`/`.chroot` companion of a temporary
//!   root or locked path, `.links`, `trash`, or a transient name of a live
//!   guixd (`.guixd-upload-*`, `.guixd-text-*`, `.tmp-link-*`);
//! - a revived path is never deleted afterwards, nor anything it keeps
//!   alive; a delete-specific request whose path is (or becomes) alive
//!   fails with the daemon's words, ``cannot delete path `P' since it is
//!   still alive``.

use crate::store_path::{StoreDir, StorePath};
use std::collections::BTreeSet;
// Only probed, never iterated, so no order can leak out; SipHash with fixed
// keys keeps the core free of randomness.
#[allow(clippy::disallowed_types)]
type KeyRanges = std::collections::HashMap<
    u64,
    (NodeId, NodeId),
    std::hash::BuildHasherDefault<std::hash::DefaultHasher>,
>;

/// The name of the deduplication directory in the store; never collected.
pub const LINKS_DIR_NAME: &str = ".links";

/// The name of the collector's trash directory in the store; never
/// collected as an item.
pub const TRASH_DIR_NAME: &str = "trash";

/// Store-directory names a running guixd uses for items in the making and
/// for deduplication; never collected (a killed daemon's leftovers are
/// removed at start-up instead).
pub const TRANSIENT_PREFIXES: &[&str] = &[".guixd-upload-", ".guixd-text-", ".tmp-link-"];

/// `max_freed_bytes` meaning "no limit" (what the Guix client sends by
/// default, and what changes the progress lines from percentages to sizes).
pub const UNLIMITED_BYTES: u64 = u64::MAX;

/// What the daemon prints (at the error level) when a collection starts.
pub const FINDING_ROOTS: &str = "finding garbage collector roots...";

/// Printed (error level) before delete-dead walks the store.
pub const DELETING_GARBAGE: &str = "deleting garbage...";

/// Printed (error level) before return-live and return-dead walk the store.
pub const DETERMINING_LIVE_DEAD: &str = "determining live/dead paths...";

/// Printed (error level) before `.links` is cleaned up.
pub const DELETING_UNUSED_LINKS: &str = "deleting unused links...";

/// Printed (error level) when `gc.lock` is busy and the collector waits.
pub const WAITING_FOR_GC_LOCK: &str = "waiting for the big garbage collector lock...";

/// Node ids are `u32`, so a graph holds fewer than this many paths.
pub const NODES_MAX: usize = u32::MAX as usize;

/// Bounds on what the collector takes in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcLimits {
    /// Valid paths in the database (at most [`NODES_MAX`]).
    pub paths_max: usize,
    /// Rows of `Refs`.
    pub references_max: usize,
    /// Rows of `DerivationOutputs`.
    pub derivation_outputs_max: usize,
    /// Entries of the store directory listed for one collection.
    pub entries_max: usize,
}

impl Default for GcLimits {
    fn default() -> GcLimits {
        GcLimits {
            paths_max: 1 << 28,
            references_max: 1 << 31,
            derivation_outputs_max: 1 << 28,
            entries_max: 1 << 28,
        }
    }
}

/// Why the collector refuses or fails.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GcError {
    /// A delete-specific path is alive (the daemon's words).
    #[error("cannot delete path `{0}' since it is still alive")]
    StillAlive(String),
    #[error(
        "the store database holds {count} valid paths, more than the collector's limit of {max}"
    )]
    TooManyPaths { count: usize, max: usize },
    #[error(
        "the store database holds {count} references, more than the collector's limit of {max}"
    )]
    TooManyReferences { count: usize, max: usize },
    #[error(
        "the store database holds {count} derivation outputs, more than the collector's limit of {max}"
    )]
    TooManyDerivationOutputs { count: usize, max: usize },
}

/// One row of `ValidPaths`, as the bulk read returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRow {
    pub id: i64,
    pub path: String,
    /// The `deriver` column (`None` for NULL).
    pub deriver: Option<String>,
    /// The `narSize` column, 0 when unknown.
    pub nar_size: u64,
}

/// The whole reference graph as read from the database in one read
/// transaction: every valid path, every `Refs` row `(referrer, reference)`
/// and every `DerivationOutputs` row `(drv, output path)` (output names do
/// not matter to the collector).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcRows {
    pub paths: Vec<PathRow>,
    pub references: Vec<(i64, i64)>,
    pub derivation_outputs: Vec<(i64, String)>,
}

/// A path of a [`GcGraph`]: an index into its paths, sorted bytewise.
pub type NodeId = u32;

/// The reference graph of the valid paths, in memory.
///
/// Paths are kept as the database spells them, so that a row that is not a
/// store path (which `verify-store` would invalidate) still has a node and
/// its edges; such paths are never deleted and count as alive.
#[derive(Clone, Debug)]
pub struct GcGraph {
    store_dir: StoreDir,
    /// Sorted bytewise, unique.
    paths: Vec<String>,
    /// The length of the prefix every path shares (the store directory
    /// and more, usually).
    common_prefix_len: usize,
    /// The range of indices of the paths whose [`lookup_key`] is the key
    /// (contiguous, since the paths are sorted and the keys follow their
    /// order). Looking a path up takes one hash probe here, then compares
    /// whole strings only among the (nearly always one) paths with its
    /// key, instead of a binary search whose every step misses the cache
    /// (lookups were most of the time of a collection's plan on a big
    /// store).
    key_ranges: KeyRanges,
    nar_sizes: Vec<u64>,
    /// Whether each path is a store path of `store_dir`.
    in_store: Vec<bool>,
    references: Adjacency<NodeId>,
    referrers: Adjacency<NodeId>,
    /// For each derivation, its valid outputs.
    outputs: Adjacency<DrvLink>,
    /// For each path, the derivations that list it as an output.
    derivers: Adjacency<DrvLink>,
    /// Rows naming an id or path that is not a valid path (possible only
    /// when an outside writer breaks the foreign keys); they are ignored.
    dangling_rows: usize,
}

impl GcGraph {
    /// Builds the graph from the bulk rows. Rows naming unknown ids are
    /// ignored (and counted); duplicate paths are merged.
    pub fn new(store_dir: &StoreDir, rows: GcRows, limits: &GcLimits) -> Result<GcGraph, GcError> {
        let paths_max = limits.paths_max.min(NODES_MAX - 1);
        if rows.paths.len() > paths_max {
            return Err(GcError::TooManyPaths {
                count: rows.paths.len(),
                max: paths_max,
            });
        }
        if rows.references.len() > limits.references_max {
            return Err(GcError::TooManyReferences {
                count: rows.references.len(),
                max: limits.references_max,
            });
        }
        if rows.derivation_outputs.len() > limits.derivation_outputs_max {
            return Err(GcError::TooManyDerivationOutputs {
                count: rows.derivation_outputs.len(),
                max: limits.derivation_outputs_max,
            });
        }

        let GcRows {
            paths: mut path_rows,
            references,
            derivation_outputs,
        } = rows;
        path_rows.sort_unstable_by(|a, b| a.path.cmp(&b.path));

        // Node ids follow path order; a duplicate path (impossible under the
        // schema's `unique`) shares the node of its first row.
        let mut paths: Vec<String> = Vec::with_capacity(path_rows.len());
        let mut nar_sizes = Vec::with_capacity(path_rows.len());
        let mut derivers_text: Vec<Option<String>> = Vec::with_capacity(path_rows.len());
        let mut ids: Vec<(i64, NodeId)> = Vec::with_capacity(path_rows.len());
        for row in path_rows {
            if paths.last() != Some(&row.path) {
                paths.push(row.path);
                nar_sizes.push(row.nar_size);
                derivers_text.push(row.deriver);
            }
            ids.push((row.id, node_id(paths.len() - 1)));
        }
        let id_map = IdMap::new(ids);
        let in_store = paths.iter().map(|p| store_dir.is_store_path(p)).collect();
        let common_prefix_len = match (paths.first(), paths.last()) {
            (Some(first), Some(last)) => first
                .bytes()
                .zip(last.bytes())
                .take_while(|(a, b)| a == b)
                .count(),
            _ => 0,
        };
        let mut key_ranges = KeyRanges::with_capacity_and_hasher(paths.len(), Default::default());
        for (i, key) in paths
            .iter()
            .map(|p| lookup_key(p, common_prefix_len))
            .enumerate()
        {
            // Equal keys are next to each other.
            key_ranges
                .entry(key)
                .and_modify(|range| range.1 = node_id(i + 1))
                .or_insert((node_id(i), node_id(i + 1)));
        }
        let n = paths.len();
        let mut dangling_rows = 0;

        let mut edges: Vec<(NodeId, NodeId)> = Vec::with_capacity(references.len());
        for (referrer, reference) in references {
            match (id_map.get(referrer), id_map.get(reference)) {
                (Some(a), Some(b)) if a != b => edges.push((a, b)),
                (Some(_), Some(_)) => {}
                _ => dangling_rows += 1,
            }
        }
        let references = Adjacency::build(n, edges.iter().copied());
        let referrers = Adjacency::build(n, edges.iter().map(|&(a, b)| (b, a)));
        drop(edges);

        let mut links: Vec<(NodeId, NodeId, bool)> = Vec::with_capacity(derivation_outputs.len());
        for (drv_id, output) in derivation_outputs {
            let Some(drv) = id_map.get(drv_id) else {
                dangling_rows += 1;
                continue;
            };
            // An output that is not valid has no node, and no edge: the
            // daemon's queries join on validity too.
            let Ok(out) = paths.binary_search(&output) else {
                continue;
            };
            let out = node_id(out);
            let drv_path = &paths[drv as usize];
            let kept = drv_path.ends_with(".drv")
                && derivers_text[out as usize].as_deref() == Some(drv_path.as_str());
            links.push((drv, out, kept));
        }
        drop(derivers_text);
        let outputs = Adjacency::build(
            n,
            links
                .iter()
                .map(|&(drv, out, kept)| (drv, DrvLink { node: out, kept })),
        );
        let derivers = Adjacency::build(
            n,
            links
                .iter()
                .map(|&(drv, out, kept)| (out, DrvLink { node: drv, kept })),
        );

        Ok(GcGraph {
            store_dir: store_dir.clone(),
            paths,
            common_prefix_len,
            key_ranges,
            nar_sizes,
            in_store,
            references,
            referrers,
            outputs,
            derivers,
            dangling_rows,
        })
    }

    /// The number of valid paths.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// The node of a valid path.
    pub fn node(&self, path: &str) -> Option<NodeId> {
        // In bytes: the shared prefix may end inside a UTF-8 character.
        let prefix = self
            .paths
            .first()?
            .as_bytes()
            .get(..self.common_prefix_len)?;
        if !path.as_bytes().starts_with(prefix) {
            return None;
        }
        let key = lookup_key(path, self.common_prefix_len);
        let &(start, end) = self.key_ranges.get(&key)?;
        let start = start as usize;
        self.paths[start..end as usize]
            .binary_search_by(|p| p.as_str().cmp(path))
            .ok()
            .map(|i| node_id(start + i))
    }

    /// The path of `node`, as the database spells it.
    pub fn path(&self, node: NodeId) -> &str {
        &self.paths[node as usize]
    }

    /// The path of `node` when it is a store path of the graph's store.
    pub fn store_path(&self, node: NodeId) -> Option<StorePath> {
        if !self.in_store[node as usize] {
            return None;
        }
        self.store_dir.parse_path(&self.paths[node as usize]).ok()
    }

    /// Whether `node` is a store path of the graph's store.
    pub fn is_in_store(&self, node: NodeId) -> bool {
        self.in_store[node as usize]
    }

    /// The recorded NAR size of `node` (0 when unknown).
    pub fn nar_size(&self, node: NodeId) -> u64 {
        self.nar_sizes[node as usize]
    }

    /// The paths `node` refers to, itself excluded, in no particular order.
    pub fn references(&self, node: NodeId) -> &[NodeId] {
        self.references.of(node)
    }

    /// The paths that refer to `node`, itself excluded, in no particular
    /// order.
    pub fn referrers(&self, node: NodeId) -> &[NodeId] {
        self.referrers.of(node)
    }

    /// Rows that named unknown ids and were ignored.
    pub fn dangling_rows(&self) -> usize {
        self.dangling_rows
    }

    /// Calls `f` for every path that `node` keeps alive: its references;
    /// with `keep.outputs`, the outputs it lists (if it is a derivation);
    /// with `keep.derivations`, the derivations that list it as an output
    /// and that it names as its deriver.
    fn for_each_kept(&self, node: NodeId, keep: Keep, mut f: impl FnMut(NodeId)) {
        for &r in self.references.of(node) {
            f(r);
        }
        if keep.outputs {
            for link in self.outputs.of(node) {
                f(link.node);
            }
        }
        if keep.derivations {
            for link in self.derivers.of(node) {
                if link.kept {
                    f(link.node);
                }
            }
        }
    }

    /// The transpose of [`GcGraph::for_each_kept`]: calls `f` for every
    /// path whose liveness makes `node` alive (the C++ `canReachRoot`'s
    /// "incoming" set).
    fn for_each_keeper(&self, node: NodeId, keep: Keep, mut f: impl FnMut(NodeId)) {
        for &r in self.referrers.of(node) {
            f(r);
        }
        if keep.derivations {
            for link in self.outputs.of(node) {
                if link.kept {
                    f(link.node);
                }
            }
        }
        if keep.outputs {
            for link in self.derivers.of(node) {
                f(link.node);
            }
        }
    }
}

/// Everything that keeps store paths alive for one collection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcRoots {
    /// The roots under `gcroots`, `manifests` and `profiles`, and the
    /// runtime roots of `guix gc --list-busy`.
    pub permanent: BTreeSet<StorePath>,
    /// The temporary roots of every session of this daemon and those read
    /// from other processes' `temproots` files.
    pub temporary: BTreeSet<StorePath>,
    /// The paths held in the core's lock table (items being added or
    /// built); treated like temporary roots.
    pub locked: BTreeSet<StorePath>,
}

/// What the collector is asked to do (the wire's `action`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GcAction {
    /// 0: list the live paths.
    ReturnLive,
    /// 1: list the dead paths.
    ReturnDead,
    /// 2: delete every dead path (up to `max_freed_bytes`).
    DeleteDead,
    /// 3: delete these paths and their referrers, all of which must be
    /// dead; they are handled in this (sorted) order.
    DeleteSpecific(BTreeSet<StorePath>),
}

/// How one collection runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcOptions {
    pub action: GcAction,
    /// `gc-keep-outputs` (default false).
    pub keep_outputs: bool,
    /// `gc-keep-derivations` (default true).
    pub keep_derivations: bool,
    /// Stop once more than this many bytes were freed or invalidated;
    /// [`UNLIMITED_BYTES`] for no limit. 0 makes the store-wide actions do
    /// nothing, as in the daemon.
    pub max_freed_bytes: u64,
    /// Seeds the shuffle of delete-dead's order (the daemon shuffles so
    /// that a size limit does not always hit the same paths first).
    pub seed: u64,
}

impl GcOptions {
    /// `action` with the daemon's defaults.
    pub fn new(action: GcAction) -> GcOptions {
        GcOptions {
            action,
            keep_outputs: false,
            keep_derivations: true,
            max_freed_bytes: UNLIMITED_BYTES,
            seed: 0,
        }
    }
}

/// One path to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Victim {
    pub path: StorePath,
    /// Its node when it was valid at planning time; `None` for an invalid
    /// entry of the store directory (or a requested path that is not
    /// valid), which must still be invalid when it is deleted.
    pub node: Option<NodeId>,
    /// Named by a delete-specific request (rather than being a referrer).
    pub requested: bool,
}

impl Victim {
    /// Whether the deletion should find the path valid (and invalidate it)
    /// rather than invalid.
    pub fn expect_valid(&self) -> bool {
        self.node.is_some()
    }
}

/// The collector's decisions for one collection.
#[derive(Clone, Debug)]
pub struct GcPlan {
    /// For return-live and return-dead: the paths to reply with, sorted.
    /// Empty for the deleting actions.
    pub listed: Vec<StorePath>,
    /// For the deleting actions: what to delete, in order.
    pub order: Vec<Victim>,
    /// For delete-specific: the refusal to report once `order` is done.
    pub failure: Option<GcError>,
    /// Valid paths found alive.
    pub live_count: usize,
    alive: Vec<bool>,
    keep: Keep,
    max_freed_bytes: u64,
}

/// Decides what is alive and what to delete. `entries` are the names in
/// the store directory (in any order; for delete-dead, invalid ones are
/// deleted first, in this order).
///
/// With `max_freed_bytes` 0 the store-wide actions plan nothing, as in the
/// daemon, which does not even walk the store then.
pub fn plan(graph: &GcGraph, roots: &GcRoots, entries: &[String], options: &GcOptions) -> GcPlan {
    let keep = Keep {
        outputs: options.keep_outputs,
        derivations: options.keep_derivations,
    };
    let root_names: BTreeSet<&str> = roots
        .permanent
        .iter()
        .chain(&roots.temporary)
        .chain(&roots.locked)
        .map(StorePath::as_str)
        .collect();
    let protected: BTreeSet<&str> = roots
        .temporary
        .iter()
        .chain(&roots.locked)
        .map(StorePath::as_str)
        .collect();

    let mut alive = vec![false; graph.len()];
    let mut stack = Vec::new();
    for name in &root_names {
        if let Some(node) = graph.node(name) {
            if !alive[node as usize] {
                alive[node as usize] = true;
                stack.push(node);
            }
        }
    }
    // A row that is not a store path cannot be collected; what it refers
    // to stays too.
    for (node, (in_store, alive)) in graph.in_store.iter().zip(alive.iter_mut()).enumerate() {
        if !in_store && !*alive {
            *alive = true;
            stack.push(node_id(node));
        }
    }
    propagate(graph, keep, &mut alive, stack);
    let live_count = alive.iter().filter(|&&a| a).count();

    let ctx = Context {
        graph,
        root_names: &root_names,
        protected: &protected,
        alive: &alive,
        keep,
    };
    let mut listed = Vec::new();
    let mut order = Vec::new();
    let mut failure = None;
    match &options.action {
        GcAction::DeleteSpecific(paths) => (order, failure) = ctx.delete_specific(paths),
        _ if options.max_freed_bytes == 0 => {}
        GcAction::ReturnLive => listed = ctx.return_live(entries),
        GcAction::ReturnDead => listed = ctx.return_dead(entries),
        GcAction::DeleteDead => order = ctx.delete_dead(entries, options.seed),
    }
    GcPlan {
        listed,
        order,
        failure,
        live_count,
        alive,
        keep,
        max_freed_bytes: options.max_freed_bytes,
    }
}

impl GcPlan {
    /// Whether `node` was found alive (or was revived since).
    pub fn is_alive(&self, node: NodeId) -> bool {
        self.alive[node as usize]
    }
}

/// What one deletion effect found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The path is invalid now (it was invalidated, or already was).
    Deleted {
        /// Whether anything was at the path on disk (only then does the
        /// path count as deleted and get a progress line).
        existed: bool,
        /// Bytes of files whose last link went away.
        freed_bytes: u64,
        /// The NAR size of a directory moved to the trash (freed later).
        invalidated_bytes: u64,
        /// A note to print (lvlInfo), e.g. when the trash could not be
        /// used: ``note: can't create move `P': …``.
        note: Option<String>,
    },
    /// The path has referrers other than itself (registered after the
    /// plan was made); nothing was done.
    InUse { referrers: Vec<String> },
    /// The path was planned as an invalid entry but is valid now; nothing
    /// was done.
    BecameValid,
}

/// Carries out a plan, one deletion at a time: [`GcRun::next_victim`] names
/// the next victim; the core checks that nothing of its own protects it (a
/// lock in its lock table, a session's temporary root) — if something does,
/// it calls [`GcRun::skip_protected`] — and otherwise runs the deletion
/// effect and hands the outcome to [`GcRun::complete`], which returns the
/// lines to print. [`GcRun::revive`] may be called at any time, e.g. when a
/// session adds a temporary root while the run goes on. [`GcRun::finish`]
/// gives the reply.
///
/// Contract: at most one victim is in flight; `complete` must follow each
/// `next_victim` that returned a victim before it is called again.
#[derive(Debug)]
pub struct GcRun {
    graph: GcGraph,
    plan: GcPlan,
    cursor: usize,
    in_flight: Option<usize>,
    /// Invalid victims taken off the plan.
    revived_invalid: BTreeSet<String>,
    bytes_freed: u64,
    bytes_invalidated: u64,
    deleted: Vec<StorePath>,
    stopped: bool,
    failure: Option<GcError>,
    revived_count: usize,
}

/// The reply of a collection's deletions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcOutcome {
    /// The paths deleted (that existed on disk), sorted.
    pub paths: Vec<StorePath>,
    /// Bytes freed by the deletions (the trash and `.links` come on top).
    pub bytes_freed: u64,
    /// For delete-specific: the refusal that ended it.
    pub failure: Option<GcError>,
}

impl GcRun {
    pub fn new(graph: GcGraph, plan: GcPlan) -> GcRun {
        GcRun {
            graph,
            plan,
            cursor: 0,
            in_flight: None,
            revived_invalid: BTreeSet::new(),
            bytes_freed: 0,
            bytes_invalidated: 0,
            deleted: Vec::new(),
            stopped: false,
            failure: None,
            revived_count: 0,
        }
    }

    /// The next path to delete, or `None` when the run is over (all done,
    /// the size limit was reached, or a requested path is alive).
    pub fn next_victim(&mut self) -> Option<Victim> {
        debug_assert!(
            self.in_flight.is_none(),
            "complete() must follow next_victim()"
        );
        if self.in_flight.is_some() || self.stopped {
            return None;
        }
        while let Some(victim) = self.plan.order.get(self.cursor) {
            let index = self.cursor;
            self.cursor += 1;
            let alive = match victim.node {
                Some(node) => self.plan.alive[node as usize],
                None => self.revived_invalid.contains(victim.path.as_str()),
            };
            if alive {
                if victim.requested {
                    self.fail(GcError::StillAlive(victim.path.to_string()));
                    return None;
                }
                continue;
            }
            self.in_flight = Some(index);
            return Some(victim.clone());
        }
        if let Some(failure) = self.plan.failure.take() {
            self.fail(failure);
        }
        self.stopped = true;
        None
    }

    /// The victim whose deletion is in flight.
    pub fn in_flight(&self) -> Option<&Victim> {
        self.in_flight.map(|i| &self.plan.order[i])
    }

    /// Takes `path` off the plan because it turned out to be alive (a new
    /// temporary root, a lock, a new referrer): neither it nor anything it
    /// keeps alive will be deleted.
    pub fn revive(&mut self, path: &str) {
        self.revived_count += 1;
        match self.graph.node(path) {
            Some(node) if !self.plan.alive[node as usize] => {
                self.plan.alive[node as usize] = true;
                propagate(
                    &self.graph,
                    self.plan.keep,
                    &mut self.plan.alive,
                    vec![node],
                );
            }
            Some(_) => {}
            None => {
                self.revived_invalid.insert(path.to_owned());
            }
        }
    }

    /// Records the outcome of the deletion in flight. Returns the lines to
    /// print at the info level: the progress line (``[<pct>%] deleting
    /// 'P'`` or ``[<size>] deleting 'P'``), any note, and the line that
    /// says the size limit was reached.
    pub fn complete(&mut self, outcome: DeleteOutcome) -> Vec<String> {
        let Some(index) = self.in_flight.take() else {
            return Vec::new();
        };
        let mut lines = Vec::new();
        match outcome {
            DeleteOutcome::Deleted {
                existed,
                freed_bytes,
                invalidated_bytes,
                note,
            } => {
                if !existed {
                    return lines;
                }
                let path = self.plan.order[index].path.clone();
                lines.push(deleting_line(
                    path.as_str(),
                    self.bytes_freed.saturating_add(self.bytes_invalidated),
                    self.plan.max_freed_bytes,
                ));
                lines.extend(note);
                self.deleted.push(path);
                self.bytes_freed = self.bytes_freed.saturating_add(freed_bytes);
                self.bytes_invalidated = self.bytes_invalidated.saturating_add(invalidated_bytes);
                if self.bytes_freed.saturating_add(self.bytes_invalidated)
                    > self.plan.max_freed_bytes
                {
                    lines.push(limit_line(self.plan.max_freed_bytes));
                    self.stopped = true;
                }
            }
            DeleteOutcome::InUse { .. } | DeleteOutcome::BecameValid => {
                let victim = self.plan.order[index].clone();
                self.revive(victim.path.as_str());
                if victim.requested {
                    self.fail(GcError::StillAlive(victim.path.to_string()));
                }
            }
        }
        lines
    }

    /// The victim in flight is protected by the core itself: it is not
    /// deleted, and it is revived.
    pub fn skip_protected(&mut self) {
        self.complete(DeleteOutcome::InUse {
            referrers: Vec::new(),
        });
    }

    /// Bytes freed so far by deletions.
    pub fn bytes_freed(&self) -> u64 {
        self.bytes_freed
    }

    /// NAR sizes of directories moved to the trash so far.
    pub fn bytes_invalidated(&self) -> u64 {
        self.bytes_invalidated
    }

    /// How many times a path was revived.
    pub fn revived_count(&self) -> usize {
        self.revived_count
    }

    /// The graph the run works on (for lookups while it runs).
    pub fn graph(&self) -> &GcGraph {
        &self.graph
    }

    /// Ends the run: the deleted paths, sorted, and the bytes freed.
    pub fn finish(mut self) -> GcOutcome {
        self.deleted.sort();
        self.deleted.dedup();
        GcOutcome {
            paths: self.deleted,
            bytes_freed: self.bytes_freed,
            failure: self.failure,
        }
    }

    fn fail(&mut self, error: GcError) {
        if self.failure.is_none() {
            self.failure = Some(error);
        }
        self.stopped = true;
    }
}

// ---- results of the collector's effects (the os layer fills these in)

/// Verbosity levels of the messages the collector's effects return (the
/// daemon's `lvlError` … `lvlVomit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Info = 1,
    Talkative = 2,
    Chatty = 3,
    Debug = 4,
    Vomit = 5,
}

/// The roots found on disk (spec 03 §9.1), as `find-roots` replies them:
/// the link (or file) and the store item it keeps, sorted by link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FoundRoots {
    pub roots: Vec<(String, StorePath)>,
    /// ``skipping invalid root from `L' to `P'``, ``removing stale link
    /// from `L' to `T'``, ``cannot read potential root 'P': …``, all at
    /// the info level, in the order the scan met them.
    pub messages: Vec<String>,
}

/// Other processes' temporary roots, read while holding `gc.lock`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TempRootsRead {
    pub roots: BTreeSet<StorePath>,
    /// ``removing stale temporary roots file `F'``, at the error level.
    pub messages: Vec<String>,
}

/// The trash directory at the start of a collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrashPrepared {
    /// Whether directories are moved to the trash (false when it could not
    /// be created).
    pub use_trash: bool,
    /// Bytes freed by deleting a leftover trash.
    pub freed_bytes: u64,
    /// ``note: can't create trash directory: …`` (info level).
    pub note: Option<String>,
}

/// The clean-up of `.links` after a deleting collection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinksReport {
    /// Sizes of the links removed.
    pub freed_bytes: u64,
    /// What hard linking saves now (may be negative), for
    /// [`links_saving_line`].
    pub saved_bytes: i64,
}

/// What `verify-store` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub messages: Vec<(Level, String)>,
    /// "Errors remain": the reply of `verify-store` without repair.
    pub errors: bool,
    /// The paths a repairing `verify-store` tries to repair, in the order
    /// found, each after the message at `message_index` that reported it.
    pub repairable: Vec<Repairable>,
    /// Errors other than those of `repairable` (the reply with repair,
    /// unless a repair fails).
    pub other_errors: bool,
}

/// A valid path whose files are modified or gone (while valid paths
/// still refer to it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repairable {
    pub path: StorePath,
    /// Gone from the store directory (rather than modified).
    pub vanished: bool,
    /// Index in [`VerifyReport::messages`] of the line that reported it.
    pub message_index: usize,
}

/// What `optimise-store` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OptimiseReport {
    pub files_linked: u64,
    pub bytes_freed: u64,
    /// Files left alone, in the daemon's words (error level).
    pub warnings: Vec<String>,
}

// ---- the daemon's words

/// `showBytes`: a size with two decimals and a binary unit above 1 KiB,
/// else in bytes (`"   0  bytes"`: width 4, two spaces). Like the daemon,
/// negative values are always shown in bytes.
pub fn show_bytes(bytes: i64) -> String {
    const UNITS: [(u32, &str); 6] = [
        (60, "EiB"),
        (50, "PiB"),
        (40, "TiB"),
        (30, "GiB"),
        (20, "MiB"),
        (10, "KiB"),
    ];
    for (shift, unit) in UNITS {
        if bytes > (1i64 << shift) {
            return format!("{:7.2} {unit}", bytes as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{bytes:4}  bytes")
}

/// The progress line of one deletion, given the bytes freed and
/// invalidated before it.
pub fn deleting_line(path: &str, freed_bytes: u64, max_freed_bytes: u64) -> String {
    if max_freed_bytes == UNLIMITED_BYTES {
        format!(
            "[{}] deleting '{path}'",
            show_bytes(i64::try_from(freed_bytes).unwrap_or(i64::MAX))
        )
    } else {
        let fraction = freed_bytes as f64 / max_freed_bytes as f64;
        // Truncation, as the daemon's conversion to `unsigned int` does.
        let percent = (fraction.min(1.0) * 100.0) as u32;
        format!("[{percent}%] deleting '{path}'")
    }
}

/// The line that ends a collection limited by size.
pub fn limit_line(max_freed_bytes: u64) -> String {
    format!("deleted or invalidated more than {max_freed_bytes} bytes; stopping")
}

/// The refusal to invalidate a path that still has referrers.
pub fn in_use_message(path: &str, referrers: &[String]) -> String {
    format!(
        "cannot delete path `{path}' because it is in use by {}",
        show_paths(referrers)
    )
}

/// `showPaths`: each path quoted `` `P' ``, separated by `", "`.
pub fn show_paths(paths: &[String]) -> String {
    let quoted: Vec<String> = paths.iter().map(|p| format!("`{p}'")).collect();
    quoted.join(", ")
}

/// Printed (info level) before the trash is emptied.
pub fn deleting_trash_line(trash: &str) -> String {
    format!("deleting `{trash}'")
}

/// Printed (info level) after `.links` was cleaned up.
pub fn links_saving_line(saved_bytes: i64) -> String {
    format!(
        "note: currently hard linking saves {}",
        show_bytes(saved_bytes)
    )
}

/// Printed (error level) at the end of `optimise-store`.
pub fn optimise_line(bytes_freed: u64, files_linked: u64) -> String {
    format!(
        "{} freed by hard-linking {files_linked} files",
        show_bytes(i64::try_from(bytes_freed).unwrap_or(i64::MAX))
    )
}

// ---- helpers

/// Which extra edges keep paths alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Keep {
    outputs: bool,
    derivations: bool,
}

/// A derivation-output edge: `node` is the other end; `kept` when the
/// output names the derivation as its deriver and the derivation's name
/// ends in `.drv` (the condition of `gc-keep-derivations`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DrvLink {
    node: NodeId,
    kept: bool,
}

/// Adjacency lists in compressed form: the neighbours of node `i` are
/// `items[start[i]..start[i + 1]]`.
#[derive(Clone, Debug)]
struct Adjacency<T> {
    start: Vec<usize>,
    items: Vec<T>,
}

impl<T: Copy> Adjacency<T> {
    /// Builds the lists of `n` nodes from `(node, item)` pairs (a counting
    /// sort: two passes over the pairs).
    fn build<I>(n: usize, pairs: I) -> Adjacency<T>
    where
        I: Iterator<Item = (NodeId, T)> + Clone,
    {
        let mut start = vec![0usize; n + 1];
        for (node, _) in pairs.clone() {
            start[node as usize + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut items: Vec<Option<T>> = vec![None; start[n]];
        for (node, item) in pairs {
            items[fill[node as usize]] = Some(item);
            fill[node as usize] += 1;
        }
        Adjacency {
            start,
            // Every slot was filled: the first pass counted exactly the
            // pairs of the second.
            items: items.into_iter().flatten().collect(),
        }
    }

    fn of(&self, node: NodeId) -> &[T] {
        let i = node as usize;
        &self.items[self.start[i]..self.start[i + 1]]
    }
}

/// Database ids to nodes: a direct table when ids are dense (the usual
/// case, with `autoincrement`), binary search otherwise.
enum IdMap {
    Dense(Vec<NodeId>),
    Sorted(Vec<(i64, NodeId)>),
}

const NO_NODE: NodeId = NodeId::MAX;

impl IdMap {
    fn new(mut ids: Vec<(i64, NodeId)>) -> IdMap {
        let max = ids.iter().map(|&(id, _)| id).max().unwrap_or(0);
        let min = ids.iter().map(|&(id, _)| id).min().unwrap_or(0);
        let dense_max = ids.len().saturating_mul(4).saturating_add(1024);
        if min >= 0 && (max as u64) < dense_max as u64 {
            let mut table = vec![NO_NODE; max as usize + 1];
            for (id, node) in ids {
                table[id as usize] = node;
            }
            IdMap::Dense(table)
        } else {
            ids.sort_unstable();
            IdMap::Sorted(ids)
        }
    }

    fn get(&self, id: i64) -> Option<NodeId> {
        match self {
            IdMap::Dense(table) => {
                let node = *table.get(usize::try_from(id).ok()?)?;
                (node != NO_NODE).then_some(node)
            }
            IdMap::Sorted(ids) => ids
                .binary_search_by_key(&id, |&(id, _)| id)
                .ok()
                .map(|i| ids[i].1),
        }
    }
}

/// The 8 bytes of `path` after its first `skip` bytes, big-endian, padded
/// with zeros: paths in bytewise order have keys in non-decreasing order.
fn lookup_key(path: &str, skip: usize) -> u64 {
    let mut bytes = [0u8; 8];
    if let Some(rest) = path.as_bytes().get(skip..) {
        let n = rest.len().min(8);
        bytes[..n].copy_from_slice(&rest[..n]);
    }
    u64::from_be_bytes(bytes)
}

/// A node id from an index below [`NODES_MAX`] (checked when the graph is
/// built).
fn node_id(index: usize) -> NodeId {
    debug_assert!(index < NODES_MAX);
    index as NodeId
}

/// Marks alive everything that the nodes on `stack` (already marked) keep
/// alive.
fn propagate(graph: &GcGraph, keep: Keep, alive: &mut [bool], mut stack: Vec<NodeId>) {
    while let Some(node) = stack.pop() {
        graph.for_each_kept(node, keep, |next| {
            if !alive[next as usize] {
                alive[next as usize] = true;
                stack.push(next);
            }
        });
    }
}

/// What the planners share.
struct Context<'a> {
    graph: &'a GcGraph,
    root_names: &'a BTreeSet<&'a str>,
    protected: &'a BTreeSet<&'a str>,
    alive: &'a [bool],
    keep: Keep,
}

/// How the collector sees one entry of the store directory.
enum Entry {
    /// Never considered (`.links`, `trash`, transient names, companions of
    /// protected paths).
    Skipped,
    LiveValid,
    DeadValid(NodeId),
    LiveInvalid(StorePath),
    DeadInvalid(StorePath),
}

impl Context<'_> {
    /// Classifies the store-directory entry `name`.
    fn classify(&self, name: &str) -> Entry {
        if is_special_name(name) {
            return Entry::Skipped;
        }
        let store_dir = &self.graph.store_dir;
        let full = format!("{}/{name}", store_dir.as_str());
        // Most entries are valid store paths: their node says it all,
        // without parsing the name again (the graph checked it once).
        if let Some(node) = self.graph.node(&full)
            && self.graph.in_store[node as usize]
        {
            return if self.alive[node as usize] {
                Entry::LiveValid
            } else {
                Entry::DeadValid(node)
            };
        }
        match store_dir.parse_path(&full) {
            Ok(path) => self.classify_path(path),
            Err(_) => Entry::Skipped,
        }
    }

    fn classify_path(&self, path: StorePath) -> Entry {
        match self.graph.node(path.as_str()) {
            Some(node) if self.alive[node as usize] => Entry::LiveValid,
            Some(node) => Entry::DeadValid(node),
            None if self.is_active_temp_file(path.as_str()) => Entry::Skipped,
            None if self.root_names.contains(path.as_str()) => Entry::LiveInvalid(path),
            None => Entry::DeadInvalid(path),
        }
    }

    /// `X.lock` and `X.chroot` belong to a build or an addition of `X` in
    /// progress when `X` is a temporary root or locked.
    fn is_active_temp_file(&self, path: &str) -> bool {
        [".lock", ".chroot"].iter().any(|suffix| {
            path.strip_suffix(suffix)
                .is_some_and(|stem| self.protected.contains(stem))
        })
    }

    /// Every live valid path, and the live (rooted) invalid entries.
    fn return_live(&self, entries: &[String]) -> Vec<StorePath> {
        let mut listed: Vec<StorePath> = (0..self.graph.len())
            .filter(|&i| self.alive[i])
            .filter_map(|i| self.graph.store_path(node_id(i)))
            .collect();
        for name in entries {
            if let Entry::LiveInvalid(path) = self.classify(name) {
                listed.push(path);
            }
        }
        listed.sort();
        listed.dedup();
        listed
    }

    /// The dead entries of the store directory, and every path that keeps
    /// one of them alive (all dead too): what the daemon's walk marks dead.
    fn return_dead(&self, entries: &[String]) -> Vec<StorePath> {
        let graph = self.graph;
        let mut listed = Vec::new();
        let mut seen = vec![false; graph.len()];
        let mut stack = Vec::new();
        for name in entries {
            match self.classify(name) {
                Entry::DeadInvalid(path) => listed.push(path),
                Entry::DeadValid(node) if !seen[node as usize] => {
                    seen[node as usize] = true;
                    stack.push(node);
                }
                _ => {}
            }
        }
        while let Some(node) = stack.pop() {
            if let Some(path) = graph.store_path(node) {
                listed.push(path);
            }
            graph.for_each_keeper(node, self.keep, |keeper| {
                // A keeper of a dead path is dead; the check only keeps a
                // bug from listing a live path.
                if !seen[keeper as usize] && !self.alive[keeper as usize] {
                    seen[keeper as usize] = true;
                    stack.push(keeper);
                }
            });
        }
        listed.sort();
        listed.dedup();
        listed
    }

    /// Invalid dead entries first, in the order given; then the valid dead
    /// entries in a seeded random order, each after its referrers.
    fn delete_dead(&self, entries: &[String], seed: u64) -> Vec<Victim> {
        let mut order = Order::new(self.graph.len());
        let mut valid = Vec::new();
        for name in entries {
            match self.classify(name) {
                Entry::DeadInvalid(path) => order.push_invalid(path, false),
                Entry::DeadValid(node) => valid.push(node),
                _ => {}
            }
        }
        valid.sort_unstable();
        valid.dedup();
        shuffle(&mut valid, seed);
        for node in valid {
            order.push_with_referrers(self.graph, self.alive, node, false);
        }
        order.victims
    }

    /// Each requested path in turn, after its referrers; the first live
    /// one ends the plan with the daemon's refusal.
    fn delete_specific(&self, paths: &BTreeSet<StorePath>) -> (Vec<Victim>, Option<GcError>) {
        let mut order = Order::new(self.graph.len());
        for path in paths {
            let entry = if is_special_name(path.base_name()) {
                Entry::Skipped
            } else {
                self.classify_path(path.clone())
            };
            match entry {
                Entry::DeadValid(node) => {
                    order.push_with_referrers(self.graph, self.alive, node, true);
                }
                Entry::DeadInvalid(path) => order.push_invalid(path, true),
                Entry::Skipped | Entry::LiveValid | Entry::LiveInvalid(_) => {
                    return (order.victims, Some(GcError::StillAlive(path.to_string())));
                }
            }
        }
        (order.victims, None)
    }
}

/// Names the collector never touches, whatever they are.
fn is_special_name(name: &str) -> bool {
    name == LINKS_DIR_NAME
        || name == TRASH_DIR_NAME
        || TRANSIENT_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// A deletion order under construction.
struct Order {
    victims: Vec<Victim>,
    /// Per node: 0 not met, 1 on the walk's stack, 2 placed.
    state: Vec<u8>,
    /// Per placed node: its index in `victims`.
    position: Vec<u32>,
    invalid: BTreeSet<String>,
}

impl Order {
    fn new(n: usize) -> Order {
        Order {
            victims: Vec::new(),
            state: vec![0; n],
            position: vec![u32::MAX; n],
            invalid: BTreeSet::new(),
        }
    }

    fn push_invalid(&mut self, path: StorePath, requested: bool) {
        if self.invalid.insert(path.as_str().to_owned()) {
            self.victims.push(Victim {
                path,
                node: None,
                requested,
            });
        } else if requested {
            if let Some(v) = self.victims.iter_mut().find(|v| v.path == path) {
                v.requested = true;
            }
        }
    }

    /// Places `start` after all of its referrers not placed yet, depth
    /// first (the daemon's `deletePathRecursive`, without recursion). A
    /// referrer cycle, which the schema's registration forbids but an
    /// outside writer could make, is cut where the walk meets it; the
    /// database then refuses one of its deletions and the run revives it.
    fn push_with_referrers(
        &mut self,
        graph: &GcGraph,
        alive: &[bool],
        start: NodeId,
        requested: bool,
    ) {
        if self.state[start as usize] == 0 {
            self.state[start as usize] = 1;
            let mut stack: Vec<(NodeId, usize)> = vec![(start, 0)];
            while let Some(top) = stack.last_mut() {
                let (node, next) = *top;
                let referrers = graph.referrers(node);
                if let Some(&referrer) = referrers.get(next) {
                    top.1 += 1;
                    let r = referrer as usize;
                    if self.state[r] == 0 && !alive[r] {
                        self.state[r] = 1;
                        stack.push((referrer, 0));
                    }
                    continue;
                }
                stack.pop();
                self.state[node as usize] = 2;
                if let Some(path) = graph.store_path(node) {
                    self.position[node as usize] = self.victims.len() as u32;
                    self.victims.push(Victim {
                        path,
                        node: Some(node),
                        requested: false,
                    });
                }
            }
        }
        if requested {
            let position = self.position[start as usize];
            if let Some(victim) = self.victims.get_mut(position as usize) {
                victim.requested = true;
            }
        }
    }
}

/// Fisher–Yates with splitmix64: deterministic for a seed, unbiased enough
/// for spreading deletions over the store.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const STORE: &str = "/gnu/store";

    fn store_dir() -> StoreDir {
        StoreDir::new(STORE).unwrap()
    }

    fn sp(path: &str) -> StorePath {
        store_dir().parse_path(path).unwrap()
    }

    /// The path of test item `name`: a 32-character hash part and a name.
    fn item(i: usize, name: &str) -> String {
        format!("{STORE}/{i:0>32}-{name}")
    }

    fn row(id: i64, path: &str, deriver: Option<&str>, nar_size: u64) -> PathRow {
        PathRow {
            id,
            path: path.to_owned(),
            deriver: deriver.map(str::to_owned),
            nar_size,
        }
    }

    fn names(paths: &[StorePath]) -> Vec<String> {
        paths.iter().map(|p| p.base_name().to_owned()).collect()
    }

    fn base(path: &str) -> String {
        path.rsplit('/').next().unwrap().to_owned()
    }

    // ---- the daemon's words

    #[test]
    fn show_bytes_matches_the_daemon() {
        assert_eq!(show_bytes(0), "   0  bytes");
        assert_eq!(show_bytes(5), "   5  bytes");
        assert_eq!(show_bytes(1024), "1024  bytes");
        assert_eq!(show_bytes(1025), "   1.00 KiB");
        assert_eq!(show_bytes(1152), "   1.12 KiB");
        assert_eq!(show_bytes(1 << 20), "1024.00 KiB");
        assert_eq!(show_bytes(3 << 29), "   1.50 GiB");
        assert_eq!(show_bytes(123_456_789_012), " 114.98 GiB");
        assert_eq!(show_bytes(i64::MAX), "   8.00 EiB");
        assert_eq!(show_bytes(-5000), "-5000  bytes");
        assert_eq!(show_bytes(-12), " -12  bytes");
    }

    #[test]
    fn progress_lines() {
        let p = "/gnu/store/x-y";
        assert_eq!(
            deleting_line(p, 0, UNLIMITED_BYTES),
            "[   0  bytes] deleting '/gnu/store/x-y'"
        );
        assert_eq!(
            deleting_line(p, 2048 + 512, UNLIMITED_BYTES),
            "[   2.50 KiB] deleting '/gnu/store/x-y'"
        );
        assert_eq!(deleting_line(p, 0, 1000), "[0%] deleting '/gnu/store/x-y'");
        assert_eq!(
            deleting_line(p, 999, 1000),
            "[99%] deleting '/gnu/store/x-y'"
        );
        assert_eq!(
            deleting_line(p, 5000, 1000),
            "[100%] deleting '/gnu/store/x-y'"
        );
        assert_eq!(
            limit_line(1000),
            "deleted or invalidated more than 1000 bytes; stopping"
        );
        assert_eq!(
            in_use_message(
                "/gnu/store/a",
                &["/gnu/store/b".into(), "/gnu/store/c".into()]
            ),
            "cannot delete path `/gnu/store/a' because it is in use by `/gnu/store/b', `/gnu/store/c'"
        );
        assert_eq!(
            links_saving_line(-4096),
            "note: currently hard linking saves -4096  bytes"
        );
        assert_eq!(
            optimise_line(3 << 20, 7),
            "   3.00 MiB freed by hard-linking 7 files"
        );
        assert_eq!(
            GcError::StillAlive("/gnu/store/a".into()).to_string(),
            "cannot delete path `/gnu/store/a' since it is still alive"
        );
    }

    // ---- hand-made graphs

    /// `app` refers to `lib`; `app.drv` built `app`; `old` refers to `lib`;
    /// `tool.drv` lists `tool` as an output but `tool` names no deriver.
    fn small() -> (GcGraph, Vec<String>) {
        let lib = item(1, "lib");
        let app = item(2, "app");
        let drv = item(3, "app.drv");
        let old = item(4, "old");
        let tool = item(5, "tool");
        let tool_drv = item(6, "tool.drv");
        let rows = GcRows {
            paths: vec![
                row(10, &lib, None, 100),
                row(11, &app, Some(&drv), 200),
                row(12, &drv, None, 10),
                row(13, &old, None, 300),
                row(14, &tool, None, 400),
                row(15, &tool_drv, None, 20),
            ],
            references: vec![(11, 10), (13, 10), (13, 13)],
            derivation_outputs: vec![
                (12, app.clone()),
                (15, tool.clone()),
                (15, item(7, "missing")),
            ],
        };
        let graph = GcGraph::new(&store_dir(), rows, &GcLimits::default()).unwrap();
        let entries = [&lib, &app, &drv, &old, &tool, &tool_drv]
            .iter()
            .map(|p| base(p))
            .collect();
        (graph, entries)
    }

    fn roots(permanent: &[&str]) -> GcRoots {
        GcRoots {
            permanent: permanent.iter().map(|p| sp(p)).collect(),
            ..GcRoots::default()
        }
    }

    #[test]
    fn the_graph_holds_the_rows() {
        let (graph, _) = small();
        assert_eq!(graph.len(), 6);
        let lib = graph.node(&item(1, "lib")).unwrap();
        let app = graph.node(&item(2, "app")).unwrap();
        let old = graph.node(&item(4, "old")).unwrap();
        assert_eq!(graph.references(app), &[lib]);
        let mut referrers = graph.referrers(lib).to_vec();
        referrers.sort();
        assert_eq!(referrers, vec![app, old]);
        assert!(graph.references(old).contains(&lib));
        assert!(
            !graph.references(old).contains(&old),
            "self-references are dropped"
        );
        assert_eq!(graph.nar_size(old), 300);
        assert_eq!(graph.dangling_rows(), 0);
        assert_eq!(graph.node(&item(7, "missing")), None);
    }

    #[test]
    fn node_finds_exactly_the_graph_paths() {
        // Paths sharing long prefixes, paths outside the store, a path that
        // is a prefix of another, and lookups of paths that are absent.
        let mut rows = Vec::new();
        let names = [
            "/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x",
            "/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x-2",
            "/gnu/store/aaaaaaab",
            "/gnu/store/aaaaaaaa",
            "/gnu/store/b",
            "/gnu/stor",
            "/other/place",
            "/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-y",
            "/gnu/store/\u{e9}t\u{e9}",
            "/gnu/store/\u{e8}re",
        ];
        for (i, name) in names.iter().enumerate() {
            rows.push(row(i as i64 + 1, name, None, 1));
        }
        let graph = GcGraph::new(
            &store_dir(),
            GcRows {
                paths: rows,
                references: Vec::new(),
                derivation_outputs: Vec::new(),
            },
            &GcLimits::default(),
        )
        .unwrap();
        for name in names {
            let node = graph.node(name).expect(name);
            assert_eq!(graph.path(node), name);
        }
        for absent in [
            "/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "/gnu/store/aaaaaaa",
            "/gnu/store/c",
            "/gnu",
            "",
            "/other/placf",
            "/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-z",
        ] {
            assert_eq!(graph.node(absent), None, "{absent}");
        }
        // One path only: every byte of it is the common prefix.
        let one = GcGraph::new(
            &store_dir(),
            GcRows {
                paths: vec![row(1, "/gnu/store/b", None, 1)],
                references: Vec::new(),
                derivation_outputs: Vec::new(),
            },
            &GcLimits::default(),
        )
        .unwrap();
        assert_eq!(one.node("/gnu/store/b"), Some(0));
        assert_eq!(one.node("/gnu/store/bb"), None);
        assert_eq!(one.node("/gnu/store/"), None);
        // A shared prefix that ends inside a character (é and è share
        // their first UTF-8 byte).
        let accents = GcGraph::new(
            &store_dir(),
            GcRows {
                paths: vec![
                    row(1, "/gnu/store/\u{e9}a", None, 1),
                    row(2, "/gnu/store/\u{e8}b", None, 1),
                ],
                references: Vec::new(),
                derivation_outputs: Vec::new(),
            },
            &GcLimits::default(),
        )
        .unwrap();
        assert_eq!(accents.node("/gnu/store/\u{e8}b"), Some(0));
        assert_eq!(accents.node("/gnu/store/\u{e9}a"), Some(1));
        assert_eq!(accents.node("/gnu/store/\u{ea}a"), None);
    }

    #[test]
    fn keep_derivations_keeps_the_drv_of_a_live_output() {
        let (graph, entries) = small();
        let live = |keep_derivations: bool, keep_outputs: bool, root: &str| {
            let mut options = GcOptions::new(GcAction::ReturnLive);
            options.keep_derivations = keep_derivations;
            options.keep_outputs = keep_outputs;
            names(&plan(&graph, &roots(&[root]), &entries, &options).listed)
        };
        let app = item(2, "app");
        assert_eq!(
            live(true, false, &app),
            vec![base(&item(1, "lib")), base(&app), base(&item(3, "app.drv"))]
        );
        assert_eq!(
            live(false, false, &app),
            vec![base(&item(1, "lib")), base(&app)]
        );
        // keep-outputs: a live derivation keeps every listed output, even one
        // that names no deriver; keep-derivations needs the deriver to match.
        let tool_drv = item(6, "tool.drv");
        assert_eq!(
            live(true, true, &tool_drv),
            vec![base(&item(5, "tool")), base(&tool_drv)]
        );
        assert_eq!(
            live(true, false, &item(5, "tool")),
            vec![base(&item(5, "tool"))]
        );
    }

    #[test]
    fn delete_dead_puts_referrers_first_and_skips_what_must_stay() {
        let (graph, mut entries) = small();
        let lib = item(1, "lib");
        let tool = item(5, "tool");
        entries.extend(
            [
                ".links",
                "trash",
                ".tmp-link-12-34",
                ".guixd-upload-1-2",
                ".guixd-text-1-3",
                "leftover",
                "xyz.lock",
                "tmp.chroot",
                "built.lock",
                "rooted",
            ]
            .map(String::from),
        );
        entries.push(format!("{}.lock", base(&tool)));
        let mut r = roots(&[]);
        r.temporary.insert(sp(&format!("{STORE}/xyz")));
        r.temporary.insert(sp(&format!("{STORE}/rooted")));
        r.locked.insert(sp(&format!("{STORE}/tmp")));
        let mut options = GcOptions::new(GcAction::DeleteDead);
        options.seed = 7;
        let p = plan(&graph, &r, &entries, &options);
        let order: Vec<String> = p
            .order
            .iter()
            .map(|v| v.path.base_name().to_owned())
            .collect();
        // Invalid entries first, in the order given.
        assert_eq!(
            order[..3],
            ["leftover", "built.lock", &format!("{}.lock", base(&tool))]
        );
        let position = |p: &str| order.iter().position(|o| *o == base(p)).unwrap();
        assert!(position(&item(2, "app")) < position(&lib));
        assert!(position(&item(4, "old")) < position(&lib));
        assert_eq!(order.len(), 3 + 6);
        assert!(p.order[..3].iter().all(|v| !v.expect_valid()));
        assert!(p.order[3..].iter().all(Victim::expect_valid));
    }

    #[test]
    fn a_root_keeps_its_closure_and_the_rest_is_dead() {
        let (graph, entries) = small();
        let app = item(2, "app");
        let r = roots(&[&app]);
        let dead = plan(&graph, &r, &entries, &GcOptions::new(GcAction::ReturnDead));
        assert_eq!(
            names(&dead.listed),
            vec![
                base(&item(4, "old")),
                base(&item(5, "tool")),
                base(&item(6, "tool.drv"))
            ]
        );
        let mut options = GcOptions::new(GcAction::ReturnDead);
        options.max_freed_bytes = 0;
        assert!(plan(&graph, &r, &entries, &options).listed.is_empty());
    }

    #[test]
    fn delete_specific_takes_referrers_and_refuses_live_paths() {
        let (graph, entries) = small();
        let lib = item(1, "lib");
        let old = item(4, "old");
        let tool = item(5, "tool");
        let options = |paths: &[&str]| {
            GcOptions::new(GcAction::DeleteSpecific(
                paths.iter().map(|p| sp(p)).collect(),
            ))
        };
        // lib's referrers app and old go first; app.drv is not a referrer.
        let p = plan(&graph, &roots(&[]), &entries, &options(&[&lib]));
        assert_eq!(p.failure, None);
        let order: Vec<&str> = p.order.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(order.len(), 3);
        assert_eq!(order[2], lib);
        assert!(p.order[2].requested && !p.order[0].requested);

        // tool is alive through a root on app? No: through its own root.
        let p = plan(&graph, &roots(&[&tool]), &entries, &options(&[&old, &tool]));
        assert_eq!(p.order.len(), 1);
        assert_eq!(p.failure, Some(GcError::StillAlive(tool.clone())));

        // An invalid, missing path is "deleted" silently; `.links` never.
        let missing = format!("{STORE}/nothing-here");
        let p = plan(&graph, &roots(&[]), &entries, &options(&[&missing]));
        assert_eq!(p.order.len(), 1);
        assert!(!p.order[0].expect_valid());
        let links = format!("{STORE}/.links");
        let p = plan(&graph, &roots(&[]), &entries, &options(&[&links]));
        assert_eq!(p.failure, Some(GcError::StillAlive(links)));
    }

    #[test]
    fn a_run_revives_paths_found_in_use_and_stops_at_the_limit() {
        let (graph, entries) = small();
        let lib = item(1, "lib");
        let app = item(2, "app");
        let mut options = GcOptions::new(GcAction::DeleteDead);
        options.seed = 3;
        let p = plan(&graph, &roots(&[]), &entries, &options);
        let mut run = GcRun::new(graph.clone(), p);
        let mut deleted = Vec::new();
        while let Some(victim) = run.next_victim() {
            if victim.path.as_str() == app {
                // A new item registered meanwhile refers to app.
                run.complete(DeleteOutcome::InUse {
                    referrers: vec![item(9, "new")],
                });
                continue;
            }
            let lines = run.complete(DeleteOutcome::Deleted {
                existed: true,
                freed_bytes: 10,
                invalidated_bytes: 0,
                note: None,
            });
            assert_eq!(lines.len(), 1);
            deleted.push(victim.path.to_string());
        }
        assert!(!deleted.contains(&app));
        assert!(!deleted.contains(&lib), "app keeps lib, and app.drv");
        assert!(!deleted.contains(&item(3, "app.drv")));
        assert_eq!(run.revived_count(), 1);
        let outcome = run.finish();
        assert_eq!(outcome.paths.len(), deleted.len());
        assert_eq!(outcome.bytes_freed, 10 * deleted.len() as u64);

        // With a limit of 15 bytes: two deletions of 10 bytes, then a stop.
        let (graph, entries) = small();
        let mut options = GcOptions::new(GcAction::DeleteDead);
        options.max_freed_bytes = 15;
        let p = plan(&graph, &roots(&[]), &entries, &options);
        let mut run = GcRun::new(graph, p);
        let mut lines = Vec::new();
        while let Some(victim) = run.next_victim() {
            assert!(victim.expect_valid());
            lines.extend(run.complete(DeleteOutcome::Deleted {
                existed: true,
                freed_bytes: 6,
                invalidated_bytes: 4,
                note: None,
            }));
        }
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("[0%] deleting '"), "{}", lines[0]);
        assert!(lines[1].starts_with("[66%] deleting '"), "{}", lines[1]);
        assert_eq!(lines[2], limit_line(15));
        let outcome = run.finish();
        assert_eq!(outcome.paths.len(), 2);
        assert_eq!(outcome.bytes_freed, 12);
    }

    #[test]
    fn a_requested_path_found_in_use_fails_the_run() {
        let (graph, entries) = small();
        let old = item(4, "old");
        let options = GcOptions::new(GcAction::DeleteSpecific([sp(&old)].into()));
        let p = plan(&graph, &roots(&[]), &entries, &options);
        let mut run = GcRun::new(graph, p);
        let victim = run.next_victim().unwrap();
        assert_eq!(victim.path.as_str(), old);
        assert_eq!(run.in_flight().map(|v| v.path.as_str()), Some(old.as_str()));
        assert!(run.complete(DeleteOutcome::BecameValid).is_empty());
        assert_eq!(run.next_victim(), None);
        assert_eq!(run.finish().failure, Some(GcError::StillAlive(old)));
    }

    #[test]
    fn sparse_and_dangling_ids_are_handled() {
        let a = item(1, "a");
        let b = item(2, "b");
        let rows = GcRows {
            paths: vec![row(-5, &a, None, 0), row(1 << 40, &b, None, 0)],
            references: vec![(1 << 40, -5), (1 << 40, 99), (7, -5)],
            derivation_outputs: vec![(1234, a.clone())],
        };
        let graph = GcGraph::new(&store_dir(), rows, &GcLimits::default()).unwrap();
        assert_eq!(graph.dangling_rows(), 3);
        assert_eq!(
            graph.references(graph.node(&b).unwrap()),
            &[graph.node(&a).unwrap()]
        );
        let limits = GcLimits {
            paths_max: 1,
            ..GcLimits::default()
        };
        let rows = GcRows {
            paths: vec![row(1, &a, None, 0), row(2, &b, None, 0)],
            ..GcRows::default()
        };
        assert_eq!(
            GcGraph::new(&store_dir(), rows, &limits).unwrap_err(),
            GcError::TooManyPaths { count: 2, max: 1 }
        );
    }

    #[test]
    fn paths_outside_the_store_are_kept_with_what_they_refer_to() {
        let a = item(1, "a");
        let rows = GcRows {
            paths: vec![row(1, &a, None, 0), row(2, "/elsewhere/x", None, 0)],
            references: vec![(2, 1)],
            derivation_outputs: vec![],
        };
        let graph = GcGraph::new(&store_dir(), rows, &GcLimits::default()).unwrap();
        let p = plan(
            &graph,
            &roots(&[]),
            &[base(&a)],
            &GcOptions::new(GcAction::DeleteDead),
        );
        assert!(p.order.is_empty());
    }

    // ---- the model test

    /// A tiny deterministic generator for scenarios.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            if n == 0 {
                0
            } else {
                (self.next() % n as u64) as usize
            }
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
        fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
            if items.is_empty() {
                None
            } else {
                Some(&items[self.below(items.len())])
            }
        }
    }

    /// A random store: valid paths with references (a DAG plus
    /// self-references, as registration allows), derivation outputs and
    /// derivers, a store directory with leftovers, roots of every kind.
    #[derive(Clone, Debug)]
    struct Scenario {
        rows: GcRows,
        entries: Vec<String>,
        roots: GcRoots,
        options: GcOptions,
    }

    fn scenario(seed: u64) -> Scenario {
        let mut rng = Rng(seed);
        let n = rng.below(24);
        let sparse = rng.chance(30);
        let mut paths: Vec<String> = Vec::new();
        for i in 0..n {
            let name = if rng.chance(35) {
                format!("p{i}.drv")
            } else {
                format!("p{i}")
            };
            paths.push(item(i, &name));
        }
        let invalid: Vec<String> = (0..4).map(|i| item(100 + i, &format!("gone{i}"))).collect();
        let id = |i: usize| {
            if sparse {
                (i as i64) * 1_000_003 - 7
            } else {
                i as i64 + 1
            }
        };
        let drvs: Vec<usize> = (0..n).filter(|&i| paths[i].ends_with(".drv")).collect();
        let mut path_rows = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            let deriver = match rng.below(4) {
                0 => None,
                1 => Some(invalid[rng.below(invalid.len())].clone()),
                _ => rng.pick(&drvs).map(|&d| paths[d].clone()),
            };
            path_rows.push(row(
                id(i),
                path,
                deriver.as_deref(),
                1 + rng.below(1000) as u64,
            ));
        }
        let mut references = BTreeSet::new();
        for a in 0..n {
            for b in 0..a {
                if rng.chance(15) {
                    references.insert((id(a), id(b)));
                }
            }
            if rng.chance(10) {
                references.insert((id(a), id(a)));
            }
        }
        let mut derivation_outputs = Vec::new();
        for &d in &drvs {
            for _ in 0..rng.below(3) {
                let out = if rng.chance(80) && n > 0 {
                    paths[rng.below(n)].clone()
                } else {
                    invalid[rng.below(invalid.len())].clone()
                };
                derivation_outputs.push((id(d), out));
            }
        }

        let mut entries: Vec<String> = paths
            .iter()
            .filter(|_| rng.chance(85))
            .map(|p| base(p))
            .collect();
        for i in 0..rng.below(4) {
            entries.push(format!("left{i}"));
        }
        entries.extend(invalid.iter().filter(|_| rng.chance(50)).map(|p| base(p)));
        let mut any_path = paths.clone();
        any_path.extend(invalid.iter().cloned());
        for _ in 0..rng.below(4) {
            if let Some(p) = rng.pick(&any_path) {
                let suffix = if rng.chance(50) { ".lock" } else { ".chroot" };
                entries.push(format!("{}{suffix}", base(p)));
            }
        }
        for special in [
            ".links",
            "trash",
            ".tmp-link-1-2",
            ".guixd-upload-3-4",
            ".guixd-text-5-6",
        ] {
            if rng.chance(50) {
                entries.push(special.to_owned());
            }
        }
        entries.sort();
        entries.dedup();
        // A readdir order, not a sorted one.
        shuffle(&mut entries, rng.next());

        let mut all_names: Vec<String> = any_path.clone();
        all_names.extend(entries.iter().map(|e| format!("{STORE}/{e}")));
        let pick_roots = |rng: &mut Rng, percent: u64| -> BTreeSet<StorePath> {
            all_names
                .iter()
                .filter(|_| rng.chance(percent))
                .map(|p| sp(p))
                .collect()
        };
        let roots = GcRoots {
            permanent: pick_roots(&mut rng, 8),
            temporary: pick_roots(&mut rng, 5),
            locked: pick_roots(&mut rng, 3),
        };
        let action = match rng.below(4) {
            0 => GcAction::ReturnLive,
            1 => GcAction::ReturnDead,
            2 => GcAction::DeleteDead,
            _ => {
                let mut requested = BTreeSet::new();
                for _ in 0..1 + rng.below(3) {
                    if let Some(p) = rng.pick(&all_names) {
                        requested.insert(sp(p));
                    }
                }
                GcAction::DeleteSpecific(requested)
            }
        };
        let options = GcOptions {
            action,
            keep_outputs: rng.chance(50),
            keep_derivations: rng.chance(70),
            max_freed_bytes: UNLIMITED_BYTES,
            seed: rng.next(),
        };
        Scenario {
            rows: GcRows {
                paths: path_rows,
                references: references.into_iter().collect(),
                derivation_outputs,
            },
            entries,
            roots,
            options,
        }
    }

    /// The store as a mutable database, queried the way the C++ daemon
    /// queries it, one path at a time.
    #[derive(Clone, Debug)]
    struct Db {
        valid: BTreeSet<String>,
        /// (referrer, reference)
        refs: BTreeSet<(String, String)>,
        /// (drv, output)
        outputs: BTreeSet<(String, String)>,
        deriver: BTreeMap<String, String>,
        disk: BTreeSet<String>,
    }

    impl Db {
        fn new(sc: &Scenario) -> Db {
            let by_id: BTreeMap<i64, &str> = sc
                .rows
                .paths
                .iter()
                .map(|r| (r.id, r.path.as_str()))
                .collect();
            Db {
                valid: sc.rows.paths.iter().map(|r| r.path.clone()).collect(),
                refs: sc
                    .rows
                    .references
                    .iter()
                    .map(|(a, b)| (by_id[a].to_owned(), by_id[b].to_owned()))
                    .collect(),
                outputs: sc
                    .rows
                    .derivation_outputs
                    .iter()
                    .map(|(d, o)| (by_id[d].to_owned(), o.clone()))
                    .collect(),
                deriver: sc
                    .rows
                    .paths
                    .iter()
                    .filter_map(|r| Some((r.path.clone(), r.deriver.clone()?)))
                    .collect(),
                disk: sc.entries.iter().map(|e| format!("{STORE}/{e}")).collect(),
            }
        }

        fn referrers(&self, p: &str) -> Vec<String> {
            self.refs
                .iter()
                .filter(|(_, b)| b == p)
                .map(|(a, _)| a.clone())
                .collect()
        }

        /// `canReachRoot`'s incoming set of a valid path.
        fn incoming(&self, p: &str, keep_outputs: bool, keep_derivations: bool) -> Vec<String> {
            let mut incoming = self.referrers(p);
            if keep_derivations && p.ends_with(".drv") {
                for (d, o) in &self.outputs {
                    if d == p
                        && self.valid.contains(o)
                        && self.deriver.get(o).map(String::as_str) == Some(p)
                    {
                        incoming.push(o.clone());
                    }
                }
            }
            if keep_outputs {
                for (d, o) in &self.outputs {
                    if o == p && self.valid.contains(d) {
                        incoming.push(d.clone());
                    }
                }
            }
            incoming
        }

        /// Invalidates `p`, as `invalidatePathChecked`: refused while it has
        /// referrers other than itself.
        fn invalidate(&mut self, p: &str) -> Result<(), Vec<String>> {
            let users: Vec<String> = self.referrers(p).into_iter().filter(|r| r != p).collect();
            if !users.is_empty() {
                return Err(users);
            }
            self.valid.remove(p);
            self.refs.retain(|(a, _)| a != p);
            self.outputs.retain(|(d, _)| d != p);
            Ok(())
        }
    }

    fn is_special(path: &str) -> bool {
        is_special_name(&base(path))
    }

    /// A literal translation of the C++ collector (`collectGarbage`,
    /// `tryToDelete`, `canReachRoot`, `deletePathRecursive`), recursion
    /// and all, with guixd's transient names treated like `.links`.
    struct Cxx<'a> {
        db: Db,
        roots: BTreeSet<String>,
        temp_roots: BTreeSet<String>,
        options: &'a GcOptions,
        alive: BTreeSet<String>,
        dead: BTreeSet<String>,
        deleted: BTreeSet<String>,
        invalidated: BTreeSet<String>,
    }

    impl Cxx<'_> {
        fn can_reach_root(&mut self, visited: &mut BTreeSet<String>, p: &str) -> bool {
            if visited.contains(p) {
                return false;
            }
            if self.alive.contains(p) {
                return true;
            }
            if self.dead.contains(p) {
                return false;
            }
            if self.roots.contains(p) {
                self.alive.insert(p.to_owned());
                return true;
            }
            visited.insert(p.to_owned());
            if !self.db.valid.contains(p) {
                return false;
            }
            let incoming =
                self.db
                    .incoming(p, self.options.keep_outputs, self.options.keep_derivations);
            for i in incoming {
                if i != p && self.can_reach_root(visited, &i) {
                    self.alive.insert(p.to_owned());
                    return true;
                }
            }
            false
        }

        fn is_active_temp_file(&self, p: &str) -> bool {
            [".lock", ".chroot"].iter().any(|s| {
                p.strip_suffix(s)
                    .is_some_and(|stem| self.temp_roots.contains(stem))
            })
        }

        fn try_to_delete(&mut self, p: &str) {
            if is_special(p) {
                return;
            }
            if !self.db.valid.contains(p) && self.is_active_temp_file(p) {
                return;
            }
            let mut visited = BTreeSet::new();
            if !self.can_reach_root(&mut visited, p) {
                self.dead.extend(visited);
                if matches!(
                    self.options.action,
                    GcAction::DeleteDead | GcAction::DeleteSpecific(_)
                ) {
                    self.delete_path_recursive(p);
                }
            }
        }

        fn delete_path_recursive(&mut self, p: &str) {
            if self.db.valid.contains(p) {
                for r in self.db.referrers(p) {
                    if r != p {
                        self.delete_path_recursive(&r);
                    }
                }
                self.db
                    .invalidate(p)
                    .expect("the C++ order is valid on a DAG");
                self.invalidated.insert(p.to_owned());
            }
            if self.db.disk.remove(p) {
                self.deleted.insert(p.to_owned());
            }
        }

        /// Runs the collection; `Err` is the refusal of delete-specific.
        fn run(&mut self, entries: &[String]) -> Result<(), String> {
            if let GcAction::DeleteSpecific(paths) = &self.options.action {
                for p in paths.clone() {
                    self.try_to_delete(p.as_str());
                    if !self.dead.contains(p.as_str()) {
                        return Err(p.to_string());
                    }
                }
                return Ok(());
            }
            let mut valid = Vec::new();
            for e in entries {
                let p = format!("{STORE}/{e}");
                if self.db.valid.contains(&p) {
                    valid.push(p);
                } else {
                    self.try_to_delete(&p);
                }
            }
            for p in valid {
                self.try_to_delete(&p);
            }
            Ok(())
        }
    }

    /// Naive liveness: a fixpoint of "a path is alive when a root, or when
    /// one of its incoming paths is alive", straight from the rows.
    fn naive_alive(db: &Db, roots: &BTreeSet<String>, options: &GcOptions) -> BTreeSet<String> {
        let mut alive: BTreeSet<String> = roots.clone();
        loop {
            let mut changed = false;
            for p in &db.valid {
                if alive.contains(p) {
                    continue;
                }
                let incoming = db.incoming(p, options.keep_outputs, options.keep_derivations);
                if incoming.iter().any(|i| alive.contains(i)) {
                    alive.insert(p.clone());
                    changed = true;
                }
            }
            if !changed {
                return alive;
            }
        }
    }

    /// Executes a plan against `db` as the os layer would.
    fn execute(graph: GcGraph, p: GcPlan, db: &mut Db) -> (GcOutcome, Vec<Victim>) {
        let mut run = GcRun::new(graph, p);
        let mut done = Vec::new();
        while let Some(victim) = run.next_victim() {
            let path = victim.path.as_str();
            let outcome = if db.valid.contains(path) && !victim.expect_valid() {
                DeleteOutcome::BecameValid
            } else {
                match db.invalidate(path) {
                    Err(referrers) => DeleteOutcome::InUse { referrers },
                    Ok(()) => DeleteOutcome::Deleted {
                        existed: db.disk.remove(path),
                        freed_bytes: 1,
                        invalidated_bytes: 0,
                        note: None,
                    },
                }
            };
            assert!(
                matches!(outcome, DeleteOutcome::Deleted { .. }),
                "{path}: {outcome:?}"
            );
            run.complete(outcome);
            done.push(victim);
        }
        (run.finish(), done)
    }

    fn model_agrees(seed: u64) -> bool {
        let sc = scenario(seed);
        let graph = GcGraph::new(&store_dir(), sc.rows.clone(), &GcLimits::default()).unwrap();
        let plan = plan(&graph, &sc.roots, &sc.entries, &sc.options);
        let db = Db::new(&sc);
        let strs = |set: &BTreeSet<StorePath>| -> BTreeSet<String> {
            set.iter().map(|p| p.to_string()).collect()
        };
        let mut roots = strs(&sc.roots.permanent);
        let protected: BTreeSet<String> = strs(&sc.roots.temporary)
            .union(&strs(&sc.roots.locked))
            .cloned()
            .collect();
        roots.extend(protected.iter().cloned());
        let mut cxx = Cxx {
            db: db.clone(),
            roots: roots.clone(),
            temp_roots: protected.clone(),
            options: &sc.options,
            alive: BTreeSet::new(),
            dead: BTreeSet::new(),
            deleted: BTreeSet::new(),
            invalidated: BTreeSet::new(),
        };
        let cxx_result = cxx.run(&sc.entries);
        let naive = naive_alive(&db, &roots, &sc.options);
        let listed: BTreeSet<String> = plan.listed.iter().map(|p| p.to_string()).collect();

        match &sc.options.action {
            GcAction::ReturnLive => {
                assert!(cxx.alive.is_subset(&listed), "{:?} ⊄ {listed:?}", cxx.alive);
                for extra in listed.difference(&cxx.alive) {
                    assert!(
                        db.valid.contains(extra) && !db.disk.contains(extra),
                        "{extra}"
                    );
                    assert!(naive.contains(extra), "{extra}");
                }
                assert!(plan.order.is_empty());
            }
            GcAction::ReturnDead => {
                assert_eq!(listed, cxx.dead);
                assert!(listed.is_disjoint(&naive));
                assert!(plan.order.is_empty());
            }
            GcAction::DeleteDead | GcAction::DeleteSpecific(_) => {
                let mut mine = db.clone();
                let (outcome, done) = execute(graph, plan, &mut mine);
                let deleted: BTreeSet<String> =
                    outcome.paths.iter().map(|p| p.to_string()).collect();
                assert_eq!(deleted, cxx.deleted, "deleted");
                let invalidated: BTreeSet<String> =
                    db.valid.difference(&mine.valid).cloned().collect();
                assert_eq!(invalidated, cxx.invalidated, "invalidated");
                assert_eq!(
                    outcome.failure.map(|e| e.to_string()),
                    cxx_result.err().map(|p| GcError::StillAlive(p).to_string())
                );
                // Safety, independently of the C++ walk.
                for victim in &done {
                    let p = victim.path.as_str();
                    assert!(!naive.contains(p), "deleted live {p}");
                    assert!(!roots.contains(p) && !is_special(p), "{p}");
                    let companion = [".lock", ".chroot"].iter().any(|s| {
                        p.strip_suffix(s)
                            .is_some_and(|stem| protected.contains(stem))
                    });
                    assert!(
                        db.valid.contains(p) || !companion,
                        "deleted the lock of a protected path: {p}"
                    );
                }
                if sc.options.action == GcAction::DeleteDead {
                    // Exactly the rest of the store directory.
                    let expected: BTreeSet<String> = db
                        .disk
                        .iter()
                        .filter(|p| !naive.contains(*p) && !is_special(p))
                        .filter(|p| {
                            db.valid.contains(*p)
                                || ![".lock", ".chroot"].iter().any(|s| {
                                    p.strip_suffix(s)
                                        .is_some_and(|stem| protected.contains(stem))
                                })
                        })
                        .cloned()
                        .collect();
                    assert_eq!(deleted, expected);
                }
            }
        }
        true
    }

    #[test]
    fn the_planner_agrees_with_the_cxx_walk_and_naive_reachability() {
        guixd_testkit::check(model_agrees as fn(u64) -> bool);
    }

    /// Under concurrent activity: new items registered with references to
    /// valid paths, new temporary roots, and referrer cycles written by an
    /// outside tool. Whatever happens, no path that a root, a new item or a
    /// temporary root needs is deleted.
    fn concurrent_runs_stay_safe(seed: u64) -> bool {
        let mut sc = scenario(seed);
        sc.options.action = GcAction::DeleteDead;
        let mut rng = Rng(seed ^ 0x5555);
        // An outside writer's referrer cycle among a few paths.
        let ids: Vec<i64> = sc.rows.paths.iter().map(|r| r.id).collect();
        for _ in 0..rng.below(3) {
            if let (Some(&a), Some(&b)) = (rng.pick(&ids), rng.pick(&ids)) {
                sc.rows.references.push((a, b));
                sc.rows.references.push((b, a));
            }
        }
        sc.rows.references.sort();
        sc.rows.references.dedup();
        let graph = GcGraph::new(&store_dir(), sc.rows.clone(), &GcLimits::default()).unwrap();
        let p = plan(&graph, &sc.roots, &sc.entries, &sc.options);
        let mut db = Db::new(&sc);
        let keep = Keep {
            outputs: sc.options.keep_outputs,
            derivations: sc.options.keep_derivations,
        };
        let mut run = GcRun::new(graph.clone(), p);
        let mut temp: BTreeSet<String> = BTreeSet::new();
        let mut needed: BTreeSet<String> = BTreeSet::new();
        let mut fresh = 0;
        while let Some(victim) = run.next_victim() {
            // Something happens before this deletion.
            let valid: Vec<String> = db.valid.iter().cloned().collect();
            if rng.chance(20) {
                if let Some(target) = rng.pick(&valid) {
                    fresh += 1;
                    let new = item(500 + fresh, "new");
                    db.valid.insert(new.clone());
                    db.refs.insert((new.clone(), target.clone()));
                    needed.insert(target.clone());
                }
            }
            if rng.chance(20) {
                if let Some(target) = rng.pick(&valid) {
                    temp.insert(target.clone());
                    needed.insert(target.clone());
                }
            }
            let path = victim.path.as_str().to_owned();
            // The core's own check: a temporary root protects the path.
            if temp.contains(&path) {
                run.skip_protected();
                continue;
            }
            let outcome = if db.valid.contains(&path) && !victim.expect_valid() {
                DeleteOutcome::BecameValid
            } else {
                match db.invalidate(&path) {
                    Err(referrers) => DeleteOutcome::InUse { referrers },
                    Ok(()) => DeleteOutcome::Deleted {
                        existed: db.disk.remove(&path),
                        freed_bytes: 1,
                        invalidated_bytes: 0,
                        note: None,
                    },
                }
            };
            if !matches!(outcome, DeleteOutcome::Deleted { .. }) {
                // Everything the revived path keeps alive must stay.
                if let Some(node) = graph.node(&path) {
                    let mut alive = vec![false; graph.len()];
                    alive[node as usize] = true;
                    propagate(&graph, keep, &mut alive, vec![node]);
                    for (i, a) in alive.iter().enumerate() {
                        if *a && db.valid.contains(graph.path(node_id(i))) {
                            needed.insert(graph.path(node_id(i)).to_owned());
                        }
                    }
                }
            }
            run.complete(outcome);
            assert!(
                needed.is_subset(&db.valid),
                "deleted something needed: {:?}",
                needed.difference(&db.valid).collect::<Vec<_>>()
            );
        }
        // The database's own integrity: every reference of a valid path is
        // valid.
        assert!(
            db.refs
                .iter()
                .all(|(a, b)| !db.valid.contains(a) || db.valid.contains(b))
        );
        true
    }

    #[test]
    fn concurrent_registrations_and_temp_roots_never_lose_needed_paths() {
        guixd_testkit::check(concurrent_runs_stay_safe as fn(u64) -> bool);
    }

    #[test]
    fn the_shuffle_is_a_seeded_permutation() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        shuffle(&mut a, 42);
        shuffle(&mut b, 42);
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        a.sort();
        assert_eq!(a, (0..100).collect::<Vec<_>>());
    }

    /// Planning time for a synthetic store of 300,000 paths and 1,000,000
    /// references (run with `--release -- --ignored --nocapture`; prints,
    /// asserts nothing about time).
    #[test]
    #[ignore]
    #[allow(clippy::disallowed_methods)]
    fn bench_plan_300k_paths_1m_references() {
        use std::time::Instant;
        let n = 300_000usize;
        let mut rng = Rng(1);
        let paths: Vec<PathRow> = (0..n)
            .map(|i| {
                let name = if i % 4 == 0 {
                    format!("p{i}.drv")
                } else {
                    format!("p{i}")
                };
                row(i as i64 + 1, &item(i, &name), None, 1000)
            })
            .collect();
        let mut references = Vec::with_capacity(1_000_000);
        while references.len() < 1_000_000 {
            let a = 1 + rng.below(n - 1);
            let b = rng.below(a);
            references.push((a as i64 + 1, b as i64 + 1));
        }
        references.sort_unstable();
        references.dedup();
        let derivation_outputs: Vec<(i64, String)> = (0..n)
            .step_by(4)
            .filter(|&d| d + 1 < n)
            .map(|d| (d as i64 + 1, paths[d + 1].path.clone()))
            .collect();
        let entries: Vec<String> = paths.iter().map(|r| base(&r.path)).collect();
        let roots = GcRoots {
            permanent: (0..n).step_by(997).map(|i| sp(&paths[i].path)).collect(),
            ..GcRoots::default()
        };
        let rows = GcRows {
            paths,
            references,
            derivation_outputs,
        };
        let refs = rows.references.len();
        let t0 = Instant::now();
        let graph = GcGraph::new(&store_dir(), rows, &GcLimits::default()).unwrap();
        let t1 = Instant::now();
        let mut options = GcOptions::new(GcAction::DeleteDead);
        options.seed = 9;
        let p = plan(&graph, &roots, &entries, &options);
        let t2 = Instant::now();
        let dead = plan(
            &graph,
            &roots,
            &entries,
            &GcOptions::new(GcAction::ReturnDead),
        );
        let t3 = Instant::now();
        println!(
            "gc bench: {n} paths, {refs} references: graph {:?}, delete-dead plan {:?} \
             ({} live, {} to delete), return-dead plan {:?} ({} listed)",
            t1 - t0,
            t2 - t1,
            p.live_count,
            p.order.len(),
            t3 - t2,
            dead.listed.len()
        );
    }
}

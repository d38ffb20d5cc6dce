//! `verify-store` (spec 03 §10): paths recorded as valid whose files are
//! gone are invalidated (when nothing valid refers to them), and with
//! `check_contents` every valid path is hashed again and compared with the
//! database, filling in missing hashes and sizes.
//!
//! Keeps true:
//! - `gc.lock` is held exclusively (an OFD lock of its own, not the
//!   collector's) during the existence check only, as in the daemon, so
//!   the long contents check blocks neither collections nor builds;
//! - the existence check reads the graph in bulk and walks referrers with
//!   an explicit stack, in the daemon's order (paths sorted, referrers
//!   first), so it says the same things about the same store;
//! - nothing is repaired here: a modified path or a vanished path with
//!   valid referrers is reported, makes the result "errors remain", and
//!   is listed in `repairable` (after the line that reported it), so that
//!   the core can repair it by rebuilding, as the daemon's `repairPath`
//!   does; every other error sets `other_errors`.

use super::{Gc, list_store};
use crate::db::Db;
use crate::files::{Files, Owner, READ_BUFFER_BYTES};
use crate::locks::{LockKind, Wait};
use guixd_core::StorePath;
use guixd_core::effect::{DumpId, EffectError, EffectErrorKind, EffectOutput};
use guixd_core::gc::{GcGraph, Level, NodeId, Repairable, VerifyReport, WAITING_FOR_GC_LOCK};
use guixd_core::hash::{Hash, HashAlgo};
use std::collections::BTreeSet;
use std::path::Path;

/// Verifies the store: existence always, contents when `check_contents`.
/// `report.errors` is the reply ("errors remain").
pub fn verify_store(gc: &Gc, db: &Db, check_contents: bool) -> Result<VerifyReport, EffectError> {
    let mut report = VerifyReport::default();
    say(&mut report, Level::Error, "reading the store...");
    let lock = match crate::roots::open_gc_lock(&gc.state, LockKind::Exclusive, Wait::No)? {
        Some(lock) => lock,
        None => {
            say(&mut report, Level::Error, WAITING_FOR_GC_LOCK);
            crate::roots::open_gc_lock(&gc.state, LockKind::Exclusive, Wait::Yes)?
                .ok_or_else(|| super::bug("a blocking lock came back busy"))?
        }
    };
    let present: BTreeSet<String> = list_store(&gc.store, gc.limits.entries_max)?
        .into_iter()
        .collect();
    say(&mut report, Level::Info, "checking path existence...");
    let graph = GcGraph::new(&gc.store_dir, db.gc_rows()?, &gc.limits)
        .map_err(|e| EffectError::new(EffectErrorKind::Invalid, e.to_string()))?;
    let valid = check_existence(&graph, &present, db, &mut report);
    drop(lock);

    if check_contents {
        say(&mut report, Level::Info, "checking hashes...");
        let files = Files::at(&gc.store, Owner::new(0, 0));
        for (node, _) in valid.iter().enumerate().filter(|(_, v)| **v) {
            if let Some(path) = graph.store_path(node as NodeId) {
                check_path_contents(&files, db, &path, &mut report);
            }
        }
    }
    Ok(report)
}

/// The SHA-256 and size of the NAR serialisation of `path`.
pub fn hash_path(store: &Path, path: &StorePath) -> Result<(Hash, u64), EffectError> {
    hash_with(&Files::at(store, Owner::new(0, 0)), path)
}

/// The existence check: returns, per node, whether the path is present.
fn check_existence(
    graph: &GcGraph,
    present: &BTreeSet<String>,
    db: &Db,
    report: &mut VerifyReport,
) -> Vec<bool> {
    let n = graph.len();
    let mut done = vec![false; n];
    let mut valid = vec![false; n];
    let mut stack: Vec<Frame> = Vec::new();
    for start in 0..n {
        if let Some(frame) = begin(
            graph,
            present,
            db,
            report,
            &mut done,
            &mut valid,
            start as NodeId,
        ) {
            stack.push(frame);
        }
        while let Some(top) = stack.last_mut() {
            if let Some(&referrer) = top.referrers.get(top.next) {
                top.next += 1;
                if let Some(frame) =
                    begin(graph, present, db, report, &mut done, &mut valid, referrer)
                {
                    stack.push(frame);
                    continue;
                }
                // A referrer that vanished never counts as valid, so only
                // one that was found needs looking at here.
                if valid[referrer as usize] {
                    top.can_invalidate = false;
                }
                continue;
            }
            let Some(frame) = stack.pop() else { break };
            let path = graph.path(frame.node);
            if frame.can_invalidate {
                say(
                    report,
                    Level::Error,
                    &format!("path `{path}' disappeared, removing from database..."),
                );
                invalidate(db, path, report);
            } else {
                say(
                    report,
                    Level::Error,
                    &format!("path `{path}' disappeared, but it still has valid referrers!"),
                );
                report.errors = true;
                match graph.store_path(frame.node) {
                    Some(path) => report.repairable.push(Repairable {
                        path,
                        vanished: true,
                        message_index: report.messages.len() - 1,
                    }),
                    None => report.other_errors = true,
                }
            }
        }
    }
    valid
}

/// A vanished path whose referrers are being checked.
struct Frame {
    node: NodeId,
    /// Its referrers (itself excluded) in path order.
    referrers: Vec<NodeId>,
    next: usize,
    can_invalidate: bool,
}

/// Starts verifying `node`: settles it at once (not a store path, or
/// present), or returns the frame for its referrer walk (vanished).
fn begin(
    graph: &GcGraph,
    present: &BTreeSet<String>,
    db: &Db,
    report: &mut VerifyReport,
    done: &mut [bool],
    valid: &mut [bool],
    node: NodeId,
) -> Option<Frame> {
    if std::mem::replace(&mut done[node as usize], true) {
        return None;
    }
    let Some(path) = graph.store_path(node) else {
        let path = graph.path(node);
        say(
            report,
            Level::Error,
            &format!("path `{path}' is not in the store"),
        );
        invalidate(db, path, report);
        return None;
    };
    if present.contains(path.base_name()) {
        valid[node as usize] = true;
        return None;
    }
    let mut referrers = graph.referrers(node).to_vec();
    referrers.sort_unstable();
    Some(Frame {
        node,
        referrers,
        next: 0,
        can_invalidate: true,
    })
}

fn invalidate(db: &Db, path: &str, report: &mut VerifyReport) {
    if let Err(e) = db.invalidate_unchecked(path) {
        say(report, Level::Error, &format!("error: {}", e.message));
        report.errors = true;
        report.other_errors = true;
    }
}

/// Hashes `path` again and compares; fills in a missing hash or size.
fn check_path_contents(files: &Files, db: &Db, path: &StorePath, report: &mut VerifyReport) {
    let mut check = || -> Result<(), EffectError> {
        let info = match db.query_path_info(path)? {
            EffectOutput::PathInfo(Some(info)) => info,
            EffectOutput::PathInfo(None) => {
                return Err(EffectError::new(
                    EffectErrorKind::NotFound,
                    format!("path `{path}' is not valid"),
                ));
            }
            other => return Err(super::bug(&format!("unexpected path info {other:?}"))),
        };
        if info.nar_hash.algo() != HashAlgo::Sha256 {
            return Err(EffectError::new(
                EffectErrorKind::Invalid,
                format!("the hash of `{path}' is not a SHA-256 hash"),
            ));
        }
        let (hash, size) = hash_with(files, path)?;
        let missing = info.nar_hash.as_bytes().iter().all(|&b| b == 0);
        if !missing && info.nar_hash != hash {
            say(
                report,
                Level::Error,
                &format!(
                    "path `{path}' was modified! expected hash `{}', got `{}'",
                    info.nar_hash.to_hex(),
                    hash.to_hex()
                ),
            );
            report.errors = true;
            report.repairable.push(Repairable {
                path: path.clone(),
                vanished: false,
                message_index: report.messages.len() - 1,
            });
            return Ok(());
        }
        let mut nar_hash = info.nar_hash;
        let mut nar_size = info.nar_size;
        if missing {
            say(
                report,
                Level::Error,
                &format!("fixing missing hash on `{path}'"),
            );
            nar_hash = hash;
        }
        if nar_size == 0 {
            say(
                report,
                Level::Error,
                &format!("updating size field on `{path}' to {size}"),
            );
            nar_size = size;
        }
        if missing || info.nar_size == 0 {
            db.update_hash_and_size(path, &nar_hash, nar_size)?;
        }
        Ok(())
    };
    if let Err(e) = check() {
        // It may have been collected meanwhile.
        let prefix = match db.is_valid_path(path.as_str()) {
            Ok(false) => "warning",
            _ => "error",
        };
        say(report, Level::Error, &format!("{prefix}: {}", e.message));
        report.errors = true;
        report.other_errors = true;
    }
}

/// Dumps `path` as a NAR through `files`, keeping only its hash and size.
fn hash_with(files: &Files, path: &StorePath) -> Result<(Hash, u64), EffectError> {
    let dump = DumpId(0);
    files.dump_start(dump, path)?;
    let result = loop {
        match files.dump_next(dump, READ_BUFFER_BYTES) {
            Ok(EffectOutput::DumpChunk { end: Some(end), .. }) => break Ok(end),
            Ok(EffectOutput::DumpChunk { .. }) => {}
            Ok(other) => break Err(super::bug(&format!("unexpected dump chunk {other:?}"))),
            Err(e) => break Err(e),
        }
    };
    let _ = files.dump_end(dump);
    result
}

fn say(report: &mut VerifyReport, level: Level, text: &str) {
    report.messages.push((level, text.to_owned()));
}

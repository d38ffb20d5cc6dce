//! `optimise-store` (spec 02 §11): every valid path is deduplicated against
//! `<store>/.links`, with the inodes already in `.links` loaded first so
//! that files linked before are skipped without being hashed.
//!
//! Keeps true:
//! - a path is looked at only while it is valid, and a failure on a path
//!   that stopped being valid meanwhile (a collection deleted it) is not
//!   an error, as in the daemon, which temp-roots each path and skips the
//!   ones that are gone;
//! - the work is the files layer's `Deduplicator`, so the links made here
//!   are exactly those made after each registration.

use crate::db::Db;
use crate::files::{DedupStats, Deduplicator};
use guixd_core::effect::{EffectError, EffectOutput};
use guixd_core::gc::OptimiseReport;
use std::path::Path;

/// Deduplicates every valid path of the store at `store`.
pub fn optimise_store(store: &Path, db: &Db) -> Result<OptimiseReport, EffectError> {
    let paths = match db.query_all_valid_paths()? {
        EffectOutput::Paths(paths) => paths,
        other => return Err(super::bug(&format!("unexpected valid paths {other:?}"))),
    };
    let mut dedup = Deduplicator::new(store);
    dedup.load_link_inodes()?;
    let mut stats = DedupStats::default();
    for path in &paths {
        if !db.is_valid_path(path.as_str())? {
            continue;
        }
        if let Err(e) = dedup.tree(Path::new(path.as_str()), &mut stats) {
            if db.is_valid_path(path.as_str())? {
                return Err(e);
            }
        }
    }
    let mut warnings = stats.warnings;
    if stats.warnings_dropped > 0 {
        warnings.push(format!(
            "... and {} more files left as they are",
            stats.warnings_dropped
        ));
    }
    Ok(OptimiseReport {
        files_linked: stats.files_linked,
        bytes_freed: stats.bytes_freed,
        warnings,
    })
}

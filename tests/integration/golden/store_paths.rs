//! `store-paths.json`: text items (add-text-to-store), sources (recursive
//! SHA-256) and fixed outputs of all seven algorithms in both modes.
//!
//! Keeps true: NARs are built here from the vectors' trees (entries sorted
//! bytewise), never taken from another file, and every path is compared
//! with both the client's and the daemon's value.

use super::support::{Report, Tree, load, store, unhex};
use guixd_core::{Hash, HashAlgo, StorePath};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    text: Vec<TextVector>,
    source: Vec<SourceVector>,
    fixed: Vec<FixedVector>,
}

#[derive(Deserialize)]
struct TextVector {
    name: String,
    contents_hex: String,
    references: Vec<String>,
    contents_sha256_hex: String,
    path: String,
    daemon_path: String,
}

#[derive(Deserialize)]
struct SourceVector {
    name: String,
    tree: Tree,
    nar_sha256_hex: String,
    path: String,
    daemon_path: String,
}

#[derive(Deserialize)]
struct FixedVector {
    name: String,
    algo: String,
    recursive: bool,
    tree: Tree,
    hash_hex: String,
    path: String,
    daemon_path: Option<String>,
}

#[test]
fn every_store_path() {
    let file: File = load("store-paths.json");
    let mut report = Report::new("store-paths.json");
    for v in &file.text {
        check_text(&mut report, v);
    }
    for v in &file.source {
        check_source(&mut report, v);
    }
    for v in &file.fixed {
        check_fixed(&mut report, v, &file.source);
    }
    report.finish();
}

fn check_text(report: &mut Report, v: &TextVector) {
    let at = format!("text `{}'", v.name);
    let store = store();
    let contents = unhex(&v.contents_hex);
    let hash = Hash::sha256(&contents);
    report.eq(
        &at,
        "sha256 of the contents",
        &hash.to_hex(),
        &v.contents_sha256_hex,
    );
    let mut refs: Vec<StorePath> = Vec::new();
    for r in &v.references {
        if let Some(p) = report.ok(&at, "reference is a store path", store.parse_path(r)) {
            refs.push(p);
        }
    }
    let path = store.make_text_path(&v.name, &hash, &refs);
    if let Some(path) = report.ok(&at, "make_text_path", path) {
        report.eq(&at, "path", path.as_str(), v.path.as_str());
    }
    report.eq(&at, "daemon_path", &v.daemon_path, &v.path);
}

fn check_source(report: &mut Report, v: &SourceVector) {
    let at = format!("source `{}'", v.name);
    let Some(nar) = report.ok(&at, "NAR of the tree", v.tree.to_nar()) else {
        return;
    };
    let hash = Hash::sha256(&nar);
    report.eq(&at, "NAR sha256", &hash.to_hex(), &v.nar_sha256_hex);
    let path = store().make_fixed_output_path(true, &hash, &v.name);
    if let Some(path) = report.ok(&at, "make_fixed_output_path", path) {
        report.eq(&at, "path", path.as_str(), v.path.as_str());
    }
    report.eq(&at, "daemon_path", &v.daemon_path, &v.path);
}

fn check_fixed(report: &mut Report, v: &FixedVector, sources: &[SourceVector]) {
    let mode = if v.recursive { "recursive" } else { "flat" };
    let at = format!("fixed `{}' {} {mode}", v.name, v.algo);
    let Some(algo) = HashAlgo::parse(&v.algo) else {
        return report.fail(&at, "HashAlgo::parse", "unknown algorithm");
    };
    // Recursive: the hash of the NAR. Flat: the hash of the file itself.
    let hashed = if v.recursive {
        v.tree.to_nar()
    } else {
        v.tree
            .file_contents()
            .ok_or_else(|| "a flat fixed output of something else than a file".to_string())
    };
    let Some(hashed) = report.ok(&at, "bytes to hash", hashed) else {
        return;
    };
    let hash = Hash::digest(algo, &hashed);
    report.eq(&at, "hash", &hash.to_hex(), &v.hash_hex);
    let path = store().make_fixed_output_path(v.recursive, &hash, &v.name);
    if let Some(path) = report.ok(&at, "make_fixed_output_path", path) {
        report.eq(&at, "path", path.as_str(), v.path.as_str());
    }
    report.eq(
        &at,
        "daemon_path",
        &v.daemon_path.as_deref(),
        &Some(v.path.as_str()),
    );
    // README: a recursive sha256 fixed output is the "source" of the same
    // file.
    if v.recursive && algo == HashAlgo::Sha256 {
        let source = sources.iter().find(|s| s.name == v.name);
        report.eq(
            &at,
            "the same as the source entry",
            &source.map(|s| s.path.as_str()),
            &Some(v.path.as_str()),
        );
    }
}

//! `nar.json`: the NAR of each tree byte for byte, its SHA-256 and size,
//! its source path, the parser and writer on it under any chunking, and
//! the daemon's export of the item.
//!
//! Keeps true: the NAR is built here from the tree and compared with the
//! client's bytes; the parser is run on the client's bytes (on the built
//! NAR for `large`, whose bytes are not recorded); the export is parsed
//! as recorded and also rebuilt with the core's encoders.

use super::support::{
    CHUNK_SIZES, Report, Tree, check_nar_round_trip, chunking, load, parse_export, store, unhex,
};
use guixd_core::export::{encode_export_meta, encode_export_trailer, write_export_marker};
use guixd_core::nar::{FileNarHasher, NarLimits, NarTree, file_nar, hash_file_nar};
use guixd_core::{Hash, HashAlgo};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    tree: Tree,
    nar_size: usize,
    nar_sha256_hex: String,
    nar_sha256_nix_base32: String,
    /// Absent for `large`.
    nar_hex: Option<String>,
    store_path: String,
    daemon: Daemon,
}

#[derive(Deserialize)]
struct Daemon {
    path: String,
    nar_sha256_hex: String,
    nar_size: usize,
    export_size: usize,
    export_sha256_hex: String,
    /// Absent for `large`.
    export_hex: Option<String>,
    agrees: bool,
}

#[test]
fn every_nar_and_export() {
    let file: File = load("nar.json");
    let mut report = Report::new("nar.json");
    for case in &file.cases {
        check_case(&mut report, case);
    }
    report.finish();
}

fn check_case(report: &mut Report, case: &Case) {
    let at = format!("case `{}'", case.name);
    let Some(built) = report.ok(&at, "NAR of the tree", case.tree.to_nar()) else {
        return;
    };
    let nar = match &case.nar_hex {
        Some(h) => {
            let recorded = unhex(h);
            report.eq_bytes(&at, "NAR bytes", &built, &recorded);
            recorded
        }
        None => built,
    };
    let hash = Hash::sha256(&nar);
    report.eq(&at, "nar_size", &nar.len(), &case.nar_size);
    report.eq(&at, "NAR sha256", &hash.to_hex(), &case.nar_sha256_hex);
    report.eq(
        &at,
        "NAR sha256, nix-base32",
        &hash.to_base32(),
        &case.nar_sha256_nix_base32,
    );
    check_nar_round_trip(report, &at, &nar);
    let tree = NarTree::from_nar(&nar, NarLimits::default());
    report.eq(
        &at,
        "NarTree::from_nar",
        &tree.ok(),
        &Some(case.tree.to_nar_tree()),
    );
    if let Some(contents) = case.tree.file_contents() {
        check_single_file(report, &at, &case.tree, &contents, &nar);
    }

    let path = store().make_fixed_output_path(true, &hash, &case.name);
    if let Some(path) = report.ok(&at, "make_fixed_output_path", path) {
        report.eq(&at, "store_path", path.as_str(), case.store_path.as_str());
    }
    let d = &case.daemon;
    report.check(
        &at,
        "daemon.agrees",
        d.agrees,
        "the generator saw a disagreement",
    );
    report.eq(&at, "daemon.path", &d.path, &case.store_path);
    report.eq(
        &at,
        "daemon.nar_sha256_hex",
        &d.nar_sha256_hex,
        &case.nar_sha256_hex,
    );
    report.eq(&at, "daemon.nar_size", &d.nar_size, &case.nar_size);
    check_export(report, &at, case, &nar);
}

/// The single-file helpers must agree with the general writer.
fn check_single_file(report: &mut Report, at: &str, tree: &Tree, contents: &[u8], nar: &[u8]) {
    let Tree::Regular { executable, .. } = *tree else {
        return;
    };
    report.eq_bytes(at, "file_nar", &file_nar(executable, contents), nar);
    let hash = Hash::sha256(nar);
    report.eq(
        at,
        "hash_file_nar",
        &hash_file_nar(HashAlgo::Sha256, executable, contents),
        &hash,
    );
    let mut hasher = FileNarHasher::new(HashAlgo::Sha256, executable, contents.len() as u64);
    let mut fed = Ok(());
    for chunk in contents.chunks(1000) {
        fed = fed.and_then(|()| hasher.update(chunk));
    }
    if report.ok(at, "FileNarHasher::update", fed).is_some() {
        report.eq(at, "FileNarHasher", &hasher.finish().ok(), &Some(hash));
    }
}

/// The export bundle the client wrote for the item: the core's encoders
/// must produce it (markers, the NAR, an unsigned trailer without
/// references or deriver), and the export parser must read it back.
fn check_export(report: &mut Report, at: &str, case: &Case, nar: &[u8]) {
    let d = &case.daemon;
    let mut built = Vec::new();
    write_export_marker(&mut built, true);
    built.extend_from_slice(nar);
    encode_export_trailer(&d.path, &[], "", None, &mut built);
    write_export_marker(&mut built, false);
    let export = match &d.export_hex {
        Some(h) => {
            let recorded = unhex(h);
            report.eq_bytes(at, "export bytes", &built, &recorded);
            recorded
        }
        None => built,
    };
    report.eq(at, "export_size", &export.len(), &d.export_size);
    report.eq(
        at,
        "export sha256",
        &Hash::sha256(&export).to_hex(),
        &d.export_sha256_hex,
    );
    report.eq_bytes(
        at,
        "the NAR inside the export",
        &export[8..8 + nar.len()],
        nar,
    );

    let mut signed = nar.to_vec();
    encode_export_meta(&d.path, &[], "", &mut signed);
    let signed_hash = Hash::sha256(&signed);
    for chunk in CHUNK_SIZES {
        let what = format!("export parsed {}", chunking(chunk));
        let Some(parsed) = report.ok(at, &what, parse_export(&export, chunk)) else {
            continue;
        };
        report.eq(
            at,
            &format!("{what}: consumed"),
            &parsed.consumed,
            &export.len(),
        );
        report.eq(at, &format!("{what}: items"), &parsed.items.len(), &1);
        report.eq(at, &format!("{what}: NARs"), &parsed.nars.len(), &1);
        if let (Some(item), Some(item_nar)) = (parsed.items.first(), parsed.nars.first()) {
            report.eq_bytes(at, &format!("{what}: NAR rewritten"), item_nar, nar);
            report.eq(at, &format!("{what}: path"), &item.path, &d.path);
            report.eq(
                at,
                &format!("{what}: references"),
                &item.references,
                &vec![],
            );
            report.eq(at, &format!("{what}: deriver"), item.deriver.as_str(), "");
            report.eq(at, &format!("{what}: signature"), &item.signature, &None);
            report.eq(
                at,
                &format!("{what}: NAR hash"),
                &item.nar_hash.to_hex(),
                &d.nar_sha256_hex,
            );
            report.eq(
                at,
                &format!("{what}: NAR size"),
                &item.nar_size_bytes,
                &(d.nar_size as u64),
            );
            report.eq(
                at,
                &format!("{what}: signed hash"),
                &item.signed_hash,
                &signed_hash,
            );
        }
    }
}

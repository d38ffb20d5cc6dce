//! `derivations.json`: `.drv` files written by the Guix client and accepted
//! by the daemon: parsing, byte-exact printing, the `.drv` store path, hash
//! modulo (recursively through the input `.drv`s), the masked hash and its
//! hashed form, output paths and the daemon's output check.
//!
//! Keeps true: an input's modulo hash is always computed from the input's
//! recorded `.drv` bytes, never taken from the vector, so the recursion is
//! exercised; the vector's `hash_modulo_hex` of that input is checked on
//! its own entry.

use super::support::{Report, load, store, unhex};
use guixd_core::derivation::{Derivation, DrvLimits, DrvParseError, parse_derivation};
use guixd_core::{Hash, StorePath};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Deserialize)]
struct File {
    system: String,
    derivations: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    name: String,
    fixed_output: bool,
    drv_path: String,
    daemon_drv_path: String,
    references: Vec<String>,
    /// `None` when the bytes are not UTF-8.
    drv_text: Option<String>,
    drv_hex: String,
    outputs: Vec<Output>,
    hash_modulo_hex: String,
    /// `None` for fixed outputs, as is `hashed_form_hex`.
    masked_hash_hex: Option<String>,
    hashed_form_hex: Option<String>,
}

#[derive(Deserialize)]
struct Output {
    id: String,
    path: String,
    hash_algo: String,
    hash_hex: String,
}

#[test]
fn every_derivation() {
    let file: File = load("derivations.json");
    let mut report = Report::new("derivations.json");
    let drvs = Drvs {
        bytes: file
            .derivations
            .iter()
            .map(|v| (v.drv_path.clone(), unhex(&v.drv_hex)))
            .collect(),
    };
    for v in &file.derivations {
        check_vector(&mut report, v, &drvs, &file.system);
    }
    report.finish();
}

/// The recorded `.drv` files by path, from which input derivations' modulo
/// hashes are computed as the daemon does: from the stored bytes.
struct Drvs {
    bytes: BTreeMap<String, Vec<u8>>,
}

impl Drvs {
    fn hash_modulo(&self, path: &str) -> Result<Hash, String> {
        let bytes = self
            .bytes
            .get(path)
            .ok_or_else(|| format!("input `{path}' has no vector"))?;
        let (drv, _) = parse_derivation(bytes, DrvLimits::default())
            .map_err(|e| format!("input `{path}': {e}"))?;
        drv.hash_modulo(|p| self.hash_modulo(p))
    }
}

fn check_vector(report: &mut Report, v: &Vector, drvs: &Drvs, system: &str) {
    let at = format!("derivation `{}'", v.name);
    let bytes = unhex(&v.drv_hex);
    let utf8 = std::str::from_utf8(&bytes).ok();
    report.eq(
        &at,
        "drv_text is the UTF-8 of drv_hex",
        &v.drv_text.as_deref(),
        &utf8,
    );
    report.eq(&at, "daemon_drv_path", &v.daemon_drv_path, &v.drv_path);
    check_drv_path(report, &at, v, &bytes);
    if !v.fixed_output {
        check_masked_hash(report, &at, v);
    }

    let parsed = parse_derivation(&bytes, DrvLimits::default());
    if v.drv_text.is_none() {
        // guixd refuses a `.drv` that is not UTF-8, on purpose: the C++
        // daemon takes any bytes, but Guix only writes such a file through
        // the Latin-1 port quirk (README, "Quirks"), and a store holding
        // text in two encodings helps nobody. The refusal must be clear.
        let refused = matches!(parsed, Err(DrvParseError::InvalidUtf8));
        let detail = format!("expected the UTF-8 refusal, got {parsed:?}");
        report.check(&at, "a non-UTF-8 .drv is refused", refused, detail);
        if let Err(e) = &parsed {
            report.eq(
                &at,
                "refusal text",
                e.to_string().as_str(),
                "string in derivation is not valid UTF-8",
            );
        }
        return;
    }
    let Some((drv, consumed)) = report.ok(&at, "parse_derivation", parsed) else {
        return;
    };
    report.eq(&at, "bytes consumed", &consumed, &bytes.len());
    report.eq_bytes(&at, "to_text", drv.to_text().as_bytes(), &bytes);
    report.eq(&at, "platform", drv.platform.as_str(), system);
    report.eq(
        &at,
        "is_fixed_output",
        &drv.is_fixed_output(),
        &v.fixed_output,
    );
    let refs: Vec<&str> = drv.references().into_iter().collect();
    let want: Vec<&str> = v.references.iter().map(String::as_str).collect();
    report.eq(&at, "references()", &refs, &want);
    let outputs: Vec<(&str, &str, &str, &str)> = drv
        .outputs
        .iter()
        .map(|(id, o)| {
            (
                id.as_str(),
                o.path.as_str(),
                o.hash_algo.as_str(),
                o.hash.as_str(),
            )
        })
        .collect();
    let want: Vec<(&str, &str, &str, &str)> = v
        .outputs
        .iter()
        .map(|o| {
            (
                o.id.as_str(),
                o.path.as_str(),
                o.hash_algo.as_str(),
                o.hash_hex.as_str(),
            )
        })
        .collect();
    report.eq(&at, "outputs", &outputs, &want);
    check_hashes(report, &at, v, &drv, drvs);
}

/// The `.drv` path is the text path of `NAME.drv` with the `.drv`'s
/// references; this needs no parsing, so it runs for every vector.
fn check_drv_path(report: &mut Report, at: &str, v: &Vector, bytes: &[u8]) {
    let store = store();
    let mut sorted = v.references.clone();
    sorted.sort();
    report.eq(at, "references are sorted", &v.references, &sorted);
    let refs: Vec<StorePath> = v
        .references
        .iter()
        .filter_map(|r| report.ok(at, "reference", store.parse_path(r)))
        .collect();
    let name = format!("{}.drv", v.name);
    let path = store.make_text_path(&name, &Hash::sha256(bytes), &refs);
    if let Some(path) = report.ok(at, "make_text_path of the .drv", path) {
        report.eq(at, "drv_path", path.as_str(), v.drv_path.as_str());
    }
}

/// The masked hash is the SHA-256 of the hashed form, and each output path
/// follows from it; also independent of the parser.
fn check_masked_hash(report: &mut Report, at: &str, v: &Vector) {
    let (Some(masked), Some(form)) = (&v.masked_hash_hex, &v.hashed_form_hex) else {
        return report.fail(at, "masked hash", "missing for a regular derivation");
    };
    report.eq(
        at,
        "sha256 of hashed_form",
        &Hash::sha256(&unhex(form)).to_hex(),
        masked,
    );
    let Some(masked) = report.ok(
        at,
        "masked hash",
        Hash::parse_hex(guixd_core::HashAlgo::Sha256, masked),
    ) else {
        return;
    };
    for o in &v.outputs {
        let path = store().make_output_path(&o.id, &masked, &v.name);
        if let Some(path) = report.ok(at, "make_output_path", path) {
            report.eq(
                at,
                &format!("output `{}' path", o.id),
                path.as_str(),
                o.path.as_str(),
            );
        }
    }
}

fn check_hashes(report: &mut Report, at: &str, v: &Vector, drv: &Derivation, drvs: &Drvs) {
    let inputs = |p: &str| drvs.hash_modulo(p);
    if let Some(h) = report.ok(at, "hash_modulo", drv.hash_modulo(inputs)) {
        report.eq(at, "hash_modulo", &h.to_hex(), &v.hash_modulo_hex);
    }
    if v.fixed_output {
        check_fixed(report, at, v, drv);
    } else {
        let blank = drv.with_blank_outputs();
        if let Some(h) = report.ok(at, "masked hash", blank.hash_modulo(inputs)) {
            report.eq(at, "masked hash", &Some(h.to_hex()), &v.masked_hash_hex);
        }
        // The hashed form, spelled out: the masked derivation with each
        // input `.drv` path replaced by base16 of its modulo hash.
        let mut form = blank.clone();
        form.input_drvs = BTreeMap::new();
        for (path, names) in &blank.input_drvs {
            if let Some(h) = report.ok(at, "input hash", drvs.hash_modulo(path)) {
                let names: BTreeSet<String> = names.clone();
                form.input_drvs.insert(h.to_hex(), names);
            }
        }
        let want = v.hashed_form_hex.as_deref().map(unhex).unwrap_or_default();
        report.eq_bytes(at, "hashed form", form.to_text().as_bytes(), &want);
    }
    let store = store();
    if let Some(paths) = report.ok(
        at,
        "output_paths",
        drv.output_paths(&store, &v.name, inputs),
    ) {
        let got: Vec<(&str, &str)> = paths
            .iter()
            .map(|(id, p)| (id.as_str(), p.as_str()))
            .collect();
        let want: Vec<(&str, &str)> = v
            .outputs
            .iter()
            .map(|o| (o.id.as_str(), o.path.as_str()))
            .collect();
        report.eq(at, "output_paths", &got, &want);
    }
    if let Some(drv_path) = report.ok(at, "drv path", store.parse_path(&v.drv_path)) {
        report.ok(
            at,
            "check_outputs",
            drv.check_outputs(&store, &drv_path, inputs),
        );
    }
}

/// A fixed output's modulo hash is the SHA-256 of `fixed:out:ALGO:HASH:PATH`
/// (README), and its path is the fixed-output path of its expected hash.
fn check_fixed(report: &mut Report, at: &str, v: &Vector, drv: &Derivation) {
    let [o] = v.outputs.as_slice() else {
        return report.fail(at, "fixed output", "not exactly one output");
    };
    let fingerprint = format!("fixed:out:{}:{}:{}", o.hash_algo, o.hash_hex, o.path);
    report.eq(
        at,
        "hash_modulo is the fixed-output fingerprint's",
        &Hash::sha256(fingerprint.as_bytes()).to_hex(),
        &v.hash_modulo_hex,
    );
    let Some(out) = drv.outputs.get("out") else {
        return report.fail(at, "fixed output", "no output `out'");
    };
    if let Some(info) = report.ok(at, "parse_hash_info", out.parse_hash_info()) {
        report.eq(at, "expected hash", &info.hash.to_hex(), &o.hash_hex);
        report.eq(
            at,
            "recursive",
            &info.recursive,
            &o.hash_algo.starts_with("r:"),
        );
        let path = store().make_fixed_output_path(info.recursive, &info.hash, &v.name);
        if let Some(path) = report.ok(at, "make_fixed_output_path", path) {
            report.eq(at, "output path", path.as_str(), o.path.as_str());
        }
    }
}

//! `errors.json`: one failing request per connection, with the daemon's
//! error text and whether the session survived.
//!
//! For every case, the captured bytes are decoded and encoded again (see
//! `conversation`), the `ERROR` frame must decode to the recorded message
//! and status (or the reply to the recorded result), and the probe that
//! follows must show whether the session survived. Then, where the error
//! comes from a pure function of the request, guixd-core must produce the
//! same text: name checks, store-path checks, `.drv` parsing, fixed-output
//! hashes and output paths.
//!
//! Keeps true: every case is either reproduced offline or listed in
//! [`NEEDS_DAEMON`] or [`KNOWN_FAILURES`] with its reason; a case in none
//! of them fails the test, so nothing is skipped silently.

use super::conversation::{Exchange, Turn, check_conversation};
use super::support::{Report, load, store};
use guixd_core::derivation::{Derivation, DerivationOutput, DrvLimits, parse_derivation};
use guixd_core::wire::{Reply, Request};
use guixd_core::{Hash, StoreDir, StorePath};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct File {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    arguments: serde_json::Value,
    message: Option<String>,
    status: Option<u32>,
    result: Option<String>,
    session_survives: bool,
    exchanges: Vec<Exchange>,
}

/// Cases whose error text depends on the store's state or is decided by
/// the daemon's session, not by a pure function the core exposes. The
/// interop tests run them against guixd itself. Their bytes are still
/// decoded and encoded again above.
const NEEDS_DAEMON: [(&str, &str); 7] = [
    (
        "text-invalid-reference",
        "whether a reference is valid is store state",
    ),
    (
        "query-path-info-invalid",
        "whether a path is valid is store state",
    ),
    (
        "references-invalid",
        "whether a path is valid is store state",
    ),
    (
        "query-derivation-outputs-invalid",
        "whether a .drv is valid is store state",
    ),
    (
        "hash-part-bad-length",
        "the session checks the hash part's length",
    ),
    (
        "add-to-store-unknown-algo",
        "the session rejects the algorithm name",
    ),
    (
        "add-to-store-flat-directory",
        "the session rejects a flat non-file",
    ),
];

/// The builder every derivation of the generator uses (README).
const BUILDER_TEXT: &[u8] = b"#!/bin/sh\necho building\n";

#[test]
fn every_error_case() {
    let file: File = load("errors.json");
    let mut report = Report::new("errors.json");
    for (name, _) in NEEDS_DAEMON.iter() {
        let listed = file.cases.iter().any(|c| c.name == *name);
        report.check(name, "a listed case exists", listed, "no such case");
    }
    for case in &file.cases {
        let at = format!("case `{}'", case.name);
        let turns = check_conversation(&mut report, &at, &case.exchanges, false);
        let [failing, probe] = turns.as_slice() else {
            report.fail(&at, "exchanges", "not a request and a probe");
            continue;
        };
        check_outcome(&mut report, &at, case, failing, probe);
        if let Some((_, reason)) = NEEDS_DAEMON.iter().find(|(n, _)| *n == case.name) {
            eprintln!("errors.json: {at}: text not reproduced offline: {reason}");
            continue;
        }
        match reproduce(case, &failing.request) {
            Ok(Outcome::Error(text)) => {
                report.eq(
                    &at,
                    "the core's error text",
                    &Some(text.as_str()),
                    &case.message.as_deref(),
                );
            }
            Ok(Outcome::Path(path)) => {
                report.eq(
                    &at,
                    "the core's path",
                    &Some(path.as_str()),
                    &case.result.as_deref(),
                );
            }
            Err(why) => report.fail(&at, "offline reproduction", why),
        }
    }
    report.finish();
}

/// The captured outcome must be the recorded one, and the probe must show
/// whether the session survived. A request that fails the store-path
/// assertion while it is read ends the session, as the C++ daemon's does.
fn check_outcome(report: &mut Report, at: &str, case: &Case, failing: &Turn, probe: &Turn) {
    let recorded = case.message.as_deref().zip(case.status);
    report.eq(
        at,
        "error frame (message, status)",
        &failing.error(),
        &recorded,
    );
    if let Some(result) = &case.result {
        let got = match failing.reply() {
            Some(Reply::AddTextToStore(p) | Reply::AddToStore(p)) => Some(p.as_str()),
            _ => None,
        };
        report.eq(at, "result", &got, &Some(result.as_str()));
    }
    report.check(
        at,
        "probe is valid-path?",
        matches!(probe.request, Request::IsValidPath { .. }),
        format_args!("{:?}", probe.request.op()),
    );
    let probe_reply = if case.session_survives {
        Some(&Reply::IsValidPath(true))
    } else {
        None
    };
    report.eq(at, "probe reply", &probe.reply(), &probe_reply);
    report.check(
        at,
        "a closed session answers nothing",
        case.session_survives || probe.response.is_empty(),
        "the probe got an answer",
    );
    let fatal = failing.request.assert_store_paths(&store()).is_err();
    report.eq(
        at,
        "session_survives, from the store-path assertion",
        &!fatal,
        &case.session_survives,
    );
}

/// What the core makes of a failing request, offline.
enum Outcome {
    Error(String),
    /// The request succeeds with this store path.
    Path(String),
}

fn reproduce(case: &Case, request: &Request) -> Result<Outcome, String> {
    let store = store();
    match request {
        Request::AddTextToStore {
            name,
            contents,
            references,
        } => {
            let refs: Vec<StorePath> = references
                .iter()
                .map(|r| store.parse_path(r).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?;
            let path = match store.make_text_path(name, &Hash::sha256(contents), &refs) {
                Ok(p) => p,
                Err(e) => return Ok(Outcome::Error(e.to_string())),
            };
            if name.ends_with(".drv") {
                if let Some(text) = drv_error(case, &store, &path, contents)? {
                    return Ok(Outcome::Error(text));
                }
            }
            Ok(Outcome::Path(path.as_str().to_owned()))
        }
        Request::QueryPathInfo { path } | Request::IsValidPath { path } => {
            match store.parse_path(path) {
                Err(e) => Ok(Outcome::Error(e.to_string())),
                Ok(_) => Err(format!(
                    "`{path}' is a store path; its error is store state"
                )),
            }
        }
        other => Err(format!("no offline reproduction for {:?}", other.op())),
    }
}

/// The daemon's error for a `.drv` written with add-text-to-store: a parse
/// error (wrapped as the daemon wraps it) or an output check error.
fn drv_error(
    case: &Case,
    store: &StoreDir,
    drv_path: &StorePath,
    contents: &[u8],
) -> Result<Option<String>, String> {
    let drv = match parse_derivation(contents, DrvLimits::default()) {
        Ok((drv, _)) => drv,
        Err(e) => {
            let text = format!("error parsing derivation `{}': {e}", drv_path.as_str());
            return Ok(Some(text));
        }
    };
    let inputs = known_inputs(case, store)?;
    let lookup = |p: &str| {
        inputs
            .get(p)
            .copied()
            .ok_or_else(|| format!("unknown input derivation `{p}'"))
    };
    Ok(drv
        .check_outputs(store, drv_path, lookup)
        .err()
        .map(|e| e.to_string()))
}

/// Modulo hashes of the input derivations a case uses. Only
/// `drv-unsorted-input-outputs` has one: `multi`, made by the generator's
/// setup (`errors.scm`) with outputs `out` and `dev`. Its `.drv` is not
/// recorded, so it is rebuilt here from that description; the rebuilt
/// file's store path must be the recorded input path, which proves it is
/// byte for byte the same.
fn known_inputs(case: &Case, store: &StoreDir) -> Result<BTreeMap<String, Hash>, String> {
    let Some(input) = case.arguments.get("input").and_then(|v| v.as_str()) else {
        return Ok(BTreeMap::new());
    };
    let builder = store
        .make_text_path("builder.sh", &Hash::sha256(BUILDER_TEXT), [])
        .map_err(|e| e.to_string())?;
    let (path, drv) = rebuild_multi(store, &builder)?;
    if path.as_str() != input {
        return Err(format!(
            "rebuilt `multi' is {}, not the recorded {input}",
            path.as_str()
        ));
    }
    let no_inputs = |p: &str| Err(format!("`multi' has no input derivation, asked for `{p}'"));
    let hash = drv.hash_modulo(no_inputs)?;
    Ok(BTreeMap::from([(input.to_owned(), hash)]))
}

/// The `.drv` of `(derivation store "multi" builder '("-c" "true")
/// #:outputs '("out" "dev") #:sources (list builder))`, and its path.
fn rebuild_multi(store: &StoreDir, builder: &StorePath) -> Result<(StorePath, Derivation), String> {
    let mut drv = Derivation {
        platform: "x86_64-linux".into(),
        builder: builder.as_str().into(),
        args: vec!["-c".into(), "true".into()],
        ..Derivation::default()
    };
    drv.input_srcs.insert(builder.as_str().into());
    for id in ["dev", "out"] {
        drv.outputs.insert(id.into(), DerivationOutput::default());
        drv.env.insert(id.into(), String::new());
    }
    let no_inputs = |p: &str| Err(format!("unexpected input `{p}'"));
    let paths = drv
        .output_paths(store, "multi", no_inputs)
        .map_err(|e| e.to_string())?;
    for (id, path) in paths {
        drv.env.insert(id.clone(), path.as_str().into());
        if let Some(out) = drv.outputs.get_mut(&id) {
            out.path = path.as_str().into();
        }
    }
    let text = drv.to_text();
    let path = store
        .make_text_path("multi.drv", &Hash::sha256(text.as_bytes()), [builder])
        .map_err(|e| e.to_string())?;
    Ok((path, drv))
}

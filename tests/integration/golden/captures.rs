//! `wire.json`: whole sessions between the Guix 1.5.0 client and the C++
//! daemon, byte for byte.
//!
//! Each connection is decoded and encoded again by the core's codecs (see
//! `conversation`). On top of that, a tiny model of the store (the items
//! the connection added, with their NARs and references) predicts what the
//! store operations must answer, computed with the core's functions: the
//! path of every added item, path info, references and referrers,
//! hash-part lookups, a derivation's outputs, and the exported bytes.
//!
//! Keeps true: export data is compared twice. Frame by frame, each
//! captured `STDERR_WRITE` frame must encode back to its bytes (the
//! codec's round trip, frame boundaries as the daemon chose them). Then
//! the payloads, concatenated, must equal the export the core's encoders
//! build for the item: the C++ daemon cuts its frames where its 64 KiB
//! buffer fills (the big export comes as 96, 65536 and 568 bytes), a
//! choice guixd need not share, so only the concatenation is compared
//! there.

use super::conversation::{Exchange, Turn, check_conversation, guix_name};
use super::support::{Report, load, parse_export, store};
use guixd_core::derivation::{DrvLimits, parse_derivation};
use guixd_core::export::{encode_export_trailer, write_export_marker};
use guixd_core::nar::{NarLimits, NarTree, file_nar};
use guixd_core::wire::{AddToStoreHeader, ClientOptions, PathInfo, Reply, Request};
use guixd_core::{Hash, HashAlgo, StorePath};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct File {
    notes: Vec<String>,
    connections: Vec<Connection>,
}

#[derive(Deserialize)]
struct Connection {
    label: String,
    steps: Vec<String>,
    exchanges: Vec<Exchange>,
}

/// The substitute URLs the daemon was started with (the file's notes).
const DAEMON_SUBSTITUTE_URLS: [&str; 2] = [
    "https://substitutes.invalid/a",
    "https://substitutes.invalid/b",
];

/// The registration time the generator forced before query-path-info.
const REGISTRATION_TIME: u32 = 1;

#[test]
fn every_wire_capture() {
    let file: File = load("wire.json");
    let mut report = Report::new("wire.json");
    let urls_note = file
        .notes
        .iter()
        .any(|n| DAEMON_SUBSTITUTE_URLS.iter().all(|u| n.contains(u)));
    report.check(
        "notes",
        "the daemon's substitute URLs",
        urls_note,
        "not in the notes",
    );
    // One daemon served every connection, one after the other.
    let mut model = Model::default();
    for c in &file.connections {
        let at = format!("connection `{}'", c.label);
        report.check(&at, "steps", !c.steps.is_empty(), "no steps");
        let turns = check_conversation(&mut report, &at, &c.exchanges, true);
        model.substitute_urls = DAEMON_SUBSTITUTE_URLS
            .iter()
            .map(|u| u.to_string())
            .collect();
        let mut closed = false;
        for (i, turn) in turns.iter().enumerate() {
            // Numbered as in `conversation`: two handshake exchanges first.
            let at = format!(
                "{at}, exchange {} `{}'",
                i + 2,
                guix_name(turn.request.op())
            );
            if closed {
                report.check(
                    &at,
                    "the daemon had closed",
                    turn.response.is_empty(),
                    "it answered",
                );
                continue;
            }
            closed = model.check_turn(&mut report, &at, turn);
        }
        check_options(&mut report, &at, &c.label, &turns);
    }
    report.finish();
}

/// What the store holds, as far as these connections can tell.
#[derive(Default)]
struct Model {
    items: BTreeMap<String, Item>,
    /// The URLs substitute-urls answers: the daemon's, or those of a
    /// trusted client's set-options.
    substitute_urls: Vec<String>,
}

struct Item {
    nar: Vec<u8>,
    references: Vec<String>,
    /// The contents of a text item (add-text-to-store).
    text: Option<Vec<u8>>,
}

impl Model {
    /// Checks one turn against the model and updates it. Returns true when
    /// the daemon must have closed the connection after it.
    fn check_turn(&mut self, report: &mut Report, at: &str, turn: &Turn) -> bool {
        let store = store();
        // The daemon asserts these while reading the request, before its
        // work starts, so failing it ends the session.
        if let Err(e) = turn.request.assert_store_paths(&store) {
            let text = e.to_string();
            report.eq(
                at,
                "error for a non-store path",
                &turn.error(),
                &Some((text.as_str(), 1)),
            );
            return true;
        }
        match &turn.request {
            Request::AddTextToStore {
                name,
                contents,
                references,
            } => self.add_text(report, at, turn, name, contents, references),
            Request::AddToStore(header) => self.add_nar(report, at, turn, header),
            Request::IsValidPath { path } => match store.parse_path(path) {
                Ok(_) => {
                    let valid = self.items.contains_key(path);
                    report.eq(
                        at,
                        "reply",
                        &turn.reply(),
                        &Some(&Reply::IsValidPath(valid)),
                    );
                }
                Err(e) => {
                    let text = e.to_string();
                    report.eq(at, "error", &turn.error(), &Some((text.as_str(), 1)));
                }
            },
            Request::QueryPathInfo { path } => {
                let want = self.items.get(path).map(|item| {
                    Reply::QueryPathInfo(PathInfo {
                        deriver: String::new(),
                        hash: Hash::sha256(&item.nar).to_hex(),
                        references: item.references.clone(),
                        registration_time: REGISTRATION_TIME,
                        nar_size: item.nar.len() as u64,
                    })
                });
                self.expect_reply_if_valid(report, at, turn, want);
            }
            Request::QueryReferences { path } => {
                let want = self
                    .items
                    .get(path)
                    .map(|item| Reply::QueryReferences(item.references.clone()));
                self.expect_reply_if_valid(report, at, turn, want);
            }
            Request::QueryReferrers { path } => {
                let referrers = self
                    .items
                    .iter()
                    .filter(|(_, item)| item.references.contains(path))
                    .map(|(p, _)| p.clone())
                    .collect();
                let want = Reply::QueryReferrers(referrers);
                report.eq(at, "reply", &turn.reply(), &Some(&want));
            }
            Request::QueryPathFromHashPart { hash_part } => {
                let found = self.items.keys().find(|p| {
                    store
                        .parse_path(p)
                        .is_ok_and(|sp| sp.hash_part() == Some(hash_part.as_str()))
                });
                let want = Reply::QueryPathFromHashPart(found.cloned().unwrap_or_default());
                report.eq(at, "reply", &turn.reply(), &Some(&want));
            }
            Request::QueryDerivationOutputs { path } => {
                let want = self.derivation_outputs(report, at, path);
                report.eq(at, "reply", &turn.reply(), &want.as_ref());
            }
            Request::ExportPath { path, sign } => {
                report.eq(at, "unsigned", sign, &false);
                self.check_export(report, at, turn, path);
            }
            Request::AddTempRoot { .. } => {
                report.eq(at, "reply", &turn.reply(), &Some(&Reply::AddTempRoot));
            }
            Request::SetOptions(options) => {
                if let Some((_, urls)) = options
                    .overrides
                    .iter()
                    .find(|(k, _)| k == "substitute-urls")
                {
                    // The client is trusted (root): its URLs replace the
                    // daemon's for this session.
                    self.substitute_urls = urls.split_whitespace().map(str::to_owned).collect();
                }
                report.eq(at, "reply", &turn.reply(), &Some(&Reply::SetOptions));
            }
            Request::SubstituteUrls => {
                let want = Reply::SubstituteUrls(self.substitute_urls.clone());
                report.eq(at, "reply", &turn.reply(), &Some(&want));
            }
            // Nothing in the core predicts these; the round trip covers them.
            _ => {}
        }
        false
    }

    /// A query about one path: the reply when the model knows the path,
    /// an error otherwise.
    fn expect_reply_if_valid(
        &self,
        report: &mut Report,
        at: &str,
        turn: &Turn,
        want: Option<Reply>,
    ) {
        match want {
            Some(want) => report.eq(at, "reply", &turn.reply(), &Some(&want)),
            None => report.check(
                at,
                "an error for an invalid path",
                turn.error().is_some(),
                "none",
            ),
        }
    }

    fn add_text(
        &mut self,
        report: &mut Report,
        at: &str,
        turn: &Turn,
        name: &str,
        contents: &[u8],
        references: &[String],
    ) {
        let expected = expected_text_path(name, contents, references);
        match expected {
            Ok(path) => {
                let want = Reply::AddTextToStore(path.as_str().to_owned());
                report.eq(at, "reply", &turn.reply(), &Some(&want));
                let mut references = references.to_vec();
                references.sort();
                references.dedup();
                let item = Item {
                    nar: file_nar(false, contents),
                    references,
                    text: Some(contents.to_vec()),
                };
                self.items.insert(path.as_str().to_owned(), item);
            }
            Err(text) => {
                report.eq(at, "error", &turn.error(), &Some((text.as_str(), 1)));
            }
        }
    }

    fn add_nar(&mut self, report: &mut Report, at: &str, turn: &Turn, header: &AddToStoreHeader) {
        let (recursive, algo) = header.method();
        let nar = turn.nar.clone().unwrap_or_default();
        let Some(algo) = HashAlgo::parse(algo) else {
            return report.check(
                at,
                "an error for an unknown algorithm",
                turn.error().is_some(),
                "none",
            );
        };
        let hash = if recursive {
            Hash::digest(algo, &nar)
        } else {
            match NarTree::from_nar(&nar, NarLimits::default()) {
                Ok(NarTree::File { contents, .. }) => Hash::digest(algo, &contents),
                _ => {
                    let failed = turn.error().is_some();
                    return report.check(at, "an error for a flat non-file", failed, "none");
                }
            }
        };
        let path = store().make_fixed_output_path(recursive, &hash, &header.name);
        let Some(path) = report.ok(at, "make_fixed_output_path", path) else {
            return;
        };
        let want = Reply::AddToStore(path.as_str().to_owned());
        report.eq(at, "reply", &turn.reply(), &Some(&want));
        let item = Item {
            nar,
            references: Vec::new(),
            text: None,
        };
        self.items.insert(path.as_str().to_owned(), item);
    }

    /// The outputs of a derivation added in these connections, sorted.
    fn derivation_outputs(&self, report: &mut Report, at: &str, path: &str) -> Option<Reply> {
        let text = self.items.get(path)?.text.as_ref()?;
        let (drv, _) = report.ok(
            at,
            "parse the .drv",
            parse_derivation(text, DrvLimits::default()),
        )?;
        let mut outputs: Vec<String> = drv.outputs.values().map(|o| o.path.clone()).collect();
        outputs.sort();
        Some(Reply::QueryDerivationOutputs(outputs))
    }

    /// The export of one item: the concatenated `STDERR_WRITE` payloads
    /// must be the item's NAR and an unsigned trailer as the core encodes
    /// them, and the export parser must read them back.
    fn check_export(&self, report: &mut Report, at: &str, turn: &Turn, path: &str) {
        report.eq(at, "reply", &turn.reply(), &Some(&Reply::ExportPath));
        let Some(item) = self.items.get(path) else {
            return report.fail(at, "export", "of an item the model does not know");
        };
        let mut want = item.nar.clone();
        encode_export_trailer(path, &item.references, "", None, &mut want);
        let written = turn.written();
        report.eq_bytes(at, "export data (frames concatenated)", &written, &want);
        // The client frames the item as a bundle of one.
        let mut bundle = Vec::new();
        write_export_marker(&mut bundle, true);
        bundle.extend_from_slice(&written);
        write_export_marker(&mut bundle, false);
        if let Some(parsed) = report.ok(at, "parse the export", parse_export(&bundle, usize::MAX)) {
            let got: Vec<(&str, &[String], &str)> = parsed
                .items
                .iter()
                .map(|i| (i.path.as_str(), i.references.as_slice(), i.deriver.as_str()))
                .collect();
            let want = vec![(path, item.references.as_slice(), "")];
            report.eq(at, "exported item", &got, &want);
            report.eq(at, "exported NARs", &parsed.nars, &vec![item.nar.clone()]);
        }
    }
}

/// The path add-text-to-store must give, or the daemon's error: the text
/// path of the contents and references, and for a `.drv` also the output
/// check (these captures have no input derivations).
fn expected_text_path(
    name: &str,
    contents: &[u8],
    references: &[String],
) -> Result<StorePath, String> {
    let store = store();
    let refs = references
        .iter()
        .map(|r| store.parse_path(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let path = store
        .make_text_path(name, &Hash::sha256(contents), &refs)
        .map_err(|e| e.to_string())?;
    if name.ends_with(".drv") {
        let (drv, _) = parse_derivation(contents, DrvLimits::default())
            .map_err(|e| format!("error parsing derivation `{}': {e}", path.as_str()))?;
        let no_inputs = |p: &str| Err(format!("unexpected input derivation `{p}'"));
        drv.check_outputs(&store, &path, no_inputs)
            .map_err(|e| e.to_string())?;
    }
    Ok(path)
}

/// The first request of the connections that set options must decode to
/// what their steps say the client sent.
fn check_options(report: &mut Report, at: &str, label: &str, turns: &[Turn]) {
    let Some(want) = expected_options(label) else {
        return;
    };
    match turns.first().map(|t| &t.request) {
        Some(Request::SetOptions(options)) => report.eq(at, "set-options", options, &want),
        _ => report.fail(at, "set-options", "not the first request"),
    }
}

/// The options of each connection that sets them. Minor 0x64 carries
/// neither max-build-jobs, max-silent-time nor build-cores as fields: the
/// client sends them as overrides, in its own order, with rounds 2 as
/// `build-repeat 1`.
fn expected_options(label: &str) -> Option<ClientOptions> {
    let pairs = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let defaults = ClientOptions {
        keep_failed: false,
        keep_going: false,
        try_fallback: false,
        verbosity: 0,
        max_build_jobs: None,
        max_silent_time: None,
        use_build_hook: Some(true),
        build_verbosity: Some(0),
        log_type: Some(0),
        print_build_trace: Some(true),
        build_cores: None,
        use_substitutes: Some(true),
        // README: the client runs as root with LC_ALL=C.UTF-8, COLUMNS=80.
        overrides: pairs(&[
            ("print-extended-build-trace", "0"),
            ("user-name", "root"),
            ("terminal-columns", "80"),
            ("locale", "C.UTF-8"),
        ]),
    };
    match label {
        "session" => Some(defaults),
        "set-build-options-overrides" => Some(ClientOptions {
            keep_failed: true,
            keep_going: true,
            try_fallback: true,
            verbosity: 3,
            use_build_hook: Some(false),
            build_verbosity: Some(1),
            log_type: Some(2),
            overrides: pairs(&[
                ("print-extended-build-trace", "1"),
                ("multiplexed-build-output", "true"),
                ("build-timeout", "600"),
                ("build-max-silent-time", "60"),
                ("build-max-jobs", "4"),
                ("build-cores", "2"),
                ("substitute-urls", "https://one.invalid https://two.invalid"),
                ("build-repeat", "1"),
                ("user-name", "alice"),
                ("terminal-columns", "123"),
                ("locale", "C"),
            ]),
            ..defaults
        }),
        _ => None,
    }
}

//! Interop and differential scenarios: the real Guix 1.5.0 client drives a
//! daemon through every store operation, with the scripts of
//! `tests/interop/` (see the README there), and `guix archive` moves a
//! closure from one daemon to another.
//!
//! Each scenario runs
//! - against the C++ `guix-daemon` (`cpp`), which validates the script,
//! - against guixd on each runtime (`guixd_threads`, `guixd_smol`), which
//!   must pass the same checks the script makes of any daemon,
//! - differentially (`differential_threads`, `differential_smol`): the C++
//!   daemon and guixd run one after the other on the same store directory
//!   string, and their transcripts (paths, hashes, sizes, references, error
//!   texts and statuses, log text, file metadata) must be equal, step for
//!   step, except for the differences listed in [`KNOWN_DIFFERENCES`].
//!
//! Keeps true: every deliberate difference between guixd and the C++ daemon
//! is listed in [`KNOWN_DIFFERENCES`] with its reason, and nowhere else; a
//! listed difference that no longer shows is reported (but does not fail);
//! scenarios never depend on one another.
//!
//! Set `GUIXD_IT_TRANSCRIPTS=DIR` to keep every transcript in DIR, and
//! `GUIXD_IT_TRACE=1` to see each step as a script records it.

use crate::support::transcript::{
    KnownDifference, Run, assert_reference_passed, assert_same, compare, run_script,
    transcript_scenarios,
};
use crate::support::{Daemon, DaemonConfig, Implementation, Runtime, Slot, Substitutes, run_guix};
use std::time::{Duration, Instant};

/// Every deliberate difference between guixd and the C++ daemon that the
/// differential scenarios can observe.
const KNOWN_DIFFERENCES: &[KnownDifference] = &[
    // add-to-store with NARs that are well-formed token by token but not
    // canonical. The C++ daemon restores them as they come and registers
    // the item with the hash of the bytes it received, which is not the
    // hash of the files it wrote (the script records `hash_matches_files:
    // false` for it), or fails half-way with a file-system error. guixd's
    // NAR parser refuses them while reading the request, which (as for
    // every unreadable request) also ends the session.
    KnownDifference {
        scenario: "add-to-store",
        label: "NAR directory not sorted",
        reason: "guixd refuses a NAR whose directory entries are not sorted",
    },
    KnownDifference {
        scenario: "add-to-store",
        label: "NAR directory not sorted: session alive after",
        reason: "a request guixd cannot read ends the session",
    },
    KnownDifference {
        scenario: "add-to-store",
        label: "NAR directory with a duplicate entry",
        reason: "guixd refuses a NAR with two entries of the same name",
    },
    KnownDifference {
        scenario: "add-to-store",
        label: "NAR directory with a duplicate entry: session alive after",
        reason: "a request guixd cannot read ends the session",
    },
    KnownDifference {
        scenario: "add-to-store",
        label: "NAR with a bad executable marker",
        reason: "guixd refuses an `executable' marker with a non-empty value",
    },
    KnownDifference {
        scenario: "add-to-store",
        label: "NAR with a bad executable marker: session alive after",
        reason: "a request guixd cannot read ends the session",
    },
    // guixd's error texts are UTF-8 strings: where the C++ daemon puts the
    // raw byte of a name into "invalid character `C'" (0xC3 for the first
    // byte of "é"), guixd puts U+FFFD (EF BF BD). The Guix client decodes
    // both to U+FFFD, so the decoded step `name with a non-ASCII
    // character' is equal; only the raw bytes differ.
    KnownDifference {
        scenario: "text",
        label: "name with a non-ASCII character: raw error bytes",
        reason: "guixd sends U+FFFD where the C++ daemon sends a lone non-UTF-8 byte",
    },
    // The C++ daemon starts its substituter once per session, with the
    // options the session had then, and keeps it: substitute URLs a client
    // sets later never reach it. guixd's substituter runs with the asking
    // session's current options and is restarted when they change, so the
    // restarted substituter's start-up warning shows again.
    KnownDifference {
        scenario: "substitutes-enabled",
        label: "client URLs: has-substitutes? valid",
        reason: "guixd restarts the substituter with the client's new substitute URLs",
    },
    // Op 21 on a path outside the store: the C++ daemon hands it to the
    // substituter, which dies on it, and the client gets "died
    // unexpectedly". guixd answers that there is nothing to substitute
    // without asking (and without killing its shared substituter).
    KnownDifference {
        scenario: "substitutes-enabled",
        label: "query-substitutable-path-info not in store",
        reason: "guixd does not send a path outside the store to the substituter",
    },
];

/// One scenario: a script of `tests/interop/` and the daemon it needs.
struct Scenario {
    name: &'static str,
    script: &'static str,
    args: &'static [&'static str],
    substitutes: Substitutes,
}

impl Scenario {
    fn config(&self) -> DaemonConfig {
        DaemonConfig {
            substitutes: self.substitutes.clone(),
            ..DaemonConfig::default()
        }
    }
}

const QUERIES: Scenario = Scenario {
    name: "queries",
    script: "queries.scm",
    args: &[],
    substitutes: Substitutes::Disabled,
};

const ADD_TO_STORE: Scenario = Scenario {
    name: "add-to-store",
    script: "add-to-store.scm",
    args: &[],
    substitutes: Substitutes::Disabled,
};

const TEXT: Scenario = Scenario {
    name: "text",
    script: "text.scm",
    args: &[],
    substitutes: Substitutes::Disabled,
};

const DERIVATIONS: Scenario = Scenario {
    name: "derivations",
    script: "derivations.scm",
    args: &[],
    substitutes: Substitutes::Disabled,
};

const EXPORT_IMPORT: Scenario = Scenario {
    name: "export-import",
    script: "export-import.scm",
    args: &[],
    substitutes: Substitutes::Disabled,
};

const SUBSTITUTES_DISABLED: Scenario = Scenario {
    name: "substitutes-disabled",
    script: "substitutes.scm",
    args: &["disabled"],
    substitutes: Substitutes::Disabled,
};

const SUBSTITUTES_ENABLED: Scenario = Scenario {
    name: "substitutes-enabled",
    script: "substitutes.scm",
    args: &["enabled"],
    substitutes: Substitutes::EmptyFileCache,
};

const OPTIONS: Scenario = Scenario {
    name: "options",
    script: "options.scm",
    args: &[],
    substitutes: Substitutes::Disabled,
};

/// Runs `scenario` against `implementation`; it must pass its checks.
fn interop(scenario: &Scenario, implementation: Implementation) {
    let started = Instant::now();
    let daemon = Daemon::start(implementation, &scenario.config());
    let run = run_script(&daemon, scenario.script, scenario.name, scenario.args);
    report_time(scenario.name, &implementation.name(), started.elapsed());
    assert!(
        run.passed(),
        "scenario {} failed against {}",
        scenario.name,
        run.describe()
    );
}

/// Runs `scenario` against the C++ daemon and then guixd on `runtime`, in
/// the same directory, and compares their transcripts.
fn differential(scenario: &Scenario, runtime: Runtime) {
    let started = Instant::now();
    let slot = Slot::new();
    let reference = {
        let daemon = Daemon::start_in(&slot, Implementation::Cpp, &scenario.config());
        run_script(&daemon, scenario.script, scenario.name, scenario.args)
    };
    assert_reference_passed(scenario.name, &reference);
    let candidate = {
        let daemon = Daemon::start_in(&slot, Implementation::Guixd(runtime), &scenario.config());
        run_script(&daemon, scenario.script, scenario.name, scenario.args)
    };
    report_time(
        scenario.name,
        &format!("differential-{}", runtime.name()),
        started.elapsed(),
    );
    assert_same(
        scenario.name,
        runtime.name(),
        KNOWN_DIFFERENCES,
        &reference,
        &candidate,
    );
}

fn report_time(scenario: &str, what: &str, elapsed: Duration) {
    eprintln!(
        "[interop] {scenario} / {what}: {:.2}s",
        elapsed.as_secs_f64()
    );
}

// ---- `guix archive`, the command

/// What `guix archive --export` and `--missing` did on one daemon.
struct Exported {
    implementation: Implementation,
    /// The items made by `archive.scm make`, top item first.
    items: Vec<String>,
    archive: Vec<u8>,
    /// What `guix archive --missing` printed for the items and one missing
    /// path.
    missing: String,
}

/// What `guix archive --import` did on a fresh daemon.
struct Imported {
    /// The error lines of the import of a corrupted archive.
    corrupt_errors: Vec<String>,
    /// The standard error of the import of the intact archive.
    log: String,
    check: Run,
}

/// Makes a closure on a fresh `implementation` in `slot` and exports it
/// with `guix archive --export -r`, twice (the bytes must not change).
fn archive_export(slot: &Slot, implementation: Implementation) -> Exported {
    let daemon = Daemon::start_in(slot, implementation, &DaemonConfig::default());
    let made = run_script(&daemon, "archive.scm", "make", &["make"]);
    assert!(
        made.passed(),
        "archive.scm make failed: {}",
        made.describe()
    );
    let items: Vec<String> = made
        .steps
        .iter()
        .find(|(label, _)| label == "items")
        .and_then(|(_, v)| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(items.len(), 3, "archive.scm make recorded no items");

    let export = |what: &str| {
        let out = run_guix(&daemon, &["archive", "--export", "-r", &items[0]], None);
        assert!(
            out.success(),
            "guix archive --export ({what}) failed on {}: {}",
            implementation.name(),
            out.describe()
        );
        out.stdout
    };
    let archive = export("first");
    let again = export("second");
    assert!(
        archive == again,
        "two exports of the same closure differ on {}",
        implementation.name()
    );

    let mut query = items.join("\n");
    query.push_str(&format!(
        "\n{}/00000000000000000000000000000000-missing\n",
        daemon.store_dir()
    ));
    let missing = run_guix(&daemon, &["archive", "--missing"], Some(query.as_bytes()));
    assert!(
        missing.success(),
        "guix archive --missing failed on {}: {}",
        implementation.name(),
        missing.describe()
    );
    Exported {
        implementation,
        items,
        archive,
        missing: missing.stdout_text(),
    }
}

/// Imports `exported` into a fresh `implementation` in `slot` with
/// `guix archive --import`, after a corrupted copy that must be refused.
fn archive_import(slot: &Slot, implementation: Implementation, exported: &Exported) -> Imported {
    let daemon = Daemon::start_in(slot, implementation, &DaemonConfig::default());
    // The middle of the archive is inside the large file's contents.
    let mut corrupt = exported.archive.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0xff;
    let bad = run_guix(&daemon, &["archive", "--import"], Some(&corrupt));
    assert!(
        !bad.success(),
        "{} imported a corrupted archive: {}",
        implementation.name(),
        bad.describe()
    );
    let good = run_guix(&daemon, &["archive", "--import"], Some(&exported.archive));
    assert!(
        good.success(),
        "{} could not import the archive exported by {}: {}",
        implementation.name(),
        exported.implementation.name(),
        good.describe()
    );
    let mut args = vec!["check"];
    args.extend(exported.items.iter().map(String::as_str));
    let check = run_script(&daemon, "archive.scm", "check", &args);
    Imported {
        corrupt_errors: bad
            .stderr_text()
            .lines()
            .filter(|l| l.contains("error"))
            .map(str::to_owned)
            .collect(),
        log: good.stderr_text(),
        check,
    }
}

mod archive {
    use super::*;

    fn roundtrip(implementation: Implementation) {
        let started = Instant::now();
        let slot = Slot::new();
        let exported = archive_export(&slot, implementation);
        let imported = archive_import(&slot, implementation, &exported);
        report_time("archive", &implementation.name(), started.elapsed());
        assert!(
            imported.check.passed(),
            "the imported items are not right on {}: {}",
            implementation.name(),
            imported.check.describe()
        );
    }

    #[test]
    fn cpp() {
        roundtrip(Implementation::Cpp);
    }

    #[test]
    fn guixd_threads() {
        roundtrip(Implementation::Guixd(Runtime::Threads));
    }

    #[test]
    fn guixd_smol() {
        roundtrip(Implementation::Guixd(Runtime::Smol));
    }

    /// The C++ daemon and guixd export the same bytes, and each imports
    /// what the other exported with the same outcome.
    fn differential(runtime: Runtime) {
        let started = Instant::now();
        let slot = Slot::new();
        let guixd = Implementation::Guixd(runtime);
        // guixd imports the C++ daemon's archive before it exports its
        // own, so a failing export does not hide how its import fares.
        let from_cpp = archive_export(&slot, Implementation::Cpp);
        let into_guixd = archive_import(&slot, guixd, &from_cpp);
        let from_guixd = archive_export(&slot, guixd);
        let into_cpp = archive_import(&slot, Implementation::Cpp, &from_guixd);
        report_time(
            "archive",
            &format!("differential-{}", runtime.name()),
            started.elapsed(),
        );

        let mut differences = Vec::new();
        if from_cpp.items != from_guixd.items {
            differences.push(format!(
                "  items: C++ {:?}, guixd {:?}",
                from_cpp.items, from_guixd.items
            ));
        }
        if from_cpp.archive != from_guixd.archive {
            differences.push(format!(
                "  exported archive: C++ {} bytes, guixd {} bytes, first difference at byte {}",
                from_cpp.archive.len(),
                from_guixd.archive.len(),
                first_difference(&from_cpp.archive, &from_guixd.archive)
            ));
        }
        if from_cpp.missing != from_guixd.missing {
            differences.push(format!(
                "  --missing: C++ {:?}, guixd {:?}",
                from_cpp.missing, from_guixd.missing
            ));
        }
        if into_cpp.corrupt_errors != into_guixd.corrupt_errors {
            differences.push(format!(
                "  import of a corrupted archive: C++ {:?}, guixd {:?}",
                into_cpp.corrupt_errors, into_guixd.corrupt_errors
            ));
        }
        if into_cpp.log != into_guixd.log {
            differences.push(format!(
                "  import log: C++ {:?}, guixd {:?}",
                into_cpp.log, into_guixd.log
            ));
        }
        assert!(
            into_cpp.check.passed(),
            "C++ did not import guixd's archive right: {}",
            into_cpp.check.describe()
        );
        differences.extend(compare(
            "archive",
            KNOWN_DIFFERENCES,
            &into_cpp.check.steps,
            &into_guixd.check.steps,
        ));
        assert!(
            differences.is_empty() && into_guixd.check.passed(),
            "guix archive: guixd ({}) differs from the C++ daemon:\n{}\n{}",
            runtime.name(),
            differences.join("\n"),
            if into_guixd.check.passed() {
                String::new()
            } else {
                into_guixd.check.describe()
            }
        );
    }

    #[test]
    fn differential_threads() {
        differential(Runtime::Threads);
    }

    #[test]
    fn differential_smol() {
        differential(Runtime::Smol);
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

transcript_scenarios! {
    queries => QUERIES;
    add_to_store => ADD_TO_STORE;
    text => TEXT;
    derivations => DERIVATIONS;
    export_import => EXPORT_IMPORT;
    substitutes_disabled => SUBSTITUTES_DISABLED;
    substitutes_enabled => SUBSTITUTES_ENABLED;
    options => OPTIONS;
}

//! Transcripts of scenario scripts (see `tests/interop/README.md`): running
//! a script so that it writes one, reading it back, and comparing two of
//! them step by step, for scenario groups that keep their own list of
//! deliberate differences.
//!
//! Keeps true: a comparison matches steps by label (the n-th step with a
//! label against the n-th step with the same label), so one missing step
//! does not hide the others; a difference is left out only when the
//! caller's list names its scenario and label, and a listed difference that
//! did not show is reported on standard error (not as a failure).

use super::client::run_scheme;
use super::daemon::{Daemon, Implementation};
use super::process::Output;
use super::root::host;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};

/// A deliberate difference between guixd and the C++ daemon.
pub struct KnownDifference {
    /// The scenario's name.
    pub scenario: &'static str,
    /// The label of the transcript step whose value differs.
    pub label: &'static str,
    /// Why guixd differs on purpose.
    pub reason: &'static str,
}

/// What one run of a script produced.
pub struct Run {
    pub implementation: Implementation,
    /// The transcript's steps, `(label, value)` in order; empty if the
    /// script wrote no transcript.
    pub steps: Vec<(String, Value)>,
    /// The checks of the script that failed.
    pub failures: Vec<String>,
    pub output: Output,
    pub daemon_log: String,
}

impl Run {
    /// The script exited 0, all its checks held and it wrote a transcript.
    pub fn passed(&self) -> bool {
        self.output.success() && self.failures.is_empty() && !self.steps.is_empty()
    }

    /// A readable account of the run, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} ({}):\n",
            self.implementation.name(),
            self.output.describe()
        );
        for f in &self.failures {
            s.push_str(&format!("  check failed: {f}\n"));
        }
        s
    }

    /// The value of the first step labelled `label`.
    pub fn step(&self, label: &str) -> Option<&Value> {
        self.steps.iter().find(|(l, _)| l == label).map(|(_, v)| v)
    }
}

/// Runs `script` with `args` against `daemon`; the transcript goes to
/// `<daemon dir>/work/transcript-<script>-<tag>.json` (kept in the
/// directory named by `GUIXD_IT_TRANSCRIPTS`, if set, as
/// `<script>-<tag>-<implementation>.json`).
pub fn run_script(daemon: &Daemon, script: &str, tag: &str, args: &[&str]) -> Run {
    let transcript = format!("{}/work/transcript-{script}-{tag}.json", daemon.dir());
    let mut argv = vec![transcript.as_str()];
    argv.extend_from_slice(args);
    let output = run_scheme(daemon, script, &argv);
    let file = host(&transcript);
    if let Some(dir) = std::env::var_os("GUIXD_IT_TRANSCRIPTS") {
        let dir = std::path::PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        let name = format!(
            "{}-{tag}-{}.json",
            script.trim_end_matches(".scm"),
            daemon.implementation().name()
        );
        let _ = std::fs::copy(&file, dir.join(name));
    }
    let (steps, failures) = match std::fs::read(&file) {
        Ok(bytes) => parse(&bytes).unwrap_or_else(|e| {
            panic!(
                "bad transcript {}: {e}\nthe script: {}",
                file.display(),
                output.describe()
            )
        }),
        Err(_) => (Vec::new(), Vec::new()),
    };
    Run {
        implementation: daemon.implementation(),
        steps,
        failures,
        output,
        daemon_log: daemon.log(),
    }
}

type Steps = Vec<(String, Value)>;

/// The steps and failed checks of a transcript.
pub fn parse(bytes: &[u8]) -> Result<(Steps, Vec<String>), String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let steps = v["steps"]
        .as_array()
        .ok_or("no steps")?
        .iter()
        .map(|s| {
            let label = s["label"].as_str().ok_or("step without label")?.to_owned();
            Ok((label, s["value"].clone()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let failures = v["failures"]
        .as_array()
        .ok_or("no failures list")?
        .iter()
        .map(|f| f.as_str().unwrap_or("?").to_owned())
        .collect();
    Ok((steps, failures))
}

/// The differences between two transcripts of `scenario`, as readable
/// lines, leaving out those `known` lists.
pub fn compare(
    scenario: &str,
    known: &[KnownDifference],
    reference: &[(String, Value)],
    candidate: &[(String, Value)],
) -> Vec<String> {
    let mut pending: BTreeMap<&str, VecDeque<&Value>> = BTreeMap::new();
    for (label, value) in candidate {
        pending.entry(label.as_str()).or_default().push_back(value);
    }
    let mut out = Vec::new();
    for (label, rv) in reference {
        let known = known
            .iter()
            .find(|k| k.scenario == scenario && k.label == label.as_str());
        let Some(cv) = pending.get_mut(label.as_str()).and_then(|q| q.pop_front()) else {
            if known.is_none() {
                out.push(format!("  step `{label}': missing from guixd's transcript"));
            }
            continue;
        };
        match (rv == cv, known) {
            (true, Some(k)) => eprintln!(
                "note: known difference `{}' in {scenario} did not show ({})",
                k.label, k.reason
            ),
            (true, None) | (false, Some(_)) => {}
            (false, None) => out.push(format!(
                "  step `{label}':\n    C++:   {}\n    guixd: {}",
                clip(rv),
                clip(cv)
            )),
        }
    }
    // What is left happened only with guixd, in the order guixd did it.
    for (label, _) in candidate {
        if let Some(q) = pending.get_mut(label.as_str()) {
            if q.pop_front().is_some()
                && !known
                    .iter()
                    .any(|k| k.scenario == scenario && k.label == label.as_str())
            {
                out.push(format!("  step `{label}': only in guixd's transcript"));
            }
        }
    }
    out
}

fn clip(v: &Value) -> String {
    const MAX_CHARS: usize = 3000;
    let s = v.to_string();
    if s.chars().count() <= MAX_CHARS {
        s
    } else {
        let head: String = s.chars().take(MAX_CHARS).collect();
        format!("{head}... ({} chars)", s.chars().count())
    }
}

/// Fails unless `reference`, the run of `scenario` against the C++ daemon,
/// passed: the C++ daemon is the oracle, so a check failing there means
/// the script is wrong.
pub fn assert_reference_passed(scenario: &str, reference: &Run) {
    assert!(
        reference.passed(),
        "scenario {scenario} fails against the C++ daemon, so the script is wrong: {}\ndaemon log:\n{}",
        reference.describe(),
        reference.daemon_log
    );
}

/// Fails unless `candidate`, guixd's run of `scenario` on `runtime`, gave
/// a transcript equal to `reference`'s except for the `known` differences.
pub fn assert_same(
    scenario: &str,
    runtime: &str,
    known: &[KnownDifference],
    reference: &Run,
    candidate: &Run,
) {
    assert!(
        !candidate.steps.is_empty(),
        "scenario {scenario}: guixd ({runtime}) gave no transcript: {}\nguixd's log:\n{}",
        candidate.describe(),
        candidate.daemon_log
    );
    let differences = compare(scenario, known, &reference.steps, &candidate.steps);
    assert!(
        differences.is_empty(),
        "scenario {scenario}: guixd ({runtime}) differs from the C++ daemon:\n{}\n{}guixd's log:\n{}",
        differences.join("\n"),
        if candidate.passed() {
            String::new()
        } else {
            candidate.describe()
        },
        candidate.daemon_log
    );
}

/// The five tests of each transcript scenario `MODULE => SCENARIO;`: the
/// script against the C++ daemon (`cpp`, which validates it), against
/// guixd on each runtime (`guixd_threads`, `guixd_smol`), and both compared
/// with the C++ daemon (`differential_threads`, `differential_smol`). The
/// calling module provides `interop(&Scenario, Implementation)` and
/// `differential(&Scenario, Runtime)`.
macro_rules! transcript_scenarios {
    ($($module:ident => $scenario:expr;)*) => {$(
        mod $module {
            use super::*;

            #[test]
            fn cpp() {
                interop(&$scenario, Implementation::Cpp);
            }

            #[test]
            fn guixd_threads() {
                interop(&$scenario, Implementation::Guixd(Runtime::Threads));
            }

            #[test]
            fn guixd_smol() {
                interop(&$scenario, Implementation::Guixd(Runtime::Smol));
            }

            #[test]
            fn differential_threads() {
                differential(&$scenario, Runtime::Threads);
            }

            #[test]
            fn differential_smol() {
                differential(&$scenario, Runtime::Smol);
            }
        }
    )*};
}
pub(crate) use transcript_scenarios;

//! Build scenarios: the real Guix 1.5.0 client has daemons build
//! derivations whose builders are the `sh` of a static busybox added to the
//! store (see `tests/interop/build-common.scm`), in the chroot sandbox
//! (rootless: a user namespace, no build users), with build users, and
//! without a chroot.
//!
//! Each transcript scenario runs
//! - against the C++ `guix-daemon` (`cpp`), which validates the script,
//! - against guixd on each runtime (`guixd_threads`, `guixd_smol`), which
//!   must pass the same checks,
//! - differentially (`differential_threads`, `differential_smol`): the C++
//!   daemon, then guixd, on the same store directory string (and, for
//!   scenarios with an HTTP server, the same server); their transcripts
//!   (outcomes, error texts and statuses, log texts with process ids
//!   masked, output paths, hashes, sizes, references, files) must be
//!   equal except for [`KNOWN_DIFFERENCES`].
//!
//! The scripts: `build-outputs.scm` (simple build, several outputs, a
//! chain, references, allowed/disallowed references, references graphs;
//! rootless and without a chroot), `build-failures.scm`,
//! `build-sandbox.scm` (a simple build and what a builder sees, ordinary
//! and fixed-output; rootless, with build users, without a chroot),
//! `build-fixed.scm` (fixed outputs, hash mismatches, `builtin:download`
//! from the loopback server; with build users, as `guix perform-download`
//! refuses to run as root), `build-control.scm` (max-silent-time, timeout,
//! check mode), `build-graph.scm` (200 derivations, `--max-jobs 2`),
//! `build-command.scm` (`guix build DRV`, `guix build --log-file`) and,
//! for guixd alone, `build-guixd.scm` (retries under load with
//! `--max-build-attempts`, which the C++ daemon lacks, and reuse of
//! fixed-output content). Scenarios with two clients at once and with a
//! guixd killed in the middle of builds are in `build_daemons.rs`.
//!
//! Keeps true: every deliberate difference between guixd and the C++
//! daemon that a transcript shows is listed in [`KNOWN_DIFFERENCES`] with
//! its reason; scenarios never depend on one another.
//!
//! Set `GUIXD_IT_TRANSCRIPTS=DIR` to keep every transcript in DIR.

use crate::support::daemon::Sandbox;
use crate::support::http::HttpServer;
use crate::support::root::host;
use crate::support::transcript::{
    KnownDifference, Run, assert_reference_passed, assert_same, run_script, transcript_scenarios,
};
use crate::support::{Daemon, DaemonConfig, Implementation, Runtime, Slot};
use std::fs;
use std::time::{Duration, Instant};

/// Every deliberate difference between guixd and the C++ daemon that the
/// transcript scenarios can observe.
const KNOWN_DIFFERENCES: &[KnownDifference] = &[
    // guixd frees a build slot when the builder ends; the outputs are then
    // scanned and registered while the next builder may already run, so
    // a client can see more builds between `@ build-started' and
    // `@ build-succeeded' than `--max-jobs'. The C++ daemon frees the slot
    // at the same moment, but being single-threaded it registers the
    // outputs before it starts anything else. Builders themselves never
    // run more than `--max-jobs' at once in either (the scenario checks).
    KnownDifference {
        scenario: "graph",
        label: "graph: builds in progress at once, at most 2 by the traces",
        reason: "guixd registers outputs outside the build slot",
    },
    // Independent builds requested together start in a different order.
    // The C++ daemon runs its goals one step at a time in the order of
    // their names, so with one build slot `fail3' starts before `fine';
    // guixd grants a free slot to the first goal that asks for it, and
    // which asks first depends on when its inputs were checked. The
    // outcome (which builds fail, the error and its status) is the same;
    // the log has the builds in another order.
    KnownDifference {
        scenario: "failures",
        label: "without keep-going",
        reason: "guixd starts independent builds in the order they become ready",
    },
    KnownDifference {
        scenario: "failures",
        label: "keep-going",
        reason: "guixd starts independent builds in the order they become ready",
    },
];

/// How a scenario's daemon isolates builders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The chroot sandbox in a user namespace (uid 30001, gid 30000 inside),
    /// no build users: the rootless arrangement.
    Rootless,
    /// The chroot sandbox with `--build-users-group=guixbuild`.
    BuildUsers,
    /// `--disable-chroot`, no build users.
    NoChroot,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Rootless => "rootless",
            Mode::BuildUsers => "build-users",
            Mode::NoChroot => "no-chroot",
        }
    }
}

/// One transcript scenario: a script of `tests/interop/` and its daemon.
struct Scenario {
    name: &'static str,
    script: &'static str,
    mode: Mode,
    /// More daemon options.
    daemon_args: &'static [&'static str],
    /// Serve files over HTTP on the loopback and pass the server's base
    /// URL (`http://127.0.0.1:PORT`) as the script's first argument.
    http: bool,
}

/// The daemon configuration of `mode`, with `args`.
fn config(mode: Mode, args: &[&str]) -> DaemonConfig {
    DaemonConfig {
        extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
        sandbox: match mode {
            Mode::Rootless | Mode::BuildUsers => Sandbox::Chroot,
            Mode::NoChroot => Sandbox::Disabled,
        },
        build_users: mode == Mode::BuildUsers,
        private_tmp: true,
        ..DaemonConfig::default()
    }
}

/// The shared scratch directory of the daemon in `slot`, inside the root.
fn shared_dir(slot: &Slot) -> String {
    format!("{}/work/shared", slot.dir())
}

/// Starts `implementation` in `slot` for `mode` and makes its shared
/// directory `<dir>/work/shared` (mode 1777), which builders can write to
/// without a chroot. (Not with a chroot: `--chroot-directory` is broken in
/// the C++ daemon 1.5.0, which reads the option's previous value with the
/// `bool` overload of `Settings::get` and so always prepends a byte 1 to
/// the list; every chroot build then fails to bind-mount "\x01".)
pub(crate) fn start(
    slot: &Slot,
    implementation: Implementation,
    mode: Mode,
    args: &[&str],
) -> Daemon {
    let daemon = Daemon::start_in(slot, implementation, &config(mode, args));
    let shared = host(&shared_dir(slot));
    fs::create_dir_all(&shared).unwrap_or_else(|e| panic!("mkdir {}: {e}", shared.display()));
    set_mode(&shared, 0o1777);
    daemon
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// The files the HTTP server of download scenarios serves.
fn http_files() -> Vec<(String, Vec<u8>)> {
    vec![
        ("/hello".to_owned(), b"hello over http\n".to_vec()),
        ("/other".to_owned(), b"something else\n".to_vec()),
    ]
}

/// The HTTP server of `scenario`, if it wants one. Both runs of a
/// differential test share one, so that the URL (which ends up in
/// derivations, hence in store paths) is the same.
fn server_for(scenario: &Scenario) -> Option<HttpServer> {
    scenario.http.then(|| HttpServer::start(http_files()))
}

/// Runs `scenario` on a fresh daemon of `implementation` in `slot`, with
/// `server`'s URL as the script's argument.
fn run_scenario(
    slot: &Slot,
    scenario: &Scenario,
    implementation: Implementation,
    server: Option<&HttpServer>,
) -> Run {
    let daemon = start(slot, implementation, scenario.mode, scenario.daemon_args);
    let base = server.map(|s| s.url(""));
    let args: Vec<&str> = base.iter().map(String::as_str).collect();
    run_script(&daemon, scenario.script, scenario.mode.name(), &args)
}

/// Runs `scenario` against `implementation`; it must pass its checks.
fn interop(scenario: &Scenario, implementation: Implementation) {
    let started = Instant::now();
    let server = server_for(scenario);
    let run = run_scenario(&Slot::new(), scenario, implementation, server.as_ref());
    report_time(scenario.name, &implementation.name(), started.elapsed());
    assert!(
        run.passed(),
        "scenario {} failed against {}\ndaemon log:\n{}",
        scenario.name,
        run.describe(),
        run.daemon_log
    );
}

/// Runs `scenario` against the C++ daemon and then guixd on `runtime`, in
/// the same directory, and compares their transcripts.
fn differential(scenario: &Scenario, runtime: Runtime) {
    let started = Instant::now();
    let slot = Slot::new();
    let server = server_for(scenario);
    let reference = run_scenario(&slot, scenario, Implementation::Cpp, server.as_ref());
    assert_reference_passed(scenario.name, &reference);
    let candidate = run_scenario(
        &slot,
        scenario,
        Implementation::Guixd(runtime),
        server.as_ref(),
    );
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

pub(crate) fn report_time(scenario: &str, what: &str, elapsed: Duration) {
    eprintln!(
        "[builds] {scenario} / {what}: {:.2}s",
        elapsed.as_secs_f64()
    );
}

const OUTPUTS: Scenario = Scenario {
    name: "outputs",
    script: "build-outputs.scm",
    mode: Mode::Rootless,
    daemon_args: &[],
    http: false,
};

const OUTPUTS_NO_CHROOT: Scenario = Scenario {
    name: "outputs-no-chroot",
    script: "build-outputs.scm",
    mode: Mode::NoChroot,
    daemon_args: &[],
    http: false,
};

const FAILURES: Scenario = Scenario {
    name: "failures",
    script: "build-failures.scm",
    mode: Mode::Rootless,
    daemon_args: &[],
    http: false,
};

const SANDBOX: Scenario = Scenario {
    name: "sandbox",
    script: "build-sandbox.scm",
    mode: Mode::Rootless,
    daemon_args: &[],
    http: true,
};

const SANDBOX_BUILD_USERS: Scenario = Scenario {
    name: "sandbox-build-users",
    script: "build-sandbox.scm",
    mode: Mode::BuildUsers,
    daemon_args: &[],
    http: true,
};

const SANDBOX_NO_CHROOT: Scenario = Scenario {
    name: "sandbox-no-chroot",
    script: "build-sandbox.scm",
    mode: Mode::NoChroot,
    daemon_args: &[],
    http: true,
};

/// With build users: `guix perform-download`, which runs the download
/// built-in, refuses to run as root, and without build users the C++
/// daemon runs it as root.
const FIXED: Scenario = Scenario {
    name: "fixed",
    script: "build-fixed.scm",
    mode: Mode::BuildUsers,
    daemon_args: &[],
    http: true,
};

/// Without a chroot: a build costs the C++ daemon about 0.2 s in the
/// chroot, and this scenario has 201 of them. The daemon's `--max-jobs`
/// is 2 as well as the client's: guixd's build slots are daemon-wide, so
/// a session's `build-max-jobs` can lower but not raise the daemon's
/// (see the report of issue 4).
const GRAPH: Scenario = Scenario {
    name: "graph",
    script: "build-graph.scm",
    mode: Mode::NoChroot,
    daemon_args: &["--max-jobs=2"],
    http: false,
};

const COMMAND: Scenario = Scenario {
    name: "command",
    script: "build-command.scm",
    mode: Mode::Rootless,
    daemon_args: &[],
    http: false,
};

/// Features the C++ daemon lacks (retries under load, reuse of
/// fixed-output content): guixd alone, without a chroot so that the flaky
/// builder can leave a mark in the shared directory.
const GUIXD_ONLY: Scenario = Scenario {
    name: "guixd-only",
    script: "build-guixd.scm",
    mode: Mode::NoChroot,
    daemon_args: &["--max-build-attempts=2", "--max-jobs=2"],
    http: false,
};

mod guixd_only {
    use super::*;

    #[test]
    fn guixd_threads() {
        interop(&GUIXD_ONLY, Implementation::Guixd(Runtime::Threads));
    }

    #[test]
    fn guixd_smol() {
        interop(&GUIXD_ONLY, Implementation::Guixd(Runtime::Smol));
    }
}

const CONTROL: Scenario = Scenario {
    name: "control",
    script: "build-control.scm",
    mode: Mode::Rootless,
    daemon_args: &[],
    http: false,
};

transcript_scenarios! {
    outputs => OUTPUTS;
    outputs_no_chroot => OUTPUTS_NO_CHROOT;
    failures => FAILURES;
    sandbox => SANDBOX;
    sandbox_build_users => SANDBOX_BUILD_USERS;
    sandbox_no_chroot => SANDBOX_NO_CHROOT;
    fixed => FIXED;
    control => CONTROL;
    command => COMMAND;
    graph => GRAPH;
}

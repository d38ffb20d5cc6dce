//! Garbage-collection scenarios: the real Guix 1.5.0 client and the real
//! `guix gc` command drive a daemon's collector (ops 14 find-roots, 20
//! collect-garbage, 34 optimise-store, 35 verify-store) through the scripts
//! `tests/interop/gc-*.scm`.
//!
//! Each transcript scenario runs
//! - against the C++ `guix-daemon` (`cpp`), which validates the script,
//! - against guixd on each runtime (`guixd_threads`, `guixd_smol`), which
//!   must pass the same checks,
//! - differentially (`differential_threads`, `differential_smol`): the C++
//!   daemon, then guixd, on the same store directory string; their
//!   transcripts (roots, dead and live sets, what `guix gc` printed, which
//!   items survive, error texts) must be equal except for
//!   [`KNOWN_DIFFERENCES`].
//!
//! The transcript scenarios: `roots` (roots of every kind keep their
//! closures; `guix gc --list-dead/--list-live/--references/--referrers/
//! --derivers/-R/-D/-d/-C/-F`; stale indirect roots), `own-roots` (a
//! session's temporary roots against its own requests and others'),
//! `verify` (`--verify`, `--verify=contents` after tampering, a vanished
//! item, `--optimize`), and `keep-*` (`--gc-keep-outputs` and
//! `--gc-keep-derivations`).
//!
//! Two more scenarios run on both runtimes of guixd (and on the C++ daemon
//! to validate them): clients adding items and building while collections
//! run in a loop (`concurrency`; nothing a client holds is deleted, and the
//! longest wait is printed), and a daemon killed with SIGKILL in the middle
//! of a large collection and restarted on the same store (`crash`; every
//! valid item is intact and a new collection finishes).
//!
//! Keeps true: every deliberate difference between guixd and the C++
//! daemon is listed in [`KNOWN_DIFFERENCES`] with its reason; scenarios
//! never depend on one another; no timing is asserted beyond a generous
//! sanity bound (the longest wait is printed).
//!
//! Set `GUIXD_IT_TRANSCRIPTS=DIR` to keep every transcript in DIR.

use crate::support::daemon::Sandbox;
use crate::support::transcript::{
    KnownDifference, Run, assert_reference_passed, assert_same, run_script, transcript_scenarios,
};
use crate::support::{Daemon, DaemonConfig, Implementation, Runtime, Slot};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Every deliberate difference between guixd and the C++ daemon that the
/// transcript scenarios can observe.
const KNOWN_DIFFERENCES: &[KnownDifference] = &[
    // A collection request from a session that holds temporary roots. The
    // C++ daemon's session process tries a non-blocking write lock on
    // every temporary roots file to tell dead sessions from live ones;
    // POSIX locks never conflict within one process, so it takes its own
    // file for a dead session's, says "removing stale temporary roots
    // file" and unlinks it (later temporary roots of that session then go
    // to an unlinked file and protect nothing). guixd knows its own
    // sessions: the session's roots are left out of its own request
    // (the answer is the same) without any message.
    KnownDifference {
        scenario: "own-roots",
        label: "dead-paths, own session: stale file message",
        reason: "guixd does not take a live session's temporary roots for a dead one's",
    },
];

/// One transcript scenario: a script of `tests/interop/`, its arguments
/// and its daemon's options.
struct Scenario {
    name: &'static str,
    script: &'static str,
    args: &'static [&'static str],
    daemon_args: &'static [&'static str],
}

fn config(args: &[&str]) -> DaemonConfig {
    DaemonConfig {
        extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
        sandbox: Sandbox::Disabled,
        private_tmp: true,
        ..DaemonConfig::default()
    }
}

/// Runs `scenario` on a fresh daemon of `implementation` in `slot`.
fn run_scenario(slot: &Slot, scenario: &Scenario, implementation: Implementation) -> Run {
    let daemon = Daemon::start_in(slot, implementation, &config(scenario.daemon_args));
    run_script(&daemon, scenario.script, scenario.name, scenario.args)
}

/// Runs `scenario` against `implementation`; it must pass its checks.
fn interop(scenario: &Scenario, implementation: Implementation) {
    let started = Instant::now();
    let run = run_scenario(&Slot::new(), scenario, implementation);
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
    let reference = run_scenario(&slot, scenario, Implementation::Cpp);
    assert_reference_passed(scenario.name, &reference);
    let candidate = run_scenario(&slot, scenario, Implementation::Guixd(runtime));
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
    eprintln!("[gc] {scenario} / {what}: {:.2}s", elapsed.as_secs_f64());
}

const ROOTS: Scenario = Scenario {
    name: "roots",
    script: "gc-roots.scm",
    args: &[],
    daemon_args: &[],
};

const KEEP_DEFAULT: Scenario = Scenario {
    name: "keep-default",
    script: "gc-keep.scm",
    args: &["default"],
    daemon_args: &[],
};

const KEEP_OUTPUTS: Scenario = Scenario {
    name: "keep-outputs",
    script: "gc-keep.scm",
    args: &["keep-outputs"],
    daemon_args: &["--gc-keep-outputs"],
};

const NO_KEEP_DERIVATIONS: Scenario = Scenario {
    name: "no-keep-derivations",
    script: "gc-keep.scm",
    args: &["no-keep-derivations"],
    daemon_args: &["--gc-keep-derivations=no"],
};

const KEEP_OUTPUTS_NO_DERIVATIONS: Scenario = Scenario {
    name: "keep-outputs-no-derivations",
    script: "gc-keep.scm",
    args: &["keep-outputs-no-derivations"],
    daemon_args: &["--gc-keep-outputs=yes", "--gc-keep-derivations=no"],
};

const VERIFY: Scenario = Scenario {
    name: "verify",
    script: "gc-verify.scm",
    args: &[],
    daemon_args: &["--disable-deduplication"],
};

const OWN_ROOTS: Scenario = Scenario {
    name: "own-roots",
    script: "gc-own-roots.scm",
    args: &[],
    daemon_args: &[],
};

transcript_scenarios! {
    roots => ROOTS;
    verify => VERIFY;
    own_roots => OWN_ROOTS;
    keep_default => KEEP_DEFAULT;
    keep_outputs => KEEP_OUTPUTS;
    no_keep_derivations => NO_KEEP_DERIVATIONS;
    keep_outputs_no_derivations => KEEP_OUTPUTS_NO_DERIVATIONS;
}

// ---- Clients at work while collections run

/// How long the participants of the concurrency scenario run.
const STRESS_SECONDS: u64 = 25;

/// The participants of the concurrency scenario.
const PARTICIPANTS: [&str; 4] = ["client", "client", "client", "collector"];

/// How long after [`STRESS_SECONDS`] participants may still run before
/// the daemon's threads are shown (they are stuck).
const STUCK_GRACE_SECONDS: u64 = 60;

/// The stacks of every thread of `daemon`, from `gdb`, or why there are
/// none.
fn thread_stacks(daemon: &Daemon) -> String {
    let Some(pid) = daemon.pid() else {
        return "(the daemon is not running)".to_owned();
    };
    match std::process::Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt",
        ])
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => format!("(cannot run gdb: {e})"),
    }
}

/// No client operation may wait longer than this during collections: a
/// sanity bound, far above what a collection of this store takes (a few
/// seconds at most on a loaded 2-core machine).
const MAX_WAIT_MS: u64 = 10_000;

/// Three clients add items and build while a collector collects in a loop
/// on `implementation`; nothing a client holds may be deleted.
fn concurrency(implementation: Implementation) {
    let started = Instant::now();
    let daemon = Daemon::start(implementation, &config(&[]));
    let seconds = STRESS_SECONDS.to_string();
    let finished = AtomicUsize::new(0);
    let runs: Vec<(String, Run)> = std::thread::scope(|scope| {
        let handles: Vec<_> = PARTICIPANTS
            .iter()
            .enumerate()
            .map(|(i, role)| {
                let name = format!("{role}{i}");
                let daemon = &daemon;
                let seconds = seconds.as_str();
                let finished = &finished;
                scope.spawn(move || {
                    let run = run_script(daemon, "gc-stress.scm", &name, &[role, &name, seconds]);
                    finished.fetch_add(1, Ordering::SeqCst);
                    (name, run)
                })
            })
            .collect();
        // A participant still running well after its time is up is stuck:
        // show where the daemon's threads are, once, while they still are.
        let daemon = &daemon;
        let finished = &finished;
        scope.spawn(move || {
            let stuck_after = Duration::from_secs(STRESS_SECONDS + STUCK_GRACE_SECONDS);
            while finished.load(Ordering::SeqCst) < PARTICIPANTS.len() {
                if started.elapsed() > stuck_after {
                    eprintln!(
                        "[gc] concurrency / {}: participants still running after {:?}; \
                         the daemon's threads:\n{}",
                        implementation.name(),
                        stuck_after,
                        thread_stacks(daemon)
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        handles
            .into_iter()
            .map(|h| h.join().expect("a participant's thread panicked"))
            .collect()
    });
    report_time("concurrency", &implementation.name(), started.elapsed());
    let mut max_wait_ms = 0;
    for (name, run) in &runs {
        let wait = run.step("max-wait-ms").and_then(|v| v.as_u64());
        eprintln!(
            "[gc] concurrency / {}: {name}: {} {}; longest wait {} ms",
            implementation.name(),
            run.step("client")
                .or_else(|| run.step("collector"))
                .map(|v| v.to_string())
                .unwrap_or_default(),
            if run.passed() { "ok" } else { "FAILED" },
            wait.map(|w| w.to_string())
                .unwrap_or_else(|| "?".to_owned()),
        );
        // The collector's own waits are its collections; only the
        // clients' waits tell how much collections hold others up.
        if name.starts_with("client") {
            max_wait_ms = max_wait_ms.max(wait.unwrap_or(0));
        }
    }
    eprintln!(
        "[gc] concurrency / {}: the longest any client operation waited: {max_wait_ms} ms",
        implementation.name()
    );
    for (name, run) in &runs {
        assert!(
            run.passed(),
            "concurrency: {name} failed against {}\ndaemon log:\n{}",
            run.describe(),
            daemon.log()
        );
    }
    assert!(
        max_wait_ms < MAX_WAIT_MS,
        "concurrency: a client operation waited {max_wait_ms} ms on {}",
        implementation.name()
    );
}

mod concurrency {
    use super::*;

    /// Validates the scenario itself. (Without the sync-with-gc after
    /// making a gcroots link, the C++ daemon deletes some linked items: a
    /// collection scans gcroots, then runs `guix gc --list-busy`, then
    /// reads the temporary roots, so a link made after the scan by a
    /// session that ends before the read protects nothing.)
    #[test]
    fn cpp() {
        concurrency(Implementation::Cpp);
    }

    #[test]
    fn guixd_threads() {
        concurrency(Implementation::Guixd(Runtime::Threads));
    }

    #[test]
    fn guixd_smol() {
        concurrency(Implementation::Guixd(Runtime::Smol));
    }
}

// ---- A daemon killed in the middle of a collection

/// How many dead items the crash scenario collects.
const CRASH_DEAD_ITEMS: usize = 3000;

/// Makes many dead items on `implementation`, starts `guix gc`, kills the
/// daemon (and, for the C++ daemon, its session process doing the
/// collection) with SIGKILL once part of them are gone, restarts it on the
/// same store and checks the store.
fn crash(implementation: Implementation) {
    let started = Instant::now();
    let config = DaemonConfig {
        sandbox: Sandbox::Chroot,
        private_tmp: true,
        ..DaemonConfig::default()
    };
    let mut daemon = Daemon::start(implementation, &config);
    let count = CRASH_DEAD_ITEMS.to_string();
    let made = run_script(&daemon, "gc-crash.scm", "make", &["make", &count]);
    assert!(
        made.passed(),
        "gc-crash.scm make failed: {}",
        made.describe()
    );
    let store = daemon.host_path("store");
    let entries = || std::fs::read_dir(&store).map(|d| d.count()).unwrap_or(0);
    let before = entries();
    assert!(
        before >= CRASH_DEAD_ITEMS,
        "only {before} entries in the store"
    );

    let killed_at = std::thread::scope(|scope| {
        let gc = scope.spawn(|| crate::support::run_guix(&daemon, &["gc"], None));
        // Kill once a tenth of the dead items are gone, while most remain.
        let threshold = before - CRASH_DEAD_ITEMS / 10;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut now = entries();
        while now > threshold && !gc.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
            now = entries();
        }
        assert!(
            !gc.is_finished(),
            "guix gc finished before the daemon could be killed ({now} of {before} entries left): {}",
            gc.join().map(|o| o.describe()).unwrap_or_default()
        );
        kill_all(&daemon);
        let left = entries();
        let out = gc.join().expect("guix gc thread");
        eprintln!(
            "[gc] crash / {}: killed with {left} of {before} store entries left; guix gc: {}",
            implementation.name(),
            out.status
        );
        left
    });
    assert!(
        killed_at > 20 + 1,
        "the collection was over before the kill"
    );
    daemon.restart();
    let check = run_script(&daemon, "gc-crash.scm", "check", &["check"]);
    report_time("crash", &implementation.name(), started.elapsed());
    assert!(
        check.passed(),
        "after a crash in the middle of a collection, {} left a bad store: {}\ndaemon log:\n{}",
        implementation.name(),
        check.describe(),
        check.daemon_log
    );
}

/// Kills every process of `daemon`'s namespace with SIGKILL (the daemon,
/// and the C++ daemon's session processes) and waits until they are gone.
fn kill_all(daemon: &Daemon) {
    let procs = daemon.processes();
    for p in &procs {
        // SAFETY: kill has no memory preconditions; the ids are those of
        // processes of the daemon's namespace seen a moment ago, which
        // only the namespace's reaping shell reaps.
        unsafe {
            libc::kill(p.pid, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.pid().is_some() || procs.iter().any(|p| alive(p.pid)) {
        assert!(Instant::now() < deadline, "the daemon survived SIGKILL");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

mod crash {
    use super::*;

    /// Validates the scenario itself (the session process doing the
    /// collection is killed too).
    #[test]
    fn cpp() {
        crash(Implementation::Cpp);
    }

    #[test]
    fn guixd_threads() {
        crash(Implementation::Guixd(Runtime::Threads));
    }

    #[test]
    fn guixd_smol() {
        crash(Implementation::Guixd(Runtime::Smol));
    }
}

//! Build scenarios driven from here rather than by one script run: two
//! clients building the same derivation at the same time (against the C++
//! daemon and guixd on both runtimes), and guixd killed with SIGKILL while
//! it builds, then restarted (both runtimes).
//!
//! Keeps true: each scenario has its own daemon and directory; a daemon
//! that is killed is restarted on the same store before anything is
//! checked that depends on start-up; the checks are the same for every
//! implementation that runs a scenario.

use crate::builds::{Mode, report_time, start};
use crate::support::daemon::ProcessInfo;
use crate::support::transcript::{Run, run_script};
use crate::support::{Daemon, Implementation, Runtime, Slot};
use serde_json::Value;
use std::fs;
use std::time::{Duration, Instant};

/// Two clients build one derivation at once: both succeed and the
/// builder ran once (it appends a line to a file of the shared directory,
/// which it can reach without a chroot).
fn two_clients(implementation: Implementation) {
    let started = Instant::now();
    let slot = Slot::new();
    let daemon = start(&slot, implementation, Mode::NoChroot, &[]);
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| run_script(&daemon, "build-concurrent.scm", "a", &[]));
        let b = scope.spawn(|| run_script(&daemon, "build-concurrent.scm", "b", &[]));
        (join(a), join(b))
    });
    report_time("two clients", &implementation.name(), started.elapsed());
    for run in [&a, &b] {
        assert!(
            run.passed(),
            "a client failed: {}\ndaemon log:\n{}",
            run.describe(),
            run.daemon_log
        );
    }
    assert_eq!(
        a.step("drv"),
        b.step("drv"),
        "the two clients made different derivations"
    );
    let runs_file = daemon.host_path("work/shared/runs");
    let runs = fs::read_to_string(&runs_file)
        .unwrap_or_else(|e| panic!("read {}: {e}", runs_file.display()));
    // The C++ daemon shows the build to the client that started it; guixd
    // shows a shared build to every client that waits for it.
    let started_count = |run: &Run| {
        run.step("builds started")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    assert_eq!(
        runs.lines().count(),
        1,
        "{}: the builder ran {} times (the clients saw {} and {} builds start)",
        implementation.name(),
        runs.lines().count(),
        started_count(&a),
        started_count(&b)
    );
}

fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    match handle.join() {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e),
    }
}

/// How long builders may take to show up, or to go away.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// The builder processes of `daemon`: those whose command line waits for
/// `go` in the gate (see `build-crash.scm`).
fn builders(daemon: &Daemon) -> Vec<ProcessInfo> {
    daemon
        .processes()
        .into_iter()
        .filter(|p| p.cmdline.contains("gate/go"))
        .collect()
}

/// Lets the builders of `build-crash.scm` finish: creates `go` in the
/// store directory `*-crash-gate` (as root, in a read-only store item
/// that builders see through their bind mount).
fn open_gate(daemon: &Daemon) {
    let store = daemon.host_path("store");
    let gate = entries(&store)
        .into_iter()
        .find(|n| n.ends_with("-crash-gate"))
        .unwrap_or_else(|| panic!("no crash-gate in {}", store.display()));
    let go = store.join(gate).join("go");
    fs::write(&go, b"go\n").unwrap_or_else(|e| panic!("write {}: {e}", go.display()));
}

/// guixd is killed with SIGKILL while two builders run. After a restart:
/// no builder is left, no output is valid or present, no lock file, chroot
/// or build directory of the killed daemon is left once the builds ran
/// again, and they do run again.
fn crash(runtime: Runtime) {
    let started = Instant::now();
    let slot = Slot::new();
    let mut daemon = start(
        &slot,
        Implementation::Guixd(runtime),
        Mode::Rootless,
        &["--max-jobs=2"],
    );
    let before = std::thread::scope(|scope| {
        let client = scope.spawn(|| run_script(&daemon, "build-crash.scm", "before", &["before"]));
        let waiting = Instant::now();
        loop {
            if builders(&daemon).len() >= 2 {
                break;
            }
            assert!(
                waiting.elapsed() < PROCESS_TIMEOUT && !client.is_finished(),
                "the builders did not start; processes: {:?}\ndaemon log:\n{}",
                daemon.processes(),
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The builders run: kill the daemon alone, as a crash would.
        let pid = daemon
            .pid()
            .unwrap_or_else(|| panic!("guixd is not running:\n{}", daemon.log()));
        // SAFETY: kill has no memory preconditions; the process was running
        // a moment ago and is reaped only by our reaping shell after it died.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        join(client)
    });
    assert!(
        matches!(before.step("killed during the builds: outcome"), Some(v) if v.to_string().contains("closed")),
        "the client did not see the connection break: {:?}",
        before.step("killed during the builds: outcome")
    );
    let gone = Instant::now();
    while daemon.pid().is_some() {
        assert!(gone.elapsed() < PROCESS_TIMEOUT, "guixd survived SIGKILL");
        std::thread::sleep(Duration::from_millis(10));
    }
    daemon.restart();
    // Builders that outlived their daemon must be gone once the new one
    // runs (they may take a moment to be noticed and killed).
    let restarted = Instant::now();
    loop {
        let left = builders(&daemon);
        if left.is_empty() {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "builders of the killed daemon are still running after the restart: {left:?}\n\
             their parents: {:?}\ndaemon log:\n{}",
            left.iter().map(|p| parent_of(p.pid)).collect::<Vec<_>>(),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    open_gate(&daemon);
    let after = run_script(&daemon, "build-crash.scm", "after", &["after"]);
    report_time(
        "crash",
        &format!("guixd-{}", runtime.name()),
        started.elapsed(),
    );
    assert!(
        after.passed(),
        "after the restart: {}\ndaemon log:\n{}",
        after.describe(),
        after.daemon_log
    );
    let store = daemon.host_path("store");
    let leftovers: Vec<String> = entries(&store)
        .into_iter()
        .filter(|n| n.ends_with(".lock") || n.ends_with(".chroot") || n.starts_with('.'))
        .filter(|n| n != ".links")
        .collect();
    assert!(
        leftovers.is_empty(),
        "left in the store after the crash and the rebuild: {leftovers:?}"
    );
    let build_dirs: Vec<String> = entries(&daemon.host_path("tmp"))
        .into_iter()
        .filter(|n| n.starts_with("guix-build-"))
        .collect();
    assert!(
        build_dirs.is_empty(),
        "build directories left after the crash and the rebuild: {build_dirs:?}"
    );
    let journal = daemon.host_path("state/guixd-builds");
    if journal.exists() {
        let entries = entries(&journal);
        assert!(
            entries.is_empty(),
            "build journal entries left at the end: {entries:?}"
        );
    }
    let left = builders(&daemon);
    assert!(left.is_empty(), "builders left at the end: {left:?}");
}

/// The parent of process `pid` as `/proc` shows it, for diagnostics.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The names in `dir`.
fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

mod two_clients {
    use super::*;

    #[test]
    fn cpp() {
        two_clients(Implementation::Cpp);
    }

    #[test]
    fn guixd_threads() {
        two_clients(Implementation::Guixd(Runtime::Threads));
    }

    #[test]
    fn guixd_smol() {
        two_clients(Implementation::Guixd(Runtime::Smol));
    }
}

mod crash {
    use super::*;

    #[test]
    fn guixd_threads() {
        crash(Runtime::Threads);
    }

    #[test]
    fn guixd_smol() {
        crash(Runtime::Smol);
    }
}

//! Clients of a daemon under test: Guile scripts run with `guix repl`, and
//! the `guix` command itself, both inside the Guix root.
//!
//! Keeps true: a client sees exactly the daemon's relocation variables, its
//! socket, `LC_ALL=C.UTF-8` and nothing else from this process's
//! environment; scripts are the files of `tests/interop/`, copied once per
//! process into the root; every client run has a deadline.

use super::daemon::Daemon;
use super::keys;
use super::process::{Output, default_timeout, run_in_root};
use super::root::{host, process_dir, workspace_dir};
use std::fs;
use std::sync::OnceLock;

/// Runs the Guile script `script` (a file name in `tests/interop/`) with
/// `guix repl` against `daemon`, passing `args` on its command line.
///
/// Besides the daemon's variables the script sees `GUIXD_IT_DIR` (the
/// daemon's directory, whose `work/` subdirectory is free for scratch
/// files), `GUIXD_IT_KEYS` (see [`keys::dir`]) and, when set here,
/// `GUIXD_IT_TRACE` (print each step on standard error).
pub fn run_scheme(daemon: &Daemon, script: &str, args: &[&str]) -> Output {
    let path = format!("{}/{script}", scripts_dir());
    assert!(host(&path).is_file(), "no script tests/interop/{script}");
    let mut argv = vec!["guix", "repl", "--", path.as_str()];
    argv.extend_from_slice(args);
    run_in_root(&env(daemon), &argv, None, default_timeout())
}

/// Runs `guix ARGS...` against `daemon`, feeding it `stdin`.
pub fn run_guix(daemon: &Daemon, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut argv = vec!["guix"];
    argv.extend_from_slice(args);
    run_in_root(&env(daemon), &argv, stdin, default_timeout())
}

fn env(daemon: &Daemon) -> Vec<(String, String)> {
    let mut env = daemon.client_env();
    env.push(("GUIXD_IT_DIR".to_owned(), daemon.dir().to_owned()));
    env.push(("GUIXD_IT_KEYS".to_owned(), keys::dir().to_owned()));
    env.push(("GUILE_AUTO_COMPILE".to_owned(), "0".to_owned()));
    env.push(("COLUMNS".to_owned(), "80".to_owned()));
    // Scripts print each step as they record it when this is set.
    if std::env::var_os("GUIXD_IT_TRACE").is_some() {
        env.push(("GUIXD_IT_TRACE".to_owned(), "1".to_owned()));
    }
    env
}

/// The directory, inside the root, holding copies of `tests/interop/*`.
fn scripts_dir() -> &'static str {
    static DIR: OnceLock<String> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = format!("{}/scripts", process_dir());
        let dest = host(&dir);
        fs::create_dir_all(&dest).unwrap_or_else(|e| panic!("mkdir {}: {e}", dest.display()));
        let src = workspace_dir().join("tests/interop");
        let entries = fs::read_dir(&src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                fs::copy(&path, dest.join(entry.file_name()))
                    .unwrap_or_else(|e| panic!("copy {}: {e}", path.display()));
            }
        }
        dir
    })
}

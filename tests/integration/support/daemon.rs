//! A daemon under test: guixd on one of its runtimes or the C++
//! `guix-daemon`, running inside the Guix root on a fresh relocated store.
//!
//! Keeps true: every daemon has its own directory `<process dir>/<name>/`
//! holding its store, state, log, database and configuration directories and
//! its socket, so tests run in parallel without sharing anything but the
//! signing keys; the daemon runs in its own PID namespace, so dropping the
//! handle ends it together with every process it started (session
//! processes, agents) and then removes its directory; a daemon that does not
//! come up is a panic that shows its log.

use super::bins::{CPP_DAEMON, Runtime, guixd};
use super::keys;
use super::process::die_with_parent;
use super::root::{host, process_dir, remove_tree, root, unique_name};
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which daemon to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Implementation {
    /// The C++ `guix-daemon` 1.5.0, the reference.
    Cpp,
    /// guixd, built for one runtime.
    Guixd(Runtime),
}

impl Implementation {
    /// A short name for messages: `cpp`, `guixd-threads`, `guixd-smol`.
    pub fn name(self) -> String {
        match self {
            Implementation::Cpp => "cpp".to_owned(),
            Implementation::Guixd(rt) => format!("guixd-{}", rt.name()),
        }
    }

    fn program(self) -> &'static str {
        match self {
            Implementation::Cpp => CPP_DAEMON,
            Implementation::Guixd(rt) => guixd(rt),
        }
    }
}

/// Where substitutes may come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Substitutes {
    /// `--no-substitutes`: clients cannot turn them on.
    Disabled,
    /// `--substitute-urls=file://<dir>/substitutes`, an empty directory
    /// created for this daemon: substitutes are on, but there are none.
    EmptyFileCache,
}

/// How to start a daemon. The options every daemon gets are
/// `--listen=<dir>/socket` and `--disable-chroot` (nothing here builds).
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub substitutes: Substitutes,
    /// More command-line options, appended as they are.
    pub extra_args: Vec<String>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            substitutes: Substitutes::Disabled,
            extra_args: Vec::new(),
        }
    }
}

/// A name for a daemon directory, reusable by several daemons one after the
/// other so that they see the same store directory string (the store
/// directory is part of every store path's hash).
#[derive(Clone, Debug)]
pub struct Slot(String);

impl Slot {
    /// A name no other slot of this process has.
    pub fn new() -> Slot {
        Slot(unique_name("d"))
    }

    /// The slot's directory as seen inside the root.
    pub fn dir(&self) -> String {
        format!("{}/{}", process_dir(), self.0)
    }
}

/// A running daemon. Dropping it kills it and removes its directory.
pub struct Daemon {
    implementation: Implementation,
    dir: String,
    /// The `unshare` process whose child is the namespace's first process,
    /// the daemon itself.
    unshare: Child,
}

/// How long a daemon may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Daemon {
    /// Starts `implementation` on a fresh store in a directory of its own.
    pub fn start(implementation: Implementation, config: &DaemonConfig) -> Daemon {
        Daemon::start_in(&Slot::new(), implementation, config)
    }

    /// Starts `implementation` on a fresh store in `slot`'s directory, which
    /// must not be in use by another daemon.
    pub fn start_in(slot: &Slot, implementation: Implementation, config: &DaemonConfig) -> Daemon {
        let program = implementation.program();
        let dir = slot.dir();
        let host_dir = host(&dir);
        assert!(!host_dir.exists(), "{} is still in use", host_dir.display());
        for sub in [
            "store", "state", "log", "db", "conf", "home", "cache", "work",
        ] {
            let d = host_dir.join(sub);
            fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        keys::install(&host_dir.join("conf"));

        let mut args = vec![
            format!("--listen={dir}/socket"),
            "--disable-chroot".to_owned(),
        ];
        match config.substitutes {
            Substitutes::Disabled => args.push("--no-substitutes".to_owned()),
            Substitutes::EmptyFileCache => {
                fs::create_dir_all(host_dir.join("substitutes"))
                    .unwrap_or_else(|e| panic!("mkdir substitutes: {e}"));
                args.push(format!("--substitute-urls=file://{dir}/substitutes"));
            }
        }
        args.extend(config.extra_args.iter().cloned());

        let log = fs::File::create(host_dir.join("daemon.log"))
            .unwrap_or_else(|e| panic!("create daemon.log: {e}"));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("dup daemon.log: {e}"));
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--kill-child", "--", "chroot"])
            .arg(root())
            .arg("env")
            .arg("-i")
            .args(store_env(&dir).iter().map(|(k, v)| format!("{k}={v}")))
            .arg(program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        die_with_parent(&mut cmd);
        let unshare = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start unshare for {program}: {e}"));
        let mut daemon = Daemon {
            implementation,
            dir,
            unshare,
        };
        daemon.wait_for_socket();
        daemon
    }

    /// Which daemon this is.
    pub fn implementation(&self) -> Implementation {
        self.implementation
    }

    /// The daemon's directory inside the root.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// The host path of `sub` inside the daemon's directory.
    pub fn host_path(&self, sub: &str) -> PathBuf {
        host(&format!("{}/{sub}", self.dir))
    }

    /// The store directory (the same string inside and outside the daemon).
    pub fn store_dir(&self) -> String {
        format!("{}/store", self.dir)
    }

    /// The socket clients connect to, as a path inside the root.
    pub fn socket(&self) -> String {
        format!("{}/socket", self.dir)
    }

    /// The environment a client of this daemon needs, besides `PATH`.
    pub fn client_env(&self) -> Vec<(String, String)> {
        let mut env = store_env(&self.dir);
        env.push(("GUIX_DAEMON_SOCKET".to_owned(), self.socket()));
        env
    }

    /// Everything the daemon wrote to its stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read(self.host_path("daemon.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn wait_for_socket(&mut self) {
        let socket = self.host_path("socket");
        let started = Instant::now();
        loop {
            // The file appears at `bind`; only a connection shows that the
            // daemon also called `listen`. The probe connection closes at
            // once, before the greeting, which every daemon must survive.
            if socket.exists() && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.unshare.try_wait() {
                panic!(
                    "{} exited ({status}) before creating {}; its log:\n{}",
                    self.implementation.name(),
                    self.socket(),
                    self.log()
                );
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "{} did not create {} within {START_TIMEOUT:?}; its log:\n{}",
                self.implementation.name(),
                self.socket(),
                self.log()
            );
            // There is nothing to block on until the socket exists, so
            // poll briefly.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        // Killing the namespace's first process makes the kernel kill every
        // other process in the namespace; `unshare` waits for it, so once
        // `unshare` is reaped nothing of the daemon runs any more.
        if let Some(init) = first_child(self.unshare.id()) {
            // SAFETY: kill has no memory preconditions; `init` is the child
            // of our own `unshare` process, which has not been reaped yet, so
            // the id cannot have been reused.
            unsafe {
                libc::kill(init, libc::SIGKILL);
            }
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- log of {} in {} ----\n{}",
                self.implementation.name(),
                self.dir,
                self.log()
            );
        }
        remove_tree(&host(&self.dir));
    }
}

/// The variables that relocate the store of the daemon in `dir`, shared by
/// the daemon and its clients.
fn store_env(dir: &str) -> Vec<(String, String)> {
    [
        ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin".to_owned()),
        ("HOME", format!("{dir}/home")),
        ("XDG_CACHE_HOME", format!("{dir}/cache")),
        ("LC_ALL", "C.UTF-8".to_owned()),
        ("NIX_STORE_DIR", format!("{dir}/store")),
        ("GUIX_STATE_DIRECTORY", format!("{dir}/state")),
        ("GUIX_LOG_DIRECTORY", format!("{dir}/log")),
        ("GUIX_DATABASE_DIRECTORY", format!("{dir}/db")),
        ("GUIX_CONFIGURATION_DIRECTORY", format!("{dir}/conf")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The first child of process `pid`, if it has one.
fn first_child(pid: u32) -> Option<i32> {
    let list = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    list.split_whitespace().next()?.parse().ok()
}

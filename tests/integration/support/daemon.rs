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

/// How builders are isolated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sandbox {
    /// `--disable-chroot`; the daemon is started with `chroot ROOT`.
    Disabled,
    /// The chroot sandbox (the daemons' default). The daemon runs in a
    /// mount namespace of its own whose root is the Guix root, entered
    /// with `pivot_root` (a `chroot`ed process may not create user
    /// namespaces, and the C++ daemon needs `/` to be a mount point), with
    /// a `/proc` of its PID namespace. The daemon is not the namespace's
    /// first process (a shell that only reaps is), so it can be killed and
    /// restarted while its builders live on: see [`Daemon::kill`] and
    /// [`Daemon::restart`].
    Chroot,
}

/// The group and users [`DaemonConfig::build_users`] adds to the root.
pub const BUILD_USERS_GROUP: &str = "guixbuild";

/// How to start a daemon. The options every daemon gets are
/// `--listen=<dir>/socket` and, by default, `--disable-chroot`.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub substitutes: Substitutes,
    /// More command-line options, appended as they are.
    pub extra_args: Vec<String>,
    pub sandbox: Sandbox,
    /// `--build-users-group=guixbuild`, with the group and its users
    /// `guixbuilder01..04` added to the root's `/etc/group` and
    /// `/etc/passwd` (see [`super::build_users`]).
    pub build_users: bool,
    /// `TMPDIR=<dir>/tmp` for the daemon, so its build directories are its
    /// own rather than in the root's shared `/tmp`.
    pub private_tmp: bool,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            substitutes: Substitutes::Disabled,
            extra_args: Vec::new(),
            sandbox: Sandbox::Disabled,
            build_users: false,
            private_tmp: false,
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
    /// The `unshare` process whose child is the namespace's first process:
    /// the daemon itself, or with [`Sandbox::Chroot`] the reaping shell.
    unshare: Child,
    sandbox: Sandbox,
    /// The daemon's command line inside the root, and its environment, to
    /// restart it.
    argv: Vec<String>,
    env: Vec<(String, String)>,
    /// The `nsenter` process of the last [`Daemon::restart`], whose child
    /// is the daemon.
    nsenter: Option<Child>,
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

        let mut args = vec![format!("--listen={dir}/socket")];
        if config.sandbox == Sandbox::Disabled {
            args.push("--disable-chroot".to_owned());
        }
        match config.substitutes {
            Substitutes::Disabled => args.push("--no-substitutes".to_owned()),
            Substitutes::EmptyFileCache => {
                fs::create_dir_all(host_dir.join("substitutes"))
                    .unwrap_or_else(|e| panic!("mkdir substitutes: {e}"));
                args.push(format!("--substitute-urls=file://{dir}/substitutes"));
            }
        }
        if config.build_users {
            super::build_users::ensure();
            args.push(format!("--build-users-group={BUILD_USERS_GROUP}"));
        }
        args.extend(config.extra_args.iter().cloned());
        let mut env = store_env(&dir);
        if config.private_tmp {
            let tmp = host_dir.join("tmp");
            fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("mkdir {}: {e}", tmp.display()));
            env.push(("TMPDIR".to_owned(), format!("{dir}/tmp")));
        }
        let mut argv = vec![program.to_owned()];
        argv.extend(args);

        let log = fs::File::create(host_dir.join("daemon.log"))
            .unwrap_or_else(|e| panic!("create daemon.log: {e}"));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("dup daemon.log: {e}"));
        let mut cmd = Command::new("unshare");
        match config.sandbox {
            Sandbox::Disabled => {
                cmd.args(["--pid", "--fork", "--kill-child", "--", "chroot"])
                    .arg(root())
                    .arg("env")
                    .arg("-i")
                    .args(env.iter().map(|(k, v)| format!("{k}={v}")))
                    .args(&argv);
            }
            Sandbox::Chroot => {
                let old_root = format!("{dir}/old-root");
                fs::create_dir_all(host(&old_root))
                    .unwrap_or_else(|e| panic!("mkdir {old_root}: {e}"));
                cmd.args(["--pid", "--fork", "--kill-child"])
                    .arg(format!("--mount-proc={}", root().join("proc").display()))
                    .args(["--", "/bin/sh", "-c", PIVOT_SCRIPT, "guixd-it-init"])
                    .arg(root())
                    .arg(&old_root)
                    .arg("/usr/bin/env")
                    .arg("-i")
                    .args(env.iter().map(|(k, v)| format!("{k}={v}")))
                    .args(&argv);
            }
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        die_with_parent(&mut cmd);
        let unshare = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start unshare for {program}: {e}"));
        let mut daemon = Daemon {
            implementation,
            dir,
            unshare,
            sandbox: config.sandbox,
            argv,
            env,
            nsenter: None,
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

    /// The host process id of the daemon, while it runs.
    pub fn pid(&self) -> Option<i32> {
        let pid = match (&self.nsenter, self.sandbox) {
            (Some(nsenter), _) => first_child(nsenter.id()),
            (None, Sandbox::Disabled) => first_child(self.unshare.id()),
            // The daemon is the reaping shell's first child; once it is
            // gone, the shell's children are `sleep` and orphans (guixd's
            // spawner helper among them, on its way out).
            (None, Sandbox::Chroot) => first_child(self.unshare.id())
                .and_then(|init| children(init).into_iter().next())
                .filter(|&pid| {
                    !self.exited_at_start()
                        && !["sleep", "guixd-spawner"].contains(&comm(pid).as_str())
                }),
        };
        pid.filter(|&pid| is_running(pid))
    }

    /// Kills the daemon process alone with SIGKILL, as a crash would, and
    /// waits until it is gone. Only with [`Sandbox::Chroot`]: the
    /// processes it started (builders, helpers) stay where the crash left
    /// them, in the daemon's namespaces.
    pub fn kill(&mut self) {
        assert!(
            self.sandbox == Sandbox::Chroot,
            "only a daemon with Sandbox::Chroot can be killed alone"
        );
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.implementation.name()));
        // SAFETY: kill has no memory preconditions. The id is that of a
        // process we saw running a moment ago whose parent (our reaping
        // shell, or our own `nsenter`) reaps it only after it died.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let started = Instant::now();
        while is_running(pid) {
            assert!(
                started.elapsed() < START_TIMEOUT,
                "process {pid} survived SIGKILL for {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(mut nsenter) = self.nsenter.take() {
            let _ = nsenter.wait();
        }
    }

    /// Starts the daemon again, with the same command line and environment,
    /// in the namespaces of the one [`Daemon::kill`] killed, on the same
    /// store; returns when it accepts connections.
    pub fn restart(&mut self) {
        assert!(
            self.pid().is_none(),
            "{} is still running",
            self.implementation.name()
        );
        let init = first_child(self.unshare.id())
            .unwrap_or_else(|| panic!("the namespace of {} is gone", self.dir));
        let log = fs::OpenOptions::new()
            .append(true)
            .open(self.host_path("daemon.log"))
            .unwrap_or_else(|e| panic!("open daemon.log: {e}"));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("dup daemon.log: {e}"));
        let mut cmd = Command::new("nsenter");
        // Entering the mount namespace also makes its root (the Guix root)
        // the process's root without a `chroot`.
        cmd.arg(format!("--target={init}"))
            .args(["--pid", "--mount", "--", "/usr/bin/env", "-i"])
            .args(self.env.iter().map(|(k, v)| format!("{k}={v}")))
            .args(&self.argv)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        die_with_parent(&mut cmd);
        self.nsenter = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start nsenter: {e}")),
        );
        self.wait_for_socket();
    }

    /// Every process of the daemon's PID namespace but the reaping shell
    /// and its `sleep`: the daemon and what it started, including orphans
    /// of a killed daemon. Zombies are left out. Only with
    /// [`Sandbox::Chroot`].
    pub fn processes(&self) -> Vec<ProcessInfo> {
        assert!(self.sandbox == Sandbox::Chroot);
        let mut out = Vec::new();
        let Some(init) = first_child(self.unshare.id()) else {
            return out;
        };
        let mut todo: Vec<i32> = children(init)
            .into_iter()
            .filter(|&p| comm(p) != "sleep")
            .collect();
        if let Some(nsenter) = &self.nsenter {
            todo.extend(first_child(nsenter.id()));
        }
        while let Some(pid) = todo.pop() {
            if !is_running(pid) {
                continue;
            }
            todo.extend(children(pid));
            let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .trim_end_matches('\0')
                        .replace('\0', " ")
                })
                .unwrap_or_default();
            out.push(ProcessInfo {
                pid,
                comm: comm(pid),
                cmdline,
            });
        }
        out.sort_by_key(|p| p.pid);
        out
    }

    /// Whether the reaping shell of [`Sandbox::Chroot`] saw the first
    /// daemon process exit.
    fn exited_at_start(&self) -> bool {
        self.host_path("daemon.exit").exists()
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
            let exited_at_start = self.exited_at_start();
            let exited = match (&mut self.nsenter, self.sandbox) {
                (Some(nsenter), _) => nsenter.try_wait().ok().flatten().map(|s| s.to_string()),
                (None, Sandbox::Chroot) if exited_at_start => Some(
                    fs::read_to_string(self.host_path("daemon.exit"))
                        .map(|s| format!("exit status {}", s.trim()))
                        .unwrap_or_default(),
                ),
                _ => None,
            };
            let exited = exited.or_else(|| {
                self.unshare
                    .try_wait()
                    .ok()
                    .flatten()
                    .map(|s| s.to_string())
            });
            if let Some(status) = exited {
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
        if let Some(mut nsenter) = self.nsenter.take() {
            let _ = nsenter.kill();
            let _ = nsenter.wait();
        }
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

/// A process of a daemon's namespace, as seen from this machine.
#[derive(Clone, Debug)]
pub struct ProcessInfo {
    pub pid: i32,
    /// The command name (`/proc/PID/comm`).
    pub comm: String,
    /// The arguments, joined by spaces.
    pub cmdline: String,
}

/// The script the first process of a [`Sandbox::Chroot`] daemon's
/// namespaces runs: `ROOT OLD-ROOT COMMAND...`. It makes the root the root
/// of the mount namespace (`OLD-ROOT` is a directory inside it, as seen
/// from inside, where the old root goes before it is detached), runs
/// COMMAND (the daemon), writes its exit status to `daemon.exit` next to
/// `OLD-ROOT`, and then stays, reaping the processes the daemon left.
const PIVOT_SCRIPT: &str = r#"root=$1 old=$2
shift 2
cd "$root" && pivot_root . ".$old" && cd / && /bin/busybox umount -l "$old" || exit 1
"$@" &
wait $!
echo "$?" > "${old%/*}/daemon.exit"
while :; do sleep 3600 & wait $!; done"#;

/// The children of every thread of process `pid`.
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(list) = fs::read_to_string(task.path().join("children")) {
            out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// The command name of process `pid` (empty if it is gone).
fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default()
}

/// Whether process `pid` exists and is not a zombie.
fn is_running(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and
        // may itself hold spaces and parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

//! The benchmark's surroundings: the Guix root, the daemon binaries, and
//! daemons started inside the root on fresh stores.
//!
//! Keeps true: everything the benchmark creates in the root lives under
//! `/tmp/guixd-bench/p<pid>/` (directories of processes that are gone are
//! removed first); each daemon runs in its own PID namespace
//! (`unshare --pid --fork --kill-child -- chroot ROOT ...`), so dropping a
//! [`Daemon`] kills it with every process it started and removes its
//! directory; paths handed to programs are those seen inside the root and
//! [`host`] alone turns them into paths on this machine.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The C++ daemon inside the root.
pub const CPP_DAEMON: &str = "/usr/bin/guix-daemon";

/// A daemon implementation under measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Implementation {
    /// The C++ `guix-daemon` 1.5.0, the reference.
    Cpp,
    /// guixd with `runtime-threads` (the default feature).
    GuixdThreads,
    /// guixd with `runtime-smol`.
    GuixdSmol,
}

impl Implementation {
    /// Every implementation, the reference first.
    pub const ALL: [Implementation; 3] = [
        Implementation::Cpp,
        Implementation::GuixdThreads,
        Implementation::GuixdSmol,
    ];

    /// The name used in tables, JSON and file names.
    pub fn name(self) -> &'static str {
        match self {
            Implementation::Cpp => "cpp",
            Implementation::GuixdThreads => "guixd-threads",
            Implementation::GuixdSmol => "guixd-smol",
        }
    }

    /// Whether this is one of guixd's runtimes.
    pub fn is_guixd(self) -> bool {
        self != Implementation::Cpp
    }
}

/// The Guix root (env `GUIXD_GUIX_ROOT`, default
/// `/var/cache/guixd/guix-root`), checked once.
pub fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::var_os("GUIXD_GUIX_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/guixd/guix-root"));
        for needed in [
            "usr/bin/guix-daemon",
            "usr/bin/guix",
            "proc/self",
            "bin/busybox",
        ] {
            assert!(
                root.join(needed).exists(),
                "the Guix root {} has no {needed}; run tests/support/guix-root.sh (as root)",
                root.display()
            );
        }
        root
    })
}

/// The host path of `inside`, a path as seen inside the root.
pub fn host(inside: &str) -> PathBuf {
    root().join(inside.trim_start_matches('/'))
}

/// This process's directory inside the root, created on first use.
pub fn bench_dir() -> &'static str {
    static DIR: OnceLock<String> = OnceLock::new();
    DIR.get_or_init(|| {
        let top = host("/tmp/guixd-bench");
        fs::create_dir_all(&top).unwrap_or_else(|e| panic!("mkdir {}: {e}", top.display()));
        if let Ok(entries) = fs::read_dir(&top) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let gone = name
                    .to_str()
                    .and_then(|n| n.strip_prefix('p'))
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
                if gone {
                    remove_tree(&entry.path());
                }
            }
        }
        let dir = format!("/tmp/guixd-bench/p{}", std::process::id());
        let host_dir = host(&dir);
        remove_tree(&host_dir);
        fs::create_dir_all(&host_dir)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", host_dir.display()));
        dir
    })
}

/// A fresh name under [`bench_dir`], unique in this process.
pub fn unique_dir(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}/{prefix}{n}", bench_dir())
}

/// Removes a tree that may hold read-only store items.
pub fn remove_tree(path: &Path) {
    make_writable(path);
    if let Err(e) = fs::remove_dir_all(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("bench: cannot remove {}: {e}", path.display());
        }
    }
}

/// Builds guixd for both runtimes in release mode (unless
/// `GUIXD_BIN_THREADS` / `GUIXD_BIN_SMOL` name ready binaries) and links
/// them into [`bench_dir`]; returns their paths inside the root.
pub fn install_guixd_binaries() -> (String, String) {
    let threads = built("GUIXD_BIN_THREADS", None);
    let smol = built("GUIXD_BIN_SMOL", Some("target/runtime-smol"));
    let bin_dir = format!("{}/bin", bench_dir());
    fs::create_dir_all(host(&bin_dir)).unwrap_or_else(|e| panic!("mkdir {bin_dir}: {e}"));
    let mut out = Vec::new();
    for (name, bin) in [("guixd-threads", threads), ("guixd-smol", smol)] {
        let inside = format!("{bin_dir}/{name}");
        let dest = host(&inside);
        let _ = fs::remove_file(&dest);
        if fs::hard_link(&bin, &dest).is_err() {
            fs::copy(&bin, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", bin.display()));
        }
        out.push(inside);
    }
    (out.remove(0), out.remove(0))
}

/// What to start a daemon with.
#[derive(Clone, Debug, Default)]
pub struct DaemonOptions {
    /// Extra command-line options, appended as they are.
    pub extra_args: Vec<String>,
    /// A directory to reuse (its store and database are kept); by default
    /// a fresh one.
    pub dir: Option<String>,
}

/// A running daemon on its own store. Dropping it kills it and, unless
/// [`Daemon::keep_dir`] was called, removes its directory.
pub struct Daemon {
    implementation: Implementation,
    dir: String,
    unshare: Child,
    keep_dir: bool,
    /// When the daemon was spawned.
    pub spawned_at: Instant,
}

/// How long a daemon may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(120);

impl Daemon {
    /// Starts `implementation` (whose program inside the root is
    /// `program`) and returns once its socket accepts connections.
    pub fn start(implementation: Implementation, program: &str, options: &DaemonOptions) -> Daemon {
        let daemon = Daemon::spawn(implementation, program, options);
        daemon.wait_for_socket();
        daemon
    }

    /// Starts the daemon and returns at once; see [`Daemon::wait_for_socket`].
    pub fn spawn(implementation: Implementation, program: &str, options: &DaemonOptions) -> Daemon {
        let dir = options
            .dir
            .clone()
            .unwrap_or_else(|| unique_dir(implementation.name()));
        let host_dir = host(&dir);
        for sub in [
            "store", "state", "log", "db", "conf", "home", "cache", "work", "tmp",
        ] {
            let d = host_dir.join(sub);
            fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        let _ = fs::remove_file(host_dir.join("socket"));
        let mut argv = vec![
            program.to_owned(),
            format!("--listen={dir}/socket"),
            "--disable-chroot".to_owned(),
            "--no-substitutes".to_owned(),
        ];
        argv.extend(options.extra_args.iter().cloned());
        let mut env = store_env(&dir);
        env.push(("TMPDIR".to_owned(), format!("{dir}/tmp")));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(host_dir.join("daemon.log"))
            .unwrap_or_else(|e| panic!("create daemon.log: {e}"));
        let log2 = log.try_clone().unwrap_or_else(|e| panic!("dup: {e}"));
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--kill-child", "--", "chroot"])
            .arg(root())
            .arg("env")
            .arg("-i")
            .args(env.iter().map(|(k, v)| format!("{k}={v}")))
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        die_with_parent(&mut cmd);
        let spawned_at = Instant::now();
        let unshare = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start unshare for {program}: {e}"));
        Daemon {
            implementation,
            dir,
            unshare,
            keep_dir: false,
            spawned_at,
        }
    }

    /// Waits until the socket accepts connections; panics with the log if
    /// the daemon exits or does not come up in time.
    pub fn wait_for_socket(&self) {
        let socket = self.host_socket();
        loop {
            if socket.exists() && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return;
            }
            if self.pid().is_none() && self.spawned_at.elapsed() > Duration::from_secs(2) {
                panic!(
                    "{} exited before creating its socket; its log:\n{}",
                    self.implementation.name(),
                    self.log()
                );
            }
            assert!(
                self.spawned_at.elapsed() < START_TIMEOUT,
                "{} did not come up within {START_TIMEOUT:?}; its log:\n{}",
                self.implementation.name(),
                self.log()
            );
            // Nothing to block on until the socket exists.
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn implementation(&self) -> Implementation {
        self.implementation
    }

    /// The daemon's directory inside the root.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// The store directory (the same string inside and outside the root).
    pub fn store_dir(&self) -> String {
        format!("{}/store", self.dir)
    }

    /// The socket as a path on this machine, for the load client.
    pub fn host_socket(&self) -> PathBuf {
        host(&format!("{}/socket", self.dir))
    }

    /// The environment a Guix client of this daemon needs inside the root.
    pub fn client_env(&self) -> Vec<(String, String)> {
        let mut env = store_env(&self.dir);
        env.push((
            "GUIX_DAEMON_SOCKET".to_owned(),
            format!("{}/socket", self.dir),
        ));
        env
    }

    /// Everything the daemon wrote to stdout and stderr.
    pub fn log(&self) -> String {
        fs::read(host(&format!("{}/daemon.log", self.dir)))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The daemon process (the PID namespace's first process).
    pub fn pid(&self) -> Option<i32> {
        first_child(self.unshare.id() as i32).filter(|&p| is_running(p))
    }

    /// Every live process of the daemon's namespace: the daemon and what
    /// it started (the C++ daemon's per-connection processes, guixd's
    /// spawner helper).
    pub fn processes(&self) -> Vec<i32> {
        let mut out = Vec::new();
        let mut todo: Vec<i32> = self.pid().into_iter().collect();
        while let Some(pid) = todo.pop() {
            if !is_running(pid) {
                continue;
            }
            todo.extend(children(pid));
            out.push(pid);
        }
        out
    }

    /// Keep the directory when dropped (to start another daemon on it).
    pub fn keep_dir(&mut self) {
        self.keep_dir = true;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(init) = first_child(self.unshare.id() as i32) {
            // SAFETY: kill has no memory preconditions; `init` is the child
            // of our own unshare process, not reaped yet, so its id cannot
            // have been reused.
            unsafe {
                libc::kill(init, libc::SIGKILL);
            }
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        if !self.keep_dir {
            remove_tree(&host(&self.dir));
        }
    }
}

/// The environment relocating the store and state to `dir`.
pub fn store_env(dir: &str) -> Vec<(String, String)> {
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

/// Runs `argv` inside the root with exactly `env`; returns its status
/// and output, killing it after `timeout`.
pub fn run_in_root(
    env: &[(String, String)],
    argv: &[&str],
    timeout: Duration,
) -> (bool, String, String) {
    let mut cmd = Command::new("timeout");
    cmd.arg("--signal=KILL")
        .arg(format!("{}", timeout.as_secs().max(1)))
        .arg("chroot")
        .arg(root())
        .arg("env")
        .arg("-i")
        .args(env.iter().map(|(k, v)| format!("{k}={v}")))
        .args(argv)
        .stdin(Stdio::null());
    die_with_parent(&mut cmd);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Raises this process's RLIMIT_NOFILE soft limit to its hard limit
/// (daemons started later inherit it); returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into `lim`, a valid rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    // Root may raise the hard limit too, up to fs.nr_open.
    let nr_open = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(lim.rlim_max);
    let want = nr_open.min(1 << 20).max(lim.rlim_max);
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: want,
    };
    // SAFETY: setrlimit reads only `raised`, a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return want;
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    lim.rlim_max
}

/// Writes every dirty page of the machine back to disk (`sync(2)`).
pub fn sync_disks() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Proportional set size of `pids` together, in bytes (from
/// `/proc/PID/smaps_rollup`), and their resident set size together.
pub fn memory_bytes(pids: &[i32]) -> (u64, u64) {
    let mut pss = 0;
    let mut rss = 0;
    for pid in pids {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
            continue;
        };
        for line in text.lines() {
            let kb = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
                    * 1024
            };
            if line.starts_with("Pss:") {
                pss += kb(line);
            } else if line.starts_with("Rss:") {
                rss += kb(line);
            }
        }
    }
    (pss, rss)
}

fn built(var: &str, target_dir: Option<&str>) -> PathBuf {
    if let Some(given) = std::env::var_os(var) {
        let path = PathBuf::from(given);
        assert!(path.is_file(), "{var}={} is not a file", path.display());
        return path;
    }
    let ws = workspace_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ws)
        .args(["build", "--release", "-p", "guixd"]);
    let target = match target_dir {
        None => ws.join("target"),
        Some(dir) => {
            cmd.args(["--no-default-features", "--features", "runtime-smol"])
                .arg("--target-dir")
                .arg(ws.join(dir));
            ws.join(dir)
        }
    };
    cmd.env_remove("CARGO_TARGET_DIR");
    eprintln!("bench: building guixd ({var})...");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
    assert!(status.success(), "building guixd failed ({status})");
    let bin = target.join("release/guixd");
    assert!(
        bin.is_file(),
        "{} is missing after the build",
        bin.display()
    );
    bin
}

fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

fn make_writable(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            make_writable(&entry.path());
        }
    }
}

fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn first_child(pid: i32) -> Option<i32> {
    let list = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    list.split_whitespace().next()?.parse().ok()
}

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

fn is_running(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

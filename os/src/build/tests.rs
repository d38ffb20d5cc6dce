//! Builds on the real kernel: a static busybox from the Guix root, copied
//! into a scratch store, is the builder; what it prints is what it sees.
//!
//! These tests need root (mounts, namespaces, pivot_root), as the daemon
//! does. Without a `guixbuild`-like group on the machine (and the host's
//! users are never changed here), the chroot runs in user namespace mode:
//! guest uid 30001, gid 30000.

use super::*;
use crate::child::{kill_child, wait_exit};
use guixd_core::build_plan::Program;
use guixd_core::config::Dirs;
use guixd_core::store_path::StoreDir;
use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::OnceLock;

/// The static busybox every test builds with.
const BUSYBOX: &str = "/var/cache/guixd/guix-root/bin/busybox";

const HASH_A: &str = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a";
const HASH_B: &str = "1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b";
const HASH_C: &str = "2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c";

/// How long a test waits for a builder before calling it hung.
const BUILD_WAIT: Duration = Duration::from_secs(60);

/// One spawner for the whole test process, as the daemon has one. It is
/// forked from a thread that never ends: builders die with the thread
/// that is their parent (their parent-death signal), and test threads
/// come and go.
pub(super) fn shared_spawner() -> Arc<Spawner> {
    static SPAWNER: OnceLock<Arc<Spawner>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let spawner = Spawner::start().expect("starting the spawner helper");
                tx.send(Arc::new(spawner))
                    .expect("the test waits for the spawner");
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("the spawner thread sends the spawner")
        })
        .clone()
}

pub(super) fn plan_for_unit_tests() -> BuildPlan {
    let store = StoreDir::new("/gnu/store").unwrap();
    BuildPlan {
        drv_path: store
            .parse_path(&format!("/gnu/store/{HASH_B}-x.drv"))
            .unwrap(),
        program: Program::Builder(format!("/gnu/store/{HASH_A}-sh/bin/sh")),
        args: vec![],
        env: vec![],
        impure_env_vars: vec![],
        build_dir_files: vec![],
        chroot: true,
        inputs: BTreeSet::new(),
        extra_chroot_dirs: vec![],
        fixed_output: false,
        build_users_group: String::new(),
        platform: "x86_64-linux".into(),
        impersonate_linux_26: false,
        use_host_loopback: true,
        print_build_trace: false,
    }
}

/// A scratch store holding busybox, and a `Builds` using it.
struct Fixture {
    dir: PathBuf,
    store: StoreDir,
    builds: Builds,
    /// `<store>/<hash>-busybox`, a directory with `bin/busybox` and
    /// `bin/sh -> busybox`.
    item: StorePath,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = sandbox::delete_tree(&self.dir);
    }
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("guixd-os-build-{tag}-{}", std::process::id()));
        let _ = sandbox::delete_tree(&dir);
        let store_path = dir.join("store");
        for sub in ["store", "state", "tmp", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let store = StoreDir::new(store_path.to_str().unwrap()).unwrap();
        let item = store
            .parse_path(&format!("{}/{HASH_A}-busybox", store.as_str()))
            .unwrap();
        let bin = Path::new(item.as_str()).join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", bin.join("sh")).unwrap();
        let config = OsConfig {
            dirs: Dirs {
                store: store.clone(),
                state: dir.join("state"),
                log: dir.join("log"),
                db: dir.join("state/db"),
                conf: dir.join("etc"),
                guix_program: dir.join("guix"),
            },
            settings: Default::default(),
            uid: 0,
            gid: 0,
        };
        let mut builds = Builds::new(&config);
        builds.host.tmp_root = dir.join("tmp");
        builds.spawner = Some(shared_spawner());
        Fixture {
            dir,
            store,
            builds,
            item,
        }
    }

    fn busybox(&self) -> String {
        format!("{}/bin/busybox", self.item.as_str())
    }

    fn drv(&self, name: &str) -> StorePath {
        self.store
            .parse_path(&format!("{}/{HASH_B}-{name}.drv", self.store.as_str()))
            .unwrap()
    }

    /// A plan running `script` with busybox's sh, `$B` being busybox.
    fn plan(&self, name: &str, script: &str) -> BuildPlan {
        let out = format!("{}/{HASH_C}-{name}", self.store.as_str());
        BuildPlan {
            drv_path: self.drv(name),
            program: Program::Builder(format!("{}/bin/sh", self.item.as_str())),
            args: vec!["-c".into(), script.into()],
            env: vec![
                ("B".into(), self.busybox()),
                ("HOME".into(), "/homeless-shelter".into()),
                ("NIX_BUILD_CORES".into(), "0".into()),
                ("NIX_STORE".into(), self.store.as_str().into()),
                ("PATH".into(), "/path-not-set".into()),
                ("out".into(), out),
            ],
            impure_env_vars: vec![],
            build_dir_files: vec![("graph".into(), b"closure\n".to_vec())],
            chroot: true,
            inputs: [self.item.clone()].into_iter().collect(),
            extra_chroot_dirs: vec![],
            fixed_output: false,
            build_users_group: String::new(),
            platform: "x86_64-linux".into(),
            impersonate_linux_26: false,
            use_host_loopback: true,
            print_build_trace: false,
        }
    }
}

/// Reads `fd` (non-blocking) until end-of-file.
fn read_to_eof(fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let deadline = Instant::now() + BUILD_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the builder did not finish: {}",
            String::from_utf8_lossy(&out)
        );
        wait_readable(fd.as_fd(), left);
        let mut buf = [0u8; 4096];
        // SAFETY: reads into a valid buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => return out,
            n if n > 0 => out.extend_from_slice(&buf[..n as usize]),
            _ => {
                let e = io::Error::last_os_error();
                assert!(
                    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)),
                    "{e}"
                );
            }
        }
    }
}

/// Waits for the child behind `pidfd` to exit and reaps it.
fn reap(pidfd: &OwnedFd) -> ExitStatus {
    assert!(
        wait_readable(pidfd.as_fd(), BUILD_WAIT),
        "the builder did not exit"
    );
    wait_exit(pidfd).unwrap().expect("exited")
}

/// Prepares, runs to the end and finishes `plan`; the exit status and the
/// log.
fn run(f: &Fixture, id: u64, plan: BuildPlan) -> (ExitStatus, String) {
    let build = BuildId(id);
    f.builds.prepare(build, plan).unwrap();
    let child = f.builds.spawn(build).unwrap();
    let log = read_to_eof(&child.log);
    let status = reap(&child.pidfd);
    f.builds.finish(build, false, None).unwrap();
    (status, String::from_utf8_lossy(&log).into_owned())
}

/// The value printed on the line `KEY=VALUE` of `log`.
fn field<'a>(log: &'a str, key: &str) -> &'a str {
    log.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no `{key}=' in the log:\n{log}"))
}

#[test]
fn the_builder_sees_the_sandbox_in_user_namespace_mode() {
    let f = Fixture::new("view");
    let script = r#"
        echo "uid=$($B id -u)"
        echo "gid=$($B id -g)"
        echo "root=$($B ls / | $B tr '\n' ' ')"
        echo "passwd=$($B cat /etc/passwd | $B tr '\n' '|')"
        echo "group=$($B cat /etc/group | $B tr '\n' '|')"
        echo "hosts=$($B cat /etc/hosts | $B tr '\n' '|')"
        echo "hostname=$($B hostname)"
        echo "domain=$($B cat /proc/sys/kernel/domainname)"
        echo "pwd=$(pwd)"
        echo "env=$($B env | $B cut -d= -f1 | $B sort | $B tr '\n' ' ')"
        echo "tmpdir=$TMPDIR"
        echo "graph=$($B cat graph)"
        echo "pid=$$"
        echo "netdev=$($B tail -n +3 /proc/net/dev | $B cut -d: -f1 | $B tr -d ' ' | $B tr '\n' ' ')"
        echo "link=$($B ip -o link show lo | $B cut -d' ' -f3)"
        echo "dev=$($B ls /dev | $B tr '\n' ' ')"
        echo "mode=$($B stat -c %a /)"
        echo "tmpmode=$($B stat -c %a /tmp)"
        $B touch $B.new 2>&1 | $B sed 's/^/input: /'
        $B touch /tmp/made && echo "tmp=writable"
        $B touch /made-in-root 2>&1 | $B sed 's/^/root: /'
        $B mount -o remount,rw,bind ${B%/bin/busybox} ${B%/bin/busybox} 2>&1 | $B sed 's/^/remount: /'
        $B touch $B.new2 2>&1 | $B sed 's/^/input-after-remount: /'
        echo "uidmap=$($B cat /proc/self/uid_map | $B tr -s ' ')"
        echo "oom=$($B cat /proc/self/oom_score_adj)"
        echo "persona=$($B cat /proc/self/personality)"
        $B grep -E '^(CapAmb|SigIgn|SigBlk):' /proc/self/status | $B tr -d '\t' | $B tr : =
        echo "session=$($B cut -d' ' -f6 /proc/1/stat)"
        echo "fds=$($B ls /proc/self/fd | $B tr '\n' ' ')"
        $B touch $NIX_STORE/made-in-store && echo "store=writable"
        echo "stdin=$($B cat)"
        $B nc -w 1 192.0.2.1 80 </dev/null 2>&1 | $B sed 's/^/net: /'
        echo to-stderr >&2
        exit 3
    "#;
    let (status, log) = run(&f, 1, f.plan("probe", script));
    assert_eq!(status.code(), Some(3), "{log}");
    assert_eq!(field(&log, "uid"), "30001");
    assert_eq!(field(&log, "gid"), "30000");
    // The store's first component is `tmp` here (the scratch store lives
    // under /tmp), hence no extra entry.
    assert_eq!(field(&log, "root"), "dev etc proc tmp ");
    assert_eq!(
        field(&log, "passwd"),
        "nixbld:x:30001:30000:Nix build user:/:/noshell|nobody:x:65534:65534:Nobody:/:/noshell|"
    );
    assert_eq!(field(&log, "group"), "nixbld:!:30000:|");
    assert_eq!(field(&log, "hosts"), "127.0.0.1 localhost|::1 localhost|");
    assert_eq!(field(&log, "hostname"), "localhost");
    assert_eq!(field(&log, "domain"), "(none)");
    assert_eq!(field(&log, "pwd"), "/tmp/guix-build-probe.drv-0");
    assert_eq!(field(&log, "tmpdir"), "/tmp/guix-build-probe.drv-0");
    assert_eq!(
        field(&log, "env"),
        "B HOME NIX_BUILD_CORES NIX_BUILD_TOP NIX_STORE PATH PWD SHLVL TEMP TEMPDIR TMP TMPDIR out "
    );
    assert_eq!(field(&log, "graph"), "closure");
    assert_eq!(field(&log, "pid"), "1");
    assert_eq!(field(&log, "netdev"), "lo ");
    assert!(field(&log, "link").contains("UP"), "{log}");
    assert_eq!(field(&log, "mode"), "555");
    assert_eq!(field(&log, "tmpmode"), "1777");
    let dev = field(&log, "dev");
    for entry in [
        "fd", "full", "null", "pts", "ptmx", "random", "shm", "stderr", "stdin", "stdout", "tty",
        "urandom", "zero",
    ] {
        assert!(
            dev.split(' ').any(|e| e == entry),
            "/dev lacks {entry}: {dev}"
        );
    }
    assert!(
        log.contains("input: touch: ") && log.contains("Read-only file system"),
        "{log}"
    );
    assert_eq!(field(&log, "tmp"), "writable");
    // `/` is 0555, as the C++ daemon's builders see it.
    assert!(
        log.contains("root: touch: /made-in-root: Permission denied"),
        "{log}"
    );
    // The mounts are locked: the input cannot be made writable again.
    assert!(log.contains("remount: mount: permission denied"), "{log}");
    assert!(log.contains("input-after-remount: touch: "), "{log}");
    assert_eq!(field(&log, "uidmap"), " 30001 30001 1");
    assert_eq!(field(&log, "oom"), "1000");
    assert_eq!(field(&log, "persona"), "00040000");
    assert_eq!(field(&log, "CapAmb"), "0000000000000000");
    assert_eq!(field(&log, "SigIgn"), "0000000000000000");
    assert_eq!(field(&log, "SigBlk"), "0000000000000000");
    assert_eq!(field(&log, "session"), "1");
    // `ls` sees its standard streams (stdout being the command
    // substitution's pipe) and the directory it reads, nothing inherited.
    assert_eq!(field(&log, "fds"), "0 1 2 3 ");
    assert_eq!(field(&log, "store"), "writable");
    assert_eq!(field(&log, "stdin"), "");
    assert!(
        log.contains("net: ") && log.contains("Network is unreachable"),
        "{log}"
    );
    // Standard error goes to the same pipe, in order.
    assert!(log.ends_with("to-stderr\n"), "{log}");
    // The setup-success newline was consumed, not logged.
    assert!(log.starts_with("uid="), "{log}");
    // The chroot and the build directory are gone.
    assert!(!Path::new(&format!("{}.chroot", f.drv("probe").as_str())).exists());
    assert_eq!(std::fs::read_dir(f.dir.join("tmp")).unwrap().count(), 0);
}

#[test]
fn a_builder_outside_the_store_fails_in_the_exec_phase() {
    let f = Fixture::new("outside");
    let mut plan = f.plan("outside", "");
    plan.program = Program::Builder("/dev/null".into());
    let (status, log) = run(&f, 1, plan);
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        log,
        "while setting up the child process: in phase exec: derivation builder `/dev/null' is outside the store\n"
    );

    let mut plan = f.plan("bin-sh", "");
    plan.program = Program::Builder("/bin/sh".into());
    let (status, log) = run(&f, 2, plan);
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        log,
        "while setting up the child process: in phase exec: getting status of `/bin': No such file or directory\n"
    );
}

#[test]
fn a_failure_before_exec_is_the_spawn_error() {
    let f = Fixture::new("setup-error");
    let mut plan = f.plan("setup-error", "echo never");
    plan.extra_chroot_dirs = vec![("/opt/x".into(), "/nonexistent-guixd-source".into())];
    let build = BuildId(1);
    f.builds.prepare(build, plan).unwrap();
    let err = f.builds.spawn(build).unwrap_err();
    assert_eq!(
        err.message,
        "while setting up the child process: in phase mountIntoChroot: getting attributes of path `/nonexistent-guixd-source': No such file or directory"
    );
    f.builds.finish(build, false, None).unwrap();
    assert_eq!(std::fs::read_dir(f.dir.join("tmp")).unwrap().count(), 0);
}

#[test]
fn without_chroot_the_builder_sees_the_host() {
    let f = Fixture::new("plain");
    let mut plan = f.plan(
        "plain",
        r#"
        echo "uid=$($B id -u)"
        echo "pwd=$(pwd)"
        echo "tmpdir=$TMPDIR"
        echo "sid=$($B ps -o pid,sid 2>/dev/null | $B grep -c .)"
        echo "self=$$ $($B cut -d' ' -f6 /proc/$$/stat)"
        echo "graph=$($B cat graph)"
        echo "hostname-differs=$([ "$($B hostname)" = localhost ] && echo no || echo yes)"
    "#,
    );
    plan.chroot = false;
    let (status, log) = run(&f, 1, plan);
    assert!(status.success(), "{log}");
    let dir = f.dir.join("tmp/guix-build-plain.drv-0");
    let dir = dir.to_str().unwrap();
    assert_eq!(field(&log, "uid"), "0");
    assert_eq!(field(&log, "pwd"), dir);
    assert_eq!(field(&log, "tmpdir"), dir);
    assert_eq!(field(&log, "graph"), "closure");
    // The builder leads its own session.
    let self_line = field(&log, "self");
    let (pid, sid) = self_line.split_once(' ').unwrap();
    assert_eq!(pid, sid, "{log}");
    assert!(!Path::new(dir).exists());
}

#[test]
fn killing_a_chroot_build_kills_all_its_processes() {
    let f = Fixture::new("kill");
    let build = BuildId(1);
    f.builds
        .prepare(build, f.plan("kill", "$B sleep 1000 & $B sleep 1000"))
        .unwrap();
    let child = f.builds.spawn(build).unwrap();
    kill_child(&child.pidfd, libc::SIGKILL).unwrap();
    // The background sleep holds the log pipe too: end-of-file means it
    // died with the builder.
    let log = read_to_eof(&child.log);
    assert!(log.is_empty());
    assert_eq!(reap(&child.pidfd).signal(), Some(libc::SIGKILL));
    f.builds.finish(build, false, None).unwrap();
}

#[test]
fn finishing_a_build_without_chroot_kills_its_process_group() {
    let f = Fixture::new("kill-plain");
    let build = BuildId(1);
    let mut plan = f.plan("kill-plain", "$B sleep 1000 & echo started; $B sleep 1000");
    plan.chroot = false;
    f.builds.prepare(build, plan).unwrap();
    let child = f.builds.spawn(build).unwrap();
    // Once the builder said so, the background sleep runs.
    let mut log = Vec::new();
    while !log.ends_with(b"started\n") {
        assert!(wait_readable(child.log.as_fd(), BUILD_WAIT));
        let mut buf = [0u8; 64];
        let n = rustix::io::read(&child.log, &mut buf).unwrap();
        assert!(n > 0, "end of log before `started'");
        log.extend_from_slice(&buf[..n]);
    }
    f.builds.finish(build, false, None).unwrap();
    // The background sleep holds the log pipe: end-of-file means it died.
    assert!(read_to_eof(&child.log).is_empty());
    assert_eq!(reap(&child.pidfd).signal(), Some(libc::SIGKILL));
}

#[test]
fn a_kept_build_directory_stays() {
    let f = Fixture::new("keep");
    let build = BuildId(1);
    f.builds
        .prepare(build, f.plan("keep", "echo x > file; exit 1"))
        .unwrap();
    let child = f.builds.spawn(build).unwrap();
    read_to_eof(&child.log);
    assert_eq!(reap(&child.pidfd).code(), Some(1));
    let info = f.builds.info(build).unwrap();
    assert_eq!(info.build_dir, f.dir.join("tmp/guix-build-keep.drv-0"));
    assert_eq!(info.work_dir, info.build_dir.join("top"));
    f.builds.finish(build, true, Some(1234)).unwrap();
    // Handed over: the `top` level is gone, the builder's tree is the
    // build directory now, owned by the client.
    let file = info.build_dir.join("file");
    assert_eq!(std::fs::read(&file).unwrap(), b"x\n");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(file.metadata().unwrap().uid(), 1234);
    assert!(!Path::new(&format!("{}.chroot", f.drv("keep").as_str())).exists());
    assert!(f.builds.info(build).is_none());
}

#[test]
fn fixed_output_builds_get_no_network_without_slirp4netns() {
    let f = Fixture::new("fod");
    let mut plan = f.plan(
        "fod",
        r#"
        echo "link=$($B ip -o link show lo | $B cut -d' ' -f3)"
        echo "hosts-bound=$([ -e /etc/hosts ] && echo yes || echo no)"
        echo "impure=$http_proxy"
    "#,
    );
    plan.fixed_output = true;
    plan.impure_env_vars = vec!["http_proxy".into()];
    let build = BuildId(1);
    let notes = match f.builds.prepare(build, plan).unwrap() {
        EffectOutput::BuildPrepared { notes, .. } => notes,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        notes,
        vec!["`/usr/bin/slirp4netns' can't be found in PATH, network access disabled".to_owned()]
    );
    let child = f.builds.spawn(build).unwrap();
    let log = String::from_utf8(read_to_eof(&child.log)).unwrap();
    assert!(reap(&child.pidfd).success(), "{log}");
    f.builds.finish(build, false, None).unwrap();
    // The host loopback may be used, so the sandbox's `lo` stays down.
    assert!(!field(&log, "link").contains("UP"), "{log}");
    let host_hosts = Path::new("/etc/hosts").exists();
    assert_eq!(
        field(&log, "hosts-bound"),
        if host_hosts { "yes" } else { "no" }
    );
    // Not set in the test process: empty, but present.
    assert_eq!(
        field(&log, "impure"),
        std::env::var("http_proxy").unwrap_or_default()
    );
}

#[test]
fn builtin_builders_run_guix_perform_download_with_the_daemons_environment() {
    let f = Fixture::new("builtin");
    // `guix` is a script run by busybox's sh, printing what it got.
    let guix = f.dir.join("guix");
    std::fs::write(
        &guix,
        format!(
            "#!{} sh\necho \"args=$*\"\necho \"store=$NIX_STORE\"\necho \"options=$_NIX_OPTIONS\"\necho \"out=${{out-unset}}\"\necho \"pwd=$PWD\"\n",
            f.busybox()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&guix, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = f
        .store
        .parse_path(&format!("{}/{HASH_C}-download", f.store.as_str()))
        .unwrap();
    let mut plan = f.plan("download", "");
    plan.program = Program::Builtin {
        name: "download".into(),
        output: out.clone(),
    };
    plan.env.push(("_NIX_OPTIONS".into(), "a=b".into()));
    let (status, log) = run(&f, 1, plan);
    assert!(status.success(), "{log}");
    assert_eq!(
        field(&log, "args"),
        format!(
            "perform-download {} {}",
            f.drv("download").as_str(),
            out.as_str()
        )
    );
    assert_eq!(field(&log, "store"), f.store.as_str());
    assert_eq!(field(&log, "options"), "a=b");
    // The derivation's variables are not exported to built-in builders.
    assert_eq!(field(&log, "out"), "unset");

    let mut plan = f.plan("unknown", "");
    plan.program = Program::Builtin {
        name: "builtin:frobnicate".into(),
        output: out,
    };
    let (status, log) = run(&f, 2, plan);
    assert_eq!(status.code(), Some(1));
    assert_eq!(log, "error: unsupported builtin function 'frobnicate'\n");
}

#[test]
fn prepare_refuses_what_the_daemon_refuses() {
    let f = Fixture::new("refuse");
    let mut plan = f.plan("relative", "");
    plan.program = Program::Builder("sh".into());
    let err = f.builds.prepare(BuildId(1), plan).unwrap_err();
    assert_eq!(err.message, "invalid file name `sh'");
    let err = f
        .builds
        .prepare(BuildId(2), {
            let mut p = f.plan("group", "");
            p.build_users_group = "guixd-no-such-group".into();
            p
        })
        .unwrap_err();
    assert_eq!(
        err.message,
        "the group `guixd-no-such-group' specified in `build-users-group' does not exist"
    );
    // Nothing was left behind, and unknown builds finish quietly.
    assert_eq!(std::fs::read_dir(f.dir.join("tmp")).unwrap().count(), 0);
    f.builds.finish(BuildId(2), false, None).unwrap();
}

#[test]
fn build_directories_take_the_first_free_number() {
    let f = Fixture::new("numbers");
    std::fs::create_dir(f.dir.join("tmp/guix-build-n.drv-0")).unwrap();
    f.builds.prepare(BuildId(1), f.plan("n", "")).unwrap();
    f.builds
        .prepare(BuildId(2), {
            let mut p = f.plan("n", "");
            p.chroot = false;
            p
        })
        .unwrap();
    let one = f.builds.info(BuildId(1)).unwrap();
    let two = f.builds.info(BuildId(2)).unwrap();
    assert_eq!(one.build_dir, f.dir.join("tmp/guix-build-n.drv-1"));
    assert_eq!(two.build_dir, f.dir.join("tmp/guix-build-n.drv-2"));
    use std::os::unix::fs::PermissionsExt;
    let mode = one.build_dir.metadata().unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700);
    assert_eq!(
        one.chroot_root,
        Some(PathBuf::from(format!("{}.chroot/top", f.drv("n").as_str())))
    );
    assert!(f.builds.prepare(BuildId(1), f.plan("n", "")).is_err());
    f.builds.finish(BuildId(1), false, None).unwrap();
    f.builds.finish(BuildId(2), false, None).unwrap();
    assert!(!one.build_dir.exists() && !two.build_dir.exists());
}

#[test]
fn build_directories_of_dead_daemons_are_removed_at_start() {
    let f = Fixture::new("journal");
    f.builds.prepare(BuildId(1), f.plan("j", "")).unwrap();
    let live = f.builds.info(BuildId(1)).unwrap().build_dir;
    let journal = journal_dir(&f.dir.join("state"));
    // The journal names the directory of the prepared build.
    let ours = journal.join(format!("{}-1", std::process::id()));
    assert_eq!(
        std::fs::read(&ours).unwrap(),
        live.as_os_str().as_encoded_bytes()
    );
    // Entries of a process that is gone (pid 0 is never a process we can
    // see in /proc), one of them for a directory that is not a build
    // directory, which is never deleted.
    let stale = f.dir.join("tmp/guix-build-old.drv-0");
    std::fs::create_dir_all(stale.join("sub")).unwrap();
    std::fs::write(journal.join("0-7"), stale.as_os_str().as_encoded_bytes()).unwrap();
    let other = f.dir.join("tmp/not-a-build-dir");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(journal.join("0-8"), other.as_os_str().as_encoded_bytes()).unwrap();
    // The daemon starts again (on the same state directory) while this
    // process still runs: its own entries count as an earlier process's.
    let _ = Builds::new(&OsConfig {
        dirs: Dirs {
            store: f.store.clone(),
            state: f.dir.join("state"),
            log: f.dir.join("log"),
            db: f.dir.join("state/db"),
            conf: f.dir.join("etc"),
            guix_program: f.dir.join("guix"),
        },
        settings: Default::default(),
        uid: 0,
        gid: 0,
    });
    assert!(!stale.exists(), "the stale build directory is still there");
    assert!(
        other.exists(),
        "a directory that is not a build directory went"
    );
    assert!(
        !live.exists(),
        "an entry with this process's id is an earlier process's"
    );
    assert_eq!(std::fs::read_dir(&journal).unwrap().count(), 0);
    // Finishing forgets the entry (already gone here) without error.
    f.builds.finish(BuildId(1), false, None).unwrap();
}

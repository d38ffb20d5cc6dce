//! The builder's side of a spawn: the setup phases that run in the freshly
//! cloned child, in the C++ daemon's order and with its phase names, ending
//! in `exec` (spec 03 §2 and §3.2).
//!
//! Keeps true:
//! - this code runs only in a child cloned by the single-threaded spawner
//!   helper, so allocating and formatting are safe here; it never returns:
//!   the child either executes its program or exits with status 1;
//! - a failure before the `setupSuccess` phase is written to the log pipe
//!   as one line, `while setting up the child process: in phase PHASE:
//!   MSG`, and nothing else is written before it, so the daemon reads that
//!   line as the error; after `setupSuccess` (which writes one `"\n"`),
//!   everything is ordinary build output;
//! - the messages are the C++ daemon's, errno text included;
//! - the program runs with SIGKILL as its parent-death signal, so it dies
//!   with the daemon's main thread (the parent of every builder, through
//!   `CLONE_PARENT`): a daemon killed in the middle of builds leaves no
//!   builder behind (in chroot mode the builder is process 1 of its PID
//!   namespace, so the whole build goes with it). A daemon that died while
//!   the child was still setting up (before it could ask for the signal)
//!   is noticed after asking: the child's parent, read from `/proc`, is no
//!   longer the daemon, and the child exits instead of running the program.

use super::spec::{Chroot, Exec, SpawnSpec};
use crate::locks::strerror;
use std::borrow::Cow;
use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

/// `personality(2)` values the spawn description is built from.
pub(crate) const PER_LINUX: u64 = 0;
pub(crate) const PER_LINUX32: u64 = 0x0008;
pub(crate) const UNAME26: u64 = 0x0020000;
pub(crate) const ADDR_NO_RANDOMIZE: u64 = 0x0040000;

/// How many symbolic links resolving the builder's path may follow.
const SYMLINK_FOLLOW_MAX: u32 = 1024;

/// Runs the setup phases of `spec` in this (child) process and executes the
/// builder. `log` is the write end of the log pipe and `setup` the child's
/// end of the user-namespace synchronisation socket. Every other inherited
/// descriptor is closed first.
/// `daemon` is the daemon's pid as `/proc` shows it to the spawner (see
/// [`parent_in_proc`]), when it could be read.
pub(crate) fn run_child(
    spec: &SpawnSpec,
    log: RawFd,
    setup: Option<RawFd>,
    daemon: Option<libc::pid_t>,
) -> ! {
    reset_signals();
    let mut keep = vec![0, 1, 2, log];
    keep.extend(setup);
    close_all_except(&mut keep);
    // Opened now, while `/proc` is still the spawner's: the chroot phases
    // mount another one, whose PID namespace does not show the daemon.
    let lineage = daemon.and_then(|daemon| Some((open_self_stat()?, daemon)));

    let mut child = Child {
        spec,
        log,
        setup,
        err_fd: log,
        lineage,
    };
    let phases: &[(&str, Phase)] = if spec.chroot.is_some() {
        &CLONE_PHASES
    } else {
        &BASIC_PHASES
    };
    for (name, action) in phases {
        if let Err(message) = action(&mut child) {
            let line = format!("while setting up the child process: in phase {name}: {message}\n");
            write_all(child.err_fd, line.as_bytes());
            // SAFETY: `_exit` never returns and skips atexit handlers, which
            // belong to the spawner.
            unsafe { libc::_exit(1) };
        }
    }
    // The last phase, `exec`, only comes back with an error.
    // SAFETY: as above.
    unsafe { libc::_exit(1) }
}

/// `canonPath(path, true)`: the absolute path with `.`, `..`, repeated
/// slashes and every symbolic link resolved, in the calling process's view
/// of the file system; the C++ daemon's messages on failure.
pub(crate) fn canon_path(path: &[u8]) -> Result<Vec<u8>, String> {
    if path.first() != Some(&b'/') {
        return Err(format!("not an absolute path: `{}'", show(path)));
    }
    let mut rest: Vec<u8> = path.to_vec();
    let mut i = 0;
    let mut s: Vec<u8> = Vec::new();
    let mut followed = 0;
    loop {
        while i < rest.len() && rest[i] == b'/' {
            i += 1;
        }
        if i == rest.len() {
            break;
        }
        let tail = &rest[i..];
        if tail[0] == b'.' && (tail.len() == 1 || tail[1] == b'/') {
            i += 1;
        } else if tail.starts_with(b"..") && (tail.len() == 2 || tail[2] == b'/') {
            if let Some(p) = s.iter().rposition(|&c| c == b'/') {
                s.truncate(p);
            }
            i += 2;
        } else {
            s.push(b'/');
            while i < rest.len() && rest[i] != b'/' {
                s.push(rest[i]);
                i += 1;
            }
            let st =
                lstat(&s).map_err(|e| sys_msg(format!("getting status of `{}'", show(&s)), &e))?;
            if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                followed += 1;
                if followed >= SYMLINK_FOLLOW_MAX {
                    return Err(format!(
                        "infinite symlink recursion in path `{}'",
                        show(path)
                    ));
                }
                let target = read_link(&s)?;
                let mut next = abs_path(&target, &dir_of(&s));
                next.extend_from_slice(&rest[i..]);
                rest = next;
                i = 0;
                s.clear();
            }
        }
    }
    if s.is_empty() {
        s.push(b'/');
    }
    Ok(s)
}

/// `isInStore`: `path` is strictly below `store_dir`.
pub(crate) fn is_in_store(path: &[u8], store_dir: &[u8]) -> bool {
    path.first() == Some(&b'/')
        && path.starts_with(store_dir)
        && path.len() >= store_dir.len() + 2
        && path[store_dir.len()] == b'/'
}

type Phase = fn(&mut Child<'_>) -> Result<(), String>;

/// The phases with namespaces and a chroot (`getCloneSpawnPhases` plus
/// `clearRootWritePerms`, with the daemon's exec). The slirp4netns phases
/// (`setupTap`, `waitForSlirpReady`, `enableRouteLocalnet`) are absent:
/// fixed-output builds get an isolated network here.
const CLONE_PHASES: [(&str, Phase); 28] = [
    ("reset_writeToStderr", nothing),
    ("usernsInitSync", userns_init_sync),
    ("usernsSetIDs", nothing),
    ("restoreAffinity", nothing),
    ("setsid", set_sid),
    ("earlyIOSetup", early_io_setup),
    ("dropAmbientCapabilities", drop_ambient_capabilities),
    ("initLoopback", init_loopback),
    ("setHostAndDomain", set_host_and_domain),
    ("makeFilesystemsPrivate", make_filesystems_private),
    (
        "makeChrootSeparateFilesystem",
        make_chroot_separate_filesystem,
    ),
    ("mountIntoChroot", mount_into_chroot),
    ("mountProc", mount_proc),
    ("mountDevshm", mount_devshm),
    ("mountDevpts", mount_devpts),
    ("chroot", pivot_root),
    ("clearRootWritePerms", clear_root_write_perms),
    ("chdir", change_dir),
    ("closeMostFDs", close_most_fds),
    ("setPersonality", set_personality),
    ("oomSacrifice", oom_sacrifice),
    ("lockMounts", lock_mounts),
    ("setIDs", set_ids),
    ("setNoNewPrivs", nothing),
    ("addSeccompFilter", nothing),
    ("restoreSIGPIPE", restore_sigpipe),
    ("setupSuccess", setup_success),
    ("exec", exec),
];

/// The phases without namespaces (`getBasicSpawnPhases`): `--disable-chroot`
/// and built-in builders.
const BASIC_PHASES: [(&str, Phase); 16] = [
    ("reset_writeToStderr", nothing),
    ("restoreAffinity", nothing),
    ("setsid", set_sid),
    ("earlyIOSetup", early_io_setup),
    ("dropAmbientCapabilities", drop_ambient_capabilities),
    ("chroot", nothing),
    ("chdir", change_dir),
    ("closeMostFDs", close_most_fds),
    ("setPersonality", set_personality),
    ("oomSacrifice", oom_sacrifice),
    ("setIDs", set_ids),
    ("setNoNewPrivs", nothing),
    ("addSeccompFilter", nothing),
    ("restoreSIGPIPE", restore_sigpipe),
    ("setupSuccess", setup_success),
    ("exec", exec),
];

struct Child<'a> {
    spec: &'a SpawnSpec,
    log: RawFd,
    setup: Option<RawFd>,
    /// Where a setup failure is written: the log pipe, which becomes
    /// standard error in `earlyIOSetup`.
    err_fd: RawFd,
    /// This process's `/proc/<pid>/stat` (close-on-exec) and the daemon's
    /// pid as that file names the parent: how `exec` tells whether the
    /// daemon is still alive once the parent-death signal is set.
    lineage: Option<(RawFd, libc::pid_t)>,
}

impl Child<'_> {
    /// The chroot part; the clone phases only run with one.
    fn chroot(&self) -> Result<&Chroot, String> {
        self.spec
            .chroot
            .as_ref()
            .ok_or_else(|| "no chroot in the spawn description".to_owned())
    }
}

/// Phases the C++ daemon has but that have nothing to do here
/// (`reset_writeToStderr`, `restoreAffinity`: the spawner never changes
/// them; `usernsSetIDs`, `setNoNewPrivs`, `addSeccompFilter`: off for
/// builders).
fn nothing(_: &mut Child<'_>) -> Result<(), String> {
    Ok(())
}

fn userns_init_sync(c: &mut Child<'_>) -> Result<(), String> {
    if !c.chroot()?.user_namespace {
        return Ok(());
    }
    let fd = c.setup.ok_or_else(|| "no setup socket".to_owned())?;
    wait_for_message(fd, b"go\n")
}

fn set_sid(_: &mut Child<'_>) -> Result<(), String> {
    // SAFETY: setsid takes no arguments.
    if unsafe { libc::setsid() } == -1 {
        return Err(last_sys_msg("creating a new session"));
    }
    Ok(())
}

fn early_io_setup(c: &mut Child<'_>) -> Result<(), String> {
    // SAFETY: dup2 on descriptors this process owns.
    if unsafe { libc::dup2(c.log, libc::STDOUT_FILENO) } == -1 {
        return Err(last_sys_msg("cannot dup2 log fd into stdout fd"));
    }
    // SAFETY: as above.
    if unsafe { libc::dup2(c.log, libc::STDERR_FILENO) } == -1 {
        return Err(last_sys_msg("cannot dup2 log fd into stderr fd"));
    }
    c.err_fd = libc::STDERR_FILENO;
    // Read-write, as the C++ daemon opens it.
    // SAFETY: a NUL-terminated literal path.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
    if fd == -1 {
        return Err(last_sys_msg("cannot open `/dev/null'"));
    }
    // SAFETY: dup2 and close on descriptors this process owns.
    unsafe {
        if libc::dup2(fd, libc::STDIN_FILENO) == -1 {
            let msg = last_sys_msg("cannot dup2 fd into stdin fd");
            libc::close(fd);
            return Err(msg);
        }
        if fd != libc::STDIN_FILENO {
            libc::close(fd);
        }
    }
    Ok(())
}

fn drop_ambient_capabilities(_: &mut Child<'_>) -> Result<(), String> {
    // The C++ daemon ignores the result too: kernels without ambient
    // capabilities have none to drop.
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    Ok(())
}

fn init_loopback(c: &mut Child<'_>) -> Result<(), String> {
    if !c.chroot()?.init_loopback {
        return Ok(());
    }
    // SAFETY: socket takes integers only.
    let fd = unsafe { libc::socket(libc::PF_INET, libc::SOCK_DGRAM, libc::IPPROTO_IP) };
    if fd == -1 {
        return Err(last_sys_msg("cannot open IP socket"));
    }
    // SAFETY: `ifreq` is a plain C struct (a name and a union of plain
    // data); all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // The flags are small constants that fit the C short of the union.
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the `ifreq` we pass; `fd` is ours.
    let r = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) };
    let result = if r == -1 {
        Err(last_sys_msg("cannot set loopback interface flags"))
    } else {
        Ok(())
    };
    // SAFETY: closes our own socket.
    unsafe { libc::close(fd) };
    result
}

fn set_host_and_domain(_: &mut Child<'_>) -> Result<(), String> {
    let host = b"localhost";
    let domain = b"(none)";
    // SAFETY: pointers and lengths of byte literals.
    if unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) } == -1 {
        return Err(last_sys_msg("cannot set host name"));
    }
    // SAFETY: as above.
    if unsafe { libc::setdomainname(domain.as_ptr().cast(), domain.len()) } == -1 {
        return Err(last_sys_msg("cannot set domain name"));
    }
    Ok(())
}

fn make_filesystems_private(_: &mut Child<'_>) -> Result<(), String> {
    mount(None, b"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(|e| sys_msg("unable to make `/' private mount", &e))
}

fn make_chroot_separate_filesystem(c: &mut Child<'_>) -> Result<(), String> {
    let root = &c.chroot()?.root;
    mount(Some(root), root, None, libc::MS_BIND, None)
        .map_err(|e| sys_msg(format!("unable to bind mount `{}'", show(root)), &e))
}

fn mount_into_chroot(c: &mut Child<'_>) -> Result<(), String> {
    let chroot = c.chroot()?;
    for m in &chroot.mounts {
        let mut target = chroot.root.clone();
        target.extend_from_slice(&m.target);
        bind_mount(&m.source, &target, m.read_only)?;
    }
    Ok(())
}

fn mount_proc(c: &mut Child<'_>) -> Result<(), String> {
    mount_fresh(&c.chroot()?.root, b"/proc", b"proc", None)
}

fn mount_devshm(c: &mut Child<'_>) -> Result<(), String> {
    mount_fresh(&c.chroot()?.root, b"/dev/shm", b"tmpfs", None)
}

fn mount_devpts(c: &mut Child<'_>) -> Result<(), String> {
    let chroot = c.chroot()?;
    if !chroot.mount_devpts {
        return Ok(());
    }
    let ptmx = join(&chroot.root, b"/dev/ptmx");
    if path_exists(&ptmx)? {
        return Ok(());
    }
    mount_fresh(
        &chroot.root,
        b"/dev/pts",
        b"devpts",
        Some(b"newinstance,mode=0620"),
    )?;
    create_symlink(b"/dev/pts/ptmx", &ptmx)?;
    // Some kernels create the new instance's ptmx with mode 0.
    let pts_ptmx = join(&chroot.root, b"/dev/pts/ptmx");
    let p = cstr(&pts_ptmx)?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::chmod(p.as_ptr(), 0o666) } == -1 {
        return Err(last_sys_msg(format!(
            "setting permissions on `{}'",
            show(&pts_ptmx)
        )));
    }
    Ok(())
}

fn pivot_root(c: &mut Child<'_>) -> Result<(), String> {
    let root = &c.chroot()?.root;
    let r = cstr(root)?;
    // SAFETY: every call below takes NUL-terminated paths (or literals)
    // that live across the call.
    unsafe {
        if libc::chdir(r.as_ptr()) == -1 {
            return Err(last_sys_msg(format!(
                "cannot change directory to '{}'",
                show(root)
            )));
        }
        if libc::mkdir(c"real-root".as_ptr(), 0) == -1 {
            return Err(last_sys_msg("cannot create real-root directory"));
        }
        if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c"real-root".as_ptr()) == -1 {
            return Err(last_sys_msg(format!(
                "cannot pivot old root directory onto '{}/real-root'",
                show(root)
            )));
        }
        if libc::chroot(c".".as_ptr()) == -1 {
            return Err(last_sys_msg(format!(
                "cannot change root directory to '{}'",
                show(root)
            )));
        }
        if libc::umount2(c"real-root".as_ptr(), libc::MNT_DETACH) == -1 {
            return Err(last_sys_msg("cannot unmount real root filesystem"));
        }
        if libc::rmdir(c"real-root".as_ptr()) == -1 {
            return Err(last_sys_msg("cannot remove real-root directory"));
        }
    }
    Ok(())
}

fn clear_root_write_perms(_: &mut Child<'_>) -> Result<(), String> {
    // SAFETY: a NUL-terminated literal path.
    if unsafe { libc::chmod(c"/".as_ptr(), 0o555) } == -1 {
        return Err(last_sys_msg("changing mode of chroot root directory"));
    }
    Ok(())
}

fn change_dir(c: &mut Child<'_>) -> Result<(), String> {
    let cwd = cstr(&c.spec.cwd)?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::chdir(cwd.as_ptr()) } == -1 {
        return Err(last_sys_msg(format!(
            "changing into `{}'",
            show(&c.spec.cwd)
        )));
    }
    Ok(())
}

fn close_most_fds(c: &mut Child<'_>) -> Result<(), String> {
    let mut keep = vec![0, 1, 2];
    // Close-on-exec already; `exec` still needs it.
    keep.extend(c.lineage.map(|(stat, _)| stat));
    close_all_except(&mut keep);
    c.setup = None;
    Ok(())
}

fn set_personality(c: &mut Child<'_>) -> Result<(), String> {
    // Personas are small bit sets (below 2^32).
    let persona = c.spec.persona as libc::c_ulong;
    // SAFETY: personality takes an integer.
    if unsafe { libc::personality(persona) } == -1 {
        return Err(last_sys_msg("cannot set personality"));
    }
    Ok(())
}

fn oom_sacrifice(_: &mut Child<'_>) -> Result<(), String> {
    // Failing to volunteer for the OOM killer is not worth failing a build
    // (the C++ daemon ignores it too).
    let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
    Ok(())
}

fn lock_mounts(c: &mut Child<'_>) -> Result<(), String> {
    if !c.chroot()?.lock_mounts {
        return Ok(());
    }
    // Map every id currently mapped to itself, so the builder keeps its
    // guest ids (and the kvm group) in the new namespace.
    let uid_map = identity_map(&read_text("/proc/self/uid_map")?)?;
    let gid_map = identity_map(&read_text("/proc/self/gid_map")?)?;
    unshare_and_init_userns(libc::CLONE_NEWNS | libc::CLONE_NEWUSER, &uid_map, &gid_map)?;
    // The mounts inherited by the new mount namespace are locked together
    // now: unmounting one of them must fail with EINVAL.
    // SAFETY: a NUL-terminated literal path.
    let r = unsafe { libc::umount(c"/proc".as_ptr()) };
    let errno = io::Error::last_os_error().raw_os_error();
    if r != -1 || errno != Some(libc::EINVAL) {
        return Err("mounts are not locked in the builder's namespace".to_owned());
    }
    Ok(())
}

fn set_ids(c: &mut Child<'_>) -> Result<(), String> {
    let Some(ids) = &c.spec.ids else {
        return Ok(());
    };
    // SAFETY: `groups` is a valid array of `len` gids; the id calls take
    // integers. This process is single-threaded, so the C library's
    // set*id wrappers have no other thread to coordinate with.
    unsafe {
        if libc::setgroups(ids.groups.len(), ids.groups.as_ptr()) == -1 {
            return Err(last_sys_msg("cannot set supplementary groups"));
        }
        if libc::setgid(ids.gid) == -1 || libc::getgid() != ids.gid || libc::getegid() != ids.gid {
            return Err(last_sys_msg("setgid failed"));
        }
        if libc::setuid(ids.uid) == -1 || libc::getuid() != ids.uid || libc::geteuid() != ids.uid {
            return Err(last_sys_msg("setuid failed"));
        }
    }
    Ok(())
}

fn restore_sigpipe(_: &mut Child<'_>) -> Result<(), String> {
    // SAFETY: resets one signal to its default action.
    if unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(last_sys_msg("resetting SIGPIPE"));
    }
    Ok(())
}

fn setup_success(_: &mut Child<'_>) -> Result<(), String> {
    write_all(libc::STDERR_FILENO, b"\n");
    Ok(())
}

fn exec(c: &mut Child<'_>) -> Result<(), String> {
    // Set here, after the last change of credentials (which clears it).
    die_with_daemon()?;
    if let Some((stat, daemon)) = c.lineage
        && read_parent(stat).is_some_and(|parent| parent != daemon)
    {
        // The daemon died before the signal was asked for, so none will
        // come: nobody waits for this build any more.
        // SAFETY: `_exit` never returns.
        unsafe { libc::_exit(1) }
    }
    match &c.spec.exec {
        Exec::Builder {
            path,
            argv,
            envp,
            same_kernel,
            can_build_locally,
            unsupported_trace,
            unsupported_message,
        } => {
            // Resolved in the builder's own view (inside the chroot), and
            // required to be in the store, so that `/proc/self/exe` or a
            // link to it cannot be the builder (CVE-2019-5736).
            let program = canon_path(path)?;
            if !is_in_store(&program, &c.spec.store_dir) {
                return Err(format!(
                    "derivation builder `{}' is outside the store",
                    show(&program)
                ));
            }
            let error = if *same_kernel {
                let program = cstr(&program)?;
                let argv = cstrings(argv)?;
                let envp = cstrings(envp)?;
                let argv_ptrs = null_terminated(&argv);
                let envp_ptrs = null_terminated(&envp);
                // SAFETY: NUL-terminated strings in null-terminated arrays,
                // all alive across the call. glibc's execvpe (not execve)
                // as the C++ daemon: it retries a file without a known
                // format through /bin/sh.
                unsafe { libc::execvpe(program.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
                io::Error::last_os_error()
            } else {
                io::Error::from_raw_os_error(libc::ENOEXEC)
            };
            if error.raw_os_error() == Some(libc::ENOEXEC) && !*can_build_locally {
                if !unsupported_trace.is_empty() {
                    write_all(libc::STDERR_FILENO, unsupported_trace);
                    write_all(libc::STDERR_FILENO, b"\n");
                }
                return Err(show(unsupported_message).into_owned());
            }
            Err(sys_msg(format!("executing `{}'", show(path)), &error))
        }
        Exec::Program {
            program,
            argv,
            envp,
        } => {
            let error = (|| {
                let p = cstr(program)?;
                let argv = cstrings(argv)?;
                let envp = cstrings(envp)?;
                let argv_ptrs = null_terminated(&argv);
                let envp_ptrs = null_terminated(&envp);
                // SAFETY: as for the builder above.
                unsafe { libc::execve(p.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
                Err::<(), String>(sys_msg(
                    format!("failed to run download program '{}'", show(program)),
                    &io::Error::last_os_error(),
                ))
            })()
            .err()
            .unwrap_or_default();
            builtin_failed(&error)
        }
        Exec::UnsupportedBuiltin { name } => {
            builtin_failed(&format!("unsupported builtin function '{}'", show(name)))
        }
    }
}

/// Makes this process get SIGKILL when its parent, the daemon, dies. (If
/// the daemon died before this call, no signal comes: `exec` checks the
/// parent afterwards.)
fn die_with_daemon() -> Result<(), String> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } == -1 {
        return Err(last_sys_msg("setting the parent-death signal"));
    }
    Ok(())
}

/// Opens this process's `/proc/self/stat`, close-on-exec.
fn open_self_stat() -> Option<RawFd> {
    // SAFETY: a NUL-terminated path and plain flags.
    let fd = unsafe {
        libc::open(
            c"/proc/self/stat".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    if fd > 2 {
        return Some(fd);
    }
    // Standard streams get replaced during set-up: keep it above them.
    // SAFETY: duplicates and closes a descriptor this function opened.
    let moved = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    // SAFETY: as above.
    unsafe { libc::close(fd) };
    (moved >= 0).then_some(moved)
}

/// The parent's pid in the `stat` file `stat` of some process, in the PID
/// namespace of the `/proc` it was opened from; `None` when it cannot be
/// read or the parent is not visible there (0).
fn read_parent(stat: RawFd) -> Option<libc::pid_t> {
    let mut buf = [0u8; 1024];
    // SAFETY: reads at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::pread(stat, buf.as_mut_ptr().cast(), buf.len(), 0) };
    let text = buf.get(..usize::try_from(n).ok()?)?;
    // "PID (COMM) STATE PPID ...": COMM may hold anything, ')' included.
    let after_comm = &text[text.iter().rposition(|&b| b == b')')? + 1..];
    let ppid = after_comm
        .split(|&b| b == b' ')
        .filter(|field| !field.is_empty())
        .nth(1)?;
    let ppid: libc::pid_t = std::str::from_utf8(ppid).ok()?.parse().ok()?;
    (ppid > 0).then_some(ppid)
}

/// The parent of the calling process as its `/proc/self/stat` names it:
/// the spawner reads the daemon's pid this way once, so that a builder
/// compares like with like whatever PID namespace `/proc` belongs to.
pub(crate) fn parent_in_proc() -> Option<libc::pid_t> {
    let stat = open_self_stat()?;
    let parent = read_parent(stat);
    // SAFETY: closes the descriptor opened above, used nowhere else.
    unsafe { libc::close(stat) };
    parent
}

/// A built-in builder failed: the C++ daemon reports that as plain build
/// output, `error: MSG`, and exit code 1 (not as a setup phase).
fn builtin_failed(message: &str) -> ! {
    write_all(
        libc::STDERR_FILENO,
        format!("error: {message}\n").as_bytes(),
    );
    // SAFETY: `_exit` never returns.
    unsafe { libc::_exit(1) }
}

/// Forks a helper that writes the id maps of this process's new user
/// namespace (writing more than one id needs capabilities in the parent
/// namespace, which the unsharing process loses), as `unshareAndInitUserns`.
fn unshare_and_init_userns(flags: libc::c_int, uid_map: &str, gid_map: &str) -> Result<(), String> {
    // SAFETY: getpid takes no arguments.
    let pid = unsafe { libc::getpid() };
    let (to_child_r, to_child_w) = pipe()?;
    let (from_child_r, from_child_w) = pipe()?;
    // SAFETY: this process is single-threaded; the helper child only reads,
    // writes files and exits.
    let child = unsafe { libc::fork() };
    if child == -1 {
        return Err(last_sys_msg("creating child process"));
    }
    if child == 0 {
        // SAFETY: closing our copies of the other ends.
        unsafe {
            libc::close(to_child_w);
            libc::close(from_child_r);
        }
        let ok = wait_for_message(to_child_r, b"ready\n").is_ok()
            && std::fs::write(format!("/proc/{pid}/uid_map"), uid_map).is_ok()
            && std::fs::write(format!("/proc/{pid}/setgroups"), "deny").is_ok()
            && std::fs::write(format!("/proc/{pid}/gid_map"), gid_map).is_ok()
            && write_all(from_child_w, b"go\n");
        // SAFETY: `_exit` never returns.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    // SAFETY: closing our copies of the helper's ends.
    unsafe {
        libc::close(to_child_r);
        libc::close(from_child_w);
    }
    let result = (|| {
        // SAFETY: unshare takes flags only.
        if unsafe { libc::unshare(flags) } == -1 {
            return Err(last_sys_msg("unshare"));
        }
        write_all(to_child_w, b"ready\n");
        wait_for_message(from_child_r, b"go\n")
    })();
    // SAFETY: closing our ends and reaping our own helper.
    let status = unsafe {
        libc::close(to_child_w);
        libc::close(from_child_r);
        let mut status = 0;
        while libc::waitpid(child, &mut status, 0) == -1 {
            if *libc::__errno_location() != libc::EINTR {
                return Err(last_sys_msg("reaping userns init process"));
            }
        }
        status
    };
    result?;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(format!(
            "userns init child exited with status {}",
            libc::WEXITSTATUS(status)
        ));
    }
    Ok(())
}

/// `idMapToIdentityMap`: each line `INSIDE OUTSIDE COUNT` becomes `INSIDE
/// INSIDE COUNT`.
fn identity_map(map: &str) -> Result<String, String> {
    let mut out = String::new();
    for line in map.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [inside, _, count] = fields[..] else {
            if fields.is_empty() {
                continue;
            }
            return Err(format!("malformed id map line `{line}'"));
        };
        out.push_str(&format!("{inside} {inside} {count}\n"));
    }
    Ok(out)
}

fn read_text(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| sys_msg(format!("reading file `{path}'"), &e))
}

/// `bindMount`: makes the mount point (a directory, a placeholder file, or
/// a copy of a symbolic link instead of a mount), bind-mounts `source`
/// there and remounts it read-only when asked, keeping the flags that
/// cannot be cleared (nosuid, nodev...).
fn bind_mount(source: &[u8], target: &[u8], read_only: bool) -> Result<(), String> {
    let st = lstat(source)
        .map_err(|e| sys_msg(format!("getting attributes of path `{}'", show(source)), &e))?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => create_dirs(target)?,
        libc::S_IFLNK => {
            create_dirs(&dir_of(target))?;
            let link = read_link(source)?;
            return create_symlink(&link, target);
        }
        _ => {
            create_dirs(&dir_of(target))?;
            make_placeholder_file(target)?;
        }
    }
    // MS_REC: in an unprivileged mount namespace a non-recursive bind
    // could reveal what a submount hides, and is refused.
    mount(
        Some(source),
        target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(|e| {
        sys_msg(
            format!(
                "bind mount from `{}' to `{}' failed",
                show(source),
                show(target)
            ),
            &e,
        )
    })?;
    if read_only {
        let t = cstr(target)?;
        // SAFETY: `statvfs` is a plain C struct; all-zero is valid.
        let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a valid out pointer.
        if unsafe { libc::statvfs(t.as_ptr(), &mut vfs) } == -1 {
            return Err(last_sys_msg(format!("statvfs of `{}'", show(target))));
        }
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | mount_flags_of(vfs.f_flag);
        mount(Some(source), target, None, flags, None).map_err(|e| {
            sys_msg(
                format!("read-only remount of `{}' failed", show(target)),
                &e,
            )
        })?;
    }
    Ok(())
}

/// `statfsToMountFlags`.
fn mount_flags_of(f_flag: libc::c_ulong) -> libc::c_ulong {
    let pairs = [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ];
    pairs
        .iter()
        .filter(|(st, _)| f_flag & st != 0)
        .fold(0, |acc, (_, ms)| acc | ms)
}

/// A fresh regular file to mount a file onto; an existing regular file is
/// fine (another mount may have made it).
fn make_placeholder_file(target: &[u8]) -> Result<(), String> {
    let t = cstr(target)?;
    loop {
        match lstat(target) {
            Ok(st) => {
                if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                    return Err(format!(
                        "mount target `{}' exists but is not a regular file",
                        show(target)
                    ));
                }
                return Ok(());
            }
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                return Err(sys_msg(format!("stat'ing path `{}'", show(target)), &e));
            }
            Err(_) => {}
        }
        // SAFETY: a NUL-terminated path.
        let fd = unsafe {
            libc::open(
                t.as_ptr(),
                libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd != -1 {
            // SAFETY: our own new descriptor.
            unsafe { libc::close(fd) };
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(sys_msg(
                format!(
                    "Creating placeholder regular file target mount `{}'",
                    show(target)
                ),
                &e,
            ));
        }
    }
}

/// Mounts a fresh `fstype` at `root` + `at`, creating the directory.
fn mount_fresh(root: &[u8], at: &[u8], fstype: &[u8], data: Option<&[u8]>) -> Result<(), String> {
    let target = join(root, at);
    create_dirs(&target)?;
    mount(Some(b"none"), &target, Some(fstype), 0, data)
        .map_err(|e| sys_msg(format!("mounting `{}'", show(&target)), &e))
}

/// `createDirs`: makes `path` and its missing parents (0777 before the
/// umask), accepting a symbolic link to a directory.
fn create_dirs(path: &[u8]) -> Result<(), String> {
    if path == b"/" || path.is_empty() {
        return Ok(());
    }
    let st = match lstat(path) {
        Ok(st) => st,
        Err(_) => {
            create_dirs(&dir_of(path))?;
            let p = cstr(path)?;
            // SAFETY: a NUL-terminated path.
            if unsafe { libc::mkdir(p.as_ptr(), 0o777) } == -1
                && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
            {
                return Err(last_sys_msg(format!("creating directory `{}'", show(path))));
            }
            lstat(path).map_err(|e| sys_msg(format!("getting status of `{}'", show(path)), &e))?
        }
    };
    let mode = if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        let p = cstr(path)?;
        // SAFETY: `stat` is plain data; all-zero is valid.
        let mut st2: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a valid out pointer.
        if unsafe { libc::stat(p.as_ptr(), &mut st2) } == -1 {
            return Err(last_sys_msg(format!("statting symlink `{}'", show(path))));
        }
        st2.st_mode
    } else {
        st.st_mode
    };
    if mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(format!("`{}' is not a directory", show(path)));
    }
    Ok(())
}

fn create_symlink(target: &[u8], link: &[u8]) -> Result<(), String> {
    let t = cstr(target)?;
    let l = cstr(link)?;
    // SAFETY: NUL-terminated paths.
    if unsafe { libc::symlink(t.as_ptr(), l.as_ptr()) } == -1 {
        return Err(last_sys_msg(format!(
            "creating symlink from `{}' to `{}'",
            show(link),
            show(target)
        )));
    }
    Ok(())
}

fn path_exists(path: &[u8]) -> Result<bool, String> {
    match lstat(path) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => Ok(false),
        Err(e) => Err(sys_msg(format!("getting status of {}", show(path)), &e)),
    }
}

fn lstat(path: &[u8]) -> io::Result<libc::stat> {
    let p = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `stat` is plain data; all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    if unsafe { libc::lstat(p.as_ptr(), &mut st) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// `readLink`.
fn read_link(path: &[u8]) -> Result<Vec<u8>, String> {
    let st = lstat(path).map_err(|e| sys_msg(format!("getting status of `{}'", show(path)), &e))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
        return Err(format!("`{}' is not a symlink", show(path)));
    }
    let p = cstr(path)?;
    // A link's size is its target's length; the kernel caps it at a page.
    let mut buf = vec![0u8; usize::try_from(st.st_size).unwrap_or(0).max(1) + 1];
    // SAFETY: `buf` is valid for `buf.len()` bytes.
    let n = unsafe { libc::readlink(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n == -1 {
        return Err(last_sys_msg(format!(
            "reading symbolic link '{}'",
            show(path)
        )));
    }
    buf.truncate(usize::try_from(n).unwrap_or(0));
    Ok(buf)
}

/// `absPath(path, dir)` without a current directory: `dir` is always given.
fn abs_path(path: &[u8], dir: &[u8]) -> Vec<u8> {
    let joined = if path.first() == Some(&b'/') {
        path.to_vec()
    } else {
        let mut p = dir.to_vec();
        p.push(b'/');
        p.extend_from_slice(path);
        p
    };
    canon_lexically(&joined)
}

/// `canonPath(path, false)` for an absolute path.
fn canon_lexically(path: &[u8]) -> Vec<u8> {
    let mut s: Vec<u8> = Vec::new();
    for component in path.split(|&c| c == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                if let Some(p) = s.iter().rposition(|&c| c == b'/') {
                    s.truncate(p);
                }
            }
            name => {
                s.push(b'/');
                s.extend_from_slice(name);
            }
        }
    }
    if s.is_empty() {
        s.push(b'/');
    }
    s
}

/// `dirOf`: everything before the last `/` (`/` for a top-level name).
fn dir_of(path: &[u8]) -> Vec<u8> {
    match path.iter().rposition(|&c| c == b'/') {
        Some(0) | None => b"/".to_vec(),
        Some(p) => path[..p].to_vec(),
    }
}

fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut p = a.to_vec();
    p.extend_from_slice(b);
    p
}

fn mount(
    source: Option<&[u8]>,
    target: &[u8],
    fstype: Option<&[u8]>,
    flags: libc::c_ulong,
    data: Option<&[u8]>,
) -> io::Result<()> {
    let invalid = |_| io::Error::from_raw_os_error(libc::EINVAL);
    let source = source.map(CString::new).transpose().map_err(invalid)?;
    let target = CString::new(target).map_err(invalid)?;
    let fstype = fstype.map(CString::new).transpose().map_err(invalid)?;
    let data = data.map(CString::new).transpose().map_err(invalid)?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string alive across
    // the call.
    let r = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads exactly `message` from `fd` (`waitForMessage`).
fn wait_for_message(fd: RawFd, message: &[u8]) -> Result<(), String> {
    let mut got = vec![0u8; message.len()];
    let mut filled = 0;
    while filled < got.len() {
        // SAFETY: reads into the unfilled part of `got`.
        let n = unsafe { libc::read(fd, got[filled..].as_mut_ptr().cast(), got.len() - filled) };
        if n == 0 {
            return Err("unexpected end-of-file".to_owned());
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(sys_msg("reading from file", &e));
        }
        filled += n as usize;
    }
    if got != message {
        return Err(format!(
            "did not receive message '{}' on file descriptor {fd}",
            show(message)
        ));
    }
    Ok(())
}

fn pipe() -> Result<(RawFd, RawFd), String> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(last_sys_msg("creating pipe"));
    }
    Ok((fds[0], fds[1]))
}

/// Writes all of `data`, retrying on interruption; false when the write
/// failed (nothing more can be reported then).
fn write_all(fd: RawFd, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        // SAFETY: writes from a valid slice.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        data = &data[n as usize..];
    }
    true
}

/// Closes every descriptor but those in `keep` (with `close_range` over the
/// gaps).
fn close_all_except(keep: &mut Vec<RawFd>) {
    keep.sort_unstable();
    keep.dedup();
    let mut next: libc::c_uint = 0;
    for &fd in keep.iter() {
        let Ok(fd) = libc::c_uint::try_from(fd) else {
            continue;
        };
        if fd > next {
            // SAFETY: closes descriptors this process owns; no Rust object
            // in this child refers to them any more.
            unsafe { libc::close_range(next, fd - 1, 0) };
        }
        next = fd + 1;
    }
    // SAFETY: as above.
    unsafe { libc::close_range(next, libc::c_uint::MAX, 0) };
}

/// Default dispositions and an empty mask for every signal: ignored
/// signals would stay ignored across `exec`, and the spawner ignores some
/// (the daemon may also have been started with real-time signals ignored,
/// which the C library's `signal` refuses to touch, hence the raw call).
fn reset_signals() {
    // The kernel's `struct sigaction` with every field zero is SIG_DFL, no
    // flags and an empty mask, whatever the field order of the
    // architecture.
    let default_action = [0u64; 4];
    // SAFETY: rt_sigaction reads a zeroed kernel sigaction of the right
    // size (8-byte sigset); sigprocmask gets a set initialised by
    // sigemptyset.
    unsafe {
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    default_action.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

fn cstr(b: &[u8]) -> Result<CString, String> {
    CString::new(b).map_err(|_| format!("`{}' contains a NUL byte", show(b)))
}

fn cstrings(items: &[Vec<u8>]) -> Result<Vec<CString>, String> {
    items.iter().map(|i| cstr(i)).collect()
}

fn null_terminated(items: &[CString]) -> Vec<*const libc::c_char> {
    items
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn show(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(b)
}

fn sys_msg(context: impl std::fmt::Display, err: &io::Error) -> String {
    format!("{context}: {}", strerror(err))
}

fn last_sys_msg(context: impl std::fmt::Display) -> String {
    sys_msg(context, &io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn canon_path_resolves_dots_slashes_and_links() {
        let dir = std::env::temp_dir().join(format!("guixd-os-canon-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real/sub")).unwrap();
        std::os::unix::fs::symlink("real", dir.join("rel")).unwrap();
        std::os::unix::fs::symlink(dir.join("real/sub"), dir.join("abs")).unwrap();
        std::os::unix::fs::symlink("loop", dir.join("loop")).unwrap();
        let d = dir.as_os_str().as_bytes().to_vec();
        let p = |s: &str| {
            let mut v = d.clone();
            v.extend_from_slice(s.as_bytes());
            v
        };
        assert_eq!(canon_path(&p("/rel/sub")).unwrap(), p("/real/sub"));
        assert_eq!(
            canon_path(&p("//rel/./sub/..//sub")).unwrap(),
            p("/real/sub")
        );
        assert_eq!(canon_path(&p("/abs")).unwrap(), p("/real/sub"));
        assert_eq!(canon_path(b"/").unwrap(), b"/");
        assert_eq!(canon_path(b"/..").unwrap(), b"/");
        assert_eq!(canon_path(b"sh").unwrap_err(), "not an absolute path: `sh'");
        let missing = canon_path(&p("/nope/x")).unwrap_err();
        assert_eq!(
            missing,
            format!(
                "getting status of `{}/nope': No such file or directory",
                dir.display()
            )
        );
        let looping = canon_path(&p("/loop")).unwrap_err();
        assert!(
            looping.starts_with("infinite symlink recursion in path"),
            "{looping}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_parent_is_read_from_proc_whatever_the_command_name_holds() {
        // SAFETY: getppid has no preconditions.
        assert_eq!(parent_in_proc(), Some(unsafe { libc::getppid() }));
        let file = std::env::temp_dir().join(format!("guixd-os-stat-{}", std::process::id()));
        for (text, parent) in [
            (&b"12 (a) b) S 77 12 12 0 -1"[..], Some(77)),
            (b"12 (sh) S 0 0 0", None),
            (b"12 (x) S", None),
            (b"garbage", None),
        ] {
            std::fs::write(&file, text).unwrap();
            let stat = std::fs::File::open(&file).unwrap();
            assert_eq!(read_parent(stat.as_raw_fd()), parent, "{text:?}");
        }
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn store_membership_needs_a_name_below_the_store() {
        assert!(is_in_store(b"/gnu/store/abc-x/bin/sh", b"/gnu/store"));
        assert!(is_in_store(b"/gnu/store/a", b"/gnu/store"));
        assert!(!is_in_store(b"/gnu/store/", b"/gnu/store"));
        assert!(!is_in_store(b"/gnu/store", b"/gnu/store"));
        assert!(!is_in_store(b"/gnu/storex/a", b"/gnu/store"));
        assert!(!is_in_store(b"/bin/sh", b"/gnu/store"));
    }

    #[test]
    fn identity_maps_keep_the_inside_ids() {
        assert_eq!(
            identity_map("     30001          0          1\n").unwrap(),
            "30001 30001 1\n"
        );
        assert_eq!(
            identity_map("30000 0 1\n40000 993 1\n").unwrap(),
            "30000 30000 1\n40000 40000 1\n"
        );
        assert!(identity_map("1 2\n").is_err());
    }

    #[test]
    fn lexical_helpers_match_the_daemons() {
        assert_eq!(dir_of(b"/a/b"), b"/a");
        assert_eq!(dir_of(b"/a"), b"/");
        assert_eq!(abs_path(b"../x", b"/a/b"), b"/a/x");
        assert_eq!(abs_path(b"/y/./z", b"/a"), b"/y/z");
        assert_eq!(
            mount_flags_of(libc::ST_NOSUID | libc::ST_NODEV),
            libc::MS_NOSUID | libc::MS_NODEV
        );
    }
}

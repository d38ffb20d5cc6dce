//! Builds on the real machine (spec 03): build directories and the chroot
//! (`sandbox.rs`), build users (`users.rs`), the spawner helper that
//! creates builders (`spawner.rs`, with the spawn description in `spec.rs`
//! and the child's setup phases in `phases.rs`), output collection
//! (`outputs.rs`, `refscan.rs`) and build logs (`logs.rs`).
//!
//! A build goes: `PrepareBuild` ([`Builds::prepare`]) makes the directories
//! and keeps the spawn description; the runtime's `Spawn` calls
//! `Os::spawn_build` ([`Builds::spawn`]), which starts the builder through
//! the helper and returns its pidfd and log pipe; after the builder exited
//! (or was killed), `CollectOutputs`, then `FinishBuild`
//! ([`Builds::finish`]) kills what is left, deletes the chroot and the
//! build directory, and releases the build user.
//!
//! Keeps true:
//! - a prepared build is in the table from `prepare` until `finish`; its
//!   build user stays locked exactly that long;
//! - every builder is a child of the daemon, named by a pidfd: `spawn`
//!   reaps the ones that fail during set-up itself, the runtime reaps the
//!   others; `finish` only signals (through its own duplicate of the
//!   pidfd, never a bare pid) and waits for the exit to become visible;
//! - in chroot mode the builder is PID 1 of its PID namespace, so killing
//!   it kills every process of the build; without a chroot, `finish` kills
//!   the builder's process group (it called `setsid`) and, with a build
//!   user, every process of that user;
//! - every build directory of a prepared build is named in the build
//!   journal (`<state>/guixd-builds/<pid>-<build id>`, written whole before
//!   the directory is used, removed before the directory is deleted), so
//!   a daemon started after a crash deletes the build directories of dead
//!   daemon processes ([`Builds::new`]) and never one of a live process.

mod logs;
mod outputs;
mod phases;
mod refscan;
mod sandbox;
mod spawner;
mod spec;
mod users;

pub use spawner::Spawner;

use crate::OsConfig;
use crate::child::{SpawnedChild, kill_child, wait_exit};
use crate::locks::sys_error;
use guixd_core::build_plan::{BuildId, BuildPlan};
use guixd_core::effect::{EffectError, EffectErrorKind, EffectOutput, EffectResult};
use guixd_core::store_path::StorePath;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long `spawn` waits for the builder to report that its set-up
/// succeeded (mounts on a hung file system could otherwise hold a worker
/// thread forever; the C++ daemon waits forever).
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(600);

/// How long `finish` waits for a killed builder's exit to become visible
/// before deleting its directories anyway.
pub const KILL_WAIT: Duration = Duration::from_secs(30);

/// The longest set-up error line kept.
const SETUP_LINE_MAX_BYTES: usize = 64 << 10;

/// Prepared and running builds, and open logs.
pub struct Builds {
    logs: logs::Logs,
    host: sandbox::Host,
    state_dir: PathBuf,
    daemon_uid: u32,
    table: Mutex<HashMap<BuildId, Prepared>>,
    spawner: Option<Arc<Spawner>>,
}

/// What output collection needs to know about a prepared build.
#[derive(Clone, Debug)]
pub(crate) struct BuildInfo {
    pub drv_path: StorePath,
    /// The chroot's root directory (`<drv>.chroot/top`) when the build runs
    /// in the chroot: outputs are then at `<root>/<store path>`.
    pub chroot_root: Option<PathBuf>,
    /// The build user's uid and gid, when one was acquired.
    pub build_user: Option<(u32, u32)>,
    /// The build directory on the host (`$TMPDIR/guix-build-NAME.drv-N`).
    pub build_dir: PathBuf,
    /// Where the builder works on the host: `build_dir`, or its `top`
    /// subdirectory in chroot mode.
    pub work_dir: PathBuf,
}

impl Builds {
    pub fn new(config: &OsConfig) -> Builds {
        let machine = rustix::system::uname()
            .machine()
            .to_string_lossy()
            .into_owned();
        // SAFETY: getuid and getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Builds {
            logs: logs::Logs::new(config),
            host: sandbox::Host {
                store_dir: config.dirs.store.as_str().to_owned(),
                tmp_root: std::env::var_os("TMPDIR")
                    .filter(|t| !t.is_empty())
                    .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from),
                uid,
                gid,
                system: config.settings.system.clone(),
                machine,
                guix_program: config.dirs.guix_program.clone(),
                slirp4netns: PathBuf::from(sandbox::SLIRP4NETNS),
            },
            state_dir: {
                remove_stale_build_dirs(&journal_dir(&config.dirs.state));
                config.dirs.state.clone()
            },
            daemon_uid: config.uid,
            table: Mutex::new(HashMap::new()),
            spawner: None,
        }
    }

    /// Hands over the spawner helper (started before any thread existed).
    pub fn set_spawner(&mut self, spawner: Spawner) {
        self.spawner = Some(Arc::new(spawner));
    }

    /// `PrepareBuild`: acquires the build user (killing its processes),
    /// makes the build directory and the chroot skeleton, and keeps the
    /// spawn description for [`Builds::spawn`].
    pub fn prepare(&self, build: BuildId, plan: BuildPlan) -> EffectResult {
        if self.table().contains_key(&build) {
            return Err(bug(format!("build {} prepared twice", build.0)));
        }
        let user = if plan.build_users_group.is_empty() {
            None
        } else {
            let user = users::acquire(&self.state_dir, &plan.build_users_group, self.daemon_uid)?;
            users::kill_user(user.uid)?;
            Some(user)
        };
        let layout = sandbox::prepare(&self.host, &plan, user.as_ref())?;
        journal_add(&self.journal_entry(build), &layout.build_dir);
        let info = BuildInfo {
            drv_path: plan.drv_path.clone(),
            chroot_root: layout.chroot_root.clone(),
            build_user: user.as_ref().map(|u| (u.uid, u.gid)),
            build_dir: layout.build_dir.clone(),
            work_dir: layout.work_dir.clone(),
        };
        let build_dir = layout.build_dir.display().to_string();
        // Why a fixed-output build has no network, for the client.
        let notes = layout.notes.clone();
        self.table().insert(
            build,
            Prepared {
                info,
                spec: Some(layout.spec),
                chroot_top: layout.chroot_top,
                user,
                child: None,
            },
        );
        Ok(EffectOutput::BuildPrepared { build_dir, notes })
    }

    /// Starts the builder of a prepared build and waits until it reports
    /// that its set-up succeeded. A set-up failure comes back as the
    /// builder's message (`while setting up the child process: in phase
    /// PHASE: MSG`), with the builder already reaped. Blocking.
    pub fn spawn(&self, build: BuildId) -> Result<SpawnedChild, EffectError> {
        let spawner = self
            .spawner
            .as_ref()
            .ok_or_else(|| bug("the spawner helper is not running"))?;
        let spec = {
            let mut table = self.table();
            let prepared = table
                .get_mut(&build)
                .ok_or_else(|| bug(format!("build {} is not prepared", build.0)))?;
            prepared
                .spec
                .take()
                .ok_or_else(|| bug(format!("build {} spawned twice", build.0)))?
        };
        let spawned = match spawner.spawn(&spec) {
            Ok(spawned) => spawned,
            Err(e) => {
                if let Some(child) = e.child {
                    reap_killed(&child.pidfd);
                }
                return Err(EffectError::new(EffectErrorKind::Helper, e.message));
            }
        };
        let kept = spawned
            .pidfd
            .try_clone()
            .map_err(|e| sys_error("duplicating a pidfd", &e));
        let kept = match kept {
            Ok(kept) => kept,
            Err(e) => {
                reap_killed(&spawned.pidfd);
                return Err(e);
            }
        };
        {
            let mut table = self.table();
            match table.get_mut(&build) {
                Some(prepared) => {
                    prepared.child = Some(Running {
                        pid: spawned.pid,
                        pidfd: kept,
                    });
                }
                None => {
                    drop(table);
                    reap_killed(&spawned.pidfd);
                    return Err(bug(format!("build {} finished while spawning", build.0)));
                }
            }
        }
        let ready = read_setup_line(&spawned.log, SETUP_TIMEOUT)
            .and_then(|line| if line.is_empty() { Ok(()) } else { Err(line) })
            .map_err(|message| EffectError::new(EffectErrorKind::Helper, message))
            .and_then(|()| {
                set_nonblocking(&spawned.log)
                    .map_err(|e| sys_error("making the log pipe non-blocking", &e))
            });
        if let Err(e) = ready {
            // Forget the child before reaping it: once reaped, its pid (and
            // process group number) may be given to another process, which
            // `finish` must never signal.
            if let Some(prepared) = self.table().get_mut(&build) {
                prepared.child = None;
            }
            reap_killed(&spawned.pidfd);
            return Err(e);
        }
        Ok(SpawnedChild {
            pid: spawned.pid,
            pidfd: spawned.pidfd,
            log: spawned.log,
        })
    }

    /// The journal file of `build` (see the module documentation).
    fn journal_entry(&self, build: BuildId) -> PathBuf {
        journal_dir(&self.state_dir).join(format!("{}-{}", std::process::id(), build.0))
    }

    /// `FinishBuild`: kills what is left of the build, deletes the chroot,
    /// deletes the build directory or keeps it (handed to `owner_uid` when
    /// given and not root), and releases the build user. Finishing a build
    /// that is not prepared does nothing.
    pub fn finish(
        &self,
        build: BuildId,
        keep_build_dir: bool,
        owner_uid: Option<u32>,
    ) -> EffectResult {
        let Some(prepared) = self.table().remove(&build) else {
            return Ok(EffectOutput::Done);
        };
        // Forgotten first: a crash from here on leaves the directory
        // behind rather than have a later daemon delete a name that may
        // have been reused.
        let _ = std::fs::remove_file(self.journal_entry(build));
        let chroot = prepared.chroot_top.is_some();
        let mut first_error: Option<EffectError> = None;
        let mut note = |r: Result<(), EffectError>| {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        };
        if let Some(child) = &prepared.child {
            // The builder leads its own process group (setsid). Its number
            // is only safe to use while the builder is not reaped: until
            // then no other process can be given it. (Killed first, the
            // builder could be reaped before its group is.)
            if !chroot && not_reaped(&child.pidfd) {
                if let Ok(pgid) = libc::pid_t::try_from(child.pid) {
                    // SAFETY: kill takes integers only.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                }
            }
            let _ = kill_child(&child.pidfd, libc::SIGKILL);
            // In a PID namespace the builder's exit comes only after every
            // other process of the namespace is gone, and with it the
            // namespace's mounts.
            wait_readable(child.pidfd.as_fd(), KILL_WAIT);
        }
        if let Some(user) = &prepared.user {
            note(users::kill_user(user.uid));
        }
        if let Some(top) = &prepared.chroot_top {
            note(
                sandbox::delete_tree(top)
                    .map_err(|e| sys_error(format!("deleting `{}'", top.display()), &e)),
            );
        }
        let info = &prepared.info;
        if keep_build_dir {
            note(keep_dir(info, chroot, owner_uid));
        } else {
            note(
                sandbox::delete_tree(&info.work_dir)
                    .map_err(|e| sys_error(format!("deleting `{}'", info.work_dir.display()), &e)),
            );
            if info.work_dir != info.build_dir {
                let _ = std::fs::remove_dir(&info.build_dir);
            }
        }
        // Releases the userpool lock, last.
        drop(prepared);
        match first_error {
            None => Ok(EffectOutput::Done),
            Some(e) => Err(e),
        }
    }

    /// What is known of a prepared build.
    pub(crate) fn info(&self, build: BuildId) -> Option<BuildInfo> {
        self.table().get(&build).map(|p| p.info.clone())
    }

    fn table(&self) -> MutexGuard<'_, HashMap<BuildId, Prepared>> {
        // The table holds plain data; a panic elsewhere cannot leave an
        // entry half-written.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A prepared build.
struct Prepared {
    info: BuildInfo,
    /// Taken by `spawn`.
    spec: Option<spec::SpawnSpec>,
    chroot_top: Option<PathBuf>,
    user: Option<users::BuildUser>,
    child: Option<Running>,
}

/// The builder of a build, as `finish` needs it.
struct Running {
    pid: u32,
    /// A duplicate of the runtime's pidfd, to signal the builder and see
    /// its exit; never used to reap it.
    pidfd: OwnedFd,
}

/// Keeps a failed build's directory (`deleteTmpDir` with `keepFailed`).
fn keep_dir(info: &BuildInfo, chroot: bool, owner_uid: Option<u32>) -> Result<(), EffectError> {
    let work = &info.work_dir;
    std::fs::set_permissions(work, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| sys_error(format!("changing mode of `{}'", work.display()), &e))?;
    // Never hand the tree to root: that is who owns it already, and
    // handing it over would only strip the daemon's protections.
    let Some(uid) = owner_uid.filter(|&uid| uid != 0) else {
        return Ok(());
    };
    secure_file_perms(work)?;
    // Without root or CAP_CHOWN this fails; the C++ daemon only says so at
    // the info level and keeps going, as do we.
    let chowned = chown_tree(work, uid).is_ok();
    // SAFETY: getuid has no preconditions and cannot fail.
    let reown = chowned && unsafe { libc::getuid() } != 0;
    if chroot && work != &info.build_dir {
        // SAFETY: getuid and getgid have no preconditions.
        let (me, my_gid) = unsafe { (libc::getuid(), libc::getgid()) };
        if reown {
            let _ = sandbox::chown(work, Some(me), Some(my_gid));
        }
        let top = &info.build_dir;
        let pivot = PathBuf::from(format!("{}.pivot", top.display()));
        std::fs::rename(top, &pivot).map_err(|e| sys_error("pivoting failed build tree", &e))?;
        std::fs::rename(pivot.join("top"), top)
            .map_err(|e| sys_error("renaming failed build tree", &e))?;
        if reown {
            let _ = sandbox::chown(top, Some(uid), None);
        }
        let _ = std::fs::remove_dir(&pivot);
    }
    Ok(())
}

/// `secureFilePerms` with special files allowed: no setuid, setgid or
/// world-writable bits anywhere in the tree; devices are refused.
fn secure_file_perms(path: &Path) -> Result<(), EffectError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let Ok(meta) = path.symlink_metadata() else {
        return Ok(());
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Ok(());
    }
    if ft.is_dir() {
        let entries = std::fs::read_dir(path)
            .map_err(|e| sys_error(format!("opening directory `{}'", path.display()), &e))?;
        for entry in entries.flatten() {
            secure_file_perms(&entry.path())?;
        }
    } else if !(ft.is_file() || ft.is_socket() || ft.is_fifo()) {
        return Err(EffectError::new(
            EffectErrorKind::Helper,
            format!("file `{}' has an unsupported type", path.display()),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777 & !(0o4000 | 0o2000 | 0o002);
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    Ok(())
}

/// Gives every file of the tree to `uid` (the group is left alone).
fn chown_tree(path: &Path, uid: u32) -> io::Result<()> {
    sandbox::chown(path, Some(uid), None)?;
    if path.symlink_metadata()?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid)?;
        }
    }
    Ok(())
}

/// Reads the builder's first line: empty when its set-up succeeded, else
/// the set-up error. `Err` with the daemon's message when the pipe ends
/// first (or nothing comes in time).
fn read_setup_line(log: &OwnedFd, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !wait_readable(log.as_fd(), left) {
            return Err("timed out waiting for the builder to set up its environment".to_owned());
        }
        let mut byte = [0u8; 1];
        // SAFETY: reads one byte into a valid buffer.
        let n = unsafe { libc::read(log.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
        match n {
            0 => return Err("unexpected EOF reading a line".to_owned()),
            1 if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            1 => {
                if line.len() < SETUP_LINE_MAX_BYTES {
                    line.push(byte[0]);
                }
            }
            _ => {
                let e = io::Error::last_os_error();
                if !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) {
                    return Err(format!("reading a line: {}", crate::locks::strerror(&e)));
                }
            }
        }
    }
}

/// Waits up to `timeout` for `fd` to poll readable (or hung up); true when
/// it did.
fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            return true;
        }
        if r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
}

/// Whether the child behind `pidfd` (a child of this process) still holds
/// its pid: running, or exited but not reaped yet.
fn not_reaped(pidfd: &OwnedFd) -> bool {
    // SAFETY: as in `wait_exit`; WNOWAIT leaves a zombie in place.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid siginfo_t and an open pidfd.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    r == 0
}

/// Kills the child behind `pidfd` and reaps it (it failed before the
/// runtime ever saw it).
fn reap_killed(pidfd: &OwnedFd) {
    let _ = kill_child(pidfd, libc::SIGKILL);
    if wait_readable(pidfd.as_fd(), KILL_WAIT) {
        let _ = wait_exit(pidfd);
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags == -1 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == -1
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The build journal's directory (see the module documentation).
fn journal_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("guixd-builds")
}

/// Notes `build_dir` in the journal file `entry`, written whole (a
/// temporary file renamed into place). The journal only serves the
/// clean-up after a crash, so a failure costs nothing else and is ignored.
fn journal_add(entry: &Path, build_dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Some(dir) = entry.parent() else {
        return;
    };
    let _ = std::fs::create_dir_all(dir);
    let mut temp = entry.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    if std::fs::write(&temp, build_dir.as_os_str().as_bytes()).is_ok() {
        let _ = std::fs::rename(&temp, entry);
    }
}

/// Deletes the build directories named in journal files of daemon
/// processes that no longer run, and those files; called once, before
/// this process prepares any build. Only directories named
/// `guix-build-*` are ever deleted; failures are reported and skipped.
fn remove_stale_build_dirs(journal: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(entries) = std::fs::read_dir(journal) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        // This process has prepared no build yet (this runs when `Builds`
        // is made), so its own id in a name means an earlier process had it.
        if pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if !name.ends_with(".tmp") {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                let dir = PathBuf::from(std::ffi::OsStr::from_bytes(&bytes));
                let is_build_dir = dir.is_absolute()
                    && dir
                        .file_name()
                        .is_some_and(|n| n.as_bytes().starts_with(b"guix-build-"));
                if is_build_dir {
                    if let Err(e) = sandbox::delete_tree(&dir) {
                        if e.kind() != io::ErrorKind::NotFound {
                            eprintln!(
                                "warning: cannot remove build directory `{}' left by a daemon that died: {e}",
                                dir.display()
                            );
                        }
                    }
                }
            }
        }
        let _ = std::fs::remove_file(entry.path());
    }
}

/// A guixd bug (the core asked for something impossible), not the
/// client's fault.
fn bug(message: impl Into<String>) -> EffectError {
    EffectError::new(EffectErrorKind::Helper, message)
}

#[cfg(test)]
mod tests;

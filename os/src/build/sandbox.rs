//! The daemon's side of the sandbox (spec 03 §2, §3.2–3.4, §7): the build
//! directory, the chroot skeleton in the store, and the complete spawn
//! description ([`SpawnSpec`]) the spawner helper acts on.
//!
//! Keeps true:
//! - everything the builder will see is decided here, from the plan, the
//!   host and the build user: environment, argv, mounts, ids, persona,
//!   working directory. The helper and the child add nothing;
//! - a failed [`prepare`] leaves nothing behind: the build directory and
//!   the chroot it made are removed again;
//! - directories are deleted by [`delete_tree`], which never descends into
//!   a mount point, so a bind mount that somehow leaked into the daemon's
//!   namespace can never make it delete store items;
//! - not done here (yet): the slirp4netns network of fixed-output builds
//!   (they get an isolated network namespace), and the hash rewriting of
//!   non-chroot builds whose outputs are partly valid.

use super::phases::{ADDR_NO_RANDOMIZE, PER_LINUX, PER_LINUX32, UNAME26};
use super::spec::{Chroot, Exec, Ids, Mount, SpawnSpec};
use super::users::{self, BuildUser};
use crate::locks::sys_error;
use guixd_core::build_plan::{BuildPlan, Program};
use guixd_core::effect::{EffectError, EffectErrorKind};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::io::{self, ErrorKind};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Guest uid and gid of the builder in its own user namespace.
pub(crate) const GUEST_UID: u32 = 30001;
pub(crate) const GUEST_GID: u32 = 30000;
/// Guest gid of the `kvm` group in that namespace.
pub(crate) const GUEST_KVM_GID: u32 = 40000;

/// Where the C++ daemon was configured to find slirp4netns.
pub(crate) const SLIRP4NETNS: &str = "/usr/bin/slirp4netns";

/// The home directory builders are given; it must not exist outside a
/// chroot.
pub(crate) const HOMELESS_SHELTER: &str = "/homeless-shelter";

/// Build directories tried per build before giving up (`-0`, `-1`...).
pub(crate) const BUILD_DIR_ATTEMPTS_MAX: u32 = 100_000;

/// The host facts a spawn description depends on, read once at start-up.
#[derive(Clone, Debug)]
pub(crate) struct Host {
    pub store_dir: String,
    /// `$TMPDIR` of the daemon, else `/tmp`; build directories go there.
    pub tmp_root: PathBuf,
    /// The daemon's real ids (mapped to the guest ids in user namespace
    /// mode).
    pub uid: u32,
    pub gid: u32,
    /// The daemon's `system` setting (`x86_64-linux`).
    pub system: String,
    /// `uname -m`.
    pub machine: String,
    /// `guix`, for built-in builders.
    pub guix_program: PathBuf,
    pub slirp4netns: PathBuf,
}

/// What [`prepare`] made.
#[derive(Debug)]
pub(crate) struct Layout {
    /// `$TMPDIR/guix-build-NAME.drv-N`.
    pub build_dir: PathBuf,
    /// Where the builder works on the host: `build_dir`, or its `top`
    /// subdirectory in chroot mode.
    pub work_dir: PathBuf,
    /// `<drv>.chroot` and `<drv>.chroot/top`, in chroot mode.
    pub chroot_top: Option<PathBuf>,
    pub chroot_root: Option<PathBuf>,
    pub spec: SpawnSpec,
    /// Messages for the client (the C++ daemon prints them while starting
    /// the build), such as the missing slirp4netns.
    pub notes: Vec<String>,
}

/// Makes the build directory (and the chroot skeleton in chroot mode) for
/// `plan`, writes `build_dir_files`, and computes the spawn description.
/// `user` is the build user already acquired, if any.
pub(crate) fn prepare(
    host: &Host,
    plan: &BuildPlan,
    user: Option<&BuildUser>,
) -> Result<Layout, EffectError> {
    let builtin = matches!(plan.program, Program::Builtin { .. });
    // Built-in builders never run in the chroot (they are Guile code that
    // is not an input of the derivation).
    let chroot = plan.chroot && !builtin;
    if let Program::Builder(builder) = &plan.program {
        if !builder.contains('/') {
            return Err(plain(format!("invalid file name `{builder}'")));
        }
    }
    if !chroot && Path::new(HOMELESS_SHELTER).symlink_metadata().is_ok() {
        return Err(plain(format!(
            "directory `{HOMELESS_SHELTER}' exists; please remove it"
        )));
    }

    let drv_name = plan.drv_path.name().to_owned();
    let mut cleanup = Cleanup::default();
    let build_dir = create_build_dir(host, &drv_name)?;
    cleanup.paths.push(build_dir.clone());
    let result = prepare_in(
        host,
        plan,
        user,
        chroot,
        &drv_name,
        &build_dir,
        &mut cleanup,
    );
    if result.is_ok() {
        cleanup.paths.clear();
    }
    result
}

/// Deletes `path` and everything below it, making directories writable as
/// needed, without ever crossing into another mount. A missing `path` is
/// not an error.
pub(crate) fn delete_tree(path: &Path) -> io::Result<()> {
    let meta = match path.symlink_metadata() {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    if is_mount_root(path)? {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode((mode | 0o700) & 0o7777))?;
    }
    for entry in fs::read_dir(path)? {
        delete_tree(&entry?.path())?;
    }
    fs::remove_dir(path)
}

/// The message given when a fixed-output build cannot have network access
/// (spec 03 §3.3), or `None` when slirp4netns would be usable.
pub(crate) fn network_refusal(host: &Host) -> Option<String> {
    if !host.slirp4netns.exists() {
        return Some(format!(
            "`{}' can't be found in PATH, network access disabled",
            host.slirp4netns.display()
        ));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("`/dev/net/tun' is missing, network access disabled".to_owned());
    }
    None
}

fn prepare_in(
    host: &Host,
    plan: &BuildPlan,
    user: Option<&BuildUser>,
    chroot: bool,
    drv_name: &str,
    build_dir: &Path,
    cleanup: &mut Cleanup,
) -> Result<Layout, EffectError> {
    // In the chroot the builder's directory is a subdirectory, so that the
    // directory the daemon may later hand to a user is root-owned and its
    // permissions cannot be changed by the builder (CVE-2021-27851).
    let work_dir = if chroot {
        let top = build_dir.join("top");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&top)
            .map_err(|e| sys_error("creating top-level build directory", &e))?;
        top
    } else {
        build_dir.to_path_buf()
    };
    // The builder sees the same directory name in every build, for
    // determinism.
    let dir_in_sandbox = if chroot {
        let tmp =
            fs::canonicalize("/tmp").map_err(|e| sys_error("getting status of `/tmp'", &e))?;
        tmp.join(format!("guix-build-{drv_name}-0"))
    } else {
        work_dir.clone()
    };

    for (name, contents) in &plan.build_dir_files {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(plain(format!("invalid file name `{name}'")));
        }
        let file = work_dir.join(name);
        fs::write(&file, contents)
            .map_err(|e| sys_error(format!("writing file '{}'", file.display()), &e))?;
    }

    if let Some(user) = user {
        chown(&work_dir, Some(user.uid), Some(user.gid)).map_err(|e| {
            sys_error(
                format!("cannot change ownership of '{}'", work_dir.display()),
                &e,
            )
        })?;
    }

    let mut notes = Vec::new();
    let (chroot_part, chroot_top, chroot_root) = if chroot {
        let top = PathBuf::from(format!("{}.chroot", plan.drv_path.as_str()));
        let root = top.join("top");
        delete_tree(&top).map_err(|e| sys_error(format!("deleting `{}'", top.display()), &e))?;
        cleanup.paths.push(top.clone());
        let part = prepare_chroot(
            host,
            plan,
            user,
            &top,
            &root,
            &dir_in_sandbox,
            &work_dir,
            &mut notes,
        )?;
        (Some(part), Some(top), Some(root))
    } else {
        (None, None, None)
    };

    let exec = exec_for(host, plan, &dir_in_sandbox)?;
    let spec = SpawnSpec {
        chroot: chroot_part,
        cwd: dir_in_sandbox.into_os_string().into_vec(),
        store_dir: host.store_dir.as_bytes().to_vec(),
        ids: user.map(|u| Ids {
            uid: u.uid,
            gid: u.gid,
            groups: u.supplementary.clone(),
        }),
        persona: persona(host, plan),
        exec,
    };
    Ok(Layout {
        build_dir: build_dir.to_path_buf(),
        work_dir,
        chroot_top,
        chroot_root,
        spec,
        notes,
    })
}

/// `$TMPDIR/guix-build-NAME-N` with the first free N, mode 0700, in the
/// daemon's group.
fn create_build_dir(host: &Host, drv_name: &str) -> Result<PathBuf, EffectError> {
    let root = fs::canonicalize(&host.tmp_root).map_err(|e| {
        sys_error(
            format!("getting status of `{}'", host.tmp_root.display()),
            &e,
        )
    })?;
    for n in 0..BUILD_DIR_ATTEMPTS_MAX {
        let dir = root.join(format!("guix-build-{drv_name}-{n}"));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                // SAFETY: getegid has no preconditions and cannot fail.
                let gid = unsafe { libc::getegid() };
                chown(&dir, None, Some(gid)).map_err(|e| {
                    sys_error(
                        format!("setting group of directory `{}'", dir.display()),
                        &e,
                    )
                })?;
                return Ok(dir);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(sys_error(
                    format!("creating directory `{}'", dir.display()),
                    &e,
                ));
            }
        }
    }
    Err(plain(format!(
        "no free build directory for `{drv_name}' in `{}'",
        root.display()
    )))
}

/// The chroot skeleton at `root` and the list of what to mount there.
#[allow(clippy::too_many_arguments)]
fn prepare_chroot(
    host: &Host,
    plan: &BuildPlan,
    user: Option<&BuildUser>,
    top: &Path,
    root: &Path,
    dir_in_sandbox: &Path,
    work_dir: &Path,
    notes: &mut Vec<String>,
) -> Result<Chroot, EffectError> {
    fs::DirBuilder::new().mode(0o750).create(top).map_err(|e| {
        sys_error(
            format!("cannot create build root container '{}'", top.display()),
            &e,
        )
    })?;
    fs::DirBuilder::new()
        .mode(0o750)
        .create(root)
        .map_err(|e| sys_error(format!("cannot create build root '{}'", root.display()), &e))?;
    if let Some(user) = user {
        chown(root, Some(0), Some(user.gid)).map_err(|e| {
            sys_error(
                format!("cannot change ownership of `{}'", root.display()),
                &e,
            )
        })?;
    }

    // A writable /tmp: many builders ignore $TMPDIR.
    let tmp = root.join("tmp");
    create_dirs(&tmp)?;
    chmod(&tmp, 0o1777)?;

    let (uid, gid) = match user {
        Some(u) => (u.uid, u.gid),
        None => (GUEST_UID, GUEST_GID),
    };
    create_dirs(&root.join("etc"))?;
    write_file(
        &root.join("etc/passwd"),
        format!(
            "nixbld:x:{uid}:{gid}:Nix build user:/:/noshell\nnobody:x:65534:65534:Nobody:/:/noshell\n"
        )
        .as_bytes(),
    )?;
    write_file(
        &root.join("etc/group"),
        format!("nixbld:!:{gid}:\n").as_bytes(),
    )?;

    // What to bind-mount, by path inside the chroot; the map's order
    // mounts parents before their children.
    let mut mounts: BTreeMap<String, String> = BTreeMap::new();
    let mut read_only: BTreeSet<String> = BTreeSet::new();
    if plan.fixed_output {
        let mut files = vec!["/etc/services", "/etc/nsswitch.conf"];
        if let Some(refusal) = network_refusal(host) {
            notes.push(refusal);
        } else {
            // slirp4netns would give the build network access here; that
            // is not implemented, so say so and keep the build isolated.
            notes.push(
                "network access through slirp4netns is not supported by guixd yet, network access disabled"
                    .to_owned(),
            );
        }
        files.extend(["/etc/hosts", "/etc/resolv.conf"]);
        for file in files {
            if Path::new(file).symlink_metadata().is_ok() {
                mounts.insert(file.to_owned(), file.to_owned());
                read_only.insert(file.to_owned());
            }
        }
    } else {
        write_file(
            &root.join("etc/hosts"),
            b"127.0.0.1 localhost\n::1 localhost\n",
        )?;
    }

    for (inside, outside) in &plan.extra_chroot_dirs {
        mounts.insert(inside.clone(), outside.clone());
    }
    mounts.insert(path_string(dir_in_sandbox)?, path_string(work_dir)?);

    // The fake store: only the build user's group may write to it.
    let store = root.join(host.store_dir.trim_start_matches('/'));
    create_dirs(&store)?;
    chmod(&store, 0o1775)?;
    if let Some(user) = user {
        chown(&store, Some(0), Some(user.gid)).map_err(|e| {
            sys_error(
                format!("cannot change ownership of `{}'", store.display()),
                &e,
            )
        })?;
    }

    // Only the input closure of the store is visible.
    for input in &plan.inputs {
        mounts.insert(input.as_str().to_owned(), input.as_str().to_owned());
        read_only.insert(input.as_str().to_owned());
    }

    // A nearly empty /dev, unless the host's was asked for.
    if !mounts.contains_key("/dev") {
        create_dirs(&root.join("dev/shm"))?;
        create_dirs(&root.join("dev/pts"))?;
        let mut devices = vec!["/dev/full"];
        if Path::new("/dev/kvm").exists() {
            devices.push("/dev/kvm");
        }
        devices.extend([
            "/dev/null",
            "/dev/random",
            "/dev/tty",
            "/dev/urandom",
            "/dev/zero",
        ]);
        for (link, target) in [
            ("dev/fd", "/proc/self/fd"),
            ("dev/stdin", "/proc/self/fd/0"),
            ("dev/stdout", "/proc/self/fd/1"),
            ("dev/stderr", "/proc/self/fd/2"),
        ] {
            let link = root.join(link);
            std::os::unix::fs::symlink(target, &link).map_err(|e| {
                sys_error(
                    format!("creating symlink from `{}' to `{target}'", link.display()),
                    &e,
                )
            })?;
        }
        for device in devices {
            mounts.insert(device.to_owned(), device.to_owned());
        }
    }

    let mount_devpts =
        Path::new("/dev/pts/ptmx").symlink_metadata().is_ok() && !mounts.contains_key("/dev/pts");
    // Whatever comes from the store is read-only, whoever asked for it.
    for (inside, outside) in &mounts {
        if outside.starts_with(host.store_dir.as_str()) {
            read_only.insert(inside.clone());
        }
    }

    let user_namespace = user.is_none();
    let extra_gids = if user_namespace {
        users::kvm_gid()
            .map(|kvm| vec![(GUEST_KVM_GID, kvm)])
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(Chroot {
        root: root.as_os_str().as_bytes().to_vec(),
        mounts: mounts
            .into_iter()
            .map(|(target, source)| Mount {
                read_only: read_only.contains(&target),
                target: target.into_bytes(),
                source: source.into_bytes(),
            })
            .collect(),
        user_namespace,
        init_loopback: !plan.fixed_output || !plan.use_host_loopback,
        mount_devpts,
        lock_mounts: user_namespace,
        host_uid: host.uid,
        host_gid: host.gid,
        extra_gids,
    })
}

/// What the child executes, with its argv and environment.
fn exec_for(host: &Host, plan: &BuildPlan, dir_in_sandbox: &Path) -> Result<Exec, EffectError> {
    match &plan.program {
        Program::Builder(builder) => {
            let base = builder.rsplit('/').next().unwrap_or(builder);
            let mut argv = vec![base.as_bytes().to_vec()];
            argv.extend(plan.args.iter().map(|a| a.as_bytes().to_vec()));

            let mut env: BTreeMap<Vec<u8>, Vec<u8>> = plan
                .env
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect();
            let dir = dir_in_sandbox.as_os_str().as_bytes().to_vec();
            for name in ["NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD"] {
                env.insert(name.as_bytes().to_vec(), dir.clone());
            }
            for name in &plan.impure_env_vars {
                let value = std::env::var_os(name).unwrap_or_default();
                env.insert(name.as_bytes().to_vec(), value.into_vec());
            }
            let envp = env
                .into_iter()
                .map(|(mut k, v)| {
                    k.push(b'=');
                    k.extend_from_slice(&v);
                    k
                })
                .collect();

            let platform = plan.platform.as_str();
            let same_kernel = match (platform.find('-'), host.system.find('-')) {
                (Some(a), Some(b)) => platform[a..] == host.system[b..],
                _ => false,
            };
            // With build traces, `@ unsupported-platform D P` goes first,
            // nested one level as the C++ daemon's child prints it.
            let unsupported_trace = if plan.print_build_trace {
                format!(
                    "|   @ unsupported-platform {} {platform}",
                    plan.drv_path.as_str()
                )
            } else {
                String::new()
            };
            // The arguments are in guix-daemon 1.5.0's order, which swaps
            // the daemon's system and the derivation.
            let unsupported_message = format!(
                "a `{platform}' is required to build `{}', but I am a `{}'",
                host.system,
                plan.drv_path.as_str()
            );
            Ok(Exec::Builder {
                path: builder.as_bytes().to_vec(),
                argv,
                envp,
                same_kernel,
                can_build_locally: can_build_locally(platform, &host.system),
                unsupported_trace: unsupported_trace.into_bytes(),
                unsupported_message: unsupported_message.into_bytes(),
            })
        }
        Program::Builtin { name, output } => {
            let name = name.strip_prefix("builtin:").unwrap_or(name);
            if name != "download" && name != "git-download" {
                return Ok(Exec::UnsupportedBuiltin {
                    name: name.as_bytes().to_vec(),
                });
            }
            // The daemon's own environment, with NIX_STORE and
            // _NIX_OPTIONS set on top as setenv would; the derivation's
            // variables are not exported.
            let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
            let mut set = |k: &str, v: &str| match env.iter_mut().find(|(name, _)| name == k) {
                Some(entry) => entry.1 = OsString::from(v),
                None => env.push((OsString::from(k), OsString::from(v))),
            };
            set("NIX_STORE", &host.store_dir);
            for (k, v) in &plan.env {
                if k == "NIX_STORE" || k == "_NIX_OPTIONS" {
                    set(k, v);
                }
            }
            let envp = env
                .into_iter()
                .map(|(k, v)| {
                    let mut entry = k.into_vec();
                    entry.push(b'=');
                    entry.extend_from_slice(v.as_bytes());
                    entry
                })
                .collect();
            Ok(Exec::Program {
                program: host.guix_program.as_os_str().as_bytes().to_vec(),
                argv: vec![
                    b"guix".to_vec(),
                    b"perform-download".to_vec(),
                    plan.drv_path.as_str().as_bytes().to_vec(),
                    output.as_str().as_bytes().to_vec(),
                ],
                envp,
            })
        }
    }
}

/// The persona: 32-bit for i686 on x86_64 and armhf on aarch64, Linux 2.6
/// when impersonating, and never address-space randomisation.
fn persona(host: &Host, plan: &BuildPlan) -> u64 {
    let platform = plan.platform.as_str();
    let mut persona = PER_LINUX;
    if platform == "i686-linux" && (host.system == "x86_64-linux" || host.machine == "x86_64") {
        persona = PER_LINUX32;
    }
    if platform == "armhf-linux" && (host.system == "aarch64-linux" || host.machine == "aarch64") {
        persona = PER_LINUX32;
    }
    if (platform == "i686-linux" || platform == "x86_64-linux") && plan.impersonate_linux_26 {
        persona |= UNAME26;
    }
    persona | ADDR_NO_RANDOMIZE
}

/// `canBuildLocally`.
fn can_build_locally(platform: &str, system: &str) -> bool {
    platform == system
        || (platform == "i686-linux" && system == "x86_64-linux")
        || (platform == "armhf-linux" && system == "aarch64-linux")
}

/// Removes what a failed `prepare` made, last made first.
#[derive(Default)]
struct Cleanup {
    paths: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for path in self.paths.iter().rev() {
            // Best effort: the error that made us clean up is the one the
            // client must see.
            let _ = delete_tree(path);
        }
    }
}

/// Whether `path` is the root of a mount (bind mounts included).
fn is_mount_root(path: &Path) -> io::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `statx` is plain data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            0,
            &mut stx,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    Ok(stx.stx_attributes_mask & bit != 0 && stx.stx_attributes & bit != 0)
}

fn create_dirs(path: &Path) -> Result<(), EffectError> {
    fs::create_dir_all(path)
        .map_err(|e| sys_error(format!("creating directory `{}'", path.display()), &e))
}

fn chmod(path: &Path, mode: u32) -> Result<(), EffectError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| sys_error(format!("changing mode of `{}'", path.display()), &e))
}

fn write_file(path: &Path, contents: &[u8]) -> Result<(), EffectError> {
    fs::write(path, contents)
        .map_err(|e| sys_error(format!("writing file '{}'", path.display()), &e))
}

pub(crate) fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    std::os::unix::fs::lchown(path, uid, gid)
}

fn path_string(path: &Path) -> Result<String, EffectError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| plain(format!("path `{}' is not valid UTF-8", path.display())))
}

fn plain(message: impl Into<String>) -> EffectError {
    EffectError::new(EffectErrorKind::Helper, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personas_follow_the_daemons_rules() {
        let host = |system: &str, machine: &str| Host {
            store_dir: "/gnu/store".into(),
            tmp_root: "/tmp".into(),
            uid: 0,
            gid: 0,
            system: system.into(),
            machine: machine.into(),
            guix_program: "/bin/false".into(),
            slirp4netns: SLIRP4NETNS.into(),
        };
        let plan = |platform: &str, impersonate: bool| {
            let mut p = super::super::tests::plan_for_unit_tests();
            p.platform = platform.into();
            p.impersonate_linux_26 = impersonate;
            p
        };
        let x86 = host("x86_64-linux", "x86_64");
        assert_eq!(
            persona(&x86, &plan("x86_64-linux", false)),
            ADDR_NO_RANDOMIZE
        );
        assert_eq!(
            persona(&x86, &plan("i686-linux", false)),
            PER_LINUX32 | ADDR_NO_RANDOMIZE
        );
        assert_eq!(
            persona(&x86, &plan("i686-linux", true)),
            PER_LINUX32 | UNAME26 | ADDR_NO_RANDOMIZE
        );
        let arm = host("aarch64-linux", "aarch64");
        assert_eq!(
            persona(&arm, &plan("armhf-linux", true)),
            PER_LINUX32 | ADDR_NO_RANDOMIZE
        );
        assert!(can_build_locally("i686-linux", "x86_64-linux"));
        assert!(!can_build_locally("aarch64-linux", "x86_64-linux"));
    }

    #[test]
    fn delete_tree_removes_read_only_trees_and_missing_paths() {
        let dir = std::env::temp_dir().join(format!("guixd-os-delete-{}", std::process::id()));
        let _ = delete_tree(&dir);
        fs::create_dir_all(dir.join("a/b")).unwrap();
        fs::write(dir.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.join("a/l")).unwrap();
        fs::set_permissions(dir.join("a/b"), fs::Permissions::from_mode(0o500)).unwrap();
        fs::set_permissions(dir.join("a"), fs::Permissions::from_mode(0o000)).unwrap();
        delete_tree(&dir).unwrap();
        assert!(!dir.exists());
        delete_tree(&dir).unwrap();
    }

    #[test]
    fn delete_tree_refuses_mount_points() {
        // `/proc` is a mount point on every Linux system.
        let err = delete_tree(Path::new("/proc")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
    }
}

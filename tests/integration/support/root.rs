//! The Guix root and this test process's own corner of it.
//!
//! Keeps true: the root is found once per process (env `GUIXD_GUIX_ROOT`,
//! made ready by `tests/support/guix-root.sh`), and a missing or broken root
//! is a panic that says what to do, never a silent skip; everything this
//! process creates inside the root lives under `/tmp/guixd-it/p<pid>/`, and
//! directories left there by processes that no longer exist are removed
//! before this process makes its own; paths handed to programs are the ones
//! seen *inside* the root, and [`host`] is the only way to turn them into
//! paths on this machine.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The directory, inside the root, that holds every test process's files.
const IT_DIR: &str = "/tmp/guixd-it";

/// The Guix root, ready to use: built, bind-mounted on itself, with `/proc`,
/// `/dev` and `/sys` inside. Panics with the reason when it cannot be had.
pub fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert!(
            euid == 0,
            "the interop tests must run as root (chroot, bind mounts, namespaces); \
             effective uid is {euid}"
        );
        let script = workspace_dir().join("tests/support/guix-root.sh");
        // The script is idempotent and honours GUIXD_GUIX_ROOT: it builds the
        // root only when it is missing and (re)mounts what is not mounted.
        let out = Command::new(&script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}); the interop tests need the Guix root \
             (set GUIXD_GUIX_ROOT to an existing root or run the script by hand):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let root = PathBuf::from(printed);
        for needed in [
            "usr/bin/guix-daemon",
            "usr/bin/guix",
            "proc/self",
            "bin/busybox",
        ] {
            assert!(
                root.join(needed).exists(),
                "the Guix root {} has no {needed}; rebuild it with tests/support/guix-root.sh",
                root.display()
            );
        }
        root
    })
}

/// The workspace's top directory (the parent of `tests/`).
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// The host path of `inside`, a path as seen inside the root.
pub fn host(inside: &str) -> PathBuf {
    root().join(inside.trim_start_matches('/'))
}

/// This process's directory inside the root, created on first use after
/// removing the directories of processes that are gone.
pub fn process_dir() -> &'static str {
    static DIR: OnceLock<String> = OnceLock::new();
    DIR.get_or_init(|| {
        let top = host(IT_DIR);
        fs::create_dir_all(&top).unwrap_or_else(|e| panic!("mkdir {}: {e}", top.display()));
        remove_stale(&top);
        let dir = format!("{IT_DIR}/p{}", std::process::id());
        let host_dir = host(&dir);
        if host_dir.exists() {
            // A previous process with our pid left it; it is ours now.
            remove_tree(&host_dir);
        }
        fs::create_dir_all(&host_dir)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", host_dir.display()));
        dir
    })
}

/// A fresh name, unique in this process, for a directory under
/// [`process_dir`] (e.g. `d7`).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Removes a directory tree that may hold read-only store items: every
/// directory is made writable first, symlinks are never followed.
pub fn remove_tree(path: &Path) {
    make_writable(path);
    if let Err(e) = fs::remove_dir_all(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            panic!("cannot remove {}: {e}", path.display());
        }
    }
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

/// Removes `p<pid>` directories whose process no longer exists.
fn remove_stale(top: &Path) {
    let Ok(entries) = fs::read_dir(top) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix('p')) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            remove_tree(&entry.path());
        }
    }
}

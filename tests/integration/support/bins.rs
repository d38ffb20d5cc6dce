//! The daemon binaries under test, as programs inside the Guix root.
//!
//! Keeps true: each guixd runtime is built at most once per test process
//! (unless `GUIXD_BIN_THREADS` / `GUIXD_BIN_SMOL` name a ready binary) and
//! linked or copied into this process's directory in the root, so a daemon
//! started with `chroot` runs exactly the binary that was built; a failed
//! build is a panic carrying cargo's output.

use super::root::{host, process_dir, workspace_dir};
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// A guixd runtime, chosen at build time by a cargo feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Threads,
    Smol,
}

impl Runtime {
    /// Both runtimes, in the order tests run them.
    pub const ALL: [Runtime; 2] = [Runtime::Threads, Runtime::Smol];

    /// The runtime's name as guixd prints it.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Threads => "threads",
            Runtime::Smol => "smol",
        }
    }
}

/// The C++ daemon inside the root.
pub const CPP_DAEMON: &str = "/usr/bin/guix-daemon";

/// The static busybox inside the root (from Debian's `busybox-static`), for
/// scenarios that need a builder.
pub const BUSYBOX: &str = "/bin/busybox";

/// The guixd binary for `runtime`, as a path inside the root. Panics if
/// it cannot be built; the failure is remembered, so the other tests of
/// the process fail at once with the same message instead of building
/// again.
pub fn guixd(runtime: Runtime) -> &'static str {
    static THREADS: OnceLock<Result<String, String>> = OnceLock::new();
    static SMOL: OnceLock<Result<String, String>> = OnceLock::new();
    let cell = match runtime {
        Runtime::Threads => &THREADS,
        Runtime::Smol => &SMOL,
    };
    let result = cell.get_or_init(|| built(runtime).map(|bin| install(runtime, &bin)));
    match result {
        Ok(path) => path,
        Err(message) => panic!("{message}"),
    }
}

/// The host path of a built guixd: the one named in the environment, or a
/// fresh `cargo build`.
fn built(runtime: Runtime) -> Result<PathBuf, String> {
    let var = match runtime {
        Runtime::Threads => "GUIXD_BIN_THREADS",
        Runtime::Smol => "GUIXD_BIN_SMOL",
    };
    if let Some(given) = std::env::var_os(var) {
        let path = PathBuf::from(given);
        if !path.is_file() {
            return Err(format!("{var}={} is not a file", path.display()));
        }
        return Ok(path);
    }
    let ws = workspace_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ws).args(["build", "-p", "guixd"]);
    let target = match runtime {
        Runtime::Threads => ws.join("target"),
        Runtime::Smol => {
            let dir = ws.join("target/runtime-smol");
            cmd.args(["--no-default-features", "--features", "runtime-smol"])
                .arg("--target-dir")
                .arg(&dir);
            dir
        }
    };
    // The test binary may itself have been built with another target dir
    // variable; the paths above are the ones this build must use.
    cmd.env_remove("CARGO_TARGET_DIR");
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run cargo to build guixd: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building guixd ({}) failed:\n{}",
            runtime.name(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let bin = target.join("debug/guixd");
    if !bin.is_file() {
        return Err(format!(
            "cargo built guixd but {} is missing",
            bin.display()
        ));
    }
    Ok(bin)
}

/// Puts `bin` into this process's directory in the root; returns its path
/// inside the root.
fn install(runtime: Runtime, bin: &std::path::Path) -> String {
    let dir = format!("{}/bin", process_dir());
    let host_dir = host(&dir);
    fs::create_dir_all(&host_dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", host_dir.display()));
    let inside = format!("{dir}/guixd-{}", runtime.name());
    let dest = host(&inside);
    let _ = fs::remove_file(&dest);
    // A hard link shares the inode with cargo's output, which cargo replaces
    // (never rewrites in place) on the next build, so the link stays intact.
    if fs::hard_link(bin, &dest).is_err() {
        fs::copy(bin, &dest)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", bin.display(), dest.display()));
    }
    inside
}

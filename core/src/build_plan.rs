//! What the core tells the os layer about a build: the plan to prepare and
//! spawn a builder, and the checks to run on its outputs.
//!
//! Keeps true: this is plain data computed by the core from the derivation,
//! the settings and the database (spec 03 §2–4); the os layer decides only
//! *how* to carry it out (directories, mounts, users, system calls), never
//! *what* the builder sees beyond what is written here and what spec 03
//! fixes (the sandbox's `/etc` files, `/dev`, `/proc`, the hostname).

use crate::hash::Hash;
use crate::store_path::StorePath;
use std::collections::BTreeSet;

/// Identifies one build attempt (one round of one derivation), chosen by
/// the core, unique for the daemon's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BuildId(pub u64);

/// Identifies a child process the runtime watches (its pidfd and log pipe).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChildId(pub u64);

/// Identifies an open build log file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogId(pub u64);

/// How a builder process runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildPlan {
    /// The `.drv` being built.
    pub drv_path: StorePath,
    /// `builder` from the derivation, or the built-in builder to run.
    pub program: Program,
    /// `argv[1..]` (the os puts the builder's base name in `argv[0]`).
    pub args: Vec<String>,
    /// The complete environment, in name order, computed by the core
    /// (spec 03 §2) except for `impure_env_vars`, whose values come from the
    /// daemon's own environment, and the six build-directory variables
    /// (`NIX_BUILD_TOP`, `TMPDIR`, `TEMPDIR`, `TMP`, `TEMP`, `PWD`), which
    /// the os sets (overriding any given here).
    ///
    /// For a [`Program::Builtin`] the builder gets the *daemon's*
    /// environment instead, with only `NIX_STORE` and `_NIX_OPTIONS` taken
    /// from here and set on top of it (spec 03 §7); the derivation's own
    /// variables are not exported to `guix perform-download`.
    pub env: Vec<(String, String)>,
    /// Names whose values are taken from the daemon's environment (empty
    /// unless fixed-output).
    pub impure_env_vars: Vec<String>,
    /// Files to create in the build directory before the builder starts
    /// (`exportReferencesGraph`), name → contents.
    pub build_dir_files: Vec<(String, Vec<u8>)>,
    /// Run in the chroot sandbox (spec 03 §3.2); false with
    /// `--disable-chroot` and for built-in builders.
    pub chroot: bool,
    /// Store paths bind-mounted read-only into the chroot: the input
    /// closure (spec 03 §1.1 step 4), outputs excluded.
    pub inputs: BTreeSet<StorePath>,
    /// Extra chroot entries (`--chroot-directory`): (inside, outside).
    pub extra_chroot_dirs: Vec<(String, String)>,
    /// Fixed-output derivation: gets network access (spec 03 §3.3) and the
    /// host's `/etc/resolv.conf` etc.
    pub fixed_output: bool,
    /// The build users group (`--build-users-group`), empty for none: then
    /// the builder runs as the daemon's user, in a user namespace when in
    /// the chroot (guest uid 30001, gid 30000).
    pub build_users_group: String,
    /// The derivation's platform (`x86_64-linux`...), for the personality.
    pub platform: String,
    /// `--impersonate-linux-2.6`.
    pub impersonate_linux_26: bool,
    /// FODs may reach the host's loopback (unless `--isolate-host-loopback`).
    pub use_host_loopback: bool,
    /// The requesting client asked for build traces: a builder for a
    /// platform this machine cannot run first prints
    /// `@ unsupported-platform DRV PLATFORM`.
    pub print_build_trace: bool,
}

/// What the build process executes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Program {
    /// The derivation's builder, a path inside the store.
    Builder(String),
    /// A built-in builder (`builtin:download`, `builtin:git-download`), run
    /// through `guix perform-download DRV OUTPUT` without a chroot.
    /// `name` is the part after `builtin:` (a leading `builtin:` is
    /// tolerated); an unknown name makes the builder fail with
    /// `error: unsupported builtin function 'NAME'`. `output` is the path
    /// the download goes to (the real output, or its redirection in check
    /// mode).
    Builtin { name: String, output: StorePath },
}

/// The check of one output after a successful build (spec 03 §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputCheck {
    /// The output's id (`out`, `dev`...).
    pub id: String,
    /// Where the output must be (in the store, or in the chroot's store).
    pub path: StorePath,
    /// For fixed outputs: recursive?, expected hash and the derivation's
    /// `hashAlgo` field as written (`sha256`, `r:sha256`) for messages.
    pub fixed: Option<FixedOutput>,
}

/// The expected content of a fixed output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedOutput {
    pub recursive: bool,
    pub hash: Hash,
    pub hash_algo_field: String,
}

/// What the os layer found for one output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputFound {
    pub path: StorePath,
    pub nar_hash: Hash,
    pub nar_size: u64,
    /// The candidate paths whose hash part occurs in the output.
    pub references: BTreeSet<StorePath>,
}

/// Why an output was refused: the message is the daemon's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputRefused {
    /// ``builder for `D' failed to produce output path `P'``.
    Missing(String),
    /// Permissions, ownership, file types: ``suspicious ownership or
    /// permission on `P'; rejecting this build output``, ...
    Rejected(String),
    /// A fixed output with other content: the `@ hash-mismatch` trace line
    /// and ``hash mismatch for store item 'P'``.
    HashMismatch { trace_line: String, message: String },
}

//! Output collection after a successful build (spec 03 §4, the daemon's
//! `registerOutputs` up to the database): for each output, in the order
//! the core gave, check that it exists and that the builder left it with
//! sane ownership and permissions, check a fixed output's content hash,
//! canonicalise its metadata (spec 02 §9), measure its NAR and scan it for
//! references, and move it from the chroot into the store.
//!
//! Keeps true:
//! - a problem with what the builder produced is an [`OutputRefused`] for
//!   that output, in the daemon's words, and the other outputs are still
//!   checked; a failing system call fails the whole effect (the daemon's
//!   `SysError`s abort `registerOutputs` too);
//! - an output is moved into the store only once it is canonical (no
//!   setuid bit, no writable file, nothing owned by the build user is left)
//!   and its hash matched, so a refused fixed output never reaches the
//!   store; the move replaces what was at the destination atomically
//!   (`RENAME_EXCHANGE`), so a valid item being repaired never vanishes;
//! - nothing can change an output once it is checked: no process of the
//!   build is left, and no descriptor a process of the build opened reaches
//!   it. This rests on three things. (1) A chroot build's builder is PID 1
//!   of its own PID namespace, and the core asks for collection only after
//!   the builder's exit was reported, which the kernel does only once every
//!   other process of the namespace was killed and reaped; the network
//!   namespace is private, so no descriptor left the sandbox through a
//!   socket. (2) Under a build user, collection first kills every process
//!   of that user, as the daemon does before `registerOutputs`. (3) Fixed
//!   outputs share more with the host (slirp networking; no chroot at all
//!   for built-in builders), so — like the daemon since CVE-2024-27297 —
//!   they are replaced by a fresh copy (new inodes, nothing writable by
//!   others) that no earlier descriptor reaches; so is every output of a
//!   build run without chroot under a build user, whose descriptors may
//!   have been passed to other users' processes. A build without chroot
//!   and without build user ran as the daemon's own user, whose processes
//!   may write to the store anyway: nothing here can protect against them
//!   (the builder's process group is killed by `finish`, after
//!   collection);
//! - hash parts are searched in the NAR exactly as it is hashed (one pass,
//!   see `refscan.rs`), so the references are those of the registered
//!   content.

use super::refscan::{ContentHash, RefScanner, measure_tree};
use super::{BuildInfo, Builds};
use crate::files::{canonicalise_timestamp_and_permissions, delete_path};
use crate::locks::sys_error;
use guixd_core::build_plan::{BuildId, OutputCheck, OutputFound, OutputRefused};
use guixd_core::effect::{EffectError, EffectErrorKind, EffectOutput, EffectResult};
use guixd_core::hash::HashAlgo;
use guixd_core::store_path::{HASH_PART_LEN, StorePath};
use rustix::fs::{CWD, RenameFlags};
use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::fs::{self, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

impl Builds {
    /// Checks, canonicalises, measures and moves the outputs of `build`
    /// (spec 03 §4): one result per output, in the order given.
    pub fn collect_outputs(
        &self,
        build: BuildId,
        outputs: &[OutputCheck],
        candidates: &BTreeSet<StorePath>,
        keep_in_chroot: bool,
    ) -> EffectResult {
        let info = self.info(build).ok_or_else(|| {
            EffectError::new(
                EffectErrorKind::Invalid,
                format!("guixd bug: unknown build {}", build.0),
            )
        })?;
        let results = collect(&info, outputs, candidates, keep_in_chroot)?;
        Ok(EffectOutput::Outputs(results))
    }
}

/// The work of [`Builds::collect_outputs`] for a known build. Files end up
/// owned by the daemon's effective uid and gid, as the daemon's
/// `canonicalisePathMetaData` leaves them.
pub(crate) fn collect(
    info: &BuildInfo,
    outputs: &[OutputCheck],
    candidates: &BTreeSet<StorePath>,
    keep_in_chroot: bool,
) -> Result<Vec<Result<OutputFound, OutputRefused>>, EffectError> {
    // What the daemon does at this point too: no process of the build user
    // may live on to change an output while it is checked and measured.
    // In chroot mode the PID namespace already saw to that.
    if let Some((uid, _)) = info.build_user {
        super::users::kill_user(uid)?;
    }
    let mut ctx = Collection {
        info,
        candidates,
        keep_in_chroot,
        owner: (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        ),
        inodes_seen: HashSet::new(),
    };
    let mut results = Vec::with_capacity(outputs.len());
    for check in outputs {
        match ctx.collect_one(check) {
            Ok(found) => results.push(Ok(found)),
            Err(Failure::Refused(refused)) => results.push(Err(refused)),
            Err(Failure::System(e)) => return Err(e),
        }
    }
    Ok(results)
}

/// Why one output could not be collected.
enum Failure {
    /// The builder's fault: the output is refused.
    Refused(OutputRefused),
    /// A system call failed.
    System(EffectError),
}

impl From<EffectError> for Failure {
    fn from(e: EffectError) -> Failure {
        Failure::System(e)
    }
}

fn rejected(message: String) -> Failure {
    Failure::Refused(OutputRefused::Rejected(message))
}

/// The state shared by the outputs of one collection.
struct Collection<'a> {
    info: &'a BuildInfo,
    candidates: &'a BTreeSet<StorePath>,
    keep_in_chroot: bool,
    /// The daemon's effective uid and gid.
    owner: (u32, u32),
    /// Inodes canonicalised so far in this collection: a file not owned by
    /// the build user is accepted only as a hard link to one of them, so
    /// outputs may share files but never adopt a file of someone else's
    /// (`ln /etc/shadow $out`). Filled only under a build user.
    inodes_seen: HashSet<(u64, u64)>,
}

impl Collection<'_> {
    fn collect_one(&mut self, check: &OutputCheck) -> Result<OutputFound, Failure> {
        let path = &check.path;
        let actual = self.actual_path(path);
        if lstat_if_exists(&actual)?.is_none() {
            return Err(Failure::Refused(OutputRefused::Missing(format!(
                "builder for `{}' failed to produce output path `{path}'",
                self.info.drv_path
            ))));
        }
        if check.fixed.is_some() || self.copy_every_output() {
            fresh_copy(&actual)?;
        }
        let st = lstat(&actual)?;
        let writable_by_others = !st.file_type().is_symlink() && st.mode() & 0o022 != 0;
        let foreign = self.info.build_user.is_some_and(|(uid, _)| st.uid() != uid);
        if writable_by_others || foreign {
            return Err(rejected(format!(
                "suspicious ownership or permission on `{path}'; rejecting this build output"
            )));
        }
        let content = match &check.fixed {
            None => ContentHash::None,
            Some(fixed) if fixed.recursive => match fixed.hash.algo() {
                // The NAR's SHA-256 is measured anyway.
                HashAlgo::Sha256 => ContentHash::None,
                algo => ContentHash::Nar(algo),
            },
            Some(fixed) => {
                if !st.file_type().is_file() || st.mode() & 0o100 != 0 {
                    return Err(rejected(format!(
                        "output path `{path}' should be a non-executable regular file"
                    )));
                }
                ContentHash::Flat(fixed.hash.algo())
            }
        };
        self.canonicalise(&actual)?;

        let mut scanner = RefScanner::new(
            self.candidates
                .iter()
                .filter_map(|c| c.hash_part())
                .map(str::as_bytes),
        );
        let measured = measure_tree(&actual, &mut scanner, content)?;
        if let Some(fixed) = &check.fixed {
            let got = measured.content_hash.unwrap_or(measured.nar_hash);
            if got != fixed.hash {
                return Err(Failure::Refused(OutputRefused::HashMismatch {
                    trace_line: format!(
                        "@ hash-mismatch {path} {} {} {}",
                        fixed.hash_algo_field,
                        fixed.hash.to_report_string(),
                        got.to_report_string()
                    ),
                    message: format!("hash mismatch for store item '{path}'"),
                }));
            }
        }
        let found: BTreeSet<&[u8; HASH_PART_LEN]> = scanner.found().collect();
        let references = self
            .candidates
            .iter()
            .filter(|c| {
                c.hash_part()
                    .and_then(|h| <&[u8; HASH_PART_LEN]>::try_from(h.as_bytes()).ok())
                    .is_some_and(|h| found.contains(h))
            })
            .cloned()
            .collect();

        if self.info.chroot_root.is_some() && !self.keep_in_chroot {
            move_into_store(&actual, Path::new(path.as_str()))?;
        }
        Ok(OutputFound {
            path: path.clone(),
            nar_hash: measured.nar_hash,
            nar_size: measured.nar_size,
            references,
        })
    }

    /// Where the builder left `path`: inside the chroot when there is one.
    fn actual_path(&self, path: &StorePath) -> PathBuf {
        match &self.info.chroot_root {
            Some(root) => {
                let mut s = root.clone().into_os_string();
                s.push(path.as_str());
                PathBuf::from(s)
            }
            None => PathBuf::from(path.as_str()),
        }
    }

    /// Whether even non-fixed outputs need a fresh copy (see the module
    /// comment): without a chroot, under a build user.
    fn copy_every_output(&self) -> bool {
        self.info.chroot_root.is_none() && self.info.build_user.is_some()
    }

    /// The daemon's `canonicalisePathMetaData` with the build user's uid:
    /// canonical modes and mtimes, the daemon's owner, only supported file
    /// types, nothing of another user's adopted.
    fn canonicalise(&mut self, root: &Path) -> Result<(), Failure> {
        let from_uid = self.info.build_user.map(|(uid, _)| uid);
        let mut pending = vec![root.to_path_buf()];
        while let Some(path) = pending.pop() {
            let st = lstat(&path)?;
            let ft = st.file_type();
            if !(ft.is_file() || ft.is_dir() || ft.is_symlink()) {
                return Err(rejected(format!(
                    "file `{}' has an unsupported type",
                    path.display()
                )));
            }
            if let Some(uid) = from_uid {
                let inode = (st.dev(), st.ino());
                if st.uid() != uid {
                    // Canonicalised already through another name.
                    if ft.is_dir() || !self.inodes_seen.contains(&inode) {
                        return Err(rejected(format!(
                            "invalid ownership on file `{}'",
                            path.display()
                        )));
                    }
                    continue;
                }
                self.inodes_seen.insert(inode);
            }
            canonicalise_timestamp_and_permissions(&path, &st)?;
            if st.uid() != self.owner.0 {
                std::os::unix::fs::lchown(&path, Some(self.owner.0), Some(self.owner.1)).map_err(
                    |e| {
                        sys_error(
                            format_args!(
                                "changing owner of `{}' to {}",
                                path.display(),
                                self.owner.0
                            ),
                            &e,
                        )
                    },
                )?;
            }
            if ft.is_dir() {
                for entry in read_dir(&path)? {
                    pending.push(path.join(entry));
                }
            }
        }
        if lstat(root)?.uid() != self.owner.0 {
            return Err(rejected(format!(
                "wrong ownership of top-level store path `{}'",
                root.display()
            )));
        }
        Ok(())
    }
}

/// Replaces the tree at `output` by a copy of itself (`<output>.tmp`, then
/// renamed back), so that no descriptor opened before reaches the files
/// registered. Like the daemon's, the copy keeps owners and the owner's
/// permission bits, gives directories 0755, leaves nothing writable by
/// group or others (the daemon's umask does that for it), and deletes the
/// original as it goes, so the disk holds at most one extra file at a time.
fn fresh_copy(output: &Path) -> Result<(), Failure> {
    let mut pivot = output.as_os_str().to_owned();
    pivot.push(".tmp");
    let pivot = PathBuf::from(pivot);
    delete_path(&pivot)?;
    if let Err(e) = copy_tree(output, &pivot) {
        // Whatever is left is refused with the output, or deleted with the
        // chroot; the copy must not linger in the store.
        let _ = delete_path(&pivot);
        return Err(e);
    }
    fs::rename(&pivot, output).map_err(|e| {
        sys_error(
            format_args!("renaming `{}' to `{}'", pivot.display(), output.display()),
            &e,
        )
        .into()
    })
}

/// One directory being copied: its remaining entries, and the owner to give
/// the copy once it is complete.
struct CopyFrame {
    src: PathBuf,
    dst: PathBuf,
    names: Vec<OsString>,
    owner: (u32, u32),
}

/// Copies `src` to the new `dst`, deleting `src` on the way.
fn copy_tree(src: &Path, dst: &Path) -> Result<(), Failure> {
    let mut stack = Vec::new();
    copy_node(src, dst, &mut stack)?;
    while let Some(top) = stack.last_mut() {
        match top.names.pop() {
            Some(name) => {
                let (s, d) = (top.src.join(&name), top.dst.join(&name));
                copy_node(&s, &d, &mut stack)?;
            }
            None => {
                let Some(frame) = stack.pop() else { break };
                // As in the daemon, a failure to give back the owner is
                // not fatal: the ownership check that follows tells.
                let _ =
                    std::os::unix::fs::lchown(&frame.dst, Some(frame.owner.0), Some(frame.owner.1));
                fs::remove_dir(&frame.src).map_err(|e| {
                    sys_error(format_args!("cannot unlink `{}'", frame.src.display()), &e)
                })?;
            }
        }
    }
    Ok(())
}

/// Copies one node: a file or symlink completely (and removes it), a
/// directory's start (its entries follow from the frame pushed).
fn copy_node(src: &Path, dst: &Path, stack: &mut Vec<CopyFrame>) -> Result<(), Failure> {
    let st = fs::symlink_metadata(src)
        .map_err(|e| sys_error(format_args!("statting file `{}'", src.display()), &e))?;
    let ft = st.file_type();
    let owner = (st.uid(), st.gid());
    if ft.is_file() {
        let mut from = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(src)
            .map_err(|e| sys_error(format_args!("opening `{}'", src.display()), &e))?;
        // Not writable by anyone else, nor setuid, even for a moment: the
        // daemon's copy gets the same through its umask and the chown.
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(st.mode() & 0o755)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dst)
            .map_err(|e| sys_error(format_args!("opening `{}'", dst.display()), &e))?;
        // `io::copy` between files uses `copy_file_range` where it can.
        io::copy(&mut from, &mut to).map_err(|e| {
            sys_error(
                format_args!("copying `{}' to `{}'", src.display(), dst.display()),
                &e,
            )
        })?;
        let _ = std::os::unix::fs::fchown(&to, Some(owner.0), Some(owner.1));
        remove_file(src)
    } else if ft.is_symlink() {
        let target = fs::read_link(src)
            .map_err(|e| sys_error(format_args!("reading symlink `{}'", src.display()), &e))?;
        std::os::unix::fs::symlink(&target, dst)
            .map_err(|e| sys_error(format_args!("creating symlink `{}'", dst.display()), &e))?;
        let _ = std::os::unix::fs::lchown(dst, Some(owner.0), Some(owner.1));
        remove_file(src)
    } else if ft.is_dir() {
        fs::DirBuilder::new()
            .mode(0o755)
            .create(dst)
            .map_err(|e| sys_error(format_args!("creating directory `{}'", dst.display()), &e))?;
        // Entries can only be removed from a writable directory.
        if st.mode() & 0o700 != 0o700 {
            fs::set_permissions(
                src,
                fs::Permissions::from_mode((st.mode() & 0o7777) | 0o700),
            )
            .map_err(|e| {
                sys_error(
                    format_args!("making `{}' directory writable", src.display()),
                    &e,
                )
            })?;
        }
        let mut names = read_dir(src)?;
        names.sort_unstable_by(|a, b| b.cmp(a));
        stack.push(CopyFrame {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
            names,
            owner,
        });
        Ok(())
    } else {
        Err(rejected(format!(
            "refusing to copy irregular file `{}'",
            src.display()
        )))
    }
}

/// Renames the canonical output `actual` (in the chroot) to `dest` (in the
/// store). Something already at `dest` (a leftover of an earlier attempt,
/// or the valid item being repaired) is swapped out atomically and then
/// deleted; where the file system cannot swap, it is deleted first.
fn move_into_store(actual: &Path, dest: &Path) -> Result<(), EffectError> {
    let st = lstat(actual)?;
    let is_dir = st.file_type().is_dir();
    if is_dir {
        // Moving a directory to another parent rewrites its `..` entry,
        // which needs write permission on it.
        let mode = (st.mode() & 0o7777) | 0o700;
        fs::set_permissions(actual, fs::Permissions::from_mode(mode)).map_err(|e| {
            sys_error(
                format_args!(
                    "making `{}' writable for move from chroot to store",
                    actual.display()
                ),
                &e,
            )
        })?;
    }
    let mut swapped = false;
    if let Some(old) = lstat_if_exists(dest)? {
        // The old directory changes parent too, which needs write
        // permission on it; if the swap fails all the same (a file system
        // without `RENAME_EXCHANGE`), the old item is deleted first.
        if old.file_type().is_dir() && old.mode() & 0o200 == 0 {
            let _ = fs::set_permissions(
                dest,
                fs::Permissions::from_mode((old.mode() & 0o7777) | 0o700),
            );
        }
        match rustix::fs::renameat_with(CWD, actual, CWD, dest, RenameFlags::EXCHANGE) {
            Ok(()) => swapped = true,
            Err(_) => {
                delete_path(dest)?;
            }
        }
    }
    if swapped {
        // The old contents are now at `actual`, inside the chroot.
        delete_path(actual)?;
    } else {
        fs::rename(actual, dest).map_err(|e| {
            sys_error(
                format_args!(
                    "moving build output `{}' from the chroot to the store",
                    dest.display()
                ),
                &e,
            )
        })?;
    }
    if is_dir {
        fs::set_permissions(dest, fs::Permissions::from_mode(st.mode() & 0o7777)).map_err(|e| {
            sys_error(
                format_args!("restoring permissions on directory `{}'", actual.display()),
                &e,
            )
        })?;
    }
    Ok(())
}

fn lstat(path: &Path) -> Result<Metadata, EffectError> {
    fs::symlink_metadata(path).map_err(|e| {
        sys_error(
            format_args!("getting attributes of path `{}'", path.display()),
            &e,
        )
    })
}

fn lstat_if_exists(path: &Path) -> Result<Option<Metadata>, EffectError> {
    match fs::symlink_metadata(path) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(sys_error(
            format_args!("getting attributes of path `{}'", path.display()),
            &e,
        )),
    }
}

/// The names in a directory.
fn read_dir(dir: &Path) -> Result<Vec<OsString>, EffectError> {
    let entries = fs::read_dir(dir)
        .map_err(|e| sys_error(format_args!("opening directory `{}'", dir.display()), &e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|e| sys_error(format_args!("reading directory `{}'", dir.display()), &e))?;
        names.push(entry.file_name());
    }
    Ok(names)
}

fn remove_file(path: &Path) -> Result<(), Failure> {
    fs::remove_file(path)
        .map_err(|e| sys_error(format_args!("cannot unlink `{}'", path.display()), &e).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::{Files, Owner, STORE_MTIME_S};
    use guixd_core::build_plan::FixedOutput;
    use guixd_core::effect::DumpId;
    use guixd_core::hash::Hash;
    use guixd_core::{StoreDir, hex};
    use std::io::Write;
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A store and a build's chroot in a fresh directory, deleted when
    /// dropped.
    struct Sandbox {
        root: PathBuf,
        store: PathBuf,
        dir: StoreDir,
        info: BuildInfo,
    }

    impl Drop for Sandbox {
        fn drop(&mut self) {
            let _ = delete_path(&self.root);
        }
    }

    fn sandbox(tag: &str) -> Sandbox {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let root =
            std::env::temp_dir().join(format!("guixd-os-outputs-{}-{n}-{tag}", std::process::id()));
        let _ = delete_path(&root);
        let store = root.join("store");
        fs::create_dir_all(&store).unwrap();
        let dir = StoreDir::new(store.to_str().unwrap()).unwrap();
        let drv_path = path_in(&dir, "hello.drv");
        let chroot_root = PathBuf::from(format!("{}.chroot/top", drv_path.as_str()));
        let mut chroot_store = chroot_root.clone().into_os_string();
        chroot_store.push(store.as_os_str());
        fs::create_dir_all(&chroot_store).unwrap();
        Sandbox {
            info: BuildInfo {
                drv_path,
                chroot_root: Some(chroot_root),
                build_user: None,
                build_dir: root.join("build"),
                work_dir: root.join("build"),
            },
            root,
            store,
            dir,
        }
    }

    fn path_in(dir: &StoreDir, name: &str) -> StorePath {
        dir.make_store_path("source", &Hash::sha256(name.as_bytes()), name)
            .unwrap()
    }

    impl Sandbox {
        fn path(&self, name: &str) -> StorePath {
            path_in(&self.dir, name)
        }

        /// Where the builder writes `path`.
        fn in_chroot(&self, path: &StorePath) -> PathBuf {
            let mut s = self.info.chroot_root.clone().unwrap().into_os_string();
            s.push(path.as_str());
            PathBuf::from(s)
        }

        fn collect(
            &self,
            outputs: &[OutputCheck],
            candidates: &[&StorePath],
        ) -> Vec<Result<OutputFound, OutputRefused>> {
            let candidates = candidates.iter().map(|p| (*p).clone()).collect();
            collect(&self.info, outputs, &candidates, false).unwrap()
        }

        /// The NAR hash and size of a store item, from the dump effect.
        fn dumped(&self, path: &StorePath) -> (Hash, u64) {
            let files = Files::at(&self.store, owner());
            let dump = DumpId(1);
            files.dump_start(dump, path).unwrap();
            loop {
                match files.dump_next(dump, 1 << 16).unwrap() {
                    EffectOutput::DumpChunk { end: Some(end), .. } => return end,
                    EffectOutput::DumpChunk { .. } => {}
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    fn owner() -> Owner {
        Owner::new(
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn output(id: &str, path: &StorePath) -> OutputCheck {
        OutputCheck {
            id: id.to_owned(),
            path: path.clone(),
            fixed: None,
        }
    }

    fn fixed(path: &StorePath, recursive: bool, hash: Hash) -> OutputCheck {
        let algo = hash.algo().name();
        OutputCheck {
            id: "out".to_owned(),
            path: path.clone(),
            fixed: Some(FixedOutput {
                recursive,
                hash,
                hash_algo_field: if recursive {
                    format!("r:{algo}")
                } else {
                    algo.to_owned()
                },
            }),
        }
    }

    fn write_file(path: &Path, contents: &[u8], mode: u32) {
        fs::write(path, contents).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mkdir(path: &Path, mode: u32) {
        fs::create_dir(path).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn hash_part(path: &StorePath) -> &[u8] {
        path.hash_part().unwrap().as_bytes()
    }

    /// Every node below `root`, with its lstat.
    fn walk(root: &Path) -> Vec<(PathBuf, Metadata)> {
        let mut all = Vec::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(p) = pending.pop() {
            let st = fs::symlink_metadata(&p).unwrap();
            if st.is_dir() {
                for e in fs::read_dir(&p).unwrap() {
                    pending.push(e.unwrap().path());
                }
            }
            all.push((p, st));
        }
        all
    }

    fn assert_canonical(root: &Path) {
        for (p, st) in walk(root) {
            assert_eq!(st.mtime(), STORE_MTIME_S, "{}", p.display());
            assert_eq!(st.uid(), owner().uid, "{}", p.display());
            if !st.file_type().is_symlink() {
                let mode = st.mode() & 0o7777;
                assert!(mode == 0o444 || mode == 0o555, "{}: {mode:o}", p.display());
                if st.is_dir() {
                    assert_eq!(mode, 0o555, "{}", p.display());
                }
            }
        }
    }

    fn refused(result: &Result<OutputFound, OutputRefused>) -> &OutputRefused {
        match result {
            Err(r) => r,
            Ok(found) => panic!("accepted: {found:?}"),
        }
    }

    fn rejected_message(result: &Result<OutputFound, OutputRefused>) -> &str {
        match refused(result) {
            OutputRefused::Rejected(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_built_tree_is_collected_into_the_store() {
        let sb = sandbox("tree");
        let out = sb.path("hello");
        let dev = sb.path("hello-dev");
        let input = sb.path("glibc");
        let unused = sb.path("unused");
        let not_candidate = sb.path("not-a-candidate");

        let o = sb.in_chroot(&out);
        mkdir(&o, 0o755);
        mkdir(&o.join("bin"), 0o700);
        let mut program = b"\x7fELF\x00\x00".to_vec();
        program.extend_from_slice(format!("{}/lib/libc.so.6\x00", input.as_str()).as_bytes());
        program.extend_from_slice(format!("{}\x00", dev.as_str()).as_bytes());
        program.extend_from_slice(hash_part(&not_candidate));
        write_file(&o.join("bin/hello"), &program, 0o4775 & !0o020);
        write_file(&o.join("README"), b"no references here\n", 0o600);
        symlink(format!("{}/bin/hello", out.as_str()), o.join("self-link")).unwrap();
        mkdir(&o.join("empty"), 0o777 & !0o022);

        let d = sb.in_chroot(&dev);
        mkdir(&d, 0o755);
        write_file(
            &d.join("hello.pc"),
            format!("prefix={}\n", out.as_str()).as_bytes(),
            0o644,
        );

        let results = sb.collect(
            &[output("out", &out), output("dev", &dev)],
            &[&out, &dev, &input, &unused],
        );
        let found_out = results[0].as_ref().unwrap();
        let found_dev = results[1].as_ref().unwrap();
        assert_eq!(
            found_out.references,
            BTreeSet::from([out.clone(), dev.clone(), input.clone()])
        );
        assert_eq!(found_dev.references, BTreeSet::from([out.clone()]));

        // Moved out of the chroot, canonical, and measured as dumped.
        for (found, path) in [(found_out, &out), (found_dev, &dev)] {
            assert!(!sb.in_chroot(path).exists());
            let store_item = Path::new(path.as_str());
            assert_canonical(store_item);
            assert_eq!(found.path, *path);
            assert_eq!((found.nar_hash, found.nar_size), sb.dumped(path));
        }
        let st = fs::metadata(Path::new(out.as_str()).join("bin/hello")).unwrap();
        assert_eq!(
            st.mode() & 0o7777,
            0o555,
            "setuid stripped, executable kept"
        );
        let st = fs::metadata(Path::new(out.as_str()).join("README")).unwrap();
        assert_eq!(st.mode() & 0o7777, 0o444);
    }

    #[test]
    fn references_straddling_read_buffers_are_found() {
        let sb = sandbox("straddle");
        let out = sb.path("big");
        let a = sb.path("a");
        let b = sb.path("b");
        let c = sb.path("c");
        let o = sb.in_chroot(&out);
        mkdir(&o, 0o755);
        // `a` straddles the first read-buffer border of the file, `b` the
        // second; `c` is cut short by one character at the end.
        let read = crate::build::refscan::MEASURE_READ_BYTES;
        let mut contents = vec![0u8; read - 13];
        contents.extend_from_slice(hash_part(&a));
        contents.resize(2 * read - 1, b'.');
        contents.extend_from_slice(hash_part(&b));
        contents.extend_from_slice(b"\n");
        contents.extend_from_slice(&hash_part(&c)[..31]);
        write_file(&o.join("data"), &contents, 0o644);
        let results = sb.collect(&[output("out", &out)], &[&out, &a, &b, &c]);
        let found = results[0].as_ref().unwrap();
        assert_eq!(found.references, BTreeSet::from([a, b]));
        assert_eq!((found.nar_hash, found.nar_size), sb.dumped(&out));
    }

    #[test]
    fn no_invented_references() {
        let sb = sandbox("invented");
        let out = sb.path("out");
        let a = sb.path("a");
        let other = sb.path("other");
        let o = sb.in_chroot(&out);
        let mut contents = hash_part(&a)[..31].to_vec();
        contents.push(b'-');
        contents.extend_from_slice(&hash_part(&a)[1..]);
        contents.push(b'\n');
        contents.extend_from_slice(other.as_str().as_bytes());
        write_file(&o, &contents, 0o644);
        let results = sb.collect(&[output("out", &out)], &[&out, &a]);
        assert_eq!(results[0].as_ref().unwrap().references, BTreeSet::new());
        // A regular file output ends up 0444 in the store.
        assert_canonical(Path::new(out.as_str()));
    }

    #[test]
    fn a_missing_output_is_refused_and_the_others_collected() {
        let sb = sandbox("missing");
        let out = sb.path("out");
        let doc = sb.path("out-doc");
        fs::write(sb.in_chroot(&doc), b"doc\n").unwrap();
        let results = sb.collect(&[output("out", &out), output("doc", &doc)], &[]);
        assert_eq!(
            refused(&results[0]),
            &OutputRefused::Missing(format!(
                "builder for `{}' failed to produce output path `{}'",
                sb.info.drv_path, out
            ))
        );
        assert!(results[1].is_ok());
    }

    #[test]
    fn group_or_world_writable_outputs_are_refused() {
        let sb = sandbox("writable");
        let a = sb.path("a");
        let b = sb.path("b");
        let c = sb.path("c");
        mkdir(&sb.in_chroot(&a), 0o775);
        write_file(&sb.in_chroot(&b), b"x", 0o646);
        // Symlinks are exempt (their mode means nothing).
        symlink("/nowhere", sb.in_chroot(&c)).unwrap();
        let results = sb.collect(&[output("a", &a), output("b", &b), output("c", &c)], &[]);
        for (r, p) in [(&results[0], &a), (&results[1], &b)] {
            assert_eq!(
                rejected_message(r),
                format!("suspicious ownership or permission on `{p}'; rejecting this build output")
            );
        }
        assert!(results[2].is_ok());
        // Refused outputs stay in the chroot.
        assert!(sb.in_chroot(&a).exists() && !Path::new(a.as_str()).exists());
    }

    #[test]
    fn flat_fixed_outputs() {
        let sb = sandbox("flat");
        let contents = b"the tarball\n";
        let good = sb.path("good.tar.gz");
        write_file(&sb.in_chroot(&good), contents, 0o644);
        let results = sb.collect(
            &[fixed(
                &good,
                false,
                Hash::digest(HashAlgo::Sha256, contents),
            )],
            &[&good],
        );
        let found = results[0].as_ref().unwrap();
        assert_eq!((found.nar_hash, found.nar_size), sb.dumped(&good));

        // A mismatch with MD5 reports in hex, and the output stays out of
        // the store.
        let bad = sb.path("bad.tar.gz");
        write_file(&sb.in_chroot(&bad), contents, 0o644);
        let expected = Hash::digest(HashAlgo::Md5, b"something else");
        let results = sb.collect(&[fixed(&bad, false, expected)], &[]);
        let actual = Hash::digest(HashAlgo::Md5, contents);
        assert_eq!(
            refused(&results[0]),
            &OutputRefused::HashMismatch {
                trace_line: format!(
                    "@ hash-mismatch {bad} md5 {} {}",
                    hex::encode(expected.as_bytes()),
                    hex::encode(actual.as_bytes())
                ),
                message: format!("hash mismatch for store item '{bad}'"),
            }
        );
        assert!(!Path::new(bad.as_str()).exists());
    }

    #[test]
    fn flat_fixed_outputs_must_be_plain_files() {
        let sb = sandbox("flat-kind");
        let exec = sb.path("exec");
        let dir = sb.path("dir");
        write_file(&sb.in_chroot(&exec), b"#!/bin/sh\n", 0o755);
        mkdir(&sb.in_chroot(&dir), 0o755);
        for p in [&exec, &dir] {
            let results = sb.collect(&[fixed(p, false, Hash::sha256(b""))], &[]);
            assert_eq!(
                rejected_message(&results[0]),
                format!("output path `{p}' should be a non-executable regular file")
            );
        }
    }

    #[test]
    fn recursive_fixed_outputs() {
        let sb = sandbox("recursive");
        let make = |p: &StorePath| {
            let o = sb.in_chroot(p);
            mkdir(&o, 0o755);
            write_file(&o.join("configure"), b"#!/bin/sh\nexit 0\n", 0o755);
            symlink("configure", o.join("link")).unwrap();
        };
        // The expected hash is that of the canonical tree's NAR.
        let reference = sb.path("reference");
        make(&reference);
        let found = sb.collect(&[output("out", &reference)], &[]);
        let nar_sha256 = found[0].as_ref().unwrap().nar_hash;
        let mut scanner = RefScanner::new([]);
        let nar_sha1 = measure_tree(
            Path::new(reference.as_str()),
            &mut scanner,
            ContentHash::Nar(HashAlgo::Sha1),
        )
        .unwrap()
        .content_hash
        .unwrap();

        let good = sb.path("good");
        make(&good);
        let good1 = sb.path("good1");
        make(&good1);
        let results = sb.collect(
            &[
                fixed(&good, true, nar_sha256),
                fixed(&good1, true, nar_sha1),
            ],
            &[],
        );
        assert_eq!(results[0].as_ref().unwrap().nar_hash, nar_sha256);
        assert_eq!(results[1].as_ref().unwrap().nar_hash, nar_sha256);

        let bad = sb.path("bad");
        make(&bad);
        fs::write(sb.in_chroot(&bad).join("extra"), b"").unwrap();
        let results = sb.collect(&[fixed(&bad, true, nar_sha256)], &[]);
        let OutputRefused::HashMismatch {
            trace_line,
            message,
        } = refused(&results[0])
        else {
            panic!("{results:?}")
        };
        let fields: Vec<&str> = trace_line.split(' ').collect();
        assert_eq!(
            &fields[..4],
            ["@", "hash-mismatch", bad.as_str(), "r:sha256"]
        );
        assert_eq!(fields[4], nar_sha256.to_base32());
        assert_eq!(fields[5].len(), 52);
        assert_ne!(fields[5], fields[4]);
        assert_eq!(fields.len(), 6);
        assert_eq!(message, &format!("hash mismatch for store item '{bad}'"));
    }

    /// The fresh copy of a fixed output: a descriptor the builder left open
    /// writes into a file nobody uses any more.
    #[test]
    fn fixed_outputs_are_copied_away_from_open_descriptors() {
        let sb = sandbox("fresh");
        let contents = b"source code\n";
        let out = sb.path("source.tar");
        write_file(&sb.in_chroot(&out), contents, 0o644);
        let mut leaked = OpenOptions::new()
            .write(true)
            .open(sb.in_chroot(&out))
            .unwrap();
        let old_inode = leaked.metadata().unwrap().ino();
        let results = sb.collect(
            &[fixed(&out, false, Hash::digest(HashAlgo::Sha256, contents))],
            &[],
        );
        assert!(results[0].is_ok());
        leaked.write_all(b"malicious").unwrap();
        let st = fs::metadata(out.as_str()).unwrap();
        assert_ne!(st.ino(), old_inode);
        assert_eq!(fs::read(out.as_str()).unwrap(), contents);
        assert!(!Path::new(&format!("{}.tmp", sb.in_chroot(&out).display())).exists());
    }

    /// The copy of a fixed output refuses what it cannot copy, in the
    /// daemon's words, and (like the daemon's under its umask) leaves
    /// nothing group- or world-writable to complain about.
    #[test]
    fn fixed_output_copies() {
        let sb = sandbox("fixed-copy");
        let out = sb.path("src");
        let o = sb.in_chroot(&out);
        mkdir(&o, 0o777);
        write_file(&o.join("f"), b"x", 0o666);
        let fifo = o.join("pipe");
        rustix::fs::mknodat(
            CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let results = sb.collect(&[fixed(&out, true, Hash::sha256(b""))], &[]);
        assert_eq!(
            rejected_message(&results[0]),
            format!("refusing to copy irregular file `{}'", fifo.display())
        );
        assert!(!Path::new(&format!("{}.tmp", o.display())).exists());

        let out = sb.path("src2");
        let o = sb.in_chroot(&out);
        mkdir(&o, 0o777);
        write_file(&o.join("f"), b"x", 0o666);
        let reference = sb.path("reference");
        let r = sb.in_chroot(&reference);
        mkdir(&r, 0o755);
        write_file(&r.join("f"), b"x", 0o644);
        let found = sb.collect(&[output("out", &reference)], &[]);
        let nar_hash = found[0].as_ref().unwrap().nar_hash;
        let results = sb.collect(&[fixed(&out, true, nar_hash)], &[]);
        assert_eq!(results[0].as_ref().unwrap().nar_hash, nar_hash);
        assert_canonical(Path::new(out.as_str()));
    }

    #[test]
    fn device_files_are_rejected() {
        let sb = sandbox("device");
        let out = sb.path("out");
        let o = sb.in_chroot(&out);
        mkdir(&o, 0o755);
        let fifo = o.join("fifo");
        rustix::fs::mknodat(
            CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let results = sb.collect(&[output("out", &out)], &[]);
        assert_eq!(
            rejected_message(&results[0]),
            format!("file `{}' has an unsupported type", fifo.display())
        );
        if is_root() {
            fs::remove_file(&fifo).unwrap();
            let null = o.join("null");
            rustix::fs::mknodat(
                CWD,
                &null,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::from_raw_mode(0o644),
                rustix::fs::makedev(1, 3),
            )
            .unwrap();
            let results = sb.collect(&[output("out", &out)], &[]);
            assert_eq!(
                rejected_message(&results[0]),
                format!("file `{}' has an unsupported type", null.display())
            );
        }
    }

    #[test]
    fn check_mode_leaves_the_output_in_the_chroot() {
        let sb = sandbox("check");
        let out = sb.path("out");
        let o = sb.in_chroot(&out);
        mkdir(&o, 0o755);
        write_file(&o.join("f"), b"x", 0o644);
        let candidates = BTreeSet::new();
        let results = collect(&sb.info, &[output("out", &out)], &candidates, true).unwrap();
        let found = results[0].as_ref().unwrap();
        assert!(!Path::new(out.as_str()).exists());
        assert_canonical(&o);
        // Fourteen short tokens of 16 bytes, `nix-archive-1` and
        // `directory` of 24, and the contents: a size word and `x` padded.
        assert_eq!(found.nar_size, 14 * 16 + 2 * 24 + (8 + 8));
    }

    #[test]
    fn a_leftover_at_the_destination_is_replaced() {
        let sb = sandbox("leftover");
        let out = sb.path("out");
        let dest = Path::new(out.as_str());
        mkdir(dest, 0o755);
        write_file(&dest.join("stale"), b"old", 0o444);
        fs::set_permissions(dest, fs::Permissions::from_mode(0o555)).unwrap();
        let o = sb.in_chroot(&out);
        mkdir(&o, 0o755);
        write_file(&o.join("fresh"), b"new", 0o644);
        let results = sb.collect(&[output("out", &out)], &[]);
        assert!(results[0].is_ok());
        assert!(dest.join("fresh").exists() && !dest.join("stale").exists());
        assert!(!o.exists());
    }

    #[test]
    fn without_chroot_the_output_is_canonicalised_in_place() {
        let mut sb = sandbox("no-chroot");
        sb.info.chroot_root = None;
        let out = sb.path("out");
        let dest = Path::new(out.as_str());
        mkdir(dest, 0o755);
        write_file(&dest.join("f"), b"x", 0o600);
        let results = sb.collect(&[output("out", &out)], &[&out]);
        assert!(results[0].is_ok());
        assert_canonical(dest);
    }

    /// Build-user ownership rules (need root to give files away).
    #[test]
    fn build_user_ownership() {
        if !is_root() {
            eprintln!("skipped: needs root to chown");
            return;
        }
        const BUILD_UID: u32 = 30_123;
        let mut sb = sandbox("users");
        sb.info.build_user = Some((BUILD_UID, 30_000));
        let give = |p: &Path| {
            for (p, _) in walk(p) {
                std::os::unix::fs::lchown(&p, Some(BUILD_UID), Some(30_000)).unwrap();
            }
        };
        // Hard links inside an output and across outputs are fine.
        let out = sb.path("out");
        let lib = sb.path("out-lib");
        let (o, l) = (sb.in_chroot(&out), sb.in_chroot(&lib));
        mkdir(&o, 0o755);
        mkdir(&l, 0o755);
        write_file(&o.join("a"), b"shared", 0o644);
        fs::hard_link(o.join("a"), o.join("b")).unwrap();
        fs::hard_link(o.join("a"), l.join("c")).unwrap();
        give(&o);
        give(&l);
        let results = sb.collect(&[output("out", &out), output("lib", &lib)], &[]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_canonical(Path::new(out.as_str()));
        assert_canonical(Path::new(lib.as_str()));

        // A file of someone else's, hard-linked in, is refused.
        let stolen = sb.path("stolen");
        let s = sb.in_chroot(&stolen);
        mkdir(&s, 0o755);
        let secret = sb.root.join("secret");
        write_file(&secret, b"root's", 0o600);
        give(&s);
        fs::hard_link(&secret, s.join("shadow")).unwrap();
        let results = sb.collect(&[output("out", &stolen)], &[]);
        assert_eq!(
            rejected_message(&results[0]),
            format!("invalid ownership on file `{}'", s.join("shadow").display())
        );
        assert_eq!(fs::metadata(&secret).unwrap().mode() & 0o7777, 0o600);

        // A top level not owned by the build user is suspicious.
        let foreign = sb.path("foreign");
        write_file(&sb.in_chroot(&foreign), b"x", 0o644);
        let results = sb.collect(&[output("out", &foreign)], &[]);
        assert_eq!(
            rejected_message(&results[0]),
            format!(
                "suspicious ownership or permission on `{foreign}'; rejecting this build output"
            )
        );
    }

    #[test]
    fn an_unknown_build_is_an_error() {
        let sb = sandbox("unknown");
        let config = crate::OsConfig {
            dirs: guixd_core::config::Dirs {
                store: sb.dir.clone(),
                state: sb.root.join("state"),
                log: sb.root.join("log"),
                db: sb.root.join("state/db"),
                conf: sb.root.join("etc"),
                guix_program: PathBuf::from("/bin/false"),
            },
            settings: Default::default(),
            uid: owner().uid,
            gid: owner().gid,
        };
        let builds = Builds::new(&config);
        let e = builds
            .collect_outputs(BuildId(77), &[], &BTreeSet::new(), false)
            .unwrap_err();
        assert_eq!(e.message, "guixd bug: unknown build 77");
    }
}

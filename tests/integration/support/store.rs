//! Looking at a daemon's store directory from outside the daemon: what is
//! in it, which of its entries are a daemon's temporary files, and the NAR
//! serialisation of an item as it is on disk (to compare with the hash the
//! database holds).
//!
//! Keeps true: nothing here writes to the store; a temporary entry is any
//! name that starts with a dot, except the `.links` directory of
//! deduplication, so a new kind of temporary file cannot go unnoticed.

use guixd_core::hash::Hash;
use guixd_core::nar::NarTree;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The names of the store's items: every entry that does not start with a
/// dot.
pub fn items(store: &Path) -> BTreeSet<String> {
    names(store)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// The store's temporary entries: names starting with a dot, but `.links`.
pub fn temporaries(store: &Path) -> BTreeSet<String> {
    names(store)
        .into_iter()
        .filter(|n| n.starts_with('.') && n != ".links")
        .collect()
}

/// Waits until the store has no temporary entries (a session's clean-up
/// may still run when its client has its answer); panics with what is
/// left after `timeout`.
pub fn wait_for_no_temporaries(store: &Path, timeout: Duration) {
    wait_until_none(store, "temporary files", temporaries, timeout);
}

/// Waits until the store has no `.lock` files: guixd deletes the lock
/// file of an item that became valid just after answering the client that
/// added it (the C++ daemon just before), so a client that looks at once
/// may still see it.
pub fn wait_for_no_lock_files(store: &Path, timeout: Duration) {
    let lock_files = |store: &Path| -> BTreeSet<String> {
        items(store)
            .into_iter()
            .filter(|n| n.ends_with(".lock"))
            .collect()
    };
    wait_until_none(store, "lock files", lock_files, timeout);
}

fn wait_until_none(
    store: &Path,
    what: &str,
    list: impl Fn(&Path) -> BTreeSet<String>,
    timeout: Duration,
) {
    let started = Instant::now();
    loop {
        let left = list(store);
        if left.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "{what} left in {} after {timeout:?}: {left:?}",
            store.display()
        );
        // The clean-up is another process's or thread's business; there
        // is nothing to block on.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The NAR serialisation of the file tree at `path`, as the daemon
/// computes it.
pub fn nar_of(path: &Path) -> io::Result<Vec<u8>> {
    tree_of(path)?.to_nar().map_err(io::Error::other)
}

/// The lowercase hex SHA-256 of the NAR of `path`: what query-path-hash
/// returns for a valid item whose files are intact.
pub fn nar_hash_hex(path: &Path) -> io::Result<String> {
    Ok(Hash::sha256(&nar_of(path)?).to_hex())
}

fn names(store: &Path) -> Vec<String> {
    let entries =
        fs::read_dir(store).unwrap_or_else(|e| panic!("cannot list {}: {e}", store.display()));
    entries
        .map(|e| {
            let e = e.unwrap_or_else(|e| panic!("cannot list {}: {e}", store.display()));
            e.file_name().to_string_lossy().into_owned()
        })
        .collect()
}

fn tree_of(path: &Path) -> io::Result<NarTree> {
    let meta = fs::symlink_metadata(path)?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(path)?.into_os_string().into_vec();
        Ok(NarTree::Symlink { target })
    } else if kind.is_dir() {
        let mut entries = BTreeMap::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let name = entry.file_name().into_vec();
            entries.insert(name, tree_of(&entry.path())?);
        }
        Ok(NarTree::Directory(entries))
    } else {
        Ok(NarTree::File {
            executable: meta.permissions().mode() & 0o100 != 0,
            contents: fs::read(path)?,
        })
    }
}

//! Scratch directories for the unit tests of this crate.
//!
//! Keeps true: each directory is new (any leftover of an earlier run with
//! the same process id is removed first), its name is unique within the
//! process, and it is removed when its handle is dropped, whether the test
//! passed or failed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A scratch directory, removed on drop.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty directory `guixd-os-<module>-<pid>-<n>-<tag>` under the
/// system's temporary directory.
pub(crate) fn scratch(module: &str, tag: &str) -> Scratch {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "guixd-os-{module}-{}-{n}-{tag}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    Scratch(dir)
}

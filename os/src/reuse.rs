//! Reusing what the store already holds for a fixed-output derivation: a
//! copy of a valid item, checked against the expected hash and measured,
//! put in place of the output (the `CopyIntoOutput` effect).
//!
//! Keeps true:
//! - the output appears only complete and canonical: the copy is made
//!   under a name that is never a store path (`.guixd-reuse-<pid>-<n>`),
//!   made canonical (mode 0444 or 0555, mtime 1), hashed, and renamed into
//!   place only if its hash is the expected one; otherwise it is deleted
//!   and the effect fails (the core then runs the builder);
//! - the source is only read; the caller holds the output's lock, and any
//!   invalid leftover at the output's name is deleted first;
//! - a flat output is always a regular, non-executable file, whatever the
//!   source's executable bit.

use crate::files::{canonicalise_path, delete_path};
use crate::locks::sys_error;
use guixd_core::effect::{EffectError, EffectErrorKind, EffectOutput, EffectResult, Measured};
use guixd_core::hash::{Hash, HashAlgo, Hasher};
use guixd_core::nar::{NarEvent, NarWriter};
use guixd_core::store_path::StorePath;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes read from a source file at once.
const COPY_BUFFER_BYTES: usize = 256 * 1024;

/// Copies `from` to `to` (see the module documentation) and returns what
/// the copy measures: its NAR hash and size, and its content hash in the
/// algorithm of `expected`.
pub fn copy_into_output(
    store_dir: &Path,
    from: &StorePath,
    to: &StorePath,
    recursive: bool,
    expected: &Hash,
) -> EffectResult {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let temp = store_dir.join(format!(
        ".guixd-reuse-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let result = copy_measured(Path::new(from.as_str()), &temp, recursive, expected.algo());
    let measured = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = delete_path(&temp);
            return Err(e);
        }
    };
    if measured.content_hash != *expected {
        let _ = delete_path(&temp);
        return Err(EffectError::new(
            EffectErrorKind::Invalid,
            format!("`{from}' does not have the expected contents any more"),
        ));
    }
    let dest = Path::new(to.as_str());
    delete_path(dest)?;
    if let Err(e) = fs::rename(&temp, dest) {
        let _ = delete_path(&temp);
        return Err(sys_error(
            format_args!("renaming `{}' to `{}'", temp.display(), dest.display()),
            &e,
        ));
    }
    Ok(EffectOutput::Measured(measured))
}

/// Copies and measures in one pass over the source.
fn copy_measured(
    src: &Path,
    dest: &Path,
    recursive: bool,
    algo: HashAlgo,
) -> Result<Measured, EffectError> {
    let mut sink = NarSink::new();
    let content_hash = if recursive {
        copy_node(src, dest, b"", &mut sink)?;
        None
    } else {
        let meta = fs::symlink_metadata(src)
            .map_err(|e| sys_error(format_args!("getting status of `{}'", src.display()), &e))?;
        if !meta.file_type().is_file() {
            return Err(EffectError::new(
                EffectErrorKind::Invalid,
                format!("`{}' is not a regular file", src.display()),
            ));
        }
        let mut content = Hasher::new(algo);
        copy_file(
            src,
            dest,
            false,
            meta.len(),
            b"",
            &mut sink,
            Some(&mut content),
        )?;
        Some(content.finish())
    };
    canonicalise_tree(dest)?;
    let (nar_hash, nar_size) = sink.finish()?;
    let content_hash = match content_hash {
        Some(h) => h,
        // Recursive: the content hash is the NAR's, in the asked algorithm.
        None if algo == HashAlgo::Sha256 => nar_hash,
        None => sink_rehash(dest, algo)?,
    };
    Ok(Measured {
        nar_hash,
        nar_size,
        content_hash,
    })
}

/// The NAR of what was copied, hashed (SHA-256) and counted as it is made.
struct NarSink {
    writer: NarWriter,
    hasher: Hasher,
    other: Option<Hasher>,
    size_bytes: u64,
    out: Vec<u8>,
}

impl NarSink {
    fn new() -> NarSink {
        NarSink {
            writer: NarWriter::new(),
            hasher: Hasher::new(HashAlgo::Sha256),
            other: None,
            size_bytes: 0,
            out: Vec::new(),
        }
    }

    fn event(&mut self, event: NarEvent<'_>) -> Result<(), EffectError> {
        self.out.clear();
        self.writer
            .write(event, &mut self.out)
            .map_err(|e| EffectError::new(EffectErrorKind::Invalid, e.to_string()))?;
        self.hasher.update(&self.out);
        if let Some(h) = self.other.as_mut() {
            h.update(&self.out);
        }
        self.size_bytes += self.out.len() as u64;
        Ok(())
    }

    fn finish(self) -> Result<(Hash, u64), EffectError> {
        if !self.writer.is_done() {
            return Err(EffectError::new(
                EffectErrorKind::Invalid,
                "guixd bug: incomplete archive of a copied item",
            ));
        }
        Ok((self.hasher.finish(), self.size_bytes))
    }
}

/// The NAR hash of `path` in `algo` (recursive outputs hashed with another
/// algorithm than SHA-256): one more pass, over the copy.
fn sink_rehash(path: &Path, algo: HashAlgo) -> Result<Hash, EffectError> {
    let mut sink = NarSink::new();
    sink.other = Some(Hasher::new(algo));
    hash_node(path, b"", &mut sink)?;
    sink.other
        .take()
        .map(Hasher::finish)
        .ok_or_else(|| EffectError::new(EffectErrorKind::Invalid, "guixd bug: no hasher"))
}

fn hash_node(path: &Path, name: &[u8], sink: &mut NarSink) -> Result<(), EffectError> {
    let meta = lstat(path)?;
    let ft = meta.file_type();
    if ft.is_dir() {
        sink.event(NarEvent::Directory { name })?;
        for (entry, child) in sorted_entries(path)? {
            hash_node(&child, &entry, sink)?;
        }
        sink.event(NarEvent::DirectoryEnd)
    } else if ft.is_symlink() {
        let target = fs::read_link(path)
            .map_err(|e| sys_error(format_args!("reading link `{}'", path.display()), &e))?;
        sink.event(NarEvent::Symlink {
            name,
            target: target.as_os_str().as_encoded_bytes(),
        })
    } else {
        let executable = meta.permissions().mode() & 0o100 != 0;
        sink.event(NarEvent::File {
            name,
            executable,
            size_bytes: meta.len(),
        })?;
        let mut file = File::open(path)
            .map_err(|e| sys_error(format_args!("opening file `{}'", path.display()), &e))?;
        let mut buf = vec![0; COPY_BUFFER_BYTES];
        loop {
            let n = read_some(&mut file, &mut buf, path)?;
            if n == 0 {
                break;
            }
            sink.event(NarEvent::FileData(&buf[..n]))?;
        }
        sink.event(NarEvent::FileEnd)
    }
}

fn copy_node(src: &Path, dest: &Path, name: &[u8], sink: &mut NarSink) -> Result<(), EffectError> {
    let meta = lstat(src)?;
    let ft = meta.file_type();
    if ft.is_dir() {
        fs::create_dir(dest)
            .map_err(|e| sys_error(format_args!("creating directory `{}'", dest.display()), &e))?;
        sink.event(NarEvent::Directory { name })?;
        for (entry, child) in sorted_entries(src)? {
            let target =
                dest.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&entry));
            copy_node(&child, &target, &entry, sink)?;
        }
        sink.event(NarEvent::DirectoryEnd)
    } else if ft.is_symlink() {
        let target = fs::read_link(src)
            .map_err(|e| sys_error(format_args!("reading link `{}'", src.display()), &e))?;
        std::os::unix::fs::symlink(&target, dest)
            .map_err(|e| sys_error(format_args!("creating symlink `{}'", dest.display()), &e))?;
        sink.event(NarEvent::Symlink {
            name,
            target: target.as_os_str().as_encoded_bytes(),
        })
    } else if ft.is_file() {
        let executable = meta.permissions().mode() & 0o100 != 0;
        copy_file(src, dest, executable, meta.len(), name, sink, None)
    } else {
        Err(EffectError::new(
            EffectErrorKind::Invalid,
            format!("file `{}' has an unsupported type", src.display()),
        ))
    }
}

fn copy_file(
    src: &Path,
    dest: &Path,
    executable: bool,
    size_bytes: u64,
    name: &[u8],
    sink: &mut NarSink,
    mut content: Option<&mut Hasher>,
) -> Result<(), EffectError> {
    let mut input = File::open(src)
        .map_err(|e| sys_error(format_args!("opening file `{}'", src.display()), &e))?;
    let mut output = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if executable { 0o755 } else { 0o644 })
        .open(dest)
        .map_err(|e| sys_error(format_args!("creating file `{}'", dest.display()), &e))?;
    sink.event(NarEvent::File {
        name,
        executable,
        size_bytes,
    })?;
    let mut buf = vec![0; COPY_BUFFER_BYTES];
    let mut copied: u64 = 0;
    loop {
        let n = read_some(&mut input, &mut buf, src)?;
        if n == 0 {
            break;
        }
        copied += n as u64;
        if copied > size_bytes {
            break;
        }
        output
            .write_all(&buf[..n])
            .map_err(|e| sys_error(format_args!("writing to file `{}'", dest.display()), &e))?;
        if let Some(h) = content.as_deref_mut() {
            h.update(&buf[..n]);
        }
        sink.event(NarEvent::FileData(&buf[..n]))?;
    }
    if copied != size_bytes {
        return Err(EffectError::new(
            EffectErrorKind::Invalid,
            format!("file `{}' changed while it was copied", src.display()),
        ));
    }
    sink.event(NarEvent::FileEnd)
}

fn read_some(file: &mut File, buf: &mut [u8], path: &Path) -> Result<usize, EffectError> {
    loop {
        match file.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(sys_error(
                    format_args!("reading file `{}'", path.display()),
                    &e,
                ));
            }
        }
    }
}

fn lstat(path: &Path) -> Result<fs::Metadata, EffectError> {
    fs::symlink_metadata(path)
        .map_err(|e| sys_error(format_args!("getting status of `{}'", path.display()), &e))
}

/// The entries of a directory in bytewise name order, as a NAR has them.
fn sorted_entries(dir: &Path) -> Result<Vec<(Vec<u8>, PathBuf)>, EffectError> {
    let read = fs::read_dir(dir)
        .map_err(|e| sys_error(format_args!("opening directory `{}'", dir.display()), &e))?;
    let mut entries = Vec::new();
    for entry in read {
        let entry = entry
            .map_err(|e| sys_error(format_args!("reading directory `{}'", dir.display()), &e))?;
        entries.push((entry.file_name().as_encoded_bytes().to_vec(), entry.path()));
    }
    entries.sort();
    Ok(entries)
}

/// Makes every node of the copy canonical, children before their
/// directory (which loses its write permission last).
fn canonicalise_tree(path: &Path) -> Result<(), EffectError> {
    let meta = lstat(path)?;
    if meta.file_type().is_dir() {
        for (_, child) in sorted_entries(path)? {
            canonicalise_tree(&child)?;
        }
    }
    canonicalise_path(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use guixd_core::store_path::StoreDir;

    fn setup() -> (tempdir::Dir, StoreDir) {
        let dir = tempdir::Dir::new();
        let store = StoreDir::new(dir.path().to_str().unwrap()).unwrap();
        (dir, store)
    }

    mod tempdir {
        use std::path::{Path, PathBuf};

        /// A directory removed at the end of the test.
        pub struct Dir(PathBuf);

        impl Dir {
            pub fn new() -> Dir {
                static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let p = std::env::temp_dir().join(format!(
                    "guixd-reuse-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }

            pub fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = crate::files::delete_path(&self.0);
            }
        }
    }

    fn path(store: &StoreDir, name: &str) -> StorePath {
        store
            .parse_path(&format!("{}/{}-{name}", store.as_str(), "0".repeat(32)))
            .unwrap()
    }

    #[test]
    fn a_flat_copy_is_a_plain_file_with_the_expected_hash() {
        let (dir, store) = setup();
        let from = path(&store, "src");
        fs::write(from.as_str(), b"tarball bytes").unwrap();
        fs::set_permissions(from.as_str(), fs::Permissions::from_mode(0o555)).unwrap();
        let to = store
            .parse_path(&format!("{}/{}-out", store.as_str(), "1".repeat(32)))
            .unwrap();
        let expected = Hash::sha256(b"tarball bytes");
        let out = copy_into_output(dir.path(), &from, &to, false, &expected).unwrap();
        let EffectOutput::Measured(m) = out else {
            panic!("{out:?}");
        };
        assert_eq!(m.content_hash, expected);
        assert_eq!(
            m.nar_hash,
            guixd_core::nar::hash_file_nar(HashAlgo::Sha256, false, b"tarball bytes")
        );
        let meta = fs::symlink_metadata(to.as_str()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o444);
        assert_eq!(fs::read(to.as_str()).unwrap(), b"tarball bytes");
        // A wrong expectation leaves nothing behind.
        let to2 = store
            .parse_path(&format!("{}/{}-out2", store.as_str(), "2".repeat(32)))
            .unwrap();
        assert!(copy_into_output(dir.path(), &from, &to2, false, &Hash::sha256(b"x")).is_err());
        assert!(!Path::new(to2.as_str()).exists());
        let leftovers = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".guixd")
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn a_tree_copy_keeps_its_nar() {
        let (dir, store) = setup();
        let from = path(&store, "tree");
        fs::create_dir(from.as_str()).unwrap();
        fs::write(format!("{from}/a"), b"A").unwrap();
        fs::write(format!("{from}/x"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(format!("{from}/x"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("a", format!("{from}/l")).unwrap();
        // The source's own NAR hash, through the same walk.
        let mut sink = NarSink::new();
        hash_node(Path::new(from.as_str()), b"", &mut sink).unwrap();
        let (expected, size) = sink.finish().unwrap();
        let to = store
            .parse_path(&format!("{}/{}-out", store.as_str(), "1".repeat(32)))
            .unwrap();
        let out = copy_into_output(dir.path(), &from, &to, true, &expected).unwrap();
        let EffectOutput::Measured(m) = out else {
            panic!("{out:?}");
        };
        assert_eq!((m.nar_hash, m.nar_size), (expected, size));
        let x = fs::symlink_metadata(format!("{to}/x")).unwrap();
        assert_eq!(x.permissions().mode() & 0o777, 0o555);
        assert_eq!(fs::read_link(format!("{to}/l")).unwrap(), Path::new("a"));
    }
}

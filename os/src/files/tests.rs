//! Tests of the store-file effects against a real file system: a fresh
//! directory under the system's temporary directory plays the store.

use super::*;
use guixd_core::StoreDir;
use guixd_core::nar::{NarTree, file_nar};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, symlink};
use std::sync::atomic::AtomicUsize;

/// A store in a fresh directory, deleted when dropped.
struct TestStore {
    root: PathBuf,
    store: PathBuf,
    dir: StoreDir,
    files: Files,
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let _ = delete_path(&self.root);
    }
}

fn test_store(tag: &str) -> TestStore {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let root =
        std::env::temp_dir().join(format!("guixd-os-files-{}-{n}-{tag}", std::process::id()));
    let _ = delete_path(&root);
    let store = root.join("store");
    fs::create_dir_all(store.join(".links")).unwrap();
    let files = Files::at(&store, owner());
    TestStore {
        dir: StoreDir::new(store.to_str().unwrap()).unwrap(),
        root,
        store,
        files,
    }
}

fn owner() -> Owner {
    Owner::new(
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    )
}

impl TestStore {
    fn item(&self, name: &str) -> StorePath {
        self.dir
            .make_store_path("source", &Hash::sha256(name.as_bytes()), name)
            .unwrap()
    }

    fn upload_dir(&self, id: u64) -> PathBuf {
        self.store
            .join(format!(".guixd-upload-{}-{id}", std::process::id()))
    }

    /// Uploads `nar` cut into pieces of the sizes `cuts` gives (cycled),
    /// and finishes it.
    fn upload(
        &self,
        id: u64,
        kind: UploadKind,
        algo: HashAlgo,
        nar: &[u8],
        cuts: &[usize],
    ) -> Result<Measured, EffectError> {
        let upload = UploadId(id);
        self.files.upload_start(upload, kind, algo)?;
        let mut pos = 0;
        let mut i = 0;
        while pos < nar.len() {
            let n = cuts
                .get(i % cuts.len().max(1))
                .copied()
                .unwrap_or(nar.len())
                .max(1);
            let end = (pos + n).min(nar.len());
            self.files.upload_chunk(upload, &nar[pos..end])?;
            pos = end;
            i += 1;
        }
        match self.files.upload_finish(upload)? {
            EffectOutput::Measured(m) => Ok(m),
            other => panic!("not a measurement: {other:?}"),
        }
    }

    /// Uploads a tree recursively and installs it as `name`.
    fn add(&self, id: u64, name: &str, tree: &NarTree) -> StorePath {
        let nar = tree.to_nar().unwrap();
        self.upload(
            id,
            UploadKind::Recursive,
            HashAlgo::Sha256,
            &nar,
            &[1 << 20],
        )
        .unwrap();
        let path = self.item(name);
        self.files.upload_install(UploadId(id), &path).unwrap();
        path
    }

    /// The whole dump of `path`, checking that no chunk exceeds `max`.
    fn dump(
        &self,
        id: u64,
        path: &StorePath,
        max: usize,
    ) -> Result<(Vec<u8>, Hash, u64), EffectError> {
        let dump = DumpId(id);
        self.files.dump_start(dump, path)?;
        let mut all = Vec::new();
        let result = loop {
            match self.files.dump_next(dump, max)? {
                EffectOutput::DumpChunk { data, end } => {
                    assert!(data.len() <= max, "chunk of {} > {max}", data.len());
                    all.extend_from_slice(&data);
                    if let Some((hash, size)) = end {
                        break (all, hash, size);
                    }
                    assert!(!data.is_empty(), "an empty chunk before the end");
                }
                other => panic!("not a dump chunk: {other:?}"),
            }
        };
        self.files.dump_end(dump).unwrap();
        Ok(result)
    }
}

fn file(executable: bool, contents: &[u8]) -> NarTree {
    NarTree::File {
        executable,
        contents: contents.to_vec(),
    }
}

fn link(target: &str) -> NarTree {
    NarTree::Symlink {
        target: target.as_bytes().to_vec(),
    }
}

fn dir(entries: Vec<(&[u8], NarTree)>) -> NarTree {
    NarTree::Directory(
        entries
            .into_iter()
            .map(|(n, t)| (n.to_vec(), t))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A tree with every kind of node, names whose bytewise order differs from
/// other orders, a non-UTF-8 name, deep and empty directories.
fn sample_tree() -> NarTree {
    dir(vec![
        (b"B", file(false, b"upper case sorts first")),
        (
            b"a",
            dir(vec![
                (b"x", file(true, b"#!/bin/sh\necho hi\n")),
                (b"empty", file(false, b"")),
                (b"up", link("../B")),
            ]),
        ),
        (b"a-b", link("/nonexistent/target")),
        (b"a.b", file(false, &pattern(10_000, 1))),
        (
            b"ab",
            dir(vec![
                (
                    b"deep",
                    dir(vec![(
                        b"deeper",
                        dir(vec![(b"f", file(true, b"deep file"))]),
                    )]),
                ),
                (b"emptydir", dir(vec![])),
            ]),
        ),
        (b"\xffbin", file(false, b"not utf-8")),
        (b"big", file(false, &pattern(300_000, 7))),
    ])
}

/// Every node below `path` is canonical: mode 0444/0555 (not symlinks),
/// mtime 1, our owner.
fn assert_canonical(path: &Path) {
    let st = fs::symlink_metadata(path).unwrap();
    assert_eq!(st.mtime(), 1, "mtime of {}", path.display());
    assert_eq!(st.uid(), owner().uid, "owner of {}", path.display());
    if !st.file_type().is_symlink() {
        let mode = st.mode() & 0o7777;
        assert!(
            mode == 0o444 || mode == 0o555,
            "mode {mode:o} of {}",
            path.display()
        );
    }
    if st.is_dir() {
        assert_eq!(
            st.mode() & 0o7777,
            0o555,
            "mode of directory {}",
            path.display()
        );
        for entry in fs::read_dir(path).unwrap() {
            assert_canonical(&entry.unwrap().path());
        }
    }
}

fn store_entries(store: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---- uploads

#[test]
fn recursive_upload_round_trips_through_dump() {
    let s = test_store("roundtrip");
    let tree = sample_tree();
    let nar = tree.to_nar().unwrap();
    let m = s
        .upload(1, UploadKind::Recursive, HashAlgo::Sha256, &nar, &[4096])
        .unwrap();
    assert_eq!(m.nar_hash, Hash::sha256(&nar));
    assert_eq!(m.nar_size, nar.len() as u64);
    assert_eq!(m.content_hash, m.nar_hash);
    let path = s.item("roundtrip");
    s.files.upload_install(UploadId(1), &path).unwrap();
    assert!(!s.upload_dir(1).exists(), "the temporary directory is gone");
    assert_canonical(Path::new(path.as_str()));
    for max in [1, 7, 100, 65_536, 1 << 20] {
        let (bytes, hash, size) = s.dump(max as u64, &path, max).unwrap();
        assert!(bytes == nar, "dump with chunks of {max} differs");
        assert_eq!(hash, Hash::sha256(&nar));
        assert_eq!(size, nar.len() as u64);
    }
}

#[test]
fn recursive_upload_with_another_algorithm_hashes_the_nar_twice() {
    let s = test_store("algo");
    let nar = sample_tree().to_nar().unwrap();
    let m = s
        .upload(1, UploadKind::Recursive, HashAlgo::Sha1, &nar, &[1000])
        .unwrap();
    assert_eq!(m.nar_hash, Hash::sha256(&nar));
    assert_eq!(m.content_hash, Hash::digest(HashAlgo::Sha1, &nar));
}

#[test]
fn one_byte_chunks_restore_the_same_item() {
    let s = test_store("onebyte");
    let nar = sample_tree().to_nar().unwrap();
    let m = s
        .upload(1, UploadKind::Recursive, HashAlgo::Sha256, &nar, &[1])
        .unwrap();
    assert_eq!(m.nar_hash, Hash::sha256(&nar));
    let path = s.item("onebyte");
    s.files.upload_install(UploadId(1), &path).unwrap();
    assert_eq!(s.dump(1, &path, 65_536).unwrap().0, nar);
}

#[test]
fn uploaded_items_are_canonical_before_install() {
    let s = test_store("canonical");
    let nar = sample_tree().to_nar().unwrap();
    s.upload(1, UploadKind::Recursive, HashAlgo::Sha256, &nar, &[333])
        .unwrap();
    let item = s.upload_dir(1).join("item");
    assert_canonical(&item);
    let x = fs::symlink_metadata(item.join("a/x")).unwrap();
    assert_eq!(x.mode() & 0o7777, 0o555);
    let b = fs::symlink_metadata(item.join("B")).unwrap();
    assert_eq!(b.mode() & 0o7777, 0o444);
}

/// A tree drawn from `seed`: every kind of node, random names and sizes.
fn random_tree(rng: &mut u64, depth: u32) -> NarTree {
    // Mostly directories near the root, never below depth 4.
    let kind = match depth {
        0 if next(rng) % 4 != 0 => 3,
        0..=3 => next(rng) % 5,
        _ => next(rng) % 3,
    };
    match kind {
        0 => file(
            next(rng) % 2 == 0,
            &pattern((next(rng) % 40) as usize, next(rng) as u8),
        ),
        1 => link(&format!("t{}", next(rng) % 1000)),
        2 => file(
            next(rng) % 2 == 0,
            &pattern((next(rng) % 20_000) as usize, 3),
        ),
        _ => {
            let mut entries = BTreeMap::new();
            for _ in 0..next(rng) % 7 {
                let alphabet = [b'a', b'b', b'A', b'-', b'.', 0xff, 0x80];
                let len = 1 + next(rng) % 3;
                let name: Vec<u8> = (0..len)
                    .map(|_| alphabet[(next(rng) % alphabet.len() as u64) as usize])
                    .collect();
                if name == b"." || name == b".." {
                    continue;
                }
                entries.insert(name, random_tree(rng, depth + 1));
            }
            NarTree::Directory(entries)
        }
    }
}

fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

#[test]
fn any_chunking_of_any_tree_restores_and_dumps_the_same_nar() {
    fn prop(seed: u64, cuts: Vec<u16>, dump_max: u16) -> bool {
        let s = test_store("prop");
        let mut rng = seed | 1;
        let tree = random_tree(&mut rng, 0);
        let nar = tree.to_nar().unwrap();
        let cuts: Vec<usize> = cuts.iter().map(|&c| c as usize % 5000 + 1).collect();
        let m = s
            .upload(1, UploadKind::Recursive, HashAlgo::Sha256, &nar, &cuts)
            .unwrap();
        let path = s.item("prop");
        s.files.upload_install(UploadId(1), &path).unwrap();
        assert_canonical(Path::new(path.as_str()));
        let (bytes, hash, size) = s.dump(1, &path, dump_max as usize % 9000 + 1).unwrap();
        m.nar_hash == Hash::sha256(&nar)
            && m.nar_size == nar.len() as u64
            && bytes == nar
            && hash == m.nar_hash
            && size == m.nar_size
    }
    guixd_testkit::check_n(40, prop as fn(u64, Vec<u16>, u16) -> bool);
}

#[test]
fn flat_upload_writes_a_non_executable_file_whatever_the_nar_says() {
    let s = test_store("flat");
    let contents = pattern(20_000, 9);
    let nar = file_nar(true, &contents);
    let m = s
        .upload(1, UploadKind::Flat, HashAlgo::Sha1, &nar, &[777])
        .unwrap();
    assert_eq!(m.content_hash, Hash::digest(HashAlgo::Sha1, &contents));
    assert_eq!(m.nar_hash, Hash::sha256(&file_nar(false, &contents)));
    assert_eq!(m.nar_size, file_nar(false, &contents).len() as u64);
    let path = s.item("flat");
    s.files.upload_install(UploadId(1), &path).unwrap();
    let st = fs::symlink_metadata(path.as_str()).unwrap();
    assert!(st.is_file());
    assert_eq!(st.mode() & 0o7777, 0o444);
    assert_eq!(st.mtime(), 1);
    assert_eq!(fs::read(path.as_str()).unwrap(), contents);
    // Its dump is the NAR the measurement describes.
    let (bytes, hash, _) = s.dump(1, &path, 4096).unwrap();
    assert_eq!(bytes, file_nar(false, &contents));
    assert_eq!(hash, m.nar_hash);
}

#[test]
fn large_chunks_hash_beside_the_writes_with_the_same_results() {
    let s = test_store("parallel");
    let contents = pattern(3 * PARALLEL_HASH_MIN_BYTES, 4);
    for (id, algo) in [(1, HashAlgo::Sha256), (2, HashAlgo::Sha512)] {
        let flat = file_nar(true, &contents);
        let m = s
            .upload(id, UploadKind::Flat, algo, &flat, &[flat.len()])
            .unwrap();
        assert_eq!(m.content_hash, Hash::digest(algo, &contents));
        assert_eq!(m.nar_hash, Hash::sha256(&file_nar(false, &contents)));
        s.files.upload_discard(UploadId(id)).unwrap();

        let nar = dir(vec![(b"f", file(false, &contents)), (b"g", link("f"))])
            .to_nar()
            .unwrap();
        let m = s
            .upload(
                10 + id,
                UploadKind::Recursive,
                algo,
                &nar,
                &[PARALLEL_HASH_MIN_BYTES + 3],
            )
            .unwrap();
        assert_eq!(m.nar_hash, Hash::sha256(&nar));
        assert_eq!(m.content_hash, Hash::digest(algo, &nar));
        let path = s.item(&format!("parallel{id}"));
        s.files.upload_install(UploadId(10 + id), &path).unwrap();
        assert_eq!(s.dump(id, &path, 1 << 20).unwrap().0, nar);
    }
}

#[test]
fn flat_upload_of_an_empty_file_with_sha256() {
    let s = test_store("flat-empty");
    let m = s
        .upload(
            1,
            UploadKind::Flat,
            HashAlgo::Sha256,
            &file_nar(false, b""),
            &[5],
        )
        .unwrap();
    assert_eq!(m.content_hash, Hash::sha256(b""));
    assert_eq!(m.nar_hash, Hash::sha256(&file_nar(false, b"")));
}

#[test]
fn flat_upload_refuses_anything_but_one_regular_file() {
    let s = test_store("flat-dir");
    for (id, tree) in [(1, sample_tree()), (2, link("somewhere"))] {
        let e = s
            .upload(
                id,
                UploadKind::Flat,
                HashAlgo::Sha256,
                &tree.to_nar().unwrap(),
                &[100],
            )
            .unwrap_err();
        assert_eq!(e.kind, EffectErrorKind::Invalid);
        assert_eq!(e.message, "regular file expected");
        s.files.upload_discard(UploadId(id)).unwrap();
        assert!(!s.upload_dir(id).exists());
    }
}

#[test]
fn a_bad_nar_fails_the_upload_with_the_parsers_words_until_discarded() {
    let s = test_store("bad");
    let id = UploadId(1);
    s.files
        .upload_start(id, UploadKind::Recursive, HashAlgo::Sha256)
        .unwrap();
    let mut bad = Vec::new();
    bad.extend_from_slice(&13u64.to_le_bytes());
    bad.extend_from_slice(b"nix-archive-2\0\0\0");
    let e = s.files.upload_chunk(id, &bad).unwrap_err();
    assert_eq!(e.kind, EffectErrorKind::Invalid);
    assert_eq!(
        e.message,
        "bad archive: input doesn't look like a normalized archive"
    );
    assert_eq!(s.files.upload_chunk(id, b"more").unwrap_err(), e);
    assert_eq!(s.files.upload_finish(id).unwrap_err(), e);
    s.files.upload_discard(id).unwrap();
    assert!(!s.upload_dir(1).exists());
}

#[test]
fn truncated_and_overlong_nars_are_refused() {
    let s = test_store("truncated");
    let nar = sample_tree().to_nar().unwrap();
    let id = UploadId(1);
    s.files
        .upload_start(id, UploadKind::Recursive, HashAlgo::Sha256)
        .unwrap();
    s.files.upload_chunk(id, &nar[..nar.len() - 8]).unwrap();
    let e = s.files.upload_finish(id).unwrap_err();
    assert_eq!(e.message, "unexpected end-of-file");
    s.files.upload_discard(id).unwrap();

    let id = UploadId(2);
    s.files
        .upload_start(id, UploadKind::Recursive, HashAlgo::Sha256)
        .unwrap();
    let mut long = nar.clone();
    long.extend_from_slice(b"extra!!!");
    let e = s.files.upload_chunk(id, &long).unwrap_err();
    assert_eq!(e.kind, EffectErrorKind::Invalid);
    assert!(e.message.contains("8 trailing bytes"), "{}", e.message);
    s.files.upload_discard(id).unwrap();
    assert_eq!(store_entries(&s.store), vec![".links"]);
}

#[test]
fn install_replaces_an_invalid_leftover() {
    let s = test_store("leftover");
    // A read-only directory tree where the item goes, as a crashed
    // build or an interrupted C++ daemon may leave.
    let path = s.item("leftover");
    let dest = Path::new(path.as_str());
    fs::create_dir_all(dest.join("sub/subsub")).unwrap();
    fs::write(dest.join("sub/f"), b"old").unwrap();
    for p in [
        dest.join("sub/f"),
        dest.join("sub/subsub"),
        dest.join("sub"),
        dest.to_path_buf(),
    ] {
        fs::set_permissions(&p, fs::Permissions::from_mode(0o555)).unwrap();
    }
    let tree = dir(vec![(b"new", file(false, b"fresh"))]);
    let nar = tree.to_nar().unwrap();
    s.upload(1, UploadKind::Recursive, HashAlgo::Sha256, &nar, &[64])
        .unwrap();
    s.files.upload_install(UploadId(1), &path).unwrap();
    assert_eq!(s.dump(1, &path, 4096).unwrap().0, nar);
    assert_canonical(dest);

    // A file where a directory goes, and a directory where a file goes.
    let path2 = s.item("leftover2");
    fs::write(path2.as_str(), b"junk").unwrap();
    s.upload(2, UploadKind::Recursive, HashAlgo::Sha256, &nar, &[64])
        .unwrap();
    s.files.upload_install(UploadId(2), &path2).unwrap();
    assert_eq!(s.dump(2, &path2, 4096).unwrap().0, nar);
    let flat = file_nar(false, b"a file");
    s.upload(3, UploadKind::Flat, HashAlgo::Sha256, &flat, &[64])
        .unwrap();
    s.files.upload_install(UploadId(3), &path).unwrap();
    assert_eq!(fs::read(path.as_str()).unwrap(), b"a file");
    assert_eq!(
        store_entries(&s.store),
        vec![
            ".links".to_owned(),
            path.base_name().to_owned(),
            path2.base_name().to_owned()
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
}

#[test]
fn discard_deletes_everything_and_is_idempotent() {
    let s = test_store("discard");
    let nar = sample_tree().to_nar().unwrap();
    let id = UploadId(5);
    s.files
        .upload_start(id, UploadKind::Recursive, HashAlgo::Sha256)
        .unwrap();
    // Half the NAR: a file is open and directories are still writable.
    s.files.upload_chunk(id, &nar[..nar.len() / 2]).unwrap();
    assert!(s.upload_dir(5).exists());
    s.files.upload_discard(id).unwrap();
    assert!(!s.upload_dir(5).exists());
    s.files.upload_discard(id).unwrap();
    assert!(s.files.upload_chunk(id, b"x").is_err());
    // A finished upload is deleted too.
    s.upload(6, UploadKind::Recursive, HashAlgo::Sha256, &nar, &[1 << 20])
        .unwrap();
    s.files.upload_discard(UploadId(6)).unwrap();
    assert_eq!(store_entries(&s.store), vec![".links"]);
}

#[test]
fn unknown_and_repeated_ids_are_errors_not_panics() {
    let s = test_store("ids");
    let path = s.item("x");
    assert!(s.files.upload_chunk(UploadId(9), b"x").is_err());
    assert!(s.files.upload_finish(UploadId(9)).is_err());
    assert!(s.files.upload_install(UploadId(9), &path).is_err());
    assert!(s.files.dump_next(DumpId(9), 10).is_err());
    s.files.dump_end(DumpId(9)).unwrap();
    s.files
        .upload_start(UploadId(1), UploadKind::Recursive, HashAlgo::Sha256)
        .unwrap();
    assert!(
        s.files
            .upload_start(UploadId(1), UploadKind::Recursive, HashAlgo::Sha256)
            .is_err()
    );
    // Installing before the end is refused and leaves the upload usable.
    assert!(s.files.upload_install(UploadId(1), &path).is_err());
    let nar = file_nar(false, b"late");
    s.files.upload_chunk(UploadId(1), &nar).unwrap();
    s.files.upload_finish(UploadId(1)).unwrap();
    s.files.upload_install(UploadId(1), &path).unwrap();
    // Installed uploads are forgotten.
    assert!(s.files.upload_finish(UploadId(1)).is_err());
    s.files.upload_discard(UploadId(1)).unwrap();
    assert_eq!(fs::read(path.as_str()).unwrap(), b"late");
}

#[test]
fn uploads_on_different_threads_proceed_at_once() {
    let s = Arc::new(test_store("threads"));
    let handles: Vec<_> = (0..4u64)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || {
                let tree = dir(vec![(b"f", file(false, &pattern(50_000, i as u8)))]);
                let nar = tree.to_nar().unwrap();
                let m = s
                    .upload(i, UploadKind::Recursive, HashAlgo::Sha256, &nar, &[997])
                    .unwrap();
                let path = s.item(&format!("t{i}"));
                s.files.upload_install(UploadId(i), &path).unwrap();
                assert_eq!(m.nar_hash, Hash::sha256(&nar));
                assert_eq!(s.dump(i, &path, 1000).unwrap().0, nar);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn dropping_files_deletes_unfinished_uploads() {
    let s = test_store("drop");
    let files = Files::at(&s.store, owner());
    files
        .upload_start(UploadId(77), UploadKind::Recursive, HashAlgo::Sha256)
        .unwrap();
    assert!(s.upload_dir(77).exists());
    drop(files);
    assert!(!s.upload_dir(77).exists());
}

// ---- text

#[test]
fn write_text_writes_a_canonical_file_and_measures_it() {
    let s = test_store("text");
    let path = s.item("text");
    let contents = b"Derive([...])".to_vec();
    let m = match s.files.write_text(&path, &contents).unwrap() {
        EffectOutput::Measured(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(m.content_hash, Hash::sha256(&contents));
    assert_eq!(m.nar_hash, Hash::sha256(&file_nar(false, &contents)));
    assert_eq!(m.nar_size, file_nar(false, &contents).len() as u64);
    assert_eq!(fs::read(path.as_str()).unwrap(), contents);
    assert_canonical(Path::new(path.as_str()));
    assert_eq!(
        fs::symlink_metadata(path.as_str()).unwrap().mode() & 0o7777,
        0o444
    );
    assert_eq!(
        s.dump(1, &path, 4096).unwrap().1,
        m.nar_hash,
        "the dump agrees with the measurement"
    );

    // Over a leftover directory and over a leftover file.
    fs::remove_file(path.as_str()).unwrap();
    fs::create_dir_all(Path::new(path.as_str()).join("d")).unwrap();
    fs::set_permissions(path.as_str(), fs::Permissions::from_mode(0o555)).unwrap();
    s.files.write_text(&path, b"second").unwrap();
    assert_eq!(fs::read(path.as_str()).unwrap(), b"second");
    s.files.write_text(&path, b"third").unwrap();
    assert_eq!(fs::read(path.as_str()).unwrap(), b"third");
    assert_eq!(
        store_entries(&s.store),
        vec![".links".to_owned(), path.base_name().to_owned()]
    );
}

// ---- deduplication

#[test]
fn deduplication_links_identical_large_files_only() {
    let s = test_store("dedup");
    let big = pattern(10_240, 42);
    let small = pattern(100, 42);
    let tree = |extra: &[u8]| {
        dir(vec![
            (b"big", file(false, &big)),
            (b"exec", file(true, &big)),
            (b"small", file(false, &small)),
            (b"sub", dir(vec![(b"big-too", file(false, &big))])),
            (b"unique", file(false, extra)),
        ])
    };
    let p1 = s.add(1, "one", &tree(&pattern(9000, 1)));
    let st1 = deduplicate_tree(&s.store, Path::new(p1.as_str())).unwrap();
    // The first item gives `.links` its entries and links its own copy.
    assert_eq!(st1.files_linked, 1);
    let p2 = s.add(2, "two", &tree(&pattern(9000, 2)));
    let st2 = deduplicate_tree(&s.store, Path::new(p2.as_str())).unwrap();
    assert_eq!(st2.files_linked, 3);
    assert_eq!(st2.bytes_freed, 3 * 10_240);
    assert!(st2.warnings.is_empty(), "{:?}", st2.warnings);

    let ino = |p: &StorePath, rel: &str| {
        fs::symlink_metadata(Path::new(p.as_str()).join(rel))
            .unwrap()
            .ino()
    };
    let links = s.store.join(".links");
    let plain_link = links.join(hash_file_nar(HashAlgo::Sha256, false, &big).to_base32());
    let exec_link = links.join(hash_file_nar(HashAlgo::Sha256, true, &big).to_base32());
    let plain = fs::symlink_metadata(&plain_link).unwrap().ino();
    let exec = fs::symlink_metadata(&exec_link).unwrap().ino();
    assert_ne!(plain, exec, "the executable bit keeps files apart");
    for p in [&p1, &p2] {
        assert_eq!(ino(p, "big"), plain);
        assert_eq!(ino(p, "sub/big-too"), plain);
        assert_eq!(ino(p, "exec"), exec);
        assert_eq!(
            fs::symlink_metadata(Path::new(p.as_str()).join("small"))
                .unwrap()
                .nlink(),
            1
        );
        assert_canonical(Path::new(p.as_str()));
    }
    assert_ne!(ino(&p1, "small"), ino(&p2, "small"));
    assert_ne!(ino(&p1, "unique"), ino(&p2, "unique"));
    // `unique` files are ≥ 8192 bytes and get their own links; small
    // files none.
    assert_eq!(fs::read_dir(&links).unwrap().count(), 4);
    assert!(
        store_entries(&s.store)
            .iter()
            .all(|n| !n.starts_with(".tmp-link"))
    );

    // A second pass changes nothing; the effect form returns `Done`.
    assert_eq!(
        deduplicate_tree(&s.store, Path::new(p2.as_str()))
            .unwrap()
            .files_linked,
        0
    );
    assert_eq!(s.files.deduplicate(&p2).unwrap(), EffectOutput::Done);
}

#[test]
fn deduplication_of_top_level_files_and_writable_files() {
    let s = test_store("dedup-top");
    let big = pattern(9000, 5);
    let a = s.item("a");
    let b = s.item("b");
    s.files.write_text(&a, &big).unwrap();
    s.files.write_text(&b, &big).unwrap();
    deduplicate_tree(&s.store, Path::new(a.as_str())).unwrap();
    let st = deduplicate_tree(&s.store, Path::new(b.as_str())).unwrap();
    assert_eq!(st.files_linked, 1);
    assert_eq!(
        fs::symlink_metadata(a.as_str()).unwrap().ino(),
        fs::symlink_metadata(b.as_str()).unwrap().ino()
    );

    let w = s.item("writable");
    fs::create_dir(w.as_str()).unwrap();
    let f = Path::new(w.as_str()).join("w");
    fs::write(&f, &big).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    let st = deduplicate_tree(&s.store, Path::new(w.as_str())).unwrap();
    assert_eq!(st.files_linked, 0);
    assert_eq!(
        st.warnings,
        vec![format!(
            "skipping suspicious writable file `{}'",
            f.display()
        )]
    );
}

#[test]
fn deduplication_replaces_a_corrupted_link() {
    let s = test_store("dedup-corrupt");
    let big = pattern(9000, 6);
    let link = s
        .store
        .join(".links")
        .join(hash_file_nar(HashAlgo::Sha256, false, &big).to_base32());
    fs::write(&link, b"short").unwrap();
    let p = s.add(1, "c", &dir(vec![(b"f", file(false, &big))]));
    let st = deduplicate_tree(&s.store, Path::new(p.as_str())).unwrap();
    assert_eq!(st.warnings.len(), 1, "{:?}", st.warnings);
    assert_eq!(fs::read(&link).unwrap(), big);
}

#[test]
fn optimize_store_skips_inodes_already_linked() {
    let s = test_store("dedup-inodes");
    let big = pattern(9000, 8);
    let p = s.add(1, "i", &dir(vec![(b"f", file(false, &big))]));
    deduplicate_tree(&s.store, Path::new(p.as_str())).unwrap();
    let mut d = Deduplicator::new(&s.store);
    d.load_link_inodes().unwrap();
    let mut stats = DedupStats::default();
    d.tree(Path::new(p.as_str()), &mut stats).unwrap();
    assert_eq!(stats, DedupStats::default());
}

// ---- dumps

#[test]
fn dumps_of_files_and_symlinks_at_the_root() {
    let s = test_store("dump-root");
    let exe = s.add(
        1,
        "exe",
        &file(true, &pattern(3 * READ_BUFFER_BYTES + 5, 3)),
    );
    let (bytes, hash, _) = s.dump(1, &exe, 1 << 20).unwrap();
    assert!(bytes == file_nar(true, &pattern(3 * READ_BUFFER_BYTES + 5, 3)));
    assert_eq!(hash, Hash::sha256(&bytes));
    let l = s.add(2, "link", &link("/gnu/store/elsewhere"));
    assert_eq!(
        s.dump(2, &l, 16).unwrap().0,
        link("/gnu/store/elsewhere").to_nar().unwrap()
    );
}

#[test]
fn dump_of_a_tree_built_by_hand_equals_the_writers_nar() {
    let s = test_store("dump-hand");
    let path = s.item("hand");
    let root = Path::new(path.as_str());
    fs::create_dir_all(root.join("z/y")).unwrap();
    fs::create_dir_all(root.join("Z")).unwrap();
    fs::write(root.join("z/y/file"), b"hello").unwrap();
    fs::write(root.join("z/exe"), b"#!").unwrap();
    fs::set_permissions(root.join("z/exe"), fs::Permissions::from_mode(0o700)).unwrap();
    symlink("y/file", root.join("z/sym")).unwrap();
    fs::write(root.join("a b"), b"").unwrap();
    let expected = dir(vec![
        (b"Z", dir(vec![])),
        (b"a b", file(false, b"")),
        (
            b"z",
            dir(vec![
                (b"exe", file(true, b"#!")),
                (b"sym", link("y/file")),
                (b"y", dir(vec![(b"file", file(false, b"hello"))])),
            ]),
        ),
    ]);
    assert_eq!(s.dump(1, &path, 50).unwrap().0, expected.to_nar().unwrap());
}

#[test]
fn dump_errors() {
    let s = test_store("dump-errors");
    let missing = s.item("missing");
    let e = s.files.dump_start(DumpId(1), &missing).unwrap_err();
    assert_eq!(e.kind, EffectErrorKind::NotFound);
    assert!(
        e.message.contains("No such file or directory"),
        "{}",
        e.message
    );

    let path = s.item("fifo");
    let root = Path::new(path.as_str());
    fs::create_dir(root).unwrap();
    let fifo = root.join("pipe");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let e = s.dump(2, &path, 4096).unwrap_err();
    assert_eq!(
        e.message,
        format!("file `{}' has an unsupported type", fifo.display())
    );
    // The failed dump repeats its error until it is ended.
    assert_eq!(s.files.dump_next(DumpId(2), 4096).unwrap_err(), e);
    s.files.dump_end(DumpId(2)).unwrap();
}

// ---- reading

#[test]
fn read_store_file_reads_regular_files_within_the_limit() {
    let s = test_store("read");
    let path = s.item("f.drv");
    s.files.write_text(&path, b"Derive()").unwrap();
    assert_eq!(
        s.files.read_store_file(&path, 8).unwrap(),
        EffectOutput::Bytes(b"Derive()".to_vec())
    );
    let e = s.files.read_store_file(&path, 7).unwrap_err();
    assert!(e.message.contains("too large"), "{}", e.message);

    let missing = s.item("missing.drv");
    let e = s.files.read_store_file(&missing, 100).unwrap_err();
    assert_eq!(e.kind, EffectErrorKind::NotFound);

    let d = s.item("dir");
    fs::create_dir(d.as_str()).unwrap();
    let e = s.files.read_store_file(&d, 100).unwrap_err();
    assert!(e.message.contains("is not a regular file"), "{}", e.message);

    let l = s.item("link");
    symlink(path.as_str(), l.as_str()).unwrap();
    let e = s.files.read_store_file(&l, 100).unwrap_err();
    assert!(e.message.contains("is not a regular file"), "{}", e.message);

    let f = s.item("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        f.as_str(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let e = s.files.read_store_file(&f, 100).unwrap_err();
    assert!(e.message.contains("is not a regular file"), "{}", e.message);
}

#[test]
fn delete_path_removes_read_only_trees_and_counts_bytes() {
    let s = test_store("delete");
    let p = s.add(1, "del", &sample_tree());
    let freed = delete_path(Path::new(p.as_str())).unwrap();
    assert!(freed >= 310_000, "{freed}");
    assert!(!Path::new(p.as_str()).exists());
    assert_eq!(delete_path(Path::new(p.as_str())).unwrap(), 0);
}

#[test]
fn canonical_modes() {
    assert_eq!(canonical_mode(0o100644), 0o444);
    assert_eq!(canonical_mode(0o100755), 0o555);
    assert_eq!(canonical_mode(0o4700), 0o555);
    assert_eq!(canonical_mode(0o070), 0o444);
}

#[test]
fn stray_bytes_in_names_survive_the_round_trip() {
    let s = test_store("names");
    let tree = dir(vec![(b"\x01\x7f\xfe", file(false, b"x"))]);
    let p = s.add(1, "names", &tree);
    let names: Vec<Vec<u8>> = fs::read_dir(p.as_str())
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    assert_eq!(names, vec![b"\x01\x7f\xfe".to_vec()]);
}

#[test]
fn items_are_given_to_the_configured_owner() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let s = test_store("owner");
    let other = Owner {
        uid: 12_345,
        gid: 23_456,
        chown_needed: true,
    };
    let files = Files::at(&s.store, other);
    let nar = sample_tree().to_nar().unwrap();
    files
        .upload_start(UploadId(1), UploadKind::Recursive, HashAlgo::Sha256)
        .unwrap();
    files.upload_chunk(UploadId(1), &nar).unwrap();
    files.upload_finish(UploadId(1)).unwrap();
    let path = s.item("owned");
    files.upload_install(UploadId(1), &path).unwrap();
    let text = s.item("owned-text");
    files.write_text(&text, b"text").unwrap();
    fn walk(p: &Path, f: &mut dyn FnMut(&Path)) {
        f(p);
        if fs::symlink_metadata(p).unwrap().is_dir() {
            for e in fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), f);
            }
        }
    }
    for root in [path.as_str(), text.as_str()] {
        walk(Path::new(root), &mut |p| {
            let st = fs::symlink_metadata(p).unwrap();
            assert_eq!((st.uid(), st.gid()), (12_345, 23_456), "{}", p.display());
            assert_eq!(st.mtime(), 1);
        });
    }
}

#[test]
fn the_umask_is_read_from_proc() {
    let umask = fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Umask:")
                .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
        })
        .unwrap();
    assert_eq!(umask_may_strip(0o555), umask & 0o555 != 0);
    assert_eq!(umask_may_strip(0o777), umask != 0);
}

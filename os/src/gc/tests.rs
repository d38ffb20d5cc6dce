//! Tests of the collector's effects against a real store (SQLite and
//! files) in a temporary directory: roots of every kind, other processes'
//! temporary roots under the locking protocol, deletion with its in-use
//! refusal and the trash, `.links` clean-up, `verify-store` and
//! `optimise-store`, and whole collections planned by the core.

use super::*;
use crate::db::tests::{TempStore, temp_store};
use crate::files::deduplicate_tree;
use crate::roots::Roots;
use crate::setup::prepare_store;
use guixd_core::effect::{EffectOutput, Registration, RegistrationGroup, ValidPathInfo};
use guixd_core::gc::{GcAction, GcGraph, GcOptions, GcRoots, GcRun, Level, plan};
use guixd_core::hash::Hash;
use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A prepared store with its database and collector.
struct Fixture {
    store: TempStore,
    db: Db,
    gc: Gc,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let store = temp_store(tag);
        prepare_store(&store.config).unwrap();
        let db = Db::open(&store.config).unwrap();
        let gc = Gc::new(&store.config);
        Fixture { store, db, gc }
    }

    fn store_dir(&self) -> &StoreDir {
        &self.store.config.dirs.store
    }

    fn store(&self) -> &Path {
        Path::new(self.store_dir().as_str())
    }

    fn state(&self) -> &Path {
        &self.store.config.dirs.state
    }

    fn path(&self, name: &str) -> StorePath {
        self.store_dir()
            .make_store_path("source", &Hash::sha256(name.as_bytes()), name)
            .unwrap()
    }

    /// Creates item `name` as a read-only directory holding `files`.
    fn dir_item(&self, name: &str, files: &[(&str, &[u8])]) -> StorePath {
        let path = self.path(name);
        let dir = Path::new(path.as_str());
        fs::create_dir(dir).unwrap();
        for (file, contents) in files {
            let f = dir.join(file);
            fs::write(&f, contents).unwrap();
            fs::set_permissions(&f, fs::Permissions::from_mode(0o444)).unwrap();
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).unwrap();
        path
    }

    /// Creates item `name` as a read-only regular file.
    fn file_item(&self, name: &str, contents: &[u8]) -> StorePath {
        let path = self.path(name);
        fs::write(path.as_str(), contents).unwrap();
        fs::set_permissions(path.as_str(), fs::Permissions::from_mode(0o444)).unwrap();
        path
    }

    /// Registers `path` (already on disk) with its true NAR hash and size.
    fn register(
        &self,
        path: &StorePath,
        refs: &[&StorePath],
        deriver: Option<&StorePath>,
        outputs: &[(&str, &StorePath)],
    ) {
        let (nar_hash, nar_size) = hash_path(self.store(), path).unwrap();
        let group = RegistrationGroup {
            items: vec![Registration {
                info: ValidPathInfo {
                    path: path.clone(),
                    deriver: deriver.cloned(),
                    nar_hash,
                    references: refs.iter().map(|&r| r.clone()).collect(),
                    registration_time: 1_700_000_000,
                    nar_size,
                },
                derivation_outputs: outputs
                    .iter()
                    .map(|(id, p)| ((*id).to_owned(), (*p).clone()))
                    .collect(),
            }],
        };
        match self.db.register(vec![group]).unwrap() {
            EffectOutput::Registered(results) => results.into_iter().for_each(|r| r.unwrap()),
            other => panic!("{other:?}"),
        }
    }

    fn valid(&self, path: &StorePath) -> bool {
        self.db.is_valid_path(path.as_str()).unwrap()
    }

    fn exists(&self, path: &StorePath) -> bool {
        fs::symlink_metadata(path.as_str()).is_ok()
    }
}

fn big(byte: u8) -> Vec<u8> {
    vec![byte; 10_000]
}

fn deleted(outcome: DeleteOutcome) -> (bool, u64, u64) {
    match outcome {
        DeleteOutcome::Deleted {
            existed,
            freed_bytes,
            invalidated_bytes,
            ..
        } => (existed, freed_bytes, invalidated_bytes),
        other => panic!("not deleted: {other:?}"),
    }
}

// ---- roots

#[test]
fn roots_of_every_kind_are_found_as_the_daemon_finds_them() {
    let f = Fixture::new("gc-roots");
    let state = f.state().to_path_buf();
    let home = f.store.root.join("home");
    fs::create_dir_all(&home).unwrap();
    let direct = f.dir_item("direct", &[("a", b"a")]);
    let sub = f.dir_item("sub", &[("x", b"x")]);
    let indirect = f.file_item("indirect", b"i");
    let relative = f.file_item("relative", b"r");
    let file_root = f.file_item("file-root", b"f");
    let profile = f.file_item("profile", b"p");
    let manifest = f.file_item("manifest", b"m");
    let invalid = f.path("never-registered");
    for p in [
        &direct, &sub, &indirect, &relative, &file_root, &profile, &manifest,
    ] {
        f.register(p, &[], None, &[]);
    }
    let gcroots = state.join("gcroots");
    fs::create_dir_all(gcroots.join("deep/er")).unwrap();
    fs::create_dir_all(gcroots.join("auto")).unwrap();
    symlink(direct.as_str(), gcroots.join("direct")).unwrap();
    symlink(format!("{sub}/x"), gcroots.join("deep/er/sub")).unwrap();
    // An indirect root: auto/<h> points to the user's link, which points
    // into the store; the root is keyed by the user's link.
    let user_link = home.join("result");
    symlink(indirect.as_str(), &user_link).unwrap();
    Roots::at(&state)
        .add_indirect_root(user_link.to_str().unwrap())
        .unwrap();
    // A relative indirect root.
    symlink(relative.as_str(), home.join("rel")).unwrap();
    symlink("../../../home/rel", gcroots.join("auto/relative")).unwrap();
    // A stale indirect root is removed; a dangling link elsewhere is not.
    let stale_target = home.join("gone");
    symlink(&stale_target, gcroots.join("auto/stale")).unwrap();
    symlink(&stale_target, gcroots.join("dangling")).unwrap();
    // A regular file roots the item of the same name.
    fs::write(gcroots.join(file_root.base_name()), b"").unwrap();
    fs::write(gcroots.join(invalid.base_name()), b"").unwrap();
    // An invalid root is skipped, with the daemon's words.
    symlink(invalid.as_str(), gcroots.join("bad")).unwrap();
    // A symlink to a directory is not followed.
    symlink(&home, gcroots.join("to-home")).unwrap();
    symlink(profile.as_str(), state.join("profiles/guix-profile-1-link")).unwrap();
    fs::create_dir_all(state.join("manifests")).unwrap();
    symlink(manifest.as_str(), state.join("manifests/m")).unwrap();

    let found = f.gc.find_roots(&f.db).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let mut expected = vec![
        (s(&gcroots.join("direct")), direct.clone()),
        (s(&gcroots.join("deep/er/sub")), sub.clone()),
        (s(&user_link), indirect.clone()),
        (s(&home.join("rel")), relative.clone()),
        (s(&gcroots.join(file_root.base_name())), file_root.clone()),
        (
            s(&state.join("profiles/guix-profile-1-link")),
            profile.clone(),
        ),
        (s(&state.join("manifests/m")), manifest.clone()),
    ];
    expected.sort();
    assert_eq!(found.roots, expected);
    let mut messages = found.messages.clone();
    messages.sort();
    assert_eq!(
        messages,
        vec![
            format!(
                "removing stale link from `{}' to `{}'",
                gcroots.join("auto/stale").display(),
                stale_target.display()
            ),
            format!(
                "skipping invalid root from `{}' to `{invalid}'",
                gcroots.join("bad").display()
            ),
        ]
    );
    assert!(fs::symlink_metadata(gcroots.join("auto/stale")).is_err());
    assert!(fs::symlink_metadata(gcroots.join("dangling")).is_ok());

    // Missing directories are reported and skipped.
    fs::remove_dir_all(state.join("profiles")).unwrap();
    fs::remove_file(gcroots.join("bad")).unwrap();
    let found = f.gc.find_roots(&f.db).unwrap();
    assert_eq!(
        found.messages,
        vec![format!(
            "cannot read potential root '{}': No such file or directory",
            state.join("profiles").display()
        )]
    );
    assert_eq!(found.roots.len(), expected.len() - 1);
}

#[test]
fn runtime_roots_come_from_the_guix_program() {
    let f = Fixture::new("gc-busy");
    let used = f.dir_item("used", &[("bin", b"#!")]);
    f.register(&used, &[], None, &[]);
    let unknown = f.path("unknown");
    let script = f.store.root.join("guix");
    let write_script = |body: &str| {
        fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    };
    write_script(&format!(
        "[ \"$1 $2\" = \"gc --list-busy\" ] || exit 9\n\
         [ \"$NIX_STORE_DIR\" = \"{}\" ] || exit 8\n\
         echo {used}/bin\necho /proc/1/exe\necho {unknown}\necho {used}",
        f.store_dir().as_str()
    ));
    let gc = Gc::new(&OsConfig {
        dirs: guixd_core::config::Dirs {
            guix_program: script.clone(),
            ..f.store.config.dirs.clone()
        },
        ..f.store.config.clone()
    });
    assert_eq!(gc.runtime_roots(&f.db).unwrap(), BTreeSet::from([used]));

    write_script("exit 3");
    let err = gc.runtime_roots(&f.db).unwrap_err();
    assert_eq!(
        err.message,
        format!("program `{}' failed with exit code 3", script.display())
    );
    write_script("kill -9 $$");
    let err = gc.runtime_roots(&f.db).unwrap_err();
    assert_eq!(
        err.message,
        format!(
            "program `{}' failed due to signal 9 (Killed)",
            script.display()
        )
    );
    fs::remove_file(&script).unwrap();
    let err = gc.runtime_roots(&f.db).unwrap_err();
    assert!(
        err.message.ends_with("failed with exit code 127"),
        "{}",
        err.message
    );
}

// ---- temporary roots of other processes

/// A stand-in for another daemon's session: a Python process that keeps a
/// classic `fcntl` read lock on its temporary-roots file, as the C++
/// daemon does, and tries a write lock when asked.
struct OtherProcess {
    child: Child,
    lines: BufReader<std::process::ChildStdout>,
}

impl OtherProcess {
    const SCRIPT: &'static str = r#"
import fcntl, os, sys
d, roots = sys.argv[1], sys.argv[2:]
path = os.path.join(d, str(os.getpid()))
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
fcntl.lockf(fd, fcntl.LOCK_SH)
for r in roots:
    os.write(fd, r.encode() + b"\0")
print(path, flush=True)
for line in sys.stdin:
    if line.strip() == "try-write":
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(fd, fcntl.LOCK_SH)
            print("ok", flush=True)
        except OSError:
            print("blocked", flush=True)
"#;

    fn start(temproots: &Path, roots: &[&StorePath]) -> Option<(OtherProcess, PathBuf)> {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(Self::SCRIPT)
            .arg(temproots)
            .args(roots.iter().map(|r| r.as_str()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let mut lines = BufReader::new(child.stdout.take()?);
        let mut path = String::new();
        lines.read_line(&mut path).ok()?;
        if path.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some((OtherProcess { child, lines }, PathBuf::from(path.trim())))
    }

    fn try_write(&mut self) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"try-write\n").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.lines.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }
}

impl Drop for OtherProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[test]
fn other_processes_temp_roots_are_read_under_their_protocol() {
    let f = Fixture::new("gc-temproots");
    let a = f.path("a");
    let b = f.path("b");
    let mine = f.path("mine");
    let temproots = f.state().join("temproots");
    // Our own file (this process's pid) is never read nor locked.
    let own = Roots::at(f.state());
    own.add_temp_root(&mine).unwrap();
    // A dead process's file: nobody holds a lock on it.
    let stale = temproots.join("999999999");
    fs::write(&stale, format!("{b}\0")).unwrap();
    let Some((mut other, other_file)) = OtherProcess::start(&temproots, &[&a]) else {
        eprintln!("python3 is not available; skipping");
        return;
    };
    assert_eq!(other.try_write(), "ok");

    assert!(f.gc.read_temp_roots().is_err(), "needs gc.lock");
    assert!(f.gc.lock(Wait::No).unwrap());
    let read = f.gc.read_temp_roots().unwrap();
    assert_eq!(read.roots, BTreeSet::from([a.clone()]));
    assert_eq!(
        read.messages,
        vec![format!(
            "removing stale temporary roots file `{}'",
            stale.display()
        )]
    );
    assert!(!stale.exists());
    assert!(other_file.exists());
    // The other process cannot add roots while the collector runs...
    assert_eq!(other.try_write(), "blocked");
    // ...but this daemon's own additions never wait for the collector.
    let (tx, rx) = std::sync::mpsc::channel();
    let own = std::sync::Arc::new(own);
    let adder = {
        let own = own.clone();
        let p = f.path("mine2");
        std::thread::spawn(move || tx.send(own.add_temp_root(&p)).unwrap())
    };
    rx.recv_timeout(Duration::from_secs(20))
        .expect("our own temp root waited for the collector")
        .unwrap();
    adder.join().unwrap();
    // Another collector (say the C++ daemon's) cannot start meanwhile.
    assert!(
        crate::roots::open_gc_lock(f.state(), LockKind::Exclusive, Wait::No)
            .unwrap()
            .is_none()
    );
    f.gc.release();
    assert_eq!(other.try_write(), "ok");
    assert!(
        crate::roots::open_gc_lock(f.state(), LockKind::Exclusive, Wait::No)
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_second_open_description_stands_for_a_live_owner() {
    // Without Python: an OFD read lock held through another open file
    // description of this process is as good as another process's lock.
    let f = Fixture::new("gc-temproots-ofd");
    let a = f.path("a");
    let file = f.state().join("temproots/12345");
    fs::write(&file, format!("{a}\0/gnu/store/partial")).unwrap();
    let holder = crate::locks::open_lock_file(&file, false).unwrap().unwrap();
    assert!(crate::locks::lock_fd(&holder, LockKind::Shared, Wait::No).unwrap());
    assert!(f.gc.lock(Wait::No).unwrap());
    let read = f.gc.read_temp_roots().unwrap();
    assert_eq!(
        read.roots,
        BTreeSet::from([a]),
        "the partial record is ignored"
    );
    assert!(read.messages.is_empty());
    // The collector's read lock keeps the owner from writing.
    assert!(!crate::locks::lock_fd(&holder, LockKind::Exclusive, Wait::No).unwrap());
    f.gc.release();
    assert!(crate::locks::lock_fd(&holder, LockKind::Exclusive, Wait::No).unwrap());

    // A record that is not a store path fails the collection.
    let bad = f.state().join("temproots/777");
    fs::write(&bad, b"/not/the/store\0").unwrap();
    let holder2 = crate::locks::open_lock_file(&bad, false).unwrap().unwrap();
    assert!(crate::locks::lock_fd(&holder2, LockKind::Shared, Wait::No).unwrap());
    drop(holder);
    assert!(f.gc.lock(Wait::No).unwrap());
    let err = f.gc.read_temp_roots().unwrap_err();
    assert_eq!(err.message, "path `/not/the/store' is not in the store");
    f.gc.release();
}

// ---- deletion

#[test]
fn deletion_refuses_paths_in_use_and_uses_the_trash() {
    let f = Fixture::new("gc-delete");
    let lib = f.dir_item("lib", &[("libx.so", &big(1)), ("small", b"s")]);
    let app = f.dir_item("app", &[("bin", b"app")]);
    let text = f.file_item("text", b"hello");
    f.register(&lib, &[&lib], None, &[]);
    f.register(&app, &[&lib], None, &[]);
    f.register(&text, &[], None, &[]);
    let leftover = f.store().join("leftover");
    fs::write(&leftover, b"12345678").unwrap();
    let leftover = f
        .store_dir()
        .parse_path(leftover.to_str().unwrap())
        .unwrap();

    let prepared = f.gc.prepare_trash().unwrap();
    assert!(prepared.use_trash);
    assert!(f.gc.trash().is_dir());

    // lib has a referrer other than itself.
    assert_eq!(
        f.gc.delete_path(&f.db, &lib, true).unwrap(),
        DeleteOutcome::InUse {
            referrers: vec![app.to_string()]
        }
    );
    assert!(f.valid(&lib) && f.exists(&lib));
    // An entry planned invalid that is valid now is left alone.
    assert_eq!(
        f.gc.delete_path(&f.db, &text, false).unwrap(),
        DeleteOutcome::BecameValid
    );
    assert!(f.valid(&text));

    let app_size = match f.db.query_path_info(&app).unwrap() {
        EffectOutput::PathInfo(Some(info)) => info.nar_size,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        deleted(f.gc.delete_path(&f.db, &app, true).unwrap()),
        (true, 0, app_size)
    );
    assert!(!f.valid(&app) && !f.exists(&app));
    assert!(f.gc.trash().join(app.base_name()).is_dir());
    let (existed, _, _) = deleted(f.gc.delete_path(&f.db, &lib, true).unwrap());
    assert!(existed && !f.valid(&lib));
    // A file is deleted in place.
    assert_eq!(
        deleted(f.gc.delete_path(&f.db, &text, true).unwrap()),
        (true, 5, 0)
    );
    assert_eq!(
        deleted(f.gc.delete_path(&f.db, &leftover, false).unwrap()),
        (true, 8, 0)
    );
    // Nothing there: not an error, nothing deleted.
    assert_eq!(
        deleted(f.gc.delete_path(&f.db, &f.path("nothing"), false).unwrap()),
        (false, 0, 0)
    );

    // Emptying the trash frees the files of app and lib.
    let freed = f.gc.empty_trash().unwrap();
    assert_eq!(freed, 3 + 10_000 + 1);
    assert!(!f.gc.trash().exists());
}

#[test]
fn bytes_freed_count_files_with_a_links_entry_when_deduplicating() {
    let f = Fixture::new("gc-threshold");
    let item = f.dir_item("item", &[("big", &big(2))]);
    deduplicate_tree(f.store(), Path::new(item.as_str())).unwrap();
    let file = Path::new(item.as_str()).join("big");
    assert_eq!(fs::metadata(&file).unwrap().nlink(), 2);
    // The daemon's threshold: 2 links when deduplication is on.
    assert_eq!(delete_tree(Path::new(item.as_str()), 1).unwrap(), 0);
    let item2 = f.dir_item("item2", &[("big", &big(2))]);
    deduplicate_tree(f.store(), Path::new(item2.as_str())).unwrap();
    assert_eq!(delete_tree(Path::new(item2.as_str()), 2).unwrap(), 10_000);

    // Now the `.links` entry is unused: the clean-up removes it.
    fs::write(f.store().join(".links/small-shared"), b"x").unwrap();
    fs::hard_link(
        f.store().join(".links/small-shared"),
        f.store().join("small-other"),
    )
    .unwrap();
    let kept = f.dir_item("kept", &[("big", &big(3))]);
    deduplicate_tree(f.store(), Path::new(kept.as_str())).unwrap();
    let report = f.gc.remove_unused_links().unwrap();
    assert_eq!(report.freed_bytes, 10_000 + 1);
    let links: Vec<_> = fs::read_dir(f.store().join(".links"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(links.len(), 1, "{links:?}");
    let overhead = fs::metadata(f.store().join(".links")).unwrap().size() as i64;
    assert_eq!(report.saved_bytes, 10_000 - 10_000 - overhead);
}

// ---- whole collections

#[test]
fn a_collection_planned_by_the_core_deletes_exactly_the_garbage() {
    let f = Fixture::new("gc-run");
    let lib = f.dir_item("lib", &[("libx.so", &big(4))]);
    let app = f.dir_item("app", &[("bin", b"app")]);
    let drv = f.file_item("app.drv", b"Derive(...)");
    let old = f.dir_item("old", &[("bin", b"old")]);
    let junk = f.dir_item("junk", &[("big", &big(5))]);
    let building = f.path("building");
    let temp = f.file_item("temp", b"t");
    f.register(&lib, &[], None, &[]);
    f.register(&drv, &[], None, &[("out", &app)]);
    f.register(&app, &[&lib], Some(&drv), &[]);
    f.register(&old, &[&lib], None, &[]);
    f.register(&junk, &[], None, &[]);
    f.register(&temp, &[], None, &[]);
    for p in [&lib, &junk] {
        deduplicate_tree(f.store(), Path::new(p.as_str())).unwrap();
    }
    // Leftovers: a stray file, a lock of a path being built elsewhere
    // (temp-rooted by another process), and a lock nobody needs.
    fs::write(f.store().join("stray"), b"stray").unwrap();
    fs::write(format!("{building}.lock"), b"").unwrap();
    fs::write(format!("{old}.lock"), b"").unwrap();
    symlink(app.as_str(), f.state().join("gcroots/app")).unwrap();
    let other_file = f.state().join("temproots/4242");
    fs::write(&other_file, format!("{building}\0{temp}\0")).unwrap();
    let holder = crate::locks::open_lock_file(&other_file, false)
        .unwrap()
        .unwrap();
    assert!(crate::locks::lock_fd(&holder, LockKind::Shared, Wait::No).unwrap());

    let found = f.gc.find_roots(&f.db).unwrap();
    assert!(f.gc.lock(Wait::No).unwrap());
    let temp_roots = f.gc.read_temp_roots().unwrap();
    let (rows, entries) = f.gc.snapshot(&f.db).unwrap();
    let graph = GcGraph::new(f.store_dir(), rows, f.gc.limits()).unwrap();
    let roots = GcRoots {
        permanent: found.roots.into_iter().map(|(_, p)| p).collect(),
        temporary: temp_roots.roots,
        locked: BTreeSet::new(),
    };
    let live = plan(
        &graph,
        &roots,
        &entries,
        &GcOptions::new(GcAction::ReturnLive),
    );
    assert_eq!(
        live.listed.iter().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([lib.clone(), app.clone(), drv.clone(), temp.clone()])
    );
    let p = plan(
        &graph,
        &roots,
        &entries,
        &GcOptions::new(GcAction::DeleteDead),
    );
    assert!(f.gc.prepare_trash().unwrap().use_trash);
    let mut run = GcRun::new(graph, p);
    let mut lines = Vec::new();
    while let Some(victim) = run.next_victim() {
        let outcome =
            f.gc.delete_path(&f.db, &victim.path, victim.expect_valid())
                .unwrap();
        lines.extend(run.complete(outcome));
    }
    f.gc.release();
    let outcome = run.finish();
    let trash_bytes = f.gc.empty_trash().unwrap();
    let links = f.gc.remove_unused_links().unwrap();

    let stray = f
        .store_dir()
        .parse_path(&format!("{}/stray", f.store_dir().as_str()))
        .unwrap();
    let old_lock = f.store_dir().parse_path(&format!("{old}.lock")).unwrap();
    assert_eq!(
        outcome.paths.iter().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([old.clone(), junk.clone(), stray, old_lock])
    );
    assert_eq!(lines.len(), 4);
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with('[') && l.contains("] deleting '"))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(&format!("] deleting '{junk}'")))
    );
    // The first line shows nothing freed yet.
    assert!(
        lines[0].starts_with("[   0  bytes] deleting '"),
        "{}",
        lines[0]
    );
    for p in [&lib, &app, &drv, &temp] {
        assert!(f.valid(p) && f.exists(p), "{p} must stay");
    }
    for p in [&old, &junk] {
        assert!(!f.valid(p) && !f.exists(p), "{p} must go");
    }
    assert!(Path::new(&format!("{building}.lock")).exists());
    // junk's big file had a `.links` entry: its bytes are freed when the
    // trash goes (2 links), and the entry itself when `.links` is cleaned.
    assert_eq!(trash_bytes, 10_000 + 3);
    assert_eq!(links.freed_bytes, 10_000);
    assert_eq!(outcome.bytes_freed, 5);
    drop(holder);
}

// ---- verify-store

#[test]
fn verify_invalidates_vanished_paths_without_valid_referrers() {
    let f = Fixture::new("gc-verify");
    let a = f.dir_item("a", &[("f", b"a")]);
    let b = f.dir_item("b", &[("f", b"b")]);
    let c = f.file_item("c", b"c");
    let d = f.file_item("d", b"d");
    f.register(&a, &[], None, &[]);
    f.register(&b, &[&a], None, &[]);
    f.register(&c, &[], None, &[]);
    f.register(&d, &[&c], None, &[]);
    let report = f.gc.verify_store(&f.db, false).unwrap();
    assert!(!report.errors);
    assert_eq!(
        report.messages,
        vec![
            (Level::Error, "reading the store...".to_owned()),
            (Level::Info, "checking path existence...".to_owned()),
        ]
    );

    delete_tree(Path::new(a.as_str()), 1).unwrap();
    delete_tree(Path::new(b.as_str()), 1).unwrap();
    delete_tree(Path::new(c.as_str()), 1).unwrap();
    let report = f.gc.verify_store(&f.db, false).unwrap();
    assert!(report.errors, "c still has a valid referrer");
    let texts: Vec<&str> = report.messages.iter().map(|(_, t)| t.as_str()).collect();
    assert!(texts.contains(&format!("path `{a}' disappeared, removing from database...").as_str()));
    assert!(texts.contains(&format!("path `{b}' disappeared, removing from database...").as_str()));
    assert!(
        texts.contains(
            &format!("path `{c}' disappeared, but it still has valid referrers!").as_str()
        )
    );
    // b is a referrer of a, so it is dealt with first.
    let pos = |p: &StorePath| texts.iter().position(|t| t.contains(p.as_str())).unwrap();
    assert!(pos(&b) < pos(&a));
    assert!(!f.valid(&a) && !f.valid(&b) && f.valid(&c) && f.valid(&d));
}

#[test]
fn verify_with_contents_finds_tampering_and_fills_missing_sizes() {
    let f = Fixture::new("gc-verify-contents");
    let good = f.dir_item("good", &[("f", b"good")]);
    let tampered = f.file_item("tampered", b"original");
    let sizeless = f.file_item("sizeless", b"size");
    for p in [&good, &tampered, &sizeless] {
        f.register(p, &[], None, &[]);
    }
    let (expected, _) = hash_path(f.store(), &tampered).unwrap();
    fs::set_permissions(tampered.as_str(), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(tampered.as_str(), b"changed!").unwrap();
    fs::set_permissions(tampered.as_str(), fs::Permissions::from_mode(0o444)).unwrap();
    let (actual, _) = hash_path(f.store(), &tampered).unwrap();
    let conn = rusqlite::Connection::open(f.db.file()).unwrap();
    conn.execute(
        "update ValidPaths set narSize = NULL where path = ?",
        [sizeless.as_str()],
    )
    .unwrap();
    let (_, size) = hash_path(f.store(), &sizeless).unwrap();

    let report = f.gc.verify_store(&f.db, true).unwrap();
    assert!(report.errors);
    let texts: Vec<&str> = report.messages.iter().map(|(_, t)| t.as_str()).collect();
    assert!(texts.contains(&"checking hashes..."));
    assert!(
        texts.contains(
            &format!(
                "path `{tampered}' was modified! expected hash `{}', got `{}'",
                expected.to_hex(),
                actual.to_hex()
            )
            .as_str()
        )
    );
    assert!(texts.contains(&format!("updating size field on `{sizeless}' to {size}").as_str()));
    let stored: i64 = conn
        .query_row(
            "select narSize from ValidPaths where path = ?",
            [sizeless.as_str()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored as u64, size);
    // Only the tampered path is still wrong.
    let report = f.gc.verify_store(&f.db, true).unwrap();
    let errors: Vec<&str> = report
        .messages
        .iter()
        .map(|(_, t)| t.as_str())
        .filter(|t| t.starts_with("path "))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
}

// ---- optimise-store

#[test]
fn optimise_links_identical_files_once() {
    let f = Fixture::new("gc-optimise");
    let one = f.dir_item("one", &[("data", &big(7)), ("tiny", b"t")]);
    let two = f.dir_item("two", &[("data", &big(7))]);
    let three = f.file_item("three", &big(7));
    for p in [&one, &two, &three] {
        f.register(p, &[], None, &[]);
    }
    let unregistered = f.dir_item("unregistered", &[("data", &big(7))]);
    let report = f.gc.optimise_store(&f.db).unwrap();
    assert_eq!(report.files_linked, 2);
    assert_eq!(report.bytes_freed, 20_000);
    let ino = |p: PathBuf| fs::metadata(p).unwrap().ino();
    let data = ino(Path::new(one.as_str()).join("data"));
    assert_eq!(ino(Path::new(two.as_str()).join("data")), data);
    assert_eq!(ino(PathBuf::from(three.as_str())), data);
    assert_ne!(ino(Path::new(unregistered.as_str()).join("data")), data);
    assert_eq!(
        guixd_core::gc::optimise_line(report.bytes_freed, report.files_linked),
        "  19.53 KiB freed by hard-linking 2 files"
    );
    let again = f.gc.optimise_store(&f.db).unwrap();
    assert_eq!((again.files_linked, again.bytes_freed), (0, 0));
}

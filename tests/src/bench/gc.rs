//! The garbage-collection scenarios: listing and deleting the dead part
//! of a big store (100,000 dead paths of 300,000 in the full run), and the
//! longest stall a concurrent client's add-text-to-store sees while the
//! collector deletes.
//!
//! The store is written directly, never through the daemon (which would
//! take far too long): the files and the rows of Guix's `ValidPaths` and
//! `Refs` tables, in the database the daemon under test created itself.
//! Its shape ([`Model`]): one top item, which the only GC root (a symlink
//! under `<state>/gcroots`) points to, refers to the live "group" items,
//! each of which refers to up to a thousand live leaves; the dead part is
//! dead groups, each referring to its dead leaves and to one live leaf.
//! Every fiftieth leaf is a directory (an add-to-store item), the other
//! items are text items (add-text-to-store items, the groups and the top
//! one with references).
//!
//! Keeps true:
//! - every item is exactly what the daemon would have registered for the
//!   same addition: its store path follows from its contents (and
//!   references), and its row's NAR hash and NAR size are those of its
//!   files;
//! - a repetition that deletes starts from the full store again: the
//!   daemon is stopped, files that are missing are written back, entries
//!   the model does not know are removed, and the database file is the
//!   copy taken right after the first fill; only then is it started again,
//!   before the timer;
//! - the value of the listing and deleting scenarios is the time of the
//!   one collect-garbage call; a reply that does not name exactly the
//!   model's dead paths counts as an error.

use super::env::{Daemon, Implementation, host, remove_tree};
use super::{Config, Sample, Scenario, Slot, Target, secs};
use guixd_core::nar::{NarEvent, NarWriter, file_nar_prefix, file_nar_suffix, hash_file_nar};
use guixd_core::wire::GcRequest;
use guixd_core::{Hash, HashAlgo, StoreDir, StorePath};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A scenario that deletes the dead part of the store (restored before
/// every repetition but the first), with a probing client when `probe`.
fn deleting(
    name: String,
    target: Target,
    description: String,
    models: &Models,
    (total, dead): (usize, usize),
    probe: bool,
) -> Scenario {
    let m = Rc::clone(models);
    let m2 = Rc::clone(models);
    Scenario {
        name,
        unit: "s",
        target,
        description,
        implementations: Implementation::ALL.to_vec(),
        daemon_args: Vec::new(),
        reps_max: Some(3),
        prepare: Box::new(move |slot| prepare(slot, &m, total, dead)),
        run: Box::new(move |slot, rep| {
            if rep > 0 {
                restore(slot, &m2);
            }
            collect(slot, &m2, ACTION_DELETE_DEAD, probe)
        }),
    }
}

/// collect-garbage actions (spec 01).
const ACTION_RETURN_DEAD: u32 = 1;
const ACTION_DELETE_DEAD: u32 = 2;

/// The name of the GC root symlink under `<state>/gcroots`.
const ROOT_LINK: &str = "bench-root";

/// Leaves one group item refers to at most.
const GROUP_FAN_OUT: usize = 1000;

/// Every this many leaves, one is a directory rather than a text file.
const DIRECTORY_EVERY: usize = 50;

/// The scenarios of this module. Sizes: `GUIXD_BENCH_GC_SIZE=TOTAL/DEAD`
/// when set, else 300,000/100,000 (9,000/3,000 with `--quick`).
pub fn scenarios(config: &Config) -> Vec<Scenario> {
    let (total, dead) = sizes(config);
    let models: Models = Rc::new(RefCell::new(BTreeMap::new()));
    let mut out = Vec::new();

    let m = Rc::clone(&models);
    let m2 = Rc::clone(&models);
    out.push(Scenario {
        name: format!("gc list-dead {dead} of {total}"),
        unit: "s",
        target: Target::RatioAtLeast(10.0),
        description: format!(
            "collect-garbage return-dead (guix gc --list-dead) on a store of {total} valid \
             paths of which {dead} are dead"
        ),
        implementations: Implementation::ALL.to_vec(),
        daemon_args: Vec::new(),
        reps_max: Some(3),
        prepare: Box::new(move |slot| prepare(slot, &m, total, dead)),
        run: Box::new(move |slot, _| collect(slot, &m2, ACTION_RETURN_DEAD, false)),
    });

    out.push(deleting(
        format!("gc delete-dead {dead} of {total}"),
        Target::RatioAtLeast(10.0),
        format!(
            "collect-garbage delete-dead (guix gc) on a store of {total} valid paths of \
             which {dead} are dead, restored before each repetition"
        ),
        &models,
        (total, dead),
        false,
    ));
    out.push(deleting(
        format!("gc add-text stall, delete {dead}"),
        Target::None,
        format!(
            "the longest add-text-to-store call of a client looping on its own connection \
             while collect-garbage deletes {dead} dead paths of {total}"
        ),
        &models,
        (total, dead),
        true,
    ));
    out
}

/// The models made so far, by store directory (store paths depend on it,
/// and each daemon has its own).
type Models = Rc<RefCell<BTreeMap<String, Rc<Model>>>>;

/// The store a scenario collects in.
pub struct Model {
    /// The store directory, as the daemon sees it.
    pub store: String,
    /// Every item; an item's references come before it.
    items: Vec<Item>,
    /// The dead items' paths.
    dead: BTreeSet<String>,
    /// The item the GC root points to.
    top: usize,
}

struct Item {
    path: StorePath,
    body: Body,
    /// `sha256:` and the hexadecimal NAR hash, as the database keeps it.
    nar_hash: String,
    nar_size: u64,
    references: Vec<usize>,
}

enum Body {
    Text(Vec<u8>),
    /// Regular files of a directory, sorted by name.
    Directory(Vec<(String, Vec<u8>)>),
}

impl Model {
    /// The store of `total` valid paths, `dead` of them unreachable from
    /// the root, in store directory `store`.
    pub fn new(store: &str, total: usize, dead: usize) -> Model {
        let dir = StoreDir::new(store).unwrap_or_else(|e| panic!("store dir {store}: {e}"));
        let live = total - dead;
        let live_groups = (live - 1).div_ceil(GROUP_FAN_OUT + 1);
        let live_leaves = live - 1 - live_groups;
        let dead_groups = dead.div_ceil(GROUP_FAN_OUT + 1);
        let dead_leaves = dead - dead_groups;
        let mut items: Vec<Item> = Vec::with_capacity(total);
        for i in 0..live_leaves + dead_leaves {
            items.push(leaf(&dir, i));
        }
        let mut dead_set: BTreeSet<String> = items[live_leaves..]
            .iter()
            .map(|i| i.path.as_str().to_owned())
            .collect();
        let mut live_group_ids = Vec::new();
        for (g, chunk) in chunks(0, live_leaves, live_groups).into_iter().enumerate() {
            let id = items.len();
            items.push(text_item(&dir, &items, &format!("gc-group-{g}"), chunk));
            live_group_ids.push(id);
        }
        for (g, chunk) in chunks(live_leaves, dead_leaves, dead_groups)
            .into_iter()
            .enumerate()
        {
            let mut refs = chunk;
            if live_leaves > 0 {
                // A dead item may well refer to live ones (an old
                // generation to packages still installed).
                refs.push(g % live_leaves);
            }
            let item = text_item(&dir, &items, &format!("gc-old-group-{g}"), refs);
            dead_set.insert(item.path.as_str().to_owned());
            items.push(item);
        }
        let top = items.len();
        items.push(text_item(&dir, &items, "gc-top", live_group_ids));
        assert_eq!(items.len(), total);
        assert_eq!(dead_set.len(), dead);
        Model {
            store: store.to_owned(),
            items,
            dead: dead_set,
            top,
        }
    }

    /// Writes every item that is missing under `store_host` (the store
    /// directory on this machine), removes entries the model does not
    /// know (except hidden ones such as `.links`); returns how many items
    /// were written.
    pub fn write_files(&self, store_host: &Path) -> std::io::Result<usize> {
        let known: BTreeSet<&str> = self.items.iter().map(|i| i.path.base_name()).collect();
        for entry in fs::read_dir(store_host)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || known.contains(name.as_ref()) {
                continue;
            }
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                remove_tree(&path);
            } else {
                fs::remove_file(&path)?;
            }
        }
        let mut written = 0;
        for item in &self.items {
            let path = store_host.join(item.path.base_name());
            if fs::symlink_metadata(&path).is_ok() {
                continue;
            }
            match &item.body {
                Body::Text(contents) => write_read_only(&path, contents)?,
                Body::Directory(files) => {
                    fs::create_dir(&path)?;
                    for (name, contents) in files {
                        write_read_only(&path.join(name), contents)?;
                    }
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o555))?;
                }
            }
            written += 1;
        }
        Ok(written)
    }

    /// Replaces the rows of `ValidPaths`, `Refs` and `DerivationOutputs`
    /// in the database `file` by the model's.
    pub fn fill_database(&self, file: &Path) -> rusqlite::Result<()> {
        let mut db = rusqlite::Connection::open(file)?;
        db.busy_timeout(Duration::from_secs(30))?;
        db.pragma_update(None, "synchronous", "OFF")?;
        let tx = db.transaction()?;
        tx.execute_batch(
            "delete from Refs; delete from DerivationOutputs; delete from ValidPaths;",
        )?;
        {
            let mut add = tx.prepare(
                "insert into ValidPaths (path, hash, registrationTime, narSize) \
                 values (?1, ?2, ?3, ?4)",
            )?;
            let mut refer = tx.prepare("insert into Refs (referrer, reference) values (?1, ?2)")?;
            let mut ids: Vec<i64> = Vec::with_capacity(self.items.len());
            for item in &self.items {
                add.execute(rusqlite::params![
                    item.path.as_str(),
                    item.nar_hash,
                    1_700_000_000i64,
                    item.nar_size as i64
                ])?;
                let id = tx.last_insert_rowid();
                for &r in &item.references {
                    refer.execute(rusqlite::params![id, ids[r]])?;
                }
                ids.push(id);
            }
        }
        tx.commit()?;
        db.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
        Ok(())
    }

    /// Points `<state>/gcroots/bench-root` at the top item.
    pub fn write_root(&self, state_host: &Path) -> std::io::Result<()> {
        let dir = state_host.join("gcroots");
        fs::create_dir_all(&dir)?;
        let link = dir.join(ROOT_LINK);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(self.items[self.top].path.as_str(), link)
    }

    /// Whether `paths` are exactly the dead items.
    pub fn is_dead_set(&self, paths: &[String]) -> bool {
        paths.len() == self.dead.len() && paths.iter().all(|p| self.dead.contains(p))
    }
}

fn sizes(config: &Config) -> (usize, usize) {
    if let Some((t, d)) = std::env::var("GUIXD_BENCH_GC_SIZE")
        .ok()
        .and_then(|s| {
            let (t, d) = s.split_once('/')?;
            Some((t.trim().parse().ok()?, d.trim().parse().ok()?))
        })
        .filter(|&(t, d): &(usize, usize)| d >= 1 && t >= d + 2)
    {
        return (t, d);
    }
    if config.quick {
        (9_000, 3_000)
    } else {
        (300_000, 100_000)
    }
}

/// The files of one daemon's directory the scenario works on.
struct Files {
    store: PathBuf,
    state: PathBuf,
    db: PathBuf,
    template: PathBuf,
}

fn files(dir: &str) -> Files {
    Files {
        store: host(&format!("{dir}/store")),
        state: host(&format!("{dir}/state")),
        db: host(&format!("{dir}/db/db.sqlite")),
        template: host(&format!("{dir}/db.sqlite.bench")),
    }
}

/// Lets the daemon create its database, stops it, writes the model's
/// store and database, keeps a copy of the database, and starts the
/// daemon again.
fn prepare(slot: &mut Slot, models: &Models, total: usize, dead: usize) {
    // The C++ daemon opens (and creates) the database in the process it
    // forks for a connection, so one question makes sure it exists.
    let mut client = super::load::connect(slot).unwrap_or_else(|e| panic!("connect: {e}"));
    let store = slot.daemon().store_dir();
    client
        .is_valid_path(&format!("{store}/00000000000000000000000000000000-none"))
        .unwrap_or_else(|e| panic!("is-valid-path: {e}"));
    drop(client);
    let dir = slot.daemon().dir().to_owned();
    stop(slot);
    let started = Instant::now();
    let model = Rc::clone(
        models
            .borrow_mut()
            .entry(store.clone())
            .or_insert_with(|| Rc::new(Model::new(&store, total, dead))),
    );
    let modelled = started.elapsed();
    let f = files(&dir);
    let written = model
        .write_files(&f.store)
        .unwrap_or_else(|e| panic!("writing the store: {e}"));
    model
        .fill_database(&f.db)
        .unwrap_or_else(|e| panic!("filling the database: {e}"));
    model
        .write_root(&f.state)
        .unwrap_or_else(|e| panic!("writing the root: {e}"));
    fs::copy(&f.db, &f.template).unwrap_or_else(|e| panic!("copying the database: {e}"));
    eprintln!(
        "bench:   {} store of {total} paths ({dead} dead) modelled in {modelled:.1?}, \
         {written} items and the database written in {:.1?}",
        slot.implementation.name(),
        started.elapsed() - modelled
    );
    slot.daemon = Some(Daemon::start(
        slot.implementation,
        &slot.program,
        &slot.options,
    ));
}

/// Brings the store back to the model after a deleting repetition.
fn restore(slot: &mut Slot, models: &Models) {
    let dir = slot.daemon().dir().to_owned();
    let model = Rc::clone(&models.borrow()[&slot.daemon().store_dir()]);
    stop(slot);
    let started = Instant::now();
    let f = files(&dir);
    let written = model
        .write_files(&f.store)
        .unwrap_or_else(|e| panic!("restoring the store: {e}"));
    for suffix in ["-wal", "-shm"] {
        let mut name = f.db.clone().into_os_string();
        name.push(suffix);
        let _ = fs::remove_file(name);
    }
    fs::copy(&f.template, &f.db).unwrap_or_else(|e| panic!("restoring the database: {e}"));
    model
        .write_root(&f.state)
        .unwrap_or_else(|e| panic!("writing the root: {e}"));
    eprintln!(
        "bench:   {} store restored ({written} items written) in {:.1?}",
        slot.implementation.name(),
        started.elapsed()
    );
    slot.daemon = Some(Daemon::start(
        slot.implementation,
        &slot.program,
        &slot.options,
    ));
}

fn stop(slot: &mut Slot) {
    if let Some(mut d) = slot.daemon.take() {
        d.keep_dir();
    }
}

/// One collect-garbage call, timed; with `stall_probe`, a second
/// connection adds text items in a loop meanwhile and the value is its
/// longest call.
fn collect(slot: &mut Slot, models: &Models, action: u32, stall_probe: bool) -> Sample {
    let mut sample = Sample::default();
    let model = Rc::clone(&models.borrow()[&slot.daemon().store_dir()]);
    let mut client = match super::load::connect(slot) {
        Ok(c) => c,
        Err(e) => {
            sample.error(format!("connect: {e}"));
            return sample;
        }
    };
    let probe = if stall_probe {
        match super::load::connect(slot) {
            Ok(c) => Some(c),
            Err(e) => {
                sample.error(format!("probe connect: {e}"));
                return sample;
            }
        }
    } else {
        None
    };
    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe.map(|mut probe| {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut latencies = Vec::new();
            let mut errors = Sample::default();
            let mut i = 0u64;
            // The first call may land before the collection starts; the
            // loop runs until the collection has replied, and the call in
            // flight then still counts.
            while !stop.load(Ordering::Relaxed) {
                let contents = format!("stall probe {i} at {:?}", Instant::now());
                let t = Instant::now();
                if let Err(e) = probe.add_text_to_store(
                    &format!("probe-{i}"),
                    contents.as_bytes(),
                    &[] as &[&str],
                ) {
                    errors.error(e.to_string());
                    if errors.errors > 10 {
                        break;
                    }
                }
                latencies.push(secs(t.elapsed()));
                i += 1;
            }
            (latencies, errors)
        })
    });
    if prober.is_some() {
        // Let the probe's first call reach the daemon.
        std::thread::sleep(Duration::from_millis(20));
    }
    let request = GcRequest {
        action,
        paths: Vec::new(),
        ignore_liveness: false,
        max_freed_bytes: u64::MAX,
    };
    let started = Instant::now();
    let result = client.collect_garbage(&request);
    let elapsed = secs(started.elapsed());
    stop.store(true, Ordering::Relaxed);
    match result {
        Ok(r) => {
            if !model.is_dead_set(&r.paths) {
                let named: BTreeSet<&str> = r.paths.iter().map(String::as_str).collect();
                let missing: Vec<&str> = model
                    .dead
                    .iter()
                    .map(String::as_str)
                    .filter(|p| !named.contains(p))
                    .collect();
                let groups: Vec<&str> = missing
                    .iter()
                    .copied()
                    .filter(|p| p.contains("-gc-old-group-"))
                    .collect();
                sample.error(format!(
                    "the collector named {} paths, not the {} dead ones; {} dead ones \
                     missing, among them the groups {groups:?}",
                    r.paths.len(),
                    model.dead.len(),
                    missing.len()
                ));
            }
            sample.extra.insert("paths".into(), r.paths.len() as f64);
            if action == ACTION_DELETE_DEAD {
                sample
                    .extra
                    .insert("freed bytes".into(), r.bytes_freed as f64);
            }
        }
        Err(e) => sample.error(format!("collect-garbage: {e}")),
    }
    drop(client.take_log());
    sample.value = elapsed;
    if let Some(prober) = prober {
        match prober.join() {
            Ok((latencies, errors)) => {
                sample.absorb_errors(&errors);
                sample.extra.insert("gc s".into(), elapsed);
                sample.extra.insert("adds".into(), latencies.len() as f64);
                sample.record_latencies(latencies);
            }
            Err(_) => sample.error("probe thread panicked".into()),
        }
    }
    sample
}

/// Splits `count` items from `first` on into `groups` runs, as even as
/// the fan-out allows.
fn chunks(first: usize, count: usize, groups: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::with_capacity(groups);
    let mut next = first;
    for g in 0..groups {
        let left = count - (next - first);
        let take = left.div_ceil(groups - g).min(GROUP_FAN_OUT);
        out.push((next..next + take).collect());
        next += take;
    }
    out
}

/// Leaf `i`: a text file, or every [`DIRECTORY_EVERY`]th a directory of
/// two files, added recursively.
fn leaf(dir: &StoreDir, i: usize) -> Item {
    let text = format!("leaf {i} of the garbage-collection benchmark\n").repeat(1 + i % 5);
    if i % DIRECTORY_EVERY != 0 {
        return text_item_with(
            dir,
            &[],
            &format!("gc-leaf-{i}"),
            text.into_bytes(),
            Vec::new(),
        );
    }
    let files = vec![
        ("README".to_owned(), text.clone().into_bytes()),
        ("data".to_owned(), format!("{i}\n").into_bytes()),
    ];
    let mut nar = Vec::new();
    let mut w = NarWriter::new();
    let mut write = |e: NarEvent<'_>| {
        w.write(e, &mut nar)
            .unwrap_or_else(|e| panic!("a fixed directory's NAR: {e}"))
    };
    write(NarEvent::Directory { name: b"" });
    for (name, contents) in &files {
        write(NarEvent::File {
            name: name.as_bytes(),
            executable: false,
            size_bytes: contents.len() as u64,
        });
        write(NarEvent::FileData(contents));
        write(NarEvent::FileEnd);
    }
    write(NarEvent::DirectoryEnd);
    let hash = Hash::sha256(&nar);
    let path = dir
        .make_fixed_output_path(true, &hash, &format!("gc-dir-{i}"))
        .unwrap_or_else(|e| panic!("path of a fixed name: {e}"));
    Item {
        path,
        body: Body::Directory(files),
        nar_hash: format!("sha256:{}", hash.to_hex()),
        nar_size: nar.len() as u64,
        references: Vec::new(),
    }
}

/// A text item named `name` referring to `references` (indices into
/// `items`), whose contents list them.
fn text_item(dir: &StoreDir, items: &[Item], name: &str, references: Vec<usize>) -> Item {
    let mut contents = format!("{name}\n");
    for &r in &references {
        contents.push_str(items[r].path.as_str());
        contents.push('\n');
    }
    text_item_with(dir, items, name, contents.into_bytes(), references)
}

fn text_item_with(
    dir: &StoreDir,
    items: &[Item],
    name: &str,
    contents: Vec<u8>,
    references: Vec<usize>,
) -> Item {
    let path = dir
        .make_text_path(
            name,
            &Hash::sha256(&contents),
            references.iter().map(|&r| &items[r].path),
        )
        .unwrap_or_else(|e| panic!("path of a fixed name: {e}"));
    let n = contents.len() as u64;
    let nar_size = (file_nar_prefix(false, n).len() + file_nar_suffix(n).len()) as u64 + n;
    let hash = hash_file_nar(HashAlgo::Sha256, false, &contents);
    Item {
        path,
        nar_hash: format!("sha256:{}", hash.to_hex()),
        nar_size,
        body: Body::Text(contents),
        references,
    }
}

fn write_read_only(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)?;
    f.write_all(contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use guixd_core::nar::file_nar;

    #[test]
    fn the_model_has_the_asked_shape() {
        for (total, dead) in [(9_000, 3_000), (5_003, 2_002), (10, 3), (2, 0)] {
            if dead == 0 {
                continue;
            }
            let m = Model::new("/gnu/store", total, dead);
            assert_eq!(m.items.len(), total);
            assert_eq!(m.dead.len(), dead);
            // Everything the top item reaches is live; the rest is dead.
            let mut live = BTreeSet::new();
            let mut todo = vec![m.top];
            while let Some(i) = todo.pop() {
                if live.insert(i) {
                    todo.extend(m.items[i].references.iter().copied());
                }
            }
            assert_eq!(live.len(), total - dead);
            for (i, item) in m.items.iter().enumerate() {
                assert_eq!(live.contains(&i), !m.dead.contains(item.path.as_str()));
                assert!(item.references.iter().all(|&r| r < i));
                assert!(item.references.len() <= GROUP_FAN_OUT + 1);
            }
        }
    }

    #[test]
    fn text_items_match_what_the_daemon_registers() {
        let dir = StoreDir::new("/gnu/store").expect("store dir");
        let item = text_item_with(&dir, &[], "hello", b"hello\n".to_vec(), Vec::new());
        let nar = file_nar(false, b"hello\n");
        assert_eq!(item.nar_size, nar.len() as u64);
        assert_eq!(
            item.nar_hash,
            format!("sha256:{}", Hash::sha256(&nar).to_hex())
        );
        assert_eq!(
            item.path.as_str(),
            dir.make_text_path("hello", &Hash::sha256(b"hello\n"), [])
                .expect("path")
                .as_str()
        );
    }
}

//! The start-up scenario: a daemon whose database already holds many valid
//! paths (one million in the full run) must be ready to serve quickly.
//!
//! Keeps true: the database is made by the daemon under test itself (its
//! first start creates the schema), then stopped and filled directly with
//! SQLite, never through the daemon: rows in Guix's `ValidPaths` and
//! `Refs` tables (each item refers to the one before it); "ready" means a
//! fresh connection was answered: handshake, set-options and an
//! is-valid-path on one of the generated paths that says it is valid.

use super::env::{Implementation, host};
use super::{Sample, Scenario, Sizes, Slot, Target, secs};
use guixd_core::{base32, hex};
use std::time::{Duration, Instant};

/// The scenarios of this module.
pub fn scenarios(sizes: &Sizes) -> Vec<Scenario> {
    let n = sizes.startup_paths;
    vec![Scenario {
        name: format!("start-up, {n} paths"),
        unit: "s",
        target: Target::AtMost(1.0),
        description: format!(
            "from spawning the daemon on a database of {n} valid paths to the first \
             answered is-valid-path"
        ),
        implementations: Implementation::ALL.to_vec(),
        daemon_args: Vec::new(),
        reps_max: Some(3),
        prepare: Box::new(move |slot| prepare(slot, n)),
        run: Box::new(ready_time),
    }]
}

fn prepare(slot: &mut Slot, n: usize) {
    // The C++ daemon opens (and creates) the database in the process it
    // forks for a connection, so one connection's work makes sure it exists.
    let mut client = super::load::connect(slot).unwrap_or_else(|e| panic!("connect: {e}"));
    client
        .add_text_to_store("first", b"first", &[] as &[&str])
        .unwrap_or_else(|e| panic!("add-text: {e}"));
    drop(client);
    let store = slot.daemon().store_dir();
    let db_dir = host(&format!("{}/db", slot.daemon().dir()));
    if let Some(mut d) = slot.daemon.take() {
        d.keep_dir();
    }
    let started = Instant::now();
    let probe = fill(&db_dir.join("db.sqlite"), &store, n)
        .unwrap_or_else(|e| panic!("filling the database: {e}"));
    eprintln!(
        "bench:   {} database with {n} paths made in {:.1?}",
        slot.implementation.name(),
        started.elapsed()
    );
    slot.items = vec![probe];
}

fn ready_time(slot: &mut Slot, _rep: usize) -> Sample {
    let mut sample = Sample::default();
    if let Some(mut d) = slot.daemon.take() {
        d.keep_dir();
    }
    let daemon = super::env::Daemon::spawn(slot.implementation, &slot.program, &slot.options);
    let socket = daemon.host_socket();
    let probe = slot.items[0].clone();
    let deadline = Duration::from_secs(120);
    let value = loop {
        let attempt = (|| -> Result<bool, String> {
            let mut client =
                guixd_testkit::client::Client::connect_unix(&socket).map_err(|e| e.to_string())?;
            client.handshake().map_err(|e| e.to_string())?;
            client
                .set_options(&guixd_testkit::client::guix_default_options())
                .map_err(|e| e.to_string())?;
            client.is_valid_path(&probe).map_err(|e| e.to_string())
        })();
        match attempt {
            Ok(true) => break secs(daemon.spawned_at.elapsed()),
            Ok(false) => {
                sample.error(format!("{probe} is not valid after start-up"));
                break f64::NAN;
            }
            Err(_) if daemon.spawned_at.elapsed() < deadline => {
                // Nothing to block on until the daemon listens.
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => {
                sample.error(format!("not ready after {deadline:?}: {e}"));
                break f64::NAN;
            }
        }
    };
    sample.value = value;
    slot.daemon = Some(daemon);
    sample
}

/// Adds `n` valid paths to the database `file`; returns one of them.
fn fill(file: &std::path::Path, store: &str, n: usize) -> rusqlite::Result<String> {
    let mut db = rusqlite::Connection::open(file)?;
    db.busy_timeout(Duration::from_secs(30))?;
    db.pragma_update(None, "synchronous", "OFF")?;
    let tx = db.transaction()?;
    let mut probe = String::new();
    {
        let mut add = tx.prepare(
            "insert into ValidPaths (path, hash, registrationTime, narSize) values (?1, ?2, ?3, ?4)",
        )?;
        let mut refer = tx.prepare("insert into Refs (referrer, reference) values (?1, ?2)")?;
        let mut previous: Option<i64> = None;
        for i in 0..n {
            let digest = fake_digest(i as u64);
            let path = format!("{store}/{}-bench-{i}", base32::encode(&digest[..20]));
            let hash = format!("sha256:{}", hex::encode(&digest));
            add.execute(rusqlite::params![path, hash, 1_700_000_000i64, 1024i64])?;
            let id = tx.last_insert_rowid();
            if let Some(p) = previous {
                refer.execute(rusqlite::params![id, p])?;
            }
            previous = Some(id);
            if i == n / 2 {
                probe = path;
            }
        }
    }
    tx.commit()?;
    Ok(probe)
}

/// 32 bytes that depend on `i` (a stand-in for a content hash).
fn fake_digest(i: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xdead_beef;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    out
}

//! Many clients at once: 200 clients connect, wait for each other, then
//! add and query items at the same moment, on both runtimes; every one of
//! them succeeds, and no client ever sees SQLite's "database is busy" (or
//! "locked"), which the daemon must absorb by waiting and retrying.
//!
//! Runs against the in-process guixd (`TestServer`: the real `Os`, SQLite
//! and files on a scratch store) and against real guixd processes in the
//! Guix root, where the store is also the one the daemon would use.
//!
//! Keeps true: every client's items are distinct except two items that
//! all clients add at once (the same path, to contend for its lock); every
//! read has a timeout; the check after the storm reads the store's files
//! and compares them with the database.

use crate::support::store::{nar_hash_hex, temporaries};
use crate::support::{Daemon, DaemonConfig, Implementation, Runtime};
use guixd_core::hash::Hash;
use guixd_core::nar::NarTree;
use guixd_testkit::both_runtimes;
use guixd_testkit::client::{Client, ClientError};
use guixd_testkit::server::TestServer;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// How many clients talk to the daemon at once.
const CLIENTS: usize = 200;

/// Longest any read from the daemon may block.
const IO_TIMEOUT: Duration = Duration::from_secs(300);

both_runtimes! {
    fn two_hundred_clients_add_and_query_at_once(server: &TestServer) {
        storm(server.socket_path(), server.store_dir().as_str());
        check_store(server.socket_path(), Path::new(server.store_dir().as_str()));
    }
}

#[test]
fn two_hundred_clients_guixd_threads_process() {
    storm_process(Runtime::Threads);
}

#[test]
fn two_hundred_clients_guixd_smol_process() {
    storm_process(Runtime::Smol);
}

fn storm_process(runtime: Runtime) {
    let daemon = Daemon::start(Implementation::Guixd(runtime), &DaemonConfig::default());
    storm(&daemon.host_path("socket"), &daemon.store_dir());
    // The paths the daemon returned are paths inside the root; the check
    // reads them through the host's view.
    check_store(&daemon.host_path("socket"), &daemon.host_path("store"));
}

/// Runs the 200 clients against the daemon at `socket`, whose store
/// directory is `store` (as the daemon names it), then checks the result
/// with one more client.
fn storm(socket: &Path, store: &str) {
    let go = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let go = go.clone();
            let socket = socket.to_path_buf();
            std::thread::Builder::new()
                .name(format!("client-{n}"))
                .stack_size(256 << 10)
                .spawn(move || one_client(n, &socket, &go))
                .unwrap()
        })
        .collect();
    let mut failures = Vec::new();
    let mut added = BTreeSet::new();
    for (n, handle) in clients.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(paths)) => added.extend(paths),
            Ok(Err(e)) => failures.push(format!("client {n}: {e}")),
            Err(_) => failures.push(format!("client {n} panicked")),
        }
    }
    let busy: Vec<&String> = failures
        .iter()
        .filter(|f| f.contains("busy") || f.contains("locked"))
        .collect();
    assert!(
        busy.is_empty(),
        "the database's contention reached clients: {busy:?}"
    );
    assert!(
        failures.is_empty(),
        "{} clients failed: {failures:#?}",
        failures.len()
    );
    // 3 items per client, plus the two they all added.
    assert_eq!(added.len(), 3 * CLIENTS + 2);
    assert!(added.iter().all(|p| p.starts_with(store)));
    let mut client = connect(socket).unwrap();
    let all: BTreeSet<String> = client
        .query_all_valid_paths()
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(all, added);
}

/// One client's work; returns the paths it added.
fn one_client(n: usize, socket: &Path, go: &Barrier) -> Result<Vec<String>, ClientError> {
    let connected = connect(socket);
    // Wait for everybody even when this one failed, or the others would
    // wait for ever.
    go.wait();
    let mut client = connected?;
    let shared = client.add_text_to_store::<&str>("everybody", b"the same for all", &[])?;
    // The same upload from everyone at once, large enough to be written
    // in several chunks while the others wait for its lock.
    let same_nar = guixd_core::nar::file_nar(false, &vec![0x5a; 300_000]);
    let same = client.add_to_store("same-upload", true, "sha256", &same_nar)?;
    let text = format!("client {n} was here\n");
    let mine = client.add_text_to_store::<&str>(&format!("text-{n}"), text.as_bytes(), &[])?;
    let tree = NarTree::Directory(BTreeMap::from([
        (
            b"bin".to_vec(),
            NarTree::Directory(BTreeMap::from([(
                b"run".to_vec(),
                NarTree::File {
                    executable: true,
                    contents: format!("#!/bin/sh\necho {n}\n").into_bytes(),
                },
            )])),
        ),
        (
            b"data".to_vec(),
            NarTree::File {
                executable: false,
                contents: vec![n as u8; 1000 + n * 37],
            },
        ),
        (
            b"link".to_vec(),
            NarTree::Symlink {
                target: b"data".to_vec(),
            },
        ),
    ]));
    let nar = tree.to_nar().map_err(std::io::Error::other)?;
    let tree_path = client.add_to_store(&format!("tree-{n}"), true, "sha256", &nar)?;
    let refs = [shared.as_str(), mine.as_str(), tree_path.as_str()];
    let top = client.add_text_to_store(&format!("top-{n}"), refs.join("\n").as_bytes(), &refs)?;

    // Queries, interleaved with everybody else's writes.
    for path in [&shared, &mine, &tree_path, &top] {
        if !client.is_valid_path(path)? {
            return Err(protocol(format!(
                "{path} is not valid right after adding it"
            )));
        }
    }
    let info = client.query_path_info(&tree_path)?;
    if info.hash != Hash::sha256(&nar).to_hex() || info.nar_size != nar.len() as u64 {
        return Err(protocol(format!("wrong info for {tree_path}: {info:?}")));
    }
    let mut expected: Vec<String> = refs.iter().map(|s| s.to_string()).collect();
    expected.sort();
    let references = client.query_references(&top)?;
    if references != expected {
        return Err(protocol(format!("references of {top}: {references:?}")));
    }
    if !client.query_referrers(&mine)?.contains(&top) {
        return Err(protocol(format!("{top} is not a referrer of {mine}")));
    }
    let valid = client.query_valid_paths(&refs)?;
    if valid.len() != refs.len() {
        return Err(protocol(format!("query-valid-paths: {valid:?}")));
    }
    Ok(vec![shared, same, mine, tree_path, top])
}

/// Every valid item's files hash to the NAR hash the database holds, and
/// no temporary file is left. `store` is the store directory as this
/// process sees it.
fn check_store(socket: &Path, store: &Path) {
    let mut client = connect(socket).unwrap();
    for path in client.query_all_valid_paths().unwrap() {
        let info = client.query_path_info(&path).unwrap();
        let name = path.rsplit('/').next().unwrap();
        let on_disk: PathBuf = store.join(name);
        assert_eq!(
            nar_hash_hex(&on_disk).unwrap(),
            info.hash,
            "{path}: files and database disagree"
        );
    }
    assert!(temporaries(store).is_empty(), "{:?}", temporaries(store));
}

fn connect(socket: &Path) -> Result<Client<UnixStream>, ClientError> {
    let mut client = Client::connect_unix(socket)?;
    client.stream().set_read_timeout(Some(IO_TIMEOUT))?;
    client.handshake()?;
    Ok(client)
}

fn protocol(message: String) -> ClientError {
    ClientError::Io(std::io::Error::other(message))
}

//! A crash in the middle of many uploads: the guixd process is killed
//! with SIGKILL while clients add items concurrently, then started again
//! on the same store. The store and its database must agree (every valid
//! item exists and its files hash to the registered NAR hash), everything
//! a client was told was added must be valid, no temporary file may be
//! left, and the clients can add everything again.
//!
//! Runs real guixd processes (one per runtime) in the Guix root, in their
//! own PID and mount namespaces (`Sandbox::Chroot`, the only way
//! `Daemon::kill` can kill the daemon alone).
//!
//! Keeps true: what each client adds is a fixed plan (names and contents
//! depend on the client's and the item's number only), so the same plan
//! can be replayed after the restart and must give the same paths.

use crate::support::daemon::Sandbox;
use crate::support::store::{nar_hash_hex, temporaries};
use crate::support::{Daemon, DaemonConfig, Implementation, Runtime};
use guixd_core::hash::Hash;
use guixd_core::nar::{NarTree, file_nar};
use guixd_testkit::both_runtimes;
use guixd_testkit::client::{Client, ClientError};
use guixd_testkit::server::TestServer;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Clients uploading at once.
const CLIENTS: usize = 12;

/// Kills (and restarts) of the daemon in one scenario.
const ROUNDS: usize = 3;

/// Items in each client's plan for one round; far more than get done
/// before the kill. Round `r` adds items `r * STRIDE ..`.
const STRIDE: usize = 100;

/// Items of each round's plan that every client adds again at the end.
const READDED: usize = 12;

/// The kill comes once this many items were acknowledged in the round.
const ACKNOWLEDGED_BEFORE_KILL: usize = 40;

/// Longest any read from the daemon may block.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn sigkill_during_uploads_guixd_threads() {
    sigkill_during_uploads(Runtime::Threads);
}

#[test]
fn sigkill_during_uploads_guixd_smol() {
    sigkill_during_uploads(Runtime::Smol);
}

fn sigkill_during_uploads(runtime: Runtime) {
    let config = DaemonConfig {
        sandbox: Sandbox::Chroot,
        ..DaemonConfig::default()
    };
    let mut daemon = Daemon::start(Implementation::Guixd(runtime), &config);
    let socket = daemon.host_path("socket");
    let store = daemon.host_path("store");
    let mut acknowledged = Vec::new();
    for round in 0..ROUNDS {
        let acked = kill_in_the_middle(&mut daemon, round);
        // What the crash left: uploads in flight, for the restart to clear.
        eprintln!(
            "round {round}: killed after {} acknowledged items; left behind: {:?}",
            acked.len(),
            temporaries(&store)
        );
        acknowledged.extend(acked);
        daemon.restart();
        assert!(
            temporaries(&store).is_empty(),
            "the restarted daemon left temporary files: {:?}",
            temporaries(&store)
        );
        let valid = check_agreement(&socket, &store);
        let missing: Vec<&String> = acknowledged
            .iter()
            .filter(|p| !valid.contains(*p))
            .collect();
        assert!(
            missing.is_empty(),
            "items acknowledged before a kill are not valid: {missing:?}"
        );
    }

    // Every client can add the start of each round's plan again (what is
    // there already included) and gets the same paths.
    let mut client = connect(&socket).unwrap();
    let mut all = BTreeSet::new();
    for c in 0..CLIENTS {
        for round in 0..ROUNDS {
            let mut previous = None;
            for i in round * STRIDE..round * STRIDE + READDED {
                let path = add(&mut client, c, i, previous.as_deref())
                    .unwrap_or_else(|e| panic!("re-adding item {i} of client {c}: {e}"));
                previous = Some(path.clone());
                all.insert(path);
            }
        }
    }
    for path in &acknowledged {
        let (c, i) = plan_position(path);
        if i % STRIDE < READDED {
            assert!(
                all.contains(path),
                "client {c} item {i} came back elsewhere"
            );
        }
    }
    let valid = check_agreement(&socket, &store);
    assert!(all.is_subset(&valid));
    assert!(temporaries(&store).is_empty(), "{:?}", temporaries(&store));
}

/// Runs round `round` of the clients' plans and kills the daemon once
/// enough was acknowledged; returns what was.
fn kill_in_the_middle(daemon: &mut Daemon, round: usize) -> Vec<String> {
    let socket = daemon.host_path("socket");
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let socket = socket.clone();
            let acknowledged = acknowledged.clone();
            let killed = killed.clone();
            std::thread::spawn(move || {
                upload_until_the_end(c, round * STRIDE, &socket, &acknowledged, &killed)
            })
        })
        .collect();

    // Kill once enough was acknowledged; uploads are in flight then, as
    // every client always has one going.
    let started = Instant::now();
    while acknowledged.lock().unwrap().len() < ACKNOWLEDGED_BEFORE_KILL {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the clients did not get {ACKNOWLEDGED_BEFORE_KILL} items added in 5 minutes"
        );
        assert!(
            !clients.iter().all(|c| c.is_finished()),
            "every client stopped before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    killed.store(true, Ordering::SeqCst);
    daemon.kill();
    let mut unexpected = Vec::new();
    for (c, client) in clients.into_iter().enumerate() {
        if let Some(e) = client.join().unwrap() {
            unexpected.push(format!("client {c}: {e}"));
        }
    }
    assert!(
        unexpected.is_empty(),
        "errors before the kill: {unexpected:#?}"
    );
    acknowledged.lock().unwrap().clone()
}

/// What a crash between putting an item in place and registering it
/// leaves: files under the name of an item that is not valid. Adding the
/// item must replace them (in any shape: a file, a directory, a symlink,
/// read-only as the daemon leaves items) with the right contents.
fn leftovers_under_an_item_name_are_replaced(server: &TestServer) {
    let store = Path::new(server.store_dir().as_str());
    let mut client = server.client();
    let contents = b"the real contents\n";
    let nar = file_nar(false, contents);
    let flat = server
        .store_dir()
        .make_fixed_output_path(false, &Hash::sha256(contents), "flat")
        .unwrap();
    let recursive = server
        .store_dir()
        .make_fixed_output_path(true, &Hash::sha256(&nar), "recursive")
        .unwrap();
    let text = server
        .store_dir()
        .make_text_path("text", &Hash::sha256(contents), [])
        .unwrap();
    // A read-only directory with a read-only file in it.
    let dir = Path::new(flat.as_str());
    std::fs::create_dir(dir).unwrap();
    std::fs::write(dir.join("half"), b"half of something").unwrap();
    std::fs::set_permissions(dir.join("half"), std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    // A truncated read-only file.
    std::fs::write(recursive.as_str(), b"the real").unwrap();
    std::fs::set_permissions(recursive.as_str(), std::fs::Permissions::from_mode(0o444)).unwrap();
    // A dangling symlink.
    std::os::unix::fs::symlink("/nowhere", text.as_str()).unwrap();

    assert_eq!(
        client.add_to_store("flat", false, "sha256", &nar).unwrap(),
        flat.as_str()
    );
    assert_eq!(
        client
            .add_to_store("recursive", true, "sha256", &nar)
            .unwrap(),
        recursive.as_str()
    );
    assert_eq!(
        client
            .add_text_to_store::<&str>("text", contents, &[])
            .unwrap(),
        text.as_str()
    );
    for path in [&flat, &recursive, &text] {
        assert_eq!(std::fs::read(path.as_str()).unwrap(), contents, "{path}");
        let info = client.query_path_info(path.as_str()).unwrap();
        assert_eq!(
            nar_hash_hex(Path::new(path.as_str())).unwrap(),
            info.hash,
            "{path}"
        );
    }
    assert!(temporaries(store).is_empty(), "{:?}", temporaries(store));
}
both_runtimes!(leftovers_under_an_item_name_are_replaced);

/// A daemon killed and started again with the same process id (PID 1 of
/// a container, say) finds temporary files under its own id, left by its
/// former self. They must not be taken for its own: start-up removes
/// them, and they never stand in the way of new uploads.
fn leftovers_of_a_former_daemon_with_the_same_pid(runtime: guixd_testkit::Runtime) {
    let pid = std::process::id();
    let server = TestServer::start_with(runtime, |config| {
        let store = Path::new(config.dirs.store.as_str());
        std::fs::create_dir_all(store).unwrap();
        for n in 0..8 {
            let upload = store.join(format!(".guixd-upload-{pid}-{n}"));
            std::fs::create_dir(&upload).unwrap();
            std::fs::write(upload.join("item"), b"half an upload").unwrap();
            std::fs::write(store.join(format!(".guixd-text-{pid}-{n}")), b"half a text").unwrap();
        }
    });
    let store = Path::new(server.store_dir().as_str());
    assert!(
        temporaries(store).is_empty(),
        "start-up kept the former daemon's files: {:?}",
        temporaries(store)
    );
    let mut client = server.client();
    for n in 0..8u8 {
        let nar = file_nar(false, &[n; 100]);
        let path = client
            .add_to_store(&format!("up-{n}"), true, "sha256", &nar)
            .unwrap();
        assert_eq!(
            nar_hash_hex(Path::new(&path)).unwrap(),
            Hash::sha256(&nar).to_hex()
        );
        let text = client
            .add_text_to_store::<&str>(&format!("text-{n}"), &[n; 10], &[])
            .unwrap();
        assert_eq!(std::fs::read(&text).unwrap(), [n; 10]);
    }
}

#[test]
fn leftovers_of_a_former_daemon_with_the_same_pid_threads() {
    leftovers_of_a_former_daemon_with_the_same_pid(guixd_testkit::Runtime::Threads);
}

#[test]
fn leftovers_of_a_former_daemon_with_the_same_pid_smol() {
    leftovers_of_a_former_daemon_with_the_same_pid(guixd_testkit::Runtime::Smol);
}

/// One client: adds its plan's items from `first` on, in order, until
/// the daemon is gone.
/// Returns the error it got if that came before the kill.
fn upload_until_the_end(
    c: usize,
    first: usize,
    socket: &Path,
    acknowledged: &Mutex<Vec<String>>,
    killed: &AtomicBool,
) -> Option<String> {
    let mut client = match connect(socket) {
        Ok(client) => client,
        Err(e) => return (!killed.load(Ordering::SeqCst)).then(|| e.to_string()),
    };
    let mut previous: Option<String> = None;
    for i in first..first + STRIDE {
        match add(&mut client, c, i, previous.as_deref()) {
            Ok(path) => {
                acknowledged.lock().unwrap().push(path.clone());
                previous = Some(path);
            }
            // The kill is the only expected way out; anything before it
            // is a failure.
            Err(e) => return (!killed.load(Ordering::SeqCst)).then(|| e.to_string()),
        }
    }
    None
}

/// Adds item `i` of client `c`'s plan: a text item referring to the
/// client's previous item, a recursive upload of a small tree, or a flat
/// upload of a file of up to 2 MiB.
fn add(
    client: &mut Client<UnixStream>,
    c: usize,
    i: usize,
    previous: Option<&str>,
) -> Result<String, ClientError> {
    let name = format!("c{c}-i{i}");
    match i % 3 {
        0 => {
            let refs: Vec<&str> = previous.into_iter().collect();
            let text = format!("item {i} of client {c}, after {previous:?}\n");
            client.add_text_to_store(&name, text.as_bytes(), &refs)
        }
        1 => {
            let size = 1000 + (c * 7919 + i * 104_729) % (1 << 20);
            let tree = NarTree::Directory(BTreeMap::from([
                (
                    b"big".to_vec(),
                    NarTree::File {
                        executable: false,
                        contents: pattern(c, i, size),
                    },
                ),
                (
                    b"sub".to_vec(),
                    NarTree::Directory(BTreeMap::from([(
                        b"exe".to_vec(),
                        NarTree::File {
                            executable: true,
                            contents: name.clone().into_bytes(),
                        },
                    )])),
                ),
                (
                    b"to-big".to_vec(),
                    NarTree::Symlink {
                        target: b"big".to_vec(),
                    },
                ),
            ]));
            let nar = tree.to_nar().map_err(std::io::Error::other)?;
            client.add_to_store(&name, true, "sha256", &nar)
        }
        _ => {
            let size = (c * 31_337 + i * 65_537) % (2 << 20);
            let nar = file_nar(false, &pattern(c, i, size));
            client.add_to_store(&name, false, "sha256", &nar)
        }
    }
}

/// Contents that differ between items.
fn pattern(c: usize, i: usize, size: usize) -> Vec<u8> {
    let seed = Hash::sha256(format!("{c}/{i}").as_bytes())
        .to_hex()
        .into_bytes();
    seed.iter().copied().cycle().take(size).collect()
}

/// The client and item number in a path's name `<hash>-c<C>-i<I>`.
fn plan_position(path: &str) -> (usize, usize) {
    let base = path.rsplit('/').next().unwrap_or(path);
    let name = base.split_once('-').map_or("", |(_, name)| name);
    let (c, i) = name.split_once("-i").unwrap_or(("", ""));
    (
        c.trim_start_matches('c').parse().unwrap_or(usize::MAX),
        i.parse().unwrap_or(usize::MAX),
    )
}

/// Checks that every valid item's files hash to its registered NAR hash;
/// returns the valid paths.
fn check_agreement(socket: &Path, store: &Path) -> BTreeSet<String> {
    let mut client = connect(socket).unwrap();
    let valid = client.query_all_valid_paths().unwrap();
    let mut disagree = Vec::new();
    for path in &valid {
        let info = client.query_path_info(path).unwrap();
        let on_disk = store.join(path.rsplit('/').next().unwrap());
        match nar_hash_hex(&on_disk) {
            Ok(hash) if hash == info.hash => {}
            Ok(hash) => disagree.push(format!("{path}: files hash to {hash}, not {}", info.hash)),
            Err(e) => disagree.push(format!("{path}: {e}")),
        }
    }
    assert!(
        disagree.is_empty(),
        "store and database disagree: {disagree:#?}"
    );
    valid.into_iter().collect()
}

fn connect(socket: &Path) -> Result<Client<UnixStream>, ClientError> {
    let mut client = Client::connect_unix(socket)?;
    client.stream().set_read_timeout(Some(IO_TIMEOUT))?;
    client.handshake()?;
    Ok(client)
}

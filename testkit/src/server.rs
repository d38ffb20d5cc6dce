//! In-process test servers: a real guixd (the core, `guixd_os::Os` on a
//! temporary store, one of the two runtimes) listening on a Unix socket,
//! and [`both_runtimes!`](crate::both_runtimes), which runs one scenario
//! on both runtimes.
//!
//! Keeps true:
//! - every server has a directory of its own under the system's temporary
//!   directory (store, state, database, logs, socket), removed when the
//!   server is dropped, so tests run in parallel without meeting;
//! - the server is configured like a test daemon must be: substitutes off
//!   (no helper program exists), a tiny reserved-space file, the test's own
//!   uid as the daemon's (so the test's clients are trusted);
//! - a server is always stopped and joined, by [`TestServer::shutdown`] or
//!   on drop, within [`JOIN_TIMEOUT`]; a server that does not stop in time
//!   fails the test instead of hanging it.

use crate::client::Client;
use guixd_core::config::{Config, Dirs, Limits};
use guixd_core::settings::Settings;
use guixd_core::store_path::StoreDir;
use guixd_os::net::Listener;
use guixd_os::{Os, OsConfig};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// How long a server may take to stop before the test fails.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Which runtime drives the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Runtime {
    Threads,
    Smol,
}

impl Runtime {
    /// Both runtimes, in a fixed order.
    pub const ALL: [Runtime; 2] = [Runtime::Threads, Runtime::Smol];

    /// The runtime crate's own name for itself.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Threads => guixd_runtime_threads::NAME,
            Runtime::Smol => guixd_runtime_smol::NAME,
        }
    }
}

/// A guixd serving a temporary store on a Unix socket, in this process.
pub struct TestServer {
    runtime: Runtime,
    root: PathBuf,
    socket: PathBuf,
    config: Config,
    server: Option<Running>,
}

enum Running {
    Threads(guixd_runtime_threads::Server),
    Smol(guixd_runtime_smol::Server),
}

impl TestServer {
    /// Starts a server with the test configuration. Panics when it cannot
    /// (this is test set-up: there is nothing better to do).
    pub fn start(runtime: Runtime) -> TestServer {
        TestServer::start_with(runtime, |_| {})
    }

    /// Starts a server after `configure` adjusted the core's
    /// configuration (limits, settings, verbosity); the os layer gets the
    /// same directories and settings.
    pub fn start_with(runtime: Runtime, configure: impl FnOnce(&mut Config)) -> TestServer {
        match TestServer::try_start(runtime, configure) {
            Ok(server) => server,
            Err(e) => panic!("cannot start a {} test server: {e}", runtime.name()),
        }
    }

    /// Like [`TestServer::start_with`], returning the error instead.
    pub fn try_start(
        runtime: Runtime,
        configure: impl FnOnce(&mut Config),
    ) -> io::Result<TestServer> {
        let root = scratch_root(runtime)?;
        let socket = root.join("var/guix/daemon-socket/socket");
        let mut config = test_config(&root)?;
        configure(&mut config);
        // The directory is removed by `Drop` from here on.
        let mut server = TestServer {
            runtime,
            root,
            socket,
            config,
            server: None,
        };
        let meta = std::fs::metadata(&server.root)?;
        let os = Os::open(OsConfig {
            dirs: server.config.dirs.clone(),
            settings: server.config.settings.typed().clone(),
            uid: meta.uid(),
            gid: meta.gid(),
        })
        .map_err(|e| io::Error::other(format!("preparing the store: {e}")))?;
        let listener = Listener::Unix(guixd_os::net::bind_unix(&server.socket)?);
        let os = Arc::new(os);
        let config = server.config.clone();
        server.server = Some(match runtime {
            Runtime::Threads => Running::Threads(guixd_runtime_threads::Server::start(
                config,
                os,
                vec![listener],
            )?),
            Runtime::Smol => Running::Smol(guixd_runtime_smol::Server::start(
                config,
                os,
                vec![listener],
            )?),
        });
        Ok(server)
    }

    pub fn runtime(&self) -> Runtime {
        self.runtime
    }

    /// The daemon's socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// A client that has shaken hands with the server.
    pub fn client(&self) -> Client<UnixStream> {
        let mut client = self.raw_client();
        if let Err(e) = client.handshake() {
            panic!(
                "handshake with the {} server failed: {e}",
                self.runtime.name()
            );
        }
        client
    }

    /// A connected client that has said nothing yet.
    pub fn raw_client(&self) -> Client<UnixStream> {
        match Client::connect_unix(&self.socket) {
            Ok(client) => client,
            Err(e) => panic!("cannot connect to {}: {e}", self.socket.display()),
        }
    }

    pub fn store_dir(&self) -> &StoreDir {
        &self.config.dirs.store
    }

    /// Everything the server has lives under this directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directories the server was configured with.
    pub fn dirs(&self) -> &Dirs {
        &self.config.dirs
    }

    /// The core configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Stops the server and waits for it: its first fatal I/O error, or a
    /// timeout error. Stopping twice is fine.
    pub fn shutdown(&mut self) -> io::Result<()> {
        match self.server.take() {
            Some(server) => stop(server),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let stopped = self.shutdown();
        let _ = std::fs::remove_dir_all(&self.root);
        // A server that cannot stop must not go unnoticed, unless the test
        // is failing already (a second panic would abort).
        if let Err(e) = stopped {
            if !std::thread::panicking() {
                panic!(
                    "the {} server did not stop cleanly: {e}",
                    self.runtime.name()
                );
            }
        }
    }
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("runtime", &self.runtime)
            .field("root", &self.root)
            .field("running", &self.server.is_some())
            .finish()
    }
}

/// Runs `scenario` against a fresh server of `runtime`, then stops the
/// server and checks that it stopped cleanly. What
/// [`both_runtimes!`](crate::both_runtimes) expands to.
pub fn run_scenario(runtime: Runtime, scenario: fn(&TestServer)) {
    let mut server = TestServer::start(runtime);
    scenario(&server);
    if let Err(e) = server.shutdown() {
        panic!("the {} server did not stop cleanly: {e}", runtime.name());
    }
}

/// Turns a scenario, a `fn(&TestServer)`, into one `#[test]` per runtime.
///
/// ```no_run
/// use guixd_testkit::both_runtimes;
/// use guixd_testkit::server::TestServer;
/// # fn main() {}
///
/// fn add_text_round_trips(server: &TestServer) {
///     let mut client = server.client();
///     let path = client.add_text_to_store::<&str>("x", b"hi", &[]).unwrap();
///     assert!(client.is_valid_path(&path).unwrap());
/// }
/// // Tests `add_text_round_trips::threads` and `add_text_round_trips::smol`.
/// both_runtimes!(add_text_round_trips);
///
/// // Or with the test names spelled out.
/// both_runtimes!(add_text_round_trips => add_text_threads, add_text_smol);
///
/// // Or defining the scenario in place.
/// both_runtimes! {
///     fn sync_with_gc_works(server: &TestServer) {
///         server.client().sync_with_gc().unwrap();
///     }
/// }
/// ```
///
/// `macro_rules!` cannot glue identifiers together, so without explicit
/// names the two tests live in a module named after the scenario (a
/// module and a function may share a name); `cargo test NAME` selects
/// both, `cargo test NAME::smol` one. Attributes given before the name
/// (`#[ignore]`, `#[should_panic]`) go on both tests.
#[macro_export]
macro_rules! both_runtimes {
    ($(#[$meta:meta])* fn $name:ident($server:ident : $ty:ty) $body:block) => {
        fn $name($server: $ty) $body
        $crate::both_runtimes!($(#[$meta])* $name);
    };
    ($(#[$meta:meta])* $name:ident => $threads:ident, $smol:ident) => {
        $(#[$meta])*
        #[test]
        fn $threads() {
            $crate::server::run_scenario($crate::server::Runtime::Threads, $name);
        }

        $(#[$meta])*
        #[test]
        fn $smol() {
            $crate::server::run_scenario($crate::server::Runtime::Smol, $name);
        }
    };
    ($(#[$meta:meta])* $name:ident) => {
        mod $name {
            $(#[$meta])*
            #[test]
            fn threads() {
                $crate::server::run_scenario($crate::server::Runtime::Threads, super::$name);
            }

            $(#[$meta])*
            #[test]
            fn smol() {
                $crate::server::run_scenario($crate::server::Runtime::Smol, super::$name);
            }
        }
    };
}

/// The configuration of a test daemon whose files live under `root`.
fn test_config(root: &Path) -> io::Result<Config> {
    let store_path = root.join("gnu/store");
    let store_text = store_path
        .to_str()
        .ok_or_else(|| io::Error::other("the temporary directory is not UTF-8"))?;
    let store = StoreDir::new(store_text)
        .map_err(|e| io::Error::other(format!("bad store directory: {e}")))?;
    let state = root.join("var/guix");
    let dirs = Dirs {
        store,
        db: state.join("db"),
        state,
        log: root.join("var/log/guix"),
        conf: root.join("etc/guix"),
        // No helper program exists: substitutes are off, and signing or
        // verifying fails with the daemon's words for a missing helper.
        guix_program: root.join("no-guix"),
    };
    let mut settings = Settings::default();
    settings.set("build-use-substitutes", "false");
    settings.set("gc-reserved-space", "4096");
    settings
        .update()
        .map_err(|e| io::Error::other(format!("test settings: {e}")))?;
    let uid = std::fs::metadata(root)?.uid();
    Ok(Config {
        dirs,
        daemon_uid: uid,
        settings,
        limits: Limits::default(),
        seed: 0,
        verbosity: 0,
    })
}

/// A fresh directory for one server.
fn scratch_root(runtime: Runtime) -> io::Result<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!(
        "guixd-testkit-{}-{n}-{}",
        std::process::id(),
        runtime.name()
    ));
    // A leftover of an earlier process with the same pid.
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    Ok(root)
}

/// Asks the server to stop and waits for it, at most [`JOIN_TIMEOUT`].
fn stop(server: Running) -> io::Result<()> {
    match &server {
        Running::Threads(s) => s.shutdown(),
        Running::Smol(s) => s.shutdown(),
    }
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let joined = match server {
            Running::Threads(s) => s.join(),
            Running::Smol(s) => s.join(),
        };
        let _ = done.send(joined);
    });
    match result.recv_timeout(JOIN_TIMEOUT) {
        Ok(joined) => joined,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the server did not stop within {JOIN_TIMEOUT:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guixd_core::nar::NarTree;
    use std::collections::BTreeMap;

    fn text_round_trip(server: &TestServer) {
        let mut client = server.client();
        let path = client
            .add_text_to_store::<&str>("hello", b"hello, world\n", &[])
            .unwrap();
        assert!(path.starts_with(server.store_dir().as_str()));
        assert!(client.is_valid_path(&path).unwrap());
        let info = client.query_path_info(&path).unwrap();
        assert_eq!(info.nar_size, 128);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk, b"hello, world\n");
        // A second client sees it too.
        assert_eq!(
            server.client().query_valid_paths(&[path.as_str()]).unwrap(),
            vec![path.clone()]
        );
    }
    crate::both_runtimes!(text_round_trip);

    fn add_to_store_then_export_and_reference(server: &TestServer) {
        let mut client = server.client();
        let tree = NarTree::Directory(BTreeMap::from([(
            b"file".to_vec(),
            NarTree::File {
                executable: true,
                contents: b"#!/bin/sh\n".to_vec(),
            },
        )]));
        let nar = tree.to_nar().unwrap();
        let item = client.add_to_store("tree", true, "sha256", &nar).unwrap();
        let text = client
            .add_text_to_store("uses-tree", item.as_bytes(), &[item.as_str()])
            .unwrap();
        assert_eq!(client.query_references(&text).unwrap(), vec![item.clone()]);
        assert_eq!(client.query_referrers(&item).unwrap(), vec![text]);
        let exported = client.export_path(&item, false).unwrap();
        assert_eq!(&exported[..nar.len()], &nar[..]);
        // Without a signature (and without `guix authenticate` to check
        // one) the import is refused with the daemon's words.
        let e = client
            .import_paths(&crate::client::export_bundle([exported.as_slice()]))
            .unwrap_err();
        assert_eq!(
            e.daemon_message(),
            Some(format!("imported archive of `{item}' lacks a signature").as_str())
        );
        client.sync_with_gc().unwrap();
    }
    crate::both_runtimes!(
        add_to_store_then_export_and_reference => add_to_store_threads, add_to_store_smol
    );

    crate::both_runtimes! {
        fn daemon_errors_keep_the_session(server: &TestServer) {
            let mut client = server.client();
            let missing = format!(
                "{}/00000000000000000000000000000000-x",
                server.store_dir().as_str()
            );
            let e = client.query_path_info(&missing).unwrap_err();
            assert_eq!(
                e.daemon_message(),
                Some(format!("path `{missing}' is not valid").as_str())
            );
            client.sync_with_gc().unwrap();
        }
    }

    crate::both_runtimes! {
        fn a_bad_request_ends_the_session(server: &TestServer) {
            let mut client = server.client();
            // Op 0 does not exist: the daemon says so and hangs up.
            client.send_raw(&[0; 8]).unwrap();
            let e = client.read_response(guixd_core::wire::Op::SyncWithGc).unwrap_err();
            assert_eq!(e.daemon_message(), Some("invalid operation 0"));
            assert_eq!(client.read_to_end_raw().unwrap(), Vec::<u8>::new());
        }
    }

    #[test]
    fn every_server_has_its_own_directory_and_leaves_nothing_behind() {
        let a = TestServer::start(Runtime::Threads);
        let b = TestServer::start(Runtime::Smol);
        assert_ne!(a.root(), b.root());
        assert!(a.socket_path().exists());
        let root = b.root().to_path_buf();
        drop(b);
        assert!(!root.exists());
        assert_eq!(Runtime::Threads.name(), "threads");
        assert_eq!(Runtime::Smol.name(), "smol");
    }
}

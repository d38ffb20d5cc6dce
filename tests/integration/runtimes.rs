//! The runtimes end to end, each scenario on both: a real `Os` on a
//! scratch store, real Unix and TCP sockets, clients speaking the worker
//! protocol through the testkit's client (the core's wire codec).
//! Scheduling under load (large uploads and exports through full sockets,
//! pipelining, many clients, clients that leave mid-request), the
//! connection ceiling, TCP peers, shutdown and restart.
//!
//! Scenarios that need nothing special use `TestServer` through
//! `both_runtimes!`; those that need another listener (TCP, a broken one)
//! or a restart on the same store use [`Harness`], which starts either
//! runtime's `Server` directly.
//!
//! Keeps true: every scenario has its own store and server, stopped and
//! joined (with a timeout) before it ends; nothing sleeps to wait for
//! something; every read has a timeout, so a hung server fails the test.

use guixd_core::config::{Config, Dirs, Limits};
use guixd_core::hash::Hash;
use guixd_core::nar::file_nar;
use guixd_core::settings::Settings;
use guixd_core::store_path::StoreDir;
use guixd_core::wire::{self, AddToStoreHeader, GcRequest, Op, PathInfo, Reply, Request};
use guixd_os::net::Listener;
use guixd_os::{Os, OsConfig};
use guixd_testkit::both_runtimes;
use guixd_testkit::client::Client;
use guixd_testkit::server::{Runtime, TestServer};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::Duration;

/// Longest a client waits for the server, and a server for its join.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a `fn(Runtime)` scenario as one test per runtime, in a module
/// named after it.
macro_rules! per_runtime {
    ($name:ident) => {
        mod $name {
            #[test]
            fn threads() {
                super::$name(guixd_testkit::server::Runtime::Threads);
            }

            #[test]
            fn smol() {
                super::$name(guixd_testkit::server::Runtime::Smol);
            }
        }
    };
}

both_runtimes! {
    fn add_text_then_query_path_info_and_validity(server: &TestServer) {
        let mut client = connect(server);
        let contents = b"Hello, guixd!\n";
        let path = client.add_text_to_store::<&str>("hello.txt", contents, &[]).unwrap();
        let store = server.store_dir();
        let expected = store.make_text_path("hello.txt", &Hash::sha256(contents), []).unwrap();
        assert_eq!(path, expected.as_str());
        assert_eq!(std::fs::read(&path).unwrap(), contents);
        let nar = file_nar(false, contents);
        let info = client.query_path_info(&path).unwrap();
        assert_eq!(
            info,
            PathInfo {
                deriver: String::new(),
                hash: Hash::sha256(&nar).to_hex(),
                references: vec![],
                registration_time: info.registration_time,
                nar_size: nar.len() as u64,
            }
        );
        assert!(info.registration_time > 0);
        assert!(client.is_valid_path(&path).unwrap());

        // Another item that refers to the first.
        let other = client
            .add_text_to_store("other.txt", b"see hello", std::slice::from_ref(&path))
            .unwrap();
        assert_eq!(client.query_path_info(&other).unwrap().references, vec![path.clone()]);

        // An item nobody added; the session goes on after the error.
        let missing = store
            .make_store_path("source", &Hash::sha256(b"nothing"), "nothing")
            .unwrap();
        assert!(!client.is_valid_path(missing.as_str()).unwrap());
        let e = client.query_path_info(missing.as_str()).unwrap_err();
        assert_eq!(
            e.daemon_message(),
            Some(format!("path `{missing}' is not valid").as_str())
        );
        assert!(client.is_valid_path(&path).unwrap());

        // Opening the session made the peer's profile directory.
        let uid = std::fs::metadata(server.root()).unwrap().uid();
        if let Some(user) = guixd_os::net::user_name(uid) {
            assert!(server.dirs().state.join("profiles/per-user").join(user).is_dir());
        }
    }
}

both_runtimes! {
    /// Several read budgets' worth of NAR with the default limits, so reading
    /// stops and resumes while the upload's chunks are written.
    fn add_to_store_streams_a_large_nar(server: &TestServer) {
        let mut client = connect(server);
        let contents: Vec<u8> = (0..(9 << 20) + 12345u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let nar = file_nar(false, &contents);
        let path = client.add_to_store("big", true, "sha256", &nar).unwrap();
        let expected = server
            .store_dir()
            .make_fixed_output_path(true, &Hash::sha256(&nar), "big")
            .unwrap();
        assert_eq!(path, expected.as_str());
        let info = client.query_path_info(&path).unwrap();
        assert_eq!(info.hash, Hash::sha256(&nar).to_hex());
        assert_eq!(info.nar_size, nar.len() as u64);
        assert!(std::fs::read(&path).unwrap() == contents, "the stored file differs");
    }
}

/// A NAR much larger than a tiny input buffer: reading must stop when the
/// budget is 0 and resume when the session has consumed its input.
fn add_to_store_larger_than_the_input_buffer(runtime: Runtime) {
    let server = TestServer::start_with(runtime, |config| {
        config.limits.input_buffer_bytes = 16 * 1024;
        config.limits.upload_chunk_bytes = 8 * 1024;
    });
    let mut client = connect(&server);
    let contents: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let nar = file_nar(false, &contents);
    let path = client.add_to_store("big", true, "sha256", &nar).unwrap();
    assert!(std::fs::read(&path).unwrap() == contents);
    assert_eq!(
        client.query_path_info(&path).unwrap().nar_size,
        nar.len() as u64
    );
}
per_runtime!(add_to_store_larger_than_the_input_buffer);

both_runtimes! {
    /// The export is bigger than the socket buffers and the core's output
    /// bound, so the session must wait for writes to drain, more than once;
    /// it is the NAR followed by exactly one trailer.
    fn export_path_streams_through_a_full_socket(server: &TestServer) {
        let mut client = connect(server);
        let contents: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
        let nar = file_nar(true, &contents);
        let path = client.add_to_store("exported", true, "sha256", &nar).unwrap();
        let exported = client.export_path(&path, false).unwrap();
        let mut expected = nar.clone();
        guixd_core::export::encode_export_meta(&path, &[], "", &mut expected);
        guixd_core::export::encode_export_signature(None, &mut expected);
        assert!(exported == expected, "the export differs");
        // The session goes on.
        assert!(client.is_valid_path(&path).unwrap());
    }
}

both_runtimes! {
    /// Many requests written before any reply is read, among them large ones:
    /// the replies come back whole and in order, however the socket buffers
    /// fill up.
    fn pipelined_requests_are_answered_in_order(server: &TestServer) {
        const SMALL: usize = 2000;
        let mut client = connect(server);
        let present = client.add_text_to_store::<&str>("present", b"here", &[]).unwrap();
        let absent = server
            .store_dir()
            .make_store_path("source", &Hash::sha256(b"gone"), "gone")
            .unwrap()
            .into_string();
        let minor = minor(&client);
        let mut requests = vec![Request::AddTextToStore {
            name: "big".into(),
            contents: vec![b'z'; 3 << 20],
            references: vec![],
        }];
        for i in 0..SMALL {
            let path = if i % 3 == 0 { &present } else { &absent };
            requests.push(Request::IsValidPath { path: path.clone() });
        }
        requests.push(Request::AddTextToStore {
            name: "last".into(),
            contents: b"last".to_vec(),
            references: vec![],
        });
        let mut bytes = Vec::new();
        for request in &requests {
            wire::encode_request(request, minor, &mut bytes);
        }
        // Written by another thread, or both sides could wait for ever on
        // full buffers.
        let mut writer = client.stream().try_clone().unwrap();
        let sending = std::thread::spawn(move || writer.write_all(&bytes).unwrap());
        for (i, request) in requests.iter().enumerate() {
            let reply = client.read_response(request.op()).unwrap();
            match (request, reply) {
                (Request::AddTextToStore { name, .. }, Reply::AddTextToStore(path)) => {
                    assert!(path.ends_with(&format!("-{name}")), "{path}")
                }
                (Request::IsValidPath { path }, Reply::IsValidPath(valid)) => {
                    assert_eq!(valid, *path == present, "reply {i}")
                }
                (request, reply) => panic!("reply {i} to {:?}: {reply:?}", request.op()),
            }
        }
        sending.join().unwrap();
    }
}

both_runtimes! {
    fn fifty_clients_at_once(server: &TestServer) {
        const CLIENTS: usize = 50;
        let barrier = Arc::new(Barrier::new(CLIENTS));
        let socket = server.socket_path().to_path_buf();
        let threads: Vec<_> = (0..CLIENTS)
            .map(|n| {
                let barrier = barrier.clone();
                let socket = socket.clone();
                std::thread::spawn(move || {
                    let mut client = connect_to(&socket);
                    // Everybody is connected and greeted before anybody asks.
                    barrier.wait();
                    let contents = format!("client {n}\n");
                    let path = client
                        .add_text_to_store::<&str>(&format!("c{n}"), contents.as_bytes(), &[])
                        .unwrap();
                    assert!(client.is_valid_path(&path).unwrap());
                    let info = client.query_path_info(&path).unwrap();
                    let nar = file_nar(false, contents.as_bytes());
                    assert_eq!(info.hash, Hash::sha256(&nar).to_hex());
                    path
                })
            })
            .collect();
        let mut paths: Vec<String> = threads.into_iter().map(|h| h.join().unwrap()).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), CLIENTS);
        // Every item is visible to a new client.
        assert_eq!(connect(server).query_valid_paths(&paths).unwrap(), paths);
    }
}

both_runtimes! {
    fn clients_leaving_mid_request_do_not_disturb_others(server: &TestServer) {
        let mut steady = connect(server);

        // Half of an add-text-to-store request, then gone.
        let mut half = connect(server);
        let bytes = encode(&half, &Request::AddTextToStore {
            name: "half".into(),
            contents: vec![b'x'; 100_000],
            references: vec![],
        });
        half.send_raw(&bytes[..bytes.len() / 2]).unwrap();
        drop(half);

        // An upload cut off in the middle of its NAR (after some chunks
        // went to the store), then gone.
        let mut cut = connect(server);
        let nar = file_nar(false, &vec![7u8; 3 << 20]);
        let mut bytes = encode(&cut, &add_to_store_header("cut"));
        bytes.extend_from_slice(&nar[..nar.len() / 2]);
        cut.send_raw(&bytes).unwrap();
        drop(cut);

        // A client that hangs up after its magic, before the greeting.
        let mut early = UnixStream::connect(server.socket_path()).unwrap();
        let mut magic = Vec::new();
        wire::write_client_magic(&mut magic);
        early.write_all(&magic).unwrap();
        drop(early);

        // A client that leaves without reading the reply to its request.
        let mut deaf = connect(server);
        let bytes = encode(&deaf, &Request::QueryAllValidPaths);
        deaf.send_raw(&bytes).unwrap();
        drop(deaf);

        // A client that shuts down its sending side and reads until EOF.
        let mut quiet = connect(server);
        quiet.stream().shutdown(Shutdown::Write).unwrap();
        assert_eq!(quiet.read_to_end_raw().unwrap(), Vec::<u8>::new());

        // The steady client still gets answers, and so does a new one.
        let path = steady.add_text_to_store::<&str>("steady", b"still here", &[]).unwrap();
        assert!(steady.is_valid_path(&path).unwrap());
        let mut fresh = connect(server);
        assert!(fresh.is_valid_path(&path).unwrap());
        // The cut upload can be made whole by someone else.
        let cut_path = fresh.add_to_store("cut", true, "sha256", &nar).unwrap();
        assert!(fresh.is_valid_path(&cut_path).unwrap());
    }
}

both_runtimes! {
    /// End of input while an operation runs is no reason to drop its reply.
    fn a_client_that_half_closes_still_gets_its_reply(server: &TestServer) {
        let mut client = connect(server);
        let bytes = encode(&client, &Request::AddTextToStore {
            name: "last-words".into(),
            contents: b"goodbye".to_vec(),
            references: vec![],
        });
        client.send_raw(&bytes).unwrap();
        client.stream().shutdown(Shutdown::Write).unwrap();
        match client.read_response(Op::AddTextToStore) {
            Ok(Reply::AddTextToStore(path)) => assert!(path.ends_with("-last-words")),
            other => panic!("add-text-to-store: {other:?}"),
        }
        assert_eq!(client.read_to_end_raw().unwrap(), Vec::<u8>::new());
    }
}

/// Beyond the core's connection ceiling, new clients are closed at once
/// and the ones served go on.
fn connections_beyond_the_ceiling_are_closed(runtime: Runtime) {
    let server = TestServer::start_with(runtime, |config| config.limits.connections_max = 2);
    let mut first = connect(&server);
    let _second = connect(&server);
    let mut third = UnixStream::connect(server.socket_path()).unwrap();
    third.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut magic = Vec::new();
    wire::write_client_magic(&mut magic);
    // The write may fail if the daemon closed first; the read tells.
    let _ = third.write_all(&magic);
    let mut rest = Vec::new();
    match third.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty()),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
    }
    let path = first
        .add_text_to_store::<&str>("under-the-ceiling", b"ok", &[])
        .unwrap();
    assert!(first.is_valid_path(&path).unwrap());
}
per_runtime!(connections_beyond_the_ceiling_are_closed);

both_runtimes! {
    /// A small version of the benchmark: idle clients that completed the
    /// greeting, and one active client whose requests are all answered.
    fn many_idle_connections_do_not_slow_down_an_active_one(server: &TestServer) {
        const IDLE: usize = 300;
        let idle: Vec<Client<UnixStream>> = (0..IDLE).map(|_| connect(server)).collect();
        let mut active = connect(server);
        let path = active.add_text_to_store::<&str>("active", b"active", &[]).unwrap();
        for _ in 0..100 {
            assert!(active.is_valid_path(&path).unwrap());
        }
        drop(idle);
    }
}

/// Shutdown with idle clients, a half-sent request and a connection that
/// never greeted: `join` returns, every connection is closed, nobody is
/// accepted any more, and a new server on the same store has what was
/// added before.
fn shutdown_with_clients_connected_returns_from_join(runtime: Runtime) {
    let mut harness = Harness::start_unix(runtime, "shutdown");
    let mut idle: Vec<Client<UnixStream>> = (0..5).map(|_| harness.connect()).collect();
    let mut busy = harness.connect();
    let path = busy
        .add_text_to_store::<&str>("before", b"before shutdown", &[])
        .unwrap();
    let bytes = encode(
        &busy,
        &Request::AddTextToStore {
            name: "unfinished".into(),
            contents: vec![b'y'; 50_000],
            references: vec![],
        },
    );
    busy.send_raw(&bytes[..1000]).unwrap();
    // A connection that never got past the greeting.
    let mut mute = UnixStream::connect(&harness.socket).unwrap();
    mute.set_read_timeout(Some(TIMEOUT)).unwrap();

    // Asked to stop twice (it is idempotent), from two threads.
    let server = harness.server.take().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| server.shutdown());
        server.shutdown();
    });
    join_within(server).unwrap();

    // Every connection was closed; with unread input (the half-sent
    // request) a Unix socket reports a reset instead of the end.
    for client in idle.iter_mut().chain(std::iter::once(&mut busy)) {
        match client.read_to_end_raw() {
            Ok(rest) => assert!(rest.is_empty(), "{rest:?}"),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
        }
    }
    // It may never have been accepted: then the listener's close resets it.
    let mut rest = Vec::new();
    match mute.read_to_end(&mut rest) {
        Ok(n) => assert_eq!(n, 0),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
    }
    // Nobody is accepted any more.
    assert!(
        UnixStream::connect(&harness.socket)
            .and_then(|mut s| s.write_all(&[0; 8]).and_then(|()| s.read(&mut [0; 8])))
            .map_or(true, |n| n == 0)
    );
    // What was added before the shutdown is there for the next server on
    // the same store.
    harness.restart();
    let mut client = harness.connect();
    assert!(client.is_valid_path(&path).unwrap());
    harness.stop();
}
per_runtime!(shutdown_with_clients_connected_returns_from_join);

/// Dropping a server asks it to stop: its clients see the end.
fn dropping_a_server_shuts_it_down(runtime: Runtime) {
    let mut harness = Harness::start_unix(runtime, "drop");
    let mut client = harness.connect();
    let path = client.add_text_to_store::<&str>("x", b"x", &[]).unwrap();
    assert!(client.is_valid_path(&path).unwrap());
    drop(harness.server.take());
    // The end of the stream (or a reset): either way the read returns.
    let _ = client.read_to_end_raw();
}
per_runtime!(dropping_a_server_shuts_it_down);

/// TCP peers are served but are not trusted with garbage collection, which
/// is refused as soon as the operation word arrives, or with the whole
/// request in one piece.
fn tcp_clients_are_served(runtime: Runtime) {
    let listener = guixd_os::net::bind_tcp("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let harness = Harness::start(runtime, "tcp", Listener::Tcp(listener));
    let tcp = || {
        let mut client = Client::connect_tcp(address).unwrap();
        client.stream().set_read_timeout(Some(TIMEOUT)).unwrap();
        client.handshake().unwrap();
        client
    };
    let refused = Some("Garbage collection is disabled for remote hosts.");

    let mut client = tcp();
    let path = client
        .add_text_to_store::<&str>("over-tcp", b"remote", &[])
        .unwrap();
    assert!(client.is_valid_path(&path).unwrap());
    // The operation word alone.
    client
        .send_raw(&u64::from(Op::CollectGarbage.code()).to_le_bytes())
        .unwrap();
    let e = client.read_response(Op::CollectGarbage).unwrap_err();
    assert_eq!(e.daemon_message(), refused);
    assert_eq!(client.read_to_end_raw().unwrap(), Vec::<u8>::new());

    // The whole request in one write.
    let mut client = tcp();
    let request = Request::CollectGarbage(GcRequest {
        action: 2,
        paths: Vec::new(),
        ignore_liveness: false,
        max_freed_bytes: 0,
    });
    let e = client.call(&request).unwrap_err();
    assert_eq!(e.daemon_message(), refused);
    harness.stop();
}
per_runtime!(tcp_clients_are_served);

/// A listener that cannot accept (here: a TCP socket never put in the
/// listening state) is logged and retried after a pause, as the C++ daemon
/// logs a failed accept and goes on: the server's other listeners keep
/// serving, and it shuts down cleanly.
fn a_broken_listener_does_not_stop_the_others(runtime: Runtime) {
    use std::os::fd::FromRawFd;
    // SAFETY: socket, bind and close have no memory preconditions besides
    // the address, which points to a live, properly sized sockaddr_in.
    let broken = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let mut address: libc::sockaddr_in = std::mem::zeroed();
        address.sin_family = libc::AF_INET as libc::sa_family_t;
        address.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let bound = libc::bind(
            fd,
            (&address as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if bound != 0 {
            let e = io::Error::last_os_error();
            libc::close(fd);
            panic!("bind: {e}");
        }
        // The descriptor is ours alone from here on.
        std::net::TcpListener::from_raw_fd(fd)
    };
    let root = scratch_root(runtime, "broken");
    let socket = root.join("socket");
    let mut harness = Harness {
        runtime,
        root,
        socket,
        server: None,
    };
    let unix = guixd_os::net::bind_unix(&harness.socket).unwrap();
    harness.server = Some(harness.serve_all(vec![Listener::Tcp(broken), Listener::Unix(unix)]));
    // Long enough for several failed accepts and pauses.
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        let mut client = harness.connect();
        let path = client
            .add_text_to_store::<&str>("still-served", b"yes", &[])
            .unwrap();
        assert!(client.is_valid_path(&path).unwrap());
    }
    harness.stop();
}

per_runtime!(a_broken_listener_does_not_stop_the_others);

// ---- the scaffolding

/// A client of `server` after the handshake, with a read timeout.
fn connect(server: &TestServer) -> Client<UnixStream> {
    connect_to(server.socket_path())
}

fn connect_to(socket: &Path) -> Client<UnixStream> {
    let mut client = Client::connect_unix(socket).unwrap();
    client.stream().set_read_timeout(Some(TIMEOUT)).unwrap();
    client.handshake().unwrap();
    client
}

fn minor<S: Read + Write>(client: &Client<S>) -> u8 {
    wire::protocol_minor(client.daemon_version().unwrap())
}

fn encode<S: Read + Write>(client: &Client<S>, request: &Request) -> Vec<u8> {
    let mut bytes = Vec::new();
    wire::encode_request(request, minor(client), &mut bytes);
    bytes
}

fn add_to_store_header(name: &str) -> Request {
    Request::AddToStore(AddToStoreHeader {
        name: name.into(),
        fixed: true,
        recursive: true,
        hash_algo: "sha256".into(),
    })
}

/// Either runtime's server.
enum Server {
    Threads(guixd_runtime_threads::Server),
    Smol(guixd_runtime_smol::Server),
}

impl Server {
    fn shutdown(&self) {
        match self {
            Server::Threads(s) => s.shutdown(),
            Server::Smol(s) => s.shutdown(),
        }
    }

    fn join(self) -> io::Result<()> {
        match self {
            Server::Threads(s) => s.join(),
            Server::Smol(s) => s.join(),
        }
    }
}

/// `server.join()`, failing the test if it does not return in time.
fn join_within(server: Server) -> io::Result<()> {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(server.join());
    });
    result
        .recv_timeout(TIMEOUT)
        .unwrap_or_else(|_| panic!("join did not return within {TIMEOUT:?}"))
}

/// A server on a scratch store with any listener, which can be restarted
/// on the same store. Dropping it stops the server and removes the store.
struct Harness {
    runtime: Runtime,
    root: PathBuf,
    socket: PathBuf,
    server: Option<Server>,
}

impl Harness {
    /// A server listening on a Unix socket.
    fn start_unix(runtime: Runtime, tag: &str) -> Harness {
        let root = scratch_root(runtime, tag);
        let socket = root.join("var/daemon-socket/socket");
        let mut harness = Harness {
            runtime,
            root,
            socket,
            server: None,
        };
        harness.restart();
        harness
    }

    /// A server on `listener`; there is no Unix socket.
    fn start(runtime: Runtime, tag: &str, listener: Listener) -> Harness {
        let root = scratch_root(runtime, tag);
        let socket = root.join("no-socket");
        let mut harness = Harness {
            runtime,
            root,
            socket,
            server: None,
        };
        harness.server = Some(harness.serve_all(vec![listener]));
        harness
    }

    fn connect(&self) -> Client<UnixStream> {
        connect_to(&self.socket)
    }

    /// Stops the server, if one runs, and starts another on the same store
    /// and Unix socket.
    fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
            join_within(server).unwrap();
        }
        let _ = std::fs::remove_file(&self.socket);
        let listener = guixd_os::net::bind_unix(&self.socket).unwrap();
        self.server = Some(self.serve_all(vec![Listener::Unix(listener)]));
    }

    /// Stops the server and checks that it stopped cleanly.
    fn stop(mut self) {
        let server = self.server.take().unwrap();
        server.shutdown();
        join_within(server).unwrap();
    }

    fn serve_all(&self, listeners: Vec<Listener>) -> Server {
        let config = config(&self.root);
        let meta = std::fs::metadata(&self.root).unwrap();
        let os = Arc::new(
            Os::open(OsConfig {
                dirs: config.dirs.clone(),
                settings: config.settings.typed().clone(),
                uid: meta.uid(),
                gid: meta.gid(),
            })
            .unwrap(),
        );
        match self.runtime {
            Runtime::Threads => Server::Threads(
                guixd_runtime_threads::Server::start(config, os, listeners).unwrap(),
            ),
            Runtime::Smol => {
                Server::Smol(guixd_runtime_smol::Server::start(config, os, listeners).unwrap())
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
            let _ = join_within(server);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The configuration of a test daemon whose files live under `root`:
/// no substitutes, the test's own uid as the daemon's.
fn config(root: &Path) -> Config {
    let mut settings = Settings::default();
    settings.set("build-use-substitutes", "false");
    settings.set("gc-reserved-space", "4096");
    settings.update().unwrap();
    Config {
        dirs: Dirs {
            store: StoreDir::new(root.join("store").to_str().unwrap()).unwrap(),
            state: root.join("state"),
            log: root.join("log"),
            db: root.join("state/db"),
            conf: root.join("etc"),
            guix_program: root.join("no-guix"),
        },
        daemon_uid: std::fs::metadata(root).unwrap().uid(),
        settings,
        limits: Limits::default(),
        seed: 0,
        verbosity: 0,
    }
}

fn scratch_root(runtime: Runtime, tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!(
        "guixd-it-runtimes-{}-{n}-{}-{tag}",
        std::process::id(),
        runtime.name()
    ));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

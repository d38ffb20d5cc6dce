//! The smol runtime end to end: a real `Os` on a scratch store, real
//! sockets, and clients that speak the worker protocol through the core's
//! own client-side codec.
//!
//! What these tests keep true: each one has its own store, socket and
//! server, removed when it ends; nothing sleeps to wait for something
//! (waits are blocking reads, joins and barriers, with timeouts only as a
//! guard against hanging).

use guixd_core::config::{Config, Dirs, Limits};
use guixd_core::hash::Hash;
use guixd_core::nar::file_nar;
use guixd_core::settings::Settings;
use guixd_core::store_path::StoreDir;
use guixd_core::wire::{
    self, AddToStoreHeader, ClientHello, Op, Reply, Request, Response, ResponseDecoder,
    ServerHelloDecoder, StderrFrame, WireLimits,
};
use guixd_os::net::{self, Listener};
use guixd_os::{Os, OsConfig};
use guixd_runtime_smol::Server;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::Duration;

/// Generous: only a hung server gets near it.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn add_text_then_query_path_info_and_validity() {
    let daemon = TestDaemon::start("text", Limits::default());
    let mut client = daemon.connect();
    let contents = b"hello from the smol runtime\n".to_vec();
    let path = client.add_text("greeting", &contents);
    let expected = daemon
        .store
        .make_text_path("greeting", &Hash::sha256(&contents), [])
        .unwrap();
    assert_eq!(path, expected.as_str());
    assert_eq!(std::fs::read(&path).unwrap(), contents);

    let nar = file_nar(false, &contents);
    match client.call(&Request::QueryPathInfo { path: path.clone() }) {
        Ok(Reply::QueryPathInfo(info)) => {
            assert_eq!(info.hash, Hash::sha256(&nar).to_hex());
            assert_eq!(info.nar_size, nar.len() as u64);
            assert!(info.references.is_empty());
            assert_eq!(info.deriver, "");
        }
        other => panic!("query-path-info: {other:?}"),
    }
    assert_eq!(
        client.call(&Request::IsValidPath { path: path.clone() }),
        Ok(Reply::IsValidPath(true))
    );
    let missing = daemon
        .store
        .make_store_path("source", &Hash::sha256(b"nothing"), "nothing")
        .unwrap();
    assert_eq!(
        client.call(&Request::IsValidPath {
            path: missing.into_string()
        }),
        Ok(Reply::IsValidPath(false))
    );
    // An error during the work leaves the session usable.
    let err = client
        .call(&Request::QueryPathInfo {
            path: daemon
                .store
                .make_store_path("source", &Hash::sha256(b"absent"), "absent")
                .unwrap()
                .into_string(),
        })
        .unwrap_err();
    assert!(err.ends_with("is not valid"), "{err}");
    assert_eq!(
        client.call(&Request::IsValidPath { path }),
        Ok(Reply::IsValidPath(true))
    );
    // Opening the session made the peer's profile directory.
    if let Some(user) = net::user_name(rustix::process::geteuid().as_raw()) {
        assert!(
            daemon
                .root
                .join("state/profiles/per-user")
                .join(user)
                .is_dir()
        );
    }
    daemon.stop();
}

/// A NAR much larger than the core's input buffer: reading must stop when
/// the budget is 0 and resume when the session has consumed its input.
#[test]
fn add_to_store_larger_than_the_input_buffer() {
    let limits = Limits {
        input_buffer_bytes: 16 * 1024,
        upload_chunk_bytes: 8 * 1024,
        ..Limits::default()
    };
    let daemon = TestDaemon::start("nar", limits);
    let mut client = daemon.connect();
    let contents: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let nar = file_nar(false, &contents);
    let header = AddToStoreHeader {
        name: "big".to_owned(),
        fixed: true,
        recursive: true,
        hash_algo: "sha256".to_owned(),
    };
    let mut bytes = client.encode(&Request::AddToStore(header));
    bytes.extend_from_slice(&nar);
    client.send(&bytes);
    let path = match client.response(Op::AddToStore) {
        Ok(Reply::AddToStore(path)) => path,
        other => panic!("add-to-store: {other:?}"),
    };
    let expected = daemon
        .store
        .make_fixed_output_path(true, &Hash::sha256(&nar), "big")
        .unwrap();
    assert_eq!(path, expected.as_str());
    assert!(std::fs::read(&path).unwrap() == contents);
    match client.call(&Request::QueryPathInfo { path }) {
        Ok(Reply::QueryPathInfo(info)) => assert_eq!(info.nar_size, nar.len() as u64),
        other => panic!("query-path-info: {other:?}"),
    }
    daemon.stop();
}

#[test]
fn fifty_clients_at_once() {
    const CLIENTS: usize = 50;
    let daemon = TestDaemon::start("fifty", Limits::default());
    let all_connected = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let socket = daemon.socket.clone();
            let all_connected = all_connected.clone();
            std::thread::spawn(move || {
                let mut client = Client::handshake(UnixStream::connect(socket).unwrap());
                all_connected.wait();
                let contents = format!("client number {i}");
                let path = client.add_text(&format!("client-{i}"), contents.as_bytes());
                assert_eq!(
                    client.call(&Request::IsValidPath { path: path.clone() }),
                    Ok(Reply::IsValidPath(true))
                );
                match client.call(&Request::QueryPathInfo { path: path.clone() }) {
                    Ok(Reply::QueryPathInfo(info)) => {
                        let nar = file_nar(false, contents.as_bytes());
                        assert_eq!(info.nar_size, nar.len() as u64);
                    }
                    other => panic!("query-path-info: {other:?}"),
                }
                path
            })
        })
        .collect();
    let mut paths: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), CLIENTS);
    // Everyone's items are visible to a new client.
    let mut client = daemon.connect();
    match client.call(&Request::QueryValidPaths {
        paths: paths.clone(),
    }) {
        Ok(Reply::QueryValidPaths(valid)) => assert_eq!(valid.len(), CLIENTS),
        other => panic!("query-valid-paths: {other:?}"),
    }
    daemon.stop();
}

/// Many requests written before any reply is read: the replies come back
/// whole and in order, however the socket buffers fill up.
#[test]
fn pipelined_requests_are_answered_in_order() {
    const REQUESTS: usize = 2000;
    let daemon = TestDaemon::start("pipeline", Limits::default());
    let mut client = daemon.connect();
    let present = client.add_text("present", b"here");
    let absent = daemon
        .store
        .make_store_path("source", &Hash::sha256(b"gone"), "gone")
        .unwrap()
        .into_string();
    let mut bytes = Vec::new();
    for i in 0..REQUESTS {
        let path = if i % 3 == 0 { &present } else { &absent };
        bytes.extend(client.encode(&Request::IsValidPath { path: path.clone() }));
    }
    let mut writer = client.stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || writer.write_all(&bytes).unwrap());
    for i in 0..REQUESTS {
        assert_eq!(
            client.response(Op::IsValidPath),
            Ok(Reply::IsValidPath(i % 3 == 0)),
            "reply {i}"
        );
    }
    sending.join().unwrap();
    daemon.stop();
}

#[test]
fn clients_leaving_mid_request_do_not_disturb_others() {
    let mut daemon = TestDaemon::start("leaving", Limits::default());
    // Half of an add-text-to-store request, then gone.
    {
        let mut client = daemon.connect();
        let bytes = client.encode(&Request::AddTextToStore {
            name: "half".to_owned(),
            contents: vec![b'x'; 4096],
            references: Vec::new(),
        });
        client.send(&bytes[..bytes.len() / 2]);
    }
    // Half of an add-to-store NAR, then gone: the upload is discarded.
    {
        let mut client = daemon.connect();
        let nar = file_nar(false, &vec![7u8; 1 << 20]);
        let mut bytes = client.encode(&Request::AddToStore(AddToStoreHeader {
            name: "partial".to_owned(),
            fixed: true,
            recursive: true,
            hash_algo: "sha256".to_owned(),
        }));
        bytes.extend_from_slice(&nar[..nar.len() / 2]);
        client.send(&bytes);
    }
    // A client that leaves without reading the reply to its request.
    {
        let mut client = daemon.connect();
        let bytes = client.encode(&Request::QueryAllValidPaths);
        client.send(&bytes);
    }
    let mut client = daemon.connect();
    let path = client.add_text("still-working", b"yes");
    assert_eq!(
        client.call(&Request::IsValidPath { path }),
        Ok(Reply::IsValidPath(true))
    );
    let upload_leftovers = || {
        std::fs::read_dir(daemon.store.as_str())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".guixd-upload-")
            })
            .count()
    };
    // Shutting down waits for the cleanup of the abandoned upload.
    let server = daemon.server.take().unwrap();
    server.shutdown();
    join_within(server, JOIN_TIMEOUT)
        .expect("join did not return")
        .unwrap();
    assert_eq!(upload_leftovers(), 0);
}

/// End of input while an operation runs is no reason to drop its reply.
#[test]
fn a_client_that_half_closes_still_gets_its_reply() {
    let daemon = TestDaemon::start("half-close", Limits::default());
    let mut client = daemon.connect();
    let bytes = client.encode(&Request::AddTextToStore {
        name: "last-words".to_owned(),
        contents: b"goodbye".to_vec(),
        references: Vec::new(),
    });
    client.send(&bytes);
    client.stream.shutdown(Shutdown::Write).unwrap();
    match client.response(Op::AddTextToStore) {
        Ok(Reply::AddTextToStore(path)) => assert!(path.ends_with("-last-words")),
        other => panic!("add-text-to-store: {other:?}"),
    }
    assert!(client.at_eof());
    daemon.stop();
}

/// Beyond the core's connection ceiling, new clients are closed at once
/// and the ones served go on.
#[test]
fn connections_beyond_the_ceiling_are_closed() {
    let limits = Limits {
        connections_max: 2,
        ..Limits::default()
    };
    let daemon = TestDaemon::start("ceiling", limits);
    let mut first = daemon.connect();
    let _second = daemon.connect();
    let mut third = UnixStream::connect(&daemon.socket).unwrap();
    let mut magic = Vec::new();
    wire::write_client_magic(&mut magic);
    // The write may fail if the daemon closed first; the read tells.
    let _ = third.write_all(&magic);
    let mut rest = Vec::new();
    match third.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty()),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
    }
    let path = first.add_text("under-the-ceiling", b"ok");
    assert_eq!(
        first.call(&Request::IsValidPath { path }),
        Ok(Reply::IsValidPath(true))
    );
    daemon.stop();
}

#[test]
fn shutdown_with_clients_connected_returns_from_join() {
    let mut daemon = TestDaemon::start("shutdown", Limits::default());
    let mut idle: Vec<Client<UnixStream>> = (0..5).map(|_| daemon.connect()).collect();
    let mut busy = daemon.connect();
    let bytes = busy.encode(&Request::AddTextToStore {
        name: "never-finished".to_owned(),
        contents: vec![b'y'; 1000],
        references: Vec::new(),
    });
    busy.send(&bytes[..100]);
    // A connection that never got past the greeting.
    let mut mute = UnixStream::connect(&daemon.socket).unwrap();

    let server = daemon.server.take().unwrap();
    server.shutdown();
    server.shutdown();
    join_within(server, JOIN_TIMEOUT)
        .expect("join did not return")
        .unwrap();
    // Every connection was closed.
    for client in idle.iter_mut().chain(std::iter::once(&mut busy)) {
        assert!(client.at_eof());
    }
    // It may never have been accepted: then the listener's close resets it.
    let mut rest = Vec::new();
    match mute.read_to_end(&mut rest) {
        Ok(n) => assert_eq!(n, 0),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
    }
    // The socket no longer accepts.
    assert!(
        UnixStream::connect(&daemon.socket)
            .and_then(|mut s| s.write_all(&[0; 8]).and_then(|()| s.read(&mut [0; 8])))
            .map_or(true, |n| n == 0)
    );
}

#[test]
fn tcp_clients_are_served() {
    let listener = net::bind_tcp("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let daemon = TestDaemon::start_with("tcp", Limits::default(), Listener::Tcp(listener));
    let mut client = Client::handshake(TcpStream::connect(address).unwrap());
    let path = client.add_text("over-tcp", b"remote");
    assert_eq!(
        client.call(&Request::IsValidPath { path }),
        Ok(Reply::IsValidPath(true))
    );
    // The daemon refuses garbage collection from TCP peers as soon as it
    // has read the operation word.
    client.send(&u64::from(Op::CollectGarbage.code()).to_le_bytes());
    assert_eq!(
        client.response(Op::CollectGarbage),
        Err("Garbage collection is disabled for remote hosts.".to_owned())
    );
    assert!(client.at_eof());
    daemon.stop();
}

/// The same refusal when the whole request arrives in one read.
///
/// Ignored: a bug in the core's session (`serve` in
/// `core/src/daemon/session.rs`): the remote-GC check looks at
/// `decoder.pending_op()` *after* `feed`, which is `None` once the feed
/// completed the request, so a collect-garbage request that arrives whole
/// is performed (and answered "garbage collection and store maintenance
/// are not supported by this guixd yet", later a real collection) instead
/// of refused. The answer depends on how the bytes were split.
#[test]
fn tcp_gc_refused_when_the_request_arrives_whole() {
    let listener = net::bind_tcp("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let daemon = TestDaemon::start_with("tcp-gc", Limits::default(), Listener::Tcp(listener));
    let mut client = Client::handshake(TcpStream::connect(address).unwrap());
    let bytes = client.encode(&Request::CollectGarbage(wire::GcRequest {
        action: 2,
        paths: Vec::new(),
        ignore_liveness: false,
        max_freed_bytes: 0,
    }));
    client.send(&bytes);
    assert_eq!(
        client.response(Op::CollectGarbage),
        Err("Garbage collection is disabled for remote hosts.".to_owned())
    );
    daemon.stop();
}

/// Export streams the NAR and its trailer through `STDERR_WRITE` frames
/// (the runtime's output path with many chunks and the output bound).
///
/// Ignored: a bug in the core's session (`export_stream` in
/// `core/src/daemon/session.rs`) writes `EXPORT_MAGIC` itself and then
/// calls `export::encode_export_meta`, which writes it again, so every
/// export has "NIXE" twice after the NAR (and a signature would cover the
/// extra word); importing such an archive fails with "string of
/// 1163413838 bytes exceeds the limit of 67108864 bytes".
#[test]
fn export_path_writes_the_nar_then_one_trailer() {
    let daemon = TestDaemon::start("export", Limits::default());
    let mut client = daemon.connect();
    let contents: Vec<u8> = (0..3u32 << 20).map(|i| (i % 253) as u8).collect();
    let path = client.add_text("exported", &contents);
    client.sink.clear();
    assert_eq!(
        client.call(&Request::ExportPath {
            path: path.clone(),
            sign: false,
        }),
        Ok(Reply::ExportPath)
    );
    let mut expected = file_nar(false, &contents);
    guixd_core::export::encode_export_meta(&path, &[], "", &mut expected);
    guixd_core::export::encode_export_signature(None, &mut expected);
    assert!(client.sink == expected, "the export differs");
    daemon.stop();
}

/// A listener that cannot accept (here: never put in the listening state)
/// stops the server, and `join` returns its error.
#[test]
fn a_broken_listener_stops_the_server_with_its_error() {
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )
    .unwrap();
    let address: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    rustix::net::bind(&socket, &address).unwrap();
    let mut daemon = TestDaemon::start_with(
        "broken",
        Limits::default(),
        Listener::Tcp(std::net::TcpListener::from(socket)),
    );
    let server = daemon.server.take().unwrap();
    let err = join_within(server, JOIN_TIMEOUT)
        .expect("join did not return")
        .unwrap_err();
    assert!(
        err.to_string().starts_with("error accepting connection: "),
        "{err}"
    );
}

// ---- the scaffolding

/// A server on a scratch store, stopped and removed on drop.
struct TestDaemon {
    root: PathBuf,
    socket: PathBuf,
    store: StoreDir,
    server: Option<Server>,
}

impl TestDaemon {
    fn start(tag: &str, limits: Limits) -> TestDaemon {
        let root = scratch_root(tag);
        let socket = root.join("var/daemon-socket/socket");
        let listener = net::bind_unix(&socket).unwrap();
        TestDaemon::start_at(root, socket, limits, Listener::Unix(listener))
    }

    fn start_with(tag: &str, limits: Limits, listener: Listener) -> TestDaemon {
        let root = scratch_root(tag);
        let socket = root.join("no-socket");
        TestDaemon::start_at(root, socket, limits, listener)
    }

    fn start_at(root: PathBuf, socket: PathBuf, limits: Limits, listener: Listener) -> TestDaemon {
        let store = StoreDir::new(root.join("store").to_str().unwrap()).unwrap();
        let dirs = Dirs {
            store: store.clone(),
            state: root.join("state"),
            log: root.join("log"),
            db: root.join("state/db"),
            conf: root.join("etc"),
            guix_program: PathBuf::from("/nonexistent/guix"),
        };
        let mut settings = Settings::default();
        settings.set("build-use-substitutes", "false");
        settings.update().unwrap();
        let uid = rustix::process::geteuid().as_raw();
        let config = Config {
            dirs: dirs.clone(),
            daemon_uid: uid,
            settings: settings.clone(),
            limits,
            seed: 0,
            verbosity: 1,
        };
        let os = Os::open(OsConfig {
            dirs,
            settings: settings.typed().clone(),
            uid,
            gid: rustix::process::getegid().as_raw(),
        })
        .unwrap();
        let server = Server::start(config, Arc::new(os), vec![listener]).unwrap();
        TestDaemon {
            root,
            socket,
            store,
            server: Some(server),
        }
    }

    fn connect(&self) -> Client<UnixStream> {
        Client::handshake(UnixStream::connect(&self.socket).unwrap())
    }

    /// Stops the server and checks that it stopped cleanly.
    fn stop(mut self) {
        let server = self.server.take().unwrap();
        server.shutdown();
        join_within(server, JOIN_TIMEOUT)
            .expect("join did not return")
            .unwrap();
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
            let _ = join_within(server, JOIN_TIMEOUT);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn scratch_root(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!("guixd-rt-smol-{}-{n}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// `server.join()`, or `None` if it did not return in time.
fn join_within(server: Server, timeout: Duration) -> Option<io::Result<()>> {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(server.join());
    });
    result.recv_timeout(timeout).ok()
}

/// A worker-protocol client over any stream, decoding with the core's
/// client-side codec.
struct Client<S> {
    stream: S,
    /// Bytes read but not yet decoded.
    pending: Vec<u8>,
    daemon_minor: u8,
    /// The data of every `STDERR_WRITE` frame received.
    sink: Vec<u8>,
}

impl<S: Read + Write> Client<S> {
    /// Greets the daemon and waits for its `LAST` after the client hello.
    fn handshake(mut stream: S) -> Client<S> {
        let mut out = Vec::new();
        wire::write_client_magic(&mut out);
        stream.write_all(&out).unwrap();
        let mut client = Client {
            stream,
            pending: Vec::new(),
            daemon_minor: 0,
            sink: Vec::new(),
        };
        let mut decoder = ServerHelloDecoder::new();
        let version = loop {
            let feed = decoder.feed(&client.pending).unwrap();
            client.pending.drain(..feed.consumed);
            if let Some(version) = feed.item {
                break version;
            }
            assert!(client.fill(), "EOF during the server hello");
        };
        client.daemon_minor = wire::protocol_minor(version);
        let mut out = Vec::new();
        wire::encode_client_hello(&ClientHello::default(), client.daemon_minor, &mut out);
        client.send(&out);
        assert_eq!(client.response(Op::SetOptions), Ok(Reply::SetOptions));
        client
    }

    fn encode(&self, request: &Request) -> Vec<u8> {
        let mut out = Vec::new();
        wire::encode_request(request, self.daemon_minor, &mut out);
        out
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends `request` and decodes its response: the reply, or the text
    /// of the `ERROR` frame.
    fn call(&mut self, request: &Request) -> Result<Reply, String> {
        let bytes = self.encode(request);
        self.send(&bytes);
        self.response(request.op())
    }

    fn add_text(&mut self, name: &str, contents: &[u8]) -> String {
        match self.call(&Request::AddTextToStore {
            name: name.to_owned(),
            contents: contents.to_vec(),
            references: Vec::new(),
        }) {
            Ok(Reply::AddTextToStore(path)) => path,
            other => panic!("add-text-to-store: {other:?}"),
        }
    }

    fn response(&mut self, op: Op) -> Result<Reply, String> {
        let mut decoder = ResponseDecoder::new(op, self.daemon_minor, WireLimits::default());
        loop {
            let feed = decoder.feed(&self.pending).unwrap();
            self.pending.drain(..feed.consumed);
            match feed.item {
                Some(Response::Reply(reply)) => return Ok(reply),
                Some(Response::Frame(StderrFrame::Error { message, .. })) => return Err(message),
                Some(Response::Frame(StderrFrame::Next(_) | StderrFrame::Last)) => {}
                Some(Response::Frame(StderrFrame::Write(data))) => self.sink.extend(data),
                Some(Response::Frame(frame)) => panic!("unexpected frame {frame:?}"),
                // Nothing consumed and nothing yielded: it needs more bytes.
                None if feed.consumed == 0 && !self.fill() => {
                    return match decoder.feed_eof() {
                        Ok(Some(Response::Frame(StderrFrame::Error { message, .. }))) => {
                            Err(message)
                        }
                        Ok(Some(Response::Reply(reply))) => Ok(reply),
                        other => panic!("EOF in a response: {other:?}"),
                    };
                }
                None => {}
            }
        }
    }

    /// Reads more bytes; false at EOF.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.pending.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A reset counts as the end too.
                Err(_) => return false,
            }
        }
    }

    /// True when the daemon closed the connection with nothing more to say.
    fn at_eof(&mut self) -> bool {
        self.pending.is_empty() && !self.fill()
    }
}

//! End-to-end tests of the threads runtime: a real `Os` on a scratch store,
//! real Unix and TCP sockets, and clients that speak the worker protocol
//! through `guixd_core::wire`'s client side.
//!
//! Keeps true: every test has its own store directory (removed at the end)
//! and its own server, shut down and joined before the test returns; no
//! test sleeps to wait for something, and every socket read has a timeout
//! so a hung server fails the test instead of hanging it.

use guixd_core::config::{Config, Dirs, Limits};
use guixd_core::hash::Hash;
use guixd_core::nar::file_nar;
use guixd_core::settings::Settings;
use guixd_core::store_path::StoreDir;
use guixd_core::wire::{
    AddToStoreHeader, ClientHello, Op, PathInfo, Reply, Request, Response, ResponseDecoder,
    ServerHelloDecoder, StderrFrame, WireLimits, encode_client_hello, encode_request,
    protocol_minor, write_client_magic,
};
use guixd_os::net::Listener;
use guixd_os::{Os, OsConfig};
use guixd_runtime_threads::{LogSink, Server, ThreadsConfig};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

/// Longest a client waits for the server before the test fails.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn add_text_then_query_path_info_and_is_valid_path() {
    let t = TestServer::start("basic");
    let mut client = t.connect();
    let contents = b"Hello, guixd!\n";
    let path = client.add_text("hello.txt", contents, &[]);
    let expected = t
        .store
        .make_text_path("hello.txt", &Hash::sha256(contents), [])
        .unwrap();
    assert_eq!(path, expected.as_str());

    let nar = file_nar(false, contents);
    let info = client.path_info(&path).unwrap();
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
    assert!(client.is_valid(&path));

    // Another item that refers to the first.
    let other = client.add_text("other.txt", b"see hello", std::slice::from_ref(&path));
    let info = client.path_info(&other).unwrap();
    assert_eq!(info.references, vec![path.clone()]);

    // An item nobody added.
    let missing = t
        .store
        .make_text_path("missing", &Hash::sha256(b"nothing"), [])
        .unwrap();
    assert!(!client.is_valid(missing.as_str()));
    let (message, status) = client.path_info(missing.as_str()).unwrap_err();
    assert_eq!(message, format!("path `{missing}' is not valid"));
    assert_eq!(status, 1);

    // The same session goes on after an error.
    assert!(client.is_valid(&path));
    drop(client);
    t.stop();
}

#[test]
fn add_to_store_streams_a_large_nar() {
    // Several read budgets' worth, so reading stops and resumes while the
    // upload's chunks are written by the workers.
    let t = TestServer::start("upload");
    let mut client = t.connect();
    let contents: Vec<u8> = (0..(9 << 20) + 12345u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let nar = file_nar(false, &contents);
    let path = client.add_to_store("big", &nar).unwrap();
    assert!(path.ends_with("-big"), "{path}");
    let info = client.path_info(&path).unwrap();
    assert_eq!(info.hash, Hash::sha256(&nar).to_hex());
    assert_eq!(info.nar_size, nar.len() as u64);
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk == contents, "the stored file differs");
    drop(client);
    t.stop();
}

#[test]
fn export_path_streams_through_a_full_socket() {
    // The export is bigger than the socket buffers and the core's output
    // bound, so the session must wait for writes to drain, more than once.
    let t = TestServer::start("export");
    let mut client = t.connect();
    assert_eq!(
        client.request(&Request::SetOptions(Default::default())),
        Ok(Reply::SetOptions)
    );
    let contents: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
    let nar = file_nar(true, &contents);
    let path = client.add_to_store("exported", &nar).unwrap();
    let mut bytes = Vec::new();
    let request = Request::ExportPath {
        path: path.clone(),
        sign: false,
    };
    encode_request(&request, client.minor(), &mut bytes);
    client.send(&bytes);
    let mut decoder =
        ResponseDecoder::new(Op::ExportPath, client.daemon_minor, WireLimits::default());
    let mut exported = Vec::new();
    loop {
        let response = client.decode(|input| decoder.feed(input).map(|f| (f.consumed, f.item)));
        match response {
            Response::Frame(StderrFrame::Write(data)) => exported.extend_from_slice(&data),
            Response::Frame(StderrFrame::Next(_) | StderrFrame::Last) => {}
            Response::Reply(Reply::ExportPath) => break,
            other => panic!("export-path: {other:?}"),
        }
    }
    assert!(exported.len() > nar.len());
    assert!(
        exported[..nar.len()] == nar[..],
        "the export starts with the NAR"
    );
    // The session goes on.
    assert!(client.is_valid(&path));
    drop(client);
    t.stop();
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    // Everything is written before anything is read: more than a read
    // budget of requests waits in the socket while the first are served.
    let t = TestServer::start("pipeline");
    let mut client = t.connect();
    let big = vec![b'z'; 3 << 20];
    let requests = [
        Request::AddTextToStore {
            name: "first".into(),
            contents: b"first".to_vec(),
            references: vec![],
        },
        Request::AddTextToStore {
            name: "big".into(),
            contents: big.clone(),
            references: vec![],
        },
        Request::QueryValidPaths { paths: vec![] },
        Request::AddTextToStore {
            name: "last".into(),
            contents: b"last".to_vec(),
            references: vec![],
        },
    ];
    let mut bytes = Vec::new();
    for request in &requests {
        encode_request(request, client.minor(), &mut bytes);
    }
    client.send(&bytes);
    let mut names = Vec::new();
    for request in &requests {
        match client.response(request.op()) {
            Ok(Reply::AddTextToStore(path)) => {
                names.push(path.rsplit('-').next().unwrap().to_owned())
            }
            Ok(Reply::QueryValidPaths(paths)) => assert!(paths.is_empty()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(names, ["first", "big", "last"]);
    drop(client);
    t.stop();
}

#[test]
fn fifty_clients_at_once() {
    const CLIENTS: usize = 50;
    let t = Arc::new(TestServer::start("fifty"));
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let t = t.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut client = t.connect();
                // Everybody is connected and greeted before anybody asks.
                barrier.wait();
                let contents = format!("client {n}\n");
                let path = client.add_text(&format!("c{n}"), contents.as_bytes(), &[]);
                assert!(client.is_valid(&path));
                let info = client.path_info(&path).unwrap();
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
    let mut client = t.connect();
    for path in &paths {
        assert!(client.is_valid(path));
    }
    drop(client);
    Arc::into_inner(t).unwrap().stop();
}

#[test]
fn clients_disconnecting_mid_request_do_not_disturb_others() {
    let t = TestServer::start("disconnect");
    let mut steady = t.connect();

    // Half of an add-text-to-store request, then gone.
    let mut half = t.connect();
    let mut bytes = Vec::new();
    let request = Request::AddTextToStore {
        name: "half".into(),
        contents: vec![b'x'; 100_000],
        references: vec![],
    };
    encode_request(&request, half.minor(), &mut bytes);
    half.send(&bytes[..bytes.len() / 2]);
    drop(half);

    // An upload cut off in the middle of its NAR (after some chunks went
    // to the workers), then gone.
    let mut cut = t.connect();
    let nar = file_nar(false, &vec![7u8; 3 << 20]);
    let mut bytes = Vec::new();
    encode_request(&add_to_store_header("cut"), cut.minor(), &mut bytes);
    bytes.extend_from_slice(&nar[..nar.len() / 2]);
    cut.send(&bytes);
    drop(cut);

    // A client that hangs up after its magic, before the greeting is done.
    let mut early = UnixStream::connect(&t.socket).unwrap();
    let mut magic = Vec::new();
    write_client_magic(&mut magic);
    early.write_all(&magic).unwrap();
    drop(early);

    // A client that shuts down its sending side and reads until EOF.
    let mut quiet = t.connect();
    quiet.stream.shutdown_write();
    let mut rest = Vec::new();
    quiet.stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");

    // The steady client still gets answers, and so does a new one.
    let path = steady.add_text("steady", b"still here", &[]);
    assert!(steady.is_valid(&path));
    let mut fresh = t.connect();
    assert!(fresh.is_valid(&path));
    // Nothing of the cut upload became valid.
    let cut_path = fresh.add_to_store("cut", &nar).unwrap();
    assert!(fresh.is_valid(&cut_path));
    drop((steady, fresh));
    t.stop();
}

#[test]
fn a_protocol_error_ends_only_that_session() {
    let t = TestServer::start("garbage");
    let mut bad = t.connect();
    // Operation 9999 does not exist: the daemon says so and hangs up.
    bad.send(&[0x0f, 0x27, 0, 0, 0, 0, 0, 0]);
    let mut rest = Vec::new();
    bad.stream.read_to_end(&mut rest).unwrap();
    assert!(!rest.is_empty());
    let mut good = t.connect();
    let path = good.add_text("fine", b"fine", &[]);
    assert!(good.is_valid(&path));
    drop(good);
    t.stop();
}

#[test]
fn shutdown_with_clients_connected_returns_from_join() {
    let log = Arc::new(Mutex::new(String::new()));
    let sink: LogSink = {
        let log = log.clone();
        Arc::new(move |lines: &str| log.lock().unwrap().push_str(lines))
    };
    let t = TestServer::start_with("shutdown", Some(sink));
    let mut idle = t.connect();
    let mut busy = t.connect();
    let path = busy.add_text("before", b"before shutdown", &[]);
    // A request in the middle of being sent.
    let mut bytes = Vec::new();
    let request = Request::AddTextToStore {
        name: "unfinished".into(),
        contents: vec![b'y'; 50_000],
        references: vec![],
    };
    encode_request(&request, busy.minor(), &mut bytes);
    busy.send(&bytes[..1000]);

    // Shut down from another thread, twice (it is idempotent), and from
    // this one, then wait in join.
    let mut t = t;
    let server = t.server.take().unwrap();
    let handle = server.shutdown_handle();
    let asker = std::thread::spawn(move || {
        handle.shutdown();
        handle.shutdown();
    });
    server.shutdown();
    asker.join().unwrap();
    server.join().unwrap();

    // Both clients see the end of the stream.
    for client in [&mut idle, &mut busy] {
        let mut rest = Vec::new();
        let _ = client.stream.read_to_end(&mut rest);
    }
    // Nobody is accepted any more.
    assert!(UnixStream::connect(&t.socket).is_err());
    let log = log.lock().unwrap().clone();
    let pid = std::process::id();
    assert!(
        log.lines()
            .filter(|l| l.starts_with(&format!("accepted connection from pid {pid}, user ")))
            .count()
            >= 2,
        "{log}"
    );
    // What was added before the shutdown is still there for the next
    // server on the same store.
    let t = t.restart();
    let mut client = t.connect();
    assert!(client.is_valid(&path));
    drop(client);
    t.stop();
}

#[test]
fn tcp_clients_are_served() {
    let dir = scratch("tcp");
    let config = config(&dir);
    let os = open_os(&config);
    let listener = guixd_os::net::bind_tcp("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = Server::start_with(
        quiet_threads(None),
        config.clone(),
        os,
        vec![Listener::Tcp(listener)],
    )
    .unwrap();
    let stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut client = Client::greet(Box::new(stream));
    let path = client.add_text("over-tcp", b"remote", &[]);
    assert!(client.is_valid(&path));
    drop(client);
    server.shutdown();
    server.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn many_idle_connections_do_not_slow_down_an_active_one() {
    // A small version of the benchmark: idle clients that completed the
    // greeting, and one active client whose requests are all answered.
    const IDLE: usize = 300;
    let t = TestServer::start("idle");
    let idle: Vec<Client> = (0..IDLE).map(|_| t.connect()).collect();
    let mut active = t.connect();
    let path = active.add_text("active", b"active", &[]);
    for _ in 0..100 {
        assert!(active.is_valid(&path));
    }
    drop(idle);
    drop(active);
    t.stop();
}

#[test]
fn dropping_a_server_shuts_it_down() {
    let t = TestServer::start("drop");
    let mut client = t.connect();
    let path = client.add_text("x", b"x", &[]);
    assert!(client.is_valid(&path));
    let mut t = t;
    drop(t.server.take());
    let mut rest = Vec::new();
    let _ = client.stream.read_to_end(&mut rest);
}

// ---- the test server

struct TestServer {
    server: Option<Server>,
    dir: PathBuf,
    socket: PathBuf,
    store: StoreDir,
    sink: Option<LogSink>,
}

impl TestServer {
    fn start(tag: &str) -> TestServer {
        TestServer::start_with(tag, None)
    }

    fn start_with(tag: &str, sink: Option<LogSink>) -> TestServer {
        TestServer::start_in(scratch(tag), sink)
    }

    fn start_in(dir: PathBuf, sink: Option<LogSink>) -> TestServer {
        let config = config(&dir);
        let os = open_os(&config);
        let socket = dir.join("var/daemon-socket/socket");
        let listener = guixd_os::net::bind_unix(&socket).unwrap();
        let store = config.dirs.store.clone();
        let server = Server::start_with(
            quiet_threads(sink.clone()),
            config,
            os,
            vec![Listener::Unix(listener)],
        )
        .unwrap();
        TestServer {
            server: Some(server),
            dir,
            socket,
            store,
            sink,
        }
    }

    fn connect(&self) -> Client {
        let stream = UnixStream::connect(&self.socket).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        Client::greet(Box::new(stream))
    }

    /// Shuts the server down and starts a new one on the same store.
    fn restart(mut self) -> TestServer {
        if let Some(server) = self.server.take() {
            server.shutdown();
            server.join().unwrap();
        }
        let dir = std::mem::take(&mut self.dir);
        let sink = self.sink.take();
        TestServer::start_in(dir, sink)
    }

    fn stop(mut self) {
        let server = self.server.take().unwrap();
        server.shutdown();
        server.join().unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
            let _ = server.join();
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn quiet_threads(sink: Option<LogSink>) -> ThreadsConfig {
    ThreadsConfig {
        workers: 4,
        // Keep tests quiet unless they look at the log.
        log_sink: Some(sink.unwrap_or_else(|| Arc::new(|_: &str| {}))),
        ..ThreadsConfig::default()
    }
}

fn scratch(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("guixd-rt-threads-{}-{n}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(root: &Path) -> Config {
    let mut settings = Settings::default();
    settings.set("build-use-substitutes", "false");
    settings.update().unwrap();
    Config {
        dirs: Dirs {
            store: StoreDir::new(root.join("store").to_str().unwrap()).unwrap(),
            state: root.join("state"),
            log: root.join("log"),
            db: root.join("state/db"),
            conf: root.join("etc"),
            guix_program: PathBuf::from("/nonexistent/guix"),
        },
        daemon_uid: rustix::process::geteuid().as_raw(),
        settings,
        limits: Limits::default(),
        seed: 0,
        verbosity: 1,
    }
}

fn open_os(config: &Config) -> Arc<Os> {
    let os_config = OsConfig {
        dirs: config.dirs.clone(),
        settings: config.settings.typed().clone(),
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
    };
    Arc::new(Os::open(os_config).unwrap())
}

fn add_to_store_header(name: &str) -> Request {
    Request::AddToStore(AddToStoreHeader {
        name: name.into(),
        fixed: true,
        recursive: true,
        hash_algo: "sha256".into(),
    })
}

// ---- a blocking client

trait Stream: Read + Write + Send {
    /// Shuts down the sending side.
    fn shutdown_write(&self);
}

impl Stream for UnixStream {
    fn shutdown_write(&self) {
        self.shutdown(std::net::Shutdown::Write).unwrap();
    }
}

impl Stream for TcpStream {
    fn shutdown_write(&self) {
        self.shutdown(std::net::Shutdown::Write).unwrap();
    }
}

struct Client {
    stream: Box<dyn Stream>,
    /// Bytes received and not yet decoded.
    buf: Vec<u8>,
    daemon_minor: u8,
}

impl Client {
    /// Does the handshake as the Guix client does it.
    fn greet(stream: Box<dyn Stream>) -> Client {
        let mut client = Client {
            stream,
            buf: Vec::new(),
            daemon_minor: 0,
        };
        let mut bytes = Vec::new();
        write_client_magic(&mut bytes);
        client.send(&bytes);
        let mut hello = ServerHelloDecoder::new();
        let version = client.decode(|input| hello.feed(input).map(|f| (f.consumed, f.item)));
        client.daemon_minor = protocol_minor(version);
        bytes.clear();
        encode_client_hello(&ClientHello::default(), client.daemon_minor, &mut bytes);
        client.send(&bytes);
        // The greeting ends as a set-options answer does: LAST, nothing more.
        assert_eq!(client.response(Op::SetOptions), Ok(Reply::SetOptions));
        client
    }

    fn minor(&self) -> u8 {
        ClientHello::default().minor()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn request(&mut self, request: &Request) -> Result<Reply, (String, u32)> {
        let mut bytes = Vec::new();
        encode_request(request, self.minor(), &mut bytes);
        self.send(&bytes);
        self.response(request.op())
    }

    fn add_text(&mut self, name: &str, contents: &[u8], references: &[String]) -> String {
        let request = Request::AddTextToStore {
            name: name.into(),
            contents: contents.to_vec(),
            references: references.to_vec(),
        };
        match self.request(&request) {
            Ok(Reply::AddTextToStore(path)) => path,
            other => panic!("add-text-to-store: {other:?}"),
        }
    }

    fn add_to_store(&mut self, name: &str, nar: &[u8]) -> Result<String, (String, u32)> {
        let mut bytes = Vec::new();
        encode_request(&add_to_store_header(name), self.minor(), &mut bytes);
        self.send(&bytes);
        self.send(nar);
        match self.response(Op::AddToStore)? {
            Reply::AddToStore(path) => Ok(path),
            other => panic!("add-to-store: {other:?}"),
        }
    }

    fn is_valid(&mut self, path: &str) -> bool {
        let request = Request::IsValidPath { path: path.into() };
        match self.request(&request) {
            Ok(Reply::IsValidPath(valid)) => valid,
            other => panic!("is-valid-path: {other:?}"),
        }
    }

    fn path_info(&mut self, path: &str) -> Result<PathInfo, (String, u32)> {
        let request = Request::QueryPathInfo { path: path.into() };
        match self.request(&request)? {
            Reply::QueryPathInfo(info) => Ok(info),
            other => panic!("query-path-info: {other:?}"),
        }
    }

    /// Reads one whole response: log frames are skipped, `ERROR` is an
    /// error, `LAST` is followed by the reply.
    fn response(&mut self, op: Op) -> Result<Reply, (String, u32)> {
        let mut decoder = ResponseDecoder::new(op, self.daemon_minor, WireLimits::default());
        loop {
            let response = self.decode(|input| decoder.feed(input).map(|f| (f.consumed, f.item)));
            match response {
                Response::Reply(reply) => return Ok(reply),
                Response::Frame(StderrFrame::Error { message, status }) => {
                    return Err((message, status));
                }
                Response::Frame(StderrFrame::Next(_) | StderrFrame::Last) => {}
                Response::Frame(other) => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Feeds buffered bytes to `parse` (at least once, even with none),
    /// reading more from the socket while it needs more.
    fn decode<T, E: std::fmt::Debug>(
        &mut self,
        mut parse: impl FnMut(&[u8]) -> Result<(usize, Option<T>), E>,
    ) -> T {
        loop {
            let (used, item) = parse(&self.buf).unwrap();
            self.buf.drain(..used);
            if let Some(item) = item {
                return item;
            }
            if used == 0 {
                let mut chunk = [0u8; 64 << 10];
                let n = self.stream.read(&mut chunk).unwrap();
                assert!(n > 0, "the daemon closed the connection");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

//! A scripted client of the worker protocol, speaking as the Guix 1.5.0
//! client does, for tests and for the benchmark's load client.
//!
//! Two layers:
//! - [`Exchange`] is sans-IO: it decodes one response (stderr frames, then
//!   the reply) from whatever bytes it is fed, collects `STDERR_NEXT` log
//!   text and `STDERR_WRITE` data, and answers `STDERR_READ` frames from a
//!   byte source. The simulator drives it over in-memory pipes.
//! - [`Client`] drives exchanges over any blocking `Read + Write` stream
//!   (a `UnixStream`, a `TcpStream`), one method per operation.
//!
//! Keeps true:
//! - the bytes sent are the Guix 1.5.0 client's: its hello (no CPU
//!   affinity, reserve-space 1), then each request as `(guix store)` writes
//!   it for the daemon's minor version;
//! - a request goes out in one `write` (add-to-store's header and a small
//!   NAR included), and replies are read through one reusable buffer;
//! - an `ERROR` frame is [`ClientError::Daemon`] and leaves the connection
//!   usable (the daemon may still close it); anything else that goes wrong
//!   is an I/O or protocol error after which the connection is undefined;
//! - nothing here panics on what the daemon sends.

use guixd_core::wire::{
    self, AddToStoreHeader, ClientHello, ClientOptions, GcRequest, GcResult, Op, PathInfo, Reply,
    Request, Response, ResponseDecoder, ServerHelloDecoder, StderrFrame, SubstitutableInfo,
    WireError, WireLimits,
};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// An operation's failure as the daemon reported it (an `ERROR` frame).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonError {
    pub message: String,
    /// 1 generically; 100 or 101 for build failures.
    pub status: u32,
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon answered with an `ERROR` frame.
    #[error("{message} (status {status})")]
    Daemon { message: String, status: u32 },
    /// Reading from or writing to the daemon failed.
    #[error("i/o error talking to the daemon: {0}")]
    Io(#[from] io::Error),
    /// The daemon's bytes broke the protocol, or it closed the connection
    /// in the middle of a response ([`WireError::UnexpectedEof`]).
    #[error("protocol error: {0}")]
    Protocol(#[from] WireError),
    /// A reply of another operation; the decoder makes this impossible
    /// unless it has a bug.
    #[error("unexpected reply {0:?}")]
    UnexpectedReply(Box<Reply>),
    /// An operation before the handshake.
    #[error("the client has not shaken hands with the daemon yet")]
    NoHandshake,
}

impl ClientError {
    /// The daemon's message, when the daemon reported the error.
    pub fn daemon_message(&self) -> Option<&str> {
        match self {
            ClientError::Daemon { message, .. } => Some(message),
            _ => None,
        }
    }
}

impl From<DaemonError> for ClientError {
    fn from(e: DaemonError) -> ClientError {
        ClientError::Daemon {
            message: e.message,
            status: e.status,
        }
    }
}

/// The options `(guix store)`'s `set-build-options` sends when called with
/// its defaults by a client that has no user name, terminal or locale to
/// report (what a script run under a test harness sends).
pub fn guix_default_options() -> ClientOptions {
    ClientOptions {
        keep_failed: false,
        keep_going: false,
        try_fallback: false,
        verbosity: 0,
        max_build_jobs: None,
        max_silent_time: None,
        use_build_hook: Some(true),
        build_verbosity: Some(0),
        log_type: Some(0),
        print_build_trace: Some(true),
        build_cores: None,
        use_substitutes: Some(true),
        overrides: vec![("print-extended-build-trace".into(), "0".into())],
    }
}

/// An export bundle, as `guix archive --export` writes one and
/// import-paths reads it: each item's export stream (what
/// [`Client::export_path`] returns) announced by the `long long` 1, then
/// the `long long` 0.
pub fn export_bundle<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut bundle = Vec::new();
    for item in items {
        guixd_core::export::write_export_marker(&mut bundle, true);
        bundle.extend_from_slice(item);
    }
    guixd_core::export::write_export_marker(&mut bundle, false);
    bundle
}

/// The outcome of a complete exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// The reply, or the daemon's error.
    pub result: Result<Reply, DaemonError>,
    /// Text of the `STDERR_NEXT` frames, one entry per frame.
    pub log: Vec<Vec<u8>>,
    /// Bytes of the `STDERR_WRITE` frames, concatenated (an export).
    pub written: Vec<u8>,
}

/// One response being decoded, sans I/O.
///
/// Feed it the daemon's bytes as they come with [`Exchange::feed`]; it
/// consumes them up to the end of the response and appends the answers
/// to `STDERR_READ` frames to `out`, taken from the front of `source`.
/// It yields [`Finished`] exactly once.
#[derive(Clone, Debug)]
pub struct Exchange {
    decoder: ResponseDecoder,
    log: Vec<Vec<u8>>,
    written: Vec<u8>,
    done: bool,
}

impl Exchange {
    /// An exchange for the response to `op` from a daemon of minor
    /// `daemon_minor`.
    pub fn new(op: Op, daemon_minor: u8, limits: WireLimits) -> Exchange {
        Exchange {
            decoder: ResponseDecoder::new(op, daemon_minor, limits),
            log: Vec::new(),
            written: Vec::new(),
            done: false,
        }
    }

    /// The exchange that follows the client's hello: frames up to `LAST`
    /// and nothing after it, as for set-options.
    pub fn after_hello(daemon_minor: u8, limits: WireLimits) -> Exchange {
        Exchange::new(Op::SetOptions, daemon_minor, limits)
    }

    /// Consumes bytes of `input` up to the end of the response. `consumed`
    /// says how many; `item` is the outcome once the response is complete.
    /// Answers to `STDERR_READ` are appended to `out`, and the bytes they
    /// carry are taken off the front of `source` (empty: end of file).
    pub fn feed(
        &mut self,
        input: &[u8],
        source: &mut &[u8],
        out: &mut Vec<u8>,
    ) -> Result<wire::Feed<Finished>, WireError> {
        let mut used = 0;
        while !self.done {
            // A reply without fields comes out of a feed of nothing, so
            // the loop goes on after every item even with no input left.
            let f = self.decoder.feed(&input[used..])?;
            used += f.consumed;
            match f.item {
                None => break,
                Some(response) => {
                    if let Some(finished) = self.take(response, source, out) {
                        return Ok(wire::Feed {
                            consumed: used,
                            item: Some(finished),
                        });
                    }
                }
            }
        }
        Ok(wire::Feed {
            consumed: used,
            item: None,
        })
    }

    /// The daemon closed the connection: the outcome, if the response can
    /// end there (an error frame whose status never came).
    pub fn feed_eof(&mut self) -> Result<Finished, WireError> {
        if self.done {
            return Err(WireError::UnexpectedEof);
        }
        match self.decoder.feed_eof()? {
            Some(response) => {
                let mut nothing: &[u8] = &[];
                self.take(response, &mut nothing, &mut Vec::new())
                    .ok_or(WireError::UnexpectedEof)
            }
            None => Err(WireError::UnexpectedEof),
        }
    }

    /// True once the outcome was yielded.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn take(
        &mut self,
        response: Response,
        source: &mut &[u8],
        out: &mut Vec<u8>,
    ) -> Option<Finished> {
        let result = match response {
            Response::Frame(StderrFrame::Next(text)) => {
                self.log.push(text);
                return None;
            }
            Response::Frame(StderrFrame::Write(data)) => {
                self.written.extend_from_slice(&data);
                return None;
            }
            Response::Frame(StderrFrame::Read(max_len)) => {
                let n = source.len().min(max_len as usize);
                let (now, rest) = source.split_at(n);
                wire::write_bytes(out, now);
                *source = rest;
                return None;
            }
            Response::Frame(StderrFrame::Last) => return None,
            Response::Frame(StderrFrame::Error { message, status }) => {
                Err(DaemonError { message, status })
            }
            Response::Reply(reply) => Ok(reply),
        };
        self.done = true;
        Some(Finished {
            result,
            log: std::mem::take(&mut self.log),
            written: std::mem::take(&mut self.written),
        })
    }
}

/// Bytes read from the daemon at once.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// A NAR up to this size is copied behind add-to-store's header so that
/// both go out in one write; larger ones are written after it.
const COALESCE_MAX_BYTES: usize = 64 * 1024;

/// A blocking client over `S`.
#[derive(Debug)]
pub struct Client<S> {
    stream: S,
    /// Bytes of the next request, written at once.
    out: Vec<u8>,
    /// Bytes read from the daemon; `buf[start..end]` are not consumed yet.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    hello: ClientHello,
    daemon_version: Option<u32>,
    limits: WireLimits,
    log: Vec<Vec<u8>>,
}

impl Client<UnixStream> {
    /// Connects to the daemon's Unix socket (no handshake yet).
    pub fn connect_unix(path: impl AsRef<Path>) -> io::Result<Client<UnixStream>> {
        UnixStream::connect(path).map(Client::new)
    }
}

impl Client<TcpStream> {
    /// Connects to a daemon listening on TCP (no handshake yet).
    pub fn connect_tcp(address: impl ToSocketAddrs) -> io::Result<Client<TcpStream>> {
        let stream = TcpStream::connect(address)?;
        // Requests are written whole; waiting to coalesce them only adds
        // latency.
        stream.set_nodelay(true)?;
        Ok(Client::new(stream))
    }
}

impl<S: Read + Write> Client<S> {
    /// A client over an open stream (no handshake yet).
    pub fn new(stream: S) -> Client<S> {
        Client {
            stream,
            out: Vec::with_capacity(4096),
            buf: vec![0; READ_BUFFER_BYTES],
            start: 0,
            end: 0,
            hello: ClientHello::default(),
            daemon_version: None,
            limits: WireLimits::default(),
            log: Vec::new(),
        }
    }

    /// Uses `hello` instead of Guix 1.5.0's in the handshake.
    pub fn with_hello(mut self, hello: ClientHello) -> Client<S> {
        self.hello = hello;
        self
    }

    /// Decodes replies with `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: WireLimits) -> Client<S> {
        self.limits = limits;
        self
    }

    /// Greets the daemon as `(guix store)`'s `open-connection` does and
    /// reads what it sends up to `LAST`. Returns the daemon's version.
    pub fn handshake(&mut self) -> Result<u32, ClientError> {
        self.out.clear();
        wire::write_client_magic(&mut self.out);
        self.flush()?;
        let mut decoder = ServerHelloDecoder::new();
        let version = loop {
            let f = decoder.feed(&self.buf[self.start..self.end])?;
            self.start += f.consumed;
            if let Some(version) = f.item {
                break version;
            }
            if self.fill()? == 0 {
                return Err(WireError::UnexpectedEof.into());
            }
        };
        let minor = wire::protocol_minor(version);
        wire::encode_client_hello(&self.hello, minor, &mut self.out);
        self.flush()?;
        self.daemon_version = Some(version);
        let exchange = Exchange::after_hello(minor, self.limits.clone());
        self.finish(exchange, &[])?;
        Ok(version)
    }

    /// The daemon's protocol version, once shaken hands.
    pub fn daemon_version(&self) -> Option<u32> {
        self.daemon_version
    }

    /// Text of every `STDERR_NEXT` frame received so far, one entry per
    /// frame.
    pub fn log(&self) -> &[Vec<u8>] {
        &self.log
    }

    /// Takes the log collected so far.
    pub fn take_log(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.log)
    }

    /// The stream, e.g. to shut down one direction.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// The stream, mutably.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Sends any request and returns its reply. For add-to-store, use
    /// [`Client::add_to_store`] (the NAR must follow the header).
    pub fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        Ok(self.call_full(request, &[], &[])?.0)
    }

    /// Sends `request` followed by the raw bytes `trailing` (add-to-store's
    /// NAR) and returns the reply and the `STDERR_WRITE` data; `STDERR_READ`
    /// frames are answered from `source`.
    pub fn call_full(
        &mut self,
        request: &Request,
        trailing: &[u8],
        source: &[u8],
    ) -> Result<(Reply, Vec<u8>), ClientError> {
        let minor = self.minor()?;
        self.out.clear();
        wire::encode_request(request, minor, &mut self.out);
        if trailing.len() <= COALESCE_MAX_BYTES {
            self.out.extend_from_slice(trailing);
            self.flush()?;
        } else {
            self.flush()?;
            self.stream.write_all(trailing)?;
        }
        let exchange = Exchange::new(request.op(), minor, self.limits.clone());
        self.finish(exchange, source)
    }

    /// Writes `bytes` to the daemon as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads what the daemon sent: buffered bytes first, else one read
    /// from the stream. 0 means end of file.
    pub fn read_raw(&mut self, into: &mut [u8]) -> io::Result<usize> {
        if self.start < self.end {
            let n = into.len().min(self.end - self.start);
            into[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
            return Ok(n);
        }
        self.stream.read(into)
    }

    /// Reads everything the daemon sends until it closes the connection.
    pub fn read_to_end_raw(&mut self) -> io::Result<Vec<u8>> {
        let mut all = self.buf[self.start..self.end].to_vec();
        self.start = self.end;
        self.stream.read_to_end(&mut all)?;
        Ok(all)
    }

    /// Reads the response to an `op` whose request went out raw.
    pub fn read_response(&mut self, op: Op) -> Result<Reply, ClientError> {
        let minor = self.minor()?;
        let exchange = Exchange::new(op, minor, self.limits.clone());
        Ok(self.finish(exchange, &[])?.0)
    }

    // ---- one method per operation

    pub fn set_options(&mut self, options: &ClientOptions) -> Result<(), ClientError> {
        match self.call(&Request::SetOptions(options.clone()))? {
            Reply::SetOptions => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub fn is_valid_path(&mut self, path: &str) -> Result<bool, ClientError> {
        match self.call(&Request::IsValidPath { path: path.into() })? {
            Reply::IsValidPath(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    pub fn query_valid_paths<T: AsRef<str>>(
        &mut self,
        paths: &[T],
    ) -> Result<Vec<String>, ClientError> {
        let paths = strings(paths);
        match self.call(&Request::QueryValidPaths { paths })? {
            Reply::QueryValidPaths(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub fn has_substitutes(&mut self, path: &str) -> Result<bool, ClientError> {
        match self.call(&Request::HasSubstitutes { path: path.into() })? {
            Reply::HasSubstitutes(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    pub fn query_substitutable_paths<T: AsRef<str>>(
        &mut self,
        paths: &[T],
    ) -> Result<Vec<String>, ClientError> {
        let paths = strings(paths);
        match self.call(&Request::QuerySubstitutablePaths { paths })? {
            Reply::QuerySubstitutablePaths(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// The lowercase hex SHA-256 of the path's NAR.
    pub fn query_path_hash(&mut self, path: &str) -> Result<String, ClientError> {
        match self.call(&Request::QueryPathHash { path: path.into() })? {
            Reply::QueryPathHash(h) => Ok(h),
            other => Err(unexpected(other)),
        }
    }

    pub fn query_references(&mut self, path: &str) -> Result<Vec<String>, ClientError> {
        match self.call(&Request::QueryReferences { path: path.into() })? {
            Reply::QueryReferences(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub fn query_referrers(&mut self, path: &str) -> Result<Vec<String>, ClientError> {
        match self.call(&Request::QueryReferrers { path: path.into() })? {
            Reply::QueryReferrers(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Adds the NAR `nar` as `(guix store)`'s `add-to-store` does (the
    /// obsolete `fixed` flag set); `algo` is e.g. `"sha256"`.
    pub fn add_to_store(
        &mut self,
        name: &str,
        recursive: bool,
        algo: &str,
        nar: &[u8],
    ) -> Result<String, ClientError> {
        let request = Request::AddToStore(AddToStoreHeader {
            name: name.into(),
            fixed: true,
            recursive,
            hash_algo: algo.into(),
        });
        match self.call_full(&request, nar, &[])?.0 {
            Reply::AddToStore(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    pub fn add_text_to_store<T: AsRef<str>>(
        &mut self,
        name: &str,
        contents: &[u8],
        references: &[T],
    ) -> Result<String, ClientError> {
        let request = Request::AddTextToStore {
            name: name.into(),
            contents: contents.to_vec(),
            references: strings(references),
        };
        match self.call(&request)? {
            Reply::AddTextToStore(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// `mode`: 0 normal, 1 repair, 2 check.
    pub fn build_paths<T: AsRef<str>>(
        &mut self,
        things: &[T],
        mode: u32,
    ) -> Result<(), ClientError> {
        let things = strings(things);
        match self.call(&Request::BuildPaths { things, mode })? {
            Reply::BuildPaths => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub fn ensure_path(&mut self, path: &str) -> Result<(), ClientError> {
        match self.call(&Request::EnsurePath { path: path.into() })? {
            Reply::EnsurePath => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub fn add_temp_root(&mut self, path: &str) -> Result<(), ClientError> {
        match self.call(&Request::AddTempRoot { path: path.into() })? {
            Reply::AddTempRoot => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub fn add_indirect_root(&mut self, file: &str) -> Result<(), ClientError> {
        match self.call(&Request::AddIndirectRoot { file: file.into() })? {
            Reply::AddIndirectRoot => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub fn sync_with_gc(&mut self) -> Result<(), ClientError> {
        match self.call(&Request::SyncWithGc)? {
            Reply::SyncWithGc => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// `(link, target)` pairs.
    pub fn find_roots(&mut self) -> Result<Vec<(String, String)>, ClientError> {
        match self.call(&Request::FindRoots)? {
            Reply::FindRoots(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// The export stream of one item (its NAR and trailer, without the
    /// bundle markers), as the daemon sent it in `STDERR_WRITE` frames.
    pub fn export_path(&mut self, path: &str, sign: bool) -> Result<Vec<u8>, ClientError> {
        let request = Request::ExportPath {
            path: path.into(),
            sign,
        };
        match self.call_full(&request, &[], &[])? {
            (Reply::ExportPath, data) => Ok(data),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// `None` when the path has no deriver.
    pub fn query_deriver(&mut self, path: &str) -> Result<Option<String>, ClientError> {
        match self.call(&Request::QueryDeriver { path: path.into() })? {
            Reply::QueryDeriver(d) => Ok(non_empty(d)),
            other => Err(unexpected(other)),
        }
    }

    pub fn collect_garbage(&mut self, request: &GcRequest) -> Result<GcResult, ClientError> {
        match self.call(&Request::CollectGarbage(request.clone()))? {
            Reply::CollectGarbage(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub fn query_substitutable_path_info(
        &mut self,
        path: &str,
    ) -> Result<Option<SubstitutableInfo>, ClientError> {
        match self.call(&Request::QuerySubstitutablePathInfo { path: path.into() })? {
            Reply::QuerySubstitutablePathInfo(i) => Ok(i),
            other => Err(unexpected(other)),
        }
    }

    pub fn query_derivation_outputs(&mut self, path: &str) -> Result<Vec<String>, ClientError> {
        match self.call(&Request::QueryDerivationOutputs { path: path.into() })? {
            Reply::QueryDerivationOutputs(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub fn query_all_valid_paths(&mut self) -> Result<Vec<String>, ClientError> {
        match self.call(&Request::QueryAllValidPaths)? {
            Reply::QueryAllValidPaths(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub fn query_failed_paths(&mut self) -> Result<Vec<String>, ClientError> {
        match self.call(&Request::QueryFailedPaths)? {
            Reply::QueryFailedPaths(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub fn clear_failed_paths<T: AsRef<str>>(&mut self, paths: &[T]) -> Result<(), ClientError> {
        let paths = strings(paths);
        match self.call(&Request::ClearFailedPaths { paths })? {
            Reply::ClearFailedPaths => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub fn query_path_info(&mut self, path: &str) -> Result<PathInfo, ClientError> {
        match self.call(&Request::QueryPathInfo { path: path.into() })? {
            Reply::QueryPathInfo(i) => Ok(i),
            other => Err(unexpected(other)),
        }
    }

    /// Imports an export bundle (items each announced by the `long long`
    /// 1, ended by 0), answering the daemon's `STDERR_READ` requests from
    /// `bundle`. Returns the imported paths in stream order.
    pub fn import_paths(&mut self, bundle: &[u8]) -> Result<Vec<String>, ClientError> {
        match self.call_full(&Request::ImportPaths, &[], bundle)?.0 {
            Reply::ImportPaths(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub fn query_derivation_output_names(
        &mut self,
        path: &str,
    ) -> Result<Vec<String>, ClientError> {
        match self.call(&Request::QueryDerivationOutputNames { path: path.into() })? {
            Reply::QueryDerivationOutputNames(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// `None` when no valid path has that hash part.
    pub fn query_path_from_hash_part(
        &mut self,
        hash_part: &str,
    ) -> Result<Option<String>, ClientError> {
        let request = Request::QueryPathFromHashPart {
            hash_part: hash_part.into(),
        };
        match self.call(&request)? {
            Reply::QueryPathFromHashPart(p) => Ok(non_empty(p)),
            other => Err(unexpected(other)),
        }
    }

    pub fn query_substitutable_path_infos<T: AsRef<str>>(
        &mut self,
        paths: &[T],
    ) -> Result<Vec<(String, SubstitutableInfo)>, ClientError> {
        let paths = strings(paths);
        match self.call(&Request::QuerySubstitutablePathInfos { paths })? {
            Reply::QuerySubstitutablePathInfos(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub fn query_valid_derivers(&mut self, path: &str) -> Result<Vec<String>, ClientError> {
        match self.call(&Request::QueryValidDerivers { path: path.into() })? {
            Reply::QueryValidDerivers(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub fn optimise_store(&mut self) -> Result<(), ClientError> {
        match self.call(&Request::OptimiseStore)? {
            Reply::OptimiseStore => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// True when errors remain.
    pub fn verify_store(
        &mut self,
        check_contents: bool,
        repair: bool,
    ) -> Result<bool, ClientError> {
        let request = Request::VerifyStore {
            check_contents,
            repair,
        };
        match self.call(&request)? {
            Reply::VerifyStore(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    pub fn builtin_builders(&mut self) -> Result<Vec<String>, ClientError> {
        match self.call(&Request::BuiltinBuilders)? {
            Reply::BuiltinBuilders(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub fn substitute_urls(&mut self) -> Result<Vec<String>, ClientError> {
        match self.call(&Request::SubstituteUrls)? {
            Reply::SubstituteUrls(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    // ---- internals

    fn minor(&self) -> Result<u8, ClientError> {
        // Like `(guix store)`, fields are written for the daemon's minor.
        self.daemon_version
            .map(wire::protocol_minor)
            .ok_or(ClientError::NoHandshake)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads more of the daemon's bytes into the buffer; 0 at end of file.
    fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `exchange` to its end; answers `STDERR_READ` from `source`.
    fn finish(
        &mut self,
        mut exchange: Exchange,
        source: &[u8],
    ) -> Result<(Reply, Vec<u8>), ClientError> {
        let mut source = source;
        let finished = loop {
            let f = exchange.feed(&self.buf[self.start..self.end], &mut source, &mut self.out)?;
            self.start += f.consumed;
            self.flush()?;
            if let Some(finished) = f.item {
                break finished;
            }
            if self.fill()? == 0 {
                break exchange.feed_eof()?;
            }
        };
        self.log.extend(finished.log);
        match finished.result {
            Ok(reply) => Ok((reply, finished.written)),
            Err(e) => Err(e.into()),
        }
    }
}

fn strings<T: AsRef<str>>(items: &[T]) -> Vec<String> {
    items.iter().map(|s| s.as_ref().to_owned()).collect()
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn unexpected(reply: Reply) -> ClientError {
    ClientError::UnexpectedReply(Box::new(reply))
}

#[cfg(test)]
mod tests {
    use super::*;
    use guixd_core::wire::{
        PROTOCOL_VERSION, encode_reply, encode_server_hello, write_stderr_error, write_stderr_last,
        write_stderr_next, write_stderr_read, write_stderr_write,
    };
    use std::io::Cursor;
    use std::sync::mpsc;
    use std::thread;

    const MINOR: u8 = PROTOCOL_VERSION as u8;

    /// What a fake daemon does: reads exactly `expect` bytes from the
    /// client (checking them when given), then writes `send`.
    enum Step {
        Expect(Vec<u8>),
        ExpectLen(usize, mpsc::Sender<Vec<u8>>),
        Send(Vec<u8>),
    }

    /// A thread that replays `steps` on one end of a socket pair and
    /// closes it; the client gets the other end.
    fn fake_daemon(steps: Vec<Step>) -> (Client<UnixStream>, thread::JoinHandle<()>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let handle = thread::spawn(move || {
            let mut s = theirs;
            for step in steps {
                match step {
                    Step::Expect(want) => {
                        let mut got = vec![0; want.len()];
                        s.read_exact(&mut got).unwrap();
                        assert_eq!(got, want, "the client sent other bytes");
                    }
                    Step::ExpectLen(n, tx) => {
                        let mut got = vec![0; n];
                        s.read_exact(&mut got).unwrap();
                        tx.send(got).unwrap();
                    }
                    Step::Send(bytes) => s.write_all(&bytes).unwrap(),
                }
            }
        });
        (Client::new(ours), handle)
    }

    fn hello_steps() -> Vec<Step> {
        let mut magic = Vec::new();
        wire::write_client_magic(&mut magic);
        let mut server = Vec::new();
        encode_server_hello(&mut server);
        let mut client = Vec::new();
        wire::encode_client_hello(&ClientHello::default(), MINOR, &mut client);
        let mut opened = Vec::new();
        write_stderr_next(&mut opened, b"welcome\n");
        write_stderr_last(&mut opened);
        vec![
            Step::Expect(magic),
            Step::Send(server),
            Step::Expect(client),
            Step::Send(opened),
        ]
    }

    fn request_bytes(r: &Request) -> Vec<u8> {
        let mut out = Vec::new();
        wire::encode_request(r, MINOR, &mut out);
        out
    }

    fn reply_bytes(r: &Reply) -> Vec<u8> {
        let mut out = Vec::new();
        write_stderr_last(&mut out);
        encode_reply(r, MINOR, &mut out);
        out
    }

    #[test]
    fn the_handshake_is_guix_1_5_0s_and_collects_the_log() {
        let (mut client, daemon) = fake_daemon(hello_steps());
        assert_eq!(client.handshake().unwrap(), PROTOCOL_VERSION);
        assert_eq!(client.log(), &[b"welcome\n".to_vec()]);
        assert_eq!(client.daemon_version(), Some(PROTOCOL_VERSION));
        daemon.join().unwrap();
    }

    #[test]
    fn operations_before_the_handshake_are_refused() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let mut client = Client::new(ours);
        assert!(matches!(
            client.is_valid_path("/gnu/store/x"),
            Err(ClientError::NoHandshake)
        ));
    }

    #[test]
    fn a_query_and_its_reply() {
        let path = "/gnu/store/00000000000000000000000000000000-a";
        let mut steps = hello_steps();
        steps.push(Step::Expect(request_bytes(&Request::IsValidPath {
            path: path.into(),
        })));
        steps.push(Step::Send(reply_bytes(&Reply::IsValidPath(true))));
        steps.push(Step::Expect(request_bytes(&Request::QueryPathInfo {
            path: path.into(),
        })));
        let info = PathInfo {
            deriver: String::new(),
            hash: "ab".repeat(32),
            references: vec![path.into()],
            registration_time: 7,
            nar_size: 120,
        };
        steps.push(Step::Send(reply_bytes(&Reply::QueryPathInfo(info.clone()))));
        let (mut client, daemon) = fake_daemon(steps);
        client.handshake().unwrap();
        assert!(client.is_valid_path(path).unwrap());
        assert_eq!(client.query_path_info(path).unwrap(), info);
        daemon.join().unwrap();
    }

    #[test]
    fn an_error_frame_is_a_daemon_error_and_the_connection_goes_on() {
        let mut steps = hello_steps();
        steps.push(Step::Expect(request_bytes(&Request::QueryPathHash {
            path: "/gnu/store/x".into(),
        })));
        let mut err = Vec::new();
        write_stderr_next(&mut err, b"hmm\n");
        write_stderr_error(&mut err, "path `/gnu/store/x' is not valid", 1, MINOR);
        steps.push(Step::Send(err));
        steps.push(Step::Expect(request_bytes(&Request::SyncWithGc)));
        steps.push(Step::Send(reply_bytes(&Reply::SyncWithGc)));
        let (mut client, daemon) = fake_daemon(steps);
        client.handshake().unwrap();
        let e = client.query_path_hash("/gnu/store/x").unwrap_err();
        assert_eq!(e.daemon_message(), Some("path `/gnu/store/x' is not valid"));
        assert!(matches!(e, ClientError::Daemon { status: 1, .. }));
        assert_eq!(client.log().last().unwrap(), b"hmm\n");
        client.sync_with_gc().unwrap();
        daemon.join().unwrap();
    }

    #[test]
    fn set_options_has_nothing_after_last() {
        let options = guix_default_options();
        let mut steps = hello_steps();
        steps.push(Step::Expect(request_bytes(&Request::SetOptions(
            options.clone(),
        ))));
        let mut last = Vec::new();
        write_stderr_last(&mut last);
        steps.push(Step::Send(last));
        let (mut client, daemon) = fake_daemon(steps);
        client.handshake().unwrap();
        client.set_options(&options).unwrap();
        daemon.join().unwrap();
    }

    #[test]
    fn add_to_store_sends_header_then_nar_in_one_request() {
        let nar = guixd_core::nar::file_nar(false, b"hello");
        let header = Request::AddToStore(AddToStoreHeader {
            name: "hello".into(),
            fixed: true,
            recursive: true,
            hash_algo: "sha256".into(),
        });
        let mut want = request_bytes(&header);
        want.extend_from_slice(&nar);
        let mut steps = hello_steps();
        steps.push(Step::Expect(want));
        steps.push(Step::Send(reply_bytes(&Reply::AddToStore(
            "/gnu/store/p-hello".into(),
        ))));
        let (mut client, daemon) = fake_daemon(steps);
        client.handshake().unwrap();
        let p = client.add_to_store("hello", true, "sha256", &nar).unwrap();
        assert_eq!(p, "/gnu/store/p-hello");
        daemon.join().unwrap();
    }

    #[test]
    fn a_large_nar_goes_out_after_the_header() {
        let nar = guixd_core::nar::file_nar(true, &vec![7; 3 * COALESCE_MAX_BYTES]);
        let header = Request::AddToStore(AddToStoreHeader {
            name: "big".into(),
            fixed: true,
            recursive: false,
            hash_algo: "sha1".into(),
        });
        let mut want = request_bytes(&header);
        want.extend_from_slice(&nar);
        let mut steps = hello_steps();
        steps.push(Step::Expect(want));
        steps.push(Step::Send(reply_bytes(&Reply::AddToStore(
            "/gnu/store/p-big".into(),
        ))));
        let (mut client, daemon) = fake_daemon(steps);
        client.handshake().unwrap();
        assert_eq!(
            client.add_to_store("big", false, "sha1", &nar).unwrap(),
            "/gnu/store/p-big"
        );
        daemon.join().unwrap();
    }

    #[test]
    fn export_collects_write_frames() {
        let mut steps = hello_steps();
        steps.push(Step::Expect(request_bytes(&Request::ExportPath {
            path: "/gnu/store/x".into(),
            sign: true,
        })));
        let mut frames = Vec::new();
        write_stderr_write(&mut frames, b"first ");
        write_stderr_next(&mut frames, b"exporting\n");
        write_stderr_write(&mut frames, b"second");
        frames.extend(reply_bytes(&Reply::ExportPath));
        steps.push(Step::Send(frames));
        let (mut client, daemon) = fake_daemon(steps);
        client.handshake().unwrap();
        assert_eq!(
            client.export_path("/gnu/store/x", true).unwrap(),
            b"first second"
        );
        assert_eq!(client.log().last().unwrap(), b"exporting\n");
        daemon.join().unwrap();
    }

    #[test]
    fn import_answers_read_frames_from_the_bundle_then_eof() {
        let bundle: Vec<u8> = (0..100u8).collect();
        let mut steps = hello_steps();
        steps.push(Step::Expect(request_bytes(&Request::ImportPaths)));
        let mut answers = Vec::new();
        for (max, take) in [(60u32, 60usize), (60, 40), (60, 0)] {
            let mut read = Vec::new();
            write_stderr_read(&mut read, max);
            steps.push(Step::Send(read));
            let (tx, rx) = mpsc::channel();
            // An answer is a string: length, bytes, padding.
            let len = 8 + take + wire::padding_len(take);
            steps.push(Step::ExpectLen(len, tx));
            answers.push((take, rx));
        }
        steps.push(Step::Send(reply_bytes(&Reply::ImportPaths(vec![
            "/gnu/store/x".into(),
        ]))));
        let (mut client, daemon) = fake_daemon(steps);
        client.handshake().unwrap();
        assert_eq!(
            client.import_paths(&bundle).unwrap(),
            vec!["/gnu/store/x".to_string()]
        );
        daemon.join().unwrap();
        let mut pos = 0;
        for (take, rx) in answers {
            let got = rx.recv().unwrap();
            let mut want = Vec::new();
            wire::write_bytes(&mut want, &bundle[pos..pos + take]);
            assert_eq!(got, want);
            pos += take;
        }
    }

    #[test]
    fn eof_mid_response_is_a_protocol_error_and_after_an_error_message_is_status_1() {
        let mut steps = hello_steps();
        steps.push(Step::Expect(request_bytes(&Request::QueryAllValidPaths)));
        let mut partial = Vec::new();
        write_stderr_last(&mut partial);
        partial.extend_from_slice(&[3, 0, 0]);
        steps.push(Step::Send(partial));
        let (mut client, daemon) = fake_daemon(steps);
        client.handshake().unwrap();
        assert!(matches!(
            client.query_all_valid_paths(),
            Err(ClientError::Protocol(WireError::UnexpectedEof))
        ));
        daemon.join().unwrap();

        // An error message whose status never comes (a daemon writing
        // status 0) reads as status 1, as in the Guix client.
        let mut steps = hello_steps();
        steps.push(Step::Expect(request_bytes(&Request::SyncWithGc)));
        let mut err = Vec::new();
        wire::write_int(&mut err, wire::STDERR_ERROR);
        wire::write_str(&mut err, "gone");
        steps.push(Step::Send(err));
        let (mut client, daemon) = fake_daemon(steps);
        client.handshake().unwrap();
        let e = client.sync_with_gc().unwrap_err();
        daemon.join().unwrap();
        assert!(
            matches!(&e, ClientError::Daemon { message, status: 1 } if message == "gone"),
            "{e:?}"
        );
    }

    #[test]
    fn raw_bytes_go_out_as_they_are_and_come_back_as_they_are() {
        let mut steps = hello_steps();
        steps.push(Step::Expect(b"garbage!".to_vec()));
        steps.push(Step::Send(b"whatever".to_vec()));
        let (mut client, daemon) = fake_daemon(steps);
        client.handshake().unwrap();
        client.send_raw(b"garbage!").unwrap();
        assert_eq!(client.read_to_end_raw().unwrap(), b"whatever");
        daemon.join().unwrap();
    }

    #[test]
    fn a_foreign_daemon_fails_the_handshake() {
        let mut bogus = Vec::new();
        wire::write_int(&mut bogus, 0x1234);
        wire::write_int(&mut bogus, PROTOCOL_VERSION);
        let mut magic = Vec::new();
        wire::write_client_magic(&mut magic);
        let (mut client, daemon) = fake_daemon(vec![Step::Expect(magic), Step::Send(bogus)]);
        assert!(matches!(
            client.handshake(),
            Err(ClientError::Protocol(WireError::HandshakeFailed))
        ));
        daemon.join().unwrap();
    }

    #[test]
    fn any_chunking_of_a_response_gives_the_same_outcome() {
        fn prop(cuts: Vec<u8>) -> bool {
            let mut bytes = Vec::new();
            write_stderr_next(&mut bytes, b"one\n");
            write_stderr_read(&mut bytes, 5);
            write_stderr_write(&mut bytes, b"data");
            bytes.extend(reply_bytes(&Reply::QueryValidPaths(vec![
                "/gnu/store/a".into(),
                "/gnu/store/b".into(),
            ])));
            let run = |sizes: &[u8]| {
                let mut ex = Exchange::new(Op::QueryValidPaths, MINOR, WireLimits::default());
                let mut source: &[u8] = b"0123456789";
                let mut out = Vec::new();
                let mut pos: usize = 0;
                let mut i = 0;
                loop {
                    let size = sizes.get(i).map_or(usize::MAX, |&s| usize::from(s) + 1);
                    i += 1;
                    let end = pos.saturating_add(size).min(bytes.len());
                    let f = ex.feed(&bytes[pos..end], &mut source, &mut out).unwrap();
                    pos += f.consumed;
                    if let Some(done) = f.item {
                        return (done, out, pos);
                    }
                }
            };
            let whole = run(&[]);
            whole.2 == bytes.len() && run(&cuts) == whole
        }
        crate::check(prop as fn(Vec<u8>) -> bool);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_exchange() {
        fn prop(bytes: Vec<u8>) -> bool {
            let mut ex = Exchange::new(Op::ExportPath, MINOR, WireLimits::default());
            let mut source: &[u8] = b"abc";
            let mut out = Vec::new();
            let _ = ex.feed(&bytes, &mut source, &mut out);
            let _ = ex.feed_eof();
            true
        }
        crate::check(prop as fn(Vec<u8>) -> bool);
    }

    #[test]
    fn a_client_works_over_any_read_write() {
        // A Cursor plays a daemon that already said everything.
        let mut script = Vec::new();
        encode_server_hello(&mut script);
        write_stderr_last(&mut script);
        let mut client = Client::new(ReadWrite {
            input: Cursor::new(script),
            output: Vec::new(),
        });
        client.handshake().unwrap();
        let mut want = Vec::new();
        wire::write_client_magic(&mut want);
        wire::encode_client_hello(&ClientHello::default(), MINOR, &mut want);
        assert_eq!(client.stream().output, want);
    }

    struct ReadWrite {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for ReadWrite {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for ReadWrite {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}

//! A tiny HTTP/1.0 server on this machine's loopback, for the `download`
//! built-in builder. The Guix root shares this machine's network
//! namespace, and built-in builders run outside any sandbox, so a
//! `guix perform-download` started by a daemon in the root reaches it at
//! `http://127.0.0.1:PORT/`.
//!
//! Keeps true: it serves exactly the files it was given (`200` with the
//! bytes), anything else is `404`; it answers one request per connection
//! and closes it; it counts the requests per path; files can be added or
//! replaced while it runs ([`HttpServer::set`]); dropping the handle stops
//! the server thread and closes the socket.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A running server.
pub struct HttpServer {
    port: u16,
    stop: Arc<AtomicBool>,
    hits: Arc<Mutex<BTreeMap<String, usize>>>,
    files: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Serves `files` (path, such as `/file`, and contents) on a free port
    /// of 127.0.0.1.
    pub fn start(files: Vec<(String, Vec<u8>)>) -> HttpServer {
        let listener =
            TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"))
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(Mutex::new(BTreeMap::new()));
        let files: Arc<Mutex<BTreeMap<String, Vec<u8>>>> =
            Arc::new(Mutex::new(files.into_iter().collect()));
        let thread = {
            let stop = Arc::clone(&stop);
            let hits = Arc::clone(&hits);
            let files = Arc::clone(&files);
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        // A client that misbehaves only loses its answer.
                        let _ = serve(conn, &files, &hits);
                    }
                }
            })
        };
        HttpServer {
            port,
            stop,
            hits,
            files,
            thread: Some(thread),
        }
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Serves `contents` at `path` from now on.
    pub fn set(&self, path: &str, contents: &[u8]) {
        if let Ok(mut files) = self.files.lock() {
            files.insert(path.to_owned(), contents.to_vec());
        }
    }

    /// How many requests asked for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .map(|h| h.get(path).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    conn: TcpStream,
    files: &Mutex<BTreeMap<String, Vec<u8>>>,
    hits: &Mutex<BTreeMap<String, usize>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Skip the headers, up to the empty line.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
    if let Ok(mut h) = hits.lock() {
        *h.entry(path.clone()).or_insert(0) += 1;
    }
    let mut conn = conn;
    let body = files.lock().ok().and_then(|f| f.get(&path).cloned());
    match body {
        Some(body) => {
            write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            conn.write_all(&body)?;
        }
        None => {
            let body = b"not found\n";
            write!(
                conn,
                "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            conn.write_all(body)?;
        }
    }
    conn.flush()
}

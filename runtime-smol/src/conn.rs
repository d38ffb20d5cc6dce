//! Sockets: the accept loop of each listener, and the task of each
//! connection, which reads what the core has budget for and writes what
//! the core sent, in order.
//!
//! What it keeps true:
//! - a connection is read only while the core's `read_budget` is above 0,
//!   and never more than that budget (nor
//!   [`READ_BUFFER_BYTES`](crate::runtime::READ_BUFFER_BYTES)) at once;
//! - a connection's output is written in the order it was sent, every
//!   written byte is reported with `handle_written`, and output that can
//!   no longer be written (the peer is gone) is reported too, so that the
//!   core's output bound never holds a session forever;
//! - EOF, a read error or a write error is reported once, with
//!   `handle_input_closed`;
//! - the socket is closed when the core asked for it and its output is
//!   written (or cannot be); nothing else closes it except shutdown;
//! - writes never raise `SIGPIPE` (`MSG_NOSIGNAL`).

use crate::runtime::{Inner, Notify};
use async_io::{Async, Timer};
use futures_lite::future;
use guixd_core::daemon::{ConnId, Peer, PeerKind};
use guixd_os::net::{self, Listener};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendAncillaryBuffer, SendFlags};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

/// How long to pause accepting after an error that is not about one
/// connection (out of descriptors or memory, a broken listener): the
/// listener stays readable, so retrying at once would spin. The same pause
/// as the threads runtime's.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The most chunks of output gathered into one `sendmsg`.
const WRITE_SLICES_MAX: usize = 64;

/// Accepts connections on `listener` until the task is dropped. An error
/// is logged and accepting resumes after a pause, as the C++ daemon logs a
/// failed accept and goes on: one bad listener must not take the others
/// down.
pub(crate) async fn accept_loop(inner: Rc<Inner>, listener: Async<Listener>) {
    loop {
        match listener.read_with(accept_one).await {
            Ok(accepted) => {
                let Some(executor) = inner.executor() else {
                    return;
                };
                executor
                    .spawn(serve_connection(inner.clone(), accepted))
                    .detach();
                // A burst of connections must not keep everyone else
                // waiting until the backlog is empty.
                future::yield_now().await;
            }
            Err(e) => match AcceptError::of(&e) {
                AcceptError::PeerGone => {}
                AcceptError::Pause => {
                    inner.log(&format!("error accepting connection: {e}"));
                    Timer::after(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// The I/O side of one connection, shared by its task and the dispatch of
/// the core's outputs.
pub(crate) struct ConnIo {
    pub(crate) id: ConnId,
    out: RefCell<OutQueue>,
    /// The core said `Close`.
    closing: Cell<bool>,
    /// Writing failed: the peer is gone and output is dropped.
    broken: Cell<bool>,
    /// `handle_input_closed` was called.
    input_closed: Cell<bool>,
    /// Listed among the starved readers.
    pub(crate) starved: Cell<bool>,
    /// The connection's task has ended.
    pub(crate) ended: Cell<bool>,
    /// Wakes the connection's task (output, close, budget).
    pub(crate) task: Notify,
}

impl ConnIo {
    fn new(id: ConnId) -> ConnIo {
        ConnIo {
            id,
            out: RefCell::new(OutQueue::default()),
            closing: Cell::new(false),
            broken: Cell::new(false),
            input_closed: Cell::new(false),
            starved: Cell::new(false),
            ended: Cell::new(false),
            task: Notify::default(),
        }
    }

    /// Queues bytes the core sent.
    pub(crate) fn push(&self, data: Vec<u8>) {
        if !data.is_empty() {
            self.out.borrow_mut().push(data);
            self.task.wake();
        }
    }

    /// The core asked to close once the output is written.
    pub(crate) fn close(&self) {
        self.closing.set(true);
        self.task.wake();
    }
}

/// What one `accept` gave.
enum Accepted {
    Unix(UnixStream),
    Tcp(TcpStream, SocketAddr),
}

/// How the accept loop treats an `accept` error.
enum AcceptError {
    /// The connection failed before we took it (accept(2) lists these as
    /// errors to retry at once).
    PeerGone,
    /// Out of descriptors or memory, or the listener itself is broken:
    /// retry after a pause.
    Pause,
}

impl AcceptError {
    fn of(e: &io::Error) -> AcceptError {
        let Some(code) = e.raw_os_error() else {
            return AcceptError::Pause;
        };
        let errno = Errno::from_raw_os_error(code);
        if [
            Errno::INTR,
            Errno::AGAIN,
            Errno::CONNABORTED,
            Errno::PROTO,
            Errno::PERM,
            Errno::NETDOWN,
            Errno::NOPROTOOPT,
            Errno::HOSTDOWN,
            Errno::NONET,
            Errno::HOSTUNREACH,
            Errno::OPNOTSUPP,
            Errno::NETUNREACH,
            Errno::TIMEDOUT,
        ]
        .contains(&errno)
        {
            AcceptError::PeerGone
        } else {
            AcceptError::Pause
        }
    }
}

fn accept_one(listener: &Listener) -> io::Result<Accepted> {
    match listener {
        Listener::Unix(l) => l.accept().map(|(s, _)| Accepted::Unix(s)),
        Listener::Tcp(l) => l.accept().map(|(s, a)| Accepted::Tcp(s, a)),
    }
}

/// Introduces a new connection to the core and serves it until it closes.
async fn serve_connection(inner: Rc<Inner>, accepted: Accepted) {
    let (fd, peer): (OwnedFd, Peer) = match accepted {
        Accepted::Unix(stream) => {
            let (pid, uid, gid) = match net::peer_credentials(&stream) {
                Ok(credentials) => credentials,
                Err(e) => {
                    inner.log(&format!("error processing connection: {e}"));
                    return;
                }
            };
            // The password database may be remote (NSS), so the lookup
            // runs off the runtime thread.
            let user_name = blocking::unblock(move || net::user_name(uid)).await;
            let peer = Peer {
                kind: PeerKind::Unix {
                    pid: pid as u32,
                    uid,
                    gid,
                },
                user_name,
            };
            (stream.into(), peer)
        }
        Accepted::Tcp(stream, address) => {
            net::tune_tcp_stream(&stream);
            let peer = Peer {
                // The daemon names a TCP peer by its address alone.
                kind: PeerKind::Tcp {
                    address: address.ip().to_string(),
                },
                user_name: None,
            };
            (stream.into(), peer)
        }
    };
    let stream = match Async::new(fd) {
        Ok(stream) => stream,
        Err(e) => {
            inner.log(&format!("error processing connection: {e}"));
            return;
        }
    };
    let accepted = inner.call(|daemon, now| {
        let id = daemon.handle_accept(now, peer)?;
        let io = Rc::new(ConnIo::new(id));
        // Registered before the outputs of this call are dispatched, in
        // case they already concern the new connection.
        inner.conns.borrow_mut().insert(id, io.clone());
        Some(io)
    });
    // `None`: the core will not serve it; dropping the stream closes it.
    let Some(io) = accepted else {
        return;
    };
    // The connection lives as long as its writer: the reader never ends on
    // its own, and is dropped (cancelled) with it.
    future::or(
        write_half(&inner, &io, &stream),
        read_half(&inner, &io, &stream),
    )
    .await;
    io.ended.set(true);
    inner.connection_ended(io.id);
}

/// Reads while the core has budget, hands the bytes in, and reports the
/// end of input; then waits forever (the writer ends the connection).
async fn read_half(inner: &Rc<Inner>, io: &Rc<ConnIo>, stream: &Async<OwnedFd>) {
    loop {
        let budget = future::poll_fn(|cx| {
            let budget = inner.read_budget(io.id);
            if budget > 0 {
                return Poll::Ready(budget);
            }
            io.task.register(cx);
            inner.starve(io);
            Poll::Pending
        })
        .await;
        let outcome = {
            let mut buffer = inner.read_buffer.borrow_mut();
            let want = budget.min(buffer.len());
            match rustix::net::recv(stream.get_ref(), &mut buffer[..want], RecvFlags::empty()) {
                Ok((0, _)) => Read::Closed,
                Ok((n, _)) => {
                    inner.call(|daemon, now| daemon.handle_input(now, io.id, &buffer[..n]));
                    Read::Data
                }
                Err(Errno::AGAIN) => Read::Empty,
                Err(Errno::INTR) => Read::Data,
                Err(_) => Read::Closed,
            }
        };
        match outcome {
            // Others get their turn before this connection reads again.
            Read::Data => future::yield_now().await,
            Read::Empty => {
                if stream.readable().await.is_err() {
                    break;
                }
            }
            Read::Closed => break,
        }
    }
    report_input_closed(inner, io);
    future::pending::<()>().await
}

/// What one `recv` gave.
enum Read {
    Data,
    Empty,
    Closed,
}

/// Writes the connection's output as it comes, reporting what was
/// written; ends once the core asked to close and nothing is left.
async fn write_half(inner: &Rc<Inner>, io: &Rc<ConnIo>, stream: &Async<OwnedFd>) {
    loop {
        future::poll_fn(|cx| {
            if !io.out.borrow().is_empty() || io.closing.get() {
                return Poll::Ready(());
            }
            io.task.register(cx);
            Poll::Pending
        })
        .await;
        if io.out.borrow().is_empty() {
            // Closing, and everything was written.
            return;
        }
        if io.broken.get() {
            let dropped = io.out.borrow_mut().clear();
            inner.call(|daemon, now| daemon.handle_written(now, io.id, dropped));
            continue;
        }
        let mut written = 0;
        let mut failure = None;
        loop {
            let sent = io.out.borrow_mut().send(stream.get_ref().as_fd());
            match sent {
                Ok(n) => {
                    written += n;
                    if io.out.borrow().is_empty() {
                        break;
                    }
                }
                Err(Errno::INTR) => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if written > 0 {
            inner.call(|daemon, now| daemon.handle_written(now, io.id, written));
        }
        match failure {
            None => future::yield_now().await,
            Some(Errno::AGAIN) => {
                if stream.writable().await.is_err() {
                    io.broken.set(true);
                    report_input_closed(inner, io);
                }
            }
            Some(_) => {
                io.broken.set(true);
                report_input_closed(inner, io);
            }
        }
    }
}

fn report_input_closed(inner: &Rc<Inner>, io: &ConnIo) {
    if !io.input_closed.replace(true) {
        inner.call(|daemon, now| daemon.handle_input_closed(now, io.id));
    }
}

/// A connection's output not yet written: chunks in order, the first one
/// possibly written in part.
#[derive(Default)]
struct OutQueue {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the first chunk already written.
    offset: usize,
}

impl OutQueue {
    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    fn push(&mut self, data: Vec<u8>) {
        self.chunks.push_back(data);
    }

    /// Drops everything; returns how many bytes that was.
    fn clear(&mut self) -> usize {
        let total: usize = self.chunks.iter().map(Vec::len).sum();
        self.chunks.clear();
        total - std::mem::take(&mut self.offset)
    }

    /// One `send` (or `sendmsg` of several chunks); returns the bytes
    /// written and forgets them.
    fn send(&mut self, fd: BorrowedFd<'_>) -> Result<usize, Errno> {
        let n = if self.chunks.len() == 1 {
            rustix::net::send(fd, &self.chunks[0][self.offset..], SendFlags::NOSIGNAL)?
        } else {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES_MAX];
            let mut count = 0;
            for (i, chunk) in self.chunks.iter().take(WRITE_SLICES_MAX).enumerate() {
                let start = if i == 0 { self.offset } else { 0 };
                slices[i] = IoSlice::new(&chunk[start..]);
                count += 1;
            }
            rustix::net::sendmsg(
                fd,
                &slices[..count],
                &mut SendAncillaryBuffer::default(),
                SendFlags::NOSIGNAL,
            )?
        };
        self.forget(n);
        Ok(n)
    }

    fn forget(&mut self, mut n: usize) {
        while n > 0 {
            let Some(first) = self.chunks.front() else {
                break;
            };
            let left = first.len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.offset = 0;
            self.chunks.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the chunks and however little the peer reads at a time,
    /// queued output arrives whole and in order, and every byte is counted
    /// once.
    #[test]
    fn queued_output_arrives_in_order_through_partial_sends() {
        fn prop(chunks: Vec<Vec<u8>>, reads: Vec<u16>) -> bool {
            let (writer, mut reader) = UnixStream::pair().unwrap();
            writer.set_nonblocking(true).unwrap();
            // A small send buffer makes partial writes common.
            rustix::net::sockopt::set_socket_send_buffer_size(&writer, 4096).unwrap();
            let expected = chunks.concat();
            let mut queue = OutQueue::default();
            for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
                queue.push(chunk);
            }
            let mut sent = 0;
            let mut received = Vec::new();
            let mut turn = 0;
            while received.len() < expected.len() {
                if !queue.is_empty() {
                    match queue.send(writer.as_fd()) {
                        Ok(n) => sent += n,
                        Err(Errno::AGAIN) => {}
                        Err(e) => panic!("send: {e}"),
                    }
                }
                // Read only what was sent, so the read never blocks.
                let want = reads
                    .get(turn % reads.len().max(1))
                    .map_or(4096, |&r| usize::from(r).max(1))
                    .min(sent - received.len());
                turn += 1;
                let mut buffer = vec![0; want];
                let n = std::io::Read::read(&mut reader, &mut buffer).unwrap();
                received.extend_from_slice(&buffer[..n]);
            }
            received == expected && sent == expected.len() && queue.is_empty()
        }
        guixd_testkit::check(prop as fn(Vec<Vec<u8>>, Vec<u16>) -> bool);
    }

    #[test]
    fn clearing_counts_only_what_was_not_written() {
        let (writer, _reader) = UnixStream::pair().unwrap();
        let mut queue = OutQueue::default();
        queue.push(vec![1; 10]);
        queue.forget(4);
        queue.push(vec![2; 5]);
        assert_eq!(queue.clear(), 11);
        assert!(queue.is_empty());
        // A queue emptied by sending is as good as new.
        queue.push(vec![3; 3]);
        assert_eq!(queue.send(writer.as_fd()), Ok(3));
        assert!(queue.is_empty());
        assert_eq!(queue.clear(), 0);
    }
}

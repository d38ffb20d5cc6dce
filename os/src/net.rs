//! Listening sockets and what the daemon learns about a peer, for the
//! runtimes: the Unix socket (spec 04 §2.1), TCP listeners (§2.2), systemd
//! socket activation, peer credentials and user names (§2.3).
//!
//! Keeps true:
//! - nothing here changes process-wide state: no `chdir` (long socket
//!   paths are bound through `/proc/self/fd/<dir>/<name>` instead of the C++
//!   daemon's chdir trick) and no `umask` (the socket is chmod'ed to 0666
//!   after `bind` and before `listen`, so no client can ever connect to it
//!   with other permissions: until `listen`, connections are refused
//!   anyway). These functions are therefore safe to call with threads
//!   running;
//! - every descriptor made or adopted here is close-on-exec;
//! - listeners use a backlog of [`LISTEN_BACKLOG`] rather than the C++
//!   daemon's 5, because one process serves many clients at once and a
//!   burst of connections must not be refused while the accept loop runs;
//! - error texts are the C++ daemon's, with the C library's text of the
//!   error appended as its `SysError` does.

use crate::locks::strerror;
use guixd_core::store_path::canonicalise_lexically;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// The port of `--listen=HOST` without one.
pub const DEFAULT_TCP_PORT: &str = "44146";

/// The `listen(2)` backlog of every listener made here (the kernel caps it
/// at `net.core.somaxconn`).
pub const LISTEN_BACKLOG: i32 = 1024;

/// The first descriptor passed by systemd socket activation.
pub const LISTEN_FDS_START: RawFd = 3;

/// How many activated sockets `listen_fds` accepts; more means a broken
/// environment.
pub const LISTEN_FDS_MAX: u32 = 1024;

/// A listening socket of either kind.
#[derive(Debug)]
pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    /// Sets the listener's non-blocking mode (for runtimes that poll it).
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Listener::Unix(l) => l.set_nonblocking(on),
            Listener::Tcp(l) => l.set_nonblocking(on),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Listener::Unix(l) => l.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
        }
    }
}

/// Opens what one `--listen` option names, as `guix-daemon` reads it: an
/// option starting with `/` is a Unix socket (its path canonicalised
/// lexically first), anything else `HOST` or `HOST:PORT`.
pub fn listen(option: &str) -> io::Result<Listener> {
    if option.starts_with('/') {
        let path = canonicalise_lexically(option);
        bind_unix(Path::new(&path)).map(Listener::Unix)
    } else {
        bind_tcp(option).map(Listener::Tcp)
    }
}

/// Creates the Unix socket `path` as the daemon does: `mkdir -p` of its
/// directory (0755 before the umask), removal of whatever is at `path`,
/// `bind`, mode 0666 (access control is the directory's job), `listen`.
/// Paths longer than `sun_path` allows are bound through
/// `/proc/self/fd/<dir>/<name>`.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    let shown = path.display();
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot bind to socket '{shown}': no file name"),
        )
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| with_context(&e, &format!("creating directory `{}'", dir.display())))?;

    let socket = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| with_context(&e.into(), "cannot create Unix domain socket"))?;

    // The directory handle must outlive `bind` when the address goes
    // through it.
    let mut dir_handle: Option<File> = None;
    let address = match rustix::net::SocketAddrUnix::new(path) {
        Ok(address) => address,
        Err(_) => {
            let handle = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(dir)
                .map_err(|e| with_context(&e, "cannot change current directory"))?;
            let mut via = format!("/proc/self/fd/{}/", handle.as_raw_fd()).into_bytes();
            via.extend_from_slice(name.as_bytes());
            let address = rustix::net::SocketAddrUnix::new(via.as_slice()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "socket file name './{}' is too long",
                        name.to_string_lossy()
                    ),
                )
            })?;
            dir_handle = Some(handle);
            address
        }
    };

    let _ = std::fs::remove_file(path);
    rustix::net::bind(&socket, &address)
        .map_err(|e| with_context(&e.into(), &format!("cannot bind to socket '{shown}'")))?;
    drop(dir_handle);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| with_context(&e, &format!("cannot bind to socket '{shown}'")))?;
    rustix::net::listen(&socket, LISTEN_BACKLOG)
        .map_err(|e| with_context(&e.into(), &format!("cannot listen on socket '{shown}'")))?;
    Ok(UnixListener::from(socket))
}

/// Opens a TCP listener for `HOST` or `HOST:PORT` (split at the *last*
/// colon, as the daemon does; default port 44146), bound to the first
/// address `getaddrinfo` gives with `AI_NUMERICSERV | AI_ADDRCONFIG`.
/// Sets `SO_REUSEADDR` (the C++ daemon does not), so that a restarted
/// daemon can bind while old connections linger in TIME_WAIT.
pub fn bind_tcp(spec: &str) -> io::Result<TcpListener> {
    let (host, port) = split_host_port(spec);
    let address = resolve_first(host, port)
        .map_err(|reason| io::Error::other(format!("failed to look up '{spec}': {reason}")))?;
    let family = match address {
        SocketAddr::V4(_) => rustix::net::AddressFamily::INET,
        SocketAddr::V6(_) => rustix::net::AddressFamily::INET6,
    };
    let socket = rustix::net::socket_with(
        family,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| with_context(&e.into(), "cannot create TCP socket"))?;
    rustix::net::sockopt::set_socket_reuseaddr(&socket, true)
        .map_err(|e| with_context(&e.into(), "cannot create TCP socket"))?;
    rustix::net::bind(&socket, &address)
        .map_err(|e| with_context(&e.into(), "cannot bind TCP socket"))?;
    rustix::net::listen(&socket, LISTEN_BACKLOG)
        .map_err(|e| with_context(&e.into(), "cannot listen on TCP socket"))?;
    Ok(TcpListener::from(socket))
}

/// `HOST` / `HOST:PORT`, split at the last colon.
pub fn split_host_port(spec: &str) -> (&str, &str) {
    match spec.rfind(':') {
        Some(colon) => (&spec[..colon], &spec[colon + 1..]),
        None => (spec, DEFAULT_TCP_PORT),
    }
}

/// The listening sockets passed by systemd socket activation: when
/// `LISTEN_PID` is this process, descriptors 3 .. 3+`LISTEN_FDS`, each
/// made close-on-exec and classified by its address family. Empty when not
/// socket-activated (or `LISTEN_FDS` is not a number, as in the daemon).
///
/// Takes ownership of those descriptors, so it works once per process;
/// later calls fail.
pub fn listen_fds() -> io::Result<Vec<Listener>> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let ours = std::env::var("LISTEN_PID").is_ok_and(|pid| pid == std::process::id().to_string());
    if !ours {
        return Ok(Vec::new());
    }
    let Some(count) = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
    else {
        return Ok(Vec::new());
    };
    if count > LISTEN_FDS_MAX {
        return Err(io::Error::other(format!(
            "LISTEN_FDS is too large: {count}"
        )));
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other(
            "the socket-activation descriptors were already taken",
        ));
    }
    let mut listeners = Vec::with_capacity(count as usize);
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + count as RawFd {
        // SAFETY: F_GETFD on any number is harmless; it tells whether the
        // descriptor is open before we adopt it.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            return Err(with_context(
                &io::Error::last_os_error(),
                &format!("socket-activated descriptor {fd}"),
            ));
        }
        // SAFETY: systemd passed this open descriptor to us for this use;
        // `TAKEN` ensures nothing in this process adopts it twice.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
        let listener = match rustix::net::sockopt::socket_domain(&owned)? {
            rustix::net::AddressFamily::UNIX => Listener::Unix(UnixListener::from(owned)),
            _ => Listener::Tcp(TcpListener::from(owned)),
        };
        listeners.push(listener);
    }
    Ok(listeners)
}

/// The peer of a Unix connection: `(pid, uid, gid)` from `SO_PEERCRED`.
/// The pid is 0 when the peer lives in a PID namespace we cannot see into.
pub fn peer_credentials(stream: &UnixStream) -> io::Result<(i32, u32, u32)> {
    let mut credentials = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the buffer is a `ucred` and `len` says its size; the kernel
    // writes at most that many bytes.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc == -1 {
        return Err(with_context(
            &io::Error::last_os_error(),
            "getting peer credentials",
        ));
    }
    Ok((credentials.pid, credentials.uid, credentials.gid))
}

/// The login name of `uid` from the password database, if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    // Password entries are small; this is only a ceiling on retries.
    const BUFFER_MAX_BYTES: usize = 1 << 20;
    let mut buffer: Vec<libc::c_char> = vec![0; 1024];
    loop {
        let mut entry = MaybeUninit::<libc::passwd>::uninit();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid and writable for the call, and
        // `buffer.len()` is its real size. On success `result` points to
        // `entry`, whose strings point into `buffer`, both still alive
        // below.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                entry.as_mut_ptr(),
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buffer.len() < BUFFER_MAX_BYTES {
            let len = buffer.len() * 2;
            buffer.resize(len, 0);
            continue;
        }
        if rc != 0 || result.is_null() {
            return None;
        }
        // SAFETY: success with a non-null result: `entry` is initialised and
        // `pw_name` is a NUL-terminated string inside `buffer`.
        let name = unsafe { CStr::from_ptr((*result).pw_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

/// What the daemon does to every accepted TCP connection: `TCP_NODELAY`
/// (replies go out at once) and `TCP_QUICKACK`. Failures are ignored, as
/// in the daemon.
pub fn tune_tcp_stream(stream: &TcpStream) {
    let _ = rustix::net::sockopt::set_tcp_nodelay(stream, true);
    let _ = rustix::net::sockopt::set_tcp_quickack(stream, true);
}

/// Sets or clears `O_NONBLOCK` on any descriptor.
pub fn set_nonblocking(fd: impl AsFd, on: bool) -> io::Result<()> {
    rustix::io::ioctl_fionbio(fd, on).map_err(io::Error::from)
}

/// An error with the daemon's context prefixed, keeping its kind.
fn with_context(err: &io::Error, context: &str) -> io::Error {
    io::Error::new(err.kind(), format!("{context}: {}", strerror(err)))
}

/// The first address `getaddrinfo(host, port)` gives for a stream socket
/// with `AI_NUMERICSERV | AI_ADDRCONFIG`, or the resolver's error text.
fn resolve_first(host: &str, port: &str) -> Result<SocketAddr, String> {
    let host = CString::new(host).map_err(|_| "Name or service not known".to_owned())?;
    let port =
        CString::new(port).map_err(|_| "Servname not supported for ai_socktype".to_owned())?;
    // SAFETY: `addrinfo` is plain data; all-zero means "no hints" for the
    // fields set below.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_socktype = libc::SOCK_STREAM;
    hints.ai_flags = libc::AI_NUMERICSERV | libc::AI_ADDRCONFIG;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid NUL-terminated strings, a valid hints struct and a
    // place for the result list, which is freed below.
    let rc = unsafe { libc::getaddrinfo(host.as_ptr(), port.as_ptr(), &hints, &mut list) };
    if rc != 0 {
        // SAFETY: gai_strerror returns a static NUL-terminated string.
        let reason = unsafe { CStr::from_ptr(libc::gai_strerror(rc)) };
        return Err(reason.to_string_lossy().into_owned());
    }
    // SAFETY: on success `list` is a non-null list owned by us until
    // `freeaddrinfo`; only its first entry is read, according to its
    // family and length.
    let first = unsafe { socket_address(&*list) };
    // SAFETY: `list` came from getaddrinfo and is freed exactly once.
    unsafe { libc::freeaddrinfo(list) };
    first.ok_or_else(|| "Address family for hostname not supported".to_owned())
}

/// Converts an `addrinfo`'s address to std's type.
///
/// # Safety
/// `info.ai_addr` must point to `info.ai_addrlen` readable bytes.
unsafe fn socket_address(info: &libc::addrinfo) -> Option<SocketAddr> {
    let len = info.ai_addrlen as usize;
    match info.ai_family {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the caller vouches for the bytes; the family and length
            // say they are a `sockaddr_in` (read unaligned to be safe).
            let sin = unsafe { std::ptr::read_unaligned(info.ai_addr.cast::<libc::sockaddr_in>()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(sin.sin_addr.s_addr).into(),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a `sockaddr_in6`.
            let sin6 =
                unsafe { std::ptr::read_unaligned(info.ai_addr.cast::<libc::sockaddr_in6>()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::{Scratch, scratch};
    use std::io::{Read, Write};
    use std::os::unix::fs::FileTypeExt;

    fn temp_dir(tag: &str) -> Scratch {
        scratch("net", tag)
    }

    fn round_trip(listener: &UnixListener, mut client: UnixStream) {
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"ping").unwrap();
        let mut buf = [0; 4];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn unix_socket_is_0666_in_a_new_directory_and_replaces_a_file() {
        let dir = temp_dir("unix");
        let path = dir.join("daemon-socket/socket");
        let listener = bind_unix(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o666);
        assert_eq!(
            std::fs::metadata(dir.join("daemon-socket"))
                .unwrap()
                .permissions()
                .mode()
                & 0o022,
            0
        );
        round_trip(&listener, UnixStream::connect(&path).unwrap());
        drop(listener);
        // A leftover socket (or anything else) at the path is replaced.
        let again = bind_unix(&path).unwrap();
        round_trip(&again, UnixStream::connect(&path).unwrap());
        // Through `listen`, with a path to canonicalise.
        let option = format!("{}/./daemon-socket//other", dir.display());
        let Listener::Unix(other) = listen(&option).unwrap() else {
            panic!("not unix")
        };
        round_trip(
            &other,
            UnixStream::connect(dir.join("daemon-socket/other")).unwrap(),
        );
    }

    #[test]
    fn long_socket_paths_work() {
        let dir = temp_dir("long");
        let deep = dir.join("a".repeat(60)).join("b".repeat(60));
        let path = deep.join("socket");
        assert!(path.as_os_str().len() > 108);
        let listener = bind_unix(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o666
        );
        // Clients reach it the same way.
        let handle = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&deep)
            .unwrap();
        let via = format!("/proc/self/fd/{}/socket", handle.as_raw_fd());
        round_trip(&listener, UnixStream::connect(via).unwrap());
        // The working directory was not touched.
        assert_ne!(std::env::current_dir().unwrap(), deep);
    }

    #[test]
    fn a_name_too_long_even_relative_is_refused() {
        let dir = temp_dir("toolong");
        let path = dir.join("s".repeat(120));
        let err = bind_unix(&path).unwrap_err();
        assert!(
            err.to_string().starts_with("socket file name './sss"),
            "{err}"
        );
        assert!(err.to_string().ends_with("' is too long"), "{err}");
    }

    #[test]
    fn peer_credentials_of_a_connection_to_ourselves() {
        let dir = temp_dir("cred");
        let path = dir.join("socket");
        let listener = bind_unix(&path).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (pid, uid, gid) = peer_credentials(&server).unwrap();
        assert_eq!(pid as u32, std::process::id());
        assert_eq!(uid, rustix::process::getuid().as_raw());
        assert_eq!(gid, rustix::process::getgid().as_raw());
        assert_eq!(
            peer_credentials(&client).unwrap().0 as u32,
            std::process::id()
        );
    }

    #[test]
    fn user_names() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(4_000_000_000), None);
    }

    #[test]
    fn tcp_listener_on_loopback() {
        let listener = bind_tcp("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        assert!(address.ip().is_loopback());
        assert_ne!(address.port(), 0);
        let mut client = TcpStream::connect(address).unwrap();
        let (server, _) = listener.accept().unwrap();
        tune_tcp_stream(&server);
        assert!(server.nodelay().unwrap());
        client.write_all(b"x").unwrap();
        set_nonblocking(&server, true).unwrap();
        set_nonblocking(&server, false).unwrap();
        let mut buf = [0; 1];
        (&server).read_exact(&mut buf).unwrap();
        let Listener::Tcp(_) = listen("127.0.0.1:0").unwrap() else {
            panic!("not tcp")
        };
    }

    #[test]
    fn tcp_specs_are_split_at_the_last_colon() {
        assert_eq!(split_host_port("localhost"), ("localhost", "44146"));
        assert_eq!(split_host_port("localhost:1234"), ("localhost", "1234"));
        assert_eq!(split_host_port("::1"), (":", "1"));
        assert_eq!(split_host_port("a:b:c"), ("a:b", "c"));
    }

    #[test]
    fn any_spec_splits_back_into_itself() {
        fn prop(spec: String) -> bool {
            let (host, port) = split_host_port(&spec);
            if spec.contains(':') {
                format!("{host}:{port}") == spec && !port.contains(':')
            } else {
                host == spec && port == DEFAULT_TCP_PORT
            }
        }
        guixd_testkit::check(prop as fn(String) -> bool);
    }

    #[test]
    fn lookup_failures_have_the_daemons_words() {
        // A service name is refused without any name lookup
        // (AI_NUMERICSERV), so this needs no network.
        let err = bind_tcp("127.0.0.1:http").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("failed to look up '127.0.0.1:http': "),
            "{err}"
        );
    }

    #[test]
    fn no_activation_without_our_pid() {
        // The test harness is not socket-activated (and this test must not
        // set the variables: the environment is shared by all tests).
        if std::env::var_os("LISTEN_PID").is_none() {
            assert!(listen_fds().unwrap().is_empty());
        }
    }

    /// Runs this test binary again as a socket-activated process: a shell
    /// sets `LISTEN_PID` to its own pid and execs it with a listening Unix
    /// socket on descriptor 3; the child (`activation_child`) adopts it
    /// and answers one connection with "ok". If the child failed, it would
    /// exit, the only listening descriptor would close, and our read would
    /// fail instead.
    #[test]
    fn socket_activation() {
        let dir = temp_dir("activation");
        let path = dir.join("socket");
        let listener = bind_unix(&path).unwrap();
        let program = std::env::current_exe().unwrap();
        let mut env: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| k != "LISTEN_PID" && k != "LISTEN_FDS")
            .map(|(k, v)| {
                CString::new(format!("{}={}", k.to_string_lossy(), v.to_string_lossy())).unwrap()
            })
            .collect();
        env.push(CString::new("LISTEN_FDS=1").unwrap());
        env.push(CString::new("GUIXD_TEST_ACTIVATION=1").unwrap());
        let script = format!(
            "LISTEN_PID=$$ exec '{}' --exact net::tests::activation_child --test-threads=1",
            program.display()
        );
        let quiet = File::create("/dev/null").unwrap();
        let child = crate::agents::spawn_agent(
            Path::new("/bin/sh"),
            &["-c", &script],
            &env,
            &[(quiet.as_raw_fd(), 1), (listener.as_raw_fd(), 3)],
        )
        .unwrap();
        drop(listener);
        let mut stream = UnixStream::connect(&path).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "ok");
        drop(child);
    }

    #[test]
    fn activation_child() {
        if std::env::var_os("GUIXD_TEST_ACTIVATION").is_none() {
            return;
        }
        let mut listeners = listen_fds().unwrap();
        assert_eq!(listeners.len(), 1);
        assert!(listen_fds().is_err(), "descriptors are adopted once");
        let Some(Listener::Unix(listener)) = listeners.pop() else {
            panic!("not a unix listener")
        };
        let flags = rustix::io::fcntl_getfd(&listener).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        let (mut stream, _) = listener.accept().unwrap();
        stream.write_all(b"ok").unwrap();
    }
}

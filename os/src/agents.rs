//! Long-running helper processes ("agents") the daemon talks to over pipes:
//! `guix authenticate` (signing and verifying export archives, spec 03 §8)
//! and `guix substitute --query` (which paths can be substituted, and
//! their infos, spec 03 §6).
//!
//! Keeps true:
//! - at most one agent of each kind runs at a time, behind its own mutex;
//!   one request is in flight per agent, and its whole reply is read before
//!   the mutex is released;
//! - an agent is started lazily, and started afresh when it has died, when
//!   a reply broke the protocol (a half-read reply would desynchronise
//!   every later one), or — for the substituter — when the options it was
//!   started with differ from the ones asked for. An agent that is replaced
//!   or dropped has its stdin closed and its process group killed and
//!   reaped, as the C++ daemon's `Agent` destructor does;
//! - agents are started with `posix_spawn`, never with a bare `fork` in
//!   this multi-threaded process (see [`spawn_agent`] for why not
//!   `std::process::Command`), in a new session, with the daemon's
//!   environment captured at start-up plus the store's directories;
//! - everything read from an agent is bounded ([`AgentLimits`]); an agent
//!   that sends more is treated as broken;
//! - error texts are the C++ daemon's where it has some (a reply's own
//!   error text is passed through as is).

use crate::OsConfig;
use crate::locks::{strerror, sys_error};
use guixd_core::effect::{
    EffectError, EffectErrorKind, EffectOutput, EffectResult, SubstitutablePathInfo,
};
use guixd_core::{Hash, StoreDir, StorePath};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// Bounds on what the daemon reads from its agents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentLimits {
    /// Longest line of a substituter reply (a store path, a number).
    pub reply_line_max_bytes: usize,
    /// Longest line of a substituter's diagnostics kept before it is passed
    /// on anyway.
    pub diagnostics_line_max_bytes: usize,
    /// Paths in one `have` or `info` reply.
    pub reply_paths_max: usize,
    /// References of one path in an `info` reply.
    pub references_max: usize,
    /// Length of one `guix authenticate` reply string.
    pub authenticate_reply_max_bytes: usize,
}

impl Default for AgentLimits {
    fn default() -> AgentLimits {
        AgentLimits {
            reply_line_max_bytes: 1 << 20,
            diagnostics_line_max_bytes: 64 << 10,
            reply_paths_max: 1 << 20,
            references_max: 1 << 20,
            authenticate_reply_max_bytes: 1 << 20,
        }
    }
}

/// The daemon's agents.
pub struct Agents {
    program: PathBuf,
    store: StoreDir,
    secret_key_file: PathBuf,
    /// The daemon's environment at start-up with the store's directories
    /// set, as `NAME=value` strings for `posix_spawn`.
    env: Vec<CString>,
    limits: AgentLimits,
    authenticate: Mutex<Option<AuthenticateAgent>>,
    query: Mutex<Option<QueryAgent>>,
}

// `Os` is shared by every worker thread.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Agents>();
};

impl Agents {
    /// Nothing is started until the first request. Captures the daemon's
    /// environment now.
    pub fn new(config: &OsConfig) -> Agents {
        let dirs = &config.dirs;
        let overrides: [(&str, &OsStr); 5] = [
            ("NIX_STORE_DIR", OsStr::new(dirs.store.as_str())),
            ("GUIX_STATE_DIRECTORY", dirs.state.as_os_str()),
            ("GUIX_LOG_DIRECTORY", dirs.log.as_os_str()),
            ("GUIX_DATABASE_DIRECTORY", dirs.db.as_os_str()),
            ("GUIX_CONFIGURATION_DIRECTORY", dirs.conf.as_os_str()),
        ];
        let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
        for (name, value) in overrides {
            env.insert(name.into(), value.to_owned());
        }
        Agents {
            program: dirs.guix_program.clone(),
            store: dirs.store.clone(),
            secret_key_file: dirs.conf.join("signing-key.sec"),
            // A variable whose name or value holds a NUL cannot be passed
            // to a program at all; the kernel never gives us one.
            env: env
                .into_iter()
                .filter_map(|(name, value)| {
                    let mut entry = name.into_vec();
                    entry.push(b'=');
                    entry.extend_from_slice(value.as_bytes());
                    CString::new(entry).ok()
                })
                .collect(),
            limits: AgentLimits::default(),
            authenticate: Mutex::new(None),
            query: Mutex::new(None),
        }
    }

    /// Replaces the bounds on replies.
    pub fn with_limits(mut self, limits: AgentLimits) -> Agents {
        self.limits = limits;
        self
    }

    /// Signs `hash` with the daemon's key `<conf>/signing-key.sec`, which
    /// must not be accessible to group or others: `Signature(sexp)`.
    pub fn sign(&self, hash: &Hash) -> EffectResult {
        check_secrecy(&self.secret_key_file)?;
        let key = self.secret_key_file.as_os_str().as_bytes();
        let hex = hash.to_hex();
        let mut request = b"sign ".to_vec();
        push_argument(&mut request, key);
        request.push(b' ');
        push_argument(&mut request, hex.as_bytes());
        request.push(b'\n');
        match self.authenticate_request(&request)? {
            Ok(signature) => Ok(EffectOutput::Signature(signature)),
            Err(message) => Err(EffectError::new(EffectErrorKind::Helper, message)),
        }
    }

    /// Verifies `signature` against the ACL (`<conf>/acl`, read by the
    /// agent): `VerifiedHash(hex)`, the hash the signature covers.
    pub fn verify(&self, signature: &[u8]) -> EffectResult {
        let mut request = b"verify ".to_vec();
        push_argument(&mut request, signature);
        request.push(b'\n');
        match self.authenticate_request(&request)? {
            Ok(hash) => Ok(EffectOutput::VerifiedHash(
                String::from_utf8_lossy(&hash).into_owned(),
            )),
            Err(message) => Err(EffectError::new(EffectErrorKind::Invalid, message)),
        }
    }

    /// Which of `paths` the substituter can provide: `Substituter` with
    /// `Paths`. `options` are the settings the agent runs with
    /// (`_NIX_OPTIONS`).
    pub fn substitutes_have(
        &self,
        paths: &[StorePath],
        options: &[(String, String)],
    ) -> EffectResult {
        if paths.is_empty() {
            return Ok(substituter_answer(
                Vec::new(),
                Ok(EffectOutput::Paths(BTreeSet::new())),
            ));
        }
        self.query_request(options, |agent| {
            self.have(agent, paths).map(EffectOutput::Paths)
        })
    }

    /// The substitutable infos of those of `paths` the substituter can
    /// provide: `Substituter` with `SubstitutableInfos`.
    pub fn substitutes_info(
        &self,
        paths: &[StorePath],
        options: &[(String, String)],
    ) -> EffectResult {
        if paths.is_empty() {
            return Ok(substituter_answer(
                Vec::new(),
                Ok(EffectOutput::SubstitutableInfos(BTreeMap::new())),
            ));
        }
        self.query_request(options, |agent| {
            self.info(agent, paths)
                .map(EffectOutput::SubstitutableInfos)
        })
    }

    /// Runs one request on the query agent (started as needed); a failed
    /// request drops the agent. What the agent printed meanwhile goes with
    /// the answer, failed or not.
    fn query_request(
        &self,
        options: &[(String, String)],
        request: impl FnOnce(&mut QueryAgent) -> EffectResult,
    ) -> EffectResult {
        let mut slot = lock(&self.query);
        let agent = match self.query_agent(&mut slot, options) {
            Ok(agent) => agent,
            Err(e) => return Ok(substituter_answer(Vec::new(), Err(e))),
        };
        let answer = request(agent);
        let diagnostics = std::mem::take(&mut agent.outbox);
        if answer.is_err() {
            *slot = None;
        }
        Ok(substituter_answer(diagnostics, answer))
    }

    /// Stops both agents (they are started again when needed).
    pub fn stop(&self) {
        *lock(&self.authenticate) = None;
        *lock(&self.query) = None;
    }

    /// One request to `guix authenticate`: `Ok(Ok(string))` for a reply
    /// with code 0, `Ok(Err(message))` for an error reply (the agent stays),
    /// `Err` when the agent failed (it is dropped).
    fn authenticate_request(&self, request: &[u8]) -> Result<Result<Vec<u8>, String>, EffectError> {
        let mut slot = lock(&self.authenticate);
        if slot
            .as_mut()
            .is_some_and(|agent| !agent.process.is_running())
        {
            *slot = None;
        }
        if slot.is_none() {
            *slot = Some(self.spawn_authenticate()?);
        }
        let Some(agent) = slot.as_mut() else {
            return Err(internal("the authentication agent vanished"));
        };
        let result = self.authenticate_exchange(agent, request);
        if result.is_err() {
            *slot = None;
        }
        result
    }

    fn authenticate_exchange(
        &self,
        agent: &mut AuthenticateAgent,
        request: &[u8],
    ) -> Result<Result<Vec<u8>, String>, EffectError> {
        agent
            .to_agent
            .write_all(request)
            .map_err(|e| sys_error("writing to file", &e))?;
        let code = read_integer(&mut agent.from_agent)?;
        let len = read_integer(&mut agent.from_agent)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= self.limits.authenticate_reply_max_bytes)
            .ok_or_else(|| {
                EffectError::new(
                    EffectErrorKind::Helper,
                    format!(
                        "reply of `{} authenticate' is too long ({len} bytes)",
                        self.program.display()
                    ),
                )
            })?;
        let mut text = vec![0; len];
        agent.from_agent.read_exact(&mut text).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                EffectError::new(EffectErrorKind::Helper, "unexpected end-of-file")
            } else {
                sys_error("reading from file", &e)
            }
        })?;
        Ok(if code == 0 {
            Ok(text)
        } else {
            Err(String::from_utf8_lossy(&text).into_owned())
        })
    }

    /// The running query agent, started (again) when there is none, it
    /// died, or it runs with other options.
    fn query_agent<'a>(
        &self,
        slot: &'a mut Option<QueryAgent>,
        options: &[(String, String)],
    ) -> Result<&'a mut QueryAgent, EffectError> {
        let packed = pack_options(options)?;
        if slot
            .as_mut()
            .is_some_and(|agent| agent.options != packed || !agent.process.is_running())
        {
            *slot = None;
        }
        if slot.is_none() {
            *slot = Some(self.spawn_query(packed)?);
        }
        slot.as_mut()
            .ok_or_else(|| internal("the substituter vanished"))
    }

    fn have(
        &self,
        agent: &mut QueryAgent,
        paths: &[StorePath],
    ) -> Result<BTreeSet<StorePath>, EffectError> {
        agent.send("have", paths)?;
        let mut found = BTreeSet::new();
        loop {
            let line = self.reply_line(agent)?;
            if line.is_empty() {
                return Ok(found);
            }
            // The C++ daemon takes these lines as they come; they become
            // store paths here, so they must at least look like ones.
            found.insert(self.store_path(&line)?);
            if found.len() > self.limits.reply_paths_max {
                return Err(self.too_much("paths"));
            }
        }
    }

    fn info(
        &self,
        agent: &mut QueryAgent,
        paths: &[StorePath],
    ) -> Result<BTreeMap<StorePath, SubstitutablePathInfo>, EffectError> {
        agent.send("info", paths)?;
        let mut expected: BTreeSet<&str> = paths.iter().map(StorePath::as_str).collect();
        let mut infos = BTreeMap::new();
        loop {
            let line = self.reply_line(agent)?;
            if line.is_empty() {
                return Ok(infos);
            }
            if !expected.remove(line.as_str()) {
                return Err(EffectError::new(
                    EffectErrorKind::Helper,
                    format!("got unexpected path `{line}' from substituter"),
                ));
            }
            let path = self.store_path(&line)?;
            let deriver = match self.reply_line(agent)? {
                deriver if deriver.is_empty() => None,
                deriver => Some(self.store_path(&deriver)?),
            };
            let count = self.reply_integer(agent)?;
            if count > self.limits.references_max as u64 {
                return Err(self.too_much("references"));
            }
            let mut references = BTreeSet::new();
            for _ in 0..count {
                let reference = self.reply_line(agent)?;
                references.insert(self.store_path(&reference)?);
            }
            let download_size = self.reply_integer(agent)?;
            let nar_size = self.reply_integer(agent)?;
            infos.insert(
                path,
                SubstitutablePathInfo {
                    deriver,
                    references,
                    download_size,
                    nar_size,
                },
            );
        }
    }

    /// The next line of the agent's reply (fd 4), without its newline.
    /// While waiting, the agent's stdout and stderr are drained first and
    /// passed on line by line (split at `\n` or `\r`), as the C++ daemon
    /// does; what is left of them when the line arrives is passed on too.
    fn reply_line(&self, agent: &mut QueryAgent) -> Result<String, EffectError> {
        loop {
            if let Some(end) = agent.replies.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = agent.replies.drain(..=end).collect();
                line.pop();
                if !agent.diagnostics.is_empty() {
                    let rest = std::mem::take(&mut agent.diagnostics);
                    agent.emit_diagnostics(&rest);
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if agent.replies.len() > self.limits.reply_line_max_bytes {
                return Err(self.too_much("bytes in a line"));
            }
            let (diagnostics_ready, replies_ready) = agent
                .wait_readable()
                .map_err(|e| sys_error("waiting for input from the substituter", &e))?;
            let mut buf = [0u8; 4096];
            if diagnostics_ready {
                let n = read_retrying(&agent.diagnostics_pipe, &mut buf)
                    .map_err(|e| sys_error("reading from substituter's stderr", &e))?;
                if n == 0 {
                    return Err(self.died());
                }
                agent.diagnostics.extend_from_slice(&buf[..n]);
                self.pass_diagnostics_on(agent);
            } else if replies_ready {
                let n = read_retrying(&agent.replies_pipe, &mut buf)
                    .map_err(|e| sys_error("reading from file", &e))?;
                if n == 0 {
                    return Err(self.died());
                }
                agent.replies.extend_from_slice(&buf[..n]);
            }
        }
    }

    fn reply_integer(&self, agent: &mut QueryAgent) -> Result<u64, EffectError> {
        let line = self.reply_line(agent)?;
        line.parse::<u64>().map_err(|_| {
            EffectError::new(
                EffectErrorKind::Helper,
                format!("integer expected from stream: {line}"),
            )
        })
    }

    /// Passes on every complete diagnostics line, and a too-long partial
    /// one.
    fn pass_diagnostics_on(&self, agent: &mut QueryAgent) {
        loop {
            let end = agent
                .diagnostics
                .iter()
                .position(|&b| b == b'\n')
                .or_else(|| agent.diagnostics.iter().position(|&b| b == b'\r'));
            let Some(end) = end else { break };
            let line: Vec<u8> = agent.diagnostics.drain(..=end).collect();
            agent.emit_diagnostics(&line);
        }
        if agent.diagnostics.len() > self.limits.diagnostics_line_max_bytes {
            let rest = std::mem::take(&mut agent.diagnostics);
            agent.emit_diagnostics(&rest);
        }
    }

    fn store_path(&self, text: &str) -> Result<StorePath, EffectError> {
        self.store
            .parse_path(text)
            .map_err(|e| EffectError::new(EffectErrorKind::Helper, e.to_string()))
    }

    fn died(&self) -> EffectError {
        EffectError::new(
            EffectErrorKind::Helper,
            format!("`{} substitute' died unexpectedly", self.program.display()),
        )
    }

    fn too_much(&self, what: &str) -> EffectError {
        EffectError::new(
            EffectErrorKind::Helper,
            format!(
                "`{} substitute' sent too many {what}",
                self.program.display()
            ),
        )
    }

    fn spawn_authenticate(&self) -> Result<AuthenticateAgent, EffectError> {
        let (stdin, to_agent) = pipe()?;
        let (from_agent, stdout) = pipe()?;
        // Replies come on stdout alone: the agent's stderr goes to the
        // daemon's, so that a stray warning cannot corrupt a reply.
        let process = spawn_agent(
            &self.program,
            &["authenticate"],
            &self.env,
            &[
                (stdin.as_fd().as_raw_fd(), 0),
                (stdout.as_fd().as_raw_fd(), 1),
            ],
        )
        .map_err(|e| self.exec_error(&e))?;
        Ok(AuthenticateAgent {
            to_agent: File::from(to_agent),
            from_agent: BufReader::new(File::from(from_agent)),
            process,
        })
    }

    fn spawn_query(&self, options: String) -> Result<QueryAgent, EffectError> {
        let (stdin, to_agent) = pipe()?;
        let (diagnostics, output) = pipe()?;
        let (replies, reply_end) = pipe()?;
        let mut env = self.env.clone();
        env.retain(|entry| !entry.as_bytes().starts_with(b"_NIX_OPTIONS="));
        let mut entry = b"_NIX_OPTIONS=".to_vec();
        entry.extend_from_slice(options.as_bytes());
        env.push(CString::new(entry).map_err(|_| invalid_options())?);
        let process = spawn_agent(
            &self.program,
            &["substitute", "--query"],
            &env,
            &[
                (stdin.as_fd().as_raw_fd(), 0),
                (output.as_fd().as_raw_fd(), 1),
                (output.as_fd().as_raw_fd(), 2),
                (reply_end.as_fd().as_raw_fd(), 4),
            ],
        )
        .map_err(|e| self.exec_error(&e))?;
        Ok(QueryAgent {
            to_agent: File::from(to_agent),
            diagnostics_pipe: File::from(diagnostics),
            replies_pipe: File::from(replies),
            diagnostics: Vec::new(),
            outbox: Vec::new(),
            replies: Vec::new(),
            options,
            process,
        })
    }

    fn exec_error(&self, err: &io::Error) -> EffectError {
        sys_error(format_args!("executing `{}'", self.program.display()), err)
    }
}

/// Starts `program` with `args` (and `program` itself as `argv[0]`), the
/// environment `env`, in a new session, in `/`, with each `(from, to)` of
/// `fds` duplicated onto descriptor `to`. Descriptors 0–2 not named in
/// `fds` are the daemon's own; nothing else is inherited (every other
/// descriptor of this process is close-on-exec). SIGPIPE, which Rust
/// programs ignore, is reset to its default, and no signal is blocked.
///
/// This uses `posix_spawn` rather than `std::process::Command`: a `Command`
/// with a `pre_exec` hook that puts a pipe on descriptor 4 may overwrite
/// std's own close-on-exec pipe for reporting `exec` failures, which takes
/// the lowest free descriptor — 4, if that is free at that moment in a busy
/// daemon — and then an `exec` failure goes unreported and its report ends
/// up in our reply pipe. `posix_spawn` reports `exec` failures itself, is
/// safe in a multi-threaded process, and applies the descriptor actions in
/// order; the sources are first moved above every target so that no action
/// clobbers a later one's source.
pub fn spawn_agent(
    program: &Path,
    args: &[&str],
    env: &[CString],
    fds: &[(RawFd, RawFd)],
) -> io::Result<AgentProcess> {
    let nul_error = || io::Error::new(io::ErrorKind::InvalidInput, "argument contains a NUL byte");
    let program_c = CString::new(program.as_os_str().as_bytes()).map_err(|_| nul_error())?;
    let mut argv_c = vec![program_c.clone()];
    for arg in args {
        argv_c.push(CString::new(*arg).map_err(|_| nul_error())?);
    }
    let argv: Vec<*mut libc::c_char> = argv_c
        .iter()
        .map(|a| a.as_ptr().cast_mut())
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect();
    let envp: Vec<*mut libc::c_char> = env
        .iter()
        .map(|e| e.as_ptr().cast_mut())
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect();

    // Move every source above every target (copies are close-on-exec and
    // closed when this function returns).
    let floor = fds.iter().map(|&(_, to)| to).max().unwrap_or(2) + 1;
    let mut sources: Vec<OwnedFd> = Vec::with_capacity(fds.len());
    for &(from, _) in fds {
        // SAFETY: the caller owns `from` and keeps it open for this call;
        // borrowing it only for the duplication is sound.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(from) };
        sources.push(rustix::io::fcntl_dupfd_cloexec(borrowed, floor)?);
    }

    let mut actions = SpawnFileActions::new()?;
    for (source, &(_, to)) in sources.iter().zip(fds) {
        actions.add_dup2(source.as_raw_fd(), to)?;
    }
    actions.add_chdir(c"/")?;
    let attributes = SpawnAttributes::new()?;

    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: `program_c`, `argv_c`
    // and `env` outlive it, `argv` and `envp` are NULL-terminated arrays of
    // pointers into them, and `actions`/`attributes` were initialised by
    // their constructors. posix_spawn does not keep any of them.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            program_c.as_ptr(),
            actions.as_ptr(),
            attributes.as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    drop(sources);
    rustix::process::Pid::from_raw(pid)
        .map(|pid| AgentProcess { pid, reaped: false })
        .ok_or_else(|| io::Error::other("posix_spawn returned no process id"))
}

/// A started agent process. Dropping it kills its process group (it leads
/// its own session) and reaps it.
pub struct AgentProcess {
    pid: rustix::process::Pid,
    reaped: bool,
}

impl AgentProcess {
    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw_nonzero().get().unsigned_abs()
    }

    /// Whether the process still runs; reaps it if it has exited.
    pub fn is_running(&mut self) -> bool {
        if self.reaped {
            return false;
        }
        match rustix::process::waitpid(Some(self.pid), rustix::process::WaitOptions::NOHANG) {
            Ok(None) => true,
            // Exited (now reaped), or not our child any more: either way
            // it cannot serve requests.
            Ok(Some(_)) | Err(_) => {
                self.reaped = true;
                false
            }
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // Until it is reaped, the pid (and so the group id) cannot be
        // reused, so this can only reach the agent and its children.
        let _ = rustix::process::kill_process_group(self.pid, rustix::process::Signal::KILL);
        let _ = rustix::process::waitpid(Some(self.pid), rustix::process::WaitOptions::empty());
    }
}

fn substituter_answer(diagnostics: Vec<Vec<u8>>, answer: EffectResult) -> EffectOutput {
    EffectOutput::Substituter {
        diagnostics,
        answer: answer.map(Box::new),
    }
}

/// `guix authenticate`: requests on its stdin, replies on its stdout.
struct AuthenticateAgent {
    // Field order is drop order: stdin is closed before the process is
    // killed.
    to_agent: File,
    from_agent: BufReader<File>,
    process: AgentProcess,
}

/// `guix substitute --query`: requests on its stdin, replies on its fd 4,
/// diagnostics on its stdout and stderr.
struct QueryAgent {
    to_agent: File,
    diagnostics_pipe: File,
    replies_pipe: File,
    /// Diagnostics read but not yet passed on (an incomplete line).
    diagnostics: Vec<u8>,
    /// Diagnostics lines passed on during the current request, prefixed
    /// `substitute: `; they go back with its answer.
    outbox: Vec<Vec<u8>>,
    /// Reply bytes read but not yet consumed (at most part of one reply
    /// after a request completes: the agent answers one request at a time).
    replies: Vec<u8>,
    /// The `_NIX_OPTIONS` the agent was started with.
    options: String,
    process: AgentProcess,
}

impl QueryAgent {
    fn emit_diagnostics(&mut self, text: &[u8]) {
        let mut line = b"substitute: ".to_vec();
        line.extend_from_slice(text);
        self.outbox.push(line);
    }

    /// Writes `<command> P1 P2 … \n`, a space after every path, as the C++
    /// daemon does.
    fn send(&mut self, command: &str, paths: &[StorePath]) -> Result<(), EffectError> {
        let mut request = Vec::with_capacity(
            command.len() + 2 + paths.iter().map(|p| p.as_str().len() + 1).sum::<usize>(),
        );
        request.extend_from_slice(command.as_bytes());
        request.push(b' ');
        for path in paths {
            request.extend_from_slice(path.as_str().as_bytes());
            request.push(b' ');
        }
        request.push(b'\n');
        self.to_agent
            .write_all(&request)
            .map_err(|e| sys_error("writing to file", &e))
    }

    /// Blocks until the diagnostics pipe or the reply pipe has something
    /// (or hung up); says which.
    fn wait_readable(&self) -> io::Result<(bool, bool)> {
        use rustix::event::{PollFd, PollFlags};
        let ready = PollFlags::IN | PollFlags::HUP | PollFlags::ERR;
        loop {
            let mut fds = [
                PollFd::new(&self.diagnostics_pipe, PollFlags::IN),
                PollFd::new(&self.replies_pipe, PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {
                    return Ok((
                        fds[0].revents().intersects(ready),
                        fds[1].revents().intersects(ready),
                    ));
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// `posix_spawn_file_actions_t`, destroyed on drop.
struct SpawnFileActions(Box<libc::posix_spawn_file_actions_t>);

impl SpawnFileActions {
    fn new() -> io::Result<SpawnFileActions> {
        // SAFETY: an all-zero value is only a placeholder of the right size;
        // it is initialised by `posix_spawn_file_actions_init` before use.
        let mut actions =
            Box::new(unsafe { std::mem::zeroed::<libc::posix_spawn_file_actions_t>() });
        // SAFETY: `actions` points to writable memory of the right type.
        check(unsafe { libc::posix_spawn_file_actions_init(&mut *actions) })?;
        Ok(SpawnFileActions(actions))
    }

    fn add_dup2(&mut self, from: RawFd, to: RawFd) -> io::Result<()> {
        // SAFETY: the actions object was initialised in `new`.
        check(unsafe { libc::posix_spawn_file_actions_adddup2(&mut *self.0, from, to) })
    }

    fn add_chdir(&mut self, dir: &std::ffi::CStr) -> io::Result<()> {
        // SAFETY: the actions object was initialised in `new`; glibc copies
        // the path.
        check(unsafe { libc::posix_spawn_file_actions_addchdir_np(&mut *self.0, dir.as_ptr()) })
    }

    fn as_ptr(&self) -> *const libc::posix_spawn_file_actions_t {
        &*self.0
    }
}

impl Drop for SpawnFileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed exactly once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut *self.0) };
    }
}

/// `posix_spawnattr_t` for an agent: new session, empty signal mask,
/// SIGPIPE back to its default; destroyed on drop.
struct SpawnAttributes(Box<libc::posix_spawnattr_t>);

impl SpawnAttributes {
    fn new() -> io::Result<SpawnAttributes> {
        // SAFETY: placeholder of the right size, initialised by
        // `posix_spawnattr_init` before use.
        let mut attributes = Box::new(unsafe { std::mem::zeroed::<libc::posix_spawnattr_t>() });
        // SAFETY: `attributes` points to writable memory of the right type.
        check(unsafe { libc::posix_spawnattr_init(&mut *attributes) })?;
        let mut attributes = SpawnAttributes(attributes);
        // SAFETY: `sigset_t` is plain data; `sigemptyset` initialises it.
        let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut pipe_only: libc::sigset_t = unsafe { std::mem::zeroed() };
        let flags = i32::from(libc::POSIX_SPAWN_SETSID)
            | libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_SETSIGDEF;
        // SAFETY: both sets are valid, writable `sigset_t`s, and the
        // attributes were initialised above; the setters copy the sets.
        unsafe {
            libc::sigemptyset(&mut empty);
            libc::sigemptyset(&mut pipe_only);
            libc::sigaddset(&mut pipe_only, libc::SIGPIPE);
            check(libc::posix_spawnattr_setsigmask(&mut *attributes.0, &empty))?;
            check(libc::posix_spawnattr_setsigdefault(
                &mut *attributes.0,
                &pipe_only,
            ))?;
            // The flags are small bit values; the API takes them as a short.
            check(libc::posix_spawnattr_setflags(
                &mut *attributes.0,
                flags as libc::c_short,
            ))?;
        }
        Ok(attributes)
    }

    fn as_ptr(&self) -> *const libc::posix_spawnattr_t {
        &*self.0
    }
}

impl Drop for SpawnAttributes {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed exactly once.
        unsafe { libc::posix_spawnattr_destroy(&mut *self.0) };
    }
}

/// `_NIX_OPTIONS`: `name=value\n` for each option, in name order, a later
/// value of the same name replacing an earlier one (the daemon's settings
/// are a map).
pub fn pack_options(options: &[(String, String)]) -> Result<String, EffectError> {
    let mut map = BTreeMap::new();
    for (name, value) in options {
        if name.contains('\n')
            || name.contains('=')
            || value.contains('\n')
            || name.contains('\0')
            || value.contains('\0')
        {
            return Err(invalid_options());
        }
        map.insert(name.as_str(), value.as_str());
    }
    let mut packed = String::new();
    for (name, value) in map {
        packed.push_str(name);
        packed.push('=');
        packed.push_str(value);
        packed.push('\n');
    }
    Ok(packed)
}

/// The key file must be readable by its owner alone, as the daemon checks.
fn check_secrecy(path: &Path) -> Result<(), EffectError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| sys_error(format_args!("getting status of `{}'", path.display()), &e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(EffectError::new(
            EffectErrorKind::Helper,
            format!(
                "file `{}' should be secret (inaccessible to everybody else)!",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Appends a `LEN:BYTES` argument of the authenticate protocol.
fn push_argument(request: &mut Vec<u8>, bytes: &[u8]) {
    request.extend_from_slice(bytes.len().to_string().as_bytes());
    request.push(b':');
    request.extend_from_slice(bytes);
}

/// Reads a decimal integer and the one byte after it (a space or a colon),
/// as the daemon's `readInteger`.
fn read_integer(reader: &mut BufReader<File>) -> Result<u64, EffectError> {
    // Twelve digits are far beyond any code or permitted length.
    const DIGITS_MAX: usize = 12;
    let mut value: u64 = 0;
    let mut digits = 0;
    loop {
        let byte = match reader.fill_buf() {
            Ok([]) => {
                return Err(EffectError::new(
                    EffectErrorKind::Helper,
                    "unexpected EOF reading an integer",
                ));
            }
            Ok(buf) => buf[0],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(sys_error("reading an integer", &e)),
        };
        reader.consume(1);
        if !byte.is_ascii_digit() {
            break;
        }
        digits += 1;
        if digits > DIGITS_MAX {
            break;
        }
        value = value * 10 + u64::from(byte - b'0');
    }
    if digits == 0 || digits > DIGITS_MAX {
        return Err(EffectError::new(
            EffectErrorKind::Helper,
            "invalid integer in a reply of the authentication agent",
        ));
    }
    Ok(value)
}

fn read_retrying(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut file = file;
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> Result<(OwnedFd, OwnedFd), EffectError> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| {
        let e = io::Error::from(e);
        EffectError::new(
            EffectErrorKind::Io(e.raw_os_error().unwrap_or(libc::EIO)),
            format!("creating pipe: {}", strerror(&e)),
        )
    })
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

fn invalid_options() -> EffectError {
    EffectError::new(EffectErrorKind::Invalid, "invalid option name/value")
}

fn internal(what: &str) -> EffectError {
    EffectError::new(EffectErrorKind::Helper, format!("internal error: {what}"))
}

fn lock<T>(mutex: &Mutex<Option<T>>) -> MutexGuard<'_, Option<T>> {
    match mutex.lock() {
        Ok(slot) => slot,
        // A panic during a request may have left its agent in the middle
        // of a reply; drop that agent, and the slot is sound again.
        Err(poisoned) => {
            let mut slot = poisoned.into_inner();
            *slot = None;
            mutex.clear_poison();
            slot
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guixd_core::HashAlgo;
    use guixd_core::config::Dirs;
    use std::sync::Arc;

    /// A stand-in for `guix` that speaks both agent protocols. It logs each
    /// start (with its `_NIX_OPTIONS`) to `<state>/agent.log`. Paths whose
    /// names contain `-avail` are substitutable; `-die` makes it exit
    /// mid-request, `-unexpected` makes it answer about another path,
    /// `-badint` sends a non-number. Signing a hash that starts with
    /// `dead` kills it; verifying a signature that does not start with
    /// `(signature ` fails with code 500.
    const FAKE_GUIX: &str = r#"#!/usr/bin/env python3
import os, sys
state = os.environ["GUIX_STATE_DIRECTORY"]
def log(msg):
    with open(os.path.join(state, "agent.log"), "a") as f:
        f.write(msg + "\n")

def authenticate():
    log("authenticate")
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    def reply(code, data):
        out.write(b"%d %d:" % (code, len(data)) + data)
        out.flush()
    while True:
        line = inp.readline()
        if not line:
            return
        cmd, _, rest = line[:-1].partition(b" ")
        args = []
        while rest:
            n, _, rest = rest.partition(b":")
            n = int(n)
            args.append(rest[:n])
            rest = rest[n:].lstrip(b" ")
        if cmd == b"sign":
            key, hexhash = args
            if hexhash.startswith(b"dead"):
                os._exit(3)
            reply(0, b"(signature " + hexhash + b" " + open(key, "rb").read().strip() + b")")
        elif cmd == b"verify":
            sig = args[0]
            if sig.startswith(b"(signature "):
                reply(0, sig.split(b" ")[1])
            else:
                reply(500, b"invalid signature")
        else:
            reply(404, b"unknown command")

def query():
    log("query " + os.environ.get("_NIX_OPTIONS", "").replace("\n", ";"))
    reply = os.fdopen(4, "w")
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        words = line.split()
        cmd, paths = words[0], words[1:]
        sys.stderr.write("looking for substitutes... 50.0%\rlooking for substitutes... 100.0%\n")
        sys.stderr.flush()
        out = []
        for p in paths:
            if "-die" in p:
                os._exit(1)
            if "-avail" not in p:
                continue
            if cmd == "have":
                out.append(p)
            elif "-unexpected" in p:
                out += [p + "x", "", "0", "1", "1"]
            elif "-badint" in p:
                out += [p, "", "many"]
            else:
                out += [p, p + ".drv", "2", p, p + "-dep", "123", "456"]
        out.append("")
        reply.write("".join(l + "\n" for l in out))
        reply.flush()

if sys.argv[1:] == ["authenticate"]:
    authenticate()
elif sys.argv[1:] == ["substitute", "--query"]:
    query()
else:
    sys.exit(2)
"#;

    struct Fixture {
        state: PathBuf,
        agents: Agents,
        diagnostics: Arc<Mutex<Vec<u8>>>,
    }

    fn fixture(tag: &str) -> Fixture {
        let state =
            std::env::temp_dir().join(format!("guixd-os-agents-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(state.join("etc")).unwrap();
        let program = state.join("guix");
        std::fs::write(&program, FAKE_GUIX).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let key = state.join("etc/signing-key.sec");
        std::fs::write(&key, "secret-key\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = OsConfig {
            dirs: Dirs {
                store: StoreDir::new("/gnu/store").unwrap(),
                state: state.clone(),
                log: state.join("log"),
                db: state.join("db"),
                conf: state.join("etc"),
                guix_program: program,
            },
            settings: Default::default(),
            uid: 0,
            gid: 0,
        };
        let diagnostics = Arc::new(Mutex::new(Vec::new()));
        let agents = Agents::new(&config);
        Fixture {
            state,
            agents,
            diagnostics,
        }
    }

    impl Fixture {
        /// `substitutes_have`, with the diagnostics kept aside.
        fn have(&self, paths: &[StorePath], options: &[(String, String)]) -> EffectResult {
            self.answer(self.agents.substitutes_have(paths, options))
        }

        /// `substitutes_info`, with the diagnostics kept aside.
        fn info(&self, paths: &[StorePath], options: &[(String, String)]) -> EffectResult {
            self.answer(self.agents.substitutes_info(paths, options))
        }

        fn answer(&self, result: EffectResult) -> EffectResult {
            match result {
                Ok(EffectOutput::Substituter {
                    diagnostics,
                    answer,
                }) => {
                    let mut kept = self.diagnostics.lock().unwrap();
                    for line in diagnostics {
                        kept.extend_from_slice(&line);
                    }
                    answer.map(|output| *output)
                }
                other => panic!("not a substituter answer: {other:?}"),
            }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            self.agents.stop();
            let _ = std::fs::remove_dir_all(&self.state);
        }
    }

    fn python_available() -> bool {
        std::process::Command::new("python3")
            .args(["-c", ""])
            .status()
            .is_ok_and(|s| s.success())
    }

    fn starts(f: &Fixture) -> Vec<String> {
        std::fs::read_to_string(f.state.join("agent.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn path(name: &str) -> StorePath {
        StoreDir::new("/gnu/store")
            .unwrap()
            .parse_path(&format!(
                "/gnu/store/0123456789abcdfghijklmnpqrsvwxyz-{name}"
            ))
            .unwrap()
    }

    fn options(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options_are_packed_sorted_and_checked() {
        assert_eq!(
            pack_options(&options(&[("b", "2"), ("a", "1 x"), ("b", "3")])).unwrap(),
            "a=1 x\nb=3\n"
        );
        assert_eq!(pack_options(&[]).unwrap(), "");
        for bad in [("a=b", "1"), ("a\nb", "1"), ("a", "1\n")] {
            assert_eq!(
                pack_options(&options(&[bad])).unwrap_err().message,
                "invalid option name/value"
            );
        }
    }

    #[test]
    fn packing_any_options_is_last_wins_sorted_or_refused() {
        fn prop(options: Vec<(String, String)>) -> bool {
            let bad = options
                .iter()
                .any(|(k, v)| k.contains(['\n', '=', '\0']) || v.contains(['\n', '\0']));
            match pack_options(&options) {
                Err(_) => bad,
                Ok(packed) => {
                    let expected: BTreeMap<&str, &str> = options
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let parsed: Vec<(&str, &str)> = packed
                        .split_terminator('\n')
                        .map(|line| line.split_once('=').unwrap_or((line, "")))
                        .collect();
                    !bad && packed.ends_with('\n') != expected.is_empty()
                        && parsed == expected.into_iter().collect::<Vec<_>>()
                }
            }
        }
        guixd_testkit::check(prop as fn(Vec<(String, String)>) -> bool);
    }

    #[test]
    fn sign_and_verify_through_the_agent() {
        if !python_available() {
            return;
        }
        let f = fixture("auth");
        let hash = Hash::digest(HashAlgo::Sha256, b"hello");
        let signature = match f.agents.sign(&hash).unwrap() {
            EffectOutput::Signature(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            signature,
            format!("(signature {} secret-key)", hash.to_hex()).into_bytes()
        );
        assert_eq!(
            f.agents.verify(&signature).unwrap(),
            EffectOutput::VerifiedHash(hash.to_hex())
        );
        // An error reply passes the agent's text through and keeps it.
        let err = f.agents.verify(b"garbage").unwrap_err();
        assert_eq!(
            (err.kind, err.message.as_str()),
            (EffectErrorKind::Invalid, "invalid signature")
        );
        assert!(f.agents.verify(&signature).is_ok());
        assert_eq!(starts(&f), ["authenticate"]);
    }

    #[test]
    fn a_dead_authentication_agent_is_restarted() {
        if !python_available() {
            return;
        }
        let f = fixture("authdie");
        let dead = Hash::parse_hex(HashAlgo::Sha256, &format!("dead{}", "0".repeat(60))).unwrap();
        let err = f.agents.sign(&dead).unwrap_err();
        assert_eq!(err.message, "unexpected EOF reading an integer");
        let hash = Hash::digest(HashAlgo::Sha256, b"x");
        assert!(f.agents.sign(&hash).is_ok());
        assert_eq!(starts(&f), ["authenticate", "authenticate"]);
    }

    #[test]
    fn the_secret_key_must_be_secret() {
        let f = fixture("secret");
        let key = f.state.join("etc/signing-key.sec");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = f
            .agents
            .sign(&Hash::digest(HashAlgo::Sha256, b"x"))
            .unwrap_err();
        assert_eq!(
            err.message,
            format!(
                "file `{}' should be secret (inaccessible to everybody else)!",
                key.display()
            )
        );
        std::fs::remove_file(&key).unwrap();
        let err = f
            .agents
            .sign(&Hash::digest(HashAlgo::Sha256, b"x"))
            .unwrap_err();
        assert_eq!(
            err.message,
            format!(
                "getting status of `{}': No such file or directory",
                key.display()
            )
        );
        assert_eq!(err.kind, EffectErrorKind::Io(libc::ENOENT));
        assert!(starts(&f).is_empty(), "no agent was started");
    }

    #[test]
    fn a_missing_program_is_an_exec_error() {
        let f = fixture("noexec");
        let program = f.state.join("guix");
        std::fs::remove_file(&program).unwrap();
        let err = f.have(&[path("a")], &[]).unwrap_err();
        assert_eq!(
            err.message,
            format!(
                "executing `{}': No such file or directory",
                program.display()
            )
        );
        assert_eq!(err.kind, EffectErrorKind::Io(libc::ENOENT));
    }

    #[test]
    fn have_and_info_queries() {
        if !python_available() {
            return;
        }
        let f = fixture("query");
        let opts = options(&[
            ("substitute-urls", "https://example.org"),
            ("build-cores", "2"),
        ]);
        let asked = [path("a-avail"), path("b"), path("c-avail")];
        assert_eq!(
            f.have(&asked, &opts).unwrap(),
            EffectOutput::Paths([path("a-avail"), path("c-avail")].into_iter().collect())
        );
        let infos = match f.info(&asked, &opts).unwrap() {
            EffectOutput::SubstitutableInfos(infos) => infos,
            other => panic!("{other:?}"),
        };
        assert_eq!(infos.len(), 2);
        let a = &infos[&path("a-avail")];
        assert_eq!(a.deriver, Some(path("a-avail.drv")));
        assert_eq!(
            a.references,
            [path("a-avail"), path("a-avail-dep")].into_iter().collect()
        );
        assert_eq!((a.download_size, a.nar_size), (123, 456));
        // Nothing asked, nothing started.
        assert_eq!(
            f.have(&[], &opts).unwrap(),
            EffectOutput::Paths(BTreeSet::new())
        );
        assert_eq!(
            starts(&f),
            ["query build-cores=2;substitute-urls=https://example.org;"]
        );
        // The diagnostics were passed on as the C++ daemon splits them: at
        // the first `\n` when there is one, else at the first `\r`.
        let once =
            "substitute: looking for substitutes... 50.0%\rlooking for substitutes... 100.0%\n";
        assert_eq!(
            String::from_utf8(f.diagnostics.lock().unwrap().clone()).unwrap(),
            once.repeat(2)
        );
    }

    #[test]
    fn new_options_restart_the_substituter() {
        if !python_available() {
            return;
        }
        let f = fixture("restart");
        let asked = [path("a-avail")];
        f.have(&asked, &options(&[("a", "1")])).unwrap();
        f.have(&asked, &options(&[("a", "1")])).unwrap();
        f.have(&asked, &options(&[("a", "2")])).unwrap();
        assert_eq!(starts(&f), ["query a=1;", "query a=2;"]);
    }

    #[test]
    fn substituter_failures_have_the_daemons_words_and_restart_it() {
        if !python_available() {
            return;
        }
        let f = fixture("qdie");
        let program = f.state.join("guix");
        let err = f.have(&[path("x-die")], &[]).unwrap_err();
        assert_eq!(
            (err.kind, err.message),
            (
                EffectErrorKind::Helper,
                format!("`{} substitute' died unexpectedly", program.display())
            )
        );
        let err = f.info(&[path("x-avail-unexpected")], &[]).unwrap_err();
        assert_eq!(
            err.message,
            format!(
                "got unexpected path `{}x' from substituter",
                path("x-avail-unexpected")
            )
        );
        let err = f.info(&[path("x-avail-badint")], &[]).unwrap_err();
        assert_eq!(err.message, "integer expected from stream: many");
        assert!(f.have(&[path("y-avail")], &[]).is_ok());
        assert_eq!(starts(&f).len(), 4, "each failure dropped its agent");
    }

    #[test]
    fn concurrent_queries_share_one_agent() {
        if !python_available() {
            return;
        }
        let f = Arc::new(fixture("conc"));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let f = f.clone();
                std::thread::spawn(move || {
                    for i in 0..5 {
                        let p = path(&format!("t{t}-{i}-avail"));
                        assert_eq!(
                            f.have(std::slice::from_ref(&p), &[]).unwrap(),
                            EffectOutput::Paths([p].into_iter().collect())
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(starts(&f).len(), 1);
    }

    #[test]
    fn stopping_kills_and_reaps() {
        if !python_available() {
            return;
        }
        let f = fixture("stop");
        f.have(&[path("a-avail")], &[]).unwrap();
        let pid = lock(&f.agents.query).as_ref().unwrap().process.pid();
        f.agents.stop();
        // Reaped: the pid is no longer our child.
        let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
        assert!(rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG).is_err());
        f.have(&[path("a-avail")], &[]).unwrap();
        assert_eq!(starts(&f).len(), 2);
    }
}

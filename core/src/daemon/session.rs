//! One client connection, from the greeting to the last operation: the
//! worker protocol of Guix 1.5.0 as the session coroutine speaks it.
//!
//! Keeps true:
//! - the bytes and texts a client sees are those of the C++ daemon: stderr
//!   frames, error texts, sorted sets, which errors end the session (a
//!   request that cannot be *parsed* ends it after the `ERROR` frame; an
//!   error during the work itself does not; spec 01 §4.1);
//! - a request's fields are read before anything is done for it, except
//!   the NAR of add-to-store and the stream of import-paths, which are
//!   parsed incrementally as they arrive and never held whole;
//! - every store item is written under a temporary name or a lock, made
//!   canonical, moved into place and only then registered; a session that
//!   goes away leaves at most invalid leftovers, which the machine cleans
//!   up through `leftovers` (and a collection's `gc.lock`, released);
//! - collect-garbage, find-roots, verify-store and optimise-store run as
//!   this session's work (`gc.rs`); a TCP peer is refused collect-garbage
//!   before its fields are read, and repair is refused to untrusted
//!   peers after `startWork`, as in the daemon.

use super::report::{self, Level, LogType, ReportOptions};
use super::sched::{BuildMode, BuildOptions, GoalExit, GoalKey, GoalResult};
use super::task::{
    Completion, Ctx, Disconnected, LockHandle, Request as TaskRequest, SessionWake, Shared,
};
use super::{ConnId, Peer, PeerKind};
use crate::config::Config;
use crate::derivation::{self, Derivation};
use crate::effect::{
    DumpId, Effect, EffectError, EffectOutput, Registration, RegistrationGroup,
    SubstitutablePathInfo, UploadId, UploadKind, ValidPathInfo,
};
use crate::export::{self, ExportOutcome};
use crate::hash::{Hash, HashAlgo, Hasher};
use crate::nar::{NarEvent, NarParser, NarTree};
use crate::settings::Settings;
use crate::store_path::{StoreDir, StorePath};
use crate::wire::{self, HelloDecoder, HelloEvent, Op, Reply, Request, RequestDecoder, WireError};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// The line the daemon logs when it accepts a connection.
pub(crate) fn accepted_line(peer: &Peer) -> String {
    match &peer.kind {
        PeerKind::Unix { pid, uid, .. } => match &peer.user_name {
            Some(name) => format!("accepted connection from pid {pid}, user {name}"),
            None => format!("accepted connection from pid {pid}, user {uid}"),
        },
        PeerKind::Tcp { address } => format!("accepted connection from {address}"),
    }
}

/// The effects that clean up what a finished or dropped session left
/// behind: its unfinished uploads and dumps.
pub(crate) fn leftovers(shared: &Shared) -> Vec<Effect> {
    let uploads = shared
        .uploads
        .iter()
        .map(|&upload| Effect::UploadDiscard { upload });
    let dumps = shared.dumps.iter().map(|&dump| Effect::DumpEnd { dump });
    let gc = shared.gc_owner.map(|owner| Effect::GcRelease { owner });
    uploads.chain(dumps).chain(gc).collect()
}

/// Serves one connection until the client leaves or the session must end.
pub(crate) async fn run(ctx: Ctx, config: Rc<Config>, peer: Peer, conn: ConnId) {
    let mut session = Session::new(ctx, config, peer, conn);
    match session.serve().await {
        Ok(()) | Err(End::Disconnected) => {}
        Err(End::Fatal(message)) => session
            .ctx
            .log_daemon(format!("unexpected build daemon error: {message}")),
    }
}

/// Why a session stops before the client closed it.
#[derive(Debug)]
enum End {
    /// The client went away.
    Disconnected,
    /// The request could not be taken; the error was sent if possible.
    Fatal(String),
}

impl From<Disconnected> for End {
    fn from(_: Disconnected) -> End {
        End::Disconnected
    }
}

/// An operation's failure, as the client will see it.
#[derive(Debug)]
struct OpError {
    message: String,
    status: u32,
}

impl OpError {
    fn new(message: impl Into<String>) -> OpError {
        OpError {
            message: message.into(),
            status: 1,
        }
    }
}

impl From<EffectError> for OpError {
    fn from(e: EffectError) -> OpError {
        OpError::new(e.message)
    }
}

impl<E: std::fmt::Display> From<E> for OpError
where
    E: std::error::Error,
{
    fn from(e: E) -> OpError {
        OpError::new(e.to_string())
    }
}

type OpResult<T> = Result<T, OpError>;

struct Session {
    ctx: Ctx,
    config: Rc<Config>,
    peer: Peer,
    conn: ConnId,
    store: StoreDir,
    /// Unix peers with uid 0 or the daemon's uid.
    trusted: bool,
    client_version: u32,
    settings: Settings,
    verbosity: u32,
    build_verbosity: u32,
    keep_failed: bool,
    keep_going: bool,
    log_type: LogType,
    print_build_trace: bool,
    /// Between `start_work` and `stop_work`: messages go to the client.
    working: bool,
}

impl Session {
    fn new(ctx: Ctx, config: Rc<Config>, peer: Peer, conn: ConnId) -> Session {
        let trusted = match peer.kind {
            PeerKind::Unix { uid, .. } => uid == 0 || uid == config.daemon_uid,
            PeerKind::Tcp { .. } => false,
        };
        Session {
            store: config.dirs.store.clone(),
            settings: config.settings.clone(),
            verbosity: config.verbosity,
            build_verbosity: 0,
            keep_failed: false,
            keep_going: false,
            log_type: LogType::Pretty,
            print_build_trace: false,
            ctx,
            config,
            peer,
            conn,
            trusted,
            client_version: 0,
            working: false,
        }
    }

    fn is_remote(&self) -> bool {
        matches!(self.peer.kind, PeerKind::Tcp { .. })
    }

    fn client_minor(&self) -> u8 {
        wire::protocol_minor(self.client_version)
    }

    // ---- the conversation

    async fn serve(&mut self) -> Result<(), End> {
        self.handshake().await?;
        let limits = self.config.limits.wire.clone();
        let store = self.store.clone();
        loop {
            let mut decoder = RequestDecoder::new(self.client_minor(), limits.clone())
                .assert_store_paths(store.clone());
            let remote = self.is_remote();
            let decoded = self
                .ctx
                .read_with(|input| {
                    let step = decoder.feed(input);
                    // The daemon refuses GC from TCP before reading its
                    // fields: whether they arrived yet must not matter.
                    let remote_gc = |op| remote && op == Some(Op::CollectGarbage);
                    match step {
                        Ok(f) if remote_gc(f.item.as_ref().map(Request::op)) => {
                            Ok((f.consumed, Some(Decoded::RemoteGc)))
                        }
                        _ if remote_gc(decoder.pending_op()) => Ok((0, Some(Decoded::RemoteGc))),
                        Ok(f) => Ok((f.consumed, f.item.map(Decoded::Request))),
                        Err(e) => Err((e, decoder.pending_op())),
                    }
                })
                .await;
            let request = match decoded {
                // EOF between requests is how a client says goodbye. EOF
                // inside one ends the session all the same, with the
                // daemon's words for a client that may still read.
                Err(Disconnected) if decoder.pending_op().is_some() => {
                    return self.fatal("unexpected end-of-file");
                }
                Err(Disconnected) => return Ok(()),
                Ok(Ok(Decoded::Request(r))) => r,
                Ok(Ok(Decoded::RemoteGc)) => {
                    return self.fatal("Garbage collection is disabled for remote hosts.");
                }
                Ok(Err((e @ WireError::InvalidOperation(_), _))) | Ok(Err((e, Some(_)))) => {
                    return self.fatal(&e.to_string());
                }
                // A bad operation word gets no reply at all.
                Ok(Err((e, None))) => return Err(End::Fatal(e.to_string())),
            };
            self.perform(request).await?;
        }
    }

    async fn handshake(&mut self) -> Result<(), End> {
        let mut decoder = HelloDecoder::new();
        loop {
            let event = match self
                .ctx
                .read_with(|input| decoder.feed(input).map(|f| (f.consumed, f.item)))
                .await?
            {
                Ok(e) => e,
                Err(e) => return Err(End::Fatal(e.to_string())),
            };
            match event {
                HelloEvent::MagicAccepted => {
                    let mut hello = Vec::new();
                    wire::encode_server_hello(&mut hello);
                    self.ctx.send(&hello);
                }
                HelloEvent::Hello(hello) => {
                    // The CPU to pin a session to is a per-process notion
                    // that a daemon serving every client from one process
                    // does not apply; reserve-space is kept at start-up for
                    // all sessions alike. Both fields are read and ignored.
                    self.client_version = hello.version;
                    break;
                }
            }
        }
        self.start_work();
        let opened = self.open_store().await;
        self.finish(opened, |_| Reply::SetOptions);
        Ok(())
    }

    /// What the C++ daemon does when a session opens its store: the
    /// per-user profile directory of the peer.
    async fn open_store(&mut self) -> OpResult<()> {
        if let PeerKind::Unix { uid, .. } = self.peer.kind {
            match self.peer.user_name.clone() {
                Some(user) => {
                    self.ctx
                        .effect(Effect::CreateUserProfileDir { user, uid })
                        .await?;
                }
                None => self.log(Level::Info, format!("user with UID {uid} not found")),
            }
        }
        Ok(())
    }

    /// Sends `ERROR` for a request that could not be taken and ends the
    /// session, as the daemon does for errors raised before `startWork`.
    fn fatal<T>(&mut self, message: &str) -> Result<T, End> {
        self.stop_work_error(message, 1);
        Err(End::Fatal(message.to_owned()))
    }

    // ---- stderr channel

    fn start_work(&mut self) {
        self.working = true;
    }

    /// Ends the work period: `LAST` then the reply made by `reply`, or
    /// `ERROR` when the operation failed (the session goes on).
    fn finish<T>(&mut self, result: OpResult<T>, reply: impl FnOnce(T) -> Reply) {
        match result {
            Ok(value) => {
                self.working = false;
                let mut out = Vec::new();
                wire::write_stderr_last(&mut out);
                let reply = reply(value);
                // Set-options (and the greeting) have nothing after LAST.
                if reply != Reply::SetOptions {
                    wire::encode_reply(&reply, self.client_minor(), &mut out);
                }
                self.ctx.send(&out);
            }
            Err(e) => self.stop_work_error(&e.message, e.status),
        }
    }

    fn stop_work_error(&mut self, message: &str, status: u32) {
        self.working = false;
        let mut out = Vec::new();
        wire::write_stderr_error(&mut out, message, status, self.client_minor());
        self.ctx.send(&out);
    }

    /// A daemon message: to the client during work when its level passes the
    /// session's verbosity, otherwise to the daemon's own stderr.
    fn log(&mut self, level: Level, message: String) {
        let level = level as u32;
        if self.working {
            if level <= self.verbosity {
                let mut text = message.into_bytes();
                text.push(b'\n');
                let mut out = Vec::new();
                wire::write_stderr_next(&mut out, &text);
                self.ctx.send(&out);
            }
        } else if level <= self.config.verbosity {
            self.ctx.log_daemon(message);
        }
    }

    // ---- operations

    async fn perform(&mut self, request: Request) -> Result<(), End> {
        use Request as R;
        match request {
            R::IsValidPath { path } => {
                self.start_work();
                let r = async {
                    let path = self.store.parse_path(&path)?;
                    self.is_valid(&path).await
                }
                .await;
                self.finish(r, Reply::IsValidPath);
            }
            R::QueryValidPaths { paths } => {
                let paths = self.store_paths(&paths)?;
                self.start_work();
                let r = self.valid_subset(paths).await;
                self.finish(r, |set| Reply::QueryValidPaths(strings(&set)));
            }
            R::HasSubstitutes { path } => {
                let path = self.store_path(&path)?;
                self.start_work();
                let r = self.substitutable(vec![path.clone()]).await;
                self.finish(r, |set| Reply::HasSubstitutes(set.contains(&path)));
            }
            R::QuerySubstitutablePaths { paths } => {
                let paths = self.store_paths(&paths)?;
                self.start_work();
                let r = self.substitutable(paths).await;
                self.finish(r, |set| Reply::QuerySubstitutablePaths(strings(&set)));
            }
            R::QueryPathHash { path } => {
                let path = self.store_path(&path)?;
                self.start_work();
                let r = self.path_info(&path).await;
                self.finish(r, |info| Reply::QueryPathHash(info.nar_hash.to_hex()));
            }
            R::QueryReferences { path } => {
                let path = self.store_path(&path)?;
                self.start_work();
                let r = self.path_info(&path).await;
                self.finish(r, |info| Reply::QueryReferences(strings(&info.references)));
            }
            R::QueryReferrers { path } => {
                let path = self.store_path(&path)?;
                self.start_work();
                let r = self.paths_effect(Effect::QueryReferrers { path }).await;
                self.finish(r, |set| Reply::QueryReferrers(strings(&set)));
            }
            R::QueryValidDerivers { path } => {
                let path = self.store_path(&path)?;
                self.start_work();
                let r = self.paths_effect(Effect::QueryValidDerivers { path }).await;
                self.finish(r, |set| Reply::QueryValidDerivers(strings(&set)));
            }
            R::QueryDerivationOutputs { path } => {
                let path = self.store_path(&path)?;
                self.start_work();
                let r = self.derivation_outputs(path).await;
                self.finish(r, |outs| {
                    let set: BTreeSet<StorePath> = outs.into_values().collect();
                    Reply::QueryDerivationOutputs(strings(&set))
                });
            }
            R::QueryDerivationOutputNames { path } => {
                let path = self.store_path(&path)?;
                self.start_work();
                let r = self.derivation_outputs(path).await;
                self.finish(r, |outs| {
                    Reply::QueryDerivationOutputNames(outs.into_keys().collect())
                });
            }
            R::QueryDeriver { path } => {
                let path = self.store_path(&path)?;
                self.start_work();
                let r = self.path_info(&path).await;
                self.finish(r, |info| Reply::QueryDeriver(optional_path(info.deriver)));
            }
            R::QueryPathInfo { path } => {
                let path = self.store_path(&path)?;
                self.start_work();
                let r = self.path_info(&path).await;
                self.finish(r, |info| Reply::QueryPathInfo(path_info_reply(info)));
            }
            R::QueryPathFromHashPart { hash_part } => {
                self.start_work();
                let r = async {
                    if hash_part.len() != 32 {
                        return Err(OpError::new("invalid hash part"));
                    }
                    match self
                        .ctx
                        .effect(Effect::QueryPathFromHashPart { hash_part })
                        .await?
                    {
                        EffectOutput::Path(p) => Ok(p),
                        other => Err(unexpected(other)),
                    }
                }
                .await;
                self.finish(r, |p| Reply::QueryPathFromHashPart(optional_path(p)));
            }
            R::QueryAllValidPaths => {
                self.start_work();
                let r = self.paths_effect(Effect::QueryAllValidPaths).await;
                self.finish(r, |set| Reply::QueryAllValidPaths(strings(&set)));
            }
            R::QueryFailedPaths => {
                self.start_work();
                let r = match self.ctx.effect(Effect::QueryFailedPaths).await {
                    Ok(EffectOutput::Strings(s)) => Ok(s),
                    Ok(other) => Err(unexpected(other)),
                    Err(e) => Err(e.into()),
                };
                self.finish(r, |set| Reply::QueryFailedPaths(set.into_iter().collect()));
            }
            R::ClearFailedPaths { paths } => {
                self.start_work();
                let r = self
                    .ctx
                    .effect(Effect::ClearFailedPaths { paths })
                    .await
                    .map_err(OpError::from);
                self.finish(r, |_| Reply::ClearFailedPaths);
            }
            R::AddTextToStore {
                name,
                contents,
                references,
            } => {
                let references = self.store_paths(&references)?;
                self.start_work();
                let r = self.add_text(name, contents, references).await;
                self.finish(r, |p| Reply::AddTextToStore(p.into_string()));
            }
            R::AddToStore(header) => {
                let r = self.add_to_store(header).await?;
                self.finish(r, |p| Reply::AddToStore(p.into_string()));
            }
            R::ExportPath { path, sign } => {
                let path = self.store_path(&path)?;
                self.start_work();
                let r = self.export_path(path, sign).await;
                self.finish(r, |()| Reply::ExportPath);
            }
            R::ImportPaths => {
                self.start_work();
                let r = self.import_paths().await?;
                self.finish(r, |paths| {
                    Reply::ImportPaths(paths.into_iter().map(StorePath::into_string).collect())
                });
            }
            R::AddTempRoot { path } => {
                let path = self.store_path(&path)?;
                self.start_work();
                self.ctx.add_temp_root(&path);
                self.finish(Ok(()), |()| Reply::AddTempRoot);
            }
            R::AddIndirectRoot { file } => {
                let link = abs_path(&file);
                self.start_work();
                let r = self
                    .ctx
                    .effect(Effect::AddIndirectRoot { link })
                    .await
                    .map_err(OpError::from);
                self.finish(r, |_| Reply::AddIndirectRoot);
            }
            R::SyncWithGc => {
                // This daemon's collector excludes sessions path by path,
                // through the lock table and temporary roots, so there is no
                // global lock to wait for.
                self.start_work();
                self.finish(Ok(()), |()| Reply::SyncWithGc);
            }
            R::SetOptions(options) => self.set_options(options)?,
            R::QuerySubstitutablePathInfo { path } => {
                let path = abs_path(&path);
                self.start_work();
                let r = async {
                    let Ok(path) = self.store.parse_path(&path) else {
                        return Ok(None);
                    };
                    let mut infos = self.substitutable_infos(vec![path.clone()]).await?;
                    Ok(infos.remove(&path))
                }
                .await;
                self.finish(r, |info| {
                    Reply::QuerySubstitutablePathInfo(info.map(substitutable_reply))
                });
            }
            R::QuerySubstitutablePathInfos { paths } => {
                let paths = self.store_paths(&paths)?;
                self.start_work();
                let r = self.substitutable_infos(paths).await;
                self.finish(r, |infos| {
                    Reply::QuerySubstitutablePathInfos(
                        infos
                            .into_iter()
                            .map(|(p, i)| (p.into_string(), substitutable_reply(i)))
                            .collect(),
                    )
                });
            }
            R::BuiltinBuilders => {
                self.start_work();
                self.finish(Ok(()), |()| {
                    Reply::BuiltinBuilders(vec!["download".into(), "git-download".into()])
                });
            }
            R::SubstituteUrls => {
                self.start_work();
                let urls = self.settings.effective_substitute_urls();
                self.finish(Ok(urls), Reply::SubstituteUrls);
            }
            R::EnsurePath { path } => {
                let path = self.store_path(&path)?;
                self.start_work();
                let r = self.ensure_path(path).await?;
                self.finish(r, |()| Reply::EnsurePath);
            }
            R::BuildPaths { things, mode } => {
                if mode == 1 && !self.trusted {
                    return self.fatal("repairing is a privileged operation");
                }
                self.start_work();
                let r = self.build_paths(things, BuildMode::from_wire(mode)).await?;
                self.finish(r, |()| Reply::BuildPaths);
            }
            R::CollectGarbage(request) => {
                let paths = self.store_paths(&request.paths)?;
                self.start_work();
                let r = self.collect_garbage(request, paths).await;
                self.finish(r, Reply::CollectGarbage);
            }
            R::FindRoots => {
                self.start_work();
                let ctx = self.ctx.clone();
                let r = super::gc::find_roots(&ctx, &mut |l, m| self.log(l, m)).await;
                self.finish(r.map_err(OpError::new), Reply::FindRoots);
            }
            R::OptimiseStore => {
                self.start_work();
                let ctx = self.ctx.clone();
                let r = super::gc::optimise(&ctx, &mut |l, m| self.log(l, m)).await;
                self.finish(r.map_err(OpError::new), |()| Reply::OptimiseStore);
            }
            R::VerifyStore {
                check_contents,
                repair,
            } => {
                self.start_work();
                let r = self.verify_store(check_contents, repair).await?;
                self.finish(r, Reply::VerifyStore);
            }
        }
        Ok(())
    }

    // ---- garbage collection and store maintenance (see `gc.rs`)

    /// Collect-garbage (op 20), after `startWork`.
    async fn collect_garbage(
        &mut self,
        request: wire::GcRequest,
        paths: Vec<StorePath>,
    ) -> OpResult<wire::GcResult> {
        if request.ignore_liveness {
            return Err(OpError::new("you are not allowed to ignore liveness"));
        }
        let typed = self.settings.typed();
        let mut collect = super::gc::CollectRequest::new(
            request.action,
            paths.into_iter().collect(),
            request.max_freed_bytes,
        );
        collect.keep_outputs = typed.gc_keep_outputs;
        collect.keep_derivations = typed.gc_keep_derivations;
        collect.seed = self.config.seed ^ self.ctx.fresh_id();
        let ctx = self.ctx.clone();
        let store = self.store.clone();
        super::gc::collect(&ctx, &store, collect, &mut |l, m| self.log(l, m))
            .await
            .map_err(OpError::new)
    }

    /// Verify-store (op 35), after `startWork`: whether errors remain.
    /// With `repair`, each modified path, and each vanished one that valid
    /// paths still need, is repaired right after the line that reported
    /// it, as the daemon's `repairPath` does (guixd has no substitution to
    /// try first, so it rebuilds the path's valid deriver).
    async fn verify_store(
        &mut self,
        check_contents: bool,
        repair: bool,
    ) -> Result<OpResult<bool>, End> {
        if repair && !self.trusted {
            return Ok(Err(OpError::new("you are not privileged to repair paths")));
        }
        let report = match self
            .ctx
            .effect(Effect::VerifyStore { check_contents })
            .await
        {
            Ok(EffectOutput::Verified(report)) => report,
            Ok(other) => return Ok(Err(unexpected(other))),
            Err(e) => return Ok(Err(e.into())),
        };
        let mut errors = if repair {
            report.other_errors
        } else {
            report.errors
        };
        let mut repairs = report.repairable.into_iter().peekable();
        for (i, (level, text)) in report.messages.into_iter().enumerate() {
            self.log(super::gc::level_of(level), text);
            while let Some(r) = repairs.next_if(|r| r.message_index == i) {
                if !repair {
                    continue;
                }
                if let Err(message) = self.repair_path(&r.path).await? {
                    let prefix = if r.vanished { "warning" } else { "error" };
                    self.log(Level::Error, format!("{prefix}: {message}"));
                    errors = true;
                }
            }
        }
        Ok(Ok(errors))
    }

    /// Repairs a valid path by rebuilding its valid deriver in repair mode;
    /// the error text when that is impossible.
    async fn repair_path(&mut self, path: &StorePath) -> Result<Result<(), String>, End> {
        let cannot = || format!("cannot repair path `{path}'");
        let deriver = match self.path_info(path).await {
            Ok(info) => info.deriver,
            Err(_) => None,
        };
        let Some(drv) = deriver else {
            return Ok(Err(cannot()));
        };
        if !matches!(self.is_valid(&drv).await, Ok(true)) {
            return Ok(Err(cannot()));
        }
        let results = self
            .realise(
                vec![GoalKey::Derivation {
                    drv,
                    outputs: BTreeSet::new(),
                    mode: BuildMode::Repair,
                }],
                false,
            )
            .await?;
        Ok(match results.into_iter().next().flatten() {
            Some(r) if r.exit == GoalExit::Success => Ok(()),
            Some(GoalResult {
                escaped: Some(message),
                ..
            }) => Err(message),
            _ => Err(cannot()),
        })
    }

    // ---- builds

    /// Build-things (op 9): one goal per derivation (with the outputs
    /// asked for) or path, shared with every other session that needs it.
    async fn build_paths(
        &mut self,
        things: Vec<String>,
        mode: BuildMode,
    ) -> Result<OpResult<()>, End> {
        // The daemon reads the list into a sorted set.
        let things: BTreeSet<String> = things.into_iter().collect();
        let mut keys = Vec::with_capacity(things.len());
        for thing in &things {
            let (path, outputs) = match thing.split_once('!') {
                Some((p, o)) => (
                    p,
                    o.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                ),
                None => (thing.as_str(), BTreeSet::new()),
            };
            let key = if path.ends_with(".drv") {
                match self.store.parse_path(path) {
                    Ok(drv) => GoalKey::Derivation { drv, outputs, mode },
                    Err(e) => return Ok(Err(e.into())),
                }
            } else {
                match self.store.parse_path(thing) {
                    Ok(p) => GoalKey::Substitute(p),
                    Err(e) => return Ok(Err(e.into())),
                }
            };
            keys.push(key);
        }
        let report = self.report_options();
        if let Some(line) = report.message(
            Level::Debug,
            0,
            &format!(
                "building {}",
                report::show_paths(things.iter().map(String::as_str))
            ),
        ) {
            self.send_next(&line);
        }
        if let Some(line) = report.message(Level::Debug, 1, "entered goal loop") {
            self.send_next(&line);
        }
        let results = self.realise(keys.clone(), self.keep_going).await?;
        let mut failed = BTreeSet::new();
        let (mut timed_out, mut permanent) = (false, false);
        for (key, result) in keys.iter().zip(&results) {
            let Some(r) = result else {
                continue;
            };
            if let Some(message) = &r.escaped {
                return Ok(Err(OpError::new(message.clone())));
            }
            timed_out |= r.timed_out;
            permanent |= r.permanent;
            if r.exit == GoalExit::Failed {
                failed.insert(key.path().as_str().to_owned());
            }
            // Like the C++ goals, protect what was realised for the rest
            // of the session.
            if let GoalKey::Derivation { drv, .. } = key {
                self.ctx.add_temp_root(drv);
            }
            for out in r.outputs.values() {
                self.ctx.add_temp_root(out);
            }
        }
        if failed.is_empty() {
            return Ok(Ok(()));
        }
        Ok(Err(OpError {
            message: format!(
                "build of {} failed",
                report::show_paths(failed.iter().map(String::as_str))
            ),
            status: failure_status(timed_out, permanent),
        }))
    }

    /// Ensure-path (op 10): valid, or made valid by substitution.
    async fn ensure_path(&mut self, path: StorePath) -> Result<OpResult<()>, End> {
        match self.is_valid(&path).await {
            Ok(true) => return Ok(Ok(())),
            Ok(false) => {}
            Err(e) => return Ok(Err(e)),
        }
        let results = self
            .realise(vec![GoalKey::Substitute(path.clone())], false)
            .await?;
        match results.into_iter().next().flatten() {
            Some(r) if r.exit == GoalExit::Success => Ok(Ok(())),
            Some(GoalResult {
                escaped: Some(message),
                ..
            }) => Ok(Err(OpError::new(message))),
            r => {
                let (timed_out, permanent) =
                    r.map_or((false, false), |r| (r.timed_out, r.permanent));
                Ok(Err(OpError {
                    message: format!("path `{path}' does not exist and cannot be created"),
                    status: failure_status(timed_out, permanent),
                }))
            }
        }
    }

    /// Waits for goals, sending their messages, traces and builder output
    /// to the client as they come (as far as its output room allows).
    async fn realise(
        &mut self,
        goals: Vec<GoalKey>,
        keep_going: bool,
    ) -> Result<Vec<Option<GoalResult>>, End> {
        while self.ctx.take_build_event().is_some() {}
        let token = self.ctx.start(TaskRequest::Realise {
            goals,
            keep_going,
            options: self.build_options(),
        });
        let report = self.report_options();
        loop {
            match self.ctx.wait_session_event(token).await {
                SessionWake::Event => {
                    if let Some(event) = self.ctx.take_build_event() {
                        if let Some(frame) = report.frame(&event) {
                            self.ctx.send(&frame);
                        }
                    }
                }
                SessionWake::Completed(Completion::Realised(results)) => return Ok(results),
                SessionWake::Completed(other) => {
                    return Err(End::Fatal(format!(
                        "guixd bug: a build request completed with {other:?}"
                    )));
                }
                // The C++ daemon interrupts the work of a client that hung
                // up; the machine withdraws the request when the session
                // ends, and goals nobody else needs stop.
                SessionWake::Disconnected => return Err(End::Disconnected),
            }
        }
    }

    /// The options goals created for this session's requests run with.
    fn build_options(&self) -> Rc<BuildOptions> {
        let client_uid = match self.peer.kind {
            PeerKind::Unix { uid, .. } => Some(uid),
            PeerKind::Tcp { .. } => None,
        };
        Rc::new(BuildOptions {
            owner: Some(self.conn),
            settings: Rc::new(self.settings.clone()),
            keep_failed: self.keep_failed,
            keep_going: self.keep_going,
            client_uid,
            print_build_trace: self.print_build_trace,
        })
    }

    /// How this client wants build events shown.
    fn report_options(&self) -> ReportOptions {
        ReportOptions {
            verbosity: self.verbosity,
            build_verbosity: self.build_verbosity,
            print_build_trace: self.print_build_trace,
            multiplexed: self.settings.typed().multiplexed_build_output,
            log_type: self.log_type,
        }
    }

    /// Sends one line of log text as a `STDERR_NEXT` frame.
    fn send_next(&mut self, text: &[u8]) {
        let mut out = Vec::new();
        wire::write_stderr_next(&mut out, text);
        self.ctx.send(&out);
    }

    // ---- pieces shared by operations

    /// A path the decoder already asserted; a failure here would be the
    /// decoder's bug, and still ends the session with the daemon's text.
    fn store_path(&mut self, raw: &str) -> Result<StorePath, End> {
        match self.store.parse_path(raw) {
            Ok(p) => Ok(p),
            Err(e) => self.fatal(&e.to_string()),
        }
    }

    fn store_paths(&mut self, raw: &[String]) -> Result<Vec<StorePath>, End> {
        raw.iter().map(|p| self.store_path(p)).collect()
    }

    async fn path_info(&mut self, path: &StorePath) -> OpResult<ValidPathInfo> {
        match self
            .ctx
            .effect(Effect::QueryPathInfo { path: path.clone() })
            .await?
        {
            EffectOutput::PathInfo(Some(info)) => Ok(info),
            EffectOutput::PathInfo(None) => {
                Err(OpError::new(format!("path `{path}' is not valid")))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn is_valid(&mut self, path: &StorePath) -> OpResult<bool> {
        Ok(self.valid_subset(vec![path.clone()]).await?.contains(path))
    }

    async fn valid_subset(&mut self, paths: Vec<StorePath>) -> OpResult<BTreeSet<StorePath>> {
        if paths.is_empty() {
            return Ok(BTreeSet::new());
        }
        self.paths_effect(Effect::QueryValidPaths { paths }).await
    }

    async fn paths_effect(&mut self, effect: Effect) -> OpResult<BTreeSet<StorePath>> {
        match self.ctx.effect(effect).await? {
            EffectOutput::Paths(set) => Ok(set),
            other => Err(unexpected(other)),
        }
    }

    async fn derivation_outputs(
        &mut self,
        drv: StorePath,
    ) -> OpResult<BTreeMap<String, StorePath>> {
        match self
            .ctx
            .effect(Effect::QueryDerivationOutputs { drv })
            .await?
        {
            EffectOutput::DerivationOutputs(Some(outs)) => Ok(outs),
            // The 1.5.0 daemon's format string was never filled in.
            EffectOutput::DerivationOutputs(None) => Err(OpError::new("path `%1%' is not valid")),
            other => Err(unexpected(other)),
        }
    }

    fn substitutes_enabled(&self) -> bool {
        self.settings.typed().use_substitutes
    }

    fn helper_options(&self) -> Vec<(String, String)> {
        self.settings
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    async fn substitutable(&mut self, paths: Vec<StorePath>) -> OpResult<BTreeSet<StorePath>> {
        if !self.substitutes_enabled() || paths.is_empty() {
            return Ok(BTreeSet::new());
        }
        let options = self.helper_options();
        match self
            .substituter(Effect::SubstitutesHave { paths, options })
            .await?
        {
            EffectOutput::Paths(set) => Ok(set),
            other => Err(unexpected(other)),
        }
    }

    async fn substitutable_infos(
        &mut self,
        paths: Vec<StorePath>,
    ) -> OpResult<BTreeMap<StorePath, SubstitutablePathInfo>> {
        if !self.substitutes_enabled() || paths.is_empty() {
            return Ok(BTreeMap::new());
        }
        let options = self.helper_options();
        match self
            .substituter(Effect::SubstitutesInfo { paths, options })
            .await?
        {
            EffectOutput::SubstitutableInfos(infos) => Ok(infos),
            other => Err(unexpected(other)),
        }
    }

    /// A request to the substituter: what it printed meanwhile goes to the
    /// client first, as `STDERR_NEXT` lines, then its answer is taken.
    async fn substituter(&mut self, effect: Effect) -> OpResult<EffectOutput> {
        match self.ctx.effect(effect).await? {
            EffectOutput::Substituter {
                diagnostics,
                answer,
            } => {
                for line in &diagnostics {
                    self.send_next(line);
                }
                Ok(*answer?)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Protects `path` and takes its lock unless it is already valid;
    /// `None` means someone made it valid meanwhile: nothing to do.
    async fn lock_invalid(&mut self, path: &StorePath) -> OpResult<Option<LockHandle>> {
        self.ctx.add_temp_root(path);
        if self.is_valid(path).await? {
            return Ok(None);
        }
        let lock = self.ctx.lock(BTreeSet::from([path.clone()])).await;
        match self.is_valid(path).await {
            Ok(false) => Ok(Some(lock)),
            Ok(true) => {
                self.ctx.unlock(lock, true);
                Ok(None)
            }
            Err(e) => {
                self.ctx.unlock(lock, false);
                Err(e)
            }
        }
    }

    /// Deduplicates (when enabled) and registers a freshly installed item,
    /// then gives its lock back, deleting the lock file once it is valid.
    async fn register_locked(&mut self, lock: LockHandle, item: Registration) -> OpResult<()> {
        let result = async {
            if self.settings.typed().auto_optimise_store {
                self.ctx
                    .effect(Effect::Deduplicate {
                        path: item.info.path.clone(),
                    })
                    .await?;
            }
            self.ctx
                .register(RegistrationGroup { items: vec![item] })
                .await
                .map_err(OpError::from)
        }
        .await;
        self.ctx.unlock(lock, result.is_ok());
        result
    }

    /// Runs `effect` while holding `lock`, giving the lock back (without
    /// deleting its file) when the effect fails.
    async fn effect_locked(&mut self, lock: LockHandle, effect: Effect) -> OpResult<EffectOutput> {
        match self.ctx.effect(effect).await {
            Ok(out) => Ok(out),
            Err(e) => {
                self.ctx.unlock(lock, false);
                Err(e.into())
            }
        }
    }

    // ---- add-text-to-store

    async fn add_text(
        &mut self,
        name: String,
        contents: Vec<u8>,
        references: Vec<StorePath>,
    ) -> OpResult<StorePath> {
        let references: BTreeSet<StorePath> = references.into_iter().collect();
        let path = self
            .store
            .make_text_path(&name, &Hash::sha256(&contents), &references)?;
        // The daemon registers references before it checks a derivation's
        // outputs, so an invalid reference is the error a client sees first.
        let valid = self
            .valid_subset(references.iter().cloned().collect())
            .await?;
        if valid.len() != references.len() {
            // Literally so: the 1.5.0 daemon's format string was never filled.
            return Err(OpError::new("path `%1%' is not valid"));
        }
        let derivation_outputs = if path.is_derivation() {
            self.check_derivation(&path, &contents).await?
        } else {
            Vec::new()
        };
        let Some(lock) = self.lock_invalid(&path).await? else {
            return Ok(path);
        };
        let measured = match self
            .effect_locked(
                lock,
                Effect::WriteText {
                    dest: path.clone(),
                    contents,
                },
            )
            .await?
        {
            EffectOutput::Measured(m) => m,
            other => {
                self.ctx.unlock(lock, false);
                return Err(unexpected(other));
            }
        };
        let info = ValidPathInfo {
            path: path.clone(),
            deriver: None,
            nar_hash: measured.nar_hash,
            references,
            registration_time: self.ctx.now_s(),
            nar_size: measured.nar_size,
        };
        self.register_locked(
            lock,
            Registration {
                info,
                derivation_outputs,
            },
        )
        .await?;
        Ok(path)
    }

    /// Parses a `.drv` about to become valid and checks its output paths
    /// (spec 02 §6.3); returns its outputs for `DerivationOutputs`.
    async fn check_derivation(
        &mut self,
        drv_path: &StorePath,
        text: &[u8],
    ) -> OpResult<Vec<(String, StorePath)>> {
        let drv = parse_drv(drv_path.as_str(), text)?;
        let mut input_hashes = BTreeMap::new();
        for input in drv.input_drvs.keys() {
            let hash = self.drv_hash(input).await?;
            input_hashes.insert(input.clone(), hash);
        }
        drv.check_outputs(&self.store, drv_path, |p| {
            input_hashes
                .get(p)
                .copied()
                .ok_or_else(|| format!("path `{p}' is not valid"))
        })
        .map_err(|e| OpError::new(e.to_string()))?;
        drv.outputs
            .iter()
            .map(|(id, out)| Ok((id.clone(), self.store.parse_path(&out.path)?)))
            .collect()
    }

    /// `hashDerivationModulo` of a valid derivation, memoised daemon-wide
    /// (a `.drv` path names its contents, so the memo never goes stale).
    async fn drv_hash(&mut self, drv_path: &str) -> OpResult<Hash> {
        // An explicit stack, so that a deep input graph cannot overflow the
        // real one.
        let mut stack: Vec<(String, Option<Derivation>)> = vec![(drv_path.to_owned(), None)];
        while let Some((path, parsed)) = stack.pop() {
            if self.ctx.drv_hash_cached(&path).is_some() {
                continue;
            }
            let drv = match parsed {
                Some(d) => d,
                None => {
                    let sp = self.store.parse_path(&path)?;
                    let bytes = match self
                        .ctx
                        .effect(Effect::ReadStoreFile {
                            path: sp,
                            max_bytes: self.config.limits.drv_file_max_bytes,
                        })
                        .await?
                    {
                        EffectOutput::Bytes(b) => b,
                        other => return Err(unexpected(other)),
                    };
                    parse_drv(&path, &bytes)?
                }
            };
            let missing: Vec<String> = drv
                .input_drvs
                .keys()
                .filter(|i| self.ctx.drv_hash_cached(i).is_none())
                .cloned()
                .collect();
            if missing.is_empty() {
                let ctx = &self.ctx;
                let h = drv.hash_modulo(|i| {
                    ctx.drv_hash_cached(i)
                        .ok_or_else(|| OpError::new(format!("path `{i}' is not valid")))
                })?;
                self.ctx.remember_drv_hash(path, h);
            } else {
                if stack.len() > DRV_GRAPH_WALK_MAX {
                    return Err(OpError::new(format!(
                        "derivation graph of `{drv_path}' is too large"
                    )));
                }
                stack.push((path, Some(drv)));
                stack.extend(missing.into_iter().map(|m| (m, None)));
            }
        }
        self.ctx
            .drv_hash_cached(drv_path)
            .ok_or_else(|| OpError::new(format!("guixd bug: no hash for `{drv_path}'")))
    }

    // ---- add-to-store

    /// Receives the NAR of add-to-store into an upload, then makes it a
    /// store item. NAR syntax errors end the session (the daemon parses the
    /// NAR before starting work); everything after is an ordinary error.
    async fn add_to_store(
        &mut self,
        header: wire::AddToStoreHeader,
    ) -> Result<OpResult<StorePath>, End> {
        let (recursive, algo_name) = header.method();
        let algo = HashAlgo::parse(algo_name);
        let kind = if recursive {
            UploadKind::Recursive
        } else {
            UploadKind::Flat
        };
        // With an unknown algorithm the NAR is still read to its end, so the
        // session stays in step, but nothing is written.
        let mut upload = None;
        let mut write_error = None;
        if let Some(algo) = algo {
            let id = self.ctx.new_upload();
            match self
                .ctx
                .effect(Effect::UploadStart {
                    upload: id,
                    kind,
                    algo,
                })
                .await
            {
                Ok(_) => upload = Some(id),
                Err(e) => {
                    self.ctx.forget_upload(id);
                    write_error = Some(e.message);
                }
            }
        }
        let received = self.receive_nar(&mut upload, kind).await?;
        self.start_work();
        let result = async {
            if algo.is_none() {
                // The 1.5.0 daemon hashes with "no algorithm" and fails so.
                return Err(OpError::new("unknown hash type"));
            }
            if !recursive && !received.single_regular_file {
                return Err(OpError::new("regular file expected"));
            }
            if let Some(message) = write_error.or(received.write_error) {
                return Err(OpError::new(message));
            }
            let upload = upload.ok_or_else(|| OpError::new("guixd bug: upload vanished"))?;
            let measured = match self.ctx.effect(Effect::UploadFinish { upload }).await? {
                EffectOutput::Measured(m) => m,
                other => return Err(unexpected(other)),
            };
            let path = self.store.make_fixed_output_path(
                recursive,
                &measured.content_hash,
                &header.name,
            )?;
            self.install_upload(upload, &path, measured, BTreeSet::new(), None, Vec::new())
                .await?;
            if !recursive {
                // A flat item is what a fixed-output derivation may reuse
                // later; the index is an optimisation, so a failure is only
                // logged.
                let index = Effect::IndexFlatContent {
                    path: path.clone(),
                    hash: measured.content_hash,
                };
                if let Err(e) = self.ctx.write_db(index).await {
                    self.ctx.log_daemon(format!("error: {}", e.message));
                }
            }
            Ok(path)
        }
        .await;
        self.discard_upload(upload).await;
        Ok(result)
    }

    /// Makes a finished upload the valid item `path`, unless `path` is
    /// valid already.
    async fn install_upload(
        &mut self,
        upload: UploadId,
        path: &StorePath,
        measured: crate::effect::Measured,
        references: BTreeSet<StorePath>,
        deriver: Option<StorePath>,
        derivation_outputs: Vec<(String, StorePath)>,
    ) -> OpResult<()> {
        let Some(lock) = self.lock_invalid(path).await? else {
            return Ok(());
        };
        self.effect_locked(
            lock,
            Effect::UploadInstall {
                upload,
                dest: path.clone(),
            },
        )
        .await?;
        self.ctx.forget_upload(upload);
        let info = ValidPathInfo {
            path: path.clone(),
            deriver,
            nar_hash: measured.nar_hash,
            references,
            registration_time: self.ctx.now_s(),
            nar_size: measured.nar_size,
        };
        self.register_locked(
            lock,
            Registration {
                info,
                derivation_outputs,
            },
        )
        .await
    }

    /// Discards an upload unless it was installed.
    async fn discard_upload(&mut self, upload: Option<UploadId>) {
        if let Some(upload) = upload {
            if self.ctx.has_upload(upload) {
                // A failed discard leaves a temporary directory the next
                // start-up removes; the client's answer does not depend on it.
                let _ = self.ctx.effect(Effect::UploadDiscard { upload }).await;
                self.ctx.forget_upload(upload);
            }
        }
    }

    /// Reads one NAR from the client, forwarding its bytes to `upload` in
    /// bounded chunks, one chunk in flight at a time. Stops forwarding (and
    /// discards the upload) when writing fails or a flat upload turns out
    /// not to be one file, but always reads the NAR to its end.
    async fn receive_nar(
        &mut self,
        upload: &mut Option<UploadId>,
        kind: UploadKind,
    ) -> Result<ReceivedNar, End> {
        let mut parser = NarParser::new(self.config.limits.nar.clone());
        let chunk_max = self.config.limits.upload_chunk_bytes;
        let mut received = ReceivedNar {
            single_regular_file: true,
            write_error: None,
        };
        loop {
            let mut chunk = Vec::new();
            let mut not_a_file = false;
            let step = self
                .ctx
                .read_with(|input| {
                    let mut used = 0;
                    while used < input.len() && chunk.len() < chunk_max {
                        let step = parser.feed(&input[used..]).map_err(|e| e.to_string())?;
                        let n = step.consumed;
                        if matches!(
                            step.event(),
                            Some(NarEvent::Directory { .. } | NarEvent::Symlink { .. })
                        ) {
                            not_a_file = true;
                        }
                        chunk.extend_from_slice(&input[used..used + n]);
                        used += n;
                        if step.is_done() || step.needs_more() {
                            break;
                        }
                    }
                    let ready = parser.is_done() || chunk.len() >= chunk_max;
                    Ok::<_, String>((used, ready.then_some(())))
                })
                .await
                // The input ended inside the NAR: the upload goes, and a
                // client that may still read gets the daemon's words.
                .unwrap_or_else(|Disconnected| Err("unexpected end-of-file".to_owned()));
            if let Err(message) = step {
                let id = upload.take();
                self.discard_upload(id).await;
                return self.fatal(&message);
            }
            if not_a_file {
                received.single_regular_file = false;
                if kind == UploadKind::Flat {
                    // Read to its end, then refused; none of it needs the disk.
                    let id = upload.take();
                    self.discard_upload(id).await;
                }
            }
            if let Some(id) = *upload {
                if !chunk.is_empty() {
                    if let Err(e) = self
                        .ctx
                        .effect(Effect::UploadChunk {
                            upload: id,
                            data: chunk,
                        })
                        .await
                    {
                        received.write_error = Some(e.message);
                        let id = upload.take();
                        self.discard_upload(id).await;
                    }
                }
            }
            if parser.is_done() {
                return Ok(received);
            }
        }
    }

    // ---- export

    async fn export_path(&mut self, path: StorePath, sign: bool) -> OpResult<()> {
        self.log(Level::Info, format!("exporting path `{path}'"));
        let info = self.path_info(&path).await?;
        let dump = self.ctx.new_dump();
        let result = self.export_stream(dump, &path, &info, sign).await;
        let _ = self.ctx.effect(Effect::DumpEnd { dump }).await;
        self.ctx.forget_dump(dump);
        result
    }

    async fn export_stream(
        &mut self,
        dump: DumpId,
        path: &StorePath,
        info: &ValidPathInfo,
        sign: bool,
    ) -> OpResult<()> {
        self.ctx
            .effect(Effect::DumpStart {
                dump,
                path: path.clone(),
            })
            .await?;
        // The signature covers every byte from the NAR through the deriver.
        let mut signed = sign.then(|| Hasher::new(HashAlgo::Sha256));
        loop {
            if self.ctx.output_room().await.is_err() {
                // Nobody reads the rest; the session ends after this op.
                return Err(OpError::new("unexpected end-of-file"));
            }
            let (data, end) = match self
                .ctx
                .effect(Effect::DumpNext {
                    dump,
                    max_bytes: EXPORT_CHUNK_BYTES,
                })
                .await?
            {
                EffectOutput::DumpChunk { data, end } => (data, end),
                other => return Err(unexpected(other)),
            };
            if let Some(h) = signed.as_mut() {
                h.update(&data);
            }
            if let Some((hash, _size)) = end {
                // Refuse to spread a modified item to other machines.
                if hash != info.nar_hash {
                    return Err(OpError::new(format!(
                        "hash of path `{path}' has changed from `{}' to `{}'!",
                        info.nar_hash.to_hex(),
                        hash.to_hex()
                    )));
                }
                self.send_write_frame(&data);
                break;
            }
            self.send_write_frame(&data);
        }
        let references: Vec<String> = strings(&info.references);
        let deriver = info.deriver.as_ref().map_or("", |d| d.as_str());
        let mut trailer = Vec::new();
        export::encode_export_meta(path.as_str(), &references, deriver, &mut trailer);
        let signature = match signed {
            Some(mut h) => {
                h.update(&trailer);
                match self.ctx.effect(Effect::Sign { hash: h.finish() }).await? {
                    EffectOutput::Signature(s) => Some(s),
                    other => return Err(unexpected(other)),
                }
            }
            None => None,
        };
        export::encode_export_signature(signature.as_deref(), &mut trailer);
        self.send_write_frame(&trailer);
        Ok(())
    }

    fn send_write_frame(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(data.len() + 24);
        wire::write_stderr_write(&mut out, data);
        self.ctx.send(&out);
    }

    // ---- import

    /// Reads an export bundle through `STDERR_READ` requests and makes each
    /// item valid, in stream order. The stream is read after work started,
    /// so its errors are ordinary errors.
    async fn import_paths(&mut self) -> Result<OpResult<Vec<StorePath>>, End> {
        let limits = export::ExportLimits {
            nar: self.config.limits.nar.clone(),
            trailer: self.config.limits.wire.clone(),
        };
        let mut parser = export::ExportParser::new(self.store.clone(), limits);
        let mut imported = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut upload: Option<UploadId> = None;
        let mut in_nar = false;
        // The item's name comes after its NAR: each NAR is also kept, up
        // to a derivation's size limit, in case it turns out to be a `.drv`
        // whose outputs must be registered.
        let drv_nar_max = usize::try_from(self.config.limits.drv_file_max_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(DRV_NAR_OVERHEAD_BYTES);
        let mut drv_nar: Option<Vec<u8>> = None;
        let result = loop {
            let mut nar_bytes = Vec::new();
            let mut event = None;
            let mut used = 0;
            let mut failure = None;
            while used < pending.len()
                || event.is_none() && used == pending.len() && !pending.is_empty()
            {
                match parser.feed(&pending[used..]) {
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                    Ok(step) => {
                        if in_nar {
                            nar_bytes.extend_from_slice(&pending[used..used + step.consumed]);
                        }
                        used += step.consumed;
                        match step.outcome {
                            ExportOutcome::NeedMore => break,
                            ExportOutcome::Nar(_) => {
                                if nar_bytes.len() >= self.config.limits.upload_chunk_bytes {
                                    break;
                                }
                            }
                            ExportOutcome::ItemStart => {
                                in_nar = true;
                                event = Some(Import::ItemStart);
                                break;
                            }
                            ExportOutcome::NarEnd => {
                                in_nar = false;
                            }
                            ExportOutcome::Item(item) => {
                                event = Some(Import::Item(Box::new(item)));
                                break;
                            }
                            ExportOutcome::End => {
                                event = Some(Import::End);
                                break;
                            }
                        }
                    }
                }
            }
            pending.drain(..used);
            if let Some(message) = failure {
                break Err(OpError::new(message));
            }
            if let Some(kept) = &mut drv_nar {
                if kept.len() + nar_bytes.len() <= drv_nar_max {
                    kept.extend_from_slice(&nar_bytes);
                } else {
                    drv_nar = None;
                }
            }
            if let Some(id) = upload {
                if !nar_bytes.is_empty() {
                    if let Err(e) = self
                        .ctx
                        .effect(Effect::UploadChunk {
                            upload: id,
                            data: nar_bytes,
                        })
                        .await
                    {
                        break Err(e.into());
                    }
                }
            }
            match event {
                Some(Import::End) => break Ok(imported),
                Some(Import::ItemStart) => {
                    let id = self.ctx.new_upload();
                    if let Err(e) = self
                        .ctx
                        .effect(Effect::UploadStart {
                            upload: id,
                            kind: UploadKind::Recursive,
                            algo: HashAlgo::Sha256,
                        })
                        .await
                    {
                        self.ctx.forget_upload(id);
                        break Err(e.into());
                    }
                    upload = Some(id);
                    drv_nar = Some(Vec::new());
                    continue;
                }
                Some(Import::Item(item)) => {
                    let Some(id) = upload.take() else {
                        break Err(OpError::new("guixd bug: imported item without upload"));
                    };
                    let r = self.import_item(id, &item, drv_nar.take()).await;
                    self.discard_upload(Some(id)).await;
                    match r {
                        Ok(path) => imported.push(path),
                        Err(e) => break Err(e),
                    }
                    continue;
                }
                None => {}
            }
            if !pending.is_empty() {
                // The parser stopped to flush a full chunk; go on parsing.
                continue;
            }
            let data = self.read_client_data().await?;
            if data.is_empty() {
                break Err(OpError::new("unexpected end-of-file"));
            }
            pending = data;
        };
        self.discard_upload(upload).await;
        Ok(result)
    }

    /// Verifies, installs and registers one imported item. `nar` is its
    /// NAR when it was small enough to keep, which a `.drv` must be.
    async fn import_item(
        &mut self,
        upload: UploadId,
        item: &export::ExportedItem,
        nar: Option<Vec<u8>>,
    ) -> OpResult<StorePath> {
        let path = self.store.parse_path(&item.path)?;
        let Some(signature) = &item.signature else {
            return Err(OpError::new(format!(
                "imported archive of `{path}' lacks a signature"
            )));
        };
        let covered = match self
            .ctx
            .effect(Effect::Verify {
                signature: signature.clone(),
            })
            .await?
        {
            EffectOutput::VerifiedHash(h) => h,
            other => return Err(unexpected(other)),
        };
        if covered != item.signed_hash.to_hex() {
            return Err(OpError::new(
                "signed hash doesn't match actual contents of imported archive; \
                 archive could be corrupt, or someone is trying to import a Trojan horse",
            ));
        }
        let measured = match self.ctx.effect(Effect::UploadFinish { upload }).await? {
            EffectOutput::Measured(m) => m,
            other => return Err(unexpected(other)),
        };
        let references: BTreeSet<StorePath> = item
            .references
            .iter()
            .map(|r| self.store.parse_path(r))
            .collect::<Result<_, _>>()?;
        // An item may refer to itself; every other reference must be valid
        // already (the exporter sends references first).
        let others: Vec<StorePath> = references.iter().filter(|r| **r != path).cloned().collect();
        let valid = self.valid_subset(others.clone()).await?;
        if valid.len() != others.len() {
            return Err(OpError::new("path `%1%' is not valid"));
        }
        // The deriver is kept only if it is itself valid.
        let deriver = if item.deriver.is_empty() {
            None
        } else {
            let d = self.store.parse_path(&item.deriver)?;
            self.is_valid(&d).await?.then_some(d)
        };
        // An imported derivation is checked as an added one is.
        let derivation_outputs = if path.is_derivation() {
            let text = self.imported_drv_text(&path, nar)?;
            self.check_derivation(&path, &text).await?
        } else {
            Vec::new()
        };
        self.install_upload(
            upload,
            &path,
            measured,
            references,
            deriver,
            derivation_outputs,
        )
        .await?;
        Ok(path)
    }

    /// The contents of an imported `.drv`, from the NAR it came in, which
    /// must hold one regular file no larger than a derivation may be.
    fn imported_drv_text(&self, path: &StorePath, nar: Option<Vec<u8>>) -> OpResult<Vec<u8>> {
        let too_large = || OpError::new(format!("derivation `{path}' is too large"));
        let nar = nar.ok_or_else(too_large)?;
        match NarTree::from_nar(&nar, self.config.limits.nar.clone()) {
            Ok(NarTree::File { contents, .. }) => {
                if contents.len() as u64 > self.config.limits.drv_file_max_bytes {
                    return Err(too_large());
                }
                Ok(contents)
            }
            Ok(_) => Err(OpError::new(format!(
                "derivation `{path}' is not a regular file"
            ))),
            Err(e) => Err(OpError::new(e.to_string())),
        }
    }

    /// One `STDERR_READ` round trip: asks for up to 32 KiB, as the daemon's
    /// buffered source does, and returns what the client sent.
    async fn read_client_data(&mut self) -> Result<Vec<u8>, End> {
        let mut out = Vec::new();
        wire::write_stderr_read(&mut out, wire::STDERR_READ_CHUNK_BYTES);
        self.ctx.send(&out);
        let mut reader = wire::BytesDecoder::new(u64::from(wire::STDERR_READ_CHUNK_BYTES));
        match self
            .ctx
            .read_with(|input| reader.feed(input).map(|f| (f.consumed, f.item)))
            .await?
        {
            Ok(data) => Ok(data),
            Err(e) => Err(End::Fatal(e.to_string())),
        }
    }

    // ---- set-options

    fn set_options(&mut self, o: wire::ClientOptions) -> Result<(), End> {
        let mut settings = self.settings.clone();
        settings.set(
            "build-fallback",
            if o.try_fallback { "true" } else { "false" },
        );
        self.verbosity = o.verbosity;
        // Kept build trees are handed to local users only.
        self.keep_failed = o.keep_failed && !self.is_remote();
        self.keep_going = o.keep_going;
        if let Some(t) = o.log_type {
            self.log_type = LogType::from_wire(t);
        }
        if let Some(b) = o.print_build_trace {
            self.print_build_trace = b;
        }
        if let Some(n) = o.max_build_jobs {
            settings.set("build-max-jobs", &n.to_string());
        }
        if let Some(n) = o.max_silent_time {
            settings.set("build-max-silent-time", &n.to_string());
        }
        if let Some(v) = o.build_verbosity {
            self.build_verbosity = v;
        }
        if let Some(n) = o.build_cores {
            settings.set("build-cores", &n.to_string());
        }
        // A daemon started with --no-substitutes cannot be overridden.
        if let Some(use_substitutes) = o.use_substitutes {
            if self.settings.typed().use_substitutes {
                settings.set(
                    "build-use-substitutes",
                    if use_substitutes { "true" } else { "false" },
                );
            }
        }
        let mut unknown_users = Vec::new();
        for (name, value) in &o.overrides {
            match name.as_str() {
                "build-timeout"
                | "build-max-silent-time"
                | "build-max-jobs"
                | "build-cores"
                | "build-repeat"
                | "multiplexed-build-output" => settings.set(name, value),
                // Over TCP the peer's uid is unknown and the daemon would
                // make a per-user directory for the name given; guixd leaves
                // it alone and says so.
                "user-name" if self.is_remote() => unknown_users.push(value.clone()),
                _ if self.trusted => settings.set(name, value),
                _ => settings.set(&format!("untrusted-{name}"), value),
            }
        }
        if let Err(e) = settings.update() {
            return self.fatal(&e.to_string());
        }
        self.settings = settings;
        self.start_work();
        for user in unknown_users {
            self.log(Level::Info, format!("user name {user} not found"));
        }
        self.finish(Ok(()), |()| Reply::SetOptions);
        Ok(())
    }
}

/// The status of a failed build request (spec 01 §4): 101 if anything
/// timed out, else 100 if anything failed permanently, else 1.
fn failure_status(timed_out: bool, permanent: bool) -> u32 {
    if timed_out {
        101
    } else if permanent {
        100
    } else {
        1
    }
}

/// Bytes of an export handed to the client in one `STDERR_WRITE` frame, as
/// the daemon's 64 KiB buffered sink does.
const EXPORT_CHUNK_BYTES: usize = 64 * 1024;

/// Derivations walked at once when computing a modulo hash.
const DRV_GRAPH_WALK_MAX: usize = 1 << 20;

/// What the session learnt while receiving a NAR.
#[derive(Debug)]
struct ReceivedNar {
    /// The NAR describes exactly one regular file.
    single_regular_file: bool,
    /// Writing the upload failed; the NAR was read to its end regardless.
    write_error: Option<String>,
}

/// What the request decoder produced.
enum Decoded {
    Request(Request),
    /// Collect-garbage from a TCP peer: refused before its fields are read.
    RemoteGc,
}

/// What the import loop stopped for.
enum Import {
    ItemStart,
    Item(Box<export::ExportedItem>),
    End,
}

/// Parses `.drv` text as the daemon reads a derivation: bytes after the
/// closing parenthesis are ignored, like the C++ parser does.
/// What a one-file NAR adds to the file's contents: its framing and the
/// padding of the contents.
const DRV_NAR_OVERHEAD_BYTES: usize = 256;

fn parse_drv(drv_path: &str, text: &[u8]) -> OpResult<Derivation> {
    derivation::parse_derivation(text, derivation::DrvLimits::default())
        .map(|(drv, _consumed)| drv)
        .map_err(|e| OpError::new(format!("error parsing derivation `{drv_path}': {e}")))
}

fn strings(paths: &BTreeSet<StorePath>) -> Vec<String> {
    paths.iter().map(|p| p.as_str().to_owned()).collect()
}

fn optional_path(path: Option<StorePath>) -> String {
    path.map(StorePath::into_string).unwrap_or_default()
}

fn path_info_reply(info: ValidPathInfo) -> wire::PathInfo {
    wire::PathInfo {
        deriver: optional_path(info.deriver),
        hash: info.nar_hash.to_hex(),
        references: strings(&info.references),
        // The wire field is 32 bits wide, as in the daemon.
        registration_time: info.registration_time as u32,
        nar_size: info.nar_size,
    }
}

fn substitutable_reply(info: SubstitutablePathInfo) -> wire::SubstitutableInfo {
    wire::SubstitutableInfo {
        deriver: optional_path(info.deriver),
        references: strings(&info.references),
        download_size: info.download_size,
        nar_size: info.nar_size,
    }
}

fn unexpected(output: EffectOutput) -> OpError {
    OpError::new(format!("guixd bug: unexpected effect result {output:?}"))
}

/// `absPath` relative to `/` (the daemon's working directory), made
/// canonical.
fn abs_path(path: &str) -> String {
    if path.starts_with('/') {
        crate::store_path::canonicalise_lexically(path)
    } else {
        crate::store_path::canonicalise_lexically(&format!("/{path}"))
    }
}

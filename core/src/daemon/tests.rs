//! Model tests of the daemon machine's builds: a small world with a fake
//! store, fake builders and virtual time drives the real `Daemon` through
//! the wire protocol, and checks what clients see and what the store ends
//! up with (shared builds, keep-going, failing inputs, timeouts, cached
//! failures, retries, check mode and rounds), and the same for garbage
//! collections and store maintenance against a fake collector (roots and
//! other sessions' temporary roots kept, referrers first, paths found in
//! use revived, locks held elsewhere skipped, the daemon's messages).

use super::*;
use crate::build_plan::{BuildPlan, LogId, OutputCheck, OutputFound, OutputRefused};
use crate::config::{Dirs, Limits};
use crate::derivation::{Derivation, DerivationOutput};
use crate::effect::ValidPathInfo;
use crate::hash::Hash;
use crate::settings::Settings;
use crate::store_path::StoreDir;
use crate::wire::{
    self, ClientHello, ClientOptions, Op, Reply, ReplyDecoder, StderrDecoder, StderrFrame,
    WireLimits,
};
use std::time::Duration;

// ---- the world

/// How a fake builder behaves.
#[derive(Clone, Debug)]
struct Script {
    output: Vec<Vec<u8>>,
    exit: ExitStatus,
    /// Never exits on its own (until killed).
    hang: bool,
    /// Creates its outputs.
    produce: bool,
    /// A different output each time it runs.
    nondeterministic: bool,
    /// Fails (exit 1) when another build runs at the same time.
    fails_beside_others: bool,
    /// Keeps running until this many builds were started in total.
    wait_for_starts: usize,
    /// Exits, but a process it left behind keeps its log open until the
    /// build is finished (killed).
    holds_log: bool,
}

impl Script {
    /// A builder that runs until it is killed.
    fn hanging() -> Script {
        Script {
            hang: true,
            ..Script::default()
        }
    }
}

impl Default for Script {
    fn default() -> Script {
        Script {
            output: vec![b"hello from the builder\n".to_vec()],
            exit: ExitStatus::Code(0),
            hang: false,
            produce: true,
            nondeterministic: false,
            fails_beside_others: false,
            wait_for_starts: 0,
            holds_log: false,
        }
    }
}

struct FakeChild {
    build: BuildId,
    script: Script,
    pending: VecDeque<Vec<u8>>,
    started: bool,
    closed: bool,
    exited: bool,
    killed: bool,
    /// Another build ran while this one did.
    saw_others: bool,
}

struct Store {
    /// guixd's index of flat contents.
    flat: BTreeMap<Hash, BTreeSet<StorePath>>,
    valid: BTreeMap<StorePath, ValidPathInfo>,
    files: BTreeMap<StorePath, Vec<u8>>,
    failed: BTreeSet<String>,
    plans: BTreeMap<BuildId, BuildPlan>,
    /// Builds finished, with whether the build directory was kept.
    finished: Vec<(BuildId, bool)>,
    logs: BTreeMap<LogId, (StorePath, Vec<u8>, bool)>,
    scripts: BTreeMap<String, Script>,
    /// Whether each build's outputs exist, and what they hash to.
    results: BTreeMap<BuildId, (bool, u64)>,
    spawned: Vec<StorePath>,
    locks_deleted: Vec<StorePath>,
    gc: GcFake,
}

struct World {
    d: Daemon,
    now: Now,
    store: Store,
    effects: VecDeque<(EffectId, Effect)>,
    children: BTreeMap<ChildId, FakeChild>,
    sent: BTreeMap<ConnId, Vec<u8>>,
    closed: BTreeSet<ConnId>,
    logs: Vec<String>,
    running: usize,
}

fn store_dir() -> StoreDir {
    StoreDir::new("/gnu/store").unwrap()
}

fn config(settings: &[(&str, &str)]) -> Config {
    let mut s = Settings::default();
    for (k, v) in settings {
        s.set(k, v);
    }
    s.update().unwrap();
    Config {
        dirs: Dirs {
            store: store_dir(),
            state: "/var/guix".into(),
            log: "/var/log/guix".into(),
            db: "/var/guix/db".into(),
            conf: "/etc/guix".into(),
            guix_program: "/usr/bin/guix".into(),
        },
        daemon_uid: 0,
        settings: s,
        limits: Limits::default(),
        seed: 0,
        verbosity: 0,
    }
}

/// A store path named `name`, distinct for every name.
fn sp(name: &str) -> StorePath {
    store_dir()
        .make_text_path(name, &Hash::sha256(name.as_bytes()), &BTreeSet::new())
        .unwrap()
}

/// The start of virtual time: any instant will do, and tests only ever
/// add to it.
#[allow(clippy::disallowed_methods)]
fn epoch() -> Instant {
    Instant::now()
}

impl World {
    fn new(settings: &[(&str, &str)]) -> World {
        let now = Now {
            mono: epoch(),
            wall_s: 1_700_000_000,
        };
        World {
            d: Daemon::new(config(settings), now),
            now,
            store: Store {
                flat: BTreeMap::new(),
                valid: BTreeMap::new(),
                files: BTreeMap::new(),
                failed: BTreeSet::new(),
                plans: BTreeMap::new(),
                finished: Vec::new(),
                logs: BTreeMap::new(),
                scripts: BTreeMap::new(),
                results: BTreeMap::new(),
                spawned: Vec::new(),
                locks_deleted: Vec::new(),
                gc: GcFake::default(),
            },
            effects: VecDeque::new(),
            children: BTreeMap::new(),
            sent: BTreeMap::new(),
            closed: BTreeSet::new(),
            logs: Vec::new(),
            running: 0,
        }
    }

    /// A valid derivation `name` with one output `out`, built by `script`,
    /// depending on the outputs `out` of `inputs`.
    fn drv(
        &mut self,
        name: &str,
        inputs: &[&StorePath],
        env: &[(&str, &str)],
        script: Script,
    ) -> StorePath {
        let out = sp(&format!("{name}-out"));
        let mut d = Derivation::default();
        d.outputs.insert(
            "out".into(),
            DerivationOutput {
                path: out.as_str().into(),
                ..Default::default()
            },
        );
        for i in inputs {
            d.input_drvs
                .insert(i.as_str().into(), BTreeSet::from(["out".to_owned()]));
        }
        d.platform = "x86_64-linux".into();
        d.builder = "/gnu/store/00000000000000000000000000000000-busybox/bin/sh".into();
        d.env.insert("out".into(), out.as_str().into());
        for (k, v) in env {
            d.env.insert((*k).into(), (*v).into());
        }
        let path = sp(&format!("{name}.drv"));
        self.store
            .files
            .insert(path.clone(), d.to_text().into_bytes());
        self.store.valid.insert(
            path.clone(),
            ValidPathInfo {
                path: path.clone(),
                deriver: None,
                nar_hash: Hash::sha256(path.as_str().as_bytes()),
                references: inputs.iter().map(|p| (*p).clone()).collect(),
                registration_time: 1,
                nar_size: 1,
            },
        );
        self.store.scripts.insert(path.as_str().to_owned(), script);
        path
    }

    /// A fixed-output derivation `name` whose output must hash to `hash`.
    fn fod(&mut self, name: &str, recursive: bool, hash: &Hash) -> StorePath {
        let path = self.drv(name, &[], &[], Script::default());
        let mut d = crate::derivation::parse_derivation(
            &self.store.files[&path],
            crate::derivation::DrvLimits::default(),
        )
        .unwrap()
        .0;
        let out = d.outputs.get_mut("out").unwrap();
        out.hash_algo = if recursive { "r:sha256" } else { "sha256" }.into();
        out.hash = hash.to_hex();
        self.store
            .files
            .insert(path.clone(), d.to_text().into_bytes());
        path
    }

    fn out(name: &str) -> StorePath {
        sp(&format!("{name}-out"))
    }

    /// A trusted local client that has said hello and set its options.
    fn connect(
        &mut self,
        overrides: &[(&str, &str)],
        tweak: impl FnOnce(&mut ClientOptions),
    ) -> ConnId {
        let conn = self
            .d
            .handle_accept(
                self.now,
                Peer {
                    kind: PeerKind::Unix {
                        pid: 1,
                        uid: 0,
                        gid: 0,
                    },
                    user_name: None,
                },
            )
            .unwrap();
        let mut bytes = Vec::new();
        wire::write_client_magic(&mut bytes);
        wire::encode_client_hello(&ClientHello::default(), 0x64, &mut bytes);
        let mut options = ClientOptions {
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
            overrides: overrides
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        tweak(&mut options);
        wire::encode_request(&wire::Request::SetOptions(options), 0x64, &mut bytes);
        self.input(conn, &bytes);
        conn
    }

    fn input(&mut self, conn: ConnId, bytes: &[u8]) {
        self.d.handle_input(self.now, conn, bytes);
        self.settle();
    }

    fn build(&mut self, conn: ConnId, things: &[String], mode: u32) {
        let mut bytes = Vec::new();
        wire::encode_request(
            &wire::Request::BuildPaths {
                things: things.to_vec(),
                mode,
            },
            0x64,
            &mut bytes,
        );
        self.input(conn, &bytes);
    }

    fn request(&mut self, conn: ConnId, request: wire::Request) {
        let mut bytes = Vec::new();
        wire::encode_request(&request, 0x64, &mut bytes);
        self.input(conn, &bytes);
    }

    /// Moves virtual time on by `d`, firing what fell due.
    fn advance(&mut self, d: Duration) {
        self.now.mono += d;
        self.now.wall_s += d.as_secs();
        if self.d.poll_timeout().is_some_and(|t| t <= self.now.mono) {
            self.d.handle_timeout(self.now);
        }
        self.settle();
    }

    /// Runs effects and children until nothing moves.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            while let Some(output) = self.d.poll_output() {
                moved = true;
                match output {
                    Output::Send { conn, data } => {
                        let n = data.len();
                        self.sent.entry(conn).or_default().extend(data);
                        self.d.handle_written(self.now, conn, n);
                    }
                    Output::Close { conn } => {
                        self.closed.insert(conn);
                    }
                    Output::Effect { id, effect } => self.effects.push_back((id, effect)),
                    Output::Log(line) => self.logs.push(line),
                    Output::Spawn { child, build } => {
                        let plan = self.store.plans.get(&build).cloned().unwrap();
                        self.store.spawned.push(plan.drv_path.clone());
                        let script = self
                            .store
                            .scripts
                            .get(plan.drv_path.as_str())
                            .cloned()
                            .unwrap_or_default();
                        self.children.insert(
                            child,
                            FakeChild {
                                build,
                                pending: script.output.iter().cloned().collect(),
                                script,
                                started: false,
                                closed: false,
                                exited: false,
                                killed: false,
                                saw_others: false,
                            },
                        );
                    }
                    Output::Kill { child } => {
                        let c = self.children.get_mut(&child).unwrap();
                        assert!(c.started && !c.exited, "kill of a child not running");
                        c.killed = true;
                    }
                }
            }
            if let Some((id, effect)) = self.effects.pop_front() {
                let result = self.store.run(effect);
                self.d.handle_effect(self.now, id, result);
                continue;
            }
            let ids: Vec<ChildId> = self.children.keys().copied().collect();
            for id in ids {
                moved |= self.step_child(id);
            }
            if !moved {
                break;
            }
        }
    }

    fn step_child(&mut self, id: ChildId) -> bool {
        let running = self.running;
        let starts = self.store.spawned.len();
        let finished_builds: BTreeSet<BuildId> =
            self.store.finished.iter().map(|(b, _)| *b).collect();
        let c = self.children.get_mut(&id).unwrap();
        if !c.started {
            c.started = true;
            self.running += 1;
            let pid = 1000 + id.0 as u32;
            self.d.handle_child_started(self.now, id, Ok(pid));
            return true;
        }
        if c.exited && c.closed {
            return false;
        }
        if c.exited {
            // Only a finished build lets go of a held log.
            if finished_builds.contains(&c.build) {
                c.closed = true;
                self.d.handle_child_output_closed(self.now, id);
                return true;
            }
            return false;
        }
        if running > 1 {
            c.saw_others = true;
        }
        if c.killed && !c.script.holds_log {
            c.pending.clear();
            if !c.closed {
                c.closed = true;
                self.d.handle_child_output_closed(self.now, id);
            }
            c.exited = true;
            self.running -= 1;
            self.d
                .handle_child_exited(self.now, id, ExitStatus::Signal(9));
            return true;
        }
        if let Some(chunk) = c.pending.front() {
            let budget = self.d.child_read_budget(id);
            if budget == 0 {
                return false;
            }
            let chunk = chunk.clone();
            let n = chunk.len().min(budget);
            if n == chunk.len() {
                c.pending.pop_front();
            } else {
                c.pending[0] = chunk[n..].to_vec();
            }
            self.d.handle_child_output(self.now, id, &chunk[..n]);
            return true;
        }
        if c.script.hang || starts < c.script.wait_for_starts {
            return false;
        }
        let failed_beside = c.script.fails_beside_others && c.saw_others;
        let status = if failed_beside {
            ExitStatus::Code(1)
        } else {
            c.script.exit
        };
        let build = c.build;
        if c.killed || c.script.holds_log {
            c.exited = true;
            self.running -= 1;
            let status = if c.killed {
                ExitStatus::Signal(9)
            } else {
                status
            };
            self.d.handle_child_exited(self.now, id, status);
            return true;
        }
        c.closed = true;
        c.exited = true;
        self.running -= 1;
        let produce = c.script.produce && status == ExitStatus::Code(0);
        let salt = if c.script.nondeterministic {
            build.0
        } else {
            0
        };
        self.store.results.insert(build, (produce, salt));
        self.d.handle_child_output_closed(self.now, id);
        self.d.handle_child_exited(self.now, id, status);
        true
    }

    /// What a client received, decoded: one entry per finished response
    /// after the greeting (set-options first).
    fn responses(&self, conn: ConnId, ops: &[Op]) -> Vec<Response> {
        let bytes = self.sent.get(&conn).cloned().unwrap_or_default();
        let mut at = 16; // the server hello
        let mut out = Vec::new();
        // The greeting's work, then set-options, then the operations.
        let all: Vec<Op> = [Op::SetOptions, Op::SetOptions]
            .into_iter()
            .chain(ops.iter().copied())
            .collect();
        for op in all {
            let mut resp = Response::default();
            let mut frames = StderrDecoder::new(0x64, WireLimits::default());
            let mut finished = false;
            loop {
                let f = frames.feed(&bytes[at..]).unwrap();
                at += f.consumed;
                match f.item {
                    None => return out,
                    Some(StderrFrame::Next(text)) => {
                        resp.log.push(String::from_utf8(text).unwrap())
                    }
                    Some(StderrFrame::Error { message, status }) => {
                        resp.error = Some((message, status));
                        finished = true;
                        break;
                    }
                    Some(StderrFrame::Last) => break,
                    Some(other) => panic!("unexpected frame {other:?}"),
                }
            }
            if !finished && op != Op::SetOptions {
                let mut r = ReplyDecoder::new(op, 0x64, WireLimits::default());
                let f = r.feed(&bytes[at..]).unwrap();
                at += f.consumed;
                match f.item {
                    Some(reply) => resp.reply = Some(reply),
                    None => return out,
                }
            }
            out.push(resp);
        }
        out
    }

    /// The response to the `n`th operation after set-options.
    fn response(&self, conn: ConnId, ops: &[Op]) -> Option<Response> {
        let mut r = self.responses(conn, ops);
        if r.len() == ops.len() + 2 {
            r.pop()
        } else {
            None
        }
    }
}

#[derive(Debug, Default)]
struct Response {
    log: Vec<String>,
    reply: Option<Reply>,
    error: Option<(String, u32)>,
}

impl Response {
    fn text(&self) -> String {
        self.log.concat()
    }
}

impl Store {
    fn run(&mut self, effect: Effect) -> EffectResult {
        match effect {
            Effect::QueryValidPaths { paths } => Ok(EffectOutput::Paths(
                paths
                    .into_iter()
                    .filter(|p| self.valid.contains_key(p))
                    .collect(),
            )),
            Effect::QueryPathInfo { path } => {
                Ok(EffectOutput::PathInfo(self.valid.get(&path).cloned()))
            }
            Effect::ReadStoreFile { path, .. } => match self.files.get(&path) {
                Some(b) => Ok(EffectOutput::Bytes(b.clone())),
                None => Err(EffectError::new(
                    EffectErrorKind::NotFound,
                    format!("getting status of `{path}'"),
                )),
            },
            Effect::QueryClosure { paths } => {
                let mut seen = BTreeSet::new();
                let mut stack: Vec<StorePath> = paths
                    .into_iter()
                    .filter(|p| self.valid.contains_key(p))
                    .collect();
                while let Some(p) = stack.pop() {
                    if seen.insert(p.clone()) {
                        if let Some(info) = self.valid.get(&p) {
                            stack.extend(info.references.iter().cloned());
                        }
                    }
                }
                Ok(EffectOutput::Paths(seen))
            }
            Effect::QueryFailedPaths => Ok(EffectOutput::Strings(self.failed.clone())),
            Effect::RecordFailedPaths { paths, .. } => {
                self.failed
                    .extend(paths.iter().map(|p| p.as_str().to_owned()));
                Ok(EffectOutput::Done)
            }
            Effect::TryLockPath { path } => {
                Ok(EffectOutput::Locked(!self.gc.foreign_locks.contains(&path)))
            }
            Effect::UnlockPath { path, delete } => {
                if delete {
                    self.locks_deleted.push(path);
                }
                Ok(EffectOutput::Done)
            }
            Effect::AddTempRoot { .. }
            | Effect::CreateUserProfileDir { .. }
            | Effect::Deduplicate { .. } => Ok(EffectOutput::Done),
            Effect::LogOpen { log, drv, .. } => {
                self.logs.insert(log, (drv, Vec::new(), false));
                Ok(EffectOutput::Done)
            }
            Effect::LogWrite { log, data } => {
                self.logs.get_mut(&log).unwrap().1.extend(data);
                Ok(EffectOutput::Done)
            }
            Effect::LogClose { log } => {
                self.logs.get_mut(&log).unwrap().2 = true;
                Ok(EffectOutput::Done)
            }
            Effect::PrepareBuild { build, plan } => {
                let dir = format!("/tmp/guix-build-{}-0", plan.drv_path.name());
                self.plans.insert(build, plan);
                Ok(EffectOutput::BuildPrepared {
                    build_dir: dir,
                    notes: Vec::new(),
                })
            }
            Effect::FinishBuild {
                build,
                keep_build_dir,
                ..
            } => {
                self.finished.push((build, keep_build_dir));
                Ok(EffectOutput::Done)
            }
            Effect::CollectOutputs { build, outputs, .. } => {
                let (produced, salt) = self.results.get(&build).copied().unwrap_or((false, 0));
                let drv = self.plans[&build].drv_path.clone();
                Ok(EffectOutput::Outputs(
                    outputs
                        .iter()
                        .map(|o: &OutputCheck| {
                            if produced {
                                Ok(OutputFound {
                                    path: o.path.clone(),
                                    nar_hash: Hash::sha256(format!("{}{salt}", o.path).as_bytes()),
                                    nar_size: 42,
                                    references: BTreeSet::new(),
                                })
                            } else {
                                Err(OutputRefused::Missing(format!(
                                    "builder for `{drv}' failed to produce output path `{}'",
                                    o.path
                                )))
                            }
                        })
                        .collect(),
                ))
            }
            Effect::Register { groups } => {
                for g in &groups {
                    for item in &g.items {
                        self.valid.insert(item.info.path.clone(), item.info.clone());
                    }
                }
                Ok(EffectOutput::Registered(
                    groups.iter().map(|_| Ok(())).collect(),
                ))
            }
            Effect::QueryPathsByNarHash { hash } => Ok(EffectOutput::Paths(
                self.valid
                    .values()
                    .filter(|i| i.nar_hash == hash)
                    .map(|i| i.path.clone())
                    .collect(),
            )),
            Effect::FindFlatContent { hash } => Ok(EffectOutput::Paths(
                self.flat
                    .get(&hash)
                    .into_iter()
                    .flatten()
                    .filter(|p| self.valid.contains_key(*p))
                    .cloned()
                    .collect(),
            )),
            Effect::IndexFlatContent { path, hash } => {
                self.flat.entry(hash).or_default().insert(path);
                Ok(EffectOutput::Done)
            }
            Effect::CopyIntoOutput {
                from,
                recursive,
                expected,
                ..
            } => {
                let info = self.valid.get(&from).cloned().unwrap();
                Ok(EffectOutput::Measured(crate::effect::Measured {
                    nar_hash: if recursive { expected } else { info.nar_hash },
                    nar_size: info.nar_size,
                    content_hash: expected,
                }))
            }
            e @ (Effect::GcLock { .. }
            | Effect::GcRelease { .. }
            | Effect::GcReadTempRoots
            | Effect::GcFindRoots
            | Effect::GcRuntimeRoots
            | Effect::GcSnapshot
            | Effect::GcPrepareTrash
            | Effect::GcDeletePath { .. }
            | Effect::GcEmptyTrash
            | Effect::GcRemoveUnusedLinks
            | Effect::VerifyStore { .. }
            | Effect::OptimiseStore
            | Effect::WriteText { .. }) => self.run_gc(e),
            other => panic!("the fake store does not do {other:?}"),
        }
    }
}

fn things(paths: &[&StorePath]) -> Vec<String> {
    paths.iter().map(|p| p.as_str().to_owned()).collect()
}

// ---- the tests

#[test]
fn a_simple_build_streams_its_log_and_registers_its_output() {
    let mut w = World::new(&[]);
    let a = w.drv("a", &[], &[], Script::default());
    let c = w.connect(&[], |_| {});
    w.build(c, &things(&[&a]), 0);
    let r = w.response(c, &[Op::BuildPaths]).expect("build finished");
    assert_eq!(r.error, None);
    assert_eq!(r.reply, Some(Reply::BuildPaths));
    let log_name = format!(
        "/var/log/guix/drvs/{}//{}.gz",
        &a.base_name()[..2],
        &a.base_name()[2..]
    );
    // The pid is the fake one; only the line's shape matters.
    assert_eq!(r.log.len(), 3, "{:?}", r.log);
    assert!(r.log[0].starts_with(&format!("@ build-started {a} - x86_64-linux {log_name} ")));
    assert_eq!(
        r.log[1..],
        [
            "hello from the builder\n".to_owned(),
            format!("@ build-succeeded {a} -\n")
        ]
    );
    let out = World::out("a");
    let info = w.store.valid.get(&out).expect("output registered");
    assert_eq!(info.deriver.as_ref(), Some(&a));
    let (drv, text, closed) = w.store.logs.values().next().unwrap();
    assert_eq!(
        (drv, text.as_slice(), *closed),
        (&a, &b"hello from the builder\n"[..], true)
    );
    assert_eq!(w.store.finished.len(), 1);
    assert!(w.store.locks_deleted.contains(&out));
    // The plan: environment per spec 03 §2, inputs, chroot.
    let plan = w.store.plans.values().next().unwrap();
    let env: BTreeMap<_, _> = plan.env.iter().cloned().collect();
    assert_eq!(env["PATH"], "/path-not-set");
    assert_eq!(env["HOME"], "/homeless-shelter");
    assert_eq!(env["NIX_STORE"], "/gnu/store");
    assert_eq!(env["NIX_BUILD_CORES"], "0");
    assert_eq!(env["out"], out.as_str());
    assert!(plan.chroot);
    // A second request finds it valid and builds nothing.
    w.build(c, &things(&[&a]), 0);
    let r = w.response(c, &[Op::BuildPaths, Op::BuildPaths]).unwrap();
    assert_eq!((r.error, r.log.len()), (None, 0));
    assert_eq!(w.store.spawned.len(), 1);
    assert!(w.d.goals.is_empty());
}

#[test]
fn verbosity_nests_the_start_trace_and_multiplexing_frames_output() {
    let mut w = World::new(&[]);
    let a = w.drv("a", &[], &[], Script::default());
    let c = w.connect(&[("multiplexed-build-output", "true")], |o| o.verbosity = 1);
    w.build(c, &things(&[&a]), 0);
    let r = w.response(c, &[Op::BuildPaths]).unwrap();
    let out = World::out("a");
    assert_eq!(r.log[0], format!("building path(s) `{out}'\n"));
    assert!(r.log[1].starts_with(&format!("|   @ build-started {a} - ")));
    let pid = r.log[1].trim_end().rsplit(' ').next().unwrap().to_owned();
    assert_eq!(
        r.log[2],
        format!("@ build-log {pid} 23\nhello from the builder\n")
    );
    assert_eq!(r.log[3], format!("@ build-succeeded {a} -\n"));
}

#[test]
fn two_sessions_share_one_build_and_both_see_it() {
    let mut w = World::new(&[]);
    let a = w.drv("a", &[], &[], Script::hanging());
    let c1 = w.connect(&[], |_| {});
    let c2 = w.connect(&[], |_| {});
    w.build(c1, &things(&[&a]), 0);
    w.build(c2, &things(&[&a]), 0);
    assert_eq!(w.store.spawned.len(), 1);
    // Let the builder finish.
    for c in w.children.values_mut() {
        c.script.hang = false;
        c.pending.push_back(b"late line\n".to_vec());
    }
    w.settle();
    for c in [c1, c2] {
        let r = w.response(c, &[Op::BuildPaths]).expect("finished");
        assert_eq!(r.error, None);
        assert!(r.text().contains("late line\n"), "{:?}", r.log);
        assert!(r.text().contains("@ build-succeeded"));
    }
    // The first session saw the whole log, the second from when it came.
    assert!(
        w.response(c1, &[Op::BuildPaths])
            .unwrap()
            .text()
            .contains("hello from the builder")
    );
    assert_eq!(w.store.spawned.len(), 1);
}

#[test]
fn a_failing_builder_fails_the_request_with_status_100() {
    let mut w = World::new(&[]);
    let a = w.drv(
        "a",
        &[],
        &[],
        Script {
            exit: ExitStatus::Code(3),
            ..Script::default()
        },
    );
    let c = w.connect(&[], |o| o.keep_failed = true);
    w.build(c, &things(&[&a]), 0);
    let r = w.response(c, &[Op::BuildPaths]).unwrap();
    assert_eq!(r.error, Some((format!("build of `{a}' failed"), 100)));
    let msg = format!("builder for `{a}' failed with exit code 3");
    let tail: Vec<&str> = r
        .log
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(
        tail,
        vec![
            format!(
                "note: keeping build directory `/tmp/guix-build-{}-0'\n",
                a.name()
            )
            .as_str(),
            format!("{msg}\n").as_str(),
            format!("@ build-failed {a} - 1 {msg}\n").as_str(),
        ]
    );
    assert_eq!(w.store.finished, vec![(w.store.finished[0].0, true)]);
    assert!(!w.store.valid.contains_key(&World::out("a")));
    assert!(w.store.locks_deleted.is_empty());
}

#[test]
fn a_failed_input_fails_its_dependents_and_stops_the_request() {
    let mut w = World::new(&[("build-max-jobs", "4")]);
    let bad = w.drv(
        "bad",
        &[],
        &[],
        Script {
            exit: ExitStatus::Code(1),
            ..Script::default()
        },
    );
    let top = w.drv("top", &[&bad], &[], Script::default());
    let slow = w.drv("slow", &[], &[], Script::hanging());
    let c = w.connect(&[], |_| {});
    w.build(c, &things(&[&top, &slow]), 0);
    let r = w
        .response(c, &[Op::BuildPaths])
        .expect("stopped at the first failure");
    assert!(r.text().contains(&format!(
        "cannot build derivation `{top}': 1 dependencies couldn't be built\n"
    )));
    assert_eq!(r.error, Some((format!("build of `{top}' failed"), 100)));
    // The other build was stopped: its builder was killed.
    assert!(w.children.values().all(|c| c.exited));
    assert!(w.children.values().any(|c| c.killed));
    w.settle();
    assert!(w.d.goals.is_empty());
}

#[test]
fn keep_going_builds_everything_it_can() {
    let mut w = World::new(&[]);
    let bad = w.drv(
        "bad",
        &[],
        &[],
        Script {
            exit: ExitStatus::Code(1),
            ..Script::default()
        },
    );
    let good = w.drv("good", &[], &[], Script::default());
    let c = w.connect(&[], |o| o.keep_going = true);
    w.build(c, &things(&[&bad, &good]), 0);
    let r = w.response(c, &[Op::BuildPaths]).unwrap();
    assert_eq!(r.error, Some((format!("build of `{bad}' failed"), 100)));
    assert!(w.store.valid.contains_key(&World::out("good")));
}

#[test]
fn silence_and_wall_time_limits_kill_the_builder() {
    let mut w = World::new(&[]);
    let a = w.drv("a", &[], &[], Script::hanging());
    let c = w.connect(&[("build-max-silent-time", "10")], |_| {});
    w.build(c, &things(&[&a]), 0);
    w.advance(Duration::from_secs(9));
    assert!(w.response(c, &[Op::BuildPaths]).is_none());
    w.advance(Duration::from_secs(2));
    let r = w.response(c, &[Op::BuildPaths]).expect("timed out");
    assert!(
        r.text().ends_with(&format!(
            "building of `{a}' timed out after 10 seconds of silence\n@ build-failed {a} - timeout\nkilling process 1002\n"
        )),
        "{:?}",
        r.log
    );
    assert_eq!(r.error, Some((format!("build of `{a}' failed"), 101)));

    let b = w.drv("b", &[], &[], Script::hanging());
    let c = w.connect(&[("build-timeout", "30")], |_| {});
    w.build(c, &things(&[&b]), 0);
    w.advance(Duration::from_secs(31));
    let r = w.response(c, &[Op::BuildPaths]).expect("timed out");
    assert!(
        r.text()
            .contains(&format!("building of `{b}' timed out after %2% seconds\n"))
    );
    assert_eq!(r.error.unwrap().1, 101);
}

#[test]
fn failures_are_cached_when_asked() {
    let mut w = World::new(&[("build-cache-failure", "true")]);
    let a = w.drv(
        "a",
        &[],
        &[],
        Script {
            exit: ExitStatus::Code(2),
            ..Script::default()
        },
    );
    let c = w.connect(&[], |_| {});
    w.build(c, &things(&[&a]), 0);
    assert!(w.store.failed.contains(World::out("a").as_str()));
    w.build(c, &things(&[&a]), 0);
    let r = w.response(c, &[Op::BuildPaths, Op::BuildPaths]).unwrap();
    assert_eq!(
        r.log,
        vec![
            format!(
                "builder for `{}' failed previously (cached)\n",
                World::out("a")
            ),
            format!("@ build-failed {a} - cached\n"),
        ]
    );
    assert_eq!(r.error.unwrap().1, 100);
    assert_eq!(w.store.spawned.len(), 1);
}

#[test]
fn a_build_that_failed_beside_others_is_retried_alone() {
    let mut w = World::new(&[("build-max-jobs", "2")]);
    let flaky = w.drv(
        "flaky",
        &[],
        &[],
        Script {
            fails_beside_others: true,
            wait_for_starts: 2,
            ..Script::default()
        },
    );
    let other = w.drv(
        "other",
        &[],
        &[],
        Script {
            wait_for_starts: 2,
            ..Script::default()
        },
    );
    let c = w.connect(&[("build-max-attempts", "2")], |o| o.keep_going = true);
    w.build(c, &things(&[&flaky, &other]), 0);
    let r = w.response(c, &[Op::BuildPaths]).expect("finished");
    assert_eq!(r.error, None, "{:?}", r.log);
    assert!(r.text().contains(&format!(
        "retrying build of `{flaky}' (attempt 2 of 2) alone: it failed while 1 other build ran beside it\n"
    )));
    assert_eq!(w.store.spawned.iter().filter(|p| **p == flaky).count(), 2);
    // One log for both attempts, saying why.
    let (_, text, _) = w.store.logs.values().find(|(d, _, _)| *d == flaky).unwrap();
    assert!(String::from_utf8_lossy(text).contains("retrying build of"));
}

#[test]
fn check_mode_compares_with_the_registered_outputs() {
    let mut w = World::new(&[]);
    let a = w.drv("a", &[], &[], Script::default());
    let c = w.connect(&[], |_| {});
    w.build(c, &things(&[&a]), 2);
    let r = w.response(c, &[Op::BuildPaths]).unwrap();
    assert_eq!(
        r.error,
        Some((
            format!("`{a}' is missing outputs; build it normally before using `--check'"),
            1
        ))
    );
    w.build(c, &things(&[&a]), 0);
    w.build(c, &things(&[&a]), 2);
    let r = w
        .response(c, &[Op::BuildPaths, Op::BuildPaths, Op::BuildPaths])
        .unwrap();
    assert_eq!(r.error, None);
    let succeeded = format!("@ build-succeeded {a} -\n");
    assert_eq!(r.log.iter().filter(|l| **l == succeeded).count(), 2);

    let n = w.drv(
        "n",
        &[],
        &[],
        Script {
            nondeterministic: true,
            ..Script::default()
        },
    );
    w.build(c, &things(&[&n]), 0);
    w.build(c, &things(&[&n]), 2);
    let ops = [Op::BuildPaths; 5];
    let r = w.response(c, &ops).unwrap();
    assert_eq!(
        r.error,
        Some((
            format!(
                "derivation `{n}' may not be deterministic: output `{}' differs",
                World::out("n")
            ),
            1
        ))
    );
}

#[test]
fn rounds_compare_their_outputs() {
    let mut w = World::new(&[]);
    let n = w.drv(
        "n",
        &[],
        &[],
        Script {
            nondeterministic: true,
            ..Script::default()
        },
    );
    let c = w.connect(&[("build-repeat", "1")], |o| o.verbosity = 1);
    w.build(c, &things(&[&n]), 0);
    let r = w.response(c, &[Op::BuildPaths]).unwrap();
    let out = World::out("n");
    assert!(
        r.text()
            .contains(&format!("building path(s) `{out}' (round 1/2)\n"))
    );
    assert!(
        r.text()
            .contains(&format!("building path(s) `{out}' (round 2/2)\n"))
    );
    assert!(r.text().contains(&format!(
        "@ build-failed {n} - 1 output `{out}' of `{n}' differs from previous round\n"
    )));
    assert_eq!(r.error, Some((format!("build of `{n}' failed"), 1)));
}

#[test]
fn a_client_that_leaves_stops_its_build() {
    let mut w = World::new(&[]);
    let a = w.drv("a", &[], &[], Script::hanging());
    let c = w.connect(&[], |_| {});
    w.build(c, &things(&[&a]), 0);
    assert_eq!(w.children.len(), 1);
    w.d.handle_input_closed(w.now, c);
    w.settle();
    let child = w.children.values().next().unwrap();
    assert!(child.killed && child.exited);
    assert!(w.d.goals.is_empty());
    // The build directory and the log were cleaned up.
    assert_eq!(w.store.finished.len(), 1);
    assert!(w.store.logs.values().all(|(_, _, closed)| *closed));
}

#[test]
fn plain_paths_have_no_substituter() {
    let mut w = World::new(&[]);
    let missing = sp("missing");
    let c = w.connect(&[], |_| {});
    w.build(c, &things(&[&missing]), 0);
    w.request(
        c,
        wire::Request::EnsurePath {
            path: missing.as_str().into(),
        },
    );
    let r = w.responses(c, &[Op::BuildPaths, Op::EnsurePath]);
    assert_eq!(r[2].error, None);
    assert_eq!(
        r[3].error,
        Some((
            format!("path `{missing}' does not exist and cannot be created"),
            1
        ))
    );
}

#[test]
fn an_odd_references_graph_rejects_the_build() {
    let mut w = World::new(&[]);
    let a = w.drv(
        "a",
        &[],
        &[("exportReferencesGraph", "a b c")],
        Script::default(),
    );
    let c = w.connect(&[], |_| {});
    w.build(c, &things(&[&a]), 0);
    let r = w.response(c, &[Op::BuildPaths]).unwrap();
    let msg = "odd number of tokens in `exportReferencesGraph': `a b c'";
    assert_eq!(
        r.log,
        vec![
            format!("{msg}\n"),
            format!("@ build-failed {a} - 0 {msg}\n")
        ]
    );
    assert_eq!(r.error.unwrap().1, 100);
    assert!(w.store.spawned.is_empty());
}

#[test]
fn references_graphs_are_written_for_the_builder() {
    let mut w = World::new(&[]);
    let dep = w.drv("dep", &[], &[], Script::default());
    let c = w.connect(&[], |_| {});
    w.build(c, &things(&[&dep]), 0);
    let dep_out = World::out("dep");
    let spec = format!("g {dep_out}");
    let a = w.drv(
        "a",
        &[&dep],
        &[("exportReferencesGraph", &spec)],
        Script::default(),
    );
    w.build(c, &things(&[&a]), 0);
    let r = w.response(c, &[Op::BuildPaths, Op::BuildPaths]).unwrap();
    assert_eq!(r.error, None);
    let plan = w.store.plans.values().find(|p| p.drv_path == a).unwrap();
    assert_eq!(
        plan.build_dir_files,
        vec![("g".to_owned(), format!("{dep_out}\n\n0\n").into_bytes())]
    );
    assert!(plan.inputs.contains(&dep_out));
}

#[test]
fn a_process_holding_the_log_keeps_the_deadlines_going() {
    let mut w = World::new(&[]);
    let a = w.drv(
        "a",
        &[],
        &[],
        Script {
            holds_log: true,
            ..Script::default()
        },
    );
    let c = w.connect(&[("build-max-silent-time", "5")], |o| o.keep_failed = true);
    w.build(c, &things(&[&a]), 0);
    // The builder exited, but its log is still open: still building.
    assert!(w.children.values().all(|c| c.exited && !c.closed));
    assert!(w.response(c, &[Op::BuildPaths]).is_none());
    w.advance(Duration::from_secs(6));
    let r = w.response(c, &[Op::BuildPaths]).expect("timed out");
    assert!(r.text().contains("timed out after 5 seconds of silence"));
    assert_eq!(r.error.unwrap().1, 101);
    // Finished once, when it was killed, keeping the directory.
    assert_eq!(w.store.finished.len(), 1);
    assert!(w.store.finished[0].1);
}

#[test]
fn fixed_outputs_reuse_what_the_store_holds() {
    let mut w = World::new(&[]);
    // Recursive SHA-256: any valid item with that NAR hash will do.
    let have = sp("have");
    let nar = Hash::sha256(b"some tree");
    w.store.valid.insert(
        have.clone(),
        ValidPathInfo {
            path: have.clone(),
            deriver: None,
            nar_hash: nar,
            references: BTreeSet::new(),
            registration_time: 1,
            nar_size: 9,
        },
    );
    let r1 = w.fod("r1", true, &nar);
    let c = w.connect(&[], |o| o.verbosity = 1);
    w.build(c, &things(&[&r1]), 0);
    let r = w.response(c, &[Op::BuildPaths]).unwrap();
    assert_eq!(r.error, None);
    assert_eq!(
        r.log,
        vec![format!(
            "reusing `{have}' for fixed-output derivation `{r1}'\n"
        )]
    );
    let info = &w.store.valid[&World::out("r1")];
    assert_eq!((info.nar_hash, info.deriver.as_ref()), (nar, Some(&r1)));
    assert!(w.store.spawned.is_empty());

    // Flat: a fixed output built once is indexed, and a second derivation
    // with the same content reuses it.
    let content = Hash::sha256(b"tarball");
    let f1 = w.fod("f1", false, &content);
    w.build(c, &things(&[&f1]), 0);
    assert_eq!(w.store.spawned, vec![f1.clone()]);
    let f2 = w.fod("f2", false, &content);
    w.build(c, &things(&[&f2]), 0);
    let r = w
        .response(c, &[Op::BuildPaths, Op::BuildPaths, Op::BuildPaths])
        .unwrap();
    assert_eq!(r.error, None);
    assert_eq!(
        r.log,
        vec![format!(
            "reusing `{}' for fixed-output derivation `{f2}'\n",
            World::out("f1")
        )]
    );
    assert_eq!(w.store.spawned.len(), 1);
    assert!(w.store.valid.contains_key(&World::out("f2")));
}

// ---- garbage collection (see gc.rs)

/// The collector's side of the fake store.
#[derive(Debug, Default)]
struct GcFake {
    /// Who holds `gc.lock`.
    owner: Option<u64>,
    /// Roots on disk: link → item.
    roots: BTreeMap<String, StorePath>,
    /// Other processes' temporary roots.
    foreign_temp_roots: BTreeSet<StorePath>,
    /// Deletions asked for, in order.
    deleted: Vec<StorePath>,
    /// A victim gains this referrer just before its deletion (as if a
    /// registration won the race).
    late_referrer: Option<(StorePath, StorePath)>,
    releases: usize,
    /// Paths whose lock file another process holds.
    foreign_locks: BTreeSet<StorePath>,
    /// What verify-store finds modified.
    modified: Option<StorePath>,
}

impl Store {
    fn run_gc(&mut self, effect: Effect) -> EffectResult {
        use crate::gc::{DeleteOutcome, FoundRoots, GcRows, PathRow, TempRootsRead, TrashPrepared};
        match effect {
            Effect::GcLock { owner, .. } => {
                assert!(self.gc.owner.is_none(), "gc.lock taken twice");
                self.gc.owner = Some(owner);
                Ok(EffectOutput::Locked(true))
            }
            Effect::GcRelease { owner } => {
                if self.gc.owner == Some(owner) {
                    self.gc.owner = None;
                    self.gc.releases += 1;
                }
                Ok(EffectOutput::Done)
            }
            Effect::GcReadTempRoots => {
                assert!(self.gc.owner.is_some());
                Ok(EffectOutput::TempRoots(TempRootsRead {
                    roots: self.gc.foreign_temp_roots.clone(),
                    messages: vec![
                        "removing stale temporary roots file `/var/guix/temproots/7'".into(),
                    ],
                }))
            }
            Effect::GcFindRoots => {
                let mut found = FoundRoots::default();
                for (link, path) in &self.gc.roots {
                    if self.valid.contains_key(path) {
                        found.roots.push((link.clone(), path.clone()));
                    } else {
                        found
                            .messages
                            .push(format!("skipping invalid root from `{link}' to `{path}'"));
                    }
                }
                Ok(EffectOutput::Roots(found))
            }
            Effect::GcRuntimeRoots => Ok(EffectOutput::Paths(BTreeSet::new())),
            Effect::GcSnapshot => {
                let ids: BTreeMap<&StorePath, i64> = self
                    .valid
                    .keys()
                    .enumerate()
                    .map(|(i, p)| (p, i as i64 + 1))
                    .collect();
                let mut rows = GcRows::default();
                for (path, info) in &self.valid {
                    rows.paths.push(PathRow {
                        id: ids[path],
                        path: path.to_string(),
                        deriver: info.deriver.as_ref().map(|d| d.to_string()),
                        nar_size: info.nar_size,
                    });
                    for r in &info.references {
                        rows.references.push((ids[path], ids[r]));
                    }
                }
                let entries = self
                    .files
                    .keys()
                    .chain(self.valid.keys())
                    .map(|p| p.base_name().to_owned())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                Ok(EffectOutput::GcSnapshot { rows, entries })
            }
            Effect::GcPrepareTrash => Ok(EffectOutput::TrashPrepared(TrashPrepared {
                use_trash: true,
                freed_bytes: 0,
                note: None,
            })),
            Effect::GcDeletePath { path, expect_valid } => {
                if let Some((victim, referrer)) = self.gc.late_referrer.clone() {
                    if victim == path {
                        let mut info = self.valid[&path].clone();
                        info.path = referrer.clone();
                        info.references = BTreeSet::from([path.clone()]);
                        self.valid.insert(referrer, info);
                        self.gc.late_referrer = None;
                    }
                }
                if self.valid.contains_key(&path) {
                    if !expect_valid {
                        return Ok(EffectOutput::GcDeleted(DeleteOutcome::BecameValid));
                    }
                    let users: Vec<String> = self
                        .valid
                        .values()
                        .filter(|i| i.path != path && i.references.contains(&path))
                        .map(|i| i.path.to_string())
                        .collect();
                    if !users.is_empty() {
                        return Ok(EffectOutput::GcDeleted(DeleteOutcome::InUse {
                            referrers: users,
                        }));
                    }
                    self.valid.remove(&path);
                }
                self.gc.deleted.push(path.clone());
                let existed = self.files.remove(&path);
                Ok(EffectOutput::GcDeleted(DeleteOutcome::Deleted {
                    existed: existed.is_some(),
                    freed_bytes: existed.map_or(0, |b| b.len() as u64),
                    invalidated_bytes: 0,
                    note: None,
                }))
            }
            Effect::GcEmptyTrash => Ok(EffectOutput::Freed(1000)),
            Effect::GcRemoveUnusedLinks => Ok(EffectOutput::Links(crate::gc::LinksReport {
                freed_bytes: 10,
                saved_bytes: 2048,
            })),
            Effect::VerifyStore { check_contents } => {
                let mut report = crate::gc::VerifyReport::default();
                report
                    .messages
                    .push((crate::gc::Level::Error, "reading the store...".into()));
                if check_contents {
                    report
                        .messages
                        .push((crate::gc::Level::Info, "checking hashes...".into()));
                    if let Some(path) = self.gc.modified.clone() {
                        report.messages.push((
                            crate::gc::Level::Error,
                            format!("path `{path}' was modified! expected hash `0', got `1'"),
                        ));
                        report.errors = true;
                        report.repairable.push(crate::gc::Repairable {
                            path,
                            vanished: false,
                            message_index: report.messages.len() - 1,
                        });
                    }
                }
                Ok(EffectOutput::Verified(report))
            }
            Effect::WriteText { dest, contents } => {
                let measured = crate::effect::Measured {
                    nar_hash: Hash::sha256(&contents),
                    nar_size: contents.len() as u64,
                    content_hash: Hash::sha256(&contents),
                };
                self.files.insert(dest, contents);
                Ok(EffectOutput::Measured(measured))
            }
            Effect::OptimiseStore => Ok(EffectOutput::Optimised(crate::gc::OptimiseReport {
                files_linked: 3,
                bytes_freed: 4096,
                warnings: Vec::new(),
            })),
            other => panic!("not a collector effect: {other:?}"),
        }
    }
}

impl World {
    /// A valid item `name` (a file of `size` bytes) referring to `refs`.
    fn item(&mut self, name: &str, refs: &[&StorePath], size: usize) -> StorePath {
        let path = sp(name);
        self.store.valid.insert(
            path.clone(),
            ValidPathInfo {
                path: path.clone(),
                deriver: None,
                nar_hash: Hash::sha256(name.as_bytes()),
                references: refs.iter().map(|r| (*r).clone()).collect(),
                registration_time: 1,
                nar_size: size as u64,
            },
        );
        self.store.files.insert(path.clone(), vec![b'x'; size]);
        path
    }

    fn gc(&mut self, conn: ConnId, action: u32, paths: &[&StorePath], max_freed_bytes: u64) {
        self.request(
            conn,
            wire::Request::CollectGarbage(wire::GcRequest {
                action,
                paths: things(paths),
                ignore_liveness: false,
                max_freed_bytes,
            }),
        );
    }
}

fn gc_reply(r: &Response) -> wire::GcResult {
    match &r.reply {
        Some(Reply::CollectGarbage(gc)) => gc.clone(),
        other => panic!("no collect-garbage reply: {other:?} {:?}", r.error),
    }
}

fn verbose(o: &mut ClientOptions) {
    o.verbosity = 1;
}

#[test]
fn delete_dead_spares_roots_their_closure_and_other_sessions_temp_roots() {
    let mut w = World::new(&[]);
    let lib = w.item("lib", &[], 10);
    let app = w.item("app", &[&lib], 20);
    let junk = w.item("junk", &[], 30);
    let junk_user = w.item("junk-user", &[&junk], 40);
    let held = w.item("held", &[], 50);
    let mine = w.item("mine", &[], 60);
    let foreign = w.item("foreign", &[], 70);
    w.store
        .gc
        .roots
        .insert("/var/guix/gcroots/app".into(), app.clone());
    w.store.gc.foreign_temp_roots.insert(foreign.clone());
    let other = w.connect(&[], |_| {});
    w.request(
        other,
        wire::Request::AddTempRoot {
            path: held.to_string(),
        },
    );
    let c = w.connect(&[], verbose);
    // The collecting session's own temporary roots do not count, as with
    // the C++ daemon.
    w.request(
        c,
        wire::Request::AddTempRoot {
            path: mine.to_string(),
        },
    );
    w.gc(c, 2, &[], u64::MAX);
    let r = w
        .response(c, &[Op::AddTempRoot, Op::CollectGarbage])
        .unwrap();
    let gc = gc_reply(&r);
    let mut expected = vec![junk.to_string(), junk_user.to_string(), mine.to_string()];
    expected.sort();
    assert_eq!(gc.paths, expected);
    // 10+… bytes of files, the trash and the unused links.
    assert_eq!(gc.bytes_freed, 30 + 40 + 60 + 1000 + 10);
    for p in [&lib, &app, &held, &foreign] {
        assert!(w.store.valid.contains_key(p), "{p} was collected");
    }
    // Referrers go before what they refer to.
    let order = &w.store.gc.deleted;
    let at = |p: &StorePath| order.iter().position(|d| d == p).unwrap();
    assert!(at(&junk_user) < at(&junk));
    let text = r.text();
    assert!(
        text.starts_with("finding garbage collector roots...\n"),
        "{text}"
    );
    assert!(text.contains("removing stale temporary roots file `/var/guix/temproots/7'\n"));
    assert!(text.contains("deleting garbage...\n"));
    assert!(text.contains(&format!("] deleting '{junk}'\n")), "{text}");
    assert!(text.contains("deleting `/gnu/store/trash'\ndeleting unused links...\n"));
    assert!(
        text.ends_with("note: currently hard linking saves    2.00 KiB\n"),
        "{text}"
    );
    assert_eq!(w.store.gc.owner, None);
    assert_eq!(w.store.gc.releases, 1);
    // Victims are locked in the table alone: no lock file was touched.
    assert!(w.store.locks_deleted.is_empty());
}

#[test]
fn quiet_clients_see_only_error_level_messages() {
    let mut w = World::new(&[]);
    w.item("junk", &[], 30);
    let c = w.connect(&[], |_| {});
    w.gc(c, 2, &[], u64::MAX);
    let r = w.response(c, &[Op::CollectGarbage]).unwrap();
    assert_eq!(
        r.text(),
        "finding garbage collector roots...\n\
         removing stale temporary roots file `/var/guix/temproots/7'\n\
         deleting garbage...\n\
         deleting unused links...\n"
    );
}

#[test]
fn return_live_and_return_dead_list_without_deleting() {
    let mut w = World::new(&[]);
    let lib = w.item("lib", &[], 10);
    let app = w.item("app", &[&lib], 20);
    let junk = w.item("junk", &[], 30);
    w.store
        .gc
        .roots
        .insert("/var/guix/gcroots/app".into(), app.clone());
    let c = w.connect(&[], |_| {});
    w.gc(c, 0, &[], u64::MAX);
    w.gc(c, 1, &[], u64::MAX);
    let r = w.responses(c, &[Op::CollectGarbage, Op::CollectGarbage]);
    let mut live = vec![lib.to_string(), app.to_string()];
    live.sort();
    assert_eq!(gc_reply(&r[2]).paths, live);
    assert!(r[2].text().contains("determining live/dead paths...\n"));
    assert_eq!(gc_reply(&r[3]).paths, vec![junk.to_string()]);
    assert_eq!(gc_reply(&r[3]).bytes_freed, 0);
    assert!(w.store.gc.deleted.is_empty());
    assert!(w.store.valid.contains_key(&junk));
    assert_eq!(w.store.gc.owner, None);
}

#[test]
fn delete_specific_refuses_live_paths_and_takes_dead_referrers() {
    let mut w = World::new(&[]);
    let lib = w.item("lib", &[], 10);
    let app = w.item("app", &[&lib], 20);
    let junk = w.item("junk", &[], 30);
    let junk_user = w.item("junk-user", &[&junk], 40);
    w.store
        .gc
        .roots
        .insert("/var/guix/gcroots/app".into(), app.clone());
    let c = w.connect(&[], |_| {});
    w.gc(c, 3, &[&lib], u64::MAX);
    w.gc(c, 3, &[&junk], u64::MAX);
    let r = w.responses(c, &[Op::CollectGarbage, Op::CollectGarbage]);
    assert_eq!(
        r[2].error,
        Some((
            format!("cannot delete path `{lib}' since it is still alive"),
            1
        ))
    );
    let mut gone = vec![junk.to_string(), junk_user.to_string()];
    gone.sort();
    assert_eq!(gc_reply(&r[3]).paths, gone);
    assert!(w.store.valid.contains_key(&lib));
    assert!(!w.store.valid.contains_key(&junk_user));
    assert_eq!(w.store.gc.owner, None);
}

#[test]
fn a_path_that_gained_a_referrer_is_revived() {
    let mut w = World::new(&[]);
    let junk = w.item("junk", &[], 30);
    let late = sp("late");
    w.store.gc.late_referrer = Some((junk.clone(), late.clone()));
    let c = w.connect(&[], |_| {});
    w.gc(c, 2, &[], u64::MAX);
    let r = w.response(c, &[Op::CollectGarbage]).unwrap();
    assert!(gc_reply(&r).paths.is_empty(), "{r:?}");
    assert!(w.store.valid.contains_key(&junk));
    // Now that its new referrer is a root, asking for it by name fails.
    w.store
        .gc
        .roots
        .insert("/var/guix/gcroots/late".into(), late.clone());
    w.gc(c, 3, &[&junk], u64::MAX);
    let r = w.responses(c, &[Op::CollectGarbage, Op::CollectGarbage]);
    assert_eq!(
        r[3].error,
        Some((
            format!("cannot delete path `{junk}' since it is still alive"),
            1
        ))
    );
}

#[test]
fn liveness_cannot_be_ignored_and_max_freed_stops_the_collection() {
    let mut w = World::new(&[]);
    for i in 0..5 {
        w.item(&format!("junk{i}"), &[], 100);
    }
    let c = w.connect(&[], verbose);
    w.request(
        c,
        wire::Request::CollectGarbage(wire::GcRequest {
            action: 2,
            paths: Vec::new(),
            ignore_liveness: true,
            max_freed_bytes: u64::MAX,
        }),
    );
    w.gc(c, 2, &[], 150);
    let r = w.responses(c, &[Op::CollectGarbage, Op::CollectGarbage]);
    assert_eq!(
        r[2].error,
        Some(("you are not allowed to ignore liveness".to_owned(), 1))
    );
    let gc = gc_reply(&r[3]);
    assert_eq!(gc.paths.len(), 2, "{gc:?}");
    let text = r[3].text();
    assert!(text.contains("[0%] deleting '"), "{text}");
    assert!(text.contains("[66%] deleting '"), "{text}");
    assert!(text.contains("deleted or invalidated more than 150 bytes; stopping\n"));
    // max-freed 0: nothing at all.
    w.gc(c, 2, &[], 0);
    let r = w.responses(
        c,
        &[Op::CollectGarbage, Op::CollectGarbage, Op::CollectGarbage],
    );
    assert!(gc_reply(&r[4]).paths.is_empty());
    assert!(!r[4].text().contains("deleting garbage..."));
}

#[test]
fn find_roots_verify_and_optimise_reply_like_the_daemon() {
    let mut w = World::new(&[]);
    let app = w.item("app", &[], 10);
    w.store.gc.roots.insert("/home/u/app".into(), app.clone());
    w.store.gc.roots.insert("/home/u/gone".into(), sp("gone"));
    let c = w.connect(&[], verbose);
    w.request(c, wire::Request::FindRoots);
    w.request(
        c,
        wire::Request::VerifyStore {
            check_contents: true,
            repair: false,
        },
    );
    w.request(c, wire::Request::OptimiseStore);
    let r = w.responses(c, &[Op::FindRoots, Op::VerifyStore, Op::OptimiseStore]);
    assert_eq!(
        r[2].reply,
        Some(Reply::FindRoots(vec![(
            "/home/u/app".into(),
            app.to_string()
        )]))
    );
    assert_eq!(
        r[2].text(),
        format!(
            "skipping invalid root from `/home/u/gone' to `{}'\n",
            sp("gone")
        )
    );
    assert_eq!(r[3].reply, Some(Reply::VerifyStore(false)));
    assert_eq!(r[3].text(), "reading the store...\nchecking hashes...\n");
    assert_eq!(r[4].reply, Some(Reply::OptimiseStore));
    assert_eq!(r[4].text(), "   4.00 KiB freed by hard-linking 3 files\n");
}

#[test]
fn a_session_dropped_mid_collection_releases_gc_lock() {
    let mut w = World::new(&[]);
    w.item("junk", &[], 30);
    let c = w.connect(&[], |_| {});
    // Hold the effects back: the collection stops after asking for the
    // lock.
    let bytes = delete_dead_request();
    w.d.handle_input(w.now, c, &bytes);
    let mut held = Vec::new();
    while let Some(output) = w.d.poll_output() {
        if let Output::Effect { id, effect } = output {
            held.push((id, effect));
        }
    }
    assert!(
        held.iter().any(|(_, e)| matches!(e, Effect::GcLock { .. })),
        "{held:?}"
    );
    w.d.handle_input_closed(w.now, c);
    for (id, effect) in held {
        let result = w.store.run(effect);
        w.d.handle_effect(w.now, id, result);
    }
    w.settle();
    assert_eq!(w.store.gc.owner, None);
    assert_eq!(w.store.gc.releases, 1);
}

#[test]
fn the_lock_file_of_a_dead_path_is_not_consulted_as_by_the_cpp_collector() {
    // Another process that follows the C++ protocol adds a temporary root
    // before it locks a path, and cannot while the collection holds
    // gc.lock: a dead path's lock file says nothing the roots do not.
    let mut w = World::new(&[]);
    let busy = w.item("busy", &[], 30);
    let junk = w.item("junk", &[], 40);
    w.store.gc.foreign_locks.insert(busy.clone());
    let c = w.connect(&[], |_| {});
    w.gc(c, 2, &[], u64::MAX);
    let r = w.response(c, &[Op::CollectGarbage]).unwrap();
    let mut expected = vec![busy.to_string(), junk.to_string()];
    expected.sort();
    assert_eq!(gc_reply(&r).paths, expected);
    assert!(!w.store.valid.contains_key(&busy));
    assert_eq!(w.store.gc.owner, None);
}

#[test]
fn verify_store_repairs_only_what_it_can_and_says_why_not() {
    let mut w = World::new(&[]);
    let app = w.item("app", &[], 10);
    w.store.gc.modified = Some(app.clone());
    let c = w.connect(&[], |_| {});
    for repair in [false, true] {
        w.request(
            c,
            wire::Request::VerifyStore {
                check_contents: true,
                repair,
            },
        );
    }
    let r = w.responses(c, &[Op::VerifyStore, Op::VerifyStore]);
    let modified = format!("path `{app}' was modified! expected hash `0', got `1'\n");
    assert_eq!(r[2].reply, Some(Reply::VerifyStore(true)));
    assert_eq!(r[2].text(), format!("reading the store...\n{modified}"));
    // No deriver: nothing to rebuild it with.
    assert_eq!(r[3].reply, Some(Reply::VerifyStore(true)));
    assert_eq!(
        r[3].text(),
        format!("reading the store...\n{modified}error: cannot repair path `{app}'\n")
    );
}

#[test]
fn untrusted_clients_may_not_repair() {
    let mut w = World::new(&[]);
    let conn =
        w.d.handle_accept(
            w.now,
            Peer {
                kind: PeerKind::Unix {
                    pid: 2,
                    uid: 1000,
                    gid: 1000,
                },
                user_name: None,
            },
        )
        .unwrap();
    let mut bytes = Vec::new();
    wire::write_client_magic(&mut bytes);
    wire::encode_client_hello(&ClientHello::default(), 0x64, &mut bytes);
    w.input(conn, &bytes);
    w.request(
        conn,
        wire::Request::VerifyStore {
            check_contents: false,
            repair: true,
        },
    );
    let bytes = w.sent.get(&conn).cloned().unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("you are not privileged to repair paths"),
        "{text}"
    );
    assert!(!w.closed.contains(&conn), "the session goes on");
}

#[test]
fn a_temp_root_of_a_session_that_ended_during_the_collection_still_counts() {
    let mut w = World::new(&[]);
    let junk = w.item("junk", &[], 30);
    let other_junk = w.item("other-junk", &[], 30);
    let c = w.connect(&[], |_| {});
    let p = w.connect(&[], |_| {});
    let bytes = delete_dead_request();
    w.d.handle_input(w.now, c, &bytes);
    // The collection holds gc.lock; meanwhile a session protects `junk`
    // (as if it had just added it and linked it from gcroots, too late
    // for the scan) and goes away.
    let mut held = Vec::new();
    let step = |w: &mut World, held: &mut Vec<(EffectId, Effect)>| {
        while let Some(output) = w.d.poll_output() {
            match output {
                Output::Effect { id, effect } => held.push((id, effect)),
                Output::Send { conn, data } => {
                    let n = data.len();
                    w.sent.entry(conn).or_default().extend(data);
                    w.d.handle_written(w.now, conn, n);
                }
                _ => {}
            }
        }
    };
    step(&mut w, &mut held);
    let (id, effect) = held.remove(0);
    assert!(matches!(effect, Effect::GcLock { .. }), "{effect:?}");
    let result = w.store.run(effect);
    w.d.handle_effect(w.now, id, result);
    step(&mut w, &mut held);
    let mut add = Vec::new();
    wire::encode_request(
        &wire::Request::AddTempRoot {
            path: junk.to_string(),
        },
        0x64,
        &mut add,
    );
    w.d.handle_input(w.now, p, &add);
    w.d.handle_input_closed(w.now, p);
    step(&mut w, &mut held);
    for (id, effect) in held.drain(..) {
        let result = w.store.run(effect);
        w.d.handle_effect(w.now, id, result);
    }
    w.settle();
    let r = w.response(c, &[Op::CollectGarbage]).unwrap();
    assert_eq!(gc_reply(&r).paths, vec![other_junk.to_string()]);
    assert!(w.store.valid.contains_key(&junk));
}

#[test]
fn a_path_added_again_while_it_is_deleted_is_added_after_the_deletion() {
    let mut w = World::new(&[]);
    let contents = b"junk contents".to_vec();
    let junk = store_dir()
        .make_text_path("junk", &Hash::sha256(&contents), &BTreeSet::new())
        .unwrap();
    w.store.valid.insert(
        junk.clone(),
        ValidPathInfo {
            path: junk.clone(),
            deriver: None,
            nar_hash: Hash::sha256(&contents),
            references: BTreeSet::new(),
            registration_time: 1,
            nar_size: contents.len() as u64,
        },
    );
    w.store.files.insert(junk.clone(), contents.clone());
    let c = w.connect(&[], |_| {});
    let p = w.connect(&[], |_| {});
    let mut deletion = None;
    // Runs every effect but the deletion of `junk`, which is kept back.
    let run = |w: &mut World, deletion: &mut Option<(EffectId, Effect)>| loop {
        let mut moved = false;
        while let Some(output) = w.d.poll_output() {
            moved = true;
            match output {
                Output::Effect { id, effect } => {
                    if matches!(effect, Effect::GcDeletePath { .. }) {
                        *deletion = Some((id, effect));
                    } else {
                        w.effects.push_back((id, effect));
                    }
                }
                Output::Send { conn, data } => {
                    let n = data.len();
                    w.sent.entry(conn).or_default().extend(data);
                    w.d.handle_written(w.now, conn, n);
                }
                _ => {}
            }
        }
        if let Some((id, effect)) = w.effects.pop_front() {
            let result = w.store.run(effect);
            w.d.handle_effect(w.now, id, result);
            continue;
        }
        if !moved {
            break;
        }
    };
    let bytes = delete_dead_request();
    w.d.handle_input(w.now, c, &bytes);
    run(&mut w, &mut deletion);
    let (id, effect) = deletion.take().expect("the deletion was asked for");
    // While it runs, a client adds the very same text.
    let mut bytes = Vec::new();
    wire::encode_request(
        &wire::Request::AddTextToStore {
            name: "junk".into(),
            contents: contents.clone(),
            references: Vec::new(),
        },
        0x64,
        &mut bytes,
    );
    w.d.handle_input(w.now, p, &bytes);
    run(&mut w, &mut deletion);
    assert!(
        w.response(p, &[Op::AddTextToStore]).is_none(),
        "answered too early"
    );
    let result = w.store.run(effect);
    w.d.handle_effect(w.now, id, result);
    w.settle();
    let gc = gc_reply(&w.response(c, &[Op::CollectGarbage]).unwrap());
    assert_eq!(gc.paths, vec![junk.to_string()]);
    let r = w.response(p, &[Op::AddTextToStore]).unwrap();
    assert_eq!(r.reply, Some(Reply::AddTextToStore(junk.to_string())));
    assert!(w.store.valid.contains_key(&junk), "added again");
    assert_eq!(w.store.files.get(&junk), Some(&contents));
}

/// The bytes of a collect-garbage request deleting every dead path.
fn delete_dead_request() -> Vec<u8> {
    let mut bytes = Vec::new();
    wire::encode_request(
        &wire::Request::CollectGarbage(wire::GcRequest {
            action: 2,
            paths: Vec::new(),
            ignore_liveness: false,
            max_freed_bytes: u64::MAX,
        }),
        0x64,
        &mut bytes,
    );
    bytes
}

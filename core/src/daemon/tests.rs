//! Model tests of the daemon machine's builds: a small world with a fake
//! store, fake builders and virtual time drives the real `Daemon` through
//! the wire protocol, and checks what clients see and what the store ends
//! up with (shared builds, keep-going, failing inputs, timeouts, cached
//! failures, retries, check mode and rounds).

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
            Effect::TryLockPath { .. } => Ok(EffectOutput::Locked(true)),
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
                Ok(EffectOutput::BuildPrepared { build_dir: dir })
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
    let a = w.drv(
        "a",
        &[],
        &[],
        Script {
            hang: true,
            ..Script::default()
        },
    );
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
    let slow = w.drv(
        "slow",
        &[],
        &[],
        Script {
            hang: true,
            ..Script::default()
        },
    );
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
    let a = w.drv(
        "a",
        &[],
        &[],
        Script {
            hang: true,
            ..Script::default()
        },
    );
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

    let b = w.drv(
        "b",
        &[],
        &[],
        Script {
            hang: true,
            ..Script::default()
        },
    );
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
    let a = w.drv(
        "a",
        &[],
        &[],
        Script {
            hang: true,
            ..Script::default()
        },
    );
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

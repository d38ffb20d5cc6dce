//! Goals: the coroutines that realise one derivation or one store path,
//! daemon-wide, for every session that needs it (spec 03 §1).
//!
//! A derivation goal follows the C++ daemon's `DerivationGoal`: make sure
//! the `.drv` is there, read it, find which wanted outputs are missing,
//! refuse cached failures, realise the inputs (as goals of their own),
//! compute the input closure, then for each round: lock the outputs,
//! re-check them, take a build slot, prepare and start the builder, stream
//! its log, enforce the deadlines, collect and check the outputs, and
//! register them all at once. A substitution goal makes a path valid if it
//! is not; guixd does not download substitutes yet, so an invalid path ends
//! "no substituters", which is not a failure for build-things.
//!
//! Keeps true:
//! - the texts clients see (messages, `@` traces, error texts) are the C++
//!   daemon's, in the same order;
//! - every build that was prepared is finished (`FinishBuild`), every log
//!   opened is closed, and every child started is waited for (exit and end
//!   of log) — by the goal itself, or, when the goal is dropped, by the
//!   machine through [`leftovers`] and its child table;
//! - output locks are held from the validity re-check until the outputs
//!   are registered or the build failed, and their lock files are deleted
//!   only once the outputs are valid;
//! - deadlines (`max-silent-time`, `timeout`) are computed from the
//!   machine's clock only, so tests drive them with virtual time.

use super::ExitStatus;
use super::build_env::{self, GraphError};
use super::report::{BuildEvent, Level, OUTPUT_CHUNK_BYTES, show_paths};
use super::sched::{
    BuildMode, BuildOptions, BuildStatus, GoalExit, GoalId, GoalKey, GoalResult, SlotRequest,
};
use super::task::{ChildEvent, Completion, Ctx, GoalEvent, LockHandle, Request, Shared, Token};
use crate::build_plan::{
    BuildId, BuildPlan, ChildId, FixedOutput, LogId, OutputCheck, OutputFound, OutputRefused,
    Program,
};
use crate::config::Config;
use crate::derivation::{self, Derivation};
use crate::effect::{
    Effect, EffectError, EffectOutput, Registration, RegistrationGroup, ValidPathInfo,
};
use crate::hash::HashAlgo;
use crate::settings::Typed;
use crate::store_path::{StoreDir, StorePath};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

/// Runs the goal `key` to its end and leaves the result in the mailbox.
pub(crate) async fn run(
    ctx: Ctx,
    config: Rc<Config>,
    id: GoalId,
    key: GoalKey,
    options: Rc<BuildOptions>,
) {
    let _ = id;
    let result = match key {
        GoalKey::Substitute(path) => substitute(&ctx, path).await,
        GoalKey::Derivation { drv, outputs, mode } => {
            let goal = DrvGoal::new(ctx.clone(), config, drv, outputs, mode, options);
            goal.run().await
        }
    };
    ctx.set_goal_result(result);
}

/// The effects that clean up what a dropped goal left behind: builds to
/// finish (their directories deleted, build users released) and logs to
/// close. Run once the goal's children are reaped and its effects done.
pub(crate) fn leftovers(shared: &Shared) -> Vec<Effect> {
    let logs = shared.logs.iter().map(|&log| Effect::LogClose { log });
    let builds = shared.builds.iter().map(|&build| Effect::FinishBuild {
        build,
        keep_build_dir: false,
        owner_uid: None,
    });
    logs.chain(builds).collect()
}

/// How long a goal waits for its output locks before it says so (the C++
/// daemon says so at its first failed try, which takes a moment here).
const LOCK_NOTICE_AFTER: Duration = Duration::from_secs(1);

/// Bytes of builder output kept for the log file while a write is in
/// flight; the child is not read beyond this (see `child_read_budget`).
const LOG_PENDING_MAX_BYTES: usize = 1 << 20;

/// The message of a goal that waits for other processes or builds.
const WAITING_NOTICE: &str = "waiting for locks or build slots...";

/// Makes `path` valid if it is not. Without downloads, an invalid path has
/// no substituter.
async fn substitute(ctx: &Ctx, path: StorePath) -> GoalResult {
    ctx.add_temp_root(&path);
    match valid_subset(ctx, vec![path.clone()]).await {
        Ok(valid) if valid.contains(&path) => {
            GoalResult::new(GoalExit::Success, BuildStatus::NotABuild)
        }
        Ok(_) => GoalResult::new(GoalExit::NoSubstituters, BuildStatus::NotABuild),
        Err(e) => GoalResult::escaped(e.0),
    }
}

/// An error that escapes the goal loop: the whole request fails with its
/// text (status 1), as the C++ daemon's exceptions do.
#[derive(Debug)]
struct Escape(String);

impl From<EffectError> for Escape {
    fn from(e: EffectError) -> Escape {
        Escape(e.message)
    }
}

type Esc<T> = Result<T, Escape>;

/// A build failure inside one attempt (`BuildError` in the C++ daemon).
#[derive(Debug)]
enum Failure {
    /// Refused before the builder ran (`InputRejected`).
    Rejected(String),
    /// The builder failed (`PermanentFailure`, or transient for fixed
    /// outputs) with this status.
    Builder(String),
    /// The builder succeeded but its outputs were refused.
    Outputs(String),
    /// Silence, wall time or log size went over the limit.
    TimedOut,
}

/// How a builder ended.
struct Watched {
    status: ExitStatus,
    /// Killed for going over a limit; the build was finished then.
    killed: bool,
}

/// What a round of building ended with.
enum Round {
    /// Outputs measured, to register (last round) or compare (earlier).
    Built(Vec<OutputFound>),
    /// Check mode: the outputs are identical to the registered ones.
    Checked,
    Failed(Failure, Option<usize>),
}

struct DrvGoal {
    ctx: Ctx,
    config: Rc<Config>,
    store: StoreDir,
    options: Rc<BuildOptions>,
    typed: Typed,
    drv_path: StorePath,
    wanted: BTreeSet<String>,
    mode: BuildMode,
    drv: Derivation,
    /// Every output of the derivation, by id.
    outputs: BTreeMap<String, StorePath>,
    /// The outputs of each input derivation, in `input_drvs` order.
    input_outputs: Vec<BTreeMap<String, StorePath>>,
    /// The pid of the running builder, for `@ build-log` lines.
    child_pid: u32,
    /// The `building path(s)` line, until the builder starts.
    opening: Option<String>,
    timed_out: bool,
    permanent: bool,
}

/// What the builder of one attempt needs beyond the goal itself.
struct Inputs {
    /// The input closure (`inputPaths`).
    closure: BTreeSet<StorePath>,
    fixed_output: bool,
    rounds: u32,
}

impl DrvGoal {
    fn new(
        ctx: Ctx,
        config: Rc<Config>,
        drv_path: StorePath,
        wanted: BTreeSet<String>,
        mode: BuildMode,
        options: Rc<BuildOptions>,
    ) -> DrvGoal {
        DrvGoal {
            store: config.dirs.store.clone(),
            typed: options.settings.typed().clone(),
            ctx,
            config,
            options,
            drv_path,
            wanted,
            mode,
            drv: Derivation::default(),
            outputs: BTreeMap::new(),
            input_outputs: Vec::new(),
            child_pid: 0,
            opening: None,
            timed_out: false,
            permanent: false,
        }
    }

    async fn run(mut self) -> GoalResult {
        let result = match self.realise().await {
            Ok(result) => result,
            Err(Escape(message)) => GoalResult::escaped(message),
        };
        GoalResult {
            timed_out: result.timed_out || self.timed_out,
            permanent: result.permanent || self.permanent,
            outputs: self.outputs.clone(),
            ..result
        }
    }

    fn done(&self, status: BuildStatus) -> GoalResult {
        let exit = match status {
            BuildStatus::Built | BuildStatus::Substituted | BuildStatus::AlreadyValid => {
                GoalExit::Success
            }
            _ => GoalExit::Failed,
        };
        GoalResult::new(exit, status)
    }

    // ---- messages

    fn message(&self, level: Level, text: String) {
        self.ctx.publish(BuildEvent::Message {
            level,
            text,
            nest: None,
        });
    }

    fn trace(&self, text: String, nest: Option<Level>) {
        self.ctx.publish(BuildEvent::Trace { text, nest });
    }

    // ---- the state machine

    async fn realise(&mut self) -> Esc<GoalResult> {
        if self.mode == BuildMode::Repair {
            return Err(Escape(format!(
                "cannot repair `{}': repairing is not supported by this guixd yet",
                self.drv_path
            )));
        }
        self.ctx.add_temp_root(&self.drv_path);
        // The derivation itself must be valid (a substitution could make it
        // so; guixd's substitution goals find nothing to download).
        let have = valid_subset(&self.ctx, vec![self.drv_path.clone()])
            .await?
            .contains(&self.drv_path);
        if !have {
            let results = self
                .ctx
                .realise(
                    vec![GoalKey::Substitute(self.drv_path.clone())],
                    false,
                    self.options.clone(),
                )
                .await;
            let ok = matches!(results.first(), Some(Some(r)) if r.exit == GoalExit::Success);
            if !ok {
                self.message(
                    Level::Error,
                    format!("cannot build missing derivation `{}'", self.drv_path),
                );
                return Ok(self.done(BuildStatus::MiscFailure));
            }
        }
        self.load().await?;

        let invalid = self.invalid_outputs(&self.wanted_paths()).await?;
        if invalid.is_empty() && self.mode == BuildMode::Normal {
            return Ok(self.done(BuildStatus::AlreadyValid));
        }
        if let Some(result) = self.cached_failure(&invalid).await? {
            return Ok(result);
        }
        // Substitutes for the outputs would be tried here; guixd does not
        // download yet, so it goes straight to building.
        if self.mode == BuildMode::Check && !invalid.is_empty() {
            return Err(Escape(format!(
                "`{}' is missing outputs; build it normally before using `--check'",
                self.drv_path
            )));
        }
        if let Some(result) = self.realise_inputs().await? {
            return Ok(result);
        }
        let inputs = self.input_closure().await?;
        self.build_rounds(&inputs).await
    }

    /// Reads and parses the derivation, and protects its outputs.
    async fn load(&mut self) -> Esc<()> {
        let bytes = match self
            .ctx
            .effect(Effect::ReadStoreFile {
                path: self.drv_path.clone(),
                max_bytes: self.config.limits.drv_file_max_bytes,
            })
            .await?
        {
            EffectOutput::Bytes(b) => b,
            other => return Err(unexpected(other)),
        };
        self.drv = parse_drv(&self.drv_path, &bytes)?;
        for (id, out) in &self.drv.outputs {
            let path = self
                .store
                .parse_path(&out.path)
                .map_err(|e| Escape(e.to_string()))?;
            self.ctx.add_temp_root(&path);
            self.outputs.insert(id.clone(), path);
        }
        Ok(())
    }

    fn wanted_paths(&self) -> Vec<StorePath> {
        self.outputs
            .iter()
            .filter(|(id, _)| self.wanted.is_empty() || self.wanted.contains(*id))
            .map(|(_, p)| p.clone())
            .collect()
    }

    fn all_paths(&self) -> Vec<StorePath> {
        self.outputs.values().cloned().collect()
    }

    async fn invalid_outputs(&self, paths: &[StorePath]) -> Esc<BTreeSet<StorePath>> {
        let valid = valid_subset(&self.ctx, paths.to_vec()).await?;
        Ok(paths
            .iter()
            .filter(|p| !valid.contains(*p))
            .cloned()
            .collect())
    }

    /// `pathFailed`: with `--cache-failures`, an output that failed before
    /// ends the goal.
    async fn cached_failure(&mut self, paths: &BTreeSet<StorePath>) -> Esc<Option<GoalResult>> {
        if !self.typed.cache_failure || paths.is_empty() {
            return Ok(None);
        }
        let failed = match self.ctx.effect(Effect::QueryFailedPaths).await? {
            EffectOutput::Strings(s) => s,
            other => return Err(unexpected(other)),
        };
        let Some(path) = paths.iter().find(|p| failed.contains(p.as_str())) else {
            return Ok(None);
        };
        self.message(
            Level::Error,
            format!("builder for `{path}' failed previously (cached)"),
        );
        self.trace(format!("@ build-failed {} - cached", self.drv_path), None);
        Ok(Some(self.done(BuildStatus::CachedFailure)))
    }

    /// Realises the input derivations and sources; `Some` when the goal
    /// ends there.
    async fn realise_inputs(&mut self) -> Esc<Option<GoalResult>> {
        let mut keys = Vec::new();
        for (path, outs) in &self.drv.input_drvs {
            let drv = self
                .store
                .parse_path(path)
                .map_err(|e| Escape(e.to_string()))?;
            keys.push(GoalKey::Derivation {
                drv,
                outputs: outs.clone(),
                mode: BuildMode::Normal,
            });
        }
        for path in &self.drv.input_srcs {
            let p = self
                .store
                .parse_path(path)
                .map_err(|e| Escape(e.to_string()))?;
            keys.push(GoalKey::Substitute(p));
        }
        if keys.is_empty() {
            return Ok(None);
        }
        let n_drvs = self.drv.input_drvs.len();
        let results = self
            .ctx
            .realise(keys, self.options.keep_going, self.options.clone())
            .await;
        let mut failed = 0;
        let mut escaped = None;
        for r in results.iter().flatten() {
            self.timed_out |= r.timed_out;
            self.permanent |= r.permanent;
            if r.exit != GoalExit::Success {
                failed += 1;
            }
            if escaped.is_none() {
                escaped.clone_from(&r.escaped);
            }
        }
        if let Some(message) = escaped {
            return Err(Escape(message));
        }
        if failed > 0 {
            self.message(
                Level::Error,
                format!(
                    "cannot build derivation `{}': {failed} dependencies couldn't be built",
                    self.drv_path
                ),
            );
            return Ok(Some(self.done(BuildStatus::DependencyFailed)));
        }
        // Remember the outputs of the input derivations for the closure.
        self.input_outputs = results
            .into_iter()
            .take(n_drvs)
            .map(|r| r.map(|r| r.outputs).unwrap_or_default())
            .collect();
        Ok(None)
    }

    /// `inputPaths`: the closures of the used outputs of the input
    /// derivations and of the input sources.
    async fn input_closure(&mut self) -> Esc<Inputs> {
        let mut roots = Vec::new();
        for ((input, wanted), outputs) in self.drv.input_drvs.iter().zip(&self.input_outputs) {
            for j in wanted {
                match outputs.get(j) {
                    Some(p) => roots.push(p.clone()),
                    None => {
                        return Err(Escape(format!(
                            "derivation `{}' requires non-existent output `{j}' from input derivation `{input}'",
                            self.drv_path
                        )));
                    }
                }
            }
        }
        for src in &self.drv.input_srcs {
            roots.push(
                self.store
                    .parse_path(src)
                    .map_err(|e| Escape(e.to_string()))?,
            );
        }
        let closure = closure(&self.ctx, roots).await?;
        let fixed_output =
            !self.drv.outputs.is_empty() && self.drv.outputs.values().all(|o| !o.hash.is_empty());
        let repeat: u32 = self
            .options
            .settings
            .raw("build-repeat")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let rounds = if fixed_output {
            1
        } else {
            repeat.saturating_add(1)
        };
        Ok(Inputs {
            closure,
            fixed_output,
            rounds,
        })
    }

    /// `tryToBuild` and `buildDone`, round after round.
    async fn build_rounds(&mut self, inputs: &Inputs) -> Esc<GoalResult> {
        if self.mode == BuildMode::Check && !self.typed.use_chroot {
            // The C++ daemon builds into rewritten paths here; guixd never
            // lets a builder write over valid outputs.
            return Err(Escape(format!(
                "cannot check `{}' without the build chroot: not supported by this guixd yet",
                self.drv_path
            )));
        }
        let mut previous: Option<Vec<OutputFound>> = None;
        let mut round = 1;
        loop {
            let lock = self.lock_outputs().await;
            let valid = valid_subset(&self.ctx, self.all_paths()).await;
            let valid = match valid {
                Ok(v) => v,
                Err(e) => {
                    self.ctx.unlock(lock, false);
                    return Err(e);
                }
            };
            if self.mode != BuildMode::Check && valid.len() == self.outputs.len() {
                // Someone beat us to it.
                self.ctx.unlock(lock, true);
                return Ok(self.done(BuildStatus::AlreadyValid));
            }
            let missing: BTreeSet<StorePath> = if self.mode == BuildMode::Check {
                self.all_paths().into_iter().collect()
            } else {
                self.all_paths()
                    .into_iter()
                    .filter(|p| !valid.contains(p))
                    .collect()
            };
            match self
                .cached_failure(&self.all_paths().into_iter().collect())
                .await
            {
                Ok(Some(result)) => {
                    self.ctx.unlock(lock, false);
                    return Ok(result);
                }
                Ok(None) => {}
                Err(e) => {
                    self.ctx.unlock(lock, false);
                    return Err(e);
                }
            }
            if round == 1 && inputs.fixed_output && self.mode == BuildMode::Normal {
                match self.reuse_fixed_outputs(&missing).await {
                    Ok(true) => {
                        self.ctx.unlock(lock, true);
                        return Ok(self.done(BuildStatus::Built));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        self.ctx.unlock(lock, false);
                        return Err(e);
                    }
                }
            }
            let outcome = self.build_attempts(inputs, &missing, round).await;
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    self.ctx.unlock(lock, false);
                    return Err(e);
                }
            };
            match outcome {
                Round::Failed(failure, _) => {
                    self.ctx.unlock(lock, false);
                    return self.failed(failure, inputs).await;
                }
                Round::Checked => {
                    self.ctx.unlock(lock, false);
                    self.trace(format!("@ build-succeeded {} -", self.drv_path), None);
                    return Ok(self.done(BuildStatus::Built));
                }
                Round::Built(found) => {
                    if let Some(prev) = &previous {
                        if let Some(differs) = differing_output(prev, &found) {
                            self.ctx.unlock(lock, false);
                            let message = format!(
                                "output `{differs}' of `{}' differs from previous round",
                                self.drv_path
                            );
                            return self.failed(Failure::Outputs(message), inputs).await;
                        }
                    }
                    if round < inputs.rounds {
                        previous = Some(found);
                        round += 1;
                        self.ctx.unlock(lock, false);
                        continue;
                    }
                    match self.register(found).await {
                        Ok(Ok(())) => {}
                        Ok(Err(refused)) => {
                            self.ctx.unlock(lock, false);
                            return self.failed(Failure::Outputs(refused), inputs).await;
                        }
                        Err(e) => {
                            self.ctx.unlock(lock, false);
                            return Err(e);
                        }
                    }
                    self.ctx.unlock(lock, true);
                    self.trace(format!("@ build-succeeded {} -", self.drv_path), None);
                    return Ok(self.done(BuildStatus::Built));
                }
            }
        }
    }

    /// Reports a failed build: the message, the trace, the status, and the
    /// failure cache.
    async fn failed(&mut self, failure: Failure, inputs: &Inputs) -> Esc<GoalResult> {
        let (message, status) = match failure {
            Failure::TimedOut => return Ok(self.done(BuildStatus::TimedOut)),
            Failure::Rejected(message) => {
                self.message(Level::Error, message.clone());
                self.trace(
                    format!("@ build-failed {} - 0 {message}", self.drv_path),
                    None,
                );
                return Ok(self.done(BuildStatus::InputRejected));
            }
            Failure::Builder(message) => {
                let status = if inputs.fixed_output {
                    BuildStatus::TransientFailure
                } else {
                    BuildStatus::PermanentFailure
                };
                (message, status)
            }
            Failure::Outputs(message) => (message, BuildStatus::OutputRejected),
        };
        self.message(Level::Error, message.clone());
        self.trace(
            format!("@ build-failed {} - 1 {message}", self.drv_path),
            None,
        );
        if self.typed.cache_failure && !inputs.fixed_output {
            let paths = self.all_paths();
            let time_s = self.ctx.now_s();
            self.ctx
                .write_db(Effect::RecordFailedPaths { paths, time_s })
                .await?;
        }
        Ok(self.done(status))
    }

    /// Locks every output, saying so when another process holds them.
    async fn lock_outputs(&self) -> LockHandle {
        let paths: BTreeSet<StorePath> = self.all_paths().into_iter().collect();
        let token = self.ctx.start(Request::Lock(paths));
        let mut notice = self.ctx.now_mono().map(|now| now + LOCK_NOTICE_AFTER);
        loop {
            match self.ctx.wait_goal_event(&[token], notice).await {
                GoalEvent::Completed(_, Completion::Locked(lock)) => return lock,
                GoalEvent::Deadline => {
                    notice = None;
                    self.notice_waiting();
                }
                // A goal has no child while it locks; anything else would
                // be the machine's bug.
                other => panic!("guixd bug: unexpected event while locking: {other:?}"),
            }
        }
    }

    fn notice_waiting(&self) {
        if self.ctx.mark_waiting_noticed() {
            self.message(Level::Error, WAITING_NOTICE.to_owned());
        }
    }

    /// Runs the builder until it succeeds, fails for good, or the retries
    /// under load (`build-max-attempts`) are used up. One log is kept
    /// across attempts, so it shows each of them.
    async fn build_attempts(
        &mut self,
        inputs: &Inputs,
        missing: &BTreeSet<StorePath>,
        round: u32,
    ) -> Esc<Round> {
        let attempts_max: u32 = self
            .options
            .settings
            .raw("build-max-attempts")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1)
            .max(1);
        let mut log: Option<LogId> = None;
        let mut total_max = None;
        let mut attempt = 1;
        let result = loop {
            let outcome = self
                .build_once(inputs, missing, round, total_max, &mut log)
                .await;
            let Ok(Round::Failed(Failure::Builder(message), Some(others))) = &outcome else {
                break outcome;
            };
            if attempt >= attempts_max || inputs.fixed_output || *others == 0 {
                break outcome;
            }
            attempt += 1;
            let alone = attempt == attempts_max || others.div_ceil(2) <= 1;
            let (limit, how) = if alone {
                (1, "alone".to_owned())
            } else {
                let n = others.div_ceil(2);
                (n, format!("with at most {n} builds in parallel"))
            };
            total_max = Some(limit);
            let beside = if *others == 1 {
                "1 other build ran".to_owned()
            } else {
                format!("{others} other builds ran")
            };
            let line = format!(
                "retrying build of `{}' (attempt {attempt} of {attempts_max}) {how}: it failed while {beside} beside it",
                self.drv_path
            );
            self.message(Level::Error, message.clone());
            self.message(Level::Error, line.clone());
            if let Some(log) = log {
                let text = format!("{message}\n{line}\n").into_bytes();
                let _ = self.ctx.effect(Effect::LogWrite { log, data: text }).await;
            }
        };
        if let Some(log) = log {
            self.close_log(log).await;
        }
        result
    }

    async fn close_log(&self, log: LogId) {
        // Untracked first: should the goal be dropped while the close is in
        // flight, its leftovers must not close the log a second time (the
        // close in flight completes before the goal is reaped).
        self.ctx.track_log(log, false);
        if let Err(e) = self.ctx.effect(Effect::LogClose { log }).await {
            self.ctx.log_daemon(format!("error: {}", e.message));
        }
    }

    /// One attempt of one round: `startBuilder`, the child's life, and
    /// `buildDone`. The slot is held while the builder runs; the number of
    /// other builds that ran beside it comes back with a builder failure.
    async fn build_once(
        &mut self,
        inputs: &Inputs,
        missing: &BTreeSet<StorePath>,
        round: u32,
        total_max: Option<usize>,
        log: &mut Option<LogId>,
    ) -> Esc<Round> {
        self.acquire_slot(total_max).await?;
        let started = self.start_builder(inputs, missing, round, log).await;
        let (build, child, build_dir) = match started {
            Ok(Ok(s)) => s,
            Ok(Err(failure)) => {
                self.ctx.release_slot().await;
                return Ok(Round::Failed(failure, None));
            }
            Err(e) => {
                self.ctx.release_slot().await;
                return Err(e);
            }
        };
        let keep_failed = self.options.keep_failed;
        let owner_uid = self.options.client_uid.filter(|&uid| uid != 0);
        let ended = self
            .watch_child(child, build, *log, keep_failed, owner_uid)
            .await;
        self.ctx.set_started_trace(None);
        let others = self.ctx.release_slot().await;
        let watched = match ended {
            Ok(w) => w,
            Err(e) => {
                self.finish_build(build, false, None).await;
                return Err(e);
            }
        };
        let status = watched.status;
        if watched.killed {
            // The build was finished when it was killed (so that every
            // process of it went).
            self.keeping_note(keep_failed, &build_dir);
            return Ok(Round::Failed(Failure::TimedOut, Some(others)));
        }
        if !build_env::status_ok(status) {
            self.keeping_note(keep_failed, &build_dir);
            self.finish_build(build, keep_failed, owner_uid).await;
            let message = format!(
                "builder for `{}' {}",
                self.drv_path,
                build_env::status_text(status)
            );
            return Ok(Round::Failed(Failure::Builder(message), Some(others)));
        }
        let collected = self.collect(build, missing, inputs).await;
        match collected {
            Ok(Ok(round)) => {
                self.finish_build(build, false, None).await;
                Ok(round)
            }
            Ok(Err(message)) => {
                self.keeping_note(keep_failed, &build_dir);
                self.finish_build(build, keep_failed, owner_uid).await;
                Ok(Round::Failed(Failure::Outputs(message), None))
            }
            Err(e) => {
                self.finish_build(build, false, None).await;
                Err(e)
            }
        }
    }

    fn keeping_note(&self, keep_failed: bool, build_dir: &str) {
        if keep_failed {
            self.message(
                Level::Error,
                format!("note: keeping build directory `{build_dir}'"),
            );
        }
    }

    async fn finish_build(&self, build: BuildId, keep_build_dir: bool, owner_uid: Option<u32>) {
        // Untracked first, as for logs: the finish in flight completes even
        // if the goal is dropped meanwhile, and must not be repeated.
        self.ctx.track_build(build, false);
        let r = self
            .ctx
            .effect(Effect::FinishBuild {
                build,
                keep_build_dir,
                owner_uid,
            })
            .await;
        if let Err(e) = r {
            self.ctx.log_daemon(format!("error: {}", e.message));
        }
    }

    /// Waits for a build slot; the daemon's and the session's `max-jobs`
    /// of 0 mean no build can ever start.
    async fn acquire_slot(&self, total_max: Option<usize>) -> Esc<()> {
        let session_max = self.typed.max_build_jobs as usize;
        let prefer_local = self.drv.env.get("preferLocalBuild").map(String::as_str) == Some("1");
        let (session_max, total_max) = if session_max == 0
            || self.config.settings.typed().max_build_jobs == 0
        {
            if !prefer_local {
                return Err(Escape(
                    "unable to start any build; either increase `--max-jobs' or enable distributed builds"
                        .to_owned(),
                ));
            }
            // A derivation that prefers a local build may run when nothing
            // else does.
            (1, Some(1))
        } else {
            (session_max, total_max)
        };
        self.ctx
            .slot(SlotRequest {
                owner: self.options.owner,
                session_max,
                total_max,
            })
            .await;
        Ok(())
    }

    /// `startBuilder`: the `building path(s)` nest, the environment, the
    /// references graphs, the log, the build directory, the child. `Ok(Err)`
    /// is a refused build (input rejected).
    async fn start_builder(
        &mut self,
        inputs: &Inputs,
        missing: &BTreeSet<StorePath>,
        round: u32,
        log: &mut Option<LogId>,
    ) -> Esc<Result<(BuildId, ChildId, String), Failure>> {
        let shown = show_paths(missing.iter().map(StorePath::as_str));
        let opening = match self.mode {
            BuildMode::Repair => format!("repairing path(s) {shown}"),
            BuildMode::Check => format!("checking path(s) {shown}"),
            BuildMode::Normal if inputs.rounds > 1 => {
                format!("building path(s) {shown} (round {round}/{})", inputs.rounds)
            }
            BuildMode::Normal => format!("building path(s) {shown}"),
        };
        // The C++ daemon prints this line and the start trace in one go;
        // holding it back until the builder runs (or the start failed)
        // keeps other goals' lines from coming in between.
        self.opening = Some(opening);
        let started = self.start_builder_inner(inputs, missing, log).await;
        self.flush_opening();
        started
    }

    fn flush_opening(&mut self) {
        if let Some(text) = self.opening.take() {
            self.message(Level::Info, text);
        }
    }

    async fn start_builder_inner(
        &mut self,
        inputs: &Inputs,
        missing: &BTreeSet<StorePath>,
        log: &mut Option<LogId>,
    ) -> Esc<Result<(BuildId, ChildId, String), Failure>> {
        let builtin = self.drv.builder.strip_prefix("builtin:").map(str::to_owned);
        let use_chroot = self.typed.use_chroot && builtin.is_none();
        let env = build_env::builder_env(&self.store, self.typed.build_cores, &self.drv);
        let impure = build_env::impure_env_vars(&self.drv, inputs.fixed_output);
        let files = match self.references_graphs().await? {
            Ok(files) => files,
            Err(message) => return Ok(Err(Failure::Rejected(message))),
        };
        if log.is_none() && self.typed.keep_log {
            let id = LogId(self.ctx.fresh_id());
            self.ctx.track_log(id, true);
            let opened = self
                .ctx
                .effect(Effect::LogOpen {
                    log: id,
                    drv: self.drv_path.clone(),
                    compression: build_env::log_compression(&self.options.settings),
                })
                .await;
            if let Err(e) = opened {
                self.ctx.track_log(id, false);
                return Err(e.into());
            }
            *log = Some(id);
        }
        let program = match &builtin {
            Some(name) => Program::Builtin {
                name: name.clone(),
                output: self
                    .outputs
                    .get("out")
                    .or_else(|| self.outputs.values().next())
                    .cloned()
                    .ok_or_else(|| {
                        Escape(format!("derivation `{}' has no outputs", self.drv_path))
                    })?,
            },
            None => Program::Builder(self.drv.builder.clone()),
        };
        let plan = BuildPlan {
            drv_path: self.drv_path.clone(),
            program,
            args: self.drv.args.clone(),
            env,
            impure_env_vars: impure,
            build_dir_files: files,
            chroot: use_chroot,
            inputs: inputs
                .closure
                .iter()
                .filter(|p| !missing.contains(*p))
                .cloned()
                .collect(),
            extra_chroot_dirs: extra_chroot_dirs(&self.options.settings),
            fixed_output: inputs.fixed_output,
            build_users_group: self.typed.build_users_group.clone(),
            platform: self.drv.platform.clone(),
            impersonate_linux_26: self.typed.impersonate_linux_26,
            use_host_loopback: self.options.settings.raw("build-use-host-loopback")
                != Some("false"),
            print_build_trace: self.options.print_build_trace,
        };
        let build = BuildId(self.ctx.fresh_id());
        self.ctx.track_build(build, true);
        let (build_dir, notes) = match self.ctx.effect(Effect::PrepareBuild { build, plan }).await {
            Ok(EffectOutput::BuildPrepared { build_dir, notes }) => (build_dir, notes),
            Ok(other) => {
                self.finish_build(build, false, None).await;
                return Err(unexpected(other));
            }
            Err(e) => {
                self.finish_build(build, false, None).await;
                return Err(e.into());
            }
        };
        let child = ChildId(self.ctx.fresh_id());
        self.ctx.spawn(child, build);
        let pid = match self.ctx.wait_goal_event(&[], None).await {
            GoalEvent::Child(c, ChildEvent::Started(result)) if c == child => result,
            // Nothing else can come before the start of the child.
            other => panic!("guixd bug: unexpected event before a child started: {other:?}"),
        };
        let pid = match pid {
            Ok(pid) => pid,
            Err(e) => {
                // The setup of the child failed before the builder ran: the
                // C++ daemon throws that line as a plain error.
                self.finish_build(build, false, None).await;
                return Err(e.into());
            }
        };
        self.child_pid = pid;
        let log_name = build_env::log_file_name(
            &self.config.dirs.log.to_string_lossy(),
            &self.drv_path,
            build_env::log_compression(&self.options.settings),
            self.typed.keep_log,
        );
        self.flush_opening();
        // Said at the error level inside the build's nest, between the
        // opening line and the start trace, as the C++ daemon says them.
        for text in notes {
            self.ctx.publish(BuildEvent::Message {
                level: Level::Error,
                text,
                nest: Some(Level::Info),
            });
        }
        let started = BuildEvent::Trace {
            text: format!(
                "@ build-started {} - {} {log_name} {pid}",
                self.drv_path, self.drv.platform
            ),
            nest: Some(Level::Info),
        };
        self.ctx.set_started_trace(Some(started.clone()));
        self.ctx.publish(started);
        Ok(Ok((build, child, build_dir)))
    }

    /// The files of `exportReferencesGraph`; `Ok(Err)` refuses the build.
    async fn references_graphs(&self) -> Esc<Result<Vec<(String, Vec<u8>)>, String>> {
        let pairs = match build_env::export_references_graph(&self.store, &self.drv) {
            Ok(pairs) => pairs,
            Err(GraphError::Build(message)) => return Ok(Err(message)),
            Err(GraphError::Plain(message)) => return Err(Escape(message)),
        };
        let mut files = Vec::new();
        for (name, path) in pairs {
            if !valid_subset(&self.ctx, vec![path.clone()])
                .await?
                .contains(&path)
            {
                return Ok(Err(build_env::graph_invalid_path(&path)));
            }
            let mut paths = closure(&self.ctx, vec![path]).await?;
            // The outputs of derivations in the graph come with it.
            let drvs: Vec<StorePath> = paths
                .iter()
                .filter(|p| p.is_derivation())
                .cloned()
                .collect();
            let mut outputs = Vec::new();
            for d in drvs {
                let bytes = match self
                    .ctx
                    .effect(Effect::ReadStoreFile {
                        path: d.clone(),
                        max_bytes: self.config.limits.drv_file_max_bytes,
                    })
                    .await?
                {
                    EffectOutput::Bytes(b) => b,
                    other => return Err(unexpected(other)),
                };
                let parsed = parse_drv(&d, &bytes)?;
                for o in parsed.outputs.values() {
                    if let Ok(p) = self.store.parse_path(&o.path) {
                        outputs.push(p);
                    }
                }
            }
            if !outputs.is_empty() {
                paths.extend(closure(&self.ctx, outputs).await?);
            }
            let mut graph = BTreeMap::new();
            for p in paths {
                let info = match self
                    .ctx
                    .effect(Effect::QueryPathInfo { path: p.clone() })
                    .await?
                {
                    EffectOutput::PathInfo(Some(info)) => info,
                    EffectOutput::PathInfo(None) => {
                        return Err(Escape(format!("path `{p}' is not valid")));
                    }
                    other => return Err(unexpected(other)),
                };
                graph.insert(p, info.references);
            }
            files.push((name, build_env::registration_text(&graph)));
        }
        Ok(Ok(files))
    }

    /// Streams the child's log to the sessions and the log file, enforces
    /// the deadlines, and returns once the child has exited and its log
    /// reached its end. Like the C++ daemon's, the deadlines hold until the
    /// log closes: a builder that exited but left a process holding its
    /// log is still running. A build killed for going over a limit is
    /// finished at once (which kills every process of it), keeping its
    /// directory with keep-failed.
    async fn watch_child(
        &mut self,
        child: ChildId,
        build: BuildId,
        log: Option<LogId>,
        keep_failed: bool,
        owner_uid: Option<u32>,
    ) -> Esc<Watched> {
        let start = self.ctx.now_mono();
        let mut last_output = start;
        let silence_s = self.typed.max_silent_time_s;
        let timeout_s = self.typed.build_timeout_s;
        let log_max = self.typed.max_log_size_bytes;
        let mut log_bytes: u64 = 0;
        let mut exit: Option<ExitStatus> = None;
        let mut closed = false;
        let mut killed = false;
        let mut pending: Vec<u8> = Vec::new();
        let mut writing: Option<Token> = None;
        let mut finishing: Option<Token> = None;
        let mut log = log;
        let pid = self.child_pid;
        loop {
            if writing.is_none() && !pending.is_empty() {
                if let Some(id) = log {
                    let data = std::mem::take(&mut pending);
                    writing = Some(
                        self.ctx
                            .start(Request::Effect(Effect::LogWrite { log: id, data })),
                    );
                } else {
                    pending.clear();
                }
            }
            if exit.is_some()
                && closed
                && writing.is_none()
                && pending.is_empty()
                && finishing.is_none()
            {
                break;
            }
            let deadline = if killed || closed {
                None
            } else {
                let silence = (silence_s != 0)
                    .then(|| last_output.map(|t| t + Duration::from_secs(silence_s)))
                    .flatten();
                let wall = (timeout_s != 0)
                    .then(|| start.map(|t| t + Duration::from_secs(timeout_s)))
                    .flatten();
                match (silence, wall) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            let tokens: Vec<Token> = writing.into_iter().chain(finishing).collect();
            match self.ctx.wait_goal_event(&tokens, deadline).await {
                GoalEvent::Child(c, event) if c == child => match event {
                    ChildEvent::Output(data) => {
                        if killed {
                            continue;
                        }
                        last_output = self.ctx.now_mono();
                        log_bytes += data.len() as u64;
                        if log_max != 0 && log_bytes > log_max {
                            self.message(
                                Level::Error,
                                format!(
                                    "building of `{}' killed after writing more than {log_max} bytes of log output",
                                    self.drv_path
                                ),
                            );
                            finishing =
                                Some(self.kill_for_limit(child, build, keep_failed, owner_uid));
                            killed = true;
                            continue;
                        }
                        for chunk in data.chunks(OUTPUT_CHUNK_BYTES) {
                            self.ctx.publish(BuildEvent::Output {
                                pid,
                                data: chunk.to_vec(),
                            });
                        }
                        if log.is_some() && pending.len() < LOG_PENDING_MAX_BYTES {
                            pending.extend_from_slice(&data);
                        }
                    }
                    ChildEvent::OutputClosed => closed = true,
                    ChildEvent::Exited(status) => exit = Some(status),
                    ChildEvent::Started(_) => {}
                },
                GoalEvent::Child(..) => {}
                GoalEvent::Completed(token, completion) => {
                    let result = match completion {
                        Completion::Effect(result) => result,
                        other => {
                            return Err(Escape(format!(
                                "guixd bug: unexpected completion {other:?}"
                            )));
                        }
                    };
                    if Some(token) == finishing {
                        finishing = None;
                        if let Err(e) = result {
                            self.ctx.log_daemon(format!("error: {}", e.message));
                        }
                        continue;
                    }
                    writing = None;
                    if let Err(e) = result {
                        // The build goes on without writing its log file,
                        // which the attempt's caller still closes (once).
                        self.ctx.log_daemon(format!("error: {}", e.message));
                        log = None;
                    }
                }
                GoalEvent::Deadline => {
                    let now = self.ctx.now_mono();
                    let silent = silence_s != 0
                        && matches!((now, last_output), (Some(n), Some(l)) if n >= l + Duration::from_secs(silence_s));
                    let text = if silent {
                        format!(
                            "building of `{}' timed out after {silence_s} seconds of silence",
                            self.drv_path
                        )
                    } else {
                        // Literally so: the 1.5.0 daemon's format string
                        // was never filled in.
                        format!(
                            "building of `{}' timed out after %2% seconds",
                            self.drv_path
                        )
                    };
                    self.message(Level::Error, text);
                    finishing = Some(self.kill_for_limit(child, build, keep_failed, owner_uid));
                    killed = true;
                }
            }
        }
        Ok(Watched {
            status: exit.unwrap_or(ExitStatus::Signal(9)),
            killed,
        })
    }

    /// `timedOut`: the trace, then the kill of the builder and of every
    /// process of the build (by finishing it). Returns the token of the
    /// `FinishBuild`.
    fn kill_for_limit(
        &mut self,
        child: ChildId,
        build: BuildId,
        keep_failed: bool,
        owner_uid: Option<u32>,
    ) -> Token {
        self.trace(format!("@ build-failed {} - timeout", self.drv_path), None);
        // The C++ daemon kills a builder that has no build user through
        // its `Pid`, which says so.
        if self.typed.build_users_group.is_empty() {
            self.message(Level::Error, format!("killing process {}", self.child_pid));
        }
        self.ctx.kill(child);
        self.timed_out = true;
        // Untracked now, as in `finish_build`.
        self.ctx.track_build(build, false);
        self.ctx.start(Request::Effect(Effect::FinishBuild {
            build,
            keep_build_dir: keep_failed,
            owner_uid,
        }))
    }

    /// `registerOutputs` up to registration: collects and checks the
    /// outputs. `Ok(Err)` is a refused output (a build error).
    async fn collect(
        &mut self,
        build: BuildId,
        missing: &BTreeSet<StorePath>,
        inputs: &Inputs,
    ) -> Esc<Result<Round, String>> {
        let checks: Vec<OutputCheck> = self
            .drv
            .outputs
            .iter()
            .filter_map(|(id, o)| {
                let path = self.outputs.get(id)?;
                if !missing.contains(path) {
                    return None;
                }
                let fixed = if o.hash.is_empty() {
                    None
                } else {
                    let info = o.parse_hash_info().ok()?;
                    Some(FixedOutput {
                        recursive: info.recursive,
                        hash: info.hash,
                        hash_algo_field: o.hash_algo.clone(),
                    })
                };
                Some(OutputCheck {
                    id: id.clone(),
                    path: path.clone(),
                    fixed,
                })
            })
            .collect();
        let mut candidates = inputs.closure.clone();
        candidates.extend(self.outputs.values().cloned());
        let results = match self
            .ctx
            .effect(Effect::CollectOutputs {
                build,
                outputs: checks.clone(),
                candidates,
                keep_in_chroot: self.mode == BuildMode::Check,
            })
            .await?
        {
            EffectOutput::Outputs(r) if r.len() == checks.len() => r,
            other => return Err(unexpected(other)),
        };
        let mut found = Vec::new();
        for (check, result) in checks.iter().zip(results) {
            self.message(
                Level::Talkative,
                format!("scanning for references inside `{}'", check.path),
            );
            let out = match result {
                Ok(out) => out,
                Err(OutputRefused::Missing(m) | OutputRefused::Rejected(m)) => return Ok(Err(m)),
                Err(OutputRefused::HashMismatch {
                    trace_line,
                    message,
                }) => {
                    self.trace(trace_line, Some(Level::Talkative));
                    return Ok(Err(message));
                }
            };
            if self.mode == BuildMode::Check {
                let registered = match self
                    .ctx
                    .effect(Effect::QueryPathInfo {
                        path: check.path.clone(),
                    })
                    .await?
                {
                    EffectOutput::PathInfo(info) => info,
                    other => return Err(unexpected(other)),
                };
                let Some(registered) = registered else {
                    continue;
                };
                if registered.nar_hash != out.nar_hash {
                    return Err(Escape(format!(
                        "derivation `{}' may not be deterministic: output `{}' differs",
                        self.drv_path, check.path
                    )));
                }
                self.trace(format!("@ build-succeeded {} -", self.drv_path), None);
                continue;
            }
            if let Err(message) = self.check_references(&out).await? {
                return Ok(Err(message));
            }
            found.push(out);
        }
        if self.mode == BuildMode::Check {
            return Ok(Ok(Round::Checked));
        }
        Ok(Ok(Round::Built(found)))
    }

    /// `allowedReferences`, `allowedRequisites`, `disallowedReferences`
    /// and `disallowedRequisites` (spec 03 §4 item 9).
    async fn check_references(&self, out: &OutputFound) -> Esc<Result<(), String>> {
        for (attr, allowed, recursive) in [
            ("allowedReferences", true, false),
            ("allowedRequisites", true, true),
            ("disallowedReferences", false, false),
            ("disallowedRequisites", false, true),
        ] {
            let Some(spec) = self.drv.env.get(attr) else {
                continue;
            };
            let spec = match build_env::reference_specifiers(&self.store, &self.drv, spec) {
                Ok(s) => s,
                Err(message) => return Ok(Err(message)),
            };
            let used: BTreeSet<StorePath> = if recursive {
                let roots: Vec<StorePath> = out
                    .references
                    .iter()
                    .filter(|r| **r != out.path)
                    .cloned()
                    .collect();
                // Outputs of this build are not valid yet; their closure is
                // what they refer to themselves.
                let mut used = closure(&self.ctx, roots.clone()).await?;
                used.extend(roots);
                used
            } else {
                out.references.clone()
            };
            for p in &used {
                if spec.contains(p) != allowed {
                    return Ok(Err(format!(
                        "output (`{}') is not allowed to refer to path `{p}'",
                        out.path
                    )));
                }
            }
        }
        Ok(Ok(()))
    }

    /// Deduplicates and registers every output in one group.
    /// Registers the outputs of a build. `Ok(Err(message))`: the store
    /// refused them as they are (their references form a cycle), which
    /// fails the build as refused outputs do.
    async fn register(&mut self, found: Vec<OutputFound>) -> Esc<Result<(), String>> {
        let mut items = Vec::new();
        for out in found {
            if self.typed.auto_optimise_store {
                self.ctx
                    .effect(Effect::Deduplicate {
                        path: out.path.clone(),
                    })
                    .await?;
            }
            let derivation_outputs = if out.path.is_derivation() {
                let bytes = match self
                    .ctx
                    .effect(Effect::ReadStoreFile {
                        path: out.path.clone(),
                        max_bytes: self.config.limits.drv_file_max_bytes,
                    })
                    .await?
                {
                    EffectOutput::Bytes(b) => b,
                    other => return Err(unexpected(other)),
                };
                let parsed = parse_drv(&out.path, &bytes)?;
                parsed
                    .outputs
                    .iter()
                    .map(|(id, o)| {
                        self.store
                            .parse_path(&o.path)
                            .map(|p| (id.clone(), p))
                            .map_err(|e| Escape(e.to_string()))
                    })
                    .collect::<Esc<Vec<_>>>()?
            } else {
                Vec::new()
            };
            items.push(Registration {
                info: ValidPathInfo {
                    path: out.path,
                    deriver: Some(self.drv_path.clone()),
                    nar_hash: out.nar_hash,
                    references: out.references,
                    registration_time: self.ctx.now_s(),
                    nar_size: out.nar_size,
                },
                derivation_outputs,
            });
        }
        let flat: Vec<(StorePath, crate::hash::Hash)> = items
            .iter()
            .filter_map(|item| {
                let id = self
                    .outputs
                    .iter()
                    .find(|(_, p)| **p == item.info.path)
                    .map(|(id, _)| id)?;
                let info = self.drv.outputs.get(id)?.parse_hash_info().ok()?;
                (!info.recursive).then(|| (item.info.path.clone(), info.hash))
            })
            .collect();
        match self.ctx.register(RegistrationGroup { items }).await {
            Ok(()) => {}
            Err(e) if e.kind == crate::effect::EffectErrorKind::Invalid => {
                return Ok(Err(e.message));
            }
            Err(e) => return Err(Escape::from(e)),
        }
        // Flat fixed outputs are what later fixed-output derivations may
        // reuse; the index is only an optimisation, so a failure is logged.
        for (path, hash) in flat {
            if let Err(e) = self
                .ctx
                .write_db(Effect::IndexFlatContent { path, hash })
                .await
            {
                self.ctx.log_daemon(format!("error: {}", e.message));
            }
        }
        Ok(Ok(()))
    }

    /// Before running a fixed-output builder: if the store already holds
    /// the expected content of every missing output (recursive SHA-256:
    /// an item with that NAR hash; flat: an item guixd indexed with that
    /// content hash), copy it in and register it instead. `Ok(true)` when
    /// that was done. Only items without references are taken, so the
    /// copy refers to nothing, as a fixed output should; any failure
    /// along the way just means the builder runs.
    async fn reuse_fixed_outputs(&mut self, missing: &BTreeSet<StorePath>) -> Esc<bool> {
        let mut copies = Vec::new();
        for (id, o) in &self.drv.outputs {
            let Some(path) = self.outputs.get(id) else {
                return Ok(false);
            };
            if !missing.contains(path) {
                continue;
            }
            let Ok(info) = o.parse_hash_info() else {
                return Ok(false);
            };
            let lookup = if info.recursive {
                if info.hash.algo() != HashAlgo::Sha256 {
                    return Ok(false);
                }
                Effect::QueryPathsByNarHash { hash: info.hash }
            } else {
                Effect::FindFlatContent { hash: info.hash }
            };
            let candidates = match self.ctx.effect(lookup).await {
                Ok(EffectOutput::Paths(p)) => p,
                _ => return Ok(false),
            };
            let mut source = None;
            for c in candidates.into_iter().filter(|c| c != path) {
                if let Ok(EffectOutput::PathInfo(Some(i))) = self
                    .ctx
                    .effect(Effect::QueryPathInfo { path: c.clone() })
                    .await
                {
                    if i.references.is_empty() {
                        source = Some(c);
                        break;
                    }
                }
            }
            let Some(source) = source else {
                return Ok(false);
            };
            copies.push((path.clone(), source, info.recursive, info.hash));
        }
        if copies.is_empty() {
            return Ok(false);
        }
        let mut found = Vec::new();
        for (to, from, recursive, expected) in copies {
            let measured = match self
                .ctx
                .effect(Effect::CopyIntoOutput {
                    from: from.clone(),
                    to: to.clone(),
                    recursive,
                    expected,
                })
                .await
            {
                Ok(EffectOutput::Measured(m)) => m,
                Ok(_) | Err(_) => return Ok(false),
            };
            self.message(
                Level::Info,
                format!(
                    "reusing `{from}' for fixed-output derivation `{}'",
                    self.drv_path
                ),
            );
            found.push(OutputFound {
                path: to,
                nar_hash: measured.nar_hash,
                nar_size: measured.nar_size,
                references: BTreeSet::new(),
            });
        }
        self.register(found).await?.map_err(Escape)?;
        Ok(true)
    }
}

/// The first output (by position) whose path, hash or references differ
/// between two rounds.
fn differing_output(prev: &[OutputFound], now: &[OutputFound]) -> Option<StorePath> {
    for (a, b) in prev.iter().zip(now) {
        if a != b {
            return Some(a.path.clone());
        }
    }
    None
}

/// `build-chroot-dirs` and `build-extra-chroot-dirs`: `DIR` or
/// `INSIDE=OUTSIDE` entries, as (inside, outside).
fn extra_chroot_dirs(settings: &crate::settings::Settings) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in ["build-chroot-dirs", "build-extra-chroot-dirs"] {
        for entry in build_env::tokenize(settings.raw(name).unwrap_or("")) {
            match entry.split_once('=') {
                Some((inside, outside)) => out.push((inside.to_owned(), outside.to_owned())),
                None => out.push((entry.to_owned(), entry.to_owned())),
            }
        }
    }
    out
}

async fn valid_subset(ctx: &Ctx, paths: Vec<StorePath>) -> Esc<BTreeSet<StorePath>> {
    if paths.is_empty() {
        return Ok(BTreeSet::new());
    }
    match ctx.effect(Effect::QueryValidPaths { paths }).await? {
        EffectOutput::Paths(set) => Ok(set),
        other => Err(unexpected(other)),
    }
}

async fn closure(ctx: &Ctx, paths: Vec<StorePath>) -> Esc<BTreeSet<StorePath>> {
    if paths.is_empty() {
        return Ok(BTreeSet::new());
    }
    match ctx.effect(Effect::QueryClosure { paths }).await? {
        EffectOutput::Paths(set) => Ok(set),
        other => Err(unexpected(other)),
    }
}

fn parse_drv(path: &StorePath, bytes: &[u8]) -> Esc<Derivation> {
    derivation::parse_derivation(bytes, derivation::DrvLimits::default())
        .map(|(drv, _)| drv)
        .map_err(|e| Escape(format!("error parsing derivation `{path}': {e}")))
}

fn unexpected(output: EffectOutput) -> Escape {
    Escape(format!("guixd bug: unexpected effect result {output:?}"))
}

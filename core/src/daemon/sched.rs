//! The build scheduler's bookkeeping: which goals exist, who waits for
//! them, and who may run a builder now (spec 03 §1).
//!
//! Goals are daemon-wide: one goal per derivation (with its wanted outputs
//! and build mode) or per path to substitute, however many clients ask. A
//! *wait* is one request for a set of goals — a session's build-things or
//! ensure-path, or a goal's request for its inputs — and a goal lives as
//! long as some wait needs it. This module is plain data with methods: it
//! returns [`Action`]s that the [`Daemon`](super::Daemon) carries out
//! (start or drop a goal's coroutine, complete a task's request).
//!
//! Keeps true:
//! - at most one live goal per [`GoalKey`]; a finished or cancelled goal
//!   leaves the registry at once, so a later request starts afresh (and
//!   finds the outputs valid);
//! - a goal that no wait needs any more is cancelled, and so, in cascade,
//!   are the goals only it was waiting for;
//! - a wait completes exactly once: when every goal it names has finished,
//!   or earlier at the first failure when it does not keep going, or at
//!   the first goal that escaped with an error;
//! - build slots: never more running builds than the daemon's `--max-jobs`,
//!   never more for one session than its `build-max-jobs`; waiting goals
//!   are served in the C++ daemon's goal order (by name, then path); a goal
//!   retried with fewer builds beside it (or alone) is served before any
//!   new build starts; no new build starts while the machine is under
//!   pressure, unless nothing runs at all (so the daemon never stalls);
//! - the audience of a goal (the sessions that see its log) is every
//!   session from which a chain of waits leads to it.

use super::ConnId;
use super::task::{Completion, TaskId, Token};
use crate::settings::Settings;
use crate::store_path::StorePath;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// A goal, as the scheduler names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct GoalId(pub(crate) u64);

/// How a derivation is to be realised (the `mode` of build-things).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum BuildMode {
    Normal,
    Repair,
    Check,
}

impl BuildMode {
    /// The wire's mode number; unknown numbers act as normal builds.
    pub(crate) fn from_wire(n: u32) -> BuildMode {
        match n {
            1 => BuildMode::Repair,
            2 => BuildMode::Check,
            _ => BuildMode::Normal,
        }
    }
}

/// What a goal realises. Goals are ordered as the C++ daemon orders its
/// own (substitutions first, then by name, then by path), which is the
/// order builds waiting for a slot start in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GoalKey {
    /// Make a path valid (by substitution, if anything).
    Substitute(StorePath),
    /// Build a derivation's `outputs` (all of them when empty).
    Derivation {
        drv: StorePath,
        outputs: BTreeSet<String>,
        mode: BuildMode,
    },
}

impl GoalKey {
    /// The path a failure is reported under (`build of `P' failed`).
    pub(crate) fn path(&self) -> &StorePath {
        match self {
            GoalKey::Substitute(p) => p,
            GoalKey::Derivation { drv, .. } => drv,
        }
    }
}

impl Ord for GoalKey {
    /// The C++ daemon wakes goals in the order of `"a$NAME$PATH"` for
    /// substitutions and `"b$NAME$DRV"` for derivations; the remaining
    /// fields only make the order total.
    fn cmp(&self, other: &GoalKey) -> Ordering {
        fn parts(k: &GoalKey) -> (u8, &str, &str) {
            match k {
                GoalKey::Substitute(p) => (0, p.name(), p.as_str()),
                GoalKey::Derivation { drv, .. } => (1, drv.name(), drv.as_str()),
            }
        }
        parts(self)
            .cmp(&parts(other))
            .then_with(|| match (self, other) {
                (
                    GoalKey::Derivation {
                        outputs: o1,
                        mode: m1,
                        ..
                    },
                    GoalKey::Derivation {
                        outputs: o2,
                        mode: m2,
                        ..
                    },
                ) => m1.cmp(m2).then_with(|| o1.cmp(o2)),
                _ => Ordering::Equal,
            })
    }
}

impl PartialOrd for GoalKey {
    fn partial_cmp(&self, other: &GoalKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// How a goal ended, as its waiters count it (the C++ `ExitCode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GoalExit {
    Success,
    Failed,
    /// Nothing could substitute the path; not a failure for build-things.
    NoSubstituters,
    /// A reference of a substitute could not be realised. (Substitution
    /// goals end so once guixd downloads substitutes.)
    #[allow(dead_code)]
    IncompleteClosure,
}

/// Why a derivation goal ended (the C++ `BuildResult::Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BuildStatus {
    Built,
    /// The outputs were substituted (once guixd downloads substitutes).
    #[allow(dead_code)]
    Substituted,
    AlreadyValid,
    PermanentFailure,
    InputRejected,
    OutputRejected,
    TransientFailure,
    CachedFailure,
    TimedOut,
    MiscFailure,
    DependencyFailed,
    /// For substitution goals: the exit says it all.
    NotABuild,
}

/// What a finished goal tells its waiters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GoalResult {
    pub exit: GoalExit,
    pub status: BuildStatus,
    /// An error that ends the whole request, not just this goal (the C++
    /// daemon's exceptions that escape the goal loop), with its text.
    pub escaped: Option<String>,
    /// This goal, or a goal it waited for, timed out (status 101).
    pub timed_out: bool,
    /// This goal, or a goal it waited for, failed permanently (status 100).
    pub permanent: bool,
    /// For derivation goals whose derivation could be read: every output.
    pub outputs: BTreeMap<String, StorePath>,
}

impl GoalResult {
    pub(crate) fn new(exit: GoalExit, status: BuildStatus) -> GoalResult {
        GoalResult {
            exit,
            status,
            escaped: None,
            timed_out: status == BuildStatus::TimedOut,
            permanent: matches!(
                status,
                BuildStatus::PermanentFailure
                    | BuildStatus::CachedFailure
                    | BuildStatus::InputRejected
            ),
            outputs: BTreeMap::new(),
        }
    }

    /// An error that ends the request.
    pub(crate) fn escaped(message: String) -> GoalResult {
        GoalResult {
            escaped: Some(message),
            ..GoalResult::new(GoalExit::Failed, BuildStatus::MiscFailure)
        }
    }
}

/// What a goal was asked with: the options of the session whose request
/// created it. A goal shared with later requests keeps them.
#[derive(Clone, Debug)]
pub(crate) struct BuildOptions {
    /// The session whose request created the goal; its `build-max-jobs`
    /// caps the builds run on its behalf.
    pub owner: Option<ConnId>,
    /// The session's settings (timeouts, cores, rounds, chroot...).
    pub settings: Rc<Settings>,
    pub keep_failed: bool,
    pub keep_going: bool,
    /// The client's uid, to hand kept build directories to.
    pub client_uid: Option<u32>,
    /// The session asked for `@ ...` build traces.
    pub print_build_trace: bool,
}

/// A goal's request for a build slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotRequest {
    /// The session the build runs for, and its cap (`build-max-jobs`).
    pub owner: Option<ConnId>,
    pub session_max: usize,
    /// At most this many builds running in total once this one starts
    /// (a retry with fewer builds beside it; 1 means alone).
    pub total_max: Option<usize>,
}

/// What the machine must do after a scheduler call.
#[derive(Debug)]
pub(crate) enum Action {
    /// Start the coroutine of a new goal.
    Start {
        goal: GoalId,
        key: GoalKey,
        options: Rc<BuildOptions>,
    },
    /// Drop the coroutine of a goal nobody needs any more.
    Cancel(GoalId),
    /// Deliver a completion to a task.
    Complete {
        task: TaskId,
        token: Token,
        completion: Completion,
    },
}

/// The registry of goals and waits, and the slot pool.
#[derive(Debug)]
pub(crate) struct Sched {
    goals: BTreeMap<GoalId, Goal>,
    by_key: BTreeMap<GoalKey, GoalId>,
    waits: BTreeMap<u64, Wait>,
    /// Waits owned by each task, to withdraw them when it goes.
    waits_by_task: BTreeMap<TaskId, BTreeSet<u64>>,
    next_goal: u64,
    next_wait: u64,
    slots_max: usize,
    running: BTreeMap<GoalId, Running>,
    /// Slot requests not yet granted, served in goal-key order.
    slot_waiters: BTreeMap<(GoalKey, GoalId), (Token, SlotRequest)>,
    pressure_high: bool,
    audience: BTreeMap<GoalId, Rc<BTreeSet<ConnId>>>,
}

#[derive(Debug)]
struct Goal {
    key: GoalKey,
    /// Waits that need this goal.
    waiters: BTreeSet<u64>,
}

#[derive(Debug)]
struct Wait {
    owner: TaskId,
    token: Token,
    goals: Vec<GoalId>,
    results: Vec<Option<GoalResult>>,
    keep_going: bool,
}

#[derive(Debug)]
struct Running {
    owner: Option<ConnId>,
    /// A retried build that must not have more than this many builds
    /// running beside it (itself included).
    total_max: Option<usize>,
    /// The most other builds that ran at the same time as this one.
    others_max: usize,
}

impl Sched {
    /// A scheduler with `slots_max` build slots daemon-wide.
    pub(crate) fn new(slots_max: usize) -> Sched {
        Sched {
            goals: BTreeMap::new(),
            by_key: BTreeMap::new(),
            waits: BTreeMap::new(),
            waits_by_task: BTreeMap::new(),
            next_goal: 0,
            next_wait: 0,
            slots_max,
            running: BTreeMap::new(),
            slot_waiters: BTreeMap::new(),
            pressure_high: false,
            audience: BTreeMap::new(),
        }
    }

    /// Live goals.
    #[cfg(test)]
    pub(crate) fn goals_len(&self) -> usize {
        self.goals.len()
    }

    /// `owner` (a session or a goal) waits for `keys`; completes `token`
    /// with one result per key, in order (`None` for goals it stopped
    /// waiting for).
    pub(crate) fn realise(
        &mut self,
        owner: TaskId,
        token: Token,
        keys: Vec<GoalKey>,
        keep_going: bool,
        options: &Rc<BuildOptions>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if keys.is_empty() {
            actions.push(Action::Complete {
                task: owner,
                token,
                completion: Completion::Realised(Vec::new()),
            });
            return actions;
        }
        let wait_id = self.next_wait;
        self.next_wait += 1;
        let mut goals = Vec::with_capacity(keys.len());
        for key in keys {
            let goal = match self.by_key.get(&key) {
                Some(&g) => g,
                None => {
                    let g = GoalId(self.next_goal);
                    self.next_goal += 1;
                    self.by_key.insert(key.clone(), g);
                    self.goals.insert(
                        g,
                        Goal {
                            key: key.clone(),
                            waiters: BTreeSet::new(),
                        },
                    );
                    actions.push(Action::Start {
                        goal: g,
                        key,
                        options: options.clone(),
                    });
                    g
                }
            };
            if let Some(entry) = self.goals.get_mut(&goal) {
                entry.waiters.insert(wait_id);
            }
            goals.push(goal);
        }
        let n = goals.len();
        self.waits.insert(
            wait_id,
            Wait {
                owner,
                token,
                goals,
                results: vec![None; n],
                keep_going,
            },
        );
        self.waits_by_task.entry(owner).or_default().insert(wait_id);
        self.audience.clear();
        actions
    }

    /// A goal's coroutine returned `result`.
    pub(crate) fn finished(&mut self, goal: GoalId, result: GoalResult) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(entry) = self.goals.remove(&goal) else {
            return actions;
        };
        self.by_key.remove(&entry.key);
        self.forget_slot(goal, &mut actions);
        self.withdraw_waits_of(TaskId::Goal(goal), &mut actions);
        for wait_id in entry.waiters {
            let Some(wait) = self.waits.get_mut(&wait_id) else {
                continue;
            };
            for (i, g) in wait.goals.iter().enumerate() {
                if *g == goal {
                    wait.results[i] = Some(result.clone());
                }
            }
            let all_done = wait.results.iter().all(Option::is_some);
            let stop =
                result.escaped.is_some() || (result.exit == GoalExit::Failed && !wait.keep_going);
            if all_done || stop {
                self.complete_wait(wait_id, &mut actions);
            }
        }
        self.audience.clear();
        self.grant_slots(&mut actions);
        actions
    }

    /// A task went away (a session ended, a goal was dropped): its waits
    /// are withdrawn, and goals nobody needs any more are cancelled.
    pub(crate) fn task_gone(&mut self, task: TaskId) -> Vec<Action> {
        let mut actions = Vec::new();
        self.withdraw_waits_of(task, &mut actions);
        if let TaskId::Goal(goal) = task {
            self.forget_slot(goal, &mut actions);
        }
        self.grant_slots(&mut actions);
        actions
    }

    /// `goal` asks for a build slot; `token` completes when it has one.
    pub(crate) fn request_slot(
        &mut self,
        goal: GoalId,
        token: Token,
        request: SlotRequest,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(entry) = self.goals.get(&goal) else {
            return actions;
        };
        self.slot_waiters
            .insert((entry.key.clone(), goal), (token, request));
        self.grant_slots(&mut actions);
        actions
    }

    /// `goal`'s build ended; `token` completes with how many other builds
    /// ran beside it at most.
    pub(crate) fn release_slot(&mut self, goal: GoalId, token: Token) -> Vec<Action> {
        let mut actions = Vec::new();
        let others_max = self.running.remove(&goal).map_or(0, |r| r.others_max);
        actions.push(Action::Complete {
            task: TaskId::Goal(goal),
            token,
            completion: Completion::SlotReleased { others_max },
        });
        self.grant_slots(&mut actions);
        actions
    }

    /// The machine's memory or CPU pressure crossed a threshold.
    pub(crate) fn set_pressure_high(&mut self, high: bool) -> Vec<Action> {
        self.pressure_high = high;
        let mut actions = Vec::new();
        self.grant_slots(&mut actions);
        actions
    }

    /// True while new builds are held back because of pressure.
    pub(crate) fn pressure_high(&self) -> bool {
        self.pressure_high
    }

    /// The sessions that see `goal`'s log: every session from which a
    /// chain of waits leads to it.
    pub(crate) fn audience(&mut self, goal: GoalId) -> Rc<BTreeSet<ConnId>> {
        if let Some(a) = self.audience.get(&goal) {
            return a.clone();
        }
        // An explicit walk up the waits, so a deep graph cannot overflow
        // the stack; the graph is acyclic, but a visited set costs little
        // and bounds the walk regardless.
        let mut sessions = BTreeSet::new();
        let mut seen = BTreeSet::from([goal]);
        let mut stack = vec![goal];
        while let Some(g) = stack.pop() {
            if let Some(cached) = self.audience.get(&g) {
                sessions.extend(cached.iter().copied());
                continue;
            }
            let Some(entry) = self.goals.get(&g) else {
                continue;
            };
            for wait_id in &entry.waiters {
                match self.waits.get(wait_id).map(|w| w.owner) {
                    Some(TaskId::Conn(c)) => {
                        sessions.insert(c);
                    }
                    Some(TaskId::Goal(parent)) if seen.insert(parent) => stack.push(parent),
                    Some(TaskId::Goal(_)) => {}
                    None => {}
                }
            }
        }
        let a = Rc::new(sessions);
        self.audience.insert(goal, a.clone());
        a
    }

    /// Whether `goal` waits for a slot.
    pub(crate) fn waits_for_slot(&self, goal: GoalId) -> bool {
        self.slot_waiters.keys().any(|(_, g)| *g == goal)
    }

    /// Whether another session's build holds a slot that `goal` could
    /// use: the C++ daemon's sessions never wait for each other's slots,
    /// so guixd says why the goal waits.
    pub(crate) fn waits_for_others(&mut self, goal: GoalId) -> bool {
        let mine = self.audience(goal);
        let running: Vec<GoalId> = self.running.keys().copied().collect();
        running
            .into_iter()
            .any(|r| self.audience(r).is_disjoint(&mine))
    }

    // ---- internals

    fn complete_wait(&mut self, wait_id: u64, actions: &mut Vec<Action>) {
        let Some(wait) = self.waits.remove(&wait_id) else {
            return;
        };
        if let Some(set) = self.waits_by_task.get_mut(&wait.owner) {
            set.remove(&wait_id);
            if set.is_empty() {
                self.waits_by_task.remove(&wait.owner);
            }
        }
        self.detach(wait_id, &wait.goals, actions);
        actions.push(Action::Complete {
            task: wait.owner,
            token: wait.token,
            completion: Completion::Realised(wait.results),
        });
    }

    fn withdraw_waits_of(&mut self, task: TaskId, actions: &mut Vec<Action>) {
        let Some(ids) = self.waits_by_task.remove(&task) else {
            return;
        };
        for wait_id in ids {
            if let Some(wait) = self.waits.remove(&wait_id) {
                self.detach(wait_id, &wait.goals, actions);
            }
        }
        self.audience.clear();
    }

    /// Removes `wait_id` from the waiters of `goals`, cancelling those left
    /// without waiters (and, through their own waits, what only they
    /// needed).
    fn detach(&mut self, wait_id: u64, goals: &[GoalId], actions: &mut Vec<Action>) {
        let mut orphans = Vec::new();
        for goal in goals {
            if let Some(entry) = self.goals.get_mut(goal) {
                entry.waiters.remove(&wait_id);
                if entry.waiters.is_empty() {
                    orphans.push(*goal);
                }
            }
        }
        orphans.dedup();
        for goal in orphans {
            let Some(entry) = self.goals.remove(&goal) else {
                continue;
            };
            self.by_key.remove(&entry.key);
            actions.push(Action::Cancel(goal));
            self.forget_slot(goal, actions);
            self.withdraw_waits_of(TaskId::Goal(goal), actions);
        }
        self.audience.clear();
    }

    fn forget_slot(&mut self, goal: GoalId, _actions: &mut [Action]) {
        self.running.remove(&goal);
        self.slot_waiters.retain(|(_, g), _| *g != goal);
    }

    fn grant_slots(&mut self, actions: &mut Vec<Action>) {
        while let Some(waiter) = self.next_grantable() {
            let Some((token, request)) = self.slot_waiters.remove(&waiter) else {
                return;
            };
            let goal = waiter.1;
            let others = self.running.len();
            for r in self.running.values_mut() {
                r.others_max = r.others_max.max(others);
            }
            self.running.insert(
                goal,
                Running {
                    owner: request.owner,
                    total_max: request.total_max,
                    others_max: others,
                },
            );
            actions.push(Action::Complete {
                task: TaskId::Goal(goal),
                token,
                completion: Completion::Slot,
            });
        }
    }

    /// The first waiter (in goal order) that may start now, if any.
    fn next_grantable(&self) -> Option<(GoalKey, GoalId)> {
        let running = self.running.len();
        if self.pressure_high && running > 0 {
            return None;
        }
        // A retried build running with few builds beside it keeps new
        // builds out while it runs.
        let cap = self.running.values().filter_map(|r| r.total_max).min();
        let allowed = |req: &SlotRequest| {
            // A client's `--max-jobs` above the daemon's lets its own builds
            // use that many slots, as the C++ daemon's per-client limit
            // does; the daemon's value still bounds everyone else's.
            if running >= self.slots_max.max(req.session_max) {
                return false;
            }
            if req
                .total_max
                .into_iter()
                .chain(cap)
                .any(|m| running + 1 > m)
            {
                return false;
            }
            match req.owner {
                Some(owner) => {
                    let mine = self
                        .running
                        .values()
                        .filter(|r| r.owner == Some(owner))
                        .count();
                    mine < req.session_max
                }
                None => true,
            }
        };
        // A retried build that may not start yet holds back every new
        // build, so the running ones drain and it gets its turn.
        let restricted_blocked = self
            .slot_waiters
            .values()
            .any(|(_, r)| r.total_max.is_some() && !allowed(r));
        self.slot_waiters
            .iter()
            .find(|(_, (_, r))| allowed(r) && !(restricted_blocked && r.total_max.is_none()))
            .map(|(k, _)| k.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_path::StoreDir;

    fn path(name: &str) -> StorePath {
        StoreDir::new("/gnu/store")
            .unwrap()
            .parse_path(&format!(
                "/gnu/store/{}-{name}",
                "0".repeat(31) + &name.len().to_string()[..1]
            ))
            .unwrap()
    }

    fn drv(name: &str) -> GoalKey {
        GoalKey::Derivation {
            drv: path(&format!("{name}.drv")),
            outputs: BTreeSet::new(),
            mode: BuildMode::Normal,
        }
    }

    fn options() -> Rc<BuildOptions> {
        Rc::new(BuildOptions {
            owner: None,
            settings: Rc::new(Settings::default()),
            keep_failed: false,
            keep_going: false,
            client_uid: None,
            print_build_trace: false,
        })
    }

    fn conn(n: u32) -> ConnId {
        ConnId {
            index: n,
            generation: 1,
        }
    }

    /// Client `client`'s realise request `token` for the derivations
    /// `names`, keep-going, with default options: the goals it started.
    fn realise_all(s: &mut Sched, client: u32, token: Token, names: &[&str]) -> Vec<GoalId> {
        let keys = names.iter().map(|n| drv(n)).collect();
        started(&s.realise(TaskId::Conn(conn(client)), token, keys, true, &options()))
    }

    fn started(actions: &[Action]) -> Vec<GoalId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { goal, .. } => Some(*goal),
                _ => None,
            })
            .collect()
    }

    fn cancelled(actions: &[Action]) -> Vec<GoalId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Cancel(g) => Some(*g),
                _ => None,
            })
            .collect()
    }

    fn completed(actions: &[Action]) -> Vec<(TaskId, Token)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Complete { task, token, .. } => Some((*task, *token)),
                _ => None,
            })
            .collect()
    }

    fn ok() -> GoalResult {
        GoalResult::new(GoalExit::Success, BuildStatus::Built)
    }

    fn failed() -> GoalResult {
        GoalResult::new(GoalExit::Failed, BuildStatus::PermanentFailure)
    }

    #[test]
    fn one_goal_per_key_and_every_waiter_gets_the_result() {
        let mut s = Sched::new(1);
        let a = s.realise(
            TaskId::Conn(conn(1)),
            Token(1),
            vec![drv("x")],
            false,
            &options(),
        );
        let b = s.realise(
            TaskId::Conn(conn(2)),
            Token(7),
            vec![drv("x")],
            false,
            &options(),
        );
        let goals = started(&a);
        assert_eq!(goals.len(), 1);
        assert!(started(&b).is_empty());
        assert_eq!(s.audience(goals[0]).len(), 2);
        let done = s.finished(goals[0], ok());
        assert_eq!(
            completed(&done),
            vec![
                (TaskId::Conn(conn(1)), Token(1)),
                (TaskId::Conn(conn(2)), Token(7))
            ]
        );
        assert_eq!(s.goals_len(), 0);
    }

    #[test]
    fn a_failure_stops_a_wait_that_does_not_keep_going_and_orphans_are_cancelled() {
        let mut s = Sched::new(1);
        let a = s.realise(
            TaskId::Conn(conn(1)),
            Token(1),
            vec![drv("x"), drv("y")],
            false,
            &options(),
        );
        let goals = started(&a);
        // y waits for an input goal z.
        let z = started(&s.realise(
            TaskId::Goal(goals[1]),
            Token(3),
            vec![drv("z")],
            false,
            &options(),
        ))[0];
        assert_eq!(s.audience(z).as_ref(), &BTreeSet::from([conn(1)]));
        let done = s.finished(goals[0], failed());
        assert_eq!(completed(&done), vec![(TaskId::Conn(conn(1)), Token(1))]);
        let mut gone = cancelled(&done);
        gone.sort();
        assert_eq!(gone, vec![goals[1], z]);
        assert_eq!(s.goals_len(), 0);
    }

    #[test]
    fn keep_going_waits_for_everything() {
        let mut s = Sched::new(1);
        let a = s.realise(
            TaskId::Conn(conn(1)),
            Token(1),
            vec![drv("x"), drv("y")],
            true,
            &options(),
        );
        let goals = started(&a);
        assert!(completed(&s.finished(goals[0], failed())).is_empty());
        let done = s.finished(goals[1], ok());
        match &done[..] {
            [
                Action::Complete {
                    completion: Completion::Realised(results),
                    ..
                },
            ] => {
                assert_eq!(results[0].as_ref().unwrap().exit, GoalExit::Failed);
                assert_eq!(results[1].as_ref().unwrap().exit, GoalExit::Success);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_session_leaving_cancels_only_what_nobody_else_needs() {
        let mut s = Sched::new(1);
        let goals = started(&s.realise(
            TaskId::Conn(conn(1)),
            Token(1),
            vec![drv("x"), drv("y")],
            false,
            &options(),
        ));
        s.realise(
            TaskId::Conn(conn(2)),
            Token(1),
            vec![drv("y")],
            false,
            &options(),
        );
        let gone = cancelled(&s.task_gone(TaskId::Conn(conn(1))));
        assert_eq!(gone, vec![goals[0]]);
        assert_eq!(s.goals_len(), 1);
    }

    fn slot(owner: u32, session_max: usize, total_max: Option<usize>) -> SlotRequest {
        SlotRequest {
            owner: Some(conn(owner)),
            session_max,
            total_max,
        }
    }

    #[test]
    fn slots_respect_the_pool_the_session_cap_and_goal_order() {
        let mut s = Sched::new(2);
        let goals = realise_all(&mut s, 1, Token(1), &["c", "a", "b"]);
        let (c, a, b) = (goals[0], goals[1], goals[2]);
        // Session cap 1: only one of its builds runs.
        let g = s.request_slot(c, Token(10), slot(1, 1, None));
        assert_eq!(completed(&g), vec![(TaskId::Goal(c), Token(10))]);
        assert!(completed(&s.request_slot(b, Token(11), slot(1, 1, None))).is_empty());
        assert!(completed(&s.request_slot(a, Token(12), slot(1, 1, None))).is_empty());
        // When c ends, a (first by name) goes before b.
        let r = s.release_slot(c, Token(13));
        assert_eq!(
            completed(&r),
            vec![(TaskId::Goal(c), Token(13)), (TaskId::Goal(a), Token(12))]
        );
    }

    #[test]
    fn a_clients_max_jobs_above_the_daemons_applies_to_its_own_builds() {
        // The daemon runs one build at a time; client 1 asked for three.
        let mut s = Sched::new(1);
        let mine = realise_all(&mut s, 1, Token(1), &["a", "b", "c", "d"]);
        let theirs = realise_all(&mut s, 2, Token(2), &["e"]);
        for (i, g) in mine[..3].iter().enumerate() {
            let token = Token(10 + i as u64);
            assert_eq!(
                completed(&s.request_slot(*g, token, slot(1, 3, None))),
                vec![(TaskId::Goal(*g), token)]
            );
        }
        // Its fourth waits for one of its own; client 2 (cap 1, the
        // daemon's) waits while anything runs.
        assert!(completed(&s.request_slot(mine[3], Token(13), slot(1, 3, None))).is_empty());
        assert!(completed(&s.request_slot(theirs[0], Token(14), slot(2, 1, None))).is_empty());
        let r = s.release_slot(mine[0], Token(15));
        assert_eq!(
            completed(&r),
            vec![
                (TaskId::Goal(mine[0]), Token(15)),
                (TaskId::Goal(mine[3]), Token(13))
            ]
        );
    }

    #[test]
    fn a_retry_alone_drains_the_pool_first_and_counts_neighbours() {
        let mut s = Sched::new(3);
        let goals = realise_all(&mut s, 1, Token(1), &["a", "b", "c", "d"]);
        s.request_slot(goals[0], Token(1), slot(1, 9, None));
        s.request_slot(goals[1], Token(2), slot(1, 9, None));
        // c must run alone; d is new and must wait behind it.
        assert!(completed(&s.request_slot(goals[2], Token(3), slot(1, 9, Some(1)))).is_empty());
        assert!(completed(&s.request_slot(goals[3], Token(4), slot(1, 9, None))).is_empty());
        let r = s.release_slot(goals[0], Token(5));
        match &r[..] {
            [
                Action::Complete {
                    completion: Completion::SlotReleased { others_max },
                    ..
                },
            ] => assert_eq!(*others_max, 1),
            other => panic!("{other:?}"),
        }
        let r = s.release_slot(goals[1], Token(6));
        assert_eq!(
            completed(&r),
            vec![
                (TaskId::Goal(goals[1]), Token(6)),
                (TaskId::Goal(goals[2]), Token(3))
            ]
        );
        let r = s.release_slot(goals[2], Token(7));
        assert_eq!(
            completed(&r),
            vec![
                (TaskId::Goal(goals[2]), Token(7)),
                (TaskId::Goal(goals[3]), Token(4))
            ]
        );
    }

    #[test]
    fn pressure_holds_back_new_builds_but_never_stalls() {
        let mut s = Sched::new(4);
        let goals = realise_all(&mut s, 1, Token(1), &["a", "b"]);
        s.set_pressure_high(true);
        assert_eq!(
            completed(&s.request_slot(goals[0], Token(1), slot(1, 9, None))).len(),
            1
        );
        assert!(completed(&s.request_slot(goals[1], Token(2), slot(1, 9, None))).is_empty());
        assert_eq!(completed(&s.set_pressure_high(false)).len(), 1);
    }
}

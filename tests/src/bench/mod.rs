//! The side-by-side benchmark (issue 6): guixd on each runtime against the
//! C++ `guix-daemon` 1.5.0, both run inside the Guix root on fresh stores,
//! with the same load, in alternation.
//!
//! A [`Scenario`] is a named piece of work with a target; the runner
//! ([`run`]) starts one daemon per implementation for the scenario, lets
//! the scenario prepare each, then repeats the work, rotating which
//! implementation goes first in each repetition, so slow drift of the
//! machine (other users, page cache, disk) spreads over every
//! implementation alike; before each repetition the disks are synced, so
//! no repetition pays for the write-back of another's files. [`report`] turns the results into a table, a JSON
//! file and an SVG chart.
//!
//! Keeps true: every measured value is "lower is better" (seconds, bytes);
//! the ratio shown for an implementation is the C++ daemon's median divided
//! by that implementation's median, so a ratio of 2 means guixd does the
//! work in half the time (or half the memory); no scenario depends on
//! another one, and each starts from fresh stores.
//!
//! Groups of scenarios live in their own modules: [`load`] (the lean Rust
//! load client over the wire protocol), [`guix`] (the real Guix client run
//! inside the root), [`startup`] (a big database). Garbage-collection
//! scenarios belong in a module `gc` of their own, listed in
//! [`scenarios`].

pub mod env;
pub mod gc;
pub mod guix;
pub mod load;
pub mod report;
pub mod startup;

use env::{Daemon, DaemonOptions, Implementation};
use std::collections::BTreeMap;
use std::time::Duration;

/// What to run and how big.
#[derive(Clone, Debug)]
pub struct Config {
    /// Small sizes and few repetitions, for a smoke test.
    pub quick: bool,
    /// Repetitions of each scenario on each implementation.
    pub reps: usize,
    /// Run only scenarios whose name contains one of these.
    pub only: Vec<String>,
    /// The implementations to measure (the C++ daemon is always the
    /// reference of ratios, so it should be among them).
    pub implementations: Vec<Implementation>,
    /// Where the JSON and SVG files go.
    pub out_dir: std::path::PathBuf,
}

/// Sizes of the work, chosen by [`Config::quick`].
#[derive(Clone, Debug)]
pub struct Sizes {
    pub add_text_single: usize,
    pub add_text_concurrent_total: usize,
    pub queries: usize,
    pub handshakes: usize,
    pub big_file_bytes: u64,
    pub tree_files: usize,
    pub idle_connections: usize,
    pub idle_connections_guixd: usize,
    pub idle_probe_queries: usize,
    pub derivations: usize,
    pub guix_add_text: usize,
    pub startup_paths: usize,
}

impl Sizes {
    pub fn for_config(config: &Config) -> Sizes {
        if config.quick {
            Sizes {
                add_text_single: 200,
                add_text_concurrent_total: 512,
                queries: 500,
                handshakes: 100,
                big_file_bytes: 32 << 20,
                tree_files: 500,
                idle_connections: 100,
                idle_connections_guixd: 1000,
                idle_probe_queries: 100,
                derivations: 10,
                guix_add_text: 100,
                startup_paths: 10_000,
            }
        } else {
            Sizes {
                add_text_single: 2000,
                add_text_concurrent_total: 4096,
                queries: 10_000,
                handshakes: 1000,
                big_file_bytes: 1 << 30,
                tree_files: 20_000,
                idle_connections: 1000,
                idle_connections_guixd: 10_000,
                idle_probe_queries: 1000,
                derivations: 200,
                guix_add_text: 1000,
                startup_paths: 1_000_000,
            }
        }
    }
}

/// What a scenario aims for.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// C++ median / guixd median at least this.
    RatioAtLeast(f64),
    /// guixd's median at most this many units.
    AtMost(f64),
    /// No target: shown for information.
    None,
}

/// One measurement of one repetition.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// The measured value in the scenario's unit; lower is better.
    pub value: f64,
    /// Secondary figures (throughput, latency percentiles), by name.
    pub extra: BTreeMap<String, f64>,
    /// Operations that failed, with one example message.
    pub errors: usize,
    pub first_error: Option<String>,
    /// Failures whose message says the database was busy or locked.
    pub busy: usize,
}

impl Sample {
    pub fn of(value: f64) -> Sample {
        Sample {
            value,
            ..Sample::default()
        }
    }

    /// Records a failed operation.
    pub fn error(&mut self, message: String) {
        self.errors += 1;
        if message.contains("database is busy") || message.contains("database is locked") {
            self.busy += 1;
        }
        if self.first_error.is_none() {
            self.first_error = Some(message);
        }
    }

    /// Takes the slowest of `latencies` (seconds) as the value and notes
    /// the median and the 99th percentile.
    pub fn record_latencies(&mut self, latencies: Vec<f64>) {
        self.value = quantile(latencies.clone(), 1.0);
        self.extra
            .insert("p50 s".into(), quantile(latencies.clone(), 0.5));
        self.extra.insert("p99 s".into(), quantile(latencies, 0.99));
    }

    /// Adds another sample's failures to this one's.
    pub fn absorb_errors(&mut self, other: &Sample) {
        self.errors += other.errors;
        self.busy += other.busy;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

/// A daemon under measurement, which a scenario may restart.
pub struct Slot {
    pub implementation: Implementation,
    /// The program inside the root.
    pub program: String,
    pub options: DaemonOptions,
    pub daemon: Option<Daemon>,
    /// Store items the scenario prepared (e.g. to query).
    pub items: Vec<String>,
}

impl Slot {
    /// The running daemon; scenarios only call this while it runs.
    pub fn daemon(&self) -> &Daemon {
        match &self.daemon {
            Some(d) => d,
            None => panic!("{} is not running", self.implementation.name()),
        }
    }
}

/// A scenario: prepare once per daemon, then run repeatedly.
pub struct Scenario {
    pub name: String,
    /// What [`Sample::value`] counts: "s" or "bytes".
    pub unit: &'static str,
    pub target: Target,
    /// A sentence on what one repetition does.
    pub description: String,
    /// Which implementations take part (a subset of the configured ones).
    pub implementations: Vec<Implementation>,
    /// Extra daemon options.
    pub daemon_args: Vec<String>,
    /// Repetitions (overrides the configured number when smaller).
    pub reps_max: Option<usize>,
    pub prepare: Box<dyn Fn(&mut Slot)>,
    pub run: RunFn,
}

/// One repetition of a scenario on one daemon: `(slot, repetition)`.
pub type RunFn = Box<dyn Fn(&mut Slot, usize) -> Sample>;

/// Everything measured for one scenario.
#[derive(Clone, Debug)]
pub struct ScenarioResult {
    pub name: String,
    pub unit: &'static str,
    pub target: Target,
    pub description: String,
    pub samples: BTreeMap<Implementation, Vec<Sample>>,
}

impl ScenarioResult {
    /// The median value of `implementation`.
    pub fn median(&self, implementation: Implementation) -> Option<f64> {
        let samples = self.samples.get(&implementation)?;
        median(samples.iter().map(|s| s.value).collect())
    }

    /// The median of an extra figure.
    pub fn median_extra(&self, implementation: Implementation, key: &str) -> Option<f64> {
        let samples = self.samples.get(&implementation)?;
        median(
            samples
                .iter()
                .filter_map(|s| s.extra.get(key).copied())
                .collect(),
        )
    }

    /// C++ median / `implementation`'s median.
    pub fn ratio(&self, implementation: Implementation) -> Option<f64> {
        let cpp = self.median(Implementation::Cpp)?;
        let own = self.median(implementation)?;
        (own > 0.0).then(|| cpp / own)
    }

    /// Failed operations of `implementation` over all repetitions, and
    /// how many said the database was busy.
    pub fn errors(&self, implementation: Implementation) -> (usize, usize) {
        self.samples.get(&implementation).map_or((0, 0), |v| {
            (
                v.iter().map(|s| s.errors).sum(),
                v.iter().map(|s| s.busy).sum(),
            )
        })
    }

    /// Whether `implementation` meets the target; `None` when there is
    /// nothing to judge.
    pub fn met(&self, implementation: Implementation) -> Option<bool> {
        if !implementation.is_guixd() {
            return None;
        }
        let (errors, _) = self.errors(implementation);
        let ok = match self.target {
            Target::RatioAtLeast(r) => self.ratio(implementation)? >= r,
            Target::AtMost(v) => self.median(implementation)? <= v,
            Target::None => return None,
        };
        Some(ok && errors == 0)
    }
}

/// Every scenario, in the order they run.
pub fn scenarios(config: &Config) -> Vec<Scenario> {
    let sizes = Sizes::for_config(config);
    let mut all = Vec::new();
    all.extend(load::scenarios(&sizes));
    all.extend(guix::scenarios(&sizes));
    all.extend(startup::scenarios(&sizes));
    all.extend(gc::scenarios(config));
    all
}

/// Runs the selected scenarios; `programs` maps each implementation to its
/// program inside the root.
pub fn run(config: &Config, programs: &BTreeMap<Implementation, String>) -> Vec<ScenarioResult> {
    let mut results = Vec::new();
    for scenario in scenarios(config) {
        if !config.only.is_empty() && !config.only.iter().any(|o| scenario.name.contains(o)) {
            continue;
        }
        let result = run_scenario(config, programs, &scenario);
        report::print_one(&result);
        results.push(result);
    }
    results
}

fn run_scenario(
    config: &Config,
    programs: &BTreeMap<Implementation, String>,
    scenario: &Scenario,
) -> ScenarioResult {
    eprintln!("bench: {} — {}", scenario.name, scenario.description);
    let implementations: Vec<Implementation> = config
        .implementations
        .iter()
        .copied()
        .filter(|i| scenario.implementations.contains(i))
        .collect();
    let mut slots: Vec<Slot> = implementations
        .iter()
        .map(|&implementation| {
            let options = DaemonOptions {
                extra_args: scenario.daemon_args.clone(),
                dir: None,
            };
            let program = programs[&implementation].clone();
            let daemon = Daemon::start(implementation, &program, &options);
            let options = DaemonOptions {
                dir: Some(daemon.dir().to_owned()),
                ..options
            };
            Slot {
                implementation,
                program,
                options,
                daemon: Some(daemon),
                items: Vec::new(),
            }
        })
        .collect();
    for slot in &mut slots {
        (scenario.prepare)(slot);
    }
    let reps = scenario
        .reps_max
        .map_or(config.reps, |m| m.min(config.reps));
    let mut samples: BTreeMap<Implementation, Vec<Sample>> = BTreeMap::new();
    for rep in 0..reps {
        let count = slots.len();
        for k in 0..count {
            let slot = &mut slots[(k + rep) % count];
            // Dirty pages of earlier repetitions (a gigabyte file, twenty
            // thousand small ones) would otherwise be written back during
            // this one and be charged to whichever daemon runs then.
            env::sync_disks();
            let sample = (scenario.run)(slot, rep);
            eprintln!(
                "bench:   rep {rep} {:<14} {:>12.4} {}{}",
                slot.implementation.name(),
                sample.value,
                scenario.unit,
                sample
                    .first_error
                    .as_ref()
                    .map(|e| format!("  ({} errors, e.g. {e})", sample.errors))
                    .unwrap_or_default()
            );
            samples.entry(slot.implementation).or_default().push(sample);
        }
    }
    // Dropping the slots stops the daemons and removes their stores.
    drop(slots);
    ScenarioResult {
        name: scenario.name.clone(),
        unit: scenario.unit,
        target: scenario.target.clone(),
        description: scenario.description.clone(),
        samples,
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// The `q`-quantile (0..=1) of `values`, nearest rank.
pub fn quantile(mut values: Vec<f64>, q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64) * q).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Seconds of `d` as a float.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quantile() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(quantile(vec![1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(quantile(vec![1.0, 2.0, 3.0, 4.0], 1.0), 4.0);
    }
}

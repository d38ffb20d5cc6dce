//! The command line of `guix-daemon` (spec 04 §1), read the way GNU argp
//! reads it, and turned into the daemon's settings.
//!
//! Keeps true:
//! - every option of `guix-daemon` 1.5.0 is accepted under the same name,
//!   with the same short letters, hidden aliases and argument shapes
//!   (`--gc-keep-outputs[=yes/no]` takes its argument only after `=`);
//!   unambiguous prefixes of long options are accepted, as with argp;
//! - options take effect in command-line order, one occurrence at a time,
//!   exactly as argp hands them to the C++ daemon's `parse_opt`: a later
//!   occurrence overrides an earlier one, `--chroot-directory` and
//!   `--listen` accumulate, and the first invalid value is the one reported;
//! - each option changes the same setting name as `guix-daemon.cc` does, so
//!   helpers (`_NIX_OPTIONS`) and `set-options` see the same map; the three
//!   options the C++ daemon keeps outside the map (log compression, the
//!   offload hook, host loopback) are stored under the names below;
//! - errors carry the C++ daemon's texts; usage errors (an unknown or
//!   ambiguous option, a missing argument, a stray argument) exit with
//!   status 64 like argp's, invalid values with status 1;
//! - this module only parses: it reads neither the environment nor the
//!   filesystem.

use clap::{Arg, ArgAction, ArgMatches, Command};
use guixd_core::settings::{Settings, SettingsError};
use std::ffi::OsString;

/// Where `--log-compression` is kept: `none`, `gzip` (the default when
/// unset) or `bzip2`. The C++ daemon keeps it outside the settings map.
pub const LOG_COMPRESSION_SETTING: &str = "build-log-compression";

/// Where `--no-offload` is kept: `false` turns `guix offload` off (the
/// default, when unset, is on). The C++ daemon keeps it outside the map.
pub const USE_BUILD_HOOK_SETTING: &str = "build-use-hook";

/// Where `--isolate-host-loopback` is kept: `false` keeps fixed-output
/// builds away from the host's loopback (unset means reachable). The C++
/// daemon keeps it outside the map.
pub const USE_HOST_LOOPBACK_SETTING: &str = "build-use-host-loopback";

/// The daemon's verbosity without `--debug` (the C++ `lvlInfo`).
pub const VERBOSITY_INFO: u32 = 1;

/// The daemon's verbosity with `--debug` (the C++ `lvlDebug`).
pub const VERBOSITY_DEBUG: u32 = 4;

/// The exit status of a usage error, as argp's (`EX_USAGE`).
pub const USAGE_EXIT_STATUS: u8 = 64;

/// What the command line asks for.
#[derive(Debug)]
pub enum Action {
    /// Serve, with these options.
    Run(Options),
    /// Print the help text on standard output and exit 0.
    Help,
    /// Print the short usage text on standard output and exit 0.
    Usage,
    /// Print the version line on standard output and exit 0.
    Version,
}

/// The daemon's options after the command line was applied.
#[derive(Clone, Debug)]
pub struct Options {
    /// The settings map with every option applied and `update` done, so
    /// the typed view reflects them.
    pub settings: Settings,
    /// Every `--listen`, in order; empty means the default socket.
    pub listen: Vec<String>,
    /// The daemon's own verbosity and the initial one of every session.
    pub verbosity: u32,
    /// `--discover=yes`: run `guix discover` at start-up.
    pub discover: bool,
}

/// Why the command line was refused.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The grammar: unknown or ambiguous option, missing argument, stray
    /// argument. Printed by clap itself, exit status 64.
    #[error("{0}")]
    Usage(#[from] clap::Error),
    #[error("{0}: invalid number of rounds")]
    InvalidRounds(String),
    #[error("{0}: invalid number of build attempts")]
    InvalidAttempts(String),
    #[error("{0}: invalid pressure percentage")]
    InvalidPercent(String),
    #[error("{0}: unknown compression type")]
    UnknownCompression(String),
    #[error("'{0}': invalid Boolean value")]
    InvalidBoolean(String),
    /// A value `settings.update()` refuses (integers, mostly).
    #[error(transparent)]
    Setting(#[from] SettingsError),
}

/// Parses `args` (the program name first, as `std::env::args_os` gives
/// it) into what to do.
pub fn parse<I, T>(program: &str, args: I) -> Result<Action, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command(program).try_get_matches_from(args)?;
    let mut options = Options {
        settings: Settings::default(),
        listen: Vec::new(),
        verbosity: VERBOSITY_INFO,
        discover: false,
    };
    for (id, value) in occurrences(&matches) {
        if let Some(action) = apply(&mut options, id, value)? {
            return Ok(action);
        }
    }
    options.settings.update()?;
    Ok(Action::Run(options))
}

/// The clap description of the command line, for parsing and for the
/// help and usage texts.
pub fn command(program: &str) -> Command {
    let mut cmd = Command::new(program.to_owned())
        .about(format!(
            "{program} -- perform derivation builds and store accesses"
        ))
        .override_usage(format!("{program} [OPTION...]"))
        .after_help(AFTER_HELP)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .infer_long_args(true)
        .term_width(HELP_WIDTH_COLUMNS);
    for spec in SPECS {
        cmd = cmd.arg(spec.arg());
    }
    cmd
}

/// The help text (`--help`).
pub fn help_text(program: &str) -> String {
    command(program).render_help().to_string()
}

/// The short usage text (`--usage`), wrapped as argp wraps it.
pub fn usage_text(program: &str) -> String {
    let head = format!("Usage: {program}");
    let indent = " ".repeat(head.len() + 1);
    let mut text = head;
    let mut line_len = text.len();
    for spec in SPECS.iter().filter(|s| !s.hidden) {
        let mut word = String::from("[");
        if let Some(short) = spec.short {
            word.push('-');
            word.push(short);
            word.push('|');
        }
        word.push_str("--");
        word.push_str(spec.long);
        match spec.kind {
            Kind::Flag => {}
            Kind::Value(meta) => {
                word.push('=');
                word.push_str(meta);
            }
            Kind::OptionalBool => word.push_str("[=yes/no]"),
        }
        word.push(']');
        if line_len + 1 + word.len() > HELP_WIDTH_COLUMNS {
            text.push('\n');
            text.push_str(&indent);
            line_len = indent.len();
        } else {
            text.push(' ');
            line_len += 1;
        }
        line_len += word.len();
        text.push_str(&word);
    }
    text
}

/// How a usage error is reported: clap's message, or, for an ambiguous
/// abbreviation (which clap reports as unknown), argp's.
pub fn usage_error_text(program: &str, error: &clap::Error) -> String {
    if let Some(ambiguous) = ambiguity(error) {
        return format!(
            "{program}: {ambiguous}\nTry `{program} --help' or `{program} --usage' for more information.\n"
        );
    }
    error.render().to_string()
}

/// The width help and usage texts are wrapped to.
const HELP_WIDTH_COLUMNS: usize = 79;

/// argp's words for a long option that abbreviates several, when `error`
/// is clap's "unexpected argument" for such an abbreviation.
fn ambiguity(error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let name = arg.strip_prefix("--")?;
    let name = name.split_once('=').map_or(name, |(name, _)| name);
    let candidates: Vec<String> = SPECS
        .iter()
        .flat_map(|spec| std::iter::once(spec.long).chain(spec.aliases.iter().copied()))
        .filter(|long| long.starts_with(name))
        .map(|long| format!("'--{long}'"))
        .collect();
    if name.is_empty() || candidates.len() < 2 {
        return None;
    }
    Some(format!(
        "option '--{name}' is ambiguous; possibilities: {}",
        candidates.join(" ")
    ))
}

/// Text after the option list in `--help`: what the daemon is, and where
/// it puts the store when nothing says so.
const AFTER_HELP: &str = "\
This program is a daemon meant to run in the background. It serves requests \
sent over Unix-domain (and optionally TCP) sockets, accesses the store and \
builds derivations on behalf of its clients.

Where the store is: the environment variables NIX_STORE_DIR (or NIX_STORE), \
GUIX_STATE_DIRECTORY, GUIX_LOG_DIRECTORY, GUIX_DATABASE_DIRECTORY and \
GUIX_CONFIGURATION_DIRECTORY relocate it as for guix-daemon. When none is \
set, a Guix installation (/gnu/store and /var/guix) is served if this \
process may own it (root, or the store's owner); otherwise a self-contained \
store is served in $GUIXD_HOME (default: /var/lib/guixd for root, \
$XDG_DATA_HOME/guixd or ~/.local/share/guixd for others), and the \
environment a Guix client needs is printed. GUIXD_HOME, when set, is always \
used unless a relocation variable is set.";

/// How an option takes its argument.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// No argument.
    Flag,
    /// A mandatory argument, named so in the help.
    Value(&'static str),
    /// `yes` or `no`, optional, only after `=`; absent means `yes`.
    OptionalBool,
}

/// One option of `guix-daemon`.
struct Spec {
    /// The long name, also the clap id.
    long: &'static str,
    short: Option<char>,
    kind: Kind,
    /// Hidden options are accepted but not listed in `--help`.
    hidden: bool,
    /// Other long names of the same option, hidden.
    aliases: &'static [&'static str],
    help: &'static str,
}

/// Every option, in the order `--help` lists them.
const SPECS: &[Spec] = &[
    spec(
        "build-users-group",
        Kind::Value("GROUP"),
        "run builds as members of GROUP",
    ),
    spec(
        "cache-failures",
        Kind::Flag,
        "remember build failures and refuse to redo them",
    ),
    spec(
        "chroot-directory",
        Kind::Value("DIR"),
        "make DIR (or INSIDE=OUTSIDE) visible in build chroots; repeatable",
    ),
    Spec {
        short: Some('c'),
        ..spec(
            "cores",
            Kind::Value("N"),
            "let each build use N CPU cores (0: all of them)",
        )
    },
    spec("debug", Kind::Flag, "print debugging messages"),
    spec(
        "disable-chroot",
        Kind::Flag,
        "build without chroot and namespaces",
    ),
    Spec {
        aliases: &["disable-store-optimization"],
        ..spec(
            "disable-deduplication",
            Kind::Flag,
            "do not deduplicate identical files in the store",
        )
    },
    spec(
        "discover",
        Kind::OptionalBool,
        "use substitute servers found on the local network",
    ),
    spec(
        "gc-keep-derivations",
        Kind::OptionalBool,
        "keep the derivations of live outputs on GC (default: yes)",
    ),
    spec(
        "gc-keep-outputs",
        Kind::OptionalBool,
        "keep the outputs of live derivations on GC (default: no)",
    ),
    spec(
        "impersonate-linux-2.6",
        Kind::Flag,
        "make builds see a Linux 2.6 kernel",
    ),
    spec(
        "isolate-host-loopback",
        Kind::Flag,
        "keep fixed-output builds away from the host's loopback",
    ),
    spec(
        "listen",
        Kind::Value("SOCKET"),
        "accept connections on SOCKET (/FILE, HOST or HOST:PORT); repeatable",
    ),
    spec(
        "log-compression",
        Kind::Value("TYPE"),
        "compress build logs with TYPE: none, gzip or bzip2",
    ),
    Spec {
        hidden: true,
        ..spec(
            "disable-log-compression",
            Kind::Flag,
            "same as --log-compression=none",
        )
    },
    spec("lose-logs", Kind::Flag, "do not keep build logs"),
    spec(
        "max-silent-time",
        Kind::Value("SECONDS"),
        "fail builds silent for SECONDS",
    ),
    Spec {
        short: Some('M'),
        ..spec("max-jobs", Kind::Value("N"), "run at most N builds at once")
    },
    spec(
        "max-build-attempts",
        Kind::Value("N"),
        "retry a build that failed beside others up to N times in all, with fewer builds beside it (guixd only; default 1)",
    ),
    spec(
        "max-memory-pressure",
        Kind::Value("PERCENT"),
        "start no new build while the memory pressure (PSI 'full' avg10) is PERCENT or more (guixd only; default: never hold back)",
    ),
    spec(
        "max-cpu-pressure",
        Kind::Value("PERCENT"),
        "start no new build while the CPU pressure (PSI 'some' avg10) is PERCENT or more (guixd only; default: never hold back)",
    ),
    Spec {
        aliases: &["no-build-hook"],
        ..spec(
            "no-offload",
            Kind::Flag,
            "never offload builds to other machines",
        )
    },
    spec("no-substitutes", Kind::Flag, "never use substitutes"),
    spec(
        "rounds",
        Kind::Value("N"),
        "build each derivation N times and compare",
    ),
    spec(
        "substitute-urls",
        Kind::Value("URLS"),
        "use the space-separated URLS as default substitute servers",
    ),
    spec(
        "system",
        Kind::Value("SYSTEM"),
        "take SYSTEM as the current system type",
    ),
    spec(
        "timeout",
        Kind::Value("SECONDS"),
        "fail builds running longer than SECONDS",
    ),
    Spec {
        short: Some('?'),
        ..spec("help", Kind::Flag, "print this help and exit")
    },
    spec("usage", Kind::Flag, "print a short usage message and exit"),
    Spec {
        short: Some('V'),
        ..spec("version", Kind::Flag, "print the version and exit")
    },
];

const fn spec(long: &'static str, kind: Kind, help: &'static str) -> Spec {
    Spec {
        long,
        short: None,
        kind,
        hidden: false,
        aliases: &[],
        help,
    }
}

impl Spec {
    /// Every occurrence is recorded (`Append`) so that [`occurrences`] can
    /// replay them in command-line order; flags record an empty value.
    fn arg(&self) -> Arg {
        let mut arg = Arg::new(self.long)
            .long(self.long)
            .help(self.help)
            .hide(self.hidden)
            .action(ArgAction::Append);
        if let Some(short) = self.short {
            arg = arg.short(short);
        }
        for alias in self.aliases {
            arg = arg.alias(*alias);
        }
        match self.kind {
            Kind::Flag => arg.num_args(0).default_missing_value(""),
            // argp takes the next word as the argument whatever it looks
            // like (`--cores --debug` sets cores to "--debug").
            Kind::Value(meta) => arg.value_name(meta).num_args(1).allow_hyphen_values(true),
            Kind::OptionalBool => arg
                .value_name("yes/no")
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("yes"),
        }
    }
}

/// Every option occurrence as `(long name, value)`, in command-line order.
fn occurrences(matches: &ArgMatches) -> Vec<(&'static str, String)> {
    let mut all: Vec<(usize, &'static str, String)> = Vec::new();
    for spec in SPECS {
        let (Some(indices), Some(values)) = (
            matches.indices_of(spec.long),
            matches.get_many::<String>(spec.long),
        ) else {
            continue;
        };
        for (index, value) in indices.zip(values) {
            all.push((index, spec.long, value.clone()));
        }
    }
    all.sort_by_key(|&(index, _, _)| index);
    all.into_iter().map(|(_, id, value)| (id, value)).collect()
}

/// Applies one occurrence, as the C++ daemon's `parse_opt` does; returns
/// an action when the option ends parsing (help, usage, version).
fn apply(options: &mut Options, id: &str, value: String) -> Result<Option<Action>, CliError> {
    let settings = &mut options.settings;
    match id {
        "build-users-group" => settings.set("build-users-group", &value),
        "cache-failures" => settings.set("build-cache-failure", "true"),
        "chroot-directory" => {
            let joined = match settings.raw("build-extra-chroot-dirs") {
                Some(dirs) if !dirs.is_empty() => format!("{dirs} {value}"),
                _ => value,
            };
            settings.set("build-extra-chroot-dirs", &joined);
        }
        "cores" => settings.set("build-cores", &value),
        "debug" => options.verbosity = VERBOSITY_DEBUG,
        "disable-chroot" => settings.set("build-use-chroot", "false"),
        "disable-deduplication" => settings.set("auto-optimise-store", "false"),
        "discover" => {
            options.discover = yes_or_no(&value)?;
            settings.set("discover", bool_setting(options.discover));
        }
        "gc-keep-derivations" => {
            settings.set("gc-keep-derivations", bool_setting(yes_or_no(&value)?));
        }
        "gc-keep-outputs" => settings.set("gc-keep-outputs", bool_setting(yes_or_no(&value)?)),
        "impersonate-linux-2.6" => settings.set("build-impersonate-linux-26", "true"),
        "isolate-host-loopback" => settings.set(USE_HOST_LOOPBACK_SETTING, "false"),
        "listen" => options.listen.push(value),
        "log-compression" => match value.as_str() {
            "none" | "gzip" | "bzip2" => settings.set(LOG_COMPRESSION_SETTING, &value),
            _ => return Err(CliError::UnknownCompression(value)),
        },
        "disable-log-compression" => settings.set(LOG_COMPRESSION_SETTING, "none"),
        "lose-logs" => settings.set("build-keep-log", "false"),
        "max-silent-time" => settings.set("build-max-silent-time", &value),
        "max-jobs" => settings.set("build-max-jobs", &value),
        "max-build-attempts" => match value.trim().parse::<u32>() {
            Ok(n) if n >= 1 => settings.set("build-max-attempts", &n.to_string()),
            _ => return Err(CliError::InvalidAttempts(value)),
        },
        "max-memory-pressure" => {
            settings.set("build-pressure-memory-max", &parse_percent(&value)?);
        }
        "max-cpu-pressure" => settings.set("build-pressure-cpu-max", &parse_percent(&value)?),
        "no-offload" => settings.set(USE_BUILD_HOOK_SETTING, "false"),
        "no-substitutes" => settings.set("build-use-substitutes", "false"),
        "rounds" => {
            let rounds = parse_rounds(&value).ok_or(CliError::InvalidRounds(value))?;
            settings.set("build-repeat", &rounds.saturating_sub(1).to_string());
        }
        "substitute-urls" => settings.set("substitute-urls", &value),
        "system" => settings.set("system", &value),
        "timeout" => settings.set("build-timeout", &value),
        "help" => return Ok(Some(Action::Help)),
        "usage" => return Ok(Some(Action::Usage)),
        "version" => return Ok(Some(Action::Version)),
        // `occurrences` yields only ids from `SPECS`, each handled above.
        _ => unreachable!("option `{id}' has no effect defined"),
    }
    Ok(None)
}

/// argp's optional Boolean: `yes` or `no` in any case.
fn yes_or_no(value: &str) -> Result<bool, CliError> {
    if value.eq_ignore_ascii_case("yes") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("no") {
        Ok(false)
    } else {
        Err(CliError::InvalidBoolean(value.to_owned()))
    }
}

fn bool_setting(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// The number of `--rounds`, read as `strtoul` would (leading blanks and a
/// `+` allowed, saturating on overflow), except that an empty or negative
/// number is refused rather than wrapped around.
/// A pressure threshold: a number of percent from 0 to 100, kept as
/// written.
fn parse_percent(value: &str) -> Result<String, CliError> {
    match value.trim().parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(value.trim().to_owned()),
        _ => Err(CliError::InvalidPercent(value.to_owned())),
    }
}

fn parse_rounds(value: &str) -> Option<u64> {
    let digits = value.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let digits = digits.strip_prefix('+').unwrap_or(digits);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Options {
        let mut all = vec!["guixd"];
        all.extend_from_slice(args);
        match parse("guixd", all) {
            Ok(Action::Run(options)) => options,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn error(args: &[&str]) -> CliError {
        let mut all = vec!["guixd"];
        all.extend_from_slice(args);
        match parse("guixd", all) {
            Err(e) => e,
            Ok(other) => panic!("{args:?} parsed: {other:?}"),
        }
    }

    fn raw<'a>(o: &'a Options, name: &str) -> Option<&'a str> {
        o.settings.raw(name)
    }

    #[test]
    fn pressure_thresholds_are_percentages() {
        let o = run(&["--max-memory-pressure=12.5", "--max-cpu-pressure", "80"]);
        assert_eq!(raw(&o, "build-pressure-memory-max"), Some("12.5"));
        assert_eq!(raw(&o, "build-pressure-cpu-max"), Some("80"));
        for bad in ["-1", "101", "x", "NaN"] {
            assert!(matches!(
                error(&[&format!("--max-cpu-pressure={bad}")]),
                CliError::InvalidPercent(_)
            ));
        }
    }

    #[test]
    fn build_attempts_are_a_positive_number() {
        assert_eq!(
            raw(&run(&["--max-build-attempts=3"]), "build-max-attempts"),
            Some("3")
        );
        assert_eq!(raw(&run(&[]), "build-max-attempts"), None);
        assert!(matches!(
            error(&["--max-build-attempts=0"]),
            CliError::InvalidAttempts(_)
        ));
    }

    #[test]
    fn no_options_give_the_daemon_defaults() {
        let o = run(&[]);
        let t = o.settings.typed();
        assert!(t.use_chroot);
        assert!(t.auto_optimise_store);
        assert_eq!(t.build_cores, 0);
        assert_eq!(t.max_build_jobs, 1);
        assert!(t.use_substitutes);
        assert!(t.gc_keep_derivations);
        assert!(!t.gc_keep_outputs);
        assert!(t.keep_log);
        assert_eq!(t.max_silent_time_s, 3600);
        assert_eq!(t.build_timeout_s, 86400);
        assert_eq!(
            raw(&o, "substitute-urls"),
            Some("https://bordeaux.guix.gnu.org https://ci.guix.gnu.org")
        );
        assert_eq!(raw(&o, "build-use-substitutes"), Some("true"));
        assert!(o.listen.is_empty());
        assert_eq!(o.verbosity, VERBOSITY_INFO);
        assert!(!o.discover);
        assert_eq!(raw(&o, LOG_COMPRESSION_SETTING), None);
    }

    #[test]
    fn every_option_sets_its_setting() {
        let o = run(&[
            "--build-users-group=guixbuild",
            "--cache-failures",
            "--chroot-directory=/a",
            "--cores=4",
            "--debug",
            "--disable-chroot",
            "--disable-deduplication",
            "--discover=yes",
            "--gc-keep-derivations=no",
            "--gc-keep-outputs",
            "--impersonate-linux-2.6",
            "--isolate-host-loopback",
            "--listen=/tmp/s",
            "--log-compression=bzip2",
            "--lose-logs",
            "--max-silent-time=10",
            "--max-jobs=3",
            "--no-offload",
            "--no-substitutes",
            "--rounds=3",
            "--substitute-urls=http://a http://b",
            "--system=i686-linux",
            "--timeout=20",
        ]);
        let t = o.settings.typed();
        assert_eq!(t.build_users_group, "guixbuild");
        assert!(t.cache_failure);
        assert_eq!(raw(&o, "build-extra-chroot-dirs"), Some("/a"));
        assert_eq!(t.build_cores, 4);
        assert_eq!(o.verbosity, VERBOSITY_DEBUG);
        assert!(!t.use_chroot);
        assert!(!t.auto_optimise_store);
        assert!(o.discover);
        assert_eq!(raw(&o, "discover"), Some("true"));
        assert!(!t.gc_keep_derivations);
        assert!(t.gc_keep_outputs);
        assert!(t.impersonate_linux_26);
        assert_eq!(raw(&o, USE_HOST_LOOPBACK_SETTING), Some("false"));
        assert_eq!(o.listen, ["/tmp/s"]);
        assert_eq!(raw(&o, LOG_COMPRESSION_SETTING), Some("bzip2"));
        assert!(!t.keep_log);
        assert_eq!(t.max_silent_time_s, 10);
        assert_eq!(t.max_build_jobs, 3);
        assert_eq!(raw(&o, USE_BUILD_HOOK_SETTING), Some("false"));
        assert!(!t.use_substitutes);
        assert_eq!(raw(&o, "build-repeat"), Some("2"));
        assert_eq!(raw(&o, "substitute-urls"), Some("http://a http://b"));
        assert_eq!(t.system, "i686-linux");
        assert_eq!(t.build_timeout_s, 20);
    }

    #[test]
    fn short_options_and_separate_arguments() {
        let o = run(&["-c", "2", "-M4", "--timeout", "5", "--listen", "host:1"]);
        assert_eq!(o.settings.typed().build_cores, 2);
        assert_eq!(o.settings.typed().max_build_jobs, 4);
        assert_eq!(o.settings.typed().build_timeout_s, 5);
        assert_eq!(o.listen, ["host:1"]);
    }

    #[test]
    fn unambiguous_prefixes_and_hidden_aliases_are_accepted() {
        let o = run(&["--no-sub", "--max-j=2", "--gc-keep-o", "--isolate"]);
        assert!(!o.settings.typed().use_substitutes);
        assert_eq!(o.settings.typed().max_build_jobs, 2);
        assert!(o.settings.typed().gc_keep_outputs);
        assert_eq!(raw(&o, USE_HOST_LOOPBACK_SETTING), Some("false"));
        let o = run(&["--disable-store-optimization", "--no-build-hook"]);
        assert!(!o.settings.typed().auto_optimise_store);
        assert_eq!(raw(&o, USE_BUILD_HOOK_SETTING), Some("false"));
        let o = run(&["--disable-log-compression"]);
        assert_eq!(raw(&o, LOG_COMPRESSION_SETTING), Some("none"));
    }

    #[test]
    fn ambiguous_prefixes_unknown_options_and_stray_words_are_usage_errors() {
        for args in [
            &["--disable"][..],
            &["--no-"],
            &["--bogus"],
            &["extra"],
            &["--gc-keep-outputs", "yes"],
            &["--cores"],
            &["-h"],
        ] {
            assert!(matches!(error(args), CliError::Usage(_)), "{args:?}");
        }
    }

    #[test]
    fn ambiguous_prefixes_are_reported_as_argp_does() {
        let CliError::Usage(e) = error(&["--disable"]) else {
            panic!()
        };
        assert_eq!(
            usage_error_text("guixd", &e),
            "guixd: option '--disable' is ambiguous; possibilities: '--disable-chroot' \
             '--disable-deduplication' '--disable-store-optimization' \
             '--disable-log-compression'\n\
             Try `guixd --help' or `guixd --usage' for more information.\n"
        );
        let CliError::Usage(e) = error(&["--no=3"]) else {
            panic!()
        };
        assert!(usage_error_text("guixd", &e).starts_with(
            "guixd: option '--no' is ambiguous; possibilities: '--no-offload' '--no-build-hook' '--no-substitutes'\n"
        ));
        let CliError::Usage(e) = error(&["--bogus"]) else {
            panic!()
        };
        assert!(usage_error_text("guixd", &e).contains("unexpected argument '--bogus'"));
    }

    #[test]
    fn later_occurrences_win_in_command_line_order() {
        let o = run(&["-c", "1", "--cores=7"]);
        assert_eq!(o.settings.typed().build_cores, 7);
        let o = run(&["--log-compression=gzip", "--disable-log-compression"]);
        assert_eq!(raw(&o, LOG_COMPRESSION_SETTING), Some("none"));
        let o = run(&["--disable-log-compression", "--log-compression=gzip"]);
        assert_eq!(raw(&o, LOG_COMPRESSION_SETTING), Some("gzip"));
        let o = run(&["--gc-keep-outputs=yes", "--gc-keep-outputs=NO"]);
        assert!(!o.settings.typed().gc_keep_outputs);
        let o = run(&["--discover=no", "--discover"]);
        assert!(o.discover);
    }

    #[test]
    fn repeatable_options_accumulate_in_order() {
        let o = run(&[
            "--chroot-directory=/a",
            "--listen=/s1",
            "--chroot-directory",
            "/b=/c",
            "--listen=localhost",
            "--listen=localhost:9876",
        ]);
        assert_eq!(raw(&o, "build-extra-chroot-dirs"), Some("/a /b=/c"));
        assert_eq!(o.listen, ["/s1", "localhost", "localhost:9876"]);
    }

    #[test]
    fn an_argument_may_look_like_an_option() {
        // As with argp, the word after `--cores` is its argument, so this
        // fails on the integer check rather than enabling debugging.
        let e = error(&["--cores", "--debug"]);
        assert_eq!(
            e.to_string(),
            "configuration setting `build-cores' should have an integer value"
        );
    }

    #[test]
    fn invalid_values_give_the_daemon_texts() {
        let cases: &[(&[&str], &str)] = &[
            (&["--rounds=x"], "x: invalid number of rounds"),
            (&["--rounds="], ": invalid number of rounds"),
            (&["--rounds=-1"], "-1: invalid number of rounds"),
            (
                &["--log-compression=zstd"],
                "zstd: unknown compression type",
            ),
            (
                &["--gc-keep-outputs=maybe"],
                "'maybe': invalid Boolean value",
            ),
            (&["--gc-keep-derivations="], "'': invalid Boolean value"),
            (&["--discover=1"], "'1': invalid Boolean value"),
            (
                &["--cores=abc"],
                "configuration setting `build-cores' should have an integer value",
            ),
            (
                &["-M", "many"],
                "configuration setting `build-max-jobs' should have an integer value",
            ),
            (
                &["--timeout=1h"],
                "configuration setting `build-timeout' should have an integer value",
            ),
            (
                &["--max-silent-time=-"],
                "configuration setting `build-max-silent-time' should have an integer value",
            ),
        ];
        for (args, text) in cases {
            let e = error(args);
            assert!(!matches!(e, CliError::Usage(_)), "{args:?}");
            assert_eq!(e.to_string(), *text, "{args:?}");
        }
    }

    #[test]
    fn the_first_invalid_option_is_reported() {
        let e = error(&["--log-compression=zstd", "--rounds=x"]);
        assert_eq!(e.to_string(), "zstd: unknown compression type");
        let e = error(&["--rounds=x", "--log-compression=zstd"]);
        assert_eq!(e.to_string(), "x: invalid number of rounds");
    }

    #[test]
    fn rounds_map_to_build_repeat() {
        for (rounds, repeat) in [
            ("1", "0"),
            ("2", "1"),
            ("0", "0"),
            (" +5", "4"),
            ("99999999999999999999999", "18446744073709551614"),
        ] {
            let o = run(&[&format!("--rounds={rounds}")]);
            assert_eq!(raw(&o, "build-repeat"), Some(repeat), "{rounds}");
        }
    }

    #[test]
    fn help_usage_and_version_stop_parsing_where_they_appear() {
        for (args, want) in [
            (&["--help"][..], "Help"),
            (&["-?"], "Help"),
            (&["--usage"], "Usage"),
            (&["-V"], "Version"),
            (&["--vers"], "Version"),
            (&["--no-substitutes", "--version", "--rounds=x"], "Version"),
        ] {
            let mut all = vec!["guixd"];
            all.extend_from_slice(args);
            let got = match parse("guixd", all) {
                Ok(Action::Help) => "Help",
                Ok(Action::Usage) => "Usage",
                Ok(Action::Version) => "Version",
                other => panic!("{args:?}: {other:?}"),
            };
            assert_eq!(got, want, "{args:?}");
        }
        let e = error(&["--rounds=x", "--version"]);
        assert_eq!(e.to_string(), "x: invalid number of rounds");
    }

    #[test]
    fn help_lists_every_visible_option_and_no_hidden_one() {
        let help = help_text("guixd");
        for spec in SPECS {
            assert_eq!(
                help.contains(&format!("--{}", spec.long)),
                !spec.hidden,
                "{}",
                spec.long
            );
        }
        assert!(!help.contains("--disable-store-optimization"));
        assert!(!help.contains("--no-build-hook"));
        let usage = usage_text("guixd");
        assert!(usage.starts_with("Usage: guixd [--build-users-group=GROUP]"));
        assert!(usage.lines().all(|l| l.len() <= HELP_WIDTH_COLUMNS));
        assert!(help.lines().all(|l| l.len() <= HELP_WIDTH_COLUMNS));
        assert!(usage.contains("[--gc-keep-outputs[=yes/no]]"));
        assert!(usage.contains("[-c|--cores=N]"));
    }

    #[test]
    fn the_command_definition_is_consistent() {
        command("guixd").debug_assert();
    }
}

//! What a builder is given and how its results are judged, as pure
//! functions of the derivation and the settings (spec 03 §2 and §4): the
//! environment, the `exportReferencesGraph` files, the log file's name,
//! reference specifiers, and the texts for exit statuses.
//!
//! Keeps true: every text here is the C++ daemon's, byte for byte, since
//! builders and clients depend on it (the environment a builder sees, the
//! registration format it parses, the messages users grep).

use super::ExitStatus;
use crate::derivation::Derivation;
use crate::effect::LogCompression;
use crate::store_path::{StoreDir, StorePath};
use std::collections::{BTreeMap, BTreeSet};

/// The environment of a builder before the build directory is known
/// (spec 03 §2): `PATH`, `HOME`, `NIX_STORE` and `NIX_BUILD_CORES`, then
/// every pair of the derivation, which overrides them. The os adds
/// `NIX_BUILD_TOP`, `TMPDIR`, `TEMPDIR`, `TMP`, `TEMP` and `PWD`. In name
/// order.
pub(crate) fn builder_env(store: &StoreDir, cores: u32, drv: &Derivation) -> Vec<(String, String)> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_owned(), "/path-not-set".to_owned());
    env.insert("HOME".to_owned(), "/homeless-shelter".to_owned());
    env.insert("NIX_STORE".to_owned(), store.as_str().to_owned());
    env.insert("NIX_BUILD_CORES".to_owned(), cores.to_string());
    for (k, v) in &drv.env {
        env.insert(k.clone(), v.clone());
    }
    env.into_iter().collect()
}

/// The names of `impureEnvVars`, passed through from the daemon's own
/// environment, for fixed-output derivations only.
pub(crate) fn impure_env_vars(drv: &Derivation, fixed_output: bool) -> Vec<String> {
    if !fixed_output {
        return Vec::new();
    }
    tokenize(drv.env.get("impureEnvVars").map_or("", String::as_str))
        .map(str::to_owned)
        .collect()
}

/// Why a derivation's `exportReferencesGraph` cannot be honoured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GraphError {
    /// A build error: the build is refused (input rejected).
    Build(String),
    /// A plain error (a bad file name): the whole request fails.
    Plain(String),
}

/// The pairs of `exportReferencesGraph`: (file name, store item). Paths
/// inside a store item are cut down to the item.
pub(crate) fn export_references_graph(
    store: &StoreDir,
    drv: &Derivation,
) -> Result<Vec<(String, StorePath)>, GraphError> {
    let Some(spec) = drv.env.get("exportReferencesGraph") else {
        return Ok(Vec::new());
    };
    let tokens: Vec<&str> = tokenize(spec).collect();
    if tokens.len() % 2 != 0 {
        return Err(GraphError::Build(format!(
            "odd number of tokens in `exportReferencesGraph': `{spec}'"
        )));
    }
    let mut pairs = Vec::new();
    for pair in tokens.chunks(2) {
        let (name, path) = (pair[0], pair[1]);
        crate::store_path::check_name(name).map_err(|e| GraphError::Plain(e.to_string()))?;
        let item = store.item_of(path).map_err(|_| {
            GraphError::Build(format!(
                "`exportReferencesGraph' contains a non-store path `{path}'"
            ))
        })?;
        pairs.push((name.to_owned(), item));
    }
    Ok(pairs)
}

/// The error for an `exportReferencesGraph` path that is not valid.
pub(crate) fn graph_invalid_path(path: &StorePath) -> String {
    format!("`exportReferencesGraph' contains an invalid path `{path}'")
}

/// A closure in the format of `nix-store --register-validity` without
/// derivers or hashes: for each path, in order, the path, an empty
/// deriver line, the number of references and the references.
pub(crate) fn registration_text(items: &BTreeMap<StorePath, BTreeSet<StorePath>>) -> Vec<u8> {
    let mut out = String::new();
    for (path, refs) in items {
        out.push_str(path.as_str());
        out.push_str("\n\n");
        out.push_str(&refs.len().to_string());
        out.push('\n');
        for r in refs {
            out.push_str(r.as_str());
            out.push('\n');
        }
    }
    out.into_bytes()
}

/// The store paths named by a reference specifier attribute
/// (`allowedReferences` and friends): store paths, or names of the
/// derivation's outputs.
pub(crate) fn reference_specifiers(
    store: &StoreDir,
    drv: &Derivation,
    spec: &str,
) -> Result<BTreeSet<StorePath>, String> {
    let mut out = BTreeSet::new();
    for token in tokenize(spec) {
        if let Ok(p) = store.parse_path(token) {
            out.insert(p);
        } else if let Some(o) = drv.outputs.get(token) {
            let p = store.parse_path(&o.path).map_err(|e| format!("{e}"))?;
            out.insert(p);
        } else {
            return Err(format!(
                "derivation contains an invalid reference specifier `{token}'"
            ));
        }
    }
    Ok(out)
}

/// The file name of a derivation's build log, as the `@ build-started`
/// line shows it: `LOGDIR/drvs/XX//REST[.gz|.bz2]` (the double slash is
/// the C++ daemon's), or empty when logs are not kept.
pub(crate) fn log_file_name(
    log_dir: &str,
    drv: &StorePath,
    compression: LogCompression,
    keep_log: bool,
) -> String {
    if !keep_log {
        return String::new();
    }
    let base = drv.base_name();
    let (head, rest) = base.split_at(base.len().min(2));
    let ext = match compression {
        LogCompression::None => "",
        LogCompression::Gzip => ".gz",
        LogCompression::Bzip2 => ".bz2",
    };
    format!("{log_dir}/drvs/{head}//{rest}{ext}")
}

/// The log compression a settings map asks for (`gzip` when unset).
pub(crate) fn log_compression(settings: &crate::settings::Settings) -> LogCompression {
    match settings.raw("build-log-compression") {
        Some("none") => LogCompression::None,
        Some("bzip2") => LogCompression::Bzip2,
        _ => LogCompression::Gzip,
    }
}

/// `statusToString` for a failed builder: `failed with exit code N` or
/// `failed due to signal N (NAME)`.
pub(crate) fn status_text(status: ExitStatus) -> String {
    match status {
        ExitStatus::Code(n) => format!("failed with exit code {n}"),
        ExitStatus::Signal(n) => format!("failed due to signal {n} ({})", signal_description(n)),
    }
}

/// True for a successful exit.
pub(crate) fn status_ok(status: ExitStatus) -> bool {
    status == ExitStatus::Code(0)
}

/// `tokenizeString`: words separated by spaces, tabs and newlines.
pub(crate) fn tokenize(s: &str) -> impl Iterator<Item = &str> {
    s.split([' ', '\t', '\n', '\r']).filter(|t| !t.is_empty())
}

/// glibc's `strsignal` texts for Linux signals.
fn signal_description(n: i32) -> String {
    let text = match n {
        1 => "Hangup",
        2 => "Interrupt",
        3 => "Quit",
        4 => "Illegal instruction",
        5 => "Trace/breakpoint trap",
        6 => "Aborted",
        7 => "Bus error",
        8 => "Floating point exception",
        9 => "Killed",
        10 => "User defined signal 1",
        11 => "Segmentation fault",
        12 => "User defined signal 2",
        13 => "Broken pipe",
        14 => "Alarm clock",
        15 => "Terminated",
        16 => "Stack fault",
        17 => "Child exited",
        18 => "Continued",
        19 => "Stopped (signal)",
        20 => "Stopped",
        21 => "Stopped (tty input)",
        22 => "Stopped (tty output)",
        23 => "Urgent I/O condition",
        24 => "CPU time limit exceeded",
        25 => "File size limit exceeded",
        26 => "Virtual timer expired",
        27 => "Profiling timer expired",
        28 => "Window changed",
        29 => "I/O possible",
        30 => "Power failure",
        31 => "Bad system call",
        34..=64 => return format!("Real-time signal {}", n - 34),
        _ => return format!("Unknown signal {n}"),
    };
    text.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derivation::DerivationOutput;

    fn store() -> StoreDir {
        StoreDir::new("/gnu/store").unwrap()
    }

    fn p(s: &str) -> StorePath {
        store().parse_path(s).unwrap()
    }

    const A: &str = "/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a";
    const B: &str = "/gnu/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b";

    fn drv(env: &[(&str, &str)]) -> Derivation {
        let mut d = Derivation::default();
        d.outputs.insert(
            "out".into(),
            DerivationOutput {
                path: A.into(),
                ..Default::default()
            },
        );
        for (k, v) in env {
            d.env.insert((*k).into(), (*v).into());
        }
        d
    }

    #[test]
    fn the_environment_starts_from_the_daemon_defaults_and_the_drv_wins() {
        let env = builder_env(&store(), 0, &drv(&[("out", A), ("PATH", "/bin")]));
        assert_eq!(
            env,
            vec![
                ("HOME".into(), "/homeless-shelter".into()),
                ("NIX_BUILD_CORES".into(), "0".into()),
                ("NIX_STORE".into(), "/gnu/store".into()),
                ("PATH".into(), "/bin".into()),
                ("out".into(), A.into()),
            ]
        );
    }

    #[test]
    fn impure_variables_only_for_fixed_outputs() {
        let d = drv(&[("impureEnvVars", "http_proxy  https_proxy\n")]);
        assert!(impure_env_vars(&d, false).is_empty());
        assert_eq!(impure_env_vars(&d, true), vec!["http_proxy", "https_proxy"]);
    }

    #[test]
    fn references_graph_pairs_and_errors() {
        let d = drv(&[("exportReferencesGraph", &format!("g {A}/bin/x"))]);
        assert_eq!(
            export_references_graph(&store(), &d).unwrap(),
            vec![("g".to_owned(), p(A))]
        );
        let odd = drv(&[("exportReferencesGraph", "a b c")]);
        assert_eq!(
            export_references_graph(&store(), &odd),
            Err(GraphError::Build(
                "odd number of tokens in `exportReferencesGraph': `a b c'".into()
            ))
        );
        let outside = drv(&[("exportReferencesGraph", "g /etc/passwd")]);
        assert_eq!(
            export_references_graph(&store(), &outside),
            Err(GraphError::Build(
                "`exportReferencesGraph' contains a non-store path `/etc/passwd'".into()
            ))
        );
    }

    #[test]
    fn registration_text_has_empty_derivers() {
        let mut items = BTreeMap::new();
        items.insert(p(B), BTreeSet::from([p(A), p(B)]));
        items.insert(p(A), BTreeSet::new());
        let text = String::from_utf8(registration_text(&items)).unwrap();
        assert_eq!(text, format!("{A}\n\n0\n{B}\n\n2\n{A}\n{B}\n"));
    }

    #[test]
    fn reference_specifiers_take_paths_and_output_names() {
        let d = drv(&[]);
        assert_eq!(
            reference_specifiers(&store(), &d, &format!("out {B}")).unwrap(),
            BTreeSet::from([p(A), p(B)])
        );
        assert_eq!(
            reference_specifiers(&store(), &d, "lib"),
            Err("derivation contains an invalid reference specifier `lib'".into())
        );
    }

    #[test]
    fn log_names_have_the_double_slash() {
        let d = p("/gnu/store/ab0000000000000000000000000000zz-x.drv");
        assert_eq!(
            log_file_name("/var/log/guix", &d, LogCompression::Gzip, true),
            "/var/log/guix/drvs/ab//0000000000000000000000000000zz-x.drv.gz"
        );
        assert_eq!(
            log_file_name("/var/log/guix", &d, LogCompression::None, false),
            ""
        );
    }

    #[test]
    fn statuses_read_like_the_daemon() {
        assert_eq!(status_text(ExitStatus::Code(3)), "failed with exit code 3");
        assert_eq!(
            status_text(ExitStatus::Signal(9)),
            "failed due to signal 9 (Killed)"
        );
        assert!(status_ok(ExitStatus::Code(0)));
        assert!(!status_ok(ExitStatus::Signal(0)));
    }
}

//! Where the store, state, logs, database and configuration are: read from
//! the environment as `guix-daemon` reads it (spec 02 §1), or, when the
//! environment says nothing, chosen so that the daemon comes up usable on
//! any machine.
//!
//! The decision, in order:
//! 1. any relocation variable ([`RELOCATION_VARS`]) is set: the C++
//!    daemon's rules exactly (each variable, else its default);
//! 2. `GUIXD_HOME` is set: a self-contained store there;
//! 3. `/gnu/store` and `/var/guix` exist and this process may own them
//!    (root, or the owner of `/gnu/store`, as a rootless `guix-daemon`
//!    is): the standard layout;
//! 4. otherwise a self-contained store in a directory of its own:
//!    `/var/lib/guixd` for root, `$XDG_DATA_HOME/guixd` or
//!    `$HOME/.local/share/guixd` for anyone else.
//!
//! A self-contained store at `H` is `H/store`, `H/var` (state, with the
//! database in `H/var/db`), `H/log` and `H/etc`.
//!
//! Keeps true: the decision is a pure function of what [`Host`] reports
//! (environment, effective uid, which paths exist and who owns them), so
//! tests can give it any machine; every directory in a [`Layout`] is
//! absolute and lexically canonical (no `.`, `..`, repeated or trailing
//! `/`), as the C++ daemon's `canonPath` makes them.

use guixd_core::store_path::canonicalise_lexically;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The variables that relocate a store, as the C++ daemon reads them.
/// `NIX_BIN_DIR` and `GUIX` only say where the `guix` program is, so they
/// are read in every mode but do not count as relocating the store.
pub const RELOCATION_VARS: [&str; 6] = [
    "NIX_STORE_DIR",
    "NIX_STORE",
    "GUIX_STATE_DIRECTORY",
    "GUIX_LOG_DIRECTORY",
    "GUIX_DATABASE_DIRECTORY",
    "GUIX_CONFIGURATION_DIRECTORY",
];

/// The variable naming the directory of a self-contained store.
pub const HOME_VAR: &str = "GUIXD_HOME";

/// The standard store of a Guix installation.
pub const STANDARD_STORE: &str = "/gnu/store";
/// The standard state directory of a Guix installation.
pub const STANDARD_STATE: &str = "/var/guix";
const STANDARD_LOG: &str = "/var/log/guix";
const STANDARD_CONF: &str = "/etc/guix";
/// Debian's `bindir` for the `guix` program.
const STANDARD_BIN: &str = "/usr/bin";
/// The self-contained store of a daemon run by root.
const ROOT_HOME: &str = "/var/lib/guixd";

/// The default socket, relative to the state directory.
const SOCKET_IN_STATE: &str = "daemon-socket/socket";

/// What the layout decision needs to know about the machine.
pub trait Host {
    /// An environment variable, if set (even to the empty string).
    fn var(&self, name: &str) -> Option<OsString>;
    /// Whether the daemon runs with effective uid 0.
    fn is_root(&self) -> bool;
    /// Whether `path` exists (following symlinks).
    fn exists(&self, path: &Path) -> bool;
    /// Whether `path` exists and belongs to the daemon's effective uid.
    fn owned_by_us(&self, path: &Path) -> bool;
}

/// How the layout was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The environment relocates the store.
    Relocated,
    /// The standard layout of a Guix installation.
    Standard,
    /// A self-contained store in `home`.
    SelfContained { home: PathBuf, why: Why },
}

/// Why a self-contained store is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// `GUIXD_HOME` asks for it.
    HomeSet,
    /// `/gnu/store` or `/var/guix` is missing.
    NoInstallation,
    /// There is a Guix installation, but it is not ours to serve.
    NotOurs,
}

/// Where everything is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub mode: Mode,
    pub store: String,
    pub state: PathBuf,
    pub log: PathBuf,
    pub db: PathBuf,
    pub conf: PathBuf,
    /// The `guix` program helpers are run from.
    pub guix_program: PathBuf,
}

/// Why no layout could be chosen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The C++ daemon's `canonPath` text.
    #[error("not an absolute path: `{0}'")]
    NotAbsolute(String),
    #[error("environment variable {0} is not valid UTF-8")]
    NotUnicode(&'static str),
    #[error(
        "cannot choose a directory for the self-contained store: set {HOME_VAR} (or HOME), or relocate the store with NIX_STORE_DIR and GUIX_STATE_DIRECTORY"
    )]
    NoHome,
}

/// The real machine.
pub struct RealHost;

impl Host for RealHost {
    fn var(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }

    fn is_root(&self) -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn owned_by_us(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        std::fs::metadata(path).is_ok_and(|m| m.uid() == euid)
    }
}

/// Chooses where everything is; see the module documentation.
pub fn decide(host: &dyn Host) -> Result<Layout, LayoutError> {
    let var = |name: &'static str| -> Result<Option<String>, LayoutError> {
        host.var(name)
            .map(|v| v.into_string().map_err(|_| LayoutError::NotUnicode(name)))
            .transpose()
    };
    let bin_dir = canon(&var("NIX_BIN_DIR")?.unwrap_or_else(|| STANDARD_BIN.to_owned()))?;
    let guix_program = canon(&match var("GUIX")? {
        Some(guix) => guix,
        None => format!("{bin_dir}/guix"),
    })?;

    let relocated = RELOCATION_VARS.iter().any(|name| host.var(name).is_some());
    let mode = if relocated {
        Mode::Relocated
    } else if let Some(home) = var(HOME_VAR)? {
        Mode::SelfContained {
            home: canon(&home)?.into(),
            why: Why::HomeSet,
        }
    } else if !host.exists(Path::new(STANDARD_STORE)) || !host.exists(Path::new(STANDARD_STATE)) {
        Mode::SelfContained {
            home: default_home(host, &var)?,
            why: Why::NoInstallation,
        }
    } else if host.is_root() || host.owned_by_us(Path::new(STANDARD_STORE)) {
        Mode::Standard
    } else {
        Mode::SelfContained {
            home: default_home(host, &var)?,
            why: Why::NotOurs,
        }
    };

    let (store, state, log, db, conf) = match &mode {
        Mode::SelfContained { home, .. } => {
            let home = home.to_string_lossy();
            let at = |sub: &str| canonicalise_lexically(&format!("{home}/{sub}"));
            (at("store"), at("var"), at("log"), at("var/db"), at("etc"))
        }
        // The C++ daemon's `processEnvironment`; in the standard layout
        // none of these variables is set, so the defaults apply.
        Mode::Relocated | Mode::Standard => {
            let store = match var("NIX_STORE_DIR")? {
                Some(dir) => dir,
                None => var("NIX_STORE")?.unwrap_or_else(|| STANDARD_STORE.to_owned()),
            };
            let or = |name, default: &str| -> Result<String, LayoutError> {
                canon(&var(name)?.unwrap_or_else(|| default.to_owned()))
            };
            let state = or("GUIX_STATE_DIRECTORY", STANDARD_STATE)?;
            let db = or("GUIX_DATABASE_DIRECTORY", &format!("{state}/db"))?;
            (
                canon(&store)?,
                state,
                or("GUIX_LOG_DIRECTORY", STANDARD_LOG)?,
                db,
                or("GUIX_CONFIGURATION_DIRECTORY", STANDARD_CONF)?,
            )
        }
    };
    Ok(Layout {
        mode,
        store,
        state: state.into(),
        log: log.into(),
        db: db.into(),
        conf: conf.into(),
        guix_program: guix_program.into(),
    })
}

impl Layout {
    /// The socket served when no `--listen` is given.
    pub fn default_socket(&self) -> PathBuf {
        self.state.join(SOCKET_IN_STATE)
    }
}

/// `canonPath` without symlink resolution: absolute paths only.
fn canon(path: &str) -> Result<String, LayoutError> {
    if !path.starts_with('/') {
        return Err(LayoutError::NotAbsolute(path.to_owned()));
    }
    Ok(canonicalise_lexically(path))
}

/// The self-contained store's directory when `GUIXD_HOME` is not set.
/// Relative or empty XDG and HOME values are ignored, as the XDG base
/// directory rules say.
fn default_home(
    host: &dyn Host,
    var: &dyn Fn(&'static str) -> Result<Option<String>, LayoutError>,
) -> Result<PathBuf, LayoutError> {
    if host.is_root() {
        return Ok(ROOT_HOME.into());
    }
    let absolute = |v: Option<String>| v.filter(|v| v.starts_with('/'));
    if let Some(data) = absolute(var("XDG_DATA_HOME")?) {
        return Ok(canonicalise_lexically(&format!("{data}/guixd")).into());
    }
    if let Some(home) = absolute(var("HOME")?) {
        return Ok(canonicalise_lexically(&format!("{home}/.local/share/guixd")).into());
    }
    Err(LayoutError::NoHome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A made-up machine.
    #[derive(Default)]
    struct Fake {
        vars: BTreeMap<&'static str, &'static str>,
        root: bool,
        existing: Vec<&'static str>,
        ours: Vec<&'static str>,
    }

    impl Host for Fake {
        fn var(&self, name: &str) -> Option<OsString> {
            self.vars.get(name).map(OsString::from)
        }
        fn is_root(&self) -> bool {
            self.root
        }
        fn exists(&self, path: &Path) -> bool {
            self.existing.iter().any(|p| Path::new(p) == path)
        }
        fn owned_by_us(&self, path: &Path) -> bool {
            self.exists(path) && self.ours.iter().any(|p| Path::new(p) == path)
        }
    }

    fn guix_machine(root: bool) -> Fake {
        Fake {
            root,
            existing: vec![STANDARD_STORE, STANDARD_STATE],
            ..Fake::default()
        }
    }

    fn with(mut fake: Fake, vars: &[(&'static str, &'static str)]) -> Fake {
        fake.vars.extend(vars.iter().copied());
        fake
    }

    fn dirs(l: &Layout) -> [String; 5] {
        [
            l.store.clone(),
            l.state.display().to_string(),
            l.log.display().to_string(),
            l.db.display().to_string(),
            l.conf.display().to_string(),
        ]
    }

    #[test]
    fn root_on_a_guix_installation_gets_the_standard_layout() {
        let l = decide(&guix_machine(true)).unwrap();
        assert_eq!(l.mode, Mode::Standard);
        assert_eq!(
            dirs(&l),
            [
                "/gnu/store",
                "/var/guix",
                "/var/log/guix",
                "/var/guix/db",
                "/etc/guix"
            ]
        );
        assert_eq!(l.guix_program, Path::new("/usr/bin/guix"));
        assert_eq!(
            l.default_socket(),
            Path::new("/var/guix/daemon-socket/socket")
        );
    }

    #[test]
    fn the_owner_of_the_store_gets_the_standard_layout_too() {
        let mut m = guix_machine(false);
        m.ours.push(STANDARD_STORE);
        assert_eq!(decide(&m).unwrap().mode, Mode::Standard);
    }

    #[test]
    fn others_on_a_guix_installation_get_their_own_store() {
        let m = with(guix_machine(false), &[("HOME", "/home/alice")]);
        let l = decide(&m).unwrap();
        assert_eq!(
            l.mode,
            Mode::SelfContained {
                home: "/home/alice/.local/share/guixd".into(),
                why: Why::NotOurs
            }
        );
    }

    #[test]
    fn a_machine_without_guix_gets_a_self_contained_store() {
        for (root, existing, home) in [
            (true, vec![], "/var/lib/guixd"),
            (true, vec![STANDARD_STORE], "/var/lib/guixd"),
            (true, vec![STANDARD_STATE], "/var/lib/guixd"),
            (false, vec![], "/home/bob/.local/share/guixd"),
        ] {
            let m = Fake {
                root,
                existing,
                ..with(Fake::default(), &[("HOME", "/home/bob/")])
            };
            let l = decide(&m).unwrap();
            assert_eq!(
                l.mode,
                Mode::SelfContained {
                    home: home.into(),
                    why: Why::NoInstallation
                }
            );
            assert_eq!(
                dirs(&l),
                [
                    format!("{home}/store"),
                    format!("{home}/var"),
                    format!("{home}/log"),
                    format!("{home}/var/db"),
                    format!("{home}/etc"),
                ]
            );
            assert_eq!(
                l.default_socket(),
                Path::new(&format!("{home}/var/daemon-socket/socket"))
            );
        }
    }

    #[test]
    fn xdg_data_home_comes_before_home_when_absolute() {
        let m = with(
            Fake::default(),
            &[("HOME", "/home/c"), ("XDG_DATA_HOME", "/data/c")],
        );
        let Mode::SelfContained { home, .. } = decide(&m).unwrap().mode else {
            panic!()
        };
        assert_eq!(home, Path::new("/data/c/guixd"));
        let m = with(
            Fake::default(),
            &[("HOME", "/home/c"), ("XDG_DATA_HOME", "relative")],
        );
        let Mode::SelfContained { home, .. } = decide(&m).unwrap().mode else {
            panic!()
        };
        assert_eq!(home, Path::new("/home/c/.local/share/guixd"));
        // Root's store is not in its home directory.
        let m = with(
            Fake {
                root: true,
                ..Fake::default()
            },
            &[("HOME", "/root")],
        );
        let Mode::SelfContained { home, .. } = decide(&m).unwrap().mode else {
            panic!()
        };
        assert_eq!(home, Path::new("/var/lib/guixd"));
    }

    #[test]
    fn without_any_home_there_is_no_self_contained_store() {
        assert_eq!(decide(&Fake::default()), Err(LayoutError::NoHome));
        let m = with(Fake::default(), &[("HOME", "")]);
        assert_eq!(decide(&m), Err(LayoutError::NoHome));
    }

    #[test]
    fn guixd_home_wins_even_on_a_guix_installation() {
        let m = with(guix_machine(true), &[(HOME_VAR, "/tmp/x/../h//")]);
        let l = decide(&m).unwrap();
        assert_eq!(
            l.mode,
            Mode::SelfContained {
                home: "/tmp/h".into(),
                why: Why::HomeSet
            }
        );
        assert_eq!(l.store, "/tmp/h/store");
        let m = with(Fake::default(), &[(HOME_VAR, "rel")]);
        assert_eq!(decide(&m), Err(LayoutError::NotAbsolute("rel".into())));
    }

    #[test]
    fn any_relocation_variable_means_the_daemons_own_rules() {
        for var in RELOCATION_VARS {
            let m = with(
                Fake::default(),
                &[(var, "/r"), (HOME_VAR, "/ignored"), ("HOME", "/home/d")],
            );
            let l = decide(&m).unwrap();
            assert_eq!(l.mode, Mode::Relocated, "{var}");
        }
        let m = with(
            Fake::default(),
            &[
                ("NIX_STORE_DIR", "/t/store/"),
                ("NIX_STORE", "/not/this"),
                ("GUIX_STATE_DIRECTORY", "/t/./var"),
                ("GUIX_LOG_DIRECTORY", "/t/log"),
                ("GUIX_CONFIGURATION_DIRECTORY", "/t//etc"),
            ],
        );
        let l = decide(&m).unwrap();
        assert_eq!(
            dirs(&l),
            ["/t/store", "/t/var", "/t/log", "/t/var/db", "/t/etc"]
        );
        // The others keep their defaults.
        let m = with(
            Fake::default(),
            &[("NIX_STORE", "/s"), ("GUIX_DATABASE_DIRECTORY", "/d")],
        );
        let l = decide(&m).unwrap();
        assert_eq!(
            dirs(&l),
            ["/s", "/var/guix", "/var/log/guix", "/d", "/etc/guix"]
        );
    }

    #[test]
    fn relative_or_empty_relocations_are_refused_with_the_daemons_text() {
        let m = with(Fake::default(), &[("GUIX_STATE_DIRECTORY", "var")]);
        assert_eq!(
            decide(&m).unwrap_err().to_string(),
            "not an absolute path: `var'"
        );
        let m = with(Fake::default(), &[("NIX_STORE_DIR", "")]);
        assert_eq!(decide(&m), Err(LayoutError::NotAbsolute(String::new())));
    }

    #[test]
    fn the_guix_program_follows_nix_bin_dir_and_guix_in_every_mode() {
        let m = with(guix_machine(true), &[("NIX_BIN_DIR", "/opt/bin/")]);
        let l = decide(&m).unwrap();
        assert_eq!(l.mode, Mode::Standard);
        assert_eq!(l.guix_program, Path::new("/opt/bin/guix"));
        let m = with(
            Fake::default(),
            &[
                ("NIX_BIN_DIR", "/opt/bin"),
                ("GUIX", "/x/guix"),
                ("HOME", "/h"),
            ],
        );
        let l = decide(&m).unwrap();
        assert!(matches!(l.mode, Mode::SelfContained { .. }));
        assert_eq!(l.guix_program, Path::new("/x/guix"));
    }

    #[test]
    fn non_unicode_variables_are_refused() {
        use std::os::unix::ffi::OsStringExt;
        struct Bad;
        impl Host for Bad {
            fn var(&self, name: &str) -> Option<OsString> {
                (name == "NIX_STORE_DIR").then(|| OsString::from_vec(vec![b'/', 0xff]))
            }
            fn is_root(&self) -> bool {
                true
            }
            fn exists(&self, _: &Path) -> bool {
                false
            }
            fn owned_by_us(&self, _: &Path) -> bool {
                false
            }
        }
        assert_eq!(decide(&Bad), Err(LayoutError::NotUnicode("NIX_STORE_DIR")));
    }
}

//! The pure steps of start-up: the core's and the os layer's
//! configurations from the options and the layout, the sockets to open, and
//! what the daemon tells the person who started it.
//!
//! Keeps true: nothing here touches the machine; `main` does, in the order
//! the daemon must (umask, the store, the sockets, then threads).

use crate::cli::{LOG_COMPRESSION_SETTING, Options};
use crate::layout::{Layout, Mode, Why};
use guixd_core::config::{Config, Dirs, Limits};
use guixd_core::store_path::{StoreDir, StorePathError, canonicalise_lexically};
use guixd_os::OsConfig;
use std::borrow::Cow;
use std::path::PathBuf;

/// The version of `guix-daemon` whose behaviour guixd reproduces.
pub const COMPATIBLE_WITH: &str = "guix-daemon (GNU Guix) 1.5.0";

/// Who the daemon runs as, and its seed.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub seed: u64,
}

/// One socket to open, as named by `--listen` or by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket at this (lexically canonical) path.
    Unix(PathBuf),
    /// `HOST` or `HOST:PORT`.
    Tcp(String),
}

/// The one-line answer to `--version`.
pub fn version_line(runtime: &str) -> String {
    format!(
        "guixd {} (compatible with {COMPATIBLE_WITH}); runtime: {runtime}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The core's configuration and the os layer's, from the same facts.
pub fn configs(
    options: &Options,
    layout: &Layout,
    id: Identity,
) -> Result<(Config, OsConfig), StorePathError> {
    let dirs = Dirs {
        store: StoreDir::new(&layout.store)?,
        state: layout.state.clone(),
        log: layout.log.clone(),
        db: layout.db.clone(),
        conf: layout.conf.clone(),
        guix_program: layout.guix_program.clone(),
    };
    let os = OsConfig {
        dirs: dirs.clone(),
        settings: options.settings.typed().clone(),
        uid: id.uid,
        gid: id.gid,
    };
    let config = Config {
        dirs,
        daemon_uid: id.uid,
        settings: options.settings.clone(),
        limits: Limits::default(),
        seed: id.seed,
        verbosity: options.verbosity,
    };
    Ok((config, os))
}

/// The sockets to open: every `--listen` in order (a name starting with
/// `/` is a Unix socket, canonicalised lexically as the daemon does;
/// anything else is TCP), or the layout's default socket.
pub fn endpoints(listen: &[String], layout: &Layout) -> Vec<Endpoint> {
    if listen.is_empty() {
        return vec![Endpoint::Unix(layout.default_socket())];
    }
    listen
        .iter()
        .map(|option| {
            if option.starts_with('/') {
                Endpoint::Unix(canonicalise_lexically(option).into())
            } else {
                Endpoint::Tcp(option.clone())
            }
        })
        .collect()
}

/// The lines `guix-daemon --debug` prints about its settings at start-up.
pub fn debug_lines(options: &Options) -> Vec<String> {
    let settings = &options.settings;
    // The C++ daemon prints its compression enum's number.
    let compression = match settings.raw(LOG_COMPRESSION_SETTING) {
        Some("none") => 0,
        Some("bzip2") => 2,
        _ => 1,
    };
    let mut lines = vec![format!("build log compression: {compression}")];
    if settings.typed().use_chroot {
        let dirs = settings.raw("build-extra-chroot-dirs").unwrap_or("");
        lines.push(format!("extra chroot directories: '{dirs}'"));
    }
    lines.push(format!(
        "automatic deduplication set to {}",
        settings.typed().auto_optimise_store
    ));
    lines
}

/// What a client's `GUIX_DAEMON_SOCKET` should be to reach a socket shown
/// as `name` by `main` (a file name, or `tcp ADDRESS:PORT`).
pub fn client_socket(name: &str) -> String {
    match name.strip_prefix("tcp ") {
        Some(address) => format!("guix://{address}"),
        None => name.to_owned(),
    }
}

/// The warning of a daemon run as root without build users, in the C++
/// daemon's words.
pub const ROOT_WITHOUT_BUILD_USERS: &str =
    "warning: daemon is running as root, so using `--build-users-group' is highly recommended";

/// What to tell a person about a self-contained store: where it is and the
/// environment a Guix client needs to use it, as `export` lines they can
/// paste. `socket` is what `GUIX_DAEMON_SOCKET` should be (a file name or a
/// `guix://` URI), when known. Nothing for the other modes.
pub fn self_contained_notice(program: &str, layout: &Layout, socket: Option<&str>) -> Vec<String> {
    let Mode::SelfContained { home, why } = &layout.mode else {
        return Vec::new();
    };
    let home = home.display();
    let first = match why {
        Why::HomeSet => format!("{program}: serving a self-contained store in {home}"),
        Why::NoInstallation => {
            format!(
                "{program}: no Guix installation here; serving a self-contained store in {home}"
            )
        }
        Why::NotOurs => format!(
            "{program}: the Guix installation here belongs to another user; serving a self-contained store in {home}"
        ),
    };
    let mut lines = vec![
        first,
        format!("{program}: to use it from a Guix client, set:"),
    ];
    let mut export = |name: &str, value: &str| {
        lines.push(format!("export {name}={}", shell_word(value)));
    };
    export("NIX_STORE_DIR", &layout.store);
    export("GUIX_STATE_DIRECTORY", &layout.state.to_string_lossy());
    export("GUIX_LOG_DIRECTORY", &layout.log.to_string_lossy());
    export("GUIX_DATABASE_DIRECTORY", &layout.db.to_string_lossy());
    export(
        "GUIX_CONFIGURATION_DIRECTORY",
        &layout.conf.to_string_lossy(),
    );
    if let Some(socket) = socket {
        export("GUIX_DAEMON_SOCKET", socket);
    }
    lines
}

/// `s` as one word for a POSIX shell: as it is when it holds only safe
/// characters, else single-quoted.
fn shell_word(s: &str) -> Cow<'_, str> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:,=@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("'{}'", s.replace('\'', r"'\''")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{self, Action};
    use std::path::Path;

    fn layout(mode: Mode, root: &str) -> Layout {
        Layout {
            mode,
            store: format!("{root}/store"),
            state: format!("{root}/var").into(),
            log: format!("{root}/log").into(),
            db: format!("{root}/var/db").into(),
            conf: format!("{root}/etc").into(),
            guix_program: "/usr/bin/guix".into(),
        }
    }

    fn options(args: &[&str]) -> Options {
        let mut all = vec!["guixd"];
        all.extend_from_slice(args);
        match cli::parse("guixd", all) {
            Ok(Action::Run(o)) => o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_configs_carry_the_options_and_the_layout() {
        let l = layout(Mode::Relocated, "/t");
        let o = options(&["--debug", "-M", "5", "--disable-deduplication"]);
        let id = Identity {
            uid: 1000,
            gid: 100,
            seed: 42,
        };
        let (config, os) = configs(&o, &l, id).unwrap();
        assert_eq!(config.dirs.store.as_str(), "/t/store");
        assert_eq!(config.dirs.state, Path::new("/t/var"));
        assert_eq!(config.dirs.db, Path::new("/t/var/db"));
        assert_eq!(config.dirs.log, Path::new("/t/log"));
        assert_eq!(config.dirs.conf, Path::new("/t/etc"));
        assert_eq!(config.dirs.guix_program, Path::new("/usr/bin/guix"));
        assert_eq!(config.daemon_uid, 1000);
        assert_eq!(config.verbosity, cli::VERBOSITY_DEBUG);
        assert_eq!(config.seed, 42);
        assert_eq!(config.settings.typed().max_build_jobs, 5);
        assert_eq!(config.limits, Limits::default());
        assert_eq!(os.dirs, config.dirs);
        assert_eq!((os.uid, os.gid), (1000, 100));
        assert!(!os.settings.auto_optimise_store);
        assert_eq!(&os.settings, config.settings.typed());
    }

    #[test]
    fn endpoints_follow_listen_or_the_default_socket() {
        let l = layout(Mode::Standard, "/t");
        assert_eq!(
            endpoints(&[], &l),
            [Endpoint::Unix("/t/var/daemon-socket/socket".into())]
        );
        let listen = [
            "/a//b/../s".to_owned(),
            "localhost".to_owned(),
            "h:1".to_owned(),
        ];
        assert_eq!(
            endpoints(&listen, &l),
            [
                Endpoint::Unix("/a/s".into()),
                Endpoint::Tcp("localhost".into()),
                Endpoint::Tcp("h:1".into())
            ]
        );
    }

    #[test]
    fn a_self_contained_store_is_announced_with_its_client_environment() {
        let home = "/root/.local/share/guixd";
        let l = layout(
            Mode::SelfContained {
                home: home.into(),
                why: Why::NoInstallation,
            },
            home,
        );
        let socket = format!("{home}/var/daemon-socket/socket");
        let got = self_contained_notice("guixd", &l, Some(&socket));
        let want = [
            "guixd: no Guix installation here; serving a self-contained store in /root/.local/share/guixd",
            "guixd: to use it from a Guix client, set:",
            "export NIX_STORE_DIR=/root/.local/share/guixd/store",
            "export GUIX_STATE_DIRECTORY=/root/.local/share/guixd/var",
            "export GUIX_LOG_DIRECTORY=/root/.local/share/guixd/log",
            "export GUIX_DATABASE_DIRECTORY=/root/.local/share/guixd/var/db",
            "export GUIX_CONFIGURATION_DIRECTORY=/root/.local/share/guixd/etc",
            "export GUIX_DAEMON_SOCKET=/root/.local/share/guixd/var/daemon-socket/socket",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn other_modes_are_not_announced() {
        for mode in [Mode::Standard, Mode::Relocated] {
            assert!(self_contained_notice("guixd", &layout(mode, "/t"), Some("/s")).is_empty());
        }
    }

    #[test]
    fn clients_reach_tcp_sockets_through_guix_uris() {
        assert_eq!(client_socket("/var/s"), "/var/s");
        assert_eq!(
            client_socket("tcp 127.0.0.1:44146"),
            "guix://127.0.0.1:44146"
        );
        assert_eq!(client_socket("tcp [::1]:1"), "guix://[::1]:1");
    }

    #[test]
    fn odd_paths_are_quoted_for_the_shell() {
        assert_eq!(shell_word("/a/b-c_d.e"), "/a/b-c_d.e");
        assert_eq!(shell_word("guix://[::1]:44146"), "'guix://[::1]:44146'");
        assert_eq!(shell_word("/my dir"), "'/my dir'");
        assert_eq!(shell_word("/it's"), r"'/it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn debug_lines_say_what_the_daemon_says() {
        assert_eq!(
            debug_lines(&options(&[])),
            [
                "build log compression: 1",
                "extra chroot directories: ''",
                "automatic deduplication set to true"
            ]
        );
        assert_eq!(
            debug_lines(&options(&[
                "--log-compression=bzip2",
                "--chroot-directory=/a",
                "--chroot-directory=/b"
            ]))[..2],
            [
                "build log compression: 2",
                "extra chroot directories: '/a /b'"
            ]
        );
        assert_eq!(
            debug_lines(&options(&["--disable-chroot", "--disable-log-compression"])),
            [
                "build log compression: 0",
                "automatic deduplication set to true"
            ]
        );
    }

    #[test]
    fn the_version_line_names_the_runtime() {
        assert_eq!(
            version_line("threads"),
            format!(
                "guixd {} (compatible with guix-daemon (GNU Guix) 1.5.0); runtime: threads",
                env!("CARGO_PKG_VERSION")
            )
        );
    }
}

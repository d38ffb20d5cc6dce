//! `guixd`, the daemon binary: reads the command line and the environment
//! as `guix-daemon` does, prepares the store, opens the sockets, and runs
//! the core on the runtime chosen at build time (cargo feature
//! `runtime-threads`, the default, or `runtime-smol`) until SIGINT, SIGTERM
//! or SIGHUP.
//!
//! Keeps true:
//! - start-up runs in this order: umask 022, options, layout, the store
//!   (`Os::open`, which may move the main thread into a private mount
//!   namespace and so must run while it is the only thread), the spawner
//!   helper (forked, so also while this is the only thread), the sockets,
//!   the termination signals blocked, and only then the runtime's threads;
//! - every failure before serving prints `error: <message>` and exits 1;
//!   usage errors exit 64 as with argp; `--help`, `--usage` and
//!   `--version` print on standard output and exit 0;
//! - an orderly stop (the first termination signal) exits 0 once the
//!   runtime has finished; a second signal during the stop exits at once
//!   with status 128 + its number.
//!
//! What a person sees, beyond `guix-daemon`'s own messages:
//! - `--version` prints one line, `guixd VERSION (compatible with
//!   guix-daemon (GNU Guix) 1.5.0); runtime: NAME`, where NAME is the
//!   runtime built in (`threads` or `smol`);
//! - every socket served is announced on stderr as `guixd: listening on
//!   /path` or `guixd: listening on tcp ADDRESS:PORT`;
//! - when a self-contained store is served (see `layout.rs` for when), its
//!   directory and the `export` lines a Guix client needs (store, state,
//!   log, database and configuration directories, `GUIX_DAEMON_SOCKET`)
//!   follow, ready to paste into a shell.

mod cli;
mod layout;
mod signals;
mod startup;

use anyhow::anyhow;
use cli::{Action, CliError, Options};
use guixd_os::Os;
use guixd_os::net::{self, Listener};
use layout::{Layout, Mode, RealHost};
use startup::{Endpoint, Identity};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

/// The runtime chosen at build time. `runtime-smol` wins when both
/// features are on, since it is only ever on because someone asked.
mod runtime {
    #[cfg(feature = "runtime-smol")]
    pub use guixd_runtime_smol::{NAME, Server};
    #[cfg(all(feature = "runtime-threads", not(feature = "runtime-smol")))]
    pub use guixd_runtime_threads::{NAME, Server};
    #[cfg(not(any(feature = "runtime-threads", feature = "runtime-smol")))]
    compile_error!("guixd needs a runtime: enable the feature `runtime-threads` or `runtime-smol`");
}

fn main() -> ExitCode {
    let program = program_name();
    // Before anything is created: no file or directory of the daemon's is
    // ever group- or world-writable (spec 02 §8).
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(0o022) };
    raise_open_files_limit();

    let action = match cli::parse(&program, std::env::args_os()) {
        Ok(action) => action,
        Err(CliError::Usage(e)) => {
            eprint!("{}", cli::usage_error_text(&program, &e));
            return ExitCode::from(cli::USAGE_EXIT_STATUS);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A closed standard output (`guixd --help | head -1`) is no error.
    let mut stdout = std::io::stdout();
    match action {
        Action::Help => _ = write!(stdout, "{}", cli::help_text(&program)),
        Action::Usage => _ = writeln!(stdout, "{}", cli::usage_text(&program)),
        Action::Version => _ = writeln!(stdout, "{}", startup::version_line(runtime::NAME)),
        Action::Run(options) => {
            if let Err(e) = serve(&program, &options) {
                // The top error only: the messages here already say what
                // their causes are, as the C++ daemon's do.
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// Raises the soft limit on open descriptors to the hard limit: one process
/// serves every client, and each connection, lock file and upload is a
/// descriptor (the C++ daemon's limit is per session process).
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            // Failing leaves the old limit, which still works for fewer clients.
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Starts the daemon and serves until a termination signal.
fn serve(program: &str, options: &Options) -> anyhow::Result<()> {
    let layout = layout::decide(&RealHost)?;
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let id = Identity {
        uid,
        gid,
        seed: random_seed(),
    };
    let (config, os_config) = startup::configs(options, &layout, id)?;
    if options.verbosity >= cli::VERBOSITY_DEBUG {
        for line in startup::debug_lines(options) {
            eprintln!("{line}");
        }
    }

    if let Mode::SelfContained { .. } = layout.mode {
        // The store and state are made by `Os::open`; these two are only
        // read by clients (keys, logs), but a client wants them to exist.
        for dir in [&layout.log, &layout.conf] {
            guixd_os::setup::create_dirs(dir)?;
        }
    }
    let mut os = Os::open(os_config)?;
    // Builders are created by a helper forked now, before any thread
    // exists; it lives in the store's mount namespace set up just above.
    let spawner = guixd_os::build::Spawner::start()
        .map_err(|e| anyhow!("starting the spawner helper: {e}"))?;
    os.set_spawner(spawner);
    let os = Arc::new(os);

    let (listeners, shown) = open_listeners(program, options, &layout)?;
    if uid == 0 && options.settings.typed().build_users_group.is_empty() {
        eprintln!("{}", startup::ROOT_WITHOUT_BUILD_USERS);
    }
    for name in &shown {
        eprintln!("{program}: listening on {name}");
    }
    let socket = shown.first().map(|name| startup::client_socket(name));
    for line in startup::self_contained_notice(program, &layout, socket.as_deref()) {
        eprintln!("{line}");
    }
    let discover = options
        .discover
        .then(|| start_discover(program, &layout))
        .flatten();

    signals::block_termination_signals()
        .map_err(|e| anyhow!("cannot block termination signals: {e}"))?;
    let server = runtime::Server::start(config, os, listeners)?;
    let signal = signals::wait().map_err(|e| anyhow!("cannot wait for signals: {e}"))?;
    eprintln!(
        "{program}: PID {} caught signal {signal}",
        std::process::id()
    );
    server.shutdown();
    watch_for_impatience(program);
    let stopped = server.join();
    if let Some(child) = discover {
        // SAFETY: kill has no memory preconditions; the pid is our own
        // child, not yet waited for, so it cannot have been reused.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    }
    stopped?;
    Ok(())
}

/// Opens the sockets: those passed by systemd socket activation, else
/// every `--listen` (or the default socket). Returns them with how to name
/// each to a person: a Unix socket's file name, or `tcp HOST:PORT`.
fn open_listeners(
    program: &str,
    options: &Options,
    layout: &Layout,
) -> anyhow::Result<(Vec<Listener>, Vec<String>)> {
    let activated = net::listen_fds()?;
    if !activated.is_empty() {
        let n = activated.len();
        let plural = if n == 1 { "" } else { "s" };
        eprintln!("{program}: socket-activated with {n} socket{plural}");
        let shown = activated.iter().filter_map(listener_name).collect();
        return Ok((activated, shown));
    }
    let mut listeners = Vec::new();
    let mut shown = Vec::new();
    for endpoint in startup::endpoints(&options.listen, layout) {
        match endpoint {
            Endpoint::Unix(path) => {
                listeners.push(Listener::Unix(net::bind_unix(&path)?));
                shown.push(path.display().to_string());
            }
            Endpoint::Tcp(spec) => {
                let listener = Listener::Tcp(net::bind_tcp(&spec)?);
                shown.push(listener_name(&listener).unwrap_or_else(|| format!("tcp {spec}")));
                listeners.push(listener);
            }
        }
    }
    Ok((listeners, shown))
}

/// How to name a bound listener to a person, when it can be named.
fn listener_name(listener: &Listener) -> Option<String> {
    match listener {
        Listener::Unix(l) => l
            .local_addr()
            .ok()?
            .as_pathname()
            .map(|p| p.display().to_string()),
        Listener::Tcp(l) => l.local_addr().ok().map(|a| format!("tcp {a}")),
    }
}

/// Runs `guix discover` as the C++ daemon does for `--discover=yes`. A
/// failure to start it is reported and otherwise ignored, as there.
fn start_discover(program: &str, layout: &Layout) -> Option<std::process::Child> {
    use std::os::unix::process::CommandExt;
    match std::process::Command::new(&layout.guix_program)
        .arg0("guix")
        .arg("discover")
        .spawn()
    {
        Ok(child) => Some(child),
        Err(e) => {
            eprintln!(
                "{program}: warning: cannot run `{} discover': {e}",
                layout.guix_program.display()
            );
            None
        }
    }
}

/// After the first termination signal the daemon stops in order, which
/// waits for effects in flight; a second signal means "now".
fn watch_for_impatience(program: &str) {
    let name = program.to_owned();
    let spawned = std::thread::Builder::new()
        .name("guixd-signals".into())
        .spawn(move || {
            if let Ok(signal) = signals::wait() {
                eprintln!(
                    "{name}: PID {} caught signal {signal}; exiting without waiting",
                    std::process::id()
                );
                std::process::exit(128 + signal);
            }
        });
    if let Err(e) = spawned {
        eprintln!("{program}: warning: cannot watch for further signals: {e}");
    }
}

/// The program's name as invoked (so that a `guix-daemon` symlink to guixd
/// speaks as `guix-daemon`, like the C++ daemon's messages).
fn program_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "guixd".to_owned())
}

/// A seed for the core's random choices, from the standard library's
/// randomly keyed hasher (itself seeded from the OS).
fn random_seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

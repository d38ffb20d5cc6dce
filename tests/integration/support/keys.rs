//! The signing keys of this test process: one authorized key pair that every
//! daemon signs exports with, and one "stranger" pair that no daemon trusts.
//!
//! Keeps true: the pairs are made once per process with the real
//! `guix archive --generate-key` and `--authorize`, so the ACL has the exact
//! format Guix writes; every daemon gets identical copies (the secret key
//! readable by its owner only, as both daemons require), so two daemons in
//! one process sign the same bytes identically.

use super::process::{default_timeout, run_in_root};
use super::root::{host, process_dir};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::OnceLock;

/// The directory, inside the root, holding `own/` (the authorized pair and
/// its ACL) and `stranger/` (an unauthorized pair).
pub fn dir() -> &'static str {
    static DIR: OnceLock<String> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = format!("{}/keys", process_dir());
        generate(&format!("{dir}/own"), true);
        generate(&format!("{dir}/stranger"), false);
        dir
    })
}

/// Copies the authorized pair and the ACL into `conf`, a daemon's
/// configuration directory on the host.
pub fn install(conf: &Path) {
    let own = host(&format!("{}/own", dir()));
    for (name, mode) in [
        ("signing-key.pub", 0o644),
        ("signing-key.sec", 0o600),
        ("acl", 0o644),
    ] {
        let dest = conf.join(name);
        fs::copy(own.join(name), &dest)
            .unwrap_or_else(|e| panic!("copy {name} to {}: {e}", conf.display()));
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", dest.display()));
    }
}

fn generate(conf: &str, authorize: bool) {
    let host_conf = host(conf);
    fs::create_dir_all(&host_conf).unwrap_or_else(|e| panic!("mkdir {}: {e}", host_conf.display()));
    let env = vec![
        (
            "PATH".to_owned(),
            "/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        ),
        ("HOME".to_owned(), conf.to_owned()),
        ("LC_ALL".to_owned(), "C.UTF-8".to_owned()),
        ("GUIX_CONFIGURATION_DIRECTORY".to_owned(), conf.to_owned()),
    ];
    let out = run_in_root(
        &env,
        &["guix", "archive", "--generate-key"],
        None,
        default_timeout(),
    );
    assert!(
        out.success(),
        "guix archive --generate-key failed:\n{}",
        out.describe()
    );
    if authorize {
        let public = fs::read(host_conf.join("signing-key.pub"))
            .unwrap_or_else(|e| panic!("read signing-key.pub: {e}"));
        let out = run_in_root(
            &env,
            &["guix", "archive", "--authorize"],
            Some(&public),
            default_timeout(),
        );
        assert!(
            out.success(),
            "guix archive --authorize failed:\n{}",
            out.describe()
        );
    }
}

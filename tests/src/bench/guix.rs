//! Scenarios through the real Guix 1.5.0 client: `guix repl` scripts run
//! inside the root against the daemon, to show what a user feels.
//!
//! Keeps true: a script measures its own work with Guile's real-time
//! clock and prints the seconds as its last line, so Guile's start-up is
//! not counted; each repetition passes a fresh tag that goes into every
//! item it adds or builds, so nothing is already valid; a script that fails
//! counts as one error and the sample's value is then NaN.

use super::env::{Implementation, host, run_in_root};
use super::{Sample, Scenario, Sizes, Slot, Target};
use std::fs;
use std::time::Duration;

/// The scenarios of this module.
pub fn scenarios(sizes: &Sizes) -> Vec<Scenario> {
    let all = Implementation::ALL.to_vec();
    let n = sizes.guix_add_text;
    let drvs = sizes.derivations;
    vec![
        Scenario {
            name: "guix: add-text".into(),
            unit: "s",
            target: Target::None,
            description: format!(
                "a `guix repl` script opens a connection and calls add-text-to-store {n} times"
            ),
            implementations: all.clone(),
            daemon_args: Vec::new(),
            reps_max: Some(3),
            prepare: Box::new(|_| {}),
            run: Box::new(move |slot, rep| {
                script(slot, ADD_TEXT_SCM, &[&n.to_string(), &format!("r{rep}")])
            }),
        },
        Scenario {
            name: format!("guix: build {drvs} drvs"),
            unit: "s",
            target: Target::RatioAtLeast(1.5),
            description: format!(
                "`build-derivations` of {drvs} trivial independent derivations (busybox sh \
                 writing its output), daemon and client at --max-jobs 2"
            ),
            implementations: all,
            daemon_args: vec!["--max-jobs=2".into()],
            reps_max: Some(3),
            prepare: Box::new(|_| {}),
            run: Box::new(move |slot, rep| {
                script(slot, BUILD_SCM, &[&drvs.to_string(), &format!("r{rep}")])
            }),
        },
    ]
}

/// Runs a script (written into the daemon's directory) with `args`; the
/// sample is the seconds it printed last.
fn script(slot: &Slot, text: &str, args: &[&str]) -> Sample {
    let daemon = slot.daemon();
    let file = format!("{}/work/bench.scm", daemon.dir());
    if let Err(e) = fs::write(host(&file), text) {
        let mut s = Sample::of(f64::NAN);
        s.error(format!("write {file}: {e}"));
        return s;
    }
    let work = format!("{}/work", daemon.dir());
    let mut argv = vec!["guix", "repl", "--", file.as_str(), work.as_str()];
    argv.extend_from_slice(args);
    let (ok, stdout, stderr) = run_in_root(&daemon.client_env(), &argv, Duration::from_secs(1800));
    let value = stdout
        .lines()
        .last()
        .and_then(|l| l.trim().parse::<f64>().ok());
    match (ok, value) {
        (true, Some(v)) => Sample::of(v),
        _ => {
            let mut s = Sample::of(f64::NAN);
            s.error(format!(
                "script failed: {}",
                stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            ));
            s
        }
    }
}

/// `WORK N TAG`: N add-text-to-store calls on one connection.
const ADD_TEXT_SCM: &str = r#"
(use-modules (guix store) (ice-9 match))
(match (command-line)
  ((_ work n tag)
   (let ((n (string->number n)))
     (with-store store
       (let ((start (get-internal-real-time)))
         (let loop ((i 0))
           (when (< i n)
             (add-text-to-store store (string-append "text-" (number->string i))
                                (string-append tag " " (number->string i)) '())
             (loop (+ i 1))))
         (format #t "~a~%"
                 (exact->inexact (/ (- (get-internal-real-time) start)
                                    internal-time-units-per-second))))))))
"#;

/// `WORK N TAG`: adds a busybox tree (the root's static busybox and a
/// `sh` link) to the store, makes N derivations whose builder is that
/// `sh` writing a line to `$out`, and times `build-derivations` of all of
/// them at once (and the check that every output is valid).
const BUILD_SCM: &str = r#"
(use-modules (guix store) (guix derivations) (ice-9 match))
(match (command-line)
  ((_ work n tag)
   (let* ((n (string->number n))
          (dir (string-append work "/busybox-" tag))
          (bin (string-append dir "/bin")))
     (mkdir dir #o755)
     (mkdir bin #o755)
     (copy-file "/bin/busybox" (string-append bin "/busybox"))
     (chmod (string-append bin "/busybox") #o755)
     (symlink "busybox" (string-append bin "/sh"))
     (with-store store
       (set-build-options store #:max-build-jobs 2 #:use-substitutes? #f)
       (let* ((busybox (add-to-store store "busybox" #t "sha256" dir))
              (drvs (map (lambda (i)
                           (derivation store
                                       (string-append "trivial-" tag "-" (number->string i))
                                       (string-append busybox "/bin/sh")
                                       (list "-c" (string-append "echo " tag " "
                                                                 (number->string i)
                                                                 " > $out"))
                                       #:system "x86_64-linux"
                                       #:env-vars `(("PATH" . ,(string-append busybox "/bin")))
                                       #:sources (list busybox)))
                         (iota n)))
              (start (get-internal-real-time)))
         (build-derivations store drvs)
         (for-each (lambda (drv)
                     (unless (valid-path? store (derivation->output-path drv))
                       (error "output not valid after the build" drv)))
                   drvs)
         (format #t "~a~%"
                 (exact->inexact (/ (- (get-internal-real-time) start)
                                    internal-time-units-per-second))))))))
"#;

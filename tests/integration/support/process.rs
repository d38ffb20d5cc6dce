//! Running programs inside the Guix root with a deadline.
//!
//! Keeps true: every program runs in a process group of its own, dies when
//! the thread that started it goes away, and is killed with its whole group
//! when its deadline passes; its output is collected in full (pipes are
//! drained while it runs, so it can never block on a full pipe).

use super::root::root;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a program did.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The deadline passed and the program was killed.
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Output {
    /// Whether the program exited with status 0 in time.
    pub fn success(&self) -> bool {
        self.status.success() && !self.timed_out
    }

    /// The standard output as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The standard error as text (lossy).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// A multi-line account of the run, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "status: {}{}, after {:.1?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            if self.timed_out {
                " (killed: deadline passed)"
            } else {
                ""
            },
            self.elapsed,
            self.stdout_text(),
            self.stderr_text()
        )
    }
}

/// The deadline of one client program: `GUIXD_IT_TIMEOUT_S` seconds, by
/// default 180.
pub fn default_timeout() -> Duration {
    let secs = std::env::var("GUIXD_IT_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    Duration::from_secs(secs)
}

/// Runs `argv` inside the root with exactly the environment `env`, feeding
/// it `stdin` (or nothing), killing it after `timeout`.
pub fn run_in_root(
    env: &[(String, String)],
    argv: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Output {
    let mut cmd = Command::new("chroot");
    cmd.arg(root())
        .arg("env")
        .arg("-i")
        .args(env.iter().map(|(k, v)| format!("{k}={v}")))
        .args(argv)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    die_with_parent(&mut cmd);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {argv:?} in the root: {e}"));
    let pgid = child.id() as i32;
    let writer = child.stdin.take().map(|mut pipe| {
        let data = stdin.unwrap_or_default().to_vec();
        // A program that stops reading early is not an error here.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        match done_rx.recv_timeout(timeout) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // SAFETY: kill has no memory preconditions. The group is
                // the one our child leads; the only window in which its id
                // could be free is between the main thread reaping the child
                // and telling us, a few instructions long.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
                true
            }
            _ => false,
        }
    });
    let out = child.wait_with_output();
    let _ = done_tx.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    if let Some(w) = writer {
        let _ = w.join();
    }
    let out = out.unwrap_or_else(|e| panic!("waiting for {argv:?}: {e}"));
    Output {
        status: out.status,
        stdout: out.stdout,
        stderr: out.stderr,
        timed_out,
        elapsed: started.elapsed(),
    }
}

/// Makes the child die when the thread that started it goes away, so a
/// test process that is killed leaves no program behind.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

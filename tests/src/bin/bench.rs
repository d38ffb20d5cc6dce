//! The side-by-side benchmark of issue 6: guixd (both runtimes) against the
//! C++ `guix-daemon` 1.5.0 in the Guix root, printing medians and ratios,
//! and writing `bench.json` and `bench.svg`.
//!
//! Usage: `cargo run --release -p guixd-tests --bin bench -- [--quick]
//! [--reps N] [--only SUBSTRING]... [--out DIR] [--no-smol]`; `GUIXD_BENCH_QUICK=1`
//! is the same as `--quick`. Runs as root (chroot, namespaces). Set
//! `GUIXD_BIN_THREADS` / `GUIXD_BIN_SMOL` to measure ready binaries.
//!
//! Keeps true: the daemons are built in release mode; the process leaves no
//! daemon running and removes its directory in the root when it ends.

use guixd_tests::bench::{self, Config, env};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn main() {
    let config = parse_args();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench: must run as root (chroot, namespaces)");
        std::process::exit(2);
    }
    let nofile = env::raise_nofile_limit();
    eprintln!("bench: RLIMIT_NOFILE is {nofile}");
    let (threads, smol) = env::install_guixd_binaries();
    let mut programs = BTreeMap::new();
    programs.insert(env::Implementation::Cpp, env::CPP_DAEMON.to_owned());
    programs.insert(env::Implementation::GuixdThreads, threads);
    programs.insert(env::Implementation::GuixdSmol, smol);

    let started = std::time::SystemTime::now();
    let results = bench::run(&config, &programs);
    let table = bench::report::table(&results);
    let date = command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = command_output("uname", &["-r"]);
    println!(
        "guixd benchmark, {date}, {cores} cores ({cpu}), kernel {kernel}, {} mode, up to {} repetitions",
        if config.quick { "quick" } else { "full" },
        config.reps
    );
    println!("values are medians; ratio = C++ median / guixd median (higher is better)");
    print!("{table}");
    let meta = serde_json::json!({
        "date": date,
        "cores": cores,
        "cpu": cpu,
        "kernel": kernel,
        "quick": config.quick,
        "reps": config.reps,
        "elapsed_s": started.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0),
        "ratio": "C++ median / guixd median; every value is lower-is-better",
    });
    let json = bench::report::json(&results, meta);
    let _ = std::fs::create_dir_all(&config.out_dir);
    let json_file = config.out_dir.join("bench.json");
    let svg_file = config.out_dir.join("bench.svg");
    let title = format!("guixd vs C++ guix-daemon, {date}, {cores} cores");
    match serde_json::to_string_pretty(&json) {
        Ok(text) => write(&json_file, &text),
        Err(e) => eprintln!("bench: cannot encode JSON: {e}"),
    }
    write(&svg_file, &bench::report::svg(&results, &title));
    env::remove_tree(&env::host(env::bench_dir()));
}

fn parse_args() -> Config {
    let mut quick = std::env::var("GUIXD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut reps = None;
    let mut only = Vec::new();
    let mut out_dir = PathBuf::from("target/bench");
    let mut implementations = env::Implementation::ALL.to_vec();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--reps" => reps = args.next().and_then(|n| n.parse().ok()),
            "--only" => only.extend(args.next()),
            "--out" => out_dir = args.next().map(PathBuf::from).unwrap_or(out_dir),
            "--no-smol" => implementations.retain(|&i| i != env::Implementation::GuixdSmol),
            "--no-threads" => implementations.retain(|&i| i != env::Implementation::GuixdThreads),
            other => {
                eprintln!(
                    "usage: bench [--quick] [--reps N] [--only SUBSTRING]... [--out DIR] \
                     [--no-smol] [--no-threads]\nunknown argument: {other}"
                );
                std::process::exit(2);
            }
        }
    }
    Config {
        quick,
        reps: reps.unwrap_or(if quick { 2 } else { 5 }),
        only,
        implementations,
        out_dir,
    }
}

fn write(path: &std::path::Path, text: &str) {
    match std::fs::write(path, text) {
        Ok(()) => eprintln!("bench: wrote {}", path.display()),
        Err(e) => eprintln!("bench: cannot write {}: {e}", path.display()),
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

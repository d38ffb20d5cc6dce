//! Scenarios driven by the lean load client: the test kit's blocking
//! [`Client`] over the daemon's Unix socket, so that the daemon, not the
//! client, is what is measured.
//!
//! Keeps true: every repetition adds contents no earlier repetition added
//! (the repetition number is part of them), so no add is a no-op on a
//! store that already has the item; a repetition's timer covers only the
//! work named in its description (connections for a measured batch of
//! operations are opened before the timer starts, except in the
//! connection set-up scenario); a failed operation is counted, never
//! fatal.

use super::env::Implementation;
use super::{Sample, Scenario, Sizes, Slot, Target, secs};
use guixd_core::nar::{NarEvent, NarWriter, file_nar_prefix, file_nar_suffix};
use guixd_core::wire::{self, AddToStoreHeader, Op, Request};
use guixd_testkit::client::{Client, ClientError, guix_default_options};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// A connection that has shaken hands and set Guix's default options, as
/// `(guix store)`'s `open-connection` followed by `set-build-options`.
pub fn connect(slot: &Slot) -> Result<Client<UnixStream>, ClientError> {
    let mut client = Client::connect_unix(slot.daemon().host_socket())?;
    client.handshake()?;
    client.set_options(&guix_default_options())?;
    Ok(client)
}

/// The scenarios of this module.
pub fn scenarios(sizes: &Sizes) -> Vec<Scenario> {
    let all = Implementation::ALL.to_vec();
    let mut out = Vec::new();

    let n = sizes.add_text_single;
    out.push(Scenario {
        name: "add-text 1 conn".into(),
        unit: "s",
        target: Target::RatioAtLeast(2.0),
        description: format!("{n} add-text-to-store calls in a row on one connection"),
        implementations: all.clone(),
        daemon_args: Vec::new(),
        reps_max: None,
        prepare: Box::new(|_| {}),
        run: Box::new(move |slot, rep| add_text(slot, rep, 1, n)),
    });
    for conns in [8usize, 64] {
        let total = sizes.add_text_concurrent_total;
        let per = total.div_ceil(conns);
        out.push(Scenario {
            name: format!("add-text {conns} conns"),
            unit: "s",
            target: Target::RatioAtLeast(4.0),
            description: format!(
                "{conns} connections at once, {per} add-text-to-store calls each; \
                 no client may see \"database is busy\""
            ),
            implementations: all.clone(),
            daemon_args: Vec::new(),
            reps_max: None,
            prepare: Box::new(|_| {}),
            run: Box::new(move |slot, rep| add_text(slot, rep, conns, per)),
        });
    }

    let q = sizes.queries;
    out.push(Scenario {
        name: "query-path-info".into(),
        unit: "s",
        target: Target::RatioAtLeast(2.0),
        description: format!("{q} query-path-info calls on existing items, one connection"),
        implementations: all.clone(),
        daemon_args: Vec::new(),
        reps_max: None,
        prepare: Box::new(prepare_items),
        run: Box::new(move |slot, _| queries(slot, q, true)),
    });
    out.push(Scenario {
        name: "is-valid-path".into(),
        unit: "s",
        target: Target::RatioAtLeast(2.0),
        description: format!("{q} is-valid-path calls on existing items, one connection"),
        implementations: all.clone(),
        daemon_args: Vec::new(),
        reps_max: None,
        prepare: Box::new(prepare_items),
        run: Box::new(move |slot, _| queries(slot, q, false)),
    });

    let h = sizes.handshakes;
    out.push(Scenario {
        name: "connection set-up".into(),
        unit: "s",
        target: Target::RatioAtLeast(5.0),
        description: format!("{h} times: connect, handshake, set-options, close"),
        implementations: all.clone(),
        daemon_args: Vec::new(),
        reps_max: None,
        prepare: Box::new(|_| {}),
        run: Box::new(move |slot, _| handshakes(slot, h)),
    });

    let big = sizes.big_file_bytes;
    out.push(Scenario {
        name: format!("add-to-store {} MiB file", big >> 20),
        unit: "s",
        target: Target::RatioAtLeast(3.0),
        description: format!(
            "add-to-store (recursive, sha256) of one {} MiB regular file, streamed; \
             guixd should also reach 1 GB/s",
            big >> 20
        ),
        implementations: all.clone(),
        daemon_args: Vec::new(),
        reps_max: Some(3),
        prepare: Box::new(|_| {}),
        run: Box::new(move |slot, rep| add_big_file(slot, rep, big)),
    });

    let files = sizes.tree_files;
    out.push(Scenario {
        name: format!("add-to-store tree of {files} files"),
        unit: "s",
        target: Target::RatioAtLeast(3.0),
        description: format!(
            "add-to-store (recursive, sha256) of a directory of {files} small files \
             in 1,000-file subdirectories"
        ),
        implementations: all.clone(),
        daemon_args: Vec::new(),
        reps_max: Some(3),
        prepare: Box::new(|_| {}),
        run: Box::new(move |slot, rep| add_tree(slot, rep, files)),
    });

    let idle = sizes.idle_connections;
    out.push(Scenario {
        name: format!("memory, {idle} idle conns"),
        unit: "bytes",
        target: Target::RatioAtLeast(10.0),
        description: format!(
            "PSS of all the daemon's processes while {idle} connections (handshake and \
             set-options done) sit idle"
        ),
        implementations: all.clone(),
        daemon_args: Vec::new(),
        reps_max: Some(3),
        prepare: Box::new(|_| {}),
        run: Box::new(move |slot, _| idle_memory(slot, idle)),
    });

    let idle_g = sizes.idle_connections_guixd;
    let probes = sizes.idle_probe_queries;
    out.push(Scenario {
        name: format!("latency, {idle_g} idle conns"),
        unit: "s",
        target: Target::AtMost(0.010),
        description: format!(
            "with {idle_g} idle connections open, another connection's {probes} \
             query-path-info calls: the value is the slowest call (guixd only)"
        ),
        implementations: vec![Implementation::GuixdThreads, Implementation::GuixdSmol],
        daemon_args: Vec::new(),
        reps_max: Some(3),
        prepare: Box::new(prepare_items),
        run: Box::new(move |slot, _| idle_latency(slot, idle_g, probes)),
    });
    out
}

/// Number of items [`prepare_items`] adds.
const QUERY_ITEMS: usize = 100;

/// Adds [`QUERY_ITEMS`] text items to query later.
fn prepare_items(slot: &mut Slot) {
    let mut client = connect(slot).unwrap_or_else(|e| panic!("connect: {e}"));
    let mut items = Vec::new();
    for i in 0..QUERY_ITEMS {
        let path = client
            .add_text_to_store(
                &format!("item-{i}"),
                format!("item {i}").as_bytes(),
                &[] as &[&str],
            )
            .unwrap_or_else(|e| panic!("prepare add-text: {e}"));
        items.push(path);
    }
    slot.items = items;
}

/// `conns` connections at once, `per` add-text-to-store each.
fn add_text(slot: &mut Slot, rep: usize, conns: usize, per: usize) -> Sample {
    let mut clients = Vec::new();
    let mut sample = Sample::default();
    for _ in 0..conns {
        match connect(slot) {
            Ok(c) => clients.push(c),
            Err(e) => sample.error(format!("connect: {e}")),
        }
    }
    let barrier = Arc::new(Barrier::new(clients.len() + 1));
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, mut client)| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut s = Sample::default();
                barrier.wait();
                for i in 0..per {
                    let name = format!("text-{c}-{i}");
                    let contents = format!("repetition {rep}, connection {c}, item {i}");
                    if let Err(e) =
                        client.add_text_to_store(&name, contents.as_bytes(), &[] as &[&str])
                    {
                        s.error(e.to_string());
                    }
                }
                s
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    for t in threads {
        match t.join() {
            Ok(s) => sample.absorb_errors(&s),
            Err(_) => sample.error("client thread panicked".into()),
        }
    }
    sample.value = secs(started.elapsed());
    sample
        .extra
        .insert("ops/s".into(), (conns * per) as f64 / sample.value);
    sample
}

fn queries(slot: &mut Slot, n: usize, path_info: bool) -> Sample {
    let mut sample = Sample::default();
    let mut client = match connect(slot) {
        Ok(c) => c,
        Err(e) => {
            sample.error(format!("connect: {e}"));
            return sample;
        }
    };
    let started = Instant::now();
    for i in 0..n {
        let path = &slot.items[i % slot.items.len()];
        let result = if path_info {
            client.query_path_info(path).map(|_| ())
        } else {
            client.is_valid_path(path).and_then(|valid| {
                if valid {
                    Ok(())
                } else {
                    Err(ClientError::Daemon {
                        message: format!("{path} is not valid"),
                        status: 1,
                    })
                }
            })
        };
        if let Err(e) = result {
            sample.error(e.to_string());
        }
    }
    sample.value = secs(started.elapsed());
    sample.extra.insert("ops/s".into(), n as f64 / sample.value);
    // What the same number of exchanges costs with no daemon at all: the
    // request as the client sends it (operation, length, padded path) and
    // the smallest reply (last stderr frame and one word).
    let request = 16 + slot.items[0].len().next_multiple_of(8);
    match round_trip_floor(n, request, 16) {
        Ok(floor) => {
            sample.extra.insert("floor s".into(), floor);
        }
        Err(e) => sample.error(format!("measuring the round-trip floor: {e}")),
    }
    sample
}

/// Seconds taken by `n` exchanges of `request` bytes one way and `reply`
/// bytes back over a Unix socket pair whose other end is a forked process
/// that only answers: the least any daemon's answers can cost on one
/// connection on this machine at this moment, as the kernel's wake-ups
/// bound it.
pub fn round_trip_floor(n: usize, request: usize, reply: usize) -> std::io::Result<f64> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let (mut near, far) = UnixStream::pair()?;
    let mut buf = vec![0u8; request];
    let answer = vec![0u8; reply];
    // SAFETY: the child only calls read, write and _exit (async-signal-safe)
    // on memory allocated before the fork, then ends without unwinding.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        let fd = far.as_raw_fd();
        for _ in 0..n {
            let mut got = 0;
            while got < request {
                // SAFETY: writes at most `request - got` bytes into `buf`.
                let r = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), request - got) };
                if r <= 0 {
                    // SAFETY: ends the child at once.
                    unsafe { libc::_exit(1) };
                }
                got += r as usize;
            }
            // SAFETY: reads `reply` bytes of `answer`; a short or failed
            // write shows on the other side as a failed exchange.
            if unsafe { libc::write(fd, answer.as_ptr().cast(), reply) } != reply as isize {
                // SAFETY: as above.
                unsafe { libc::_exit(1) };
            }
        }
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    drop(far);
    let message = vec![1u8; request];
    let mut got = vec![0u8; reply];
    let started = Instant::now();
    let exchanged = (0..n).try_for_each(|_| {
        near.write_all(&message)?;
        near.read_exact(&mut got)
    });
    let elapsed = secs(started.elapsed());
    drop(near);
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    exchanged?;
    Ok(elapsed)
}

fn handshakes(slot: &mut Slot, n: usize) -> Sample {
    let mut sample = Sample::default();
    let started = Instant::now();
    for _ in 0..n {
        match connect(slot) {
            Ok(client) => drop(client),
            Err(e) => sample.error(e.to_string()),
        }
    }
    sample.value = secs(started.elapsed());
    sample
        .extra
        .insert("conns/s".into(), n as f64 / sample.value);
    sample
}

/// Streams the NAR of one `size_bytes` file of pseudo-random bytes.
fn add_big_file(slot: &mut Slot, rep: usize, size_bytes: u64) -> Sample {
    let mut sample = Sample::default();
    let mut client = match connect(slot) {
        Ok(c) => c,
        Err(e) => {
            sample.error(format!("connect: {e}"));
            return sample;
        }
    };
    let chunk = pseudo_random_bytes(rep as u64 + 1, 1 << 20);
    let minor = client.daemon_version().map_or(0, wire::protocol_minor);
    let mut head = Vec::new();
    wire::encode_request(
        &Request::AddToStore(AddToStoreHeader {
            name: format!("big-{rep}"),
            fixed: true,
            recursive: true,
            hash_algo: "sha256".into(),
        }),
        minor,
        &mut head,
    );
    head.extend_from_slice(&file_nar_prefix(false, size_bytes));
    let started = Instant::now();
    let result = (|| -> Result<(), ClientError> {
        client.send_raw(&head)?;
        let mut left = size_bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            client.stream_mut().write_all(&chunk[..n])?;
            left -= n as u64;
        }
        client.send_raw(file_nar_suffix(size_bytes))?;
        client.read_response(Op::AddToStore)?;
        Ok(())
    })();
    sample.value = secs(started.elapsed());
    if let Err(e) = result {
        sample.error(e.to_string());
    }
    sample
        .extra
        .insert("GB/s".into(), size_bytes as f64 / 1e9 / sample.value);
    sample
}

/// The NAR of a directory of `files` small files, built before the timer.
fn add_tree(slot: &mut Slot, rep: usize, files: usize) -> Sample {
    let mut sample = Sample::default();
    let nar = match tree_nar(rep, files) {
        Ok(nar) => nar,
        Err(e) => {
            sample.error(format!("building the NAR: {e}"));
            return sample;
        }
    };
    let mut client = match connect(slot) {
        Ok(c) => c,
        Err(e) => {
            sample.error(format!("connect: {e}"));
            return sample;
        }
    };
    let started = Instant::now();
    if let Err(e) = client.add_to_store(&format!("tree-{rep}"), true, "sha256", &nar) {
        sample.error(e.to_string());
    }
    sample.value = secs(started.elapsed());
    sample
        .extra
        .insert("files/s".into(), files as f64 / sample.value);
    sample
}

fn tree_nar(rep: usize, files: usize) -> Result<Vec<u8>, guixd_core::nar::NarWriteError> {
    let mut out = Vec::new();
    let mut w = NarWriter::new();
    w.write(NarEvent::Directory { name: b"" }, &mut out)?;
    let per_dir = 1000;
    for d in 0..files.div_ceil(per_dir) {
        let dname = format!("d{d:04}");
        w.write(
            NarEvent::Directory {
                name: dname.as_bytes(),
            },
            &mut out,
        )?;
        for f in (d * per_dir)..((d + 1) * per_dir).min(files) {
            let fname = format!("f{f:06}");
            let contents = format!("repetition {rep}, file {f}\n").repeat(1 + f % 4);
            w.write(
                NarEvent::File {
                    name: fname.as_bytes(),
                    executable: f % 7 == 0,
                    size_bytes: contents.len() as u64,
                },
                &mut out,
            )?;
            w.write(NarEvent::FileData(contents.as_bytes()), &mut out)?;
            w.write(NarEvent::FileEnd, &mut out)?;
        }
        w.write(NarEvent::DirectoryEnd, &mut out)?;
    }
    w.write(NarEvent::DirectoryEnd, &mut out)?;
    Ok(out)
}

/// Opens `n` connections (handshake and set-options), or as many as can
/// be opened, recording failures.
fn open_idle(slot: &Slot, n: usize, sample: &mut Sample) -> Vec<Client<UnixStream>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        match connect(slot) {
            Ok(c) => clients.push(c),
            Err(e) => sample.error(format!("connect: {e}")),
        }
    }
    clients
}

fn idle_memory(slot: &mut Slot, n: usize) -> Sample {
    let mut sample = Sample::default();
    let clients = open_idle(slot, n, &mut sample);
    // Let the C++ daemon's forked processes settle after their set-options.
    std::thread::sleep(Duration::from_millis(300));
    let pids = slot.daemon().processes();
    let (pss, rss) = super::env::memory_bytes(&pids);
    sample.value = pss as f64;
    sample.extra.insert("rss bytes".into(), rss as f64);
    sample.extra.insert("processes".into(), pids.len() as f64);
    sample
        .extra
        .insert("connections".into(), clients.len() as f64);
    drop(clients);
    wait_for_process_count(slot, 4);
    sample
}

fn idle_latency(slot: &mut Slot, n: usize, probes: usize) -> Sample {
    let mut sample = Sample::default();
    let clients = open_idle(slot, n, &mut sample);
    let mut probe = match connect(slot) {
        Ok(c) => c,
        Err(e) => {
            sample.error(format!("probe connect: {e}"));
            return sample;
        }
    };
    let mut latencies = Vec::with_capacity(probes);
    for i in 0..probes {
        let path = &slot.items[i % slot.items.len()];
        let t = Instant::now();
        if let Err(e) = probe.query_path_info(path) {
            sample.error(e.to_string());
        }
        latencies.push(secs(t.elapsed()));
    }
    let (pss, _) = super::env::memory_bytes(&slot.daemon().processes());
    sample.record_latencies(latencies);
    sample.extra.insert("pss bytes".into(), pss as f64);
    sample
        .extra
        .insert("connections".into(), clients.len() as f64);
    drop(clients);
    sample
}

/// Waits (at most a few seconds) until the daemon has at most `max`
/// processes, so the C++ daemon's exiting per-connection processes do not
/// count in the next repetition.
fn wait_for_process_count(slot: &Slot, max: usize) {
    let started = Instant::now();
    while slot.daemon().processes().len() > max && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `len` bytes of a xorshift stream seeded with `seed`: incompressible,
/// different for each seed.
fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_nar_is_a_valid_nar() {
        let nar = tree_nar(3, 2500).expect("nar");
        let tree = guixd_core::nar::NarTree::from_nar(&nar, Default::default()).expect("parse");
        assert_eq!(tree.to_nar().expect("write"), nar);
    }

    #[test]
    fn pseudo_random_bytes_differ_by_seed() {
        assert_ne!(pseudo_random_bytes(1, 64), pseudo_random_bytes(2, 64));
        assert_eq!(pseudo_random_bytes(1, 100).len(), 100);
    }
}

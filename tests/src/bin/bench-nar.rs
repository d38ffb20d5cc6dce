//! Benchmark (not a test): hashes a 1 GiB NAR stream through guixd-core's
//! push parser, as add-to-store does, and plain SHA-256 over the same bytes,
//! in the same run, and prints both throughputs and their ratio.
//!
//! Keeps true: both measurements see identical bytes in identical chunk
//! sizes; each is repeated and the median reported, so the ratio compares
//! like with like on a noisy shared machine.

use guixd_core::hash::{HashAlgo, Hasher};
use guixd_core::nar::{NarEvent, NarLimits, NarParser, NarWriter, Outcome};
use std::time::{Duration, Instant};

const TOTAL_BYTES: u64 = 1 << 30;
const CHUNK_BYTES: usize = 256 * 1024;
const ROUNDS: usize = 5;

fn main() {
    let nar = sample_nar();
    println!(
        "NAR of {} bytes (a directory of 8 files of 128 MiB), fed in {} KiB chunks, {} rounds",
        nar.len(),
        CHUNK_BYTES / 1024,
        ROUNDS
    );
    let mut parsed = Vec::new();
    let mut plain = Vec::new();
    for _ in 0..ROUNDS {
        parsed.push(time(|| parse_and_hash(&nar)));
        plain.push(time(|| plain_hash(&nar)));
    }
    let gbps = |d: Duration| nar.len() as f64 / d.as_secs_f64() / 1e9;
    let p = median(&mut parsed);
    let s = median(&mut plain);
    println!("parser + SHA-256: {:.3} GB/s (median {:?})", gbps(p), p);
    println!("plain SHA-256:    {:.3} GB/s (median {:?})", gbps(s), s);
    println!(
        "ratio parser/plain: {:.3} (target >= 0.80)",
        s.as_secs_f64() / p.as_secs_f64()
    );
}

/// A directory of eight 128 MiB files whose bytes vary, written with the
/// core's own writer.
fn sample_nar() -> Vec<u8> {
    let mut out = Vec::with_capacity(TOTAL_BYTES as usize + 4096);
    let mut w = NarWriter::new();
    let file_bytes = TOTAL_BYTES / 8;
    let block: Vec<u8> = (0..CHUNK_BYTES).map(|i| (i * 31 % 251) as u8).collect();
    w.write(NarEvent::Directory { name: b"" }, &mut out)
        .expect("valid NAR");
    for i in 0..8u8 {
        let name = [b'a' + i];
        w.write(
            NarEvent::File {
                name: &name,
                executable: i % 2 == 1,
                size_bytes: file_bytes,
            },
            &mut out,
        )
        .expect("valid NAR");
        let mut left = file_bytes;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            w.write(NarEvent::FileData(&block[..n]), &mut out)
                .expect("valid NAR");
            left -= n as u64;
        }
        w.write(NarEvent::FileEnd, &mut out).expect("valid NAR");
    }
    w.write(NarEvent::DirectoryEnd, &mut out)
        .expect("valid NAR");
    out
}

fn parse_and_hash(nar: &[u8]) -> [u8; 32] {
    let mut parser = NarParser::new(NarLimits::default());
    let mut hasher = Hasher::new(HashAlgo::Sha256);
    for chunk in nar.chunks(CHUNK_BYTES) {
        let mut at = 0;
        while at < chunk.len() {
            let step = parser.feed(&chunk[at..]).expect("the sample NAR is valid");
            hasher.update(&chunk[at..at + step.consumed]);
            at += step.consumed;
            if let Outcome::NeedMore = step.outcome {
                break;
            }
        }
    }
    assert!(parser.is_done(), "the sample NAR must parse to its end");
    first_32(hasher.finish().as_bytes())
}

fn plain_hash(nar: &[u8]) -> [u8; 32] {
    let mut hasher = Hasher::new(HashAlgo::Sha256);
    for chunk in nar.chunks(CHUNK_BYTES) {
        hasher.update(chunk);
    }
    first_32(hasher.finish().as_bytes())
}

fn first_32(b: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(&b[..32]);
    out
}

fn time(f: impl FnOnce() -> [u8; 32]) -> Duration {
    let start = Instant::now();
    std::hint::black_box(f());
    start.elapsed()
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

//! Fuzz target for the NAR parser (`guixd_core::nar`).
//!
//! The first four bytes of the input choose the limits and how the rest is
//! cut into chunks; the rest is fed to the parser. Checks, beyond "never
//! panics": the parse fed all at once and fed in random chunks gives the
//! same events (data chunks merged), the same end and the same error; and
//! whatever parses is canonical, so writing its events back with
//! `NarWriter` reproduces the consumed bytes exactly.

#![no_main]

use guixd_core::nar::{NarError, NarEvent, NarLimits, NarParser, NarWriter, Outcome};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((knobs, nar)) = data.split_first_chunk::<4>() else {
        return;
    };
    let limits = limits_from(knobs);
    let whole = parse(nar, &limits, &mut || usize::MAX);
    let mut seed = u32::from_le_bytes(*knobs) | 1;
    let chunked = parse(nar, &limits, &mut || {
        // xorshift32: a cheap, deterministic sequence of chunk sizes.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        1 + (seed % 40) as usize
    });
    assert_eq!(whole, chunked);
    if let End::Done(size) = whole.end {
        assert_eq!(whole.rewritten, nar[..size]);
    }
});

/// Default limits, or small ones that the fuzzer can reach.
fn limits_from(knobs: &[u8; 4]) -> NarLimits {
    if knobs[0] & 1 == 0 {
        return NarLimits::default();
    }
    NarLimits {
        depth_max: usize::from(knobs[1] % 8),
        name_max_bytes: usize::from(knobs[2] % 16),
        symlink_target_max_bytes: usize::from(knobs[3] % 32),
        file_max_bytes: u64::from(knobs[1]) * 4,
        nar_max_bytes: u64::from(knobs[2]) * 64,
        dir_entries_max: u64::from(knobs[3] % 8),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    Done(usize),
    NeedMore,
    Failed(NarError),
}

/// What a parse produced: the events re-encoded by the writer (which
/// merges data chunks and checks the events form a valid NAR), and how it
/// ended.
#[derive(Debug, PartialEq, Eq)]
struct Parse {
    rewritten: Vec<u8>,
    end: End,
}

/// Parses `nar`, fed in chunks of the sizes `next_chunk` returns.
fn parse(nar: &[u8], limits: &NarLimits, next_chunk: &mut dyn FnMut() -> usize) -> Parse {
    let mut parser = NarParser::new(limits.clone());
    let mut writer = NarWriter::new();
    let mut rewritten = Vec::new();
    let mut offset = 0;
    loop {
        let end = offset + next_chunk().min(nar.len() - offset);
        let chunk = &nar[offset..end];
        let mut pos = 0;
        loop {
            let step = match parser.feed(&chunk[pos..]) {
                Ok(step) => step,
                Err(e) => {
                    return Parse {
                        rewritten,
                        end: End::Failed(e),
                    };
                }
            };
            assert!(step.consumed <= chunk.len() - pos);
            pos += step.consumed;
            match step.outcome {
                Outcome::NeedMore => {
                    assert_eq!(pos, chunk.len());
                    break;
                }
                Outcome::Done => {
                    assert!(writer.is_done());
                    return Parse {
                        rewritten,
                        end: End::Done(offset + pos),
                    };
                }
                Outcome::Event(event) => {
                    if let NarEvent::FileData(d) = event {
                        assert!(!d.is_empty());
                    }
                    // Every event the parser reports is one the writer
                    // accepts at that point.
                    writer
                        .write(event, &mut rewritten)
                        .expect("parser events form a valid NAR");
                }
            }
        }
        offset = end;
        if offset == nar.len() {
            return Parse {
                rewritten,
                end: End::NeedMore,
            };
        }
    }
}

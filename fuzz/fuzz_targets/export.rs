//! Fuzz target for the export-bundle parser (the input of import-paths).
//!
//! Checks, for any bytes: parsing never panics; feeding the bytes in
//! chunks (sizes drawn from the first input byte) gives the same outcomes
//! as one whole feed (file contents compared as merged data, since their
//! cut into chunks may differ) and the same error; nothing past the bundle's
//! end is consumed; and every complete item's NAR hash and size are those
//! of the bytes its NAR came from.

#![no_main]

use guixd_core::StoreDir;
use guixd_core::export::{ExportError, ExportLimits, ExportOutcome, ExportParser};
use guixd_core::hash::Hash;
use guixd_core::nar::{NarEvent, NarLimits};
use guixd_core::wire::WireLimits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let whole = parse(bytes, &mut Sizes(None));
    assert_eq!(parse(bytes, &mut Sizes(Some(u32::from(seed) | 1))), whole);
});

/// Chunk sizes of 1 to 16 bytes from a small generator, or the whole input.
struct Sizes(Option<u32>);

impl Sizes {
    fn next(&mut self) -> usize {
        match &mut self.0 {
            None => usize::MAX,
            Some(x) => {
                *x ^= *x << 13;
                *x ^= *x >> 17;
                *x ^= *x << 5;
                1 + (*x % 16) as usize
            }
        }
    }
}

/// What a parse produced, owned, with file data merged.
#[derive(Debug, PartialEq)]
enum Seen {
    ItemStart,
    Nar(String),
    Data(Vec<u8>),
    NarEnd,
    Item(String),
    End,
}

fn parse(bytes: &[u8], sizes: &mut Sizes) -> (Vec<Seen>, Option<ExportError>, usize) {
    let limits = ExportLimits {
        nar: NarLimits {
            depth_max: 16,
            name_max_bytes: 64,
            symlink_target_max_bytes: 256,
            file_max_bytes: 1 << 16,
            nar_max_bytes: 1 << 18,
            dir_entries_max: 64,
        },
        trailer: WireLimits {
            max_string_len_bytes: 1 << 10,
            max_list_count: 64,
            max_pairs_count: 16,
            max_message_bytes: 1 << 14,
        },
    };
    let store = StoreDir::new("/gnu/store").expect("an absolute store directory");
    let mut parser = ExportParser::new(store, limits);
    let mut seen = Vec::new();
    let mut pos = 0;
    let mut item_start = 0;
    let mut nar_end = 0;
    while pos < bytes.len() && !parser.is_done() {
        let end = pos.saturating_add(sizes.next()).min(bytes.len());
        let mut c = &bytes[pos..end];
        while !c.is_empty() && !parser.is_done() {
            let step = match parser.feed(c) {
                Ok(s) => s,
                Err(e) => return (seen, Some(e), 0),
            };
            assert!(step.consumed <= c.len());
            pos += step.consumed;
            c = &c[step.consumed..];
            let s = match step.outcome {
                ExportOutcome::NeedMore => {
                    assert!(c.is_empty(), "NeedMore with input left");
                    continue;
                }
                ExportOutcome::ItemStart => {
                    item_start = pos;
                    Seen::ItemStart
                }
                ExportOutcome::Nar(NarEvent::FileData(d)) => Seen::Data(d.to_vec()),
                ExportOutcome::Nar(e) => Seen::Nar(format!("{e:?}")),
                ExportOutcome::NarEnd => {
                    nar_end = pos;
                    Seen::NarEnd
                }
                ExportOutcome::Item(item) => {
                    let nar = &bytes[item_start..nar_end];
                    assert_eq!(item.nar_size_bytes, nar.len() as u64);
                    assert_eq!(item.nar_hash, Hash::sha256(nar));
                    Seen::Item(format!("{item:?}"))
                }
                ExportOutcome::End => Seen::End,
            };
            match (seen.last_mut(), s) {
                (Some(Seen::Data(d)), Seen::Data(more)) => d.extend(more),
                (_, s) => seen.push(s),
            }
        }
    }
    (seen, None, pos)
}

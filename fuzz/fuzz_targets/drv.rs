//! Fuzz target for the `.drv` parser and printer.
//!
//! Checks, for any bytes: parsing never panics; feeding the bytes in chunks
//! (sizes drawn from the first input byte) gives exactly the result of one
//! whole feed; and a derivation that parses prints to text that parses back
//! to the same derivation and prints to the same bytes again. Strings with
//! NUL are the one exception: the printer cuts them, as the daemon's does,
//! so it takes one more round to reach the fixed point.

#![no_main]

use guixd_core::derivation::{DrvLimits, DrvParseError, DrvParser, parse_derivation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, text)) = data.split_first() else {
        return;
    };
    // Small enough that the limits trip now and then.
    let limits = DrvLimits {
        max_drv_bytes: 1 << 16,
        max_string_len_bytes: 1 << 12,
        max_items_count: 1 << 10,
    };

    let whole = parse_derivation(text, limits);
    assert_eq!(parse_chunked(text, limits, seed), whole);

    if let Ok((drv, consumed)) = whole {
        assert!(consumed <= text.len());
        let printed = drv.to_text();
        let (again, n) = parse_derivation(printed.as_bytes(), DrvLimits::default())
            .expect("printed text parses");
        assert_eq!(n, printed.len());
        if !has_nul(&drv) {
            assert_eq!(again, drv, "print then parse gives the derivation back");
            assert_eq!(again.to_text(), printed, "printing is a fixed point");
        }
        // With NUL bytes the printer cuts strings, so two keys may print
        // alike and collapse when read back; from then on there is no NUL
        // and printing is a fixed point.
        let canonical = again.to_text();
        let (third, _) = parse_derivation(canonical.as_bytes(), DrvLimits::default())
            .expect("printed text parses");
        assert_eq!(third.to_text(), canonical, "printing is a fixed point");
        if &text[..consumed] == canonical.as_bytes() {
            // The input was canonical, and it printed back to itself.
            assert_eq!(third, drv);
        }
    }
});

/// Feeds `text` in chunks of 1 to 16 bytes, sizes from a small generator
/// seeded by `seed`, then ends the input.
fn parse_chunked(
    text: &[u8],
    limits: DrvLimits,
    seed: u8,
) -> Result<(guixd_core::derivation::Derivation, usize), DrvParseError> {
    let mut parser = DrvParser::new(limits);
    let mut state = u32::from(seed) | 0x100;
    let mut pos = 0;
    while pos < text.len() {
        // xorshift32: any deterministic spread of sizes will do.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let end = (pos + 1 + (state % 16) as usize).min(text.len());
        let fed = parser.feed(&text[pos..end])?;
        if let Some(drv) = fed.derivation {
            return Ok((drv, pos + fed.consumed));
        }
        assert_eq!(fed.consumed, end - pos, "need-more consumes everything");
        pos = end;
    }
    Err(parser.finish())
}

fn has_nul(drv: &guixd_core::derivation::Derivation) -> bool {
    let outputs = drv
        .outputs
        .iter()
        .flat_map(|(id, o)| [id, &o.path, &o.hash_algo, &o.hash]);
    let inputs = drv
        .input_drvs
        .iter()
        .flat_map(|(p, names)| std::iter::once(p).chain(names));
    let env = drv.env.iter().flat_map(|(k, v)| [k, v]);
    outputs
        .chain(inputs)
        .chain(&drv.input_srcs)
        .chain([&drv.platform, &drv.builder])
        .chain(&drv.args)
        .chain(env)
        .any(|s| s.contains('\0'))
}

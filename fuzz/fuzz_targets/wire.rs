//! Fuzz target for the worker protocol's decoders.
//!
//! Checks, for any bytes: no decoder panics (requests, the client's hello,
//! and on the client side whole responses to any operation); feeding the
//! bytes in chunks (sizes drawn from the first input byte) gives exactly
//! what one whole feed gives; a decoded request re-encodes to bytes that
//! decode to the same request; and no decoder consumes more than it was
//! given.

#![no_main]

use guixd_core::wire::{
    HelloDecoder, Op, Request, RequestDecoder, Response, ResponseDecoder, WireError, WireLimits,
    encode_request,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    let Some((&selector, bytes)) = rest.split_first() else {
        return;
    };
    // Small enough that the limits trip now and then.
    let limits = WireLimits {
        max_string_len_bytes: 1 << 12,
        max_list_count: 1 << 8,
        max_pairs_count: 1 << 4,
        max_message_bytes: 1 << 14,
    };
    match selector % 3 {
        0 => {
            // 1.5.0's minor most of the time, any minor otherwise.
            let minor = if selector & 0x80 == 0 {
                0x64
            } else {
                selector.wrapping_mul(37)
            };
            let whole = requests(bytes, minor, &limits, &mut Sizes::whole());
            assert_eq!(
                requests(bytes, minor, &limits, &mut Sizes::new(seed)),
                whole
            );
            for req in &whole.0 {
                let mut encoded = Vec::new();
                encode_request(req, minor, &mut encoded);
                let again = requests(&encoded, minor, &WireLimits::default(), &mut Sizes::whole());
                assert_eq!(
                    again,
                    (vec![req.clone()], None),
                    "re-encoded request decodes alike"
                );
            }
        }
        1 => {
            let whole = hello(bytes, &mut Sizes::whole());
            assert_eq!(hello(bytes, &mut Sizes::new(seed)), whole);
        }
        _ => {
            let op = Op::ALL[usize::from(selector / 3) % Op::ALL.len()];
            let whole = response(op, bytes, &limits, &mut Sizes::whole());
            assert_eq!(response(op, bytes, &limits, &mut Sizes::new(seed)), whole);
        }
    }
});

/// Chunk sizes of 1 to 16 bytes from a small generator, or the whole input.
struct Sizes(Option<u32>);

impl Sizes {
    fn new(seed: u8) -> Sizes {
        Sizes(Some(u32::from(seed) | 1))
    }

    fn whole() -> Sizes {
        Sizes(None)
    }

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

fn chunk<'a>(bytes: &'a [u8], pos: usize, sizes: &mut Sizes) -> &'a [u8] {
    &bytes[pos..pos.saturating_add(sizes.next()).min(bytes.len())]
}

/// Every request in `bytes`, and the error that stopped decoding, if any.
fn requests(
    bytes: &[u8],
    minor: u8,
    limits: &WireLimits,
    sizes: &mut Sizes,
) -> (Vec<Request>, Option<WireError>) {
    let mut dec = RequestDecoder::new(minor, limits.clone());
    let mut got = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let mut c = chunk(bytes, pos, sizes);
        pos += c.len();
        while !c.is_empty() {
            match dec.feed(c) {
                Ok(f) => {
                    assert!(f.consumed <= c.len());
                    c = &c[f.consumed..];
                    match f.item {
                        // Add-to-store's NAR would follow: stop there, as a
                        // session hands the rest to a NAR parser.
                        Some(r @ Request::AddToStore(_)) => {
                            got.push(r);
                            return (got, None);
                        }
                        Some(r) => got.push(r),
                        None => assert!(c.is_empty()),
                    }
                }
                Err(e) => return (got, Some(e)),
            }
        }
    }
    (got, None)
}

fn hello(
    bytes: &[u8],
    sizes: &mut Sizes,
) -> (Vec<guixd_core::wire::HelloEvent>, Option<WireError>, usize) {
    let mut dec = HelloDecoder::new();
    let mut got = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() && !dec.is_done() {
        let mut c = chunk(bytes, pos, sizes);
        while !c.is_empty() && !dec.is_done() {
            match dec.feed(c) {
                Ok(f) => {
                    assert!(f.consumed <= c.len());
                    pos += f.consumed;
                    c = &c[f.consumed..];
                    got.extend(f.item);
                }
                Err(e) => return (got, Some(e), 0),
            }
        }
    }
    (got, None, pos)
}

fn response(
    op: Op,
    bytes: &[u8],
    limits: &WireLimits,
    sizes: &mut Sizes,
) -> (Vec<Response>, Option<WireError>, usize) {
    let mut dec = ResponseDecoder::new(op, 0x64, limits.clone());
    let mut got = Vec::new();
    let mut pos = 0;
    while !dec.is_done() {
        let c = chunk(bytes, pos, sizes);
        let result = if c.is_empty() {
            dec.feed_eof().map(|r| (0, r))
        } else {
            dec.feed(c).map(|f| {
                assert!(f.consumed <= c.len());
                (f.consumed, f.item)
            })
        };
        match result {
            Ok((n, item)) => {
                pos += n;
                got.extend(item);
            }
            Err(e) => return (got, Some(e), 0),
        }
    }
    (got, None, pos)
}

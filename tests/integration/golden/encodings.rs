//! `encodings.json`: nix-base32 and base16 of byte strings, strings Guix's
//! base-32 decoder rejects, and every digest of every algorithm.
//!
//! Keeps true: every vector is checked in both directions (encode and
//! decode), through the free functions and through `Hash`.

use super::support::{Report, load, unhex};
use guixd_core::{Hash, HashAlgo, Hasher, base32, hex};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    base32: Vec<Base32Vector>,
    base32_invalid: Vec<InvalidVector>,
    hashes: Vec<HashVector>,
}

#[derive(Deserialize)]
struct Base32Vector {
    bytes_hex: String,
    nix_base32: String,
    base16: String,
}

#[derive(Deserialize)]
struct InvalidVector {
    nix_base32: String,
    accepted: bool,
}

#[derive(Deserialize)]
struct HashVector {
    input_hex: String,
    digests: Vec<Digest>,
}

#[derive(Deserialize)]
struct Digest {
    algo: String,
    hex: String,
    nix_base32: String,
}

#[test]
fn every_encoding_and_digest() {
    let file: File = load("encodings.json");
    let mut report = Report::new("encodings.json");
    for v in &file.base32 {
        check_base32(&mut report, v);
    }
    for v in &file.base32_invalid {
        check_invalid_base32(&mut report, v);
    }
    for v in &file.hashes {
        check_digests(&mut report, v);
    }
    report.finish();
}

fn check_base32(report: &mut Report, v: &Base32Vector) {
    let at = format!("base32 of `{}'", v.bytes_hex);
    let bytes = unhex(&v.bytes_hex);
    report.eq(
        &at,
        "base32::encode",
        &base32::encode(&bytes),
        &v.nix_base32,
    );
    report.eq(
        &at,
        "base32::encoded_len",
        &base32::encoded_len(bytes.len()),
        &v.nix_base32.len(),
    );
    report.eq(
        &at,
        "base32::decode",
        &base32::decode(v.nix_base32.as_bytes(), bytes.len()),
        &Some(bytes.clone()),
    );
    report.eq(&at, "hex::encode", &hex::encode(&bytes), &v.base16);
    report.eq(
        &at,
        "hex::decode",
        &hex::decode(v.base16.as_bytes()),
        &Some(bytes.clone()),
    );
    // The daemon's hex parser is case-insensitive.
    let upper = v.base16.to_ascii_uppercase();
    report.eq(
        &at,
        "hex::decode of uppercase",
        &hex::decode(upper.as_bytes()),
        &Some(bytes),
    );
}

fn check_invalid_base32(report: &mut Report, v: &InvalidVector) {
    let at = format!("invalid base32 `{}'", v.nix_base32);
    report.check(
        &at,
        "the vector says Guix rejects it",
        !v.accepted,
        "accepted is true",
    );
    let s = v.nix_base32.as_bytes();
    report.check(&at, "base32::is_base32", !base32::is_base32(s), "accepted");
    // Guix sizes the result from the length (5 bits per character); try
    // that size and every size near it, so a rejection cannot come from
    // the length alone.
    let guix_size = s.len() * 5 / 8;
    for size in guix_size.saturating_sub(1)..=guix_size + 1 {
        report.eq(
            &at,
            &format!("base32::decode into {size} bytes"),
            &base32::decode(s, size),
            &None,
        );
    }
}

fn check_digests(report: &mut Report, v: &HashVector) {
    let input = unhex(&v.input_hex);
    let algos: Vec<&str> = v.digests.iter().map(|d| d.algo.as_str()).collect();
    let all: Vec<&str> = HashAlgo::ALL.iter().map(|a| a.name()).collect();
    let at = format!("hashes of `{}'", v.input_hex);
    report.eq(&at, "the set of algorithms", &algos, &all);
    for d in &v.digests {
        let at = format!("{} of `{}'", d.algo, v.input_hex);
        let Some(algo) = HashAlgo::parse(&d.algo) else {
            report.fail(&at, "HashAlgo::parse", "unknown algorithm");
            continue;
        };
        report.eq(&at, "HashAlgo::name", &algo.name(), &d.algo.as_str());
        let h = Hash::digest(algo, &input);
        report.eq(&at, "Hash::digest, hex", &h.to_hex(), &d.hex);
        report.eq(
            &at,
            "Hash::digest, nix-base32",
            &h.to_base32(),
            &d.nix_base32,
        );
        report.eq(&at, "digest size", &h.as_bytes().len(), &algo.size_bytes());
        // Incrementally, one byte at a time.
        let mut hasher = Hasher::new(algo);
        for b in &input {
            hasher.update(std::slice::from_ref(b));
        }
        report.eq(&at, "Hasher byte by byte", &hasher.finish(), &h);
        report.eq(
            &at,
            "Hash::parse_hex",
            &Hash::parse_hex(algo, &d.hex),
            &Ok(h),
        );
        report.eq(
            &at,
            "Hash::parse_base32",
            &Hash::parse_base32(algo, &d.nix_base32),
            &Ok(h),
        );
        for text in [&d.hex, &d.nix_base32] {
            report.eq(
                &at,
                &format!("Hash::parse_hex_or_base32 `{text}'"),
                &Hash::parse_hex_or_base32(algo, text),
                &Ok(h),
            );
        }
        report.eq(
            &at,
            "Hash::from_bytes",
            &Hash::from_bytes(algo, &unhex(&d.hex)),
            &Some(h),
        );
    }
}

//! Hash algorithms, hash values and incremental hashers.
//!
//! The set of algorithms is exactly the one the 1.5.0 daemon accepts for
//! add-to-store and fixed-output derivations. SHA-256 and SHA-1 use the CPU's
//! SHA extensions when present (the `sha2`/`sha1` crates detect them at run
//! time). A [`Hash`] is a small `Copy` value; parsing errors carry the C++
//! daemon's exact texts, because clients and people grep them.

use crate::{base32, hex};
use digest::Digest;
use std::fmt;

/// A hash algorithm, named as in Guix (`sha256`, `blake2s-256`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HashAlgo {
    Md5,
    Sha1,
    Sha256,
    Sha512,
    Sha3_256,
    Sha3_512,
    Blake2s256,
}

impl HashAlgo {
    /// Every algorithm, in a fixed order.
    pub const ALL: [HashAlgo; 7] = [
        HashAlgo::Md5,
        HashAlgo::Sha1,
        HashAlgo::Sha256,
        HashAlgo::Sha512,
        HashAlgo::Sha3_256,
        HashAlgo::Sha3_512,
        HashAlgo::Blake2s256,
    ];

    /// Parses Guix's name of an algorithm.
    pub fn parse(name: &str) -> Option<HashAlgo> {
        HashAlgo::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Guix's name, as written in `.drv` files and on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
            HashAlgo::Sha3_256 => "sha3-256",
            HashAlgo::Sha3_512 => "sha3-512",
            HashAlgo::Blake2s256 => "blake2s-256",
        }
    }

    /// libgcrypt's name, which the daemon uses in some error texts.
    pub const fn gcrypt_name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "MD5",
            HashAlgo::Sha1 => "SHA1",
            HashAlgo::Sha256 => "SHA256",
            HashAlgo::Sha512 => "SHA512",
            HashAlgo::Sha3_256 => "SHA3-256",
            HashAlgo::Sha3_512 => "SHA3-512",
            HashAlgo::Blake2s256 => "BLAKE2S_256",
        }
    }

    /// Digest size in bytes.
    pub const fn size_bytes(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 | HashAlgo::Sha3_256 | HashAlgo::Blake2s256 => 32,
            HashAlgo::Sha512 | HashAlgo::Sha3_512 => 64,
        }
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The largest digest of any algorithm, in bytes.
pub const MAX_HASH_BYTES: usize = 64;

/// A digest value together with its algorithm.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash {
    algo: HashAlgo,
    bytes: [u8; MAX_HASH_BYTES],
}

/// A hash string the daemon would refuse, with the daemon's own words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HashParseError {
    #[error("invalid {algo} hash '{text}' ({got} bytes but expected {expected})", algo = .algo.gcrypt_name())]
    WrongHexLength {
        algo: HashAlgo,
        text: String,
        got: usize,
        expected: usize,
    },
    #[error("invalid hash `{0}'")]
    BadHex(String),
    #[error("invalid base-32 hash '{0}'")]
    BadBase32(String),
    #[error("hash `{text}' has wrong length for hash type `{algo}'")]
    WrongLength { algo: HashAlgo, text: String },
}

impl Hash {
    /// Builds a hash from its digest bytes; `None` if the length is wrong.
    pub fn from_bytes(algo: HashAlgo, digest: &[u8]) -> Option<Hash> {
        if digest.len() != algo.size_bytes() {
            return None;
        }
        let mut bytes = [0u8; MAX_HASH_BYTES];
        bytes[..digest.len()].copy_from_slice(digest);
        Some(Hash { algo, bytes })
    }

    /// Hashes `data` in one go.
    pub fn digest(algo: HashAlgo, data: &[u8]) -> Hash {
        let mut h = Hasher::new(algo);
        h.update(data);
        h.finish()
    }

    /// SHA-256 of `data`.
    pub fn sha256(data: &[u8]) -> Hash {
        Hash::digest(HashAlgo::Sha256, data)
    }

    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.algo.size_bytes()]
    }

    /// Lowercase hex of the digest.
    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    /// nix-base32 of the digest.
    pub fn to_base32(&self) -> String {
        base32::encode(self.as_bytes())
    }

    /// The form the daemon prints in hash-mismatch reports: hex for MD5,
    /// nix-base32 for every other algorithm.
    pub fn to_report_string(&self) -> String {
        if self.algo == HashAlgo::Md5 {
            self.to_hex()
        } else {
            self.to_base32()
        }
    }

    /// Parses hex only, as the daemon's `parseHash` does (`.drv` output
    /// hashes, `hash` columns after `sha256:`).
    pub fn parse_hex(algo: HashAlgo, text: &str) -> Result<Hash, HashParseError> {
        let expected = algo.size_bytes();
        if text.len() != expected * 2 {
            return Err(HashParseError::WrongHexLength {
                algo,
                text: text.to_owned(),
                got: text.len() / 2,
                expected,
            });
        }
        let bytes =
            hex::decode(text.as_bytes()).ok_or_else(|| HashParseError::BadHex(text.to_owned()))?;
        Ok(Hash::from_bytes(algo, &bytes).expect("length checked above"))
    }

    /// Parses nix-base32 only.
    pub fn parse_base32(algo: HashAlgo, text: &str) -> Result<Hash, HashParseError> {
        let bytes = base32::decode(text.as_bytes(), algo.size_bytes())
            .ok_or_else(|| HashParseError::BadBase32(text.to_owned()))?;
        Ok(Hash::from_bytes(algo, &bytes).expect("decode returns the requested size"))
    }

    /// Parses hex or nix-base32, told apart by length (`parseHash16or32`).
    pub fn parse_hex_or_base32(algo: HashAlgo, text: &str) -> Result<Hash, HashParseError> {
        if text.len() == algo.size_bytes() * 2 {
            Hash::parse_hex(algo, text)
        } else if text.len() == base32::encoded_len(algo.size_bytes()) {
            Hash::parse_base32(algo, text)
        } else {
            Err(HashParseError::WrongLength {
                algo,
                text: text.to_owned(),
            })
        }
    }

    /// XOR-folds the digest into `N` bytes (`compressHash`), as used for the
    /// 20-byte hash part of store paths.
    pub fn compress<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, b) in self.as_bytes().iter().enumerate() {
            out[i % N] ^= b;
        }
        out
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo, self.to_hex())
    }
}

/// An incremental hasher for any [`HashAlgo`].
#[derive(Clone)]
pub enum Hasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
    Sha3_256(sha3::Sha3_256),
    Sha3_512(sha3::Sha3_512),
    Blake2s256(blake2::Blake2s256),
}

impl Hasher {
    pub fn new(algo: HashAlgo) -> Hasher {
        match algo {
            HashAlgo::Md5 => Hasher::Md5(Digest::new()),
            HashAlgo::Sha1 => Hasher::Sha1(Digest::new()),
            HashAlgo::Sha256 => Hasher::Sha256(Digest::new()),
            HashAlgo::Sha512 => Hasher::Sha512(Digest::new()),
            HashAlgo::Sha3_256 => Hasher::Sha3_256(Digest::new()),
            HashAlgo::Sha3_512 => Hasher::Sha3_512(Digest::new()),
            HashAlgo::Blake2s256 => Hasher::Blake2s256(Digest::new()),
        }
    }

    pub fn algo(&self) -> HashAlgo {
        match self {
            Hasher::Md5(_) => HashAlgo::Md5,
            Hasher::Sha1(_) => HashAlgo::Sha1,
            Hasher::Sha256(_) => HashAlgo::Sha256,
            Hasher::Sha512(_) => HashAlgo::Sha512,
            Hasher::Sha3_256(_) => HashAlgo::Sha3_256,
            Hasher::Sha3_512(_) => HashAlgo::Sha3_512,
            Hasher::Blake2s256(_) => HashAlgo::Blake2s256,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
            Hasher::Sha3_256(h) => h.update(data),
            Hasher::Sha3_512(h) => h.update(data),
            Hasher::Blake2s256(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Hash {
        let algo = self.algo();
        let out: Vec<u8> = match self {
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
            Hasher::Sha3_256(h) => h.finalize().to_vec(),
            Hasher::Sha3_512(h) => h.finalize().to_vec(),
            Hasher::Blake2s256(h) => h.finalize().to_vec(),
        };
        Hash::from_bytes(algo, &out).expect("each digest has its algorithm's size")
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hasher({})", self.algo())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_sha256_in_base32() {
        assert_eq!(
            Hash::sha256(b"").to_base32(),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
    }

    #[test]
    fn every_algorithm_has_its_size_and_known_empty_digest() {
        let known = [
            (HashAlgo::Md5, "d41d8cd98f00b204e9800998ecf8427e"),
            (HashAlgo::Sha1, "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
            (
                HashAlgo::Sha3_256,
                "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a",
            ),
            (
                HashAlgo::Blake2s256,
                "69217a3079908094e11121d042354a7c1f55b6482ca1a51e1b250dfd1ed0eef9",
            ),
        ];
        for (algo, hex) in known {
            let h = Hash::digest(algo, b"");
            assert_eq!(h.as_bytes().len(), algo.size_bytes());
            assert_eq!(h.to_hex(), hex, "{algo}");
        }
        for algo in HashAlgo::ALL {
            assert_eq!(HashAlgo::parse(algo.name()), Some(algo));
        }
    }

    #[test]
    fn incremental_equals_one_shot() {
        fn prop(data: Vec<u8>, split: usize) -> bool {
            let split = if data.is_empty() {
                0
            } else {
                split % data.len()
            };
            HashAlgo::ALL.into_iter().all(|algo| {
                let mut h = Hasher::new(algo);
                h.update(&data[..split]);
                h.update(&data[split..]);
                h.finish() == Hash::digest(algo, &data)
            })
        }
        guixd_testkit::check(prop as fn(Vec<u8>, usize) -> bool);
    }

    #[test]
    fn parse_errors_use_daemon_texts() {
        let e = Hash::parse_hex(HashAlgo::Sha512, "010203").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid SHA512 hash '010203' (3 bytes but expected 64)"
        );
        let h = Hash::sha256(b"x");
        assert_eq!(
            Hash::parse_hex_or_base32(HashAlgo::Sha256, &h.to_hex()),
            Ok(h)
        );
        assert_eq!(
            Hash::parse_hex_or_base32(HashAlgo::Sha256, &h.to_base32()),
            Ok(h)
        );
        assert!(Hash::parse_hex_or_base32(HashAlgo::Sha256, "abc").is_err());
    }
}

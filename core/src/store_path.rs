//! Store directories, store paths, and how the daemon computes them.
//!
//! A [`StorePath`] is *syntactically* a store path: `STORE/NAME` with a
//! non-empty `NAME` free of `/`, exactly the daemon's `isStorePath`. It does
//! not promise a hash part: the daemon accepts `/gnu/store/x` from the wire.
//! Paths the daemon *computes* always have the canonical
//! `STORE/<32 nix-base32 chars>-<name>` form and a name that passed
//! [`check_name`]. The computations follow spec 02 §4 to the byte.

use crate::base32;
use crate::hash::{Hash, HashAlgo};
use std::fmt;

/// Length of the nix-base32 hash part of a canonical store path.
pub const HASH_PART_LEN: usize = 32;

/// An absolute, lexically canonical store directory such as `/gnu/store`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoreDir {
    dir: String,
}

/// Why a string is not a store path, or a name cannot be used in one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorePathError {
    #[error("path `{0}' is not in the store")]
    NotInStore(String),
    #[error("invalid name: `{0}' (can't begin with dot)")]
    NameBeginsWithDot(String),
    #[error("invalid character `{}' in name `{}'", shown_byte(*.0), .1)]
    InvalidNameChar(u8, String),
    #[error("store directory `{0}' must be an absolute path")]
    RelativeStoreDir(String),
}

/// A syntactically valid store path under some [`StoreDir`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath {
    /// The whole path, e.g. `/gnu/store/abc…-hello`. Ordering and equality
    /// are those of this string, byte by byte, as in the daemon's `PathSet`.
    full: String,
    /// Index of the first byte of the base name in `full`.
    base_start: usize,
}

impl StoreDir {
    /// Canonicalises `dir` lexically (`.`, `..`, repeated and trailing `/`),
    /// as the daemon does with `NIX_STORE_DIR`; symlinks are not resolved.
    pub fn new(dir: &str) -> Result<StoreDir, StorePathError> {
        if !dir.starts_with('/') {
            return Err(StorePathError::RelativeStoreDir(dir.to_owned()));
        }
        Ok(StoreDir {
            dir: canonicalise_lexically(dir),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.dir
    }

    /// True when `path` is `STORE/NAME` with a non-empty `NAME` without `/`.
    pub fn is_store_path(&self, path: &str) -> bool {
        self.base_start(path).is_some()
    }

    /// Index of the base name when `path` is a store path.
    fn base_start(&self, path: &str) -> Option<usize> {
        let rest = path.strip_prefix(self.dir.as_str())?.strip_prefix('/')?;
        if rest.is_empty() || rest.contains('/') {
            return None;
        }
        Some(self.dir.len() + 1)
    }

    /// Asserts `path` is a store path (`assertStorePath`), with the daemon's
    /// error text otherwise.
    pub fn parse_path(&self, path: &str) -> Result<StorePath, StorePathError> {
        match self.base_start(path) {
            Some(base_start) => Ok(StorePath {
                full: path.to_owned(),
                base_start,
            }),
            None => Err(StorePathError::NotInStore(path.to_owned())),
        }
    }

    /// The store item containing `path` (`toStorePath`): `STORE/NAME/sub`
    /// becomes `STORE/NAME`.
    pub fn item_of(&self, path: &str) -> Result<StorePath, StorePathError> {
        let not_in_store = || StorePathError::NotInStore(path.to_owned());
        let rest = path
            .strip_prefix(self.dir.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(not_in_store)?;
        let base = rest.split('/').next().unwrap_or("");
        if base.is_empty() {
            return Err(not_in_store());
        }
        self.parse_path(&path[..self.dir.len() + 1 + base.len()])
    }

    /// The store path for `name` with base name `hash_part-name`, from the
    /// already-computed 20-byte fingerprint.
    fn path_from_fingerprint(
        &self,
        fingerprint: &str,
        name: &str,
    ) -> Result<StorePath, StorePathError> {
        check_name(name)?;
        let digest = Hash::sha256(fingerprint.as_bytes()).compress::<20>();
        let full = format!("{}/{}-{}", self.dir, base32::encode(&digest), name);
        Ok(StorePath {
            full,
            base_start: self.dir.len() + 1,
        })
    }

    /// `makeStorePath`: the path of kind `kind` (`text:…`, `source`,
    /// `output:ID`) for a SHA-256 `hash` and `name`.
    pub fn make_store_path(
        &self,
        kind: &str,
        hash: &Hash,
        name: &str,
    ) -> Result<StorePath, StorePathError> {
        debug_assert_eq!(hash.algo(), HashAlgo::Sha256);
        let fingerprint = format!("{kind}:sha256:{}:{}:{name}", hash.to_hex(), self.dir);
        self.path_from_fingerprint(&fingerprint, name)
    }

    /// The path of a text item (add-text-to-store, `.drv` files): the kind
    /// carries the references, in sorted order.
    pub fn make_text_path<'a>(
        &self,
        name: &str,
        contents_hash: &Hash,
        references: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<StorePath, StorePathError> {
        let mut refs: Vec<&StorePath> = references.into_iter().collect();
        refs.sort();
        refs.dedup();
        let mut kind = String::from("text");
        for r in refs {
            kind.push(':');
            kind.push_str(r.as_str());
        }
        self.make_store_path(&kind, contents_hash, name)
    }

    /// The path of output `id` of a derivation whose modulo hash is `drv_hash`.
    pub fn make_output_path(
        &self,
        id: &str,
        drv_hash: &Hash,
        drv_name: &str,
    ) -> Result<StorePath, StorePathError> {
        let name = if id == "out" {
            drv_name.to_owned()
        } else {
            format!("{drv_name}-{id}")
        };
        self.make_store_path(&format!("output:{id}"), drv_hash, &name)
    }

    /// `makeFixedOutputPath`: add-to-store items and fixed-output derivation
    /// outputs. Recursive SHA-256 is a "source" path; everything else goes
    /// through the `fixed:out:` indirection.
    pub fn make_fixed_output_path(
        &self,
        recursive: bool,
        hash: &Hash,
        name: &str,
    ) -> Result<StorePath, StorePathError> {
        if recursive && hash.algo() == HashAlgo::Sha256 {
            return self.make_store_path("source", hash, name);
        }
        let inner = Hash::sha256(fixed_output_fingerprint(recursive, hash).as_bytes());
        self.make_store_path("output:out", &inner, name)
    }
}

/// `fixed:out:[r:]ALGO:HEX:`, the inner fingerprint of fixed-output paths.
pub fn fixed_output_fingerprint(recursive: bool, hash: &Hash) -> String {
    format!(
        "fixed:out:{}{}:{}:",
        if recursive { "r:" } else { "" },
        hash.algo().name(),
        hash.to_hex()
    )
}

/// How the daemon's message shows one byte of a name: the C++ daemon sends
/// the raw byte, which every client decodes as U+FFFD unless it is ASCII.
fn shown_byte(b: u8) -> char {
    if b.is_ascii() {
        char::from(b)
    } else {
        char::REPLACEMENT_CHARACTER
    }
}

/// `checkStoreName`: a name must not begin with `.` and may only hold
/// `A-Z a-z 0-9 + - . _ ? =`.
pub fn check_name(name: &str) -> Result<(), StorePathError> {
    if name.starts_with('.') {
        return Err(StorePathError::NameBeginsWithDot(name.to_owned()));
    }
    match name
        .bytes()
        .find(|&c| !(c.is_ascii_alphanumeric() || b"+-._?=".contains(&c)))
    {
        Some(c) => Err(StorePathError::InvalidNameChar(c, name.to_owned())),
        None => Ok(()),
    }
}

/// Lexical canonicalisation of an absolute path: no `.`, no `..`, no
/// repeated or trailing `/`. `..` at the root stays at the root.
pub fn canonicalise_lexically(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = String::with_capacity(path.len());
    for p in &parts {
        out.push('/');
        out.push_str(p);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

impl StorePath {
    /// The whole path.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// `HASH-NAME`, the entry in the store directory.
    pub fn base_name(&self) -> &str {
        &self.full[self.base_start..]
    }

    /// The 32-character hash part, when the base name is long enough to
    /// have one.
    pub fn hash_part(&self) -> Option<&str> {
        self.base_name().get(..HASH_PART_LEN)
    }

    /// The name after `HASH-` (`storePathToName`); empty for short names.
    pub fn name(&self) -> &str {
        self.base_name().get(HASH_PART_LEN + 1..).unwrap_or("")
    }

    /// True when the base name ends in `.drv`.
    pub fn is_derivation(&self) -> bool {
        self.full.ends_with(".drv")
    }

    pub fn into_string(self) -> String {
        self.full
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.full, f)
    }
}

impl AsRef<str> for StorePath {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gnu() -> StoreDir {
        StoreDir::new("/gnu/store").unwrap()
    }

    #[test]
    fn text_paths_match_the_daemon() {
        let h = Hash::sha256(b"world");
        assert_eq!(
            gnu().make_text_path("hello", &h, []).unwrap().as_str(),
            "/gnu/store/nhyx8r4jv84vvcwvyyhahrj1w56icpn2-hello"
        );
        let probe = StoreDir::new("/tmp/probe-a/store").unwrap();
        assert_eq!(
            probe.make_text_path("hello", &h, []).unwrap().base_name(),
            "5i1a0r4ll8bi8nvn7k7mg9ynq0svb2wd-hello"
        );
        let acc = StoreDir::new("/tmp/acc-cxx/store/").unwrap();
        assert_eq!(
            acc.make_text_path("hello", &h, []).unwrap().base_name(),
            "jyazyqgscpdcp1zb29qfma1plfai02n9-hello"
        );
    }

    #[test]
    fn flat_fixed_output_paths_match_the_daemon() {
        let h = Hash::sha256(b"hi\n");
        assert_eq!(
            gnu()
                .make_fixed_output_path(false, &h, "f.txt")
                .unwrap()
                .as_str(),
            "/gnu/store/xx35w9qkn9jl6vj12crhnagzzbxak70z-f.txt"
        );
        let probe = StoreDir::new("/tmp/probe-a/store").unwrap();
        assert_eq!(
            probe
                .make_fixed_output_path(false, &h, "f.txt")
                .unwrap()
                .base_name(),
            "i90d6jbnl563w8km17n2iymzfwxk1wdm-f.txt"
        );
    }

    #[test]
    fn syntax_is_the_daemons() {
        let s = gnu();
        assert!(s.is_store_path("/gnu/store/x"));
        assert!(!s.is_store_path("/gnu/store/"));
        assert!(!s.is_store_path("/gnu/store"));
        assert!(!s.is_store_path("/gnu/store/a/b"));
        assert!(!s.is_store_path("/gnu/storex/a"));
        assert_eq!(
            s.parse_path("/etc/passwd").unwrap_err().to_string(),
            "path `/etc/passwd' is not in the store"
        );
        assert_eq!(
            s.item_of("/gnu/store/abc-x/bin/sh").unwrap().as_str(),
            "/gnu/store/abc-x"
        );
        let p = s
            .parse_path("/gnu/store/nhyx8r4jv84vvcwvyyhahrj1w56icpn2-hello")
            .unwrap();
        assert_eq!(p.hash_part(), Some("nhyx8r4jv84vvcwvyyhahrj1w56icpn2"));
        assert_eq!(p.name(), "hello");
    }

    #[test]
    fn names_are_checked_with_daemon_texts() {
        assert_eq!(
            check_name("bad/name").unwrap_err().to_string(),
            "invalid character `/' in name `bad/name'"
        );
        assert_eq!(
            check_name(".x").unwrap_err().to_string(),
            "invalid name: `.x' (can't begin with dot)"
        );
        assert!(check_name("a+b-c.d_e?f=g").is_ok());
    }

    #[test]
    fn lexical_canonicalisation() {
        assert_eq!(canonicalise_lexically("/a//b/./c/../d/"), "/a/b/d");
        assert_eq!(canonicalise_lexically("/.."), "/");
    }
}
